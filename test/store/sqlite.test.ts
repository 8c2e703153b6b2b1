/**
 * The SQLite store: the contract on a file and in memory, and what only a file can go through:
 * reopening, a killed process, schema versions, damaged files and unusable data directories.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { storedEventBuilder } from '../../src/delivery/events.js';
import { EXPORT_STATES, isTerminal } from '../../src/polling/tracker.js';
import {
  ACTIVE_STATES,
  FINISHED_STATES,
  MIGRATIONS,
  openDataDir,
  openSqliteStore,
  PAGE_SIZE,
  SCHEMA_VERSION,
  type SqliteStore,
} from '../../src/store/sqlite.js';
import {
  type AttemptRecord,
  type EventBuilder,
  type ExportChange,
  endpointKey,
  StoreError,
} from '../../src/store/store.js';
import { move, plainEvent } from '../helpers/changes.js';
import { canMakeReadOnlyDir, makeUnwritable, readOnlyDir } from '../helpers/no-access.js';
import { describeStoreContract, storeErrorOf } from './contract.js';

const ROOT = join(import.meta.dirname, '..', '..');
const TSX = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
const STORE_MODULE = pathToFileURL(join(ROOT, 'src', 'store', 'sqlite.ts')).href;
const T0 = 1_700_000_000_000;

const scratch = mkdtempSync(join(tmpdir(), 'sqlite-store-'));
let dirs = 0;
/** A path under this file's scratch directory that does not exist yet. */
function freshDir(): string {
  return join(scratch, `d${dirs++}`);
}

/** A new empty directory under this file's scratch directory. */
function emptyDir(): string {
  const dir = freshDir();
  mkdirSync(dir);
  return dir;
}
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describeStoreContract('SQLite file', () => openSqliteStore({ path: openDataDir(freshDir()) }));
describeStoreContract('SQLite in memory', () => openSqliteStore({ path: ':memory:' }));

/** A database file that exists and holds a few exports, closed. */
async function databaseWithExports(count: number): Promise<string> {
  const path = openDataDir(freshDir());
  const store = await openSqliteStore({ path });
  const ids = Array.from({ length: count }, (_, i) => `export_${i}`);
  await store.addExports([{ ids, metadata: { padding: 'x'.repeat(200) } }], T0);
  await store.close();
  return path;
}

