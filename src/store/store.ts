/**
 * The store: everything the watcher must not forget across a restart, behind one narrow,
 * asynchronous interface. The daemon talks to this port only; `sqlite.ts` implements it in one
 * file in `WATCHER_DATA_DIR`, and another engine can implement it against the same contract tests
 * (`test/store/contract.ts`).
 *
 * What is kept (docs/design.md, "Durable state"):
 * - exports: every watched export, its state, metadata, times, misses, history, the platform's
 *   last object and the error that ended it. The time of each check is not kept (memory only).
 * - events: one row per event (its webhook-id, type, export and serialized body).
 * - deliveries: one row per event and endpoint, with its attempt series.
 *
 * Ordering rules the implementations guarantee:
 * - `addExports` resolves only after its rows are committed.
 * - `commitChanges` writes state changes, their events and one pending delivery per endpoint in
 *   one transaction, so an event exists on disk before any attempt to send it (the outbox).
 * - `recordAttempts` may lose its last batch in a crash; that only means a resend under the same
 *   webhook-id, which receivers de-duplicate.
 *
 * Times are epoch milliseconds. Ids are job ids (`^[A-Za-z0-9_-]{1,128}$`) and webhook-ids.
 *
 * Kinds. A watched job is an export or an import (`JobKind`). A job's id is unique across kinds:
 * an id stored as one kind is refused as the other (`AddResult.conflicts`), and so is a job whose
 * webhook-ids would be those of a stored job of the other kind (`webhookTwin`). Every `kind` the port
 * takes is optional and means `export` when absent; every record it returns carries `kind` only for
 * an import (absent means an export), so that everything written before imports existed reads and
 * compares as it did.
 */
import { createHash } from 'node:crypto';
import type { EventType } from '../delivery/events.js';
import type { ExportState, JobKind, PlatformExport } from '../polling/tracker.js';
import type { PlatformErrorBody } from '../shared/errors.js';

export { JOB_KINDS, type JobKind } from '../polling/tracker.js';

/** An export as stored: what `GET /v1/exports/{id}` shows, less the in-memory check figures. */
export interface StoredExport {
  id: string;
  /** `import` for an import; absent for an export (implementations omit it). */
  kind?: JobKind;
  state: ExportState;
  previousState: ExportState | null;
  metadata: Record<string, unknown> | null;
  firstSeenAt: number;
  stateChangedAt: number;
  /** Consecutive "no such job" answers; LOST at the tracker's threshold. */
  misses: number;
  history: Array<{ state: ExportState; at: number }>;
  /** The platform's last object for the job, or null. */
  export: PlatformExport | null;
  /** Why it ended FAILED or LOST; null otherwise. */
  error: PlatformErrorBody | null;
  /** The last "no such job" error while misses are counted. */
  lastMiss: PlatformErrorBody | null;
}

/** What the in-memory tracker needs of a non-terminal export at start-up. */
export interface ActiveExport {
  id: string;
  /** `import` for an import; absent for an export (implementations omit it). */
  kind?: JobKind;
  state: ExportState;
  misses: number;
}

export interface AddRequest {
  ids: readonly string[];
  metadata: Record<string, unknown> | null;
  /** The kind of every id in the request; default `export`. */
  kind?: JobKind;
}

export interface AddResult {
  /** Ids new to the store, now watched. */
  accepted: string[];
  /** Ids the store already had (watched, or finished and still retained): left as they were. */
  alreadyWatched: string[];
  /**
   * Ids the store holds as the other kind. When there is any, nothing of this request is added
   * (`accepted` and `alreadyWatched` are empty), and the other requests of the call are not
   * affected. Absent when there is none.
   */
  conflicts?: string[];
}

export interface ExportPageQuery {
  /** Only jobs of this kind; default `export`. */
  kind?: JobKind | undefined;
  state?: ExportState | undefined;
  /** Only ids after this one (keyset paging, ascending id). */
  after?: string | undefined;
  limit: number;
}

/** One export's change after a check: a new state, or only a new miss count. */
export interface ExportChange {
  id: string;
  /** The state before and after; equal when only `misses` changed. */
  from: ExportState;
  to: ExportState;
  at: number;
  misses: number;
  lastMiss: PlatformErrorBody | null;
  /** The platform's object that came with this change; null keeps the stored one. */
  export: PlatformExport | null;
  /** Why it ended badly (FAILED, LOST); null otherwise. */
  error: PlatformErrorBody | null;
}

