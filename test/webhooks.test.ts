/**
 * The delivery engine over real loopback HTTP against WebhookReceiver. Backoff paths run on vitest
 * fake timers; `runUntil` only moves the fake clock while no attempt is on the wire, so a request
 * in progress never sees time jump (its timeout and undici's own timers stay put).
 */
import pino from 'pino';
import { Webhook } from 'standardwebhooks';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { EventType, ExportEvent } from '../src/delivery/events.js';
import { eventForTransition } from '../src/delivery/events.js';
import { parseSecret } from '../src/delivery/signing.js';
import {
  type AttemptResult,
  type DeliveryOutcome,
  endpointLabel,
  parseRetryAfter,
  WebhookDispatcher,
  type WebhookObserver,
  type WebhookOptions,
} from '../src/delivery/webhooks.js';
import { type Answer, type ReceiverOptions, WebhookReceiver } from '../src/dev/receiver.js';

// Real timers, captured before any test installs fake ones.
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;
const realSetImmediate = globalThis.setImmediate;

const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const SECRET_KEY_B64 = 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const USER_AGENT = 'sbg-export-watcher/1.2.3';
/** What the engine and p-retry read time from; real I/O and setImmediate stay real. */
const useFakeTime = () => vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'] });

/** Records attempts and outcomes, and lets a test await a state of them. */
class Probe implements WebhookObserver {
  started = 0;
  maxInFlight = 0;
  readonly attempts: AttemptResult[] = [];
  readonly outcomes: Array<{ endpoint: string; outcome: DeliveryOutcome }> = [];
  readonly #waiters = new Set<() => void>();

