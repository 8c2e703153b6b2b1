/**
 * The benchmark: runs the built daemon (`node dist/cli.js run`) as a real process against the
 * simulator, with a webhook receiver in this process, and prints a markdown table of figures
 * beside their goals and the figures of the earlier code. Not a test: it asserts nothing.
 *
 *   npm run bench                        # builds, then 100,000 exports (a few minutes)
 *   npm run bench -- --exports 10000     # a quick run
 *   npm run bench -- --json              # the figures as JSON too, after the table
 *   npm run bench -- --phase-timeout 5m  # give each phase longer (default 2m)
 *   npm run bench -- --node-flags ''     # the daemon without the heap limit the image sets
 *   npm run bench -- --finish-only       # phase 3 alone: the quickest A/B of the delivery path
 *   npm run bench -- --sweep-only        # phases 1, 2 and 4: the quickest A/B of the sweep
 *
 * Everything talks to 127.0.0.1 only. Every child is killed on exit, error and SIGINT/SIGTERM.
 * Progress goes to stderr, the table (and the JSON) to stdout.
 *
 * Phases, each bounded by the phase timeout (a figure that does not arrive in time reads
 * "timed out after ..." and the bench goes on):
 * 1. idle: RSS of a daemon that is up and ready with nothing watched.
 * 2. watched: N exports that stay RUNNING for a day are watched; once every one has been checked
 *    (no UNKNOWN left), RSS, and the daemon's CPU and the wall time for one sweep (the median of
 *    three in a row): the time until the simulator has answered another N ids. The simulator's
 *    counter is read, not the daemon's /metrics, so that measuring costs the daemon nothing.
 * 4. restart (run before 3, while the N are still RUNNING): SIGTERM, then the time from spawning
 *    it again on the same WATCHER_DATA_DIR until /readyz answers 200 and its metrics count N
 *    watched. A daemon that comes back ready with nothing watched keeps no state: "n/a".
 * 3. all finishing at once: a fresh daemon watches N exports created in one call with the same
 *    RUNNING time, so they all finish within the few hundred ms that call took. The simulator
 *    cannot force a finish, so that time is chosen from phase 2's ingest time, long enough for
 *    the daemon to see them all RUNNING first. Figures: distinct webhook-ids / (last - first
 *    arrival), the time from the first finish to the last delivery, the daemon's CPU time over
 *    that span (less at the mercy of a busy machine than the rate), and the daemon's VmHWM.
 *
 * Memory comes from /proc/<pid>/status (VmRSS, VmHWM; MB here means MiB), CPU from
 * /proc/<pid>/stat (utime + stime, in ticks of `getconf CLK_TCK`, 100 when it cannot be read).
 * Deliveries are signed (a webhook secret is set), as in production; the receiver does not verify.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'cli.js');
const MIB = 1024 * 1024;
const DAY_MS = 86_400_000;
/** The daemon's poll interval: a sweep of N cannot be shorter than this. */
const POLL_INTERVAL = '10s';
/** The control API takes at most 10,000 ids per request. */
const IDS_PER_POST = 10_000;
/** The simulator's admin route creates at most 100,000 exports per call. */
const EXPORTS_PER_CREATE = 100_000;
/** After a restart: ready with nothing watched for this long means the daemon keeps no state. */
const NO_STATE_AFTER_MS = 10_000;
/** How long a daemon gets to print its control API address, and to exit after SIGTERM. */
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 20_000;
const PROGRESS_EVERY_MS = 5000;
const STARTED = performance.now();

// -------------------------------------------------------------------------------------------
// Options

interface Options {
  exports: number;
  json: boolean;
  phaseTimeoutMs: number;
  /** Node flags for the daemon: by default those of the image and the systemd unit. */
  nodeFlags: string[];
  /** Phase 3 only (its finish time then comes from the phase timeout, not phase 2's ingest). */
  finishOnly: boolean;
  /** Phases 1, 2 and 4 only (no finish). */
  sweepOnly: boolean;
}

/**
 * How the container image and the systemd unit start node. The heap limit matters beyond its
 * value: V8 sizes its heap from it, and with the default (a quarter of the machine's memory) it
 * keeps ~150 MB more of freed answer-parsing garbage at 100,000 watched exports; the small young
 * generation keeps ~30 MB less resident.
 */
