/**
 * The delivery engine against a real SQLite store (in memory, or a file in a temp dir) and real
 * loopback receivers. Events and their deliveries are created the way the daemon creates them
 * (`store.addExports`, then `store.commitChanges` with an event builder), then the engine is
 * started or poked.
 *
 * Backoff paths run on vitest fake timers: the engine reads time through the injected `now`
 * (the fake `Date.now`), p-retry and the engine wait with the fake `setTimeout`. `runUntil` moves
 * the fake clock only while no attempt is on the wire, so a request in progress never sees time
 * jump (its timeout and undici's own timers stay put). Jitter is taken out (`random: () => 0` for
 * the durable tier, `Math.random` for p-retry's quick tier) where exact times are asserted.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Webhook } from 'standardwebhooks';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { endpointLabel } from '../src/delivery/attempt.js';
import {
  type AttemptResult,
  DeliveryEngine,
  type DeliveryEngineOptions,
  type DeliveryOutcome,
  LEASE_MS,
} from '../src/delivery/engine.js';
import { type EventType, storedEventBuilder } from '../src/delivery/events.js';
import { parseSecret } from '../src/delivery/signing.js';
import { type Answer, type ReceiverOptions, WebhookReceiver } from '../src/dev/receiver.js';
import type { ExportState } from '../src/polling/tracker.js';
import { Bus } from '../src/shared/bus.js';
import { parseRetryAfter } from '../src/shared/retry-after.js';
import { openSqliteStore, type SqliteStore } from '../src/store/sqlite.js';
import {
  type EndpointRef,
  type ExportChange,
  endpointKey,
  type NewEvent,
  type Store,
  type StoredDelivery,
} from '../src/store/store.js';
import { move } from './helpers/changes.js';

// Real timers, captured before any test installs fake ones.
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;
const realSetImmediate = globalThis.setImmediate;

const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const SECRET_KEY_B64 = 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const USER_AGENT = 'sbg-export-watcher/1.2.3';
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** A whole second, so that HTTP dates (second resolution) land exactly. */
const T0 = 1_700_000_000_000;
/** When the transitions were observed: the body's `timestamp`. */
const AT = Date.UTC(2025, 0, 2, 3, 4, 5);

/** What the engine and p-retry read time from; real I/O and setImmediate stay real. */
const useFakeTime = () => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'] });
  vi.setSystemTime(T0);
};
/** p-retry's jitter (the quick tier) reads Math.random; 0 makes its waits exactly 1 s, then 2 s. */
const noQuickJitter = () => vi.spyOn(Math, 'random').mockReturnValue(0);

/** Follows the engine's events on the bus, and lets a test await a state of them. */
class Probe {
  started = 0;
  maxInFlight = 0;
  maxDepth = 0;
  readonly attempts: AttemptResult[] = [];
  readonly finished: Array<{ endpoint: string; outcome: DeliveryOutcome }> = [];
  readonly depths: Array<{ endpoint: string; depth: number }> = [];
  readonly #waiters = new Set<() => void>();

  constructor(bus: Bus) {
    bus.on('delivery.attempt_started', () => {
      this.started++;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      this.#changed();
    });
    bus.on('delivery.attempt', (result) => {
      this.attempts.push(result);
      this.#changed();
    });
    bus.on('delivery.finished', (finished) => {
      this.finished.push(finished);
      this.#changed();
    });
    bus.on('delivery.depth', (depth) => {
      this.depths.push(depth);
      this.maxDepth = Math.max(this.maxDepth, depth.depth);
      this.#changed();
    });
  }

  get inFlight(): number {
    return this.started - this.attempts.length;
  }

  #changed(): void {
    for (const wake of this.#waiters) wake();
  }

  /** Resolves when `predicate` holds (checked on every event); rejects after 10 s of real time. */
  until(predicate: () => boolean): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = realSetTimeout(() => {
        this.#waiters.delete(wake);
        reject(new Error('Probe.until: timed out'));
      }, 10_000);
      const wake = () => {
        if (!predicate()) return;
        this.#waiters.delete(wake);
        realClearTimeout(timer);
        resolve();
      };
      this.#waiters.add(wake);
    });
  }
}

/** One real event-loop turn, so pending promise chains run out. */
const turn = () => new Promise<void>((resolve) => realSetImmediate(resolve));

/** Checks `check` on every real turn until it holds; fails after about 10 s of real time. */
async function eventually(check: () => boolean | Promise<boolean>, what = 'condition'): Promise<void> {
  for (let i = 0; i < 5_000; i++) {
    if (await check()) return;
    await new Promise<void>((resolve) => realSetTimeout(resolve, 2));
  }
  throw new Error(`eventually: ${what} still false`);
}

/**
 * Fires fake timers one at a time until `done()` holds, waiting (in real time) for every attempt
 * in flight to finish before the clock moves again.
 */
async function runUntil(
  probe: Probe,
  done: () => boolean | Promise<boolean>,
  maxSteps = 5_000,
): Promise<void> {
  for (let step = 0; step < maxSteps; step++) {
    await probe.until(() => probe.inFlight === 0);
    await turn();
    if (await done()) return;
    if (probe.inFlight > 0) continue;
    if (vi.getTimerCount() === 0) throw new Error('runUntil: no timer left and the condition is false');
    await vi.advanceTimersToNextTimerAsync();
  }
  throw new Error(`runUntil: condition still false after ${maxSteps} steps`);
}

function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** The daemon's event builder, for every event type. */
const buildEvent = storedEventBuilder('all');

/**
 * Watches `ids` and commits their move to `to`, with one pending delivery per endpoint, as the
 * daemon's scheduler does: the outbox. Returns the events written.
 */
async function commit(
  store: Store,
  endpoints: readonly EndpointRef[],
  ids: readonly string[],
  to: ExportState = 'COMPLETED',
): Promise<NewEvent[]> {
  const now = Date.now();
  await store.addExports([{ ids, metadata: { ticket: 'T-1' } }], now);
  const from = to === 'RUNNING' ? ('PENDING' as const) : ('RUNNING' as const);
  // The store applies a change only from the state it holds: bring each job to `from` first,
  // without an event, as the checks before this one would have.
  const before: ExportChange[] = [];
  for (const id of ids) {
    const stored = (await store.getExport(id))?.state;
    if (stored !== undefined && stored !== from) before.push(plainMove(id, stored, from));
  }
  if (before.length > 0) await store.commitChanges(before, () => null, [], now);
  return store.commitChanges(
    ids.map((id) =>
      move(id, from, to, AT, {
        export: { id, state: to, destination: { volume: 'vol', location: 'a/b.bam' } },
      }),
    ),
    buildEvent,
    endpoints,
    now,
  );
}

function plainMove(id: string, from: ExportState, to: ExportState): ExportChange {
  return move(id, from, to, AT);
}

const wid = (exportId: string, type: EventType = 'export.completed') =>
  `evt_${exportId}_${type.slice('export.'.length)}`;

/** The stored delivery of one event to one endpoint (the only one when `url` is left out). */
async function delivery(store: Store, webhookId: string, url?: string): Promise<StoredDelivery | undefined> {
  const event = await store.getEvent(webhookId);
  if (!event) return undefined;
  if (url === undefined) {
    expect(event.deliveries).toHaveLength(1);
    return event.deliveries[0];
  }
  return event.deliveries.find((d) => d.endpointKey === endpointKey(url));
}

// Every log line of every test, checked for secrets after each test.
let logLines: string[] = [];
const receivers: WebhookReceiver[] = [];
const cleanups: Array<() => unknown> = [];

const logger = () => pino({ level: 'debug' }, { write: (line: string) => void logLines.push(line) });
const records = () => logLines.map((line) => JSON.parse(line) as Record<string, unknown>);

async function receiver(options: ReceiverOptions = {}): Promise<{ r: WebhookReceiver; url: string }> {
  const r = new WebhookReceiver(options);
  receivers.push(r);
  const url = await r.start();
  cleanups.push(() => r.close());
  return { r, url };
}

