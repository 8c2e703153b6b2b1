/**
 * Credentials profiles: `~/.sevenbridges/credentials`, read as the official Python client reads it.
 * Parsing, which value wins, every problem line, secrets, and the CLI with only the file.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { withCredentials } from '../src/cli.js';
import { ENDPOINT_PRESETS, type Env, loadConfig } from '../src/config/config.js';
import { credentialsFile, parseCredentials, resolveProfile } from '../src/config/profiles.js';
import { Simulator } from '../src/dev/simulator.js';
import { Redactor } from '../src/shared/redact.js';
import { configProblems } from './helpers/config.js';
import { canMakeUnreadable, makeUnreadable } from './helpers/no-access.js';
import { killAll, spawnCli } from './helpers/spawn.js';

const DEFAULT_TOKEN = 'a1b2c3d4e5f60718293a4b5c6d7e8f90';
const OTHER_TOKEN = 'ffffeeeeddddccccbbbbaaaa99998888';

/** What the Python client's documentation shows, with comments of both kinds. */
const PYTHON_CLIENT_FILE = `# Seven Bridges credentials
[default]
api_endpoint = https://api.sbgenomics.com/v2
auth_token = ${DEFAULT_TOKEN}

; the Cancer Genomics Cloud
[cgc]
api_endpoint = https://cgc-api.sbgenomics.com/v2
auth_token = ${OTHER_TOKEN}
`;

let home: string;

beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), 'sbg-profiles-'));
});

afterEach(() => {
  killAll();
  chmodSync(home, 0o700);
  rmSync(home, { recursive: true, force: true });
});

function writeCredentials(text: string, dir = home): string {
  mkdirSync(join(dir, '.sevenbridges'), { recursive: true });
  const file = credentialsFile(dir);
  writeFileSync(file, text);
  return file;
}

/** loadConfig as `run`, `watch` and `get` call it, with `home` as the home directory. */
function load(env: Env) {
  return loadConfig(env, { requireToken: true, listens: false, profiles: { home } });
}

function problemsOf(env: Env): string[] {
  return configProblems(() => load(env), JSON.stringify(env));
}

