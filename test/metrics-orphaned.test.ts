/**
 * The backlog metrics after an endpoint is removed from WATCHER_WEBHOOK_URLS. The deliveries still
 * pending to it stay in the store, to be sent if it is configured again within
 * WATCHER_WEBHOOK_MAX_AGE, and are given up after that (README, "Durable state
 * and replay"); the pending gauge and the oldest pending age, which operators alert on, count only
 * the endpoints configured now, and `webhook_deliveries_orphaned` shows the stranded ones.
 *
 * A daemon with two endpoints writes its events and deliveries (as its check results do) on a data
 * directory, or a PostgreSQL database, and stops; a daemon on the same store with one of the two
 * is scraped. Neither is started: nothing is checked or sent, so the store holds still, and the
 * clock is injected, so the ages are exact.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { type Env, loadConfig } from '../src/config/config.js';
import { Daemon } from '../src/main.js';
import { move, plainEvent } from './helpers/changes.js';
import { describeWithPostgres } from './helpers/postgres.js';

const P = 'sbg_export_watcher_';
const T0 = 1_700_000_000_000;
const MINUTE = 60_000;
// Nothing listens there, and nothing is sent: neither daemon starts.
const KEPT = 'http://127.0.0.1:9/kept';
const REMOVED = 'http://127.0.0.1:9/removed';

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** The value of an unlabelled sample, or of one with exactly these labels; undefined when absent. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

async function open(env: Env, urls: readonly string[], now: () => number): Promise<Daemon> {
  const config = loadConfig(
    {
      SB_API_ENDPOINT: 'http://127.0.0.1:9/',
      SB_AUTH_TOKEN: 'tok_metrics_orphaned',
      WATCHER_WEBHOOK_URLS: urls.join(','),
      ...env,
    },
    { requireToken: true },
  );
  const daemon = await Daemon.open(config, { log: pino({ level: 'silent' }), now });
  cleanups.push(() => daemon.stop(0));
  return daemon;
}

/**
 * `old` completes two hours before the scrape, and only the removed endpoint has not taken it;
 * `recent` completes ten minutes before, and neither has. Then the daemon restarts without the
 * removed endpoint: its two deliveries are orphaned, the kept endpoint's one is the backlog.
 */
async function restartWithoutOne(env: Env): Promise<{ text: string; second: Daemon }> {
  let now = T0 - 2 * 60 * MINUTE;
  const first = await open(env, [KEPT, REMOVED], () => now);
  const store = first.store;
  const [kept] = first.deliveries.endpoints;
  await store.addExports([{ ids: ['old', 'recent'], metadata: null }], now);
  await store.commitChanges(
    [move('old', 'UNKNOWN', 'COMPLETED', now)],
    plainEvent,
    first.deliveries.endpoints,
    now,
  );
  await store.recordAttempts([
    {
      eventId: 'evt_old_completed',
      endpointKey: kept?.key ?? '',
      seriesStartedAt: now,
      status: 'delivered',
      attempts: 1,
      nextAttemptAt: null,
      lastStatus: 204,
      lastError: null,
      finishedAt: now,
    },
  ]);
  now = T0 - 10 * MINUTE;
  await store.commitChanges(
    [move('recent', 'UNKNOWN', 'COMPLETED', now)],
    plainEvent,
    first.deliveries.endpoints,
    now,
  );
  // Before the restart, every pending delivery is to an endpoint configured.
  let text = (await first.metrics.render()).body;
  expect(sample(text, `${P}webhook_deliveries_pending`)).toBe(3);
  expect(sample(text, `${P}webhook_deliveries_orphaned`)).toBe(0);
  expect(sample(text, `${P}webhook_oldest_pending_age_seconds`)).toBe(110 * 60);
  await first.stop(0);

  now = T0;
  const second = await open(env, [KEPT], () => now);
  text = (await second.metrics.render()).body;
  return { text, second };
}

function expectOnlyConfiguredInBacklog(text: string): void {
  // The backlog is the kept endpoint's one delivery, of the recent event.
  expect(sample(text, `${P}webhook_deliveries_pending`)).toBe(1);
  expect(sample(text, `${P}webhook_oldest_pending_age_seconds`)).toBe(10 * 60);
  // The removed endpoint's two wait for it, shown apart; stored, they are pending all the same.
  expect(sample(text, `${P}webhook_deliveries_orphaned`)).toBe(2);
  expect(sample(text, `${P}webhook_deliveries`, '{status="pending"}')).toBe(3);
  expect(sample(text, `${P}webhook_deliveries`, '{status="delivered"}')).toBe(1);
}

/**
 * With WATCHER_WEBHOOK_MAX_AGE at 1 h, the minute's tidying gives up the removed endpoint's
 * delivery of `old` (its series started 2 h ago), not that of `recent` (10 min ago), nor the kept
 * endpoint's: one orphaned delivery is left, and the given-up one is stored as failed.
 */
async function expectOldOrphanGivenUp(env: Env): Promise<void> {
  const { second } = await restartWithoutOne({ ...env, WATCHER_WEBHOOK_MAX_AGE: '1h' });
  const keys = second.deliveries.endpoints.map((e) => e.key);
  await second.tidy();
  // Read from the store: the scrape just made shares its reading for 500 ms of real time.
  const counts = { pending: 2, orphaned: 1, failed: 1, delivered: 1 };
  expect(await second.store.deliveryCounts(keys)).toMatchObject(counts);
  const old = await second.store.getEvent('evt_old_completed');
  const byStatus = Object.fromEntries(old?.deliveries.map((d) => [d.status, d.endpointLabel]) ?? []);
  expect(byStatus).toEqual({ delivered: KEPT, failed: REMOVED });
  // Counted with the deliveries the engine gives up, under the endpoint's stored label.
  const total = (text: string) =>
    sample(text, `${P}webhook_deliveries_total`, `{endpoint="${REMOVED}",result="given_up"}`);
  expect(total((await second.metrics.render()).body)).toBe(1);
  // Nothing else is old enough: a second round gives up nothing more.
  await second.tidy();
  expect(await second.store.deliveryCounts(keys)).toMatchObject(counts);
  expect(total((await second.metrics.render()).body)).toBe(1);
}

describe('backlog metrics after a restart with an endpoint removed', () => {
  it('SQLite: deliveries that waited WATCHER_WEBHOOK_MAX_AGE for a removed endpoint are given up', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'metrics-orphaned-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    await expectOldOrphanGivenUp({ WATCHER_DATA_DIR: dir });
  });

  it('SQLite: count only the endpoints configured now, and the orphaned deliveries apart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'metrics-orphaned-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    expectOnlyConfiguredInBacklog((await restartWithoutOne({ WATCHER_DATA_DIR: dir })).text);
  });
});

await describeWithPostgres(
  'backlog metrics after a restart with an endpoint removed, PostgreSQL',
  (server) => {
    it('count only the endpoints configured now, and the orphaned deliveries apart', async () => {
      const url = await server.createDatabase();
      cleanups.push(() => server.dropDatabase(url));
      expectOnlyConfiguredInBacklog((await restartWithoutOne({ WATCHER_DATABASE_URL: url })).text);
    });

    it('give up the deliveries that waited WATCHER_WEBHOOK_MAX_AGE for a removed endpoint', async () => {
      const url = await server.createDatabase();
      cleanups.push(() => server.dropDatabase(url));
      await expectOldOrphanGivenUp({ WATCHER_DATABASE_URL: url });
    });
  },
);
