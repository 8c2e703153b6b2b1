/**
 * The control API: JSON over HTTP, for other systems to hand the watcher export ids and read what
 * it knows. Also serves `/healthz`, `/readyz` and `/metrics`.
 *
 * Errors are `{"error": {"code", "message", "details"?}}`. A request is validated whole before it
 * changes anything: any invalid part is a 400 and nothing from it is added.
 *
 * Served by fastify (routing, body reading with its size limit, hooks), on a Node server whose
 * limits assume hostile clients. Before any body is read, a request passes, in this order:
 *   1. its target: a path (origin-form) in RFC 3986 characters, or 400, even before the token
 *      check (there is nothing to authorize in a target that names nothing);
 *   2. the bearer token, for `/v1/*` when `apiToken` is set (401);
 *   3. the route (404) and the method (405);
 *   4. the content type, for a body (415);
 *   5. for `/v1/*`, a free slot among `maxRequestsInProgress` (503 `too_busy`, connection closed).
 * An answer given while the client is still sending a body closes the connection, so nobody waits
 * on a body that will not be read. `/healthz`, `/readyz` and `/metrics` take no slot, and the
 * connection guard (connection-guard.ts) keeps room for a new connection under a flood, so a
 * liveness probe is answered while `/v1` is saturated.
 *
 * Logs: no line per request (fastify's request logging is off). A client that goes away before its
 * request is read, and a malformed or timed-out request, are debug lines without a stack; only a
 * failure of our own (a 500) is an error line.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { type IncomingMessage, METHODS, type ServerResponse, STATUS_CODES } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  fastify,
  LogController,
} from 'fastify';
import type { Logger } from 'pino';
import {
  EXPORT_STATES,
  type ExportRecord,
  type ExportState,
  isExportState,
  type PageQuery,
} from '../polling/tracker.js';
import { ConnectionGuard, type ConnectionStats } from './connection-guard.js';

export const EXPORT_ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;
export const MAX_BODY_BYTES = 1024 * 1024;
export const MAX_IDS_PER_REQUEST = 10_000;
export const MAX_METADATA_BYTES = 4096;
/** Nesting of `metadata` at most (the object itself is level 1); checked without recursion. */
export const MAX_METADATA_DEPTH = 32;
/** `GET /v1/exports`: records per page when `limit` is not given, and the most `limit` may ask. */
export const DEFAULT_PAGE_LIMIT = 1000;
export const MAX_PAGE_LIMIT = 10_000;

/** Open connections at most (`server.maxConnections`). */
export const DEFAULT_MAX_CONNECTIONS = 1024;
/**
 * Connections kept free below `maxConnections` by closing the oldest idle ones; the default is
 * this or a sixteenth of `maxConnections`, whichever is less (at least 1).
 */
export const DEFAULT_CONNECTION_HEADROOM = 64;
/** `/v1/*` requests in progress at most; past it a request is answered 503 `too_busy` at once. */
export const DEFAULT_MAX_REQUESTS_IN_PROGRESS = 64;
/** Time to receive a request's headers (Node's `headersTimeout`); also bounds a silent connection. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 10_000;
/** Time to receive a whole request, body included (Node's `requestTimeout`); bodies are ≤ 1 MiB. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
/** How long an idle keep-alive connection stays open. */
export const DEFAULT_KEEP_ALIVE_TIMEOUT_MS = 5000;
/** `Retry-After` of a 503 `too_busy`, in seconds. */
export const TOO_BUSY_RETRY_AFTER_SECONDS = 1;

/** What the control API may do to the watcher. */
export interface WatchRegistry {
  watch(
    ids: readonly string[],
    metadata: Record<string, unknown> | null,
  ): { accepted: string[]; alreadyWatched: string[] };
  unwatch(id: string): boolean;
  get(id: string): ExportRecord | undefined;
  list(state?: ExportState): ExportRecord[];
  /** One page in id order (keyset: ids after `after`), and whether more follow. */
  page(query: PageQuery): { items: ExportRecord[]; more: boolean };
}

