/**
 * A proxy URL with something after its host (`http://proxy:3128/corp?x=1#f`): configuration
 * accepts it as an http URL, and the proxy is then used at its host and port, as curl uses it.
 * undici refuses such a URL where the dispatcher is made, which ended `run`, `watch` and `get`
 * with a stack trace instead of a request.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/config.js';
import { Simulator } from '../src/dev/simulator.js';
import { createDispatcher, proxyOrigin } from '../src/shared/proxy.js';
import { killAll, spawnCli } from './helpers/spawn.js';

const TOKEN = 'tok_proxy_path_platform_51d0';
const USER = 'proxy-user';
const PASS = 'p@ss word';
const BASIC = `Basic ${Buffer.from(`${USER}:${PASS}`).toString('base64')}`;
const USERINFO = `${USER}:${encodeURIComponent(PASS)}`;

/** The machine's proxy variables, blanked (a blank one is unset), so only the test's apply. */
const NO_PROXY_ENV = {
  HTTP_PROXY: '',
  http_proxy: '',
  HTTPS_PROXY: '',
  https_proxy: '',
  NO_PROXY: '',
  no_proxy: '',
};

/** A forward proxy on 127.0.0.1 for absolute-form requests, demanding Basic credentials. */
async function startProxy(): Promise<{
  port: number;
  targets: string[];
  refused: () => number;
  close: () => Promise<void>;
}> {
  const targets: string[] = [];
  let refused = 0;
  const server: Server = createServer((req: IncomingMessage, res) => {
    if (req.headers['proxy-authorization'] !== BASIC) {
      refused++;
      res.writeHead(407, { 'proxy-authenticate': 'Basic realm="test"', connection: 'close' }).end();
      return;
    }
    const target = new URL(req.url ?? '');
    targets.push(target.href);
    const headers = { ...req.headers };
    delete headers['proxy-authorization'];
    const upstream = fetch(target, {
      method: req.method,
      headers: headers as Record<string, string>,
      body: req.method === 'GET' || req.method === 'HEAD' ? undefined : req,
      duplex: 'half',
    } as RequestInit);
    upstream.then(
      async (answer) => {
        const body = Buffer.from(await answer.arrayBuffer());
        res.writeHead(answer.status, { 'content-type': answer.headers.get('content-type') ?? 'text/plain' });
        res.end(body);
      },
      () => res.destroy(),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    targets,
    refused: () => refused,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  killAll();
  for (const close of closers.splice(0).reverse()) await close();
});

async function simulatorBehindProxy() {
  const proxy = await startProxy();
  const sim = new Simulator({
    token: TOKEN,
    seed: 5,
    timing: { pendingMs: [50, 100], runningMs: [50, 100] },
  });
  const simUrl = await sim.start();
  closers.push(
    () => proxy.close(),
    () => sim.close(),
  );
  return { proxy, sim, simUrl };
}

describe('proxyOrigin', () => {
  it('keeps the scheme, the credentials as written, the host and the port, and nothing after', () => {
    expect(proxyOrigin(`http://${USERINFO}@proxy.example:3128/corp/path?x=1#f`)).toBe(
      `http://${USERINFO}@proxy.example:3128/`,
    );
    expect(proxyOrigin('https://proxy.example/')).toBe('https://proxy.example/');
    expect(proxyOrigin('http://proxy.example:8080')).toBe('http://proxy.example:8080/');
  });
});

describe('a proxy URL with a path, a query and a fragment', () => {
  it('is used at its host and port, with its credentials', async () => {
    const { proxy, sim, simUrl } = await simulatorBehindProxy();
    const config = loadConfig({
      HTTP_PROXY: `http://${USERINFO}@127.0.0.1:${proxy.port}/corp/proxy?region=eu#main`,
    });
    const dispatcher = createDispatcher({}, config.proxy);
    closers.push(() => dispatcher.close());
    const id = sim.createExport();
    const answer = await request(`${simUrl}/storage/exports/${id}`, {
      dispatcher,
      headers: { 'x-sbg-auth-token': TOKEN },
    });
    expect(answer.statusCode).toBe(200);
    expect(((await answer.body.json()) as { id: string }).id).toBe(id);
    expect(proxy.targets).toEqual([`${simUrl}/storage/exports/${id}`]);
    expect(proxy.refused()).toBe(0);
  });

  it('lets `get` ask the platform through the proxy instead of ending with a stack trace', async () => {
    const { proxy, sim, simUrl } = await simulatorBehindProxy();
    const ids = sim.createExports(2);
    const get = spawnCli(['get', ...ids, '--json'], {
      ...NO_PROXY_ENV,
      http_proxy: `http://${USERINFO}@127.0.0.1:${proxy.port}/proxy.pac?v=2`,
      SB_API_ENDPOINT: simUrl,
      SB_AUTH_TOKEN: TOKEN,
    });
    const { code } = await get.exited;
    expect(get.stderr()).not.toMatch(/invalid url|\n\s+at /);
    expect(code, get.stderr()).toBe(0);
    const records = get
      .stdout()
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { id: string });
    expect(records.map((r) => r.id).sort()).toEqual([...ids].sort());
    expect(proxy.targets.length).toBeGreaterThan(0);
    for (const target of proxy.targets) expect(target.startsWith(simUrl)).toBe(true);
    expect(get.stdout() + get.stderr()).not.toContain(PASS);
  });
});
