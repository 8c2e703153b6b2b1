/**
 * The metrics module: events on a `Bus` and scrape-time sources in, Prometheus text out. Unit
 * tests emit the events by hand and parse the rendered text; the last block wires a real
 * PlatformClient and DeliveryEngine (on an in-memory SqliteStore) over loopback HTTP to the
 * simulator and receivers, so the event payloads are checked against the code that emits them.
 */
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { register as globalRegister } from 'prom-client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DeliveryEngine } from '../src/delivery/engine.js';
import { eventForTransition } from '../src/delivery/events.js';
import { parseSecret } from '../src/delivery/signing.js';
import { WebhookReceiver } from '../src/dev/receiver.js';
import { Simulator } from '../src/dev/simulator.js';
import {
  BULK_IDS_BUCKETS,
  DURATION_BUCKETS,
  METRIC_DESCRIPTIONS,
  METRIC_PREFIX,
  Metrics,
  type MetricsSources,
  type RateLimitSource,
} from '../src/http/metrics.js';
import { PlatformClient } from '../src/platform/platform-client.js';
import { RateLimiter } from '../src/platform/rate-limiter.js';
import { EXPORT_STATES, type ExportState, type Transition } from '../src/polling/tracker.js';
import { Bus } from '../src/shared/bus.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import type { DeliveryCounts } from '../src/store/store.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a text exposition (no escapes in our label values, so a simple split does). */
function samples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"/g)) {
      labels[pair[1]!] = pair[2]!;
    }
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** `# TYPE` and `# HELP` lines by metric name. */
function declarations(text: string): Map<string, { type?: string; help?: string }> {
  const out = new Map<string, { type?: string; help?: string }>();
  for (const m of text.matchAll(/^# (TYPE|HELP) (\S+) (.*)$/gm)) {
    const entry = out.get(m[2]!) ?? {};
    if (m[1] === 'TYPE') entry.type = m[3]!;
    else entry.help = m[3]!;
    out.set(m[2]!, entry);
  }
  return out;
}

/** The one sample with exactly these labels; fails when there is none or more than one. */
function value(text: string, name: string, labels: Record<string, string> = {}): number {
  const found = samples(text).filter(
    (s) =>
      s.name === name &&
      Object.keys(s.labels).length === Object.keys(labels).length &&
      Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (found.length !== 1) throw new Error(`${found.length} samples of ${name} ${JSON.stringify(labels)}`);
  return found[0]!.value;
}

const has = (text: string, name: string) => samples(text).some((s) => s.name === name);

const zeroStates = (): Record<ExportState, number> =>
  Object.fromEntries(EXPORT_STATES.map((s) => [s, 0])) as Record<ExportState, number>;

const noDeliveries = (): DeliveryCounts => ({
  pending: 0,
  delivered: 0,
  failed: 0,
  gone: 0,
  orphaned: 0,
  oldestPendingAt: null,
});

const NOW = 1_700_000_000_000;

/** Sources backed by plain mutable fields, so a test changes them between scrapes. */
function fakeSources() {
  const state = {
    counts: zeroStates(),
    rate: { budget: 500, spent: 0, platformRemaining: undefined } as RateLimitSource,
    deliveries: noDeliveries(),
    now: NOW,
  };
  const sources: MetricsSources = {
    exportsByState: async () => state.counts,
    rateLimit: () => state.rate,
    deliveries: async () => state.deliveries,
    now: () => state.now,
  };
  return { state, sources };
}

/** A Metrics on fake sources, attached to a fresh bus whose listener failures are recorded. */
function attached(sources: MetricsSources = fakeSources().sources) {
  const warnings: string[] = [];
  const bus = new Bus(pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) }));
  const metrics = new Metrics(sources);
  metrics.attach(bus);
  return { metrics, bus, warnings };
}

async function scrape(metrics: Metrics): Promise<string> {
  return (await metrics.render()).body;
}

const P = METRIC_PREFIX;
const HOOK = 'https://hooks.example.com/sbg';

function transition(from: ExportState, to: ExportState): Transition {
  return { exportId: 'exp-1', from, to, at: NOW, export: null, error: null };
}

function attempt(endpoint: string, outcome: 'success' | 'failure' | 'gone', durationMs: number) {
  return {
    endpoint,
    webhookId: 'evt_x_completed',
    attempt: 1,
    outcome,
    status: outcome === 'success' ? 200 : outcome === 'gone' ? 410 : 500,
    code: outcome === 'failure' ? 'WEBHOOK_REJECTED' : undefined,
    durationMs,
  };
}

