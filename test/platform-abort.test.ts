/**
 * A platform call's own signal (`CallOptions.signal`): what a leader that steps down uses to drop
 * its checks at once. Wherever the call is (on the wire, waiting to retry, queued in the limiter),
 * it rejects with the signal's reason, makes no further request, and reports no outcome on the bus
 * (an aborted request is not a platform failure). Real HTTP on loopback, a real limiter.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { RateLimiter } from '../src/platform/rate-limiter.js';
import { Bus, type WatcherEvents } from '../src/shared/bus.js';
import { PlatformError } from '../src/shared/errors.js';
import { loopbackPlatform, platformClient } from './helpers/platform.js';
import { silentServer } from './helpers/silent-server.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A platform whose every answer `respond` decides; counts the requests it got. */
const platform = (respond: (req: IncomingMessage, res: ServerResponse) => void) =>
  loopbackPlatform(cleanups, respond);

function client(endpoint: string, limiter = new RateLimiter({ budget: 1000, windowMs: 60_000 })) {
  const bus = new Bus();
  const outcomes: Array<WatcherEvents['platform.request']> = [];
  bus.on('platform.request', (r) => outcomes.push(r));
  const { client: c } = platformClient(cleanups, endpoint, {
    limiter,
    bus,
    token: 'tok_abort_test_1',
    retry: { retries: 3, minTimeoutMs: 200, maintenanceMaxDelayMs: 60_000 },
  });
  return { client: c, outcomes, limiter };
}

const stepDown = () => new PlatformError('SHUTTING_DOWN', 'no longer the leader: call dropped');

describe("a platform call's signal", () => {
  it('drops a request on the wire at once, and reports no outcome for it', async () => {
    const p = await platform(() => {
      // Never answers.
    });
    const { client: c, outcomes } = await client(p.url);
    const controller = new AbortController();
    const call = c.checkStatuses('export', ['a', 'b'], { signal: controller.signal });
    while (p.seen.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    const reason = stepDown();
    const started = performance.now();
    controller.abort(reason);
    await expect(call).rejects.toBe(reason);
    expect(performance.now() - started).toBeLessThan(200);
    expect(outcomes).toEqual([]);
    expect(p.seen).toEqual(['POST /v2/bulk/storage/exports/get']);
  });

  it('ends a retry wait (maintenance is waited out forever otherwise), with no further request', async () => {
    const p = await platform((_req, res) => {
      res.writeHead(503, { 'content-type': 'application/json' }).end('{"code":0}');
    });
    const { client: c, outcomes } = await client(p.url);
    const controller = new AbortController();
    const call = c.checkStatuses('import', ['i'], { signal: controller.signal });
    while (p.seen.length < 2) await new Promise((resolve) => setTimeout(resolve, 5));
    const reason = stepDown();
    controller.abort(reason);
    await expect(call).rejects.toBe(reason);
    const made = p.seen.length;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(p.seen).toHaveLength(made);
    expect(outcomes.every((o) => o.outcome === 'maintenance')).toBe(true);
  });

  it('drops a call queued in the limiter before it is sent, spending nothing', async () => {
    const p = await platform((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"items":[]}');
    });
    // One request per minute: the second call waits in the limiter.
    const { client: c, limiter } = await client(p.url, new RateLimiter({ budget: 1, windowMs: 60_000 }));
    await c.listPage('export', { state: 'PENDING' });
    const controller = new AbortController();
    const call = c.listPage('export', { state: 'RUNNING' }, undefined, { signal: controller.signal });
    await new Promise((resolve) => setTimeout(resolve, 50));
    const reason = stepDown();
    controller.abort(reason);
    await expect(call).rejects.toBe(reason);
    expect(p.seen).toHaveLength(1);
    expect(limiter.snapshot().spent).toBe(1);
  });

  it('is harmless once the call has answered; and the quota read takes one too', async () => {
    const p = await platform((req, res) => {
      const body = req.url?.endsWith('/rate_limit')
        ? '{"rate":{"limit":1000,"remaining":999,"reset":2000000000}}'
        : '{"items":[]}';
      res.writeHead(200, { 'content-type': 'application/json' }).end(body);
    });
    const { client: c, outcomes } = await client(p.url);
    const controller = new AbortController();
    await expect(c.rateLimit({ signal: controller.signal })).resolves.toMatchObject({ limit: 1000 });
    await expect(c.checkStatuses('export', [], { signal: controller.signal })).resolves.toEqual({
      observations: [],
      warnings: [],
    });
    controller.abort(stepDown());
    expect(outcomes.map((o) => o.outcome)).toEqual(['ok']);
    await expect(c.rateLimit({ signal: controller.signal })).rejects.toBeInstanceOf(PlatformError);
  });
});

describe('a platform whose TLS handshake never ends (https to a port that stays silent)', () => {
  const realSetTimeout = globalThis.setTimeout;
  /** How the call settled, or 'pending' after `ms` of real time. */
  const settled = (call: Promise<unknown>, ms: number) =>
    Promise.race([
      call.then(
        () => 'answered',
        (error: unknown) => error,
      ),
      new Promise((resolve) => realSetTimeout(() => resolve('pending'), ms)),
    ]);

  it("is cut off at the client's timeout, not at undici's own 10 s connect timeout", async () => {
    // Real time: the limiter's own timers would not run under fake ones. 500 ms against 10 s.
    const { url, connected } = await silentServer(cleanups, '/v2');
    const { client: c } = platformClient(cleanups, url, { timeoutMs: 500 });
    const call = c.checkStatuses('export', ['a']);
    await connected;
    const error = await settled(call, 5_000);
    expect(error).toBeInstanceOf(PlatformError);
    expect(error).toMatchObject({ code: 'PLATFORM_TIMEOUT' });
    // Said in words, not as the timeout DOMException's legacy code ("(23)").
    expect((error as PlatformError).message).not.toMatch(/\(\d+\)/);
  });

  it('drops the call at once when its signal aborts (a leader stepping down, a close)', async () => {
    const { url, connected } = await silentServer(cleanups, '/v2');
    const { client: c } = platformClient(cleanups, url, { timeoutMs: 60_000 });
    const controller = new AbortController();
    const call = c.checkStatuses('export', ['a'], { signal: controller.signal });
    await connected;
    const reason = stepDown();
    controller.abort(reason);
    expect(await settled(call, 2_000)).toBe(reason);
  });

  it("lets close() end once no call is in flight, not at undici's connect timeout for a handshake given up on", async () => {
    // The call ends at its 300 ms timeout; the handshake it gave up on is still held by undici's
    // pool until its own 10 s connect timeout, and a graceful close of the pool waited for it: a
    // shutdown then ran into its deadline ("checks still in flight") with no check in flight.
    const { url, connected } = await silentServer(cleanups, '/v2');
    const { client: c } = platformClient(cleanups, url, { timeoutMs: 300 });
    const call = c.checkStatuses('export', ['a']);
    await connected;
    expect(await settled(call, 5_000)).toMatchObject({ code: 'PLATFORM_TIMEOUT' });
    expect(await settled(c.close(), 2_000)).toBe('answered');
  });
});