async function memoryStore(): Promise<SqliteStore> {
  const store = await openSqliteStore({ path: ':memory:' });
  cleanups.push(() => store.close());
  return store;
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'sbg-engine-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

type EngineOptions = Partial<Omit<DeliveryEngineOptions, 'bus'>> & { urls: readonly string[]; store: Store };

function engine(options: EngineOptions): { engine: DeliveryEngine; probe: Probe; bus: Bus } {
  const bus = new Bus();
  const probe = new Probe(bus);
  const e = new DeliveryEngine({
    secretKey: parseSecret(SECRET),
    timeoutMs: 60_000,
    maxAgeMs: DAY,
    userAgent: USER_AGENT,
    log: logger(),
    now: () => Date.now(),
    ...options,
    bus,
  });
  cleanups.push(() => e.close(0));
  return { engine: e, probe, bus };
}

afterEach(async () => {
  vi.useRealTimers();
  vi.restoreAllMocks();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  const all = logLines.join('\n');
  expect(all).not.toContain(SECRET_KEY_B64);
  for (const r of receivers.splice(0)) {
    for (const { signature } of r.received) if (signature) expect(all).not.toContain(signature.slice(3));
  }
  expect(all).not.toContain('webhook-signature');
  logLines = [];
});

describe('a delivery', () => {
  it('sends the exact headers and body, signed so the reference package verifies it, and stores the outcome', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(T0 + 123);
    const store = await memoryStore();
    const { r, url } = await receiver({ secret: SECRET });
    const { engine: e, probe } = engine({ store, urls: [url] });
    const [event] = await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await e.settled();

    expect(r.received).toHaveLength(1);
    const got = r.received[0]!;
    expect(got.headers['content-type']).toBe('application/json');
    expect(got.headers['user-agent']).toBe(USER_AGENT);
    expect(got.headers['webhook-id']).toBe('evt_exp-1_completed');
    expect(got.headers['webhook-timestamp']).toBe(String(T0 / 1000));
    expect(got.signature).toMatch(/^v1,[A-Za-z0-9+/]{43}=$/);
    // The bytes stored with the state change are the bytes sent and signed.
    expect(got.body).toBe(event!.body);
    expect(got.json).toEqual({
      type: 'export.completed',
      timestamp: '2025-01-02T03:04:05.000Z',
      data: {
        export_id: 'exp-1',
        state: 'COMPLETED',
        previous_state: 'RUNNING',
        metadata: { ticket: 'T-1' },
        export: { id: 'exp-1', state: 'COMPLETED', destination: { volume: 'vol', location: 'a/b.bam' } },
        error: null,
      },
    });
    expect(got.verified).toBe(true);
    const verified = new Webhook(SECRET).verify(got.body, {
      'webhook-id': String(got.headers['webhook-id']),
      'webhook-timestamp': String(got.headers['webhook-timestamp']),
      'webhook-signature': String(got.signature),
    });
    expect(verified).toEqual(got.json);
    // A signature over other bytes does not verify.
    expect(() =>
      new Webhook(SECRET).verify(`${got.body} `, {
        'webhook-id': String(got.headers['webhook-id']),
        'webhook-timestamp': String(got.headers['webhook-timestamp']),
        'webhook-signature': String(got.signature),
      }),
    ).toThrow();

    expect(await delivery(store, 'evt_exp-1_completed')).toEqual({
      eventId: 'evt_exp-1_completed',
      endpointKey: endpointKey(url),
      endpointLabel: url,
      status: 'delivered',
      attempts: 1,
      nextAttemptAt: null,
      seriesStartedAt: T0 + 123,
      lastStatus: 204,
      lastError: null,
      finishedAt: T0 + 123,
    });
    expect(probe.finished).toEqual([{ endpoint: url, outcome: 'delivered' }]);
    const line = records().find((l) => l.msg === 'webhook delivered');
    expect(line).toMatchObject({
      level: 20,
      endpoint: url,
      webhook_id: 'evt_exp-1_completed',
      export_id: 'exp-1',
      attempt: 1,
      status: 204,
    });
    expect(line?.duration_ms).toEqual(expect.any(Number));
  });

  it('has no signature header without a secret', async () => {
    const store = await memoryStore();
    const { r, url } = await receiver();
    const { engine: e } = engine({ store, urls: [url], secretKey: undefined });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await e.settled();
    expect(r.accepted()).toHaveLength(1);
    expect(r.received[0]!.headers['webhook-signature']).toBeUndefined();
    expect(r.received[0]!.headers['webhook-id']).toBe('evt_exp-1_completed');
    expect(r.received[0]!.verified).toBeUndefined();
  });

  it('sends a claimed delivery once, however often it is poked, and each event of an export apart', async () => {
    const hold = deferred<Answer>();
    const { r, url } = await receiver({
      respond: (req) => (req.id === 'evt_a_running' ? hold.promise : 204),
    });
    const store = await memoryStore();
    const { engine: e } = engine({ store, urls: [url] });
    await commit(store, e.endpoints, ['a'], 'RUNNING');
    await e.start();
    await r.waitFor((x) => x.received.length === 1);
    for (let i = 0; i < 5; i++) {
      e.poke();
      await turn();
    }
    await commit(store, e.endpoints, ['a'], 'COMPLETED');
    e.poke();
    await r.waitFor((x) => x.acceptedIds().has('evt_a_completed'));
    hold.resolve(200);
    await e.settled();
    expect(r.received.map((x) => x.id).sort()).toEqual(['evt_a_completed', 'evt_a_running']);
    expect((await store.deliveryCounts()).delivered).toBe(2);
  });

  it('sends to each configured URL once, warning about one listed twice', async () => {
    const store = await memoryStore();
    const { r, url } = await receiver();
    const { engine: e } = engine({ store, urls: [url, url] });
    expect(e.endpoints).toEqual([{ key: endpointKey(url), label: url }]);
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await e.settled();
    expect(r.received).toHaveLength(1);
    expect(
      records().filter((l) => l.msg === 'webhook endpoint listed twice; it receives each event once'),
    ).toEqual([expect.objectContaining({ level: 40, endpoint: url })]);
  });

  it('sends to each spelling of one URL, warning that the receiver gets every event twice', async () => {
    const store = await memoryStore();
    const { r, url } = await receiver();
    // The scheme in capitals: the same URL to the parser, another text.
    const upper = url.replace('http://', 'HTTP://');
    const { engine: e } = engine({ store, urls: [url, upper] });
    expect(e.endpoints.map((x) => x.key)).toEqual([endpointKey(url), endpointKey(upper)]);
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await e.settled();
    expect(r.received).toHaveLength(2);
    expect(
      records().filter(
        (l) =>
          l.msg === 'webhook endpoint listed twice, spelled two ways; each spelling receives every event',
      ),
    ).toEqual([
      expect.objectContaining({ level: 40, endpoint: e.endpoints[1]?.label, also_as: e.endpoints[0]?.label }),
    ]);
    // Labels without credentials or query: the two share one, so each has its place in the list.
    expect(e.endpoints.map((x) => x.label)).toEqual([`${url} [#1]`, `${url} [#2]`]);
  });

  it('gives receivers that differ only in query or credentials labels of their own', async () => {
    const store = await memoryStore();
    const { r, url } = await receiver();
    const a = `${url}?tenant=a`;
    const b = `${url}?tenant=b`;
    const c = url.replace('http://', 'http://user:pw12345@');
    const { engine: e, bus } = engine({ store, urls: [a, b, c] });
    const labels = e.endpoints.map((x) => x.label);
    // Their place in WATCHER_WEBHOOK_URLS: nothing derived from the URL, whose secret it would expose.
    expect(labels).toEqual([`${url} [#1]`, `${url} [#2]`, `${url} [#3]`]);
    for (const u of [a, b, c]) expect(labels.join()).not.toContain(endpointKey(u).slice(0, 6));
    expect(new Set(labels).size).toBe(3);
    for (const label of labels) expect(label).not.toMatch(/tenant|pw12345|user/);
    const finished: string[] = [];
    bus.on('delivery.finished', ({ endpoint }) => finished.push(endpoint));
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await e.settled();
    expect(r.received).toHaveLength(3);
    expect(finished.sort()).toEqual([...labels].sort());
  });

  it('does not lose a poke that comes while it looks up the next due time', async () => {
    const store = await memoryStore();
    const { r, url } = await receiver();
    // A store that answers `nextDueAt` late, as a networked one might.
    const lookups: Array<() => void> = [];
    const slow = new Proxy(store, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target) as unknown;
        if (prop === 'nextDueAt') {
          return async (key: string) => {
            const at = await target.nextDueAt(key);
            await new Promise<void>((resolve) => lookups.push(resolve));
            return at;
          };
        }
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const { engine: e } = engine({ store: slow, urls: [url] });
    await e.start();
    await eventually(() => lookups.length === 1, 'the idle engine looks up the next due time');
    await commit(store, e.endpoints, ['exp-1']);
    e.poke();
    lookups.shift()?.();
    // No idle wait of 30 s: the poke is served as soon as the lookup returns.
    await r.waitFor((x) => x.accepted().length === 1, 2_000);
    for (const release of lookups.splice(0)) release();
  });
});

