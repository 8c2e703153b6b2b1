import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { CheckResult } from '../src/platform/platform-client.js';
import { type CheckRecord, Scheduler, type SchedulerDeps } from '../src/polling/scheduler.js';
import { type Observation, Tracker, type Transition } from '../src/polling/tracker.js';
import { Bus, type WatcherEvents } from '../src/shared/bus.js';
import { PlatformError } from '../src/shared/errors.js';

const T0 = Date.UTC(2026, 0, 1);

interface Harness {
  scheduler: Scheduler;
  tracker: Tracker;
  calls: Array<{ at: number; ids: string[] }>;
  /** 'transition' events, in order. */
  notified: Transition[];
  /** 'check.result' events, in order. */
  results: Array<WatcherEvents['check.result']>;
  /** What `record` was asked to store, including the writes that failed. */
  records: CheckRecord[];
  /** When set, each `record` waits for this before settling. */
  recordGate: { wait?: Promise<void> };
  /** Errors the next `record` calls reject with. */
  recordFails: unknown[];
  logs: Array<Record<string, unknown>>;
  /** What the fake platform says about an id; default RUNNING. */
  state: Map<string, string>;
  /** Extra fields of the fake platform's object per id. */
  extra: Map<string, Record<string, unknown>>;
  /** When set, each call waits for this before answering. */
  gate: { wait?: Promise<void> };
  failNext: unknown[];
  /** When set and it returns an error, the call fails with it after `failDelayMs` (100 ms). */
  failWhen?: (ids: readonly string[]) => unknown;
  failDelayMs?: number;
  /** When set, an answered call takes this long. */
  answerDelayMs?: number;
  /** The signal each call was given, in order. */
  signals: AbortSignal[];
}

/** A 500 the platform client gives up on (after its retries). */
const SERVER_ERROR = new PlatformError('PLATFORM_UNAVAILABLE', 'platform answered 500', { status: 500 });

/** A `failWhen` that fails every call naming one of `bad` (read at each call: it may grow). */
const failingOn = (bad: ReadonlySet<string>) => (ids: readonly string[]) =>
  ids.some((id) => bad.has(id)) ? SERVER_ERROR : undefined;

/** Whether `id` was asked about alone, in a call of its own. */
const askedAlone = (h: Harness, id: string) => h.calls.some((c) => c.ids.length === 1 && c.ids[0] === id);

function harness(
  options: Partial<ConstructorParameters<typeof Scheduler>[1]> = {},
  mayAct?: () => boolean,
): Harness {
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      logs.push(JSON.parse(String(chunk)));
      done();
    },
  });
  const tracker = new Tracker({});
  const bus = new Bus();
  const h: Harness = {
    tracker,
    calls: [],
    notified: [],
    results: [],
    records: [],
    recordGate: {},
    recordFails: [],
    logs,
    state: new Map(),
    extra: new Map(),
    gate: {},
    failNext: [],
    signals: [],
    scheduler: undefined as unknown as Scheduler,
  };
  const deps: SchedulerDeps = {
    tracker,
    now: () => Date.now(),
    log: pino({ level: 'debug' }, sink),
    bus,
    ...(mayAct ? { mayAct } : {}),
    record: async (check) => {
      h.records.push(check);
      if (h.recordGate.wait) await h.recordGate.wait;
      const failure = h.recordFails.shift();
      if (failure) throw failure;
    },
    checkStatuses: async (ids, _kind, signal): Promise<CheckResult> => {
      h.calls.push({ at: Date.now() - T0, ids: [...ids] });
      h.signals.push(signal);
      if (h.gate.wait) await h.gate.wait;
      const failure = h.failNext.shift();
      if (failure) throw failure;
      const always = h.failWhen?.(ids);
      try {
        if (always) {
          await new Promise((resolve) => setTimeout(resolve, h.failDelayMs ?? 100));
          throw always;
        }
        if (h.answerDelayMs) await new Promise((resolve) => setTimeout(resolve, h.answerDelayMs));
      } finally {
      }
      const observations: Observation[] = ids.map((id) => ({
        kind: 'resource',
        id,
        resource: { ...h.extra.get(id), id, state: h.state.get(id) ?? 'RUNNING' },
      }));
      return { observations, warnings: [] };
    },
  };
  bus.on('transition', (t) => h.notified.push(t));
  bus.on('check.result', (r) => h.results.push(r));
  h.scheduler = new Scheduler(deps, { pollIntervalMs: 1000, batchSize: 100, ...options });
  return h;
}

function add(h: Harness, ids: string[]): void {
  h.tracker.track(ids.map((id) => ({ id, state: 'UNKNOWN', misses: 0 })));
  h.scheduler.poke();
}

const range = (n: number, prefix = 'e') => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

/** A promise and the function that resolves it. */
/** Those of `ids` whose last answer did not say RUNNING (never answered, or held apart). */
function notRunning(h: Harness, ids: readonly string[]): string[] {
  return ids.filter((id) => h.tracker.get(id)?.state !== 'RUNNING');
}

/** The most calls that started at the same moment: a round, as a pause's end sends them. */
function callsPerRound(h: Harness): number {
  const perRound = new Map<number, number>();
  for (const c of h.calls) perRound.set(c.at, (perRound.get(c.at) ?? 0) + 1);
  return Math.max(0, ...perRound.values());
}

