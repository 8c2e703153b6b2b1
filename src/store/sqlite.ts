/**
 * The store on SQLite: one file in `WATCHER_DATA_DIR`, one connection, one writer (this process).
 *
 * better-sqlite3 is synchronous; the port is asynchronous so that a networked engine can implement
 * it too. Each method does its work at once and returns a settled promise. Every statement is
 * prepared once and cached by its text.
 *
 * Durability: WAL with `synchronous=FULL`, so a transaction that has returned survives a crash or
 * a power cut. JSON columns hold text and are parsed only when a whole record is read.
 *
 * An existing file is never deleted or rewritten behind the operator's back: one that is not a
 * SQLite database, is damaged, or carries a newer schema is refused with a `StoreError` before
 * anything is written to it.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, type Stats, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import Database from 'better-sqlite3';
import type { Logger } from 'pino';
import type { EventType } from '../delivery/events.js';
import type { ExportState, JobKind, PlatformExport } from '../polling/tracker.js';
import { EXPORT_STATES, JOB_KINDS } from '../polling/tracker.js';
import type { PlatformErrorBody } from '../shared/errors.js';
import {
  activeExport,
  type DeliveryRow,
  eventCreatedAt,
  fromJson,
  page,
  type RawActiveRow,
  storableText,
  toJson,
  toStoredDelivery,
  whereClause,
} from './rows.js';
import {
  type ActiveExport,
  type AddRequest,
  type AddResult,
  type AttemptRecord,
  byStatus,
  DELIVERY_STATUSES,
  type DeliveryCounts,
  type DeliveryJob,
  type DeliveryStatus,
  type EndpointRef,
  type EventBuilder,
  type EventQuery,
  type ExportChange,
  type ExportPageQuery,
  type NewEvent,
  ORPHANED_GIVE_UP_ERROR,
  type RetentionPolicy,
  type Store,
  type StoredDelivery,
  type StoredEvent,
  type StoredExport,
  StoreError,
  webhookIdPrefixes,
  webhookTwin,
} from './store.js';

/** The database's file name in the data directory. */
export const DB_FILE = 'watcher.db';

/**
 * States written literally into SQL. They are spelled out (not derived from the tracker) because
 * the partial indexes of migration 1 name them, and a query uses such an index only when its
 * condition is the index's own text. The tests check that they split `EXPORT_STATES` by
 * `isTerminal`.
 */
export const ACTIVE_STATES = ['UNKNOWN', 'PENDING', 'RUNNING'] as const;
export const FINISHED_STATES = ['COMPLETED', 'FAILED', 'LOST'] as const;
const ACTIVE_SQL = `('UNKNOWN', 'PENDING', 'RUNNING')`;
const FINISHED_SQL = `('COMPLETED', 'FAILED', 'LOST')`;

