/**
 * What the CLI prints when a command fails, and with which exit code. Expected failures (a
 * configuration or usage problem, a platform that refuses the token or cannot be reached, a port
 * in use, a `--timeout` that passed) are one line each, naming the variable or flag to change
 * where that is the fix. Only errors nobody expected (bugs) keep their stack trace.
 *
 * Every line passes through the caller's `Redactor` (seeded with the configuration's secrets once
 * it loaded) before it is written, so no token and no URL credential is ever printed.
 */
import { formatDuration } from '../config/config.js';
import type { RequestOutcome } from '../platform/platform-client.js';
import { ConfigError, ListenError, PlatformError, UsageError, WatcherError } from '../shared/errors.js';
import { proxyInUse, proxyLabel } from '../shared/proxy.js';
import { StoreError } from '../store/store.js';

export interface ErrorReport {
  lines: string[];
  exitCode: number;
}

/** What is known when the error happened: the endpoint, once the configuration loaded. */
export interface ErrorContext {
  endpoint?: string | undefined;
}

/** Longest piece of a platform's own message that is quoted in a line. */
const MAX_QUOTED = 200;

/** Node's errors for a server that cannot listen, by `code`. */
const LISTEN_CODES = new Set(['EADDRINUSE', 'EACCES', 'EADDRNOTAVAIL', 'ENOTFOUND']);

export function describeError(error: unknown, context: ErrorContext = {}): ErrorReport {
  if (error instanceof ConfigError) {
    return { lines: error.problems.map((p) => `config: ${oneLine(p)}`), exitCode: 2 };
  }
  if (error instanceof UsageError) return { lines: [`usage: ${oneLine(error.message)}`], exitCode: 2 };
  // The data directory or its database cannot be used: a setting to fix, like a bad variable.
  if (error instanceof StoreError) return { lines: [`config: ${oneLine(error.message)}`], exitCode: 2 };
  if (error instanceof PlatformError) {
    return { lines: [`error: ${platformProblem(error, context.endpoint)}`], exitCode: 1 };
  }
  if (error instanceof WatcherError) return { lines: [`error: ${oneLine(error.message)}`], exitCode: 1 };
  if (isListenFailure(error)) {
    const e = error as NodeJS.ErrnoException & { address?: string; port?: number };
    // Not mapped where it happened, so which setting to change is not known here.
    const listen = listenError(error, e.address ?? '?', e.port ?? 0, undefined) as ListenError;
    return { lines: [`error: ${listen.message}`], exitCode: 1 };
  }
  // A bug: the stack is what it takes to fix it.
  const text = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
  return { lines: [`error: ${text}`], exitCode: 1 };
}

/** Node's own error from `server.listen()` (a port in use, no permission, not our address). */
export function isListenFailure(error: unknown): boolean {
  const e = error as NodeJS.ErrnoException | undefined;
  return (
    e instanceof Error &&
    typeof e.code === 'string' &&
    LISTEN_CODES.has(e.code) &&
    (e.syscall === 'listen' || e.syscall === 'bind' || e.syscall === 'getaddrinfo')
  );
}

/** What to change when a server cannot listen: the control API's variables and flags by default. */
export interface ListenFixes {
  port: string;
  host: string;
}

export const CONTROL_API_FIXES: ListenFixes = {
  port: 'set WATCHER_HTTP_PORT or --http-port to another port (0 picks a free one)',
  host: 'set WATCHER_HTTP_HOST or --http-host to an address of this machine (default 127.0.0.1)',
};

/**
 * A listen failure as a ListenError saying what to change, or the error itself when it is not a
 * listen failure.
 */
export function listenError(
  error: unknown,
  host: string,
  port: number,
  fixes: ListenFixes | undefined = CONTROL_API_FIXES,
): unknown {
  if (!isListenFailure(error)) return error;
  const code = (error as NodeJS.ErrnoException).code;
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const fix = (which: keyof ListenFixes) => (fixes ? `; ${fixes[which]}` : '');
  const why =
    code === 'EADDRINUSE'
      ? `the port is already in use${fix('port')}`
      : code === 'EACCES'
        ? `permission denied (ports below 1024 need privileges)${fix('port')}`
        : code === 'EADDRNOTAVAIL'
          ? `${host} is not an address of this machine${fix('host')}`
          : `the host name ${host} does not resolve${fix('host')}`;
  return new ListenError(`cannot listen on ${where}: ${why}`, { host, port, cause: error });
}

/**
 * When a proxy is set for the endpoint's scheme, the failure may be the proxy's: say which one
 * (`scheme://host:port`, never its credentials). NO_PROXY may still send the endpoint direct.
 */
