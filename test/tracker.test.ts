import { describe, expect, it } from 'vitest';
import {
  meansMissing,
  type Observation,
  observationsFromBulk,
  type PlatformExport,
  Tracker,
} from '../src/polling/tracker.js';

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
const missing = (id: string): Observation => ({
  kind: 'missing',
  id,
  error: { status: 404, code: 9008, message: 'Requested job does not exist.' },
});

function tracker(...ids: string[]): Tracker {
  const t = new Tracker({ retainMs: 60_000 });
  t.add(ids, { team: 'a' }, T0);
  return t;
}

describe('Tracker.add', () => {
  it('registers new ids as UNKNOWN and reports known ones as already watched', () => {
    const t = new Tracker({ retainMs: 1000 });
    expect(t.add(['a', 'b', 'a'], null, T0)).toEqual({ accepted: ['a', 'b'], alreadyWatched: [] });
    expect(t.add(['b', 'c'], null, T0 + 5)).toEqual({ accepted: ['c'], alreadyWatched: ['b'] });
    const a = t.get('a');
    expect(a).toMatchObject({
      state: 'UNKNOWN',
      previousState: null,
      firstSeenAt: T0,
      lastCheckedAt: null,
      checks: 0,
    });
    expect(a?.history).toEqual([{ state: 'UNKNOWN', at: T0 }]);
    expect(t.activeCount).toBe(3);
  });

  it('keeps the metadata of the first registration', () => {
    const t = new Tracker({ retainMs: 1000 });
    t.add(['a'], { run: 1 }, T0);
    t.add(['a'], { run: 2 }, T0);
    expect(t.get('a')?.metadata).toEqual({ run: 1 });
  });
});

describe('Tracker.apply', () => {
  it('moves forward one transition at a time and records history', () => {
    const t = tracker('x');
    let r = t.apply([seen('x', 'PENDING')], T0 + 1);
    expect(r.transitions).toEqual([
      {
        exportId: 'x',
        from: 'UNKNOWN',
        to: 'PENDING',
        at: T0 + 1,
        metadata: { team: 'a' },
        export: exp('x', 'PENDING'),
        error: null,
      },
    ]);
    r = t.apply([seen('x', 'PENDING')], T0 + 2);
    expect(r.transitions).toEqual([]);
    r = t.apply([seen('x', 'RUNNING')], T0 + 3);
    expect(r.transitions.map((x) => [x.from, x.to])).toEqual([['PENDING', 'RUNNING']]);
    r = t.apply([seen('x', 'COMPLETED', { result: { id: 'f1' } })], T0 + 4);
    expect(r.transitions.map((x) => [x.from, x.to])).toEqual([['RUNNING', 'COMPLETED']]);
    const rec = t.get('x');
    expect(rec?.history.map((h) => h.state)).toEqual(['UNKNOWN', 'PENDING', 'RUNNING', 'COMPLETED']);
    expect(rec).toMatchObject({
      state: 'COMPLETED',
      previousState: 'RUNNING',
      stateChangedAt: T0 + 4,
      checks: 4,
    });
    expect(rec?.export).toEqual(exp('x', 'COMPLETED', { result: { id: 'f1' } }));
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
    expect(r.warnings).toEqual([
      { exportId: 'x', reason: 'stale_state', detail: { state: 'PENDING', current: 'RUNNING' } },
    ]);
    expect(t.get('x')?.state).toBe('RUNNING');
    expect(t.get('x')?.export?.state).toBe('RUNNING');
  });

  it('treats an unknown state string as not terminal, with a warning', () => {
    const t = tracker('x');
    const r = t.apply([seen('x', 'QUEUED_FOR_GLACIER')], T0 + 1);
    expect(r.transitions).toEqual([]);
    expect(r.warnings[0]).toMatchObject({ reason: 'unknown_state', detail: { state: 'QUEUED_FOR_GLACIER' } });
    expect(t.get('x')?.state).toBe('UNKNOWN');
    expect([...t.activeIds()]).toEqual(['x']);
  });

  it('never changes a terminal record again', () => {
    const t = tracker('x');
    t.apply([seen('x', 'COMPLETED')], T0 + 1);
    const r = t.apply([seen('x', 'FAILED'), missing('x')], T0 + 2);
    expect(r).toEqual({ transitions: [], warnings: [] });
    expect(t.get('x')).toMatchObject({ state: 'COMPLETED', checks: 1 });
  });

  it('makes an export LOST after 3 consecutive not-found answers, and a resource resets the count', () => {
    const t = tracker('x');
    t.apply([missing('x')], T0 + 1);
    t.apply([missing('x')], T0 + 2);
    t.apply([seen('x', 'PENDING')], T0 + 3);
    t.apply([missing('x')], T0 + 4);
    expect(t.apply([missing('x')], T0 + 5).transitions).toEqual([]);
    const r = t.apply([missing('x')], T0 + 6);
    expect(r.transitions).toHaveLength(1);
    expect(r.transitions[0]).toMatchObject({ from: 'PENDING', to: 'LOST', at: T0 + 6 });
    expect(t.get('x')?.state).toBe('LOST');
  });

  it('counts an unanswered id as checked without changing it', () => {
    const t = tracker('x');
    const r = t.apply([{ kind: 'unanswered', id: 'x' }], T0 + 1);
    expect(r.transitions).toEqual([]);
    expect(r.warnings).toEqual([{ exportId: 'x', reason: 'unanswered', detail: {} }]);
    expect(t.get('x')).toMatchObject({ state: 'UNKNOWN', checks: 1, lastCheckedAt: T0 + 1 });
  });

  it('ignores observations of removed ids', () => {
    const t = tracker('x');
    expect(t.remove('x')).toBe(true);
    expect(t.apply([seen('x', 'COMPLETED')], T0 + 1)).toEqual({ transitions: [], warnings: [] });
    expect(t.remove('x')).toBe(false);
  });
});

