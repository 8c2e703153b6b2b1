/**
 * `events` and `redeliver`: what a running daemon delivered, and asking it to deliver again,
 * through its control API (`GET /v1/events`, `POST /v1/events/{webhook-id}/redeliver`,
 * `POST /v1/events/redeliver`). They never talk to the platform.
 *
 * `events` prints a table on a terminal (one line per event and endpoint), one JSON object per
 * event otherwise or with `--json` (the API's event, as it answered). `redeliver` prints what was
 * queued, one line per id (or one for `--since`).
 *
 * Exit: 0 done; 1 the daemon could not be asked (one `error:` line) or an id is unknown to it;
 * 2 a usage error, found before the daemon is asked.
 */
import type { Writable } from 'node:stream';
import { parseDuration } from '../config/config.js';
import {
  EXPORT_ID_PATTERN,
  MAX_EVENT_PAGE_LIMIT,
  parseRfc3339,
  WEBHOOK_ID_PATTERN,
} from '../http/control-api.js';
import { UsageError } from '../shared/errors.js';
import { isPlainObject } from '../shared/values.js';
import { DELIVERY_STATUSES, type DeliveryStatus } from '../store/store.js';
import {
  type ApiAnswer,
  ControlApiError,
  type ControlClient,
  type ControlCommandIo,
  errorCodeOf,
  withControlApi,
} from './control-client.js';
import { oneLine, textOf } from './error-report.js';

/** `events` without `--all`: one page of this many. */
export const EVENTS_DEFAULT_LIMIT = 100;

/** A command's flags as parsed: strings, or true for a boolean given. */
export type FlagValues = Readonly<Record<string, string | boolean | string[] | undefined>>;

export interface EventsQuery {
  exportId?: string;
  /** An import's id (`--import`); never with `exportId`. */
  importId?: string;
  status?: DeliveryStatus;
  /** ISO time. */
  since?: string;
  /** Events per request. */
  limit: number;
  /** Follow `next_cursor` to the end. */
  all: boolean;
}

/** `events` flags as a query; a UsageError for any that is wrong. */
export function eventsQuery(values: FlagValues, now: number): EventsQuery {
  const all = values.all === true;
  const limit = values.limit === undefined ? undefined : parseLimit(String(values.limit));
  if (values.export !== undefined && values.import !== undefined) {
    throw new UsageError('events takes --export or --import, not both');
  }
  return {
    ...(values.export === undefined ? {} : { exportId: parseJobId(String(values.export), 'export') }),
    ...(values.import === undefined ? {} : { importId: parseJobId(String(values.import), 'import') }),
    ...(values.status === undefined ? {} : { status: parseStatus(String(values.status)) }),
    ...(values.since === undefined ? {} : { since: parseSince(String(values.since), now) }),
    // --all asks for big pages unless told otherwise: fewer requests for the same events.
    limit: limit ?? (all ? MAX_EVENT_PAGE_LIMIT : EVENTS_DEFAULT_LIMIT),
    all,
  };
}

/** What `redeliver` is asked to do. */
export type RedeliverPlan =
  | { kind: 'ids'; ids: string[]; endpoint?: string }
  | { kind: 'since'; since: string; status: DeliveryStatus };

/** `redeliver` arguments and flags as a plan; a UsageError for a wrong or contradictory one. */
export function redeliverPlan(
  positionals: readonly string[],
  values: FlagValues,
  now: number,
): RedeliverPlan {
  const endpoint = values['webhook-url'] === undefined ? undefined : String(values['webhook-url']);
  if (values.since !== undefined) {
    if (positionals.length > 0) {
      throw new UsageError('redeliver takes webhook ids or --since, not both');
    }
    if (endpoint !== undefined) {
      throw new UsageError(
        'redeliver --since redelivers to every endpoint; --webhook-url goes with webhook ids',
      );
    }
    const status = values.status === undefined ? 'failed' : parseStatus(String(values.status));
    return { kind: 'since', since: parseSince(String(values.since), now), status };
  }
  if (values.status !== undefined) throw new UsageError('redeliver --status goes with --since');
  if (positionals.length === 0) {
    throw new UsageError(
      'redeliver needs webhook ids (like evt_<export id>_completed) or --since TIME; see: sbg-export-watcher redeliver --help',
    );
  }
  const bad = positionals.find((id) => !WEBHOOK_ID_PATTERN.test(id));
  if (bad !== undefined) {
    throw new UsageError(
      `${JSON.stringify(oneLine(bad).slice(0, 200))} is not a webhook id (like evt_<export id>_completed)`,
    );
  }
  if (endpoint !== undefined && endpoint.trim() === '') {
    throw new UsageError('--webhook-url: expected a configured webhook URL or its label, got nothing');
  }
  const ids = [...new Set(positionals)];
  return endpoint === undefined ? { kind: 'ids', ids } : { kind: 'ids', ids, endpoint };
}