describe('parseCredentials', () => {
  it('reads the sections of the Python client file, comments skipped', () => {
    const sections = parseCredentials(PYTHON_CLIENT_FILE);
    expect([...sections.keys()]).toEqual(['default', 'cgc']);
    expect(sections.get('default')).toEqual({
      api_endpoint: 'https://api.sbgenomics.com/v2',
      auth_token: DEFAULT_TOKEN,
    });
    expect(sections.get('cgc')?.auth_token).toBe(OTHER_TOKEN);
  });

  it('takes spaces, tabs, CRLF, a byte-order mark, key: value and keys in any case', () => {
    const text =
      '\uFEFF[default]\r\n  api_endpoint=cgc\r\n\tAUTH_TOKEN   =   tok-1  \r\n\r\n' +
      '[colons]\napi_endpoint: https://eu-api.sbgenomics.com/v2\nauth_token: tok-2\n' +
      '   # an indented comment\n; another\n[empty]\n';
    const sections = parseCredentials(text);
    expect(sections.get('default')).toEqual({ api_endpoint: 'cgc', auth_token: 'tok-1' });
    expect(sections.get('colons')).toEqual({
      api_endpoint: 'https://eu-api.sbgenomics.com/v2',
      auth_token: 'tok-2',
    });
    expect(sections.get('empty')).toEqual({});
  });

  it('keeps dotted section names whole', () => {
    const sections = parseCredentials('[cgc.prod]\nauth_token = t1\n[cgc.prod.eu]\nauth_token = t2\n');
    expect([...sections.keys()].sort()).toEqual(['cgc.prod', 'cgc.prod.eu']);
    expect(sections.get('cgc.prod.eu')?.auth_token).toBe('t2');
  });

  it('gives [DEFAULT] keys to every section, as configparser does, and is no profile itself', () => {
    const sections = parseCredentials(
      '[DEFAULT]\napi_endpoint = cgc\n[a]\nauth_token = t1\n[b]\napi_endpoint = cavatica\nauth_token = t2\n',
    );
    expect([...sections.keys()]).toEqual(['a', 'b']);
    expect(sections.get('a')).toEqual({ api_endpoint: 'cgc', auth_token: 't1' });
    expect(sections.get('b')).toEqual({ api_endpoint: 'cavatica', auth_token: 't2' });
  });

  it('takes a section header as configparser does: indented, or followed by a comment', () => {
    const sections = parseCredentials(
      '  [default]\napi_endpoint = sbg-us\nauth_token = aaaa\n\n[cgc] # production\napi_endpoint = cgc\nauth_token = cccc\n',
    );
    expect([...sections.keys()].sort()).toEqual(['cgc', 'default']);
    expect(sections.get('default')).toEqual({ api_endpoint: 'sbg-us', auth_token: 'aaaa' });
    expect(sections.get('cgc')).toEqual({ api_endpoint: 'cgc', auth_token: 'cccc' });
  });

  it('keeps a line indented under a key in that key, even one starting with "[", as configparser does', () => {
    const sections = parseCredentials(
      '[default]\napi_endpoint = sbg-us\nadvance_access =\n    [beta]\nauth_token = abcdef0123456789\n',
    );
    expect([...sections.keys()]).toEqual(['default']);
    expect(sections.get('default')?.auth_token).toBe('abcdef0123456789');
  });

  it("never gives a section's keys to the section before it, whatever its header holds", () => {
    // configparser takes a header up to its last "]": the name holds the "]", ";" or "#" as written.
    const text =
      `[default]\napi_endpoint = sbg-us\nauth_token = ${DEFAULT_TOKEN}\n\n` +
      `[cgc] ; from the [Developer] tab\napi_endpoint = cgc\nauth_token = ${OTHER_TOKEN}\n` +
      '[team#1]\nauth_token = t1\n[a;b]\nauth_token = t2\n';
    const sections = parseCredentials(text);
    expect(sections.get('default')).toEqual({ api_endpoint: 'sbg-us', auth_token: DEFAULT_TOKEN });
    expect([...sections.keys()]).toEqual(['default', 'cgc] ; from the [Developer', 'team#1', 'a;b']);
    expect(sections.get('team#1')).toEqual({ auth_token: 't1' });
    expect(sections.get('a;b')).toEqual({ auth_token: 't2' });
    expect(sections.has('team')).toBe(false);
  });

  it('keeps an empty section that has a dotted child; with [DEFAULT] it is a whole profile', () => {
    const sections = parseCredentials(
      '[DEFAULT]\napi_endpoint = cgc\nauth_token = t0\n[cgc]\n[cgc.prod]\nauth_token = t1\n',
    );
    expect(sections.get('cgc')).toEqual({ api_endpoint: 'cgc', auth_token: 't0' });
    expect(sections.get('cgc.prod')).toEqual({ api_endpoint: 'cgc', auth_token: 't1' });
  });

  it('keeps a ";" or "#" inside a value, as configparser does: the token sent is the one written', () => {
    const sections = parseCredentials(
      '[default]\nauth_token = tok;part#2\\x\napi_endpoint = cgc   # a preset name\n[b]\nauth_token: ab#cd ; note\n',
    );
    expect(sections.get('default')).toEqual({ auth_token: 'tok;part#2\\x', api_endpoint: 'cgc' });
    expect(sections.get('b')).toEqual({ auth_token: 'ab#cd' });
  });

  it('reads a key without a value as empty', () => {
    expect(parseCredentials('[a]\nauth_token =\napi_endpoint\n').get('a')).toEqual({
      auth_token: '',
      api_endpoint: '',
    });
  });
});

