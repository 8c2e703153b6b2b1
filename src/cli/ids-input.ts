/**
 * Export ids from the command line: positional ids, `--id`, `--ids-file FILE` and standard input
 * (`--ids-file -`, or a lone `-` among the positional ids). Files and standard input hold one id
 * per line; blank lines and `#` comments are skipped. Ids from every source are merged in the order
 * given, de-duplicated and validated together; a bad id is a usage error.
 *
 * Files and standard input are read incrementally, a chunk at a time, under explicit bounds
 * ({@link ID_LIMITS}): going over one is a usage error at once, and the rest is not read.
 */
import { closeSync, createReadStream, openSync, readSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { EXPORT_ID_PATTERN } from '../http/control-api.js';
import { UsageError } from '../shared/errors.js';

/** The name standing for standard input, as a positional id or an `--ids-file`. */
export const STDIN = '-';

/** Bad ids named in a usage error before the rest are only counted. */
const BAD_IDS_SHOWN = 5;

/**
 * Bytes read from all ids files and standard input together, for one command. Platform export ids
 * are 32 characters, 33 or 34 bytes a line, so 64 MiB holds about 2,000,000 of them (and over
 * 500,000 of the longest ids allowed, 128 characters); a list that size already takes hours to poll
 * under the default rate budget. The bound keeps `--ids-file /dev/zero` or a runaway pipe from
 * eating the machine's memory.
 */
export const MAX_IDS_INPUT_BYTES = 64 * 1024 * 1024;

/**
 * Bytes in one line, counting its spaces, comment and CR: an id is at most 128 characters, so 4 KiB
 * leaves ample room for indentation and a comment, while a file with no line breaks is refused
 * after its first 4 KiB instead of being read whole.
 */
export const MAX_ID_LINE_BYTES = 4 * 1024;

/**
 * Distinct ids from all sources together, for one command. 64 MiB of very short ids (`a`, `b`, …)
 * would be over ten million strings; 2,000,000 is the byte bound's worth of typical ids.
 */
export const MAX_IDS = 2_000_000;

/** The bounds on what a command reads as ids. */
export interface IdsLimits {
  /** {@link MAX_IDS_INPUT_BYTES} */
  maxBytes: number;
  /** {@link MAX_ID_LINE_BYTES} */
  maxLineBytes: number;
  /** {@link MAX_IDS} */
  maxIds: number;
}

export const ID_LIMITS: Readonly<IdsLimits> = Object.freeze({
  maxBytes: MAX_IDS_INPUT_BYTES,
  maxLineBytes: MAX_ID_LINE_BYTES,
  maxIds: MAX_IDS,
});

export interface IdSources {
  /** Positional ids; `-` reads standard input. */
  positionals?: readonly string[];
  /** `--id` values (run). */
  ids?: readonly string[];
  /** `--ids-file` values; `-` reads standard input. */
  files?: readonly string[];
}

/** Standard input, with what decides whether a hint is due. */
export interface IdsInput {
  stdin: Readable & { isTTY?: boolean };
  /** Where to say "reading ids from standard input" when stdin is a terminal. */
  stderr?: { write(text: string): unknown };
}

/** Every id the sources name, merged, de-duplicated and validated; standard input is read at most once. */
export async function collectIds(
  sources: IdSources,
  input: IdsInput,
  limits: Readonly<IdsLimits> = ID_LIMITS,
): Promise<string[]> {
  const unique = new Set<string>();
  /** Where each invalid id was first read, for its error: kept for invalid ids only. */
  const origins = new Map<string, string>();
  const add = (id: string, where?: () => string) => {
    unique.add(id);
    if (unique.size > limits.maxIds) throw tooManyIds(limits.maxIds);
    // An argument's origin is '' (quoted alone): a file naming the same id later does not take it.
    if (!origins.has(id) && !EXPORT_ID_PATTERN.test(id)) origins.set(id, where === undefined ? '' : where());
  };
  const fromLines = (source: IdsSource) => (id: string, line: number) =>
    add(id, () => `${source.name}, line ${line}`);
  const budget: ByteBudget = { used: 0, max: limits.maxBytes };
  for (const id of sources.ids ?? []) add(id);
  let fromStdin = false;
  for (const p of sources.positionals ?? []) {
    if (p === STDIN) fromStdin = true;
    else add(p);
  }
  for (const file of sources.files ?? []) {
    if (file === STDIN) fromStdin = true;
    else {
      const source = fileSource(file);
      await readStream(createReadStream(file), source, new LineReader(budget, limits, fromLines(source)));
    }
  }
  if (fromStdin) {
    if (input.stdin.isTTY)
      input.stderr?.write('reading export ids from standard input, one per line; end with Ctrl-D\n');
    await readStream(input.stdin, STDIN_SOURCE, new LineReader(budget, limits, fromLines(STDIN_SOURCE)));
  }
  refuseInvalid(origins);
  return Array.from(unique);
}

/** One id per line; blank lines and `#` comments (whole-line or trailing) are skipped. */
export function parseIdsText(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((line) => line.replace(/#.*$/, '').trim())
    .filter((line) => line !== '');
}

/** The ids in a file, in order, duplicates kept; read a chunk at a time under `limits`. */
export function readIdsFile(path: string, limits: Readonly<IdsLimits> = ID_LIMITS): string[] {
  const source = fileSource(path);
  const ids: string[] = [];
  const reader = new LineReader({ used: 0, max: limits.maxBytes }, limits, listAdder(ids, limits));
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    throw source.readError(error as NodeJS.ErrnoException);
  }
  try {
    const chunk = Buffer.alloc(64 * 1024);
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, chunk, 0, chunk.length, null);
      } catch (error) {
        throw source.readError(error as NodeJS.ErrnoException);
      }
      if (n === 0) break;
      reader.push(chunk.subarray(0, n), source);
    }
    reader.end();
  } finally {
    closeSync(fd);
  }
  return ids;
}

