/**
 * The request limiter: every request to the platform that counts against the user's quota goes
 * through `schedule()`.
 *
 * Model. The platform counts requests in fixed windows (1000 per 5 minutes per user) and reports,
 * on every answer, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (epoch seconds at which its
 * window ends). This daemon may spend at most `budget` requests per window of its own
 * (`windowMs`), and never more than the platform says is left, since the user's other tools share
 * the quota. Two clocks, kept apart:
 *
 * - The budget window: fixed windows of `windowMs`, back to back. The first one is aligned to the
 *   platform's reported reset when that is known before anything is spent (the `GET /rate_limit`
 *   read at start), so with equal window lengths the budget refills when the platform's quota
 *   does. After that a window is never shortened, only lengthened to meet a later platform reset:
 *   the budget cannot refill more often than once per `windowMs`, however the platform's windows
 *   fall. Bottleneck's own `reservoirRefreshInterval` is not used: its timer starts whenever the
 *   limiter is built and drifts from the platform's window.
 * - The platform's count: `platformRemaining` is the last reported remaining quota less the calls
 *   started since; at the reported reset (or after a 429, at its reset) it becomes unknown again,
 *   and the next answer says what it is.
 *
 * `allowance` = min(budget − spent this window, platform remaining); it is written into
 * bottleneck's `reservoir`, which is what actually holds calls back. Calls are spaced evenly over
 * what is left of the binding window (`minTime` = time left / (allowance + 1)), so a budget
 * smaller than the work stretches checks out instead of spending the whole window in a burst and
 * then going blind until the reset.
 *
 * A reported reset is a number from the network, so it is checked before it is waited for: one
 * that is not a finite time, or lies further ahead than `maxResetWaitMs` (the longer of our window
 * and the platform's documented 5 minutes, plus a minute), is not believed and is replaced by the
 * fallback pause (our window, at most 5 minutes). A hostile or broken `X-RateLimit-Reset` can
 * therefore hold checks back for minutes, never for days, and never overflows a timer.
 *
 * Shares. `share(max)` hands out a gate for a part of the daemon's work (discovery) that may start
 * at most `max` of the budget's requests in any one budget window. Its calls go through this
 * limiter like any other (same budget, same spacing, same platform count); a call the share cannot
 * cover is refused at once (`SHARE_SPENT`), never queued, and a call is counted in the window in
 * which it starts. For sequential calls (one at a time, as discovery makes them) no window ever
 * sees more than `max` of them.
 *
 * Timers: `#budgetTimer` exists while a budget window is open and fires at its end;
 * `#platformTimer` exists while the platform's count is known and fires at its reset (plus a small
 * margin). When the allowance is 0 one of them is always set, so held calls always go eventually.
 */
import Bottleneck from 'bottleneck';
import type { Logger } from 'pino';
import { onAbort } from '../shared/deadline.js';
import { PlatformError } from '../shared/errors.js';
import { Fifo, isLinked, Link, unlink } from '../shared/fifo.js';

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
  /**
   * The pause after a 429 that names no believable reset time. Default: our window, at most the
   * platform's documented 5 minutes.
   */
  fallbackPauseMs?: number;
  /** Waited past a reported reset, since the platform reports it in whole seconds. */
  resetMarginMs?: number;
  /** The furthest a reported reset may lie ahead and still be believed; see the module comment. */
  maxResetWaitMs?: number;
}

/** A gate for a part of the work limited to `max` requests per budget window (`share`). */
export interface ShareGate {
  schedule<T>(fn: () => Promise<T>, signal?: AbortSignal, mayStart?: () => boolean): Promise<T>;
  observe(info: RateInfo, fromCall?: boolean): void;
  rateLimited(resetAt: number | undefined): void;
  /** Requests of the share left in the current budget window. */
  left(): number;
  readonly max: number;
}

