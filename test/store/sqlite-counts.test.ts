/**
 * The SQLite store's running counts of jobs by kind and state (`countExports`), kept by its writes
 * instead of counted at each reading: after every write of a long random sequence (seeded, so a
 * failure replays), they must be exactly what a GROUP BY over the table says, read through a second,
 * read-only connection. The sequence has every writer of the exports table in it, writes that
 * change nothing, transactions that throw midway, nested writes rolled back to their savepoint,
 * readings taken inside a transaction, and reopenings (counted afresh from what the file holds).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { mulberry32 } from '../../src/dev/simulator.js';
import { EXPORT_STATES, type ExportState, type JobKind } from '../../src/polling/tracker.js';
import { openDataDir, openSqliteStore, type SqliteStore } from '../../src/store/sqlite.js';
import {
  type EndpointRef,
  type EventBuilder,
  type ExportChange,
  endpointKey,
  type NewEvent,
} from '../../src/store/store.js';
import { move } from '../helpers/changes.js';

const T0 = 1_700_000_000_000;
const KINDS: readonly JobKind[] = ['export', 'import'];
const REF: EndpointRef = { key: endpointKey('https://a.example/'), label: 'https://a.example/' };

const scratch = mkdtempSync(join(tmpdir(), 'sqlite-counts-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

type Counts = Record<JobKind, Record<ExportState, number>>;

/** What the old `countExports` answered: the table counted, every known state present. */
function groupByCounts(db: Database.Database): Counts {
  const rows = db
    .prepare('SELECT kind, state, count(*) AS n FROM exports GROUP BY kind, state')
    .all() as Array<{
    kind: JobKind;
    state: ExportState;
    n: number;
  }>;
  const zero = () => Object.fromEntries(EXPORT_STATES.map((s) => [s, 0])) as Record<ExportState, number>;
  const counts: Counts = { export: zero(), import: zero() };
  for (const { kind, state, n } of rows) counts[kind][state] = n;
  return counts;
}

async function storeCounts(store: SqliteStore): Promise<Counts> {
  return { export: await store.countExports('export'), import: await store.countExports('import') };
}

