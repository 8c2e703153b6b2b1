import { Readable } from 'node:stream';
import pino from 'pino';
import { Agent, request } from 'undici';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ControlApi,
  DEFAULT_CONNECTION_HEADROOM,
  DEFAULT_HEADERS_TIMEOUT_MS,
  DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_REQUESTS_IN_PROGRESS,
  DEFAULT_PAGE_LIMIT,
  DEFAULT_REQUEST_TIMEOUT_MS,
  EXPORT_ID_PATTERN,
  MAX_BODY_BYTES,
  MAX_IDS_PER_REQUEST,
  MAX_METADATA_BYTES,
  MAX_METADATA_DEPTH,
  MAX_PAGE_LIMIT,
  recordToJson,
  validateAddRequest,
  type WatchRegistry,
} from '../src/http/control-api.js';
import { type PlatformExport, Tracker } from '../src/polling/tracker.js';

const T0 = Date.UTC(2024, 0, 2, 3, 4, 5, 678);
const T0_ISO = '2024-01-02T03:04:05.678Z';
const T1 = T0 + 61_001;
const T1_ISO = '2024-01-02T03:05:06.679Z';
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

interface Harness {
  api: ControlApi;
  url: string;
  tracker: Tracker;
  probes: { healthy: { ok: boolean; reason?: string }; ready: { ok: boolean; reason?: string } };
  clock: { now: number };
}

function registryFor(tracker: Tracker, clock: { now: number }): WatchRegistry {
  return {
    watch: (ids, metadata) => tracker.add(ids, metadata, clock.now),
    unwatch: (id) => tracker.remove(id),
    get: (id) => tracker.get(id),
    list: (state) => tracker.list(state),
    page: (query) => tracker.page(query),
  };
}

async function startApi(apiToken?: string): Promise<Harness> {
  const tracker = new Tracker({ retainMs: 60_000 });
  const clock = { now: T0 };
  const probes: Harness['probes'] = { healthy: { ok: true }, ready: { ok: true } };
  const api = new ControlApi({
    host: '127.0.0.1',
    port: 0,
    registry: registryFor(tracker, clock),
    probes: { health: () => probes.healthy, ready: () => probes.ready },
    log: pino({ level: 'silent' }),
    apiToken,
  });
  const url = await api.listen();
  return { api, url, tracker, probes, clock };
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  // biome-ignore lint/suspicious/noExplicitAny: JSON answers are inspected field by field
  json: any;
}

let agent: Agent;
let h: Harness;

async function call(
  method: string,
  path: string,
  options: { body?: string | Buffer | Readable; json?: unknown; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...(options.headers ?? {}) };
  let body = options.body;
  if (options.json !== undefined) {
    body = JSON.stringify(options.json);
    headers['content-type'] ??= 'application/json';
  }
  const res = await request(`${h.url}${path}`, {
    method: method as 'GET',
    headers,
    body,
    dispatcher: agent,
  });
  const text = await res.body.text();
  let json: unknown;
  try {
    json = text === '' ? undefined : JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, headers: res.headers, text, json };
}

/** Asserts the SPEC's error shape and returns the error object. */
function expectError(answer: Answer, status: number, code?: string) {
  expect(answer.status).toBe(status);
  expect(String(answer.headers['content-type'])).toMatch(/^application\/json/);
  expect(Object.keys(answer.json)).toEqual(['error']);
  const error = answer.json.error;
  expect(typeof error.code).toBe('string');
  expect(error.code).toMatch(/^[a-z][a-z0-9]*(_[a-z0-9]+)*$/);
  expect(typeof error.message).toBe('string');
  expect(error.message.length).toBeGreaterThan(0);
  for (const key of Object.keys(error)) expect(['code', 'message', 'details']).toContain(key);
  if ('details' in error) expect(Array.isArray(error.details)).toBe(true);
  if (code) expect(error.code).toBe(code);
  return error as { code: string; message: string; details?: Array<{ field: string; problem: string }> };
}

