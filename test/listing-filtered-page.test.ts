/**
 * Where a listing ends. A page the platform sends empty ends it, whatever next page it names: the
 * platform pages by offset, so nothing lies past an empty page (docs/platform-api.md §3). A page
 * whose items the client filters out (ids that are not job ids) is not an empty page of the
 * platform's: the listing goes on to the next page, where real jobs are.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { listUnfinished } from '../src/polling/discovery.js';
import { exportDiscovery } from './helpers/discovery.js';
import { type Cleanups, FULL_QUOTA, loopbackPlatform, sendJson } from './helpers/platform.js';
import { closeAll, startWatcher } from './hostile/hostile-watcher.js';

const TOKEN = 'tok_LIST_filtered_7a1c';
const cleanups: Cleanups = [];
afterEach(async () => {
  await closeAll();
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** PENDING exports: offset 0 holds only odd ids (not job ids), offset 100 holds a real one. */
async function platform(): Promise<string> {
  const { url } = await loopbackPlatform(cleanups, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const send = (status: number, body: unknown) => sendJson(res, status, body);
    if (url.pathname.endsWith('/rate_limit')) return send(200, FULL_QUOTA);
    if (url.pathname.endsWith('/storage/exports') && url.searchParams.get('state') === 'PENDING') {
      const offset = Number(url.searchParams.get('offset') ?? '0');
      if (offset === 0)
        return send(200, {
          items: [
            { id: 'legacy.job.1', state: 'PENDING' },
            { id: 'legacy.job.2', state: 'PENDING' },
          ],
          links: [{ rel: 'next', href: `${url.pathname}?state=PENDING&limit=100&offset=100` }],
        });
      if (offset === 100) return send(200, { items: [{ id: 'real-job-1', state: 'PENDING' }], links: [] });
    }
    if (url.pathname.endsWith('/storage/exports') || url.pathname.endsWith('/storage/imports'))
      return send(200, { items: [], links: [] });
    send(404, { status: 404, code: 90003, message: 'Not found' });
  });
  return url;
}

/** Discovery through the watcher's client, adding (and recording) every id it finds. */
function recordingDiscovery(w: Awaited<ReturnType<typeof startWatcher>>) {
  const added: string[] = [];
  const discovery = exportDiscovery((kind, from) => w.daemon.client.listPage(kind, from), {
    share: 100,
    add: async (_kind, ids) => {
      added.push(...ids);
      return { accepted: [...ids] };
    },
  });
  return { discovery, added };
}

describe('a page whose every item the client left out, more pages following', () => {
  it('listUnfinished (watch --all) still reads the next page and finds the real job', async () => {
    const w = await startWatcher(await platform(), TOKEN);
    const ids = await listUnfinished((kind, from) => w.daemon.client.listPage(kind, from), 'export');
    expect(ids).toEqual(['real-job-1']);
  });

  it('discovery still reads the next page and adds the real job', async () => {
    const w = await startWatcher(await platform(), TOKEN);
    const { discovery, added } = recordingDiscovery(w);
    await discovery.runRound();
    expect(added).toEqual(['real-job-1']);
  });
});

describe('an empty page that names a next one', () => {
  /** One PENDING export at offset 0, then empty pages, each naming the next offset. */
  async function emptyPagesOnward(): Promise<{ url: string; listReads: () => number }> {
    let reads = 0;
    const { url } = await loopbackPlatform(cleanups, (req, res) => {
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      if (url.pathname.endsWith('/rate_limit')) return sendJson(res, 200, FULL_QUOTA);
      if (!url.pathname.endsWith('/storage/exports'))
        return sendJson(res, 404, { status: 404, code: 90003, message: 'Not found' });
      reads++;
      const offset = Number(url.searchParams.get('offset') ?? '0');
      const state = url.searchParams.get('state');
      sendJson(res, 200, {
        items: offset === 0 && state === 'PENDING' ? [{ id: 'only-1', state: 'PENDING' }] : [],
        links: [{ rel: 'next', href: `${url.pathname}?state=${state}&limit=100&offset=${offset + 100}` }],
      });
    });
    return { url, listReads: () => reads };
  }

  it('listPage names no next page after it', async () => {
    const { url } = await emptyPagesOnward();
    const w = await startWatcher(url, TOKEN);
    const first = await w.daemon.client.listPage('export', { state: 'PENDING' });
    expect(first.next).toBe('/storage/exports?state=PENDING&limit=100&offset=100');
    expect(await w.daemon.client.listPage('export', { next: first.next as string })).toEqual({
      items: [],
      next: undefined,
    });
  });

  it('listUnfinished (watch --all) ends there instead of following fresh offsets 10,000 pages deep', async () => {
    const { url, listReads } = await emptyPagesOnward();
    const w = await startWatcher(url, TOKEN);
    expect(await listUnfinished((kind, from) => w.daemon.client.listPage(kind, from), 'export')).toEqual([
      'only-1',
    ]);
    // PENDING: the first page and the empty one after it, read twice (a listing of two pages is
    // read again); RUNNING: one empty page.
    expect(listReads()).toBe(5);
  });

  it('discovery ends the listing there and completes its round', async () => {
    const { url, listReads } = await emptyPagesOnward();
    const w = await startWatcher(url, TOKEN);
    const { discovery, added } = recordingDiscovery(w);
    const report = await discovery.runRound();
    expect(added).toEqual(['only-1']);
    expect(report?.complete).toBe(true);
    // PENDING: two pages; RUNNING: one.
    expect(listReads()).toBe(3);
  });
});
