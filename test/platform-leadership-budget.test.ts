/**
 * With replicas, the platform client asks whether this replica may still act (`mayAct`) before a
 * request goes out. A call refused there is not sent, and must spend nothing: neither a unit of
 * the budget window nor of the platform's remaining count (which, within one platform window,
 * only falls). So the limiter asks it when the call's turn comes, before counting it.
 */
import { createServer } from 'node:http';
import pino from 'pino';
import { afterEach, expect, it } from 'vitest';
import { PlatformClient } from '../src/platform/platform-client.js';
import { RateLimiter } from '../src/platform/rate-limiter.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

it('a request that mayAct stops spends nothing of the budget or of the platform count', async () => {
  let requests = 0;
  const server = createServer((_req, res) => {
    requests++;
    res.setHeader('content-type', 'application/json');
    res.end('{"items":[]}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
  const limiter = new RateLimiter({ budget: 10, windowMs: 60_000 });
  cleanups.push(() => limiter.stop());
  // The platform has said 5 are left until a reset a minute away.
  limiter.observe({ limit: 1000, remaining: 5, resetAt: Date.now() + 60_000 }, false);
  const client = new PlatformClient({
    endpoint: `http://127.0.0.1:${(server.address() as { port: number }).port}/v2`,
    token: 't',
    gate: limiter,
    userAgent: 't',
    log: pino({ level: 'silent' }),
    mayAct: () => false,
  });
  cleanups.push(() => client.close());
  await expect(client.checkStatuses(['a'])).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
  expect(requests).toBe(0);
  const { spent, platformRemaining } = limiter.snapshot();
  expect({ spent, platformRemaining }).toEqual({ spent: 0, platformRemaining: 5 });
});
