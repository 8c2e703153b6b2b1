import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { GroupCommit } from '../../src/store/group-commit.js';

/** A commit function that records its batches and can be held open or made to fail. */
function committer() {
  const batches: number[][] = [];
  let hold: Promise<void> | undefined;
  let release: () => void = () => undefined;
  let failWith: Error | undefined;
  return {
    batches,
    holdNext() {
      hold = new Promise<void>((resolve) => {
        release = resolve;
      });
    },
    release: () => release(),
    failNext(error: Error) {
      failWith = error;
    },
    /** One request is a list of numbers; a commit records them flat and answers each with nothing. */
    commit: async (requests: number[][]) => {
      const items = requests.flat();
      batches.push(items);
      const h = hold;
      hold = undefined;
      if (h) await h;
      const e = failWith;
      failWith = undefined;
      if (e) throw e;
      return requests.map(() => undefined);
    },
  };
}

describe('GroupCommit', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('without a delay, what is added in one turn shares one commit, in order', async () => {
    const c = committer();
    const batcher = new GroupCommit(c.commit);
    const done = [batcher.add([1, 2]), batcher.add([3])];
    await vi.advanceTimersByTimeAsync(0);
    await Promise.all(done);
    expect(c.batches).toEqual([[1, 2, 3]]);
  });

  it('with a delay, waits that long after the first item, then commits all that came', async () => {
    const c = committer();
    const batcher = new GroupCommit(c.commit, { delayMs: 100 });
    let settled = 0;
    void batcher.add([1]).then(() => settled++);
    await vi.advanceTimersByTimeAsync(60);
    void batcher.add([2]).then(() => settled++);
    await vi.advanceTimersByTimeAsync(39);
    expect(c.batches).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(c.batches).toEqual([[1, 2]]);
    expect(settled).toBe(2);
  });

  it('commits at once when maxItems are queued, without waiting out the delay', async () => {
    const c = committer();
    const batcher = new GroupCommit(c.commit, {
      delayMs: 10_000,
      maxItems: 3,
      sizeOf: (r: number[]) => r.length,
    });
    void batcher.add([1, 2]);
    await vi.advanceTimersByTimeAsync(0);
    expect(c.batches).toEqual([]);
    void batcher.add([3]);
    await vi.advanceTimersByTimeAsync(0);
    expect(c.batches).toEqual([[1, 2, 3]]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('runs one commit at a time: what comes during one goes into the next', async () => {
    const c = committer();
    const batcher = new GroupCommit(c.commit);
    c.holdNext();
    const first = batcher.add([1]);
    await vi.advanceTimersByTimeAsync(0);
    const second = batcher.add([2]);
    const third = batcher.add([3]);
    await vi.advanceTimersByTimeAsync(0);
    expect(c.batches).toEqual([[1]]);
    c.release();
    await first;
    await vi.advanceTimersByTimeAsync(0);
    await Promise.all([second, third]);
    expect(c.batches).toEqual([[1], [2, 3]]);
  });

  it('a failed commit rejects every caller of that commit, and the next commit goes on', async () => {
    const c = committer();
    const batcher = new GroupCommit(c.commit);
    c.failNext(new Error('disk full'));
    const a = batcher.add([1]);
    const b = batcher.add([2]);
    const results = Promise.allSettled([a, b]);
    await vi.advanceTimersByTimeAsync(0);
    expect((await results).map((r) => r.status)).toEqual(['rejected', 'rejected']);
    const c3 = batcher.add([3]);
    await vi.advanceTimersByTimeAsync(0);
    await expect(c3).resolves.toBeUndefined();
    expect(c.batches).toEqual([[1, 2], [3]]);
  });

  it('flush() commits what is queued without waiting out the delay, after the commit under way', async () => {
    const c = committer();
    const batcher = new GroupCommit(c.commit, { delayMs: 10_000 });
    c.holdNext();
    void batcher.add([1]);
    batcher.flush();
    await vi.advanceTimersByTimeAsync(0);
    expect(c.batches).toEqual([[1]]);
    void batcher.add([2]);
    batcher.flush();
    await vi.advanceTimersByTimeAsync(0);
    expect(c.batches).toEqual([[1]]);
    c.release();
    await vi.advanceTimersByTimeAsync(0);
    expect(c.batches).toEqual([[1], [2]]);
    expect(vi.getTimerCount()).toBe(0);
    batcher.flush();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('answers each request with its own result, and rejects a request the commit gave none', async () => {
    const committed: string[][] = [];
    const group = new GroupCommit(async (requests: string[]) => {
      committed.push(requests);
      // One result short: the last request is left without one.
      return requests.slice(0, -1).map((r) => r.toUpperCase());
    });
    const answers = Promise.allSettled([group.add('a'), group.add('b'), group.add('c')]);
    await vi.advanceTimersByTimeAsync(0);
    const [a, b, c] = await answers;
    expect(committed).toEqual([['a', 'b', 'c']]);
    expect(a).toEqual({ status: 'fulfilled', value: 'A' });
    expect(b).toEqual({ status: 'fulfilled', value: 'B' });
    expect(c?.status).toBe('rejected');
    expect(String((c as PromiseRejectedResult).reason)).toMatch(/no result/);
  });
});
