/**
 * The container's health check (`HEALTHCHECK CMD ["node", "/app/dist/healthcheck.js"]`): asks the
 * daemon's own `GET /healthz` and exits 0 on a 200, 1 on anything else (another status,
 * a refused connection, no answer within the timeout). It uses node:http alone, so the image needs
 * neither curl nor wget. It is a program of its own, not part of the daemon. It asks where the
 * daemon listens: WATCHER_HTTP_HOST and WATCHER_HTTP_PORT from the environment or from `.env` in
 * the working directory, as the daemon reads them. A wildcard host (0.0.0.0, the image's, or ::)
 * is reached on 127.0.0.1; any other (::1, 127.0.0.2, a host name, an interface's address) is asked
 * itself, since 127.0.0.1 does not reach a daemon bound there. With WATCHER_HTTP_PORT=0 the port is
 * chosen at start-up and this check cannot know it.
 */
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { isIP } from 'node:net';
import { parse as parseDotenv } from 'dotenv';

/** Below the HEALTHCHECK's own --timeout, so a hung daemon is reported here, not killed there. */
const TIMEOUT_MS = 3000;

function done(code: 0 | 1, message?: string): never {
  if (message) process.stderr.write(`healthcheck: ${message}\n`);
  process.exit(code);
}

/** `.env` in the working directory, read once; undefined when there is none (or none readable). */
let dotenv: Record<string, string> | undefined | null = null;
function dotenvFile(): Record<string, string> | undefined {
  if (dotenv === null) {
    try {
      dotenv = parseDotenv(readFileSync('.env'));
    } catch {
      dotenv = undefined; // the daemon would not have started with an unreadable one
    }
  }
  return dotenv;
}

/** A variable as the daemon reads it: the environment, else `.env` in the working directory. */
function configured(name: 'WATCHER_HTTP_HOST' | 'WATCHER_HTTP_PORT'): string | undefined {
  // Set, even blank (the default then), it wins over .env, as in the daemon.
  const set = process.env[name];
  if (set !== undefined) return set.trim() || undefined;
  return dotenvFile()?.[name]?.trim() || undefined;
}

const rawPort = configured('WATCHER_HTTP_PORT') ?? '8080';
const port = Number(rawPort);
if (!Number.isInteger(port) || port < 1 || port > 65_535) {
  done(1, `WATCHER_HTTP_PORT: expected a port from 1 to 65535, got ${JSON.stringify(rawPort)}`);
}
// "[::1]" is taken as ::1, as the daemon takes it.
const listenHost = (configured('WATCHER_HTTP_HOST') ?? '127.0.0.1').replace(/^\[(.*)\]$/, '$1');
/** Where the daemon is reached: a wildcard address on loopback, any other where it listens. */
const host = listenHost === '0.0.0.0' || listenHost === '::' ? '127.0.0.1' : listenHost;
const url = `http://${isIP(host) === 6 ? `[${host}]` : host}:${port}/healthz`;

// agent: false: one connection, closed after the answer, so nothing keeps the process alive.
const req = request(url, { agent: false, timeout: TIMEOUT_MS }, (res) => {
  res.resume();
  if (res.statusCode === 200) done(0);
  done(1, `${url} answered ${res.statusCode}`);
});
req.on('timeout', () => req.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
req.on('error', (error) => done(1, `${url}: ${error.message}`));
req.end();
