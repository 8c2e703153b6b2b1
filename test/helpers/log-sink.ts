import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

/** A pino logger at `level` whose lines are kept, parsed, in `lines`. */
export function logSink(level = 'info'): { lines: Array<Record<string, unknown>>; log: Logger } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino(
    { level },
    new Writable({
      write(chunk, _encoding, done) {
        lines.push(JSON.parse(String(chunk)));
        done();
      },
    }),
  );
  return { lines, log };
}