const resource = (id: string, state: string, extra: Record<string, unknown> = {}): PlatformExport => ({
  id,
  state,
  ...extra,
});

beforeEach(() => {
  agent = new Agent();
});

afterEach(async () => {
  await agent.close();
  await h?.api.close();
});

describe('ControlApi: listen', () => {
  beforeEach(async () => {
    h = await startApi();
  });

  it('resolves its loopback URL with the chosen port, and the same URL again', async () => {
    expect(h.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(Number(new URL(h.url).port)).toBeGreaterThan(0);
    expect(h.api.url).toBe(h.url);
    expect(await h.api.listen()).toBe(h.url);
  });

  it("rejects with Node's own error, code included, when the port is taken", async () => {
    const other = new ControlApi({
      host: '127.0.0.1',
      port: Number(new URL(h.url).port),
      registry: registryFor(new Tracker({ retainMs: 1 }), { now: T0 }),
      probes: { health: () => ({ ok: true }), ready: () => ({ ok: true }) },
      log: pino({ level: 'silent' }),
    });
    await expect(other.listen()).rejects.toMatchObject({ code: 'EADDRINUSE', syscall: 'listen' });
    await expect(other.close()).resolves.toBeUndefined();
    expect((await call('GET', '/healthz')).status).toBe(200);
  });

  it('refuses limits that cannot work, naming each option', () => {
    const make = (limits: Record<string, number>) =>
      new ControlApi({
        host: '127.0.0.1',
        port: 0,
        registry: registryFor(new Tracker({ retainMs: 1 }), { now: T0 }),
        probes: { health: () => ({ ok: true }), ready: () => ({ ok: true }) },
        log: pino({ level: 'silent' }),
        ...limits,
      });
    expect(() => make({ maxRequestsInProgress: 0 })).toThrow(/maxRequestsInProgress .*got 0/);
    expect(() => make({ maxConnections: 10, connectionHeadroom: 10 })).toThrow(/connectionHeadroom/);
    expect(() => make({ headersTimeoutMs: 2000, requestTimeoutMs: 1000 })).toThrow(/headersTimeoutMs/);
    expect(() => make({ keepAliveTimeoutMs: 1.5 })).toThrow(/keepAliveTimeoutMs/);
    expect(() => make({ maxConnections: 10 })).not.toThrow();
  });

  it('has the documented defaults', () => {
    expect(DEFAULT_MAX_CONNECTIONS).toBe(1024);
    expect(DEFAULT_CONNECTION_HEADROOM).toBe(64);
    expect(DEFAULT_MAX_REQUESTS_IN_PROGRESS).toBe(64);
    expect(DEFAULT_HEADERS_TIMEOUT_MS).toBe(10_000);
    expect(DEFAULT_REQUEST_TIMEOUT_MS).toBe(30_000);
    expect(DEFAULT_KEEP_ALIVE_TIMEOUT_MS).toBe(5000);
    expect(DEFAULT_PAGE_LIMIT).toBe(1000);
    expect(MAX_PAGE_LIMIT).toBe(10_000);
    expect(MAX_METADATA_DEPTH).toBe(32);
  });
});

describe('POST /v1/exports', () => {
  beforeEach(async () => {
    h = await startApi();
  });

  it('accepts new ids with 202 and reports already watched ones, without error', async () => {
    let r = await call('POST', '/v1/exports', { json: { ids: ['exp-1', 'exp_2'] } });
    expect(r.status).toBe(202);
    expect(String(r.headers['content-type'])).toMatch(/^application\/json/);
    expect(r.json).toEqual({ accepted: ['exp-1', 'exp_2'], already_watched: [] });
    expect(h.tracker.size).toBe(2);

    r = await call('POST', '/v1/exports', { json: { ids: ['exp_2', 'EXP3'] } });
    expect(r.status).toBe(202);
    expect(r.json).toEqual({ accepted: ['EXP3'], already_watched: ['exp_2'] });

    r = await call('POST', '/v1/exports', { json: { ids: ['exp-1', 'exp_2', 'EXP3'] } });
    expect(r.status).toBe(202);
    expect(r.json).toEqual({ accepted: [], already_watched: ['exp-1', 'exp_2', 'EXP3'] });
    expect(h.tracker.size).toBe(3);
  });

  it('stores metadata and shows it in the record', async () => {
    const metadata = { team: 'genomics', run: 7, tags: ['a', 'b'], nested: { ok: true } };
    const r = await call('POST', '/v1/exports', { json: { ids: ['m1', 'm2'], metadata } });
    expect(r.status).toBe(202);
    expect(h.tracker.get('m1')?.metadata).toEqual(metadata);
    const one = await call('GET', '/v1/exports/m2');
    expect(one.status).toBe(200);
    expect(one.json.metadata).toEqual(metadata);
  });

  it('accepts null metadata as none', async () => {
    const r = await call('POST', '/v1/exports', { json: { ids: ['n1'], metadata: null } });
    expect(r.status).toBe(202);
    expect((await call('GET', '/v1/exports/n1')).json.metadata).toBeNull();
  });

  it('accepts the limits themselves: 10,000 ids, 128-character ids, 4 KiB of metadata', async () => {
    const ids = Array.from({ length: MAX_IDS_PER_REQUEST }, (_, i) => `id-${i}`);
    let r = await call('POST', '/v1/exports', { json: { ids } });
    expect(r.status).toBe(202);
    expect(r.json.accepted).toHaveLength(10_000);
    expect(h.tracker.size).toBe(10_000);

    const long = 'a'.repeat(128);
    r = await call('POST', '/v1/exports', { json: { ids: [long] } });
    expect(r.status).toBe(202);
    expect(r.json.accepted).toEqual([long]);

    // {"k":"…"} is 8 bytes plus the string.
    const metadata = { k: 'x'.repeat(MAX_METADATA_BYTES - 8) };
    expect(Buffer.byteLength(JSON.stringify(metadata))).toBe(4096);
    r = await call('POST', '/v1/exports', { json: { ids: ['meta-max'], metadata } });
    expect(r.status).toBe(202);
  });

  it('accepts a body of exactly 1 MiB', async () => {
    const json = JSON.stringify({ ids: ['big-ok'] });
    const body = json + ' '.repeat(MAX_BODY_BYTES - json.length);
    expect(Buffer.byteLength(body)).toBe(1024 * 1024);
    const r = await call('POST', '/v1/exports', { body, headers: { 'content-type': 'application/json' } });
    expect(r.status).toBe(202);
    expect(r.json.accepted).toEqual(['big-ok']);
  });

  describe('invalid requests: 400 and nothing added', () => {
    beforeEach(async () => {
      h.tracker.add(['pre-existing'], null, T0);
    });

    const bodies: Array<[string, string, string | undefined]> = [
      ['not JSON', '{"ids": ["a",', undefined],
      ['an empty body', '', undefined],
      ['a blank body', '   \n', undefined],
      ['an array', '["a", "b"]', undefined],
      ['a string', '"a"', undefined],
      ['null', 'null', undefined],
      ['a number', '42', undefined],
      ['ids missing', '{"metadata": {"a": 1}}', 'ids'],
      ['ids empty', '{"ids": []}', 'ids'],
      ['ids not an array', '{"ids": "abc"}', 'ids'],
      ['an id with a space', '{"ids": ["good-1", "bad id"]}', 'ids[1]'],
      ['an id with a slash', '{"ids": ["good-1", "a/b"]}', 'ids[1]'],
      ['an id with a dot', '{"ids": ["x.y", "good-1"]}', 'ids[0]'],
      ['an empty id', '{"ids": ["good-1", ""]}', 'ids[1]'],
      ['a non-string id', '{"ids": ["good-1", 42]}', 'ids[1]'],
      ['a 129-character id', `{"ids": ["good-1", "${'a'.repeat(129)}"]}`, 'ids[1]'],
      ['metadata a string', '{"ids": ["good-1"], "metadata": "team"}', 'metadata'],
      ['metadata an array', '{"ids": ["good-1"], "metadata": [1, 2]}', 'metadata'],
      ['metadata a number', '{"ids": ["good-1"], "metadata": 5}', 'metadata'],
      [
        'metadata over 4 KiB',
        JSON.stringify({ ids: ['good-1'], metadata: { k: 'x'.repeat(MAX_METADATA_BYTES - 7) } }),
        'metadata',
      ],
      ['an unknown field', '{"ids": ["good-1"], "callback_url": "http://x"}', 'callback_url'],
    ];

    it.each(bodies)('%s', async (_name, body, field) => {
      const r = await call('POST', '/v1/exports', { body, headers: { 'content-type': 'application/json' } });
      const error = expectError(r, 400);
      if (field) expect(error.details?.map((d) => d.field)).toContain(field);
      expect(h.tracker.size).toBe(1);
      expect(h.tracker.get('good-1')).toBeUndefined();
      expect(h.tracker.get('pre-existing')?.state).toBe('UNKNOWN');
    });

    it('more than 10,000 ids', async () => {
      const ids = Array.from({ length: MAX_IDS_PER_REQUEST + 1 }, (_, i) => `id-${i}`);
      const error = expectError(await call('POST', '/v1/exports', { json: { ids } }), 400);
      expect(error.details?.map((d) => d.field)).toContain('ids');
      expect(h.tracker.size).toBe(1);
    });

    it('lists every problem at once', async () => {
      const r = await call('POST', '/v1/exports', {
        json: { ids: ['ok', 'no way', 'x'.repeat(200)], metadata: 'x', extra: true },
      });
      const error = expectError(r, 400);
      expect(error.details?.map((d) => d.field).sort()).toEqual(['extra', 'ids[1]', 'ids[2]', 'metadata']);
      expect(h.tracker.size).toBe(1);
    });
  });

  it('answers 413 to a declared body over 1 MiB, and adds nothing', async () => {
    const body = JSON.stringify({ ids: ['too-big'], metadata: { pad: 'x'.repeat(MAX_BODY_BYTES) } });
    const r = await call('POST', '/v1/exports', { body, headers: { 'content-type': 'application/json' } });
    expectError(r, 413);
    expect(h.tracker.size).toBe(0);
  });

  it('answers 413 to a streamed (chunked) body over 1 MiB, and adds nothing', async () => {
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    async function* generate() {
      yield Buffer.from('{"ids": ["too-big-streamed"]');
      for (let i = 0; i < 20; i++) yield chunk; // 1.25 MiB of blanks
      yield Buffer.from('}');
    }
    const r = await call('POST', '/v1/exports', {
      body: Readable.from(generate()),
      headers: { 'content-type': 'application/json' },
    });
    expectError(r, 413);
    expect(h.tracker.size).toBe(0);
  });
});

describe('routes and methods', () => {
  beforeEach(async () => {
    h = await startApi();
  });

  it.each([
    ['GET', '/'],
    ['GET', '/v2/exports'],
    ['GET', '/v1/nothing-here'],
    ['POST', '/v1/exports/a/b'],
    ['GET', '/exports'],
  ])('%s %s → 404', async (method, path) => {
    expectError(await call(method, path), 404);
  });

  it.each([
    ['PUT', '/v1/exports', ['GET', 'POST']],
    ['DELETE', '/v1/exports', ['GET', 'POST']],
    ['PATCH', '/v1/exports/abc', ['GET', 'DELETE']],
    ['POST', '/v1/exports/abc', ['GET', 'DELETE']],
    ['POST', '/healthz', ['GET']],
    ['DELETE', '/readyz', ['GET']],
  ])('%s %s → 405 with an Allow header', async (method, path, allowed) => {
    const r = await call(method, path);
    expectError(r, 405);
    const allow = String(r.headers.allow ?? '')
      .split(',')
      .map((m) => m.trim());
    for (const m of allowed) expect(allow).toContain(m);
    expect(allow).not.toContain(method);
  });

  it('a wrong method changes nothing', async () => {
    h.tracker.add(['keep'], null, T0);
    expect((await call('PUT', '/v1/exports', { json: { ids: ['other'] } })).status).toBe(405);
    expect((await call('POST', '/v1/exports/keep', { json: { ids: ['other'] } })).status).toBe(405);
    expect(h.tracker.size).toBe(1);
    expect(h.tracker.get('keep')).toBeDefined();
  });
});

describe('reading and removing exports', () => {
  beforeEach(async () => {
    h = await startApi();
  });

  it('shows a fresh record exactly', async () => {
    await call('POST', '/v1/exports', { json: { ids: ['fresh'], metadata: { k: 'v' } } });
    const r = await call('GET', '/v1/exports/fresh');
    expect(r.status).toBe(200);
    expect(r.json).toStrictEqual({
      id: 'fresh',
      state: 'UNKNOWN',
      previous_state: null,
      first_seen_at: T0_ISO,
      state_changed_at: T0_ISO,
      last_checked_at: null,
      checks: 0,
      metadata: { k: 'v' },
      history: [{ state: 'UNKNOWN', at: T0_ISO }],
      export: null,
      error: null,
    });
  });

  it('shows a checked record exactly, with the platform object and ISO times', async () => {
    await call('POST', '/v1/exports', { json: { ids: ['seen'] } });
    const platformObject = resource('seen', 'RUNNING', {
      href: 'https://api.sbgenomics.com/v2/storage/exports/seen',
      destination: { volume: 'vol', location: 'out/file.bam' },
      started_on: '2024-01-02T03:04:00Z',
    });
    h.tracker.apply([{ kind: 'resource', id: 'seen', resource: platformObject }], T1);
    const r = await call('GET', '/v1/exports/seen');
    expect(r.status).toBe(200);
    expect(Object.keys(r.json).sort()).toEqual(
      [
        'id',
        'state',
        'previous_state',
        'first_seen_at',
        'state_changed_at',
        'last_checked_at',
        'checks',
        'metadata',
        'history',
        'export',
        'error',
      ].sort(),
    );
    expect(r.json).toStrictEqual({
      id: 'seen',
      state: 'RUNNING',
      previous_state: 'UNKNOWN',
      first_seen_at: T0_ISO,
      state_changed_at: T1_ISO,
      last_checked_at: T1_ISO,
      checks: 1,
      metadata: null,
      history: [
        { state: 'UNKNOWN', at: T0_ISO },
        { state: 'RUNNING', at: T1_ISO },
      ],
      export: platformObject,
      error: null,
    });
    for (const t of [r.json.first_seen_at, r.json.state_changed_at, r.json.last_checked_at])
      expect(t).toMatch(ISO);
  });

  it('recordToJson converts epoch milliseconds to ISO UTC', () => {
    const t = new Tracker({ retainMs: 1000 });
    t.add(['r'], { a: 1 }, T0);
    const record = t.get('r');
    expect(record).toBeDefined();
    if (!record) return;
    expect(recordToJson(record)).toEqual({
      id: 'r',
      state: 'UNKNOWN',
      previous_state: null,
      first_seen_at: T0_ISO,
      state_changed_at: T0_ISO,
      last_checked_at: null,
      checks: 0,
      metadata: { a: 1 },
      history: [{ state: 'UNKNOWN', at: T0_ISO }],
      export: null,
      error: null,
    });
  });

  it('answers 404 for an export that is not watched', async () => {
    const error = expectError(await call('GET', '/v1/exports/never-added'), 404);
    expect(error.message).toContain('never-added');
    expectError(await call('GET', '/v1/exports/not.valid'), 404);
  });

  it('answers 404, not 500, to a malformed percent-encoded id', async () => {
    expectError(await call('GET', '/v1/exports/%E0%A4%A'), 404);
    expectError(await call('DELETE', '/v1/exports/%ZZ'), 404);
  });

  it('lists every record, and filters by state', async () => {
    await call('POST', '/v1/exports', { json: { ids: ['u1', 'p1', 'r1', 'c1', 'f1'] } });
    h.tracker.apply(
      [
        { kind: 'resource', id: 'p1', resource: resource('p1', 'PENDING') },
        { kind: 'resource', id: 'r1', resource: resource('r1', 'RUNNING') },
        { kind: 'resource', id: 'c1', resource: resource('c1', 'COMPLETED', { result: { size: 1 } }) },
        { kind: 'resource', id: 'f1', resource: resource('f1', 'FAILED', { error: { code: 9107 } }) },
      ],
      T1,
    );
    const all = await call('GET', '/v1/exports');
    expect(all.status).toBe(200);
    expect(Object.keys(all.json)).toEqual(['items', 'next_cursor']);
    expect(all.json.next_cursor).toBeNull();
    expect(all.json.items.map((i: { id: string }) => i.id).sort()).toEqual(['c1', 'f1', 'p1', 'r1', 'u1']);
    const c1 = all.json.items.find((i: { id: string }) => i.id === 'c1');
    expect(c1).toEqual(recordToJson(h.tracker.get('c1') as NonNullable<ReturnType<Tracker['get']>>));

    for (const [state, id] of [
      ['UNKNOWN', 'u1'],
      ['PENDING', 'p1'],
      ['RUNNING', 'r1'],
      ['COMPLETED', 'c1'],
      ['FAILED', 'f1'],
    ] as const) {
      const r = await call('GET', `/v1/exports?state=${state}`);
      expect(r.status).toBe(200);
      expect(r.json.items.map((i: { id: string; state: string }) => [i.id, i.state])).toEqual([[id, state]]);
    }
    expect((await call('GET', '/v1/exports?state=LOST')).json).toEqual({ items: [], next_cursor: null });
  });

  it('lists nothing as an empty array', async () => {
    const r = await call('GET', '/v1/exports');
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ items: [], next_cursor: null });
  });

  it('pages in id order with limit and next_cursor, and filters while paging', async () => {
    await call('POST', '/v1/exports', { json: { ids: ['e', 'c', 'a', 'd', 'b'] } });
    h.tracker.apply([{ kind: 'resource', id: 'd', resource: resource('d', 'RUNNING') }], T1);
    const pages: string[][] = [];
    let cursor: string | null = null;
    do {
      const r = await call('GET', `/v1/exports?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`);
      expect(r.status).toBe(200);
      expect(r.headers['cache-control']).toBe('no-store');
      pages.push(r.json.items.map((i: { id: string }) => i.id));
      cursor = r.json.next_cursor;
      if (cursor !== null) expect(Buffer.from(cursor, 'base64url').toString()).toBe(pages.at(-1)?.at(-1));
    } while (cursor !== null);
    expect(pages).toEqual([['a', 'b'], ['c', 'd'], ['e']]);

    const unknown = await call('GET', '/v1/exports?state=UNKNOWN&limit=3');
    expect(unknown.json.items.map((i: { id: string }) => i.id)).toEqual(['a', 'b', 'c']);
    const next = await call('GET', `/v1/exports?state=UNKNOWN&limit=3&cursor=${unknown.json.next_cursor}`);
    expect(next.json).toMatchObject({ items: [{ id: 'e' }], next_cursor: null });
  });

  it.each([
    ['limit=0', 'limit'],
    ['limit=10001', 'limit'],
    ['limit=x', 'limit'],
    ['cursor=%%%', 'cursor'],
    [`cursor=${Buffer.from('a b').toString('base64url')}`, 'cursor'],
    ['state=PENDING&state=RUNNING', 'state'],
  ])('rejects ?%s with 400 and details', async (query, field) => {
    const error = expectError(await call('GET', `/v1/exports?${query}`), 400);
    expect(error.details?.map((d) => d.field)).toEqual([field]);
  });

  it.each(['DONE', 'bogus', 'PENDING,RUNNING'])('rejects ?state=%s with 400', async (state) => {
    expectError(await call('GET', `/v1/exports?state=${encodeURIComponent(state)}`), 400);
  });

  it('DELETE answers 204, then the export is gone (404)', async () => {
    await call('POST', '/v1/exports', { json: { ids: ['del-me', 'keep-me'] } });
    const r = await call('DELETE', '/v1/exports/del-me');
    expect(r.status).toBe(204);
    expect(r.text).toBe('');
    expect(h.tracker.get('del-me')).toBeUndefined();
    expect(h.tracker.size).toBe(1);
    expect([...h.tracker.activeIds()]).toEqual(['keep-me']);
    expectError(await call('GET', '/v1/exports/del-me'), 404);
    expectError(await call('DELETE', '/v1/exports/del-me'), 404);
    expect((await call('GET', '/v1/exports')).json.items.map((i: { id: string }) => i.id)).toEqual([
      'keep-me',
    ]);
  });
});

