import { describe, expect, it, vi } from 'vitest';
import {
  type BulkItem,
  EXPORT_STATES,
  type ExportState,
  meansMissing,
  type Observation,
  observationsFromBulk,
  type PlatformExport,
  Tracker,
} from '../src/polling/tracker.js';
import type { ActiveExport } from '../src/store/store.js';

const T0 = 1_700_000_000_000;
const exp = (id: string, state: string, extra: Record<string, unknown> = {}): PlatformExport => ({
  id,
  state,
  ...extra,
});
const seen = (id: string, state: string, extra?: Record<string, unknown>): Observation => ({
  kind: 'resource',
  id,
  resource: exp(id, state, extra),
});
const NOT_FOUND = { status: 404, code: 9008, message: 'Requested job does not exist.' };
const missing = (id: string): Observation => ({ kind: 'missing', id, error: NOT_FOUND });
const fresh = (id: string): ActiveExport => ({ id, state: 'UNKNOWN', misses: 0 });
const never = () => false;

function tracker(...ids: string[]): Tracker {
  const t = new Tracker({});
  t.track(ids.map(fresh));
  return t;
}

/** The ids due at `now` with a 1 s interval, at most 100. */
const dueAt = (t: Tracker, now: number, max = 100) => t.takeDue(now, 1000, max, never);

describe('Tracker.track', () => {
  it('tracks new exports as UNKNOWN, and ignores ids already tracked and terminal exports', () => {
    const t = new Tracker({});
    t.track([fresh('a'), fresh('b'), fresh('a')]);
    t.track([
      { id: 'b', state: 'RUNNING', misses: 1 },
      { id: 'c', state: 'COMPLETED', misses: 0 },
    ]);
    expect(t.get('a')).toEqual({
      id: 'a',
      state: 'UNKNOWN',
      misses: 0,
      lastMiss: null,
      lastCheckedAt: null,
      checks: 0,
    });
    expect(t.get('b')?.state).toBe('UNKNOWN');
    expect(t.has('c')).toBe(false);
    expect(t.activeCount).toBe(2);
    expect([...t.activeIds()]).toEqual(['a', 'b']);
  });

  it('resumes an export loaded from the store with its state and misses', () => {
    const t = new Tracker({ lostAfter: 3 });
    t.track([
      { id: 'x', state: 'RUNNING', misses: 2 },
      { id: 'y', state: 'RUNNING', misses: 0 },
    ]);
    const r = t.apply([missing('x'), seen('y', 'PENDING')], T0);
    expect(r.transitions).toEqual([
      { exportId: 'x', from: 'RUNNING', to: 'LOST', at: T0, export: null, error: NOT_FOUND },
    ]);
    expect(r.warnings.map((w) => [w.exportId, w.reason])).toEqual([['y', 'stale_state']]);
  });

  it('get returns a copy: what is held changes only through the tracker', () => {
    const t = tracker('a');
    const copy = t.get('a');
    if (copy) copy.state = 'COMPLETED';
    expect(t.get('a')?.state).toBe('UNKNOWN');
  });
});

