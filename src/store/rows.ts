/**
 * What the SQL implementations of the store share: the delivery row as both databases return it,
 * its mapping to the port's type, paging and JSON columns.
 */
import { EXPORT_STATES, type ExportState, type JobKind } from '../polling/tracker.js';
import { MIN_SECRET_LENGTH } from '../shared/redact.js';
import type { ActiveExport, DeliveryStatus, StoredDelivery } from './store.js';

/** The columns `loadActive` and `loadUnknown` read. */
export interface ActiveRow {
  id: string;
  kind: JobKind;
  state: ExportState;
  misses: number;
}

/**
 * Each state as one string: a database driver makes a new string per row, and the tracker keeps
 * the state of each of (say) 100,000 jobs for as long as it watches them.
 */
const STATE_TEXT = new Map<string, ExportState>(EXPORT_STATES.map((s) => [s, s]));

/** `ActiveRow`'s columns as an array, in that order (better-sqlite3's raw rows). */
export type RawActiveRow = [id: string, kind: JobKind, state: ExportState, misses: number];

/** An active job as the port gives it: `kind` only for imports (exports are the default). */
export function toActiveExport({ id, kind, state, misses }: ActiveRow): ActiveExport {
  return activeExport(id, kind, state, misses);
}

/** The same from a row's columns in `ActiveRow`'s order (a driver's raw rows). */
export function activeExport(id: string, kind: JobKind, state: ExportState, misses: number): ActiveExport {
  const shared = STATE_TEXT.get(state) ?? state;
  return kind === 'import' ? { id, kind: 'import', state: shared, misses } : { id, state: shared, misses };
}

export interface DeliveryRow {
  event_id: string;
  endpoint_key: string;
  endpoint_label: string;
  status: DeliveryStatus;
  attempts: number;
  next_attempt_at: number | null;
  series_started_at: number;
  last_status: number | null;
  last_error: string | null;
  finished_at: number | null;
  /** A claim holds the row (1 or true): its `next_attempt_at` is then the lease's end, no attempt's time. */
  leased: number | boolean;
}

export function toStoredDelivery(row: DeliveryRow): StoredDelivery {
  return {
    eventId: row.event_id,
    endpointKey: row.endpoint_key,
    endpointLabel: row.endpoint_label,
    status: row.status,
    attempts: row.attempts,
    nextAttemptAt: row.next_attempt_at,
    seriesStartedAt: row.series_started_at,
    lastStatus: row.last_status,
    lastError: row.last_error,
    finishedAt: row.finished_at,
    ...(row.leased ? { leased: true } : {}),
  };
}

/** A page of `limit` items from up to `limit + 1` rows; the extra row only says there is more. */
export function page<R, T>(
  rows: readonly R[],
  limit: number,
  map: (row: R) => T,
): { items: T[]; more: boolean } {
  return { items: rows.slice(0, limit).map(map), more: rows.length > limit };
}

export function whereClause(conditions: readonly string[]): string {
  return conditions.length === 0 ? '' : `WHERE ${conditions.join(' AND ')}`;
}

/**
 * A text from elsewhere (an attempt's error) as both stores keep it: U+0000, which PostgreSQL text
 * cannot hold, and each lone surrogate, which UTF-8 cannot encode, become one U+FFFD. Left to the
 * drivers, PostgreSQL refused U+0000 and SQLite kept it, and a lone surrogate read back from SQLite
 * as three U+FFFD (from PostgreSQL, one).
 */
export function storableText(text: string): string {
  return text.replaceAll('\u0000', '\uFFFD').toWellFormed();
}

export function toJson(value: unknown): string | null {
  return value === null ? null : JSON.stringify(value);
}

export function fromJson<T = Record<string, unknown>>(text: string | null): T | null {
  return text === null ? null : (JSON.parse(text) as T);
}

/** Stands in for the missing host of `postgres://user:password@/db`, which URL cannot parse. */
const NO_HOST = 'no-host.invalid';

/**
 * A database URL as the WHATWG URL parser reads it, and its host ('' for none). pg and libpq take
 * `postgres://user:password@/db?host=/run/postgresql` (no host: a Unix socket directory in
 * `host=`, or the default), which URL refuses, as it refuses credentials without a host: such a
 * URL is read with a placeholder host instead. Undefined for a text that is not a URL.
 */
export function parseDatabaseUrl(text: string): { url: URL; host: string } | undefined {
  try {
    const url = new URL(text);
    return { url, host: url.host };
  } catch {
    // Only with a path after the "@", the one form pg reads without a host.
    const hostless = /^(postgres(?:ql)?:\/\/[^/?#]*@)(\/.*)$/i.exec(text);
    if (!hostless) return undefined;
    try {
      return { url: new URL(`${hostless[1]}${NO_HOST}${hostless[2]}`), host: '' };
    } catch {
      return undefined;
    }
  }
}

/**
 * How a database URL is shown (without its password, query or fragment), and a function that
 * cuts the password (of MIN_SECRET_LENGTH characters or more), raw or percent-encoded, out of any
 * text; undefined for a URL that does not
 * parse (the caller refuses it without repeating it: it may hold the password).
 */
export function describeDatabaseUrl(
  url: string,
): { shown: string; scrub: (text: string) => string } | undefined {
  const read = parseDatabaseUrl(url);
  if (read === undefined) return undefined;
  const parsed = read.url;
  const secrets = new Set<string>();
  for (const raw of [parsed.password, parsed.searchParams.get('password') ?? '']) {
    if (raw === '') continue;
    secrets.add(raw);
    secrets.add(encodeURIComponent(raw));
    try {
      secrets.add(decodeURIComponent(raw));
    } catch {
      // A malformed escape: the raw form is the one to cut.
    }
  }
  // A short password is cut only where a URL carries it (the log scrubber drops every URL's
  // userinfo): cut everywhere, a one-letter password would mask that letter in every message.
  const ordered = [...secrets]
    .filter((s) => s.length >= MIN_SECRET_LENGTH)
    .sort((a, b) => b.length - a.length);
  const scrub = (text: string): string => ordered.reduce((t, secret) => t.split(secret).join('***'), text);
  const host = read.host === '' ? 'localhost' : read.host;
  const user = parsed.username === '' ? '' : `${parsed.username}@`;
  return { shown: scrub(`${parsed.protocol}//${user}${host}${parsed.pathname}`), scrub };
}

/**
 * When an event of this job is created at `now`: `now`, or a millisecond after the job's last event
 * built in the same call (two checks of one job committed together), so that its events list in the
 * order of its transitions, not in the order of their ids (`evt_x_failed` before `evt_x_running`).
 */
export function eventCreatedAt(lastCreated: ReadonlyMap<string, number>, jobId: string, now: number): number {
  const last = lastCreated.get(jobId);
  return last === undefined || last < now ? now : last + 1;
}
