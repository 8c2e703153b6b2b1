import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../src/shared/log.js';
import { censorSecretFields, SECRET_FIELDS } from '../src/shared/log-fields.js';
import { REDACTED } from '../src/shared/redact.js';

/** A logger of the daemon's making whose lines are kept, parsed. */
function keptLines(): { lines: Array<Record<string, unknown>>; log: ReturnType<typeof createLogger> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger({
    level: 'debug',
    destination: new Writable({
      write(chunk, _encoding, done) {
        lines.push(JSON.parse(String(chunk)));
        done();
      },
    }),
  });
  return { lines, log };
}

describe('censorSecretFields', () => {
  it('censors each secret field by name, at the top and two levels down', () => {
    const fields = {
      token: 't0',
      apiToken: 'a0',
      config: { secret: 's1', secretKey: 'k1', api_token: 'a1', pollIntervalMs: 10 },
      request: {
        headers: {
          authorization: 'Basic x',
          'x-sbg-auth-token': 'p',
          'webhook-signature': 'v1,x',
          accept: '*/*',
        },
      },
      ok: 1,
    };
    expect(censorSecretFields(fields)).toEqual({
      token: REDACTED,
      apiToken: REDACTED,
      config: { secret: REDACTED, secretKey: REDACTED, api_token: REDACTED, pollIntervalMs: 10 },
      request: {
        headers: {
          authorization: REDACTED,
          'x-sbg-auth-token': REDACTED,
          'webhook-signature': REDACTED,
          accept: '*/*',
        },
      },
      ok: 1,
    });
  });

  it('changes nothing it is given: what holds a censored field is a copy, the rest is shared', () => {
    const untouched = { id: 'e1', states: ['RUNNING'] };
    const fields = { job: untouched, nested: { token: 'x', keep: { a: 1 } } };
    const before = structuredClone(fields);
    const out = censorSecretFields(fields);
    expect(fields).toEqual(before);
    expect(out.job).toBe(untouched);
    expect(out.nested).not.toBe(fields.nested);
    expect(out.nested.keep).toBe(fields.nested.keep);
  });

  it('returns its argument itself when nothing is censored', () => {
    const fields = { export_id: 'e1', from: 'RUNNING', to: 'COMPLETED', metadata: { run: 7, tags: ['a'] } };
    expect(censorSecretFields(fields)).toBe(fields);
  });

  it('looks into an error and keeps it an error, with its message and stack', () => {
    const err = Object.assign(new TypeError('refused'), { headers: { authorization: 'Bearer x' } });
    const out = censorSecretFields({ err });
    expect(out.err).toBeInstanceOf(TypeError);
    expect(out.err.message).toBe('refused');
    expect(out.err.stack).toBe(err.stack);
    expect(out.err.headers).toEqual({ authorization: REDACTED });
    expect(err.headers.authorization).toBe('Bearer x');
  });

  it('does not look into arrays, buffers, maps or deeper than three levels', () => {
    const buffer = Buffer.from('token');
    const fields = {
      list: [{ token: 'in an array' }],
      buffer,
      map: new Map([['token', 'x']]),
      a: { b: { c: { token: 'four levels down' } } },
    };
    expect(censorSecretFields(fields)).toBe(fields);
  });

  it('censors a field whose value is falsy but present, and skips one that is undefined', () => {
    expect(censorSecretFields({ token: '', secret: undefined })).toEqual({
      token: REDACTED,
      secret: undefined,
    });
  });

  it('walks an object without a prototype', () => {
    const fields = Object.assign(Object.create(null) as Record<string, unknown>, { token: 'x', n: 1 });
    expect({ ...censorSecretFields(fields) }).toEqual({ token: REDACTED, n: 1 });
  });
});

describe("the daemon's logger", () => {
  it("censors every secret field of a line, of an error in it, and of a child logger's bindings", () => {
    const { lines, log } = keptLines();
    const child = log.child({ component: 'x', secret: 'bound-secret' });
    const err = Object.assign(new Error('failed'), { authorization: 'Bearer err-token' });
    child.warn(
      { token: 'line-token', request: { headers: { 'webhook-signature': 'v1,sig' } }, err },
      'hello',
    );
    expect(lines).toHaveLength(1);
    const line = lines[0] as Record<string, unknown>;
    expect(line).toMatchObject({
      component: 'x',
      secret: REDACTED,
      token: REDACTED,
      request: { headers: { 'webhook-signature': REDACTED } },
      err: { message: 'failed', authorization: REDACTED, type: 'Error' },
      msg: 'hello',
    });
    const text = JSON.stringify(line);
    for (const value of ['bound-secret', 'line-token', 'v1,sig', 'err-token'])
      expect(text).not.toContain(value);
  });

  it("censors secrets nested in a child's bindings, and in a child's child's", () => {
    const { lines, log } = keptLines();
    const child = log.child({
      platform: { token: 'bound-nested' },
      headers: { authorization: 'Basic bound' },
    });
    child.child({ request: { headers: { 'x-sbg-auth-token': 'grandchild' } } }).info('m');
    const text = JSON.stringify(lines);
    for (const value of ['bound-nested', 'Basic bound', 'grandchild']) expect(text).not.toContain(value);
    expect(lines[0]).toMatchObject({
      platform: { token: REDACTED },
      headers: { authorization: REDACTED },
      request: { headers: { 'x-sbg-auth-token': REDACTED } },
    });
  });

  it('writes the line, censored, for an error whose secret field is read-only or an accessor', () => {
    const { lines, log } = keptLines();
    const err = new Error('read-only');
    Object.defineProperty(err, 'token', { value: 'ro-secret', enumerable: true, writable: false });
    Object.defineProperty(err, 'secret', { get: () => 'getter-secret', enumerable: true });
    expect(() => log.error({ err }, 'm')).not.toThrow();
    expect(JSON.stringify(lines)).not.toMatch(/ro-secret|getter-secret/);
    expect(lines[0]?.err).toMatchObject({ message: 'read-only', token: REDACTED, secret: REDACTED });
  });

  it('writes the line for a DOMException carrying a secret field, with its name and message', () => {
    const { lines, log } = keptLines();
    const err = Object.assign(new DOMException('the operation was aborted', 'AbortError'), {
      token: 'dom-secret',
    });
    expect(() => log.error({ err }, 'm')).not.toThrow();
    expect(JSON.stringify(lines)).not.toContain('dom-secret');
    expect(lines[0]?.err).toMatchObject({ message: 'the operation was aborted', token: REDACTED });
    expect(String((lines[0]?.err as { stack?: unknown } | undefined)?.stack)).toContain('AbortError');
  });

  it('names every field the earlier list of redaction paths named', () => {
    for (const name of ['token', 'apiToken', 'api_token', 'secret', 'secretKey', 'authorization']) {
      expect(SECRET_FIELDS.has(name)).toBe(true);
    }
    expect(SECRET_FIELDS.has('x-sbg-auth-token')).toBe(true);
    expect(SECRET_FIELDS.has('webhook-signature')).toBe(true);
  });
});
