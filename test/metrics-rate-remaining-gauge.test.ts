/**
 * `sbg_export_watcher_platform_rate_limit_remaining` is documented (README, Metrics) as
 * "The platform's X-RateLimit-Remaining as last reported, less the requests this daemon started
 * since. Absent until the platform reports it, and after a window ends until it reports again."
 * When the platform says nothing is left and names no reset, the limiter lets one probe call go a
 * second later by setting its own figure to 1: the gauge must not show that 1, which the platform
 * never reported (it said 0, and nothing since).
 */
import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import { Metrics } from '../src/http/metrics.js';
import { RateLimiter } from '../src/platform/rate-limiter.js';

const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);
const NAME = 'sbg_export_watcher_platform_rate_limit_remaining';

let limiter: RateLimiter | undefined;
beforeEach(() => {
  vi.useFakeTimers({ now: T0 });
});
afterEach(async () => {
  await limiter?.stop();
  limiter = undefined;
  vi.useRealTimers();
});

function sample(text: string): string | undefined {
  return text.split('\n').find((line) => line.startsWith(`${NAME} `));
}

it('never shows a remaining quota the platform did not report', async () => {
  limiter = new RateLimiter({ budget: 100, windowMs: 300_000 });
  const l = limiter;
  const metrics = new Metrics({
    exportsByState: async () => ({ UNKNOWN: 0, PENDING: 0, RUNNING: 0, COMPLETED: 0, FAILED: 0, LOST: 0 }),
    deliveries: async () => ({
      pending: 0,
      delivered: 0,
      failed: 0,
      gone: 0,
      orphaned: 0,
      oldestPendingAt: null,
    }),
    rateLimit: () => l.snapshot(),
  });
  // An answer that says nothing is left, without a reset (a gateway's headers, say).
  l.observe({ limit: 1000, remaining: 0 });
  expect(sample((await metrics.render()).body)).toBe(`${NAME} 0`);
  // The limiter's probe timer fires; no call is waiting, so none starts.
  await vi.advanceTimersByTimeAsync(1500);
  const shown = sample((await metrics.render()).body);
  // The platform has said 0 and nothing since: 0, or absent (unknown). Not 1.
  expect(shown === undefined || shown === `${NAME} 0`, `gauge shows: ${shown}`).toBe(true);
});