describe('Tracker.apply', () => {
  it('moves forward one transition at a time, and drops the export once terminal', () => {
    const t = tracker('x');
    let r = t.apply([seen('x', 'PENDING')], T0 + 1);
    expect(r.transitions).toEqual([
      { exportId: 'x', from: 'UNKNOWN', to: 'PENDING', at: T0 + 1, export: exp('x', 'PENDING'), error: null },
    ]);
    r = t.apply([seen('x', 'PENDING')], T0 + 2);
    expect(r.transitions).toEqual([]);
    r = t.apply([seen('x', 'RUNNING')], T0 + 3);
    expect(r.transitions.map((x) => [x.from, x.to])).toEqual([['PENDING', 'RUNNING']]);
    expect(t.get('x')).toMatchObject({ state: 'RUNNING', checks: 3, lastCheckedAt: T0 + 3 });
    r = t.apply([seen('x', 'COMPLETED', { result: { id: 'f1' } })], T0 + 4);
    expect(r.transitions).toEqual([
      {
        exportId: 'x',
        from: 'RUNNING',
        to: 'COMPLETED',
        at: T0 + 4,
        export: exp('x', 'COMPLETED', { result: { id: 'f1' } }),
        error: null,
      },
    ]);
    expect(t.get('x')).toBeUndefined();
    expect(t.has('x')).toBe(false);
    expect(t.activeCount).toBe(0);
  });

  it('makes a jump one transition', () => {
    const t = tracker('x');
    t.apply([seen('x', 'PENDING')], T0 + 1);
    const r = t.apply([seen('x', 'FAILED', { error: { code: 9107 } })], T0 + 2);
    expect(r.transitions).toHaveLength(1);
    expect(r.transitions[0]).toMatchObject({ from: 'PENDING', to: 'FAILED' });
  });

  it('ignores a stale earlier state with a warning', () => {
    const t = tracker('x');
    t.apply([seen('x', 'RUNNING')], T0 + 1);
    const r = t.apply([seen('x', 'PENDING')], T0 + 2);
    expect(r.transitions).toEqual([]);
    expect(r.changes).toEqual([]);
    expect(r.warnings).toEqual([
      { exportId: 'x', reason: 'stale_state', detail: { state: 'PENDING', current: 'RUNNING' } },
    ]);
    expect(t.get('x')?.state).toBe('RUNNING');
  });

  it('treats an unknown state string as not terminal, with a warning', () => {
    const t = tracker('x');
    const r = t.apply([seen('x', 'QUEUED_FOR_GLACIER')], T0 + 1);
    expect(r.transitions).toEqual([]);
    expect(r.warnings[0]).toMatchObject({ reason: 'unknown_state', detail: { state: 'QUEUED_FOR_GLACIER' } });
    expect(t.get('x')?.state).toBe('UNKNOWN');
    expect([...t.activeIds()]).toEqual(['x']);
  });

  it('ignores later observations of a finished export: it is no longer held', () => {
    const t = tracker('x');
    t.apply([seen('x', 'COMPLETED')], T0 + 1);
    expect(t.apply([seen('x', 'FAILED'), missing('x')], T0 + 2)).toEqual({
      transitions: [],
      changes: [],
      warnings: [],
    });
    // Whether it may be watched again is the store's decision: the tracker no longer knows it.
    t.track([fresh('x')]);
    expect(t.get('x')?.state).toBe('UNKNOWN');
  });

  it('makes at most one transition per export per check, ignoring what follows a terminal state', () => {
    const t = tracker('x');
    const r = t.apply([seen('x', 'PENDING'), seen('x', 'COMPLETED'), missing('x')], T0 + 1);
    expect(r.transitions.map((x) => [x.from, x.to])).toEqual([['UNKNOWN', 'COMPLETED']]);
    expect(r.changes).toHaveLength(1);
  });

  it('makes an export LOST after 3 consecutive not-found answers, and a resource resets the count', () => {
    const t = tracker('x');
    t.apply([missing('x')], T0 + 1);
    t.apply([missing('x')], T0 + 2);
    t.apply([seen('x', 'PENDING')], T0 + 3);
    t.apply([missing('x')], T0 + 4);
    expect(t.apply([missing('x')], T0 + 5).transitions).toEqual([]);
    expect(t.get('x')).toMatchObject({ state: 'PENDING', misses: 2, lastMiss: NOT_FOUND });
    const r = t.apply([missing('x')], T0 + 6);
    expect(r.transitions).toHaveLength(1);
    expect(r.transitions[0]).toMatchObject({ from: 'PENDING', to: 'LOST', at: T0 + 6 });
    expect(t.has('x')).toBe(false);
  });

  it('a job returned without a readable state resets the misses: it exists', () => {
    let deep: unknown = 'x';
    for (let i = 0; i < 20_000; i++) deep = [deep];
    for (const state of [undefined, null, 7, { deep: 'x'.repeat(100) }, deep]) {
      const t = tracker('x');
      const check = (items: BulkItem[], at: number) =>
        t.apply(observationsFromBulk(['x'], items).observations, at);
      check([{ error: NOT_FOUND }], T0 + 1);
      check([{ error: NOT_FOUND }], T0 + 2);
      const odd = check(
        [{ resource: { id: 'x', href: 'h', ...(state === undefined ? {} : { state }) } }],
        T0 + 3,
      );
      expect(odd.transitions).toEqual([]);
      expect(odd.warnings).toEqual([
        expect.objectContaining({
          exportId: 'x',
          reason: 'unknown_state',
          detail: { state: expect.any(String) },
        }),
      ]);
      expect(String(odd.warnings[0]?.detail.state)).toMatch(/^\((none|null|number 7|object|array)\)$/);
      expect(t.get('x')).toMatchObject({ state: 'UNKNOWN', misses: 0 });
      expect(check([{ error: NOT_FOUND }], T0 + 4).transitions).toEqual([]);
    }
  });

  it('honours lostAfter', () => {
    const t = new Tracker({ lostAfter: 1 });
    t.track([fresh('x')]);
    expect(t.apply([missing('x')], T0).transitions[0]?.to).toBe('LOST');
  });

  it('counts an unanswered id as checked without changing it', () => {
    const t = tracker('x');
    const r = t.apply([{ kind: 'unanswered', id: 'x' }], T0 + 1);
    expect(r.transitions).toEqual([]);
    expect(r.changes).toEqual([]);
    expect(r.warnings).toEqual([{ exportId: 'x', reason: 'unanswered', detail: {} }]);
    expect(t.get('x')).toMatchObject({ state: 'UNKNOWN', checks: 1, lastCheckedAt: T0 + 1 });
  });

  it('ignores observations of untracked ids', () => {
    const t = tracker('x');
    expect(t.untrack('x')).toBe(true);
    expect(t.apply([seen('x', 'COMPLETED')], T0 + 1)).toEqual({ transitions: [], changes: [], warnings: [] });
    expect(t.untrack('x')).toBe(false);
  });
});

