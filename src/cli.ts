#!/usr/bin/env node
/**
 * The command-line entry: reads the environment (and `.env`) when a command needs it, parses
 * flags, runs one command and exits with its code. Together with main.ts, the only place that
 * touches `process.env`, signal handlers and `process.exit`.
 *
 * Exit codes: 0 success; 1 runtime failure (or a FAILED/LOST export for `watch`, a missing one
 * for `get`); 2 usage or configuration error; 130 interrupted. What is printed for each failure
 * is decided in error-report.ts: one line, and a stack trace only for a bug.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { parse as parseDotenv } from 'dotenv';
import type { Logger } from 'pino';
import { CONTROL_DEFAULT_TIMEOUT_MS, controlApiTarget } from './cli/control-client.js';
import { runDemo } from './cli/demo.js';
import { describeError, listenError } from './cli/error-report.js';
import { eventsQuery, redeliverPlan, runEvents, runRedeliver } from './cli/events.js';
import { GET_DEFAULT_TIMEOUT_MS, runGet } from './cli/get.js';
import { collectIds } from './cli/ids-input.js';
import { startReceiving } from './cli/receive.js';
import {
  exitProcess,
  isHungUpTerminal,
  onStopSignals,
  signalExitCode,
  terminalHungUp,
} from './cli/signals.js';
import { runWatch } from './cli/watch.js';
import {
  type Config,
  durationWithin,
  type Env,
  loadConfig,
  parseDuration,
  TOKEN_TEXT,
  unknownVariables,
  type VariableName,
} from './config/config.js';
import { parseSecret } from './delivery/signing.js';
import {
  type FaultOptions,
  MAX_ERROR_ID_LENGTH,
  MAX_ERROR_IDS,
  Simulator,
  type SimulatorOptions,
} from './dev/simulator.js';
import { Daemon, VERSION } from './main.js';
import type { JobKind } from './polling/tracker.js';
import { ConfigError, UsageError } from './shared/errors.js';
import { createLogger, flushLogLines } from './shared/log.js';
import { nearestName } from './shared/nearest.js';
import { describeProxy, useProxy } from './shared/proxy.js';
import { Redactor, safeUrl, urlSecrets } from './shared/redact.js';

export { readIdsFile } from './cli/ids-input.js';

type Command = 'run' | 'watch' | 'get' | 'events' | 'redeliver' | 'simulate' | 'receive' | 'demo';
/** The commands that talk to the platform, read the configuration and take configuration flags. */
export type PlatformCommand = 'run' | 'watch' | 'get';

/** Flags that override the variable they name, with the argument shown in help. */
const VARIABLE_FLAGS = {
  profile: ['SB_PROFILE', 'NAME'],
  endpoint: ['SB_API_ENDPOINT', 'URL|PRESET'],
  'poll-interval': ['WATCHER_POLL_INTERVAL', 'DURATION'],
  'rate-budget': ['WATCHER_RATE_BUDGET', 'N'],
  'rate-window': ['WATCHER_RATE_WINDOW', 'DURATION'],
  'batch-size': ['WATCHER_BATCH_SIZE', 'N'],
  discover: ['WATCHER_DISCOVER', 'KINDS'],
  'webhook-url': ['WATCHER_WEBHOOK_URLS', 'URL'],
  'http-host': ['WATCHER_HTTP_HOST', 'HOST'],
  'http-port': ['WATCHER_HTTP_PORT', 'N'],
  'log-level': ['LOG_LEVEL', 'LEVEL'],
} as const satisfies Record<string, readonly [VariableName, string]>;
type VariableFlag = keyof typeof VARIABLE_FLAGS;

interface FlagSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
  /** The argument's name in help; none for a boolean. */
  arg?: string;
  help: string;
}

const IDS_FILE_HELP = 'ids in FILE, one per line, # comments skipped (repeatable; - is stdin)';
const KIND_HELP = 'the ids are of this kind of job: export (default) or import';

/**
 * The flags each command that talks to the platform takes: its own, then the configuration flags
 * it uses. Anything else is a usage error, and `--help` is written from this table.
 */
const COMMAND_FLAGS: Readonly<
  Record<PlatformCommand, { own: Readonly<Record<string, FlagSpec>>; variables: readonly VariableFlag[] }>
> = {
  run: {
    own: {
      id: { type: 'string', multiple: true, arg: 'ID', help: 'watch this export (repeatable)' },
      'ids-file': { type: 'string', multiple: true, arg: 'FILE', help: `watch the export ${IDS_FILE_HELP}` },
      'import-id': { type: 'string', multiple: true, arg: 'ID', help: 'watch this import (repeatable)' },
    },
    variables: [
      'profile',
      'endpoint',
      'poll-interval',
      'rate-budget',
      'rate-window',
      'batch-size',
      'discover',
      'webhook-url',
      'http-host',
      'http-port',
      'log-level',
    ],
  },
  watch: {
    own: {
      'ids-file': { type: 'string', multiple: true, arg: 'FILE', help: `watch the ${IDS_FILE_HELP}` },
      kind: { type: 'string', arg: 'KIND', help: `${KIND_HELP}; with --all, only that kind` },
      all: {
        type: 'boolean',
        help: 'every unfinished job of yours (listed once at start; both kinds unless --kind)',
      },
      json: { type: 'boolean', help: 'one JSON object per finished job on stdout, even on a terminal' },
      timeout: {
        type: 'string',
        arg: 'DURATION',
        help: 'give up after this long and exit 1, like 30s, 5m, 1h (default: no limit)',
      },
    },
    variables: [
      'profile',
      'endpoint',
      'poll-interval',
      'rate-budget',
      'rate-window',
      'batch-size',
      'webhook-url',
      'log-level',
    ],
  },
  get: {
    own: {
      'ids-file': { type: 'string', multiple: true, arg: 'FILE', help: `look up the ${IDS_FILE_HELP}` },
      kind: { type: 'string', arg: 'KIND', help: KIND_HELP },
      json: { type: 'boolean', help: 'one JSON object per job, even on a terminal' },
      timeout: {
        type: 'string',
        arg: 'DURATION',
        help: 'give up after this long and exit 1, like 10s, 5m (default 60s)',
      },
    },
    variables: ['profile', 'endpoint', 'log-level'],
  },
};

