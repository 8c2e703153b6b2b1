/**
 * One bad id must never starve the other ids of its call. Three ways a platform can make it try,
 * each against a real daemon over loopback HTTP:
 * - a bulk call refused as a whole with a job-level code (403/9005, 404/9008) because of one id;
 * - in single-get mode (bulk answered 405), one id whose GET fails with a 4xx of its own;
 * - a bulk call answered 500 whenever it names one id (the scheduler takes the batch apart).
 * Each test also bounds the requests the bad id costs, so isolating it never loops hot.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Env } from '../../src/config/config.js';
import {
  askedIds,
  exportObject,
  type Handler,
  type HostilePlatform,
  okHandler,
  type Reply,
} from './hostile-platform.js';
import { closeAll, startPlatform, startWatcher, type Watcher } from './hostile-watcher.js';

const TOKEN = 'tok_HOSTILE_batch_5e1f';

afterEach(closeAll);

const platform = startPlatform;
const watcher = (endpoint: string, env: Env = {}): Promise<Watcher> => startWatcher(endpoint, TOKEN, env);

/** Fails the test after `ms` instead of waiting out vitest's minute: the unfixed code never gets there. */
async function within(ms: number, what: string, waiting: Promise<void>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms);
  });
  try {
    await Promise.race([waiting, late]);
  } finally {
    clearTimeout(timer);
  }
}

const idOf = (path: string) => decodeURIComponent(path.split('/').pop() ?? '');
const NO_ACCESS = {
  status: 403,
  body: { status: 403, code: 9005, message: 'Insufficient privileges to access the requested job.' },
};
const NO_SUCH_JOB = {
  status: 404,
  body: { status: 404, code: 9008, message: 'Requested job does not exist.' },
};

/** Bulk calls that asked about `id`, and single gets of `id`, so far. */
function asks(p: HostilePlatform, id: string): { bulk: number; get: number } {
  let bulk = 0;
  let get = 0;
  for (const r of p.seen) {
    if (r.route === 'bulk_get' && askedIds(r.json).includes(id)) bulk++;
    if (r.route === 'get' && idOf(r.path) === id) get++;
  }
  return { bulk, get };
}

function checksOf(w: Watcher, id: string): number {
  return w.daemon.tracker.get(id)?.checks ?? 0;
}

const GOOD = ['g1', 'g2', 'g3', 'h1', 'h2', 'h3', 'h4'];
const BATCH = 4;
/** Checks of a job the platform denies before it is LOST (SPEC "Tracking"). */
const LOST_AFTER = 3;

/**
 * A platform that refuses any bulk call naming `bad` with `refusal` (while `active()` holds), and
 * answers gets one by one.
 */
function refusing(bad: string, refusal: Reply, active: () => boolean = () => true): Handler {
  return ({ route, json, path }) => {
    if (route === 'bulk_get') {
      const asked = askedIds(json);
      if (asked.includes(bad) && active()) return refusal;
      return { body: { items: asked.map((id) => ({ resource: exportObject(id, 'RUNNING') })) } };
    }
    if (route === 'get')
      return idOf(path) === bad && active() ? refusal : { body: exportObject(idOf(path), 'RUNNING') };
    return okHandler()({ route, json, path, headers: {} });
  };
}

