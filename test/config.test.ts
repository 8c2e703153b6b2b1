import { describe, expect, it } from 'vitest';
import {
  DEFAULTS,
  ENDPOINT_PRESETS,
  type Env,
  formatDuration,
  isLoopbackHost,
  loadConfig,
  parseDuration,
  unknownVariables,
} from '../src/config/config.js';
import { ConfigError } from '../src/shared/errors.js';
import { describeDatabaseUrl } from '../src/store/rows.js';

/** Runs loadConfig expecting a ConfigError; returns it. */
function configError(env: Env, options: { requireToken?: boolean } = {}): ConfigError {
  try {
    loadConfig(env, options);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`expected a ConfigError for ${JSON.stringify(env)}`);
}

/** The problem lines that name a variable (at the start of the line). */
function linesFor(error: ConfigError, variable: string): string[] {
  return error.problems.filter((p) => p.startsWith(`${variable}:`) || p.startsWith(`${variable} `));
}

const VALID_SECRET = `whsec_${Buffer.from('0123456789abcdef0123456789abcdef').toString('base64')}`;

describe('loadConfig defaults', () => {
  it('gives every variable its documented default', () => {
    const c = loadConfig({});
    expect(c.endpoint).toBe('https://api.sbgenomics.com/v2');
    expect(c.token).toBeUndefined();
    expect(c.pollIntervalMs).toBe(10_000);
    expect(c.rateBudget).toBe(500);
    expect(c.rateWindowMs).toBe(5 * 60_000);
    expect(c.batchSize).toBe(100);
    expect(c.webhook.urls).toEqual([]);
    expect(c.webhook.secretKey).toBeUndefined();
    expect(c.webhook.events).toEqual(
      new Set([
        'export.completed',
        'export.failed',
        'export.lost',
        'import.completed',
        'import.failed',
        'import.lost',
      ]),
    );
    expect(c.discover).toEqual([]);
    expect(c.discoverIntervalMs).toBe(300_000);
    expect(c.webhook.timeoutMs).toBe(15_000);
    expect(c.webhook.maxAgeMs).toBe(24 * 3_600_000);
    expect(c.retainMs).toBe(24 * 3_600_000);
    expect(c.eventRetainMs).toBe(14 * 86_400_000);
    expect(c.http).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(c.apiToken).toBeUndefined();
    expect(c.dataDir).toBe('./data');
    expect(c.logLevel).toBe('info');
  });

  it('treats empty and blank values as unset', () => {
    const c = loadConfig({ WATCHER_POLL_INTERVAL: '', WATCHER_BATCH_SIZE: '   ', SB_API_ENDPOINT: '' });
    expect(c.pollIntervalMs).toBe(10_000);
    expect(c.batchSize).toBe(100);
    expect(c.endpoint).toBe('https://api.sbgenomics.com/v2');
  });

  it('publishes the documented defaults (README "Configuration") in DEFAULTS', () => {
    expect(DEFAULTS).toMatchObject({
      SB_API_ENDPOINT: 'https://api.sbgenomics.com/v2',
      WATCHER_POLL_INTERVAL: '10s',
      WATCHER_RATE_BUDGET: '500',
      WATCHER_RATE_WINDOW: '5m',
      WATCHER_BATCH_SIZE: '100',
      WATCHER_WEBHOOK_EVENTS:
        'export.completed,export.failed,export.lost,import.completed,import.failed,import.lost',
      WATCHER_DISCOVER_INTERVAL: '5m',
      WATCHER_WEBHOOK_TIMEOUT: '15s',
      WATCHER_WEBHOOK_MAX_AGE: '24h',
      WATCHER_RETAIN: '24h',
      WATCHER_EVENT_RETAIN: '14d',
      WATCHER_HTTP_HOST: '127.0.0.1',
      WATCHER_HTTP_PORT: '8080',
      WATCHER_DATA_DIR: './data',
      WATCHER_LEADER_TIMEOUT: '15s',
      LOG_LEVEL: 'info',
    });
    for (const name of [
      'SB_AUTH_TOKEN',
      'WATCHER_WEBHOOK_URLS',
      'WATCHER_WEBHOOK_SECRET',
      'WATCHER_API_TOKEN',
      'WATCHER_DISCOVER',
      'WATCHER_DATABASE_URL',
    ]) {
      expect(name in DEFAULTS).toBe(true);
      expect(DEFAULTS[name as keyof typeof DEFAULTS]).toBeUndefined();
    }
  });

  it('reads every variable when set', () => {
    const c = loadConfig({
      SB_API_ENDPOINT: 'http://127.0.0.1:9999/v2',
      SB_AUTH_TOKEN: 'abc123',
      WATCHER_POLL_INTERVAL: '2s',
      WATCHER_RATE_BUDGET: '250',
      WATCHER_RATE_WINDOW: '1m',
      WATCHER_BATCH_SIZE: '50',
      WATCHER_WEBHOOK_URLS: 'https://a.example/hook, http://b.example:8000/x',
      WATCHER_WEBHOOK_SECRET: VALID_SECRET,
      WATCHER_WEBHOOK_EVENTS: 'export.running,export.failed',
      WATCHER_WEBHOOK_TIMEOUT: '3s',
      WATCHER_WEBHOOK_MAX_AGE: '2h',
      WATCHER_RETAIN: '30m',
      WATCHER_EVENT_RETAIN: '3d',
      WATCHER_HTTP_HOST: 'localhost',
      WATCHER_HTTP_PORT: '0',
      WATCHER_API_TOKEN: 'api-token',
      WATCHER_DATA_DIR: '/var/lib/watcher',
      LOG_LEVEL: 'DEBUG',
    });
    expect(c.endpoint).toBe('http://127.0.0.1:9999/v2');
    expect(c.token).toBe('abc123');
    expect(c.pollIntervalMs).toBe(2000);
    expect(c.rateBudget).toBe(250);
    expect(c.rateWindowMs).toBe(60_000);
    expect(c.batchSize).toBe(50);
    expect(c.webhook.urls).toEqual(['https://a.example/hook', 'http://b.example:8000/x']);
    expect(c.webhook.secretKey?.toString()).toBe('0123456789abcdef0123456789abcdef');
    expect(c.webhook.events).toEqual(new Set(['export.running', 'export.failed']));
    expect(c.webhook.timeoutMs).toBe(3000);
    expect(c.webhook.maxAgeMs).toBe(7_200_000);
    expect(c.retainMs).toBe(1_800_000);
    expect(c.eventRetainMs).toBe(3 * 86_400_000);
    expect(c.http).toEqual({ host: 'localhost', port: 0 });
    expect(c.apiToken).toBe('api-token');
    expect(c.dataDir).toBe('/var/lib/watcher');
    expect(c.logLevel).toBe('debug');
  });
});