/** Emits every event the metrics follow at least once, so every metric has samples. */
function feedEverything(bus: Bus): void {
  bus.emit('transition', transition('PENDING', 'RUNNING'));
  bus.emit('transition', { ...transition('RUNNING', 'COMPLETED'), kind: 'import' });
  bus.emit('check.result', { ok: true });
  bus.emit('platform.request', { route: 'bulk_get', outcome: 'ok', durationMs: 120 });
  bus.emit('platform.request', { route: 'bulk_get', outcome: 'rate_limited', durationMs: 30 });
  bus.emit('platform.bulk', { ids: 50 });
  bus.emit('platform.bulk_mismatch', { asked: 100, items: 1 });
  bus.emit('delivery.attempt', attempt(HOOK, 'success', 40));
  bus.emit('delivery.finished', { endpoint: HOOK, outcome: 'delivered' });
}

describe('exports by state', () => {
  it('reports every state from the source at each scrape, zeros included', async () => {
    const { state, sources } = fakeSources();
    const metrics = new Metrics(sources);
    state.counts = { ...zeroStates(), PENDING: 3, RUNNING: 2, COMPLETED: 7 };
    let text = await scrape(metrics);
    expect(declarations(text).get(`${P}exports`)?.type).toBe('gauge');
    const got = Object.fromEntries(EXPORT_STATES.map((s) => [s, value(text, `${P}exports`, { state: s })]));
    expect(got).toEqual({ UNKNOWN: 0, PENDING: 3, RUNNING: 2, COMPLETED: 7, FAILED: 0, LOST: 0 });

    state.counts = { ...zeroStates(), COMPLETED: 12 };
    text = await scrape(metrics);
    expect(value(text, `${P}exports`, { state: 'RUNNING' })).toBe(0);
    expect(value(text, `${P}exports`, { state: 'COMPLETED' })).toBe(12);
  });
});

describe('transitions', () => {
  it("counts each from/to pair of the 'transition' events", async () => {
    const { metrics, bus } = attached();
    bus.emit('transition', transition('PENDING', 'RUNNING'));
    bus.emit('transition', transition('PENDING', 'RUNNING'));
    bus.emit('transition', transition('PENDING', 'COMPLETED'));
    const text = await scrape(metrics);
    const name = `${P}export_transitions_total`;
    expect(declarations(text).get(name)?.type).toBe('counter');
    expect(value(text, name, { from: 'PENDING', to: 'RUNNING' })).toBe(2);
    expect(value(text, name, { from: 'PENDING', to: 'COMPLETED' })).toBe(1);
    expect(samples(text).filter((s) => s.name === name)).toHaveLength(2);
  });

  it('counts nothing before attach(bus)', async () => {
    const bus = new Bus();
    const metrics = new Metrics(fakeSources().sources);
    bus.emit('transition', transition('PENDING', 'RUNNING'));
    metrics.attach(bus);
    bus.emit('transition', transition('RUNNING', 'FAILED'));
    const text = await scrape(metrics);
    expect(samples(text).filter((s) => s.name === `${P}export_transitions_total`)).toEqual([
      { name: `${P}export_transitions_total`, labels: { from: 'RUNNING', to: 'FAILED' }, value: 1 },
    ]);
  });
});