describe('the quick tier', () => {
  it('retries a refusing receiver within seconds, same webhook-id, fresh timestamp each time', async () => {
    useFakeTime();
    noQuickJitter();
    const store = await memoryStore();
    const { r, url } = await receiver({
      secret: SECRET,
      respond: (_req, attempt) => (attempt <= 2 ? 503 : 200),
    });
    const { engine: e, probe } = engine({ store, urls: [url] });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.status === 'delivered');

    expect(r.received.map((x) => x.status)).toEqual([503, 503, 200]);
    expect(r.uniqueIds()).toEqual(new Set(['evt_exp-1_completed']));
    // 1 s, then 2 s apart, within one claim: nothing went back to the store in between.
    expect(r.received.map((x) => x.receivedAt - T0)).toEqual([0, 1_000, 3_000]);
    expect(r.received.map((x) => x.timestamp)).toEqual([T0 / 1000, T0 / 1000 + 1, T0 / 1000 + 3]);
    expect(r.received.every((x) => x.verified)).toBe(true);
    expect(await delivery(store, wid('exp-1'))).toMatchObject({
      status: 'delivered',
      attempts: 3,
      lastStatus: 200,
      lastError: null,
      finishedAt: T0 + 3_000,
    });
    const warns = records().filter((l) => l.msg === 'webhook attempt failed');
    expect(warns.map((l) => [l.level, l.attempt, l.status, l.code])).toEqual([
      [40, 1, 503, 'WEBHOOK_REJECTED'],
      [40, 2, 503, 'WEBHOOK_REJECTED'],
    ]);
  });

  it('keeps its waits jittered between 1 and 2 s, then 2 s', async () => {
    useFakeTime();
    const store = await memoryStore();
    const { r, url } = await receiver({ respond: (_req, attempt) => (attempt <= 2 ? 500 : 204) });
    const { engine: e, probe } = engine({ store, urls: [url] });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, () => r.accepted().length === 1);
    const gaps = r.received.slice(1).map((x, i) => x.receivedAt - r.received[i]!.receivedAt);
    expect(gaps[0]).toBeGreaterThanOrEqual(1_000);
    expect(gaps[0]).toBeLessThanOrEqual(2_000);
    expect(gaps[1]).toBe(2_000);
  });
});

describe('the durable tier', () => {
  it('stores the delivery as pending with its backoff after the quick attempts, and retries it when due', async () => {
    useFakeTime();
    noQuickJitter();
    const store = await memoryStore();
    const { r, url } = await receiver({ respond: (_req, attempt) => (attempt <= 3 ? 500 : 204) });
    const { engine: e, probe } = engine({ store, urls: [url], random: () => 0 });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.attempts === 3);

    // 3 attempts: 1 s doubling gives 4 s (jitter 1 with random 0), counted from the third.
    expect(await delivery(store, wid('exp-1'))).toMatchObject({
      status: 'pending',
      attempts: 3,
      nextAttemptAt: T0 + 3_000 + 4_000,
      seriesStartedAt: T0,
      lastStatus: 500,
      lastError: 'WEBHOOK_REJECTED: endpoint answered 500: not a 2xx',
      finishedAt: null,
    });
    expect(e.held()).toBe(0);

    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.status === 'delivered');
    expect(r.received.map((x) => [x.receivedAt - T0, x.status])).toEqual([
      [0, 500],
      [1_000, 500],
      [3_000, 500],
      [7_000, 204],
    ]);
    expect(r.uniqueIds()).toEqual(new Set([wid('exp-1')]));
    expect(await delivery(store, wid('exp-1'))).toMatchObject({ status: 'delivered', attempts: 4 });
  });

  it('backs off from seconds to minutes to the 1 h cap', async () => {
    useFakeTime();
    noQuickJitter();
    const store = await memoryStore();
    const { r, url } = await receiver({ respond: () => 500 });
    const { engine: e, probe } = engine({ store, urls: [url], random: () => 0 });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.attempts === 15);

    // The first claim makes 3 quick attempts; each later claim one, after 1 s × 2^(attempts − 1).
    const times = r.received.map((x) => x.receivedAt - T0);
    const waits = times.slice(3).map((t, i) => t - times[i + 2]!);
    expect(waits).toEqual([
      4_000,
      8_000,
      16_000,
      32_000,
      64_000,
      128_000,
      256_000,
      512_000,
      1_024_000,
      2_048_000,
      HOUR,
      HOUR,
    ]);
    expect(await delivery(store, wid('exp-1'))).toMatchObject({
      status: 'pending',
      attempts: 15,
      nextAttemptAt: T0 + times[14]! + HOUR,
    });
  });

  it('spreads the durable waits by a jitter in [1, 2)', async () => {
    useFakeTime();
    noQuickJitter();
    const store = await memoryStore();
    const { url } = await receiver({ respond: () => 500 });
    const { engine: e, probe } = engine({ store, urls: [url], random: () => 0.75 });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.attempts === 3);
    expect((await delivery(store, wid('exp-1')))?.nextAttemptAt).toBe(T0 + 3_000 + 7_000);
  });

  it('never retries before Retry-After in seconds, on a 503', async () => {
    useFakeTime();
    const store = await memoryStore();
    const { r, url } = await receiver({
      respond: (_req, attempt) => (attempt === 1 ? { status: 503, headers: { 'retry-after': '120' } } : 204),
    });
    const { engine: e, probe } = engine({ store, urls: [url], random: () => 0 });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.attempts === 1);
    expect(await delivery(store, wid('exp-1'))).toMatchObject({
      status: 'pending',
      nextAttemptAt: T0 + 120_000,
      lastStatus: 503,
    });
    await runUntil(probe, () => r.accepted().length === 1);
    expect(r.received.map((x) => x.receivedAt - T0)).toEqual([0, 120_000]);
    expect(records().find((l) => l.msg === 'webhook attempt failed')).toMatchObject({
      retry_after_ms: 120_000,
    });
  });

  it('never retries before Retry-After as an HTTP date, on a 429', async () => {
    useFakeTime();
    const store = await memoryStore();
    const until = new Date(T0 + 90_000);
    const { r, url } = await receiver({
      respond: (_req, attempt) =>
        attempt === 1 ? { status: 429, headers: { 'retry-after': until.toUTCString() } } : 204,
    });
    const { engine: e, probe } = engine({ store, urls: [url], random: () => 0 });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.attempts === 1);
    expect((await delivery(store, wid('exp-1')))?.nextAttemptAt).toBe(until.getTime());
    await runUntil(probe, () => r.accepted().length === 1);
    expect(r.received.map((x) => x.receivedAt - T0)).toEqual([0, 90_000]);
  });

  it('never retries before a Retry-After short enough for the quick tier', async () => {
    useFakeTime();
    noQuickJitter();
    const store = await memoryStore();
    const { r, url } = await receiver({
      respond: (_req, attempt) => (attempt === 1 ? { status: 503, headers: { 'retry-after': '3' } } : 204),
    });
    const { engine: e, probe } = engine({ store, urls: [url] });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, () => r.accepted().length === 1);
    // p-retry alone would have retried after 1 s.
    expect(r.received.map((x) => x.receivedAt - T0)).toEqual([0, 3_000]);
  });

  it('gives up at once when Retry-After reaches past the max age, logging the event', async () => {
    const store = await memoryStore();
    const { r, url } = await receiver({
      respond: () => ({ status: 503, headers: { 'retry-after': '7200' } }),
    });
    const { engine: e, probe } = engine({ store, urls: [url], maxAgeMs: HOUR });
    const [event] = await commit(store, e.endpoints, ['exp-1'], 'FAILED');
    const committedAt = Date.now();
    await e.start();
    await e.settled();

    expect(r.received).toHaveLength(1);
    const d = await delivery(store, wid('exp-1', 'export.failed'));
    expect(d).toMatchObject({ status: 'failed', attempts: 1, lastStatus: 503, nextAttemptAt: null });
    expect(d?.finishedAt).toBeGreaterThanOrEqual(committedAt);
    expect(probe.finished).toEqual([{ endpoint: url, outcome: 'given_up' }]);
    const errors = records().filter((l) => (l.level as number) >= 50);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({
      msg: 'webhook delivery given up: Retry-After reaches past the max age',
      endpoint: url,
      webhook_id: event!.id,
      export_id: 'exp-1',
      event: JSON.parse(event!.body),
      attempts: 1,
      last_status: 503,
      retry_after_ms: 7_200_000,
    });
  });
});

