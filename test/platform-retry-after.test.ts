/**
 * A 429 that names no reset (no X-RateLimit-Reset: a gateway in front of the platform, say) but
 * says when to come back in `Retry-After`: the calls pause that long, not the fallback pause. The
 * platform's own reset header, when present, still decides.
 */
import { afterEach, expect, it } from 'vitest';
import { RateLimiter } from '../src/platform/rate-limiter.js';
import type { PlatformError } from '../src/shared/errors.js';
import { type Cleanups, loopbackPlatform, platformClient } from './helpers/platform.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const FALLBACK_MS = 300_000;
const BODY = '{"status":429,"code":1000,"message":"Rate limit exceeded! Check response headers."}';

async function tooMany(headers: Record<string, string>): Promise<string> {
  const { url } = await loopbackPlatform(cleanups, (_req, res) => {
    res.writeHead(429, { 'content-type': 'application/json', ...headers });
    res.end(BODY);
  });
  return url;
}

async function pauseAfter429(headers: Record<string, string>): Promise<number> {
  const endpoint = await tooMany(headers);
  const { client, limiter } = platformClient(cleanups, endpoint, {
    limiter: new RateLimiter({
      budget: 100,
      windowMs: 300_000,
      fallbackPauseMs: FALLBACK_MS,
      resetMarginMs: 0,
    }),
  });
  const before = Date.now();
  const error = await client.checkStatuses(['e1']).catch((e: unknown) => e);
  expect((error as PlatformError).code).toBe('PLATFORM_RATE_LIMITED');
  expect(limiter.snapshot().rateLimited).toBe(1);
  const until = limiter.pausedUntil();
  expect(until).toBeDefined();
  return (until as number) - before;
}

it('a 429 with Retry-After in seconds and no reset pauses that long', async () => {
  const pause = await pauseAfter429({ 'retry-after': '7' });
  expect(pause).toBeGreaterThanOrEqual(6_000);
  expect(pause).toBeLessThan(9_000);
});

it('a 429 with Retry-After as an HTTP date and no reset pauses until that date', async () => {
  const at = new Date(Math.ceil((Date.now() + 20_000) / 1000) * 1000).toUTCString();
  const pause = await pauseAfter429({ 'retry-after': at });
  expect(pause).toBeGreaterThanOrEqual(18_000);
  expect(pause).toBeLessThan(23_000);
});

it('X-RateLimit-Reset wins over Retry-After', async () => {
  const reset = Math.ceil((Date.now() + 40_000) / 1000);
  const pause = await pauseAfter429({ 'retry-after': '7', 'x-ratelimit-reset': String(reset) });
  expect(pause).toBeGreaterThanOrEqual(38_000);
  expect(pause).toBeLessThan(42_000);
});

it('an unreadable or absurd Retry-After gets the fallback pause', async () => {
  for (const value of ['soon', '86400000']) {
    const pause = await pauseAfter429({ 'retry-after': value });
    expect(pause).toBeGreaterThanOrEqual(FALLBACK_MS - 1_000);
    expect(pause).toBeLessThanOrEqual(FALLBACK_MS + 1_000);
  }
});

it('the answer is still a rate limit, never retried at once, even with a short Retry-After', async () => {
  const { url, seen } = await loopbackPlatform(cleanups, (_req, res) => {
    res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '0' });
    res.end(BODY);
  });
  const { client } = platformClient(cleanups, url, {
    limiter: new RateLimiter({ budget: 100, windowMs: 300_000 }),
    retry: { retries: 4, minTimeoutMs: 1, maintenanceMaxDelayMs: 5 },
  });
  const error = await client.checkStatuses(['e1']).catch((e: unknown) => e);
  expect((error as PlatformError).code).toBe('PLATFORM_RATE_LIMITED');
  expect(seen.length).toBe(1);
});
