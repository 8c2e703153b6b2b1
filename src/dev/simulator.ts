/**
 * A local simulator of the Seven Bridges export API (docs/platform-api.md), served with `node:http` on
 * loopback. Users try their integrations against it (`sbg-export-watcher simulate`); the project's
 * tests and benchmark run the daemon against it over real HTTP.
 *
 * What it simulates, under `/v2`:
 *   GET  /storage/exports/{id}           one export; unknown id → 404, code 9008
 *   GET  /storage/exports                list: volume, state (repeatable or comma-separated, up to 4),
 *                                        offset, limit (1..100, default 50), fields (`_all`, or a comma
 *                                        list of keys; default href/id/state); `href`, `links`
 *                                        (rel next/prev) and the `x-total-matching-query` header.
 *                                        Exports are listed oldest first, so offsets stay stable while
 *                                        new exports are started.
 *   POST /storage/exports[?copy_only=]   start one export → 201 with the export object
 *   POST /bulk/storage/exports/get       {"export_ids": [...]} (≤ 100) → {"items": [{resource}|{error}]}
 *   POST /bulk/storage/exports/create    {"items": [...]} (≤ 100) → {"items": [{resource}|{error}]}
 *   GET  /storage/imports/{id}           one import; unknown id → 404, code 9008
 *   GET  /storage/imports                list, as exports: volume (the source volume), project, state,
 *                                        offset, limit, fields; `links` (rel next/prev)
 *   POST /storage/imports                start one import → 201 with the import object
 *   POST /bulk/storage/imports/get       {"import_ids": [...]} (≤ 100) → {"items": [{resource}|{error}]}
 *   GET  /rate_limit                     {"rate": {...}, "instance_limit": {...}}; spends no quota
 * `DELETE /storage/exports/{id}` answers 405: "Export jobs cannot be deleted." The singular
 * `/bulk/storage/export/get` that appears in some doc headings is not served (404), so clients are
 * held to the plural path every official client uses.
 *
 * Each export runs PENDING for `pendingMs`, RUNNING for `runningMs`, then ends COMPLETED (with
 * `result`, a File-like object) or FAILED (with `error`: 409 / 9107 "Location on volume already
 * contains a file."). Imports (docs/platform-api.md §5) run the same way, with the same timing,
 * outcomes and faults; a FAILED import carries 409 / 9107 "A file with this name already exists in
 * the destination." (the simulator's choice: the platform's code for it is not documented). Export
 * and import ids come from one generator and never repeat across kinds. An id of one kind asked on
 * the other kind's routes is unknown there (404 / 9008), and counted in `stats().wrongKindIds`.
 * A job's state is computed from the clock (`now` option) on every read, so tests
 * move time by changing the clock, never by sleeping. Outcomes and durations come from a seeded
 * PRNG (mulberry32); shuffling and faults each use their own stream of the same seed, so turning
 * faults on does not change which exports fail.
 *
 * Starting an export validates the body: `source.file` and `destination.volume` (`owner/name`) and
 * `destination.location` are required (400, code 90000, when missing); `properties` are checked
 * (9022 canned ACL, 9023 SSE algorithm, 9024 storage class). A file moved by an earlier export
 * (started without `copy_only=true`, not FAILED) is an alias now and "cannot be exported again":
 * 403, code 9006. A destination that an earlier export, not FAILED, is writing or has written
 * (it need not have finished yet), with `overwrite: false`, is accepted and the new export later
 * ends FAILED with 9107 (when the platform decides this is not documented).
 *
 * Auth: `X-SBG-Auth-Token: <t>` or `Authorization: Bearer <t>`. With the `token` option the token
 * must equal it; without, any non-empty token passes. Otherwise 401, code 90001; no quota spent.
 *
 * Quota model: one fixed window for the single simulated user, shared by every token. A window
 * opens at the first request that spends quota (or at `consume(n)`) after the previous window
 * ended, and lasts `windowMs`; it is not aligned to the clock. Every authenticated `/v2` request
 * spends one, except `GET /rate_limit`, 401s, 429s and maintenance 503s. Unknown routes, 405s,
 * 400s, 413s and fault 500s and truncated answers do spend (they reached the application). When
 * none is left the answer is 429, code 1000. Every answer carries `X-RateLimit-Limit`,
 * `X-RateLimit-Remaining`, `X-RateLimit-Reset` (epoch SECONDS, rounded up, when the current window
 * ends; without an open window, when a window opened now would end) and `X-Request-Id`.
 *
 * Fault model: decided per request with the seeded PRNG, on the export routes only (`/rate_limit`
 * and the admin routes stay reliable, so a client can always read its quota):
 *   slow        (slowRate, independent of the rest) waits `slowMs` of real time before answering
 *   maintenance (maintenanceRate, or any request before `maintenanceUntil`) 503 `{"code": 0}`,
 *               checked before auth and quota, spends nothing
 *   error       (errorRate) 500 with a platform error body, after the quota is spent
 *   errorId     (errorIds) the same 500, for every get or bulk get that names one of these ids:
 *               not drawn, so a client can be shown one job that fails its whole call
 *   truncated   (truncateRate) a 2xx whose Content-Length promises the whole body but only half is
 *               written before the connection is destroyed
 *   malformed   (malformedRate) a 2xx that is a complete HTTP message whose JSON is cut in half
 * One draw picks at most one of maintenance/error/truncated/malformed, in that order of priority.
 * Truncated and malformed apply only to answers that would have been 2xx, and are counted only then.
 *
 * Admin routes (no auth, no quota, not counted in the stats, never faulted), for people trying
 * integrations by hand:
 *   GET  /_simulator/stats     the counters of `stats()` as JSON
 *   POST /_simulator/exports   {"count": N, "outcome"?: "COMPLETED"|"FAILED", "pendingMs"?, "runningMs"?}
 *                              → 201 {"ids": [...]}
 *   POST /_simulator/imports   the same, for imports
 *   GET  /_simulator/faults    the current fault options
 *   POST /_simulator/faults    replace the fault options (same shape as `FaultOptions`)
 *
 * Generic codes follow the platform's table (docs/platform-api.md §6) where it gives one:
 * 400 → 90000, 401 → 90001, 403 → 90002, 404 route → 90003, 405 → 90006, 413 → 90000,
 * 500 → 90004.
 */
import { randomUUID } from 'node:crypto';
import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { isPlainObject } from '../shared/values.js';

/** How long a connection answered for a request the parser refused stays open for its answer to be read. */
const CLIENT_ERROR_LINGER_MS = 100;

export type ExportState = 'PENDING' | 'RUNNING' | 'COMPLETED' | 'FAILED';
export type ExportOutcome = 'COMPLETED' | 'FAILED';
/** The two kinds of job the simulator serves. */
export type SimJobKind = 'export' | 'import';
export type FaultKind = 'maintenance' | 'error' | 'errorId' | 'truncated' | 'malformed' | 'slow';
/**
 * Route names used in `stats().requests`; `other` is an unknown route or a wrong method. The
 * export routes keep their names of old; the import routes are prefixed `import_`.
 */
export type RouteName =
  | 'get'
  | 'list'
  | 'bulk_get'
  | 'create'
  | 'bulk_create'
  | 'import_get'
  | 'import_list'
  | 'import_bulk_get'
  | 'import_create'
  | 'rate_limit'
  | 'other';

export interface FaultOptions {
  /** Fraction of requests answered 503 with body {"code": 0} (maintenance). */
  maintenanceRate?: number;
  /** Epoch ms: every export-route request before it gets the maintenance 503. */
  maintenanceUntil?: number;
  /** Fraction answered 500 with a platform error body. */
  errorRate?: number;
  /**
   * Job ids the platform cannot answer for: a single get of one, or a bulk get naming one, is
   * answered 500 (after the quota is spent), whatever else the call asks. At most 1,000.
   */
  errorIds?: string[];
  /** Fraction answered 2xx with a body cut off mid-JSON, then the connection ends. */
  truncateRate?: number;
  /** Fraction answered 2xx with a complete HTTP message whose JSON body is cut off. */
  malformedRate?: number;
  /** Fraction delayed by `slowMs` before answering. */
  slowRate?: number;
  /** Default 2000. */
  slowMs?: number;
}

