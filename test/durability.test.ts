/**
 * Durable state, end to end: the daemon as a real process on a data directory, the simulator and a
 * verifying receiver in this process, all on loopback. The daemon is killed with SIGKILL at points
 * chosen by progress (never by sleeping), stopped with SIGTERM, and restarted on the same
 * directory; what the receiver got and what the control API says are checked against the
 * simulator's truth.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { type Answer, WebhookReceiver } from '../src/dev/receiver.js';
import { Simulator } from '../src/dev/simulator.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import { callJson } from './helpers/http.js';
import { canMakeReadOnlyDir, makeUnwritable, readOnlyDir } from './helpers/no-access.js';
import { type CliProcess, daemonEnv, killAll, spawnCli } from './helpers/spawn.js';

const TOKEN = 'tok_durability_7Qe2';
const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';

let sim: Simulator | undefined;
let receiver: WebhookReceiver | undefined;
let dataDir: string | undefined;

afterEach(async () => {
  killAll();
  await receiver?.close();
  await sim?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  sim = undefined;
  receiver = undefined;
  dataDir = undefined;
});

interface Running {
  proc: CliProcess;
  api: string;
}

async function startWorld(respond?: (id: string, attempt: number) => Answer) {
  sim = new Simulator({
    seed: 21,
    token: TOKEN,
    quota: { limit: 1_000_000, windowMs: 60_000 },
    timing: { pendingMs: [200, 1500], runningMs: [300, 5000] },
    failRate: 0.2,
  });
  receiver = new WebhookReceiver({
    secret: SECRET,
    ...(respond ? { respond: (req, attempt) => respond(req.id, attempt) } : {}),
  });
  const simUrl = await sim.start();
  const hookUrl = await receiver.start();
  dataDir = mkdtempSync(join(tmpdir(), 'sbg-durable-'));
  return { simUrl, hookUrl, sim, receiver, dataDir };
}

function durableEnv(simUrl: string, hookUrl: string, dir: string, extra: Record<string, string> = {}) {
  return daemonEnv(simUrl, hookUrl, SECRET, { SB_AUTH_TOKEN: TOKEN, WATCHER_DATA_DIR: dir, ...extra });
}

async function startDaemon(env: Record<string, string>): Promise<Running> {
  const proc = spawnCli(['run'], env);
  const line = await proc.waitForLine((l) => l.msg === 'control API listening');
  return { proc, api: String(line.url) };
}

async function kill9(d: Running): Promise<void> {
  d.proc.child.kill('SIGKILL');
  await d.proc.exited;
}

async function watchIds(d: Running, ids: readonly string[]): Promise<void> {
  for (let i = 0; i < ids.length; i += 250) {
    const res = await callJson('POST', `${d.api}/v1/exports`, {
      ids: ids.slice(i, i + 250),
      metadata: { n: i },
    });
    expect(res.status).toBe(202);
  }
}

/** Every record the daemon holds, through the paged list. */
async function allRecords(d: Running): Promise<Array<{ id: string; state: string }>> {
  const out: Array<{ id: string; state: string }> = [];
  let cursor: string | null = null;
  do {
    const query: string = cursor ? `&cursor=${cursor}` : '';
    const page = await callJson('GET', `${d.api}/v1/exports?limit=1000${query}`);
    out.push(...(page.json.items as Array<{ id: string; state: string }>));
    cursor = page.json.next_cursor as string | null;
  } while (cursor);
  return out;
}

/** The terminal webhook-id each export must produce, from the simulator's final state. */
function expectedEvents(
  s: Simulator,
  ids: readonly string[],
  unknown: readonly string[],
): Map<string, string> {
  const expected = new Map<string, string>();
  for (const id of ids) {
    const state = s.stateOf(id);
    expected.set(
      id,
      `evt_${id}_${state === 'FAILED' ? 'failed' : state === 'COMPLETED' ? 'completed' : 'not-finished'}`,
    );
  }
  for (const id of unknown) expected.set(id, `evt_${id}_lost`);
  return expected;
}

