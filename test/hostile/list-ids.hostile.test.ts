/**
 * Hostile listing pages, through the daemon's own client over loopback.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { okHandler } from './hostile-platform.js';
import { closeAll, startPlatform, startWatcher } from './hostile-watcher.js';

const TOKEN = 'tok_HOSTILE_list_5e1f';

afterEach(closeAll);

describe('a listing page whose ids are not strings', () => {
  it('leaves them out with the one warning a page the README promises for ids that are not job ids', async () => {
    const p = await startPlatform(({ route, json, path }) =>
      route === 'list'
        ? {
            body: {
              items: [
                { id: 12345, state: 'PENDING' },
                { id: { $oid: 'abc' }, state: 'PENDING' },
                { id: 'exp-ok', state: 'PENDING' },
              ],
              links: [],
            },
          }
        : okHandler()({ route, json, path, headers: {} }),
    );
    const w = await startWatcher(p.url, TOKEN);
    const page = await w.daemon.client.listPage('export', { state: 'PENDING' });
    expect(page.items.map((i) => i.id)).toEqual(['exp-ok']);
    const warned = w.lines.filter(
      (l) => l.msg === 'the platform listed exports whose ids are not job ids; left out',
    );
    expect(warned).toEqual([expect.objectContaining({ level: 'warn', count: 2 })]);
  });
});