describe('platform requests', () => {
  it('counts requests by route and outcome, and 429s on their own', async () => {
    const { metrics, bus } = attached();
    bus.emit('platform.request', { route: 'bulk_get', outcome: 'ok', durationMs: 120 });
    bus.emit('platform.request', { route: 'bulk_get', outcome: 'ok', durationMs: 80 });
    bus.emit('platform.request', { route: 'bulk_get', outcome: 'rate_limited', durationMs: 30 });
    bus.emit('platform.request', { route: 'get', outcome: 'timeout', durationMs: 30_000 });
    bus.emit('platform.request', { route: 'rate_limit', outcome: 'ok', durationMs: 5 });
    const text = await scrape(metrics);
    const req = `${P}platform_requests_total`;
    expect(declarations(text).get(req)?.type).toBe('counter');
    expect(value(text, req, { route: 'bulk_get', outcome: 'ok' })).toBe(2);
    expect(value(text, req, { route: 'bulk_get', outcome: 'rate_limited' })).toBe(1);
    expect(value(text, req, { route: 'get', outcome: 'timeout' })).toBe(1);
    expect(value(text, req, { route: 'rate_limit', outcome: 'ok' })).toBe(1);
    expect(declarations(text).get(`${P}platform_rate_limited_total`)?.type).toBe('counter');
    expect(value(text, `${P}platform_rate_limited_total`)).toBe(1);
  });

  it('records request durations in seconds, by route, in buckets from 10 ms to 60 s', async () => {
    const { metrics, bus } = attached();
    bus.emit('platform.request', { route: 'bulk_get', outcome: 'ok', durationMs: 30 });
    bus.emit('platform.request', { route: 'bulk_get', outcome: 'ok', durationMs: 120 });
    bus.emit('platform.request', { route: 'bulk_get', outcome: 'server_error', durationMs: 45_000 });
    bus.emit('platform.request', { route: 'get', outcome: 'ok', durationMs: 2500 });
    const text = await scrape(metrics);
    const h = `${P}platform_request_duration_seconds`;
    expect(declarations(text).get(h)?.type).toBe('histogram');
    const bucket = (route: string, le: string) => value(text, `${h}_bucket`, { route, le });
    expect(bucket('bulk_get', '0.01')).toBe(0);
    expect(bucket('bulk_get', '0.05')).toBe(1);
    expect(bucket('bulk_get', '0.25')).toBe(2);
    expect(bucket('bulk_get', '30')).toBe(2);
    expect(bucket('bulk_get', '60')).toBe(3);
    expect(bucket('bulk_get', '+Inf')).toBe(3);
    expect(value(text, `${h}_count`, { route: 'bulk_get' })).toBe(3);
    expect(value(text, `${h}_sum`, { route: 'bulk_get' })).toBeCloseTo(45.15, 9);
    expect(bucket('get', '1')).toBe(0);
    expect(bucket('get', '2.5')).toBe(1);
    expect(value(text, `${h}_sum`, { route: 'get' })).toBeCloseTo(2.5, 9);
    const les = samples(text)
      .filter((s) => s.name === `${h}_bucket` && s.labels.route === 'get')
      .map((s) => s.labels.le);
    expect(les).toEqual([...DURATION_BUCKETS.map(String), '+Inf']);
    expect(DURATION_BUCKETS[0]).toBe(0.01);
    expect(DURATION_BUCKETS.at(-1)).toBe(60);
  });

  it("records ids per bulk call ('platform.bulk') in buckets 1, 5, 10, 25, 50, 75, 100", async () => {
    const { metrics, bus } = attached();
    for (const ids of [1, 7, 100, 100]) bus.emit('platform.bulk', { ids });
    const text = await scrape(metrics);
    const h = `${P}platform_bulk_call_ids`;
    expect(declarations(text).get(h)?.type).toBe('histogram');
    const buckets = Object.fromEntries(
      samples(text)
        .filter((s) => s.name === `${h}_bucket`)
        .map((s) => [s.labels.le, s.value]),
    );
    expect(buckets).toEqual({ '1': 1, '5': 1, '10': 2, '25': 2, '50': 2, '75': 2, '100': 4, '+Inf': 4 });
    expect(BULK_IDS_BUCKETS).toEqual([1, 5, 10, 25, 50, 75, 100]);
    expect(value(text, `${h}_count`)).toBe(4);
    expect(value(text, `${h}_sum`)).toBe(208);
  });

  it('takes odd numbers without a listener throwing, counting a bad duration as 0', async () => {
    const { metrics, bus, warnings } = attached();
    bus.emit('platform.request', { route: 'get', outcome: 'ok', durationMs: Number.NaN });
    bus.emit('platform.request', { route: 'get', outcome: 'ok', durationMs: -3 });
    bus.emit('platform.bulk', { ids: Number.NaN });
    bus.emit('platform.bulk', { ids: -1 });
    bus.emit('delivery.attempt', attempt(HOOK, 'success', Number.POSITIVE_INFINITY));
    expect(warnings).toEqual([]);
    const text = await scrape(metrics);
    expect(value(text, `${P}platform_requests_total`, { route: 'get', outcome: 'ok' })).toBe(2);
    expect(value(text, `${P}platform_request_duration_seconds_sum`, { route: 'get' })).toBe(0);
    expect(value(text, `${P}platform_bulk_call_ids_count`)).toBe(0);
    expect(value(text, `${P}webhook_attempt_duration_seconds_sum`, { endpoint: HOOK })).toBe(0);
  });
});

describe('bulk answers that do not match the ids asked', () => {
  it('counts fewer and more items apart', async () => {
    const { metrics, bus } = attached();
    bus.emit('platform.bulk_mismatch', { asked: 100, items: 1 });
    bus.emit('platform.bulk_mismatch', { asked: 100, items: 0 });
    bus.emit('platform.bulk_mismatch', { asked: 2, items: 300_000 });
    const text = await scrape(metrics);
    expect(text).toContain(`${P}platform_bulk_answer_mismatch_total{kind="fewer_items"} 2`);
    expect(text).toContain(`${P}platform_bulk_answer_mismatch_total{kind="more_items"} 1`);
  });
});

