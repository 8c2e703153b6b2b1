/**
 * A bound on the warn lines of one kind (a failing webhook endpoint, an odd answer of the
 * platform): the first `perWindow` of each window of `windowMs` go out at warn; the rest the
 * caller logs at debug and `hold`s here, to be said in one summary line once the window is over
 * (at the next line after it), when the condition ends, or at close. A window opens at the first
 * line after the last one ended, so a rare line always goes out at warn.
 *
 * Time comes from the caller. A clock that steps back opens a new window, as one that ran past it.
 */
export interface HeldLines<T> {
  /** Lines held back (logged at debug only). */
  lines: number;
  /** The sum of the weights held: items, attempts. */
  count: number;
  /** When the window they were held in opened, and the last was held (epoch ms). */
  from: number;
  to: number;
  /** What the last held line carried, for the summary. */
  last: T;
}

export class LineWindow<T> {
  readonly #perWindow: number;
  readonly #windowMs: number;
  #start = Number.NEGATIVE_INFINITY;
  #logged = 0;
  #held: HeldLines<T> | undefined;

  constructor(perWindow: number, windowMs: number) {
    if (!(Number.isInteger(perWindow) && perWindow >= 1 && windowMs > 0)) {
      throw new TypeError(
        `LineWindow: expected perWindow ≥ 1 and windowMs > 0, got ${perWindow}, ${windowMs}`,
      );
    }
    this.#perWindow = perWindow;
    this.#windowMs = windowMs;
  }

  /**
   * For a line at `now`: `warn` says whether it goes out at warn (else the caller logs it at debug
   * and `hold`s it); `ended` is what the window that just ended held back, to be said first.
   */
  take(now: number): { warn: boolean; ended: HeldLines<T> | undefined } {
    let ended: HeldLines<T> | undefined;
    if (this.#over(now)) {
      ended = this.flush();
      this.#start = now;
      this.#logged = 0;
    }
    if (this.#logged < this.#perWindow) {
      this.#logged++;
      return { warn: true, ended };
    }
    return { warn: false, ended };
  }

  /** Counts a line that `take` kept from warn: `weight` items, carrying `last`. */
  hold(now: number, weight: number, last: T): void {
    if (this.#held === undefined) {
      this.#held = { lines: 1, count: weight, from: this.#start, to: now, last };
      return;
    }
    this.#held.lines++;
    this.#held.count += weight;
    this.#held.to = now;
    this.#held.last = last;
  }

  /**
   * What is held back once the window is over at `now` (the condition ended: a receiver answering
   * again), else nothing yet: a condition that comes and goes within the window is said once, at
   * its end, not at every turn.
   */
  flushEnded(now: number): HeldLines<T> | undefined {
    return this.#over(now) ? this.flush() : undefined;
  }

  /** The window is over at `now` (or the clock stepped back before its start). */
  #over(now: number): boolean {
    return now - this.#start >= this.#windowMs || now < this.#start;
  }

  /** What is held back, if anything, forgotten here once returned. */
  flush(): HeldLines<T> | undefined {
    const held = this.#held;
    this.#held = undefined;
    return held;
  }
}
