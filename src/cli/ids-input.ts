/**
 * Export ids from the command line: positional ids, `--id`, `--ids-file FILE` and standard input
 * (`--ids-file -`, or a lone `-` among the positional ids). Files and standard input hold one id
 * per line; blank lines and `#` comments are skipped. Ids from every source are merged in the order
 * given, de-duplicated and validated together; a bad id is a usage error.
 */
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { EXPORT_ID_PATTERN } from '../http/control-api.js';
import { UsageError } from '../shared/errors.js';

/** The name standing for standard input, as a positional id or an `--ids-file`. */
export const STDIN = '-';

/** Bad ids named in a usage error before the rest are only counted. */
const BAD_IDS_SHOWN = 5;

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
export async function collectIds(sources: IdSources, input: IdsInput): Promise<string[]> {
  const ids: string[] = [...(sources.ids ?? [])];
  let fromStdin = false;
  for (const p of sources.positionals ?? []) {
    if (p === STDIN) fromStdin = true;
    else ids.push(p);
  }
  for (const file of sources.files ?? []) {
    if (file === STDIN) fromStdin = true;
    else ids.push(...readIdsFile(file));
  }
  if (fromStdin) {
    if (input.stdin.isTTY)
      input.stderr?.write('reading export ids from standard input, one per line; end with Ctrl-D\n');
    ids.push(...(await readIdsStream(input.stdin)));
  }
  const unique = [...new Set(ids)];
  checkIds(unique);
  return unique;
}

/** One id per line; blank lines and `#` comments (whole-line or trailing) are skipped. */
export function parseIdsText(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((line) => line.replace(/#.*$/, '').trim())
    .filter((line) => line !== '');
}

export function readIdsFile(path: string): string[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new UsageError(
      `cannot read --ids-file ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
    );
  }
  return parseIdsText(text);
}

/** Reads the stream to its end and parses it like an ids file. */
export function readIdsStream(stream: Readable): Promise<string[]> {
  return new Promise((resolve, reject) => {
    let text = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      text += chunk;
    });
    stream.once('end', () => resolve(parseIdsText(text)));
    stream.once('error', (error: NodeJS.ErrnoException) =>
      reject(new UsageError(`cannot read export ids from standard input: ${error.code ?? error.message}`)),
    );
  });
}

export function checkIds(ids: readonly string[]): void {
  const bad = ids.filter((id) => !EXPORT_ID_PATTERN.test(id));
  if (bad.length === 0) return;
  const shown = bad
    .slice(0, BAD_IDS_SHOWN)
    .map((b) => JSON.stringify(b.length > 140 ? `${b.slice(0, 140)}…` : b));
  const more = bad.length > BAD_IDS_SHOWN ? ` and ${bad.length - BAD_IDS_SHOWN} more` : '';
  throw new UsageError(
    `invalid export id${bad.length > 1 ? 's' : ''} ${shown.join(', ')}${more}: ids match ^[A-Za-z0-9_-]{1,128}$`,
  );
}
