/**
 * Hostile clients against the control API, over real loopback HTTP (raw node:net sockets where a
 * request must be malformed or slow). Each test reproduces one finding of the issue: 5xx answers to
 * malformed requests, a connection flood that starved `/healthz`, a stack overflow on deep
 * metadata, one 56 MB listing, an error line per aborted upload, clients that stop reading their
 * answer and keep their `/v1` slot, and `Expect` headers answered before the token check. Limits are made small through
 * `ControlApiOptions` where a test has to reach them.
 */
import type { Socket } from 'node:net';
import pino from 'pino';
import { request } from 'undici';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  ControlApi,
  type ControlApiOptions,
  DEFAULT_PAGE_LIMIT,
  type ExportView,
  MAX_BODY_BYTES,
  MAX_METADATA_DEPTH,
  MAX_PAGE_LIMIT,
  type WatchRegistry,
} from '../../src/http/control-api.js';
import type { ExportState } from '../../src/polling/tracker.js';
import type { ExportPageQuery } from '../../src/store/store.js';
import {
  malformedRequests,
  nextResponse,
  openSocket,
  type RawAnswer,
  rawExchange,
  sendAll,
} from './probe-control-api.js';

const TOKEN = 'api-token-HOSTILE-7f3a';
const AUTH = `Authorization: Bearer ${TOKEN}\r\n`;

/**
 * The API's port over a map of exports, paged like the store (keyset on the id). Events and
 * redeliveries are not what these clients attack: there are none.
 */
class MemoryRegistry implements WatchRegistry {
  readonly #exports = new Map<string, ExportView>();
  /** The ids in order, rebuilt after an add: 200,000 of them are paged many times. */
  #sorted: string[] | undefined;

  get size(): number {
    return this.#exports.size;
  }

  ids(): string[] {
    this.#sorted ??= [...this.#exports.keys()].sort();
    return this.#sorted;
  }

  add(ids: readonly string[], state: ExportState, metadata: Record<string, unknown> | null = null): void {
    const at = Date.UTC(2024, 0, 1);
    for (const id of ids) {
      this.#exports.set(id, {
        id,
        state,
        previousState: null,
        firstSeenAt: at,
        stateChangedAt: at,
        lastCheckedAt: null,
        checks: 0,
        metadata,
        history: [{ state, at }],
        export: null,
        error: null,
      });
    }
    this.#sorted = undefined;
  }

  async watch(ids: readonly string[], metadata: Record<string, unknown> | null) {
    const alreadyWatched = ids.filter((id) => this.#exports.has(id));
    const accepted = ids.filter((id) => !this.#exports.has(id));
    this.add(accepted, 'UNKNOWN', metadata);
    return { accepted, alreadyWatched };
  }

  async unwatch(id: string) {
    this.#sorted = undefined;
    return this.#exports.delete(id);
  }

  async get(id: string) {
    const found = this.#exports.get(id);
    return found && { ...found, events: [] };
  }

  async page(query: ExportPageQuery) {
    const items: ExportView[] = [];
    const ids = this.ids();
    let i = query.after === undefined ? 0 : sortedIndexAfter(ids, query.after);
    for (; i < ids.length && items.length <= query.limit; i++) {
      const record = this.#exports.get(ids[i] as string) as ExportView;
      if (query.state === undefined || record.state === query.state) items.push(record);
    }
    return { items: items.slice(0, query.limit), more: items.length > query.limit };
  }

  async events() {
    return { items: [], more: false };
  }

  async redeliver() {
    return 'unknown_event' as const;
  }

  async redeliverSince() {
    return { deliveries: 0 };
  }
}

/** The index of the first id after `after` in sorted `ids`. */
function sortedIndexAfter(ids: readonly string[], after: string): number {
  let lo = 0;
  let hi = ids.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((ids[mid] as string) <= after) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

interface Harness {
  api: ControlApi;
  url: string;
  port: number;
  registry: MemoryRegistry;
  /** Every log line of the API, parsed. */
  lines: Array<{ level: number; msg: string } & Record<string, unknown>>;
}

const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

async function start(
  options: Partial<ControlApiOptions> = {},
  registry = new MemoryRegistry(),
): Promise<Harness> {
  const lines: Harness['lines'] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line)) });
  const api = new ControlApi({
    host: '127.0.0.1',
    port: 0,
    registry,
    probes: { health: () => ({ ok: true }), ready: () => ({ ok: true }) },
    log,
    apiToken: TOKEN,
    ...options,
  });
  const url = await api.listen();
  cleanup.push(() => api.close());
  return { api, url, port: Number(new URL(url).port), registry, lines };
}

