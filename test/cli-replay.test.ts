/**
 * `events` and `redeliver`, run as the program, against a real ControlApi on 127.0.0.1 whose
 * registry is a fake holding a few events: what is asked of the daemon, what is printed, and the
 * exit codes.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { formatEvents, parseSince, redeliverPlan, runEvents } from '../src/cli/events.js';
import { runCli } from '../src/cli.js';
import type { EventType } from '../src/delivery/events.js';
import {
  type ControlApi,
  type ExportView,
  eventToJson,
  parseRfc3339,
  type WatchRegistry,
} from '../src/http/control-api.js';
import type { ExportState } from '../src/polling/tracker.js';
import { Redactor } from '../src/shared/redact.js';
import type { DeliveryStatus, EventQuery, StoredEvent } from '../src/store/store.js';
import { listenControlApi } from './helpers/control-api.js';
import { closedPort } from './helpers/ports.js';
import { killAll, spawnCli } from './helpers/spawn.js';

const TOKEN = 'replay-token-5c1e9a';
const HOOK_URL = 'https://hook-user:Hook-Pass-77@hooks.example.org/in?sig=sig-SECRET-42';
const HOOK_LABEL = 'https://hooks.example.org/in';
const T0 = Date.UTC(2026, 10, 22, 5, 0, 0);
const MINUTE = 60_000;

/** Events in memory, listed and redelivered as the store would; every call is recorded. */
class EventsRegistry implements WatchRegistry {
  readonly stored: StoredEvent[] = [];
  readonly calls: Array<{ method: string; args: unknown[] }> = [];

  async watch() {
    return { accepted: [], alreadyWatched: [] };
  }

  async unwatch() {
    return false;
  }

  /** Jobs the daemon has, by id, with their state: `get` answers these, and 404 for the rest. */
  readonly known = new Map<string, ExportState>();

  async get(id: string): Promise<ExportView | undefined> {
    this.calls.push({ method: 'get', args: [id] });
    const state = this.known.get(id);
    if (state === undefined) return undefined;
    return {
      id,
      state,
      previousState: null,
      firstSeenAt: T0,
      stateChangedAt: T0,
      lastCheckedAt: null,
      checks: 0,
      metadata: null,
      history: [],
      export: null,
      error: null,
      events: this.stored.filter((e) => e.exportId === id),
    };
  }

  async page() {
    return { items: [], more: false };
  }

  async events(query: EventQuery) {
    this.calls.push({ method: 'events', args: [query] });
    const after = query.after;
    const matching = [...this.stored]
      .sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1))
      .filter((e) => query.exportId === undefined || e.exportId === query.exportId)
      .filter((e) => query.status === undefined || e.deliveries.some((d) => d.status === query.status))
      .filter((e) => query.since === undefined || e.createdAt >= query.since)
      .filter(
        (e) =>
          after === undefined ||
          e.createdAt < after.createdAt ||
          (e.createdAt === after.createdAt && e.id < after.id),
      );
    return { items: matching.slice(0, query.limit), more: matching.length > query.limit };
  }

  async redeliver(eventId: string, endpoint?: string) {
    this.calls.push({ method: 'redeliver', args: [eventId, endpoint] });
    const event = this.stored.find((e) => e.id === eventId);
    if (!event) return 'unknown_event' as const;
    if (endpoint === undefined) return { deliveries: event.deliveries.length };
    return endpoint === HOOK_URL || endpoint === HOOK_LABEL
      ? { deliveries: 1 }
      : ('unknown_endpoint' as const);
  }

  async redeliverSince(since: number, status: DeliveryStatus) {
    this.calls.push({ method: 'redeliverSince', args: [since, status] });
    return { deliveries: 4 };
  }

  add(exportId: string, type: EventType, createdAt: number, status: DeliveryStatus): void {
    const id = `evt_${exportId}_${type.slice('export.'.length)}`;
    this.stored.push({
      id,
      type,
      exportId,
      body: JSON.stringify({ type, data: { export_id: exportId } }),
      createdAt,
      deliveries: [
        {
          eventId: id,
          endpointKey: 'k1',
          endpointLabel: HOOK_LABEL,
          status,
          attempts: status === 'pending' ? 0 : 2,
          nextAttemptAt: null,
          seriesStartedAt: createdAt,
          lastStatus: status === 'delivered' ? 204 : status === 'failed' ? 0 : null,
          lastError: status === 'failed' ? `connect ECONNREFUSED for ${HOOK_URL}` : null,
          finishedAt: null,
        },
      ],
    });
  }

  of(method: string): unknown[][] {
    return this.calls.filter((c) => c.method === method).map((c) => c.args);
  }
}

