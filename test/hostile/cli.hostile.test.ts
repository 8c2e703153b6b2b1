/**
 * The errors a newcomer hits, each reproduced as a process the way a newcomer would meet it, on
 * loopback only: a broken environment, a demo that read the user's settings, a platform that is
 * unreachable, refuses the token, answers 404 everywhere or stays in maintenance, a port in use,
 * a flag the command does not use, ids from a file or a pipe. Each asserts the exit code, the one
 * line printed, and that no stack trace reaches the user.
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type RequestListener, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { DemoSummary } from '../../src/cli/demo.js';
import { Simulator } from '../../src/dev/simulator.js';
import { closedPort } from '../helpers/ports.js';
import { type CliProcess, killAll, spawnCli } from '../helpers/spawn.js';

const ROOT = join(import.meta.dirname, '..', '..');
const TOKEN = 'tok_newcomer_5b8e2f1a9c';
const FAST = { pendingMs: [100, 200] as [number, number], runningMs: [100, 300] as [number, number] };

const cleanups: Array<() => Promise<unknown> | undefined> = [];
afterEach(async () => {
  killAll();
  for (const c of cleanups.splice(0).reverse()) await c();
});

let scratch: string;
beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), 'watcher-newcomer-'));
});
afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

async function simulator(): Promise<{ sim: Simulator; url: string }> {
  const sim = new Simulator({ seed: 5, token: TOKEN, timing: FAST });
  const url = await sim.start();
  cleanups.push(() => sim.close());
  return { sim, url };
}

/** A platform that misbehaves in one way, on 127.0.0.1. Resolves its base URL (with /v2). */
async function platform(handler: RequestListener): Promise<string> {
  const server = createServer(handler);
  await listen(server);
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/v2`;
}

function listen(server: Server, port = 0): Promise<void> {
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
}

function answer(status: number, body: unknown): RequestListener {
  return (req, res) => {
    req.resume();
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
}

/** A port that was open a moment ago and is closed now: connections are refused. */
async function finish(p: CliProcess): Promise<{ code: number | null; out: string; err: string }> {
  const { code } = await p.exited;
  return { code, out: p.stdout(), err: p.stderr() };
}

/** stderr lines that are not JSON log lines. */
function humanLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'));
}

function expectNoStack(text: string): void {
  expect(text).not.toMatch(/^\s{4}at /m);
  expect(text).not.toMatch(/\w+Error: /);
}

describe('9: a broken environment is one configuration line, and --help still works', () => {
  it('a directory where a credential file should be', async () => {
    const creds = join(scratch, 'credentials');
    mkdirSync(join(creds, 'sb-auth-token'), { recursive: true });
    const env = { CREDENTIALS_DIRECTORY: creds };
    const r = await finish(spawnCli(['get', 'exp-1'], env));
    expect(r.code).toBe(2);
    expectNoStack(r.err);
    expect(humanLines(r.err)).toEqual([
      `config: SB_AUTH_TOKEN: expected a readable credential file ${creds}/sb-auth-token, got EISDIR`,
    ]);
    for (const args of [['--help'], ['get', '--help'], ['--version']]) {
      const ok = await finish(spawnCli(args, env));
      expect(ok.code, args.join(' ')).toBe(0);
      expect(ok.err).toBe('');
    }
  });

  it('a .env that is a directory', async () => {
    const cwd = join(scratch, 'dotenv-dir');
    mkdirSync(join(cwd, '.env'), { recursive: true });
    const r = await finish(spawnCli(['watch', 'exp-1'], { SB_AUTH_TOKEN: TOKEN }, { cwd }));
    expect(r.code).toBe(2);
    expectNoStack(r.err);
    expect(humanLines(r.err)).toEqual([`config: .env: expected a readable file ${cwd}/.env, got EISDIR`]);
    for (const args of [['--help'], ['watch', '--help'], ['--version']]) {
      const ok = await finish(spawnCli(args, {}, { cwd }));
      expect(ok.code, args.join(' ')).toBe(0);
      expect(ok.err).toBe('');
    }
  });
});

describe('10: the demo uses only its own settings', () => {
  it('ends, with .env.example copied to .env and an event filter and log level in the environment', async () => {
    const cwd = join(scratch, 'demo');
    mkdirSync(cwd, { recursive: true });
    copyFileSync(join(ROOT, 'config', '.env.example'), join(cwd, '.env'));
    const demo = spawnCli(
      ['demo', '--exports', '0', '--unknown', '1', '--poll-interval', '200ms', '--json'],
      // Read, the filter would keep the LOST event from being sent and the demo would wait for it.
      { WATCHER_WEBHOOK_EVENTS: 'export.completed', LOG_LEVEL: 'debug', SB_API_ENDPOINT: 'cgc' },
      { cwd },
    );
    const r = await finish(demo);
    expect(r.code).toBe(0);
    expect(r.err).toBe('');
    const summary = JSON.parse(r.out.trim()) as DemoSummary;
    expect(summary.outcomes.LOST).toBe(1);
    expect(summary.webhooks_delivered).toBe(1);
  });
});

describe('11: expected runtime errors are one line, with the fix', () => {
  it('get: an unreachable endpoint', async () => {
    const port = await closedPort();
    const endpoint = `http://127.0.0.1:${port}/v2`;
    const r = await finish(spawnCli(['get', 'exp-1'], { SB_API_ENDPOINT: endpoint, SB_AUTH_TOKEN: TOKEN }));
    expect(r.code).toBe(1);
    expectNoStack(r.err);
    expect(humanLines(r.err)).toEqual([
      `error: could not reach the platform at ${endpoint} (ECONNREFUSED); check SB_API_ENDPOINT or --endpoint, and the network`,
    ]);
  });

  it('get: a refused token, never printed even when the platform echoes it', async () => {
    const url = await platform(
      answer(401, { status: 401, code: 90001, message: `Unauthorized token ${TOKEN}.` }),
    );
    const r = await finish(spawnCli(['get', 'exp-1'], { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN }));
    expect(r.code).toBe(1);
    expectNoStack(r.err);
    expect(humanLines(r.err)).toEqual([
      'error: the platform refused the token (401: Unauthorized token [redacted].); set SB_AUTH_TOKEN to a valid token (from the Developer tab of the platform)',
    ]);
    expect(r.out + r.err).not.toContain(TOKEN);
  });

  it('get: an endpoint without /v2, which carries credentials', async () => {
    const { sim, url } = await simulator();
    const id = sim.createExport();
    const base = url.replace(/\/v2$/, '').replace('http://', 'http://newcomer:pw_Hidden_77@');
    const r = await finish(spawnCli(['get', id], { SB_API_ENDPOINT: base, SB_AUTH_TOKEN: TOKEN }));
    expect(r.code).toBe(1);
    expectNoStack(r.err);
    const lines = humanLines(r.err);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^error: the platform at http:\/\/127\.0\.0\.1:\d+ has no such route \(404/);
    expect(lines[0]).toContain('check SB_API_ENDPOINT or --endpoint');
    expect(lines[0]).toContain('ends in /v2');
    expect(r.out + r.err).not.toContain('pw_Hidden_77');
  });

  it('run: --http-port on a port in use', async () => {
    const { url } = await simulator();
    const taken = createServer();
    await listen(taken);
    cleanups.push(() => new Promise<void>((resolve) => taken.close(() => resolve())));
    const { port } = taken.address() as AddressInfo;
    const r = await finish(
      spawnCli(['run', '--http-port', String(port)], { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN }),
    );
    expect(r.code).toBe(1);
    expectNoStack(r.err);
    expect(humanLines(r.err)).toEqual([
      `error: cannot listen on 127.0.0.1:${port}: the port is already in use; set WATCHER_HTTP_PORT or --http-port to another port (0 picks a free one)`,
    ]);
  });
});

