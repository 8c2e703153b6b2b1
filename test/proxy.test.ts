/**
 * Outgoing HTTP through a forward proxy (HTTP_PROXY, HTTPS_PROXY, NO_PROXY): a small proxy written
 * here counts what passes through it and demands Basic credentials; the simulator and a webhook
 * receiver sit behind it on loopback. Every platform call and every delivery must pass through it,
 * and its password must never reach a log line.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import { type AddressInfo, connect as netConnect, type Socket } from 'node:net';
import { request } from 'undici';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/config.js';
import { WebhookReceiver } from '../src/dev/receiver.js';
import { Simulator } from '../src/dev/simulator.js';
import {
  basicAuthorization,
  createDispatcher,
  describeProxy,
  proxyLabel,
  proxyOrigin,
  requestTarget,
  useProxy,
} from '../src/shared/proxy.js';
import { Redactor } from '../src/shared/redact.js';
import { killAll, spawnCli } from './helpers/spawn.js';

const TOKEN = 'tok_proxy_platform_7c1e';
const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const USER = 'proxy-user';
const PASS = 'Pr0xy-S3cret-pw';
const BASIC = `Basic ${Buffer.from(`${USER}:${PASS}`).toString('base64')}`;

/** A forward proxy on 127.0.0.1: absolute-form requests are forwarded, CONNECT is tunnelled. */
class TestProxy {
  /** Requests forwarded (absolute-form) and tunnels opened (CONNECT), by target `host:port`. */
  readonly forwarded = new Map<string, number>();
  readonly tunnels = new Map<string, number>();
  /** The target URL of each request forwarded, in order. */
  readonly targets: string[] = [];
  /** Requests refused for missing or wrong credentials. */
  refused = 0;
  readonly #basic: string;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();

  /** `credentials`: the `user:password` it demands, as sent (decoded). */
  constructor(credentials = `${USER}:${PASS}`) {
    this.#basic = `Basic ${Buffer.from(credentials).toString('base64')}`;
    this.#server = createServer((req, res) => {
      if (!this.#authorized(req)) {
        res.writeHead(407, { 'proxy-authenticate': 'Basic realm="test"', connection: 'close' }).end();
        return;
      }
      let target: URL;
      try {
        target = new URL(req.url ?? '');
      } catch {
        res.writeHead(400).end();
        return;
      }
      this.#count(this.forwarded, target.host);
      this.targets.push(target.href);
      const headers = { ...req.headers };
      delete headers['proxy-authorization'];
      delete headers['proxy-connection'];
      const upstream = httpRequest(
        {
          // The receiver listens on 127.0.0.1 only; `localhost` may resolve to ::1 first.
          host: target.hostname === 'localhost' ? '127.0.0.1' : target.hostname,
          port: target.port,
          method: req.method,
          path: `${target.pathname}${target.search}`,
          headers,
        },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on('error', () => res.destroy());
      req.pipe(upstream);
    });
    this.#server.on('connect', (req: IncomingMessage, client: Socket, head: Buffer) => {
      if (!this.#authorized(req)) {
        client.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n');
        return;
      }
      const target = req.url ?? '';
      this.#count(this.tunnels, target);
      const [host, port] = [
        target.slice(0, target.lastIndexOf(':')),
        target.slice(target.lastIndexOf(':') + 1),
      ];
      const upstream = netConnect(Number(port), host, () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        if (head.length > 0) upstream.write(head);
        upstream.pipe(client);
        client.pipe(upstream);
      });
      const end = () => {
        upstream.destroy();
        client.destroy();
      };
      upstream.on('error', end);
      client.on('error', end);
    });
    this.#server.on('connection', (socket: Socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    });
  }

  async start(): Promise<number> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    return (this.#server.address() as AddressInfo).port;
  }

  close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  #authorized(req: IncomingMessage): boolean {
    if (req.headers['proxy-authorization'] === this.#basic) return true;
    this.refused++;
    return false;
  }

  #count(map: Map<string, number>, key: string): void {
    map.set(key, (map.get(key) ?? 0) + 1);
  }
}