let registry: EventsRegistry;
let api: ControlApi;
let apiUrl: string;

beforeAll(async () => {
  registry = new EventsRegistry();
  ({ api, url: apiUrl } = await listenControlApi(registry, { apiToken: TOKEN }));
});

afterAll(async () => {
  await api.close();
});

beforeEach(() => {
  registry.stored.length = 0;
  registry.calls.length = 0;
  registry.known.clear();
  registry.known.set('a1', 'COMPLETED');
  registry.known.set('e5', 'RUNNING');
  registry.add('a1', 'export.completed', T0, 'delivered');
  registry.add('a1', 'export.running', T0 - MINUTE, 'delivered');
  registry.add('b2', 'export.failed', T0 + MINUTE, 'failed');
  registry.add('c3', 'export.lost', T0 + 2 * MINUTE, 'failed');
  registry.add('d4', 'export.completed', T0 + 3 * MINUTE, 'pending');
});

afterEach(() => killAll());

/** Runs the CLI against the test's API (or `url`) with the token; resolves its code and output. */
async function cli(args: string[], env: Record<string, string> = { WATCHER_API_TOKEN: TOKEN }, cwd?: string) {
  const child = spawnCli(args, env, cwd === undefined ? {} : { cwd });
  const { code } = await child.exited;
  return { code, stdout: child.stdout(), stderr: child.stderr() };
}

const withApi = (...args: string[]) => [...args, '--api-url', apiUrl];
const jsonLines = (text: string) =>
  text
    .trim()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l));

/** A stream that hands each write to `take`. */
const writable = (take: (text: string) => void) =>
  new Writable({
    write(chunk, _encoding, done) {
      take(String(chunk));
      done();
    },
  });

/** `events` in this process as on a terminal (a table, notes on stderr), against the test's API. */
async function eventsOnTerminal(query: Parameters<typeof runEvents>[0]['query']) {
  let stdout = '';
  let stderr = '';
  const code = await runEvents({
    query,
    json: false,
    stdout: writable((text) => {
      stdout += text;
    }),
    stderr: writable((text) => {
      stderr += text;
    }),
    target: { url: apiUrl, fix: '--api-url', token: TOKEN },
    timeoutMs: 5000,
    redactor: new Redactor(),
  });
  return { code, stdout, stderr };
}

/** A receiver that is down, as the outage tests of the table name it. */
const OUTAGE_HOOK = 'http://127.0.0.1:18582/hooks';

