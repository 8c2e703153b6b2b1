import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { describeError, listenError } from '../src/cli/error-report.js';
import { fetchStates, formatTable, GET_DEFAULT_TIMEOUT_MS, runGet, withDeadline } from '../src/cli/get.js';
import { collectIds, readIdsStream } from '../src/cli/ids-input.js';
import { formatFinished, runWatch, STALL_WARNING_MS, type WatchDaemon } from '../src/cli/watch.js';
import {
  acceptedFlags,
  main,
  type PlatformCommand,
  parseTimeout,
  readEnvironment,
  readIdsFile,
  runCli as runCliInProcess,
} from '../src/cli.js';
import { type Config, loadConfig } from '../src/config/config.js';
import { Simulator } from '../src/dev/simulator.js';
import type { ExportView } from '../src/http/control-api.js';
import type { DaemonOptions } from '../src/main.js';
import type { RequestOutcome } from '../src/platform/platform-client.js';
import { EXPORT_STATES, type ExportState } from '../src/polling/tracker.js';
import { ConfigError, DeadlineError, ListenError, PlatformError, UsageError } from '../src/shared/errors.js';
import { useProxy } from '../src/shared/proxy.js';
import { closedPort } from './helpers/ports.js';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const CLI = join(ROOT, 'src', 'cli.ts');
// Absolute, so that the loader is found from any working directory.
const TSX = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const SPAWN_TIMEOUT_MS = 20_000;

/** The test runner's environment without anything the watcher reads. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (key.startsWith('SB_') || key.startsWith('WATCHER_') || key === 'LOG_LEVEL' || key === 'NODE_OPTIONS')
      continue;
    env[key] = value;
  }
  return { ...env, ...extra };
}

const children = new Set<ChildProcess>();

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], options: { env?: Record<string, string>; cwd?: string } = {}): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ['--import', TSX, CLI, ...args], {
      cwd: options.cwd ?? ROOT,
      env: cleanEnv(options.env),
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: SPAWN_TIMEOUT_MS,
      killSignal: 'SIGKILL',
    });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      children.delete(child);
      resolvePromise({ code, signal, stdout, stderr });
    });
  });
}

afterEach(() => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  children.clear();
});

/** stderr lines that are not blank. */
const lines = (text: string) => text.split('\n').filter((l) => l.trim() !== '');

