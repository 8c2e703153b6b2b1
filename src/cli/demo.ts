/**
 * The demo: the simulator, the daemon and a webhook receiver that verifies signatures, on
 * loopback, seeded with a few hundred exports. The exports are registered through the control
 * API like any other system would; the summary is measured at the simulator (requests, ids per
 * call, 429s) and at the receiver (deliveries, signatures, latency from the platform's
 * `finished_on` to the event's observation).
 *
 * It uses only its own settings (`DemoSettings`, from its flags): the user's environment and
 * `.env` are never read, so a token, a poll interval or an event filter meant for the real
 * platform cannot slow it down or keep it from ending.
 */
import { randomBytes } from 'node:crypto';
import type { Writable } from 'node:stream';
import { request } from 'undici';
import { type Config, loadConfig } from '../config/config.js';
import { WebhookReceiver } from '../dev/receiver.js';
import { Simulator } from '../dev/simulator.js';
import { Daemon } from '../main.js';
import { EXPORT_STATES } from '../polling/tracker.js';
import { ConfigError } from '../shared/errors.js';
import { createLogger } from '../shared/log.js';

/** The demo's own settings, as its flags give them (unset: the demo's defaults). */
export interface DemoSettings {
  /** WATCHER_POLL_INTERVAL; default 1s. */
  pollInterval?: string | undefined;
  /** WATCHER_RATE_BUDGET; default 500. */
  rateBudget?: string | undefined;
  /** WATCHER_RATE_WINDOW; default 5m. */
  rateWindow?: string | undefined;
}

export interface DemoOptions {
  exports: number;
  unknown: number;
  settings?: DemoSettings;
  json: boolean;
  out: Writable;
  tty: boolean;
  /** Simulator timing override (tests use short phases). */
  timing?: { pendingMs: [number, number]; runningMs: [number, number] };
}

export interface DemoSummary {
  exports: number;
  unknown_ids: number;
  elapsed_s: number;
  outcomes: { COMPLETED: number; FAILED: number; LOST: number };
  requests_spent: number;
  bulk_calls: number;
  mean_ids_per_bulk_call: number;
  max_ids_per_bulk_call: number;
  rate_limited_429: number;
  checks_after_terminal: number;
  webhooks_delivered: number;
  webhooks_verified: number;
  webhook_attempts: number;
  detection_latency_ms: { p50: number; p99: number; max: number };
  peak_rss_mb: number;
}

/** The flag that sets each variable, for problems with the demo's settings. */
const SETTING_FLAGS: Readonly<Record<string, string>> = {
  WATCHER_POLL_INTERVAL: '--poll-interval',
  WATCHER_RATE_BUDGET: '--rate-budget',
  WATCHER_RATE_WINDOW: '--rate-window',
};

/**
 * The demo daemon's configuration from nothing but its settings and the pieces it starts. Bad
 * settings are reported by the flag that gave them, before anything starts.
 */
export function demoConfig(
  settings: DemoSettings,
  pieces: { endpoint: string; webhookUrl: string; secret: string },
): Config {
  try {
    return loadConfig(
      {
        SB_API_ENDPOINT: pieces.endpoint,
        SB_AUTH_TOKEN: 'demo-token',
        WATCHER_POLL_INTERVAL: settings.pollInterval ?? '1s',
        WATCHER_RATE_BUDGET: settings.rateBudget ?? '500',
        WATCHER_RATE_WINDOW: settings.rateWindow ?? '5m',
        WATCHER_WEBHOOK_URLS: pieces.webhookUrl,
        WATCHER_WEBHOOK_SECRET: pieces.secret,
        WATCHER_HTTP_HOST: '127.0.0.1',
        WATCHER_HTTP_PORT: '0',
        LOG_LEVEL: 'error',
      },
      { requireToken: true },
    );
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    throw new ConfigError(
      error.problems.map((p) =>
        p.replace(/^([A-Z_]+):/, (_all, name: string) => `${SETTING_FLAGS[name] ?? name}:`),
      ),
    );
  }
}

