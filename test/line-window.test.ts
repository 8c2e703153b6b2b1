import { describe, expect, it } from 'vitest';
import { LineWindow } from '../src/shared/line-window.js';

describe('LineWindow', () => {
  it('lets the first lines of a window out at warn, holds the rest, and says them when it ends', () => {
    const w = new LineWindow<string>(2, 1000);
    expect(w.take(0)).toEqual({ warn: true, ended: undefined });
    expect(w.take(10)).toEqual({ warn: true, ended: undefined });
    expect(w.take(20).warn).toBe(false);
    w.hold(20, 3, 'a');
    expect(w.take(999).warn).toBe(false);
    w.hold(999, 4, 'b');
    // The next line after the window: the held ones first, then a fresh window at warn.
    expect(w.take(1000)).toEqual({ warn: true, ended: { lines: 2, count: 7, from: 0, to: 999, last: 'b' } });
    expect(w.flush()).toBeUndefined();
  });

  it('opens the next window at the first line after the last ended, not on a fixed grid', () => {
    const w = new LineWindow<null>(1, 1000);
    w.take(0);
    expect(w.take(5000).warn).toBe(true);
    expect(w.take(5999).warn).toBe(false);
    expect(w.take(6000).warn).toBe(true);
  });

  it('opens a new window when the clock steps back, rather than holding lines until it catches up', () => {
    const w = new LineWindow<null>(1, 60_000);
    w.take(100_000);
    expect(w.take(100_001).warn).toBe(false);
    w.hold(100_001, 1, null);
    expect(w.take(50_000)).toEqual({
      warn: true,
      ended: { lines: 1, count: 1, from: 100_000, to: 100_001, last: null },
    });
  });

  it('flush gives what is held once, for a close or a condition that ended', () => {
    const w = new LineWindow<number>(1, 1000);
    w.take(0);
    w.take(1);
    w.hold(1, 1, 7);
    expect(w.flush()).toEqual({ lines: 1, count: 1, from: 0, to: 1, last: 7 });
    expect(w.flush()).toBeUndefined();
  });

  it('refuses a window that would hold every line back', () => {
    expect(() => new LineWindow(0, 1000)).toThrow(TypeError);
    expect(() => new LineWindow(1, 0)).toThrow(TypeError);
  });
});
