/**
 * Leader election on PostgreSQL (src/store/leader.ts): the timing rules without a server; then, on
 * a real server, two elections on one database (exactly one leader), a graceful handover, a
 * terminated backend, a silent network cut (a TCP proxy in between that stops forwarding without
 * closing), each timed against the bounds in the file header; then a lease that runs out while
 * the event loop is blocked, `stop` on a cut-off connection, a throwing `onChange`, and a wrong
 * password (never logged). The elections use timeoutMs 1500 (retry 200 ms; one test 400/50), so
 * the file takes a few seconds.
 *
 * Needs `WATCHER_TEST_DATABASE_URL` (see `test/helpers/postgres.ts`); skipped without it, failing
 * without a working server when `WATCHER_TEST_REQUIRE_POSTGRES=1`. Set `WATCHER_TEST_TIMINGS=1` to
 * print the measured times.
 */
import { performance } from 'node:perf_hooks';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  DEFAULT_LEADER_TIMEOUT_MS,
  LeaderElection,
  type LeaderElectionOptions,
  type LeaderRole,
  leaderLockKey,
  leaderTiming,
} from '../../src/store/leader.js';
import { describeWithPostgres } from '../helpers/postgres.js';
import { CuttableProxy } from '../helpers/tcp-proxy.js';

const TIMEOUT_MS = 1500;
const RETRY_MS = 200;
/** Room for a timer that fires late or a loaded machine, on bounds measured in the tests. */
const SLACK_MS = 150;

interface Change {
  name: string;
  role: LeaderRole;
  at: number;
}