describe('12: --timeout ends what would wait for ever', () => {
  it('get: permanent maintenance', async () => {
    const url = await platform(answer(503, { code: 0 }));
    const r = await finish(
      spawnCli(['get', 'exp-1', 'exp-2', '--timeout', '1s'], { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN }),
    );
    expect(r.code).toBe(1);
    expectNoStack(r.err);
    expect(humanLines(r.err)).toEqual([
      'error: gave up after 1s (--timeout): the platform is in maintenance',
    ]);
    expect(r.out).toBe('');
  });

  it('watch: an unreachable endpoint', async () => {
    const endpoint = `http://127.0.0.1:${await closedPort()}/v2`;
    const r = await finish(
      spawnCli(['watch', 'exp-1', 'exp-2', '--timeout', '1500ms'], {
        SB_API_ENDPOINT: endpoint,
        SB_AUTH_TOKEN: TOKEN,
      }),
    );
    expect(r.code).toBe(1);
    expectNoStack(r.err);
    expect(humanLines(r.err)).toContain(
      `error: timed out after 1500ms (--timeout): 2 of 2 exports not finished; the platform at ${endpoint} cannot be reached (check SB_API_ENDPOINT or --endpoint, and the network)`,
    );
    expect(r.err).not.toContain('interrupted');
  });

  it('watch: a wrong endpoint (404 on every route)', async () => {
    const url = await platform(answer(404, { status: 404, code: 90003, message: 'Not found.' }));
    const r = await finish(
      spawnCli(['watch', 'exp-1', '--timeout', '1s', '--poll-interval', '200ms'], {
        SB_API_ENDPOINT: url,
        SB_AUTH_TOKEN: TOKEN,
      }),
    );
    expect(r.code).toBe(1);
    expectNoStack(r.err);
    const last = humanLines(r.err).at(-1);
    expect(last).toMatch(
      /^error: timed out after 1s \(--timeout\): 1 of 1 export not finished; the platform at /,
    );
    expect(last).toContain('rejects the requests (check SB_API_ENDPOINT or --endpoint');
  });

  it('a --timeout that is not a duration is a usage error', async () => {
    const r = await finish(spawnCli(['get', 'exp-1', '--timeout', 'soon'], { SB_AUTH_TOKEN: TOKEN }));
    expect(r.code).toBe(2);
    expect(humanLines(r.err)).toEqual([
      'usage: --timeout: expected a duration from 1ms to 24d (like 250ms, 10s, 5m, 1h, or milliseconds), got "soon"',
    ]);
  });
});

