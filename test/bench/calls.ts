/**
 * What one bulk call costs the daemon's process, apart from the tracker and the store: 1,000
 * calls of 100 ids through the real `PlatformClient` and `RateLimiter` against the simulator (a
 * child process, `dist/cli.js simulate`: build first), 4 at a time, three rounds. Per round: CPU
 * (user and system, all threads), how far V8's old generation grew above where a full collection
 * left it (what survived young collections: a per-call object that outlives its call shows up
 * here), and the collections of each kind. Prints a table; asserts nothing; loopback only.
 *
 *   npm run build && node --expose-gc --import tsx test/bench/calls.ts
 *   node --expose-gc --import tsx test/bench/calls.ts --gate spaced # the limiter's spacing, no limiter
 *   node --expose-gc --import tsx test/bench/calls.ts --gate none   # back to back, no limiter
 *   node --expose-gc --import tsx test/bench/calls.ts --signal      # each call with one long-lived
 *                                                                   # signal, as the scheduler's
 *
 * `limiter` less `spaced` is what the limiter itself (bottleneck, and the bookkeeping around it)
 * costs a call; `spaced` less `none` is what spacing calls out costs (each answer wakes the
 * process on its own).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import pino from 'pino';
import { PlatformClient, type RequestGate } from '../../src/platform/platform-client.js';
import { RateLimiter } from '../../src/platform/rate-limiter.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'cli.js');
const CALLS = 1000;
const IDS = 10_000;

const GATES = ['limiter', 'spaced', 'none'];
const { values } = parseArgs({
  options: { gate: { type: 'string', default: 'limiter' }, signal: { type: 'boolean', default: false } },
});
/** The signal every call is made with (`--signal`): the scheduler passes one per running period. */
const callOptions = values.signal ? { signal: new AbortController().signal } : {};
if (!GATES.includes(values.gate)) {
  process.stderr.write(`calls: --gate is one of ${GATES.join(', ')}\n`);
  process.exit(2);
}
/** The rate limiter's budget here: it spaces calls 2 ms apart (300,000 ms / 100,001). */
const BUDGET = 100_000;
const WINDOW_MS = 300_000;
/**
 * The pace `spaced` keeps: the limiter's, measured (1,000 calls in 3 s: its 2 ms spacing plus
 * the lateness of its timers), so that both gates wake the process as often.
 */
const SPACED_MS = 3;
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  process.stderr.write('calls: run with node --expose-gc\n');
  process.exit(2);
}
if (!existsSync(CLI)) {
  process.stderr.write('calls: dist/cli.js is missing; run npm run build first\n');
  process.exit(2);
}

const sim = spawn(
  process.execPath,
  [CLI, 'simulate', '--port', '0', '--quota', '10000000', '--running', '86400s-86400s', '--pending', '0s-0s'],
  { stdio: ['ignore', 'pipe', 'inherit'], env: { PATH: process.env.PATH ?? '', HOME: ROOT } },
);
const stop = () => sim.kill();
process.on('exit', stop);
try {
  const endpoint = await new Promise<string>((resolve, reject) => {
    sim.once('exit', () => reject(new Error('the simulator exited')));
    sim.stdout
      .setEncoding('utf8')
      .once('data', (chunk: string) => resolve(chunk.split('\n')[0]?.trim() ?? ''));
  });
  const created = await fetch(`${endpoint.replace(/\/v2$/, '')}/_simulator/exports`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ count: IDS }),
  });
  const { ids } = (await created.json()) as { ids: string[] };

  const log = pino({ level: 'info' });
  const gate: RequestGate =
    values.gate === 'limiter'
      ? new RateLimiter({ budget: BUDGET, windowMs: WINDOW_MS, log })
      : passGate(values.gate === 'spaced' ? SPACED_MS : 0);
  const client = new PlatformClient({ endpoint, token: 'bench', gate, userAgent: 'calls-bench', log });

  const collections = { minor: 0, major: 0 };
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = (entry as { detail?: { kind?: number } }).detail?.kind;
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) collections.minor++;
      else if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) collections.major++;
    }
  }).observe({ entryTypes: ['gc'] });
  const oldUsed = () =>
    v8
      .getHeapSpaceStatistics()
      .filter((s) => s.space_name !== 'new_space')
      .reduce((sum, s) => sum + s.space_used_size, 0);

  const rows = [
    `| round | calls | wall | CPU user | CPU system | old generation growth (peak) | collections minor / major |`,
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (let round = 1; round <= 3; round++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 50));
    collections.minor = 0;
    collections.major = 0;
    const base = oldUsed();
    let peak = 0;
    let next = 0;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (next < CALLS) {
          const from = (next++ % (IDS / 100)) * 100;
          await client.checkStatuses('export', ids.slice(from, from + 100), callOptions);
          peak = Math.max(peak, oldUsed() - base);
        }
      }),
    );
    const wall = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    rows.push(
      `| ${round} | ${CALLS} | ${(wall / 1000).toFixed(2)} s | ${(cpu.user / 1e6).toFixed(2)} s | ${(cpu.system / 1e6).toFixed(2)} s | ${(peak / 2 ** 20).toFixed(1)} MB | ${collections.minor} / ${collections.major} |`,
    );
    process.stderr.write(`[calls] round ${round} done\n`);
  }
  await client.close();
  if (gate instanceof RateLimiter) await gate.stop();
  process.stdout.write(
    `gate: ${values.gate}${values.signal ? ', with a long-lived signal' : ''}\n${rows.join('\n')}\n`,
  );
} finally {
  stop();
}

/** A gate that only spaces calls `spacingMs` apart (0: not at all), as the limiter does. */
function passGate(spacingMs: number): RequestGate {
  let nextStart = 0;
  return {
    schedule: async (fn) => {
      const now = performance.now();
      const at = Math.max(now, nextStart);
      nextStart = at + spacingMs;
      if (at > now) await new Promise((resolve) => setTimeout(resolve, at - now));
      return fn();
    },
    observe: () => undefined,
    rateLimited: () => undefined,
  };
}
