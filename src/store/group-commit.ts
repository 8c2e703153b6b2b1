/**
 * Group commit: requests that arrive close together share one transaction, and each is answered
 * (with its own result) only once that transaction has committed. A durable commit costs an
 * fsync (~10–20 ms on a virtual disk) during which, with SQLite, the thread does nothing else, so
 * one per request is what a burst cannot afford. Two uses in the daemon:
 * - `POST /v1/exports` (`addExports`): the requests of one event-loop turn;
 * - the results of checks (`commitChanges`): the calls answered within 100 ms. When 100,000 exports
 *   finished at once, one commit per call of 100 held the checks and the webhooks back for seconds.
 *
 * Commits run one at a time; what arrives meanwhile waits for the next. With `delayMs`, a commit
 * waits that long after the first request queued for it (or until requests of `maxItems` in all,
 * by `sizeOf`, are queued), so that requests a few milliseconds apart share it too.
 */

export interface GroupCommitOptions<T> {
  /** How long a commit waits for more requests; 0 (the default): until the end of the turn. */
  delayMs?: number;
  /** Commit at once when the queued requests hold this many items. */
  maxItems?: number;
  /** The items a request holds, for `maxItems`; 1 by default. */
  sizeOf?: (request: T) => number;
}

export class GroupCommit<T, R> {
  readonly #commit: (requests: T[]) => Promise<R[]>;
  readonly #delayMs: number;
  readonly #maxItems: number;
  readonly #sizeOf: (request: T) => number;
  #queue: Array<{ request: T; resolve: (result: R) => void; reject: (error: unknown) => void }> = [];
  #queued = 0;
  /** Exists while a commit is scheduled and not started. */
  #timer: { cancel: () => void } | undefined;
  #running: Promise<void> | undefined;
  /** Set by `flush()`: what is queued goes without waiting out the delay. */
  #urgent = false;

  /** `commit` gets the queued requests in order and answers with one result per request, in order. */
  constructor(commit: (requests: T[]) => Promise<R[]>, options: GroupCommitOptions<T> = {}) {
    this.#commit = commit;
    this.#delayMs = options.delayMs ?? 0;
    this.#maxItems = options.maxItems ?? Number.POSITIVE_INFINITY;
    this.#sizeOf = options.sizeOf ?? (() => 1);
  }

  /** Resolves with this request's result once it is committed; rejects, with every request of that commit, if it fails. */
  add(request: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.#queue.push({ request, resolve, reject });
      this.#queued += this.#sizeOf(request);
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
      const results = await this.#commit(batch.map((w) => w.request));
      batch.forEach((w, i) => {
        if (i < results.length) w.resolve(results[i] as R);
        else w.reject(new Error('the store returned no result for a request'));
      });
    } catch (error) {
      for (const w of batch) w.reject(error);
    }
  }
}
