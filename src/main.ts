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
 *
 * Replicas. With `WATCHER_DATABASE_URL` the store is PostgreSQL, shared by every replica, and a
 * `LeaderElection` (an advisory lock held on a connection of its own) decides which one acts. Only
 * the leader checks the platform (so only it spends the token's budget), runs discovery, sends
 * webhooks and prunes; every replica serves the control API from the shared store, and writes
 * (new ids, removals, redeliveries) go to the shared tables, where the leader picks them up:
 *
 *   election ─► leader:   store.loadActive ─► tracker; deliveries.resume (former leaders' leases
 *                         end at now + L); GET /rate_limit; scheduler.resume; discovery; every poll
 *                         interval store.loadUnknown (ids added elsewhere), every minute a full
 *                         reconcile (ids removed elsewhere)
 *   election ─► follower | disconnected (from leader): at once, synchronously, scheduler.pause and
 *                         deliveries.pause abort every platform call and webhook attempt in flight
 *
 * With SQLite the daemon is the only process: it is the leader from the start, and never steps down.
 */
import { createRequire } from 'node:module';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { platformProblem } from './cli/error-report.js';
import type { Config } from './config/config.js';
import { DeliveryEngine, type DeliveryEngineOptions } from './delivery/engine.js';
import { storedEventBuilder } from './delivery/events.js';
import { ControlApi, type ExportView, type WatchRegistry } from './http/control-api.js';
import { Metrics } from './http/metrics.js';
import { PlatformClient, type RequestOutcome, type RetryPolicy } from './platform/platform-client.js';
import { RateLimiter, type ShareGate } from './platform/rate-limiter.js';
import { DISCOVERED_METADATA, Discovery, listUnfinished } from './polling/discovery.js';
import { Scheduler, type SchedulerOptions } from './polling/scheduler.js';
import { type JobKind, Tracker } from './polling/tracker.js';
import { Bus } from './shared/bus.js';
import { settlesWithin } from './shared/deadline.js';
import { PlatformError } from './shared/errors.js';
import { safeUrl } from './shared/redact.js';
import { GroupCommit } from './store/group-commit.js';
import { LeaderElection, type LeaderRole } from './store/leader.js';
import { openPostgresStore } from './store/postgres.js';
import { openDataDir, openSqliteStore } from './store/sqlite.js';
import type {
  ActiveExport,
  AddRequest,
  AddResult,
  ExportChange,
  Store,
  StoredExport,
} from './store/store.js';

const require = createRequire(import.meta.url);
export const VERSION: string = (require('../package.json') as { version: string }).version;
export const USER_AGENT = `sbg-export-watcher/${VERSION}`;

/**
 * `/readyz`: whether the platform accepted the credentials on the last call (the leader's concern),
 * and the replica's role. A follower is ready (it serves the control API); a replica without its
 * database connection is not.
 */
export interface Readiness {
  ok: boolean;
  reason: string;
  role?: LeaderRole;
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
  /** `READINESS_GRACE_MS`, overridden: for tests. */
  readinessGraceMs?: number;
}

/**
 * A request that failed in passing (a 5xx, a timeout, a malformed answer, a dropped connection)
 * makes the daemon unready only when no request has been answered for this long: one failed call
 * among answered ones (a job whose checks fail on their own, a platform that drops one request in
 * five) is retried, and is no reason to take the control API out of a load balancer. A refused
 * token, maintenance and a refused request (a wrong endpoint) count at once.
 */
const READINESS_GRACE_MS = 60_000;

/** Discovery may spend `floor(WATCHER_RATE_BUDGET / DISCOVERY_SHARE_DIVISOR)` requests per rate window. */
export const DISCOVERY_SHARE_DIVISOR = 10;

export interface StopReport {
  /** Deliveries still pending in the store when the daemon stopped. */
  pendingDeliveries: number;
}

/** Ids named in an "exports added" line: enough to follow one added by hand, never a whole list. */
const ADDED_IDS_LOGGED = 10;

/** Finished exports and events past retention are pruned this often, in small batches. */
const PRUNE_EVERY_MS = 60_000;
const PRUNE_BATCH = 500;
/**
 * With replicas, the leader's delivery engine looks at the shared store at least this often, so a
 * redelivery asked of a follower (written to the store only) is sent within about this long.
 */
export const REPLICA_DELIVERY_IDLE_MS = 2000;
/** With replicas, the leader reloads every active job this often, to drop the ones removed elsewhere. */
export const REPLICA_FULL_RELOAD_MS = 60_000;
/** A leader that cannot read the store at takeover tries again after this long (while still leader). */
const TAKEOVER_RETRY_MS = 1000;

/** What a leadership term aborts its platform calls with when the replica steps down. */
const STEPPED_DOWN = 'no longer the leader: call dropped';

/**
 * How the results of checks are group-committed: a commit waits up to 100 ms for more calls'
 * results, or until 5,000 changes are queued. A state change is known 100 ms later at worst (the
 * checks themselves are seconds apart), and when many exports finish together their transitions
 * share fsyncs and index pages instead of paying for them per call of 100.
 */
const CHECK_COMMIT = {
  delayMs: 100,
  maxItems: 5000,
  sizeOf: (changes: readonly ExportChange[]) => changes.length,
};

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
  /** Group commit of the scheduler's check results (CHECK_COMMIT). */
  readonly #checkResults: GroupCommit<readonly ExportChange[], undefined>;
  /** With PostgreSQL: the election that makes this replica the leader or a follower. */
  readonly election: LeaderElection | undefined;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #durable: boolean;
  readonly #adds: GroupCommit<AddRequest, AddResult>;
  readonly #options: DaemonOptions;
  #readiness: Readiness & { passing?: boolean } = { ok: false, reason: 'no answer from the platform yet' };
  /** When the platform last answered a request (anything but a failure in passing). */
  #answeredAt: number | undefined;
  /** When requests began to fail, since the last one answered. */
  #failingSince: number | undefined;
  readonly #readinessGraceMs: number;
  #pruneTimer: NodeJS.Timeout | undefined;
  #reloadTimer: NodeJS.Timeout | undefined;
  #startPromise: Promise<string | undefined> | undefined;
  /** The control API's listen, once start() has asked for it. */
  #listening: Promise<string | undefined> | undefined;
  #stopPromise: Promise<StopReport> | undefined;
  /** Settles when `stop()` is first called: start-up's waits end there instead of running out. */
  readonly #stopAsked: Promise<void>;
  #askStop: () => void = () => undefined;
  /** Present while leading, when `WATCHER_DISCOVER` names a kind: one per leadership term. */
  #discovery: Discovery | undefined;
  #discoveryGate: ShareGate | undefined;
  /**
   * A leadership term is in force: this replica checks, sends and prunes (or is starting to).
   * Always true with SQLite.
   */
  #leading: boolean;
  /** Counts the starts and ends of terms: work of a term that has ended sees a different number. */
  #term = 0;
  /** Aborts the current term's platform calls (the quota read, discovery's pages) when it ends. */
  #termAbort = new AbortController();

  /**
   * Opens the store (a data directory that cannot be used, or a database that cannot be read,
   * rejects with a `StoreError` naming it) and builds the daemon on it.
   */
  static async open(config: Config, options: DaemonOptions): Promise<Daemon> {
    const memory = options.storage === 'memory';
    const log = options.log.child({ component: 'store' });
    if (!memory && config.databaseUrl !== undefined) {
      const store = await openPostgresStore({
        url: config.databaseUrl,
        log,
        applicationName: applicationName('sbg-export-watcher'),
      });
      return new Daemon(config, options, store, true, config.databaseUrl);
    }
    const path = memory ? ':memory:' : openDataDir(config.dataDir);
    const store = await openSqliteStore({ path, log });
    return new Daemon(config, options, store, !memory, undefined);
  }

  private constructor(
    config: Config,
    options: DaemonOptions,
    store: Store,
    durable: boolean,
    sharedDatabaseUrl: string | undefined,
  ) {
    if (!config.token) throw new TypeError('Daemon needs a platform token');
    this.config = config;
    this.store = store;
    this.#durable = durable;
    this.#options = options;
    this.#log = options.log;
    this.#leading = sharedDatabaseUrl === undefined;
    this.election =
      sharedDatabaseUrl === undefined
        ? undefined
        : new LeaderElection({
            url: sharedDatabaseUrl,
            timeoutMs: config.leaderTimeoutMs,
            log: options.log.child({ component: 'leader-election' }),
            applicationName: applicationName('sbg-export-watcher leader'),
            onChange: (role, previous) => this.#onRole(role, previous),
          });
    this.#stopAsked = new Promise<void>((resolve) => {
      this.#askStop = resolve;
    });
    this.#now = options.now ?? Date.now;
    this.#readinessGraceMs = options.readinessGraceMs ?? READINESS_GRACE_MS;
    const now = this.#now;
    this.bus = options.bus ?? new Bus(options.log);
    this.#adds = new GroupCommit((requests: AddRequest[]) => store.addExports(requests, now()));

    this.tracker = new Tracker({});
    this.metrics = new Metrics({
      // Each counts the table (O(watched)); a burst of scrapes (the route is open) shares them too.
      exportsByState: sharedFor(500, () => store.countExports('export')),
      importsByState: sharedFor(500, () => store.countExports('import')),
      rateLimit: () => this.limiter.snapshot(),
      // Four gauges read these counts at each scrape: one query serves them all. The pending
      // deliveries to endpoints no longer configured are counted apart (they wait for that
      // endpoint): in the backlog's count and oldest age they would only grow.
      deliveries: sharedFor(500, () => store.deliveryCounts(this.deliveries.endpoints.map((e) => e.key))),
      now,
      role: () => this.role,
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
      // Checked before each request goes out, not only when the scheduler turns: a call that
      // waited in the limiter or for a retry must not go out once the lease has run out.
      ...(this.election ? { mayAct: () => this.#mayAct() } : {}),
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
      ...(this.election ? { maxIdleMs: REPLICA_DELIVERY_IDLE_MS, mayAct: () => this.#mayAct() } : {}),
    });
    const buildEvent = storedEventBuilder(config.webhook.events);
    this.#checkResults = new GroupCommit(async (calls: Array<readonly ExportChange[]>) => {
      const events = await store.commitChanges(calls.flat(), buildEvent, this.deliveries.endpoints, now());
      if (events.length > 0) this.deliveries.poke();
      return calls.map(() => undefined);
    }, CHECK_COMMIT);
    this.scheduler = new Scheduler(
      {
        checkStatuses: (ids, kind, signal) => this.client.checkStatuses(kind, ids, { signal }),
        tracker: this.tracker,
        record: ({ changes }) => this.#checkResults.add(changes),
        bus: this.bus,
        now,
        log: options.log.child({ component: 'scheduler' }),
        ...(this.election ? { mayAct: () => this.#mayAct() } : {}),
      },
      { ...options.scheduler, pollIntervalMs: config.pollIntervalMs, batchSize: config.batchSize },
    );
    this.registry = this.#buildRegistry();
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

  /** Discovery of the current leadership term, when `WATCHER_DISCOVER` names a kind. */
  get discovery(): Discovery | undefined {
    return this.#discovery;
  }

  /** This replica's role: the election's with PostgreSQL, always `leader` with SQLite. */
  get role(): LeaderRole {
    return this.election?.role ?? 'leader';
  }

  /**
   * Discovery through its share of the budget: `floor(WATCHER_RATE_BUDGET / 10)` requests per rate
   * window at most (the configuration requires a budget of at least 10 with it). One per term: its
   * page in flight is dropped through `signal` when the term ends.
   */
  #buildDiscovery(options: DaemonOptions, signal: AbortSignal): Discovery | undefined {
    const kinds = this.config.discover;
    if (kinds.length === 0) return undefined;
    // One share for the process: a new term in the same window does not get a fresh one.
    this.#discoveryGate ??= this.limiter.share(
      Math.max(1, Math.floor(this.config.rateBudget / DISCOVERY_SHARE_DIVISOR)),
    );
    const gate = this.#discoveryGate;
    return new Discovery({
      kinds,
      intervalMs: options.discoverIntervalMs ?? this.config.discoverIntervalMs,
      list: (kind, from) => this.client.listPage(kind, from, gate, { signal }),
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

  #buildRegistry(): WatchRegistry {
    const view = (r: StoredExport): ExportView => exportView(r, this.tracker.get(r.id));
    return {
      watch: async (ids, metadata, kind = 'export') => {
        const result = await this.#adds.add({ ids, metadata, ...(kind === 'import' ? { kind } : {}) });
        if (result.accepted.length > 0) {
          // A follower only stores them: the leader reads new ids from the store.
          if (this.#leading) {
            this.tracker.track(
              result.accepted.map((id) => ({
                id,
                ...(kind === 'import' ? { kind } : {}),
                state: 'UNKNOWN',
                misses: 0,
              })),
            );
          }
          this.#log.info(
            {
              accepted: result.accepted.length,
              already_watched: result.alreadyWatched.length,
              // Which, for an operator following one id through the log: the first few only.
              [`${kind}_ids`]: result.accepted.slice(0, ADDED_IDS_LOGGED),
            },
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
          this.deliveries.cancel(id, kind);
          this.#log.info(
            { [`${kind}_id`]: id, deliveries_cancelled: cancelledDeliveries },
            `${kind} no longer watched`,
          );
        }
        return removed;
      },
      get: async (id, kind = 'export') => {
        const found = await this.store.getExportWithEvents(id, kind);
        return found && { ...view(found.record), events: found.events };
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
        const keys = this.deliveries.endpoints.map((e) => e.key);
        const count = await this.store.redeliverSince(since, status, this.#now(), keys);
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
   * The leader is ready when the platform last accepted the credentials and is not holding every
   * call back: a 429 (or nothing left of the quota) makes it "rate limited until T" until that
   * time. With replicas, a follower is ready (it serves the control API), and a replica without
   * its database connection is not. `role` says which.
   */
  get readiness(): Readiness {
    const role = this.role;
    if (this.election && role === 'disconnected') {
      return {
        ok: false,
        reason: `no connection to PostgreSQL since ${new Date(this.election.since).toISOString()}: neither leading nor standing by`,
        role,
      };
    }
    if (this.election && role === 'follower') {
      return { ok: true, reason: 'another replica leads; this one serves the control API', role };
    }
    const { passing: _passing, ...last } = this.#readiness;
    const readiness = this.#excused(this.#now())
      ? { ok: true, reason: 'the platform accepted the credentials' }
      : last;
    const pausedUntil = this.limiter.pausedUntil();
    if (readiness.ok && pausedUntil !== undefined && pausedUntil > this.#now()) {
      return {
        ok: false,
        reason: `rate limited by the platform until ${new Date(pausedUntil).toISOString()}`,
        role,
      };
    }
    return { ...readiness, role };
  }

  /**
   * With SQLite: loads the watched exports (all due at once), resumes deliveries, listens (when the
   * API is on), reads the quota with `GET /rate_limit` (free), then starts checking. With
   * PostgreSQL: listens and starts the election; the rest happens when this replica becomes the
   * leader (`#takeOver`, `#startChecking`). Resolves the control API's URL. Idempotent.
   */
  start(): Promise<string | undefined> {
    this.#startPromise ??= (async () => {
      // Asked after a stop: nothing is started (a server listening now would never be closed).
      if (this.#stopPromise) return undefined;
      if (this.election) {
        const url = await this.#listen();
        // Stopped meanwhile: no election to start (stop() has already ended it).
        if (this.#stopPromise) return url;
        this.election.start();
        return url;
      }
      const term = this.#term;
      await this.#takeOver(term);
      // Stopped meanwhile: the control API must not start listening on a daemon that is closed.
      if (this.#stopPromise) return undefined;
      const url = await this.#listen();
      await this.#startChecking(term);
      return url;
    })();
    return this.#startPromise;
  }

  /** The control API's listen, kept so that a stop asked meanwhile closes it once it listens. */
  #listen(): Promise<string | undefined> {
    this.#listening ??= Promise.resolve(this.api?.listen());
    return this.#listening;
  }

  /**
   * Whether this replica may check or send now: leading, by the election's monotonic clock. A
   * lease that ran out while timers were late (a blocked event loop) steps down here, before the
   * action, and pauses the scheduler and the delivery engine synchronously.
   */
  #mayAct(): boolean {
    return this.#leading && (this.election?.isLeader ?? true);
  }

  /** Called by the election, synchronously, on every change of role. */
  #onRole(role: LeaderRole, previous: LeaderRole): void {
    if (role === 'leader') {
      this.#beginTerm();
    } else if (previous === 'leader') {
      this.#endTerm(role);
    }
  }

  /** Became the leader: loads the store's state and starts checking and sending, in the background. */
  #beginTerm(): void {
    if (this.#stopPromise) {
      // Won the lock while stopping (a former leader's term ended during the drain): no term
      // starts, so give the lock back at once rather than hold it until the stop ends.
      if (!this.#leading) void this.election?.stop();
      return;
    }
    if (this.#leading) return;
    this.#leading = true;
    this.#termAbort = new AbortController();
    const term = ++this.#term;
    this.#log.info('leading: taking over checks and deliveries');
    const current = () => term === this.#term && !this.#stopPromise;
    void (async () => {
      // The store is shared: what another replica (or this one, before) did there is the truth.
      for (;;) {
        try {
          await this.#takeOver(term);
          break;
        } catch (error) {
          if (!current()) return;
          this.#log.error({ err: error }, 'could not take over from the store; trying again');
          await new Promise((resolve) => setTimeout(resolve, TAKEOVER_RETRY_MS));
          if (!current()) return;
        }
      }
      await this.#startChecking(term);
      if (current()) this.#scheduleReload(term);
    })().catch((error: unknown) => this.#log.error({ err: error }, 'taking over failed'));
  }

  /**
   * Stopped being the leader (follower, or the database connection lost): stops checking and
   * sending at once, synchronously. Calls to the platform and webhook attempts in flight are
   * aborted; nothing is lost, the store keeps every id, change, event and pending delivery.
   */
  #endTerm(role: LeaderRole): void {
    if (!this.#leading) return;
    this.#leading = false;
    this.#term++;
    this.#termAbort.abort(new PlatformError('SHUTTING_DOWN', STEPPED_DOWN));
    this.scheduler.pause();
    // Observations already made are stored now rather than after the group commit's delay.
    this.#checkResults.flush();
    this.deliveries.pause();
    const discovery = this.#discovery;
    this.#discovery = undefined;
    void discovery?.stop();
    if (this.#pruneTimer) clearInterval(this.#pruneTimer);
    if (this.#reloadTimer) clearInterval(this.#reloadTimer);
    this.#pruneTimer = undefined;
    this.#reloadTimer = undefined;
    this.#log[this.#stopPromise ? 'info' : 'warn'](
      { role },
      'no longer the leader: checks and webhook deliveries stopped',
    );
  }

  /**
   * The first half of a term: the tracker from the store (every watched job due at once), and the
   * delivery engine on. With replicas, leases that a former leader holds in the store end at
   * now + L (the election's lease: the longest a former leader may still believe it leads), never
   * at once; with SQLite, at once (the only process). Throws when the store cannot be read.
   */
  async #takeOver(term: number): Promise<void> {
    // What this process stored before it last stepped down is settled before the store is read.
    await this.scheduler.recordsSettled();
    const active = await this.store.loadActive();
    if (term !== this.#term) return;
    this.#loadTracker(active);
    if (active.length > 0) {
      const imports = active.filter((a) => a.kind === 'import').length;
      this.#log.info(
        { watched: active.length, exports: active.length - imports, imports },
        'watching exports from the store',
      );
    }
    const leaseMs = this.election?.timing.leaseMs ?? 0;
    await this.deliveries.resume({ releaseLeasesAt: this.#now() + leaseMs });
  }

  /** The tracker holds exactly `active`: what an earlier term of this process left is dropped. */
  #loadTracker(active: readonly ActiveExport[]): void {
    for (const id of [...this.tracker.activeIds()]) this.tracker.untrack(id);
    this.tracker.track(active);
  }

  /**
   * The second half of a term: reads the quota with `GET /rate_limit` (free), then starts
   * checking, discovery and pruning.
   */
  async #startChecking(term: number): Promise<void> {
    if (term !== this.#term || this.#stopPromise) return;
    this.#readiness = { ok: false, reason: 'no answer from the platform yet' };
    this.#answeredAt = undefined;
    this.#failingSince = undefined;
    const signal = this.#termAbort.signal;
    const probe = this.client
      .rateLimit({ signal })
      .then((status) => {
        // Free of the quota: not one of the calls in flight.
        this.limiter.observe(status, false);
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
        if (isShutdown(error)) return;
        // A refused token is a configuration mistake, not a quota that could not be read: with no
        // id watched yet no check runs to say so, and this warning about the rate limit was the
        // only line a daemon started with a wrong token wrote. `run` says it at error, in the
        // words the commands use; `watch` (no control API) reports it itself, as its one
        // `error:` line and exit 1.
        if (this.#options.api && error instanceof PlatformError && error.code === 'PLATFORM_UNAUTHORIZED') {
          this.#log.error({ err_message: error.message }, platformProblem(error, undefined));
          return;
        }
        this.#log.warn({ err_message: (error as Error).message }, 'could not read the platform rate limit');
      });
    // Start checking once the quota is known, or after a short wait if the platform is slow.
    await settlesWithin(Promise.race([probe, this.#stopAsked]), 5000);
    if (term !== this.#term || this.#stopPromise) return;
    this.scheduler.resume();
    this.#discovery = this.#buildDiscovery(this.#options, signal);
    this.#discovery?.start();
    this.#schedulePrune();
  }

  /**
   * With replicas, while leading: every poll interval, the jobs still UNKNOWN in the store that
   * the tracker does not hold (added through another replica; due at once); every
   * `REPLICA_FULL_RELOAD_MS`, every active job, to also drop those removed through another
   * replica. One reload at a time; a failed one is logged and tried at the next tick.
   */
  #scheduleReload(term: number): void {
    const every = this.config.pollIntervalMs;
    const fullEvery = Math.max(1, Math.round(REPLICA_FULL_RELOAD_MS / every));
    let ticks = 0;
    let busy = false;
    this.#reloadTimer = setInterval(() => {
      if (busy || term !== this.#term) return;
      busy = true;
      ticks++;
      const full = ticks % fullEvery === 0;
      this.#reload(term, full)
        .catch((error: unknown) =>
          this.#log.warn({ err: error }, 'could not read the jobs other replicas added; trying again'),
        )
        .finally(() => {
          busy = false;
        });
    }, every);
    this.#reloadTimer.unref();
  }

  async #reload(term: number, full: boolean): Promise<void> {
    // Ids tracked before the query was sent were committed before it, so the answer knows them.
    const tracked = full ? new Set(this.tracker.activeIds()) : undefined;
    const found = full ? await this.store.loadActive() : await this.store.loadUnknown();
    if (term !== this.#term) return;
    const before = this.tracker.activeCount;
    this.tracker.track(found);
    const added = this.tracker.activeCount - before;
    let removed = 0;
    if (tracked) {
      for (const { id } of found) tracked.delete(id);
      // Gone from the store (removed through another replica), or finished meanwhile.
      for (const id of tracked) if (this.tracker.untrack(id)) removed++;
    }
    if (added > 0) this.scheduler.poke();
    if (added + removed > 0) {
      this.#log.info({ added, removed }, 'jobs added or removed through other replicas');
    }
  }

  /**
   * Every minute: gives up the deliveries that waited WATCHER_WEBHOOK_MAX_AGE for an endpoint no
   * longer configured (`Store.giveUpOrphaned`), then deletes finished exports and events past
   * retention, a batch at a time.
   */
  #schedulePrune(): void {
    this.#pruneTimer = setInterval(() => void this.tidy(), PRUNE_EVERY_MS);
    this.#pruneTimer.unref();
  }

  /** What the leader does every minute (`#schedulePrune`); never rejects, failures are logged. */
  async tidy(): Promise<void> {
    const now = this.#now();
    try {
      const keys = this.deliveries.endpoints.map((e) => e.key);
      const byEndpoint = await this.store.giveUpOrphaned(keys, now - this.config.webhook.maxAgeMs, now);
      let givenUp = 0;
      for (const { endpointLabel, count } of byEndpoint) {
        givenUp += count;
        // Counted as the engine counts the deliveries it gives up (webhook_deliveries_total).
        this.bus.emit('delivery.finished', { endpoint: endpointLabel, outcome: 'given_up', count });
      }
      if (givenUp > 0) {
        this.#log.warn(
          { count: givenUp, endpoints: byEndpoint, max_age_ms: this.config.webhook.maxAgeMs },
          'webhook deliveries to endpoints no longer in WATCHER_WEBHOOK_URLS given up after WATCHER_WEBHOOK_MAX_AGE; POST /v1/events/redeliver sends them once the endpoint is configured again',
        );
      }
    } catch (error) {
      this.#log.error({ err: error }, 'could not give up the deliveries to removed endpoints');
    }
    try {
      const { exports, events } = await this.store.prune(now, {
        retainMs: this.config.retainMs,
        eventRetainMs: this.config.eventRetainMs,
        batch: PRUNE_BATCH,
      });
      // At info: records an operator may look for are gone (a line a minute at most).
      if (exports + events > 0) this.#log.info({ exports, events }, 'pruned past retention');
    } catch (error) {
      this.#log.error({ err: error }, 'could not prune the store');
    }
  }

  /**
   * Stops checking, lets checks in flight finish (their results are stored), then gives
   * deliveries in flight until the deadline. What is left stays in the store for the next start.
   * Idempotent.
   */
  stop(deadlineMs = this.config.shutdownTimeoutMs): Promise<StopReport> {
    this.#askStop();
    this.#stopPromise ??= (async () => {
      const started = performance.now();
      const left = () => Math.max(0, deadlineMs - (performance.now() - started));
      this.#log.info({ deadline_ms: deadlineMs }, 'stopping');
      // Not leading: nothing of this replica's is in flight that another must wait for, and the
      // lock, were it taken while this one drains its control API, would not be led with. Leave
      // the election now, so that another replica can lead at once.
      if (!this.#leading) void this.election?.stop();
      if (this.#pruneTimer) clearInterval(this.#pruneTimer);
      if (this.#reloadTimer) clearInterval(this.#reloadTimer);
      // No new requests to the API, no new checks; calls not yet started are dropped and retry
      // waits cancelled; a check already on the wire may finish, within the deadline.
      // A listen under way (start-up) is let finish first: closing before it would leave the
      // server listening after the daemon stopped.
      const api = this.api;
      const apiClosed = api && Promise.allSettled([this.#listening]).then(() => api.close());
      const checksDone = Promise.all([
        this.scheduler.stop(),
        this.#discovery?.stop(),
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
      // Only now, with nothing left in flight here, may another replica take over.
      await this.election?.stop();
      let pendingDeliveries = 0;
      try {
        pendingDeliveries = await this.#logWhatIsLeft();
      } catch (error) {
        // A database that is gone (PostgreSQL) keeps what it has; only the summary is lost.
        this.#log.warn({ err: error }, 'could not read what is left in the store');
      }
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
        const where =
          this.config.databaseUrl === undefined
            ? { data_dir: this.config.dataDir }
            : { database: safeUrl(this.config.databaseUrl) };
        this.#log.info(
          { watched: watched.length, pending_deliveries: counts.pending, ...where },
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
    // A follower's loop does not turn (idle or paused): it is alive all the same.
    if (mode !== 'idle' && mode !== 'paused' && idleFor > 60_000)
      return { ok: false, reason: `the check loop has not turned for ${idleFor} ms` };
    return { ok: true };
  }

  /** The last failure was one in passing, and the platform answered within the grace before it. */
  #excused(now: number): boolean {
    return (
      this.#readiness.passing === true &&
      this.#answeredAt !== undefined &&
      now - this.#answeredAt < this.#readinessGraceMs
    );
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
    const now = this.#now();
    if (reason === null) {
      // Back from failures that made the daemon unready: said once, so that the log shows where an
      // outage ended (a failure in passing within the grace is not one).
      if (this.#failingSince !== undefined && !this.#readiness.ok && !this.#excused(now)) {
        this.#log.info(
          { failing_ms: now - this.#failingSince, last_problem: this.#readiness.reason },
          'the platform answers again',
        );
      }
      this.#failingSince = undefined;
      this.#answeredAt = now;
      if (outcome === 'ok' || outcome === 'not_found')
        this.#readiness = { ok: true, reason: 'the platform accepted the credentials' };
      return;
    }
    this.#failingSince ??= now;
    // In passing only after the platform had accepted the credentials: an answer (a 429) before
    // that, then a server error, is no reason to say it has.
    const wasAccepted = this.#readiness.ok || this.#readiness.passing === true;
    this.#readiness = { ok: false, reason, passing: wasAccepted && PASSING_FAILURES.has(outcome) };
  }
}

/** Outcomes of a request that may well go the other way on the next (see `READINESS_GRACE_MS`). */
const PASSING_FAILURES: ReadonlySet<RequestOutcome> = new Set([
  'server_error',
  'bad_response',
  'network',
  'timeout',
]);

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

/**
 * `application_name` for this process's PostgreSQL sessions: `prefix [pid@host]`, printable ASCII,
 * at most 63 characters (the server's limit), so that `pg_stat_activity` tells replicas apart.
 */
function applicationName(prefix: string): string {
  const name = `${prefix} [${process.pid}@${hostname()}]`.replace(/[^\x20-\x7e]/g, '?');
  return name.length <= 63 ? name : `${name.slice(0, 62)}]`;
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
