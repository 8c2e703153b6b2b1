/**
 * The intrusive FIFO behind the due order, the limiter's line of waiting calls and the abort
 * callbacks of a long-lived signal: order, removal anywhere, and a removed entry that keeps no
 * pointer to its former neighbours (what keeps young collections from holding on to them).
 */
import { describe, expect, it } from 'vitest';
import { Fifo, isLinked, Link, unlink } from '../src/shared/fifo.js';

class Item extends Link {
  constructor(readonly name: string) {
    super();
  }
}

function names(fifo: Fifo<Item>): string[] {
  const out: string[] = [];
  for (let at = fifo.first(); at !== undefined; at = fifo.after(at)) out.push(at.name);
  return out;
}

describe('Fifo', () => {
  it('keeps entries in the order pushed, and takes any of them out in O(1)', () => {
    const fifo = new Fifo<Item>();
    const [a, b, c] = [new Item('a'), new Item('b'), new Item('c')];
    expect(fifo.isEmpty()).toBe(true);
    expect(fifo.first()).toBeUndefined();
    for (const item of [a, b, c]) fifo.push(item);
    expect(names(fifo)).toEqual(['a', 'b', 'c']);
    unlink(b);
    expect(names(fifo)).toEqual(['a', 'c']);
    unlink(a);
    expect(fifo.first()).toBe(c);
    unlink(c);
    expect(fifo.isEmpty()).toBe(true);
  });

  it('leaves a removed entry pointing at nothing but itself, so removing it again is harmless', () => {
    const fifo = new Fifo<Item>();
    const [a, b, c] = [new Item('a'), new Item('b'), new Item('c')];
    for (const item of [a, b, c]) fifo.push(item);
    expect(isLinked(b)).toBe(true);
    unlink(b);
    expect(isLinked(b)).toBe(false);
    expect(b.next).toBe(b);
    expect(b.prev).toBe(b);
    unlink(b);
    expect(names(fifo)).toEqual(['a', 'c']);
    // Pushed again, it goes to the tail.
    fifo.push(b);
    expect(names(fifo)).toEqual(['a', 'c', 'b']);
  });

  it('puts entries at the head in their order', () => {
    const fifo = new Fifo<Item>();
    fifo.push(new Item('c'));
    fifo.pushFront([new Item('a'), new Item('b')]);
    expect(names(fifo)).toEqual(['a', 'b', 'c']);
  });
});
