import { connect, Server as NetServer, type Socket } from 'node:net';
import { request } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  type ExportObject,
  type PlatformError,
  Simulator,
  type SimulatorOptions,
} from '../src/dev/simulator.js';
import { rawExchange } from './hostile/probe-control-api.js';

const T0 = 1_700_000_000_000;
/** The simulators' clock: tests move it instead of sleeping. */
let t = T0;
const running: Simulator[] = [];

async function startSim(options: SimulatorOptions = {}): Promise<Simulator> {
  const sim = new Simulator({ seed: 7, now: () => t, ...options });
  running.push(sim);
  await sim.start();
  return sim;
}

afterEach(async () => {
  await Promise.all(running.splice(0).map((sim) => sim.close()));
  t = T0;
});

interface Reply<T> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  /** Set when the body could not be read to its end (the connection was cut). */
  readError: unknown;
  json: T;
}

interface CallOptions {
  /** null sends no token at all. */
  token?: string | null;
  body?: unknown;
  raw?: string;
  headers?: Record<string, string>;
  headersTimeout?: number;
}

/** `path` is under /v2 unless it is a full URL or starts with /_simulator. */
async function call<T = Record<string, unknown>>(
  sim: Simulator,
  method: 'GET' | 'POST' | 'DELETE',
  path: string,
  opts: CallOptions = {},
): Promise<Reply<T>> {
  const origin = new URL(sim.baseUrl).origin;
  const url = path.startsWith('http')
    ? path
    : path.startsWith('/_simulator')
      ? origin + path
      : sim.baseUrl + path;
  const headers: Record<string, string> = { 'content-type': 'application/json', ...opts.headers };
  const token = opts.token === undefined ? 'tok' : opts.token;
  if (token !== null) headers['x-sbg-auth-token'] = token;
  const body = opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body));
  const res = await request(url, {
    method,
    headers,
    body,
    ...(opts.headersTimeout ? { headersTimeout: opts.headersTimeout } : {}),
  });
  let text = '';
  let readError: unknown;
  try {
    text = await res.body.text();
  } catch (err) {
    readError = err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, headers: res.headers, text, readError, json: json as T };
}

function header(reply: Reply<unknown>, name: string): string | undefined {
  const value = reply.headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}

interface BulkItem {
  resource?: ExportObject;
  error?: PlatformError & { id?: string };
}
interface ListPage {
  href: string;
  items: Array<Record<string, unknown>>;
  links: Array<{ href: string; rel: string; method: string }>;
}
interface RateLimitBody {
  rate: { limit: number; remaining: number; reset: number };
  instance_limit: { limit: number; remaining: number };
}

const START_BODY = {
  destination: { volume: 'rfranklin/output', location: 'output.vcf' },
  source: { file: '567890abc1e5339df0414123' },
  overwrite: false,
};

describe('onRequest', () => {
  it('tells each /v2 request as it arrives: route, token as sent, time; not the admin routes', async () => {
    const seen: Array<{ route: string; token: string | undefined; at: number }> = [];
    const sim = await startSim({
      token: 'tok',
      onRequest: (r) => {
        seen.push(r);
        throw new Error('an observer cannot break the answer');
      },
    });
    const [id] = sim.createExports(1);
    expect((await call(sim, 'GET', `/storage/exports/${id}`, { token: 'tok' })).status).toBe(200);
    t += 5;
    expect((await call(sim, 'GET', '/rate_limit', { token: 'other' })).status).toBe(401);
    expect(
      (
        await call(sim, 'POST', '/bulk/storage/exports/get', {
          headers: { authorization: 'Bearer tok' },
          token: null,
          body: { export_ids: [id] },
        })
      ).status,
    ).toBe(200);
    await call(sim, 'GET', '/_simulator/stats');
    expect(seen).toEqual([
      { route: 'get', token: 'tok', at: T0 },
      { route: 'rate_limit', token: 'other', at: T0 + 5 },
      { route: 'bulk_get', token: 'tok', at: T0 + 5 },
    ]);
  });
});