describe('events', () => {
  it('prints each event as the API shows it, one JSON line each, newest first', async () => {
    const r = await cli(withApi('events'));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = jsonLines(r.stdout);
    expect(lines.map((l) => l.id)).toEqual([
      'evt_d4_completed',
      'evt_c3_lost',
      'evt_b2_failed',
      'evt_a1_completed',
      'evt_a1_running',
    ]);
    expect(lines[1]).toEqual(eventToJson(registry.stored[3] as StoredEvent));
    expect(registry.of('events')).toEqual([[expect.objectContaining({ limit: 100, after: undefined })]]);
    expect(r.stdout).not.toContain('Hook-Pass');
    expect(r.stdout).not.toContain('sig-SECRET');
  });

  it('passes --export, --status and --since (RFC 3339 or a duration back from now) to the daemon', async () => {
    let r = await cli(withApi('events', '--export', 'a1', '--json'));
    expect(jsonLines(r.stdout).map((l) => l.id)).toEqual(['evt_a1_completed', 'evt_a1_running']);

    r = await cli(withApi('events', '--status', 'failed', '--since', '2026-11-22T06:01:00+01:00'));
    expect(r.code).toBe(0);
    expect(jsonLines(r.stdout).map((l) => l.id)).toEqual(['evt_c3_lost', 'evt_b2_failed']);
    expect(registry.of('events').at(-1)).toEqual([
      expect.objectContaining({ status: 'failed', since: T0 + MINUTE }),
    ]);

    const before = Date.now();
    r = await cli(withApi('events', '--since', '2h'));
    expect(r.code).toBe(0);
    const [query] = registry.of('events').at(-1) as [EventQuery];
    const since = query.since ?? 0;
    expect(since).toBeGreaterThanOrEqual(before - 2 * 3_600_000 - 1000);
    expect(since).toBeLessThanOrEqual(Date.now() - 2 * 3_600_000);
  });

  it('prints only the first page without --all, and follows next_cursor to the end with it', async () => {
    let r = await cli(withApi('events', '--limit', '2'));
    expect(r.code).toBe(0);
    expect(jsonLines(r.stdout).map((l) => l.id)).toEqual(['evt_d4_completed', 'evt_c3_lost']);
    expect(registry.of('events')).toHaveLength(1);
    // JSON lines (stdout not a terminal) say on stderr that the listing is cut, as the table does.
    expect(r.stderr).toBe('more events follow: --all lists them all\n');

    registry.calls.length = 0;
    r = await cli(withApi('events', '--all', '--limit', '2'));
    expect(r.code).toBe(0);
    expect(jsonLines(r.stdout).map((l) => l.id)).toEqual([
      'evt_d4_completed',
      'evt_c3_lost',
      'evt_b2_failed',
      'evt_a1_completed',
      'evt_a1_running',
    ]);
    const queries = registry.of('events').map((args) => args[0] as EventQuery);
    expect(queries.map((q) => q.limit)).toEqual([2, 2, 2]);
    expect(queries.map((q) => q.after?.id)).toEqual([undefined, 'evt_c3_lost', 'evt_a1_completed']);
    expect(r.stderr).toBe('');

    registry.calls.length = 0;
    r = await cli(withApi('events', '--all', '--status', 'failed'));
    expect(jsonLines(r.stdout)).toHaveLength(2);
    expect(registry.of('events').map((args) => (args[0] as EventQuery).limit)).toEqual([1000]);
  });

  it('exits 1 for a job id the daemon does not have, rather than print an empty list', async () => {
    const r = await cli(withApi('events', '--export', 'zz9'));
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      'error: the daemon has no export zz9 (a wrong id, one it does not watch, or one finished and pruned)\n',
    );
    // The same with a filter: an unknown id is unknown whatever else is asked.
    const filtered = await cli(withApi('events', '--export', 'zz9', '--status', 'failed'));
    expect(filtered.code).toBe(1);
  });

  it('a filter that matches none of a pruned job’s kept events is no error: the job was known', async () => {
    // b2's record is gone (WATCHER_RETAIN), its event kept (WATCHER_EVENT_RETAIN), its delivery failed.
    const r = await cli(withApi('events', '--export', 'b2', '--status', 'delivered'));
    expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
    const { code, stderr } = await eventsOnTerminal({
      exportId: 'b2',
      status: 'delivered',
      limit: 100,
      all: false,
    });
    expect({ code, stderr }).toEqual({
      code: 0,
      stderr:
        'no events with a delivery delivered for export b2 (its record was pruned; its other events are kept)\n',
    });
  });

  it('lists nothing for a job the daemon has without events, and exits 0', async () => {
    const r = await cli(withApi('events', '--export', 'e5'));
    expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
  });

  it('says on a terminal that nothing matched, and for a job, that the daemon has it', async () => {
    let r = await eventsOnTerminal({ exportId: 'e5', limit: 100, all: false });
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toMatch(/^WEBHOOK-ID +TYPE/);
    expect(r.stderr).toBe('no events for export e5 (the daemon has it, RUNNING)\n');

    r = await eventsOnTerminal({ exportId: 'a1', status: 'failed', limit: 100, all: false });
    expect(r.stderr).toBe('no events with a delivery failed for export a1 (the daemon has it, COMPLETED)\n');

    r = await eventsOnTerminal({
      status: 'pending',
      since: '2030-01-01T00:00:00.000Z',
      limit: 100,
      all: false,
    });
    expect(r.stderr).toBe('no events with a delivery pending and created since 2030-01-01T00:00:00.000Z\n');

    registry.calls.length = 0;
    r = await eventsOnTerminal({ exportId: 'zz9', limit: 100, all: false });
    expect(r.code).toBe(1);
    expect(registry.of('get')).toEqual([['zz9']]);
    expect(r.stderr).toMatch(/^error: the daemon has no export zz9 /);

    // Events listed: nothing more is asked of the daemon, nothing more is said.
    registry.calls.length = 0;
    r = await eventsOnTerminal({ exportId: 'a1', limit: 100, all: false });
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('evt_a1_completed');
    expect(registry.of('get')).toEqual([]);
  });

  it('formats a table even of fields that are objects, not what the daemon sends', () => {
    const odd = [
      { id: { toString: 1 }, type: 'x', created_at: 'y', deliveries: [{ status: { toString: null } }] },
    ];
    const table = formatEvents(odd as never);
    expect(table).toContain('{"toString":1}');
    expect(table).toContain('{"toString":null}');
  });

  it('formats a long listing (events --all on a terminal) without overflowing the stack', () => {
    const delivery = { endpoint: HOOK_LABEL, status: 'delivered', attempts: 1, last_status: 204 };
    const events = Array.from({ length: 200_000 }, (_, i) => ({
      id: `evt_${i}_completed`,
      type: 'export.completed',
      created_at: '2026-11-22T05:33:04.386Z',
      deliveries: [delivery],
    }));
    const lines = formatEvents(events).split('\n');
    expect(lines).toHaveLength(200_002);
    expect(lines[200_000]).toMatch(/^evt_199999_completed {2}export\.completed/);
  });

  it('formats a table: one line per event and endpoint, control characters removed', () => {
    const table = formatEvents([
      {
        id: 'evt_a_completed',
        type: 'export.completed',
        created_at: '2026-11-22T05:00:00.000Z',
        deliveries: [
          { endpoint: HOOK_LABEL, status: 'delivered', attempts: 1, last_status: 204 },
          { endpoint: 'http://x/\u001b[31m', status: 'failed', attempts: 7, last_status: 0 },
        ],
      },
      { id: 'evt_b_lost', type: 'export.lost', created_at: '2026-11-22T05:01:00.000Z', deliveries: [] },
    ]);
    expect(table.split('\n')).toEqual([
      'WEBHOOK-ID       TYPE              CREATED                   ENDPOINT                      STATUS     ATTEMPTS  LAST STATUS  NEXT ATTEMPT  LAST ERROR',
      'evt_a_completed  export.completed  2026-11-22T05:00:00.000Z  https://hooks.example.org/in  delivered  1         204          -             -',
      '                                                             http://x/ [31m                failed     7         no answer    -             -',
      'evt_b_lost       export.lost       2026-11-22T05:01:00.000Z  -                             -          -         -            -             -',
      '',
    ]);
  });

  // During a receiver outage the table said `pending  4  no answer` and nothing else: whether the
  // next retry is seconds or an hour away, and why the attempts fail, were only in --json.
  it('shows when a pending delivery is tried next and why the last attempt failed', () => {
    const table = formatEvents([
      {
        id: 'evt_a_completed',
        type: 'export.completed',
        created_at: '2026-11-22T05:00:00.000Z',
        deliveries: [
          {
            endpoint: OUTAGE_HOOK,
            status: 'pending',
            attempts: 4,
            last_status: 0,
            next_attempt_at: '2026-11-22T05:00:20.000Z',
            last_error: 'request failed: connect ECONNREFUSED 127.0.0.1:18582',
          },
        ],
      },
    ]);
    expect(table.split('\n')).toEqual([
      'WEBHOOK-ID       TYPE              CREATED                   ENDPOINT                      STATUS   ATTEMPTS  LAST STATUS  NEXT ATTEMPT              LAST ERROR',
      'evt_a_completed  export.completed  2026-11-22T05:00:00.000Z  http://127.0.0.1:18582/hooks  pending  4         no answer    2026-11-22T05:00:20.000Z  request failed: connect ECONNREFUSED 127.0.0.1:18582',
      '',
    ]);
  });

  it('says "under way" for a pending delivery whose attempt is running, "-" for a finished one', () => {
    const table = formatEvents([
      {
        id: 'evt_b_failed',
        type: 'export.failed',
        created_at: '2026-11-22T05:00:00.000Z',
        deliveries: [
          {
            endpoint: OUTAGE_HOOK,
            status: 'pending',
            attempts: 1,
            last_status: 503,
            next_attempt_at: null,
            last_error: 'HTTP 503',
          },
          {
            endpoint: 'http://other/x',
            status: 'delivered',
            attempts: 2,
            last_status: 204,
            next_attempt_at: null,
            last_error: null,
          },
        ],
      },
    ]);
    expect(table.split('\n')).toEqual([
      'WEBHOOK-ID    TYPE           CREATED                   ENDPOINT                      STATUS     ATTEMPTS  LAST STATUS  NEXT ATTEMPT  LAST ERROR',
      'evt_b_failed  export.failed  2026-11-22T05:00:00.000Z  http://127.0.0.1:18582/hooks  pending    1         503          under way     HTTP 503',
      '                                                       http://other/x                delivered  2         204          -             -',
      '',
    ]);
  });
});