describe('which value wins', () => {
  const CGC = ENDPOINT_PRESETS.cgc as string;
  const US = 'https://api.sbgenomics.com/v2';

  it('with only the file, [default] gives both', () => {
    const file = writeCredentials(PYTHON_CLIENT_FILE);
    const c = load({});
    expect(c.endpoint).toBe(US);
    expect(c.token).toBe(DEFAULT_TOKEN);
    expect(c.profile).toEqual({ name: 'default', file });
  });

  it('[default] keeps its own token when the next section\'s header has a comment holding a "]"', () => {
    writeCredentials(
      `[default]\napi_endpoint = https://api.sbgenomics.com/v2\nauth_token = ${DEFAULT_TOKEN}\n\n` +
        `[cgc]   # token from the [Developer] tab\napi_endpoint = cgc\nauth_token = ${OTHER_TOKEN}\n`,
    );
    const c = load({});
    expect(c.endpoint).toBe(US);
    expect(c.token).toBe(DEFAULT_TOKEN);
  });

  it('SB_PROFILE picks another section', () => {
    writeCredentials(PYTHON_CLIENT_FILE);
    const c = load({ SB_PROFILE: 'cgc' });
    expect(c.endpoint).toBe(CGC);
    expect(c.token).toBe(OTHER_TOKEN);
    expect(c.profile?.name).toBe('cgc');
  });

  it.each<[string, Env, { endpoint: string; token: string | undefined; profile: string | undefined }]>([
    [
      'SB_API_ENDPOINT wins over the profile, alone',
      { SB_PROFILE: 'cgc', SB_API_ENDPOINT: 'sbg-eu' },
      {
        endpoint: ENDPOINT_PRESETS['sbg-eu'] as string,
        token: OTHER_TOKEN,
        profile: 'cgc',
      },
    ],
    [
      'SB_AUTH_TOKEN wins over the profile, alone',
      { SB_PROFILE: 'cgc', SB_AUTH_TOKEN: 'from-env' },
      {
        endpoint: CGC,
        token: 'from-env',
        profile: 'cgc',
      },
    ],
    [
      'both variables win',
      { SB_PROFILE: 'cgc', SB_API_ENDPOINT: 'bdc', SB_AUTH_TOKEN: 'from-env' },
      {
        endpoint: ENDPOINT_PRESETS.bdc as string,
        token: 'from-env',
        profile: undefined,
      },
    ],
    [
      'without SB_PROFILE, SB_AUTH_TOKEN keeps [default] away',
      { SB_AUTH_TOKEN: 'from-env' },
      {
        endpoint: US,
        token: 'from-env',
        profile: undefined,
      },
    ],
    [
      'without SB_PROFILE, SB_API_ENDPOINT and SB_AUTH_TOKEN keep [default] away',
      {
        SB_API_ENDPOINT: 'cgc',
        SB_AUTH_TOKEN: 'from-env',
      },
      { endpoint: CGC, token: 'from-env', profile: undefined },
    ],
    [
      'blank variables count as unset',
      { SB_PROFILE: ' ', SB_API_ENDPOINT: '', SB_AUTH_TOKEN: '  ' },
      {
        endpoint: US,
        token: DEFAULT_TOKEN,
        profile: 'default',
      },
    ],
    [
      'SB_PROFILE=default is [default]',
      { SB_PROFILE: 'default' },
      {
        endpoint: US,
        token: DEFAULT_TOKEN,
        profile: 'default',
      },
    ],
  ])('%s', (_, env, expected) => {
    writeCredentials(PYTHON_CLIENT_FILE);
    const c = load(env);
    expect({ endpoint: c.endpoint, token: c.token, profile: c.profile?.name }).toEqual(expected);
  });

  it('without SB_PROFILE, SB_API_ENDPOINT alone keeps [default] away: the token is missing', () => {
    writeCredentials(PYTHON_CLIENT_FILE);
    const problems = problemsOf({ SB_API_ENDPOINT: 'cgc' });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^SB_AUTH_TOKEN: expected the platform token/);
  });

  it('a token from $CREDENTIALS_DIRECTORY wins over the profile', () => {
    writeCredentials(PYTHON_CLIENT_FILE);
    const creds = join(home, 'creds');
    mkdirSync(creds);
    writeFileSync(join(creds, 'sb-auth-token'), 'from-systemd\n');
    const c = load(withCredentials({ CREDENTIALS_DIRECTORY: creds, SB_PROFILE: 'cgc' }));
    expect(c.token).toBe('from-systemd');
    expect(c.endpoint).toBe(CGC);
  });

  it('a profile may name a preset, as SB_API_ENDPOINT may, and a URL with a trailing slash', () => {
    writeCredentials(
      '[a]\napi_endpoint = CAVATICA\nauth_token = t\n[b]\napi_endpoint = http://127.0.0.1:9/v2/\nauth_token = t\n',
    );
    expect(load({ SB_PROFILE: 'a' }).endpoint).toBe(ENDPOINT_PRESETS.cavatica);
    expect(load({ SB_PROFILE: 'b' }).endpoint).toBe('http://127.0.0.1:9/v2');
  });

  it('$HOME of the environment is where the file is looked for', () => {
    writeCredentials(PYTHON_CLIENT_FILE);
    const c = loadConfig({ HOME: home }, { requireToken: true, profiles: true });
    expect(c.token).toBe(DEFAULT_TOKEN);
  });

  it('is not read unless asked for (simulate, events, redeliver; library use)', () => {
    writeCredentials(PYTHON_CLIENT_FILE);
    const c = loadConfig({ HOME: home, SB_PROFILE: 'nope' });
    expect(c.token).toBeUndefined();
    expect(c.profile).toBeUndefined();
  });

  it('no file and no variables: the token is missing, and the line says where a profile would be', () => {
    const problems = problemsOf({});
    expect(problems).toEqual([
      `SB_AUTH_TOKEN: expected the platform token (from the Developer tab of the platform) or the auth_token of a profile in ${credentialsFile(home)} (SB_PROFILE; [default] when unset), got nothing`,
    ]);
  });

  it('a file without [default] and no SB_PROFILE is not an error of its own', () => {
    writeCredentials('[cgc]\napi_endpoint = cgc\nauth_token = t\n');
    expect(problemsOf({})).toHaveLength(1);
    expect(problemsOf({})[0]).toMatch(/^SB_AUTH_TOKEN: /);
  });
});

