/**
 * `watch ID...`: the daemon in the foreground of a script, without the control API. It waits
 * until every given export is terminal (and its webhooks, if any are configured, are delivered),
 * shows progress on stderr and prints one line per finished export on stdout.
 *
 * stderr: a live progress bar on a terminal, otherwise one line per state change.
 * stdout: per finished export, a JSON object (`--json`, or whenever stdout is not a terminal) or a
 * readable line.
 * Exit: 0 all COMPLETED; 1 any FAILED or LOST; 130 interrupted (SIGINT), 143 terminated (SIGTERM).
 */
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import type { Config } from './config.js';
import { recordToJson } from './control-api.js';
import { settlesWithin } from './deadline.js';
import { Daemon } from './main.js';
import { type ExportState, isTerminal, type Transition } from './tracker.js';

export interface WatchOptions {
  config: Config;
  ids: readonly string[];
  json: boolean;
  stdout: Writable;
  stderr: Writable;
  /** Whether stderr is a terminal (live progress bar). */
  stderrTty: boolean;
  /** Whether stdout is a terminal (readable lines unless --json). */
  stdoutTty: boolean;
  log: Logger;
  /** Aborted on SIGINT/SIGTERM; its reason is the exit code to use. */
  signal: AbortSignal;
  now?: () => number;
}

const BAR_WIDTH = 24;

export async function runWatch(options: WatchOptions): Promise<number> {
  const now = options.now ?? Date.now;
  const ids = [...new Set(options.ids)];
  const started = now();
  let finished = 0;
  let failed = 0;
  const progress = new Progress(options, ids.length, started, now);

  const daemon = new Daemon(options.config, {
    log: options.log,
    now,
    onPlatformOutcome: (outcome) => {
      if (outcome === 'unauthorized') refused(1);
    },
    onTransition: (t) => {
      progress.change(t);
      if (!isTerminal(t.to)) return;
      finished++;
      if (t.to !== 'COMPLETED') failed++;
      const record = daemon.tracker.get(t.exportId);
      if (record) progress.above(() => options.stdout.write(formatFinished(record, options)));
    },
  });

  // A refused token does not cure itself while a script waits: say so and exit 1.
  let refused: (code: number) => void = () => undefined;
  const tokenRefused = new Promise<number>((resolve) => {
    refused = resolve;
  });
  const interrupted = new Promise<number>((resolve) => {
    if (options.signal.aborted) resolve(Number(options.signal.reason) || 130);
    options.signal.addEventListener('abort', () => resolve(Number(options.signal.reason) || 130), {
      once: true,
    });
  });
  daemon.registry.watch(ids, null);
  await daemon.start();
  progress.start(() => daemon.tracker.countByState());

  const done = (async () => {
    await daemon.scheduler.onSettled();
    return failed > 0 ? 1 : 0;
  })();
  const code = await Promise.race([done, interrupted, tokenRefused]);
  progress.stop(finished === ids.length);
  if (code === 1 && finished < ids.length) {
    options.stderr.write(
      `the platform refused the token (SB_AUTH_TOKEN); ${ids.length - finished} not finished\n`,
    );
  }
  // Deliveries of the outcomes get up to WATCHER_SHUTDOWN_TIMEOUT to finish (a receiver that is
  // down must not hold a script for WATCHER_WEBHOOK_MAX_AGE); what is left is logged at error.
  if (code < 128) await settlesWithin(daemon.webhooks.onIdle(), options.config.shutdownTimeoutMs);
  const { undelivered } = await daemon.stop(0);
  if (undelivered.length > 0) options.stderr.write(`${undelivered.length} webhook deliveries not done\n`);
  return code;
}

function formatFinished(
  record: NonNullable<ReturnType<Daemon['tracker']['get']>>,
  options: WatchOptions,
): string {
  if (options.json || !options.stdoutTty) return `${JSON.stringify(recordToJson(record))}\n`;
  const error = (record.export?.error ?? null) as { code?: number; message?: string } | null;
  const detail = error ? `  ${error.code ?? ''} ${error.message ?? ''}`.trimEnd() : '';
  return `${record.id}  ${record.state}${detail}\n`;
}

/** Progress on stderr: a bar redrawn in place on a terminal, a line per change otherwise. */
class Progress {
  readonly #options: WatchOptions;
  readonly #total: number;
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

  start(counts: () => Record<ExportState, number>): void {
    this.#counts = counts;
    if (!this.#options.stderrTty) {
      this.#options.stderr.write(`watching ${this.#total} export${this.#total === 1 ? '' : 's'}\n`);
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
    const clear = this.#drawn && this.#options.stderrTty;
    if (clear) this.#options.stderr.write('\r\x1b[2K');
    write();
    if (clear) this.#draw();
  }

  stop(complete: boolean): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#options.stderrTty) {
      this.#draw();
      this.#options.stderr.write('\n');
    }
    if (!complete) this.#options.stderr.write('interrupted before every export finished\n');
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
