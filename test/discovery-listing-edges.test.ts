/**
 * Listing edges of discovery and `watch --all`.
 */
import { describe, expect, it } from 'vitest';
import type { JobPage } from '../src/platform/platform-client.js';
import { listUnfinished, pageKey } from '../src/polling/discovery.js';
import { PlatformError } from '../src/shared/errors.js';
import { exportDiscovery } from './helpers/discovery.js';

describe('a next link back to an offset already read, its number written another way', () => {
  it('pageKey takes 100.0, 1e2 and 0x64 as the page at 100, as a server that reads the number does', () => {
    // The simulator reads the offset with Number(): each of these is the page at 100 there.
    for (const spelled of ['100.0', '100.00', '1e2', '10e1', '0x64']) {
      expect(Number(spelled)).toBe(100);
      expect(pageKey(`/storage/exports?state=PENDING&offset=${spelled}`)).toBe(
        pageKey('/storage/exports?state=PENDING&offset=100'),
      );
    }
  });

  it.each([
    // One more trailing zero each time: 100.0, 100.00, ...
    [
      '100.0, 100.00, ...',
      (reads: number) => `/storage/exports?state=PENDING&offset=100.${'0'.repeat(reads)}`,
    ],
    // One more leading zero each time: 0100, 00100, ...
    ['0100, 00100, ...', (reads: number) => `/storage/exports?offset=${'0'.repeat(reads)}100`],
  ])('listUnfinished ends a listing whose next link comes back to offset 100 as %s', async (_, nextAt) => {
    let reads = 0;
    // The same page at offset 100 each time, its offset spelled another way.
    const spelled = async (): Promise<JobPage> => {
      reads++;
      return { items: [{ id: 'x', state: 'PENDING' }], next: nextAt(reads) };
    };
    expect(await listUnfinished(spelled, 'export')).toEqual(['x']);
    // PENDING and RUNNING: the first page, the page at 100, then the link back to it ends each.
    expect(reads).toBeLessThanOrEqual(6);
  });

  it('pageKey takes a + typed in the offset (%2B100) as the page at 100', () => {
    expect(pageKey('/storage/exports?offset=%2B100&limit=100')).toBe(pageKey('/storage/exports?offset=100'));
  });

  it('discovery does not spend pass after pass of its share on one page whose offset is respelled', async () => {
    let reads = 0;
    const asked: string[] = [];
    const discovery = exportDiscovery(async (_kind, from) => {
      reads++;
      if (reads > 50) throw new PlatformError('SHARE_SPENT', "this window's share is spent");
      asked.push('state' in from ? from.state : from.next);
      if ('state' in from && from.state === 'RUNNING')
        return { items: [{ id: 'running-1', state: 'RUNNING' }], next: undefined };
      return {
        items: [{ id: 'pending-1', state: 'PENDING' }],
        next: `/storage/exports?state=PENDING&offset=1${'0'.repeat(reads + 1)}e-${reads - 1}`,
      };
    });
    const report = await discovery.runRound();
    // The RUNNING listing is reached in the same round, after a few pages at most.
    expect(asked).toContain('RUNNING');
    expect(report?.complete).toBe(true);
  });
});