describe('kill -9 during a run', () => {
  it('three SIGKILLs in a 1,000-export run: every terminal event delivered, nothing forgotten or wrongly final', async () => {
    const w = await startWorld();
    const env = durableEnv(w.simUrl, w.hookUrl, w.dataDir);
    const ids = w.sim.createExports(1000);
    const unknown = Array.from({ length: 20 }, (_, i) => `gone-${i}`);
    const all = [...ids, ...unknown];

    // 1: killed right after the first half was accepted, before any of it may have been checked.
    let d = await startDaemon(env);
    await watchIds(d, all.slice(0, 510));
    await kill9(d);
    d = await startDaemon(env);
    await watchIds(d, all.slice(510));
    // 2 and 3: killed while events are being delivered.
    await w.receiver.waitFor((r) => r.acceptedIds().size >= 300, 60_000);
    await kill9(d);
    d = await startDaemon(env);
    await w.receiver.waitFor((r) => r.acceptedIds().size >= 700, 60_000);
    await kill9(d);
    d = await startDaemon(env);

    // The simulator's truth is read as the receiver hears: an export still running has no event yet.
    const allDelivered = () => {
      const expected = expectedEvents(w.sim, ids, unknown);
      return [...expected.values()].every((id) => w.receiver.acceptedIds().has(id));
    };
    await w.receiver.waitFor(allDelivered, 90_000);
    const wanted = new Set(expectedEvents(w.sim, ids, unknown).values());

    // Nothing wrongly final: no event but the one each export's true outcome makes.
    const received = w.receiver.received;
    expect(received.filter((h) => !wanted.has(h.id)).map((h) => h.id)).toEqual([]);
    // Duplicates only under the same webhook-id, with the same body.
    const bodies = new Map<string, string>();
    for (const h of received) {
      expect(h.verified).toBe(true);
      const first = bodies.get(h.id);
      if (first === undefined) bodies.set(h.id, h.body);
      else expect(h.body).toBe(first);
    }
    // No watched id forgotten: each is known, in its true terminal state.
    const records = await allRecords(d);
    expect(records).toHaveLength(all.length);
    const truth = (id: string) => (unknown.includes(id) ? 'LOST' : w.sim.stateOf(id));
    expect(records.filter((r) => r.state !== truth(r.id))).toEqual([]);
    const deliveredTwice = w.receiver.accepted().length - w.receiver.acceptedIds().size;
    console.info(
      `kill -9 x3: ${all.length} exports, ${wanted.size} terminal events, ${received.length} attempts received, ${deliveredTwice} accepted more than once`,
    );
  }, 180_000);
});

describe('SIGTERM and restart', () => {
  it('resumes watching where it stopped and sends what the receiver refused before', async () => {
    let accepting = false;
    const w = await startWorld(() => (accepting ? 204 : 503));
    const env = durableEnv(w.simUrl, w.hookUrl, w.dataDir);
    const quick = w.sim.createExports(30, { pendingMs: 100, runningMs: 200, outcome: 'COMPLETED' });
    const slow = w.sim.createExports(20, { pendingMs: 100, runningMs: 60_000 });
    let d = await startDaemon(env);
    await watchIds(d, [...quick, ...slow]);
    // Every quick one finished and was refused at least once; the slow ones are RUNNING.
    await w.receiver.waitFor(
      (r) => quick.every((id) => r.received.some((h) => h.id === `evt_${id}_completed`)),
      30_000,
    );
    await d.proc.waitForLine(
      (l) => l.msg === 'export state changed' && l.to === 'RUNNING' && slow.includes(String(l.export_id)),
    );
    d.proc.child.kill('SIGTERM');
    expect((await d.proc.exited).code).toBe(0);
    const kept = d.proc.lines.find(
      (l) => l.msg === 'state kept for the next start: watching and deliveries resume there',
    );
    expect(kept).toMatchObject({ watched: 20 });
    expect(kept?.pending_deliveries).toBeGreaterThan(0);

    accepting = true;
    d = await startDaemon(env);
    expect(d.proc.lines.find((l) => l.msg === 'watching exports from the store')).toMatchObject({
      watched: 20,
    });
    // The burst of resends that follows has its cause in the log: what the last run left owed.
    const owed = await d.proc.waitForLine(
      (l) => l.msg === 'webhook deliveries owed from before: sending them',
    );
    expect(owed.pending).toBe(kept?.pending_deliveries);
    await w.receiver.waitFor((r) => quick.every((id) => r.acceptedIds().has(`evt_${id}_completed`)), 30_000);
    const slowRecord = await callJson('GET', `${d.api}/v1/exports/${slow[0]}`);
    expect(slowRecord.json.state).toBe('RUNNING');
  }, 90_000);
});