export interface HealthProbes {
  /** Liveness: the process is alive and its loop turns. */
  health(): { ok: boolean; reason?: string };
  /** Readiness: the platform accepted the credentials on the last call. */
  ready(): { ok: boolean; reason?: string };
  /** Prometheus text, when metrics are enabled. */
  metrics?(): Promise<{ contentType: string; body: string }>;
}

export interface ControlApiOptions {
  host: string;
  port: number;
  registry: WatchRegistry;
  probes: HealthProbes;
  log: Logger;
  /** When set, every /v1/* request needs `Authorization: Bearer <token>`. */
  apiToken?: string | undefined;
  /** Open connections at most. Default `DEFAULT_MAX_CONNECTIONS`. */
  maxConnections?: number | undefined;
  /** Connections kept free below `maxConnections` by shedding idle ones. See `DEFAULT_CONNECTION_HEADROOM`. */
  connectionHeadroom?: number | undefined;
  /** `/v1/*` requests in progress at most. Default `DEFAULT_MAX_REQUESTS_IN_PROGRESS`. */
  maxRequestsInProgress?: number | undefined;
  /** Default `DEFAULT_HEADERS_TIMEOUT_MS`; at most `requestTimeoutMs`. */
  headersTimeoutMs?: number | undefined;
  /** Default `DEFAULT_REQUEST_TIMEOUT_MS`. */
  requestTimeoutMs?: number | undefined;
  /** Default `DEFAULT_KEEP_ALIVE_TIMEOUT_MS`. */
  keepAliveTimeoutMs?: number | undefined;
}

/** The connection guard's figures, and `/v1` requests in progress. */
export interface ControlApiStats extends ConnectionStats {
  requestsInProgress: number;
}

interface Limits {
  maxConnections: number;
  connectionHeadroom: number;
  maxRequestsInProgress: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
}