/**
 * The schema, one migration per entry: `PRAGMA user_version` counts those applied. A migration
 * that has shipped is never edited; a change is a new entry at the end.
 *
 * 2: the job's kind (`export` | `import`). Rows written before are exports. The id stays the
 * primary key: an id is unique across kinds (see store.ts). Listing and counting go by kind, so
 * the state index leads with it; a second index pages one kind in id order.
 */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE exports (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    previous_state TEXT,
    metadata TEXT,
    first_seen_at INTEGER NOT NULL,
    state_changed_at INTEGER NOT NULL,
    misses INTEGER NOT NULL,
    last_miss TEXT,
    history TEXT NOT NULL,
    platform TEXT,
    error TEXT
  );
  -- Paging by state, counting by state, and the active exports at start-up.
  CREATE INDEX exports_by_state ON exports (state, id);
  -- Retention: finished exports by age, without reading the active ones.
  CREATE INDEX exports_finished ON exports (state_changed_at) WHERE state IN ${FINISHED_SQL};

  CREATE TABLE events (
    id TEXT PRIMARY KEY,
    export_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
  );
  CREATE INDEX events_by_time ON events (created_at, id);
  CREATE INDEX events_by_export ON events (export_id, created_at, id);

  CREATE TABLE deliveries (
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_key TEXT NOT NULL,
    endpoint_label TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'gone')),
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER,
    -- 1 while a claim holds the row: its next_attempt_at is then the lease's end.
    leased INTEGER NOT NULL DEFAULT 0,
    series_started_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    finished_at INTEGER,
    PRIMARY KEY (event_id, endpoint_key)
  ) WITHOUT ROWID;
  -- What is due per endpoint, in due order: only pending rows, a small part of the table.
  CREATE INDEX deliveries_due ON deliveries (endpoint_key, next_attempt_at, event_id)
    WHERE status = 'pending';
  `,
  `
  ALTER TABLE exports ADD COLUMN kind TEXT NOT NULL DEFAULT 'export' CHECK (kind IN ('export', 'import'));
  DROP INDEX exports_by_state;
  CREATE INDEX exports_by_kind_state ON exports (kind, state, id);
  CREATE INDEX exports_by_kind ON exports (kind, id);
  `,
  // The active jobs read at start straight from the index, not from each one's row (a row holds
  // its metadata and platform object): 100,000 of them in ~200 ms instead of ~380 ms.
  `
  DROP INDEX exports_by_kind_state;
  CREATE INDEX exports_by_kind_state ON exports (kind, state, id, misses);
  `,
  // 4: an event's deliveries are keyed by its sequence number (the rowid, named: it follows the
  // order events are created in), not by its webhook-id, which begins with a random export id. A
  // commit's new deliveries, and the leases and outcomes that follow, then change the last pages
  // of the deliveries' B-tree instead of a page in most of its leaves. The events of one job are
  // found on the webhook-id's own index, by its prefix (see `webhookIdPrefixes`), so
  // events_by_export, another B-tree in random order, goes. At 100,000 exports finishing in
  // commits of 400, a transition's commit cost 129 µs and costs 72 µs (`npm run bench:commit`).
  `
  CREATE TABLE events_v4 (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    export_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
  );
  INSERT INTO events_v4 (seq, id, export_id, type, body, created_at)
    SELECT rowid, id, export_id, type, body, created_at FROM events ORDER BY rowid;

  CREATE TABLE deliveries_v4 (
    event_seq INTEGER NOT NULL REFERENCES events_v4 (seq) ON DELETE CASCADE,
    endpoint_key TEXT NOT NULL,
    endpoint_label TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'gone')),
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER,
    leased INTEGER NOT NULL DEFAULT 0,
    series_started_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    finished_at INTEGER,
    PRIMARY KEY (event_seq, endpoint_key)
  ) WITHOUT ROWID;
  INSERT INTO deliveries_v4 (event_seq, endpoint_key, endpoint_label, status, attempts, next_attempt_at,
                             leased, series_started_at, last_status, last_error, finished_at)
    SELECT e.seq, d.endpoint_key, d.endpoint_label, d.status, d.attempts, d.next_attempt_at,
           d.leased, d.series_started_at, d.last_status, d.last_error, d.finished_at
    FROM deliveries AS d JOIN events_v4 AS e ON e.id = d.event_id;

  DROP TABLE deliveries;
  DROP TABLE events;
  ALTER TABLE events_v4 RENAME TO events;
  ALTER TABLE deliveries_v4 RENAME TO deliveries;
  CREATE INDEX events_by_time ON events (created_at, id);
  CREATE INDEX deliveries_due ON deliveries (endpoint_key, next_attempt_at, event_seq)
    WHERE status = 'pending';
  `,
];

/** The schema version this code writes: the number of migrations. */
export const SCHEMA_VERSION = MIGRATIONS.length;

const BUSY_TIMEOUT_MS = 5000;
/**
 * The page cache, in KiB. SQLite's default (2 MiB) holds a small part of the indexes of 100,000
 * exports; 16 MiB keeps the hot ones in memory (a bigger cache halved `addExports` of 100,000
 * ids, but it is resident memory the daemon keeps: 64 MiB cost ~50 MB of RSS at 100,000).
 */
const CACHE_KIB = 16 * 1024;
/**
 * The page size of a database this store creates (one it opens keeps its own). A commit writes
 * every page it changed into the write-ahead log, and the keys of events and deliveries are random
 * (webhook-ids), so a group commit of a thousand transitions changes a page in most leaves of
 * every index it touches: what it costs goes by pages more than by bytes. Against SQLite's
 * default of 4 KiB, 16 KiB took a quarter off the commit of 650 transitions (`npm run
 * bench:commit`) and a fifth off the daemon's CPU per export delivered in `npm run bench --
 * --finish-only`; 32 KiB gained less there than it lost to the larger pages every single-row
 * update writes.
 */
export const PAGE_SIZE = 16 * 1024;

export interface SqliteStoreOptions {
  /** The database file (`openDataDir`'s answer), or `:memory:` for a store that dies with the process. */
  path: string;
  log?: Logger;
}

/**
 * Makes sure `dataDir` exists and is a directory this process can write in, and returns the
 * database path in it. Any problem is a one-line `StoreError` naming the directory, so that a
 * misconfigured volume fails at start-up rather than at the first write.
 */
export function openDataDir(dataDir: string): string {
  const problem = (what: string, error?: unknown): StoreError =>
    new StoreError(
      `WATCHER_DATA_DIR ${dataDir}: ${what}${error === undefined ? '' : ` (${errorCode(error)})`}; ` +
        'point WATCHER_DATA_DIR at a directory this user can write, or fix its permissions',
    );
  try {
    makeDirectories(dataDir);
  } catch (error) {
    throw problem(errorCode(error) === 'EEXIST' ? 'it is not a directory' : 'cannot create it', error);
  }
  // Unique: a probe left by a process killed right here must not fail the next start, which in a
  // container often has the same pid.
  const probe = join(dataDir, `.write-probe-${process.pid}-${randomBytes(6).toString('hex')}`);
  try {
    writeFileSync(probe, '', { flag: 'wx' });
    unlinkSync(probe);
  } catch (error) {
    throw problem('cannot write there', error);
  }
  return join(dataDir, DB_FILE);
}

/**
 * `mkdir -p`, one level at a time: Node's own recursive mkdir spins for ever on a path it cannot
 * create under a pseudo-filesystem (`/proc/x` answers ENOENT, and it retries the parent, which
 * exists, without end). Throws EEXIST when the path, or a part of it, exists and is not a directory.
 */
function makeDirectories(dir: string): void {
  const missing: string[] = [];
  for (let at = resolve(dir); ; ) {
    let found: Stats | undefined;
    try {
      found = statSync(at);
    } catch (error) {
      if (errorCode(error) !== 'ENOENT') throw error;
    }
    if (found !== undefined) {
      if (!found.isDirectory())
        throw Object.assign(new Error(`${at} is not a directory`), { code: 'EEXIST' });
      break;
    }
    missing.push(at);
    const parent = dirname(at);
    if (parent === at) break;
    at = parent;
  }
  for (const d of missing.reverse()) mkdirSync(d);
}

/**
 * Opens (creating if need be) the database at `options.path`, checks it, and brings its schema up
 * to date. Rejects with a `StoreError` naming the file when it cannot be used.
 */
export async function openSqliteStore(options: SqliteStoreOptions): Promise<SqliteStore> {
  const { path, log } = options;
  const found = path === ':memory:' || !existsSync(path) ? 0 : inspect(path);
  if (found > SCHEMA_VERSION) {
    throw new StoreError(
      `database ${path} was written by a newer version of sbg-export-watcher (schema ${found}, ` +
        `this version knows up to ${SCHEMA_VERSION}); it was left untouched: run that newer version`,
    );
  }
  // Taken once the file is known to be ours (or absent): a refused file gets nothing beside it.
  const lock = path === ':memory:' ? undefined : lockDatabase(path);
  try {
    const db = connect(path, { readonly: false });
    try {
      configure(db, path, log);
      migrate(db, found);
    } catch (error) {
      db.close();
      throw new StoreError(`database ${path}: cannot use it (${errorCode(error)}: ${oneLine(error)})`);
    }
    log?.info({ path, schema: SCHEMA_VERSION, migrated_from: found }, 'store opened');
    return new SqliteStore(db, lock);
  } catch (error) {
    lock?.close();
    throw error;
  }
}

/**
 * One daemon per database: an exclusive lock held for the store's life, on a file of its own beside
 * the database (`watcher.db.lock`; a lock on the database itself would also shut out `sqlite3
 * .backup`). It is SQLite's lock, the kernel's POSIX lock underneath, so a killed process leaves
 * none behind; the file stays (deleting a lock file races with the next one to take it). A second
 * daemon on the same data directory would otherwise release the first one's leases as a dead
 * process's and send its webhooks in flight again, and both would spend the rate budget.
 */
function lockDatabase(path: string): Database.Database {
  const file = `${path}.lock`;
  let lock: Database.Database;
  try {
    lock = new Database(file, { timeout: 0 });
  } catch (error) {
    throw new StoreError(
      `database ${path}: cannot open its lock file ${file} (${errorCode(error)}: ${oneLine(error)})`,
    );
  }
  try {
    lock.pragma('locking_mode = EXCLUSIVE');
    // The write below is never committed: its journal kept in memory leaves no file beside the
    // lock, and the lock file itself is never changed.
    lock.pragma('journal_mode = MEMORY');
    lock.exec('BEGIN EXCLUSIVE');
    // A file this process may not write is opened read-only, and BEGIN EXCLUSIVE then takes no
    // lock at all: a write (never committed) says so.
    lock.pragma('user_version = 1');
    return lock;
  } catch (error) {
    lock.close();
    if (/^SQLITE_BUSY/.test(errorCode(error))) {
      throw new StoreError(
        `database ${path} is in use by another process (another sbg-export-watcher on the same ` +
          'WATCHER_DATA_DIR?): one daemon per data directory; stop the other, or give this one a directory of its own',
      );
    }
    throw new StoreError(
      `database ${path}: cannot lock it with ${file} (${errorCode(error)}: ${oneLine(error)})`,
    );
  }
}

/** `busy_timeout`: how long a statement waits for a lock another connection holds (a backup, say). */
function connect(path: string, options: { readonly: boolean }): Database.Database {
  try {
    return new Database(path, { ...options, timeout: BUSY_TIMEOUT_MS });
  } catch (error) {
    throw new StoreError(`database ${path}: cannot open it (${errorCode(error)}: ${oneLine(error)})`);
  }
}

/**
 * An existing file's schema version, after a quick integrity check. The connection is read-only:
 * it can neither write the file nor fold a write-ahead log into it on close, so a file that is
 * refused here is left exactly as it was found.
 */
function inspect(path: string): number {
  const db = connect(path, { readonly: true });
  try {
    const version = db.pragma('user_version', { simple: true }) as number;
    const rows = db.pragma('quick_check') as Array<{ quick_check: string }>;
    const problem = rows.map((r) => r.quick_check).find((r) => r !== 'ok');
    if (problem !== undefined) throw damaged(path, `integrity check: ${oneLine(problem)}`);
    // The migrations create the tables and set the version in one transaction: version 0 with
    // tables in it, or a version this code wrote without this program's tables (other programs set
    // user_version too), is another program's database, which must not be written into. What a
    // newer version holds is not known here: it is refused as newer (by the caller).
    if (version > SCHEMA_VERSION) return version;
    const names = db
      .prepare("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
      .pluck()
      .all() as string[];
    const foreign = version === 0 ? names.length > 0 : !OWN_TABLES.every((t) => names.includes(t));
    if (foreign) {
      const shown = names.slice(0, 3).map((n) => JSON.stringify(n.slice(0, 64)));
      const tables =
        names.length === 0
          ? 'no tables'
          : `another program's tables (${shown.join(', ')}${names.length > 3 ? ', …' : ''})`;
      throw new StoreError(
        `database ${path} holds ${tables} and no sbg-export-watcher schema` +
          `${version === 0 ? '' : ` (though its user_version is ${version})`}; it was left untouched: ` +
          'give WATCHER_DATA_DIR a directory of its own',
      );
    }
    return version;
  } catch (error) {
    if (error instanceof StoreError) throw error;
    if (/^SQLITE_(NOTADB|CORRUPT)/.test(errorCode(error))) throw damaged(path, oneLine(error));
    throw new StoreError(`database ${path}: cannot read it (${errorCode(error)}: ${oneLine(error)})`);
  } finally {
    db.close();
  }
}

