/**
 * Discovery (`WATCHER_DISCOVER`): the daemon finds the user's unfinished exports and imports by
 * listing them, within a tenth of its budget per rate window; and `watch --all`. The share is
 * counted window by window with fake timers where time is ours to move, and against the daemon's
 * own windows over loopback; nothing sleeps on real time.
 */
import { Writable } from 'node:stream';
import pino from 'pino';
import { request } from 'undici';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../src/config/config.js';
import { WebhookReceiver } from '../src/dev/receiver.js';
import { Simulator } from '../src/dev/simulator.js';
import { Daemon } from '../src/main.js';
import type { JobPage } from '../src/platform/platform-client.js';
import { RateLimiter } from '../src/platform/rate-limiter.js';
import { Discovery, listUnfinished, type RoundReport } from '../src/polling/discovery.js';
import type { JobKind } from '../src/polling/tracker.js';
import { ConfigError, PlatformError } from '../src/shared/errors.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import { logSink } from './helpers/log-sink.js';
import { type CliProcess, killAll, spawnCli } from './helpers/spawn.js';
import { SECRET, TOKEN } from './helpers/stack.js';

const T0 = Date.UTC(2026, 0, 1, 12);

describe('WATCHER_DISCOVER and WATCHER_DISCOVER_INTERVAL', () => {
  it('are off by default, every 5 minutes when on', () => {
    const c = loadConfig({});
    expect(c.discover).toEqual([]);
    expect(c.discoverIntervalMs).toBe(300_000);
  });

  it('take exports, imports or both, in any order and case, singular or plural', () => {
    expect(loadConfig({ WATCHER_DISCOVER: 'exports' }).discover).toEqual(['export']);
    expect(loadConfig({ WATCHER_DISCOVER: 'imports' }).discover).toEqual(['import']);
    expect(loadConfig({ WATCHER_DISCOVER: 'exports,imports' }).discover).toEqual(['export', 'import']);
    expect(loadConfig({ WATCHER_DISCOVER: ' Import , export,imports ' }).discover).toEqual([
      'import',
      'export',
    ]);
    expect(loadConfig({ WATCHER_DISCOVER: '  ' }).discover).toEqual([]);
  });

  it('refuse anything else, an interval outside 10s–1d, and a budget too small for a tenth of it', () => {
    const problems = (env: Record<string, string>) => {
      try {
        loadConfig(env);
      } catch (error) {
        return (error as ConfigError).problems;
      }
      return [];
    };
    expect(problems({ WATCHER_DISCOVER: 'transfers' })).toEqual([
      'WATCHER_DISCOVER: expected "exports", "imports" or "exports,imports", got "transfers"',
    ]);
    expect(problems({ WATCHER_DISCOVER: 'exports,constructor' })).toHaveLength(1);
    expect(problems({ WATCHER_DISCOVER_INTERVAL: '9s' })[0]).toMatch(
      /^WATCHER_DISCOVER_INTERVAL: expected a duration from 10s to 1d/,
    );
    expect(problems({ WATCHER_DISCOVER_INTERVAL: '2d' })).toHaveLength(1);
    expect(loadConfig({ WATCHER_DISCOVER_INTERVAL: '10s' }).discoverIntervalMs).toBe(10_000);
    expect(loadConfig({ WATCHER_DISCOVER_INTERVAL: '1d' }).discoverIntervalMs).toBe(86_400_000);
    expect(problems({ WATCHER_DISCOVER: 'exports', WATCHER_RATE_BUDGET: '9' })).toEqual([
      'WATCHER_RATE_BUDGET: expected at least 10 when WATCHER_DISCOVER is set (discovery may use a tenth of the budget), got "9"',
    ]);
    expect(() => loadConfig({ WATCHER_DISCOVER: 'exports', WATCHER_RATE_BUDGET: '10' })).not.toThrow();
    // One line for one bad value, not a second one about the number it could not read.
    expect(problems({ WATCHER_DISCOVER: 'exports', WATCHER_RATE_BUDGET: '5OO' })).toEqual([
      'WATCHER_RATE_BUDGET: expected a whole number from 1 to 1000000, got "5OO"',
    ]);
    expect(() => loadConfig({ WATCHER_DISCOVER: 'bad' })).toThrow(ConfigError);
  });
});

