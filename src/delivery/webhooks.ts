/**
 * Webhook delivery: every event to every endpoint, at least once, under a stable `webhook-id`.
 *
 * Model. Each endpoint is an independent queue: an event becomes one *delivery* per endpoint, and
 * a delivery lives until it is delivered (2xx), gone (410), given up (older than `maxAgeMs`),
 * cancelled (its export was un-watched) or handed back at close. A delivery is either *waiting*
 * (for a concurrency slot of its endpoint, or for its next retry) or *in flight* (one HTTP
 * attempt). Only in-flight attempts hold a slot, so an endpoint has at most
 * `concurrencyPerEndpoint` attempts open, a slow endpoint fills only its own slots, and an event
 * backing off holds nothing.
 *
 * Retries. One p-retry run per delivery owns the whole schedule: exponential backoff with jitter
 * (by default 1 s doubling to at most 1 h, each delay multiplied by a random factor in [1, 2)),
 * bounded by the event's remaining age. A `Retry-After` answer stretches the next wait so that it
 * is never shorter than the receiver asked; one that reaches past the event's max age gives the
 * event up at once. Each attempt is signed afresh, since its timestamp is part of the signature.
 *
 * Close. `close(deadlineMs)` ends every retry wait at once; attempts in flight may finish, and
 * events never tried yet get their first attempt, until the deadline; then everything still
 * running is aborted. Nothing is retried after close. Whatever was not delivered is reported to
 * the caller, then the engine's own HTTP agent is closed.
 */
import pRetry, { AbortError, type RetryContext } from 'p-retry';
import type { Logger } from 'pino';
import { Agent, type Dispatcher, request } from 'undici';
import { settlesWithin } from '../shared/deadline.js';
import { type ErrorCode, isRetryable, WatcherError, WebhookError } from '../shared/errors.js';
import type { EventType, ExportEvent } from './events.js';
import { sign } from './signing.js';

export const DEFAULT_CONCURRENCY_PER_ENDPOINT = 8;
export const DEFAULT_RETRY = { minTimeoutMs: 1_000, maxTimeoutMs: 3_600_000, factor: 2 } as const;
/** The longest a single timer can wait in Node; longer waits are chained. */
const MAX_TIMER_MS = 2_147_483_647;
/** Bytes of a response body read before the connection is dropped instead. */
const MAX_RESPONSE_BODY_BYTES = 64 * 1024;

export type AttemptOutcome = 'success' | 'failure' | 'gone';
export type DeliveryOutcome = 'delivered' | 'gone' | 'given_up' | 'cancelled' | 'closed';

export interface AttemptResult {
  /** The endpoint's log label: its URL without credentials, query or fragment. */
  endpoint: string;
  webhookId: string;
  attempt: number;
  outcome: AttemptOutcome;
  /** HTTP status, 0 when no response arrived. */
  status: number;
  code: ErrorCode | undefined;
  durationMs: number;
}

/** Optional hooks for metrics. They are called synchronously; an exception is logged and ignored. */
export interface WebhookObserver {
  attemptStarted?(endpoint: string): void;
  attemptFinished?(result: AttemptResult): void;
  deliveryFinished?(endpoint: string, outcome: DeliveryOutcome): void;
  /** Unfinished deliveries to this endpoint (waiting, in flight or backing off), on every change. */
  queueDepth?(endpoint: string, depth: number): void;
}

