/**
 * `watch ID...`: the daemon in the foreground of a script, without the control API. It waits
 * until every given export is terminal (and its webhooks, if any are configured, are delivered),
 * shows progress on stderr and prints one line per finished export on stdout. The ids may be
 * imports instead (`--kind import`); `--all` watches every unfinished job of the user, listed once
 * at start (both kinds, or the one `--kind` names), and ends at once (0) when there is none.
 *
 * stderr: a live progress bar on a terminal, otherwise one line per state change; a warning when
 * no check has succeeded for 5 minutes (and again for every further 5 minutes), saying why.
 * stdout: per finished export, a JSON object (`--json`, or whenever stdout is not a terminal) or a
 * readable line (`<id>  LOST  9008 Requested job does not exist.`).
 *
 * How it ends, each with its own line on stderr:
 * - every export terminal: 0 all COMPLETED, 1 any FAILED or LOST;
 * - the platform refused the token: 1 (waiting cannot cure it);
 * - `--timeout` passed: 1, saying how many exports were not finished;
 * - SIGINT 130, SIGTERM 143, SIGHUP 129 ("interrupted before every export finished").
 */
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import { formatDuration } from '../config/config.js';
import { type ExportView, recordToJson, type WatchRegistry } from '../http/control-api.js';
import { Daemon, type DaemonOptions, type StopReport } from '../main.js';
import type { RequestOutcome } from '../platform/platform-client.js';
import {
  EXPORT_STATES,
  type ExportState,
  isTerminal,
  type JobKind,
  type Transition,
} from '../polling/tracker.js';
import { Bus } from '../shared/bus.js';
import { settlesWithin } from '../shared/deadline.js';
import { PlatformError, UsageError } from '../shared/errors.js';
import { Redactor } from '../shared/redact.js';
import { oneLine, outcomeProblem, roundedDuration, textOf } from './error-report.js';

/** A warning on stderr after this long without a successful check, and again after each as long. */
export const STALL_WARNING_MS = 5 * 60_000;

/** What runWatch needs of the daemon; main.ts's Daemon is one, a test passes a plain object. */
export interface WatchDaemon {
  registry: Pick<WatchRegistry, 'watch' | 'get'>;
  /** Every unfinished job of `kind` the platform lists for the user (`--all`). */
  listUnfinished?(kind: JobKind): Promise<string[]>;
  /** Counts of the exports still watched (terminal ones are counted by watch itself). */
  tracker: { countByState(): Record<ExportState, number> };
  scheduler: { onSettled(): Promise<void> };
  deliveries: { settled(): Promise<void> };
  start(): Promise<unknown>;
  stop(deadlineMs?: number): Promise<StopReport>;
}

export interface WatchOptions {
  config: Config;
  ids: readonly string[];
  /** The kind of `ids`; default export. */
  kind?: JobKind;
  /** Instead of ids: every unfinished job of these kinds, listed once at start (`--all`). */
  all?: readonly JobKind[];
  json: boolean;
  stdout: Writable;
  stderr: Writable;
  /** Whether stderr is a terminal (live progress bar). */
  stderrTty: boolean;
  /** Whether stdout is a terminal (readable lines unless --json). */
  stdoutTty: boolean;
  log: Logger;
  /** Aborted on a stop signal (cli/signals.ts); its reason is the exit code to use. */
  signal: AbortSignal;
  now?: () => number;
  /** Give up after this long (`--timeout`); undefined waits as long as it takes. */
  timeoutMs?: number | undefined;
  /** Default STALL_WARNING_MS. */
  stallWarningMs?: number;
  /** Scrubs every line written about a problem; default one that only cleans URLs. */
  redactor?: Redactor;
  /** Builds the daemon; default main.ts's Daemon, with its state in memory. */
  createDaemon?: (config: Config, options: DaemonOptions) => Promise<WatchDaemon>;
}

type Ending =
  | { kind: 'settled' }
  | { kind: 'signal'; code: number }
  | { kind: 'refused' }
  | { kind: 'timeout' };

