/**
 * The tracker: what the watcher knows about each export, as a pure state machine.
 *
 * `apply(observations, now)` folds what the platform said into the records and returns the
 * transitions it caused, plus warnings worth logging. It owns no timers and does no I/O; the
 * scheduler decides when to check, turns transitions into log lines and webhooks, and passes `now`.
 *
 * Invariants, kept true here and nowhere else:
 * - States only move forward: UNKNOWN < PENDING < RUNNING < COMPLETED | FAILED | LOST. A report of
 *   an earlier state after a later one is stale: a warning, and no change.
 * - A jump (PENDING → COMPLETED) is one transition.
 * - A terminal record never changes again, and is never due.
 * - LOST means the platform said "no such job" or "no access" on `lostAfter` consecutive checks;
 *   any answer with the resource resets that count. Such a "missing" observation comes only from
 *   an error that is this export's own: one that names it, or one of as many anonymous error items
 *   as there are unanswered ids in an answer that is otherwise whole (`observationsFromBulk`).
 */
import type { PlatformErrorBody } from '../shared/errors.js';
import { smallestK } from './top-k.js';

export const PLATFORM_STATES = ['PENDING', 'RUNNING', 'COMPLETED', 'FAILED'] as const;
export type PlatformState = (typeof PLATFORM_STATES)[number];
export const EXPORT_STATES = ['UNKNOWN', 'PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'LOST'] as const;
export type ExportState = (typeof EXPORT_STATES)[number];

const RANK: Readonly<Record<ExportState, number>> = {
  UNKNOWN: 0,
  PENDING: 1,
  RUNNING: 2,
  COMPLETED: 3,
  FAILED: 3,
  LOST: 3,
};

export function isTerminal(state: ExportState): boolean {
  return RANK[state] === 3;
}

export function isExportState(value: string): value is ExportState {
  return (EXPORT_STATES as readonly string[]).includes(value);
}

/** The platform's export object, as received. Only `id` and `state` are relied on. */
export type PlatformExport = Record<string, unknown> & { id: string; state: string };

export interface ExportRecord {
  id: string;
  state: ExportState;
  previousState: ExportState | null;
  firstSeenAt: number;
  stateChangedAt: number;
  /** When the platform last answered about this export; null until the first answer. */
  lastCheckedAt: number | null;
  checks: number;
  metadata: Record<string, unknown> | null;
  history: Array<{ state: ExportState; at: number }>;
  /** The platform's last object for this export, or null. */
  export: PlatformExport | null;
  /** Consecutive "no such job" / "no access" answers; LOST at `lostAfter`. */
  misses: number;
  /**
   * Why it ended badly: for FAILED the platform's `error` on the job, for LOST the error that
   * said the job does not exist or is not accessible. Null otherwise.
   */
  error: PlatformErrorBody | null;
  /** The last "no such job" error while misses are counted, so LOST can say why. */
  lastMiss: PlatformErrorBody | null;
}

/** What one check said about one export. */
export type Observation =
  | { kind: 'resource'; id: string; resource: PlatformExport }
  /** The platform said the job does not exist or is not accessible. */
  | { kind: 'missing'; id: string; error: PlatformErrorBody }
  /** The call succeeded but said nothing usable about this id: checked, no change. */
  | { kind: 'unanswered'; id: string; error?: PlatformErrorBody };

export interface Transition {
  exportId: string;
  from: ExportState;
  to: ExportState;
  at: number;
  metadata: Record<string, unknown> | null;
  export: PlatformExport | null;
  /** As on the record: why a FAILED or LOST export ended so; null otherwise. */
  error: PlatformErrorBody | null;
}

export const WARNING_REASONS = [
  'stale_state',
  'unknown_state',
  'unexpected_resource',
  'unanswered',
  'item_error',
  'unattributed_errors',
] as const;
export type WarningReason = (typeof WARNING_REASONS)[number];

/**
 * Something odd in an answer, worth a log line. The scheduler writes one line per reason per call
 * (with a count and a few sample ids), never one per export: a hostile answer must not flood logs.
 */
export interface TrackerWarning {
  /** The export concerned; absent for a warning about a whole answer. */
  exportId?: string;
  reason: WarningReason;
  /** `count` (how many exports it stands for, default 1) and `sample_ids` are summed and merged. */
  detail: Record<string, unknown>;
}

/** Paging of `list`: keyset by id, ascending. */
export interface PageQuery {
  state?: ExportState | undefined;
  /** Only ids after this one (the last id of the previous page). */
  after?: string | undefined;
  limit: number;
}

export interface ApplyResult {
  transitions: Transition[];
  warnings: TrackerWarning[];
}

export interface TrackerOptions {
  /** Consecutive not-found or no-access answers that make an export LOST. */
  lostAfter?: number;
  /** How long a finished export stays queryable, in ms. */
  retainMs: number;
}

export class Tracker {
  readonly #records = new Map<string, ExportRecord>();
  readonly #lostAfter: number;
  readonly #retainMs: number;
  /** Ids not yet terminal, in registration order: the scheduler's working set. */
  readonly #active = new Set<string>();

  constructor(options: TrackerOptions) {
    this.#lostAfter = options.lostAfter ?? 3;
    this.#retainMs = options.retainMs;
  }

  /** Registers ids; known ones (watched or finished and still retained) are reported, not reset. */
  add(
    ids: readonly string[],
    metadata: Record<string, unknown> | null,
    now: number,
  ): { accepted: string[]; alreadyWatched: string[] } {
    const accepted: string[] = [];
    const alreadyWatched: string[] = [];
    for (const id of new Set(ids)) {
      if (this.#records.has(id)) {
        alreadyWatched.push(id);
        continue;
      }
      this.#records.set(id, {
        id,
        state: 'UNKNOWN',
        previousState: null,
        firstSeenAt: now,
        stateChangedAt: now,
        lastCheckedAt: null,
        checks: 0,
        metadata,
        history: [{ state: 'UNKNOWN', at: now }],
        export: null,
        misses: 0,
        error: null,
        lastMiss: null,
      });
      this.#active.add(id);
      accepted.push(id);
    }
    return { accepted, alreadyWatched };
  }

  remove(id: string): boolean {
    this.#active.delete(id);
    return this.#records.delete(id);
  }

  get(id: string): ExportRecord | undefined {
    return this.#records.get(id);
  }

  list(state?: ExportState): ExportRecord[] {
    const all = [...this.#records.values()];
    return state ? all.filter((r) => r.state === state) : all;
  }

  /**
   * One page of records in id order, and whether more follow. Costs O(n log limit): the page is
   * picked with a bounded heap, never by sorting every record.
   */
  page(query: PageQuery): { items: ExportRecord[]; more: boolean } {
    const { state, after, limit } = query;
    const matching = function* (records: Iterable<ExportRecord>) {
      for (const r of records) {
        if (state !== undefined && r.state !== state) continue;
        if (after !== undefined && r.id <= after) continue;
        yield r;
      }
    };
    const picked = smallestK(matching(this.#records.values()), limit + 1, (a, b) => a.id < b.id);
    const more = picked.length > limit;
    return { items: more ? picked.slice(0, limit) : picked, more };
  }

  get size(): number {
    return this.#records.size;
  }

  /** Non-terminal ids, in registration order. */
  activeIds(): IterableIterator<string> {
    return this.#active.values();
  }

  get activeCount(): number {
    return this.#active.size;
  }

  countByState(): Record<ExportState, number> {
    const counts = Object.fromEntries(EXPORT_STATES.map((s) => [s, 0])) as Record<ExportState, number>;
    for (const r of this.#records.values()) counts[r.state]++;
    return counts;
  }

  apply(observations: readonly Observation[], now: number): ApplyResult {
    const transitions: Transition[] = [];
    const warnings: TrackerWarning[] = [];
    for (const o of observations) {
      const record = this.#records.get(o.id);
      // Removed while the check was in flight, or already final: nothing more to say.
      if (!record || isTerminal(record.state)) continue;
      record.lastCheckedAt = now;
      record.checks++;
      if (o.kind === 'unanswered') {
        warnings.push({
          exportId: o.id,
          reason: o.error ? 'item_error' : 'unanswered',
          detail: o.error ? { error: o.error } : {},
        });
        continue;
      }
      if (o.kind === 'missing') {
        record.misses++;
        record.lastMiss = o.error;
        if (record.misses >= this.#lostAfter) {
          transitions.push(this.#move(record, 'LOST', now, record.export, o.error));
        }
        continue;
      }
      record.misses = 0;
      record.lastMiss = null;
      const reported = o.resource.state;
      if (!(PLATFORM_STATES as readonly string[]).includes(reported)) {
        record.export = o.resource;
        warnings.push({ exportId: o.id, reason: 'unknown_state', detail: { state: reported } });
        continue;
      }
      const next = reported as PlatformState;
      if (RANK[next] < RANK[record.state]) {
        warnings.push({
          exportId: o.id,
          reason: 'stale_state',
          detail: { state: next, current: record.state },
        });
        continue;
      }
      record.export = o.resource;
      if (next !== record.state) {
        const error = next === 'FAILED' ? platformError(o.resource.error) : null;
        transitions.push(this.#move(record, next, now, o.resource, error));
      }
    }
    return { transitions, warnings };
  }

  /** Drops finished records older than the retention; returns the ids dropped. */
  prune(now: number): string[] {
    const dropped: string[] = [];
    for (const [id, r] of this.#records) {
      if (isTerminal(r.state) && now - r.stateChangedAt >= this.#retainMs) {
        this.#records.delete(id);
        dropped.push(id);
      }
    }
    return dropped;
  }

  #move(
    record: ExportRecord,
    to: ExportState,
    now: number,
    exp: PlatformExport | null,
    error: PlatformErrorBody | null,
  ): Transition {
    const from = record.state;
    record.previousState = from;
    record.state = to;
    record.stateChangedAt = now;
    record.history.push({ state: to, at: now });
    record.error = error;
    if (isTerminal(to)) this.#active.delete(record.id);
    return { exportId: record.id, from, to, at: now, metadata: record.metadata, export: exp, error };
  }
}

/**
 * Job-level codes that mean "no such job" (9008) or "no access to this job" (9005), sbg-api.md §3
 * and §7. Generic codes (90002, 90003) are not here: a whole route answering "not found" (a wrong
 * SB_API_ENDPOINT, a proxy) says nothing about the job. A bare 404/403 item without a code is
 * taken as the job's, since it stands in the job's place in the answer.
 */
const MISSING_CODES = new Set([9005, 9008]);
const MISSING_STATUSES = new Set([403, 404]);

export function meansMissing(error: PlatformErrorBody): boolean {
  if (error.code !== undefined) return MISSING_CODES.has(error.code);
  return error.status !== undefined && MISSING_STATUSES.has(error.status);
}

/** One item of a bulk answer: `{resource}` or `{error}` (sbg-api.md §3). */
export interface BulkItem {
  resource?: unknown;
  error?: unknown;
}

/**
 * Turns a bulk answer into observations. Items are matched to ids by `resource.id`, never by
 * position: the platform promises no order, and its error items need not carry the id.
 *
 * An error item that names a requested id speaks for that id. Anonymous error items are
 * attributed only when they account for the unanswered ids one for one: the answer has exactly
 * one item per id asked, and as many anonymous errors as ids no resource or named error answered.
 * Even then, which error belongs to which id is known only when they all mean "no such job" (or
 * there is one of each); a mixed set cannot be told apart and leaves the ids due. Anything else (one error for a whole
 * call, too few or too many items) says nothing reliable about any single id: the ids stay due,
 * and one warning describes the answer. A LOST can therefore never come from an answer that does
 * not carry one error per missing id.
 */
export function observationsFromBulk(
  requested: readonly string[],
  items: readonly BulkItem[],
): { observations: Observation[]; warnings: TrackerWarning[] } {
  const wanted = new Set(requested);
  const answered = new Set<string>();
  const observations: Observation[] = [];
  const warnings: TrackerWarning[] = [];
  const unexpected = new Tally();
  const errors: PlatformErrorBody[] = [];
  for (const item of items) {
    if (!item || typeof item !== 'object') continue;
    const resource = asExport(item.resource);
    if (resource) {
      if (!wanted.has(resource.id) || answered.has(resource.id)) {
        unexpected.add(resource.id);
        continue;
      }
      answered.add(resource.id);
      observations.push({ kind: 'resource', id: resource.id, resource });
    } else if (item.error && typeof item.error === 'object') {
      errors.push(item.error as PlatformErrorBody);
    }
  }
  if (unexpected.count > 0) {
    warnings.push({ reason: 'unexpected_resource', detail: unexpected.detail() });
  }
  const unanswered = requested.filter((id) => !answered.has(id));
  if (unanswered.length === 0) return { observations, warnings };
  // An error item that names its id (some deployments may) is matched directly.
  const byId = new Map<string, PlatformErrorBody>();
  const anonymous: PlatformErrorBody[] = [];
  for (const e of errors) {
    const named = (e as { id?: unknown }).id;
    if (typeof named === 'string' && wanted.has(named) && !answered.has(named) && !byId.has(named)) {
      byId.set(named, e);
    } else {
      anonymous.push(e);
    }
  }
  const unnamed = unanswered.filter((id) => !byId.has(id));
  const oneForOne =
    anonymous.length > 0 && anonymous.length === unnamed.length && items.length === requested.length;
  // One for one, they belong to those ids; which to which is known when all mean the same
  // ("missing"), or when there is only one of each.
  const attributable = oneForOne && (anonymous.every(meansMissing) || unnamed.length === 1);
  if (anonymous.length > 0 && !attributable) {
    warnings.push({
      reason: 'unattributed_errors',
      detail: {
        count: unnamed.length,
        sample_ids: unnamed.slice(0, SAMPLE_IDS),
        error_items: anonymous.length,
        items: items.length,
        asked: requested.length,
        first_error: anonymous[0],
      },
    });
  }
  let next = 0;
  for (const id of unanswered) {
    const named = byId.get(id);
    if (named) {
      observations.push(
        meansMissing(named)
          ? { kind: 'missing', id, error: named }
          : { kind: 'unanswered', id, error: named },
      );
      continue;
    }
    const error = attributable ? anonymous[next++] : undefined;
    if (!error) observations.push({ kind: 'unanswered', id });
    else if (meansMissing(error)) observations.push({ kind: 'missing', id, error });
    else observations.push({ kind: 'unanswered', id, error });
  }
  return { observations, warnings };
}

/** Ids named in one warning line. */
export const SAMPLE_IDS = 5;

/** A count and the first few ids, for a warning that stands for many exports. */
class Tally {
  count = 0;
  readonly #sample: string[] = [];
  add(id: string): void {
    this.count++;
    if (this.#sample.length < SAMPLE_IDS) this.#sample.push(id);
  }
  detail(): { count: number; sample_ids: string[] } {
    return { count: this.count, sample_ids: [...this.#sample] };
  }
}

/** The platform's error object on a FAILED job, when it is one. */
function platformError(value: unknown): PlatformErrorBody | null {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as PlatformErrorBody)
    : null;
}

function asExport(value: unknown): PlatformExport | null {
  if (!value || typeof value !== 'object') return null;
  const v = value as Record<string, unknown>;
  return typeof v.id === 'string' && typeof v.state === 'string' ? (v as PlatformExport) : null;
}