function parseLimit(text: string): number {
  const n = /^\d{1,4}$/.test(text) ? Number(text) : Number.NaN;
  if (n >= 1 && n <= MAX_EVENT_PAGE_LIMIT) return n;
  throw new UsageError(
    `--limit: expected a whole number from 1 to ${MAX_EVENT_PAGE_LIMIT}, got ${JSON.stringify(text)}`,
  );
}

function parseJobId(text: string, kind: 'export' | 'import'): string {
  if (EXPORT_ID_PATTERN.test(text)) return text;
  throw new UsageError(
    `--${kind}: expected an ${kind} id (${EXPORT_ID_PATTERN.source}), got ${JSON.stringify(text)}`,
  );
}

function parseStatus(text: string): DeliveryStatus {
  const status = DELIVERY_STATUSES.find((s) => s === text);
  if (status) return status;
  throw new UsageError(
    `--status: expected one of ${DELIVERY_STATUSES.join(', ')}, got ${JSON.stringify(text)}`,
  );
}

/**
 * `--since`: an RFC 3339 time, or a duration back from `now` (`30m`, `2h`, `7d`; the unit is
 * required, as a bare number could be taken for a year or a timestamp). Resolved to an ISO time.
 */
export function parseSince(text: string, now: number): string {
  const at = parseRfc3339(text);
  if (at !== undefined) {
    const iso = new Date(at).toISOString();
    // An offset can carry a time of year 0000 or 9999 into year -1 or 10000, which ISO writes
    // with six digits and a sign, and RFC 3339 (the daemon) does not read: sent as given.
    return parseRfc3339(iso) === at ? iso : text;
  }
  const back = /^\d+(\.\d+)?(ms|s|m|h|d)$/.test(text) ? parseDuration(text) : Number.NaN;
  if (Number.isFinite(back) && back <= now) return new Date(now - back).toISOString();
  throw new UsageError(
    `--since: expected an RFC 3339 time like 2026-11-22T05:00:00Z, or a duration back from now like 30m, 2h, 7d, got ${JSON.stringify(text)}`,
  );
}

export interface EventsOptions extends ControlCommandIo {
  query: EventsQuery;
  /** One JSON object per line instead of a table. */
  json: boolean;
  stdout: Writable;
}

/** The parts of an event this command reads; the rest is printed as it came with `--json`. */
export interface EventItem {
  id: string;
  type: string;
  created_at: string;
  deliveries: Array<{
    endpoint: string;
    status: string;
    attempts: number;
    last_status: number | null;
    next_attempt_at?: string | null;
    last_error?: string | null;
  }>;
}

export async function runEvents(options: EventsOptions): Promise<number> {
  return withControlApi(options, async (client) => {
    const rows: EventItem[] = [];
    let listed = 0;
    let cursor: string | null = null;
    let more = false;
    // A cursor seen before means the pages go round: following them would never end.
    const seen = new Set<string>();
    do {
      const page = await eventPage(client, options.query, cursor);
      listed += page.items.length;
      if (options.json) {
        for (const item of page.items) options.stdout.write(`${JSON.stringify(item)}\n`);
      } else {
        rows.push(...page.items);
      }
      more = page.nextCursor !== null;
      if (page.nextCursor !== null && seen.has(page.nextCursor)) {
        throw new ControlApiError(`the daemon at ${client.where} answered a page it had answered before`);
      }
      if (page.nextCursor !== null) seen.add(page.nextCursor);
      cursor = page.nextCursor;
    } while (options.query.all && more);
    if (!options.json) options.stdout.write(formatEvents(rows));
    // On stderr in either form: a script reading the JSON lines must not take a page for the whole.
    if (more) options.stderr.write('more events follow: --all lists them all\n');
    if (listed === 0) return noEvents(client, options);
    return 0;
  });
}