/** An event to store with the change that caused it. */
export interface NewEvent {
  /** The webhook-id: stable per export and event type. */
  id: string;
  type: EventType;
  exportId: string;
  /** The JSON body exactly as sent. */
  body: string;
}

/**
 * Builds the event for a state change, or null when it has none (or its type is not subscribed).
 * Called inside `commitChanges` with the job's stored metadata and its stored kind (implementations
 * always pass it; absent means `export`) and, when the store has made it for the job's row, the
 * JSON text of `change.export`, so that the body need not make it again. The event's id is one of
 * the job's `webhookIdPrefixes` followed by a suffix: a store may find a job's events by it, and
 * refuses an event whose id is not.
 */
export type EventBuilder = (
  change: ExportChange,
  metadata: Record<string, unknown> | null,
  kind?: JobKind,
  exportJson?: string | null,
) => NewEvent | null;

/** An endpoint as the store knows it: never its full URL, which may carry a token. */
export interface EndpointRef {
  /** Stable key of the configured URL (a hash of it, see `endpointKey`). */
  key: string;
  /** The URL without credentials, query or fragment: for people. */
  label: string;
}

export const DELIVERY_STATUSES = ['pending', 'delivered', 'failed', 'gone'] as const;
export type DeliveryStatus = (typeof DELIVERY_STATUSES)[number];

/** Deliveries by status, from `SELECT status, count(*) AS n … GROUP BY status` rows (0 for the rest). */
export function byStatus(
  rows: Iterable<{ status: DeliveryStatus; n: number }> = [],
): Record<DeliveryStatus, number> {
  const counts = { pending: 0, delivered: 0, failed: 0, gone: 0 };
  for (const { status, n } of rows) counts[status] = n;
  return counts;
}

export interface StoredDelivery {
  eventId: string;
  endpointKey: string;
  endpointLabel: string;
  status: DeliveryStatus;
  /** Attempts in the current series (a redelivery starts a new series at 0). */
  attempts: number;
  /**
   * When the next attempt is due (pending only); null otherwise. While a claim holds the delivery
   * (`leased`), the lease's end.
   */
  nextAttemptAt: number | null;
  /**
   * Present (true) while a claim holds the delivery: an attempt is under way, or the quick retries
   * in memory, and `nextAttemptAt` is the lease's end (when a crashed claim is taken up again), not
   * an attempt's time. Absent otherwise.
   */
  leased?: true;
  /**
   * When the current series started: its max age counts from here. It also names the series, so
   * a new one starts a millisecond after the one it replaces at the least (a redelivery in the
   * same millisecond, or after the clock stepped back).
   */
  seriesStartedAt: number;
  /** The last attempt's HTTP status; 0 when no answer came; null before any attempt. */
  lastStatus: number | null;
  lastError: string | null;
  finishedAt: number | null;
}

export interface StoredEvent {
  id: string;
  type: EventType;
  exportId: string;
  body: string;
  createdAt: number;
  deliveries: StoredDelivery[];
}

/** A pending delivery handed to the delivery engine, with what it needs to send it. */
export interface DeliveryJob {
  eventId: string;
  exportId: string;
  endpointKey: string;
  body: string;
  attempts: number;
  seriesStartedAt: number;
}

/**
 * The outcome of one attempt, or of a series, to write. It belongs to the series its claim
 * started in: once a redelivery has started another series on the row, it is not written (an old
 * attempt's failure must not end, or push back, the series asked for since).
 */
export interface AttemptRecord {
  eventId: string;
  endpointKey: string;
  /** The series this outcome belongs to (`DeliveryJob.seriesStartedAt` of its claim). */
  seriesStartedAt: number;
  status: DeliveryStatus;
  attempts: number;
  /** For `pending`: when to try again. */
  nextAttemptAt: number | null;
  lastStatus: number | null;
  lastError: string | null;
  /** For a final status. */
  finishedAt: number | null;
}

export interface EventQuery {
  /** Events of this job (an export's or an import's id). */
  exportId?: string | undefined;
  /** Only events of this kind of job (their type starts with `export.` or `import.`); default all. */
  kind?: JobKind | undefined;
  /** Events with at least one delivery in this status. */
  status?: DeliveryStatus | undefined;
  /** Events created at or after this time. */
  since?: number | undefined;
  /** Keyset paging: events that come after this (createdAt, id) in the listing's order. */
  after?: { createdAt: number; id: string } | undefined;
  limit: number;
}

