import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createLogger, flushLogLines, TurnBatch } from '../src/shared/log.js';
import { Redactor } from '../src/shared/redact.js';

const ROOT = join(import.meta.dirname, '..');
const TSX = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
const LOG_MODULE = JSON.stringify(pathToFileURL(join(ROOT, 'src/shared/log.ts')).href);

/** A target that keeps each write it gets, as one string. */
function recorder(): { writes: string[]; write(text: string): void } {
  const writes: string[] = [];
  return { writes, write: (text: string) => void writes.push(text) };
}

const endOfTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('TurnBatch: the log lines of one turn in one write', () => {
  it('writes nothing during the turn, then every line of it in one write, in order', async () => {
    const target = recorder();
    const batch = new TurnBatch(target);
    batch.write('one\n');
    batch.write('two\n');
    batch.write('three\n');
    expect(target.writes).toEqual([]);
    await endOfTurn();
    expect(target.writes).toEqual(['one\ntwo\nthree\n']);
    // The next turn's lines are a write of their own.
    batch.write('four\n');
    await endOfTurn();
    expect(target.writes).toEqual(['one\ntwo\nthree\n', 'four\n']);
  });

  it('writes at once when the lines held reach the bound, and holds no more than that', async () => {
    const target = recorder();
    const batch = new TurnBatch(target, 10);
    batch.write('12345\n');
    expect(target.writes).toEqual([]);
    batch.write('67890\n');
    expect(target.writes).toEqual(['12345\n67890\n']);
    batch.write('x\n');
    await endOfTurn();
    expect(target.writes).toEqual(['12345\n67890\n', 'x\n']);
  });

  it('flushLogLines writes what every batch holds, now', () => {
    const a = recorder();
    const b = recorder();
    new TurnBatch(a).write('a\n');
    new TurnBatch(b).write('b\n');
    flushLogLines();
    expect([a.writes, b.writes]).toEqual([['a\n'], ['b\n']]);
  });

  it('a batched logger writes scrubbed JSON lines, one write per turn', async () => {
    const writes: string[] = [];
    const log = createLogger({
      level: 'info',
      batched: true,
      destination: new Writable({
        write(chunk, _encoding, done) {
          writes.push(String(chunk));
          done();
        },
      }),
      redactor: new Redactor(['secret-value-123']),
    });
    log.info({ n: 1 }, 'first');
    log.info({ n: 2, note: 'has secret-value-123 in it' }, 'second');
    expect(writes).toEqual([]);
    await endOfTurn();
    expect(writes).toHaveLength(1);
    const lines = (writes[0] as string)
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines.map((l) => [l.n, l.msg])).toEqual([
      [1, 'first'],
      [2, 'second'],
    ]);
    expect(writes[0]).not.toContain('secret-value-123');
  });

  it('a process that exits in the turn it logged keeps its lines', () => {
    // process.exit right after logging: the lines are still held, and the exit handler writes them.
    const script = `
      import { createLogger } from ${LOG_MODULE};
      const log = createLogger({ level: 'info', batched: true });
      for (let i = 0; i < 3; i++) log.info({ i }, 'before exit');
      process.exit(3);
    `;
    const child = spawnSync(process.execPath, ['--import', TSX, '--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(child.status).toBe(3);
    const lines = child.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines.map((l) => l.i)).toEqual([0, 1, 2]);
  }, 70_000);
});
