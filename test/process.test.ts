/**
 * The CLI as a process against the simulator: `run` and its shutdown paths, and `watch`.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { type AddressInfo, createServer as createNetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { type ReceiverOptions, WebhookReceiver } from '../src/dev/receiver.js';
import { Simulator, type SimulatorOptions } from '../src/dev/simulator.js';
import { type CliProcess, cliCommand, cliEnv, daemonEnv, killAll, spawnCli } from './helpers/spawn.js';

const execFileAsync = promisify(execFile);
/** Runs a command on a pseudo-terminal and hangs it up (see the script). */
const HANGUP = join(import.meta.dirname, 'helpers', 'hangup.py');

const TOKEN = 'tok_process_test_7d3e';
const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const FAST = { pendingMs: [100, 200] as [number, number], runningMs: [100, 300] as [number, number] };

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  killAll();
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function simulator(options: SimulatorOptions = {}): Promise<{ sim: Simulator; url: string }> {
  const sim = new Simulator({ seed: 3, token: TOKEN, timing: FAST, ...options });
  const url = await sim.start();
  cleanups.push(() => sim.close());
  return { sim, url };
}

async function receiver(respond?: ReceiverOptions['respond']) {
  const r = new WebhookReceiver({ secret: SECRET, ...(respond ? { respond } : {}) });
  const url = await r.start();
  cleanups.push(() => r.close());
  return { receiver: r, url };
}

/** `run`'s environment here: the shared one, with this file's token and debug lines. */
function runEnv(simUrl: string, hookUrl: string, extra: Record<string, string> = {}): Record<string, string> {
  return daemonEnv(simUrl, hookUrl, SECRET, { SB_AUTH_TOKEN: TOKEN, LOG_LEVEL: 'debug', ...extra });
}

/**
 * `run` with one export, whose delivery the receiver holds without answering until `release()`;
 * resolves once that delivery has reached the receiver, which holds its answer.
 */
async function runWithHeldDelivery() {
  const { sim, url: simUrl } = await simulator();
  let release!: () => void;
  const held = new Promise<number>((resolve) => {
    release = () => resolve(204);
  });
  const { receiver: hooks, url: hookUrl } = await receiver(() => held);
  const daemon = spawnCli(
    ['run', '--id', sim.createExport()],
    runEnv(simUrl, hookUrl, { WATCHER_SHUTDOWN_TIMEOUT: '30s' }),
  );
  await hooks.waitFor((r) => r.received.length === 1, 30_000);
  return { daemon, hooks, release };
}