/** Every flag a command takes, without the leading dashes (`--help` aside). */
export function acceptedFlags(command: PlatformCommand): string[] {
  const spec = COMMAND_FLAGS[command];
  return [...Object.keys(spec.own), ...spec.variables];
}

function parseOptions(
  command: PlatformCommand,
): Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> {
  const spec = COMMAND_FLAGS[command];
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = {};
  for (const [name, flag] of Object.entries(spec.own)) {
    options[name] = { type: flag.type, ...(flag.multiple ? { multiple: true } : {}) };
  }
  for (const name of spec.variables) {
    options[name] = { type: 'string', ...(name === 'webhook-url' ? { multiple: true } : {}) };
  }
  return options;
}

/** The flag lines of a command's help, from COMMAND_FLAGS. */
function flagHelp(command: PlatformCommand): string {
  const spec = COMMAND_FLAGS[command];
  const row = (left: string, right: string) => `  ${left.padEnd(24)}  ${right}`;
  const own = Object.entries(spec.own).map(([name, f]) =>
    row(`--${name}${f.arg ? ` ${f.arg}` : ''}`, f.help),
  );
  const notes: Partial<Record<VariableFlag, string>> = {
    profile: ': a section of ~/.sevenbridges/credentials',
    discover: ': exports, imports or exports,imports',
    'webhook-url': ' (repeatable)',
  };
  const variables = spec.variables.map((name) => {
    const [variable, arg] = VARIABLE_FLAGS[name];
    return row(`--${name} ${arg}`, `${variable}${notes[name] ?? ''}`);
  });
  return `${own.join('\n')}

Configuration flags (each overrides the variable it names):
${variables.join('\n')}`;
}

/** The flags of the commands that ask a running daemon (events, redeliver). */
const CONTROL_API_HELP = `  --api-url URL         the daemon's control API (default: from WATCHER_HTTP_HOST and
                        WATCHER_HTTP_PORT, 127.0.0.1:8080; a 0.0.0.0 or :: host means loopback)
  --timeout DURATION    give up on a request after this long, like 10s, 2m (default 30s)

WATCHER_API_TOKEN (environment, .env or $CREDENTIALS_DIRECTORY/api-token) is sent as the bearer
token when set.`;