export interface SimulatorOptions {
  /** Default '127.0.0.1'. */
  host?: string;
  /** Default 0 (a free port). */
  port?: number;
  /** When set, requests must carry it; otherwise any non-empty token is accepted. */
  token?: string;
  /** Seed this many exports at construction (outcomes per `failRate`). */
  exports?: number;
  /** Seed this many imports at construction, after the exports. */
  imports?: number;
  /** Fixed-window quota; default 1000 per 300_000 ms. */
  quota?: {
    limit?: number;
    windowMs?: number;
    /** Another client of the same user spends this many requests as each window opens. */
    otherClientPerWindow?: number;
  };
  /** Random duration ranges [min, max] of each phase; defaults [1000, 5000] and [2000, 20000]. */
  timing?: { pendingMs?: [number, number]; runningMs?: [number, number] };
  /** Fraction of exports that end FAILED; default 0.2. */
  failRate?: number;
  /** Seeds the PRNG for timings, outcomes, ids, shuffle and faults; default a random seed. */
  seed?: number;
  /** Default true: bulk answers come in an order that need not match the request. */
  shuffle?: boolean;
  /** Default true; false makes both bulk routes answer 405 (clients must fall back to single gets). */
  bulk?: boolean;
  faults?: FaultOptions;
  /** Clock (epoch ms); default Date.now. */
  now?: () => number;
  /** Optional: one debug line per request, errors at error. */
  logger?: Logger;
  /**
   * Called as each `/v2` request arrives (admin routes excepted), before faults, auth and quota:
   * which route, which token (as sent; undefined when none), and when (the `now` clock). Tests
   * tell replicas apart by their tokens this way. What it throws is ignored.
   */
  onRequest?: (request: SimulatedRequest) => void;
}

/** What `onRequest` is told about a request. */
export interface SimulatedRequest {
  route: RouteName;
  token: string | undefined;
  at: number;
}

/** Options of a new import: its id, outcome and timing as for an export; where from and to. */
export interface CreateImportOptions {
  id?: string;
  outcome?: ExportOutcome;
  pendingMs?: number;
  runningMs?: number;
  /** Defaults: 'sim-user/sim-volume', 'imports/<n>.vcf', 'sim-user/sim-project'. */
  volume?: string;
  location?: string;
  project?: string;
}

export interface CreateExportOptions {
  id?: string;
  outcome?: ExportOutcome;
  pendingMs?: number;
  runningMs?: number;
  /** Defaults: a generated file id, 'sim-user/sim-volume', 'exports/<n>.vcf'. */
  file?: string;
  volume?: string;
  location?: string;
}

export interface SimulatorStats {
  /** Requests by route, every answer counted (401, 429 and faults included; admin routes not). */
  requests: Record<string, number>;
  /** Answers by HTTP status. */
  statuses: Record<string, number>;
  /** Ids in each export bulk-get call that reached the handler (over-100 calls included, faulted not). */
  bulkIdsPerCall: number[];
  /** The same, for import bulk-get calls. */
  importBulkIdsPerCall: number[];
  /** The most ids in one bulk-get call, of either kind. */
  maxIdsPerBulkCall: number;
  /** Ids asked about on a route of one kind that the simulator holds as the other kind. */
  wrongKindIds: number;
  /** 429s served. */
  rateLimited: number;
  /** Ids looked up by single get and bulk get. */
  idsChecked: number;
  /** Ids looked up after their terminal state had already been served intact once by a get route. */
  checksAfterTerminal: number;
  faults: Record<FaultKind, number>;
  /** Requests that spent quota. */
  quotaSpent: number;
  /** Exports the simulator holds. */
  exports: number;
  /** Imports the simulator holds. */
  imports: number;
}

/** The platform's error body (docs/platform-api.md §6). */
export interface PlatformError {
  status: number;
  code: number;
  message: string;
  more_info: string;
}

export interface ImportObject {
  href: string;
  id: string;
  state: ExportState;
  source: { volume: string; location: string };
  /** As started: into a project's root, or into a folder (`parent`). */
  destination: { project: string; name: string } | { parent: string; name: string };
  /** Echoed when the start gave it. */
  preserve_folder_structure?: boolean;
  overwrite: boolean;
  started_on: string | null;
  finished_on: string | null;
  result: Record<string, unknown> | null;
  error: PlatformError | null;
}

export interface ExportObject {
  href: string;
  id: string;
  state: ExportState;
  source: { file: string };
  destination: { volume: string; location: string };
  overwrite: boolean;
  properties: Record<string, unknown>;
  started_on: string | null;
  finished_on: string | null;
  result: Record<string, unknown> | null;
  error: PlatformError | null;
}

const MORE_INFO = 'https://docs.sevenbridges.com/reference/api-status-codes';
const MAX_BODY_BYTES = 1024 * 1024;
/** A client that keeps sending past this is not draining toward a 413; it is cut off. */
const MAX_DRAIN_BYTES = 64 * 1024 * 1024;
const MAX_BULK = 100;
const STATES: readonly ExportState[] = ['PENDING', 'RUNNING', 'COMPLETED', 'FAILED'];
/** The job routes of both kinds: the ones faults apply to. */
const EXPORT_ROUTES: ReadonlySet<RouteName> = new Set([
  'get',
  'list',
  'bulk_get',
  'create',
  'bulk_create',
  'import_get',
  'import_list',
  'import_bulk_get',
  'import_create',
]);
const FAULT_KINDS: readonly FaultKind[] = [
  'maintenance',
  'error',
  'errorId',
  'truncated',
  'malformed',
  'slow',
];
/** `errorIds` holds at most this many ids, each of at most `MAX_ERROR_ID_LENGTH` characters. */
export const MAX_ERROR_IDS = 1000;
export const MAX_ERROR_ID_LENGTH = 128;
const ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const SSE_ALGORITHMS: readonly unknown[] = ['AES256', 'aws:kms', null];
const STORAGE_CLASSES: readonly unknown[] = [
  'STANDARD',
  'REDUCED_REDUNDANCY',
  'STANDARD_IA',
  'ONEZONE_IA',
  'INTELLIGENT_TIERING',
  'GLACIER',
  'GLACIER_IR',
  'DEEP_ARCHIVE',
];
const CANNED_ACLS: readonly unknown[] = [
  null,
  'private',
  'public-read',
  'public-read-write',
  'authenticated-read',
  'aws-exec-read',
  'bucket-owner-read',
  'bucket-owner-full-control',
];
/**
 * The longest file id, volume id, location or name a start takes (S3's key limit): every answer
 * about the job repeats them, so one huge value must not make answers of hundreds of megabytes.
 */
const MAX_NAME_BYTES = 1024;
/** Keys of a start's `properties` at most, and their longest. */
const MAX_PROPERTIES = 32;
const MAX_PROPERTY_KEY = 128;
/** The longest wait a node timer takes. */
const MAX_TIMER_MS = 2_147_483_647;

function tooLong(text: string, max = MAX_NAME_BYTES): boolean {
  return text.length > max || Buffer.byteLength(text) > max;
}

const DEFAULT_PROPERTIES = { sse_algorithm: 'AES256', aws_storage_class: 'STANDARD', aws_canned_acl: null };
const LOCATION_TAKEN: Omit<PlatformError, 'more_info'> = {
  status: 409,
  code: 9107,
  message: 'Location on volume already contains a file.',
};
/** A FAILED import's error: the simulator's choice (see the header). */
const NAME_TAKEN: Omit<PlatformError, 'more_info'> = {
  status: 409,
  code: 9107,
  message: 'A file with this name already exists in the destination.',
};

/**
 * The File object a finished job names in `result`: the exported file on the volume, or the
 * imported file in its project (created when the import finished).
 */
function fileObject(
  rec: ExportRecord,
  base: string,
  { name, project, createdAt }: { name: string; project: string; createdAt: number },
): Record<string, unknown> {
  return {
    href: `${base}/files/${rec.file}`,
    id: rec.file,
    name,
    size: rec.size,
    project,
    parent: null,
    type: 'file',
    created_on: iso(createdAt),
    modified_on: iso(rec.finishedAt),
    storage: { type: 'VOLUME', volume: rec.volume, location: rec.location },
    origin: {},
    tags: [],
    metadata: {},
  };
}

/** mulberry32: a small, fast, seedable PRNG; good enough for test schedules, not for secrets. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface ExportRecord {
  id: string;
  /** Absent on exports (the records of old); `import` on imports. */
  kind?: 'import';
  /** For an import: the project the file lands in; `location` and `volume` are its source. */
  project?: string;
  file: string;
  volume: string;
  location: string;
  overwrite: boolean;
  properties: Record<string, unknown>;
  createdAt: number;
  /** When PENDING ends and RUNNING begins. */
  runningAt: number;
  /** When RUNNING ends in the outcome. */
  finishedAt: number;
  outcome: ExportOutcome;
  failure: Omit<PlatformError, 'more_info'>;
  size: number;
  /** Set once a get route delivered this export's terminal state intact. */
  terminalServed: boolean;
}

function stateAt(rec: ExportRecord, now: number): ExportState {
  if (now < rec.runningAt) return 'PENDING';
  if (now < rec.finishedAt) return 'RUNNING';
  return rec.outcome;
}

function isTerminal(state: ExportState): boolean {
  return state === 'COMPLETED' || state === 'FAILED';
}

