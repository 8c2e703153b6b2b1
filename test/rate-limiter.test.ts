import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { readRateHeaders } from '../src/platform/platform-client.js';
import { RateLimiter } from '../src/platform/rate-limiter.js';

const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);
/** Bottleneck hops through a few zero-delay timers before a call starts; fake time counts each as 1 ms. */
const HOPS = 20;

/**
 * Schedules `n` calls that record when they started and, like the platform client, observe their
 * answer's quota headers before they end: `answer()` at the time of the call.
 */
function answering(
  limiter: RateLimiter,
  n: number,
  starts: number[],
  answer: () => Parameters<RateLimiter['observe']>[0],
): void {
  for (let i = 0; i < n; i++) {
    void limiter
      .schedule(async () => {
        starts.push(Date.now() - T0);
        limiter.observe(answer());
      })
      .catch(() => 'dropped');
  }
}

/** Paused until T0 + 1 s; then one call asks (answered `answer`), the others stay held. */
async function expectOneProbeAt1s(
  limiter: RateLimiter,
  answer: Parameters<RateLimiter['observe']>[0],
): Promise<void> {
  expect(limiter.pausedUntil()).toBe(T0 + 1000);
  const starts: number[] = [];
  answering(limiter, 3, starts, () => answer);
  await vi.advanceTimersByTimeAsync(1000 + HOPS);
  expect(starts).toHaveLength(1);
}

/**
 * Calls that record when they start and hang on the wire until `hangs[i]()` ends the i-th of them
 * without an answer (a dropped connection): `hanging()` schedules one.
 */
function hangingCalls(limiter: RateLimiter): {
  hanging: () => void;
  hangs: Array<() => void>;
  starts: number[];
} {
  const hangs: Array<() => void> = [];
  const starts: number[] = [];
  const hanging = () => {
    void limiter
      .schedule(
        () =>
          new Promise<void>((_resolve, reject) => {
            starts.push(Date.now() - T0);
            hangs.push(() => reject(new Error('socket hang up')));
          }),
      )
      .catch(() => 'failed');
  };
  return { hanging, hangs, starts };
}

/** Schedules `n` calls that record when they started and finish at once. */
function launch(limiter: RateLimiter, n: number, starts: number[]): Promise<unknown>[] {
  return Array.from({ length: n }, () =>
    limiter
      .schedule(async () => {
        starts.push(Date.now() - T0);
        return 'ran';
      })
      // Calls still waiting when a test stops the limiter are dropped.
      .catch(() => 'dropped'),
  );
}

