/**
 * A platform on loopback whose every answer a test decides, and a platform client (with a limiter
 * of its own) against it; both closed by the test's cleanups.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { PlatformClient, type PlatformClientOptions } from '../../src/platform/platform-client.js';
import { RateLimiter } from '../../src/platform/rate-limiter.js';

/** Functions a test runs after it, in reverse order. */
export type Cleanups = Array<() => unknown>;

/** A JSON answer with its length, as the platform sends them. */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** `GET /rate_limit`'s answer when the whole quota is left and no reset is known. */
export const FULL_QUOTA = { rate: { limit: 1000, remaining: 1000, reset: 0 } };

/** Serves `respond` on 127.0.0.1; counts the requests (method and path) it got. */
export async function loopbackPlatform(
  cleanups: Cleanups,
  respond: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ url: string; seen: string[] }> {
  const seen: string[] = [];
  const server = createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    respond(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v2`, seen };
}

/** A client of `endpoint` through `limiter` (default: 1,000 requests a minute), no retries unless asked. */
export function platformClient(
  cleanups: Cleanups,
  endpoint: string,
  options: Partial<Pick<PlatformClientOptions, 'retry' | 'bus' | 'token' | 'timeoutMs' | 'mayAct'>> & {
    limiter?: RateLimiter;
  } = {},
): { client: PlatformClient; limiter: RateLimiter } {
  const { limiter = new RateLimiter({ budget: 1000, windowMs: 60_000 }), ...rest } = options;
  const client = new PlatformClient({
    endpoint,
    token: 'tok_platform_test_1',
    gate: limiter,
    userAgent: 'sbg-export-watcher/test',
    log: pino({ level: 'silent' }),
    retry: { retries: 0, minTimeoutMs: 1, maintenanceMaxDelayMs: 5 },
    ...rest,
  });
  cleanups.push(() => limiter.stop());
  cleanups.push(() => client.destroy());
  return { client, limiter };
}
