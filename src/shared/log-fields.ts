/**
 * The first line of defence against secrets in logs: fields censored by their name, whatever a
 * call site puts in them. (The second, `Redactor` in redact.ts, then replaces every known secret
 * value wherever it is in the finished line.)
 *
 * pino's `redact` option did this from a list of paths, but its implementation parses every path
 * again for every object-valued field of every line: ~10 µs a line, a twentieth of what the daemon
 * spends on an export that finishes. This walks the fields once, and copies only what it censors.
 */

/** Field names whose values are never logged. */
export const SECRET_FIELDS: ReadonlySet<string> = new Set([
  'token',
  'apiToken',
  'api_token',
  'secret',
  'secretKey',
  'authorization',
  'x-sbg-auth-token',
  'webhook-signature',
]);

/** What a censored field holds in the line. */
export const CENSORED = '[redacted]';

/**
 * How deep fields are looked at: a line's own fields, theirs, and theirs again (`headers` inside
 * an error, say). Deeper values are logged as they are: call sites log flat objects.
 */
const LEVELS = 3;

/**
 * `fields` with every field named in `SECRET_FIELDS` censored, in the first `LEVELS` levels of
 * plain objects and errors; arrays, buffers and other objects are not looked into. The argument is
 * never changed: what holds a censored field is copied (an error keeps its prototype, message and
 * stack), and `fields` itself is returned when nothing is censored.
 */
export function censorSecretFields<T extends object>(fields: T): T {
  return censorLevel(fields, 1) as T;
}

function censorLevel(fields: object, level: number): object {
  let copy: Record<string, unknown> | undefined;
  const source = fields as Record<string, unknown>;
  for (const key in source) {
    if (!Object.hasOwn(source, key)) continue;
    const value = source[key];
    if (value === undefined) continue;
    if (SECRET_FIELDS.has(key)) {
      copy ??= shallowCopy(source);
      copy[key] = CENSORED;
      continue;
    }
    if (level >= LEVELS || !isLookedInto(value)) continue;
    const censored = censorLevel(value, level + 1);
    if (censored !== value) {
      copy ??= shallowCopy(source);
      copy[key] = censored;
    }
  }
  return copy ?? fields;
}

function isLookedInto(value: unknown): value is object {
  if (value === null || typeof value !== 'object') return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null || value instanceof Error;
}

/** A copy of the object's own properties; a class instance (an error) keeps its prototype. */
function shallowCopy(source: Record<string, unknown>): Record<string, unknown> {
  const proto = Object.getPrototypeOf(source);
  if (proto === Object.prototype) return { ...source };
  return Object.create(proto, Object.getOwnPropertyDescriptors(source)) as Record<string, unknown>;
}