describe('sbg-export-watcher run', () => {
  it('warns at start of a webhook key shorter than 24 bytes, never printing it', async () => {
    const { url: simUrl } = await simulator();
    const daemon = spawnCli(
      ['run'],
      runEnv(simUrl, 'http://127.0.0.1:9/never', { WATCHER_WEBHOOK_SECRET: 'whsec_YWJj' }),
    );
    await daemon.waitForLine((l) => l.msg === 'sbg-export-watcher started');
    const warnings = daemon.lines.filter((l) => l.level === 'warn').map((l) => String(l.msg));
    expect(warnings).toEqual([
      expect.stringMatching(/^WATCHER_WEBHOOK_SECRET's key is 3 bytes: .* use 24 to 64 random bytes/),
    ]);
    expect(daemon.stdout()).not.toContain('YWJj');
    daemon.child.kill('SIGTERM');
    expect((await daemon.exited).code).toBe(0);
  });

  it('warns at start of a misspelt WATCHER_ variable, and that no webhook is sent without a URL', async () => {
    const { url: simUrl } = await simulator();
    const { WATCHER_WEBHOOK_URLS: hookUrl, ...env } = runEnv(simUrl, 'http://127.0.0.1:9/never');
    const daemon = spawnCli(['run'], {
      ...env,
      // The misspelling an operator makes: the setting it meant keeps its default (none).
      WATCHER_WEBHOOK_URL: String(hookUrl),
      WATCHER_POLL_INTERVALL: '1m',
      WATCHER_NOTHING_LIKE_ANY_SETTING: '1',
    });
    await daemon.waitForLine((l) => l.msg === 'sbg-export-watcher started');
    const warnings = daemon.lines.filter((l) => l.level === 'warn').map((l) => l.msg);
    expect(warnings).toEqual([
      'WATCHER_NOTHING_LIKE_ANY_SETTING is set but is not a variable of sbg-export-watcher; it is ignored',
      'WATCHER_POLL_INTERVALL is set but is not a variable of sbg-export-watcher; it is ignored (did you mean WATCHER_POLL_INTERVAL?)',
      'WATCHER_WEBHOOK_URL is set but is not a variable of sbg-export-watcher; it is ignored (did you mean WATCHER_WEBHOOK_URLS?)',
      'WATCHER_WEBHOOK_URLS is not set: no webhook is sent; outcomes go to the log and the control API only',
    ]);
    // The value of an unknown variable may be a secret put in the wrong place: never logged.
    expect(daemon.stdout()).not.toContain('127.0.0.1:9/never');
    daemon.child.kill('SIGTERM');
    expect((await daemon.exited).code).toBe(0);
  });

  it('watches ids from the command line, delivers, and exits 0 on SIGTERM', async () => {
    const { sim, url: simUrl } = await simulator();
    const { receiver: hooks, url: hookUrl } = await receiver();
    const ids = sim.createExports(3);
    const daemon = spawnCli(
      ['run', '--id', ids[0]!, '--id', ids[1]!, '--id', ids[2]!],
      runEnv(simUrl, hookUrl),
    );
    const listening = await daemon.waitForLine((l) => l.msg === 'control API listening');
    expect(String(listening.url)).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    await hooks.waitFor((r) => r.acceptedIds().size === 3, 30_000);
    const health = await request(`${listening.url}/healthz`);
    expect(health.statusCode).toBe(200);
    await health.body.dump();

    daemon.child.kill('SIGTERM');
    const { code } = await daemon.exited;
    expect(code).toBe(0);
    expect(daemon.lines.some((l) => l.msg === 'stopped')).toBe(true);
    expect(daemon.lines.filter((l) => l.msg === 'export state changed').length).toBeGreaterThanOrEqual(3);
    expect(daemon.stdout() + daemon.stderr()).not.toContain(TOKEN);
    expect(daemon.stdout() + daemon.stderr()).not.toContain(SECRET.slice('whsec_'.length));
  });

  it('on SIGTERM, lets a delivery in flight finish before exiting 0', async () => {
    // The delivery has reached the receiver, which holds its answer.
    const { daemon, hooks, release } = await runWithHeldDelivery();
    daemon.child.kill('SIGTERM');
    await daemon.waitForLine((l) => l.msg === 'stopping');
    expect(daemon.child.exitCode).toBeNull();
    release();
    const { code } = await daemon.exited;
    expect(code).toBe(0);
    expect(hooks.received[0]?.status).toBe(204);
    expect(daemon.lines.some((l) => l.msg === 'stopped with deliveries not done')).toBe(false);
  });

  it('on SIGTERM, gives up on stuck deliveries at WATCHER_SHUTDOWN_TIMEOUT, keeps them for the next start, and exits 0', async () => {
    const { sim, url: simUrl } = await simulator();
    const { receiver: hooks, url: hookUrl } = await receiver(() => new Promise<number>(() => undefined));
    const [id] = sim.createExports(1);
    const daemon = spawnCli(
      ['run', '--id', id!],
      runEnv(simUrl, hookUrl, { WATCHER_SHUTDOWN_TIMEOUT: '500ms' }),
    );
    await hooks.waitFor((r) => r.received.length === 1, 30_000);
    daemon.child.kill('SIGTERM');
    const { code } = await daemon.exited;
    expect(code).toBe(0);
    const line = daemon.lines.find(
      (l) => l.msg === 'state kept for the next start: watching and deliveries resume there',
    );
    expect(line).toMatchObject({ level: 'info', pending_deliveries: 1, watched: 0 });
  });

  it('on SIGTERM during start-up (the platform not answering), exits 0 within the shutdown timeout', async () => {
    // Takes every request and never answers: start-up waits on its rate-limit probe (up to 5 s).
    const silent = createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      silent.closeAllConnections();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    });
    const simUrl = `http://127.0.0.1:${(silent.address() as AddressInfo).port}/v2`;
    const { url: hookUrl } = await receiver();
    const daemon = spawnCli(
      ['run', '--id', 'never-added'],
      runEnv(simUrl, hookUrl, { WATCHER_SHUTDOWN_TIMEOUT: '500ms' }),
    );
    await daemon.waitForLine((l) => l.msg === 'control API listening');
    const signalled = performance.now();
    daemon.child.kill('SIGTERM');
    const { code } = await daemon.exited;
    expect(code).toBe(0);
    // Not held until the probe's wait runs out: the stop ends it.
    expect(performance.now() - signalled).toBeLessThan(3000);
    expect(daemon.lines.some((l) => l.msg === 'sbg-export-watcher started')).toBe(false);
    expect(
      daemon.lines.find(
        (l) => l.msg === 'stopped during start-up: the ids given on the command line were not added',
      ),
    ).toMatchObject({ level: 'warn', ids: 1 });
  });

  it('on SIGTERM while a PostgreSQL store is opening (a server that never answers), exits 0 without waiting for it', async () => {
    // Takes the connection and says nothing: the store's open waits for its 10 s connect timeout.
    let connected: () => void = () => undefined;
    const reached = new Promise<void>((resolve) => {
      connected = resolve;
    });
    const silent = createNetServer(() => connected());
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const sockets = new Set<Socket>();
    silent.on('connection', (socket) => sockets.add(socket));
    cleanups.push(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    });
    const port = (silent.address() as AddressInfo).port;
    const { url: hookUrl } = await receiver();
    const daemon = spawnCli(
      ['run', '--id', 'never-added'],
      runEnv('http://127.0.0.1:9/v2', hookUrl, {
        WATCHER_DATABASE_URL: `postgres://watcher:pw_process_test@127.0.0.1:${port}/watcher`,
      }),
    );
    await reached;
    daemon.child.kill('SIGTERM');
    const { code } = await daemon.exited;
    // Not held until the connect timeout (10 s), which would end in a failure to connect (exit 2).
    expect(code).toBe(0);
    expect(daemon.stderr()).toBe('');
    expect(daemon.lines.some((l) => l.msg === 'stopped while the store was opening')).toBe(true);
    expect(
      daemon.lines.find(
        (l) => l.msg === 'stopped during start-up: the ids given on the command line were not added',
      ),
    ).toMatchObject({ level: 'warn', ids: 1 });
    expect(daemon.lines.some((l) => l.msg === 'sbg-export-watcher started')).toBe(false);
  });

  it('refuses a second daemon on the same data directory (exit 2), which changes nothing of the first', async () => {
    const { sim, url: simUrl } = await simulator();
    const { receiver: hooks, url: hookUrl } = await receiver();
    const home = mkdtempSync(join(tmpdir(), 'two-daemons-'));
    cleanups.push(async () => rmSync(home, { recursive: true, force: true }));
    const env = runEnv(simUrl, hookUrl, { WATCHER_DATA_DIR: join(home, 'data'), HOME: home });
    const [id] = sim.createExports(1);
    const first = spawnCli(['run'], env);
    const api = String((await first.waitForLine((l) => l.msg === 'control API listening')).url);

    const second = spawnCli(['run', '--id', id!], env);
    const { code } = await second.exited;
    expect(code).toBe(2);
    expect(second.stderr()).toContain(
      `database ${join(home, 'data', 'watcher.db')} is in use by another process`,
    );
    expect(second.stderr().trim().split('\n')).toHaveLength(1);

    // The first goes on: it takes an id and delivers its outcome, once.
    const added = await request(`${api}/v1/exports`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ids: [id] }),
    });
    expect(added.statusCode).toBe(202);
    await added.body.dump();
    await hooks.waitFor((r) => r.acceptedIds().size === 1, 30_000);
    first.child.kill('SIGTERM');
    expect((await first.exited).code).toBe(0);
    expect(hooks.received).toHaveLength(1);
  });

  it('exits at once on a second signal while draining', async () => {
    const { sim, url: simUrl } = await simulator();
    const { receiver: hooks, url: hookUrl } = await receiver(() => new Promise<number>(() => undefined));
    const [id] = sim.createExports(1);
    const daemon = spawnCli(
      ['run', '--id', id!],
      runEnv(simUrl, hookUrl, { WATCHER_SHUTDOWN_TIMEOUT: '10m' }),
    );
    await hooks.waitFor((r) => r.received.length === 1, 30_000);
    daemon.child.kill('SIGTERM');
    await daemon.waitForLine((l) => l.msg === 'stopping');
    daemon.child.kill('SIGINT');
    const { code } = await daemon.exited;
    expect(code).toBe(130);
    expect(daemon.lines.some((l) => l.msg === 'second signal: exiting at once')).toBe(true);
  });
});