describe('SQLite store', () => {
  it('spells out the active and finished states as the tracker defines them', () => {
    expect([...ACTIVE_STATES]).toEqual(EXPORT_STATES.filter((s) => !isTerminal(s)));
    expect([...FINISHED_STATES]).toEqual(EXPORT_STATES.filter((s) => isTerminal(s)));
  });

  it('keeps everything across close and reopen, in WAL mode at the latest schema and its page size', async () => {
    const path = openDataDir(freshDir());
    const ref = { key: endpointKey('https://a.example/'), label: 'https://a.example/' };
    let store: SqliteStore = await openSqliteStore({ path });
    await store.addExports([{ ids: ['a', 'b'], metadata: { keep: true } }], T0);
    await store.commitChanges(
      [
        {
          id: 'a',
          from: 'UNKNOWN',
          to: 'COMPLETED',
          at: T0 + 1,
          misses: 0,
          lastMiss: null,
          export: null,
          error: null,
        },
      ],
      plainEvent,
      [ref],
      T0 + 1,
    );
    const before = { a: await store.getExport('a'), event: await store.getEvent('evt_a_completed') };
    expect(before.a).toMatchObject({ state: 'COMPLETED', metadata: { keep: true } });
    expect(before.event?.deliveries).toHaveLength(1);
    await store.close();
    expect(existsSync(`${path}-wal`) ? statSync(`${path}-wal`).size : 0).toBe(0);

    store = await openSqliteStore({ path });
    try {
      expect(await store.getExport('a')).toEqual(before.a);
      expect(await store.getEvent('evt_a_completed')).toEqual(before.event);
      expect(byIdSorted(await store.loadActive())).toEqual([{ id: 'b', state: 'UNKNOWN', misses: 0 }]);
    } finally {
      await store.close();
    }
    const raw = new Database(path, { readonly: true });
    try {
      expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
      expect(raw.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
      expect(PAGE_SIZE).not.toBe(4096);
      expect(raw.pragma('page_size', { simple: true })).toBe(PAGE_SIZE);
    } finally {
      raw.close();
    }
  });

  it('keeps every commit made before the process was killed (SIGKILL, no close)', async () => {
    const dir = freshDir();
    const path = openDataDir(dir);
    const script = join(dir, 'writer.mjs');
    // Commits one export per transaction and reports each once its addExports has resolved.
    writeFileSync(
      script,
      `import { openSqliteStore } from ${JSON.stringify(STORE_MODULE)};
       const store = await openSqliteStore({ path: process.argv[2] });
       for (let i = 0; ; i++) {
         await store.addExports([{ ids: ['kill_' + i], metadata: { i } }], i);
         process.stdout.write(i + '\\n');
       }`,
    );
    const child = spawn(process.execPath, ['--import', TSX, script, path], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let reported = -1;
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      child.on('exit', (_code, signal) => resolve(signal)),
    );
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => {
        const lines = chunk.toString().trim().split('\n');
        reported = Number(lines.at(-1));
        if (reported >= 200) resolve();
      });
      child.on('exit', () => reject(new Error(`the writer exited early: ${stderr}`)));
    });
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');

    const store = await openSqliteStore({ path });
    try {
      const active = await store.loadActive();
      expect(active.length).toBeGreaterThanOrEqual(reported + 1);
      const ids = new Set(active.map((e) => e.id));
      for (let i = 0; i <= reported; i++) expect(ids.has(`kill_${i}`)).toBe(true);
      expect(await store.getExport(`kill_${reported}`)).toMatchObject({ metadata: { i: reported } });
    } finally {
      await store.close();
    }
  });

  it('refuses a database written by a newer version, and leaves it byte for byte as it was', async () => {
    // Written by a process that died with its last transaction still in the write-ahead log: a
    // connection that could write would fold that log into the file when it closes.
    const path = join(emptyDir(), 'newer.db');
    execFileSync(
      process.execPath,
      [
        '-e',
        `const db = new (require('better-sqlite3'))(process.argv[1]);
         db.pragma('journal_mode = WAL');
         db.pragma('wal_autocheckpoint = 0');
         db.exec("CREATE TABLE future (x TEXT); INSERT INTO future VALUES ('from the future')");
         db.pragma('user_version = ${SCHEMA_VERSION + 1}');
         process.exit(0);`,
        path,
      ],
      { cwd: ROOT },
    );
    const files = [path, `${path}-wal`];
    const before = files.map((f) => readFileSync(f));
    expect(before[1]?.length).toBeGreaterThan(0);

    const message = await storeErrorOf(() => openSqliteStore({ path }));
    expect(message).toContain(path);
    expect(message).toContain(
      `written by a newer version of sbg-export-watcher (schema ${SCHEMA_VERSION + 1}`,
    );
    expect(message).toContain('left untouched');
    expect(files.map((f) => readFileSync(f))).toEqual(before);
  });

  it.each([1, 2])(
    "refuses another program's database that sets user_version %i (its tables, not ours) and leaves it as it was",
    async (version) => {
      const dir = emptyDir();
      const path = join(dir, 'watcher.db');
      const raw = new Database(path);
      raw.exec(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO accounts VALUES (1, 'theirs')",
      );
      raw.pragma(`user_version = ${version}`);
      raw.close();
      const before = readFileSync(path);
      const message = await storeErrorOf(() => openSqliteStore({ path }));
      expect(message).toBe(
        `database ${path} holds another program's tables ("accounts") and no sbg-export-watcher schema ` +
          `(though its user_version is ${version}); it was left untouched: give WATCHER_DATA_DIR a directory of its own`,
      );
      // Not switched to WAL, nothing beside it.
      expect(readFileSync(path)).toEqual(before);
      expect(readdirSync(dir)).toEqual(['watcher.db']);
    },
  );

  it("refuses another program's database (tables, no schema version) and leaves it as it was", async () => {
    const path = join(emptyDir(), 'watcher.db');
    const raw = new Database(path);
    raw.exec("CREATE TABLE foo (x TEXT); INSERT INTO foo VALUES ('theirs')");
    raw.close();
    const before = readFileSync(path);
    const message = await storeErrorOf(() => openSqliteStore({ path }));
    expect(message).toBe(
      `database ${path} holds another program's tables ("foo") and no sbg-export-watcher schema; it was left untouched: give WATCHER_DATA_DIR a directory of its own`,
    );
    expect(readFileSync(path)).toEqual(before);
    // An empty database (no tables yet) is ours to set up.
    const empty = join(emptyDir(), 'empty.db');
    new Database(empty).close();
    const store = await openSqliteStore({ path: empty });
    await store.close();
  });

  it('reads the active jobs at start from an index alone, not from their rows', async () => {
    const path = await databaseWithExports(3);
    const active = `(${ACTIVE_STATES.map((state) => `'${state}'`).join(', ')})`;
    const raw = new Database(path, { readonly: true });
    try {
      const plan = raw
        .prepare(
          `EXPLAIN QUERY PLAN SELECT id, kind, state, misses FROM exports
           WHERE kind IN ('export', 'import') AND state IN ${active}`,
        )
        .all()
        .map((r) => (r as { detail: string }).detail);
      expect(plan).toEqual([expect.stringContaining('USING COVERING INDEX exports_by_kind_state')]);
    } finally {
      raw.close();
    }
  });

  it('brings a schema-1 database (before kinds) up to date, in its own page size: its rows are exports, imports can be added', async () => {
    const path = join(emptyDir(), 'v1.db');
    const raw = new Database(path);
    raw.exec(MIGRATIONS[0] as string);
    raw
      .prepare(
        `INSERT INTO exports (id, state, metadata, first_seen_at, state_changed_at, misses, history)
         VALUES ('old', 'RUNNING', '{"v":1}', ?, ?, 0, '[]')`,
      )
      .run(T0, T0);
    raw.pragma('user_version = 1');
    raw.close();
    const store = await openSqliteStore({ path });
    try {
      expect(await store.getExport('old')).toMatchObject({ id: 'old', state: 'RUNNING', metadata: { v: 1 } });
      expect(await store.getExport('old')).not.toHaveProperty('kind');
      expect(await store.loadActive()).toEqual([{ id: 'old', state: 'RUNNING', misses: 0 }]);
      const [added] = await store.addExports([{ ids: ['old', 'new'], metadata: null, kind: 'import' }], T0);
      expect(added).toEqual({ accepted: [], alreadyWatched: [], conflicts: ['old'] });
      const [imported] = await store.addExports([{ ids: ['new'], metadata: null, kind: 'import' }], T0);
      expect(imported).toEqual({ accepted: ['new'], alreadyWatched: [] });
    } finally {
      await store.close();
    }
    const after = new Database(path, { readonly: true });
    try {
      expect(after.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
      expect(SCHEMA_VERSION).toBe(4);
      // A file keeps the page size it was made with (SQLite's default here).
      expect(after.pragma('page_size', { simple: true })).toBe(4096);
      const indexes = after
        .prepare(
          "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'exports' AND sql IS NOT NULL",
        )
        .all()
        .map((r) => (r as { name: string }).name)
        .sort();
      expect(indexes).toEqual(['exports_by_kind', 'exports_by_kind_state', 'exports_finished']);
    } finally {
      after.close();
    }
  });

  it('brings a schema-3 database up to date: its events and deliveries keep everything, deliveries keyed by sequence', async () => {
    const path = join(emptyDir(), 'v3.db');
    const raw = new Database(path);
    raw.pragma('foreign_keys = ON');
    for (const sql of MIGRATIONS.slice(0, 3)) raw.exec(sql);
    const exportRow = raw.prepare(
      `INSERT INTO exports (id, state, first_seen_at, state_changed_at, misses, history)
       VALUES (?, 'COMPLETED', ?, ?, 0, '[]')`,
    );
    const event = raw.prepare(
      "INSERT INTO events (id, export_id, type, body, created_at) VALUES (?, ?, 'export.completed', ?, ?)",
    );
    const delivery = raw.prepare(
      `INSERT INTO deliveries (event_id, endpoint_key, endpoint_label, status, attempts, next_attempt_at,
                               leased, series_started_at, last_status, last_error, finished_at)
       VALUES (?, ?, 'https://a.example/', ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    // Inserted out of id order: the sequence follows the order of insertion.
    for (const [i, id] of ['b', 'a', 'c'].entries()) {
      exportRow.run(id, T0, T0);
      event.run(`evt_${id}_completed`, id, `{"n":${i}}`, T0 + i);
    }
    delivery.run('evt_b_completed', 'k1', 'delivered', 1, null, 0, T0, 200, null, T0 + 5);
    delivery.run('evt_b_completed', 'k2', 'failed', 7, null, 0, T0, 500, 'endpoint answered 500', T0 + 6);
    delivery.run('evt_a_completed', 'k1', 'pending', 2, T0 + 9, 1, T0, null, 'timed out', null);
    raw.pragma('user_version = 3');
    raw.close();
    const store = await openSqliteStore({ path });
    try {
      const b = await store.getEvent('evt_b_completed');
      expect(b).toMatchObject({ exportId: 'b', body: '{"n":0}', createdAt: T0 });
      expect(b?.deliveries).toEqual([
        expect.objectContaining({
          eventId: 'evt_b_completed',
          endpointKey: 'k1',
          status: 'delivered',
          lastStatus: 200,
        }),
        expect.objectContaining({
          eventId: 'evt_b_completed',
          endpointKey: 'k2',
          status: 'failed',
          attempts: 7,
          lastError: 'endpoint answered 500',
          finishedAt: T0 + 6,
        }),
      ]);
      expect((await store.getEvent('evt_a_completed'))?.deliveries).toEqual([
        expect.objectContaining({
          endpointKey: 'k1',
          status: 'pending',
          nextAttemptAt: T0 + 9,
          leased: true,
        }),
      ]);
      expect((await store.getEvent('evt_c_completed'))?.deliveries).toEqual([]);
      expect((await store.listEvents({ exportId: 'a', limit: 10 })).items.map((e) => e.id)).toEqual([
        'evt_a_completed',
      ]);
      expect(await store.deliveryCounts()).toMatchObject({ pending: 1, delivered: 1, failed: 1 });
      // The lease is released and the pending delivery claimed, by its webhook-id.
      await store.releaseLeases(T0 + 10);
      expect(await store.claimDue('k1', T0 + 10, 10, T0 + 20)).toEqual([
        expect.objectContaining({ eventId: 'evt_a_completed', exportId: 'a', attempts: 2 }),
      ]);
    } finally {
      await store.close();
    }
    const after = new Database(path, { readonly: true });
    try {
      expect(after.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
      expect(after.pragma('foreign_key_check')).toEqual([]);
      expect(after.prepare('SELECT seq, id FROM events ORDER BY seq').all()).toEqual([
        { seq: 1, id: 'evt_b_completed' },
        { seq: 2, id: 'evt_a_completed' },
        { seq: 3, id: 'evt_c_completed' },
      ]);
      expect(after.prepare('SELECT event_seq, endpoint_key FROM deliveries').all()).toEqual([
        { event_seq: 1, endpoint_key: 'k1' },
        { event_seq: 1, endpoint_key: 'k2' },
        { event_seq: 2, endpoint_key: 'k1' },
      ]);
      const indexes = after
        .prepare(
          "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('events', 'deliveries') AND sql IS NOT NULL",
        )
        .all()
        .map((r) => (r as { name: string }).name)
        .sort();
      expect(indexes).toEqual(['deliveries_due', 'events_by_time']);
    } finally {
      after.close();
    }
  });

  it("reads one job's events on the webhook-id index, in its own range only, with a time or a cursor too", async () => {
    const store = await openSqliteStore({ path: ':memory:' });
    const plans = new Database(':memory:');
    for (const sql of MIGRATIONS) plans.exec(sql);
    const { ran, restore } = recordGets('all');
    try {
      await store.addExports([{ ids: ['job1', 'job10', 'job1_b'], metadata: null }], T0);
      const changes = ['job1', 'job10', 'job1_b'].map((id) => completed(id, T0 + 1));
      await store.commitChanges(changes, storedEventBuilder('all'), [], T0 + 1);
      ran.length = 0;
      const pages = [
        await store.listEvents({ exportId: 'job1', limit: 10 }),
        await store.listEvents({ exportId: 'job1', since: 0, limit: 10 }),
        await store.listEvents({ exportId: 'job1', after: { createdAt: T0 + 10, id: 'z' }, limit: 10 }),
      ];
      for (const { items } of pages) expect(items.map((e) => e.id)).toEqual(['evt_job1_completed']);
      const reads = ran.filter((r) => r.source.includes('FROM events') && r.source.includes('@exportLow'));
      expect(reads).toHaveLength(3);
      for (const { source, args } of reads) {
        // Not from `evt_job1`, which would read every event of job10 to job19999 and drop them.
        expect(args[0]).toMatchObject({ exportLow: 'evt_job1_', importLow: 'evt_import_job1_' });
        const plan = (plans.prepare(`EXPLAIN QUERY PLAN ${source}`).all(...args) as Array<{ detail: string }>)
          .map((p) => p.detail)
          .join('; ');
        expect(plan).toContain('sqlite_autoindex_events_1');
        expect(plan).not.toContain('events_by_time');
      }
    } finally {
      restore();
      plans.close();
      await store.close();
    }
  });

  it("refuses an event whose id is not its job's prefix, an underscore and a suffix, and writes nothing of the commit", async () => {
    const store = await openSqliteStore({ path: ':memory:' });
    try {
      await store.addExports([{ ids: ['a'], metadata: null }], T0);
      const build = () => ({ id: 'evt_a', type: 'export.completed' as const, exportId: 'a', body: '{}' });
      await expect(store.commitChanges([completed('a', T0 + 1)], build, [], T0 + 1)).rejects.toThrow(
        'does not begin with a webhook-id prefix of a',
      );
      expect((await store.getExport('a'))?.state).toBe('UNKNOWN');
      expect((await store.listEvents({ limit: 10 })).items).toEqual([]);
    } finally {
      await store.close();
    }
  });

  it('keeps no delivery count taken inside a transaction that then rolls back', async () => {
    const store = await openSqliteStore({ path: ':memory:' });
    try {
      const ref = { key: endpointKey('https://a.example/'), label: 'https://a.example/' };
      await store.addExports([{ ids: ['a', 'b'], metadata: null }], T0);
      const changes = ['a', 'b'].map((id) => completed(id, T0 + 1));
      // The first count is asked while the commit is under way (a's delivery written), and the
      // commit then fails.
      const build: EventBuilder = (change) => {
        if (change.id === 'b') {
          void store.deliveryCounts();
          throw new Error('no event for b');
        }
        return plainEvent(change);
      };
      await expect(store.commitChanges(changes, build, [ref], T0 + 1)).rejects.toThrow('no event for b');
      expect((await store.listEvents({ limit: 10 })).items).toEqual([]);
      expect(await store.deliveryCounts()).toEqual({
        pending: 0,
        delivered: 0,
        failed: 0,
        gone: 0,
        orphaned: 0,
        oldestPendingAt: null,
      });
    } finally {
      await store.close();
    }
  });

  it('counts nothing of a nested write rolled back to its savepoint', async () => {
    const store = await openSqliteStore({ path: ':memory:' });
    try {
      const ref = { key: endpointKey('https://a.example/'), label: 'https://a.example/' };
      await store.addExports([{ ids: ['a', 'b'], metadata: null }], T0);
      await store.commitChanges([completed('a', T0 + 1)], plainEvent, [ref], T0 + 1);
      expect((await store.deliveryCounts()).pending).toBe(1);
      // Inside b's commit, a redelivery of a to a new endpoint fails half-way (no label): its
      // savepoint rolls back, the error is caught, and the commit goes on.
      const nested: EventBuilder = (change) => {
        const bad = { key: endpointKey('https://c.example/'), label: undefined as unknown as string };
        store.redeliver('evt_a_completed', [bad], T0 + 2).catch(() => undefined);
        return plainEvent(change);
      };
      await store.commitChanges([completed('b', T0 + 2)], nested, [ref], T0 + 2);
      const listed = (await store.listEvents({ limit: 10 })).items.flatMap((e) => e.deliveries);
      expect(listed).toHaveLength(2);
      expect((await store.deliveryCounts()).pending).toBe(2);
    } finally {
      await store.close();
    }
  });

  it('a scrape after a time with nothing pending reads no event delivered before that time', async () => {
    // The oldest-pending figure reads events from a floor on; record where each scrape starts.
    const gets = recordGets();
    const store = await openSqliteStore({ path: ':memory:' });
    try {
      const ref = { key: endpointKey('https://a.example/'), label: 'https://a.example/' };
      const deliver = (id: string, at: number) => store.recordAttempts([deliveredRecord(id, ref.key, at)]);
      await store.addExports([{ ids: ['first'], metadata: null }], T0);
      await store.commitChanges([completed('first', T0 + 1)], plainEvent, [ref], T0 + 1);
      expect((await store.deliveryCounts()).oldestPendingAt).toBe(T0 + 1);
      await deliver('first', T0 + 1);
      expect((await store.deliveryCounts()).pending).toBe(0);
      // 500 events come and are delivered between two scrapes that see nothing pending.
      const ids = Array.from({ length: 500 }, (_, i) => `d${i}`);
      await store.addExports([{ ids, metadata: null }], T0);
      for (const [i, id] of ids.entries()) {
        await store.commitChanges([completed(id, T0 + 10 + i)], plainEvent, [ref], T0 + 10 + i);
        await deliver(id, T0 + 10 + i);
      }
      expect((await store.deliveryCounts()).pending).toBe(0);
      // Then one event stays pending: the scrape reads from it, not from the 500 delivered before.
      await store.addExports([{ ids: ['late'], metadata: null }], T0);
      await store.commitChanges([completed('late', T0 + 10_000)], plainEvent, [ref], T0 + 10_000);
      gets.ran.length = 0;
      expect((await store.deliveryCounts()).oldestPendingAt).toBe(T0 + 10_000);
      const floors = floorsOf(gets.ran);
      const read = (await store.listEvents({ limit: 1000 })).items.filter(
        (e) => floors.length === 0 || e.createdAt >= (floors[0] as number),
      );
      expect(read.map((e) => e.id)).toEqual(['evt_late_completed']);
    } finally {
      gets.restore();
      await store.close();
    }
  });

  it("a scrape passes over an endpoint no longer configured: it reads from the configured endpoints' oldest event, not from its", async () => {
    // As above: record where each reading of the oldest pending event starts.
    const gets = recordGets();
    const store = await openSqliteStore({ path: ':memory:' });
    try {
      const kept = { key: endpointKey('https://a.example/'), label: 'https://a.example/' };
      const gone = { key: endpointKey('https://b.example/'), label: 'https://b.example/' };
      const deliver = (id: string, at: number) => store.recordAttempts([deliveredRecord(id, kept.key, at)]);
      // The first event went to both; the second endpoint never took it and is then removed.
      await store.addExports([{ ids: ['first'], metadata: null }], T0);
      await store.commitChanges([completed('first', T0 + 1)], plainEvent, [kept, gone], T0 + 1);
      await deliver('first', T0 + 1);
      const ids = Array.from({ length: 500 }, (_, i) => `d${i}`);
      await store.addExports([{ ids, metadata: null }], T0);
      for (const [i, id] of ids.entries()) {
        await store.commitChanges([completed(id, T0 + 10 + i)], plainEvent, [kept], T0 + 10 + i);
        await deliver(id, T0 + 10 + i);
      }
      await store.addExports([{ ids: ['late'], metadata: null }], T0);
      await store.commitChanges([completed('late', T0 + 10_000)], plainEvent, [kept], T0 + 10_000);
      const scrape = () => store.deliveryCounts([kept.key]);
      expect(await scrape()).toMatchObject({ pending: 2, orphaned: 1, oldestPendingAt: T0 + 10_000 });
      // The next scrape starts at the late event: not at the first (still pending, to `gone`),
      // which would read the 500 delivered since at every scrape.
      gets.ran.length = 0;
      expect(await scrape()).toMatchObject({ pending: 2, orphaned: 1, oldestPendingAt: T0 + 10_000 });
      expect(floorsOf(gets.ran)).toEqual([T0 + 10_000]);
    } finally {
      gets.restore();
      await store.close();
    }
  });

  it("counts the orphaned deliveries without reading the configured endpoints' backlog", async () => {
    // Every statement a scrape runs, with its arguments, to see how SQLite plans it.
    const gets = recordGets();
    const { ran } = gets;
    const store = await openSqliteStore({ path: ':memory:' });
    const plans = new Database(':memory:');
    try {
      for (const sql of MIGRATIONS) plans.exec(sql);
      const refs = ['a', 'b', 'c', 'd'].map((n) => ({
        key: endpointKey(`https://${n}.example/`),
        label: `https://${n}.example/`,
      }));
      await store.addExports([{ ids: ['x', 'y'], metadata: null }], T0);
      await store.commitChanges([completed('x', T0 + 1), completed('y', T0 + 2)], plainEvent, refs, T0 + 2);
      const configured = [refs[2]!.key, refs[0]!.key];
      // The first scrape counts the deliveries by status (once, then kept by every write).
      expect(await store.deliveryCounts(configured)).toMatchObject({ pending: 8, orphaned: 4 });
      ran.length = 0;
      expect((await store.deliveryCounts(configured)).orphaned).toBe(4);
      expect(await store.deliveryCounts(configured)).toMatchObject({
        pending: 8,
        orphaned: 4,
        oldestPendingAt: T0 + 2,
      });
      expect(ran.length).toBeGreaterThan(0);
      for (const { source, args } of ran) {
        const plan = (plans.prepare(`EXPLAIN QUERY PLAN ${source}`).all(...args) as Array<{ detail: string }>)
          .map((r) => r.detail)
          .join('; ');
        // Searches of the due index by endpoint key, and of events by time or id; no scan.
        expect(plan, source).not.toMatch(/\bSCAN (deliveries|d|e|events)\b/);
      }
    } finally {
      gets.restore();
      plans.close();
      await store.close();
    }
  });

  it('refuses a second store on a database that is open, and opens it once the first is closed', async () => {
    const path = openDataDir(freshDir());
    const first = await openSqliteStore({ path });
    await first.addExports([{ ids: ['a'], metadata: null }], T0);
    const message = await storeErrorOf(() => openSqliteStore({ path }));
    expect(message).toBe(
      `database ${path} is in use by another process (another sbg-export-watcher on the same ` +
        'WATCHER_DATA_DIR?): one daemon per data directory; stop the other, or give this one a directory of its own',
    );
    // The refused open changed nothing: the first store goes on.
    await first.addExports([{ ids: ['b'], metadata: null }], T0);
    await first.close();
    const second = await openSqliteStore({ path });
    try {
      expect(byIdSorted(await second.loadActive()).map((e) => e.id)).toEqual(['a', 'b']);
    } finally {
      await second.close();
    }
  });

  it('refuses a database file it cannot write (opened read-only, it would fail at the first write)', async (ctx) => {
    const path = await databaseWithExports(1);
    const undo = makeUnwritable(path);
    if (undo === undefined) return ctx.skip();
    try {
      const message = await storeErrorOf(() => openSqliteStore({ path }));
      expect(message).toMatch(new RegExp(`^database ${path}: .*SQLITE_READONLY`));
    } finally {
      undo();
    }
    // Given back its mode, it opens with what it held.
    const store = await openSqliteStore({ path });
    try {
      expect((await store.loadActive()).map((e) => e.id)).toEqual(['export_0']);
    } finally {
      await store.close();
    }
  });

  it('refuses to start without its lock: a lock file it cannot write gives none', async (ctx) => {
    const path = await databaseWithExports(1);
    const undo = makeUnwritable(`${path}.lock`);
    if (undo === undefined) return ctx.skip();
    try {
      // SQLite would open it read-only, where BEGIN EXCLUSIVE takes no lock: two daemons at once.
      const message = await storeErrorOf(() => openSqliteStore({ path }));
      expect(message).toBe(
        `database ${path}: cannot lock it with ${path}.lock (SQLITE_READONLY: attempt to write a readonly database)`,
      );
    } finally {
      undo();
    }
  });

  it('counts by status the deliveries a database held before the process opened it', async () => {
    const path = join(emptyDir(), 'held.db');
    const raw = new Database(path);
    for (const sql of MIGRATIONS) raw.exec(sql);
    const event = raw.prepare(
      "INSERT INTO events (id, export_id, type, body, created_at) VALUES (?, ?, 'export.completed', '{}', ?)",
    );
    const delivery = raw.prepare(
      `INSERT INTO deliveries (event_seq, endpoint_key, endpoint_label, status, attempts, series_started_at)
       VALUES (?, 'k', 'https://a.example/', ?, 1, ?)`,
    );
    const statuses = ['pending', 'pending', 'delivered', 'failed', 'gone', 'delivered', 'delivered'];
    for (const [i, status] of statuses.entries()) {
      const { lastInsertRowid } = event.run(`evt_x${i}`, `x${i}`, T0 + i);
      delivery.run(lastInsertRowid, status, T0);
    }
    raw.pragma(`user_version = ${SCHEMA_VERSION}`);
    raw.close();
    const store = await openSqliteStore({ path });
    try {
      expect(await store.deliveryCounts()).toEqual({
        pending: 2,
        delivered: 3,
        failed: 1,
        gone: 1,
        orphaned: 0,
        oldestPendingAt: T0,
      });
    } finally {
      await store.close();
    }
  });

  it('brings a database at an older schema (0: empty) up to the latest', async () => {
    const path = join(emptyDir(), 'empty.db');
    new Database(path).close();
    const store = await openSqliteStore({ path });
    await store.addExports([{ ids: ['a'], metadata: null }], T0);
    await store.close();
    const raw = new Database(path, { readonly: true });
    try {
      expect(raw.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    } finally {
      raw.close();
    }
  });

  describe('refuses a file that is not a usable database, naming it and leaving it untouched', () => {
    it.each([
      ['random bytes', () => randomBytes(8192)],
      ['a text file', () => Buffer.from('exports:\n  - a\n  - b\n')],
    ])('%s', async (_what, contents) => {
      const path = join(emptyDir(), 'watcher.db');
      const bytes = contents();
      writeFileSync(path, bytes);

      const message = await storeErrorOf(() => openSqliteStore({ path }));
      expect(message).toContain(path);
      expect(message).toContain('left untouched');
      expect(message).not.toContain('\n');
      expect(readFileSync(path).equals(bytes)).toBe(true);
      expect(readdirSync(join(path, '..'))).toEqual(['watcher.db']);
    });

    it('a real database cut in half', async () => {
      const path = await databaseWithExports(2000);
      truncateSync(path, Math.floor(statSync(path).size / 2));
      const bytes = readFileSync(path);

      const message = await storeErrorOf(() => openSqliteStore({ path }));
      expect(message).toContain(path);
      expect(message).toContain('left untouched');
      expect(readFileSync(path).equals(bytes)).toBe(true);
    });

    it('a real database that reads, but fails the integrity check', async () => {
      // One more page than the tables use, and a header that counts it: "Page n: never used".
      const path = await databaseWithExports(10);
      const original = readFileSync(path);
      const bytes = Buffer.concat([original, Buffer.alloc(original.readUInt16BE(16))]);
      bytes.writeUInt32BE(original.readUInt32BE(28) + 1, 28);
      writeFileSync(path, bytes);

      const message = await storeErrorOf(() => openSqliteStore({ path }));
      expect(message).toMatch(/integrity check: .*never used/);
      expect(message).toContain(path);
      expect(message).not.toContain('\n');
      expect(readFileSync(path).equals(bytes)).toBe(true);
    });
  });

  it('says which file it cannot open when its directory does not exist', async () => {
    const path = join(freshDir(), 'missing', 'watcher.db');
    const message = await storeErrorOf(() => openSqliteStore({ path }));
    expect(message).toContain(path);
    expect(existsSync(path)).toBe(false);
  });

  it('keeps the last outcome of a delivery when a redelivery starts a new series', async () => {
    const store = await openSqliteStore({ path: ':memory:' });
    try {
      const ref = { key: 'k', label: 'https://a.example/' };
      await store.addExports([{ ids: ['a'], metadata: null }], T0);
      await store.commitChanges(
        [
          {
            id: 'a',
            from: 'UNKNOWN',
            to: 'FAILED',
            at: T0,
            misses: 0,
            lastMiss: null,
            export: null,
            error: null,
          },
        ],
        () => ({ id: 'evt_a_failed', type: 'export.failed', exportId: 'a', body: '{}' }),
        [ref],
        T0,
      );
      await store.recordAttempts([
        {
          eventId: 'evt_a_failed',
          endpointKey: 'k',
          seriesStartedAt: T0,
          status: 'failed',
          attempts: 9,
          nextAttemptAt: null,
          lastStatus: 500,
          lastError: 'HTTP 500',
          finishedAt: T0 + 1,
        },
      ]);
      await store.redeliver('evt_a_failed', [ref], T0 + 2);
      expect((await store.getEvent('evt_a_failed'))?.deliveries[0]).toMatchObject({
        status: 'pending',
        attempts: 0,
        lastStatus: 500,
        lastError: 'HTTP 500',
        finishedAt: null,
      });
    } finally {
      await store.close();
    }
  });
});