/** Keeps sockets for the end of the test, and destroys them then. */
function hold(socket: Socket): Socket {
  socket.on('error', () => {});
  cleanup.push(() => socket.destroy());
  return socket;
}

/** Waits for a state there is no event for (the API's counters), failing after a deadline. */
async function until(test: () => boolean, what: string, deadlineMs = 10_000): Promise<void> {
  const end = performance.now() + deadlineMs;
  while (!test()) {
    if (performance.now() > end) throw new Error(`not reached within ${deadlineMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function healthz(port: number): Promise<RawAnswer> {
  return rawExchange(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
}

async function call(
  h: Harness,
  method: 'GET' | 'POST' | 'DELETE',
  path: string,
  json?: unknown,
  authorization = `Bearer ${TOKEN}`,
  // biome-ignore lint/suspicious/noExplicitAny: JSON answers are inspected field by field
): Promise<{ status: number; headers: Record<string, unknown>; json: any; bytes: number }> {
  const res = await request(`${h.url}${path}`, {
    method,
    headers: { authorization, ...(json === undefined ? {} : { 'content-type': 'application/json' }) },
    body: json === undefined ? undefined : typeof json === 'string' ? json : JSON.stringify(json),
  });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    json: text === '' ? undefined : JSON.parse(text),
    bytes: Buffer.byteLength(text),
  };
}

/** The headers and first bytes of a body that never comes: an upload that stalls. */
function slowUpload(socket: Socket): void {
  socket.write(
    `POST /v1/exports HTTP/1.1\r\nHost: x\r\n${AUTH}content-type: application/json\r\n` +
      'content-length: 1000\r\n\r\n{"ids": [',
  );
}

/** Everything the server sends on `socket` until it closes the connection (latin1). */
function readToClose(socket: Socket): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
  });
}

/** Resolves with what `socket` received once it holds `text`; rejects if it closes first. */
function waitForText(socket: Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = '';
    const onData = (chunk: Buffer) => {
      received += chunk.toString('latin1');
      if (!received.includes(text)) return;
      done();
      resolve(received);
    };
    const onClose = () => {
      done();
      reject(new Error(`closed before ${JSON.stringify(text)}; got ${JSON.stringify(received)}`));
    };
    const done = () => {
      socket.off('data', onData);
      socket.off('close', onClose);
    };
    socket.on('data', onData);
    socket.once('close', onClose);
  });
}

const warnOrWorse = (h: Harness) => h.lines.filter((l) => l.level >= 40);

function expectErrorShape(json: unknown): { code: string; message: string; details?: unknown[] } {
  expect(json).toBeTypeOf('object');
  const body = json as { error: { code: string; message: string; details?: unknown[] } };
  expect(Object.keys(body)).toEqual(['error']);
  expect(body.error.code).toMatch(/^[a-z][a-z0-9]*(_[a-z0-9]+)*$/);
  expect(body.error.message.length).toBeGreaterThan(0);
  for (const key of Object.keys(body.error)) expect(['code', 'message', 'details']).toContain(key);
  return body.error;
}

describe('malformed requests', () => {
  it('1,000 of them, of ninety-odd kinds, get 4xx answers (never a 5xx), add nothing, and the server serves on', async () => {
    const h = await start();
    const requests = malformedRequests(1000, TOKEN, 7);
    expect(new Set(requests.map((r) => r.kind)).size).toBeGreaterThan(80);

    const answers = await sendAll(h.port, requests, 16);

    const fiveXX = answers.flatMap((a, i) =>
      (a.status ?? 0) >= 500 ? [`${requests[i]?.kind}: ${a.status}`] : [],
    );
    expect(fiveXX).toEqual([]);
    const unexpected = answers.flatMap((a, i) => {
      const r = requests[i];
      if (!r) return [];
      const fine =
        a.status === undefined ? r.mayGoUnanswered === true && !a.timedOut : r.expect.includes(a.status);
      return fine
        ? []
        : [{ kind: r.kind, status: a.status, timedOut: a.timedOut, body: a.body.slice(0, 200) }];
    });
    expect(unexpected).toEqual([]);
    // Every JSON answer has the error shape; ours all are JSON except Node's own bare 400 to a
    // request without Host.
    const json = answers.filter((a) => a.json !== undefined);
    expect(json.length).toBeGreaterThan(950);
    for (const a of json) expectErrorShape(a.json);
    expect(h.registry.size).toBe(0);
    expect(warnOrWorse(h)).toEqual([]);

    expect((await healthz(h.port)).status).toBe(200);
    const added = await call(h, 'POST', '/v1/exports', { ids: ['still-serving'] });
    expect(added.status).toBe(202);
    expect(h.registry.size).toBe(1);
  });

  it('a target that is not a path is a 400 before the token check, never a 5xx', async () => {
    const h = await start();
    for (const target of ['//[', '//[::1]/v1/exports', 'http://x/v1/exports', '*', 'v1/exports']) {
      const a = await rawExchange(h.port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      expect(a.status, target).toBe(400);
      expect(expectErrorShape(a.json)).toMatchObject({ code: 'invalid_request' });
      expect(a.headers['www-authenticate']).toBeUndefined();
    }
    // The same with the token: still 400, not a route.
    const a = await rawExchange(h.port, `GET //[ HTTP/1.1\r\nHost: x\r\n${AUTH}Connection: close\r\n\r\n`);
    expect(a.status).toBe(400);
    // Bad escapes in a path are a name nothing has: 404 after the token check.
    for (const target of ['/%', '/v1/exports/%E0%A4%A', '/v1/exports/%ZZ']) {
      const unauthorized = await rawExchange(
        h.port,
        `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
      );
      expect(unauthorized.status, target).toBe(target === '/%' ? 404 : 401);
      const authorized = await rawExchange(
        h.port,
        `GET ${target} HTTP/1.1\r\nHost: x\r\n${AUTH}Connection: close\r\n\r\n`,
      );
      expect(authorized.status, target).toBe(404);
    }
  });

  it('metadata nested 5,000 deep is a 400 naming the problem, and nothing is added', async () => {
    const h = await start();
    const deep = `${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}`;
    const r = await call(h, 'POST', '/v1/exports', `{"ids": ["deep-1"], "metadata": ${deep}}`);
    expect(r.status).toBe(400);
    const error = expectErrorShape(r.json);
    expect(error.code).toBe('invalid_request');
    expect(error.details).toEqual([
      { field: 'metadata', problem: `must be nested at most ${MAX_METADATA_DEPTH} levels deep` },
    ]);
    const arrays = `${'['.repeat(5000)}${']'.repeat(5000)}`;
    expect(
      (await call(h, 'POST', '/v1/exports', `{"ids": ["deep-2"], "metadata": {"a": ${arrays}}}`)).status,
    ).toBe(400);
    expect(h.registry.size).toBe(0);

    // The limit itself: 32 levels pass, 33 do not.
    const nested = (levels: number) => `${'{"a":'.repeat(levels - 1)}{}${'}'.repeat(levels - 1)}`;
    expect(
      (await call(h, 'POST', '/v1/exports', `{"ids": ["at-32"], "metadata": ${nested(32)}}`)).status,
    ).toBe(202);
    expect(
      (await call(h, 'POST', '/v1/exports', `{"ids": ["at-33"], "metadata": ${nested(33)}}`)).status,
    ).toBe(400);
    expect(h.registry.ids()).toEqual(['at-32']);
    expect(warnOrWorse(h)).toEqual([]);
  });
});

describe('a flood of connections', () => {
  it('slow uploads past the /v1 limit get 503 too_busy at once; idle and slow-header connections past the cap are shed oldest first; /healthz answers throughout', async () => {
    const h = await start({
      maxConnections: 40,
      connectionHeadroom: 8,
      maxRequestsInProgress: 4,
      // Far beyond the test's length: only the guard closes connections here.
      headersTimeoutMs: 120_000,
      requestTimeoutMs: 120_000,
    });
    const mark = 40 - 8;

    // Four uploads that stall mid-body hold the four /v1 slots.
    const stalled: Socket[] = [];
    for (let i = 1; i <= 4; i++) {
      const socket = hold(await openSocket(h.port));
      slowUpload(socket);
      stalled.push(socket);
      await until(() => h.api.stats().requestsInProgress === i, `${i} uploads in progress`);
    }
    expect((await healthz(h.port)).status).toBe(200);

    // More of them are answered 503 at once, without their bodies, and their connections closed.
    for (let i = 0; i < 6; i++) {
      const socket = hold(await openSocket(h.port));
      const closed = new Promise((resolve) => socket.once('close', resolve));
      const answer = nextResponse(socket);
      slowUpload(socket);
      const a = await answer;
      expect(a.status).toBe(503);
      expect(expectErrorShape(a.json).code).toBe('too_busy');
      expect(a.headers['retry-after']).toBe('1');
      expect(a.headers.connection).toBe('close');
      await closed;
    }
    expect(h.api.stats().requestsInProgress).toBe(4);
    expect((await healthz(h.port)).status).toBe(200);

    // A keep-alive connection, idle after its request: the oldest idle one.
    const keepAlive = hold(await openSocket(h.port));
    const first = nextResponse(keepAlive);
    keepAlive.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    expect((await first).status).toBe(200);
    let keepAliveClosed = false;
    keepAlive.once('close', () => {
      keepAliveClosed = true;
    });
    await until(() => h.api.stats().open === 5, 'the probes’ connections closed at the server');

    // Fifty connections, one after the other: half never send a byte, half stop mid-headers.
    const closed: boolean[] = [];
    for (let i = 0; i < 50; i++) {
      const socket = hold(await openSocket(h.port));
      closed.push(false);
      socket.once('close', () => {
        closed[i] = true;
      });
      if (i % 2 === 1) socket.write(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ${i}`);
    }
    // 55 open would pass the cap of 40; the guard keeps 32 by closing the 23 oldest idle ones.
    const shed = 5 + 50 - mark;
    await until(
      () => keepAliveClosed && closed.filter(Boolean).length === shed - 1,
      `${shed} connections shed`,
    );
    expect(closed.slice(0, shed - 1).every(Boolean)).toBe(true);
    expect(closed.slice(shed - 1).some(Boolean)).toBe(false);
    expect(h.api.stats()).toMatchObject({ open: mark, shed, dropped: 0, requestsInProgress: 4 });
    for (const socket of stalled) expect(socket.destroyed).toBe(false);

    // A probe's new connection is always let in, and answered.
    for (let i = 0; i < 5; i++) expect((await healthz(h.port)).status).toBe(200);
    expect(h.api.stats().dropped).toBe(0);
    for (const socket of stalled) expect(socket.destroyed).toBe(false);

    // The slots come back when the uploads go away.
    for (const socket of stalled) socket.destroy();
    await until(() => h.api.stats().requestsInProgress === 0, 'slots released');
    expect((await call(h, 'POST', '/v1/exports', { ids: ['after-the-flood'] })).status).toBe(202);
  });

  it('a page of more than 1,000 records takes a slot per started thousand', async () => {
    const h = await start({ maxRequestsInProgress: 4, headersTimeoutMs: 120_000, requestTimeoutMs: 120_000 });
    const stalled: Socket[] = [];
    for (let i = 1; i <= 2; i++) {
      const socket = hold(await openSocket(h.port));
      slowUpload(socket);
      stalled.push(socket);
      await until(() => h.api.stats().requestsInProgress === i, `${i} uploads in progress`);
    }
    // Two slots left: a page of 2,001 records needs three, one of 2,000 two.
    const refused = await call(h, 'GET', '/v1/exports?limit=2001');
    expect(refused.status).toBe(503);
    expect(expectErrorShape(refused.json).code).toBe('too_busy');
    expect((await call(h, 'GET', '/v1/exports?limit=2000')).status).toBe(200);
    expect((await call(h, 'GET', `/v1/exports?limit=${MAX_PAGE_LIMIT + 1}`)).status).toBe(400);
    // With all four free, the largest page is served: its share is capped at the whole.
    for (const socket of stalled) socket.destroy();
    await until(() => h.api.stats().requestsInProgress === 0, 'slots released');
    expect((await call(h, 'GET', `/v1/exports?limit=${MAX_PAGE_LIMIT}`)).status).toBe(200);
  });

  it('connections that stall (before, within or after their headers) get 408 and are closed', async () => {
    const h = await start({ headersTimeoutMs: 300, requestTimeoutMs: 600 });
    const silent = hold(await openSocket(h.port));
    const slowHeaders = hold(await openSocket(h.port));
    slowHeaders.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    const slowBody = hold(await openSocket(h.port));
    slowUpload(slowBody);
    await until(() => h.api.stats().requestsInProgress === 1, 'the upload in progress');
    for (const socket of [silent, slowHeaders, slowBody]) {
      const closed = new Promise((resolve) => socket.once('close', resolve));
      const a = await nextResponse(socket, 5000);
      expect(a.timedOut).toBe(false);
      expect(a.status).toBe(408);
      expect(expectErrorShape(a.json).code).toBe('request_timeout');
      socket.resume();
      await closed;
    }
    await until(() => h.api.stats().requestsInProgress === 0, 'the upload’s slot released');
    expect(h.registry.size).toBe(0);
    expect(warnOrWorse(h)).toEqual([]);
  });
});