const BAR_WIDTH = 24;

export async function runWatch(options: WatchOptions): Promise<number> {
  const now = options.now ?? Date.now;
  const redactor = options.redactor ?? new Redactor();
  const endpoint = options.config.endpoint;
  const idKind = options.kind ?? 'export';
  /** What is watched, by kind; with --all, filled once the platform has listed them. */
  const jobs: Record<JobKind, ReadonlySet<string>> = { export: new Set(), import: new Set() };
  jobs[idKind] = new Set(options.ids);
  const total = () => jobs.export.size + jobs.import.size;
  const started = now();
  let finished = 0;
  let failed = 0;
  const progress = new Progress(options, total(), started, now);
  const say = (line: string) =>
    progress.above(() => options.stderr.write(`${redactor.scrub(oneLine(line))}\n`));

  // A refused token does not cure itself while a script waits: say so and exit 1.
  let refused: () => void = () => undefined;
  const tokenRefused = new Promise<Ending>((resolve) => {
    refused = () => resolve({ kind: 'refused' });
  });
  const stall = new StallWarning({
    afterMs: options.stallWarningMs ?? STALL_WARNING_MS,
    now,
    warn: (silentMs, problem) =>
      say(
        `warning: no check has succeeded for ${roundedDuration(silentMs)}: ${problem ?? `no answer from the platform at ${endpoint}`}; still trying (Ctrl-C stops${options.timeoutMs === undefined ? ', --timeout sets a limit' : ''})`,
      ),
  });

  const bus = new Bus(options.log);
  /** Finished exports by state: the tracker forgets them once terminal. */
  const ended = Object.fromEntries(EXPORT_STATES.map((s) => [s, 0])) as Record<ExportState, number>;
  /** Lines for finished exports being read from the store; awaited before returning. */
  const printing = new Set<Promise<void>>();
  bus.on('platform.request', ({ outcome }) => {
    stall.observe(outcome, outcomeProblem(outcome, endpoint));
    if (outcome === 'unauthorized') refused();
  });
  bus.on('transition', (t) => {
    // Only the jobs asked for (the daemon below runs no discovery; this holds whatever it runs).
    if (!jobs[t.kind ?? 'export'].has(t.exportId)) return;
    progress.change(t);
    if (!isTerminal(t.to)) return;
    finished++;
    ended[t.to]++;
    if (t.to !== 'COMPLETED') failed++;
    const line = (
      t.kind === 'import' ? daemon.registry.get(t.exportId, t.kind) : daemon.registry.get(t.exportId)
    ).then((view) => {
      if (view) progress.above(() => options.stdout.write(formatFinished(view, options)));
    });
    printing.add(line);
    void line.finally(() => printing.delete(line));
  });
  const createDaemon =
    options.createDaemon ?? ((config, o) => Daemon.open(config, { ...o, storage: 'memory' }));
  // `watch` waits for the jobs it is given (or, with --all, listed once): WATCHER_DISCOVER, meant
  // for `run`, must not add others to wait for, print and count.
  const config: Config =
    options.config.discover.length > 0 ? { ...options.config, discover: [] } : options.config;
  const daemon = await createDaemon(config, { log: options.log, now, bus });

  const interrupted = new Promise<Ending>((resolve) => {
    const end = () => resolve({ kind: 'signal', code: Number(options.signal.reason) || 130 });
    if (options.signal.aborted) end();
    options.signal.addEventListener('abort', end, { once: true });
  });
  /** Exists while a --timeout is pending. */
  let timeoutTimer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<Ending>((resolve) => {
    if (options.timeoutMs !== undefined)
      timeoutTimer = setTimeout(() => resolve({ kind: 'timeout' }), options.timeoutMs);
  });

  let over = false;
  /** False while `--all` is still listing the platform's unfinished jobs: nothing is watched yet. */
  let listed = options.all === undefined;
  stall.start();
  const settled = (async (): Promise<Ending> => {
    if (options.all) {
      const list = daemon.listUnfinished?.bind(daemon);
      if (!list) throw new Error('watch --all: this daemon cannot list jobs');
      // A deployment without one kind's list route (imports, say) answers 404 there: with both
      // kinds asked for, the other is still watched; only when every listing fails is it an error.
      const failures: Array<{ kind: JobKind; error: Error }> = [];
      for (const kind of options.all) {
        try {
          jobs[kind] = new Set(await list(kind));
        } catch (error) {
          const missing =
            error instanceof PlatformError &&
            error.code === 'PLATFORM_REJECTED' &&
            (error.status === 404 || error.status === 405);
          if (!missing || options.all.length === 1) throw error;
          failures.push({ kind, error });
        }
      }
      // Not one listing was read: the endpoint, not a kind, is the likelier cause.
      if (failures.length === options.all.length) throw failures[0]?.error;
      for (const { kind, error } of failures) {
        say(
          `warning: the platform has no listing of ${kind}s (${error.message}); only the other kind is watched`,
        );
      }
      // Listed as both kinds: which one it is cannot be told, so neither is watched (README).
      const both = [...jobs.export].filter((id) => jobs.import.has(id));
      if (both.length > 0) {
        const shared = new Set(both);
        for (const kind of ['export', 'import'] as const)
          jobs[kind] = new Set([...jobs[kind]].filter((id) => !shared.has(id)));
        say(
          `warning: the platform listed ${both.length} job${both.length === 1 ? '' : 's'} as both an export and an import; not watched: ${both.slice(0, 5).join(', ')}`,
        );
      }
      listed = true;
      progress.total = total();
      if (total() === 0) {
        say(`no unfinished ${options.all.map((k) => `${k}s`).join(' or ')} to watch`);
        return { kind: 'settled' };
      }
    }
    // (With --all, an id listed as both kinds was left out above: nothing listed can conflict.)
    for (const kind of ['export', 'import'] as const) {
      if (jobs[kind].size === 0) continue;
      const ids = [...jobs[kind]];
      const result = await (kind === 'export'
        ? daemon.registry.watch(ids, null)
        : daemon.registry.watch(ids, null, kind));
      if (result.conflicts && result.conflicts.length > 0) {
        throw new UsageError(
          `${result.conflicts.length} of the ${kind} ids ${result.conflicts.length === 1 ? 'is' : 'are'} also given as ${kind === 'export' ? 'import' : 'export'}s: ${result.conflicts.slice(0, 5).join(', ')}`,
        );
      }
    }
    // Start-up waits up to a few seconds for the platform's quota: a timeout or Ctrl-C may come first.
    await daemon.start();
    if (!over) progress.start(() => addCounts(daemon.tracker.countByState(), ended), jobs);
    await daemon.scheduler.onSettled();
    await Promise.all(printing);
    return { kind: 'settled' };
  })();
  // Whichever ending wins the race, a later failure of the run is not left unhandled.
  settled.catch(() => undefined);
  let ending: Ending;
  try {
    ending = await Promise.race([settled, interrupted, tokenRefused, timedOut]);
  } finally {
    over = true;
    stall.stop();
    if (timeoutTimer) clearTimeout(timeoutTimer);
    progress.stop();
  }

  const left = total() - finished;
  const noun = (n: number) => jobNoun(jobs, n);
  // Stopped before --all's listing ended: no count of jobs exists to report ("0 of 0").
  const unlisted = `while the unfinished ${(options.all ?? []).map((k) => `${k}s`).join(' and ')} were being listed; nothing was watched`;
  let code: number;
  switch (ending.kind) {
    case 'settled':
      code = failed > 0 ? 1 : 0;
      break;
    case 'signal':
      code = ending.code;
      say(
        listed
          ? `interrupted before every ${noun(1)} finished (${left} of ${total()} not finished)`
          : `interrupted ${unlisted}`,
      );
      break;
    case 'refused':
      code = 1;
      say(
        'error: the platform refused the token; set SB_AUTH_TOKEN to a valid token (from the Developer tab of the platform)',
      );
      break;
    case 'timeout': {
      code = 1;
      const problem = stall.problem;
      const what = listed ? `${left} of ${total()} ${noun(total())} not finished` : unlisted;
      say(
        `error: timed out after ${formatDuration(options.timeoutMs ?? 0)} (--timeout): ${what}${problem ? `; ${problem}` : ''}`,
      );
      break;
    }
  }
  // Deliveries of the outcomes get up to WATCHER_SHUTDOWN_TIMEOUT to finish (a receiver that is
  // down must not hold a script for WATCHER_WEBHOOK_MAX_AGE); what is left is logged at error.
  // A signal meanwhile stops the wait: Ctrl-C is 130 (SIGTERM 143, SIGHUP 129) whenever it comes.
  if (code < 128) {
    const waited = await Promise.race([
      settlesWithin(daemon.deliveries.settled(), options.config.shutdownTimeoutMs).then(() => undefined),
      interrupted,
    ]);
    if (waited?.kind === 'signal') {
      code = waited.code;
      say('interrupted while the last webhook deliveries were being sent');
    }
  }
  const { pendingDeliveries } = await daemon.stop(0);
  if (pendingDeliveries > 0) say(`${pendingDeliveries} webhook deliveries not done`);
  return code;
}

