import { Readable } from 'node:stream';
import pino from 'pino';
import { Agent, request } from 'undici';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { EventType } from '../src/delivery/events.js';
import {
  ControlApi,
  DEFAULT_ANSWER_STALL_TIMEOUT_MS,
  DEFAULT_CONNECTION_HEADROOM,
  DEFAULT_EVENT_PAGE_LIMIT,
  DEFAULT_HEADERS_TIMEOUT_MS,
  DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_REQUESTS_IN_PROGRESS,
  DEFAULT_PAGE_LIMIT,
  DEFAULT_REQUEST_TIMEOUT_MS,
  EXPORT_ID_PATTERN,
  type ExportView,
  eventToJson,
  MAX_BODY_BYTES,
  MAX_EVENT_PAGE_LIMIT,
  MAX_IDS_PER_REQUEST,
  MAX_METADATA_BYTES,
  MAX_METADATA_DEPTH,
  MAX_PAGE_LIMIT,
  parseRfc3339,
  recordToJson,
  validateAddRequest,
  validateRedeliverSince,
  type WatchRegistry,
  WEBHOOK_ID_PATTERN,
} from '../src/http/control-api.js';
import type { ExportState, PlatformExport } from '../src/polling/tracker.js';
import type {
  DeliveryStatus,
  EventQuery,
  ExportPageQuery,
  StoredDelivery,
  StoredEvent,
} from '../src/store/store.js';

const T0 = Date.UTC(2024, 0, 2, 3, 4, 5, 678);
const T0_ISO = '2024-01-02T03:04:05.678Z';
const T1 = T0 + 61_001;
const T1_ISO = '2024-01-02T03:05:06.679Z';
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** A configured endpoint whose URL carries secrets, and its label. */
const SECRET_URL = 'https://hook-user:Pa55-w0rd-XYZ@hooks.example.org/in?token=tok-SECRET-123';
const SECRET_LABEL = 'https://hooks.example.org/in';
const OTHER_URL = 'http://127.0.0.1:9999/other';
const SECRETS = ['Pa55-w0rd-XYZ', 'tok-SECRET-123', 'hook-user'];

/**
 * The API's port in memory: exports in a map, events in a list, redeliveries as the store does
 * them (a new series at 0 attempts). `failWith` makes every call reject, as a broken store would.
 */
class MemoryRegistry implements WatchRegistry {
  readonly exports = new Map<string, ExportView>();
  readonly stored: StoredEvent[] = [];
  readonly endpoints = [
    { url: SECRET_URL, label: SECRET_LABEL },
    { url: OTHER_URL, label: OTHER_URL },
  ];
  readonly calls: Array<{ method: string; args: unknown[] }> = [];
  failWith: Error | undefined;
  now = T0;

  get size(): number {
    return this.exports.size;
  }

  async watch(ids: readonly string[], metadata: Record<string, unknown> | null) {
    this.#enter('watch', ids, metadata);
    const result = { accepted: [] as string[], alreadyWatched: [] as string[] };
    for (const id of ids) {
      if (this.exports.has(id)) {
        result.alreadyWatched.push(id);
        continue;
      }
      this.exports.set(id, view(id, metadata, this.now));
      result.accepted.push(id);
    }
    return result;
  }

  async unwatch(id: string) {
    this.#enter('unwatch', id);
    return this.exports.delete(id);
  }

  async get(id: string) {
    this.#enter('get', id);
    const found = this.exports.get(id);
    if (!found) return undefined;
    const events = this.stored.filter((e) => e.exportId === id).sort((a, b) => a.createdAt - b.createdAt);
    return { ...found, events };
  }

  async page(query: ExportPageQuery) {
    this.#enter('page', query);
    const ids = [...this.exports.keys()].sort();
    const matching = ids
      .filter((id) => query.after === undefined || id > query.after)
      .map((id) => this.exports.get(id) as ExportView)
      .filter((v) => query.state === undefined || v.state === query.state);
    return { items: matching.slice(0, query.limit), more: matching.length > query.limit };
  }

  async events(query: EventQuery) {
    this.#enter('events', query);
    const after = query.after;
    const matching = [...this.stored]
      .sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0))
      .filter((e) => query.exportId === undefined || e.exportId === query.exportId)
      .filter((e) => query.status === undefined || e.deliveries.some((d) => d.status === query.status))
      .filter((e) => query.since === undefined || e.createdAt >= query.since)
      .filter(
        (e) =>
          after === undefined ||
          e.createdAt < after.createdAt ||
          (e.createdAt === after.createdAt && e.id < after.id),
      );
    return { items: matching.slice(0, query.limit), more: matching.length > query.limit };
  }

  async redeliver(eventId: string, endpoint?: string) {
    this.#enter('redeliver', eventId, endpoint);
    const event = this.stored.find((e) => e.id === eventId);
    if (!event) return 'unknown_event' as const;
    const targets = this.endpoints.filter(
      (e) => endpoint === undefined || e.url === endpoint || e.label === endpoint,
    );
    if (targets.length === 0) return 'unknown_endpoint' as const;
    for (const target of targets) {
      const existing = event.deliveries.find((d) => d.endpointLabel === target.label);
      if (existing) Object.assign(existing, restarted(this.now));
      else event.deliveries.push(delivery(event.id, target.label, 'pending', this.now));
    }
    return { deliveries: targets.length };
  }

  async redeliverSince(since: number, status: DeliveryStatus) {
    this.#enter('redeliverSince', since, status);
    let deliveries = 0;
    for (const event of this.stored.filter((e) => e.createdAt >= since)) {
      for (const d of event.deliveries.filter((x) => x.status === status)) {
        Object.assign(d, restarted(this.now));
        deliveries++;
      }
    }
    return { deliveries };
  }

  /** Stores an event with one delivery per status given, to the configured endpoints in order. */
  addEvent(exportId: string, type: EventType, createdAt: number, statuses: DeliveryStatus[]): StoredEvent {
    const id = `evt_${exportId}_${type.slice('export.'.length)}`;
    const event: StoredEvent = {
      id,
      type,
      exportId,
      body: JSON.stringify({
        type,
        timestamp: new Date(createdAt).toISOString(),
        data: { export_id: exportId },
      }),
      createdAt,
      deliveries: statuses.map((status, i) =>
        delivery(id, this.endpoints[i]?.label ?? `http://e${i}`, status, createdAt),
      ),
    };
    this.stored.push(event);
    return event;
  }

  #enter(method: string, ...args: unknown[]): void {
    this.calls.push({ method, args });
    if (this.failWith) throw this.failWith;
  }
}

function view(id: string, metadata: Record<string, unknown> | null, at: number): ExportView {
  return {
    id,
    state: 'UNKNOWN',
    previousState: null,
    firstSeenAt: at,
    stateChangedAt: at,
    lastCheckedAt: null,
    checks: 0,
    metadata,
    history: [{ state: 'UNKNOWN', at }],
    export: null,
    error: null,
  };
}

/** A record moved to `state` at `at`, as the daemon would have it after a check. */
function moved(v: ExportView, state: ExportState, at: number, platform: PlatformExport | null = null): void {
  Object.assign(v, {
    previousState: v.state,
    state,
    stateChangedAt: at,
    lastCheckedAt: at,
    checks: v.checks + 1,
    history: [...v.history, { state, at }],
    export: platform,
  });
}

function delivery(eventId: string, label: string, status: DeliveryStatus, at: number): StoredDelivery {
  const finished = status !== 'pending';
  return {
    eventId,
    endpointKey: `key-of-${label}`,
    endpointLabel: label,
    status,
    attempts: status === 'pending' ? 0 : 3,
    nextAttemptAt: status === 'pending' ? at : null,
    seriesStartedAt: at,
    lastStatus: status === 'delivered' ? 204 : status === 'gone' ? 410 : finished ? 500 : null,
    lastError: status === 'failed' ? `500 from ${SECRET_URL}` : null,
    finishedAt: finished ? at + 1000 : null,
  };
}

