/**
 * One webhook attempt: a signed POST of an event's stored body to one endpoint, and what its
 * answer means. No retry, no state: the delivery engine decides what follows.
 *
 * Headers are Standard Webhooks': `webhook-id`, `webhook-timestamp` (this attempt's time, so each
 * attempt is signed afresh) and, with a secret, `webhook-signature`.
 */
import type { Dispatcher } from 'undici';
import { type RequestSignal, requestSignal, untilAborted } from '../shared/deadline.js';
import { WatcherError, WebhookError } from '../shared/errors.js';
import type { RequestTarget } from '../shared/proxy.js';
import { parseRetryAfter } from '../shared/retry-after.js';
import { sign } from './signing.js';

/** Bytes of a response body read before the connection is dropped instead. */
const MAX_RESPONSE_BODY_BYTES = 64 * 1024;

export type AttemptOutcome = 'success' | 'failure' | 'gone';

export interface AttemptAnswer {
  outcome: AttemptOutcome;
  /** HTTP status, 0 when no response arrived. */
  status: number;
  /** Why it failed; undefined on success. */
  error: WebhookError | WatcherError | undefined;
  /** From a `Retry-After` header, in ms from now. */
  retryAfterMs: number | undefined;
  durationMs: number;
}

export interface AttemptRequest {
  /** The endpoint's URL, parsed once (`requestTarget`). */
  target: RequestTarget;
  /** `Authorization` for the URL's credentials (`basicAuthorization`), if it has any. */
  authorization?: string | undefined;
  webhookId: string;
  body: string;
  secretKey: Buffer | undefined;
  userAgent: string;
  timeoutMs: number;
  dispatcher: Dispatcher;
  /** Aborts the attempt (a close deadline); its reason becomes the error when it is a WatcherError. */
  signal: AbortSignal;
  nowMs: number;
}

/** Sends one attempt; never throws. */
export async function sendAttempt(a: AttemptRequest): Promise<AttemptAnswer> {
  const timestampSec = Math.floor(a.nowMs / 1000);
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'user-agent': a.userAgent,
    'webhook-id': a.webhookId,
    'webhook-timestamp': String(timestampSec),
  };
  if (a.authorization !== undefined) headers.authorization = a.authorization;
  if (a.secretKey) headers['webhook-signature'] = sign(a.secretKey, a.webhookId, timestampSec, a.body);
  // Follows the engine's signal (a close deadline, a pause) and bounds the whole exchange.
  const limit = requestSignal(
    [a.signal],
    a.timeoutMs,
    () => new WebhookError('WEBHOOK_TIMEOUT', `no answer within ${a.timeoutMs} ms`),
  );
  const signal = limit.signal;
  const started = performance.now();
  let status = 0;
  let error: WebhookError | WatcherError | undefined;
  try {
    const response = await untilAborted(
      a.dispatcher.request({
        ...a.target,
        method: 'POST',
        headers,
        body: a.body,
        signal,
        // Our own timer is the limit; keep undici's from cutting in earlier or later.
        headersTimeout: a.timeoutMs,
        bodyTimeout: a.timeoutMs,
      }),
      signal,
    );
    status = response.statusCode;
    error = statusFailure(status, response.headers['retry-after'], a.nowMs);
    // The status decides; the body is read only to free the connection, within the same limit.
    await response.body.dump({ limit: MAX_RESPONSE_BODY_BYTES }).catch(() => undefined);
  } catch (thrown) {
    error = transportFailure(thrown, signal);
  } finally {
    limit.dispose();
  }
  const outcome: AttemptOutcome = !error ? 'success' : error.code === 'WEBHOOK_GONE' ? 'gone' : 'failure';
  return {
    outcome,
    status,
    error,
    retryAfterMs: error instanceof WebhookError ? error.retryAfterMs : undefined,
    durationMs: Math.round(performance.now() - started),
  };
}

/** The failure a response status means, or undefined for a 2xx. */
function statusFailure(
  status: number,
  retryAfter: string | string[] | undefined,
  nowMs: number,
): WebhookError | undefined {
  if (status >= 200 && status < 300) return undefined;
  if (status === 410) return new WebhookError('WEBHOOK_GONE', 'endpoint answered 410 Gone', { status });
  const retryAfterMs = parseRetryAfter(retryAfter, nowMs);
  const what = status >= 300 && status < 400 ? 'a redirect, which is not followed' : 'not a 2xx';
  return new WebhookError('WEBHOOK_REJECTED', `endpoint answered ${status}: ${what}`, {
    status,
    retryAfterMs,
  });
}

/** The failure an exception from undici means. */
function transportFailure(error: unknown, signal: RequestSignal): WebhookError | WatcherError {
  if (signal.aborted && signal.reason instanceof WatcherError) return signal.reason;
  const code = (error as { code?: unknown } | null)?.code;
  if (
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT' ||
    code === 'UND_ERR_CONNECT_TIMEOUT'
  ) {
    return new WebhookError('WEBHOOK_TIMEOUT', 'endpoint did not answer in time', { cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new WebhookError('WEBHOOK_NETWORK', `request failed: ${message}`, { cause: error });
}

/** The URL without credentials, query or fragment, which may carry tokens. */
export function endpointLabel(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '<invalid url>';
  }
}
