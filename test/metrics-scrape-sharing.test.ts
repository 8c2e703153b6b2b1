/**
 * What a burst of scrapes costs the store. README (Metrics): "Scrapes within 500 ms share
 * one reading." `/metrics` is open (no token) and takes no `/v1` slot, so a client that scrapes in
 * a burst must not make the daemon count the exports table once per request (O(watched) each,
 * synchronous with SQLite; a connection of the 4-connection pool each with PostgreSQL).
 */
import { request } from 'undici';
import { afterEach, expect, it, vi } from 'vitest';
import { type Stack, startStack } from './helpers/stack.js';

let stack: Stack | undefined;
afterEach(async () => {
  vi.useRealTimers();
  await stack?.close();
  stack = undefined;
});

it('concurrent scrapes share one reading of the export counts, as they share the delivery counts', async () => {
  stack = await startStack();
  const store = stack.daemon.store;
  const reads = { exports: 0, deliveries: 0 };
  const countExports = store.countExports.bind(store);
  const deliveryCounts = store.deliveryCounts.bind(store);
  store.countExports = (...args) => {
    reads.exports++;
    return countExports(...args);
  };
  store.deliveryCounts = (...args) => {
    reads.deliveries++;
    return deliveryCounts(...args);
  };
  // The clock that times the sharing, stopped: the whole burst falls in one 500 ms window however
  // long it takes on a busy machine (real timers and I/O go on).
  vi.useFakeTimers({ toFake: ['performance'] });
  const burst = 20;
  const answers = await Promise.all(
    Array.from({ length: burst }, async () => {
      const res = await request(`${stack?.apiUrl}/metrics`);
      await res.body.text();
      return res.statusCode;
    }),
  );
  expect(answers.every((s) => s === 200)).toBe(true);
  // The delivery counts are read once for the burst...
  expect(reads.deliveries).toBe(1);
  // ...and so are the export counts (once per kind), not once per scrape.
  expect(reads.exports).toBe(2);
});
