/**
 * Leader election on PostgreSQL: of the replicas that share one database, only the leader checks
 * the platform and sends webhooks; the others stand by and take over when it goes.
 *
 * How: each replica holds ONE dedicated `pg.Client` and calls `SELECT pg_try_advisory_lock(key)`
 * on it. The replica whose session holds the lock is the leader; the others try again every
 * `retryMs`. A session-level advisory lock belongs to the server session (the backend process
 * behind one connection) and is released when that session ends, however it ends. That is why
 * the election has its own connection and never uses the store's pool (a pooled connection is
 * handed to other work, and releasing it back would keep the lock in a session nobody watches),
 * and why the URL must reach the server directly or through a pooler in SESSION mode: behind a
 * transaction pooler (PgBouncer `pool_mode=transaction`, RDS Proxy and the like) each statement
 * may run in another server session, so the lock would be taken by one backend and checked on
 * another. Every query here also reads `pg_backend_pid()`; a change of backend on one connection
 * is treated as a lost connection (the election steps down and reconnects), which catches such a
 * pooler, though only after the lock has been left in a pooled session.
 *
 * Why an advisory lock and not a Kubernetes Lease: it works wherever the database is (systemd,
 * Docker, Kubernetes, two VMs), needs no API server, RBAC or service account, and is as available
 * as the store the replicas need anyway. The lock dies with its session, so there is no lease
 * expiry computed from clocks on different machines and no renewal loop that can lag behind
 * expiry: the server knows exactly when the holder's session is gone. Without PostgreSQL
 * (SQLite, one replica per volume) a Kubernetes Lease would be the choice.
 *
 * Roles (`LeaderRole`): `leader` holds the lock; `follower` has a working connection and does not;
 * `disconnected` has no working connection (starting, lost, reconnecting, stopped). Only `leader`
 * may act. Losing the connection while leader goes straight to `disconnected`, never through
 * `follower`: a follower is a replica ready to take over, which one without a connection is not.
 * `onChange(role, previous)` is called synchronously on every change; `role`, `since` (epoch ms of
 * the last change) and `isLeader` are for `/readyz`, metrics and the code that acts.
 *
 * Timing: everything derives from `timeoutMs` T (`WATCHER_LEADER_TIMEOUT`, 15 s by default) and
 * `retryMs` R (2/15 of T, 2 s by default; at most T/4). See `leaderTiming`:
 *
 *   probe interval P = R           the leader checks its connection (`SELECT pg_backend_pid()`)
 *                                  and a follower tries the lock, R after the previous answer
 *   lease          L = 0.4 T       a leader stops acting L after SENDING the last probe that was
 *                                  answered; a timer enforces it (0.1 T short of T/2, room for a
 *                                  late timer), and `isLeader`/`role` check the monotonic clock on
 *                                  every read, so a late timer cannot extend what the caller sees
 *   probe timeout  Q = L - P       a query (and a connect) that takes longer fails the connection;
 *                                  so P + Q + R = 0.4 T + R <= 0.65 T <= T
 *   server idle    S = T - 1.5 R   `idle_session_timeout` on the election's own session: the
 *                                  SERVER ends it (releasing the lock) once it has heard nothing
 *                                  for S, whatever happened to the client or the network
 *   yield          Y = 1.5 R       a replica that lost its connection while leader does not try
 *                                  the lock again for Y, so that a healthy follower (which tries
 *                                  every R) gets it first
 *
 * With the defaults (T = 15 s): P = 2 s, L = 6 s, Q = 4 s, S = 12 s, Y = 3 s.
 *
 * Takeover bounds (a follower is connected and trying every R; RTT is one round trip):
 * - `stop()`, the leader's process exiting or crashing (its host stays up), its connection being
 *   closed or reset, its backend being terminated: the server ends the session at once, and the
 *   follower has the lock within R + RTT. A leader that sees its connection fail steps down at
 *   once, before it reconnects.
 * - A silent failure (the network drops packets, the leader's host dies or freezes): the leader
 *   steps down at most L = 0.4 T after the cut, i.e. within T/2, since its last answered probe
 *   was sent before the cut. The server ends the session S after it last went idle, which was
 *   before the cut, so the follower has the lock within S + R + RTT = T - R/2 + RTT <= T of the
 *   cut. The leader's L counts from SENDING a probe, the server's S from after ANSWERING it (or a
 *   later one), and L < S by at least 0.225 T: the old leader has stepped down before the server
 *   lets the lock go, so two leaders never act at once, provided the code that acts checks
 *   `isLeader` before each action (see weak spots). If only the replies are lost, the leader's
 *   own close (at its probe timeout) reaches the server, which then ends the session at once.
 * - What makes the SERVER drop a dead client promptly is `idle_session_timeout` (PostgreSQL 14 and
 *   later), which the election sets on its own session: no server configuration is needed. TCP
 *   keepalives do not suffice: the client's `keepAlive` only helps the client, and the server's
 *   `tcp_keepalives_*` default to the kernel's (two hours on Linux). Before PostgreSQL 14 the
 *   session sets `tcp_keepalives_idle/interval/count` (and, from 12, `tcp_user_timeout`) to about
 *   S instead, and a warning is logged: the takeover after a silent failure then depends on the
 *   kernel honouring them, only over TCP (Unix sockets ignore them); this path is not tested.
 *
 * Weak spots: there is no fencing token. A leader that froze (GC pause, SIGSTOP, VM pause) in the
 * middle of a webhook send finishes that send when it thaws, even if another replica took over
 * meanwhile; code that checks `isLeader` before each send narrows this to sends already under way.
 * Clock steps do not matter (monotonic clock), but a VM suspended whole may find on resuming
 * that its monotonic clock did not advance: it believes its lease still runs (at most L) while
 * the server, which did not stop, has already handed the lock over; its next probe fails within
 * P + RTT. A server restart or failover ends every session: every replica goes `disconnected`,
 * and one of them leads once they reconnect (the former leader yields Y first). Behind a
 * transaction pooler the election is wrong (see above) and only the backend check notices it.
 *
 * Secrets: the URL's password is never logged and never in an error or reason given here.
 * Nothing here throws into the process: the client's `error` and `end` events are always
 * listened to, a throwing `onChange` is logged, and `stop()` never rejects. The constructor
 * throws a `RangeError` for invalid options only.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import type { Logger } from 'pino';
import { describeDatabaseUrl } from './rows.js';

export type LeaderRole = 'leader' | 'follower' | 'disconnected';

/** `WATCHER_LEADER_TIMEOUT` when unset: a takeover completes within this. */
export const DEFAULT_LEADER_TIMEOUT_MS = 15_000;
/** The name the default lock key is derived from. */
export const DEFAULT_LEADER_LOCK_NAME = 'sbg-export-watcher';
/** The smallest `timeoutMs` accepted (tests use 1–2 s). */
export const MIN_LEADER_TIMEOUT_MS = 200;

