/**
 * `get ID...`: the current state of each export, once (one bulk call per 100 ids, or the single
 * get for one id). A table on a terminal, one JSON object per line otherwise or with `--json`.
 *
 * A one-shot command must end: transient failures get two quick retries (about a second in all)
 * instead of the daemon's longer backoff, and the whole command gives up at `--timeout` (default
 * 60 s), aborting whatever is in flight. Maintenance is waited out until then.
 * Exit: 0 every export found; 1 any NOT_FOUND or UNANSWERED, or a runtime failure.
 *
 * `--kind import` asks about imports instead (`/bulk/storage/imports/get`, `/storage/imports/{id}`):
 * the same rows, with the platform's object as `import` in JSON, and the import's destination
 * (project/name) in the table.
 */
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import { formatDuration } from '../config/config.js';
import { USER_AGENT } from '../main.js';
import {
  type CheckResult,
  PlatformClient,
  type RequestOutcome,
  type RetryPolicy,
} from '../platform/platform-client.js';
import { RateLimiter } from '../platform/rate-limiter.js';
import { type BulkItem, type JobKind, type Observation, observationsFromBulk } from '../polling/tracker.js';
import { Bus } from '../shared/bus.js';
import { DeadlineError, type PlatformErrorBody } from '../shared/errors.js';
import { outcomeProblem, textOf } from './error-report.js';

export const GET_DEFAULT_TIMEOUT_MS = 60_000;

/** Quick retries for a one-shot command: 250 ms then 500 ms (times 1–2). */
export const GET_RETRY: Partial<RetryPolicy> = { retries: 2, minTimeoutMs: 250 };

export interface GetOptions {
  config: Config;
  ids: readonly string[];
  /** Default export. */
  kind?: JobKind;
  json: boolean;
  stdout: Writable;
  log: Logger;
  /** Give up after this long (`--timeout`). */
  timeoutMs: number;
  retry?: Partial<RetryPolicy>;
}

export interface StateRow {
  id: string;
  state: string;
  export: Record<string, unknown> | null;
  error?: PlatformErrorBody;
}

/** What fetching states needs of the platform client. */
export interface StatesSource {
  getOneItem(id: string): Promise<BulkItem>;
  checkStatuses(ids: readonly string[]): Promise<CheckResult>;
}

export async function runGet(options: GetOptions): Promise<number> {
  const { config, log } = options;
  const limiter = new RateLimiter({ budget: config.rateBudget, windowMs: config.rateWindowMs, log });
  /** The last request's outcome, to say why the command gave up. */
  let lastOutcome: RequestOutcome | undefined;
  const bus = new Bus(log);
  bus.on('platform.request', ({ outcome }) => {
    lastOutcome = outcome;
  });
  const client = new PlatformClient({
    endpoint: config.endpoint,
    token: config.token ?? '',
    gate: limiter,
    userAgent: USER_AGENT,
    log,
    retry: options.retry ?? GET_RETRY,
    bus,
  });
  const kind = options.kind ?? 'export';
  const source: StatesSource = {
    getOneItem: (id) => client.getOneItem(kind, id),
    checkStatuses: (ids) => client.checkStatuses(kind, ids),
  };
  /** Exists once the deadline passed: what is on the wire being dropped. */
  let aborting: Promise<unknown> | undefined;
  let rows: StateRow[];
  try {
    rows = await withDeadline(fetchStates(source, options.ids), options.timeoutMs, () => {
      // Read before stopping: whether calls were waiting for our own budget, not the platform.
      const { queued } = limiter.snapshot();
      // Nothing more is sent; what is on the wire is dropped.
      aborting = Promise.all([limiter.stop(), client.destroy()]);
      const why =
        (lastOutcome === undefined ? undefined : outcomeProblem(lastOutcome, config.endpoint)) ??
        (queued > 0
          ? `${queued} ${queued === 1 ? 'call was' : 'calls were'} still waiting for the rate budget ` +
            `(WATCHER_RATE_BUDGET: ${config.rateBudget} requests spread over ` +
            `${formatDuration(config.rateWindowMs)}): ask for fewer ids at once, or allow more`
          : lastOutcome === undefined
            ? `no answer from the platform at ${config.endpoint}`
            : 'the platform answers, but not every id was answered in time');
      return new DeadlineError(`gave up after ${formatDuration(options.timeoutMs)} (--timeout): ${why}`);
    });
  } finally {
    await aborting;
    await limiter.stop();
    await client.close();
  }
  if (options.json) {
    for (const row of rows) options.stdout.write(`${JSON.stringify(rowJson(row, kind))}\n`);
  } else {
    options.stdout.write(formatTable(rows, kind));
  }
  // Found means the platform said the job's state: NOT_FOUND, and UNANSWERED (nothing usable, as
  // from an endpoint without /v2, where the single get of one id fails outright) are not.
  return rows.every((r) => r.state !== 'NOT_FOUND' && r.state !== 'UNANSWERED') ? 0 : 1;
}