/** A record as the API shows it (SPEC "Control API"). */
export function recordToJson(r: ExportRecord): Record<string, unknown> {
  const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
  return {
    id: r.id,
    state: r.state,
    previous_state: r.previousState,
    first_seen_at: iso(r.firstSeenAt),
    state_changed_at: iso(r.stateChangedAt),
    last_checked_at: iso(r.lastCheckedAt),
    checks: r.checks,
    metadata: r.metadata,
    history: r.history.map((h) => ({ state: h.state, at: iso(h.at) })),
    export: r.export,
    error: r.error,
  };
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown[],
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

type Handler = (request: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply>;

interface Route {
  /** Under `/v1`: needs the token, takes a slot among the requests in progress. */
  v1: boolean;
  /** Reads a JSON body (the methods that do are the ones listed in `json`). */
  json?: readonly string[];
  handlers: Readonly<Partial<Record<string, Handler>>>;
}

/**
 * Every method Node's parser accepts has a route, so that none falls outside them (fastify knows a
 * few methods by default and would answer the others from its own fallback, in its own shape).
 * CONNECT never reaches a route: Node closes the connection.
 */
const ALL_METHODS = METHODS.filter((m) => m !== 'CONNECT');

/** How long a connection that sent a malformed request may take to read our answer. */
const CLIENT_ERROR_LINGER_MS = 1000;
const JSON_CONTENT_TYPE = /^application\/(.+\+)?json\b/i;

export class ControlApi {
  readonly #options: ControlApiOptions;
  readonly #limits: Limits;
  readonly #app: FastifyInstance;
  readonly #guard: ConnectionGuard;
  readonly #tokenBuffer: Buffer | undefined;
  readonly #routes: ReadonlyMap<string, Route>;
  /** Requests whose target is not a path, with the reason; they are routed to a 400. */
  readonly #badTargets = new WeakMap<IncomingMessage, string>();
  /** Connections already answered after a malformed request: Node may report one twice. */
  readonly #answered = new WeakSet<Socket>();
  /** `/v1/*` requests admitted and not yet answered. */
  #inProgress = 0;
  #url: string | undefined;
  #closePromise: Promise<void> | undefined;

  constructor(options: ControlApiOptions) {
    this.#options = options;
    this.#limits = resolveLimits(options);
    this.#tokenBuffer = options.apiToken ? Buffer.from(options.apiToken) : undefined;
    const limits = this.#limits;
    const timeouts = {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      // Node checks the header and request timeouts on this period (30 s by default, which would
      // let a silent connection live up to 40 s instead of 10).
      connectionsCheckingInterval: clamp(
        Math.floor(Math.min(limits.headersTimeoutMs, limits.requestTimeoutMs) / 4),
        50,
        5000,
      ),
    };
    const log: FastifyBaseLogger = options.log;
    this.#app = fastify({
      loggerInstance: log,
      logController: new LogController({ disableRequestLogging: true }),
      bodyLimit: MAX_BODY_BYTES,
      http: timeouts,
      // fastify sets these two on the server after creating it; they must agree with the above.
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      exposeHeadRoutes: false,
      // While closing, requests already on a connection are answered as usual (fastify's own 503
      // body would not have our error shape).
      return503OnClosing: false,
      rewriteUrl: (req) => this.#rewrite(req),
      // Targets reach the router already checked; an id of any length is a 404, not a 414.
      routerOptions: { maxParamLength: 64 * 1024 },
      frameworkErrors: (error, request, reply) => {
        this.#sendError(
          request,
          reply,
          new HttpError(400, 'invalid_request', `bad request: ${error.message}`),
        );
      },
      clientErrorHandler: (error, socket) => this.#onClientError(error, socket),
    });
    this.#guard = new ConnectionGuard(this.#app.server, {
      maxConnections: limits.maxConnections,
      headroom: limits.connectionHeadroom,
      log: options.log,
    });
    this.#routes = this.#buildRoutes();
    this.#setUp();
  }

  /** Listens; resolves the base URL (`http://host:port`). The chosen port is logged. */
  async listen(): Promise<string> {
    if (this.#url) return this.#url;
    await this.#app.ready();
    const server = this.#app.server;
    // Node's own listen, so that a taken port rejects with Node's error and its `code`.
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#options.port, this.#options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const address = server.address() as AddressInfo;
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    this.#url = `http://${host}:${address.port}`;
    this.#options.log.info(
      {
        url: this.#url,
        auth: this.#tokenBuffer !== undefined,
        max_connections: this.#limits.maxConnections,
        connection_headroom: this.#limits.connectionHeadroom,
        max_requests_in_progress: this.#limits.maxRequestsInProgress,
        headers_timeout_ms: this.#limits.headersTimeoutMs,
        request_timeout_ms: this.#limits.requestTimeoutMs,
        keep_alive_timeout_ms: this.#limits.keepAliveTimeoutMs,
      },
      'control API listening',
    );
    return this.#url;
  }

  get url(): string | undefined {
    return this.#url;
  }

  /** Open connections, requests in progress, connections shed and dropped. */
  stats(): ControlApiStats {
    return { ...this.#guard.stats(), requestsInProgress: this.#inProgress };
  }

  /** Stops accepting requests and closes idle connections. Idempotent. */
  close(): Promise<void> {
    this.#closePromise ??= this.#app.close().then(() => undefined);
    return this.#closePromise;
  }

  /** Drops every connection, requests in progress included (after a shutdown deadline). */
  closeAllConnections(): void {
    this.#app.server.closeAllConnections();
  }

  #buildRoutes(): Map<string, Route> {
    const probe =
      (check: () => { ok: boolean; reason?: string }): Handler =>
      async (_request, reply) => {
        const result = check();
        if (result.ok) return sendJson(reply, 200, { status: 'ok' });
        return sendJson(reply, 503, { status: 'unavailable', reason: result.reason ?? 'not ready' });
      };
    const health = probe(() => this.#options.probes.health());
    const ready = probe(() => this.#options.probes.ready());
    return new Map<string, Route>([
      ['/healthz', { v1: false, handlers: { GET: health, HEAD: health } }],
      ['/readyz', { v1: false, handlers: { GET: ready, HEAD: ready } }],
      ['/metrics', { v1: false, handlers: { GET: (_request, reply) => this.#metrics(reply) } }],
      [
        '/v1/exports',
        {
          v1: true,
          json: ['POST'],
          handlers: {
            GET: async (request, reply) => this.#list(request, reply),
            POST: async (request, reply) => this.#add(request, reply),
          },
        },
      ],
      [
        '/v1/exports/:id',
        {
          v1: true,
          handlers: {
            GET: async (request, reply) => this.#getOne(request, reply),
            DELETE: async (request, reply) => this.#remove(request, reply),
          },
        },
      ],
    ]);
  }

  #setUp(): void {
    const app = this.#app;
    for (const method of ALL_METHODS) {
      if (!app.supportedMethods.includes(method)) app.addHttpMethod(method, { hasBody: true });
    }
    app.addHook('onRequest', async (request, reply) => this.#admit(request, reply));
    app.addHook('onSend', async (request, reply, payload) => {
      if (bodyPending(request.raw)) reply.header('connection', 'close');
      return payload;
    });
    app.setErrorHandler((error, request, reply) => this.#onError(error, request, reply));
    app.setNotFoundHandler(async () => {
      throw new HttpError(404, 'not_found', 'no such route');
    });
    // Routes that take no body never read one (Node discards what is left after the answer).
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('*', (_request, _payload, done) => done(null, undefined));
    const route = (scope: FastifyInstance, url: string, spec: Route) =>
      scope.route({
        method: ALL_METHODS,
        url,
        handler: (request, reply) => {
          const handler = spec.handlers[request.method];
          // #admit answered 405 already; this is a second line of defence.
          if (!handler) throw methodNotAllowed(Object.keys(spec.handlers).join(', '));
          return handler(request, reply);
        },
      });
    const plain = [...this.#routes].filter(([, spec]) => !spec.json);
    const withBody = [...this.#routes].filter(([, spec]) => spec.json);
    for (const [url, spec] of plain) route(app, url, spec);
    app.register(async (scope) => {
      scope.removeAllContentTypeParsers();
      // Any content type reaches this parser: #admit has already refused the ones that are not
      // JSON, before a byte of the body was read. fastify enforces the size limit (413).
      scope.addContentTypeParser('*', { parseAs: 'string' }, (_request, body, done) => {
        done(null, parseJsonBody(body as string));
      });
      for (const [url, spec] of withBody) route(scope, url, spec);
    });
  }

  /** Maps a raw target to what the router sees; a target that is not a path goes to a 400. */
  #rewrite(req: IncomingMessage): string {
    const target = parseTarget(req.url ?? '');
    if (typeof target === 'string') return target;
    this.#badTargets.set(req, target.problem);
    return '/';
  }

  /** Steps 1 to 5 of the header comment: everything decided before a body is read. */
  async #admit(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const badTarget = this.#badTargets.get(request.raw);
    if (badTarget !== undefined) {
      throw new HttpError(400, 'invalid_request', `the request target is not a valid path: ${badTarget}`);
    }
    const route = request.is404 ? undefined : this.#routes.get(request.routeOptions.url ?? '');
    const path = pathOf(request.originalUrl);
    if (route ? route.v1 : path === '/v1' || path.startsWith('/v1/')) this.#authorize(request.raw);
    if (!route) throw new HttpError(404, 'not_found', `no route ${request.method} ${clip(path)}`);
    const method = request.method;
    if (!route.handlers[method]) throw methodNotAllowed(Object.keys(route.handlers).join(', '));
    if (route.json?.includes(method)) checkContentType(request.headers['content-type']);
    if (route.v1) this.#takeSlot(reply);
  }

  #takeSlot(reply: FastifyReply): void {
    const max = this.#limits.maxRequestsInProgress;
    if (this.#inProgress >= max) {
      throw new HttpError(
        503,
        'too_busy',
        `${max} requests are already in progress; retry in ${TOO_BUSY_RETRY_AFTER_SECONDS} s`,
        undefined,
        { 'retry-after': String(TOO_BUSY_RETRY_AFTER_SECONDS), connection: 'close' },
      );
    }
    this.#inProgress++;
    // 'close' comes once the answer is sent or the connection is gone, whichever is first.
    reply.raw.once('close', () => this.#inProgress--);
  }

  #authorize(req: IncomingMessage): void {
    if (!this.#tokenBuffer) return;
    const header = req.headers.authorization ?? '';
    const match = /^Bearer\s+(.+)$/i.exec(header);
    const given = Buffer.from(match?.[1]?.trim() ?? '');
    // Hash both sides so the comparison takes the same time whatever the lengths.
    const ok = timingSafeEqual(digest(given), digest(this.#tokenBuffer));
    if (!ok) {
      throw new HttpError(
        401,
        'unauthorized',
        'a valid "Authorization: Bearer <token>" header is required',
        undefined,
        {
          'www-authenticate': 'Bearer realm="sbg-export-watcher"',
        },
      );
    }
  }

  async #metrics(reply: FastifyReply): Promise<FastifyReply> {
    if (!this.#options.probes.metrics) throw new HttpError(404, 'not_found', 'metrics are not enabled');
    const { contentType, body } = await this.#options.probes.metrics();
    return reply.code(200).type(contentType).send(body);
  }

  #add(request: FastifyRequest, reply: FastifyReply): FastifyReply {
    // No body at all (no content type, no length) skips the parser.
    const body = request.body === undefined ? parseJsonBody('') : request.body;
    const { ids, metadata } = validateAddRequest(body);
    const result = this.#options.registry.watch(ids, metadata);
    return sendJson(reply, 202, { accepted: result.accepted, already_watched: result.alreadyWatched });
  }

  #list(request: FastifyRequest, reply: FastifyReply): FastifyReply {
    const query = parsePageQuery(new URLSearchParams(queryOf(request.url)));
    const page = this.#options.registry.page(query);
    const last = page.items.at(-1);
    return sendJson(reply, 200, {
      items: page.items.map(recordToJson),
      next_cursor: page.more && last ? encodeCursor(last.id) : null,
    });
  }

  #getOne(request: FastifyRequest, reply: FastifyReply): FastifyReply {
    const id = idParam(request);
    const record = EXPORT_ID_PATTERN.test(id) ? this.#options.registry.get(id) : undefined;
    if (!record) throw exportNotFound(id);
    return sendJson(reply, 200, recordToJson(record));
  }

  #remove(request: FastifyRequest, reply: FastifyReply): FastifyReply {
    const id = idParam(request);
    if (!EXPORT_ID_PATTERN.test(id) || !this.#options.registry.unwatch(id)) throw exportNotFound(id);
    return reply.code(204).send();
  }

  #onError(thrown: unknown, request: FastifyRequest, reply: FastifyReply): void {
    const error: Error & { code?: string } = thrown instanceof Error ? thrown : new Error(String(thrown));
    if (clientGone(request.raw, error)) {
      // Nobody is left to answer, and it is the client's doing: not worth more than a debug line.
      this.#options.log.debug(
        { code: error.code, method: request.method, path: clip(pathOf(request.originalUrl)) },
        'client closed the connection before its request was read',
      );
      // An answer nobody will read: it only ends fastify's handling of the request.
      this.#sendError(request, reply, new HttpError(400, 'invalid_request', 'the connection closed'));
      return;
    }
    const known = toHttpError(error);
    if (!known) {
      this.#options.log.error({ err: error }, 'control API request failed');
      this.#sendError(request, reply, new HttpError(500, 'internal_error', 'internal error'));
      return;
    }
    this.#sendError(request, reply, known);
  }

  #sendError(request: FastifyRequest, reply: FastifyReply, error: HttpError): void {
    if (reply.sent) return;
    const body: { code: string; message: string; details?: unknown[] } = {
      code: error.code,
      message: error.message,
    };
    if (error.details) body.details = error.details;
    reply.headers(error.headers);
    if (bodyPending(request.raw)) reply.header('connection', 'close');
    sendJson(reply, error.status, { error: body });
  }

  /**
   * A request Node could not parse (garbage, headers over 16 KiB) or that was not received in
   * time: answered with our error shape straight on the socket, which is then closed.
   */
  #onClientError(error: Error & { code?: string }, socket: Socket): void {
    if (error.code === 'ECONNRESET' || socket.destroyed || this.#answered.has(socket)) return;
    this.#answered.add(socket);
    const timedOut = error.code === 'ERR_HTTP_REQUEST_TIMEOUT';
    const [status, code, message] = timedOut
      ? [408, 'request_timeout', 'the request was not received in time']
      : error.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'headers_too_large', 'the request headers are too large']
        : [400, 'invalid_request', 'the request is not valid HTTP/1.1'];
    this.#options.log.debug(
      { code: error.code, status },
      'malformed or timed-out request; connection closed',
    );
    // Node's own check: a response already under way on this connection cannot be followed by ours.
    const inProgress = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (!socket.writable || inProgress?.headersSent) {
      socket.destroy();
      return;
    }
    const text = JSON.stringify({ error: { code, message } });
    const answer =
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\ncontent-type: application/json; charset=utf-8\r\n` +
      `content-length: ${Buffer.byteLength(text)}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n${text}`;
    if (timedOut) {
      // The parser is still reading this request: were the rest of it to arrive, it would be acted
      // on after we answered 408. Closed at once, as Node does.
      socket.write(answer);
      socket.destroy();
      return;
    }
    // The parser has failed and reads nothing more. Closing at once, with bytes of the request
    // still unread, could reset the connection before the client reads the answer; leaving it
    // open would hand the socket to the client: it gets a moment, then is closed.
    socket.end(answer);
    const timer = setTimeout(() => socket.destroy(), CLIENT_ERROR_LINGER_MS);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
  }
}

/** Validates a `POST /v1/exports` body whole; throws a 400 listing every problem. */
export function validateAddRequest(body: unknown): {
  ids: string[];
  metadata: Record<string, unknown> | null;
} {
  if (!isPlainObject(body)) {
    throw new HttpError(400, 'invalid_request', 'the body must be a JSON object like {"ids": ["..."]}');
  }
  const details: Array<{ field: string; problem: string }> = [];
  for (const key of Object.keys(body)) {
    if (key !== 'ids' && key !== 'metadata') details.push({ field: clip(key), problem: 'unknown field' });
  }
  const ids = body.ids;
  if (!Array.isArray(ids)) {
    details.push({ field: 'ids', problem: 'must be an array of export ids' });
  } else if (ids.length < 1 || ids.length > MAX_IDS_PER_REQUEST) {
    details.push({ field: 'ids', problem: `must hold 1 to ${MAX_IDS_PER_REQUEST} ids, got ${ids.length}` });
  } else {
    let bad = 0;
    ids.forEach((id, i) => {
      if (typeof id !== 'string' || !EXPORT_ID_PATTERN.test(id)) {
        // Enough to fix the request without echoing thousands of lines back.
        if (bad++ < 20) details.push({ field: `ids[${i}]`, problem: 'must match ^[A-Za-z0-9_-]{1,128}$' });
      }
    });
    if (bad > 20) details.push({ field: 'ids', problem: `${bad - 20} more invalid ids not listed` });
  }
  let metadata: Record<string, unknown> | null = null;
  if (body.metadata !== undefined && body.metadata !== null) {
    if (!isPlainObject(body.metadata)) {
      details.push({ field: 'metadata', problem: 'must be a JSON object' });
    } else if (nestingExceeds(body.metadata, MAX_METADATA_DEPTH)) {
      // Checked before JSON.stringify below, which recurses and would overflow the stack.
      details.push({
        field: 'metadata',
        problem: `must be nested at most ${MAX_METADATA_DEPTH} levels deep`,
      });
    } else {
      const size = Buffer.byteLength(JSON.stringify(body.metadata));
      if (size > MAX_METADATA_BYTES) {
        details.push({
          field: 'metadata',
          problem: `must be at most ${MAX_METADATA_BYTES} bytes as JSON, got ${size}`,
        });
      }
      metadata = body.metadata;
    }
  }
  if (details.length > 0) {
    throw new HttpError(400, 'invalid_request', 'the request is invalid; nothing was added', details);
  }
  return { ids: ids as string[], metadata };
}

/** Whether a JSON value nests objects or arrays deeper than `limit` (itself is level 1). Iterative. */
function nestingExceeds(value: unknown, limit: number): boolean {
  const stack: Array<{ value: unknown; depth: number }> = [{ value, depth: 1 }];
  for (let item = stack.pop(); item !== undefined; item = stack.pop()) {
    if (typeof item.value !== 'object' || item.value === null) continue;
    if (item.depth > limit) return true;
    const children = Array.isArray(item.value) ? item.value : Object.values(item.value);
    for (const child of children) {
      if (typeof child === 'object' && child !== null) stack.push({ value: child, depth: item.depth + 1 });
    }
  }
  return false;
}

/** `limit`, `cursor` and `state` of `GET /v1/exports`; every problem is reported at once. */
function parsePageQuery(query: URLSearchParams): PageQuery {
  const details: Array<{ field: string; problem: string }> = [];
  const single = (name: string): string | undefined => {
    const values = query.getAll(name);
    if (values.length <= 1) return values[0];
    details.push({ field: name, problem: 'must be given at most once' });
    return undefined;
  };
  const stateText = single('state');
  const limitText = single('limit');
  const cursor = single('cursor');
  let state: ExportState | undefined;
  if (stateText !== undefined) {
    if (isExportState(stateText)) state = stateText;
    else {
      details.push({
        field: 'state',
        problem: `must be one of ${EXPORT_STATES.join(', ')}; got ${JSON.stringify(clip(stateText))}`,
      });
    }
  }
  let limit = DEFAULT_PAGE_LIMIT;
  if (limitText !== undefined) {
    const n = /^\d{1,6}$/.test(limitText) ? Number(limitText) : Number.NaN;
    if (n >= 1 && n <= MAX_PAGE_LIMIT) limit = n;
    else {
      details.push({
        field: 'limit',
        problem: `must be a whole number from 1 to ${MAX_PAGE_LIMIT}; got ${JSON.stringify(clip(limitText))}`,
      });
    }
  }
  let after: string | undefined;
  if (cursor !== undefined) {
    after = decodeCursor(cursor);
    if (after === undefined) {
      details.push({ field: 'cursor', problem: 'must be a next_cursor from a previous page' });
    }
  }
  if (details.length > 0) {
    // A wrong state alone keeps the code it always had.
    const onlyState = details.every((d) => d.field === 'state');
    const message = `invalid query: ${details.map((d) => `${d.field} ${d.problem}`).join('; ')}`;
    throw new HttpError(400, onlyState ? 'invalid_state' : 'invalid_request', message, details);
  }
  return { state, after, limit };
}

/** A page cursor: base64url of the last id of the page (opaque to clients). */
function encodeCursor(id: string): string {
  return Buffer.from(id, 'utf8').toString('base64url');
}

/** The id a cursor stands for, or undefined when it is not one of ours. */
function decodeCursor(cursor: string): string | undefined {
  if (!/^[A-Za-z0-9_-]{1,172}$/.test(cursor)) return undefined;
  const id = Buffer.from(cursor, 'base64url').toString('utf8');
  // Node's decoder is lenient; only the exact encoding of a valid id is a cursor.
  return EXPORT_ID_PATTERN.test(id) && encodeCursor(id) === cursor ? id : undefined;
}

function parseJsonBody(text: string): unknown {
  if (text.trim() === '')
    throw new HttpError(400, 'invalid_json', 'the body is empty; expected a JSON object');
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new HttpError(400, 'invalid_json', `the body is not valid JSON: ${(error as Error).message}`);
  }
}

function checkContentType(type: string | undefined): void {
  if (type === undefined || type === '' || JSON_CONTENT_TYPE.test(type)) return;
  throw new HttpError(
    415,
    'unsupported_media_type',
    `content-type must be application/json, got ${JSON.stringify(clip(type))}`,
  );
}

/** fastify's own errors, as ours; undefined for a failure that is not the client's. */
function toHttpError(error: Error & { code?: string; statusCode?: number }): HttpError | undefined {
  if (error instanceof HttpError) return error;
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new HttpError(413, 'payload_too_large', `the body is larger than ${MAX_BODY_BYTES} bytes`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new HttpError(415, 'unsupported_media_type', 'content-type must be application/json');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new HttpError(400, 'invalid_request', 'the body does not match its Content-Length');
  }
  const status = error.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new HttpError(400, 'invalid_request', `the request could not be read: ${error.message}`);
  }
  return undefined;
}

/**
 * A request target as the router should see it: the path with trailing slashes removed and each
 * segment in one canonical encoding, the query as sent. Or why it is not a path. Never throws.
 *
 * A segment whose percent-encoding is malformed (`%ZZ`, a cut UTF-8 sequence) is kept as text, so
 * `/v1/exports/%ZZ` is an id that is not watched (404), not a failure of the router.
 */
function parseTarget(target: string): string | { problem: string } {
  if (target === '*') return { problem: 'the asterisk form ("*") is not served' };
  if (!target.startsWith('/')) return { problem: 'it must be a path starting with "/" (origin-form)' };
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  const query = q === -1 ? '' : target.slice(q);
  // RFC 3986: pchar and "/" in a path; also "?" in a query.
  if (!/^[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$/.test(path)) {
    return { problem: 'the path holds characters that must be percent-encoded' };
  }
  if (!/^[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*$/.test(query)) {
    return { problem: 'the query holds characters that must be percent-encoded' };
  }
  const trimmed = path.replace(/\/+$/, '') || '/';
  const canonical = trimmed
    .split('/')
    .map((segment) => encodeURIComponent(decodeOr(segment)))
    .join('/');
  return canonical + query;
}

function decodeOr(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

function queryOf(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? '' : url.slice(q + 1);
}

function idParam(request: FastifyRequest): string {
  return (request.params as { id?: string }).id ?? '';
}

/** The client has sent, or announced, a body that has not all arrived. */
function bodyPending(req: IncomingMessage): boolean {
  const declared = req.headers['content-length'];
  const hasBody =
    req.headers['transfer-encoding'] !== undefined || (declared !== undefined && declared !== '0');
  return hasBody && !req.complete;
}

function clientGone(req: IncomingMessage, error: Error & { code?: string }): boolean {
  return (
    error.code === 'ECONNRESET' ||
    error.code === 'ERR_STREAM_PREMATURE_CLOSE' ||
    req.socket === null ||
    req.socket.destroyed
  );
}

function sendJson(reply: FastifyReply, status: number, body: unknown): FastifyReply {
  return reply
    .code(status)
    .header('cache-control', 'no-store')
    .type('application/json; charset=utf-8')
    .send(JSON.stringify(body));
}

function resolveLimits(options: ControlApiOptions): Limits {
  const maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  const limits: Limits = {
    maxConnections,
    connectionHeadroom:
      options.connectionHeadroom ??
      Math.max(1, Math.min(DEFAULT_CONNECTION_HEADROOM, Math.floor(maxConnections / 16))),
    maxRequestsInProgress: options.maxRequestsInProgress ?? DEFAULT_MAX_REQUESTS_IN_PROGRESS,
    headersTimeoutMs: options.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS,
    requestTimeoutMs: options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
    keepAliveTimeoutMs: options.keepAliveTimeoutMs ?? DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
  };
  const problems: string[] = [];
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isInteger(value) || value < 1)
      problems.push(`${name} must be a whole number ≥ 1, got ${value}`);
  }
  if (limits.maxConnections < 2) problems.push(`maxConnections must be at least 2, got ${maxConnections}`);
  if (limits.connectionHeadroom >= limits.maxConnections) {
    problems.push(
      `connectionHeadroom must be below maxConnections (${maxConnections}), got ${limits.connectionHeadroom}`,
    );
  }
  if (limits.headersTimeoutMs > limits.requestTimeoutMs) {
    problems.push(
      `headersTimeoutMs must be at most requestTimeoutMs (${limits.requestTimeoutMs}), got ${limits.headersTimeoutMs}`,
    );
  }
  if (problems.length > 0) throw new RangeError(`invalid control API options: ${problems.join('; ')}`);
  return limits;
}

function digest(value: Buffer): Buffer {
  return createHash('sha256').update(value).digest();
}

function methodNotAllowed(allow: string): HttpError {
  return new HttpError(405, 'method_not_allowed', `allowed methods: ${allow}`, undefined, { allow });
}

function exportNotFound(id: string): HttpError {
  return new HttpError(404, 'export_not_found', `export ${JSON.stringify(clip(id))} is not watched`);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A client's text, shortened for an error message. */
function clip(text: string, max = 200): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, value));
}
