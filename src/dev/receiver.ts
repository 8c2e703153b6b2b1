/**
 * A small Standard Webhooks receiver on loopback, for the demo and for tests. It records every
 * attempt in order, verifies signatures when given the secret, and answers 204 unless `respond`
 * says otherwise, so a test can refuse first attempts, answer 410, send `Retry-After`, redirect,
 * or hold an answer (by returning a promise) to make an endpoint slow.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { parseSecret, verify } from '../delivery/signing.js';
import { ConnectionGuard } from '../http/connection-guard.js';

// Captured at load so that a test's fake timers cannot fire or freeze `waitFor`'s real-time guard.
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;

const PATH = '/hooks';
const MAX_BODY_BYTES = 1024 * 1024;

export type Answer = number | { status: number; headers?: Record<string, string> };

export interface ReceiverOptions {
  host?: string;
  /** 0 (the default) picks a free port. */
  port?: number;
  /** `whsec_...`: when given, every attempt's signature is checked and recorded in `verified`. */
  secret?: string;
  /** The answer to one attempt; may be a promise, which holds the response until it settles. */
  respond?: (req: ReceivedWebhook, attemptForThisId: number) => Answer | Promise<Answer>;
  /** Epoch ms, default Date.now; used for `receivedAt` and the signature's timestamp tolerance. */
  now?: () => number;
  /**
   * false: nothing is kept (`received` stays empty, every attempt counts as a first): for a
   * receiver that runs as long as a daemon, which would otherwise hold every attempt. Default true.
   */
  keep?: boolean;
  /**
   * Bounds on connections, for a receiver that runs as long as a daemon (`receive`): at most
   * `max` open, the oldest idle ones closed to keep `headroom` free (`ConnectionGuard`), and a
   * request's headers within `headersTimeoutMs`. Default: Node's own (no cap).
   */
  connections?: { max: number; headroom: number; headersTimeoutMs: number; log: Logger };
}

export interface ReceivedWebhook {
  id: string;
  timestamp: number;
  signature: string | undefined;
  /** undefined when the receiver has no secret. */
  verified: boolean | undefined;
  body: string;
  /** The parsed body, or undefined when it is not JSON. */
  json: unknown;
  headers: Record<string, string | string[] | undefined>;
  /** The request target as sent: path and query. */
  target: string;
  /** Epoch ms per `now`. */
  receivedAt: number;
  /** The status answered, once answered. */
  status: number | undefined;
}

interface Waiter {
  predicate: (r: WebhookReceiver) => boolean;
  resolve: () => void;
}

