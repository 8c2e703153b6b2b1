/**
 * What a hostile platform's answer can do to the daemon's log lines: the strings, extra fields and
 * error bodies it sends must not make a line as long as the answer, nor hold the event loop while
 * a line is scrubbed. Real daemon, production logger and redactor, loopback platform.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { askedIds, exportObject, type Handler, okHandler } from './hostile-platform.js';
import { closeAll, startPlatform, startWatcher } from './hostile-watcher.js';

const TOKEN = 'tok_LOGBOUNDS_7e1f0c9a2b';
/** What one log line may take, whatever the platform sends (the bound the fix keeps, with room). */
const MAX_LINE = 16 * 1024;

afterEach(closeAll);

const huge = (c: string, n = 1 << 20) => c.repeat(n);

/** A bulk handler for `answer(asked)`, the rest as a well-behaved platform. */
const bulk =
  (answer: (asked: string[]) => unknown[]): Handler =>
  (request) =>
    request.route === 'bulk_get' ? { body: { items: answer(askedIds(request.json)) } } : okHandler()(request);

const manyKeys = () => Object.fromEntries(Array.from({ length: 50_000 }, (_, i) => [`k${i}`, i]));

const cases: Array<[string, string, Handler]> = [
  [
    'an unknown state of 1 MiB',
    'unknown_state',
    bulk((asked) => asked.map((id) => ({ resource: exportObject(id, huge('s')) }))),
  ],
  [
    // Left to the regex engine, the scrubber's URL search was quadratic on this (13 s for 160,000
    // characters): the line would not come before the test's timeout.
    'a state of 1 MiB of "a.a.a…" with a URL in it',
    'unknown_state',
    bulk((asked) =>
      asked.map((id) => ({ resource: exportObject(id, `${huge('a.', 1 << 19)} https://u:p@x.invalid/`) })),
    ),
  ],
  [
    'an unasked id of 1 MiB',
    'unexpected_resource',
    bulk((asked) => [
      ...asked.map((id) => ({ resource: exportObject(id, 'RUNNING') })),
      ...['a', 'b', 'c', 'd', 'e'].map((c) => ({ resource: { id: huge(c), state: 'RUNNING' } })),
    ]),
  ],
  [
    'a named error item with a 1 MiB message',
    'item_error',
    bulk((asked) => asked.map((id) => ({ error: { id, status: 500, code: 1, message: huge('m') } }))),
  ],
  [
    'an anonymous error item with a 1 MiB message',
    'unattributed_errors',
    bulk(() => [{ error: { status: 500, code: 1, message: huge('m') } }]),
  ],
  [
    'an error item with 50,000 extra fields',
    'unattributed_errors',
    bulk(() => [{ error: { status: 500, code: 1, ...manyKeys() } }]),
  ],
];

describe('a warning about an odd answer is one line of bounded size', () => {
  it.each(cases)(
    '%s: the %s line is at most 16 KiB',
    async (_name, reason, handler) => {
      const p = await startPlatform(handler);
      const w = await startWatcher(p.url, TOKEN);
      await w.daemon.registry.watch(['exp-0', 'exp-1'], null);
      await w.daemon.scheduler.until(() => w.lines.some((l) => l.reason === reason));
      const line = w.raw.find((r) => r.includes(`"reason":"${reason}"`)) as string;
      expect(line.length).toBeLessThanOrEqual(MAX_LINE);
      // The export is not made final by any of it (a final one is no longer tracked).
      expect(['UNKNOWN', 'RUNNING']).toContain(w.daemon.tracker.get('exp-0')?.state);
    },
    30_000,
  );
});

/** A watcher whose export `exp-0` comes FAILED with `error`, and its transition line. */
async function failedWith(error: unknown) {
  const p = await startPlatform(
    bulk((asked) => asked.map((id) => ({ resource: { ...exportObject(id, 'FAILED'), error } }))),
  );
  const w = await startWatcher(p.url, TOKEN);
  await w.daemon.registry.watch(['exp-0'], null);
  await w.daemon.scheduler.until(() => w.lines.some((l) => l.msg === 'export state changed'));
  return { w, line: w.raw.find((r) => r.includes('"msg":"export state changed"')) as string };
}

describe('a FAILED export whose platform error is huge', () => {
  it('its transition line is bounded (the stored record keeps the whole error)', async () => {
    const error = {
      status: 500,
      code: 9107,
      message: huge('f'),
      more_info: huge('i', 1 << 16),
      ...manyKeys(),
    };
    const { line, w } = await failedWith(error);
    expect(JSON.parse(line)).toMatchObject({ to: 'FAILED', level: 'warn', error: { code: 9107 } });
    expect(line.length).toBeLessThanOrEqual(MAX_LINE);
    const record = await w.daemon.registry.get('exp-0');
    expect((record?.error as { message?: string } | null)?.message).toHaveLength(1 << 20);
  }, 30_000);
});

describe('a FAILED export whose platform error holds many empty arrays', () => {
  it('its transition line is bounded: an empty array or object counts against the budget too', async () => {
    // 500,000 `[]`: 1.5 MB of answer, and not one character of string or key in it.
    const error = { status: 500, code: 9107, details: Array.from({ length: 500_000 }, () => []) };
    const { line } = await failedWith(error);
    expect(JSON.parse(line)).toMatchObject({ to: 'FAILED', level: 'warn', error: { code: 9107 } });
    expect(line.length).toBeLessThanOrEqual(MAX_LINE);
  }, 30_000);
});

describe('a failing call whose error body carries a huge message', () => {
  it('each "platform request failed" and "check failed" line is bounded', async () => {
    const p = await startPlatform((request) =>
      request.route === 'bulk_get'
        ? { status: 500, body: { status: 500, code: 90004, message: huge('e') } }
        : okHandler()(request),
    );
    const w = await startWatcher(p.url, TOKEN);
    await w.daemon.registry.watch(['exp-0'], null);
    await w.daemon.scheduler.until(() =>
      w.lines.some((l) => l.msg === 'check failed after retries; ids stay due'),
    );
    const failed = w.raw.filter(
      (r) => r.includes('platform request failed') || r.includes('check failed after'),
    );
    expect(failed.length).toBeGreaterThan(1);
    for (const line of failed) expect(line.length).toBeLessThanOrEqual(MAX_LINE);
  }, 30_000);
});