function gate(): { wait: Promise<void>; release: () => void } {
  let release!: () => void;
  const wait = new Promise<void>((resolve) => {
    release = resolve;
  });
  return { wait, release };
}

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

  it('lets ids registered at different moments share calls: a call with room takes ids due within half an interval', async () => {
    h = harness({ pollIntervalMs: 10_000 });
    h.scheduler.start();
    // 50 ids, one every 200 ms (as other systems register them, one at a time).
    for (let i = 0; i < 50; i++) {
      add(h, [`x${i}`]);
      await vi.advanceTimersByTimeAsync(200);
    }
    const before = h.calls.length;
    await vi.advanceTimersByTimeAsync(30_000);
    // Once they share calls: one call a round for all 50, not 50 calls of one id.
    const lastRound = h.calls.slice(before).filter((c) => c.at >= 30_000);
    expect(lastRound.map((c) => c.ids.length)).toEqual([50]);
    expect(h.calls.length - before).toBeLessThanOrEqual(6);
    // None is checked more often than the interval asks once merged, nor less often.
    const times = h.calls.filter((c) => c.ids.includes('x0')).map((c) => c.at);
    const gaps = times.slice(1).map((t, i) => t - (times[i] as number));
    expect(Math.max(...gaps)).toBeLessThanOrEqual(10_000);
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

  it('logs an oddity that comes back with every call at warn 5 times a minute, the rest counted', async () => {
    h = harness();
    // A state the platform added: every check of it says so, every second.
    h.state.set('p', 'PAUSED');
    add(h, ['p']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(150_000);
    const msg = 'unknown export state from the platform; treated as not finished';
    const at = (level: number) => h!.logs.filter((l) => l.msg === msg && l.level === level);
    const summaries = () => h!.logs.filter((l) => String(l.msg).startsWith(`${msg} (in more calls`));
    // Windows opened at 0, 60 and 120 s: five lines each at warn, the rest at debug.
    expect(at(40)).toHaveLength(15);
    expect(at(20).length).toBe(h.calls.length - 15);
    // Two windows are over: each said in one line, with the calls and exports it held back.
    expect(summaries()).toEqual([
      expect.objectContaining({
        level: 40,
        reason: 'unknown_state',
        calls: 55,
        count: 55,
        sample_ids: ['p'],
      }),
      expect.objectContaining({ level: 40, reason: 'unknown_state', calls: 55, count: 55 }),
    ]);
    expect(summaries()[0]).toMatchObject({
      from: new Date(T0).toISOString(),
      example: { state: 'PAUSED' },
    });
    // The third is said at stop: every call's warning is at warn or counted.
    const stopping = h.scheduler.stop();
    await vi.runOnlyPendingTimersAsync();
    await stopping;
    const counted = summaries().reduce((sum, l) => sum + Number(l.calls), 0);
    expect(summaries()).toHaveLength(3);
    expect(at(40).length + counted).toBe(h.calls.length);
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
    h.failNext.push(SERVER_ERROR);
    add(h, ['a']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(1999);
    expect(h.calls.map((c) => c.at)).toEqual([0]);
    await vi.advanceTimersByTimeAsync(1);
    expect(h.calls.map((c) => c.at)).toEqual([0, 2000]);
    expect(h.tracker.get('a')?.state).toBe('RUNNING');
    expect(h.logs.some((l) => l.msg === 'check failed after retries; ids stay due')).toBe(true);
  });

  it('a pause lasts no longer than the longest wait (5 min) when the wall clock steps back an hour', async () => {
    h = harness({ failurePauseMs: 2000 });
    h.failNext.push(SERVER_ERROR);
    add(h, ['a']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.calls).toHaveLength(1);
    // An NTP correction: the wall clock goes back an hour; timers keep their own time.
    vi.setSystemTime(Date.now() - 3_600_000);
    await vi.advanceTimersByTimeAsync(5 * 60_000 + 2000);
    expect(h.calls).toHaveLength(2);
    expect(h.tracker.get('a')?.state).toBe('RUNNING');
    // Checked by the new clock, it is checked every interval again.
    await vi.advanceTimersByTimeAsync(3000);
    expect(h.calls.length).toBeGreaterThanOrEqual(5);
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

  it('keeps the ids of a failed call in their place in the due order', async () => {
    h = harness({ maxOutstanding: 1, batchSize: 1, failurePauseMs: 2000 });
    add(h, ['a', 'b', 'c']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(0);
    h.failNext.push(SERVER_ERROR);
    await vi.advanceTimersByTimeAsync(3000);
    expect(h.calls.map((c) => `${c.ids[0]}@${c.at}`)).toEqual([
      'a@0',
      'b@0',
      'c@0',
      'a@1000',
      'a@3000',
      'b@3000',
      'c@3000',
    ]);
  });

  it('takes apart a batch that keeps failing while others succeed, so its other ids are checked', async () => {
    h = harness({ pollIntervalMs: 10_000, failurePauseMs: 100, failurePauseMaxMs: 100 });
    h.failWhen = (ids) => (ids.includes('e0') ? SERVER_ERROR : undefined);
    add(h, range(300));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(9000);
    const checked = (id: string) => h!.calls.some((c) => c.ids.includes(id) && !c.ids.includes('e0'));
    // Every id but the one the platform fails on was answered, within one poll interval.
    expect(range(300).filter((id) => !checked(id))).toEqual(['e0']);
    // Halved down to e0 alone (100, 50, 25, 12, 6, 3, 1), then tried after the poll interval.
    const withE0 = h.calls.filter((c) => c.ids.includes('e0')).map((c) => c.ids.length);
    expect(withE0).toEqual([100, 50, 25, 12, 6, 3, 1]);
    expect(h.logs.find((l) => l.msg?.toString().includes('it is checked on its own'))).toMatchObject({
      export_id: 'e0',
      retry_in_ms: 10_000,
    });
    await vi.advanceTimersByTimeAsync(12_000);
    expect(h.calls.filter((c) => c.ids.length === 1 && c.ids[0] === 'e0')).toHaveLength(2);
    // Once the platform answers for it, it is back among the others.
    h.failWhen = undefined;
    await vi.advanceTimersByTimeAsync(45_000);
    expect(h.calls.some((c) => c.ids.includes('e0') && c.ids.length > 1)).toBe(true);
  });

  it('keeps checking the healthy ids while isolated groups fail, whatever they do', async () => {
    h = harness({ pollIntervalMs: 60_000, failurePauseMs: 100, failurePauseMaxMs: 100 });
    // Both halves of two batches hold a failing id.
    const bad = new Set(['e0', 'e50', 'e100', 'e150']);
    h.failWhen = failingOn(bad);
    add(h, range(400));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    const times = h.calls.filter((c) => c.ids.includes('e300')).map((c) => c.at);
    expect(times.length).toBeGreaterThanOrEqual(9);
    // Every healthy id answered about once a minute, and the bad ones each alone in the end.
    const healthy = range(400).filter((id) => !bad.has(id));
    for (const id of healthy) expect(h.calls.some((c) => c.ids.includes(id) && c.at > 8 * 60_000)).toBe(true);
    for (const id of bad) expect(askedAlone(h, id)).toBe(true);
  });

  it('ends every group, even when nothing else of its kind is left to answer', async () => {
    h = harness({ pollIntervalMs: 1000, batchSize: 4, failurePauseMs: 100, failurePauseMaxMs: 100 });
    h.failWhen = (ids) => (ids.includes('e0') || ids.includes('e2') ? SERVER_ERROR : undefined);
    // A failing call outlasts the poll interval (the client's retries): by the time it fails,
    // the last answer of its kind is older than that.
    h.failDelayMs = 1200;
    for (const id of ['f0', 'f1', 'f2', 'f3']) h.state.set(id, 'COMPLETED');
    add(h, ['e0', 'e1', 'e2', 'e3', 'f0', 'f1', 'f2', 'f3']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(60_000);
    const answered = (id: string) =>
      h!.calls.some((c) => c.ids.includes(id) && !c.ids.includes('e0') && !c.ids.includes('e2'));
    expect(answered('e1')).toBe(true);
    expect(answered('e3')).toBe(true);
  });

  it('does not let failing batches that hold every call slot starve the ids behind them', async () => {
    // Defaults: batches of 100, 4 calls at once. One failing id in each of the first four batches.
    h = harness({ pollIntervalMs: 60_000, batchSize: 100 });
    const bad = new Set(['e0', 'e100', 'e200', 'e300']);
    h.failWhen = failingOn(bad);
    add(h, range(500));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(30 * 60_000);
    // e400..e499 share no call with a failing id: the platform answers them whenever asked.
    expect(h.calls.some((c) => c.ids.includes('e499'))).toBe(true);
    expect(h.tracker.get('e499')?.state).toBe('RUNNING');
    // And with that evidence, the failing batches are taken apart down to the bad ids.
    for (const id of bad) expect(askedAlone(h, id)).toBe(true);
  });

  it('holds a failed batch back at most a poll interval: the other kind being busy does not starve it', async () => {
    // 130 exports (two calls, so not a kind that fits in one), 2,000 imports: with 4 calls of 1 s
    // each at a 1 s poll interval, imports are due at every turn (more due than can be sent).
    h = harness({ pollIntervalMs: 1000, batchSize: 100 });
    h.answerDelayMs = 1000;
    h.tracker.track(range(130, 'x').map((id) => ({ id, state: 'UNKNOWN', misses: 0 })));
    h.tracker.track(
      range(2000, 'i').map((id) => ({ id, kind: 'import' as const, state: 'UNKNOWN', misses: 0 })),
    );
    // Both export calls fail once (a transient 500, after the client's retries): passed over.
    h.failNext.push(SERVER_ERROR, SERVER_ERROR);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.calls.slice(0, 2).map((c) => c.ids[0])).toEqual(['x0', 'x100']);
    await vi.advanceTimersByTimeAsync(60_000);
    const exportCalls = h.calls.filter((c) => c.ids[0]?.startsWith('x'));
    // Before the change: due again after the 1 s failure pause, then every poll interval.
    expect(exportCalls.length).toBeGreaterThan(10);
    expect(h.tracker.get('x0')?.state).toBe('RUNNING');
  });

  it('gives isolated groups half the call slots at most, counted over their calls out', async () => {
    h = harness({ pollIntervalMs: 10_000 });
    const bad = new Set(Array.from({ length: 10 }, (_, i) => `e${7 + i * 300}`));
    h.failWhen = failingOn(bad);
    h.failDelayMs = 10_000;
    h.answerDelayMs = 300;
    add(h, range(3000));
    h.scheduler.start();
    let most = 0;
    for (let t = 0; t < 600; t++) {
      await vi.advanceTimersByTimeAsync(1000);
      most = Math.max(most, h.scheduler.isolation.callsOut);
    }
    expect(most).toBe(2);
    const firstAnswered = new Map<string, number>();
    for (const c of h.calls) {
      if (c.ids.some((id) => bad.has(id))) continue;
      for (const id of c.ids) if (!firstAnswered.has(id)) firstAnswered.set(id, c.at);
    }
    // Every healthy id answered within the run; those whose first batch held no failing id (the
    // bad ones are in batches 0, 3, 6...) within two minutes (the bad batches fail once each first).
    expect(firstAnswered.size).toBe(3000 - bad.size);
    const clean = range(3000).filter((_, i) => Math.floor(i / 100) % 3 !== 0);
    expect(Math.max(...clean.map((id) => firstAnswered.get(id) ?? Number.POSITIVE_INFINITY))).toBeLessThan(
      120_000,
    );
  });

  it('lets go of an id unwatched while its group waits: watched again, it is checked', async () => {
    h = harness({
      pollIntervalMs: 10_000,
      batchSize: 4,
      maxOutstanding: 2,
      failurePauseMs: 10,
      failurePauseMaxMs: 10,
    });
    h.failWhen = (ids) => (ids.includes('e0') ? SERVER_ERROR : undefined);
    add(h, range(8));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(150);
    // [e0..e3] failed while [e4..e7] was answered: halves [e0,e1] (on the wire) and [e2,e3].
    expect(h.scheduler.isolation).toMatchObject({ ids: 4, groups: 2 });
    h.tracker.untrack('e3');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(h.scheduler.isolation).toMatchObject({ ids: 1, groups: 1 }); // e0 alone
    add(h, ['e3']);
    const before = h.calls.length;
    await vi.advanceTimersByTimeAsync(60_000);
    expect(h.calls.slice(before).some((c) => c.ids.includes('e3'))).toBe(true);
  });

  it("takes nothing apart when a whole kind's route fails while the other kind is answered", async () => {
    h = harness({ pollIntervalMs: 10_000, failurePauseMs: 100, failurePauseMaxMs: 100 });
    h.failWhen = (ids) => (ids.some((id) => id.startsWith('e')) ? SERVER_ERROR : undefined);
    add(h, range(300));
    h.tracker.track(range(50, 'i').map((id) => ({ id, kind: 'import', state: 'UNKNOWN', misses: 0 })));
    h.scheduler.poke();
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(5000);
    const exportCalls = h.calls.filter((c) => c.ids[0]?.startsWith('e'));
    expect(exportCalls.length).toBeGreaterThan(3);
    // Asked in smaller batches as nothing of the kind is answered, but nothing held apart.
    expect(h.scheduler.isolation.ids).toBe(0);
    expect(h.calls.some((c) => c.ids[0]?.startsWith('i'))).toBe(true);
    for (const id of range(50, 'i')) expect(h.tracker.get(id)?.state).toBe('RUNNING');
  });

  it('finds one failing id in a kind that fits in one batch: halves are asked until one is answered', async () => {
    // Twenty exports, one batch: every call of the kind fails while e7 is in it, so no other call
    // of the kind is ever answered at the same time, which would otherwise look like an outage.
    h = harness({ pollIntervalMs: 10_000 });
    h.failWhen = (ids) => (ids.includes('e7') ? SERVER_ERROR : undefined);
    add(h, range(20));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(120_000);
    for (const id of range(20)) if (id !== 'e7') expect(h.tracker.get(id)?.state).toBe('RUNNING');
    expect(h.tracker.get('e7')).toMatchObject({ state: 'UNKNOWN', misses: 0 });
    expect(h.scheduler.isolation).toMatchObject({ ids: 1, groups: 1 });
    // The first call answered was of half the kind.
    expect(h.calls.find((c) => !c.ids.includes('e7'))?.ids).toHaveLength(10);
  });

  it('asks a small kind in halves during an outage, and in whole batches again once answered', async () => {
    h = harness({ pollIntervalMs: 10_000, failurePauseMs: 100, failurePauseMaxMs: 100 });
    let down = true;
    h.failWhen = () => (down ? SERVER_ERROR : undefined);
    add(h, range(20));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(5000);
    // One whole call, then halves, halved again while nothing is answered: an outage costs at most
    // a call per call slot a round (4), never a call per id.
    expect(h.calls[0]?.ids).toHaveLength(20);
    expect(h.calls[1]?.ids).toHaveLength(10);
    expect(h.calls.slice(1).every((c) => c.ids.length <= 10)).toBe(true);
    expect(callsPerRound(h)).toBeLessThanOrEqual(4);
    expect(h.scheduler.isolation.ids).toBe(0);
    down = false;
    await vi.advanceTimersByTimeAsync(1000);
    expect(h.tracker.countByState().RUNNING).toBe(20);
    const before = h.calls.length;
    await vi.advanceTimersByTimeAsync(20_000);
    expect(h.calls.slice(before).some((c) => c.ids.length === 20)).toBe(true);
  });

  it('checks every healthy id when every batch of a kind holds a failing id', async () => {
    // Nothing of the kind is ever answered while both batches fail: smaller batches give the
    // evidence that takes the failing ones apart.
    h = harness({ pollIntervalMs: 10_000, failurePauseMs: 100, failurePauseMaxMs: 100 });
    const bad = new Set(['e7', 'e150']);
    h.failWhen = failingOn(bad);
    add(h, range(200));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(
      notRunning(
        h,
        range(200).filter((id) => !bad.has(id)),
      ),
    ).toEqual([]);
    expect(h.scheduler.isolation).toMatchObject({ ids: 2, groups: 2 });
  });

  it.each([
    ['exports', 'e'],
    ['imports', 'i'],
  ] as const)(
    'passes over a failing batch of %s alone, so that the healthy ids behind it are checked',
    async (_kinds, prefix) => {
      h = harness({ pollIntervalMs: 60_000, batchSize: 2, maxOutstanding: 1 });
      h.failWhen = failingOn(new Set([`${prefix}0`]));
      const ids = range(6, prefix);
      if (prefix === 'e') add(h, ids);
      else h.tracker.track(ids.map((id) => ({ id, kind: 'import' as const, state: 'UNKNOWN', misses: 0 })));
      h.scheduler.start();
      await vi.advanceTimersByTimeAsync(5 * 60_000);
      for (const id of ids.slice(1)) expect(h.tracker.get(id)?.state, id).toBe('RUNNING');
    },
  );

  it('halves a failing kind once a round, not once per failed call', async () => {
    h = harness({ pollIntervalMs: 10_000, failurePauseMs: 100, failurePauseMaxMs: 100 });
    h.failWhen = () => SERVER_ERROR;
    add(h, range(40));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(1000);
    // 40 in one call; then halves of 20; then quarters of 10 ...
    expect(h.calls.slice(0, 3).map((c) => c.ids.length)).toEqual([40, 20, 20]);
    expect(h.calls.slice(3, 7).map((c) => c.ids.length)).toEqual([10, 10, 10, 10]);
  });

  it('halves a failing kind also when its failure pause outlasts the poll interval', async () => {
    // The ids passed over go again when the poll interval runs out, before the pause ends: that
    // is the same sign of a kind failing unanswered, and halves it the same way.
    h = harness({ pollIntervalMs: 1000, failurePauseMs: 5000, failurePauseMaxMs: 5000 });
    const bad = new Set(['e7', 'e150']);
    h.failWhen = failingOn(bad);
    add(h, range(200));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(5 * 60_000);
    expect(
      notRunning(
        h,
        range(200).filter((id) => !bad.has(id)),
      ),
    ).toEqual([]);
  });

  it('halves a small kind again while a failing id is in each half', async () => {
    h = harness({ pollIntervalMs: 10_000, failurePauseMs: 100, failurePauseMaxMs: 100 });
    const bad = new Set(['e3', 'e15']);
    h.failWhen = failingOn(bad);
    add(h, range(20));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(h.calls.some((c) => c.ids.length < 10)).toBe(true);
    expect(
      notRunning(
        h,
        range(20).filter((id) => !bad.has(id)),
      ),
    ).toEqual([]);
  });

  it('after a pause, checks an id that was held apart at once, as every other id', async () => {
    h = harness({ pollIntervalMs: 10_000 });
    const bad = new Set(['e7']);
    h.failWhen = failingOn(bad);
    add(h, range(20));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(h.scheduler.isolation).toMatchObject({ ids: 1, groups: 1 });
    h.scheduler.pause();
    expect(h.scheduler.isolation).toMatchObject({ ids: 0, groups: 0 });
    await vi.advanceTimersByTimeAsync(1000);
    bad.clear();
    h.scheduler.resume();
    const before = h.calls.length;
    await vi.advanceTimersByTimeAsync(10_000);
    expect(h.calls.slice(before).some((c) => c.ids.includes('e7'))).toBe(true);
    expect(h.tracker.get('e7')?.state).toBe('RUNNING');
  });

  it("backs off one kind's failing calls (1 s doubling to 60 s) while the other kind is answered", async () => {
    h = harness({ pollIntervalMs: 10_000 });
    h.failWhen = (ids) => (ids.some((id) => id.startsWith('i')) ? SERVER_ERROR : undefined);
    add(h, range(200));
    h.tracker.track(
      range(50, 'i').map((id) => ({ id, kind: 'import' as const, state: 'UNKNOWN', misses: 0 })),
    );
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    // Rounds 1, 2, 4, ... 32 s apart, then one a minute: 16 in 10 minutes, a call per slot at most.
    const importCalls = h.calls.filter((c) => c.ids[0]?.startsWith('i'));
    const rounds = [...new Set(importCalls.map((c) => c.at))];
    expect(rounds.length).toBeLessThanOrEqual(17);
    expect(rounds.slice(-3).every((at, i, all) => i === 0 || at - (all[i - 1] as number) >= 60_000)).toBe(
      true,
    );
    expect(importCalls.length).toBeLessThanOrEqual(4 * rounds.length);
    // The exports were checked every poll interval all along.
    for (const id of range(200))
      expect(Date.now() - (h.tracker.get(id)?.lastCheckedAt ?? 0)).toBeLessThan(20_000);
  });

  it('finds a second failing id in a small kind beside one already held apart', async () => {
    h = harness({ pollIntervalMs: 10_000 });
    const bad = new Set(['e7']);
    h.failWhen = failingOn(bad);
    add(h, range(20));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(120_000);
    expect(h.scheduler.isolation).toMatchObject({ ids: 1, groups: 1 });
    // Another replica leads for a while; back, the 19 ids not held apart are due in one batch,
    // and meanwhile a second job became one the platform cannot answer for.
    h.scheduler.pause();
    await vi.advanceTimersByTimeAsync(30_000);
    bad.add('e3');
    h.scheduler.resume();
    await vi.advanceTimersByTimeAsync(300_000);
    const now = Date.now();
    for (const id of range(20)) {
      if (id === 'e7' || id === 'e3') continue;
      expect(now - (h.tracker.get(id)?.lastCheckedAt ?? 0), id).toBeLessThan(30_000);
    }
  });

  it('asks an odd-sized small kind in at most a call per slot a round during an outage', async () => {
    h = harness({ pollIntervalMs: 10_000, failurePauseMs: 100, failurePauseMaxMs: 100 });
    h.failWhen = () => SERVER_ERROR;
    add(h, range(21));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(5000);
    expect(new Set(h.calls.map((c) => c.at)).size).toBeGreaterThan(5);
    // Halves rounded up: 21, then 11 + 10, ...
    expect(h.calls.slice(0, 3).map((c) => c.ids.length)).toEqual([21, 11, 10]);
    expect(callsPerRound(h)).toBeLessThanOrEqual(4);
  });

  it('takes nothing apart during an outage, when no call is answered', async () => {
    h = harness({ pollIntervalMs: 10_000, failurePauseMs: 100, failurePauseMaxMs: 100 });
    h.failWhen = () => SERVER_ERROR;
    add(h, range(300));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(5000);
    expect(h.calls.length).toBeGreaterThan(10);
    expect(h.scheduler.isolation.ids).toBe(0);
    expect(callsPerRound(h)).toBeLessThanOrEqual(4);
  });

  it('takes nothing apart in an outage that starts within a poll interval of an answer', async () => {
    h = harness({ pollIntervalMs: 60_000 });
    let down = false;
    h.failWhen = () => (down ? SERVER_ERROR : undefined);
    add(h, range(100, 'a'));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(30_000);
    add(h, range(100, 'b'));
    await vi.advanceTimersByTimeAsync(15_000);
    // 15 s after the last answer: the first failures are well within a poll interval of it.
    down = true;
    await vi.advanceTimersByTimeAsync(15 * 60_000);
    expect(h.calls.length).toBeGreaterThan(10);
    expect(h.scheduler.isolation.ids).toBe(0);
    // Back up: whole batches again, every id answered.
    down = false;
    await vi.advanceTimersByTimeAsync(3 * 60_000);
    expect(notRunning(h, [...range(100, 'a'), ...range(100, 'b')])).toEqual([]);
    expect(h.scheduler.isolation.ids).toBe(0);
    expect(h.calls.at(-1)?.ids).toHaveLength(100);
  });

  it('lets go of a batch taken apart as an outage began, once its halves fail with nothing answered', async () => {
    h = harness({ pollIntervalMs: 60_000 });
    // The client's retries: the outage begins while the second batch is being retried.
    h.failDelayMs = 3000;
    let down = false;
    h.failWhen = (ids) =>
      down || (ids.includes('a100') && Date.now() - T0 === 60_000) ? SERVER_ERROR : undefined;
    add(h, range(200, 'a'));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(60_001);
    down = true;
    await vi.advanceTimersByTimeAsync(3000);
    // The first batch was answered while the second failed: the second is taken apart.
    expect(h.scheduler.isolation).toMatchObject({ ids: 100, groups: 2 });
    await vi.advanceTimersByTimeAsync(15 * 60_000);
    expect(h.scheduler.isolation.ids).toBe(0);
    expect(callsPerRound(h)).toBeLessThanOrEqual(4);
    down = false;
    await vi.advanceTimersByTimeAsync(2 * 60_000);
    expect(notRunning(h, range(200, 'a'))).toEqual([]);
    expect(h.scheduler.isolation.ids).toBe(0);
  });

  it('takes a batch apart that starts failing within a poll interval of an answer, its kind otherwise quiet', async () => {
    // Nothing else of the kind is out when the batch fails, so no answer comes meanwhile: the
    // evidence is the answer of a smaller batch after it.
    h = harness({ pollIntervalMs: 60_000, failurePauseMs: 100, failurePauseMaxMs: 100 });
    const bad = new Set<string>();
    h.failWhen = failingOn(bad);
    add(h, range(100, 'a'));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(30_000);
    add(h, range(100, 'b'));
    await vi.advanceTimersByTimeAsync(20_000);
    bad.add('a7');
    await vi.advanceTimersByTimeAsync(15_000);
    const answeredSince = (id: string) =>
      h!.calls.some((c) => c.at >= 60_000 && c.ids.includes(id) && !c.ids.includes('a7'));
    expect(range(100, 'a').filter((id) => !answeredSince(id))).toEqual(['a7']);
    expect(askedAlone(h, 'a7')).toBe(true);
    expect(h.scheduler.isolation.ids).toBe(1);
  });

  it('checks the healthy ids again after an outage that outlasts the halvings, failing ids having been held apart', async () => {
    // Defaults: batches of 100, 4 calls at once, failure pause 1 s doubling to 60 s.
    h = harness({ pollIntervalMs: 10_000 });
    const bad = new Set(['e24', 'e43', 'e116', 'e162']);
    let down = false;
    h.failWhen = (ids) => (down || ids.some((id) => bad.has(id)) ? SERVER_ERROR : undefined);
    add(h, range(200));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(5 * 60_000);
    expect(h.scheduler.isolation).toMatchObject({ ids: 4, groups: 4 });
    down = true;
    await vi.advanceTimersByTimeAsync(15 * 60_000);
    down = false;
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    const stale = range(200).filter(
      (id) => !bad.has(id) && Date.now() - (h!.tracker.get(id)?.lastCheckedAt ?? 0) > 60_000,
    );
    expect(stale).toEqual([]);
  });

  it('keeps backing off an id that fails alone while its kind is answered, its failure quicker than their answers', async () => {
    // A whole call failing at once on the bad id (a 4xx the client does not retry), answers taking 1 s.
    h = harness({ pollIntervalMs: 60_000 });
    h.failDelayMs = 100;
    h.answerDelayMs = 1000;
    h.failWhen = failingOn(new Set(['e0']));
    add(h, range(2));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(h.tracker.get('e1')?.state).toBe('RUNNING');
    const before = h.calls.length;
    await vi.advanceTimersByTimeAsync(20 * 60_000);
    // Tried alone after the poll interval, doubling up to 5 minutes: about 4 times in 20 minutes.
    const withE0 = h.calls.slice(before).filter((c) => c.ids.includes('e0'));
    expect(withE0.length).toBeLessThanOrEqual(6);
  });

  it('takes a failing id apart when its calls fail faster than the others are answered', async () => {
    // One id fails the whole call at once (a 4xx the client does not retry); answers take 1 s.
    h = harness({ pollIntervalMs: 10_000 });
    h.failDelayMs = 100;
    h.answerDelayMs = 1000;
    h.failWhen = failingOn(new Set(['e0']));
    add(h, range(100));
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    const stale = range(100).filter(
      (id) => id !== 'e0' && Date.now() - (h!.tracker.get(id)?.lastCheckedAt ?? 0) > 60_000,
    );
    expect(stale).toEqual([]);
    expect(askedAlone(h, 'e0')).toBe(true);
    const before = h.calls.length;
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(h.calls.slice(before).filter((c) => c.ids.includes('e0')).length).toBeLessThanOrEqual(4);
  });

  it('emits check.result after every call', async () => {
    h = harness({ failurePauseMs: 1000 });
    const failure = SERVER_ERROR;
    h.failNext.push(failure);
    add(h, ['a']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(1000);
    expect(h.results).toEqual([{ ok: false, error: failure }, { ok: true }]);
  });

  it('stores the changes of a check before committing them, then logs and emits the transitions', async () => {
    h = harness();
    const store = gate();
    h.recordGate.wait = store.wait;
    add(h, ['a']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.records).toEqual([
      {
        changes: [expect.objectContaining({ id: 'a', from: 'UNKNOWN', to: 'RUNNING', at: T0 })],
        transitions: [expect.objectContaining({ exportId: 'a', from: 'UNKNOWN', to: 'RUNNING', at: T0 })],
      },
    ]);
    expect(h.tracker.get('a')).toMatchObject({ state: 'UNKNOWN', checks: 0 });
    expect(h.notified).toEqual([]);
    expect(h.logs.some((l) => l.msg === 'export state changed')).toBe(false);
    h.recordGate.wait = undefined;
    store.release();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.tracker.get('a')).toMatchObject({ state: 'RUNNING', checks: 1, lastCheckedAt: T0 });
    expect(h.notified.map((t) => t.to)).toEqual(['RUNNING']);
    expect(h.logs.filter((l) => l.msg === 'export state changed')).toHaveLength(1);
  });

  it('stores nothing for a check that changed nothing', async () => {
    h = harness();
    add(h, ['a']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(5000);
    expect(h.calls).toHaveLength(6);
    expect(h.records).toHaveLength(1);
  });

  it('a store write that fails leaves the state unchanged and the ids due, after a pause', async () => {
    h = harness({ failurePauseMs: 2000 });
    h.recordFails.push(new Error('disk I/O error'));
    h.state.set('a', 'COMPLETED');
    add(h, ['a']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.records).toHaveLength(1);
    expect(h.tracker.get('a')).toMatchObject({ state: 'UNKNOWN', checks: 0, lastCheckedAt: null });
    expect(h.tracker.takeDue(Date.now(), 1000, 10, () => false).due).toEqual(['a']);
    expect(h.notified).toEqual([]);
    expect(h.logs.some((l) => l.msg === 'export state changed')).toBe(false);
    expect(
      h.logs.find((l) => l.msg === 'could not store the results of a check; the ids stay due'),
    ).toMatchObject({ level: 50, changes: 1, pause_ms: 2000 });
    await vi.advanceTimersByTimeAsync(1999);
    expect(h.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(h.calls.map((c) => c.at)).toEqual([0, 2000]);
    expect(h.records).toHaveLength(2);
    expect(h.tracker.has('a')).toBe(false);
    expect(h.notified.map((t) => `${t.exportId}:${t.from}>${t.to}`)).toEqual(['a:UNKNOWN>COMPLETED']);
  });

  it("frees a call's slot while its results wait on the store, and stops only once they are stored", async () => {
    h = harness({ maxOutstanding: 1, maxStoring: 2, batchSize: 1 });
    const store = gate();
    h.recordGate.wait = store.wait;
    add(h, ['a', 'b']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(10_000);
    // 'a' waits on the store; its slot went to 'b', which waits there too.
    expect(h.calls.map((c) => c.ids)).toEqual([['a'], ['b']]);
    expect(h.tracker.get('a')?.state).toBe('UNKNOWN');
    let stopped = false;
    void h.scheduler.stop().then(() => {
      stopped = true;
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(stopped).toBe(false);
    h.recordGate.wait = undefined;
    store.release();
    await vi.advanceTimersByTimeAsync(0);
    expect(stopped).toBe(true);
    expect(h.tracker.get('a')?.state).toBe('RUNNING');
    expect(h.tracker.get('b')?.state).toBe('RUNNING');
  });

  it('holds checks back while maxStoring calls wait on the store', async () => {
    h = harness({ maxOutstanding: 1, maxStoring: 1, batchSize: 1 });
    const store = gate();
    h.recordGate.wait = store.wait;
    add(h, ['a', 'b']);
    h.scheduler.start();
    await vi.advanceTimersByTimeAsync(500);
    expect(h.calls.map((c) => c.ids)).toEqual([['a']]);
    h.recordGate.wait = undefined;
    store.release();
    await vi.advanceTimersByTimeAsync(0);
    expect(h.calls.map((c) => c.ids)).toEqual([['a'], ['b']]);
  });

  it('validates its options', () => {
    expect(() => harness({ batchSize: 101 })).toThrow(/batchSize/);
    expect(() => harness({ pollIntervalMs: 0 })).toThrow(/pollIntervalMs/);
  });

  describe('pause and resume (a replica that stops leading)', () => {
    it('pause() stops at once: the call in flight is aborted and its answer dropped, no call starts after', async () => {
      h = harness();
      const call = gate();
      h.gate.wait = call.wait;
      add(h, ['a', 'b']);
      h.scheduler.start();
      await vi.advanceTimersByTimeAsync(0);
      expect(h.calls).toHaveLength(1);
      const signal = h.signals[0] as AbortSignal;
      expect(signal.aborted).toBe(false);

      h.state.set('a', 'COMPLETED');
      h.scheduler.pause();
      expect(h.scheduler.mode).toBe('paused');
      expect(signal.aborted).toBe(true);
      expect(signal.reason).toBeInstanceOf(PlatformError);
      expect((signal.reason as PlatformError).code).toBe('SHUTTING_DOWN');
      // The answer comes anyway (a platform that ignores the abort): dropped unread.
      h.gate.wait = undefined;
      call.release();
      await vi.advanceTimersByTimeAsync(60_000);
      expect(h.calls).toHaveLength(1);
      expect(h.records).toEqual([]);
      expect(h.results).toEqual([]);
      expect(h.notified).toEqual([]);
      expect(h.tracker.get('a')?.state).toBe('UNKNOWN');
      // New ids wait too.
      add(h, ['c']);
      await vi.advanceTimersByTimeAsync(5000);
      expect(h.calls).toHaveLength(1);
      expect(h.logs.some((l) => l.msg === 'checks paused')).toBe(true);
    });

    it('resume() checks every held id at once, with a fresh signal, nothing counted in flight from before', async () => {
      h = harness({ maxOutstanding: 1 });
      const call = gate();
      h.gate.wait = call.wait;
      add(h, ['a', 'b']);
      h.scheduler.start();
      await vi.advanceTimersByTimeAsync(0);
      h.scheduler.pause();
      // Paused while the old call is still unanswered: it no longer holds the only slot or the ids.
      h.gate.wait = undefined;
      h.scheduler.resume();
      expect(h.scheduler.mode).toBe('running');
      await vi.advanceTimersByTimeAsync(0);
      expect(h.calls.map((c) => c.ids)).toEqual([
        ['a', 'b'],
        ['a', 'b'],
      ]);
      expect(h.signals[1]?.aborted).toBe(false);
      call.release();
      await vi.advanceTimersByTimeAsync(0);
      expect(h.tracker.get('a')?.checks).toBe(1);
      expect(h.results).toHaveLength(1);
      await vi.advanceTimersByTimeAsync(1000);
      expect(h.calls).toHaveLength(3);
    });

    it('forgets the failure pause: after resume() the ids are checked at once', async () => {
      h = harness({ failurePauseMs: 30_000 });
      h.failNext.push(new PlatformError('PLATFORM_UNAVAILABLE', 'down'));
      add(h, ['a']);
      h.scheduler.start();
      await vi.advanceTimersByTimeAsync(1000);
      expect(h.calls).toHaveLength(1);
      h.scheduler.pause();
      h.scheduler.resume();
      await vi.advanceTimersByTimeAsync(0);
      expect(h.calls).toHaveLength(2);
    });

    it('lets a store write under way finish; recordsSettled() waits for it', async () => {
      h = harness();
      const store = gate();
      h.recordGate.wait = store.wait;
      h.state.set('a', 'COMPLETED');
      add(h, ['a']);
      h.scheduler.start();
      await vi.advanceTimersByTimeAsync(0);
      expect(h.records).toHaveLength(1);
      h.scheduler.pause();
      let settled = false;
      void h.scheduler.recordsSettled().then(() => {
        settled = true;
      });
      await vi.advanceTimersByTimeAsync(0);
      expect(settled).toBe(false);
      store.release();
      await vi.advanceTimersByTimeAsync(0);
      expect(settled).toBe(true);
      // Stored, so reported.
      expect(h.notified.map((t) => [t.exportId, t.to])).toEqual([['a', 'COMPLETED']]);
      await expect(h.scheduler.recordsSettled()).resolves.toBeUndefined();
    });

    it('asks mayAct before starting calls, and pauses itself when it says no', async () => {
      let leading = true;
      let asked = 0;
      h = harness({}, () => {
        asked++;
        return leading;
      });
      add(h, ['a']);
      h.scheduler.start();
      await vi.advanceTimersByTimeAsync(0);
      expect(h.calls).toHaveLength(1);
      expect(asked).toBeGreaterThan(0);
      leading = false;
      await vi.advanceTimersByTimeAsync(5000);
      expect(h.calls).toHaveLength(1);
      expect(h.scheduler.mode).toBe('paused');
      leading = true;
      h.scheduler.resume();
      await vi.advanceTimersByTimeAsync(0);
      expect(h.calls).toHaveLength(2);
    });

    it('pause() does nothing unless running; resume() from idle starts; stop() from paused stops at once', async () => {
      h = harness();
      h.scheduler.pause();
      expect(h.scheduler.mode).toBe('idle');
      h.scheduler.resume();
      expect(h.scheduler.mode).toBe('running');
      h.scheduler.resume();
      expect(h.scheduler.mode).toBe('running');
      h.scheduler.pause();
      h.scheduler.pause();
      expect(h.scheduler.mode).toBe('paused');
      await h.scheduler.stop();
      expect(h.scheduler.mode).toBe('stopped');
      h.scheduler.pause();
      h.scheduler.resume();
      expect(h.scheduler.mode).toBe('stopped');
    });
  });
});