describe('sbg-export-watcher watch', () => {
  function watchEnv(simUrl: string, extra: Record<string, string> = {}): Record<string, string> {
    return { SB_API_ENDPOINT: simUrl, SB_AUTH_TOKEN: TOKEN, WATCHER_POLL_INTERVAL: '200ms', ...extra };
  }

  it('exits 0 when every export completes, one JSON line each on stdout, changes on stderr', async () => {
    const { sim, url } = await simulator();
    const ids = [sim.createExport({ outcome: 'COMPLETED' }), sim.createExport({ outcome: 'COMPLETED' })];
    const watch = spawnCli(['watch', ...ids], watchEnv(url));
    const { code } = await watch.exited;
    expect(code).toBe(0);
    expect(watch.lines.map((l) => [l.id, l.state]).sort()).toEqual(ids.map((id) => [id, 'COMPLETED']).sort());
    expect(watch.lines[0]).toHaveProperty('history');
    expect(watch.stderr()).toContain('-> COMPLETED');
    expect(watch.stderr()).not.toContain(TOKEN);
  });

  it('warns on stderr of a misspelt WATCHER_ variable, which its quiet log would not show', async () => {
    const { sim, url } = await simulator();
    const id = sim.createExport({ outcome: 'COMPLETED' });
    const watch = spawnCli(['watch', id], watchEnv(url, { WATCHER_WEBHOOK_URL: 'http://127.0.0.1:9/x' }));
    expect((await watch.exited).code).toBe(0);
    expect(watch.stderr()).toContain(
      'warning: WATCHER_WEBHOOK_URL is set but is not a variable of sbg-export-watcher; it is ignored (did you mean WATCHER_WEBHOOK_URLS?)\n',
    );
    expect(watch.stderr()).not.toContain('127.0.0.1:9');
  });

  it('exits 1 when an export fails or is lost, and delivers webhooks when configured', async () => {
    const { sim, url } = await simulator();
    const { receiver: hooks, url: hookUrl } = await receiver();
    const ok = sim.createExport({ outcome: 'COMPLETED' });
    const bad = sim.createExport({ outcome: 'FAILED' });
    const watch = spawnCli(
      ['watch', ok, bad, 'never-existed'],
      watchEnv(url, { WATCHER_WEBHOOK_URLS: hookUrl, WATCHER_WEBHOOK_SECRET: SECRET }),
    );
    const { code } = await watch.exited;
    expect(code).toBe(1);
    const states = Object.fromEntries(watch.lines.map((l) => [l.id, l.state]));
    expect(states).toEqual({ [ok]: 'COMPLETED', [bad]: 'FAILED', 'never-existed': 'LOST' });
    // Delivered before the command returned.
    expect(hooks.acceptedIds()).toEqual(
      new Set([`evt_${ok}_completed`, `evt_${bad}_failed`, 'evt_never-existed_lost']),
    );
  });

  it('exits 1 when the platform refuses the token, instead of waiting for ever', async () => {
    const { sim, url } = await simulator();
    const id = sim.createExport();
    const watch = spawnCli(['watch', id], watchEnv(url, { SB_AUTH_TOKEN: 'tok_not_the_right_one' }));
    const { code } = await watch.exited;
    expect(code).toBe(1);
    expect(watch.stderr()).toContain('error: the platform refused the token');
    expect(watch.stderr()).not.toContain('interrupted');
    expect(watch.stderr()).not.toContain('tok_not_the_right_one');
  });

  it('exits 2 without a platform token, naming the variable', async () => {
    const watch = spawnCli(['watch', 'abc'], { WATCHER_POLL_INTERVAL: '1s' });
    const { code } = await watch.exited;
    expect(code).toBe(2);
    expect(watch.stderr()).toContain('SB_AUTH_TOKEN');
  });

  it('exits 130 on Ctrl-C', async () => {
    const { sim, url } = await simulator({
      timing: { pendingMs: [60_000, 60_000], runningMs: [1000, 1000] },
    });
    const id = sim.createExport();
    const watch = spawnCli(['watch', id], watchEnv(url, { LOG_LEVEL: 'info' }));
    // Progress lines go to stderr: wait until the export is seen PENDING.
    await new Promise<void>((resolve) => {
      const check = () => {
        if (watch.stderr().includes('-> PENDING')) resolve();
      };
      watch.child.stderr?.on('data', check);
      check();
    });
    watch.child.kill('SIGINT');
    const { code } = await watch.exited;
    expect(code).toBe(130);
    expect(watch.stderr()).toContain('interrupted before every export finished');
  });
});

