/** Discovery as the listing tests make it: exports only, silent, every id added as new. */
import pino from 'pino';
import { Discovery, type DiscoveryDeps } from '../../src/polling/discovery.js';

/** A share of `share` requests a window; `deps` replaces any default. */
export function exportDiscovery(
  list: DiscoveryDeps['list'],
  { share = 10, ...deps }: Partial<Omit<DiscoveryDeps, 'list' | 'gate'>> & { share?: number } = {},
): Discovery {
  return new Discovery({
    kinds: ['export'],
    intervalMs: 10_000,
    gate: { left: () => share, max: share },
    log: pino({ level: 'silent' }),
    list,
    add: async (_kind, ids) => ({ accepted: [...ids] }),
    ...deps,
  });
}
