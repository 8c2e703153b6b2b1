/**
 * The hostile-client probe: runs the control API with its DEFAULT limits on 127.0.0.1, attacks it
 * the ways the issue describes, and prints what that costs. Not a test: it prints figures.
 *
 *   npx tsx test/hostile/probe-control-api.ts
 *
 * Figures: connections held open (idle and slow-header ones, plus slow-body uploads) while
 * `/healthz` still answers, and its latency; 5xx answers over 1,000 malformed requests;
 * `GET /v1/exports` time and size with 200,000 records (a real Tracker); `/healthz` latency while
 * that listing runs. Stops by itself.
 *
 * This module also holds the raw-socket client and the catalogue of malformed requests, which the
 * hostile suite (control-api.hostile.test.ts) uses too; `main` runs only when this file is run.
 */
import { connect, type Socket } from 'node:net';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import pino from 'pino';
import { request } from 'undici';
import {
  ControlApi,
  type ControlApiOptions,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_REQUESTS_IN_PROGRESS,
  MAX_IDS_PER_REQUEST,
  MAX_METADATA_BYTES,
  recordToJson,
  type WatchRegistry,
} from '../../src/http/control-api.js';
import { exportView } from '../../src/main.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { ExportChange, Store } from '../../src/store/store.js';

// ---------------------------------------------------------------------------------------------
// Raw HTTP over node:net
// ---------------------------------------------------------------------------------------------

export interface RawAnswer {
  /** The status of the first response, when one came. */
  status: number | undefined;
  /** Its headers, names in lower case. */
  headers: Record<string, string>;
  body: string;
  /** The body parsed, when it is JSON. */
  json: unknown;
  /** The socket error, if the connection failed (a reset, say). */
  error: string | undefined;
  /** No close within the deadline: the server kept the connection without answering. */
  timedOut: boolean;
}

/** Parses the first HTTP response in `text` (latin1), skipping interim 1xx ones. */
export function parseResponse(text: string): Pick<RawAnswer, 'status' | 'headers' | 'body' | 'json'> {
  let rest = text;
  for (;;) {
    const end = rest.indexOf('\r\n\r\n');
    const head = end === -1 ? rest : rest.slice(0, end);
    const lines = head.split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1];
    if (status === undefined) return { status: undefined, headers: {}, body: '', json: undefined };
    if (status.startsWith('1') && end !== -1) {
      rest = rest.slice(end + 4);
      continue;
    }
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const body = end === -1 ? '' : rest.slice(end + 4);
    let json: unknown;
    try {
      json = /json/.test(headers['content-type'] ?? '') ? JSON.parse(body) : undefined;
    } catch {
      json = undefined;
    }
    return { status: Number(status), headers, body, json };
  }
}

/**
 * Sends bytes on a fresh connection and reads until the server closes it (the requests here ask
 * for `Connection: close`, and the server closes after an error anyway). `halfClose` ends our side
 * once the bytes are written, as a client that gives up mid-body does.
 */
export function rawExchange(
  port: number,
  bytes: string | Buffer,
  options: { halfClose?: boolean; deadlineMs?: number } = {},
): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let error: string | undefined;
    let timedOut = false;
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
    });
    const timer = setTimeout(() => {
      timedOut = true;
      socket.destroy();
    }, options.deadlineMs ?? 5000);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ ...parseResponse(Buffer.concat(chunks).toString('latin1')), error, timedOut });
    });
    socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
    if (options.halfClose) socket.end();
  });
}

/** Opens a connection and resolves once it is established. */
export function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** Resolves with the first response on an open socket (the socket stays open). */
export function nextResponse(socket: Socket, deadlineMs = 5000): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const finish = (timedOut: boolean, error?: string) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      resolve({ ...parseResponse(Buffer.concat(chunks).toString('latin1')), error, timedOut });
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      const text = Buffer.concat(chunks).toString('latin1');
      const parsed = parseResponse(text);
      const length = Number(parsed.headers['content-length'] ?? Number.NaN);
      if (parsed.status !== undefined && Buffer.byteLength(parsed.body, 'latin1') >= length) finish(false);
    };
    const onClose = () => finish(false);
    const timer = setTimeout(() => finish(true), deadlineMs);
    socket.on('data', onData);
    socket.on('close', onClose);
  });
}