export interface LeaderElectionOptions {
  /** `postgres://user:password@host:port/database?...`; the server, or a session-mode pooler. */
  url: string;
  /** The advisory lock's key (a signed 64-bit integer); `leaderLockKey('sbg-export-watcher')` by default. */
  lockKey?: bigint | number;
  /** The takeover bound T (see the file header); 15 s by default. */
  timeoutMs?: number;
  /** How often a follower tries the lock and the leader probes, R; 2/15 of `timeoutMs` by default, at most a quarter. */
  retryMs?: number;
  log?: Logger;
  /**
   * `application_name` of the election's session (`pg_stat_activity`), at most 63 bytes; default
   * `sbg-export-watcher leader election`.
   */
  applicationName?: string;
  /** Called synchronously on every change of role; what it throws is logged. */
  onChange?: (role: LeaderRole, previous: LeaderRole) => void;
}

/** The timings derived from T and R; see the file header. All in milliseconds. */
export interface LeaderTiming {
  timeoutMs: number;
  retryMs: number;
  /** P: between the end of one probe (or lock attempt) and the next. */
  probeIntervalMs: number;
  /** Q: a query or connect that takes longer fails the connection. */
  probeTimeoutMs: number;
  /** L: a leader stops acting this long after sending its last answered probe. */
  leaseMs: number;
  /** S: `idle_session_timeout` of the election's session: the server ends it after this much silence. */
  serverIdleTimeoutMs: number;
  /** Y: after losing leadership with its connection, no lock attempt for this long. */
  yieldMs: number;
  /** The first reconnect waits this long; each failure doubles it, up to `maxBackoffMs`. */
  minBackoffMs: number;
  maxBackoffMs: number;
}