describe('rate limit gauges', () => {
  it("show the platform's remaining quota and this daemon's own budget left", async () => {
    const { state, sources } = fakeSources();
    const metrics = new Metrics(sources);
    const remaining = `${P}platform_rate_limit_remaining`;
    const budget = `${P}rate_budget_remaining`;

    let text = await scrape(metrics);
    expect(declarations(text).get(remaining)?.type).toBe('gauge');
    expect(declarations(text).get(budget)?.type).toBe('gauge');
    // Unknown until the platform reports it: no sample, rather than a made-up 0.
    expect(has(text, remaining)).toBe(false);
    expect(value(text, budget)).toBe(500);

    state.rate = { budget: 500, spent: 120, platformRemaining: 830 };
    text = await scrape(metrics);
    expect(value(text, remaining)).toBe(830);
    expect(value(text, budget)).toBe(380);

    // Calls in flight when a window ends can leave spent above the budget; never negative.
    state.rate = { budget: 500, spent: 503, platformRemaining: undefined };
    text = await scrape(metrics);
    expect(has(text, remaining)).toBe(false);
    expect(value(text, budget)).toBe(0);
  });

  it('reads a real RateLimiter snapshot', async () => {
    // A large budget keeps the limiter's spacing between calls short.
    const limiter = new RateLimiter({ budget: 1000, windowMs: 60_000 });
    try {
      const metrics = new Metrics({
        ...fakeSources().sources,
        rateLimit: () => limiter.snapshot(),
      });
      limiter.observe({ limit: 1000, remaining: 640 });
      await limiter.schedule(async () => undefined);
      await limiter.schedule(async () => undefined);
      const text = await scrape(metrics);
      expect(value(text, `${P}rate_budget_remaining`)).toBe(998);
      expect(value(text, `${P}platform_rate_limit_remaining`)).toBe(638);
    } finally {
      await limiter.stop();
    }
  });

  // README: "Absent until the platform reports it, and after a window ends until it reports
  // again." When the platform says nothing is left and names no reset, the limiter lets one probe
  // call go a second later by setting its own figure to 1: the gauge must not show that 1, which
  // the platform never reported (it said 0, and nothing since).
  it('never shows a remaining quota the platform did not report', async () => {
    vi.useFakeTimers({ now: NOW });
    const limiter = new RateLimiter({ budget: 100, windowMs: 300_000 });
    try {
      const metrics = new Metrics({
        exportsByState: async () => zeroStates(),
        deliveries: async () => noDeliveries(),
        rateLimit: () => limiter.snapshot(),
      });
      const remaining = `${P}platform_rate_limit_remaining`;
      // An answer that says nothing is left, without a reset (a gateway's headers, say).
      limiter.observe({ limit: 1000, remaining: 0 });
      expect(value(await scrape(metrics), remaining)).toBe(0);
      // The limiter's probe timer fires; no call is waiting, so none starts.
      await vi.advanceTimersByTimeAsync(1500);
      const text = await scrape(metrics);
      // The platform has said 0 and nothing since: 0, or absent (unknown). Not 1.
      const shown = has(text, remaining) ? value(text, remaining) : undefined;
      expect(shown === undefined || shown === 0, `gauge shows: ${shown}`).toBe(true);
    } finally {
      await limiter.stop();
      vi.useRealTimers();
    }
  });
});

