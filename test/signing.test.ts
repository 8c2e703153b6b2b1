import { Webhook } from 'standardwebhooks';
import { describe, expect, it } from 'vitest';
import { parseSecret, sign, verify } from '../src/delivery/signing.js';

// The published Standard Webhooks test vector.
const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const ID = 'msg_p5jXN8AQM9LWM0D4loKWxJek';
const TIMESTAMP = 1614265330;
const BODY = '{"test": 2432232314}';
const SIGNATURE = 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=';

const key = parseSecret(SECRET);

describe('sign', () => {
  it('matches the published vector', () => {
    expect(sign(key, ID, TIMESTAMP, BODY)).toBe(SIGNATURE);
  });

  it('is accepted by the reference standardwebhooks package', () => {
    const nowSec = Math.floor(Date.now() / 1000);
    const body = JSON.stringify({ type: 'export.completed', data: { export_id: 'abc', n: 'é ✓' } });
    const headers = {
      'webhook-id': 'evt_abc_completed',
      'webhook-timestamp': String(nowSec),
      'webhook-signature': sign(key, 'evt_abc_completed', nowSec, body),
    };
    expect(new Webhook(SECRET).verify(body, headers)).toEqual(JSON.parse(body));
  });

  it('is refused by the reference package when the body differs', () => {
    const nowSec = Math.floor(Date.now() / 1000);
    const headers = {
      'webhook-id': ID,
      'webhook-timestamp': String(nowSec),
      'webhook-signature': sign(key, ID, nowSec, BODY),
    };
    expect(() => new Webhook(SECRET).verify(`${BODY} `, headers)).toThrow();
  });
});

describe('verify', () => {
  const headers = { id: ID, timestamp: String(TIMESTAMP), signature: SIGNATURE };

  it('accepts the published vector within the tolerance', () => {
    expect(verify(key, headers, BODY, TIMESTAMP)).toBe(true);
    expect(verify(key, headers, BODY, TIMESTAMP + 300)).toBe(true);
    expect(verify(key, headers, BODY, TIMESTAMP - 300)).toBe(true);
    expect(verify(key, { ...headers, timestamp: TIMESTAMP }, BODY, TIMESTAMP)).toBe(true);
  });

  it("accepts the reference package's signature", () => {
    const at = new Date(1_700_000_000_000);
    const signature = new Webhook(SECRET).sign('evt_x_failed', at, BODY);
    expect(verify(key, { id: 'evt_x_failed', timestamp: '1700000000', signature }, BODY, 1_700_000_010)).toBe(
      true,
    );
  });

  it('rejects a tampered body, id or timestamp', () => {
    expect(verify(key, headers, '{"test": 2432232315}', TIMESTAMP)).toBe(false);
    expect(verify(key, { ...headers, id: `${ID}x` }, BODY, TIMESTAMP)).toBe(false);
    expect(verify(key, { ...headers, timestamp: String(TIMESTAMP + 1) }, BODY, TIMESTAMP)).toBe(false);
  });

  it('rejects timestamps outside the tolerance, and a custom tolerance applies', () => {
    expect(verify(key, headers, BODY, TIMESTAMP + 301)).toBe(false);
    expect(verify(key, headers, BODY, TIMESTAMP - 301)).toBe(false);
    expect(verify(key, headers, BODY, TIMESTAMP + 10, 5)).toBe(false);
    expect(verify(key, headers, BODY, TIMESTAMP + 10, 10)).toBe(true);
  });

  it('rejects malformed timestamps', () => {
    for (const timestamp of ['', 'abc', '1614265330.0', '-1614265330', ' 1614265330']) {
      expect(verify(key, { ...headers, timestamp }, BODY, TIMESTAMP)).toBe(false);
    }
  });

  it('accepts a space-separated list when one entry matches', () => {
    const other = sign(parseSecret('whsec_dGhlIG90aGVyIGtleQ=='), ID, TIMESTAMP, BODY);
    expect(verify(key, { ...headers, signature: `${other} ${SIGNATURE}` }, BODY, TIMESTAMP)).toBe(true);
    expect(verify(key, { ...headers, signature: `v1a,abc ${SIGNATURE}` }, BODY, TIMESTAMP)).toBe(true);
    expect(verify(key, { ...headers, signature: other }, BODY, TIMESTAMP)).toBe(false);
  });

  it('rejects other versions, truncated and empty signatures', () => {
    const b64 = SIGNATURE.slice(3);
    expect(verify(key, { ...headers, signature: `v2,${b64}` }, BODY, TIMESTAMP)).toBe(false);
    expect(verify(key, { ...headers, signature: b64 }, BODY, TIMESTAMP)).toBe(false);
    expect(verify(key, { ...headers, signature: SIGNATURE.slice(0, -4) }, BODY, TIMESTAMP)).toBe(false);
    expect(verify(key, { ...headers, signature: 'v1,' }, BODY, TIMESTAMP)).toBe(false);
    expect(verify(key, { ...headers, signature: '' }, BODY, TIMESTAMP)).toBe(false);
  });
});

describe('parseSecret', () => {
  it('decodes the base64 key after whsec_', () => {
    expect(key.toString('base64')).toBe('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
    expect(parseSecret('whsec_dGhlIG90aGVyIGtleQ==').toString()).toBe('the other key');
    expect(parseSecret('whsec_dGhlIG90aGVyIGtleQ').toString()).toBe('the other key');
  });

  it.each([
    ['no prefix', 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', /must start with "whsec_"/],
    ['a wrong prefix', 'whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', /must start with "whsec_"/],
    ['an empty key', 'whsec_', /no key/],
    ['non-base64 characters', 'whsec_MfKQ9r8GKYqr$TwjUPD8ILPZIo2La', /not valid base64/],
    ['url-safe base64', 'whsec_MfKQ9r8GKYqr-TwjUPD8ILPZIo2LaLa', /not valid base64/],
    ['a bad length', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwx', /not valid base64/],
    ['misplaced padding', 'whsec_MfKQ=9r8GKYqr', /not valid base64/],
    ['only padding', 'whsec_====', /not valid base64/],
  ])('throws on %s without echoing the secret', (_name, secret, message) => {
    let thrown: unknown;
    try {
      parseSecret(secret);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(Error);
    const text = `${(thrown as Error).message} ${(thrown as Error).stack ?? ''}`;
    expect(text).toMatch(message);
    const keyPart = secret.replace(/^whs[a-z]*_/, '');
    if (keyPart.length >= 4) expect(text).not.toContain(keyPart);
  });
});