export interface WebhookOptions {
  urls: readonly string[];
  /** The parsed secret; when absent, no `webhook-signature` header is sent. */
  secretKey?: Buffer;
  events: ReadonlySet<EventType> | 'all';
  /** One attempt's limit, from sending to the response status (WATCHER_WEBHOOK_TIMEOUT). */
  timeoutMs: number;
  /** Retry until the event is this old, counted from enqueue (WATCHER_WEBHOOK_MAX_AGE). */
  maxAgeMs: number;
  /** Bound on concurrent attempts per endpoint; default 8. */
  concurrencyPerEndpoint?: number;
  /** `sbg-export-watcher/<version>` */
  userAgent: string;
  log: Logger;
  /** Epoch ms; default Date.now. */
  now?: () => number;
  /** Default: a keep-alive Agent owned (and closed) by the engine. */
  dispatcher?: Dispatcher;
  /** Backoff between attempts; defaults in DEFAULT_RETRY, jittered by a factor in [1, 2). */
  retry?: { minTimeoutMs?: number; maxTimeoutMs?: number; factor?: number };
  observer?: WebhookObserver;
}

export interface WebhookStats {
  delivered: number;
  failedAttempts: number;
  givenUp: number;
  gone: number;
  pending: number;
}

export interface CloseResult {
  /**
   * Deliveries that were unfinished at close and did not succeed. `endpoint` is the log label (the
   * URL without credentials, query or fragment), since callers log it.
   */
  undelivered: Array<{ endpoint: string; event: ExportEvent }>;
}

/** At most `limit` holders; waiters are served in arrival order and leave when their signal aborts. */
class Slots {
  readonly #limit: number;
  #held = 0;
  /** Grants of waiting acquirers, oldest first (a Set keeps insertion order). */
  readonly #waiting = new Set<() => void>();

  constructor(limit: number) {
    this.#limit = limit;
  }

  #canGrantNow(): boolean {
    return this.#held < this.#limit && this.#waiting.size === 0;
  }

  acquire(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(signal.reason);
    if (this.#canGrantNow()) {
      this.#held++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const grant = () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = () => {
        this.#waiting.delete(grant);
        reject(signal.reason);
      };
      this.#waiting.add(grant);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  release(): void {
    const next = this.#waiting.values().next();
    if (next.done) {
      this.#held--;
      return;
    }
    // The slot passes straight to the oldest waiter, so #held does not change.
    this.#waiting.delete(next.value);
    next.value();
  }
}

interface Endpoint {
  /** As configured: where requests go. Never logged, since it may carry a token. */
  readonly url: string;
  /** For logs and metrics: no credentials, query or fragment. */
  readonly label: string;
  readonly slots: Slots;
  /** Live deliveries by webhook id; enqueueing an id already here adds nothing. */
  readonly deliveries: Map<string, Delivery>;
  /** Cancelled or closed deliveries whose last attempt is still in flight. */
  readonly stopping: Set<Delivery>;
  readonly log: Logger;
}

interface Delivery {
  readonly endpoint: Endpoint;
  readonly event: ExportEvent;
  /** Serialized once, so every attempt sends (and signs) the same bytes. */
  readonly body: string;
  readonly enqueuedAt: number;
  /** Aborted by cancel() or close(): ends waits at once; an attempt in flight finishes but is not retried. */
  readonly stop: AbortController;
  stopReason: 'cancelled' | 'closed' | undefined;
  inFlight: boolean;
  attempts: number;
  /** Set by the attempt that ended the delivery from the endpoint's side. */
  result: 'delivered' | 'gone' | undefined;
  lastError: WebhookError | undefined;
  finished: boolean;
}

export class WebhookDispatcher {
  readonly #endpoints: readonly Endpoint[];
  readonly #secretKey: Buffer | undefined;
  readonly #events: ReadonlySet<EventType> | 'all';
  readonly #timeoutMs: number;
  readonly #maxAgeMs: number;
  readonly #userAgent: string;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #dispatcher: Dispatcher;
  /** The agent this engine created, and so closes; undefined when the caller passed a dispatcher. */
  readonly #ownedAgent: Agent | undefined;
  readonly #retry: { minTimeoutMs: number; maxTimeoutMs: number; factor: number };
  readonly #observer: WebhookObserver | undefined;
  /** One controller per attempt in flight; aborted when the close deadline passes. */
  readonly #inFlight = new Set<AbortController>();
  /** The p-retry run of every unfinished delivery; close() waits on them. */
  readonly #runs = new Set<Promise<void>>();
  readonly #idleWaiters: Array<() => void> = [];
  readonly #undelivered: Delivery[] = [];
  readonly #stats = { delivered: 0, failedAttempts: 0, givenUp: 0, gone: 0 };
  /** Set by the first close(); later calls return it. */
  #closing: Promise<CloseResult> | undefined;
  /** Set by close(): first attempts of events not yet tried may still run; no retries. */
  #draining = false;