function restarted(at: number): Partial<StoredDelivery> {
  return {
    status: 'pending',
    attempts: 0,
    nextAttemptAt: at,
    seriesStartedAt: at,
    lastStatus: null,
    lastError: null,
    finishedAt: null,
  };
}

interface Harness {
  api: ControlApi;
  url: string;
  registry: MemoryRegistry;
  probes: {
    healthy: { ok: boolean; reason?: string };
    ready: { ok: boolean; reason?: string; role?: string };
  };
  /** Every log line of the API, parsed. */
  lines: Array<{ level: number; msg: string } & Record<string, unknown>>;
}

function apiOptions(registry: WatchRegistry) {
  return {
    host: '127.0.0.1',
    port: 0,
    registry,
    probes: { health: () => ({ ok: true }), ready: () => ({ ok: true }) },
    log: pino({ level: 'silent' }),
  };
}

async function startApi(apiToken?: string): Promise<Harness> {
  const registry = new MemoryRegistry();
  const probes: Harness['probes'] = { healthy: { ok: true }, ready: { ok: true } };
  const lines: Harness['lines'] = [];
  const api = new ControlApi({
    ...apiOptions(registry),
    probes: { health: () => probes.healthy, ready: () => probes.ready },
    log: pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line)) }),
    apiToken,
  });
  const url = await api.listen();
  return { api, url, registry, probes, lines };
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

/** Asserts the README's error shape and returns the error object. */
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

const ids = (answer: Answer): string[] => answer.json.items.map((i: { id: string }) => i.id);

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
    const other = new ControlApi({ ...apiOptions(new MemoryRegistry()), port: Number(new URL(h.url).port) });
    await expect(other.listen()).rejects.toMatchObject({ code: 'EADDRINUSE', syscall: 'listen' });
    await expect(other.close()).resolves.toBeUndefined();
    expect((await call('GET', '/healthz')).status).toBe(200);
  });

  it('refuses limits that cannot work, naming each option', () => {
    const make = (limits: Record<string, number>) =>
      new ControlApi({ ...apiOptions(new MemoryRegistry()), ...limits });
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
    expect(DEFAULT_ANSWER_STALL_TIMEOUT_MS).toBe(30_000);
    expect(DEFAULT_PAGE_LIMIT).toBe(1000);
    expect(MAX_PAGE_LIMIT).toBe(10_000);
    expect(DEFAULT_EVENT_PAGE_LIMIT).toBe(100);
    expect(MAX_EVENT_PAGE_LIMIT).toBe(1000);
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
    expect(h.registry.size).toBe(2);

    r = await call('POST', '/v1/exports', { json: { ids: ['exp_2', 'EXP3'] } });
    expect(r.status).toBe(202);
    expect(r.json).toEqual({ accepted: ['EXP3'], already_watched: ['exp_2'] });

    r = await call('POST', '/v1/exports', { json: { ids: ['exp-1', 'exp_2', 'EXP3'] } });
    expect(r.status).toBe(202);
    expect(r.json).toEqual({ accepted: [], already_watched: ['exp-1', 'exp_2', 'EXP3'] });
    expect(h.registry.size).toBe(3);
  });

  it('hands metadata to the registry and shows it in the record', async () => {
    const metadata = { team: 'genomics', run: 7, tags: ['a', 'b'], nested: { ok: true } };
    const r = await call('POST', '/v1/exports', { json: { ids: ['m1', 'm2'], metadata } });
    expect(r.status).toBe(202);
    expect(h.registry.calls.at(-1)).toEqual({ method: 'watch', args: [['m1', 'm2'], metadata] });
    const one = await call('GET', '/v1/exports/m2');
    expect(one.status).toBe(200);
    expect(one.json.metadata).toEqual(metadata);
  });

  it('keeps metadata exactly as sent: UTF-8 text, the largest exact integers', async () => {
    const body = Buffer.from(
      '{"ids": ["u1"], "metadata": {"name": "café ✓", "max": 9007199254740991, "min": -9007199254740991, "x": 1.5}}',
    );
    const r = await call('POST', '/v1/exports', { body, headers: { 'content-type': 'application/json' } });
    expect(r.status).toBe(202);
    expect((await call('GET', '/v1/exports/u1')).json.metadata).toEqual({
      name: 'café ✓',
      max: Number.MAX_SAFE_INTEGER,
      min: Number.MIN_SAFE_INTEGER,
      x: 1.5,
    });
  });

  it('accepts null metadata as none', async () => {
    const r = await call('POST', '/v1/exports', { json: { ids: ['n1'], metadata: null } });
    expect(r.status).toBe(202);
    expect((await call('GET', '/v1/exports/n1')).json.metadata).toBeNull();
  });

  it('accepts the limits themselves: 10,000 ids, 128-character ids, 4 KiB of metadata', async () => {
    const many = Array.from({ length: MAX_IDS_PER_REQUEST }, (_, i) => `id-${i}`);
    let r = await call('POST', '/v1/exports', { json: { ids: many } });
    expect(r.status).toBe(202);
    expect(r.json.accepted).toHaveLength(10_000);
    expect(h.registry.size).toBe(10_000);

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
      await h.registry.watch(['pre-existing'], null);
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
      // Numbers JSON.parse cannot hold: echoed in events, they would be other numbers, or null.
      [
        'metadata with an integer beyond 2^53',
        '{"ids": ["good-1"], "metadata": {"order": 12345678901234567890}}',
        'metadata',
      ],
      [
        'metadata with a number too large for a double',
        '{"ids": ["good-1"], "metadata": {"n": [1e400]}}',
        'metadata',
      ],
    ];

    it.each(bodies)('%s', async (_name, body, field) => {
      const r = await call('POST', '/v1/exports', { body, headers: { 'content-type': 'application/json' } });
      const error = expectError(r, 400);
      if (field) expect(error.details?.map((d) => d.field)).toContain(field);
      expect(h.registry.size).toBe(1);
      expect(h.registry.exports.has('good-1')).toBe(false);
      expect(h.registry.exports.get('pre-existing')?.state).toBe('UNKNOWN');
    });

    it('a body that is not UTF-8 (not taken as a replacement character)', async () => {
      const body = Buffer.concat([
        Buffer.from('{"ids": ["good-1"], "metadata": {"name": "caf'),
        Buffer.from([0xe9]),
        Buffer.from('"}}'),
      ]);
      const r = await call('POST', '/v1/exports', { body, headers: { 'content-type': 'application/json' } });
      expect(expectError(r, 400, 'invalid_json').message).toBe('the body is not valid UTF-8');
      expect(h.registry.exports.has('good-1')).toBe(false);
    });

    it('more than 10,000 ids', async () => {
      const many = Array.from({ length: MAX_IDS_PER_REQUEST + 1 }, (_, i) => `id-${i}`);
      const error = expectError(await call('POST', '/v1/exports', { json: { ids: many } }), 400);
      expect(error.details?.map((d) => d.field)).toContain('ids');
      expect(h.registry.size).toBe(1);
    });

    it('lists every problem at once', async () => {
      const r = await call('POST', '/v1/exports', {
        json: { ids: ['ok', 'no way', 'x'.repeat(200)], metadata: 'x', extra: true },
      });
      const error = expectError(r, 400);
      expect(error.details?.map((d) => d.field).sort()).toEqual(['extra', 'ids[1]', 'ids[2]', 'metadata']);
      expect(h.registry.size).toBe(1);
    });

    it('a query parameter (the route takes none)', async () => {
      const r = await call('POST', '/v1/exports?dry_run=1', { json: { ids: ['good-1'] } });
      expect(expectError(r, 400, 'invalid_request').details).toEqual([
        { field: 'dry_run', problem: 'is not a parameter of this route' },
      ]);
      expect(h.registry.exports.has('good-1')).toBe(false);
    });
  });

  it('answers 413 to a declared body over 1 MiB, and adds nothing', async () => {
    const body = JSON.stringify({ ids: ['too-big'], metadata: { pad: 'x'.repeat(MAX_BODY_BYTES) } });
    const r = await call('POST', '/v1/exports', { body, headers: { 'content-type': 'application/json' } });
    expectError(r, 413);
    expect(h.registry.size).toBe(0);
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
    expect(h.registry.size).toBe(0);
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
    ['GET', '/v1/events/evt_a_completed'],
    ['POST', '/v1/events/evt_a_completed/redeliver/now'],
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
    ['POST', '/v1/events', ['GET']],
    ['GET', '/v1/events/redeliver', ['POST']],
    ['DELETE', '/v1/events/redeliver', ['POST']],
    ['GET', '/v1/events/evt_a_completed/redeliver', ['POST']],
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
    await h.registry.watch(['keep'], null);
    h.registry.calls.length = 0;
    expect((await call('PUT', '/v1/exports', { json: { ids: ['other'] } })).status).toBe(405);
    expect((await call('POST', '/v1/exports/keep', { json: { ids: ['other'] } })).status).toBe(405);
    expect((await call('GET', '/v1/events/redeliver')).status).toBe(405);
    expect(h.registry.calls).toEqual([]);
    expect(h.registry.size).toBe(1);
  });
});