describe('single get', () => {
  it('answers one export with the platform headers', async () => {
    const sim = await startSim();
    const id = sim.createExport({ pendingMs: 1000, runningMs: 1000, volume: 'me/vol', location: 'a/b.vcf' });
    const r = await call<ExportObject>(sim, 'GET', `/storage/exports/${id}`);
    expect(r.status).toBe(200);
    expect(header(r, 'content-type')).toMatch(/^application\/json/);
    expect(header(r, 'x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    expect(header(r, 'x-ratelimit-limit')).toBe('1000');
    expect(header(r, 'x-ratelimit-remaining')).toBe('999');
    expect(header(r, 'x-ratelimit-reset')).toBe(String((T0 + 300_000) / 1000));
    expect(r.json).toMatchObject({
      href: `${sim.baseUrl}/storage/exports/${id}`,
      id,
      state: 'PENDING',
      destination: { volume: 'me/vol', location: 'a/b.vcf' },
      overwrite: false,
      started_on: null,
      finished_on: null,
      result: null,
      error: null,
    });
    expect(r.json.source.file).toMatch(/^[0-9a-f]{24}$/);
    expect(id).toMatch(/^[A-Za-z0-9]{32}$/);
    expect(sim.stats().requests).toEqual({ get: 1 });
    expect(sim.stats().idsChecked).toBe(1);
  });

  it('answers 404 with code 9008 for an unknown id', async () => {
    const sim = await startSim();
    const r = await call<PlatformError>(sim, 'GET', '/storage/exports/nope');
    expect(r.status).toBe(404);
    expect(r.json).toEqual({
      status: 404,
      code: 9008,
      message: 'Requested job does not exist.',
      more_info: expect.stringMatching(/^https:\/\//),
    });
    expect(sim.stats().statuses).toEqual({ '404': 1 });
  });
});

describe('bulk get', () => {
  it('answers every id, unknown ones as error items without the id, in shuffled order', async () => {
    const sim = await startSim();
    const ids = sim.createExports(20);
    const asked = [...ids.slice(0, 10), 'missing-1', ...ids.slice(10), 'missing-2'];
    const r = await call<{ items: BulkItem[] }>(sim, 'POST', '/bulk/storage/exports/get', {
      body: { export_ids: asked },
    });
    expect(r.status).toBe(200);
    expect(r.json.items).toHaveLength(22);
    const resources = r.json.items.flatMap((item) => (item.resource ? [item.resource] : []));
    const errors = r.json.items.flatMap((item) => (item.error ? [item.error] : []));
    expect(new Set(resources.map((res) => res.id))).toEqual(new Set(ids));
    expect(errors).toHaveLength(2);
    for (const error of errors) {
      expect(error).toEqual({
        status: 404,
        code: 9008,
        message: 'Requested job does not exist.',
        more_info: expect.any(String),
      });
    }
    const answeredOrder = r.json.items.map((item) => item.resource?.id ?? 'error');
    const askedOrder = asked.map((id) => (id.startsWith('missing') ? 'error' : id));
    expect(answeredOrder).not.toEqual(askedOrder);
    const stats = sim.stats();
    expect(stats.bulkIdsPerCall).toEqual([22]);
    expect(stats.maxIdsPerBulkCall).toBe(22);
    expect(stats.idsChecked).toBe(22);
  });

  it('keeps request order when shuffle is off', async () => {
    const sim = await startSim({ shuffle: false });
    const ids = sim.createExports(5);
    const r = await call<{ items: BulkItem[] }>(sim, 'POST', '/bulk/storage/exports/get', {
      body: { export_ids: [ids[0], 'x', ...ids.slice(1)] },
    });
    expect(r.json.items.map((item) => item.resource?.id ?? 'error')).toEqual([
      ids[0],
      'error',
      ...ids.slice(1),
    ]);
  });

  it('refuses more than 100 ids with 400 and records the call size', async () => {
    const sim = await startSim();
    const ids = sim.createExports(101);
    const r = await call<PlatformError>(sim, 'POST', '/bulk/storage/exports/get', {
      body: { export_ids: ids },
    });
    expect(r.status).toBe(400);
    expect(r.json.status).toBe(400);
    expect(r.json.code).toBe(90000);
    expect(r.json.message).toContain('100');
    expect(sim.stats().maxIdsPerBulkCall).toBe(101);
    expect(sim.stats().idsChecked).toBe(0);
    const hundred = await call<{ items: BulkItem[] }>(sim, 'POST', '/bulk/storage/exports/get', {
      body: { export_ids: ids.slice(0, 100) },
    });
    expect(hundred.status).toBe(200);
    expect(hundred.json.items).toHaveLength(100);
  });

  it('answers 400 to a missing, malformed or wrongly shaped body', async () => {
    const sim = await startSim();
    const missing = await call<PlatformError>(sim, 'POST', '/bulk/storage/exports/get');
    const malformed = await call<PlatformError>(sim, 'POST', '/bulk/storage/exports/get', {
      raw: '{"export_ids": [',
    });
    const notArray = await call<PlatformError>(sim, 'POST', '/bulk/storage/exports/get', {
      body: { export_ids: 'abc' },
    });
    const notStrings = await call<PlatformError>(sim, 'POST', '/bulk/storage/exports/get', {
      body: { export_ids: [1, 2] },
    });
    for (const r of [missing, malformed, notArray, notStrings]) {
      expect(r.status).toBe(400);
      expect(r.json).toMatchObject({ status: 400, code: 90000 });
    }
  });
});

describe('export lifecycle', () => {
  it('moves PENDING → RUNNING → COMPLETED with result, or FAILED with error, as the clock moves', async () => {
    const sim = await startSim();
    const ok = sim.createExport({
      pendingMs: 1000,
      runningMs: 2000,
      outcome: 'COMPLETED',
      location: 'dir/ok.vcf',
    });
    const bad = sim.createExport({ pendingMs: 1000, runningMs: 2000, outcome: 'FAILED' });
    const get = (id: string) => call<ExportObject>(sim, 'GET', `/storage/exports/${id}`);

    expect((await get(ok)).json.state).toBe('PENDING');
    expect(sim.stateOf(ok)).toBe('PENDING');

    t = T0 + 1000;
    const running = (await get(ok)).json;
    expect(running.state).toBe('RUNNING');
    expect(running.started_on).toBe('2023-11-14T22:13:21Z');
    expect(running.finished_on).toBeNull();
    expect(running.result).toBeNull();

    t = T0 + 2999;
    expect(sim.stateOf(ok)).toBe('RUNNING');
    t = T0 + 3000;
    const done = (await get(ok)).json;
    expect(done.state).toBe('COMPLETED');
    expect(done.finished_on).toBe('2023-11-14T22:13:23Z');
    expect(done.error).toBeNull();
    expect(done.result).toMatchObject({
      id: done.source.file,
      name: 'ok.vcf',
      size: expect.any(Number),
      project: expect.any(String),
      storage: { type: 'VOLUME', volume: done.destination.volume, location: 'dir/ok.vcf' },
    });

    const failed = (await get(bad)).json;
    expect(failed.state).toBe('FAILED');
    expect(failed.result).toBeNull();
    expect(failed.error).toMatchObject({
      status: 409,
      code: 9107,
      message: 'Location on volume already contains a file.',
    });
    expect(sim.stateOf(bad)).toBe('FAILED');
    expect(sim.stateOf('nope')).toBeUndefined();
  });

  it('fails about failRate of seeded exports, and the same seed gives the same exports', async () => {
    const a = new Simulator({ seed: 11, now: () => t, exports: 400 });
    const b = new Simulator({ seed: 11, now: () => t, exports: 400 });
    const c = new Simulator({ seed: 11, now: () => t, exports: 400, failRate: 0 });
    t = T0 + 60_000;
    const ids = a.createExports(0);
    expect(ids).toEqual([]);
    const statesA = await collectStates(a);
    expect(await collectStates(b)).toEqual(statesA);
    const failed = Object.values(statesA).filter((s) => s === 'FAILED').length;
    expect(failed).toBeGreaterThan(40);
    expect(failed).toBeLessThan(120);
    expect(Object.values(await collectStates(c)).every((s) => s === 'COMPLETED')).toBe(true);
  });
});

async function collectStates(sim: Simulator): Promise<Record<string, string>> {
  running.push(sim);
  await sim.start();
  const states: Record<string, string> = {};
  let next: string | undefined = `${sim.baseUrl}/storage/exports?limit=100`;
  while (next) {
    const page: Reply<ListPage> = await call<ListPage>(sim, 'GET', next);
    for (const item of page.json.items) states[item.id as string] = item.state as string;
    next = page.json.links.find((link) => link.rel === 'next')?.href;
  }
  return states;
}

describe('list', () => {
  async function seeded(): Promise<{ sim: Simulator; done: string[]; waiting: string[] }> {
    const sim = await startSim();
    const done = sim.createExports(120, { volume: 'u/a', pendingMs: 0, runningMs: 0, outcome: 'COMPLETED' });
    const waiting = sim.createExports(30, { volume: 'u/b', pendingMs: 10_000, runningMs: 10_000 });
    return { sim, done, waiting };
  }

  it('lists 50 by default with only href, id and state, and the total in a header', async () => {
    const { sim, done } = await seeded();
    const r = await call<ListPage>(sim, 'GET', '/storage/exports');
    expect(r.status).toBe(200);
    expect(header(r, 'x-total-matching-query')).toBe('150');
    expect(r.json.href).toBe(`${sim.baseUrl}/storage/exports?offset=0&limit=50`);
    expect(r.json.items).toHaveLength(50);
    expect(r.json.items[0]).toEqual({
      href: `${sim.baseUrl}/storage/exports/${done[0]}`,
      id: done[0],
      state: 'COMPLETED',
    });
    expect(r.json.links).toEqual([
      { href: `${sim.baseUrl}/storage/exports?offset=50&limit=50`, rel: 'next', method: 'GET' },
    ]);
    expect(sim.stats().idsChecked).toBe(0);
  });

  it('pages through links until there is no next, keeping the filters', async () => {
    const { sim, done, waiting } = await seeded();
    const seen: string[] = [];
    let pages = 0;
    let last: ListPage | undefined;
    let next: string | undefined = `${sim.baseUrl}/storage/exports?limit=40&fields=_all`;
    while (next) {
      const page: Reply<ListPage> = await call<ListPage>(sim, 'GET', next);
      expect(page.status).toBe(200);
      pages += 1;
      for (const item of page.json.items) {
        expect(item).toHaveProperty('destination');
        expect(item).toHaveProperty('source');
        seen.push(item.id as string);
      }
      last = page.json;
      next = page.json.links.find((link) => link.rel === 'next')?.href;
      if (next) expect(next).toContain('fields=_all');
    }
    expect(pages).toBe(4);
    expect(seen).toEqual([...done, ...waiting]);
    expect(last?.links).toEqual([
      { href: `${sim.baseUrl}/storage/exports?limit=40&fields=_all&offset=80`, rel: 'prev', method: 'GET' },
    ]);
  });

  it('filters by volume and by one or more states', async () => {
    const { sim, waiting } = await seeded();
    const byVolume = await call<ListPage>(sim, 'GET', '/storage/exports?volume=u%2Fb&limit=100');
    expect(header(byVolume, 'x-total-matching-query')).toBe('30');
    expect(byVolume.json.items.map((item) => item.id)).toEqual(waiting);

    const completed = await call<ListPage>(sim, 'GET', '/storage/exports?state=COMPLETED');
    expect(header(completed, 'x-total-matching-query')).toBe('120');
    const both = await call<ListPage>(sim, 'GET', '/storage/exports?state=COMPLETED&state=PENDING');
    expect(header(both, 'x-total-matching-query')).toBe('150');
    const comma = await call<ListPage>(sim, 'GET', '/storage/exports?state=PENDING,RUNNING&volume=u/a');
    expect(header(comma, 'x-total-matching-query')).toBe('0');
    expect(comma.json.items).toEqual([]);
    expect(comma.json.links).toEqual([]);

    t = T0 + 10_000;
    const runningNow = await call<ListPage>(sim, 'GET', '/storage/exports?state=RUNNING');
    expect(header(runningNow, 'x-total-matching-query')).toBe('30');

    const picked = await call<ListPage>(sim, 'GET', '/storage/exports?fields=id,destination&limit=1');
    expect(Object.keys(picked.json.items[0] ?? {})).toEqual(['id', 'destination']);
  });

  it('answers 400 to a limit out of range, a bad offset or an unknown state', async () => {
    const sim = await startSim();
    for (const query of ['limit=0', 'limit=101', 'limit=abc', 'offset=-1', 'state=DONE', 'state=A,B,C,D,E']) {
      const r = await call<PlatformError>(sim, 'GET', `/storage/exports?${query}`);
      expect(r.status, query).toBe(400);
      expect(r.json.code).toBe(90000);
    }
    expect((await call(sim, 'GET', '/storage/exports?limit=100')).status).toBe(200);
    expect((await call(sim, 'GET', '/storage/exports?limit=1')).status).toBe(200);
  });
});

describe('starting exports', () => {
  it('starts one export and answers 201 with the export object', async () => {
    const sim = await startSim();
    const r = await call<ExportObject>(sim, 'POST', '/storage/exports', { body: START_BODY });
    expect(r.status).toBe(201);
    expect(r.json.id).toMatch(/^[A-Za-z0-9]{32}$/);
    expect(r.json).toMatchObject({
      href: `${sim.baseUrl}/storage/exports/${r.json.id}`,
      state: 'PENDING',
      source: { file: '567890abc1e5339df0414123' },
      destination: { volume: 'rfranklin/output', location: 'output.vcf' },
      overwrite: false,
      properties: { sse_algorithm: 'AES256', aws_storage_class: 'STANDARD', aws_canned_acl: null },
    });
    expect(sim.stateOf(r.json.id)).toBe('PENDING');
    expect(sim.stats().requests).toEqual({ create: 1 });
  });

  it('answers 400 with an error body to an invalid start body or copy_only', async () => {
    const sim = await startSim();
    const cases: Array<[unknown, number]> = [
      [{ destination: START_BODY.destination }, 90000],
      [{ ...START_BODY, source: { file: '' } }, 90000],
      [{ ...START_BODY, destination: { volume: 'no-owner', location: 'x' } }, 90000],
      [{ ...START_BODY, destination: { volume: 'a/b' } }, 90000],
      [{ ...START_BODY, overwrite: 'yes' }, 90000],
      [{ ...START_BODY, properties: { sse_algorithm: 'ROT13' } }, 9023],
      [{ ...START_BODY, properties: { aws_storage_class: 'CHEAP' } }, 9024],
      [{ ...START_BODY, properties: { aws_canned_acl: 'everyone' } }, 9022],
      [[1, 2], 90000],
    ];
    for (const [body, code] of cases) {
      const r = await call<PlatformError>(sim, 'POST', '/storage/exports', { body });
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.json).toMatchObject({ status: 400, code });
    }
    const badQuery = await call<PlatformError>(sim, 'POST', '/storage/exports?copy_only=maybe', {
      body: START_BODY,
    });
    expect(badQuery.status).toBe(400);
    expect(sim.stats().exports).toBe(0);
  });

  it('refuses what would make its later answers fail or huge: nested properties, names over 1 KiB', async () => {
    const sim = await startSim();
    // Too deep for JSON.stringify to serialise again: sent as text.
    const nested = `${'['.repeat(10_000)}"x"${']'.repeat(10_000)}`;
    const withNested = JSON.stringify({ ...START_BODY, properties: { x: 'NESTED' } }).replace(
      '"NESTED"',
      nested,
    );
    const deep = await call<PlatformError>(sim, 'POST', '/storage/exports', { raw: withNested });
    expect(deep.status).toBe(400);
    const cases: unknown[] = [
      { ...START_BODY, properties: { x: { y: 1 } } },
      { ...START_BODY, properties: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, i])) },
      { ...START_BODY, properties: { x: 'p'.repeat(1025) } },
      { ...START_BODY, properties: { ['k'.repeat(129)]: 1 } },
      { ...START_BODY, source: { file: 'f'.repeat(1025) } },
      { ...START_BODY, destination: { volume: 'a/b', location: 'l'.repeat(1025) } },
      { ...START_BODY, destination: { volume: 'a/b', location: 'é'.repeat(513) } },
    ];
    for (const body of cases) {
      const r = await call<PlatformError>(sim, 'POST', '/storage/exports', { body });
      expect(r.status, JSON.stringify(body).slice(0, 80)).toBe(400);
      expect(r.json).toMatchObject({ status: 400, code: 90000 });
    }
    const bulk = await call<{ items: Array<{ error?: PlatformError }> }>(
      sim,
      'POST',
      '/bulk/storage/exports/create',
      {
        raw: `{"items":[${withNested}]}`,
      },
    );
    expect(bulk.json.items[0]?.error).toMatchObject({ status: 400, code: 90000 });
    expect(sim.stats().exports).toBe(0);
    // At the bounds: kept and served.
    const ok = await call<{ id: string }>(sim, 'POST', '/storage/exports', {
      body: {
        ...START_BODY,
        destination: { volume: 'a/b', location: 'l'.repeat(1024) },
        properties: { custom: 'p'.repeat(1024), n: 1, b: true, z: null },
      },
    });
    expect(ok.status).toBe(201);
    expect((await call(sim, 'GET', `/storage/exports/${ok.json.id}`)).status).toBe(200);
  });

  it('refuses to export a moved file again, but not a copied one', async () => {
    const sim = await startSim({ failRate: 0 });
    const first = await call(sim, 'POST', '/storage/exports', { body: START_BODY });
    expect(first.status).toBe(201);
    const again = await call<PlatformError>(sim, 'POST', '/storage/exports', {
      body: { ...START_BODY, destination: { volume: 'rfranklin/output', location: 'other.vcf' } },
    });
    expect(again.status).toBe(403);
    expect(again.json.code).toBe(9006);

    const copied = { source: { file: 'f2' }, destination: { volume: 'a/b', location: 'c1' } };
    expect((await call(sim, 'POST', '/storage/exports?copy_only=true', { body: copied })).status).toBe(201);
    const copiedAgain = { ...copied, destination: { volume: 'a/b', location: 'c2' } };
    expect((await call(sim, 'POST', '/storage/exports?copy_only=true', { body: copiedAgain })).status).toBe(
      201,
    );
  });

  it('fails an export to an occupied location with 9107 unless overwrite is set', async () => {
    const sim = await startSim({ failRate: 0 });
    const place = { volume: 'a/b', location: 'same.vcf' };
    const first = await call<ExportObject>(sim, 'POST', '/storage/exports', {
      body: { source: { file: 'f1' }, destination: place },
    });
    const clash = await call<ExportObject>(sim, 'POST', '/storage/exports', {
      body: { source: { file: 'f2' }, destination: place },
    });
    const overwrite = await call<ExportObject>(sim, 'POST', '/storage/exports', {
      body: { source: { file: 'f3' }, destination: place, overwrite: true },
    });
    expect(clash.status).toBe(201);
    t = T0 + 60_000;
    expect(sim.stateOf(first.json.id)).toBe('COMPLETED');
    expect(sim.stateOf(clash.json.id)).toBe('FAILED');
    expect(sim.stateOf(overwrite.json.id)).toBe('COMPLETED');
    const got = await call<ExportObject>(sim, 'GET', `/storage/exports/${clash.json.id}`);
    expect(got.json.error?.code).toBe(9107);
  });

  it('bulk-starts up to 100 items with a resource or an error per item, in request order', async () => {
    const sim = await startSim();
    const items = [
      { source: { file: 'b1' }, destination: { volume: 'a/b', location: 'one' } },
      {
        source: { file: 'b2' },
        destination: { volume: 'a/b', location: 'two' },
        properties: { aws_canned_acl: 'private' },
      },
      { source: {}, destination: { volume: 'a/b', location: 'three' } },
    ];
    const r = await call<{ items: BulkItem[] }>(sim, 'POST', '/bulk/storage/exports/create?copy_only=false', {
      body: { items },
    });
    expect(r.status).toBe(200);
    expect(r.json.items).toHaveLength(3);
    expect(r.json.items[0]?.resource?.destination.location).toBe('one');
    expect(r.json.items[1]?.resource?.properties.aws_canned_acl).toBe('private');
    expect(r.json.items[2]?.error).toMatchObject({ status: 400, code: 90000 });
    for (const item of r.json.items.slice(0, 2)) expect(sim.stateOf(item.resource?.id ?? '')).toBe('PENDING');

    const tooMany = Array.from({ length: 101 }, (_, i) => ({
      source: { file: `m${i}` },
      destination: { volume: 'a/b', location: `m${i}` },
    }));
    const refused = await call<PlatformError>(sim, 'POST', '/bulk/storage/exports/create', {
      body: { items: tooMany },
    });
    expect(refused.status).toBe(400);
    expect(refused.json.code).toBe(90000);
    const noItems = await call<PlatformError>(sim, 'POST', '/bulk/storage/exports/create', { body: {} });
    expect(noItems.status).toBe(400);
    expect(sim.stats().exports).toBe(2);
  });
});

