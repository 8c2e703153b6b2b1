/**
 * Import jobs (volume → platform), watched like exports: their events, one kind per bulk call,
 * the simulator's import routes, the control API's /v1/imports, and the CLI's --kind. The end to
 * end tests run the daemon against the simulator over loopback with a real receiver; nothing
 * sleeps: each test awaits the state it needs.
 */
import pino from 'pino';
import { Webhook } from 'standardwebhooks';
import { request } from 'undici';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../src/config/config.js';
import { eventForTransition, webhookId } from '../src/delivery/events.js';
import type { WebhookReceiver } from '../src/dev/receiver.js';
import { type ImportObject, Simulator } from '../src/dev/simulator.js';
import { PlatformClient } from '../src/platform/platform-client.js';
import { RateLimiter } from '../src/platform/rate-limiter.js';
import { Scheduler } from '../src/polling/scheduler.js';
import { type JobKind, type Observation, Tracker } from '../src/polling/tracker.js';
import { Bus } from '../src/shared/bus.js';
import { logSink } from './helpers/log-sink.js';
import { loopbackPlatform, platformClient } from './helpers/platform.js';
import { firstLine, killAll, spawnCli } from './helpers/spawn.js';
import { SECRET, type Stack, startStack, TOKEN } from './helpers/stack.js';

const T0 = Date.UTC(2026, 0, 1);
const SHORT = { pendingMs: [100, 600] as [number, number], runningMs: [200, 1200] as [number, number] };

/** The webhook bodies the receiver accepted, by job id (`data.export_id` or `data.import_id`). */
function acceptedByJob(receiver: WebhookReceiver): Map<string, Array<{ webhookId: string; body: WireBody }>> {
  const byJob = new Map<string, Array<{ webhookId: string; body: WireBody }>>();
  for (const w of receiver.accepted()) {
    const body = w.json as WireBody;
    const id = body.data.import_id ?? body.data.export_id ?? '?';
    byJob.set(id, [...(byJob.get(id) ?? []), { webhookId: w.id, body }]);
  }
  return byJob;
}

interface WireBody {
  type: string;
  timestamp: string;
  data: Record<string, unknown> & { export_id?: string; import_id?: string };
}

describe('events of imports', () => {
  it('are import.* under evt_import_<id>_<suffix>, with data.import_id and data.import', () => {
    const object = { id: 'imp1', state: 'COMPLETED', result: { id: 'file1' } };
    const event = eventForTransition(
      {
        exportId: 'imp1',
        kind: 'import',
        from: 'RUNNING',
        to: 'COMPLETED',
        at: T0,
        export: object,
        error: null,
      },
      { run: 7 },
    );
    expect(event).toEqual({
      id: 'evt_import_imp1_completed',
      type: 'import.completed',
      exportId: 'imp1',
      body: {
        type: 'import.completed',
        timestamp: new Date(T0).toISOString(),
        data: {
          import_id: 'imp1',
          state: 'COMPLETED',
          previous_state: 'RUNNING',
          metadata: { run: 7 },
          import: object,
          error: null,
        },
      },
    });
    const lost = eventForTransition(
      {
        exportId: 'imp2',
        kind: 'import',
        from: 'UNKNOWN',
        to: 'LOST',
        at: T0,
        export: null,
        error: { status: 404, code: 9008 },
      },
      null,
    );
    expect(lost).toMatchObject({
      id: 'evt_import_imp2_lost',
      type: 'import.lost',
      body: { data: { import_id: 'imp2', import: null, error: { code: 9008 } } },
    });
    expect(webhookId('x', 'import.running')).toBe('evt_import_x_running');
    expect(eventForTransition({ ...base('i'), kind: 'import', to: 'PENDING' }, null)).toBeNull();
  });

  it('leave the events of exports as they were: webhook-id, type and body', () => {
    const event = eventForTransition({ ...base('e'), to: 'FAILED' }, null);
    expect(event?.id).toBe('evt_e_failed');
    expect(event?.type).toBe('export.failed');
    expect(event?.body.data).toHaveProperty('export_id', 'e');
    expect(event?.body.data).toHaveProperty('export');
    expect(event?.body.data).not.toHaveProperty('import_id');
    expect(eventForTransition({ ...base('e'), kind: 'export', to: 'FAILED' }, null)).toEqual(event);
  });

  it('are sent by default (the outcomes of both kinds); WATCHER_WEBHOOK_EVENTS takes import types', () => {
    expect(loadConfig({}).webhook.events).toEqual(
      new Set([
        'export.completed',
        'export.failed',
        'export.lost',
        'import.completed',
        'import.failed',
        'import.lost',
      ]),
    );
    expect(loadConfig({ WATCHER_WEBHOOK_EVENTS: 'import.running,export.lost' }).webhook.events).toEqual(
      new Set(['import.running', 'export.lost']),
    );
    // A list of old keeps its meaning: export events only.
    expect(
      loadConfig({ WATCHER_WEBHOOK_EVENTS: 'export.completed,export.failed,export.lost' }).webhook.events,
    ).toEqual(new Set(['export.completed', 'export.failed', 'export.lost']));
    expect(() => loadConfig({ WATCHER_WEBHOOK_EVENTS: 'import.done' })).toThrow(/import\.running/);
  });
});

function base(id: string): Parameters<typeof eventForTransition>[0] {
  return { exportId: id, from: 'RUNNING', to: 'COMPLETED', at: T0, export: null, error: null };
}

