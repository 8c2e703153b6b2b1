/**
 * The events the watcher emits for transitions, and their wire shape (README "Webhooks" and
 * "Logs"). Pure: building an event needs the transition and nothing else.
 */

import type { ExportState } from '../polling/tracker.js';
import type { PlatformErrorBody } from '../shared/errors.js';

export const EVENT_TYPES = ['export.running', 'export.completed', 'export.failed', 'export.lost'] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export const DEFAULT_EVENT_TYPES: readonly EventType[] = ['export.completed', 'export.failed', 'export.lost'];

/** The body sent to receivers, exactly as serialized. */
export interface EventBody {
  type: EventType;
  /** ISO time at which the transition was observed. */
  timestamp: string;
  data: {
    export_id: string;
    state: ExportState;
    previous_state: ExportState;
    metadata: Record<string, unknown> | null;
    /** The platform's object as received, with its result or error; null for LOST. */
    export: Record<string, unknown> | null;
    /**
     * Why it ended badly: the platform's error on a FAILED job, or the error that said a LOST
     * job does not exist or is not accessible (e.g. code 9008). Null for other events.
     */
    error: PlatformErrorBody | null;
  };
}

export interface ExportEvent {
  /** The `webhook-id`: stable for one export and event type, so receivers can de-duplicate. */
  id: string;
  type: EventType;
  exportId: string;
  body: EventBody;
}

const EVENT_FOR_STATE: Partial<Record<ExportState, EventType>> = {
  RUNNING: 'export.running',
  COMPLETED: 'export.completed',
  FAILED: 'export.failed',
  LOST: 'export.lost',
};

/** What an event is built from: a state change, as the tracker reports it. */
export interface StateChange {
  exportId: string;
  from: ExportState;
  to: ExportState;
  at: number;
  export: Record<string, unknown> | null;
  error: PlatformErrorBody | null;
}

/**
 * The event for a state change, with the export's metadata; null when the new state has no event
 * (PENDING, UNKNOWN) or the state did not change.
 */
export function eventForTransition(
  t: StateChange,
  metadata: Record<string, unknown> | null,
): ExportEvent | null {
  const type = EVENT_FOR_STATE[t.to];
  if (!type || t.from === t.to) return null;
  return {
    id: webhookId(t.exportId, type),
    type,
    exportId: t.exportId,
    body: {
      type,
      timestamp: new Date(t.at).toISOString(),
      data: {
        export_id: t.exportId,
        state: t.to,
        previous_state: t.from,
        metadata,
        export: t.to === 'LOST' ? null : t.export,
        error: t.error,
      },
    },
  };
}

/** `evt_<export id>_<suffix>`: export ids match ^[A-Za-z0-9_-]{1,128}$, so this is header-safe. */
export function webhookId(exportId: string, type: EventType): string {
  return `evt_${exportId}_${type.slice('export.'.length)}`;
}