describe('changes for the store', () => {
  it('one per miss, per reset of the misses, and per state change; none when nothing changed', () => {
    const t = new Tracker({});
    t.track([{ id: 'x', state: 'RUNNING', misses: 0 }]);
    const base = { id: 'x', from: 'RUNNING', to: 'RUNNING', export: null, error: null };
    expect(t.apply([missing('x')], T0 + 1).changes).toEqual([
      { ...base, at: T0 + 1, misses: 1, lastMiss: NOT_FOUND },
    ]);
    expect(t.apply([seen('x', 'RUNNING')], T0 + 2).changes).toEqual([
      { ...base, at: T0 + 2, misses: 0, lastMiss: null },
    ]);
    expect(t.apply([seen('x', 'RUNNING')], T0 + 3).changes).toEqual([]);
    expect(t.apply([{ kind: 'unanswered', id: 'x' }], T0 + 4).changes).toEqual([]);
    t.apply([missing('x')], T0 + 5);
    t.apply([missing('x')], T0 + 6);
    expect(t.apply([missing('x')], T0 + 7).changes).toEqual([
      { ...base, to: 'LOST', at: T0 + 7, misses: 3, lastMiss: NOT_FOUND, error: NOT_FOUND },
    ]);
  });

  it('a state change carries the resource that came with it, and resets the misses', () => {
    const t = tracker('x');
    t.apply([missing('x')], T0 + 1);
    expect(t.apply([seen('x', 'PENDING', { n: 1 })], T0 + 2).changes).toEqual([
      {
        id: 'x',
        from: 'UNKNOWN',
        to: 'PENDING',
        at: T0 + 2,
        misses: 0,
        lastMiss: null,
        export: exp('x', 'PENDING', { n: 1 }),
        error: null,
      },
    ]);
  });
});

describe('Tracker.preview and commit', () => {
  it('preview changes nothing; commit makes it so', () => {
    const t = tracker('x', 'y');
    const outcome = t.preview([seen('x', 'COMPLETED'), seen('y', 'RUNNING')], T0 + 1);
    expect(outcome.transitions.map((x) => x.to)).toEqual(['COMPLETED', 'RUNNING']);
    expect(t.get('x')).toMatchObject({ state: 'UNKNOWN', checks: 0, lastCheckedAt: null });
    expect(t.countByState()).toMatchObject({ UNKNOWN: 2, RUNNING: 0 });
    expect(dueAt(t, T0 + 1).due).toEqual(['x', 'y']);
    t.commit(outcome);
    expect(t.has('x')).toBe(false);
    expect(t.get('y')).toMatchObject({ state: 'RUNNING', checks: 1, lastCheckedAt: T0 + 1 });
    expect(t.countByState()).toMatchObject({ UNKNOWN: 0, RUNNING: 1 });
  });

  it('a preview never committed (its store write failed) leaves the ids due, in their place', () => {
    const t = tracker('a', 'b', 'c');
    t.apply([seen('a', 'RUNNING'), seen('b', 'RUNNING'), seen('c', 'RUNNING')], T0);
    t.preview([seen('a', 'COMPLETED')], T0 + 1000);
    expect(t.get('a')).toMatchObject({ state: 'RUNNING', checks: 1, lastCheckedAt: T0 });
    expect(dueAt(t, T0 + 1000).due).toEqual(['a', 'b', 'c']);
  });

  it('commits a preview at most once, and only its own', () => {
    const t = tracker('x');
    const outcome = t.preview([missing('x')], T0);
    t.commit(outcome);
    expect(() => t.commit(outcome)).toThrow(/not a pending preview/);
    expect(() => tracker('x').commit(t.preview([missing('x')], T0))).toThrow(/not a pending preview/);
    expect(t.get('x')?.misses).toBe(1);
  });

  it('commit skips an export untracked, or untracked and tracked again, since the preview', () => {
    const t = tracker('x', 'y');
    const outcome = t.preview([seen('x', 'RUNNING'), seen('y', 'RUNNING')], T0);
    t.untrack('x');
    t.track([fresh('x')]);
    t.untrack('y');
    t.commit(outcome);
    expect(t.get('x')).toMatchObject({ state: 'UNKNOWN', checks: 0 });
    expect(t.has('y')).toBe(false);
    expect(t.countByState()).toMatchObject({ UNKNOWN: 1, RUNNING: 0 });
  });

  it('commit skips an export that another commit changed since the preview', () => {
    const t = tracker('x');
    const first = t.preview([missing('x')], T0);
    const second = t.preview([missing('x')], T0);
    t.commit(first);
    t.commit(second);
    expect(t.get('x')).toMatchObject({ misses: 1, checks: 1 });
  });
});

