/**
 * The daemon as a process: `run` against the simulator, stopped with SIGTERM.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { WebhookReceiver } from '../src/receiver.js';
import { Simulator } from '../src/simulator.js';

const ROOT = join(import.meta.dirname, '..');
const TSX = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
const CLI = join(ROOT, 'src', 'cli.ts');
const TOKEN = 'tok_process_test_7d3e';
const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';

interface Daemon {
  child: ChildProcess;
  lines: Array<Record<string, unknown>>;
  output: () => string;
  /** Resolves with the first log line matching, rejects if the process exits first. */
  waitForLine(test: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function startDaemon(args: string[], env: Record<string, string>): Daemon {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^(SB_|WATCHER_|LOG_LEVEL|NODE_OPTIONS)/.test(k)),
  );
  const child = spawn(process.execPath, ['--import', TSX, CLI, 'run', ...args], {
    cwd: ROOT,
    env: { ...clean, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Array<Record<string, unknown>> = [];
  let raw = '';
  let buffer = '';
  const waiters: Array<{
    test: (l: Record<string, unknown>) => boolean;
    resolve: (l: Record<string, unknown>) => void;
  }> = [];
  child.stdout?.on('data', (chunk: Buffer) => {
    raw += chunk;
    buffer += chunk;
    let nl = buffer.indexOf('\n');
    while (nl >= 0) {
      const text = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      nl = buffer.indexOf('\n');
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text);
      } catch {
        continue;
      }
      lines.push(line);
      for (const w of [...waiters]) {
        if (w.test(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    raw += chunk;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    lines,
    output: () => raw,
    exited,
    waitForLine: (test) =>
      new Promise((resolve, reject) => {
        const found = lines.find(test);
        if (found) return resolve(found);
        waiters.push({ test, resolve });
        void exited.then(({ code }) =>
          reject(new Error(`daemon exited (${code}) before the line came:\n${raw}`)),
        );
      }),
  };
}

describe('sbg-export-watcher run', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('watches ids from the command line, delivers, and exits 0 on SIGTERM', async () => {
    const sim = new Simulator({
      seed: 3,
      token: TOKEN,
      timing: { pendingMs: [100, 200], runningMs: [100, 300] },
    });
    const receiver = new WebhookReceiver({ secret: SECRET });
    const simUrl = await sim.start();
    const hookUrl = await receiver.start();
    cleanups.push(
      () => sim.close(),
      () => receiver.close(),
    );
    const ids = sim.createExports(3);
    const daemon = startDaemon(['--id', ids[0]!, '--id', ids[1]!, '--id', ids[2]!], {
      SB_API_ENDPOINT: simUrl,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_WEBHOOK_URLS: hookUrl,
      WATCHER_WEBHOOK_SECRET: SECRET,
      WATCHER_HTTP_PORT: '0',
      WATCHER_POLL_INTERVAL: '200ms',
      LOG_LEVEL: 'debug',
    });
    cleanups.push(async () => {
      if (daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
    });
    const listening = await daemon.waitForLine((l) => l.msg === 'control API listening');
    expect(String(listening.url)).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    await receiver.waitFor((r) => new Set(r.accepted().map((w) => w.id)).size === 3, 30_000);
    const health = await request(`${listening.url}/healthz`);
    expect(health.statusCode).toBe(200);
    await health.body.dump();

    daemon.child.kill('SIGTERM');
    const { code } = await daemon.exited;
    expect(code).toBe(0);
    expect(daemon.lines.some((l) => l.msg === 'stopped')).toBe(true);
    expect(daemon.lines.filter((l) => l.msg === 'export state changed').length).toBeGreaterThanOrEqual(3);
    expect(daemon.output()).not.toContain(TOKEN);
    expect(daemon.output()).not.toContain(SECRET.slice('whsec_'.length));
  });
});