describe('health and readiness', () => {
  beforeEach(async () => {
    h = await startApi();
  });

  it('/healthz answers 200 {"status":"ok"}', async () => {
    const r = await call('GET', '/healthz');
    expect(r.status).toBe(200);
    expect(r.json).toStrictEqual({ status: 'ok' });
  });

  it('/healthz answers 503 when the loop has stalled', async () => {
    h.probes.healthy = { ok: false, reason: 'loop stalled' };
    const r = await call('GET', '/healthz');
    expect(r.status).toBe(503);
    expect(r.json.reason).toBe('loop stalled');
  });

  it('/readyz follows the probe: 200, then 503 with the reason, then 200', async () => {
    let r = await call('GET', '/readyz');
    expect(r.status).toBe(200);
    expect(r.json).toStrictEqual({ status: 'ok' });

    h.probes.ready = { ok: false, reason: 'the platform answered 401: invalid token' };
    r = await call('GET', '/readyz');
    expect(r.status).toBe(503);
    expect(r.json.reason).toBe('the platform answered 401: invalid token');

    h.probes.ready = { ok: true };
    r = await call('GET', '/readyz');
    expect(r.status).toBe(200);
  });

  it('HEAD /healthz answers 200 without a body', async () => {
    const r = await call('HEAD', '/healthz');
    expect(r.status).toBe(200);
    expect(r.text).toBe('');
  });
});

