/**
 * `/metrics` of a replica that has lost its PostgreSQL connection. The README documents
 * `sbg_export_watcher_leader{role="disconnected"}` as 1 while the replica has no connection to
 * PostgreSQL; a scrape then must still be answered (with that gauge at 1, and the process metrics),
 * not fail as a whole because the store's counts cannot be read.
 */
import pino from 'pino';
import { request } from 'undici';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { loadConfig } from '../src/config/config.js';
import { Simulator } from '../src/dev/simulator.js';
import { Daemon } from '../src/main.js';
import { describeWithPostgres } from './helpers/postgres.js';
import { CuttableProxy } from './helpers/tcp-proxy.js';

async function until(test: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!test()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

await describeWithPostgres('/metrics while disconnected', (server) => {
  let databaseUrl = '';
  let sim: Simulator;
  let simUrl = '';

  beforeEach(async () => {
    databaseUrl = await server.createDatabase();
    sim = new Simulator({ seed: 11, quota: { limit: 1_000_000, windowMs: 60_000 } });
    simUrl = await sim.start();
  });

  afterEach(async () => {
    await sim.close();
    await server.dropDatabase(databaseUrl);
  });

  /** A replica with its control API, whose database is reached through a proxy the test can cut. */
  async function throughProxy(token: string): Promise<{ proxy: CuttableProxy; daemon: Daemon }> {
    const target = new URL(databaseUrl);
    const proxy = await CuttableProxy.start({ host: target.hostname, port: Number(target.port || 5432) });
    const config = loadConfig(
      {
        SB_API_ENDPOINT: simUrl,
        SB_AUTH_TOKEN: token,
        WATCHER_DATABASE_URL: proxy.via(databaseUrl),
        WATCHER_LEADER_TIMEOUT: '3000ms',
        WATCHER_HTTP_PORT: '0',
        WATCHER_POLL_INTERVAL: '200ms',
      },
      { requireToken: true },
    );
    const daemon = await Daemon.open(config, { log: pino({ level: 'silent' }), api: true });
    return { proxy, daemon };
  }

  it('answers a scrape with leader{role="disconnected"} 1 when the database is unreachable', async () => {
    const { proxy, daemon } = await throughProxy('tok_metrics_disconnected');
    try {
      const api = (await daemon.start()) as string;
      await until(() => daemon.role === 'leader', 'the replica to lead');
      const before = await request(`${api}/metrics`);
      expect(before.statusCode).toBe(200);
      expect(await before.body.text()).toContain('sbg_export_watcher_leader{role="leader"} 1');
      // The database goes away: connections are closed and new ones refused.
      await proxy.close();
      await until(() => daemon.role === 'disconnected', 'the replica to see it is disconnected');
      const ready = await request(`${api}/readyz`);
      expect(ready.statusCode).toBe(503);
      await ready.body.text();
      const scrape = await request(`${api}/metrics`);
      const text = await scrape.body.text();
      expect({ status: scrape.statusCode, head: text.slice(0, 200) }).toMatchObject({ status: 200 });
      expect(text).toContain('sbg_export_watcher_leader{role="disconnected"} 1');
    } finally {
      await daemon.stop(1000);
    }
  }, 30_000);

  it('answers a scrape within seconds when the network to the database goes silent', async () => {
    const { proxy, daemon } = await throughProxy('tok_metrics_silent');
    try {
      const api = (await daemon.start()) as string;
      await until(() => daemon.role === 'leader', 'the replica to lead');
      expect((await (await request(`${api}/metrics`)).body.text()).length).toBeGreaterThan(0);
      proxy.cut();
      await until(() => daemon.role === 'disconnected', 'the replica to see it is disconnected');
      const started = performance.now();
      let outcome: string;
      try {
        const scrape = await request(`${api}/metrics`, { headersTimeout: 8000, bodyTimeout: 8000 });
        const text = await scrape.body.text();
        outcome = `${scrape.statusCode} ${text.includes('sbg_export_watcher_leader{role="disconnected"} 1')}`;
      } catch (error) {
        outcome = `no answer after ${Math.round(performance.now() - started)} ms: ${(error as Error).name}`;
      }
      expect(outcome).toBe('200 true');
    } finally {
      await proxy.close();
      await daemon.stop(1000);
    }
  }, 40_000);
});