/**
 * `work`, or the error `onTimeout` returns once `ms` have passed first. `work` is left to settle
 * on its own (its rejection is handled); the timer is cleared when it settles in time.
 */
export function withDeadline<T>(work: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), ms);
    work.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

export async function fetchStates(source: StatesSource, ids: readonly string[]): Promise<StateRow[]> {
  const byId = new Map<string, StateRow>();
  if (ids.length === 1) {
    const id = ids[0] as string;
    const item = await source.getOneItem(id);
    for (const o of observationsFromBulk([id], [item]).observations) byId.set(o.id, rowOf(o));
  } else {
    for (let i = 0; i < ids.length; i += 100) {
      const { observations } = await source.checkStatuses(ids.slice(i, i + 100));
      for (const o of observations) byId.set(o.id, rowOf(o));
    }
  }
  return ids.map((id) => byId.get(id) ?? { id, state: 'UNANSWERED', export: null });
}

function rowOf(o: Observation): StateRow {
  if (o.kind === 'resource') return { id: o.id, state: o.resource.state, export: o.resource };
  if (o.kind === 'missing') return { id: o.id, state: 'NOT_FOUND', export: null, error: errorOf(o.error) };
  if (o.kind === 'unreadable') return { id: o.id, state: 'UNANSWERED', export: null };
  return { id: o.id, state: 'UNANSWERED', export: null, ...(o.error ? { error: errorOf(o.error) } : {}) };
}

/** The platform's error as records carry it: status, code and message. */
function errorOf(e: PlatformErrorBody): PlatformErrorBody {
  return {
    ...(e.status !== undefined ? { status: e.status } : {}),
    ...(e.code !== undefined ? { code: e.code } : {}),
    ...(e.message !== undefined ? { message: e.message } : {}),
  };
}

/** A row as JSON: an import's object is named `import`, an export's `export`. */
export function rowJson(row: StateRow, kind: JobKind = 'export'): Record<string, unknown> {
  if (kind === 'export') return { ...row };
  const { export: object, ...rest } = row;
  return { id: rest.id, state: rest.state, import: object, ...(rest.error ? { error: rest.error } : {}) };
}

export function formatTable(rows: readonly StateRow[], kind: JobKind = 'export'): string {
  const cell = (v: unknown) => (v === undefined || v === null || v === '' ? '-' : printable(textOf(v)));
  const table = rows.map((r) => {
    const e = r.export ?? {};
    const dest = e.destination as
      | { volume?: string; location?: string; project?: string; parent?: string; name?: string }
      | undefined;
    const err = (e.error ?? r.error) as { code?: number; message?: string } | undefined | null;
    const where =
      kind === 'import'
        ? `${dest?.project ?? dest?.parent ?? '?'}${dest?.name ? `/${dest.name}` : ''}`
        : `${dest?.volume ?? '?'}/${dest?.location ?? '?'}`;
    return [
      r.id,
      cell(r.state),
      cell(e.started_on),
      cell(e.finished_on),
      dest ? printable(where) : '-',
      err ? printable(`${textOf(err.code)} ${textOf(err.message)}`.trim()) || '-' : '-',
    ];
  });
  const header = ['ID', 'STATE', 'STARTED', 'FINISHED', 'DESTINATION', 'ERROR'];
  // A loop, not Math.max(...cells): spreading one argument per row overflows the stack on a long list.
  const widths = header.map((h, i) => {
    let width = h.length;
    for (const r of table) width = Math.max(width, (r[i] ?? '').length);
    return width;
  });
  const line = (cols: readonly string[]) =>
    cols
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return `${[line(header), ...table.map(line)].join('\n')}\n`;
}

/** A value from the platform as one table cell: no control characters (a terminal would obey them). */
function printable(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: removing them is the point
  return text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ').trim();
}
