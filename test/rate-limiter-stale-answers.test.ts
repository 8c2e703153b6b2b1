/**
 * Answers that come back out of order: the platform counts a request when it arrives and says
 * what is left in that request's answer, so a slow call's answer, read after a faster one's (or
 * after a 429), says more is left than is. Within one platform window (the same reset) what is
 * left only ever falls: an older figure must not raise it again.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { RateLimiter } from '../src/platform/rate-limiter.js';

const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);
const HOPS = 20;

describe('a stale answer (a slow call read after a later one)', () => {
  let limiter: RateLimiter | undefined;
  const open: Array<() => void> = [];
  beforeEach(() => {
    vi.useFakeTimers({ now: T0 });
  });
  afterEach(async () => {
    // Calls still on the wire end without an answer, so that stop() need not wait for them.
    for (const end of open.splice(0)) end();
    await limiter?.stop();
    limiter = undefined;
    vi.useRealTimers();
  });

  /** A call that hangs until `answer(info)` observes `info` and ends it, like the client does. */
  function slowCall(l: RateLimiter, starts: number[]) {
    let answer!: (info: Parameters<RateLimiter['observe']>[0]) => void;
    const p = l
      .schedule(
        () =>
          new Promise<void>((resolve) => {
            starts.push(Date.now() - T0);
            open.push(resolve);
            answer = (info) => {
              l.observe(info);
              resolve();
            };
          }),
      )
      .catch(() => 'dropped');
    return { answer: (info: Parameters<RateLimiter['observe']>[0]) => answer(info), done: p };
  }

  /** Two slow calls on the wire, the first started before the second (as the platform counts them). */
  async function twoOnTheWire(l: RateLimiter, starts: number[]) {
    const first = slowCall(l, starts);
    await vi.advanceTimersByTimeAsync(HOPS);
    const second = slowCall(l, starts);
    await vi.advanceTimersByTimeAsync(3000);
    expect(starts).toHaveLength(2);
    return [first, second] as const;
  }

  it('does not lift the pause of a 429 before the reset', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 300_000, resetMarginMs: 0 });
    const reset = T0 + 60_000;
    const starts: number[] = [];
    // A slow call goes first (the platform counts it: 4 left), then a fast one meets a 429 (the
    // user's other tools spent the rest meanwhile).
    const [slow, fast] = await twoOnTheWire(limiter, starts);
    fast.answer({ limit: 1000, remaining: 0, resetAt: reset });
    limiter.rateLimited(reset);
    await fast.done;
    // The slow call's answer, written when it arrived, is read now.
    slow.answer({ limit: 1000, remaining: 4, resetAt: reset });
    await slow.done;
    for (let i = 0; i < 4; i++) slowCall(limiter, starts);
    await vi.advanceTimersByTimeAsync(56_000);
    // README: a 429 "pauses every call until the reset".
    expect(starts).toHaveLength(2);
    expect(limiter.pausedUntil()).toBe(reset);
  });

  it('never starts more calls than the freshest answer says are left', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 300_000, resetMarginMs: 0 });
    const reset = T0 + 60_000;
    limiter.observe({ limit: 1000, remaining: 3, resetAt: reset });
    const starts: number[] = [];
    const a = slowCall(limiter, starts);
    await vi.advanceTimersByTimeAsync(30_000);
    const b = slowCall(limiter, starts);
    await vi.advanceTimersByTimeAsync(20_000);
    expect(starts).toHaveLength(2);
    // The platform counted a (2 left), then b (1 left); b's answer is read first.
    b.answer({ limit: 1000, remaining: 1, resetAt: reset });
    await b.done;
    a.answer({ limit: 1000, remaining: 2, resetAt: reset });
    await a.done;
    for (let i = 0; i < 3; i++) slowCall(limiter, starts);
    await vi.advanceTimersByTimeAsync(9_000);
    // 3 were left at the start of the window: at most 3 calls before the reset.
    expect(starts.length).toBeLessThanOrEqual(3);
  });

  it('a stale answer does not lift a pause when the reset is one not believed (the fallback)', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 300_000, resetMarginMs: 0 });
    // A reset header that cannot be believed (milliseconds sent as seconds: days ahead).
    const broken = T0 * 1000;
    const starts: number[] = [];
    const [slow, fast] = await twoOnTheWire(limiter, starts);
    fast.answer({ limit: 1000, remaining: 0, resetAt: broken });
    await fast.done;
    const pausedUntil = limiter.pausedUntil();
    expect(pausedUntil).toBeDefined();
    await vi.advanceTimersByTimeAsync(2000);
    // The slow call, counted first by the platform (4 left then), is read now.
    slow.answer({ limit: 1000, remaining: 4, resetAt: broken });
    await slow.done;
    for (let i = 0; i < 4; i++) slowCall(limiter, starts);
    await vi.advanceTimersByTimeAsync(60_000);
    // The platform said nothing is left: held until the (fallback) reset.
    expect(starts).toHaveLength(2);
    expect(limiter.pausedUntil()).toBe(pausedUntil);
  });

  it('a 429 that named no reset is held only until the reset a later answer names', async () => {
    limiter = new RateLimiter({ budget: 100, windowMs: 300_000, resetMarginMs: 0 });
    const starts: number[] = [];
    const [a, b] = await twoOnTheWire(limiter, starts);
    // b meets a 429 without X-RateLimit-Reset: the fallback pause (5 minutes).
    b.answer({});
    limiter.rateLimited(undefined);
    await b.done;
    expect(limiter.pausedUntil()).toBe(Date.now() + 300_000);
    // a's answer says nothing is left either, and when the platform's window resets: in 20 s.
    const reset = Date.now() + 20_000;
    a.answer({ limit: 1000, remaining: 0, resetAt: reset });
    await a.done;
    expect(limiter.pausedUntil()).toBe(reset);
    slowCall(limiter, starts);
    await vi.advanceTimersByTimeAsync(25_000);
    expect(starts).toHaveLength(3);
  });

  it("an old window's answer, read after the new window's, does not pause the new window", async () => {
    limiter = new RateLimiter({ budget: 1000, windowMs: 300_000, resetMarginMs: 0 });
    const oldReset = T0 + 10_000;
    limiter.observe({ limit: 1000, remaining: 5, resetAt: oldReset }, false);
    const starts: number[] = [];
    // A slow call goes in the old window: the platform counts it there (its last request: 0 left).
    const slow = slowCall(limiter, starts);
    await vi.advanceTimersByTimeAsync(15_000);
    // The old window is over; a call of the new one is answered: 999 left until the new reset.
    const newReset = oldReset + 300_000;
    const fresh = slowCall(limiter, starts);
    await vi.advanceTimersByTimeAsync(100);
    expect(starts).toHaveLength(2);
    fresh.answer({ limit: 1000, remaining: 999, resetAt: newReset });
    await fresh.done;
    // The slow call's answer, written in the old window, is read now.
    slow.answer({ limit: 1000, remaining: 0, resetAt: oldReset });
    await slow.done;
    expect(limiter.pausedUntil()).toBeUndefined();
    for (let i = 0; i < 3; i++) slowCall(limiter, starts);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(starts).toHaveLength(5);
  });
});