  get inFlight(): number {
    return this.started - this.attempts.length;
  }
  attemptStarted(): void {
    this.started++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
  }
  attemptFinished(result: AttemptResult): void {
    this.attempts.push(result);
    this.#changed();
  }
  deliveryFinished(endpoint: string, outcome: DeliveryOutcome): void {
    this.outcomes.push({ endpoint, outcome });
    this.#changed();
  }
  #changed(): void {
    for (const wake of this.#waiters) wake();
  }
  /** Resolves when `predicate` holds (checked on every change); rejects after 10 s of real time. */
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

/**
 * Fires fake timers one at a time until `done()` holds, waiting (in real time) for every attempt
 * in flight to finish before the clock moves again.
 */
async function runUntil(probe: Probe, done: () => boolean, maxSteps = 5_000): Promise<void> {
  for (let step = 0; step < maxSteps; step++) {
    await probe.until(() => probe.inFlight === 0);
    await turn();
    if (done()) return;
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

function makeEvent(exportId: string, to: 'RUNNING' | 'COMPLETED' | 'FAILED' = 'COMPLETED'): ExportEvent {
  const event = eventForTransition({
    exportId,
    from: 'PENDING',
    to,
    at: Date.UTC(2025, 0, 2, 3, 4, 5),
    metadata: { ticket: 'T-1' },
    export: { id: exportId, state: to, destination: { volume: 'vol', location: 'a/b.bam' } },
    error: null,
  });
  if (!event) throw new Error('no event');
  return event;
}

// Every log line of every test, checked for secrets after each test.
let logLines: string[] = [];
const receivers: WebhookReceiver[] = [];
const cleanups: Array<() => Promise<unknown>> = [];

function logger() {
  const log = pino({ level: 'debug' }, { write: (line: string) => void logLines.push(line) });
  return log;
}
const records = () => logLines.map((line) => JSON.parse(line) as Record<string, unknown>);

async function receiver(options: ReceiverOptions = {}): Promise<{ r: WebhookReceiver; url: string }> {
  const r = new WebhookReceiver(options);
  receivers.push(r);
  const url = await r.start();
  cleanups.push(() => r.close());
  return { r, url };
}

function dispatcher(options: Partial<WebhookOptions> & Pick<WebhookOptions, 'urls'>): WebhookDispatcher {
  const d = new WebhookDispatcher({
    secretKey: parseSecret(SECRET),
    events: 'all',
    timeoutMs: 60_000,
    maxAgeMs: 24 * 3_600_000,
    userAgent: USER_AGENT,
    log: logger(),
    ...options,
  });
  cleanups.push(() => d.close(0));
  return d;
}

afterEach(async () => {
  vi.useRealTimers();
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
  it('sends the exact headers and body, signed so the reference package verifies it', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(1_700_000_000_123);
    const { r, url } = await receiver({ secret: SECRET });
    const d = dispatcher({ urls: [url] });
    const event = makeEvent('exp-1');
    d.enqueue(event);
    await d.onIdle();

    expect(r.received).toHaveLength(1);
    const got = r.received[0]!;
    expect(got.headers['content-type']).toBe('application/json');
    expect(got.headers['user-agent']).toBe(USER_AGENT);
    expect(got.headers['webhook-id']).toBe('evt_exp-1_completed');
    expect(got.headers['webhook-timestamp']).toBe('1700000000');
    expect(got.signature).toMatch(/^v1,[A-Za-z0-9+/]{43}=$/);
    expect(got.body).toBe(JSON.stringify(event.body));
    expect(got.json).toEqual({
      type: 'export.completed',
      timestamp: '2025-01-02T03:04:05.000Z',
      data: {
        export_id: 'exp-1',
        state: 'COMPLETED',
        previous_state: 'PENDING',
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
    expect(verified).toEqual(event.body);
    expect(d.stats()).toEqual({ delivered: 1, failedAttempts: 0, givenUp: 0, gone: 0, pending: 0 });
    const attemptLine = records().find((l) => l.msg === 'webhook delivered');
    expect(attemptLine).toMatchObject({
      level: 20,
      endpoint: endpointLabel(url),
      webhook_id: event.id,
      attempt: 1,
      status: 204,
    });
    expect(attemptLine?.duration_ms).toEqual(expect.any(Number));
  });

  it('has no signature header without a secret', async () => {
    const { r, url } = await receiver();
    const d = dispatcher({ urls: [url], secretKey: undefined });
    d.enqueue(makeEvent('exp-1'));
    await d.onIdle();
    expect(r.accepted()).toHaveLength(1);
    expect(r.received[0]!.headers['webhook-signature']).toBeUndefined();
    expect(r.received[0]!.verified).toBeUndefined();
  });

  it('sends only subscribed event types', async () => {
    const { r, url } = await receiver();
    const some = dispatcher({
      urls: [url],
      events: new Set<EventType>(['export.completed', 'export.failed']),
    });
    some.enqueue(makeEvent('a', 'RUNNING'));
    some.enqueue(makeEvent('a', 'COMPLETED'));
    some.enqueue(makeEvent('b', 'FAILED'));
    await some.onIdle();
    expect([...r.uniqueIds()]).toEqual(['evt_a_completed', 'evt_b_failed']);

    const { r: r2, url: url2 } = await receiver();
    const all = dispatcher({ urls: [url2], events: 'all' });
    all.enqueue(makeEvent('a', 'RUNNING'));
    all.enqueue(makeEvent('a', 'COMPLETED'));
    await all.onIdle();
    expect(new Set(r2.uniqueIds())).toEqual(new Set(['evt_a_running', 'evt_a_completed']));
  });

  it('sends an event enqueued again while pending only once per endpoint', async () => {
    const hold = deferred<Answer>();
    const { r, url } = await receiver({ respond: () => hold.promise });
    const d = dispatcher({ urls: [url] });
    d.enqueue(makeEvent('a'));
    d.enqueue(makeEvent('a'));
    expect(d.pending()).toBe(1);
    await r.waitFor((x) => x.received.length === 1);
    hold.resolve(200);
    await d.onIdle();
    expect(r.received).toHaveLength(1);
    expect(d.stats().delivered).toBe(1);
  });
});

describe('retries', () => {
  it('retries a refusing receiver with the same webhook-id and a fresh timestamp, within seconds', async () => {
    useFakeTime();
    vi.setSystemTime(1_700_000_000_000);
    const probe = new Probe();
    const { r, url } = await receiver({
      secret: SECRET,
      respond: (_req, attempt) => (attempt <= 2 ? 503 : 200),
    });
    const d = dispatcher({ urls: [url], observer: probe });
    d.enqueue(makeEvent('exp-1'));
    await runUntil(probe, () => d.pending() === 0);

    expect(r.received.map((x) => x.status)).toEqual([503, 503, 200]);
    expect(r.uniqueIds()).toEqual(new Set(['evt_exp-1_completed']));
    const stamps = r.received.map((x) => x.timestamp);
    expect(stamps[0]).toBe(1_700_000_000);
    expect(stamps[1]!).toBeGreaterThan(stamps[0]!);
    expect(stamps[2]!).toBeGreaterThan(stamps[1]!);
    for (const x of r.received) {
      expect(x.timestamp).toBe(Math.floor(x.receivedAt / 1000));
      expect(x.verified).toBe(true);
    }
    // First retry after 1-2 s, second after 2-4 s (1 s doubling, jitter in [1, 2)).
    const gaps = r.received.slice(1).map((x, i) => x.receivedAt - r.received[i]!.receivedAt);
    expect(gaps[0]).toBeGreaterThanOrEqual(1_000);
    expect(gaps[0]).toBeLessThanOrEqual(2_000);
    expect(gaps[1]).toBeGreaterThanOrEqual(2_000);
    expect(gaps[1]).toBeLessThanOrEqual(4_000);
    expect(d.stats()).toEqual({ delivered: 1, failedAttempts: 2, givenUp: 0, gone: 0, pending: 0 });
    const warns = records().filter((l) => l.msg === 'webhook attempt failed');
    expect(warns.map((l) => [l.level, l.attempt, l.status, l.code])).toEqual([
      [40, 1, 503, 'WEBHOOK_REJECTED'],
      [40, 2, 503, 'WEBHOOK_REJECTED'],
    ]);
  });

  it('backs off from seconds to minutes to the 1 h cap', async () => {
    useFakeTime();
    const probe = new Probe();
    const { r, url } = await receiver({ respond: () => 500 });
    const d = dispatcher({ urls: [url], observer: probe });
    d.enqueue(makeEvent('exp-1'));
    await runUntil(probe, () => probe.attempts.length >= 16);
    const gaps = r.received.slice(1).map((x, i) => x.receivedAt - r.received[i]!.receivedAt);
    gaps.forEach((gap, i) => {
      const base = Math.min(1_000 * 2 ** i, 3_600_000);
      expect(gap).toBeGreaterThanOrEqual(base);
      expect(gap).toBeLessThanOrEqual(Math.min(2 * base, 3_600_000));
    });
    expect(gaps.at(-1)).toBe(3_600_000);
  });

  it('never retries before Retry-After (seconds)', async () => {
    useFakeTime();
    const probe = new Probe();
    const { r, url } = await receiver({
      respond: (_req, attempt) => (attempt === 1 ? { status: 503, headers: { 'retry-after': '120' } } : 204),
    });
    const d = dispatcher({ urls: [url], observer: probe });
    d.enqueue(makeEvent('exp-1'));
    await runUntil(probe, () => d.pending() === 0);
    expect(r.received).toHaveLength(2);
    const gap = r.received[1]!.receivedAt - r.received[0]!.receivedAt;
    expect(gap).toBeGreaterThanOrEqual(120_000);
    expect(gap).toBeLessThanOrEqual(121_000);
    expect(records().find((l) => l.msg === 'webhook attempt failed')).toMatchObject({
      retry_after_ms: 120_000,
    });
  });

  it('never retries before Retry-After (HTTP date), on a 429', async () => {
    useFakeTime();
    vi.setSystemTime(1_700_000_000_000);
    const probe = new Probe();
    const until = new Date(1_700_000_000_000 + 90_000);
    const { r, url } = await receiver({
      respond: (_req, attempt) =>
        attempt === 1 ? { status: 429, headers: { 'retry-after': until.toUTCString() } } : 204,
    });
    const d = dispatcher({ urls: [url], observer: probe });
    d.enqueue(makeEvent('exp-1'));
    await runUntil(probe, () => d.pending() === 0);
    expect(r.received).toHaveLength(2);
    expect(r.received[1]!.receivedAt).toBeGreaterThanOrEqual(until.getTime());
  });

  it('gives up at once when Retry-After reaches past the max age', async () => {
    useFakeTime();
    const probe = new Probe();
    const { r, url } = await receiver({
      respond: () => ({ status: 503, headers: { 'retry-after': '7200' } }),
    });
    const d = dispatcher({ urls: [url], observer: probe, maxAgeMs: 3_600_000 });
    d.enqueue(makeEvent('exp-1'));
    await runUntil(probe, () => d.pending() === 0);
    expect(r.received).toHaveLength(1);
    expect(d.stats().givenUp).toBe(1);
  });

  it('counts a redirect as a failure, does not follow it, and retries', async () => {
    const probe = new Probe();
    const { r, url } = await receiver({
      respond: (_req, attempt) => (attempt === 1 ? { status: 302, headers: { location: `${url}` } } : 200),
    });
    const d = dispatcher({ urls: [url], observer: probe, retry: { minTimeoutMs: 1 } });
    d.enqueue(makeEvent('exp-1'));
    await d.onIdle();
    expect(r.received.map((x) => x.status)).toEqual([302, 200]);
    expect(probe.attempts.map((a) => [a.outcome, a.status, a.code])).toEqual([
      ['failure', 302, 'WEBHOOK_REJECTED'],
      ['success', 200, undefined],
    ]);
    expect(d.stats()).toMatchObject({ delivered: 1, failedAttempts: 1 });
  });

  it('counts a timeout as a failure and retries', async () => {
    useFakeTime();
    const probe = new Probe();
    const never = new Promise<Answer>(() => {});
    const { r, url } = await receiver({ respond: (_req, attempt) => (attempt === 1 ? never : 204) });
    const d = dispatcher({ urls: [url], observer: probe, timeoutMs: 5_000 });
    d.enqueue(makeEvent('exp-1'));
    await r.waitFor((x) => x.received.length === 1);
    await vi.advanceTimersByTimeAsync(5_000);
    await runUntil(probe, () => d.pending() === 0);
    expect(probe.attempts.map((a) => [a.outcome, a.code])).toEqual([
      ['failure', 'WEBHOOK_TIMEOUT'],
      ['success', undefined],
    ]);
    expect(r.accepted()).toHaveLength(1);
    expect(d.stats()).toMatchObject({ delivered: 1, failedAttempts: 1 });
  });

  it('counts a refused connection as a failure', async () => {
    const probe = new Probe();
    const { r: gone, url } = await receiver();
    await gone.close();
    const d = dispatcher({ urls: [url], observer: probe, retry: { minTimeoutMs: 1 } });
    d.enqueue(makeEvent('exp-1'));
    await probe.until(() => probe.attempts.length >= 2);
    expect(probe.attempts[0]).toMatchObject({ outcome: 'failure', status: 0, code: 'WEBHOOK_NETWORK' });
    expect((await d.close(0)).undelivered).toHaveLength(1);
  });

  it('gives up at the max age and logs the whole event at error', async () => {
    useFakeTime();
    const probe = new Probe();
    const { r, url } = await receiver({ respond: () => 500 });
    const d = dispatcher({ urls: [url], observer: probe, maxAgeMs: 60_000 });
    const event = makeEvent('exp-1', 'FAILED');
    const enqueuedAt = Date.now();
    d.enqueue(event);
    await runUntil(probe, () => d.pending() === 0);

    // The last wait is clipped so the final attempt lands at the max age, not after it.
    expect(r.received.at(-1)!.receivedAt - enqueuedAt).toBe(60_000);
    expect(d.stats()).toEqual({
      delivered: 0,
      failedAttempts: r.received.length,
      givenUp: 1,
      gone: 0,
      pending: 0,
    });
    expect(probe.outcomes).toEqual([{ endpoint: endpointLabel(url), outcome: 'given_up' }]);
    const line = records().find((l) => l.msg === 'webhook delivery given up');
    expect(line).toMatchObject({
      level: 50,
      endpoint: endpointLabel(url),
      attempts: r.received.length,
      last_status: 500,
      event: JSON.parse(JSON.stringify(event)),
    });
  });
});

describe('endpoints', () => {
  it('stops an event at an endpoint answering 410 while another endpoint still receives it', async () => {
    const probe = new Probe();
    const { r: goneR, url: goneUrl } = await receiver({ respond: () => 410 });
    const { r: okR, url: okUrl } = await receiver({
      respond: (_req, attempt) => (attempt === 1 ? 500 : 204),
    });
    const d = dispatcher({ urls: [goneUrl, okUrl], observer: probe, retry: { minTimeoutMs: 1 } });
    d.enqueue(makeEvent('exp-1'));
    await d.onIdle();
    expect(goneR.received).toHaveLength(1);
    expect(okR.received.map((x) => x.status)).toEqual([500, 204]);
    expect(d.stats()).toEqual({ delivered: 1, failedAttempts: 2, givenUp: 0, gone: 1, pending: 0 });
    expect(new Set(probe.outcomes.map((o) => o.outcome))).toEqual(new Set(['gone', 'delivered']));
    const warn = records().find((l) => typeof l.msg === 'string' && l.msg.includes('410'));
    expect(warn).toMatchObject({ level: 40, endpoint: endpointLabel(goneUrl), status: 410 });
  });

  it('does not let a slow endpoint hold back another', async () => {
    const slowAnswers: Array<(a: Answer) => void> = [];
    let slowReleased = false;
    const { r: slow, url: slowUrl } = await receiver({
      respond: () => (slowReleased ? 204 : new Promise<Answer>((resolve) => slowAnswers.push(resolve))),
    });
    const { r: fast, url: fastUrl } = await receiver();
    const probe = new Probe();
    const d = dispatcher({ urls: [slowUrl, fastUrl], observer: probe, concurrencyPerEndpoint: 2 });
    for (let i = 0; i < 10; i++) d.enqueue(makeEvent(`exp-${i}`));

    await probe.until(() => probe.outcomes.length === 10);
    expect(
      probe.outcomes.every((o) => o.endpoint === endpointLabel(fastUrl) && o.outcome === 'delivered'),
    ).toBe(true);
    expect(fast.accepted()).toHaveLength(10);
    await slow.waitFor((x) => x.received.length === 2);
    expect(slow.received).toHaveLength(2);
    expect(d.pending()).toBe(10);

    slowReleased = true;
    for (const answer of slowAnswers) answer(204);
    await d.onIdle();
    expect(slow.accepted()).toHaveLength(10);
    expect(d.stats().delivered).toBe(20);
  });

  it('never exceeds the per-endpoint concurrency bound', async () => {
    const probe = new Probe();
    const held: Array<(a: Answer) => void> = [];
    let concurrent = 0;
    let maxConcurrent = 0;
    const { r, url } = await receiver({
      respond: () => {
        concurrent++;
        maxConcurrent = Math.max(maxConcurrent, concurrent);
        return new Promise<Answer>((resolve) => held.push(resolve)).finally(() => concurrent--);
      },
    });
    const d = dispatcher({ urls: [url], observer: probe, concurrencyPerEndpoint: 3 });
    for (let i = 0; i < 20; i++) d.enqueue(makeEvent(`exp-${i}`));

    let answered = 0;
    while (answered < 20) {
      const batch = Math.min(3, 20 - answered);
      await r.waitFor(() => held.length === batch);
      // The dispatcher has started exactly these attempts and no more.
      expect(probe.inFlight).toBe(batch);
      for (const answer of held.splice(0)) answer(204);
      answered += batch;
    }
    await d.onIdle();
    expect(r.accepted()).toHaveLength(20);
    expect(maxConcurrent).toBe(3);
    expect(probe.maxInFlight).toBe(3);
  });

  it('does not hold a concurrency slot while waiting for a retry', async () => {
    useFakeTime();
    const probe = new Probe();
    const { r, url } = await receiver({
      respond: (req, attempt) => (req.id === 'evt_bad_completed' || attempt > 1 ? 500 : 204),
    });
    const d = dispatcher({ urls: [url], observer: probe, concurrencyPerEndpoint: 1 });
    d.enqueue(makeEvent('bad'));
    await runUntil(probe, () => probe.attempts.length === 1);
    // 'bad' is now backing off; with one slot, 'good' still goes out at once.
    d.enqueue(makeEvent('good'));
    await probe.until(() => probe.attempts.length === 2);
    expect(r.received.map((x) => x.id)).toEqual(['evt_bad_completed', 'evt_good_completed']);
    expect(r.received[1]!.receivedAt).toBe(r.received[0]!.receivedAt);
  });
});

describe('cancel', () => {
  it('drops the waiting deliveries of an export, and no attempt follows', async () => {
    useFakeTime();
    const probe = new Probe();
    let accept = false;
    const { r, url } = await receiver({ respond: () => (accept ? 204 : 500) });
    const { url: url2 } = await receiver({ respond: () => (accept ? 204 : 500) });
    const d = dispatcher({ urls: [url, url2], observer: probe });
    d.enqueue(makeEvent('x'));
    d.enqueue(makeEvent('y'));
    await runUntil(probe, () => probe.attempts.length === 4);
    expect(d.pending()).toBe(4);

    expect(d.cancel('x')).toBe(2);
    expect(d.pending()).toBe(2);
    expect(d.cancel('x')).toBe(0);
    expect(d.cancel('unknown')).toBe(0);

    accept = true;
    await runUntil(probe, () => d.pending() === 0);
    expect(r.received.map((x) => [x.id, x.status])).toEqual([
      ['evt_x_completed', 500],
      ['evt_y_completed', 500],
      ['evt_y_completed', 204],
    ]);
    expect(d.stats()).toMatchObject({ delivered: 2, givenUp: 0 });
    expect(probe.outcomes.filter((o) => o.outcome === 'cancelled')).toHaveLength(2);
  });

  it('lets an attempt in flight finish but does not retry it', async () => {
    const probe = new Probe();
    const hold = deferred<Answer>();
    const { r, url } = await receiver({ respond: (_req, attempt) => (attempt === 1 ? hold.promise : 204) });
    const d = dispatcher({ urls: [url], observer: probe, retry: { minTimeoutMs: 1 } });
    d.enqueue(makeEvent('x'));
    await r.waitFor((x) => x.received.length === 1);
    expect(d.cancel('x')).toBe(0);
    expect(d.pending()).toBe(1);
    // Watched again: a new delivery starts even though the cancelled attempt is still out.
    d.enqueue(makeEvent('x'));
    expect(d.pending()).toBe(2);
    await r.waitFor((x) => x.accepted().length === 1);
    hold.resolve(500);
    await d.onIdle();
    expect(r.received.map((x) => x.status)).toEqual([500, 204]);
    expect(probe.outcomes.map((o) => o.outcome).sort()).toEqual(['cancelled', 'delivered']);
    expect(d.stats()).toMatchObject({ delivered: 1, failedAttempts: 1, pending: 0 });
  });
});

describe('close', () => {
  it('is idempotent, ends backoff waits at once, lets an attempt in flight finish, and reports the rest', async () => {
    const probe = new Probe();
    const hold = deferred<Answer>();
    const { r, url } = await receiver({
      respond: (req) => (req.id === 'evt_slow_completed' ? hold.promise : 500),
    });
    const d = dispatcher({ urls: [url], observer: probe, retry: { minTimeoutMs: 600_000 } });
    const refused = makeEvent('refused');
    d.enqueue(makeEvent('slow'));
    d.enqueue(refused);
    await probe.until(() => probe.attempts.length === 1);
    await r.waitFor((x) => x.received.length === 2);

    const closing = d.close(30_000);
    expect(d.close(1)).toBe(closing);
    expect(d.pending()).toBe(1); // the refused event's wait ended at once; the slow one is in flight
    hold.resolve(204);
    const { undelivered } = await closing;

    expect(undelivered).toEqual([{ endpoint: endpointLabel(url), event: refused }]);
    expect(d.stats()).toMatchObject({ delivered: 1, pending: 0 });
    expect(r.accepted().map((x) => x.id)).toEqual(['evt_slow_completed']);

    d.enqueue(makeEvent('late'));
    expect(d.pending()).toBe(0);
    expect(
      records().find((l) => l.msg === 'webhook event not delivered: the dispatcher is closing'),
    ).toMatchObject({
      level: 50,
      event: { id: 'evt_late_completed' },
    });
    await d.onIdle();
  });

  it('gives events never tried yet their first attempt within the deadline, and no retry', async () => {
    const probe = new Probe();
    const hold = deferred<Answer>();
    const { r, url } = await receiver({
      respond: (req) =>
        req.id === 'evt_first_completed' ? hold.promise : req.id === 'evt_fails_completed' ? 500 : 204,
    });
    // One slot: the second and third events wait behind the first, never tried, when close begins.
    const d = dispatcher({
      urls: [url],
      observer: probe,
      concurrencyPerEndpoint: 1,
      retry: { minTimeoutMs: 1 },
    });
    const fails = makeEvent('fails');
    d.enqueue(makeEvent('first'));
    d.enqueue(makeEvent('second'));
    d.enqueue(fails);
    await r.waitFor((x) => x.received.length === 1);
    const closing = d.close(30_000);
    hold.resolve(204);
    const { undelivered } = await closing;
    expect(r.accepted().map((x) => x.id)).toEqual(['evt_first_completed', 'evt_second_completed']);
    // Tried once during the drain, refused, and reported rather than retried.
    expect(r.received.filter((x) => x.id === 'evt_fails_completed')).toHaveLength(1);
    expect(undelivered).toEqual([{ endpoint: endpointLabel(url), event: fails }]);
  });

  it('aborts attempts still in flight at the deadline and reports them', async () => {
    useFakeTime();
    const probe = new Probe();
    const { r, url } = await receiver({ respond: () => new Promise<Answer>(() => {}) });
    const d = dispatcher({ urls: [url], observer: probe });
    const stuck = makeEvent('stuck');
    d.enqueue(stuck);
    await r.waitFor((x) => x.received.length === 1);
    const closing = d.close(2_000);
    await vi.advanceTimersByTimeAsync(2_000);
    expect((await closing).undelivered).toEqual([{ endpoint: endpointLabel(url), event: stuck }]);
    expect(d.pending()).toBe(0);
  });
});

describe('hygiene', () => {
  it('never logs the secret, signatures, or credentials and tokens in endpoint URLs', async () => {
    const probe = new Probe();
    const { r, url } = await receiver({
      secret: SECRET,
      respond: (_req, attempt) => (attempt === 1 ? 500 : 204),
    });
    const withToken = `${url.replace('http://', 'http://user:hunter2@')}?token=tok_abcdef`;
    const d = dispatcher({ urls: [withToken], observer: probe, retry: { minTimeoutMs: 1 } });
    d.enqueue(makeEvent('exp-1'));
    await d.onIdle();
    expect(r.accepted()).toHaveLength(1);
    expect(r.received.every((x) => x.verified)).toBe(true);
    const all = logLines.join('\n');
    expect(all).toContain(endpointLabel(url));
    expect(all).not.toContain('hunter2');
    expect(all).not.toContain('tok_abcdef');
    expect(endpointLabel('https://u:p@hooks.example:8443/in/x?t=1#f')).toBe(
      'https://hooks.example:8443/in/x',
    );
    // afterEach checks the secret and the signatures.
  });

  it('validates its options up front, naming each problem', () => {
    expect(() =>
      dispatcher({ urls: ['ftp://example.com/x', 'not a url'], timeoutMs: 0, concurrencyPerEndpoint: 1.5 }),
    ).toThrow(/urls\[0\].*ftp:.*urls\[1\].*unparsable.*timeoutMs.*got 0.*concurrencyPerEndpoint.*1\.5/);
  });

  it('parses Retry-After seconds and HTTP dates', () => {
    const now = Date.UTC(2025, 0, 1, 0, 0, 0);
    expect(parseRetryAfter('30', now)).toBe(30_000);
    expect(parseRetryAfter(' 0 ', now)).toBe(0);
    expect(parseRetryAfter('Wed, 01 Jan 2025 00:01:00 GMT', now)).toBe(60_000);
    expect(parseRetryAfter('Tue, 31 Dec 2024 23:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter(['5', '7'], now)).toBe(5_000);
    expect(parseRetryAfter('1.5', now)).toBeUndefined();
    expect(parseRetryAfter('-3', now)).toBeUndefined();
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter(undefined, now)).toBeUndefined();
  });
});