export interface RateSnapshot {
  budget: number;
  /** Budget windows opened since this limiter was built: 0 in the first one. */
  window: number;
  /** Requests started in the current budget window. */
  spent: number;
  allowance: number;
  platformLimit: number | undefined;
  platformRemaining: number | undefined;
  /**
   * The platform said nothing is left and not until when: one probe call is let go, on a count of
   * 1 that is this limiter's own (`platformRemaining` then), until an answer says what is left.
   */
  probing: boolean;
  /** End of the current budget window. */
  windowEndsAt: number | undefined;
  /** The platform's reported reset, while its count is known. */
  platformResetAt: number | undefined;
  spacingMs: number;
  inFlight: number;
  /** Calls waiting to start: not yet admitted, or admitted and waiting out the spacing. */
  queued: number;
  rateLimited: number;
}

/** A call waiting for bottleneck to admit a job (`RateLimiter#admit`), in the line of waiting calls. */
class WaitingCall extends Link {
  constructor(
    readonly start: () => Promise<void>,
    readonly drop: (error: unknown) => void,
  ) {
    super();
  }
}

/** How long to wait before asking again when the platform says nothing is left but not until when. */
const UNKNOWN_RESET_PROBE_MS = 1000;
/** The platform's documented rate window: 1000 requests per 5 minutes. */
export const PLATFORM_WINDOW_MS = 5 * 60_000;
/** A 429's reset at most this far in the past has just passed: the window rolled over meanwhile. */
const JUST_PASSED_MS = 10_000;
/** How much further than a window a reported reset may lie and still be believed. */
const RESET_SLACK_MS = 60_000;

export class RateLimiter {
  readonly #bottleneck: Bottleneck;
  readonly #budget: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  readonly #log: Logger | undefined;
  readonly #fallbackPauseMs: number;
  readonly #resetMarginMs: number;
  readonly #maxResetWaitMs: number;
  /** Set after a reset was not believed, so the warning is logged once per run of them. */
  #distrustedReset = false;
  /** While the platform has said nothing is left: when calls may go again (epoch ms). */
  #pausedUntil: number | undefined;