describe('through the client, on loopback', () => {
  it("a slow call's answer read after a 429 leaves every call held until the reset", async () => {
    const { createServer } = await import('node:http');
    const { PlatformClient } = await import('../src/platform/platform-client.js');
    const pino = (await import('pino')).default;
    const reset = Math.floor(Date.now() / 1000) + 120;
    let n = 0;
    let answerFirst!: () => void;
    const server = createServer((_req, res) => {
      const rate = { 'x-ratelimit-limit': '1000', 'x-ratelimit-reset': String(reset) };
      if (++n === 1) {
        // The first call was counted when it arrived (4 left then); its answer comes last.
        answerFirst = () =>
          res
            .writeHead(200, { 'content-type': 'application/json', ...rate, 'x-ratelimit-remaining': '4' })
            .end('{"items":[]}');
        return;
      }
      // Meanwhile the user's other tools spent the rest: the second call meets a 429.
      res
        .writeHead(429, { 'content-type': 'application/json', ...rate, 'x-ratelimit-remaining': '0' })
        .end('{"status":429,"code":1000,"message":"Rate limit exceeded! Check response headers."}');
      setImmediate(() => answerFirst());
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const limiter = new RateLimiter({ budget: 1000, windowMs: 300_000, resetMarginMs: 0 });
    const client = new PlatformClient({
      endpoint: `http://127.0.0.1:${(server.address() as { port: number }).port}/v2`,
      token: 'tok_stale_answer_test',
      gate: limiter,
      userAgent: 't',
      log: pino({ level: 'silent' }),
      retry: { retries: 0, minTimeoutMs: 1, maintenanceMaxDelayMs: 5 },
    });
    try {
      const first = client.checkStatuses(['e1']);
      const second = client.checkStatuses(['e2']).catch((e: unknown) => e);
      await first;
      await second;
      expect(n).toBe(2);
      // README: a 429 "pauses every call until the reset".
      expect(limiter.snapshot().allowance).toBe(0);
      expect(limiter.pausedUntil()).toBe(reset * 1000);
    } finally {
      await limiter.stop();
      await client.destroy();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