const HELP: Record<'main' | Command, string> = {
  main: `sbg-export-watcher ${VERSION}
Watches Seven Bridges export (and import) jobs in bulk under the platform's rate limit and
delivers a signed webhook when each one finishes.

Usage: sbg-export-watcher <command> [options]

Commands:
  run        the daemon: watch ids given here and through the control API
  watch      wait in the foreground until the given exports (or imports) finish
  get        the current state of exports (or imports), once
  events     the events a running daemon stored, and their deliveries
  redeliver  ask a running daemon to deliver events again
  simulate   a local simulator of the platform's export and import API
  receive    a local webhook receiver that prints each delivery (and checks its signature)
  demo       the simulator, the daemon and a webhook receiver together

Options:
  --help     help for a command: sbg-export-watcher <command> --help
  --version  print the version

Configuration comes from the environment and a .env file; the platform's endpoint and token may
also come from a profile of ~/.sevenbridges/credentials (SB_PROFILE, --profile); see README.md.`,
  run: `Usage: sbg-export-watcher run [--id ID]... [--ids-file FILE]... [--import-id ID]... [configuration flags]

The daemon. Ids given here are watched from the start (--id and --ids-file are exports,
--import-id imports); more arrive through the control API (POST /v1/exports, POST /v1/imports).
With --discover (WATCHER_DISCOVER) it also finds the user's own unfinished exports and/or imports
every WATCHER_DISCOVER_INTERVAL (default 5m), through at most a tenth of the rate budget, and
watches them with the metadata {"discovered": true}. Stops on SIGTERM, SIGINT or SIGHUP: no new checks,
deliveries in flight get up to WATCHER_SHUTDOWN_TIMEOUT, then exit 0 (after SIGHUP, the process
ends by that signal: 129 in a shell). A second signal exits at once (a second SIGHUP, the same
hang-up told twice, is ignored).

${flagHelp('run')}`,
  watch: `Usage: sbg-export-watcher watch [ID...] [--ids-file FILE]... [--kind import] [options]
       sbg-export-watcher watch --all [--kind KIND] [options]

Ids come as arguments, from --ids-file, and from standard input (a lone - or --ids-file -),
one per line; they are merged and de-duplicated. They are export ids, or import ids with
--kind import. With --all, no ids are given: every export and import of yours that is not
finished yet (PENDING or RUNNING) is listed once at start and watched; --kind keeps one kind.
With none to watch, --all says so and exits 0.

Waits until every given job is terminal. Progress goes to stderr (a live bar on a terminal,
a line per change otherwise); each finished job is printed on stdout as it finishes (JSON
with --json or when stdout is not a terminal). Webhooks are delivered too when
WATCHER_WEBHOOK_URLS is set. Logs go to stderr, at error unless LOG_LEVEL or --log-level is set.
When no check has succeeded for 5 minutes, a warning on stderr says why (and again every 5 minutes).

Exit codes: 0 all COMPLETED; 1 any FAILED or LOST, the token refused, or --timeout passed;
2 usage or configuration error; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM);
after SIGHUP (the terminal closed), the process ends by that signal: 129 in a shell.

${flagHelp('watch')}`,
  get: `Usage: sbg-export-watcher get [ID...] [--ids-file FILE]... [--kind import] [options]

Ids come as arguments, from --ids-file, and from standard input (a lone - or --ids-file -),
one per line; they are merged and de-duplicated. They are export ids, or import ids with
--kind import.

Prints the current state of each job (one bulk call per 100 ids): a table on a terminal,
one JSON object per line otherwise or with --json ({"id", "state", "export"}, or "import" for
an import). Logs go to stderr, at error unless LOG_LEVEL or --log-level is set.

Exit codes: 0 every export found; 1 an id not found or unanswered, or a runtime failure (the
platform cannot be reached, refuses the token, or --timeout passed); 2 usage or configuration error.

${flagHelp('get')}`,
  events: `Usage: sbg-export-watcher events [options]

Lists the events a running daemon stored, newest first, with each one's delivery to each
endpoint, through its control API (GET /v1/events). A table on a terminal (WEBHOOK-ID, TYPE,
CREATED, then ENDPOINT, STATUS, ATTEMPTS, LAST STATUS, NEXT ATTEMPT, LAST ERROR per endpoint);
one JSON object per event otherwise or with --json.

  --export ID           only this export's events
  --import ID           only this import's events
  --status S            only events with a delivery in this status: pending, delivered, failed, gone
  --since T             only events created at or after T: an RFC 3339 time like
                        2026-11-22T05:00:00Z, or a duration back from now like 30m, 2h, 7d
  --limit N             events per request, 1 to 1000 (default 100; 1000 with --all)
  --all                 follow the pages to the last event (otherwise: the first page only,
                        and a line on stderr says when more follow)
  --json                one JSON object per event, even on a terminal
${CONTROL_API_HELP}

Exit codes: 0 listed; 1 the daemon could not be asked; 2 usage or configuration error.`,
  redeliver: `Usage: sbg-export-watcher redeliver WEBHOOK_ID... [--webhook-url URL] [options]
       sbg-export-watcher redeliver --since T [--status S] [options]

Asks a running daemon, through its control API, to deliver events again: a new series of
attempts, retried as the first one was. By webhook id (evt_<export id>_<completed|failed|lost|
running>, or evt_import_<import id>_<...> for an import), to every configured endpoint or to one;
or every delivery in a status (default failed) of the events created since T. Prints what was
queued.

  --webhook-url URL     only to this endpoint: a URL of WATCHER_WEBHOOK_URLS as configured, or
                        its label (without credentials or query, as events shows it)
  --since T             every event created at or after T: an RFC 3339 time like
                        2026-11-22T05:00:00Z, or a duration back from now like 30m, 2h, 7d
  --status S            with --since: the deliveries in this status (default failed): pending,
                        delivered, failed, gone
${CONTROL_API_HELP}

Exit codes: 0 queued; 1 an id the daemon does not know, or the daemon could not be asked;
2 usage or configuration error.`,
  simulate: `Usage: sbg-export-watcher simulate [options]

Serves a simulator of the platform's export and import API on 127.0.0.1 and prints its base URL.
Point SB_API_ENDPOINT at it. Runs until SIGINT, SIGTERM or SIGHUP.

  --port N              port (default 0: a free one)
  --exports N           seed N exports at start (default 0)
  --imports N           seed N imports at start (default 0)
  --token T             accept only this token (default: any non-empty token)
  --quota N             requests per quota window (default 1000)
  --window DURATION     quota window (default 5m)
  --pending MIN-MAX     time a job stays PENDING, e.g. 1s-5s (default 1s-5s)
  --running MIN-MAX     time a job stays RUNNING, e.g. 2s-20s (default 2s-20s)
  --fail-rate F         fraction of jobs that end FAILED (default 0.2)
  --seed N              seed for timings, outcomes, answer order and faults
  --no-bulk             the bulk endpoint answers 405 (clients must fall back)
  --maintenance-rate F  fraction of requests answered 503 maintenance
  --error-rate F        fraction answered 500
  --error-ids ID,...    every get or bulk get naming one of these ids is answered 500
  --truncate-rate F     fraction answered with a cut-off body
  --slow-rate F         fraction answered late
  --slow DURATION       how late (default 2s)

Admin routes (no token, no quota): GET /_simulator/stats, POST /_simulator/exports {"count": N},
POST /_simulator/imports {"count": N}.`,

  receive: `Usage: sbg-export-watcher receive [--port N]

Serves a webhook receiver on 127.0.0.1, prints its URL (point WATCHER_WEBHOOK_URLS at it), then
one JSON line per delivery attempt: received_at, webhook_id, webhook_timestamp, verified, status,
type, export_id (or import_id), state, previous_state, metadata. It answers 204; with
WATCHER_WEBHOOK_SECRET set (environment or .env) it checks each signature, and answers 401
(verified: false) to one that does not match. Keeps nothing; while its output is not being read
it answers 503 (Retry-After: 1), so the daemon sends again later. Runs until SIGINT, SIGTERM or
SIGHUP.

  --port N              port (default 0: a free one)`,

  demo: `Usage: sbg-export-watcher demo [options]

Runs the simulator, the daemon and a webhook receiver that verifies signatures, registers the
exports through the control API, shows progress, and prints a summary when all are terminal.
The demo uses only its own settings and these flags: the environment and .env are not read.

  --exports N               exports to create in the simulator (default 300)
  --unknown N               ids the platform does not know, which end LOST (default 5)
  --poll-interval DURATION  the daemon's poll interval (default 1s)
  --rate-budget N           requests per rate window (default 500)
  --rate-window DURATION    the rate window (default 5m)
  --json                    print the summary as JSON`,
};

/** What a command run leaves for the error report: the configuration, once loaded. */
export interface CliContext {
  /** Scrubs every line printed about an error; seeded with the configuration's secrets once loaded. */
  redactor: Redactor;
  config?: Config;
  /** Problems found reading the environment, reported with the configuration's own. */
  problems?: readonly string[];
  /** Where `-` reads ids from; default process.stdin. */
  stdin?: Readable & { isTTY?: boolean };
}

/**
 * Runs one command and resolves its exit code; rejects with the error that stops it. `env` is
 * read only by the commands that need it (run, watch, get), never for `--help` or `--version`.
 */