/** The tables every schema version of this program has (names of tables and indexes are one namespace). */
const OWN_TABLES = ['exports', 'events', 'deliveries'] as const;

function damaged(path: string, reason: string): StoreError {
  return new StoreError(
    `database ${path} is not a usable SQLite database (${reason}); it was left untouched: ` +
      'move it aside (with its -wal and -shm files) to start afresh, or restore a backup in its place (removing them)',
  );
}

function configure(db: Database.Database, path: string, log: Logger | undefined): void {
  // Only takes effect on a file with nothing in it yet, so it must come before WAL mode is set.
  db.pragma(`page_size = ${PAGE_SIZE}`);
  const mode = db.pragma('journal_mode = WAL', { simple: true });
  if (mode !== 'wal' && path !== ':memory:') {
    log?.warn({ path, journal_mode: mode }, 'the database is not in WAL mode; writes are slower');
  }
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma(`cache_size = ${-CACHE_KIB}`);
}

/** Applies the migrations the file lacks, all in one transaction with the version bump. */
function migrate(db: Database.Database, from: number): void {
  if (from === SCHEMA_VERSION) {
    assertWritable(db);
    return;
  }
  db.transaction(() => {
    for (const sql of MIGRATIONS.slice(from)) db.exec(sql);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  })();
}

/**
 * SQLite opens a file it may not write (another user's, read-only, immutable) read-only without a
 * word; every later write would fail. A write rolled back finds it now: nothing reaches the file.
 */
function assertWritable(db: Database.Database): void {
  db.exec('BEGIN IMMEDIATE');
  try {
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  } finally {
    if (db.inTransaction) db.exec('ROLLBACK');
  }
}

interface ExportRow {
  id: string;
  kind: JobKind;
  state: ExportState;
  previous_state: ExportState | null;
  metadata: string | null;
  first_seen_at: number;
  state_changed_at: number;
  misses: number;
  last_miss: string | null;
  history: string;
  platform: string | null;
  error: string | null;
}

interface EventRow {
  seq: number;
  id: string;
  type: EventType;
  export_id: string;
  body: string;
  created_at: number;
}

/**
 * Jobs by kind, then by state (as stored: see `#jobCounts`). Only the SQLite store keeps them: a
 * PostgreSQL database is shared by replicas, each of which writes it, so a count one process kept
 * in memory would miss the others' writes; that store counts in the database at each reading.
 */
type JobCounts = Record<JobKind, Map<string, number>>;

function jobCounts(): JobCounts {
  return { export: new Map(), import: new Map() };
}

/** `by` more (or fewer) under `key`. */
function add(counts: Map<string, number>, key: string, by: number): void {
  counts.set(key, (counts.get(key) ?? 0) + by);
}

interface StatusCount {
  status: DeliveryStatus;
  n: number;
}

/** `#oldestScope` of a reading over every endpoint (no JSON array is this). */
const ANY_ENDPOINT = '*';

/** The `#oldestScope` of a reading over the endpoints `keys` (every endpoint when absent). */
function scopeOf(keys: readonly string[] | undefined): string {
  return keys === undefined ? ANY_ENDPOINT : JSON.stringify([...new Set(keys)].sort());
}

const EVENT_COLUMNS = 'seq, id, type, export_id, body, created_at';
const DELIVERY_COLUMNS =
  'event_seq, endpoint_key, endpoint_label, status, attempts, next_attempt_at, series_started_at, ' +
  'last_status, last_error, finished_at, leased';

/** A delivery row of this schema: keyed by its event's sequence number, not its webhook-id. */
type SeqDeliveryRow = Omit<DeliveryRow, 'event_id'> & { event_seq: number };

/**
 * The condition that finds one job's events on the webhook-id's index (`webhookIdPrefixes`; a
 * job's events of either kind), with its parameters. A prefix ends in `_`, so the events of a
 * job `a1` are not read for the job `a`; the job id is checked too, as `evt_a_` also begins the
 * webhook-ids of a job `a_b`.
 */
const JOB_EVENTS = `export_id = @id AND (
  (id >= @exportLow AND id < @exportHigh) OR (id >= @importLow AND id < @importHigh))`;

function jobEventParams(id: string): Record<string, string> {
  const [exportPrefix, importPrefix] = webhookIdPrefixes(id);
  return {
    id,
    exportLow: exportPrefix,
    exportHigh: prefixEnd(exportPrefix),
    importLow: importPrefix,
    importHigh: prefixEnd(importPrefix),
  };
}

/** Refuses an event whose id does not begin with a prefix of its job's: its job could not find it. */
function assertJobWebhookId(event: NewEvent): void {
  if (!webhookIdPrefixes(event.exportId).some((prefix) => event.id.startsWith(prefix))) {
    throw new Error(`event id ${event.id} does not begin with a webhook-id prefix of ${event.exportId}`);
  }
}

/** The least text above every text that begins with `prefix`, as SQLite compares text (ids are ASCII). */
function prefixEnd(prefix: string): string {
  return `${prefix.slice(0, -1)}${String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)}`;
}