describe('GET /v1/exports with 200,000 records', () => {
  const COUNT = 200_000;
  const ids = Array.from({ length: COUNT }, (_, i) => `exp-${String((i * 7919) % COUNT).padStart(6, '0')}`);
  const sorted = [...ids].sort();
  const running = new Set(ids.filter((_, i) => i % 3 === 0));
  let registry: MemoryRegistry;

  beforeAll(() => {
    registry = new MemoryRegistry();
    registry.add(ids, 'UNKNOWN', { team: 'paging' });
    registry.add([...running], 'RUNNING', { team: 'paging' });
  });

  it('the default page is the first 1,000 records in id order, with a cursor to the next', async () => {
    const h = await start({}, registry);
    const r = await call(h, 'GET', '/v1/exports');
    expect(r.status).toBe(200);
    expect(r.headers['cache-control']).toBe('no-store');
    expect(Object.keys(r.json)).toEqual(['items', 'next_cursor']);
    expect(r.json.items).toHaveLength(DEFAULT_PAGE_LIMIT);
    expect(r.json.items.map((i: { id: string }) => i.id)).toEqual(sorted.slice(0, DEFAULT_PAGE_LIMIT));
    expect(r.json.next_cursor).toBe(Buffer.from(sorted[DEFAULT_PAGE_LIMIT - 1] ?? '').toString('base64url'));
    expect(r.bytes).toBeLessThan(1024 * 1024);
  });

  it('walking next_cursor visits every record exactly once, in id order', async () => {
    const h = await start({}, registry);
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const r = await call(
        h,
        'GET',
        `/v1/exports?limit=${MAX_PAGE_LIMIT}${cursor ? `&cursor=${cursor}` : ''}`,
      );
      expect(r.status).toBe(200);
      expect(r.json.items.length).toBeLessThanOrEqual(MAX_PAGE_LIMIT);
      seen.push(...r.json.items.map((i: { id: string }) => i.id));
      cursor = r.json.next_cursor;
      pages++;
    } while (cursor !== null);
    expect(pages).toBe(COUNT / MAX_PAGE_LIMIT);
    expect(seen).toEqual(sorted);
  });

  it('filters by state while paging, and a page of a filter ends with a null cursor', async () => {
    const h = await start({}, registry);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const r = await call(
        h,
        'GET',
        `/v1/exports?state=RUNNING&limit=7000${cursor ? `&cursor=${cursor}` : ''}`,
      );
      expect(r.status).toBe(200);
      for (const item of r.json.items) expect(item.state).toBe('RUNNING');
      seen.push(...r.json.items.map((i: { id: string }) => i.id));
      cursor = r.json.next_cursor;
    } while (cursor !== null);
    expect(seen).toEqual([...running].sort());

    const unknown = await call(h, 'GET', '/v1/exports?state=UNKNOWN&limit=3');
    expect(unknown.json.items.map((i: { id: string }) => i.id)).toEqual(
      sorted.filter((id) => !running.has(id)).slice(0, 3),
    );
    expect(await call(h, 'GET', '/v1/exports?state=COMPLETED').then((r) => r.json)).toEqual({
      items: [],
      next_cursor: null,
    });
    // The last page exactly: no cursor after it.
    const last = sorted[COUNT - 2] ?? '';
    const tail = await call(
      h,
      'GET',
      `/v1/exports?limit=1&cursor=${Buffer.from(last).toString('base64url')}`,
    );
    expect(tail.json).toMatchObject({ items: [{ id: sorted[COUNT - 1] }], next_cursor: null });
  });

  it('a bad limit, cursor or state is a 400 with details', async () => {
    const h = await start({}, registry);
    for (const limit of ['0', '-1', '10001', 'ten', '1.5', '', '1e3']) {
      const r = await call(h, 'GET', `/v1/exports?limit=${limit}`);
      expect(r.status, limit).toBe(400);
      expect(expectErrorShape(r.json)).toMatchObject({
        code: 'invalid_request',
        details: [{ field: 'limit' }],
      });
    }
    const badId = Buffer.from('not an id!').toString('base64url');
    for (const cursor of ['', '!!', 'zz=', badId, `${Buffer.from('exp-000001').toString('base64url')}x`]) {
      const r = await call(h, 'GET', `/v1/exports?cursor=${encodeURIComponent(cursor)}`);
      expect(r.status, cursor).toBe(400);
      expect(expectErrorShape(r.json)).toMatchObject({
        code: 'invalid_request',
        details: [{ field: 'cursor' }],
      });
    }
    const state = await call(h, 'GET', '/v1/exports?state=DONE');
    expect(expectErrorShape(state.json)).toMatchObject({
      code: 'invalid_state',
      details: [{ field: 'state' }],
    });
    const all = await call(h, 'GET', '/v1/exports?state=DONE&limit=0&cursor=!&state=RUNNING');
    expect(all.status).toBe(400);
    const error = expectErrorShape(all.json);
    expect(error.code).toBe('invalid_request');
    expect((error.details as Array<{ field: string }>).map((d) => d.field).sort()).toEqual([
      'cursor',
      'limit',
      'state',
    ]);
    expect(await call(h, 'GET', `/v1/exports?limit=${MAX_PAGE_LIMIT}`).then((r) => r.status)).toBe(200);
  });
});

