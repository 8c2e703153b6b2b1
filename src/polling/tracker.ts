/**
 * The tracker: what the watcher keeps in memory about each ACTIVE export, as a pure state machine
 * (no I/O, no timers). Everything else about an export (metadata, history, the platform's
 * objects, finished exports) is in the store; the tracker hands the store its changes.
 *
 * A check goes through it in two steps, so that memory never runs ahead of the store:
 * `preview(observations, now)` works out the transitions, store changes and warnings without
 * changing anything; the caller stores the changes, and only then `commit`s the preview. A preview
 * that is never committed (the store write failed) is simply dropped: its exports keep their
 * state, misses and place in the due order, so they are still due. `apply` does both at once.
 *
 * Invariants, kept true here and nowhere else:
 * - Only non-terminal exports are held. One that reaches COMPLETED, FAILED or LOST is dropped when
 *   that check is committed; whether it may be tracked again is the store's decision.
 * - What is held changes only through `track`, `untrack` and `commit`, so a state or miss count is
 *   in memory only once the store has it.
 * - `commit` applies a preview to an export only if it is still the same tracked export, in the
 *   state and with the misses it had when previewed; otherwise (untracked, re-tracked, or changed
 *   by another commit meanwhile) that part of the preview is ignored and the export stays due.
 * - `#counts` is the number of held exports in each state, kept up to date on every change.
 * - States only move forward: UNKNOWN < PENDING < RUNNING < COMPLETED | FAILED | LOST. A report of
 *   an earlier state after a later one is stale: a warning, and no change.
 * - One check makes at most one transition and one change per export; a jump (PENDING →
 *   COMPLETED) is one transition.
 * - LOST means the platform said "no such job" or "no access" on `lostAfter` consecutive checks;
 *   any answer with the resource resets that count. Such a "missing" observation comes only from
 *   an error that is this export's own: one that names it, or one of as many anonymous error items
 *   as there are unanswered ids in an answer that is otherwise whole and names no id it cannot
 *   speak for (`observationsFromBulk`).
 * - Due order (`DueQueue`, one per kind): never-checked exports first, in the order tracked, then
 *   the others by their last committed check. A check that failed, or whose results were not
 *   stored, moves nothing. One `takeDue` answers ids of one kind only (a bulk call carries one
 *   kind), picking the kind whose head has waited longest.
 */
import type { PlatformErrorBody } from '../shared/errors.js';
import { Link } from '../shared/fifo.js';
import type { ActiveExport, ExportChange } from '../store/store.js';
import { type DueIds, DueQueue } from './due-queue.js';