describe('SB_API_ENDPOINT', () => {
  it.each([
    ['sbg-us', 'https://api.sbgenomics.com/v2'],
    ['sbg-eu', 'https://eu-api.sbgenomics.com/v2'],
    ['cgc', 'https://cgc-api.sbgenomics.com/v2'],
    ['cavatica', 'https://cavatica-api.sbgenomics.com/v2'],
    ['bdc', 'https://api.sb.biodatacatalyst.nhlbi.nih.gov/v2'],
    ['sbg-cn', 'https://api.sevenbridges.cn/v2'],
  ])('preset %s → %s', (preset, url) => {
    expect(ENDPOINT_PRESETS[preset]).toBe(url);
    expect(loadConfig({ SB_API_ENDPOINT: preset }).endpoint).toBe(url);
  });

  it('matches presets case-insensitively and ignores surrounding blanks', () => {
    expect(loadConfig({ SB_API_ENDPOINT: 'CGC' }).endpoint).toBe('https://cgc-api.sbgenomics.com/v2');
    expect(loadConfig({ SB_API_ENDPOINT: 'Cavatica' }).endpoint).toBe(
      'https://cavatica-api.sbgenomics.com/v2',
    );
    expect(loadConfig({ SB_API_ENDPOINT: '  sbg-EU ' }).endpoint).toBe('https://eu-api.sbgenomics.com/v2');
  });

  it('trims trailing slashes from URLs', () => {
    expect(loadConfig({ SB_API_ENDPOINT: 'https://example.org/v2/' }).endpoint).toBe(
      'https://example.org/v2',
    );
    expect(loadConfig({ SB_API_ENDPOINT: 'http://127.0.0.1:8000/v2///' }).endpoint).toBe(
      'http://127.0.0.1:8000/v2',
    );
  });

  it.each([
    'not a url',
    'ftp://example.org/v2',
    'cgc-typo',
    'example.org/v2',
    'constructor',
    '__proto__',
    'toString',
  ])('rejects %j', (value) => {
    const error = configError({ SB_API_ENDPOINT: value });
    const lines = linesFor(error, 'SB_API_ENDPOINT');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(JSON.stringify(value));
    expect(lines[0]).toContain('cgc');
  });
});