describe('auth', () => {
  it('checks the token when one is set, and a 401 spends no quota', async () => {
    const sim = await startSim({ token: 'secret' });
    const none = await call<PlatformError>(sim, 'GET', '/storage/exports', { token: null });
    expect(none.status).toBe(401);
    expect(none.json).toMatchObject({ status: 401, code: 90001 });
    expect(header(none, 'x-ratelimit-remaining')).toBe('1000');
    const wrong = await call(sim, 'GET', '/storage/exports', { token: 'guess' });
    expect(wrong.status).toBe(401);
    const right = await call(sim, 'GET', '/storage/exports', { token: 'secret' });
    expect(right.status).toBe(200);
    const bearer = await call(sim, 'GET', '/storage/exports', {
      token: null,
      headers: { authorization: 'Bearer secret' },
    });
    expect(bearer.status).toBe(200);
    const rate = await call<RateLimitBody>(sim, 'GET', '/rate_limit', { token: 'secret' });
    expect(rate.json.rate.remaining).toBe(998);
    expect(sim.stats().quotaSpent).toBe(2);
    expect(sim.stats().statuses).toEqual({ '200': 3, '401': 2 });
  });

  it('accepts any non-empty token without the option', async () => {
    const sim = await startSim();
    expect((await call(sim, 'GET', '/storage/exports', { token: 'anything' })).status).toBe(200);
    expect((await call(sim, 'GET', '/storage/exports', { token: '' })).status).toBe(401);
    expect((await call(sim, 'GET', '/storage/exports', { token: null })).status).toBe(401);
    expect((await call(sim, 'GET', '/rate_limit', { token: null })).status).toBe(401);
  });
});

