/** Store changes as tests and benchmarks write them. */
import type { ExportState } from '../../src/polling/tracker.js';
import type { ExportChange } from '../../src/store/store.js';

/** A change of state with nothing else to say (no misses, no platform object, no error); `extra` fills in the rest. */
export function move(
  id: string,
  from: ExportState,
  to: ExportState,
  at: number,
  extra: Partial<ExportChange> = {},
): ExportChange {
  return { id, from, to, at, misses: 0, lastMiss: null, export: null, error: null, ...extra };
}
