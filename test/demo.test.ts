import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { type DemoSummary, percentile, runDemo } from '../src/demo.js';

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
      env: { WATCHER_POLL_INTERVAL: '200ms', WATCHER_RATE_BUDGET: '1000', WATCHER_RATE_WINDOW: '60s' },
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