describe('quota', () => {
  it('counts down a fixed window, answers 429 code 1000 when spent, and opens a new window after reset', async () => {
    const sim = await startSim({ quota: { limit: 3, windowMs: 60_000 } });
    const before = await call<RateLimitBody>(sim, 'GET', '/rate_limit');
    expect(before.json.rate).toEqual({ limit: 3, remaining: 3, reset: (T0 + 60_000) / 1000 });
    expect(before.json.instance_limit).toEqual({ limit: expect.any(Number), remaining: expect.any(Number) });

    const first = await call(sim, 'GET', '/storage/exports');
    expect(header(first, 'x-ratelimit-limit')).toBe('3');
    expect(header(first, 'x-ratelimit-remaining')).toBe('2');
    expect(header(first, 'x-ratelimit-reset')).toBe(String((T0 + 60_000) / 1000));

    t = T0 + 10_000;
    await call(sim, 'GET', '/storage/exports');
    const third = await call(sim, 'GET', '/storage/exports');
    expect(header(third, 'x-ratelimit-remaining')).toBe('0');
    // The window opened at the first request, not at the later ones.
    expect(header(third, 'x-ratelimit-reset')).toBe(String((T0 + 60_000) / 1000));

    const limited = await call<PlatformError>(sim, 'GET', '/storage/exports');
    expect(limited.status).toBe(429);
    expect(limited.json).toEqual({
      status: 429,
      code: 1000,
      message: 'Rate limit exceeded! Check response headers.',
      more_info: expect.any(String),
    });
    expect(header(limited, 'x-ratelimit-remaining')).toBe('0');
    expect(header(limited, 'x-ratelimit-reset')).toBe(String((T0 + 60_000) / 1000));

    const rate = await call<RateLimitBody>(sim, 'GET', '/rate_limit');
    expect(rate.status).toBe(200);
    expect(rate.json.rate).toEqual({ limit: 3, remaining: 0, reset: (T0 + 60_000) / 1000 });
    expect(header(rate, 'x-ratelimit-remaining')).toBe('0');
    expect((await call<RateLimitBody>(sim, 'GET', '/rate_limit')).json.rate.remaining).toBe(0);

    t = T0 + 60_000;
    const fresh = await call(sim, 'GET', '/storage/exports');
    expect(fresh.status).toBe(200);
    expect(header(fresh, 'x-ratelimit-remaining')).toBe('2');
    expect(header(fresh, 'x-ratelimit-reset')).toBe(String((T0 + 120_000) / 1000));

    const stats = sim.stats();
    expect(stats.rateLimited).toBe(1);
    expect(stats.quotaSpent).toBe(4);
    expect(stats.requests).toEqual({ rate_limit: 3, list: 5 });
    expect(stats.statuses).toEqual({ '200': 7, '429': 1 });
  });

  it('rounds the reset up to whole epoch seconds', async () => {
    t = T0 + 250;
    const sim = await startSim({ quota: { limit: 5, windowMs: 1000 } });
    const r = await call(sim, 'GET', '/storage/exports');
    expect(header(r, 'x-ratelimit-reset')).toBe(String((T0 + 2000) / 1000));
  });

  it('lets consume(n) spend quota as another client of the same user', async () => {
    const sim = await startSim({ quota: { limit: 10, windowMs: 60_000 } });
    sim.consume(9);
    const rate = await call<RateLimitBody>(sim, 'GET', '/rate_limit');
    expect(rate.json.rate.remaining).toBe(1);
    expect((await call(sim, 'GET', '/storage/exports')).status).toBe(200);
    expect((await call(sim, 'GET', '/storage/exports')).status).toBe(429);
    sim.consume(50);
    expect((await call<RateLimitBody>(sim, 'GET', '/rate_limit')).json.rate.remaining).toBe(0);
    expect(sim.stats().quotaSpent).toBe(1);
  });
});

