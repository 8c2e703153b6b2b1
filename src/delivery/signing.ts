/**
 * Standard Webhooks signatures (https://www.standardwebhooks.com): `v1,<base64 HMAC-SHA256>` over
 * `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed with the base64-decoded part of a `whsec_`
 * secret. Pure functions; the secret and signatures never appear in an error message.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

const SECRET_PREFIX = 'whsec_';
const SIGNATURE_VERSION = 'v1';
/** Standard base64 alphabet, padding optional (some generators drop it). */
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** The default accepted distance between a delivery's timestamp and the receiver's clock. */
export const DEFAULT_TOLERANCE_SEC = 300;

/** The HMAC key of a `whsec_<base64>` secret. Throws an Error that does not repeat the secret. */
export function parseSecret(secret: string): Buffer {
  if (!secret.startsWith(SECRET_PREFIX)) {
    throw new Error(`webhook secret must start with "${SECRET_PREFIX}" followed by a base64 key`);
  }
  const encoded = secret.slice(SECRET_PREFIX.length);
  if (encoded.length === 0) {
    throw new Error(`webhook secret has no key after "${SECRET_PREFIX}"`);
  }
  // Buffer.from(..., 'base64') skips characters it does not know, so check the text first.
  const unpadded = encoded.replace(/=+$/, '');
  if (
    !BASE64.test(encoded) ||
    unpadded.length % 4 === 1 ||
    (encoded.includes('=') && encoded.length % 4 !== 0)
  ) {
    throw new Error(`webhook secret's key after "${SECRET_PREFIX}" is not valid base64`);
  }
  const key = Buffer.from(encoded, 'base64');
  if (key.length === 0) {
    throw new Error(`webhook secret's key after "${SECRET_PREFIX}" decodes to no bytes`);
  }
  return key;
}

function digest(key: Buffer, id: string, timestampSec: number, body: string): Buffer {
  return createHmac('sha256', key).update(`${id}.${timestampSec}.${body}`).digest();
}

/** The `webhook-signature` header value for one attempt. */
export function sign(key: Buffer, id: string, timestampSec: number, body: string): string {
  return `${SIGNATURE_VERSION},${digest(key, id, timestampSec, body).toString('base64')}`;
}

export interface SignedHeaders {
  id: string;
  /** `webhook-timestamp` as sent: Unix seconds. */
  timestamp: string | number;
  /** `webhook-signature` as sent: one or more space-separated `v1,<base64>`. */
  signature: string;
}

/**
 * True when one of the header's `v1` signatures matches and the timestamp is within
 * `toleranceSec` of `nowSec` (either direction). Comparison is constant-time per candidate.
 */
export function verify(
  key: Buffer,
  headers: SignedHeaders,
  body: string,
  nowSec: number,
  toleranceSec = DEFAULT_TOLERANCE_SEC,
): boolean {
  const timestampSec = parseTimestamp(headers.timestamp);
  if (timestampSec === undefined || Math.abs(nowSec - timestampSec) > toleranceSec) return false;
  const expected = digest(key, headers.id, timestampSec, body);
  let matched = false;
  for (const candidate of headers.signature.split(' ')) {
    const comma = candidate.indexOf(',');
    if (comma < 0 || candidate.slice(0, comma) !== SIGNATURE_VERSION) continue;
    const given = Buffer.from(candidate.slice(comma + 1), 'base64');
    // Keep looking after a match so the time taken does not depend on which candidate matched.
    if (given.length === expected.length && timingSafeEqual(given, expected)) matched = true;
  }
  return matched;
}

function parseTimestamp(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) ? value : undefined;
  return /^\d{1,15}$/.test(value) ? Number(value) : undefined;
}
