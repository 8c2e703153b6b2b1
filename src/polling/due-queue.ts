/**
 * The order in which active exports fall due, kept so that picking the next few costs
 * O(picked + skipped), never O(active): at 100,000 exports, scanning them all on every turn of the
 * scheduler made one sweep quadratic.
 *
 * Two FIFO queues of intrusive links (`shared/fifo.ts`), so that appending, moving and removing
 * an entry are O(1) and allocate nothing:
 * - `unchecked`: exports never checked, in the order they were added. All of them are due.
 * - `checked`: exports checked at least once, in the order their checks were committed.
 *
 * Invariants:
 * - An entry is in exactly one queue while it is in the `DueQueue`: `unchecked` while its
 *   `lastCheckedAt` is null, `checked` after.
 * - An entry moves only when a check of it is committed (to the tail of `checked`), or leaves.
 *   Entries in flight stay in place, and the walk skips them: its extra cost is bounded by the
 *   ids in flight (the scheduler's maxOutstanding × batch), which all sit near the heads.
 * - Checks are committed at non-decreasing times, so `checked` is also ordered by
 *   `lastCheckedAt`, hence by the time each entry falls due: the walk stops at the first entry
 *   that is not due yet. When two calls' results are committed out of order, the later-committed
 *   ids wait behind the earlier ones, at most by the time the slower commit took.
 */
import { Fifo, type Link, unlink } from '../shared/fifo.js';

/** What the queue needs of an entry: its id, and when it was last checked. */
export type DueEntry = Link & { readonly id: string; readonly lastCheckedAt: number | null };

export interface DueIds {
  /** The kind of every id in `due`, when the tracker holds imports: present for imports only. */
  kind?: 'import';
  /** Due ids, longest-unchecked first (never-checked ones first of all). */
  due: string[];
  /**
   * When the first checked id that is not due yet falls due; undefined when the walk stopped at
   * `max` before reaching one, or when no such id exists.
   */
  nextDueAt: number | undefined;
}

export class DueQueue<T extends DueEntry> {
  readonly #unchecked = new Fifo<T>();
  readonly #checked = new Fifo<T>();
  /** The latest check committed: a `now` before it means the wall clock stepped back. */
  #latest = Number.NEGATIVE_INFINITY;
  /**
   * Entries checked "in the future" when the wall clock stepped back: due until checked again.
   * Empty but for the turns after a step (no field on every entry: 100,000 are held). Each with
   * when the step was seen: when it fell due, for `first` to tell which of two kinds waited longer.
   */
  readonly #steppedBack = new Map<T, number>();

  /** Adds a never-checked entry: due at once, after the never-checked ones already here. */
  addUnchecked(entry: T): void {
    this.#unchecked.push(entry);
  }

  /** Moves an entry whose check was just committed to the tail of the checked ones. */
  moveToChecked(entry: T): void {
    unlink(entry);
    this.#steppedBack.delete(entry);
    this.#latest = Math.max(this.#latest, entry.lastCheckedAt ?? this.#latest);
    this.#checked.push(entry);
  }

  remove(entry: T): void {
    unlink(entry);
    this.#steppedBack.delete(entry);
  }

  /**
   * After the wall clock stepped back, the entries last checked after `now` go to the head of the
   * checked ones, due until checked again: behind an entry not due yet, they would be held for as
   * long as the step. Costs O(checked) once per step.
   */
  #stepBack(now: number): void {
    if (now >= this.#latest) return;
    this.#latest = now;
    const ahead: T[] = [];
    for (let e = this.#checked.first(); e; ) {
      const next = this.#checked.after(e);
      if (this.#steppedBack.has(e) || (e.lastCheckedAt as number) > now) {
        unlink(e);
        if (!this.#steppedBack.has(e)) this.#steppedBack.set(e, now);
        ahead.push(e);
      }
      e = next;
    }
    this.#checked.pushFront(ahead);
  }

  /**
   * When a checked entry falls (or fell) due. One moved ahead by a step back of the clock fell due
   * when the step was seen, and one last checked later than `now` is due now: either way at once
   * (checked again, it takes its place by the new clock), and not behind the other kind's entries
   * for as long as the step.
   */
  #dueTime(e: T, now: number, intervalMs: number): number {
    const stepped = this.#steppedBack.size > 0 ? this.#steppedBack.get(e) : undefined;
    if (stepped !== undefined) return Math.min(stepped, now);
    const last = e.lastCheckedAt as number;
    return last > now ? now : last + intervalMs;
  }

  /** Whether no entry is held. O(1). */
  isEmpty(): boolean {
    return this.#unchecked.isEmpty() && this.#checked.isEmpty();
  }

  /**
   * The entry `take` would answer first (due, not skipped), and whether it was never checked; or,
   * when none is due, when the first checked one falls due. Costs O(1 + skipped), like `take`.
   */
  first(
    now: number,
    intervalMs: number,
    skip: (id: string) => boolean,
  ): { entry: T; unchecked: boolean; dueAt: number } | { entry: undefined; nextDueAt: number | undefined } {
    for (let e = this.#unchecked.first(); e; e = this.#unchecked.after(e)) {
      if (!skip(e.id)) return { entry: e, unchecked: true, dueAt: Number.NEGATIVE_INFINITY };
    }
    this.#stepBack(now);
    for (let e = this.#checked.first(); e; e = this.#checked.after(e)) {
      const dueAt = this.#dueTime(e, now, intervalMs);
      if (dueAt > now) return { entry: undefined, nextDueAt: dueAt };
      if (!skip(e.id)) return { entry: e, unchecked: false, dueAt };
    }
    return { entry: undefined, nextDueAt: undefined };
  }

  /**
   * Up to `max` ids due at `now`, skipping those for which `skip(id)` holds. `skip` is asked only
   * about due entries, so it runs at most `max` + (skipped entries) times. When at least one id is
   * due, the room left is filled with ids falling due within `earlyMs` (checked a little early,
   * they share this call from then on, instead of each going in a call of its own at its own time).
   */
  take(now: number, intervalMs: number, max: number, skip: (id: string) => boolean, earlyMs = 0): DueIds {
    const due: string[] = [];
    for (let e = this.#unchecked.first(); e && due.length < max; e = this.#unchecked.after(e)) {
      if (!skip(e.id)) due.push(e.id);
    }
    this.#stepBack(now);
    // How far past `now` an entry may fall due and still be taken: once something is due (a call
    // goes out anyway), its room is filled with entries falling due within `earlyMs`.
    let horizon = now;
    for (let e = this.#checked.first(); e && due.length < max; e = this.#checked.after(e)) {
      const dueAt = this.#dueTime(e, now, intervalMs);
      if (dueAt > horizon) {
        if (due.length === 0 || dueAt > now + earlyMs) return { due, nextDueAt: dueAt };
        horizon = now + earlyMs;
      }
      if (!skip(e.id)) due.push(e.id);
    }
    return { due, nextDueAt: undefined };
  }
}