describe('durations', () => {
  it.each([
    ['250ms', 250],
    ['10s', 10_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['1500', 1500],
    ['0', 0],
    [' 2s ', 2000],
  ])('parseDuration(%j) = %d', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['', 'abc', '10 seconds', '-5s', '5x', '1h30m', 's', '10S', '1e3'])(
    'parseDuration(%j) is NaN',
    (text) => {
      expect(parseDuration(text)).toBeNaN();
    },
  );

  it('formats durations the way they are written', () => {
    expect(formatDuration(250)).toBe('250ms');
    expect(formatDuration(10_000)).toBe('10s');
    expect(formatDuration(300_000)).toBe('5m');
    expect(formatDuration(3_600_000)).toBe('1h');
    expect(formatDuration(1500)).toBe('1500ms');
  });

  it('accepts every duration form in each duration variable', () => {
    const c = loadConfig({
      WATCHER_POLL_INTERVAL: '250ms',
      WATCHER_RATE_WINDOW: '90000',
      WATCHER_WEBHOOK_TIMEOUT: '10s',
      WATCHER_WEBHOOK_MAX_AGE: '5m',
      WATCHER_RETAIN: '1h',
    });
    expect(c.pollIntervalMs).toBe(250);
    expect(c.rateWindowMs).toBe(90_000);
    expect(c.webhook.timeoutMs).toBe(10_000);
    expect(c.webhook.maxAgeMs).toBe(300_000);
    expect(c.retainMs).toBe(3_600_000);
  });

  it('rejects a zero poll interval', () => {
    expect(linesFor(configError({ WATCHER_POLL_INTERVAL: '0' }), 'WATCHER_POLL_INTERVAL')).toHaveLength(1);
  });

  // Node timers hold at most 2^31-1 ms (~24.8 days); a longer delay fires after 1 ms. The rate
  // window and the webhook timeout are passed to setTimeout (rate-limiter.ts, webhooks.ts), so a
  // longer value would refill the budget every millisecond or abort every delivery at once.
  it.each(['WATCHER_RATE_WINDOW', 'WATCHER_WEBHOOK_TIMEOUT'])(
    'rejects %s longer than a timer can hold',
    (name) => {
      const lines = linesFor(configError({ [name]: '30d' }), name);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain('"30d"');
    },
  );
});

describe('problems name their variable', () => {
  const cases: Array<[string, string]> = [
    ['SB_API_ENDPOINT', 'mailto:someone.example.org'],
    ['WATCHER_POLL_INTERVAL', 'soon'],
    ['WATCHER_POLL_INTERVAL', '-1s'],
    ['WATCHER_RATE_BUDGET', 'lots'],
    ['WATCHER_RATE_BUDGET', '0'],
    ['WATCHER_RATE_BUDGET', '12.5'],
    ['WATCHER_RATE_WINDOW', '5 minutes'],
    ['WATCHER_BATCH_SIZE', '0'],
    ['WATCHER_BATCH_SIZE', '101'],
    ['WATCHER_BATCH_SIZE', 'ten'],
    ['WATCHER_WEBHOOK_URLS', 'https://ok.example/a,not-a-url'],
    ['WATCHER_WEBHOOK_URLS', 'ftp://files.example/x'],
    ['WATCHER_WEBHOOK_EVENTS', 'export.done'],
    ['WATCHER_WEBHOOK_TIMEOUT', 'never'],
    ['WATCHER_WEBHOOK_MAX_AGE', '1 day'],
    ['WATCHER_RETAIN', 'forever'],
    ['WATCHER_EVENT_RETAIN', 'forever'],
    ['WATCHER_HTTP_PORT', '65536'],
    ['WATCHER_HTTP_PORT', '-1'],
    ['WATCHER_HTTP_PORT', 'http'],
    ['LOG_LEVEL', 'verbose'],
  ];
  it.each(cases)('%s=%j → one problem line naming it, with the value', (name, value) => {
    const error = configError({ [name]: value });
    expect(error.problems).toHaveLength(1);
    const line = error.problems[0] ?? '';
    expect(line.startsWith(`${name}:`)).toBe(true);
    expect(line).toMatch(/expected /);
    // What it got: the offending value (or the offending element of a list), quoted.
    const offending = name === 'WATCHER_WEBHOOK_URLS' ? value.split(',').at(-1) : value;
    expect(line.toLowerCase()).toContain(JSON.stringify(offending).toLowerCase());
    expect(error.message).toContain(line);
    expect(error.code).toBe('CONFIG_INVALID');
  });

  it('reports every problem together, one line each', () => {
    const error = configError(
      {
        SB_API_ENDPOINT: 'nowhere',
        WATCHER_POLL_INTERVAL: 'soon',
        WATCHER_RATE_BUDGET: '-3',
        WATCHER_BATCH_SIZE: '101',
        WATCHER_WEBHOOK_EVENTS: 'export.nope',
        WATCHER_HTTP_PORT: '99999',
        LOG_LEVEL: 'chatty',
      },
      { requireToken: true },
    );
    expect(error.problems).toHaveLength(8);
    for (const name of [
      'SB_API_ENDPOINT',
      'SB_AUTH_TOKEN',
      'WATCHER_POLL_INTERVAL',
      'WATCHER_RATE_BUDGET',
      'WATCHER_BATCH_SIZE',
      'WATCHER_WEBHOOK_EVENTS',
      'WATCHER_HTTP_PORT',
      'LOG_LEVEL',
    ]) {
      expect(linesFor(error, name)).toHaveLength(1);
    }
    for (const p of error.problems) expect(p).not.toContain('\n');
    expect(error.message.split('\n').slice(1)).toEqual(error.problems);
  });
});

describe('SB_AUTH_TOKEN', () => {
  it('is required only with requireToken', () => {
    expect(loadConfig({}).token).toBeUndefined();
    expect(loadConfig({}, { requireToken: false }).token).toBeUndefined();
    const error = configError({}, { requireToken: true });
    expect(error.problems).toHaveLength(1);
    expect(error.problems[0]).toMatch(/^SB_AUTH_TOKEN: /);
    expect(loadConfig({ SB_AUTH_TOKEN: 'tok' }, { requireToken: true }).token).toBe('tok');
  });

  it('counts a blank token as missing', () => {
    expect(
      linesFor(configError({ SB_AUTH_TOKEN: '   ' }, { requireToken: true }), 'SB_AUTH_TOKEN'),
    ).toHaveLength(1);
  });
});

describe('secrets never appear in problems', () => {
  const TOKEN = 'sbtok-Zq8WvK3mPRIVATE token';
  const HOOK_SECRET = 'whsec_!!notbase64-Yx7PRIVATEHOOK';
  const API_TOKEN = 'apitok-Jf5PRIVATEAPI';

  it('masks invalid secrets and leaves no trace of them in the error', () => {
    const error = configError(
      {
        SB_AUTH_TOKEN: TOKEN,
        WATCHER_WEBHOOK_SECRET: HOOK_SECRET,
        WATCHER_API_TOKEN: API_TOKEN,
        WATCHER_BATCH_SIZE: '0',
      },
      { requireToken: true },
    );
    expect(linesFor(error, 'SB_AUTH_TOKEN')).toHaveLength(1);
    expect(linesFor(error, 'WATCHER_WEBHOOK_SECRET')).toHaveLength(1);
    expect(linesFor(error, 'WATCHER_BATCH_SIZE')).toHaveLength(1);
    const everything = `${error.message}\n${error.problems.join('\n')}\n${error.stack ?? ''}\n${JSON.stringify(error)}`;
    for (const fragment of ['Zq8WvK3m', 'PRIVATE', 'Yx7', 'notbase64', 'Jf5', 'sbtok', 'apitok']) {
      expect(everything).not.toContain(fragment);
    }
  });

  it.each(['whsec_', 'whsec_Qk8x***', 'key-without-prefix', `${VALID_SECRET}#`])(
    'rejects WATCHER_WEBHOOK_SECRET %j without echoing it',
    (secret) => {
      const error = configError({ WATCHER_WEBHOOK_SECRET: secret });
      const lines = linesFor(error, 'WATCHER_WEBHOOK_SECRET');
      expect(lines).toHaveLength(1);
      const line = lines[0] ?? '';
      expect(line).toContain('whsec_');
      const got = line.slice(line.lastIndexOf(', got ') + ', got '.length);
      expect(got).not.toContain(secret);
      expect(got).toContain('hidden');
      if (secret !== 'whsec_') expect(error.message).not.toContain(secret);
    },
  );

  it.each([
    ['WATCHER_WEBHOOK_URLS', 'http//u:pw3Secret@host/x?k=sec4Query'],
    ['SB_API_ENDPOINT', 'alice:S3cretPw@api.example.org/v2'],
    ['SB_API_ENDPOINT', 'api.example.org/v2?token=Tk9Query'],
  ])('never echoes what may be credentials in a %s that is not a URL', (name, value) => {
    const error = configError({ [name]: value });
    const lines = linesFor(error, name);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('not a URL (hidden: it may hold credentials)');
    const everything = `${error.message}\n${error.problems.join('\n')}\n${JSON.stringify(error)}`;
    for (const fragment of ['pw3Secret', 'sec4Query', 'S3cretPw', 'Tk9Query', 'alice']) {
      expect(everything).not.toContain(fragment);
    }
  });

  it('never echoes a URL password typed with a raw # or ?', () => {
    const error = configError({
      SB_API_ENDPOINT: 'https://admin:S3cretPassw0rd#x@api.example.com/v2',
      WATCHER_WEBHOOK_URLS: 'https://hook:W3bh00kPass?x@hooks.example.com:99999/',
      HTTPS_PROXY: 'http://proxyuser:Pr0xyPass#1@proxy.example:3128',
    });
    for (const name of ['SB_API_ENDPOINT', 'WATCHER_WEBHOOK_URLS', 'HTTPS_PROXY']) {
      expect(linesFor(error, name)).toHaveLength(1);
    }
    const everything = `${error.message}\n${error.problems.join('\n')}\n${JSON.stringify(error)}`;
    for (const fragment of ['S3cretPassw0rd', 'W3bh00kPass', 'Pr0xyPass', 'admin', 'proxyuser']) {
      expect(everything).not.toContain(fragment);
    }
  });

  it.each([
    // The password holds a "/": the authority ends there, and the rest reads as a path.
    ['HTTPS_PROXY', 'http://proxyuser:Pr0xy/S3cret@proxy.example:3128', ['Pr0xy', 'S3cret', 'proxyuser']],
    // Split at the comma: "https://hook:W3bh00kPass" reads as a host with a port that is not one.
    ['WATCHER_WEBHOOK_URLS', 'https://hook:W3bh00kPass,word@hooks.example.com/in', ['W3bh00kPass']],
    // As dotenv leaves a value cut at an unquoted "#".
    ['SB_API_ENDPOINT', 'https://admin:S3cretPassw0rd', ['S3cretPassw0rd', 'admin']],
  ])('shows only the scheme of a %s that does not parse, whatever cut it', (name, value, fragments) => {
    const error = configError({ [name]: value });
    // The list is split at its commas: the piece after the comma has a line of its own.
    const [first] = linesFor(error, name);
    expect(first).toMatch(/starting with "https?:\/\/" that is not a URL \(the rest hidden/);
    const everything = `${error.message}\n${error.problems.join('\n')}\n${JSON.stringify(error)}`;
    for (const fragment of fragments) expect(everything).not.toContain(fragment);
  });

  it('still shows a value without a scheme that cannot hold credentials, to help find the typo', () => {
    const error = configError({ SB_API_ENDPOINT: 'sbg-uss', WATCHER_WEBHOOK_URLS: 'hooks.example.org/in' });
    expect(linesFor(error, 'SB_API_ENDPOINT')[0]).toContain('got "sbg-uss"');
    expect(linesFor(error, 'WATCHER_WEBHOOK_URLS')[0]).toContain('got "hooks.example.org/in"');
  });

  it('scrubs a secret set in another variable by mistake, or in a URL path, from every problem line', () => {
    const token = '0123456789abcdef0123456789abcdef';
    const apiToken = 'apiTokenZ9y8x7w6v5';
    const error = configError({
      SB_AUTH_TOKEN: token,
      WATCHER_API_TOKEN: apiToken,
      SB_API_ENDPOINT: token,
      WATCHER_WEBHOOK_URLS: `hooks.example.org/in/${apiToken}`,
      WATCHER_WEBHOOK_SECRET: VALID_SECRET,
      LOG_LEVEL: VALID_SECRET,
    });
    expect(linesFor(error, 'SB_API_ENDPOINT')).toHaveLength(1);
    expect(linesFor(error, 'WATCHER_WEBHOOK_URLS')).toHaveLength(1);
    expect(linesFor(error, 'LOG_LEVEL')).toHaveLength(1);
    const everything = `${error.message}\n${error.problems.join('\n')}\n${JSON.stringify(error)}`;
    for (const secret of [token, apiToken, VALID_SECRET]) expect(everything).not.toContain(secret);
  });

  it('scrubs a webhook secret pasted without its prefix, wherever else it was set', () => {
    const key = Buffer.from('0123456789abcdef0123456789abcdef').toString('base64');
    const error = configError({ WATCHER_WEBHOOK_SECRET: key, LOG_LEVEL: key });
    expect(linesFor(error, 'LOG_LEVEL')).toHaveLength(1);
    expect(error.problems.join('\n')).not.toContain(key.slice(0, 6));
  });

  it.each([
    'https://api.example.org/v2 ?token=QuerySecret99',
    "https://api.example.org/v2'?token=QuerySecret99",
    'https://api.example.org\\v2?token=QuerySecret99',
  ])('shows a URL that parses without its query, whatever its characters: %j', (value) => {
    const [line] = linesFor(configError({ SB_API_ENDPOINT: value }), 'SB_API_ENDPOINT');
    expect(line).toContain('(credentials, query and fragment hidden)');
    expect(line).not.toContain('QuerySecret99');
  });

  it('says when it hid part of a URL it shows', () => {
    const error = configError({ SB_API_ENDPOINT: 'https://api.example/v2?token=Tk9Query' });
    const [line] = linesFor(error, 'SB_API_ENDPOINT');
    expect(line).toContain('"https://api.example/v2" (credentials, query and fragment hidden)');
    expect(line).not.toContain('Tk9Query');
  });

  it('accepts a valid webhook secret and decodes its key', () => {
    expect(loadConfig({ WATCHER_WEBHOOK_SECRET: VALID_SECRET }).webhook.secretKey).toEqual(
      Buffer.from('0123456789abcdef0123456789abcdef'),
    );
  });
});

describe('WATCHER_WEBHOOK_EVENTS', () => {
  it('"*" means all', () => {
    expect(loadConfig({ WATCHER_WEBHOOK_EVENTS: '*' }).webhook.events).toBe('all');
    expect(loadConfig({ WATCHER_WEBHOOK_EVENTS: ' * ' }).webhook.events).toBe('all');
  });

  it('a list becomes a Set', () => {
    const events = loadConfig({ WATCHER_WEBHOOK_EVENTS: 'export.running, export.lost' }).webhook.events;
    expect(events).toBeInstanceOf(Set);
    expect(events).toEqual(new Set(['export.running', 'export.lost']));
  });

  it('an unknown type is a problem naming it', () => {
    const error = configError({ WATCHER_WEBHOOK_EVENTS: 'export.completed,export.finished' });
    const lines = linesFor(error, 'WATCHER_WEBHOOK_EVENTS');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('export.finished');
  });

  it('a list of nothing is a problem', () => {
    expect(linesFor(configError({ WATCHER_WEBHOOK_EVENTS: ',,' }), 'WATCHER_WEBHOOK_EVENTS')).toHaveLength(1);
  });
});

describe('WATCHER_BATCH_SIZE', () => {
  it.each(['0', '101'])('rejects %s', (value) => {
    const lines = linesFor(configError({ WATCHER_BATCH_SIZE: value }), 'WATCHER_BATCH_SIZE');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('1 to 100');
  });

  it.each([
    ['1', 1],
    ['100', 100],
  ])('accepts %s', (value, n) => {
    expect(loadConfig({ WATCHER_BATCH_SIZE: value }).batchSize).toBe(n);
  });
});

describe('WATCHER_HTTP_HOST and WATCHER_API_TOKEN', () => {
  it.each(['127.0.0.1', '127.0.0.53', 'localhost', 'LOCALHOST', '::1', '[::1]'])('%s is loopback', (host) => {
    expect(isLoopbackHost(host)).toBe(true);
    // Listened on as the address: node's listen cannot resolve "[::1]".
    expect(loadConfig({ WATCHER_HTTP_HOST: host }).http.host).toBe(host.replace(/^\[(.*)\]$/, '$1'));
  });

  it.each([
    'http://127.0.0.1',
    '127.0.0.1:8080',
    'host/path',
    'a b',
    '-bad.example',
    '[not-ipv6]',
    'é.example',
  ])('refuses %s as a host to listen on, in one line', (host) => {
    const error = configError({ WATCHER_HTTP_HOST: host });
    expect(error.problems).toEqual([
      `WATCHER_HTTP_HOST: expected an IP address or a host name to listen on, like 127.0.0.1, 0.0.0.0 or ::, got ${JSON.stringify(host)}`,
    ]);
  });

  it('refuses tokens that no header can carry', () => {
    const error = configError({
      SB_AUTH_TOKEN: 'abcdef0123456789\u200babcdef',
      WATCHER_API_TOKEN: 'apitoken\u00e9123',
    });
    expect(error.problems).toEqual([
      'SB_AUTH_TOKEN: expected a token of visible ASCII characters, without spaces, got a value of 23 characters (hidden)',
      'WATCHER_API_TOKEN: expected a token of visible ASCII characters, without spaces, got a value of 12 characters (hidden)',
    ]);
  });

  it.each(['0.0.0.0', '::', '192.168.1.20', 'watcher.example.org', '128.0.0.1'])(
    '%s is not loopback: needs WATCHER_API_TOKEN',
    (host) => {
      expect(isLoopbackHost(host)).toBe(false);
      const error = configError({ WATCHER_HTTP_HOST: host });
      expect(error.problems).toHaveLength(1);
      expect(error.problems[0]).toMatch(/^WATCHER_API_TOKEN: /);
      expect(error.problems[0]).toContain('WATCHER_HTTP_HOST');
      const c = loadConfig({ WATCHER_HTTP_HOST: host, WATCHER_API_TOKEN: 's3cret-token' });
      expect(c.http.host).toBe(host);
      expect(c.apiToken).toBe('s3cret-token');
    },
  );
});

describe('the result', () => {
  it('is frozen, nested objects included', () => {
    const c = loadConfig({ WATCHER_WEBHOOK_URLS: 'https://a.example/x' });
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.webhook)).toBe(true);
    expect(Object.isFrozen(c.http)).toBe(true);
    expect(Object.isFrozen(c.webhook.urls)).toBe(true);
    expect(() => {
      (c as { batchSize: number }).batchSize = 7;
    }).toThrow(TypeError);
    expect(() => {
      (c.http as { port: number }).port = 1;
    }).toThrow(TypeError);
    expect(() => (c.webhook.urls as string[]).push('https://b.example')).toThrow(TypeError);
    expect(c.batchSize).toBe(100);
    expect(c.http.port).toBe(8080);
  });

  it("counts a webhook URL's credentials as secrets, the Basic value it is sent as included", () => {
    const c = loadConfig({
      WATCHER_WEBHOOK_URLS: 'https://hook-user:h%40ok-Pass-7@a.example/x?token=tok-Q-42',
    });
    expect(c.secrets).toEqual(
      expect.arrayContaining([
        'h%40ok-Pass-7',
        'tok-Q-42',
        Buffer.from('hook-user:h@ok-Pass-7').toString('base64'),
      ]),
    );
  });

  it('leaves the environment object it is given unchanged', () => {
    const env = { WATCHER_BATCH_SIZE: '7' };
    loadConfig(env);
    expect(env).toEqual({ WATCHER_BATCH_SIZE: '7' });
  });
});

