/**
 * Credentials profiles, read as the official Python client (sevenbridges-python) reads them: the
 * INI file `~/.sevenbridges/credentials`, one section per profile, each with `api_endpoint` and
 * `auth_token`:
 *
 * ```ini
 * [default]
 * api_endpoint = https://api.sbgenomics.com/v2
 * auth_token = 0123456789abcdef0123456789abcdef
 *
 * [cgc]
 * api_endpoint = https://cgc-api.sbgenomics.com/v2
 * auth_token = ...
 * ```
 *
 * The file is parsed with the `ini` package; what its dialect does differently from Python's
 * `configparser` for these files is smoothed over here: keys are matched case-insensitively,
 * `key: value` is read like `key = value`, a `[DEFAULT]` section gives its keys to every other
 * section (and is no profile itself), and dotted section names (`[cgc.prod]`) stay whole.
 *
 * Only the choice of the values is here; config.ts validates them like the variables they stand
 * for. Every problem is one line starting `SB_PROFILE:`, naming the file, the section and the key.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decode } from 'ini';
import { isPlainObject } from '../shared/values.js';

/** Where the file is, under the home directory (as `os.path.expanduser('~')` finds it). */
export const CREDENTIALS_PATH = ['.sevenbridges', 'credentials'] as const;

/** The section used when SB_PROFILE is not set. */
export const DEFAULT_PROFILE = 'default';

/** configparser's section of defaults for every other section. */
const DEFAULTS_SECTION = 'DEFAULT';

export function credentialsFile(home: string): string {
  return join(home, ...CREDENTIALS_PATH);
}

/** A profile's keys (lower case) and their values. */
export type Section = Readonly<Record<string, string>>;

/**
 * The sections of a credentials file, by name, in file order. Keys are lower-cased, values
 * trimmed; a key without a value (or `true`, `false`, `null`, which `ini` turns into those values)
 * is an empty string.
 */
export function parseCredentials(text: string): Map<string, Section> {
  const { text: normalized, names, continued } = normalize(text);
  const tree = decode(normalized) as Record<string, unknown>;
  const sections = new Map<string, Record<string, string>>();
  // Each header comes back under its placeholder (`s<n>`, in file order); a name given twice is one
  // section, its keys together, as configparser reads it when not strict.
  names.forEach((name, n) => {
    const node = tree[`s${n}`];
    const values: Record<string, string> = {};
    if (isPlainObject(node)) {
      for (const [key, value] of Object.entries(node)) values[key.trim().toLowerCase()] = scalar(value);
    }
    // A value continued on deeper-indented lines holds them, one a line, as configparser joins them
    // (blank lines inside included, trailing ones dropped: configparser rstrips the joined value).
    const joined = new Set<string>();
    for (const c of continued) {
      if (c.section === n && Object.hasOwn(values, c.key)) {
        values[c.key] = `${values[c.key]}\n${c.text}`;
        joined.add(c.key);
      }
    }
    for (const key of joined) values[key] = (values[key] as string).trimEnd();
    sections.set(name, values);
  });

  const defaults = sections.get(DEFAULTS_SECTION);
  sections.delete(DEFAULTS_SECTION);
  if (defaults) for (const [name, values] of sections) sections.set(name, { ...defaults, ...values });
  return sections;
}

/**
 * The file's text as `ini` reads it the way configparser would: without a byte-order mark, with
 * `key: value` written `key = value` (configparser splits a line at its first `=` or `:`), and a
 * section header as configparser takes it, indented or not, up to its last `]`, whatever follows
 * (`[cgc] # production`), where `ini` would take such a line for a key of the section before; but
 * not a line indented deeper than the key before it, which continues that key's value.
 *
 * Every header is written as a placeholder `[s<n>]` (`names[n]` is its name, trimmed): `ini` would
 * cut a name at a `;` or `#`, unquote it, split it at its dots, and not take a name holding a `]`
 * for a header at all, which would put that section's keys in the section before it. Lines before
 * the first header belong to no section (configparser refuses them) and are left out.
 */
