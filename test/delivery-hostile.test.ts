/**
 * The delivery engine against receivers that misbehave below HTTP: a TLS handshake that never
 * ends. Fake timers drive the attempt timeout and the close deadline as in
 * delivery-engine.test.ts; a real-time guard only bounds how long the test waits for an outcome.
 */
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { type AttemptResult, DeliveryEngine } from '../src/delivery/engine.js';
import { storedEventBuilder } from '../src/delivery/events.js';
import { parseSecret } from '../src/delivery/signing.js';
import { Bus } from '../src/shared/bus.js';
import { openSqliteStore, type SqliteStore } from '../src/store/sqlite.js';
import { move } from './helpers/changes.js';
import { silentServer } from './helpers/silent-server.js';

const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;
const T0 = 1_700_000_000_000;
const WEBHOOK_ID = 'evt_exp-1_completed';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** `promise`'s value, or `fallback` after `ms` of real time. */
function within<T, F>(promise: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<F>((resolve) => {
    timer = realSetTimeout(() => resolve(fallback), ms);
  });
  return Promise.race([promise, guard]).finally(() => realClearTimeout(timer));
}

async function setup(url: string, timeoutMs: number) {
  const store: SqliteStore = await openSqliteStore({ path: ':memory:' });
  cleanups.push(() => store.close());
  const bus = new Bus();
  const attempts: AttemptResult[] = [];
  let attempted!: () => void;
  const firstAttempt = new Promise<void>((resolve) => {
    attempted = resolve;
  });
  bus.on('delivery.attempt', (a) => {
    attempts.push(a);
    attempted();
  });
  const engine = new DeliveryEngine({
    store,
    urls: [url],
    secretKey: parseSecret('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'),
    timeoutMs,
    maxAgeMs: 24 * 3_600_000,
    userAgent: 'sbg-export-watcher/1.2.3',
    log: pino({ level: 'silent' }),
    now: () => Date.now(),
    bus,
  });
  // Last in, first out: the engine is closed (its agent destroyed) before the server.
  cleanups.push(() => within(engine.close(0), 1_000, undefined));
  const now = Date.now();
  await store.addExports([{ ids: ['exp-1'], metadata: null }], now);
  await store.commitChanges([move('exp-1', 'UNKNOWN', 'RUNNING', now)], () => null, [], now);
  await store.commitChanges(
    [move('exp-1', 'RUNNING', 'COMPLETED', now, { export: { id: 'exp-1', state: 'COMPLETED' } })],
    storedEventBuilder('all'),
    engine.endpoints,
    now,
  );
  return { store, engine, attempts, firstAttempt };
}

/** On fake time from T0, an engine started against a silent server, its first connection made. */
async function sendingToSilent(timeoutMs: number) {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'] });
  vi.setSystemTime(T0);
  const { url, connected } = await silentServer(cleanups, '/hooks');
  const sending = await setup(url, timeoutMs);
  await sending.engine.start();
  await connected;
  return sending;
}

describe('a receiver whose TLS handshake never ends (https to a port that stays silent)', () => {
  it('is cut off at the attempt timeout, not at undici’s own 10 s connect timeout', async () => {
    const { engine, attempts, firstAttempt } = await sendingToSilent(2_000);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(await within(firstAttempt, 2_000, 'still in flight')).toBeUndefined();
    expect(attempts.map((a) => [a.webhookId, a.outcome, a.status, a.code])).toEqual([
      [WEBHOOK_ID, 'failure', 0, 'WEBHOOK_TIMEOUT'],
    ]);
    // The connect it gave up on does not hold close() past its deadline either.
    const closing = engine.close(1_000);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(await within(closing, 2_000, 'still closing')).toBeUndefined();
  });

  it('does not hold close() past its deadline, and the delivery stays pending', async () => {
    const { store, engine, attempts } = await sendingToSilent(60_000);
    const closing = engine.close(1_000);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(await within(closing, 2_000, 'still closing')).toBeUndefined();
    expect(attempts.map((a) => [a.outcome, a.code])).toEqual([['failure', 'SHUTTING_DOWN']]);
    const [delivery] = (await store.getEvent(WEBHOOK_ID))!.deliveries;
    expect(delivery).toMatchObject({ status: 'pending', attempts: 1, lastStatus: 0 });
  });
});
