/**
 * Configuration: parsed once, at start-up, from the environment (plus command-line overrides)
 * into a frozen, typed object. Every problem is collected and reported together, one line each,
 * naming the variable, what it expects and what it got, with secrets masked. Only the composition
 * root passes `process.env` in; everything else receives the parsed object.
 */

import { isIP } from 'node:net';
import { homedir } from 'node:os';
import { DEFAULT_EVENT_TYPES, EVENT_TYPES, type EventType } from '../delivery/events.js';
import { parseSecret } from '../delivery/signing.js';
import type { JobKind } from '../polling/tracker.js';
import { ConfigError } from '../shared/errors.js';
import { nearestName } from '../shared/nearest.js';
import { basicAuthorization, type ProxySettings } from '../shared/proxy.js';
import { credentialsMisread, Redactor, shownUrl, urlSecrets } from '../shared/redact.js';
import { parseDatabaseUrl } from '../store/rows.js';
import { credentialsFile, type Profile, profileKey, resolveProfile } from './profiles.js';

/** Platform deployments by preset name (docs/platform-api.md §1). */
export const ENDPOINT_PRESETS: Readonly<Record<string, string>> = {
  'sbg-us': 'https://api.sbgenomics.com/v2',
  'sbg-eu': 'https://eu-api.sbgenomics.com/v2',
  cgc: 'https://cgc-api.sbgenomics.com/v2',
  cavatica: 'https://cavatica-api.sbgenomics.com/v2',
  bdc: 'https://api.sb.biodatacatalyst.nhlbi.nih.gov/v2',
  'sbg-cn': 'https://api.sevenbridges.cn/v2',
};

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Config {
  readonly endpoint: string;
  readonly token: string | undefined;
  readonly pollIntervalMs: number;
  readonly rateBudget: number;
  readonly rateWindowMs: number;
  readonly batchSize: number;
  /**
   * The kinds of job the daemon finds by itself (`WATCHER_DISCOVER`), in the order given; empty:
   * discovery is off.
   */
  readonly discover: readonly JobKind[];
  /** How often discovery lists the user's unfinished jobs (`WATCHER_DISCOVER_INTERVAL`). */
  readonly discoverIntervalMs: number;
  readonly webhook: {
    readonly urls: readonly string[];
    /** The decoded signing key, or undefined when deliveries are unsigned. */
    readonly secretKey: Buffer | undefined;
    readonly events: ReadonlySet<EventType> | 'all';
    readonly timeoutMs: number;
    readonly maxAgeMs: number;
  };
  readonly retainMs: number;
  /** How long delivered and given-up events stay stored (for replay) before they are pruned. */
  readonly eventRetainMs: number;
  readonly http: { readonly host: string; readonly port: number };
  readonly apiToken: string | undefined;
  readonly dataDir: string;
  /**
   * `WATCHER_DATABASE_URL`: a PostgreSQL database shared by replicas of the daemon (`run`), which
   * then elect a leader; undefined: SQLite in `dataDir`. Holds the password: never logged.
   */
  readonly databaseUrl: string | undefined;
  /** `WATCHER_LEADER_TIMEOUT`: the takeover bound of the leader election (with PostgreSQL only). */
  readonly leaderTimeoutMs: number;
  readonly logLevel: LogLevel;
  readonly shutdownTimeoutMs: number;
  /**
   * The credentials profile (`~/.sevenbridges/credentials`) the endpoint or the token came from,
   * when one was used.
   */
  readonly profile?: { readonly name: string; readonly file: string } | undefined;
  /** The forward proxy for outgoing HTTP (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), when one is set. */
  readonly proxy?: ProxySettings | undefined;
  /**
   * Every secret value this configuration holds (tokens, the webhook secret and its key, URL
   * passwords and query values, proxy credentials), for the log redactor. Never logged itself.
   */
  readonly secrets: readonly string[];
}

