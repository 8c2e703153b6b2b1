/**
 * A delivery series is named by its start time. Removing a job deletes its pending delivery rows
 * and cancels the attempts the engine holds; the job watched again (or its kept event redelivered)
 * creates the row anew, with a fresh series start, which may equal the cancelled one when it comes
 * in the same millisecond (or after the clock stepped back). A cancelled run must then write
 * nothing: its late answer (here a 410) would otherwise end the new series, which would never be
 * sent. Date is frozen to make that millisecond the same; timers and I/O are real, and the test
 * waits on events.
 */
import pino from 'pino';
import { afterEach, expect, it, vi } from 'vitest';
import { DeliveryEngine } from '../src/delivery/engine.js';
import { storedEventBuilder } from '../src/delivery/events.js';
import { type Answer, WebhookReceiver } from '../src/dev/receiver.js';
import { Bus } from '../src/shared/bus.js';
import { openPostgresStore } from '../src/store/postgres.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import type { EndpointRef, Store } from '../src/store/store.js';
import { move } from './helpers/changes.js';
import { describeWithPostgres } from './helpers/postgres.js';

const T0 = 1_700_000_000_000;
const AT = Date.UTC(2025, 0, 2, 3, 4, 5);
const ID = 'evt_x_completed';
const cleanups: Array<() => unknown> = [];

afterEach(async () => {
  vi.useRealTimers();
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function watchAndComplete(store: Store, endpoints: readonly EndpointRef[], id: string): Promise<void> {
  const now = Date.now();
  await store.addExports([{ ids: [id], metadata: null }], now);
  await store.commitChanges([move(id, 'UNKNOWN', 'RUNNING', AT)], () => null, [], now);
  await store.commitChanges(
    [move(id, 'RUNNING', 'COMPLETED', AT)],
    storedEventBuilder('all'),
    endpoints,
    now,
  );
}

async function receiver(respond: ConstructorParameters<typeof WebhookReceiver>[0]) {
  const r = new WebhookReceiver(respond);
  const url = await r.start();
  cleanups.push(() => r.close());
  return { r, url };
}

/**
 * x completes; endpoint B takes its event at once, A's first attempt is held on the wire. x is
 * removed (A's pending row deleted, the event kept for B's) and the engine told (`cancel`), then
 * A's delivery is created again, in the same millisecond, by `again`.
 */
async function sameMillisecond(
  openStore: () => Promise<Store>,
  again: (store: Store, endpoints: readonly EndpointRef[]) => Promise<unknown>,
): Promise<void> {
  // Only Date is faked (frozen at T0): real timers and I/O, so the test waits on events.
  vi.useFakeTimers({ toFake: ['Date'] });
  vi.setSystemTime(T0);
  let answerFirst!: (a: Answer) => void;
  const first = new Promise<Answer>((resolve) => {
    answerFirst = resolve;
  });
  const a = await receiver({ respond: (_req, n) => (n === 1 ? first : 204) });
  const b = await receiver({});
  const store = await openStore();
  cleanups.push(() => store.close());
  const engine = new DeliveryEngine({
    store,
    urls: [a.url, b.url],
    timeoutMs: 60_000,
    maxAgeMs: 86_400_000,
    userAgent: 'review',
    log: pino({ level: 'silent' }),
    bus: new Bus(),
    now: () => Date.now(),
  });
  cleanups.push(() => engine.close(0));
  const [A] = engine.endpoints;
  const ofA = async () => (await store.getEvent(ID))?.deliveries.find((d) => d.endpointKey === A?.key);

  await watchAndComplete(store, engine.endpoints, 'x');
  await engine.start();
  await a.r.waitFor((x) => x.received.length === 1);
  await b.r.waitFor((x) => x.received.length === 1);
  // B's outcome written (so that the removal keeps the event): looked at once per loop turn.
  while ((await store.deliveryCounts()).delivered < 1) await new Promise((r) => setImmediate(r));
  // The daemon's unwatch: the store first, then the engine.
  expect(await store.removeExport('x')).toMatchObject({ removed: true, cancelledDeliveries: 1 });
  engine.cancel('x');
  await again(store, engine.endpoints);
  engine.poke();
  expect(await ofA()).toMatchObject({ status: 'pending', attempts: 0, seriesStartedAt: T0 });

  // The cancelled attempt answers late: 410 Gone.
  answerFirst(410);
  await engine.settled();

  // The new series must be sent (and delivered), not ended by the old series' answer.
  expect(await ofA()).toMatchObject({ status: 'delivered', attempts: 1, lastStatus: 204 });
  expect(a.r.received.map((x) => x.status)).toEqual([410, 204]);
}

/** What creates A's delivery again after the removal, named as the tests say it. */
const AGAIN: ReadonlyArray<[string, (store: Store, endpoints: readonly EndpointRef[]) => Promise<unknown>]> =
  [
    ['watched again', (store, endpoints) => watchAndComplete(store, endpoints, 'x')],
    ['redelivered', (store, endpoints) => store.redeliver(ID, endpoints.slice(0, 1), Date.now())],
  ];

for (const [what, again] of AGAIN) {
  it(
    `SQLite: ${what} in the same ms after removal, the new delivery is sent, not ended by the cancelled attempt`,
    () => sameMillisecond(() => openSqliteStore({ path: ':memory:' }), again),
    20_000,
  );
}

await describeWithPostgres('PostgreSQL', (server) => {
  const postgres = async () => {
    const url = await server.createDatabase();
    cleanups.unshift(() => server.dropDatabase(url));
    return openPostgresStore({ url });
  };
  for (const [what, again] of AGAIN) {
    it(
      `PostgreSQL: ${what} in the same ms after removal, the new delivery is sent, not ended by the cancelled attempt`,
      () => sameMillisecond(postgres, again),
      20_000,
    );
  }
});
