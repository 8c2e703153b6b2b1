#!/usr/bin/env node
/**
 * The command-line entry: reads the environment (and `.env`), parses flags, runs one command and
 * exits with its code. Together with main.ts, the only place that touches `process.env`, signal
 * handlers and `process.exit`.
 *
 * Exit codes: 0 success; 1 runtime failure (or a FAILED/LOST export for `watch`, a missing one
 * for `get`); 2 usage or configuration error; 130 interrupted.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { parse as parseDotenv } from 'dotenv';
import type { Logger } from 'pino';
import { type Config, type Env, loadConfig, parseDuration } from './config.js';
import { EXPORT_ID_PATTERN } from './control-api.js';
import { runDemo } from './demo.js';
import { ConfigError, UsageError } from './errors.js';
import { createLogger } from './log.js';
import { Daemon, USER_AGENT, VERSION } from './main.js';
import { PlatformClient } from './platform-client.js';
import { RateLimiter } from './rate-limiter.js';
import { type FaultOptions, Simulator, type SimulatorOptions } from './simulator.js';
import { observationsFromBulk } from './tracker.js';
import { runWatch } from './watch.js';

type Command = 'run' | 'watch' | 'get' | 'simulate' | 'demo';

/** Flags that override the variable they name, shared by the commands that talk to the platform. */
const VARIABLE_FLAGS = {
  endpoint: 'SB_API_ENDPOINT',
  'poll-interval': 'WATCHER_POLL_INTERVAL',
  'rate-budget': 'WATCHER_RATE_BUDGET',
  'rate-window': 'WATCHER_RATE_WINDOW',
  'batch-size': 'WATCHER_BATCH_SIZE',
  'webhook-url': 'WATCHER_WEBHOOK_URLS',
  'http-host': 'WATCHER_HTTP_HOST',
  'http-port': 'WATCHER_HTTP_PORT',
  'log-level': 'LOG_LEVEL',
} as const;

const VARIABLE_FLAG_HELP = `Configuration flags (each overrides the variable it names):
  --endpoint URL|PRESET     SB_API_ENDPOINT
  --poll-interval DURATION  WATCHER_POLL_INTERVAL
  --rate-budget N           WATCHER_RATE_BUDGET
  --rate-window DURATION    WATCHER_RATE_WINDOW
  --batch-size N            WATCHER_BATCH_SIZE
  --webhook-url URL         WATCHER_WEBHOOK_URLS (repeatable)
  --http-host HOST          WATCHER_HTTP_HOST
  --http-port N             WATCHER_HTTP_PORT
  --log-level LEVEL         LOG_LEVEL`;