/** "export(s)", "import(s)", or "job(s)" when both kinds are watched. */
function jobNoun(jobs: Readonly<Record<JobKind, ReadonlySet<string>>>, n: number): string {
  const word = jobs.import.size === 0 ? 'export' : jobs.export.size === 0 ? 'import' : 'job';
  return n === 1 ? word : `${word}s`;
}

/** The sum of two counts by state. */
function addCounts(
  a: Readonly<Record<ExportState, number>>,
  b: Readonly<Record<ExportState, number>>,
): Record<ExportState, number> {
  return Object.fromEntries(EXPORT_STATES.map((s) => [s, (a[s] ?? 0) + (b[s] ?? 0)])) as Record<
    ExportState,
    number
  >;
}

export function formatFinished(view: ExportView, options: Pick<WatchOptions, 'json' | 'stdoutTty'>): string {
  // The record as the control API shows it, without its events (the line is about the export).
  const { events: _events, ...record } = view;
  if (options.json || !options.stdoutTty) return `${JSON.stringify(recordToJson(record))}\n`;
  // LOST carries the "no such job" error; FAILED the job's own.
  const error = (record.error ?? record.export?.error ?? null) as {
    code?: unknown;
    message?: unknown;
  } | null;
  const text = error ? oneLine(`${textOf(error.code)} ${textOf(error.message)}`.trim()) : '';
  return `${record.id}  ${record.state}${text ? `  ${text}` : ''}\n`;
}

