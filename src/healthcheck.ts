/**
 * The container's health check (`HEALTHCHECK CMD ["node", "/app/dist/healthcheck.js"]`): asks the
 * daemon's own `GET /healthz` on loopback and exits 0 on a 200, 1 on anything else (another status,
 * a refused connection, no answer within the timeout). It uses node:http alone, so the image needs
 * neither curl nor wget. It is a program of its own, not part of the daemon: the daemon listens on
 * WATCHER_HTTP_HOST (0.0.0.0 in the image), which 127.0.0.1 reaches from inside the container.
 * The port is WATCHER_HTTP_PORT from the environment or from `.env` in the working directory, as
 * the daemon reads it. With WATCHER_HTTP_PORT=0 the port is chosen at start-up and this check
 * cannot know it.
 */
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { parse as parseDotenv } from 'dotenv';

/** Below the HEALTHCHECK's own --timeout, so a hung daemon is reported here, not killed there. */
const TIMEOUT_MS = 3000;

function done(code: 0 | 1, message?: string): never {
  if (message) process.stderr.write(`healthcheck: ${message}\n`);
  process.exit(code);
}

/** WATCHER_HTTP_PORT as the daemon reads it: the environment, else `.env` in the working directory. */
function configuredPort(): string | undefined {
  // Set, even blank (the default then), it wins over .env, as in the daemon.
  const set = process.env.WATCHER_HTTP_PORT;
  if (set !== undefined) return set.trim() || undefined;
  try {
    return parseDotenv(readFileSync('.env')).WATCHER_HTTP_PORT?.trim() || undefined;
  } catch {
    return undefined; // no .env (or none readable: the daemon would not have started)
  }
}

const rawPort = configuredPort() ?? '8080';
const port = Number(rawPort);
if (!Number.isInteger(port) || port < 1 || port > 65_535) {
  done(1, `WATCHER_HTTP_PORT: expected a port from 1 to 65535, got ${JSON.stringify(rawPort)}`);
}
const url = `http://127.0.0.1:${port}/healthz`;

// agent: false: one connection, closed after the answer, so nothing keeps the process alive.
const req = request(url, { agent: false, timeout: TIMEOUT_MS }, (res) => {
  res.resume();
  if (res.statusCode === 200) done(0);
  done(1, `${url} answered ${res.statusCode}`);
});
req.on('timeout', () => req.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
req.on('error', (error) => done(1, `${url}: ${error.message}`));
req.end();