describe('a bulk call refused as a whole because of one id', () => {
  it('403/9005 for one foreign id: the rest of its batch is answered, the foreign id becomes LOST', async () => {
    const p = await platform(refusing('foreign', NO_ACCESS));
    const w = await watcher(p.url, { WATCHER_BATCH_SIZE: String(BATCH) });
    await w.daemon.registry.watch(['foreign', ...GOOD], null);
    const { scheduler, tracker } = w.daemon;
    await within(
      10_000,
      'every good id RUNNING and foreign LOST',
      scheduler.until(
        () => tracker.countByState().RUNNING === GOOD.length && tracker.get('foreign') === undefined,
      ),
    );
    const lost = await w.daemon.registry.get('foreign');
    expect(lost).toMatchObject({ state: 'LOST', error: { code: 9005 } });
    expect(lost?.history.map((h) => h.state)).toEqual(['UNKNOWN', 'LOST']);
    for (const id of GOOD) expect(tracker.get(id)?.state).toBe('RUNNING');

    // Let the good ids be checked a few more times: the foreign one is never asked about again.
    const settled = checksOf(w, 'g1');
    await within(
      10_000,
      'three more checks of g1',
      scheduler.until(() => checksOf(w, 'g1') >= settled + 3),
    );
    // The bound: foreign was in exactly LOST_AFTER bulk calls (each one a check of it, and a
    // LOST job is never checked again); each of those was answered by at most BATCH single gets.
    // Nothing else is ever asked singly, and bulk stays on for everyone.
    expect(asks(p, 'foreign').bulk).toBe(LOST_AFTER);
    expect(asks(p, 'foreign').get).toBeLessThanOrEqual(LOST_AFTER);
    expect(p.requests.get).toBeLessThanOrEqual(LOST_AFTER * BATCH);
    expect(w.daemon.client.bulkSupported).toBe(true);
    expect(scheduler.mode).toBe('running');
    expect(w.lines.filter((l) => l.msg === 'check failed after retries; ids stay due')).toEqual([]);
    // One warning per refused call, naming the reason, never one per id.
    const split = w.lines.filter((l) => String(l.msg).includes('asking its ids one by one'));
    expect(split.length).toBeGreaterThan(0);
    expect(split.length).toBeLessThanOrEqual(LOST_AFTER);
    expect(split[0]).toMatchObject({ level: 'warn', status: 403, platform_code: 9005 });
  });

  it('404/9008 on a whole call is not "no bulk endpoint": bulk stays on, the ghost becomes LOST', async () => {
    const p = await platform(refusing('ghost', NO_SUCH_JOB));
    const w = await watcher(p.url, { WATCHER_BATCH_SIZE: String(BATCH) });
    await w.daemon.registry.watch(['ghost', ...GOOD], null);
    const { scheduler, tracker } = w.daemon;
    await within(
      10_000,
      'every good id RUNNING and ghost LOST',
      scheduler.until(
        () => tracker.countByState().RUNNING === GOOD.length && tracker.get('ghost') === undefined,
      ),
    );
    expect(await w.daemon.registry.get('ghost')).toMatchObject({ state: 'LOST', error: { code: 9008 } });
    const settled = checksOf(w, 'g1');
    const bulkBefore = p.requests.bulk_get;
    const getsBefore = p.requests.get;
    await within(
      10_000,
      'three more checks of g1',
      scheduler.until(() => checksOf(w, 'g1') >= settled + 3),
    );
    // The good ids go on in bulk calls; no single get after the ghost is gone.
    expect(w.daemon.client.bulkSupported).toBe(true);
    expect(p.requests.bulk_get).toBeGreaterThan(bulkBefore);
    expect(p.requests.get).toBe(getsBefore);
    expect(asks(p, 'ghost').bulk).toBe(LOST_AFTER);
    expect(p.requests.get).toBeLessThanOrEqual(LOST_AFTER * BATCH);
  });

  it('a token the single gets refuse (401) still fails the call as a whole', async () => {
    const p = await platform(({ route, json, path }) => {
      if (route === 'bulk_get') return NO_ACCESS;
      if (route === 'get')
        return { status: 401, body: { status: 401, code: 90001, message: 'Unauthorized' } };
      return okHandler()({ route, json, path, headers: {} });
    });
    const w = await watcher(p.url, { WATCHER_BATCH_SIZE: String(BATCH) });
    await w.daemon.registry.watch(['foreign', 'g1', 'g2'], null);
    await within(
      5000,
      'unauthorized mode',
      w.daemon.scheduler.until(() => w.daemon.scheduler.mode === 'unauthorized'),
    );
    // Nothing was decided from a call the platform refused the token on.
    expect(w.daemon.tracker.countByState().UNKNOWN).toBe(3);
    expect(w.daemon.tracker.get('foreign')?.misses).toBe(0);
  });
});

describe('single gets (bulk answered 405): one id whose GET fails', () => {
  function fallback(answers: Record<string, { status: number; body?: unknown }>): Handler {
    return ({ route, json, path }) => {
      if (route === 'bulk_get') return { status: 405, body: { status: 405, message: 'Method not allowed' } };
      if (route === 'get') return answers[idOf(path)] ?? { body: exportObject(idOf(path), 'RUNNING') };
      return okHandler()({ route, json, path, headers: {} });
    };
  }

  it("a 404/90003, a 400 and a bare 404 are that id's alone; a 403/9005 still makes it LOST", async () => {
    const p = await platform(
      fallback({
        generic: { status: 404, body: { status: 404, code: 90003, message: 'Not found' } },
        invalid: { status: 400, body: { status: 400, code: 9000, message: 'Bad request' } },
        bare: { status: 404, body: '' },
        foreign: NO_ACCESS,
      }),
    );
    const w = await watcher(p.url);
    const bad = ['generic', 'invalid', 'bare'];
    await w.daemon.registry.watch([...bad, 'foreign', 'g1', 'g2', 'g3'], null);
    const { scheduler, tracker } = w.daemon;
    await within(
      10_000,
      'g1..g3 RUNNING and foreign LOST',
      scheduler.until(() => tracker.countByState().RUNNING === 3 && tracker.get('foreign') === undefined),
    );
    expect(await w.daemon.registry.get('foreign')).toMatchObject({ state: 'LOST', error: { code: 9005 } });
    const settled = checksOf(w, 'g1');
    await within(
      10_000,
      'four more checks of g1',
      scheduler.until(() => checksOf(w, 'g1') >= settled + 4),
    );

    for (const id of bad) {
      // Checked (so not due again at once), never counted a miss: the platform never said
      // "no such job" of it, and a bare 404 is also what a wrong route answers.
      expect(tracker.get(id)).toMatchObject({ state: 'UNKNOWN', misses: 0 });
      expect(checksOf(w, id)).toBeGreaterThan(0);
      // Not hot: one GET per check, like any other id (+1 for a call in flight at the end).
      expect(asks(p, id).get).toBeLessThanOrEqual(asks(p, 'g1').get + 1);
    }
    expect(scheduler.mode).toBe('running');
    expect(w.daemon.client.bulkSupported).toBe(false);
    expect(p.requests.bulk_get).toBe(1);
    expect(w.lines.filter((l) => l.msg === 'check failed after retries; ids stay due')).toEqual([]);
    const itemErrors = w.lines.filter((l) => l.reason === 'item_error');
    expect(itemErrors.length).toBeGreaterThan(0);
    expect(itemErrors[0]?.sample_ids).toEqual(expect.arrayContaining(bad));
  });
});

