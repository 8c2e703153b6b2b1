/**
 * The whole watcher over real loopback HTTP: the simulator as the platform, the daemon, and a
 * webhook receiver whose deliveries are checked with the reference `standardwebhooks` package.
 * Nothing sleeps: each test awaits the state it needs (every event received) under a deadline.
 */
import { connect } from 'node:net';
import { Webhook } from 'standardwebhooks';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { storedEventBuilder } from '../src/delivery/events.js';
import { endpointKey } from '../src/store/store.js';
import { move } from './helpers/changes.js';
import { SECRET, type Stack, startStack, TOKEN, terminalEvents } from './helpers/stack.js';

const SHORT = { pendingMs: [100, 800] as [number, number], runningMs: [200, 1500] as [number, number] };

function verifyAll(stack: Stack): void {
  const wh = new Webhook(SECRET);
  for (const attempt of stack.receiver.received) {
    expect(() =>
      wh.verify(attempt.body, {
        'webhook-id': attempt.id,
        'webhook-timestamp': String(attempt.timestamp),
        'webhook-signature': attempt.signature ?? '',
      }),
    ).not.toThrow();
  }
}

function expectNoSecretsIn(stack: Stack): void {
  const all = stack.logs.join('');
  expect(all.length).toBeGreaterThan(0);
  expect(all).not.toContain(TOKEN);
  expect(all).not.toContain(SECRET);
  expect(all).not.toContain(SECRET.slice('whsec_'.length));
}