function sum(counts: Record<string, number>): number {
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

/** Proxy variables of the machine, blanked (a blank one is unset), so only the test's apply. */
const NO_PROXY_ENV = {
  HTTP_PROXY: '',
  http_proxy: '',
  HTTPS_PROXY: '',
  https_proxy: '',
  NO_PROXY: '',
  no_proxy: '',
};

let proxy: TestProxy;
let proxyPort: number;
const closers: Array<() => Promise<unknown>> = [];

beforeEach(async () => {
  proxy = new TestProxy();
  proxyPort = await proxy.start();
  closers.push(() => proxy.close());
});

afterEach(async () => {
  killAll();
  useProxy(undefined);
  for (const close of closers.splice(0).reverse()) await close();
});

async function platformAndReceiver() {
  const sim = new Simulator({
    token: TOKEN,
    seed: 3,
    failRate: 0.3,
    timing: { pendingMs: [100, 300], runningMs: [100, 400] },
  });
  const simUrl = await sim.start();
  const receiver = new WebhookReceiver({ secret: SECRET });
  const hookUrl = await receiver.start();
  closers.push(
    () => sim.close(),
    () => receiver.close(),
  );
  return { sim, simUrl, receiver, hookUrl };
}

describe('watch through HTTP_PROXY', () => {
  it('sends every platform call and every delivery through the proxy, and never logs its password', async () => {
    const { sim, simUrl, receiver, hookUrl } = await platformAndReceiver();
    const ids = sim.createExports(4);
    const proxyUrl = `http://${USER}:${PASS}@127.0.0.1:${proxyPort}`;
    const watch = spawnCli(['watch', ...ids, '--json'], {
      ...NO_PROXY_ENV,
      HTTP_PROXY: proxyUrl,
      SB_API_ENDPOINT: simUrl,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_WEBHOOK_URLS: hookUrl,
      WATCHER_WEBHOOK_SECRET: SECRET,
      WATCHER_POLL_INTERVAL: '100ms',
      LOG_LEVEL: 'debug',
      HOME: '/nonexistent-home',
    });
    const { code } = await watch.exited;
    expect([0, 1], watch.stderr()).toContain(code);
    expect(watch.stdout().trim().split('\n')).toHaveLength(ids.length);

    const simHost = new URL(simUrl).host;
    const hookHost = new URL(hookUrl).host;
    const platformCalls = sum(sim.stats().requests);
    expect(platformCalls).toBeGreaterThan(0);
    expect(proxy.forwarded.get(simHost)).toBe(platformCalls);
    expect(receiver.received.length).toBeGreaterThanOrEqual(ids.length);
    expect(proxy.forwarded.get(hookHost)).toBe(receiver.received.length);
    expect(proxy.refused).toBe(0);
    expect(proxy.tunnels.size).toBe(0);

    const logs = watch.stderr();
    const started = logs.split('\n').find((l) => l.includes('"proxy in use"'));
    expect(started, logs.slice(0, 2000)).toBeDefined();
    expect(JSON.parse(started ?? '{}')).toMatchObject({
      level: 'info',
      http_proxy: `http://127.0.0.1:${proxyPort}`,
      https_proxy: `http://127.0.0.1:${proxyPort}`,
      no_proxy: null,
    });
    expect(logs.match(/"proxy in use"/g)).toHaveLength(1);
    const everything = watch.stdout() + logs;
    for (const secret of [PASS, encodeURIComponent(PASS), BASIC.slice('Basic '.length), TOKEN]) {
      expect(everything).not.toContain(secret);
    }
  });

  it('goes direct to a host NO_PROXY names, and through the proxy to the others', async () => {
    const { sim, simUrl, receiver, hookUrl } = await platformAndReceiver();
    const ids = sim.createExports(2, { outcome: 'COMPLETED' });
    // The receiver by another name than the simulator's: only the simulator's is listed.
    const hookByName = hookUrl.replace('127.0.0.1', 'localhost');
    const watch = spawnCli(['watch', ...ids], {
      ...NO_PROXY_ENV,
      http_proxy: `http://${USER}:${PASS}@127.0.0.1:${proxyPort}`,
      no_proxy: 'example.org, 127.0.0.1',
      SB_API_ENDPOINT: simUrl,
      SB_AUTH_TOKEN: TOKEN,
      WATCHER_WEBHOOK_URLS: hookByName,
      WATCHER_WEBHOOK_SECRET: SECRET,
      WATCHER_POLL_INTERVAL: '100ms',
      HOME: '/nonexistent-home',
    });
    const { code } = await watch.exited;
    expect(code, watch.stderr()).toBe(0);
    expect(sum(sim.stats().requests)).toBeGreaterThan(0);
    expect(proxy.forwarded.get(new URL(simUrl).host)).toBeUndefined();
    expect(receiver.received.length).toBe(ids.length);
    expect(proxy.forwarded.get(new URL(hookByName).host)).toBe(receiver.received.length);
    expect(proxy.refused).toBe(0);
  });

  it('get goes through the proxy too', async () => {
    const { sim, simUrl } = await platformAndReceiver();
    const ids = sim.createExports(3);
    const get = spawnCli(['get', ...ids, '--json'], {
      ...NO_PROXY_ENV,
      HTTPS_PROXY: `http://${USER}:${PASS}@127.0.0.1:${proxyPort}`,
      HTTP_PROXY: `http://${USER}:${PASS}@127.0.0.1:${proxyPort}`,
      SB_API_ENDPOINT: simUrl,
      SB_AUTH_TOKEN: TOKEN,
      HOME: '/nonexistent-home',
    });
    const { code } = await get.exited;
    expect(code, get.stderr()).toBe(0);
    expect(get.stdout().trim().split('\n')).toHaveLength(3);
    expect(proxy.forwarded.get(new URL(simUrl).host)).toBe(sum(sim.stats().requests));
    expect(proxy.refused).toBe(0);
  });

  it('exits 2 on a proxy URL it cannot use, without echoing its password', async () => {
    const watch = spawnCli(['watch', 'x'], {
      ...NO_PROXY_ENV,
      HTTPS_PROXY: `ftp://${USER}:${PASS}@proxy.example:21`,
      SB_AUTH_TOKEN: TOKEN,
      HOME: '/nonexistent-home',
    });
    const { code } = await watch.exited;
    expect(code).toBe(2);
    expect(watch.stderr()).toBe(
      'config: HTTPS_PROXY: expected a proxy URL like http://proxy.example:3128 (http or https, credentials allowed), got "ftp://proxy.example" (credentials, query and fragment hidden)\n',
    );
  });
});

describe('createDispatcher', () => {
  const settings = (noProxy = '') => {
    const config = loadConfig({
      HTTP_PROXY: `http://${USER}:${PASS}@127.0.0.1:${proxyPort}`,
      NO_PROXY: noProxy,
    });
    return config.proxy;
  };

  it('goes direct without a proxy', async () => {
    const { sim, simUrl } = await platformAndReceiver();
    const dispatcher = createDispatcher({ keepAliveTimeout: 1000 });
    const answer = await request(`${simUrl}/storage/exports/${sim.createExport()}`, {
      dispatcher,
      headers: { 'x-sbg-auth-token': TOKEN },
    });
    expect(answer.statusCode).toBe(200);
    await answer.body.dump();
    await dispatcher.close();
    expect(proxy.forwarded.size).toBe(0);
  });

  it('uses the proxy set with useProxy, loopback included, with its Agent options', async () => {
    const { sim, simUrl } = await platformAndReceiver();
    useProxy(settings());
    const dispatcher = createDispatcher({ connections: 2, keepAliveTimeout: 1000, pipelining: 1 });
    for (let i = 0; i < 3; i++) {
      const answer = await request(`${simUrl}/storage/exports/${sim.createExport()}`, {
        dispatcher,
        headers: { 'x-sbg-auth-token': TOKEN },
      });
      expect(answer.statusCode).toBe(200);
      await answer.body.dump();
    }
    await dispatcher.close();
    expect(proxy.forwarded.get(new URL(simUrl).host)).toBe(3);
  });

  it('tunnels https:// targets with CONNECT, with the credentials', async () => {
    const { simUrl } = await platformAndReceiver();
    const dispatcher = createDispatcher({}, settings());
    // The simulator speaks plain HTTP: the TLS handshake inside the tunnel fails, after the CONNECT.
    const target = simUrl.replace('http://', 'https://');
    await expect(request(target, { dispatcher })).rejects.toThrow();
    await dispatcher.destroy();
    expect(proxy.tunnels.get(new URL(target).host)).toBe(1);
    expect(proxy.refused).toBe(0);
  });

  it('fails a request the proxy refuses (wrong password)', async () => {
    const { simUrl } = await platformAndReceiver();
    const dispatcher = createDispatcher(
      {},
      loadConfig({ HTTP_PROXY: `http://${USER}:wrong-password@127.0.0.1:${proxyPort}` }).proxy,
    );
    await expect(request(`${simUrl}/storage/exports/x`, { dispatcher })).rejects.toThrow(/407/);
    await dispatcher.destroy();
    expect(proxy.refused).toBe(1);
  });

  it('bypasses NO_PROXY hosts, by name and by name and port', async () => {
    const { sim, simUrl } = await platformAndReceiver();
    const port = new URL(simUrl).port;
    for (const noProxy of ['127.0.0.1', `127.0.0.1:${port}`, 'localhost,127.0.0.1', '*']) {
      const dispatcher = createDispatcher({}, settings(noProxy));
      const answer = await request(`${simUrl}/storage/exports/${sim.createExport()}`, {
        dispatcher,
        headers: { 'x-sbg-auth-token': TOKEN },
      });
      expect(answer.statusCode).toBe(200);
      await answer.body.dump();
      await dispatcher.close();
    }
    // Another port of the same host is not bypassed by a host:port entry.
    const other = createDispatcher({}, settings('127.0.0.1:1'));
    const answer = await request(`${simUrl}/storage/exports/${sim.createExport()}`, {
      dispatcher: other,
      headers: { 'x-sbg-auth-token': TOKEN },
    });
    await answer.body.dump();
    await other.close();
    expect(proxy.forwarded.get(new URL(simUrl).host)).toBe(1);
  });
});

describe('a proxy URL with a path, a query and a fragment', () => {
  // A password with characters a URL must percent-encode: the proxy must get it decoded.
  const ODD_PASS = 'p@ss word';
  const USERINFO = `${USER}:${encodeURIComponent(ODD_PASS)}`;
  let odd: TestProxy;
  let oddPort: number;
  beforeEach(async () => {
    odd = new TestProxy(`${USER}:${ODD_PASS}`);
    oddPort = await odd.start();
    closers.push(() => odd.close());
  });

  async function simulator() {
    const sim = new Simulator({
      token: TOKEN,
      seed: 5,
      timing: { pendingMs: [50, 100], runningMs: [50, 100] },
    });
    const simUrl = await sim.start();
    closers.push(() => sim.close());
    return { sim, simUrl };
  }

  it('proxyOrigin keeps the scheme, the credentials as written, the host and the port, and nothing after', () => {
    expect(proxyOrigin(`http://${USERINFO}@proxy.example:3128/corp/path?x=1#f`)).toBe(
      `http://${USERINFO}@proxy.example:3128/`,
    );
    expect(proxyOrigin('https://proxy.example/')).toBe('https://proxy.example/');
    expect(proxyOrigin('http://proxy.example:8080')).toBe('http://proxy.example:8080/');
  });

  it('is used at its host and port, with its credentials', async () => {
    const { sim, simUrl } = await simulator();
    const config = loadConfig({
      HTTP_PROXY: `http://${USERINFO}@127.0.0.1:${oddPort}/corp/proxy?region=eu#main`,
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
    expect(odd.targets).toEqual([`${simUrl}/storage/exports/${id}`]);
    expect(odd.refused).toBe(0);
  });

  it('lets `get` ask the platform through the proxy instead of ending with a stack trace', async () => {
    const { sim, simUrl } = await simulator();
    const ids = sim.createExports(2);
    const get = spawnCli(['get', ...ids, '--json'], {
      ...NO_PROXY_ENV,
      http_proxy: `http://${USERINFO}@127.0.0.1:${oddPort}/proxy.pac?v=2`,
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
    expect(odd.targets.length).toBeGreaterThan(0);
    for (const target of odd.targets) expect(target.startsWith(simUrl)).toBe(true);
    expect(get.stdout() + get.stderr()).not.toContain(ODD_PASS);
  });
});

describe('requestTarget', () => {
  it('is the origin, and the path with the query, without credentials or fragment', () => {
    expect(requestTarget('https://u:p@hooks.example:8443/in/x?t=1&u=2#f')).toEqual({
      origin: 'https://hooks.example:8443',
      path: '/in/x?t=1&u=2',
    });
    expect(requestTarget('http://127.0.0.1:9000')).toEqual({ origin: 'http://127.0.0.1:9000', path: '/' });
  });

  it('refuses what is not a URL', () => {
    expect(() => requestTarget('not a url')).toThrow(TypeError);
  });
});

describe('basicAuthorization', () => {
  const basic = (text: string) => `Basic ${Buffer.from(text).toString('base64')}`;

  it("is HTTP Basic of the URL's user and password, percent-decoded, as curl sends them", () => {
    expect(basicAuthorization('https://alice:s3cret@hooks.example/in')).toBe(basic('alice:s3cret'));
    expect(basicAuthorization('https://al%40ice:p%3Ass%20w@hooks.example/')).toBe(basic('al@ice:p:ss w'));
    expect(basicAuthorization('https://alice@hooks.example/')).toBe(basic('alice:'));
    expect(basicAuthorization('https://:token@hooks.example/')).toBe(basic(':token'));
    // Not valid percent-encoding: sent as written.
    expect(basicAuthorization('https://u:100%zz@hooks.example/')).toBe(basic('u:100%zz'));
    // An escape that is not UTF-8 is its byte (curl sends u:p%E4ss as 75 3a 70 e4 73 73); text
    // that is not ASCII is sent as UTF-8.
    expect(basicAuthorization('https://u:p%E4ss@hooks.example/')).toBe('Basic dTpw5HNz');
    expect(basicAuthorization('https://u:pä@hooks.example/')).toBe(basic('u:pä'));
  });

  it('is undefined for a URL without credentials', () => {
    expect(basicAuthorization('https://hooks.example/in?token=t')).toBeUndefined();
    expect(basicAuthorization('http://127.0.0.1:9000')).toBeUndefined();
  });
});

describe('what is logged of a proxy', () => {
  it('is scheme://host:port, never credentials or a path', () => {
    expect(proxyLabel(`http://${USER}:${PASS}@proxy.example:3128/x?y=z`)).toBe('http://proxy.example:3128');
    expect(proxyLabel('https://proxy.example')).toBe('https://proxy.example:443');
    expect(proxyLabel('http://proxy.example')).toBe('http://proxy.example:80');
    expect(describeProxy(undefined)).toBeUndefined();
    const config = loadConfig({
      https_proxy: `https://${USER}:${PASS}@secure.example:8443`,
      HTTP_PROXY: `http://${USER}:${PASS}@plain.example:3128`,
      NO_PROXY: '.corp.example',
    });
    expect(describeProxy(config.proxy)).toEqual({
      http_proxy: 'http://plain.example:3128',
      https_proxy: 'https://secure.example:8443',
      no_proxy: '.corp.example',
    });
    const scrubbed = new Redactor(config.secrets).scrub(
      `failed: ${PASS} ${USER}:${PASS} ${encodeURIComponent(PASS)} ${BASIC}`,
    );
    expect(scrubbed).not.toContain(PASS);
    expect(scrubbed).not.toContain(BASIC.slice('Basic '.length));
  });
});
