/**
 * Prometheus metrics, served at `GET /metrics`.
 *
 * Every metric this daemon defines (prefix `sbg_export_watcher_`):
 *
 * | name | type | labels | meaning |
 * | --- | --- | --- | --- |
 * | `sbg_export_watcher_exports` | gauge | `state` | Exports the watcher holds, by state (UNKNOWN, PENDING, RUNNING, COMPLETED, FAILED, LOST); finished ones count until `WATCHER_RETAIN` drops them. Every state is always present, 0 when empty. |
 * | `sbg_export_watcher_imports` | gauge | `state` | Imports the watcher holds, by state, as `sbg_export_watcher_exports` counts exports. Every state is always present, 0 when empty. |
 * | `sbg_export_watcher_export_transitions_total` | counter | `from`, `to` | State changes of exports observed; a jump (PENDING → COMPLETED) counts once. |
 * | `sbg_export_watcher_import_transitions_total` | counter | `from`, `to` | State changes of imports observed, likewise. |
 * | `sbg_export_watcher_platform_requests_total` | counter | `route`, `outcome` | HTTP requests to the platform, each retry counted, both kinds of job together. `route`: bulk_get, get, list (discovery), rate_limit. `outcome`: ok, rate_limited, maintenance, server_error, unauthorized, not_found, rejected, bad_response, network, timeout. |
 * | `sbg_export_watcher_platform_request_duration_seconds` | histogram | `route` | Time of one platform request, from sending to the end of the body or the failure. Buckets 10 ms to 60 s. |
 * | `sbg_export_watcher_platform_bulk_call_ids` | histogram | none | Ids per successful bulk call, exports or imports (at most 100). Buckets 1, 5, 10, 25, 50, 75, 100. |
 * | `sbg_export_watcher_platform_bulk_answer_mismatch_total` | counter | `kind` | Bulk answers whose number of items differs from the number of ids asked: `fewer_items` or `more_items`. Their anonymous error items are never attributed to ids. |
 * | `sbg_export_watcher_platform_rate_limited_total` | counter | none | Platform answers of 429 (rate limit exceeded); every call pauses until the reset. |
 * | `sbg_export_watcher_platform_rate_limit_remaining` | gauge | none | The platform's `X-RateLimit-Remaining` as last reported, less the requests this daemon started since. Absent until the platform reports it, and after a window ends until it reports again. |
 * | `sbg_export_watcher_rate_budget_remaining` | gauge | none | Requests left of this daemon's own `WATCHER_RATE_BUDGET` in the current rate window. |
 * | `sbg_export_watcher_webhook_deliveries_total` | counter | `endpoint`, `result` | Webhook deliveries (one event to one endpoint) that ended in this process. `result`: delivered, gone (410), given_up (past `WATCHER_WEBHOOK_MAX_AGE`). |
 * | `sbg_export_watcher_webhook_attempts_total` | counter | `endpoint`, `outcome` | Webhook HTTP attempts. `outcome`: success (2xx), failure (anything to retry), gone (410), aborted (cut short by a close deadline, a pause or a lost leadership; made again later). |
 * | `sbg_export_watcher_webhook_attempt_duration_seconds` | histogram | `endpoint` | Time of one webhook attempt. Buckets 10 ms to 60 s. |
 * | `sbg_export_watcher_webhook_deliveries_pending` | gauge | none | Webhook deliveries not finished yet to the endpoints in `WATCHER_WEBHOOK_URLS` (stored as pending: due, in flight, or waiting for a retry); those to endpoints no longer configured are `webhook_deliveries_orphaned`. |
 * | `sbg_export_watcher_webhook_deliveries_orphaned` | gauge | none | Pending webhook deliveries to endpoints no longer in `WATCHER_WEBHOOK_URLS`: sent if that URL is configured again within `WATCHER_WEBHOOK_MAX_AGE`, given up (`failed`) after it. Not in `webhook_deliveries_pending` nor in `webhook_oldest_pending_age_seconds`. |
 * | `sbg_export_watcher_webhook_deliveries` | gauge | `status` | Stored webhook deliveries by status: pending, delivered, failed (given up), gone; finished ones count until `WATCHER_EVENT_RETAIN` drops them. `pending` counts every endpoint's: `webhook_deliveries_pending` plus `webhook_deliveries_orphaned`. |
 * | `sbg_export_watcher_webhook_oldest_pending_age_seconds` | gauge | none | Age of the oldest event with a pending delivery to an endpoint in `WATCHER_WEBHOOK_URLS`; 0 when none is pending. |
 * | `sbg_export_watcher_last_successful_check_timestamp_seconds` | gauge | none | Unix time (seconds) at which a check of the platform last succeeded; 0 before the first. |
 * | `sbg_export_watcher_leader` | gauge | `role` | 1 for this replica's current role, 0 for the others: `leader` (checks the platform and sends webhooks), `follower` (serves the control API, stands by), `disconnected` (no connection to PostgreSQL). Always `leader` with SQLite. |
 *
 * `endpoint` is the webhook URL without credentials, query or fragment (as the webhook
 * dispatcher logs it), so neither the URL's secrets nor the signing secret reach a scrape; there
 * are as many values as configured endpoints (URLs that would share one get their place in the
 * list as well: `DeliveryEngine`).
 *
 * Alongside these come prom-client's default Node.js process metrics (`process_*`, `nodejs_*`),
 * without a prefix so that stock Node.js dashboards and alerts work unchanged.
 *
 * Each `Metrics` owns its own `Registry` rather than prom-client's global one, so tests and several
 * daemons in one process never collide. Counters and histograms are fed by the daemon's events
 * (`attach(bus)`); gauges of current state are read from the sources given to the constructor at
 * scrape time (the store's counts among them), so they cost nothing between scrapes and are never
 * stale. A store-backed source that fails or takes longer than `STORE_READ_TIMEOUT_MS` leaves its gauges
 * out of that scrape (no sample, rather than a zero or a stale value); the rest is served, so a
 * replica without its database still shows `leader{role="disconnected"} 1`.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { RateSnapshot } from '../platform/rate-limiter.js';
import { EXPORT_STATES, type ExportState, type JobKind } from '../polling/tracker.js';
import type { Bus } from '../shared/bus.js';
import { settlesWithin } from '../shared/deadline.js';
import type { LeaderRole } from '../store/leader.js';
import { DELIVERY_STATUSES, type DeliveryCounts } from '../store/store.js';

/** Every role `sbg_export_watcher_leader` has a sample for. */
export const LEADER_ROLES: readonly LeaderRole[] = ['leader', 'follower', 'disconnected'];

