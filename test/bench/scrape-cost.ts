/**
 * What the oldest-pending figure of a metrics scrape costs on SQLite with a backlog: `pending`
 * events with a pending delivery each (a receiver down), committed 50 at a time. Times the first scrape
 * (it reads every pending delivery once), one after the oldest `drained` are delivered (as a
 * backlog drains between two scrapes), one with nothing changed, and one after a redelivery of an
 * old event (read in full again). Prints one line per scrape; asserts nothing.
 *
 *   node --import tsx test/bench/scrape-cost.ts
 *   node --import tsx test/bench/scrape-cost.ts --pending 100000 --drained 5000
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
  },
});
const pending = Number(values.pending);
const drained = Number(values.drained);
if (![pending, drained].every((n) => Number.isInteger(n) && n >= 0) || drained >= pending) {
  process.stderr.write('scrape-cost: --pending and --drained take whole numbers, drained < pending\n');
  process.exit(2);
}
const T0 = 1_700_000_000_000;
const CHUNK = 5000;
const PER_COMMIT = 50;

const dir = mkdtempSync(join(tmpdir(), 'scrape-cost-'));
const store = await openSqliteStore({ path: openDataDir(dir) });
try {
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
    eventId: `evt_${id}`,
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
} finally {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}
