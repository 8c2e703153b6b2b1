/**
 * The one place that keeps secrets out of what the watcher writes: every log line passes through
 * `Redactor.scrub` as its last step (see log.ts), and so does every line the CLI prints about an
 * error. Two rules, applied to the finished text rather than to each call site:
 *
 * 1. Every URL loses its credentials (`user:pass@`), its query string and its fragment:
 *    `https://u:p@host/v2?token=x#f` is written `https://host/v2`. A platform's error message, a
 *    configured endpoint or an undici error that names a URL are all covered, wherever they sit.
 * 2. Every known secret value (the platform token, the webhook secret and its key, the API token,
 *    passwords and query values of configured URLs) is replaced by `[redacted]` wherever it
 *    appears, also when it is JSON-escaped inside a log line.
 *
 * pino's `redact` paths stay as the first line of defence (fields named `token`, `authorization`
 * ...); this catches what reaches a message, an error text or an echoed body.
 */

export const REDACTED = '[redacted]';

/** Shorter values are not scrubbed from text: replacing "ab" everywhere would wreck every line. */
export const MIN_SECRET_LENGTH = 6;

/**
 * A URL: scheme, optional userinfo, host, path; then an optional query and fragment. Kept: the
 * scheme, the host and the path; the userinfo, query and fragment are dropped. Stops at
 * whitespace, quotes, backslashes (JSON escapes) and angle brackets.
 * - The userinfo runs to the last `@` before the path, and may hold a raw `?` or `#` (a password
 *   typed unencoded: `https://u:pa#ss@host`), so such a password is never read as the host.
 * - After a userinfo, the host is only what a host can be made of (letters, digits, `.-_~%:[]`,
 *   non-ASCII letters), and whatever follows it before the path (`&token=x` after a misread `@`)
 *   is dropped. Without one, the text up to the path stays as it was (`https://host;` in prose).
 * A query holding `@` right after the host (`https://h?a=b@c&t=x`) therefore reads as userinfo
 * and shows as `https://c`: the wrong host, never the query.
 */