/** Every variable the watcher reads, with its default (undefined: none). */
export const DEFAULTS = {
  SB_API_ENDPOINT: 'https://api.sbgenomics.com/v2',
  SB_AUTH_TOKEN: undefined,
  SB_PROFILE: undefined,
  WATCHER_POLL_INTERVAL: '10s',
  WATCHER_RATE_BUDGET: '500',
  WATCHER_RATE_WINDOW: '5m',
  WATCHER_BATCH_SIZE: '100',
  WATCHER_DISCOVER: undefined,
  WATCHER_DISCOVER_INTERVAL: '5m',
  WATCHER_WEBHOOK_URLS: undefined,
  WATCHER_WEBHOOK_SECRET: undefined,
  WATCHER_WEBHOOK_EVENTS: DEFAULT_EVENT_TYPES.join(','),
  WATCHER_WEBHOOK_TIMEOUT: '15s',
  WATCHER_WEBHOOK_MAX_AGE: '24h',
  WATCHER_RETAIN: '24h',
  WATCHER_EVENT_RETAIN: '14d',
  WATCHER_HTTP_HOST: '127.0.0.1',
  WATCHER_HTTP_PORT: '8080',
  WATCHER_API_TOKEN: undefined,
  WATCHER_DATA_DIR: './data',
  WATCHER_DATABASE_URL: undefined,
  WATCHER_LEADER_TIMEOUT: '15s',
  WATCHER_SHUTDOWN_TIMEOUT: '10s',
  LOG_LEVEL: 'info',
  HTTPS_PROXY: undefined,
  HTTP_PROXY: undefined,
  NO_PROXY: undefined,
} as const satisfies Record<string, string | undefined>;

export type VariableName = keyof typeof DEFAULTS;

export type Env = Readonly<Record<string, string | undefined>>;

/**
 * The `WATCHER_` variables set that this program does not read, each as a line to warn with: a
 * misspelt one (`WATCHER_WEBHOOK_URL`) is otherwise ignored without a word, and the setting it
 * meant keeps its default. The closest name it may have meant is suggested. Only `WATCHER_`: the
 * `SB_` prefix is shared with the platform's other tools, whose variables are none of ours.
 */
export function unknownVariables(env: Env): string[] {
  const known = Object.keys(DEFAULTS);
  const lines: string[] = [];
  for (const name of Object.keys(env).sort()) {
    if (!name.startsWith('WATCHER_') || Object.hasOwn(DEFAULTS, name) || env[name] === undefined) continue;
    // The test suite's own (README, Development): set in a developer's shell, read by no daemon.
    if (name.startsWith('WATCHER_TEST_')) continue;
    const nearest = nearestName(name, known);
    lines.push(
      `${name} is set but is not a variable of sbg-export-watcher; it is ignored${nearest ? ` (did you mean ${nearest}?)` : ''}`,
    );
  }
  return lines;
}

/** Variables whose values are secrets: never echoed in a problem line. */
const SECRET_VARIABLES: ReadonlySet<string> = new Set([
  'SB_AUTH_TOKEN',
  'WATCHER_WEBHOOK_SECRET',
  'WATCHER_API_TOKEN',
]);

/** Variables holding URLs, which may carry credentials or tokens: echoed without them. */
const URL_VARIABLES: ReadonlySet<string> = new Set([
  'SB_API_ENDPOINT',
  'WATCHER_WEBHOOK_URLS',
  'HTTPS_PROXY',
  'HTTP_PROXY',
]);

export interface LoadOptions {
  /** `run`, `watch` and `get` talk to the platform and need a token; `simulate` does not. */
  requireToken?: boolean;
  /**
   * Whether this command serves the control API (default true). Only then does a non-loopback
   * WATCHER_HTTP_HOST require WATCHER_API_TOKEN, so `get` and `watch` work in the container image.
   */
  listens?: boolean;
  /**
   * Whether the platform's endpoint and token may come from a profile of the credentials file
   * `~/.sevenbridges/credentials`, as the official Python client reads them (`run`, `watch` and
   * `get`; default false). `home` is the directory that holds `.sevenbridges`; default `$HOME` of
   * the environment given, else the user's home directory.
   */
  profiles?: boolean | { home?: string };
  /**
   * Whether this command runs discovery (default true). `watch` and `get` do not: for them
   * WATCHER_DISCOVER and WATCHER_DISCOVER_INTERVAL are not read, so a value meant for `run` can
   * neither stop them nor add jobs.
   */
  discovers?: boolean;
  /**
   * Whether this command keeps its state where WATCHER_DATABASE_URL says (`run`; default true).
   * The others (`watch`, `get`, `events`, `redeliver`) do not read it or WATCHER_LEADER_TIMEOUT,
   * so a value meant for `run` cannot stop them.
   */
  stores?: boolean;
  /**
   * Problems already found with some variables (a credential file that cannot be read), each line
   * starting with the variable's name: reported first, and those variables count as given (no
   * profile fills them in, no second line about them).
   */
  problems?: readonly string[];
}

