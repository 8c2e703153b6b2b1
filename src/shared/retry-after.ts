/**
 * `Retry-After` (RFC 9110 §10.2.3), as receivers of webhooks and gateways in front of the platform
 * send it.
 */

const DAY_NAME = '(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)';
const MONTH = '(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)';
/**
 * The three forms of an HTTP date (RFC 9110 §5.6.7): IMF-fixdate, the obsolete RFC 850 form and
 * asctime. Only these go to `Date.parse`, which would otherwise read loose text ("x 3000") as a date.
 */
const HTTP_DATE = new RegExp(
  `^(?:${DAY_NAME}, \\d{2} ${MONTH} \\d{4} \\d{2}:\\d{2}:\\d{2} GMT` +
    `|(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), \\d{2}-${MONTH}-\\d{2} \\d{2}:\\d{2}:\\d{2} GMT` +
    `|${DAY_NAME} ${MONTH} [ \\d]\\d \\d{2}:\\d{2}:\\d{2} \\d{4})$`,
);

/**
 * `Retry-After` in milliseconds from now: delay-seconds or an HTTP date (past dates are 0).
 * Undefined when absent or unreadable.
 */
export function parseRetryAfter(value: string | string[] | undefined, nowMs: number): number | undefined {
  const text = (Array.isArray(value) ? value[0] : value)?.trim();
  if (!text) return undefined;
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  if (!HTTP_DATE.test(text)) return undefined;
  // asctime has no zone: it is GMT.
  const at = Date.parse(/GMT$/.test(text) ? text : `${text} GMT`);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}