describe('the process', () => {
  it('--version prints the package version and exits 0', async () => {
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${VERSION}\n`);
    expect(VERSION).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('--help lists every command and exits 0', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('sbg-export-watcher');
    for (const command of ['run', 'watch', 'get', 'events', 'redeliver', 'simulate', 'receive', 'demo']) {
      expect(r.stdout).toMatch(new RegExp(`^\\s+${command}\\s`, 'm'));
    }
    expect(r.stdout).toContain('--version');
  });

  it('simulate refuses a token no header can carry and a --slow no timer can wait, in one line each', async () => {
    const r = await runCli([
      'simulate',
      '--port',
      '0',
      '--token',
      ' tok',
      '--slow-rate',
      '1',
      '--slow',
      '25d',
    ]);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual([
      expect.stringMatching(/--token: expected a token of visible ASCII characters, without spaces$/),
      expect.stringMatching(/--slow: expected a duration like 500ms or 5s, up to 24d, got "25d"$/),
    ]);
    expect(r.stderr).not.toContain('" tok"');
  });

  it('simulate refuses a --pending or --running of more than MIN-MAX, in one line each', async () => {
    const r = await runCli(['simulate', '--port', '0', '--pending', '1s-5s-9s', '--running', '2s-3s-1s']);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual([
      expect.stringMatching(/--pending: expected MIN-MAX durations like 1s-5s, got "1s-5s-9s"$/),
      expect.stringMatching(/--running: expected MIN-MAX durations like 1s-5s, got "2s-3s-1s"$/),
    ]);
  });

  it('simulate refuses an --error-ids list it cannot hold, in one line', async () => {
    const r = await runCli(['simulate', '--port', '0', '--error-ids', `ok,${'x'.repeat(129)}`]);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual([
      expect.stringMatching(
        /--error-ids: expected 1 to 1000 comma-separated ids of at most 128 characters each$/,
      ),
    ]);
  });

  it('run --help describes its flags and exits 0', async () => {
    const r = await runCli(['run', '--help']);
    expect(r.code).toBe(0);
    for (const flag of [
      '--id',
      '--ids-file',
      '--endpoint',
      '--poll-interval',
      '--batch-size',
      '--http-port',
    ]) {
      expect(r.stdout).toContain(flag);
    }
    expect(r.stderr).toBe('');
  });

  it('watch --help describes the command and exits 0', async () => {
    const r = await runCli(['watch', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('watch');
    expect(r.stdout).toContain('--json');
  });

  it('an unknown command exits 2 with a usage message', async () => {
    const r = await runCli(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('frobnicate');
    expect(r.stdout).toBe('');
  });

  it('an unknown flag exits 2', async () => {
    const r = await runCli(['run', '--no-such-flag'], { env: { SB_AUTH_TOKEN: 'tok' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('no-such-flag');
  });

  it('run without SB_AUTH_TOKEN exits 2 naming SB_AUTH_TOKEN', async () => {
    const r = await runCli(['run']);
    expect(r.code).toBe(2);
    const problems = lines(r.stderr);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain('SB_AUTH_TOKEN');
  });

  it('several invalid variables: exit 2, one stderr line per problem, each naming its variable', async () => {
    const r = await runCli(['run'], {
      env: {
        SB_AUTH_TOKEN: 'tok',
        SB_API_ENDPOINT: 'nowhere',
        WATCHER_BATCH_SIZE: '101',
        WATCHER_POLL_INTERVAL: 'often',
        WATCHER_HTTP_PORT: '70000',
        LOG_LEVEL: 'loud',
      },
    });
    expect(r.code).toBe(2);
    const problems = lines(r.stderr);
    expect(problems).toHaveLength(5);
    const variables = [
      'SB_API_ENDPOINT',
      'WATCHER_POLL_INTERVAL',
      'WATCHER_BATCH_SIZE',
      'WATCHER_HTTP_PORT',
      'LOG_LEVEL',
    ];
    for (const variable of variables) {
      expect(problems.filter((p) => p.includes(`${variable}:`))).toHaveLength(1);
    }
    for (const p of problems) expect(variables.filter((v) => p.includes(v))).toHaveLength(1);
    expect(r.stdout).toBe('');
  });

  it('a configuration flag overrides its variable', async () => {
    const r = await runCli(['run', '--batch-size', '0'], {
      env: { SB_AUTH_TOKEN: 'tok', WATCHER_BATCH_SIZE: '10' },
    });
    expect(r.code).toBe(2);
    const problems = lines(r.stderr);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain('WATCHER_BATCH_SIZE');
    expect(problems[0]).toContain('"0"');
  });

  it('never prints an invalid SB_AUTH_TOKEN or WATCHER_WEBHOOK_SECRET', async () => {
    const token = 'sbtok-Qm7TopSecretValue with-space';
    const secret = 'whsec_!!Rz4HushHush';
    const r = await runCli(['run'], {
      env: { SB_AUTH_TOKEN: token, WATCHER_WEBHOOK_SECRET: secret, WATCHER_API_TOKEN: 'apitok-Lw2Private' },
    });
    expect(r.code).toBe(2);
    const problems = lines(r.stderr);
    expect(problems).toHaveLength(2);
    expect(problems.some((p) => p.includes('SB_AUTH_TOKEN'))).toBe(true);
    expect(problems.some((p) => p.includes('WATCHER_WEBHOOK_SECRET'))).toBe(true);
    const output = r.stdout + r.stderr;
    for (const fragment of [token, secret, 'Qm7TopSecret', 'Rz4HushHush', 'HushHush', 'Lw2Private']) {
      expect(output).not.toContain(fragment);
    }
  });

  it('get with an invalid id exits 2', async () => {
    const r = await runCli(['get', 'ok-id', 'not/valid'], { env: { SB_AUTH_TOKEN: 'tok' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('not/valid');
    expect(r.stdout).toBe('');
  });

  it('get without ids exits 2', async () => {
    const r = await runCli(['get'], { env: { SB_AUTH_TOKEN: 'tok' } });
    expect(r.code).toBe(2);
  });

  it('run with an --ids-file that does not exist exits 2', async () => {
    const r = await runCli(['run', '--ids-file', '/nonexistent/ids.txt'], { env: { SB_AUTH_TOKEN: 'tok' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('/nonexistent/ids.txt');
  });

  describe('with a .env file in the working directory', () => {
    let dir: string;
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), 'watcher-cli-'));
      writeFileSync(join(dir, '.env'), 'WATCHER_BATCH_SIZE=0\nWATCHER_RATE_BUDGET=plenty\n# a comment\n');
    });
    afterAll(() => {
      rmSync(dir, { recursive: true, force: true });
    });

    it('reads it', async () => {
      const r = await runCli(['run'], { cwd: dir });
      expect(r.code).toBe(2);
      const problems = lines(r.stderr);
      expect(problems).toHaveLength(3);
      for (const variable of ['SB_AUTH_TOKEN', 'WATCHER_BATCH_SIZE', 'WATCHER_RATE_BUDGET']) {
        expect(problems.filter((p) => p.includes(variable))).toHaveLength(1);
      }
    });

    it('lets the real environment win', async () => {
      const r = await runCli(['run'], { cwd: dir, env: { SB_AUTH_TOKEN: 'tok', WATCHER_BATCH_SIZE: '50' } });
      expect(r.code).toBe(2);
      const problems = lines(r.stderr);
      expect(problems).toHaveLength(1);
      expect(problems[0]).toContain('WATCHER_RATE_BUDGET');
    });
  });
});

describe('main', () => {
  it('rejects an unknown command with a UsageError', async () => {
    await expect(main(['nope'], {})).rejects.toBeInstanceOf(UsageError);
    // Names every object has are no commands either.
    for (const name of ['constructor', 'toString', 'hasOwnProperty', '__proto__']) {
      await expect(main([name], {})).rejects.toThrow(`unknown command "${name}"`);
    }
  });

  it('rejects run without a token with a ConfigError naming SB_AUTH_TOKEN', async () => {
    const error = await main(['run'], {}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems).toHaveLength(1);
    expect((error as ConfigError).problems[0]).toMatch(/^SB_AUTH_TOKEN: /);
  });

  it('rejects an invalid id before reading the configuration', async () => {
    const error = await main(['get', 'bad id'], {}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).message).toContain('"bad id"');
  });

  it('refuses an empty configuration flag instead of falling back to the default over the environment', async () => {
    const env = {
      SB_AUTH_TOKEN: 't',
      SB_API_ENDPOINT: 'http://127.0.0.1:9/v2',
      WATCHER_POLL_INTERVAL: 'soon',
    };
    for (const [args, flag] of [
      [['get', '--endpoint', '', 'abc'], '--endpoint'],
      [['watch', '--poll-interval', ' ', 'abc'], '--poll-interval'],
      [['run', '--webhook-url', 'http://127.0.0.1:9/h', '--webhook-url', ''], '--webhook-url'],
    ] as const) {
      const error = await main([...args], env).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(UsageError);
      expect((error as UsageError).message).toMatch(new RegExp(`^${flag}: expected .+, got an empty value$`));
    }
  });

  it('refuses a --webhook-url holding a comma (it would be cut in two), naming the flag', async () => {
    const env = { SB_AUTH_TOKEN: 't', SB_API_ENDPOINT: 'http://127.0.0.1:9/v2' };
    for (const command of ['run', 'watch'] as const) {
      const args = command === 'run' ? ['run'] : ['watch', 'abc'];
      const error = await main([...args, '--webhook-url', 'http://127.0.0.1:9/h?ids=1,2'], env).catch(
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(UsageError);
      expect((error as UsageError).message).toBe(
        '--webhook-url: a URL here cannot hold a comma; write it as %2C',
      );
    }
  });

  it('rejects an invalid --id for run', async () => {
    const error = await main(['run', '--id', 'ok', '--id', 'x'.repeat(129)], { SB_AUTH_TOKEN: 't' }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(UsageError);
  });
});

describe('readEnvironment', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'watcher-env-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads .env values, and the real environment wins', () => {
    writeFileSync(
      join(dir, '.env'),
      [
        '# settings',
        'SB_AUTH_TOKEN=from-file',
        'WATCHER_BATCH_SIZE=7',
        'SB_API_ENDPOINT="cgc"',
        "WATCHER_DATA_DIR='/srv/data dir'",
        '',
      ].join('\n'),
    );
    const env = readEnvironment({ SB_AUTH_TOKEN: 'from-env', PATH: '/bin' }, dir);
    expect(env.SB_AUTH_TOKEN).toBe('from-env');
    expect(env.WATCHER_BATCH_SIZE).toBe('7');
    expect(env.SB_API_ENDPOINT).toBe('cgc');
    expect(env.WATCHER_DATA_DIR).toBe('/srv/data dir');
    expect(env.PATH).toBe('/bin');
  });

  it('an empty real value still wins over the file', () => {
    writeFileSync(join(dir, '.env'), 'WATCHER_BATCH_SIZE=7\n');
    expect(readEnvironment({ WATCHER_BATCH_SIZE: '' }, dir).WATCHER_BATCH_SIZE).toBe('');
  });

  it('works without a .env file', () => {
    const empty = mkdtempSync(join(tmpdir(), 'watcher-noenv-'));
    try {
      expect(readEnvironment({ LOG_LEVEL: 'warn' }, empty)).toEqual({ LOG_LEVEL: 'warn' });
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('a variable found unset, and no .env where the command started: its line says so', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'watcher-noenv-'));
    try {
      const r = await runCli(['run'], {
        env: { HOME: empty, WATCHER_DATA_DIR: join(empty, 'data') },
        cwd: empty,
      });
      expect(r.code).toBe(2);
      // On the problem's own line: one line per problem, as ever.
      expect(r.stderr.split('\n').filter(Boolean)).toEqual([
        expect.stringMatching(/^config: SB_AUTH_TOKEN: expected the platform token .*, got nothing \(/),
      ]);
      expect(r.stderr).toContain(
        `got nothing (and no ${join(empty, '.env')} was found: a .env is read from the working directory)\n`,
      );
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('no such hint with a .env found, nor for a value that is set but wrong', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'watcher-noenv-'));
    const run = async (processEnv: Record<string, string>, cwd: string) => {
      const lines: string[] = [];
      const dotenv = {};
      const code = await runCliInProcess(['run'], () => readEnvironment(processEnv, cwd, dotenv), {
        stderr: { write: (text: string) => lines.push(text) },
        dotenv,
      });
      return { code, lines };
    };
    try {
      writeFileSync(join(dir, '.env'), 'WATCHER_BATCH_SIZE=7\n');
      const found = await run({ HOME: empty }, dir);
      expect(found.code).toBe(2);
      expect(found.lines).toEqual([expect.stringMatching(/^config: SB_AUTH_TOKEN: .*got nothing\n$/)]);

      const wrong = await run({ HOME: empty, SB_AUTH_TOKEN: 'tok-123456', WATCHER_BATCH_SIZE: '0' }, empty);
      expect(wrong.code).toBe(2);
      expect(wrong.lines).toEqual([expect.stringMatching(/^config: WATCHER_BATCH_SIZE: /)]);

      // Two variables unset: the hint once, on the first.
      const missing = await run({ HOME: empty, WATCHER_HTTP_HOST: '0.0.0.0' }, empty);
      expect(missing.lines).toHaveLength(2);
      expect(missing.lines[0]).toContain(`no ${join(empty, '.env')} was found`);
      expect(missing.lines[1]).toMatch(/^config: WATCHER_API_TOKEN: .*got nothing\n$/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('does not change the environment it is given', () => {
    writeFileSync(join(dir, '.env'), 'WATCHER_RETAIN=1h\n');
    const processEnv = { A: '1' };
    readEnvironment(processEnv, dir);
    expect(processEnv).toEqual({ A: '1' });
  });
});

describe('readIdsFile', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'watcher-ids-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads one id per line, skipping blank lines and # comments', () => {
    const path = join(dir, 'ids.txt');
    writeFileSync(
      path,
      '# exports from run 12\nexp-1\n\n   \n  exp_2  \r\nEXP3 # trailing comment\n#exp-4\nexp-5',
    );
    expect(readIdsFile(path)).toEqual(['exp-1', 'exp_2', 'EXP3', 'exp-5']);
  });

  it('reads an empty file as no ids', () => {
    const path = join(dir, 'empty.txt');
    writeFileSync(path, '');
    expect(readIdsFile(path)).toEqual([]);
  });

  it('throws a UsageError naming a missing file', () => {
    const missing = join(dir, 'missing.txt');
    let error: unknown;
    try {
      readIdsFile(missing);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).code).toBe('USAGE');
    expect((error as UsageError).message).toContain(missing);
  });
});

/** Captures what main() writes to stdout (help, version). */
async function stdoutOf(run: () => Promise<number>): Promise<{ code: number; out: string }> {
  let out = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out += String(chunk);
    return true;
  });
  try {
    return { code: await run(), out };
  } finally {
    spy.mockRestore();
  }
}

/** An environment that must not be read. */
const untouchable = () => {
  throw new Error('the environment was read');
};

describe('flags per command', () => {
  const expected: Record<PlatformCommand, string[]> = {
    run: [
      'id',
      'ids-file',
      'import-id',
      'discover',
      'profile',
      'endpoint',
      'poll-interval',
      'rate-budget',
      'rate-window',
      'batch-size',
      'webhook-url',
      'http-host',
      'http-port',
      'log-level',
    ],
    watch: [
      'profile',
      'endpoint',
      'poll-interval',
      'rate-budget',
      'rate-window',
      'batch-size',
      'webhook-url',
      'log-level',
      'json',
      'timeout',
      'ids-file',
      'kind',
      'all',
    ],
    get: ['profile', 'endpoint', 'log-level', 'json', 'timeout', 'ids-file', 'kind'],
  };

  for (const command of ['run', 'watch', 'get'] as const) {
    it(`${command} takes exactly its flags, and its --help lists exactly those`, async () => {
      expect(acceptedFlags(command).sort()).toEqual([...expected[command]].sort());
      const { code, out } = await stdoutOf(() => main([command, '--help'], untouchable));
      expect(code).toBe(0);
      const listed = [...out.matchAll(/^ {2}--([a-z-]+)/gm)].map((m) => m[1]);
      expect(listed.sort()).toEqual([...expected[command]].sort());
    });
  }

  it.each([
    [['get', '--http-port', '99999', 'x'], '--http-port'],
    [['get', '--poll-interval', '1s', 'x'], '--poll-interval'],
    [['watch', '--http-host', '0.0.0.0', 'x'], '--http-host'],
    [['watch', '--id', 'x'], '--id'],
    [['run', '--timeout', '1s'], '--timeout'],
    [['run', '--json'], '--json'],
  ])('%j is a usage error naming %s, before the environment is read', async (args, flag) => {
    const error = await main(args, untouchable).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).message).toContain(`does not take ${flag}`);
  });

  it.each([
    [['run', '--port', '1'], 'run does not take --port (did you mean --http-port?)'],
    [['get', '--jsn', 'x'], 'get does not take --jsn (did you mean --json?)'],
    [['watch', '--timout', '5s', 'x'], 'watch does not take --timout (did you mean --timeout?)'],
    [['simulate', '--prot', '1'], 'simulate does not take --prot (did you mean --port?)'],
    // Another command's flag: that command is named, not a guess.
    [['watch', '--http-port', '1', 'x'], 'watch does not take --http-port (run does)'],
    // Nothing near: no guess.
    [['get', '--frobnicate', 'x'], 'get does not take --frobnicate; see'],
    // Two flags end so (--api-url, --webhook-url): no guess rather than a wrong one.
    [['redeliver', '--url', 'x'], 'redeliver does not take --url; see'],
    // A short name: one edit at most (--host is not --port).
    [['receive', '--host', 'x'], 'receive does not take --host; see'],
  ])('%j names the flag it may have meant', async (args, text) => {
    const error = await main(args, untouchable).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).message).toContain(text);
  });

  it('--help and --version never read the environment', async () => {
    for (const args of [
      ['--help'],
      ['--version'],
      ['run', '--help'],
      ['demo', '--help'],
      ['get', 'x', '-h'],
    ]) {
      expect((await stdoutOf(() => main(args, untouchable))).code).toBe(0);
    }
  });
});

describe('--timeout', () => {
  it('parses durations as configuration does; get defaults to 60 s, watch to no limit', () => {
    expect(parseTimeout(undefined, GET_DEFAULT_TIMEOUT_MS)).toBe(60_000);
    expect(parseTimeout(undefined, undefined)).toBeUndefined();
    expect(parseTimeout('250ms', undefined)).toBe(250);
    expect(parseTimeout('10s', undefined)).toBe(10_000);
    expect(parseTimeout('5m', undefined)).toBe(300_000);
    expect(parseTimeout('1h', undefined)).toBe(3_600_000);
    expect(parseTimeout('1500', undefined)).toBe(1500);
  });

  it.each(['soon', '0', '-1s', '25d', ''])('rejects %j naming the flag', (value) => {
    expect(() => parseTimeout(value, undefined)).toThrow(UsageError);
    expect(() => parseTimeout(value, undefined)).toThrow(/^--timeout: expected a duration/);
  });
});

describe('collectIds', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'watcher-collect-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  const stdin = (text: string) => Object.assign(Readable.from([text]), { isTTY: false });

  it('merges arguments, --id, files and standard input in order, each id once', async () => {
    const file = join(dir, 'ids.txt');
    writeFileSync(file, '# batch\nb\na\n');
    const ids = await collectIds(
      { ids: ['z'], positionals: ['a', '-', 'c'], files: [file, '-'] },
      { stdin: stdin('d\n\n  # nothing\nc # again\n') },
    );
    expect(ids).toEqual(['z', 'a', 'c', 'b', 'd']);
  });

  it('reads standard input once, even when named twice', async () => {
    const input = new PassThrough();
    input.end('x\ny\n');
    expect(await collectIds({ positionals: ['-'], files: ['-'] }, { stdin: input })).toEqual(['x', 'y']);
  });

  it('says it reads standard input when that is a terminal', async () => {
    let said = '';
    await collectIds(
      { positionals: ['-'] },
      {
        stdin: Object.assign(Readable.from(['x\n']), { isTTY: true }),
        stderr: { write: (t: string) => (said += t) },
      },
    );
    expect(said).toContain('standard input');
  });

  it('validates every id, wherever it came from', async () => {
    const error = await collectIds({ positionals: ['ok'] }, { stdin: stdin('') })
      .then(() => collectIds({ positionals: ['ok', '-'] }, { stdin: stdin('not/valid\n') }))
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).message).toContain('"not/valid"');
  });

  it('names at most five bad ids', async () => {
    const bad = Array.from({ length: 8 }, (_, i) => `bad/${i}`).join('\n');
    const error = (await collectIds({ positionals: ['-'] }, { stdin: stdin(bad) }).catch(
      (e: unknown) => e,
    )) as Error;
    expect(error.message).toContain('"bad/4"');
    expect(error.message).not.toContain('"bad/5"');
    expect(error.message).toContain('and 3 more');
  });

  it('readIdsStream reads a stream to its end', async () => {
    expect(await readIdsStream(Readable.from(['a\r\nb', '\n# c\nd']))).toEqual(['a', 'b', 'd']);
  });

  it('a watch or get without any id is a usage error', async () => {
    const empty = join(dir, 'empty.txt');
    writeFileSync(empty, '# none yet\n');
    for (const args of [['watch'], ['get'], ['watch', '--ids-file', empty], ['get', '--ids-file', empty]]) {
      const error = await main(args, untouchable).catch((e: unknown) => e);
      expect(error, args.join(' ')).toBeInstanceOf(UsageError);
      expect((error as UsageError).message).toContain('at least one export id');
    }
  });
});

describe('runCli: what is printed for a failure', () => {
  function stderr() {
    let text = '';
    return { write: (t: string) => (text += t), text: () => text };
  }

  it('a broken environment is a configuration error: one line, exit 2', async () => {
    const err = stderr();
    const code = await runCliInProcess(
      ['get', 'x'],
      () => {
        throw new ConfigError([
          'SB_AUTH_TOKEN: expected a readable credential file /c/sb-auth-token, got EISDIR',
        ]);
      },
      { stderr: err },
    );
    expect(code).toBe(2);
    expect(err.text()).toBe(
      'config: SB_AUTH_TOKEN: expected a readable credential file /c/sb-auth-token, got EISDIR\n',
    );
  });

  it('a .env that cannot be read is a configuration error naming it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'watcher-envdir-'));
    try {
      mkdirSync(join(dir, '.env'));
      let error: unknown;
      try {
        readEnvironment({}, dir);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).problems).toEqual([
        `.env: expected a readable file ${dir}/.env, got EISDIR`,
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('scrubs the configuration secrets and URL credentials from the line', async () => {
    // A closed port: the platform cannot be reached, and the error line names the endpoint.
    const port = await closedPort();
    const err = stderr();
    const code = await runCliInProcess(
      ['get', 'x', '--timeout', '10s'],
      { SB_API_ENDPOINT: `http://me:pw_Secret_81@127.0.0.1:${port}/v2`, SB_AUTH_TOKEN: 'tok_secret_value' },
      { stderr: err },
    );
    expect(code).toBe(1);
    expect(err.text()).toBe(
      `error: could not reach the platform at http://127.0.0.1:${port}/v2 (ECONNREFUSED); check SB_API_ENDPOINT or --endpoint, and the network\n`,
    );
  });

  it.each([
    ['WATCHER_DISCOVER', 'bogus'],
    ['WATCHER_DATABASE_URL', 'mysql://u:p@h/db'],
    ['WATCHER_LEADER_TIMEOUT', '1s'],
  ])('get and watch do not stop on a %s meant for run', async (name, value) => {
    const env = {
      SB_API_ENDPOINT: 'http://127.0.0.1:9/v2',
      SB_AUTH_TOKEN: 'tok_secret_value',
      [name]: value,
    };
    const err = stderr();
    expect(await runCliInProcess(['get', 'x', '--timeout', '5s'], env, { stderr: err })).toBe(1);
    expect(err.text()).toMatch(/^error: could not reach the platform/);
    // watch writes its own lines to the process's stderr: its exit code says it ran (1: timed out),
    // where a configuration error would be 2.
    const werr = stderr();
    expect(await runCliInProcess(['watch', 'x', '--timeout', '1s'], env, { stderr: werr })).toBe(1);
    expect(werr.text()).not.toContain(name);
  });

  it('names the proxy when the platform cannot be reached through one, never its credentials', async () => {
    const port = await closedPort();
    const err = stderr();
    let code: number;
    try {
      code = await runCliInProcess(
        ['get', 'x', '--timeout', '10s'],
        {
          SB_API_ENDPOINT: 'http://127.0.0.1:9/v2',
          SB_AUTH_TOKEN: 'tok_secret_value',
          HTTP_PROXY: `http://puser:proxy_Pw_77@127.0.0.1:${port}`,
        },
        { stderr: err },
      );
    } finally {
      // The in-process CLI sets the proxy for the process, as the real one does.
      useProxy(undefined);
    }
    expect(code).toBe(1);
    expect(err.text()).toBe(
      `error: could not reach the platform at http://127.0.0.1:9/v2 (ECONNREFUSED); check SB_API_ENDPOINT or --endpoint, and the network (a proxy is set for it unless NO_PROXY covers it: http://127.0.0.1:${port}; check HTTPS_PROXY, HTTP_PROXY and NO_PROXY too)\n`,
    );
  });

  it('a bug keeps its stack', () => {
    const report = describeError(new TypeError('x is not a function'));
    expect(report.exitCode).toBe(1);
    expect(report.lines[0]).toMatch(/^error: TypeError: x is not a function\n\s+at /);
  });

  it.each([
    [
      'EADDRINUSE',
      'the port is already in use; set WATCHER_HTTP_PORT or --http-port to another port (0 picks a free one)',
    ],
    ['EACCES', 'permission denied (ports below 1024 need privileges); set WATCHER_HTTP_PORT or --http-port'],
    ['EADDRNOTAVAIL', '10.1.2.3 is not an address of this machine; set WATCHER_HTTP_HOST or --http-host'],
  ])('a listen failure %s is one line saying what to change', (code, text) => {
    const nodeError = Object.assign(new Error(`listen ${code}`), { code, syscall: 'listen' });
    const mapped = listenError(nodeError, '10.1.2.3', 80);
    expect(mapped).toBeInstanceOf(ListenError);
    const report = describeError(mapped);
    expect(report.exitCode).toBe(1);
    expect(report.lines).toHaveLength(1);
    expect(report.lines[0]).toContain(`error: cannot listen on 10.1.2.3:80: ${text}`);
    // Node's own error, had it escaped unmapped, is still not a stack.
    expect(describeError(nodeError).lines[0]).not.toContain('    at ');
    // Anything else is left alone.
    const other = new Error('boom');
    expect(listenError(other, 'h', 1)).toBe(other);
  });

  it('platform failures say which variable to change, in one line without control characters', () => {
    const endpoint = 'https://api.example.org/v2';
    const line = (e: PlatformError) => describeError(e, { endpoint }).lines;
    expect(
      line(
        new PlatformError('PLATFORM_UNAUTHORIZED', 'refused', {
          status: 401,
          body: { message: 'Unauthorized.\n\u001b[31mred' },
        }),
      ),
    ).toEqual([
      'error: the platform refused the token (401: Unauthorized. [31mred); set SB_AUTH_TOKEN to a valid token (from the Developer tab of the platform)',
    ]);
    expect(line(new PlatformError('PLATFORM_REJECTED', 'no route', { status: 404 }))[0]).toContain(
      `the platform at ${endpoint} has no such route (404); check SB_API_ENDPOINT or --endpoint`,
    );
    expect(line(new PlatformError('PLATFORM_MAINTENANCE', 'm', { status: 503 }))).toEqual([
      'error: the platform is in maintenance; try again later',
    ]);
    expect(describeError(new DeadlineError('gave up after 1s (--timeout): x')).lines).toEqual([
      'error: gave up after 1s (--timeout): x',
    ]);
  });
});