export async function main(
  argv: readonly string[],
  env: Env | (() => Env),
  context: CliContext = { redactor: new Redactor() },
): Promise<number> {
  const given = typeof env === 'function' ? env : () => env;
  // A credential file that cannot be read is reported with the configuration's other problems.
  const readEnv = (): Env => {
    try {
      return given();
    } catch (error) {
      if (!(error instanceof ConfigError) || error.partial === undefined) throw error;
      context.problems = error.problems;
      return error.partial;
    }
  };
  const [first, ...rest] = argv;
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    process.stdout.write(`${HELP.main}\n`);
    return first === undefined ? 2 : 0;
  }
  if (first === '--version' || first === '-v') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if (!Object.hasOwn(HELP, first) || first === 'main') {
    throw new UsageError(`unknown command "${first}"; try: sbg-export-watcher --help`);
  }
  const command = first as Command;
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${HELP[command]}\n`);
    return 0;
  }
  switch (command) {
    case 'run':
      return runCommand(rest, readEnv, context);
    case 'watch':
      return watchCommand(rest, readEnv, context);
    case 'get':
      return getCommand(rest, readEnv, context);
    case 'events':
      return eventsCommand(rest, readEnv, context);
    case 'redeliver':
      return redeliverCommand(rest, readEnv, context);
    case 'simulate':
      return simulateCommand(rest);
    case 'receive':
      return receiveCommand(rest, readEnv);
    case 'demo':
      return demoCommand(rest);
  }
}

/**
 * `main`, with every failure reported on `stderr` as error-report.ts decides (one line, secrets
 * scrubbed; a stack only for a bug). Resolves the exit code; never rejects.
 */
export async function runCli(
  argv: readonly string[],
  env: Env | (() => Env),
  io: {
    stderr: { write(text: string): unknown };
    stdin?: CliContext['stdin'];
    /** Where `env` looked for a `.env` (see `readEnvironment`), for a hint when it found none. */
    dotenv?: DotenvLookup;
  } = { stderr: process.stderr },
): Promise<number> {
  const context: CliContext = { redactor: new Redactor(), ...(io.stdin ? { stdin: io.stdin } : {}) };
  try {
    return await main(argv, env, context);
  } catch (error) {
    const report = describeError(error, { endpoint: context.config?.endpoint });
    for (const line of withDotenvHint(report.lines, error, io.dotenv)) {
      io.stderr.write(`${context.redactor.scrub(line)}\n`);
    }
    return report.exitCode;
  }
}

/**
 * A variable reported unset when no `.env` was found: the usual cause is a `.env` in another
 * directory than the one the command was started in, which the problem alone does not say. Said
 * on the first such problem's line, so that each problem stays one line.
 */
function withDotenvHint(lines: string[], error: unknown, dotenv: DotenvLookup | undefined): string[] {
  if (!(error instanceof ConfigError) || dotenv?.missing === undefined) return lines;
  const first = lines.findIndex((line) => line.endsWith('got nothing'));
  if (first === -1) return lines;
  const hinted = [...lines];
  hinted[first] =
    `${lines[first]} (and no ${dotenv.missing} was found: a .env is read from the working directory)`;
  return hinted;
}

/** Where `readEnvironment` looked for a `.env` and found none: for the error report. */
export interface DotenvLookup {
  missing?: string;
}

/**
 * The real environment wins over `.env` in the working directory. `lookup`, when given, is told
 * where the file was looked for and whether it was there.
 */
export function readEnvironment(processEnv: NodeJS.ProcessEnv, cwd?: string, lookup?: DotenvLookup): Env {
  let fromFile: Record<string, string> = {};
  let dir: string;
  try {
    dir = cwd ?? process.cwd();
  } catch (error) {
    // A working directory removed under the process: there is no telling whether it held a .env.
    throw new ConfigError([
      `.env: expected a working directory to read .env from, got ${(error as NodeJS.ErrnoException).code ?? (error as Error).message} (it no longer exists; start from another directory)`,
    ]);
  }
  const path = join(dir, '.env');
  try {
    fromFile = parseDotenv(readFileSync(path));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (lookup && code === 'ENOENT') lookup.missing = path;
    if (code !== 'ENOENT') {
      throw new ConfigError([
        `.env: expected a readable file ${path}, got ${code ?? (error as Error).message}`,
      ]);
    }
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
  if (problems.length > 0) throw new ConfigError(problems, filled);
  return filled;
}

type ParsedValues = Record<string, string | boolean | string[] | undefined>;

/** parseArgs, strict, with its errors turned into usage errors that name the command. */
function parse(
  command: Command,
  args: readonly string[],
  options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>,
  allowPositionals: boolean,
): { values: ParsedValues; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args: [...args], options, allowPositionals, strict: true });
    return { values: values as ParsedValues, positionals };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const message = (error as Error).message;
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const flag = /'([^']+)'/.exec(message)?.[1] ?? message;
      const name = flag.replace(/^-+/, '').replace(/=.*$/, '');
      const takers = (Object.keys(COMMAND_FLAGS) as PlatformCommand[]).filter((c) =>
        acceptedFlags(c).includes(name),
      );
      // A flag this command takes under a longer or nearby name (run --port: --http-port).
      // One guess or none: two flags ending the same way (--api-url, --webhook-url) are no answer.
      const endingSo = Object.keys(options).filter((o) => o.endsWith(`-${name}`));
      const meant =
        name.length < 3 || endingSo.length > 1
          ? undefined
          : (endingSo[0] ?? nearestName(name, Object.keys(options), name.length < 5 ? 1 : 2));
      const elsewhere =
        takers.length > 0
          ? ` (${takers.slice(0, -1).join(', ')}${takers.length > 1 ? ' and ' : ''}${takers.at(-1)} ${takers.length > 1 ? 'do' : 'does'})`
          : meant !== undefined
            ? ` (did you mean --${meant}?)`
            : '';
      throw new UsageError(
        `${command} does not take ${flag}${elsewhere}; see: sbg-export-watcher ${command} --help`,
      );
    }
    if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      const arg = /'([^']*)'/.exec(message)?.[1] ?? '';
      const how = command === 'run' ? '; give ids with --id ID or --ids-file FILE' : '';
      throw new UsageError(`${command} takes no arguments, got ${JSON.stringify(arg)}${how}`);
    }
    throw new UsageError(message);
  }
}

function parseCommand(command: PlatformCommand, args: readonly string[]) {
  return parse(command, args, parseOptions(command), command !== 'run');
}

/** The environment with the configuration flags given applied over it. */
function withFlags(env: Env, values: ParsedValues): Env {
  const merged: Record<string, string | undefined> = { ...env };
  for (const [flag, [variable, placeholder]] of Object.entries(VARIABLE_FLAGS)) {
    const v = values[flag];
    if (v === undefined) continue;
    // Blank would read as unset, and the default (not the environment) would win: refused.
    const given = Array.isArray(v) ? v.map(String) : [String(v)];
    if (given.some((x) => x.trim() === '')) {
      throw new UsageError(`--${flag}: expected ${placeholder}, got an empty value`);
    }
    // The variable holds a comma-separated list: a comma inside one URL would cut it in two.
    if (flag === 'webhook-url' && given.some((x) => x.includes(','))) {
      throw new UsageError(`--webhook-url: a URL here cannot hold a comma; write it as %2C`);
    }
    merged[variable] = given.join(',');
  }
  return merged;
}

/** For commands whose stdout is their result: logs stay at error unless a level is asked for. */
function quietByDefault(env: Env): Env {
  return env.LOG_LEVEL?.trim() ? env : { ...env, LOG_LEVEL: 'error' };
}

/** Loads the configuration and makes its secrets known to the error report's redactor. */
function load(env: Env, context: CliContext, options: Parameters<typeof loadConfig>[1]): Config {
  const config = loadConfig(env, { ...options, ...(context.problems ? { problems: context.problems } : {}) });
  context.config = config;
  context.redactor.add(config.secrets);
  return config;
}

/**
 * The configuration of a command that talks to the platform (run, watch, get): the endpoint and
 * token may come from a credentials profile, and the dispatchers it creates use its proxy.
 */
function loadForPlatform(
  env: Env,
  context: CliContext,
  options: { listens?: boolean; discovers?: boolean; stores?: boolean } = {},
): Config {
  const config = load(env, context, { ...options, requireToken: true, profiles: true });
  useProxy(config.proxy);
  return config;
}

/** Says once, at start, which proxy outgoing requests go through (never its credentials). */
function logProxy(log: Logger, config: Config): void {
  const proxy = describeProxy(config.proxy);
  if (proxy) log.info(proxy, 'proxy in use');
}

/** The longest `--timeout`: 24 days, under the longest delay a Node.js timer holds. */
const MAX_TIMEOUT_MS = 24 * 86_400_000;

/** `--timeout DURATION`, or `fallback` when it is not given. */
export function parseTimeout(value: unknown, fallback: number | undefined): number | undefined {
  if (value === undefined) return fallback;
  const ms = durationWithin(String(value), 1, MAX_TIMEOUT_MS);
  if (ms === undefined) {
    throw new UsageError(
      `--timeout: expected a duration from 1ms to 24d (like 250ms, 10s, 5m, 1h, or milliseconds), got ${JSON.stringify(value)}`,
    );
  }
  return ms;
}

function strings(value: ParsedValues[string]): string[] {
  if (value === undefined || typeof value === 'boolean') return [];
  return Array.isArray(value) ? value : [value];
}

function noIds(command: 'watch' | 'get'): string {
  const all = command === 'watch' ? '; or --all for every unfinished job of yours' : '';
  return `${command} needs at least one export id: as arguments, with --ids-file FILE, or - to read them from standard input${all}`;
}

/** `--kind`: export or import (a plural is taken too); undefined when not given. */
export function parseKind(value: ParsedValues[string]): JobKind | undefined {
  if (value === undefined) return undefined;
  const text = String(value).trim().toLowerCase();
  if (text === 'export' || text === 'exports') return 'export';
  if (text === 'import' || text === 'imports') return 'import';
  throw new UsageError(`--kind: expected export or import, got ${JSON.stringify(value)}`);
}

function idsInput(context: CliContext) {
  return { stdin: context.stdin ?? process.stdin, stderr: process.stderr };
}

/**
 * `work`, or the first stop signal (see cli/signals.ts) that comes before it settles (its handlers
 * are removed once either happens). Reading ids from a pipe whose writer never closes it
 * (`producer | … -`) must not leave the process to the default handling of a signal, which kills
 * it with the signal instead of the exit code the command documents.
 */
async function orSignal<T>(work: Promise<T>): Promise<{ value: T } | { signal: NodeJS.Signals }> {
  let onSignal: (signal: NodeJS.Signals) => void = () => undefined;
  const signalled = new Promise<{ signal: NodeJS.Signals }>((resolve) => {
    onSignal = (signal) => resolve({ signal });
  });
  const unhandle = onStopSignals(onSignal);
  // Lost to a signal, its failure is nobody's concern any more.
  work.catch(() => undefined);
  try {
    return await Promise.race([work.then((value) => ({ value })), signalled]);
  } finally {
    unhandle();
  }
}

/** Standard Webhooks asks for signing keys of 24 to 64 random bytes. */
const MIN_SECRET_KEY_BYTES = 24;

async function runCommand(args: readonly string[], env: () => Env, context: CliContext): Promise<number> {
  const { values } = parseCommand('run', args);
  // A first signal while the ids are read: nothing has started, and run exits 0 on it.
  const read = await orSignal(
    (async () => ({
      ids: await collectIds(
        { ids: strings(values.id), files: strings(values['ids-file']) },
        idsInput(context),
      ),
      importIds: await collectIds({ ids: strings(values['import-id']) }, idsInput(context)),
    }))(),
  );
  if ('signal' in read) return 0;
  const { ids, importIds } = read.value;
  const environment = withFlags(env(), values);
  const config = loadForPlatform(environment, context);
  const log = createLogger({
    level: config.logLevel,
    pretty: Boolean(process.stdout.isTTY),
    batched: true,
    redactor: context.redactor,
  });
  logProxy(log, config);
  for (const line of unknownVariables(environment)) log.warn(line);
  const key = config.webhook.secretKey;
  if (key !== undefined && key.length < MIN_SECRET_KEY_BYTES) {
    log.warn(
      `WATCHER_WEBHOOK_SECRET's key is ${key.length} bytes: a key anyone can guess makes signatures worthless; use ${MIN_SECRET_KEY_BYTES} to 64 random bytes (see README, Webhooks)`,
    );
  }
  if (config.webhook.urls.length === 0) {
    log.warn(
      'WATCHER_WEBHOOK_URLS is not set: no webhook is sent; outcomes go to the log and the control API only',
    );
  }
  // Signals are handled from here on, also while the store opens: a first one stops the daemon
  // (at once when it exists), or ends a store still opening (a database that does not answer
  // would otherwise hold it until its connect timeout, then report a failure nobody asked
  // about), and exits 0; a second exits 130.
  let daemon: Daemon | undefined;
  let stopOpening: () => void = () => undefined;
  const openingStopped = new Promise<undefined>((resolve) => {
    stopOpening = () => resolve(undefined);
  });
  let signals = 0;
  let exitWith: (code: number) => void = () => undefined;
  const stopped = new Promise<number>((resolve) => {
    exitWith = resolve;
  });
  const stop = (d: Daemon) =>
    d.stop().then(
      () => exitWith(0),
      (error: unknown) => {
        log.error({ err: error }, 'error while stopping');
        exitWith(1);
      },
    );
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn({ signal }, 'second signal: exiting at once');
      exitProcess(130);
      return;
    }
    log.info({ signal }, 'signal received; shutting down');
    if (daemon) void stop(daemon);
    else stopOpening();
  };
  const unhandle = onStopSignals(onSignal, {
    onHangUpAgain: () => log.info('SIGHUP again (the same hang-up): ignored'),
  });
  // Stopped during start-up: the ids given here are not added (nothing was acknowledged for them).
  const warnNotAdded = (): void => {
    const given = ids.length + importIds.length;
    if (given > 0) {
      log.warn({ ids: given }, 'stopped during start-up: the ids given on the command line were not added');
    }
  };
  const stoppedEarly = (): Promise<number> => {
    warnNotAdded();
    return stopped;
  };
  const opening = Daemon.open(config, { log, api: true });
  try {
    daemon = await Promise.race([opening, openingStopped]);
  } catch (error) {
    unhandle();
    throw error;
  }
  if (daemon === undefined) {
    // Nothing was started; the process exits now, which drops the connection still being made.
    // Should the store open meanwhile, it is closed.
    opening.then(
      (late) => late.stop().catch(() => undefined),
      () => undefined,
    );
    log.info('stopped while the store was opening');
    warnNotAdded();
    return 0;
  }
  if (signals > 0) {
    void stop(daemon);
    return stoppedEarly();
  }

  try {
    await daemon.start();
  } catch (error) {
    // Nothing has started but the attempt to listen: report it (which port, which flag) and exit.
    unhandle();
    throw listenError(error, config.http.host, config.http.port);
  }
  // A signal during start-up has already begun the shutdown.
  if (signals > 0) return stoppedEarly();
  log.info(
    {
      version: VERSION,
      endpoint: config.endpoint,
      ...(config.profile ? { profile: config.profile.name, credentials_file: config.profile.file } : {}),
      poll_interval_ms: config.pollIntervalMs,
      rate_budget: config.rateBudget,
      rate_window_ms: config.rateWindowMs,
      ...(config.discover.length > 0
        ? { discover: config.discover, discover_interval_ms: config.discoverIntervalMs }
        : {}),
      webhook_endpoints: config.webhook.urls.length,
      signed: config.webhook.secretKey !== undefined,
      ...(config.databaseUrl === undefined
        ? { store: 'sqlite', data_dir: config.dataDir }
        : {
            store: 'postgresql',
            database: safeUrl(config.databaseUrl),
            leader_timeout_ms: config.leaderTimeoutMs,
          }),
    },
    'sbg-export-watcher started',
  );
  for (const [kind, list] of [
    ['export', ids],
    ['import', importIds],
  ] as const) {
    if (list.length === 0) continue;
    const { conflicts = [] } = await daemon.registry.watch(list, null, kind);
    if (conflicts.length > 0) {
      log.error(
        { kind, count: conflicts.length, ids: conflicts.slice(0, 20) },
        `ids given as ${kind}s are watched as the other kind; not added`,
      );
    }
  }
  return stopped;
}