const HELP: Record<'main' | Command, string> = {
  main: `sbg-export-watcher ${VERSION}
Watches Seven Bridges export jobs in bulk under the platform's rate limit and delivers a signed
webhook when each one finishes.

Usage: sbg-export-watcher <command> [options]

Commands:
  run        the daemon: watch ids given here and through the control API
  watch      wait in the foreground until the given exports finish
  get        the current state of exports, once
  simulate   a local simulator of the platform's export API
  demo       the simulator, the daemon and a webhook receiver together

Options:
  --help     help for a command: sbg-export-watcher <command> --help
  --version  print the version

Configuration comes from the environment and a .env file; see README.md.`,
  run: `Usage: sbg-export-watcher run [--id ID]... [--ids-file FILE] [configuration flags]

The daemon. Ids given here are watched from the start; more arrive through the control API
(POST /v1/exports). Stops on SIGTERM or SIGINT: no new checks, deliveries in flight get up to
WATCHER_SHUTDOWN_TIMEOUT, then exit 0. A second signal exits at once.

  --id ID          watch this export (repeatable)
  --ids-file FILE  watch the ids in FILE: one per line; blank lines and # comments are skipped

${VARIABLE_FLAG_HELP}`,
  watch: `Usage: sbg-export-watcher watch ID... [--json] [configuration flags]

Waits until every given export is terminal. Progress goes to stderr (a live bar on a terminal,
a line per change otherwise); each finished export is printed on stdout as it finishes (JSON
with --json or when stdout is not a terminal). Webhooks are delivered too when
WATCHER_WEBHOOK_URLS is set. Logs go to stderr, at error unless LOG_LEVEL is set.

Exit codes: 0 all COMPLETED; 1 any FAILED or LOST; 2 usage or configuration error;
130 interrupted (Ctrl-C); 143 terminated (SIGTERM).

  --json   one JSON object per finished export on stdout

${VARIABLE_FLAG_HELP}`,
  get: `Usage: sbg-export-watcher get ID... [--json] [configuration flags]

Prints the current state of each export (one bulk call per 100 ids): a table on a terminal,
one JSON object per line otherwise or with --json. Exits 1 when an id is not found.

${VARIABLE_FLAG_HELP}`,
  simulate: `Usage: sbg-export-watcher simulate [options]

Serves a simulator of the platform's export API on 127.0.0.1 and prints its base URL.
Point SB_API_ENDPOINT at it. Runs until SIGINT or SIGTERM.

  --port N              port (default 0: a free one)
  --exports N           seed N exports at start (default 0)
  --token T             accept only this token (default: any non-empty token)
  --quota N             requests per quota window (default 1000)
  --window DURATION     quota window (default 5m)
  --pending MIN-MAX     time an export stays PENDING, e.g. 1s-5s (default 1s-5s)
  --running MIN-MAX     time an export stays RUNNING, e.g. 2s-20s (default 2s-20s)
  --fail-rate F         fraction of exports that end FAILED (default 0.2)
  --seed N              seed for timings, outcomes, answer order and faults
  --no-bulk             the bulk endpoint answers 405 (clients must fall back)
  --maintenance-rate F  fraction of requests answered 503 maintenance
  --error-rate F        fraction answered 500
  --truncate-rate F     fraction answered with a cut-off body
  --slow-rate F         fraction answered late
  --slow DURATION       how late (default 2s)

Admin routes (no token, no quota): GET /_simulator/stats, POST /_simulator/exports {"count": N}.`,
  demo: `Usage: sbg-export-watcher demo [--exports N] [--unknown N] [--poll-interval DURATION] [--json]

Runs the simulator, the daemon and a webhook receiver that verifies signatures, registers the
exports through the control API, shows progress, and prints a summary when all are terminal.

  --exports N               exports to create in the simulator (default 300)
  --unknown N               ids the platform does not know, which end LOST (default 5)
  --poll-interval DURATION  WATCHER_POLL_INTERVAL for the demo (default 1s)
  --rate-budget N           WATCHER_RATE_BUDGET (default 500)
  --rate-window DURATION    WATCHER_RATE_WINDOW (default 5m)
  --json                    print the summary as JSON`,
};

