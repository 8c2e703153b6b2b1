/**
 * Values from outside (a platform answer) as a log line may carry them: bounded whatever came. A
 * platform answer is read up to 8 MiB; a log line that quotes a state, an id or an error body from
 * it must not be that long, once per call (every poll). Whole values are stored and sent on; only
 * what is logged is cut.
 */

/** The most characters of one string from outside in a log line. */
export const MAX_LOG_TEXT = 200;
/** Roughly the most characters a value from outside adds to a log line (strings and keys). */
export const LOG_VALUE_BUDGET = 2048;
/** The deepest a value from outside is shown in a log line. */
const MAX_LOG_DEPTH = 6;

/** `text`, or its first `max` characters and how long it was. */
export function clipText(text: string, max = MAX_LOG_TEXT): string {
  return text.length <= max ? text : `${text.slice(0, max)}… (${text.length} characters)`;
}

/**
 * A copy of `value` for a log line: strings clipped, and at most about `budget` characters of
 * strings and keys in all (past it, what is left of an object or array is counted, not shown).
 * Iterates only as far as it shows, so a value of many thousands of fields costs little.
 */
export function forLog(value: unknown, budget = LOG_VALUE_BUDGET): unknown {
  const left = { chars: budget };
  return bounded(value, 0, left);
}

function bounded(value: unknown, depth: number, left: { chars: number }): unknown {
  if (typeof value === 'string') {
    const text = clipText(value, Math.max(0, Math.min(MAX_LOG_TEXT, left.chars)));
    left.chars -= text.length + 2;
    return text;
  }
  if (value === null || typeof value !== 'object') {
    // What it takes in the line (a number may take 24 characters), and a separator.
    left.chars -= (typeof value === 'number' || typeof value === 'boolean' ? String(value).length : 4) + 1;
    return value;
  }
  if (depth >= MAX_LOG_DEPTH) {
    left.chars -= 10;
    return Array.isArray(value) ? '(array)' : '(object)';
  }
  // Its brackets and a separator: an empty array or object holds no string or key, yet a value
  // of many of them would otherwise be shown whole.
  left.chars -= 3;
  if (Array.isArray(value)) {
    const out: unknown[] = [];
    for (let i = 0; i < value.length; i++) {
      if (left.chars <= 0) {
        out.push(`… (${value.length - i} more items)`);
        break;
      }
      out.push(bounded(value[i], depth + 1, left));
    }
    return out;
  }
  const out: Record<string, unknown> = {};
  const keys = Object.keys(value);
  for (let i = 0; i < keys.length; i++) {
    if (left.chars <= 0) {
      out['…'] = `${keys.length - i} more fields`;
      break;
    }
    const key = keys[i] as string;
    const shown = clipText(key, Math.max(1, Math.min(MAX_LOG_TEXT, left.chars)));
    left.chars -= shown.length + 3;
    Object.defineProperty(out, shown, {
      value: bounded((value as Record<string, unknown>)[key], depth + 1, left),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}