export const METRIC_PREFIX = 'sbg_export_watcher_';

/** Upper bounds in seconds, for durations from about 10 ms to a minute. */
export const DURATION_BUCKETS: readonly number[] = [
  0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60,
];
/** Ids per bulk call; the platform takes at most 100. */
export const BULK_IDS_BUCKETS: readonly number[] = [1, 5, 10, 25, 50, 75, 100];

export interface MetricDescription {
  readonly name: string;
  readonly type: 'counter' | 'gauge' | 'histogram';
  readonly labels: readonly string[];
  readonly help: string;
}

/** The single source of each metric's name, type, labels and help text. */
const M = {
  exports: {
    name: `${METRIC_PREFIX}exports`,
    type: 'gauge',
    labels: ['state'],
    help: 'Exports the watcher holds, by state; finished ones count until WATCHER_RETAIN drops them.',
  },
  imports: {
    name: `${METRIC_PREFIX}imports`,
    type: 'gauge',
    labels: ['state'],
    help: 'Imports the watcher holds, by state; finished ones count until WATCHER_RETAIN drops them.',
  },
  transitions: {
    name: `${METRIC_PREFIX}export_transitions_total`,
    type: 'counter',
    labels: ['from', 'to'],
    help: 'Export state changes observed; a jump such as PENDING to COMPLETED counts once.',
  },
  importTransitions: {
    name: `${METRIC_PREFIX}import_transitions_total`,
    type: 'counter',
    labels: ['from', 'to'],
    help: 'Import state changes observed; a jump such as PENDING to COMPLETED counts once.',
  },
  platformRequests: {
    name: `${METRIC_PREFIX}platform_requests_total`,
    type: 'counter',
    labels: ['route', 'outcome'],
    help: 'HTTP requests to the platform, each retry counted, by route and outcome (exports and imports together).',
  },
  platformDuration: {
    name: `${METRIC_PREFIX}platform_request_duration_seconds`,
    type: 'histogram',
    labels: ['route'],
    help: 'Time of one platform request, from sending to the end of the answer or the failure.',
  },
  bulkIds: {
    name: `${METRIC_PREFIX}platform_bulk_call_ids`,
    type: 'histogram',
    labels: [],
    help: 'Ids per successful bulk call, exports or imports (at most 100).',
  },
  bulkMismatch: {
    name: `${METRIC_PREFIX}platform_bulk_answer_mismatch_total`,
    type: 'counter',
    labels: ['kind'],
    help: 'Bulk answers whose number of items differs from the number of ids asked: fewer_items or more_items.',
  },
  rateLimited: {
    name: `${METRIC_PREFIX}platform_rate_limited_total`,
    type: 'counter',
    labels: [],
    help: 'Platform answers of 429 (rate limit exceeded); every call pauses until the reset.',
  },
  platformRemaining: {
    name: `${METRIC_PREFIX}platform_rate_limit_remaining`,
    type: 'gauge',
    labels: [],
    help: "The platform's X-RateLimit-Remaining as last reported, less requests started since; absent while unknown.",
  },
  budgetRemaining: {
    name: `${METRIC_PREFIX}rate_budget_remaining`,
    type: 'gauge',
    labels: [],
    help: "Requests left of this daemon's own WATCHER_RATE_BUDGET in the current rate window.",
  },
  deliveries: {
    name: `${METRIC_PREFIX}webhook_deliveries_total`,
    type: 'counter',
    labels: ['endpoint', 'result'],
    help: 'Webhook deliveries (one event to one endpoint) that ended in this process: delivered, gone or given_up.',
  },
  attempts: {
    name: `${METRIC_PREFIX}webhook_attempts_total`,
    type: 'counter',
    labels: ['endpoint', 'outcome'],
    help: 'Webhook HTTP attempts: success (2xx), failure (to be retried), gone (410) or aborted (cut short here).',
  },
  attemptDuration: {
    name: `${METRIC_PREFIX}webhook_attempt_duration_seconds`,
    type: 'histogram',
    labels: ['endpoint'],
    help: 'Time of one webhook attempt.',
  },
  deliveriesPending: {
    name: `${METRIC_PREFIX}webhook_deliveries_pending`,
    type: 'gauge',
    labels: [],
    help: 'Webhook deliveries not finished yet to the configured endpoints: due, in flight, or waiting for a retry.',
  },
  deliveriesOrphaned: {
    name: `${METRIC_PREFIX}webhook_deliveries_orphaned`,
    type: 'gauge',
    labels: [],
    help: 'Pending webhook deliveries to endpoints no longer configured: sent if one is configured again within the max age, given up after it.',
  },
  deliveriesStored: {
    name: `${METRIC_PREFIX}webhook_deliveries`,
    type: 'gauge',
    labels: ['status'],
    help: 'Stored webhook deliveries by status: pending (to any endpoint, configured or not), delivered, failed (given up), gone.',
  },
  oldestPending: {
    name: `${METRIC_PREFIX}webhook_oldest_pending_age_seconds`,
    type: 'gauge',
    labels: [],
    help: 'Age of the oldest event with a pending delivery to a configured endpoint; 0 when none is pending.',
  },
  lastCheck: {
    name: `${METRIC_PREFIX}last_successful_check_timestamp_seconds`,
    type: 'gauge',
    labels: [],
    help: 'Unix time in seconds at which a check of the platform last succeeded; 0 before the first.',
  },
  leader: {
    name: `${METRIC_PREFIX}leader`,
    type: 'gauge',
    labels: ['role'],
    help: "1 for this replica's current role (leader, follower or disconnected), 0 for the others; leader with SQLite.",
  },
} as const satisfies Record<string, MetricDescription>;

