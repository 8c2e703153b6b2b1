/**
 * The store on PostgreSQL: the same tables and the same behaviour as `sqlite.ts`, for a database
 * that several processes (replicas of the daemon, the CLI) may use at once.
 *
 * Connections: one small `pg.Pool` (4 connections by default). A statement that stands alone runs
 * on whichever connection is free; a method that writes several statements takes one connection
 * for a transaction. Every statement is prepared once per connection (a named statement, named
 * by a hash of its text). `close` lets the calls in progress finish, then ends the pool.
 *
 * Schema: `schema_migrations` holds one row per migration applied. At open, the migrations run
 * in one transaction that first takes a transaction-scoped advisory lock, so that when two
 * processes start at once one migrates and the other then finds the work done. A database that
 * carries a newer schema, or is not UTF-8, is refused with a `StoreError` before anything is
 * written to it. Id and key columns use the "C" collation, so ids sort byte by byte, as in SQLite,
 * whatever the database's locale.
 *
 * Types: times are epoch milliseconds in `bigint` columns, read back as numbers (the pool parses
 * int8, counts included, with `Number`; epoch ms stay far below 2^53). JSON columns are `text`,
 * written and parsed here, so that metadata keeps its key order and an event's body its exact
 * bytes; only the history is `jsonb`, so that a change appends to it in SQL.
 *
 * Batches: `addExports`, `commitChanges`, `recordAttempts` and `redeliver` write many rows with
 * one statement each, passing columns as arrays that `unnest` turns into rows; a call makes a
 * fixed handful of round trips whatever its size. A batch that names a row twice ends as if its
 * items had been written one after the other, as SQLite writes them.
 *
 * Durability: a commit waits for the server's WAL flush (`synchronous_commit` as the server has
 * it), except for claims and delivery outcomes, whose loss in a crash is harmless by design (as in
 * `sqlite.ts`): they commit with `synchronous_commit = off`, for their own statement only.
 *
 * Kinds: a job is an export or an import (see store.ts); `kind` is a column of `exports`, and an
 * id is unique across kinds.
 *
 * Several processes: `claimDue` leases rows it has locked with `FOR UPDATE SKIP LOCKED`, so two
 * claims never hand out the same delivery; writers lock the rows they read in id order; `prune`
 * skips rows another process holds. `releaseLeases(at)` ends every lease in the database (the
 * rows become due at `at`): it is meant for the only process that sends, when it starts sending;
 * with replicas, the new leader passes takeover + L (see main.ts), not now.
 *
 * Secrets: the URL's password is never logged and never in an error message: the URL is shown
 * without it, and it is cut out of any message the driver or the server gives.
 *
 * The choices copied from `sqlite.ts`: `build` is asked only about changes of state, of exports
 * that exist, in order; retention cut-offs are inclusive; closing twice is harmless, and any
 * other call after `close` rejects with a `StoreError`; `removeExport` also deletes the events
 * it leaves with no delivery; a redelivery keeps the last status and error until its first
 * attempt; `claimDue` hands out equal due times in no particular order.
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import type { EventType } from '../delivery/events.js';
import type { ExportState, JobKind, PlatformExport } from '../polling/tracker.js';
import { EXPORT_STATES } from '../polling/tracker.js';
import type { PlatformErrorBody } from '../shared/errors.js';
import {
  type ActiveRow,
  type DeliveryRow,
  describeDatabaseUrl,
  eventCreatedAt,
  fromJson,
  page,
  storableText,
  toActiveExport,
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
  webhookTwin,
} from './store.js';

/** States written literally into SQL, as in `sqlite.ts`; the tests check them against the tracker. */
export const ACTIVE_STATES = ['UNKNOWN', 'PENDING', 'RUNNING'] as const;
export const FINISHED_STATES = ['COMPLETED', 'FAILED', 'LOST'] as const;
const ACTIVE_SQL = `('UNKNOWN', 'PENDING', 'RUNNING')`;
const FINISHED_SQL = `('COMPLETED', 'FAILED', 'LOST')`;
const KINDS_SQL = `('export', 'import')`;

/**
 * The schema, one migration per entry; `schema_migrations` has a row for each applied. A migration
 * that has shipped is never edited; a change is a new entry at the end. They follow SQLite's, one
 * for one, so that a schema version means the same in both.
 *
 * 2: the job's kind (`export` | `import`); rows written before are exports. The id stays the
 * primary key: an id is unique across kinds (see store.ts).
 */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE exports (
    id text COLLATE "C" PRIMARY KEY,
    state text NOT NULL,
    previous_state text,
    metadata text,
    first_seen_at bigint NOT NULL,
    state_changed_at bigint NOT NULL,
    misses integer NOT NULL,
    last_miss text,
    history jsonb NOT NULL,
    platform text,
    error text
  );
  CREATE INDEX exports_by_state ON exports (state, id);
  CREATE INDEX exports_finished ON exports (state_changed_at) WHERE state IN ${FINISHED_SQL};

  CREATE TABLE events (
    id text COLLATE "C" PRIMARY KEY,
    export_id text COLLATE "C" NOT NULL,
    type text NOT NULL,
    body text NOT NULL,
    created_at bigint NOT NULL
  );
  CREATE INDEX events_by_time ON events (created_at, id);
  CREATE INDEX events_by_export ON events (export_id, created_at, id);

  CREATE TABLE deliveries (
    event_id text COLLATE "C" NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_key text COLLATE "C" NOT NULL,
    endpoint_label text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'gone')),
    attempts integer NOT NULL,
    next_attempt_at bigint,
    -- true while a claim holds the row: its next_attempt_at is then the lease's end.
    leased boolean NOT NULL DEFAULT false,
    series_started_at bigint NOT NULL,
    last_status integer,
    last_error text,
    finished_at bigint,
    PRIMARY KEY (event_id, endpoint_key)
  );
  CREATE INDEX deliveries_due ON deliveries (endpoint_key, next_attempt_at, event_id)
    WHERE status = 'pending';
  `,
  `
  ALTER TABLE exports ADD COLUMN kind text NOT NULL DEFAULT 'export' CHECK (kind IN ${KINDS_SQL});
  DROP INDEX exports_by_state;
  CREATE INDEX exports_by_kind_state ON exports (kind, state, id);
  CREATE INDEX exports_by_kind ON exports (kind, id);
  `,
];

/** The schema version this code writes: the number of migrations. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * A statement that names this CTE (and joins it, so that it is evaluated) commits without waiting
 * for the WAL to reach the disk: `synchronous_commit` is set for its own implicit transaction
 * only, and is read at commit. Used where a loss in a crash is harmless by design, as SQLite's
 * `#lightTransaction` is: claims (a restart releases every lease) and delivery outcomes (a lost
 * one is a resend under the same webhook-id). The commit stays atomic, and the next durable
 * commit flushes it. One round trip, where BEGIN; SET LOCAL; ...; COMMIT would take three.
 */
