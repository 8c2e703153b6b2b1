import { describe, expect, it } from 'vitest';
import { eventBodyJson, eventForTransition, storedEventBuilder } from '../src/delivery/events.js';
import type { ExportState, JobKind } from '../src/polling/tracker.js';
import { move } from './helpers/changes.js';

const T0 = Date.UTC(2026, 11, 3, 12, 0, 0, 123);

/** Platform objects as they come: nested, with text that JSON escapes, numbers, nulls and arrays. */
const OBJECTS: Array<Record<string, unknown> | null> = [
  null,
  {},
  { id: 'e1', state: 'COMPLETED', result: { size: 1_000_000, name: 'a "quoted"\nname' } },
  {
    id: 'e2',
    state: 'FAILED',
    error: { status: 400, code: 9001, message: 'Müller: \u0000 \ud83d\ude00 \u2028' },
    tags: ['x', 1, null, { deep: [true, false] }],
    started_on: '2026-01-01T00:00:00Z',
    toJSON: 7,
  },
];

const METADATA: Array<Record<string, unknown> | null> = [
  null,
  {},
  { run: 7, who: 'ünïcode', list: [1, 'two'] },
];

describe('eventBodyJson', () => {
  it('writes the same bytes as JSON.stringify of the body, for every kind, state and shape', () => {
    let cases = 0;
    for (const kind of ['export', 'import'] as JobKind[]) {
      for (const to of ['RUNNING', 'COMPLETED', 'FAILED', 'LOST'] as ExportState[]) {
        for (const object of OBJECTS) {
          for (const metadata of METADATA) {
            const error = to === 'LOST' ? { status: 404, code: 9008, message: 'not "found"' } : null;
            const event = eventForTransition(
              { exportId: 'job_1-x', kind, from: 'PENDING', to, at: T0, export: object, error },
              metadata,
            );
            expect(event).not.toBeNull();
            if (!event) continue;
            expect(eventBodyJson(event.body)).toBe(JSON.stringify(event.body));
            cases++;
          }
        }
      }
    }
    expect(cases).toBe(2 * 4 * OBJECTS.length * METADATA.length);
  });

  it("is what the store's builder sends, with the platform object's text the store made for the job's row", () => {
    const object = { id: 'e1', state: 'COMPLETED', result: { name: 'r' } };
    const change = move('e1', 'RUNNING', 'COMPLETED', T0, { export: object });
    const expected = JSON.stringify({
      type: 'export.completed',
      timestamp: new Date(T0).toISOString(),
      data: {
        export_id: 'e1',
        state: 'COMPLETED',
        previous_state: 'RUNNING',
        metadata: { run: 1 },
        export: object,
        error: null,
      },
    });
    const build = storedEventBuilder('all');
    expect(build(change, { run: 1 })?.body).toBe(expected);
    expect(build(change, { run: 1 }, 'export', JSON.stringify(object))?.body).toBe(expected);
    // The text given is what is written: it is not made again.
    expect(build(change, { run: 1 }, 'export', '{"as":"stored"}')?.body).toContain(
      '"export":{"as":"stored"}',
    );
    // A LOST event has no object, whatever the change carried.
    const lost = build(move('e1', 'RUNNING', 'LOST', T0, { export: object }), null, 'export', '{"x":1}');
    expect(JSON.parse(lost?.body ?? '').data.export).toBeNull();
  });

  it('writes a value that is undefined, against its type, as null: the body stays JSON', () => {
    const event = eventForTransition(
      {
        exportId: 'e1',
        from: 'RUNNING',
        to: 'COMPLETED',
        at: T0,
        export: { id: 'e1' },
        error: undefined as never,
      },
      undefined as never,
    );
    const text = eventBodyJson(event?.body as never);
    expect(JSON.parse(text).data).toMatchObject({ metadata: null, error: null });
    // Nor a function, or a toJSON that gives nothing: written as null where JSON.stringify leaves it out.
    const odd = eventForTransition(
      {
        exportId: 'e1',
        from: 'RUNNING',
        to: 'FAILED',
        at: T0,
        export: null,
        error: { toJSON: () => undefined } as never,
      },
      (() => 1) as never,
    );
    expect(JSON.parse(eventBodyJson(odd?.body as never)).data).toMatchObject({ metadata: null, error: null });
  });
});