export const URL_PATTERN =
  /\b([a-zA-Z][a-zA-Z0-9+.-]*:\/\/)([^\s"'\\<>/]*@)?([A-Za-z0-9._~%:[\]\u00a0-\uffff-]*)([^\s"'\\<>/?#]*)((?:\/[^\s"'\\<>?#]*)?)(?:\?(?:[^\s"'\\<>#]|\\.)*)?(?:#[^\s"'\\<>]*)?/g;

/** `URL_PATTERN` matched at one position only (sticky): see `safeUrl`. */
const URL_AT = new RegExp(URL_PATTERN.source, 'y');
const SCHEME_CHAR = /[a-zA-Z0-9+.-]/;
const LETTER = /[a-zA-Z]/;
const WORD_CHAR = /\w/;

/**
 * `https://u:p@host/path?q#f` → `https://host/path`; text that is not a URL is returned scrubbed the same way.
 *
 * The same matches as `text.replace(URL_PATTERN, ...)`, found in time linear in the text. Left to
 * the regex engine, a scheme is tried at every word boundary, each try running to the end of its
 * run of scheme characters: a line holding `a.a.a.…` (a platform's state string, say) cost time
 * quadratic in its length (seconds for 100 KB, hours for a few MB) with the event loop held. So a
 * match is only tried where one can start: for each `://`, at the first word boundary before a
 * letter in the run of scheme characters that ends there (a later start in the same run ends at
 * the same place, so the regex could match nowhere earlier).
 */
export function safeUrl(text: string): string {
  let out = '';
  let done = 0;
  let from = 0;
  for (;;) {
    const sep = text.indexOf('://', from);
    if (sep < 0) break;
    from = sep + 1;
    let start = sep;
    // A match ends before a character that is not a scheme character: no run crosses `done`.
    while (start > done && SCHEME_CHAR.test(text[start - 1] as string)) start--;
    let at = -1;
    for (let i = start; i < sep; i++) {
      if (LETTER.test(text[i] as string) && (i === 0 || !WORD_CHAR.test(text[i - 1] as string))) {
        at = i;
        break;
      }
    }
    if (at < 0) continue;
    URL_AT.lastIndex = at;
    const m = URL_AT.exec(text);
    if (!m) continue;
    const [all, scheme, userinfo, host, rest, path] = m as unknown as [
      string,
      string,
      string | undefined,
      string,
      string,
      string,
    ];
    out += `${text.slice(done, at)}${scheme}${host}${userinfo === undefined ? rest : ''}${path}`;
    done = at + all.length;
    from = Math.max(from, done);
  }
  return done === 0 ? text : out + text.slice(done);
}

/**
 * Secret-looking parts of a URL: its password, its username, and its query values. Of a value that
 * does not parse (a mistyped `https//user:password@host`), what stands before its last "@", after
 * whatever scheme and slashes were typed, and each part of it.
 */
export function urlSecrets(url: string): string[] {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    const at = url.lastIndexOf('@');
    if (at <= 0) return [];
    const userinfo = url.slice(0, at).replace(/^.*\//, '');
    return [userinfo, ...userinfo.split(':')];
  }
  const found: string[] = [];
  for (const part of [u.password, u.username]) {
    if (part) found.push(part, safeDecode(part));
  }
  for (const [, value] of u.searchParams) found.push(value, encodeURIComponent(value));
  return found;
}

export class Redactor {
  /** Longest first, so a secret that contains another is replaced whole. */
  #secrets: string[] = [];

  constructor(secrets: Iterable<string | undefined> = []) {
    this.add(secrets);
  }

  /** Adds values to scrub; short or empty ones are ignored (see MIN_SECRET_LENGTH). */
  add(secrets: Iterable<string | undefined>): void {
    const all = new Set(this.#secrets);
    for (const s of secrets) {
      if (s === undefined || s.length < MIN_SECRET_LENGTH) continue;
      all.add(s);
      // As it appears inside a JSON string (a log line), when escaping changes it.
      const escaped = JSON.stringify(s).slice(1, -1);
      if (escaped !== s) all.add(escaped);
    }
    this.#secrets = [...all].sort((a, b) => b.length - a.length);
  }

  get size(): number {
    return this.#secrets.length;
  }

  /** The text with URLs stripped of credentials and queries, and known secrets replaced. */
  scrub(text: string): string {
    let out = text.includes('://') ? safeUrl(text) : text;
    for (const secret of this.#secrets) {
      if (out.includes(secret)) out = out.split(secret).join(REDACTED);
    }
    return out;
  }
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/**
 * Whether `text` has an "@" that its parse `u` did not take for the end of credentials: they were
 * read as the host, port or path (`htps:///user:pw@host`, `https://user:12/pw@host`), where they
 * would be shown. So is an "@" after the credentials it did take (a password "p@ss/word"
 * unencoded: `ss` read as the host, `/word@host` as the path).
 */
export function credentialsMisread(text: string, u: URL): boolean {
  return (
    text.includes('@') &&
    ((u.username === '' && u.password === '') || /@/.test(u.pathname + u.search + u.hash))
  );
}

/**
 * A URL variable's value for a problem line. A URL that parses is shown without its credentials,
 * query and fragment. One that does not cannot be scrubbed reliably (a password holding a "/",
 * or a value cut at a "," or a "#" that leaves "https://user:password"), so only its scheme is
 * shown; without a scheme it is shown unless it holds an "@", "?" or "#".
 */
export function shownUrl(value: string): string {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(value)?.[0];
  if (scheme === undefined) {
    // Not a URL to scrub, yet with what could be credentials or a query in it.
    return /[@?#]/.test(value)
      ? `a value of ${value.length} characters that is not a URL (hidden: it may hold credentials)`
      : JSON.stringify(value);
  }
  const unparsed = `a value of ${value.length} characters starting with ${JSON.stringify(scheme)} that is not a URL (the rest hidden: it may hold credentials)`;
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    return unparsed;
  }
  if (credentialsMisread(value, u)) return unparsed;
  // Built from the parsed URL: a text scrubber may stop short of where the parser went on.
  if (u.username === '' && u.password === '' && u.search === '' && u.hash === '' && !/[@?#]/.test(value)) {
    return JSON.stringify(value);
  }
  const path = u.pathname === '/' ? '' : u.pathname;
  return `${JSON.stringify(`${u.protocol}//${u.host}${path}`)} (credentials, query and fragment hidden)`;
}
