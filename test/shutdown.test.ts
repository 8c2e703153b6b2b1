/**
 * What a stopping daemon leaves in its logs: the ids still watched and every undelivered event
 * with its body, so nothing owed is unrecoverable from the logs.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_IDS_LOGGED_AT_STOP } from '../src/main.js';
import { type Stack, startStack } from './helpers/stack.js';

let stack: Stack | undefined;
afterEach(async () => {
  await stack?.close();
  stack = undefined;
});

const lines = (s: Stack) => s.logs.map((l) => JSON.parse(l) as Record<string, unknown>);

describe('stopping with work left', () => {
  it('lists the ids still watched in one line, with the count', async () => {
    stack = await startStack({ sim: { timing: { pendingMs: [60_000, 60_000], runningMs: [1, 1] } } });
    const ids = stack.sim.createExports(3);
    await stack.post('/v1/exports', { ids: [...ids, 'ghost-1'] });
    await stack.daemon.scheduler.until(() => stack?.daemon.tracker.countByState().PENDING === 3);
    await stack.daemon.stop(1000);
    const line = lines(stack).find((l) => l.msg === 'still watched at shutdown');
    expect(line).toMatchObject({ level: 30, count: 4, ids_not_listed: 0 });
    expect([...((line?.ids ?? []) as string[])].sort()).toEqual([...ids, 'ghost-1'].sort());
    expect(MAX_IDS_LOGGED_AT_STOP).toBeGreaterThanOrEqual(1000);
  });

  it('logs each undelivered event with its whole body and the endpoints that lack it', async () => {
    stack = await startStack({
      sim: { timing: { pendingMs: [1, 1], runningMs: [1, 1] }, failRate: 0 },
      // The receiver refuses everything, so every event is still owed at shutdown.
      receiver: { respond: () => 503 },
    });
    const ids = stack.sim.createExports(2);
    await stack.post('/v1/exports', { ids, metadata: { ticket: 'T-9' } });
    await stack.receiver.waitFor((r) => r.uniqueIds().size === 2, 20_000);
    await stack.daemon.stop(200);
    const events = lines(stack).filter((l) => l.msg === 'webhook event undelivered at shutdown');
    expect(events.map((e) => e.webhook_id).sort()).toEqual(ids.map((id) => `evt_${id}_completed`).sort());
    for (const e of events) {
      expect(e).toMatchObject({
        level: 50,
        endpoints: [expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+\/hooks$/)],
        event: { type: 'export.completed', data: { state: 'COMPLETED', metadata: { ticket: 'T-9' } } },
      });
    }
    const summary = lines(stack).find((l) => l.msg === 'stopped with deliveries not done');
    expect(summary).toMatchObject({ undelivered: 2, events: 2, events_not_listed: 0 });
  });
});