describe('aborted uploads', () => {
  it('1,000 uploads cut off mid-body write no warn or error line, and leave no slot taken', async () => {
    const h = await start({ maxRequestsInProgress: 64 });
    const batch = 20;
    for (let done = 0; done < 1000; done += batch) {
      const sockets = await Promise.all(Array.from({ length: batch }, () => openSocket(h.port)));
      for (const socket of sockets) {
        socket.on('error', () => {});
        slowUpload(socket);
      }
      // Every upload is being read when it is cut off.
      await until(() => h.api.stats().requestsInProgress === batch, 'a batch of uploads in progress');
      sockets.forEach((socket, i) => {
        if (i % 2 === 0) socket.destroy();
        else socket.resetAndDestroy();
      });
      await until(() => h.api.stats().requestsInProgress === 0, 'the batch’s slots released');
    }
    expect(warnOrWorse(h)).toEqual([]);
    const aborts = h.lines.filter(
      (l) => l.msg === 'client closed the connection before its request was read',
    );
    expect(aborts.length).toBeGreaterThanOrEqual(1000);
    for (const line of aborts) {
      expect(line.level).toBe(20);
      expect(line.err).toBeUndefined();
      expect(JSON.stringify(line)).not.toContain('    at ');
    }
    expect(h.registry.size).toBe(0);
    expect((await call(h, 'POST', '/v1/exports', { ids: ['after-the-aborts'] })).status).toBe(202);
  });
});