async function watchCommand(args: readonly string[], env: () => Env, context: CliContext): Promise<number> {
  const { values, positionals } = parseCommand('watch', args);
  const timeoutMs = parseTimeout(values.timeout, undefined);
  const kind = parseKind(values.kind);
  const all = values.all === true;
  if (all && (positionals.length > 0 || strings(values['ids-file']).length > 0)) {
    throw new UsageError('watch --all takes no ids: it watches every unfinished job of yours');
  }
  const read = all
    ? { value: [] as string[] }
    : await orSignal(collectIds({ positionals, files: strings(values['ids-file']) }, idsInput(context)));
  if ('signal' in read) {
    process.stderr.write('interrupted while the ids were being read; nothing was watched\n');
    return signalExitCode(read.signal);
  }
  const ids = read.value;
  if (!all && ids.length === 0) throw new UsageError(noIds('watch'));
  // Progress owns the terminal: logs stay quiet unless asked for.
  const environment = withFlags(env(), values);
  const config = loadForPlatform(quietByDefault(environment), context, {
    listens: false,
    discovers: false,
    stores: false,
  });
  // Not left to the quiet log: a misspelt variable (a webhook URL, the poll interval) is one
  // that watch reads too, from the same .env as the daemon.
  for (const line of unknownVariables(environment)) process.stderr.write(`warning: ${line}\n`);
  const log = createLogger({
    level: config.logLevel,
    destination: process.stderr,
    redactor: context.redactor,
  });
  logProxy(log, config);
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) return exitProcess(signalExitCode(signal));
    controller.abort(signalExitCode(signal));
  };
  onStopSignals(onSignal);
  return runWatch({
    config,
    ids,
    ...(kind ? { kind } : {}),
    ...(all ? { all: kind ? [kind] : (['export', 'import'] as const) } : {}),
    json: values.json === true,
    stdout: process.stdout,
    stderr: process.stderr,
    stdoutTty: Boolean(process.stdout.isTTY),
    stderrTty: Boolean(process.stderr.isTTY),
    log,
    signal: controller.signal,
    timeoutMs,
    redactor: context.redactor,
  });
}