/** `WATCHER_DISCOVER` names, singular or plural, by the kind they stand for. */
const DISCOVER_NAMES: Readonly<Record<string, JobKind>> = {
  exports: 'export',
  export: 'export',
  imports: 'import',
  import: 'import',
};

/** The smallest budget discovery can work with: a tenth of it must be at least one request. */
export const DISCOVER_MIN_BUDGET = 10;

/** The longest delay a Node.js timer holds (about 24.8 days); longer ones fire at once. */
const MAX_TIMER_MS = 2_147_483_647;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

const UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `250ms`, `10s`, `5m`, `1h`, `1d`, or a bare number of milliseconds. Returns NaN when malformed. */
export function parseDuration(text: string): number {
  return Math.round(exactDuration(text));
}

/**
 * `text` as whole milliseconds when the duration it writes lies within `min`..`max`, bounds held
 * for the value written, not for it rounded (`99.5` is under a 100 ms minimum); else undefined.
 */
export function durationWithin(text: string, min: number, max: number): number | undefined {
  const exact = exactDuration(text);
  return exact >= min && exact <= max ? Math.round(exact) : undefined;
}

/** The milliseconds a duration stands for, before rounding (NaN when malformed). */
function exactDuration(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(text);
  if (!match) return Number.NaN;
  const value = Number(match[1]) * (UNITS[match[2] ?? 'ms'] ?? 1);
  return Number.isFinite(value) ? value : Number.NaN;
}

/** Formats milliseconds the way they are written in configuration, for logs and help. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** A token as a header carries it: visible ASCII, no spaces. */
export const TOKEN_TEXT = /^[\x21-\x7e]+$/;
const TOKEN_EXPECTED = 'a token of visible ASCII characters, without spaces';
/** A DNS host name (labels of letters, digits and hyphens), as `listen` resolves it. */
const HOST_NAME =
  /^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  const octets = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h);
  return octets?.slice(1).every((o) => Number(o) <= 255) ?? false;
}

/** The user's home directory, or undefined when it has none (no $HOME and no passwd entry). */
function userHome(): string | undefined {
  try {
    return homedir();
  } catch {
    return undefined;
  }
}

