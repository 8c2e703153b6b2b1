/**
 * A scrape whose store-backed sources fail or never answer (PostgreSQL unreachable, or a
 * silent network) is still answered: the gauges read from the store are left out, the rest
 * (the role among them) is served. No database needed: the sources are fakes.
 */
import { afterEach, expect, it, vi } from 'vitest';
import { Metrics } from '../src/http/metrics.js';
import type { LeaderRole } from '../src/store/leader.js';

afterEach(() => {
  vi.useRealTimers();
});

const P = 'sbg_export_watcher_';

function metricsWith(read: () => Promise<never>, role: LeaderRole = 'disconnected'): Metrics {
  return new Metrics({
    exportsByState: read,
    importsByState: read,
    deliveries: read,
    rateLimit: () => ({ budget: 10, spent: 0, platformRemaining: undefined }),
    role: () => role,
  });
}

it('answers a scrape when the store rejects, without the gauges read from it', async () => {
  const metrics = metricsWith(() => Promise.reject(new Error('Connection terminated unexpectedly')));
  const { body } = await metrics.render();
  expect(body).toContain(`${P}leader{role="disconnected"} 1`);
  expect(body).toContain('process_cpu_user_seconds_total');
  // Left out, not shown as zeros that would read as "nothing pending".
  expect(body).not.toMatch(new RegExp(`^${P}exports\\{`, 'm'));
  expect(body).not.toMatch(new RegExp(`^${P}webhook_deliveries_pending `, 'm'));
  expect(body).not.toMatch(new RegExp(`^${P}webhook_deliveries_orphaned `, 'm'));
  expect(body).not.toMatch(new RegExp(`^${P}webhook_oldest_pending_age_seconds `, 'm'));
});

it('answers a scrape within the store timeout when the store never answers', async () => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
  const metrics = metricsWith(() => new Promise<never>(() => undefined));
  let done = false;
  const rendering = metrics.render().then((r) => {
    done = true;
    return r;
  });
  // A scrape must not wait on the store for longer than a scraper's usual timeout (10 s).
  await vi.advanceTimersByTimeAsync(5000);
  expect(done).toBe(true);
  const { body } = await rendering;
  expect(body).toContain(`${P}leader{role="disconnected"} 1`);
});

it('shows the store-backed gauges again once the store answers', async () => {
  let fail = true;
  const counts = { UNKNOWN: 1, PENDING: 0, RUNNING: 0, COMPLETED: 0, FAILED: 0, LOST: 0 };
  const metrics = new Metrics({
    exportsByState: async () => {
      if (fail) throw new Error('down');
      return counts;
    },
    deliveries: async () => {
      if (fail) throw new Error('down');
      return { pending: 2, delivered: 0, failed: 0, gone: 0, orphaned: 0, oldestPendingAt: null };
    },
    rateLimit: () => ({ budget: 10, spent: 0, platformRemaining: undefined }),
  });
  expect((await metrics.render()).body).not.toMatch(new RegExp(`^${P}webhook_deliveries_pending `, 'm'));
  fail = false;
  const { body } = await metrics.render();
  expect(body).toContain(`${P}exports{state="UNKNOWN"} 1`);
  expect(body).toContain(`${P}webhook_deliveries_pending 2`);
});