const RELAXED = `relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true) AS setting)`;

/** The advisory lock that serializes migrations across processes (any fixed number will do). */
const MIGRATION_LOCK = 0x5b6_e4a7;
/**
 * The advisory lock that serializes the `addExports` calls that name an id with a webhook twin (an
 * import, or an export `import_…`): twins have different ids, so the primary key does not stop two
 * processes from inserting both at once.
 */
const TWIN_LOCK = 0x5b6_e4a8;
const DEFAULT_POOL_SIZE = 4;
/** How many times `addExports` settles a call afresh after another process raced it. */
const ADD_ATTEMPTS = 5;
const CONNECT_TIMEOUT_MS = 10_000;
const INT8_OID = 20;

export interface PostgresStoreOptions {
  /** `postgres://user:password@host:port/database?...`, as `pg` reads it. */
  url: string;
  log?: Logger;
  /** Connections in the pool; 4 unless given. */
  poolSize?: number;
  /**
   * `application_name` of the pool's sessions (`pg_stat_activity`), at most 63 bytes; default
   * `sbg-export-watcher`. The daemon adds its host and pid, so an operator can tell replicas apart.
   */
  applicationName?: string;
}

/**
 * Connects, checks the database and brings its schema up to date. Rejects with a one-line
 * `StoreError` naming the database (without the password) when it cannot be used.
 */
export async function openPostgresStore(options: PostgresStoreOptions): Promise<PostgresStore> {
  const { url, log } = options;
  const target = describeTarget(url);
  const pool = new pg.Pool({
    connectionString: url,
    max: options.poolSize ?? DEFAULT_POOL_SIZE,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    // TCP keepalives: a server that vanished without closing is noticed rather than waited on.
    keepAlive: true,
    application_name: options.applicationName ?? 'sbg-export-watcher',
    types: { getTypeParser: typeParser },
  });
  // A connection that breaks while idle (a server restart) is reported here; unhandled, it would
  // end the process. The pool replaces it on the next query.
  pool.on('error', (error) => {
    log?.warn(
      { database: target.shown, err: target.scrub(oneLine(error)) },
      'a PostgreSQL connection failed',
    );
  });
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (error) {
    await pool.end().catch(() => undefined);
    throw new StoreError(
      `PostgreSQL database ${target.shown}: cannot connect (${target.scrub(describeError(error))})`,
    );
  }
  let found: number;
  // Checked out, the client has no pool listener: a broken connection fails the migration's
  // queries, and must not be an unhandled 'error' event.
  const ignore = () => undefined;
  client.on('error', ignore);
  try {
    found = await migrate(client, target.shown);
    client.off('error', ignore);
    client.release();
  } catch (error) {
    client.off('error', ignore);
    client.release(true);
    await pool.end().catch(() => undefined);
    if (error instanceof StoreError) throw new StoreError(target.scrub(error.message));
    throw new StoreError(
      `PostgreSQL database ${target.shown}: cannot use it (${target.scrub(describeError(error))})`,
    );
  }
  log?.info({ database: target.shown, schema: SCHEMA_VERSION, migrated_from: found }, 'store opened');
  return new PostgresStore(pool, target.scrub);
}

/**
 * Applies the migrations the database lacks, in one transaction with their rows in
 * `schema_migrations`, under an advisory lock. Returns the version found.
 */
async function migrate(client: pg.PoolClient, shown: string): Promise<number> {
  const encoding = await client.query<{ server_encoding: string }>('SHOW server_encoding');
  if (encoding.rows[0]?.server_encoding !== 'UTF8') {
    throw new StoreError(
      `PostgreSQL database ${shown} is encoded in ${encoding.rows[0]?.server_encoding}, not UTF8; ` +
        'it was left untouched: create the database with ENCODING UTF8',
    );
  }
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await refuseForeignMigrations(client, shown);
    await client.query(`
      CREATE TABLE IF NOT EXISTS schema_migrations (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`);
    const { rows } = await client.query<{ version: number }>(
      'SELECT coalesce(max(version), 0)::integer AS version FROM schema_migrations',
    );
    const found = rows[0]?.version ?? 0;
    if (found > SCHEMA_VERSION) {
      throw new StoreError(
        `PostgreSQL database ${shown} was written by a newer version of sbg-export-watcher (schema ` +
          `${found}, this version knows up to ${SCHEMA_VERSION}); it was left untouched: run that newer version`,
      );
    }
    for (const [i, sql] of MIGRATIONS.entries()) {
      if (i < found) continue;
      await client.query(sql);
      await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [i + 1]);
    }
    await client.query('COMMIT');
    return found;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}

/**
 * `schema_migrations` is a common name (golang-migrate, Rails, Flyway-like tools keep one): a table
 * of that name that is not ours (other columns or types) means a database shared with another
 * tool, whose versions would be read as ours. Refused with a clear message, untouched.
 */
async function refuseForeignMigrations(client: pg.PoolClient, shown: string): Promise<void> {
  const { rows } = await client.query<{ column_name: string; data_type: string }>(
    `SELECT column_name, data_type FROM information_schema.columns
      WHERE table_name = 'schema_migrations' AND table_schema = current_schema()
      ORDER BY column_name`,
  );
  if (rows.length === 0) return;
  const found = rows.map((r) => `${r.column_name} ${r.data_type}`).join(', ');
  if (found === 'applied_at timestamp with time zone, version integer') return;
  throw new StoreError(
    `PostgreSQL database ${shown} has a schema_migrations table that is not sbg-export-watcher's ` +
      `(${found}): another tool uses this database or schema; it was left untouched: give the ` +
      'watcher a database of its own, or a schema of its own (?options=-c%20search_path%3Dwatcher)',
  );
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
  history: Array<{ state: ExportState; at: number }>;
  platform: string | null;
  error: string | null;
}

interface EventRow {
  id: string;
  type: EventType;
  export_id: string;
  body: string;
  created_at: number;
}

const EXPORT_COLUMNS =
  'id, kind, state, previous_state, metadata, first_seen_at, state_changed_at, misses, last_miss, history, ' +
  'platform, error';
const EVENT_COLUMNS = 'id, type, export_id, body, created_at';
const DELIVERY_COLUMNS =
  'event_id, endpoint_key, endpoint_label, status, attempts, next_attempt_at, series_started_at, ' +
  'last_status, last_error, finished_at, leased';

/** Runs a statement: the pool, or one connection inside a transaction. */
type Queryable = pg.Pool | pg.PoolClient;