/** Parses and validates; throws ConfigError listing every problem. */
export function loadConfig(env: Env, options: LoadOptions = {}): Config {
  const problems: string[] = [...(options.problems ?? [])];
  const reported = new Set(problems.map((line) => line.slice(0, line.indexOf(':'))));
  const raw = (name: VariableName): string | undefined => {
    const v = env[name];
    return v === undefined || v.trim() === '' ? DEFAULTS[name] : v.trim();
  };
  const shown = (name: VariableName, value: string): string =>
    SECRET_VARIABLES.has(name)
      ? `a value of ${value.length} characters (hidden)`
      : URL_VARIABLES.has(name)
        ? shownUrl(value)
        : JSON.stringify(value);
  const problem = (name: VariableName, expects: string, value: string | undefined): void => {
    if (reported.has(name)) return;
    problems.push(
      `${name}: expected ${expects}, got ${value === undefined ? 'nothing' : shown(name, value)}`,
    );
  };

  const duration = (name: VariableName, min: number, max: number = MAX_TIMER_MS): number => {
    const text = raw(name) ?? '';
    const ms = durationWithin(text, min, max);
    if (ms === undefined) {
      problem(
        name,
        `a duration from ${formatDuration(min)} to ${formatDuration(max)} (like 250ms, 10s, 5m, 1h, or milliseconds)`,
        text,
      );
      return min;
    }
    return ms;
  };
  const integer = (name: VariableName, min: number, max: number): number => {
    const text = raw(name) ?? '';
    const n = /^\d+$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      problem(name, `a whole number from ${min} to ${max}`, text);
      return min;
    }
    return n;
  };

  // The platform's endpoint and token: each variable wins over the profile's key on its own.
  const isSet = (name: VariableName): boolean => reported.has(name) || (env[name]?.trim() ?? '') !== '';
  let profile: Profile | undefined;
  let profileFailed = false;
  let profilesHome: string | undefined;
  if (options.profiles) {
    const home = (typeof options.profiles === 'object' ? options.profiles.home : undefined) ?? env.HOME;
    profilesHome = home?.trim() ? home : userHome();
    const result = resolveProfile({
      name: raw('SB_PROFILE'),
      home: profilesHome,
      endpointGiven: isSet('SB_API_ENDPOINT'),
      tokenGiven: isSet('SB_AUTH_TOKEN'),
      tokenRequired: options.requireToken ?? false,
    });
    profile = result.profile;
    profileFailed = result.problems.length > 0;
    problems.push(...result.problems);
  }

  // SB_API_ENDPOINT (or the profile's api_endpoint): a preset name or an http(s) URL.
  const endpointProfile = !isSet('SB_API_ENDPOINT') && profile?.endpoint !== undefined ? profile : undefined;
  const endpointText = endpointProfile?.endpoint ?? raw('SB_API_ENDPOINT') ?? DEFAULTS.SB_API_ENDPOINT;
  const endpointProblem = (expects: string): void => {
    if (endpointProfile === undefined) problem('SB_API_ENDPOINT', expects, endpointText);
    else
      problems.push(
        `SB_PROFILE: expected ${profileKey(endpointProfile, 'api_endpoint')} to be ${expects}, got ${shownUrl(endpointText)}`,
      );
  };
  const preset = endpointText.toLowerCase();
  let endpoint =
    (Object.hasOwn(ENDPOINT_PRESETS, preset) ? ENDPOINT_PRESETS[preset] : undefined) ?? endpointText;
  if (!isHttpUrl(endpoint)) {
    endpointProblem(`an http(s) URL or one of ${Object.keys(ENDPOINT_PRESETS).join(', ')}`);
  } else if (/[?#]/.test(endpoint)) {
    // Request paths are appended to it: a query or fragment would swallow them.
    endpointProblem('a base URL without a query string or fragment');
  }
  endpoint = endpoint.replace(/\/+$/, '');

  const tokenProfile = !isSet('SB_AUTH_TOKEN') && profile?.token !== undefined ? profile : undefined;
  const token = tokenProfile?.token ?? raw('SB_AUTH_TOKEN');
  if (options.requireToken && token === undefined) {
    // A broken profile has said what is missing already.
    if (!profileFailed) {
      const where =
        profilesHome === undefined
          ? ''
          : ` or the auth_token of a profile in ${credentialsFile(profilesHome)} (SB_PROFILE; [default] when unset)`;
      problem(
        'SB_AUTH_TOKEN',
        `the platform token (from the Developer tab of the platform)${where}`,
        undefined,
      );
    }
  } else if (token !== undefined && !TOKEN_TEXT.test(token)) {
    // It goes in a header: a space or a character no header can carry (a pasted zero-width space)
    // would fail every request later, reported as an unreachable platform.
    if (tokenProfile === undefined) problem('SB_AUTH_TOKEN', TOKEN_EXPECTED, token);
    else
      problems.push(
        `SB_PROFILE: expected ${profileKey(tokenProfile, 'auth_token')} to be ${TOKEN_EXPECTED}, got a value of ${token.length} characters (hidden)`,
      );
  }
  const usedProfile = endpointProfile ?? tokenProfile;

  const proxy = proxySettings(env, problems);

  const pollIntervalMs = duration('WATCHER_POLL_INTERVAL', 100, DAY);
  const budgetProblems = problems.length;
  const rateBudget = integer('WATCHER_RATE_BUDGET', 1, 1_000_000);
  const budgetParsed = problems.length === budgetProblems;
  const rateWindowMs = duration('WATCHER_RATE_WINDOW', 1000, DAY);
  const batchSize = integer('WATCHER_BATCH_SIZE', 1, 100);

  // WATCHER_DISCOVER: exports, imports or both, comma-separated; unset (or blank) is off.
  const discovers = options.discovers ?? true;
  const discoverText = discovers ? raw('WATCHER_DISCOVER') : undefined;
  const discover: JobKind[] = [];
  if (discoverText !== undefined) {
    const names = discoverText
      .split(',')
      .map((n) => n.trim().toLowerCase())
      .filter((n) => n !== '');
    const kinds = names.map((n) => (Object.hasOwn(DISCOVER_NAMES, n) ? DISCOVER_NAMES[n] : undefined));
    if (names.length === 0 || kinds.some((k) => k === undefined)) {
      problem('WATCHER_DISCOVER', '"exports", "imports" or "exports,imports"', discoverText);
    } else {
      for (const k of kinds) if (k !== undefined && !discover.includes(k)) discover.push(k);
    }
  }
  const discoverIntervalMs = discovers ? duration('WATCHER_DISCOVER_INTERVAL', 10_000, DAY) : 5 * 60_000;
  // A budget that did not parse has its line already.
  if (discover.length > 0 && budgetParsed && rateBudget < DISCOVER_MIN_BUDGET) {
    problems.push(
      `WATCHER_RATE_BUDGET: expected at least ${DISCOVER_MIN_BUDGET} when WATCHER_DISCOVER is set (discovery may use a tenth of the budget), got ${JSON.stringify(raw('WATCHER_RATE_BUDGET'))}`,
    );
  }

  const urlsText = raw('WATCHER_WEBHOOK_URLS');
  const urls = urlsText
    ? urlsText
        .split(',')
        .map((u) => u.trim())
        .filter((u) => u !== '')
    : [];
  for (const u of urls) {
    if (!isHttpUrl(u)) problem('WATCHER_WEBHOOK_URLS', 'comma-separated http(s) URLs', u);
  }

  const secretText = raw('WATCHER_WEBHOOK_SECRET');
  let secretKey: Buffer | undefined;
  if (secretText !== undefined) {
    try {
      secretKey = parseSecret(secretText);
    } catch {
      problem('WATCHER_WEBHOOK_SECRET', '"whsec_" followed by a base64 key', secretText);
    }
  }

  const eventsText = raw('WATCHER_WEBHOOK_EVENTS') ?? '';
  let events: ReadonlySet<EventType> | 'all' = 'all';
  if (eventsText !== '*') {
    const names = eventsText
      .split(',')
      .map((e) => e.trim())
      .filter((e) => e !== '');
    const bad = names.filter((n) => !(EVENT_TYPES as readonly string[]).includes(n));
    if (bad.length > 0 || names.length === 0) {
      problem(
        'WATCHER_WEBHOOK_EVENTS',
        `"*" or a comma-separated list of ${EVENT_TYPES.join(', ')}`,
        eventsText,
      );
    }
    events = new Set(names.filter((n): n is EventType => (EVENT_TYPES as readonly string[]).includes(n)));
  }

  const webhookTimeoutMs = duration('WATCHER_WEBHOOK_TIMEOUT', 100, HOUR);
  const maxAgeMs = duration('WATCHER_WEBHOOK_MAX_AGE', 1000, 20 * DAY);
  // Compared against, never put in a timer.
  const retainMs = duration('WATCHER_RETAIN', 0, 365 * DAY);
  const eventRetainMs = duration('WATCHER_EVENT_RETAIN', 0, 365 * DAY);

  const hostText = raw('WATCHER_HTTP_HOST') ?? DEFAULTS.WATCHER_HTTP_HOST;
  // An address or a host name to listen on, nothing more: "[::1]" is taken as ::1.
  const bracketed = /^\[(.*)\]$/.exec(hostText)?.[1];
  const host = bracketed !== undefined && isIP(bracketed) === 6 ? bracketed : hostText;
  const hostOk = isIP(host) !== 0 || HOST_NAME.test(host);
  if (!hostOk) {
    problem(
      'WATCHER_HTTP_HOST',
      'an IP address or a host name to listen on, like 127.0.0.1, 0.0.0.0 or ::',
      hostText,
    );
  }
  const port = integer('WATCHER_HTTP_PORT', 0, 65_535);
  const apiToken = raw('WATCHER_API_TOKEN');
  // Clients send it in a header: one they cannot send would lock every client out.
  if (apiToken !== undefined && !TOKEN_TEXT.test(apiToken))
    problem('WATCHER_API_TOKEN', TOKEN_EXPECTED, apiToken);
  if (
    (options.listens ?? true) &&
    hostOk &&
    !isLoopbackHost(host) &&
    apiToken === undefined &&
    !reported.has('WATCHER_API_TOKEN')
  ) {
    problems.push(
      `WATCHER_API_TOKEN: expected a token, because WATCHER_HTTP_HOST ${JSON.stringify(host)} is not a loopback address, got nothing`,
    );
  }
  const dataDir = raw('WATCHER_DATA_DIR') ?? DEFAULTS.WATCHER_DATA_DIR;
  const stores = options.stores ?? true;
  const database = stores ? databaseUrl(raw('WATCHER_DATABASE_URL'), problems) : undefined;
  const leaderTimeoutMs = stores
    ? duration('WATCHER_LEADER_TIMEOUT', 3000, 5 * 60_000)
    : parseDuration(DEFAULTS.WATCHER_LEADER_TIMEOUT as string);

  const levelText = raw('LOG_LEVEL') ?? 'info';
  const level = levelText.toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(level))
    problem('LOG_LEVEL', `one of ${LOG_LEVELS.join(', ')}`, levelText);
  const shutdownTimeoutMs = duration('WATCHER_SHUTDOWN_TIMEOUT', 0, HOUR);

  // The tokens and the webhook secret, whole and its key ("whsec_" alone is no secret: it is in
  // the problem lines' words).
  const secrets = [token, apiToken, secretText, secretText?.slice('whsec_'.length)].filter(
    (s): s is string => s !== undefined && s !== 'whsec_',
  );
  if (problems.length > 0) {
    // A secret may also be in another variable's value (set to the wrong variable, or in a URL's
    // path): every problem line is scrubbed of the secrets read.
    const redactor = new Redactor(secrets);
    throw new ConfigError(problems.map((line) => redactor.scrub(line)));
  }
  for (const u of [endpoint, ...urls]) secrets.push(...urlSecrets(u));
  // What a webhook URL's credentials are sent as (HTTP Basic): never in a log line either.
  for (const u of urls) {
    const basic = basicAuthorization(u);
    if (basic !== undefined) secrets.push(basic.slice('Basic '.length));
  }
  for (const u of new Set([proxy?.http, proxy?.https])) if (u !== undefined) secrets.push(...proxySecrets(u));
  if (database !== undefined) secrets.push(...database.secrets);
  return Object.freeze({
    endpoint,
    token,
    pollIntervalMs,
    rateBudget,
    rateWindowMs,
    batchSize,
    discover: Object.freeze(discover),
    discoverIntervalMs,
    webhook: Object.freeze({
      urls: Object.freeze(urls),
      secretKey,
      events,
      timeoutMs: webhookTimeoutMs,
      maxAgeMs,
    }),
    retainMs,
    eventRetainMs,
    http: Object.freeze({ host, port }),
    apiToken,
    dataDir,
    databaseUrl: database?.url,
    leaderTimeoutMs,
    logLevel: level as LogLevel,
    shutdownTimeoutMs,
    profile: usedProfile ? Object.freeze({ name: usedProfile.name, file: usedProfile.file }) : undefined,
    proxy,
    secrets: Object.freeze(secrets),
  });
}

