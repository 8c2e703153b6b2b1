/**
 * An error answer whose body does not arrive whole (a connection reset mid-body, a stall past the
 * timeout): the status line and headers came, and a 429 is a 429 whatever its body. It must stop
 * the calls (the limiter is told), not be retried at once as a malformed answer.
 */
import { afterEach, expect, it } from 'vitest';
import { RateLimiter } from '../src/platform/rate-limiter.js';
import { PlatformError } from '../src/shared/errors.js';
import { type Cleanups, loopbackPlatform, platformClient } from './helpers/platform.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Answers every request `status` with a body declared as 200 bytes, cut off after 10. */
async function cutOff(status: number): Promise<{ endpoint: string; requests: () => number }> {
  const { url, seen } = await loopbackPlatform(cleanups, (req, res) => {
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': '200' });
    res.write('{"status":');
    // The rest never comes: the connection is reset once the headers and 10 bytes are out.
    setImmediate(() => req.socket.destroy());
  });
  return { endpoint: url, requests: () => seen.length };
}

const clientFor = (endpoint: string) =>
  platformClient(cleanups, endpoint, {
    limiter: new RateLimiter({ budget: 100, windowMs: 60_000 }),
    token: 'a-token-of-32-characters-0123456',
    retry: { retries: 4, minTimeoutMs: 1, maintenanceMaxDelayMs: 5 },
  });

it('a 429 whose body is cut off is a 429: the limiter pauses, no retry is sent', async () => {
  const platform = await cutOff(429);
  const { client, limiter } = clientFor(platform.endpoint);
  const error = await client.checkStatuses(['e1', 'e2']).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(PlatformError);
  expect((error as PlatformError).code).toBe('PLATFORM_RATE_LIMITED');
  expect(platform.requests()).toBe(1);
  expect(limiter.snapshot().rateLimited).toBe(1);
  expect(limiter.pausedUntil()).toBeGreaterThan(Date.now());
});

it('a 401 whose body is cut off is a refused token, not a malformed answer retried 4 times', async () => {
  const platform = await cutOff(401);
  const { client } = clientFor(platform.endpoint);
  const error = await client.checkStatuses(['e1', 'e2']).catch((e: unknown) => e);
  expect((error as PlatformError).code).toBe('PLATFORM_UNAUTHORIZED');
  expect(platform.requests()).toBe(1);
});