describe('HTTPS_PROXY, HTTP_PROXY and NO_PROXY', () => {
  it('are read in either case, lower case first, blank meaning unset', () => {
    expect(loadConfig({}).proxy).toBeUndefined();
    expect(loadConfig({ HTTP_PROXY: '', https_proxy: '  ', NO_PROXY: 'example.org' }).proxy).toBeUndefined();
    expect(loadConfig({ HTTP_PROXY: 'http://upper.example:3128' }).proxy).toEqual({
      http: 'http://upper.example:3128',
      https: 'http://upper.example:3128',
      noProxy: '',
    });
    expect(
      loadConfig({
        HTTP_PROXY: 'http://upper.example:1',
        http_proxy: 'http://lower.example:2',
        no_proxy: 'a.example',
        NO_PROXY: 'b.example',
      }).proxy,
    ).toEqual({ http: 'http://lower.example:2', https: 'http://lower.example:2', noProxy: 'a.example' });
    expect(loadConfig({ HTTP_PROXY: 'http://upper.example:1', http_proxy: ' ' }).proxy?.http).toBe(
      'http://upper.example:1',
    );
  });

  it('an https:// target uses HTTPS_PROXY, else HTTP_PROXY; an http:// one only HTTP_PROXY', () => {
    expect(loadConfig({ HTTPS_PROXY: 'https://secure.example:8443' }).proxy).toEqual({
      http: undefined,
      https: 'https://secure.example:8443',
      noProxy: '',
    });
    expect(
      loadConfig({ HTTPS_PROXY: 'http://s.example:1', HTTP_PROXY: 'http://p.example:2', NO_PROXY: '*' })
        .proxy,
    ).toEqual({ http: 'http://p.example:2', https: 'http://s.example:1', noProxy: '*' });
  });

  it('a URL without a scheme is http://, as curl reads it', () => {
    expect(loadConfig({ HTTP_PROXY: 'proxy.example:3128' }).proxy?.http).toBe('http://proxy.example:3128');
  });

  it.each([
    [
      'HTTPS_PROXY',
      'ftp://u:pw-Secret-1@files.example:21',
      '"ftp://files.example" (credentials, query and fragment hidden)',
    ],
    ['http_proxy', 'socks5://proxy.example:1080', '"socks5://proxy.example:1080"'],
    [
      'HTTP_PROXY',
      'http://',
      'a value of 7 characters starting with "http://" that is not a URL (the rest hidden: it may hold credentials)',
    ],
    [
      'HTTP_PROXY',
      'u:pw-Secret-1@bad host:1',
      'a value of 31 characters starting with "http://" that is not a URL (the rest hidden: it may hold credentials)',
    ],
  ])('%s=%j is one problem line naming it, without credentials', (name, value, shown) => {
    const error = configError({ [name]: value });
    expect(error.problems).toEqual([
      `${name}: expected a proxy URL like http://proxy.example:3128 (http or https, credentials allowed), got ${shown}`,
    ]);
    expect(error.message).not.toContain('pw-Secret-1');
  });

  it('its credentials are secrets: password, user name, user:pass, and the Basic value', () => {
    const c = loadConfig({ HTTPS_PROXY: 'http://proxy-user:p%40ss-W0rd-9@proxy.example:3128' });
    const basic = Buffer.from('proxy-user:p@ss-W0rd-9').toString('base64');
    expect(c.secrets).toEqual(
      expect.arrayContaining([
        'p%40ss-W0rd-9',
        'p@ss-W0rd-9',
        'proxy-user',
        'proxy-user:p%40ss-W0rd-9',
        'proxy-user:p@ss-W0rd-9',
        basic,
      ]),
    );
  });

  it('are listed in DEFAULTS, without defaults, with SB_PROFILE', () => {
    for (const name of ['HTTPS_PROXY', 'HTTP_PROXY', 'NO_PROXY', 'SB_PROFILE']) {
      expect(name in DEFAULTS).toBe(true);
      expect(DEFAULTS[name as keyof typeof DEFAULTS]).toBeUndefined();
    }
  });
});