export class PostgresStore implements Store {
  #pool: pg.Pool | undefined;
  readonly #scrub: (text: string) => string;
  readonly #names = new Map<string, string>();
  /** The calls in progress, which `close` lets finish. */
  readonly #inFlight = new Set<Promise<unknown>>();

  constructor(pool: pg.Pool, scrub: (text: string) => string = (text) => text) {
    this.#pool = pool;
    this.#scrub = scrub;
  }

  /**
   * Batched, with the answers of one insert at a time: the ids already stored are read once, each
   * request is then settled in order (accepted, already watched, or, when any id is stored as the
   * other kind, refused whole with its conflicts), and one statement inserts every id accepted, in
   * id order (two processes adding the same ids cannot deadlock). When another process inserts
   * one of them in between, the transaction is rolled back and the call settled afresh.
   */
  async addExports(requests: readonly AddRequest[], now: number): Promise<AddResult[]> {
    return this.#use(async (db) => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await this.#transaction(db, (client) => this.#settleAdds(client, requests, now));
        } catch (error) {
          if (!(error instanceof AddRace) || attempt === ADD_ATTEMPTS) throw error;
        }
      }
    });
  }

  async #settleAdds(
    client: pg.PoolClient,
    requests: readonly AddRequest[],
    now: number,
  ): Promise<AddResult[]> {
    // The ids asked, and those of their webhook twins (`webhookTwin`), which refuse them too.
    const unique = [
      ...new Set(
        requests.flatMap(({ ids, kind }) =>
          ids.flatMap((id) => {
            const twin = webhookTwin(id, kind);
            return twin ? [id, twin.id] : [id];
          }),
        ),
      ),
    ];
    if (requests.some(({ ids, kind }) => ids.some((id) => webhookTwin(id, kind) !== undefined))) {
      await this.#query(client, 'SELECT pg_advisory_xact_lock($1)', [TWIN_LOCK]);
    }
    const stored = new Map<string, JobKind>();
    if (unique.length > 0) {
      const { rows } = await this.#query<{ id: string; kind: JobKind }>(
        client,
        'SELECT id, kind FROM exports WHERE id = ANY($1::text[])',
        [unique],
      );
      for (const row of rows) stored.set(row.id, row.kind);
    }
    const inserts: Array<{ id: string; request: number }> = [];
    const results = requests.map(({ ids, kind = 'export' }, request): AddResult => {
      const accepted: string[] = [];
      const alreadyWatched: string[] = [];
      const conflicts: string[] = [];
      for (const id of new Set(ids)) {
        const twin = webhookTwin(id, kind);
        const found = stored.get(id);
        if (twin && stored.get(twin.id) === twin.kind) conflicts.push(id);
        else if (found === undefined) accepted.push(id);
        else (found === kind ? alreadyWatched : conflicts).push(id);
      }
      if (conflicts.length > 0) return { accepted: [], alreadyWatched: [], conflicts };
      for (const id of accepted) {
        stored.set(id, kind);
        inserts.push({ id, request });
      }
      return { accepted, alreadyWatched };
    });
    if (inserts.length > 0) {
      inserts.sort((x, y) => compareText(x.id, y.id));
      const inserted = await this.#query(
        client,
        `INSERT INTO exports (id, kind, state, metadata, first_seen_at, state_changed_at, misses, history)
          SELECT u.id, ($3::text[])[u.request + 1], 'UNKNOWN', ($4::text[])[u.request + 1], $5, $5, 0, $6::jsonb
          FROM unnest($1::text[], $2::integer[]) WITH ORDINALITY AS u(id, request, n)
          ORDER BY u.n
          ON CONFLICT (id) DO NOTHING`,
        [
          inserts.map((i) => i.id),
          inserts.map((i) => i.request),
          requests.map((r) => r.kind ?? 'export'),
          requests.map((r) => toJson(r.metadata)),
          now,
          JSON.stringify([{ state: 'UNKNOWN', at: now }]),
        ],
      );
      if (inserted.rowCount !== inserts.length) throw new AddRace();
    }
    return results;
  }

  /**
   * Also deletes the export's events that are left with no delivery at all: nothing could replay
   * them, and they would otherwise wait for retention with nothing to show.
   */
  async removeExport(
    id: string,
    kind: JobKind = 'export',
  ): Promise<{ removed: boolean; cancelledDeliveries: number }> {
    return this.#use(async (db) => {
      return this.#transaction(db, async (client) => {
        const removed = await this.#query(client, 'DELETE FROM exports WHERE id = $1 AND kind = $2', [
          id,
          kind,
        ]);
        if (removed.rowCount === 0) return { removed: false, cancelledDeliveries: 0 };
        // Its own kind's events only: a removed job of the other kind that had this id keeps its
        // events, and the deliveries owed for them (a redelivery, say).
        const ownEvents = `export_id = $1 AND starts_with(type, $2::text || '.')`;
        // Its events first (in id order), then their deliveries: a redelivery locks an event, then
        // its deliveries, and would otherwise deadlock with this when the event goes too.
        await this.#query(client, `SELECT id FROM events WHERE ${ownEvents} ORDER BY id FOR UPDATE`, [
          id,
          kind,
        ]);
        // Their deliveries in key order too, before the delete takes them in whatever order its plan
        // reads: a batch of outcomes locks deliveries (and no event) in key order.
        await this.#query(
          client,
          `SELECT 1 FROM deliveries WHERE event_id IN (SELECT id FROM events WHERE ${ownEvents})
            ORDER BY event_id, endpoint_key FOR UPDATE`,
          [id, kind],
        );
        const cancelled = await this.#query(
          client,
          `DELETE FROM deliveries
            WHERE status = 'pending' AND event_id IN (SELECT id FROM events WHERE ${ownEvents})`,
          [id, kind],
        );
        await this.#query(
          client,
          `DELETE FROM events
            WHERE ${ownEvents} AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = events.id)`,
          [id, kind],
        );
        return { removed: true, cancelledDeliveries: cancelled.rowCount ?? 0 };
      });
    });
  }

  async getExport(id: string, kind: JobKind = 'export'): Promise<StoredExport | undefined> {
    return this.#use(async (db) => {
      const { rows } = await this.#query<ExportRow>(
        db,
        `SELECT ${EXPORT_COLUMNS} FROM exports WHERE id = $1 AND kind = $2`,
        [id, kind],
      );
      return rows[0] && toStoredExport(rows[0]);
    });
  }

  async pageExports(query: ExportPageQuery): Promise<{ items: StoredExport[]; more: boolean }> {
    return this.#use(async (db) => {
      const values: unknown[] = [];
      const where = [`kind = $${values.push(query.kind ?? 'export')}`];
      if (query.state !== undefined) where.push(`state = $${values.push(query.state)}`);
      if (query.after !== undefined) where.push(`id > $${values.push(query.after)}`);
      const limit = `$${values.push(query.limit + 1)}`;
      const { rows } = await this.#query<ExportRow>(
        db,
        `SELECT ${EXPORT_COLUMNS} FROM exports ${whereClause(where)} ORDER BY id LIMIT ${limit}`,
        values,
      );
      return page(rows, query.limit, toStoredExport);
    });
  }

  /**
   * Counted in the database at each reading, unlike the SQLite store's running counts: replicas
   * share this database and each writes it (a leader's commits, any replica's control API), so a
   * count kept in one process's memory would miss the others' writes. The process awaits the
   * count without blocking its event loop.
   */
  async countExports(kind: JobKind = 'export'): Promise<Record<ExportState, number>> {
    return this.#use(async (db) => {
      const { rows } = await this.#query<{ state: ExportState; n: number }>(
        db,
        'SELECT state, count(*) AS n FROM exports WHERE kind = $1 GROUP BY state',
        [kind],
      );
      const counts = Object.fromEntries(EXPORT_STATES.map((s) => [s, 0])) as Record<ExportState, number>;
      for (const { state, n } of rows) counts[state] = n;
      return counts;
    });
  }

  async loadActive(): Promise<ActiveExport[]> {
    return this.#loadJobs(`state IN ${ACTIVE_SQL}`);
  }

  async loadUnknown(): Promise<ActiveExport[]> {
    return this.#loadJobs(`state = 'UNKNOWN'`);
  }

  /** Jobs of both kinds whose state meets `stateCondition` (both kinds named: the index serves it). */
  #loadJobs(stateCondition: string): Promise<ActiveExport[]> {
    return this.#use(async (db) => {
      const { rows } = await this.#query<ActiveRow>(
        db,
        `SELECT id, kind, state, misses FROM exports WHERE kind IN ${KINDS_SQL} AND ${stateCondition}`,
      );
      return rows.map(toActiveExport);
    });
  }

  /**
   * In one transaction, whatever the number of changes: the exports are read (and locked, in id
   * order) once; `build` is asked, in order, about each change of state of an export that exists;
   * then one statement updates the exports, one inserts the events and one their deliveries.
   *
   * An id that appears more than once ends as if its changes had been written one after the other,
   * as SQLite writes them: its last state change sets the state, each adds to the history, the
   * last change sets the misses, and the last platform object given is kept.
   */
  async commitChanges(
    changes: readonly ExportChange[],
    build: EventBuilder,
    endpoints: readonly EndpointRef[],
    now: number,
  ): Promise<NewEvent[]> {
    return this.#use(async (db) => {
      if (changes.length === 0) return [];
      return this.#transaction(db, async (client) => {
        const ids = [...new Set(changes.map((c) => c.id))].sort(compareText);
        const { rows } = await this.#query<{
          id: string;
          metadata: string | null;
          kind: JobKind;
          state: ExportState;
        }>(
          client,
          'SELECT id, metadata, kind, state FROM exports WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE',
          [ids],
        );
        const storedOf = new Map(rows.map((row) => [row.id, row]));
        /** Each job's state as the changes so far leave it. */
        const stateOf = new Map(rows.map((row) => [row.id, row.state]));

        const folded = new Map<string, FoldedChange>();
        const events = new Map<string, NewEvent>();
        for (const change of changes) {
          const stored = storedOf.get(change.id);
          // Stored in another state than the change starts from: written by someone else since.
          if (!stored || stateOf.get(change.id) !== change.from) continue;
          stateOf.set(change.id, change.to);
          const fold = folded.get(change.id) ?? newFold(change.id);
          folded.set(change.id, fold);
          fold.misses = change.misses;
          fold.lastMiss = toJson(change.lastMiss);
          if (change.export !== null) fold.platform = toJson(change.export);
          if (change.from === change.to) continue;
          fold.move = { from: change.from, to: change.to, at: change.at, error: toJson(change.error) };
          fold.added.push({ state: change.to, at: change.at });
          const event = build(
            change,
            fromJson(stored.metadata),
            stored.kind,
            change.export === null ? null : fold.platform,
          );
          if (event && !events.has(event.id)) events.set(event.id, event);
        }

        const updates = [...folded.values()];
        if (updates.length > 0) {
          await this.#query(
            client,
            `UPDATE exports AS e SET
                previous_state = CASE WHEN u.moved THEN u.from_state ELSE e.previous_state END,
                state = CASE WHEN u.moved THEN u.to_state ELSE e.state END,
                state_changed_at = CASE WHEN u.moved THEN u.at ELSE e.state_changed_at END,
                history = e.history || u.added::jsonb,
                misses = u.misses, last_miss = u.last_miss, platform = coalesce(u.platform, e.platform),
                error = CASE WHEN u.moved THEN u.error ELSE e.error END
              FROM unnest($1::text[], $2::boolean[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                          $7::integer[], $8::text[], $9::text[], $10::text[])
                AS u(id, moved, from_state, to_state, at, added, misses, last_miss, platform, error)
              WHERE e.id = u.id`,
            [
              updates.map((f) => f.id),
              updates.map((f) => f.move !== null),
              updates.map((f) => f.move?.from ?? null),
              updates.map((f) => f.move?.to ?? null),
              updates.map((f) => f.move?.at ?? null),
              updates.map((f) => JSON.stringify(f.added)),
              updates.map((f) => f.misses),
              updates.map((f) => f.lastMiss),
              updates.map((f) => f.platform),
              updates.map((f) => f.move?.error ?? null),
            ],
          );
        }

        const candidates = [...events.values()];
        if (candidates.length === 0) return [];
        const lastCreated = new Map<string, number>();
        const createdAt = candidates.map((e) => {
          const at = eventCreatedAt(lastCreated, e.exportId, now);
          lastCreated.set(e.exportId, at);
          return at;
        });
        const inserted = await this.#query<{ id: string }>(
          client,
          // The events stored already (a job watched again) are locked first, by this statement
          // (no round trip of its own: this runs for every batch of changes): `ON CONFLICT DO
          // NOTHING` locks no row, and a prune could otherwise delete such an event (all its
          // deliveries final) before the deliveries below, which would then find no event, and the
          // job's outcome would be stored with no delivery. KEY SHARE, in id order, as a redelivery
          // locks events; the prune skips what is locked. The count, an InitPlan, reads (and so
          // locks) every one of them before the first row is inserted.
          `WITH stored AS MATERIALIZED (
              SELECT id FROM events WHERE id = ANY($1::text[]) ORDER BY id FOR KEY SHARE
            )
            INSERT INTO events (id, export_id, type, body, created_at)
            SELECT u.id, u.export_id, u.type, u.body, u.created_at
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
              AS u(id, export_id, type, body, created_at)
            WHERE (SELECT count(*) FROM stored) >= 0
            ON CONFLICT (id) DO NOTHING
            RETURNING id`,
          [
            candidates.map((e) => e.id),
            candidates.map((e) => e.exportId),
            candidates.map((e) => e.type),
            candidates.map((e) => e.body),
            createdAt,
          ],
        );
        const fresh = new Set(inserted.rows.map((row) => row.id));
        if (endpoints.length === 0) return candidates.filter((e) => fresh.has(e.id));
        // An event stored already: the job was removed (or pruned) and watched again, and a removal
        // cancels pending deliveries but keeps the event for replay. The endpoints left with no
        // delivery of it get one; those that hold one keep it (the same webhook-id). Not when the
        // stored event is another job's (an export `import_x` and an import `x` share webhook-ids).
        // In event id order, the order in which a redelivery locks events.
        const added = await this.#query<{ event_id: string }>(
          client,
          `INSERT INTO deliveries (event_id, endpoint_key, endpoint_label, status, attempts, next_attempt_at,
                                    series_started_at)
            SELECT e.id, p.key, p.label, 'pending', 0, $4, $4
            FROM unnest($1::text[], $5::text[], $6::text[]) AS e(id, export_id, type)
              CROSS JOIN unnest($2::text[], $3::text[]) AS p(key, label)
            WHERE EXISTS (SELECT 1 FROM events AS s WHERE s.id = e.id AND s.export_id = e.export_id AND s.type = e.type)
            ORDER BY e.id, p.key
            ON CONFLICT (event_id, endpoint_key) DO NOTHING
            RETURNING event_id`,
          [
            candidates.map((e) => e.id),
            endpoints.map((e) => e.key),
            endpoints.map((e) => e.label),
            now,
            candidates.map((e) => e.exportId),
            candidates.map((e) => e.type),
          ],
        );
        const delivered = new Set(added.rows.map((row) => row.event_id));
        return candidates.filter((e) => fresh.has(e.id) || delivered.has(e.id));
      });
    });
  }

  /**
   * One statement, committed without waiting for the disk (`RELAXED`): the due rows are locked with SKIP LOCKED, so that a
   * concurrent claim (here or in another process) passes over them rather than waiting, and a row
   * it has already leased no longer matches when it is re-read. The jobs come back in due order.
   */
  async claimDue(
    endpointKey: string,
    now: number,
    limit: number,
    leaseUntil: number,
  ): Promise<DeliveryJob[]> {
    return this.#use(async (db) => {
      const { rows } = await this.#query<DeliveryJob>(
        db,
        `WITH ${RELAXED}, due AS (
            SELECT event_id, endpoint_key, next_attempt_at FROM deliveries
            WHERE endpoint_key = $1 AND status = 'pending' AND next_attempt_at <= $2
            ORDER BY next_attempt_at, event_id
            LIMIT $3
            FOR UPDATE SKIP LOCKED
          ), claimed AS (
            UPDATE deliveries AS d SET next_attempt_at = $4, leased = true
            FROM due, relaxed
            WHERE d.event_id = due.event_id AND d.endpoint_key = due.endpoint_key
            RETURNING d.event_id, d.endpoint_key, d.attempts, d.series_started_at, due.next_attempt_at AS due_at
          )
          SELECT c.event_id AS "eventId", e.export_id AS "exportId", c.endpoint_key AS "endpointKey", e.body,
                 c.attempts, c.series_started_at AS "seriesStartedAt"
          FROM claimed AS c JOIN events AS e ON e.id = c.event_id
          ORDER BY c.due_at, c.event_id`,
        [endpointKey, now, limit, leaseUntil],
      );
      return rows;
    });
  }

  /** Only rows marked leased: a retry that an attempt scheduled for later keeps its time. */
  async releaseLeases(now: number): Promise<void> {
    return this.#use(async (db) => {
      await this.#query(
        db,
        // In key order, as every writer of several deliveries locks them: a former leader's outcomes
        // (or a redelivery, a removal) under way at once cannot deadlock with this.
        `WITH target AS MATERIALIZED (
            SELECT event_id, endpoint_key FROM deliveries WHERE status = 'pending' AND leased
            ORDER BY event_id, endpoint_key
            FOR NO KEY UPDATE
          )
          UPDATE deliveries AS d SET next_attempt_at = $1, leased = false
          FROM target AS t
          WHERE d.event_id = t.event_id AND d.endpoint_key = t.endpoint_key AND d.status = 'pending' AND d.leased`,
        [now],
      );
    });
  }

  async nextDueAt(endpointKey: string): Promise<number | null> {
    return this.#use(async (db) => {
      const { rows } = await this.#query<{ at: number | null }>(
        db,
        `SELECT min(next_attempt_at) AS at FROM deliveries WHERE endpoint_key = $1 AND status = 'pending'`,
        [endpointKey],
      );
      return rows[0]?.at ?? null;
    });
  }

  /**
   * One statement for the whole batch, committed without waiting for the disk (`RELAXED`). Writing an outcome ends the claim's
   * lease. A final row keeps no next attempt time, and a pending one no finish time, whatever the
   * record carries. When a batch holds several records of one delivery, the last is written, as if
   * one after the other.
   */
  async recordAttempts(records: readonly AttemptRecord[]): Promise<void> {
    return this.#use(async (db) => {
      if (records.length === 0) return;
      // Folded per delivery and series, as if written one after the other: only the series stored
      // applies (the others' records are skipped, wherever they are in the batch); the last record
      // sets the row; the status and error are the last record's that counted a new attempt over
      // the record before it (`decided`), else the stored ones unless the first counted one.
      const last = new Map<string, AttemptRecord & { decided: boolean }>();
      for (const r of records) {
        const key = `${r.eventId}\u0000${r.endpointKey}\u0000${r.seriesStartedAt}`;
        const before = last.get(key);
        last.set(
          key,
          before === undefined
            ? { ...r, decided: false }
            : before.attempts === r.attempts
              ? { ...r, lastStatus: before.lastStatus, lastError: before.lastError, decided: before.decided }
              : { ...r, decided: true },
        );
      }
      const rows = [...last.values()];
      const pending = (r: AttemptRecord) => r.status === 'pending';
      await this.#query(
        db,
        `WITH ${RELAXED},
          u AS MATERIALIZED (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::bigint[], $6::integer[],
                                 $7::text[], $8::bigint[], $9::bigint[], $10::boolean[])
              AS u(event_id, endpoint_key, status, attempts, next_attempt_at, last_status, last_error, finished_at,
                   series_started_at, decided)
          ),
          -- The rows are locked in key order, as every writer of several deliveries does, so that a
          -- redelivery (or another process's outcomes) under way at once cannot deadlock with this.
          locked AS MATERIALIZED (
            SELECT d.event_id, d.endpoint_key FROM deliveries AS d
              JOIN u ON d.event_id = u.event_id AND d.endpoint_key = u.endpoint_key
                AND d.series_started_at = u.series_started_at
            ORDER BY d.event_id, d.endpoint_key
            FOR NO KEY UPDATE OF d
          )
          UPDATE deliveries AS d SET
            status = u.status, attempts = u.attempts, next_attempt_at = u.next_attempt_at, leased = false,
            last_status = CASE WHEN d.attempts = u.attempts AND NOT u.decided THEN d.last_status ELSE u.last_status END,
            last_error = CASE WHEN d.attempts = u.attempts AND NOT u.decided THEN d.last_error ELSE u.last_error END,
            finished_at = u.finished_at
          FROM u, locked, relaxed
          WHERE d.event_id = u.event_id AND d.endpoint_key = u.endpoint_key
            AND locked.event_id = d.event_id AND locked.endpoint_key = d.endpoint_key
            AND d.series_started_at = u.series_started_at`,
        [
          rows.map((r) => r.eventId),
          rows.map((r) => r.endpointKey),
          rows.map((r) => r.status),
          rows.map((r) => r.attempts),
          rows.map((r) => (pending(r) ? r.nextAttemptAt : null)),
          rows.map((r) => r.lastStatus),
          rows.map((r) => (r.lastError === null ? null : storableText(r.lastError))),
          rows.map((r) => (pending(r) ? null : r.finishedAt)),
          rows.map((r) => r.seriesStartedAt),
          rows.map((r) => r.decided),
        ],
      );
    });
  }

  /** The rows are locked in key order, as every other writer of deliveries locks them. */
  async giveUpOrphaned(
    keys: readonly string[],
    startedBy: number,
    now: number,
  ): Promise<Array<{ endpointLabel: string; count: number }>> {
    return this.#use(async (db) => {
      const { rows } = await this.#query<{ endpoint_label: string; n: number }>(
        db,
        `WITH target AS MATERIALIZED (
            SELECT event_id, endpoint_key FROM deliveries
            WHERE status = 'pending' AND endpoint_key <> ALL($1::text[]) AND series_started_at <= $2
            ORDER BY event_id, endpoint_key
            FOR NO KEY UPDATE
          ), given AS (
            UPDATE deliveries AS d SET
              status = 'failed', next_attempt_at = NULL, leased = false, finished_at = $3, last_error = $4
            FROM target AS t
            WHERE d.event_id = t.event_id AND d.endpoint_key = t.endpoint_key AND d.status = 'pending'
            RETURNING d.endpoint_label
          )
          SELECT endpoint_label, count(*)::int AS n FROM given GROUP BY endpoint_label ORDER BY endpoint_label`,
        [keys, startedBy, now, ORPHANED_GIVE_UP_ERROR],
      );
      return rows.map((r) => ({ endpointLabel: r.endpoint_label, count: Number(r.n) }));
    });
  }

  async getEvent(id: string): Promise<StoredEvent | undefined> {
    return this.#use((pool) =>
      this.#snapshot(pool, async (db) => {
        const { rows } = await this.#query<EventRow>(
          db,
          `SELECT ${EVENT_COLUMNS} FROM events WHERE id = $1`,
          [id],
        );
        return (await this.#withDeliveries(db, rows))[0];
      }),
    );
  }

  async listEvents(query: EventQuery): Promise<{ items: StoredEvent[]; more: boolean }> {
    return this.#use((pool) =>
      this.#snapshot(pool, async (db) => {
        const values: unknown[] = [];
        const where: string[] = [];
        if (query.exportId !== undefined) where.push(`export_id = $${values.push(query.exportId)}`);
        if (query.kind !== undefined)
          where.push(`starts_with(type, $${values.push(query.kind)}::text || '.')`);
        if (query.since !== undefined) where.push(`created_at >= $${values.push(query.since)}`);
        if (query.after !== undefined) {
          const at = `$${values.push(query.after.createdAt)}::bigint`;
          where.push(`(created_at, id) < (${at}, $${values.push(query.after.id)}::text)`);
        }
        if (query.status !== undefined) {
          where.push(
            `EXISTS (SELECT 1 FROM deliveries WHERE event_id = events.id AND status = $${values.push(query.status)})`,
          );
        }
        const limit = `$${values.push(query.limit + 1)}`;
        const { rows } = await this.#query<EventRow>(
          db,
          `SELECT ${EVENT_COLUMNS} FROM events ${whereClause(where)}
          ORDER BY created_at DESC, id DESC LIMIT ${limit}`,
          values,
        );
        const { items, more } = page(rows, query.limit, (r) => r);
        return { items: await this.#withDeliveries(db, items), more };
      }),
    );
  }

  async getExportWithEvents(
    id: string,
    kind: JobKind = 'export',
  ): Promise<{ record: StoredExport; events: StoredEvent[] } | undefined> {
    // Three statements (the job, its events, their deliveries): on one snapshot.
    return this.#use((pool) =>
      this.#snapshot(pool, async (db) => {
        const job = await this.#query<ExportRow>(
          db,
          `SELECT ${EXPORT_COLUMNS} FROM exports WHERE id = $1 AND kind = $2`,
          [id, kind],
        );
        const row = job.rows[0];
        if (!row) return undefined;
        const { rows } = await this.#query<EventRow>(
          db,
          `SELECT ${EVENT_COLUMNS} FROM events
           WHERE export_id = $1 AND starts_with(type, $2::text || '.') ORDER BY created_at, id`,
          [id, kind],
        );
        return { record: toStoredExport(row), events: await this.#withDeliveries(db, rows) };
      }),
    );
  }

  /**
   * The last attempt's status and error are kept until the new series' first attempt replaces
   * them, so that a listing still shows why the previous series ended. The event is locked (KEY
   * SHARE) so that retention cannot delete it meanwhile.
   */
  async redeliver(
    eventId: string,
    endpoints: readonly EndpointRef[],
    now: number,
  ): Promise<number | undefined> {
    return this.#use(async (db) => {
      return this.#transaction(db, async (client) => {
        const exists = await this.#query(client, 'SELECT 1 FROM events WHERE id = $1 FOR KEY SHARE', [
          eventId,
        ]);
        if (exists.rowCount === 0) return undefined;
        // One row per endpoint key (the last label given): an upsert may touch a row only once.
        // In key order: rows are locked in the order they are written (see `recordAttempts`).
        const byKey = new Map(
          endpoints.map((e): [string, string] => [e.key, e.label]).sort(([x], [y]) => compareText(x, y)),
        );
        if (byKey.size > 0) {
          await this.#query(
            client,
            `INSERT INTO deliveries (event_id, endpoint_key, endpoint_label, status, attempts, next_attempt_at,
                                      series_started_at)
              SELECT $1, u.key, u.label, 'pending', 0, $4, $4 FROM unnest($2::text[], $3::text[]) AS u(key, label)
              ON CONFLICT (event_id, endpoint_key) DO UPDATE SET
                endpoint_label = excluded.endpoint_label, status = 'pending', attempts = 0,
                next_attempt_at = excluded.next_attempt_at, leased = false,
                series_started_at = GREATEST(excluded.series_started_at, deliveries.series_started_at + 1),
                finished_at = NULL`,
            [eventId, [...byKey.keys()], [...byKey.values()], now],
          );
        }
        return endpoints.length;
      });
    });
  }

  async redeliverSince(
    since: number,
    status: DeliveryStatus,
    now: number,
    endpointKeys: readonly string[],
  ): Promise<number> {
    return this.#use(async (db) => {
      // The events are locked (FOR KEY SHARE, as `redeliver` does): a prune running meanwhile
      // skips them, instead of deleting the deliveries this has just made pending again. Events
      // and then deliveries are locked in key order, as `removeExport`, `recordAttempts` and
      // `redeliver` lock theirs, so that none of them under way at once can deadlock with this.
      const result = await this.#query(
        db,
        `WITH target AS MATERIALIZED (
            SELECT d.event_id, d.endpoint_key FROM deliveries AS d
            WHERE d.status = $2 AND d.endpoint_key = ANY($4::text[])
              AND d.event_id IN (SELECT id FROM events WHERE created_at >= $1 ORDER BY id FOR KEY SHARE)
            ORDER BY d.event_id, d.endpoint_key
            FOR NO KEY UPDATE OF d
          )
          UPDATE deliveries AS d SET
            status = 'pending', attempts = 0, next_attempt_at = $3, leased = false,
            series_started_at = GREATEST($3, d.series_started_at + 1), finished_at = NULL
          FROM target AS t
          WHERE d.event_id = t.event_id AND d.endpoint_key = t.endpoint_key AND d.status = $2`,
        [since, status, now, endpointKeys],
      );
      return result.rowCount ?? 0;
    });
  }

  async deliveryCounts(endpointKeys?: readonly string[]): Promise<DeliveryCounts> {
    return this.#use(async (db) => {
      // One statement, so one snapshot: the oldest pending time and the orphaned count go with the
      // counts (two would answer a pending count with no oldest time, or an oldest time with none
      // pending, when a write commits between them). One row per status, each with the oldest time
      // and the orphaned count; one row with no status when there is no delivery at all. Without
      // keys ($1 null), every endpoint counts as configured: none orphaned.
      const { rows } = await this.#query<{
        status: DeliveryStatus | null;
        n: number | null;
        at: number | null;
        orphaned: number | null;
      }>(
        db,
        `WITH counts AS (SELECT status, count(*) AS n FROM deliveries GROUP BY status)
          SELECT c.status, c.n, o.at, o.orphaned
          FROM (SELECT min(e.created_at) FILTER (WHERE $1::text[] IS NULL OR d.endpoint_key = ANY($1::text[])) AS at,
                       count(*) FILTER (WHERE d.endpoint_key <> ALL($1::text[])) AS orphaned
                  FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
                  WHERE d.status = 'pending') AS o
            LEFT JOIN counts AS c ON true`,
        [endpointKeys === undefined ? null : [...endpointKeys]],
      );
      const counts = rows.flatMap(({ status, n }) => (status === null ? [] : [{ status, n: n ?? 0 }]));
      return {
        ...byStatus(counts),
        orphaned: rows[0]?.orphaned ?? 0,
        oldestPendingAt: rows[0]?.at ?? null,
      };
    });
  }

  /**
   * Each batch is its own statement (and transaction), so that a large backlog never holds locks
   * for long. Rows another process holds are skipped (SKIP LOCKED): they are taken at a later
   * run. Deleting an event deletes its deliveries (a foreign key cascade).
   */
  async prune(now: number, policy: RetentionPolicy): Promise<{ exports: number; events: number }> {
    return this.#use(async (db) => {
      const exports = await this.#deleteInBatches(
        db,
        `DELETE FROM exports WHERE id IN (
          SELECT id FROM exports
          WHERE state IN ${FINISHED_SQL} AND state_changed_at <= $1
          LIMIT $2 FOR UPDATE SKIP LOCKED)`,
        now - policy.retainMs,
        policy.batch,
      );
      const events = await this.#pruneEvents(db, now - policy.eventRetainMs, policy.batch);
      return { exports, events };
    });
  }

  /**
   * Events in time order, a window of `batch` at a time, each starting after the last, up to the
   * cutoff: an event kept (a delivery still pending, or locked by a redelivery under way) is read
   * once per run, not once per batch. Both statements are shaped so that no plan reads more than
   * its window, statistics or not: the window has no upper bound for the planner to count rows
   * under (the cutoff is applied here), so it walks the time index and stops; the pending check
   * reads the event's own deliveries (by their primary key), not every pending one.
   */
  async #pruneEvents(db: pg.Pool, cutoff: number, batch: number): Promise<number> {
    let after: { at: number; id: string } = { at: Number.MIN_SAFE_INTEGER, id: '' };
    let total = 0;
    for (;;) {
      const { rows } = await this.#query<{ id: string; at: number }>(
        db,
        'SELECT id, created_at AS at FROM events WHERE (created_at, id) > ($1, $2) ORDER BY created_at, id LIMIT $3',
        [after.at, after.id, batch],
      );
      const old = rows.filter((e) => e.at <= cutoff);
      if (old.length > 0)
        total += await this.#deleteSettledEvents(
          db,
          old.map((e) => e.id),
        );
      const last = old.at(-1);
      if (old.length < batch || last === undefined) return total;
      after = last;
    }
  }

  /**
   * Deletes those of `ids` with no pending delivery, skipping any another transaction holds (a
   * redelivery under way). Locked first, then checked in a statement of its own: checked in the
   * statement that locks them, the check would read a snapshot taken before a redelivery that
   * committed a moment later (its lock already gone, the event row itself unchanged), and the
   * delete would cascade to the delivery it had just made pending. A redelivery that comes after
   * the lock waits for this commit, then finds no event.
   */
  async #deleteSettledEvents(db: pg.Pool, ids: readonly string[]): Promise<number> {
    return this.#transaction(db, async (client) => {
      const locked = await this.#query<{ id: string }>(
        client,
        'SELECT id FROM events WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE SKIP LOCKED',
        [ids],
      );
      if (locked.rows.length === 0) return 0;
      const deleted = await this.#query(
        client,
        `DELETE FROM events WHERE id = ANY($1::text[])
           AND 'pending' <> ALL (SELECT status FROM deliveries WHERE event_id = events.id)`,
        [locked.rows.map((row) => row.id)],
      );
      return deleted.rowCount ?? 0;
    });
  }

  /**
   * Lets the calls in progress finish, then closes every connection; calls made from now on
   * reject. Closing again does nothing.
   */
  async close(): Promise<void> {
    const pool = this.#pool;
    if (!pool) return;
    this.#pool = undefined;
    await Promise.allSettled(this.#inFlight);
    await pool.end();
  }

  async #deleteInBatches(db: pg.Pool, sql: string, cutoff: number, batch: number): Promise<number> {
    let total = 0;
    for (;;) {
      const deleted = (await this.#query(db, sql, [cutoff, batch])).rowCount ?? 0;
      total += deleted;
      if (deleted < batch) return total;
    }
  }

  /** Events with their deliveries, in the order given; deliveries by endpoint key. */
  async #withDeliveries(db: Queryable, events: readonly EventRow[]): Promise<StoredEvent[]> {
    if (events.length === 0) return [];
    const { rows } = await this.#query<DeliveryRow>(
      db,
      `SELECT ${DELIVERY_COLUMNS} FROM deliveries WHERE event_id = ANY($1::text[])
        ORDER BY event_id, endpoint_key`,
      [events.map((e) => e.id)],
    );
    const byEvent = new Map<string, StoredDelivery[]>();
    for (const row of rows) {
      const list = byEvent.get(row.event_id) ?? [];
      list.push(toStoredDelivery(row));
      byEvent.set(row.event_id, list);
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

  /**
   * Runs one statement, prepared once per connection under a name made from its text. An error
   * has the password cut out of its message.
   */
  async #query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    db: Queryable,
    text: string,
    values: readonly unknown[] = [],
  ): Promise<pg.QueryResult<R>> {
    let name = this.#names.get(text);
    if (name === undefined) {
      name = `w_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`;
      this.#names.set(text, name);
    }
    try {
      return await db.query<R>({ name, text, values: values as unknown[] });
    } catch (error) {
      throw this.#failure(error);
    }
  }

  /** `work` inside BEGIN ... COMMIT on one connection; a connection that fails to roll back is dropped. */
  async #transaction<T>(
    db: pg.Pool,
    work: (client: pg.PoolClient) => Promise<T>,
    begin = 'BEGIN',
  ): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await db.connect();
    } catch (error) {
      throw this.#failure(error);
    }
    let broken: Error | undefined;
    // A checked-out client has no pool listener: a connection that breaks now (the server ends
    // the session, the network drops) would be an unhandled 'error' event, which ends the
    // process. Its queries fail on their own; the client is dropped at release.
    const onError = (error: Error) => {
      broken = error;
    };
    client.on('error', onError);
    try {
      await client.query(begin);
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      if (broken === undefined) {
        await client.query('ROLLBACK').catch((rollback: unknown) => {
          broken = rollback instanceof Error ? rollback : new Error(String(rollback));
        });
      }
      throw this.#failure(error);
    } finally {
      client.off('error', onError);
      client.release(broken);
    }
  }

  /**
   * `work` reading one snapshot: events and their deliveries are two statements, and a write
   * committed between them (an outcome, retention) would otherwise show an event listed for a
   * delivery status with another one, or with no delivery at all, as SQLite never does.
   */
  #snapshot<T>(db: pg.Pool, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return this.#transaction(db, work, 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  }

  /** An error with the password cut out of its message. */
  #failure(error: unknown): unknown {
    if (error instanceof Error && !(error instanceof StoreError)) {
      const scrubbed = this.#scrub(error.message);
      if (scrubbed !== error.message) error.message = scrubbed;
    }
    return error;
  }

  /**
   * Runs one call of the port on the pool, counted in progress so that `close` waits for it; after
   * `close`, rejects with a `StoreError`.
   */
  async #use<T>(work: (db: pg.Pool) => Promise<T>): Promise<T> {
    const pool = this.#pool;
    if (!pool) throw new StoreError('the store is closed');
    const call = work(pool);
    this.#inFlight.add(call);
    try {
      return await call;
    } finally {
      this.#inFlight.delete(call);
    }
  }
}

