/**
 * `watch --all` against a platform whose listings name one id as both an export and an import,
 * have no route for one kind, or never answer.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Cleanups, FULL_QUOTA, loopbackPlatform, sendJson } from './helpers/platform.js';
import { killAll, spawnCli } from './helpers/spawn.js';
import { TOKEN } from './helpers/stack.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  killAll();
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * Lists `exports` and `imports` (one page each, whatever the state asked for); every bulk get
 * answers COMPLETED. `imports: 'never'`: the import listing is never answered (`onHold` is told).
 */
async function platform(
  lists: { exports: string[]; imports: string[] | 'no route' | 'never' },
  onHold: () => void = () => undefined,
): Promise<string> {
  const { url } = await loopbackPlatform(cleanups, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      const send = (status: number, body: unknown) => sendJson(res, status, body);
      const path = url.pathname;
      if (path.endsWith('/rate_limit')) return send(200, FULL_QUOTA);
      const list = /\/storage\/(exports|imports)$/.exec(path);
      if (list?.[1] === 'imports' && lists.imports === 'never') return onHold();
      if (list && req.method === 'GET' && !(list[1] === 'imports' && lists.imports === 'no route')) {
        const state = url.searchParams.get('state');
        const ids = list[1] === 'exports' ? lists.exports : (lists.imports as string[]);
        return send(200, { items: state === 'RUNNING' ? ids.map((id) => ({ id, state })) : [], links: [] });
      }
      const bulk = /\/bulk\/storage\/(exports|imports)\/get$/.exec(path);
      if (bulk) {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, string[]>;
        const ids = body.export_ids ?? body.import_ids ?? [];
        return send(200, { items: ids.map((id) => ({ resource: { id, state: 'COMPLETED' } })) });
      }
      send(404, { status: 404, code: 90003, message: 'Not found' });
    });
  });
  return url;
}

/** `watch --all --json` against `url`, to its end: its exit code and the ids it printed. */
async function watchAll(url: string, flags: string[] = []) {
  const p = spawnCli(['watch', '--all', '--json', ...flags], {
    SB_API_ENDPOINT: url,
    SB_AUTH_TOKEN: TOKEN,
    WATCHER_POLL_INTERVAL: '200ms',
    WATCHER_RATE_BUDGET: '1000',
    WATCHER_RATE_WINDOW: '10s',
  });
  const { code } = await p.exited;
  const ids = p
    .stdout()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => (JSON.parse(l) as { id: string }).id);
  return { p, code, ids };
}

describe('watch --all', () => {
  it('leaves out an id the platform lists as both an export and an import, and watches the rest (no usage error)', async () => {
    const url = await platform({ exports: ['SHARED1', 'E2'], imports: ['SHARED1', 'I2'] });
    const { p, code, ids } = await watchAll(url);
    // Exit 2 is "usage or configuration error": the user gave no ids at all.
    expect(p.stderr()).not.toMatch(/also given as/);
    expect(code).not.toBe(2);
    // Which kind it is cannot be told: it is watched as neither (README), and the total says so.
    expect(p.stderr()).toMatch(/as both an export and an import; not watched: SHARED1/);
    expect(p.stderr()).toMatch(/watching 2 jobs/);
    expect(ids.sort()).toEqual(['E2', 'I2']);
  });

  it('on a deployment without imports (404 on /storage/imports), still watches the exports it listed', async () => {
    const url = await platform({ exports: ['E1', 'E2'], imports: 'no route' });
    const { p, code, ids } = await watchAll(url);
    // The endpoint is right (the exports were listed): blaming it is wrong.
    expect(p.stderr()).not.toMatch(/check SB_API_ENDPOINT/);
    expect(code).toBe(0);
    expect(ids.sort()).toEqual(['E1', 'E2']);
  });

  // Before, both said "0 of 0 not finished": a count of jobs that was never made.
  it('timed out while listing: says the listing was cut short and nothing was watched', async () => {
    const url = await platform({ exports: ['E1'], imports: 'never' });
    const { p, code, ids } = await watchAll(url, ['--timeout', '2s']);
    expect(code).toBe(1);
    expect(p.stderr()).toMatch(
      /error: timed out after 2s \(--timeout\): while the unfinished exports and imports were being listed; nothing was watched/,
    );
    expect(p.stderr()).not.toMatch(/0 of 0/);
    expect(ids).toEqual([]);
  });

  it('interrupted while listing: says so, and exits 130', async () => {
    let held: () => void = () => undefined;
    const asked = new Promise<void>((resolve) => {
      held = resolve;
    });
    const url = await platform({ exports: ['E1'], imports: 'never' }, () => held());
    const p = spawnCli(['watch', '--all', '--json'], {
      SB_API_ENDPOINT: url,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_RATE_BUDGET: '1000',
      WATCHER_RATE_WINDOW: '10s',
    });
    await asked;
    p.child.kill('SIGINT');
    const { code } = await p.exited;
    expect(code).toBe(130);
    expect(p.stderr()).toMatch(
      /interrupted while the unfinished exports and imports were being listed; nothing was watched/,
    );
    expect(p.stderr()).not.toMatch(/0 of 0/);
  });
});
