/**
 * The control API: JSON over HTTP, for other systems to hand the watcher export ids and read what
 * it knows. Also serves `/healthz`, `/readyz` and `/metrics`.
 *
 * Errors are `{"error": {"code", "message", "details"?}}`. A request is validated whole before it
 * changes anything: any invalid part is a 400 and nothing from it is added.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import { type ExportRecord, type ExportState, isExportState, type PageQuery } from './tracker.js';

export const EXPORT_ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;
export const MAX_BODY_BYTES = 1024 * 1024;
export const MAX_IDS_PER_REQUEST = 10_000;
export const MAX_METADATA_BYTES = 4096;

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

export class ControlApi {
  readonly #options: ControlApiOptions;
  readonly #server: Server;
  readonly #tokenBuffer: Buffer | undefined;
  #url: string | undefined;
  #closePromise: Promise<void> | undefined;

  constructor(options: ControlApiOptions) {
    this.#options = options;
    this.#tokenBuffer = options.apiToken ? Buffer.from(options.apiToken) : undefined;
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((error: unknown) => {
        options.log.error({ err: error }, 'control API request failed');
        if (!res.headersSent) sendError(res, new HttpError(500, 'internal_error', 'internal error'));
        else res.destroy();
      });
    });
    this.#server.keepAliveTimeout = 5000;
  }

  /** Listens; resolves the base URL (`http://host:port`). The chosen port is logged. */
  async listen(): Promise<string> {
    if (this.#url) return this.#url;
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#options.port, this.#options.host, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    const address = this.#server.address() as AddressInfo;
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    this.#url = `http://${host}:${address.port}`;
    this.#options.log.info(
      { url: this.#url, auth: this.#tokenBuffer !== undefined },
      'control API listening',
    );
    return this.#url;
  }

  get url(): string | undefined {
    return this.#url;
  }

  /** Stops accepting requests and closes idle connections. Idempotent. */
  close(): Promise<void> {
    this.#closePromise ??= new Promise((resolve) => {
      if (!this.#server.listening) {
        resolve();
        return;
      }
      this.#server.close(() => resolve());
      this.#server.closeIdleConnections();
    });
    return this.#closePromise;
  }

  /** Drops every connection, requests in progress included (after a shutdown deadline). */
  closeAllConnections(): void {
    this.#server.closeAllConnections();
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const method = req.method ?? 'GET';
    // Held from the start: a request destroyed mid-body is detached from its socket.
    const socket = req.socket as Socket | null;
    try {
      if (path === '/healthz') return this.#probe(res, method, this.#options.probes.health());
      if (path === '/readyz') return this.#probe(res, method, this.#options.probes.ready());
      if (path === '/metrics') return await this.#metrics(res, method);
      if (path === '/v1/exports') {
        this.#authorize(req);
        if (method === 'POST') return await this.#add(req, res);
        if (method === 'GET') return this.#list(res, url.searchParams.get('state'));
        throw methodNotAllowed('GET, POST');
      }
      const match = /^\/v1\/exports\/([^/]+)$/.exec(path);
      if (match) {
        this.#authorize(req);
        const id = decodePathSegment(match[1] ?? '');
        if (method === 'GET') return this.#getOne(res, id);
        if (method === 'DELETE') return this.#remove(res, id);
        throw methodNotAllowed('GET, DELETE');
      }
      if (path.startsWith('/v1/')) this.#authorize(req);
      throw new HttpError(404, 'not_found', `no route ${method} ${url.pathname}`);
    } catch (error) {
      if (!(error instanceof HttpError)) throw error;
      if (!req.complete) {
        // The client is still sending a body we will not read: answer, then close the connection
        // rather than leave it waiting on the rest.
        error.headers.connection = 'close';
        res.once('finish', () => socket?.destroy());
      }
      sendError(res, error);
    }
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

  #probe(res: ServerResponse, method: string, result: { ok: boolean; reason?: string }): void {
    if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed('GET, HEAD');
    if (result.ok) sendJson(res, 200, { status: 'ok' });
    else sendJson(res, 503, { status: 'unavailable', reason: result.reason ?? 'not ready' });
  }

  async #metrics(res: ServerResponse, method: string): Promise<void> {
    if (method !== 'GET') throw methodNotAllowed('GET');
    if (!this.#options.probes.metrics) throw new HttpError(404, 'not_found', 'metrics are not enabled');
    const { contentType, body } = await this.#options.probes.metrics();
    res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  async #add(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJsonBody(req);
    const { ids, metadata } = validateAddRequest(body);
    const result = this.#options.registry.watch(ids, metadata);
    sendJson(res, 202, { accepted: result.accepted, already_watched: result.alreadyWatched });
  }

  #list(res: ServerResponse, state: string | null): void {
    if (state !== null && !isExportState(state)) {
      throw new HttpError(
        400,
        'invalid_state',
        `state must be one of UNKNOWN, PENDING, RUNNING, COMPLETED, FAILED, LOST; got ${JSON.stringify(state)}`,
      );
    }
    const items = this.#options.registry.list(state ?? undefined).map(recordToJson);
    sendJson(res, 200, { items });
  }

  #getOne(res: ServerResponse, id: string): void {
    const record = EXPORT_ID_PATTERN.test(id) ? this.#options.registry.get(id) : undefined;
    if (!record) throw new HttpError(404, 'export_not_found', `export ${JSON.stringify(id)} is not watched`);
    sendJson(res, 200, recordToJson(record));
  }

  #remove(res: ServerResponse, id: string): void {
    if (!EXPORT_ID_PATTERN.test(id) || !this.#options.registry.unwatch(id)) {
      throw new HttpError(404, 'export_not_found', `export ${JSON.stringify(id)} is not watched`);
    }
    res.writeHead(204);
    res.end();
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
    if (key !== 'ids' && key !== 'metadata') details.push({ field: key, problem: 'unknown field' });
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

async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const type = req.headers['content-type'] ?? '';
  if (type !== '' && !/^application\/(.+\+)?json\b/i.test(type)) {
    throw new HttpError(
      415,
      'unsupported_media_type',
      `content-type must be application/json, got ${JSON.stringify(type)}`,
    );
  }
  const declared = Number(req.headers['content-length'] ?? Number.NaN);
  if (declared > MAX_BODY_BYTES) throw tooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw tooLarge();
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '')
    throw new HttpError(400, 'invalid_json', 'the body is empty; expected a JSON object');
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new HttpError(400, 'invalid_json', `the body is not valid JSON: ${(error as Error).message}`);
  }
}

/** A path segment, or '' when its percent-encoding is malformed (so the route answers 404). */
function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return '';
  }
}

function digest(value: Buffer): Buffer {
  return createHash('sha256').update(value).digest();
}

function tooLarge(): HttpError {
  return new HttpError(413, 'payload_too_large', `the body is larger than ${MAX_BODY_BYTES} bytes`);
}

function methodNotAllowed(allow: string): HttpError {
  return new HttpError(405, 'method_not_allowed', `allowed methods: ${allow}`, undefined, { allow });
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

function sendError(res: ServerResponse, error: HttpError): void {
  const body: { code: string; message: string; details?: unknown[] } = {
    code: error.code,
    message: error.message,
  };
  if (error.details) body.details = error.details;
  sendJson(res, error.status, { error: body }, error.headers);
}