describe('webhook deliveries', () => {
  it('counts attempts and finished deliveries by endpoint, and records attempt durations', async () => {
    const { metrics, bus } = attached();
    const other = 'http://127.0.0.1:9000/hooks';
    bus.emit('delivery.attempt', attempt(HOOK, 'failure', 15_000));
    bus.emit('delivery.attempt', attempt(HOOK, 'success', 40));
    bus.emit('delivery.attempt', attempt(other, 'gone', 3));
    bus.emit('delivery.finished', { endpoint: HOOK, outcome: 'delivered' });
    bus.emit('delivery.finished', { endpoint: HOOK, outcome: 'delivered' });
    bus.emit('delivery.finished', { endpoint: HOOK, outcome: 'given_up' });
    bus.emit('delivery.finished', { endpoint: other, outcome: 'gone' });
    // Neither is counted: they are not the ends of deliveries.
    bus.emit('delivery.attempt_started', { endpoint: HOOK });
    bus.emit('delivery.depth', { endpoint: HOOK, depth: 3 });
    const text = await scrape(metrics);

    const a = `${P}webhook_attempts_total`;
    expect(declarations(text).get(a)?.type).toBe('counter');
    expect(value(text, a, { endpoint: HOOK, outcome: 'failure' })).toBe(1);
    expect(value(text, a, { endpoint: HOOK, outcome: 'success' })).toBe(1);
    expect(value(text, a, { endpoint: other, outcome: 'gone' })).toBe(1);
    expect(samples(text).filter((s) => s.name === a)).toHaveLength(3);

    const d = `${P}webhook_deliveries_total`;
    expect(declarations(text).get(d)?.type).toBe('counter');
    expect(
      samples(text)
        .filter((s) => s.name === d)
        .map((s) => [s.labels.endpoint, s.labels.result, s.value]),
    ).toEqual([
      [HOOK, 'delivered', 2],
      [HOOK, 'given_up', 1],
      [other, 'gone', 1],
    ]);

    const h = `${P}webhook_attempt_duration_seconds`;
    expect(declarations(text).get(h)?.type).toBe('histogram');
    expect(value(text, `${h}_count`, { endpoint: HOOK })).toBe(2);
    expect(value(text, `${h}_sum`, { endpoint: HOOK })).toBeCloseTo(15.04, 9);
    expect(value(text, `${h}_bucket`, { endpoint: HOOK, le: '0.05' })).toBe(1);
    expect(value(text, `${h}_bucket`, { endpoint: HOOK, le: '20' })).toBe(2);
    expect(value(text, `${h}_bucket`, { endpoint: other, le: '0.01' })).toBe(1);
  });

  it('counts an attempt cut short here (close deadline, pause, lost leadership) as aborted, without its time', async () => {
    const { metrics, bus } = attached();
    bus.emit('delivery.attempt', { ...attempt(HOOK, 'failure', 30_000), status: 0, code: 'SHUTTING_DOWN' });
    bus.emit('delivery.attempt', attempt(HOOK, 'success', 40));
    const text = await scrape(metrics);
    const a = `${P}webhook_attempts_total`;
    expect(value(text, a, { endpoint: HOOK, outcome: 'aborted' })).toBe(1);
    expect(value(text, a, { endpoint: HOOK, outcome: 'success' })).toBe(1);
    expect(samples(text).filter((s) => s.name === a)).toHaveLength(2);
    const h = `${P}webhook_attempt_duration_seconds`;
    expect(value(text, `${h}_count`, { endpoint: HOOK })).toBe(1);
    expect(value(text, `${h}_sum`, { endpoint: HOOK })).toBeCloseTo(0.04, 9);
  });

  it("reads pending deliveries from the store's counts at scrape time", async () => {
    const { state, sources } = fakeSources();
    const metrics = new Metrics(sources);
    const g = `${P}webhook_deliveries_pending`;
    state.deliveries = { ...noDeliveries(), pending: 4, delivered: 9, oldestPendingAt: NOW - 1 };
    let text = await scrape(metrics);
    expect(declarations(text).get(g)?.type).toBe('gauge');
    expect(value(text, g)).toBe(4);
    state.deliveries = { ...noDeliveries(), delivered: 13 };
    text = await scrape(metrics);
    expect(value(text, g)).toBe(0);
  });

  it('counts the pending deliveries to endpoints no longer configured apart from the backlog', async () => {
    const { state, sources } = fakeSources();
    const metrics = new Metrics(sources);
    const pending = `${P}webhook_deliveries_pending`;
    const orphaned = `${P}webhook_deliveries_orphaned`;
    let text = await scrape(metrics);
    expect(declarations(text).get(orphaned)?.type).toBe('gauge');
    expect(value(text, orphaned)).toBe(0);
    // The store counts 5 pending, 3 of them to endpoints not configured now.
    state.deliveries = { ...noDeliveries(), pending: 5, delivered: 2, orphaned: 3, oldestPendingAt: NOW - 1 };
    text = await scrape(metrics);
    expect(value(text, pending)).toBe(2);
    expect(value(text, orphaned)).toBe(3);
    // Stored, they are pending: the statuses add up to the rows the store holds.
    expect(value(text, `${P}webhook_deliveries`, { status: 'pending' })).toBe(5);
    // Nothing pending but them: no backlog, and no oldest pending age.
    state.deliveries = { ...noDeliveries(), pending: 3, orphaned: 3, oldestPendingAt: null };
    text = await scrape(metrics);
    expect(value(text, pending)).toBe(0);
    expect(value(text, orphaned)).toBe(3);
    expect(value(text, `${P}webhook_oldest_pending_age_seconds`)).toBe(0);
  });

  it('shows the stored deliveries by status, every status always present', async () => {
    const { state, sources } = fakeSources();
    const metrics = new Metrics(sources);
    const g = `${P}webhook_deliveries`;
    let text = await scrape(metrics);
    expect(declarations(text).get(g)?.type).toBe('gauge');
    const byStatus = () =>
      Object.fromEntries(
        samples(text)
          .filter((s) => s.name === g)
          .map((s) => [s.labels.status, s.value]),
      );
    expect(byStatus()).toEqual({ pending: 0, delivered: 0, failed: 0, gone: 0 });
    state.deliveries = { pending: 2, delivered: 40, failed: 1, gone: 3, orphaned: 0, oldestPendingAt: NOW };
    text = await scrape(metrics);
    expect(byStatus()).toEqual({ pending: 2, delivered: 40, failed: 1, gone: 3 });
  });

  it('shows the age of the oldest pending event by the injected clock, 0 when none is pending', async () => {
    const { state, sources } = fakeSources();
    const metrics = new Metrics(sources);
    const g = `${P}webhook_oldest_pending_age_seconds`;
    let text = await scrape(metrics);
    expect(declarations(text).get(g)?.type).toBe('gauge');
    expect(value(text, g)).toBe(0);

    state.deliveries = { ...noDeliveries(), pending: 2, oldestPendingAt: NOW - 90_500 };
    text = await scrape(metrics);
    expect(value(text, g)).toBe(90.5);
    state.now = NOW + 3_600_000;
    text = await scrape(metrics);
    expect(value(text, g)).toBe(3_690.5);
    // A clock that stepped back never makes a negative age.
    state.now = NOW - 200_000;
    text = await scrape(metrics);
    expect(value(text, g)).toBe(0);
  });
});