describe('a signal while the ids are read from an open standard input (producer | … -)', () => {
  /**
   * Writes 1 MiB of ids to the process's open standard input and resolves once the pipe took it
   * all: the socket pair holds about 200 KiB, so the process has read the rest and is reading,
   * waiting for more.
   */
  function fedAndReading(p: CliProcess): Promise<void> {
    const ids = Array.from({ length: 95_000 }, (_, i) => `exp-${i.toString().padStart(6, '0')}\n`).join('');
    return new Promise((resolve, reject) =>
      p.child.stdin?.write(ids, (error) => (error ? reject(error) : resolve())),
    );
  }

  it("run --ids-file -: a first SIGTERM exits 0, as for run's other stops", async () => {
    const { url } = await simulator();
    const run = spawnCli(
      ['run', '--ids-file', '-'],
      { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN, WATCHER_HTTP_PORT: '0' },
      { stdin: '', stdinOpen: true },
    );
    await fedAndReading(run);
    run.child.kill('SIGTERM');
    expect(await run.exited).toEqual({ code: 0, signal: null });
  });

  it('watch -: SIGTERM exits 143 and Ctrl-C 130, saying nothing was watched', async () => {
    const { url } = await simulator();
    for (const [signal, code] of [
      ['SIGTERM', 143],
      ['SIGINT', 130],
    ] as const) {
      const watch = spawnCli(
        ['watch', '-'],
        { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN },
        { stdin: '', stdinOpen: true },
      );
      await fedAndReading(watch);
      watch.child.kill(signal);
      expect(await watch.exited).toEqual({ code, signal: null });
      expect(watch.stderr()).toBe('interrupted while the ids were being read; nothing was watched\n');
    }
  });
});