describe('Tracker.takeDue with both kinds', () => {
  const never = () => false;
  const fresh = (id: string, kind?: JobKind) => ({
    id,
    state: 'UNKNOWN' as const,
    misses: 0,
    ...(kind ? { kind } : {}),
  });
  const seen = (id: string): Observation => ({ kind: 'resource', id, resource: { id, state: 'RUNNING' } });

  it('answers ids of one kind per take: the kind that has waited longest, then the other', () => {
    const t = new Tracker({});
    t.track([fresh('e1'), fresh('i1', 'import'), fresh('e2'), fresh('i2', 'import')]);
    // Never checked: the earliest tracked (e1) decides; the batch holds exports only.
    expect(t.takeDue(T0, 1000, 10, never)).toEqual({ due: ['e1', 'e2'], nextDueAt: undefined });
    t.apply([seen('e1'), seen('e2')], T0, 'export');
    // Every import taken and no export due: the exports' next due time is known.
    expect(t.takeDue(T0, 1000, 10, never)).toEqual({
      kind: 'import',
      due: ['i1', 'i2'],
      nextDueAt: T0 + 1000,
    });
    t.apply([seen('i1'), seen('i2')], T0 + 10, 'import');
    // Checked: the kind checked earlier falls due first.
    expect(t.takeDue(T0 + 1000, 1000, 10, never)).toEqual({ due: ['e1', 'e2'], nextDueAt: T0 + 1010 });
    expect(t.takeDue(T0 + 1005, 1000, 1, (id) => id === 'e1')).toEqual({ due: ['e2'], nextDueAt: undefined });
    // Nothing due: when the first of either kind falls due.
    t.apply([seen('e1'), seen('e2')], T0 + 1000, 'export');
    expect(t.takeDue(T0 + 1005, 1000, 10, never)).toEqual({ due: [], nextDueAt: T0 + 1010 });
    // A never-checked import goes before checked exports that are due.
    t.track([fresh('i3', 'import')]);
    expect(t.takeDue(T0 + 5000, 1000, 10, never)).toEqual({
      kind: 'import',
      due: ['i3', 'i1', 'i2'],
      nextDueAt: undefined,
    });
  });

  it("ignores an answer about an id of the other kind, and reports an import's transitions with its kind", () => {
    const t = new Tracker({});
    t.track([fresh('e'), fresh('i', 'import')]);
    const wrong = t.apply([seen('e')], T0, 'import');
    expect(wrong.changes).toEqual([]);
    expect(t.get('e')).toMatchObject({ state: 'UNKNOWN', checks: 0 });
    const right = t.apply([seen('i'), seen('e')], T0, 'import');
    expect(right.transitions).toEqual([
      {
        exportId: 'i',
        kind: 'import',
        from: 'UNKNOWN',
        to: 'RUNNING',
        at: T0,
        export: { id: 'i', state: 'RUNNING' },
        error: null,
      },
    ]);
    expect(t.get('i')).toMatchObject({ kind: 'import', state: 'RUNNING' });
    expect(t.get('e')).not.toHaveProperty('kind');
  });

  it('stays O(max + in flight) with 100,000 exports and 100,000 imports', () => {
    const t = new Tracker({});
    const exports = Array.from({ length: 100_000 }, (_, i) => `e${i}`);
    const imports = Array.from({ length: 100_000 }, (_, i) => `i${i}`);
    t.track(exports.map((id) => fresh(id)));
    t.track(imports.map((id) => fresh(id, 'import')));
    const inFlight = new Set([...exports.slice(0, 300), ...imports.slice(0, 300)]);
    const skip = vi.fn((id: string) => inFlight.has(id));
    expect(t.takeDue(T0, 1000, 100, skip).due).toEqual(exports.slice(300, 400));
    // Each queue's head is looked at past its ids in flight, then the chosen one is walked.
    expect(skip.mock.calls.length).toBeLessThanOrEqual(2 * 301 + 400);
    t.apply(exports.map(seen), T0, 'export');
    skip.mockClear();
    expect(t.takeDue(T0 + 1, 1000, 100, skip)).toMatchObject({
      kind: 'import',
      due: imports.slice(300, 400),
    });
    expect(skip.mock.calls.length).toBeLessThanOrEqual(2 * 301 + 400);
  });
});

describe('Scheduler with both kinds', () => {
  beforeEach(() => vi.useFakeTimers({ now: T0 }));
  afterEach(() => vi.useRealTimers());

  it('sends one kind per call, both kinds in turn, each id with its own kind', async () => {
    const tracker = new Tracker({});
    const calls: Array<{ kind: JobKind; ids: string[] }> = [];
    const scheduler = new Scheduler(
      {
        tracker,
        bus: new Bus(),
        now: () => Date.now(),
        log: pino({ level: 'silent' }),
        record: async () => undefined,
        checkStatuses: async (ids, kind) => {
          calls.push({ kind, ids: [...ids] });
          return {
            observations: ids.map((id) => ({ kind: 'resource', id, resource: { id, state: 'RUNNING' } })),
            warnings: [],
          };
        },
      },
      { pollIntervalMs: 1000, batchSize: 3, maxOutstanding: 2 },
    );
    tracker.track([
      ...['e1', 'e2', 'e3', 'e4'].map((id) => ({ id, state: 'UNKNOWN' as const, misses: 0 })),
      ...['i1', 'i2'].map((id) => ({ id, kind: 'import' as const, state: 'UNKNOWN' as const, misses: 0 })),
    ]);
    scheduler.start();
    await vi.advanceTimersByTimeAsync(10);
    expect(calls).toEqual([
      { kind: 'export', ids: ['e1', 'e2', 'e3'] },
      { kind: 'export', ids: ['e4'] },
      { kind: 'import', ids: ['i1', 'i2'] },
    ]);
    await vi.advanceTimersByTimeAsync(1000);
    for (const call of calls) {
      expect(call.ids.every((id) => id.startsWith(call.kind === 'import' ? 'i' : 'e'))).toBe(true);
    }
    expect(calls.slice(3).map((c) => c.kind)).toContain('import');
    const stopping = scheduler.stop();
    await vi.runOnlyPendingTimersAsync();
    await stopping;
  });
});