const SHIPPED_NODE_FLAGS = '--max-old-space-size=512 --max-semi-space-size=2';

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      exports: { type: 'string', default: '100000' },
      json: { type: 'boolean', default: false },
      'phase-timeout': { type: 'string', default: '2m' },
      'node-flags': { type: 'string', default: SHIPPED_NODE_FLAGS },
      'finish-only': { type: 'boolean', default: false },
      'sweep-only': { type: 'boolean', default: false },
    },
  });
  const exports = Number(values.exports);
  if (!Number.isInteger(exports) || exports < 1 || exports > 1_000_000) {
    throw new Error(`--exports: expected a whole number from 1 to 1000000, got ${values.exports}`);
  }
  const phaseTimeoutMs = parseDuration(values['phase-timeout']);
  if (!(phaseTimeoutMs >= 1000)) {
    throw new Error(`--phase-timeout: expected a duration like 90s or 5m, got ${values['phase-timeout']}`);
  }
  const nodeFlags = values['node-flags'].split(/\s+/).filter((f) => f !== '');
  if (values['finish-only'] && values['sweep-only']) {
    throw new Error('--finish-only and --sweep-only: choose one');
  }
  return {
    exports,
    json: values.json,
    phaseTimeoutMs,
    nodeFlags,
    finishOnly: values['finish-only'],
    sweepOnly: values['sweep-only'],
  };
}

function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(text.trim());
  if (!m) return Number.NaN;
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000 }[m[2] as 'ms' | 's' | 'm'];
}

// -------------------------------------------------------------------------------------------
// Figures

type RowKey =
  | 'idleRss'
  | 'watchedRss'
  | 'sweepCpu'
  | 'sweepWall'
  | 'deliveryRate'
  | 'finishToDelivered'
  | 'burstCpu'
  | 'peakRss'
  | 'restartReady';

interface RowSpec {
  key: RowKey;
  label: (n: string) => string;
  unit: 'MB' | 's' | '/s';
  goal?: { max?: number; min?: number; text: string };
  /** Measured on the earlier code at 100,000 exports. */
  before: string;
}

const ROWS: readonly RowSpec[] = [
  { key: 'idleRss', label: () => 'RSS at idle', unit: 'MB', before: '—' },
  {
    key: 'watchedRss',
    label: (n) => `RSS with ${n} watched`,
    unit: 'MB',
    goal: { max: 150, text: '≤ 150 MB' },
    before: '573 MB',
  },
  {
    key: 'sweepCpu',
    label: (n) => `CPU per sweep of ${n} (median of 3)`,
    unit: 's',
    goal: { max: 1, text: '≤ 1 s' },
    before: '26 s',
  },
  {
    key: 'sweepWall',
    label: () => `wall time of that sweep (poll ${POLL_INTERVAL})`,
    unit: 's',
    before: '—',
  },
  {
    key: 'deliveryRate',
    label: (n) => `deliveries/s, ${n} finishing at once`,
    unit: '/s',
    goal: { min: 5000, text: '≥ 5,000/s' },
    before: '—',
  },
  { key: 'finishToDelivered', label: () => 'first finish → all delivered', unit: 's', before: '—' },
  { key: 'burstCpu', label: () => 'daemon CPU over that span', unit: 's', before: '—' },
  {
    key: 'peakRss',
    label: () => 'peak RSS (VmHWM) of that daemon',
    unit: 'MB',
    goal: { max: 250, text: '≤ 250 MB' },
    before: '1.58 GB',
  },
  {
    key: 'restartReady',
    label: (n) => `restart → ready with ${n} watched`,
    unit: 's',
    goal: { max: 2, text: '≤ 2 s' },
    before: 'state lost',
  },
];

/** A figure, or why there is none (`value` null, `text` says why). */
interface Cell {
  value: number | null;
  text: string;
}

type Results = Map<RowKey, Cell>;

function measured(value: number, unit: RowSpec['unit']): Cell {
  return { value: Math.round(value * 1000) / 1000, text: format(value, unit) };
}

function format(value: number, unit: RowSpec['unit']): string {
  switch (unit) {
    case 'MB':
      return value >= 1024 ? `${(value / 1024).toFixed(2)} GB` : `${Math.round(value)} MB`;
    case '/s':
      return `${Math.round(value).toLocaleString('en-US')}/s`;
    case 's':
      return `${value < 10 ? value.toFixed(2) : value.toFixed(1)} s`;
  }
}

function missing(text: string): Cell {
  return { value: null, text };
}

function unitOf(key: RowKey): RowSpec['unit'] {
  return ROWS.find((r) => r.key === key)?.unit ?? 's';
}

function set(results: Results, key: RowKey, value: number): void {
  results.set(key, measured(value, unitOf(key)));
}

function goalMet(row: RowSpec, cell: Cell | undefined): string {
  if (!row.goal || cell?.value == null) return '—';
  const { max, min } = row.goal;
  return (max === undefined || cell.value <= max) && (min === undefined || cell.value >= min) ? 'yes' : 'no';
}

