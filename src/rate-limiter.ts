/**
 * The request limiter: every request to the platform that counts against the user's quota goes
 * through `schedule()`.
 *
 * Model. The platform counts requests in fixed windows (1000 per 5 minutes per user) and reports,
 * on every answer, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (epoch seconds at which the
 * window ends). This daemon may spend at most `budget` requests per window, and never more than
 * the platform says is left, since the user's other tools share the quota.
 *
 * - The window is ours to track: it ends at the platform's reported reset when we know one (so our
 *   budget refills exactly when the platform's quota does), otherwise `windowMs` after it began.
 *   Bottleneck's own `reservoirRefreshInterval` is not used: its timer starts whenever the limiter
 *   is built and drifts from the platform's window.
 * - `allowance` = min(budget − spent this window, platform remaining − other calls in flight).
 *   It is written into bottleneck's `reservoir`, which is what actually holds calls back.
 * - Calls are spaced evenly over what is left of the window (`minTime` = time left / (allowance + 1)),
 *   so a budget smaller than the work stretches checks out instead of spending the whole window in
 *   a burst and then going blind until the reset.
 * - When nothing is left (allowance 0, or a 429), the reservoir is 0 until the window's end; a
 *   timer set for that instant refills it. That timer exists only while a window end is known.
 */
import Bottleneck from 'bottleneck';
import type { Logger } from 'pino';

export interface RateInfo {
  limit?: number;
  remaining?: number;
  /** Epoch ms at which the platform's window resets. */
  resetAt?: number;
}

export interface RateLimiterOptions {
  budget: number;
  windowMs: number;
  /** Bound on calls in flight at once. */
  maxConcurrent?: number;
  now?: () => number;
  log?: Logger;
  /** The platform window used when a 429 names no reset time. */
  fallbackPauseMs?: number;
  /** Waited past a reported reset, since the platform reports it in whole seconds. */
  resetMarginMs?: number;
}

export interface RateSnapshot {
  budget: number;
  spent: number;
  allowance: number;
  platformLimit: number | undefined;
  platformRemaining: number | undefined;
  windowEndsAt: number | undefined;
  spacingMs: number;
  inFlight: number;
  queued: number;
  rateLimited: number;
}

export class RateLimiter {
  readonly #bottleneck: Bottleneck;
  readonly #budget: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  readonly #log: Logger | undefined;
  readonly #fallbackPauseMs: number;
  readonly #resetMarginMs: number;

  /** Requests started in the current window. */
  #spent = 0;
  #inFlight = 0;
  #platformLimit: number | undefined;
  /** Last reported remaining quota, less the calls started since it was reported. */
  #platformRemaining: number | undefined;
  /** End of the current window (epoch ms); undefined until the first call or answer. */
  #windowEnd: number | undefined;
  /** Fires at `#windowEnd` to start the next window; exists while `#windowEnd` is set. */
  #resetTimer: NodeJS.Timeout | undefined;
  #rateLimited = 0;
  #spacingMs = 0;
  #stopped = false;

