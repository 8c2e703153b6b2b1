/**
 * The delivery engine: sends the events the store holds to every endpoint, at least once, under
 * a stable `webhook-id`, and writes each outcome back. The store is the outbox: an event and its
 * deliveries are committed with the state change that caused them, before this engine sees them,
 * so a crash at any point loses nothing (docs/design.md, "Delivery").
 *
 * Model. Each endpoint is an independent queue. The engine *claims* due deliveries of an endpoint
 * from the store in small batches (a lease keeps them from being claimed twice), holds at most
 * `4 × concurrency` of them, and runs at most `concurrency` attempts at once; a slow endpoint
 * fills only its own slots. Only this bounded window lives in memory; the backlog stays on disk.
 *
 * Retries come in two tiers:
 * - quick: the first claim of a series makes up to `quickAttempts` attempts, 1 s then 2 s apart
 *   (jittered), which rides out a receiver restart without touching the disk;
 * - durable: after that the delivery goes back to the store with `next_attempt_at` set by an
 *   exponential backoff on its attempt count (1 s doubling to 1 h, times a jitter in [1, 2)), never
 *   sooner than a `Retry-After`, and never past the series' max age: the last attempt lands at
 *   `WATCHER_WEBHOOK_MAX_AGE`, after which the delivery is `failed` (given up). A `Retry-After`
 *   past the max age gives up at once. 410 Gone is final (`gone`).
 *
 * Outcomes are written in batches (every `flushDelayMs` or 500 records): losing the last batch in
 * a crash means one more attempt under the same webhook-id, which receivers de-duplicate.
 *
 * Close. `close(deadlineMs)` stops claiming and ends retry waits at once; attempts in flight may
 * finish until the deadline, then they are aborted. Everything unfinished stays pending in the
 * store and is sent at the next start.
 *
 * Pause. With replicas, only the leader sends. `pause()` (the replica stepped down) stops at once,
 * synchronously: no claim is made after it returns, retry and slot waits end, and attempts in
 * flight are aborted (a receiver may still have got one: it is sent again under the same
 * webhook-id). What an attempt settled is written as usual; an attempt cut short leaves its
 * delivery pending, due at once; a delivery held but not yet tried keeps its lease, which the
 * next leader ends (`resume({ releaseLeasesAt })`). `resume()` makes the engine claim again, as
 * `start()` does the first time.
 */
import pRetry from 'p-retry';
import type { Logger } from 'pino';
import type { Agent, Dispatcher } from 'undici';
import type { AttemptResult, Bus, DeliveryOutcome } from '../shared/bus.js';
import { onAbort, settlesWithin } from '../shared/deadline.js';
import { isRetryable, WatcherError } from '../shared/errors.js';
import { type HeldLines, LineWindow } from '../shared/line-window.js';
import { basicAuthorization, createDispatcher, type RequestTarget, requestTarget } from '../shared/proxy.js';
import {
  type AttemptRecord,
  type DeliveryJob,
  type DeliveryStatus,
  type EndpointRef,
  endpointKey,
  type JobKind,
  type Store,
} from '../store/store.js';
import { type AttemptAnswer, endpointLabel, sendAttempt } from './attempt.js';
import { EVENT_TYPES, kindOfEventType, webhookId } from './events.js';

export const DEFAULT_CONCURRENCY_PER_ENDPOINT = 8;
export const DEFAULT_QUICK_ATTEMPTS = 3;
export const DEFAULT_RETRY = { minTimeoutMs: 1_000, maxTimeoutMs: 3_600_000, factor: 2 } as const;
/** A Retry-After longer than this ends the quick tier: the wait is kept on disk instead. */
const QUICK_RETRY_AFTER_MAX_MS = 5_000;
/** How long a claim holds a delivery; ended at start-up by `releaseLeases`. */
export const LEASE_MS = 15 * 60_000;
/** Records written in one transaction at most. */
const FLUSH_BATCH = 500;
/**
 * The longest an endpoint sleeps without looking at the store (a redelivery in this process wakes
 * it sooner), unless `maxIdleMs` says otherwise.
 */
export const MAX_IDLE_MS = 30_000;
/**
 * Failed attempts logged at warn per endpoint in each window of `FAILURE_WINDOW_MS`; the rest of
 * the window's are logged at debug and counted in one warn line. A receiver down with 100,000
 * deliveries owed sees ~30 attempts a second once they back off to an hour: a line each would be
 * gigabytes of log a day, and would bury every other line.
 */
const FAILURE_LINES_PER_WINDOW = 5;
const FAILURE_WINDOW_MS = 60_000;

