/**
 * `receive`: the webhook receiver a user runs to try the daemon. In process, what it prints and
 * answers for signed, wrongly signed and odd attempts; as a process, the whole try-it path of the
 * README: `simulate`'s platform, `run` delivering to `receive`, each delivery a verified line.
 */
import { connect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { RECEIVE_CONNECTIONS, startReceiving } from '../src/cli/receive.js';
import { parseSecret, sign } from '../src/delivery/signing.js';
import { WebhookReceiver } from '../src/dev/receiver.js';
import { Simulator } from '../src/dev/simulator.js';
import { logSink } from './helpers/log-sink.js';
import { daemonEnv, firstLine, killAll, spawnCli } from './helpers/spawn.js';

const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const OTHER_SECRET = 'whsec_c2VjcmV0LW9mLWFub3RoZXItcmVjZWl2ZXI=';
const TOKEN = 'tok_receive_test_51ac';
const NOW = Date.UTC(2026, 11, 3, 12, 0, 0);

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  killAll();
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** `receive` in this process, its printed lines parsed. */
async function receiving(secret?: string) {
  const printed: Array<Record<string, unknown>> = [];
  const stdout = new Writable({
    write(chunk, _encoding, done) {
      printed.push(JSON.parse(String(chunk)));
      done();
    },
  });
  const { log, lines } = logSink();
  const r = await startReceiving({ port: 0, secret, stdout, log, now: () => NOW });
  cleanups.push(() => r.close());
  return { url: r.url, printed, lines };
}

/** POSTs `body` as the daemon does, signed with `secret` when given; resolves the status. */
async function deliver(url: string, id: string, body: string, secret?: string): Promise<number> {
  const timestamp = Math.floor(NOW / 1000);
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'webhook-id': id,
    'webhook-timestamp': String(timestamp),
  };
  if (secret) headers['webhook-signature'] = sign(parseSecret(secret), id, timestamp, body);
  const answer = await request(url, { method: 'POST', headers, body });
  await answer.body.dump();
  return answer.statusCode;
}

const completed = JSON.stringify({
  type: 'export.completed',
  timestamp: new Date(NOW).toISOString(),
  data: { export_id: 'e1', state: 'COMPLETED', previous_state: 'RUNNING', metadata: { run: 7 }, export: {} },
});

describe('the receiver, bounded as receive runs it', () => {
  it('closes a connection that has not sent its headers within the headers timeout', async () => {
    const receiver = new WebhookReceiver({
      keep: false,
      connections: { max: 16, headroom: 2, headersTimeoutMs: 400, log: logSink().log },
    });
    const url = new URL(await receiver.start());
    cleanups.push(() => receiver.close());
    const started = performance.now();
    const socket = connect(Number(url.port), '127.0.0.1', () =>
      socket.write('POST /hooks HTTP/1.1\r\nHost: x\r\n'),
    );
    socket.on('error', () => undefined);
    socket.resume();
    cleanups.push(async () => {
      socket.destroy();
    });
    await new Promise((resolve) => socket.once('close', resolve));
    // Node's own check comes every 30 s unless told otherwise; here every quarter of the timeout.
    expect(performance.now() - started).toBeLessThan(5_000);
  }, 10_000);
});

