/**
 * The store's contract: what every implementation of `Store` must do, whatever its engine.
 * An implementation's test file calls `describeStoreContract` with a way to open an empty store.
 *
 * Times are fixed epoch milliseconds passed in, as the daemon passes `now`; nothing here sleeps.
 */
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { type EventType, webhookId } from '../../src/delivery/events.js';
import type { ExportState, PlatformExport } from '../../src/polling/tracker.js';
import type { PlatformErrorBody } from '../../src/shared/errors.js';
import {
  type AttemptRecord,
  type DeliveryStatus,
  type EndpointRef,
  type EventBuilder,
  endpointKey,
  type JobKind,
  type NewEvent,
  ORPHANED_GIVE_UP_ERROR,
  type Store,
  type StoredDelivery,
  type StoredEvent,
  StoreError,
  webhookTwin,
} from '../../src/store/store.js';
import { move } from '../helpers/changes.js';

const T0 = 1_700_000_000_000;
const SECOND = 1000;
const HOUR = 3_600_000;

function endpoint(url: string): EndpointRef {
  return { key: endpointKey(url), label: url };
}
const A = endpoint('https://a.example/hooks');
const B = endpoint('https://b.example/hooks');
const C = endpoint('https://c.example/hooks');

const EVENT_TYPE: Partial<Record<ExportState, EventType>> = {
  RUNNING: 'export.running',
  COMPLETED: 'export.completed',
  FAILED: 'export.failed',
  LOST: 'export.lost',
};

/** Like the daemon's builder: one event per state that has one, id stable per export and type. */
const build: EventBuilder = (change, metadata) => {
  const type = EVENT_TYPE[change.to];
  if (!type || change.from === change.to) return null;
  return {
    id: eventId(change.id, change.to),
    type,
    exportId: change.id,
    body: JSON.stringify({ type, export_id: change.id, at: change.at, metadata }),
  };
};

function eventId(exportId: string, state: ExportState): string {
  return `evt_${exportId}_${state.toLowerCase()}`;
}

/** A job's events oldest first, of both kinds unless `kind` says: `listEvents` read backwards. */
async function eventsOf(store: Store, exportId: string, kind?: JobKind): Promise<StoredEvent[]> {
  return (await store.listEvents({ exportId, kind, limit: 1000 })).items.reverse();
}

function platform(id: string, state: string, extra: Record<string, unknown> = {}): PlatformExport {
  return { id, state, ...extra };
}

const NOT_FOUND: PlatformErrorBody = { status: 404, code: 9008, message: 'export job not found' };

/** An outcome as a test states it: of the delivery's current series unless it says otherwise. */
type Outcome = Omit<AttemptRecord, 'seriesStartedAt'> & { seriesStartedAt?: number };

function delivered(eventId: string, ref: EndpointRef, at: number): Outcome {
  return final(eventId, ref, 'delivered', at, 200);
}

function final(
  eventId: string,
  ref: EndpointRef,
  status: 'delivered' | 'failed' | 'gone',
  at: number,
  lastStatus: number,
): Outcome {
  return {
    eventId,
    endpointKey: ref.key,
    status,
    attempts: 1,
    nextAttemptAt: null,
    lastStatus,
    lastError: status === 'delivered' ? null : `HTTP ${lastStatus}`,
    finishedAt: at,
  };
}

/** A third attempt refused with a 503, the delivery pending again at `at`. */
function refusedThird(eventId: string, ref: EndpointRef, at: number): Outcome {
  return {
    eventId,
    endpointKey: ref.key,
    status: 'pending',
    attempts: 3,
    nextAttemptAt: at,
    lastStatus: 503,
    lastError: 'HTTP 503',
    finishedAt: null,
  };
}

function freshDelivery(eventId: string, ref: EndpointRef, at: number): StoredDelivery {
  return {
    eventId,
    endpointKey: ref.key,
    endpointLabel: ref.label,
    status: 'pending',
    attempts: 0,
    nextAttemptAt: at,
    seriesStartedAt: at,
    lastStatus: null,
    lastError: null,
    finishedAt: null,
  };
}

function byId<T extends { id: string }>(items: readonly T[]): T[] {
  return [...items].sort((a, b) => (a.id < b.id ? -1 : 1));
}

/** Runs `open`, expecting a StoreError; returns its message. */
export async function storeErrorOf(open: () => unknown): Promise<string> {
  try {
    await open();
  } catch (error) {
    expect(error).toBeInstanceOf(StoreError);
    return (error as StoreError).message;
  }
  throw new Error('expected a StoreError, but it opened');
}

