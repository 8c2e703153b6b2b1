/**
 * `events` on a terminal, during a receiver outage. The table said `pending  4  no answer` and
 * nothing else: whether the next retry is seconds or an hour away (the backoff reaches hourly), and
 * why the attempts fail (a refused connection, a timeout, a 4xx), were only in `--json`. The
 * table now carries NEXT ATTEMPT and LAST ERROR.
 */
import { describe, expect, it } from 'vitest';
import { formatEvents } from '../src/cli/events.js';

const HOOK = 'http://127.0.0.1:18582/hooks';

describe('the events table', () => {
  it('shows when a pending delivery is tried next and why the last attempt failed', () => {
    const table = formatEvents([
      {
        id: 'evt_a_completed',
        type: 'export.completed',
        created_at: '2026-11-22T05:00:00.000Z',
        deliveries: [
          {
            endpoint: HOOK,
            status: 'pending',
            attempts: 4,
            last_status: 0,
            next_attempt_at: '2026-11-22T05:00:20.000Z',
            last_error: 'request failed: connect ECONNREFUSED 127.0.0.1:18582',
          },
        ],
      },
    ]);
    expect(table.split('\n')).toEqual([
      'WEBHOOK-ID       TYPE              CREATED                   ENDPOINT                      STATUS   ATTEMPTS  LAST STATUS  NEXT ATTEMPT              LAST ERROR',
      'evt_a_completed  export.completed  2026-11-22T05:00:00.000Z  http://127.0.0.1:18582/hooks  pending  4         no answer    2026-11-22T05:00:20.000Z  request failed: connect ECONNREFUSED 127.0.0.1:18582',
      '',
    ]);
  });

  it('says "under way" for a pending delivery whose attempt is running, "-" for a finished one', () => {
    const table = formatEvents([
      {
        id: 'evt_b_failed',
        type: 'export.failed',
        created_at: '2026-11-22T05:00:00.000Z',
        deliveries: [
          {
            endpoint: HOOK,
            status: 'pending',
            attempts: 1,
            last_status: 503,
            next_attempt_at: null,
            last_error: 'HTTP 503',
          },
          {
            endpoint: 'http://other/x',
            status: 'delivered',
            attempts: 2,
            last_status: 204,
            next_attempt_at: null,
            last_error: null,
          },
        ],
      },
    ]);
    expect(table.split('\n')).toEqual([
      'WEBHOOK-ID    TYPE           CREATED                   ENDPOINT                      STATUS     ATTEMPTS  LAST STATUS  NEXT ATTEMPT  LAST ERROR',
      'evt_b_failed  export.failed  2026-11-22T05:00:00.000Z  http://127.0.0.1:18582/hooks  pending    1         503          under way     HTTP 503',
      '                                                       http://other/x                delivered  2         204          -             -',
      '',
    ]);
  });
});