export async function runDemo(options: DemoOptions): Promise<number> {
  const started = performance.now();
  const settings = options.settings ?? {};
  const secret = `whsec_${randomBytes(24).toString('base64')}`;
  // Checked before anything starts.
  demoConfig(settings, { endpoint: 'http://127.0.0.1/v2', webhookUrl: 'http://127.0.0.1/', secret });
  const simulator = new Simulator({
    seed: 7,
    failRate: 0.15,
    timing: options.timing ?? { pendingMs: [500, 4000], runningMs: [1000, 12000] },
  });
  const receiver = new WebhookReceiver({ secret });
  const simUrl = await simulator.start();
  const hookUrl = await receiver.start();

  const config = demoConfig(settings, { endpoint: simUrl, webhookUrl: hookUrl, secret });
  const log = createLogger({ level: config.logLevel, destination: process.stderr });
  // The demo keeps its state in memory: it must not write into the user's ./data.
  const daemon = await Daemon.open(config, { log, api: true, storage: 'memory' });
  const apiUrl = (await daemon.start()) as string;

  const ids = simulator.createExports(options.exports);
  const unknown = Array.from(
    { length: options.unknown },
    (_, i) => `unknown-${i}-${randomBytes(6).toString('hex')}`,
  );
  const all = [...ids, ...unknown];
  const say = (line: string) => {
    if (!options.json) options.out.write(`${line}\n`);
  };
  say(`simulator ${simUrl}  daemon ${apiUrl}  receiver ${hookUrl}`);
  say(`registering ${ids.length} exports and ${unknown.length} unknown ids through POST /v1/exports`);
  for (let i = 0; i < all.length; i += 1000) {
    const chunk = all.slice(i, i + 1000);
    const res = await request(`${apiUrl}/v1/exports`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ids: chunk, metadata: { source: 'demo', chunk: i / 1000 } }),
    });
    await res.body.dump();
    if (res.statusCode !== 202) throw new Error(`control API answered ${res.statusCode} to POST /v1/exports`);
  }

  const progress = async () => {
    const counts = await daemon.store.countExports();
    const stats = simulator.stats();
    const parts = EXPORT_STATES.map((s) => `${s} ${counts[s]}`).join('  ');
    const elapsed = ((performance.now() - started) / 1000).toFixed(0).padStart(3);
    return `${elapsed}s  ${parts}  | requests ${spent(stats)}  webhooks ${receiver.acceptedIds().size}`;
  };
  const timer = setInterval(
    () => {
      if (options.json) return;
      void progress().then((line) => {
        if (options.tty) options.out.write(`\r\x1b[2K${line}`);
        else options.out.write(`${line}\n`);
      });
    },
    options.tty ? 250 : 2000,
  );

  const expectedEvents = all.length;
  await daemon.scheduler.onSettled();
  await receiver.waitFor((r) => r.acceptedIds().size >= expectedEvents, 120_000).catch(() => undefined);
  clearInterval(timer);
  if (options.tty && !options.json) options.out.write(`\r\x1b[2K${await progress()}\n`);
  else say(await progress());

  const summary = await summarize(options, simulator, receiver, daemon, started);
  await daemon.stop(5000);
  await receiver.close();
  await simulator.close();

  if (options.json) options.out.write(`${JSON.stringify(summary)}\n`);
  else options.out.write(formatSummary(summary));
  const ok =
    summary.webhooks_delivered === expectedEvents &&
    summary.webhooks_verified === summary.webhook_attempts &&
    summary.checks_after_terminal === 0;
  return ok ? 0 : 1;
}

function spent(stats: ReturnType<Simulator['stats']>): number {
  return (stats.requests.bulk_get ?? 0) + (stats.requests.get ?? 0) + (stats.requests.list ?? 0);
}

async function summarize(
  options: DemoOptions,
  simulator: Simulator,
  receiver: WebhookReceiver,
  daemon: Daemon,
  started: number,
): Promise<DemoSummary> {
  const stats = simulator.stats();
  const perCall = stats.bulkIdsPerCall;
  const accepted = receiver.accepted();
  const firstById = new Map<string, (typeof accepted)[number]>();
  for (const w of accepted) if (!firstById.has(w.id)) firstById.set(w.id, w);
  // From the moment the simulator's export finished to the moment the daemon saw it.
  const latencies: number[] = [];
  for (const w of firstById.values()) {
    const body = w.json as { timestamp?: string; data?: { export_id?: string; state?: string } };
    const finished = body.data?.export_id ? simulator.finishedAt(body.data.export_id) : undefined;
    if (body.timestamp && finished !== undefined && body.data?.state !== 'LOST') {
      latencies.push(Date.parse(body.timestamp) - finished);
    }
  }
  const counts = await daemon.store.countExports();
  return {
    exports: options.exports,
    unknown_ids: options.unknown,
    elapsed_s: Math.round((performance.now() - started) / 100) / 10,
    outcomes: { COMPLETED: counts.COMPLETED, FAILED: counts.FAILED, LOST: counts.LOST },
    requests_spent: spent(stats),
    bulk_calls: perCall.length,
    mean_ids_per_bulk_call: perCall.length ? round1(perCall.reduce((a, b) => a + b, 0) / perCall.length) : 0,
    max_ids_per_bulk_call: stats.maxIdsPerBulkCall,
    rate_limited_429: stats.rateLimited,
    checks_after_terminal: stats.checksAfterTerminal,
    webhooks_delivered: firstById.size,
    webhooks_verified: receiver.received.filter((w) => w.verified === true).length,
    webhook_attempts: receiver.received.length,
    detection_latency_ms: {
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      max: percentile(latencies, 100),
    },
    peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
  };
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] ?? 0;
}

function round1(n: number): number {
  return Math.round(n * 10) / 10;
}

function formatSummary(s: DemoSummary): string {
  return `
summary
  exports                 ${s.exports} (+${s.unknown_ids} unknown ids)
  outcomes                COMPLETED ${s.outcomes.COMPLETED}, FAILED ${s.outcomes.FAILED}, LOST ${s.outcomes.LOST}
  elapsed                 ${s.elapsed_s} s
  requests spent          ${s.requests_spent} (${s.bulk_calls} bulk calls)
  ids per bulk call       mean ${s.mean_ids_per_bulk_call}, max ${s.max_ids_per_bulk_call}
  429s                    ${s.rate_limited_429}
  checks after terminal   ${s.checks_after_terminal}
  webhooks delivered      ${s.webhooks_delivered} events (${s.webhook_attempts} attempts, ${s.webhooks_verified} signatures verified)
  detection latency       p50 ${s.detection_latency_ms.p50} ms, p99 ${s.detection_latency_ms.p99} ms, max ${s.detection_latency_ms.max} ms
  peak RSS                ${s.peak_rss_mb} MB
`;
}
