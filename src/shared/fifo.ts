/**
 * A FIFO of intrusive links: circular, doubly linked, behind a sentinel. Appending, removing and
 * taking the first entry are O(1) and allocate nothing.
 *
 * An unlinked entry points at itself, never at its former neighbours. V8's young collections
 * treat every pointer from an old object to a young one as a root, whether the old object is
 * still reachable or not: a dead entry that reached the old generation and still pointed at the
 * next one would keep that one (and all it holds) alive, and so on down the line, until the next
 * full collection. (A `Set` used as a queue does the same through the tables it leaves behind
 * when it rehashes.)
 */

/** A link of a circular list. A lone link points at itself: unlinking it again is harmless. */
export class Link {
  prev: Link = this;
  next: Link = this;
}

/** Whether a link is in a list. */
export function isLinked(link: Link): boolean {
  return link.next !== link;
}

/** Removes a link from whichever list holds it. */
export function unlink(link: Link): void {
  link.prev.next = link.next;
  link.next.prev = link.prev;
  link.prev = link;
  link.next = link;
}

/** A FIFO of links behind one sentinel. */
export class Fifo<T extends Link> {
  readonly #sentinel = new Link();

  push(entry: T): void {
    const last = this.#sentinel.prev;
    entry.prev = last;
    entry.next = this.#sentinel;
    last.next = entry;
    this.#sentinel.prev = entry;
  }

  first(): T | undefined {
    return this.after(this.#sentinel);
  }

  isEmpty(): boolean {
    return this.#sentinel.next === this.#sentinel;
  }

  after(link: Link): T | undefined {
    return link.next === this.#sentinel ? undefined : (link.next as T);
  }

  /** Puts `entries` (unlinked) at the head, in their order. */
  pushFront(entries: readonly T[]): void {
    let at: Link = this.#sentinel;
    for (const entry of entries) {
      entry.prev = at;
      entry.next = at.next;
      at.next.prev = entry;
      at.next = entry;
      at = entry;
    }
  }
}
