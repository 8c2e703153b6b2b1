/**
 * The scheduler decides which exports to check and when, sends the checks, has what the tracker
 * concludes stored, and turns it into log lines and events.
 *
 * Modes (`SchedulerMode`), changed only through `#setMode`, which asserts the allowed moves:
 * - `idle`: built, not started. Nothing is checked.
 * - `running`: checks flow. An export is due when its last check is older than the poll interval;
 *   a new one is due at once. Due ids are packed into as few calls as possible, the
 *   longest-unchecked first (`tracker.takeDue`, which costs O(ids taken + ids in flight)), so when
 *   the budget cannot cover every due id, checks stretch out evenly and none starves. A call
 *   carries ids of one kind (exports or imports): each free slot takes a batch of the kind whose
 *   due id has waited longest.
 * - `unauthorized`: the platform refused the token on a whole call. One call a minute tests it;
 *   the first success returns to `running`.
 * - `paused`: another replica leads (or this one lost the database): nothing is checked. `pause()`
 *   is synchronous and complete: no call starts after it returns, every call of the running period
 *   is aborted through its signal (queued in the limiter, waiting to retry, or on the wire), and
 *   their answers are dropped unread; the ids keep their stored state. A `record` already under way
 *   finishes (a transaction is not cut in half). `resume()` starts a new period, with nothing in
 *   flight, from whatever the tracker holds then (the daemon reloads it from the store first).
 * - `stopping`: no new checks; calls in flight finish. `stopped` once they have.
 *
 * After a successful call, in this order: the tracker previews the observations (nothing changes
 * yet), warnings are logged, `deps.record` stores the changes (and queues their webhooks), and
 * only once it resolves does the tracker commit the preview, and are transitions logged and
 * emitted. So a state change is in memory only once it is stored, and an event is emitted only for
 * a stored change. When `record` rejects, nothing is committed: the call's ids keep their state
 * and their place in the due order, so they are due again, and the loop pauses as after a failed
 * call (the same doubling pause), rather than spend the platform's quota on answers it cannot keep.
 * A check that changed nothing has nothing to store: it is committed at once.
 *
 * Invariants:
 * - At most one check of an export is in flight (`#inFlight`), from the call until its results are
 *   committed or dropped; so no export is in two uncommitted previews.
 * - At most `maxOutstanding` calls are handed to the limiter at once, so batches are formed late,
 *   from the ids due at that moment, and never sit stale in a queue. A call whose results are
 *   being stored no longer counts there (its ids stay in flight until they are committed), so
 *   the results of several calls can share one commit; at most `maxStoring` calls wait on the
 *   store, so a slow store holds back new calls.
 * - Terminal exports are never checked: the tracker drops them once their change is committed.
 * - The wake timer (`#wakeTimer`) exists whenever the loop is active: at the latest a heartbeat
 *   later, so `/healthz` sees the loop turn even while every call waits on the quota.
 */
import type { Logger } from 'pino';
import type { CheckResult } from '../platform/platform-client.js';
import type { Bus } from '../shared/bus.js';
import { PlatformError } from '../shared/errors.js';
import { type HeldLines, LineWindow } from '../shared/line-window.js';
import { clipText, forLog } from '../shared/log-value.js';
import type { ExportChange } from '../store/store.js';
import {
  type CheckOutcome,
  type JobKind,
  SAMPLE_IDS,
  type Tracker,
  type TrackerWarning,
  type Transition,
  type WarningReason,
} from './tracker.js';

export const SCHEDULER_MODES = ['idle', 'running', 'unauthorized', 'paused', 'stopping', 'stopped'] as const;
export type SchedulerMode = (typeof SCHEDULER_MODES)[number];

const ALLOWED_MOVES: Readonly<Record<SchedulerMode, readonly SchedulerMode[]>> = {
  idle: ['running', 'stopped'],
  running: ['unauthorized', 'paused', 'stopping'],
  unauthorized: ['running', 'paused', 'stopping'],
  paused: ['running', 'stopping'],
  stopping: ['stopped'],
  stopped: [],
};

/** Calls handed to the limiter (queued there or on the wire) at once. */
export const DEFAULT_MAX_OUTSTANDING = 4;
/**
 * Calls whose results are being stored at once, besides those. A call waiting on the store no
 * longer holds a slot of the limiter's, so the next calls go out while the results of several
 * share one commit (the store's group commit); past this many, a slow store holds checks back.
 */
export const DEFAULT_MAX_STORING = 32;

/**
 * Isolated batches (see `Scheduler#isolate`): at most this many ids are held apart at once, and a
 * single id that keeps failing is tried again after the poll interval, doubling up to this.
 */
const MAX_ISOLATED_IDS = 1000;
const MAX_ISOLATED_RETRY_MS = 5 * 60_000;