describe('SIGHUP (the terminal closed, the session ended)', () => {
  const pendingLong = {
    timing: { pendingMs: [60_000, 60_000] as [number, number], runningMs: [1000, 1000] as [number, number] },
  };

  it('run stops as on SIGTERM, then ends by SIGHUP', async () => {
    const { sim, url: simUrl } = await simulator(pendingLong);
    const { url: hookUrl } = await receiver();
    const daemon = spawnCli(['run', '--id', sim.createExport()], runEnv(simUrl, hookUrl));
    await daemon.waitForLine((l) => l.msg === 'control API listening');
    daemon.child.kill('SIGHUP');
    expect(await daemon.exited).toEqual({ code: null, signal: 'SIGHUP' });
    expect(daemon.lines.find((l) => l.msg === 'signal received; shutting down')).toMatchObject({
      signal: 'SIGHUP',
    });
    expect(daemon.lines.some((l) => l.msg === 'stopped')).toBe(true);
  });

  it('watch says what was left, then ends by SIGHUP', async () => {
    const { sim, url } = await simulator(pendingLong);
    const watch = spawnCli(['watch', sim.createExport()], {
      SB_API_ENDPOINT: url,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_POLL_INTERVAL: '200ms',
      LOG_LEVEL: 'info',
    });
    await new Promise<void>((resolve) => {
      const check = () => {
        if (watch.stderr().includes('-> PENDING')) resolve();
      };
      watch.child.stderr?.on('data', check);
      check();
    });
    watch.child.kill('SIGHUP');
    expect(await watch.exited).toEqual({ code: null, signal: 'SIGHUP' });
    expect(watch.stderr()).toContain('interrupted before every export finished (1 of 1 not finished)');
  });

  it('run on a terminal that hangs up: its stop completes (the store closed cleanly), then it ends by SIGHUP', async () => {
    // On a real terminal, unlike a signal sent by kill: every write to it fails from then on, and
    // Node's exit aborts on restoring its mode.
    const { sim, url } = await simulator(pendingLong);
    const dir = mkdtempSync(join(tmpdir(), 'sbg-hangup-'));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const env = cliEnv({
      SB_API_ENDPOINT: url,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_DATA_DIR: join(dir, 'data'),
      HOME: dir,
      WATCHER_HTTP_PORT: '0',
      LOG_LEVEL: 'info',
    });
    const { stdout } = await execFileAsync(
      'python3',
      [HANGUP, 'control API listening', '60', ...cliCommand(['run', '--id', sim.createExport()])],
      { env, timeout: 90_000 },
    );
    expect(JSON.parse(stdout)).toEqual({ signal: 1 });
    // SQLite removes its write-ahead log when the last connection closes: the stop ran to its end.
    expect(existsSync(join(dir, 'data', 'watcher.db'))).toBe(true);
    expect(existsSync(join(dir, 'data', 'watcher.db-wal'))).toBe(false);
  });

  it('run: the second SIGHUP of one hang-up (bash forwards one, the kernel sends another) does not cut its drain short', async () => {
    // An interactive bash whose terminal closes sends SIGHUP to its foreground job, then exits; the
    // kernel then sends SIGHUP again to the terminal's foreground process group (2 runs in 5 here).
    const { daemon, hooks, release } = await runWithHeldDelivery();
    daemon.child.kill('SIGHUP');
    await daemon.waitForLine((l) => l.msg === 'stopping');
    daemon.child.kill('SIGHUP');
    const second = await daemon.waitForLine(
      (l) =>
        l.msg === 'second signal: exiting at once' || l.msg === 'SIGHUP again (the same hang-up): ignored',
    );
    expect(second.msg).toBe('SIGHUP again (the same hang-up): ignored');
    release();
    expect(await daemon.exited).toEqual({ code: null, signal: 'SIGHUP' });
    expect(hooks.received[0]?.status).toBe(204);
    expect(daemon.lines.some((l) => l.msg === 'stopped')).toBe(true);
  });

  it('watch on a terminal that hangs up without a SIGHUP reaching it (a job its shell did not tell) stops as on SIGHUP', async () => {
    // Its writes fail with EIO from then on; it must not go on polling for an hour writing nowhere,
    // then die by SIGABRT at exit (Node aborts restoring a hung-up terminal's mode).
    const { sim, url } = await simulator(pendingLong);
    const env = cliEnv({ SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN, WATCHER_POLL_INTERVAL: '200ms' });
    const { stdout } = await execFileAsync(
      'python3',
      [
        HANGUP,
        '--no-sighup',
        'pending 1',
        '40',
        ...cliCommand(['watch', '--timeout', '8s', sim.createExport()]),
      ],
      { env, timeout: 55_000 },
    );
    expect(JSON.parse(stdout)).toEqual({ signal: 1 });
  });
});