/** Another process inserted an id that `addExports` had found missing: settle the call afresh. */
class AddRace extends Error {
  constructor() {
    super(`addExports: other writers inserted the same ids ${ADD_ATTEMPTS} times in a row; try again`);
  }
}

/** What the fold of one export's changes in a batch leaves to write. */
interface FoldedChange {
  id: string;
  /** The last change of state, if any. */
  move: { from: ExportState; to: ExportState; at: number; error: string | null } | null;
  /** History entries, one per change of state, in order. */
  added: Array<{ state: ExportState; at: number }>;
  misses: number;
  lastMiss: string | null;
  /** The last platform object given; null keeps the stored one. */
  platform: string | null;
}

function newFold(id: string): FoldedChange {
  return { id, move: null, added: [], misses: 0, lastMiss: null, platform: null };
}

/** int8 (counts, times) as numbers; every other type as `pg` parses it. */
const typeParser = ((oid: number, format?: 'text' | 'binary') =>
  oid === INT8_OID && format !== 'binary'
    ? (value: string) => Number(value)
    : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser;

/** The URL as shown, and the scrubber of its password; a URL that does not parse is refused. */
function describeTarget(url: string): { shown: string; scrub: (text: string) => string } {
  const target = describeDatabaseUrl(url);
  if (!target) {
    throw new StoreError(
      'PostgreSQL database URL: not a valid URL; write it as postgres://user:password@host:port/database',
    );
  }
  return target;
}

/** One line: the error's code (SQLSTATE or errno) and message; an AggregateError's parts joined. */
function describeError(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  let message = oneLine(error);
  if (error instanceof AggregateError && message === '') {
    message = error.errors.map((e: unknown) => oneLine(e)).join('; ');
  }
  if (message === '') message = 'no message';
  return typeof code === 'string' && !message.startsWith(code) ? `${code}: ${message}` : message;
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
    // jsonb orders keys its own way; give them in the order SQLite keeps.
    history: row.history.map(({ state, at }) => ({ state, at })),
    export: fromJson<PlatformExport>(row.platform),
    error: fromJson<PlatformErrorBody>(row.error),
    lastMiss: fromJson<PlatformErrorBody>(row.last_miss),
  };
}

/** Code-unit order: for the ids' ASCII alphabet, the "C" collation's byte order. */
function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function oneLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).replace(/\s+/g, ' ').trim();
}