function renderTable(results: Results, n: number): string {
  const count = n.toLocaleString('en-US');
  const lines = ['| figure | now | goal | met | before |', '| --- | --- | --- | --- | --- |'];
  for (const row of ROWS) {
    const cell = results.get(row.key);
    lines.push(
      `| ${row.label(count)} | ${cell?.text ?? 'not measured'} | ${row.goal?.text ?? '—'} | ${goalMet(row, cell)} | ${row.before} |`,
    );
  }
  if (n !== 100_000) lines.push('', `Goals and "before" are for 100,000 exports; this run used ${count}.`);
  return lines.join('\n');
}

function renderJson(results: Results, n: number): string {
  const figures = Object.fromEntries(
    ROWS.map((row) => {
      const cell = results.get(row.key) ?? missing('not measured');
      return [
        row.key,
        { value: cell.value, unit: row.unit, text: cell.text, goal: row.goal ?? null, before: row.before },
      ];
    }),
  );
  return JSON.stringify({ exports: n, poll_interval: POLL_INTERVAL, figures }, null, 2);
}

// -------------------------------------------------------------------------------------------
// Progress, time and /proc

function progress(message: string): void {
  const at = ((performance.now() - STARTED) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[bench ${at}s] ${message}\n`);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function seconds(ms: number): string {
  return `${Math.round(ms / 1000)} s`;
}

/** `getconf CLK_TCK`: the unit of /proc/<pid>/stat's times; 100 on every common Linux. */
function clockTicks(): number {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
}

/** VmRSS and VmHWM of a process, in MiB. */
function memory(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? Number.NaN);
  return { rss: (kb('VmRSS') * 1024) / MIB, hwm: (kb('VmHWM') * 1024) / MIB };
}

/** User + system CPU seconds of a process, all its threads. */
function cpuSeconds(pid: number, ticksPerSecond: number): number {
  const { user, system } = cpuTimes(pid, ticksPerSecond);
  return user + system;
}

/** User and system CPU seconds of a process, all its threads. */
function cpuTimes(pid: number, ticksPerSecond: number): { user: number; system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces), starting at field 3: utime is 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]) / ticksPerSecond, system: Number(fields[12]) / ticksPerSecond };
}

// -------------------------------------------------------------------------------------------
// Child processes

/** A child of this bench, with the tail of its output for when something goes wrong. */
class Proc {
  readonly name: string;
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  #tail: string[] = [];
  #buffer = '';
  #errorLines = 0;
  readonly #watchers = new Set<(line: string) => void>();

  constructor(name: string, child: ChildProcess) {
    this.name = name;
    this.child = child;
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => this.#onStdout(chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => this.#keep(chunk));
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name} did not start`);
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Lines at error or fatal level (pino 50, 60): a sign the figures may not mean much. */
  get errorLines(): number {
    return this.#errorLines;
  }

  /** Why it is gone, with its last output. */
  describeExit(): string {
    const how = this.child.signalCode ?? `code ${this.child.exitCode}`;
    return `${this.name} exited (${how}); last output:\n${this.#tail.join('\n')}`;
  }

  /** The first stdout line `pick` maps to a value; rejects if the process exits or time runs out. */
  firstLine<T>(pick: (line: string) => T | undefined, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const done = (error?: Error, value?: T) => {
        this.#watchers.delete(watcher);
        clearTimeout(timer);
        this.child.off('exit', onExit);
        if (error) reject(error);
        else resolve(value as T);
      };
      const watcher = (line: string) => {
        const value = pick(line);
        if (value !== undefined) done(undefined, value);
      };
      const onExit = () => done(new Error(this.describeExit()));
      const timer = setTimeout(
        () => done(new Error(`${this.name} printed nothing usable in ${seconds(timeoutMs)}`)),
        timeoutMs,
      );
      this.#watchers.add(watcher);
      this.child.once('exit', onExit);
    });
  }

  /** SIGTERM, then SIGKILL if it has not exited in time. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await this.exited;
    clearTimeout(timer);
  }

  #onStdout(chunk: string): void {
    const text = this.#buffer + chunk;
    const lines = text.split('\n');
    this.#buffer = lines.pop() ?? '';
    for (const line of lines) {
      if (/"level":(50|60)[,}]/.test(line)) this.#errorLines++;
      for (const watcher of this.#watchers) watcher(line);
    }
    this.#keep(lines.join('\n'));
  }

  #keep(text: string): void {
    if (text === '') return;
    this.#tail.push(
      ...text
        .trimEnd()
        .split('\n')
        .map((l) => l.slice(0, 500)),
    );
    this.#tail = this.#tail.slice(-10);
  }
}

/** Every child this bench starts, so that every exit path can kill them. */
const children = new Set<Proc>();
let scratchDir: string | undefined;