describe('bearer authentication', () => {
  const TOKEN = 'api-token-Kx93vQ';
  beforeEach(async () => {
    h = await startApi(TOKEN);
  });

  it.each([
    ['no header', undefined],
    ['a wrong token', 'Bearer nope'],
    ['a wrong token of the same length', `Bearer ${'x'.repeat(TOKEN.length)}`],
    ['the token with a suffix', `Bearer ${TOKEN}x`],
    ['another scheme', `Basic ${Buffer.from(`user:${TOKEN}`).toString('base64')}`],
    ['the bare token', TOKEN],
    ['an empty bearer', 'Bearer '],
  ])('/v1/* with %s → 401 with WWW-Authenticate, nothing added', async (_name, authorization) => {
    const headers: Record<string, string> = authorization === undefined ? {} : { authorization };
    for (const [method, path, json] of [
      ['POST', '/v1/exports', { ids: ['sneaky'] }],
      ['GET', '/v1/exports', undefined],
      ['GET', '/v1/exports/sneaky', undefined],
      ['DELETE', '/v1/exports/sneaky', undefined],
      ['GET', '/v1/unknown', undefined],
    ] as const) {
      const r = await call(method, path, { headers, json });
      expectError(r, 401);
      expect(String(r.headers['www-authenticate'])).toMatch(/^Bearer\b/);
    }
    expect(h.tracker.size).toBe(0);
  });

  it('the right token is let through', async () => {
    const headers = { authorization: `Bearer ${TOKEN}` };
    let r = await call('POST', '/v1/exports', { headers, json: { ids: ['auth-ok'] } });
    expect(r.status).toBe(202);
    expect(r.json).toEqual({ accepted: ['auth-ok'], already_watched: [] });
    r = await call('GET', '/v1/exports/auth-ok', { headers });
    expect(r.status).toBe(200);
    expect(r.json.id).toBe('auth-ok');
    r = await call('GET', '/v1/exports', { headers: { authorization: `bearer ${TOKEN}` } });
    expect(r.status).toBe(200);
    expect(r.json.items).toHaveLength(1);
    expect((await call('DELETE', '/v1/exports/auth-ok', { headers })).status).toBe(204);
    expectError(await call('GET', '/v1/exports/auth-ok', { headers }), 404);
  });

  it('/healthz and /readyz stay open', async () => {
    expect((await call('GET', '/healthz')).status).toBe(200);
    expect((await call('GET', '/readyz')).status).toBe(200);
    h.probes.ready = { ok: false, reason: 'no answer yet' };
    const r = await call('GET', '/readyz');
    expect(r.status).toBe(503);
    expect(r.json.reason).toBe('no answer yet');
  });
});