describe('RateLimiter', () => {
  let limiter: RateLimiter | undefined;
  beforeEach(() => {
    vi.useFakeTimers({ now: T0 });
  });
  afterEach(async () => {
    await limiter?.stop();
    limiter = undefined;
    vi.useRealTimers();
  });

  it('starts at most `budget` calls per window, spaced evenly, and refills at the window end', async () => {
    limiter = new RateLimiter({ budget: 4, windowMs: 4000, resetMarginMs: 0 });
    const starts: number[] = [];
    launch(limiter, 6, starts);
    await vi.advanceTimersByTimeAsync(3999);
    expect(starts).toHaveLength(4);
    // Spaced over the window: one call per second, not a burst.
    expect(starts[3]! - starts[0]!).toBeGreaterThanOrEqual(2400);
    await vi.advanceTimersByTimeAsync(5000);
    expect(starts).toHaveLength(6);
    expect(starts[4]).toBeGreaterThanOrEqual(4000);
  });

  it('never spends more than the platform says is left', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    limiter.observe({ limit: 1000, remaining: 2, resetAt: T0 + 10_000 });
    const starts: number[] = [];
    launch(limiter, 5, starts);
    await vi.advanceTimersByTimeAsync(9_999);
    expect(starts).toHaveLength(2);
    // The platform's window resets: the held calls go.
    await vi.advanceTimersByTimeAsync(20_000);
    expect(starts).toHaveLength(5);
    expect(starts[2]).toBeGreaterThanOrEqual(10_000);
  });

  it("aligns its window to the platform's reset instead of its own timer", async () => {
    limiter = new RateLimiter({ budget: 2, windowMs: 300_000, resetMarginMs: 250 });
    // The platform's window ends 30 s from now, well before a window of our own would.
    limiter.observe({ limit: 1000, remaining: 900, resetAt: T0 + 30_000 });
    const starts: number[] = [];
    launch(limiter, 3, starts);
    await vi.advanceTimersByTimeAsync(30_000);
    expect(starts).toHaveLength(2);
    // Refilled at the platform's reset, not 300 s after the first call.
    await vi.advanceTimersByTimeAsync(HOPS);
    expect(starts).toHaveLength(3);
    expect(starts[2]).toBeGreaterThanOrEqual(30_000);
    expect(starts[2]).toBeLessThan(30_000 + HOPS);
    expect(limiter.snapshot().spent).toBe(1);
  });

  it('lengthens its window to a later platform reset, but never shortens it once spending began', async () => {
    limiter = new RateLimiter({ budget: 10, windowMs: 60_000, resetMarginMs: 0 });
    const starts: number[] = [];
    launch(limiter, 1, starts);
    await vi.advanceTimersByTimeAsync(HOPS);
    const end = limiter.snapshot().windowEndsAt!;
    limiter.observe({ remaining: 400, resetAt: T0 + 20_000 });
    expect(limiter.snapshot().windowEndsAt).toBe(end);
    await vi.advanceTimersByTimeAsync(10_000);
    limiter.observe({ remaining: 400, resetAt: end + 5000 });
    expect(limiter.snapshot().windowEndsAt).toBe(end + 5000);
  });

  it('refills its budget no more often than its own window, however often the platform resets', async () => {
    limiter = new RateLimiter({ budget: 5, windowMs: 60_000, resetMarginMs: 0 });
    const starts: number[] = [];
    // Every call's answer reports a platform window that resets 2 s later.
    const calls = Array.from({ length: 20 }, () =>
      limiter!
        .schedule(async () => {
          starts.push(Date.now() - T0);
          limiter?.observe({ limit: 1000, remaining: 999, resetAt: Date.now() + 2000 });
        })
        .catch(() => 'dropped'),
    );
    await vi.advanceTimersByTimeAsync(59_000);
    expect(starts).toHaveLength(5);
    void calls;
  });

  it('asks again shortly when the platform says nothing is left but not until when', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    // A reset that has already passed, as an answer built just before the platform's reset says.
    limiter.observe({ limit: 1000, remaining: 0, resetAt: T0 - 1000 });
    const starts: number[] = [];
    launch(limiter, 2, starts);
    await vi.advanceTimersByTimeAsync(500);
    expect(starts).toEqual([]);
    await vi.advanceTimersByTimeAsync(2000);
    expect(starts.length).toBeGreaterThan(0);
  });

  it('lets one call through to ask, not every held call, when no reset was given', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    limiter.observe({ limit: 1000, remaining: 0 });
    const starts: number[] = [];
    let answer: Parameters<RateLimiter['observe']>[0] = { limit: 1000, remaining: 0 };
    answering(limiter, 4, starts, () => answer);
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    // Its answer: still nothing left, still no reset. One more asks a second later.
    expect(starts).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(900);
    expect(starts).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(100 + HOPS);
    expect(starts).toHaveLength(2);
    // The platform answers that quota is back: the rest go.
    answer = { limit: 1000, remaining: 500, resetAt: T0 + 60_000 };
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    await vi.advanceTimersByTimeAsync(2000);
    expect(starts).toHaveLength(4);
  });

  it('falls back to its own budget when a probe is answered without quota headers', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    limiter.observe({ limit: 1000, remaining: 0 });
    const starts: number[] = [];
    // As the client does: the answer is observed before its call ends.
    const answered = () =>
      limiter!.schedule(async () => {
        starts.push(Date.now() - T0);
        limiter!.observe({});
      });
    for (let i = 0; i < 3; i++) void answered();
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    // The probe at 1 s; answered without headers, our own budget lets the next go at once.
    expect(starts).toHaveLength(2);
    expect(starts[0]).toBeGreaterThanOrEqual(1000);
    await vi.advanceTimersByTimeAsync(5000);
    expect(starts).toHaveLength(3);
    expect(limiter.snapshot().platformRemaining).toBeUndefined();
  });

  it('holds calls while a probe is pending, whatever a headerless answer says', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    limiter.observe({ limit: 1000, remaining: 0 });
    const starts: number[] = [];
    launch(limiter, 5, starts);
    // A proxy's 502 to some earlier call: no quota headers.
    limiter.observe({});
    await vi.advanceTimersByTimeAsync(900);
    expect(starts).toEqual([]);
    expect(limiter.pausedUntil()).toBe(T0 + 1000);
  });

  it('sends one probe at a time, even when older calls end without an answer meanwhile', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    const { hanging, hangs, starts } = hangingCalls(limiter);
    void hanging();
    void hanging();
    await vi.advanceTimersByTimeAsync(1000);
    expect(starts).toHaveLength(2);
    limiter.observe({ limit: 1000, remaining: 0 });
    for (let i = 0; i < 6; i++) void hanging();
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    expect(starts).toHaveLength(3); // the probe, hanging
    hangs[0]!();
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    hangs[1]!();
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    expect(starts).toHaveLength(3);
    // The probe itself ends without an answer: the next one a second later.
    hangs[2]!();
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    expect(starts).toHaveLength(4);
    for (const end of hangs) end();
    await vi.advanceTimersByTimeAsync(HOPS);
  });

  it('keeps one probe on the wire, whatever older calls answer meanwhile (headerless, or stale "0 left")', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    const { hanging, hangs, starts } = hangingCalls(limiter);
    void hanging();
    void hanging();
    await vi.advanceTimersByTimeAsync(1000);
    limiter.observe({ limit: 1000, remaining: 0 });
    for (let i = 0; i < 6; i++) void hanging();
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    expect(starts).toHaveLength(3); // A, B and the probe
    // A's answer: a proxy's 502, no quota headers. B's: a stale "0 left".
    limiter.observe({});
    limiter.observe({ limit: 1000, remaining: 0 });
    await vi.advanceTimersByTimeAsync(5000);
    expect(starts).toHaveLength(3);
    expect(limiter.snapshot().platformRemaining).toBe(0);
    // The probe ends unanswered: one more, a second later, and still one at a time.
    hangs[2]!();
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    expect(starts).toHaveLength(4);
    await vi.advanceTimersByTimeAsync(5000);
    expect(starts).toHaveLength(4);
    for (const end of hangs) end();
    await vi.advanceTimersByTimeAsync(HOPS);
  });

  it('keeps the probe a probe when an older call answers headerless before it can start', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 }); // 4 at once
    const { hanging, hangs, starts } = hangingCalls(limiter);
    for (let i = 0; i < 4; i++) void hanging(); // every concurrency slot
    await vi.advanceTimersByTimeAsync(2000);
    expect(starts).toHaveLength(4);
    limiter.observe({ limit: 1000, remaining: 0 });
    for (let i = 0; i < 6; i++) void hanging();
    await vi.advanceTimersByTimeAsync(1000 + HOPS); // the probe waits for a slot
    limiter.observe({}); // an older call's 502, no quota headers
    hangs[0]!();
    await vi.advanceTimersByTimeAsync(HOPS);
    expect(starts).toHaveLength(5); // the probe, hanging
    hangs[1]!(); // another older call ends unanswered: not a reason for a second probe
    await vi.advanceTimersByTimeAsync(31_000);
    expect(starts).toHaveLength(5);
    for (const end of hangs.slice(2)) end();
    await vi.advanceTimersByTimeAsync(HOPS);
  });

  it('asks again when calls counted against what the platform said end without an answer', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    limiter.observe({ limit: 1000, remaining: 2 });
    let tries = 0;
    for (let i = 0; i < 3; i++)
      void limiter
        .schedule(async () => {
          tries++;
          throw new Error('socket hang up');
        })
        .catch(() => 'failed');
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(tries).toBe(3);
  });

  it('pauses every call until the reset after a 429', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 300_000, resetMarginMs: 0 });
    const starts: number[] = [];
    launch(limiter, 1, starts);
    await vi.advanceTimersByTimeAsync(HOPS);
    expect(starts).toHaveLength(1);
    limiter.rateLimited(T0 + 45_000);
    launch(limiter, 2, starts);
    await vi.advanceTimersByTimeAsync(44_999 - HOPS);
    expect(starts).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(starts).toHaveLength(3);
    expect(starts[1]).toBeGreaterThanOrEqual(45_000);
    expect(limiter.snapshot().rateLimited).toBe(1);
  });

  it('asks again shortly, with one call, after a 429 whose reset has just passed', async () => {
    limiter = new RateLimiter({ budget: 1000, windowMs: 300_000, resetMarginMs: 0 });
    // Answered just before the platform's window rolled over, read just after (the header is in
    // whole seconds): the 429's reset is a second in the past.
    limiter.rateLimited(T0 - 1000);
    await expectOneProbeAt1s(limiter, { limit: 1000, remaining: 0 });
  });

  it('does not let calls aborted while held delay the live calls queued after them', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    limiter.rateLimited(T0 + 10_000);
    // Twenty terms that each queued four checks and stepped down while the quota held them.
    for (let term = 0; term < 20; term++) {
      const controller = new AbortController();
      for (let i = 0; i < 4; i++)
        void limiter.schedule(async () => 'ran', controller.signal).catch(() => 'aborted');
      controller.abort(new Error('stepped down'));
    }
    expect(limiter.snapshot().queued).toBe(0);
    const starts: number[] = [];
    launch(limiter, 1, starts);
    expect(limiter.snapshot().queued).toBe(1);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(starts[0]).toBeLessThan(10_000 + HOPS);
  });

  it('starts none of the calls it had admitted before a 429, until the reset', async () => {
    // Spacing ~99 ms: calls bottleneck admitted wait it out, and a 429 comes meanwhile.
    limiter = new RateLimiter({ budget: 100, windowMs: 10_000, resetMarginMs: 0 });
    const starts: number[] = [];
    launch(limiter, 4, starts);
    await vi.advanceTimersByTimeAsync(HOPS);
    expect(starts).toHaveLength(1);
    limiter.rateLimited(T0 + 5000);
    await vi.advanceTimersByTimeAsync(4900);
    expect(starts).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1000);
    expect(starts).toHaveLength(4);
    expect(Math.min(...starts.slice(1))).toBeGreaterThanOrEqual(5000);
  });

  it('takes a fraction of a request left as none left, and asks again as it does at 0', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    limiter.observe({ limit: 1000, remaining: 0.5 });
    expect(limiter.snapshot().platformRemaining).toBe(0);
    await expectOneProbeAt1s(limiter, { limit: 1000, remaining: 0.5 });
  });

  it('probes again when a probe gets no answer at all (a dropped connection)', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    limiter.observe({ limit: 1000, remaining: 0 });
    let tries = 0;
    const failing = () =>
      limiter!
        .schedule(async () => {
          tries++;
          throw new Error('socket hang up');
        })
        .catch(() => 'failed');
    void failing();
    void failing();
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    expect(tries).toBe(1);
    // No answer, so no observe: another probe a second later, not a limiter stuck for good.
    await vi.advanceTimersByTimeAsync(1000 + HOPS);
    expect(tries).toBe(2);
  });

  it('does not let resets it does not believe, or ones that keep moving, hold its window open', async () => {
    limiter = new RateLimiter({ budget: 10, windowMs: 60_000, resetMarginMs: 0 });
    const starts: number[] = [];
    launch(limiter, 20, starts);
    // Every answer: a reset too far ahead to believe (a platform clock an hour ahead).
    for (let t = 0; t < 60_000; t += 5000) {
      limiter.observe({ limit: 1000, remaining: 900, resetAt: Date.now() + 3_600_000 });
      await vi.advanceTimersByTimeAsync(5000);
    }
    await vi.advanceTimersByTimeAsync(HOPS);
    expect(limiter.snapshot().window).toBe(1);
    // Believable resets that move later at every answer lengthen a window once, not forever.
    const before = limiter.snapshot().window;
    for (let t = 0; t < 130_000; t += 5000) {
      limiter.observe({ limit: 1000, remaining: 900, resetAt: Date.now() + 59_000 });
      await vi.advanceTimersByTimeAsync(5000);
    }
    expect(limiter.snapshot().window).toBeGreaterThanOrEqual(before + 1);
    expect(starts.length).toBeGreaterThan(10);
  });

  it('pauses for the fallback time after a 429 without a reset', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 300_000, fallbackPauseMs: 7000, resetMarginMs: 0 });
    limiter.rateLimited(undefined);
    const starts: number[] = [];
    launch(limiter, 1, starts);
    await vi.advanceTimersByTimeAsync(6999);
    expect(starts).toEqual([]);
    await vi.advanceTimersByTimeAsync(1 + HOPS);
    expect(starts).toHaveLength(1);
    expect(starts[0]).toBeGreaterThanOrEqual(7000);
  });

  describe('a reset that cannot be believed', () => {
    const DAY = 86_400_000;

    it('pauses for the fallback after a 429 with a reset 20 days ahead, not 20 days', async () => {
      limiter = new RateLimiter({ budget: 100, windowMs: 300_000, resetMarginMs: 0 });
      limiter.rateLimited(T0 + 20 * DAY);
      expect(limiter.pausedUntil()).toBe(T0 + 300_000);
      const starts: number[] = [];
      launch(limiter, 1, starts);
      await vi.advanceTimersByTimeAsync(299_999);
      expect(starts).toEqual([]);
      await vi.advanceTimersByTimeAsync(1 + HOPS);
      expect(starts).toHaveLength(1);
      expect(starts[0]).toBeLessThan(300_000 + 1000);
    });

    it('survives resets past the timer limit and past what a Date can hold', async () => {
      const warn = vi.fn();
      const log = { warn, debug: vi.fn() } as unknown as import('pino').Logger;
      limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0, log });
      for (const resetAt of [T0 + 2 ** 31 + 5, 1e20 * 1000, Number.POSITIVE_INFINITY, Number.NaN]) {
        expect(() => limiter?.rateLimited(resetAt)).not.toThrow();
        const until = limiter.pausedUntil();
        expect(until).toBe(T0 + 60_000);
        expect(() => new Date(until as number).toISOString()).not.toThrow();
      }
      // One warning for the run of unbelievable resets, not one per answer.
      expect(warn.mock.calls.filter((c) => String(c[1]).includes('too far ahead'))).toHaveLength(1);
      const starts: number[] = [];
      launch(limiter, 1, starts);
      await vi.advanceTimersByTimeAsync(60_000 + HOPS);
      expect(starts).toHaveLength(1);
    });

    it('believes a reset within the longer of the windows plus a minute', () => {
      limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
      // The platform's documented window is 5 minutes, longer than ours here.
      limiter.rateLimited(T0 + 330_000);
      expect(limiter.pausedUntil()).toBe(T0 + 330_000);
      limiter.rateLimited(T0 + 361_000);
      expect(limiter.pausedUntil()).toBe(T0 + 60_000);
    });

    it('does not let a 200 answer with nothing left and an absurd reset hold calls for days', async () => {
      limiter = new RateLimiter({ budget: 100, windowMs: 300_000, resetMarginMs: 0 });
      limiter.observe({ limit: 1000, remaining: 0, resetAt: T0 + 20 * DAY });
      expect(limiter.pausedUntil()).toBe(T0 + 300_000);
      const starts: number[] = [];
      launch(limiter, 1, starts);
      await vi.advanceTimersByTimeAsync(300_000 + HOPS);
      expect(starts).toHaveLength(1);
    });

    it('says it is not paused while only its own budget holds calls back', () => {
      limiter = new RateLimiter({ budget: 1, windowMs: 60_000, resetMarginMs: 0 });
      limiter.observe({ limit: 1000, remaining: 500, resetAt: T0 + 30_000 });
      expect(limiter.pausedUntil()).toBeUndefined();
    });
  });

  it('counts calls in flight against what the platform reported', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 60_000, resetMarginMs: 0 });
    let release!: () => void;
    const hold = new Promise<void>((resolve) => {
      release = resolve;
    });
    const a = limiter.schedule(() => hold);
    const b = limiter.schedule(async () => {
      // Answers while `a` is still in flight: `a` may not be counted in this figure yet.
      limiter?.observe({ remaining: 10, resetAt: T0 + 60_000 });
    });
    await vi.advanceTimersByTimeAsync(2000);
    await b;
    expect(limiter.snapshot().platformRemaining).toBe(9);
    release();
    await vi.advanceTimersByTimeAsync(HOPS);
    await a;
  });

  it('rejects calls that never started when stopped', async () => {
    limiter = new RateLimiter({ budget: 1, windowMs: 60_000 });
    const starts: number[] = [];
    const [first, second] = launch(limiter, 2, starts);
    await vi.advanceTimersByTimeAsync(10);
    await first;
    await limiter.stop();
    await vi.advanceTimersByTimeAsync(10);
    expect(await second).toBe('dropped');
    expect(starts).toHaveLength(1);
    await limiter.stop();
  });

  it('drops a call whose signal aborts while it waits: it rejects at once, never runs, spends nothing', async () => {
    limiter = new RateLimiter({ budget: 2, windowMs: 60_000 });
    const starts: number[] = [];
    launch(limiter, 1, starts);
    await vi.advanceTimersByTimeAsync(HOPS);
    expect(limiter.snapshot().spent).toBe(1);
    // The second call waits out the spacing (half a minute): the replica steps down meanwhile.
    const controller = new AbortController();
    let ran = false;
    const waiting = limiter.schedule(async () => {
      ran = true;
      return 'ran';
    }, controller.signal);
    const reason = new Error('no longer the leader');
    controller.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    await vi.advanceTimersByTimeAsync(30_000);
    expect(ran).toBe(false);
    // The budget's second request is still there for the next call, in the same window.
    expect(limiter.snapshot()).toMatchObject({ spent: 1, window: 0 });
    launch(limiter, 1, starts);
    await vi.advanceTimersByTimeAsync(25_000);
    expect(starts).toHaveLength(2);
    expect(limiter.snapshot()).toMatchObject({ spent: 2, window: 0 });
    // Already aborted: not even queued.
    await expect(limiter.schedule(async () => 'ran', controller.signal)).rejects.toBe(reason);
    // Through a share, the same.
    const share = limiter.share(5);
    await expect(share.schedule(async () => 'ran', controller.signal)).rejects.toBe(reason);
    expect(share.left()).toBe(5);
  });

  it('runs a call whose signal never aborts as any other', async () => {
    limiter = new RateLimiter({ budget: 2, windowMs: 60_000 });
    const controller = new AbortController();
    const result = limiter.schedule(async () => 'ran', controller.signal);
    await vi.advanceTimersByTimeAsync(HOPS);
    await expect(result).resolves.toBe('ran');
    controller.abort(new Error('too late to matter'));
    expect(limiter.snapshot().spent).toBe(1);
  });

  it('a call that throws instead of rejecting rejects with its error and leaves nothing in flight', async () => {
    limiter = new RateLimiter({ budget: 5, windowMs: 60_000 });
    const boom = new Error('thrown, not rejected');
    const result = limiter.schedule((): Promise<string> => {
      throw boom;
    });
    const settled = expect(result).rejects.toBe(boom);
    await vi.advanceTimersByTimeAsync(HOPS);
    await settled;
    expect(limiter.snapshot()).toMatchObject({ spent: 1, inFlight: 0 });
    const next = limiter.schedule(async () => 'ran');
    await vi.advanceTimersByTimeAsync(HOPS + 60_000 / 6);
    await expect(next).resolves.toBe('ran');
  });

  it('validates its options', () => {
    expect(() => new RateLimiter({ budget: 0, windowMs: 1000 })).toThrow(/budget/);
    expect(() => new RateLimiter({ budget: 1, windowMs: 0 })).toThrow(/windowMs/);
  });
});

describe('readRateHeaders', () => {
  it('reads whole requests left, the most cautious of repeated headers, and ignores junk', () => {
    expect(
      readRateHeaders({
        'x-ratelimit-limit': '1000',
        'x-ratelimit-remaining': '998',
        'x-ratelimit-reset': '1700000000',
      }),
    ).toEqual({ limit: 1000, remaining: 998, resetAt: 1_700_000_000_000 });
    expect(readRateHeaders({ 'x-ratelimit-remaining': '0.5' })).toEqual({ remaining: 0 });
    expect(readRateHeaders({ 'x-ratelimit-remaining': '-3' })).toEqual({ remaining: 0 });
    expect(
      readRateHeaders({
        'x-ratelimit-remaining': ['900', '0'],
        'x-ratelimit-reset': ['1700000000', '1700000060'],
      }),
    ).toEqual({ remaining: 0, resetAt: 1_700_000_060_000 });
    expect(readRateHeaders({ 'x-ratelimit-remaining': ['soon', '7'] })).toEqual({ remaining: 7 });
    expect(readRateHeaders({ 'x-ratelimit-remaining': ' ', 'x-ratelimit-limit': 'lots' })).toEqual({});
  });
});
