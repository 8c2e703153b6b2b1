/**
 * `since` of GET /v1/events, POST /v1/events/redeliver and the CLI's --since must take any
 * RFC 3339 date-time (README: "`since` an RFC 3339 time"). RFC 3339 section 5.6/5.7 allows a leap
 * second (`time-second` 00-60), e.g. the real one at 2016-12-31T23:59:60Z.
 */
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseSince } from '../src/cli/events.js';
import { type ControlApi, parseRfc3339, type WatchRegistry } from '../src/http/control-api.js';
import type { EventQuery } from '../src/store/store.js';
import { listenControlApi } from './helpers/control-api.js';

const queries: EventQuery[] = [];
const redelivered: number[] = [];
const registry: WatchRegistry = {
  watch: async () => ({ accepted: [], alreadyWatched: [] }),
  unwatch: async () => false,
  get: async () => undefined,
  page: async () => ({ items: [], more: false }),
  events: async (q) => {
    queries.push(q);
    return { items: [], more: false };
  },
  redeliver: async () => 'unknown_event',
  redeliverSince: async (since) => {
    redelivered.push(since);
    return { deliveries: 0 };
  },
};

let api: ControlApi;
let base: string;
beforeAll(async () => {
  ({ api, url: base } = await listenControlApi(registry));
});
afterAll(() => api.close());

const NEW_YEAR_2017 = Date.UTC(2017, 0, 1);

describe('a leap second is an RFC 3339 time', () => {
  it('parseRfc3339 reads 23:59:60 (UTC, or with an offset) as the instant it ends in', () => {
    expect(parseRfc3339('2016-12-31T23:59:60Z')).toBe(NEW_YEAR_2017);
    expect(parseRfc3339('2016-12-31T18:59:60-05:00')).toBe(NEW_YEAR_2017);
    expect(parseRfc3339('2016-12-31T23:59:60.5Z')).toBe(NEW_YEAR_2017 + 500);
    expect(parseRfc3339('2015-06-30T23:59:60Z')).toBe(Date.UTC(2015, 6, 1));
    expect(parseRfc3339('2017-01-01T00:59:60+01:00')).toBe(NEW_YEAR_2017);
    // Still no :60 where no leap second can be: not the last minute of a UTC day, nor of a month
    // (RFC 3339 5.7: "at the end of months in which a leap second occurs").
    expect(parseRfc3339('2016-12-31T12:30:60Z')).toBeUndefined();
    expect(parseRfc3339('2026-11-22T23:59:60Z')).toBeUndefined();
    expect(parseRfc3339('2026-11-22T18:59:60-05:00')).toBeUndefined();
  });

  it('GET /v1/events?since=2016-12-31T23:59:60Z is a 200, not "must be an RFC 3339 date-time"', async () => {
    const res = await request(`${base}/v1/events?since=2016-12-31T23:59:60Z`);
    const text = await res.body.text();
    expect(text).not.toContain('must be an RFC 3339');
    expect(res.statusCode).toBe(200);
    expect(queries.at(-1)?.since).toBe(NEW_YEAR_2017);
  });

  it('POST /v1/events/redeliver takes it too', async () => {
    const res = await request(`${base}/v1/events/redeliver`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ since: '2016-12-31T23:59:60Z' }),
    });
    await res.body.text();
    expect(res.statusCode).toBe(202);
    expect(redelivered.at(-1)).toBe(NEW_YEAR_2017);
  });

  it('the CLI --since takes it (no usage error)', () => {
    expect(parseSince('2016-12-31T23:59:60Z', Date.now())).toBe('2017-01-01T00:00:00.000Z');
  });
});

describe('an offset written with a raw "+" in the query (curl "...?since=...T06:00:00+01:00")', () => {
  it('is read as the offset it is, not refused as "...T06:00:00 01:00"', async () => {
    // What `curl 'localhost:8080/v1/events?since=2026-11-22T06:00:00+01:00'` sends: form decoding
    // turns the "+" into a space, which can stand for nothing else in that place.
    const res = await request(`${base}/v1/events?since=2026-11-22T06:00:00+01:00`);
    const text = await res.body.text();
    expect(res.statusCode, text).toBe(200);
    expect(queries.at(-1)?.since).toBe(Date.UTC(2026, 10, 22, 5, 0, 0));
  });
});