describe('last successful check', () => {
  it("is 0 before the first 'check.result' success, then the Unix time in seconds of the latest", async () => {
    const { state, sources } = fakeSources();
    const { metrics, bus } = attached(sources);
    const g = `${P}last_successful_check_timestamp_seconds`;
    let text = await scrape(metrics);
    expect(declarations(text).get(g)?.type).toBe('gauge');
    expect(value(text, g)).toBe(0);

    state.now = 1_700_000_000_500;
    bus.emit('check.result', { ok: true });
    state.now = 1_700_000_060_250;
    bus.emit('check.result', { ok: true });
    state.now = 1_700_000_120_000;
    bus.emit('check.result', { ok: false, error: new Error('platform unreachable') });
    text = await scrape(metrics);
    expect(value(text, g)).toBe(1_700_000_060.25);
  });
});

describe('leader role', () => {
  it('is 1 for the current role and 0 for the others, every role present; leader without a source', async () => {
    const g = `${P}leader`;
    const roles = (text: string) =>
      Object.fromEntries(
        samples(text)
          .filter((x) => x.name === g)
          .map((x) => [x.labels.role, x.value]),
      );
    const { metrics: single } = attached(fakeSources().sources);
    expect(roles(await scrape(single))).toEqual({ leader: 1, follower: 0, disconnected: 0 });

    let role: 'leader' | 'follower' | 'disconnected' = 'follower';
    const { metrics } = attached({ ...fakeSources().sources, role: () => role });
    expect(roles(await scrape(metrics))).toEqual({ leader: 0, follower: 1, disconnected: 0 });
    role = 'disconnected';
    expect(roles(await scrape(metrics))).toEqual({ leader: 0, follower: 0, disconnected: 1 });
    role = 'leader';
    expect(roles(await scrape(metrics))).toEqual({ leader: 1, follower: 0, disconnected: 0 });
  });
});

describe('the registry', () => {
  it('serves the Prometheus text format with the default Node.js process metrics, unprefixed', async () => {
    const metrics = new Metrics(fakeSources().sources);
    const { contentType, body } = await metrics.render();
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    const decl = declarations(body);
    expect(decl.get('process_cpu_user_seconds_total')?.type).toBe('counter');
    expect(decl.get('process_resident_memory_bytes')?.type).toBe('gauge');
    expect(decl.get('nodejs_heap_size_used_bytes')?.type).toBe('gauge');
    expect(has(body, 'process_cpu_user_seconds_total')).toBe(true);
    // A value with a known answer: CPU counters count from when collection began, so may be 0.
    const started = Date.now() / 1000 - process.uptime();
    expect(Math.abs(value(body, 'process_start_time_seconds') - started)).toBeLessThan(2);
  });

  it('is per instance: two Metrics do not collide, and the global registry stays empty', async () => {
    const one = attached();
    const two = attached();
    one.bus.emit('transition', transition('RUNNING', 'FAILED'));
    one.bus.emit('platform.request', { route: 'get', outcome: 'rate_limited', durationMs: 10 });
    const [a, b] = [await scrape(one.metrics), await scrape(two.metrics)];
    expect(value(a, `${P}export_transitions_total`, { from: 'RUNNING', to: 'FAILED' })).toBe(1);
    expect(value(a, `${P}platform_rate_limited_total`)).toBe(1);
    expect(has(b, `${P}export_transitions_total`)).toBe(false);
    expect(value(b, `${P}platform_rate_limited_total`)).toBe(0);
    // Each has its own process metrics too.
    expect(declarations(b).get('process_cpu_user_seconds_total')?.type).toBe('counter');
    expect(globalRegister.getMetricsAsArray().filter((m) => m.name.startsWith(P))).toEqual([]);
  });

  it('validates its sources up front', () => {
    const { sources } = fakeSources();
    expect(() => new Metrics({ ...sources, rateLimit: undefined as never })).toThrow(
      /rateLimit must be a function, got undefined/,
    );
    expect(() => new Metrics({ ...sources, deliveries: 3 as never })).toThrow(
      /deliveries must be a function, got number/,
    );
  });
});