describe('a reader that goes away (| head)', () => {
  it('ends `watch` at once and quietly with 141, as SIGPIPE ends other tools', async () => {
    // Finishing over ~3 s, checked every 100 ms: lines go on being written after the reader left.
    const { sim, url } = await simulator({
      timing: { pendingMs: [50, 3000], runningMs: [50, 100] },
      failRate: 0,
    });
    const ids = sim.createExports(200);
    const watch = spawnCli(['watch', '--json', ...ids], {
      SB_API_ENDPOINT: url,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_POLL_INTERVAL: '100ms',
    });
    watch.child.stdout?.once('data', () => watch.child.stdout?.destroy());
    const { code } = await watch.exited;
    expect(code).toBe(141);
    expect(watch.stderr()).not.toContain('EPIPE');
    expect(watch.stderr()).not.toMatch(/^\s+at /m);
  });
});

describe('a reader that goes away (| head), one-shot commands', () => {
  it('ends `get` with 141 when its output is cut off, not with the exit code of a full answer', async () => {
    // ~600 KB of JSON lines: far more than a pipe holds, so writes fail once the reader left.
    const { sim, url } = await simulator();
    const ids = sim.createExports(1000);
    const get = spawnCli(['get', '--json', ...ids], { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN });
    get.child.stdout?.once('data', () => get.child.stdout?.destroy());
    const { code } = await get.exited;
    expect(code).toBe(141);
    expect(get.stderr()).not.toContain('EPIPE');
    expect(get.stderr()).not.toMatch(/^\s+at /m);
  });
});