/** The last error of a delivery given up because its endpoint is no longer configured. */
export const ORPHANED_GIVE_UP_ERROR =
  'ENDPOINT_REMOVED: the endpoint was no longer in WATCHER_WEBHOOK_URLS for WATCHER_WEBHOOK_MAX_AGE';

/**
 * Stored deliveries by status, to every endpoint, and what of the pending ones is owed to the
 * endpoints configured now (the keys `deliveryCounts` is given). A delivery to an endpoint no
 * longer configured stays pending until that endpoint is configured again: counted in `pending`
 * and `orphaned`, it is left out of `oldestPendingAt`, which would otherwise only grow.
 */
export interface DeliveryCounts {
  /** Every pending delivery, `orphaned` ones included. */
  pending: number;
  delivered: number;
  failed: number;
  gone: number;
  /**
   * Pending deliveries to endpoints not among the keys given: 0 when no keys were given at all,
   * every pending one when an empty list was.
   */
  orphaned: number;
  /**
   * Creation time of the oldest event with a pending delivery to one of the endpoints given (to
   * any endpoint when none were given); null when there is none.
   */
  oldestPendingAt: number | null;
}

export interface RetentionPolicy {
  /** Finished exports older than this (since their last change) are deleted. */
  retainMs: number;
  /** Events whose deliveries are all final, older than this, are deleted with them. */
  eventRetainMs: number;
  /** Rows deleted per statement, so that a large backlog never holds the writer long. */
  batch: number;
}

export interface Store {
  /** Registers ids, each request with its metadata and kind; resolves once committed. */
  addExports(requests: readonly AddRequest[], now: number): Promise<AddResult[]>;
  /**
   * Deletes a job of this kind (default `export`) and its pending deliveries; final deliveries stay
   * for replay. A job stored as the other kind is not removed.
   */
  removeExport(id: string, kind?: JobKind): Promise<{ removed: boolean; cancelledDeliveries: number }>;
  /** The job of this kind (default `export`); undefined when unknown or stored as the other kind. */
  getExport(id: string, kind?: JobKind): Promise<StoredExport | undefined>;
  pageExports(query: ExportPageQuery): Promise<{ items: StoredExport[]; more: boolean }>;
  /** Jobs of this kind (default `export`) by state, every state present. */
  countExports(kind?: JobKind): Promise<Record<ExportState, number>>;
  /** Every non-terminal job, of both kinds, for the tracker at start-up. */
  loadActive(): Promise<ActiveExport[]>;
  /**
   * The jobs of both kinds in state UNKNOWN: added and not yet answered for by the platform. With
   * replicas, the leader reads these every poll interval to pick up the ids another replica added
   * (they are always added UNKNOWN, and only the leader moves a job out of it). A query on the
   * state index, of a set that is small unless a large batch was just added.
   */
  loadUnknown(): Promise<ActiveExport[]>;

  /**
   * Writes state changes and miss counts, the events `build` makes for them and one pending
   * delivery (due `now`) per endpoint for each event, in one transaction. An event whose id is
   * already stored is not written again. Returns the events written. `build` gets the job's stored
   * metadata and kind. A change applies only while the job is stored in the state it starts from
   * (`from`; changes of one job in one call follow each other): one that starts from another state
   * was observed by a process whose view is stale (a former leader writing late) and changes
   * nothing, so no record moves back and no second outcome is written.
   */
  commitChanges(
    changes: readonly ExportChange[],
    build: EventBuilder,
    endpoints: readonly EndpointRef[],
    now: number,
  ): Promise<NewEvent[]>;

  /**
   * Pending deliveries to this endpoint due at `now`, oldest due first, at most `limit`, leased
   * until `leaseUntil` (their `nextAttemptAt` is moved there, so that they are not handed out
   * twice; a crash makes them due again when the lease ends, or at `releaseLeases`).
   */
  claimDue(endpointKey: string, now: number, limit: number, leaseUntil: number): Promise<DeliveryJob[]>;
  /**
   * When this process starts sending (at start-up, or when a replica takes over as the leader):
   * every leased delivery becomes due at `now` (a leader passes a time a little ahead, when a
   * former leader may not have stopped yet).
   */
  releaseLeases(now: number): Promise<void>;
  /** The earliest `nextAttemptAt` among this endpoint's pending deliveries; null when none. */
  nextDueAt(endpointKey: string): Promise<number | null>;
  /** Writes attempt outcomes, in one transaction. Rows that no longer exist are skipped. */
  recordAttempts(records: readonly AttemptRecord[]): Promise<void>;
  /**
   * Gives up (`failed`, finished at `now`, `ORPHANED_GIVE_UP_ERROR` as the last error) the pending
   * deliveries to endpoints not in `keys` whose series started at or before `startedBy` (now less
   * WATCHER_WEBHOOK_MAX_AGE): a removed endpoint's deliveries wait that long for it to be
   * configured again, as a down receiver's are retried that long, and then leave the backlog, so
   * that retention can drop them; a redelivery (`redeliverSince`, status failed) brings them back
   * once it is. Answers how many, by the endpoint label stored with them, in no set order (none:
   * an empty list).
   */
  giveUpOrphaned(
    keys: readonly string[],
    startedBy: number,
    now: number,
  ): Promise<Array<{ endpointLabel: string; count: number }>>;