/** The environment without the machine's own watcher settings, plus `env`. */
function cleanEnv(env: Record<string, string>): Record<string, string> {
  const kept = Object.entries(process.env).filter(
    (entry): entry is [string, string] =>
      entry[1] !== undefined &&
      !/^(SB_|WATCHER_|LOG_LEVEL$|NODE_OPTIONS$|CREDENTIALS_DIRECTORY$)/.test(entry[0]),
  );
  return { ...Object.fromEntries(kept), ...env };
}

/** Runs the built CLI in the scratch directory, so that no `.env` of the working tree is read. */
function spawnCli(name: string, args: string[], env: Record<string, string>): Proc {
  const flags = args[0] === 'run' ? nodeFlags : [];
  const child = spawn(process.execPath, [...flags, CLI, ...args], {
    cwd: scratch(),
    env: cleanEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const proc = new Proc(name, child);
  children.add(proc);
  void proc.exited.then(() => children.delete(proc));
  return proc;
}

/** Node flags for the daemon (`--node-flags`); set once the options are parsed. */
let nodeFlags: string[] = [];

function scratch(): string {
  scratchDir ??= mkdtempSync(join(tmpdir(), 'sbg-bench-'));
  return scratchDir;
}

/** Synchronous, so that it also runs from the `exit` event. */
function cleanUp(): void {
  for (const proc of children) if (proc.running) proc.child.kill('SIGKILL');
  if (scratchDir) rmSync(scratchDir, { recursive: true, force: true });
  scratchDir = undefined;
}

// -------------------------------------------------------------------------------------------
// HTTP

async function getJson<T>(url: string): Promise<T> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

async function postJson<T>(url: string, body: unknown): Promise<T> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`POST ${url}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

/**
 * A loopback webhook receiver that does as little as possible, so that it is never what limits
 * the delivery rate: answers 204, counts distinct `webhook-id`s and when the first and last came.
 */
class Receiver {
  readonly #server: Server;
  readonly #ids = new Set<string>();
  requests = 0;
  firstAt: number | undefined;
  lastAt: number | undefined;

  constructor() {
    this.#server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        this.#count(req.headers['webhook-id']);
        res.writeHead(204).end();
      });
    });
  }

  get distinct(): number {
    return this.#ids.size;
  }

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}/hooks`;
  }

  reset(): void {
    this.#ids.clear();
    this.requests = 0;
    this.firstAt = undefined;
    this.lastAt = undefined;
  }

  close(): void {
    this.#server.closeAllConnections();
    this.#server.close();
  }

  #count(id: string | string[] | undefined): void {
    const now = Date.now();
    this.requests++;
    this.firstAt ??= now;
    if (typeof id === 'string' && !this.#ids.has(id)) {
      this.#ids.add(id);
      this.lastAt = now;
    }
  }
}

// -------------------------------------------------------------------------------------------
// The simulator and the daemon

interface Simulator {
  proc: Proc;
  /** The base URL, ending in /v2. */
  url: string;
  /** The admin routes' origin. */
  origin: string;
}

async function startSimulator(): Promise<Simulator> {
  // The quota is out of reach, so that only the daemon's own budget paces it. Timings are set
  // per batch through the admin route; these defaults are never used.
  const args = ['simulate', '--port', '0', '--quota', '10000000', '--window', '5m'];
  const proc = spawnCli('simulator', [...args, '--pending', '0s-0s', '--running', '1d-1d'], {});
  const url = await proc.firstLine(
    (line) => (/^http:\/\/127\.0\.0\.1:\d+\/v2$/.test(line) ? line : undefined),
    START_TIMEOUT_MS,
  );
  return { proc, url, origin: new URL(url).origin };
}

/** Creates `count` COMPLETED-bound exports, RUNNING at once for `runningMs`; `sentAt` is before the first. */
async function createExports(
  sim: Simulator,
  count: number,
  runningMs: number,
): Promise<{ ids: string[]; sentAt: number; tookMs: number }> {
  const sentAt = Date.now();
  const ids: string[] = [];
  for (let left = count; left > 0; left -= EXPORTS_PER_CREATE) {
    const body = { count: Math.min(left, EXPORTS_PER_CREATE), outcome: 'COMPLETED', pendingMs: 0, runningMs };
    const created = await postJson<{ ids: string[] }>(`${sim.origin}/_simulator/exports`, body);
    ids.push(...created.ids);
  }
  return { ids, sentAt, tookMs: Date.now() - sentAt };
}