  constructor(o: WebhookOptions) {
    const problems = validateOptions(o);
    if (problems.length > 0) throw new TypeError(`invalid WebhookOptions: ${problems.join('; ')}`);
    this.#secretKey = o.secretKey;
    this.#events = o.events;
    this.#timeoutMs = o.timeoutMs;
    this.#maxAgeMs = o.maxAgeMs;
    this.#userAgent = o.userAgent;
    this.#log = o.log;
    this.#now = o.now ?? (() => Date.now());
    this.#observer = o.observer;
    this.#retry = {
      minTimeoutMs: o.retry?.minTimeoutMs ?? DEFAULT_RETRY.minTimeoutMs,
      maxTimeoutMs: o.retry?.maxTimeoutMs ?? DEFAULT_RETRY.maxTimeoutMs,
      factor: o.retry?.factor ?? DEFAULT_RETRY.factor,
    };
    if (o.dispatcher) {
      this.#dispatcher = o.dispatcher;
      this.#ownedAgent = undefined;
    } else {
      this.#ownedAgent = new Agent({ keepAliveTimeout: 10_000 });
      this.#dispatcher = this.#ownedAgent;
    }
    const concurrency = o.concurrencyPerEndpoint ?? DEFAULT_CONCURRENCY_PER_ENDPOINT;
    const endpoints: Endpoint[] = [];
    for (const url of o.urls) {
      const label = endpointLabel(url);
      if (endpoints.some((e) => e.url === url)) {
        this.#log.warn({ endpoint: label }, 'webhook endpoint listed twice; it receives each event once');
        continue;
      }
      endpoints.push({
        url,
        label,
        slots: new Slots(concurrency),
        deliveries: new Map(),
        stopping: new Set(),
        log: this.#log.child({ endpoint: label }),
      });
    }
    this.#endpoints = endpoints;
  }

  /** Starts one delivery per endpoint, unless the event's type is filtered out. */
  enqueue(event: ExportEvent): void {
    if (this.#closing) {
      this.#log.error({ event }, 'webhook event not delivered: the dispatcher is closing');
      return;
    }
    if (!this.#wants(event.type)) {
      this.#log.debug({ webhook_id: event.id, type: event.type }, 'webhook event type not subscribed');
      return;
    }
    const body = JSON.stringify(event.body);
    const enqueuedAt = this.#now();
    for (const endpoint of this.#endpoints) {
      if (endpoint.deliveries.has(event.id)) {
        // Same id, same export and type: the delivery already under way covers it.
        endpoint.log.debug({ webhook_id: event.id }, 'webhook already pending for this endpoint');
        continue;
      }
      const delivery: Delivery = {
        endpoint,
        event,
        body,
        enqueuedAt,
        stop: new AbortController(),
        stopReason: undefined,
        inFlight: false,
        attempts: 0,
        result: undefined,
        lastError: undefined,
        finished: false,
      };
      endpoint.deliveries.set(event.id, delivery);
      this.#depthChanged(endpoint);
      const run = this.#run(delivery);
      this.#runs.add(run);
      void run.finally(() => this.#runs.delete(run));
    }
  }

  /**
   * Drops the waiting deliveries of an export and returns how many. Its attempts in flight finish
   * (they cannot be recalled) but are not retried.
   */
  cancel(exportId: string): number {
    let dropped = 0;
    for (const endpoint of this.#endpoints) {
      for (const delivery of [...endpoint.deliveries.values()]) {
        if (delivery.event.exportId !== exportId) continue;
        if (!delivery.inFlight) dropped++;
        this.#stop(delivery, 'cancelled');
      }
    }
    if (dropped > 0) this.#log.info({ export_id: exportId, count: dropped }, 'webhook deliveries cancelled');
    return dropped;
  }

  /** Deliveries not yet finished: waiting, in flight or backing off. */
  pending(): number {
    let count = 0;
    for (const endpoint of this.#endpoints) count += depth(endpoint);
    return count;
  }

  /** Resolves when pending() is 0. */
  onIdle(): Promise<void> {
    if (this.pending() === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  stats(): WebhookStats {
    return { ...this.#stats, pending: this.pending() };
  }

  /**
   * Stops starting attempts and ends backoff waits at once; lets attempts in flight finish for up
   * to `deadlineMs` (a duration), then aborts them. Reports what was not delivered. Idempotent.
   */
  close(deadlineMs: number): Promise<CloseResult> {
    this.#closing ??= this.#close(deadlineMs);
    return this.#closing;
  }

  async #close(deadlineMs: number): Promise<CloseResult> {
    this.#draining = true;
    for (const endpoint of this.#endpoints) {
      for (const delivery of [...endpoint.deliveries.values()]) {
        // An event never tried yet (say, an outcome seen by the last checks) still gets its first
        // attempt within the deadline; one that has already failed is not retried now.
        if (delivery.attempts === 0 && !delivery.inFlight) continue;
        this.#stop(delivery, 'closed');
      }
    }
    const inTime = await settlesWithin(Promise.allSettled(this.#runs), deadlineMs);
    if (!inTime) {
      for (const endpoint of this.#endpoints) {
        for (const delivery of [...endpoint.deliveries.values()]) this.#stop(delivery, 'closed');
      }
      const reason = new WatcherError(
        'SHUTTING_DOWN',
        `webhook attempt aborted at the ${deadlineMs} ms close deadline`,
      );
      for (const attempt of this.#inFlight) attempt.abort(reason);
      await Promise.allSettled(this.#runs);
    }
    if (this.#ownedAgent) await (inTime ? this.#ownedAgent.close() : this.#ownedAgent.destroy());
    const undelivered = this.#undelivered.map((d) => ({ endpoint: d.endpoint.label, event: d.event }));
    if (undelivered.length > 0) {
      this.#log.warn({ count: undelivered.length }, 'webhook dispatcher closed with undelivered events');
    } else {
      this.#log.info('webhook dispatcher closed');
    }
    return { undelivered };
  }

  /**
   * Ends a live delivery's waits at once. A waiting one finishes now; one in flight moves to
   * `stopping` and finishes when its attempt ends, without a retry.
   */
  #stop(delivery: Delivery, reason: 'cancelled' | 'closed'): void {
    const { endpoint } = delivery;
    delivery.stopReason = reason;
    delivery.stop.abort(new Error(`webhook delivery ${reason}`));
    endpoint.deliveries.delete(delivery.event.id);
    if (delivery.inFlight) {
      endpoint.stopping.add(delivery);
    } else {
      this.#finish(delivery, reason);
    }
  }

  #wants(type: EventType): boolean {
    return this.#events === 'all' || this.#events.has(type);
  }

  /** One delivery's whole life: the p-retry run, then its outcome. Never rejects. */
  async #run(delivery: Delivery): Promise<void> {
    try {
      await pRetry((attempt) => this.#attempt(delivery, attempt), {
        retries: Number.POSITIVE_INFINITY,
        minTimeout: this.#retry.minTimeoutMs,
        maxTimeout: this.#retry.maxTimeoutMs,
        factor: this.#retry.factor,
        randomize: true,
        // p-retry clips its last wait to this, so the final attempt lands at the event's max age.
        maxRetryTime: Math.max(0, this.#maxAgeMs - (this.#now() - delivery.enqueuedAt)),
        signal: delivery.stop.signal,
        onFailedAttempt: (context) => this.#beforeRetry(delivery, context),
      });
    } catch {
      // The outcome is read from the delivery below; the error itself is in lastError.
    }
    this.#finish(delivery, this.#outcomeOf(delivery));
  }

  #outcomeOf(delivery: Delivery): DeliveryOutcome {
    if (delivery.result) return delivery.result;
    if (delivery.stopReason) return delivery.stopReason;
    return 'given_up';
  }

  /**
   * Runs after a retryable failure, before p-retry's own backoff: gives the event up when it is
   * too old, and waits out whatever part of a `Retry-After` the backoff would not cover.
   */
  async #beforeRetry(delivery: Delivery, context: RetryContext): Promise<void> {
    if (delivery.stop.signal.aborted) throw context.error;
    if (this.#draining) {
      // Closing: a first attempt was allowed, a retry is not.
      delivery.stopReason = 'closed';
      throw context.error;
    }
    const ageLeftMs = this.#maxAgeMs - (this.#now() - delivery.enqueuedAt);
    if (ageLeftMs <= 0) throw context.error;
    const retryAfterMs = context.error instanceof WebhookError ? context.error.retryAfterMs : undefined;
    if (retryAfterMs === undefined) return;
    if (retryAfterMs >= ageLeftMs) {
      delivery.endpoint.log.warn(
        { webhook_id: delivery.event.id, retry_after_ms: retryAfterMs, age_left_ms: ageLeftMs },
        'webhook Retry-After reaches past the max age',
      );
      throw context.error;
    }
    // p-retry's next delay is at least min(minTimeout * factor^retriesConsumed, maxTimeout).
    const backoffFloorMs = Math.min(
      this.#retry.minTimeoutMs * this.#retry.factor ** context.retriesConsumed,
      this.#retry.maxTimeoutMs,
    );
    await abortableDelay(retryAfterMs - backoffFloorMs, delivery.stop.signal);
  }

  /** One HTTP attempt, holding a slot of the endpoint only while it is in flight. */
  async #attempt(delivery: Delivery, attempt: number): Promise<void> {
    const { endpoint, event } = delivery;
    try {
      await endpoint.slots.acquire(delivery.stop.signal);
    } catch (error) {
      throw new AbortError(error instanceof Error ? error : new Error(String(error)));
    }
    if (delivery.stop.signal.aborted) {
      // Granted a slot in the same turn as it was stopped.
      endpoint.slots.release();
      throw new AbortError(delivery.stop.signal.reason as Error);
    }
    delivery.inFlight = true;
    delivery.attempts = attempt;
    const timestampSec = Math.floor(this.#now() / 1000);
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      'user-agent': this.#userAgent,
      'webhook-id': event.id,
      'webhook-timestamp': String(timestampSec),
    };
    if (this.#secretKey)
      headers['webhook-signature'] = sign(this.#secretKey, event.id, timestampSec, delivery.body);

    const controller = new AbortController();
    const timer = setTimeout(
      () => controller.abort(new WebhookError('WEBHOOK_TIMEOUT', `no answer within ${this.#timeoutMs} ms`)),
      this.#timeoutMs,
    );
    this.#inFlight.add(controller);
    this.#observe((o) => o.attemptStarted?.(endpoint.label));
    const started = performance.now();
    let status = 0;
    let failure: WebhookError | WatcherError | undefined;
    try {
      const response = await request(endpoint.url, {
        method: 'POST',
        headers,
        body: delivery.body,
        dispatcher: this.#dispatcher,
        signal: controller.signal,
        // Our own timer is the limit; keep undici's from cutting in earlier or later.
        headersTimeout: this.#timeoutMs,
        bodyTimeout: this.#timeoutMs,
      });
      status = response.statusCode;
      failure = statusFailure(status, response.headers['retry-after'], this.#now());
      // The status decides; the body is read only to free the connection, within the same limit.
      await response.body.dump({ limit: MAX_RESPONSE_BODY_BYTES }).catch(() => undefined);
    } catch (error) {
      failure = transportFailure(error, controller.signal);
    } finally {
      clearTimeout(timer);
      this.#inFlight.delete(controller);
      delivery.inFlight = false;
      endpoint.slots.release();
    }
    const durationMs = Math.round(performance.now() - started);
    const outcome: AttemptOutcome = !failure
      ? 'success'
      : failure.code === 'WEBHOOK_GONE'
        ? 'gone'
        : 'failure';
    const result: AttemptResult = {
      endpoint: endpoint.label,
      webhookId: event.id,
      attempt,
      outcome,
      status,
      code: failure?.code,
      durationMs,
    };
    this.#observe((o) => o.attemptFinished?.(result));
    const fields = {
      webhook_id: event.id,
      export_id: event.exportId,
      attempt,
      status,
      duration_ms: durationMs,
    };
    if (!failure) {
      delivery.result = 'delivered';
      endpoint.log.debug(fields, 'webhook delivered');
      return;
    }
    this.#stats.failedAttempts++;
    if (failure instanceof WebhookError) delivery.lastError = failure;
    const retryAfterMs = failure instanceof WebhookError ? failure.retryAfterMs : undefined;
    if (failure.code === 'WEBHOOK_GONE') {
      delivery.result = 'gone';
      endpoint.log.warn(fields, 'webhook endpoint answered 410 Gone; this event is no longer sent to it');
    } else if (failure.code === 'SHUTTING_DOWN') {
      endpoint.log.warn(fields, 'webhook attempt aborted: close deadline passed');
    } else {
      endpoint.log.warn(
        { ...fields, code: failure.code, error: failure.message, retry_after_ms: retryAfterMs },
        'webhook attempt failed',
      );
    }
    throw isRetryable(failure) ? failure : new AbortError(failure);
  }

  /** Ends a delivery once: bookkeeping, the outcome's log line, and the idle check. */
  #finish(delivery: Delivery, outcome: DeliveryOutcome): void {
    if (delivery.finished) return;
    delivery.finished = true;
    const { endpoint, event } = delivery;
    if (endpoint.deliveries.get(event.id) === delivery) endpoint.deliveries.delete(event.id);
    endpoint.stopping.delete(delivery);
    switch (outcome) {
      case 'delivered':
        this.#stats.delivered++;
        break;
      case 'gone':
        this.#stats.gone++;
        break;
      case 'closed':
        this.#undelivered.push(delivery);
        break;
      case 'cancelled':
        break;
      case 'given_up': {
        this.#stats.givenUp++;
        const error = delivery.lastError;
        endpoint.log.error(
          {
            event,
            attempts: delivery.attempts,
            age_ms: this.#now() - delivery.enqueuedAt,
            last_status: error?.status,
            last_error: error ? { code: error.code, message: error.message } : undefined,
          },
          'webhook delivery given up',
        );
        break;
      }
    }
    this.#observe((o) => o.deliveryFinished?.(endpoint.label, outcome));
    this.#depthChanged(endpoint);
    if (this.pending() === 0) {
      for (const resolve of this.#idleWaiters.splice(0)) resolve();
    }
  }

  #depthChanged(endpoint: Endpoint): void {
    this.#observe((o) => o.queueDepth?.(endpoint.label, depth(endpoint)));
  }

  #observe(call: (observer: WebhookObserver) => void): void {
    if (!this.#observer) return;
    try {
      call(this.#observer);
    } catch (error) {
      this.#log.warn({ err: error }, 'webhook observer threw; ignored');
    }
  }
}

/** Unfinished deliveries to an endpoint. */
function depth(endpoint: Endpoint): number {
  return endpoint.deliveries.size + endpoint.stopping.size;
}

/** The failure a response status means, or undefined for a 2xx. */
function statusFailure(
  status: number,
  retryAfter: string | string[] | undefined,
  nowMs: number,
): WebhookError | undefined {
  if (status >= 200 && status < 300) return undefined;
  if (status === 410) return new WebhookError('WEBHOOK_GONE', 'endpoint answered 410 Gone', { status });
  const retryAfterMs = parseRetryAfter(retryAfter, nowMs);
  const what = status >= 300 && status < 400 ? 'a redirect, which is not followed' : 'not a 2xx';
  return new WebhookError('WEBHOOK_REJECTED', `endpoint answered ${status}: ${what}`, {
    status,
    retryAfterMs,
  });
}

/** The failure an exception from undici means. */
function transportFailure(error: unknown, signal: AbortSignal): WebhookError | WatcherError {
  if (signal.aborted && signal.reason instanceof WatcherError) return signal.reason;
  const code = (error as { code?: unknown } | null)?.code;
  if (
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT' ||
    code === 'UND_ERR_CONNECT_TIMEOUT'
  ) {
    return new WebhookError('WEBHOOK_TIMEOUT', 'endpoint did not answer in time', { cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new WebhookError('WEBHOOK_NETWORK', `request failed: ${message}`, { cause: error });
}

/**
 * `Retry-After` in milliseconds from now: delay-seconds or an HTTP date (past dates are 0).
 * Undefined when absent or unreadable.
 */
export function parseRetryAfter(value: string | string[] | undefined, nowMs: number): number | undefined {
  const text = (Array.isArray(value) ? value[0] : value)?.trim();
  if (!text) return undefined;
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  // HTTP dates always have letters (day and month names); this keeps "1.5" from parsing as a date.
  if (!/[A-Za-z]/.test(text)) return undefined;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}

/** The URL without credentials, query or fragment, which may carry tokens. */
export function endpointLabel(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '<invalid url>';
  }
}

/** Resolves after `ms` (any length), rejects with the signal's reason when it aborts first. */
function abortableDelay(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  if (ms <= 0) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    let left = ms;
    let timer: ReturnType<typeof setTimeout>;
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const step = () => {
      if (left <= 0) {
        signal.removeEventListener('abort', onAbort);
        resolve();
        return;
      }
      const chunk = Math.min(left, MAX_TIMER_MS);
      left -= chunk;
      timer = setTimeout(step, chunk);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    step();
  });
}

function validateOptions(o: WebhookOptions): string[] {
  const problems: string[] = [];
  o.urls.forEach((url, i) => {
    let protocol: string | undefined;
    try {
      protocol = new URL(url).protocol;
    } catch {
      // reported below
    }
    if (protocol !== 'http:' && protocol !== 'https:') {
      problems.push(
        `urls[${i}]: expected an http(s) URL, got ${protocol ? `a ${protocol} URL` : 'an unparsable one'}`,
      );
    }
  });
  const positive = (name: string, value: number | undefined, max = Number.MAX_SAFE_INTEGER) => {
    if (value !== undefined && !(Number.isFinite(value) && value > 0 && value <= max)) {
      problems.push(`${name}: expected a number of milliseconds in (0, ${max}], got ${value}`);
    }
  };
  positive('timeoutMs', o.timeoutMs, MAX_TIMER_MS);
  positive('maxAgeMs', o.maxAgeMs);
  positive('retry.minTimeoutMs', o.retry?.minTimeoutMs, MAX_TIMER_MS);
  positive('retry.maxTimeoutMs', o.retry?.maxTimeoutMs, MAX_TIMER_MS);
  const factor = o.retry?.factor;
  if (factor !== undefined && !(Number.isFinite(factor) && factor >= 1)) {
    problems.push(`retry.factor: expected a number >= 1, got ${factor}`);
  }
  const concurrency = o.concurrencyPerEndpoint;
  if (concurrency !== undefined && !(Number.isInteger(concurrency) && concurrency >= 1)) {
    problems.push(`concurrencyPerEndpoint: expected an integer >= 1, got ${concurrency}`);
  }
  return problems;
}