export class SqliteStore implements Store {
  #db: Database.Database | undefined;
  readonly #statements = new Map<string, Database.Statement>();
  /**
   * Deliveries by status, counted once at the first `deliveryCounts` and then kept by every write
   * (this process is the database's one writer), so that a metrics scrape reads no table: counting
   * a million retained deliveries took ~250 ms, the process blocked meanwhile. A per-row trigger
   * kept the same count in the database, at ~10% more per commit of transitions.
   */
  #counts: Record<DeliveryStatus, number> | undefined;
  /** What the transaction under way changed in `#counts`: applied only once it commits. */
  #countDelta: Record<DeliveryStatus, number> | undefined;
  /**
   * No pending delivery's event is older than this, of the deliveries to the endpoints of
   * `#oldestScope` (kept with `#counts`): the oldest-pending metric reads the events from here on,
   * in time order, up to the first with a pending delivery to one of them,
   * instead of every pending delivery (~23 ms a scrape at 100,000 pending, `npm run bench:scrape`;
   * ~2 ms with it after 5,000 delivered). A backlog drains from
   * its oldest end, so a scrape reads about what was delivered since the last one. A write that
   * adds pending deliveries to new events lowers it to their time; one that makes an older event's
   * delivery pending again (a redelivery, a retry recorded after a final outcome) forgets it, and
   * the next scrape reads them all once. Lowered or forgotten inside a transaction that then rolls
   * back, it is only lower than it need be. Deliveries to an endpoint no longer configured stay
   * pending for good: counted from them, the floor would stay at the oldest of their events, and
   * every scrape would read every event since.
   */
  #oldestFloor: number | undefined;
  /**
   * The endpoints `#oldestFloor` was read for: their keys as JSON (sorted, each once), or
   * `ANY_ENDPOINT`. Lowering or forgetting the floor holds for any set.
   */
  #oldestScope: string | undefined;
  /**
   * Jobs by kind and state, counted once at the first `countExports` (one read of the
   * `exports_by_kind_state` index for both kinds) and then kept by every write of the exports
   * table as `#counts` is kept: a reading of `/metrics` counted the table each time, 65–150 ms
   * of blocked event loop at a million retained jobs, and ~0.03 ms with the counts kept (`npm run
   * bench:scrape -- --pending 0 --drained 0 --jobs 1000000`). Keyed by whatever state a row
   * holds, so that the answer is the GROUP BY's even for a state this code does not know. Only
   * this store keeps them: see `JobCounts`.
   */
  #jobCounts: JobCounts | undefined;
  /** What the transaction under way changed in `#jobCounts`: applied only once it commits. */
  #jobDelta: JobCounts | undefined;

  /** Runs its argument in a transaction: one wrapper for all, where `db.transaction` makes one per call. */
  readonly #inTransaction: (work: () => unknown) => unknown;

  /** Held while the store is open (`lockDatabase`); none for `:memory:`. */
  readonly #lock: Database.Database | undefined;

  constructor(db: Database.Database, lock?: Database.Database) {
    this.#db = db;
    this.#lock = lock;
    this.#inTransaction = db.transaction((work: () => unknown) => work());
  }

  /**
   * An id already stored is looked up only then, to tell "already watched" from "stored as the
   * other kind"; a request with any of the latter has the rows it inserted deleted again, in the
   * same transaction, so that nothing of it is added.
   */
  async addExports(requests: readonly AddRequest[], now: number): Promise<AddResult[]> {
    const insert = this.#sql(`
      INSERT INTO exports (id, kind, state, metadata, first_seen_at, state_changed_at, misses, history)
      VALUES (?, ?, 'UNKNOWN', ?, ?, ?, 0, ?)
      ON CONFLICT (id) DO NOTHING`);
    const kindOf = this.#sql('SELECT kind FROM exports WHERE id = ?');
    const undo = this.#sql('DELETE FROM exports WHERE id = ?');
    const history = JSON.stringify([{ state: 'UNKNOWN', at: now }]);
    return this.#transaction(() =>
      requests.map(({ ids, metadata, kind = 'export' }) => {
        const json = toJson(metadata);
        const result: AddResult = { accepted: [], alreadyWatched: [] };
        const conflicts: string[] = [];
        for (const id of new Set(ids)) {
          const twin = webhookTwin(id, kind);
          if (twin && (kindOf.get(twin.id) as { kind: JobKind } | undefined)?.kind === twin.kind) {
            conflicts.push(id);
            continue;
          }
          if (insert.run(id, kind, json, now, now, history).changes === 1) {
            this.#jobCounted(kind, 'UNKNOWN', 1);
            result.accepted.push(id);
            continue;
          }
          const stored = (kindOf.get(id) as { kind: JobKind } | undefined)?.kind;
          (stored === kind ? result.alreadyWatched : conflicts).push(id);
        }
        if (conflicts.length === 0) return result;
        for (const id of result.accepted) this.#jobCounted(kind, 'UNKNOWN', -undo.run(id).changes);
        return { accepted: [], alreadyWatched: [], conflicts };
      }),
    );
  }

  /**
   * Also deletes the export's events that are left with no delivery at all: nothing could replay
   * them, and they would otherwise wait for retention with nothing to show.
   */
  async removeExport(
    id: string,
    kind: JobKind = 'export',
  ): Promise<{ removed: boolean; cancelledDeliveries: number }> {
    const deleteExport = this.#sql('DELETE FROM exports WHERE id = ? AND kind = ? RETURNING state').pluck();
    // Its own kind's events only: a removed job of the other kind that had this id keeps its
    // events, and the deliveries owed for them (a redelivery, say).
    const ownEvents = `${JOB_EVENTS} AND substr(type, 1, length(@kind) + 1) = @kind || '.'`;
    const cancelPending = this.#sql(`
      DELETE FROM deliveries
      WHERE status = 'pending' AND event_seq IN (SELECT seq FROM events WHERE ${ownEvents})`);
    const deleteBareEvents = this.#sql(`
      DELETE FROM events
      WHERE ${ownEvents} AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = events.seq)`);
    return this.#transaction(() => {
      const state = deleteExport.get(id, kind) as ExportState | undefined;
      if (state === undefined) return { removed: false, cancelledDeliveries: 0 };
      this.#jobCounted(kind, state, -1);
      const params = { ...jobEventParams(id), kind };
      const cancelledDeliveries = cancelPending.run(params).changes;
      this.#counted('pending', -cancelledDeliveries);
      deleteBareEvents.run(params);
      return { removed: true, cancelledDeliveries };
    });
  }

  async getExport(id: string, kind: JobKind = 'export'): Promise<StoredExport | undefined> {
    return this.#exportOf(id, kind);
  }

  #exportOf(id: string, kind: JobKind): StoredExport | undefined {
    const row = this.#sql('SELECT * FROM exports WHERE id = ? AND kind = ?').get(id, kind) as
      | ExportRow
      | undefined;
    return row && toStoredExport(row);
  }

  async pageExports(query: ExportPageQuery): Promise<{ items: StoredExport[]; more: boolean }> {
    const where = [
      'kind = @kind',
      ...(query.state === undefined ? [] : ['state = @state']),
      ...(query.after === undefined ? [] : ['id > @after']),
    ];
    const rows = this.#sql(`SELECT * FROM exports ${whereClause(where)} ORDER BY id LIMIT @limit`).all({
      kind: query.kind ?? 'export',
      state: query.state,
      after: query.after,
      limit: query.limit + 1,
    }) as ExportRow[];
    return page(rows, query.limit, toStoredExport);
  }

  /**
   * From `#jobCounts`, counted at the first call. Inside a transaction (a call from a builder) the
   * table is counted, as the transaction sees it, and the answer is not kept: the transaction's
   * own writes are not in `#jobCounts` yet, and may yet roll back.
   */
  async countExports(kind: JobKind = 'export'): Promise<Record<ExportState, number>> {
    let counts = this.#jobCounts;
    if (counts === undefined || this.#open().inTransaction) {
      const rows = this.#sql(
        'SELECT kind, state, count(*) AS n FROM exports GROUP BY kind, state',
      ).all() as Array<{ kind: JobKind; state: string; n: number }>;
      counts = jobCounts();
      for (const { kind, state, n } of rows) counts[kind].set(state, n);
      if (!this.#open().inTransaction) this.#jobCounts = counts;
    }
    // As the GROUP BY answers: every known state, and another only while a row holds it.
    const answer = Object.fromEntries(EXPORT_STATES.map((s) => [s, 0])) as Record<ExportState, number>;
    for (const [state, n] of counts[kind]) {
      if (n !== 0 || Object.hasOwn(answer, state)) answer[state as ExportState] = n;
    }
    return answer;
  }