  getEvent(id: string): Promise<StoredEvent | undefined>;
  /** Newest first: ordered by (createdAt, id) descending. */
  listEvents(query: EventQuery): Promise<{ items: StoredEvent[]; more: boolean }>;
  /**
   * The job of this kind (as `getExport`) and its events with their deliveries, oldest first, read
   * at one moment (`GET /v1/exports/{id}`): a transition committed between two reads would show a
   * job in one state with the event of the next. Only the events of this kind (their type starts
   * with `export.` or `import.`): a job removed keeps its events for replay, and its id may then
   * be watched as the other kind, whose record shows its own. Undefined when the job is unknown.
   */
  getExportWithEvents(
    id: string,
    kind?: JobKind,
  ): Promise<{ record: StoredExport; events: StoredEvent[] } | undefined>;
  /**
   * Starts a new attempt series, due `now`, for one event's deliveries to `endpoints` (rows are
   * created for endpoints that never had one). Returns the deliveries reset; undefined when the
   * event is unknown.
   */
  redeliver(eventId: string, endpoints: readonly EndpointRef[], now: number): Promise<number | undefined>;
  /**
   * Starts a new series for every delivery in `status` whose event was created at or after
   * `since`, to the endpoints in `endpointKeys` only (the configured ones: a delivery to an
   * endpoint no longer configured could never be sent, and pending, its event is never pruned).
   * Returns the deliveries reset.
   */
  redeliverSince(
    since: number,
    status: DeliveryStatus,
    now: number,
    endpointKeys: readonly string[],
  ): Promise<number>;
  /**
   * Deliveries by status, with the pending ones to endpoints not in `endpointKeys` (the configured
   * ones) counted apart and left out of the oldest pending time; without `endpointKeys`, every
   * endpoint counts as configured. Cheap enough for every metrics scrape: the counts of orphaned
   * deliveries read only theirs (SQLite: ranges of the due index, between the keys given).
   */
  deliveryCounts(endpointKeys?: readonly string[]): Promise<DeliveryCounts>;

  /** Deletes what is past retention, `batch` rows at a time; returns how many of each. */
  prune(now: number, policy: RetentionPolicy): Promise<{ exports: number; events: number }>;
  /** Closes the database. Further calls reject. */
  close(): Promise<void>;
}

/** Raised when the data directory or database cannot be used; the CLI exits 2 with its message. */
export class StoreError extends Error {
  override readonly name = 'StoreError';
}

/**
 * The prefixes of the webhook-ids of the job `id`'s events, each followed by a suffix: `evt_<id>_`
 * for an export's, `evt_import_<id>_` for an import's (see `webhookId` in delivery/events.ts).
 */
export function webhookIdPrefixes(id: string): readonly [exportPrefix: string, importPrefix: string] {
  return [`evt_${id}_`, `evt_import_${id}_`];
}

/**
 * The job of the other kind whose webhook-ids this job's would equal: an import's are
 * `evt_import_<id>_…` and an export's `evt_<id>_…` (see `webhookId` in delivery/events.ts), so the
 * export `import_X` and the import `X` would share every one. Both cannot be watched: the second
 * one's events would be refused as already stored, and its outcomes lost.
 */
export function webhookTwin(id: string, kind: JobKind = 'export'): { id: string; kind: JobKind } | undefined {
  if (kind === 'import') return { id: `import_${id}`, kind: 'export' };
  return id.startsWith('import_') ? { id: id.slice('import_'.length), kind: 'import' } : undefined;
}

/** The stored key of an endpoint URL: stable, and reveals nothing of a token in the URL. */
export function endpointKey(url: string): string {
  return createHash('sha256').update(url).digest('hex').slice(0, 16);
}
