/**
 * What the oldest-pending figure of a metrics scrape costs on SQLite with a backlog: `pending`
 * events with a pending delivery each (a receiver down), committed 50 at a time. Times the first scrape
 * (it reads every pending delivery once), one after the oldest `drained` are delivered (as a
 * backlog drains between two scrapes), one with nothing changed, and one after a redelivery of an
 * old event (read in full again). With `--jobs N`, then the exports and imports by state as a
 * reading of `/metrics` asks for them, once `N` more jobs are held (a tenth imports, half of all
 * finished): the first reading, one with nothing changed, and one after a commit of 500
 * transitions and a prune. Prints one line per scrape; asserts nothing.
 *
 *   node --import tsx test/bench/scrape-cost.ts
 *   node --import tsx test/bench/scrape-cost.ts --pending 100000 --drained 5000
 *   node --import tsx test/bench/scrape-cost.ts --pending 0 --drained 0 --jobs 1000000
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openDataDir, openSqliteStore } from '../../src/store/sqlite.js';
import type { AttemptRecord } from '../../src/store/store.js';
import { move, NOWHERE, plainEvent } from '../helpers/changes.js';

const { values } = parseArgs({
  options: {
    pending: { type: 'string', default: '100000' },
    drained: { type: 'string', default: '5000' },
    jobs: { type: 'string', default: '0' },
  },
});
const pending = Number(values.pending);
const drained = Number(values.drained);
const jobs = Number(values.jobs);
if (
  ![pending, drained, jobs].every((n) => Number.isInteger(n) && n >= 0) ||
  (pending > 0 ? drained >= pending : drained > 0)
) {
  process.stderr.write(
    'scrape-cost: --pending, --drained and --jobs take whole numbers, drained < pending (or both 0)\n',
  );
  process.exit(2);
}
const T0 = 1_700_000_000_000;
const CHUNK = 5000;
const PER_COMMIT = 50;

const dir = mkdtempSync(join(tmpdir(), 'scrape-cost-'));
const store = await openSqliteStore({ path: openDataDir(dir) });
async function deliveriesScrapes(): Promise<void> {
  const ids = Array.from({ length: pending }, (_, i) => `e${String(i).padStart(8, '0')}`);
  for (let i = 0; i < ids.length; i += CHUNK) {
    await store.addExports([{ ids: ids.slice(i, i + CHUNK), metadata: null }], T0);
    // A commit per event time, a millisecond apart, as a group commit writes them.
    for (let j = i; j < Math.min(i + CHUNK, ids.length); j += PER_COMMIT) {
      const at = T0 + j;
      const changes = ids.slice(j, j + PER_COMMIT).map((id) => move(id, 'UNKNOWN', 'COMPLETED', at));
      await store.commitChanges(changes, plainEvent, [NOWHERE], at);
    }
  }
  const scrape = async (what: string) => {
    const started = performance.now();
    const counts = await store.deliveryCounts();
    const ms = performance.now() - started;
    process.stdout.write(
      `${what}: ${ms.toFixed(1)} ms (${counts.pending} pending, oldest ${(counts.oldestPendingAt ?? T0) - T0} ms after the first)\n`,
    );
  };
  await scrape('first scrape');
  const records: AttemptRecord[] = ids.slice(0, drained).map((id, i) => ({
    eventId: `evt_${id}_completed`,
    endpointKey: NOWHERE.key,
    seriesStartedAt: T0 + i - (i % PER_COMMIT),
    status: 'delivered',
    attempts: 1,
    nextAttemptAt: null,
    lastStatus: 200,
    lastError: null,
    finishedAt: T0 + pending,
  }));
  await store.recordAttempts(records);
  await scrape(`after ${drained} delivered`);
  await scrape('nothing changed');
  await store.redeliver(`evt_${ids[0]}`, [NOWHERE], T0 + pending);
  await scrape('after a redelivery');
}

/**
 * `jobs` more jobs, with ids of their own, added and finished in chunks (finished with no
 * event: only the exports table grows), then readings of both kinds' counts as `/metrics` makes one.
 */
async function jobReadings(): Promise<void> {
  const id = (i: number) => `j${String(i).padStart(8, '0')}`;
  for (let i = 0; i < jobs; i += CHUNK) {
    const chunk = Array.from({ length: Math.min(CHUNK, jobs - i) }, (_, j) => id(i + j));
    const imports = chunk.filter((_, j) => (i + j) % 10 === 0);
    await store.addExports(
      [
        { ids: chunk.filter((_, j) => (i + j) % 10 !== 0), metadata: null },
        { ids: imports, metadata: null, kind: 'import' },
      ],
      T0,
    );
    const finished = chunk.filter((_, j) => (i + j) % 2 === 0);
    await store.commitChanges(
      finished.map((f) => move(f, 'UNKNOWN', 'COMPLETED', T0 + i)),
      () => null,
      [],
      T0 + i,
    );
  }
  const reading = async (what: string) => {
    const started = performance.now();
    const [exports, imports] = await Promise.all([
      store.countExports('export'),
      store.countExports('import'),
    ]);
    const ms = performance.now() - started;
    const sum = (counts: Record<string, number>) => Object.values(counts).reduce((a, b) => a + b, 0);
    process.stdout.write(
      `jobs by state, ${what}: ${ms.toFixed(2)} ms (${sum(exports)} exports, ${sum(imports)} imports, ` +
        `${exports.COMPLETED + imports.COMPLETED} completed)\n`,
    );
  };
  await reading('first reading');
  await reading('nothing changed');
  const moved = Array.from({ length: Math.min(1000, jobs) }, (_, i) => id(i)).filter((_, i) => i % 2 === 1);
  await store.commitChanges(
    moved.map((m) => move(m, 'UNKNOWN', 'RUNNING', T0 + jobs)),
    () => null,
    [],
    T0 + jobs,
  );
  await store.prune(T0 + jobs, { retainMs: jobs - 1000, eventRetainMs: Number.MAX_SAFE_INTEGER, batch: 500 });
  await reading(`after ${moved.length} transitions and a prune`);
}

try {
  if (pending > 0) await deliveriesScrapes();
  if (jobs > 0) await jobReadings();
} finally {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}
