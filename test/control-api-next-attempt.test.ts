/**
 * GET /v1/events shows a delivery's `next_attempt_at` (README: "next attempt time"). While an
 * attempt is in flight, or waiting between the quick in-memory retries, the stored value is the
 * claim's lease end (now + 15 min), which the API shows as if it were the next attempt.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, expect, it } from 'vitest';
import { type Stack, startStack } from './helpers/stack.js';

let stack: Stack | undefined;
const held: ServerResponse[] = [];
let hook: ReturnType<typeof createServer> | undefined;
afterEach(async () => {
  for (const res of held.splice(0)) res.writeHead(204).end();
  await stack?.close();
  stack = undefined;
  await new Promise<void>((resolve) => (hook ? hook.close(() => resolve()) : resolve()));
  hook = undefined;
});

it('an attempt in flight does not show a next attempt 15 minutes ahead', async () => {
  let arrived!: () => void;
  const first = new Promise<void>((resolve) => {
    arrived = resolve;
  });
  hook = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    held.push(res); // answered only after the test
    arrived();
  });
  await new Promise<void>((resolve) => hook?.listen(0, '127.0.0.1', () => resolve()));
  const url = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hooks`;
  stack = await startStack({ sim: { exports: 0 }, env: { WATCHER_WEBHOOK_URLS: url } });
  const [id] = stack.sim.createExports(1, { outcome: 'COMPLETED', pendingMs: 1, runningMs: 1 } as never);
  expect((await stack.post('/v1/exports', { ids: [id] })).status).toBe(202);
  await first; // the first attempt is on the wire, unanswered
  const asked = Date.now();
  const r = await stack.get('/v1/events');
  const d = (r.json as { items: Array<{ deliveries: Array<Record<string, unknown>> }> }).items[0]
    ?.deliveries[0] as { status: string; attempts: number; next_attempt_at: string | null };
  expect(d.status).toBe('pending');
  expect(d.attempts).toBe(0);
  // The attempt is happening now: no next attempt is planned yet (the stored time is the claim's
  // lease end, 15 minutes out, which is not shown as one).
  expect(d.next_attempt_at, `asked at ${new Date(asked).toISOString()}`).toBeNull();
}, 30_000);
