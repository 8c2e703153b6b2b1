/**
 * The composition root: builds every piece from the parsed configuration and wires them
 * together. Reading this file top to bottom shows the whole flow:
 *
 *   control API / --id / --ids-file ──► store.addExports (group commit) ──► tracker.track ──► poke
 *   scheduler ──► client.checkStatuses (bulk, ≤100 ids) ──► limiter (budget, platform quota)
 *   scheduler ◄── observations ──► tracker ──► store.commitChanges (state, events, deliveries:
 *   one transaction, the outbox) ──► delivery engine ──► receivers ──► store.recordAttempts
 *
 * Every piece reports to the others through one typed events map (`Bus`): metrics, readiness and
 * `watch`'s progress subscribe to it. Nothing here reads `process.env`, installs signal handlers or
 * exits: the CLI does that.
 *
 * Exports and imports go through the same pieces, each job with its kind; a bulk call carries one
 * kind, and both share the one limiter. With `WATCHER_DISCOVER`, discovery lists the user's
 * unfinished jobs every interval through a tenth of the budget and adds what is new.
 */
import { createRequire } from 'node:module';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import type { Config } from './config/config.js';
import { DeliveryEngine, type DeliveryEngineOptions } from './delivery/engine.js';
import { eventForTransition } from './delivery/events.js';
import { ControlApi, type ExportView, type WatchRegistry } from './http/control-api.js';
import { Metrics } from './http/metrics.js';
import { PlatformClient, type RequestOutcome, type RetryPolicy } from './platform/platform-client.js';
import { RateLimiter } from './platform/rate-limiter.js';
import { DISCOVERED_METADATA, Discovery, listUnfinished } from './polling/discovery.js';
import { Scheduler, type SchedulerOptions } from './polling/scheduler.js';
import { type JobKind, Tracker } from './polling/tracker.js';
import { Bus } from './shared/bus.js';
import { settlesWithin } from './shared/deadline.js';
import { PlatformError } from './shared/errors.js';
import { AddBatcher } from './store/group-commit.js';
import { openDataDir, openSqliteStore } from './store/sqlite.js';
import type { EventBuilder, Store, StoredExport } from './store/store.js';

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
  /**
   * Where state is kept: the default is `watcher.db` in `WATCHER_DATA_DIR`; `memory` keeps it in
   * the process only (`watch`, which owns nothing beyond its own run).
   */
  storage?: 'data-dir' | 'memory';
  /** The events map; the daemon makes its own when absent. `watch` passes one to follow along. */
  bus?: Bus;
  /** Transport overrides, for tests. */
  platformDispatcher?: Dispatcher;
  platformRetry?: Partial<RetryPolicy>;
  webhookRetry?: DeliveryEngineOptions['retry'];
  webhookQuickAttempts?: number;
  scheduler?: Partial<Omit<SchedulerOptions, 'pollIntervalMs' | 'batchSize'>>;
  /** Discovery's interval, overriding `WATCHER_DISCOVER_INTERVAL` (whose minimum is 10 s): for tests. */
  discoverIntervalMs?: number;
}

/** Discovery may spend `floor(WATCHER_RATE_BUDGET / DISCOVERY_SHARE_DIVISOR)` requests per rate window. */
export const DISCOVERY_SHARE_DIVISOR = 10;

export interface StopReport {
  /** Deliveries still pending in the store when the daemon stopped. */
  pendingDeliveries: number;
}

/** Finished exports and events past retention are pruned this often, in small batches. */
const PRUNE_EVERY_MS = 60_000;
const PRUNE_BATCH = 500;

export class Daemon {
  readonly config: Config;
  readonly bus: Bus;
  readonly store: Store;
  readonly tracker: Tracker;
  readonly limiter: RateLimiter;
  readonly client: PlatformClient;
  readonly scheduler: Scheduler;
  readonly deliveries: DeliveryEngine;
  readonly api: ControlApi | undefined;
  readonly metrics: Metrics;
  readonly registry: WatchRegistry;
  /** Present when `WATCHER_DISCOVER` names a kind. */
  readonly discovery: Discovery | undefined;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #durable: boolean;
  readonly #adds: AddBatcher;
  #readiness: Readiness = { ok: false, reason: 'no answer from the platform yet' };
  #pruneTimer: NodeJS.Timeout | undefined;
  #startPromise: Promise<string | undefined> | undefined;
  #stopPromise: Promise<StopReport> | undefined;