describe('faults', () => {
  it('answers maintenance 503 {"code": 0} without spending quota, and keeps /rate_limit reliable', async () => {
    const sim = await startSim({ faults: { maintenanceRate: 1 } });
    const r = await call(sim, 'GET', '/storage/exports');
    expect(r.status).toBe(503);
    expect(r.text).toBe('{"code":0}');
    expect(header(r, 'x-ratelimit-remaining')).toBe('1000');
    const unauthenticated = await call(sim, 'POST', '/bulk/storage/exports/get', { token: null });
    expect(unauthenticated.status).toBe(503);
    const rate = await call<RateLimitBody>(sim, 'GET', '/rate_limit');
    expect(rate.status).toBe(200);
    expect(rate.json.rate.remaining).toBe(1000);
    expect(sim.stats().faults.maintenance).toBe(2);
    expect(sim.stats().quotaSpent).toBe(0);
  });

  it('answers maintenance to every request before maintenanceUntil', async () => {
    const sim = await startSim({ faults: { maintenanceUntil: T0 + 5000 } });
    expect((await call(sim, 'GET', '/storage/exports')).status).toBe(503);
    t = T0 + 4999;
    expect((await call(sim, 'GET', '/storage/exports')).status).toBe(503);
    t = T0 + 5000;
    expect((await call(sim, 'GET', '/storage/exports')).status).toBe(200);
  });

  it('answers 500 with a platform error body, spending quota', async () => {
    const sim = await startSim();
    sim.setFaults({ errorRate: 1 });
    const r = await call<PlatformError>(sim, 'GET', '/storage/exports');
    expect(r.status).toBe(500);
    expect(r.json).toMatchObject({ status: 500, code: expect.any(Number), message: expect.any(String) });
    expect(header(r, 'x-ratelimit-remaining')).toBe('999');
    expect(sim.stats().faults.error).toBe(1);
    sim.setFaults({});
    expect((await call(sim, 'GET', '/storage/exports')).status).toBe(200);
  });

  it('answers 500 to every get and bulk get naming one of errorIds, and only to those', async () => {
    const sim = await startSim();
    const [bad, good] = sim.createExports(2) as [string, string];
    sim.setFaults({ errorIds: [bad] });
    const bulk = (ids: string[]) =>
      call<PlatformError>(sim, 'POST', '/bulk/storage/exports/get', { body: { export_ids: ids } });
    const failed = await bulk([good, bad]);
    expect(failed.status).toBe(500);
    expect(failed.json).toMatchObject({ status: 500, code: 90004 });
    // The call reached the application: quota spent, as for a drawn 500.
    expect(header(failed, 'x-ratelimit-remaining')).toBe('999');
    expect((await call(sim, 'GET', `/storage/exports/${bad}`)).status).toBe(500);
    // Calls that do not name it are answered; the id itself is fine once the fault is off.
    const answered = await bulk([good]);
    expect(answered.status).toBe(200);
    expect((await call(sim, 'GET', `/storage/exports/${good}`)).status).toBe(200);
    expect(sim.stats().faults.errorId).toBe(2);
    expect(sim.stats().faults.error).toBe(0);
    expect((await call(sim, 'GET', '/_simulator/faults', { token: null })).json).toEqual({ errorIds: [bad] });
    sim.setFaults({});
    expect((await bulk([good, bad])).status).toBe(200);
    expect(sim.stats().faults.errorId).toBe(2);
  });

  it('refuses errorIds that are not a list of at most 1,000 short ids', () => {
    const sim = new Simulator();
    for (const errorIds of [
      ['a', ''],
      ['x'.repeat(129)],
      Array.from({ length: 1001 }, (_, i) => `id${i}`),
      'a',
    ]) {
      expect(() => sim.setFaults({ errorIds } as never)).toThrow(/faults\.errorIds/);
    }
    expect(() => sim.setFaults({ errorIds: ['x'.repeat(128)] })).not.toThrow();
  });

  it('cuts a 200 body mid-JSON and ends the connection (truncated)', async () => {
    const sim = await startSim({ faults: { truncateRate: 1 } });
    const id = sim.createExport({ pendingMs: 0, runningMs: 0 });
    const r = await call(sim, 'GET', `/storage/exports/${id}`);
    expect(r.status).toBe(200);
    expect(r.readError).toBeDefined();
    expect(() => JSON.parse(r.text)).toThrow();
    expect(sim.stats().faults.truncated).toBe(1);
    // A truncated answer delivered no state, so a later look is not a check after terminal.
    sim.setFaults({});
    await call(sim, 'GET', `/storage/exports/${id}`);
    expect(sim.stats().checksAfterTerminal).toBe(0);
    // A non-2xx answer is not truncated.
    sim.setFaults({ truncateRate: 1 });
    const missing = await call<PlatformError>(sim, 'GET', '/storage/exports/none');
    expect(missing.json.code).toBe(9008);
    expect(sim.stats().faults.truncated).toBe(1);
  });

  it('sends a complete answer whose JSON is cut (malformed)', async () => {
    const sim = await startSim({ faults: { malformedRate: 1 } });
    const r = await call(sim, 'POST', '/bulk/storage/exports/get', {
      body: { export_ids: sim.createExports(3) },
    });
    expect(r.status).toBe(200);
    expect(r.readError).toBeUndefined();
    expect(r.text.startsWith('{"items":[')).toBe(true);
    expect(() => JSON.parse(r.text)).toThrow(SyntaxError);
    expect(sim.stats().faults.malformed).toBe(1);
  });

  it('answers a slow request normally once slowMs has passed', async () => {
    // That the answer is really held is shown by the next test, without timing real time.
    const sim = await startSim({ faults: { slowRate: 1, slowMs: 50 } });
    const r = await call(sim, 'GET', '/storage/exports');
    expect(r.status).toBe(200);
    expect(sim.stats().faults.slow).toBe(1);
    // /rate_limit is never slowed.
    sim.setFaults({ slowRate: 1, slowMs: 60_000 });
    expect((await call(sim, 'GET', '/rate_limit', { headersTimeout: 5000 })).status).toBe(200);
  });

  it('makes a client with a shorter timeout give up on a slow answer, and close() does not wait for it', async () => {
    // Held far longer than the test may run: a close() that waited for it would time the test out.
    const sim = await startSim({ faults: { slowRate: 1, slowMs: 600_000 } });
    await expect(call(sim, 'GET', '/storage/exports', { headersTimeout: 200 })).rejects.toThrow();
    expect(sim.stats().faults.slow).toBe(1);
    const pending = call(sim, 'GET', '/storage/exports').catch((err: unknown) => err);
    await new Promise((resolve) => setImmediate(resolve));
    await sim.close();
    expect(await pending).toBeInstanceOf(Error);
  });

  it('draws faults from the seed: a fraction, reproducibly', async () => {
    const statusesFor = async () => {
      const sim = await startSim({ seed: 99, faults: { errorRate: 0.5 } });
      const statuses: number[] = [];
      for (let i = 0; i < 40; i++) statuses.push((await call(sim, 'GET', '/storage/exports')).status);
      return statuses;
    };
    const first = await statusesFor();
    expect(await statusesFor()).toEqual(first);
    const errors = first.filter((s) => s === 500).length;
    expect(errors).toBeGreaterThan(5);
    expect(errors).toBeLessThan(35);
  });
});