describe('receive, in process', () => {
  it('takes an attempt while a client holds every connection it may open without sending a thing', async () => {
    const { url, printed, lines } = await receiving();
    const { port } = new URL(url);
    const idle: Socket[] = [];
    cleanups.push(async () => {
      for (const socket of idle) socket.destroy();
    });
    for (let i = 0; i < RECEIVE_CONNECTIONS.max + 20; i++) {
      const socket = connect(Number(port), '127.0.0.1');
      socket.on('error', () => undefined);
      await new Promise((resolve) => socket.once('connect', resolve));
      idle.push(socket);
    }
    expect(await deliver(url, 'evt_e1_completed', completed)).toBe(204);
    expect(printed).toHaveLength(1);
    // The oldest idle connections were closed to keep room; the flood was said at warn.
    await new Promise((resolve) => setImmediate(resolve));
    expect(idle.filter((s) => s.destroyed || s.readableEnded).length).toBeGreaterThanOrEqual(
      20 + RECEIVE_CONNECTIONS.headroom,
    );
    expect(lines).toContainEqual(
      expect.objectContaining({ level: 40, msg: 'too many open connections; closing the oldest idle ones' }),
    );
  });

  it('answers 503 with Retry-After, unprinted, while its output is not being read', async () => {
    // A reader that has stalled: nothing written is ever taken.
    const stalled = new Writable({ highWaterMark: 64, write: () => undefined });
    const r = await startReceiving({
      port: 0,
      secret: undefined,
      stdout: stalled,
      log: logSink().log,
      now: () => NOW,
    });
    cleanups.push(() => r.close());
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push(await deliver(r.url, `evt_e${i}_completed`, completed));
    // The first line fills the stream's buffer; from then on the receiver says it cannot take more.
    expect(statuses).toEqual([204, 503, 503, 503, 503]);
    expect(stalled.writableLength).toBeLessThan(1024);
  });

  it('prints a verified line and answers 204 for a signed attempt; 401 and verified false for another key', async () => {
    const { url, printed } = await receiving(SECRET);
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/hooks$/);
    expect(await deliver(url, 'evt_e1_completed', completed, SECRET)).toBe(204);
    expect(await deliver(url, 'evt_e1_completed', completed, OTHER_SECRET)).toBe(401);
    expect(await deliver(url, 'evt_e1_completed', completed)).toBe(401);
    expect(printed).toEqual([
      {
        received_at: new Date(NOW).toISOString(),
        webhook_id: 'evt_e1_completed',
        webhook_timestamp: NOW / 1000,
        verified: true,
        status: 204,
        type: 'export.completed',
        export_id: 'e1',
        state: 'COMPLETED',
        previous_state: 'RUNNING',
        metadata: { run: 7 },
      },
      expect.objectContaining({ verified: false, status: 401 }),
      expect.objectContaining({ verified: false, status: 401 }),
    ]);
  });

  it('without a secret checks nothing (verified null), and says so of a body that is not a JSON object', async () => {
    const { url, printed } = await receiving();
    const imported = JSON.stringify({ type: 'import.failed', data: { import_id: 'i9', state: 'FAILED' } });
    expect(await deliver(url, 'evt_i9_failed', imported)).toBe(204);
    expect(await deliver(url, 'x', '[1, 2]')).toBe(204);
    expect(printed[0]).toMatchObject({
      verified: null,
      type: 'import.failed',
      import_id: 'i9',
      state: 'FAILED',
    });
    expect(printed[0]).not.toHaveProperty('export_id');
    expect(printed[1]).toMatchObject({
      webhook_id: 'x',
      type: null,
      body_bytes: 6,
      body_is_json_object: false,
    });
  });
});

describe('receive, as a process', () => {
  it('is what run delivers to: each event a verified line; SIGTERM exits 0', async () => {
    const sim = new Simulator({
      seed: 5,
      token: TOKEN,
      timing: { pendingMs: [50, 100], runningMs: [50, 150] },
    });
    const simUrl = await sim.start();
    cleanups.push(() => sim.close());
    const receiver = spawnCli(['receive'], { WATCHER_WEBHOOK_SECRET: SECRET });
    const hookUrl = await firstLine(receiver);
    const id = sim.createExport();
    spawnCli(
      ['run', '--id', id],
      daemonEnv(simUrl, hookUrl, SECRET, { SB_AUTH_TOKEN: TOKEN, WATCHER_WEBHOOK_EVENTS: '*' }),
    );
    const line = await receiver.waitForLine((l) => l.state === 'COMPLETED' || l.state === 'FAILED');
    expect(line).toMatchObject({
      webhook_id: `evt_${id}_${String(line.state).toLowerCase()}`,
      verified: true,
      status: 204,
      export_id: id,
    });
    receiver.child.kill('SIGTERM');
    expect((await receiver.exited).code).toBe(0);
  });

  it('refuses a WATCHER_WEBHOOK_SECRET that is not one, without printing it (exit 2)', async () => {
    const p = spawnCli(['receive'], { WATCHER_WEBHOOK_SECRET: 'not-a-secret-5f1e' });
    expect((await p.exited).code).toBe(2);
    expect(p.stderr()).toBe(
      'config: WATCHER_WEBHOOK_SECRET: expected "whsec_" followed by a base64 key, got a value of 17 characters (hidden)\n',
    );
    expect(p.stdout()).toBe('');
  });
});
