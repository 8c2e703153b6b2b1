/**
 * The control API: JSON over HTTP, for other systems to hand the watcher export and import ids,
 * read what it knows (jobs, their events and each event's deliveries) and ask for events to be
 * delivered again. Also serves `/healthz`, `/readyz` and `/metrics`.
 *
 * `/v1/exports` and `/v1/imports` are the same routes for the two kinds of job: the same bodies,
 * answers and errors, a record carrying `import` where an export's carries `export`. An id watched
 * as one kind is refused as the other (409 `kind_conflict`), since an id is unique across kinds.
 *
 * Errors are `{"error": {"code", "message", "details"?}}`. A request is validated whole before it
 * changes anything: any invalid part is a 400 and nothing from it is acted on. Every `/v1` route
 * names the query parameters it takes; any other is a 400, so that a misspelt filter is never
 * silently ignored.
 *
 * Served by fastify (routing, body reading with its size limit, hooks), on a Node server whose
 * limits assume hostile clients. Before any body is read, a request passes, in this order:
 *   1. its target: a path (origin-form) in RFC 3986 characters, or 400, even before the token
 *      check (there is nothing to authorize in a target that names nothing);
 *   2. the bearer token, for `/v1/*` when `apiToken` is set (401);
 *   3. the route (404) and the method (405);
 *   4. an `Expect` other than `100-continue` (417);
 *   5. the body as announced: over 1 MiB (413); any body to a route that takes none (400); a
 *      content type other than JSON (415);
 *   6. for `/v1/*`, a free slot among `maxRequestsInProgress` (503 `too_busy`, connection closed);
 *      a page of more than `DEFAULT_PAGE_LIMIT` records takes a slot per started thousand, since
 *      building and serializing it is synchronous work (~0.2 s for 10,000 records) that the
 *      event loop, and `/healthz` with it, waits behind.
 * Node's own handling of `Expect` (an immediate `100 Continue`, or a bare 417) is replaced, so that
 * a client is invited to send its body only once the request has passed all of these.
 * An answer given while the client is still sending a body closes the connection, so nobody waits
 * on a body that will not be read. An answer the client stops reading is bounded too: when its
 * writing makes no progress for `answerStallTimeoutMs`, the connection is closed (a slot is held
 * until the answer is handed off or the connection is gone). `/healthz`, `/readyz` and `/metrics`
 * take no slot, and the connection guard (connection-guard.ts) keeps room for a new connection
 * under a flood, so a liveness probe is answered while `/v1` is saturated.
 *
 * The registry behind the routes is asynchronous (it reads and writes the store); a registry that
 * fails is a failure of our own: a 500 and one error line.
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
import { kindOfEventType } from '../delivery/events.js';
import {
  EXPORT_ID_PATTERN,
  EXPORT_STATES,
  type ExportState,
  isExportState,
  type JobKind,
  type PlatformExport,
} from '../polling/tracker.js';
import type { PlatformErrorBody } from '../shared/errors.js';
import { safeUrl, shownUrl } from '../shared/redact.js';
import { isPlainObject } from '../shared/values.js';
import {
  DELIVERY_STATUSES,
  type DeliveryStatus,
  type EventQuery,
  type ExportPageQuery,
  type StoredDelivery,
  type StoredEvent,
  webhookTwin,
} from '../store/store.js';
import { ConnectionGuard, type ConnectionStats } from './connection-guard.js';

export { EXPORT_ID_PATTERN };
export const MAX_BODY_BYTES = 1024 * 1024;
export const MAX_IDS_PER_REQUEST = 10_000;
export const MAX_METADATA_BYTES = 4096;
/** Nesting of `metadata` at most (the object itself is level 1); checked without recursion. */
export const MAX_METADATA_DEPTH = 32;
/** `GET /v1/exports`: records per page when `limit` is not given, and the most `limit` may ask. */
export const DEFAULT_PAGE_LIMIT = 1000;
export const MAX_PAGE_LIMIT = 10_000;
/**
 * A webhook-id in a path: `evt_<export id>_<completed|failed|lost|running>` fits; anything else
 * names no event and is a 404 without a lookup.
 */
export const WEBHOOK_ID_PATTERN = /^[A-Za-z0-9_-]{1,160}$/;
/** `GET /v1/events`: events per page when `limit` is not given, and the most `limit` may ask. */
export const DEFAULT_EVENT_PAGE_LIMIT = 100;
export const MAX_EVENT_PAGE_LIMIT = 1000;
/** The longest `endpoint` a redelivery may name (a configured URL, or its label). */
export const MAX_ENDPOINT_LENGTH = 2048;

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
/**
 * How long writing an answer may make no progress (a client that stopped reading) before the
 * connection is closed: such a client would otherwise hold its `/v1` slot and its connection for
 * as long as it likes.
 */
export const DEFAULT_ANSWER_STALL_TIMEOUT_MS = 30_000;
/** `Retry-After` of a 503 `too_busy`, in seconds. */
export const TOO_BUSY_RETRY_AFTER_SECONDS = 1;

/** An export as the API shows it: what the store keeps, and the check figures held in memory. */
export interface ExportView {
  id: string;
  /** `import` for an import; absent for an export. */
  kind?: JobKind;
  state: ExportState;
  previousState: ExportState | null;
  firstSeenAt: number;
  stateChangedAt: number;
  /** When the platform last answered about it; null until then (and after a restart). */
  lastCheckedAt: number | null;
  checks: number;
  metadata: Record<string, unknown> | null;
  history: Array<{ state: ExportState; at: number }>;
  /** The platform's last object for the job, or null. */
  export: PlatformExport | null;
  /** Why it ended FAILED or LOST; null otherwise. */
  error: PlatformErrorBody | null;
  /** Its events with their deliveries, for `GET /v1/exports/{id}` only (a listing leaves them out). */
  events?: StoredEvent[];
}