/** A batch that failed while other calls succeeded, checked apart from the rest. */
interface IsolatedGroup {
  ids: string[];
  kind: JobKind;
  /** Not sent again before this (epoch ms). */
  notBefore: number;
  failures: number;
  sending: boolean;
  /** Calls of its kind answered when it was formed: whether any has been since. */
  answeredBefore: number;
}

/** What `pause()` aborts the calls of the running period with. */
export const PAUSED_REASON = 'checks paused: this replica is not the leader';

/** What one check changed, for the store. */
export interface CheckRecord {
  changes: readonly ExportChange[];
  transitions: readonly Transition[];
}

/** What the scheduler needs from the rest of the daemon. */
export interface SchedulerDeps {
  /**
   * Checks ids that are all of `kind` in one call. `signal` aborts when the scheduler pauses: the
   * call should then settle at once, without a request if it has not made one yet.
   */
  checkStatuses(ids: readonly string[], kind: JobKind, signal: AbortSignal): Promise<CheckResult>;
  tracker: Tracker;
  /**
   * Stores a check's changes in one transaction, then queues their webhooks; resolves once they
   * are stored. Not called for a check that changed nothing. A rejection leaves the ids due.
   */
  record(check: CheckRecord): Promise<void>;
  /** Gets 'check.result' after every call, and 'transition' for each stored transition. */
  bus: Bus;
  /**
   * Asked before calls are started (with replicas: whether this replica still leads, by the
   * election's own clock; reading it may step the replica down, and so pause this scheduler, on
   * the spot). When it says false, no call starts and the scheduler pauses. Absent: always true.
   */
  mayAct?: () => boolean;
  now: () => number;
  log: Logger;
}

export interface SchedulerOptions {
  pollIntervalMs: number;
  batchSize: number;
  /** Calls handed to the limiter at once (not counting those whose results are being stored). */
  maxOutstanding?: number;
  /** Calls whose results are being stored at once. */
  maxStoring?: number;
  /** How often a refused token is tried again. */
  unauthorizedRetryMs?: number;
  /** Pause after a call that failed even after its retries; doubles per failure up to the max. */
  failurePauseMs?: number;
  failurePauseMaxMs?: number;
  /** Longest sleep while idle, so the loop visibly turns (health). */
  heartbeatMs?: number;
}

export class Scheduler {
  readonly #deps: SchedulerDeps;
  readonly #interval: number;
  readonly #batchSize: number;
  readonly #maxOutstanding: number;
  readonly #maxStoring: number;
  readonly #unauthorizedRetryMs: number;
  readonly #failurePauseMs: number;
  readonly #failurePauseMaxMs: number;
  /** The longest wait the scheduler ever sets: no wait reaches further (see `#boundWaits`). */
  readonly #longestWaitMs: number;
  readonly #heartbeatMs: number;