describe('failed attempts', () => {
  it('counts a redirect as a failure and does not follow it', async () => {
    const { r: target, url: targetUrl } = await receiver();
    const { r, url } = await receiver({
      respond: (_req, attempt) => (attempt === 1 ? { status: 302, headers: { location: targetUrl } } : 204),
    });
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url], retry: { minTimeoutMs: 1 } });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await e.settled();
    expect(target.received).toHaveLength(0);
    expect(r.received.map((x) => x.status)).toEqual([302, 204]);
    expect(probe.attempts.map((a) => [a.outcome, a.status, a.code])).toEqual([
      ['failure', 302, 'WEBHOOK_REJECTED'],
      ['success', 204, undefined],
    ]);
    expect(records().find((l) => l.msg === 'webhook attempt failed')?.error).toBe(
      'endpoint answered 302: a redirect, which is not followed',
    );
    expect(await delivery(store, wid('exp-1'))).toMatchObject({ status: 'delivered', attempts: 2 });
  });

  it('counts a timeout as a failure', async () => {
    useFakeTime();
    noQuickJitter();
    const never = new Promise<Answer>(() => {});
    const { r, url } = await receiver({ respond: (_req, attempt) => (attempt === 1 ? never : 204) });
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url], timeoutMs: 5_000 });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await r.waitFor((x) => x.received.length === 1);
    await vi.advanceTimersByTimeAsync(5_000);
    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.status === 'delivered');
    expect(probe.attempts.map((a) => [a.outcome, a.status, a.code])).toEqual([
      ['failure', 0, 'WEBHOOK_TIMEOUT'],
      ['success', 204, undefined],
    ]);
    expect(r.received.map((x) => x.receivedAt - T0)).toEqual([0, 6_000]);
  });

  it('counts a refused connection as a failure', async () => {
    useFakeTime();
    const { r: closed, url } = await receiver();
    await closed.close();
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url], random: () => 0 });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.attempts === 3);
    expect(probe.attempts.map((a) => [a.outcome, a.status, a.code])).toEqual(
      Array(3).fill(['failure', 0, 'WEBHOOK_NETWORK']),
    );
    const d = await delivery(store, wid('exp-1'));
    expect(d).toMatchObject({ status: 'pending', lastStatus: 0 });
    expect(d?.lastError).toMatch(/^WEBHOOK_NETWORK: request failed: /);
  });

  it('gives up at the max age, where the last attempt lands, and logs the whole event at error', async () => {
    useFakeTime();
    noQuickJitter();
    const store = await memoryStore();
    const { r, url } = await receiver({ respond: () => 500 });
    const { engine: e, probe } = engine({ store, urls: [url], maxAgeMs: 60_000, random: () => 0 });
    const [event] = await commit(store, e.endpoints, ['exp-1'], 'FAILED');
    await e.start();
    const id = wid('exp-1', 'export.failed');
    await runUntil(probe, async () => (await delivery(store, id))?.status === 'failed');

    // Quick attempts at 0, 1 s, 3 s; then 4 s, 8 s, 16 s apart; the next wait (32 s) is clipped
    // so that the last attempt lands at the max age.
    expect(r.received.map((x) => x.receivedAt - T0)).toEqual([
      0, 1_000, 3_000, 7_000, 15_000, 31_000, 60_000,
    ]);
    expect(await delivery(store, id)).toMatchObject({
      status: 'failed',
      attempts: 7,
      nextAttemptAt: null,
      lastStatus: 500,
      finishedAt: T0 + 60_000,
    });
    expect(probe.finished).toEqual([{ endpoint: url, outcome: 'given_up' }]);
    const lines = records().filter((l) => l.level === 50);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      msg: 'webhook delivery given up',
      endpoint: url,
      webhook_id: id,
      export_id: 'exp-1',
      attempts: 7,
      age_ms: 60_000,
      last_status: 500,
      last_error: { code: 'WEBHOOK_REJECTED', message: 'endpoint answered 500: not a 2xx' },
    });
    expect(lines[0]!.event).toEqual(JSON.parse(event!.body));
  });

  it('never makes a quick attempt past the max age', async () => {
    useFakeTime();
    noQuickJitter();
    const store = await memoryStore();
    const { r, url } = await receiver({ respond: () => 500 });
    const { engine: e, probe } = engine({ store, urls: [url], maxAgeMs: 2_500 });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.status === 'failed');
    // The second quick wait (2 s) is cut so the last attempt lands at the max age.
    expect(r.received.map((x) => x.receivedAt - T0)).toEqual([0, 1_000, 2_500]);
  });
});

describe('the log of failed attempts during an outage', () => {
  it('is at most 5 lines a minute per endpoint at warn; the rest at debug, counted in one line', async () => {
    useFakeTime();
    noQuickJitter();
    const store = await memoryStore();
    let up = false;
    const { r, url } = await receiver({ respond: () => (up ? 204 : 503) });
    const { engine: e, probe } = engine({ store, urls: [url], random: () => 0 });
    const ids = Array.from({ length: 20 }, (_, i) => `exp-${i}`);
    await commit(store, e.endpoints, ids);
    await e.start();
    const failures = () => probe.attempts.filter((a) => a.outcome === 'failure').length;
    const failureLines = (level: number) =>
      records().filter((l) => l.msg === 'webhook attempt failed' && l.level === level);
    const summaries = () => records().filter((l) => String(l.msg).startsWith('webhook attempts failed:'));

    // The quick tier: 3 attempts each, 60 failures within 3 s. Five are at warn.
    await runUntil(probe, () => failures() === 60);
    expect(failureLines(40)).toHaveLength(5);
    expect(failureLines(20)).toHaveLength(55);
    expect(summaries()).toEqual([]);

    // The first failure after the minute: the window's failures at debug (those of the quick
    // tier, and the durable tier's 4, 8 and 16 s later) are said in one line first.
    await runUntil(probe, () => failureLines(40).some((l) => Number(l.time) >= T0 + 60_000));
    const quietInWindow = failureLines(20).filter((l) => Number(l.time) < T0 + 60_000).length;
    expect(quietInWindow).toBe(20 * 6 - 5);
    expect(summaries()).toEqual([
      expect.objectContaining({
        level: 40,
        count: quietInWindow,
        from: new Date(T0).toISOString(),
        last_error: expect.stringMatching(/^WEBHOOK_REJECTED: /),
      }),
    ]);

    // Ten minutes down, then back: the failures not at warn yet are counted once it answers.
    await runUntil(probe, () => Date.now() >= T0 + 10 * 60_000);
    up = true;
    await runUntil(probe, () => r.accepted().length === 20);
    const counted = summaries().reduce((sum, l) => sum + Number(l.count), 0);
    // Every failure is a line at warn or counted in one; each at debug too, beyond the five.
    expect(failureLines(40).length + counted).toBe(failures());
    expect(failureLines(40).length + failureLines(20).length).toBe(failures());
    // At most 5 at warn in each window: one window began per summary, and one before them.
    expect(failureLines(40).length).toBeLessThanOrEqual(5 * (summaries().length + 1));
    expect(failures()).toBeGreaterThan(100);
  });

  it('says a receiver that fails every other attempt once per window, not at each success', async () => {
    // No retry falls due meanwhile (1–2 s later on the real clock), whatever this machine's pace.
    useFakeTime();
    const store = await memoryStore();
    let n = 0;
    const { url } = await receiver({ respond: () => (++n % 2 === 1 ? 503 : 204) });
    const { engine: e, probe } = engine({ store, urls: [url], quickAttempts: 1 });
    await commit(
      store,
      e.endpoints,
      Array.from({ length: 60 }, (_, i) => `alt-${i}`),
    );
    await e.start();
    await probe.until(() => probe.attempts.length === 60);
    const failures = probe.attempts.filter((a) => a.outcome === 'failure').length;
    expect(failures).toBe(30);
    const summaries = () => records().filter((l) => String(l.msg).startsWith('webhook attempts failed:'));
    // All within a minute: five at warn, and the rest held for the window's end (here, the close).
    expect(records().filter((l) => l.msg === 'webhook attempt failed' && l.level === 40)).toHaveLength(5);
    expect(summaries()).toEqual([]);
    await e.close(1_000);
    expect(summaries()).toEqual([expect.objectContaining({ count: failures - 5 })]);
  });

  it('says what it held back when the engine closes', async () => {
    // No retry falls due meanwhile (1–2 s later on the real clock), whatever this machine's pace.
    useFakeTime();
    const store = await memoryStore();
    const { url } = await receiver({ respond: () => 503 });
    const { engine: e, probe } = engine({ store, urls: [url], quickAttempts: 1 });
    await commit(store, e.endpoints, ['a', 'b', 'c', 'd', 'e', 'f', 'g']);
    await e.start();
    await probe.until(() => probe.attempts.length === 7);
    await e.close(1_000);
    const summary = records().find((l) => String(l.msg).startsWith('webhook attempts failed:'));
    expect(summary).toMatchObject({ level: 40, count: 2 });
  });
});

