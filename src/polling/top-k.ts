/**
 * The `k` smallest of many items, in order, without sorting them all: a bounded max-heap makes it
 * O(n log k). The scheduler picks the longest-unchecked exports with it, and the control API a
 * page of records; both pick a few hundred or thousand out of up to hundreds of thousands.
 */

/**
 * The `k` smallest items by `before` (a strict "comes first"), ascending. Items that neither
 * comes before keep their input order.
 */
export function smallestK<T>(items: Iterable<T>, k: number, before: (a: T, b: T) => boolean): T[] {
  if (k <= 0) return [];
  // Entries carry their input position, which breaks ties so the result is stable.
  type Entry = { item: T; at: number };
  const after = (x: Entry, y: Entry): boolean =>
    before(y.item, x.item) || (!before(x.item, y.item) && x.at > y.at);
  // The root is the entry that would be dropped first: the largest, latest.
  const heap: Entry[] = [];
  const swap = (i: number, j: number) => {
    const t = heap[i] as Entry;
    heap[i] = heap[j] as Entry;
    heap[j] = t;
  };
  const siftUp = (i: number) => {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!after(heap[i] as Entry, heap[parent] as Entry)) return;
      swap(i, parent);
      i = parent;
    }
  };
  const siftDown = (i: number) => {
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let top = i;
      if (left < heap.length && after(heap[left] as Entry, heap[top] as Entry)) top = left;
      if (right < heap.length && after(heap[right] as Entry, heap[top] as Entry)) top = right;
      if (top === i) return;
      swap(i, top);
      i = top;
    }
  };
  let at = 0;
  for (const item of items) {
    const entry = { item, at: at++ };
    if (heap.length < k) {
      heap.push(entry);
      siftUp(heap.length - 1);
    } else if (after(heap[0] as Entry, entry)) {
      heap[0] = entry;
      siftDown(0);
    }
  }
  return heap.sort((a, b) => (after(a, b) ? 1 : -1)).map((e) => e.item);
}
