/**
 * With replicas, the platform client asks whether this replica may still act (`mayAct`) before a
 * request goes out. A call refused there is not sent, and must spend nothing: neither a unit of
 * the budget window nor of the platform's remaining count (which, within one platform window,
 * only falls). So the limiter asks it when the call's turn comes, before counting it.
 */
import { afterEach, expect, it } from 'vitest';
import { RateLimiter } from '../src/platform/rate-limiter.js';
import { type Cleanups, loopbackPlatform, platformClient } from './helpers/platform.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

it('a request that mayAct stops spends nothing of the budget or of the platform count', async () => {
  const { url, seen } = await loopbackPlatform(cleanups, (_req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end('{"items":[]}');
  });
  const limiter = new RateLimiter({ budget: 10, windowMs: 60_000 });
  // The platform has said 5 are left until a reset a minute away.
  limiter.observe({ limit: 1000, remaining: 5, resetAt: Date.now() + 60_000 }, false);
  const { client } = platformClient(cleanups, url, { limiter, mayAct: () => false });
  await expect(client.checkStatuses(['a'])).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
  expect(seen).toEqual([]);
  const { spent, platformRemaining } = limiter.snapshot();
  expect({ spent, platformRemaining }).toEqual({ spent: 0, platformRemaining: 5 });
});
