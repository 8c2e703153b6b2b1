/**
 * Answers from a platform (or something at its address) that the API does not send: error bodies
 * whose message is not text, list pages far longer than asked, next links that come back to the
 * same offset. Each is handled as an answer, never a crash, and never changes what a status means.
 */
import { createServer } from 'node:http';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { platformProblem } from '../src/cli/error-report.js';
import { formatTable } from '../src/cli/get.js';
import { formatFinished } from '../src/cli/watch.js';
import { runCli } from '../src/cli.js';
import type { JobPage } from '../src/platform/platform-client.js';
import { LIST_PAGE_LIMIT, PlatformClient } from '../src/platform/platform-client.js';
import { RateLimiter } from '../src/platform/rate-limiter.js';
import { Discovery, pageKey } from '../src/polling/discovery.js';
import type { JobKind } from '../src/polling/tracker.js';
import { PlatformError } from '../src/shared/errors.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Answer {
  status: number;
  body: string;
  headers?: Record<string, string>;
}

/** A loopback server giving the nth request (from 1) `answer(n)` as JSON; resolves the API's base URL. */
async function serve(answer: (n: number) => Answer): Promise<string> {
  let n = 0;
  const server = createServer((_req, res) => {
    const { status, body, headers } = answer(++n);
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
  return `http://127.0.0.1:${(server.address() as { port: number }).port}/v2`;
}

/** A platform client (with its limiter) against `serve(answer)`. */
async function clientOf(answer: (n: number) => Answer, retries = 1) {
  const limiter = new RateLimiter({ budget: 100, windowMs: 60_000 });
  cleanups.push(() => limiter.stop());
  const client = new PlatformClient({
    endpoint: await serve(answer),
    token: 't',
    gate: limiter,
    userAgent: 't',
    log: pino({ level: 'silent' }),
    retry: { retries, minTimeoutMs: 1, maintenanceMaxDelayMs: 5 },
  });
  cleanups.push(() => client.close());
  return { client, limiter };
}

describe('an error body whose message is not text', () => {
  it('a 429 is still a 429: the limiter is told, and the caller gets PLATFORM_RATE_LIMITED', async () => {
    const reset = String(Math.ceil(Date.now() / 1000) + 60);
    const { client, limiter } = await clientOf(() => ({
      status: 429,
      body: '{"status":429,"code":1000,"message":{"toString":1}}',
      headers: { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': reset },
    }));
    const error = await client.checkStatuses('export', ['a']).catch((e: unknown) => e);
    expect({
      error: error instanceof PlatformError ? error.code : String(error),
      limiterToldOf429: limiter.snapshot().rateLimited,
    }).toEqual({ error: 'PLATFORM_RATE_LIMITED', limiterToldOf429: 1 });
  });

  it('a maintenance 503 {"code": 0} is still maintenance: waited out, then answered', async () => {
    const { client } = await clientOf(
      (n) =>
        n <= 2
          ? { status: 503, body: '{"code":0,"message":{"toString":1}}' }
          : { status: 200, body: '{"items":[{"id":"j1","state":"PENDING"}],"links":[]}' },
      0,
    );
    const page = await client.listPage('export', { state: 'PENDING' });
    expect(page.items).toEqual([{ id: 'j1', state: 'PENDING' }]);
  });

  it('`get` reports a 401 whose message is a number in one line, exit 1 (runCli never rejects)', async () => {
    const endpoint = await serve(() => ({ status: 401, body: '{"status":401,"code":90001,"message":5}' }));
    let stderr = '';
    const code = await runCli(
      ['get', 'abc123'],
      { SB_API_ENDPOINT: endpoint, SB_AUTH_TOKEN: 'tok' },
      {
        stderr: { write: (t: string) => (stderr += t) },
      },
    );
    expect(code).toBe(1);
    expect(stderr).toMatch(/refused the token/);
  });

  it('the CLI can describe a refusal whose message is a number', () => {
    const error = new PlatformError('PLATFORM_UNAUTHORIZED', 'refused', {
      status: 401,
      body: { message: 5 } as never,
    });
    expect(() => platformProblem(error, 'https://api.sbgenomics.com/v2')).not.toThrow();
  });
});

describe('`get` table output of a platform object with odd fields', () => {
  it('prints a FAILED export whose error message is an object, without throwing', () => {
    const job = { id: 'j1', state: 'FAILED', error: { code: 9107, message: { toString: 1 } } };
    expect(() => formatTable([{ id: 'j1', state: 'FAILED', export: job } as never])).not.toThrow();
  });
});

it('a list page asked for 100 items that answers 200,000 is not taken whole', async () => {
  const items = Array.from({ length: 200_000 }, (_, i) => ({ id: `j${i}`, state: 'PENDING' }));
  const body = JSON.stringify({ items, links: [] });
  const { client: c } = await clientOf(() => ({ status: 200, body }), 0);
  const page = await c.listPage('export', { state: 'PENDING' }).catch((e: unknown) => e);
  // Refused as a bad answer: never 200,000 ids handed to discovery.
  expect(page).toMatchObject({ code: 'PLATFORM_BAD_RESPONSE' });
  expect((page as Error).message).toContain(`at most ${LIST_PAGE_LIMIT} were asked for`);
});

it('a next link back to the same offset, with a query that differs each time, is taken for a loop', async () => {
  const reads: Array<{ kind: JobKind; from: unknown }> = [];
  let n = 0;
  const list = async (kind: JobKind, from: { state: string } | { next: string }): Promise<JobPage> => {
    reads.push({ kind, from });
    // Every page is the first page again (offset 0), under a next link that differs by a
    // parameter the platform ignores: the same page, forever.
    n++;
    return {
      items: [{ id: 'job1', state: 'state' in from ? from.state : 'PENDING' }],
      next:
        (kind === 'export' && 'next' in from) ||
        (kind === 'export' && 'state' in from && from.state === 'PENDING')
          ? `/storage/exports?state=PENDING&limit=100&offset=0&_=${n}`
          : undefined,
    };
  };
  const d = new Discovery({
    kinds: ['export', 'import'],
    intervalMs: 60_000,
    list,
    add: async (_kind, ids) => ({ accepted: [...ids].slice(0, 0) }),
    gate: { left: () => 50, max: 50 },
    log: pino({ level: 'silent' }),
  });
  const report = await d.runRound();
  const exportPending = reads.filter((r) => r.kind === 'export').length;
  // The same page read again and again: a handful of reads should end it, not 10,000.
  expect(exportPending).toBeLessThan(10);
  expect(report?.complete).toBe(true);
});

it('names a page by its offset, whatever else the link holds', () => {
  expect(pageKey('/storage/exports?state=PENDING&limit=100&offset=0&_=1')).toBe(
    pageKey('/storage/exports?offset=0&state=PENDING&limit=100&_=2'),
  );
  expect(pageKey('/storage/exports?offset=100')).not.toBe(pageKey('/storage/exports?offset=200'));
  expect(pageKey('/storage/exports?cursor=abc')).toBe('/storage/exports?cursor=abc');
});

it('watch prints a finished export whose error fields are objects, without throwing', () => {
  const view = {
    id: 'j1',
    state: 'FAILED',
    export: { id: 'j1', error: { code: { n: 1 }, message: { toString: 1 } } },
  };
  const line = formatFinished(view as never, { json: false, stdoutTty: true });
  expect(line).toBe('j1  FAILED  {"n":1} {"toString":1}\n');
});

describe('a bulk answer with an odd error item', () => {
  it('an error item whose id is an object that cannot be printed leaves the other ids their answers', async () => {
    const body = JSON.stringify({
      items: [
        { resource: { id: 'a', state: 'COMPLETED' } },
        { resource: { id: 'b', state: 'RUNNING' } },
        { error: { status: 404, code: 9008, id: { toString: 1 } } },
      ],
    });
    const { client } = await clientOf(() => ({ status: 200, body }));
    const { observations } = await client.checkStatuses('export', ['a', 'b']);
    expect(observations.map((o) => [o.id, o.kind])).toEqual([
      ['a', 'resource'],
      ['b', 'resource'],
    ]);
  });
});