/** Every metric this module defines; the README's list and the tests are checked against it. */
export const METRIC_DESCRIPTIONS: readonly MetricDescription[] = Object.values(M);

/**
 * What the rate gauges read from the limiter at scrape time. `RateLimiter.snapshot()` satisfies
 * it as is: pass `() => limiter.snapshot()`.
 */
export type RateLimitSource = Pick<RateSnapshot, 'budget' | 'spent' | 'platformRemaining'> &
  Partial<Pick<RateSnapshot, 'probing'>>;

/** Where the gauges of current state are read from, at every scrape. */
export interface MetricsSources {
  /** Exports held, by state: `() => store.countExports('export')`. */
  exportsByState: () => Promise<Readonly<Record<ExportState, number>>>;
  /** Imports held, by state: `() => store.countExports('import')`; every state 0 when absent. */
  importsByState?: () => Promise<Readonly<Record<ExportState, number>>>;
  /** The limiter's view of the quota: `() => limiter.snapshot()`. */
  rateLimit: () => RateLimitSource;
  /**
   * Stored deliveries by status, with the pending ones to endpoints no longer configured counted
   * apart: `() => store.deliveryCounts(engine.endpoints.map((e) => e.key))`.
   */
  deliveries: () => Promise<DeliveryCounts>;
  /** Epoch ms; default Date.now. */
  now?: () => number;
  /** This replica's role in the leader election; `leader` when absent (SQLite: one process). */
  role?: () => LeaderRole;
}