/** Derives the timings from `timeoutMs` (and `retryMs`, when given); throws a RangeError when they do not fit. */
export function leaderTiming(timeoutMs = DEFAULT_LEADER_TIMEOUT_MS, retryMs?: number): LeaderTiming {
  if (!Number.isFinite(timeoutMs) || timeoutMs < MIN_LEADER_TIMEOUT_MS) {
    throw new RangeError(`leader election: timeoutMs must be at least ${MIN_LEADER_TIMEOUT_MS} ms`);
  }
  const T = Math.round(timeoutMs);
  const R = Math.round(retryMs ?? (T * 2) / 15);
  if (!Number.isFinite(R) || R < 10 || R > T / 4) {
    throw new RangeError(
      `leader election: retryMs must be between 10 ms and a quarter of timeoutMs (${Math.floor(T / 4)} ms)`,
    );
  }
  const leaseMs = Math.floor(0.4 * T);
  return {
    timeoutMs: T,
    retryMs: R,
    probeIntervalMs: R,
    probeTimeoutMs: leaseMs - R,
    leaseMs,
    serverIdleTimeoutMs: Math.floor(T - 1.5 * R),
    yieldMs: Math.ceil(1.5 * R),
    minBackoffMs: Math.ceil(R / 2),
    maxBackoffMs: T,
  };
}

/** A lock key derived from a name: the first 8 bytes of its SHA-256, as a signed 64-bit integer. */
export function leaderLockKey(name: string): bigint {
  return createHash('sha256').update(name, 'utf8').digest().readBigInt64BE(0);
}

/** One connection and what is known about its server session. */
interface Session {
  readonly client: pg.Client;
  /** The backend's pid, once connected. */
  pid: number | undefined;
  /** Connected and set up: its failures are a lost connection, not a failed connect. */
  ready: boolean;
  /** Dropped (or being closed by `stop`): every late answer on it is ignored. */
  lost: boolean;
  /** The lock was granted on it, or an attempt is in flight: `stop` unlocks. */
  mayHold: boolean;
}

const MIN_IDLE_SESSION_TIMEOUT_VERSION = 140_000;
const MIN_TCP_USER_TIMEOUT_VERSION = 120_000;

export class LeaderElection {
  readonly #url: string;
  readonly #key: string;
  readonly #timing: LeaderTiming;
  readonly #log: Logger | undefined;
  readonly #onChange: ((role: LeaderRole, previous: LeaderRole) => void) | undefined;
  readonly #applicationName: string;
  readonly #target: { shown: string; scrub: (text: string) => string };

  #role: LeaderRole = 'disconnected';
  #since = Date.now();
  #session: Session | undefined;
  /** performance.now() until which the leader may act. */
  #validUntil = 0;
  /** performance.now() before which no lock attempt is made (see yieldMs). */
  #yieldUntil = 0;
  #watchdog: ReturnType<typeof setTimeout> | undefined;
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;
  #started = false;
  #stopped = false;
  #stopping: Promise<void> | undefined;
  #warnedOldServer = false;

  constructor(options: LeaderElectionOptions) {
    this.#target = describeTarget(options.url);
    this.#url = options.url;
    this.#timing = leaderTiming(options.timeoutMs, options.retryMs);
    const key = BigInt(options.lockKey ?? leaderLockKey(DEFAULT_LEADER_LOCK_NAME));
    if (BigInt.asIntN(64, key) !== key) {
      throw new RangeError('leader election: lockKey must be a signed 64-bit integer');
    }
    this.#key = key.toString();
    this.#log = options.log;
    this.#onChange = options.onChange;
    this.#applicationName = options.applicationName ?? 'sbg-export-watcher leader election';
  }

  /** The role now. Reading it while leader past the lease steps down first (see `isLeader`). */
  get role(): LeaderRole {
    this.#enforceLease();
    return this.#role;
  }

  /** Whether this replica may act now: leader, with a lease that has not run out on the monotonic clock. */
  get isLeader(): boolean {
    return this.role === 'leader';
  }

  /** When the role last changed, in epoch milliseconds. */
  get since(): number {
    return this.#since;
  }