export const PLATFORM_STATES = ['PENDING', 'RUNNING', 'COMPLETED', 'FAILED'] as const;
export type PlatformState = (typeof PLATFORM_STATES)[number];
export const EXPORT_STATES = ['UNKNOWN', 'PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'LOST'] as const;
export type ExportState = (typeof EXPORT_STATES)[number];

const RANK: Readonly<Record<ExportState, number>> = {
  UNKNOWN: 0,
  PENDING: 1,
  RUNNING: 2,
  COMPLETED: 3,
  FAILED: 3,
  LOST: 3,
};

/**
 * The kinds of job the watcher follows: exports (platform file → cloud bucket) and imports
 * (cloud bucket → platform file). They have the same states and the same bulk API
 * (docs/platform-api.md §3–§5). A job's id is unique across kinds in the watcher (design.md,
 * "Kinds"). Wherever a kind is optional, absent means `export`: that is how everything written
 * before imports existed keeps its meaning.
 */
export const JOB_KINDS = ['export', 'import'] as const;
export type JobKind = (typeof JOB_KINDS)[number];

/**
 * What the watcher takes for a job id, from a client or from the platform's listings: the
 * platform's ids are of this shape, and every route and cursor of the control API relies on it.
 */
export const EXPORT_ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;

export function isJobKind(value: unknown): value is JobKind {
  return value === 'export' || value === 'import';
}

export function isTerminal(state: ExportState): boolean {
  return RANK[state] === 3;
}

export function isExportState(value: string): value is ExportState {
  return (EXPORT_STATES as readonly string[]).includes(value);
}

/** The platform's export object, as received. Only `id` and `state` are relied on. */
export type PlatformExport = Record<string, unknown> & { id: string; state: string };

/** What memory holds of an active export: as little as scheduling and LOST need. */
export interface TrackedExport {
  id: string;
  /** Present (as `import`) for an import only. */
  kind?: JobKind;
  state: ExportState;
  /** Consecutive "no such job" / "no access" answers; LOST at `lostAfter`. */
  misses: number;
  /** The last of those errors while misses are counted, so LOST can say why. */
  lastMiss: PlatformErrorBody | null;
  /** When the last committed check was answered; null until then. */
  lastCheckedAt: number | null;
  /** Checks committed since this export was tracked (in this process). */
  checks: number;
}

/** What one check said about one export. */
export type Observation =
  | { kind: 'resource'; id: string; resource: PlatformExport }
  /** The platform said the job does not exist or is not accessible. */
  | { kind: 'missing'; id: string; error: PlatformErrorBody }
  /** The call succeeded but said nothing usable about this id: checked, no change. */
  | { kind: 'unanswered'; id: string; error?: PlatformErrorBody }
  /**
   * A resource for this id whose state is not text: the job exists (its misses reset), its state
   * is unknown; `state` describes what came, for the warning.
   */
  | { kind: 'unreadable'; id: string; state: string };

export interface Transition {
  /** The job's id (an export's or an import's; see `kind`). */
  exportId: string;
  /** Present (as `import`) for an import only: absent means an export. */
  kind?: JobKind;
  from: ExportState;
  to: ExportState;
  at: number;
  /** The platform's object that came with the change; null for LOST. */
  export: PlatformExport | null;
  /** Why a FAILED or LOST export ended so; null otherwise. */
  error: PlatformErrorBody | null;
}

export const WARNING_REASONS = [
  'stale_state',
  'unknown_state',
  'unexpected_resource',
  'unanswered',
  'item_error',
  'unattributed_errors',
] as const;
export type WarningReason = (typeof WARNING_REASONS)[number];

/**
 * Something odd in an answer, worth a log line. The scheduler writes one line per reason per call
 * (with a count and a few sample ids), never one per export: a hostile answer must not flood logs.
 */
export interface TrackerWarning {
  /** The export concerned; absent for a warning about a whole answer. */
  exportId?: string;
  reason: WarningReason;
  /** `count` (how many exports it stands for, default 1) and `sample_ids` are summed and merged. */
  detail: Record<string, unknown>;
}

/** What one check concluded. */
export interface CheckOutcome {
  transitions: Transition[];
  /** What the store must write: one per export whose state or miss count changed. */
  changes: ExportChange[];
  warnings: TrackerWarning[];
}

export interface TrackerOptions {
  /** Consecutive not-found or no-access answers that make an export LOST; default 3. */
  lostAfter?: number;
}

/** The record held per active export: the public fields plus its links in the due order. */
class Entry extends Link {
  lastMiss: PlatformErrorBody | null = null;
  lastCheckedAt: number | null = null;
  checks = 0;

  constructor(
    readonly id: string,
    readonly kind: JobKind,
    public state: ExportState,
    public misses: number,
    /** The order in which entries were tracked, over both kinds: never-checked ones go in it. */
    readonly seq: number,
  ) {
    super();
  }
}

/** What a check would make of one export, worked out by `preview` for `commit`. */
interface Draft {
  readonly entry: Entry;
  /** The entry's state and misses when previewed: `commit` applies the draft only if they still hold. */
  readonly baseState: ExportState;
  readonly baseMisses: number;
  state: ExportState;
  misses: number;
  lastMiss: PlatformErrorBody | null;
  /** The platform's object that came with a state change; null without one. */
  export: PlatformExport | null;
  error: PlatformErrorBody | null;
}

interface Preview {
  at: number;
  drafts: ReadonlyMap<Entry, Draft>;
}

export class Tracker {
  readonly #lostAfter: number;
  /** Active exports by id, in the order tracked. */
  readonly #entries = new Map<string, Entry>();
  /** One due order per kind, so that a call carries one kind and picking stays O(batch). */
  readonly #due: Readonly<Record<JobKind, DueQueue<Entry>>> = {
    export: new DueQueue<Entry>(),
    import: new DueQueue<Entry>(),
  };
  #seq = 0;
  readonly #counts = zeroCounts();
  /**
   * Previews not yet committed, with what committing them writes. Weak, so that a preview whose
   * store write failed is simply forgotten.
   */
  readonly #previews = new WeakMap<CheckOutcome, Preview>();

  constructor(options: TrackerOptions = {}) {
    this.#lostAfter = options.lostAfter ?? 3;
  }

  /**
   * Starts tracking non-terminal exports: new ones (UNKNOWN, no misses) or, at start-up, those the
   * store holds. They are due at once, before any checked export. Ids already tracked, and
   * terminal exports, are ignored.
   */
  track(exports: readonly ActiveExport[]): void {
    for (const { id, state, misses, kind = 'export' } of exports) {
      if (isTerminal(state) || this.#entries.has(id)) continue;
      const entry = new Entry(id, kind, state, misses, this.#seq++);
      this.#entries.set(id, entry);
      this.#due[kind].addUnchecked(entry);
      this.#counts[state]++;
    }
  }

  untrack(id: string): boolean {
    const entry = this.#entries.get(id);
    if (!entry) return false;
    this.#forget(entry);
    return true;
  }

  /** A copy of what is held about an active export. */
  get(id: string): TrackedExport | undefined {
    const e = this.#entries.get(id);
    if (!e) return undefined;
    const { state, misses, lastMiss, lastCheckedAt, checks } = e;
    return {
      id,
      ...(e.kind === 'import' ? { kind: e.kind } : {}),
      state,
      misses,
      lastMiss,
      lastCheckedAt,
      checks,
    };
  }

  has(id: string): boolean {
    return this.#entries.has(id);
  }

  get activeCount(): number {
    return this.#entries.size;
  }

  /** Active exports by state; terminal states are always 0 here (the store counts those). */
  countByState(): Record<ExportState, number> {
    return { ...this.#counts };
  }

  /** Active ids, in the order tracked. */
  activeIds(): IterableIterator<string> {
    return this.#entries.keys();
  }

  /**
   * Up to `max` ids of ONE kind due at `now` (never checked, or last checked at least `intervalMs`
   * ago), longest-unchecked first, skipping those for which `skip(id)` holds (in flight); and when
   * the next one that is not due yet falls due. Costs O(max + skipped), never O(active).
   *
   * The kind is that of the id that has waited longest: a never-checked id first (the earliest
   * tracked, over both kinds), else the one that fell due first. The batch is then filled with due
   * ids of that kind only; the next call picks again, so neither kind starves the other. With one
   * kind held, this is exactly a walk of its due order. `kind` is in the answer for imports only.
   *
   * `nextDueAt`: when the first id not due yet falls due, if nothing else is due now; undefined
   * when the walk stopped at `max` (more may be due), when another kind has ids due now, or when
   * nothing is held.
   *
   * `only`: ids of that kind alone (the other one is held back), as if the tracker held no other.
   *
   * `earlyMs`: when something is due, the batch's room is filled with ids of its kind falling due
   * within that long (see `DueQueue.take`).
   */
  takeDue(
    now: number,
    intervalMs: number,
    max: number,
    skip: (id: string) => boolean,
    only?: JobKind,
    earlyMs = 0,
  ): DueIds {
    const exports = this.#due.export;
    const imports = this.#due.import;
    if (only === 'export') return exports.take(now, intervalMs, max, skip, earlyMs);
    if (only === 'import') return { kind: 'import', ...imports.take(now, intervalMs, max, skip, earlyMs) };
    // One kind held (the usual case): its walk, with nothing looked at twice.
    if (imports.isEmpty()) return exports.take(now, intervalMs, max, skip, earlyMs);
    if (exports.isEmpty()) return { kind: 'import', ...imports.take(now, intervalMs, max, skip, earlyMs) };
    const heads = JOB_KINDS.map((kind) => ({ kind, head: this.#due[kind].first(now, intervalMs, skip) }));
    let chosen: { kind: JobKind; entry: Entry; unchecked: boolean; dueAt: number } | undefined;
    let nextDueAt: number | undefined;
    for (const { kind, head } of heads) {
      if (head.entry === undefined) {
        if (head.nextDueAt !== undefined) nextDueAt = Math.min(nextDueAt ?? head.nextDueAt, head.nextDueAt);
        continue;
      }
      const candidate = { kind, entry: head.entry, unchecked: head.unchecked, dueAt: head.dueAt };
      if (!chosen || waitedLonger(candidate, chosen)) chosen = candidate;
    }
    if (!chosen) return { due: [], nextDueAt };
    const taken = this.#due[chosen.kind].take(now, intervalMs, max, skip, earlyMs);
    const otherDue = heads.some(({ kind, head }) => kind !== chosen.kind && head.entry !== undefined);
    let next: number | undefined;
    if (taken.due.length < max && !otherDue) {
      next = [taken.nextDueAt, nextDueAt]
        .filter((t): t is number => t !== undefined)
        .reduce<number | undefined>((a, b) => (a === undefined ? b : Math.min(a, b)), undefined);
    }
    return { ...(chosen.kind === 'import' ? { kind: chosen.kind } : {}), due: taken.due, nextDueAt: next };
  }

  /**
   * What folding these observations in would do, without doing it: `commit` the result once its
   * changes are stored. Observations of ids not tracked (untracked while the check was in
   * flight, or already finished) are ignored; so are those of ids tracked as another kind than
   * `kind`, the kind the call asked about (when given).
   */
  preview(observations: readonly Observation[], now: number, kind?: JobKind): CheckOutcome {
    const drafts = new Map<Entry, Draft>();
    const warnings: TrackerWarning[] = [];
    for (const o of observations) {
      const entry = this.#entries.get(o.id);
      if (!entry || (kind !== undefined && entry.kind !== kind)) continue;
      let draft = drafts.get(entry);
      if (!draft) {
        draft = startDraft(entry);
        drafts.set(entry, draft);
      }
      if (!isTerminal(draft.state)) this.#observe(draft, o, warnings);
    }
    const outcome = conclude(drafts.values(), now, warnings);
    this.#previews.set(outcome, { at: now, drafts });
    return outcome;
  }

  /**
   * Makes a preview so in memory: every export it answered is checked at the preview's time
   * (moved to the tail of the due order) or, when it finished, dropped. At most once per preview.
   */
  commit(outcome: CheckOutcome): void {
    const preview = this.#previews.get(outcome);
    if (!preview) throw new Error('tracker: commit of an outcome that is not a pending preview');
    this.#previews.delete(outcome);
    for (const draft of preview.drafts.values()) {
      if (this.#stillAsPreviewed(draft)) this.#commitDraft(draft, preview.at);
    }
  }

  /** `preview` and `commit` at once: for callers with nothing to store first. */
  apply(observations: readonly Observation[], now: number, kind?: JobKind): CheckOutcome {
    const outcome = this.preview(observations, now, kind);
    this.commit(outcome);
    return outcome;
  }

  /** Folds one observation into a draft, by the rules in the file header. */
  #observe(draft: Draft, o: Observation, warnings: TrackerWarning[]): void {
    if (o.kind === 'unanswered') {
      warnings.push({
        exportId: o.id,
        reason: o.error ? 'item_error' : 'unanswered',
        detail: o.error ? { error: o.error } : {},
      });
      return;
    }
    if (o.kind === 'missing') {
      draft.misses++;
      draft.lastMiss = o.error;
      if (draft.misses >= this.#lostAfter) move(draft, 'LOST', null, o.error);
      return;
    }
    draft.misses = 0;
    draft.lastMiss = null;
    if (o.kind === 'unreadable') {
      warnings.push({ exportId: o.id, reason: 'unknown_state', detail: { state: o.state } });
      return;
    }
    const reported = o.resource.state;
    if (!(PLATFORM_STATES as readonly string[]).includes(reported)) {
      warnings.push({ exportId: o.id, reason: 'unknown_state', detail: { state: reported } });
      return;
    }
    const next = reported as PlatformState;
    if (RANK[next] < RANK[draft.state]) {
      warnings.push({ exportId: o.id, reason: 'stale_state', detail: { state: next, current: draft.state } });
      return;
    }
    if (next !== draft.state) {
      move(draft, next, o.resource, next === 'FAILED' ? platformError(o.resource.error) : null);
    }
  }

  #stillAsPreviewed(draft: Draft): boolean {
    const { entry } = draft;
    return (
      this.#entries.get(entry.id) === entry &&
      entry.state === draft.baseState &&
      entry.misses === draft.baseMisses
    );
  }

  #commitDraft(draft: Draft, at: number): void {
    const { entry } = draft;
    if (isTerminal(draft.state)) {
      this.#forget(entry);
      return;
    }
    this.#counts[entry.state]--;
    this.#counts[draft.state]++;
    entry.state = draft.state;
    entry.misses = draft.misses;
    entry.lastMiss = draft.lastMiss;
    entry.lastCheckedAt = at;
    entry.checks++;
    this.#due[entry.kind].moveToChecked(entry);
  }

  #forget(entry: Entry): void {
    this.#entries.delete(entry.id);
    this.#due[entry.kind].remove(entry);
    this.#counts[entry.state]--;
  }
}

/**
 * Whether `a` has waited longer than `b`: a never-checked entry before a checked one (as within a
 * kind), never-checked ones in the order tracked, checked ones by when they fell due.
 */
function waitedLonger(
  a: { entry: Entry; unchecked: boolean; dueAt: number },
  b: { entry: Entry; unchecked: boolean; dueAt: number },
): boolean {
  if (a.unchecked !== b.unchecked) return a.unchecked;
  if (a.unchecked) return a.entry.seq < b.entry.seq;
  // When each fell due (an id checked "in the future" before a step back of the clock: at the step).
  return a.dueAt < b.dueAt;
}

function zeroCounts(): Record<ExportState, number> {
  return Object.fromEntries(EXPORT_STATES.map((s) => [s, 0])) as Record<ExportState, number>;
}

function startDraft(entry: Entry): Draft {
  const { state, misses, lastMiss } = entry;
  return { entry, baseState: state, baseMisses: misses, state, misses, lastMiss, export: null, error: null };
}

function move(
  draft: Draft,
  to: ExportState,
  exp: PlatformExport | null,
  error: PlatformErrorBody | null,
): void {
  draft.state = to;
  draft.export = exp;
  draft.error = error;
}

/** The transitions and store changes of a preview's drafts. */
function conclude(drafts: Iterable<Draft>, at: number, warnings: TrackerWarning[]): CheckOutcome {
  const transitions: Transition[] = [];
  const changes: ExportChange[] = [];
  for (const d of drafts) {
    const { id } = d.entry;
    const moved = d.state !== d.baseState;
    if (moved) {
      transitions.push({
        exportId: id,
        ...(d.entry.kind === 'import' ? { kind: d.entry.kind } : {}),
        from: d.baseState,
        to: d.state,
        at,
        export: d.export,
        error: d.error,
      });
    }
    if (moved || d.misses !== d.baseMisses) {
      changes.push({
        id,
        from: d.baseState,
        to: d.state,
        at,
        misses: d.misses,
        lastMiss: d.lastMiss,
        export: d.export,
        error: d.error,
      });
    }
  }
  return { transitions, changes, warnings };
}

/**
 * Job-level codes that mean "no such job" (9008) or "no access to this job" (9005), docs/platform-api.md §4
 * and §6. Generic codes (90002, 90003) are not here: a whole route answering "not found" (a wrong
 * SB_API_ENDPOINT, a proxy) says nothing about the job. A bare 404/403 item without a code is
 * taken as the job's, since it stands in the job's place in the answer.
 */
const MISSING_CODES = new Set([9005, 9008]);
const MISSING_STATUSES = new Set([403, 404]);

export function meansMissing(error: PlatformErrorBody): boolean {
  if (error.code !== undefined) return MISSING_CODES.has(error.code);
  return error.status !== undefined && MISSING_STATUSES.has(error.status);
}

/** One item of a bulk answer: `{resource}` or `{error}` (docs/platform-api.md §4). */
export interface BulkItem {
  resource?: unknown;
  error?: unknown;
}

/**
 * Turns a bulk answer into observations. Items are matched to ids by `resource.id`, never by
 * position: the platform promises no order, and its error items need not carry the id.
 *
 * An error item that names a requested id speaks for that id. One that carries an id is never
 * anonymous: if that id was not asked, was answered by a resource, or is named by another error
 * item too, the item is ignored (with the unexpected resources' warning), and so is every
 * anonymous error of that answer, since an answer that misnames its errors cannot be trusted to
 * line its unnamed ones up either. Otherwise anonymous error items are attributed only when they
 * account for the unanswered ids one for one: the answer has exactly one item per id asked, and
 * as many anonymous errors as ids no resource or named error answered.
 * Even then, which error belongs to which id is known only when they all mean "no such job" (or
 * there is one of each); a mixed set cannot be told apart and leaves the ids due. Anything else (one error for a whole
 * call, too few or too many items) says nothing reliable about any single id: the ids stay due,
 * and one warning describes the answer. A LOST can therefore never come from an answer that does
 * not carry one error per missing id.
 */
export function observationsFromBulk(
  requested: readonly string[],
  items: readonly BulkItem[],
): { observations: Observation[]; warnings: TrackerWarning[] } {
  const wanted = new Set(requested);
  const answered = new Set<string>();
  const observations: Observation[] = [];
  const warnings: TrackerWarning[] = [];
  const unexpected = new Tally();
  const errors: PlatformErrorBody[] = [];
  const byResource = new Map<string, Observation>();
  const contradicted = new Set<string>();
  for (const item of items) {
    if (!item || typeof item !== 'object') continue;
    const resource = asExport(item.resource);
    const observed: Observation | null = resource
      ? { kind: 'resource', id: resource.id, resource }
      : unreadableResource(item.resource);
    if (observed) {
      const { id } = observed;
      if (!wanted.has(id) || answered.has(id)) {
        unexpected.add(id);
        // Two resources for one id that disagree on its state: neither speaks for it (as for an
        // id named by several error items), whichever came first.
        const first = byResource.get(id);
        if (first && stateOf(first) !== stateOf(observed)) contradicted.add(id);
        continue;
      }
      answered.add(id);
      byResource.set(id, observed);
      observations.push(observed);
    } else if (item.error && typeof item.error === 'object') {
      errors.push(item.error as PlatformErrorBody);
    }
  }
  if (contradicted.size > 0) {
    for (let i = 0; i < observations.length; i++) {
      const o = observations[i] as Observation;
      // The job exists (both resources say so, and its misses reset), its state is unknown.
      if (contradicted.has(o.id)) {
        observations[i] = { kind: 'unreadable', id: o.id, state: '(contradicting)' };
      }
    }
  }
  // An error item that names its id (some deployments may) is matched directly. One that names
  // an id it cannot speak for is dropped, never pooled with the anonymous ones: one for one, it
  // would be pinned on whichever asked id is left, and count toward a LOST the platform never said.
  const namedErrors = new Map<string, PlatformErrorBody[]>();
  const anonymous: PlatformErrorBody[] = [];
  let strayErrors = 0;
  for (const e of errors) {
    const named = (e as { id?: unknown }).id;
    if (named === undefined || named === null) {
      anonymous.push(e);
    } else if (typeof named === 'string' && wanted.has(named) && !answered.has(named)) {
      const same = namedErrors.get(named);
      if (same) same.push(e);
      else namedErrors.set(named, [e]);
    } else {
      strayErrors++;
      unexpected.add(typeof named === 'string' ? named : describeValue(named));
    }
  }
  // An id named by several error items: which of them speaks for it is unknown, so none does.
  const byId = new Map<string, PlatformErrorBody>();
  for (const [id, named] of namedErrors) {
    const [only] = named;
    if (named.length === 1 && only) {
      byId.set(id, only);
      continue;
    }
    strayErrors += named.length;
    for (let i = 0; i < named.length; i++) unexpected.add(id);
  }
  if (unexpected.count > 0) {
    const detail = unexpected.detail();
    warnings.push({
      reason: 'unexpected_resource',
      detail: strayErrors > 0 ? { ...detail, error_items: strayErrors } : detail,
    });
  }
  const unanswered = requested.filter((id) => !answered.has(id));
  if (unanswered.length === 0) return { observations, warnings };
  const unnamed = unanswered.filter((id) => !byId.has(id));
  const oneForOne =
    strayErrors === 0 &&
    anonymous.length > 0 &&
    anonymous.length === unnamed.length &&
    items.length === requested.length;
  // One for one, they belong to those ids; which to which is known when all mean the same
  // ("missing"), or when there is only one of each.
  const attributable = oneForOne && (anonymous.every(meansMissing) || unnamed.length === 1);
  if (anonymous.length > 0 && !attributable) {
    warnings.push({
      reason: 'unattributed_errors',
      detail: {
        count: unnamed.length,
        sample_ids: unnamed.slice(0, SAMPLE_IDS),
        error_items: anonymous.length,
        items: items.length,
        asked: requested.length,
        first_error: anonymous[0],
      },
    });
  }
  let next = 0;
  for (const id of unanswered) {
    const named = byId.get(id);
    if (named) {
      observations.push(
        meansMissing(named)
          ? { kind: 'missing', id, error: named }
          : { kind: 'unanswered', id, error: named },
      );
      continue;
    }
    const error = attributable ? anonymous[next++] : undefined;
    if (!error) observations.push({ kind: 'unanswered', id });
    else if (meansMissing(error)) observations.push({ kind: 'missing', id, error });
    else observations.push({ kind: 'unanswered', id, error });
  }
  return { observations, warnings };
}

/** Ids named in one warning line. */
export const SAMPLE_IDS = 5;

/** A count and the first few ids, for a warning that stands for many exports. */
class Tally {
  count = 0;
  readonly #sample: string[] = [];
  add(id: string): void {
    this.count++;
    if (this.#sample.length < SAMPLE_IDS) this.#sample.push(id);
  }
  detail(): { count: number; sample_ids: string[] } {
    return { count: this.count, sample_ids: [...this.#sample] };
  }
}

/**
 * A value from an answer, for a log line, by its type alone: `String()` of a parsed object can
 * throw (`{"toString": 1}`) and would fail the whole answer.
 */
function describeValue(value: unknown): string {
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return `(${value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value})`;
}

/** The state a resource observation reports, for telling duplicates apart. */
function stateOf(o: Observation): string | undefined {
  if (o.kind === 'resource') return o.resource.state;
  if (o.kind === 'unreadable') return `unreadable ${o.state}`;
  return undefined;
}

/** The platform's error object on a FAILED job, when it is one. */
function platformError(value: unknown): PlatformErrorBody | null {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as PlatformErrorBody)
    : null;
}

function asExport(value: unknown): PlatformExport | null {
  if (!value || typeof value !== 'object') return null;
  const v = value as Record<string, unknown>;
  return typeof v.id === 'string' && typeof v.state === 'string' ? (v as PlatformExport) : null;
}

/**
 * The observation of a resource whose state is not text (missing, null, a number, an object): it still says
 * the job exists. `state` describes what came by its type alone, never serialising it (it may be
 * nested past what JSON.stringify can take).
 */
function unreadableResource(value: unknown): Extract<Observation, { kind: 'unreadable' }> | null {
  if (!value || typeof value !== 'object') return null;
  const v = value as Record<string, unknown>;
  if (typeof v.id !== 'string' || typeof v.state === 'string') return null;
  const s = v.state;
  const state =
    s === undefined
      ? '(none)'
      : s === null
        ? '(null)'
        : typeof s === 'number' || typeof s === 'boolean'
          ? `(${typeof s} ${String(s)})`
          : `(${Array.isArray(s) ? 'array' : typeof s})`;
  return { kind: 'unreadable', id: v.id, state };
}