describe('13: watch with a refused token', () => {
  it('says the token was refused, and not that it was interrupted', async () => {
    const { sim, url } = await simulator();
    const id = sim.createExport();
    const r = await finish(
      spawnCli(['watch', id], { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: 'tok_wrong_0000' }),
    );
    expect(r.code).toBe(1);
    expectNoStack(r.err);
    expect(humanLines(r.err)).toContain(
      'error: the platform refused the token; set SB_AUTH_TOKEN to a valid token (from the Developer tab of the platform)',
    );
    expect(r.err).not.toContain('interrupted');
    expect(r.err).not.toContain('not finished');
    expect(r.out + r.err).not.toContain('tok_wrong_0000');
  });
});

describe('14: each command takes only the flags it uses', () => {
  it('get --http-port is a usage error, before anything is opened', async () => {
    const r = await finish(spawnCli(['get', '--http-port', '99999', 'exp-1'], { SB_AUTH_TOKEN: TOKEN }));
    expect(r.code).toBe(2);
    expect(humanLines(r.err)).toEqual([
      'usage: get does not take --http-port (run does); see: sbg-export-watcher get --help',
    ]);
  });

  it('watch --http-host is a usage error', async () => {
    const r = await finish(spawnCli(['watch', 'exp-1', '--http-host', '0.0.0.0'], { SB_AUTH_TOKEN: TOKEN }));
    expect(r.code).toBe(2);
    expect(humanLines(r.err)).toEqual([
      'usage: watch does not take --http-host (run does); see: sbg-export-watcher watch --help',
    ]);
  });
});

