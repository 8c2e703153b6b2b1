/**
 * More edges of what the configuration reads: credentials-file continuation lines as configparser
 * (not strict) reads them, passwords typed unencoded with '@' and '/' (never shown, not even in
 * part), control characters in every URL variable, --timeout bounds before rounding, and leap
 * seconds only where RFC 3339 allows them.
 */
import { describe, expect, it } from 'vitest';
import { parseTimeout, runCli } from '../src/cli.js';
import { type Env, loadConfig } from '../src/config/config.js';
import { parseCredentials } from '../src/config/profiles.js';
import { parseRfc3339 } from '../src/http/control-api.js';
import { ConfigError } from '../src/shared/errors.js';
import { shownUrl } from '../src/shared/redact.js';

function problems(env: Env): string[] {
  try {
    loadConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return [...(error as ConfigError).problems];
  }
  return [];
}

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

describe('a password holding "@" and then "/" (or "\\", "?", "#"), typed unencoded', () => {
  // The parser ends the userinfo at the first "@" before the first "/": the rest of the password
  // is read as the host and the path, and shown, in a line saying credentials are hidden.
  const PASSWORD_TAIL = 'Secret-tail-pw';
  it.each([
    ['SB_API_ENDPOINT', `ftp://user:Hunter2@${PASSWORD_TAIL}/x@api.example/v2`],
    ['HTTPS_PROXY', `socks5://user:Hunter2@${PASSWORD_TAIL}/x@proxy.example:1080`],
    ['SB_API_ENDPOINT', `htps://user:Hunter2@${PASSWORD_TAIL}?x@api.example/v2`],
    ['WATCHER_DATABASE_URL', `postgress://user:Hunter2@${PASSWORD_TAIL}/x@db.example/watcher`],
    ['WATCHER_DATABASE_URL', `http://user:Hunter2@${PASSWORD_TAIL}\\x@db.example/watcher`],
  ])('%s=%j', (name, value) => {
    const lines = problems({ [name]: value });
    expect(lines.length).toBeGreaterThan(0);
    for (const line of lines) expect(line.toLowerCase()).not.toContain(PASSWORD_TAIL.toLowerCase());
  });

  it('through the CLI too (its report scrubs only the parsed password, "Hunter2")', async () => {
    let err = '';
    const code = await runCli(
      ['get', 'x1'],
      {
        SB_AUTH_TOKEN: 'tok-123456',
        HOME: '/nonexistent',
        SB_API_ENDPOINT: `ftp://user:Hunter2@${PASSWORD_TAIL}/x@api.example/v2`,
      },
      { stderr: { write: (t: string) => (err += t) } },
    );
    expect(code).toBe(2);
    expect(err.toLowerCase()).not.toContain(PASSWORD_TAIL.toLowerCase());
  });

  it('shownUrl itself', () => {
    expect(shownUrl(`https://user:Hunter2@${PASSWORD_TAIL}/x@api.example/v2`).toLowerCase()).not.toContain(
      PASSWORD_TAIL.toLowerCase(),
    );
  });
});

describe('a tab or newline inside a URL (affea39: "now refused")', () => {
  // The WHATWG parser drops them: the proxy or database used is not the one written.
  it.each([
    ['HTTPS_PROXY', 'http://proxy.exa\tmple:3128'],
    ['HTTP_PROXY', 'http://proxy.example:31\n28'],
    ['WATCHER_DATABASE_URL', 'postgres://u:pw@db.exa\tmple/watcher'],
  ])('%s=%j is refused', (name, value) => {
    expect(problems({ [name]: value })).toHaveLength(1);
  });
});

describe('--timeout bounds hold for the value written (as affea39 made them for variables)', () => {
  it('0.5 (below 1ms) is refused, not taken as 1ms', () => {
    expect(() => parseTimeout('0.5', undefined)).toThrow(/--timeout/);
  });
});

describe('a leap second only where RFC 3339 section 5.7 allows one', () => {
  // RFC 3339 5.7: time-second "may have the value "60" at the end of months in which a leap second
  // occurs". 23:59:60 on November 22nd is no RFC 3339 time; the parser reads it as Nov 23, 00:00:00.
  it('23:59:60 in mid-month is refused; at a month end it is read', () => {
    expect(parseRfc3339('2026-11-22T23:59:60Z')).toBeUndefined();
    expect(parseRfc3339('2026-11-22T18:59:60-05:00')).toBeUndefined();
    expect(parseRfc3339('2016-12-31T23:59:60Z')).toBe(Date.UTC(2017, 0, 1));
    expect(parseRfc3339('2015-06-30T23:59:60Z')).toBe(Date.UTC(2015, 6, 1));
    expect(parseRfc3339('2017-01-01T00:59:60+01:00')).toBe(Date.UTC(2017, 0, 1));
  });
});