/** A scrape waits this long for the store's counts (PostgreSQL over a silent network: forever). */
const STORE_READ_TIMEOUT_MS = 5000;

/** `read()`'s value, or undefined when it fails or has not settled within `ms`. */
async function within<T>(ms: number, read: () => Promise<T>): Promise<T | undefined> {
  const reading = Promise.resolve()
    .then(read)
    .catch(() => undefined);
  return (await settlesWithin(reading, ms)) ? reading : undefined;
}

/** No sample at all: for a gauge whose source could not be read in this scrape. */
function clear(gauge: Gauge<string>, labelled: boolean): void {
  gauge.reset();
  // An unlabelled gauge's reset leaves a 0 sample, which would read as a value.
  if (!labelled) gauge.remove();
}

export class Metrics {
  /** This instance's own registry; prom-client's global one is never touched. */
  readonly registry: Registry;
  readonly #transitions: Record<JobKind, Counter<'from' | 'to'>>;
  readonly #lastCheck: Gauge;
  readonly #platformRequests: Counter<'route' | 'outcome'>;
  readonly #platformDuration: Histogram<'route'>;
  readonly #bulkIds: Histogram;
  readonly #bulkMismatch: Counter<'kind'>;
  readonly #rateLimited: Counter;
  readonly #deliveries: Counter<'endpoint' | 'result'>;
  readonly #attempts: Counter<'endpoint' | 'outcome'>;
  readonly #attemptDuration: Histogram<'endpoint'>;
  readonly #now: (() => number) | undefined;

