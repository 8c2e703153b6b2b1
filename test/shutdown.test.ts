/**
 * What a stopping daemon finishes (the checks on the wire, first attempts of the events it holds)
 * and what it leaves in its logs: the ids still watched and every undelivered event with its
 * body, so nothing owed is unrecoverable from the logs.
 */
import { connect } from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/config.js';
import { Simulator } from '../src/dev/simulator.js';
import { Daemon, MAX_IDS_LOGGED_AT_STOP } from '../src/main.js';
import { type Stack, startStack, TOKEN } from './helpers/stack.js';

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

describe('stop (first SIGTERM) drains what the README says it drains', () => {
  it('a check on the wire at the signal, answered well within the deadline, is stored and its event sent', async () => {
    let sawCheck!: () => void;
    const onWire = new Promise<void>((resolve) => {
      sawCheck = resolve;
    });
    stack = await startStack({
      sim: {
        onRequest: ({ route }) => {
          if (route === 'bulk_get' || route === 'get') sawCheck();
        },
      },
    });
    const { sim, receiver, daemon } = stack;
    const [id] = sim.createExports(1, { outcome: 'COMPLETED', pendingMs: 0, runningMs: 0 });
    // Every check takes 400 ms: the stop comes while the check that sees COMPLETED is on the wire.
    sim.setFaults({ slowRate: 1, slowMs: 400 });
    expect((await stack.post('/v1/exports', { ids: [id] })).status).toBe(202);
    await onWire;
    const { pendingDeliveries } = await daemon.stop(10_000);
    expect(sim.stateOf(id!)).toBe('COMPLETED');
    // The answer came back 400 ms into a 10 s deadline: its result is stored...
    expect(
      stack.logs.some((l) => l.includes('"msg":"export state changed"') && l.includes('"to":"COMPLETED"')),
    ).toBe(true);
    // ...not thrown away as "platform client closed".
    expect(stack.logs.some((l) => l.includes('platform client closed'))).toBe(false);
    expect(receiver.uniqueIds()).toEqual(new Set([`evt_${id}_completed`]));
    expect(pendingDeliveries).toBe(0);
  }, 60_000);

  it('events held behind the 8 busy slots get their first attempt once the slots free up, within the deadline', async () => {
    let release!: () => void;
    const gate = new Promise<number>((resolve) => {
      release = () => resolve(204);
    });
    stack = await startStack({ receiver: { respond: () => gate } });
    const { sim, receiver, daemon } = stack;
    const ids = sim.createExports(12, { outcome: 'COMPLETED', pendingMs: 50, runningMs: 100 });
    const held12 = new Promise<void>((resolve) =>
      daemon.bus.on('delivery.depth', ({ depth }) => {
        if (depth >= 12) resolve();
      }),
    );
    expect((await stack.post('/v1/exports', { ids })).status).toBe(202);
    // All 12 events are held by the engine; 8 attempts are on the wire (the endpoint's slots).
    await held12;
    await receiver.waitFor((r) => r.received.length === 8, 30_000);
    expect(receiver.received).toHaveLength(8);
    // SIGTERM with a 10 s deadline; the receiver answers right after.
    const stopping = daemon.stop(10_000);
    release();
    const { pendingDeliveries } = await stopping;
    // The four events never tried got their first attempt within the deadline.
    expect(receiver.uniqueIds().size).toBe(12);
    expect(pendingDeliveries).toBe(0);
  }, 60_000);
});

describe('a stop asked while start-up is under way', () => {
  /** Whether something accepts connections at the control API's address, if it ever had one. */
  function accepting(url: string | undefined): Promise<boolean> {
    if (url === undefined) return Promise.resolve(false);
    return new Promise((resolve) => {
      const socket = connect(Number(new URL(url).port), '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
  }

  let sim: Simulator | undefined;
  afterEach(async () => {
    await sim?.close();
    sim = undefined;
  });

  /** A daemon with a control API (memory storage) on a simulator of its own, not started. */
  async function daemonWithApi(): Promise<Daemon> {
    sim = new Simulator({ seed: 5, token: TOKEN });
    const url = await sim.start();
    const config = loadConfig(
      { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN, WATCHER_HTTP_PORT: '0' },
      { requireToken: true },
    );
    return Daemon.open(config, { log: pino({ level: 'silent' }), api: true, storage: 'memory' });
  }

  it('leaves no control API listening when the stop comes before the listen begins', async () => {
    // Asked in the same tick as start(): start-up is still reading the platform's rate limit.
    const daemon = await daemonWithApi();
    const started = daemon.start().catch(() => undefined);
    await daemon.stop(1_000);
    await started;
    expect(await accepting(daemon.api?.url)).toBe(false);
  });

  it('closes a control API whose listen was under way when the stop came', async () => {
    // The stop is asked the moment start-up begins to listen (not at some delay that may fall
    // before or after it): stop() must wait for that listen and close what it opened.
    const daemon = await daemonWithApi();
    const api = daemon.api as NonNullable<typeof daemon.api>;
    const listen = api.listen.bind(api);
    let stopping: Promise<unknown> | undefined;
    api.listen = () => {
      const listening = listen();
      // Once start-up holds the listen (it is still getting the app ready), the stop comes.
      queueMicrotask(() => {
        stopping = daemon.stop(1_000);
      });
      return listening;
    };
    await daemon.start().catch(() => undefined);
    await stopping;
    expect(stopping).toBeDefined();
    expect(await accepting(daemon.api?.url)).toBe(false);
  });
});
