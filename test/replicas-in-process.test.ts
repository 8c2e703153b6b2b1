/**
 * Replicas of the daemon in this process (`Daemon.open` on one PostgreSQL database), for what the
 * spawned ones in `test/replicas.test.ts` cannot show: a leader whose event loop is blocked past
 * its lease, with calls waiting in its limiter when it thaws. Each replica's platform requests
 * pass through a dispatcher that records, as each request goes out, the replica's role at that
 * moment (by the election's own clock, as `/readyz` reads it). And a follower that is stopping
 * (held by a request still open on its control API) while the leader stops: it must not take the
 * lock it will not use, which would keep every other replica from leading until its stop ends.
 *
 * Needs `WATCHER_TEST_DATABASE_URL` (see `test/helpers/postgres.ts`).
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import pino from 'pino';
import { Agent, type Dispatcher } from 'undici';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { loadConfig } from '../src/config/config.js';
import { Simulator } from '../src/dev/simulator.js';
import { Daemon, type DaemonOptions } from '../src/main.js';
import { describeWithPostgres } from './helpers/postgres.js';

const LEADER_TIMEOUT_MS = 3000;

interface Sent {
  path: string;
  role: string;
  at: number;
}

/** A dispatcher that records each request as it goes out, with the role `role()` reads then. */
function recordingDispatcher(sent: Sent[], role: () => string): Dispatcher {
  class Recording extends Agent {
    override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
      sent.push({ path: String(options.path), role: role(), at: performance.now() });
      return super.dispatch(options, handler);
    }
  }
  return new Recording();
}

async function until(test: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!test()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

await describeWithPostgres('replicas in one process', (server) => {
  let databaseUrl = '';
  let sim: Simulator;
  let simUrl = '';
  const daemons: Daemon[] = [];

  beforeEach(async () => {
    databaseUrl = await server.createDatabase();
    sim = new Simulator({ seed: 11, quota: { limit: 1_000_000, windowMs: 60_000 } });
    simUrl = await sim.start();
  });

  afterEach(async () => {
    await Promise.all(daemons.splice(0).map((d) => d.stop(1000)));
    await sim.close();
    await server.dropDatabase(databaseUrl);
  });

  async function replica(
    token: string,
    env: Record<string, string> = {},
    options: Partial<DaemonOptions> = {},
  ): Promise<{ daemon: Daemon; sent: Sent[] }> {
    const sent: Sent[] = [];
    let daemon: Daemon | undefined;
    const config = loadConfig(
      {
        SB_API_ENDPOINT: simUrl,
        SB_AUTH_TOKEN: token,
        WATCHER_DATABASE_URL: databaseUrl,
        WATCHER_LEADER_TIMEOUT: `${LEADER_TIMEOUT_MS}ms`,
        WATCHER_POLL_INTERVAL: '200ms',
        WATCHER_RATE_BUDGET: '100000',
        WATCHER_RATE_WINDOW: '60s',
        ...env,
      },
      { requireToken: true },
    );
    daemon = await Daemon.open(config, {
      log: pino({ level: 'silent' }),
      platformDispatcher: recordingDispatcher(sent, () => daemon?.role ?? 'none'),
      ...options,
    });
    daemons.push(daemon);
    return { daemon, sent };
  }

  it('a leader whose event loop was blocked past its lease sends no call that waited in its limiter', async () => {
    // 120 requests a minute: calls are spaced ~500 ms apart, so one always waits in the limiter.
    const { daemon, sent } = await replica('tok_frozen_leader', { WATCHER_RATE_BUDGET: '120' });
    await daemon.start();
    await until(() => daemon.role === 'leader', 'the replica to lead');
    const { leaseMs, serverIdleTimeoutMs } = daemon.election?.timing ?? {
      leaseMs: 0,
      serverIdleTimeoutMs: 0,
    };
    await daemon.registry.watch(sim.createExports(5, { pendingMs: 60_000 }), null);
    await until(() => sent.filter((s) => s.path.includes('/bulk/')).length >= 2, 'two checks');
    // Just after a check was answered, the next one waits out the spacing in the limiter; then the
    // event loop is blocked (a long GC pause, SIGSTOP) past the lease, and past the server's idle
    // timeout, after which another replica may hold the lock.
    let thawedAt = 0;
    await new Promise<void>((resolve) => {
      let armed = false;
      daemon.bus.on('platform.request', ({ route, outcome }) => {
        if (armed || route !== 'bulk_get' || outcome !== 'ok') return;
        armed = true;
        setTimeout(() => {
          const until = performance.now() + serverIdleTimeoutMs + 300;
          while (performance.now() < until) {
            // Blocked.
          }
          thawedAt = performance.now();
          resolve();
        }, 250);
      });
    });
    expect(serverIdleTimeoutMs).toBeGreaterThan(leaseMs);
    // The call that waited in the limiter is due at once when the loop thaws, before the election
    // can have led again (that takes round trips to the database): once a check goes out as the
    // leader again, the waiting call has been settled one way or the other.
    await until(
      () => sent.some((s) => s.at >= thawedAt && s.role === 'leader' && s.path.includes('/bulk/')),
      'a check by the leader again',
    );
    // Nothing went out while the replica was not the leader by its own clock.
    expect(sent.filter((s) => s.at >= thawedAt && s.role !== 'leader')).toEqual([]);
  }, 30_000);

  it('a replica that is stopping does not hold the lock it will not lead with', async () => {
    const a = await replica('tok_stopping_a');
    await a.daemon.start();
    await until(() => a.daemon.role === 'leader', 'a to lead');
    const b = await replica('tok_stopping_b', { WATCHER_HTTP_PORT: '0' }, { api: true });
    const api = new URL((await b.daemon.start()) as string);
    await until(() => b.daemon.role === 'follower', 'b to follow');
    // A client whose request is still coming in holds b's stop up to its deadline.
    const slow = net.connect(Number(api.port), api.hostname);
    await new Promise<void>((resolve) => slow.once('connect', () => resolve()));
    slow.write(
      'POST /v1/exports HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{',
    );
    await until(() => b.daemon.api?.stats().busy === 1, 'b to be receiving the request');
    const stoppingB = b.daemon.stop(8000);
    // b has left the election at once (a follower has nothing in flight another must wait for),
    // though its stop goes on while that request is drained.
    expect(b.daemon.election?.role).toBe('disconnected');
    // The leader stops meanwhile; then a new replica joins. b, the only other replica, would take
    // the lock within R if it were still campaigning.
    await a.daemon.stop(1000);
    const c = await replica('tok_stopping_c');
    await c.daemon.start();
    const { retryMs } = c.daemon.election?.timing ?? { retryMs: 0 };
    try {
      // c leads as soon as it has connected and tried the lock: b, stopping, does not hold it.
      await until(() => c.daemon.role === 'leader', 'c to lead', 2000 + 2 * retryMs);
    } finally {
      slow.destroy();
      await stoppingB;
    }
  }, 30_000);
});