describe('Tracker.takeDue', () => {
  it('after a step back shorter than the interval, ids checked "in the future" are due at once, behind ids not due', () => {
    const t = tracker('a', 'b');
    t.apply([seen('a', 'RUNNING')], T0);
    t.apply([seen('b', 'RUNNING')], T0 + 600);
    // The clock steps back 400 ms, to T0 + 300: b was checked "in the future", a was not.
    expect(dueAt(t, T0 + 300)).toEqual({ due: ['b'], nextDueAt: T0 + 1000 });
    // Not taken (its kind paused, say) until the clock passed its check again: still due, and
    // not in the way of a.
    expect(dueAt(t, T0 + 700).due).toEqual(['b']);
    expect(dueAt(t, T0 + 1000).due).toEqual(['b', 'a']);
    // Checked again, it takes its place by the new clock.
    t.apply([seen('b', 'RUNNING')], T0 + 1000);
    expect(dueAt(t, T0 + 1000)).toEqual({ due: ['a'], nextDueAt: T0 + 2000 });
  });

  it('an export checked "in the future" is not held for the step behind a backlog of imports', () => {
    const t = new Tracker({});
    const imports = ['i1', 'i2', 'i3', 'i4', 'i5'];
    t.track([{ id: 'e', state: 'UNKNOWN', misses: 0 }]);
    t.track(imports.map((id) => ({ id, kind: 'import' as const, state: 'UNKNOWN' as const, misses: 0 })));
    t.apply(
      imports.map((id) => seen(id, 'RUNNING')),
      T0 - 2000,
      'import',
    );
    t.apply([seen('e', 'RUNNING')], T0 + 600_000);
    // The wall clock steps back ten minutes, to T0. One id per turn, a turn every 300 ms, a 1 s
    // interval: the imports are always due (a backlog, as under the rate budget).
    const taken: string[] = [];
    for (let turn = 0; turn < 40; turn++) {
      const now = T0 + turn * 300;
      const { kind = 'export', due } = t.takeDue(now, 1000, 1, never);
      for (const id of due) {
        taken.push(id);
        t.apply([seen(id, 'RUNNING')], now, kind);
      }
    }
    // e has been due since the step (T0): the imports that fell due before it go first, then e,
    // not after twelve seconds of imports that fell due after it.
    expect(taken.indexOf('e')).toBeGreaterThanOrEqual(0);
    expect(taken.indexOf('e')).toBeLessThanOrEqual(imports.length);
  });

  it('an id last checked "in the future" (the wall clock stepped back) is due at once, not after the step', () => {
    const t = tracker('a', 'b');
    t.apply([seen('a', 'RUNNING'), seen('b', 'RUNNING')], T0);
    // The clock steps back an hour; five seconds later both are due, not in an hour.
    const later = T0 - 3_600_000 + 5_000;
    expect(dueAt(t, later)).toEqual({ due: ['a', 'b'], nextDueAt: undefined });
    // Checked again by the new clock, they fall due an interval later.
    t.apply([seen('a', 'RUNNING'), seen('b', 'RUNNING')], later);
    expect(dueAt(t, later + 10)).toEqual({ due: [], nextDueAt: later + 1000 });
  });

  it('never-checked ids first, in the order tracked, then the longest-unchecked', () => {
    const t = tracker('a', 'b', 'c', 'd');
    t.apply([seen('c', 'RUNNING')], T0 + 10);
    t.apply([seen('a', 'RUNNING')], T0 + 20);
    t.track([fresh('e')]);
    expect(dueAt(t, T0 + 1020)).toEqual({ due: ['b', 'd', 'e', 'c', 'a'], nextDueAt: undefined });
    expect(dueAt(t, T0 + 1015)).toEqual({ due: ['b', 'd', 'e', 'c'], nextDueAt: T0 + 1020 });
    expect(dueAt(t, T0 + 1009)).toEqual({ due: ['b', 'd', 'e'], nextDueAt: T0 + 1010 });
    // Stopped at `max` before reaching an id not yet due: when the next falls due is not known.
    expect(dueAt(t, T0 + 1015, 2)).toEqual({ due: ['b', 'd'], nextDueAt: undefined });
  });

  it('moves an id to the tail once its check is committed, whatever the check said', () => {
    const t = tracker('a', 'b', 'c');
    t.apply([seen('a', 'RUNNING'), seen('b', 'RUNNING'), seen('c', 'RUNNING')], T0);
    t.apply([{ kind: 'unanswered', id: 'a' }], T0 + 500);
    t.apply([missing('b')], T0 + 600);
    expect(dueAt(t, T0 + 2000).due).toEqual(['c', 'a', 'b']);
  });

  it('leaves ids that were taken but not answered (a failed call) in their place', () => {
    const t = tracker('a', 'b', 'c');
    t.apply([seen('a', 'RUNNING'), seen('b', 'RUNNING'), seen('c', 'RUNNING')], T0);
    expect(dueAt(t, T0 + 1000, 1).due).toEqual(['a']);
    t.apply([seen('b', 'RUNNING')], T0 + 1000);
    expect(dueAt(t, T0 + 2000).due).toEqual(['a', 'c', 'b']);
  });

  it('skips ids in flight, and asks only about due ids', () => {
    const t = tracker('a', 'b', 'c', 'd');
    t.apply([seen('c', 'RUNNING'), seen('d', 'RUNNING')], T0);
    const skip = vi.fn((id: string) => id === 'a' || id === 'c');
    expect(t.takeDue(T0 + 999, 1000, 10, skip)).toEqual({ due: ['b'], nextDueAt: T0 + 1000 });
    expect(skip.mock.calls.map(([id]) => id)).toEqual(['a', 'b']);
  });

  it('says when the next id falls due, or nothing when none is held', () => {
    const t = tracker('a');
    t.apply([seen('a', 'RUNNING')], T0);
    expect(dueAt(t, T0 + 10)).toEqual({ due: [], nextDueAt: T0 + 1000 });
    t.untrack('a');
    expect(dueAt(t, T0 + 2000)).toEqual({ due: [], nextDueAt: undefined });
  });

  it('forgets untracked and finished ids', () => {
    const t = tracker('a', 'b', 'c', 'd');
    t.apply([seen('c', 'RUNNING'), seen('d', 'RUNNING')], T0);
    t.untrack('a');
    t.untrack('c');
    t.apply([seen('d', 'COMPLETED'), seen('b', 'FAILED')], T0 + 1);
    expect(dueAt(t, T0 + 5000).due).toEqual([]);
  });

  it('does O(max + in flight) work, not O(active), at 100,000 exports', () => {
    const ids = Array.from({ length: 100_000 }, (_, i) => `e${i}`);
    const t = new Tracker({});
    t.track(ids.map(fresh));
    const inFlight = new Set(ids.slice(0, 300));
    const skip = vi.fn((id: string) => inFlight.has(id));
    // Never checked: the walk passes the 300 in flight, then takes 200.
    expect(t.takeDue(T0, 1000, 200, skip).due).toEqual(ids.slice(300, 500));
    expect(skip).toHaveBeenCalledTimes(500);
    // Checked: the same, in the order of the checks.
    t.apply(
      ids.map((id) => seen(id, 'RUNNING')),
      T0,
    );
    skip.mockClear();
    expect(t.takeDue(T0 + 1000, 1000, 200, skip)).toEqual({ due: ids.slice(300, 500), nextDueAt: undefined });
    expect(skip).toHaveBeenCalledTimes(500);
    // Nothing due: one look at the head.
    skip.mockClear();
    expect(t.takeDue(T0 + 999, 1000, 200, skip)).toEqual({ due: [], nextDueAt: T0 + 1000 });
    expect(skip).not.toHaveBeenCalled();
  });
});

