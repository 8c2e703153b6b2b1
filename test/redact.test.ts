import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../src/shared/log.js';
import {
  MIN_SECRET_LENGTH,
  REDACTED,
  Redactor,
  safeUrl,
  URL_PATTERN,
  urlSecrets,
} from '../src/shared/redact.js';

const ROOT = join(import.meta.dirname, '..');
const TSX = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;

describe('safeUrl', () => {
  it('drops credentials, query and fragment from every URL in a text', () => {
    expect(safeUrl('https://u:p@api.example.org:8443/v2/x?token=abc#frag')).toBe(
      'https://api.example.org:8443/v2/x',
    );
    expect(safeUrl('see http://a.example/x?y=1 and https://b.example/ok, then stop')).toBe(
      'see http://a.example/x and https://b.example/ok, then stop',
    );
  });

  it('stops at JSON quotes and escapes, so a log line stays valid JSON', () => {
    const line = JSON.stringify({ msg: 'x', url: 'https://u:p@h.example/p?q="1"' });
    const cleaned = safeUrl(line);
    expect(() => JSON.parse(cleaned)).not.toThrow();
    expect(JSON.parse(cleaned).url).toBe('https://h.example/p');
  });

  it('drops a password typed with a raw ? or # whole, never reading it as the host', () => {
    expect(safeUrl('https://admin:S3cretPassw0rd#x@api.example.com/v2')).toBe('https://api.example.com/v2');
    expect(safeUrl('got "https://hook:W3bh00kPass?x@hooks.example.com:99999/" here')).toBe(
      'got "https://hooks.example.com:99999/" here',
    );
    expect(safeUrl('http://proxyuser:Pr0xyPass#1@proxy.example:3128')).toBe('http://proxy.example:3128');
    // A path's @ is not userinfo.
    expect(safeUrl('https://h.example/users/@me?x=1')).toBe('https://h.example/users/@me');
    // The userinfo runs to the last @ before the path.
    expect(safeUrl('https://admin:pa@ss@host.example/v2')).toBe('https://host.example/v2');
  });

  it('keeps the punctuation of prose after a host', () => {
    expect(safeUrl('at http://127.0.0.1:33337; check it (https://h.example), then')).toBe(
      'at http://127.0.0.1:33337; check it (https://h.example), then',
    );
  });

  it('never keeps a query, even one with an @ right after the host', () => {
    expect(safeUrl('https://api.example.com?user=me@corp.example&token=S3cretTok')).toBe(
      'https://corp.example',
    );
    expect(safeUrl('https://hooks.example.com#x@y&sig=SECRET123')).toBe('https://y');
    expect(safeUrl('got "https://h?a=b@c&token=X/p?q=1" here')).toBe('got "https://c/p" here');
    expect(safeUrl('http://[::1]:8080/x?t=1 and https://bücher.example/a')).toBe(
      'http://[::1]:8080/x and https://bücher.example/a',
    );
  });

  it('leaves text without URLs alone', () => {
    expect(safeUrl('no url here: a@b, c?d')).toBe('no url here: a@b, c?d');
  });
});

describe('urlSecrets', () => {
  it('lists the password, the user and every query value, encoded and decoded', () => {
    expect(urlSecrets('https://me:p%40ss@h.example/?a=one+two&b=x')).toEqual(
      expect.arrayContaining(['p%40ss', 'p@ss', 'me', 'one two', 'one%20two', 'x']),
    );
    expect(urlSecrets('not a url')).toEqual([]);
  });
});

describe('Redactor', () => {
  it('replaces every known secret, longest first, also JSON-escaped', () => {
    const r = new Redactor(['tok_abcdef', 'tok_abcdef_longer', 'quo"te\\slash', undefined, 'ab']);
    expect(r.scrub('a tok_abcdef_longer b tok_abcdef c')).toBe(`a ${REDACTED} b ${REDACTED} c`);
    const line = JSON.stringify({ msg: 'said quo"te\\slash' });
    expect(r.scrub(line)).toBe(JSON.stringify({ msg: `said ${REDACTED}` }));
    // Values too short to scrub without wrecking every line are not scrubbed.
    expect(MIN_SECRET_LENGTH).toBeGreaterThan(2);
    expect(r.scrub('ab')).toBe('ab');
  });

  it('is what the logger runs every line through, whatever field or message carries the secret', () => {
    const lines: string[] = [];
    const log = createLogger({
      level: 'info',
      destination: new Writable({
        write(chunk, _e, done) {
          lines.push(String(chunk));
          done();
        },
      }),
      redactor: new Redactor(['platform-token-123']),
    });
    log.child({ endpoint: 'https://u:pw@h.example/v2?k=v' }).error(
      {
        err: new Error('platform said: bad token platform-token-123'),
        body: { echo: 'platform-token-123' },
      },
      'refused platform-token-123',
    );
    const text = lines.join('');
    expect(text).not.toContain('platform-token-123');
    expect(text).not.toContain('u:pw@');
    expect(text).not.toContain('k=v');
    const parsed = JSON.parse(text);
    expect(parsed.msg).toBe(`refused ${REDACTED}`);
    expect(parsed.err.message).toBe(`platform said: bad token ${REDACTED}`);
    expect(parsed.endpoint).toBe('https://h.example/v2');
  });

  it('finds the same URLs as a plain global replace with its pattern, on 20,000 generated texts', () => {
    // The plain replace is the definition (and quadratic on some texts); safeUrl only chooses
    // where to try. Texts are drawn from the characters that matter at a URL's edges.
    const oracle = (text: string) =>
      text.replace(
        URL_PATTERN,
        (_all, scheme: string, userinfo: string | undefined, host: string, rest: string, path: string) =>
          `${scheme}${host}${userinfo === undefined ? rest : ''}${path}`,
      );
    const alphabet = [
      'a',
      'Z',
      '1',
      '.',
      '+',
      '-',
      '_',
      ':',
      '/',
      '//',
      '://',
      '@',
      '?',
      '#',
      ' ',
      '"',
      '\\',
      'é',
      'h://',
    ];
    let seed = 7;
    const next = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
      return seed;
    };
    for (let n = 0; n < 20_000; n++) {
      let text = '';
      const length = next() % 24;
      for (let i = 0; i < length; i++) text += alphabet[next() % alphabet.length];
      expect(safeUrl(text), text).toBe(oracle(text));
    }
  });

  it('scrubs a line of 2 MB of "a.a.a..." runs, with the same result, and ends', () => {
    // In a child process that is killed if it runs past 60 s: linear, this takes milliseconds;
    // the quadratic search it replaced took 10 s for a tenth of the text and would not end for
    // about a quarter of an hour, holding this test's own event loop (no timeout could fire).
    const script = `
      import { Redactor } from ${JSON.stringify(pathToFileURL(join(ROOT, 'src/shared/redact.ts')).href)};
      const text = 'a.'.repeat(1_000_000) + ' https://u:p@h.example/v2?token=x ' + 'b-'.repeat(10) + 'c://h?q';
      const out = new Redactor(['platform-token-123']).scrub(text);
      const expected = 'a.'.repeat(1_000_000) + ' https://h.example/v2 ' + 'b-'.repeat(10) + 'c://h';
      process.stdout.write(out === expected ? 'as expected' : 'different: ' + out.slice(-200));
    `;
    const child = spawnSync(process.execPath, ['--import', TSX, '--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(child.signal).toBeNull();
    expect(child.stdout).toBe('as expected');
  }, 70_000);
});
