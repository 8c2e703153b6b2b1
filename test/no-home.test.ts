/**
 * `run`, `watch` and `get` look for ~/.sevenbridges/credentials. Without $HOME, the home directory
 * comes from os.homedir(), which throws (uv_os_homedir ENOENT) for a user with no passwd entry: an
 * arbitrary uid in a container or a job started with a bare environment. loadConfig calls it even
 * when SB_API_ENDPOINT and SB_AUTH_TOKEN are both set and no profile would be read, so the command
 * crashes with a stack trace (exit 1) instead of running.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it, vi } from 'vitest';

const homedir = vi.hoisted(() => ({ fail: false }));
vi.mock('node:os', async (importOriginal) => {
  const os = await importOriginal<typeof import('node:os')>();
  const home = () => {
    if (homedir.fail) {
      throw Object.assign(
        new Error('A system error occurred: uv_os_homedir returned ENOENT (no such file or directory)'),
        {
          code: 'ERR_SYSTEM_ERROR',
        },
      );
    }
    return os.homedir();
  };
  return { ...os, default: { ...os, homedir: home }, homedir: home };
});

const { loadConfig } = await import('../src/config/config.js');
const { Simulator } = await import('../src/dev/simulator.js');

afterEach(() => {
  homedir.fail = false;
});

describe('no $HOME and no home directory for the user', () => {
  it('loadConfig does not need one when SB_API_ENDPOINT and SB_AUTH_TOKEN are set', () => {
    homedir.fail = true;
    // Before: threw "uv_os_homedir returned ENOENT".
    const config = loadConfig(
      { SB_API_ENDPOINT: 'https://api.sbgenomics.com/v2', SB_AUTH_TOKEN: 'tok_123456' },
      { requireToken: true, profiles: true },
    );
    expect(config.token).toBe('tok_123456');
  });

  it('loadConfig reports SB_PROFILE as a configuration problem, not a crash', () => {
    homedir.fail = true;
    let thrown: unknown;
    try {
      loadConfig({ SB_PROFILE: 'cgc', SB_AUTH_TOKEN: 'tok_123456' }, { requireToken: true, profiles: true });
    } catch (error) {
      thrown = error;
    }
    expect((thrown as Error).name).toBe('ConfigError');
    expect((thrown as Error).message).toContain('SB_PROFILE');
  });

  // The real thing: a uid with no passwd entry and no HOME (needs root to switch uid).
  it.skipIf(process.getuid?.() !== 0)(
    '`get` as a user without a passwd entry and no HOME works',
    async () => {
      const sim = new Simulator({ seed: 3, token: 'tok_nohome_1' });
      const url = await sim.start();
      try {
        const [id] = sim.createExports(1);
        const root = join(import.meta.dirname, '..');
        const tsx = pathToFileURL(join(root, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
        const child = spawn(
          process.execPath,
          ['--import', tsx, join(root, 'src', 'cli.ts'), 'get', id as string, '--json'],
          {
            cwd: '/',
            uid: 54321,
            gid: 54321,
            env: { PATH: process.env.PATH ?? '', SB_API_ENDPOINT: url, SB_AUTH_TOKEN: 'tok_nohome_1' },
            stdio: ['ignore', 'pipe', 'pipe'],
          },
        );
        let err = '';
        let out = '';
        child.stderr.on('data', (c: Buffer) => {
          err += c;
        });
        child.stdout.on('data', (c: Buffer) => {
          out += c;
        });
        const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
        // Before: exit 1 and a stack (os.homedir() threw uv_os_homedir ENOENT).
        expect({ code, err }).toEqual({ code: 0, err: '' });
        expect(JSON.parse(out)).toMatchObject({ id });
      } finally {
        await sim.close();
      }
    },
  );
});