describe('output to a slow reader', () => {
  it('`get` writes every line before it exits, though its reader is not reading yet', async () => {
    // A Node parent's pipe is a socket, written asynchronously: ~600 KB are still queued when
    // the command is done.
    const { sim, url } = await simulator();
    const ids = sim.createExports(1000);
    const get = spawnCli(['get', '--json', ...ids], { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN });
    const closed = new Promise((resolve) => get.child.once('close', resolve));
    get.child.stdout?.pause();
    setTimeout(() => get.child.stdout?.resume(), 1000);
    const { code } = await get.exited;
    await closed; // everything the child wrote has been read
    expect(code).toBe(0);
    expect(get.stdout().trim().split('\n')).toHaveLength(1000);
  });
});

describe('sbg-export-watcher get', () => {
  it('prints one JSON object per id and exits 0 when all are found', async () => {
    const { sim, url } = await simulator({
      timing: { pendingMs: [60_000, 60_000], runningMs: [1000, 1000] },
    });
    const ids = sim.createExports(2);
    const get = spawnCli(['get', ...ids], { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN });
    const { code } = await get.exited;
    expect(code).toBe(0);
    expect(get.lines.map((l) => l.id)).toEqual(ids);
    expect(get.lines.every((l) => l.state === 'PENDING' && (l.export as { id: string }).id === l.id)).toBe(
      true,
    );
    // One bulk call for both, none after.
    expect(sim.stats().bulkIdsPerCall).toEqual([2]);
  });

  it('reports an unknown id as NOT_FOUND and exits 1; a single id uses the single get', async () => {
    const { sim, url } = await simulator();
    const get = spawnCli(['get', 'not-there'], { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN });
    const { code } = await get.exited;
    expect(code).toBe(1);
    expect(get.lines).toEqual([
      expect.objectContaining({
        id: 'not-there',
        state: 'NOT_FOUND',
        error: expect.objectContaining({ code: 9008 }),
      }),
    ]);
    expect(sim.stats().requests.get).toBe(1);
  });
});