export type { AttemptResult, DeliveryOutcome };

/** Waits `ms` on the global timer (fake timers drive it in tests); rejects when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

export interface DeliveryEngineOptions {
  store: Store;
  urls: readonly string[];
  /** The parsed secret; when absent, no `webhook-signature` header is sent. */
  secretKey?: Buffer | undefined;
  /** One attempt's limit (WATCHER_WEBHOOK_TIMEOUT). */
  timeoutMs: number;
  /** A series is retried until it is this old (WATCHER_WEBHOOK_MAX_AGE). */
  maxAgeMs: number;
  userAgent: string;
  log: Logger;
  bus: Bus;
  now?: () => number;
  /** Default: a keep-alive Agent owned (and closed) by the engine. */
  dispatcher?: Dispatcher;
  concurrencyPerEndpoint?: number;
  quickAttempts?: number;
  retry?: { minTimeoutMs?: number; maxTimeoutMs?: number; factor?: number };
  /** How long outcomes wait to be written with others. Default 20 ms. */
  flushDelayMs?: number;
  /**
   * The longest an endpoint sleeps without looking at the store for due deliveries; default
   * `MAX_IDLE_MS` (30 s). With replicas, a redelivery asked of a follower is written to the shared
   * store only: the leader sees it at its next look, so the daemon shortens this there.
   */
  maxIdleMs?: number;
  /** Jitter source in [0, 1); default Math.random. */
  random?: () => number;
  /**
   * Asked before each attempt (with replicas: whether this replica still leads, by the election's
   * own clock; reading it may step the replica down, and so pause this engine, on the spot). When
   * false, the attempt is not made and the engine pauses. Absent: always true.
   */
  mayAct?: () => boolean;
}

/** At most `limit` holders; waiters are served in arrival order and leave when their signal aborts. */
class Slots {
  readonly #limit: number;
  #held = 0;
  readonly #waiting = new Set<() => void>();

  constructor(limit: number) {
    this.#limit = limit;
  }

  acquire(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(signal.reason);
    if (this.#held < this.#limit && this.#waiting.size === 0) {
      this.#held++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const grant = () => {
        detach();
        resolve();
      };
      this.#waiting.add(grant);
      const detach = onAbort(signal, () => {
        this.#waiting.delete(grant);
        reject(signal.reason);
      });
    });
  }

  release(): void {
    const next = this.#waiting.values().next();
    if (next.done) {
      this.#held--;
      return;
    }
    // The slot passes straight to the oldest waiter.
    this.#waiting.delete(next.value);
    next.value();
  }
}

interface Endpoint {
  /** As configured: where requests go. Never logged, since it may carry a token. */
  readonly url: string;
  /** The URL parsed once, as the dispatcher takes it. */
  readonly target: RequestTarget;
  /** HTTP Basic from the URL's credentials, sent with every attempt; never logged. */
  readonly authorization: string | undefined;
  readonly ref: EndpointRef;
  readonly slots: Slots;
  /** Claimed deliveries by webhook-id: waiting for a slot, in flight, or in a quick retry wait. */
  readonly held: Map<string, Held>;
  readonly log: Logger;
  /** Its failed attempts' warn lines, bounded (see `FAILURE_LINES_PER_WINDOW`); holds the last error. */
  readonly failures: LineWindow<string | undefined>;
  timer: NodeJS.Timeout | undefined;
  pumping: boolean;
  /** A pump was asked for while one ran: it runs again. */
  again: boolean;
}

interface Held {
  readonly job: DeliveryJob;
  /** Ends a slot or retry wait (close, cancel). */
  readonly stop: AbortController;
  inFlight: boolean;
  /** An attempt of this claim has been made (or is on the wire). */
  tried?: boolean;
  /**
   * A claim of the same delivery in a newer series (a redelivery reset the row while this run held
   * it): this run stops retrying, writes nothing, and the new series starts when it ends.
   */
  next?: DeliveryJob;
  /**
   * Cancelled (`cancel`): the store has deleted its row, so its outcome is written nowhere; a row
   * inserted since for the same event (the job watched again) may carry the same series start.
   */
  cancelled?: boolean;
}

/** `url` as the WHATWG parser writes it back, or undefined when it is not a URL. */
function normalUrl(url: string): string | undefined {
  try {
    return new URL(url).href;
  } catch {
    return undefined;
  }
}