describe('reading and removing exports', () => {
  beforeEach(async () => {
    h = await startApi();
  });

  it('shows a fresh record exactly, with its events (none yet)', async () => {
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
      events: [],
    });
  });

  it('shows a checked record exactly, with the platform object, ISO times and its events', async () => {
    await call('POST', '/v1/exports', { json: { ids: ['seen'] } });
    const platformObject = resource('seen', 'RUNNING', {
      href: 'https://api.sbgenomics.com/v2/storage/exports/seen',
      destination: { volume: 'vol', location: 'out/file.bam' },
      started_on: '2024-01-02T03:04:00Z',
    });
    moved(h.registry.exports.get('seen') as ExportView, 'RUNNING', T1, platformObject);
    h.registry.addEvent('seen', 'export.running', T1, ['delivered', 'pending']);
    const r = await call('GET', '/v1/exports/seen');
    expect(r.status).toBe(200);
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
      events: [
        {
          id: 'evt_seen_running',
          type: 'export.running',
          export_id: 'seen',
          created_at: T1_ISO,
          body: { type: 'export.running', timestamp: T1_ISO, data: { export_id: 'seen' } },
          deliveries: [
            {
              endpoint: SECRET_LABEL,
              status: 'delivered',
              attempts: 3,
              next_attempt_at: null,
              series_started_at: T1_ISO,
              last_status: 204,
              last_error: null,
              finished_at: new Date(T1 + 1000).toISOString(),
            },
            {
              endpoint: OTHER_URL,
              status: 'pending',
              attempts: 0,
              next_attempt_at: T1_ISO,
              series_started_at: T1_ISO,
              last_status: null,
              last_error: null,
              finished_at: null,
            },
          ],
        },
      ],
    });
    for (const t of [r.json.first_seen_at, r.json.state_changed_at, r.json.last_checked_at])
      expect(t).toMatch(ISO);
  });

  it('recordToJson converts epoch milliseconds to ISO UTC, and adds events only when the view has them', () => {
    const record = view('r', { a: 1 }, T0);
    const expected = {
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
    };
    expect(recordToJson(record)).toStrictEqual(expected);
    expect(recordToJson({ ...record, events: [] })).toStrictEqual({ ...expected, events: [] });
  });

  it('answers 404 for an export that is not watched', async () => {
    const error = expectError(await call('GET', '/v1/exports/never-added'), 404, 'export_not_found');
    expect(error.message).toContain('never-added');
    expectError(await call('GET', '/v1/exports/not.valid'), 404);
  });

  it('answers 404, not 500, to a malformed percent-encoded id', async () => {
    expectError(await call('GET', '/v1/exports/%E0%A4%A'), 404);
    expectError(await call('DELETE', '/v1/exports/%ZZ'), 404);
  });

  it('lists every record without events, and filters by state', async () => {
    await call('POST', '/v1/exports', { json: { ids: ['u1', 'p1', 'r1', 'c1', 'f1'] } });
    const get = (id: string) => h.registry.exports.get(id) as ExportView;
    moved(get('p1'), 'PENDING', T1, resource('p1', 'PENDING'));
    moved(get('r1'), 'RUNNING', T1, resource('r1', 'RUNNING'));
    moved(get('c1'), 'COMPLETED', T1, resource('c1', 'COMPLETED', { result: { size: 1 } }));
    moved(get('f1'), 'FAILED', T1, resource('f1', 'FAILED', { error: { code: 9107 } }));
    h.registry.addEvent('c1', 'export.completed', T1, ['delivered']);
    const all = await call('GET', '/v1/exports');
    expect(all.status).toBe(200);
    expect(Object.keys(all.json)).toEqual(['items', 'next_cursor']);
    expect(all.json.next_cursor).toBeNull();
    expect(ids(all)).toEqual(['c1', 'f1', 'p1', 'r1', 'u1']);
    const c1 = all.json.items.find((i: { id: string }) => i.id === 'c1');
    expect(c1).toStrictEqual(recordToJson(get('c1')));
    expect(c1).not.toHaveProperty('events');

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
    moved(h.registry.exports.get('d') as ExportView, 'RUNNING', T1);
    const pages: string[][] = [];
    let cursor: string | null = null;
    do {
      const r = await call('GET', `/v1/exports?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`);
      expect(r.status).toBe(200);
      expect(r.headers['cache-control']).toBe('no-store');
      pages.push(ids(r));
      cursor = r.json.next_cursor;
      if (cursor !== null) expect(Buffer.from(cursor, 'base64url').toString()).toBe(pages.at(-1)?.at(-1));
    } while (cursor !== null);
    expect(pages).toEqual([['a', 'b'], ['c', 'd'], ['e']]);
    expect(h.registry.calls.find((c) => c.method === 'page')?.args).toEqual([
      { state: undefined, after: undefined, limit: 2 },
    ]);

    const unknown = await call('GET', '/v1/exports?state=UNKNOWN&limit=3');
    expect(ids(unknown)).toEqual(['a', 'b', 'c']);
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
    ['status=RUNNING', 'status'],
    ['State=RUNNING', 'State'],
  ])('rejects ?%s with 400 and details', async (query, field) => {
    const error = expectError(await call('GET', `/v1/exports?${query}`), 400);
    expect(error.details?.map((d) => d.field)).toEqual([field]);
  });

  it.each(['DONE', 'bogus', 'PENDING,RUNNING'])('rejects ?state=%s with 400 invalid_state', async (state) => {
    expectError(await call('GET', `/v1/exports?state=${encodeURIComponent(state)}`), 400, 'invalid_state');
  });

  it('names an unknown query parameter with the ones the route takes', async () => {
    const error = expectError(await call('GET', '/v1/exports?page=2&limit=5'), 400, 'invalid_request');
    expect(error.details).toEqual([
      { field: 'page', problem: 'is not a parameter of this route; this route takes state, limit, cursor' },
    ]);
  });

  it('DELETE answers 204, then the export is gone (404)', async () => {
    await call('POST', '/v1/exports', { json: { ids: ['del-me', 'keep-me'] } });
    const r = await call('DELETE', '/v1/exports/del-me');
    expect(r.status).toBe(204);
    expect(r.text).toBe('');
    expect([...h.registry.exports.keys()]).toEqual(['keep-me']);
    expectError(await call('GET', '/v1/exports/del-me'), 404);
    expectError(await call('DELETE', '/v1/exports/del-me'), 404);
    expect(ids(await call('GET', '/v1/exports'))).toEqual(['keep-me']);
  });

  it('GET and DELETE of one export take no query parameters', async () => {
    await call('POST', '/v1/exports', { json: { ids: ['q'] } });
    expectError(await call('GET', '/v1/exports/q?events=0'), 400, 'invalid_request');
    expectError(await call('DELETE', '/v1/exports/q?force=1'), 400, 'invalid_request');
    expect(h.registry.exports.has('q')).toBe(true);
  });

  describe('a body sent to a route that takes none is refused before anything is done', () => {
    const twoMegabytes = Buffer.alloc(2_000_000, 0x20);

    beforeEach(async () => {
      await call('POST', '/v1/exports', { json: { ids: ['victim'] } });
      h.registry.calls.length = 0;
    });

    it('DELETE with a 2 MB JSON body: 413, and the export stays watched', async () => {
      const r = await call('DELETE', '/v1/exports/victim', {
        body: twoMegabytes,
        headers: { 'content-type': 'application/json' },
      });
      expectError(r, 413, 'payload_too_large');
      expect(h.registry.calls).toEqual([]);
      expect(h.registry.exports.has('victim')).toBe(true);
    });

    it('GET with a 2 MB text/html body: 413, and the registry is not asked', async () => {
      const r = await call('GET', '/v1/exports', {
        body: twoMegabytes,
        headers: { 'content-type': 'text/html' },
      });
      expectError(r, 413, 'payload_too_large');
      expect(h.registry.calls).toEqual([]);
      expect(ids(await call('GET', '/v1/exports'))).toEqual(['victim']);
    });

    it('a small body, declared or streamed, is a 400 saying the route takes none', async () => {
      const declared = await call('DELETE', '/v1/exports/victim', { json: {} });
      expect(expectError(declared, 400, 'invalid_request').message).toMatch(/takes no body/);
      // A stream is sent chunked, without a content-length.
      const streamed = await call('DELETE', '/v1/exports/victim', {
        body: Readable.from([Buffer.from('{}')]),
        headers: { 'content-type': 'application/json' },
      });
      expect(expectError(streamed, 400, 'invalid_request').message).toMatch(/takes no body/);
      expect(expectError(await call('GET', '/healthz', { body: 'x' }), 400).message).toMatch(/takes no body/);
      expect(h.registry.calls).toEqual([]);
      expect(h.registry.exports.has('victim')).toBe(true);
      // An empty body is no body: still served.
      const empty = await call('DELETE', '/v1/exports/victim', {
        body: '',
        headers: { 'content-type': 'application/json', 'content-length': '0' },
      });
      expect(empty.status).toBe(204);
      expect(h.registry.exports.has('victim')).toBe(false);
    });
  });
});