function normalize(text: string): {
  text: string;
  names: string[];
  continued: { section: number; key: string; text: string }[];
} {
  const names: string[] = [];
  const continued: { section: number; key: string; text: string }[] = [];
  // The indentation of the last key line: a line indented deeper continues its value (configparser),
  // even one that starts with "[". It is left out of what `ini` reads (which would take it for a key
  // of its own) and added to that value afterwards.
  let keyIndent: number | undefined;
  let lastKey: { section: number; key: string } | undefined;
  let inSection = false;
  let section = -1;
  const lines = text
    .replace(/^\uFEFF/, '')
    .split(/\r?\n|\r/)
    .map((line) => {
      const indent = line.length - line.trimStart().length;
      if (line.trim() === '') {
        // An empty line inside a value is kept in it (configparser's empty_lines_in_values).
        if (inSection && lastKey !== undefined) continued.push({ ...lastKey, text: '' });
        return inSection ? line : '';
      }
      // A comment line, however indented, is skipped and ends nothing (configparser).
      if (inSection && /^\s*[;#]/.test(line)) return '';
      if (keyIndent !== undefined && indent > keyIndent) {
        if (lastKey !== undefined) continued.push({ ...lastKey, text: line.trim() });
        return '';
      }
      keyIndent = undefined;
      lastKey = undefined;
      const header = /^\s*\[(.+)\]/.exec(line)?.[1];
      if (header !== undefined) {
        const name = header.trim();
        let n = names.indexOf(name);
        if (n < 0) n = names.push(name) - 1;
        section = n;
        inSection = true;
        return `[s${n}]`;
      }
      if (!inSection) return '';
      // A "[" line that is no header goes to the parser as it is (comment lines were skipped above).
      if (/^\s*\[/.test(line)) return line;
      keyIndent = indent;
      const colon = line.indexOf(':');
      const equals = line.indexOf('=');
      const at = colon > 0 && (equals < 0 || colon < equals) ? colon : equals;
      const key = (at < 0 ? line : line.slice(0, at)).trim().toLowerCase();
      // A key given again replaces its value, continuation lines and all (configparser, not strict).
      for (let i = continued.length - 1; i >= 0; i--) {
        const c = continued[i];
        if (c !== undefined && c.section === section && c.key === key) continued.splice(i, 1);
      }
      lastKey = { section, key };
      return at < 0 ? line : `${line.slice(0, at)}=${iniValue(line.slice(at + 1))}`;
    });
  return { text: lines.join('\n'), names, continued };
}

/**
 * A value as `ini` is to read it: a ";" or "#" inside it (`abc;def`, as a token may hold) is kept,
 * as configparser keeps it, where `ini` would cut the value there; one after a space or tab still
 * starts a comment (`cgc   # a preset name`). Backslashes are doubled (`ini` halves them). A
 * quoted value is left to `ini`, which unquotes it.
 */
function iniValue(text: string): string {
  const v = text.trim();
  if (v.length >= 2 && (v[0] === '"' || v[0] === "'") && v.at(-1) === v[0]) return text;
  return text.replace(/\\/g, '\\\\').replace(/(?<=\S)[;#]/g, '\\$&');
}

function scalar(value: unknown): string {
  if (typeof value === 'string') return value.trim();
  if (Array.isArray(value)) return scalar(value.at(-1));
  return '';
}

export interface ProfileRequest {
  /** SB_PROFILE, or undefined when it is not set. */
  name: string | undefined;
  /** The directory that holds `.sevenbridges`; undefined when the user has none. */
  home: string | undefined;
  /** SB_API_ENDPOINT is set: it wins over the profile's `api_endpoint`. */
  endpointGiven: boolean;
  /** SB_AUTH_TOKEN is set (or came from $CREDENTIALS_DIRECTORY): it wins over `auth_token`. */
  tokenGiven: boolean;
  /** The command needs a token (`run`, `watch`, `get`). */
  tokenRequired: boolean;
}

export interface Profile {
  /** The section's name. */
  name: string;
  file: string;
  /** Its `api_endpoint` and `auth_token`, when present and not blank. */
  endpoint: string | undefined;
  token: string | undefined;
}

export interface ProfileResult {
  /** The profile whose values are to be used, if any. */
  profile: Profile | undefined;
  /** Configuration problems, one line each; when there are any, `profile` is undefined. */
  problems: string[];
}

/**
 * The profile to take the platform's endpoint and token from, if any. SB_PROFILE names it; without
 * SB_PROFILE, `[default]` is used when neither SB_API_ENDPOINT nor SB_AUTH_TOKEN is set and the
 * file exists. A named profile is always checked, even when both variables are set.
 */
export function resolveProfile(request: ProfileRequest): ProfileResult {
  const explicit = request.name !== undefined;
  if (!explicit && (request.endpointGiven || request.tokenGiven)) return { profile: undefined, problems: [] };
  const name = request.name ?? DEFAULT_PROFILE;
  const fail = (line: string): ProfileResult => ({ profile: undefined, problems: [`SB_PROFILE: ${line}`] });
  if (request.home === undefined) {
    return explicit
      ? fail(
          `expected a home directory holding ${join('~', ...CREDENTIALS_PATH)} with a [${name}] section, got none (HOME is not set and the user has no home directory)`,
        )
      : { profile: undefined, problems: [] };
  }
  const file = credentialsFile(request.home);

  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      return explicit
        ? fail(`expected a credentials file ${file} with a [${name}] section, got no such file`)
        : { profile: undefined, problems: [] };
    }
    const why = explicit
      ? ''
      : ` (its [${DEFAULT_PROFILE}] section is used when SB_PROFILE, SB_API_ENDPOINT and SB_AUTH_TOKEN are unset)`;
    return fail(
      `expected a readable credentials file ${file}${why}, got ${code === 'EISDIR' ? 'a directory' : (code ?? (error as Error).message)}`,
    );
  }

  const sections = parseCredentials(text);
  const section = sections.get(name);
  if (section === undefined) {
    if (!explicit) return { profile: undefined, problems: [] };
    const have = [...sections.keys()].map((s) => `[${s}]`).join(', ');
    return fail(
      `expected a section of ${file} (it has ${have || 'none'}), got ${JSON.stringify(name)}, which it does not have`,
    );
  }

  const value = (key: string): string | undefined => {
    const v = section[key];
    return v === undefined || v === '' ? undefined : v;
  };
  const profile: Profile = { name, file, endpoint: value('api_endpoint'), token: value('auth_token') };
  const problems: string[] = [];
  const missing = (key: string, variable: string) =>
    problems.push(
      `SB_PROFILE: expected ${key} in the [${name}] section of ${file} (or ${variable}), got nothing`,
    );
  if (!request.endpointGiven && profile.endpoint === undefined) missing('api_endpoint', 'SB_API_ENDPOINT');
  if (request.tokenRequired && !request.tokenGiven && profile.token === undefined)
    missing('auth_token', 'SB_AUTH_TOKEN');
  return problems.length > 0 ? { profile: undefined, problems } : { profile, problems };
}

/** How a profile's key is named in a problem line: `api_endpoint in the [cgc] section of FILE`. */
export function profileKey(profile: Profile, key: 'api_endpoint' | 'auth_token'): string {
  return `${key} in the [${profile.name}] section of ${profile.file}`;
}