/** ISO 8601 without milliseconds, as the platform writes them (`2023-07-14T12:34:56Z`). */
function iso(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function platformError(status: number, code: number, message: string): PlatformError {
  return { status, code, message, more_info: MORE_INFO };
}

function describe(value: unknown): string {
  if (value === undefined) return 'undefined';
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function requireOption(ok: boolean, option: string, expected: string, got: unknown): void {
  if (!ok) throw new TypeError(`Simulator option \`${option}\` must be ${expected}; got ${describe(got)}`);
}

function isFraction(value: unknown): boolean {
  return typeof value === 'number' && value >= 0 && value <= 1;
}

/** `n` jobs made by `create`, after checking `n`. */
function repeatCreate(what: string, n: number, create: () => string): string[] {
  if (!isNonNegativeInteger(n)) throw new TypeError(`${what}: n must be a non-negative integer; got ${n}`);
  return Array.from({ length: n }, create);
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

function isRange(value: unknown): value is [number, number] {
  return (
    Array.isArray(value) &&
    value.length === 2 &&
    typeof value[0] === 'number' &&
    typeof value[1] === 'number' &&
    Number.isFinite(value[0]) &&
    Number.isFinite(value[1]) &&
    value[0] >= 0 &&
    value[0] <= value[1]
  );
}

/** Every fault option, by name: one not listed (a typo, `bulk`) would be taken and do nothing. */
const FAULT_KEYS: ReadonlySet<string> = new Set<keyof FaultOptions>([
  'maintenanceRate',
  'maintenanceUntil',
  'errorRate',
  'errorIds',
  'truncateRate',
  'malformedRate',
  'slowRate',
  'slowMs',
]);

function validateFaults(faults: FaultOptions, prefix: string): FaultOptions {
  requireOption(isPlainObject(faults), prefix, 'an object', faults);
  for (const key of Object.keys(faults)) {
    requireOption(FAULT_KEYS.has(key), `${prefix}.${key}`, `one of ${[...FAULT_KEYS].join(', ')}`, key);
  }
  for (const key of ['maintenanceRate', 'errorRate', 'truncateRate', 'malformedRate', 'slowRate'] as const) {
    const value = faults[key];
    if (value !== undefined)
      requireOption(isFraction(value), `${prefix}.${key}`, 'a number from 0 to 1', value);
  }
  if (faults.errorIds !== undefined) {
    const ids: unknown = faults.errorIds;
    requireOption(
      Array.isArray(ids) &&
        ids.length <= MAX_ERROR_IDS &&
        ids.every((id) => typeof id === 'string' && id !== '' && id.length <= MAX_ERROR_ID_LENGTH),
      `${prefix}.errorIds`,
      `an array of at most ${MAX_ERROR_IDS} ids (non-empty strings of at most ${MAX_ERROR_ID_LENGTH} characters)`,
      ids,
    );
  }
  if (faults.maintenanceUntil !== undefined) {
    requireOption(
      Number.isFinite(faults.maintenanceUntil),
      `${prefix}.maintenanceUntil`,
      'epoch milliseconds',
      faults.maintenanceUntil,
    );
  }
  if (faults.slowMs !== undefined) {
    // A timer's longest wait: past it, node would fire at once instead.
    requireOption(
      isNonNegativeInteger(faults.slowMs) && faults.slowMs <= MAX_TIMER_MS,
      `${prefix}.slowMs`,
      `a whole number of milliseconds from 0 to ${MAX_TIMER_MS} (about 24.8 days)`,
      faults.slowMs,
    );
  }
  return { ...faults, ...(faults.errorIds ? { errorIds: [...faults.errorIds] } : {}) };
}

/**
 * One fixed window for the single simulated user. A window opens at the first spend after the
 * previous one ended, and lasts `windowMs`.
 */
class FixedWindowQuota {
  readonly limit: number;
  readonly windowMs: number;
  /** Exists while a window is open: when it opened. */
  #windowStart: number | undefined;
  #used = 0;
  /** Requests another client of the same user spends as each window opens. */
  readonly otherClientPerWindow: number;

  constructor(limit: number, windowMs: number, otherClientPerWindow = 0) {
    this.limit = limit;
    this.windowMs = windowMs;
    this.otherClientPerWindow = otherClientPerWindow;
  }

  #open(now: number): void {
    if (this.#windowStart !== undefined) return;
    this.#windowStart = now;
    this.#used = Math.min(this.limit, this.otherClientPerWindow);
  }

  #roll(now: number): void {
    if (this.#windowStart !== undefined && now >= this.#windowStart + this.windowMs) {
      this.#windowStart = undefined;
      this.#used = 0;
    }
  }

  snapshot(now: number): { limit: number; remaining: number; resetMs: number } {
    this.#roll(now);
    return {
      limit: this.limit,
      remaining: this.limit - this.#used,
      resetMs: (this.#windowStart ?? now) + this.windowMs,
    };
  }

  trySpend(now: number): boolean {
    this.#roll(now);
    this.#open(now);
    if (this.#used >= this.limit) return false;
    this.#used += 1;
    return true;
  }

  consume(now: number, n: number): void {
    this.#roll(now);
    if (n === 0) return;
    this.#open(now);
    this.#used = Math.min(this.limit, this.#used + n);
  }
}

type RouteMatch =
  | { kind: 'route'; name: Exclude<RouteName, 'other'>; id?: string }
  | { kind: 'method'; allow: string[] }
  | { kind: 'none' };

const API_ROUTES: ReadonlyArray<{
  pattern: RegExp;
  methods: Readonly<Record<string, Exclude<RouteName, 'other'>>>;
}> = [
  { pattern: /^\/v2\/storage\/exports$/, methods: { GET: 'list', POST: 'create' } },
  { pattern: /^\/v2\/storage\/exports\/([^/]+)$/, methods: { GET: 'get' } },
  { pattern: /^\/v2\/bulk\/storage\/exports\/get$/, methods: { POST: 'bulk_get' } },
  { pattern: /^\/v2\/bulk\/storage\/exports\/create$/, methods: { POST: 'bulk_create' } },
  { pattern: /^\/v2\/storage\/imports$/, methods: { GET: 'import_list', POST: 'import_create' } },
  { pattern: /^\/v2\/storage\/imports\/([^/]+)$/, methods: { GET: 'import_get' } },
  { pattern: /^\/v2\/bulk\/storage\/imports\/get$/, methods: { POST: 'import_bulk_get' } },
  { pattern: /^\/v2\/rate_limit$/, methods: { GET: 'rate_limit' } },
];

function matchRoute(method: string, path: string): RouteMatch {
  for (const route of API_ROUTES) {
    const m = route.pattern.exec(path);
    if (!m) continue;
    const name = route.methods[method];
    if (!name) return { kind: 'method', allow: Object.keys(route.methods) };
    if (m[1] === undefined) return { kind: 'route', name };
    try {
      return { kind: 'route', name, id: decodeURIComponent(m[1]) };
    } catch {
      return { kind: 'none' };
    }
  }
  return { kind: 'none' };
}

interface FaultDecision {
  slow: boolean;
  kind: 'maintenance' | 'error' | 'truncated' | 'malformed' | undefined;
}

const NO_FAULT: FaultDecision = { slow: false, kind: undefined };

/** What one request needs while it is answered. */
interface Exchange {
  req: IncomingMessage;
  res: ServerResponse;
  requestId: string;
  /** Absent for admin routes, which are not counted. */
  route: RouteName | undefined;
  fault: FaultDecision;
}

interface SendOptions {
  headers?: Record<string, string>;
  /** Exports whose terminal state this answer carries: marked served if it is delivered intact. */
  served?: readonly ExportRecord[];
}

type BodyResult = { ok: true; value: unknown } | { ok: false; status: number; message: string };

type StartSpec = Pick<ExportRecord, 'file' | 'volume' | 'location' | 'overwrite' | 'properties'>;

function emptyStats(): SimulatorStats {
  const faults = {} as Record<FaultKind, number>;
  for (const kind of FAULT_KINDS) faults[kind] = 0;
  return {
    requests: {},
    statuses: {},
    bulkIdsPerCall: [],
    importBulkIdsPerCall: [],
    maxIdsPerBulkCall: 0,
    wrongKindIds: 0,
    rateLimited: 0,
    idsChecked: 0,
    checksAfterTerminal: 0,
    faults,
    quotaSpent: 0,
    exports: 0,
    imports: 0,
  };
}

export class Simulator {
  readonly seed: number;
  readonly #host: string;
  readonly #port: number;
  readonly #token: string | undefined;
  readonly #quota: FixedWindowQuota;
  readonly #pendingRange: [number, number];
  readonly #runningRange: [number, number];
  readonly #failRate: number;
  readonly #shuffle: boolean;
  readonly #bulk: boolean;
  readonly #now: () => number;
  readonly #log: Logger | undefined;
  readonly #onRequestHook: ((request: SimulatedRequest) => void) | undefined;
  readonly #randExports: () => number;
  readonly #randShuffle: () => number;
  readonly #randFaults: () => number;
  #faults: FaultOptions;
  /** `#faults.errorIds`, for lookups. */
  #errorIds: ReadonlySet<string> = new Set();
  /** Insertion order is creation order, which the list route pages over. */
  readonly #exports = new Map<string, ExportRecord>();
  /** Imports, likewise. Ids never repeat across the two maps. */
  readonly #imports = new Map<string, ExportRecord>();
  /** `volume\nlocation` → the COMPLETED export that put a file there. */
  readonly #occupied = new Map<string, string>();
  /** Files moved to a volume (exported without copy_only, not FAILED): they are aliases now. */
  readonly #movedFiles = new Set<string>();
  #stats: SimulatorStats = emptyStats();
  #generated = 0;
  /** Exists from the first start() on. */
  #server: Server | undefined;
  /** Exists once listening: `http://host:port/v2`. */
  #base: string | undefined;
  #starting: Promise<string> | undefined;
  #closing: Promise<void> | undefined;
  /** Slow answers waiting on a timer; close() releases them at once. */
  readonly #delays = new Map<NodeJS.Timeout, () => void>();

  constructor(options: SimulatorOptions = {}) {
    requireOption(isPlainObject(options), 'options', 'an object', options);
    this.#host = options.host ?? '127.0.0.1';
    requireOption(
      typeof this.#host === 'string' && this.#host !== '',
      'host',
      'a non-empty string',
      options.host,
    );
    this.#port = options.port ?? 0;
    requireOption(
      isNonNegativeInteger(this.#port) && this.#port <= 65535,
      'port',
      'an integer from 0 to 65535',
      options.port,
    );
    if (options.token !== undefined) {
      requireOption(
        typeof options.token === 'string' && options.token !== '',
        'token',
        'a non-empty string',
        options.token,
      );
    }
    this.#token = options.token;
    const limit = options.quota?.limit ?? 1000;
    const windowMs = options.quota?.windowMs ?? 300_000;
    requireOption(
      Number.isInteger(limit) && limit >= 1,
      'quota.limit',
      'a positive integer',
      options.quota?.limit,
    );
    requireOption(
      Number.isInteger(windowMs) && windowMs >= 1,
      'quota.windowMs',
      'a positive integer',
      options.quota?.windowMs,
    );
    const other = options.quota?.otherClientPerWindow ?? 0;
    if (!isNonNegativeInteger(other)) {
      throw new TypeError(`quota.otherClientPerWindow must be a non-negative integer; got ${other}`);
    }
    this.#quota = new FixedWindowQuota(limit, windowMs, other);
    this.#pendingRange = options.timing?.pendingMs ?? [1000, 5000];
    this.#runningRange = options.timing?.runningMs ?? [2000, 20000];
    requireOption(
      isRange(this.#pendingRange),
      'timing.pendingMs',
      '[min, max] with 0 <= min <= max',
      this.#pendingRange,
    );
    requireOption(
      isRange(this.#runningRange),
      'timing.runningMs',
      '[min, max] with 0 <= min <= max',
      this.#runningRange,
    );
    this.#failRate = options.failRate ?? 0.2;
    requireOption(isFraction(this.#failRate), 'failRate', 'a number from 0 to 1', options.failRate);
    this.seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
    requireOption(Number.isInteger(this.seed), 'seed', 'an integer', options.seed);
    this.#randExports = mulberry32(this.seed);
    this.#randShuffle = mulberry32(this.seed ^ 0x9e3779b9);
    this.#randFaults = mulberry32(this.seed ^ 0x85ebca6b);
    this.#shuffle = options.shuffle ?? true;
    this.#bulk = options.bulk ?? true;
    this.#faults = validateFaults(options.faults ?? {}, 'faults');
    this.#errorIds = new Set(this.#faults.errorIds);
    this.#now = options.now ?? Date.now;
    requireOption(typeof this.#now === 'function', 'now', 'a function returning epoch ms', options.now);
    this.#log = options.logger;
    this.#onRequestHook = options.onRequest;
    const seeded = options.exports ?? 0;
    requireOption(isNonNegativeInteger(seeded), 'exports', 'a non-negative integer', options.exports);
    this.createExports(seeded);
    const seededImports = options.imports ?? 0;
    requireOption(isNonNegativeInteger(seededImports), 'imports', 'a non-negative integer', options.imports);
    this.createImports(seededImports);
  }

  /** Resolves the base URL `http://127.0.0.1:<port>/v2`. Idempotent. */
  start(): Promise<string> {
    if (this.#closing) return Promise.reject(new Error('Simulator: start() after close()'));
    this.#starting ??= new Promise<string>((resolve, reject) => {
      const server = createServer((req, res) => this.#onRequest(req, res));
      server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) =>
        this.#onClientError(err, socket),
      );
      this.#server = server;
      server.once('error', reject);
      server.listen(this.#port, this.#host, () => {
        server.off('error', reject);
        const { port } = server.address() as AddressInfo;
        const host = this.#host.includes(':') ? `[${this.#host}]` : this.#host;
        this.#base = `http://${host}:${port}/v2`;
        this.#log?.info({ baseUrl: this.#base, seed: this.seed }, 'simulator listening');
        resolve(this.#base);
      });
    });
    return this.#starting;
  }

  /** Idempotent: the second call returns the first call's promise. Ends keep-alive sockets too. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#starting?.catch(() => undefined);
      for (const [timer, release] of this.#delays) {
        clearTimeout(timer);
        release();
      }
      this.#delays.clear();
      const server = this.#server;
      if (!server?.listening) return;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    })();
    return this.#closing;
  }

  get baseUrl(): string {
    if (this.#base === undefined) throw new Error('Simulator: baseUrl is known only after start()');
    return this.#base;
  }

  /** Adds one export, created now; returns its id. Spends no quota. */
  createExport(opts: CreateExportOptions = {}): string {
    const now = this.#now();
    const id = this.#newJobId('createExport', opts);
    const rec = this.#addRecord(
      id,
      {
        file: opts.file ?? this.#newFileId(),
        volume: opts.volume ?? 'sim-user/sim-volume',
        location: opts.location ?? `exports/${this.#generated}.vcf`,
        overwrite: false,
        properties: { ...DEFAULT_PROPERTIES },
      },
      now,
      opts,
    );
    return rec.id;
  }

  createExports(n: number, opts: Omit<CreateExportOptions, 'id'> = {}): string[] {
    return repeatCreate('createExports', n, () => this.createExport({ ...opts, id: undefined }));
  }

  /**
   * Checks what both kinds of job are created from, and counts the job: the id (given, or a new
   * one; unique across kinds), its phase times and its outcome. `what` names the caller in errors.
   */
  #newJobId(what: string, opts: CreateImportOptions | CreateExportOptions): string {
    const id = opts.id ?? this.#newExportId();
    if (typeof id !== 'string' || id === '') throw new TypeError(`${what}: id must be a non-empty string`);
    if (this.#exports.has(id) || this.#imports.has(id)) throw new Error(`${what}: ${id} already exists`);
    for (const key of ['pendingMs', 'runningMs'] as const) {
      const value = opts[key];
      if (value !== undefined && !(Number.isFinite(value) && value >= 0)) {
        throw new TypeError(`${what}: ${key} must be a non-negative number; got ${describe(value)}`);
      }
    }
    if (opts.outcome !== undefined && opts.outcome !== 'COMPLETED' && opts.outcome !== 'FAILED') {
      throw new TypeError(`${what}: outcome must be COMPLETED or FAILED; got ${describe(opts.outcome)}`);
    }
    this.#generated += 1;
    return id;
  }

  /** Adds one import, created now; returns its id. Spends no quota. */
  createImport(opts: CreateImportOptions = {}): string {
    const now = this.#now();
    const id = this.#newJobId('createImport', opts);
    const location = opts.location ?? `imports/${this.#generated}.vcf`;
    return this.#addImport(
      id,
      {
        volume: opts.volume ?? 'sim-user/sim-volume',
        location,
        project: opts.project ?? 'sim-user/sim-project',
        name: location.slice(location.lastIndexOf('/') + 1),
        overwrite: false,
      },
      now,
      opts,
    ).id;
  }

  createImports(n: number, opts: Omit<CreateImportOptions, 'id'> = {}): string[] {
    return repeatCreate('createImports', n, () => this.createImport({ ...opts, id: undefined }));
  }

  /** The state of an export or an import. */
  stateOf(id: string): ExportState | undefined {
    const rec = this.#exports.get(id) ?? this.#imports.get(id);
    return rec ? stateAt(rec, this.#now()) : undefined;
  }

  /** When the job reaches (or reached) its terminal state, epoch ms; exact, unlike `finished_on`. */
  finishedAt(id: string): number | undefined {
    return (this.#exports.get(id) ?? this.#imports.get(id))?.finishedAt;
  }

  /** The kind of a job the simulator holds. */
  kindOf(id: string): SimJobKind | undefined {
    return this.#exports.has(id) ? 'export' : this.#imports.has(id) ? 'import' : undefined;
  }

  /** Spends n requests of the current window, as another client of the same user would. */
  consume(n: number): void {
    if (!isNonNegativeInteger(n)) throw new TypeError(`consume: n must be a non-negative integer; got ${n}`);
    this.#quota.consume(this.#now(), n);
  }

  /** Replaces the fault options (it does not merge): `setFaults({})` turns every fault off. */
  setFaults(faults: FaultOptions): void {
    this.#faults = validateFaults(faults, 'faults');
    this.#errorIds = new Set(this.#faults.errorIds);
  }

  stats(): SimulatorStats {
    const s = this.#stats;
    return {
      ...s,
      requests: { ...s.requests },
      statuses: { ...s.statuses },
      bulkIdsPerCall: [...s.bulkIdsPerCall],
      importBulkIdsPerCall: [...s.importBulkIdsPerCall],
      faults: { ...s.faults },
      exports: this.#exports.size,
      imports: this.#imports.size,
    };
  }

  /** Zeroes the counters. Which exports have had their terminal state served is kept. */
  resetStats(): void {
    this.#stats = emptyStats();
  }

  // ---------------------------------------------------------------------------------------------
  // Exports

  #newExportId(): string {
    for (;;) {
      let id = '';
      for (let i = 0; i < 32; i++) id += ID_ALPHABET[Math.floor(this.#randExports() * ID_ALPHABET.length)];
      if (!this.#exports.has(id) && !this.#imports.has(id)) return id;
    }
  }

  #newFileId(): string {
    let id = '';
    for (let i = 0; i < 24; i++) id += Math.floor(this.#randExports() * 16).toString(16);
    return id;
  }

  #between([min, max]: [number, number]): number {
    return min + Math.floor(this.#randExports() * (max - min + 1));
  }

  #addRecord(
    id: string,
    spec: StartSpec,
    now: number,
    opts: { outcome?: ExportOutcome; pendingMs?: number; runningMs?: number; copyOnly?: boolean } = {},
  ): ExportRecord {
    const pendingMs = opts.pendingMs ?? this.#between(this.#pendingRange);
    const runningMs = opts.runningMs ?? this.#between(this.#runningRange);
    const drawnFail = this.#randExports() < this.#failRate;
    const size = 1024 + Math.floor(this.#randExports() * 1e9);
    const place = `${spec.volume}\n${spec.location}`;
    const taken = !spec.overwrite && this.#occupied.has(place);
    const outcome: ExportOutcome = opts.outcome ?? (taken || drawnFail ? 'FAILED' : 'COMPLETED');
    const rec: ExportRecord = {
      id,
      ...spec,
      createdAt: now,
      runningAt: now + pendingMs,
      finishedAt: now + pendingMs + runningMs,
      outcome,
      failure: LOCATION_TAKEN,
      size,
      terminalServed: false,
    };
    this.#exports.set(id, rec);
    if (outcome === 'COMPLETED') {
      this.#occupied.set(place, id);
      if (!opts.copyOnly) this.#movedFiles.add(spec.file);
    }
    return rec;
  }

  /** An import: timing and outcome drawn as for an export (same PRNG stream). */
  #addImport(
    id: string,
    spec: {
      volume: string;
      location: string;
      /** One of the two: where the file lands. */
      project?: string;
      parent?: string;
      name: string;
      overwrite: boolean;
      preserveFolderStructure?: boolean;
    },
    now: number,
    opts: { outcome?: ExportOutcome; pendingMs?: number; runningMs?: number } = {},
  ): ExportRecord {
    const pendingMs = opts.pendingMs ?? this.#between(this.#pendingRange);
    const runningMs = opts.runningMs ?? this.#between(this.#runningRange);
    const drawnFail = this.#randExports() < this.#failRate;
    const size = 1024 + Math.floor(this.#randExports() * 1e9);
    const rec: ExportRecord = {
      id,
      kind: 'import',
      ...(spec.project !== undefined ? { project: spec.project } : {}),
      file: this.#newFileId(),
      volume: spec.volume,
      location: spec.location,
      overwrite: spec.overwrite,
      properties: {
        name: spec.name,
        ...(spec.parent !== undefined ? { parent: spec.parent } : {}),
        ...(spec.preserveFolderStructure !== undefined
          ? { preserve_folder_structure: spec.preserveFolderStructure }
          : {}),
      },
      createdAt: now,
      runningAt: now + pendingMs,
      finishedAt: now + pendingMs + runningMs,
      outcome: opts.outcome ?? (drawnFail ? 'FAILED' : 'COMPLETED'),
      failure: NAME_TAKEN,
      size,
      terminalServed: false,
    };
    this.#imports.set(id, rec);
    return rec;
  }

  #toImportObject(rec: ExportRecord, now: number): ImportObject {
    const state = stateAt(rec, now);
    const base = this.#hrefBase();
    const name = String(rec.properties.name);
    const { parent, preserve_folder_structure: preserve } = rec.properties;
    return {
      href: `${base}/storage/imports/${rec.id}`,
      id: rec.id,
      state,
      source: { volume: rec.volume, location: rec.location },
      destination:
        typeof parent === 'string'
          ? { parent, name }
          : { project: rec.project ?? 'sim-user/sim-project', name },
      ...(typeof preserve === 'boolean' ? { preserve_folder_structure: preserve } : {}),
      overwrite: rec.overwrite,
      started_on: now >= rec.runningAt ? iso(rec.runningAt) : null,
      finished_on: isTerminal(state) ? iso(rec.finishedAt) : null,
      result:
        state === 'COMPLETED'
          ? fileObject(rec, base, {
              name,
              project: rec.project ?? 'sim-user/sim-project',
              createdAt: rec.finishedAt,
            })
          : null,
      error: state === 'FAILED' ? { ...rec.failure, more_info: MORE_INFO } : null,
    };
  }

  /** The wire object of a job of either kind. */
  #objectOf(rec: ExportRecord, now: number): ExportObject | ImportObject {
    return rec.kind === 'import' ? this.#toImportObject(rec, now) : this.#toObject(rec, now);
  }

  #hrefBase(): string {
    return this.#base ?? `http://${this.#host}:${this.#port}/v2`;
  }

  #toObject(rec: ExportRecord, now: number): ExportObject {
    const state = stateAt(rec, now);
    const base = this.#hrefBase();
    return {
      href: `${base}/storage/exports/${rec.id}`,
      id: rec.id,
      state,
      source: { file: rec.file },
      destination: { volume: rec.volume, location: rec.location },
      overwrite: rec.overwrite,
      properties: { ...rec.properties },
      started_on: now >= rec.runningAt ? iso(rec.runningAt) : null,
      finished_on: isTerminal(state) ? iso(rec.finishedAt) : null,
      result:
        state === 'COMPLETED'
          ? fileObject(rec, base, {
              name: rec.location.slice(rec.location.lastIndexOf('/') + 1),
              project: 'sim-user/sim-project',
              createdAt: rec.createdAt,
            })
          : null,
      error: state === 'FAILED' ? { ...rec.failure, more_info: MORE_INFO } : null,
    };
  }

  /** Validates one start body (single or bulk item): the spec, or the error to answer. */
  #parseStart(body: unknown): { ok: true; spec: StartSpec } | { ok: false; error: PlatformError } {
    const bad = (message: string) => ({ ok: false as const, error: platformError(400, 90000, message) });
    if (!isPlainObject(body)) return bad('The export must be a JSON object.');
    const { source, destination, overwrite, properties } = body;
    if (!isPlainObject(source) || typeof source.file !== 'string' || source.file === '') {
      return bad('source.file is required: the id of the file to export.');
    }
    if (tooLong(source.file)) return bad(`source.file is longer than ${MAX_NAME_BYTES} bytes.`);
    if (!isPlainObject(destination)) return bad('destination is required: {"volume", "location"}.');
    if (typeof destination.volume !== 'string' || !/^[^/\s]+\/[^/\s]+$/.test(destination.volume)) {
      return bad('destination.volume is required: a volume id of the form owner/volume_name.');
    }
    if (typeof destination.location !== 'string' || destination.location === '') {
      return bad('destination.location is required: the key of the new file on the volume.');
    }
    if (tooLong(destination.volume) || tooLong(destination.location)) {
      return bad(`destination.volume and destination.location take at most ${MAX_NAME_BYTES} bytes each.`);
    }
    if (overwrite !== undefined && typeof overwrite !== 'boolean') return bad('overwrite must be a boolean.');
    if (properties !== undefined && properties !== null && !isPlainObject(properties)) {
      return bad('properties must be an object.');
    }
    // Flat, small values only: what is kept is served in every later answer, so it must always
    // serialise, and stay small.
    if (
      isPlainObject(properties) &&
      (Object.keys(properties).length > MAX_PROPERTIES ||
        Object.keys(properties).some((key) => tooLong(key, MAX_PROPERTY_KEY)) ||
        !Object.values(properties).every(
          (value) =>
            value === null ||
            typeof value === 'boolean' ||
            typeof value === 'number' ||
            (typeof value === 'string' && !tooLong(value)),
        ))
    ) {
      return bad(
        `properties takes at most ${MAX_PROPERTIES} keys of up to ${MAX_PROPERTY_KEY} bytes whose values are strings (up to ${MAX_NAME_BYTES} bytes), numbers, booleans or null.`,
      );
    }
    const props = { ...DEFAULT_PROPERTIES, ...(properties ?? {}) };
    if (!SSE_ALGORITHMS.includes(props.sse_algorithm)) {
      return { ok: false, error: platformError(400, 9023, 'Invalid sse_algorithm.') };
    }
    if (!STORAGE_CLASSES.includes(props.aws_storage_class)) {
      return { ok: false, error: platformError(400, 9024, 'Invalid aws_storage_class.') };
    }
    if (!CANNED_ACLS.includes(props.aws_canned_acl)) {
      return { ok: false, error: platformError(400, 9022, 'Invalid aws_canned_acl.') };
    }
    if (this.#movedFiles.has(source.file)) {
      return { ok: false, error: platformError(403, 9006, 'Requested file cannot be exported.') };
    }
    return {
      ok: true,
      spec: {
        file: source.file,
        volume: destination.volume,
        location: destination.location,
        overwrite: overwrite ?? false,
        properties: props,
      },
    };
  }

  // ---------------------------------------------------------------------------------------------
  // HTTP

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const exchange: Exchange = { req, res, requestId: randomUUID(), route: undefined, fault: NO_FAULT };
    this.#handle(exchange).catch((err: unknown) => {
      this.#log?.error({ err, requestId: exchange.requestId }, 'simulator failed to answer');
      if (!res.headersSent && !res.destroyed) {
        this.#send(exchange, 500, platformError(500, 90004, 'Internal server error.'));
      } else {
        res.destroy();
      }
    });
  }

  async #handle(x: Exchange): Promise<void> {
    const method = x.req.method ?? 'GET';
    // A request target that is no URL (`//[`, a port past 65535) is the client's error, answered
    // 400 below like any other bad request: not a failure of the simulator's own.
    let url: URL | undefined;
    try {
      url = new URL(x.req.url ?? '/', 'http://simulator.invalid');
    } catch {
      url = undefined;
    }
    const path = !url ? '' : url.pathname.length > 1 ? url.pathname.replace(/\/+$/, '') : url.pathname;
    if (path.startsWith('/_simulator/')) return this.#handleAdmin(x, method, path);

    const match: RouteMatch = url ? matchRoute(method, path) : { kind: 'none' };
    x.route = match.kind === 'route' ? match.name : 'other';
    this.#bump(this.#stats.requests, x.route);
    if (this.#onRequestHook) {
      try {
        this.#onRequestHook({ route: x.route, token: tokenOf(x.req), at: this.#now() });
      } catch {
        // A hook is an observer: it cannot change the answer.
      }
    }
    if (EXPORT_ROUTES.has(x.route)) x.fault = this.#drawFault();

    if (x.fault.slow) {
      this.#stats.faults.slow += 1;
      await this.#delay(this.#faults.slowMs ?? 2000);
      if (x.res.destroyed || x.req.socket.destroyed) return;
    }
    const now = this.#now();
    if (
      EXPORT_ROUTES.has(x.route) &&
      (x.fault.kind === 'maintenance' || now < (this.#faults.maintenanceUntil ?? 0))
    ) {
      this.#stats.faults.maintenance += 1;
      return this.#send(x, 503, { code: 0 });
    }
    if (!this.#authorized(x.req)) return this.#send(x, 401, platformError(401, 90001, 'Unauthorized.'));
    if (match.kind === 'route' && match.name === 'rate_limit') return this.#sendRateLimit(x, now);
    if (!this.#quota.trySpend(now)) {
      this.#stats.rateLimited += 1;
      return this.#send(x, 429, platformError(429, 1000, 'Rate limit exceeded! Check response headers.'));
    }
    this.#stats.quotaSpent += 1;

    if (!url) return this.#send(x, 400, platformError(400, 90000, 'The request target is not a valid URL.'));
    if (match.kind === 'none') return this.#send(x, 404, platformError(404, 90003, 'Not found.'));
    if (match.kind === 'method') {
      const message = path.startsWith('/v2/storage/exports/')
        ? 'Export jobs cannot be deleted or changed.'
        : path.startsWith('/v2/storage/imports/')
          ? 'Import jobs cannot be deleted or changed.'
          : 'Method not allowed.';
      return this.#send(x, 405, platformError(405, 90006, message), {
        headers: { allow: match.allow.join(', ') },
      });
    }
    if (
      !this.#bulk &&
      (match.name === 'bulk_get' || match.name === 'bulk_create' || match.name === 'import_bulk_get')
    ) {
      return this.#send(x, 405, platformError(405, 90006, 'Bulk operations are not available.'));
    }
    if (x.fault.kind === 'error') {
      this.#stats.faults.error += 1;
      return this.#send(x, 500, platformError(500, 90004, 'Internal server error.'));
    }

    switch (match.name) {
      case 'get':
        return this.#routeGet(x, match.id ?? '', 'export');
      case 'list':
        return this.#routeList(x, url, 'export');
      case 'bulk_get':
        return this.#routeBulkGet(x, 'export');
      case 'import_get':
        return this.#routeGet(x, match.id ?? '', 'import');
      case 'import_list':
        return this.#routeList(x, url, 'import');
      case 'import_bulk_get':
        return this.#routeBulkGet(x, 'import');
      case 'import_create':
        return this.#routeCreateImport(x);
      case 'create':
        return this.#routeCreate(x, url);
      case 'bulk_create':
        return this.#routeBulkCreate(x, url);
      case 'rate_limit':
        return this.#sendRateLimit(x, now);
    }
  }

  #authorized(req: IncomingMessage): boolean {
    const token = tokenOf(req);
    if (token === undefined || token.trim() === '') return false;
    return this.#token === undefined || token === this.#token;
  }

  #drawFault(): FaultDecision {
    const f = this.#faults;
    const slowRate = f.slowRate ?? 0;
    const slow = slowRate > 0 && this.#randFaults() < slowRate;
    const rates: Array<[FaultDecision['kind'], number]> = [
      ['maintenance', f.maintenanceRate ?? 0],
      ['error', f.errorRate ?? 0],
      ['truncated', f.truncateRate ?? 0],
      ['malformed', f.malformedRate ?? 0],
    ];
    if (!rates.some(([, rate]) => rate > 0)) return slow ? { slow, kind: undefined } : NO_FAULT;
    const r = this.#randFaults();
    let acc = 0;
    for (const [kind, rate] of rates) {
      acc += rate;
      if (r < acc) return { slow, kind };
    }
    return { slow, kind: undefined };
  }

  #delay(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#delays.delete(timer);
        resolve();
      }, ms);
      this.#delays.set(timer, resolve);
    });
  }

  #bump(counter: Record<string, number>, key: string): void {
    counter[key] = (counter[key] ?? 0) + 1;
  }

  #rateHeaders(now: number): Record<string, string> {
    const q = this.#quota.snapshot(now);
    return {
      'X-RateLimit-Limit': String(q.limit),
      'X-RateLimit-Remaining': String(q.remaining),
      'X-RateLimit-Reset': String(Math.ceil(q.resetMs / 1000)),
    };
  }

  #send(x: Exchange, status: number, body: unknown, opts: SendOptions = {}): void {
    const { res } = x;
    if (res.destroyed || res.headersSent) return;
    const text = JSON.stringify(body);
    const headers: Record<string, string> = {
      'Content-Type': 'application/json; charset=utf-8',
      'X-Request-Id': x.requestId,
      ...this.#rateHeaders(this.#now()),
      ...opts.headers,
    };
    const ok = status >= 200 && status < 300;
    const corrupt =
      ok && (x.fault.kind === 'truncated' || x.fault.kind === 'malformed') ? x.fault.kind : undefined;
    if (x.route !== undefined) {
      this.#bump(this.#stats.statuses, String(status));
      if (corrupt) this.#stats.faults[corrupt] += 1;
    }
    this.#log?.debug(
      { requestId: x.requestId, route: x.route, status, fault: corrupt },
      'simulator answered',
    );
    if (corrupt) {
      const cut = text.slice(0, Math.max(1, Math.floor(text.length / 2)));
      if (corrupt === 'truncated') {
        res.writeHead(status, { ...headers, 'Content-Length': String(Buffer.byteLength(text)) });
        res.write(cut, () => res.destroy());
      } else {
        res.writeHead(status, { ...headers, 'Content-Length': String(Buffer.byteLength(cut)) });
        res.end(cut);
      }
      return;
    }
    res.writeHead(status, { ...headers, 'Content-Length': String(Buffer.byteLength(text)) });
    res.end(text);
    for (const rec of opts.served ?? []) rec.terminalServed = true;
  }

  /**
   * A request node's parser refused (a bad header, headers too large, too slow to arrive): answered
   * as node would (400, 431, 408, then the connection closes), but with a platform error body and
   * the rate-limit headers every answer carries. Counted as a request of no route.
   */
  #onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    // An answer already under way on this connection must not be interleaved with another.
    const inFlight = (socket as unknown as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
      socket.destroy();
      return;
    }
    const status =
      err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const message =
      status === 431
        ? 'The request headers are too large.'
        : status === 408
          ? 'The request did not arrive in time.'
          : 'The request could not be parsed.';
    const text = JSON.stringify(platformError(status, 90000, message));
    const headers: Record<string, string> = {
      'Content-Type': 'application/json; charset=utf-8',
      'X-Request-Id': randomUUID(),
      ...this.#rateHeaders(this.#now()),
      'Content-Length': String(Buffer.byteLength(text)),
      Connection: 'close',
    };
    this.#bump(this.#stats.requests, 'other');
    this.#bump(this.#stats.statuses, String(status));
    const head = Object.entries(headers)
      .map(([name, value]) => `${name}: ${value}\r\n`)
      .join('');
    socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n${head}\r\n${text}`);
    // The server's sockets are half-open ones: ended, this one would stay open until the client
    // closes its side (or node's headers timeout finds it, up to 90 s later), where node's own
    // answer destroys it. Destroyed once the answer is out, a moment later, so that no reset
    // (unread bytes of the refused request) overtakes the answer on its way to the client.
    socket.once('finish', () => setTimeout(() => socket.destroy(), CLIENT_ERROR_LINGER_MS).unref());
  }

  #sendRateLimit(x: Exchange, now: number): void {
    const q = this.#quota.snapshot(now);
    this.#send(x, 200, {
      rate: { limit: q.limit, remaining: q.remaining, reset: Math.ceil(q.resetMs / 1000) },
      // The platform's per-user limit on parallel compute instances; exports do not use it.
      instance_limit: { limit: -1, remaining: -1 },
    });
  }

  /** Reads a JSON body of at most 1 MiB. An oversized body is drained, then answered 413. */
  #readJson(req: IncomingMessage): Promise<BodyResult> {
    return new Promise<BodyResult>((resolve) => {
      const declared = Number(req.headers['content-length'] ?? 0);
      let tooLarge = declared > MAX_BODY_BYTES;
      let received = 0;
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > MAX_BODY_BYTES) tooLarge = true;
        if (received > MAX_DRAIN_BYTES) {
          req.destroy();
          return;
        }
        if (!tooLarge) chunks.push(chunk);
      });
      req.on('error', () =>
        resolve({ ok: false, status: 400, message: 'The request body could not be read.' }),
      );
      req.on('end', () => {
        if (tooLarge) {
          resolve({ ok: false, status: 413, message: 'The request body is larger than 1 MiB.' });
          return;
        }
        const text = Buffer.concat(chunks).toString('utf8');
        if (text.trim() === '') {
          resolve({ ok: false, status: 400, message: 'A JSON request body is required.' });
          return;
        }
        try {
          resolve({ ok: true, value: JSON.parse(text) });
        } catch {
          resolve({ ok: false, status: 400, message: 'The request body is not valid JSON.' });
        }
      });
    });
  }

  /** Reads the body, answering 400/413 itself when it is unusable; undefined then. */
  async #body(x: Exchange): Promise<{ value: unknown } | undefined> {
    const body = await this.#readJson(x.req);
    if (body.ok) return { value: body.value };
    this.#send(x, body.status, platformError(body.status, 90000, body.message));
    return undefined;
  }

  /** Parses `copy_only`; answers 400 itself when it is not a boolean. */
  #copyOnly(x: Exchange, url: URL): boolean | undefined {
    const raw = url.searchParams.get('copy_only');
    if (raw === null || raw.toLowerCase() === 'false') return false;
    if (raw.toLowerCase() === 'true') return true;
    this.#send(x, 400, platformError(400, 90000, `copy_only must be true or false; got "${raw}".`));
    return undefined;
  }

  // ---------------------------------------------------------------------------------------------
  // Routes

  /**
   * Looks an id up for a get route of one kind: the record, counted in idsChecked /
   * checksAfterTerminal; an id held as the other kind is unknown here, and counted in wrongKindIds.
   */
  #lookup(id: string, now: number, kind: SimJobKind = 'export'): ExportRecord | undefined {
    this.#stats.idsChecked += 1;
    const [mine, other] = kind === 'import' ? [this.#imports, this.#exports] : [this.#exports, this.#imports];
    const rec = mine.get(id);
    if (!rec && other.has(id)) this.#stats.wrongKindIds += 1;
    if (rec?.terminalServed && isTerminal(stateAt(rec, now))) this.#stats.checksAfterTerminal += 1;
    return rec;
  }

  #routeGet(x: Exchange, id: string, kind: SimJobKind) {
    const now = this.#now();
    if (this.#errorIds.has(id)) return this.#sendErrorId(x);
    const rec = this.#lookup(id, now, kind);
    if (!rec) return this.#send(x, 404, platformError(404, 9008, 'Requested job does not exist.'));
    const obj = this.#objectOf(rec, now);
    this.#send(x, 200, obj, { served: isTerminal(obj.state) ? [rec] : [] });
  }

  #routeList(x: Exchange, url: URL, kind: SimJobKind) {
    const q = url.searchParams;
    const bad = (message: string) => this.#send(x, 400, platformError(400, 90000, message));
    const states = q
      .getAll('state')
      .flatMap((s) => s.split(','))
      .map((s) => s.trim().toUpperCase())
      .filter((s) => s !== '');
    if (states.length > 4) return bad('At most 4 state values may be given.');
    for (const s of states) {
      if (!STATES.includes(s as ExportState))
        return bad(`Unknown state "${s}"; expected one of ${STATES.join(', ')}.`);
    }
    const wanted = new Set(states as ExportState[]);
    const offset = q.has('offset') ? Number(q.get('offset')) : 0;
    const limit = q.has('limit') ? Number(q.get('limit')) : 50;
    if (!isNonNegativeInteger(offset)) return bad('offset must be an integer of at least 0.');
    if (!Number.isInteger(limit) || limit < 1 || limit > 100)
      return bad('limit must be an integer from 1 to 100.');
    const volume = q.get('volume');
    const project = kind === 'import' ? q.get('project') : null;
    const fields = q.get('fields');
    const picked =
      fields && fields !== '_all' ? fields.split(',').map((f) => f.trim()) : ['href', 'id', 'state'];

    const now = this.#now();
    let total = 0;
    const items: Array<Record<string, unknown>> = [];
    for (const rec of (kind === 'import' ? this.#imports : this.#exports).values()) {
      if (volume !== null && rec.volume !== volume) continue;
      if (project !== null && rec.project !== project) continue;
      if (wanted.size > 0 && !wanted.has(stateAt(rec, now))) continue;
      if (total >= offset && total < offset + limit) {
        const obj = this.#objectOf(rec, now) as unknown as Record<string, unknown>;
        if (fields === '_all') {
          items.push(obj);
        } else {
          const item: Record<string, unknown> = {};
          for (const key of picked) if (key in obj) item[key] = obj[key];
          items.push(item);
        }
      }
      total += 1;
    }

    const pageHref = (pageOffset: number) => {
      const params = new URLSearchParams(q);
      params.set('offset', String(pageOffset));
      params.set('limit', String(limit));
      return `${this.#hrefBase()}/storage/${kind}s?${params.toString()}`;
    };
    const links: Array<{ href: string; rel: 'next' | 'prev'; method: 'GET' }> = [];
    if (offset + limit < total) links.push({ href: pageHref(offset + limit), rel: 'next', method: 'GET' });
    if (offset > 0) links.push({ href: pageHref(Math.max(0, offset - limit)), rel: 'prev', method: 'GET' });
    this.#send(
      x,
      200,
      { href: pageHref(offset), items, links },
      { headers: { 'x-total-matching-query': String(total) } },
    );
  }

  async #routeBulkGet(x: Exchange, kind: SimJobKind): Promise<void> {
    const body = await this.#body(x);
    if (!body) return;
    const key = `${kind}_ids`;
    const ids = isPlainObject(body.value) ? body.value[key] : undefined;
    if (!Array.isArray(ids) || !ids.every((id) => typeof id === 'string')) {
      return this.#send(x, 400, platformError(400, 90000, `${key} is required: an array of ${kind} ids.`));
    }
    const stats = this.#stats;
    (kind === 'import' ? stats.importBulkIdsPerCall : stats.bulkIdsPerCall).push(ids.length);
    stats.maxIdsPerBulkCall = Math.max(stats.maxIdsPerBulkCall, ids.length);
    if (ids.length > MAX_BULK) {
      return this.#send(
        x,
        400,
        platformError(400, 90000, `At most ${MAX_BULK} ${kind} ids per call; got ${ids.length}.`),
      );
    }
    if (this.#errorIds.size > 0 && (ids as string[]).some((id) => this.#errorIds.has(id))) {
      return this.#sendErrorId(x);
    }
    const now = this.#now();
    const served: ExportRecord[] = [];
    const items = (ids as string[]).map((id) => {
      const rec = this.#lookup(id, now, kind);
      if (!rec) return { error: platformError(404, 9008, 'Requested job does not exist.') };
      const resource = this.#objectOf(rec, now);
      if (isTerminal(resource.state)) served.push(rec);
      return { resource };
    });
    if (this.#shuffle) this.#shuffleInPlace(items);
    this.#send(x, 200, { items }, { served });
  }

  /** The answer to a call that names one of `errorIds`. */
  #sendErrorId(x: Exchange): void {
    this.#stats.faults.errorId += 1;
    this.#send(x, 500, platformError(500, 90004, 'Internal server error.'));
  }

  #shuffleInPlace<T>(items: T[]): void {
    for (let i = items.length - 1; i > 0; i--) {
      const j = Math.floor(this.#randShuffle() * (i + 1));
      const a = items[i] as T;
      items[i] = items[j] as T;
      items[j] = a;
    }
  }

  async #routeCreate(x: Exchange, url: URL): Promise<void> {
    const copyOnly = this.#copyOnly(x, url);
    if (copyOnly === undefined) return;
    const body = await this.#body(x);
    if (!body) return;
    const parsed = this.#parseStart(body.value);
    if (!parsed.ok) return this.#send(x, parsed.error.status, parsed.error);
    const now = this.#now();
    const rec = this.#addRecord(this.#newExportId(), parsed.spec, now, { copyOnly });
    this.#send(x, 201, this.#toObject(rec, now));
  }

  /**
   * `POST /storage/imports`: `source.volume` (`owner/volume`) and `source.location`, and
   * `destination.project` (or `destination.parent`), are required (400, 90000); `destination.name`
   * defaults to the location's last part.
   */
  async #routeCreateImport(x: Exchange): Promise<void> {
    const body = await this.#body(x);
    if (!body) return;
    const bad = (message: string) => this.#send(x, 400, platformError(400, 90000, message));
    const v = body.value;
    if (!isPlainObject(v)) return bad('The import must be a JSON object.');
    const { source, destination, overwrite } = v;
    if (
      !isPlainObject(source) ||
      typeof source.volume !== 'string' ||
      !/^[^/\s]+\/[^/\s]+$/.test(source.volume)
    ) {
      return bad('source.volume is required: a volume id of the form owner/volume_name.');
    }
    if (typeof source.location !== 'string' || source.location === '') {
      return bad('source.location is required: the key of the file on the volume.');
    }
    if (tooLong(source.volume) || tooLong(source.location)) {
      return bad(`source.volume and source.location take at most ${MAX_NAME_BYTES} bytes each.`);
    }
    if (!isPlainObject(destination))
      return bad('destination is required: {"project", "name"?} or {"parent"}.');
    const { project, parent } = destination;
    if (project !== undefined && parent !== undefined) {
      return bad('destination takes project or parent, not both.');
    }
    const target = project ?? parent;
    if (typeof target !== 'string' || target === '') {
      return bad('destination.project (or destination.parent) is required.');
    }
    const { preserve_folder_structure: preserve } = v;
    if (preserve !== undefined && typeof preserve !== 'boolean') {
      return bad('preserve_folder_structure must be a boolean.');
    }
    if (destination.name !== undefined && (typeof destination.name !== 'string' || destination.name === '')) {
      return bad('destination.name must be a non-empty string.');
    }
    if (tooLong(target) || (typeof destination.name === 'string' && tooLong(destination.name))) {
      return bad(`destination.project, parent and name take at most ${MAX_NAME_BYTES} bytes each.`);
    }
    if (overwrite !== undefined && typeof overwrite !== 'boolean') return bad('overwrite must be a boolean.');
    const location = source.location;
    const now = this.#now();
    const rec = this.#addImport(
      this.#newExportId(),
      {
        volume: source.volume,
        location,
        ...(parent !== undefined ? { parent: target } : { project: target }),
        name: (destination.name as string | undefined) ?? location.slice(location.lastIndexOf('/') + 1),
        overwrite: overwrite ?? false,
        ...(preserve !== undefined ? { preserveFolderStructure: preserve } : {}),
      },
      now,
    );
    this.#send(x, 201, this.#toImportObject(rec, now));
  }

  async #routeBulkCreate(x: Exchange, url: URL): Promise<void> {
    const copyOnly = this.#copyOnly(x, url);
    if (copyOnly === undefined) return;
    const body = await this.#body(x);
    if (!body) return;
    const list = isPlainObject(body.value) ? body.value.items : undefined;
    if (!Array.isArray(list)) {
      return this.#send(
        x,
        400,
        platformError(400, 90000, 'items is required: an array of exports to start.'),
      );
    }
    if (list.length > MAX_BULK) {
      return this.#send(
        x,
        400,
        platformError(400, 90000, `At most ${MAX_BULK} items per call; got ${list.length}.`),
      );
    }
    const now = this.#now();
    // Bulk create answers in request order: the docs' clients (PERL) assume it, and the
    // per-item errors could not be matched otherwise.
    const items = list.map((item: unknown) => {
      const parsed = this.#parseStart(item);
      if (!parsed.ok) return { error: parsed.error };
      const rec = this.#addRecord(this.#newExportId(), parsed.spec, now, { copyOnly });
      return { resource: this.#toObject(rec, now) };
    });
    this.#send(x, 200, { items });
  }

  // ---------------------------------------------------------------------------------------------
  // Admin

  async #handleAdmin(x: Exchange, method: string, path: string): Promise<void> {
    const bad = (message: string) => this.#send(x, 400, platformError(400, 90000, message));
    if (path === '/_simulator/stats') {
      if (method !== 'GET') return this.#send(x, 405, platformError(405, 90006, 'Method not allowed.'));
      return this.#send(x, 200, this.stats());
    }
    if (path === '/_simulator/faults') {
      if (method === 'GET') return this.#send(x, 200, { ...this.#faults });
      if (method !== 'POST') return this.#send(x, 405, platformError(405, 90006, 'Method not allowed.'));
      const body = await this.#body(x);
      if (!body) return;
      try {
        this.setFaults(body.value as FaultOptions);
      } catch (err) {
        return bad((err as Error).message);
      }
      return this.#send(x, 200, { ...this.#faults });
    }
    if (path === '/_simulator/exports' || path === '/_simulator/imports') {
      if (method !== 'POST') return this.#send(x, 405, platformError(405, 90006, 'Method not allowed.'));
      const body = await this.#body(x);
      if (!body) return;
      const v = body.value;
      if (
        !isPlainObject(v) ||
        !Number.isInteger(v.count) ||
        (v.count as number) < 1 ||
        (v.count as number) > 100_000
      ) {
        return bad('count is required: an integer from 1 to 100000.');
      }
      try {
        const opts = {
          outcome: v.outcome as ExportOutcome | undefined,
          pendingMs: v.pendingMs as number | undefined,
          runningMs: v.runningMs as number | undefined,
        };
        const ids =
          path === '/_simulator/imports'
            ? this.createImports(v.count as number, opts)
            : this.createExports(v.count as number, opts);
        return this.#send(x, 201, { ids });
      } catch (err) {
        return bad((err as Error).message);
      }
    }
    return this.#send(x, 404, platformError(404, 90003, 'Not found.'));
  }
}

/** The token a request carries: `X-SBG-Auth-Token`, else `Authorization: Bearer`. */
function tokenOf(req: IncomingMessage): string | undefined {
  const header = req.headers['x-sbg-auth-token'];
  const token = Array.isArray(header) ? header[0] : header;
  if (token !== undefined) return token;
  const auth = req.headers.authorization;
  const m = auth ? /^Bearer\s+(\S+)\s*$/i.exec(auth) : null;
  return m?.[1];
}