describe('GET /v1/events', () => {
  const MINUTE = 60_000;

  beforeEach(async () => {
    h = await startApi();
    const r = h.registry;
    r.addEvent('a1', 'export.running', T0, ['delivered', 'delivered']);
    r.addEvent('a1', 'export.completed', T0 + MINUTE, ['delivered', 'failed']);
    r.addEvent('b2', 'export.failed', T0 + 2 * MINUTE, ['pending', 'pending']);
    r.addEvent('c3', 'export.lost', T0 + 3 * MINUTE, ['gone', 'failed']);
  });

  it('lists events newest first, each with its body and deliveries, and a null cursor at the end', async () => {
    const r = await call('GET', '/v1/events');
    expect(r.status).toBe(200);
    expect(r.headers['cache-control']).toBe('no-store');
    expect(Object.keys(r.json)).toEqual(['items', 'next_cursor']);
    expect(ids(r)).toEqual(['evt_c3_lost', 'evt_b2_failed', 'evt_a1_completed', 'evt_a1_running']);
    expect(r.json.next_cursor).toBeNull();
    const stored = h.registry.stored[3] as StoredEvent;
    expect(r.json.items[0]).toStrictEqual(eventToJson(stored));
    expect(r.json.items[0]).toStrictEqual({
      id: 'evt_c3_lost',
      type: 'export.lost',
      export_id: 'c3',
      created_at: new Date(T0 + 3 * MINUTE).toISOString(),
      body: JSON.parse(stored.body),
      deliveries: [
        expect.objectContaining({ endpoint: SECRET_LABEL, status: 'gone', last_status: 410 }),
        expect.objectContaining({ endpoint: OTHER_URL, status: 'failed', last_status: 500 }),
      ],
    });
    expect(h.registry.calls.at(-1)).toEqual({
      method: 'events',
      args: [{ exportId: undefined, status: undefined, since: undefined, after: undefined, limit: 100 }],
    });
  });

  it('filters by export, delivery status and creation time, alone and together', async () => {
    expect(ids(await call('GET', '/v1/events?export_id=a1'))).toEqual(['evt_a1_completed', 'evt_a1_running']);
    expect(ids(await call('GET', '/v1/events?status=failed'))).toEqual(['evt_c3_lost', 'evt_a1_completed']);
    expect(ids(await call('GET', '/v1/events?status=pending'))).toEqual(['evt_b2_failed']);
    expect(ids(await call('GET', '/v1/events?status=gone'))).toEqual(['evt_c3_lost']);
    const since = new Date(T0 + 2 * MINUTE).toISOString();
    expect(ids(await call('GET', `/v1/events?since=${since}`))).toEqual(['evt_c3_lost', 'evt_b2_failed']);
    expect(ids(await call('GET', `/v1/events?since=${since}&status=failed`))).toEqual(['evt_c3_lost']);
    expect(ids(await call('GET', '/v1/events?export_id=a1&status=failed'))).toEqual(['evt_a1_completed']);
    expect((await call('GET', '/v1/events?export_id=zz')).json).toEqual({ items: [], next_cursor: null });
  });

  it('reads since as RFC 3339 with any offset', async () => {
    // 03:06:05.678Z is 05:36:05.678+02:30.
    const r = await call('GET', `/v1/events?since=${encodeURIComponent('2024-01-02T05:36:05.678+02:30')}`);
    expect(r.status).toBe(200);
    expect(h.registry.calls.at(-1)?.args[0]).toMatchObject({ since: T0 + 2 * MINUTE });
    expect(ids(r)).toEqual(['evt_c3_lost', 'evt_b2_failed']);
  });

  it('pages newest first with an opaque cursor on (created_at, id), ties broken by id', async () => {
    h.registry.addEvent('b1', 'export.completed', T0 + 2 * MINUTE, ['failed']);
    h.registry.addEvent('b3', 'export.completed', T0 + 2 * MINUTE, ['failed']);
    const pages: string[][] = [];
    let cursor: string | null = null;
    do {
      const r = await call('GET', `/v1/events?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`);
      expect(r.status).toBe(200);
      pages.push(ids(r));
      cursor = r.json.next_cursor;
      if (cursor !== null) {
        const last = r.json.items.at(-1);
        expect(JSON.parse(Buffer.from(cursor, 'base64url').toString())).toEqual([
          Date.parse(last.created_at),
          last.id,
        ]);
      }
    } while (cursor !== null);
    expect(pages).toEqual([
      ['evt_c3_lost', 'evt_b3_completed'],
      ['evt_b2_failed', 'evt_b1_completed'],
      ['evt_a1_completed', 'evt_a1_running'],
    ]);
    // Filters hold while paging.
    const first = await call('GET', '/v1/events?status=failed&limit=1');
    const second = await call('GET', `/v1/events?status=failed&limit=3&cursor=${first.json.next_cursor}`);
    expect([...ids(first), ...ids(second)]).toEqual([
      'evt_c3_lost',
      'evt_b3_completed',
      'evt_b1_completed',
      'evt_a1_completed',
    ]);
    expect(second.json.next_cursor).toBeNull();
  });

  it('returns 100 events by default and up to 1,000 when asked', async () => {
    for (let i = 0; i < 1100; i++) h.registry.addEvent(`n${i}`, 'export.completed', T1 + i, ['delivered']);
    const first = await call('GET', '/v1/events');
    expect(first.json.items).toHaveLength(DEFAULT_EVENT_PAGE_LIMIT);
    expect(first.json.next_cursor).not.toBeNull();
    const most = await call('GET', `/v1/events?limit=${MAX_EVENT_PAGE_LIMIT}`);
    expect(most.json.items).toHaveLength(1000);
  });

  const forged = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  it.each([
    ['export_id=a.b', 'export_id'],
    ['export_id=', 'export_id'],
    [`export_id=${'a'.repeat(129)}`, 'export_id'],
    ['status=FAILED', 'status'],
    ['status=done', 'status'],
    ['since=yesterday', 'since'],
    ['since=2024-01-02', 'since'],
    ['since=2024-01-02T03:04:05', 'since'],
    ['since=2024-01-02T03:04Z', 'since'],
    ['since=2024-02-30T00:00:00Z', 'since'],
    ['since=2024-01-02T24:00:00Z', 'since'],
    ['since=1704164645678', 'since'],
    ['limit=0', 'limit'],
    ['limit=1001', 'limit'],
    ['limit=-5', 'limit'],
    ['limit=ten', 'limit'],
    ['cursor=!!', 'cursor'],
    ['cursor=', 'cursor'],
    [`cursor=${Buffer.from('not json').toString('base64url')}`, 'cursor'],
    [`cursor=${forged(['x', 'evt_a'])}`, 'cursor'],
    [`cursor=${forged([-1, 'evt_a'])}`, 'cursor'],
    [`cursor=${forged([1.5, 'evt_a'])}`, 'cursor'],
    [`cursor=${forged([1, 'evt a'])}`, 'cursor'],
    [`cursor=${forged({ createdAt: 1, id: 'evt_a' })}`, 'cursor'],
    [`cursor=${forged([1, 'evt_a'])}x`, 'cursor'],
    ['status=failed&status=pending', 'status'],
    ['state=RUNNING', 'state'],
    ['exportId=a1', 'exportId'],
  ])('rejects ?%s with 400 invalid_request naming the field', async (query, field) => {
    h.registry.calls.length = 0;
    const error = expectError(await call('GET', `/v1/events?${query}`), 400, 'invalid_request');
    expect(error.details?.map((d) => d.field)).toEqual([field]);
    expect(h.registry.calls).toEqual([]);
  });

  it('lists every problem at once', async () => {
    const r = await call('GET', '/v1/events?export_id=a.b&status=x&since=never&limit=0&cursor=!&extra=1');
    const error = expectError(r, 400, 'invalid_request');
    expect(error.details?.map((d) => d.field).sort()).toEqual(
      ['cursor', 'export_id', 'extra', 'limit', 'since', 'status'].sort(),
    );
  });

  it('lists at most 20 unknown parameters', async () => {
    const query = Array.from({ length: 30 }, (_, i) => `p${i}=1`).join('&');
    const error = expectError(await call('GET', `/v1/events?${query}`), 400);
    expect(error.details).toHaveLength(21);
    expect(error.details?.at(-1)).toEqual({
      field: 'query',
      problem: '10 more unknown parameters not listed',
    });
  });
});