/**
 * Nothing listed. For one job's events, a header alone cannot tell a job the daemon watches but
 * that has not changed state (or has none with that status) from an id it has never heard of (a
 * typo, a job pruned, another daemon's): the daemon's record of the job tells them apart, and an
 * unknown id exits 1, as `redeliver` does for an unknown event. On a terminal, an empty table says
 * that it is empty; the JSON lines stay empty.
 */
async function noEvents(client: ControlClient, options: EventsOptions): Promise<number> {
  const { exportId, importId } = options.query;
  const job =
    exportId !== undefined
      ? { kind: 'export', id: exportId }
      : importId !== undefined
        ? { kind: 'import', id: importId }
        : undefined;
  if (job !== undefined) {
    const answer = await client.send('GET', `/v1/${job.kind}s/${encodeURIComponent(job.id)}`);
    if (answer.status === 404 && errorCodeOf(answer.body) === `${job.kind}_not_found`) {
      // A finished job's record is pruned after WATCHER_RETAIN, its events kept longer
      // (WATCHER_EVENT_RETAIN): with a filter, whether it has any events at all tells a job the
      // daemon knew from an id it never had.
      const filtered = options.query.status !== undefined || options.query.since !== undefined;
      const { status: _status, since: _since, ...jobOnly } = options.query;
      if (filtered && (await eventPage(client, { ...jobOnly, limit: 1 }, null)).items.length > 0) {
        if (!options.json) {
          options.stderr.write(
            `no events${filtersOf(options.query)} for ${job.kind} ${job.id} (its record was pruned; its other events are kept)\n`,
          );
        }
        return 0;
      }
      options.stderr.write(
        `error: the daemon has no ${job.kind} ${job.id} (a wrong id, one it does not watch, or one finished and pruned)\n`,
      );
      return 1;
    }
    if (answer.status !== 200) throw client.refused(`to read ${job.kind} ${job.id}`, answer);
    const state = (answer.body as { state?: unknown }).state;
    if (!options.json) {
      options.stderr.write(
        `no events${filtersOf(options.query)} for ${job.kind} ${job.id} (the daemon has it${typeof state === 'string' ? `, ${oneLine(state)}` : ''})\n`,
      );
    }
    return 0;
  }
  if (!options.json) options.stderr.write(`no events${filtersOf(options.query)}\n`);
  return 0;
}

/** The filters other than the job, as they narrowed an empty list. */
function filtersOf(query: EventsQuery): string {
  const parts: string[] = [];
  if (query.status !== undefined) parts.push(`with a delivery ${query.status}`);
  if (query.since !== undefined) parts.push(`created since ${query.since}`);
  return parts.length === 0 ? '' : ` ${parts.join(' and ')}`;
}

async function eventPage(
  client: ControlClient,
  query: EventsQuery,
  cursor: string | null,
): Promise<{ items: EventItem[]; nextCursor: string | null }> {
  const params = new URLSearchParams();
  if (query.exportId !== undefined) params.set('export_id', query.exportId);
  if (query.importId !== undefined) params.set('import_id', query.importId);
  if (query.status !== undefined) params.set('status', query.status);
  if (query.since !== undefined) params.set('since', query.since);
  params.set('limit', String(query.limit));
  if (cursor !== null) params.set('cursor', cursor);
  const answer = await client.send('GET', `/v1/events?${params}`);
  if (answer.status !== 200) throw client.refused('to list events', answer);
  const body = answer.body as { items?: unknown; next_cursor?: unknown };
  const nextCursor = body.next_cursor;
  if (!Array.isArray(body.items) || !(typeof nextCursor === 'string' || nextCursor === null)) {
    throw new ControlApiError(
      `the daemon at ${client.where} answered GET /v1/events without items and next_cursor`,
    );
  }
  for (const item of body.items as unknown[]) {
    const deliveries = isPlainObject(item) ? item.deliveries : undefined;
    if (
      !isPlainObject(item) ||
      !(deliveries === undefined || (Array.isArray(deliveries) && deliveries.every(isPlainObject)))
    ) {
      throw new ControlApiError(
        `the daemon at ${client.where} answered GET /v1/events with an item that is not an event`,
      );
    }
  }
  return { items: body.items as EventItem[], nextCursor };
}