/** Waits (polling every 2 ms) until `predicate` holds; fails naming `what` after `ms`. */
async function until(predicate: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** The most elections that were leader at the same moment, replaying the changes in order. */
function mostLeadersAtOnce(changes: readonly Change[]): number {
  const roles = new Map<string, LeaderRole>();
  let most = 0;
  for (const change of changes) {
    roles.set(change.name, change.role);
    most = Math.max(most, [...roles.values()].filter((role) => role === 'leader').length);
  }
  return most;
}

function report(label: string, values: Record<string, number>): void {
  if (process.env.WATCHER_TEST_TIMINGS !== '1') return;
  const shown = Object.entries(values).map(([k, v]) => `${k}=${Math.round(v)}ms`);
  console.info(`[leader timings] ${label}: ${shown.join(' ')}`);
}

describe('leader election timing', () => {
  it('derives every timeout from timeoutMs within the bounds the header states', () => {
    for (const timeoutMs of [200, 1500, 5000, DEFAULT_LEADER_TIMEOUT_MS, 60_000]) {
      for (const retryMs of [undefined, 10, Math.floor(timeoutMs / 4)]) {
        const t = leaderTiming(timeoutMs, retryMs);
        const R = t.retryMs;
        expect(t.probeIntervalMs + t.probeTimeoutMs + R).toBeLessThanOrEqual(timeoutMs);
        expect(t.leaseMs).toBeLessThanOrEqual(timeoutMs / 2);
        expect(t.probeIntervalMs + t.probeTimeoutMs).toBeLessThanOrEqual(t.leaseMs);
        // The leader has stepped down before the server lets the lock go...
        expect(t.serverIdleTimeoutMs - t.leaseMs).toBeGreaterThanOrEqual(0.22 * timeoutMs);
        // ...the server never ends a healthy session between two probes...
        expect(t.serverIdleTimeoutMs).toBeGreaterThanOrEqual(2 * t.probeIntervalMs);
        // ...and a follower has the lock within timeoutMs of a silent cut, with R/2 to spare.
        expect(t.serverIdleTimeoutMs + R + R / 2).toBeLessThanOrEqual(timeoutMs);
        expect(t.probeTimeoutMs).toBeGreaterThan(0);
      }
    }
    expect(leaderTiming()).toMatchObject({
      timeoutMs: 15_000,
      retryMs: 2000,
      leaseMs: 6000,
      probeTimeoutMs: 4000,
      serverIdleTimeoutMs: 12_000,
      yieldMs: 3000,
    });
  });

  it('refuses timeouts that cannot meet those bounds', () => {
    expect(() => leaderTiming(100)).toThrow(RangeError);
    expect(() => leaderTiming(1500, 500)).toThrow(/quarter/);
    expect(() => leaderTiming(1500, 0)).toThrow(RangeError);
    expect(() => leaderTiming(Number.NaN)).toThrow(RangeError);
  });

  it('derives a fixed signed 64-bit lock key from a name', () => {
    const key = leaderLockKey('sbg-export-watcher');
    expect(key).toBe(leaderLockKey('sbg-export-watcher'));
    expect(key).not.toBe(leaderLockKey('sbg-export-watcher-2'));
    expect(BigInt.asIntN(64, key)).toBe(key);
    expect(new LeaderElection({ url: 'postgres://u:p@h/d' }).lockKey).toBe(key);
    expect(new LeaderElection({ url: 'postgres://u:p@h/d', lockKey: 42 }).lockKey).toBe(42n);
    expect(() => new LeaderElection({ url: 'postgres://u:p@h/d', lockKey: 2n ** 63n })).toThrow(RangeError);
  });

  it('refuses a URL that does not parse without repeating it', () => {
    let message = '';
    try {
      new LeaderElection({ url: 'not a url with secret-p4ssword' });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/not a valid URL/);
    expect(message).not.toContain('secret-p4ssword');
  });

  it('does nothing on stop before start, and will not start after stop', async () => {
    const changes: LeaderRole[] = [];
    const election = new LeaderElection({
      url: 'postgres://u:p@127.0.0.1:1/d',
      onChange: (role) => changes.push(role),
    });
    await election.stop();
    await election.stop();
    election.start();
    expect(election.role).toBe('disconnected');
    expect(changes).toEqual([]);
  });
});

await describeWithPostgres('leader election on PostgreSQL', (server) => {
  let url = '';
  let changes: Change[] = [];
  let lines: string[] = [];
  let elections: LeaderElection[] = [];

  beforeEach(async () => {
    url = await server.createDatabase();
    changes = [];
    lines = [];
    elections = [];
  });

  afterEach(async () => {
    await Promise.all(elections.map((election) => election.stop()));
    await server.dropDatabase(url);
    const password = server.url.password;
    if (password !== '') {
      for (const line of lines) expect(line).not.toContain(password);
    }
  });

  function elect(name: string, options: Partial<LeaderElectionOptions> = {}): LeaderElection {
    const election = new LeaderElection({
      url,
      timeoutMs: TIMEOUT_MS,
      retryMs: RETRY_MS,
      log: pino({ level: 'debug' }, { write: (line: string) => lines.push(line) }),
      onChange: (role) => changes.push({ name, role, at: performance.now() }),
      ...options,
    });
    elections.push(election);
    election.start();
    return election;
  }

  /** When `name` last became `role` (after `after`), from the recorded changes. */
  function changedAt(name: string, role: LeaderRole, after = 0): number {
    const found = changes.filter((c) => c.name === name && c.role === role && c.at >= after).at(0);
    if (found === undefined) throw new Error(`${name} never became ${role}`);
    return found.at;
  }

  /** The pids of the backends that hold an advisory lock in this test's database. */
  async function lockHolders(): Promise<number[]> {
    const rows = await server.query<{ pid: number }>(
      url,
      `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    );
    return rows.map((row) => row.pid);
  }

  it('makes exactly one of two elections the leader, and keeps it so', async () => {
    const startedAt = Date.now();
    const a = elect('a');
    const b = elect('b');
    await until(() => a.role !== 'disconnected' && b.role !== 'disconnected', 'both to connect');
    await until(() => [a.role, b.role].sort().join() === 'follower,leader', 'one leader, one follower');
    const leader = a.isLeader ? a : b;
    expect(leader.since).toBeGreaterThanOrEqual(startedAt);
    expect(leader.since).toBeLessThanOrEqual(Date.now());
    // Several probe and retry rounds later, still the same one.
    await new Promise((resolve) => setTimeout(resolve, 3 * RETRY_MS));
    expect(leader.isLeader).toBe(true);
    expect([a.role, b.role].sort()).toEqual(['follower', 'leader']);
    expect(await lockHolders()).toHaveLength(1);
    expect(mostLeadersAtOnce(changes)).toBe(1);
  });

  it('hands over within retryMs when the leader stops, and stop is idempotent', async () => {
    const a = elect('a');
    await until(() => a.isLeader, 'a to lead');
    const b = elect('b');
    await until(() => b.role === 'follower', 'b to follow');
    const stopping = performance.now();
    const stopped = a.stop();
    // Stepped down before anything else happened.
    expect(a.role).toBe('disconnected');
    await stopped;
    const stopMs = performance.now() - stopping;
    await until(() => b.isLeader, 'b to take over');
    const takeover = changedAt('b', 'leader') - changedAt('a', 'disconnected', stopping);
    report('graceful stop', { takeover, stop: stopMs });
    expect(takeover).toBeLessThanOrEqual(RETRY_MS + SLACK_MS);
    await a.stop();
    expect(a.role).toBe('disconnected');
    expect(mostLeadersAtOnce(changes)).toBe(1);
    expect(changes.filter((c) => c.name === 'a').map((c) => c.role)).toEqual(['leader', 'disconnected']);
  });

  it('steps down at once when its backend is terminated, and the other takes over', async () => {
    const a = elect('a');
    await until(() => a.isLeader, 'a to lead');
    const b = elect('b');
    await until(() => b.role === 'follower', 'b to follow');
    const [pid] = await lockHolders();
    const killing = performance.now();
    await server.query(url, 'SELECT pg_terminate_backend($1)', [pid]);
    await until(() => b.isLeader, 'b to take over');
    const stepDown = changedAt('a', 'disconnected', killing) - killing;
    const takeover = changedAt('b', 'leader', killing) - killing;
    // a comes back, and yields: b keeps the lock.
    await until(() => a.role === 'follower', 'a to reconnect as a follower');
    report('backend terminated', { stepDown, takeover });
    expect(stepDown).toBeLessThan(RETRY_MS / 2);
    expect(takeover).toBeLessThanOrEqual(stepDown + RETRY_MS + SLACK_MS);
    expect(b.isLeader).toBe(true);
    expect(mostLeadersAtOnce(changes)).toBe(1);
    expect(lines.join('\n')).toMatch(/57P01/);
  });

  it('steps down within timeoutMs/2 of a silent network cut; the other leads only after', async () => {
    const target = new URL(url);
    const proxy = await CuttableProxy.start({ host: target.hostname, port: Number(target.port || 5432) });
    try {
      const a = elect('a', { url: proxy.via(url) });
      await until(() => a.isLeader, 'a to lead through the proxy');
      const b = elect('b');
      await until(() => b.role === 'follower', 'b to follow');
      const cut = performance.now();
      proxy.cut();
      await until(() => b.isLeader, 'b to take over', 3 * TIMEOUT_MS);
      const stepDown = changedAt('a', 'disconnected', cut) - cut;
      const takeover = changedAt('b', 'leader', cut) - cut;
      const stopping = performance.now();
      await a.stop();
      const stopMs = performance.now() - stopping;
      report('silent network cut', { stepDown, takeover, gap: takeover - stepDown, stop: stopMs });
      expect(stepDown).toBeLessThanOrEqual(TIMEOUT_MS / 2);
      expect(takeover).toBeGreaterThan(stepDown);
      expect(takeover).toBeLessThanOrEqual(TIMEOUT_MS);
      expect(mostLeadersAtOnce(changes)).toBe(1);
      // a is cut off while reconnecting: stop still returns promptly.
      expect(stopMs).toBeLessThan(2 * a.timing.probeTimeoutMs + SLACK_MS);
    } finally {
      await proxy.close();
    }
  });

  it('stops being leader as soon as the lease runs out, even before its timers run', async () => {
    const a = elect('a', { timeoutMs: 400, retryMs: 50 });
    await until(() => a.isLeader, 'a to lead');
    const before = changes.length;
    // The event loop is blocked past the lease: no probe, no timer can run meanwhile.
    const blockUntil = performance.now() + a.timing.leaseMs + 50;
    let spins = 0;
    while (performance.now() < blockUntil) spins += 1;
    expect(spins).toBeGreaterThan(0);
    expect(changes).toHaveLength(before);
    expect(a.isLeader).toBe(false);
    expect(changes.slice(before)).toMatchObject([{ name: 'a', role: 'disconnected' }]);
    // It reconnects and, alone, leads again.
    await until(() => a.isLeader, 'a to lead again');
  });

  it('returns from stop promptly when the leader is cut off, and survives a throwing onChange', async () => {
    const target = new URL(url);
    const proxy = await CuttableProxy.start({ host: target.hostname, port: Number(target.port || 5432) });
    try {
      const a = elect('a', {
        url: proxy.via(url),
        onChange: (role) => {
          changes.push({ name: 'a', role, at: performance.now() });
          throw new Error(`the application failed on ${role}`);
        },
      });
      await until(() => a.isLeader, 'a to lead through the proxy');
      proxy.cut();
      const stopping = performance.now();
      await a.stop();
      const stopMs = performance.now() - stopping;
      report('stop while cut off', { stop: stopMs });
      // The unlock times out (Q), then the socket is destroyed.
      expect(stopMs).toBeLessThan(2 * a.timing.probeTimeoutMs + SLACK_MS);
      expect(changes.map((c) => c.role)).toEqual(['leader', 'disconnected']);
      expect(lines.filter((l) => l.includes('onChange threw'))).toHaveLength(2);
    } finally {
      await proxy.close();
    }
  });

  it('keeps trying with a wrong password, and never logs it', async () => {
    const wrong = new URL(url);
    wrong.password = 'wrong-s3cret-password';
    const a = elect('a', { url: wrong.href });
    await until(() => lines.filter((l) => l.includes('cannot connect')).length >= 2, 'two failed connects');
    expect(a.role).toBe('disconnected');
    const all = lines.join('\n');
    expect(all).toMatch(/28P01/);
    expect(all).not.toContain('wrong-s3cret-password');
    await a.stop();
  });
});
