/**
 * Logging: pino, JSON lines. Secrets are removed by configuration, not by care at each call site:
 * pino's `redact` censors any field under the names below, and every finished line then passes
 * through the `Redactor` (redact.ts), which strips credentials and query strings from URLs and
 * replaces every known secret value wherever it appears (a message, an error text, an echoed body).
 */
import type { Writable } from 'node:stream';
import pino, { type DestinationStream, type Logger } from 'pino';
import pretty from 'pino-pretty';
import type { LogLevel } from '../config/config.js';
import { Redactor } from './redact.js';

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
  /** Scrubs every line; default: one that knows no secret values but still cleans URLs. */
  redactor?: Redactor;
}

export function createLogger(options: LoggerOptions): Logger {
  const destination = options.destination ?? process.stdout;
  const redactor = options.redactor ?? new Redactor();
  const target = options.pretty
    ? pretty({
        destination,
        colorize: true,
        sync: true,
        translateTime: 'SYS:HH:MM:ss.l',
        ignore: 'pid,hostname',
      })
    : destination;
  // The last step before the bytes leave: nothing a serializer or a message adds escapes it.
  const stream: DestinationStream = { write: (line: string) => target.write(redactor.scrub(line)) };
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