describe('redeliver', () => {
  it('queues each id given, to every endpoint or to the one named, and says how many', async () => {
    let r = await cli(withApi('redeliver', 'evt_b2_failed', 'evt_c3_lost', 'evt_b2_failed'));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('evt_b2_failed  1 delivery queued again\nevt_c3_lost  1 delivery queued again\n');
    expect(registry.of('redeliver')).toEqual([
      ['evt_b2_failed', undefined],
      ['evt_c3_lost', undefined],
    ]);

    registry.calls.length = 0;
    r = await cli(withApi('redeliver', 'evt_b2_failed', '--webhook-url', HOOK_URL));
    expect(r.code).toBe(0);
    expect(registry.of('redeliver')).toEqual([['evt_b2_failed', HOOK_URL]]);
  });

  it('exits 1 when an id is unknown, after queuing the others', async () => {
    const r = await cli(withApi('redeliver', 'evt_zz_completed', 'evt_b2_failed'));
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('evt_b2_failed  1 delivery queued again\n');
    expect(r.stderr).toBe('error: the daemon has no event evt_zz_completed (a wrong id, or pruned)\n');
  });

  it('exits 1 with the daemon’s reason for an endpoint it does not have, without the URL’s secrets', async () => {
    const r = await cli(
      withApi(
        'redeliver',
        'evt_b2_failed',
        '--webhook-url',
        'https://u:Other-Pass-9@other.example/x?k=key-SECRET-9',
      ),
    );
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(
      /^error: the daemon at http:\/\/127\.0\.0\.1:\d+ refused to redeliver evt_b2_failed \(400 unknown_endpoint\): unknown endpoint "https:\/\/other\.example\/x"/,
    );
    expect(r.stderr).not.toContain('Other-Pass-9');
    expect(r.stderr).not.toContain('key-SECRET-9');
  });

  it.each(['https//u:Other-Pass-9@other.example/x', 'u:Other-Pass-9@other.example/x'])(
    'a mistyped --webhook-url %j is refused without printing its password',
    async (url) => {
      const r = await cli(withApi('redeliver', 'evt_b2_failed', '--webhook-url', url));
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/refused to redeliver evt_b2_failed \(400 unknown_endpoint\)/);
      expect(r.stderr).not.toContain('Other-Pass-9');
    },
  );

  it('queues the deliveries in a status since a time, failed by default', async () => {
    let r = await cli(withApi('redeliver', '--since', '2026-11-22T05:00:00Z'));
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      '4 deliveries queued again: those failed of events created since 2026-11-22T05:00:00.000Z\n',
    );
    expect(registry.of('redeliverSince')).toEqual([[T0, 'failed']]);

    r = await cli(withApi('redeliver', '--since', '90m', '--status', 'gone'));
    expect(r.code).toBe(0);
    const [since, status] = registry.of('redeliverSince').at(-1) as [number, string];
    expect(status).toBe('gone');
    expect(Math.abs(Date.now() - 90 * MINUTE - since)).toBeLessThan(30_000);
  });
});