describe('the simulator serves imports', () => {
  const sims: Simulator[] = [];
  afterEach(async () => {
    await Promise.all(sims.splice(0).map((s) => s.close()));
  });
  let clock = T0;
  async function sim(): Promise<Simulator> {
    clock = T0;
    const s = new Simulator({
      seed: 5,
      now: () => clock,
      timing: { pendingMs: [1000, 1000], runningMs: [1000, 1000] },
    });
    sims.push(s);
    await s.start();
    return s;
  }
  async function call(s: Simulator, method: 'GET' | 'POST', path: string, body?: unknown) {
    const url = path.startsWith('/_simulator')
      ? new URL(s.baseUrl).origin + path
      : path.startsWith('http')
        ? path
        : s.baseUrl + path;
    const res = await request(url, {
      method,
      headers: { 'x-sbg-auth-token': 'tok', 'content-type': 'application/json' },
      body: body === undefined ? null : JSON.stringify(body),
    });
    return { status: res.statusCode, json: (await res.body.json()) as Record<string, unknown> };
  }

  it('creates, gets, bulk-gets and lists imports with a state filter and next links', async () => {
    const s = await sim();
    const admin = await call(s, 'POST', '/_simulator/imports', { count: 3, outcome: 'COMPLETED' });
    expect(admin.status).toBe(201);
    const ids = admin.json.ids as string[];
    const created = await call(s, 'POST', '/storage/imports', {
      source: { volume: 'me/bucket', location: 'in/x.bam' },
      destination: { project: 'me/project' },
    });
    expect(created.status).toBe(201);
    expect(created.json).toMatchObject({
      state: 'PENDING',
      source: { volume: 'me/bucket', location: 'in/x.bam' },
      destination: { project: 'me/project', name: 'x.bam' },
      result: null,
    });
    expect((await call(s, 'POST', '/storage/imports', { source: {} })).status).toBe(400);
    // Into a folder: echoed as the parent it is, never as a project, and not listed as one.
    const intoFolder = await call(s, 'POST', '/storage/imports', {
      source: { volume: 'me/bucket', location: 'in/y.bam' },
      destination: { parent: '5f0c1a2b3c4d5e6f70819203' },
      preserve_folder_structure: true,
    });
    expect(intoFolder.status).toBe(201);
    expect(intoFolder.json.destination).toEqual({ parent: '5f0c1a2b3c4d5e6f70819203', name: 'y.bam' });
    expect(intoFolder.json.preserve_folder_structure).toBe(true);
    expect(created.json).not.toHaveProperty('preserve_folder_structure');
    expect((await call(s, 'GET', '/storage/imports?project=5f0c1a2b3c4d5e6f70819203')).json.items).toEqual(
      [],
    );
    for (const bad of [
      { source: { volume: 'me/bucket', location: 'a' }, destination: { project: 'p/q', parent: 'f' } },
      {
        source: { volume: 'me/bucket', location: 'a' },
        destination: { parent: 'f' },
        preserve_folder_structure: 1,
      },
      { source: { volume: 'me/bucket', location: 'l'.repeat(1025) }, destination: { project: 'p/q' } },
      {
        source: { volume: 'me/bucket', location: 'a' },
        destination: { project: 'p/q', name: 'n'.repeat(1025) },
      },
    ]) {
      expect((await call(s, 'POST', '/storage/imports', bad)).status).toBe(400);
    }
    const one = await call(s, 'GET', `/storage/imports/${ids[0]}`);
    expect(one.json).toMatchObject({ id: ids[0], state: 'PENDING' });
    expect((await call(s, 'GET', `/storage/exports/${ids[0]}`)).status).toBe(404);

    clock = T0 + 2500;
    const bulk = await call(s, 'POST', '/bulk/storage/imports/get', { import_ids: [...ids, 'nope'] });
    const items = bulk.json.items as Array<{ resource?: ImportObject; error?: { code: number } }>;
    expect(items).toHaveLength(4);
    expect(items.filter((i) => i.resource?.state === 'COMPLETED')).toHaveLength(3);
    expect(items.find((i) => i.resource)?.resource?.result).toMatchObject({ type: 'file' });
    expect(items.filter((i) => i.error?.code === 9008)).toHaveLength(1);
    expect((await call(s, 'POST', '/bulk/storage/imports/get', { export_ids: ids })).status).toBe(400);

    // The five created at T0 have finished (some may have FAILED); 150 new ones are PENDING.
    s.createImports(150);
    const page1 = await call(s, 'GET', '/storage/imports?state=PENDING&limit=100');
    expect(page1.json.items).toHaveLength(100);
    const next = (page1.json.links as Array<{ rel: string; href: string }>).find((l) => l.rel === 'next');
    expect(next?.href).toMatch(/\/storage\/imports\?/);
    const page2 = await call(s, 'GET', next!.href);
    expect(page2.json.items).toHaveLength(50);
    expect((page2.json.links as Array<{ rel: string }>).some((l) => l.rel === 'next')).toBe(false);
    expect((await call(s, 'GET', '/storage/imports?state=COMPLETED,FAILED')).json.items).toHaveLength(5);
    expect((await call(s, 'GET', '/storage/exports')).json.items).toEqual([]);

    const stats = s.stats();
    expect(stats.imports).toBe(155);
    expect(stats.exports).toBe(0);
    expect(stats.importBulkIdsPerCall).toEqual([4]);
    expect(stats.bulkIdsPerCall).toEqual([]);
    expect(stats.wrongKindIds).toBe(1);
    expect(stats.requests).toMatchObject({
      import_create: 7,
      import_get: 1,
      import_bulk_get: 2,
      import_list: 4,
      get: 1,
      list: 1,
    });
  });

  it('counts ids asked on the wrong kind of route, and applies --no-bulk to imports too', async () => {
    const s = new Simulator({ seed: 1, bulk: false });
    sims.push(s);
    await s.start();
    const [exp] = s.createExports(1);
    const res = await call(s, 'POST', '/bulk/storage/imports/get', { import_ids: [exp] });
    expect(res.status).toBe(405);
    expect(s.kindOf(exp!)).toBe('export');
    expect((await call(s, 'GET', `/storage/imports/${exp}`)).status).toBe(404);
    expect(s.stats().wrongKindIds).toBe(1);
  });
});

