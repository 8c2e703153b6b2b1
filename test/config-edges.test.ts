/**
 * Configuration at its edges: URLs whose credentials the parser misreads (never echoed), durations
 * just past their bounds, a working directory removed under the process, control characters in
 * URLs, and continuation lines in the credentials file (read as Python's configparser reads them).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { parseTimeout, readEnvironment, runCli } from '../src/cli.js';
import { type Env, loadConfig } from '../src/config/config.js';
import { parseCredentials } from '../src/config/profiles.js';
import { shownUrl } from '../src/shared/redact.js';
import { configProblems } from './helpers/config.js';

function problems(env: Env): string[] {
  return configProblems(() => loadConfig(env), JSON.stringify(env));
}

async function cli(args: string[], env: Env | (() => Env)): Promise<{ code: number; err: string }> {
  let err = '';
  const code = await runCli(args, env, { stderr: { write: (t: string) => (err += t) } });
  return { code, err };
}

const PASSWORD = 'Hunter2-Secret-pw';
/** The part of a password after an "@" typed in it. */
const TAIL = 'Secret-tail-pw';

/** Neither password, nor the tail of one, in `text` (a host is shown lowercased). */
function expectNoPassword(text: string): void {
  for (const secret of [PASSWORD, TAIL]) expect(text.toLowerCase()).not.toContain(secret.toLowerCase());
}

describe('a URL whose credentials the parser misreads as host or path is echoed whole', () => {
  // A scheme typo plus one slash too many, or a password that starts with digits and holds a "/",
  // "?" or "#": the WHATWG parser reads "user:<digits>" as host:port, or the userinfo as the path.
  // The line says "(credentials, query and fragment hidden)" and shows the password.
  it.each([
    ['SB_API_ENDPOINT', `htps:///user:${PASSWORD}@api.example/v2`],
    ['SB_API_ENDPOINT', `ftp://user:1234/${PASSWORD}@api.example/v2`],
    ['SB_API_ENDPOINT', `https://user:1234/${PASSWORD}@api.example/v2?x=1`],
    ['WATCHER_WEBHOOK_URLS', `https://ok.example/x,htps://user:1234/${PASSWORD}@hooks.example/y`],
    ['HTTPS_PROXY', `socks5:///user:${PASSWORD}@proxy.example:1080`],
    // A password holding "@" then "/", "\\", "?" or "#", typed unencoded: the userinfo ends at its
    // first "@", and the rest of it is read as the host and the path (lowercased).
    ['SB_API_ENDPOINT', `ftp://user:Hunter2@${TAIL}/x@api.example/v2`],
    ['HTTPS_PROXY', `socks5://user:Hunter2@${TAIL}/x@proxy.example:1080`],
    ['SB_API_ENDPOINT', `htps://user:Hunter2@${TAIL}?x@api.example/v2`],
    ['WATCHER_DATABASE_URL', `postgress://user:Hunter2@${TAIL}/x@db.example/watcher`],
    ['WATCHER_DATABASE_URL', `http://user:Hunter2@${TAIL}\\x@db.example/watcher`],
  ])('%s=%j', (name, value) => {
    const lines = problems({ [name]: value });
    expect(lines.length).toBeGreaterThan(0);
    for (const line of lines) expectNoPassword(line);
  });

  it('through the CLI too (its report scrubs only the password the parser found)', async () => {
    for (const endpoint of [
      `htps:///user:${PASSWORD}@api.example/v2`,
      `ftp://user:Hunter2@${TAIL}/x@api.example/v2`,
    ]) {
      const { code, err } = await cli(['get', 'x1'], {
        SB_AUTH_TOKEN: 'tok-123456',
        HOME: '/nonexistent',
        SB_API_ENDPOINT: endpoint,
      });
      expect(code).toBe(2);
      expectNoPassword(err);
    }
    expectNoPassword(shownUrl(`https://user:Hunter2@${TAIL}/x@api.example/v2`));
  });

  it('WATCHER_DATABASE_URL with a mistyped scheme shows the database password', () => {
    for (const value of [
      `postgress:///user:${PASSWORD}@db.example/watcher`,
      `mysql://user:1234/${PASSWORD}@db.example/watcher`,
    ]) {
      const lines = problems({ WATCHER_DATABASE_URL: value });
      expect(lines).toHaveLength(1);
      expect(lines[0]).not.toContain(PASSWORD);
    }
  });
});

