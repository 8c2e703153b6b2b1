/**
 * `receive`: a webhook receiver on 127.0.0.1 for trying the daemon (or a receiver's own signing
 * code) without writing one. It prints its URL, then one JSON line per delivery attempt, and
 * answers 204; with `WATCHER_WEBHOOK_SECRET` set it verifies each signature as a receiver should,
 * and answers 401 to an attempt that fails (the daemon then retries it, as it would against a real
 * receiver with another secret).
 *
 * It keeps nothing: a line is written and the attempt forgotten, so it can run for as long as a
 * daemon does. Request bodies are bounded (1 MiB, 413 beyond) by the receiver itself, and so are
 * connections (`RECEIVE_CONNECTIONS`: a client that opens many and sends nothing cannot keep the
 * daemon's attempts out). Output that
 * is not read (a pipe whose reader stalls) would queue every line in memory: while stdout holds
 * more than its buffer, attempts are answered 503 with `Retry-After: 1`, unprinted, and the daemon
 * sends them again later, as it would to any receiver that cannot take them yet.
 */
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import { type ReceivedWebhook, WebhookReceiver } from '../dev/receiver.js';
import { isPlainObject } from '../shared/values.js';

export interface ReceiveOptions {
  port: number;
  /** `whsec_...`, already validated; undefined: signatures are not checked. */
  secret: string | undefined;
  stdout: Writable;
  /** Where a flood of connections is reported (stderr: stdout carries the attempts). */
  log: Logger;
  now?: () => number;
}

/**
 * Connections `receive` keeps open at most, those it keeps free for new ones by closing the
 * oldest idle ones, and the time a connection gets to send a request's headers.
 */
export const RECEIVE_CONNECTIONS = { max: 256, headroom: 16, headersTimeoutMs: 10_000 } as const;

/** A running `receive`: its URL, and `close()`. */
export interface Receiving {
  url: string;
  close(): Promise<void>;
}

export async function startReceiving(options: ReceiveOptions): Promise<Receiving> {
  const receiver = new WebhookReceiver({
    port: options.port,
    keep: false,
    connections: { ...RECEIVE_CONNECTIONS, log: options.log },
    ...(options.secret !== undefined ? { secret: options.secret } : {}),
    ...(options.now ? { now: options.now } : {}),
    respond: (attempt) => {
      if (options.stdout.writableNeedDrain) return { status: 503, headers: { 'retry-after': '1' } };
      const status = attempt.verified === false ? 401 : 204;
      options.stdout.write(`${JSON.stringify(describeAttempt(attempt, status))}\n`);
      return status;
    },
  });
  const url = await receiver.start();
  return { url, close: () => receiver.close() };
}

/** What one attempt's line holds: the headers a receiver reads and the event's main fields. */
function describeAttempt(attempt: ReceivedWebhook, status: number): Record<string, unknown> {
  const event = isPlainObject(attempt.json) ? attempt.json : undefined;
  const data = isPlainObject(event?.data) ? event.data : undefined;
  const importId = data?.import_id;
  return {
    received_at: new Date(attempt.receivedAt).toISOString(),
    webhook_id: attempt.id,
    webhook_timestamp: Number.isFinite(attempt.timestamp) ? attempt.timestamp : null,
    // null: no secret to check it with.
    verified: attempt.verified ?? null,
    status,
    type: event?.type ?? null,
    ...(importId !== undefined ? { import_id: importId } : { export_id: data?.export_id ?? null }),
    state: data?.state ?? null,
    previous_state: data?.previous_state ?? null,
    metadata: data?.metadata ?? null,
    // Not JSON at all: said, rather than printed as nulls alone.
    ...(event === undefined
      ? { body_bytes: Buffer.byteLength(attempt.body), body_is_json_object: false }
      : {}),
  };
}
