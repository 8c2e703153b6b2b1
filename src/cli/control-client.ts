/**
 * A client of a running daemon's control API, for the commands that ask the daemon rather than
 * the platform (`events`, `redeliver`).
 *
 * Where the daemon is: `--api-url`, else WATCHER_HTTP_HOST and WATCHER_HTTP_PORT as the daemon
 * reads them, a wildcard host (0.0.0.0, ::) standing for this machine's loopback. The API token
 * is the daemon's own WATCHER_API_TOKEN (environment, .env or the systemd credential, as the
 * configuration reads it), sent as a bearer token and never printed.
 *
 * Every failure is a ControlApiError whose message is one line saying what went wrong and what to
 * change; `withControlApi` prints it as `error: ...` (scrubbed) and makes the exit code 1.
 */
import type { Writable } from 'node:stream';
import { Agent, request } from 'undici';
import type { Config } from '../config/config.js';
import { formatDuration } from '../config/config.js';
import { UsageError } from '../shared/errors.js';
import type { Redactor } from '../shared/redact.js';
import { safeUrl, shownUrl } from '../shared/redact.js';
import { isPlainObject } from '../shared/values.js';
import { oneLine } from './error-report.js';

/** A request's limit when `--timeout` is not given. */
export const CONTROL_DEFAULT_TIMEOUT_MS = 30_000;
/** The largest answer read: a page of 1,000 events is a few MiB. */
const MAX_ANSWER_BYTES = 64 * 1024 * 1024;
/** Node's and undici's codes for "nobody answered at that address". */
const UNREACHABLE = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EADDRNOTAVAIL',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** A failure talking to the daemon, said in one line. */
export class ControlApiError extends Error {
  override readonly name = 'ControlApiError';
}

/** Where the control API is, and which setting said so (for the message when it does not answer). */
export interface ControlApiTarget {
  /** The base URL, without a trailing slash. */
  url: string;
  /** What to change when it does not answer there, for messages. */
  fix: string;
  token: string | undefined;
}

/** The daemon's control API: `--api-url` when given, else where the configuration says it listens. */
export function controlApiTarget(apiUrl: string | undefined, config: Config): ControlApiTarget {
  const token = config.apiToken;
  if (apiUrl !== undefined) return { url: parseApiUrl(apiUrl), fix: 'check --api-url', token };
  const { host, port } = config.http;
  if (port === 0) {
    throw new UsageError(
      'WATCHER_HTTP_PORT is 0 (the daemon picks a free port); give its control API with --api-url URL (logged as "control API listening")',
    );
  }
  const bare = host.replace(/^\[|\]$/g, '');
  // A wildcard is where the daemon listens, not an address to call: its loopback is.
  const reachable = bare === '0.0.0.0' ? '127.0.0.1' : bare === '::' ? '::1' : bare;
  const shown = reachable.includes(':') ? `[${reachable}]` : reachable;
  return {
    url: `http://${shown}:${port}`,
    fix: 'set WATCHER_HTTP_HOST and WATCHER_HTTP_PORT as the daemon has them, or give --api-url URL',
    token,
  };
}

function parseApiUrl(text: string): string {
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.search || url.hash) {
    throw new UsageError(
      // As configuration shows a URL: one that does not parse may still hold a password.
      `--api-url: expected the daemon's control API base URL, like http://127.0.0.1:8080, got ${shownUrl(text)}`,
    );
  }
  return url.href.replace(/\/+$/, '');
}

export interface ApiAnswer {
  status: number;
  /** The JSON body, parsed. */
  body: unknown;
}

/** One daemon's control API over one connection pool; `close` when done. */
export class ControlClient {
  readonly #target: ControlApiTarget;
  readonly #timeoutMs: number;
  readonly #agent = new Agent({ maxResponseSize: MAX_ANSWER_BYTES });

  constructor(target: ControlApiTarget, timeoutMs: number) {
    this.#target = target;
    this.#timeoutMs = timeoutMs;
  }