export interface StallWarningOptions {
  /** Warn after this long without a success, and again after each further as long. */
  afterMs: number;
  now: () => number;
  /** `problem`: why the last request failed, if it did. */
  warn(silentMs: number, problem: string | undefined): void;
}

/**
 * Says so when no platform request has succeeded for `afterMs`, and again for every further
 * `afterMs` it lasts. A success resets the count.
 */
export class StallWarning {
  readonly #options: StallWarningOptions;
  #lastOkAt = 0;
  /** Why the last request failed, while no request has succeeded since. */
  #problem: string | undefined;
  /** Exists between start() and stop(): fires when the next warning may be due. */
  #timer: NodeJS.Timeout | undefined;

  constructor(options: StallWarningOptions) {
    this.#options = options;
  }

  get problem(): string | undefined {
    return this.#problem;
  }

  start(): void {
    if (this.#timer) return;
    this.#lastOkAt = this.#options.now();
    this.#schedule(this.#options.afterMs);
  }

  /** The outcome of one platform request, and the problem it shows (undefined for a success). */
  observe(outcome: RequestOutcome, problem: string | undefined): void {
    if (outcome === 'ok' || outcome === 'not_found') {
      this.#lastOkAt = this.#options.now();
      this.#problem = undefined;
    } else if (problem !== undefined) {
      this.#problem = problem;
    }
  }

  stop(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(ms: number): void {
    this.#timer = setTimeout(() => this.#check(), ms);
    this.#timer.unref();
  }

  #check(): void {
    const silent = this.#options.now() - this.#lastOkAt;
    if (silent >= this.#options.afterMs) {
      this.#options.warn(silent, this.#problem);
      this.#schedule(this.#options.afterMs);
    } else {
      // A success came since: the next warning is due a whole period after it.
      this.#schedule(this.#options.afterMs - silent);
    }
  }
}

/** Progress on stderr: a bar redrawn in place on a terminal, a line per change otherwise. */
class Progress {
  readonly #options: WatchOptions;
  #total: number;
  readonly #started: number;
  readonly #now: () => number;
  /** Redraws the bar every second while it is shown (elapsed time moves). */
  #timer: NodeJS.Timeout | undefined;
  #counts: (() => Record<ExportState, number>) | undefined;
  #drawn = false;