/**
 * `WATCHER_DATABASE_URL`: a `postgres://` or `postgresql://` URL, as `pg` reads it (a host may also
 * come from a `host=` query parameter, for a Unix socket). Its password (in the userinfo, or a
 * `password=` query parameter) is a secret: a problem line shows the URL without it, or nothing of a
 * value that does not parse (it may hold the password anywhere). The user name and the other query
 * values are not secrets, and are not scrubbed from the logs.
 */
function databaseUrl(
  text: string | undefined,
  problems: string[],
): { url: string; secrets: string[] } | undefined {
  if (text === undefined) return undefined;
  // No example URL here: the CLI's redactor would cut its "user:password@" out of the line.
  const expects = 'expected a postgres:// or postgresql:// URL (with user, password, host, port, database)';
  const read = hasControlCharacter(text) ? undefined : parseDatabaseUrl(text);
  if (read === undefined) {
    problems.push(
      `WATCHER_DATABASE_URL: ${expects}, got a value that is not a URL (${text.length} characters, hidden)`,
    );
    return undefined;
  }
  const u = read.url;
  const secrets: string[] = [];
  for (const password of [u.password, u.searchParams.get('password') ?? '']) {
    if (password !== '')
      secrets.push(password, safeDecode(password), encodeURIComponent(safeDecode(password)));
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    // Without its password; a value with no "//" is not a URL the user meant as one, and one whose
    // "@" the parser did not take for the end of credentials has them in its host or path.
    const shown =
      text.startsWith(`${u.protocol}//`) && !credentialsMisread(text, u)
        ? `${u.protocol}//${read.host}${u.pathname}`
        : u.protocol;
    problems.push(`WATCHER_DATABASE_URL: ${expects}, got ${JSON.stringify(shown)}`);
    return undefined;
  }
  // Without its "//" (or with one slash too many), a URL has no authority: "user:password@host"
  // is read as the path, the database's name, and would be shown as one.
  if (!/^postgres(?:ql)?:\/\//i.test(text) || u.pathname.includes('@')) {
    problems.push(
      `WATCHER_DATABASE_URL: ${expects}, got a value without a host part after "//" (${text.length} characters, hidden)`,
    );
    return undefined;
  }
  return { url: text, secrets: [...new Set(secrets)] };
}

