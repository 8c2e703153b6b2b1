/**
 * `config/.env.example`, copied to `.env` as its header says, with only the platform token
 * filled in. Every variable it assigns must hold the default, so that copying it changes nothing
 * but what the user fills in. LOG_LEVEL must stay unassigned: `watch` and `get` print their
 * results and log at error unless LOG_LEVEL is set, and they read the same `.env` when started
 * in the daemon's directory; an assigned `LOG_LEVEL=info` (which is run's default anyway) made
 * every `watch` there print JSON info lines over its progress bar.
 */
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readEnvironment } from '../src/cli.js';
import { loadConfig } from '../src/config/config.js';

const EXAMPLE = join(import.meta.dirname, '..', 'config', '.env.example');

function exampleAsDotenv(): Record<string, string | undefined> {
  const dir = mkdtempSync(join(tmpdir(), 'env-example-'));
  try {
    copyFileSync(EXAMPLE, join(dir, '.env'));
    return readEnvironment({}, dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('config/.env.example copied to .env', () => {
  it('leaves LOG_LEVEL unset, so that watch and get keep logging at error', () => {
    const env = exampleAsDotenv();
    expect(Object.keys(env).length).toBeGreaterThan(5); // the file was read
    expect(env.LOG_LEVEL).toBeUndefined();
  });

  it('changes no setting from its default', () => {
    const token = { SB_AUTH_TOKEN: 'tok_env_example_0123456789' };
    const fromExample = loadConfig({ ...exampleAsDotenv(), ...token }, { requireToken: true });
    const fromNothing = loadConfig(token, { requireToken: true });
    expect(fromExample).toEqual(fromNothing);
  });
});