describe('METRIC_DESCRIPTIONS', () => {
  it('matches the registry exactly: names, types, help and label names, each with samples', async () => {
    const { state, sources } = fakeSources();
    state.rate = { budget: 500, spent: 1, platformRemaining: 900 };
    const { metrics, bus } = attached(sources);
    feedEverything(bus);
    const text = await scrape(metrics);
    const decl = declarations(text);
    const all = samples(text);

    for (const d of METRIC_DESCRIPTIONS) {
      expect(d.name.startsWith(P), d.name).toBe(true);
      expect(decl.get(d.name), d.name).toEqual({ type: d.type, help: d.help });
      const own = all.filter((s) =>
        d.type === 'histogram'
          ? [`${d.name}_bucket`, `${d.name}_sum`, `${d.name}_count`].includes(s.name)
          : s.name === d.name,
      );
      expect(own.length, `${d.name} has samples`).toBeGreaterThan(0);
      for (const s of own) {
        const names = Object.keys(s.labels).filter((l) => !(d.type === 'histogram' && l === 'le'));
        expect(names.sort(), `${s.name} labels`).toEqual([...d.labels].sort());
      }
      if (d.type === 'counter') expect(d.name.endsWith('_total'), d.name).toBe(true);
    }
    // And nothing with our prefix that the list leaves out.
    const described = new Set(METRIC_DESCRIPTIONS.map((d) => d.name));
    expect([...decl.keys()].filter((n) => n.startsWith(P) && !described.has(n))).toEqual([]);
    expect(described.size).toBe(METRIC_DESCRIPTIONS.length);
  });

  /** The `| name | type | labels | meaning |` rows of a Markdown table of our metrics. */
  function tableRows(text: string, linePrefix: string) {
    const row = new RegExp(`^${linePrefix}\\| \`(${P}[a-z_]+)\` \\| (\\w+) \\| ([^|]+) \\| (.+) \\|$`, 'gm');
    return [...text.matchAll(row)].map((m) => ({
      name: m[1],
      type: m[2],
      labels: m[3]!.trim() === 'none' ? [] : [...m[3]!.matchAll(/`(\w+)`/g)].map((l) => l[1]),
      meaning: m[4],
    }));
  }
  const expected = () => METRIC_DESCRIPTIONS.map((d) => ({ name: d.name, type: d.type, labels: d.labels }));
  const moduleTable = () => {
    const source = readFileSync(new URL('../src/http/metrics.ts', import.meta.url), 'utf8');
    return tableRows(source.slice(0, source.indexOf('*/')), ' \\* ');
  };

  it("is the list in the module's opening comment", () => {
    expect(moduleTable().map(({ meaning: _, ...rest }) => rest)).toEqual(expected());
  });

  it("is documented, row for row, in README.md's metrics table", () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const rows = tableRows(readme, '');
    expect(rows.map(({ meaning: _, ...rest }) => rest)).toEqual(expected());
    // The README copies the module's table, meanings included.
    expect(rows).toEqual(moduleTable());
  });
});