describe('checksAfterTerminal', () => {
  it('counts ids looked up after their terminal state was served, by either get route', async () => {
    const sim = await startSim();
    const done = sim.createExport({ pendingMs: 0, runningMs: 0, outcome: 'COMPLETED' });
    const later = sim.createExport({ pendingMs: 1000, runningMs: 1000, outcome: 'FAILED' });
    const bulk = (ids: string[]) =>
      call(sim, 'POST', '/bulk/storage/exports/get', { body: { export_ids: ids } });

    await call(sim, 'GET', `/storage/exports/${done}`);
    await bulk([later]);
    await call(sim, 'GET', `/storage/exports/${later}`);
    expect(sim.stats().checksAfterTerminal).toBe(0);

    await bulk([done, later]);
    expect(sim.stats().checksAfterTerminal).toBe(1);

    t = T0 + 2000;
    await bulk([later]);
    expect(sim.stats().checksAfterTerminal).toBe(1);
    await call(sim, 'GET', `/storage/exports/${later}`);
    expect(sim.stats().checksAfterTerminal).toBe(2);
    // Listing is not a check.
    await call(sim, 'GET', '/storage/exports?fields=_all');
    expect(sim.stats().checksAfterTerminal).toBe(2);
    expect(sim.stats().idsChecked).toBe(7);
  });
});

