import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { readEnvironment, runCli, withCredentials } from '../src/cli.js';
import { ConfigError } from '../src/shared/errors.js';

describe('withCredentials ($CREDENTIALS_DIRECTORY, systemd LoadCredential=)', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'creds-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('fills unset secrets from their files, dropping one trailing newline', () => {
    writeFileSync(join(dir, 'sb-auth-token'), 'tok-from-file\n');
    writeFileSync(join(dir, 'webhook-secret'), 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
    writeFileSync(join(dir, 'api-token'), 'api-from-file\r\n');
    const env = withCredentials({ CREDENTIALS_DIRECTORY: dir, LOG_LEVEL: 'info' });
    expect(env).toMatchObject({
      SB_AUTH_TOKEN: 'tok-from-file',
      WATCHER_WEBHOOK_SECRET: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
      WATCHER_API_TOKEN: 'api-from-file',
      LOG_LEVEL: 'info',
    });
  });

  it('lets a variable that is set win over its file', () => {
    writeFileSync(join(dir, 'sb-auth-token'), 'tok-from-file');
    expect(withCredentials({ CREDENTIALS_DIRECTORY: dir, SB_AUTH_TOKEN: 'tok-from-env' }).SB_AUTH_TOKEN).toBe(
      'tok-from-env',
    );
  });

  it('skips credentials that are not there, and does nothing without the directory', () => {
    expect(withCredentials({ CREDENTIALS_DIRECTORY: dir })).toEqual({ CREDENTIALS_DIRECTORY: dir });
    const env = { SB_AUTH_TOKEN: 'x' };
    expect(withCredentials(env)).toBe(env);
  });

  it('is a configuration error when a credential exists but cannot be read', () => {
    // A directory where a file is expected cannot be read as one, even by root.
    mkdirSync(join(dir, 'sb-auth-token'));
    expect(() => withCredentials({ CREDENTIALS_DIRECTORY: dir })).toThrow(ConfigError);
    try {
      withCredentials({ CREDENTIALS_DIRECTORY: dir });
    } catch (error) {
      expect((error as ConfigError).problems).toEqual([
        `SB_AUTH_TOKEN: expected a readable credential file ${dir}/sb-auth-token, got EISDIR`,
      ]);
    }
  });

  it('through the CLI: one configuration line and exit 2, while --help and --version need no environment', async () => {
    mkdirSync(join(dir, 'sb-auth-token'));
    const env = () => readEnvironment({ CREDENTIALS_DIRECTORY: dir }, dir);
    let err = '';
    const stderr = { write: (t: string) => (err += t) };
    expect(await runCli(['get', 'exp-1'], env, { stderr })).toBe(2);
    expect(err).toBe(
      `config: SB_AUTH_TOKEN: expected a readable credential file ${dir}/sb-auth-token, got EISDIR\n`,
    );

    err = '';
    const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      for (const args of [['--help'], ['--version'], ['watch', '--help']]) {
        expect(await runCli(args, env, { stderr })).toBe(0);
      }
    } finally {
      out.mockRestore();
    }
    expect(err).toBe('');
  });

  it("reports an unreadable credential with the configuration's other problems, one line each", async () => {
    for (const file of ['sb-auth-token', 'api-token']) mkdirSync(join(dir, file));
    // A profile with a token must not stand in for a credential file that is there but unreadable.
    mkdirSync(join(dir, '.sevenbridges'));
    writeFileSync(join(dir, '.sevenbridges', 'credentials'), '[default]\nauth_token = tok-from-profile\n');
    const env = () =>
      readEnvironment(
        { CREDENTIALS_DIRECTORY: dir, HOME: dir, WATCHER_BATCH_SIZE: '500', WATCHER_HTTP_HOST: '0.0.0.0' },
        dir,
      );
    let err = '';
    const stderr = { write: (t: string) => (err += t) };
    expect(await runCli(['run'], env, { stderr })).toBe(2);
    expect(err.split('\n').filter(Boolean)).toEqual([
      `config: SB_AUTH_TOKEN: expected a readable credential file ${dir}/sb-auth-token, got EISDIR`,
      `config: WATCHER_API_TOKEN: expected a readable credential file ${dir}/api-token, got EISDIR`,
      `config: WATCHER_BATCH_SIZE: expected a whole number from 1 to 100, got "500"`,
    ]);
  });
});