describe('PlatformClient with imports', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /** A client of a loopback server that answers every request with `body`. */
  async function clientOf(body: string, options: { token?: string; log?: pino.Logger } = {}) {
    const { createServer } = await import('node:http');
    const server = createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(body);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
    const limiter = new RateLimiter({ budget: 10, windowMs: 60_000 });
    cleanups.push(() => limiter.stop());
    const c = new PlatformClient({
      endpoint: `http://127.0.0.1:${(server.address() as { port: number }).port}/v2`,
      token: options.token ?? 't',
      gate: limiter,
      userAgent: 't',
      log: options.log ?? pino({ level: 'silent' }),
    });
    cleanups.push(() => c.close());
    return c;
  }

  async function client(options: ConstructorParameters<typeof Simulator>[0] = {}) {
    const sim = new Simulator({ seed: 9, ...options });
    const base = await sim.start();
    cleanups.push(() => sim.close());
    const limiter = new RateLimiter({ budget: 1000, windowMs: 60_000 });
    cleanups.push(() => limiter.stop());
    const c = new PlatformClient({
      endpoint: base,
      token: 'tok',
      gate: limiter,
      userAgent: 't',
      log: pino({ level: 'silent' }),
    });
    cleanups.push(() => c.close());
    return { sim, client: c, base };
  }

  it('checks imports on the imports routes, one kind per call, and lists them page by page', async () => {
    const { sim, client: c } = await client({ timing: { pendingMs: [60_000, 60_000], runningMs: [1, 1] } });
    const imports = sim.createImports(3);
    const exports = sim.createExports(2);
    const result = await c.checkStatuses('import', [...imports, 'missing-one']);
    expect(
      result.observations
        .filter((o) => o.kind === 'resource')
        .map((o) => o.id)
        .sort(),
    ).toEqual([...imports].sort());
    expect(await c.checkStatuses(exports)).toMatchObject({
      observations: [{ kind: 'resource' }, { kind: 'resource' }],
    });
    expect(await c.getOneItem('import', imports[0]!)).toMatchObject({
      resource: { id: imports[0], state: 'PENDING' },
    });
    expect(await c.getOneItem('export', imports[0]!)).toMatchObject({
      error: { code: 9008, id: imports[0] },
    });
    const stats = sim.stats();
    expect(stats.importBulkIdsPerCall).toEqual([4]);
    expect(stats.bulkIdsPerCall).toEqual([2]);

    sim.createImports(230);
    const first = await c.listPage('import', { state: 'PENDING' });
    expect(first.items).toHaveLength(100);
    expect(first.items[0]).toEqual({ id: imports[0], state: 'PENDING' });
    const second = await c.listPage('import', { next: first.next! });
    const third = await c.listPage('import', { next: second.next! });
    expect(third.items).toHaveLength(33);
    expect(third.next).toBeUndefined();
    expect((await c.listPage('export', { state: 'RUNNING' })).items).toEqual([]);
  });

  it("follows a next link's query on its own endpoint only, and no link to another resource", async () => {
    // A server of our own that answers with the next link it is told to.
    const { createServer } = await import('node:http');
    const seen: string[] = [];
    let next = '';
    const server = createServer((req, res) => {
      seen.push(req.url ?? '');
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({ items: [{ id: 'a', state: 'PENDING' }], links: [{ rel: 'next', href: next }] }),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
    const port = (server.address() as { port: number }).port;
    const limiter = new RateLimiter({ budget: 10, windowMs: 60_000 });
    cleanups.push(() => limiter.stop());
    const other = new PlatformClient({
      endpoint: `http://127.0.0.1:${port}/v2`,
      token: 't',
      gate: limiter,
      userAgent: 't',
      log: pino({ level: 'silent' }),
    });
    cleanups.push(() => other.close());
    // Another host: its query only, on our endpoint.
    next = 'https://elsewhere.example/v2/storage/imports?offset=100&limit=100&state=PENDING';
    const page = await other.listPage('import', { state: 'PENDING' });
    expect(page).toEqual({
      items: [{ id: 'a', state: 'PENDING' }],
      next: '/storage/imports?offset=100&limit=100&state=PENDING',
    });
    await other.listPage('import', { next: page.next! });
    expect(seen).toEqual([
      '/v2/storage/imports?state=PENDING&limit=100',
      '/v2/storage/imports?offset=100&limit=100&state=PENDING',
    ]);
    // Another resource, or the other kind's list: not followed.
    next = 'https://elsewhere.example/v2/files?offset=100';
    expect((await other.listPage('import', { state: 'RUNNING' })).next).toBeUndefined();
    next = '/v2/storage/exports?offset=100';
    expect((await other.listPage('import', { state: 'RUNNING' })).next).toBeUndefined();
  });

  it("keeps the listing's state and page size on a next link that drops or changes them", async () => {
    let next = '';
    const { url, seen } = await loopbackPlatform(cleanups, (_req, res) => {
      res.setHeader('content-type', 'application/json');
      // Not empty: an empty page names no next page, whatever its links say.
      res.end(
        JSON.stringify({ items: [{ id: 'i1', state: 'RUNNING' }], links: [{ rel: 'next', href: next }] }),
      );
    });
    const { client: other } = platformClient(cleanups, url);
    // Every job of every state, one a page: not the listing of unfinished imports asked for.
    next = 'https://elsewhere.example/v2/storage/imports?offset=100&limit=1&state=COMPLETED';
    const first = await other.listPage('import', { state: 'RUNNING' });
    next = 'https://elsewhere.example/v2/storage/imports?offset=101';
    const second = await other.listPage('import', { next: first.next! });
    await other.listPage('import', { next: second.next! });
    expect(seen).toEqual([
      'GET /v2/storage/imports?state=RUNNING&limit=100',
      'GET /v2/storage/imports?offset=100&limit=100&state=RUNNING',
      'GET /v2/storage/imports?offset=101&state=RUNNING&limit=100',
    ]);
  });

  it.each([
    ['as written', 'tok_ECHOED_0123456789abcdef', (t: string) => t],
    ['with \\/ escapes', 'abcd/efgh/ijkl/mnop/qrst', (t: string) => t.replaceAll('/', '\\/')],
    [
      'with \\u escapes',
      'abcd<efgh>ijkl&mnop',
      (t: string) => t.replace('<', '\\u003c').replace('&', '\\u0026'),
    ],
  ])(
    'never keeps the token the platform echoes in an answer (%s): it would be stored and sent on',
    async (_name, token, spell) => {
      const c = await clientOf(
        `{"items":[{"error":{"status":404,"code":9008,"message":"no job for token ${spell(token)}"}}]}`,
        { token },
      );
      const { observations } = await c.checkStatuses(['exp1']);
      expect(observations).toEqual([
        {
          kind: 'missing',
          id: 'exp1',
          error: { status: 404, code: 9008, message: 'no job for token [redacted]' },
        },
      ]);
    },
  );

  it('leaves out listed ids that are not job ids, with one warning a page', async () => {
    const odd = ['job.1', '', 'x'.repeat(129), 'a b', 'évé', '../x'];
    const items = [{ id: 'ok_1', state: 'PENDING' }, ...odd.map((id) => ({ id, state: 'PENDING' }))];
    const { lines, log } = logSink();
    const other = await clientOf(
      JSON.stringify({ items: [...items, { id: 'ok-2', state: 'RUNNING' }], links: [] }),
      { log },
    );
    const page = await other.listPage('export', { state: 'PENDING' });
    expect(page.items).toEqual([
      { id: 'ok_1', state: 'PENDING' },
      { id: 'ok-2', state: 'RUNNING' },
    ]);
    const warnings = lines.filter((l) => l.level === 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({
      msg: 'the platform listed exports whose ids are not job ids; left out',
      count: odd.length,
      sample_ids: ['job.1', '', `${'x'.repeat(64)}…`],
    });
  });
});

describe('imports end to end, against the simulator over loopback', () => {
  let stack: Stack | undefined;
  afterEach(async () => {
    await stack?.close();
    stack = undefined;
  });

  it('POST /v1/imports: import.completed, import.failed and import.lost delivered, signed, with their ids and bodies', async () => {
    stack = await startStack({ sim: { timing: SHORT } });
    const s = stack;
    const completed = s.sim.createImports(4, { outcome: 'COMPLETED' });
    const failed = s.sim.createImports(3, { outcome: 'FAILED' });
    const unknown = ['no-such-import-1'];
    const ids = [...completed, ...failed, ...unknown];
    const res = await s.post('/v1/imports', { ids, metadata: { batch: 'imp' } });
    expect(res).toEqual({ status: 202, json: { accepted: ids, already_watched: [] } });
    const invalid = await s.post('/v1/imports', { ids: 'x' });
    expect(invalid.status).toBe(400);
    expect(invalid.json).toMatchObject({
      error: { details: [{ field: 'ids', problem: 'must be an array of import ids' }] },
    });
    expect((await s.post('/v1/imports', { ids: [completed[0]] })).json).toEqual({
      accepted: [],
      already_watched: [completed[0]],
    });

    await s.receiver.waitFor((r) => r.acceptedIds().size >= ids.length, 60_000);
    const byJob = acceptedByJob(s.receiver);
    expect(byJob.size).toBe(ids.length);
    const expectOne = (id: string, suffix: 'completed' | 'failed' | 'lost') => {
      const list = byJob.get(id) ?? [];
      expect(list).toHaveLength(1);
      const { webhookId: wid, body } = list[0]!;
      expect(wid).toBe(`evt_import_${id}_${suffix}`);
      expect(body.type).toBe(`import.${suffix}`);
      expect(Object.keys(body.data).sort()).toEqual([
        'error',
        'import',
        'import_id',
        'metadata',
        'previous_state',
        'state',
      ]);
      expect(body.data).toMatchObject({ import_id: id, metadata: { batch: 'imp' } });
      return body;
    };
    for (const id of completed) {
      const body = expectOne(id, 'completed');
      expect(body.data).toMatchObject({
        state: 'COMPLETED',
        error: null,
        import: { id, state: 'COMPLETED', result: { type: 'file' } },
      });
    }
    for (const id of failed) {
      const body = expectOne(id, 'failed');
      expect(body.data).toMatchObject({
        state: 'FAILED',
        import: { id, state: 'FAILED' },
        error: { status: 409, code: 9107 },
      });
    }
    const lost = expectOne('no-such-import-1', 'lost');
    expect(lost.data).toMatchObject({ state: 'LOST', import: null, error: { code: 9008 } });

    const wh = new Webhook(SECRET);
    for (const a of s.receiver.received) {
      expect(() =>
        wh.verify(a.body, {
          'webhook-id': a.id,
          'webhook-timestamp': String(a.timestamp),
          'webhook-signature': a.signature ?? '',
        }),
      ).not.toThrow();
    }
    const stats = s.sim.stats();
    expect(stats.importBulkIdsPerCall.length).toBeGreaterThan(0);
    expect(stats.bulkIdsPerCall).toEqual([]);
    expect(stats.wrongKindIds).toBe(0);
    expect(stats.checksAfterTerminal).toBe(0);

    // What the control API shows of them.
    const record = await s.get(`/v1/imports/${completed[0]}`);
    expect(record.status).toBe(200);
    const json = record.json as Record<string, unknown>;
    expect(json).toMatchObject({
      id: completed[0],
      state: 'COMPLETED',
      metadata: { batch: 'imp' },
      import: { id: completed[0] },
    });
    expect(json).not.toHaveProperty('export');
    expect((json.events as Array<{ id: string; import_id: string }>).map((e) => [e.id, e.import_id])).toEqual(
      [[`evt_import_${completed[0]}_completed`, completed[0]]],
    );
    expect((await s.get(`/v1/exports/${completed[0]}`)).status).toBe(404);
    expect((await s.get('/v1/imports/nobody')).json).toMatchObject({ error: { code: 'import_not_found' } });
    const lostOnes = (await s.get('/v1/imports?state=LOST')).json as { items: Array<{ id: string }> };
    expect(lostOnes.items.map((r) => r.id)).toEqual(unknown);
    expect(
      ((await s.get('/v1/imports?limit=2')).json as { next_cursor: string | null }).next_cursor,
    ).not.toBeNull();
    expect((await s.get('/v1/exports')).json).toEqual({ items: [], next_cursor: null });
    const events = (await s.get(`/v1/events?import_id=${failed[0]}`)).json as {
      items: Array<Record<string, unknown>>;
    };
    expect(events.items).toEqual([
      expect.objectContaining({
        id: `evt_import_${failed[0]}_failed`,
        type: 'import.failed',
        import_id: failed[0],
      }),
    ]);
    expect(((await s.get(`/v1/events?export_id=${failed[0]}`)).json as { items: unknown[] }).items).toEqual(
      [],
    );
    expect((await s.get(`/v1/events?export_id=a&import_id=b`)).status).toBe(400);

    // An id watched as one kind is refused as the other, whole.
    expectKindConflict(await s.post('/v1/exports', { ids: ['brand-new', completed[1]] }), [
      { field: 'ids[1]', problem: 'is watched as an import' },
    ]);
    expect((await s.get('/v1/exports/brand-new')).status).toBe(404);
    // So is an export whose webhook-ids a watched import has (`evt_import_<id>_…`).
    expectKindConflict(await s.post('/v1/exports', { ids: [`import_${completed[1]}`] }), [
      {
        field: 'ids[0]',
        problem: `shares its webhook-ids with the import "${completed[1]}", which is watched`,
      },
    ]);
    expect((await s.get(`/v1/exports/import_${completed[1]}`)).status).toBe(404);
    // The other way round: an import whose webhook-ids a watched export has; and one that is
    // plainly watched as an export, named as such (no export "import_<id>" exists).
    expect((await s.post('/v1/exports', { ids: ['import_twin1', 'plainX1'] })).status).toBe(202);
    expectKindConflict(await s.post('/v1/imports', { ids: ['twin1', 'plainX1'] }), [
      { field: 'ids[0]', problem: 'shares its webhook-ids with the export "import_twin1", which is watched' },
      { field: 'ids[1]', problem: 'is watched as an export' },
    ]);

    // Metrics: the imports gauge, the exports gauge as before.
    const metrics = await (await request(`${s.apiUrl}/metrics`)).body.text();
    expect(metrics).toContain(`sbg_export_watcher_imports{state="COMPLETED"} ${completed.length}`);
    expect(metrics).toContain(`sbg_export_watcher_imports{state="LOST"} 1`);
    expect(metrics).toContain('sbg_export_watcher_exports{state="COMPLETED"} 0');
    expect(metrics).toMatch(
      /sbg_export_watcher_import_transitions_total\{from="RUNNING",to="COMPLETED"\} \d+/,
    );

    // Unwatching is by kind.
    expect((await request(`${s.apiUrl}/v1/exports/${failed[1]}`, { method: 'DELETE' })).statusCode).toBe(404);
    expect((await request(`${s.apiUrl}/v1/imports/${failed[1]}`, { method: 'DELETE' })).statusCode).toBe(204);
    expect((await s.get(`/v1/imports/${failed[1]}`)).status).toBe(404);
    expect(s.logs.join('')).not.toContain(TOKEN);
  });

  it("GET /v1/imports/{id} shows the import's events, not those of a removed export that had its id", async () => {
    stack = await startStack({ sim: { timing: SHORT } });
    const s = stack;
    const [id] = s.sim.createExports(1, { outcome: 'COMPLETED' });
    expect((await s.post('/v1/exports', { ids: [id] })).status).toBe(202);
    await s.receiver.waitFor((r) => r.acceptedIds().has(`evt_${id}_completed`), 60_000);
    // Its delivery recorded: the export's event is kept for replay when it is removed.
    await vi.waitFor(
      async () => {
        const delivered = await s.get(`/v1/events?export_id=${id}&status=delivered`);
        expect((delivered.json as { items: unknown[] }).items).toHaveLength(1);
      },
      { timeout: 10_000, interval: 50 },
    );
    expect((await request(`${s.apiUrl}/v1/exports/${id}`, { method: 'DELETE' })).statusCode).toBe(204);
    // The id is watched again, as an import: its record has no event yet, as /v1/events says.
    expect((await s.post('/v1/imports', { ids: [id] })).status).toBe(202);
    const record = (await s.get(`/v1/imports/${id}`)).json as { events: Array<{ id: string }> };
    expect(((await s.get(`/v1/events?import_id=${id}`)).json as { items: unknown[] }).items).toEqual([]);
    expect(record.events.map((e) => e.id)).toEqual([]);
  });

  it('exports and imports share the one budget, and every call carries one kind', async () => {
    // A budget far below the work: each kind alone could spend all of it.
    const budget = 10;
    const windowMs = 2000;
    stack = await startStack({
      sim: { timing: { pendingMs: [500, 1500], runningMs: [2000, 5000] }, failRate: 0.2 },
      env: {
        WATCHER_RATE_BUDGET: String(budget),
        WATCHER_RATE_WINDOW: '2s',
        WATCHER_POLL_INTERVAL: '100ms',
        WATCHER_BATCH_SIZE: '5',
      },
    });
    const s = stack;
    const exports = s.sim.createExports(25);
    const imports = s.sim.createImports(25);
    const started = performance.now();
    expect((await s.post('/v1/exports', { ids: exports })).status).toBe(202);
    expect((await s.post('/v1/imports', { ids: imports })).status).toBe(202);
    await s.receiver.waitFor((r) => r.acceptedIds().size >= exports.length + imports.length, 90_000);
    const elapsed = performance.now() - started;

    const stats = s.sim.stats();
    // One kind per call: no id was ever asked on the other kind's route.
    expect(stats.wrongKindIds).toBe(0);
    expect(stats.bulkIdsPerCall.length).toBeGreaterThan(0);
    expect(stats.importBulkIdsPerCall.length).toBeGreaterThan(0);
    expect(Math.max(...stats.bulkIdsPerCall, ...stats.importBulkIdsPerCall)).toBeLessThanOrEqual(5);
    // Both kinds together never spent more than one budget per window (plus the window in progress).
    const calls = stats.bulkIdsPerCall.length + stats.importBulkIdsPerCall.length;
    expect(calls).toBe(stats.quotaSpent);
    expect(calls).toBeLessThanOrEqual(budget * (Math.ceil(elapsed / windowMs) + 1));
    // The work did outrun the budget: two budgets would have been spent had each kind had its own.
    expect(calls).toBeGreaterThan(budget);
    expect(stats.rateLimited).toBe(0);
    const byJob = acceptedByJob(s.receiver);
    for (const id of exports)
      expect(byJob.get(id)?.[0]?.webhookId).toMatch(new RegExp(`^evt_${id}_(completed|failed)$`));
    for (const id of imports)
      expect(byJob.get(id)?.[0]?.webhookId).toMatch(new RegExp(`^evt_import_${id}_(completed|failed)$`));
  });

  it('resumes imports from the store after a restart, with their kind', async () => {
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'imports-restart-'));
    try {
      stack = await startStack({
        sim: { timing: { pendingMs: [60_000, 60_000], runningMs: [1000, 1000] } },
        env: { WATCHER_DATA_DIR: dir },
        daemon: { storage: 'data-dir' },
      });
      const [id] = stack.sim.createImports(1);
      expect((await stack.post('/v1/imports', { ids: [id] })).status).toBe(202);
      await until(
        async () => ((await stack!.get(`/v1/imports/${id}`)).json as { state: string }).state === 'PENDING',
      );
      const { Daemon } = await import('../src/main.js');
      await stack.daemon.stop(1000);
      const again = await Daemon.open(stack.daemon.config, {
        log: pino({ level: 'silent' }),
        storage: 'data-dir',
      });
      try {
        await again.store
          .loadActive()
          .then((active) => expect(active).toEqual([{ id, kind: 'import', state: 'PENDING', misses: 0 }]));
      } finally {
        await again.store.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the CLI with imports', () => {
  const sims: Simulator[] = [];
  afterEach(async () => {
    killAll();
    await Promise.all(sims.splice(0).map((s) => s.close()));
  });
  async function sim(): Promise<{ sim: Simulator; url: string }> {
    const s = new Simulator({ seed: 21, token: TOKEN, timing: SHORT });
    sims.push(s);
    return { sim: s, url: await s.start() };
  }

  it('watch --kind import waits for the imports, prints their records, exits 1 for a FAILED one', async () => {
    const { sim: s, url } = await sim();
    const ok = s.createImports(2, { outcome: 'COMPLETED' });
    const bad = s.createImports(1, { outcome: 'FAILED' });
    const p = spawnCli(['watch', '--kind', 'import', ...ok, ...bad, '--json'], {
      SB_API_ENDPOINT: url,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_POLL_INTERVAL: '200ms',
    });
    const { code } = await p.exited;
    expect(code).toBe(1);
    const records = p
      .stdout()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records.map((r) => r.id).sort()).toEqual([...ok, ...bad].sort());
    for (const r of records) {
      expect(r).toHaveProperty('import');
      expect(r).not.toHaveProperty('export');
      expect(r.state).toBe(bad.includes(r.id as string) ? 'FAILED' : 'COMPLETED');
    }
    expect(p.stderr()).toContain('watching 3 imports');
    expect(s.stats().bulkIdsPerCall).toEqual([]);
    expect(s.stats().wrongKindIds).toBe(0);

    const good = spawnCli(['watch', '--kind', 'imports', ...ok], {
      SB_API_ENDPOINT: url,
      SB_AUTH_TOKEN: TOKEN,
    });
    expect((await good.exited).code).toBe(0);
    const wrong = spawnCli(['watch', '--kind', 'transfer', 'x'], {
      SB_API_ENDPOINT: url,
      SB_AUTH_TOKEN: TOKEN,
    });
    expect((await wrong.exited).code).toBe(2);
    expect(wrong.stderr()).toContain('--kind: expected export or import');
  });

  it('get --kind import prints the import objects as `import`', async () => {
    const { sim: s, url } = await sim();
    const ids = s.createImports(2, { pendingMs: 600_000 });
    const p = spawnCli(['get', '--kind', 'import', ...ids, 'no-such-import'], {
      SB_API_ENDPOINT: url,
      SB_AUTH_TOKEN: TOKEN,
    });
    expect((await p.exited).code).toBe(1);
    const rows = p
      .stdout()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(rows.map((r) => [r.id, r.state])).toEqual([
      [ids[0], 'PENDING'],
      [ids[1], 'PENDING'],
      ['no-such-import', 'NOT_FOUND'],
    ]);
    expect(rows[0]).toMatchObject({ import: { id: ids[0], source: { volume: 'sim-user/sim-volume' } } });
    expect(rows[2]).toMatchObject({ import: null, error: { code: 9008 } });
    expect(s.stats().requests.import_bulk_get).toBe(1);
  });

  it('run --import-id watches an import from the start', async () => {
    const { sim: s, url } = await sim();
    const [id] = s.createImports(1, { outcome: 'COMPLETED' });
    const p = spawnCli(['run', '--import-id', id!, '--http-port', '0'], {
      SB_API_ENDPOINT: url,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_POLL_INTERVAL: '200ms',
    });
    const line = await p.waitForLine((l) => l.msg === 'import state changed' && l.to === 'COMPLETED');
    expect(line).toMatchObject({ import_id: id, component: 'scheduler' });
    p.child.kill('SIGTERM');
    expect((await p.exited).code).toBe(0);
  });

  it('simulate --imports N seeds imports', async () => {
    const p = spawnCli(['simulate', '--imports', '7', '--exports', '2'], {});
    const url = await firstLine(p);
    const stats = (await (await request(`${new URL(url).origin}/_simulator/stats`)).body.json()) as Record<
      string,
      unknown
    >;
    expect(stats).toMatchObject({ imports: 7, exports: 2 });
    const created = await request(`${new URL(url).origin}/_simulator/imports`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ count: 2 }),
    });
    expect(created.statusCode).toBe(201);
    expect(((await created.body.json()) as { ids: string[] }).ids).toHaveLength(2);
    p.child.kill('SIGTERM');
    expect((await p.exited).code).toBe(0);
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

/** A 409 `kind_conflict` answer with these details: nothing of the request was added. */
function expectKindConflict(
  r: { status: number; json: unknown },
  details: Array<{ field: string; problem: string }>,
): void {
  expect(r.status).toBe(409);
  expect(r.json).toMatchObject({ error: { code: 'kind_conflict', details } });
}