describe('endpoints', () => {
  it('marks an event gone at an endpoint answering 410 while another endpoint still receives it', async () => {
    const { r: goneR, url: goneUrl } = await receiver({ respond: () => 410 });
    const { r: okR, url: okUrl } = await receiver({
      respond: (_req, attempt) => (attempt === 1 ? 500 : 204),
    });
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [goneUrl, okUrl], retry: { minTimeoutMs: 1 } });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await e.settled();

    expect(goneR.received).toHaveLength(1);
    expect(okR.received.map((x) => x.status)).toEqual([500, 204]);
    expect(await delivery(store, wid('exp-1'), goneUrl)).toMatchObject({
      status: 'gone',
      attempts: 1,
      lastStatus: 410,
      endpointLabel: goneUrl,
      finishedAt: expect.any(Number),
    });
    expect(await delivery(store, wid('exp-1'), okUrl)).toMatchObject({ status: 'delivered', attempts: 2 });
    expect(new Set(probe.finished)).toEqual(
      new Set([
        { endpoint: goneUrl, outcome: 'gone' },
        { endpoint: okUrl, outcome: 'delivered' },
      ]),
    );
    const warn = records().find((l) => typeof l.msg === 'string' && l.msg.includes('410'));
    expect(warn).toMatchObject({ level: 40, endpoint: goneUrl, status: 410 });

    // A later event still goes to the endpoint that answered 410 once: gone is per event.
    await commit(store, e.endpoints, ['exp-2']);
    e.poke();
    await e.settled();
    expect(goneR.received.map((x) => x.id)).toEqual([wid('exp-1'), wid('exp-2')]);
  });

  it('does not let a slow endpoint hold back another', async () => {
    const slowAnswers: Array<(a: Answer) => void> = [];
    let slowReleased = false;
    const { r: slow, url: slowUrl } = await receiver({
      respond: () => (slowReleased ? 204 : new Promise<Answer>((resolve) => slowAnswers.push(resolve))),
    });
    const { r: fast, url: fastUrl } = await receiver();
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [slowUrl, fastUrl], concurrencyPerEndpoint: 2 });
    await commit(
      store,
      e.endpoints,
      Array.from({ length: 10 }, (_, i) => `exp-${i}`),
    );
    await e.start();

    await probe.until(() => probe.finished.length === 10);
    expect(probe.finished.every((f) => f.endpoint === fastUrl && f.outcome === 'delivered')).toBe(true);
    expect(fast.accepted()).toHaveLength(10);
    await slow.waitFor((x) => x.received.length === 2);
    expect(slow.received).toHaveLength(2);
    expect(probe.inFlight).toBe(2);

    slowReleased = true;
    for (const answer of slowAnswers) answer(204);
    await e.settled();
    expect(slow.accepted()).toHaveLength(10);
    expect(await store.deliveryCounts()).toMatchObject({ pending: 0, delivered: 20 });
  });

  it('keeps at most concurrency attempts in flight and 4 × concurrency deliveries in memory, of 1,000 pending', async () => {
    let concurrent = 0;
    let maxConcurrent = 0;
    let held: Array<(a: Answer) => void> | undefined = [];
    const { r, url } = await receiver({
      respond: () => {
        concurrent++;
        maxConcurrent = Math.max(maxConcurrent, concurrent);
        const answer = held ? new Promise<Answer>((resolve) => held?.push(resolve)) : Promise.resolve(204);
        return answer.finally(() => concurrent--);
      },
    });
    const store = await memoryStore();
    const { engine: e, probe, bus } = engine({ store, urls: [url], concurrencyPerEndpoint: 3 });
    const ids = Array.from({ length: 1_000 }, (_, i) => `exp-${String(i).padStart(4, '0')}`);
    await commit(store, e.endpoints, ids);
    let maxHeld = 0;
    bus.on('delivery.depth', () => {
      maxHeld = Math.max(maxHeld, e.held());
    });
    await e.start();

    await r.waitFor(() => held?.length === 3);
    await turn();
    // The first 12 claimed (in due order), 3 on the wire, the rest of the backlog on disk.
    expect(e.held()).toBe(12);
    expect(probe.inFlight).toBe(3);
    expect(r.received).toHaveLength(3);
    expect((await store.deliveryCounts()).pending).toBe(1_000);

    const waiting = held ?? [];
    held = undefined;
    for (const answer of waiting) answer(204);
    await e.settled();
    expect(r.acceptedIds().size).toBe(1_000);
    expect(r.received).toHaveLength(1_000);
    expect(maxConcurrent).toBe(3);
    expect(probe.maxInFlight).toBe(3);
    expect(probe.maxDepth).toBe(12);
    expect(maxHeld).toBe(12);
    expect(e.held()).toBe(0);
    expect(await store.deliveryCounts()).toMatchObject({ pending: 0, delivered: 1_000 });
  });

  it('does not hold a concurrency slot while waiting for a retry', async () => {
    useFakeTime();
    const store = await memoryStore();
    const { r, url } = await receiver({
      respond: (req, attempt) => (req.id === wid('bad') || attempt > 1 ? 500 : 204),
    });
    const { engine: e, probe } = engine({ store, urls: [url], concurrencyPerEndpoint: 1 });
    await commit(store, e.endpoints, ['bad', 'good']);
    await e.start();
    await runUntil(probe, () => probe.attempts.length === 2);
    // 'bad' was claimed first and is now in its quick retry wait; with one slot, 'good' still went
    // out at once, at the same (fake) time.
    expect(r.received.map((x) => [x.id, x.status])).toEqual([
      [wid('bad'), 500],
      [wid('good'), 204],
    ]);
    expect(r.received[1]!.receivedAt).toBe(r.received[0]!.receivedAt);
    expect(e.held()).toBe(1);
  });
});

describe('cancel', () => {
  it('after the export is removed from the store, no further attempt follows', async () => {
    useFakeTime();
    let accept = false;
    const { r, url } = await receiver({ respond: () => (accept ? 204 : 500) });
    const { r: r2, url: url2 } = await receiver({ respond: () => (accept ? 204 : 500) });
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url, url2] });
    await commit(store, e.endpoints, ['x', 'y']);
    await e.start();
    await runUntil(probe, () => probe.attempts.length === 4);
    expect(e.held()).toBe(4);

    expect(await store.removeExport('x')).toEqual({ removed: true, cancelledDeliveries: 2 });
    e.cancel('x');
    e.cancel('unknown');
    accept = true;
    await runUntil(probe, async () => (await store.deliveryCounts()).delivered === 2);
    for (const rx of [r, r2]) {
      expect(rx.received.map((x) => [x.id, x.status])).toEqual([
        [wid('x'), 500],
        [wid('y'), 500],
        [wid('y'), 204],
      ]);
    }
    expect(await store.getEvent(wid('x'))).toBeUndefined();
    expect(await store.deliveryCounts()).toMatchObject({ pending: 0, delivered: 2, failed: 0 });
    expect(probe.finished.map((f) => f.outcome)).toEqual(['delivered', 'delivered']);
    expect(e.held()).toBe(0);
  });

  it('lets an attempt in flight finish but does not retry it', async () => {
    const hold = deferred<Answer>();
    const { r, url } = await receiver({ respond: (req) => (req.id === wid('x') ? hold.promise : 204) });
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url], retry: { minTimeoutMs: 1 } });
    await commit(store, e.endpoints, ['x']);
    await e.start();
    await r.waitFor((x) => x.received.length === 1);
    await store.removeExport('x');
    e.cancel('x');
    hold.resolve(500);
    await e.settled();
    expect(r.received.map((x) => x.status)).toEqual([500]);
    expect(probe.attempts).toHaveLength(1);
    expect(probe.finished).toEqual([]);
    expect(await store.getEvent(wid('x'))).toBeUndefined();
  });

  /**
   * One slot, held by `a`'s attempt (the receiver answers it when `hold` is resolved), and the
   * events `more` commits waiting behind it: two deliveries held.
   */
  async function heldBehindA(more: (store: Store, endpoints: readonly EndpointRef[]) => Promise<unknown>) {
    const hold = deferred<Answer>();
    const { r, url } = await receiver({ respond: (req) => (req.id === wid('a') ? hold.promise : 204) });
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url], concurrencyPerEndpoint: 1 });
    await commit(store, e.endpoints, ['a']);
    await more(store, e.endpoints);
    await e.start();
    await r.waitFor((x) => x.received.length === 1);
    expect(e.held()).toBe(2);
    return { hold, r, store, e, probe };
  }

  it('ends a wait for a slot without an attempt', async () => {
    const { hold, r, store, e, probe } = await heldBehindA((store, endpoints) =>
      commit(store, endpoints, ['x']),
    );
    await store.removeExport('x');
    e.cancel('x');
    await eventually(() => e.held() === 1, 'the cancelled delivery let go');
    hold.resolve(204);
    await e.settled();
    expect(r.received.map((x) => x.id)).toEqual([wid('a')]);
    expect(probe.started).toBe(1);
  });

  it("leaves the held deliveries of the other kind's job that has the same id", async () => {
    // The export x was removed (its event kept) and x then watched as an import; the export's
    // event, redelivered, waits for the endpoint's one slot when the import x is removed.
    const { hold, r, store, e, probe } = await heldBehindA((store, endpoints) =>
      commit(store, endpoints, ['x']),
    );
    e.cancel('x', 'import');
    e.cancel('a', 'import');
    hold.resolve(204);
    await eventually(async () => (await store.deliveryCounts()).delivered === 2, 'both delivered');
    expect(r.received.map((x) => x.id)).toEqual([wid('a'), wid('x')]);
    expect(probe.started).toBe(2);
    expect(e.held()).toBe(0);
  });

  it('leaves the held deliveries of the import `import` when the export `import` goes', async () => {
    // An export `import` has the webhook-ids `evt_import_<suffix>`, a prefix of the import
    // `import`'s `evt_import_import_<suffix>`: removing the export must not stop the import's.
    const { hold, r, store, e } = await heldBehindA(async (store, endpoints) => {
      const now = Date.now();
      await store.addExports([{ ids: ['import'], metadata: null, kind: 'import' }], now);
      await store.commitChanges([move('import', 'UNKNOWN', 'COMPLETED', AT)], buildEvent, endpoints, now);
    });
    e.cancel('import', 'export');
    hold.resolve(204);
    await eventually(async () => (await store.deliveryCounts()).delivered === 2, 'both delivered');
    expect(r.received.map((x) => x.id)).toEqual([wid('a'), 'evt_import_import_completed']);
  });
});

