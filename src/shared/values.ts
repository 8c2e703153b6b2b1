/**
 * Checks on values parsed from JSON that came from outside (a request body, a platform answer, a
 * daemon's answer, a credentials file), where anything may stand in any place.
 */

/** A JSON object: not null, not an array. */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