describe('close', () => {
  it('is idempotent and stops answering', async () => {
    h = await startApi();
    expect((await call('GET', '/healthz')).status).toBe(200);
    await agent.close();
    agent = new Agent();
    const first = h.api.close();
    const second = h.api.close();
    await expect(Promise.all([first, second])).resolves.toEqual([undefined, undefined]);
    await expect(h.api.close()).resolves.toBeUndefined();
    await expect(call('GET', '/healthz')).rejects.toThrow();
  });

  it('resolves when the server never listened', async () => {
    const api = new ControlApi({
      host: '127.0.0.1',
      port: 0,
      registry: registryFor(new Tracker({ retainMs: 1 }), { now: T0 }),
      probes: { health: () => ({ ok: true }), ready: () => ({ ok: true }) },
      log: pino({ level: 'silent' }),
    });
    await expect(api.close()).resolves.toBeUndefined();
    await expect(api.close()).resolves.toBeUndefined();
  });
});

describe('validateAddRequest', () => {
  it('returns the ids and metadata of a valid body', () => {
    expect(validateAddRequest({ ids: ['a', 'b'] })).toEqual({ ids: ['a', 'b'], metadata: null });
    expect(validateAddRequest({ ids: ['a'], metadata: { x: 1 } })).toEqual({
      ids: ['a'],
      metadata: { x: 1 },
    });
  });

  it.each([
    null,
    [],
    'ids',
    {},
    { ids: [] },
    { ids: ['a b'] },
    { ids: ['a'], metadata: [] },
    { ids: ['a'], other: 1 },
  ])('throws on %j', (body) => {
    expect(() => validateAddRequest(body)).toThrow();
  });

  it('refuses metadata nested past the limit without recursing, however deep', () => {
    let deep: Record<string, unknown> = {};
    for (let i = 0; i < 100_000; i++) deep = { a: deep };
    let thrown: unknown;
    try {
      validateAddRequest({ ids: ['a'], metadata: deep });
    } catch (error) {
      thrown = error;
    }
    expect(thrown).not.toBeInstanceOf(RangeError);
    expect(thrown).toMatchObject({
      status: 400,
      code: 'invalid_request',
      details: [{ field: 'metadata', problem: `must be nested at most ${MAX_METADATA_DEPTH} levels deep` }],
    });
    let atLimit: Record<string, unknown> = {};
    for (let i = 1; i < MAX_METADATA_DEPTH; i++) atLimit = { a: atLimit };
    expect(validateAddRequest({ ids: ['a'], metadata: atLimit }).metadata).toBe(atLimit);
    expect(() => validateAddRequest({ ids: ['a'], metadata: { a: atLimit } })).toThrow(/nothing was added/);
  });

  it('uses the SPEC id pattern and limits', () => {
    expect(EXPORT_ID_PATTERN.test('A-z_09')).toBe(true);
    expect(EXPORT_ID_PATTERN.test('a'.repeat(128))).toBe(true);
    expect(EXPORT_ID_PATTERN.test('a'.repeat(129))).toBe(false);
    expect(EXPORT_ID_PATTERN.test('a+b')).toBe(false);
    expect(MAX_BODY_BYTES).toBe(1_048_576);
    expect(MAX_IDS_PER_REQUEST).toBe(10_000);
    expect(MAX_METADATA_BYTES).toBe(4096);
  });
});