export class WebhookReceiver {
  readonly received: ReceivedWebhook[] = [];
  readonly #options: ReceiverOptions;
  readonly #key: Buffer | undefined;
  readonly #now: () => number;
  readonly #attemptsById = new Map<string, number>();
  /** Kept as answers go out, so waiting on deliveries does not rescan every attempt. */
  readonly #acceptedIds = new Set<string>();
  readonly #waiters = new Set<Waiter>();
  #server: Server | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: ReceiverOptions = {}) {
    this.#options = options;
    this.#key = options.secret === undefined ? undefined : parseSecret(options.secret);
    this.#now = options.now ?? (() => Date.now());
  }

  /** Listens and returns the URL to deliver to: `http://<host>:<port>/hooks`. */
  async start(): Promise<string> {
    if (this.#server) throw new Error('WebhookReceiver.start() called twice');
    const limits = this.#options.connections;
    // Node looks for connections past `headersTimeout` only every `connectionsCheckingInterval`
    // (30 s by default): checked four times as often as the timeout, it holds to within a quarter.
    const checking = limits
      ? { connectionsCheckingInterval: Math.max(50, Math.floor(limits.headersTimeoutMs / 4)) }
      : {};
    const server = createServer(checking, (req, res) => {
      this.#handle(req, res).catch((error: unknown) => {
        res.destroy(error instanceof Error ? error : new Error(String(error)));
      });
    });
    this.#server = server;
    if (limits) {
      new ConnectionGuard(server, { maxConnections: limits.max, headroom: limits.headroom, log: limits.log });
      server.headersTimeout = limits.headersTimeoutMs;
      server.requestTimeout = Math.max(limits.headersTimeoutMs, server.requestTimeout);
    }
    const host = this.#options.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#options.port ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const { port } = server.address() as AddressInfo;
    return `http://${host.includes(':') ? `[${host}]` : host}:${port}${PATH}`;
  }

  /** Stops listening and drops open connections, including held answers. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      const server = this.#server;
      if (!server) return resolve();
      server.close(() => resolve());
      server.closeAllConnections();
    });
    return this.#closing;
  }

  /** Attempts answered with a 2xx. */
  accepted(): ReceivedWebhook[] {
    return this.received.filter((r) => r.status !== undefined && r.status >= 200 && r.status < 300);
  }

  /** The webhook-ids with at least one attempt answered 2xx: the events delivered. */
  acceptedIds(): ReadonlySet<string> {
    return this.#acceptedIds;
  }

  uniqueIds(): Set<string> {
    return new Set(this.received.map((r) => r.id));
  }

  /**
   * Resolves as soon as `predicate` holds: now, or on the request or answer that makes it true.
   * Rejects after `timeoutMs` of real time (fake timers do not affect it).
   */
  waitFor(predicate: (r: WebhookReceiver) => boolean, timeoutMs = 10_000): Promise<void> {
    if (predicate(this)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        predicate,
        resolve: () => {
          realClearTimeout(timer);
          resolve();
        },
      };
      const timer = realSetTimeout(() => {
        this.#waiters.delete(waiter);
        reject(new Error(`WebhookReceiver.waitFor: condition not met within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.add(waiter);
    });
  }

  #notify(): void {
    for (const waiter of this.#waiters) {
      if (waiter.predicate(this)) {
        this.#waiters.delete(waiter);
        waiter.resolve();
      }
    }
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'POST' || path !== PATH) {
      res.writeHead(req.method !== 'POST' && path === PATH ? 405 : 404).end();
      return;
    }
    const body = await readBody(req);
    if (body === undefined) {
      res.writeHead(413).end();
      return;
    }
    const id = header(req, 'webhook-id') ?? '';
    const timestamp = Number(header(req, 'webhook-timestamp'));
    const signature = header(req, 'webhook-signature');
    const receivedAt = this.#now();
    const record: ReceivedWebhook = {
      id,
      timestamp,
      signature,
      verified:
        this.#key === undefined
          ? undefined
          : signature !== undefined &&
            verify(
              this.#key,
              { id, timestamp: header(req, 'webhook-timestamp') ?? '', signature },
              body,
              Math.floor(receivedAt / 1000),
            ),
      body,
      json: parseJson(body),
      headers: { ...req.headers },
      target: req.url ?? '',
      receivedAt,
      status: undefined,
    };
    const keep = this.#options.keep ?? true;
    const attempt = keep ? (this.#attemptsById.get(id) ?? 0) + 1 : 1;
    if (keep) {
      this.#attemptsById.set(id, attempt);
      this.received.push(record);
    }
    // Call `respond` before waking waiters, so a predicate may look at what it recorded.
    const answering = this.#options.respond ? this.#options.respond(record, attempt) : 204;
    this.#notify();
    const answer = await answering;
    const { status, headers } = typeof answer === 'number' ? { status: answer, headers: {} } : answer;
    record.status = status;
    if (keep && status >= 200 && status < 300) this.#acceptedIds.add(record.id);
    if (!res.destroyed) res.writeHead(status, headers).end();
    this.#notify();
  }
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** The request body as UTF-8, or undefined when it exceeds MAX_BODY_BYTES. */
async function readBody(req: IncomingMessage): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
