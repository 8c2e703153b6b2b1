import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { CheckResult } from '../src/platform/platform-client.js';
import { longestUnchecked, Scheduler, type SchedulerDeps } from '../src/polling/scheduler.js';
import { type Observation, Tracker, type Transition } from '../src/polling/tracker.js';
import { PlatformError } from '../src/shared/errors.js';

const T0 = Date.UTC(2026, 0, 1);

interface Harness {
  scheduler: Scheduler;
  tracker: Tracker;
  calls: Array<{ at: number; ids: string[] }>;
  notified: Transition[];
  logs: Array<Record<string, unknown>>;
  /** What the fake platform says about an id; default RUNNING. */
  state: Map<string, string>;
  /** Extra fields of the fake platform's object per id. */
  extra: Map<string, Record<string, unknown>>;
  /** When set, each call waits for this before answering. */
  gate: { wait?: Promise<void> };
  failNext: unknown[];
}

function harness(options: Partial<ConstructorParameters<typeof Scheduler>[1]> = {}): Harness {
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      logs.push(JSON.parse(String(chunk)));
      done();
    },
  });
  const tracker = new Tracker({ retainMs: 60_000 });
  const h: Harness = {
    tracker,
    calls: [],
    notified: [],
    logs,
    state: new Map(),
    extra: new Map(),
    gate: {},
    failNext: [],
    scheduler: undefined as unknown as Scheduler,
  };
  const deps: SchedulerDeps = {
    tracker,
    now: () => Date.now(),
    log: pino({ level: 'debug' }, sink),
    notify: (t) => h.notified.push(t),
    checkStatuses: async (ids): Promise<CheckResult> => {
      h.calls.push({ at: Date.now() - T0, ids: [...ids] });
      if (h.gate.wait) await h.gate.wait;
      const failure = h.failNext.shift();
      if (failure) throw failure;
      const observations: Observation[] = ids.map((id) => ({
        kind: 'resource',
        id,
        resource: { ...h.extra.get(id), id, state: h.state.get(id) ?? 'RUNNING' },
      }));
      return { observations, warnings: [] };
    },
  };
  h.scheduler = new Scheduler(deps, { pollIntervalMs: 1000, batchSize: 100, ...options });
  return h;
}

function add(h: Harness, ids: string[]): void {
  h.tracker.add(ids, null, Date.now());
  h.scheduler.poke();
}

const range = (n: number, prefix = 'e') => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

