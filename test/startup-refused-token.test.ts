/**
 * `run` started with a token the platform refuses, and nothing to watch yet. No check runs, so the
 * scheduler never says "platform refused the token"; the start-up read of `GET /rate_limit` is the
 * only request, and its failure is what the operator sees. It must say, at error, that the token
 * was refused and what to set, not only that the rate limit could not be read.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Stack, startStack } from './helpers/stack.js';

let stack: Stack | undefined;
afterEach(async () => {
  await stack?.close();
  stack = undefined;
});

const lines = (s: Stack) => s.logs.map((l) => JSON.parse(l) as Record<string, unknown>);

describe('a refused token at start', () => {
  it('is one error line naming SB_AUTH_TOKEN, with nothing watched', async () => {
    // The simulator accepts only its own token; the daemon is given another one.
    stack = await startStack({ env: { SB_AUTH_TOKEN: 'not-the-token-0123456789' } });
    // start() resolves once the start-up read of the quota has settled.
    const errors = lines(stack).filter((l) => l.level === 50);
    expect(errors).toHaveLength(1);
    expect(errors[0]?.msg).toMatch(
      /^the platform refused the token \(401.*\); set SB_AUTH_TOKEN to a valid token/,
    );
    expect(errors[0]?.err_message).toMatch(/platform refused the token \(401\)/);
    expect(lines(stack).some((l) => l.msg === 'could not read the platform rate limit')).toBe(false);
    // The token itself is never in a line.
    expect(stack.logs.join('')).not.toContain('not-the-token-0123456789');
    expect(stack.daemon.readiness).toMatchObject({ ok: false, reason: 'the platform refused the token' });
  });

  it('stays not ready when a 429 and then a server error follow the refusal', async () => {
    stack = await startStack({ env: { SB_AUTH_TOKEN: 'not-the-token-0123456789' } });
    // An answer that says nothing of the token, then a failure of the kind that passes.
    stack.daemon.bus.emit('platform.request', { route: 'bulk_get', outcome: 'rate_limited', durationMs: 1 });
    stack.daemon.bus.emit('platform.request', { route: 'bulk_get', outcome: 'server_error', durationMs: 1 });
    expect(stack.daemon.readiness).toMatchObject({
      ok: false,
      reason: 'the platform answered with a server error',
    });
    expect((await stack.get('/readyz')).status).toBe(503);
  });

  it('leaves other start-up failures a warning about the rate limit', async () => {
    // A wrong path (no /v2): the route answers 404, which says nothing about the token.
    stack = await startStack({ endpoint: (url) => url.replace(/\/v2$/, '/v9') });
    const line = lines(stack).find((l) => l.msg === 'could not read the platform rate limit');
    expect(line).toMatchObject({ level: 40 });
    expect(lines(stack).filter((l) => l.level === 50)).toHaveLength(0);
  });
});