describe('POST /v1/events/{webhook-id}/redeliver', () => {
  beforeEach(async () => {
    h = await startApi();
    h.registry.addEvent('a1', 'export.completed', T0, ['failed', 'delivered']);
    h.registry.now = T1;
  });

  const redelivers = () => h.registry.calls.filter((c) => c.method === 'redeliver').map((c) => c.args);

  it('starts a new series to every endpoint: 202 with the count, without a body or content type', async () => {
    const r = await call('POST', '/v1/events/evt_a1_completed/redeliver');
    expect(r.status).toBe(202);
    expect(r.json).toStrictEqual({ webhook_id: 'evt_a1_completed', deliveries: 2 });
    expect(redelivers()).toEqual([['evt_a1_completed', undefined]]);
    const after = await call('GET', '/v1/events');
    for (const d of after.json.items[0].deliveries) {
      expect(d).toMatchObject({ status: 'pending', attempts: 0, series_started_at: T1_ISO });
    }
  });

  it.each([
    ['{} as JSON', '{}', { 'content-type': 'application/json' }],
    ['an empty JSON body', '', { 'content-type': 'application/json', 'content-length': '0' }],
    ['a blank JSON body', '  \n', { 'content-type': 'application/json; charset=utf-8' }],
    ['{} without a content type', '{}', {}],
  ])('accepts %s', async (_name, body, headers) => {
    const r = await call('POST', '/v1/events/evt_a1_completed/redeliver', { body, headers });
    expect(r.status).toBe(202);
    expect(r.json.deliveries).toBe(2);
  });

  it('redelivers to one endpoint named by its label or by its URL as configured', async () => {
    let r = await call(
      'POST',
      `/v1/events/evt_a1_completed/redeliver?endpoint=${encodeURIComponent(SECRET_LABEL)}`,
    );
    expect(r.status).toBe(202);
    expect(r.json).toStrictEqual({ webhook_id: 'evt_a1_completed', deliveries: 1 });
    r = await call(
      'POST',
      `/v1/events/evt_a1_completed/redeliver?endpoint=${encodeURIComponent(SECRET_URL)}`,
    );
    expect(r.status).toBe(202);
    expect(r.json.deliveries).toBe(1);
    expect(redelivers()).toEqual([
      ['evt_a1_completed', SECRET_LABEL],
      ['evt_a1_completed', SECRET_URL],
    ]);
    expect(r.text).not.toContain('Pa55');
  });

  it('answers 400 unknown_endpoint for an endpoint that is not configured, without its credentials', async () => {
    const endpoint = 'https://someone:hunter2-secret@elsewhere.example/x?key=k3y-value';
    const r = await call(
      'POST',
      `/v1/events/evt_a1_completed/redeliver?endpoint=${encodeURIComponent(endpoint)}`,
    );
    const error = expectError(r, 400, 'unknown_endpoint');
    expect(error.message).toContain('https://elsewhere.example/x');
    expect(error.details).toEqual([{ field: 'endpoint', problem: 'unknown endpoint' }]);
    for (const secret of ['hunter2-secret', 'k3y-value', 'someone']) expect(r.text).not.toContain(secret);
  });

  it('answers 400 unknown_endpoint for a mistyped endpoint URL without the password it holds', async () => {
    for (const endpoint of [
      'https//someone:hunter2-secret@elsewhere.example/x',
      'someone:hunter2-secret@elsewhere.example/x',
    ]) {
      const r = await call(
        'POST',
        `/v1/events/evt_a1_completed/redeliver?endpoint=${encodeURIComponent(endpoint)}`,
      );
      expectError(r, 400, 'unknown_endpoint');
      expect(r.text).not.toContain('hunter2-secret');
    }
  });

  it('answers 404 event_not_found for an event that is not stored', async () => {
    const error = expectError(
      await call('POST', '/v1/events/evt_zz_completed/redeliver'),
      404,
      'event_not_found',
    );
    expect(error.message).toContain('evt_zz_completed');
  });

  it.each([
    ['a dot', 'evt.a1'],
    ['161 characters', 'e'.repeat(161)],
    ['a bad escape', '%ZZ'],
    ['an escaped slash', 'evt%2Fa1'],
  ])('answers 404 to an id with %s, without asking the registry', async (_name, id) => {
    expectError(await call('POST', `/v1/events/${id}/redeliver`), 404);
    expect(redelivers()).toEqual([]);
  });

  it('takes a webhook-id of 160 characters', async () => {
    const id = `evt_${'x'.repeat(156)}`;
    expect(WEBHOOK_ID_PATTERN.test(id)).toBe(true);
    expectError(await call('POST', `/v1/events/${id}/redeliver`), 404, 'event_not_found');
    expect(redelivers()).toEqual([[id, undefined]]);
  });

  it.each([
    ['a field', '{"endpoint": "x"}', 400],
    ['an array', '[]', 400],
    ['null', 'null', 400],
    ['invalid JSON', '{', 400],
  ])('refuses a body with %s', async (_name, body, status) => {
    const r = await call('POST', '/v1/events/evt_a1_completed/redeliver', {
      body,
      headers: { 'content-type': 'application/json' },
    });
    expectError(r, status);
    expect(redelivers()).toEqual([]);
  });

  it('refuses a content type other than JSON with 415', async () => {
    const r = await call('POST', '/v1/events/evt_a1_completed/redeliver', {
      body: 'x',
      headers: { 'content-type': 'text/plain' },
    });
    expectError(r, 415, 'unsupported_media_type');
    expect(redelivers()).toEqual([]);
  });

  it.each([
    ['endpoint=', 'endpoint'],
    [`endpoint=${'h'.repeat(2049)}`, 'endpoint'],
    ['endpoint=a&endpoint=b', 'endpoint'],
    ['since=2024-01-01T00:00:00Z', 'since'],
  ])('rejects ?%s with 400', async (query, field) => {
    const error = expectError(await call('POST', `/v1/events/evt_a1_completed/redeliver?${query}`), 400);
    expect(error.details?.map((d) => d.field)).toEqual([field]);
    expect(redelivers()).toEqual([]);
  });
});