describe('finding the daemon and its token', () => {
  it('says WATCHER_API_TOKEN is wrong on a 401, and never prints the token', async () => {
    const wrong = 'wrong-token-0e7f2c';
    const r = await cli(withApi('events'), { WATCHER_API_TOKEN: wrong });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      `error: the daemon at ${apiUrl} refused the API token: WATCHER_API_TOKEN is wrong (it must be the daemon's own)\n`,
    );
    expect(r.stderr).not.toContain(wrong);
  });

  it('says WATCHER_API_TOKEN is missing when none is set', async () => {
    const r = await cli(withApi('redeliver', 'evt_b2_failed'), {});
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: the daemon at .* requires an API token: WATCHER_API_TOKEN is missing/);
    expect(registry.calls).toEqual([]);
  });

  it('reads the token from .env and from $CREDENTIALS_DIRECTORY/api-token, as the daemon does', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'replay-'));
    writeFileSync(join(dir, '.env'), `WATCHER_API_TOKEN=${TOKEN}\n`);
    expect((await cli(withApi('events'), {}, dir)).code).toBe(0);

    const credentials = mkdtempSync(join(tmpdir(), 'replay-credentials-'));
    writeFileSync(join(credentials, 'api-token'), `${TOKEN}\n`);
    expect((await cli(withApi('events'), { CREDENTIALS_DIRECTORY: credentials })).code).toBe(0);
  });

  it('finds the daemon from WATCHER_HTTP_HOST and WATCHER_HTTP_PORT, a wildcard host meaning loopback', async () => {
    const port = new URL(apiUrl).port;
    const r = await cli(['events', '--export', 'b2'], {
      WATCHER_API_TOKEN: TOKEN,
      WATCHER_HTTP_HOST: '0.0.0.0',
      WATCHER_HTTP_PORT: port,
    });
    expect(r.stderr).toBe('');
    expect(jsonLines(r.stdout).map((l) => l.id)).toEqual(['evt_b2_failed']);
  });

  it('says the daemon does not answer, and which setting says where it is', async () => {
    const port = await closedPort();
    let r = await cli(['events', '--api-url', `http://127.0.0.1:${port}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `error: the daemon does not answer at http://127.0.0.1:${port} (ECONNREFUSED); is it running? If it is elsewhere, check --api-url\n`,
    );

    r = await cli(['redeliver', '--since', '1h'], {
      WATCHER_API_TOKEN: TOKEN,
      WATCHER_HTTP_PORT: String(port),
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `error: the daemon does not answer at http://127.0.0.1:${port} (ECONNREFUSED); is it running? If it is elsewhere, set WATCHER_HTTP_HOST and WATCHER_HTTP_PORT as the daemon has them, or give --api-url URL\n`,
    );
    expect(r.stderr).not.toContain(TOKEN);
  });

  it('gives up after --timeout when the daemon does not answer', async () => {
    const silent = await silentServer();
    try {
      const r = await cli(['events', '--api-url', `http://127.0.0.1:${silent.port}`, '--timeout', '300ms']);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(
        `error: the daemon at http://127.0.0.1:${silent.port} did not answer within 300ms (--timeout)\n`,
      );
    } finally {
      await silent.close();
    }
  });

  it('says when the URL is not the control API, without the URL’s credentials', async () => {
    const r = await cli([
      'events',
      '--api-url',
      `http://user:Url-Pass-31@127.0.0.1:${new URL(apiUrl).port}/x`,
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^error: the daemon at http:\/\/127\.0\.0\.1:\d+\/x refused to list events \(40[14]/,
    );
    expect(r.stderr).not.toContain('Url-Pass-31');
  });
});

describe('answers that are not what the control API says', () => {
  let fake: HttpServer | undefined;
  afterEach(async () => {
    await new Promise<void>((resolve) => (fake ? fake.close(() => resolve()) : resolve()));
    fake = undefined;
  });

  /** A server answering every request with `answer(url)` as JSON; resolves its URL. */
  async function fakeDaemon(answer: (url: URL) => { status: number; text: string }): Promise<string> {
    fake = createHttpServer((req, res) => {
      req.resume();
      const { status, text } = answer(new URL(req.url ?? '/', 'http://x'));
      res.writeHead(status, { 'content-type': 'application/json' }).end(text);
    });
    await new Promise<void>((resolve) => fake?.listen(0, '127.0.0.1', () => resolve()));
    return `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
  }

  it.each([
    ['events', 200, 'null', []],
    ['events', 500, '[]', []],
    ['redeliver', 202, 'null', ['evt_a_completed']],
    ['redeliver', 404, '"event_not_found"', ['evt_a_completed']],
    ['redeliver', 202, '7', ['--since', '1h']],
  ] as const)(
    '%s: a %s answer of JSON %s is one error line and exit 1',
    async (command, status, text, extra) => {
      const url = await fakeDaemon(() => ({ status, text }));
      const r = await cli([command, ...extra, '--api-url', url]);
      expect(r.stderr).toMatch(
        /^error: .* did not answer like the watcher's control API \(\d+, "application\/json"\)/,
      );
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.code).toBe(1);
    },
  );

  it.each([
    [
      'the platform (SB_API_ENDPOINT, not the daemon)',
      '{"status":401,"code":90001,"message":"Unauthorized."}',
    ],
    ['a proxy in front of something else', '{"message":"login required"}'],
  ])('a 401 from %s is not blamed on WATCHER_API_TOKEN', async (_what, text) => {
    const url = await fakeDaemon(() => ({ status: 401, text }));
    for (const env of [{}, { WATCHER_API_TOKEN: TOKEN }] as Array<Record<string, string>>) {
      const r = await cli(['events', '--api-url', url], env);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(
        `error: ${url} did not answer like the watcher's control API (401, "application/json"); check --api-url\n`,
      );
    }
  });

  it.each([
    ['an item that is null', '{"items":[null],"next_cursor":null}'],
    ['a delivery that is null', '{"items":[{"id":"evt_a","deliveries":[null]}],"next_cursor":null}'],
    ['deliveries that are not a list', '{"items":[{"id":"evt_a","deliveries":"all"}],"next_cursor":null}'],
  ])('events: %s is one error line and exit 1, as a table or as JSON', async (_what, text) => {
    const url = await fakeDaemon(() => ({ status: 200, text }));
    for (const io of [[], ['--json']]) {
      const r = await cli(['events', ...io, '--api-url', url]);
      expect(r.stderr).toMatch(/^error: .* answered GET \/v1\/events with an item that is not an event\n$/);
      expect(r.code).toBe(1);
    }
  });

  it('events --all: stops when the cursors go round, A then B then A again', async () => {
    let asked = 0;
    const url = await fakeDaemon((req) => {
      asked++;
      // Ends by itself after 50 pages, so that a regression fails on the count, not by hanging.
      const next = asked >= 50 ? null : req.searchParams.get('cursor') === 'A' ? 'B' : 'A';
      return { status: 200, text: JSON.stringify({ items: [], next_cursor: next }) };
    });
    const r = await cli(['events', '--all', '--api-url', url]);
    expect(r.stderr).toMatch(/answered a page it had answered before\n$/);
    expect(r.code).toBe(1);
    expect(asked).toBe(3);
  });
});