  async loadActive(): Promise<ActiveExport[]> {
    return this.#loadJobs(`state IN ${ACTIVE_SQL}`);
  }

  async loadUnknown(): Promise<ActiveExport[]> {
    return this.#loadJobs(`state = 'UNKNOWN'`);
  }

  /** Jobs of both kinds whose state meets `stateCondition` (both kinds named: the index serves it). */
  #loadJobs(stateCondition: string): ActiveExport[] {
    const statement = this.#sql(
      `SELECT id, kind, state, misses FROM exports WHERE kind IN ('export', 'import') AND ${stateCondition}`,
    );
    // Rows as arrays, one at a time: at a restart with 100,000 watched, half the time and garbage
    // of row objects collected into an array first.
    const jobs: ActiveExport[] = [];
    for (const row of statement.raw().iterate() as IterableIterator<RawActiveRow>)
      jobs.push(activeExport(...row));
    return jobs;
  }

  /**
   * A change that only counts a miss makes no event, so `build` is asked only about changes of
   * state. The history gains an entry per change of state, appended in SQL so the stored history
   * is never read here.
   */
  async commitChanges(
    changes: readonly ExportChange[],
    build: EventBuilder,
    endpoints: readonly EndpointRef[],
    now: number,
  ): Promise<NewEvent[]> {
    // A SELECT, then a plain UPDATE: cheaper than UPDATE ... RETURNING, which builds a temporary
    // table for every row it returns.
    const metadataOf = this.#sql('SELECT metadata, kind FROM exports WHERE id = ?');
    const move = this.#sql(`
      UPDATE exports SET
        previous_state = @from, state = @to, state_changed_at = @at,
        history = json_insert(history, '$[#]', json_object('state', @to, 'at', @at)),
        misses = @misses, last_miss = @lastMiss, platform = coalesce(@platform, platform), error = @error
      WHERE id = @id AND state = @from`);
    const countMiss = this.#sql(`
      UPDATE exports SET misses = @misses, last_miss = @lastMiss, platform = coalesce(@platform, platform)
      WHERE id = @id AND state = @from`);
    const insertEvent = this.#sql(`
      INSERT INTO events (id, export_id, type, body, created_at) VALUES (?, ?, ?, ?, ?)
      ON CONFLICT (id) DO NOTHING`);
    // Without a conflict for a new event. For one stored already (the job was removed or pruned
    // and watched again: a removal cancels pending deliveries but keeps the event for replay), the
    // endpoints left with no delivery of it get one; those that hold one keep it (same webhook-id).
    const insertDelivery = this.#sql(`
      INSERT INTO deliveries (event_seq, endpoint_key, endpoint_label, status, attempts, next_attempt_at,
                              series_started_at)
      VALUES (?, ?, ?, 'pending', 0, ?, ?)
      ON CONFLICT (event_seq, endpoint_key) DO NOTHING`);
    // Another job's event may hold the webhook-id (an export `import_x` and an import `x` share
    // theirs; the store refuses the second only while the first is watched): it is not sent again.
    const storedEvent = this.#sql('SELECT seq, export_id, type FROM events WHERE id = ?');
    return this.#transaction(() => {
      const written: NewEvent[] = [];
      /** The creation time of the last event built for each job in this call. */
      const lastCreated = new Map<string, number>();
      /** The events built so far in this call: one built again is the same event, stored once. */
      const built = new Set<string>();
      for (const change of changes) {
        const params = changeParams(change);
        if (change.from === change.to) {
          countMiss.run(params);
          continue;
        }
        const row = metadataOf.get(change.id) as { metadata: string | null; kind: JobKind } | undefined;
        // Stored in another state than the change starts from: written by someone else since.
        if (!row || move.run(params).changes === 0) continue;
        this.#jobCounted(row.kind, change.from, -1);
        this.#jobCounted(row.kind, change.to, 1);
        const event = build(change, fromJson(row.metadata), row.kind, params.platform);
        if (!event) continue;
        // Built again (RUNNING, PENDING, RUNNING in one call): it takes no creation time of its own,
        // so the job's next event is a millisecond after the first, as PostgreSQL stores them.
        if (built.has(event.id)) continue;
        built.add(event.id);
        const createdAt = eventCreatedAt(lastCreated, event.exportId, now);
        lastCreated.set(event.exportId, createdAt);
        assertJobWebhookId(event);
        const inserted = insertEvent.run(event.id, event.exportId, event.type, event.body, createdAt);
        const fresh = inserted.changes > 0;
        let seq = inserted.lastInsertRowid;
        if (!fresh) {
          const stored = storedEvent.get(event.id) as
            | { seq: number; export_id: string; type: string }
            | undefined;
          if (stored?.export_id !== event.exportId || stored.type !== event.type) continue;
          seq = stored.seq;
        }
        let added = 0;
        for (const e of endpoints) added += insertDelivery.run(seq, e.key, e.label, now, now).changes;
        if (!fresh && added === 0) continue;
        // Pending again for an older event: the oldest-pending floor is forgotten.
        this.#counted('pending', added, fresh ? createdAt : undefined);
        written.push(event);
      }
      return written;
    });
  }

  async claimDue(
    endpointKey: string,
    now: number,
    limit: number,
    leaseUntil: number,
  ): Promise<DeliveryJob[]> {
    // CROSS JOIN keeps deliveries the outer loop, so the due index gives the order and the limit.
    const due = this.#sql(`
      SELECT d.event_seq, e.id, e.export_id, e.body, d.attempts, d.series_started_at
      FROM deliveries AS d CROSS JOIN events AS e ON e.seq = d.event_seq
      WHERE d.endpoint_key = ? AND d.status = 'pending' AND d.next_attempt_at <= ?
      ORDER BY d.next_attempt_at, d.event_seq
      LIMIT ?`).raw();
    const lease = this.#sql(
      'UPDATE deliveries SET next_attempt_at = ?, leased = 1 WHERE event_seq = ? AND endpoint_key = ?',
    );
    return this.#lightTransaction(() => {
      const rows = due.all(endpointKey, now, limit) as Array<
        [number, string, string, string, number, number]
      >;
      const jobs: DeliveryJob[] = [];
      for (const [seq, eventId, exportId, body, attempts, seriesStartedAt] of rows) {
        lease.run(leaseUntil, seq, endpointKey);
        jobs.push({ eventId, exportId, endpointKey, body, attempts, seriesStartedAt });
      }
      return jobs;
    });
  }

  /** Only rows marked leased: a retry that an attempt scheduled for later keeps its time. */
  async releaseLeases(now: number): Promise<void> {
    this.#sql(
      `UPDATE deliveries SET next_attempt_at = ?, leased = 0 WHERE status = 'pending' AND leased = 1`,
    ).run(now);
  }

  async nextDueAt(endpointKey: string): Promise<number | null> {
    const row = this.#sql(`
      SELECT min(next_attempt_at) AS at FROM deliveries WHERE endpoint_key = ? AND status = 'pending'`).get(
      endpointKey,
    ) as { at: number | null };
    return row.at;
  }

  /**
   * Writing an outcome ends the claim's lease. A final row keeps no next attempt time, and a
   * pending one no finish time, whatever the record carries: `claimDue` and the listings rely on it.
   * A record that counts no new attempt (the claim ended before one) keeps the last status and error.
   */
  async recordAttempts(records: readonly AttemptRecord[]): Promise<void> {
    const update = this.#sql(`
      UPDATE deliveries SET
        status = @status, attempts = @attempts, next_attempt_at = @nextAttemptAt, leased = 0,
        last_status = CASE WHEN attempts = @attempts THEN last_status ELSE @lastStatus END,
        last_error = CASE WHEN attempts = @attempts THEN last_error ELSE @lastError END,
        finished_at = @finishedAt
      WHERE event_seq = (SELECT seq FROM events WHERE id = @eventId) AND endpoint_key = @endpointKey
        AND series_started_at = @seriesStartedAt`);
    const statusOf = this.#sql(`
      SELECT status FROM deliveries
      WHERE event_seq = (SELECT seq FROM events WHERE id = ?) AND endpoint_key = ? AND series_started_at = ?`).pluck();
    this.#lightTransaction(() => {
      for (const r of records) {
        const pending = r.status === 'pending';
        if (this.#counts !== undefined) {
          const was = statusOf.get(r.eventId, r.endpointKey, r.seriesStartedAt) as DeliveryStatus | undefined;
          if (was !== undefined) this.#recounted(was, r.status);
        }
        update.run({
          eventId: r.eventId,
          endpointKey: r.endpointKey,
          seriesStartedAt: r.seriesStartedAt,
          status: r.status,
          attempts: r.attempts,
          nextAttemptAt: pending ? r.nextAttemptAt : null,
          lastStatus: r.lastStatus,
          lastError: r.lastError === null ? null : storableText(r.lastError),
          finishedAt: pending ? null : r.finishedAt,
        });
      }
    });
  }

  /**
   * On the due index's ranges around the configured keys (`#orphanRanges`), a statement each: the
   * configured endpoints' pending deliveries (the backlog, which may be large) are never read.
   */
  async giveUpOrphaned(
    keys: readonly string[],
    startedBy: number,
    now: number,
  ): Promise<Array<{ endpointLabel: string; count: number }>> {
    const ranges = this.#orphanRanges(keys);
    return this.#transaction(() => {
      const byLabel = new Map<string, number>();
      for (const { where, bounds } of ranges) {
        const labels = this.#sql(`
          UPDATE deliveries SET
            status = 'failed', next_attempt_at = NULL, leased = 0, finished_at = ?, last_error = ?
          WHERE status = 'pending' AND series_started_at <= ? ${where}
          RETURNING endpoint_label`)
          .pluck()
          .all(now, ORPHANED_GIVE_UP_ERROR, startedBy, ...bounds) as string[];
        this.#recounted('pending', 'failed', labels.length);
        for (const label of labels) add(byLabel, label, 1);
      }
      return [...byLabel].map(([endpointLabel, count]) => ({ endpointLabel, count }));
    });
  }

  /**
   * Pending deliveries to endpoints not in `keys`, counted on the due index, range by range
   * (`#orphanRanges`), so that a metrics scrape can afford it.
   */
  #orphanedPending(keys: readonly string[]): number {
    const ranges = this.#orphanRanges(keys);
    const count = "SELECT count(*) FROM deliveries WHERE status = 'pending'";
    return this.#sql(`SELECT ${ranges.map(({ where }) => `(${count} ${where})`).join(' + ')}`)
      .pluck()
      .get(...ranges.flatMap((r) => r.bounds)) as number;
  }

  /**
   * The conditions (with their bounds) that select, on the due index (pending rows only, in
   * endpoint key order), the deliveries to endpoints not in `keys`: the ranges around the keys,
   * below the first, between each two, above the last; no condition at all without keys. So the
   * configured endpoints' pending deliveries are never read, only the orphaned ones. Each range is
   * a statement of its own: `endpoint_key NOT IN (…)`, or the ranges joined by OR in one WHERE,
   * make the planner read the whole index. The keys are sorted as SQLite compares text (its bytes
   * in UTF-8), or a range would come out empty or overlap.
   */
  #orphanRanges(keys: readonly string[]): Array<{ where: string; bounds: string[] }> {
    const sorted = [...new Set(keys)].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    const first = sorted[0];
    const last = sorted.at(-1);
    if (first === undefined || last === undefined) return [{ where: '', bounds: [] }];
    return [
      { where: 'AND endpoint_key < ?', bounds: [first] },
      ...sorted.slice(1).map((key, i) => ({
        where: 'AND endpoint_key > ? AND endpoint_key < ?',
        bounds: [sorted[i] as string, key],
      })),
      { where: 'AND endpoint_key > ?', bounds: [last] },
    ];
  }

  async getEvent(id: string): Promise<StoredEvent | undefined> {
    const rows = this.#sql(`SELECT ${EVENT_COLUMNS} FROM events WHERE id = ?`).all(id) as EventRow[];
    return this.#withDeliveries(rows)[0];
  }

  async listEvents(query: EventQuery): Promise<{ items: StoredEvent[]; more: boolean }> {
    const byJob = query.exportId !== undefined;
    const where = [
      ...(query.exportId === undefined ? [] : [JOB_EVENTS]),
      ...(query.kind === undefined ? [] : ["substr(type, 1, length(@kind) + 1) = @kind || '.'"]),
      // One job's few events come from the webhook-id index: `+` keeps the planner off the time
      // index, which would read every event since (or before the cursor) of every job.
      ...(query.since === undefined ? [] : [`${byJob ? '+' : ''}created_at >= @since`]),
      ...(query.after === undefined
        ? []
        : [byJob ? '(+created_at, +id) < (@afterAt, @afterId)' : '(created_at, id) < (@afterAt, @afterId)']),
      ...(query.status === undefined
        ? []
        : ['EXISTS (SELECT 1 FROM deliveries WHERE event_seq = events.seq AND status = @status)']),
    ];
    const rows = this.#sql(
      `SELECT ${EVENT_COLUMNS} FROM events ${whereClause(where)} ORDER BY created_at DESC, id DESC LIMIT @limit`,
    ).all({
      ...(query.exportId === undefined ? {} : jobEventParams(query.exportId)),
      kind: query.kind,
      since: query.since,
      afterAt: query.after?.createdAt,
      afterId: query.after?.id,
      status: query.status,
      limit: query.limit + 1,
    }) as EventRow[];
    const { items, more } = page(rows, query.limit, (r) => r);
    return { items: this.#withDeliveries(items), more };
  }

  /** Both reads in one synchronous turn: nothing this process writes can come between them. */
  async getExportWithEvents(
    id: string,
    kind: JobKind = 'export',
  ): Promise<{ record: StoredExport; events: StoredEvent[] } | undefined> {
    const record = this.#exportOf(id, kind);
    if (!record) return undefined;
    const rows = this.#sql(
      `SELECT ${EVENT_COLUMNS} FROM events
       WHERE ${JOB_EVENTS} AND substr(type, 1, length(@kind) + 1) = @kind || '.' ORDER BY created_at, id`,
    ).all({ ...jobEventParams(id), kind }) as EventRow[];
    return { record, events: this.#withDeliveries(rows) };
  }

  /**
   * The last attempt's status and error are kept until the new series' first attempt replaces
   * them, so that a listing still shows why the previous series ended.
   */
  async redeliver(
    eventId: string,
    endpoints: readonly EndpointRef[],
    now: number,
  ): Promise<number | undefined> {
    const seqOf = this.#sql('SELECT seq FROM events WHERE id = ?').pluck();
    const startSeries = this.#sql(`
      INSERT INTO deliveries (event_seq, endpoint_key, endpoint_label, status, attempts, next_attempt_at,
                              series_started_at)
      VALUES (@seq, @key, @label, 'pending', 0, @now, @now)
      ON CONFLICT (event_seq, endpoint_key) DO UPDATE SET
        endpoint_label = excluded.endpoint_label, status = 'pending', attempts = 0,
        next_attempt_at = @now, leased = 0, series_started_at = max(@now, deliveries.series_started_at + 1),
        finished_at = NULL`);
    const statusOf = this.#sql(
      'SELECT status FROM deliveries WHERE event_seq = ? AND endpoint_key = ?',
    ).pluck();
    return this.#transaction(() => {
      const seq = seqOf.get(eventId) as number | undefined;
      if (seq === undefined) return undefined;
      for (const e of endpoints) {
        if (this.#counts !== undefined) {
          const was = statusOf.get(seq, e.key) as DeliveryStatus | undefined;
          if (was === undefined) this.#counted('pending', 1);
          else this.#recounted(was, 'pending');
        }
        startSeries.run({ seq, key: e.key, label: e.label, now });
      }
      return endpoints.length;
    });
  }

  async redeliverSince(
    since: number,
    status: DeliveryStatus,
    now: number,
    endpointKeys: readonly string[],
  ): Promise<number> {
    const restarted = this.#sql(`
      UPDATE deliveries SET
        status = 'pending', attempts = 0, next_attempt_at = @now, leased = 0,
        series_started_at = max(@now, series_started_at + 1), finished_at = NULL
      WHERE status = @status AND event_seq IN (SELECT seq FROM events WHERE created_at >= @since)
        AND endpoint_key IN (SELECT value FROM json_each(@keys))`).run({
      since,
      status,
      now,
      keys: JSON.stringify(endpointKeys),
    }).changes;
    this.#recounted(status, 'pending', restarted);
    return restarted;
  }

  async deliveryCounts(endpointKeys?: readonly string[]): Promise<DeliveryCounts> {
    let counts = this.#counts;
    if (counts === undefined) {
      counts = byStatus(
        this.#sql('SELECT status, count(*) AS n FROM deliveries GROUP BY status').all() as StatusCount[],
      );
      // Counted inside a transaction (a call from a builder), the count holds rows that may yet
      // roll back: answered, not kept.
      if (!this.#open().inTransaction) this.#counts = counts;
    }
    if (counts.pending === 0) {
      // Nothing pending: whatever becomes pending later lowers (or forgets) the floor as it is
      // written, so the next scrape reads from there, not from before everything delivered since.
      // None pending to any endpoint is none to these: the floor holds for their scope.
      if (this.#counts !== undefined && !this.#open().inTransaction) {
        this.#oldestFloor = Number.MAX_VALUE;
        this.#oldestScope = scopeOf(endpointKeys);
      }
      return { ...counts, orphaned: 0, oldestPendingAt: null };
    }
    const orphaned =
      endpointKeys === undefined
        ? 0
        : endpointKeys.length === 0
          ? counts.pending
          : this.#orphanedPending(endpointKeys);
    // Every pending delivery orphaned: none to a configured endpoint, so no oldest to look for.
    if (orphaned >= counts.pending) return { ...counts, orphaned, oldestPendingAt: null };
    return { ...counts, orphaned, oldestPendingAt: this.#oldestPendingAt(endpointKeys) };
  }

  /**
   * The creation time of the oldest event with a pending delivery to one of the endpoints in
   * `keys` (to any, when absent): see `#oldestFloor`. The floor is kept for the endpoints it was
   * read for (`#oldestScope`, the same at every scrape of a daemon), and is not one for another
   * set: a floor read past an orphaned delivery's old event would hide that event from a reading
   * over every endpoint. The walk from the floor checks each event's deliveries to those endpoints
   * by their primary key; an event whose only pending deliveries are orphaned is passed over, and
   * once the floor has moved past it (the first scrape), never read again.
   */
  #oldestPendingAt(keys: readonly string[] | undefined): number | null {
    const scope = scopeOf(keys);
    const floor = scope === this.#oldestScope ? this.#oldestFloor : undefined;
    const toThem = keys === undefined ? '' : 'AND d.endpoint_key IN (SELECT value FROM json_each(?))';
    const them = keys === undefined ? [] : [scope];
    let at: number | null = null;
    if (floor !== undefined) {
      at = (this.#sql(`
        SELECT created_at FROM events AS e INDEXED BY events_by_time
        WHERE created_at >= ?
          AND EXISTS (SELECT 1 FROM deliveries AS d WHERE d.event_seq = e.seq AND d.status = 'pending' ${toThem})
        ORDER BY created_at LIMIT 1`)
        .pluck()
        .get(floor, ...them) ?? null) as number | null;
    }
    // No floor yet, or none found past it (only when every pending delivery left is to endpoints
    // outside `keys`, or the floor says none is pending): the full read is the answer then. With
    // `keys`, it reads their pending deliveries only, on the due index.
    at ??= this.#sql(`
      SELECT min(e.created_at) FROM deliveries AS d CROSS JOIN events AS e ON e.seq = d.event_seq
      WHERE d.status = 'pending' ${toThem}`)
      .pluck()
      .get(...them) as number | null;
    if (this.#counts !== undefined && !this.#open().inTransaction) {
      // None found: none pending to them now, and whatever becomes pending lowers the floor.
      this.#oldestFloor = at ?? Number.MAX_VALUE;
      this.#oldestScope = scope;
    }
    return at;
  }

  /**
   * Each batch is its own statement and transaction, and the event loop gets a turn between
   * batches, so that a large backlog never holds the writer (or the process) for long. Deleting an
   * event deletes its deliveries (a foreign key cascade). Finished exports are found by their own
   * index, named because the planner, without statistics, would rather read every finished one.
   */
  async prune(now: number, policy: RetentionPolicy): Promise<{ exports: number; events: number }> {
    const exports = await this.#pruneExports(now - policy.retainMs, policy.batch);
    const events = await this.#pruneEvents(now - policy.eventRetainMs, policy.batch);
    return { exports, events };
  }

  /**
   * Events in time order, each batch resuming after the last one it deleted: the events kept
   * (a delivery still pending) are read once per run, not once per batch.
   */
  async #pruneEvents(cutoff: number, batch: number): Promise<number> {
    const find = this.#sql(`
      SELECT id, created_at AS at FROM events
      WHERE created_at <= @cutoff AND (created_at, id) > (@afterAt, @afterId)
        AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = events.seq AND status = 'pending')
      ORDER BY created_at, id LIMIT @batch`);
    const remove = this.#sql('DELETE FROM events WHERE id IN (SELECT value FROM json_each(?))');
    // The deliveries that go with them (a cascade), by status: all final (the pending ones stay).
    const cascading = this.#sql(`
      SELECT status, count(*) AS n FROM deliveries
      WHERE event_seq IN (SELECT seq FROM events WHERE id IN (SELECT value FROM json_each(?)))
      GROUP BY status`);
    let after = { at: Number.MIN_SAFE_INTEGER, id: '' };
    let total = 0;
    for (;;) {
      const found = this.#transaction(() => {
        const rows = find.all({ cutoff, batch, afterAt: after.at, afterId: after.id }) as Array<{
          id: string;
          at: number;
        }>;
        if (rows.length > 0) {
          const ids = JSON.stringify(rows.map((r) => r.id));
          if (this.#counts !== undefined) {
            for (const { status, n } of cascading.all(ids) as StatusCount[]) this.#counted(status, -n);
          }
          remove.run(ids);
        }
        return rows;
      });
      total += found.length;
      const last = found.at(-1);
      if (found.length < batch || last === undefined) return total;
      after = last;
      await nextTurn();
    }
  }

  /** Folds the WAL back into the database file, then closes. Closing again does nothing. */
  async close(): Promise<void> {
    const db = this.#db;
    if (!db) return;
    this.#db = undefined;
    this.#statements.clear();
    try {
      db.pragma('wal_checkpoint(TRUNCATE)');
    } finally {
      db.close();
      this.#lock?.close();
    }
  }

  /**
   * Each batch returns the kind and state of what it deleted, for `#jobCounts`: ~1 µs more per
   * job than a bare DELETE, once in a job's life.
   */
  async #pruneExports(cutoff: number, batch: number): Promise<number> {
    const remove = this.#sql(`
      DELETE FROM exports WHERE id IN (
        SELECT id FROM exports INDEXED BY exports_finished
        WHERE state IN ${FINISHED_SQL} AND state_changed_at <= @cutoff LIMIT @batch)
      RETURNING kind, state`).raw();
    let total = 0;
    for (;;) {
      const deleted = this.#transaction(() => {
        const rows = remove.all({ cutoff, batch }) as Array<[JobKind, string]>;
        for (const [kind, state] of rows) this.#jobCounted(kind, state, -1);
        return rows.length;
      });
      total += deleted;
      if (deleted < batch) return total;
      await nextTurn();
    }
  }

  /** Events with their deliveries, in the order given; deliveries by endpoint key. */
  #withDeliveries(events: readonly EventRow[]): StoredEvent[] {
    if (events.length === 0) return [];
    const rows = this.#sql(`
      SELECT ${DELIVERY_COLUMNS} FROM deliveries
      WHERE event_seq IN (SELECT value FROM json_each(?))
      ORDER BY event_seq, endpoint_key`).all(JSON.stringify(events.map((e) => e.seq))) as SeqDeliveryRow[];
    const idOf = new Map(events.map((e) => [e.seq, e.id]));
    const byEvent = new Map<string, StoredDelivery[]>();
    for (const { event_seq, ...row } of rows) {
      const eventId = idOf.get(event_seq) as string;
      const list = byEvent.get(eventId) ?? [];
      list.push(toStoredDelivery({ ...row, event_id: eventId }));
      byEvent.set(eventId, list);
    }
    return events.map((e) => ({
      id: e.id,
      type: e.type,
      exportId: e.export_id,
      body: e.body,
      createdAt: e.created_at,
      deliveries: byEvent.get(e.id) ?? [],
    }));
  }

  /** The prepared statement for this text, prepared on first use. */
  #sql(text: string): Database.Statement {
    const db = this.#open();
    let statement = this.#statements.get(text);
    if (!statement) {
      statement = db.prepare(text);
      this.#statements.set(text, statement);
    }
    return statement;
  }

  #transaction<T>(work: () => T): T {
    this.#open();
    const counts = this.#counts;
    const jobs = this.#jobCounts;
    if (counts === undefined && jobs === undefined) return this.#inTransaction(work) as T;
    // A nested one (a savepoint) adds to its parent's delta, and only if it did not roll back.
    const parent = this.#countDelta;
    const parentJobs = this.#jobDelta;
    const delta = byStatus();
    const jobDelta = jobs === undefined ? undefined : jobCounts();
    this.#countDelta = delta;
    this.#jobDelta = jobDelta;
    try {
      const result = this.#inTransaction(work) as T;
      if (counts !== undefined) {
        const into = parent ?? counts;
        for (const status of DELIVERY_STATUSES) into[status] += delta[status];
      }
      if (jobs !== undefined && jobDelta !== undefined) {
        const into = parentJobs ?? jobs;
        for (const kind of JOB_KINDS) {
          for (const [state, n] of jobDelta[kind]) add(into[kind], state, n);
        }
      }
      return result;
    } finally {
      this.#countDelta = parent;
      this.#jobDelta = parentJobs;
    }
  }

  /**
   * `by` jobs of `kind` more (or fewer) in `state`: in the transaction under way, else at once.
   * Every write of the exports table that adds, deletes or moves a row between states calls it.
   */
  #jobCounted(kind: JobKind, state: string, by: number): void {
    if (this.#jobCounts === undefined || by === 0) return;
    add((this.#jobDelta ?? this.#jobCounts)[kind], state, by);
  }

  /** `by` deliveries more (or fewer) in `status`: in the transaction under way, else at once. */
  #counted(status: DeliveryStatus, by: number, eventsCreatedAt?: number): void {
    if (this.#counts === undefined || by === 0) return;
    (this.#countDelta ?? this.#counts)[status] += by;
    if (status !== 'pending' || by < 0 || this.#oldestFloor === undefined) return;
    if (eventsCreatedAt === undefined) this.#oldestFloor = undefined;
    else this.#oldestFloor = Math.min(this.#oldestFloor, eventsCreatedAt);
  }

  /** `n` deliveries moved from one status to another. */
  #recounted(from: DeliveryStatus, to: DeliveryStatus, n = 1): void {
    if (from === to) return;
    this.#counted(from, -n);
    this.#counted(to, n);
  }

  /**
   * A transaction whose loss in a crash is harmless by design: a lease (a restart releases them
   * all) or a batch of delivery outcomes (a lost one means a resend under the same webhook-id).
   * It skips the fsync of its commit; the next durable commit syncs the write-ahead log with it.
   * On this machine an fsync costs ~10 ms, and claims and outcomes come with every few deliveries.
   * NORMAL, not OFF: a checkpoint that such a commit sets off still syncs the database file before
   * the log is reused (with OFF it did not, and the log's next writes overwrote frames holding
   * earlier durable commits that the unsynced file did not yet hold for sure).
   */
  #lightTransaction<T>(work: () => T): T {
    // Prepared once: `db.pragma()` prepares its statement anew at every call.
    this.#sql('PRAGMA synchronous = NORMAL').run();
    try {
      return this.#transaction(work);
    } finally {
      this.#sql('PRAGMA synchronous = FULL').run();
    }
  }

  #open(): Database.Database {
    if (!this.#db) throw new StoreError('the store is closed');
    return this.#db;
  }
}

/** A change's named parameters for the statements of `commitChanges`, its objects as JSON text. */
function changeParams(change: ExportChange) {
  return {
    id: change.id,
    from: change.from,
    to: change.to,
    at: change.at,
    misses: change.misses,
    lastMiss: toJson(change.lastMiss),
    platform: toJson(change.export),
    error: toJson(change.error),
  };
}

function toStoredExport(row: ExportRow): StoredExport {
  return {
    id: row.id,
    ...(row.kind === 'import' ? { kind: row.kind } : {}),
    state: row.state,
    previousState: row.previous_state,
    metadata: fromJson(row.metadata),
    firstSeenAt: row.first_seen_at,
    stateChangedAt: row.state_changed_at,
    misses: row.misses,
    history: JSON.parse(row.history) as StoredExport['history'],
    export: fromJson<PlatformExport>(row.platform),
    error: fromJson<PlatformErrorBody>(row.error),
    lastMiss: fromJson<PlatformErrorBody>(row.last_miss),
  };
}

function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'error';
}

function oneLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).replace(/\s+/g, ' ').trim();
}
