/**
 * Outgoing HTTP through a forward proxy: `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (either case;
 * parsed and validated in config.ts) for the platform's API and the webhook deliveries, through
 * undici's own `EnvHttpProxyAgent`.
 *
 * `createDispatcher` is the one factory for the long-lived dispatchers that talk to the outside:
 * the platform client's and the delivery engine's default agents (and so `get` and `watch`, which
 * use them). It takes the same Agent options they always had (keep-alive, connections, ...):
 * without a proxy it is a plain `Agent` with them; with one, an `EnvHttpProxyAgent` that applies
 * them to the direct agent and to the agents behind the proxy.
 *
 * The settings are the process's, set once by the CLI from the configuration (`useProxy`): until
 * then (tests, the demo, library use) every dispatcher goes direct, whatever the environment says.
 * The settings are given to undici explicitly, so it never reads `process.env` itself.
 *
 * How undici applies them:
 * - `http://` targets use HTTP_PROXY, `https://` targets HTTPS_PROXY, or HTTP_PROXY when only that
 *   one is set (config.ts resolves that, so the log shows it).
 * - An `http://` target is sent to the proxy as an absolute-form request (`GET http://host/path`),
 *   as curl does, which every forward proxy serves; an `https://` target through a `CONNECT`
 *   tunnel. (undici's own default would tunnel both; many proxies allow CONNECT to 443 only.)
 * - NO_PROXY: comma- or space-separated host names, each matching itself and its subdomains
 *   (`.example.org` and `*.example.org` likewise), optionally with `:port`; `*` alone means no
 *   proxy at all. Names are compared as written: no CIDR ranges, no DNS. Loopback addresses get no
 *   special treatment: `localhost` and `127.0.0.1` go through the proxy unless NO_PROXY lists them.
 * - Credentials in the proxy URL (`http://user:pass@proxy:3128`) are sent as
 *   `Proxy-Authorization: Basic ...`.
 * - A path, query or fragment in the proxy URL (`http://proxy:3128/corp?x=1`) is dropped, as curl
 *   drops it: a forward proxy is reached at its host and port, and undici refuses a proxy URL
 *   with anything after the host (its `invalid url`, thrown where the dispatcher is made, would
 *   otherwise end the process with a stack trace for a value configuration accepted).
 */
import { Agent, type Dispatcher, EnvHttpProxyAgent } from 'undici';

export interface ProxySettings {
  /** The proxy for `http://` targets, credentials included; undefined: direct. */
  readonly http: string | undefined;
  /** The proxy for `https://` targets, credentials included; undefined: direct. */
  readonly https: string | undefined;
  /** Hosts reached directly, as NO_PROXY gives them ('' for none). */
  readonly noProxy: string;
}

let current: ProxySettings | undefined;

/** Sets the proxy every dispatcher created from now on uses (undefined: none). */
export function useProxy(settings: ProxySettings | undefined): void {
  current = settings;
}

/** The proxy dispatchers are created with now. */
export function proxyInUse(): ProxySettings | undefined {
  return current;
}

function proxied(settings: ProxySettings | undefined): settings is ProxySettings {
  return settings !== undefined && (settings.http !== undefined || settings.https !== undefined);
}

/**
 * A dispatcher with these Agent options, through the proxy in use (or `settings`) when there is
 * one. Its owner closes it, as it did its Agent.
 */
export function createDispatcher(options: Agent.Options = {}, settings = current): Dispatcher {
  if (!proxied(settings)) return new Agent(options);
  return new EnvHttpProxyAgent({
    ...options,
    // Empty strings, not undefined: undici would fall back to process.env.
    httpProxy: settings.http === undefined ? '' : proxyOrigin(settings.http),
    httpsProxy: settings.https === undefined ? '' : proxyOrigin(settings.https),
    noProxy: settings.noProxy,
    proxyTunnel: false,
  });
}

/**
 * A proxy URL as undici takes it: scheme, credentials (as written, still percent-encoded, which
 * undici decodes for `Proxy-Authorization`), host and port, with the path `/` and no query or
 * fragment.
 */
export function proxyOrigin(url: string): string {
  const u = new URL(url);
  u.pathname = '/';
  u.search = '';
  u.hash = '';
  return u.href;
}

/** `scheme://host:port` of a proxy URL: what may be logged of it (never its credentials or path). */
export function proxyLabel(url: string): string {
  try {
    const u = new URL(url);
    const port = u.port || (u.protocol === 'https:' ? '443' : '80');
    return `${u.protocol}//${u.hostname}:${port}`;
  } catch {
    return '(invalid)';
  }
}

/** The proxy settings as they may be logged, or undefined when there is no proxy. */
export function describeProxy(
  settings: ProxySettings | undefined,
): { http_proxy: string | null; https_proxy: string | null; no_proxy: string | null } | undefined {
  if (!proxied(settings)) return undefined;
  return {
    http_proxy: settings.http === undefined ? null : proxyLabel(settings.http),
    https_proxy: settings.https === undefined ? null : proxyLabel(settings.https),
    no_proxy: settings.noProxy === '' ? null : settings.noProxy,
  };
}

/** Where a URL's requests go, as a dispatcher's `request` takes it. */
export interface RequestTarget {
  origin: string;
  /** The path and the query. */
  path: string;
}

/**
 * `url` as a dispatcher's `request({ origin, path })` takes it: what `undici.request(url)` parses
 * at every call, parsed once by a caller that sends to the same URL again and again. Credentials
 * in the URL are not part of it (undici does not send them either): see `basicAuthorization`.
 */
export function requestTarget(url: string): RequestTarget {
  const u = new URL(url);
  return { origin: u.origin, path: `${u.pathname}${u.search}` };
}

/**
 * The `Authorization` header a URL's credentials (`https://user:password@host/…`) stand for, as
 * curl sends them: HTTP Basic of the user and password with each `%XX` decoded to its byte (so an
 * escape that is not UTF-8, `%E4`, is the byte 0xE4, and a `%` not followed by two hex digits
 * stays as written). Undefined without credentials.
 */
export function basicAuthorization(url: string): string | undefined {
  const u = new URL(url);
  if (u.username === '' && u.password === '') return undefined;
  // The URL parser leaves only ASCII here (anything else it percent-encodes as UTF-8).
  const bytes = (part: string) =>
    Buffer.from(
      part.replace(/%([0-9a-fA-F]{2})/g, (_escape, hex: string) =>
        String.fromCharCode(Number.parseInt(hex, 16)),
      ),
      'latin1',
    );
  const credentials = Buffer.concat([bytes(u.username), Buffer.from(':'), bytes(u.password)]);
  return `Basic ${credentials.toString('base64')}`;
}
