/** Store changes as tests and benchmarks write them. */
import type { ExportState } from '../../src/polling/tracker.js';
import type { EndpointRef, ExportChange, NewEvent } from '../../src/store/store.js';

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

/** An event for a change, as tests and benchmarks that do not care about its body write it. */
export function plainEvent(change: ExportChange): NewEvent {
  return { id: `evt_${change.id}_completed`, type: 'export.completed', exportId: change.id, body: '{}' };
}

/** An endpoint for deliveries that are stored but never sent (no receiver listens there). */
export const NOWHERE: EndpointRef = { key: 'bench', label: 'http://127.0.0.1:1/hooks' };
