/**
 * Waiting for something with a deadline: start-up, shutdown, `watch` and the webhook engine all
 * wait "until this settles, or at most so long". Time is read through the global timers, so fake
 * timers drive it in tests.
 */
import { EventEmitter } from 'node:events';
import { Fifo, Link, unlink } from './fifo.js';

/**
 * Whether `promise` settles (either way) within `ms`. It is left to settle on its own when the
 * deadline comes first; the timer is cleared when it does not.
 */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        () => true,
        () => true,
      ),
      deadline,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Calls `fn` once when `signal` aborts (at once if it already has); the returned function takes it
 * back. For long-lived signals that get a listener per request: each signal gets one real
 * listener, and the callbacks wait in a list of intrusive links (`shared/fifo.ts`). An
 * `EventTarget` keeps its listeners in a linked list whose removed nodes still point at their
 * neighbours, and a `Set` with this much churn leaves its old tables behind when it rehashes: once
 * one of those has reached the old generation, every younger callback it points at (and all that
 * callback holds: a request, its answer) survives young collections until the next full one. A
 * removed link points at nothing but itself.
 */
export function onAbort(signal: AbortSignal, fn: () => void): () => void {
  if (signal.aborted) {
    fn();
    return () => undefined;
  }
  let callbacks = abortCallbacks.get(signal);
  if (callbacks === undefined) {
    const line = new Fifo<AbortCallback>();
    callbacks = line;
    abortCallbacks.set(signal, line);
    signal.addEventListener(
      'abort',
      () => {
        abortCallbacks.delete(signal);
        for (let callback = line.first(); callback !== undefined; callback = line.first()) {
          unlink(callback);
          callback.fn();
        }
      },
      { once: true },
    );
  }
  // A link of its own, so that the same function registered twice is two registrations.
  const callback = new AbortCallback(fn);
  callbacks.push(callback);
  return () => {
    unlink(callback);
  };
}

class AbortCallback extends Link {
  constructor(readonly fn: () => void) {
    super();
  }
}

const abortCallbacks = new WeakMap<AbortSignal, Fifo<AbortCallback>>();

/** A signal that follows some others and an optional time limit; `dispose` when done with it. */
export interface LinkedSignal<S = AbortSignal> {
  readonly signal: S;
  /** Detaches from the sources and clears the timer. Idempotent. */
  dispose(): void;
}

/** What `timeoutMs` aborts with when no other reason is given: what `AbortSignal.timeout` uses. */
function timeoutError(): DOMException {
  return new DOMException('The operation was aborted due to timeout', 'TimeoutError');
}

/**
 * An abort signal that aborts with the reason of the first of `sources` to abort, or after
 * `timeoutMs` with a `TimeoutError` (as `AbortSignal.timeout` does). Unlike `AbortSignal.any` and
 * `AbortSignal.timeout`, it holds nothing once disposed: no timer that outlives the work and no
 * entry in a long-lived source's list of dependants. Made per request, those kept every signal
 * alive for the whole timeout, long enough to reach the old generation, and a sweep of 100,000
 * exports made the collector mark ~80 MB of them. Undefined sources are ignored.
 */
export function linkedSignal(
  sources: ReadonlyArray<AbortSignal | undefined>,
  timeoutMs?: number,
): LinkedSignal {
  const controller = new AbortController();
  return { signal: controller.signal, dispose: link(controller, sources, timeoutMs, timeoutError) };
}

/**
 * One HTTP request's abort signal, in the `EventEmitter` shape undici takes besides `AbortSignal`
 * (`aborted`, `reason`, an `abort` event). An `AbortController` per request, with the listener
 * undici adds to its signal, cost ~25 µs of CPU per request (a loopback benchmark of 30,000 POSTs:
 * 89 µs per request with one, 63 with this); a request needs nothing else of it. For undici only:
 * what takes an `AbortSignal` (p-retry, `onAbort`) gets a `linkedSignal`.
 */
export class RequestSignal extends EventEmitter {
  aborted = false;
  reason: unknown;

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.emit('abort');
  }
}

/**
 * A `RequestSignal` that follows `sources` and `timeoutMs` as `linkedSignal` does; on the time
 * limit it aborts with `timeoutReason()` (default: a `TimeoutError`).
 */
export function requestSignal(
  sources: ReadonlyArray<AbortSignal | undefined>,
  timeoutMs: number,
  timeoutReason: () => unknown = timeoutError,
): LinkedSignal<RequestSignal> {
  const signal = new RequestSignal();
  return { signal, dispose: link(signal, sources, timeoutMs, timeoutReason) };
}

/** Aborts `target` with the first source's reason or at the time limit; returns the dispose. */
function link(
  target: { abort(reason: unknown): void },
  sources: ReadonlyArray<AbortSignal | undefined>,
  timeoutMs: number | undefined,
  timeoutReason: () => unknown,
): () => void {
  const detach: Array<() => void> = [];
  let timer: NodeJS.Timeout | undefined;
  const dispose = () => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    for (const off of detach) off();
    detach.length = 0;
  };
  for (const source of sources) {
    if (source === undefined) continue;
    if (source.aborted) {
      target.abort(source.reason);
      dispose();
      return dispose;
    }
    detach.push(
      onAbort(source, () => {
        target.abort(source.reason);
        dispose();
      }),
    );
  }
  if (timeoutMs !== undefined) {
    timer = setTimeout(() => {
      target.abort(timeoutReason());
      dispose();
    }, timeoutMs);
    timer.unref();
  }
  return dispose;
}

/**
 * An undici `request`, or a rejection with the signal's reason as soon as it aborts. undici holds
 * an abort that comes before the connection is up (a TCP or TLS handshake that never ends) until
 * the connect is done or its own connect timeout (10 s) fires: a request's timeout, a close
 * deadline, a pause and a leader stepping down would all wait for that. The request is then left
 * to end on its own; an answer that still comes is dropped.
 */
export function untilAborted<T extends { body: { destroy(): unknown } }>(
  request: Promise<T>,
  signal: RequestSignal,
): Promise<T> {
  const drop = () => {
    request.then(
      (late) => late.body.destroy(),
      () => undefined,
    );
  };
  if (signal.aborted) {
    drop();
    return Promise.reject(signal.reason);
  }
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      drop();
      reject(signal.reason);
    };
    signal.once('abort', onAbort);
    request.then(
      (response) => {
        signal.off('abort', onAbort);
        resolve(response);
      },
      (error: unknown) => {
        signal.off('abort', onAbort);
        reject(error);
      },
    );
  });
}
