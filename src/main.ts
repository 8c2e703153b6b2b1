/**
 * The composition root: builds every piece from the parsed configuration and wires them
 * together. Reading this file top to bottom shows the whole flow:
 *
 *   control API / --id / --ids-file ──► tracker.add ──► scheduler.poke
 *   scheduler ──► client.checkStatuses (bulk, ≤100 ids) ──► limiter (budget, platform quota)
 *   scheduler ◄── observations ──► tracker.apply ──► transitions ──► log line + webhooks.enqueue
 *
 * Nothing here reads `process.env`, installs signal handlers or exits: the CLI does that.
 */
import { createRequire } from 'node:module';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import type { Config } from './config/config.js';
import { type ExportEvent, eventForTransition } from './delivery/events.js';
import { WebhookDispatcher, type WebhookOptions } from './delivery/webhooks.js';
import { ControlApi, type WatchRegistry } from './http/control-api.js';
import { Metrics } from './http/metrics.js';
import { PlatformClient, type RequestOutcome, type RetryPolicy } from './platform/platform-client.js';
import { RateLimiter } from './platform/rate-limiter.js';
import { Scheduler, type SchedulerOptions } from './polling/scheduler.js';
import { Tracker, type Transition } from './polling/tracker.js';
import { settlesWithin } from './shared/deadline.js';
import { PlatformError } from './shared/errors.js';

const require = createRequire(import.meta.url);
export const VERSION: string = (require('../package.json') as { version: string }).version;
export const USER_AGENT = `sbg-export-watcher/${VERSION}`;

/** Whether the platform accepted the credentials on the last call (`/readyz`). */
export interface Readiness {
  ok: boolean;
  reason: string;
}

export interface DaemonOptions {
  log: Logger;
  now?: () => number;
  /** Serve the control API (the `run` command); `watch` does without. */
  api?: boolean;
  /** Transport overrides, for tests. */
  platformDispatcher?: Dispatcher;
  platformRetry?: Partial<RetryPolicy>;
  webhookRetry?: WebhookOptions['retry'];
  scheduler?: Partial<Omit<SchedulerOptions, 'pollIntervalMs' | 'batchSize'>>;
  /** Called for every transition, after it is logged and its event queued (watch). */
  onTransition?: (transition: Transition) => void;
  /** Called with the outcome of every platform request (watch gives up on a refused token). */
  onPlatformOutcome?: (outcome: RequestOutcome) => void;
}

export interface StopReport {
  undelivered: Array<{ endpoint: string; event: ExportEvent }>;
}

export class Daemon {
  readonly config: Config;
  readonly tracker: Tracker;
  readonly limiter: RateLimiter;
  readonly client: PlatformClient;
  readonly scheduler: Scheduler;
  readonly webhooks: WebhookDispatcher;
  readonly api: ControlApi | undefined;
  readonly metrics: Metrics;
  readonly registry: WatchRegistry;
  readonly #log: Logger;
  readonly #now: () => number;
  #readiness: Readiness = { ok: false, reason: 'no answer from the platform yet' };
  #startPromise: Promise<string | undefined> | undefined;
  #stopPromise: Promise<StopReport> | undefined;

