/**
 * Group commit for `POST /v1/exports`: requests that arrive in the same event-loop turn share one
 * `addExports` transaction, and each is answered only once that transaction has committed. Under
 * a burst of small requests this turns one fsync per request into one per turn.
 */
import type { AddRequest, AddResult, Store } from './store.js';

interface Waiting {
  request: AddRequest;
  resolve: (result: AddResult) => void;
  reject: (error: unknown) => void;
}

export class AddBatcher {
  readonly #store: Store;
  readonly #now: () => number;
  #queue: Waiting[] = [];
  #scheduled = false;

  constructor(store: Store, now: () => number) {
    this.#store = store;
    this.#now = now;
  }

  /** Resolves with this request's result once its rows are committed. */
  add(request: AddRequest): Promise<AddResult> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ request, resolve, reject });
      if (this.#scheduled) return;
      this.#scheduled = true;
      setImmediate(() => void this.#flush());
    });
  }

  async #flush(): Promise<void> {
    const batch = this.#queue;
    this.#queue = [];
    this.#scheduled = false;
    try {
      const results = await this.#store.addExports(
        batch.map((w) => w.request),
        this.#now(),
      );
      batch.forEach((w, i) => {
        const result = results[i];
        if (result) w.resolve(result);
        else w.reject(new Error('the store returned no result for a request'));
      });
    } catch (error) {
      for (const w of batch) w.reject(error);
    }
  }
}

/**
 * Group commit for the results of checks: the changes of every call whose answer was handled in
 * the same event-loop turn, or while the previous commit was running, share one transaction, and
 * each call's `add` resolves (or rejects) with it. A durable commit costs an fsync (~10–20 ms on a
 * virtual disk) during which, with SQLite, the thread does nothing else: when 100,000 exports
 * finish at once, one commit per call of 100 held the checks and the webhooks back for seconds.
 * Commits run one at a time; what arrives meanwhile waits for the next. With `delayMs`, a commit
 * waits that long after the first item queued for it (or until `maxItems` are queued), so that
 * calls answered a few milliseconds apart share it too.
 */
export class CommitBatcher<T> {
  readonly #commit: (items: T[]) => Promise<void>;
  readonly #delayMs: number;
  readonly #maxItems: number;
  #queue: Array<{ items: readonly T[]; resolve: () => void; reject: (error: unknown) => void }> = [];
  #queued = 0;
  /** Exists while a commit is scheduled and not started. */
  #timer: { cancel: () => void } | undefined;
  #running: Promise<void> | undefined;
  /** Set by `flush()`: what is queued goes without waiting out the delay. */
  #urgent = false;

  constructor(commit: (items: T[]) => Promise<void>, options: { delayMs?: number; maxItems?: number } = {}) {
    this.#commit = commit;
    this.#delayMs = options.delayMs ?? 0;
    this.#maxItems = options.maxItems ?? Number.POSITIVE_INFINITY;
  }

  /** Resolves once `items` are committed; rejects, with every caller of that commit, if it fails. */
  add(items: readonly T[]): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ items, resolve, reject });
      this.#queued += items.length;
      this.#schedule();
    });
  }

  /**
   * Commits what is queued without waiting out the delay (after the commit under way, if any):
   * for a replica that stops leading, whose observations should be stored now, not later.
   */
  flush(): void {
    if (this.#queue.length === 0) return;
    this.#urgent = true;
    this.#clearTimer();
    this.#schedule();
  }

  #schedule(): void {
    if (this.#running !== undefined) return;
    if (this.#urgent || this.#queued >= this.#maxItems) {
      this.#clearTimer();
      this.#start();
      return;
    }
    if (this.#timer !== undefined) return;
    if (this.#delayMs > 0) {
      const timeout = setTimeout(() => this.#start(), this.#delayMs);
      this.#timer = { cancel: () => clearTimeout(timeout) };
    } else {
      const immediate = setImmediate(() => this.#start());
      this.#timer = { cancel: () => clearImmediate(immediate) };
    }
  }

  #clearTimer(): void {
    this.#timer?.cancel();
    this.#timer = undefined;
  }

  #start(): void {
    this.#timer = undefined;
    this.#urgent = false;
    this.#running = this.#flush().finally(() => {
      this.#running = undefined;
      if (this.#queue.length > 0) this.#schedule();
    });
  }

  async #flush(): Promise<void> {
    const batch = this.#queue;
    this.#queue = [];
    this.#queued = 0;
    try {
      await this.#commit(batch.flatMap((w) => w.items));
      for (const w of batch) w.resolve();
    } catch (error) {
      for (const w of batch) w.reject(error);
    }
  }
}
