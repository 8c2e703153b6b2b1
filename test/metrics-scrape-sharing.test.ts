/**
 * What a burst of scrapes costs the store. README (Metrics): "Scrapes within 500 ms share
 * one reading." `/metrics` is open (no token) and takes no `/v1` slot, so a client that scrapes in
 * a burst must not make the daemon count the exports table once per request (O(watched) each,
 * synchronous with SQLite; a connection of the 4-connection pool each with PostgreSQL).
 */
import { request } from 'undici';
import { afterEach, expect, it } from 'vitest';
import { type Stack, startStack } from './helpers/stack.js';

let stack: Stack | undefined;
afterEach(async () => {
  await stack?.close();
  stack = undefined;
});

it('concurrent scrapes share one reading of the export counts, as they share the delivery counts', async () => {
  stack = await startStack();
  const store = stack.daemon.store;
  const reads = { exports: 0, deliveries: 0 };
  const countExports = store.countExports.bind(store);
  const deliveryCounts = store.deliveryCounts.bind(store);
  store.countExports = (kind) => {
    reads.exports++;
    return countExports(kind);
  };
  store.deliveryCounts = () => {
    reads.deliveries++;
    return deliveryCounts();
  };
  const burst = 20;
  const started = performance.now();
  const answers = await Promise.all(
    Array.from({ length: burst }, async () => {
      const res = await request(`${stack?.apiUrl}/metrics`);
      await res.body.text();
      return res.statusCode;
    }),
  );
  const windows = Math.ceil((performance.now() - started) / 500) + 1;
  expect(answers.every((s) => s === 200)).toBe(true);
  // The delivery counts are shared (one reading per 500 ms window at most)...
  expect(reads.deliveries).toBeLessThanOrEqual(windows);
  // ...and so should the export counts be (one per kind per window), not one per scrape.
  expect(reads.exports).toBeLessThanOrEqual(2 * windows);
});