describe('problems', () => {
  it('SB_PROFILE names a file that does not exist', () => {
    expect(problemsOf({ SB_PROFILE: 'cgc' })).toEqual([
      `SB_PROFILE: expected a credentials file ${credentialsFile(home)} with a [cgc] section, got no such file`,
    ]);
  });

  it('SB_PROFILE names a section that does not exist: the file, the section, and those it has', () => {
    const file = writeCredentials(PYTHON_CLIENT_FILE);
    expect(problemsOf({ SB_PROFILE: 'cavatica' })).toEqual([
      `SB_PROFILE: expected a section of ${file} (it has [default], [cgc]), got "cavatica", which it does not have`,
    ]);
    writeCredentials('# nothing yet\n');
    expect(problemsOf({ SB_PROFILE: 'x' })).toEqual([
      `SB_PROFILE: expected a section of ${file} (it has none), got "x", which it does not have`,
    ]);
  });

  it('even when both variables are set', () => {
    writeCredentials(PYTHON_CLIENT_FILE);
    expect(problemsOf({ SB_PROFILE: 'nope', SB_API_ENDPOINT: 'cgc', SB_AUTH_TOKEN: 't' })).toHaveLength(1);
  });

  it('a section without auth_token or api_endpoint, when each is needed', () => {
    const file = writeCredentials('[a]\napi_endpoint = cgc\n[b]\nauth_token = tok\n[c]\n# nothing\n');
    expect(problemsOf({ SB_PROFILE: 'a' })).toEqual([
      `SB_PROFILE: expected auth_token in the [a] section of ${file} (or SB_AUTH_TOKEN), got nothing`,
    ]);
    expect(problemsOf({ SB_PROFILE: 'b' })).toEqual([
      `SB_PROFILE: expected api_endpoint in the [b] section of ${file} (or SB_API_ENDPOINT), got nothing`,
    ]);
    expect(problemsOf({ SB_PROFILE: 'c' })).toHaveLength(2);
    // Given as variables, they are not needed from the profile.
    expect(load({ SB_PROFILE: 'a', SB_AUTH_TOKEN: 'x' }).endpoint).toBe(ENDPOINT_PRESETS.cgc);
    expect(load({ SB_PROFILE: 'b', SB_API_ENDPOINT: 'cgc' }).token).toBe('tok');
  });

  it('an implicit [default] without api_endpoint', () => {
    const file = writeCredentials('[default]\nauth_token = tok\n');
    expect(problemsOf({})).toEqual([
      `SB_PROFILE: expected api_endpoint in the [default] section of ${file} (or SB_API_ENDPOINT), got nothing`,
    ]);
  });

  it('a directory in place of the file, named or not', () => {
    const file = credentialsFile(home);
    mkdirSync(file, { recursive: true });
    expect(problemsOf({ SB_PROFILE: 'cgc' })).toEqual([
      `SB_PROFILE: expected a readable credentials file ${file}, got a directory`,
    ]);
    expect(problemsOf({})).toEqual([
      `SB_PROFILE: expected a readable credentials file ${file} (its [default] section is used when SB_PROFILE, SB_API_ENDPOINT and SB_AUTH_TOKEN are unset), got a directory`,
    ]);
  });

  it.skipIf(!canMakeUnreadable)('an unreadable file', () => {
    const file = writeCredentials(PYTHON_CLIENT_FILE);
    makeUnreadable(file);
    expect(problemsOf({ SB_PROFILE: 'cgc' })).toEqual([
      `SB_PROFILE: expected a readable credentials file ${file}, got EACCES`,
    ]);
  });

  it('a file where .sevenbridges should be a directory: no such file', () => {
    writeFileSync(join(home, '.sevenbridges'), 'not a directory');
    expect(
      resolveProfile({ name: 'cgc', home, endpointGiven: false, tokenGiven: false, tokenRequired: true })
        .problems,
    ).toEqual([
      `SB_PROFILE: expected a credentials file ${credentialsFile(home)} with a [cgc] section, got no such file`,
    ]);
  });

  it('a profile endpoint that is no URL or preset: named by key, section and file', () => {
    const file = writeCredentials('[a]\napi_endpoint = ftp://u:pw-in-url@files.example/v2\nauth_token = t\n');
    const problems = problemsOf({ SB_PROFILE: 'a' });
    expect(problems).toEqual([
      `SB_PROFILE: expected api_endpoint in the [a] section of ${file} to be an http(s) URL or one of ${Object.keys(ENDPOINT_PRESETS).join(', ')}, got "ftp://files.example/v2" (credentials, query and fragment hidden)`,
    ]);
    writeCredentials('[a]\napi_endpoint = https://x.example/v2?k=v\nauth_token = t\n');
    expect(problemsOf({ SB_PROFILE: 'a' })[0]).toContain(
      'to be a base URL without a query string or fragment',
    );
  });

  it('a profile endpoint that is no URL, with what may be credentials in it, is not shown', () => {
    writeCredentials('[a]\napi_endpoint = alice:S3cretPw@api.example.org/v2\nauth_token = t\n');
    const [line] = problemsOf({ SB_PROFILE: 'a' });
    expect(line).toMatch(/^SB_PROFILE: .*not a URL \(hidden: it may hold credentials\)$/);
    expect(line).not.toContain('S3cretPw');
  });

  it('a profile token with spaces is named, never shown', () => {
    const file = writeCredentials('[a]\napi_endpoint = cgc\nauth_token = tok with PRIVATE spaces\n');
    const problems = problemsOf({ SB_PROFILE: 'a' });
    expect(problems).toEqual([
      `SB_PROFILE: expected auth_token in the [a] section of ${file} to be a token of visible ASCII characters, without spaces, got a value of 23 characters (hidden)`,
    ]);
    expect(problems.join('\n')).not.toContain('PRIVATE');
  });

  it('problems of the profile and of other variables come together', () => {
    writeCredentials(PYTHON_CLIENT_FILE);
    const problems = problemsOf({ SB_PROFILE: 'nope', WATCHER_BATCH_SIZE: '0' });
    expect(problems).toHaveLength(2);
    expect(problems.map((p) => p.split(':')[0]).sort()).toEqual(['SB_PROFILE', 'WATCHER_BATCH_SIZE']);
  });
});

