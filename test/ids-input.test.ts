import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatTable, type StateRow } from '../src/cli/get.js';
import {
  collectIds,
  ID_LIMITS,
  type IdsLimits,
  MAX_ID_LINE_BYTES,
  MAX_IDS,
  MAX_IDS_INPUT_BYTES,
  readIdsFile,
  readIdsStream,
} from '../src/cli/ids-input.js';
import { runCli } from '../src/cli.js';
import { UsageError } from '../src/shared/errors.js';

const MANY = 200_000;
const id = (i: number) => `exp-${i.toString().padStart(6, '0')}`;
const limits = (over: Partial<IdsLimits>): IdsLimits => ({ ...ID_LIMITS, ...over });

/** A stream of `chunks` chunks made by `make`, counting how many were pulled. */
function generated(chunks: number, make: (i: number) => string) {
  const stats = { pulled: 0 };
  function* lines() {
    for (let i = 0; i < chunks; i++) {
      stats.pulled += 1;
      yield Buffer.from(make(i));
    }
  }
  return { stream: Object.assign(Readable.from(lines(), { objectMode: false }), { isTTY: false }), stats };
}

async function usageError(work: Promise<unknown>): Promise<UsageError> {
  const error = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(UsageError);
  return error as UsageError;
}

describe('ids input bounds', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'watcher-ids-input-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('documents its bounds: 64 MiB in all, 4 KiB a line, 2,000,000 ids', () => {
    expect(ID_LIMITS).toEqual({
      maxBytes: MAX_IDS_INPUT_BYTES,
      maxLineBytes: MAX_ID_LINE_BYTES,
      maxIds: MAX_IDS,
    });
    expect([MAX_IDS_INPUT_BYTES, MAX_ID_LINE_BYTES, MAX_IDS]).toEqual([64 * 1024 * 1024, 4096, 2_000_000]);
  });

  it(`collects ${MANY} ids from a file without overflowing the stack`, async () => {
    const file = join(dir, 'many.txt');
    writeFileSync(file, Array.from({ length: MANY }, (_, i) => id(i)).join('\n'));
    const ids = await collectIds({ files: [file] }, { stdin: Readable.from([]) });
    expect(ids).toHaveLength(MANY);
    expect(ids[MANY - 1]).toBe(id(MANY - 1));
    expect(readIdsFile(file)).toHaveLength(MANY);
  });

  it(`collects ${MANY} ids from standard input without overflowing the stack`, async () => {
    const { stream } = generated(MANY / 1000, (c) =>
      Array.from({ length: 1000 }, (_, i) => `${id(c * 1000 + i)}\r\n`).join(''),
    );
    const ids = await collectIds({ positionals: ['-'] }, { stdin: stream });
    expect(ids).toHaveLength(MANY);
    expect(ids[0]).toBe(id(0));
  });

  it('refuses a file over the byte bound with a usage error', async () => {
    const file = join(dir, 'big.txt');
    writeFileSync(file, Array.from({ length: 1000 }, (_, i) => id(i)).join('\n'));
    const error = await usageError(
      collectIds({ files: [file] }, { stdin: Readable.from([]) }, limits({ maxBytes: 4096 })),
    );
    expect(error.message).toBe(
      `--ids-file ${file}: the export ids given exceed 4 KiB in all; split the list across several commands`,
    );
    expect(() => readIdsFile(file, limits({ maxBytes: 4096 }))).toThrow(/exceed 4 KiB/);
  });

  it('counts the byte bound over all files and standard input together', async () => {
    const a = join(dir, 'a.txt');
    writeFileSync(a, `${'x'.repeat(600)}\n`);
    const error = await usageError(
      collectIds(
        { files: [a, '-'] },
        { stdin: Readable.from(['y'.repeat(600)]) },
        limits({ maxBytes: 1000 }),
      ),
    );
    expect(error.message).toMatch(/^standard input: the export ids given exceed 1000 bytes in all/);
  });

  it('refuses a stream over the byte bound, without reading the rest', async () => {
    const { stream, stats } = generated(10_000, (c) => `${id(c)}\n`.repeat(100));
    const error = await usageError(
      collectIds({ positionals: ['-'] }, { stdin: stream }, limits({ maxBytes: 64 * 1024 })),
    );
    expect(error.message).toMatch(/^standard input: the export ids given exceed 64 KiB in all/);
    expect(stats.pulled).toBeLessThan(100);
    await expect(
      readIdsStream(generated(10_000, () => 'a\n'.repeat(100)).stream, limits({ maxBytes: 1000 })),
    ).rejects.toThrow(/exceed 1000 bytes/);
  });

  it('refuses a line over 4 KiB, naming its number without echoing it', async () => {
    const file = join(dir, 'long-line.txt');
    const long = 'a'.repeat(MAX_ID_LINE_BYTES + 1);
    writeFileSync(file, `ok-1\r\n# fine\r\n${long}\r\nok-2\r\n`);
    const error = await usageError(collectIds({ files: [file] }, { stdin: Readable.from([]) }));
    expect(error.message).toBe(
      `--ids-file ${file}: line 3 is longer than 4 KiB; expected one export id per line (ids are at most 128 characters)`,
    );
    expect(() => readIdsFile(file)).toThrow(/line 3 is longer than 4 KiB/);
    // A line of exactly the bound, spaces and CR included, is still read.
    writeFileSync(file, `  ${'b'.repeat(128)}${' '.repeat(MAX_ID_LINE_BYTES - 128 - 3)}\r\n`);
    expect(await collectIds({ files: [file] }, { stdin: Readable.from([]) })).toEqual(['b'.repeat(128)]);
  });

  it('refuses an endless line on standard input after its first chunks', async () => {
    const { stream, stats } = generated(1000, () => 'a'.repeat(64 * 1024));
    const error = await usageError(collectIds({ positionals: ['-'] }, { stdin: stream }));
    expect(error.message).toMatch(/^standard input: line 1 is longer than 4 KiB/);
    expect(stats.pulled).toBeLessThan(10);
  });

  it('bounds the number of distinct ids; duplicates do not count', async () => {
    const stdin = () => Readable.from(['a\nb\nc\na\nb\n']);
    expect(await collectIds({ positionals: ['-'] }, { stdin: stdin() }, limits({ maxIds: 3 }))).toEqual([
      'a',
      'b',
      'c',
    ]);
    const error = await usageError(
      collectIds({ positionals: ['z', '-'] }, { stdin: stdin() }, limits({ maxIds: 3 })),
    );
    expect(error.message).toBe('more than 3 export ids; split the list across several commands');
  });

  it('keeps BOM, CRLF, comments and UTF-8 whole however the input is chunked', async () => {
    const text = '\uFEFFexp-1\r\n\r\n  # note é\r\nexp_2 # trailing\r\nbad/é\r\nexp-1\r\nlast';
    const bytes = Buffer.from(text);
    const oneByteChunks = Readable.from(Array.from(bytes, (b) => Buffer.from([b])));
    const error = await usageError(collectIds({ positionals: ['-'] }, { stdin: oneByteChunks }));
    expect(error.message).toBe(
      'invalid export id "bad/é" (standard input, line 5): ids match ^[A-Za-z0-9_-]{1,128}$',
    );
    expect(await readIdsStream(Readable.from(Array.from(bytes, (b) => Buffer.from([b]))))).toEqual([
      'exp-1',
      'exp_2',
      'bad/é',
      'exp-1',
      'last',
    ]);
  });

  it('shows the invisible characters that make a pasted id invalid', async () => {
    // A zero-width space (web pages), a no-break space inside, a right-to-left override.
    const stdin = Readable.from(['exp-1\u200b\nexp\u00a02\n\u202eexp-3\n']);
    const error = await usageError(collectIds({ positionals: ['-'] }, { stdin }));
    expect(error.message).toBe(
      'invalid export ids "exp-1\\u200b" (standard input, line 1), "exp\\u00a02" (standard input, line 2), ' +
        '"\\u202eexp-3" (standard input, line 3): ids match ^[A-Za-z0-9_-]{1,128}$',
    );
  });

  it('escapes an invisible character beyond the BMP so that the quoted id reads back as it was', async () => {
    // U+E0041 (a tag character) is invisible; "\ue0041" would read as U+E004 followed by a "1".
    const stdin = Readable.from(['exp-1\u{E0041}\n']);
    const error = await usageError(collectIds({ positionals: ['-'] }, { stdin }));
    expect(error.message).toBe(
      'invalid export id "exp-1\\udb40\\udc41" (standard input, line 1): ids match ^[A-Za-z0-9_-]{1,128}$',
    );
    const quoted = /"(.*)"/.exec(error.message)?.[1] ?? '';
    expect(JSON.parse(`"${quoted}"`)).toBe('exp-1\u{E0041}');
  });

  it('names the file and line an invalid id was read from; an id given as an argument is quoted alone', async () => {
    const file = join(dir, 'one-bad.txt');
    writeFileSync(file, '# exports of run 7\nexp-1\n\nbad id\nexp-2\n');
    const error = await usageError(
      collectIds({ ids: ['also bad'], files: [file] }, { stdin: Readable.from([]) }),
    );
    expect(error.message).toBe(
      `invalid export ids "also bad", "bad id" (--ids-file ${file}, line 4): ids match ^[A-Za-z0-9_-]{1,128}$`,
    );
    // Given as an argument first, then read from a file: quoted alone, as given.
    const also = await usageError(
      collectIds({ ids: ['bad id'], files: [file] }, { stdin: Readable.from([]) }),
    );
    expect(also.message).toBe('invalid export id "bad id": ids match ^[A-Za-z0-9_-]{1,128}$');
    // An id given twice names where it was first read.
    const twice = join(dir, 'twice.txt');
    writeFileSync(twice, 'x/1\nx/1\n');
    const again = await usageError(collectIds({ files: [twice, twice] }, { stdin: Readable.from([]) }));
    expect(again.message).toBe(
      `invalid export id "x/1" (--ids-file ${twice}, line 1): ids match ^[A-Za-z0-9_-]{1,128}$`,
    );
  });

  it('get reports a broken bound as one usage line and exit 2', async () => {
    const file = join(dir, 'get-long.txt');
    writeFileSync(file, `ok\n${'z'.repeat(10_000)}\n`);
    let said = '';
    const code = await runCli(
      ['get', '--ids-file', file],
      {},
      { stderr: { write: (t: string) => (said += t) } },
    );
    expect(code).toBe(2);
    expect(said).toBe(
      `usage: --ids-file ${file}: line 2 is longer than 4 KiB; expected one export id per line (ids are at most 128 characters)\n`,
    );
  });
});

describe('formatTable', () => {
  it(`formats ${MANY} rows without overflowing the stack`, () => {
    const rows: StateRow[] = Array.from({ length: MANY }, (_, i) => ({
      id: id(i),
      state: 'RUNNING',
      export: null,
    }));
    const table = formatTable(rows);
    expect(table.split('\n')).toHaveLength(MANY + 2);
    expect(table.split('\n')[1]).toMatch(/^exp-000000 {2}RUNNING/);
  });
});