describe('clients that stop reading their answer', () => {
  it('are cut off once the answer makes no progress, which frees their /v1 slots', async () => {
    // 10,000 records of 1.5 KB of metadata: a page of some 18 MB, several times what loopback's
    // socket buffers take in for a client that reads nothing.
    const registry = new MemoryRegistry();
    const ids = Array.from({ length: MAX_PAGE_LIMIT }, (_, i) => `big-${String(i).padStart(5, '0')}`);
    registry.add(ids, 'UNKNOWN', { pad: 'x'.repeat(1500) });
    const clients = 4;
    // A page of 10,000 records takes ten slots: the clients below take them all.
    const h = await start({ maxRequestsInProgress: clients * 10, answerStallTimeoutMs: 300 }, registry);

    // Clients ask for the largest page, as many as the slots allow, and never read a byte of it.
    const stalled: Socket[] = [];
    for (let i = 0; i < clients; i++) {
      const socket = hold(await openSocket(h.port));
      socket.pause();
      socket.write(`GET /v1/exports?limit=${MAX_PAGE_LIMIT} HTTP/1.1\r\nHost: x\r\n${AUTH}\r\n`);
      stalled.push(socket);
    }
    // Without the bound they would hold every slot (and their connections) until they disconnect.
    await until(
      () => h.api.stats().open === 0 && h.api.stats().requestsInProgress === 0,
      'the stalled answers cut off and their slots freed',
    );
    expect(
      h.lines.filter((l) => l.msg === 'client stopped reading its answer; connection closed'),
    ).toHaveLength(clients);

    // Each of them got the start of its answer, not all of it: the answer was cut, not finished.
    for (const socket of stalled) {
      const text = readToClose(socket);
      socket.resume();
      const received = await text;
      const head = received.slice(0, received.indexOf('\r\n\r\n'));
      expect(head).toMatch(/^HTTP\/1\.1 200 /);
      const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1]);
      expect(length).toBeGreaterThan(10_000_000);
      expect(received.length - head.length - 4).toBeLessThan(length);
    }

    const served = await call(h, 'GET', '/v1/exports?limit=2');
    expect(served.status).toBe(200);
    expect(served.json.items.map((i: { id: string }) => i.id)).toEqual(ids.slice(0, 2));
    expect(h.api.stats().requestsInProgress).toBe(0);
    expect(warnOrWorse(h)).toEqual([]);
  });

  it('a client that reads slowly but steadily gets its whole answer', async () => {
    const registry = new MemoryRegistry();
    registry.add(
      Array.from({ length: MAX_PAGE_LIMIT }, (_, i) => `slow-${i}`),
      'UNKNOWN',
      { pad: 'x'.repeat(1500) },
    );
    const stallMs = 400;
    const h = await start({ answerStallTimeoutMs: stallMs }, registry);
    const socket = hold(await openSocket(h.port));
    socket.pause();
    const text = readToClose(socket);
    const started = performance.now();
    socket.write(
      `GET /v1/exports?limit=${MAX_PAGE_LIMIT} HTTP/1.1\r\nHost: x\r\n${AUTH}Connection: close\r\n\r\n`,
    );
    // A burst of reading every 100 ms, a quarter of the stall bound: progress, however slow.
    const bursts = setInterval(() => {
      socket.resume();
      setImmediate(() => socket.pause());
    }, 100);
    cleanup.push(() => clearInterval(bursts));
    const received = await text;
    clearInterval(bursts);
    // Reading took well over the bound: a deadline on the whole answer would have cut it.
    expect(performance.now() - started).toBeGreaterThan(2 * stallMs);
    const head = received.slice(0, received.indexOf('\r\n\r\n'));
    const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1]);
    expect(length).toBeGreaterThan(10_000_000);
    expect(received.length - head.length - 4).toBe(length);
  });
});

