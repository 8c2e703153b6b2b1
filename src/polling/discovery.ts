/**
 * Discovery: the daemon also watches the user's own export and import jobs it was not handed
 * (`WATCHER_DISCOVER`). Every `WATCHER_DISCOVER_INTERVAL` a round lists the unfinished jobs of each
 * kind asked for, `GET /storage/{exports|imports}?state=PENDING`, then `?state=RUNNING`, 100 a page,
 * following `links[rel=next]`, and adds what the store does not know yet, with the metadata
 * `{"discovered": true}`. From there a discovered job is watched like any other.
 *
 * Budget. Discovery's requests come out of the daemon's own budget, through the same limiter, and
 * through a share of it (`RateLimiter.share`): at most a tenth of `WATCHER_RATE_BUDGET` in any
 * budget window. Pages are asked for one at a time, so the share is never exceeded. When it is
 * spent, the round stops, and the next round resumes at the page where this one stopped (so that
 * a long listing makes progress from interval to interval instead of reading its first pages again);
 * a round that reaches the end of every listing makes the next one start afresh.
 *
 * Loops. A next link to a page this listing already read (or a listing longer than any real
 * account) ends that listing with a warning, as in `listUnfinished`; the pages read are
 * remembered across the rounds that resume the listing, so a link that loops cannot spend every
 * window's share on one page and keep the next listings from ever being read.
 *
 * Failures. A page that fails (after the client's retries) or an add the store refuses ends the
 * round with a warning; the next round tries the same page again. A page that fails again is given
 * up for this pass, and the round goes on with the next listing; while that listing keeps failing,
 * its failure no longer ends a round (a listing the platform refuses for good, say imports on a
 * deployment without them, would otherwise keep every other listing from ever being read). Ids
 * the store holds as the other kind are refused with the whole add (the store's rule for a
 * request); they are logged and the rest of the page is added without them. The client leaves out
 * listed ids that are not job ids. Nothing here changes a job's state: a discovered job is added
 * UNKNOWN and checked in bulk like the rest.
 *
 * `listUnfinished` is the same listing without a share, read to its end (a listing of more than one
 * page up to `MAX_LIST_PASSES` times): `watch --all`.
 */
import type { Logger } from 'pino';
import type { JobPage } from '../platform/platform-client.js';
import type { ShareGate } from '../platform/rate-limiter.js';
import { PlatformError } from '../shared/errors.js';
import type { JobKind } from './tracker.js';

/** The states a job is listed in while it is not finished. */
export const UNFINISHED_STATES = ['PENDING', 'RUNNING'] as const;

/** The metadata a discovered job is added with. */
export const DISCOVERED_METADATA: Readonly<Record<string, unknown>> = Object.freeze({ discovered: true });

/** Reads one page of a listing: the first page of a state, or the page a previous one named next. */
export type PageReader = (kind: JobKind, from: { state: string } | { next: string }) => Promise<JobPage>;

export interface DiscoveryDeps {
  kinds: readonly JobKind[];
  intervalMs: number;
  /** One page, through the share gate. */
  list: PageReader;
  /** Adds ids of one kind with `DISCOVERED_METADATA`; resolves once they are stored. */
  add(kind: JobKind, ids: readonly string[]): Promise<{ accepted: string[]; conflicts?: string[] }>;
  /** The share of the budget discovery may use; read for the round's log line. */
  gate: Pick<ShareGate, 'left' | 'max'>;
  log: Logger;
  now?: () => number;
}

/** What one round did, as logged. */
export interface RoundReport {
  pages: number;
  /** Unfinished jobs listed, by kind (a job listed twice, moving from PENDING to RUNNING, twice). */
  found: Record<JobKind, number>;
  /** Jobs the store did not know, now watched, by kind. */
  added: Record<JobKind, number>;
  /** Whether the round reached the end of every listing. */
  complete: boolean;
  /** Why it stopped before the end: the share was spent, or a page or an add failed. */
  stopped?: 'share_spent' | 'error';
}

/** Where a round stopped: which listing (kind × state), and the page to read next in it. */
interface Position {
  list: number;
  next: string | undefined;
  /** The next links this listing has followed so far, across the rounds that resumed it. */
  seen: Set<string>;
  /** Set when this page failed in the round before: another failure gives the listing up. */
  failed?: boolean;
}

