/**
 * The events the watcher emits for transitions, and their wire shape (README "Webhooks" and
 * "Logs"). Pure: building an event needs the transition and nothing else.
 *
 * Exports and imports have the same events, each under its own prefix: `export.completed` with
 * `data.export_id` and `data.export`, `import.completed` with `data.import_id` and `data.import`.
 * Webhook-ids: `evt_<export id>_<suffix>` (as ever) and `evt_import_<import id>_<suffix>`.
 */

import type { ExportState, JobKind } from '../polling/tracker.js';
import type { PlatformErrorBody } from '../shared/errors.js';
import { type EventBuilder, webhookIdPrefixes } from '../store/store.js';

export const EXPORT_EVENT_TYPES = [
  'export.running',
  'export.completed',
  'export.failed',
  'export.lost',
] as const;
export const IMPORT_EVENT_TYPES = [
  'import.running',
  'import.completed',
  'import.failed',
  'import.lost',
] as const;
export const EVENT_TYPES = [...EXPORT_EVENT_TYPES, ...IMPORT_EVENT_TYPES] as const;
export type ExportEventType = (typeof EXPORT_EVENT_TYPES)[number];
export type ImportEventType = (typeof IMPORT_EVENT_TYPES)[number];
export type EventType = (typeof EVENT_TYPES)[number];

/** The outcomes of both kinds: what `WATCHER_WEBHOOK_EVENTS` sends by default. */
export const DEFAULT_EVENT_TYPES: readonly EventType[] = [
  'export.completed',
  'export.failed',
  'export.lost',
  'import.completed',
  'import.failed',
  'import.lost',
];

/** The kind of job an event type is about. */
export function kindOfEventType(type: EventType): JobKind {
  return type.startsWith('import.') ? 'import' : 'export';
}

/** The body sent to receivers for an export's event, exactly as serialized. */
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

/** The body sent for an import's event: an export's, with `import_id` and `import`. */
export interface ImportEventBody {
  type: EventType;
  timestamp: string;
  data: {
    import_id: string;
    state: ExportState;
    previous_state: ExportState;
    metadata: Record<string, unknown> | null;
    /** The platform's import object as received; null for LOST. */
    import: Record<string, unknown> | null;
    error: PlatformErrorBody | null;
  };
}

export interface ExportEvent {
  /** The `webhook-id`: stable for one job and event type, so receivers can de-duplicate. */
  id: string;
  type: EventType;
  /** The job's id (an import's for an import event). */
  exportId: string;
  body: EventBody | ImportEventBody;
}

const SUFFIX_FOR_STATE: Partial<Record<ExportState, 'running' | 'completed' | 'failed' | 'lost'>> = {
  RUNNING: 'running',
  COMPLETED: 'completed',
  FAILED: 'failed',
  LOST: 'lost',
};

/** What an event is built from: a state change, as the tracker reports it. */
export interface StateChange {
  exportId: string;
  /** Default `export`. */
  kind?: JobKind;
  from: ExportState;
  to: ExportState;
  at: number;
  export: Record<string, unknown> | null;
  error: PlatformErrorBody | null;
}

/**
 * The event for a state change, with the job's metadata; null when the new state has no event
 * (PENDING, UNKNOWN) or the state did not change.
 */
export function eventForTransition(
  t: StateChange,
  metadata: Record<string, unknown> | null,
): ExportEvent | null {
  const suffix = SUFFIX_FOR_STATE[t.to];
  if (!suffix || t.from === t.to) return null;
  const kind = t.kind ?? 'export';
  const type = `${kind}.${suffix}` as EventType;
  const timestamp = new Date(t.at).toISOString();
  const object = t.to === 'LOST' ? null : t.export;
  const body: EventBody | ImportEventBody =
    kind === 'import'
      ? {
          type,
          timestamp,
          data: {
            import_id: t.exportId,
            state: t.to,
            previous_state: t.from,
            metadata,
            import: object,
            error: t.error,
          },
        }
      : {
          type,
          timestamp,
          data: {
            export_id: t.exportId,
            state: t.to,
            previous_state: t.from,
            metadata,
            export: object,
            error: t.error,
          },
        };
  return { id: webhookId(t.exportId, type), type, exportId: t.exportId, body };
}

/**
 * `evt_<export id>_<suffix>`, or `evt_import_<import id>_<suffix>` for an import. Ids match
 * ^[A-Za-z0-9_-]{1,128}$, so this is header-safe.
 */
export function webhookId(jobId: string, type: EventType): string {
  const [kind, suffix] = type.split('.') as [JobKind, string];
  const [exportPrefix, importPrefix] = webhookIdPrefixes(jobId);
  return `${kind === 'import' ? importPrefix : exportPrefix}${suffix}`;
}

/**
 * The store's event builder: the event of a state change for the subscribed types, serialized
 * once, so that every attempt sends (and signs) the same bytes.
 */
export function storedEventBuilder(wanted: ReadonlySet<EventType> | 'all'): EventBuilder {
  return (change, metadata, kind = 'export', exportJson) => {
    const event = eventForTransition(
      {
        exportId: change.id,
        kind,
        from: change.from,
        to: change.to,
        at: change.at,
        export: change.export,
        error: change.error,
      },
      metadata,
    );
    if (!event || (wanted !== 'all' && !wanted.has(event.type))) return null;
    return {
      id: event.id,
      type: event.type,
      exportId: event.exportId,
      body: eventBodyJson(event.body, exportJson ?? undefined),
    };
  };
}

/**
 * `JSON.stringify(body)`, byte for byte, with the platform's object written as `objectJson` when
 * given (the text the store made of that object for the job's row: a transition's object is not
 * made into JSON twice, which cost ~4 µs an export). A value JSON.stringify would leave out
 * (undefined, none is by the types) is written as null.
 */
export function eventBodyJson(body: EventBody | ImportEventBody, objectJson?: string): string {
  const d = body.data;
  const [idKey, id, objectKey, object] =
    'import_id' in d
      ? ['import_id', d.import_id, 'import', d.import]
      : ['export_id', d.export_id, 'export', d.export];
  return (
    `{"type":${json(body.type)},"timestamp":${json(body.timestamp)},"data":{"${idKey}":${json(id)},` +
    `"state":${json(d.state)},"previous_state":${json(d.previous_state)},"metadata":${json(d.metadata)},` +
    `"${objectKey}":${object === null || object === undefined ? 'null' : (objectJson ?? JSON.stringify(object))},` +
    `"error":${json(d.error)}}}`
  );
}

/** A value's JSON; null for what JSON.stringify leaves out (undefined, a function), so the body stays JSON. */
function json(value: unknown): string {
  return JSON.stringify(value) ?? 'null';
}