describe('usage errors exit 2 before the daemon is asked', () => {
  const cases: Array<[string[], RegExp]> = [
    [['events', 'extra'], /events takes no arguments/],
    [['events', '--limit', '0'], /--limit: expected a whole number from 1 to 1000/],
    [['events', '--limit', '1001'], /--limit/],
    [['events', '--status', 'lost'], /--status: expected one of pending, delivered, failed, gone/],
    [['events', '--since', 'yesterday'], /--since: expected an RFC 3339 time/],
    [['events', '--since', '120'], /--since/],
    [['events', '--export', 'a/b'], /--export: expected an export id/],
    [['events', '--timeout', 'soon'], /--timeout/],
    [['events', '--api-url', 'ftp://127.0.0.1'], /--api-url: expected/],
    [['events', '--endpoint', 'x'], /events does not take --endpoint/],
    [['redeliver'], /redeliver needs webhook ids/],
    [['redeliver', 'evt.a'], /"evt\.a" is not a webhook id/],
    [['redeliver', 'evt_a_completed', '--since', '1h'], /webhook ids or --since, not both/],
    [['redeliver', '--status', 'failed'], /--status goes with --since/],
    [['redeliver', '--since', '1h', '--webhook-url', HOOK_LABEL], /--webhook-url goes with webhook ids/],
    [['redeliver', '--since', '1h', '--status', 'done'], /--status: expected one of/],
    [['redeliver', '--all'], /redeliver does not take --all/],
  ];

  it.each(cases)('%j', async (args, message) => {
    // In process: a usage error is found before any I/O (the spawned program is checked below).
    let stderr = '';
    const code = await runCli(
      args.includes('--api-url') ? args : withApi(...args),
      { WATCHER_API_TOKEN: TOKEN },
      {
        stderr: { write: (text: string) => (stderr += text) },
      },
    );
    expect(code).toBe(2);
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/^usage: /);
    expect(stderr).toMatch(message);
    expect(registry.calls).toEqual([]);
  });

  it.each([
    'user:Api-Pass-93@127.0.0.1:8080',
    'http//user:Api-Pass-93@127.0.0.1:8080',
    'http:/user:Api-Pass-93@127.0.0.1:8080?x',
  ])('a wrong --api-url %j is a usage error that never prints its password', async (url) => {
    let stderr = '';
    const code = await runCli(
      ['events', '--api-url', url],
      {},
      {
        stderr: { write: (text: string) => (stderr += text) },
      },
    );
    expect(code).toBe(2);
    expect(stderr).toMatch(/^usage: --api-url: expected the daemon's control API base URL/);
    expect(stderr).not.toContain('Api-Pass-93');
  });

  it('the program itself exits 2 with one usage line', async () => {
    for (const args of [withApi('redeliver'), withApi('events', '--limit', '0')]) {
      const r = await cli(args);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^usage: [^\n]+\n$/);
    }
    expect(registry.calls).toEqual([]);
  });

  it('WATCHER_HTTP_PORT=0 names --api-url', async () => {
    const r = await cli(['events'], { WATCHER_HTTP_PORT: '0' });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/WATCHER_HTTP_PORT is 0 .*--api-url/);
  });
});