async function simIdsChecked(sim: Simulator): Promise<number> {
  return (await getJson<{ idsChecked: number }>(`${sim.origin}/_simulator/stats`)).idsChecked;
}

interface Daemon {
  proc: Proc;
  /** The control API's origin. */
  url: string;
  dataDir: string;
  /** performance.now() at spawn. */
  spawnedAt: number;
}

interface Context {
  opts: Options;
  ticks: number;
  sim: Simulator;
  receiver: Receiver;
  receiverUrl: string;
  webhookSecret: string;
}

async function startDaemon(ctx: Context, dataDir: string, name: string): Promise<Daemon> {
  const spawnedAt = performance.now();
  const proc = spawnCli(name, ['run'], {
    SB_API_ENDPOINT: ctx.sim.url,
    SB_AUTH_TOKEN: 'bench-token',
    WATCHER_HTTP_PORT: '0',
    WATCHER_WEBHOOK_URLS: ctx.receiverUrl,
    WATCHER_WEBHOOK_SECRET: ctx.webhookSecret,
    WATCHER_RATE_BUDGET: '100000',
    WATCHER_RATE_WINDOW: '5m',
    WATCHER_POLL_INTERVAL: POLL_INTERVAL,
    WATCHER_DATA_DIR: dataDir,
    // info, as in production: the address is only logged at info.
    LOG_LEVEL: 'info',
  });
  const url = await proc.firstLine(listeningUrl, START_TIMEOUT_MS);
  return { proc, url, dataDir, spawnedAt };
}

function listeningUrl(line: string): string | undefined {
  if (!line.includes('control API listening')) return undefined;
  try {
    const url = (JSON.parse(line) as { url?: unknown }).url;
    return typeof url === 'string' ? url : undefined;
  } catch {
    return undefined;
  }
}

async function isReady(d: Daemon): Promise<boolean> {
  const res = await fetch(`${d.url}/readyz`);
  await res.arrayBuffer();
  return res.status === 200;
}

/** Exports the daemon holds by state, from its `sbg_export_watcher_exports` gauge. */
async function watchedByState(d: Daemon): Promise<Record<string, number>> {
  const res = await fetch(`${d.url}/metrics`);
  const text = await res.text();
  const counts: Record<string, number> = {};
  for (const m of text.matchAll(/^sbg_export_watcher_exports\{state="(\w+)"\} (\d+)$/gm)) {
    counts[m[1] as string] = Number(m[2]);
  }
  return counts;
}