describe('wired to the real client and delivery engine over loopback HTTP', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  it('counts bulk calls, ids and 429s from PlatformClient against the simulator', async () => {
    const token = 'tok_metrics_SECRET_9c1';
    const sim = new Simulator({ seed: 3, token, quota: { limit: 5, windowMs: 60_000 } });
    const base = await sim.start();
    cleanups.push(() => sim.close());
    const limiter = new RateLimiter({ budget: 1000, windowMs: 60_000 });
    cleanups.push(() => limiter.stop());
    const bus = new Bus();
    const metrics = new Metrics({ ...fakeSources().sources, rateLimit: () => limiter.snapshot() });
    metrics.attach(bus);
    const client = new PlatformClient({
      endpoint: base,
      token,
      gate: limiter,
      userAgent: 'sbg-export-watcher/test',
      log: pino({ level: 'silent' }),
      bus,
    });
    cleanups.push(() => client.close());

    const ids = sim.createExports(7);
    await client.bulkGet(ids);
    await client.rateLimit();
    sim.consume(10);
    await expect(client.bulkGet(ids.slice(0, 2))).rejects.toMatchObject({ code: 'PLATFORM_RATE_LIMITED' });

    const text = await scrape(metrics);
    expect(value(text, `${P}platform_requests_total`, { route: 'bulk_get', outcome: 'ok' })).toBe(1);
    expect(value(text, `${P}platform_requests_total`, { route: 'rate_limit', outcome: 'ok' })).toBe(1);
    expect(value(text, `${P}platform_requests_total`, { route: 'bulk_get', outcome: 'rate_limited' })).toBe(
      1,
    );
    expect(value(text, `${P}platform_rate_limited_total`)).toBe(1);
    // Only the successful bulk call is an observation of ids per call.
    expect(value(text, `${P}platform_bulk_call_ids_count`)).toBe(1);
    expect(value(text, `${P}platform_bulk_call_ids_sum`)).toBe(7);
    expect(value(text, `${P}platform_request_duration_seconds_count`, { route: 'bulk_get' })).toBe(2);
    expect(value(text, `${P}platform_rate_limit_remaining`)).toBe(0);
    expect(text).not.toContain(token);
  });

  it('counts webhook deliveries from the store and the engine, labelled without credentials or query', async () => {
    const receiver = new WebhookReceiver({
      // First attempt of each event fails, the retry succeeds.
      respond: (_req, attemptForThisId) => (attemptForThisId === 1 ? 500 : 204),
    });
    const url = await receiver.start();
    cleanups.push(() => receiver.close());
    const gone = new WebhookReceiver({ respond: () => 410 });
    const goneUrl = await gone.start();
    cleanups.push(() => gone.close());

    const withSecrets = new URL(url);
    withSecrets.username = 'hookuser';
    withSecrets.password = 'hunter2pass';
    withSecrets.search = '?token=query-secret-123';

    const store = await openSqliteStore({ path: ':memory:' });
    cleanups.push(() => store.close());
    let now = Date.now();
    const bus = new Bus();
    const metrics = new Metrics({
      exportsByState: () => store.countExports(),
      rateLimit: () => ({ budget: 1, spent: 0, platformRemaining: undefined }),
      deliveries: () => store.deliveryCounts(),
      now: () => now,
    });
    metrics.attach(bus);
    const engine = new DeliveryEngine({
      store,
      urls: [withSecrets.toString(), goneUrl],
      secretKey: parseSecret('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'),
      timeoutMs: 5_000,
      maxAgeMs: 60_000,
      userAgent: 'sbg-export-watcher/test',
      log: pino({ level: 'silent' }),
      bus,
      retry: { minTimeoutMs: 5, maxTimeoutMs: 20 },
    });
    cleanups.push(() => engine.close(0));

    // As the daemon does: the state change, its event and a pending delivery per endpoint, at once.
    const createdAt = now;
    await store.addExports([{ ids: ['exp-1'], metadata: null }], createdAt);
    await store.commitChanges(
      [
        {
          id: 'exp-1',
          from: 'UNKNOWN',
          to: 'COMPLETED',
          at: createdAt,
          misses: 0,
          lastMiss: null,
          export: { id: 'exp-1', state: 'COMPLETED' },
          error: null,
        },
      ],
      (change, metadata) => {
        const event = eventForTransition({ ...change, exportId: change.id }, metadata);
        return event && { ...event, body: JSON.stringify(event.body) };
      },
      engine.endpoints,
      createdAt,
    );
    now = createdAt + 2_000;
    let text = await scrape(metrics);
    expect(value(text, `${P}webhook_deliveries_pending`)).toBe(2);
    expect(value(text, `${P}webhook_deliveries`, { status: 'pending' })).toBe(2);
    expect(value(text, `${P}webhook_oldest_pending_age_seconds`)).toBe(2);
    expect(value(text, `${P}exports`, { state: 'COMPLETED' })).toBe(1);

    await engine.start();
    await engine.settled();
    text = await scrape(metrics);
    // The receivers' URLs carry no credentials or query, so they are their own labels.
    const label = url;
    const goneLabel = goneUrl;
    expect(value(text, `${P}webhook_attempts_total`, { endpoint: label, outcome: 'failure' })).toBe(1);
    expect(value(text, `${P}webhook_attempts_total`, { endpoint: label, outcome: 'success' })).toBe(1);
    expect(value(text, `${P}webhook_deliveries_total`, { endpoint: label, result: 'delivered' })).toBe(1);
    expect(value(text, `${P}webhook_attempts_total`, { endpoint: goneLabel, outcome: 'gone' })).toBe(1);
    expect(value(text, `${P}webhook_deliveries_total`, { endpoint: goneLabel, result: 'gone' })).toBe(1);
    expect(value(text, `${P}webhook_attempt_duration_seconds_count`, { endpoint: label })).toBe(2);
    expect(value(text, `${P}webhook_deliveries_pending`)).toBe(0);
    expect(value(text, `${P}webhook_deliveries`, { status: 'delivered' })).toBe(1);
    expect(value(text, `${P}webhook_deliveries`, { status: 'gone' })).toBe(1);
    expect(value(text, `${P}webhook_oldest_pending_age_seconds`)).toBe(0);
    for (const secret of [
      'hookuser',
      'hunter2pass',
      'query-secret-123',
      'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
    ]) {
      expect(text).not.toContain(secret);
    }
  });
});