export class Discovery {
  readonly #deps: DiscoveryDeps;
  readonly #lists: ReadonlyArray<{ kind: JobKind; state: string }>;
  readonly #now: () => number;
  /** Set when a round stopped early: the next one starts there. */
  #resume: Position | undefined;
  /** Listings (by index) given up after failing twice in a row; one success clears it. */
  readonly #failing = new Set<number>();
  /** Exists between rounds while started. */
  #timer: NodeJS.Timeout | undefined;
  /** Exists while a round runs. */
  #round: Promise<RoundReport | undefined> | undefined;
  #stopped = false;
  #started = false;

  constructor(deps: DiscoveryDeps) {
    if (deps.kinds.length === 0) throw new TypeError('Discovery needs at least one kind');
    this.#deps = deps;
    this.#lists = deps.kinds.flatMap((kind) => UNFINISHED_STATES.map((state) => ({ kind, state })));
    this.#now = deps.now ?? Date.now;
  }

  /** Runs a round at once, then one every interval (counted from the start of the previous one). */
  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    this.#loop();
  }

  /** No new round; waits for the one in flight (its page in flight is aborted by the client's close). */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#round;
  }

  /** One round now, unless one is running (then that one's report). For tests and the loop. */
  runRound(): Promise<RoundReport | undefined> {
    this.#round ??= this.#runRound().finally(() => {
      this.#round = undefined;
    });
    return this.#round;
  }

  #loop(): void {
    if (this.#stopped) return;
    const started = this.#now();
    void this.runRound().then(() => {
      if (this.#stopped) return;
      // Never longer than the interval: a wall clock that stepped back during the round would
      // otherwise hold the next one for as long as the step.
      const { intervalMs } = this.#deps;
      const wait = Math.min(intervalMs, Math.max(0, started + intervalMs - this.#now()));
      this.#timer = setTimeout(() => this.#loop(), wait);
      this.#timer.unref();
    });
  }

  async #runRound(): Promise<RoundReport | undefined> {
    const { log } = this.#deps;
    const report: RoundReport = {
      pages: 0,
      found: { export: 0, import: 0 },
      added: { export: 0, import: 0 },
      complete: false,
    };
    let at: Position = this.#resume ?? { list: 0, next: undefined, seen: new Set() };
    const resumed = this.#resume !== undefined;
    this.#resume = undefined;
    while (at.list < this.#lists.length && !this.#stopped) {
      const { kind, state } = this.#lists[at.list] as { kind: JobKind; state: string };
      let page: JobPage;
      try {
        page = await this.#deps.list(kind, at.next === undefined ? { state } : { next: at.next });
      } catch (error) {
        if (isCode(error, 'SHUTTING_DOWN')) return undefined;
        if (isCode(error, 'SHARE_SPENT')) {
          this.#resume = at;
          report.stopped = 'share_spent';
          break;
        }
        report.stopped = 'error';
        const failure = {
          kind,
          state,
          code: (error as PlatformError).code,
          err_message: (error as Error).message,
        };
        if (at.failed || this.#failing.has(at.list)) {
          this.#failing.add(at.list);
          log.warn(
            failure,
            'discovery could not list jobs again; that listing is skipped until the next pass',
          );
          at = { list: at.list + 1, next: undefined, seen: new Set() };
          continue;
        }
        this.#resume = { ...at, failed: true };
        log.warn(failure, 'discovery could not list jobs; trying again next round');
        break;
      }
      this.#failing.delete(at.list);
      if (at.failed) at = { list: at.list, next: at.next, seen: at.seen };
      report.pages++;
      const ids = page.items
        .filter((item) => (UNFINISHED_STATES as readonly string[]).includes(item.state))
        .map((item) => item.id);
      report.found[kind] += ids.length;
      if (ids.length > 0) {
        try {
          let result = await this.#deps.add(kind, ids);
          const conflicts = result.conflicts ?? [];
          if (conflicts.length > 0) {
            log.warn(
              { kind, count: conflicts.length, sample_ids: conflicts.slice(0, 5) },
              `discovered ${kind}s whose ids are watched as the other kind; not added`,
            );
            // The store adds a request whole or not at one: the rest of the page goes again
            // without them (once; one that became a conflict meanwhile waits for the next round).
            const refused = new Set(conflicts);
            const rest = ids.filter((id) => !refused.has(id));
            if (rest.length > 0) result = await this.#deps.add(kind, rest);
          }
          report.added[kind] += result.accepted.length;
        } catch (error) {
          this.#resume = at;
          report.stopped = 'error';
          log.warn({ kind, err: error }, 'discovery could not store what it found; trying again next round');
          break;
        }
      }
      const { next } = page;
      if (next !== undefined && !at.seen.has(pageKey(next)) && at.seen.size < MAX_LIST_PAGES) {
        at.seen.add(pageKey(next));
        at = { list: at.list, next, seen: at.seen };
        continue;
      }
      if (next !== undefined) {
        log.warn(
          { kind, state, pages: at.seen.size + 1 },
          'discovery listing links back to a page already read, or is longer than any account; ending that listing',
        );
      }
      at = { list: at.list + 1, next: undefined, seen: new Set() };
    }
    if (this.#stopped && report.stopped === undefined && at.list < this.#lists.length) return report;
    report.complete = at.list >= this.#lists.length && report.stopped === undefined;
    log.info(
      {
        kinds: this.#deps.kinds,
        resumed,
        pages: report.pages,
        found_exports: report.found.export,
        found_imports: report.found.import,
        added_exports: report.added.export,
        added_imports: report.added.import,
        complete: report.complete,
        ...(report.stopped ? { stopped: report.stopped } : {}),
        share: this.#deps.gate.max,
        share_left: this.#deps.gate.left(),
      },
      report.stopped === 'share_spent'
        ? "discovery round stopped: this window's share of the rate budget is spent; it resumes next round"
        : 'discovery round done',
    );
    return report;
  }
}

/**
 * Every unfinished job of `kind` (PENDING, then RUNNING), every page read: `watch --all`. A job
 * that moves from PENDING to RUNNING while the pages are read may be listed twice (ids are
 * de-duplicated). With offset paging, a job that leaves a listing (PENDING to RUNNING, RUNNING to
 * COMPLETED) on a page already read moves every job after it one place up, and the job that moves
 * from the next page's first place onto the page already read is not listed at all, though it is
 * as unfinished as ever (the platform lists oldest first). So a listing of more than one page is
 * read again, until a reading finds no job the ones before it missed (at most `MAX_LIST_PASSES`
 * readings): a job missed once is listed the next time unless jobs before it leave again.
 */
export async function listUnfinished(read: PageReader, kind: JobKind): Promise<string[]> {
  const ids = new Set<string>();
  for (const state of UNFINISHED_STATES) {
    for (let pass = 1; pass <= MAX_LIST_PASSES; pass++) {
      const before = ids.size;
      let page = await read(kind, { state });
      let pages = 1;
      let broken = false;
      const seen = new Set<string>();
      for (;;) {
        for (const item of page.items) {
          if ((UNFINISHED_STATES as readonly string[]).includes(item.state)) ids.add(item.id);
        }
        if (page.next === undefined) break;
        // A next page already read (a link that loops) or a listing past any real account ends it,
        // and it is not read again.
        if (seen.has(pageKey(page.next)) || seen.size >= MAX_LIST_PAGES) {
          broken = true;
          break;
        }
        seen.add(pageKey(page.next));
        page = await read(kind, { next: page.next });
        pages++;
      }
      // One page is read whole at once: nothing on it moved past. Nor did anything when a reading
      // after the first found nothing new.
      if (broken || pages === 1 || (pass > 1 && ids.size === before)) break;
    }
  }
  return [...ids];
}

/** Readings of one state's listing by `listUnfinished` at most (see there). */
export const MAX_LIST_PASSES = 3;

/** Pages of one state read by `listUnfinished` at most: a million jobs. */
export const MAX_LIST_PAGES = 10_000;

/**
 * What names a page of a listing, to tell a link back to a page already read: its `offset` when it
 * has one (the platform pages by offset), whatever else its query holds (a link that comes back to
 * the same offset with a parameter changed each time is still a loop); else the whole link.
 */
export function pageKey(next: string): string {
  const query = next.indexOf('?');
  const offset = query < 0 ? null : new URLSearchParams(next.slice(query + 1)).get('offset');
  if (offset === null) return next;
  // As a number: `0100`, `+100`, ` 100`, `100.0`, `1e2` and `0x64` are the page at 100 too, to a
  // server that reads the number (the simulator reads it with `Number`).
  const number = Number(offset);
  return `offset=${Number.isFinite(number) ? String(number) : offset}`;
}

function isCode(error: unknown, code: string): boolean {
  return error instanceof PlatformError && error.code === code;
}