describe('SQLite store: running counts of jobs by kind and state', () => {
  it.each([1, 2, 3, 4, 5])(
    'match a GROUP BY after every write of a random sequence (seed %i)',
    async (seed) => {
      const path = openDataDir(join(scratch, `seed-${seed}`));
      const next = mulberry32(seed);
      const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)] as T;
      const chance = (p: number) => next() < p;
      // Few ids, so that adds collide, removals find something and `import_` twins conflict.
      const pool = Array.from({ length: 24 }, (_, i) => (i % 6 === 5 ? `import_j${i - 1}` : `j${i}`));
      const someIds = () => Array.from({ length: 1 + Math.floor(next() * 5) }, () => pick(pool));

      let store = await openSqliteStore({ path });
      const reader = new Database(path, { readonly: true });
      let now = T0;
      const log: string[] = [];
      /** Each kind and state that some comparison found rows in. */
      const held = new Set<string>();
      try {
        for (let step = 0; step < 600; step++) {
          now += 1 + Math.floor(next() * 1000);
          const roll = next();
          if (roll < 0.25) {
            // Several requests in one call; a request with a twin conflict has its inserts undone.
            const requests = Array.from({ length: 1 + Math.floor(next() * 3) }, () => ({
              ids: someIds(),
              metadata: null,
              kind: pick(KINDS),
            }));
            log.push(`add ${JSON.stringify(requests.map((r) => [r.kind, r.ids]))}`);
            await store.addExports(requests, now);
          } else if (roll < 0.35) {
            const id = pick(pool);
            const kind = pick(KINDS);
            log.push(`remove ${kind} ${id}`);
            await store.removeExport(id, kind);
          } else if (roll < 0.75) {
            await commitSome(store, reader);
          } else if (roll < 0.85) {
            const policy = { retainMs: Math.floor(next() * 20_000), eventRetainMs: 10_000, batch: 2 };
            log.push(`prune ${JSON.stringify(policy)}`);
            await store.prune(now, policy);
          } else if (roll < 0.88) {
            log.push('reopen');
            await store.close();
            store = await openSqliteStore({ path });
          } else {
            log.push('read');
          }
          // Not read at every step: a reading starts the count, and writes before the first one
          // (and after each reopening) must be found in the table then.
          if (chance(0.7)) {
            const table = groupByCounts(reader);
            const where = `seed ${seed}, step ${step}: ${log.slice(-3).join('; ')}`;
            expect(await storeCounts(store), where).toEqual(table);
            for (const kind of KINDS) {
              for (const state of EXPORT_STATES) if (table[kind][state] > 0) held.add(`${kind} ${state}`);
            }
          }
        }
        expect(await storeCounts(store)).toEqual(groupByCounts(reader));
        // The sequence went through what it is meant to test: every state of both kinds held.
        expect([...held].sort()).toEqual(KINDS.flatMap((k) => EXPORT_STATES.map((s) => `${k} ${s}`)).sort());
      } finally {
        reader.close();
        await store.close();
      }

      /**
       * Changes to jobs picked from the pool: most from the state stored (a transition, or a miss
       * when it stays), some from another (written since: no change), some for ids not stored.
       * The builder may read the counts mid-transaction, write nested (an add, which may fail
       * half-way and roll back to its savepoint; a removal), or throw, which rolls back all.
       */
      async function commitSome(s: SqliteStore, db: Database.Database): Promise<void> {
        const stored = db.prepare('SELECT kind, state FROM exports WHERE id = ?');
        const changes: ExportChange[] = [];
        for (const id of someIds()) {
          const row = stored.get(id) as { kind: JobKind; state: ExportState } | undefined;
          const from = row !== undefined && chance(0.85) ? row.state : pick(EXPORT_STATES);
          const to = chance(0.15) ? from : pick(EXPORT_STATES);
          changes.push(move(id, from, to, now));
        }
        const throwAt = chance(0.25) ? Math.floor(next() * changes.length) : -1;
        const readInside = chance(0.3);
        const nested = chance(0.3);
        const endpoints = chance(0.5) ? [REF] : [];
        // The committed counts, moved by each change built so far: what a reading inside sees.
        const seen = groupByCounts(db);
        let calls = 0;
        let wroteNested = false;
        const readings: Promise<void>[] = [];
        const build: EventBuilder = (change, _metadata, kind = 'export') => {
          seen[kind][change.from]--;
          seen[kind][change.to]++;
          if (calls++ === throwAt) throw new Error('builder failed');
          if (readInside && !wroteNested) {
            // Asked inside the transaction: answered from the table as it sees it, and not kept.
            const expected = structuredClone(seen);
            readings.push(
              Promise.all([s.countExports('export'), s.countExports('import')]).then(([e, i]) => {
                expect({ export: e, import: i }, 'a reading inside the transaction').toEqual(expected);
              }),
            );
          }
          if (nested) {
            wroteNested = true;
            // Each a savepoint. Half the time a second request breaks the kind CHECK, and the
            // first one's inserts are undone with it; otherwise they hold, and so does a removal,
            // unless the whole transaction rolls back later.
            const requests = [{ ids: someIds(), metadata: null, kind: pick(KINDS) }];
            if (chance(0.5))
              requests.push({ ids: [`nested${calls}`], metadata: null, kind: 'bogus' as JobKind });
            s.addExports(requests, now).catch(() => undefined);
            if (chance(0.5)) void s.removeExport(pick(pool), pick(KINDS));
          }
          const event: NewEvent = {
            id: `${kind === 'import' ? 'evt_import_' : 'evt_'}${change.id}_${change.to}`,
            type: `${kind}.completed` as NewEvent['type'],
            exportId: change.id,
            body: '{}',
          };
          return chance(0.7) ? event : null;
        };
        log.push(
          `commit ${JSON.stringify(changes.map((c) => [c.id, c.from, c.to]))} throwAt ${throwAt}` +
            `${readInside ? ' readInside' : ''}${nested ? ' nested' : ''}`,
        );
        await s.commitChanges(changes, build, endpoints, now).catch((error: unknown) => {
          if ((error as Error).message !== 'builder failed') throw error;
        });
        await Promise.all(readings);
      }
    },
    60_000,
  );
});