  constructor(options: WatchOptions, total: number, started: number, now: () => number) {
    this.#options = options;
    this.#total = total;
    this.#started = started;
    this.#now = now;
  }

  /** Set once `--all` has listed the jobs. */
  set total(total: number) {
    this.#total = total;
  }

  start(
    counts: () => Record<ExportState, number>,
    jobs: Readonly<Record<JobKind, ReadonlySet<string>>>,
  ): void {
    this.#counts = counts;
    if (!this.#options.stderrTty) {
      const both =
        jobs.export.size > 0 && jobs.import.size > 0
          ? ` (${jobs.export.size} export${jobs.export.size === 1 ? '' : 's'}, ${jobs.import.size} import${jobs.import.size === 1 ? '' : 's'})`
          : '';
      this.#options.stderr.write(`watching ${this.#total} ${jobNoun(jobs, this.#total)}${both}\n`);
      return;
    }
    this.#draw();
    this.#timer = setInterval(() => this.#draw(), 1000);
    this.#timer.unref();
  }

  change(t: Transition): void {
    if (this.#options.stderrTty) {
      this.#draw();
      return;
    }
    const at = new Date(t.at).toISOString();
    this.#options.stderr.write(`${at} ${t.exportId} ${t.from} -> ${t.to}\n`);
  }

  /** Writes something to the terminal without tearing the bar. */
  above(write: () => void): void {
    const clear = this.#drawn && this.#options.stderrTty && this.#timer !== undefined;
    if (clear) this.#options.stderr.write('\r\x1b[2K');
    write();
    if (clear) this.#draw();
  }

  /** Draws the bar a last time and leaves the line; what follows goes below it. */
  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#options.stderrTty && this.#counts) {
      this.#draw();
      this.#options.stderr.write('\n');
    }
  }

  #draw(): void {
    if (!this.#options.stderrTty || !this.#counts) return;
    const c = this.#counts();
    const done = c.COMPLETED + c.FAILED + c.LOST;
    const filled = this.#total === 0 ? BAR_WIDTH : Math.round((done / this.#total) * BAR_WIDTH);
    const bar = `${'█'.repeat(filled)}${'░'.repeat(BAR_WIDTH - filled)}`;
    const elapsed = Math.round((this.#now() - this.#started) / 1000);
    const parts = [
      `${done}/${this.#total} done`,
      c.UNKNOWN ? `waiting ${c.UNKNOWN}` : '',
      c.PENDING ? `pending ${c.PENDING}` : '',
      c.RUNNING ? `running ${c.RUNNING}` : '',
      c.COMPLETED ? `completed ${c.COMPLETED}` : '',
      c.FAILED ? `failed ${c.FAILED}` : '',
      c.LOST ? `lost ${c.LOST}` : '',
    ].filter((p) => p !== '');
    this.#options.stderr.write(`\r\x1b[2K${bar} ${parts.join('  ')}  ${elapsed}s`);
    this.#drawn = true;
  }
}