export async function main(argv: readonly string[], env: Env): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    process.stdout.write(`${HELP.main}\n`);
    return first === undefined ? 2 : 0;
  }
  if (first === '--version' || first === '-v') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if (!(first in HELP) || first === 'main') {
    throw new UsageError(`unknown command "${first}"; try: sbg-export-watcher --help`);
  }
  const command = first as Command;
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${HELP[command]}\n`);
    return 0;
  }
  switch (command) {
    case 'run':
      return runCommand(rest, env);
    case 'watch':
      return watchCommand(rest, env);
    case 'get':
      return getCommand(rest, env);
    case 'simulate':
      return simulateCommand(rest);
    case 'demo':
      return demoCommand(rest, env);
  }
}

/** The real environment wins over `.env` in the working directory. */
export function readEnvironment(processEnv: NodeJS.ProcessEnv, cwd = process.cwd()): Env {
  let fromFile: Record<string, string> = {};
  try {
    fromFile = parseDotenv(readFileSync(`${cwd}/.env`));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  return withCredentials({ ...fromFile, ...processEnv });
}

/** systemd credentials (`LoadCredential=`), by the variable each one stands for. */
export const CREDENTIAL_FILES = {
  SB_AUTH_TOKEN: 'sb-auth-token',
  WATCHER_WEBHOOK_SECRET: 'webhook-secret',
  WATCHER_API_TOKEN: 'api-token',
} as const;

/**
 * Fills SB_AUTH_TOKEN, WATCHER_WEBHOOK_SECRET and WATCHER_API_TOKEN, where unset, from
 * `$CREDENTIALS_DIRECTORY`. A credential that is listed but cannot be read is a configuration
 * error; one that is absent is simply not used.
 */
export function withCredentials(env: Env): Env {
  const dir = env.CREDENTIALS_DIRECTORY;
  if (!dir) return env;
  const filled: Record<string, string | undefined> = { ...env };
  const problems: string[] = [];
  for (const [variable, file] of Object.entries(CREDENTIAL_FILES)) {
    if (filled[variable]?.trim()) continue;
    try {
      filled[variable] = readFileSync(`${dir}/${file}`, 'utf8').replace(/\r?\n$/, '');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT')
        problems.push(`${variable}: expected a readable credential file ${dir}/${file}, got ${code}`);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return filled;
}

type ParsedValues = Record<string, string | boolean | string[] | undefined>;

function parse(
  args: readonly string[],
  options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>,
  allowPositionals: boolean,
): { values: ParsedValues; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args: [...args], options, allowPositionals, strict: true });
    return { values: values as ParsedValues, positionals };
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

const variableFlagOptions = Object.fromEntries(
  Object.keys(VARIABLE_FLAGS).map((flag) => [
    flag,
    { type: 'string' as const, multiple: flag === 'webhook-url' },
  ]),
);

function withFlags(env: Env, values: ParsedValues): Env {
  const merged: Record<string, string | undefined> = { ...env };
  for (const [flag, variable] of Object.entries(VARIABLE_FLAGS)) {
    const v = values[flag];
    if (v === undefined) continue;
    merged[variable] = Array.isArray(v) ? v.join(',') : String(v);
  }
  return merged;
}

function checkIds(ids: readonly string[]): void {
  const bad = ids.filter((id) => !EXPORT_ID_PATTERN.test(id));
  if (bad.length > 0) {
    throw new UsageError(
      `invalid export id${bad.length > 1 ? 's' : ''} ${bad.map((b) => JSON.stringify(b)).join(', ')}: ids match ^[A-Za-z0-9_-]{1,128}$`,
    );
  }
}

export function readIdsFile(path: string): string[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new UsageError(
      `cannot read --ids-file ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
    );
  }
  return text
    .split(/\r?\n/)
    .map((line) => line.replace(/#.*$/, '').trim())
    .filter((line) => line !== '');
}

async function runCommand(args: readonly string[], env: Env): Promise<number> {
  const { values } = parse(
    args,
    { id: { type: 'string', multiple: true }, 'ids-file': { type: 'string' }, ...variableFlagOptions },
    false,
  );
  const ids = [...((values.id as string[] | undefined) ?? [])];
  if (typeof values['ids-file'] === 'string') ids.push(...readIdsFile(values['ids-file']));
  checkIds(ids);
  const config = loadConfig(withFlags(env, values), { requireToken: true });
  const log = createLogger({ level: config.logLevel, pretty: Boolean(process.stdout.isTTY) });
  const daemon = new Daemon(config, { log, api: true });

  let signals = 0;
  const stopped = new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      signals++;
      if (signals > 1) {
        log.warn({ signal }, 'second signal: exiting at once');
        process.exit(130);
      }
      log.info({ signal }, 'signal received; shutting down');
      daemon.stop().then(
        () => resolve(0),
        (error: unknown) => {
          log.error({ err: error }, 'error while stopping');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });

  await daemon.start();
  // A signal during start-up has already begun the shutdown.
  if (signals > 0) return stopped;
  log.info(
    {
      version: VERSION,
      endpoint: config.endpoint,
      poll_interval_ms: config.pollIntervalMs,
      rate_budget: config.rateBudget,
      rate_window_ms: config.rateWindowMs,
      webhook_endpoints: config.webhook.urls.length,
      signed: config.webhook.secretKey !== undefined,
    },
    'sbg-export-watcher started',
  );
  if (ids.length > 0) daemon.registry.watch(ids, null);
  return stopped;
}

async function watchCommand(args: readonly string[], env: Env): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' }, ...variableFlagOptions }, true);
  if (positionals.length === 0) throw new UsageError('watch needs at least one export id');
  checkIds(positionals);
  const merged = withFlags(env, values);
  // Progress owns the terminal: logs stay quiet unless asked for.
  const config = loadConfig(
    { ...merged, LOG_LEVEL: merged.LOG_LEVEL ?? 'error' },
    { requireToken: true, listens: false },
  );
  const log = createLogger({ level: config.logLevel, destination: process.stderr });
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(signal === 'SIGINT' ? 130 : 143);
    controller.abort(signal === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return runWatch({
    config,
    ids: positionals,
    json: values.json === true,
    stdout: process.stdout,
    stderr: process.stderr,
    stdoutTty: Boolean(process.stdout.isTTY),
    stderrTty: Boolean(process.stderr.isTTY),
    log,
    signal: controller.signal,
  });
}

async function getCommand(args: readonly string[], env: Env): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' }, ...variableFlagOptions }, true);
  if (positionals.length === 0) throw new UsageError('get needs at least one export id');
  checkIds(positionals);
  const config = loadConfig(withFlags(env, values), { requireToken: true, listens: false });
  const log = createLogger({
    level: config.logLevel === 'info' ? 'warn' : config.logLevel,
    destination: process.stderr,
  });
  const ids = [...new Set(positionals)];
  const rows = await fetchStates(config, ids, log);
  const json = values.json === true || !process.stdout.isTTY;
  if (json) {
    for (const row of rows) process.stdout.write(`${JSON.stringify(row)}\n`);
  } else {
    process.stdout.write(formatTable(rows));
  }
  return rows.every((r) => r.state !== 'NOT_FOUND') ? 0 : 1;
}