  constructor(options: RateLimiterOptions) {
    if (!Number.isInteger(options.budget) || options.budget < 1) {
      throw new TypeError(`RateLimiter: budget must be a whole number of at least 1, got ${options.budget}`);
    }
    if (!(options.windowMs > 0)) {
      throw new TypeError(`RateLimiter: windowMs must be positive, got ${options.windowMs}`);
    }
    this.#budget = options.budget;
    this.#windowMs = options.windowMs;
    this.#now = options.now ?? Date.now;
    this.#log = options.log;
    this.#fallbackPauseMs = options.fallbackPauseMs ?? 60_000;
    this.#resetMarginMs = options.resetMarginMs ?? 250;
    this.#bottleneck = new Bottleneck({
      maxConcurrent: options.maxConcurrent ?? 4,
      reservoir: this.#budget,
      minTime: Math.floor(this.#windowMs / (this.#budget + 1)),
    });
    this.#spacingMs = Math.floor(this.#windowMs / (this.#budget + 1));
  }

  /** Runs `fn` when the quota allows; `fn` is one request to the platform. */
  schedule<T>(fn: () => Promise<T>): Promise<T> {
    return this.#bottleneck.schedule(async () => {
      this.#beginCall();
      try {
        return await fn();
      } finally {
        this.#inFlight--;
      }
    });
  }

  /** Reads the quota headers of an answer. Call it for every answer, successful or not. */
  observe(info: RateInfo): void {
    const now = this.#now();
    if (info.limit !== undefined) this.#platformLimit = info.limit;
    if (info.resetAt !== undefined && info.resetAt > now) this.#alignWindow(info.resetAt, now);
    if (info.remaining !== undefined) {
      // The answering call is still counted in flight; the others may not be in `remaining` yet.
      const others = Math.max(0, this.#inFlight - 1);
      this.#platformRemaining = Math.max(0, info.remaining - others);
    }
    this.#apply(now);
  }

  /** A 429: nothing more is sent until the platform's reset. */
  rateLimited(resetAt: number | undefined): void {
    const now = this.#now();
    this.#rateLimited++;
    this.#platformRemaining = 0;
    const until = resetAt !== undefined && resetAt > now ? resetAt : now + this.#fallbackPauseMs;
    this.#windowEnd = undefined;
    this.#alignWindow(until, now);
    this.#log?.warn(
      { reset_at: new Date(until).toISOString() },
      'platform rate limit reached; pausing until reset',
    );
    this.#apply(now);
  }

  snapshot(): RateSnapshot {
    const counts = this.#bottleneck.counts();
    return {
      budget: this.#budget,
      spent: this.#spent,
      allowance: this.#allowance(),
      platformLimit: this.#platformLimit,
      platformRemaining: this.#platformRemaining,
      windowEndsAt: this.#windowEnd,
      spacingMs: this.#spacingMs,
      inFlight: this.#inFlight,
      queued: (counts.RECEIVED ?? 0) + (counts.QUEUED ?? 0),
      rateLimited: this.#rateLimited,
    };
  }

  /** Calls not yet started or still running. */
  get pending(): number {
    const c = this.#bottleneck.counts();
    return (c.RECEIVED ?? 0) + (c.QUEUED ?? 0) + (c.RUNNING ?? 0) + (c.EXECUTING ?? 0);
  }

  /** Drops calls that have not started (they reject) and clears the reset timer. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#clearResetTimer();
    await this.#bottleneck.stop({ dropWaitingJobs: true, dropErrorMessage: 'rate limiter stopped' });
  }

  #beginCall(): void {
    const now = this.#now();
    if (this.#windowEnd === undefined) this.#alignWindow(now + this.#windowMs, now);
    this.#spent++;
    this.#inFlight++;
    if (this.#platformRemaining !== undefined)
      this.#platformRemaining = Math.max(0, this.#platformRemaining - 1);
    this.#apply(now);
  }

  #allowance(): number {
    const ours = Math.max(0, this.#budget - this.#spent);
    return this.#platformRemaining === undefined ? ours : Math.min(ours, this.#platformRemaining);
  }

  /** Sets the current window's end, and the timer that starts the next window then. */
  #alignWindow(endAt: number, now: number): void {
    // A reported reset further out than our own window means the platform's window is longer
    // than ours; our budget window then runs on its own length.
    const end = endAt - now > this.#windowMs && this.#windowEnd !== undefined ? this.#windowEnd : endAt;
    if (end === this.#windowEnd) return;
    const startsNewWindow = this.#windowEnd !== undefined && end > this.#windowEnd;
    this.#windowEnd = end;
    if (startsNewWindow) this.#spent = this.#inFlight;
    this.#clearResetTimer();
    if (this.#stopped) return;
    // Not unref'd: calls held back until the reset are what the process is waiting for.
    this.#resetTimer = setTimeout(() => this.#onWindowEnd(), Math.max(0, end - now) + this.#resetMarginMs);
  }

  #onWindowEnd(): void {
    this.#resetTimer = undefined;
    const now = this.#now();
    this.#windowEnd = undefined;
    // A new window: our budget refills, and the platform's count is unknown until it answers.
    this.#spent = this.#inFlight;
    this.#platformRemaining = undefined;
    this.#log?.debug({ budget: this.#budget }, 'rate window reset');
    this.#apply(now);
  }

  /** Writes the allowance and spacing into bottleneck, which holds calls back accordingly. */
  #apply(now: number): void {
    if (this.#stopped) return;
    this.#updateSpacing(now);
    // Calls bottleneck has admitted but that wait out the spacing (RUNNING) already took their unit.
    const admitted = this.#bottleneck.counts().RUNNING ?? 0;
    const reservoir = Math.max(0, this.#allowance() - admitted);
    void this.#bottleneck.updateSettings({ reservoir, minTime: this.#spacingMs });
  }

  #updateSpacing(now: number): void {
    const allowance = this.#allowance();
    const left = this.#windowEnd === undefined ? this.#windowMs : Math.max(0, this.#windowEnd - now);
    // Dividing by allowance + 1 keeps the next start inside the window, so calls held at the
    // window's end go as soon as it refills instead of waiting out a spacing set for the old window.
    this.#spacingMs = Math.floor(left / (allowance + 1));
  }

  #clearResetTimer(): void {
    if (this.#resetTimer) clearTimeout(this.#resetTimer);
    this.#resetTimer = undefined;
  }
}