describe('Tracker.countByState', () => {
  it('counts active exports by state, kept up to date by track, commit and untrack', () => {
    const t = tracker('a', 'b', 'c');
    t.track([{ id: 'd', state: 'RUNNING', misses: 0 }]);
    expect(t.countByState()).toEqual({
      UNKNOWN: 3,
      PENDING: 0,
      RUNNING: 1,
      COMPLETED: 0,
      FAILED: 0,
      LOST: 0,
    });
    t.apply([seen('a', 'PENDING'), seen('b', 'COMPLETED')], T0);
    expect(t.countByState()).toEqual({
      UNKNOWN: 1,
      PENDING: 1,
      RUNNING: 1,
      COMPLETED: 0,
      FAILED: 0,
      LOST: 0,
    });
    t.untrack('d');
    expect(t.countByState()).toMatchObject({ RUNNING: 0 });
  });

  it('always agrees with a recount, through random operations', () => {
    let seed = 7;
    const random = (n: number) => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return Math.floor((seed / 2 ** 31) * n);
    };
    const states = ['PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'BOGUS'];
    const t = new Tracker({ lostAfter: 2 });
    for (let step = 0; step < 2000; step++) {
      const id = `e${random(40)}`;
      const op = random(10);
      if (op === 0) t.untrack(id);
      else if (op < 3) t.track([fresh(id)]);
      else if (op < 5) t.apply([missing(id)], T0 + step);
      else if (op < 6) t.preview([seen(id, 'COMPLETED')], T0 + step);
      else t.apply([seen(id, states[random(states.length)] as string)], T0 + step);
      const recount = Object.fromEntries(EXPORT_STATES.map((s) => [s, 0])) as Record<ExportState, number>;
      for (const active of t.activeIds()) recount[t.get(active)?.state as ExportState]++;
      expect(t.countByState()).toEqual(recount);
    }
  });
});