describe('SB_PROFILE', () => {
  it('is read only when profiles are asked for (see profiles.test.ts)', () => {
    const c = loadConfig({ SB_PROFILE: 'no-such-profile', HOME: '/nonexistent' });
    expect(c.profile).toBeUndefined();
    const error = (() => {
      try {
        loadConfig({ SB_PROFILE: 'cgc', HOME: '/nonexistent' }, { profiles: true });
      } catch (e) {
        return e as ConfigError;
      }
      throw new Error('expected a ConfigError');
    })();
    expect(error.problems).toEqual([
      'SB_PROFILE: expected a credentials file /nonexistent/.sevenbridges/credentials with a [cgc] section, got no such file',
    ]);
  });
});

describe('WATCHER_DATABASE_URL and WATCHER_LEADER_TIMEOUT', () => {
  const PASSWORD = 'pgPRIVATE-s3cr3t/pw';
  const url = `postgres://watcher:${encodeURIComponent(PASSWORD)}@db.internal:5432/watcher?sslmode=require`;

  it('default to SQLite in WATCHER_DATA_DIR, and a 15 s takeover bound', () => {
    const c = loadConfig({});
    expect(c.databaseUrl).toBeUndefined();
    expect(c.leaderTimeoutMs).toBe(15_000);
  });

  it('take a postgres:// or postgresql:// URL as given, its password as a secret (raw and decoded)', () => {
    const c = loadConfig({ WATCHER_DATABASE_URL: url, WATCHER_LEADER_TIMEOUT: '3s' });
    expect(c.databaseUrl).toBe(url);
    expect(c.leaderTimeoutMs).toBe(3000);
    expect(c.secrets).toContain(PASSWORD);
    expect(c.secrets).toContain(encodeURIComponent(PASSWORD));
    // The user name and the other query values are not secrets: "watcher" is in every log line.
    expect(c.secrets).not.toContain('watcher');
    expect(c.secrets).not.toContain('require');
    const socket = loadConfig({
      WATCHER_DATABASE_URL: 'postgresql:///watcher?host=/run/postgresql&password=pwQUERY99',
    });
    expect(socket.secrets).toContain('pwQUERY99');
    // With user and password, and no host (a Unix socket directory in host=, or pg's default):
    // pg and libpq read it; the WHATWG URL parser alone would not.
    for (const hostless of [
      'postgres://watcher:pwHOSTLESS9@/watcher?host=/var/run/postgresql',
      'postgresql://watcher:pwHOSTLESS9@/watcher',
    ]) {
      const c = loadConfig({ WATCHER_DATABASE_URL: hostless });
      expect(c.databaseUrl).toBe(hostless);
      expect(c.secrets).toContain('pwHOSTLESS9');
      expect(describeDatabaseUrl(hostless)?.shown).toBe(
        `${hostless.split(':')[0]}://watcher@localhost/watcher`,
      );
    }
  });

  it('cuts a database password out of messages, but not a short one, which would mask its letters', () => {
    const message = 'password authentication failed for user "watcher" at db.example';
    const long = describeDatabaseUrl('postgres://watcher:atabase@db.example/watcher');
    expect(long?.scrub(`${message}: atabase`)).toBe(`${message}: ***`);
    for (const short of ['a', 'e', 'at', 'watc']) {
      const target = describeDatabaseUrl(`postgres://watcher:${short}@db.example/watcher`);
      expect(target?.shown).toBe('postgres://watcher@db.example/watcher');
      expect(target?.scrub(message)).toBe(message);
    }
  });

  it.each([
    ['mysql://watcher:pgPRIVATE@db/watcher', 'mysql://db/watcher'],
    ['https://watcher:pgPRIVATE@db/watcher', 'https://db/watcher'],
    ['db.internal:5432/watcher', 'db.internal:'],
    ['postgres://watcher:pgPRIVATE@db:99999/watcher', undefined],
    // No host and no path after it: pg cannot read these either.
    ['postgres://watcher:pgPRIVATE@?host=/run/postgresql', undefined],
    ['postgresql://watcher:pgPRIVATE@', undefined],
    // One slash too few or too many: no host, and "user:password@host/db" read as the database's
    // name (pg would ask the local server for it, and the name would be shown).
    ['postgres:/watcher:pgPRIVATE@db.example:5432/watcher', undefined],
    ['postgres:///watcher:pgPRIVATE@db.example:5432/watcher', undefined],
  ])('refuses %j without echoing a password', (value, shown) => {
    const error = configError({ WATCHER_DATABASE_URL: value });
    const lines = linesFor(error, 'WATCHER_DATABASE_URL');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('postgres://');
    if (shown !== undefined) expect(lines[0]).toContain(JSON.stringify(shown));
    else expect(lines[0]).toContain('hidden');
    expect(`${error.message}\n${JSON.stringify(error)}`).not.toContain('PRIVATE');
  });

  it.each(['2s', '6m', 'soon', '0'])('refuses WATCHER_LEADER_TIMEOUT %j (3s to 5m)', (value) => {
    const lines = linesFor(configError({ WATCHER_LEADER_TIMEOUT: value }), 'WATCHER_LEADER_TIMEOUT');
    expect(lines).toEqual([expect.stringContaining('a duration from 3s to 5m')]);
  });
});