describe('POST /v1/events/redeliver', () => {
  beforeEach(async () => {
    h = await startApi();
    h.registry.addEvent('a1', 'export.completed', T0, ['failed', 'delivered']);
    h.registry.addEvent('b2', 'export.failed', T1, ['failed', 'failed']);
    h.registry.addEvent('c3', 'export.lost', T1, ['gone', 'pending']);
  });

  const bulk = () => h.registry.calls.filter((c) => c.method.startsWith('redeliver'));

  it('redelivers failed deliveries of events since a time: 202 with the count (the bulk route, not an id)', async () => {
    const r = await call('POST', '/v1/events/redeliver', { json: { since: T0_ISO } });
    expect(r.status).toBe(202);
    expect(r.json).toStrictEqual({ deliveries: 3 });
    expect(bulk()).toEqual([{ method: 'redeliverSince', args: [T0, 'failed'] }]);
  });

  it('takes another status, and a since with an offset', async () => {
    const r = await call('POST', '/v1/events/redeliver', {
      json: { since: '2024-01-02T04:05:06.679+01:00', status: 'gone' },
    });
    expect(r.status).toBe(202);
    expect(r.json).toStrictEqual({ deliveries: 1 });
    expect(bulk()).toEqual([{ method: 'redeliverSince', args: [T1, 'gone'] }]);
  });

  it.each([
    ['no since', { status: 'failed' }, ['since']],
    ['since not a date', { since: 'last week' }, ['since']],
    ['since without a time zone', { since: '2024-01-02T03:04:05' }, ['since']],
    ['since a number', { since: T0 }, ['since']],
    ['a status that is not one', { since: T0_ISO, status: 'FAILED' }, ['status']],
    ['a null status', { since: T0_ISO, status: null }, ['status']],
    ['an unknown field', { since: T0_ISO, export_id: 'a1' }, ['export_id']],
    ['everything wrong', { since: 'x', status: 'y', z: 1 }, ['since', 'status', 'z']],
  ])('400 for %s, and nothing redelivered', async (_name, json, fields) => {
    const error = expectError(await call('POST', '/v1/events/redeliver', { json }), 400, 'invalid_request');
    expect(error.details?.map((d) => d.field).sort()).toEqual(fields);
    expect(bulk()).toEqual([]);
  });

  it.each([
    ['an empty body', '', 'invalid_json'],
    ['invalid JSON', '{"since":', 'invalid_json'],
    ['an array', '[]', 'invalid_request'],
  ])('400 for %s', async (_name, body, code) => {
    const r = await call('POST', '/v1/events/redeliver', {
      body,
      headers: { 'content-type': 'application/json' },
    });
    expectError(r, 400, code);
    expect(bulk()).toEqual([]);
  });

  it('400 for a query parameter', async () => {
    const r = await call('POST', '/v1/events/redeliver?status=failed', { json: { since: T0_ISO } });
    expectError(r, 400, 'invalid_request');
    expect(bulk()).toEqual([]);
  });
});

describe('odd requests to the event routes', () => {
  beforeEach(async () => {
    h = await startApi();
    h.registry.addEvent('a1', 'export.completed', T0, ['failed']);
  });

  it('are 4xx answers in the error shape, never a 5xx, and reach the registry with nothing', async () => {
    const long = 'A'.repeat(10_000);
    const requests: Array<
      [string, string, { body?: string | Readable; headers?: Record<string, string> }, number]
    > = [
      ['GET', `/v1/events?cursor=${long}`, {}, 400],
      ['GET', `/v1/events?since=${encodeURIComponent('２０２４-01-02T03:04:05Z')}`, {}, 400],
      ['GET', '/v1/events?since=%ZZ', {}, 400],
      ['GET', '/v1/events?export_id=%00', {}, 400],
      ['GET', `/v1/events?${'x=1&'.repeat(2000)}`, {}, 400],
      ['GET', '/v1/events?limit=99999999999999999999', {}, 400],
      ['POST', `/v1/events/${'e'.repeat(5000)}/redeliver`, {}, 404],
      ['POST', '/v1/events/%E0%A4%A/redeliver', {}, 404],
      ['POST', '/v1/events//redeliver', {}, 404],
      ['POST', `/v1/events/evt_a1_completed/redeliver?endpoint=${'h'.repeat(5000)}`, {}, 400],
      [
        'POST',
        '/v1/events/evt_a1_completed/redeliver',
        {
          body: JSON.stringify({ pad: 'x'.repeat(MAX_BODY_BYTES) }),
          headers: { 'content-type': 'application/json' },
        },
        413,
      ],
      [
        'POST',
        '/v1/events/redeliver',
        {
          body: `{"since": ${'['.repeat(5000)}${']'.repeat(5000)}}`,
          headers: { 'content-type': 'application/json' },
        },
        400,
      ],
      [
        'POST',
        '/v1/events/redeliver',
        { body: '{"since": "x"}', headers: { 'content-type': 'text/json' } },
        415,
      ],
      [
        'POST',
        '/v1/events/redeliver',
        // Streamed: chunked, with no content-length.
        {
          body: Readable.from([`{"since": `, `"${T0_ISO}"}`]),
          headers: { 'content-type': 'application/json' },
        },
        202,
      ],
    ];
    for (const [method, path, options, status] of requests) {
      const r = await call(method, path, options);
      if (status === 202) expect(r.status, path.slice(0, 80)).toBe(202);
      else expectError(r, status);
    }
    expect(h.registry.calls.map((c) => c.method)).toEqual(['redeliverSince']);
    expect(h.lines.filter((l) => l.level >= 40)).toEqual([]);
  });
});