  /** The base URL as it may be printed: without credentials. */
  get where(): string {
    return safeUrl(this.#target.url);
  }

  /**
   * Sends one request; resolves any JSON answer but a 401, which no command can act on. Rejects
   * with a ControlApiError when there is no usable answer.
   */
  async send(method: 'GET' | 'POST', path: string, json?: unknown): Promise<ApiAnswer> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.#target.token !== undefined) headers.authorization = `Bearer ${this.#target.token}`;
    if (json !== undefined) headers['content-type'] = 'application/json';
    let status: number;
    let contentType: string;
    let text: string;
    try {
      const res = await request(`${this.#target.url}${path}`, {
        method,
        headers,
        body: json === undefined ? null : JSON.stringify(json),
        dispatcher: this.#agent,
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
      status = res.statusCode;
      contentType = String(res.headers['content-type'] ?? '');
      text = await res.body.text();
    } catch (error) {
      throw this.#networkError(error);
    }
    const body = /^application\/json\b/i.test(contentType) ? parseOr(text) : undefined;
    // Every answer of the control API is an object, errors included. A 401 is the daemon's
    // refusal of the API token only when it is the daemon's own error: anything else answering
    // 401 there (the platform, a proxy, another service) means the address is wrong, not the token.
    if (!isPlainObject(body) || (status === 401 && errorCodeOf(body) !== 'unauthorized')) {
      throw new ControlApiError(
        `${this.where} did not answer like the watcher's control API (${status}, ${JSON.stringify(contentType || 'no content type')}); ${this.#target.fix}`,
      );
    }
    if (status === 401) throw this.#unauthorized();
    return { status, body };
  }

  /** A ControlApiError for an answer the command did not expect, with the API's own message. */
  refused(what: string, answer: ApiAnswer): ControlApiError {
    const error = (answer.body as { error?: { code?: unknown; message?: unknown } }).error;
    const said = typeof error?.message === 'string' ? `: ${oneLine(error.message).slice(0, 500)}` : '';
    const code = typeof error?.code === 'string' ? ` ${oneLine(error.code).slice(0, 50)}` : '';
    return new ControlApiError(
      `the daemon at ${this.where} refused ${what} (${answer.status}${code})${said}`,
    );
  }

  close(): Promise<void> {
    return this.#agent.close();
  }

  #networkError(error: unknown): ControlApiError {
    const e = error as { name?: string; code?: string; message?: string };
    if (
      e.name === 'TimeoutError' ||
      e.code === 'UND_ERR_HEADERS_TIMEOUT' ||
      e.code === 'UND_ERR_BODY_TIMEOUT'
    ) {
      return new ControlApiError(
        `the daemon at ${this.where} did not answer within ${formatDuration(this.#timeoutMs)} (--timeout)`,
      );
    }
    if (e.code === 'UND_ERR_RES_EXCEEDED_MAX_SIZE') {
      return new ControlApiError(`the answer from ${this.where} is larger than ${MAX_ANSWER_BYTES} bytes`);
    }
    const code = e.code ?? oneLine(e.message ?? String(error));
    if (UNREACHABLE.has(e.code ?? '')) {
      return new ControlApiError(
        `the daemon does not answer at ${this.where} (${code}); is it running? If it is elsewhere, ${this.#target.fix}`,
      );
    }
    return new ControlApiError(`cannot reach the daemon at ${this.where} (${code}); ${this.#target.fix}`);
  }

  #unauthorized(): ControlApiError {
    return new ControlApiError(
      this.#target.token === undefined
        ? `the daemon at ${this.where} requires an API token: WATCHER_API_TOKEN is missing (set it as the daemon has it, in the environment, .env or $CREDENTIALS_DIRECTORY/api-token)`
        : `the daemon at ${this.where} refused the API token: WATCHER_API_TOKEN is wrong (it must be the daemon's own)`,
    );
  }
}

/** The control API's error code in an answer (`{"error": {"code": ...}}`), if it has one. */
export function errorCodeOf(body: unknown): unknown {
  const error = isPlainObject(body) ? body.error : undefined;
  return isPlainObject(error) ? error.code : undefined;
}

function parseOr(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

export interface ControlCommandIo {
  target: ControlApiTarget;
  timeoutMs: number;
  stderr: Writable;
  /** Scrubs the error line: the configuration's secrets, and URL credentials. */
  redactor: Redactor;
}

/**
 * Runs a command against the daemon: its exit code, or 1 after one `error:` line when talking to
 * the daemon failed. The client's connections are closed either way.
 */
export async function withControlApi(
  io: ControlCommandIo,
  command: (client: ControlClient) => Promise<number>,
): Promise<number> {
  const client = new ControlClient(io.target, io.timeoutMs);
  try {
    return await command(client);
  } catch (error) {
    if (!(error instanceof ControlApiError)) throw error;
    io.stderr.write(`error: ${io.redactor.scrub(error.message)}\n`);
    return 1;
  } finally {
    await client.close();
  }
}
