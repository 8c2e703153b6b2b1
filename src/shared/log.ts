/**
 * Logging: pino, JSON lines. Secrets are removed by configuration, not by care at each call site:
 * any field under a secret's name is censored (log-fields.ts), and every finished line then passes
 * through the `Redactor` (redact.ts), which strips credentials and query strings from URLs and
 * replaces every known secret value wherever it appears (a message, an error text, an echoed body).
 */
import type { Writable } from 'node:stream';
import pino, { type DestinationStream, type Logger } from 'pino';
import pretty from 'pino-pretty';
import type { LogLevel } from '../config/config.js';
import { censorSecretFields } from './log-fields.js';
import { Redactor } from './redact.js';

/**
 * Censors secret fields by name (log-fields.ts) in every line a pino logger writes: each line's
 * fields through the `log` formatter, and a child logger's bindings, which pino writes once when
 * the child is made (not through formatters), as they are given to `child`. Children inherit both
 * (a pino child is made from its parent), fastify's included. Returns the logger.
 */
export function withCensoring(logger: Logger): Logger {
  const child = logger.child;
  logger.child = function (this: Logger, bindings, options) {
    return child.call(this, censorSecretFields(bindings), options);
  } as Logger['child'];
  return logger;
}

/** pino's option that censors each line's own fields (`withCensoring` does the bindings). */
export const CENSORING_FORMATTERS = { log: censorSecretFields };

export interface LoggerOptions {
  level: LogLevel;
  /** Where lines go: stdout for the daemon; stderr for commands whose stdout is their result. */
  destination?: Writable;
  /** Human-readable lines (for a terminal) instead of JSON. */
  pretty?: boolean;
  base?: Record<string, unknown>;
  /** Scrubs every line; default: one that knows no secret values but still cleans URLs. */
  redactor?: Redactor;
  /**
   * Lines logged within one turn of the event loop leave in one write (`TurnBatch`), not one
   * write each: for the daemon, whose stdout is a pipe (a container's log driver, the journal)
   * written synchronously, where a write per line cost a tenth of its CPU when thousands of exports
   * finished at once. Lines still leave within the turn they were logged in, and at exit.
   */
  batched?: boolean;
}

/** A batch is written at once when it holds this many characters. */
const BATCH_MAX_CHARS = 64 * 1024;

/** Every batch with lines not yet written, for `flushLogLines`. */
const openBatches = new Set<TurnBatch>();
let flushesAtExit = false;

/**
 * Writes what every batched logger holds, now. Runs at process exit by itself; call it before
 * ending the process another way (raising a signal on itself), which skips the exit handlers.
 */
export function flushLogLines(): void {
  for (const batch of openBatches) batch.flush();
}

/**
 * Lines gathered until the end of the current turn (`setImmediate`), or until they hold
 * `maxChars`, then written to `target` as one string, in the order they were logged.
 */
export class TurnBatch {
  readonly #target: { write(text: string): unknown };
  readonly #maxChars: number;
  #lines: string[] = [];
  #chars = 0;

  constructor(target: { write(text: string): unknown }, maxChars = BATCH_MAX_CHARS) {
    this.#target = target;
    this.#maxChars = maxChars;
    if (!flushesAtExit) {
      flushesAtExit = true;
      process.on('exit', flushLogLines);
    }
  }

  write(line: string): void {
    if (this.#lines.length === 0) {
      openBatches.add(this);
      setImmediate(() => this.flush());
    }
    this.#lines.push(line);
    this.#chars += line.length;
    if (this.#chars >= this.#maxChars) this.flush();
  }

  flush(): void {
    if (this.#lines.length === 0) return;
    const text = this.#lines.length === 1 ? (this.#lines[0] as string) : this.#lines.join('');
    this.#lines = [];
    this.#chars = 0;
    openBatches.delete(this);
    this.#target.write(text);
  }
}

export function createLogger(options: LoggerOptions): Logger {
  const destination = options.destination ?? process.stdout;
  const redactor = options.redactor ?? new Redactor();
  const target = options.pretty
    ? pretty({
        destination,
        colorize: true,
        sync: true,
        translateTime: 'SYS:HH:MM:ss.l',
        ignore: 'pid,hostname',
      })
    : destination;
  // The last step before the bytes leave: nothing a serializer or a message adds escapes it.
  const out = options.batched && !options.pretty ? new TurnBatch(target) : target;
  const stream: DestinationStream = { write: (line: string) => out.write(redactor.scrub(line)) };
  return withCensoring(
    pino(
      {
        level: options.level,
        base: options.base ?? { service: 'sbg-export-watcher' },
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label }), ...CENSORING_FORMATTERS },
      },
      stream,
    ),
  );
}