describe('a redelivery asked while the same delivery is held', () => {
  /** Commits x, starts the engine, and waits until its first attempt is on the wire and held. */
  async function heldFirstAttempt(options: Partial<EngineOptions> = {}) {
    const hold = deferred<Answer>();
    let first = true;
    const { r, url } = await receiver({
      respond: () => {
        if (!first) return 204;
        first = false;
        return hold.promise;
      },
    });
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url], retry: { minTimeoutMs: 1 }, ...options });
    const [event] = await commit(store, e.endpoints, ['x']);
    await e.start();
    await r.waitFor((x) => x.received.length === 1);
    const seriesStartedAt = (await delivery(store, wid('x')))?.seriesStartedAt ?? 0;
    expect(event?.id).toBe(wid('x'));
    return { hold, r, store, e, probe, seriesStartedAt };
  }

  /** Redelivers x in a new series, then waits until the engine's claim has leased it. */
  async function redeliverWhileHeld(store: Store, e: DeliveryEngine, after: number): Promise<number> {
    await eventually(() => Date.now() > after, 'the clock past the first series');
    const at = Date.now();
    expect(await store.redeliver(wid('x'), e.endpoints, at)).toBe(1);
    e.poke();
    await eventually(
      async () => ((await delivery(store, wid('x')))?.nextAttemptAt ?? 0) > at + LEASE_MS / 2,
      'the new series claimed',
    );
    return at;
  }

  it('sends the new series once the held attempt ends, even when that attempt ends the old series', async () => {
    // A max age of 1 ms: the held attempt's failure gives its own series up at once.
    const { hold, r, store, e, probe, seriesStartedAt } = await heldFirstAttempt({ maxAgeMs: 1 });
    const redeliveredAt = await redeliverWhileHeld(store, e, seriesStartedAt);
    hold.resolve(500);
    await e.settled();
    expect(r.received.map((x) => [x.id, x.status])).toEqual([
      [wid('x'), 500],
      [wid('x'), 204],
    ]);
    expect(await delivery(store, wid('x'))).toMatchObject({
      status: 'delivered',
      attempts: 1,
      seriesStartedAt: redeliveredAt,
      lastStatus: 204,
    });
    expect(probe.finished.map((f) => f.outcome)).toEqual(['delivered']);
    expect(records().some((line) => String(line.msg).startsWith('webhook delivery given up'))).toBe(false);
  });

  it('stops retrying the old series and writes none of its outcome', async () => {
    const { hold, r, store, e, probe, seriesStartedAt } = await heldFirstAttempt();
    const redeliveredAt = await redeliverWhileHeld(store, e, seriesStartedAt);
    hold.resolve(503);
    await e.settled();
    // One attempt of the old series (no quick retry of it), then the new series' first.
    expect(r.received.map((x) => x.status)).toEqual([503, 204]);
    expect(probe.attempts.map((a) => a.attempt)).toEqual([1, 1]);
    expect(await delivery(store, wid('x'))).toMatchObject({
      status: 'delivered',
      attempts: 1,
      seriesStartedAt: redeliveredAt,
    });
    expect(e.held()).toBe(0);
  });
});

describe('close', () => {
  it('is idempotent, ends retry waits at once, lets an attempt in flight finish, and leaves the rest pending for the next engine', async () => {
    const hold = deferred<Answer>();
    let accept = false;
    const { r, url } = await receiver({
      respond: (req) => (req.id === wid('slow') ? hold.promise : accept ? 204 : 500),
    });
    const store = await memoryStore();
    // A quick retry wait of 10 minutes: close must not sit it out.
    const { engine: e, probe } = engine({ store, urls: [url], retry: { minTimeoutMs: 600_000 } });
    await commit(store, e.endpoints, ['slow', 'refused']);
    await e.start();
    await probe.until(() => probe.attempts.length === 1);
    await r.waitFor((x) => x.received.length === 2);

    const closing = e.close(30_000);
    expect(e.close(1)).toBe(closing);
    await eventually(() => e.held() === 1, 'the retry wait ended');
    hold.resolve(204);
    await closing;
    await e.close(0);

    expect(await delivery(store, wid('slow'))).toMatchObject({ status: 'delivered', attempts: 1 });
    const refused = await delivery(store, wid('refused'));
    expect(refused).toMatchObject({ status: 'pending', attempts: 1, lastStatus: 500, finishedAt: null });
    expect(refused?.nextAttemptAt).toBeLessThanOrEqual(Date.now());
    e.poke();
    await turn();
    expect(r.received).toHaveLength(2);

    // The next engine on the same store sends it, under the same webhook-id.
    accept = true;
    const { engine: next } = engine({ store, urls: [url] });
    await next.start();
    await next.settled();
    expect(r.received.filter((x) => x.id === wid('refused')).map((x) => x.status)).toEqual([500, 204]);
    expect(await delivery(store, wid('refused'))).toMatchObject({ status: 'delivered', attempts: 2 });
  });

  it('aborts an attempt in flight at the deadline; a new engine on the same database file sends it again', async () => {
    useFakeTime();
    let accept = false;
    const { r, url } = await receiver({ respond: () => (accept ? 204 : new Promise<Answer>(() => {})) });
    const path = join(tempDir(), 'watcher.db');
    const first = await openSqliteStore({ path });
    const { engine: e, probe } = engine({ store: first, urls: [url] });
    await commit(first, e.endpoints, ['stuck']);
    await e.start();
    await r.waitFor((x) => x.received.length === 1);

    const closing = e.close(2_000);
    await vi.advanceTimersByTimeAsync(2_000);
    await closing;
    expect(probe.attempts.map((a) => [a.outcome, a.code])).toEqual([['failure', 'SHUTTING_DOWN']]);
    expect(records().find((l) => l.msg === 'webhook attempt aborted: close deadline passed')).toMatchObject({
      level: 40,
      webhook_id: wid('stuck'),
    });
    expect(await delivery(first, wid('stuck'))).toMatchObject({
      status: 'pending',
      attempts: 1,
      lastStatus: 0,
      nextAttemptAt: T0 + 2_000,
    });
    await first.close();

    vi.useRealTimers();
    accept = true;
    const second = await openSqliteStore({ path });
    cleanups.push(() => second.close());
    const { engine: next } = engine({ store: second, urls: [url] });
    await next.start();
    await next.settled();
    expect(r.received.map((x) => x.id)).toEqual([wid('stuck'), wid('stuck')]);
    expect(r.accepted()).toHaveLength(1);
    expect(await delivery(second, wid('stuck'))).toMatchObject({ status: 'delivered', attempts: 2 });
  });

  it('keeps the Retry-After of an attempt answered while closing, and gives it up when it reaches past the max age', async () => {
    useFakeTime();
    const holds = new Map([
      [wid('hour'), deferred<Answer>()],
      [wid('twodays'), deferred<Answer>()],
    ]);
    const { r, url } = await receiver({ respond: (req) => holds.get(req.id)?.promise ?? 500 });
    const store = await memoryStore();
    const { engine: e } = engine({ store, urls: [url] });
    await commit(store, e.endpoints, ['hour', 'twodays']);
    await e.start();
    await r.waitFor((x) => x.received.length === 2);

    // Shutdown starts while both are on the wire; the receiver answers well within the deadline.
    const closing = e.close(30_000);
    holds.get(wid('hour'))?.resolve({ status: 503, headers: { 'retry-after': '3600' } });
    holds.get(wid('twodays'))?.resolve({ status: 503, headers: { 'retry-after': String(2 * 86_400) } });
    await closing;

    // The next start does not try before the hour the receiver asked for.
    expect(await delivery(store, wid('hour'))).toMatchObject({
      status: 'pending',
      attempts: 1,
      lastStatus: 503,
      nextAttemptAt: T0 + HOUR,
    });
    // Past the 24 h max age: given up, as it is when not closing.
    expect(await delivery(store, wid('twodays'))).toMatchObject({
      status: 'failed',
      attempts: 1,
      lastStatus: 503,
    });
  });

  it('gives a delivery still waiting for a slot its first attempt within the deadline, and no retry', async () => {
    const hold = deferred<Answer>();
    const { r, url } = await receiver({
      respond: (req) => (req.id === wid('first') ? hold.promise : req.id === wid('fails') ? 500 : 204),
    });
    const store = await memoryStore();
    const { engine: e } = engine({ store, urls: [url], concurrencyPerEndpoint: 1 });
    await commit(store, e.endpoints, ['first', 'second', 'fails']);
    await e.start();
    await r.waitFor((x) => x.received.length === 1);
    const closing = e.close(30_000);
    hold.resolve(204);
    await closing;
    expect(r.received.map((x) => x.id).sort()).toEqual([wid('fails'), wid('first'), wid('second')].sort());
    expect(await delivery(store, wid('first'))).toMatchObject({ status: 'delivered' });
    expect(await delivery(store, wid('second'))).toMatchObject({ status: 'delivered' });
    // Tried once while closing, refused, and left pending for the next start rather than retried.
    expect(await delivery(store, wid('fails'))).toMatchObject({ status: 'pending', attempts: 1 });
  });

  it('leaves a delivery still waiting for a slot pending at the deadline, with no attempt counted', async () => {
    const { r, url } = await receiver({ respond: () => new Promise<Answer>(() => undefined) });
    const store = await memoryStore();
    const { engine: e } = engine({ store, urls: [url], concurrencyPerEndpoint: 1 });
    await commit(store, e.endpoints, ['first', 'second']);
    await e.start();
    await r.waitFor((x) => x.received.length === 1);
    await e.close(200);
    expect(r.received).toHaveLength(1);
    expect(
      await delivery(store, r.received[0]!.id === wid('first') ? wid('second') : wid('first')),
    ).toMatchObject({
      status: 'pending',
      attempts: 0,
      lastStatus: null,
      lastError: null,
    });
  });
});