  constructor(config: Config, options: DaemonOptions) {
    if (!config.token) throw new TypeError('Daemon needs a platform token');
    this.config = config;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
    const now = this.#now;

    this.tracker = new Tracker({ retainMs: config.retainMs });
    // Its sources are read at scrape time, so they may name pieces built below.
    this.metrics = new Metrics({
      exportsByState: () => this.tracker.countByState(),
      rateLimit: () => this.limiter.snapshot(),
      deliveriesWaiting: () => this.webhooks.pending(),
    });
    this.limiter = new RateLimiter({
      budget: config.rateBudget,
      windowMs: config.rateWindowMs,
      now,
      log: options.log.child({ component: 'rate-limiter' }),
    });
    this.client = new PlatformClient({
      endpoint: config.endpoint,
      token: config.token,
      gate: this.limiter,
      userAgent: USER_AGENT,
      log: options.log.child({ component: 'platform' }),
      ...(options.platformDispatcher ? { dispatcher: options.platformDispatcher } : {}),
      ...(options.platformRetry ? { retry: options.platformRetry } : {}),
      observer: {
        onRequest: (route, outcome, durationMs) => {
          // Readiness follows every attempt, so a maintenance being waited out shows at once.
          this.#updateReadiness(outcome);
          options.onPlatformOutcome?.(outcome);
          this.metrics.platformObserver.onRequest?.(route, outcome, durationMs);
        },
        onBulkCall: (ids) => this.metrics.platformObserver.onBulkCall?.(ids),
        onBulkMismatch: (asked, items) => this.metrics.platformObserver.onBulkMismatch?.(asked, items),
      },
    });
    this.webhooks = new WebhookDispatcher({
      urls: config.webhook.urls,
      ...(config.webhook.secretKey ? { secretKey: config.webhook.secretKey } : {}),
      events: config.webhook.events,
      timeoutMs: config.webhook.timeoutMs,
      maxAgeMs: config.webhook.maxAgeMs,
      userAgent: USER_AGENT,
      log: options.log.child({ component: 'webhooks' }),
      now,
      observer: this.metrics.webhookObserver,
      ...(options.webhookRetry ? { retry: options.webhookRetry } : {}),
    });
    const onTransition = options.onTransition;
    this.scheduler = new Scheduler(
      {
        checkStatuses: (ids) => this.client.checkStatuses(ids),
        tracker: this.tracker,
        notify: (transition) => {
          this.metrics.onTransition(transition.from, transition.to);
          const event = eventForTransition(transition);
          if (event) this.webhooks.enqueue(event);
          onTransition?.(transition);
        },
        now,
        log: options.log.child({ component: 'scheduler' }),
        onCallResult: (result) => {
          if (result.ok) this.metrics.onCheckSuccess(now());
        },
      },
      { ...options.scheduler, pollIntervalMs: config.pollIntervalMs, batchSize: config.batchSize },
    );
    this.registry = {
      watch: (ids, metadata) => {
        const result = this.tracker.add(ids, metadata, now());
        if (result.accepted.length > 0) {
          this.#log.info(
            { accepted: result.accepted.length, already_watched: result.alreadyWatched.length },
            'exports added',
          );
          this.scheduler.poke();
        }
        return result;
      },
      unwatch: (id) => {
        const removed = this.tracker.remove(id);
        if (removed) {
          const cancelled = this.webhooks.cancel(id);
          this.#log.info({ export_id: id, deliveries_cancelled: cancelled }, 'export no longer watched');
        }
        return removed;
      },
      get: (id) => this.tracker.get(id),
      list: (state) => this.tracker.list(state),
      page: (query) => this.tracker.page(query),
    };
    this.api = options.api
      ? new ControlApi({
          host: config.http.host,
          port: config.http.port,
          registry: this.registry,
          probes: {
            health: () => this.#health(),
            ready: () => this.readiness,
            metrics: () => this.metrics.render(),
          },
          log: options.log.child({ component: 'control-api' }),
          apiToken: config.apiToken,
        })
      : undefined;
  }

  /**
   * Ready when the platform last accepted the credentials and is not holding every call back: a
   * 429 (or nothing left of the quota) makes it "rate limited until T" until that time.
   */
  get readiness(): Readiness {
    const pausedUntil = this.limiter.pausedUntil();
    if (this.#readiness.ok && pausedUntil !== undefined && pausedUntil > this.#now()) {
      return {
        ok: false,
        reason: `rate limited by the platform until ${new Date(pausedUntil).toISOString()}`,
      };
    }
    return this.#readiness;
  }

  /**
   * Listens (when the API is on), reads the quota with `GET /rate_limit` (free), then starts
   * checking. Resolves the control API's URL. Idempotent.
   */
  start(): Promise<string | undefined> {
    this.#startPromise ??= (async () => {
      const url = await this.api?.listen();
      const probe = this.client
        .rateLimit()
        .then((status) => {
          this.limiter.observe(status);
          this.#log.info(
            {
              limit: status.limit,
              remaining: status.remaining,
              reset_at: isoTime(status.resetAt),
              budget: this.config.rateBudget,
            },
            'platform rate limit read',
          );
        })
        .catch((error: unknown) => {
          if (!isShutdown(error)) {
            this.#log.warn(
              { err_message: (error as Error).message },
              'could not read the platform rate limit',
            );
          }
        });
      // Start checking once the quota is known, or after a short wait if the platform is slow.
      await settlesWithin(probe, 5000);
      this.scheduler.start();
      return url;
    })();
    return this.#startPromise;
  }

  /**
   * Stops checking, lets checks in flight finish, then gives deliveries in flight until the
   * deadline. Logs what is left undelivered. Idempotent.
   */
  stop(deadlineMs = this.config.shutdownTimeoutMs): Promise<StopReport> {
    this.#stopPromise ??= (async () => {
      const started = performance.now();
      const left = () => Math.max(0, deadlineMs - (performance.now() - started));
      this.#log.info({ deadline_ms: deadlineMs }, 'stopping');
      // No new requests to the API, no new checks; calls not yet started are dropped and retry
      // waits cancelled; a check already on the wire may finish, within the deadline.
      const apiClosed = this.api?.close();
      const checksDone = Promise.all([this.scheduler.stop(), this.limiter.stop(), this.client.close()]);
      if (!(await settlesWithin(checksDone, left()))) {
        this.#log.warn('checks still in flight at the shutdown deadline; abandoned');
        await this.client.destroy();
      }
      const { undelivered } = await this.webhooks.close(left());
      if (apiClosed && !(await settlesWithin(apiClosed, left()))) {
        // A client that keeps a request open must not hold the process past its deadline.
        this.api?.closeAllConnections();
        await apiClosed;
      }
      this.#logWhatIsLeft(undelivered);
      this.#log.info({ watched: this.tracker.activeCount }, 'stopped');
      return { undelivered };
    })();
    return this.#stopPromise;
  }

  /**
   * At shutdown, what would otherwise be lost with the process: the ids still watched (one line,
   * up to a bound, with the count) and every undelivered event with its body (a line each, up to a
   * bound, then a count), so an operator can re-submit them from the logs.
   */
  #logWhatIsLeft(undelivered: StopReport['undelivered']): void {
    const watched = [...this.tracker.activeIds()];
    if (watched.length > 0) {
      this.#log.info(
        {
          count: watched.length,
          ids: watched.slice(0, MAX_IDS_LOGGED_AT_STOP),
          ids_not_listed: Math.max(0, watched.length - MAX_IDS_LOGGED_AT_STOP),
        },
        'still watched at shutdown',
      );
    }
    if (undelivered.length === 0) return;
    // One line per event, naming every endpoint that still lacks it.
    const byEvent = new Map<string, { event: ExportEvent; endpoints: string[] }>();
    for (const u of undelivered) {
      const entry = byEvent.get(u.event.id) ?? { event: u.event, endpoints: [] };
      entry.endpoints.push(u.endpoint);
      byEvent.set(u.event.id, entry);
    }
    let logged = 0;
    for (const { event, endpoints } of byEvent.values()) {
      if (logged++ >= MAX_EVENTS_LOGGED_AT_STOP) break;
      this.#log.error(
        { webhook_id: event.id, endpoints, event: event.body },
        'webhook event undelivered at shutdown',
      );
    }
    this.#log.error(
      {
        undelivered: undelivered.length,
        events: byEvent.size,
        webhook_ids: [...byEvent.keys()].slice(0, MAX_EVENTS_LOGGED_AT_STOP),
        events_not_listed: Math.max(0, byEvent.size - MAX_EVENTS_LOGGED_AT_STOP),
      },
      'stopped with deliveries not done',
    );
  }

  #health(): { ok: boolean; reason?: string } {
    const mode = this.scheduler.mode;
    if (mode === 'stopping' || mode === 'stopped') return { ok: false, reason: `scheduler is ${mode}` };
    const idleFor = this.#now() - this.scheduler.lastTurnAt;
    if (mode !== 'idle' && idleFor > 60_000)
      return { ok: false, reason: `the check loop has not turned for ${idleFor} ms` };
    return { ok: true };
  }

  /** Ready when the platform last accepted the credentials; a 429 says nothing against them. */
  #updateReadiness(outcome: RequestOutcome): void {
    const reasons: Record<RequestOutcome, string | null> = {
      ok: null,
      rate_limited: null,
      not_found: null,
      unauthorized: 'the platform refused the token',
      maintenance: 'the platform is in maintenance',
      server_error: 'the platform answered with a server error',
      rejected: 'the platform rejected the last request (is SB_API_ENDPOINT right?)',
      bad_response: 'the platform sent a malformed answer',
      network: 'the platform could not be reached',
      timeout: 'the platform did not answer in time',
    };
    const reason = reasons[outcome];
    if (reason === null) {
      if (outcome === 'ok' || outcome === 'not_found')
        this.#readiness = { ok: true, reason: 'the platform accepted the credentials' };
      return;
    }
    this.#readiness = { ok: false, reason };
  }
}

/** Bounds on what shutdown writes to the logs, so a huge backlog cannot flood them. */
export const MAX_IDS_LOGGED_AT_STOP = 10_000;
export const MAX_EVENTS_LOGGED_AT_STOP = 10_000;

/** An epoch-ms time as ISO, or undefined when it is not one a Date can hold. */
function isoTime(ms: number | undefined): string | undefined {
  if (ms === undefined || !Number.isFinite(ms) || Math.abs(ms) > 8.64e15) return undefined;
  return new Date(ms).toISOString();
}

function isShutdown(error: unknown): boolean {
  return error instanceof PlatformError && error.code === 'SHUTTING_DOWN';
}