/** Reads the stream to its end (or to the first bound it breaks) and parses it like an ids file. */
export async function readIdsStream(
  stream: Readable,
  limits: Readonly<IdsLimits> = ID_LIMITS,
): Promise<string[]> {
  const ids: string[] = [];
  await readStream(
    stream,
    STDIN_SOURCE,
    new LineReader({ used: 0, max: limits.maxBytes }, limits, listAdder(ids, limits)),
  );
  return ids;
}

/**
 * Refuses the invalid ids, the first few quoted, each with where it was read (`origins`: the file
 * or standard input, and its line) when it came from a file or standard input.
 */
function refuseInvalid(origins: ReadonlyMap<string, string>): void {
  if (origins.size === 0) return;
  const bad = [...origins.keys()];
  const shown = bad.slice(0, BAD_IDS_SHOWN).map((b) => {
    const where = origins.get(b);
    return `${visible(b.length > 140 ? `${b.slice(0, 140)}…` : b)}${where ? ` (${where})` : ''}`;
  });
  const more = bad.length > BAD_IDS_SHOWN ? ` and ${bad.length - BAD_IDS_SHOWN} more` : '';
  throw new UsageError(
    `invalid export id${bad.length > 1 ? 's' : ''} ${shown.join(', ')}${more}: ids match ^[A-Za-z0-9_-]{1,128}$`,
  );
}

/**
 * A bad id quoted for the error, with what a terminal would not show escaped as `\uXXXX`: JSON
 * escapes control characters, not a zero-width space, a no-break space or a bidi override, and an
 * id pasted with one would read as valid in the message.
 */
function visible(id: string): string {
  // Escaped per UTF-16 unit, as JSON does: a character beyond U+FFFF (a tag character) is a pair,
  // never `\u` with five digits, which reads as another character and a digit.
  return JSON.stringify(id).replace(/[\p{Cc}\p{Cf}\p{Z}]/gu, (c) =>
    c === ' '
      ? c
      : Array.from(
          { length: c.length },
          (_, i) => `\\u${c.charCodeAt(i).toString(16).padStart(4, '0')}`,
        ).join(''),
  );
}

/** Where ids are read from, as error messages name it. */
interface IdsSource {
  /** `--ids-file exports.txt`, `standard input`. */
  name: string;
  readError(error: NodeJS.ErrnoException): UsageError;
}

const STDIN_SOURCE: IdsSource = {
  name: 'standard input',
  readError: (error) =>
    new UsageError(`cannot read export ids from standard input: ${error.code ?? error.message}`),
};