export class DeliveryEngine {
  readonly #o: DeliveryEngineOptions;
  readonly #endpoints: readonly Endpoint[];
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #retry: { minTimeoutMs: number; maxTimeoutMs: number; factor: number };
  readonly #concurrency: number;
  readonly #quickAttempts: number;
  readonly #dispatcher: Dispatcher;
  readonly #ownedAgent: Dispatcher | undefined;
  /** Aborted at the close deadline, or by `pause()`: ends attempts in flight. */
  #deadline = new AbortController();
  /** Between `pause()` and the end of the next `resume()`: nothing is claimed. */
  #paused = false;
  /** Counts `pause()` calls, so that a `resume()` overtaken by one does not undo it. */
  #pauses = 0;
  readonly #runs = new Set<Promise<void>>();
  #records: AttemptRecord[] = [];
  #flushTimer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> = Promise.resolve();
  readonly #settledWaiters = new Set<() => void>();
  #closing: Promise<void> | undefined;
  #started = false;

  /** Claimed deliveries an endpoint holds at most: a few rounds of attempts, prefetched. */
  get #window(): number {
    return this.#concurrency * 4;
  }

  constructor(options: DeliveryEngineOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#retry = {
      minTimeoutMs: options.retry?.minTimeoutMs ?? DEFAULT_RETRY.minTimeoutMs,
      maxTimeoutMs: options.retry?.maxTimeoutMs ?? DEFAULT_RETRY.maxTimeoutMs,
      factor: options.retry?.factor ?? DEFAULT_RETRY.factor,
    };
    this.#concurrency = options.concurrencyPerEndpoint ?? DEFAULT_CONCURRENCY_PER_ENDPOINT;
    this.#quickAttempts = options.quickAttempts ?? DEFAULT_QUICK_ATTEMPTS;
    this.#ownedAgent = options.dispatcher ? undefined : createDispatcher({ keepAliveTimeout: 10_000 });
    this.#dispatcher = options.dispatcher ?? (this.#ownedAgent as Agent);
    const endpoints: Endpoint[] = [];
    // Labels (in metrics, logs and the API) leave out credentials and query, so two receivers
    // that differ only there would share one: those get their place in the list as well (never
    // anything derived from the URL, which would let its secret be guessed offline).
    const labelUrls = new Map<string, Set<string>>();
    for (const url of options.urls) {
      const label = endpointLabel(url);
      labelUrls.set(label, (labelUrls.get(label) ?? new Set()).add(url));
    }
    for (const [index, url] of options.urls.entries()) {
      const key = endpointKey(url);
      const label = endpointLabel(url);
      const shared = (labelUrls.get(label)?.size ?? 0) > 1;
      const ref = { key, label: shared ? `${label} [#${index + 1}]` : label };
      if (endpoints.some((e) => e.url === url)) {
        options.log.warn(
          { endpoint: ref.label },
          'webhook endpoint listed twice; it receives each event once',
        );
        continue;
      }
      // The same URL spelled two ways (`HTTPS://Hooks.example.org:443/in`, `https://hooks.example.org/in`)
      // stays two endpoints, each with its own stored deliveries: merging them would strand the
      // pending rows of the one dropped. So that receiver gets every event twice, which is said.
      const normal = normalUrl(url);
      const same = normal === undefined ? undefined : endpoints.find((e) => normalUrl(e.url) === normal);
      if (same) {
        options.log.warn(
          { endpoint: ref.label, also_as: same.ref.label },
          'webhook endpoint listed twice, spelled two ways; each spelling receives every event',
        );
      }
      endpoints.push({
        url,
        target: requestTarget(url),
        authorization: basicAuthorization(url),
        ref,
        slots: new Slots(this.#concurrency),
        held: new Map(),
        log: options.log.child({ endpoint: ref.label }),
        failures: new LineWindow(FAILURE_LINES_PER_WINDOW, FAILURE_WINDOW_MS),
        timer: undefined,
        pumping: false,
        again: false,
      });
    }
    this.#endpoints = endpoints;
  }

  /** The configured endpoints as the store knows them (key and label). */
  get endpoints(): EndpointRef[] {
    return this.#endpoints.map((e) => e.ref);
  }

  /**
   * Finds a configured endpoint by its URL as configured, or by its label (the URL without
   * credentials and query, when no other endpoint has it). Either may be typed in another form of
   * the same URL: the scheme and host in capitals, the default port written out, an empty path
   * (`HTTP://Hooks.example:80` is `http://hooks.example/`). A different path (a trailing `/`) is
   * another URL. The URL as configured comes first: two entries of `WATCHER_WEBHOOK_URLS` that
   * differ only in spelling are two endpoints, and another spelling that is both is neither.
   */
  findEndpoint(urlOrLabel: string): EndpointRef | undefined {
    const exact = this.#endpoints.find((e) => e.url === urlOrLabel);
    if (exact) return exact.ref;
    const normal = normalUrl(urlOrLabel);
    const given = [urlOrLabel, normal];
    const byUrl = normal === undefined ? [] : this.#endpoints.filter((e) => normalUrl(e.url) === normal);
    if (byUrl.length > 1) return undefined;
    if (byUrl[0]) return byUrl[0].ref;
    const byLabel = this.#endpoints.filter((e) => given.includes(e.ref.label));
    return byLabel.length === 1 ? byLabel[0]?.ref : undefined;
  }

  /** Deliveries held in memory now (claimed, not yet written back). */
  held(): number {
    let count = 0;
    for (const e of this.#endpoints) count += e.held.size;
    return count;
  }

  /**
   * Makes deliveries leased by an earlier process due again (at `releaseLeasesAt`, default now),
   * warns about deliveries to endpoints no longer configured, and starts sending.
   */
  async start(options: { releaseLeasesAt?: number } = {}): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    const now = this.#now();
    await this.#o.store.releaseLeases(options.releaseLeasesAt ?? now);
    const { pending, orphaned } = await this.#o.store.deliveryCounts(this.#endpoints.map((e) => e.ref.key));
    // What is owed from before, so that the burst of deliveries that follows has a cause in the log.
    if (pending > orphaned) {
      this.#o.log.info({ pending: pending - orphaned }, 'webhook deliveries owed from before: sending them');
    }
    if (orphaned > 0) {
      this.#o.log.warn(
        { count: orphaned },
        'pending webhook deliveries to endpoints no longer in WATCHER_WEBHOOK_URLS; they wait for that endpoint to be configured again, and are given up once WATCHER_WEBHOOK_MAX_AGE old',
      );
    }
    this.poke();
  }

  /**
   * Stops sending at once (see "Pause" in the file header): no claim after this returns, every
   * wait ended, every attempt in flight aborted. Idempotent; does nothing once closing.
   */
  pause(): void {
    if (this.#closing) return;
    // Counted even when already paused: a resume() under way sees it and stays paused.
    this.#pauses++;
    if (this.#paused) return;
    this.#paused = true;
    for (const e of this.#endpoints) {
      if (e.timer) clearTimeout(e.timer);
      e.timer = undefined;
      for (const held of e.held.values()) held.stop.abort(new Error('webhook delivery stopped: paused'));
    }
    this.#deadline.abort(
      new WatcherError('SHUTTING_DOWN', 'webhook attempt aborted: this replica is not the leader'),
    );
    this.#o.log.info({ held: this.held() }, 'webhook deliveries paused');
  }

  /** Whether `pause()` holds: no claims, no attempts. */
  get paused(): boolean {
    return this.#paused;
  }

  /**
   * Sends again after `pause()`, or for the first time (as `start()`). First waits for the paused
   * period's attempts to settle and their outcomes to be written, then ends every lease in the
   * store at `releaseLeasesAt` (default now): leases of an earlier process, or of a former leader,
   * whose deliveries then become due at that time. Resolves once claiming has resumed (or a
   * `pause()` or `close()` came meanwhile, which wins).
   */
  async resume(options: { releaseLeasesAt?: number } = {}): Promise<void> {
    if (this.#closing) return;
    if (!this.#started) {
      this.#paused = false;
      await this.start(options);
      return;
    }
    if (!this.#paused) return;
    const pauses = this.#pauses;
    await Promise.allSettled([...this.#runs]);
    await this.#flushNow();
    await this.#o.store.releaseLeases(options.releaseLeasesAt ?? this.#now());
    if (this.#closing || pauses !== this.#pauses) return;
    this.#deadline = new AbortController();
    this.#paused = false;
    this.#o.log.info('webhook deliveries resumed');
    // As at start: what another leader's term left owed. Not waited for; a failed count is no line.
    this.#pendingHere().then(
      (owed) => {
        if (owed > 0 && !this.#paused)
          this.#o.log.info({ pending: owed }, 'webhook deliveries owed from before: sending them');
      },
      () => undefined,
    );
    this.poke();
  }

  /** Looks for due deliveries now: new events were committed, or some were redelivered. */
  poke(): void {
    if (!this.#started || this.#closing || this.#paused) return;
    for (const e of this.#endpoints) void this.#pump(e);
  }

  /**
   * Ends the waits of a job's held deliveries (the job, of this kind, was un-watched and the store
   * has dropped its pending rows). Attempts in flight finish but are not retried. The events of a
   * removed job of the other kind that had the same id are not its own: their deliveries go on.
   */
  cancel(exportId: string, kind: JobKind = 'export'): void {
    // Its webhook-ids (`webhookId`), exactly: a prefix would not do, as the export `import`'s
    // `evt_import_` starts every webhook-id of the import `import` (`evt_import_import_<suffix>`).
    const own = new Set(
      EVENT_TYPES.filter((t) => kindOfEventType(t) === kind).map((t) => webhookId(exportId, t)),
    );
    for (const e of this.#endpoints) {
      for (const held of e.held.values()) {
        if (held.job.exportId !== exportId || !own.has(held.job.eventId)) continue;
        held.next = undefined;
        held.cancelled = true;
        held.stop.abort(new Error('webhook delivery cancelled'));
      }
    }
  }

  /**
   * Resolves when nothing is held in memory and the store has no pending delivery to a configured
   * endpoint. `watch` waits on this before it exits.
   */
  async settled(): Promise<void> {
    for (;;) {
      await this.#flushNow();
      if (this.held() === 0 && (await this.#pendingHere()) === 0) return;
      await new Promise<void>((resolve) => this.#settledWaiters.add(resolve));
    }
  }

  /** Stops claiming; lets attempts in flight finish until `deadlineMs`, then aborts them. Idempotent. */
  close(deadlineMs: number): Promise<void> {
    this.#closing ??= this.#close(deadlineMs);
    return this.#closing;
  }

  async #close(deadlineMs: number): Promise<void> {
    for (const e of this.#endpoints) {
      if (e.timer) clearTimeout(e.timer);
      e.timer = undefined;
      for (const held of e.held.values()) {
        // An event never tried yet (an outcome seen by the last checks, or one waiting for a
        // slot) still gets its first attempt within the deadline; a retry does not.
        if (!held.inFlight && (held.tried || held.job.attempts > 0)) {
          held.stop.abort(new Error('webhook delivery stopped: closing'));
        }
      }
    }
    const inTime = await settlesWithin(Promise.allSettled(this.#runs), deadlineMs);
    if (!inTime) {
      for (const e of this.#endpoints) {
        for (const held of e.held.values()) held.stop.abort(new Error('webhook delivery stopped: closing'));
      }
      this.#deadline.abort(
        new WatcherError('SHUTTING_DOWN', `webhook attempt aborted at the ${deadlineMs} ms close deadline`),
      );
      await Promise.allSettled(this.#runs);
    }
    await this.#flushNow();
    for (const e of this.#endpoints) this.#summarizeFailures(e);
    // Every attempt has ended by now (its answer read, or cut off), so the agent holds only idle
    // connections and connects an attempt gave up on (a TLS handshake that never ends), which a
    // graceful close() would wait for until undici's own connect timeout, past the deadline.
    if (this.#ownedAgent) await this.#ownedAgent.destroy();
  }

  /** Pending deliveries to the configured endpoints: those to others wait for them, not for this. */
  async #pendingHere(): Promise<number> {
    const counts = await this.#o.store.deliveryCounts(this.#endpoints.map((e) => e.ref.key));
    return counts.pending - counts.orphaned;
  }

  /** Claims what is due for one endpoint, up to its window, then sleeps until the next due time. */
  async #pump(e: Endpoint): Promise<void> {
    if (e.pumping) {
      e.again = true;
      return;
    }
    e.pumping = true;
    try {
      do {
        e.again = false;
        await this.#claim(e);
        // A poke that comes during the due-time lookup is served by another turn, not the idle timer.
        if (!e.again) await this.#sleepUntilDue(e);
      } while (e.again && !this.#closing && !this.#paused);
    } catch (error) {
      e.log.error({ err: error }, 'could not read due webhook deliveries; trying again shortly');
      this.#wakeIn(e, 1000);
    } finally {
      e.pumping = false;
    }
  }

  async #claim(e: Endpoint): Promise<void> {
    const window = this.#window;
    while (!this.#closing && !this.#paused && e.held.size < window) {
      // A replica that may no longer act claims nothing: its leases would keep the deliveries from
      // the new leader, which has already ended the leases it found, for LEASE_MS.
      if (this.#steppedDown()) return;
      const room = window - e.held.size;
      const now = this.#now();
      const jobs = await this.#o.store.claimDue(e.ref.key, now, room, now + LEASE_MS);
      // Claimed just as the engine paused or closed: not sent. Their leases end at the next
      // start or resume (here or in the next leader).
      if (this.#closing || this.#paused) return;
      for (const job of jobs) this.#hold(e, job);
      if (jobs.length < room) return;
    }
  }

  /**
   * Whether this replica may no longer act (`mayAct`); if so the engine pauses, unless stepping
   * down has paused it already.
   */
  #steppedDown(): boolean {
    if (this.#o.mayAct === undefined || this.#o.mayAct()) return false;
    this.pause();
    return true;
  }

  async #sleepUntilDue(e: Endpoint): Promise<void> {
    if (this.#closing || this.#paused || e.held.size >= this.#window) return;
    const next = await this.#o.store.nextDueAt(e.ref.key);
    const maxIdle = this.#o.maxIdleMs ?? MAX_IDLE_MS;
    const wait = next === null ? maxIdle : Math.min(maxIdle, Math.max(0, next - this.#now()));
    this.#wakeIn(e, wait);
  }

  #wakeIn(e: Endpoint, ms: number): void {
    if (this.#closing || this.#paused) return;
    if (e.timer) clearTimeout(e.timer);
    e.timer = setTimeout(() => {
      e.timer = undefined;
      void this.#pump(e);
    }, ms);
    e.timer.unref?.();
  }

  #hold(e: Endpoint, job: DeliveryJob): void {
    // A claim never returns what this process holds, unless a redelivery reset it meanwhile: then
    // the new series waits for the held run, which stops at its attempt in flight, if any.
    const current = e.held.get(job.eventId);
    if (current) {
      // A cancelled run's row is gone: a claim of the same event is a new row, whatever its series.
      if (current.cancelled || current.job.seriesStartedAt !== job.seriesStartedAt) {
        current.next = job;
        current.stop.abort(new Error('webhook delivery superseded by a redelivery'));
      }
      return;
    }
    const held: Held = { job, stop: new AbortController(), inFlight: false };
    e.held.set(job.eventId, held);
    this.#o.bus.emit('delivery.depth', { endpoint: e.ref.label, depth: e.held.size });
    const run = this.#run(e, held).finally(() => {
      this.#runs.delete(run);
      e.held.delete(job.eventId);
      this.#o.bus.emit('delivery.depth', { endpoint: e.ref.label, depth: e.held.size });
      // Closing or paused: the new series keeps its claim's lease, which the next start ends.
      if (held.next && !this.#closing && !this.#paused) this.#hold(e, held.next);
      // Claims come in batches: a claim is a write transaction, too dear for each delivery.
      if (!this.#closing && !this.#paused && e.held.size <= this.#window / 2) void this.#pump(e);
    });
    this.#runs.add(run);
  }

  /** One claim's life: the quick tier of attempts, then the outcome written back. Never rejects. */
  async #run(e: Endpoint, held: Held): Promise<void> {
    const { job } = held;
    let attempts = job.attempts;
    let last: AttemptAnswer | undefined;
    /** No attempt before this (a `Retry-After` short enough for the quick tier). */
    let notBefore = 0;
    const quickMax = this.#retry.minTimeoutMs * this.#retry.factor ** Math.max(0, this.#quickAttempts - 2);
    try {
      await pRetry(
        async () => {
          const wait = notBefore - this.#now();
          if (wait > 0) await sleep(wait, held.stop.signal);
          // Counted once made: a wait for a slot ended by close or cancel is no attempt.
          const answer = await this.#attempt(e, held, attempts + 1);
          attempts++;
          last = answer;
          notBefore = answer.retryAfterMs ? this.#now() + answer.retryAfterMs : 0;
          if (answer.outcome === 'failure' && answer.error) throw answer.error;
        },
        {
          // The quick tier opens a series; a later claim makes one attempt, so the waits keep
          // doubling (4 s, 8 s, 16 s, ...) instead of coming in bursts.
          retries: job.attempts === 0 ? this.#quickAttempts - 1 : 0,
          minTimeout: this.#retry.minTimeoutMs,
          maxTimeout: Math.min(quickMax, this.#retry.maxTimeoutMs),
          factor: this.#retry.factor,
          randomize: true,
          // The quick waits are cut so that the last attempt lands at the max age, not after it.
          maxRetryTime: Math.max(0, this.#ageLeft(job)),
          signal: held.stop.signal,
          shouldRetry: ({ error }) =>
            !this.#closing &&
            !this.#paused &&
            isRetryable(error) &&
            this.#ageLeft(job) > 0 &&
            (last?.retryAfterMs ?? 0) <= Math.min(QUICK_RETRY_AFTER_MAX_MS, this.#ageLeft(job)),
        },
      );
    } catch {
      // The outcome is read from `last` below.
    }
    // Superseded by a redelivery: this series' outcome is not written (the store would refuse it).
    if (held.next) return;
    if (held.cancelled) {
      // Nothing to write: `settled()` waiters, woken by writes, look again.
      this.#wakeSettledWaiters();
      return;
    }
    if (attempts === job.attempts && held.stop.signal.aborted && !this.#closing) {
      // Cancelled before any attempt: the store has already dropped the row. Or paused before
      // any attempt: the row keeps its lease, which the next leader ends.
      return;
    }
    this.#settle(e, job, attempts, last);
  }

  /** One HTTP attempt, holding a slot of the endpoint only while it is in flight. */
  async #attempt(e: Endpoint, held: Held, attempt: number): Promise<AttemptAnswer> {
    await e.slots.acquire(held.stop.signal);
    if (this.#steppedDown()) {
      e.slots.release();
      // Not sent, and not counted; the delivery keeps its lease for the next leader.
      throw new WatcherError('SHUTTING_DOWN', 'webhook attempt not made: this replica is not the leader');
    }
    held.inFlight = true;
    held.tried = true;
    this.#o.bus.emit('delivery.attempt_started', { endpoint: e.ref.label });
    let answer: AttemptAnswer;
    try {
      answer = await sendAttempt({
        target: e.target,
        authorization: e.authorization,
        webhookId: held.job.eventId,
        body: held.job.body,
        secretKey: this.#o.secretKey,
        userAgent: this.#o.userAgent,
        timeoutMs: this.#o.timeoutMs,
        dispatcher: this.#dispatcher,
        signal: this.#deadline.signal,
        nowMs: this.#now(),
      });
    } finally {
      held.inFlight = false;
      e.slots.release();
    }
    this.#o.bus.emit('delivery.attempt', {
      endpoint: e.ref.label,
      webhookId: held.job.eventId,
      attempt,
      outcome: answer.outcome,
      status: answer.status,
      code: answer.error?.code,
      durationMs: answer.durationMs,
    });
    const fields = {
      webhook_id: held.job.eventId,
      export_id: held.job.exportId,
      attempt,
      status: answer.status,
      duration_ms: answer.durationMs,
    };
    if (answer.outcome === 'success') {
      e.log.debug(fields, 'webhook delivered');
      // The receiver answers again: what was held back of its failures is said once the window
      // is over (a receiver failing every other attempt would otherwise get a line each time).
      const held = e.failures.flushEnded(this.#now());
      if (held) this.#logHeldFailures(e, held);
    } else if (answer.outcome === 'gone')
      e.log.warn(fields, 'webhook endpoint answered 410 Gone; this event is no longer sent to it');
    else if (answer.error?.code === 'SHUTTING_DOWN')
      e.log.warn(
        fields,
        this.#paused ? 'webhook attempt aborted: paused' : 'webhook attempt aborted: close deadline passed',
      );
    else this.#logFailure(e, fields, answer);
    return answer;
  }

  /**
   * A failed attempt's line: at warn for the first `FAILURE_LINES_PER_WINDOW` of the endpoint's
   * window, at debug after that, counted for the summary line that ends the window.
   */
  #logFailure(e: Endpoint, fields: Record<string, unknown>, answer: AttemptAnswer): void {
    const line = {
      ...fields,
      code: answer.error?.code,
      error: answer.error?.message,
      retry_after_ms: answer.retryAfterMs,
    };
    const now = this.#now();
    const { warn, ended } = e.failures.take(now);
    if (ended) this.#logHeldFailures(e, ended);
    if (warn) {
      e.log.warn(line, 'webhook attempt failed');
      return;
    }
    e.failures.hold(now, 1, answer.error ? `${answer.error.code}: ${answer.error.message}` : undefined);
    e.log.debug(line, 'webhook attempt failed');
  }

  /** One warn line for the failed attempts of the endpoint logged at debug only, if any. */
  #summarizeFailures(e: Endpoint): void {
    const held = e.failures.flush();
    if (held) this.#logHeldFailures(e, held);
  }

  #logHeldFailures(e: Endpoint, held: HeldLines<string | undefined>): void {
    e.log.warn(
      {
        count: held.count,
        from: new Date(held.from).toISOString(),
        to: new Date(held.to).toISOString(),
        last_error: held.last,
      },
      'webhook attempts failed: more than are logged at warn in a minute (each is at debug)',
    );
  }

  /** Decides what the store keeps after a claim: final, or pending with its next attempt time. */
  #settle(e: Endpoint, job: DeliveryJob, attempts: number, last: AttemptAnswer | undefined): void {
    const now = this.#now();
    const base = {
      eventId: job.eventId,
      endpointKey: job.endpointKey,
      seriesStartedAt: job.seriesStartedAt,
      attempts,
      lastStatus: last ? last.status : null,
      lastError: last?.error ? `${last.error.code}: ${last.error.message}` : null,
    };
    const final = (status: DeliveryStatus) =>
      this.#record({ ...base, status, nextAttemptAt: null, finishedAt: now });
    const pendingAt = (at: number) =>
      this.#record({ ...base, status: 'pending', nextAttemptAt: at, finishedAt: null });
    if (last?.outcome === 'success') {
      final('delivered');
      this.#finished(e, 'delivered');
      return;
    }
    if (last?.outcome === 'gone') {
      final('gone');
      this.#finished(e, 'gone');
      return;
    }
    // Never attempted, or an attempt cut short by close or pause: due again at once (at the next
    // start, or on the next leader).
    if (!last || last.error?.code === 'SHUTTING_DOWN') {
      pendingAt(now);
      return;
    }
    // An answer, also one that came in while closing or pausing: its Retry-After and the max age
    // hold as always (a receiver that asked for an hour is not tried again at the next start).
    const ageLeft = this.#ageLeft(job);
    const retryAfter = last.retryAfterMs ?? 0;
    if (ageLeft <= 0 || retryAfter >= ageLeft) {
      final('failed');
      this.#givenUp(e, job, attempts, last, retryAfter >= ageLeft && ageLeft > 0);
      return;
    }
    // Stopping, the backoff is not waited: the next start (or leader) tries as soon as allowed.
    const delay = this.#closing || this.#paused ? retryAfter : Math.max(this.#backoff(attempts), retryAfter);
    pendingAt(now + Math.min(delay, ageLeft));
  }

  /** The wait after `attempts` attempts: min × factor^(attempts − 1), capped, times [1, 2). */
  #backoff(attempts: number): number {
    const { minTimeoutMs, maxTimeoutMs, factor } = this.#retry;
    const base = Math.min(maxTimeoutMs, minTimeoutMs * factor ** Math.max(0, attempts - 1));
    return Math.round(base * (1 + this.#random()));
  }

  #ageLeft(job: DeliveryJob): number {
    return this.#o.maxAgeMs - (this.#now() - job.seriesStartedAt);
  }

  #givenUp(
    e: Endpoint,
    job: DeliveryJob,
    attempts: number,
    last: AttemptAnswer,
    byRetryAfter: boolean,
  ): void {
    let event: unknown = job.body;
    try {
      event = JSON.parse(job.body);
    } catch {
      // Logged as the stored text.
    }
    e.log.error(
      {
        webhook_id: job.eventId,
        export_id: job.exportId,
        event,
        attempts,
        age_ms: this.#now() - job.seriesStartedAt,
        last_status: last.status,
        last_error: last.error ? { code: last.error.code, message: last.error.message } : undefined,
        retry_after_ms: byRetryAfter ? last.retryAfterMs : undefined,
      },
      byRetryAfter
        ? 'webhook delivery given up: Retry-After reaches past the max age'
        : 'webhook delivery given up',
    );
    this.#finished(e, 'given_up');
  }

  #finished(e: Endpoint, outcome: DeliveryOutcome): void {
    this.#o.bus.emit('delivery.finished', { endpoint: e.ref.label, outcome });
  }

  #record(record: AttemptRecord): void {
    this.#records.push(record);
    if (this.#records.length >= FLUSH_BATCH) {
      void this.#flushNow();
    } else if (!this.#flushTimer) {
      this.#flushTimer = setTimeout(() => void this.#flushNow(), this.#o.flushDelayMs ?? 20);
    }
  }

  /** Writes the outcomes gathered so far, after any write already under way. */
  #flushNow(): Promise<void> {
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    const batch = this.#records;
    this.#records = [];
    this.#flushing = this.#flushing.then(async () => {
      if (batch.length > 0) {
        try {
          await this.#o.store.recordAttempts(batch);
          // The endpoints looked at their due times while these rows were still leased: look
          // again, or a retry due in seconds would wait for the idle timer.
          const keys = new Set(batch.map((r) => r.endpointKey));
          for (const e of this.#endpoints) if (keys.has(e.ref.key)) this.#wakeIn(e, 0);
        } catch (error) {
          // The deliveries stay pending under their lease and are sent again after it (or after a
          // restart) with the same webhook-id.
          this.#o.log.error({ err: error, count: batch.length }, 'could not store webhook outcomes');
        }
      }
      this.#wakeSettledWaiters();
    });
    return this.#flushing;
  }

  #wakeSettledWaiters(): void {
    for (const wake of this.#settledWaiters) wake();
    this.#settledWaiters.clear();
  }
}