  #mode: SchedulerMode = 'idle';
  readonly #inFlight = new Set<string>();
  /** Warn lines of each kind of odd answer, bounded per minute (see `#logWarnings`). */
  readonly #warningWindows = new Map<WarningReason, LineWindow<WarningSummary>>();
  /** Ids of isolated groups: skipped by the normal batches (see `#isolate`). */
  readonly #isolated = new Map<string, IsolatedGroup>();
  #groups: IsolatedGroup[] = [];
  /** Calls of isolated groups not finished: at most half of `maxOutstanding` (one at least). */
  #groupsOut = 0;
  /** Calls answered so far, by kind: whether others of its kind succeeded while a batch failed. */
  readonly #answered: Record<JobKind, number> = { export: 0, import: 0 };
  /** When a call of each kind was last answered (epoch ms). */
  readonly #answeredAt: Record<JobKind, number> = { export: 0, import: 0 };
  /**
   * Ids of normal batches that failed while nothing of their kind was answered (at most a round
   * of calls' worth): the next batches pass over them while other ids are due, so failing batches
   * at the head of the due order cannot hold every slot for good, and the others get the answers
   * that `#isolate` needs as evidence.
   */
  readonly #passedOver: Record<JobKind, Set<string>> = { export: new Set(), import: new Set() };
  /**
   * The most ids a normal batch of each kind takes: below the batch size while the ids passed over
   * go again with nothing of their kind answered meanwhile (`#goAgain`: an outage, a failing id in
   * every batch, or a kind small enough for one batch look the same). Each time halves it, so calls
   * of fewer ids go out and one answered gives the evidence `#isolate` needs; any answer of the
   * kind restores the batch size.
   */
  readonly #batchCap: Record<JobKind, number> = {
    export: Number.POSITIVE_INFINITY,
    import: Number.POSITIVE_INFINITY,
  };
  /** When the ids of each kind began to be passed over: they go again a poll interval later. */
  readonly #passedOverSince: Record<JobKind, number> = { export: 0, import: 0 };
  /** Calls of the running period not finished: on the wire, queued in the limiter, or storing. */
  #outstanding = 0;
  /** Of those, calls whose results are being stored. */
  #storing = 0;
  /** No call starts before this time (after the store failed, or while unauthorized). */
  #pausedUntil = 0;
  #consecutiveFailures = 0;
  /**
   * No call of a kind starts before this time after calls of that kind failed, doubling per
   * failure; only an answer of that kind ends it, so one kind's route being down backs its calls
   * off while the other kind is answered.
   */
  readonly #kindPausedUntil: Record<JobKind, number> = { export: 0, import: 0 };
  readonly #kindFailures: Record<JobKind, number> = { export: 0, import: 0 };
  /** The longest batch of each kind passed over since its ids last went again (`#passedOver`). */
  readonly #passedOverBatch: Record<JobKind, number> = { export: 0, import: 0 };
  /** Exists while running and waiting for the next due time, a pause's end, or a heartbeat. */
  #wakeTimer: NodeJS.Timeout | undefined;
  /** Exists between a poke and the pump it schedules, so bursts of new ids form full batches. */
  #pokeImmediate: NodeJS.Immediate | undefined;
  #lastTurnAt = 0;
  #stopPromise: Promise<void> | undefined;
  /**
   * The running period: `pause()` aborts its calls and starts a new one, so that the answers of
   * the old one are recognised and dropped.
   */
  #period = new AbortController();
  /** `record` calls under way, of any period: `recordsSettled()` waits for them. */
  readonly #recording = new Set<Promise<unknown>>();
  readonly #waiters = new Set<{ test: () => boolean; resolve: () => void }>();

  constructor(deps: SchedulerDeps, options: SchedulerOptions) {
    if (!(options.pollIntervalMs > 0))
      throw new TypeError(`pollIntervalMs must be positive, got ${options.pollIntervalMs}`);
    if (!Number.isInteger(options.batchSize) || options.batchSize < 1 || options.batchSize > 100) {
      throw new TypeError(`batchSize must be a whole number from 1 to 100, got ${options.batchSize}`);
    }
    this.#deps = deps;
    this.#interval = options.pollIntervalMs;
    this.#batchSize = options.batchSize;
    this.#maxOutstanding = options.maxOutstanding ?? DEFAULT_MAX_OUTSTANDING;
    this.#maxStoring = options.maxStoring ?? DEFAULT_MAX_STORING;
    this.#unauthorizedRetryMs = options.unauthorizedRetryMs ?? 60_000;
    this.#failurePauseMs = options.failurePauseMs ?? 1000;
    this.#failurePauseMaxMs = options.failurePauseMaxMs ?? 60_000;
    this.#heartbeatMs = options.heartbeatMs ?? 5000;
    this.#longestWaitMs = Math.max(
      this.#failurePauseMaxMs,
      this.#unauthorizedRetryMs,
      MAX_ISOLATED_RETRY_MS,
      this.#interval,
    );
  }

  get mode(): SchedulerMode {
    return this.#mode;
  }

  /** Ids held apart after failing batches (see `#isolate`), their groups, and those groups' calls out. */
  get isolation(): { ids: number; groups: number; callsOut: number } {
    return { ids: this.#isolated.size, groups: this.#groups.length, callsOut: this.#groupsOut };
  }

  /** When the loop last ran (epoch ms); `/healthz` reads it. */
  get lastTurnAt(): number {
    return this.#lastTurnAt;
  }

  start(): void {
    if (this.#mode !== 'idle') return;
    this.#setMode('running');
    this.#pump();
  }

  /**
   * Stops checking at once, synchronously (see `paused` in the file header): no call starts after
   * this, the calls of the running period are aborted and their answers dropped, the failure pause
   * is forgotten. Does nothing unless running (or unauthorized).
   */
  pause(): void {
    if (!this.#isActive()) return;
    this.#setMode('paused');
    this.#clearTimers();
    const period = this.#period;
    this.#period = new AbortController();
    this.#inFlight.clear();
    this.#outstanding = 0;
    this.#storing = 0;
    this.#pausedUntil = 0;
    this.#consecutiveFailures = 0;
    // The next period starts from what the tracker holds then (see resume): nothing held apart.
    // Calls of isolated groups still out are aborted with the period; they release nothing now.
    this.#groups = [];
    this.#isolated.clear();
    for (const kind of ['export', 'import'] as const) {
      this.#forgetUnansweredFailures(kind);
      this.#kindPausedUntil[kind] = 0;
      this.#kindFailures[kind] = 0;
    }
    period.abort(new PlatformError('SHUTTING_DOWN', PAUSED_REASON));
    this.#deps.log.info('checks paused');
    this.#notifyWaiters();
  }

  /**
   * Checks again after `pause()` (or for the first time, as `start()`), with nothing in flight;
   * every id the tracker holds is due as it stands there. Does nothing in another mode.
   */
  resume(): void {
    if (this.#mode === 'idle') {
      this.start();
      return;
    }
    if (this.#mode !== 'paused') return;
    this.#setMode('running');
    this.#deps.log.info('checks resumed');
    this.#pump();
  }

  /** Resolves once the `record` calls under way now (of any period) have settled. */
  async recordsSettled(): Promise<void> {
    await Promise.allSettled([...this.#recording]);
  }

  /** Wakes the loop soon: new ids were added. Calls in the same tick share one pump. */
  poke(): void {
    if (!this.#isActive() || this.#pokeImmediate) return;
    this.#pokeImmediate = setImmediate(() => {
      this.#pokeImmediate = undefined;
      this.#pump();
    });
  }

  /** Stops checking; resolves once calls in flight have finished. Idempotent. */
  stop(): Promise<void> {
    if (this.#stopPromise) return this.#stopPromise;
    if (this.#mode === 'idle') {
      this.#setMode('stopped');
      this.#stopPromise = Promise.resolve();
      return this.#stopPromise;
    }
    this.#setMode('stopping');
    this.#clearTimers();
    this.#stopPromise = this.until(() => this.#outstanding === 0).then(() => {
      this.#setMode('stopped');
      this.#flushWarnings();
      this.#notifyWaiters();
    });
    return this.#stopPromise;
  }

  /** Resolves when `test()` holds; checked after every call and transition. For shutdown and tests. */
  until(test: () => boolean): Promise<void> {
    if (test()) return Promise.resolve();
    return new Promise((resolve) => {
      this.#waiters.add({ test, resolve });
    });
  }

  /** Resolves when every watched export is terminal and no call is in flight. */
  onSettled(): Promise<void> {
    return this.until(() => this.#deps.tracker.activeCount === 0 && this.#outstanding === 0);
  }

  #setMode(next: SchedulerMode): void {
    if (!ALLOWED_MOVES[this.#mode].includes(next)) {
      throw new Error(`scheduler: cannot move from ${this.#mode} to ${next}`);
    }
    this.#mode = next;
  }

  #isActive(): boolean {
    return this.#mode === 'running' || this.#mode === 'unauthorized';
  }

  /** The loop's one step: start as many calls as allowed, then sleep until there is more to do. */
  #pump(): void {
    if (!this.#isActive()) return;
    if (this.#deps.mayAct !== undefined && !this.#deps.mayAct()) {
      this.pause();
      return;
    }
    this.#clearWakeTimer();
    const now = this.#deps.now();
    this.#lastTurnAt = now;
    this.#boundWaits(now);
    let nextWake = now + this.#heartbeatMs;
    // Calls queued in the limiter or on the wire: the outstanding ones not storing.
    const onLimiter = this.#outstanding - this.#storing;
    if (now < this.#pausedUntil) {
      nextWake = Math.min(nextWake, this.#pausedUntil);
    } else if (onLimiter < this.#maxOutstanding && this.#storing < this.#maxStoring) {
      // While unauthorized, one probing call at a time.
      let slots = this.#mode === 'unauthorized' ? 1 - this.#outstanding : this.#maxOutstanding - onLimiter;
      // One batch per free slot, each of one kind. A short batch means its kind has nothing more
      // due: the next take tries the other kind; an empty one says when the next id falls due.
      // When more is due than there are free slots, the end of a call wakes the loop sooner; the
      // heartbeat still turns it, so liveness holds while calls wait on the quota.
      // Isolated groups have half the call slots at most (one at least), counted over their calls
      // out, not over the slots free now: normal batches keep going.
      let groupSlots = Math.max(1, this.#maxOutstanding >> 1) - this.#groupsOut;
      for (const group of this.#groups) {
        if (slots <= 0 || groupSlots <= 0) break;
        if (group.sending) continue;
        const notBefore = Math.max(group.notBefore, this.#kindPausedUntil[group.kind]);
        if (notBefore > now) {
          nextWake = Math.min(nextWake, notBefore);
          continue;
        }
        // Ids no longer tracked (unwatched, or finished elsewhere) leave the group, and are no
        // longer held apart: watched again, they are checked like any other.
        const ids: string[] = [];
        for (const id of group.ids) {
          if (this.#deps.tracker.has(id)) ids.push(id);
          else if (this.#isolated.get(id) === group) this.#isolated.delete(id);
        }
        if (ids.length === 0) {
          this.#release(group);
          continue;
        }
        group.ids = ids;
        group.sending = true;
        this.#send(ids, group.kind, group);
        slots--;
        groupSlots--;
      }
      for (const kind of ['export', 'import'] as const) {
        // Never longer than a poll interval: the other kind may keep something due for good.
        if (this.#passedOver[kind].size > 0 && now - this.#passedOverSince[kind] >= this.#interval)
          this.#goAgain(kind);
      }
      // A kind whose calls failed waits out its pause; the other goes on. Only the kinds not
      // waiting are asked, and only theirs can be said to have nothing else due.
      const open = (['export', 'import'] as const).filter((kind) => this.#kindPausedUntil[kind] <= now);
      for (const kind of ['export', 'import'] as const)
        if (!open.includes(kind)) nextWake = Math.min(nextWake, this.#kindPausedUntil[kind]);
      const only = open.length === 1 ? open[0] : undefined;
      while (slots > 0 && open.length > 0) {
        let { kind = 'export', due, nextDueAt } = this.#dueIds(now, this.#batchSize, only);
        if (due.length === 0 && open.some((k) => this.#passedOver[k].size > 0)) {
          // Nothing else is due: every id due failed with nothing of its kind answered.
          for (const k of open) if (this.#passedOver[k].size > 0) this.#goAgain(k);
          ({ kind = 'export', due, nextDueAt } = this.#dueIds(now, this.#batchSize, only));
        }
        if (due.length === 0) {
          if (nextDueAt !== undefined) nextWake = Math.min(nextWake, nextDueAt);
          break;
        }
        // The ids left out stay due, first in line for the next batch.
        if (due.length > this.#batchCap[kind]) due = due.slice(0, this.#batchCap[kind]);
        this.#send(due, kind);
        slots--;
      }
    }
    // Always armed while running. Not unref'd: in `watch`, it keeps the process alive between checks.
    this.#wakeTimer = setTimeout(() => this.#pump(), Math.max(0, nextWake - now));
  }

  /**
   * Ids of one kind whose last check is older than the interval, not in flight, longest-unchecked
   * first (never-checked ones first of all, in the order tracked); and when the next one falls
   * due. At most `capacity` of them: what one call can take.
   */
  #dueIds(
    now: number,
    capacity: number,
    only?: JobKind,
  ): { kind?: JobKind; due: string[]; nextDueAt: number | undefined } {
    return this.#deps.tracker.takeDue(
      now,
      this.#interval,
      capacity,
      (id) =>
        this.#inFlight.has(id) ||
        this.#isolated.has(id) ||
        this.#passedOver.export.has(id) ||
        this.#passedOver.import.has(id),
      only,
      // A call with room also takes ids falling due within half an interval: ids registered at
      // different moments come to share calls, instead of each costing a request of its own.
      Math.floor(this.#interval / 2),
    );
  }

  #send(batch: string[], kind: JobKind, group?: IsolatedGroup): void {
    this.#outstanding++;
    for (const id of batch) this.#inFlight.add(id);
    const period = this.#period;
    const current = () => period === this.#period;
    const answeredBefore = this.#answered[kind];
    if (group) this.#groupsOut++;
    this.#deps
      .checkStatuses(batch, kind, period.signal)
      .then(
        (result) => {
          this.#answered[kind]++;
          this.#answeredAt[kind] = this.#deps.now();
          this.#kindPausedUntil[kind] = 0;
          this.#kindFailures[kind] = 0;
          // Its kind is answered: a batch of it that fails from now on is taken apart instead.
          this.#forgetUnansweredFailures(kind);
          if (group) this.#release(group);
          return current() ? this.#onResult(result, kind, current) : undefined;
        },
        (error: unknown) => {
          if (group) group.sending = false;
          if (!current()) return undefined;
          // Others of its kind were answered while this one failed: it is this batch, not the
          // platform (nor that kind's route).
          const alone = this.#answered[kind] > answeredBefore;
          return this.#onError(batch, error, kind, group, alone);
        },
      )
      .catch((error: unknown) => {
        // A bug in handling a result must not stall the loop; say so loudly.
        this.#deps.log.error({ err: error }, 'scheduler failed to process a check result');
      })
      .finally(() => {
        if (group) this.#groupsOut--;
        // A call of a period that was paused is no longer counted: pause() forgot it.
        if (!current()) return;
        this.#outstanding--;
        for (const id of batch) this.#inFlight.delete(id);
        this.#notifyWaiters();
        this.#pump();
      });
  }

  /** Previews, stores, then commits a call's answer: see the file header for why in this order. */
  async #onResult(result: CheckResult, kind: JobKind, current: () => boolean): Promise<void> {
    const now = this.#deps.now();
    if (this.#mode === 'unauthorized') {
      this.#setMode('running');
      this.#deps.log.info('platform accepts the token again; checks resume');
    }
    this.#deps.bus.emit('check.result', { ok: true });
    const { tracker } = this.#deps;
    const outcome = tracker.preview(result.observations, now, kind);
    this.#logWarnings([...result.warnings, ...outcome.warnings]);
    if (!(await this.#store(outcome, current))) return;
    tracker.commit(outcome);
    this.#consecutiveFailures = 0;
    this.#pausedUntil = 0;
    for (const t of outcome.transitions) {
      this.#logTransition(t);
      this.#deps.bus.emit('transition', t);
    }
  }

  /**
   * Has the outcome's changes stored; false (logged, paused) when the store refused them. A write
   * under way when the scheduler pauses finishes, and what it stored is committed and reported.
   */
  async #store(outcome: CheckOutcome, current: () => boolean): Promise<boolean> {
    if (outcome.changes.length === 0) return true;
    const writing = this.#deps.record({ changes: outcome.changes, transitions: outcome.transitions });
    this.#recording.add(writing);
    // The call's slot is free while its results wait on the store: the next call may go.
    this.#storing++;
    this.#pump();
    try {
      await writing;
      return true;
    } catch (error) {
      if (!current()) {
        this.#deps.log.warn(
          { err: error, changes: outcome.changes.length },
          'could not store the results of a check made before the pause',
        );
        return false;
      }
      const pause = this.#pauseAfterFailure();
      this.#deps.log.error(
        { err: error, changes: outcome.changes.length, pause_ms: pause },
        'could not store the results of a check; the ids stay due',
      );
      return false;
    } finally {
      this.#recording.delete(writing);
      if (current()) this.#storing--;
    }
  }

  /**
   * `group`: the isolated group the call was made for; `alone`: other calls of its kind were
   * answered while it failed, so the failure is this batch's own.
   */
  #onError(
    batch: readonly string[],
    error: unknown,
    kind: JobKind,
    group?: IsolatedGroup,
    alone = false,
  ): void {
    this.#deps.bus.emit('check.result', { ok: false, error });
    if (!this.#isActive()) return; // stopping: the call was dropped or aborted
    const now = this.#deps.now();
    const code = error instanceof PlatformError ? error.code : undefined;
    if (code === 'PLATFORM_RATE_LIMITED') {
      // The limiter holds every call until the reset; the same ids go again after it.
      this.#deps.log.warn({ ids: batch.length }, 'check deferred by the platform rate limit');
      return;
    }
    if (code === 'PLATFORM_UNAUTHORIZED') {
      if (this.#mode === 'running') this.#setMode('unauthorized');
      this.#pausedUntil = now + this.#unauthorizedRetryMs;
      this.#deps.log.error(
        { err_message: (error as Error).message, retry_in_ms: this.#unauthorizedRetryMs },
        'platform refused the token; checking again once a minute',
      );
      return;
    }
    const pause = this.#pauseKindAfterFailure(kind, now);
    this.#deps.log.error(
      { ids: batch.length, code, err_message: (error as Error)?.message, pause_ms: pause },
      'check failed after retries; ids stay due',
    );
    // The platform answers this kind: others were answered while this call failed, or within the
    // last poll interval (failing calls may hold every slot meanwhile, and the others may simply
    // not be due). Then a failing batch is taken apart, and a group further apart. A group of
    // several ids whose call fails with none of that evidence and nothing of its kind answered
    // since it was formed (an outage that began after the answers that formed it) is let go
    // instead, its ids passed over as a batch failing in an outage is: halving it a poll interval
    // later, again and again, would take the kind apart for as long as the outage lasts. An id
    // alone keeps its group and backoff through an outage: let go, it would be first in the due
    // order when the outage ends. Either way every group ends.
    const answering = alone || now - this.#answeredAt[kind] <= this.#interval;
    if (group && group.ids.length > 1 && !answering && this.#answered[kind] === group.answeredBefore) {
      this.#release(group);
      this.#passOver(batch, kind, now);
    } else if (group) this.#isolate(batch, kind, group, now, answering ? 0 : this.#interval);
    else if (answering) this.#isolate(batch, kind, null, now, 0);
    else this.#passOver(batch, kind, now);
  }

  /** The ids of a batch that failed with nothing of its kind answered (see `#passedOver`). */
  #passOver(batch: readonly string[], kind: JobKind, now: number): void {
    if (this.#passedOver[kind].size >= this.#maxOutstanding * this.#batchSize) return;
    if (this.#passedOver[kind].size === 0) this.#passedOverSince[kind] = now;
    for (const id of batch) this.#passedOver[kind].add(id);
    this.#passedOverBatch[kind] = Math.max(this.#passedOverBatch[kind], batch.length);
  }

  /**
   * A batch that keeps failing while others succeed (one job the platform cannot answer for, a
   * 500 for the whole call) would be formed again and again from the head of the due order, and
   * its other ids never checked. So it is taken apart: its ids are skipped by the normal batches
   * and tried in halves, each half that is answered going back to the normal order, until the
   * ids that fail are alone; one of those is tried again after the poll interval, doubling up to
   * 5 minutes. During an outage nothing is answered, so nothing stays apart (see `#onError`). At most
   * `MAX_ISOLATED_IDS` ids are held apart; beyond that a batch stays as it is.
   */
  #isolate(
    batch: readonly string[],
    kind: JobKind,
    group: IsolatedGroup | null,
    now: number,
    delayMs: number,
  ): void {
    // Counted for an id alone: the halvings before do not lengthen its wait.
    const failures = group !== null && group.ids.length === 1 ? group.failures + 1 : 1;
    if (group) this.#release(group);
    const ids = batch.filter((id) => this.#deps.tracker.has(id) && !this.#isolated.has(id));
    if (ids.length === 0 || this.#isolated.size + ids.length > MAX_ISOLATED_IDS) return;
    const halves = ids.length > 1 ? [ids.slice(0, ids.length >> 1), ids.slice(ids.length >> 1)] : [ids];
    const notBefore =
      ids.length > 1
        ? now + delayMs
        : now + Math.min(MAX_ISOLATED_RETRY_MS, this.#interval * 2 ** Math.min(20, failures - 1));
    for (const part of halves) {
      const held: IsolatedGroup = {
        ids: part,
        kind,
        notBefore,
        failures: ids.length > 1 ? 0 : failures,
        sending: false,
        answeredBefore: this.#answered[kind],
      };
      this.#groups.push(held);
      for (const id of part) this.#isolated.set(id, held);
    }
    if (ids.length === 1) {
      this.#deps.log.warn(
        { [`${kind}_id`]: ids[0], failures, retry_in_ms: notBefore - now },
        `a check of this ${kind} fails while others are answered; it is checked on its own`,
      );
    }
  }

  /** Ends what failures with nothing of `kind` answered set up: ids passed over, the batch cap. */
  #forgetUnansweredFailures(kind: JobKind): void {
    this.#passedOver[kind].clear();
    this.#passedOverBatch[kind] = 0;
    this.#batchCap[kind] = Number.POSITIVE_INFINITY;
  }

  /**
   * The ids of `kind` passed over go again, nothing of their kind having been answered since they
   * failed (else `#forgetUnansweredFailures` would have let them go): in batches of half the
   * longest that failed, rounded up (a kind of 2n + 1 ids costs two calls a round, not three).
   */
  #goAgain(kind: JobKind): void {
    const failed = Math.min(this.#batchCap[kind], this.#passedOverBatch[kind]);
    if (failed > 1) this.#batchCap[kind] = (failed + 1) >> 1;
    this.#passedOver[kind].clear();
    this.#passedOverBatch[kind] = 0;
  }

  #release(group: IsolatedGroup): void {
    this.#groups = this.#groups.filter((g) => g !== group);
    for (const id of group.ids) if (this.#isolated.get(id) === group) this.#isolated.delete(id);
  }

  /**
   * No wait reaches further than the longest one ever set: after the wall clock steps back (an
   * NTP correction), a pause or a held group would otherwise last as long as the step.
   */
  #boundWaits(now: number): void {
    const bound = (until: number): number => Math.min(until, now + this.#longestWaitMs);
    this.#pausedUntil = bound(this.#pausedUntil);
    for (const kind of ['export', 'import'] as const) {
      this.#kindPausedUntil[kind] = bound(this.#kindPausedUntil[kind]);
      // A round of passed-over ids "started in the future" would never end.
      this.#passedOverSince[kind] = Math.min(this.#passedOverSince[kind], now);
    }
    for (const group of this.#groups) group.notBefore = bound(group.notBefore);
  }

  /** Pauses new calls of `kind` after one failed, doubling per failure until one is answered. */
  #pauseKindAfterFailure(kind: JobKind, now: number): number {
    this.#kindFailures[kind]++;
    const pause = Math.min(
      this.#failurePauseMaxMs,
      this.#failurePauseMs * 2 ** Math.min(20, this.#kindFailures[kind] - 1),
    );
    this.#kindPausedUntil[kind] = now + pause;
    return pause;
  }

  /** Pauses new calls after the store failed, doubling per consecutive failure; returns the pause. */
  #pauseAfterFailure(): number {
    this.#consecutiveFailures++;
    const pause = Math.min(
      this.#failurePauseMaxMs,
      this.#failurePauseMs * 2 ** Math.min(20, this.#consecutiveFailures - 1),
    );
    this.#pausedUntil = this.#deps.now() + pause;
    return pause;
  }

  #logTransition(t: Transition): void {
    const kind = t.kind ?? 'export';
    const line = { [`${kind}_id`]: t.exportId, from: t.from, to: t.to };
    const msg = `${kind} state changed`;
    // The platform's error as it came may be as long as its answer: the line shows it bounded
    // (the record and the event keep it whole).
    if (t.to === 'FAILED') {
      this.#deps.log.warn({ ...line, error: forLog(t.export?.error ?? null) }, msg);
    } else if (t.to === 'LOST') {
      this.#deps.log.warn({ ...line, error: forLog(t.error) }, msg);
    } else {
      this.#deps.log.info(line, msg);
    }
  }

  /**
   * One line per kind of warning in a call, with a count and a few ids: never a line per export.
   * And at most `WARNING_LINES_PER_WINDOW` a minute of each kind at warn: an oddity of the
   * platform's that lasts (a state it has added, an export it keeps answering about) comes back
   * with every call; the rest are at debug, counted in one line once the minute is over.
   */
  #logWarnings(warnings: readonly TrackerWarning[]): void {
    // Every call comes here, nearly always with nothing to say.
    if (warnings.length === 0) return;
    const now = this.#deps.now();
    for (const summary of summarizeWarnings(warnings)) {
      const { reason, ...fields } = summary;
      let window = this.#warningWindows.get(reason);
      if (window === undefined) {
        window = new LineWindow(WARNING_LINES_PER_WINDOW, WARNING_WINDOW_MS);
        this.#warningWindows.set(reason, window);
      }
      const { warn, ended } = window.take(now);
      if (ended) this.#logHeldWarnings(reason, ended);
      if (warn) {
        this.#deps.log.warn({ reason, ...fields }, WARNING_MESSAGES[reason]);
      } else {
        window.hold(now, summary.count, summary);
        this.#deps.log.debug({ reason, ...fields }, WARNING_MESSAGES[reason]);
      }
    }
  }

  /** The warnings of each kind held back from warn, each said in one line; at stop. */
  #flushWarnings(): void {
    for (const [reason, window] of this.#warningWindows) {
      const held = window.flush();
      if (held) this.#logHeldWarnings(reason, held);
    }
  }

  #logHeldWarnings(reason: WarningReason, held: HeldLines<WarningSummary>): void {
    this.#deps.log.warn(
      {
        reason,
        calls: held.lines,
        count: held.count,
        from: new Date(held.from).toISOString(),
        to: new Date(held.to).toISOString(),
        sample_ids: held.last.sample_ids,
        ...(held.last.example ? { example: held.last.example } : {}),
      },
      `${WARNING_MESSAGES[reason]} (in more calls than are logged at warn in a minute; each at debug)`,
    );
  }

  #notifyWaiters(): void {
    for (const w of this.#waiters) {
      if (w.test()) {
        this.#waiters.delete(w);
        w.resolve();
      }
    }
  }

  #clearWakeTimer(): void {
    if (this.#wakeTimer) clearTimeout(this.#wakeTimer);
    this.#wakeTimer = undefined;
  }

  #clearTimers(): void {
    this.#clearWakeTimer();
    if (this.#pokeImmediate) clearImmediate(this.#pokeImmediate);
    this.#pokeImmediate = undefined;
  }
}

/** Warn lines of one kind of odd answer per window (see `#logWarnings`). */
const WARNING_LINES_PER_WINDOW = 5;
const WARNING_WINDOW_MS = 60_000;

const WARNING_MESSAGES: Readonly<Record<WarningReason, string>> = {
  stale_state: 'stale state from the platform ignored',
  unknown_state: 'unknown export state from the platform; treated as not finished',
  unexpected_resource: 'platform answered about exports that were not asked for; ignored',
  unanswered: 'platform said nothing about some exports; they stay due',
  item_error: 'platform answered an error for some exports; they stay due',
  unattributed_errors:
    'platform answered error items that cannot be matched to exports one for one; they stay due',
};

export interface WarningSummary {
  reason: WarningReason;
  /** Exports concerned. */
  count: number;
  sample_ids: string[];
  /** The first warning's other details (a state, an error), as an example. */
  example?: Record<string, unknown>;
}

/** Groups warnings by reason: counts summed, at most SAMPLE_IDS ids, the first detail as an example. */
export function summarizeWarnings(warnings: readonly TrackerWarning[]): WarningSummary[] {
  const byReason = new Map<WarningReason, WarningSummary>();
  for (const w of warnings) {
    const { count, sample_ids, ...rest } = w.detail as { count?: unknown; sample_ids?: unknown };
    let summary = byReason.get(w.reason);
    if (!summary) {
      summary = { reason: w.reason, count: 0, sample_ids: [] };
      // What came from the answer (a state, an error body) is shown bounded: see forLog.
      if (Object.keys(rest).length > 0) summary.example = forLog(rest) as Record<string, unknown>;
      byReason.set(w.reason, summary);
    }
    summary.count += typeof count === 'number' ? count : 1;
    const ids = Array.isArray(sample_ids) ? (sample_ids as string[]) : w.exportId ? [w.exportId] : [];
    for (const id of ids) {
      if (summary.sample_ids.length >= SAMPLE_IDS) break;
      // An id the platform named (one not asked for) may be as long as its answer.
      summary.sample_ids.push(typeof id === 'string' ? clipText(id) : String(forLog(id)));
    }
  }
  return [...byReason.values()];
}
