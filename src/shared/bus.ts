/**
 * One typed events map for everything a part of the daemon reports to the rest (metrics,
 * readiness, `watch`'s progress): the pieces emit, the composition root subscribes. A listener
 * runs synchronously; one that throws is logged and the others still run, so a metrics bug can
 * never stop a check or a delivery.
 */
import type { Logger } from 'pino';
import type { Transition } from '../polling/tracker.js';

/** The platform routes the client calls. */
export type PlatformRoute = 'bulk_get' | 'get' | 'list' | 'rate_limit';

/** What one platform request came to. */
export type RequestOutcome =
  | 'ok'
  | 'rate_limited'
  | 'maintenance'
  | 'server_error'
  | 'unauthorized'
  | 'not_found'
  | 'rejected'
  | 'bad_response'
  | 'network'
  | 'timeout';

/** How a delivery (one event to one endpoint) ended. */
export type DeliveryOutcome = 'delivered' | 'gone' | 'given_up';

/** One webhook attempt, as reported. */
export interface AttemptResult {
  /** The endpoint's label: its URL without credentials, query or fragment. */
  endpoint: string;
  webhookId: string;
  attempt: number;
  outcome: 'success' | 'failure' | 'gone';
  status: number;
  code: string | undefined;
  durationMs: number;
}

export interface WatcherEvents {
  /** Every platform request attempt, with its outcome. */
  'platform.request': { route: PlatformRoute; outcome: RequestOutcome; durationMs: number };
  /** A bulk call was sent with this many ids. */
  'platform.bulk': { ids: number };
  /** A bulk answer had a different number of items than ids asked. */
  'platform.bulk_mismatch': { asked: number; items: number };
  /** A check call ended, after its retries. */
  'check.result': { ok: true } | { ok: false; error: unknown };
  /** An export changed state (after the change is stored). */
  transition: Transition;
  'delivery.attempt_started': { endpoint: string };
  'delivery.attempt': AttemptResult;
  /** `count` deliveries (1 when absent) to `endpoint` ended so. */
  'delivery.finished': { endpoint: string; outcome: DeliveryOutcome; count?: number };
  /** Unfinished deliveries to an endpoint that the engine holds, on every change. */
  'delivery.depth': { endpoint: string; depth: number };
}

export type EventName = keyof WatcherEvents;
type Listener<K extends EventName> = (payload: WatcherEvents[K]) => void;

export class Bus {
  readonly #listeners = new Map<EventName, Set<Listener<never>>>();
  readonly #log: Logger | undefined;

  constructor(log?: Logger) {
    this.#log = log;
  }

  /** Subscribes; returns the function that unsubscribes. */
  on<K extends EventName>(name: K, listener: Listener<K>): () => void {
    let set = this.#listeners.get(name);
    if (!set) {
      set = new Set();
      this.#listeners.set(name, set);
    }
    set.add(listener as Listener<never>);
    return () => set.delete(listener as Listener<never>);
  }

  emit<K extends EventName>(name: K, payload: WatcherEvents[K]): void {
    const set = this.#listeners.get(name);
    if (!set) return;
    for (const listener of set) {
      try {
        (listener as Listener<K>)(payload);
      } catch (error) {
        this.#log?.warn({ err: error, event: name }, 'event listener threw; ignored');
      }
    }
  }
}
