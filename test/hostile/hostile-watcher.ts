/**
 * A daemon as `run` builds it (the production logger and redactor, writing to memory; an in-memory
 * store; short retries and pauses) against a hostile platform, for the hostile suites. What they
 * start is closed by `closeAll`, which each suite calls after every test.
 */
import { Writable } from 'node:stream';
import { type Env, loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/main.js';
import { createLogger } from '../../src/shared/log.js';
import { Redactor } from '../../src/shared/redact.js';
import { type Handler, HostilePlatform, okHandler } from './hostile-platform.js';

export interface Watcher {
  daemon: Daemon;
  apiUrl: string;
  /** Every log line, parsed. */
  lines: Array<Record<string, unknown>>;
  /** Every log line as written. */
  raw: string[];
}

const open: Array<{ close(): Promise<unknown> }> = [];

/** Stops every daemon and platform started here, newest first. */
export async function closeAll(): Promise<void> {
  for (const o of open.splice(0).reverse()) await o.close();
}

export async function startPlatform(handler: Handler = okHandler()): Promise<HostilePlatform> {
  const p = new HostilePlatform(handler);
  await p.start();
  open.push(p);
  return p;
}

export async function startWatcher(endpoint: string, token: string, env: Env = {}): Promise<Watcher> {
  const config = loadConfig(
    {
      SB_API_ENDPOINT: endpoint,
      SB_AUTH_TOKEN: token,
      WATCHER_HTTP_PORT: '0',
      WATCHER_POLL_INTERVAL: '100ms',
      WATCHER_RATE_BUDGET: '1000',
      WATCHER_RATE_WINDOW: '60s',
      LOG_LEVEL: 'debug',
      ...env,
    },
    { requireToken: true },
  );
  const raw: string[] = [];
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      const text = String(chunk);
      raw.push(text);
      lines.push(JSON.parse(text) as Record<string, unknown>);
      done();
    },
  });
  const log = createLogger({ level: 'debug', destination: sink, redactor: new Redactor(config.secrets) });
  const daemon = await Daemon.open(config, {
    log,
    api: true,
    storage: 'memory',
    platformRetry: { retries: 1, minTimeoutMs: 10, maintenanceMaxDelayMs: 100 },
    scheduler: { failurePauseMs: 20, failurePauseMaxMs: 100 },
    // What a hostile answer does to readiness shows at once, not after a minute without answers.
    readinessGraceMs: 0,
  });
  const apiUrl = (await daemon.start()) as string;
  open.push({ close: () => daemon.stop(1000) });
  return { daemon, apiUrl, lines, raw };
}