describe('unknownVariables', () => {
  it('names each WATCHER_ variable set that is not read, with the nearest one it may have meant', () => {
    expect(
      unknownVariables({
        WATCHER_WEBHOOK_URL: 'https://hooks.example.org/in',
        WATCHER_LOG_LEVEL: 'debug',
        WATCHER_API_TOKNE: 'secret-value-1234',
        WATCHER_POLL_INTERVAL: '10s',
        WATCHER_UNSET: undefined,
        SB_CONFIG_PROFILE: 'other-tool',
        // The test suite's own, which a developer's shell holds (README, Development).
        WATCHER_TEST_DATABASE_URL: 'postgres://localhost/test',
        PATH: '/bin',
      }),
    ).toEqual([
      'WATCHER_API_TOKNE is set but is not a variable of sbg-export-watcher; it is ignored (did you mean WATCHER_API_TOKEN?)',
      // Four edits from LOG_LEVEL: too far to guess.
      'WATCHER_LOG_LEVEL is set but is not a variable of sbg-export-watcher; it is ignored',
      'WATCHER_WEBHOOK_URL is set but is not a variable of sbg-export-watcher; it is ignored (did you mean WATCHER_WEBHOOK_URLS?)',
    ]);
  });

  it('is empty for every variable the program reads', () => {
    // The variables loadConfig reads, found by reading them, not from the list unknownVariables keeps.
    const read = new Set<string>();
    const env = new Proxy({ WATCHER_WEBHOOK_URLS: 'https://h.example/x' } as Record<string, string>, {
      get: (target, name) => {
        if (typeof name === 'string') read.add(name);
        return Reflect.get(target, name);
      },
    });
    loadConfig(env);
    const watcher = [...read].filter((name) => name.startsWith('WATCHER_'));
    expect(watcher.length).toBeGreaterThan(15);
    expect(unknownVariables(Object.fromEntries(watcher.map((name) => [name, 'x'])))).toEqual([]);
  });
});
