import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { main, readEnvironment, readIdsFile } from '../src/cli.js';
import { ConfigError, UsageError } from '../src/errors.js';

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
    for (const command of ['run', 'watch', 'get', 'simulate', 'demo']) {
      expect(r.stdout).toMatch(new RegExp(`^\\s+${command}\\s`, 'm'));
    }
    expect(r.stdout).toContain('--version');
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