describe('RateLimiter.share', () => {
  beforeEach(() => vi.useFakeTimers({ now: T0 }));
  afterEach(() => vi.useRealTimers());

  it('lets at most `max` calls start per budget window, refusing the rest at once, from the same budget', async () => {
    const limiter = new RateLimiter({ budget: 20, windowMs: 10_000, resetMarginMs: 0 });
    const share = limiter.share(2);
    const starts: Array<{ at: number; window: number }> = [];
    const once = () =>
      share.schedule(async () => {
        starts.push({ at: Date.now() - T0, window: limiter.snapshot().window });
      });
    expect(share.left()).toBe(2);
    await Promise.all([vi.advanceTimersByTimeAsync(2000), once()]);
    await Promise.all([vi.advanceTimersByTimeAsync(2000), once()]);
    expect(share.left()).toBe(0);
    await expect(once()).rejects.toMatchObject({ code: 'SHARE_SPENT' });
    expect(starts).toHaveLength(2);
    // The share's calls are the budget's too.
    expect(limiter.snapshot().spent).toBe(2);
    // Next window: two more.
    await vi.advanceTimersByTimeAsync(10_000);
    expect(share.left()).toBe(2);
    await Promise.all([vi.advanceTimersByTimeAsync(2000), once()]);
    expect(starts.map((s) => s.window)).toEqual([0, 0, 1]);
    expect(() => limiter.share(0)).toThrow(TypeError);
    await limiter.stop();
  });
});

/** A fake platform listing: `counts[kind][state]` jobs, 100 a page, each page a call through `gate`. */
function fakeListing(counts: Record<JobKind, Record<'PENDING' | 'RUNNING', number>>) {
  const ids = (kind: JobKind, state: string) =>
    Array.from({ length: counts[kind][state as 'PENDING'] }, (_, i) => `${kind[0]}${state[0]}${i}`);
  const read = async (kind: JobKind, from: { state: string } | { next: string }): Promise<JobPage> => {
    const [state, offset] =
      'state' in from ? [from.state, 0] : (from.next.split(':').slice(1) as [string, string]);
    const all = ids(kind, state);
    const start = Number(offset);
    const items = all.slice(start, start + 100).map((id) => ({ id, state }));
    const next = start + 100 < all.length ? `${kind}:${state}:${start + 100}` : undefined;
    return { items, next };
  };
  return { read, ids };
}

