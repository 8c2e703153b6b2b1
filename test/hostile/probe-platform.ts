/**
 * The hostile-platform probe: runs the real daemon (`sbg-export-watcher run`, a child process)
 * against a platform that misbehaves, and prints what it costs. Not a test: it prints figures.
 *
 *   npx tsx test/hostile/probe-platform.ts
 *
 * Figures: peak RSS while the platform streams an endless answer; requests the daemon sends in
 * 20 s against a platform that answers 429 with a reset 20 days ahead; log lines written for
 * answers of 300,000 (over the size cap) and 150,000 (under it) items about exports never asked
 * for. Everything runs on 127.0.0.1 and stops by itself.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { askedIds, endlessBody, exportObject, HostilePlatform, okHandler } from './hostile-platform.js';

const ROOT = join(import.meta.dirname, '..', '..');
/** The built CLI when there is one (realistic memory figures), else the sources through tsx. */
const BUILT = join(ROOT, 'dist', 'cli.js');
const CLI_ARGS = existsSync(BUILT) ? [BUILT] : ['--import', 'tsx', join(ROOT, 'src', 'cli.ts')];

interface Daemon {
  pid: number;
  lines: () => number;
  stop: () => Promise<void>;
  /** Peak resident set (VmHWM), MiB. */
  peakRssMb: () => number;
}

function startDaemon(endpoint: string, ids: string[]): Daemon {
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^(SB_|WATCHER_|LOG_LEVEL)/.test(k)),
  );
  const child = spawn(process.execPath, [...CLI_ARGS, 'run', ...ids.flatMap((id) => ['--id', id])], {
    cwd: ROOT,
    env: {
      ...env,
      SB_API_ENDPOINT: endpoint,
      SB_AUTH_TOKEN: 'probe-token-123456',
      WATCHER_HTTP_PORT: '0',
      WATCHER_POLL_INTERVAL: '200ms',
      LOG_LEVEL: 'info',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let lines = 0;
  child.stdout.on('data', (chunk: Buffer) => {
    for (const byte of chunk) if (byte === 10) lines++;
  });
  child.stderr.resume();
  let peak = 0;
  const sample = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) / 1024);
    } catch {
      // gone
    }
  }, 100);
  return {
    pid: child.pid ?? 0,
    lines: () => lines,
    peakRssMb: () => Math.round(peak),
    stop: () =>
      new Promise((resolve) => {
        clearInterval(sample);
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
        setTimeout(() => child.kill('SIGKILL'), 15_000).unref();
      }),
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const ids = (n: number) => Array.from({ length: n }, (_, i) => `probe-${i}`);

async function rss(hostile: boolean): Promise<string> {
  const p = new HostilePlatform(({ route }) =>
    route === 'bulk_get' && hostile ? endlessBody() : okHandler()({ route } as never),
  );
  const url = await p.start();
  const d = startDaemon(url, ids(50));
  await sleep(20_000);
  const rss = d.peakRssMb();
  await d.stop();
  await p.close();
  return `peak RSS ${rss} MB over 20 s (${p.requests.bulk_get} bulk answers started, ${Math.round(p.bytesWritten / 2 ** 20)} MiB written by the platform)`;
}

async function twentyDayReset(): Promise<string> {
  const reset = Math.floor(Date.now() / 1000) + 20 * 86_400;
  const p = new HostilePlatform(({ route }) =>
    route === 'bulk_get'
      ? {
          status: 429,
          headers: { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': String(reset) },
          body: { status: 429, code: 1000, message: 'Rate limit exceeded! Check response headers.' },
        }
      : okHandler()({ route } as never),
  );
  const url = await p.start();
  const d = startDaemon(url, ids(50));
  await sleep(20_000);
  await d.stop();
  await p.close();
  return `${p.requests.bulk_get} requests in 20 s`;
}

async function flood(items: number, compact: boolean): Promise<string> {
  const item = (i: number) =>
    compact
      ? { resource: { id: `u${i}`, state: 'RUNNING' } }
      : { resource: exportObject(`unasked-${i}`, 'RUNNING') };
  const body = JSON.stringify({ items: Array.from({ length: items }, (_, i) => item(i)) });
  let hostile = false;
  const p = new HostilePlatform(({ route, json }) => {
    if (route !== 'bulk_get') return okHandler()({ route } as never);
    if (!hostile)
      return { body: { items: askedIds(json).map((id) => ({ resource: exportObject(id, 'RUNNING') })) } };
    return { body };
  });
  const url = await p.start();
  const d = startDaemon(url, ids(10));
  await sleep(3000);
  const before = d.lines();
  const callsBefore = p.requests.bulk_get;
  hostile = true;
  await sleep(10_000);
  const calls = p.requests.bulk_get - callsBefore;
  const lines = d.lines() - before;
  await d.stop();
  await p.close();
  return `${lines} log lines for ${calls} answers of ${items.toLocaleString('en')} items (${(body.length / 2 ** 20).toFixed(1)} MiB each)`;
}

async function main(): Promise<void> {
  const rows: Array<[string, string, string]> = [];
  const run = async (finding: string, before: string, measure: () => Promise<string>) => {
    process.stderr.write(`probing: ${finding}...\n`);
    rows.push([finding, before, await measure()]);
  };
  await run('(reference) a platform that behaves', '', () => rss(false));
  await run('endless platform answer', 'RSS 14-18 GB', () => rss(true));
  await run(
    '429 with a reset 20 days ahead',
    'no checks for 20 days; 33 requests in 20 s past 2^31 ms',
    twentyDayReset,
  );
  await run('300,000 unasked items per answer', '300,000 warn lines per answer', () => flood(300_000, false));
  await run('150,000 unasked compact items (under the cap)', '150,000 warn lines per answer', () =>
    flood(150_000, true),
  );
  const width = rows.reduce((w, r) => Math.max(w, r[0].length), 0);
  process.stdout.write(
    `\n${'finding'.padEnd(width)}  | before (issue)  | now (${CLI_ARGS.length === 1 ? 'dist' : 'tsx'})\n`,
  );
  for (const [finding, before, now] of rows) {
    process.stdout.write(`${finding.padEnd(width)}  | ${before}  | ${now}\n`);
  }
}

await main();