  /** Requests started in the current budget window. */
  #spent = 0;
  /** Budget windows that followed the first one (a new window, not a lengthened one). */
  #window = 0;
  #inFlight = 0;
  #platformLimit: number | undefined;
  /** Last reported remaining quota, less the calls started since; undefined when unknown. */
  #platformRemaining: number | undefined;
  /** End of the current budget window (epoch ms); undefined until the first call or reset read. */
  #budgetEnd: number | undefined;
  /** Fires at `#budgetEnd`; exists while `#budgetEnd` is set. */
  #budgetTimer: NodeJS.Timeout | undefined;
  /** The platform's reported reset (epoch ms), while `#platformRemaining` is known. */
  #platformResetAt: number | undefined;
  /** Fires at `#platformResetAt` (or a probe time when none is known) to forget the count. */
  #platformTimer: NodeJS.Timeout | undefined;
  #rateLimited = 0;
  #spacingMs = 0;
  /** From a probe (`#onPlatformReset`) until the next answer: one call goes, unspaced. */
  #probing = false;
  /** Probe calls out (0 or 1): while one is out, no other probe starts. */
  #probesOut = 0;
  /** Whether the current budget window was lengthened to meet a platform reset (once a window). */
  #lengthened = false;
  #stopped = false;
  /**
   * What was last written into bottleneck, and the calls started since. Bottleneck takes a unit of
   * its reservoir per admitted call by itself, so while the allowance only falls by the calls
   * started (allowance = written − started) and the spacing has not moved, its settings already
   * say what `#apply` would write: the write (async, and most of the limiter's cost per call) is
   * skipped.
   */
  #written: { allowance: number; spacingMs: number } | undefined;
  #startedSinceWrite = 0;
  /**
   * Calls not started yet, in the order they were scheduled (see `#admit`). Not a `Set`: one that
   * reached the old generation kept every call that went through it, each with the answer its
   * caller stored, alive until the next full collection (see `shared/fifo.ts`), which made young
   * collections copy and promote about every answer.
   */
  readonly #waiting = new Fifo<WaitingCall>();
  #queued = 0;

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
    this.#fallbackPauseMs = options.fallbackPauseMs ?? Math.min(this.#windowMs, PLATFORM_WINDOW_MS);
    this.#resetMarginMs = options.resetMarginMs ?? 250;
    this.#maxResetWaitMs =
      options.maxResetWaitMs ?? Math.max(this.#windowMs, PLATFORM_WINDOW_MS) + RESET_SLACK_MS;
    this.#spacingMs = Math.floor(this.#windowMs / (this.#budget + 1));
    this.#bottleneck = new Bottleneck({
      maxConcurrent: options.maxConcurrent ?? 4,
      reservoir: this.#budget,
      minTime: this.#spacingMs,
    });
  }

  /**
   * Runs `fn` when the quota allows; `fn` is one request to the platform. When `signal` aborts
   * first, the call rejects at once with its reason and `fn` never runs: nothing is spent of the
   * budget (the leader that stepped down drops its queued checks this way). `mayStart`, when
   * given, is asked when the call's turn comes: false refuses it the same way (with the signal's
   * reason if asking aborted it, else `SHUTTING_DOWN`), before anything is counted.
   */
  schedule<T>(fn: () => Promise<T>, signal?: AbortSignal, mayStart?: () => boolean): Promise<T> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    // Bottleneck is a gate here: its job waits for the call but never carries the call's result.
    // Its queues are linked lists, and a job that lived long enough to reach the old generation
    // keeps what its links reach alive through every young collection after it (until the next
    // full one), so a result passed through it (a parsed answer of 100 exports) was promoted with
    // it: ~80 MB per sweep of 100,000. So the caller is answered through `answer`, which is
    // let go of as soon as it is used, and the job's own promise resolves empty.
    return new Promise<T>((resolve, reject) => {
      let answer: { resolve: (value: T) => void; reject: (error: unknown) => void } | undefined = {
        resolve,
        reject,
      };
      let detach: (() => void) | undefined;
      const settle = (outcome: { value: T } | { error: unknown }) => {
        const to = answer;
        answer = undefined;
        detach?.();
        detach = undefined;
        if (to === undefined) return;
        if ('value' in outcome) to.resolve(outcome.value);
        else to.reject(outcome.error);
      };
      const start = (): Promise<void> => {
        // Asked when its turn comes, before it is counted: a call refused here is not sent, and
        // spends nothing (bottleneck's unit is given back, as for a call aborted while it waited).
        if (mayStart !== undefined && !mayStart()) {
          this.#giveBackUnit();
          settle({
            error: signal?.aborted
              ? signal.reason
              : new PlatformError('SHUTTING_DOWN', 'call not started: this replica may no longer act'),
          });
          return Promise.resolve();
        }
        const probe = this.#probing;
        if (probe) this.#probesOut++;
        this.#beginCall();
        const ended = (outcome: { value: T } | { error: unknown }) => {
          this.#inFlight--;
          if (probe) this.#probesOut--;
          this.#afterCall(probe, 'value' in outcome);
          settle(outcome);
        };
        let running: Promise<T>;
        try {
          running = fn();
        } catch (error) {
          // A function that throws instead of rejecting is a call that failed at once.
          ended({ error });
          return Promise.resolve();
        }
        return running.then(
          (value) => ended({ value }),
          (error: unknown) => ended({ error }),
        );
      };
      const waiting = new WaitingCall(start, (error) => settle({ error }));
      this.#enqueue(waiting);
      // Aborted while it waits: out of the line at once, so that it costs later calls no spacing.
      if (signal)
        detach = onAbort(signal, () => {
          this.#dequeue(waiting);
          settle({ error: signal.reason });
        });
      this.#bottleneck.schedule(this.#admit).catch(this.#tokenDropped);
    });
  }

  /**
   * One bottleneck job per call scheduled, but not tied to it: the job admitted starts the call
   * that has waited longest. A call aborted while it waited leaves the line at once, and its job,
   * admitted when no call is left waiting, gives its unit back.
   */
  readonly #admit = (): Promise<void> => {
    const next = this.#waiting.first();
    if (next === undefined || this.#allowance() < 1) {
      // No call left for it (aborted), or admitted under an allowance that has fallen since (a 429,
      // "0 left", the budget spent by the calls admitted with it): bottleneck's unit given back, and
      // the waiting call keeps its place for the next job.
      this.#giveBackUnit();
      if (next !== undefined) this.#bottleneck.schedule(this.#admit).catch(this.#tokenDropped);
      return Promise.resolve();
    }
    this.#dequeue(next);
    return next.start();
  };

  /** The unit bottleneck took for a job that starts no call: rewritten into its reservoir. */
  #giveBackUnit(): void {
    this.#written = undefined;
    this.#apply(this.#now());
  }

  #enqueue(waiting: WaitingCall): void {
    this.#waiting.push(waiting);
    this.#queued++;
  }

  #dequeue(waiting: WaitingCall): void {
    if (!isLinked(waiting)) return;
    unlink(waiting);
    this.#queued--;
  }

  /** A job dropped because the limiter stopped: the calls still waiting are a shutdown. */
  readonly #tokenDropped = (error: unknown): void => {
    const shutdown =
      this.#stopped && error instanceof Bottleneck.BottleneckError ? droppedByStop(error) : error;
    const next = this.#waiting.first();
    if (next === undefined) return;
    this.#dequeue(next);
    next.drop(shutdown);
  };

  /**
   * A gate for work that may start at most `max` requests per budget window, out of the same
   * budget (see the module comment). `max` must be a whole number of at least 1.
   */
  share(max: number): ShareGate {
    if (!Number.isInteger(max) || max < 1) {
      throw new TypeError(`RateLimiter.share: max must be a whole number of at least 1, got ${max}`);
    }
    let counted = { window: -1, used: 0 };
    const used = () => (counted.window === this.#window ? counted.used : 0);
    return {
      max,
      left: () => Math.max(0, max - used()),
      observe: (info, fromCall) => this.observe(info, fromCall),
      rateLimited: (resetAt) => this.rateLimited(resetAt),
      schedule: <T>(fn: () => Promise<T>, signal?: AbortSignal, mayStart?: () => boolean): Promise<T> => {
        if (used() >= max) {
          return Promise.reject(
            new PlatformError('SHARE_SPENT', `this window's share of the rate budget (${max}) is spent`),
          );
        }
        return this.schedule(
          () => {
            // Counted in the window the call starts in (#beginCall has just opened it if need be).
            counted = { window: this.#window, used: used() + 1 };
            return fn();
          },
          signal,
          mayStart,
        );
      },
    };
  }

  /**
   * Reads the quota headers of an answer. Call it for every answer, successful or not. `fromCall`:
   * the answer is to a call this limiter started (still counted in flight while its answer is
   * read); false for one that did not pass it (the free `GET /rate_limit`, or its body).
   */
  observe(info: RateInfo, fromCall = true): void {
    const now = this.#now();
    // Only an answer that says what is left ends a probe's turn: a headerless one (an older
    // call's, a proxy's 502) must not turn the pending probe into an ordinary call.
    if (info.remaining !== undefined) this.#probing = false;
    if (info.limit !== undefined) this.#platformLimit = info.limit;
    const reported = this.#believable(info.resetAt, now);
    const resetAt = reported !== undefined && reported > now ? reported : undefined;
    // Only a reset the platform reported moves the budget window; the fallback stands in for one
    // that was not believed, on every answer, and would push the window's end on and on.
    if (resetAt !== undefined && resetAt === info.resetAt) this.#alignBudgetWindow(resetAt, now);
    if (info.remaining !== undefined) {
      // The answering call is still counted in flight; the others may not be in `remaining` yet.
      const others = Math.max(0, this.#inFlight - (fromCall ? 1 : 0));
      // Whole requests (a caller other than the client may pass what it read as is).
      const reportedLeft = Math.max(0, Math.floor(info.remaining) - others);
      const known = this.#platformRemaining;
      const knownReset = this.#platformResetAt;
      // A reset the platform reported (not the fallback standing in for one not believed, which
      // lies a fallback pause past every answer's `now` and would pass for a newer window).
      const believed = resetAt !== undefined && resetAt === info.resetAt;
      // A reported reset already past, while a later one is known: the answer of a call counted in
      // an older window (a slow one), which says nothing of the current window's count.
      const older =
        reported !== undefined &&
        reported === info.resetAt &&
        reported <= now &&
        knownReset !== undefined &&
        reported < knownReset;
      if (known !== undefined && knownReset !== undefined && (older || !believed || resetAt <= knownReset)) {
        // The same platform window (or an older one): what is left there only ever falls. The
        // platform counts a request when it arrives, so a slow call's answer read after a later
        // call's (or after a 429) says more is left than is: it may lower the count, never raise
        // it, and never lift a pause before the reset already known. A reported reset earlier than
        // the known one (the fallback of a 429 that named none) is when the count is forgotten.
        const left = older ? known : Math.min(known, reportedLeft);
        const until = believed && resetAt < knownReset ? resetAt : knownReset;
        if (left < known || until < knownReset) {
          this.#platformRemaining = left;
          this.#setPlatformReset(until, now);
        }
      } else {
        this.#platformRemaining = reportedLeft;
        this.#setPlatformReset(resetAt, now);
      }
    } else if (this.#platformRemaining === 0 && this.#platformTimer === undefined && this.#probesOut === 0) {
      // Spent down to nothing by our own count, with no reset or probe to wait for, and the
      // platform no longer says what is left: our own budget governs again, as before its first
      // report. While a probe is pending or out, a headerless answer (a proxy's 502 to an older
      // call, say) changes nothing: the probe's end decides (`#afterCall`).
      this.#platformRemaining = undefined;
    }
    this.#apply(now);
  }

  /** A 429: nothing more is sent until the platform's reset. */
  rateLimited(resetAt: number | undefined): void {
    const now = this.#now();
    this.#rateLimited++;
    this.#probing = false;
    this.#platformRemaining = 0;
    const reported = this.#believable(resetAt, now);
    // A reset that has just passed means the window rolled over while the answer came back (the
    // header is in whole seconds): one probe shortly, as after "nothing left" with no reset, not
    // the fallback pause. One long past (a clock far off) still gets the fallback.
    let until: number | undefined = now + this.#fallbackPauseMs;
    if (reported !== undefined && reported > now) until = reported;
    else if (reported !== undefined && now - reported <= JUST_PASSED_MS) until = undefined;
    this.#setPlatformReset(until, now);
    this.#log?.warn(
      { reset_at: new Date(until ?? this.#pausedUntil ?? now).toISOString() },
      'platform rate limit reached; pausing until reset',
    );
    this.#apply(now);
  }

  /**
   * When the platform has said nothing is left (a 429, or `X-RateLimit-Remaining: 0`): the time
   * calls may go again. Undefined while calls are only held by our own budget or spacing.
   */
  pausedUntil(): number | undefined {
    return this.#platformRemaining === 0 ? this.#pausedUntil : undefined;
  }

  snapshot(): RateSnapshot {
    return {
      budget: this.#budget,
      window: this.#window,
      spent: this.#spent,
      allowance: this.#allowance(),
      platformLimit: this.#platformLimit,
      platformRemaining: this.#platformRemaining,
      probing: this.#probing,
      windowEndsAt: this.#budgetEnd,
      platformResetAt: this.#platformResetAt,
      spacingMs: this.#spacingMs,
      inFlight: this.#inFlight,
      queued: this.#queued,
      rateLimited: this.#rateLimited,
    };
  }

  /**
   * Drops calls that have not started (they reject) and clears the timers. Does not wait for
   * calls already running: the caller bounds those. Idempotent.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#clearTimer('budget');
    this.#clearTimer('platform');
    await this.#bottleneck.stop({ dropWaitingJobs: true, dropErrorMessage: 'rate limiter stopped' });
    for (let waiting = this.#waiting.first(); waiting !== undefined; waiting = this.#waiting.first()) {
      this.#dequeue(waiting);
      waiting.drop(droppedByStop());
    }
  }

  #beginCall(): void {
    const now = this.#now();
    if (this.#budgetEnd === undefined) this.#openBudgetWindow(now + this.#windowMs, now);
    this.#spent++;
    this.#startedSinceWrite++;
    this.#inFlight++;
    if (this.#platformRemaining !== undefined)
      this.#platformRemaining = Math.max(0, this.#platformRemaining - 1);
    this.#apply(now);
  }

  #allowance(): number {
    const ours = Math.max(0, this.#budget - this.#spent);
    return this.#platformRemaining === undefined ? ours : Math.min(ours, this.#platformRemaining);
  }

  /**
   * Meets the platform's window: before anything is spent, the first window may end at the
   * platform's reset; later, a window may only be lengthened to it (never shortened, which would
   * refill the budget early).
   */
  #alignBudgetWindow(resetAt: number, now: number): void {
    if (resetAt - now > this.#windowMs) return; // the platform's window is longer than ours
    if (this.#budgetEnd === undefined) {
      if (this.#spent === 0) this.#openBudgetWindow(resetAt, now);
      return;
    }
    // Once a window: resets that keep moving later (a platform clock running ahead, a sliding
    // window) would otherwise keep the budget from ever refilling.
    if (resetAt > this.#budgetEnd && !this.#lengthened) {
      this.#lengthened = true;
      this.#openBudgetWindow(resetAt, now);
    }
  }

  #openBudgetWindow(end: number, now: number): void {
    this.#budgetEnd = end;
    this.#clearTimer('budget');
    if (this.#stopped) return;
    // Not unref'd: calls held back until the reset are what the process is waiting for.
    this.#budgetTimer = setTimeout(() => this.#onBudgetWindowEnd(), Math.max(0, end - now));
  }

  #onBudgetWindowEnd(): void {
    this.#budgetTimer = undefined;
    const now = this.#now();
    const previousEnd = this.#budgetEnd ?? now;
    // Windows follow each other at their own length; calls in flight count in the new one.
    this.#spent = this.#inFlight;
    this.#window++;
    this.#lengthened = false;
    this.#openBudgetWindow(Math.max(previousEnd, now) + this.#windowMs, now);
    this.#log?.debug({ budget: this.#budget }, 'rate budget window reset');
    this.#apply(now);
  }

  /**
   * A reported reset, or the fallback when it cannot be believed (not a finite time, or further
   * ahead than `maxResetWaitMs`). A reset in the past is returned as is: it means "already reset".
   */
  #believable(resetAt: number | undefined, now: number): number | undefined {
    if (resetAt === undefined) return undefined;
    if (Number.isFinite(resetAt) && resetAt - now <= this.#maxResetWaitMs) {
      this.#distrustedReset = false;
      return resetAt;
    }
    if (!this.#distrustedReset) {
      this.#distrustedReset = true;
      this.#log?.warn(
        {
          reported_reset: Number.isFinite(resetAt) ? resetAt / 1000 : String(resetAt),
          max_wait_ms: this.#maxResetWaitMs,
          fallback_pause_ms: this.#fallbackPauseMs,
        },
        'platform reported a rate-limit reset too far ahead to believe; using the fallback pause',
      );
    }
    return now + this.#fallbackPauseMs;
  }

  /** Sets when the platform's count stops being trusted. */
  #setPlatformReset(resetAt: number | undefined, now: number): void {
    this.#clearTimer('platform');
    this.#platformResetAt = resetAt;
    this.#pausedUntil = undefined;
    if (this.#stopped) return;
    // With no reset to wait for and nothing left, ask again shortly rather than never.
    const probe = resetAt === undefined;
    const at = probe ? now + UNKNOWN_RESET_PROBE_MS : resetAt + this.#resetMarginMs;
    if (probe && this.#platformRemaining !== 0) return;
    this.#pausedUntil = at;
    this.#platformTimer = setTimeout(() => this.#onPlatformReset(probe), Math.max(0, at - now));
  }

  /**
   * When the platform's count is 0 with no reset and nothing armed to ask again (no answer with
   * quota headers came since): the probe, answered without quota headers (it succeeded), means
   * the platform does not report them: our own budget governs again. Otherwise (the probe failed
   * unanswered, or a call counted against the platform's figure ended without an answer) a probe
   * is due, as after an answer that said nothing is left; never while a probe is out.
   */
  #afterCall(probe: boolean, succeeded: boolean): void {
    if (
      this.#platformRemaining !== 0 ||
      this.#platformTimer !== undefined ||
      this.#platformResetAt !== undefined ||
      this.#probesOut > 0 ||
      this.#stopped
    ) {
      return;
    }
    const now = this.#now();
    this.#probing = false;
    if (probe && succeeded) {
      this.#platformRemaining = undefined;
      this.#pausedUntil = undefined;
    } else {
      this.#setPlatformReset(undefined, now);
    }
    this.#apply(now);
  }

  /**
   * After a reset, what is left is unknown until the platform answers again. After a probe (the
   * platform said nothing is left and not until when), one call goes, whose answer says what is
   * left: not every call held, which would meet a 429 together.
   */
  #onPlatformReset(probe: boolean): void {
    this.#platformTimer = undefined;
    if (probe && this.#probesOut > 0) {
      // The probe out will say what is left, or arm the next one as it ends: not a second one now.
      this.#setPlatformReset(undefined, this.#now());
      return;
    }
    this.#platformResetAt = undefined;
    this.#pausedUntil = undefined;
    this.#platformRemaining = probe ? 1 : undefined;
    this.#probing = probe;
    this.#log?.debug('platform rate window reset');
    this.#apply(this.#now());
  }

  /**
   * Writes the allowance and spacing into bottleneck, which holds calls back accordingly; skipped
   * when bottleneck already holds them (see `#written`). A spacing within a tenth of the written one
   * counts as unchanged: the reservoir, not the spacing, is what bounds the calls.
   */
  #apply(now: number): void {
    if (this.#stopped) return;
    this.#updateSpacing(now);
    const allowance = this.#allowance();
    const written = this.#written;
    if (
      written !== undefined &&
      allowance === written.allowance - this.#startedSinceWrite &&
      Math.abs(this.#spacingMs - written.spacingMs) <= written.spacingMs / 10
    ) {
      return;
    }
    // Calls bottleneck has admitted but that wait out the spacing (RUNNING) already took their unit.
    const admitted = this.#bottleneck.counts().RUNNING ?? 0;
    const reservoir = Math.max(0, allowance - admitted);
    this.#written = { allowance, spacingMs: this.#spacingMs };
    this.#startedSinceWrite = 0;
    void this.#bottleneck.updateSettings({ reservoir, minTime: this.#spacingMs });
  }

  /** Spreads what is allowed over what is left of the window that binds. */
  #updateSpacing(now: number): void {
    if (this.#probing) {
      // Spread over the window, one call would wait half of it: the probe goes at once.
      this.#spacingMs = 0;
      return;
    }
    const allowance = this.#allowance();
    const budgetLeft = Math.max(0, this.#budget - this.#spent);
    const platformBinds =
      this.#platformRemaining !== undefined &&
      this.#platformRemaining < budgetLeft &&
      this.#platformResetAt !== undefined;
    const end = platformBinds ? this.#platformResetAt : this.#budgetEnd;
    const left = end === undefined ? this.#windowMs : Math.max(0, end - now);
    // Dividing by allowance + 1 keeps the next start inside the window, so calls held at the
    // window's end go as soon as it refills instead of waiting out a spacing set for the old window.
    this.#spacingMs = Math.floor(left / (allowance + 1));
  }

  #clearTimer(which: 'budget' | 'platform'): void {
    if (which === 'budget') {
      if (this.#budgetTimer) clearTimeout(this.#budgetTimer);
      this.#budgetTimer = undefined;
    } else {
      if (this.#platformTimer) clearTimeout(this.#platformTimer);
      this.#platformTimer = undefined;
    }
  }
}

/** What a call gets when the limiter stops before starting it: a shutdown, not a failure to retry. */
function droppedByStop(cause?: unknown): PlatformError {
  return new PlatformError(
    'SHUTTING_DOWN',
    'call dropped: the rate limiter stopped',
    cause === undefined ? {} : { cause },
  );
}