describe('15: ids from a file and from standard input', () => {
  it('watch - reads the ids piped to it, with comments and blank lines', async () => {
    const { sim, url } = await simulator();
    const a = sim.createExport({ outcome: 'COMPLETED' });
    const b = sim.createExport({ outcome: 'COMPLETED' });
    const p = spawnCli(
      ['watch', '-', a],
      { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN, WATCHER_POLL_INTERVAL: '200ms' },
      { stdin: `# from the pipeline\n${a}\n\n${b}  # second\n` },
    );
    const r = await finish(p);
    expect(r.code).toBe(0);
    expect(p.lines.map((l) => l.id).sort()).toEqual([a, b].sort());
  });

  it('get merges arguments, --ids-file and --ids-file -, each id once', async () => {
    const { sim, url } = await simulator();
    const [a, b, c] = sim.createExports(3) as [string, string, string];
    const file = join(scratch, 'ids.txt');
    writeFileSync(file, `${b}\n# comment\n${a}\n`);
    const p = spawnCli(
      ['get', a, '--ids-file', file, '--ids-file', '-'],
      { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN },
      {
        stdin: `${c}\n${a}\n`,
      },
    );
    const r = await finish(p);
    expect(r.code).toBe(0);
    expect(p.lines.map((l) => l.id)).toEqual([a, b, c]);
    expect(sim.stats().bulkIdsPerCall).toEqual([3]);
  });

  it('run --ids-file - watches the ids piped to it', async () => {
    const { sim, url } = await simulator();
    const ids = sim.createExports(2);
    const p = spawnCli(
      ['run', '--ids-file', '-'],
      { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN, WATCHER_HTTP_PORT: '0', LOG_LEVEL: 'info' },
      { stdin: `${ids.join('\n')}\n` },
    );
    const added = await p.waitForLine((l) => l.msg === 'exports added');
    expect(added.accepted).toBe(2);
    p.child.kill('SIGTERM');
    expect((await p.exited).code).toBe(0);
  });

  it('no ids at all is a usage error', async () => {
    const empty = join(scratch, 'empty.txt');
    writeFileSync(empty, '# nothing yet\n');
    const r = await finish(spawnCli(['get', '--ids-file', empty], { SB_AUTH_TOKEN: TOKEN }));
    expect(r.code).toBe(2);
    expect(humanLines(r.err)).toEqual([
      'usage: get needs at least one export id: as arguments, with --ids-file FILE, or - to read them from standard input',
    ]);
  });
});

describe('16: a LOST or NOT_FOUND export says why', () => {
  it('watch prints the platform error of a LOST export; get the code and message of NOT_FOUND rows', async () => {
    const { sim, url } = await simulator();
    const id = sim.createExport({ outcome: 'COMPLETED' });
    const env = { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: TOKEN, WATCHER_POLL_INTERVAL: '200ms' };
    const watch = spawnCli(['watch', 'never-existed'], env);
    expect((await watch.exited).code).toBe(1);
    expect(watch.lines).toEqual([
      expect.objectContaining({
        id: 'never-existed',
        state: 'LOST',
        error: expect.objectContaining({ code: 9008, message: 'Requested job does not exist.' }),
      }),
    ]);
    // Two ids: the bulk call, whose item for the unknown one is an error.
    const get = spawnCli(['get', id, 'never-existed'], env);
    expect((await get.exited).code).toBe(1);
    expect(get.lines[1]).toEqual({
      id: 'never-existed',
      state: 'NOT_FOUND',
      export: null,
      error: { status: 404, code: 9008, message: 'Requested job does not exist.' },
    });
  });
});