interface StateRow {
  id: string;
  state: string;
  export: Record<string, unknown> | null;
  error?: unknown;
}

async function fetchStates(config: Config, ids: readonly string[], log: Logger): Promise<StateRow[]> {
  const limiter = new RateLimiter({ budget: config.rateBudget, windowMs: config.rateWindowMs, log });
  const client = new PlatformClient({
    endpoint: config.endpoint,
    token: config.token ?? '',
    gate: limiter,
    userAgent: USER_AGENT,
    log,
  });
  try {
    const byId = new Map<string, StateRow>();
    if (ids.length === 1) {
      const id = ids[0] as string;
      const item = await client.getOneItem(id);
      const { observations } = observationsFromBulk([id], [item]);
      for (const o of observations) byId.set(o.id, rowOf(o));
    } else {
      for (let i = 0; i < ids.length; i += 100) {
        const { observations } = await client.checkStatuses(ids.slice(i, i + 100));
        for (const o of observations) byId.set(o.id, rowOf(o));
      }
    }
    return ids.map((id) => byId.get(id) ?? { id, state: 'UNANSWERED', export: null });
  } finally {
    await limiter.stop();
    await client.close();
  }
}

function rowOf(o: ReturnType<typeof observationsFromBulk>['observations'][number]): StateRow {
  if (o.kind === 'resource') return { id: o.id, state: o.resource.state, export: o.resource };
  if (o.kind === 'missing') return { id: o.id, state: 'NOT_FOUND', export: null, error: o.error };
  return { id: o.id, state: 'UNANSWERED', export: null, ...(o.error ? { error: o.error } : {}) };
}

function formatTable(rows: readonly StateRow[]): string {
  const cell = (v: unknown) => (v === undefined || v === null || v === '' ? '-' : String(v));
  const table = rows.map((r) => {
    const e = r.export ?? {};
    const dest = e.destination as { volume?: string; location?: string } | undefined;
    const err = (e.error ?? r.error) as { code?: number; message?: string } | undefined | null;
    return [
      r.id,
      r.state,
      cell(e.started_on),
      cell(e.finished_on),
      dest ? `${dest.volume ?? '?'}/${dest.location ?? '?'}` : '-',
      err ? `${err.code ?? ''} ${err.message ?? ''}`.trim() : '-',
    ];
  });
  const header = ['ID', 'STATE', 'STARTED', 'FINISHED', 'DESTINATION', 'ERROR'];
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((r) => (r[i] ?? '').length)));
  const line = (cols: readonly string[]) =>
    cols
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return `${[line(header), ...table.map(line)].join('\n')}\n`;
}