describe('a registry that fails', () => {
  beforeEach(async () => {
    h = await startApi();
    h.registry.addEvent('a1', 'export.completed', T0, ['failed']);
    h.registry.failWith = new Error('SQLITE_IOERR: disk I/O error at /var/lib/watcher/state.db');
  });

  it.each([
    ['POST', '/v1/exports', { ids: ['x'] }],
    ['GET', '/v1/exports', undefined],
    ['GET', '/v1/exports/a1', undefined],
    ['DELETE', '/v1/exports/a1', undefined],
    ['GET', '/v1/events', undefined],
    ['POST', '/v1/events/evt_a1_completed/redeliver', undefined],
    ['POST', '/v1/events/redeliver', { since: T0_ISO }],
  ] as const)('%s %s → 500 with the error shape and one error line', async (method, path, json) => {
    const r = await call(method, path, json === undefined ? {} : { json });
    const error = expectError(r, 500, 'internal_error');
    expect(error.message).toBe('internal error');
    expect(r.text).not.toContain('SQLITE');
    const errors = h.lines.filter((l) => l.level >= 50);
    expect(errors).toHaveLength(1);
    expect(errors[0]?.msg).toBe('control API request failed');
    expect(JSON.stringify(errors[0])).toContain('SQLITE_IOERR');
    expect(h.lines.filter((l) => l.level === 40)).toEqual([]);
  });

  it('serves on once the registry recovers', async () => {
    expectError(await call('GET', '/v1/events'), 500);
    h.registry.failWith = undefined;
    expect((await call('GET', '/v1/events')).status).toBe(200);
    expect((await call('GET', '/healthz')).status).toBe(200);
  });
});

describe('secrets', () => {
  it('no answer carries an endpoint URL with its credentials, an endpoint key or the API token', async () => {
    const TOKEN = 'api-token-Sx81pQ';
    h = await startApi(TOKEN);
    const headers = { authorization: `Bearer ${TOKEN}` };
    await h.registry.watch(['a1'], null);
    h.registry.addEvent('a1', 'export.failed', T0, ['failed', 'pending']);
    const answers = [
      await call('GET', '/v1/events', { headers }),
      await call('GET', '/v1/exports/a1', { headers }),
      await call('GET', '/v1/exports', { headers }),
      await call('POST', `/v1/events/evt_a1_failed/redeliver?endpoint=${encodeURIComponent(SECRET_URL)}`, {
        headers,
      }),
      await call('POST', '/v1/events/evt_a1_failed/redeliver?endpoint=https%3A%2F%2Fx%3Ay-secret-1%40z%2F', {
        headers,
      }),
      await call('GET', '/v1/events?status=nope', { headers }),
      await call('GET', '/v1/events'),
    ];
    expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 202, 400, 400, 401]);
    const events = answers[0]?.json.items;
    expect(events[0].deliveries[0].last_error).toBe(`500 from ${SECRET_LABEL}`);
    for (const answer of answers) {
      for (const secret of [...SECRETS, 'y-secret-1', TOKEN, 'key-of-'])
        expect(answer.text).not.toContain(secret);
    }
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

  it("/readyz says the replica's role when the probe gives one, ready or not", async () => {
    h.probes.ready = { ok: true, role: 'follower' };
    let r = await call('GET', '/readyz');
    expect(r.status).toBe(200);
    expect(r.json).toStrictEqual({ status: 'ok', role: 'follower' });

    h.probes.ready = { ok: false, reason: 'no connection to PostgreSQL', role: 'disconnected' };
    r = await call('GET', '/readyz');
    expect(r.status).toBe(503);
    expect(r.json).toStrictEqual({
      status: 'unavailable',
      reason: 'no connection to PostgreSQL',
      role: 'disconnected',
    });
  });

  it('HEAD /healthz answers 200 without a body', async () => {
    const r = await call('HEAD', '/healthz');
    expect(r.status).toBe(200);
    expect(r.text).toBe('');
  });

  it('probes ignore query parameters (cache busters)', async () => {
    expect((await call('GET', '/healthz?t=1')).status).toBe(200);
  });
});

describe('bearer authentication', () => {
  const TOKEN = 'api-token-Kx93vQ';
  beforeEach(async () => {
    h = await startApi(TOKEN);
    h.registry.addEvent('a1', 'export.completed', T0, ['failed']);
  });

  it.each([
    ['no header', undefined],
    ['a wrong token', 'Bearer nope'],
    ['a wrong token of the same length', `Bearer ${'x'.repeat(TOKEN.length)}`],
    ['the token with a suffix', `Bearer ${TOKEN}x`],
    ['another scheme', `Basic ${Buffer.from(`user:${TOKEN}`).toString('base64')}`],
    ['the bare token', TOKEN],
    ['an empty bearer', 'Bearer '],
  ])('/v1/* with %s → 401 with WWW-Authenticate, nothing done', async (_name, authorization) => {
    const headers: Record<string, string> = authorization === undefined ? {} : { authorization };
    for (const [method, path, json] of [
      ['POST', '/v1/exports', { ids: ['sneaky'] }],
      ['GET', '/v1/exports', undefined],
      ['GET', '/v1/exports/sneaky', undefined],
      ['DELETE', '/v1/exports/sneaky', undefined],
      ['GET', '/v1/unknown', undefined],
      ['GET', '/v1/events', undefined],
      ['POST', '/v1/events/evt_a1_completed/redeliver', undefined],
      ['POST', '/v1/events/redeliver', { since: T0_ISO }],
    ] as const) {
      const r = await call(method, path, { headers, json });
      expectError(r, 401, 'unauthorized');
      expect(String(r.headers['www-authenticate'])).toMatch(/^Bearer\b/);
    }
    expect(h.registry.calls).toEqual([]);
  });

  it('a /v1 path written with percent-encoding is a /v1 path: 401 without the token', async () => {
    for (const path of ['/%76%31/unknown', '/%76%31/exports/a/b', '/v%31/nothing']) {
      const r = await call('GET', path);
      expectError(r, 401, 'unauthorized');
      expect(String(r.headers['www-authenticate'])).toMatch(/^Bearer\b/);
    }
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
    expect((await call('GET', '/v1/events', { headers })).status).toBe(200);
    expect((await call('POST', '/v1/events/evt_a1_completed/redeliver', { headers })).status).toBe(202);
    expect((await call('POST', '/v1/events/redeliver', { headers, json: { since: T0_ISO } })).status).toBe(
      202,
    );
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
    const api = new ControlApi(apiOptions(new MemoryRegistry()));
    await expect(api.close()).resolves.toBeUndefined();
    await expect(api.close()).resolves.toBeUndefined();
  });
});

describe('validateAddRequest', () => {
  it('names at most 20 unknown fields, and how many more there are (a 1 MiB body holds 90,000)', () => {
    const body: Record<string, unknown> = { ids: ['abc'] };
    for (let i = 0; i < 90_000; i++) body[`k${i}`] = 0;
    expect(Buffer.byteLength(JSON.stringify(body))).toBeLessThan(MAX_BODY_BYTES);
    const error = (() => {
      try {
        validateAddRequest(body);
      } catch (e) {
        return e as { details: Array<{ field: string; problem: string }> };
      }
      return undefined;
    })();
    expect(error?.details).toHaveLength(21);
    expect(error?.details[0]).toEqual({ field: 'k0', problem: 'unknown field' });
    expect(error?.details[20]).toEqual({ field: 'body', problem: '89980 more unknown fields not listed' });
  });

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

  it('uses the README id pattern and limits', () => {
    expect(EXPORT_ID_PATTERN.test('A-z_09')).toBe(true);
    expect(EXPORT_ID_PATTERN.test('a'.repeat(128))).toBe(true);
    expect(EXPORT_ID_PATTERN.test('a'.repeat(129))).toBe(false);
    expect(EXPORT_ID_PATTERN.test('a+b')).toBe(false);
    expect(MAX_BODY_BYTES).toBe(1_048_576);
    expect(MAX_IDS_PER_REQUEST).toBe(10_000);
    expect(MAX_METADATA_BYTES).toBe(4096);
  });
});

describe('validateRedeliverSince', () => {
  it('defaults the status to failed', () => {
    expect(validateRedeliverSince({ since: T0_ISO })).toEqual({ since: T0, status: 'failed' });
    expect(validateRedeliverSince({ since: T0_ISO, status: 'pending' })).toEqual({
      since: T0,
      status: 'pending',
    });
  });

  it.each([null, [], 'x', {}, { since: T0_ISO, status: 'all' }, { since: T0_ISO, x: 1 }])(
    'throws on %j',
    (body) => {
      expect(() => validateRedeliverSince(body)).toThrow(/nothing was redelivered|JSON object/);
    },
  );
});

