/**
 * A platform that misbehaves on purpose, on loopback, for the hostile suite and its probe. Each
 * route's answer comes from a function the test sets and may change mid-run: a normal JSON
 * answer, any status and headers, or a raw writer (an endless body, a body cut short). It counts
 * requests per route and the bytes it managed to write, so a test can see what the client did.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface Reply {
  status?: number;
  headers?: Record<string, string>;
  /** An object is sent as JSON; a string as is. */
  body?: unknown;
}

/** Writes the answer itself, for answers a Reply cannot describe. */
export type RawWriter = (res: ServerResponse) => void;

export type Route = 'bulk_get' | 'get' | 'rate_limit' | 'list' | 'other';
export type Handler = (request: {
  route: Route;
  path: string;
  json: unknown;
  headers: IncomingMessage['headers'];
}) => Reply | RawWriter;

export class HostilePlatform {
  readonly requests: Record<Route, number> = { bulk_get: 0, get: 0, rate_limit: 0, list: 0, other: 0 };
  /** Bytes of answer bodies written to sockets, over all requests. */
  bytesWritten = 0;
  /** Every request's headers, newest last. */
  readonly seenHeaders: Array<IncomingMessage['headers']> = [];
  /** Every request's route, path and parsed body, newest last. */
  readonly seen: Array<{ route: Route; path: string; json: unknown }> = [];
  handler: Handler;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #url = '';

  constructor(handler: Handler = okHandler()) {
    this.handler = handler;
    this.#server = createServer((req, res) => void this.#handle(req, res));
    this.#server.on('connection', (socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    });
  }

  /** Listens on 127.0.0.1; resolves the base URL ending in /v2. */
  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    const { port } = this.#server.address() as AddressInfo;
    this.#url = `http://127.0.0.1:${port}/v2`;
    return this.#url;
  }

  get url(): string {
    return this.#url;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const route: Route = path.endsWith('/bulk/storage/exports/get')
      ? 'bulk_get'
      : path.endsWith('/rate_limit')
        ? 'rate_limit'
        : /\/storage\/exports\/[^/]+$/.test(path)
          ? 'get'
          : path.endsWith('/storage/exports')
            ? 'list'
            : 'other';
    this.requests[route]++;
    this.seenHeaders.push(req.headers);
    this.seen.push({ route, path, json });
    const socket = req.socket;
    const before = socket.bytesWritten;
    res.once('close', () => {
      this.bytesWritten += socket.bytesWritten - before;
    });
    const answer = this.handler({ route, path, json, headers: req.headers });
    if (typeof answer === 'function') {
      answer(res);
      return;
    }
    const body = typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body ?? {});
    res.writeHead(answer.status ?? 200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      ...answer.headers,
    });
    res.end(body);
  }
}

/** The ids of a bulk-get request body. */
export function askedIds(json: unknown): string[] {
  const ids = (json as { export_ids?: unknown } | undefined)?.export_ids;
  return Array.isArray(ids) ? ids.filter((i): i is string => typeof i === 'string') : [];
}

export function exportObject(id: string, state: string): Record<string, unknown> {
  return { href: `https://platform.invalid/v2/storage/exports/${id}`, id, state };
}

/** A well-behaved platform: every asked id RUNNING, a generous quota. */
export function okHandler(state = 'RUNNING'): Handler {
  return ({ route, json }) => {
    if (route === 'rate_limit') return { body: { rate: { limit: 1000, remaining: 1000, reset: 0 } } };
    if (route === 'bulk_get') {
      return { body: { items: askedIds(json).map((id) => ({ resource: exportObject(id, state) })) } };
    }
    return { status: 404, body: { status: 404, code: 90003, message: 'Not found' } };
  };
}

/** An answer that never ends: 64 KiB chunks for as long as the client reads. */
export function endlessBody(): RawWriter {
  return (res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    res.write('{"items":[');
    const pump = () => {
      while (!res.destroyed && res.write(chunk)) {
        // keep writing until the socket pushes back
      }
      if (!res.destroyed) res.once('drain', pump);
    };
    pump();
  };
}
