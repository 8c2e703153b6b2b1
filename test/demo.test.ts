import { Writable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { type DemoSummary, demoConfig, percentile, runDemo } from '../src/cli/demo.js';
import { DEFAULT_EVENT_TYPES } from '../src/delivery/events.js';
import { ConfigError } from '../src/shared/errors.js';

describe('demo', () => {
  it('runs the simulator, the daemon and a verifying receiver to the end, and sums it up', async () => {
    let out = '';
    const sink = new Writable({
      write(chunk, _encoding, done) {
        out += chunk;
        done();
      },
    });
    const code = await runDemo({
      exports: 40,
      unknown: 2,
      settings: { pollInterval: '200ms', rateBudget: '1000', rateWindow: '60s' },
      json: true,
      out: sink,
      tty: false,
      timing: { pendingMs: [100, 300], runningMs: [200, 800] },
    });
    expect(code).toBe(0);
    const summary = JSON.parse(out.trim()) as DemoSummary;
    expect(summary.outcomes.COMPLETED + summary.outcomes.FAILED).toBe(40);
    expect(summary.outcomes.LOST).toBe(2);
    expect(summary.webhooks_delivered).toBe(42);
    expect(summary.webhooks_verified).toBe(summary.webhook_attempts);
    expect(summary.checks_after_terminal).toBe(0);
    expect(summary.rate_limited_429).toBe(0);
    expect(summary.max_ids_per_bulk_call).toBeLessThanOrEqual(100);
    expect(summary.requests_spent).toBe(summary.bulk_calls);
    expect(summary.detection_latency_ms.p50).toBeGreaterThanOrEqual(0);
    expect(summary.detection_latency_ms.p99).toBeGreaterThanOrEqual(summary.detection_latency_ms.p50);
  });

  describe('its settings', () => {
    afterEach(() => {
      vi.unstubAllEnvs();
    });
    const pieces = {
      endpoint: 'http://127.0.0.1:1/v2',
      webhookUrl: 'http://127.0.0.1:2/',
      secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
    };

    it('are its own: the environment is not read', () => {
      vi.stubEnv('WATCHER_WEBHOOK_EVENTS', 'export.completed');
      vi.stubEnv('WATCHER_POLL_INTERVAL', '10s');
      vi.stubEnv('LOG_LEVEL', 'debug');
      const config = demoConfig({}, pieces);
      expect(config.pollIntervalMs).toBe(1000);
      expect(config.logLevel).toBe('error');
      // The daemon's default: the outcomes of both kinds (the demo has exports only).
      expect(config.webhook.events).toEqual(new Set(DEFAULT_EVENT_TYPES));
      expect(
        demoConfig({ pollInterval: '200ms', rateBudget: '900', rateWindow: '1m' }, pieces),
      ).toMatchObject({
        pollIntervalMs: 200,
        rateBudget: 900,
        rateWindowMs: 60_000,
      });
    });

    it('a bad one is reported by its flag, before anything starts', async () => {
      const error = await runDemo({
        exports: 1,
        unknown: 0,
        settings: { pollInterval: 'often', rateBudget: '0' },
        json: true,
        out: process.stdout,
        tty: false,
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).problems).toEqual([
        expect.stringMatching(/^--poll-interval: expected a duration .* got "often"$/),
        expect.stringMatching(/^--rate-budget: expected a whole number from 1 to 1000000, got "0"$/),
      ]);
    });
  });

  it('computes percentiles by the nearest-rank method', () => {
    expect(percentile([], 50)).toBe(0);
    expect(percentile([5, 1, 3, 2, 4], 50)).toBe(3);
    expect(percentile([5, 1, 3, 2, 4], 100)).toBe(5);
    expect(
      percentile(
        Array.from({ length: 100 }, (_, i) => i + 1),
        99,
      ),
    ).toBe(99);
  });
});