/** What the control API may do to the watcher. Every call may reject (a store failure): a 500. */
export interface WatchRegistry {
  /**
   * Watches ids of one kind (default `export`). `conflicts`: ids watched as the other kind; when
   * there is any, nothing of the request was added.
   */
  watch(
    ids: readonly string[],
    metadata: Record<string, unknown> | null,
    kind?: JobKind,
  ): Promise<{ accepted: string[]; alreadyWatched: string[]; conflicts?: string[] }>;
  unwatch(id: string, kind?: JobKind): Promise<boolean>;
  /** The job of this kind (default `export`) with its events. */
  get(id: string, kind?: JobKind): Promise<ExportView | undefined>;
  /** One page of one kind (`query.kind`, default export) in id order (keyset: ids after `after`). */
  page(query: ExportPageQuery): Promise<{ items: ExportView[]; more: boolean }>;
  /** One page of events, newest first (keyset on createdAt and id), and whether more follow. */
  events(query: EventQuery): Promise<{ items: StoredEvent[]; more: boolean }>;
  /**
   * A new attempt series for one event: to every configured endpoint, or to the one given (its URL
   * as configured, or its label: the URL without credentials, query or fragment).
   */
  redeliver(
    eventId: string,
    endpoint?: string,
  ): Promise<{ deliveries: number } | 'unknown_event' | 'unknown_endpoint'>;
  /** A new attempt series for every delivery in `status` of an event created at or after `since`. */
  redeliverSince(since: number, status: DeliveryStatus): Promise<{ deliveries: number }>;
}

export interface HealthProbes {
  /** Liveness: the process is alive and its loop turns. */
  health(): { ok: boolean; reason?: string };
  /**
   * Readiness: the platform accepted the credentials on the last call. `role`, when given, is shown
   * in the answer either way (`leader`, `follower`, `disconnected`: the replica's part).
   */
  ready(): { ok: boolean; reason?: string; role?: string };
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
  /** Default `DEFAULT_ANSWER_STALL_TIMEOUT_MS`. */
  answerStallTimeoutMs?: number | undefined;
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
  answerStallTimeoutMs: number;
}

/**
 * A record as the API shows it (README "Control API"); with its events when the view has them. An
 * import's record carries the platform's object as `import`, an export's as `export`.
 */
export function recordToJson(r: ExportView): Record<string, unknown> {
  const json: Record<string, unknown> = {
    id: r.id,
    state: r.state,
    previous_state: r.previousState,
    first_seen_at: iso(r.firstSeenAt),
    state_changed_at: iso(r.stateChangedAt),
    last_checked_at: iso(r.lastCheckedAt),
    checks: r.checks,
    metadata: r.metadata,
    history: r.history.map((h) => ({ state: h.state, at: iso(h.at) })),
    [r.kind ?? 'export']: r.export,
    error: r.error,
  };
  if (r.events) json.events = r.events.map(eventToJson);
  return json;
}

/**
 * An event as the API shows it: the body as sent, and its delivery to each endpoint. An import's
 * event names its job `import_id`, an export's `export_id`.
 */
export function eventToJson(e: StoredEvent): Record<string, unknown> {
  return {
    id: e.id,
    type: e.type,
    [`${kindOfEventType(e.type)}_id`]: e.exportId,
    created_at: iso(e.createdAt),
    body: JSON.parse(e.body),
    deliveries: e.deliveries.map(deliveryToJson),
  };
}

/**
 * One delivery, named by the endpoint's label, never its URL or key: a configured URL may carry a
 * token. The label and the last error pass `safeUrl` all the same, so that a URL with credentials
 * that reached either is shown without them.
 */
function deliveryToJson(d: StoredDelivery): Record<string, unknown> {
  return {
    endpoint: safeUrl(d.endpointLabel),
    status: d.status,
    attempts: d.attempts,
    // A claimed delivery's stored time is its lease's end (15 minutes out), not its next attempt:
    // one is under way, and the next, if any, is not stored yet.
    next_attempt_at: d.leased ? null : iso(d.nextAttemptAt),
    series_started_at: iso(d.seriesStartedAt),
    last_status: d.lastStatus,
    last_error: d.lastError === null ? null : safeUrl(d.lastError),
    finished_at: iso(d.finishedAt),
  };
}

function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
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
/**
 * `application/json` or a `+json` type, with parameters or none: `application/json-seq` or
 * `application/json.x` is another media type. Node has already trimmed the value.
 */