/** The proxy variables, lower case first (as undici and curl read them); blank means unset. */
const PROXY_VARIABLES = {
  https: ['https_proxy', 'HTTPS_PROXY'],
  http: ['http_proxy', 'HTTP_PROXY'],
  noProxy: ['no_proxy', 'NO_PROXY'],
} as const;

/**
 * HTTPS_PROXY, HTTP_PROXY and NO_PROXY, or undefined when no proxy is set. A URL without a scheme
 * (`proxy.example:3128`) means http://, as curl reads it; an https:// target uses HTTP_PROXY when
 * HTTPS_PROXY is not set, as undici does. Problems are pushed to `problems`, without credentials.
 */
function proxySettings(env: Env, problems: string[]): ProxySettings | undefined {
  const read = (names: readonly string[]): { name: string; value: string } | undefined => {
    for (const name of names) {
      const value = env[name]?.trim();
      if (value) return { name, value };
    }
    return undefined;
  };
  const url = (names: readonly string[]): string | undefined => {
    const found = read(names);
    if (found === undefined) return undefined;
    const text = found.value.includes('://') ? found.value : `http://${found.value}`;
    if (isHttpUrl(text)) return text;
    problems.push(
      `${found.name}: expected a proxy URL like http://proxy.example:3128 (http or https, credentials allowed), got ${shownUrl(text)}`,
    );
    return undefined;
  };
  const http = url(PROXY_VARIABLES.http);
  const https = url(PROXY_VARIABLES.https) ?? http;
  if (http === undefined && https === undefined) return undefined;
  return Object.freeze({ http, https, noProxy: read(PROXY_VARIABLES.noProxy)?.value ?? '' });
}

/**
 * What of a proxy URL is secret: its password and user name (as written and decoded), the whole
 * `user:pass`, and the `Proxy-Authorization` value undici makes of it.
 */
function proxySecrets(url: string): string[] {
  const found = urlSecrets(url);
  const u = new URL(url);
  if (u.username || u.password) {
    const userinfo = `${u.username}:${u.password}`;
    const decoded = `${safeDecode(u.username)}:${safeDecode(u.password)}`;
    found.push(userinfo, decoded, Buffer.from(decoded).toString('base64'));
  }
  return found;
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** The URL parser drops tabs and newlines wherever they are: the URL used would not be the one given. */
function hasControlCharacter(text: string): boolean {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding them is the point
  return /[\u0000-\u001f\u007f]/.test(text);
}

function isHttpUrl(text: string): boolean {
  if (hasControlCharacter(text)) return false;
  try {
    const u = new URL(text);
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname !== '';
  } catch {
    return false;
  }
}
