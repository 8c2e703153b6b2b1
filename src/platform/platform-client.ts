/**
 * The platform client: the only code that talks to the Seven Bridges API.
 *
 * Every counted request goes through the rate limiter; every answer's `X-RateLimit-*` headers are
 * reported to it, errors included. Retries happen here, through p-retry only:
 * - 503 with code 0 is maintenance: retried with backoff growing to 5 minutes apart, for as long
 *   as it lasts (a shutdown aborts the wait).
 * - other 5xx, truncated or malformed bodies, timeouts and network errors: a few retries with
 *   exponential backoff and jitter, then the error goes to the caller (whose ids stay due).
 * - 429 is not retried here: the limiter is told, pauses every call until the reset, and the
 *   caller checks the same ids again after it.
 * - 401/403 on a whole call and other 4xx are not retried: trying again at once cannot help.
 * When the bulk endpoint answers 404 or 405, this client falls back to single gets for a while.
 *
 * One bad id never costs the others their answer (`bulkGet`):
 * - A bulk call refused as a whole for a job-level reason (403/9005 "no access to the job",
 *   404/9008 "no such job": `PLATFORM_NOT_FOUND`) is about some id in it, not about the call:
 *   that call alone is answered by single gets of its ids, and bulk stays on for everyone else.
 * - Among single gets, an id whose GET fails for a reason of its own (a job-level code, or another
 *   4xx that is not about the token or the quota) becomes an error item naming that id. What
 *   concerns the whole account (401, a 403 without a job code, 429) or the platform (5xx,
 *   timeouts, network, after their retries) still fails the whole call, as before.
 *
 * Exports and imports (docs/platform-api.md §3–§5) are asked about through the same methods with a
 * kind: one call carries one kind (`/bulk/storage/exports/get` with `export_ids`, or
 * `/bulk/storage/imports/get` with `import_ids`), and both share the one gate (the limiter).
 */
import pRetry, { AbortError } from 'p-retry';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import {
  type BulkItem,
  EXPORT_ID_PATTERN,
  type JobKind,
  meansMissing,
  type Observation,
  observationsFromBulk,
  type TrackerWarning,
} from '../polling/tracker.js';
import { Bus, type PlatformRoute, type RequestOutcome } from '../shared/bus.js';
import { linkedSignal, type RequestSignal, requestSignal, untilAborted } from '../shared/deadline.js';
import { isRetryable, PlatformError, type PlatformErrorBody } from '../shared/errors.js';
import { clipText } from '../shared/log-value.js';
import { createDispatcher, type RequestTarget, requestTarget } from '../shared/proxy.js';
import { REDACTED, safeUrl } from '../shared/redact.js';
import { parseRetryAfter } from '../shared/retry-after.js';
import type { RateInfo } from './rate-limiter.js';

/** Codes of a 404/403 that speak of the job asked for, not of the route (docs/platform-api.md §6). */
const JOB_MISSING_CODES = new Set([9005, 9008]);

/** How long single gets replace the bulk endpoint after it answered 404/405, before it is tried again. */
const BULK_RETRY_AFTER_MS = 10 * 60_000;

/**
 * The most of an answer that is read. A bulk answer for 100 exports is well under 1 MiB even with
 * full File objects in `result`; past this the connection is dropped and the call counts as failed.
 */
export const MAX_ANSWER_BYTES = 8 * 1024 * 1024;

/**
 * The deepest an answer may nest objects and arrays. A job's object nests about four levels; what
 * is parsed is stored, logged and sent on, by code that recurses (`JSON.stringify`, the logger) and
 * overflows the stack some thousands of levels down, which would fail every commit the job's change
 * shares. So a deeper 2xx answer is a bad answer (retried; a batch that keeps failing is taken apart
 * down to the job), and a deeper error body is not read.
 */
export const MAX_ANSWER_DEPTH = 128;

/** What the client needs of the limiter. */
export interface RequestGate {
  /** Runs `fn` when allowed; when `signal` aborts first, rejects with its reason without running it. */
  schedule<T>(fn: () => Promise<T>, signal?: AbortSignal, mayStart?: () => boolean): Promise<T>;
  /**
   * Reads an answer's quota headers. `fromCall` is false for the answer of a call that did not pass
   * `schedule` (the free `GET /rate_limit`): it is not among the calls in flight.
   */
  observe(info: RateInfo, fromCall?: boolean): void;
  rateLimited(resetAt: number | undefined): void;
}

export type { PlatformRoute, RequestOutcome };

/** The platform's paths and bulk body key for each kind (docs/platform-api.md §3–§5). */
const KIND_API: Readonly<Record<JobKind, { path: string; bulkKey: 'export_ids' | 'import_ids' }>> = {
  export: { path: 'exports', bulkKey: 'export_ids' },
  import: { path: 'imports', bulkKey: 'import_ids' },
};

/** Items per page of a list call: the platform's most (docs/platform-api.md §3). */
export const LIST_PAGE_LIMIT = 100;