function fileSource(path: string): IdsSource {
  return {
    name: `--ids-file ${path}`,
    readError: (error) => new UsageError(`cannot read --ids-file ${path}: ${error.code ?? error.message}`),
  };
}

/** Bytes read so far by one command, from every file and standard input. */
interface ByteBudget {
  used: number;
  max: number;
}

function listAdder(ids: string[], limits: Readonly<IdsLimits>): (id: string) => void {
  return (id) => {
    ids.push(id);
    if (ids.length > limits.maxIds) throw tooManyIds(limits.maxIds);
  };
}

function tooManyIds(max: number): UsageError {
  return new UsageError(
    `more than ${max.toLocaleString('en-US')} export ids; split the list across several commands`,
  );
}

function bytes(n: number): string {
  if (n % (1024 * 1024) === 0) return `${n / (1024 * 1024)} MiB`;
  if (n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} bytes`;
}

const NEWLINE = 0x0a;

/**
 * Splits bytes into lines and hands each id to `add`, holding at most one line (of at most
 * `maxLineBytes`) in memory. Throws a UsageError when the budget or the line length is exceeded.
 */
class LineReader {
  private partial: Buffer[] = [];
  private partialBytes = 0;
  /** Lines finished so far; the one being read is `lines + 1`. */
  private lines = 0;

  constructor(
    private readonly budget: ByteBudget,
    private readonly limits: Readonly<IdsLimits>,
    private readonly add: (id: string, line: number) => void,
  ) {}

  push(chunk: Buffer, source: IdsSource): void {
    this.budget.used += chunk.length;
    if (this.budget.used > this.budget.max)
      throw new UsageError(
        `${source.name}: the export ids given exceed ${bytes(this.budget.max)} in all; split the list across several commands`,
      );
    let start = 0;
    for (;;) {
      const end = chunk.indexOf(NEWLINE, start);
      if (end === -1) break;
      this.keep(chunk.subarray(start, end), source);
      this.finishLine();
      start = end + 1;
    }
    if (start < chunk.length) this.keep(chunk.subarray(start), source);
  }

  end(): void {
    if (this.partialBytes > 0) this.finishLine();
  }

  private keep(piece: Buffer, source: IdsSource): void {
    if (piece.length === 0) return;
    this.partialBytes += piece.length;
    if (this.partialBytes > this.limits.maxLineBytes)
      throw new UsageError(
        `${source.name}: line ${this.lines + 1} is longer than ${bytes(this.limits.maxLineBytes)}; ` +
          'expected one export id per line (ids are at most 128 characters)',
      );
    this.partial.push(Buffer.from(piece)); // a copy: never pins the whole chunk
  }

  private finishLine(): void {
    this.lines += 1;
    const raw = Buffer.concat(this.partial, this.partialBytes).toString('utf8');
    this.partial = [];
    this.partialBytes = 0;
    // As parseIdsText: the CR of a CRLF goes first, so a trailing comment ends at the line's end.
    const id = raw.replace(/\r$/, '').replace(/#.*$/, '').trim();
    if (id !== '') this.add(id, this.lines);
  }
}

/**
 * Feeds `stream` to `reader` until it ends. On a broken bound the stream is destroyed, so nothing
 * more is read, and the promise rejects with the reader's UsageError.
 */
function readStream(stream: Readable, source: IdsSource, reader: LineReader): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (error: unknown) => {
      if (settled) return;
      settled = true;
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.destroy();
      reject(error);
    };
    const onData = (chunk: unknown) => {
      try {
        reader.push(
          Buffer.isBuffer(chunk)
            ? chunk
            : typeof chunk === 'string'
              ? Buffer.from(chunk, 'utf8')
              : Buffer.from(chunk as Uint8Array),
          source,
        );
      } catch (error) {
        fail(error);
      }
    };
    const onEnd = () => {
      if (settled) return;
      try {
        reader.end();
      } catch (error) {
        fail(error);
        return;
      }
      settled = true;
      resolve();
    };
    stream.on('data', onData);
    stream.once('end', onEnd);
    // Kept after settling too: a late error must not go unhandled.
    stream.on('error', (error: NodeJS.ErrnoException) => fail(source.readError(error)));
  });
}