describe('Discovery', () => {
  beforeEach(() => vi.useFakeTimers({ now: T0 }));
  afterEach(() => vi.useRealTimers());

  it('a wall clock that steps back during a round does not hold the next round for the length of the step', async () => {
    const { log } = logSink();
    let rounds = 0;
    const discovery = new Discovery({
      kinds: ['export'],
      intervalMs: 10_000,
      gate: { left: () => 10, max: 10 },
      log,
      list: async (_kind, from) => {
        if ('state' in from && from.state === 'PENDING') {
          rounds++;
          // An NTP correction while the round's first page is on the wire: back an hour.
          if (rounds === 1) vi.setSystemTime(Date.now() - 3_600_000);
        }
        return { items: [], next: undefined };
      },
      add: async (_kind, ids) => ({ accepted: [...ids] }),
    });
    discovery.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(rounds).toBe(1);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(rounds).toBe(2);
    await discovery.stop();
  });

  it('never starts more than floor(budget / 10) list calls in a budget window; stops a round and resumes it next interval', async () => {
    const budget = 20;
    const windowMs = 10_000;
    const limiter = new RateLimiter({ budget, windowMs, resetMarginMs: 0 });
    const gate = limiter.share(Math.floor(budget / 10));
    // 8 pages in all: 5 + 1 of exports, 1 + 1 (an empty one) of imports.
    const listing = fakeListing({
      export: { PENDING: 450, RUNNING: 30 },
      import: { PENDING: 7, RUNNING: 0 },
    });
    const calls: Array<{ at: number; window: number; kind: JobKind; from: string }> = [];
    const added: Array<{ kind: JobKind; ids: string[] }> = [];
    const { lines, log } = logSink();
    const reports: RoundReport[] = [];
    const discovery = new Discovery({
      kinds: ['export', 'import'],
      intervalMs: 4000,
      gate,
      log,
      list: (kind, from) =>
        gate.schedule(() => {
          calls.push({
            at: Date.now() - T0,
            window: limiter.snapshot().window,
            kind,
            from: 'state' in from ? from.state : from.next,
          });
          return listing.read(kind, from);
        }),
      add: async (kind, ids) => {
        added.push({ kind, ids: [...ids] });
        return { accepted: [...ids] };
      },
    });
    const round = discovery.runRound.bind(discovery);
    discovery.runRound = () => {
      const r = round();
      void r.then((report) => report && reports.push(report));
      return r;
    };
    discovery.start();
    await vi.advanceTimersByTimeAsync(45_000);
    await discovery.stop();
    await limiter.stop();

    // Per window, at most the share; the share binds (8 pages need 4 windows).
    const perWindow = new Map<number, number>();
    for (const c of calls) perWindow.set(c.window, (perWindow.get(c.window) ?? 0) + 1);
    expect(Math.max(...perWindow.values())).toBe(2);
    expect([...perWindow.keys()].slice(0, 4)).toEqual([0, 1, 2, 3]);
    // Counted from the clock as well: the windows are back to back from the first call.
    const first = calls[0]?.at ?? 0;
    const byClock = new Map<number, number>();
    for (const c of calls) {
      const k = Math.floor((c.at - first) / windowMs);
      byClock.set(k, (byClock.get(k) ?? 0) + 1);
    }
    expect(Math.max(...byClock.values())).toBeLessThanOrEqual(2);
    expect(byClock).toEqual(perWindow);
    // Rounds stopped by the share, and the next one resumed where it stopped (no page read twice
    // before the listing was complete).
    expect(reports.slice(0, 2).map((r) => r.stopped)).toEqual(['share_spent', 'share_spent']);
    expect(calls.slice(0, 8).map((c) => `${c.kind}:${c.from}`)).toEqual([
      'export:PENDING',
      'export:export:PENDING:100',
      'export:export:PENDING:200',
      'export:export:PENDING:300',
      'export:export:PENDING:400',
      'export:RUNNING',
      'import:PENDING',
      'import:RUNNING',
    ]);
    const complete = reports.findIndex((r) => r.complete);
    expect(complete).toBeGreaterThan(0);
    // After a complete round, the next one starts afresh.
    expect(calls[8] && `${calls[8].kind}:${calls[8].from}`).toBe('export:PENDING');
    const found = new Set(added.flatMap((a) => a.ids.map((id) => `${a.kind}:${id}`)));
    expect(found.size).toBe(450 + 30 + 7);
    expect(added.every((a) => a.ids.every((id) => id[0] === a.kind[0]))).toBe(true);
    // What each round found is logged at info; a stopped round says why.
    const stopped = lines.find((l) => String(l.msg).startsWith('discovery round stopped'));
    expect(stopped).toMatchObject({ level: 30, stopped: 'share_spent', share: 2, share_left: 0 });
    expect(lines.find((l) => l.msg === 'discovery round done')).toMatchObject({
      level: 30,
      complete: true,
      found_imports: expect.any(Number),
    });
  });

  it('ends a round on a failed page, and tries the same page next round', async () => {
    const limiter = new RateLimiter({ budget: 100, windowMs: 10_000 });
    const gate = limiter.share(10);
    const listing = fakeListing({ export: { PENDING: 150, RUNNING: 0 }, import: { PENDING: 0, RUNNING: 0 } });
    let failures = 1;
    const asked: string[] = [];
    const { lines, log } = logSink();
    const discovery = new Discovery({
      kinds: ['export'],
      intervalMs: 10_000,
      gate,
      log,
      list: (kind, from) => {
        asked.push('state' in from ? from.state : from.next);
        if ('next' in from && failures-- > 0) {
          return Promise.reject(new PlatformError('PLATFORM_UNAVAILABLE', 'platform answered 500'));
        }
        return listing.read(kind, from);
      },
      add: async (_kind, ids) => ({ accepted: [...ids] }),
    });
    expect(await discovery.runRound()).toMatchObject({ stopped: 'error', pages: 1, complete: false });
    expect(
      lines.find((l) => l.msg === 'discovery could not list jobs; trying again next round'),
    ).toMatchObject({
      level: 40,
      code: 'PLATFORM_UNAVAILABLE',
    });
    expect(await discovery.runRound()).toMatchObject({ complete: true, pages: 2, found: { export: 50 } });
    expect(asked).toEqual(['PENDING', 'export:PENDING:100', 'export:PENDING:100', 'RUNNING']);
    await limiter.stop();
  });

  it('a listing that keeps failing (imports refused for good) does not keep the others from ever being read again', async () => {
    const listing = fakeListing({ export: { PENDING: 3, RUNNING: 0 }, import: { PENDING: 0, RUNNING: 0 } });
    const asked: string[] = [];
    const { lines, log } = logSink();
    const discovery = new Discovery({
      kinds: ['export', 'import'],
      intervalMs: 10_000,
      gate: { left: () => 10, max: 10 },
      log,
      list: async (kind, from) => {
        asked.push(`${kind}:${'state' in from ? from.state : from.next}`);
        if (kind === 'import') throw new PlatformError('PLATFORM_NOT_FOUND', 'platform answered 404');
        return listing.read(kind, from);
      },
      add: async (_kind, ids) => ({ accepted: [...ids] }),
    });
    const reports: Array<RoundReport | undefined> = [];
    for (let round = 0; round < 6; round++) reports.push(await discovery.runRound());
    // Exports started meanwhile are still found: their listing is read round after round.
    const exportRounds = asked.filter((a) => a === 'export:PENDING').length;
    expect(exportRounds).toBeGreaterThanOrEqual(4);
    expect(reports.every((r) => r?.complete === false)).toBe(true);
    expect(
      lines.filter(
        (l) => l.msg === 'discovery could not list jobs again; that listing is skipped until the next pass',
      ),
    ).not.toHaveLength(0);
  });

  it('adds the rest of a page when one of its ids is watched as the other kind', async () => {
    const store = await openSqliteStore({ path: ':memory:' });
    try {
      const [held] = await store.addExports([{ ids: ['IMP1'], metadata: null, kind: 'export' }], T0);
      expect(held?.accepted).toEqual(['IMP1']);
      const limiter = new RateLimiter({ budget: 100, windowMs: 10_000 });
      const { lines, log } = logSink();
      const discovery = new Discovery({
        kinds: ['import'],
        intervalMs: 10_000,
        gate: limiter.share(10),
        log,
        list: async (_kind, from) =>
          'state' in from && from.state === 'PENDING'
            ? { items: ['IMP1', 'IMP2', 'IMP3'].map((id) => ({ id, state: 'PENDING' })), next: undefined }
            : { items: [], next: undefined },
        add: async (kind, ids) => {
          const [result] = await store.addExports(
            [{ ids, metadata: { discovered: true }, kind }],
            Date.now(),
          );
          return result!;
        },
      });
      expect(await discovery.runRound()).toMatchObject({ complete: true, added: { import: 2 } });
      expect(await store.getExport('IMP2', 'import')).toMatchObject({ id: 'IMP2', state: 'UNKNOWN' });
      expect(await store.getExport('IMP3', 'import')).toMatchObject({ id: 'IMP3', state: 'UNKNOWN' });
      expect(await store.getExport('IMP1', 'import')).toBeUndefined();
      expect(
        lines.find((l) => l.msg === 'discovered imports whose ids are watched as the other kind; not added'),
      ).toMatchObject({ count: 1, sample_ids: ['IMP1'] });
      await limiter.stop();
    } finally {
      await store.close();
    }
  });

  it('ends a listing whose next link loops, even across resumed rounds, so the next listing is still read', async () => {
    const asked: string[] = [];
    const added: string[] = [];
    const { lines, log } = logSink();
    // One page per round, as when each window's share is one call.
    let pagesLeft = 0;
    const discovery = new Discovery({
      kinds: ['export'],
      intervalMs: 10_000,
      gate: { max: 1, left: () => pagesLeft },
      log,
      list: async (_kind, from) => {
        if (pagesLeft-- <= 0) throw new PlatformError('SHARE_SPENT', "this window's share is spent");
        const at = 'state' in from ? from.state : from.next;
        asked.push(at);
        return at === 'RUNNING'
          ? { items: [{ id: 'running-1', state: 'RUNNING' }], next: undefined }
          : {
              items: [{ id: 'pending-1', state: 'PENDING' }],
              next: '/storage/exports?state=PENDING&offset=0',
            };
      },
      add: async (_kind, ids) => {
        added.push(...ids);
        return { accepted: [...ids] };
      },
    });
    const reports: Array<RoundReport | undefined> = [];
    for (let round = 0; round < 4; round++) {
      pagesLeft = 1;
      reports.push(await discovery.runRound());
    }
    expect(asked).toEqual(['PENDING', '/storage/exports?state=PENDING&offset=0', 'RUNNING', 'PENDING']);
    expect(reports.map((r) => r?.complete)).toEqual([false, false, true, false]);
    expect(added).toContain('running-1');
    expect(
      lines.filter((l) => String(l.msg).startsWith('discovery listing links back to a page already read')),
    ).toEqual([expect.objectContaining({ level: 40, kind: 'export', state: 'PENDING', pages: 2 })]);
  });

  it('listUnfinished reads every page of both states, and stops at a next link that loops', async () => {
    const listing = fakeListing({
      export: { PENDING: 250, RUNNING: 20 },
      import: { PENDING: 0, RUNNING: 3 },
    });
    expect(await listUnfinished(listing.read, 'export')).toHaveLength(270);
    expect(await listUnfinished(listing.read, 'import')).toEqual(['iR0', 'iR1', 'iR2']);
    let reads = 0;
    const looping = async (): Promise<JobPage> => {
      reads++;
      return { items: [{ id: 'x', state: 'PENDING' }], next: '/storage/exports?offset=0' };
    };
    expect(await listUnfinished(looping, 'export')).toEqual(['x']);
    expect(reads).toBe(4);
  });

  it('listUnfinished does not miss a still-PENDING job when one before it leaves the listing between pages', async () => {
    // The platform (and the simulator) lists oldest first, by offset, filtered by state.
    const jobs = Array.from({ length: 250 }, (_, i) => ({ id: `e${i}`, state: 'PENDING' }));
    let pagesRead = 0;
    const read = async (_kind: JobKind, from: { state: string } | { next: string }): Promise<JobPage> => {
      const q = new URLSearchParams('state' in from ? `state=${from.state}` : from.next.split('?')[1]);
      const state = q.get('state') as string;
      const offset = Number(q.get('offset') ?? 0);
      const listed = jobs.filter((j) => j.state === state);
      const items = listed.slice(offset, offset + 100).map((j) => ({ ...j }));
      // The oldest export starts running once the first page has been read.
      if (++pagesRead === 1) (jobs[0] as { state: string }).state = 'RUNNING';
      const next =
        offset + 100 < listed.length ? `/storage/exports?state=${state}&offset=${offset + 100}` : undefined;
      return { items, next };
    };
    const ids = await listUnfinished(read, 'export');
    // e100 was PENDING all along: it moved up onto the first page after that page was read.
    expect(ids).toContain('e100');
    expect(new Set(ids).size).toBe(250);
  });
});