  get timing(): LeaderTiming {
    return { ...this.#timing };
  }

  /** The advisory lock's key, as PostgreSQL shows it (`pg_locks` splits it into classid and objid). */
  get lockKey(): bigint {
    return BigInt(this.#key);
  }

  /** Starts campaigning in the background; a second call, or one after `stop`, does nothing. */
  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    this.#log?.info(
      { database: this.#target.shown, lock_key: this.#key, ...this.#timing },
      'leader election started',
    );
    this.#loop = this.#run().catch((error: unknown) => {
      this.#log?.error({ err: this.#describe(error) }, 'leader election failed');
      this.#setRole('disconnected', 'the election failed');
    });
  }

  /**
   * Steps down (role `disconnected`, reported before anything else), releases the lock and ends
   * the connection, waiting at most about twice the probe timeout. Idempotent; never rejects.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#shutdown().catch((error: unknown) => {
      this.#log?.warn({ err: this.#describe(error) }, 'leader election: stopping failed');
    });
    return this.#stopping;
  }

  async #shutdown(): Promise<void> {
    this.#stopped = true;
    this.#clearWatchdog();
    this.#setRole('disconnected', 'stopped');
    this.#wake?.();
    const session = this.#session;
    this.#session = undefined;
    if (session !== undefined && !session.lost) {
      session.lost = true;
      if (session.ready && session.mayHold) {
        // Queued behind a lock attempt in flight, if any, so it also undoes that one.
        try {
          await this.#query(session, 'SELECT pg_advisory_unlock($1::bigint) AS unlocked', [this.#key]);
        } catch (error) {
          this.#log?.debug({ err: this.#describe(error) }, 'leader election: could not unlock');
        }
      }
      await closeClient(session.client, session.ready, this.#timing.probeTimeoutMs);
    }
    await this.#loop;
    if (this.#started) this.#log?.info('leader election stopped');
  }

  /** Connects, campaigns until the connection is lost, waits, and again, until stopped. */
  async #run(): Promise<void> {
    let failures = 0;
    while (!this.#stopped) {
      const session: Session = {
        client: this.#newClient(),
        pid: undefined,
        ready: false,
        lost: false,
        mayHold: false,
      };
      this.#session = session;
      const openedAt = performance.now();
      try {
        await this.#open(session);
        await this.#campaign(session);
      } catch (error) {
        if (!session.ready && !session.lost && !this.#stopped) {
          this.#log?.warn(
            { database: this.#target.shown, err: this.#describe(error) },
            'leader election: cannot connect to PostgreSQL',
          );
        }
        this.#drop(session, this.#describe(error));
      }
      if (this.#stopped) break;
      // A connection that lasted starts the backoff afresh; one that keeps failing soon after it
      // opened (a server that ends sessions, a setting refused) backs off further each time.
      if (session.ready && performance.now() - openedAt > this.#timing.maxBackoffMs) failures = 0;
      failures += 1;
      await this.#sleep(this.#backoff(failures));
    }
  }

  #newClient(): pg.Client {
    const { probeTimeoutMs, retryMs } = this.#timing;
    return new pg.Client({
      connectionString: this.#url,
      connectionTimeoutMillis: probeTimeoutMs,
      // Helps the client notice a dead peer between probes; the probes are what bound it.
      keepAlive: true,
      keepAliveInitialDelayMillis: retryMs,
      application_name: this.#applicationName,
    });
  }

  /** Connects and sets up the session (timeouts, see the header); listens for errors first. */
  async #open(session: Session): Promise<void> {
    const { client } = session;
    client.on('error', (error: Error) => this.#drop(session, `connection error: ${this.#describe(error)}`));
    client.on('end', () => this.#drop(session, 'the connection closed'));
    await client.connect();
    if (this.#stopped || session.lost) return;
    const [info] = await this.#query<{ pid: number; version: number }>(
      session,
      `SELECT pg_backend_pid() AS pid, current_setting('server_version_num')::int AS version`,
    );
    if (info === undefined) throw new Error('no answer to the first query');
    session.pid = info.pid;
    const { probeTimeoutMs, serverIdleTimeoutMs } = this.#timing;
    const settings: [string, number][] = [['statement_timeout', probeTimeoutMs]];
    if (info.version >= MIN_IDLE_SESSION_TIMEOUT_VERSION) {
      settings.push(['idle_session_timeout', serverIdleTimeoutMs]);
    } else {
      const step = Math.max(1, Math.floor(serverIdleTimeoutMs / 2000));
      settings.push(
        ['tcp_keepalives_idle', step],
        ['tcp_keepalives_interval', 1],
        ['tcp_keepalives_count', step],
      );
      if (info.version >= MIN_TCP_USER_TIMEOUT_VERSION) {
        settings.push(['tcp_user_timeout', serverIdleTimeoutMs]);
      }
      if (!this.#warnedOldServer) {
        this.#warnedOldServer = true;
        this.#log?.warn(
          { database: this.#target.shown, server_version_num: info.version },
          'leader election: PostgreSQL before 14 has no idle_session_timeout; after a silent network cut, ' +
            "the takeover waits for the server's TCP keepalives",
        );
      }
    }
    const columns = settings.map((_, i) => `set_config($${2 * i + 1}, $${2 * i + 2}, false)`).join(', ');
    await this.#query(
      session,
      `SELECT ${columns}`,
      settings.flatMap(([name, value]) => [name, String(value)]),
    );
    if (this.#stopped || session.lost) return;
    session.ready = true;
    this.#log?.debug({ database: this.#target.shown, pid: session.pid }, 'leader election: connected');
  }

  /** Tries the lock (follower) or probes (leader) every P, until the session is lost or stopped. */
  async #campaign(session: Session): Promise<void> {
    const { probeIntervalMs } = this.#timing;
    while (!this.#stopped && !session.lost) {
      const sentAt = performance.now();
      if (this.#role === 'leader') {
        const [row] = await this.#query<{ pid: number }>(session, 'SELECT pg_backend_pid() AS pid');
        if (this.#stopped || session.lost) return;
        this.#checkBackend(session, row?.pid);
        this.#extendLease(sentAt);
      } else if (sentAt >= this.#yieldUntil) {
        session.mayHold = true;
        const [row] = await this.#query<{ locked: boolean; pid: number }>(
          session,
          'SELECT pg_try_advisory_lock($1::bigint) AS locked, pg_backend_pid() AS pid',
          [this.#key],
        );
        if (this.#stopped || session.lost) return;
        this.#checkBackend(session, row?.pid);
        session.mayHold = row?.locked === true;
        if (row?.locked === true) {
          this.#extendLease(sentAt);
          this.#setRole('leader', 'acquired the lock');
        } else {
          this.#setRole('follower', 'another replica holds the lock');
        }
      } else {
        const [row] = await this.#query<{ pid: number }>(session, 'SELECT pg_backend_pid() AS pid');
        if (this.#stopped || session.lost) return;
        this.#checkBackend(session, row?.pid);
        this.#setRole('follower', 'connected; yielding to the other replicas first');
      }
      await this.#sleep(probeIntervalMs);
    }
  }

  #checkBackend(session: Session, pid: number | undefined): void {
    if (pid !== session.pid) {
      throw new Error(
        `the connection moved from backend ${session.pid} to ${pid}: the URL must reach PostgreSQL ` +
          'directly or through a session-mode pooler, not a transaction pooler',
      );
    }
  }

  /** One statement with the probe timeout Q; a timeout rejects (the caller drops the session). */
  async #query<R extends pg.QueryResultRow>(
    session: Session,
    text: string,
    values: unknown[] = [],
  ): Promise<R[]> {
    const { probeTimeoutMs } = this.#timing;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`PostgreSQL did not answer within ${probeTimeoutMs} ms`)),
        probeTimeoutMs,
      );
    });
    try {
      const result = await Promise.race([session.client.query<R>(text, values), timeout]);
      return result.rows;
    } finally {
      clearTimeout(timer);
    }
  }

  #extendLease(sentAt: number): void {
    this.#validUntil = sentAt + this.#timing.leaseMs;
    this.#armWatchdog(this.#validUntil - performance.now());
  }

  #armWatchdog(ms: number): void {
    this.#clearWatchdog();
    this.#watchdog = setTimeout(
      () => {
        this.#watchdog = undefined;
        this.#enforceLease();
      },
      Math.max(0, Math.ceil(ms)),
    );
  }

  /** Steps down (dropping the connection) when leader past the lease; otherwise re-arms the timer. */
  #enforceLease(): void {
    if (this.#role !== 'leader') return;
    const left = this.#validUntil - performance.now();
    if (left > 0) {
      // A timer may fire a fraction of a millisecond early by this clock: wait out the rest.
      if (this.#watchdog === undefined) this.#armWatchdog(left);
      return;
    }
    const session = this.#session;
    const reason = `no answer from PostgreSQL for ${this.#timing.leaseMs} ms`;
    if (session !== undefined && !session.lost) {
      this.#drop(session, reason);
    } else {
      this.#clearWatchdog();
      this.#setRole('disconnected', reason);
    }
  }

  #clearWatchdog(): void {
    if (this.#watchdog !== undefined) clearTimeout(this.#watchdog);
    this.#watchdog = undefined;
  }

  /**
   * The session is lost: steps down at once (role `disconnected`), then destroys the connection.
   * A second call, a late event, or a session that is not the current one changes nothing.
   */
  #drop(session: Session, reason: string): void {
    if (session.lost) return;
    session.lost = true;
    const current = this.#session === session;
    if (current) this.#session = undefined;
    if (current && !this.#stopped) {
      // Step down first, then let go of the connection (which releases the lock if the server
      // is still reachable): the application stops acting before another replica can start.
      if (this.#role === 'leader') {
        this.#clearWatchdog();
        this.#yieldUntil = performance.now() + this.#timing.yieldMs;
      }
      this.#setRole('disconnected', reason, session.ready ? 'warn' : 'info');
    }
    destroyClient(session.client);
    if (current) this.#wake?.();
  }

  #setRole(role: LeaderRole, reason: string, level: 'info' | 'warn' = 'info'): void {
    const previous = this.#role;
    if (role === previous) return;
    this.#role = role;
    this.#since = Date.now();
    this.#log?.[level](
      { role, previous, reason: this.#target.scrub(reason) },
      `leader election: now ${role}`,
    );
    if (this.#onChange === undefined) return;
    try {
      this.#onChange(role, previous);
    } catch (error) {
      this.#log?.error({ err: this.#describe(error) }, 'leader election: onChange threw');
    }
  }

  /** Waits `ms`, or until woken (a lost connection, `stop`). */
  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        if (this.#wake === done) this.#wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wake = done;
    });
  }

  /** Exponential from `minBackoffMs` to `maxBackoffMs`, with ±20 % jitter. */
  #backoff(failures: number): number {
    const { minBackoffMs, maxBackoffMs } = this.#timing;
    const base = Math.min(maxBackoffMs, minBackoffMs * 2 ** Math.min(failures - 1, 30));
    return Math.round(base * (0.8 + 0.4 * Math.random()));
  }

  /** One line, with the SQLSTATE or errno, without the password. */
  #describe(error: unknown): string {
    const code = (error as { code?: unknown } | null)?.code;
    let message = error instanceof Error ? error.message : String(error);
    if (error instanceof AggregateError && message === '') {
      message = error.errors.map((e: unknown) => (e instanceof Error ? e.message : String(e))).join('; ');
    }
    message = message.replace(/\s+/g, ' ').trim() || 'no message';
    if (typeof code === 'string' && !message.startsWith(code)) message = `${code}: ${message}`;
    return this.#target.scrub(message);
  }
}

/** Closes a client politely (Terminate), or destroys its socket when that takes longer than `ms`. */
async function closeClient(client: pg.Client, connected: boolean, ms: number): Promise<void> {
  if (!connected) {
    destroyClient(client);
    return;
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    client.end().catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
  destroyClient(client);
}

/**
 * Destroys the socket at once (`end()` alone may wait for a peer that is gone). With an error, so
 * that `pg` settles a `connect()` in progress (it reports a plain close while ending to nobody),
 * and fails the queries in flight; `pg` listens for the socket's errors once `connect` was called.
 */
function destroyClient(client: pg.Client): void {
  try {
    const stream = client.connection.stream;
    if (stream.destroyed) return;
    if (stream.listenerCount('error') > 0) stream.destroy(new Error('closed by the leader election'));
    else stream.destroy();
  } catch {
    // Already gone.
  }
}

/** The URL as shown, and the scrubber of its password; a URL that does not parse is refused. */
function describeTarget(url: string): { shown: string; scrub: (text: string) => string } {
  const target = describeDatabaseUrl(url);
  if (!target) {
    throw new RangeError(
      'leader election: the database URL is not a valid URL; write it as postgres://user:password@host:port/database',
    );
  }
  return target;
}