// ---------------------------------------------------------------------------------------------
// The catalogue of malformed control requests
// ---------------------------------------------------------------------------------------------

export interface MalformedRequest {
  kind: string;
  bytes: string | Buffer;
  /** Statuses a correct server may answer with. */
  expect: readonly number[];
  /** Our side is closed after the bytes (a client giving up mid-body). */
  halfClose?: boolean;
  /** The server may close without an answer (it could not read the request, or reset it). */
  mayGoUnanswered?: boolean;
}

/** A small deterministic generator, so a failing case can be replayed. */
function random(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

/**
 * `count` malformed requests of about eighty kinds, cycled, each with its own ids and garbage.
 * Every request is one a correct server refuses with a 4xx (or, for the few marked, by closing):
 * none of them may add an export. `token` is the server's API token; requests that are not about
 * authentication carry it, so they reach the check they are meant for.
 */
export function malformedRequests(count: number, token: string, seed = 1): MalformedRequest[] {
  const rnd = random(seed);
  const word = (n = 8) =>
    Array.from({ length: n }, () => 'abcdefghijklmnopqrstuvwxyz0123456789'[Math.floor(rnd() * 36)]).join('');
  const garbage = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(rnd() * 256)));
  const auth = `Authorization: Bearer ${token}\r\n`;
  const get = (target: string, method = 'GET', headers = auth) =>
    `${method} ${target} HTTP/1.1\r\nHost: x\r\n${headers}Connection: close\r\n\r\n`;
  const post = (body: string | Buffer, type: string | undefined = 'application/json', headers = auth) =>
    Buffer.concat([
      Buffer.from(
        `POST /v1/exports HTTP/1.1\r\nHost: x\r\n${headers}${type === undefined ? '' : `content-type: ${type}\r\n`}` +
          `content-length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n`,
        'latin1',
      ),
      typeof body === 'string' ? Buffer.from(body, 'utf8') : body,
    ]);
  const withHead = (head: string, body = '') =>
    `POST /v1/exports HTTP/1.1\r\nHost: x\r\n${auth}${head}\r\n${body}`;
  const deep = (n: number, open: string, close: string, inner = '1') =>
    open.repeat(n) + inner + close.repeat(n);
  const ids = () => `"${word()}", "${word()}"`;

  const kinds: Array<() => Omit<MalformedRequest, 'kind'> & { kind: string }> = [
    // Request lines and headers Node's parser refuses.
    () => ({
      kind: 'binary garbage',
      bytes: Buffer.concat([garbage(64), Buffer.from('\r\n\r\n')]),
      expect: [400],
    }),
    () => ({ kind: 'text garbage', bytes: `${word(40)} ${word(3)}\r\n\r\n`, expect: [400] }),
    () => ({ kind: 'no method', bytes: ' /healthz HTTP/1.1\r\nHost: x\r\n\r\n', expect: [400] }),
    () => ({ kind: 'unknown method', bytes: get('/healthz', word(6).toUpperCase()), expect: [400] }),
    () => ({ kind: 'lower-case method', bytes: get('/v1/exports', 'get'), expect: [400] }),
    () => ({ kind: 'bad version', bytes: 'GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n', expect: [400] }),
    () => ({
      kind: 'LF line ends',
      bytes: 'GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n',
      expect: [400],
    }),
    () => ({
      kind: 'header without colon',
      bytes: get('/v1/exports', 'GET', `${auth}${word()}\r\n`),
      expect: [400],
    }),
    () => ({
      kind: 'NUL in a header',
      bytes: get('/v1/exports', 'GET', `${auth}X-A: a\u0000b\r\n`),
      expect: [400],
    }),
    () => ({
      kind: 'space before colon',
      bytes: get('/v1/exports', 'GET', `${auth}X-A : b\r\n`),
      expect: [400],
    }),
    () => ({
      kind: 'folded header',
      bytes: get('/v1/exports', 'GET', `${auth}X-A: b\r\n  folded\r\n`),
      expect: [400],
    }),
    () => ({
      kind: 'missing Host',
      bytes: `GET /healthz HTTP/1.1\r\n${auth}Connection: close\r\n\r\n`,
      expect: [400],
    }),
    () => ({
      kind: 'oversized header',
      bytes: get('/v1/exports', 'GET', `${auth}X-Big: ${'a'.repeat(20_000)}\r\n`),
      expect: [431],
    }),
    () => ({
      kind: 'oversized request line',
      bytes: get(`/v1/exports/${'a'.repeat(20_000)}`),
      expect: [431],
    }),
    () => ({ kind: 'non-ASCII target', bytes: get(`/v1/exports/\u00ff${word()}`), expect: [400] }),
    // Targets: none may reach a 5xx; those that are not paths are 400 before the token check.
    () => ({ kind: 'target //[', bytes: get('//[', 'GET', ''), expect: [400] }),
    () => ({ kind: 'target //[ with path', bytes: get(`//[${word()}]/v1/exports`), expect: [400] }),
    () => ({ kind: 'target /%', bytes: get('/%'), expect: [404] }),
    () => ({ kind: 'target /v1/exports/%', bytes: get('/v1/exports/%'), expect: [404] }),
    () => ({ kind: 'cut UTF-8 escape', bytes: get('/v1/exports/%E0%A4%A'), expect: [404] }),
    () => ({ kind: 'bad escape %ZZ', bytes: get(`/v1/exports/%ZZ${word()}`), expect: [404] }),
    () => ({ kind: 'escaped NUL', bytes: get(`/v1/exports/a%00${word()}`), expect: [404] }),
    () => ({ kind: 'absolute-form', bytes: get('http://x/v1/exports'), expect: [400] }),
    () => ({ kind: 'asterisk-form', bytes: get('*', 'OPTIONS'), expect: [400] }),
    () => ({ kind: 'no leading slash', bytes: get('healthz'), expect: [400] }),
    () => ({ kind: 'brackets in path', bytes: get(`/v1/exports/<${word()}>`), expect: [400] }),
    () => ({ kind: 'fragment', bytes: get('/healthz#top'), expect: [400] }),
    () => ({ kind: 'dot segments', bytes: get('/v1/exports/../../healthz'), expect: [404] }),
    () => ({ kind: 'escaped dot segments', bytes: get('/v1/%2e%2e/healthz'), expect: [404] }),
    () => ({ kind: 'long id', bytes: get(`/v1/exports/${'a'.repeat(5000)}`), expect: [404] }),
    () => ({ kind: 'unknown route', bytes: get(`/${word()}`), expect: [404] }),
    () => ({ kind: 'unknown /v1 route', bytes: get(`/v1/${word()}`), expect: [404] }),
    // Methods.
    () => ({ kind: 'PUT /v1/exports', bytes: get('/v1/exports', 'PUT'), expect: [405] }),
    () => ({ kind: 'DELETE /healthz', bytes: get('/healthz', 'DELETE'), expect: [405] }),
    () => ({ kind: 'PROPFIND an export', bytes: get(`/v1/exports/${word()}`, 'PROPFIND'), expect: [405] }),
    () => ({ kind: 'TRACE /v1/exports', bytes: get('/v1/exports', 'TRACE'), expect: [405] }),
    () => ({ kind: 'OPTIONS /v1/exports', bytes: get('/v1/exports', 'OPTIONS'), expect: [405] }),
    () => ({ kind: 'HEAD /v1/exports', bytes: get('/v1/exports', 'HEAD'), expect: [405] }),
    () => ({ kind: 'PATCH an export', bytes: get(`/v1/exports/${word()}`, 'PATCH'), expect: [405] }),
    () => ({ kind: 'POST /metrics', bytes: get('/metrics', 'POST'), expect: [405] }),
    () => ({
      kind: 'CONNECT',
      bytes: 'CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n',
      expect: [400],
      mayGoUnanswered: true,
    }),
    // Bodies.
    () => ({ kind: 'bad JSON', bytes: post(`{"ids": [${ids()}`), expect: [400] }),
    () => ({ kind: 'JSON array', bytes: post(`[${ids()}]`), expect: [400] }),
    () => ({ kind: 'JSON null', bytes: post('null'), expect: [400] }),
    () => ({ kind: 'BOM before JSON', bytes: post(`\ufeff{"ids": [${ids()}]}`), expect: [400] }),
    () => ({ kind: 'empty JSON body', bytes: post(''), expect: [400] }),
    () => ({ kind: 'no body, no type', bytes: post('', undefined), expect: [400] }),
    () => ({ kind: 'ids a number', bytes: post('{"ids": 42}'), expect: [400] }),
    () => ({ kind: 'ids with null', bytes: post(`{"ids": [${ids()}, null]}`), expect: [400] }),
    () => ({ kind: 'ids an object', bytes: post(`{"ids": {"${word()}": 1}}`), expect: [400] }),
    () => ({ kind: 'bad id', bytes: post(`{"ids": ["${word()} ${word()}"]}`), expect: [400] }),
    () => ({
      kind: 'invalid UTF-8 id',
      bytes: post(Buffer.from([...Buffer.from('{"ids": ["a'), 0xff, 0xfe, ...Buffer.from('"]}')])),
      expect: [400],
    }),
    () => ({ kind: 'metadata a string', bytes: post(`{"ids": [${ids()}], "metadata": "x"}`), expect: [400] }),
    () => ({
      kind: 'metadata 5,000 deep',
      bytes: post(`{"ids": [${ids()}], "metadata": ${deep(5000, '{"a":', '}')}}`),
      expect: [400],
    }),
    () => ({
      kind: 'metadata arrays 5,000 deep',
      bytes: post(`{"ids": [${ids()}], "metadata": {"a": ${deep(5000, '[', ']')}}}`),
      expect: [400],
    }),
    () => ({ kind: 'ids 5,000 deep', bytes: post(`{"ids": ${deep(5000, '[', ']', '"x"')}}`), expect: [400] }),
    () => ({
      kind: 'unknown field 5,000 deep',
      bytes: post(`{"ids": [${ids()}], "x": ${deep(5000, '[', ']')}}`),
      expect: [400],
    }),
    () => ({
      kind: 'metadata over 4 KiB',
      bytes: post(`{"ids": [${ids()}], "metadata": {"k": "${'x'.repeat(MAX_METADATA_BYTES)}"}}`),
      expect: [400],
    }),
    () => ({
      kind: 'too many ids',
      bytes: post(
        JSON.stringify({ ids: Array.from({ length: MAX_IDS_PER_REQUEST + 1 }, (_, i) => `i${i}`) }),
      ),
      expect: [400],
    }),
    () => ({ kind: 'text/plain', bytes: post(`{"ids": [${ids()}]}`, 'text/plain'), expect: [415] }),
    () => ({
      kind: 'form',
      bytes: post(`ids=${word()}`, 'application/x-www-form-urlencoded'),
      expect: [415],
    }),
    () => ({
      kind: 'multipart',
      bytes: post('--b\r\n\r\nx\r\n--b--', 'multipart/form-data; boundary=b'),
      expect: [415],
    }),
    () => ({
      kind: 'application/jsonx',
      bytes: post(`{"ids": [${ids()}]}`, 'application/jsonx'),
      expect: [415],
    }),
    () => ({ kind: 'unparseable content type', bytes: post(`{"ids": [${ids()}]}`, ';;;'), expect: [415] }),
    () => ({
      kind: 'truncated body',
      bytes: withHead('content-type: application/json\r\ncontent-length: 100\r\n', '{"ids": ['),
      expect: [400],
      halfClose: true,
      mayGoUnanswered: true,
    }),
    () => ({
      kind: 'declared 2 MB body',
      bytes: withHead('content-type: application/json\r\ncontent-length: 2000000\r\n', '{"ids": ['),
      expect: [413],
    }),
    () => ({
      kind: 'streamed 1.1 MiB body',
      bytes: withHead(
        'content-type: application/json\r\ntransfer-encoding: chunked\r\n',
        `110000\r\n${' '.repeat(0x110000)}\r\n0\r\n\r\n`,
      ),
      expect: [413],
      // The server stops reading at 1 MiB; closing with bytes unread may reset the connection.
      mayGoUnanswered: true,
    }),
    () => ({
      kind: 'bad chunk size',
      bytes: withHead('content-type: application/json\r\ntransfer-encoding: chunked\r\n', 'zz\r\nabc\r\n'),
      expect: [400],
    }),
    () => ({
      kind: 'length and chunked',
      bytes: withHead('content-length: 5\r\ntransfer-encoding: chunked\r\n', '0\r\n\r\n'),
      expect: [400],
    }),
    () => ({ kind: 'length not a number', bytes: withHead('content-length: abc\r\n'), expect: [400] }),
    () => ({ kind: 'negative length', bytes: withHead('content-length: -1\r\n'), expect: [400] }),
    () => ({
      kind: 'two lengths',
      bytes: withHead('content-length: 5\r\ncontent-length: 6\r\n', 'hello'),
      expect: [400],
    }),
    () => ({
      kind: 'gzip transfer-encoding',
      bytes: withHead('transfer-encoding: gzip\r\n', 'abc'),
      expect: [400],
    }),
    // Query parameters.
    () => ({ kind: 'limit=0', bytes: get('/v1/exports?limit=0'), expect: [400] }),
    () => ({ kind: 'limit=-1', bytes: get('/v1/exports?limit=-1'), expect: [400] }),
    () => ({ kind: 'limit not a number', bytes: get(`/v1/exports?limit=${word()}`), expect: [400] }),
    () => ({ kind: 'limit over 10,000', bytes: get('/v1/exports?limit=10001'), expect: [400] }),
    () => ({ kind: 'limit=1e3', bytes: get('/v1/exports?limit=1e3'), expect: [400] }),
    () => ({ kind: 'limit empty', bytes: get('/v1/exports?limit='), expect: [400] }),
    () => ({ kind: 'limit twice', bytes: get('/v1/exports?limit=5&limit=6'), expect: [400] }),
    () => ({ kind: 'cursor garbage', bytes: get(`/v1/exports?cursor=!!${word()}`), expect: [400] }),
    () => ({
      kind: 'cursor of a bad id',
      bytes: get(`/v1/exports?cursor=${Buffer.from(`${word()} x`).toString('base64url')}`),
      expect: [400],
    }),
    () => ({ kind: 'cursor empty', bytes: get('/v1/exports?cursor='), expect: [400] }),
    () => ({ kind: 'state unknown', bytes: get(`/v1/exports?state=${word()}`), expect: [400] }),
    () => ({ kind: 'state bad escape', bytes: get('/v1/exports?state=%ZZ'), expect: [400] }),
    () => ({ kind: 'state twice', bytes: get('/v1/exports?state=PENDING&state=RUNNING'), expect: [400] }),
    // Bearer tokens.
    () => ({ kind: 'no token', bytes: get('/v1/exports', 'GET', ''), expect: [401] }),
    () => ({
      kind: 'wrong token',
      bytes: get(`/v1/exports/${word()}`, 'GET', `Authorization: Bearer ${word(token.length)}\r\n`),
      expect: [401],
    }),
    () => ({
      kind: 'token with a suffix',
      bytes: get('/v1/exports', 'DELETE', `Authorization: Bearer ${token}x\r\n`),
      expect: [401],
    }),
    () => ({
      kind: 'huge token',
      bytes: get('/v1/exports', 'GET', `Authorization: Bearer ${'t'.repeat(10_000)}\r\n`),
      expect: [401],
    }),
    () => ({
      kind: 'Basic scheme',
      bytes: get(
        '/v1/exports',
        'GET',
        `Authorization: Basic ${Buffer.from(`u:${token}`).toString('base64')}\r\n`,
      ),
      expect: [401],
    }),
    () => ({
      kind: 'bare token',
      bytes: get('/v1/exports', 'GET', `Authorization: ${token}\r\n`),
      expect: [401],
    }),
    () => ({
      kind: 'POST with no token',
      bytes: post(`{"ids": [${ids()}]}`, 'application/json', ''),
      expect: [401],
    }),
    () => ({
      kind: 'POST with a wrong token',
      bytes: post(`{"ids": [${ids()}]}`, 'application/json', 'Authorization: Bearer nope\r\n'),
      expect: [401],
    }),
  ];
  return Array.from({ length: count }, (_, i) => {
    const make = kinds[i % kinds.length];
    if (!make) throw new Error('no kinds');
    return make();
  });
}