/** The simulator, a receiver and a daemon with discovery, on loopback; the daemon's list calls recorded by window. */
async function discoveryStack(options: {
  env: Record<string, string>;
  intervalMs: number;
  sim?: ConstructorParameters<typeof Simulator>[0];
}) {
  const sim = new Simulator({ seed: 17, token: TOKEN, ...options.sim });
  const receiver = new WebhookReceiver({ secret: SECRET });
  const simUrl = await sim.start();
  const hookUrl = await receiver.start();
  const logs: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'debug' },
    new Writable({
      write(chunk, _e, done) {
        logs.push(JSON.parse(String(chunk)));
        done();
      },
    }),
  );
  const config = loadConfig(
    {
      SB_API_ENDPOINT: simUrl,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_WEBHOOK_URLS: hookUrl,
      WATCHER_WEBHOOK_SECRET: SECRET,
      WATCHER_HTTP_PORT: '0',
      WATCHER_POLL_INTERVAL: '300ms',
      ...options.env,
    },
    { requireToken: true },
  );
  const daemon = await Daemon.open(config, {
    log,
    api: true,
    storage: 'memory',
    platformRetry: { minTimeoutMs: 10, maintenanceMaxDelayMs: 300 },
    webhookRetry: { minTimeoutMs: 50, maxTimeoutMs: 500 },
    discoverIntervalMs: options.intervalMs,
  });
  // Every list call, with the budget window it started in (read when the limiter starts it).
  const listCalls: Array<{ window: number; kind: JobKind }> = [];
  const client = daemon.client;
  const listPage = client.listPage.bind(client);
  client.listPage = (kind, from, gate) =>
    listPage(
      kind,
      from,
      gate && {
        ...gate,
        schedule: (fn) =>
          gate.schedule(() => {
            listCalls.push({ window: daemon.limiter.snapshot().window, kind });
            return fn();
          }),
      },
    );
  const apiUrl = (await daemon.start()) as string;
  const admin = async (path: string, body: unknown) => {
    const res = await request(`${new URL(simUrl).origin}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    expect(res.statusCode).toBe(201);
    return ((await res.body.json()) as { ids: string[] }).ids;
  };
  const get = async (path: string) => {
    const res = await request(`${apiUrl}${path}`);
    return { status: res.statusCode, json: (await res.body.json()) as Record<string, unknown> };
  };
  return {
    sim,
    receiver,
    daemon,
    logs,
    listCalls,
    admin,
    get,
    close: async () => {
      await daemon.stop(1000);
      await receiver.close();
      await sim.close();
    },
  };
}

describe('discovery in the daemon, against the simulator over loopback', () => {
  let stack: Awaited<ReturnType<typeof discoveryStack>> | undefined;
  afterEach(async () => {
    await stack?.close();
    stack = undefined;
  });

  it('finds exports and imports another client starts mid-run within one interval, watches them to their events', async () => {
    const intervalMs = 400;
    stack = await discoveryStack({
      env: { WATCHER_DISCOVER: 'exports,imports', WATCHER_RATE_BUDGET: '500', WATCHER_RATE_WINDOW: '5s' },
      intervalMs,
      sim: { timing: { pendingMs: [1500, 2000], runningMs: [300, 800] }, failRate: 0.3 },
    });
    const s = stack;
    // A first round ran at start and found nothing.
    await until(async () => s.logs.some((l) => l.msg === 'discovery round done'));
    expect(s.logs.find((l) => l.msg === 'discovery round done')).toMatchObject({
      found_exports: 0,
      found_imports: 0,
    });

    // Another client starts jobs through the simulator's admin route.
    const createdAt = Date.now();
    const exports = await s.admin('/_simulator/exports', { count: 5 });
    const imports = await s.admin('/_simulator/imports', { count: 4 });
    const all = [...exports, ...imports];
    await until(async () => s.daemon.tracker.activeCount + s.receiver.acceptedIds().size >= all.length);
    for (const id of exports) {
      const record = (await s.get(`/v1/exports/${id}`)).json;
      expect(record).toMatchObject({ id, metadata: { discovered: true } });
      // Found within one interval (plus the round's own calls).
      expect(Date.parse(record.first_seen_at as string) - createdAt).toBeLessThan(intervalMs + 1000);
    }
    for (const id of imports) {
      expect((await s.get(`/v1/imports/${id}`)).json).toMatchObject({ id, metadata: { discovered: true } });
    }
    await s.receiver.waitFor((r) => r.acceptedIds().size >= all.length, 30_000);
    for (const w of s.receiver.accepted()) {
      const body = w.json as { type: string; data: Record<string, unknown> };
      expect(body.data.metadata).toEqual({ discovered: true });
      const id = (body.data.import_id ?? body.data.export_id) as string;
      const kind = imports.includes(id) ? 'import' : 'export';
      expect(body.type).toMatch(new RegExp(`^${kind}\\.(completed|failed)$`));
      expect(w.id).toBe(
        kind === 'import'
          ? `evt_import_${id}_${body.type.split('.')[1]}`
          : `evt_${id}_${body.type.split('.')[1]}`,
      );
    }
    expect(s.logs.some((l) => l.msg === 'discovery round done' && (l.added_exports as number) > 0)).toBe(
      true,
    );
    expect(s.logs.some((l) => l.msg === 'discovery round done' && (l.added_imports as number) > 0)).toBe(
      true,
    );
    expect(s.sim.stats().requests).toMatchObject({
      list: expect.any(Number),
      import_list: expect.any(Number),
    });
  });

  it('keeps to a tenth of the budget per window when the listing needs more, and still finds everything', async () => {
    // Budget 20 per 2 s: a share of 2 list calls per window. 350 PENDING exports need 4 pages, the
    // other three listings one each: 7 pages, 4 windows at least.
    stack = await discoveryStack({
      env: { WATCHER_DISCOVER: 'exports,imports', WATCHER_RATE_BUDGET: '20', WATCHER_RATE_WINDOW: '2s' },
      intervalMs: 300,
      sim: { exports: 350, timing: { pendingMs: [600_000, 600_000], runningMs: [1000, 1000] } },
    });
    const s = stack;
    const started = performance.now();
    const done = (l: Record<string, unknown>) => l.msg === 'discovery round done' && l.complete === true;
    await until(async () => s.logs.some(done), 40_000);
    const elapsed = performance.now() - started;
    expect(s.daemon.tracker.activeCount).toBe(350);
    const perWindow = new Map<number, number>();
    for (const c of s.listCalls) perWindow.set(c.window, (perWindow.get(c.window) ?? 0) + 1);
    expect(Math.max(...perWindow.values())).toBeLessThanOrEqual(2);
    expect(perWindow.size).toBeGreaterThanOrEqual(4);
    // The simulator saw exactly those calls, and no more than the share allows over the time taken.
    const requests = s.sim.stats().requests;
    expect((requests.list ?? 0) + (requests.import_list ?? 0)).toBe(s.listCalls.length);
    expect(s.listCalls.length).toBeLessThanOrEqual(2 * (Math.ceil(elapsed / 2000) + 1));
    // The share bound rounds, and they resumed where they stopped.
    expect(
      s.logs.some(
        (l) =>
          l.msg ===
            "discovery round stopped: this window's share of the rate budget is spent; it resumes next round" &&
          l.level === 30,
      ),
    ).toBe(true);
    expect(
      s.logs.some((l) => l.msg === 'discovery round done' && l.resumed === true && l.complete === true),
    ).toBe(true);
    // Checks went on meanwhile, from the rest of the budget.
    expect(s.sim.stats().bulkIdsPerCall.length).toBeGreaterThan(0);
    expect(s.sim.stats().rateLimited).toBe(0);
  });
});

describe('watch --all', () => {
  const sims: Simulator[] = [];
  afterEach(async () => {
    killAll();
    await Promise.all(sims.splice(0).map((s) => s.close()));
  });
  /**
   * Pending for an hour of the simulator's clock: however long the CLI takes to start, such jobs
   * are unfinished when listed; `finishOnceListed` moves the clock past their end once they are.
   */
  const LONG = { pendingMs: 3_600_000, runningMs: 1000 };

  /** Once `watch --all` says what it is watching (the listing is done), ends every LONG job. */
  async function finishOnceListed(p: CliProcess, advance: (ms: number) => void): Promise<void> {
    await new Promise<void>((resolve) => {
      const check = () => {
        if (/watching \d+ /.test(p.stderr())) resolve();
      };
      p.child.stderr?.on('data', check);
      check();
    });
    advance(LONG.pendingMs + LONG.runningMs);
  }

  /** The simulator's clock runs `ahead` ms ahead of the real one; `advance` moves it on. */
  async function sim(): Promise<{
    sim: Simulator;
    env: Record<string, string>;
    advance: (ms: number) => void;
  }> {
    let ahead = 0;
    const s = new Simulator({
      seed: 33,
      token: TOKEN,
      timing: { pendingMs: [1500, 2500], runningMs: [300, 900] },
      now: () => Date.now() + ahead,
    });
    sims.push(s);
    const url = await s.start();
    // A budget that spaces calls 10 ms apart, so the listing at start takes no time to speak of.
    return {
      sim: s,
      advance: (ms) => {
        ahead += ms;
      },
      env: {
        SB_API_ENDPOINT: url,
        SB_AUTH_TOKEN: TOKEN,
        WATCHER_POLL_INTERVAL: '200ms',
        WATCHER_RATE_BUDGET: '1000',
        WATCHER_RATE_WINDOW: '10s',
      },
    };
  }

  it('waits for every unfinished export and import of the user, listed once at start, and ends when they are finished', async () => {
    const { sim: s, env, advance } = await sim();
    s.createExports(2, { pendingMs: 0, runningMs: 0, outcome: 'COMPLETED' });
    const exports = s.createExports(3, { ...LONG, outcome: 'COMPLETED' });
    const imports = s.createImports(2, { ...LONG, outcome: 'COMPLETED' });
    const p = spawnCli(['watch', '--all', '--json'], env);
    await finishOnceListed(p, advance);
    const { code } = await p.exited;
    expect(code).toBe(0);
    const records = p
      .stdout()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records.map((r) => r.id).sort()).toEqual([...exports, ...imports].sort());
    for (const r of records) expect(r).toHaveProperty(imports.includes(r.id as string) ? 'import' : 'export');
    expect(p.stderr()).toContain('watching 5 jobs (3 exports, 2 imports)');
    // Listed once: one page per kind and state.
    expect(s.stats().requests).toMatchObject({ list: 2, import_list: 2 });
  });

  it('with --kind, only that kind; exit 1 when one of them FAILED', async () => {
    const { sim: s, env, advance } = await sim();
    s.createExports(2);
    const imports = [
      ...s.createImports(1, { ...LONG, outcome: 'COMPLETED' }),
      ...s.createImports(1, { ...LONG, outcome: 'FAILED' }),
    ];
    const p = spawnCli(['watch', '--all', '--kind', 'import', '--json'], env);
    await finishOnceListed(p, advance);
    expect((await p.exited).code).toBe(1);
    const ids = p
      .stdout()
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { id: string }).id);
    expect(ids.sort()).toEqual([...imports].sort());
    expect(s.stats().requests.list).toBeUndefined();
  });

  it('with no unfinished job says so and exits 0; with ids as well it is a usage error', async () => {
    const { sim: s, env } = await sim();
    s.createImports(1, { pendingMs: 0, runningMs: 0 });
    const p = spawnCli(['watch', '--all'], env);
    expect((await p.exited).code).toBe(0);
    expect(p.stderr()).toContain('no unfinished exports or imports to watch');
    expect(p.stdout()).toBe('');
    const q = spawnCli(['watch', '--all', '--kind', 'export'], env);
    expect((await q.exited).code).toBe(0);
    expect(q.stderr()).toContain('no unfinished exports to watch');
    const bad = spawnCli(['watch', '--all', 'some-id'], env);
    expect((await bad.exited).code).toBe(2);
    expect(bad.stderr()).toContain('watch --all takes no ids');
  });
});

/** Polls a condition until it holds; fails after the deadline. For states with no event to await. */
async function until(test: () => Promise<boolean>, deadlineMs = 20_000): Promise<void> {
  const end = performance.now() + deadlineMs;
  while (!(await test())) {
    if (performance.now() > end) throw new Error('condition not reached before the deadline');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