describe('a duration past its bound is accepted once rounded to a whole millisecond', () => {
  it.each([
    ['WATCHER_POLL_INTERVAL', '99.5'], // below 100ms
    ['WATCHER_POLL_INTERVAL', '86400000.4'], // above 1d
    ['WATCHER_SHUTDOWN_TIMEOUT', '3600000.4'], // above 1h
    ['WATCHER_RATE_WINDOW', '999.5ms'], // below 1s
  ])('%s=%j', (name, value) => {
    expect(problems({ [name]: value })).toHaveLength(1);
  });

  it('--timeout too: 0.5 (below 1ms) is refused, not taken as 1ms', () => {
    expect(() => parseTimeout('0.5', undefined)).toThrow(/--timeout/);
  });
});

describe('a working directory that no longer exists', () => {
  let dir: string | undefined;
  afterEach(() => {
    vi.restoreAllMocks();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('is one configuration line, not a stack trace', async () => {
    // What node does in a directory removed under it (reproduced with the built CLI:
    // `mkdir d && cd d && rmdir ../d && node dist/cli.js get x` prints a stack and exits 1).
    vi.spyOn(process, 'cwd').mockImplementation(() => {
      throw Object.assign(new Error('ENOENT: no such file or directory, uv_cwd'), {
        code: 'ENOENT',
        errno: -2,
        syscall: 'uv_cwd',
      });
    });
    dir = mkdtempSync(join(tmpdir(), 'hunt4-'));
    const home = dir;
    const { code, err } = await cli(['get', 'x1'], () =>
      readEnvironment({ HOME: home, SB_AUTH_TOKEN: 'tok-123456' }),
    );
    expect(err).not.toMatch(/\n\s+at /);
    expect(err.split('\n').filter(Boolean)).toHaveLength(1);
    expect(err).toMatch(/^config: /);
    expect(code).toBe(2);
  });
});

describe('credentials file: a line indented deeper than the key before it', () => {
  it('continues that key (configparser), it is no key of its own', () => {
    // configparser reads api_endpoint = "https://api.example/v2\nauth_token = tok-from-continuation"
    // and no auth_token (the Python client then has no token); profiles.ts's own comment says so.
    const sections = parseCredentials(
      '[default]\napi_endpoint = https://api.example/v2\n    auth_token = tok-from-continuation\n',
    );
    expect(sections.get('default')?.auth_token).toBeUndefined();
  });
});

describe('a URL with a tab or newline inside', () => {
  // The WHATWG parser drops ASCII tabs and newlines wherever they are, so the check passes and the
  // requests go to another URL than the one configured (https://api.example/v2foo/...).
  it.each([
    ['SB_API_ENDPOINT', 'https://api.example/v2\nfoo'],
    ['SB_API_ENDPOINT', 'https://api.exa\tmple/v2'],
    ['WATCHER_WEBHOOK_URLS', 'https://hooks.example/a\nb'],
    ['HTTPS_PROXY', 'http://proxy.exa\tmple:3128'],
    ['HTTP_PROXY', 'http://proxy.example:31\n28'],
    ['WATCHER_DATABASE_URL', 'postgres://u:pw@db.exa\tmple/watcher'],
  ])('%s=%j is refused', (name, value) => {
    expect(problems({ [name]: value })).toHaveLength(1);
  });
});

describe('credentials file continuation lines (configparser, not strict, as the README models it)', () => {
  // python3 -c 'import configparser as c; p=c.ConfigParser(strict=False); p.read_string(T); print(repr(p["default"]["auth_token"]))'
  it('a key given again replaces the earlier value and its continuation lines', () => {
    // configparser (strict=False): auth_token == "tok-new". Before affea39 this file gave
    // "tok-new" too; now "tok-new\nold-continued", which config.ts refuses as a token.
    const sameSection = parseCredentials(
      '[default]\napi_endpoint = https://api.example/v2\nauth_token = tok-old\n    old-continued\nauth_token = tok-new\n',
    );
    expect(sameSection.get('default')?.auth_token).toBe('tok-new');
    // The same with the section given twice ("its keys together, as configparser reads it when not strict").
    const twice = parseCredentials(
      '[default]\napi_endpoint = https://api.example/v2\nauth_token = tok-old\n    old-continued\n[default]\nauth_token = tok-new\n',
    );
    expect(twice.get('default')?.auth_token).toBe('tok-new');
  });

  it('a blank line inside a continued value is kept (empty_lines_in_values, the default)', () => {
    // configparser: "tok\n\nmore" (and "tok" when nothing continues after the blank line).
    const s = parseCredentials('[default]\nauth_token = tok\n\n    more\napi_endpoint = https://a.example\n');
    expect(s.get('default')?.auth_token).toBe('tok\n\nmore');
    expect(s.get('default')?.api_endpoint).toBe('https://a.example');
  });
});