describe('replay', () => {
  it('recovers events given up while the receiver was down with POST /v1/events/redeliver', async () => {
    let accepting = false;
    const w = await startWorld(() => (accepting ? 204 : 503));
    const since = new Date().toISOString();
    const env = durableEnv(w.simUrl, w.hookUrl, w.dataDir, { WATCHER_WEBHOOK_MAX_AGE: '1500ms' });
    const ids = w.sim.createExports(40, { pendingMs: 50, runningMs: 100, outcome: 'COMPLETED' });
    const d = await startDaemon(env);
    await watchIds(d, ids);
    const failedIds = async () => {
      const res = await callJson('GET', `${d.api}/v1/events?status=failed&limit=1000`);
      return (res.json.items as Array<{ id: string }>).map((e) => e.id);
    };
    // Given up once past the max age: the daemon's log says when, the store follows its batch.
    const givenUp = () => d.proc.lines.filter((l) => String(l.msg).startsWith('webhook delivery given up'));
    await d.proc.waitForLine(() => givenUp().length >= ids.length);
    await vi.waitFor(async () => expect(await failedIds()).toHaveLength(ids.length), { timeout: 5000 });
    expect(w.receiver.acceptedIds().size).toBe(0);

    accepting = true;
    const res = await callJson('POST', `${d.api}/v1/events/redeliver`, { since, status: 'failed' });
    expect(res.status).toBe(202);
    expect(res.json).toEqual({ deliveries: ids.length });
    const wanted = ids.map((id) => `evt_${id}_completed`);
    await w.receiver.waitFor((r) => wanted.every((id) => r.acceptedIds().has(id)), 30_000);
    expect([...w.receiver.acceptedIds()].sort()).toEqual([...wanted].sort());
    // Outcomes are written in batches, a few milliseconds after the receiver answered.
    await vi.waitFor(
      async () => {
        const delivered = await callJson('GET', `${d.api}/v1/events?status=delivered&limit=1000`);
        expect(delivered.json.items).toHaveLength(ids.length);
      },
      { timeout: 5000 },
    );
  }, 60_000);
});

describe('a data directory that cannot be used', () => {
  it('a file where the directory should be: exit 2 naming WATCHER_DATA_DIR', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sbg-notdir-'));
    dataDir = dir;
    const file = join(dir, 'a-file');
    writeFileSync(file, 'not a directory');
    const proc = spawnCli(['run'], durableEnv('http://127.0.0.1:9/v2', 'http://127.0.0.1:9/hook', file));
    const { code } = await proc.exited;
    expect(code).toBe(2);
    expect(proc.stderr()).toMatch(/^config: WATCHER_DATA_DIR .*a-file/m);
    expect(proc.stderr()).not.toContain('    at ');
  });

  it.skipIf(!canMakeReadOnlyDir)(
    'a directory it cannot write in: exit 2 naming it, nothing written',
    async () => {
      const { path: dir, cleanup } = readOnlyDir();
      try {
        const before = readdirSync(dir);
        const proc = spawnCli(['run'], durableEnv('http://127.0.0.1:9/v2', 'http://127.0.0.1:9/hook', dir));
        const { code } = await proc.exited;
        expect(code).toBe(2);
        expect(proc.stderr()).toContain(`config: WATCHER_DATA_DIR ${dir}: cannot write there (EACCES)`);
        expect(proc.stderr().trim().split('\n')).toHaveLength(1);
        expect(readdirSync(dir)).toEqual(before);
      } finally {
        cleanup();
      }
    },
  );

  it("a database file it cannot write (another user's): exit 2 naming it, before anything starts", async (ctx) => {
    const dir = mkdtempSync(join(tmpdir(), 'sbg-rodb-'));
    dataDir = dir;
    const db = join(dir, 'watcher.db');
    const store = await openSqliteStore({ path: db });
    await store.addExports([{ ids: ['a1'], metadata: null }], Date.now());
    await store.close();
    const undo = makeUnwritable(db);
    if (undo === undefined) return ctx.skip();
    try {
      const proc = spawnCli(['run'], durableEnv('http://127.0.0.1:9/v2', 'http://127.0.0.1:9/hook', dir));
      const { code } = await proc.exited;
      expect(code).toBe(2);
      expect(proc.stderr()).toMatch(/^config: database .*watcher\.db: .*SQLITE_READONLY/m);
      expect(proc.stderr().trim().split('\n')).toHaveLength(1);
      expect(proc.stdout()).not.toContain('control API listening');
    } finally {
      undo();
    }
  });

  it('a corrupt database: exit 2 naming the file, which is left as it was', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sbg-corrupt-'));
    dataDir = dir;
    const db = join(dir, 'watcher.db');
    const junk = Buffer.from('SQLite format 3\u0000'.padEnd(4096, '\u00ff'), 'latin1');
    writeFileSync(db, junk);
    const proc = spawnCli(['run'], durableEnv('http://127.0.0.1:9/v2', 'http://127.0.0.1:9/hook', dir));
    const { code } = await proc.exited;
    expect(code).toBe(2);
    expect(proc.stderr()).toContain('watcher.db');
    expect(proc.stderr()).not.toContain('    at ');
    expect(readFileSync(db).equals(junk)).toBe(true);
  });
});