function proxyNote(endpoint: string | undefined): string {
  const proxy = proxyInUse();
  const url = endpoint?.startsWith('http://') ? proxy?.http : proxy?.https;
  if (url === undefined) return '';
  return ` (a proxy is set for it unless NO_PROXY covers it: ${proxyLabel(url)}; check HTTPS_PROXY, HTTP_PROXY and NO_PROXY too)`;
}

/** One line about a platform call that failed, with the fix where there is one. */
export function platformProblem(error: PlatformError, endpoint: string | undefined): string {
  const at = endpoint ? ` at ${endpoint}` : '';
  const said = error.body?.message ? `: ${quote(textOf(error.body.message))}` : '';
  const status = error.status > 0 ? `${error.status}${said}` : '';
  const endpointFix = 'check SB_API_ENDPOINT or --endpoint';
  switch (error.code) {
    case 'PLATFORM_UNAUTHORIZED':
      return `the platform refused the token (${status}); set SB_AUTH_TOKEN to a valid token (from the Developer tab of the platform)`;
    case 'PLATFORM_REJECTED':
      if (error.status === 404) {
        return `the platform${at} has no such route (404${said}); ${endpointFix}: it is the API base URL, which ends in /v2 (like https://api.sbgenomics.com/v2), or a preset such as sbg-us or cgc`;
      }
      return `the platform${at} rejected the request (${status}); ${endpointFix}`;
    case 'PLATFORM_NETWORK':
      return `could not reach the platform${at} (${causeCode(error)}); ${endpointFix}, and the network${proxyNote(endpoint)}`;
    case 'PLATFORM_TIMEOUT':
      return `the platform${at} did not answer in time; ${endpointFix}, and the network${proxyNote(endpoint)}`;
    case 'PLATFORM_MAINTENANCE':
      return 'the platform is in maintenance; try again later';
    case 'PLATFORM_UNAVAILABLE':
      return `the platform answered with a server error (${status}); try again later`;
    case 'PLATFORM_BAD_RESPONSE':
      return `the platform${at} sent an answer its API does not send (${quote(error.message)}); ${endpointFix}`;
    case 'PLATFORM_RATE_LIMITED': {
      const until = isoTime(error.resetAt);
      return `the platform's rate limit is spent${until ? ` until ${until}` : ''} (the user's other tools share it); try again then`;
    }
    default:
      return quote(error.message);
  }
}

/**
 * Why checks are not succeeding, from the outcome of the last platform request; undefined when
 * the platform answered.
 */
export function outcomeProblem(outcome: RequestOutcome, endpoint: string | undefined): string | undefined {
  const at = endpoint ? ` at ${endpoint}` : '';
  switch (outcome) {
    case 'ok':
    case 'not_found':
      return undefined;
    case 'network':
      return `the platform${at} cannot be reached (check SB_API_ENDPOINT or --endpoint, and the network)`;
    case 'timeout':
      return `the platform${at} does not answer in time`;
    case 'maintenance':
      return 'the platform is in maintenance';
    case 'server_error':
      return 'the platform answers with server errors';
    case 'rejected':
      return `the platform${at} rejects the requests (check SB_API_ENDPOINT or --endpoint: the API base URL ends in /v2)`;
    case 'bad_response':
      return `the platform${at} sends answers its API does not send (check SB_API_ENDPOINT or --endpoint)`;
    case 'rate_limited':
      return "the platform's rate limit is spent";
    case 'unauthorized':
      return 'the platform refused the token (check SB_AUTH_TOKEN)';
  }
}

/**
 * A value from outside (a platform's error field) as text: a string as it is, anything else as its
 * JSON (String() may throw on an object), nothing for null or undefined.
 */
export function textOf(value: unknown): string {
  if (value === undefined || value === null) return '';
  if (typeof value === 'string') return value;
  try {
    return JSON.stringify(value) ?? '';
  } catch {
    return '';
  }
}

/** Text from outside (a platform's message) as part of one line: no control characters, bounded. */
export function oneLine(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: removing them is the point
  return text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ').trim();
}

function quote(text: string): string {
  const line = oneLine(text);
  return line.length > MAX_QUOTED ? `${line.slice(0, MAX_QUOTED)}…` : line;
}

function causeCode(error: PlatformError): string {
  const cause = error.cause as { code?: unknown; message?: unknown } | undefined;
  if (typeof cause?.code === 'string') return cause.code;
  if (typeof cause?.message === 'string') return quote(cause.message);
  return quote(error.message);
}

function isoTime(ms: number | undefined): string | undefined {
  if (ms === undefined || !Number.isFinite(ms) || Math.abs(ms) > 8.64e15) return undefined;
  return new Date(ms).toISOString();
}

/** A duration for a message: whole seconds and up, as configuration writes them. */
export function roundedDuration(ms: number): string {
  return ms >= 1000 ? formatDuration(Math.floor(ms / 1000) * 1000) : formatDuration(ms);
}