describe('pause and resume (a replica that stops leading)', () => {
  it('pause() aborts the attempt in flight and stops claiming; resume() sends it again under the same webhook-id', async () => {
    let accept = false;
    const { r, url } = await receiver({ respond: () => (accept ? 204 : new Promise<Answer>(() => {})) });
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url], concurrencyPerEndpoint: 1 });
    await commit(store, e.endpoints, ['stuck', 'waiting']);
    await e.start();
    await r.waitFor((x) => x.received.length === 1);
    expect(e.held()).toBe(2);

    e.pause();
    expect(e.paused).toBe(true);
    await eventually(() => e.held() === 0, 'the held deliveries let go');
    expect(probe.attempts.map((a) => [a.webhookId, a.outcome, a.code])).toEqual([
      [wid('stuck'), 'failure', 'SHUTTING_DOWN'],
    ]);
    expect(records().find((l) => l.msg === 'webhook attempt aborted: paused')).toMatchObject({
      webhook_id: wid('stuck'),
    });
    await eventually(
      async () => (await delivery(store, wid('stuck')))?.attempts === 1,
      'the outcome written',
    );
    // Cut short: due again at once. Never tried: it keeps its lease, for the next leader to end.
    expect((await delivery(store, wid('stuck')))?.nextAttemptAt).toBeLessThanOrEqual(Date.now());
    const waiting = await delivery(store, wid('waiting'));
    expect(waiting).toMatchObject({ status: 'pending', attempts: 0 });
    expect(waiting?.nextAttemptAt).toBeGreaterThan(Date.now() + LEASE_MS - 60_000);

    // Paused: a new event and a poke send nothing.
    await commit(store, e.endpoints, ['later']);
    e.poke();
    for (let i = 0; i < 20; i++) await turn();
    expect(r.received).toHaveLength(1);

    accept = true;
    await e.resume({ releaseLeasesAt: Date.now() });
    expect(e.paused).toBe(false);
    await e.settled();
    expect([...r.acceptedIds()].sort()).toEqual([wid('later'), wid('stuck'), wid('waiting')].sort());
    expect(r.received.filter((x) => x.id === wid('stuck'))).toHaveLength(2);
    expect(await delivery(store, wid('stuck'))).toMatchObject({ status: 'delivered', attempts: 2 });
    expect(await delivery(store, wid('waiting'))).toMatchObject({ status: 'delivered', attempts: 1 });
  });

  it("keeps the Retry-After of an answer when paused in the quick tier's wait for it", async () => {
    useFakeTime();
    const { url } = await receiver({ respond: () => ({ status: 503, headers: { 'retry-after': '5' } }) });
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url] });
    await commit(store, e.endpoints, ['x']);
    await e.start();
    await probe.until(() => probe.attempts.length === 1);
    expect(e.held()).toBe(1);
    e.pause();
    await eventually(() => e.held() === 0, 'the held delivery let go');
    await e.close(0); // writes what the pause let go
    // The next leader waits the 5 s the receiver asked for, not nothing.
    expect(await delivery(store, wid('x'))).toMatchObject({
      status: 'pending',
      lastStatus: 503,
      nextAttemptAt: T0 + 5_000,
    });
  });

  it("resume() ends a former leader's leases at releaseLeasesAt, not before", async () => {
    useFakeTime();
    const { r, url } = await receiver();
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url] });
    await commit(store, e.endpoints, ['x']);
    // Another process claimed it and went away.
    expect(await store.claimDue(endpointKey(url), T0, 10, T0 + LEASE_MS)).toHaveLength(1);
    await e.resume({ releaseLeasesAt: T0 + 5_000 });
    await vi.advanceTimersByTimeAsync(4_999);
    expect(r.received).toHaveLength(0);
    await runUntil(probe, () => r.accepted().length === 1);
    expect(Date.now()).toBe(T0 + 5_000);
  });

  it('with maxIdleMs, sees a redelivery written to the store by another process within that long', async () => {
    useFakeTime();
    const { r, url } = await receiver();
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url], maxIdleMs: 2_000 });
    const [event] = await commit(store, e.endpoints, ['x']);
    await e.start();
    await runUntil(probe, () => r.accepted().length === 1);
    await e.settled();
    const since = Date.now();
    // Written by a follower: this engine is not poked.
    expect(await store.redeliver(event?.id ?? '', e.endpoints, since)).toBe(1);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(r.received).toHaveLength(1);
    await runUntil(probe, () => r.accepted().length === 2);
    expect(Date.now() - since).toBeLessThanOrEqual(2_000);
  });

  it('asks mayAct before each claim: when it says no, nothing is claimed and the engine pauses', async () => {
    let leading = true;
    const { r, url } = await receiver();
    const store = await memoryStore();
    const { engine: e } = engine({ store, urls: [url], mayAct: () => leading });
    await commit(store, e.endpoints, ['first']);
    await e.start();
    await e.settled();
    expect(r.accepted()).toHaveLength(1);
    leading = false;
    const committedAt = Date.now();
    await commit(store, e.endpoints, ['second']);
    e.poke();
    await eventually(() => e.paused, 'the engine paused itself');
    expect(e.held()).toBe(0);
    expect(r.received).toHaveLength(1);
    // Not leased: the next leader (which ended the leases it found at takeover) can send it now.
    const second = await delivery(store, wid('second'));
    expect(second).toMatchObject({ status: 'pending', attempts: 0 });
    expect(second?.nextAttemptAt).toBeLessThanOrEqual(committedAt + 1000);
  });

  it('asks mayAct before each attempt: a delivery claimed while leading is not sent after, and keeps its lease', async () => {
    let leading = true;
    const hold = deferred<Answer>();
    const { r, url } = await receiver({ respond: (req) => (req.id === wid('first') ? hold.promise : 204) });
    const store = await memoryStore();
    const { engine: e } = engine({ store, urls: [url], concurrencyPerEndpoint: 1, mayAct: () => leading });
    await commit(store, e.endpoints, ['first', 'second']);
    await e.start();
    await r.waitFor((x) => x.received.length === 1);
    // Both claimed; the second waits for the one slot.
    expect(e.held()).toBe(2);
    leading = false;
    hold.resolve(204);
    await eventually(() => e.paused, 'the engine paused itself');
    await eventually(() => e.held() === 0, 'the held deliveries let go');
    expect(r.received.map((x) => x.id)).toEqual([wid('first')]);
    const second = await delivery(store, wid('second'));
    expect(second).toMatchObject({ status: 'pending', attempts: 0 });
    expect(second?.nextAttemptAt).toBeGreaterThan(Date.now() + LEASE_MS - 60_000);
  });

  it('a pause() during resume() wins; pause() is idempotent; close() while paused', async () => {
    const { r, url } = await receiver();
    const store = await memoryStore();
    const { engine: e } = engine({ store, urls: [url] });
    e.pause();
    await e.start();
    e.pause();
    e.pause();
    const resuming = e.resume();
    e.pause();
    await resuming;
    expect(e.paused).toBe(true);
    await commit(store, e.endpoints, ['x']);
    e.poke();
    for (let i = 0; i < 20; i++) await turn();
    expect(r.received).toHaveLength(0);
    await e.close(1_000);
    await e.resume();
    e.poke();
    for (let i = 0; i < 20; i++) await turn();
    expect(r.received).toHaveLength(0);
  });
});

