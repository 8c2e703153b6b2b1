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
 *   any answer with the resource resets that count.
 */
import type { PlatformErrorBody } from './errors.js';

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
}

export interface TrackerWarning {
  exportId: string;
  reason: 'stale_state' | 'unknown_state' | 'unexpected_resource' | 'unanswered' | 'item_error';
  detail: Record<string, unknown>;
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
        if (record.misses >= this.#lostAfter) {
          transitions.push(this.#move(record, 'LOST', now, record.export));
        }
        continue;
      }
      record.misses = 0;
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
      if (next !== record.state) transitions.push(this.#move(record, next, now, o.resource));
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

  #move(record: ExportRecord, to: ExportState, now: number, exp: PlatformExport | null): Transition {
    const from = record.state;
    record.previousState = from;
    record.state = to;
    record.stateChangedAt = now;
    record.history.push({ state: to, at: now });
    if (isTerminal(to)) this.#active.delete(record.id);
    return { exportId: record.id, from, to, at: now, metadata: record.metadata, export: exp };
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
 * position: the platform promises no order, and its error items need not carry the id. Error
 * items are therefore attributed to the requested ids that no resource answered.
 */
export function observationsFromBulk(
  requested: readonly string[],
  items: readonly BulkItem[],
): { observations: Observation[]; warnings: TrackerWarning[] } {
  const wanted = new Set(requested);
  const answered = new Set<string>();
  const observations: Observation[] = [];
  const warnings: TrackerWarning[] = [];
  const errors: PlatformErrorBody[] = [];
  for (const item of items) {
    if (!item || typeof item !== 'object') continue;
    const resource = asExport(item.resource);
    if (resource) {
      if (!wanted.has(resource.id) || answered.has(resource.id)) {
        warnings.push({ exportId: resource.id, reason: 'unexpected_resource', detail: {} });
        continue;
      }
      answered.add(resource.id);
      observations.push({ kind: 'resource', id: resource.id, resource });
    } else if (item.error && typeof item.error === 'object') {
      errors.push(item.error as PlatformErrorBody);
    }
  }
  const unanswered = requested.filter((id) => !answered.has(id));
  if (unanswered.length === 0) return { observations, warnings };
  // An error item that names its id (some deployments may) is matched directly.
  const byId = new Map<string, PlatformErrorBody>();
  const anonymous: PlatformErrorBody[] = [];
  for (const e of errors) {
    const named = (e as { id?: unknown }).id;
    if (typeof named === 'string' && wanted.has(named) && !answered.has(named)) byId.set(named, e);
    else anonymous.push(e);
  }
  // Anonymous errors can only be attributed as a group: when they all mean "missing", every
  // unanswered id is missing. A mixed or other error leaves the ids unanswered (checked again).
  const groupError = anonymous.length > 0 && anonymous.every(meansMissing) ? anonymous[0] : undefined;
  for (const id of unanswered) {
    const error = byId.get(id) ?? groupError ?? anonymous.find((e) => !meansMissing(e));
    if (error && meansMissing(error)) observations.push({ kind: 'missing', id, error });
    else observations.push(error ? { kind: 'unanswered', id, error } : { kind: 'unanswered', id });
  }
  return { observations, warnings };
}

function asExport(value: unknown): PlatformExport | null {
  if (!value || typeof value !== 'object') return null;
  const v = value as Record<string, unknown>;
  return typeof v.id === 'string' && typeof v.state === 'string' ? (v as PlatformExport) : null;
}
