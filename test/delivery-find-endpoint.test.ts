/**
 * `findEndpoint`: how `?endpoint=` of a redelivery names a configured endpoint. Before, only the
 * configured text or the label, character for character: `HTTP://...` or a default port written
 * out was `unknown_endpoint`.
 */
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { DeliveryEngine } from '../src/delivery/engine.js';
import { Bus } from '../src/shared/bus.js';
import { openSqliteStore } from '../src/store/sqlite.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function engineFor(urls: string[]): Promise<DeliveryEngine> {
  const store = await openSqliteStore({ path: ':memory:' });
  cleanups.push(() => store.close());
  const engine = new DeliveryEngine({
    store,
    urls,
    timeoutMs: 1000,
    maxAgeMs: 60_000,
    userAgent: 'test',
    log: pino({ level: 'silent' }),
    bus: new Bus(),
  });
  cleanups.push(() => engine.close(0));
  return engine;
}

describe('findEndpoint', () => {
  it('takes another spelling of the same URL: scheme and host in capitals, the default port, an empty path', async () => {
    const e = await engineFor(['https://hooks.example.org/exports', 'http://127.0.0.1:8080']);
    const [hooks, local] = e.endpoints;
    expect(e.findEndpoint('https://hooks.example.org/exports')).toEqual(hooks);
    expect(e.findEndpoint('HTTPS://Hooks.Example.ORG/exports')).toEqual(hooks);
    expect(e.findEndpoint('https://hooks.example.org:443/exports')).toEqual(hooks);
    expect(e.findEndpoint('http://127.0.0.1:8080/')).toEqual(local);
    expect(e.findEndpoint('HTTP://127.0.0.1:8080')).toEqual(local);
  });

  it('a different path, port or scheme is another endpoint', async () => {
    const e = await engineFor(['https://hooks.example.org/exports']);
    expect(e.findEndpoint('https://hooks.example.org/exports/')).toBeUndefined();
    expect(e.findEndpoint('https://hooks.example.org/Exports')).toBeUndefined();
    expect(e.findEndpoint('https://hooks.example.org:8443/exports')).toBeUndefined();
    expect(e.findEndpoint('http://hooks.example.org/exports')).toBeUndefined();
    expect(e.findEndpoint('not a url')).toBeUndefined();
    expect(e.findEndpoint('')).toBeUndefined();
  });

  it('an endpoint with credentials and a token: by its URL in any spelling, or by its label', async () => {
    const url = 'https://user:pw@hooks.example.org/in?token=abc';
    const e = await engineFor([url]);
    const [only] = e.endpoints;
    expect(only?.label).toBe('https://hooks.example.org/in');
    expect(e.findEndpoint(url)).toEqual(only);
    expect(e.findEndpoint('HTTPS://user:pw@HOOKS.example.org:443/in?token=abc')).toEqual(only);
    expect(e.findEndpoint('https://hooks.example.org/in')).toEqual(only);
    expect(e.findEndpoint('HTTPS://hooks.example.org/in')).toEqual(only);
    // Another token is another URL; it is not the configured one's label either.
    expect(e.findEndpoint('https://user:pw@hooks.example.org/in?token=other')).toBeUndefined();
  });

  it('two endpoints that share a label: not by the label, by their URLs or numbered labels', async () => {
    const a = 'https://hooks.example.org/in?token=a';
    const b = 'https://hooks.example.org/in?token=b';
    const e = await engineFor([a, b]);
    const [first, second] = e.endpoints;
    expect(e.findEndpoint('https://hooks.example.org/in')).toBeUndefined();
    expect(e.findEndpoint('HTTPS://hooks.example.org/in?token=b')).toEqual(second);
    expect(e.findEndpoint(first?.label ?? '')).toEqual(first);
  });

  it('the URL as configured wins over another endpoint spelled the same way; two such spellings are no match', async () => {
    // Two entries of WATCHER_WEBHOOK_URLS that differ only in spelling are two endpoints (each
    // receives every event, under its own key): the one named character for character is meant.
    const e = await engineFor(['http://127.0.0.1:80/hook', 'http://127.0.0.1/hook']);
    const [withPort, without] = e.endpoints;
    expect(e.findEndpoint('http://127.0.0.1:80/hook')).toEqual(withPort);
    expect(e.findEndpoint('http://127.0.0.1/hook')).toEqual(without);
    // Neither spelled as given: which one is meant cannot be told.
    expect(e.findEndpoint('HTTP://127.0.0.1/hook')).toBeUndefined();
  });
});