/** Sends requests `concurrency` at a time; the answers, in the order of the requests. */
export async function sendAll(
  port: number,
  requests: readonly MalformedRequest[],
  concurrency: number,
): Promise<RawAnswer[]> {
  const answers: RawAnswer[] = new Array(requests.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < requests.length; i = next++) {
      const r = requests[i];
      if (!r) continue;
      answers[i] = await rawExchange(port, r.bytes, { halfClose: r.halfClose ?? false });
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return answers;
}

// ---------------------------------------------------------------------------------------------
// The probe
// ---------------------------------------------------------------------------------------------

const TOKEN = 'probe-token-3b9d5e';

/** A registry over a real store in memory, as main.ts builds it (without the scheduler). */
export function registryFor(store: Store, now: () => number = () => Date.now()): WatchRegistry {
  return {
    watch: async (ids, metadata) => {
      const [result] = await store.addExports([{ ids, metadata }], now());
      return result ?? { accepted: [], alreadyWatched: [] };
    },
    unwatch: async (id) => (await store.removeExport(id)).removed,
    get: async (id) => {
      const found = await store.getExportWithEvents(id);
      return found && { ...exportView(found.record), events: found.events };
    },
    page: async (query) => {
      const { items, more } = await store.pageExports(query);
      return { items: items.map((r) => exportView(r)), more };
    },
    events: (query) => store.listEvents(query),
    redeliver: async () => 'unknown_event',
    redeliverSince: async () => ({ deliveries: 0 }),
  };
}

const memoryStore = () => openSqliteStore({ path: ':memory:' });

async function startApi(store: Store, extra: Partial<ControlApiOptions> = {}) {
  const api = new ControlApi({
    host: '127.0.0.1',
    port: 0,
    registry: registryFor(store),
    probes: { health: () => ({ ok: true }), ready: () => ({ ok: true }) },
    log: pino({ level: 'silent' }),
    apiToken: TOKEN,
    ...extra,
  });
  const url = await api.listen();
  return { api, url, port: Number(new URL(url).port) };
}

async function timed<T>(f: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = performance.now();
  const value = await f();
  return { ms: performance.now() - start, value };
}

async function healthz(url: string): Promise<{ ms: number; status: number }> {
  const { ms, value } = await timed(async () => {
    // A fresh connection each time, as a kubelet's probe makes.
    const res = await request(`${url}/healthz`, { reset: true, headersTimeout: 5000, bodyTimeout: 5000 });
    await res.body.text();
    return res.statusCode;
  });
  return { ms, status: value };
}

const quantile = (values: number[], q: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
};
const ms = (v: number) => `${v.toFixed(1)} ms`;
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(2)} MiB`;

async function connectionFlood(): Promise<Array<[string, string]>> {
  const { api, url, port } = await startApi(await memoryStore());
  const held: Socket[] = [];
  try {
    // Uploads that send their headers and a few bytes of a body, then nothing.
    const slowBodies = 200;
    const busy: RawAnswer[] = [];
    for (let i = 0; i < slowBodies; i++) {
      const socket = await openSocket(port);
      held.push(socket);
      const answer = i >= DEFAULT_MAX_REQUESTS_IN_PROGRESS ? nextResponse(socket, 2000) : undefined;
      socket.write(
        `POST /v1/exports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\n` +
          'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"ids": [',
      );
      if (answer) busy.push(await answer);
    }
    const tooBusy = busy.filter((a) => a.status === 503).length;
    // Then idle connections and connections that send headers a line at a time, 5,000 of them.
    const attempts = 5000;
    let closedByServer = 0;
    for (let i = 0; i < attempts; i += 100) {
      const batch = await Promise.all(
        Array.from({ length: 100 }, () => openSocket(port).catch(() => undefined)),
      );
      for (const [j, socket] of batch.entries()) {
        if (!socket) continue;
        held.push(socket);
        socket.on('error', () => {});
        socket.on('close', () => closedByServer++);
        if (j % 2 === 1) socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
      }
    }
    const probes: Array<{ ms: number; status: number }> = [];
    for (let i = 0; i < 20; i++) probes.push(await healthz(url));
    const stats = api.stats();
    const ok = probes.filter((p) => p.status === 200).length;
    const latencies = probes.map((p) => p.ms);
    return [
      [
        'slow-body uploads to /v1 (200)',
        `${stats.requestsInProgress} held in progress; ${tooBusy} of ${slowBodies - DEFAULT_MAX_REQUESTS_IN_PROGRESS} others answered 503 too_busy at once`,
      ],
      [
        `idle + slow-header connections (${attempts.toLocaleString('en')})`,
        `${stats.open} open at the server (cap ${DEFAULT_MAX_CONNECTIONS}), ${stats.shed} oldest idle shed, ${stats.dropped} dropped at the cap; ${closedByServer} closed seen by clients`,
      ],
      [
        '/healthz during the flood (20 fresh connections)',
        `${ok}/20 answered 200; latency median ${ms(quantile(latencies, 0.5))}, max ${ms(Math.max(...latencies))}`,
      ],
    ];
  } finally {
    for (const s of held) s.destroy();
    await api.close();
  }
}

async function malformed(): Promise<Array<[string, string]>> {
  const store = await memoryStore();
  const { api, url, port } = await startApi(store);
  try {
    const requests = malformedRequests(1000, TOKEN);
    const kinds = new Set(requests.map((r) => r.kind)).size;
    const { ms: took, value: answers } = await timed(() => sendAll(port, requests, 16));
    const statuses = new Map<string, number>();
    for (const a of answers) {
      const key =
        a.status === undefined ? (a.timedOut ? 'no answer in 5 s' : 'closed, no answer') : String(a.status);
      statuses.set(key, (statuses.get(key) ?? 0) + 1);
    }
    const fiveXX = answers.filter((a) => (a.status ?? 0) >= 500).length;
    const after = await healthz(url);
    return [
      [
        `malformed requests (1,000 of ${kinds} kinds)`,
        `${fiveXX} 5xx; ${[...statuses]
          .sort()
          .map(([k, n]) => `${k}: ${n}`)
          .join(
            ', ',
          )}; ${ms(took)} in all; ${Object.values(await store.countExports()).reduce((a, b) => a + b, 0)} exports added`,
      ],
      ['/healthz after them', `${after.status} in ${ms(after.ms)}`],
    ];
  } finally {
    await api.close();
  }
}

/**
 * A lister and a `/healthz` prober, each in its own worker thread, so that neither client's work
 * runs on the server's event loop: the latency is what a kubelet would see.
 */
const LOAD_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const http = require('node:http');
const { url, token, mode } = workerData;
const agent = new http.Agent({ keepAlive: true });
let stop = false;
parentPort.on('message', () => { stop = true; });
function get(path, keepAlive) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = http.get(url + path, { agent: keepAlive ? agent : false, headers: { authorization: 'Bearer ' + token } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, ms: performance.now() - started, text: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
  });
}
(async () => {
  if (mode === 'probe') {
    const latencies = [];
    while (!stop) {
      const r = await get('/healthz', false);
      latencies.push(r.status === 200 ? r.ms : Infinity);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    parentPort.postMessage(latencies);
    return;
  }
  let pages = 0;
  while (!stop) {
    let cursor = null;
    do {
      const query = mode === 'walk' ? '?limit=10000' + (cursor ? '&cursor=' + cursor : '') : '';
      cursor = JSON.parse((await get('/v1/exports' + query, true)).text).next_cursor;
      pages++;
    } while (cursor && mode === 'walk' && !stop);
  }
  parentPort.postMessage(pages);
})();
`;