  constructor(sources: MetricsSources) {
    for (const key of ['exportsByState', 'rateLimit', 'deliveries'] as const) {
      if (typeof sources[key] !== 'function') {
        throw new TypeError(`Metrics: ${key} must be a function, got ${typeof sources[key]}`);
      }
    }
    this.#now = sources.now;
    const exportsByState = () => within(STORE_READ_TIMEOUT_MS, sources.exportsByState);
    const importsByState = () =>
      within(
        STORE_READ_TIMEOUT_MS,
        async () => (await sources.importsByState?.()) ?? ({} as Partial<Record<ExportState, number>>),
      );
    const deliveries = () => within(STORE_READ_TIMEOUT_MS, sources.deliveries);
    const registry = new Registry();
    this.registry = registry;
    collectDefaultMetrics({ register: registry });
    const registers = [registry];

    new Gauge({
      name: M.exports.name,
      help: M.exports.help,
      labelNames: M.exports.labels,
      registers,
      async collect() {
        const counts = await exportsByState();
        if (counts === undefined) return clear(this, true);
        // Every state, zeros included, so a state that empties shows 0 rather than vanishing.
        for (const state of EXPORT_STATES) this.set({ state }, counts[state] ?? 0);
      },
    });
    new Gauge({
      name: M.imports.name,
      help: M.imports.help,
      labelNames: M.imports.labels,
      registers,
      async collect() {
        const counts: Partial<Record<ExportState, number>> | undefined = await importsByState();
        if (counts === undefined) return clear(this, true);
        for (const state of EXPORT_STATES) this.set({ state }, counts[state] ?? 0);
      },
    });
    this.#transitions = {
      export: new Counter({
        name: M.transitions.name,
        help: M.transitions.help,
        labelNames: M.transitions.labels,
        registers,
      }),
      import: new Counter({
        name: M.importTransitions.name,
        help: M.importTransitions.help,
        labelNames: M.importTransitions.labels,
        registers,
      }),
    };
    this.#platformRequests = new Counter({
      name: M.platformRequests.name,
      help: M.platformRequests.help,
      labelNames: M.platformRequests.labels,
      registers,
    });
    this.#platformDuration = new Histogram({
      name: M.platformDuration.name,
      help: M.platformDuration.help,
      labelNames: M.platformDuration.labels,
      buckets: [...DURATION_BUCKETS],
      registers,
    });
    this.#bulkIds = new Histogram({
      name: M.bulkIds.name,
      help: M.bulkIds.help,
      buckets: [...BULK_IDS_BUCKETS],
      registers,
    });
    this.#bulkMismatch = new Counter({
      name: M.bulkMismatch.name,
      help: M.bulkMismatch.help,
      labelNames: M.bulkMismatch.labels,
      registers,
    });
    this.#rateLimited = new Counter({ name: M.rateLimited.name, help: M.rateLimited.help, registers });
    new Gauge({
      name: M.platformRemaining.name,
      help: M.platformRemaining.help,
      registers,
      collect() {
        const { platformRemaining: remaining, probing } = sources.rateLimit();
        // Absent rather than a made-up number while the platform has not said (a probe's count
        // of 1 is the limiter's own, not the platform's).
        if (remaining === undefined || probing === true) this.remove();
        else this.set(remaining);
      },
    });
    new Gauge({
      name: M.budgetRemaining.name,
      help: M.budgetRemaining.help,
      registers,
      collect() {
        const { budget, spent } = sources.rateLimit();
        this.set(Math.max(0, budget - spent));
      },
    });
    this.#deliveries = new Counter({
      name: M.deliveries.name,
      help: M.deliveries.help,
      labelNames: M.deliveries.labels,
      registers,
    });
    this.#attempts = new Counter({
      name: M.attempts.name,
      help: M.attempts.help,
      labelNames: M.attempts.labels,
      registers,
    });
    this.#attemptDuration = new Histogram({
      name: M.attemptDuration.name,
      help: M.attemptDuration.help,
      labelNames: M.attemptDuration.labels,
      buckets: [...DURATION_BUCKETS],
      registers,
    });
    /** An unlabelled gauge of the delivery counts, left out of a scrape that cannot read them. */
    const ofDeliveries = (m: { name: string; help: string }, of: (counts: DeliveryCounts) => number) =>
      new Gauge({
        name: m.name,
        help: m.help,
        registers,
        async collect() {
          const counts = await deliveries();
          if (counts === undefined) return clear(this, false);
          this.set(of(counts));
        },
      });
    ofDeliveries(M.deliveriesPending, (c) => c.pending - c.orphaned);
    ofDeliveries(M.deliveriesOrphaned, (c) => c.orphaned);
    // What is stored, by status: a pending delivery to an endpoint no longer configured is
    // stored as pending all the same, and the statuses add up to the rows the store holds.
    new Gauge({
      name: M.deliveriesStored.name,
      help: M.deliveriesStored.help,
      labelNames: M.deliveriesStored.labels,
      registers,
      async collect() {
        const counts = await deliveries();
        if (counts === undefined) return clear(this, true);
        for (const status of DELIVERY_STATUSES) this.set({ status }, counts[status]);
      },
    });
    const now = sources.now ?? Date.now;
    ofDeliveries(M.oldestPending, ({ oldestPendingAt }) =>
      oldestPendingAt === null ? 0 : Math.max(0, (now() - oldestPendingAt) / 1000),
    );
    this.#lastCheck = new Gauge({ name: M.lastCheck.name, help: M.lastCheck.help, registers });
    new Gauge({
      name: M.leader.name,
      help: M.leader.help,
      labelNames: M.leader.labels,
      registers,
      collect() {
        const current = sources.role?.() ?? 'leader';
        for (const role of LEADER_ROLES) this.set({ role }, role === current ? 1 : 0);
      },
    });
  }

  /**
   * Feeds the counters and histograms from the daemon's events. The platform client emits from a
   * `finally`, so these only record numbers prom-client accepts.
   */
  attach(bus: Bus): void {
    bus.on('platform.request', ({ route, outcome, durationMs }) => {
      this.#platformRequests.inc({ route, outcome });
      this.#platformDuration.observe({ route }, seconds(durationMs));
      if (outcome === 'rate_limited') this.#rateLimited.inc();
    });
    bus.on('platform.bulk', ({ ids }) => {
      if (Number.isFinite(ids) && ids >= 0) this.#bulkIds.observe(ids);
    });
    bus.on('platform.bulk_mismatch', ({ asked, items }) => {
      this.#bulkMismatch.inc({ kind: items < asked ? 'fewer_items' : 'more_items' });
    });
    bus.on('delivery.attempt', (result) => {
      // An attempt cut short by a close deadline, a pause or a lost leadership says nothing about
      // the receiver: counted apart, and its time is not the receiver's.
      if (result.code === 'SHUTTING_DOWN') {
        this.#attempts.inc({ endpoint: result.endpoint, outcome: 'aborted' });
        return;
      }
      this.#attempts.inc({ endpoint: result.endpoint, outcome: result.outcome });
      this.#attemptDuration.observe({ endpoint: result.endpoint }, seconds(result.durationMs));
    });
    bus.on('delivery.finished', ({ endpoint, outcome, count = 1 }) => {
      this.#deliveries.inc({ endpoint, result: outcome }, count);
    });
    bus.on('transition', ({ kind = 'export', from, to }) => this.#transitions[kind].inc({ from, to }));
    bus.on('check.result', (result) => {
      if (result.ok) this.onCheckSuccess((this.#now ?? Date.now)());
    });
  }

  /** A check of the platform succeeded at `now` (epoch ms, from the injected clock). */
  onCheckSuccess(now: number): void {
    if (Number.isFinite(now)) this.#lastCheck.set(now / 1000);
  }

  /** The exposition for `GET /metrics`; matches `HealthProbes.metrics`. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/** Milliseconds as seconds; a non-finite or negative duration (a clock step) counts as 0. */
function seconds(ms: number): number {
  return Number.isFinite(ms) && ms > 0 ? ms / 1000 : 0;
}
