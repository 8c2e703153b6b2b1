/**
 * Logging: pino, JSON lines. Secrets are removed by pino's `redact` configuration, not by care at
 * each call site: any field under these names is censored wherever it appears.
 */
import type { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import type { LogLevel } from './config.js';

export const REDACTED_PATHS = [
  'token',
  'apiToken',
  'api_token',
  'secret',
  'secretKey',
  'authorization',
  '*.token',
  '*.apiToken',
  '*.secret',
  '*.secretKey',
  '*.authorization',
  'headers["x-sbg-auth-token"]',
  'headers["webhook-signature"]',
  'headers.authorization',
  '*.headers["x-sbg-auth-token"]',
  '*.headers["webhook-signature"]',
  '*.headers.authorization',
];

export interface LoggerOptions {
  level: LogLevel;
  /** Where lines go: stdout for the daemon; stderr for commands whose stdout is their result. */
  destination?: Writable;
  /** Human-readable lines (for a terminal) instead of JSON. */
  pretty?: boolean;
  base?: Record<string, unknown>;
}

export function createLogger(options: LoggerOptions): Logger {
  const destination = options.destination ?? process.stdout;
  const stream = options.pretty
    ? pretty({
        destination,
        colorize: true,
        sync: true,
        translateTime: 'SYS:HH:MM:ss.l',
        ignore: 'pid,hostname',
      })
    : destination;
  return pino(
    {
      level: options.level,
      base: options.base ?? { service: 'sbg-export-watcher' },
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    stream,
  );
}
