/**
 * `GET /rate_limit` is free, so it does not pass the limiter: its answer is not one of the calls in
 * flight. What it says is left must be lowered by every counted call in flight (none of them may
 * be counted in it yet), not by all but one as for the answer of a counted call.
 */
import type { ServerResponse } from 'node:http';
import { afterEach, expect, it } from 'vitest';
import { type Cleanups, loopbackPlatform, platformClient } from './helpers/platform.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

it('the free quota read counts every call in flight against what it says is left', async () => {
  const reset = Math.floor(Date.now() / 1000) + 60;
  const held: ServerResponse[] = [];
  let sawHeld!: () => void;
  const twoHeld = new Promise<void>((resolve) => {
    sawHeld = resolve;
  });
  const { url } = await loopbackPlatform(cleanups, (req, res) => {
    if (req.url?.endsWith('/rate_limit')) {
      res
        .writeHead(200, {
          'content-type': 'application/json',
          'x-ratelimit-limit': '1000',
          'x-ratelimit-remaining': '2',
          'x-ratelimit-reset': String(reset),
        })
        .end(JSON.stringify({ rate: { limit: 1000, remaining: 2, reset } }));
      return;
    }
    // Bulk checks are held on the wire (the platform counts them when it answers).
    held.push(res);
    if (held.length === 2) sawHeld();
  });
  const { client, limiter } = platformClient(cleanups, url, { token: 'tok_rate_read_test_1' });

  const checks = [client.checkStatuses(['e1']), client.checkStatuses(['e2'])].map((p) => p.catch(() => 'x'));
  await twoHeld;
  expect(limiter.snapshot().inFlight).toBe(2);
  await client.rateLimit();
  // The platform said 2 are left, and 2 calls are on the wire that it may not have counted yet.
  expect(limiter.snapshot().platformRemaining).toBe(0);
  for (const res of held) res.writeHead(200, { 'content-type': 'application/json' }).end('{"items":[]}');
  await Promise.all(checks);
});
