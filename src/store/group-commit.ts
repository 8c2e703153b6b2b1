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