const JSON_CONTENT_TYPE = /^application\/(?:[A-Za-z0-9!#$&^_.+-]+\+)?json[ \t]*(?:;(.*))?$/i;
/** A `charset` parameter of a content type, its value possibly quoted. */
const CHARSET_PARAMETER = /(?:^|;)[ \t]*charset[ \t]*=[ \t]*("?)([^";]*)\1[ \t]*(?=;|$)/i;

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
  /** Slots the `/v1` requests in progress hold: one each, more for a large page (`slotsFor`). */
  #slotsInUse = 0;
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
        answer_stall_timeout_ms: this.#limits.answerStallTimeoutMs,
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
      (check: () => { ok: boolean; reason?: string; role?: string }): Handler =>
      async (_request, reply) => {
        const result = check();
        const role = result.role === undefined ? {} : { role: result.role };
        if (result.ok) return sendJson(reply, 200, { status: 'ok', ...role });
        return sendJson(reply, 503, { status: 'unavailable', reason: result.reason ?? 'not ready', ...role });
      };
    const health = probe(() => this.#options.probes.health());
    const ready = probe(() => this.#options.probes.ready());
    return new Map<string, Route>([
      ['/healthz', { v1: false, handlers: { GET: health, HEAD: health } }],
      ['/readyz', { v1: false, handlers: { GET: ready, HEAD: ready } }],
      ['/metrics', { v1: false, handlers: { GET: (_request, reply) => this.#metrics(reply) } }],
      ...(['export', 'import'] as const).flatMap(
        (kind): Array<[string, Route]> => [
          [
            `/v1/${kind}s`,
            {
              v1: true,
              json: ['POST'],
              handlers: {
                GET: async (request, reply) => this.#list(request, reply, kind),
                POST: async (request, reply) => this.#add(request, reply, kind),
              },
            },
          ],
          [
            `/v1/${kind}s/:id`,
            {
              v1: true,
              handlers: {
                GET: async (request, reply) => this.#getOne(request, reply, kind),
                DELETE: async (request, reply) => this.#remove(request, reply, kind),
              },
            },
          ],
        ],
      ),
      ['/v1/events', { v1: true, handlers: { GET: async (request, reply) => this.#events(request, reply) } }],
      // A path of its own, one segment shorter than the next: never taken for a webhook-id.
      [
        '/v1/events/redeliver',
        {
          v1: true,
          json: ['POST'],
          handlers: { POST: async (request, reply) => this.#redeliverSince(request, reply) },
        },
      ],
      [
        '/v1/events/:id/redeliver',
        {
          v1: true,
          json: ['POST'],
          handlers: { POST: async (request, reply) => this.#redeliver(request, reply) },
        },
      ],
    ]);
  }

  #setUp(): void {
    const app = this.#app;
    for (const method of ALL_METHODS) {
      if (!app.supportedMethods.includes(method)) app.addHttpMethod(method, { hasBody: true });
    }
    // Node would answer an `Expect` header itself, before any check of ours: `100 Continue` at once
    // (inviting a body the token check may then refuse) or a bare 417 without our error shape.
    // With these listeners it hands such requests over; #admit decides, and sends `100 Continue`
    // only to a request it has admitted.
    const server = app.server;
    const handOver = (req: IncomingMessage, res: ServerResponse) => server.emit('request', req, res);
    server.on('checkContinue', handOver);
    server.on('checkExpectation', handOver);
    app.addHook('onRequest', async (request, reply) => {
      this.#watchAnswer(request, reply);
      return this.#admit(request, reply);
    });
    app.addHook('onSend', async (request, reply, payload) => {
      if (bodyPending(request.raw)) reply.header('connection', 'close');
      return payload;
    });
    app.setErrorHandler((error, request, reply) => this.#onError(error, request, reply));
    app.setNotFoundHandler(async () => {
      throw new HttpError(404, 'not_found', 'no such route');
    });
    // Routes that take no body never read one: #admit refuses a request to them that announces a
    // body, before it is read. This parser is only reached by an empty one (`content-length: 0`).
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
      // JSON, before a byte of the body was read. fastify enforces the size limit (413). The text
      // is parsed by the handler, as only it knows whether an empty body is acceptable.
      scope.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => {
        done(null, body);
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

  /** Steps 1 to 6 of the header comment: everything decided before a body is read. */
  async #admit(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const badTarget = this.#badTargets.get(request.raw);
    if (badTarget !== undefined) {
      throw new HttpError(400, 'invalid_request', `the request target is not a valid path: ${badTarget}`);
    }
    const route = request.is404 ? undefined : this.#routes.get(request.routeOptions.url ?? '');
    const path = pathOf(request.originalUrl);
    // Decided on the target as routed (its canonical form), not as written: `/%76%31/x` is `/v1/x`.
    const routed = pathOf(request.url);
    if (route ? route.v1 : routed === '/v1' || routed.startsWith('/v1/')) this.#authorize(request.raw);
    if (!route) throw new HttpError(404, 'not_found', `no route ${request.method} ${clip(path)}`);
    const method = request.method;
    if (!route.handlers[method]) throw methodNotAllowed(Object.keys(route.handlers).join(', '));
    const expectation = request.headers.expect;
    const expectsContinue = expectation !== undefined && /^\s*100-continue\s*$/i.test(expectation);
    if (expectation !== undefined && !expectsContinue) {
      throw new HttpError(
        417,
        'expectation_failed',
        `unsupported expectation ${JSON.stringify(clip(expectation))}; only "100-continue" is`,
      );
    }
    const takesBody = route.json?.includes(method) === true;
    checkAnnouncedBody(request.raw, takesBody, `${method} ${clip(path)}`);
    if (takesBody) {
      refuseRepeated(request.raw, 'content-type');
      checkContentType(request.headers['content-type']);
      checkContentEncoding(request.headers['content-encoding']);
    }
    if (route.v1) this.#takeSlot(reply, slotsFor(request.query));
    // Only now is the client told to send its body (HTTP/1.1 only: 1.0 has no interim answers).
    const raw = request.raw;
    if (expectsContinue && raw.httpVersion === '1.1' && bodyPending(raw)) reply.raw.writeContinue();
  }

  /**
   * Bounds the writing of this request's answer: once handed off, it must make progress (bytes
   * taken by the kernel) at least every `answerStallTimeoutMs`, or the connection is closed. A
   * client that stops reading would otherwise keep its slot, its connection and the unsent answer
   * in memory for as long as it stays connected. Time spent before the answer exists (reading the
   * request, the registry) is not counted here.
   */
  #watchAnswer(request: FastifyRequest, reply: FastifyReply): void {
    const res = reply.raw;
    const socket = request.raw.socket;
    const stallMs = this.#limits.answerStallTimeoutMs;
    let lastPending = Number.POSITIVE_INFINITY;
    let lastProgress = performance.now();
    const timer = setInterval(
      () => {
        const now = performance.now();
        if (!res.writableEnded) {
          lastProgress = now;
          return;
        }
        const pending = unsentBytes(socket);
        if (pending < lastPending) {
          lastPending = pending;
          lastProgress = now;
          return;
        }
        if (now - lastProgress < stallMs) return;
        clearInterval(timer);
        this.#options.log.debug(
          { method: request.method, path: clip(pathOf(request.originalUrl)), unsent_bytes: pending },
          'client stopped reading its answer; connection closed',
        );
        socket.destroy();
      },
      clamp(Math.floor(stallMs / 4), 10, 5000),
    );
    timer.unref();
    res.once('close', () => clearInterval(timer));
  }

  #takeSlot(reply: FastifyReply, wanted: number): void {
    const max = this.#limits.maxRequestsInProgress;
    const slots = Math.min(wanted, max);
    if (this.#slotsInUse + slots > max) {
      throw new HttpError(
        503,
        'too_busy',
        `the ${max} request slots are taken (a page of more than ${DEFAULT_PAGE_LIMIT} records takes one per thousand); retry in ${TOO_BUSY_RETRY_AFTER_SECONDS} s`,
        undefined,
        { 'retry-after': String(TOO_BUSY_RETRY_AFTER_SECONDS), connection: 'close' },
      );
    }
    this.#inProgress++;
    this.#slotsInUse += slots;
    // The slot is for the work of answering: it is free once the answer is handed off ('finish'),
    // or the connection is gone ('close'), whichever comes first. Reading the answer is the
    // client's business, bounded by #watchAnswer.
    let held = true;
    const free = () => {
      if (!held) return;
      held = false;
      this.#inProgress--;
      this.#slotsInUse -= slots;
    };
    reply.raw.once('finish', free);
    reply.raw.once('close', free);
  }

  #authorize(req: IncomingMessage): void {
    if (!this.#tokenBuffer) return;
    // Node keeps the first of repeated Authorization lines and drops the rest: a request that
    // says two things about who sends it is malformed, whichever of them holds the token.
    refuseRepeated(req, 'authorization');
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

  async #add(request: FastifyRequest, reply: FastifyReply, kind: JobKind): Promise<FastifyReply> {
    refuseQuery(request);
    const { ids, metadata } = validateAddRequest(parseJsonBody(bodyText(request)), kind);
    const registry = this.#options.registry;
    // An export's call is made as it always was (no kind argument).
    const result = await (kind === 'export'
      ? registry.watch(ids, metadata)
      : registry.watch(ids, metadata, kind));
    if (result.conflicts && result.conflicts.length > 0) {
      throw await kindConflict(ids, result.conflicts, kind, (id, k) =>
        (k === 'export' ? registry.get(id) : registry.get(id, k)).then((view) => view !== undefined),
      );
    }
    return sendJson(reply, 202, { accepted: result.accepted, already_watched: result.alreadyWatched });
  }

  async #list(request: FastifyRequest, reply: FastifyReply, kind: JobKind): Promise<FastifyReply> {
    const parsed = parsePageQuery(new QueryParams(request.url, ['state', 'limit', 'cursor']));
    const query = kind === 'export' ? parsed : { ...parsed, kind };
    const page = await this.#options.registry.page(query);
    const last = page.items.at(-1);
    return sendJson(reply, 200, {
      items: page.items.map(recordToJson),
      next_cursor: page.more && last ? encodeCursor(last.id) : null,
    });
  }

  async #getOne(request: FastifyRequest, reply: FastifyReply, kind: JobKind): Promise<FastifyReply> {
    refuseQuery(request);
    const id = idParam(request);
    const registry = this.#options.registry;
    const record = !EXPORT_ID_PATTERN.test(id)
      ? undefined
      : kind === 'export'
        ? await registry.get(id)
        : await registry.get(id, kind);
    if (!record) throw jobNotFound(id, kind);
    return sendJson(reply, 200, recordToJson(record));
  }

  async #remove(request: FastifyRequest, reply: FastifyReply, kind: JobKind): Promise<FastifyReply> {
    refuseQuery(request);
    const id = idParam(request);
    const registry = this.#options.registry;
    const removed =
      EXPORT_ID_PATTERN.test(id) &&
      (kind === 'export' ? await registry.unwatch(id) : await registry.unwatch(id, kind));
    if (!removed) throw jobNotFound(id, kind);
    return reply.code(204).send();
  }

  async #events(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const query = parseEventQuery(new QueryParams(request.url, EVENT_QUERY_PARAMETERS));
    const page = await this.#options.registry.events(query);
    const last = page.items.at(-1);
    return sendJson(reply, 200, {
      items: page.items.map(eventToJson),
      next_cursor: page.more && last ? encodeEventCursor(last) : null,
    });
  }

  async #redeliver(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const query = new QueryParams(request.url, ['endpoint']);
    const endpoint = query.one('endpoint');
    if (endpoint !== undefined && (endpoint === '' || endpoint.length > MAX_ENDPOINT_LENGTH)) {
      query.problem(
        'endpoint',
        `must be a configured webhook URL or its label, 1 to ${MAX_ENDPOINT_LENGTH} characters`,
      );
    }
    query.check();
    validateEmptyObject(bodyText(request));
    const id = idParam(request);
    const result = WEBHOOK_ID_PATTERN.test(id)
      ? await this.#options.registry.redeliver(id, endpoint)
      : 'unknown_event';
    if (result === 'unknown_event') throw eventNotFound(id);
    if (result === 'unknown_endpoint') throw unknownEndpoint(endpoint ?? '');
    return sendJson(reply, 202, { webhook_id: id, deliveries: result.deliveries });
  }

  async #redeliverSince(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    refuseQuery(request);
    const { since, status } = validateRedeliverSince(parseJsonBody(bodyText(request)));
    const result = await this.#options.registry.redeliverSince(since, status);
    return sendJson(reply, 202, { deliveries: result.deliveries });
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

/** Validates a `POST /v1/exports` (or `/v1/imports`) body whole; throws a 400 listing every problem. */
export function validateAddRequest(
  body: unknown,
  kind: JobKind = 'export',
): {
  ids: string[];
  metadata: Record<string, unknown> | null;
} {
  if (!isPlainObject(body)) {
    throw new HttpError(400, 'invalid_request', 'the body must be a JSON object like {"ids": ["..."]}');
  }
  const details: Array<{ field: string; problem: string }> = [];
  const unknownFields = Object.keys(body).filter((key) => key !== 'ids' && key !== 'metadata');
  for (const key of unknownFields.slice(0, MAX_UNKNOWN_LISTED)) {
    details.push({ field: clip(key), problem: 'unknown field' });
  }
  if (unknownFields.length > MAX_UNKNOWN_LISTED) {
    details.push({
      field: 'body',
      problem: `${unknownFields.length - MAX_UNKNOWN_LISTED} more unknown fields not listed`,
    });
  }
  const ids = body.ids;
  if (!Array.isArray(ids)) {
    details.push({ field: 'ids', problem: `must be an array of ${kind} ids` });
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
      // A number JSON.parse could not hold exactly (an integer beyond ±2^53, or out of the range
      // of a double) would be echoed in events as another number, or as null.
      let inexact: string | undefined;
      const text = JSON.stringify(body.metadata, (key, value: unknown) => {
        if (
          inexact === undefined &&
          typeof value === 'number' &&
          (!Number.isFinite(value) || (Number.isInteger(value) && !Number.isSafeInteger(value)))
        ) {
          inexact = key;
        }
        return value;
      });
      if (inexact !== undefined) {
        details.push({
          field: 'metadata',
          problem: `holds a number that cannot be echoed exactly (at key ${JSON.stringify(clip(inexact))}: an integer beyond ±2^53, or too large for a double); send it as a string`,
        });
      }
      const size = Buffer.byteLength(text);
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

interface Problem {
  field: string;
  problem: string;
}

/** Unknown query parameters named in an answer at most: enough to fix the request. */
const MAX_UNKNOWN_LISTED = 20;

/**
 * A request's query parameters, read against the ones its route takes. Problems are collected, so
 * that one answer lists them all; `check` throws the 400.
 */
class QueryParams {
  readonly #params: URLSearchParams;
  readonly #problems: Problem[] = [];

  constructor(url: string, accepted: readonly string[]) {
    this.#params = new URLSearchParams(queryOf(url));
    const unknown = [...new Set(this.#params.keys())].filter((name) => !accepted.includes(name));
    for (const name of unknown.slice(0, MAX_UNKNOWN_LISTED)) {
      const takes = accepted.length > 0 ? `; this route takes ${accepted.join(', ')}` : '';
      this.problem(clip(name), `is not a parameter of this route${takes}`);
    }
    if (unknown.length > MAX_UNKNOWN_LISTED) {
      this.problem('query', `${unknown.length - MAX_UNKNOWN_LISTED} more unknown parameters not listed`);
    }
  }

  /** The value of a parameter that may be given once; undefined when absent (or repeated). */
  one(name: string): string | undefined {
    const values = this.#params.getAll(name);
    if (values.length <= 1) return values[0];
    this.problem(name, 'must be given at most once');
    return undefined;
  }

  /** `limit`: a whole number from 1 to `max`, `fallback` when absent. */
  limit(fallback: number, max: number): number {
    const text = this.one('limit');
    if (text === undefined) return fallback;
    const n = /^\d{1,6}$/.test(text) ? Number(text) : Number.NaN;
    if (n >= 1 && n <= max) return n;
    this.problem('limit', `must be a whole number from 1 to ${max}; got ${JSON.stringify(clip(text))}`);
    return fallback;
  }

  problem(field: string, problem: string): void {
    this.#problems.push({ field, problem });
  }

  /** Throws a 400 listing every problem found; `code` for one kind of problem that has its own. */
  check(code = 'invalid_request'): void {
    const details = this.#problems;
    if (details.length === 0) return;
    const message = `invalid query: ${details.map((d) => `${d.field} ${d.problem}`).join('; ')}`;
    throw new HttpError(400, code, message, details);
  }

  /** Whether every problem so far is about this one field. */
  onlyAbout(field: string): boolean {
    return this.#problems.every((d) => d.field === field);
  }
}

/** For a route that takes no query parameters: any is a 400. */
function refuseQuery(request: FastifyRequest): void {
  new QueryParams(request.url, []).check();
}

/** `limit`, `cursor` and `state` of `GET /v1/exports`; every problem is reported at once. */
function parsePageQuery(query: QueryParams): ExportPageQuery {
  const stateText = query.one('state');
  const limit = query.limit(DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT);
  const cursor = query.one('cursor');
  let state: ExportState | undefined;
  if (stateText !== undefined) {
    if (isExportState(stateText)) state = stateText;
    else {
      query.problem(
        'state',
        `must be one of ${EXPORT_STATES.join(', ')}; got ${JSON.stringify(clip(stateText))}`,
      );
    }
  }
  let after: string | undefined;
  if (cursor !== undefined) {
    after = decodeCursor(cursor);
    if (after === undefined) query.problem('cursor', 'must be a next_cursor from a previous page');
  }
  // A wrong state alone keeps the code it always had.
  query.check(query.onlyAbout('state') ? 'invalid_state' : 'invalid_request');
  return { state, after, limit };
}

const EVENT_QUERY_PARAMETERS = ['export_id', 'import_id', 'status', 'since', 'limit', 'cursor'] as const;

/** The filters and page of `GET /v1/events`; every problem is reported at once. */
function parseEventQuery(query: QueryParams): EventQuery {
  const ids: Partial<Record<JobKind, string>> = {};
  for (const kind of ['export', 'import'] as const) {
    const id = query.one(`${kind}_id`);
    if (id === undefined) continue;
    ids[kind] = id;
    if (!EXPORT_ID_PATTERN.test(id)) {
      query.problem(`${kind}_id`, `must match ${EXPORT_ID_PATTERN.source}; got ${JSON.stringify(clip(id))}`);
    }
  }
  if (ids.export !== undefined && ids.import !== undefined) {
    query.problem('import_id', 'cannot be given with export_id');
  }
  // A job's events: its id, and only events of its kind.
  const exportId = ids.import ?? ids.export;
  const kind: JobKind | undefined =
    ids.import !== undefined ? 'import' : ids.export !== undefined ? 'export' : undefined;
  const statusText = query.one('status');
  const status = statusText === undefined ? undefined : deliveryStatus(statusText);
  if (statusText !== undefined && status === undefined) {
    query.problem(
      'status',
      `must be one of ${DELIVERY_STATUSES.join(', ')}; got ${JSON.stringify(clip(statusText))}`,
    );
  }
  const sinceText = query.one('since');
  // A "+" of an offset typed raw in the query (`since=...T06:00:00+01:00`, as curl sends it) arrives
  // as a space, form-decoded: in that place it can mean nothing else.
  const since =
    sinceText === undefined
      ? undefined
      : parseRfc3339(sinceText.replace(/(?<=T\d{2}:\d{2}:\d{2}(?:\.\d+)?) (?=\d{2}:\d{2}$)/i, '+'));
  if (sinceText !== undefined && since === undefined) {
    query.problem('since', `${RFC3339_PROBLEM}; got ${JSON.stringify(clip(sinceText))}`);
  }
  const limit = query.limit(DEFAULT_EVENT_PAGE_LIMIT, MAX_EVENT_PAGE_LIMIT);
  const cursor = query.one('cursor');
  const after = cursor === undefined ? undefined : decodeEventCursor(cursor);
  if (cursor !== undefined && after === undefined) {
    query.problem('cursor', 'must be a next_cursor from a previous page');
  }
  query.check();
  return { exportId, ...(kind ? { kind } : {}), status, since, after, limit };
}

/** A body that must say nothing: none, blank, or `{}`. */
function validateEmptyObject(text: string): void {
  if (text.trim() === '') return;
  const body = parseJsonBody(text);
  if (!isPlainObject(body)) {
    throw new HttpError(400, 'invalid_request', 'the body must be empty or {}');
  }
  const details = Object.keys(body).map((key) => ({ field: clip(key), problem: 'unknown field' }));
  if (details.length > 0) {
    throw new HttpError(
      400,
      'invalid_request',
      'the body must be empty or {}',
      details.slice(0, MAX_UNKNOWN_LISTED),
    );
  }
}

/** Validates a `POST /v1/events/redeliver` body whole; throws a 400 listing every problem. */
export function validateRedeliverSince(body: unknown): { since: number; status: DeliveryStatus } {
  if (!isPlainObject(body)) {
    throw new HttpError(
      400,
      'invalid_request',
      'the body must be a JSON object like {"since": "2026-11-22T00:00:00Z", "status": "failed"}',
    );
  }
  const details: Problem[] = [];
  for (const key of Object.keys(body)) {
    if (key !== 'since' && key !== 'status') details.push({ field: clip(key), problem: 'unknown field' });
  }
  const since = typeof body.since === 'string' ? parseRfc3339(body.since) : undefined;
  if (since === undefined) {
    details.push({
      field: 'since',
      problem: body.since === undefined ? `is required: ${RFC3339_PROBLEM}` : RFC3339_PROBLEM,
    });
  }
  const status = body.status === undefined ? 'failed' : deliveryStatus(body.status);
  if (status === undefined) {
    details.push({ field: 'status', problem: `must be one of ${DELIVERY_STATUSES.join(', ')}` });
  }
  if (details.length > 0 || since === undefined || status === undefined) {
    throw new HttpError(
      400,
      'invalid_request',
      'the request is invalid; nothing was redelivered',
      details.slice(0, MAX_UNKNOWN_LISTED),
    );
  }
  return { since, status };
}

function deliveryStatus(value: unknown): DeliveryStatus | undefined {
  return DELIVERY_STATUSES.find((s) => s === value);
}

const RFC3339_PROBLEM = 'must be an RFC 3339 date-time with a time zone, like 2026-11-22T05:33:04Z';

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:(Z)|([+-])(\d{2}):(\d{2}))$/i;

/**
 * An RFC 3339 date-time (with `T`, seconds and a time zone, as section 5.6 requires) as epoch
 * milliseconds; undefined when it is not one or names no real time (February 30, 25:00). A
 * fraction finer than milliseconds is rounded up, so that "at or after" never takes in an earlier
 * millisecond. A leap second (:60, only at the end of a UTC day) reads as the next day's first second
 * (23:59:60.5Z as 00:00:00.500Z): the store's times have none.
 */
export function parseRfc3339(text: string): number | undefined {
  const m = RFC3339.exec(text);
  if (!m) return undefined;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const fraction = m[7] ?? '';
  const offsetHours = Number(m[10] ?? 0);
  const offsetMinutes = Number(m[11] ?? 0);
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return undefined;
  if (hour > 23 || minute > 59 || second > 60 || offsetHours > 23 || offsetMinutes > 59) return undefined;
  const sign = m[9] === '-' ? -1 : 1;
  // A leap second (RFC 3339 5.7) can only be the last second of a UTC day: 23:59:60Z, or the local
  // time an offset makes of it; it reads as the next day's first second.
  const utcMinute = (((hour * 60 + minute - sign * (offsetHours * 60 + offsetMinutes)) % 1440) + 1440) % 1440;
  if (second === 60 && utcMinute !== 1439) return undefined;
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  date.setUTCHours(hour, minute, second, Number(fraction.slice(0, 3).padEnd(3, '0')));
  const finer = /[1-9]/.test(fraction.slice(3)) ? 1 : 0;
  const offset = sign * (offsetHours * 60 + offsetMinutes) * 60_000;
  const at = date.getTime() + finer - offset;
  // And only at the end of a month (RFC 3339 5.7): the second it reads as is a month's first.
  if (second === 60 && new Date(at).getUTCDate() !== 1) return undefined;
  return at;
}

function daysInMonth(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}

/** An export page cursor: base64url of the last id of the page (opaque to clients). */
function encodeCursor(id: string): string {
  return Buffer.from(id, 'utf8').toString('base64url');
}

/** The id an export cursor stands for, or undefined when it is not one of ours. */
function decodeCursor(cursor: string): string | undefined {
  if (!/^[A-Za-z0-9_-]{1,172}$/.test(cursor)) return undefined;
  const id = Buffer.from(cursor, 'base64url').toString('utf8');
  // Node's decoder is lenient; only the exact encoding of a valid id is a cursor.
  return EXPORT_ID_PATTERN.test(id) && encodeCursor(id) === cursor ? id : undefined;
}

/** An event page cursor: base64url of `[createdAt, id]` of the page's last event (opaque to clients). */
function encodeEventCursor(event: { createdAt: number; id: string }): string {
  return Buffer.from(JSON.stringify([event.createdAt, event.id]), 'utf8').toString('base64url');
}

/** The position an event cursor stands for, or undefined when it is not one of ours. */
function decodeEventCursor(cursor: string): { createdAt: number; id: string } | undefined {
  if (!/^[A-Za-z0-9_-]{1,300}$/.test(cursor)) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
  if (!Array.isArray(value) || value.length !== 2) return undefined;
  const [createdAt, id] = value as [unknown, unknown];
  if (!Number.isSafeInteger(createdAt) || (createdAt as number) < 0) return undefined;
  if (typeof id !== 'string' || !WEBHOOK_ID_PATTERN.test(id)) return undefined;
  const position = { createdAt: createdAt as number, id };
  // Only the exact encoding is a cursor: Node's decoder is lenient.
  return encodeEventCursor(position) === cursor ? position : undefined;
}

/**
 * The body's text; none (no content type, no length: fastify skips the parser) is empty. Bytes
 * that are not UTF-8 are refused, not replaced: what is stored (metadata is echoed in events)
 * would not be what was sent. A byte-order mark is kept, so that JSON.parse refuses it.
 */
function bodyText(request: FastifyRequest): string {
  if (!Buffer.isBuffer(request.body)) return '';
  try {
    return UTF8.decode(request.body);
  } catch {
    throw new HttpError(400, 'invalid_json', 'the body is not valid UTF-8');
  }
}

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

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
  if (type === undefined || type === '') return;
  const match = JSON_CONTENT_TYPE.exec(type);
  if (!match) {
    throw new HttpError(
      415,
      'unsupported_media_type',
      `content-type must be application/json, got ${JSON.stringify(clip(type))}`,
    );
  }
  // The body is read as UTF-8 (RFC 8259); bytes meant in another charset would be stored as other
  // text than was sent, or refused as something they are not.
  const charset = CHARSET_PARAMETER.exec(match[1] ?? '')?.[2];
  if (charset !== undefined && !/^utf-?8$/i.test(charset)) {
    throw new HttpError(
      415,
      'unsupported_media_type',
      `the body must be UTF-8 JSON; content-type names charset ${JSON.stringify(clip(charset))}`,
    );
  }
}

/**
 * Bodies are read as sent: a body in any content coding but `identity` would be taken for the JSON
 * it encodes (and refused as "not valid UTF-8", or acted on as raw bytes).
 */
function checkContentEncoding(encoding: string | undefined): void {
  if (encoding === undefined || /^(?:identity)?$/i.test(encoding.trim())) return;
  throw new HttpError(
    415,
    'unsupported_media_type',
    `content-encoding ${JSON.stringify(clip(encoding))} is not supported; send the body uncompressed`,
  );
}

/** A header that may appear once, sent more than once: a 400 that does not echo the values. */
function refuseRepeated(req: IncomingMessage, name: string): void {
  const count = req.headersDistinct[name]?.length ?? 0;
  if (count <= 1) return;
  throw new HttpError(400, 'invalid_request', `the request has ${count} ${name} headers; send at most one`);
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

/**
 * The `/v1` slots a request takes: one, or one per started `DEFAULT_PAGE_LIMIT` records of the page
 * its `limit` asks for. An unreadable `limit` takes one: the route answers it 400.
 */
function slotsFor(query: unknown): number {
  const limit = Number((query as { limit?: unknown } | undefined)?.limit);
  if (!Number.isInteger(limit) || limit <= DEFAULT_PAGE_LIMIT || limit > MAX_PAGE_LIMIT) return 1;
  return Math.ceil(limit / DEFAULT_PAGE_LIMIT);
}

/**
 * Refuses, before a byte of it is read, a body announced (a `content-length` above 0, or any
 * `transfer-encoding`) over the size limit, or to a route that takes none: such a route would
 * otherwise act on the request and leave the body unread.
 */
function checkAnnouncedBody(req: IncomingMessage, takesBody: boolean, route: string): void {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES) {
    throw new HttpError(413, 'payload_too_large', `the body is larger than ${MAX_BODY_BYTES} bytes`);
  }
  if (takesBody || (req.headers['transfer-encoding'] === undefined && !(declared > 0))) return;
  throw new HttpError(400, 'invalid_request', `${route} takes no body; send the request without one`);
}

/**
 * Bytes of answers on this connection not yet taken by the kernel. libuv's queue (`writeQueueSize`
 * of the handle, not part of Node's documented API) shrinks as a large write goes out piece by
 * piece; `writableLength` only when a whole write completes, which makes it the coarser fallback.
 */
function unsentBytes(socket: Socket): number {
  const queued = (socket as Socket & { _handle?: { writeQueueSize?: unknown } | null })._handle
    ?.writeQueueSize;
  return typeof queued === 'number' ? queued + socket.writableLength : socket.writableLength;
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
    answerStallTimeoutMs: options.answerStallTimeoutMs ?? DEFAULT_ANSWER_STALL_TIMEOUT_MS,
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

function jobNotFound(id: string, kind: JobKind): HttpError {
  return new HttpError(404, `${kind}_not_found`, `${kind} ${JSON.stringify(clip(id))} is not watched`);
}

/**
 * 409: ids watched as the other kind, or whose webhook-ids a job of the other kind has
 * (`webhookTwin`); nothing of the request was added.
 */
async function kindConflict(
  ids: readonly string[],
  conflicts: readonly string[],
  kind: JobKind,
  held: (id: string, kind: JobKind) => Promise<boolean>,
): Promise<HttpError> {
  const other = kind === 'export' ? 'import' : 'export';
  const conflicting = new Set(conflicts);
  const details: Problem[] = [];
  for (const [i, id] of ids.entries()) {
    if (!conflicting.has(id)) continue;
    if (details.length >= 20) break;
    // Which of the two it is, as far as the store says now (a record may go meanwhile).
    const twin = webhookTwin(id, kind);
    const asOther = await held(id, other).catch(() => false);
    const problem =
      twin && !asOther && (await held(twin.id, twin.kind).catch(() => false))
        ? `shares its webhook-ids with the ${twin.kind} ${JSON.stringify(twin.id)}, which is watched`
        : `is watched as an ${other}`;
    details.push({ field: `ids[${i}]`, problem });
  }
  if (conflicts.length > details.length) {
    details.push({ field: 'ids', problem: `${conflicts.length - details.length} more not listed` });
  }
  return new HttpError(
    409,
    'kind_conflict',
    `${conflicts.length} of the ids ${conflicts.length === 1 ? 'is' : 'are'} taken by ${other}s watched (an id names one job, and its webhook-ids belong to it); nothing was added`,
    details,
  );
}

function eventNotFound(id: string): HttpError {
  return new HttpError(404, 'event_not_found', `no event ${JSON.stringify(clip(id))} is stored`);
}

/** Named as its label: the URL given may carry credentials, and an answer is no place for them. */
function unknownEndpoint(endpoint: string): HttpError {
  return new HttpError(
    400,
    'unknown_endpoint',
    // Shown as configuration shows a URL: one mistyped (`https//user:password@...`) still holds its password.
    `unknown endpoint ${clip(shownUrl(endpoint), 300)}: not one of the configured webhook URLs (WATCHER_WEBHOOK_URLS)`,
    [{ field: 'endpoint', problem: 'unknown endpoint' }],
  );
}

/** A client's text, shortened for an error message. */
function clip(text: string, max = 200): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, value));
}