/** One page of `GET /storage/{exports|imports}`: the jobs on it, and the next page's path. */
export interface JobPage {
  items: Array<{ id: string; state: string }>;
  /**
   * The path (under the endpoint) of the page named by `links[rel=next]`; undefined on the last,
   * and on a page the platform sent empty, whatever next page it names: the platform pages by
   * offset, and nothing lies past an empty page (docs/platform-api.md §3). Empty as sent, that is:
   * a page whose items were all left out here (ids that are not job ids) is not the end.
   */
  next: string | undefined;
}
export interface RetryPolicy {
  /** Retries of transient errors (5xx, timeouts, bad bodies, network) within one call. */
  retries: number;
  /** First backoff; it doubles per try, times a random 1–2 (4 retries wait about 7–15 s in all). */
  minTimeoutMs: number;
  /** Longest wait between two tries during maintenance. */
  maintenanceMaxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = {
  retries: 4,
  minTimeoutMs: 500,
  maintenanceMaxDelayMs: 300_000,
};

/** The most characters of a platform error message carried into an error's text. */
const MAX_ERROR_MESSAGE = 500;

/** Tokens at least this long are looked for in answers (see `#withoutToken`). */
const MIN_ECHOED_TOKEN = 16;

export interface PlatformClientOptions {
  endpoint: string;
  token: string;
  gate: RequestGate;
  userAgent: string;
  log: Logger;
  /** One request's limit, headers and body. */
  timeoutMs?: number;
  retry?: Partial<RetryPolicy>;
  dispatcher?: Dispatcher;
  /** Where requests, bulk calls and answers of the wrong size are reported (metrics, readiness). */
  bus?: Bus;
  now?: () => number;
  /** Bytes of an answer read before it is dropped; default MAX_ANSWER_BYTES. */
  maxAnswerBytes?: number;
  /**
   * Asked right before every request goes on the wire (with replicas: whether this replica still
   * leads, by the election's own clock; reading it may step the replica down, and so abort the
   * call, on the spot). When false the request is not sent and the call fails with
   * `SHUTTING_DOWN`. A call queued in the limiter or waiting to retry while the event loop was
   * blocked past the lease would otherwise go out when its timer fires, before the election's.
   * Absent: always true.
   */
  mayAct?: () => boolean;
}

/**
 * Per call: `signal` drops the call when it aborts, with the signal's reason, wherever it is (queued
 * in the gate, waiting to retry, or on the wire). The daemon aborts its leader's calls this way
 * when it steps down. A request aborted on the wire is not reported on the bus (it has no outcome).
 */
export interface CallOptions {
  signal?: AbortSignal | undefined;
}

export interface RateLimitStatus extends RateInfo {
  body: unknown;
}

export interface CheckResult {
  observations: Observation[];
  warnings: TrackerWarning[];
}

interface Answer {
  status: number;
  json: unknown;
}

export class PlatformClient {
  readonly #endpoint: string;
  /** The endpoint parsed once; its path (`/v2`, or empty) prefixes every request's. */
  readonly #target: RequestTarget;
  readonly #headers: Record<string, string>;
  readonly #gate: RequestGate;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #retry: RetryPolicy;
  readonly #dispatcher: Dispatcher;
  readonly #ownsDispatcher: boolean;
  readonly #bus: Bus;
  /** Aborts retry waits on close. */
  readonly #closing = new AbortController();
  /** Exchanges not ended yet, and what `close()` waits on until there are none. */
  #exchanges = 0;
  #idle: Array<() => void> = [];
  /** Set when a bulk endpoint answered 404 or 405: single gets until then (epoch ms), per kind. */
  readonly #bulkUnsupportedUntil: Record<JobKind, number> = { export: 0, import: 0 };
  readonly #now: () => number;
  readonly #maxAnswerBytes: number;
  readonly #mayAct: (() => boolean) | undefined;
  /** The token, when long enough to look for in answers; and as `JSON.stringify` writes it. */
  readonly #token: string | undefined;
  readonly #tokenInJson: string | undefined;

  constructor(options: PlatformClientOptions) {
    this.#endpoint = options.endpoint.replace(/\/+$/, '');
    const target = requestTarget(this.#endpoint);
    this.#target = { origin: target.origin, path: target.path.replace(/\/+$/, '') };
    this.#headers = {
      'x-sbg-auth-token': options.token,
      accept: 'application/json',
      'content-type': 'application/json',
      'user-agent': options.userAgent,
    };
    this.#gate = options.gate;
    this.#log = options.log;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#retry = { ...DEFAULT_RETRY, ...options.retry };
    this.#ownsDispatcher = options.dispatcher === undefined;
    this.#dispatcher =
      options.dispatcher ??
      createDispatcher({ connections: 8, keepAliveTimeout: 30_000, connectTimeout: 10_000, pipelining: 1 });
    this.#bus = options.bus ?? new Bus();
    this.#now = options.now ?? Date.now;
    this.#maxAnswerBytes = options.maxAnswerBytes ?? MAX_ANSWER_BYTES;
    this.#mayAct = options.mayAct;
    this.#token = options.token.length >= MIN_ECHOED_TOKEN ? options.token : undefined;
    this.#tokenInJson = this.#token === undefined ? undefined : JSON.stringify(this.#token).slice(1, -1);
  }

  /** Whether the exports' bulk endpoint is in use (not replaced by single gets after a 404/405). */
  get bulkSupported(): boolean {
    return this.bulkSupportedFor('export');
  }

  bulkSupportedFor(kind: JobKind): boolean {
    return this.#now() >= this.#bulkUnsupportedUntil[kind];
  }