describe('a bulk call answered 500 whenever it names one id', () => {
  const SERVER_ERROR = { status: 500, body: { status: 500, code: 0, message: 'Internal server error' } };

  it('every id in one batch: halves are asked until one is answered, then the id is set apart', async () => {
    const p = await platform(refusing('poison', SERVER_ERROR));
    // The default batch size: all eight ids fit in one call, so no other call is answered meanwhile.
    const w = await watcher(p.url);
    await w.daemon.registry.watch(['poison', ...GOOD], null);
    const { scheduler, tracker } = w.daemon;
    await within(
      10_000,
      'every good id RUNNING and poison held apart alone',
      scheduler.until(() => tracker.countByState().RUNNING === GOOD.length && scheduler.isolation.ids === 1),
    );
    expect(tracker.get('poison')).toMatchObject({ state: 'UNKNOWN', misses: 0 });
    const sizes = p.seen.filter((r) => r.route === 'bulk_get').map((r) => askedIds(r.json).length);
    expect(sizes[0]).toBe(8);
    expect(Math.max(...sizes)).toBe(8);
  });

  it('the id is checked on its own, backing off; the rest keep their pace; healed, it rejoins', async () => {
    let healed = false;
    const p = await platform(refusing('poison', SERVER_ERROR, () => !healed));
    const w = await watcher(p.url, { WATCHER_BATCH_SIZE: String(BATCH) });
    await w.daemon.registry.watch(['poison', ...GOOD], null);
    const { scheduler, tracker } = w.daemon;
    const alone = () =>
      w.lines.filter((l) => l.export_id === 'poison' && String(l.msg).includes('on its own'));

    // Taken apart down to the one id that fails, while every other id is answered.
    await within(
      10_000,
      'every good id RUNNING and poison held apart alone',
      scheduler.until(
        () =>
          tracker.countByState().RUNNING === GOOD.length &&
          scheduler.isolation.ids === 1 &&
          alone().length >= 1,
      ),
    );
    const isolatedAt = p.seen.length;
    const checksBefore = checksOf(w, 'g1');

    // Three failures alone: each wait doubles from the poll interval (100, 200, 400 ms). The good
    // ids are checked all along, at the poll interval: three times at least meanwhile.
    await within(
      10_000,
      'three failures of poison alone, three checks of g1',
      scheduler.until(() => alone().length >= 3 && checksOf(w, 'g1') - checksBefore >= 3),
    );
    expect(
      alone()
        .slice(0, 3)
        .map((l) => l.failures),
    ).toEqual([1, 2, 3]);
    expect(
      alone()
        .slice(0, 3)
        .map((l) => l.retry_in_ms),
    ).toEqual([100, 200, 400]);
    // Since it was held apart, every call that names it names it alone, and it cost no more
    // than its own calls (a try and one retry each).
    const later = p.seen.slice(isolatedAt).filter((r) => r.route === 'bulk_get');
    const naming = later.filter((r) => askedIds(r.json).includes('poison'));
    for (const r of naming) expect(askedIds(r.json)).toEqual(['poison']);
    expect(naming.length).toBeLessThanOrEqual(2 * alone().length);
    // Nothing decided from a failing call: poison is neither final nor counted missing.
    expect(tracker.get('poison')).toMatchObject({ state: 'UNKNOWN', misses: 0 });
    expect(scheduler.mode).toBe('running');

    healed = true;
    await within(
      10_000,
      'poison answered and back in the normal order',
      scheduler.until(() => tracker.get('poison')?.state === 'RUNNING' && scheduler.isolation.ids === 0),
    );
    expect(scheduler.isolation).toEqual({ ids: 0, groups: 0, callsOut: 0 });
    // Back in the normal order: asked with the others again.
    const rejoined = p.seen.length;
    await within(
      10_000,
      'poison checked in a batch with others',
      scheduler.until(() =>
        p.seen
          .slice(rejoined)
          .some(
            (r) =>
              r.route === 'bulk_get' && askedIds(r.json).includes('poison') && askedIds(r.json).length > 1,
          ),
      ),
    );
  });
});