describe('observationsFromBulk', () => {
  it('matches items by resource.id, not by position', () => {
    const { observations } = observationsFromBulk(
      ['a', 'b', 'c'],
      [
        { resource: exp('c', 'RUNNING') },
        { resource: exp('a', 'PENDING') },
        { resource: exp('b', 'COMPLETED') },
      ],
    );
    const byId = Object.fromEntries(
      observations.map((o) => [o.id, o.kind === 'resource' ? o.resource.state : o.kind]),
    );
    expect(byId).toEqual({ a: 'PENDING', b: 'COMPLETED', c: 'RUNNING' });
  });

  it('attributes anonymous not-found error items to the ids no resource answered', () => {
    const { observations } = observationsFromBulk(
      ['a', 'b', 'c'],
      [
        { error: { status: 404, code: 9008, message: 'Requested job does not exist.' } },
        { resource: exp('b', 'RUNNING') },
        { error: { status: 404, code: 9008 } },
      ],
    );
    expect(
      observations
        .filter((o) => o.kind === 'missing')
        .map((o) => o.id)
        .sort(),
    ).toEqual(['a', 'c']);
    expect(observations.find((o) => o.id === 'b')?.kind).toBe('resource');
  });

  it('matches an error item that names its id to that id only', () => {
    const { observations } = observationsFromBulk(
      ['a', 'b'],
      [{ error: { status: 404, code: 9008, id: 'b' } }, { error: { status: 500, code: 90000 } }],
    );
    expect(observations.find((o) => o.id === 'b')?.kind).toBe('missing');
    expect(observations.find((o) => o.id === 'a')).toMatchObject({
      kind: 'unanswered',
      error: { status: 500 },
    });
  });

  it('leaves ids unanswered when the errors are not all "missing"', () => {
    const { observations } = observationsFromBulk(
      ['a', 'b'],
      [{ error: { status: 404, code: 9008 } }, { error: { status: 500, code: 90000 } }],
    );
    expect(observations.map((o) => o.kind)).toEqual(['unanswered', 'unanswered']);
  });

  it('marks ids unanswered when the answer says nothing about them', () => {
    const { observations } = observationsFromBulk(['a', 'b'], [{ resource: exp('a', 'PENDING') }]);
    expect(observations.find((o) => o.id === 'b')).toEqual({ kind: 'unanswered', id: 'b' });
  });

  it('warns about resources that were not asked for, or twice', () => {
    const { observations, warnings } = observationsFromBulk(
      ['a'],
      [
        { resource: exp('a', 'PENDING') },
        { resource: exp('a', 'RUNNING') },
        { resource: exp('zzz', 'RUNNING') },
        { resource: { state: 'RUNNING' } },
      ],
    );
    expect(observations).toHaveLength(1);
    // One warning for the whole answer, with a count and sample ids: never one line per item.
    expect(warnings).toEqual([
      { reason: 'unexpected_resource', detail: { count: 2, sample_ids: ['a', 'zzz'] } },
    ]);
  });

  it('two resources for one id that disagree speak for neither state: the state stays as it was', () => {
    for (const [first, second] of [
      ['FAILED', 'RUNNING'],
      ['RUNNING', 'COMPLETED'],
    ] as const) {
      const t = tracker('a');
      t.apply([seen('a', 'RUNNING')], T0);
      const { observations } = observationsFromBulk(
        ['a'],
        [{ resource: exp('a', first) }, { resource: exp('a', second) }],
      );
      expect(observations).toEqual([{ kind: 'unreadable', id: 'a', state: '(contradicting)' }]);
      expect(t.apply(observations, T0 + 1000).transitions).toEqual([]);
      expect(t.get('a')?.state).toBe('RUNNING');
    }
    // Twice the same state: the first speaks for it.
    const { observations } = observationsFromBulk(
      ['a'],
      [{ resource: exp('a', 'COMPLETED') }, { resource: exp('a', 'COMPLETED') }],
    );
    expect(observations).toEqual([expect.objectContaining({ id: 'a', kind: 'resource' })]);
  });

  it('two resources that disagree still say the job exists: its misses are reset, so no LOST follows', () => {
    const t = new Tracker({ lostAfter: 3 });
    t.track([{ id: 'a', state: 'RUNNING', misses: 0 }]);
    t.apply([missing('a')], T0);
    t.apply([missing('a')], T0 + 1000);
    expect(t.get('a')?.misses).toBe(2);
    const { observations } = observationsFromBulk(
      ['a'],
      [{ resource: exp('a', 'RUNNING') }, { resource: exp('a', 'FAILED') }],
    );
    t.apply(observations, T0 + 2000);
    expect(t.get('a')?.misses).toBe(0);
    // One more miss is the first, not the third in a row.
    expect(t.apply([missing('a')], T0 + 3000).transitions).toEqual([]);
    expect(t.get('a')?.state).toBe('RUNNING');
  });

  it('an error item naming an id that is no text (an object that cannot be printed) costs nothing else', () => {
    const items = [
      { resource: exp('a', 'RUNNING') },
      { resource: exp('b', 'COMPLETED') },
      { error: { status: 404, code: 9008, id: { toString: 1 } } },
    ] as unknown as BulkItem[];
    const { observations, warnings } = observationsFromBulk(['a', 'b'], items);
    expect(observations.map((o) => [o.id, o.kind])).toEqual([
      ['a', 'resource'],
      ['b', 'resource'],
    ]);
    expect(warnings).toEqual([
      { reason: 'unexpected_resource', detail: { count: 1, error_items: 1, sample_ids: ['(object)'] } },
    ]);
  });
});