describe('routes and robustness', () => {
  it('answers 404 to unknown routes (the singular bulk path included) and 405 to wrong methods', async () => {
    const sim = await startSim();
    const id = sim.createExport();
    const unknown = await call<PlatformError>(sim, 'GET', '/storage/transfers');
    expect(unknown.status).toBe(404);
    expect(unknown.json).toMatchObject({ status: 404, code: 90003 });
    expect((await call(sim, 'POST', '/bulk/storage/export/get', { body: { export_ids: [id] } })).status).toBe(
      404,
    );
    const del = await call<PlatformError>(sim, 'DELETE', `/storage/exports/${id}`);
    expect(del.status).toBe(405);
    expect(header(del, 'allow')).toBe('GET');
    expect(del.json.status).toBe(405);
    expect((await call(sim, 'GET', '/bulk/storage/exports/get')).status).toBe(405);
    expect(sim.stats().requests).toEqual({ other: 4 });
  });

  it('answers 405 on the bulk routes when bulk is off, while single gets work', async () => {
    const sim = await startSim({ bulk: false });
    const id = sim.createExport();
    const r = await call<PlatformError>(sim, 'POST', '/bulk/storage/exports/get', {
      body: { export_ids: [id] },
    });
    expect(r.status).toBe(405);
    expect(r.json.status).toBe(405);
    expect(sim.stats().bulkIdsPerCall).toEqual([]);
    expect((await call(sim, 'GET', `/storage/exports/${id}`)).status).toBe(200);
  });

  it('answers 413 to a body over 1 MiB and keeps serving', async () => {
    const sim = await startSim();
    const big = JSON.stringify({ export_ids: ['x'.repeat(1024 * 1024)] });
    const r = await call<PlatformError>(sim, 'POST', '/bulk/storage/exports/get', { raw: big });
    expect(r.status).toBe(413);
    expect(r.json.status).toBe(413);
    expect((await call(sim, 'GET', '/storage/exports')).status).toBe(200);
  });
});

describe('admin routes', () => {
  it('serves stats and creates exports without auth or quota, and changes faults', async () => {
    const sim = await startSim();
    await call(sim, 'GET', '/storage/exports');
    const stats = await call<{ requests: Record<string, number>; quotaSpent: number }>(
      sim,
      'GET',
      '/_simulator/stats',
      { token: null },
    );
    expect(stats.status).toBe(200);
    expect(stats.json.requests).toEqual({ list: 1 });
    expect(stats.json.quotaSpent).toBe(1);

    const created = await call<{ ids: string[] }>(sim, 'POST', '/_simulator/exports', {
      token: null,
      body: { count: 3, outcome: 'FAILED', pendingMs: 0, runningMs: 0 },
    });
    expect(created.status).toBe(201);
    expect(created.json.ids).toHaveLength(3);
    for (const id of created.json.ids) expect(sim.stateOf(id)).toBe('FAILED');
    expect((await call(sim, 'POST', '/_simulator/exports', { token: null, body: { count: 0 } })).status).toBe(
      400,
    );
    expect(
      (await call(sim, 'POST', '/_simulator/exports', { token: null, body: { count: 1, outcome: 'MAYBE' } }))
        .status,
    ).toBe(400);

    const faults = await call(sim, 'POST', '/_simulator/faults', { token: null, body: { errorRate: 1 } });
    expect(faults.json).toEqual({ errorRate: 1 });
    expect((await call(sim, 'GET', '/storage/exports')).status).toBe(500);
    expect(
      (await call(sim, 'POST', '/_simulator/faults', { token: null, body: { errorRate: 7 } })).status,
    ).toBe(400);
    // A key that is no fault (a typo, or `bulk`, fixed at start) is refused, not taken and ignored.
    for (const body of [{ errorIDs: ['x'] }, { bulk: true }]) {
      const refused = await call(sim, 'POST', '/_simulator/faults', { token: null, body });
      expect(refused.status).toBe(400);
      expect(JSON.stringify(refused.json)).toContain(Object.keys(body)[0]);
    }
    expect((await call(sim, 'GET', '/_simulator/faults', { token: null })).json).toEqual({ errorRate: 1 });

    const rate = await call<RateLimitBody>(sim, 'GET', '/rate_limit');
    expect(rate.json.rate.remaining).toBe(998);
    expect(sim.stats().requests).toEqual({ list: 2, rate_limit: 1 });
  });
});