async function getCommand(args: readonly string[], env: () => Env, context: CliContext): Promise<number> {
  const { values, positionals } = parseCommand('get', args);
  const timeoutMs = parseTimeout(values.timeout, GET_DEFAULT_TIMEOUT_MS) ?? GET_DEFAULT_TIMEOUT_MS;
  const kind = parseKind(values.kind) ?? 'export';
  const ids = await collectIds({ positionals, files: strings(values['ids-file']) }, idsInput(context));
  if (ids.length === 0) throw new UsageError(noIds('get'));
  const config = loadForPlatform(quietByDefault(withFlags(env(), values)), context, {
    listens: false,
    discovers: false,
    stores: false,
  });
  const log = createLogger({
    level: config.logLevel,
    destination: process.stderr,
    redactor: context.redactor,
  });
  logProxy(log, config);
  return runGet({
    config,
    ids,
    kind,
    json: values.json === true || !process.stdout.isTTY,
    stdout: process.stdout,
    log,
    timeoutMs,
  });
}

/** The flags `events` and `redeliver` share: where the daemon is, and how long to wait for it. */
const CONTROL_API_FLAGS = {
  'api-url': { type: 'string' },
  timeout: { type: 'string' },
} as const;

/**
 * What `events` and `redeliver` need to ask the daemon: its control API, the request limit
 * (--timeout), where errors go. Reads the configuration for the address and the API token only:
 * no platform token is needed.
 */