  /**
   * Checks up to 100 ids of one kind in one bulk call (or single gets after a fallback) and
   * interprets the answer. `checkStatuses(ids)` asks about exports.
   */
  checkStatuses(ids: readonly string[]): Promise<CheckResult>;
  checkStatuses(kind: JobKind, ids: readonly string[], options?: CallOptions): Promise<CheckResult>;
  async checkStatuses(
    kindOrIds: JobKind | readonly string[],
    maybeIds?: readonly string[],
    options: CallOptions = {},
  ): Promise<CheckResult> {
    const [kind, ids] = kindAndArgument(kindOrIds, maybeIds);
    const items = await this.bulkGet(kind, ids, options);
    return observationsFromBulk(ids, items);
  }

  /**
   * `POST /bulk/storage/{exports|imports}/get`: the raw items, in the platform's order.
   * `bulkGet(ids)` asks about exports.
   */
  bulkGet(ids: readonly string[]): Promise<BulkItem[]>;
  bulkGet(kind: JobKind, ids: readonly string[], options?: CallOptions): Promise<BulkItem[]>;
  async bulkGet(
    kindOrIds: JobKind | readonly string[],
    maybeIds?: readonly string[],
    options: CallOptions = {},
  ): Promise<BulkItem[]> {
    const [kind, ids] = kindAndArgument(kindOrIds, maybeIds);
    if (ids.length === 0) return [];
    if (ids.length > 100) throw new RangeError(`bulkGet takes at most 100 ids, got ${ids.length}`);
    const api = KIND_API[kind];
    if (this.bulkSupportedFor(kind)) {
      try {
        const answer = await this.#call(
          'bulk_get',
          'POST',
          `/bulk/storage/${api.path}/get`,
          { [api.bulkKey]: ids },
          { signal: options.signal },
        );
        this.#bus.emit('platform.bulk', { ids: ids.length });
        const items = (answer.json as { items?: unknown }).items;
        if (!Array.isArray(items)) throw new Error('unreachable: checked in #call');
        // One item per id is what a whole answer looks like; anything else is counted, and the
        // tracker will not attribute anonymous errors from it.
        if (items.length !== ids.length)
          this.#bus.emit('platform.bulk_mismatch', { asked: ids.length, items: items.length });
        return items as BulkItem[];
      } catch (error) {
        if (error instanceof PlatformError && error.code === 'PLATFORM_NOT_FOUND') {
          return this.#splitRefusedBulk(kind, ids, error, options);
        }
        if (!(error instanceof PlatformError && (error.status === 404 || error.status === 405))) throw error;
        this.#bulkUnsupportedUntil[kind] = this.#now() + BULK_RETRY_AFTER_MS;
        this.#log.warn(
          { status: error.status, retry_bulk_in_ms: BULK_RETRY_AFTER_MS, kind },
          `bulk ${kind} endpoint unavailable; one request per ${kind} for now`,
        );
      }
    }
    return this.#getEach(kind, ids, options);
  }

  /**
   * A bulk call the platform refused as a whole with a job-level code (403/9005, 404/9008): some id
   * in it is missing or not ours, and the platform will not say which. The call is answered by
   * single gets of its ids instead, so the others get their answers and the bad id gets an error
   * item naming it (a miss toward LOST). Bulk stays on: the next call without that id is a bulk call.
   *
   * Spend: at most `ids.length` single gets (the batch size, ≤ 100) on top of the refused bulk
   * call, each through the limiter like any request. It does not repeat hot: every id is answered,
   * so the scheduler counts the batch checked and none of its ids is due again before the poll
   * interval; and a missing id is LOST, never checked again, after `lostAfter` (3) such checks, so
   * one bad id costs at most 3 × (1 + batch size) requests in all. A lone id is answered from the
   * refusal itself (it can only be about that id): no extra call.
   */
  async #splitRefusedBulk(
    kind: JobKind,
    ids: readonly string[],
    refusal: PlatformError,
    options: CallOptions,
  ): Promise<BulkItem[]> {
    const [only] = ids;
    if (ids.length === 1 && only !== undefined) return [perJobErrorItem(only, refusal)];
    this.#log.warn(
      { kind, ids: ids.length, status: refusal.status, platform_code: refusal.body?.code },
      `bulk ${kind} call refused for a job in it; asking its ids one by one`,
    );
    return this.#getEach(kind, ids, options);
  }

  /**
   * Single gets of `ids`, one after another, each through the limiter. An id whose get fails for a
   * reason of its own is an error item naming it; an error about the token, the quota or the
   * platform as a whole fails the call (`isPerJobError`).
   */
  async #getEach(kind: JobKind, ids: readonly string[], options: CallOptions): Promise<BulkItem[]> {
    const items: BulkItem[] = [];
    for (const id of ids) {
      try {
        items.push(await this.getOneItem(kind, id, options));
      } catch (error) {
        if (options.signal?.aborted || !isPerJobError(error)) throw error;
        this.#log.debug(
          { kind, id, status: error.status, platform_code: error.body?.code },
          `single get of one ${kind} refused; the others are still asked`,
        );
        items.push(perJobErrorItem(id, error));
      }
    }
    return items;
  }

  /**
   * `GET /storage/{exports|imports}/{id}` as a bulk-style item; "not found" and "forbidden" are
   * items, not errors. `getOneItem(id)` asks about an export.
   */
  getOneItem(id: string): Promise<BulkItem>;
  getOneItem(kind: JobKind, id: string, options?: CallOptions): Promise<BulkItem>;
  async getOneItem(kindOrId: string, maybeId?: string, options: CallOptions = {}): Promise<BulkItem> {
    const [kind, id] =
      maybeId === undefined ? (['export', kindOrId] as const) : ([kindOrId as JobKind, maybeId] as const);
    try {
      const answer = await this.#call(
        'get',
        'GET',
        `/storage/${KIND_API[kind].path}/${encodeURIComponent(id)}`,
        undefined,
        { signal: options.signal },
      );
      return { resource: answer.json };
    } catch (error) {
      // The id is named, so the tracker attributes it to this export alone.
      if (error instanceof PlatformError && error.code === 'PLATFORM_NOT_FOUND')
        return perJobErrorItem(id, error);
      throw error;
    }
  }

  /**
   * One page of `GET /storage/{exports|imports}`: the first page of jobs in `state` (100 a page),
   * or the page at `next` (a `JobPage.next` of the previous page: a path under the endpoint). Items hold `id` and `state` (the
   * default fields). `gate` replaces the client's own for this call (a share of the budget).
   */
  async listPage(
    kind: JobKind,
    from: { state: string } | { next: string },
    gate?: RequestGate,
    options: CallOptions = {},
  ): Promise<JobPage> {
    const path =
      'next' in from
        ? from.next
        : `/storage/${KIND_API[kind].path}?${new URLSearchParams({ state: from.state, limit: String(LIST_PAGE_LIMIT) })}`;
    const answer = await this.#call('list', 'GET', path, undefined, {
      ...(gate ? { gate } : {}),
      signal: options.signal,
    });
    const json = answer.json as { items?: unknown; links?: unknown };
    const items: JobPage['items'] = [];
    // An id that is not a job id (`EXPORT_ID_PATTERN`) could not be shown, paged past or removed
    // through the control API: it is left out, with one warning a page.
    const odd: string[] = [];
    let oddCount = 0;
    for (const item of json.items as unknown[]) {
      const v = item as { id?: unknown; state?: unknown } | null;
      if (!v || typeof v !== 'object' || typeof v.state !== 'string') continue;
      if (typeof v.id === 'string' && EXPORT_ID_PATTERN.test(v.id)) {
        items.push({ id: v.id, state: v.state });
      } else if (v.id !== undefined && ++oddCount <= 3) {
        // Not a job id either: a number, an object (shown by its type), an over-long string.
        const shown = typeof v.id === 'string' ? v.id : `(${v.id === null ? 'null' : typeof v.id})`;
        odd.push(shown.length > 64 ? `${shown.slice(0, 64)}…` : shown);
      }
    }
    if (oddCount > 0) {
      this.#log.warn(
        { kind, count: oddCount, sample_ids: odd, pattern: EXPORT_ID_PATTERN.source },
        `the platform listed ${kind}s whose ids are not job ids; left out`,
      );
    }
    // The state asked for stays that of every page of the listing (see `#nextPath`).
    const state =
      'next' in from ? new URLSearchParams(path.slice(path.indexOf('?') + 1)).get('state') : from.state;
    return {
      items,
      next: (json.items as unknown[]).length === 0 ? undefined : this.#nextPath(json.links, kind, state),
    };
  }

  /**
   * The next page named by `links[rel=next]`, as a path under this client's endpoint: the link's
   * query on this list's own path. Only the query is taken from the link, never its host, so the
   * token goes nowhere but the configured endpoint. A link to another resource is not followed (a
   * warning, and the listing ends there). The listing's own `state` and page size are kept: a link
   * that drops or changes them would turn a listing of unfinished jobs into one of every job the
   * user ever ran (or of one a page), read page by page out of discovery's share.
   */
  #nextPath(links: unknown, kind: JobKind, state: string | null): string | undefined {
    if (!Array.isArray(links)) return undefined;
    const link = links.find((l) => (l as { rel?: unknown } | null)?.rel === 'next') as
      | { href?: unknown }
      | undefined;
    if (typeof link?.href !== 'string') return undefined;
    const list = `/storage/${KIND_API[kind].path}`;
    let url: URL | undefined;
    try {
      url = new URL(link.href, `${this.#endpoint}/`);
    } catch {
      url = undefined;
    }
    if (url?.pathname.replace(/\/+$/, '').endsWith(list) && url.search.length > 1) {
      if (state !== null) url.searchParams.set('state', state);
      url.searchParams.set('limit', String(LIST_PAGE_LIMIT));
      return `${list}${url.search}`;
    }
    this.#log.warn(
      { kind, next: link.href.slice(0, 200) },
      'the platform named a next page that is not a page of this list; not followed',
    );
    return undefined;
  }

  /** `GET /rate_limit`: free of the quota, so it bypasses the limiter, but its headers are read. */
  async rateLimit(options: CallOptions = {}): Promise<RateLimitStatus> {
    const answer = await this.#call('rate_limit', 'GET', '/rate_limit', undefined, {
      gated: false,
      signal: options.signal,
    });
    const rate =
      (answer.json as { rate?: { limit?: unknown; remaining?: unknown; reset?: unknown } }).rate ?? {};
    const info: RateLimitStatus = { body: answer.json };
    if (typeof rate.limit === 'number') info.limit = rate.limit;
    if (typeof rate.remaining === 'number') info.remaining = rate.remaining;
    if (typeof rate.reset === 'number') info.resetAt = rate.reset * 1000;
    return info;
  }

  /**
   * Aborts retry waits; lets exchanges on the wire end, then closes the connection pool it
   * created. Idempotent. Once no exchange is left, the pool holds only idle connections and
   * connects a call gave up on (a TLS handshake that never ends, `untilAborted`), which a graceful
   * close would wait for until undici's own connect timeout: it is destroyed instead.
   */
  async close(): Promise<void> {
    if (this.#closing.signal.aborted) return;
    this.#closing.abort(new PlatformError('SHUTTING_DOWN', 'platform client closed'));
    if (!this.#ownsDispatcher) return;
    while (this.#exchanges > 0) await new Promise<void>((resolve) => this.#idle.push(resolve));
    await this.#dispatcher.destroy().catch(() => undefined);
  }

  /** Aborts requests still on the wire (after a shutdown deadline). */
  async destroy(): Promise<void> {
    this.#closing.abort(new PlatformError('SHUTTING_DOWN', 'platform client closed'));
    if (this.#ownsDispatcher) await this.#dispatcher.destroy().catch(() => undefined);
  }

  /**
   * One logical call: retried per the policy above; every attempt passes the limiter (or `gate`).
   * `signal` (the caller's) drops it wherever it is; `close` drops its retry waits.
   */
  #call(
    route: PlatformRoute,
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
    {
      gated = true,
      gate = this.#gate,
      signal: callSignal,
    }: { gated?: boolean; gate?: RequestGate; signal?: AbortSignal | undefined } = {},
  ): Promise<Answer> {
    const linked = callSignal === undefined ? undefined : linkedSignal([this.#closing.signal, callSignal]);
    const signal = linked?.signal ?? this.#closing.signal;
    const attempt = async (attemptNumber: number): Promise<Answer> => {
      const once = () => this.#once(route, method, path, body, attemptNumber, callSignal, gated);
      if (signal.aborted) throw new AbortError(signal.reason as Error);
      try {
        return await (gated ? gate.schedule(once, callSignal, this.#mayAct) : once());
      } catch (error) {
        if (callSignal?.aborted) throw new AbortError(callSignal.reason as Error);
        if (error instanceof PlatformError && !isRetryable(error)) throw new AbortError(error);
        throw error;
      }
    };
    // p-retry throws the signal's reason after an attempt that succeeded once the signal is
    // aborted: close() (a shutdown) would throw away an answer that came back in time, though a
    // check on the wire is let finish and its results stored. Such an answer is kept; one the
    // caller dropped (its own signal) is not.
    let answered: { answer: Answer } | undefined;
    const keep = async (attemptNumber: number): Promise<Answer> => {
      const answer = await attempt(attemptNumber);
      answered = { answer };
      return answer;
    };
    const retrying = pRetry(keep, {
      retries: Number.POSITIVE_INFINITY,
      factor: 2,
      minTimeout: this.#retry.minTimeoutMs,
      maxTimeout: this.#retry.maintenanceMaxDelayMs,
      randomize: true,
      signal,
      shouldRetry: ({ error, attemptNumber }) => this.#shouldRetry(error, attemptNumber),
      onFailedAttempt: ({ error, attemptNumber }) => {
        if (answered !== undefined) return;
        this.#log.warn(
          {
            route,
            attempt: attemptNumber,
            code: (error as PlatformError).code,
            err_message: error.message,
            // Which platform: "could not reach the platform" alone does not say where it looked.
            endpoint: safeUrl(this.#endpoint),
          },
          'platform request failed',
        );
      },
    });
    const calling = retrying.catch((error: unknown) => {
      if (answered !== undefined && !callSignal?.aborted) return answered.answer;
      throw error;
    });
    return linked === undefined ? calling : calling.finally(linked.dispose);
  }

  /** Maintenance is waited out; other transient errors get `retries` tries at short backoff. */
  #shouldRetry(error: unknown, attemptNumber: number): boolean {
    if (!(error instanceof PlatformError) || !isRetryable(error)) return false;
    if (error.code === 'PLATFORM_MAINTENANCE') return true;
    return attemptNumber <= this.#retry.retries;
  }

  async #once(
    route: PlatformRoute,
    method: 'GET' | 'POST',
    path: string,
    body: unknown,
    attemptNumber: number,
    signal: AbortSignal | undefined,
    gated: boolean,
  ): Promise<Answer> {
    // Not sent at all, and so not reported: this replica no longer leads (see `mayAct`). A gated
    // call was asked by the limiter just now, before it was counted; this asks the others.
    if (!gated && this.#mayAct !== undefined && !this.#mayAct()) {
      // Stepping down (just now, in mayAct) has aborted the caller's signal: its reason wins.
      if (signal?.aborted) throw signal.reason;
      throw new PlatformError('SHUTTING_DOWN', 'no longer the leader: request not sent');
    }
    const started = performance.now();
    let outcome: RequestOutcome = 'network';
    try {
      // A listing is read for ids and states only, and is neither stored nor logged: any depth will do.
      const answer = await this.#send(method, path, body, signal, route !== 'list', gated);
      outcome = 'ok';
      const items = (answer.json as { items?: unknown } | null)?.items;
      if ((route === 'bulk_get' || route === 'list') && !Array.isArray(items)) {
        outcome = 'bad_response';
        throw new PlatformError(
          'PLATFORM_BAD_RESPONSE',
          `${route === 'list' ? 'list' : 'bulk'} answer has no items array`,
          { status: answer.status },
        );
      }
      // A page is asked for 100 items at most: one of far more (under the size cap, ~200,000)
      // would all be added to the watch list at once.
      if (route === 'list' && (items as unknown[]).length > LIST_PAGE_LIMIT) {
        outcome = 'bad_response';
        throw new PlatformError(
          'PLATFORM_BAD_RESPONSE',
          `list answer has ${(items as unknown[]).length} items; at most ${LIST_PAGE_LIMIT} were asked for`,
          { status: answer.status },
        );
      }
      return answer;
    } catch (error) {
      outcome = outcomeOf(error);
      throw error;
    } finally {
      const durationMs = Math.round(performance.now() - started);
      // Dropped by the caller: no outcome to report (it would read as an unreachable platform).
      if (!signal?.aborted) this.#bus.emit('platform.request', { route, outcome, durationMs });
      const asked = body as { export_ids?: unknown[]; import_ids?: unknown[] } | undefined;
      const ids = route === 'bulk_get' ? (asked?.export_ids ?? asked?.import_ids)?.length : undefined;
      this.#log.debug(
        { route, attempt: attemptNumber, outcome, duration_ms: durationMs, ids },
        'platform request',
      );
    }
  }

  /**
   * The parsed answer with the token, should the platform echo it (in an error message, say),
   * replaced in every string and key: what is parsed is stored and served (a LOST record's error,
   * its webhook), where the log scrubber does not reach. Only for a token long enough not to match
   * by chance (real ones are 32 characters). The text is looked at first, so an answer is walked
   * only when it holds the token as written or any JSON escape (`\/`, `\u003c`...) that could
   * spell it otherwise; the walk is iterative (an answer may nest deeper than the stack).
   */
  #withoutToken(text: string, json: unknown): unknown {
    const token = this.#token;
    if (token === undefined || !(text.includes(this.#tokenInJson as string) || text.includes('\\')))
      return json;
    const clean = (v: string) => (v.includes(token) ? v.split(token).join(REDACTED) : v);
    if (typeof json === 'string') return clean(json);
    const stack: unknown[] = [json];
    while (stack.length > 0) {
      const node = stack.pop();
      if (node === null || typeof node !== 'object') continue;
      const record = node as Record<string, unknown>;
      for (const key of Object.keys(record)) {
        const value = record[key];
        if (typeof value === 'string') record[key] = clean(value);
        else if (value !== null && typeof value === 'object') stack.push(value);
        const cleaned = clean(key);
        if (cleaned !== key) {
          record[cleaned] = record[key];
          delete record[key];
        }
      }
    }
    return json;
  }

  /** One HTTP exchange. Reads the quota headers, parses the body, maps failures to PlatformError. */
  async #send(
    method: 'GET' | 'POST',
    path: string,
    body: unknown,
    signal: AbortSignal | undefined,
    limitDepth = true,
    gated = true,
  ): Promise<Answer> {
    if (signal?.aborted) throw signal.reason;
    // The whole exchange, body included, is bounded; the signal is let go of when it ends.
    const limit = requestSignal([signal], this.#timeoutMs);
    this.#exchanges++;
    try {
      return await this.#exchange(method, path, body, signal, limit.signal, limitDepth, gated);
    } finally {
      limit.dispose();
      if (--this.#exchanges === 0) for (const resolve of this.#idle.splice(0)) resolve();
    }
  }

  async #exchange(
    method: 'GET' | 'POST',
    path: string,
    body: unknown,
    signal: AbortSignal | undefined,
    limit: RequestSignal,
    limitDepth: boolean,
    gated: boolean,
  ): Promise<Answer> {
    let response: Dispatcher.ResponseData;
    try {
      response = await untilAborted(
        this.#dispatcher.request({
          origin: this.#target.origin,
          path: `${this.#target.path}${path}`,
          method,
          headers: this.#headers,
          body: body === undefined ? null : JSON.stringify(body),
          headersTimeout: this.#timeoutMs,
          bodyTimeout: this.#timeoutMs,
          signal: limit,
        }),
        limit,
      );
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      throw transportError(error);
    }
    const rate = readRateHeaders(response.headers);
    this.#gate.observe(rate, gated);
    let text: string;
    try {
      text = await readCapped(response, this.#maxAnswerBytes);
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      // A 429 or a 401 means what it means whatever its body: one whose body could not be read
      // (cut off, too slow, too large) must still pause the calls until the reset, or stop them,
      // not be retried at once as a bad answer. Other statuses need their body's code (a 503's 0,
      // a 403's or 404's 9005/9008): those stay bad answers, retried.
      const status = response.statusCode;
      if ((status === 429 || status === 401) && error instanceof PlatformError) {
        throw this.#statusError(status, undefined, rate, method, path, response.headers['retry-after']);
      }
      throw error;
    }
    let json: unknown = null;
    let parsed = true;
    let tooDeep = false;
    try {
      if (text !== '') {
        const value: unknown = JSON.parse(text);
        tooDeep = limitDepth && nestsDeeperThan(value, MAX_ANSWER_DEPTH);
        if (!tooDeep) json = this.#withoutToken(text, value);
      }
    } catch {
      parsed = false;
    }
    if (tooDeep) parsed = false;
    const status = response.statusCode;
    if (status >= 200 && status < 300) {
      if (tooDeep) {
        throw new PlatformError(
          'PLATFORM_BAD_RESPONSE',
          `answer to ${method} ${path} nests deeper than ${MAX_ANSWER_DEPTH} levels`,
          { status },
        );
      }
      if (!parsed || json === null || typeof json !== 'object') {
        throw new PlatformError('PLATFORM_BAD_RESPONSE', `answer to ${method} ${path} is not a JSON object`, {
          status,
        });
      }
      return { status, json };
    }
    const errorBody = parsed && json && typeof json === 'object' ? errorBodyOf(json) : undefined;
    throw this.#statusError(status, errorBody, rate, method, path, response.headers['retry-after']);
  }

  #statusError(
    status: number,
    body: PlatformErrorBody | undefined,
    rate: RateInfo,
    method: string,
    path: string,
    retryAfter?: string | string[],
  ): PlatformError {
    // The platform's message goes into the error's text, and so into log lines (every attempt)
    // and problem reports: bounded, whatever length came.
    const said = body?.message ? `: ${clipText(String(body.message), MAX_ERROR_MESSAGE)}` : '';
    const details = { status, ...(body ? { body } : {}), ...(rate.resetAt ? { resetAt: rate.resetAt } : {}) };
    if (status === 429) {
      // The platform names its reset in X-RateLimit-Reset. A 429 without it (from a gateway in
      // front of the platform, say) may still say when to come back: a `Retry-After`, which the
      // limiter weighs as it would a reset (one too far ahead gets the fallback pause instead).
      const now = this.#now();
      const after = rate.resetAt === undefined ? parseRetryAfter(retryAfter, now) : undefined;
      this.#gate.rateLimited(rate.resetAt ?? (after === undefined ? undefined : now + after));
      return new PlatformError('PLATFORM_RATE_LIMITED', `rate limit exceeded${said}`, details);
    }
    if (status === 503 && body?.code === 0) {
      return new PlatformError('PLATFORM_MAINTENANCE', 'the platform is in maintenance', details);
    }
    if (status >= 500)
      return new PlatformError('PLATFORM_UNAVAILABLE', `platform answered ${status}${said}`, details);
    // "No such job" (9008) and "no access to this job" (9005) are about one export, not the call.
    if ((status === 404 || status === 403) && body?.code !== undefined && JOB_MISSING_CODES.has(body.code)) {
      return new PlatformError('PLATFORM_NOT_FOUND', `${method} ${path}: not found${said}`, details);
    }
    if (status === 401 || status === 403) {
      return new PlatformError(
        'PLATFORM_UNAUTHORIZED',
        `platform refused the token (${status})${said}`,
        details,
      );
    }
    if (status === 404) {
      return new PlatformError(
        'PLATFORM_REJECTED',
        `${method} ${path}: no such route on the platform (404${said}); is SB_API_ENDPOINT right?`,
        details,
      );
    }
    return new PlatformError(
      'PLATFORM_REJECTED',
      `${method} ${path}: platform answered ${status}${said}`,
      details,
    );
  }
}

/**
 * The body as text, at most `limit` bytes: a longer one (declared or streamed) is dropped, the
 * connection with it, and the call fails as a bad answer. An endless body therefore costs at most
 * `limit` bytes of memory, not all of it.
 */
async function readCapped(response: Dispatcher.ResponseData, limit: number): Promise<string> {
  const status = response.statusCode;
  const tooLarge = (size: string) =>
    new PlatformError('PLATFORM_BAD_RESPONSE', `answer larger than ${limit} bytes (${size}); dropped`, {
      status,
    });
  const declared = Number(response.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    response.body.destroy();
    throw tooLarge(`content-length ${declared}`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of response.body) {
      size += (chunk as Buffer).length;
      if (size > limit) {
        response.body.destroy();
        throw tooLarge(`more than ${size} read`);
      }
      chunks.push(chunk as Buffer);
    }
  } catch (error) {
    if (error instanceof PlatformError) throw error;
    throw new PlatformError('PLATFORM_BAD_RESPONSE', `answer body was cut off (${errorText(error)})`, {
      status,
      cause: error,
    });
  }
  return Buffer.concat(chunks, size).toString('utf8');
}

/** `X-RateLimit-Limit`, `-Remaining` and `-Reset` (epoch seconds), where present and numeric. */
export function readRateHeaders(headers: Record<string, string | string[] | undefined>): RateInfo {
  // Every value of a header sent more than once, so the most cautious one can be taken.
  const nums = (name: string): number[] => {
    const v = headers[name];
    const texts = Array.isArray(v) ? v : v === undefined ? [] : [v];
    return texts
      .filter((t) => t.trim() !== '')
      .map(Number)
      .filter((n) => Number.isFinite(n));
  };
  const info: RateInfo = {};
  const limit = nums('x-ratelimit-limit');
  // Whole requests: "0.5 left" is none left (a fraction would keep the limiter from ever admitting
  // a call, and from probing as it does at 0); less than none is none.
  const remaining = nums('x-ratelimit-remaining');
  const reset = nums('x-ratelimit-reset');
  if (limit.length > 0) info.limit = Math.min(...limit);
  if (remaining.length > 0) info.remaining = Math.max(0, Math.floor(Math.min(...remaining)));
  if (reset.length > 0) info.resetAt = Math.max(...reset) * 1000;
  return info;
}

/**
 * Whether a failed single get speaks of that one job, so the other ids of its call still count:
 * "no such job" / "no access" (`PLATFORM_NOT_FOUND`), or another 4xx the client does not take as
 * about the token or the quota (`PLATFORM_REJECTED`: 400, a 404 without a job code, 409...). Not:
 * 401 or a 403 without a job code (the token), 429 (the quota), nor 5xx, timeouts, network errors or
 * bad bodies, which were retried and concern the platform, not the job.
 */
function isPerJobError(error: unknown): error is PlatformError {
  return (
    error instanceof PlatformError &&
    (error.code === 'PLATFORM_NOT_FOUND' || error.code === 'PLATFORM_REJECTED')
  );
}

/**
 * The error item, named with its id, for one job the platform refused. A job-level refusal keeps
 * the platform's status and body (the tracker counts 9005/9008 toward LOST). Any other must never
 * read as a miss: a 404 without a job code is also what a wrong route or a proxy answers (the
 * tracker would take a bare 404 item as the job's), so its HTTP status is kept under another name.
 */
function perJobErrorItem(id: string, error: PlatformError): BulkItem {
  const item: PlatformErrorBody & { id: string } = { status: error.status, ...error.body, id };
  if (error.code !== 'PLATFORM_NOT_FOUND' && meansMissing(item)) {
    const { status: _status, ...rest } = item;
    return { error: { ...rest, http_status: error.status, message: item.message ?? error.message } };
  }
  return { error: item };
}

/** `(kind, x)` or, for the signatures that predate kinds, `(x)` about exports. */
function kindAndArgument<T>(kindOrArgument: JobKind | T, argument: T | undefined): [JobKind, T] {
  if (argument === undefined) return ['export', kindOrArgument as T];
  return [kindOrArgument as JobKind, argument];
}

function transportError(error: unknown): PlatformError {
  const code = (error as { code?: string; name?: string }).code;
  const name = (error as { name?: string }).name;
  if (
    name === 'TimeoutError' ||
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT' ||
    code === 'UND_ERR_CONNECT_TIMEOUT'
  ) {
    return new PlatformError('PLATFORM_TIMEOUT', `platform did not answer in time (${errorText(error)})`, {
      cause: error,
    });
  }
  return new PlatformError('PLATFORM_NETWORK', `could not reach the platform (${errorText(error)})`, {
    cause: error,
  });
}

function outcomeOf(error: unknown): RequestOutcome {
  if (!(error instanceof PlatformError)) return 'network';
  switch (error.code) {
    case 'PLATFORM_RATE_LIMITED':
      return 'rate_limited';
    case 'PLATFORM_MAINTENANCE':
      return 'maintenance';
    case 'PLATFORM_UNAVAILABLE':
      return 'server_error';
    case 'PLATFORM_UNAUTHORIZED':
      return 'unauthorized';
    case 'PLATFORM_NOT_FOUND':
      return 'not_found';
    case 'PLATFORM_BAD_RESPONSE':
      return 'bad_response';
    case 'PLATFORM_TIMEOUT':
      return 'timeout';
    case 'PLATFORM_NETWORK':
      return 'network';
    default:
      return 'rejected';
  }
}

function errorText(error: unknown): string {
  const e = error as { code?: unknown; name?: unknown; message?: unknown };
  if (typeof e.code === 'string') return e.code;
  // A DOMException's code is a legacy number (23 for a TimeoutError): no help in a log line.
  if (e.name === 'TimeoutError') return 'timed out';
  return typeof e.message === 'string' ? e.message : String(error);
}

/** Whether `value` nests objects and arrays deeper than `limit`. Iterative; stops at the first too deep. */
export function nestsDeeperThan(value: unknown, limit: number): boolean {
  if (value === null || typeof value !== 'object') return false;
  const nodes: object[] = [value];
  const depths: number[] = [1];
  while (nodes.length > 0) {
    const node = nodes.pop() as object;
    const depth = depths.pop() as number;
    if (depth > limit) return true;
    if (Array.isArray(node)) {
      for (let i = 0; i < node.length; i++) {
        const child: unknown = node[i];
        if (child !== null && typeof child === 'object') {
          nodes.push(child);
          depths.push(depth + 1);
        }
      }
    } else {
      for (const key in node) {
        const child: unknown = (node as Record<string, unknown>)[key];
        if (child !== null && typeof child === 'object') {
          nodes.push(child);
          depths.push(depth + 1);
        }
      }
    }
  }
  return false;
}

/**
 * An error answer's body with the fields this client reads checked: a message that is not text
 * (a converted object may even throw) is dropped, so that a 429 or a maintenance 503 is still told
 * apart by its status and code whatever else the body holds.
 */
function errorBodyOf(json: object): PlatformErrorBody {
  const { message, ...rest } = json as PlatformErrorBody & { message?: unknown };
  return typeof message === 'string' ? { ...rest, message } : rest;
}