/**
 * A table: one line per event and endpoint, the event's columns on its first line only. A
 * delivery that is not done says when it is tried next and why the last attempt failed: during a
 * receiver outage "no answer" alone tells neither whether to wait (the next retry may be an hour
 * away) nor what to fix (a refused connection, a timeout, a 4xx). LAST ERROR comes last, being
 * the one column of free text.
 */
export function formatEvents(events: readonly EventItem[]): string {
  const header = [
    'WEBHOOK-ID',
    'TYPE',
    'CREATED',
    'ENDPOINT',
    'STATUS',
    'ATTEMPTS',
    'LAST STATUS',
    'NEXT ATTEMPT',
    'LAST ERROR',
  ];
  const rows: string[][] = [];
  for (const e of events) {
    const first = [cell(e.id), cell(e.type), cell(e.created_at)];
    const deliveries = Array.isArray(e.deliveries) ? e.deliveries : [];
    if (deliveries.length === 0) rows.push([...first, ...header.slice(first.length).map(() => '-')]);
    deliveries.forEach((d, i) => {
      rows.push([
        ...(i === 0 ? first : ['', '', '']),
        cell(d.endpoint),
        cell(d.status),
        cell(d.attempts),
        d.last_status === 0 ? 'no answer' : cell(d.last_status),
        nextAttempt(d),
        cell(d.last_error),
      ]);
    });
  }
  // A loop, not Math.max(...cells): spreading one argument per row overflows the stack on a long list.
  const widths = header.map((h, i) => {
    let width = h.length;
    for (const r of rows) width = Math.max(width, (r[i] ?? '').length);
    return width;
  });
  const line = (cols: readonly string[]) =>
    cols
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return `${[line(header), ...rows.map(line)].join('\n')}\n`;
}

/**
 * When a pending delivery is tried next: its time, or `under way` while an attempt (or the quick
 * retries right after it) runs, when the daemon sends `null`. Nothing for a finished one.
 */
function nextAttempt(d: { status?: unknown; next_attempt_at?: unknown }): string {
  if (d.status !== 'pending') return '-';
  return d.next_attempt_at === null ? 'under way' : cell(d.next_attempt_at);
}

/** A value from the daemon as one cell: printable, `-` when empty. */
function cell(value: unknown): string {
  if (value === undefined || value === null || value === '') return '-';
  // An object (not what the daemon sends) as its JSON: String() may throw on one.
  return oneLine(textOf(value)) || '-';
}

export interface RedeliverOptions extends ControlCommandIo {
  plan: RedeliverPlan;
  stdout: Writable;
}

export async function runRedeliver(options: RedeliverOptions): Promise<number> {
  const { plan } = options;
  return withControlApi(options, async (client) => {
    if (plan.kind === 'since') {
      const answer = await client.send('POST', '/v1/events/redeliver', {
        since: plan.since,
        status: plan.status,
      });
      if (answer.status !== 202) throw client.refused('the redelivery', answer);
      const n = deliveries(client, answer);
      options.stdout.write(
        `${plural(n)} queued again: those ${plan.status} of events created since ${plan.since}\n`,
      );
      return 0;
    }
    let unknown = 0;
    const query = plan.endpoint === undefined ? '' : `?endpoint=${encodeURIComponent(plan.endpoint)}`;
    for (const id of plan.ids) {
      const answer = await client.send('POST', `/v1/events/${id}/redeliver${query}`);
      if (answer.status === 404 && errorCodeOf(answer.body) === 'event_not_found') {
        unknown++;
        options.stderr.write(`error: the daemon has no event ${id} (a wrong id, or pruned)\n`);
        continue;
      }
      if (answer.status !== 202) throw client.refused(`to redeliver ${id}`, answer);
      options.stdout.write(`${id}  ${plural(deliveries(client, answer))} queued again\n`);
    }
    return unknown === 0 ? 0 : 1;
  });
}

function deliveries(client: ControlClient, answer: ApiAnswer): number {
  const n = (answer.body as { deliveries?: unknown }).deliveries;
  if (typeof n === 'number' && Number.isSafeInteger(n) && n >= 0) return n;
  throw new ControlApiError(`the daemon at ${client.where} answered a redelivery without its count`);
}

function plural(n: number): string {
  return `${n} ${n === 1 ? 'delivery' : 'deliveries'}`;
}