describe('parseRfc3339', () => {
  it.each([
    ['2024-01-02T03:04:05Z', Date.UTC(2024, 0, 2, 3, 4, 5)],
    ['2024-01-02t03:04:05z', Date.UTC(2024, 0, 2, 3, 4, 5)],
    ['2024-01-02T03:04:05.678Z', T0],
    ['2024-01-02T03:04:05.6Z', Date.UTC(2024, 0, 2, 3, 4, 5, 600)],
    ['2024-01-02T05:04:05+02:00', Date.UTC(2024, 0, 2, 3, 4, 5)],
    ['2024-01-01T23:34:05-03:30', Date.UTC(2024, 0, 2, 3, 4, 5)],
    ['2024-01-02T03:04:05-00:00', Date.UTC(2024, 0, 2, 3, 4, 5)],
    ['2024-02-29T00:00:00Z', Date.UTC(2024, 1, 29)],
    ['2000-02-29T00:00:00Z', Date.UTC(2000, 1, 29)],
    ['0001-01-01T00:00:00Z', Date.parse('0001-01-01T00:00:00Z')],
    // A fraction finer than a millisecond rounds up: "at or after" takes in no earlier millisecond.
    ['2024-01-02T03:04:05.678000001Z', T0 + 1],
    ['2024-01-02T03:04:05.678000Z', T0],
    // RFC 3339 sets no limit to the digits of a fraction.
    ['2024-01-02T03:04:05.6780000000000000000001Z', T0 + 1],
    ['2024-01-02T03:04:05.6780000000000000000000Z', T0],
  ])('%s', (text, ms) => {
    expect(parseRfc3339(text)).toBe(ms);
  });

  it.each([
    '',
    'now',
    '2024-01-02',
    '2024-01-02T03:04:05',
    '2024-01-02 03:04:05Z',
    '2024-01-02T03:04Z',
    '2024-1-02T03:04:05Z',
    '2023-02-29T00:00:00Z',
    '1900-02-29T00:00:00Z',
    '2024-04-31T00:00:00Z',
    '2024-13-01T00:00:00Z',
    '2024-00-01T00:00:00Z',
    '2024-01-00T00:00:00Z',
    '2024-01-02T24:00:00Z',
    '2024-01-02T03:60:00Z',
    '2024-01-02T03:04:60Z',
    '2024-01-02T03:04:05+24:00',
    '2024-01-02T03:04:05+0200',
    '2024-01-02T03:04:05.Z',
    ' 2024-01-02T03:04:05Z',
  ])('refuses %j', (text) => {
    expect(parseRfc3339(text)).toBeUndefined();
  });
});

describe('odd headers on the routes that read a body', () => {
  beforeEach(async () => {
    h = await startApi();
  });

  it('a charset other than UTF-8 is a 415, not read as UTF-8 (the metadata would change)', async () => {
    // "Ã©" in ISO-8859-1 is the two bytes C3 A9, which UTF-8 reads as "é".
    const latin1 = Buffer.from('{"ids": ["good-1"], "metadata": {"name": "Ã©"}}', 'latin1');
    for (const [type, body] of [
      ['application/json; charset=iso-8859-1', latin1],
      ['application/json;charset="windows-1252"', latin1],
      ['application/json; charset=utf-16le', Buffer.from('{"ids": ["good-1"]}', 'utf16le')],
    ] as const) {
      const r = await call('POST', '/v1/exports', { body, headers: { 'content-type': type } });
      expect(expectError(r, 415, 'unsupported_media_type').message).toMatch(/charset/);
    }
    expect(h.registry.calls).toEqual([]);
    for (const type of ['application/json; charset=utf-8', 'application/json; charset="UTF-8"']) {
      const r = await call('POST', '/v1/exports', {
        json: { ids: ['good-1'] },
        headers: { 'content-type': type },
      });
      expect(r.status).toBe(202);
    }
  });

  it('a media type that only begins with "json" is a 415', async () => {
    for (const type of ['application/json-seq', 'application/json.v2', 'application/json-x; charset=utf-8']) {
      const r = await call('POST', '/v1/exports', {
        json: { ids: ['good-1'] },
        headers: { 'content-type': type },
      });
      expectError(r, 415, 'unsupported_media_type');
    }
    expect(h.registry.calls).toEqual([]);
    const r = await call('POST', '/v1/exports', {
      json: { ids: ['good-1'] },
      headers: { 'content-type': 'application/vnd.watcher+json' },
    });
    expect(r.status).toBe(202);
  });

  it('a content coding other than identity is a 415 naming it; the encoded bytes are not acted on', async () => {
    const { gzipSync } = await import('node:zlib');
    let r = await call('POST', '/v1/exports', {
      body: gzipSync('{"ids": ["good-1"]}'),
      headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
    });
    expect(expectError(r, 415, 'unsupported_media_type').message).toMatch(/content-encoding "gzip"/);
    // Bytes that happen to read as JSON are not taken at face value either.
    r = await call('POST', '/v1/exports', {
      body: '{"ids": ["good-1"]}',
      headers: { 'content-type': 'application/json', 'content-encoding': 'br' },
    });
    expectError(r, 415, 'unsupported_media_type');
    h.registry.addEvent('a1', 'export.completed', T0, ['failed']);
    r = await call('POST', '/v1/events/redeliver', {
      body: JSON.stringify({ since: T0_ISO }),
      headers: { 'content-type': 'application/json', 'content-encoding': 'deflate' },
    });
    expectError(r, 415, 'unsupported_media_type');
    expect(h.registry.calls).toEqual([]);
    r = await call('POST', '/v1/exports', {
      json: { ids: ['good-1'] },
      headers: { 'content-encoding': 'identity' },
    });
    expect(r.status).toBe(202);
  });

  it('two Content-Type headers are a 400, whichever comes first', async () => {
    for (const types of [
      ['application/json', 'text/plain'],
      ['text/plain', 'application/json'],
    ]) {
      const res = await request(`${h.url}/v1/exports`, {
        method: 'POST',
        headers: ['content-type', types[0] as string, 'content-type', types[1] as string],
        body: '{"ids": ["good-1"]}',
        dispatcher: agent,
      });
      const text = await res.body.text();
      expect(res.statusCode).toBe(400);
      expect(JSON.parse(text).error.code).toBe('invalid_request');
    }
    expect(h.registry.calls).toEqual([]);
  });
});

describe('repeated Authorization headers', () => {
  const TOKEN = 'api-token-Kx93vQ';
  beforeEach(async () => {
    h = await startApi(TOKEN);
    h.registry.exports.set('keep-me', view('keep-me', null, T0));
  });

  it('are a 400 that echoes neither value, whichever holds the token; nothing is done', async () => {
    for (const pair of [
      [`Bearer ${TOKEN}`, 'Bearer someone-else'],
      ['Bearer someone-else', `Bearer ${TOKEN}`],
      [`Bearer ${TOKEN}`, `Bearer ${TOKEN}`],
    ]) {
      const res = await request(`${h.url}/v1/exports/keep-me`, {
        method: 'DELETE',
        headers: ['authorization', pair[0] as string, 'authorization', pair[1] as string],
        dispatcher: agent,
      });
      const text = await res.body.text();
      expect(res.statusCode).toBe(400);
      expect(JSON.parse(text).error.code).toBe('invalid_request');
      expect(text).not.toContain(TOKEN);
      expect(text).not.toContain('someone-else');
    }
    expect(h.registry.exports.has('keep-me')).toBe(true);
    expect(h.registry.calls).toEqual([]);
  });
});