describe('Expect headers', () => {
  const upload = (expectation: string, auth: string, body: string) =>
    `POST /v1/exports HTTP/1.1\r\nHost: x\r\n${auth}Expect: ${expectation}\r\n` +
    `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n`;

  it('an unknown expectation is a 401 without the token, then a 417 in the error shape; nothing is added', async () => {
    const h = await start();
    const get = (auth: string) =>
      rawExchange(
        h.port,
        `GET /v1/exports HTTP/1.1\r\nHost: x\r\n${auth}Expect: foo\r\nConnection: close\r\n\r\n`,
      );
    const unauthorized = await get('');
    expect(unauthorized.status).toBe(401);
    expect(expectErrorShape(unauthorized.json).code).toBe('unauthorized');
    const refused = await get(AUTH);
    expect(refused.status).toBe(417);
    expect(expectErrorShape(refused.json).code).toBe('expectation_failed');

    const body = JSON.stringify({ ids: ['expected'] });
    const post = await rawExchange(h.port, `${upload('foo', AUTH, body)}${body}`);
    expect(post.status).toBe(417);
    expect(expectErrorShape(post.json).code).toBe('expectation_failed');
    expect(h.registry.size).toBe(0);
    // Probes are checked the same way, without a token.
    expect(
      (
        await rawExchange(
          h.port,
          'GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nConnection: close\r\n\r\n',
        )
      ).status,
    ).toBe(417);
  });

  it('100-continue invites the body only once the request is admitted', async () => {
    const h = await start();
    const body = JSON.stringify({ ids: ['continued'] });

    // No token: a 401 and the connection closed, never a 100 that asks for the body.
    const unauthorized = hold(await openSocket(h.port));
    const refusedText = readToClose(unauthorized);
    unauthorized.write(upload('100-continue', '', 'x'.repeat(2_000_000)));
    const refused = await refusedText;
    expect(refused).not.toContain(' 100 ');
    expect(refused).toMatch(/^HTTP\/1\.1 401 /);

    // A declared body over the limit: 413 at once, with the token too.
    const tooBig = hold(await openSocket(h.port));
    const tooBigText = readToClose(tooBig);
    tooBig.write(upload('100-continue', AUTH, 'x'.repeat(MAX_BODY_BYTES + 1)));
    const tooBigAnswer = await tooBigText;
    expect(tooBigAnswer).not.toContain(' 100 ');
    expect(tooBigAnswer).toMatch(/^HTTP\/1\.1 413 /);

    // Admitted: 100 Continue, then the body is read and acted on.
    const admitted = hold(await openSocket(h.port));
    const interim = waitForText(admitted, '\r\n\r\n');
    admitted.write(upload('100-continue', AUTH, body));
    expect(await interim).toBe('HTTP/1.1 100 Continue\r\n\r\n');
    const answer = nextResponse(admitted);
    admitted.write(body);
    expect((await answer).status).toBe(202);
    expect(h.registry.ids()).toEqual(['continued']);
  });
});
