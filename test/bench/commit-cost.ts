/**
 * What the durable commit of a check's transitions costs per transition, by batch size: N watched
 * exports with random ids (as the platform's are) in a fresh SQLite store, all moved to COMPLETED
 * with their events and one pending delivery each, `batch` changes per `commitChanges`. Prints a
 * table; asserts nothing. Everything stays in a temporary directory, removed at the end.
 *
 *   node --import tsx test/bench/commit-cost.ts                  # 50,000 exports; batches 100, 650, 5000
 *   node --import tsx test/bench/commit-cost.ts --exports 20000 --batches 100,2000
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { storedEventBuilder } from '../../src/delivery/events.js';
import type { PlatformExport } from '../../src/polling/tracker.js';
import { openDataDir, openSqliteStore } from '../../src/store/sqlite.js';
import { move } from '../helpers/changes.js';

const { values } = parseArgs({
  options: {
    exports: { type: 'string', default: '50000' },
    batches: { type: 'string', default: '100,650,5000' },
  },
});
const n = Number(values.exports);
const batches = values.batches.split(',').map(Number);
if (!Number.isInteger(n) || n < 1 || batches.some((b) => !Number.isInteger(b) || b < 1)) {
  process.stderr.write('commit-cost: --exports and --batches take whole numbers\n');
  process.exit(2);
}

/** A platform object of the size the simulator answers with. */
function platformObject(id: string): PlatformExport {
  return {
    id,
    state: 'COMPLETED',
    source: { file: randomBytes(12).toString('hex') },
    destination: { volume: 'user/volume', location: `results/${randomBytes(20).toString('hex')}` },
    result: {
      id: randomBytes(12).toString('hex'),
      name: 'sample.bam',
      size: 1_000_000,
      project: 'user/project',
    },
    started_on: '2026-01-01T00:00:00Z',
    finished_on: '2026-01-01T01:00:00Z',
    overwrite: false,
    properties: { sse_algorithm: 'AES256' },
  };
}

const rows: string[] = [
  '| batch | transitions | wall | per transition | transitions/s | CPU user | CPU system |',
  '| ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
];
for (const batch of batches) {
  const dir = mkdtempSync(join(tmpdir(), 'commit-cost-'));
  try {
    const store = await openSqliteStore({ path: openDataDir(dir) });
    const ids = Array.from({ length: n }, () => randomBytes(24).toString('base64url'));
    await store.addExports([{ ids, metadata: { pipeline: 'bench' } }], Date.now());
    const build = storedEventBuilder('all');
    const endpoints = [{ key: 'e1', label: 'http://127.0.0.1:1/hooks' }];
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < n; i += batch) {
      const at = Date.now();
      const changes = ids
        .slice(i, i + batch)
        .map((id) => move(id, 'UNKNOWN', 'COMPLETED', at, { export: platformObject(id) }));
      await store.commitChanges(changes, build, endpoints, at);
    }
    const wallMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    await store.close();
    rows.push(
      `| ${batch} | ${n} | ${(wallMs / 1000).toFixed(2)} s | ${((wallMs * 1000) / n).toFixed(0)} µs | ${Math.round((n / wallMs) * 1000)} | ${(cpu.user / 1e6).toFixed(2)} s | ${(cpu.system / 1e6).toFixed(2)} s |`,
    );
    process.stderr.write(`[commit-cost] batch ${batch} done\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
process.stdout.write(`${rows.join('\n')}\n`);
