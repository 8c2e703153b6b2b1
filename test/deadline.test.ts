import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { linkedSignal, onAbort, requestSignal } from '../src/shared/deadline.js';

describe('onAbort', () => {
  it('calls each registration once when the signal aborts, in the order registered', () => {
    const controller = new AbortController();
    const calls: string[] = [];
    onAbort(controller.signal, () => calls.push('a'));
    onAbort(controller.signal, () => calls.push('b'));
    controller.abort(new Error('stop'));
    controller.abort(new Error('again'));
    expect(calls).toEqual(['a', 'b']);
  });

  it('does not call a registration that was taken back', () => {
    const controller = new AbortController();
    const calls: string[] = [];
    const off = onAbort(controller.signal, () => calls.push('taken back'));
    onAbort(controller.signal, () => calls.push('kept'));
    off();
    off();
    controller.abort();
    expect(calls).toEqual(['kept']);
  });

  it('the same function registered twice is two registrations', () => {
    const controller = new AbortController();
    const fn = vi.fn();
    const off = onAbort(controller.signal, fn);
    onAbort(controller.signal, fn);
    off();
    controller.abort();
    expect(fn).toHaveBeenCalledTimes(1);
  });

  it('calls at once for a signal that has already aborted', () => {
    const fn = vi.fn();
    onAbort(AbortSignal.abort(), fn);
    expect(fn).toHaveBeenCalledTimes(1);
  });

  it('adds one listener to the signal, however many registrations it holds', () => {
    const controller = new AbortController();
    const add = vi.spyOn(controller.signal, 'addEventListener');
    const offs = Array.from({ length: 1000 }, () => onAbort(controller.signal, () => undefined));
    for (const off of offs) off();
    onAbort(controller.signal, () => undefined);
    expect(add).toHaveBeenCalledTimes(1);
  });
});

describe('signals with a time limit', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  describe.each([
    { name: 'linkedSignal', make: linkedSignal },
    {
      name: 'requestSignal',
      make: (sources: ReadonlyArray<AbortSignal | undefined>, timeoutMs?: number) =>
        requestSignal(sources, timeoutMs ?? 3_600_000),
    },
  ])('$name', ({ make }) => {
    it('aborts with the reason of the first source to abort', () => {
      const a = new AbortController();
      const b = new AbortController();
      const { signal } = make([a.signal, undefined, b.signal]);
      const reason = new Error('b went first');
      b.abort(reason);
      a.abort(new Error('a went second'));
      expect(signal.aborted).toBe(true);
      expect(signal.reason).toBe(reason);
    });

    it('aborts with a TimeoutError when the time limit passes first', () => {
      const source = new AbortController();
      const { signal } = make([source.signal], 1000);
      vi.advanceTimersByTime(999);
      expect(signal.aborted).toBe(false);
      vi.advanceTimersByTime(1);
      expect(signal.aborted).toBe(true);
      expect((signal.reason as DOMException).name).toBe('TimeoutError');
      source.abort(new Error('too late'));
      expect((signal.reason as DOMException).name).toBe('TimeoutError');
    });

    it('once disposed, neither a source nor the time limit aborts it, and no timer is left', () => {
      const source = new AbortController();
      const linked = make([source.signal], 1000);
      expect(vi.getTimerCount()).toBe(1);
      linked.dispose();
      linked.dispose();
      expect(vi.getTimerCount()).toBe(0);
      source.abort();
      vi.advanceTimersByTime(5000);
      expect(linked.signal.aborted).toBe(false);
    });

    it('is aborted from the start when a source already is, with no timer', () => {
      const reason = new Error('already');
      const { signal } = make([new AbortController().signal, AbortSignal.abort(reason)], 1000);
      expect(signal.reason).toBe(reason);
      expect(vi.getTimerCount()).toBe(0);
    });
  });

  describe('requestSignal', () => {
    it("emits 'abort' once, as undici listens for it, and keeps the first reason", () => {
      const source = new AbortController();
      const { signal } = requestSignal([source.signal], 1000);
      const listener = vi.fn(() => signal.reason);
      signal.once('abort', listener);
      const reason = new Error('closing');
      source.abort(reason);
      signal.abort(new Error('again'));
      expect(listener).toHaveBeenCalledTimes(1);
      expect(listener).toHaveReturnedWith(reason);
      expect(signal.reason).toBe(reason);
    });

    it('aborts with the reason given for the time limit', () => {
      const timeout = new Error('no answer within 1000 ms');
      const { signal } = requestSignal([], 1000, () => timeout);
      vi.advanceTimersByTime(1000);
      expect(signal.reason).toBe(timeout);
    });
  });
});