describe('a lost outcome write', () => {
  /** The store, except that `recordAttempts` rejects while `failing.on` is true. */
  function failingWrites(store: SqliteStore) {
    const failing = { on: true };
    const proxy = new Proxy(store, {
      get(target, prop) {
        if (prop === 'recordAttempts' && failing.on)
          return async () => Promise.reject(new Error('disk I/O error'));
        const value = Reflect.get(target, prop, target) as unknown;
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    return { store: proxy as Store, failing };
  }

  it('means a redelivery under the same webhook-id at the next start, never a loss', async () => {
    const store = await memoryStore();
    const { r, url } = await receiver();
    const { store: broken } = failingWrites(store);
    const { engine: e } = engine({ store: broken, urls: [url] });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await r.waitFor((x) => x.accepted().length === 1);
    await e.close(1_000);
    expect(records().find((l) => l.msg === 'could not store webhook outcomes')).toMatchObject({
      level: 50,
      count: 1,
    });
    expect((await delivery(store, wid('exp-1')))?.status).toBe('pending');

    const { engine: next } = engine({ store, urls: [url] });
    await next.start();
    await next.settled();
    expect(r.received.map((x) => [x.id, x.status])).toEqual([
      [wid('exp-1'), 204],
      [wid('exp-1'), 204],
    ]);
    expect(await delivery(store, wid('exp-1'))).toMatchObject({ status: 'delivered' });
  });

  it('means a redelivery by the same engine when the lease ends', async () => {
    useFakeTime();
    const store = await memoryStore();
    const { r, url } = await receiver();
    const { store: broken, failing } = failingWrites(store);
    const { engine: e, probe } = engine({ store: broken, urls: [url] });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await runUntil(probe, () => records().some((l) => l.msg === 'could not store webhook outcomes'));
    failing.on = false;
    await runUntil(probe, async () => (await delivery(store, wid('exp-1')))?.status === 'delivered');
    expect(r.received.map((x) => x.id)).toEqual([wid('exp-1'), wid('exp-1')]);
    // Sent again once the 15-minute lease ran out.
    expect(r.received[1]!.receivedAt - r.received[0]!.receivedAt).toBeGreaterThanOrEqual(15 * 60_000);
    expect(r.received[1]!.receivedAt - r.received[0]!.receivedAt).toBeLessThanOrEqual(16 * 60_000);
  });
});

describe('settled', () => {
  it('resolves once nothing is pending, including deliveries waiting for a durable retry', async () => {
    useFakeTime();
    const store = await memoryStore();
    const { r, url } = await receiver({
      respond: (req, attempt) => (req.id === wid('b') && attempt <= 3 ? 500 : 204),
    });
    const { engine: e, probe } = engine({ store, urls: [url] });
    await commit(store, e.endpoints, ['a', 'b']);
    await e.start();
    let settled = false;
    void e.settled().then(() => {
      settled = true;
    });
    await runUntil(probe, async () => (await delivery(store, wid('b')))?.attempts === 3);
    expect(settled).toBe(false);
    await runUntil(probe, () => settled);
    expect(r.acceptedIds()).toEqual(new Set([wid('a'), wid('b')]));
    expect((await store.deliveryCounts()).pending).toBe(0);
  });

  it('does not wait for deliveries to endpoints no longer configured, and start warns about them', async () => {
    const store = await memoryStore();
    const { r, url } = await receiver();
    const old: EndpointRef = { key: endpointKey('http://127.0.0.1:1/old'), label: 'http://127.0.0.1:1/old' };
    const { engine: e } = engine({ store, urls: [url] });
    await commit(store, [...e.endpoints, old], ['exp-1']);
    await e.start();
    await e.settled();
    expect(r.accepted()).toHaveLength(1);
    expect((await store.deliveryCounts()).pending).toBe(1);
    expect(records().find((l) => typeof l.msg === 'string' && l.msg.includes('no longer in'))).toMatchObject({
      level: 40,
      count: 1,
    });
  });
});

describe('bus events', () => {
  it("reports 'delivery.attempt', 'delivery.finished' and 'delivery.depth'", async () => {
    const { url } = await receiver({ respond: (_req, attempt) => (attempt === 1 ? 500 : 204) });
    const store = await memoryStore();
    const { engine: e, probe } = engine({ store, urls: [url], retry: { minTimeoutMs: 1 } });
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await e.settled();
    expect(probe.attempts).toEqual([
      {
        endpoint: url,
        webhookId: wid('exp-1'),
        attempt: 1,
        outcome: 'failure',
        status: 500,
        code: 'WEBHOOK_REJECTED',
        durationMs: expect.any(Number),
      },
      {
        endpoint: url,
        webhookId: wid('exp-1'),
        attempt: 2,
        outcome: 'success',
        status: 204,
        code: undefined,
        durationMs: expect.any(Number),
      },
    ]);
    expect(probe.started).toBe(2);
    expect(probe.finished).toEqual([{ endpoint: url, outcome: 'delivered' }]);
    expect(probe.depths).toEqual([
      { endpoint: url, depth: 1 },
      { endpoint: url, depth: 0 },
    ]);
  });
});

describe('hygiene', () => {
  it("sends an endpoint URL's credentials as HTTP Basic; never logs or stores them or its token: only its label", async () => {
    const { r, url } = await receiver({
      secret: SECRET,
      respond: (_req, attempt) => (attempt === 1 ? 500 : 204),
    });
    const withToken = `${url.replace('http://', 'http://user:hunter2@')}?token=tok_abcdef`;
    const path = join(tempDir(), 'watcher.db');
    const store = await openSqliteStore({ path });
    cleanups.push(() => store.close());
    const { engine: e, probe } = engine({ store, urls: [withToken], retry: { minTimeoutMs: 1 } });
    expect(e.endpoints).toEqual([{ key: endpointKey(withToken), label: url }]);
    expect(e.findEndpoint(withToken)).toEqual(e.endpoints[0]);
    expect(e.findEndpoint(url)).toEqual(e.endpoints[0]);
    await commit(store, e.endpoints, ['exp-1']);
    await e.start();
    await e.settled();

    expect(r.accepted()).toHaveLength(1);
    expect(r.received.every((x) => x.verified)).toBe(true);
    // The query is the endpoint's own: it is sent, as configured, with every attempt.
    expect(new Set(r.received.map((x) => x.target))).toEqual(
      new Set([`${new URL(url).pathname}?token=tok_abcdef`]),
    );
    // The credentials are sent as HTTP Basic, as curl sends them, and shown nowhere.
    expect(new Set(r.received.map((x) => x.headers.authorization))).toEqual(
      new Set([`Basic ${Buffer.from('user:hunter2').toString('base64')}`]),
    );
    const all = logLines.join('\n');
    expect(all).toContain(url);
    expect(all).not.toContain('hunter2');
    expect(all).not.toContain(Buffer.from('user:hunter2').toString('base64'));
    expect(all).not.toContain('tok_abcdef');
    expect(JSON.stringify([probe.attempts, probe.finished, probe.depths])).not.toMatch(/hunter2|tok_abcdef/);

    const [d] = (await store.getEvent(wid('exp-1')))!.deliveries;
    expect(d).toMatchObject({ endpointLabel: url, endpointKey: endpointKey(withToken), status: 'delivered' });
    expect(d!.endpointKey).toMatch(/^[0-9a-f]{16}$/);
    await e.close(0);
    await store.close();
    const bytes = readFileSync(path).toString('latin1');
    expect(bytes).toContain(url);
    expect(bytes).not.toContain('hunter2');
    expect(bytes).not.toContain(Buffer.from('user:hunter2').toString('base64'));
    expect(bytes).not.toContain('tok_abcdef');
    // afterEach checks the secret and the signatures.
  });

  it('labels an endpoint URL without credentials, query or fragment', () => {
    expect(endpointLabel('https://u:p@hooks.example:8443/in/x?t=1#f')).toBe(
      'https://hooks.example:8443/in/x',
    );
    expect(endpointLabel('http://127.0.0.1:9000/hooks')).toBe('http://127.0.0.1:9000/hooks');
    expect(endpointLabel('not a url')).toBe('<invalid url>');
  });

  it('parses Retry-After seconds and HTTP dates, and ignores junk', () => {
    const now = Date.UTC(2025, 0, 1, 0, 0, 0);
    expect(parseRetryAfter('30', now)).toBe(30_000);
    expect(parseRetryAfter(' 0 ', now)).toBe(0);
    expect(parseRetryAfter('Wed, 01 Jan 2025 00:01:00 GMT', now)).toBe(60_000);
    expect(parseRetryAfter('Tue, 31 Dec 2024 23:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter(['5', '7'], now)).toBe(5_000);
    expect(parseRetryAfter('1.5', now)).toBeUndefined();
    expect(parseRetryAfter('-3', now)).toBeUndefined();
    expect(parseRetryAfter('2025-01-01', now)).toBeUndefined();
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    // The obsolete forms HTTP still allows; loose text Date.parse would take, refused.
    expect(parseRetryAfter('Wednesday, 01-Jan-25 00:02:00 GMT', now)).toBe(120_000);
    expect(parseRetryAfter('Wed Jan  1 00:03:00 2025', now)).toBe(180_000);
    for (const junk of [
      'x 3000',
      'soon 2099',
      'Wed, 01 Jan 2025',
      'Jan 1 2099',
      '01 Jan 2025 00:01:00 GMT',
    ]) {
      expect(parseRetryAfter(junk, now), junk).toBeUndefined();
    }
    expect(parseRetryAfter('', now)).toBeUndefined();
    expect(parseRetryAfter(undefined, now)).toBeUndefined();
  });
});