describe('Scheduler', () => {
  let h: Harness | undefined;
  beforeEach(() => {
    vi.useFakeTimers({ now: T0 });
  });
  afterEach(async () => {
    const stopping = h?.scheduler.stop();
    await vi.runOnlyPendingTimersAsync();
    await stopping;
    h = undefined;
    vi.useRealTimers();
  });

  it('checks a new id at once, then every poll interval', async () => {
    h = harness();
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(5000);
    expect(h.calls).toEqual([]);
    add(h, ['a']);
    await vi.advanceTimersByTimeAsync(0);
    expect(h.calls.map((c) => c.at)).toEqual([5000]);
    await vi.advanceTimersByTimeAsync(2999);
    expect(h.calls.map((c) => c.at)).toEqual([5000, 6000, 7000]);
  });

  it('packs due ids into as few calls as possible, at most maxOutstanding at once', async () => {
    h = harness({ maxOutstanding: 2 });
    let release!: () => void;
    h.gate.wait = new Promise((resolve) => {
      release = resolve;
    });
    add(h, range(250));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.calls.map((c) => c.ids.length)).toEqual([100, 100]);
    h.gate.wait = undefined;
    release();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.calls.map((c) => c.ids.length)).toEqual([100, 100, 50]);
    expect(new Set(h.calls.flatMap((c) => c.ids)).size).toBe(250);
  });

  it('never has two checks of one export in flight', async () => {
    h = harness({ maxOutstanding: 2 });
    let release!: () => void;
    h.gate.wait = new Promise((resolve) => {
      release = resolve;
    });
    add(h, ['a']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(h.calls).toHaveLength(1);
    h.gate.wait = undefined;
    release();
    await vi.advanceTimersByTimeAsync(0);
    await vi.advanceTimersByTimeAsync(1000);
    expect(h.calls).toHaveLength(2);
  });

  it('never checks a terminal export again, and notifies each transition once', async () => {
    h = harness();
    h.state.set('a', 'COMPLETED');
    add(h, ['a', 'b']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(10_000);
    const checksOfA = h.calls.filter((c) => c.ids.includes('a')).length;
    expect(checksOfA).toBe(1);
    expect(h.calls.filter((c) => c.ids.includes('b')).length).toBeGreaterThanOrEqual(10);
    expect(h.notified.map((t) => `${t.exportId}:${t.from}>${t.to}`)).toEqual([
      'a:UNKNOWN>COMPLETED',
      'b:UNKNOWN>RUNNING',
    ]);
    const lines = h.logs.filter((l) => l.msg === 'export state changed');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({ export_id: 'a', from: 'UNKNOWN', to: 'COMPLETED', level: 30 });
  });

  it('logs a FAILED transition at warn with the platform error', async () => {
    h = harness();
    const error = { status: 409, code: 9107, message: 'Location on volume already contains a file.' };
    h.state.set('f', 'FAILED');
    h.extra.set('f', { error });
    add(h, ['f']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.notified[0]).toMatchObject({ exportId: 'f', from: 'UNKNOWN', to: 'FAILED' });
    const line = h.logs.find((l) => l.msg === 'export state changed');
    expect(line).toMatchObject({ level: 40, export_id: 'f', from: 'UNKNOWN', to: 'FAILED', error });
  });

  it('serves the longest-unchecked first, so a short budget starves no export', async () => {
    // One call of 2 ids at a time, each taking 400 ms, for 7 exports due every second: the
    // capacity is 5 ids a second, less than the 7 due.
    h = harness({ maxOutstanding: 1, batchSize: 2 });
    // Every call takes 400 ms of fake time.
    h.gate = {
      get wait() {
        return new Promise<void>((resolve) => setTimeout(resolve, 400));
      },
    };
    add(h, range(7));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(60_000);
    const counts = range(7).map((id) => h!.calls.filter((c) => c.ids.includes(id)).length);
    expect(Math.min(...counts)).toBeGreaterThan(0);
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
  });

  it('after a failed call, pauses and then checks the same ids again', async () => {
    h = harness({ failurePauseMs: 2000 });
    h.failNext.push(new PlatformError('PLATFORM_UNAVAILABLE', 'platform answered 500', { status: 500 }));
    add(h, ['a']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(1999);
    expect(h.calls.map((c) => c.at)).toEqual([0]);
    await vi.advanceTimersByTimeAsync(1);
    expect(h.calls.map((c) => c.at)).toEqual([0, 2000]);
    expect(h.tracker.get('a')?.state).toBe('RUNNING');
    expect(h.logs.some((l) => l.msg === 'check failed after retries; ids stay due')).toBe(true);
  });

  it('after a 429, leaves the pause to the limiter and keeps the ids due', async () => {
    h = harness({ failurePauseMs: 60_000 });
    h.failNext.push(new PlatformError('PLATFORM_RATE_LIMITED', 'rate limit exceeded', { status: 429 }));
    add(h, ['a']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.calls.map((c) => c.at)).toEqual([0, 0]);
    expect(h.tracker.get('a')?.state).toBe('RUNNING');
  });

  it('checks once a minute while the token is refused, and resumes after', async () => {
    h = harness();
    const refused = () =>
      new PlatformError('PLATFORM_UNAUTHORIZED', 'platform refused the token (401)', { status: 401 });
    // Both first calls (two batches) are refused, then the first probe a minute later.
    h.failNext.push(refused(), refused(), refused());
    add(h, range(150));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.calls).toHaveLength(2);
    expect(h.scheduler.mode).toBe('unauthorized');
    await vi.advanceTimersByTimeAsync(59_999);
    expect(h.calls).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    // One probing call, not the whole backlog.
    expect(h.calls).toHaveLength(3);
    expect(h.scheduler.mode).toBe('unauthorized');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(h.scheduler.mode).toBe('running');
    await vi.advanceTimersByTimeAsync(0);
    expect(h.tracker.get('e149')?.state).toBe('RUNNING');
    expect(h.logs.filter((l) => l.level === 50 && String(l.msg).includes('refused the token'))).toHaveLength(
      3,
    );
  });

  it('stop() waits for the call in flight, starts no other, and is idempotent', async () => {
    h = harness();
    let release!: () => void;
    h.gate.wait = new Promise((resolve) => {
      release = resolve;
    });
    add(h, ['a']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(0);
    const first = h.scheduler.stop();
    expect(h.scheduler.stop()).toBe(first);
    expect(h.scheduler.mode).toBe('stopping');
    let done = false;
    void first.then(() => {
      done = true;
    });
    await vi.advanceTimersByTimeAsync(5000);
    expect(done).toBe(false);
    h.gate.wait = undefined;
    release();
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toBe(true);
    expect(h.scheduler.mode).toBe('stopped');
    // The answer that was in flight still counted.
    expect(h.tracker.get('a')?.state).toBe('RUNNING');
    add(h, ['b']);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(h.calls).toHaveLength(1);
  });

  it('keeps turning, for /healthz, while every call slot waits on the platform', async () => {
    h = harness({ heartbeatMs: 5000, maxOutstanding: 1, batchSize: 1 });
    let release!: () => void;
    h.gate.wait = new Promise((resolve) => {
      release = resolve;
    });
    add(h, ['a', 'b']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(120_000);
    expect(h.calls).toHaveLength(1);
    expect(Date.now() - h.scheduler.lastTurnAt).toBeLessThanOrEqual(5000);
    h.gate.wait = undefined;
    release();
  });

  it('onSettled resolves once every export is terminal', async () => {
    h = harness();
    add(h, ['a', 'b']);
    h.scheduler.start();
    let settled = false;
    void h.scheduler.onSettled().then(() => {
      settled = true;
    });
    await vi.advanceTimersByTimeAsync(3000);
    expect(settled).toBe(false);
    h.state.set('a', 'COMPLETED');
    h.state.set('b', 'FAILED');
    await vi.advanceTimersByTimeAsync(1000);
    expect(settled).toBe(true);
  });

  it('validates its options', () => {
    expect(() => harness({ batchSize: 101 })).toThrow(/batchSize/);
    expect(() => harness({ pollIntervalMs: 0 })).toThrow(/pollIntervalMs/);
  });
});

describe('longestUnchecked', () => {
  it('picks the k smallest `since` in order, ties in input order', () => {
    const items = [5, 1, 9, 1, -Infinity, 3, 7, 1].map((since, i) => ({ since, i }));
    expect(longestUnchecked(items, 4).map((x) => x.i)).toEqual([4, 1, 3, 7]);
    expect(longestUnchecked(items, 0)).toEqual([]);
    expect(longestUnchecked(items, 100).map((x) => x.i)).toEqual([4, 1, 3, 7, 5, 0, 6, 2]);
  });

  it('agrees with a full stable sort on random input', () => {
    let seed = 42;
    const random = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    for (let round = 0; round < 50; round++) {
      const items = Array.from({ length: 300 }, (_, i) => ({ since: Math.floor(random() * 40), i }));
      const k = 1 + Math.floor(random() * 120);
      const expected = [...items].sort((a, b) => a.since - b.since).slice(0, k);
      expect(longestUnchecked(items, k)).toEqual(expected);
    }
  });
});