function controlIo(values: ParsedValues, env: () => Env, context: CliContext) {
  const timeoutMs = parseTimeout(values.timeout, CONTROL_DEFAULT_TIMEOUT_MS) ?? CONTROL_DEFAULT_TIMEOUT_MS;
  const config = load(env(), context, { listens: false, stores: false });
  const apiUrl = typeof values['api-url'] === 'string' ? values['api-url'] : undefined;
  return {
    target: controlApiTarget(apiUrl, config),
    timeoutMs,
    stderr: process.stderr,
    redactor: context.redactor,
  };
}

async function eventsCommand(args: readonly string[], env: () => Env, context: CliContext): Promise<number> {
  const { values } = parse(
    'events',
    args,
    {
      export: { type: 'string' },
      import: { type: 'string' },
      status: { type: 'string' },
      since: { type: 'string' },
      limit: { type: 'string' },
      all: { type: 'boolean' },
      json: { type: 'boolean' },
      ...CONTROL_API_FLAGS,
    },
    false,
  );
  const query = eventsQuery(values, Date.now());
  return runEvents({
    ...controlIo(values, env, context),
    query,
    json: values.json === true || !process.stdout.isTTY,
    stdout: process.stdout,
  });
}

async function redeliverCommand(
  args: readonly string[],
  env: () => Env,
  context: CliContext,
): Promise<number> {
  const { values, positionals } = parse(
    'redeliver',
    args,
    {
      'webhook-url': { type: 'string' },
      since: { type: 'string' },
      status: { type: 'string' },
      ...CONTROL_API_FLAGS,
    },
    true,
  );
  const plan = redeliverPlan(positionals, values, Date.now());
  // The daemon quotes an endpoint it does not know: its credentials are never printed back.
  if (plan.kind === 'ids' && plan.endpoint !== undefined) context.redactor.add(urlSecrets(plan.endpoint));
  return runRedeliver({ ...controlIo(values, env, context), plan, stdout: process.stdout });
}