describe('the watcher against the simulator', () => {
  let stack: Stack | undefined;
  afterEach(async () => {
    await stack?.close();
    stack = undefined;
  });

  it('delivers exactly one signed terminal event per export, LOST for unknown ids, within the rules', async () => {
    stack = await startStack({ sim: { timing: SHORT, failRate: 0.3 } });
    const ids = stack.sim.createExports(500);
    const unknown = ['no-such-export-1', 'no-such-export-2', 'no-such-export-3'];
    // Registered in several requests, each with its own metadata, as other systems would.
    for (let i = 0; i < ids.length; i += 125) {
      const res = await stack.post('/v1/exports', {
        ids: ids.slice(i, i + 125),
        metadata: { batch: i / 125 },
      });
      expect(res.status).toBe(202);
      expect((res.json as { accepted: string[] }).accepted).toHaveLength(125);
    }
    expect((await stack.post('/v1/exports', { ids: unknown, metadata: { batch: 'unknown' } })).status).toBe(
      202,
    );

    const expected = ids.length + unknown.length;
    await stack.receiver.waitFor((r) => r.acceptedIds().size >= expected, 60_000);
    await stack.daemon.deliveries.settled();

    const events = terminalEvents(stack.receiver);
    expect(events.size).toBe(expected);
    let failed = 0;
    for (const [i, id] of ids.entries()) {
      const list = events.get(id) ?? [];
      // Exactly one terminal event, under one webhook-id.
      expect(list).toHaveLength(1);
      const event = list[0]!;
      const outcome = stack.sim.stateOf(id);
      expect(event.body.type).toBe(outcome === 'COMPLETED' ? 'export.completed' : 'export.failed');
      expect(event.webhookId).toBe(`evt_${id}_${outcome === 'COMPLETED' ? 'completed' : 'failed'}`);
      expect(event.body.data).toMatchObject({
        export_id: id,
        state: outcome,
        metadata: { batch: Math.floor(i / 125) },
      });
      if (outcome === 'FAILED') {
        failed++;
        expect(event.body.data.export).toMatchObject({ id, state: 'FAILED', error: { code: 9107 } });
      } else {
        expect(event.body.data.export).toMatchObject({ id, state: 'COMPLETED', result: expect.any(Object) });
      }
    }
    expect(failed).toBeGreaterThan(50);
    for (const id of unknown) {
      const list = events.get(id) ?? [];
      expect(list).toHaveLength(1);
      expect(list[0]!.body).toMatchObject({
        type: 'export.lost',
        data: { export_id: id, state: 'LOST', export: null, metadata: { batch: 'unknown' } },
      });
    }

    verifyAll(stack);
    const stats = stack.sim.stats();
    expect(stats.maxIdsPerBulkCall).toBeLessThanOrEqual(100);
    expect(stats.checksAfterTerminal).toBe(0);
    expect(stats.rateLimited).toBe(0);
    // Bulk, not one call per export: far fewer calls than ids checked.
    expect(stats.bulkIdsPerCall.length * 10).toBeLessThan(stats.idsChecked);
    expect(stack.receiver.received.every((w) => w.headers['user-agent'] === `sbg-export-watcher/0.1.0`)).toBe(
      true,
    );

    // What an operator sees: ready, and metrics that add up to the same story.
    expect((await stack.get('/readyz')).status).toBe(200);
    const metrics = await request(`${stack.apiUrl}/metrics`);
    expect(metrics.statusCode).toBe(200);
    const text = await metrics.body.text();
    const completed = ids.filter((id) => stack!.sim.stateOf(id) === 'COMPLETED').length;
    expect(text).toContain(`sbg_export_watcher_exports{state="COMPLETED"} ${completed}`);
    expect(text).toContain(`sbg_export_watcher_exports{state="LOST"} ${unknown.length}`);
    const delivered =
      /sbg_export_watcher_webhook_deliveries_total\{[^}]*result="delivered"[^}]*\} (\d+)/.exec(text);
    expect(Number(delivered?.[1])).toBe(expected);
    expect(text).toMatch(/sbg_export_watcher_platform_bulk_call_ids_count \d+/);
    expect(text).toContain('process_cpu_user_seconds_total');

    const records = (await stack.get('/v1/exports?state=LOST')).json as { items: Array<{ id: string }> };
    expect(records.items.map((r) => r.id).sort()).toEqual([...unknown].sort());
    expectNoSecretsIn(stack);
  });

  it('stays under a quota smaller than the work while another client eats part of every window', async () => {
    // 40 requests per 3 s window, 15 of them taken by another client as each window opens; the
    // daemon's own budget (30) would overrun what is left, so it must obey X-RateLimit-Remaining.
    stack = await startStack({
      sim: {
        timing: { pendingMs: [200, 2000], runningMs: [1000, 6000] },
        failRate: 0.2,
        quota: { limit: 40, windowMs: 3000, otherClientPerWindow: 15 },
      },
      env: {
        WATCHER_RATE_BUDGET: '30',
        WATCHER_RATE_WINDOW: '3s',
        WATCHER_POLL_INTERVAL: '200ms',
        WATCHER_BATCH_SIZE: '20',
      },
    });
    const ids = stack.sim.createExports(200);
    expect((await stack.post('/v1/exports', { ids })).status).toBe(202);
    // Checking 200 ids in batches of 20 every 200 ms would take 50 calls a second: far more than allowed.
    await stack.receiver.waitFor((r) => r.acceptedIds().size >= ids.length, 90_000);
    const stats = stack.sim.stats();
    expect(stats.rateLimited).toBe(0);
    expect(stats.checksAfterTerminal).toBe(0);
    expect(terminalEvents(stack.receiver).size).toBe(ids.length);
    // The work spanned several windows, and the daemon never took more than a window left it.
    expect(stats.bulkIdsPerCall.length).toBeGreaterThan(2 * 25);
    expect(stack.daemon.limiter.snapshot().platformLimit).toBe(40);
  });

  it('rides out maintenance, 500s, cut-off and slow answers, and a receiver that refuses first attempts', async () => {
    stack = await startStack({
      sim: {
        timing: { pendingMs: [200, 1000], runningMs: [1000, 4000] },
        // Most calls meet a fault of some kind.
        faults: {
          maintenanceRate: 0.2,
          errorRate: 0.2,
          truncateRate: 0.15,
          malformedRate: 0.1,
          slowRate: 0.15,
          slowMs: 300,
        },
      },
      // The first two attempts of every event are refused, one of them with a Retry-After.
      receiver: {
        respond: (_req, attempt) =>
          attempt === 1 ? { status: 503, headers: { 'retry-after': '0' } } : attempt === 2 ? 500 : 204,
      },
    });
    const ids = stack.sim.createExports(120);
    expect((await stack.post('/v1/exports', { ids })).status).toBe(202);
    await stack.receiver.waitFor((r) => r.acceptedIds().size >= ids.length, 90_000);

    const faults = stack.sim.stats().faults;
    expect(faults.maintenance).toBeGreaterThan(0);
    expect(faults.error).toBeGreaterThan(0);
    expect(faults.truncated).toBeGreaterThan(0);
    expect(faults.slow).toBeGreaterThan(0);
    expect(stack.sim.stats().checksAfterTerminal).toBe(0);

    const events = terminalEvents(stack.receiver);
    expect(events.size).toBe(ids.length);
    for (const id of ids) {
      const attempts = stack.receiver.received.filter(
        (w) => (w.json as { data: { export_id: string } }).data.export_id === id,
      );
      // Refused twice, accepted on the third; every attempt under the same webhook-id.
      expect(attempts.map((a) => a.status)).toEqual([503, 500, 204]);
      expect(new Set(attempts.map((a) => a.id)).size).toBe(1);
    }
    verifyAll(stack);
    expectNoSecretsIn(stack);
  });

  it('delivers every other export while one fails each call naming it, and that one once it heals', async () => {
    stack = await startStack({ sim: { timing: SHORT }, env: { WATCHER_BATCH_SIZE: '10' } });
    const ids = stack.sim.createExports(40);
    const bad = ids[0] as string;
    stack.sim.setFaults({ errorIds: [bad] });
    expect((await stack.post('/v1/exports', { ids })).status).toBe(202);
    await stack.receiver.waitFor((r) => r.acceptedIds().size >= ids.length - 1, 60_000);
    const events = terminalEvents(stack.receiver);
    expect(events.has(bad)).toBe(false);
    expect(events.size).toBe(ids.length - 1);
    // Held apart, never final: the platform never said anything about it.
    expect(stack.daemon.scheduler.isolation.ids).toBe(1);
    expect(stack.daemon.tracker.get(bad)).toMatchObject({ state: 'UNKNOWN', misses: 0 });
    expect(stack.sim.stats().faults.errorId).toBeGreaterThan(0);

    stack.sim.setFaults({});
    await stack.receiver.waitFor((r) => r.acceptedIds().size >= ids.length, 60_000);
    expect(terminalEvents(stack.receiver).get(bad)?.[0]?.body.data.state).toMatch(/^(COMPLETED|FAILED)$/);
    expect(stack.daemon.scheduler.isolation).toEqual({ ids: 0, groups: 0, callsOut: 0 });
    expect(stack.sim.stats().checksAfterTerminal).toBe(0);
    verifyAll(stack);
    expectNoSecretsIn(stack);
  });

  it('redelivers since a time to the configured endpoints only: none to a URL no longer configured', async () => {
    stack = await startStack();
    const { store, deliveries } = stack.daemon;
    const old = {
      key: endpointKey('https://old.example/hooks?token=rotated'),
      label: 'https://old.example/hooks',
    };
    const at = Date.now() - 60_000;
    await store.addExports([{ ids: ['x'], metadata: null }], at);
    await store.commitChanges(
      [move('x', 'UNKNOWN', 'COMPLETED', at)],
      storedEventBuilder('all'),
      [old, ...deliveries.endpoints],
      at,
    );
    const failed = { seriesStartedAt: at, attempts: 9, nextAttemptAt: null, lastStatus: 503, finishedAt: at };
    await store.recordAttempts(
      [old, ...deliveries.endpoints].map((e) => ({
        ...failed,
        eventId: 'evt_x_completed',
        endpointKey: e.key,
        status: 'failed' as const,
        lastError: 'HTTP 503',
      })),
    );
    const r = await stack.post('/v1/events/redeliver', { since: new Date(at - 1000).toISOString() });
    expect(r).toEqual({ status: 202, json: { deliveries: 1 } });
    await stack.receiver.waitFor((rec) => rec.acceptedIds().has('evt_x_completed'), 10_000);
    expect((await store.deliveryCounts(deliveries.endpoints.map((e) => e.key))).orphaned).toBe(0);
    const kept = (await store.getEvent('evt_x_completed'))?.deliveries.find((d) => d.endpointKey === old.key);
    expect(kept).toMatchObject({ status: 'failed', lastStatus: 503 });
  });

  it('falls back to single gets when the bulk endpoint is missing', async () => {
    stack = await startStack({ sim: { timing: SHORT, bulk: false } });
    const ids = stack.sim.createExports(15);
    expect((await stack.post('/v1/exports', { ids: [...ids, 'gone-for-good'] })).status).toBe(202);
    await stack.receiver.waitFor((r) => r.acceptedIds().size >= ids.length + 1, 60_000);
    const stats = stack.sim.stats();
    expect(stats.requests.get).toBeGreaterThan(ids.length);
    expect(stats.bulkIdsPerCall).toEqual([]);
    expect(stack.daemon.client.bulkSupported).toBe(false);
    expect(terminalEvents(stack.receiver).get('gone-for-good')?.[0]?.body.type).toBe('export.lost');
  });

  it('rejects malformed control requests and adds nothing', async () => {
    stack = await startStack();
    const bad = await stack.post('/v1/exports', { ids: ['good-id', 'bad id!'] });
    expect(bad.status).toBe(400);
    expect(bad.json).toMatchObject({ error: { code: 'invalid_request', details: [{ field: 'ids[1]' }] } });
    expect((await stack.post('/v1/exports', '{"ids": [')).status).toBe(400);
    expect((await stack.get('/v1/exports')).json).toEqual({ items: [], next_cursor: null });
    expect(stack.sim.stats().idsChecked).toBe(0);
  });

  it('is the leader, alone on SQLite: /readyz and the leader gauge say so', async () => {
    stack = await startStack();
    await until(async () => (await stack!.get('/readyz')).status === 200);
    expect((await stack.get('/readyz')).json).toEqual({ status: 'ok', role: 'leader' });
    expect(stack.daemon.role).toBe('leader');
    expect(stack.daemon.election).toBeUndefined();
    const text = await (await request(`${stack.apiUrl}/metrics`)).body.text();
    expect(text).toContain('sbg_export_watcher_leader{role="leader"} 1');
    expect(text).toContain('sbg_export_watcher_leader{role="follower"} 0');
  });

  it('reports not ready while the platform refuses the token', async () => {
    stack = await startStack({ env: { SB_AUTH_TOKEN: 'tok_wrong_one' } });
    expect(stack.daemon.readiness.ok).toBe(false);
    const res = await stack.get('/readyz');
    expect(res.status).toBe(503);
    expect(res.json).toMatchObject({ reason: expect.stringContaining('refused the token') });
    expect(stack.logs.join('')).not.toContain('tok_wrong_one');
  });

  it('stays ready while one job’s checks fail and others are answered; not once nothing is', async () => {
    // Long enough for the job that fails alone to be checked on its own several times.
    stack = await startStack({
      sim: { timing: { pendingMs: [60_000, 60_000], runningMs: [60_000, 60_000] } },
      // Long against the poll interval, so that a slow moment of this machine between two
      // answered checks is not taken for an outage; short enough for the second half to wait out.
      daemon: { readinessGraceMs: 5000 },
    });
    const s = stack;
    const [bad, good] = s.sim.createExports(2) as [string, string];
    s.sim.setFaults({ errorIds: [bad] });
    expect((await s.post('/v1/exports', { ids: [bad, good] })).status).toBe(202);
    // The bad id is taken apart from the good one and fails on its own, again and again.
    await until(async () => s.sim.stats().faults.errorId >= 4);
    const samples: number[] = [];
    for (let i = 0; i < 10; i++) {
      samples.push((await s.get('/readyz')).status);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(samples).toEqual(Array(10).fill(200));
    // Every call fails: after the grace without an answer, the reason shows.
    s.sim.setFaults({ errorRate: 1 });
    await until(async () => (await s.get('/readyz')).status === 503);
    expect((await s.get('/readyz')).json).toMatchObject({
      reason: 'the platform answered with a server error',
    });
    s.sim.setFaults({});
    await until(async () => (await s.get('/readyz')).status === 200);
    // The end of that outage is in the log, once; the bad job's failures within the grace are not.
    const lines = s.logs.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.filter((l) => l.msg === 'the platform answers again')).toEqual([
      expect.objectContaining({ level: 30, last_problem: 'the platform answered with a server error' }),
    ]);
    // Who was added, for an operator following one id.
    expect(lines.find((l) => l.msg === 'exports added')).toMatchObject({
      accepted: 2,
      export_ids: [bad, good],
    });
  });

  it('is not ready while the platform is in maintenance, and recovers by itself', async () => {
    stack = await startStack({ sim: { timing: SHORT, faults: { maintenanceUntil: Date.now() + 600_000 } } });
    const s = stack;
    const [id] = s.sim.createExports(1);
    expect((await s.post('/v1/exports', { ids: [id] })).status).toBe(202);
    await until(async () => (await s.get('/readyz')).status === 503);
    expect((await s.get('/readyz')).json).toMatchObject({ reason: 'the platform is in maintenance' });
    // Liveness is not readiness: the process is fine.
    expect((await s.get('/healthz')).status).toBe(200);
    s.sim.setFaults({});
    await until(async () => (await s.get('/readyz')).status === 200);
    await s.receiver.waitFor((r) => r.accepted().length === 1, 30_000);
    expect(s.sim.stats().faults.maintenance).toBeGreaterThan(0);
  });

  it('does not take a wrong endpoint (every route 404) for lost exports, and says so on /readyz', async () => {
    stack = await startStack({ sim: { timing: SHORT }, endpoint: (url) => url.replace(/\/v2$/, '') });
    const s = stack;
    const ids = s.sim.createExports(3);
    expect((await s.post('/v1/exports', { ids })).status).toBe(202);
    await until(async () => s.sim.stats().requests.other! >= 10);
    const items = ((await s.get('/v1/exports')).json as { items: Array<{ state: string }> }).items;
    expect(items.map((r) => r.state)).toEqual(['UNKNOWN', 'UNKNOWN', 'UNKNOWN']);
    const ready = await s.get('/readyz');
    expect(ready.status).toBe(503);
    expect(ready.json).toMatchObject({ reason: expect.stringContaining('SB_API_ENDPOINT') });
    expect(s.receiver.received).toEqual([]);
  });

  it('stops within its deadline even while a client holds a request open', async () => {
    stack = await startStack();
    const port = Number(new URL(stack.apiUrl).port);
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    // Headers and half a body, then nothing more.
    socket.write(
      'POST /v1/exports HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"ids":',
    );
    const stopped = stack.daemon.stop(300);
    await stopped;
    expect(stack.logs.some((l) => l.includes('"msg":"stopped"'))).toBe(true);
    socket.destroy();
  });
});

/** Polls a condition until it holds; fails after the deadline. For states with no event to await. */
async function until(test: () => Promise<boolean>, deadlineMs = 20_000): Promise<void> {
  const end = performance.now() + deadlineMs;
  while (!(await test())) {
    if (performance.now() > end) throw new Error('condition not reached before the deadline');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