describe('openDataDir', () => {
  let file: string;
  beforeAll(() => {
    file = join(emptyDir(), 'a-file');
    writeFileSync(file, 'not a directory');
  });

  it('is not stopped by a write probe that a process killed with the same pid left behind', () => {
    const dir = emptyDir();
    writeFileSync(join(dir, `.write-probe-${process.pid}`), '');
    expect(openDataDir(dir)).toBe(join(dir, 'watcher.db'));
    expect(readdirSync(dir)).toEqual([`.write-probe-${process.pid}`]);
  });

  it('creates a missing directory, parents included, and leaves no probe behind', () => {
    const dir = join(freshDir(), 'nested', 'data');
    expect(openDataDir(dir)).toBe(join(dir, 'watcher.db'));
    expect(statSync(dir).isDirectory()).toBe(true);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('accepts an existing directory and leaves its files alone', () => {
    const dir = emptyDir();
    writeFileSync(join(dir, 'watcher.db'), 'whatever is there');
    expect(openDataDir(dir)).toBe(join(dir, 'watcher.db'));
    expect(readdirSync(dir)).toEqual(['watcher.db']);
    expect(readFileSync(join(dir, 'watcher.db'), 'utf8')).toBe('whatever is there');
  });

  it('refuses a path that is a file', () => {
    expect(() => openDataDir(file)).toThrow(StoreError);
    expect(() => openDataDir(file)).toThrow(`WATCHER_DATA_DIR ${file}: it is not a directory`);
  });

  it('refuses a directory it cannot create (a parent is a file)', () => {
    const dir = join(file, 'data');
    expect(() => openDataDir(dir)).toThrow(`WATCHER_DATA_DIR ${dir}: cannot create it (ENOTDIR)`);
  });

  it('creates the missing levels of a nested path', () => {
    const dir = join(file, '..', 'a', 'b', 'c');
    expect(openDataDir(dir)).toBe(join(dir, 'watcher.db'));
    expect(statSync(dir).isDirectory()).toBe(true);
  });

  // Node's recursive mkdir spins for ever on such a path (ENOENT, then the parent, which exists).
  it.skipIf(!existsSync('/proc/self'))('refuses a path it cannot create under /proc, at once', () => {
    expect(() => openDataDir('/proc/sbg-watcher-nope/data')).toThrow(
      'WATCHER_DATA_DIR /proc/sbg-watcher-nope/data: cannot create it (ENOENT)',
    );
  });

  it.skipIf(!canMakeReadOnlyDir)('refuses a directory it cannot write in, and writes nothing there', () => {
    const { path: dir, cleanup } = readOnlyDir();
    try {
      const before = readdirSync(dir);
      expect(() => openDataDir(dir)).toThrow(`WATCHER_DATA_DIR ${dir}: cannot write there (EACCES)`);
      expect(readdirSync(dir)).toEqual(before);
    } finally {
      cleanup();
    }
  });
});

/**
 * Records every `Statement#get` of every database (its SQL and arguments) until `restore()`: the
 * statements a reading runs, and where it starts.
 */
function recordGets(method: 'get' | 'all' = 'get'): {
  ran: Array<{ source: string; args: unknown[] }>;
  restore: () => void;
} {
  const statement = Object.getPrototypeOf(new Database(':memory:').prepare('SELECT 1')) as Record<
    string,
    (...args: unknown[]) => unknown
  >;
  const original = statement[method] as (...args: unknown[]) => unknown;
  const ran: Array<{ source: string; args: unknown[] }> = [];
  statement[method] = function (this: { source: string }, ...args: unknown[]) {
    ran.push({ source: this.source, args });
    return original.apply(this, args);
  };
  const restore = () => {
    statement[method] = original;
  };
  return { ran, restore };
}

/** Where each reading of the oldest pending event in `ran` started its walk of the events. */
function floorsOf(ran: ReadonlyArray<{ source: string; args: unknown[] }>): number[] {
  return ran.filter((r) => r.source.includes('INDEXED BY events_by_time')).map((r) => r.args[0] as number);
}

/** `evt_<id>` delivered to the endpoint `key` at `at`, in the series started then. */
function deliveredRecord(id: string, key: string, at: number): AttemptRecord {
  return {
    eventId: `evt_${id}_completed`,
    endpointKey: key,
    seriesStartedAt: at,
    status: 'delivered',
    attempts: 1,
    nextAttemptAt: null,
    lastStatus: 200,
    lastError: null,
    finishedAt: at,
  };
}

function byIdSorted<T extends { id: string }>(items: readonly T[]): T[] {
  return [...items].sort((a, b) => (a.id < b.id ? -1 : 1));
}

/** UNKNOWN to COMPLETED, with nothing else to say. */
function completed(id: string, at: number): ExportChange {
  return move(id, 'UNKNOWN', 'COMPLETED', at);
}