export function describeStoreContract(
  name: string,
  open: () => Promise<Store>,
  cleanup?: () => Promise<void>,
): void {
  describe(`Store contract: ${name}`, () => {
    let store: Store;

    beforeEach(async () => {
      store = await open();
    });

    afterEach(async () => {
      await store.close();
      await cleanup?.();
    });

    /**
     * `recordAttempts` with each outcome in its delivery's current series (as the engine's claim
     * would have it), unless it names one; a delivery not stored gets series 0.
     */
    async function recordOutcomes(outcomes: readonly Outcome[]): Promise<void> {
      const records: AttemptRecord[] = [];
      for (const o of outcomes) {
        const current = (await store.getEvent(o.eventId))?.deliveries.find(
          (d) => d.endpointKey === o.endpointKey,
        );
        records.push({ ...o, seriesStartedAt: o.seriesStartedAt ?? current?.seriesStartedAt ?? 0 });
      }
      await store.recordAttempts(records);
    }

    /** Adds ids and moves each through `states` (from UNKNOWN), one commit per step, `at` apart. */
    async function watchThrough(
      ids: readonly string[],
      states: readonly ExportState[],
      endpoints: readonly EndpointRef[] = [A],
      start = T0,
    ): Promise<NewEvent[]> {
      await store.addExports([{ ids, metadata: null }], start);
      const events: NewEvent[] = [];
      let from: ExportState = 'UNKNOWN';
      for (const [i, to] of states.entries()) {
        const at = start + (i + 1) * SECOND;
        const changes = ids.map((id) => move(id, from, to, at));
        events.push(...(await store.commitChanges(changes, build, endpoints, at)));
        from = to;
      }
      return events;
    }

    describe('addExports', () => {
      it('accepts new ids once, even when a request repeats one, and reports known ids', async () => {
        const [first] = await store.addExports([{ ids: ['a', 'b', 'a'], metadata: { run: 1 } }], T0);
        expect(first).toEqual({ accepted: ['a', 'b'], alreadyWatched: [] });

        const [second] = await store.addExports([{ ids: ['b', 'c'], metadata: { run: 2 } }], T0 + SECOND);
        expect(second).toEqual({ accepted: ['c'], alreadyWatched: ['b'] });

        const b = await store.getExport('b');
        expect(b?.metadata).toEqual({ run: 1 });
        expect(b?.firstSeenAt).toBe(T0);
        expect((await store.getExport('c'))?.metadata).toEqual({ run: 2 });
      });

      it('answers several requests in one call, in order, each with its own metadata', async () => {
        const results = await store.addExports(
          [
            { ids: ['a', 'b'], metadata: { from: 'first' } },
            { ids: ['b', 'c'], metadata: { from: 'second' } },
            { ids: [], metadata: null },
          ],
          T0,
        );
        expect(results).toEqual([
          { accepted: ['a', 'b'], alreadyWatched: [] },
          { accepted: ['c'], alreadyWatched: ['b'] },
          { accepted: [], alreadyWatched: [] },
        ]);
        expect((await store.getExport('b'))?.metadata).toEqual({ from: 'first' });
        expect((await store.getExport('c'))?.metadata).toEqual({ from: 'second' });
      });

      it('keeps a finished export as known: it is not watched again', async () => {
        await watchThrough(['a'], ['COMPLETED']);
        const [result] = await store.addExports([{ ids: ['a'], metadata: null }], T0 + HOUR);
        expect(result).toEqual({ accepted: [], alreadyWatched: ['a'] });
        expect((await store.getExport('a'))?.state).toBe('COMPLETED');
      });
    });

    describe('getExport', () => {
      it('returns a new export as registered, and undefined for an unknown id', async () => {
        await store.addExports([{ ids: ['a'], metadata: { project: 'p', tags: ['x', 1, null] } }], T0);
        expect(await store.getExport('a')).toEqual({
          id: 'a',
          state: 'UNKNOWN',
          previousState: null,
          metadata: { project: 'p', tags: ['x', 1, null] },
          firstSeenAt: T0,
          stateChangedAt: T0,
          misses: 0,
          history: [{ state: 'UNKNOWN', at: T0 }],
          export: null,
          error: null,
          lastMiss: null,
        });
        expect(await store.getExport('b')).toBeUndefined();
      });

      it('round-trips every field through state changes, misses and a failure', async () => {
        await store.addExports([{ ids: ['a'], metadata: null }], T0);
        const running = platform('a', 'RUNNING', { progress: 0.5, nested: { deep: [1, 2] } });
        await store.commitChanges(
          [move('a', 'UNKNOWN', 'RUNNING', T0 + 1, { export: running })],
          build,
          [],
          T0 + 1,
        );
        await store.commitChanges(
          [move('a', 'RUNNING', 'RUNNING', T0 + 2, { misses: 1, lastMiss: NOT_FOUND })],
          build,
          [],
          T0 + 2,
        );
        const error: PlatformErrorBody = { status: 500, code: 5000, message: 'disk full', more_info: 'x' };
        const failed = platform('a', 'FAILED', { error });
        await store.commitChanges(
          [move('a', 'RUNNING', 'FAILED', T0 + 3, { export: failed, error })],
          build,
          [],
          T0 + 3,
        );
        expect(await store.getExport('a')).toEqual({
          id: 'a',
          state: 'FAILED',
          previousState: 'RUNNING',
          metadata: null,
          firstSeenAt: T0,
          stateChangedAt: T0 + 3,
          misses: 0,
          history: [
            { state: 'UNKNOWN', at: T0 },
            { state: 'RUNNING', at: T0 + 1 },
            { state: 'FAILED', at: T0 + 3 },
          ],
          export: failed,
          error,
          lastMiss: null,
        });
      });

      it('keeps the why of a LOST export: its error and last miss', async () => {
        await store.addExports([{ ids: ['a'], metadata: null }], T0);
        await store.commitChanges(
          [move('a', 'UNKNOWN', 'LOST', T0 + 1, { misses: 3, lastMiss: NOT_FOUND, error: NOT_FOUND })],
          build,
          [],
          T0 + 1,
        );
        const a = await store.getExport('a');
        expect(a).toMatchObject({
          state: 'LOST',
          misses: 3,
          lastMiss: NOT_FOUND,
          error: NOT_FOUND,
          export: null,
        });
      });
    });

    describe('pageExports and countExports', () => {
      beforeEach(async () => {
        await store.addExports([{ ids: ['e3', 'e1', 'e5', 'e2', 'e4'], metadata: null }], T0);
        await store.commitChanges(
          [move('e2', 'UNKNOWN', 'RUNNING', T0 + 1), move('e4', 'UNKNOWN', 'RUNNING', T0 + 1)],
          build,
          [],
          T0 + 1,
        );
        await store.commitChanges([move('e5', 'UNKNOWN', 'COMPLETED', T0 + 2)], build, [], T0 + 2);
      });

      it('pages by ascending id with a keyset, saying when there is more', async () => {
        const first = await store.pageExports({ limit: 2 });
        expect(first.items.map((e) => e.id)).toEqual(['e1', 'e2']);
        expect(first.more).toBe(true);
        expect(first.items[1]).toMatchObject({ id: 'e2', state: 'RUNNING', previousState: 'UNKNOWN' });

        const second = await store.pageExports({ limit: 2, after: 'e2' });
        expect(second.items.map((e) => e.id)).toEqual(['e3', 'e4']);
        expect(second.more).toBe(true);

        const last = await store.pageExports({ limit: 2, after: 'e4' });
        expect(last.items.map((e) => e.id)).toEqual(['e5']);
        expect(last.more).toBe(false);

        const exact = await store.pageExports({ limit: 5 });
        expect(exact.items).toHaveLength(5);
        expect(exact.more).toBe(false);
      });

      it('filters by state, with the same keyset', async () => {
        const first = await store.pageExports({ state: 'RUNNING', limit: 1 });
        expect(first.items.map((e) => e.id)).toEqual(['e2']);
        expect(first.more).toBe(true);
        const second = await store.pageExports({ state: 'RUNNING', limit: 1, after: 'e2' });
        expect(second.items.map((e) => e.id)).toEqual(['e4']);
        expect(second.more).toBe(false);
        expect(await store.pageExports({ state: 'FAILED', limit: 10 })).toEqual({ items: [], more: false });
        const unknown = await store.pageExports({ state: 'UNKNOWN', limit: 10, after: 'e1' });
        expect(unknown.items.map((e) => e.id)).toEqual(['e3']);
      });

      it('counts exports in every state, zero included', async () => {
        expect(await store.countExports()).toEqual({
          UNKNOWN: 2,
          PENDING: 0,
          RUNNING: 2,
          COMPLETED: 1,
          FAILED: 0,
          LOST: 0,
        });
      });
    });

    describe('loadActive', () => {
      it('returns every non-terminal export with its misses, and no finished one', async () => {
        await store.addExports([{ ids: ['u', 'p', 'r', 'c', 'f', 'l'], metadata: null }], T0);
        const at = T0 + 1;
        await store.commitChanges(
          [
            move('p', 'UNKNOWN', 'PENDING', at),
            move('r', 'UNKNOWN', 'RUNNING', at),
            move('c', 'UNKNOWN', 'COMPLETED', at),
            move('f', 'UNKNOWN', 'FAILED', at),
            move('l', 'UNKNOWN', 'LOST', at, { misses: 3, lastMiss: NOT_FOUND, error: NOT_FOUND }),
            move('u', 'UNKNOWN', 'UNKNOWN', at, { misses: 2, lastMiss: NOT_FOUND }),
          ],
          build,
          [],
          at,
        );
        expect(byId(await store.loadActive())).toEqual([
          { id: 'p', state: 'PENDING', misses: 0 },
          { id: 'r', state: 'RUNNING', misses: 0 },
          { id: 'u', state: 'UNKNOWN', misses: 2 },
        ]);
      });

      it('is empty for an empty store', async () => {
        expect(await store.loadActive()).toEqual([]);
      });
    });

    describe('loadUnknown', () => {
      it('returns the jobs of both kinds still UNKNOWN, misses included, and nothing else', async () => {
        await store.addExports(
          [
            { ids: ['u', 'm', 'p', 'c'], metadata: null },
            { ids: ['i', 'ir'], metadata: null, kind: 'import' },
          ],
          T0,
        );
        const at = T0 + 1;
        await store.commitChanges(
          [
            move('p', 'UNKNOWN', 'PENDING', at),
            move('c', 'UNKNOWN', 'COMPLETED', at),
            move('ir', 'UNKNOWN', 'RUNNING', at),
            move('m', 'UNKNOWN', 'UNKNOWN', at, { misses: 1, lastMiss: NOT_FOUND }),
          ],
          build,
          [],
          at,
        );
        expect(byId(await store.loadUnknown())).toEqual([
          { id: 'i', kind: 'import', state: 'UNKNOWN', misses: 0 },
          { id: 'm', state: 'UNKNOWN', misses: 1 },
          { id: 'u', state: 'UNKNOWN', misses: 0 },
        ]);
      });

      it('is empty for an empty store', async () => {
        expect(await store.loadUnknown()).toEqual([]);
      });
    });

    describe('commitChanges', () => {
      it('writes the change, its event and one pending delivery per endpoint, due now', async () => {
        await store.addExports([{ ids: ['a'], metadata: { project: 'p' } }], T0);
        const at = T0 + 5 * SECOND;
        const now = at + 7;
        const written = await store.commitChanges(
          [move('a', 'UNKNOWN', 'COMPLETED', at, { export: platform('a', 'COMPLETED') })],
          build,
          [A, B],
          now,
        );
        const id = eventId('a', 'COMPLETED');
        expect(written).toEqual([
          {
            id,
            type: 'export.completed',
            exportId: 'a',
            body: JSON.stringify({
              type: 'export.completed',
              export_id: 'a',
              at,
              metadata: { project: 'p' },
            }),
          },
        ]);
        const event = await store.getEvent(id);
        expect(event).toMatchObject({ id, type: 'export.completed', exportId: 'a', createdAt: now });
        expect(event?.body).toBe(written[0]?.body);
        const deliveries = [...(event?.deliveries ?? [])].sort((x, y) =>
          x.endpointKey < y.endpointKey ? -1 : 1,
        );
        const expected = [freshDelivery(id, A, now), freshDelivery(id, B, now)].sort((x, y) =>
          x.endpointKey < y.endpointKey ? -1 : 1,
        );
        expect(deliveries).toEqual(expected);
        expect(await store.getExport('a')).toMatchObject({
          state: 'COMPLETED',
          previousState: 'UNKNOWN',
          stateChangedAt: at,
          export: platform('a', 'COMPLETED'),
        });
      });

      it("asks the builder about each change of state, with the stored metadata and kind, and the platform object's text", async () => {
        await store.addExports([{ ids: ['a'], metadata: { owner: 'x' } }], T0);
        await store.addExports([{ ids: ['b'], metadata: null }], T0);
        const spy = vi.fn(build);
        const object = platform('a', 'RUNNING', { note: 'ü "q"' });
        const changes = [
          move('a', 'UNKNOWN', 'RUNNING', T0 + 1, { export: object }),
          move('b', 'UNKNOWN', 'PENDING', T0 + 1),
        ];
        await store.commitChanges(changes, spy, [A], T0 + 1);
        expect(spy.mock.calls).toEqual([
          [changes[0], { owner: 'x' }, 'export', JSON.stringify(object)],
          [changes[1], null, 'export', null],
        ]);
        expect(await store.getEvent(eventId('b', 'PENDING'))).toBeUndefined();
        expect((await store.getExport('b'))?.state).toBe('PENDING');
      });

      it('writes an event only once: the same change again, in one call or the next, adds nothing', async () => {
        await store.addExports([{ ids: ['a'], metadata: null }], T0);
        const change = move('a', 'UNKNOWN', 'COMPLETED', T0 + 1);
        const first = await store.commitChanges([change, change], build, [A, B], T0 + 1);
        expect(first.map((e) => e.id)).toEqual([eventId('a', 'COMPLETED')]);
        const again = await store.commitChanges([change], build, [A, B, C], T0 + 2);
        expect(again).toEqual([]);
        const event = await store.getEvent(eventId('a', 'COMPLETED'));
        expect(event?.createdAt).toBe(T0 + 1);
        expect(event?.deliveries.map((d) => d.endpointKey).sort()).toEqual([A.key, B.key].sort());
        expect((await store.deliveryCounts()).pending).toBe(2);
      });

      it('applies a change only while the job is in the state it starts from: a late writer moves nothing back', async () => {
        await store.addExports([{ ids: ['a', 'b'], metadata: null }], T0);
        await store.commitChanges(
          [move('a', 'UNKNOWN', 'RUNNING', T0 + 1), move('a', 'RUNNING', 'FAILED', T0 + 2)],
          build,
          [A],
          T0 + 2,
        );
        // A former leader's view: 'a' RUNNING (it is FAILED), 'b' RUNNING (it is UNKNOWN).
        const late = await store.commitChanges(
          [
            move('a', 'RUNNING', 'COMPLETED', T0 + 3),
            move('a', 'RUNNING', 'RUNNING', T0 + 3, { misses: 1 }),
            move('b', 'RUNNING', 'COMPLETED', T0 + 3),
          ],
          build,
          [A],
          T0 + 3,
        );
        expect(late).toEqual([]);
        expect(await store.getExport('a')).toMatchObject({
          state: 'FAILED',
          previousState: 'RUNNING',
          misses: 0,
        });
        expect(await store.getExport('b')).toMatchObject({ state: 'UNKNOWN', misses: 0 });
        expect(await store.getEvent(eventId('a', 'COMPLETED'))).toBeUndefined();
        expect((await eventsOf(store, 'a')).map((e) => e.id).sort()).toEqual(
          [eventId('a', 'FAILED'), eventId('a', 'RUNNING')].sort(),
        );
      });

      it('writes nothing when the builder throws: the whole call is one transaction', async () => {
        await store.addExports([{ ids: ['a', 'b'], metadata: null }], T0);
        const failing: EventBuilder = (change, metadata) => {
          if (change.id === 'b') throw new Error('builder broke');
          return build(change, metadata);
        };
        await expect(
          store.commitChanges(
            [move('a', 'UNKNOWN', 'COMPLETED', T0 + 1), move('b', 'UNKNOWN', 'COMPLETED', T0 + 1)],
            failing,
            [A],
            T0 + 1,
          ),
        ).rejects.toThrow('builder broke');
        expect((await store.getExport('a'))?.state).toBe('UNKNOWN');
        expect(await store.getEvent(eventId('a', 'COMPLETED'))).toBeUndefined();
        expect(await store.deliveryCounts()).toMatchObject({ pending: 0 });
      });

      it('writes a miss count alone without touching the state, and makes no event of it', async () => {
        await watchThrough(['a'], ['RUNNING'], []);
        const before = await store.getExport('a');
        const spy = vi.fn(build);
        const written = await store.commitChanges(
          [move('a', 'RUNNING', 'RUNNING', T0 + HOUR, { misses: 2, lastMiss: NOT_FOUND })],
          spy,
          [A],
          T0 + HOUR,
        );
        expect(written).toEqual([]);
        expect(spy).not.toHaveBeenCalled();
        expect(await store.getExport('a')).toEqual({ ...before, misses: 2, lastMiss: NOT_FOUND });

        await store.commitChanges(
          [move('a', 'RUNNING', 'RUNNING', T0 + HOUR + 1)],
          build,
          [A],
          T0 + HOUR + 1,
        );
        expect(await store.getExport('a')).toEqual(before);
      });

      it('keeps the stored platform object when a change brings none', async () => {
        await store.addExports([{ ids: ['a'], metadata: null }], T0);
        await store.commitChanges(
          [move('a', 'UNKNOWN', 'RUNNING', T0 + 1, { export: platform('a', 'RUNNING') })],
          build,
          [],
          T0 + 1,
        );
        await store.commitChanges(
          [move('a', 'RUNNING', 'LOST', T0 + 2, { misses: 3, error: NOT_FOUND })],
          build,
          [],
          T0 + 2,
        );
        expect((await store.getExport('a'))?.export).toEqual(platform('a', 'RUNNING'));
      });

      it('skips changes of ids it does not hold, and writes the others', async () => {
        await store.addExports([{ ids: ['a'], metadata: null }], T0);
        const spy = vi.fn(build);
        const written = await store.commitChanges(
          [move('ghost', 'UNKNOWN', 'COMPLETED', T0 + 1), move('a', 'UNKNOWN', 'COMPLETED', T0 + 1)],
          spy,
          [A],
          T0 + 1,
        );
        expect(written.map((e) => e.exportId)).toEqual(['a']);
        expect(spy).toHaveBeenCalledTimes(1);
        expect(await store.getExport('ghost')).toBeUndefined();
        expect(await store.getEvent(eventId('ghost', 'COMPLETED'))).toBeUndefined();
      });

      it('stores an event with no delivery when no endpoint is configured', async () => {
        const [event] = await watchThrough(['a'], ['COMPLETED'], []);
        expect(event).toBeDefined();
        expect((await store.getEvent(event?.id ?? ''))?.deliveries).toEqual([]);
      });
    });

    describe('claimDue, releaseLeases and nextDueAt', () => {
      /** Three events for A, due at T0+1s, +2s, +3s (ids x, y, z), and one for B. */
      beforeEach(async () => {
        await store.addExports([{ ids: ['x', 'y', 'z', 'w'], metadata: null }], T0);
        for (const [i, id] of ['z', 'x', 'y'].entries()) {
          const at = T0 + (i + 1) * SECOND;
          await store.commitChanges([move(id, 'UNKNOWN', 'COMPLETED', at)], build, [A], at);
        }
        await store.commitChanges([move('w', 'UNKNOWN', 'COMPLETED', T0)], build, [B], T0);
      });

      it('hands out due deliveries of one endpoint, oldest due first, at most `limit`', async () => {
        const jobs = await store.claimDue(A.key, T0 + 10 * SECOND, 2, T0 + 70 * SECOND);
        expect(jobs).toEqual([
          {
            eventId: eventId('z', 'COMPLETED'),
            exportId: 'z',
            endpointKey: A.key,
            body: JSON.stringify({
              type: 'export.completed',
              export_id: 'z',
              at: T0 + SECOND,
              metadata: null,
            }),
            attempts: 0,
            seriesStartedAt: T0 + SECOND,
          },
          expect.objectContaining({ eventId: eventId('x', 'COMPLETED'), exportId: 'x' }),
        ]);
      });

      it('hands out only what is due at `now`', async () => {
        const jobs = await store.claimDue(A.key, T0 + 2 * SECOND, 10, T0 + HOUR);
        expect(jobs.map((j) => j.exportId)).toEqual(['z', 'x']);
        expect(await store.claimDue(C.key, T0 + HOUR, 10, T0 + 2 * HOUR)).toEqual([]);
      });

      it('does not hand out a claimed delivery again until its lease ends', async () => {
        const now = T0 + 10 * SECOND;
        const lease = now + 60 * SECOND;
        expect(await store.claimDue(A.key, now, 2, lease)).toHaveLength(2);
        const rest = await store.claimDue(A.key, now, 10, lease);
        expect(rest.map((j) => j.exportId)).toEqual(['y']);
        expect(await store.claimDue(A.key, lease - 1, 10, lease + HOUR)).toEqual([]);
        expect(await store.nextDueAt(A.key)).toBe(lease);

        const after = await store.claimDue(A.key, lease, 10, lease + HOUR);
        expect(after.map((j) => j.exportId).sort()).toEqual(['x', 'y', 'z']);
        // A claimed delivery reads as leased (its next_attempt_at is the lease's end); once its
        // outcome is written, it no longer does.
        const [first] = after;
        const leased = async () =>
          (await store.getEvent(first?.eventId ?? ''))?.deliveries.find((d) => d.endpointKey === A.key)
            ?.leased;
        expect(await leased()).toBe(true);
        await store.recordAttempts([
          { ...delivered(first?.eventId ?? '', A, lease + 1), seriesStartedAt: first?.seriesStartedAt ?? 0 },
        ]);
        expect(await leased()).toBeUndefined();
      });

      it('makes every leased delivery due at once on releaseLeases, and only those', async () => {
        const now = T0 + 10 * SECOND;
        const [z] = await store.claimDue(A.key, now, 1, now + HOUR);
        const [x] = await store.claimDue(A.key, now, 1, now + HOUR);
        await recordOutcomes([
          {
            eventId: x?.eventId ?? '',
            endpointKey: A.key,
            status: 'pending',
            attempts: 1,
            nextAttemptAt: now + 2 * HOUR,
            lastStatus: 503,
            lastError: 'HTTP 503',
            finishedAt: null,
          },
        ]);
        const restart = now + 5 * SECOND;
        await store.releaseLeases(restart);
        // y was never claimed (due since T0+3s), z's lease is released; x waits for its retry.
        const jobs = await store.claimDue(A.key, restart, 10, restart + HOUR);
        expect(jobs.map((j) => j.eventId)).toEqual([eventId('y', 'COMPLETED'), z?.eventId]);
        expect(await store.nextDueAt(A.key)).toBe(restart + HOUR);
        const retry = (await store.getEvent(x?.eventId ?? ''))?.deliveries[0];
        expect(retry).toMatchObject({ status: 'pending', attempts: 1, nextAttemptAt: now + 2 * HOUR });
      });

      it('says when the next delivery of an endpoint is due, or null', async () => {
        expect(await store.nextDueAt(A.key)).toBe(T0 + SECOND);
        expect(await store.nextDueAt(B.key)).toBe(T0);
        expect(await store.nextDueAt(C.key)).toBeNull();
        await recordOutcomes([delivered(eventId('w', 'COMPLETED'), B, T0 + 1)]);
        expect(await store.nextDueAt(B.key)).toBeNull();
      });
    });

    describe('recordAttempts', () => {
      const id = eventId('a', 'COMPLETED');
      beforeEach(async () => {
        await watchThrough(['a'], ['COMPLETED'], [A, B]);
      });

      it('writes a retry: pending, not due before its next attempt', async () => {
        const now = T0 + 10 * SECOND;
        await store.claimDue(A.key, now, 10, now + HOUR);
        await recordOutcomes([
          {
            eventId: id,
            endpointKey: A.key,
            status: 'pending',
            attempts: 3,
            nextAttemptAt: now + 5 * SECOND,
            lastStatus: 0,
            lastError: 'connection refused',
            finishedAt: null,
          },
        ]);
        const delivery = (await store.getEvent(id))?.deliveries.find((d) => d.endpointKey === A.key);
        expect(delivery).toEqual({
          ...freshDelivery(id, A, T0 + SECOND),
          attempts: 3,
          nextAttemptAt: now + 5 * SECOND,
          lastStatus: 0,
          lastError: 'connection refused',
        });
        expect(await store.claimDue(A.key, now + 5 * SECOND - 1, 10, now + HOUR)).toEqual([]);
        const [job] = await store.claimDue(A.key, now + 5 * SECOND, 10, now + HOUR);
        expect(job).toMatchObject({ eventId: id, attempts: 3, seriesStartedAt: T0 + SECOND });
      });

      it.each([
        ['delivered', 204],
        ['failed', 500],
        ['gone', 410],
      ] as const)('writes a final outcome (%s): never due again', async (status, lastStatus) => {
        const now = T0 + 10 * SECOND;
        await recordOutcomes([final(id, A, status, now, lastStatus)]);
        const delivery = (await store.getEvent(id))?.deliveries.find((d) => d.endpointKey === A.key);
        expect(delivery).toEqual({
          ...freshDelivery(id, A, T0 + SECOND),
          status,
          attempts: 1,
          nextAttemptAt: null,
          lastStatus,
          lastError: status === 'delivered' ? null : `HTTP ${lastStatus}`,
          finishedAt: now,
        });
        expect(await store.claimDue(A.key, now + HOUR, 10, now + 2 * HOUR)).toEqual([]);
        expect(await store.claimDue(B.key, now + HOUR, 10, now + 2 * HOUR)).toHaveLength(1);
      });

      it('keeps the last status and error when a record counts no new attempt (a claim let go untried)', async () => {
        const now = T0 + 10 * SECOND;
        const retry = refusedThird(id, A, now);
        await recordOutcomes([retry]);
        await store.claimDue(A.key, now, 10, now + HOUR);
        // Let go at shutdown before it was tried: the same attempts, nothing known of an answer.
        await recordOutcomes([{ ...retry, nextAttemptAt: now + SECOND, lastStatus: null, lastError: null }]);
        const delivery = (await store.getEvent(id))?.deliveries.find((d) => d.endpointKey === A.key);
        expect(delivery).toMatchObject({
          status: 'pending',
          attempts: 3,
          nextAttemptAt: now + SECOND,
          lastStatus: 503,
          lastError: 'HTTP 503',
        });
        // A record that does count an attempt writes its own.
        await recordOutcomes([{ ...retry, attempts: 4, lastStatus: 0, lastError: 'connection refused' }]);
        expect((await store.getEvent(id))?.deliveries.find((d) => d.endpointKey === A.key)).toMatchObject({
          attempts: 4,
          lastStatus: 0,
          lastError: 'connection refused',
        });
      });

      it('skips records of deliveries that do not exist, and writes the rest', async () => {
        await recordOutcomes([
          delivered('evt_nothing', A, T0 + 2),
          delivered(id, C, T0 + 2),
          delivered(id, B, T0 + 2),
        ]);
        const event = await store.getEvent(id);
        expect(event?.deliveries.map((d) => [d.endpointKey, d.status]).sort()).toEqual(
          [
            [A.key, 'pending'],
            [B.key, 'delivered'],
          ].sort(),
        );
        expect(await store.getEvent('evt_nothing')).toBeUndefined();
      });

      it('drops an outcome of an earlier series: a redelivery started another since the claim', async () => {
        const claimedAt = T0 + 10 * SECOND;
        const [job] = await store.claimDue(A.key, claimedAt, 10, claimedAt + HOUR);
        expect(job?.seriesStartedAt).toBe(T0 + SECOND);
        const redeliveredAt = T0 + 20 * SECOND;
        expect(await store.redeliver(id, [A], redeliveredAt)).toBe(1);
        // The claim's attempt answers after the redelivery: a failure that ends its (old) series.
        await store.recordAttempts([
          { ...final(id, A, 'failed', redeliveredAt + 1, 500), seriesStartedAt: job?.seriesStartedAt ?? 0 },
        ]);
        const stored = (await store.getEvent(id))?.deliveries.find((d) => d.endpointKey === A.key);
        expect(stored).toMatchObject({
          status: 'pending',
          attempts: 0,
          nextAttemptAt: redeliveredAt,
          seriesStartedAt: redeliveredAt,
          finishedAt: null,
        });
        expect(
          (await store.claimDue(A.key, redeliveredAt, 10, redeliveredAt + HOUR)).map((j) => j.eventId),
        ).toEqual([id]);
        // The new series' own outcome is written.
        await store.recordAttempts([
          { ...delivered(id, A, redeliveredAt + 2), seriesStartedAt: redeliveredAt },
        ]);
        expect((await store.getEvent(id))?.deliveries.find((d) => d.endpointKey === A.key)).toMatchObject({
          status: 'delivered',
          finishedAt: redeliveredAt + 2,
        });
      });

      it('accepts an empty batch', async () => {
        await recordOutcomes([]);
        expect((await store.deliveryCounts()).pending).toBe(2);
      });
    });

    describe('deliveryCounts: orphaned', () => {
      it('counts pending deliveries to endpoints not in the given keys', async () => {
        await watchThrough(['a', 'b'], ['COMPLETED'], [A, B]);
        await recordOutcomes([delivered(eventId('a', 'COMPLETED'), B, T0 + 2)]);
        expect((await store.deliveryCounts([A.key, B.key])).orphaned).toBe(0);
        expect((await store.deliveryCounts([A.key])).orphaned).toBe(1);
        expect((await store.deliveryCounts([B.key])).orphaned).toBe(2);
        expect((await store.deliveryCounts([])).orphaned).toBe(3);
        expect((await store.deliveryCounts([C.key])).orphaned).toBe(3);
      });

      it('counts right whatever the keys are and however they are given', async () => {
        // Keys whose order as UTF-16 (JavaScript's sort) and as UTF-8 bytes (SQLite's) differ:
        // U+FFFD comes after U+1F600's surrogate pair in the one, before its bytes in the other.
        const P = { key: '\ufffd-p', label: 'https://p.example/' };
        const Q = { key: '\u{1F600}-q', label: 'https://q.example/' };
        const R = { key: 'r', label: 'https://r.example/' };
        const E = { key: '', label: 'https://e.example/' };
        await watchThrough(['a', 'b'], ['COMPLETED'], [P, Q, R, E]);
        expect((await store.deliveryCounts([P.key, Q.key])).orphaned).toBe(4);
        expect((await store.deliveryCounts([Q.key, P.key, Q.key])).orphaned).toBe(4);
        expect((await store.deliveryCounts([Q.key, E.key])).orphaned).toBe(4);
        expect((await store.deliveryCounts([R.key])).orphaned).toBe(6);
        expect((await store.deliveryCounts([P.key, Q.key, R.key, E.key, A.key])).orphaned).toBe(0);
        expect(await store.deliveryCounts([P.key, Q.key])).toMatchObject({ pending: 8, orphaned: 4 });
        expect(await store.deliveryCounts([Q.key, P.key, E.key, Q.key])).toMatchObject({ orphaned: 2 });
      });
    });

    describe('giveUpOrphaned', () => {
      const byLabel = (given: Array<{ endpointLabel: string; count: number }>) =>
        [...given].sort((x, y) => x.endpointLabel.localeCompare(y.endpointLabel));
      const statusTo = async (id: string, to: EndpointRef) =>
        (await store.getEvent(eventId(id, 'COMPLETED')))?.deliveries.find((d) => d.endpointKey === to.key);

      it('gives up the pending deliveries to removed endpoints whose series started by then, and only those', async () => {
        // a's deliveries start at T0 + 1 s, b's an hour later; B is no longer configured.
        await watchThrough(['a'], ['COMPLETED'], [A, B]);
        await watchThrough(['b'], ['COMPLETED'], [A, B], T0 + HOUR);
        expect(await store.deliveryCounts([A.key])).toMatchObject({ pending: 4, failed: 0, orphaned: 2 });
        const now = T0 + 2 * HOUR;
        expect(await store.giveUpOrphaned([A.key], T0 + 2 * SECOND, now)).toEqual([
          { endpointLabel: B.label, count: 1 },
        ]);
        expect(await statusTo('a', B)).toMatchObject({
          status: 'failed',
          attempts: 0,
          nextAttemptAt: null,
          finishedAt: now,
          lastError: ORPHANED_GIVE_UP_ERROR,
        });
        // To a configured endpoint, however old: pending; to the removed one, not old enough: pending.
        expect((await statusTo('a', A))?.status).toBe('pending');
        expect((await statusTo('b', B))?.status).toBe('pending');
        expect(await store.deliveryCounts([A.key])).toMatchObject({ pending: 3, failed: 1, orphaned: 1 });
        expect((await store.deliveryCounts([A.key])).orphaned).toBe(1);
        // Done once: nothing more to give up by then.
        expect(await store.giveUpOrphaned([A.key], T0 + 2 * SECOND, now)).toEqual([]);
        // B configured again: a redelivery of what failed since T0 sends it once more.
        expect(await store.redeliverSince(T0, 'failed', now + 1, [A.key, B.key])).toBe(1);
        expect(await statusTo('a', B)).toMatchObject({ status: 'pending', attempts: 0, finishedAt: null });
        expect(await store.deliveryCounts([A.key, B.key])).toMatchObject({
          pending: 4,
          failed: 0,
          orphaned: 0,
        });
      });

      it('gives up nothing while every endpoint with pending deliveries is configured', async () => {
        await watchThrough(['a', 'b'], ['COMPLETED'], [A, B]);
        expect(await store.giveUpOrphaned([A.key, B.key, C.key], T0 + HOUR, T0 + 2 * HOUR)).toEqual([]);
        expect(await store.deliveryCounts()).toMatchObject({ pending: 4, failed: 0 });
        // With no endpoint configured at all, every old enough pending delivery goes.
        expect(byLabel(await store.giveUpOrphaned([], T0 + HOUR, T0 + 2 * HOUR))).toEqual(
          byLabel([
            { endpointLabel: A.label, count: 2 },
            { endpointLabel: B.label, count: 2 },
          ]),
        );
        expect(await store.deliveryCounts()).toMatchObject({ pending: 0, failed: 4 });
      });
    });

    describe('events: getEvent, listEvents, getExportWithEvents', () => {
      /**
       * a: RUNNING at +1s, COMPLETED at +2s; b: COMPLETED at +2s; c: FAILED at +3s.
       * a's completion went to A; c's failed at A; everything else is pending.
       */
      beforeEach(async () => {
        await store.addExports([{ ids: ['a', 'b', 'c'], metadata: null }], T0);
        await store.commitChanges([move('a', 'UNKNOWN', 'RUNNING', T0 + SECOND)], build, [A, B], T0 + SECOND);
        await store.commitChanges(
          [
            move('a', 'RUNNING', 'COMPLETED', T0 + 2 * SECOND),
            move('b', 'UNKNOWN', 'COMPLETED', T0 + 2 * SECOND),
          ],
          build,
          [A, B],
          T0 + 2 * SECOND,
        );
        await store.commitChanges(
          [move('c', 'UNKNOWN', 'FAILED', T0 + 3 * SECOND)],
          build,
          [A],
          T0 + 3 * SECOND,
        );
        await recordOutcomes([
          delivered(eventId('a', 'COMPLETED'), A, T0 + 4 * SECOND),
          final(eventId('c', 'FAILED'), A, 'failed', T0 + 4 * SECOND, 500),
        ]);
      });

      const ids = (page: { items: Array<{ id: string }> }) => page.items.map((e) => e.id);
      const NEWEST_FIRST = [
        eventId('c', 'FAILED'),
        eventId('b', 'COMPLETED'),
        eventId('a', 'COMPLETED'),
        eventId('a', 'RUNNING'),
      ];

      it('gets one event with its deliveries, or undefined', async () => {
        const event = await store.getEvent(eventId('c', 'FAILED'));
        expect(event).toMatchObject({ type: 'export.failed', exportId: 'c', createdAt: T0 + 3 * SECOND });
        expect(event?.deliveries).toEqual([
          {
            ...freshDelivery(eventId('c', 'FAILED'), A, T0 + 3 * SECOND),
            status: 'failed',
            attempts: 1,
            nextAttemptAt: null,
            lastStatus: 500,
            lastError: 'HTTP 500',
            finishedAt: T0 + 4 * SECOND,
          },
        ]);
        expect(await store.getEvent('evt_none')).toBeUndefined();
      });

      it('lists newest first by (createdAt, id), with deliveries, and pages with a keyset', async () => {
        const all = await store.listEvents({ limit: 10 });
        expect(ids(all)).toEqual(NEWEST_FIRST);
        expect(all.more).toBe(false);
        expect(all.items[2]?.deliveries.map((d) => [d.endpointKey, d.status]).sort()).toEqual(
          [
            [A.key, 'delivered'],
            [B.key, 'pending'],
          ].sort(),
        );

        const first = await store.listEvents({ limit: 2 });
        expect(ids(first)).toEqual(NEWEST_FIRST.slice(0, 2));
        expect(first.more).toBe(true);
        const last = first.items[1];
        const second = await store.listEvents({
          limit: 2,
          after: { createdAt: last?.createdAt ?? 0, id: last?.id ?? '' },
        });
        expect(ids(second)).toEqual(NEWEST_FIRST.slice(2));
        expect(second.more).toBe(false);
      });

      it('filters by export, by delivery status and by creation time', async () => {
        expect(ids(await store.listEvents({ limit: 10, exportId: 'a' }))).toEqual([
          eventId('a', 'COMPLETED'),
          eventId('a', 'RUNNING'),
        ]);
        expect(ids(await store.listEvents({ limit: 10, status: 'delivered' }))).toEqual([
          eventId('a', 'COMPLETED'),
        ]);
        expect(ids(await store.listEvents({ limit: 10, status: 'failed' }))).toEqual([
          eventId('c', 'FAILED'),
        ]);
        expect(ids(await store.listEvents({ limit: 10, status: 'pending' }))).toEqual(NEWEST_FIRST.slice(1));
        expect(await store.listEvents({ limit: 10, status: 'gone' })).toEqual({ items: [], more: false });
        expect(ids(await store.listEvents({ limit: 10, since: T0 + 2 * SECOND }))).toEqual(
          NEWEST_FIRST.slice(0, 3),
        );
        const combined = await store.listEvents({
          limit: 1,
          status: 'pending',
          since: T0 + 2 * SECOND,
          after: { createdAt: T0 + 2 * SECOND, id: eventId('b', 'COMPLETED') },
        });
        expect(ids(combined)).toEqual([eventId('a', 'COMPLETED')]);
        expect(combined.more).toBe(false);
      });

      it("lists one job's events in the order of its transitions when one call stores several", async () => {
        // Two checks of `d` answered in one commit (a commit that waited behind a slow one):
        // RUNNING, then FAILED. Their events must not read as FAILED first.
        await store.addExports([{ ids: ['d'], metadata: null }], T0);
        const at = T0 + 10 * SECOND;
        await store.commitChanges(
          [move('d', 'UNKNOWN', 'RUNNING', at - 5), move('d', 'RUNNING', 'FAILED', at - 1)],
          build,
          [A],
          at,
        );
        expect((await eventsOf(store, 'd')).map((e) => e.id)).toEqual([
          eventId('d', 'RUNNING'),
          eventId('d', 'FAILED'),
        ]);
        // Newest first, one by one with the cursor: the outcome, then what came before it.
        const walked: string[] = [];
        let after: { createdAt: number; id: string } | undefined;
        for (;;) {
          const page = await store.listEvents({ exportId: 'd', limit: 1, after });
          walked.push(...ids(page));
          const last = page.items.at(-1);
          if (!page.more || !last) break;
          after = { createdAt: last.createdAt, id: last.id };
        }
        expect(walked).toEqual([eventId('d', 'FAILED'), eventId('d', 'RUNNING')]);
        expect(ids(await store.listEvents({ limit: 2 }))).toEqual([
          eventId('d', 'FAILED'),
          eventId('d', 'RUNNING'),
        ]);
        // Created when stored, at the earliest: `since` the commit takes both in.
        expect(ids(await store.listEvents({ since: at, limit: 10 }))).toHaveLength(2);
      });

      it("lists one export's events oldest first, or none", async () => {
        const events = (await store.getExportWithEvents('a'))?.events ?? [];
        expect(events.map((e) => [e.id, e.createdAt])).toEqual([
          [eventId('a', 'RUNNING'), T0 + SECOND],
          [eventId('a', 'COMPLETED'), T0 + 2 * SECOND],
        ]);
        expect(events[0]?.deliveries).toHaveLength(2);
        expect(await store.getExportWithEvents('a')).toEqual({ record: await store.getExport('a'), events });
        expect(await eventsOf(store, 'a')).toEqual(events);
        expect(await store.getExportWithEvents('nobody')).toBeUndefined();
        expect(await eventsOf(store, 'nobody')).toEqual([]);
      });

      it("lists a job's events only, not those of jobs whose ids begin with its id", async () => {
        // Their webhook-ids begin with `evt_a` too; `a-` and `a_b` sort on either side of `a_`.
        await watchThrough(['ab', 'a_b', 'a-', 'a_'], ['COMPLETED']);
        expect((await eventsOf(store, 'a')).map((e) => e.id)).toEqual([
          eventId('a', 'RUNNING'),
          eventId('a', 'COMPLETED'),
        ]);
        expect((await store.getExportWithEvents('a'))?.events.map((e) => e.exportId)).toEqual(['a', 'a']);
        expect((await eventsOf(store, 'a_')).map((e) => e.id)).toEqual([eventId('a_', 'COMPLETED')]);
        expect((await eventsOf(store, 'a_b')).map((e) => e.exportId)).toEqual(['a_b']);
        await store.removeExport('ab');
        expect((await eventsOf(store, 'a')).map((e) => e.exportId)).toEqual(['a', 'a']);
        expect(await store.getExport('a')).toBeDefined();
      });
    });

    describe('redeliver and redeliverSince', () => {
      const id = eventId('a', 'COMPLETED');
      const now = T0 + HOUR;

      beforeEach(async () => {
        await watchThrough(['a'], ['COMPLETED'], [A, B]);
        await recordOutcomes([delivered(id, A, T0 + 2 * SECOND), final(id, B, 'gone', T0 + 2 * SECOND, 410)]);
      });

      const statusOf = async (ref: EndpointRef) =>
        (await store.getEvent(id))?.deliveries.find((d) => d.endpointKey === ref.key);

      it('starts a new series, due now, for every endpoint named', async () => {
        expect(await store.redeliver(id, [A, B], now)).toBe(2);
        for (const ref of [A, B]) {
          expect(await statusOf(ref)).toMatchObject({
            status: 'pending',
            attempts: 0,
            nextAttemptAt: now,
            seriesStartedAt: now,
            finishedAt: null,
          });
        }
        expect((await store.claimDue(A.key, now, 10, now + HOUR)).map((j) => j.eventId)).toEqual([id]);
        expect((await store.claimDue(B.key, now, 10, now + HOUR))[0]).toMatchObject({
          attempts: 0,
          seriesStartedAt: now,
        });
      });

      it('starts a newer series than the one it replaces, also in the same millisecond', async () => {
        // A series is known by its start: two with one start would take an old attempt's late
        // result for the new series'. The new one starts a millisecond after the old, at least.
        expect(await store.redeliver(id, [A], now)).toBe(1);
        const [first] = await store.claimDue(A.key, now, 10, now + HOUR);
        expect(first?.seriesStartedAt).toBe(now);
        expect(await store.redeliver(id, [A], now)).toBe(1);
        expect(await statusOf(A)).toMatchObject({ status: 'pending', attempts: 0, seriesStartedAt: now + 1 });
        // The first series' attempt answers late: dropped, the new series stays owed.
        await store.recordAttempts([{ ...delivered(id, A, now), seriesStartedAt: now }]);
        expect(await statusOf(A)).toMatchObject({ status: 'pending', finishedAt: null });
        const [second] = await store.claimDue(A.key, now, 10, now + HOUR);
        expect(second?.seriesStartedAt).toBe(now + 1);
        // The same for every delivery restarted by status, and after a clock step back.
        await store.recordAttempts([{ ...final(id, A, 'gone', now, 410), seriesStartedAt: now + 1 }]);
        expect(await store.redeliverSince(T0, 'gone', now - HOUR, [A.key, B.key])).toBe(2);
        expect(await statusOf(A)).toMatchObject({ status: 'pending', seriesStartedAt: now + 2 });
        expect(await statusOf(B)).toMatchObject({ status: 'pending', seriesStartedAt: T0 + SECOND + 1 });
      });

      it('leaves the deliveries to other endpoints as they are', async () => {
        expect(await store.redeliver(id, [B], now)).toBe(1);
        expect(await statusOf(A)).toMatchObject({ status: 'delivered', finishedAt: T0 + 2 * SECOND });
        expect(await statusOf(B)).toMatchObject({ status: 'pending', nextAttemptAt: now });
      });

      it('creates the delivery for an endpoint that never had one', async () => {
        expect(await store.redeliver(id, [C], now)).toBe(1);
        expect(await statusOf(C)).toEqual(freshDelivery(id, C, now));
        expect((await store.getEvent(id))?.deliveries).toHaveLength(3);
      });

      it('answers undefined for an unknown event, and creates nothing', async () => {
        expect(await store.redeliver('evt_unknown', [A], now)).toBeUndefined();
        expect(await store.getEvent('evt_unknown')).toBeUndefined();
        expect((await store.deliveryCounts()).pending).toBe(0);
      });

      it('starts a new series for every delivery in a status, of events created since a time', async () => {
        // b's event is created later than a's, and both its deliveries fail.
        await store.addExports([{ ids: ['b'], metadata: null }], T0);
        const bAt = T0 + 10 * SECOND;
        await store.commitChanges([move('b', 'UNKNOWN', 'FAILED', bAt)], build, [A, B], bAt);
        const bId = eventId('b', 'FAILED');
        await recordOutcomes([final(bId, A, 'gone', bAt, 410), final(bId, B, 'gone', bAt, 410)]);

        expect(await store.redeliverSince(bAt, 'gone', now, [A.key, B.key])).toBe(2);
        expect((await store.getEvent(bId))?.deliveries.map((d) => [d.status, d.nextAttemptAt])).toEqual([
          ['pending', now],
          ['pending', now],
        ]);
        expect(await statusOf(B)).toMatchObject({ status: 'gone' });

        expect(await store.redeliverSince(T0, 'gone', now, [A.key, B.key])).toBe(1);
        expect(await statusOf(B)).toMatchObject({ status: 'pending', attempts: 0, seriesStartedAt: now });
        expect(await statusOf(A)).toMatchObject({ status: 'delivered' });
        expect(await store.redeliverSince(T0, 'failed', now, [A.key, B.key])).toBe(0);
      });

      it('starts new series only to the endpoints given: none to one no longer configured', async () => {
        // a: delivered at A, gone at B. Only A is configured now.
        expect(await store.redeliverSince(T0, 'gone', now, [A.key])).toBe(0);
        expect(await statusOf(B)).toMatchObject({ status: 'gone' });
        expect(await store.redeliverSince(T0, 'gone', now, [A.key, B.key])).toBe(1);
        expect(await statusOf(B)).toMatchObject({ status: 'pending', nextAttemptAt: now });
        expect(await store.redeliverSince(T0, 'delivered', now, [])).toBe(0);
        expect(await statusOf(A)).toMatchObject({ status: 'delivered' });
      });
    });

    describe('deliveryCounts', () => {
      it('is all zero, with no oldest pending, for an empty store', async () => {
        expect(await store.deliveryCounts()).toEqual({
          pending: 0,
          delivered: 0,
          failed: 0,
          gone: 0,
          orphaned: 0,
          oldestPendingAt: null,
        });
      });

      it("counts deliveries by status and gives the oldest pending delivery's event time", async () => {
        await store.addExports([{ ids: ['a', 'b', 'c'], metadata: null }], T0);
        for (const [i, id] of ['a', 'b', 'c'].entries()) {
          const at = T0 + (i + 1) * SECOND;
          await store.commitChanges([move(id, 'UNKNOWN', 'COMPLETED', at)], build, [A, B], at);
        }
        await recordOutcomes([
          delivered(eventId('a', 'COMPLETED'), A, T0 + 5 * SECOND),
          final(eventId('a', 'COMPLETED'), B, 'failed', T0 + 5 * SECOND, 500),
          final(eventId('b', 'COMPLETED'), A, 'gone', T0 + 5 * SECOND, 410),
        ]);
        expect(await store.deliveryCounts()).toEqual({
          pending: 3,
          delivered: 1,
          failed: 1,
          gone: 1,
          orphaned: 0,
          oldestPendingAt: T0 + 2 * SECOND,
        });
      });

      it('counts the pending deliveries to endpoints not among the keys given apart, and leaves them out of the oldest pending time', async () => {
        const t = (n: number) => T0 + n * SECOND;
        await store.addExports([{ ids: ['a', 'b', 'c', 'd'], metadata: null }], T0);
        // a, b and c to A and B; A took a's. Then B is no longer configured, say.
        for (const [i, id] of ['a', 'b', 'c'].entries()) {
          await store.commitChanges([move(id, 'UNKNOWN', 'COMPLETED', t(i + 1))], build, [A, B], t(i + 1));
        }
        const [a, b, c] = ['a', 'b', 'c'].map((id) => eventId(id, 'COMPLETED')) as [string, string, string];
        await recordOutcomes([delivered(a, A, t(4))]);
        const stored = { pending: 5, delivered: 1, failed: 0, gone: 0 };
        expect(await store.deliveryCounts([A.key])).toEqual({
          ...stored,
          orphaned: 3,
          oldestPendingAt: t(2),
        });
        // A floor read for one set of endpoints hides nothing from a reading for another.
        expect(await store.deliveryCounts()).toEqual({ ...stored, orphaned: 0, oldestPendingAt: t(1) });
        expect(await store.deliveryCounts([A.key])).toMatchObject({ orphaned: 3, oldestPendingAt: t(2) });
        expect(await store.deliveryCounts([B.key])).toEqual({
          ...stored,
          orphaned: 2,
          oldestPendingAt: t(1),
        });
        expect(await store.deliveryCounts([A.key, B.key])).toMatchObject({
          orphaned: 0,
          oldestPendingAt: t(1),
        });
        expect(await store.deliveryCounts([B.key, A.key, C.key, A.key])).toMatchObject({
          orphaned: 0,
          oldestPendingAt: t(1),
        });
        expect(await store.deliveryCounts([A.key, C.key])).toMatchObject({
          orphaned: 3,
          oldestPendingAt: t(2),
        });
        expect(await store.deliveryCounts([C.key])).toEqual({
          ...stored,
          orphaned: 5,
          oldestPendingAt: null,
        });
        expect(await store.deliveryCounts([])).toEqual({ ...stored, orphaned: 5, oldestPendingAt: null });
        // A sends its backlog: only orphaned deliveries are left pending.
        await recordOutcomes([delivered(b, A, t(5)), delivered(c, A, t(5))]);
        expect(await store.deliveryCounts([A.key])).toEqual({
          pending: 3,
          delivered: 3,
          failed: 0,
          gone: 0,
          orphaned: 3,
          oldestPendingAt: null,
        });
        expect(await store.deliveryCounts([A.key])).toMatchObject({ orphaned: 3, oldestPendingAt: null });
        expect(await store.deliveryCounts()).toMatchObject({ orphaned: 0, oldestPendingAt: t(1) });
        expect(await store.deliveryCounts([A.key])).toMatchObject({ oldestPendingAt: null });
        // A new event for A, then an older one pending to A again.
        await store.commitChanges([move('d', 'UNKNOWN', 'COMPLETED', t(10))], build, [A], t(10));
        expect(await store.deliveryCounts([A.key])).toMatchObject({
          pending: 4,
          orphaned: 3,
          oldestPendingAt: t(10),
        });
        expect(await store.redeliver(b, [A], t(11))).toBe(1);
        expect(await store.deliveryCounts([A.key])).toMatchObject({
          pending: 5,
          orphaned: 3,
          oldestPendingAt: t(2),
        });
        // B configured again: its deliveries count as pending, and its oldest event as the oldest.
        expect(await store.deliveryCounts([A.key, B.key])).toMatchObject({
          orphaned: 0,
          oldestPendingAt: t(1),
        });
        // Removing a job cancels its orphaned deliveries too.
        expect(await store.removeExport('a')).toEqual({ removed: true, cancelledDeliveries: 1 });
        expect(await store.deliveryCounts([A.key])).toMatchObject({
          pending: 4,
          orphaned: 2,
          oldestPendingAt: t(2),
        });
        expect(await store.deliveryCounts([B.key])).toMatchObject({ orphaned: 2, oldestPendingAt: t(2) });
      });

      it('agrees with the deliveries listed after every kind of write', async () => {
        /** The counts as the listing shows them, beside what `deliveryCounts` says. */
        const expectCountsAsListed = async (expected: Record<DeliveryStatus, number>) => {
          const listed = { pending: 0, delivered: 0, failed: 0, gone: 0 };
          for (const e of (await store.listEvents({ limit: 100 })).items) {
            for (const d of e.deliveries) listed[d.status]++;
          }
          expect(listed).toEqual(expected);
          expect(await store.deliveryCounts()).toMatchObject(expected);
        };
        const at = T0 + SECOND;
        await store.addExports([{ ids: ['a', 'b', 'c', 'd'], metadata: null }], T0);
        await store.commitChanges(
          ['a', 'b', 'c', 'd'].map((id) => move(id, 'UNKNOWN', 'COMPLETED', at)),
          build,
          [A, B],
          at,
        );
        await expectCountsAsListed({ pending: 8, delivered: 0, failed: 0, gone: 0 });
        const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((id) => eventId(id, 'COMPLETED')) as [
          string,
          string,
          string,
          string,
        ];
        // A claim leases rows without changing their status.
        expect(await store.claimDue(A.key, at, 10, at + HOUR)).toHaveLength(4);
        await expectCountsAsListed({ pending: 8, delivered: 0, failed: 0, gone: 0 });
        await recordOutcomes([
          delivered(a, A, at),
          delivered(b, A, at),
          final(c, A, 'failed', at, 500),
          final(d, A, 'gone', at, 410),
          // A retry stays pending; an outcome of another series changes nothing.
          {
            ...final(a, B, 'failed', at, 500),
            status: 'pending',
            nextAttemptAt: at + SECOND,
            finishedAt: null,
          },
          { ...delivered(b, B, at), seriesStartedAt: at - 1 },
        ]);
        await expectCountsAsListed({ pending: 4, delivered: 2, failed: 1, gone: 1 });
        // A redelivery to every endpoint: one row goes back to pending, one is new (endpoint C).
        expect(await store.redeliver(a, [A, C], at + 2 * SECOND)).toBe(2);
        await expectCountsAsListed({ pending: 6, delivered: 1, failed: 1, gone: 1 });
        expect(await store.redeliverSince(T0, 'failed', at + 3 * SECOND, [A.key, B.key, C.key])).toBe(1);
        await expectCountsAsListed({ pending: 7, delivered: 1, failed: 0, gone: 1 });
        // Removing an export cancels its pending deliveries; its final ones stay.
        expect(await store.removeExport('d')).toEqual({ removed: true, cancelledDeliveries: 1 });
        await expectCountsAsListed({ pending: 6, delivered: 1, failed: 0, gone: 1 });
        // Pruning deletes the events left with only final deliveries, and those (a cascade).
        await recordOutcomes([delivered(b, B, at)]);
        await expectCountsAsListed({ pending: 5, delivered: 2, failed: 0, gone: 1 });
        const policy = { retainMs: 1000 * HOUR, eventRetainMs: HOUR, batch: 10 };
        expect(await store.prune(at + 2 * HOUR, policy)).toEqual({ exports: 0, events: 2 });
        await expectCountsAsListed({ pending: 5, delivered: 0, failed: 0, gone: 0 });
        // A commit that fails half-way writes nothing, and counts nothing.
        await store.addExports([{ ids: ['e', 'f'], metadata: null }], T0);
        const later = at + 3 * HOUR;
        const failing: EventBuilder = (change, metadata, kind) => {
          if (change.id === 'f') throw new Error('no event for f');
          return build(change, metadata, kind);
        };
        const both = ['e', 'f'].map((id) => move(id, 'UNKNOWN', 'COMPLETED', later));
        await expect(store.commitChanges(both, failing, [A], later)).rejects.toThrow('no event for f');
        await expectCountsAsListed({ pending: 5, delivered: 0, failed: 0, gone: 0 });
        await store.commitChanges(both, build, [A, B], later);
        await expectCountsAsListed({ pending: 9, delivered: 0, failed: 0, gone: 0 });
      });

      it('gives the oldest pending event after every kind of write, older events coming back included', async () => {
        /** The oldest pending event's time as the listing shows it, and what `deliveryCounts` says. */
        const expectOldest = async (expected: number | null) => {
          let listed: number | null = null;
          for (const e of (await store.listEvents({ limit: 100 })).items) {
            if (e.deliveries.some((d) => d.status === 'pending'))
              listed = listed === null ? e.createdAt : Math.min(listed, e.createdAt);
          }
          expect(listed).toBe(expected);
          expect((await store.deliveryCounts()).oldestPendingAt).toBe(expected);
        };
        const t = (n: number) => T0 + n * SECOND;
        await store.addExports([{ ids: ['a', 'b', 'c', 'd', 'e', 'f'], metadata: null }], T0);
        for (const [i, id] of ['a', 'b', 'c'].entries()) {
          await store.commitChanges([move(id, 'UNKNOWN', 'COMPLETED', t(i + 1))], build, [A], t(i + 1));
        }
        const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((id) => eventId(id, 'COMPLETED')) as [
          string,
          string,
          string,
          string,
        ];
        await expectOldest(t(1));
        await recordOutcomes([delivered(a, A, t(5))]);
        await expectOldest(t(2));
        await recordOutcomes([delivered(b, A, t(5)), delivered(c, A, t(5))]);
        await expectOldest(null);
        await store.commitChanges([move('d', 'UNKNOWN', 'COMPLETED', t(10))], build, [A], t(10));
        await expectOldest(t(10));
        // An older event pending again: redelivered by id, then since a time.
        expect(await store.redeliver(a, [A], t(11))).toBe(1);
        await expectOldest(t(1));
        await recordOutcomes([delivered(a, A, t(12))]);
        await expectOldest(t(10));
        expect(await store.redeliver(b, [B], t(13))).toBe(1);
        await expectOldest(t(2));
        await recordOutcomes([delivered(b, B, t(14))]);
        await expectOldest(t(10));
        expect(await store.redeliverSince(t(3), 'delivered', t(15), [A.key])).toBe(1);
        await expectOldest(t(3));
        // An outcome of the same series that leaves the row pending (a retry) after a final one.
        await recordOutcomes([delivered(c, A, t(16)), delivered(d, A, t(16))]);
        await expectOldest(null);
        await recordOutcomes([
          { ...final(c, A, 'failed', t(17), 500), status: 'pending', nextAttemptAt: t(18), finishedAt: null },
        ]);
        await expectOldest(t(3));
        await recordOutcomes([delivered(c, A, t(18))]);
        await store.commitChanges([move('f', 'UNKNOWN', 'COMPLETED', t(20))], build, [A], t(20));
        await expectOldest(t(20));
        // The clock gone back: a new event older than one pending.
        await store.commitChanges([move('e', 'UNKNOWN', 'COMPLETED', t(2))], build, [A], t(2));
        await expectOldest(t(2));
        expect(await store.removeExport('e')).toEqual({ removed: true, cancelledDeliveries: 1 });
        await expectOldest(t(20));
      });
    });

    describe('prune', () => {
      const policy = { retainMs: HOUR, eventRetainMs: 2 * HOUR, batch: 2 };

      it('deletes finished exports past retention, in batches, and keeps the rest', async () => {
        // Five exports finish at T0+1s; two finish an hour later; two stay running.
        await watchThrough(['f1', 'f2', 'f3', 'f4', 'f5'], ['COMPLETED'], []);
        await watchThrough(['late1', 'late2'], ['FAILED'], [], T0 + HOUR);
        await watchThrough(['r1', 'r2'], ['RUNNING'], []);

        // The first five are exactly `retainMs` old at this time.
        const now = T0 + SECOND + HOUR;
        expect(await store.prune(now, policy)).toEqual({ exports: 5, events: 0 });
        expect(byId(await store.pageExports({ limit: 100 }).then((p) => p.items)).map((e) => e.id)).toEqual([
          'late1',
          'late2',
          'r1',
          'r2',
        ]);
        expect(await store.prune(now, policy)).toEqual({ exports: 0, events: 0 });
        const later = { ...policy, batch: 1, eventRetainMs: 1000 * HOUR };
        expect(await store.prune(now + 100 * HOUR, later)).toEqual({ exports: 2, events: 0 });
        expect(byId(await store.loadActive()).map((e) => e.id)).toEqual(['r1', 'r2']);
      });

      it('deletes old events whose deliveries are all final, or that have none; never a pending one', async () => {
        // Events at T0+1s: a (delivered), b (failed + gone), c (pending at B), d (no deliveries).
        await store.addExports([{ ids: ['a', 'b', 'c', 'd', 'new'], metadata: null }], T0);
        const at = T0 + SECOND;
        await store.commitChanges(
          ['a', 'b', 'c'].map((id) => move(id, 'UNKNOWN', 'COMPLETED', at)),
          build,
          [A, B],
          at,
        );
        await store.commitChanges([move('d', 'UNKNOWN', 'COMPLETED', at)], build, [], at);
        await recordOutcomes([
          delivered(eventId('a', 'COMPLETED'), A, at),
          delivered(eventId('a', 'COMPLETED'), B, at),
          final(eventId('b', 'COMPLETED'), A, 'failed', at, 500),
          final(eventId('b', 'COMPLETED'), B, 'gone', at, 410),
          delivered(eventId('c', 'COMPLETED'), A, at),
        ]);
        // A recent event, delivered: too young to go.
        const recent = at + 2 * HOUR;
        await store.commitChanges([move('new', 'UNKNOWN', 'COMPLETED', recent)], build, [A], recent);
        await recordOutcomes([delivered(eventId('new', 'COMPLETED'), A, recent)]);

        const now = at + 2 * HOUR;
        const result = await store.prune(now, { ...policy, retainMs: 1000 * HOUR });
        expect(result).toEqual({ exports: 0, events: 3 });
        const left = await store.listEvents({ limit: 10 });
        expect(left.items.map((e) => e.id)).toEqual([eventId('new', 'COMPLETED'), eventId('c', 'COMPLETED')]);
        expect(await store.deliveryCounts()).toEqual({
          pending: 1,
          delivered: 2,
          failed: 0,
          gone: 0,
          orphaned: 0,
          oldestPendingAt: at,
        });
        // Years later, the pending delivery still holds its event.
        expect(await store.prune(now + 10_000 * HOUR, policy)).toEqual({ exports: 5, events: 1 });
        expect((await store.listEvents({ limit: 10 })).items.map((e) => e.id)).toEqual([
          eventId('c', 'COMPLETED'),
        ]);
      });

      it('deletes, in small batches, the events behind many older ones still pending, and only those', async () => {
        // Seven old events still pending (an endpoint gone from the configuration), then five
        // delivered ones, interleaved in time with two more pending: batches of 2 go past them all.
        const pending = ['p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7'];
        const done = ['d1', 'd2', 'd3', 'd4', 'd5'];
        await store.addExports([{ ids: [...pending, ...done, 'p8', 'p9'], metadata: null }], T0);
        await store.commitChanges(
          pending.map((id) => move(id, 'UNKNOWN', 'COMPLETED', T0 + SECOND)),
          build,
          [B],
          T0 + SECOND,
        );
        for (const [i, id] of [...done, 'p8', 'p9'].entries()) {
          const at = T0 + (2 + i) * SECOND;
          await store.commitChanges(
            [move(id, 'UNKNOWN', 'COMPLETED', at)],
            build,
            [id.startsWith('p') ? B : A],
            at,
          );
        }
        await recordOutcomes(done.map((id) => delivered(eventId(id, 'COMPLETED'), A, T0 + 20 * SECOND)));
        const result = await store.prune(T0 + 10 * HOUR, { ...policy, retainMs: 1000 * HOUR, batch: 2 });
        expect(result).toEqual({ exports: 0, events: 5 });
        expect((await store.listEvents({ limit: 100 })).items.map((e) => e.exportId).sort()).toEqual(
          [...pending, 'p8', 'p9'].sort(),
        );
        expect(await store.prune(T0 + 10 * HOUR, { ...policy, retainMs: 1000 * HOUR, batch: 2 })).toEqual({
          exports: 0,
          events: 0,
        });
      });

      it("keeps a pruned export's events: they have their own retention", async () => {
        await watchThrough(['a'], ['COMPLETED'], [A]);
        expect(await store.prune(T0 + 10 * HOUR, { ...policy, eventRetainMs: 100 * HOUR })).toEqual({
          exports: 1,
          events: 0,
        });
        expect(await store.getExport('a')).toBeUndefined();
        expect(await eventsOf(store, 'a')).toHaveLength(1);
      });
    });

    describe('removeExport', () => {
      it('deletes the export and cancels its pending deliveries; final ones stay for replay', async () => {
        await store.addExports([{ ids: ['a', 'b'], metadata: null }], T0);
        await store.commitChanges([move('a', 'UNKNOWN', 'RUNNING', T0 + 1)], build, [A, B], T0 + 1);
        await recordOutcomes([
          delivered(eventId('a', 'RUNNING'), A, T0 + 2),
          final(eventId('a', 'RUNNING'), B, 'gone', T0 + 2, 410),
        ]);
        await store.commitChanges(
          [move('a', 'RUNNING', 'COMPLETED', T0 + 3), move('b', 'UNKNOWN', 'COMPLETED', T0 + 3)],
          build,
          [A, B],
          T0 + 3,
        );
        await recordOutcomes([delivered(eventId('a', 'COMPLETED'), A, T0 + 4)]);

        expect(await store.removeExport('a')).toEqual({ removed: true, cancelledDeliveries: 1 });
        expect(await store.getExport('a')).toBeUndefined();
        const events = await eventsOf(store, 'a');
        expect(events.map((e) => [e.id, e.deliveries.map((d) => d.status).sort()])).toEqual([
          [eventId('a', 'RUNNING'), ['delivered', 'gone']],
          [eventId('a', 'COMPLETED'), ['delivered']],
        ]);
        expect(await store.deliveryCounts()).toMatchObject({ pending: 2, oldestPendingAt: T0 + 3 });
        expect(await store.claimDue(B.key, T0 + HOUR, 10, T0 + 2 * HOUR)).toEqual([
          expect.objectContaining({ exportId: 'b' }),
        ]);
      });

      it('deletes the events left with no delivery at all', async () => {
        await watchThrough(['a'], ['RUNNING', 'COMPLETED'], [A]);
        expect(await store.removeExport('a')).toEqual({ removed: true, cancelledDeliveries: 2 });
        expect(await eventsOf(store, 'a')).toEqual([]);
        expect(await store.getEvent(eventId('a', 'COMPLETED'))).toBeUndefined();
      });

      it('answers removed: false for an unknown id, and the id can be watched again after removal', async () => {
        expect(await store.removeExport('nobody')).toEqual({ removed: false, cancelledDeliveries: 0 });
        await watchThrough(['a'], ['COMPLETED'], []);
        await store.removeExport('a');
        const [again] = await store.addExports([{ ids: ['a'], metadata: { second: true } }], T0 + HOUR);
        expect(again).toEqual({ accepted: ['a'], alreadyWatched: [] });
        expect(await store.getExport('a')).toMatchObject({ state: 'UNKNOWN', metadata: { second: true } });
      });

      it('an id watched again after its removal sends its outcome where the removal cancelled it', async () => {
        await store.addExports([{ ids: ['a'], metadata: null }], T0);
        await store.commitChanges([move('a', 'UNKNOWN', 'COMPLETED', T0 + 1)], build, [A, B], T0 + 1);
        // A took it; B was down.
        await recordOutcomes([delivered(eventId('a', 'COMPLETED'), A, T0 + 2)]);
        expect(await store.removeExport('a')).toEqual({ removed: true, cancelledDeliveries: 1 });

        // Watched again, it completes again under the same webhook-id (the event is kept for replay).
        await store.addExports([{ ids: ['a'], metadata: null }], T0 + HOUR);
        const written = await store.commitChanges(
          [move('a', 'UNKNOWN', 'COMPLETED', T0 + HOUR + 1)],
          build,
          [A, B, C],
          T0 + HOUR + 1,
        );
        expect(written.map((e) => e.id)).toEqual([eventId('a', 'COMPLETED')]);
        expect(await store.getExport('a')).toMatchObject({ state: 'COMPLETED' });
        // B, and C (configured since), get it; A, which took it, does not get it again.
        for (const endpoint of [B, C]) {
          expect(await store.claimDue(endpoint.key, T0 + 2 * HOUR, 10, T0 + 3 * HOUR)).toEqual([
            expect.objectContaining({ eventId: eventId('a', 'COMPLETED'), exportId: 'a' }),
          ]);
        }
        expect(await store.claimDue(A.key, T0 + 2 * HOUR, 10, T0 + 3 * HOUR)).toEqual([]);
        expect(await store.deliveryCounts()).toMatchObject({ pending: 2, delivered: 1 });
      });

      it('a change seen twice after a re-watch adds no delivery twice', async () => {
        await store.addExports([{ ids: ['a'], metadata: null }], T0);
        await store.commitChanges([move('a', 'UNKNOWN', 'COMPLETED', T0 + 1)], build, [A], T0 + 1);
        await recordOutcomes([delivered(eventId('a', 'COMPLETED'), A, T0 + 2)]);
        await store.removeExport('a');
        await store.addExports([{ ids: ['a'], metadata: null }], T0 + HOUR);
        // Every endpoint already holds a delivery of that event: nothing is written, nothing pending.
        const written = await store.commitChanges(
          [move('a', 'UNKNOWN', 'COMPLETED', T0 + HOUR + 1)],
          build,
          [A],
          T0 + HOUR + 1,
        );
        expect(written).toEqual([]);
        expect(await store.deliveryCounts()).toMatchObject({ pending: 0, delivered: 1 });
      });
    });

    describe('kinds: exports and imports', () => {
      /** Like the daemon's builder: the kind decides the type and the webhook-id. */
      const buildKind: EventBuilder = (change, metadata, kind = 'export') => {
        const suffix = EVENT_TYPE[change.to]?.slice('export.'.length);
        if (!suffix || change.from === change.to) return null;
        const type = `${kind}.${suffix}` as EventType;
        const id = kind === 'import' ? `evt_import_${change.id}_${suffix}` : `evt_${change.id}_${suffix}`;
        return { id, type, exportId: change.id, body: JSON.stringify({ type, id: change.id, metadata }) };
      };

      it("a job watched after another job's removal is not sent that job's stored event under a shared webhook-id", async () => {
        // The export `import_x` and the import `x` have the same webhook-ids (`evt_import_x_…`):
        // the store refuses the second while the first is watched, not once it is removed.
        await store.addExports([{ ids: ['import_x'], metadata: null }], T0);
        await store.commitChanges(
          [move('import_x', 'UNKNOWN', 'COMPLETED', T0 + 1)],
          buildKind,
          [A, B],
          T0 + 1,
        );
        await recordOutcomes([delivered('evt_import_x_completed', A, T0 + 2)]);
        expect(await store.removeExport('import_x')).toEqual({ removed: true, cancelledDeliveries: 1 });
        expect(await store.addExports([{ ids: ['x'], metadata: null, kind: 'import' }], T0 + HOUR)).toEqual([
          { accepted: ['x'], alreadyWatched: [] },
        ]);
        await store.commitChanges(
          [move('x', 'UNKNOWN', 'COMPLETED', T0 + HOUR + 1)],
          buildKind,
          [A, B],
          T0 + HOUR + 1,
        );
        expect(await store.getExport('x', 'import')).toMatchObject({ state: 'COMPLETED' });
        // B is not sent the removed export's `export.completed` as the import's outcome.
        expect(await store.claimDue(B.key, T0 + 2 * HOUR, 10, T0 + 3 * HOUR)).toEqual([]);
        expect(await store.deliveryCounts()).toMatchObject({ pending: 0 });
      });

      it("lists a job's own events: not those of a removed job of the other kind that had its id", async () => {
        await store.addExports([{ ids: ['x'], metadata: null }], T0);
        await store.commitChanges([move('x', 'UNKNOWN', 'COMPLETED', T0 + 1)], buildKind, [A], T0 + 1);
        await recordOutcomes([delivered('evt_x_completed', A, T0 + 2)]);
        // Removed, its delivered event kept for replay; the id is then watched as an import.
        expect(await store.removeExport('x')).toEqual({ removed: true, cancelledDeliveries: 0 });
        await store.addExports([{ ids: ['x'], metadata: null, kind: 'import' }], T0 + HOUR);
        await store.commitChanges(
          [move('x', 'UNKNOWN', 'RUNNING', T0 + HOUR + 1)],
          buildKind,
          [A],
          T0 + HOUR + 1,
        );

        const types = async (kind?: 'export' | 'import') =>
          (await eventsOf(store, 'x', kind)).map((e) => e.type);
        // What GET /v1/imports/x shows, as GET /v1/events?import_id=x lists it.
        expect(await types('import')).toEqual(['import.running']);
        expect(
          (await store.listEvents({ exportId: 'x', kind: 'import', limit: 10 })).items.map((e) => e.type),
        ).toEqual(['import.running']);
        expect(await types('export')).toEqual(['export.completed']);
        expect(await types()).toEqual(['export.completed', 'import.running']);
        // The import's record with its own events, read at one moment; the removed export has none.
        const found = await store.getExportWithEvents('x', 'import');
        expect(found?.record).toEqual(await store.getExport('x', 'import'));
        expect(found?.events).toEqual(await eventsOf(store, 'x', 'import'));
        expect(found?.events.map((e) => e.type)).toEqual(['import.running']);
        expect(await store.getExportWithEvents('x')).toBeUndefined();
      });

      it('removing a job leaves the deliveries owed for a removed job of the other kind that had its id', async () => {
        // The export `x` finished and was removed (its delivered event kept for replay); the id is
        // then watched as an import, and meanwhile the export's event is redelivered.
        await store.addExports([{ ids: ['x'], metadata: null }], T0);
        await store.commitChanges([move('x', 'UNKNOWN', 'COMPLETED', T0 + 1)], buildKind, [A], T0 + 1);
        await recordOutcomes([delivered('evt_x_completed', A, T0 + 2)]);
        expect(await store.removeExport('x')).toEqual({ removed: true, cancelledDeliveries: 0 });
        await store.addExports([{ ids: ['x'], metadata: null, kind: 'import' }], T0 + HOUR);
        await store.commitChanges(
          [move('x', 'UNKNOWN', 'RUNNING', T0 + HOUR + 1)],
          buildKind,
          [A],
          T0 + HOUR + 1,
        );
        expect(await store.redeliver('evt_x_completed', [A], T0 + HOUR + 2)).toBe(1);

        // Removing the import cancels the import's pending delivery, not the export's redelivery.
        expect(await store.removeExport('x', 'import')).toEqual({ removed: true, cancelledDeliveries: 1 });
        expect(await store.getEvent('evt_import_x_running')).toBeUndefined();
        expect((await store.getEvent('evt_x_completed'))?.deliveries.map((d) => d.status)).toEqual([
          'pending',
        ]);
        expect(await store.claimDue(A.key, T0 + 2 * HOUR, 10, T0 + 3 * HOUR)).toEqual([
          expect.objectContaining({ eventId: 'evt_x_completed', exportId: 'x' }),
        ]);
        expect(await store.deliveryCounts()).toMatchObject({ pending: 1, delivered: 0 });
      });

      it('adds imports with their kind; reads, pages and counts each kind apart, exports as before', async () => {
        const results = await store.addExports(
          [
            { ids: ['e2', 'e1'], metadata: null },
            { ids: ['i2', 'i1', 'i3'], metadata: { from: 'imports' }, kind: 'import' },
            { ids: ['e3'], metadata: null, kind: 'export' },
          ],
          T0,
        );
        expect(results).toEqual([
          { accepted: ['e2', 'e1'], alreadyWatched: [] },
          { accepted: ['i2', 'i1', 'i3'], alreadyWatched: [] },
          { accepted: ['e3'], alreadyWatched: [] },
        ]);
        // An export reads as it always did: no kind on it.
        const e1 = await store.getExport('e1');
        expect(e1).toMatchObject({ id: 'e1', state: 'UNKNOWN' });
        expect(e1).not.toHaveProperty('kind');
        expect(await store.getExport('e1', 'export')).toEqual(e1);
        expect(await store.getExport('e1', 'import')).toBeUndefined();
        expect(await store.getExport('i1', 'import')).toEqual({
          id: 'i1',
          kind: 'import',
          state: 'UNKNOWN',
          previousState: null,
          metadata: { from: 'imports' },
          firstSeenAt: T0,
          stateChangedAt: T0,
          misses: 0,
          history: [{ state: 'UNKNOWN', at: T0 }],
          export: null,
          error: null,
          lastMiss: null,
        });
        expect(await store.getExport('i1')).toBeUndefined();

        await store.commitChanges(
          [move('i2', 'UNKNOWN', 'RUNNING', T0 + 1), move('e2', 'UNKNOWN', 'RUNNING', T0 + 1)],
          buildKind,
          [],
          T0 + 1,
        );
        expect((await store.pageExports({ limit: 10 })).items.map((e) => e.id)).toEqual(['e1', 'e2', 'e3']);
        expect((await store.pageExports({ kind: 'export', limit: 10 })).items.map((e) => e.id)).toEqual([
          'e1',
          'e2',
          'e3',
        ]);
        const imports = await store.pageExports({ kind: 'import', limit: 2 });
        expect(imports.items.map((e) => [e.id, e.kind])).toEqual([
          ['i1', 'import'],
          ['i2', 'import'],
        ]);
        expect(imports.more).toBe(true);
        const rest = await store.pageExports({ kind: 'import', limit: 2, after: 'i2' });
        expect(rest).toMatchObject({ items: [{ id: 'i3', kind: 'import' }], more: false });
        const running = await store.pageExports({ kind: 'import', state: 'RUNNING', limit: 10 });
        expect(running.items.map((e) => e.id)).toEqual(['i2']);
        expect(await store.countExports()).toMatchObject({ UNKNOWN: 2, RUNNING: 1 });
        expect(await store.countExports('export')).toMatchObject({ UNKNOWN: 2, RUNNING: 1 });
        expect(await store.countExports('import')).toEqual({
          UNKNOWN: 2,
          PENDING: 0,
          RUNNING: 1,
          COMPLETED: 0,
          FAILED: 0,
          LOST: 0,
        });
      });

      it('refuses ids stored as the other kind: nothing of that request is added, the others are', async () => {
        await store.addExports([{ ids: ['x'], metadata: null }], T0);
        await store.addExports([{ ids: ['y'], metadata: null, kind: 'import' }], T0);
        const results = await store.addExports(
          [
            { ids: ['n1', 'x', 'n2', 'n1'], metadata: null, kind: 'import' },
            { ids: ['n3', 'y'], metadata: null, kind: 'import' },
            { ids: ['n4', 'y'], metadata: null },
          ],
          T0 + 1,
        );
        expect(results).toEqual([
          { accepted: [], alreadyWatched: [], conflicts: ['x'] },
          { accepted: ['n3'], alreadyWatched: ['y'] },
          { accepted: [], alreadyWatched: [], conflicts: ['y'] },
        ]);
        expect(await store.getExport('n1', 'import')).toBeUndefined();
        expect(await store.getExport('n2', 'import')).toBeUndefined();
        expect(await store.getExport('n4')).toBeUndefined();
        expect(await store.getExport('x')).toMatchObject({ id: 'x', state: 'UNKNOWN' });
        expect(await store.getExport('n3', 'import')).toMatchObject({ kind: 'import' });
        // Refused ids were not kept: they can be added later as their own kind.
        const [later] = await store.addExports([{ ids: ['n1'], metadata: null }], T0 + 2);
        expect(later).toEqual({ accepted: ['n1'], alreadyWatched: [] });
      });

      it('refuses a job whose webhook-ids a stored job of the other kind has, in either order', async () => {
        // The export `import_abc` and the import `abc` would both send `evt_import_abc_<suffix>`.
        await store.addExports([{ ids: ['abc'], metadata: null, kind: 'import' }], T0);
        await store.addExports([{ ids: ['import_xyz'], metadata: null }], T0);
        const results = await store.addExports(
          [
            { ids: ['e1', 'import_abc'], metadata: null },
            { ids: ['i1', 'xyz'], metadata: null, kind: 'import' },
            // Twins within one call: the first is added, the second refused.
            { ids: ['import_new'], metadata: null },
            { ids: ['new'], metadata: null, kind: 'import' },
            // Not twins: an export named like an import's webhook prefix but of no stored import.
            { ids: ['import_free'], metadata: null },
          ],
          T0 + 1,
        );
        expect(results).toEqual([
          { accepted: [], alreadyWatched: [], conflicts: ['import_abc'] },
          { accepted: [], alreadyWatched: [], conflicts: ['xyz'] },
          { accepted: ['import_new'], alreadyWatched: [] },
          { accepted: [], alreadyWatched: [], conflicts: ['new'] },
          { accepted: ['import_free'], alreadyWatched: [] },
        ]);
        expect(await store.getExport('import_abc')).toBeUndefined();
        expect(await store.getExport('e1')).toBeUndefined();
        expect(await store.getExport('xyz', 'import')).toBeUndefined();
        expect(await store.getExport('new', 'import')).toBeUndefined();
        expect(webhookTwin('import_abc')).toEqual({ id: 'abc', kind: 'import' });
        expect(webhookTwin('abc', 'import')).toEqual({ id: 'import_abc', kind: 'export' });
        expect(webhookTwin('abc')).toBeUndefined();
        // What makes them twins: the ids their events would be sent under.
        expect(webhookId('import_abc', 'export.completed')).toBe(webhookId('abc', 'import.completed'));
      });

      it('loads the active jobs of both kinds, an import with its kind', async () => {
        await store.addExports(
          [
            { ids: ['e'], metadata: null },
            { ids: ['i', 'done'], metadata: null, kind: 'import' },
          ],
          T0,
        );
        await store.commitChanges(
          [move('i', 'UNKNOWN', 'RUNNING', T0 + 1), move('done', 'UNKNOWN', 'COMPLETED', T0 + 1)],
          buildKind,
          [],
          T0 + 1,
        );
        expect(byId(await store.loadActive())).toEqual([
          { id: 'e', state: 'UNKNOWN', misses: 0 },
          { id: 'i', kind: 'import', state: 'RUNNING', misses: 0 },
        ]);
      });

      it("builds each job's events with its stored kind, and lists the events of one kind", async () => {
        await store.addExports(
          [
            { ids: ['e'], metadata: { k: 'e' } },
            { ids: ['i'], metadata: { k: 'i' }, kind: 'import' },
          ],
          T0,
        );
        const spy = vi.fn(buildKind);
        const changes = [move('e', 'UNKNOWN', 'COMPLETED', T0 + 1), move('i', 'UNKNOWN', 'FAILED', T0 + 1)];
        const written = await store.commitChanges(changes, spy, [A], T0 + 1);
        expect(spy.mock.calls).toEqual([
          [changes[0], { k: 'e' }, 'export', null],
          [changes[1], { k: 'i' }, 'import', null],
        ]);
        expect(written.map((e) => [e.id, e.type, e.exportId])).toEqual([
          ['evt_e_completed', 'export.completed', 'e'],
          ['evt_import_i_failed', 'import.failed', 'i'],
        ]);
        const ids = async (query: Parameters<Store['listEvents']>[0]) =>
          (await store.listEvents(query)).items.map((e) => e.id);
        expect(await ids({ limit: 10 })).toEqual(['evt_import_i_failed', 'evt_e_completed']);
        expect(await ids({ kind: 'import', limit: 10 })).toEqual(['evt_import_i_failed']);
        expect(await ids({ kind: 'export', limit: 10 })).toEqual(['evt_e_completed']);
        expect(await ids({ exportId: 'i', kind: 'import', limit: 10 })).toEqual(['evt_import_i_failed']);
        expect(await ids({ exportId: 'i', kind: 'export', limit: 10 })).toEqual([]);
        expect((await eventsOf(store, 'i')).map((e) => e.type)).toEqual(['import.failed']);
        expect(await store.getExport('i', 'import')).toMatchObject({
          state: 'FAILED',
          previousState: 'UNKNOWN',
        });
      });

      it('removes a job only as its own kind, and prunes finished jobs of both kinds', async () => {
        await store.addExports(
          [
            { ids: ['e'], metadata: null },
            { ids: ['i', 'j'], metadata: null, kind: 'import' },
          ],
          T0,
        );
        expect(await store.removeExport('i')).toEqual({ removed: false, cancelledDeliveries: 0 });
        expect(await store.removeExport('e', 'import')).toEqual({ removed: false, cancelledDeliveries: 0 });
        expect(await store.removeExport('i', 'import')).toEqual({ removed: true, cancelledDeliveries: 0 });
        expect(await store.getExport('i', 'import')).toBeUndefined();
        await store.commitChanges(
          [move('j', 'UNKNOWN', 'COMPLETED', T0 + 1), move('e', 'UNKNOWN', 'COMPLETED', T0 + 1)],
          buildKind,
          [],
          T0 + 1,
        );
        expect(
          await store.prune(T0 + HOUR, { retainMs: HOUR / 2, eventRetainMs: HOUR * 24, batch: 10 }),
        ).toEqual({
          exports: 2,
          events: 0,
        });
        expect(await store.getExport('j', 'import')).toBeUndefined();
        expect(await store.countExports('import')).toMatchObject({ COMPLETED: 0 });
      });
    });

    describe('recordAttempts: a batch applied as if one record after the other', () => {
      it('recordAttempts: in one batch, an outcome of the current series is kept when a late one of an earlier series follows it', async () => {
        await watchThrough(['a'], ['COMPLETED'], [A]);
        const id = eventId('a', 'COMPLETED');
        const claimedAt = T0 + 10 * SECOND;
        const [old] = await store.claimDue(A.key, claimedAt, 10, claimedAt + HOUR);
        expect(old?.seriesStartedAt).toBe(T0 + SECOND);
        const redeliveredAt = T0 + 20 * SECOND;
        await store.redeliver(id, [A], redeliveredAt);
        const [fresh] = await store.claimDue(A.key, redeliveredAt, 10, redeliveredAt + HOUR);
        expect(fresh?.seriesStartedAt).toBe(redeliveredAt);
        // The new series' attempt answers first; the old claim's attempt answers next; one flush.
        await store.recordAttempts([
          { ...delivered(id, A, redeliveredAt + 1), seriesStartedAt: redeliveredAt },
          { ...final(id, A, 'failed', redeliveredAt + 2, 500), seriesStartedAt: T0 + SECOND },
        ]);
        expect((await store.getEvent(id))?.deliveries[0]).toMatchObject({
          status: 'delivered',
          seriesStartedAt: redeliveredAt,
          finishedAt: redeliveredAt + 1,
          lastStatus: 200,
        });
      });

      it('recordAttempts: a batch with two records of one delivery ends as if written one after the other', async () => {
        await watchThrough(['a'], ['COMPLETED'], [A]);
        const id = eventId('a', 'COMPLETED');
        const now = T0 + 10 * SECOND;
        const retry = refusedThird(id, A, now);
        // The retry, then the same delivery let go untried (no new attempt), in one batch.
        await recordOutcomes([
          retry,
          { ...retry, nextAttemptAt: now + SECOND, lastStatus: null, lastError: null },
        ]);
        expect((await store.getEvent(id))?.deliveries[0]).toMatchObject({
          status: 'pending',
          attempts: 3,
          nextAttemptAt: now + SECOND,
          lastStatus: 503,
          lastError: 'HTTP 503',
        });
      });
    });

    /**
     * Runs `write` as soon as a statement matching `pattern` that `call` makes has returned, so
     * that it falls between that statement and the next where the store makes several
     * (PostgreSQL); where a call is one synchronous piece of work (SQLite), the write comes after.
     */
    async function writeAfter<T>(
      pattern: RegExp,
      call: () => Promise<T>,
      write: () => Promise<unknown>,
    ): Promise<T> {
      let fired = false;
      type Query = (this: unknown, ...args: unknown[]) => unknown;
      // A statement run on the pool, or on a connection taken from it (a transaction); not the
      // pool's own use of a connection (with a callback), which the first already sees.
      const spies = [pg.Pool.prototype, pg.Client.prototype].map((proto) => {
        const original = proto.query as unknown as Query;
        const query: Query = function (this: unknown, ...args: unknown[]) {
          if (typeof args.at(-1) === 'function') return original.apply(this, args);
          return (async () => {
            const result = await original.apply(this, args);
            const text = (args[0] as { text?: unknown } | undefined)?.text;
            if (!fired && typeof text === 'string' && pattern.test(text)) {
              fired = true;
              await write();
            }
            return result;
          })();
        };
        return vi.spyOn(proto, 'query').mockImplementation(query as unknown as typeof proto.query);
      });
      try {
        const result = await call();
        if (!fired) await write();
        return result;
      } finally {
        for (const spy of spies) spy.mockRestore();
      }
    }

    describe('listings read in one snapshot', () => {
      it('an event listed by delivery status shows the delivery it was listed for, though it changes meanwhile', async () => {
        await watchThrough(['a', 'b'], ['COMPLETED'], [A]);
        const page = await writeAfter(
          /FROM events\b/,
          () => store.listEvents({ status: 'pending', limit: 10 }),
          () => recordOutcomes([delivered(eventId('a', 'COMPLETED'), A, T0 + 10 * SECOND)]),
        );
        expect(page.items.map((e) => e.id)).toEqual([eventId('b', 'COMPLETED'), eventId('a', 'COMPLETED')]);
        for (const event of page.items) {
          expect(event.deliveries.map((d) => d.status)).toEqual(['pending']);
        }
        expect((await store.getEvent(eventId('a', 'COMPLETED')))?.deliveries[0]?.status).toBe('delivered');
      });

      it('an event listed while retention deletes it is shown with its deliveries, not with none', async () => {
        await watchThrough(['a', 'b'], ['COMPLETED'], [A]);
        await recordOutcomes([delivered(eventId('a', 'COMPLETED'), A, T0 + 2 * SECOND)]);
        const page = await writeAfter(
          /FROM events\b/,
          () => store.listEvents({ status: 'delivered', limit: 10 }),
          () => store.prune(T0 + 10 * HOUR, { retainMs: 1000 * HOUR, eventRetainMs: HOUR, batch: 10 }),
        );
        expect(page.items.map((e) => [e.id, e.deliveries.map((d) => d.status)])).toEqual([
          [eventId('a', 'COMPLETED'), ['delivered']],
        ]);
        expect(await store.getEvent(eventId('a', 'COMPLETED'))).toBeUndefined();
      });
    });

    describe('answers that hold while other writes run', () => {
      it('deliveryCounts: the oldest pending time goes with the counts it answers, though a delivery ends meanwhile', async () => {
        await watchThrough(['a'], ['COMPLETED'], [A]);
        const counts = await writeAfter(
          /GROUP BY status/,
          () => store.deliveryCounts(),
          () => recordOutcomes([delivered(eventId('a', 'COMPLETED'), A, T0 + 10 * SECOND)]),
        );
        // Either before the outcome (one pending, of `a`'s event) or after it (none): never a mix.
        expect([
          { pending: 1, delivered: 0, failed: 0, gone: 0, orphaned: 0, oldestPendingAt: T0 + SECOND },
          { pending: 0, delivered: 1, failed: 0, gone: 0, orphaned: 0, oldestPendingAt: null },
        ]).toContainEqual(counts);
        expect(await store.deliveryCounts()).toMatchObject({
          pending: 0,
          delivered: 1,
          oldestPendingAt: null,
        });
      });

      it('a job watched again sends its outcome though retention deletes the stored event meanwhile', async () => {
        await watchThrough(['a'], ['COMPLETED'], [A, B]);
        // A took it; B was down, and the removal cancelled B's delivery: only a final one is left.
        await recordOutcomes([delivered(eventId('a', 'COMPLETED'), A, T0 + 2 * SECOND)]);
        await store.removeExport('a');
        const now = T0 + 10 * HOUR;
        await store.addExports([{ ids: ['a'], metadata: null }], now);
        // The stored event is past its retention, with no pending delivery: a prune may take it.
        const written = await writeAfter(
          /INSERT INTO events/,
          () => store.commitChanges([move('a', 'UNKNOWN', 'COMPLETED', now)], build, [A, B], now),
          () => store.prune(now, { retainMs: 1000 * HOUR, eventRetainMs: HOUR, batch: 10 }),
        );
        expect(written.map((e) => e.id)).toEqual([eventId('a', 'COMPLETED')]);
        expect(await store.getExport('a')).toMatchObject({ state: 'COMPLETED' });
        // B gets it, whether the prune came before the commit (a new event) or after (the old one).
        expect(await store.claimDue(B.key, now, 10, now + HOUR)).toEqual([
          expect.objectContaining({ eventId: eventId('a', 'COMPLETED'), exportId: 'a' }),
        ]);
      });
    });

    describe('commitChanges: one event built twice in one call', () => {
      it("takes one creation time for it: the job's next event is a millisecond later, not two", async () => {
        // RUNNING, PENDING, RUNNING again (the same webhook-id, stored once) and COMPLETED.
        await store.addExports([{ ids: ['d'], metadata: null }], T0);
        const at = T0 + 10 * SECOND;
        const written = await store.commitChanges(
          [
            move('d', 'UNKNOWN', 'RUNNING', at - 4),
            move('d', 'RUNNING', 'PENDING', at - 3),
            move('d', 'PENDING', 'RUNNING', at - 2),
            move('d', 'RUNNING', 'COMPLETED', at - 1),
          ],
          build,
          [A],
          at,
        );
        expect(written.map((e) => e.id)).toEqual([eventId('d', 'RUNNING'), eventId('d', 'COMPLETED')]);
        expect((await eventsOf(store, 'd')).map((e) => [e.id, e.createdAt])).toEqual([
          [eventId('d', 'RUNNING'), at],
          [eventId('d', 'COMPLETED'), at + 1],
        ]);
      });
    });

    describe('recordAttempts: an error text with what a database cannot keep', () => {
      it('keeps it alike in every store: U+0000 and each lone surrogate become one U+FFFD', async () => {
        await watchThrough(['a'], ['COMPLETED'], [A]);
        // An error text comes from elsewhere (a network error's message): it may hold anything.
        await recordOutcomes([
          {
            ...final(eventId('a', 'COMPLETED'), A, 'failed', T0 + 5 * SECOND, 500),
            lastError: 'a\u0000b\ud800c\udc00d\ud83d\ude00',
          },
        ]);
        const [delivery] = (await store.getEvent(eventId('a', 'COMPLETED')))?.deliveries ?? [];
        expect(delivery?.lastError).toBe('a\ufffdb\ufffdc\ufffdd\ud83d\ude00');
      });
    });

    describe('close', () => {
      it('makes every later call reject with a StoreError; closing again is harmless', async () => {
        await store.addExports([{ ids: ['a'], metadata: null }], T0);
        await store.close();
        await expect(store.close()).resolves.toBeUndefined();
        const calls: Array<() => Promise<unknown>> = [
          () => store.addExports([{ ids: ['b'], metadata: null }], T0),
          () => store.removeExport('a'),
          () => store.getExport('a'),
          () => store.pageExports({ limit: 1 }),
          () => store.countExports(),
          () => store.loadActive(),
          () => store.commitChanges([move('a', 'UNKNOWN', 'RUNNING', T0)], build, [A], T0),
          () => store.claimDue(A.key, T0, 1, T0),
          () => store.releaseLeases(T0),
          () => store.nextDueAt(A.key),
          () => store.recordAttempts([{ ...delivered('e', A, T0), seriesStartedAt: T0 }]),
          () => store.getEvent('e'),
          () => store.listEvents({ limit: 1 }),
          () => store.getExportWithEvents('a'),
          () => store.redeliver('e', [A], T0),
          () => store.redeliverSince(T0, 'failed', T0, [A.key]),
          () => store.deliveryCounts(),
          () => store.deliveryCounts([A.key]),
          () => store.prune(T0, { retainMs: 0, eventRetainMs: 0, batch: 10 }),
        ];
        for (const call of calls) await expect(call()).rejects.toBeInstanceOf(StoreError);
      });
    });
  });
}