describe('Tracker.prune', () => {
  it('drops finished records once the retention has passed, and only those', () => {
    const t = new Tracker({ retainMs: 1000 });
    t.add(['done', 'busy'], null, T0);
    t.apply([seen('done', 'COMPLETED'), seen('busy', 'RUNNING')], T0 + 10);
    expect(t.prune(T0 + 1009)).toEqual([]);
    expect(t.prune(T0 + 1010)).toEqual(['done']);
    expect(t.get('done')).toBeUndefined();
    expect(t.get('busy')?.state).toBe('RUNNING');
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

describe('why an export ended badly', () => {
  it('a LOST record and its transition carry the last "no such job" error', () => {
    const t = tracker('x');
    const error = { status: 404, code: 9008, message: 'Requested job does not exist.' };
    let transitions: ReturnType<Tracker['apply']>['transitions'] = [];
    for (let i = 1; i <= 3; i++)
      transitions = t.apply([{ kind: 'missing', id: 'x', error }], T0 + i).transitions;
    expect(transitions).toEqual([expect.objectContaining({ to: 'LOST', error })]);
    expect(t.get('x')?.error).toEqual(error);
  });

  it('a FAILED record carries the job error; a COMPLETED one none', () => {
    const t = tracker('f', 'c');
    const error = { status: 409, code: 9107, message: 'Location on volume already contains a file.' };
    const r = t.apply([seen('f', 'FAILED', { error }), seen('c', 'COMPLETED')], T0 + 1);
    expect(r.transitions.map((x) => [x.exportId, x.error])).toEqual([
      ['f', error],
      ['c', null],
    ]);
    expect(t.get('f')?.error).toEqual(error);
    expect(t.get('c')?.error).toBeNull();
  });
});

describe('Tracker.page', () => {
  it('pages in id order with a keyset cursor, every record exactly once', () => {
    const t = new Tracker({ retainMs: 1000 });
    const all = Array.from({ length: 2500 }, (_, i) => `e${String((i * 7919) % 2500).padStart(5, '0')}`);
    t.add(all, null, T0);
    const seenIds: string[] = [];
    let after: string | undefined;
    for (;;) {
      const { items, more } = t.page({ limit: 1000, after });
      seenIds.push(...items.map((r) => r.id));
      if (!more) break;
      after = items.at(-1)?.id;
    }
    expect(seenIds).toEqual([...all].sort());
  });

  it('filters by state before paging', () => {
    const t = tracker('a', 'b', 'c');
    t.apply([seen('b', 'RUNNING')], T0 + 1);
    expect(t.page({ limit: 10, state: 'UNKNOWN' }).items.map((r) => r.id)).toEqual(['a', 'c']);
    expect(t.page({ limit: 1, state: 'UNKNOWN' })).toMatchObject({ more: true });
    expect(t.page({ limit: 10, state: 'UNKNOWN', after: 'a' }).items.map((r) => r.id)).toEqual(['c']);
  });
});