describe('lifecycle and scale', () => {
  it('starts idempotently, has no baseUrl before start, and closes idempotently and promptly', async () => {
    const sim = new Simulator({ now: () => t });
    expect(() => sim.baseUrl).toThrow(/start/);
    const [a, b] = await Promise.all([sim.start(), sim.start()]);
    expect(a).toBe(b);
    expect(a).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v2$/);
    expect(sim.baseUrl).toBe(a);
    expect((await call(sim, 'GET', '/rate_limit')).status).toBe(200);
    const started = performance.now();
    const first = sim.close();
    expect(sim.close()).toBe(first);
    await first;
    expect(performance.now() - started).toBeLessThan(1000);
    await expect(sim.start()).rejects.toThrow(/close/);
    await expect(request(`${a}/rate_limit`)).rejects.toThrow();
  });

  it('validates options up front, naming the option', () => {
    expect(() => new Simulator({ failRate: 2 })).toThrow(/failRate/);
    expect(() => new Simulator({ quota: { limit: 0 } })).toThrow(/quota\.limit/);
    expect(() => new Simulator({ timing: { pendingMs: [5, 1] } })).toThrow(/timing\.pendingMs/);
    expect(() => new Simulator({ faults: { errorRate: -1 } })).toThrow(/faults\.errorRate/);
    // Longer than a timer can wait: node would answer at once instead.
    expect(() => new Simulator({ faults: { slowMs: 2_147_483_648 } })).toThrow(/faults\.slowMs/);
    expect(() => new Simulator({ faults: { slowMs: 2_147_483_647 } })).not.toThrow();
    const sim = new Simulator();
    expect(() => sim.createExport({ id: 'a' })).not.toThrow();
    expect(() => sim.createExport({ id: 'a' })).toThrow(/exists/);
  });

  it('serves 5,000 exports through bulk gets and list pages', async () => {
    const sim = await startSim({ exports: 5000, timing: { pendingMs: [0, 0], runningMs: [0, 0] } });
    const ids: string[] = [];
    let next: string | undefined = `${sim.baseUrl}/storage/exports?limit=100`;
    while (next) {
      const page: Reply<ListPage> = await call<ListPage>(sim, 'GET', next);
      for (const item of page.json.items) ids.push(item.id as string);
      next = page.json.links.find((link) => link.rel === 'next')?.href;
    }
    expect(ids).toHaveLength(5000);
    expect(new Set(ids).size).toBe(5000);
    const calls: Promise<Reply<{ items: BulkItem[] }>>[] = [];
    for (let i = 0; i < ids.length; i += 100) {
      calls.push(
        call(sim, 'POST', '/bulk/storage/exports/get', { body: { export_ids: ids.slice(i, i + 100) } }),
      );
    }
    const replies = await Promise.all(calls);
    const answered = replies.flatMap((r) => r.json.items.map((item) => item.resource?.state));
    expect(answered).toHaveLength(5000);
    expect(answered.every((s) => s === 'COMPLETED' || s === 'FAILED')).toBe(true);
    const stats = sim.stats();
    expect(stats.bulkIdsPerCall).toHaveLength(50);
    expect(stats.maxIdsPerBulkCall).toBe(100);
    expect(stats.idsChecked).toBe(5000);
    expect(stats.checksAfterTerminal).toBe(0);
    expect(stats.quotaSpent).toBe(100);
  });
});

/** The simulator's port, for raw exchanges. */
function portOf(sim: Simulator): number {
  return Number(new URL(sim.baseUrl).port);
}

describe('requests it cannot take apart', () => {
  it('answers a request target that is no URL as a bad request (400, 90000), counted, not as its own failure', async () => {
    const sim = await startSim();
    const r = await rawExchange(
      portOf(sim),
      'GET //[/v2/rate_limit HTTP/1.1\r\nHost: x\r\nX-SBG-Auth-Token: tok\r\nConnection: close\r\n\r\n',
    );
    expect(r.status).toBe(400);
    expect(JSON.parse(r.body)).toMatchObject({ status: 400, code: 90000 });
    expect(r.headers['x-ratelimit-limit']).toBe('1000');
    expect(sim.stats().requests).toEqual({ other: 1 });
    expect(sim.stats().statuses).toEqual({ '400': 1 });
    // Still serving.
    expect((await call(sim, 'GET', '/rate_limit')).status).toBe(200);
  });

  it('answers a request the HTTP parser refuses with a platform error body and the rate-limit headers', async () => {
    const sim = await startSim();
    const r = await rawExchange(
      portOf(sim),
      'GET /v2/rate_limit HTTP/1.1\r\nHost: x\r\nX-SBG-Auth-Token: t\u0001k\r\n\r\n',
    );
    expect(r.status).toBe(400);
    expect(JSON.parse(r.body)).toMatchObject({ status: 400, code: 90000, more_info: expect.any(String) });
    expect(r.headers['x-ratelimit-limit']).toBe('1000');
    expect(r.headers['x-ratelimit-remaining']).toBe('1000');
    expect(r.headers['x-ratelimit-reset']).toBe(String((T0 + 300_000) / 1000));
    expect(sim.stats().statuses).toEqual({ '400': 1 });
    expect((await call(sim, 'GET', '/rate_limit')).status).toBe(200);
  });
});

describe('a client that keeps its side open after a refused request', () => {
  it('has its connection closed by the simulator, as node closes it, not held until the client goes', async () => {
    // The server's side of each connection, as the listening server hands it over.
    const accepted: Socket[] = [];
    type Emit = (this: NetServer, event: string | symbol, ...args: unknown[]) => boolean;
    const emit = NetServer.prototype.emit as Emit;
    const spy = vi.spyOn(NetServer.prototype, 'emit').mockImplementation(function (
      this: NetServer,
      event: string | symbol,
      ...args: unknown[]
    ) {
      if (event === 'connection') accepted.push(args[0] as Socket);
      return emit.call(this, event, ...args);
    } as Emit as typeof NetServer.prototype.emit);
    const sim = await startSim();
    // allowHalfOpen: the client reads the answer to its end and keeps writing open, as a client
    // that never closes its connections does.
    const client = connect({ port: portOf(sim), host: '127.0.0.1', allowHalfOpen: true });
    try {
      let out = '';
      client.setEncoding('utf8');
      client.on('data', (d: string) => {
        out += d;
      });
      const ended = new Promise<void>((resolve) => client.once('end', () => resolve()));
      client.write('GET /v2/rate_limit HTTP/1.1\r\nHost: x\r\nX-SBG-Auth-Token: t\u0001k\r\n\r\n');
      await ended;
      expect(out.startsWith('HTTP/1.1 400 ')).toBe(true);
      const [server] = accepted;
      expect(server).toBeDefined();
      const closed = server!.destroyed
        ? Promise.resolve('closed')
        : new Promise<string>((resolve) => server!.once('close', () => resolve('closed')));
      const held = new Promise<string>((resolve) => setTimeout(() => resolve('still open'), 3_000));
      expect(await Promise.race([closed, held])).toBe('closed');
    } finally {
      spy.mockRestore();
      client.destroy();
    }
  });
});