function total(counts: Record<string, number>): number {
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

/** POSTs the ids in bodies of at most 10,000, one at a time, as a client would. */
async function watch(d: Daemon, ids: readonly string[]): Promise<void> {
  for (let i = 0; i < ids.length; i += IDS_PER_POST) {
    await postJson(`${d.url}/v1/exports`, { ids: ids.slice(i, i + IDS_PER_POST) });
  }
}

async function stopDaemon(d: Daemon): Promise<void> {
  await d.proc.stop();
  if (d.proc.errorLines > 0) progress(`${d.proc.name} logged ${d.proc.errorLines} error lines`);
}

// -------------------------------------------------------------------------------------------
// Waiting

interface PollOptions {
  timeoutMs: number;
  everyMs: number;
  /** A process whose exit ends the wait with an error. */
  proc: Proc;
  /** Printed every few seconds while waiting. */
  status: () => string;
}

/** Calls `probe` until it returns a value (returned) or the time is up (undefined). */
async function pollUntil<T>(probe: () => Promise<T | undefined>, o: PollOptions): Promise<T | undefined> {
  const deadline = performance.now() + o.timeoutMs;
  let nextReport = performance.now() + PROGRESS_EVERY_MS;
  while (performance.now() < deadline) {
    if (!o.proc.running) throw new Error(o.proc.describeExit());
    const value = await probe();
    if (value !== undefined) return value;
    if (performance.now() >= nextReport) {
      progress(`  ${o.status()}`);
      nextReport += PROGRESS_EVERY_MS;
    }
    await sleep(o.everyMs);
  }
  return undefined;
}

// -------------------------------------------------------------------------------------------
// Phases

/** Phase 1: RSS once the daemon is up and ready with nothing to do. */
async function measureIdle(ctx: Context, d: Daemon, results: Results): Promise<void> {
  const ready = await pollUntil(async () => ((await isReady(d)) ? true : undefined), {
    timeoutMs: ctx.opts.phaseTimeoutMs,
    everyMs: 100,
    proc: d.proc,
    status: () => 'waiting for /readyz',
  });
  if (!ready) {
    results.set('idleRss', missing(`timed out after ${seconds(ctx.opts.phaseTimeoutMs)} (never ready)`));
    return;
  }
  // Let start-up garbage settle, as it would on a daemon left alone.
  await sleep(3000);
  set(results, 'idleRss', memory(d.proc.pid).rss);
  progress(`idle: ${results.get('idleRss')?.text}`);
}

/**
 * Phase 2: watch N exports that stay RUNNING, wait until each has been checked once, then one
 * sweep. Returns how long adding and first checking took (to time phase 3), or undefined.
 */
async function measureWatched(ctx: Context, d: Daemon, results: Results): Promise<number | undefined> {
  const n = ctx.opts.exports;
  const { ids } = await createExports(ctx.sim, n, DAY_MS);
  const startedAt = performance.now();
  await watch(d, ids);
  progress(`watched: ${n} ids posted in ${Math.round(performance.now() - startedAt)} ms`);
  let counts: Record<string, number> = {};
  const checked = await pollUntil(
    async () => {
      counts = await watchedByState(d);
      return total(counts) >= n && counts.UNKNOWN === 0 ? true : undefined;
    },
    {
      timeoutMs: ctx.opts.phaseTimeoutMs,
      everyMs: 1000,
      proc: d.proc,
      status: () => `first check: ${n - (counts.UNKNOWN ?? n)} of ${n} checked`,
    },
  );
  if (!checked) {
    const why = missing(
      `timed out after ${seconds(ctx.opts.phaseTimeoutMs)} (${n - (counts.UNKNOWN ?? n)} of ${n} checked once)`,
    );
    for (const key of ['watchedRss', 'sweepCpu', 'sweepWall'] as const) results.set(key, why);
    return undefined;
  }
  const ingestMs = performance.now() - startedAt;
  progress(`watched: all ${n} checked once, ${(ingestMs / 1000).toFixed(1)} s after the first post`);
  await measureSweep(ctx, d, results);
  return ingestMs;
}

/** Sweeps measured; the figure is their median, since one sweep's CPU varies by ±15% here. */
const SWEEPS = 3;

/**
 * The daemon's CPU and the wall time while the simulator answers another N ids, SWEEPS times in a
 * row; the median sweep's figures are kept. RSS after.
 */
async function measureSweep(ctx: Context, d: Daemon, results: Results): Promise<void> {
  const n = ctx.opts.exports;
  const sweeps: Array<{ cpu: number; wall: number }> = [];
  let failure: string | undefined;
  for (let i = 1; i <= SWEEPS && failure === undefined; i++) {
    const startCount = await simIdsChecked(ctx.sim);
    const startCpu = cpuTimes(d.proc.pid, ctx.ticks);
    const startWall = performance.now();
    let count = startCount;
    const done = await pollUntil(
      async () => {
        count = await simIdsChecked(ctx.sim);
        return count - startCount >= n ? true : undefined;
      },
      {
        timeoutMs: ctx.opts.phaseTimeoutMs,
        everyMs: 250,
        proc: d.proc,
        status: () => `sweep ${i} of ${SWEEPS}: ${count - startCount} of ${n} checked`,
      },
    );
    const wall = (performance.now() - startWall) / 1000;
    const endCpu = cpuTimes(d.proc.pid, ctx.ticks);
    const user = endCpu.user - startCpu.user;
    const system = endCpu.system - startCpu.system;
    const cpu = user + system;
    if (done) {
      sweeps.push({ cpu, wall });
      progress(
        `sweep ${i} of ${SWEEPS}: ${cpu.toFixed(2)} s CPU (user ${user.toFixed(2)}, system ${system.toFixed(2)}), ${wall.toFixed(1)} s wall`,
      );
    } else {
      failure = `timed out after ${seconds(ctx.opts.phaseTimeoutMs)} (${count - startCount} of ${n} checked, ${cpu.toFixed(1)} s CPU)`;
    }
  }
  set(results, 'watchedRss', memory(d.proc.pid).rss);
  progress(`watched: RSS ${results.get('watchedRss')?.text} after the sweeps`);
  const median = [...sweeps].sort((a, b) => a.cpu - b.cpu)[Math.floor(sweeps.length / 2)];
  if (failure === undefined && median) {
    set(results, 'sweepCpu', median.cpu);
    set(results, 'sweepWall', median.wall);
  } else {
    const why = failure ?? 'no sweep measured';
    results.set('sweepCpu', missing(why));
    results.set('sweepWall', missing(why));
  }
  progress(`sweep: ${results.get('sweepCpu')?.text} CPU, ${results.get('sweepWall')?.text} wall (median)`);
}

/**
 * Phase 4: SIGTERM with N watched, spawn again on the same data directory, and time it until it
 * is ready and holds the N again. Leaves the new daemon stopped.
 */
async function measureRestart(ctx: Context, before: Daemon, results: Results): Promise<void> {
  const n = ctx.opts.exports;
  await stopDaemon(before);
  progress('restart: stopped; starting again on the same data directory');
  const d = await startDaemon(ctx, before.dataDir, 'daemon (restarted)');
  try {
    let watched = 0;
    let readySince: number | undefined;
    const outcome = await pollUntil(
      async () => {
        const ready = await isReady(d);
        watched = total(await watchedByState(d));
        if (ready && watched >= n) return 'ready' as const;
        if (!ready) return undefined;
        readySince ??= performance.now();
        const stateless = watched === 0 && performance.now() - readySince >= NO_STATE_AFTER_MS;
        return stateless ? ('stateless' as const) : undefined;
      },
      {
        timeoutMs: ctx.opts.phaseTimeoutMs,
        everyMs: 20,
        proc: d.proc,
        status: () =>
          `restart: ${readySince === undefined ? 'not ready' : 'ready'}, ${watched} of ${n} watched`,
      },
    );
    if (outcome === 'ready') set(results, 'restartReady', (performance.now() - d.spawnedAt) / 1000);
    else if (outcome === 'stateless') results.set('restartReady', missing('n/a (state not kept)'));
    else
      results.set(
        'restartReady',
        missing(`timed out after ${seconds(ctx.opts.phaseTimeoutMs)} (${watched} of ${n} watched)`),
      );
    progress(`restart: ${results.get('restartReady')?.text}`);
  } finally {
    await stopDaemon(d);
  }
}

/**
 * Phase 3: a fresh daemon watches N exports that all finish at one moment, `runningMs` after they
 * are created; deliveries are timed from that moment.
 */
async function measureFinish(ctx: Context, runningMs: number, results: Results): Promise<void> {
  const n = ctx.opts.exports;
  const dataDir = join(scratch(), 'finish');
  mkdirSync(dataDir);
  const d = await startDaemon(ctx, dataDir, 'daemon (finish)');
  try {
    ctx.receiver.reset();
    const created = await createExports(ctx.sim, n, runningMs);
    const finishAt = created.sentAt + runningMs;
    progress(
      `finish: ${n} exports created in ${created.tookMs} ms; they finish ${seconds(runningMs)} later, within that spread`,
    );
    await watch(d, created.ids);
    await seeAllRunning(ctx, d, finishAt);
    await measureDeliveries(ctx, d, finishAt, results);
  } finally {
    await stopDaemon(d);
  }
}

/** Waits, at most until the finish, for every export to have been seen RUNNING; says how many were. */
async function seeAllRunning(ctx: Context, d: Daemon, finishAt: number): Promise<void> {
  const n = ctx.opts.exports;
  let counts: Record<string, number> = {};
  await pollUntil(
    async () => {
      counts = await watchedByState(d);
      return counts.RUNNING === n ? true : undefined;
    },
    {
      timeoutMs: Math.max(0, finishAt - Date.now() - 500),
      everyMs: 1000,
      proc: d.proc,
      status: () => `finish: ${counts.RUNNING ?? 0} of ${n} seen RUNNING`,
    },
  );
  progress(`finish: ${counts.RUNNING ?? 0} of ${n} seen RUNNING before the finish`);
  await sleep(Math.max(0, finishAt - Date.now()));
}

async function measureDeliveries(ctx: Context, d: Daemon, finishAt: number, results: Results): Promise<void> {
  const n = ctx.opts.exports;
  const r = ctx.receiver;
  const cpuAtFinish = cpuSeconds(d.proc.pid, ctx.ticks);
  const done = await pollUntil(async () => (r.distinct >= n ? true : undefined), {
    timeoutMs: ctx.opts.phaseTimeoutMs,
    everyMs: 100,
    proc: d.proc,
    status: () => `finish: ${r.distinct} of ${n} delivered`,
  });
  const peak = memory(d.proc.pid).hwm;
  const cpu = cpuSeconds(d.proc.pid, ctx.ticks) - cpuAtFinish;
  if (!done || r.firstAt === undefined || r.lastAt === undefined) {
    const why = `timed out after ${seconds(ctx.opts.phaseTimeoutMs)} (${r.distinct} of ${n} delivered)`;
    results.set('deliveryRate', missing(why));
    results.set('finishToDelivered', missing(why));
    results.set('burstCpu', missing(why));
    // Not the peak of the whole burst, so it is shown without a verdict against the goal.
    results.set('peakRss', missing(`${format(peak, 'MB')} when delivery timed out`));
    progress(`finish: ${why}`);
    return;
  }
  set(results, 'peakRss', peak);
  set(results, 'deliveryRate', r.distinct / (Math.max(1, r.lastAt - r.firstAt) / 1000));
  set(results, 'finishToDelivered', (r.lastAt - finishAt) / 1000);
  set(results, 'burstCpu', cpu);
  progress(
    `finish: ${results.get('deliveryRate')?.text}, the last ${results.get('finishToDelivered')?.text} after the finish, ${r.requests} requests, ${Math.round((cpu * 1e6) / n)} µs of daemon CPU per export`,
  );
}

/** Runs one phase; a failure marks its figures that are still unset and lets the bench go on. */
async function phase(
  name: string,
  keys: readonly RowKey[],
  results: Results,
  run: () => Promise<void>,
): Promise<void> {
  progress(`phase: ${name}`);
  try {
    await run();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    progress(`${name} failed: ${message}`);
    const firstLine = message.split('\n')[0] ?? message;
    for (const key of keys) if (!results.has(key)) results.set(key, missing(`failed: ${firstLine}`));
  }
}

/**
 * Phase 3's RUNNING time: long enough for a fresh daemon to add and check N again (phase 2 took
 * `ingestMs`), with a margin; the phase timeout when phase 2 did not get that far.
 */
function finishDelay(ctx: Context, ingestMs: number | undefined): number {
  if (ingestMs === undefined) return ctx.opts.phaseTimeoutMs;
  return Math.min(ctx.opts.phaseTimeoutMs, Math.max(20_000, Math.ceil(ingestMs * 1.5) + 15_000));
}

// -------------------------------------------------------------------------------------------

/** What phase 2 takes to add and check one export here, for phase 3 run alone (`--finish-only`). */
const GUESSED_INGEST_MS_PER_EXPORT = 0.15;

/** Phases 1, 2 and 4, on one daemon; answers phase 2's ingest time, if it got that far. */
async function measureSteadyState(ctx: Context, results: Results): Promise<number | undefined> {
  const dataDir = join(scratch(), 'watched');
  mkdirSync(dataDir);
  let daemon: Daemon | undefined;
  let ingestMs: number | undefined;
  await phase('1. idle', ['idleRss'], results, async () => {
    daemon = await startDaemon(ctx, dataDir, 'daemon');
    await measureIdle(ctx, daemon, results);
  });
  await phase('2. watched', ['watchedRss', 'sweepCpu', 'sweepWall'], results, async () => {
    if (!daemon) throw new Error('no daemon (phase 1 failed)');
    ingestMs = await measureWatched(ctx, daemon, results);
  });
  await phase('4. restart', ['restartReady'], results, async () => {
    if (!daemon) throw new Error('no daemon (phase 1 failed)');
    await measureRestart(ctx, daemon, results);
  });
  return ingestMs;
}

async function run(opts: Options): Promise<Results> {
  const results: Results = new Map();
  const receiver = new Receiver();
  const receiverUrl = await receiver.start();
  try {
    const sim = await startSimulator();
    progress(`simulator at ${sim.url}, receiver at ${receiverUrl}`);
    const ctx: Context = {
      opts,
      ticks: clockTicks(),
      sim,
      receiver,
      receiverUrl,
      webhookSecret: `whsec_${randomBytes(32).toString('base64')}`,
    };
    // Alone, phase 3 guesses phase 2's ingest time.
    const ingestMs = opts.finishOnly
      ? opts.exports * GUESSED_INGEST_MS_PER_EXPORT
      : await measureSteadyState(ctx, results);
    const keys = ['deliveryRate', 'finishToDelivered', 'burstCpu', 'peakRss'] as const;
    if (!opts.sweepOnly)
      await phase('3. all finishing at once', keys, results, () =>
        measureFinish(ctx, finishDelay(ctx, ingestMs), results),
      );
    await sim.proc.stop();
  } finally {
    receiver.close();
  }
  return results;
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  nodeFlags = opts.nodeFlags;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      progress(`${signal}: stopping`);
      cleanUp();
      process.exit(130);
    });
  }
  process.once('exit', cleanUp);
  progress(`${opts.exports} exports, each phase at most ${seconds(opts.phaseTimeoutMs)}`);
  const results = await run(opts);
  process.stdout.write(`${renderTable(results, opts.exports)}\n`);
  process.stdout.write(
    `\nThe daemon ran as \`node ${[...opts.nodeFlags, 'dist/cli.js run'].join(' ')}\`, poll interval ${POLL_INTERVAL}.\n`,
  );
  if (opts.json) process.stdout.write(`${renderJson(results, opts.exports)}\n`);
  return 0;
}

main().then(
  (code) => {
    cleanUp();
    process.exitCode = code;
  },
  (error: unknown) => {
    cleanUp();
    process.stderr.write(`bench: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);
