import { describe, expect, it } from 'vitest';
import { clipText, forLog, LOG_VALUE_BUDGET, MAX_LOG_TEXT } from '../src/shared/log-value.js';

describe('clipText', () => {
  it('keeps a short text and cuts a long one, saying how long it was', () => {
    expect(clipText('abc')).toBe('abc');
    expect(clipText('x'.repeat(MAX_LOG_TEXT))).toBe('x'.repeat(MAX_LOG_TEXT));
    expect(clipText('x'.repeat(MAX_LOG_TEXT + 1))).toBe(
      `${'x'.repeat(MAX_LOG_TEXT)}… (${MAX_LOG_TEXT + 1} characters)`,
    );
    expect(clipText('abcdef', 3)).toBe('abc… (6 characters)');
  });
});

describe('forLog', () => {
  it('returns a small value as it is', () => {
    const value = { status: 500, code: 9107, message: 'export failed', more: [1, null, true, 'x'] };
    expect(forLog(value)).toEqual(value);
    expect(forLog(null)).toBeNull();
    expect(forLog('short')).toBe('short');
  });

  it('clips each string and each key', () => {
    const key = 'k'.repeat(300);
    const shown = forLog({ [key]: 'v'.repeat(300) }) as Record<string, string>;
    const [[k, v]] = Object.entries(shown) as [[string, string]];
    expect(k).toBe(clipText(key));
    expect(v).toBe(clipText('v'.repeat(300)));
  });

  it('shows about the budget of a value with many fields, and counts the rest', () => {
    const many = Object.fromEntries(Array.from({ length: 50_000 }, (_, i) => [`k${i}`, `value ${i}`]));
    const shown = forLog(many) as Record<string, unknown>;
    const text = JSON.stringify(shown);
    expect(text.length).toBeLessThan(LOG_VALUE_BUDGET + 2 * MAX_LOG_TEXT);
    const left = shown['…'] as string;
    expect(left).toMatch(/^\d+ more fields$/);
    expect(Object.keys(shown).length - 1 + Number.parseInt(left, 10)).toBe(50_000);
  });

  it('counts empty arrays and objects, and long numbers, against the budget', () => {
    // Not one character of string or key: each `[]` or `{}` still takes room in the line.
    for (const filler of [() => [], () => ({}), () => 0.12345678901234566]) {
      const shown = forLog({ details: Array.from({ length: 100_000 }, filler) });
      expect(JSON.stringify(shown).length).toBeLessThan(LOG_VALUE_BUDGET + 2 * MAX_LOG_TEXT);
    }
  });

  it('counts the items of a long array past the budget', () => {
    const shown = forLog(Array.from({ length: 10_000 }, (_, i) => `item ${i}`)) as string[];
    const last = shown.at(-1) as string;
    expect(last).toMatch(/^… \(\d+ more items\)$/);
    expect(shown.length - 1 + Number.parseInt(last.slice(3), 10)).toBe(10_000);
  });

  it('stops at six levels', () => {
    let deep: unknown = 'bottom';
    for (let i = 0; i < 20; i++) deep = { d: deep };
    let node = forLog(deep);
    let levels = 0;
    while (node !== null && typeof node === 'object') {
      node = (node as { d: unknown }).d;
      levels++;
    }
    expect(levels).toBe(6);
    expect(node).toBe('(object)');
  });

  it("keeps a key named __proto__ as a plain field, never as the copy's prototype", () => {
    const hostile = JSON.parse('{"__proto__": {"polluted": true}, "a": 1}') as unknown;
    const shown = forLog(hostile) as Record<string, unknown>;
    expect(Object.getPrototypeOf(shown)).toBe(Object.prototype);
    expect(Object.keys(shown)).toEqual(['__proto__', 'a']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('leaves the value it was given unchanged', () => {
    const value = { message: 'm'.repeat(5_000), list: Array.from({ length: 500 }, (_, i) => i) };
    const before = JSON.stringify(value);
    forLog(value);
    expect(JSON.stringify(value)).toBe(before);
  });
});
