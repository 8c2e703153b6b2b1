/**
 * Every error the watcher raises on purpose, each with a stable literal `code`, and the one table
 * that says which of them are worth retrying. Code that decides whether to retry asks
 * `isRetryable(error)`; nothing else inspects error classes for that purpose.
 */

export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'USAGE'
  | 'PLATFORM_RATE_LIMITED'
  | 'PLATFORM_MAINTENANCE'
  | 'PLATFORM_UNAVAILABLE'
  | 'PLATFORM_UNAUTHORIZED'
  | 'PLATFORM_NOT_FOUND'
  | 'PLATFORM_REJECTED'
  | 'PLATFORM_BAD_RESPONSE'
  | 'PLATFORM_NETWORK'
  | 'PLATFORM_TIMEOUT'
  | 'WEBHOOK_REJECTED'
  | 'WEBHOOK_GONE'
  | 'WEBHOOK_NETWORK'
  | 'WEBHOOK_TIMEOUT'
  | 'SHUTTING_DOWN'
  | 'SHARE_SPENT'
  | 'LISTEN_FAILED'
  | 'DEADLINE_EXCEEDED';

export class WatcherError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** One line per problem; raised before anything starts, and the CLI exits 2 on it. */
export class ConfigError extends WatcherError {
  readonly problems: readonly string[];
  /**
   * The environment as far as it could be read, when the problems are in some variables only
   * (an unreadable credential file): the configuration is then loaded from it, so that its own
   * problems are reported with these, one line each, rather than one run at a time.
   */
  readonly partial: Readonly<Record<string, string | undefined>> | undefined;
  constructor(problems: readonly string[], partial?: Readonly<Record<string, string | undefined>>) {
    super('CONFIG_INVALID', `invalid configuration:\n${problems.join('\n')}`);
    this.problems = problems;
    this.partial = partial;
  }
}

/** Bad command line: unknown flag, missing argument. The CLI exits 2 on it. */
export class UsageError extends WatcherError {
  constructor(message: string) {
    super('USAGE', message);
  }
}

/**
 * The control API could not listen: the port is taken, needs privileges, or the host is not an
 * address of this machine. Wraps Node's own error (`cause`, with its `code`). The CLI exits 1.
 */
export class ListenError extends WatcherError {
  readonly host: string;
  readonly port: number;
  constructor(message: string, details: { host: string; port: number; cause?: unknown }) {
    super('LISTEN_FAILED', message, { cause: details.cause });
    this.host = details.host;
    this.port = details.port;
  }
}

/** A command gave up at its `--timeout`. The CLI exits 1. */
export class DeadlineError extends WatcherError {
  constructor(message: string) {
    super('DEADLINE_EXCEEDED', message);
  }
}

/** The platform's error body, as far as it sent one (docs/platform-api.md §6). */
export interface PlatformErrorBody {
  status?: number;
  code?: number;
  message?: string;
  more_info?: string;
}

/** An answer from the platform that is not a success. `status` is the HTTP status, 0 for none. */
export class PlatformError extends WatcherError {
  readonly status: number;
  readonly body: PlatformErrorBody | undefined;
  /** Epoch milliseconds at which the platform's rate window resets, when it said so. */
  readonly resetAt: number | undefined;
  constructor(
    code: ErrorCode,
    message: string,
    details: { status?: number; body?: PlatformErrorBody; resetAt?: number; cause?: unknown } = {},
  ) {
    super(code, message, { cause: details.cause });
    this.status = details.status ?? 0;
    this.body = details.body;
    this.resetAt = details.resetAt;
  }
}

/** A webhook attempt that did not succeed. `retryAfterMs` is the receiver's `Retry-After`, if any. */
export class WebhookError extends WatcherError {
  readonly status: number;
  readonly retryAfterMs: number | undefined;
  constructor(
    code: ErrorCode,
    message: string,
    details: { status?: number; retryAfterMs?: number; cause?: unknown } = {},
  ) {
    super(code, message, { cause: details.cause });
    this.status = details.status ?? 0;
    this.retryAfterMs = details.retryAfterMs;
  }
}

/**
 * What is retried by p-retry inside one call. Rate limiting is not: it is handed to the limiter,
 * which pauses every call until the reset. Auth failures and 4xx are not: trying again at once
 * cannot help. WEBHOOK_GONE (410) ends delivery to that endpoint.
 */
const RETRYABLE: Readonly<Record<ErrorCode, boolean>> = {
  CONFIG_INVALID: false,
  USAGE: false,
  PLATFORM_RATE_LIMITED: false,
  PLATFORM_MAINTENANCE: true,
  PLATFORM_UNAVAILABLE: true,
  PLATFORM_UNAUTHORIZED: false,
  PLATFORM_NOT_FOUND: false,
  PLATFORM_REJECTED: false,
  PLATFORM_BAD_RESPONSE: true,
  PLATFORM_NETWORK: true,
  PLATFORM_TIMEOUT: true,
  WEBHOOK_REJECTED: true,
  WEBHOOK_GONE: false,
  WEBHOOK_NETWORK: true,
  WEBHOOK_TIMEOUT: true,
  SHUTTING_DOWN: false,
  SHARE_SPENT: false,
  LISTEN_FAILED: false,
  DEADLINE_EXCEEDED: false,
};

export function isRetryable(error: unknown): boolean {
  return error instanceof WatcherError && RETRYABLE[error.code];
}
