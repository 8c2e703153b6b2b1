/** A control API on 127.0.0.1 over a registry a test writes, silent. */
import pino from 'pino';
import { ControlApi, type WatchRegistry } from '../../src/http/control-api.js';

export async function listenControlApi(
  registry: WatchRegistry,
  options: { apiToken?: string } = {},
): Promise<{ api: ControlApi; url: string }> {
  const api = new ControlApi({
    host: '127.0.0.1',
    port: 0,
    registry,
    probes: { health: () => ({ ok: true }), ready: () => ({ ok: true }) },
    log: pino({ level: 'silent' }),
    ...options,
  });
  return { api, url: await api.listen() };
}