describe('meansMissing', () => {
  it('recognises not-found and no-access codes and statuses', () => {
    expect(meansMissing({ code: 9008 })).toBe(true);
    expect(meansMissing({ code: 9005 })).toBe(true);
    expect(meansMissing({ status: 403 })).toBe(true);
    expect(meansMissing({ status: 500, code: 90000 })).toBe(false);
    expect(meansMissing({})).toBe(false);
  });
});

describe('observationsFromBulk: anonymous errors are attributed only one for one', () => {
  const hundred = Array.from({ length: 100 }, (_, i) => `id-${i}`);

  it('one error item for a 100-id call makes nobody missing, and says so once', () => {
    const { observations, warnings } = observationsFromBulk(hundred, [{ error: { status: 404 } }]);
    expect(observations.every((o) => o.kind === 'unanswered')).toBe(true);
    expect(observations).toHaveLength(100);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({
      reason: 'unattributed_errors',
      detail: { count: 100, error_items: 1, items: 1, asked: 100 },
    });
    expect((warnings[0]?.detail as { sample_ids?: string[] } | undefined)?.sample_ids).toHaveLength(5);
  });

  it('as many errors as unanswered ids, but an answer with extra items, is not trusted', () => {
    const { observations, warnings } = observationsFromBulk(
      ['a', 'b'],
      [{ resource: exp('a', 'RUNNING') }, { resource: exp('zzz', 'RUNNING') }, { error: { code: 9008 } }],
    );
    expect(observations.find((o) => o.id === 'b')?.kind).toBe('unanswered');
    expect(warnings.map((w) => w.reason).sort()).toEqual(['unattributed_errors', 'unexpected_resource']);
  });

  it('a lone anonymous error of another kind belongs to the lone unanswered id', () => {
    const { observations, warnings } = observationsFromBulk(
      ['a', 'b'],
      [{ resource: exp('a', 'RUNNING') }, { error: { status: 500, code: 90000 } }],
    );
    expect(observations.find((o) => o.id === 'b')).toEqual({
      kind: 'unanswered',
      id: 'b',
      error: { status: 500, code: 90000 },
    });
    expect(warnings).toEqual([]);
  });

  it('two errors for two ids, one "missing" and one not, cannot be told apart', () => {
    const { observations } = observationsFromBulk(
      ['a', 'b'],
      [{ error: { code: 9008 } }, { error: { status: 500 } }],
    );
    expect(observations.map((o) => o.kind)).toEqual(['unanswered', 'unanswered']);
  });
});

