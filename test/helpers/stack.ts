/**
 * A whole watcher on loopback for integration tests: the simulator, a webhook receiver and the
 * daemon, with every log line captured in memory.
 */
import { Writable } from 'node:stream';
import pino from 'pino';
import { request } from 'undici';
import { type Env, loadConfig } from '../../src/config/config.js';
import type { EventBody } from '../../src/delivery/events.js';
import { type ReceiverOptions, WebhookReceiver } from '../../src/dev/receiver.js';
import { Simulator, type SimulatorOptions } from '../../src/dev/simulator.js';
import { Daemon, type DaemonOptions } from '../../src/main.js';

export const TOKEN = 'tok_SECRET_platform_4f9a1c';
export const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';

export interface Stack {
  sim: Simulator;
  receiver: WebhookReceiver;
  daemon: Daemon;
  apiUrl: string;
  logs: string[];
  post(path: string, body: unknown): Promise<{ status: number; json: unknown }>;
  get(path: string): Promise<{ status: number; json: unknown }>;
  close(): Promise<void>;
}

export interface StackOptions {
  sim?: SimulatorOptions;
  receiver?: Omit<ReceiverOptions, 'secret'>;
  env?: Env;
  daemon?: Omit<DaemonOptions, 'log' | 'api'>;
  /** The endpoint the daemon is given, from the simulator's base URL (default: that URL). */
  endpoint?: (simUrl: string) => string;
}

export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const sim = new Simulator({ seed: 11, token: TOKEN, ...options.sim });
  const receiver = new WebhookReceiver({ secret: SECRET, ...options.receiver });
  const simUrl = await sim.start();
  const hookUrl = await receiver.start();
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      logs.push(String(chunk));
      done();
    },
  });
  const config = loadConfig(
    {
      SB_API_ENDPOINT: options.endpoint ? options.endpoint(simUrl) : simUrl,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_WEBHOOK_URLS: hookUrl,
      WATCHER_WEBHOOK_SECRET: SECRET,
      WATCHER_HTTP_PORT: '0',
      WATCHER_POLL_INTERVAL: '300ms',
      WATCHER_RATE_BUDGET: '1000',
      WATCHER_RATE_WINDOW: '60s',
      ...options.env,
    },
    { requireToken: true },
  );
  // The daemon's own logger settings, with an in-memory destination.
  const { CENSORING_FORMATTERS, withCensoring } = await import('../../src/shared/log.js');
  const log = withCensoring(pino({ level: 'debug', formatters: CENSORING_FORMATTERS }, sink));
  const daemon = await Daemon.open(config, {
    log,
    api: true,
    storage: 'memory',
    platformRetry: { minTimeoutMs: 10, maintenanceMaxDelayMs: 300 },
    webhookRetry: { minTimeoutMs: 50, maxTimeoutMs: 500 },
    scheduler: { failurePauseMs: 50, failurePauseMaxMs: 500 },
    ...options.daemon,
  });
  const apiUrl = (await daemon.start()) as string;
  const call = async (method: 'GET' | 'POST', path: string, body?: unknown) => {
    const res = await request(`${apiUrl}${path}`, {
      method,
      headers: { 'content-type': 'application/json' },
      body: body === undefined ? null : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.body.text();
    return { status: res.statusCode, json: text ? JSON.parse(text) : null };
  };
  return {
    sim,
    receiver,
    daemon,
    apiUrl,
    logs,
    post: (path, body) => call('POST', path, body),
    get: (path) => call('GET', path),
    close: async () => {
      await daemon.stop(1000);
      await receiver.close();
      await sim.close();
    },
  };
}

/** Terminal events accepted by the receiver, by export id. */
export function terminalEvents(
  receiver: WebhookReceiver,
): Map<string, Array<{ webhookId: string; body: EventJson }>> {
  const byExport = new Map<string, Array<{ webhookId: string; body: EventJson }>>();
  for (const w of receiver.accepted()) {
    const body = w.json as EventJson;
    const list = byExport.get(body.data.export_id) ?? [];
    list.push({ webhookId: w.id, body });
    byExport.set(body.data.export_id, list);
  }
  return byExport;
}

/** The wire body, as the receiver parsed it. */
export type EventJson = EventBody;
