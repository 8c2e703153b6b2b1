/**
 * Runs the CLI as a child process, with an environment free of the machine's own watcher
 * variables, and collects its JSON log lines as they come. Optionally in another working
 * directory, and with text on its standard input (otherwise stdin is empty).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const ROOT = join(import.meta.dirname, '..', '..');
const TSX = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
const CLI = join(ROOT, 'src', 'cli.ts');

export interface CliProcess {
  child: ChildProcess;
  /** JSON lines from stdout. */
  lines: Array<Record<string, unknown>>;
  stdout: () => string;
  stderr: () => string;
  /** Resolves with the first stdout JSON line matching; rejects if the process exits first. */
  waitForLine(test: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running = new Set<ChildProcess>();
/** Data directories made for processes that were given none: never the repository's ./data. */
const scratchDirs = new Set<string>();

/** Kills what a test left running and removes its scratch data directories; call it in afterEach. */
export function killAll(): void {
  for (const child of running) if (child.exitCode === null) child.kill('SIGKILL');
  running.clear();
  for (const dir of scratchDirs) rmSync(dir, { recursive: true, force: true });
  scratchDirs.clear();
}

/**
 * A fresh WATCHER_DATA_DIR and HOME unless the test chose them: never the repository's ./data,
 * nor the developer's own ~/.sevenbridges/credentials.
 */
function withScratch(env: Record<string, string>): Record<string, string> {
  if ('WATCHER_DATA_DIR' in env && 'HOME' in env) return env;
  const dir = mkdtempSync(join(tmpdir(), 'sbg-cli-scratch-'));
  scratchDirs.add(dir);
  return { WATCHER_DATA_DIR: join(dir, 'data'), HOME: dir, ...env };
}

/** `env` over this process's environment less the machine's own watcher variables, with scratch dirs. */
export function cliEnv(env: Record<string, string>): Record<string, string> {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(
      (entry): entry is [string, string] =>
        entry[1] !== undefined &&
        !/^(SB_|WATCHER_|LOG_LEVEL|NODE_OPTIONS|CREDENTIALS_DIRECTORY)/.test(entry[0]),
    ),
  );
  return { ...clean, ...withScratch(env) };
}

/** The command line that runs the CLI from source with `args`, as `spawnCli` runs it. */
export function cliCommand(args: readonly string[]): string[] {
  return [process.execPath, '--import', TSX, CLI, ...args];
}

export interface SpawnOptions {
  /** Working directory; default the repository root. */
  cwd?: string;
  /** Written to the child's standard input, which is then closed. */
  stdin?: string;
  /** With `stdin`: the input is left open after it, as by a producer still writing. */
  stdinOpen?: boolean;
}

export function spawnCli(
  args: string[],
  env: Record<string, string>,
  options: SpawnOptions = {},
): CliProcess {
  const [node, ...argv] = cliCommand(args);
  const child = spawn(node as string, argv, {
    cwd: options.cwd ?? ROOT,
    env: cliEnv(env),
    stdio: [options.stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  running.add(child);
  if (options.stdin !== undefined) {
    if (options.stdinOpen) child.stdin?.write(options.stdin);
    else child.stdin?.end(options.stdin);
  }
  const lines: Array<Record<string, unknown>> = [];
  let out = '';
  let err = '';
  let buffer = '';
  const waiters: Array<{
    test: (l: Record<string, unknown>) => boolean;
    resolve: (l: Record<string, unknown>) => void;
  }> = [];
  child.stdout?.on('data', (chunk: Buffer) => {
    out += chunk;
    buffer += chunk;
    let nl = buffer.indexOf('\n');
    while (nl >= 0) {
      const text = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      nl = buffer.indexOf('\n');
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text);
      } catch {
        continue;
      }
      lines.push(line);
      for (const w of [...waiters]) {
        if (w.test(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    err += chunk;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }),
  );
  return {
    child,
    lines,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitForLine: (test) =>
      new Promise((resolve, reject) => {
        const found = lines.find(test);
        if (found) return resolve(found);
        waiters.push({ test, resolve });
        void exited.then(({ code }) =>
          reject(new Error(`process exited (${code}) before the line came:\n${out}\n${err}`)),
        );
      }),
  };
}

/**
 * A daemon's environment for tests that spawn `run`: loopback platform and receiver, a free port,
 * fast polling and a budget that never binds; `extra` adds or overrides variables.
 */
export function daemonEnv(
  simUrl: string,
  hookUrl: string,
  secret: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    SB_API_ENDPOINT: simUrl,
    WATCHER_HTTP_PORT: '0',
    WATCHER_POLL_INTERVAL: '200ms',
    WATCHER_RATE_BUDGET: '100000',
    WATCHER_RATE_WINDOW: '60s',
    WATCHER_WEBHOOK_URLS: hookUrl,
    WATCHER_WEBHOOK_SECRET: secret,
    WATCHER_SHUTDOWN_TIMEOUT: '2s',
    LOG_LEVEL: 'info',
    ...extra,
  };
}

/**
 * The first line a process prints on stdout (the URL that `simulate` and `receive` print once
 * listening); rejects if it exits first.
 */
export function firstLine(p: CliProcess): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const look = () => {
      const out = p.stdout();
      if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')));
    };
    p.child.stdout?.on('data', look);
    look();
    void p.exited.then(() => reject(new Error(`exited: ${p.stderr()}`)));
  });
}