  /**
   * Opens the store (a data directory that cannot be used, or a database that cannot be read,
   * rejects with a `StoreError` naming it) and builds the daemon on it.
   */
  static async open(config: Config, options: DaemonOptions): Promise<Daemon> {
    const memory = options.storage === 'memory';
    const path = memory ? ':memory:' : openDataDir(config.dataDir);
    const store = await openSqliteStore({ path, log: options.log.child({ component: 'store' }) });
    return new Daemon(config, options, store, !memory);
  }

  private constructor(config: Config, options: DaemonOptions, store: Store, durable: boolean) {
    if (!config.token) throw new TypeError('Daemon needs a platform token');
    this.config = config;
    this.store = store;
    this.#durable = durable;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
    const now = this.#now;
    this.bus = options.bus ?? new Bus(options.log);
    this.#adds = new AddBatcher(store, now);

    this.tracker = new Tracker({});
    this.metrics = new Metrics({
      exportsByState: () => store.countExports('export'),
      importsByState: () => store.countExports('import'),
      rateLimit: () => this.limiter.snapshot(),
      // Three gauges read these counts at each scrape: one query serves them all.
      deliveries: sharedFor(500, () => store.deliveryCounts()),
      now,
    });
    this.metrics.attach(this.bus);
    // Readiness follows every attempt, so a maintenance being waited out shows at once.
    this.bus.on('platform.request', ({ outcome }) => this.#updateReadiness(outcome));
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
      bus: this.bus,
      ...(options.platformDispatcher ? { dispatcher: options.platformDispatcher } : {}),
      ...(options.platformRetry ? { retry: options.platformRetry } : {}),
    });
    this.deliveries = new DeliveryEngine({
      store,
      urls: config.webhook.urls,
      secretKey: config.webhook.secretKey,
      timeoutMs: config.webhook.timeoutMs,
      maxAgeMs: config.webhook.maxAgeMs,
      userAgent: USER_AGENT,
      log: options.log.child({ component: 'webhooks' }),
      bus: this.bus,
      now,
      ...(options.webhookRetry ? { retry: options.webhookRetry } : {}),
      ...(options.webhookQuickAttempts ? { quickAttempts: options.webhookQuickAttempts } : {}),
    });
    const buildEvent = this.#eventBuilder();
    this.scheduler = new Scheduler(
      {
        checkStatuses: (ids, kind) => this.client.checkStatuses(kind, ids),
        tracker: this.tracker,
        record: async ({ changes }) => {
          const events = await store.commitChanges(changes, buildEvent, this.deliveries.endpoints, now());
          if (events.length > 0) this.deliveries.poke();
        },
        bus: this.bus,
        now,
        log: options.log.child({ component: 'scheduler' }),
      },
      { ...options.scheduler, pollIntervalMs: config.pollIntervalMs, batchSize: config.batchSize },
    );
    this.registry = this.#buildRegistry();
    this.discovery = this.#buildDiscovery(options);
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
   * Discovery through its share of the budget: `floor(WATCHER_RATE_BUDGET / 10)` requests per rate
   * window at most (the configuration requires a budget of at least 10 with it).
   */
  #buildDiscovery(options: DaemonOptions): Discovery | undefined {
    const kinds = this.config.discover;
    if (kinds.length === 0) return undefined;
    const gate = this.limiter.share(
      Math.max(1, Math.floor(this.config.rateBudget / DISCOVERY_SHARE_DIVISOR)),
    );
    return new Discovery({
      kinds,
      intervalMs: options.discoverIntervalMs ?? this.config.discoverIntervalMs,
      list: (kind, from) => this.client.listPage(kind, from, gate),
      add: (kind, ids) => this.registry.watch(ids, { ...DISCOVERED_METADATA }, kind),
      gate,
      log: this.#log.child({ component: 'discovery' }),
      now: this.#now,
    });
  }

  /**
   * Every unfinished job of `kind` the platform lists for this user (every page, through the
   * daemon's limiter, without discovery's share): `watch --all`.
   */
  listUnfinished(kind: JobKind): Promise<string[]> {
    return listUnfinished((k, from) => this.client.listPage(k, from), kind);
  }

  /** Events for the subscribed types, serialized once: the bytes every attempt sends and signs. */
  #eventBuilder(): EventBuilder {
    const wanted = this.config.webhook.events;
    return (change, metadata, kind = 'export') => {
      const event = eventForTransition(
        {
          exportId: change.id,
          kind,
          from: change.from,
          to: change.to,
          at: change.at,
          export: change.export,
          error: change.error,
        },
        metadata,
      );
      if (!event || (wanted !== 'all' && !wanted.has(event.type))) return null;
      return { id: event.id, type: event.type, exportId: event.exportId, body: JSON.stringify(event.body) };
    };
  }

  #buildRegistry(): WatchRegistry {
    const view = (r: StoredExport): ExportView => exportView(r, this.tracker.get(r.id));
    return {
      watch: async (ids, metadata, kind = 'export') => {
        const result = await this.#adds.add({ ids, metadata, ...(kind === 'import' ? { kind } : {}) });
        if (result.accepted.length > 0) {
          this.tracker.track(
            result.accepted.map((id) => ({
              id,
              ...(kind === 'import' ? { kind } : {}),
              state: 'UNKNOWN',
              misses: 0,
            })),
          );
          this.#log.info(
            { accepted: result.accepted.length, already_watched: result.alreadyWatched.length },
            `${kind}s added`,
          );
          this.scheduler.poke();
        }
        return result;
      },
      unwatch: async (id, kind = 'export') => {
        const { removed, cancelledDeliveries } = await this.store.removeExport(id, kind);
        if (removed) {
          this.tracker.untrack(id);
          this.deliveries.cancel(id);
          this.#log.info(
            { [`${kind}_id`]: id, deliveries_cancelled: cancelledDeliveries },
            `${kind} no longer watched`,
          );
        }
        return removed;
      },
      get: async (id, kind = 'export') => {
        const record = await this.store.getExport(id, kind);
        if (!record) return undefined;
        return { ...view(record), events: await this.store.eventsOfExport(id) };
      },
      page: async (query) => {
        const { items, more } = await this.store.pageExports(query);
        return { items: items.map(view), more };
      },
      events: (query) => this.store.listEvents(query),
      redeliver: async (eventId, endpoint) => {
        let refs = this.deliveries.endpoints;
        if (endpoint !== undefined) {
          const ref = this.deliveries.findEndpoint(endpoint);
          if (!ref) return 'unknown_endpoint';
          refs = [ref];
        }
        const count = await this.store.redeliver(eventId, refs, this.#now());
        if (count === undefined) return 'unknown_event';
        this.#log.info({ webhook_id: eventId, deliveries: count }, 'webhook event redelivered');
        this.deliveries.poke();
        return { deliveries: count };
      },
      redeliverSince: async (since, status) => {
        const count = await this.store.redeliverSince(since, status, this.#now());
        this.#log.info(
          { since: new Date(since).toISOString(), status, deliveries: count },
          'webhook deliveries redelivered',
        );
        this.deliveries.poke();
        return { deliveries: count };
      },
    };
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
   * Loads the watched exports (all due at once), resumes deliveries, listens (when the API is on),
   * reads the quota with `GET /rate_limit` (free), then starts checking. Resolves the control
   * API's URL. Idempotent.
   */
  start(): Promise<string | undefined> {
    this.#startPromise ??= (async () => {
      const active = await this.store.loadActive();
      this.tracker.track(active);
      if (active.length > 0) {
        const imports = active.filter((a) => a.kind === 'import').length;
        this.#log.info(
          { watched: active.length, exports: active.length - imports, imports },
          'watching exports from the store',
        );
      }
      await this.deliveries.start();
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
      this.discovery?.start();
      this.#schedulePrune();
      return url;
    })();
    return this.#startPromise;
  }

  /** Deletes finished exports and events past retention, a batch at a time, every minute. */
  #schedulePrune(): void {
    this.#pruneTimer = setInterval(() => {
      this.store
        .prune(this.#now(), {
          retainMs: this.config.retainMs,
          eventRetainMs: this.config.eventRetainMs,
          batch: PRUNE_BATCH,
        })
        .then(({ exports, events }) => {
          if (exports + events > 0) this.#log.debug({ exports, events }, 'pruned past retention');
        })
        .catch((error: unknown) => this.#log.error({ err: error }, 'could not prune the store'));
    }, PRUNE_EVERY_MS);
    this.#pruneTimer.unref();
  }

  /**
   * Stops checking, lets checks in flight finish (their results are stored), then gives
   * deliveries in flight until the deadline. What is left stays in the store for the next start.
   * Idempotent.
   */
  stop(deadlineMs = this.config.shutdownTimeoutMs): Promise<StopReport> {
    this.#stopPromise ??= (async () => {
      const started = performance.now();
      const left = () => Math.max(0, deadlineMs - (performance.now() - started));
      this.#log.info({ deadline_ms: deadlineMs }, 'stopping');
      if (this.#pruneTimer) clearInterval(this.#pruneTimer);
      // No new requests to the API, no new checks; calls not yet started are dropped and retry
      // waits cancelled; a check already on the wire may finish, within the deadline.
      const apiClosed = this.api?.close();
      const checksDone = Promise.all([
        this.scheduler.stop(),
        this.discovery?.stop(),
        this.limiter.stop(),
        this.client.close(),
      ]);
      if (!(await settlesWithin(checksDone, left()))) {
        this.#log.warn('checks still in flight at the shutdown deadline; abandoned');
        await this.client.destroy();
      }
      await this.deliveries.close(left());
      if (apiClosed && !(await settlesWithin(apiClosed, left()))) {
        // A client that keeps a request open must not hold the process past its deadline.
        this.api?.closeAllConnections();
        await apiClosed;
      }
      const pendingDeliveries = await this.#logWhatIsLeft();
      await this.store.close();
      this.#log.info({ watched: this.tracker.activeCount }, 'stopped');
      return { pendingDeliveries };
    })();
    return this.#stopPromise;
  }

  /**
   * At shutdown: with a data directory, a summary of what the next start resumes; in memory
   * (`watch`), what would otherwise be lost with the process: the ids still watched (one line, up
   * to a bound, with the count) and every undelivered event with its body.
   */
  async #logWhatIsLeft(): Promise<number> {
    const watched = [...this.tracker.activeIds()];
    const counts = await this.store.deliveryCounts();
    if (this.#durable) {
      if (watched.length + counts.pending > 0) {
        this.#log.info(
          { watched: watched.length, pending_deliveries: counts.pending, data_dir: this.config.dataDir },
          'state kept for the next start: watching and deliveries resume there',
        );
      }
      return counts.pending;
    }
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
    if (counts.pending === 0) return 0;
    const { items, more } = await this.store.listEvents({
      status: 'pending',
      limit: MAX_EVENTS_LOGGED_AT_STOP,
    });
    for (const event of items) {
      const endpoints = event.deliveries.filter((d) => d.status === 'pending').map((d) => d.endpointLabel);
      this.#log.error(
        { webhook_id: event.id, endpoints, event: JSON.parse(event.body) as unknown },
        'webhook event undelivered at shutdown',
      );
    }
    this.#log.error(
      {
        undelivered: counts.pending,
        events: items.length,
        webhook_ids: items.map((e) => e.id),
        events_not_listed: more ? 'more' : 0,
      },
      'stopped with deliveries not done',
    );
    return counts.pending;
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

/**
 * A stored export as the control API shows it; the check figures come from the tracker while the
 * export is watched (the time of each check is not stored).
 */
export function exportView(
  r: StoredExport,
  live?: { lastCheckedAt: number | null; checks: number } | undefined,
): ExportView {
  return {
    id: r.id,
    ...(r.kind === 'import' ? { kind: r.kind } : {}),
    state: r.state,
    previousState: r.previousState,
    firstSeenAt: r.firstSeenAt,
    stateChangedAt: r.stateChangedAt,
    lastCheckedAt: live?.lastCheckedAt ?? null,
    checks: live?.checks ?? 0,
    metadata: r.metadata,
    history: r.history,
    export: r.export,
    error: r.error,
  };
}

/** The same answer for calls within `ms` of the first: a scrape asks for it several times. */
function sharedFor<T>(ms: number, read: () => Promise<T>): () => Promise<T> {
  let last: { at: number; value: Promise<T> } | undefined;
  return () => {
    const now = performance.now();
    if (!last || now - last.at > ms) last = { at: now, value: read() };
    return last.value;
  };
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