describe('secrets', () => {
  it("the profile's token is a secret of the configuration, scrubbed from every line", () => {
    writeCredentials(PYTHON_CLIENT_FILE);
    const c = load({ SB_PROFILE: 'cgc' });
    expect(c.secrets).toContain(OTHER_TOKEN);
    const redactor = new Redactor(c.secrets);
    expect(redactor.scrub(`401: Unauthorized token ${OTHER_TOKEN}`)).toBe(
      '401: Unauthorized token [redacted]',
    );
  });

  it('credentials in a profile endpoint are secrets too', () => {
    writeCredentials(
      '[a]\napi_endpoint = https://someone:Endpoint-Pw-1@x.example/v2\nauth_token = tok123456\n',
    );
    const c = load({ SB_PROFILE: 'a' });
    expect(c.secrets).toEqual(expect.arrayContaining(['tok123456', 'Endpoint-Pw-1']));
  });
});

describe('the CLI with only ~/.sevenbridges/credentials', () => {
  let sim: Simulator;
  let simUrl: string;

  beforeEach(async () => {
    sim = new Simulator({
      token: OTHER_TOKEN,
      seed: 5,
      failRate: 0,
      timing: { pendingMs: [50, 100], runningMs: [50, 100] },
    });
    simUrl = await sim.start();
  });

  afterEach(async () => {
    await sim.close();
  });

  /** No platform variable at all: only HOME, pointing at a home with the file. */
  const onlyHome = () => ({ HOME: home, HTTP_PROXY: '', http_proxy: '', NO_PROXY: '', no_proxy: '' });

  it('get ID works from [default]', async () => {
    writeCredentials(`[default]\napi_endpoint = ${simUrl}\nauth_token = ${OTHER_TOKEN}\n`);
    const id = sim.createExport();
    const get = spawnCli(['get', id, '--json'], onlyHome(), { cwd: home });
    const { code } = await get.exited;
    expect(code, get.stderr()).toBe(0);
    expect(JSON.parse(get.stdout())).toMatchObject({ id });
    expect(get.stdout() + get.stderr()).not.toContain(OTHER_TOKEN);
  });

  it('watch ID works from [default], with no variables at all', async () => {
    writeCredentials(`[default]\napi_endpoint = ${simUrl}\nauth_token = ${OTHER_TOKEN}\n`);
    const id = sim.createExport({ outcome: 'COMPLETED' });
    const watch = spawnCli(['watch', id, '--json'], onlyHome(), { cwd: home });
    const { code } = await watch.exited;
    expect(code, watch.stderr()).toBe(0);
    expect(JSON.parse(watch.stdout())).toMatchObject({ id, state: 'COMPLETED' });
  });

  it('--profile picks another section (and wins over SB_PROFILE)', async () => {
    // [default] holds a token the simulator refuses; [other] the right one.
    writeCredentials(
      `[default]\napi_endpoint = ${simUrl}\nauth_token = refused-token-0000\n\n[other]\napi_endpoint = ${simUrl}\nauth_token = ${OTHER_TOKEN}\n`,
    );
    const id = sim.createExport();
    const refused = spawnCli(['get', id], onlyHome(), { cwd: home });
    expect((await refused.exited).code).toBe(1);
    expect(refused.stderr()).toContain('the platform refused the token');

    const get = spawnCli(
      ['get', id, '--profile', 'other', '--json'],
      { ...onlyHome(), SB_PROFILE: 'default' },
      { cwd: home },
    );
    const { code } = await get.exited;
    expect(code, get.stderr()).toBe(0);
    expect(JSON.parse(get.stdout())).toMatchObject({ id });
  });

  it('a missing profile exits 2, naming the file and the section', async () => {
    const file = writeCredentials(`[default]\napi_endpoint = ${simUrl}\nauth_token = ${OTHER_TOKEN}\n`);
    const get = spawnCli(['get', 'x', '--profile', 'missing'], onlyHome(), { cwd: home });
    const { code } = await get.exited;
    expect(code).toBe(2);
    expect(get.stderr()).toBe(
      `config: SB_PROFILE: expected a section of ${file} (it has [default]), got "missing", which it does not have\n`,
    );
    expect(sum(sim.stats().requests)).toBe(0);
  });

  it('SB_PROFILE from .env', async () => {
    writeCredentials(`[other]\napi_endpoint = ${simUrl}\nauth_token = ${OTHER_TOKEN}\n`);
    writeFileSync(join(home, '.env'), 'SB_PROFILE=other\n');
    const id = sim.createExport();
    const get = spawnCli(['get', id, '--json'], onlyHome(), { cwd: home });
    expect((await get.exited).code, get.stderr()).toBe(0);
  });

  it('events and redeliver do not read it', async () => {
    mkdirSync(credentialsFile(home), { recursive: true });
    const events = spawnCli(['events', '--api-url', 'http://127.0.0.1:1', '--timeout', '1s'], onlyHome(), {
      cwd: home,
    });
    const { code } = await events.exited;
    expect(code).toBe(1);
    expect(events.stderr()).not.toContain('SB_PROFILE');
  });

  it('run --help lists --profile', async () => {
    const help = spawnCli(['run', '--help'], onlyHome(), { cwd: home });
    expect((await help.exited).code).toBe(0);
    expect(help.stdout()).toMatch(/--profile NAME\s+SB_PROFILE: a section of ~\/\.sevenbridges\/credentials/);
  });
});

function sum(counts: Record<string, number>): number {
  return Object.values(counts).reduce((a, b) => a + b, 0);
}