describe('get', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('withDeadline gives up at the deadline, and clears its timer when the work is in time', async () => {
    vi.useFakeTimers();
    const onTimeout = vi.fn(() => new DeadlineError('gave up'));
    let fail!: (e: Error) => void;
    const work = new Promise<number>((_, reject) => {
      fail = reject;
    });
    const result = withDeadline(work, 60_000, onTimeout).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(59_999);
    expect(onTimeout).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(1);
    expect(await result).toBeInstanceOf(DeadlineError);
    expect(onTimeout).toHaveBeenCalledTimes(1);
    // The work failing afterwards (aborted) is handled, not an unhandled rejection.
    fail(new Error('aborted'));

    expect(await withDeadline(Promise.resolve(5), 1000, onTimeout)).toBe(5);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('runGet says when its own rate budget, not the platform, kept it waiting', async () => {
    const sim = new Simulator({ seed: 3 });
    const url = await sim.start();
    try {
      const config = loadConfig(
        { SB_API_ENDPOINT: url, SB_AUTH_TOKEN: 'tok', WATCHER_RATE_BUDGET: '2', WATCHER_RATE_WINDOW: '1h' },
        { listens: false },
      );
      // 300 ids: three bulk calls, which a budget of 2 per hour spreads 20 minutes apart.
      const ids = Array.from({ length: 300 }, (_, i) => `exp-${i}`);
      const error = await runGet({
        config,
        ids,
        json: true,
        stdout: new PassThrough(),
        log: pino({ level: 'silent' }),
        timeoutMs: 1000,
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(DeadlineError);
      expect((error as DeadlineError).message).toBe(
        'gave up after 1s (--timeout): 1 call was still waiting for the rate budget (WATCHER_RATE_BUDGET: 2 requests spread over 1h): ask for fewer ids at once, or allow more',
      );
    } finally {
      await sim.close();
    }
  });

  it('runGet aborts the request in flight at --timeout', async () => {
    let aborted!: () => void;
    const requestAborted = new Promise<void>((resolve) => {
      aborted = resolve;
    });
    // Takes the request and never answers.
    const server = createServer((req) => req.on('close', () => aborted()));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v2`;
    try {
      const config = loadConfig({ SB_API_ENDPOINT: endpoint, SB_AUTH_TOKEN: 'tok' }, { listens: false });
      const error = await runGet({
        config,
        ids: ['a'],
        json: true,
        stdout: new PassThrough(),
        log: pino({ level: 'silent' }),
        timeoutMs: 300,
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(DeadlineError);
      expect((error as DeadlineError).message).toBe(
        `gave up after 300ms (--timeout): no answer from the platform at ${endpoint}`,
      );
      await requestAborted;
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('runGet exits 1 when the platform says nothing usable about the ids (an endpoint without /v2)', async () => {
    const sim = new Simulator({ seed: 3 });
    const url = await sim.start();
    try {
      const ids = sim.createExports(2);
      // The base URL without /v2: the bulk route is 404, and so is each single get.
      const config = loadConfig(
        { SB_API_ENDPOINT: url.replace(/\/v2$/, ''), SB_AUTH_TOKEN: 'tok' },
        { listens: false },
      );
      let printed = '';
      const stdout = new Writable({
        write(chunk, _encoding, done) {
          printed += String(chunk);
          done();
        },
      });
      const code = await runGet({
        config,
        ids,
        json: true,
        stdout,
        log: pino({ level: 'silent' }),
        timeoutMs: 10_000,
      });
      const rows = printed
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { state: string });
      expect(rows.map((r) => r.state)).toEqual(['UNANSWERED', 'UNANSWERED']);
      // Not "every export found": a script must not take this for success.
      expect(code).toBe(1);
    } finally {
      await sim.close();
    }
  });

  it('shows the code and message of a NOT_FOUND row, in JSON and in the table', async () => {
    const rows = await fetchStates(
      {
        getOneItem: async () => {
          throw new Error('not used');
        },
        checkStatuses: async (ids) => ({
          observations: [
            { kind: 'resource', id: ids[0] as string, resource: { id: ids[0] as string, state: 'RUNNING' } },
            {
              kind: 'missing',
              id: ids[1] as string,
              error: {
                status: 404,
                code: 9008,
                message: 'Requested job does not exist.',
                more_info: 'https://x',
              },
            },
          ],
          warnings: [],
        }),
      },
      ['a', 'gone'],
    );
    expect(rows[1]).toEqual({
      id: 'gone',
      state: 'NOT_FOUND',
      export: null,
      error: { status: 404, code: 9008, message: 'Requested job does not exist.' },
    });
    const table = formatTable(rows).split('\n');
    expect(table[2]).toMatch(/^gone\s+NOT_FOUND\s+-\s+-\s+-\s+9008 Requested job does not exist\.$/);
  });
});

describe('watch', () => {
  const config: Config = loadConfig(
    { SB_AUTH_TOKEN: 'tok', WATCHER_SHUTDOWN_TIMEOUT: '0' },
    { requireToken: true, listens: false },
  );
  const noCounts = () => Object.fromEntries(EXPORT_STATES.map((s) => [s, 0])) as Record<ExportState, number>;

  function record(id: string, state: ExportState, error: ExportView['error'] = null): ExportView {
    return {
      id,
      state,
      previousState: 'UNKNOWN',
      firstSeenAt: 0,
      stateChangedAt: 0,
      lastCheckedAt: 0,
      checks: 3,
      metadata: null,
      history: [],
      export: null,
      error,
    };
  }

  /** A daemon that does nothing by itself: the test plays the platform through its hooks. */
  function fake(deliveriesSettled: () => Promise<void> = async () => undefined) {
    let hooks: DaemonOptions | undefined;
    let given: Config | undefined;
    const records = new Map<string, ExportView>();
    let settle!: () => void;
    const settled = new Promise<void>((resolve) => {
      settle = resolve;
    });
    const daemon: WatchDaemon = {
      registry: {
        watch: async (ids) => ({ accepted: [...ids], alreadyWatched: [] }),
        get: async (id) => records.get(id),
      },
      tracker: { countByState: noCounts },
      scheduler: { onSettled: () => settled },
      deliveries: { settled: deliveriesSettled },
      start: async () => undefined,
      stop: async () => ({ pendingDeliveries: 0 }),
    };
    return {
      create: async (c: Config, options: DaemonOptions) => {
        given = c;
        hooks = options;
        return daemon;
      },
      config: () => given,
      outcome: (outcome: RequestOutcome) =>
        hooks?.bus?.emit('platform.request', { route: 'bulk_get', outcome, durationMs: 1 }),
      finish: (id: string, to: ExportState, error: ExportView['error'] = null) => {
        records.set(id, record(id, to, error));
        hooks?.bus?.emit('transition', {
          exportId: id,
          from: 'RUNNING',
          to,
          at: Date.now(),
          export: null,
          error,
        });
      },
      settle,
    };
  }

  function text() {
    let all = '';
    const stream = new Writable({
      write(chunk, _encoding, done) {
        all += String(chunk);
        done();
      },
    });
    return { stream, lines: () => all.split('\n').filter((l) => l !== '') };
  }

  function start(
    ids: string[],
    f: ReturnType<typeof fake>,
    extra: { timeoutMs?: number; config?: Config } = {},
  ) {
    const out = text();
    const err = text();
    const controller = new AbortController();
    const done = runWatch({
      config,
      ids,
      json: false,
      stdout: out.stream,
      stderr: err.stream,
      stdoutTty: true,
      stderrTty: false,
      log: pino({ level: 'silent' }),
      signal: controller.signal,
      createDaemon: f.create,
      ...extra,
    });
    return { out, err, controller, done };
  }

  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const unreachable = `the platform at ${config.endpoint} cannot be reached (check SB_API_ENDPOINT or --endpoint, and the network)`;
  const warnings = (lines: string[]) => lines.filter((l) => l.startsWith('warning:'));

  it('warns when no check has succeeded for 5 minutes, and again every 5 minutes it lasts', async () => {
    expect(STALL_WARNING_MS).toBe(300_000);
    const f = fake();
    const w = start(['a'], f);
    await vi.advanceTimersByTimeAsync(0);
    f.outcome('network');
    await vi.advanceTimersByTimeAsync(STALL_WARNING_MS - 1);
    expect(warnings(w.err.lines())).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(warnings(w.err.lines())).toEqual([
      `warning: no check has succeeded for 5m: ${unreachable}; still trying (Ctrl-C stops, --timeout sets a limit)`,
    ]);
    await vi.advanceTimersByTimeAsync(STALL_WARNING_MS);
    expect(warnings(w.err.lines())[1]).toMatch(/^warning: no check has succeeded for 10m: the platform at /);

    // A success at 11 minutes: quiet until 16, then the count starts again from it.
    await vi.advanceTimersByTimeAsync(60_000);
    f.outcome('ok');
    await vi.advanceTimersByTimeAsync(STALL_WARNING_MS - 1);
    expect(warnings(w.err.lines())).toHaveLength(2);
    f.outcome('maintenance');
    await vi.advanceTimersByTimeAsync(1);
    expect(warnings(w.err.lines())[2]).toBe(
      'warning: no check has succeeded for 5m: the platform is in maintenance; still trying (Ctrl-C stops, --timeout sets a limit)',
    );

    w.controller.abort(130);
    expect(await w.done).toBe(130);
    expect(w.err.lines().at(-1)).toBe('interrupted before every export finished (1 of 1 not finished)');
  });

  it('gives up at --timeout, saying how many exports were not finished and why', async () => {
    const f = fake();
    const w = start(['a', 'b', 'c'], f, { timeoutMs: 600_000 });
    await vi.advanceTimersByTimeAsync(0);
    f.finish('a', 'COMPLETED');
    f.outcome('network');
    await vi.advanceTimersByTimeAsync(600_000);
    expect(await w.done).toBe(1);
    const lines = w.err.lines();
    expect(lines.at(-1)).toBe(
      `error: timed out after 10m (--timeout): 2 of 3 exports not finished; ${unreachable}`,
    );
    expect(warnings(lines)).toHaveLength(1);
    expect(warnings(lines)[0]).toMatch(/still trying \(Ctrl-C stops\)$/);
    expect(lines.join('\n')).not.toContain('interrupted');
    expect(vi.getTimerCount()).toBe(0);
  });

  it('does not read WATCHER_DISCOVER (meant for run): a bad value or a small budget is no error', () => {
    const env = { SB_AUTH_TOKEN: 'tok', WATCHER_DISCOVER: 'bogus', WATCHER_DISCOVER_INTERVAL: 'soon' };
    expect(() => loadConfig(env, { requireToken: true })).toThrow(ConfigError);
    const c = loadConfig({ ...env, WATCHER_RATE_BUDGET: '5' }, { requireToken: true, discovers: false });
    expect(c.discover).toEqual([]);
  });

  it('waits for the ids given only: no discovery, and no other job counted or printed', async () => {
    const f = fake();
    const discovering = loadConfig(
      { SB_AUTH_TOKEN: 'tok', WATCHER_SHUTDOWN_TIMEOUT: '0', WATCHER_DISCOVER: 'exports' },
      { requireToken: true, listens: false },
    );
    expect(discovering.discover).toEqual(['export']);
    const w = start(['a'], f, { config: discovering });
    await vi.advanceTimersByTimeAsync(0);
    expect(f.config()?.discover).toEqual([]);
    f.finish('someone-elses', 'FAILED');
    f.finish('a', 'COMPLETED');
    f.settle();
    expect(await w.done).toBe(0);
    expect(w.out.lines()).toHaveLength(1);
    expect(w.out.lines()[0]).toMatch(/^a\b/);
    expect(w.out.lines().join('\n')).not.toContain('someone-elses');
  });

  it('Ctrl-C while the last webhooks are being sent exits 130 at once', async () => {
    const f = fake(() => new Promise<void>(() => undefined));
    const patient = loadConfig(
      { SB_AUTH_TOKEN: 'tok', WATCHER_SHUTDOWN_TIMEOUT: '1h' },
      { requireToken: true, listens: false },
    );
    const w = start(['a'], f, { config: patient });
    await vi.advanceTimersByTimeAsync(0);
    f.finish('a', 'COMPLETED');
    f.settle();
    await vi.advanceTimersByTimeAsync(1000);
    let code: number | undefined;
    void w.done.then((c) => {
      code = c;
    });
    await vi.advanceTimersByTimeAsync(1000);
    expect(code).toBeUndefined();
    w.controller.abort(130);
    await vi.advanceTimersByTimeAsync(0);
    expect(code).toBe(130);
    expect(w.err.lines().at(-1)).toBe('interrupted while the last webhook deliveries were being sent');
  });

  it('a refused token says so, and only that', async () => {
    const f = fake();
    const w = start(['a'], f);
    await vi.advanceTimersByTimeAsync(0);
    f.outcome('unauthorized');
    expect(await w.done).toBe(1);
    expect(w.err.lines()).toEqual([
      'watching 1 export',
      'error: the platform refused the token; set SB_AUTH_TOKEN to a valid token (from the Developer tab of the platform)',
    ]);
  });

  it('exits 0 when all complete and 1 when one is LOST, whose line says why', async () => {
    const f = fake();
    const w = start(['a', 'gone'], f);
    await vi.advanceTimersByTimeAsync(0);
    f.finish('a', 'COMPLETED');
    f.finish('gone', 'LOST', { status: 404, code: 9008, message: 'Requested job does not exist.' });
    f.settle();
    expect(await w.done).toBe(1);
    expect(w.out.lines()).toEqual(['a  COMPLETED', 'gone  LOST  9008 Requested job does not exist.']);
    expect(w.err.lines().join('\n')).not.toContain('interrupted');
  });

  it('formats a FAILED export with the job error, and JSON when asked', () => {
    const failed = record('f', 'FAILED', { code: 500, message: 'Copy failed.' });
    expect(formatFinished(failed, { json: false, stdoutTty: true })).toBe('f  FAILED  500 Copy failed.\n');
    expect(JSON.parse(formatFinished(failed, { json: true, stdoutTty: true }))).toMatchObject({
      id: 'f',
      state: 'FAILED',
      error: { code: 500, message: 'Copy failed.' },
    });
  });
});