async function healthzWhileListing(
  url: string,
  mode: 'default' | 'walk',
  seconds = 5,
): Promise<{ latencies: number[]; pages: number }> {
  const worker = (role: string) =>
    new Worker(LOAD_WORKER, { eval: true, workerData: { url, token: TOKEN, mode: role } });
  const result = <T>(w: Worker) =>
    new Promise<T>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
  const lister = worker(mode);
  const prober = worker('probe');
  const pages = result<number>(lister);
  const latencies = result<number[]>(prober);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  prober.postMessage('stop');
  lister.postMessage('stop');
  const answer = { latencies: await latencies, pages: await pages };
  await Promise.all([lister.terminate(), prober.terminate()]);
  return answer;
}

function describeLatency({ latencies, pages }: { latencies: number[]; pages: number }): string {
  const failed = latencies.filter((l) => !Number.isFinite(l)).length;
  return (
    `${latencies.length - failed}/${latencies.length} answered 200; median ${ms(quantile(latencies, 0.5))}, ` +
    `p99 ${ms(quantile(latencies, 0.99))}, max ${ms(Math.max(...latencies))} (${pages} pages listed meanwhile)`
  );
}

async function bigListing(): Promise<Array<[string, string]>> {
  const store = await memoryStore();
  const ids = Array.from({ length: 200_000 }, (_, i) => `export-${String(i).padStart(6, '0')}`);
  const t0 = Date.now() - 60_000;
  await store.addExports([{ ids, metadata: { team: 'probe', run: 7 } }], t0);
  const changes: ExportChange[] = ids
    .filter((_, i) => i % 3 === 0)
    .map((id) => ({
      id,
      from: 'UNKNOWN',
      to: 'RUNNING',
      at: t0 + 1000,
      misses: 0,
      lastMiss: null,
      export: { id, state: 'RUNNING', destination: { volume: 'v', location: id } },
      error: null,
    }));
  await store.commitChanges(changes, () => null, [], t0 + 1000);
  const { api, url } = await startApi(store);
  const headers = { authorization: `Bearer ${TOKEN}` };
  const fetchPage = async (query: string) => {
    const res = await request(`${url}/v1/exports${query}`, { headers });
    const text = await res.body.text();
    return {
      status: res.statusCode,
      bytes: Buffer.byteLength(text),
      json: JSON.parse(text) as { next_cursor: string | null },
    };
  };
  try {
    const unpaged = await timed(async () => {
      const { items } = await store.pageExports({ limit: ids.length });
      return JSON.stringify({ items: items.map((r) => recordToJson(exportView(r))) }).length;
    });
    const first = await timed(() => fetchPage(''));
    const big = await timed(() => fetchPage('?limit=10000'));
    const walk = await timed(async () => {
      let cursor: string | null = null;
      let pages = 0;
      let bytes = 0;
      do {
        const page = await fetchPage(`?limit=10000${cursor ? `&cursor=${cursor}` : ''}`);
        pages++;
        bytes += page.bytes;
        cursor = page.json.next_cursor;
      } while (cursor);
      return { pages, bytes };
    });
    const listingDefault = await healthzWhileListing(url, 'default');
    const listingBig = await healthzWhileListing(url, 'walk');
    return [
      [
        '(reference) one unpaged answer, 200,000 records',
        `${mib(unpaged.value)} to build, ${ms(unpaged.ms)} (serialising only)`,
      ],
      ['GET /v1/exports (default page, 1,000)', `${ms(first.ms)}, ${mib(first.value.bytes)}`],
      ['GET /v1/exports?limit=10000', `${ms(big.ms)}, ${mib(big.value.bytes)}`],
      ['walk every page, limit=10000', `${walk.value.pages} pages, ${mib(walk.value.bytes)}, ${ms(walk.ms)}`],
      ['/healthz while a client lists default pages', describeLatency(listingDefault)],
      ['/healthz while a client walks limit=10000 pages', describeLatency(listingBig)],
    ];
  } finally {
    await api.close();
  }
}

async function main(): Promise<void> {
  const rows: Array<[string, string]> = [];
  for (const [name, probe] of [
    ['connection flood', connectionFlood],
    ['malformed requests', malformed],
    ['200,000 records', bigListing],
  ] as const) {
    process.stderr.write(`probing: ${name}...\n`);
    rows.push(...(await probe()));
  }
  const width = rows.reduce((w, r) => Math.max(w, r[0].length), 0);
  process.stdout.write(`\ncontrol API with default limits (node ${process.version})\n`);
  process.stdout.write(`${'what'.padEnd(width)} | result\n${'-'.repeat(width)}-|-${'-'.repeat(60)}\n`);
  for (const [what, result] of rows) process.stdout.write(`${what.padEnd(width)} | ${result}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
