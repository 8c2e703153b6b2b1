/**
 * What pruning events past retention costs when many older events are still held by a pending
 * delivery (a receiver down for days): `held` events with a pending delivery, then `doomed`
 * delivered ones, all past retention; one `prune` in batches of 500, as the daemon runs it.
 * Prints one line; asserts nothing.
 *
 *   node --import tsx test/bench/prune-cost.ts                         # SQLite, in a temporary directory
 *   node --import tsx test/bench/prune-cost.ts --held 100000 --doomed 100000
 *   node --import tsx test/bench/prune-cost.ts --database-url postgres://…  # PostgreSQL (its tables emptied!)
 *   ... --analyze                                                      # PostgreSQL: statistics first
 *
 * With PostgreSQL the three tables are EMPTIED first: give it a database of its own. Without
 * `--analyze` the tables have no statistics yet (as after a bulk load), which is when a planner
 * is most likely to choose badly.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { openPostgresStore } from '../../src/store/postgres.js';
import { openDataDir, openSqliteStore } from '../../src/store/sqlite.js';
import type { AttemptRecord, Store } from '../../src/store/store.js';
import { move, NOWHERE, plainEvent } from '../helpers/changes.js';

const { values } = parseArgs({
  options: {
    held: { type: 'string', default: '20000' },
    doomed: { type: 'string', default: '20000' },
    'database-url': { type: 'string' },
    analyze: { type: 'boolean', default: false },
  },
});
const held = Number(values.held);
const doomed = Number(values.doomed);
if (![held, doomed].every((n) => Number.isInteger(n) && n >= 0)) {
  process.stderr.write('prune-cost: --held and --doomed take whole numbers\n');
  process.exit(2);
}
const T0 = 1_700_000_000_000;
const HOUR = 3_600_000;
const CHUNK = 5000;
const url = values['database-url'];

async function sql(text: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end();
  }
}

const dir = url === undefined ? mkdtempSync(join(tmpdir(), 'prune-cost-')) : undefined;
let store: Store | undefined;
try {
  store =
    url === undefined
      ? await openSqliteStore({ path: openDataDir(dir as string) })
      : await openPostgresStore({ url });
  // Opened first: the store creates the tables of an empty database.
  if (url !== undefined) await sql('TRUNCATE exports, events, deliveries');
  const ids = (prefix: string, n: number) =>
    Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(8, '0')}`);
  // Held ones first (older), then the ones to delete: every batch of the old way read the held again.
  for (const [group, at] of [
    [ids('h', held), T0],
    [ids('z', doomed), T0 + 1],
  ] as const) {
    for (let i = 0; i < group.length; i += CHUNK) {
      const part = group.slice(i, i + CHUNK);
      await store.addExports([{ ids: part, metadata: null }], T0);
      const changes = part.map((id) => move(id, 'UNKNOWN', 'COMPLETED', at));
      await store.commitChanges(changes, plainEvent, [NOWHERE], at);
    }
  }
  const doomedIds = ids('z', doomed);
  for (let i = 0; i < doomedIds.length; i += CHUNK) {
    const records: AttemptRecord[] = doomedIds.slice(i, i + CHUNK).map((id) => ({
      eventId: `evt_${id}_completed`,
      endpointKey: NOWHERE.key,
      seriesStartedAt: T0 + 1,
      status: 'delivered',
      attempts: 1,
      nextAttemptAt: null,
      lastStatus: 200,
      lastError: null,
      finishedAt: T0 + 2,
    }));
    await store.recordAttempts(records);
  }
  if (url !== undefined && values.analyze) await sql('ANALYZE exports, events, deliveries');
  const started = performance.now();
  const result = await store.prune(T0 + 100 * HOUR, {
    retainMs: 1000 * HOUR,
    eventRetainMs: HOUR,
    batch: 500,
  });
  const ms = performance.now() - started;
  const engine = url === undefined ? 'SQLite' : `PostgreSQL${values.analyze ? ' (analyzed)' : ''}`;
  process.stdout.write(
    `${engine}: ${held} held + ${doomed} to delete: ${result.events} events deleted in ${Math.round(ms)} ms\n`,
  );
} finally {
  await store?.close();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
}
