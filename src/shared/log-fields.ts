/**
 * The first line of defence against secrets in logs: fields censored by their name, whatever a
 * call site puts in them. (The second, `Redactor` in redact.ts, then replaces every known secret
 * value wherever it is in the finished line.)
 *
 * pino's `redact` option did this from a list of paths, but its implementation parses every path
 * again for every object-valued field of every line: ~10 µs a line, a twentieth of what the daemon
 * spends on an export that finishes. This walks the fields once, and copies only what it censors.
 */

import { REDACTED } from './redact.js';

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

/**
 * How deep fields are looked at: a line's own fields, theirs, and theirs again (`headers` inside
 * an error, say). Deeper values are logged as they are: call sites log flat objects.
 */
const LEVELS = 3;

/**
 * `fields` with every field named in `SECRET_FIELDS` censored, in the first `LEVELS` levels of
 * plain objects and errors. Arrays, buffers and instances of other classes are not looked into
 * (a class's fields could be read through getters, or be what a serializer needs as they are):
 * the `Redactor` still replaces every known secret value in them. The argument is never changed:
 * what holds a censored field is copied (an error keeps its prototype, message and stack), and
 * `fields` itself is returned when nothing is censored.
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
      copy[key] = REDACTED;
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

/**
 * A copy of the object's own properties, each a plain writable value (an accessor as it reads
 * now), so that censoring one never throws; an error keeps its prototype. An error whose
 * prototype reads state the copy lacks (a DOMException's message) is copied as a plain Error with
 * its name, message, stack and fields.
 */
function shallowCopy(source: Record<string, unknown>): Record<string, unknown> {
  const proto = Object.getPrototypeOf(source);
  if (proto === Object.prototype) return { ...source };
  const descriptors: PropertyDescriptorMap = {};
  for (const [key, d] of Object.entries(Object.getOwnPropertyDescriptors(source))) {
    const value = 'value' in d ? d.value : source[key];
    descriptors[key] = { value, writable: true, enumerable: d.enumerable ?? false, configurable: true };
  }
  const copy = Object.create(proto, descriptors) as Record<string, unknown>;
  if (source instanceof Error) {
    try {
      void (copy as unknown as Error).message;
    } catch {
      const plain = Object.assign(new Error(source.message), { ...source }) as Error;
      plain.name = source.name;
      plain.stack = source.stack ?? `${source.name}: ${source.message}`;
      return plain as unknown as Record<string, unknown>;
    }
  }
  return copy;
}
