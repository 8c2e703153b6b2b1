/**
 * The PostgreSQL store: the contract (each test in a fresh schema), and what only a shared server
 * can go through (each test in a fresh database): two stores claiming or adding at once, migrations
 * racing or starting from schema 1, a wrong password, a newer schema, a call in progress at close,
 * batches as large as the daemon writes, and the same answers as SQLite where a batch repeats an
 * id or mixes kinds.
 *
 * Needs `WATCHER_TEST_DATABASE_URL` (see `test/helpers/postgres.ts`); skipped without it, failing
 * without a working server when `WATCHER_TEST_REQUIRE_POSTGRES=1`.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { EXPORT_STATES, isTerminal } from '../../src/polling/tracker.js';
import {
  ACTIVE_STATES,
  FINISHED_STATES,
  MIGRATIONS,
  openPostgresStore,
  type PostgresStore,
  SCHEMA_VERSION,
} from '../../src/store/postgres.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import {
  type AttemptRecord,
  type EndpointRef,
  type EventBuilder,
  type ExportChange,
  endpointKey,
  type Store,
  StoreError,
} from '../../src/store/store.js';
import { move } from '../helpers/changes.js';
import { describeWithPostgres } from '../helpers/postgres.js';
import { describeStoreContract, storeErrorOf } from './contract.js';

const T0 = 1_700_000_000_000;
const HOUR = 3_600_000;
const A: EndpointRef = { key: endpointKey('https://a.example/hooks'), label: 'https://a.example/hooks' };
const B: EndpointRef = { key: endpointKey('https://b.example/hooks'), label: 'https://b.example/hooks' };

const build: EventBuilder = (change, metadata, kind = 'export') =>
  change.from === change.to
    ? null
    : {
        id: `evt_${change.id}_${change.to.toLowerCase()}`,
        type: kind === 'import' ? 'import.completed' : 'export.completed',
        exportId: change.id,
        body: JSON.stringify({ export_id: change.id, state: change.to, at: change.at, metadata }),
      };

await describeWithPostgres('PostgreSQL store', (server) => {
  // Each contract test in a schema of its own; the tests below that need a database get one.
  let contractSchema: string | undefined;
  describeStoreContract(
    'PostgreSQL',
    async () => {
      contractSchema = await server.createSchema();
      return openPostgresStore({ url: contractSchema });
    },
    async () => {
      if (contractSchema !== undefined) await server.dropSchema(contractSchema);
      contractSchema = undefined;
    },
  );

  describe('PostgreSQL only', () => {
    let url: string;
    const stores: PostgresStore[] = [];
    const open = async (at = url) => {
      const store = await openPostgresStore({ url: at });
      stores.push(store);
      return store;
    };

    beforeEach(async () => {
      url = await server.createDatabase();
    });
    afterEach(async () => {
      for (const store of stores.splice(0)) await store.close();
      await server.dropDatabase(url);
    });

    it('survives its sessions being ended in the middle of a transaction: the call fails, the next works', async () => {
      const store = await openPostgresStore({ url, applicationName: 'watcher-test-cut-me' });
      stores.push(store);
      await store.addExports([{ ids: ['a'], metadata: null }], T0);
      // Another session holds the row: commitChanges waits inside its transaction.
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      try {
        await holder.query('BEGIN');
        await holder.query(`SELECT 1 FROM exports WHERE id = 'a' FOR UPDATE`);
        const waiting = store.commitChanges([move('a', 'UNKNOWN', 'RUNNING', T0 + 1)], build, [A], T0 + 1);
        // Handled from the start: it may reject while the backends are still being terminated.
        const failed = expect(waiting).rejects.toThrow();
        await vi.waitFor(async () => {
          const rows = await server.query<{ n: number }>(
            url,
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'watcher-test-cut-me' AND wait_event_type = 'Lock'`,
          );
          expect(rows[0]?.n).toBe(1);
        });
        await server.query(
          url,
          `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'watcher-test-cut-me'`,
        );
        await failed;
      } finally {
        await holder.query('ROLLBACK');
        await holder.end();
      }
      // No unhandled 'error' event ended this process; the pool opens a new session.
      await store.commitChanges([move('a', 'UNKNOWN', 'RUNNING', T0 + 2)], build, [A], T0 + 2);
      expect((await store.getExport('a'))?.state).toBe('RUNNING');
    });

    /** Watches `ids`, has each COMPLETED at T0, and its delivery to A given up (failed) then. */
    async function completedAndFailed(store: PostgresStore, ids: readonly string[]) {
      await store.addExports([{ ids, metadata: null }], T0);
      const events = await store.commitChanges(
        ids.map((id) => move(id, 'UNKNOWN', 'COMPLETED', T0)),
        build,
        [A],
        T0,
      );
      await store.recordAttempts(
        events.map((e) => ({
          eventId: e.id,
          endpointKey: A.key,
          seriesStartedAt: T0,
          status: 'failed' as const,
          attempts: 3,
          nextAttemptAt: null,
          lastStatus: 500,
          lastError: 'HTTP 500',
          finishedAt: T0,
        })),
      );
      return events;
    }

    it('never deletes a delivery a redelivery made pending while a prune ran (redeliveries all along it)', async () => {
      // A prune checked an event for pending deliveries in its statement's snapshot, then locked
      // it: a redelivery committed in between was not seen, and the delete cascaded to the
      // delivery it had just answered for. The window is the statement's length; here 5,000 old
      // events are pruned at once while the last 300 are redelivered over and over. Every
      // redelivery answered must still be there after the prune, or have been refused after it.
      const store = await openPostgresStore({ url, applicationName: 'watcher-test-prune-race' });
      stores.push(store);
      const ids = Array.from({ length: 5_000 }, (_, i) => `p${String(i).padStart(5, '0')}`);
      const events = await completedAndFailed(store, ids);
      const targets = events.slice(-300).map((e) => e.id);
      const answered = new Set<string>();
      let pruning = true;
      const pruned = store.prune(T0 + 100, { retainMs: HOUR, eventRetainMs: 5, batch: 5_000 }).finally(() => {
        pruning = false;
      });
      let at = T0 + 10;
      const redeliverAll = async (offset: number) => {
        let rounds = 0;
        // At least one pass, and on until the prune is over.
        while (pruning || rounds === 0) {
          for (let i = offset; i < targets.length; i += 4) {
            const id = targets[i] as string;
            at += 1;
            if ((await store.redeliver(id, [A], at)) !== undefined) answered.add(id);
          }
          rounds += 1;
        }
      };
      await Promise.all([0, 1, 2, 3].map(redeliverAll));
      expect((await pruned).events).toBeGreaterThan(4_000);
      const lost: string[] = [];
      for (const id of answered) {
        const event = await store.getEvent(id);
        if (event?.deliveries.some((d) => d.status === 'pending') !== true) lost.push(id);
      }
      expect(answered.size).toBeGreaterThan(0);
      expect(lost).toEqual([]);
    }, 60_000);

    it('keeps what redeliverSince makes pending from a prune that runs meanwhile', async () => {
      const store = await openPostgresStore({ url, applicationName: 'watcher-test-redeliver' });
      stores.push(store);
      const ids = ['x1', 'x2', 'x3'];
      const events = await completedAndFailed(store, ids);
      // Another session holds the last delivery: redeliverSince waits in the middle of its update,
      // the other rows already pending again, while a prune of every finished event runs.
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      try {
        await holder.query('BEGIN');
        await holder.query('SELECT 1 FROM deliveries WHERE event_id = $1 FOR UPDATE', [events[2]?.id]);
        const redelivering = store.redeliverSince(T0, 'failed', T0 + 10, [A.key]);
        await vi.waitFor(async () => {
          const rows = await server.query<{ n: number }>(
            url,
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'watcher-test-redeliver' AND wait_event_type = 'Lock'`,
          );
          expect(rows[0]?.n).toBe(1);
        });
        const pruned = await store.prune(T0 + 10, { retainMs: HOUR, eventRetainMs: 5, batch: 100 });
        await holder.query('ROLLBACK');
        expect(await redelivering).toBe(3);
        expect(pruned.events).toBe(0);
      } finally {
        await holder.end();
      }
      expect((await store.deliveryCounts()).pending).toBe(3);
      expect((await store.listEvents({ limit: 10 })).items).toHaveLength(3);
    });

    /** Two stores, as two replicas are, each with its own application name for pg_stat_activity. */
    async function replicas(...names: string[]): Promise<PostgresStore[]> {
      const opened = await Promise.all(names.map((n) => openPostgresStore({ url, applicationName: n })));
      stores.push(...opened);
      return opened;
    }

    /** Resolves once `n` sessions of these application names wait on a lock, or `done()` holds. */
    const lockWaiters = (names: readonly string[], n: number, done: () => boolean = () => false) =>
      vi.waitFor(async () => {
        const rows = await server.query<{ n: number }>(
          url,
          `SELECT count(*)::int AS n FROM pg_stat_activity
            WHERE application_name = ANY($1::text[]) AND wait_event_type = 'Lock'`,
          [names],
        );
        expect(done() || (rows[0]?.n ?? 0) >= n).toBe(true);
      });

    /**
     * A third session holding rows for a moment (the leader's claim, say): `start` starts the calls
     * and resolves once they wait on those rows, so that they are all under way at once when it
     * lets go; resolves with what its `finish` gives then.
     */
    async function whileHeld<T>(
      lock: string,
      params: unknown[],
      start: () => Promise<() => Promise<T>>,
    ): Promise<T> {
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      try {
        await holder.query('BEGIN');
        await holder.query(lock, params);
        const finish = await start();
        await holder.query('ROLLBACK');
        return await finish();
      } finally {
        await holder.end();
      }
    }

    /** A call's result, or its error's text: a deadlock (40P01) shows as "deadlock detected". */
    const settled = <T>(p: Promise<T>): Promise<T | string> => p.catch((error: unknown) => String(error));

    /**
     * Starts `first`, then, once it waits on the rows a third session holds (see `whileHeld`),
     * `second`, then lets go: both under way at once. Resolves with what each settled to.
     */
    const raceWhileHeld = <A, B>(
      lock: string,
      params: unknown[],
      names: readonly string[],
      first: () => Promise<A>,
      second: () => Promise<B>,
    ) =>
      whileHeld(lock, params, async () => {
        const a = settled(first());
        await lockWaiters(names, 1);
        const b = settled(second());
        await lockWaiters(names, 2);
        return () => Promise.all([a, b]);
      });

    /** Export `a` watched, then RUNNING (at T0 + 1), then COMPLETED (at T0 + 2): two events to A. */
    async function runningThenCompleted(store: PostgresStore): Promise<void> {
      await store.addExports([{ ids: ['a'], metadata: null }], T0);
      await store.commitChanges([move('a', 'UNKNOWN', 'RUNNING', T0 + 1)], build, [A], T0 + 1);
      await store.commitChanges([move('a', 'RUNNING', 'COMPLETED', T0 + 2)], build, [A], T0 + 2);
    }

    const outcome = (eventId: string, ref: EndpointRef, seriesStartedAt = T0): AttemptRecord => ({
      eventId,
      endpointKey: ref.key,
      seriesStartedAt,
      status: 'pending',
      attempts: 1,
      nextAttemptAt: T0 + 4000,
      lastStatus: 503,
      lastError: 'HTTP 503',
      finishedAt: null,
    });

    // Every writer of several deliveries locks them in key order, and events before deliveries:
    // the leader writing outcomes (in the order attempts ended) while another replica's API
    // redelivers or removes cannot deadlock (40P01, a 500 or a lost batch of outcomes).
    const [first, second] = [A, B].sort((x, y) => (x.key < y.key ? -1 : 1)) as [EndpointRef, EndpointRef];
    const APPS = ['watcher-test-outcomes', 'watcher-test-redeliver'];

    it('a batch of outcomes and a redelivery of the same event at once do not deadlock', async () => {
      const [leader, replica] = (await replicas(...APPS)) as [PostgresStore, PostgresStore];
      await leader.addExports([{ ids: ['a'], metadata: null }], T0);
      await leader.commitChanges([move('a', 'UNKNOWN', 'COMPLETED', T0)], build, [first, second], T0);
      const results = await raceWhileHeld(
        'SELECT 1 FROM deliveries WHERE event_id = $1 AND endpoint_key = $2 FOR UPDATE',
        ['evt_a_completed', second.key],
        APPS,
        () => leader.recordAttempts([outcome('evt_a_completed', second), outcome('evt_a_completed', first)]),
        () => replica.redeliver('evt_a_completed', [first, second], T0 + 10),
      );
      expect(results).toEqual([undefined, 2]);
      const again = { status: 'pending', attempts: 0, seriesStartedAt: T0 + 10, lastStatus: 503 };
      expect((await leader.getEvent('evt_a_completed'))?.deliveries).toEqual([
        expect.objectContaining(again),
        expect.objectContaining(again),
      ]);
    });

    it('a batch of outcomes and a redeliverSince of pending deliveries at once do not deadlock', async () => {
      const [leader, replica] = (await replicas(...APPS)) as [PostgresStore, PostgresStore];
      await leader.addExports([{ ids: ['a', 'b'], metadata: null }], T0);
      await leader.commitChanges(
        [move('a', 'UNKNOWN', 'COMPLETED', T0), move('b', 'UNKNOWN', 'COMPLETED', T0)],
        build,
        [first, second],
        T0,
      );
      const results = await raceWhileHeld(
        'SELECT 1 FROM deliveries WHERE event_id = $1 AND endpoint_key = $2 FOR UPDATE',
        ['evt_a_completed', second.key],
        APPS,
        () => leader.recordAttempts([outcome('evt_a_completed', second), outcome('evt_b_completed', first)]),
        // POST /v1/events/redeliver {"status": "pending"} on the other replica.
        () => replica.redeliverSince(T0, 'pending', T0 + 10, [first.key, second.key]),
      );
      expect(results).toEqual([undefined, 4]);
      const deliveries = (await leader.listEvents({ limit: 10 })).items.flatMap((e) => e.deliveries);
      expect(deliveries.map((d) => [d.status, d.attempts, d.seriesStartedAt])).toEqual(
        Array.from({ length: 4 }, () => ['pending', 0, T0 + 10]),
      );
    });

    it('removing an export while one of its events is redelivered does not deadlock', async () => {
      const names = ['watcher-test-remove', 'watcher-test-redeliver'];
      const [remover, replica] = (await replicas(...names)) as [PostgresStore, PostgresStore];
      await remover.addExports([{ ids: ['a'], metadata: null }], T0);
      await remover.commitChanges([move('a', 'UNKNOWN', 'COMPLETED', T0)], build, [A], T0);
      // DELETE /v1/exports/a on one replica, POST /v1/events/evt_a_completed/redeliver on another.
      const [removed, redelivered] = await raceWhileHeld(
        'SELECT 1 FROM deliveries WHERE event_id = $1 FOR UPDATE',
        ['evt_a_completed'],
        names,
        () => remover.removeExport('a'),
        () => replica.redeliver('evt_a_completed', [A], T0 + 10),
      );
      expect(removed).toEqual({ removed: true, cancelledDeliveries: 1 });
      // The event went with the export (it had no delivery left): nothing to redeliver (404).
      expect(redelivered).toBeUndefined();
      expect(await remover.getEvent('evt_a_completed')).toBeUndefined();
    });

    it('removing an export while its failed deliveries are redelivered (since) does not deadlock', async () => {
      const names = ['watcher-test-remove', 'watcher-test-redeliver'];
      const [remover, replica] = (await replicas(...names)) as [PostgresStore, PostgresStore];
      await runningThenCompleted(remover);
      const failed = (eventId: string, at: number): AttemptRecord => ({
        ...outcome(eventId, A, at),
        status: 'failed',
        attempts: 3,
        nextAttemptAt: null,
        finishedAt: T0 + 3,
      });
      await remover.recordAttempts([failed('evt_a_running', T0 + 1), failed('evt_a_completed', T0 + 2)]);
      const done = new Set<string>();
      const [removed, redelivered] = await whileHeld(
        'SELECT 1 FROM events WHERE id = $1 FOR UPDATE',
        ['evt_a_completed'],
        async () => {
          // Each call waits for the held event, or has finished without it.
          const removing = settled(remover.removeExport('a')).finally(() => done.add('remove'));
          await lockWaiters(names, 1, () => done.has('remove'));
          const redelivering = settled(replica.redeliverSince(T0, 'failed', T0 + 10, [A.key])).finally(() =>
            done.add('redeliver'),
          );
          await lockWaiters(names, done.has('remove') ? 1 : 2, () => done.has('redeliver'));
          return () => Promise.all([removing, redelivering]);
        },
      );
      expect(removed).toMatchObject({ removed: true });
      expect(typeof redelivered).toBe('number');
    });

    it('removing an export while a batch of outcomes of its events is written does not deadlock', async () => {
      const names = ['watcher-test-remove', 'watcher-test-outcomes'];
      const [remover, leader] = (await replicas(...names)) as [PostgresStore, PostgresStore];
      // evt_a_running is written first (earlier, and first on disk), but sorts after evt_a_completed.
      await runningThenCompleted(remover);
      const [recorded, removed] = await raceWhileHeld(
        'SELECT 1 FROM deliveries WHERE event_id = $1 FOR UPDATE',
        ['evt_a_completed'],
        names,
        // The leader writes the outcomes of both deliveries (they were claimed, pending, leased).
        () =>
          leader.recordAttempts([outcome('evt_a_running', A, T0 + 1), outcome('evt_a_completed', A, T0 + 2)]),
        // DELETE /v1/exports/a on another replica.
        () => remover.removeExport('a'),
      );
      expect(recorded).toBeUndefined();
      expect(removed).toMatchObject({ removed: true });
    });

    it('a former leader writing outcomes while the new leader releases leases does not deadlock', async () => {
      const names = ['watcher-test-outcomes', 'watcher-test-resume'];
      const [former, leader] = (await replicas(...names)) as [PostgresStore, PostgresStore];
      // evt_a_running is written (and claimed) first, but sorts after evt_a_completed.
      await runningThenCompleted(former);
      const claimed = await former.claimDue(A.key, T0 + 10, 10, T0 + 60_000);
      expect(claimed.map((j) => j.eventId)).toEqual(['evt_a_running', 'evt_a_completed']);
      const [recorded, released] = await raceWhileHeld(
        'SELECT 1 FROM deliveries WHERE event_id = $1 FOR UPDATE',
        ['evt_a_completed'],
        names,
        // The former leader's attempts end; the new leader resumes (deliveries.resume).
        () =>
          former.recordAttempts([outcome('evt_a_running', A, T0 + 1), outcome('evt_a_completed', A, T0 + 2)]),
        () => leader.releaseLeases(T0 + 20),
      );
      expect(recorded).toBeUndefined();
      expect(released).toBeUndefined();
    });

    it('spells out the active and finished states as the tracker defines them', () => {
      expect([...ACTIVE_STATES]).toEqual(EXPORT_STATES.filter((s) => !isTerminal(s)));
      expect([...FINISHED_STATES]).toEqual(EXPORT_STATES.filter((s) => isTerminal(s)));
    });

    it('never hands out one delivery twice to two stores claiming at once (SKIP LOCKED)', async () => {
      const first = await open();
      const second = await open();
      const ids = Array.from({ length: 300 }, (_, i) => `x${String(i).padStart(3, '0')}`);
      await first.addExports([{ ids, metadata: null }], T0);
      await first.commitChanges(
        ids.map((id) => move(id, 'UNKNOWN', 'COMPLETED', T0)),
        build,
        [A],
        T0,
      );
      const claimed: string[] = [];
      const claimer = async (store: Store): Promise<number> => {
        let claims = 0;
        for (;;) {
          const jobs = await store.claimDue(A.key, T0 + 1, 7, T0 + HOUR);
          if (jobs.length === 0) return claims;
          claims += 1;
          claimed.push(...jobs.map((j) => j.eventId));
        }
      };
      // Four claim loops per store: more than the pool's connections, all on the same due rows.
      const counts = await Promise.all(
        [first, second, first, second, first, second, first, second].map(claimer),
      );
      expect(claimed).toHaveLength(ids.length);
      expect(new Set(claimed).size).toBe(ids.length);
      // Both stores took part.
      expect(counts.filter((n) => n > 0).length).toBeGreaterThanOrEqual(2);
      expect(await second.claimDue(A.key, T0 + HOUR - 1, 100, T0 + 2 * HOUR)).toEqual([]);
      expect(await first.claimDue(A.key, T0 + HOUR, 1000, T0 + 2 * HOUR)).toHaveLength(ids.length);
    });

    it('accepts each id once when two stores add the same ids at the same time', async () => {
      const first = await open();
      const second = await open();
      for (let round = 0; round < 3; round++) {
        const ids = Array.from({ length: 2000 }, (_, i) => `r${round}_${i}`);
        const reversed = [...ids].reverse();
        const results = await Promise.all([
          first.addExports([{ ids: ids.slice(0, 1500), metadata: { by: 1 } }], T0),
          second.addExports([{ ids: reversed.slice(0, 1500), metadata: { by: 2 } }], T0),
          first.addExports([{ ids: ids.slice(500), metadata: { by: 1 } }], T0),
        ]);
        const accepted = results.flatMap(([r]) => r?.accepted ?? []);
        expect(accepted).toHaveLength(ids.length);
        expect(new Set(accepted).size).toBe(ids.length);
        for (const [r] of results) {
          expect((r?.accepted.length ?? 0) + (r?.alreadyWatched.length ?? 0)).toBe(1500);
        }
      }
      expect((await first.countExports()).UNKNOWN).toBe(6000);
    });

    it('accepts only one of an export import_X and an import X added at once: their webhook-ids are one', async () => {
      const first = await openPostgresStore({ url, applicationName: 'watcher-twin-race' });
      const second = await openPostgresStore({ url, applicationName: 'watcher-twin-race' });
      stores.push(first, second);
      // Another session lets both stores read (and find no twin) but holds both inserts.
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      let results: Awaited<ReturnType<PostgresStore['addExports']>>[];
      try {
        await holder.query('BEGIN');
        await holder.query('LOCK TABLE exports IN SHARE MODE');
        const adding = Promise.all([
          first.addExports([{ ids: ['import_t1'], metadata: null }], T0),
          second.addExports([{ ids: ['t1'], metadata: null, kind: 'import' }], T0),
        ]);
        await vi.waitFor(async () => {
          const rows = await server.query<{ n: number }>(
            url,
            `SELECT count(*)::int AS n FROM pg_stat_activity
              WHERE application_name = 'watcher-twin-race' AND wait_event_type = 'Lock'`,
          );
          expect(rows[0]?.n).toBe(2);
        });
        await holder.query('ROLLBACK');
        results = await adding;
      } finally {
        await holder.end();
      }
      const accepted = results.flatMap(([r]) => r?.accepted ?? []);
      const conflicts = results.flatMap(([r]) => r?.conflicts ?? []);
      expect({ accepted: accepted.length, conflicts: conflicts.length }).toEqual({
        accepted: 1,
        conflicts: 1,
      });
    });

    it('brings a database at schema 1 (before kinds) up to date: its rows read as exports', async () => {
      await server.query(
        url,
        `BEGIN;
         ${MIGRATIONS[0]};
         CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO schema_migrations (version) VALUES (1);
         INSERT INTO exports (id, state, metadata, first_seen_at, state_changed_at, misses, history)
           VALUES ('old', 'RUNNING', '{"v":1}', ${T0}, ${T0}, 0, '[{"state":"RUNNING","at":${T0}}]');
         COMMIT`,
      );
      const store = await open();
      expect(await store.getExport('old')).toMatchObject({ id: 'old', state: 'RUNNING', metadata: { v: 1 } });
      expect(await store.loadActive()).toEqual([{ id: 'old', state: 'RUNNING', misses: 0 }]);
      const versions = await server.query<{ version: number }>(
        url,
        'SELECT version FROM schema_migrations ORDER BY version',
      );
      expect(versions.map((v) => v.version)).toEqual(Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
    });

    it('migrates once when several stores open an empty database at the same time', async () => {
      const opened = await Promise.all(Array.from({ length: 4 }, () => open()));
      const versions = await server.query<{ version: number }>(
        url,
        'SELECT version FROM schema_migrations ORDER BY version',
      );
      expect(versions.map((v) => v.version)).toEqual(Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
      // Each can use the schema the other made.
      await opened[0]?.addExports([{ ids: ['a'], metadata: null }], T0);
      expect(await opened[3]?.getExport('a')).toMatchObject({ id: 'a', state: 'UNKNOWN' });
    });

    it('refuses a wrong password with a one-line StoreError that never shows a password', async () => {
      const wrong = server.url;
      wrong.pathname = new URL(url).pathname;
      const real = wrong.password;
      const secret = 'Wr0ng:p@ss/w%rd';
      wrong.password = encodeURIComponent(secret);
      const message = await storeErrorOf(() => open(wrong.href));
      expect(message).toContain('cannot connect');
      expect(message).toContain('28P01');
      expect(message).toContain(`${wrong.username}@${wrong.host}`);
      expect(message).not.toContain('\n');
      for (const hidden of [secret, encodeURIComponent(secret), wrong.password, real]) {
        expect(message).not.toContain(hidden);
      }
    });

    it('says where it cannot connect when nothing listens there, without the password', async () => {
      const nowhere = server.url;
      nowhere.host = '127.0.0.1:1';
      const message = await storeErrorOf(() => open(nowhere.href));
      expect(message).toMatch(
        /^PostgreSQL database postgres(ql)?:\/\/[^:@]+@127\.0\.0\.1:1\/.*cannot connect/,
      );
      expect(message).toContain('ECONNREFUSED');
      if (nowhere.password !== '') expect(message).not.toContain(nowhere.password);
    });

    it('names a database that does not exist', async () => {
      const missing = server.url;
      missing.pathname = '/watcher_test_no_such_database';
      const message = await storeErrorOf(() => open(missing.href));
      expect(message).toContain('3D000');
      expect(message).toContain('watcher_test_no_such_database');
    });

    it('refuses a database written by a newer version, and leaves it as it was', async () => {
      const store = await open();
      await store.addExports([{ ids: ['a'], metadata: null }], T0);
      await store.close();
      await server.query(url, 'INSERT INTO schema_migrations (version) VALUES ($1)', [SCHEMA_VERSION + 1]);
      const message = await storeErrorOf(() => open());
      expect(message).toContain(
        `written by a newer version of sbg-export-watcher (schema ${SCHEMA_VERSION + 1}`,
      );
      expect(message).toContain('left untouched');
      const rows = await server.query<{ n: string }>(url, 'SELECT count(*) AS n FROM exports');
      expect(rows[0]?.n).toBe('1');
    });

    it("refuses a database whose schema_migrations is another tool's, and leaves it as it was", async () => {
      // golang-migrate's table, in a database that tool already manages.
      await server.query(
        url,
        'CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL)',
      );
      await server.query(url, 'INSERT INTO schema_migrations VALUES (20240101000000, false)');
      const message = await storeErrorOf(() => open());
      expect(message).toContain("has a schema_migrations table that is not sbg-export-watcher's");
      expect(message).toContain('dirty boolean, version bigint');
      expect(message).toContain('left untouched');
      expect(message).not.toContain(new URL(url).password);
      const tables = await server.query<{ n: number }>(
        url,
        `SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = current_schema()`,
      );
      expect(tables[0]?.n).toBe(1);
    });

    it('survives the server ending its idle connections, and carries on with new ones', async () => {
      const warnings: unknown[] = [];
      const log = { warn: (o: unknown) => warnings.push(o), info: () => undefined } as unknown as Logger;
      const store = await openPostgresStore({ url, log });
      stores.push(store);
      await store.addExports([{ ids: ['a'], metadata: null }], T0);
      const ended = await server.query<{ ended: boolean }>(
        url,
        `SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity
         WHERE application_name = 'sbg-export-watcher' AND datname = current_database()`,
      );
      expect(ended.length).toBeGreaterThan(0);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(await store.getExport('a')).toMatchObject({ id: 'a' });
      expect(warnings.length).toBeGreaterThan(0);
      expect(JSON.stringify(warnings)).not.toContain(new URL(url).password);
    });

    it('finishes a call in progress when closed, then rejects every call with a StoreError', async () => {
      const store = await open();
      await store.addExports([{ ids: ['a', 'b'], metadata: null }], T0);
      const inFlight = store.loadActive();
      await store.close();
      expect(await inFlight).toHaveLength(2);
      await expect(store.close()).resolves.toBeUndefined();
      await expect(store.getExport('a')).rejects.toBeInstanceOf(StoreError);
      await expect(store.recordAttempts([])).rejects.toThrow('the store is closed');
      await expect(store.addExports([], T0)).rejects.toBeInstanceOf(StoreError);
    });

    it("keeps an event's body byte for byte, metadata's key order, and sorts ids byte-wise", async () => {
      const store = await open();
      const body = '{"z":1,  "a":"é😀\\u0000\\n",\t"n":1.50}';
      const metadata = { zeta: 1, alpha: { y: 2, b: [3, { d: 4, c: 5 }] } };
      const ids = ['b', 'B', '_x', '-x', '0', 'a_b', 'a-b', 'Z'];
      await store.addExports([{ ids, metadata }], T0);
      await store.commitChanges(
        [move('b', 'UNKNOWN', 'COMPLETED', T0 + 1)],
        () => ({ id: 'evt', type: 'export.completed', exportId: 'b', body }),
        [A],
        T0 + 1,
      );
      expect((await store.getEvent('evt'))?.body).toBe(body);
      expect((await store.claimDue(A.key, T0 + 1, 1, T0 + 2))[0]?.body).toBe(body);
      expect(JSON.stringify((await store.getExport('b'))?.metadata)).toBe(JSON.stringify(metadata));
      const paged = (await store.pageExports({ limit: 100 })).items.map((e) => e.id);
      expect(paged).toEqual([...ids].sort());
    });

    it('keeps the last outcome of a delivery when a redelivery starts a new series', async () => {
      const store = await open();
      await store.addExports([{ ids: ['a'], metadata: null }], T0);
      await store.commitChanges([move('a', 'UNKNOWN', 'FAILED', T0)], build, [A], T0);
      const eventId = 'evt_a_failed';
      await store.recordAttempts([
        {
          eventId,
          endpointKey: A.key,
          seriesStartedAt: T0,
          status: 'failed',
          attempts: 9,
          nextAttemptAt: null,
          lastStatus: 500,
          lastError: 'HTTP 500 \u0000 with a NUL',
          finishedAt: T0 + 1,
        },
      ]);
      expect(await store.redeliver(eventId, [A, A], T0 + 2)).toBe(2);
      expect((await store.getEvent(eventId))?.deliveries).toEqual([
        expect.objectContaining({
          status: 'pending',
          attempts: 0,
          nextAttemptAt: T0 + 2,
          lastStatus: 500,
          lastError: 'HTTP 500 \uFFFD with a NUL',
          finishedAt: null,
        }),
      ]);
    });

    it('ends as SQLite does with repeated ids in a batch, and with both kinds of job', async () => {
      const pgStore = await open();
      const sqlite = await openSqliteStore({ path: ':memory:' });
      const notFound = { status: 404, code: 9008, message: 'export job not found' };
      const boom = { status: 500, code: 5000, message: 'boom' };
      const changes: ExportChange[] = [
        move('a', 'UNKNOWN', 'UNKNOWN', T0 + 1, { misses: 1, lastMiss: notFound }),
        move('a', 'UNKNOWN', 'RUNNING', T0 + 2, { export: { id: 'a', state: 'RUNNING' } }),
        move('b', 'UNKNOWN', 'PENDING', T0 + 2, { export: { id: 'b', state: 'PENDING' } }),
        move('a', 'RUNNING', 'RUNNING', T0 + 3, { misses: 2, lastMiss: notFound }),
        move('a', 'RUNNING', 'FAILED', T0 + 4, { error: boom, misses: 2, lastMiss: notFound }),
        move('b', 'PENDING', 'PENDING', T0 + 5, { misses: 1, lastMiss: notFound }),
        move('ghost', 'UNKNOWN', 'FAILED', T0 + 5),
        move('a', 'RUNNING', 'FAILED', T0 + 6, { export: { id: 'a', state: 'FAILED' } }),
        move('i1', 'UNKNOWN', 'RUNNING', T0 + 6),
        move('i3', 'UNKNOWN', 'COMPLETED', T0 + 6),
      ];
      const results = [];
      for (const store of [sqlite, pgStore]) {
        const added = await store.addExports(
          [
            { ids: ['a', 'b', 'a'], metadata: { m: 1 } },
            { ids: ['i1', 'b', 'i2'], metadata: { m: 2 }, kind: 'import' },
            { ids: ['i2', 'i1', 'i3'], metadata: { m: 3 }, kind: 'import' },
            { ids: ['i3', 'x'], metadata: null },
            { ids: ['i3', 'i4'], metadata: null, kind: 'import' },
          ],
          T0,
        );
        const calls: unknown[] = [];
        const written = await store.commitChanges(
          changes,
          (change, metadata, kind) => {
            calls.push([change.id, change.to, metadata, kind]);
            return build(change, metadata, kind);
          },
          [A, B],
          T0 + 7,
        );
        const outcome = (status: AttemptRecord['status'], attempts: number): AttemptRecord => ({
          eventId: 'evt_a_failed',
          endpointKey: A.key,
          seriesStartedAt: T0 + 7,
          status,
          attempts,
          nextAttemptAt: status === 'pending' ? T0 + 100 : null,
          lastStatus: 503,
          lastError: `attempt ${attempts}`,
          finishedAt: status === 'pending' ? null : T0 + 100,
        });
        await store.recordAttempts([outcome('pending', 1), outcome('failed', 2), outcome('pending', 3)]);
        results.push({
          added,
          imports: await store.pageExports({ kind: 'import', limit: 10 }),
          exportCounts: await store.countExports(),
          importCounts: await store.countExports('import'),
          active: (await store.loadActive()).sort((x, y) => (x.id < y.id ? -1 : 1)),
          calls,
          written,
          a: await store.getExport('a'),
          b: await store.getExport('b'),
          events: (await store.listEvents({ exportId: 'a', limit: 1000 })).items,
          importEvents: await store.listEvents({ kind: 'import', limit: 10 }),
          exportEvents: await store.listEvents({ kind: 'export', limit: 10 }),
          i1AsExport: await store.getExport('i1'),
          i1: await store.getExport('i1', 'import'),
          removeWrongKind: await store.removeExport('i1'),
          removeImport: await store.removeExport('i3', 'import'),
          importsLeft: await store.countExports('import'),
          counts: await store.deliveryCounts(),
        });
      }
      await sqlite.close();
      expect(results[1]).toEqual(results[0]);
      // The second RUNNING -> FAILED starts from a state 'a' has left: it changes nothing.
      expect(results[1]?.a).toMatchObject({
        state: 'FAILED',
        previousState: 'RUNNING',
        misses: 2,
        error: boom,
      });
    });

    it('writes the batches the daemon writes in one go, quickly', async () => {
      const store = await open();
      const ids = Array.from({ length: 10_000 }, (_, i) => `export_${i}`);
      const timed = async <T>(work: () => Promise<T>): Promise<[T, number]> => {
        const started = performance.now();
        const result = await work();
        return [result, performance.now() - started];
      };
      const [[added], addMs] = await timed(() => store.addExports([{ ids, metadata: { batch: 1 } }], T0));
      expect(added?.accepted).toHaveLength(10_000);

      const hundred = ids.slice(0, 100);
      const [written, commitMs] = await timed(() =>
        store.commitChanges(
          hundred.map((id) => move(id, 'UNKNOWN', 'COMPLETED', T0 + 1)),
          build,
          [
            A,
            B,
            { key: 'c', label: 'https://c.example/' },
            { key: 'd', label: 'https://d.example/' },
            { key: 'e', label: 'https://e.example/' },
          ],
          T0 + 1,
        ),
      );
      expect(written).toHaveLength(100);

      const records: AttemptRecord[] = written.flatMap((e) =>
        ['c', 'd', 'e', A.key, B.key].map((key) => ({
          eventId: e.id,
          endpointKey: key,
          seriesStartedAt: T0 + 1,
          status: 'delivered' as const,
          attempts: 1,
          nextAttemptAt: null,
          lastStatus: 200,
          lastError: null,
          finishedAt: T0 + 2,
        })),
      );
      expect(records).toHaveLength(500);
      const [, recordMs] = await timed(() => store.recordAttempts(records));
      expect(await store.deliveryCounts()).toMatchObject({ pending: 0, delivered: 500 });
      console.info(
        `PostgreSQL batches: addExports of 10,000 ids ${addMs.toFixed(0)} ms, commitChanges of 100 ` +
          `changes (500 deliveries) ${commitMs.toFixed(0)} ms, recordAttempts of 500 ${recordMs.toFixed(0)} ms`,
      );
      // Loose bounds (a loaded 2-core machine): row-at-a-time writes take several times longer.
      expect(addMs).toBeLessThan(5000);
      expect(commitMs).toBeLessThan(2000);
      expect(recordMs).toBeLessThan(2000);
    });
  });
});