describe('help', () => {
  it('lists both commands, and each has its own help, without reading the environment', async () => {
    const broken = { CREDENTIALS_DIRECTORY: '/nonexistent/credentials', WATCHER_HTTP_PORT: 'x' };
    const main = await cli(['--help'], broken);
    expect(main.code).toBe(0);
    expect(main.stdout).toMatch(/^ {2}events\s+the events a running daemon stored/m);
    expect(main.stdout).toMatch(/^ {2}redeliver\s+ask a running daemon to deliver events again/m);
    for (const [command, flags] of [
      ['events', ['--export', '--status', '--since', '--limit', '--all', '--json', '--api-url', '--timeout']],
      ['redeliver', ['--webhook-url', '--since', '--status', '--api-url', '--timeout']],
    ] as const) {
      const r = await cli([command, '--help'], broken);
      expect(r.code).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(new RegExp(`^Usage: sbg-export-watcher ${command} `));
      for (const flag of flags) expect(r.stdout).toContain(flag);
      expect(r.stdout).toContain('WATCHER_API_TOKEN');
    }
  });
});

describe('parsing', () => {
  it('--since takes RFC 3339 or a duration with a unit back from now', () => {
    const now = Date.UTC(2026, 10, 22, 12, 0, 0);
    expect(parseSince('2026-11-22T05:00:00Z', now)).toBe('2026-11-22T05:00:00.000Z');
    expect(parseSince('2026-11-22T06:00:00+01:00', now)).toBe('2026-11-22T05:00:00.000Z');
    expect(parseSince('2h', now)).toBe('2026-11-22T10:00:00.000Z');
    expect(parseSince('7d', now)).toBe('2026-11-15T12:00:00.000Z');
    expect(parseSince('90s', now)).toBe('2026-11-22T11:58:30.000Z');
    for (const bad of ['', '2', 'h', '-2h', '2026-11-22', 'now'])
      expect(() => parseSince(bad, now)).toThrow(/--since/);
  });

  it('--since: a time an offset carries out of years 0000 to 9999 is sent as the daemon reads it', () => {
    const now = Date.UTC(2026, 10, 22, 12, 0, 0);
    for (const edge of ['0000-01-01T00:00:00+01:00', '9999-12-31T23:30:00-01:00']) {
      const sent = parseSince(edge, now);
      expect(parseRfc3339(sent)).toBe(parseRfc3339(edge));
    }
    expect(parseSince('0000-01-01T00:00:00Z', now)).toBe('0000-01-01T00:00:00.000Z');
  });

  it('redeliver: ids are de-duplicated, --webhook-url kept as given', () => {
    expect(redeliverPlan(['evt_a_failed', 'evt_a_failed', 'evt_b_lost'], {}, 0)).toEqual({
      kind: 'ids',
      ids: ['evt_a_failed', 'evt_b_lost'],
    });
    expect(redeliverPlan(['evt_a_failed'], { 'webhook-url': HOOK_URL }, 0)).toEqual({
      kind: 'ids',
      ids: ['evt_a_failed'],
      endpoint: HOOK_URL,
    });
    expect(redeliverPlan([], { since: '2026-11-22T05:00:00Z', status: 'gone' }, 0)).toEqual({
      kind: 'since',
      since: '2026-11-22T05:00:00.000Z',
      status: 'gone',
    });
  });
});

/** A server that accepts connections and never answers. */
async function silentServer(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