async function simulateCommand(args: readonly string[]): Promise<number> {
  const { values } = parse(
    args,
    {
      port: { type: 'string' },
      exports: { type: 'string' },
      token: { type: 'string' },
      quota: { type: 'string' },
      window: { type: 'string' },
      pending: { type: 'string' },
      running: { type: 'string' },
      'fail-rate': { type: 'string' },
      seed: { type: 'string' },
      'no-bulk': { type: 'boolean' },
      'maintenance-rate': { type: 'string' },
      'error-rate': { type: 'string' },
      'truncate-rate': { type: 'string' },
      'slow-rate': { type: 'string' },
      slow: { type: 'string' },
    },
    false,
  );
  const problems: string[] = [];
  const int = (flag: string, min: number, max: number): number | undefined => {
    const v = values[flag];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      problems.push(`--${flag}: expected a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`);
    }
    return n;
  };
  const fraction = (flag: string): number | undefined => {
    const v = values[flag];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!(n >= 0 && n <= 1))
      problems.push(`--${flag}: expected a fraction from 0 to 1, got ${JSON.stringify(v)}`);
    return n;
  };
  const duration = (flag: string): number | undefined => {
    const v = values[flag];
    if (v === undefined) return undefined;
    const ms = parseDuration(String(v));
    if (Number.isNaN(ms) || ms <= 0)
      problems.push(`--${flag}: expected a duration like 500ms or 5s, got ${JSON.stringify(v)}`);
    return ms;
  };
  const range = (flag: string): [number, number] | undefined => {
    const v = values[flag];
    if (v === undefined) return undefined;
    const [a, b = a] = String(v).split('-');
    const min = parseDuration(a ?? '');
    const max = parseDuration(b ?? '');
    if (Number.isNaN(min) || Number.isNaN(max) || min > max) {
      problems.push(`--${flag}: expected MIN-MAX durations like 1s-5s, got ${JSON.stringify(v)}`);
      return undefined;
    }
    return [min, max];
  };

  const options: SimulatorOptions = {};
  const port = int('port', 0, 65_535);
  if (port !== undefined) options.port = port;
  const seedCount = int('exports', 0, 1_000_000);
  if (seedCount !== undefined) options.exports = seedCount;
  if (typeof values.token === 'string') {
    if (values.token.trim() === '') problems.push('--token: expected a non-empty token, got nothing');
    options.token = values.token;
  }
  const limit = int('quota', 1, 10_000_000);
  const windowMs = duration('window');
  if (limit !== undefined || windowMs !== undefined) {
    options.quota = {
      ...(limit !== undefined ? { limit } : {}),
      ...(windowMs !== undefined ? { windowMs } : {}),
    };
  }
  const pendingMs = range('pending');
  const runningMs = range('running');
  if (pendingMs || runningMs)
    options.timing = { ...(pendingMs ? { pendingMs } : {}), ...(runningMs ? { runningMs } : {}) };
  const failRate = fraction('fail-rate');
  if (failRate !== undefined) options.failRate = failRate;
  const seed = int('seed', 0, 2 ** 31);
  if (seed !== undefined) options.seed = seed;
  if (values['no-bulk'] === true) options.bulk = false;
  const faults: FaultOptions = {};
  const rates = [
    ['maintenance-rate', 'maintenanceRate'],
    ['error-rate', 'errorRate'],
    ['truncate-rate', 'truncateRate'],
    ['slow-rate', 'slowRate'],
  ] as const;
  for (const [flag, key] of rates) {
    const f = fraction(flag);
    if (f !== undefined) faults[key] = f;
  }
  const slowMs = duration('slow');
  if (slowMs !== undefined) faults.slowMs = slowMs;
  if (Object.keys(faults).length > 0) options.faults = faults;
  if (problems.length > 0) throw new ConfigError(problems);

  const simulator = new Simulator(options);
  const url = await simulator.start();
  process.stdout.write(`${url}\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  await simulator.close();
  return 0;
}

async function demoCommand(args: readonly string[], env: Env): Promise<number> {
  const { values } = parse(
    args,
    {
      exports: { type: 'string' },
      unknown: { type: 'string' },
      'poll-interval': { type: 'string' },
      'rate-budget': { type: 'string' },
      'rate-window': { type: 'string' },
      json: { type: 'boolean' },
    },
    false,
  );
  const count = (flag: string, fallback: number): number => {
    const v = values[flag];
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || n > 1_000_000) {
      throw new UsageError(`--${flag}: expected a whole number from 0 to 1000000, got ${JSON.stringify(v)}`);
    }
    return n;
  };
  const demoEnv: Record<string, string | undefined> = {
    ...withFlags(env, values),
    WATCHER_POLL_INTERVAL:
      (values['poll-interval'] as string | undefined) ?? env.WATCHER_POLL_INTERVAL ?? '1s',
  };
  return runDemo({
    exports: count('exports', 300),
    unknown: count('unknown', 5),
    env: demoEnv,
    json: values.json === true,
    out: process.stdout,
    tty: Boolean(process.stdout.isTTY),
  });
}

/** True when this module is the program (run directly or through the npm bin link), not imported. */
function isEntryPoint(): boolean {
  const invokedAs = process.argv[1];
  if (!invokedAs) return false;
  try {
    return pathToFileURL(realpathSync(invokedAs)).href === import.meta.url;
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  main(process.argv.slice(2), readEnvironment(process.env)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      if (error instanceof ConfigError) {
        for (const p of error.problems) process.stderr.write(`config: ${p}\n`);
        process.exit(2);
      }
      if (error instanceof UsageError) {
        process.stderr.write(`usage: ${error.message}\n`);
        process.exit(2);
      }
      process.stderr.write(`error: ${(error as Error)?.stack ?? String(error)}\n`);
      process.exit(1);
    },
  );
}