describe('observationsFromBulk: an error item that names an id is never anonymous', () => {
  /** Three checks of [a, b] answered alike, as the scheduler would fold them in. */
  function threeChecks(items: Parameters<typeof observationsFromBulk>[1]) {
    const t = tracker('a', 'b');
    const outcomes = [1, 2, 3].map((i) =>
      t.apply(observationsFromBulk(['a', 'b'], items).observations, T0 + i),
    );
    return { t, outcomes };
  }

  it('an error naming an id a resource already answered is ignored, not pinned on another id', () => {
    const items = [{ resource: exp('a', 'RUNNING') }, { error: { status: 404, code: 9008, id: 'a' } }];
    const { observations, warnings } = observationsFromBulk(['a', 'b'], items);
    expect(observations.find((o) => o.id === 'a')?.kind).toBe('resource');
    expect(observations.find((o) => o.id === 'b')).toEqual({ kind: 'unanswered', id: 'b' });
    // One warning for the whole answer, whatever the number of such items.
    expect(warnings).toEqual([
      { reason: 'unexpected_resource', detail: { count: 1, sample_ids: ['a'], error_items: 1 } },
    ]);
    const { t, outcomes } = threeChecks(items);
    expect(outcomes.flatMap((o) => o.transitions).map((x) => [x.exportId, x.to])).toEqual([['a', 'RUNNING']]);
    expect(t.get('a')).toMatchObject({ state: 'RUNNING', misses: 0 });
    expect(t.get('b')).toMatchObject({ state: 'UNKNOWN', misses: 0, lastMiss: null, checks: 3 });
  });

  it('an error naming an id that was not asked is ignored, not pinned on another id', () => {
    const items = [{ resource: exp('a', 'RUNNING') }, { error: { status: 404, code: 9008, id: 'zzz' } }];
    const { observations, warnings } = observationsFromBulk(['a', 'b'], items);
    expect(observations.find((o) => o.id === 'b')).toEqual({ kind: 'unanswered', id: 'b' });
    expect(warnings).toEqual([
      { reason: 'unexpected_resource', detail: { count: 1, sample_ids: ['zzz'], error_items: 1 } },
    ]);
    const { t, outcomes } = threeChecks(items);
    expect(outcomes.flatMap((o) => o.changes).filter((c) => c.id === 'b')).toEqual([]);
    expect(t.get('b')).toMatchObject({ state: 'UNKNOWN', misses: 0, lastMiss: null });
  });

  it('a stray named error turns off one-for-one attribution for the whole answer', () => {
    const { observations, warnings } = observationsFromBulk(
      ['a', 'b', 'c'],
      [{ resource: exp('a', 'RUNNING') }, { error: { code: 9008, id: 7 } }, { error: { code: 9008 } }],
    );
    expect(observations.filter((o) => o.id !== 'a').map((o) => o.kind)).toEqual(['unanswered', 'unanswered']);
    expect(warnings.map((w) => w.reason).sort()).toEqual(['unattributed_errors', 'unexpected_resource']);
  });

  it('an id named by two error items is matched to neither', () => {
    const { observations, warnings } = observationsFromBulk(
      ['a', 'b'],
      [
        { resource: exp('a', 'RUNNING') },
        { error: { status: 500, code: 90000, id: 'b' } },
        { error: { status: 404, code: 9008, id: 'b' } },
      ],
    );
    expect(observations.find((o) => o.id === 'b')).toEqual({ kind: 'unanswered', id: 'b' });
    expect(warnings).toEqual([
      { reason: 'unexpected_resource', detail: { count: 2, sample_ids: ['b', 'b'], error_items: 2 } },
    ]);
  });

  it('without ids, one not-found error for the one unanswered id still makes it LOST in 3 checks', () => {
    const { t, outcomes } = threeChecks([{ resource: exp('a', 'RUNNING') }, { error: NOT_FOUND }]);
    expect(outcomes[2]?.transitions).toEqual([
      expect.objectContaining({ exportId: 'b', to: 'LOST', error: NOT_FOUND }),
    ]);
    expect(t.has('b')).toBe(false);
    expect(t.get('a')).toMatchObject({ state: 'RUNNING' });
  });
});

describe('why an export ended badly', () => {
  it('a LOST transition and change carry the last "no such job" error', () => {
    const t = tracker('x');
    let outcome = t.apply([missing('x')], T0 + 1);
    for (let i = 2; i <= 3; i++) outcome = t.apply([missing('x')], T0 + i);
    expect(outcome.transitions).toEqual([expect.objectContaining({ to: 'LOST', error: NOT_FOUND })]);
    expect(outcome.changes).toEqual([
      expect.objectContaining({ to: 'LOST', error: NOT_FOUND, lastMiss: NOT_FOUND }),
    ]);
  });

  it('a FAILED export carries the job error; a COMPLETED one none', () => {
    const t = tracker('f', 'c');
    const error = { status: 409, code: 9107, message: 'Location on volume already contains a file.' };
    const r = t.apply([seen('f', 'FAILED', { error }), seen('c', 'COMPLETED')], T0 + 1);
    expect(r.transitions.map((x) => [x.exportId, x.error])).toEqual([
      ['f', error],
      ['c', null],
    ]);
    expect(r.changes.map((x) => [x.id, x.error])).toEqual([
      ['f', error],
      ['c', null],
    ]);
  });
});