async function simulateCommand(args: readonly string[]): Promise<number> {
  const { values } = parse(
    'simulate',
    args,
    {
      port: { type: 'string' },
      exports: { type: 'string' },
      imports: { type: 'string' },
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
      'error-ids': { type: 'string' },
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
    // At most a timer's longest wait (~24.8 days): node fires a longer one at once.
    if (Number.isNaN(ms) || ms <= 0 || ms > 2_147_483_647)
      problems.push(`--${flag}: expected a duration like 500ms or 5s, up to 24d, got ${JSON.stringify(v)}`);
    return ms;
  };
  const range = (flag: string): [number, number] | undefined => {
    const v = values[flag];
    if (v === undefined) return undefined;
    const parts = String(v).split('-');
    const [a, b = a] = parts;
    const min = parseDuration(a ?? '');
    const max = parseDuration(b ?? '');
    if (parts.length > 2 || Number.isNaN(min) || Number.isNaN(max) || min > max) {
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
  const seedImports = int('imports', 0, 1_000_000);
  if (seedImports !== undefined) options.imports = seedImports;
  if (typeof values.token === 'string') {
    if (values.token.trim() === '') problems.push('--token: expected a non-empty token, got nothing');
    // Sent in a header, which cannot carry spaces at its ends or other than visible ASCII.
    else if (!TOKEN_TEXT.test(values.token))
      problems.push('--token: expected a token of visible ASCII characters, without spaces');
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
  if (typeof values['error-ids'] === 'string') {
    const errorIds = values['error-ids']
      .split(',')
      .map((id) => id.trim())
      .filter((id) => id !== '');
    if (
      errorIds.length === 0 ||
      errorIds.length > MAX_ERROR_IDS ||
      errorIds.some((id) => id.length > MAX_ERROR_ID_LENGTH)
    ) {
      problems.push(
        `--error-ids: expected 1 to ${MAX_ERROR_IDS} comma-separated ids of at most ${MAX_ERROR_ID_LENGTH} characters each`,
      );
    } else {
      faults.errorIds = errorIds;
    }
  }
  if (Object.keys(faults).length > 0) options.faults = faults;
  if (problems.length > 0) throw new ConfigError(problems);

  const simulator = new Simulator(options);
  return serveUntilStopped('simulator', options.port ?? 0, async () => ({
    url: await simulator.start(),
    close: () => simulator.close(),
  }));
}

/**
 * A loopback server of a command's own (`simulate`, `receive`): started, its URL printed, closed
 * at the first stop signal. A second signal (a close that hangs) is left to its default action:
 * it ends the process.
 */
async function serveUntilStopped(
  name: string,
  port: number,
  start: () => Promise<{ url: string; close(): Promise<void> }>,
): Promise<number> {
  const server = await start().catch((error: unknown) => {
    throw listenError(error, '127.0.0.1', port, {
      port: 'choose another --port (0 picks a free one)',
      host: `the ${name} listens on 127.0.0.1`,
    });
  });
  process.stdout.write(`${server.url}\n`);
  await new Promise<void>((resolve) => {
    const unhandle = onStopSignals(() => {
      unhandle();
      resolve();
    });
  });
  await server.close();
  return 0;
}

async function receiveCommand(args: readonly string[], env: () => Env): Promise<number> {
  const { values } = parse('receive', args, { port: { type: 'string' } }, false);
  let port = 0;
  if (values.port !== undefined) {
    port = Number(values.port);
    if (!Number.isInteger(port) || port < 0 || port > 65_535) {
      throw new UsageError(
        `--port: expected a whole number from 0 to 65535, got ${JSON.stringify(values.port)}`,
      );
    }
  }
  // The secret from where the daemon reads it (never a flag: a command line is visible to others).
  const secret = env().WATCHER_WEBHOOK_SECRET?.trim() || undefined;
  if (secret !== undefined) {
    try {
      parseSecret(secret);
    } catch {
      throw new ConfigError([
        `WATCHER_WEBHOOK_SECRET: expected "whsec_" followed by a base64 key, got a value of ${secret.length} characters (hidden)`,
      ]);
    }
  }
  const log = createLogger({ level: 'info', destination: process.stderr });
  return serveUntilStopped('receiver', port, () =>
    startReceiving({ port, secret, stdout: process.stdout, log: log.child({ component: 'receiver' }) }),
  );
}

async function demoCommand(args: readonly string[]): Promise<number> {
  const { values } = parse(
    'demo',
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
  const text = (flag: string): string | undefined => {
    const v = values[flag];
    return typeof v === 'string' ? v : undefined;
  };
  return runDemo({
    exports: count('exports', 300),
    unknown: count('unknown', 5),
    settings: {
      pollInterval: text('poll-interval'),
      rateBudget: text('rate-budget'),
      rateWindow: text('rate-window'),
    },
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

/** The exit code of a process that SIGPIPE ended: what a shell reports for other tools in `| head`. */
export const BROKEN_PIPE_EXIT = 128 + 13;

/**
 * A reader that went away (`watch … | head -1`) ends the process at once and quietly, as SIGPIPE
 * ends other tools (node ignores the signal and fails the write instead, which would otherwise
 * end it with a stack trace). Nothing more could be said on that stream anyway; the daemon's
 * state is on disk.
 */
function exitOnBrokenPipe(stream: NodeJS.WriteStream): void {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(BROKEN_PIPE_EXIT);
    // A terminal that hung up: the command stops as on the SIGHUP that comes with it, raised here
    // when none came (cli/signals.ts).
    if (isHungUpTerminal(stream, error)) return terminalHungUp();
    throw error;
  });
}

/**
 * The exit code of a command that returned `code`: 141 when a write to one of `streams` failed
 * because its reader went away. A command that ends right after such a write (`get … | head -1`)
 * returns before the stream's 'error' event, which `exitOnBrokenPipe` waits for, is emitted; the
 * failure is already recorded on the stream.
 */
export function exitCodeAfterOutput(
  code: number,
  streams: ReadonlyArray<{ readonly errored?: Error | null }> = [process.stdout, process.stderr],
): number {
  const brokenPipe = streams.some(
    (s) => (s.errored as NodeJS.ErrnoException | null | undefined)?.code === 'EPIPE',
  );
  return brokenPipe ? BROKEN_PIPE_EXIT : code;
}

/** How long an exit waits for queued output at most: a reader that never reads must not hold it. */
const OUTPUT_FLUSH_TIMEOUT_MS = 10_000;

/**
 * Resolves once everything written to `stream` so far has been handed to the system, or failed,
 * or after `OUTPUT_FLUSH_TIMEOUT_MS`.
 */
function flushed(stream: NodeJS.WriteStream): Promise<void> {
  if (stream.destroyed || stream.writableLength === 0) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, OUTPUT_FLUSH_TIMEOUT_MS);
    stream.write('', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

if (isEntryPoint()) {
  exitOnBrokenPipe(process.stdout);
  exitOnBrokenPipe(process.stderr);
  // The environment is read inside the command, so a broken .env or credential is reported like
  // any configuration problem, and --help and --version never read it.
  const dotenv: DotenvLookup = {};
  runCli(process.argv.slice(2), () => readEnvironment(process.env, undefined, dotenv), {
    stderr: process.stderr,
    dotenv,
  }).then(
    async (code) => {
      // stdout to a socket (a parent's pipe from Node, for one) is written asynchronously: exiting
      // at once would drop what is still queued, and hide a reader that went away. The log lines
      // `run` still holds for the end of this turn go first, so that they are waited for too.
      flushLogLines();
      await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
      exitProcess(exitCodeAfterOutput(code));
    },
    (error: unknown) => {
      process.stderr.write(`error: ${String(error)}\n`);
      exitProcess(1);
    },
  );
}
