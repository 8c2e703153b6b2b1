/**
 * The deployment files. No Docker engine runs here, so the Dockerfile is checked by reading it
 * (and by dockerfile-utils' linter when that package is installed), and the commands it gives the
 * image (ENTRYPOINT + CMD, HEALTHCHECK, ENV) are run against a local build laid out like the
 * image's /app: dist/ compiled into a temporary directory, package.json beside it. The systemd
 * unit is checked for its directives and, where systemd is installed, with `systemd-analyze`.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:http';
import { isBuiltin } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { parse as parseDotenv } from 'dotenv';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULTS, parseDuration } from '../src/config/config.js';
import { closedPort } from './helpers/ports.js';

const ROOT = join(import.meta.dirname, '..');
const DOCKERFILE = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const DOCKERIGNORE = readFileSync(join(ROOT, '.dockerignore'), 'utf8');
const UNIT_PATH = join(ROOT, 'config', 'sbg-export-watcher.service');
const UNIT = readFileSync(UNIT_PATH, 'utf8');

// ---- Dockerfile parsing ----------------------------------------------------------------------

interface Instruction {
  keyword: string;
  args: string;
}
interface Stage {
  image: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** Splits a Dockerfile into stages of instructions: continuations joined, comments dropped. */
function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#') || (line === '' && pending === '')) continue;
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1).trim()} `;
      continue;
    }
    const logical = (pending + line).trim();
    pending = '';
    const [keyword = '', ...rest] = logical.split(/\s+/);
    const instruction = { keyword: keyword.toUpperCase(), args: rest.join(' ') };
    if (instruction.keyword === 'FROM') {
      const [image = '', as, name] = rest;
      stages.push({ image, name: as?.toUpperCase() === 'AS' ? name : undefined, instructions: [] });
    } else {
      stages.at(-1)?.instructions.push(instruction);
    }
  }
  return stages;
}

/** The JSON array of an exec-form instruction, or undefined for the shell form. */
function execForm(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined;
  const parsed: unknown = JSON.parse(args);
  return Array.isArray(parsed) && parsed.every((a) => typeof a === 'string') ? parsed : undefined;
}

function argsOf(stage: Stage, keyword: string): string[] {
  return stage.instructions.filter((i) => i.keyword === keyword).map((i) => i.args);
}

/** `ENV A=1 B=2` (and the legacy `ENV A 1`) into one object, later values winning. */
function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const args of argsOf(stage, 'ENV')) {
    if (!/^[^\s=]+=/.test(args)) {
      const [key = '', ...value] = args.split(/\s+/);
      env[key] = value.join(' ');
      continue;
    }
    // KEY=value or KEY="a value with spaces", as Docker reads them.
    for (const [, key = '', value = ''] of args.matchAll(/([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
      env[key] = value.replace(/^"(.*)"$/s, '$1').replace(/\\(.)/g, '$1');
    }
  }
  return env;
}

const stages = parseDockerfile(DOCKERFILE);
const runtime = stages.at(-1)!;
const build = stages.find((s) => s !== runtime && argsOf(s, 'RUN').some((r) => r.includes('npm run build')));
const imageEnv = envOf(runtime);
const workdir = argsOf(runtime, 'WORKDIR').at(-1) ?? '/';
const entrypoint = execForm(argsOf(runtime, 'ENTRYPOINT').at(-1) ?? '') ?? [];
const cmd = execForm(argsOf(runtime, 'CMD').at(-1) ?? '') ?? [];
/** What the container runs: ENTRYPOINT followed by CMD. */
const imageCommand = [...entrypoint, ...cmd];
const healthcheckArgs = argsOf(runtime, 'HEALTHCHECK').at(-1) ?? '';
/** The HEALTHCHECK's command: its options stripped, then `CMD [...]`. */
const healthcheckCommand = execForm(healthcheckArgs.replace(/^(--\S+\s+)*CMD\s+/, '')) ?? [];

// dockerfile-utils (the linter behind VS Code's Dockerfile support) is optional: the test lints
// with it when it is installed. The specifier is a variable so the typecheck does not need it.
interface Diagnostic {
  message: string;
  severity?: number;
  range: { start: { line: number } };
}
const LINTER = 'dockerfile-utils';
const linter = (await import(LINTER).catch(() => undefined)) as
  | { validate(content: string): Diagnostic[] }
  | undefined;

describe('Dockerfile', () => {
  it('has a build stage and a runtime stage on the same pinned Node LTS slim image', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    expect(build, 'a stage that runs `npm run build`').toBeDefined();
    for (const stage of stages) expect(stage.image).toMatch(/^node:\d+-[a-z]+-slim$/);
    expect(new Set(stages.map((s) => s.image)).size).toBe(1);
    const buildRuns = argsOf(build!, 'RUN').join('\n');
    expect(buildRuns).toMatch(/\bnpm ci\b/);
  });

  it('copies only the compiled JavaScript, the production dependencies and the manifests into the runtime stage', () => {
    const copies = argsOf(runtime, 'COPY');
    expect(copies).toContain('package.json package-lock.json ./');
    expect(copies).toContain(`--from=${build!.name} /app/dist ./dist`);
    expect(copies).toContain(`--from=${build!.name} /app/node_modules ./node_modules`);
    expect(copies).toHaveLength(3);
    const buildRuns = argsOf(build!, 'RUN').join('\n');
    // The native binding of better-sqlite3 can be compiled in the build stage, never at run time.
    expect(buildRuns).toMatch(/apt-get install .*\bpython3\b.*\bmake\b.*\bg\+\+/);
    expect(buildRuns).toMatch(/npm prune --omit=dev/);
    expect(buildRuns).toMatch(/npm cache clean --force/);
    expect(argsOf(runtime, 'RUN').join('\n')).not.toMatch(/\bg\+\+|\bmake\b|python3/);
    expect(imageEnv.NODE_ENV).toBe('production');
  });

  it('runs as node, under tini, starting node directly in exec form', () => {
    expect(argsOf(runtime, 'USER').at(-1)).toBe('node');
    expect(entrypoint.length, 'ENTRYPOINT in exec form').toBeGreaterThan(0);
    expect(cmd.length, 'CMD in exec form').toBeGreaterThan(0);
    expect(imageCommand.slice(0, 4)).toEqual(['/usr/bin/tini', '--', 'node', `${workdir}/dist/cli.js`]);
    expect(cmd).toEqual(['run']);
    expect(imageCommand.join(' ')).not.toMatch(/\bnpm\b/);
    expect(argsOf(runtime, 'RUN').join('\n')).toMatch(/apt-get install .*\btini\b/);
  });

  it('has a HEALTHCHECK that runs node on dist/healthcheck.js (no curl in the image)', () => {
    expect(healthcheckArgs).toMatch(/--timeout=\d+s/);
    expect(healthcheckCommand).toEqual(['node', `${workdir}/dist/healthcheck.js`]);
  });

  it('listens on every interface on 8080 and keeps its state in the /data volume, owned by node', () => {
    expect(imageEnv.WATCHER_HTTP_HOST).toBe('0.0.0.0');
    expect(imageEnv.WATCHER_HTTP_PORT ?? DEFAULTS.WATCHER_HTTP_PORT).toBe('8080');
    expect(argsOf(runtime, 'EXPOSE')).toEqual(['8080']);
    expect(imageEnv.WATCHER_DATA_DIR).toBe('/data');
    expect(argsOf(runtime, 'VOLUME').map((v) => execForm(v)?.join(' ') ?? v)).toEqual(['/data']);
    expect(argsOf(runtime, 'RUN').join('\n')).toMatch(/chown (-R )?node:node \/data/);
  });

  it('keeps dependencies, build output, state and secrets out of the build context', () => {
    const patterns = DOCKERIGNORE.split('\n').map((l) => l.trim());
    for (const p of ['node_modules', 'dist', '.git', 'data', '**/.env', 'coverage']) {
      expect(patterns).toContain(p);
    }
  });

  it.skipIf(!linter)('passes dockerfile-utils lint (skipped: dockerfile-utils is not installed)', () => {
    const problems = linter!.validate(DOCKERFILE).map((d) => `line ${d.range.start.line + 1}: ${d.message}`);
    expect(problems).toEqual([]);
  });
});

// ---- The image's commands against a local build ---------------------------------------------

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The test's environment without anything that would configure the watcher behind its back. */
const baseEnv = Object.fromEntries(
  Object.entries(process.env).filter(
    ([k]) => !/^(SB_|WATCHER_|LOG_LEVEL$|NODE_OPTIONS$|NODE_ENV$|CREDENTIALS_DIRECTORY$)/.test(k),
  ),
);

class Process {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly finished: Promise<Finished>;

  constructor(command: readonly string[], env: Record<string, string>, cwd: string) {
    const [program = '', ...args] = command;
    this.child = spawn(program, args, {
      cwd,
      env: { ...baseEnv, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout?.on('data', (chunk: Buffer) => {
      this.stdout += chunk;
    });
    this.child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr += chunk;
    });
    this.finished = new Promise((resolve) =>
      this.child.once('close', (code, signal) =>
        resolve({ code, signal, stdout: this.stdout, stderr: this.stderr }),
      ),
    );
  }

  /** Resolves with the first JSON log line on stdout that matches; rejects if the process ends first. */
  logLine(test: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const look = () => {
        // Whole lines only: the last piece may still be arriving.
        for (const text of this.stdout.split('\n').slice(0, -1)) {
          let line: Record<string, unknown>;
          try {
            line = JSON.parse(text) as Record<string, unknown>;
          } catch {
            continue;
          }
          if (test(line)) {
            this.child.stdout?.off('data', look);
            resolve(line);
            return;
          }
        }
      };
      this.child.stdout?.on('data', look);
      look();
      void this.finished.then((f) => reject(new Error(`exited (${f.code}) first:\n${f.stdout}${f.stderr}`)));
    });
  }
}

interface LockFile {
  packages: Record<string, { dev?: boolean }>;
}

/**
 * node_modules as `npm ci --omit=dev` leaves it in the image: the lock's top-level packages not
 * marked dev (nested ones come with their parent), linked from the project's node_modules.
 */
function linkProductionDependencies(target: string): void {
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as LockFile;
  for (const [path, entry] of Object.entries(lock.packages)) {
    if (entry.dev || !/^node_modules\/(@[^/]+\/)?[^/]+$/.test(path)) continue;
    const installed = join(ROOT, path);
    if (!existsSync(installed)) continue; // an optional package for another platform
    const link = join(target, path.slice('node_modules/'.length));
    mkdirSync(dirname(link), { recursive: true });
    symlinkSync(installed, link, 'dir');
  }
}

/** The packages a compiled module imports statically (`import ... from 'x'`, `export ... from 'x'`). */
function staticImports(code: string): string[] {
  const specifiers = [
    ...code.matchAll(/^\s*(?:import|export)\s(?:[^'"]*?\sfrom\s)?\s*['"]([^'"]+)['"]/gm),
  ].map((m) => m[1]!);
  return specifiers
    .filter((s) => !s.startsWith('.') && !s.startsWith('/') && !isBuiltin(s))
    .map((s) =>
      s
        .split('/')
        .slice(0, s.startsWith('@') ? 2 : 1)
        .join('/'),
    );
}

describe('the image commands, run against a local build', () => {
  let tmp: string;
  /** Stands for the image's WORKDIR: dist/, package.json and node_modules side by side. */
  let app: string;
  const servers: Server[] = [];
  const processes: Process[] = [];

  /** An image path (`/app/dist/x.js`) on the local build; `node` is this Node. */
  const local = (command: readonly string[]): string[] =>
    command.map((arg) =>
      arg === 'node'
        ? process.execPath
        : arg.startsWith(`${workdir}/`)
          ? join(app, arg.slice(workdir.length))
          : arg,
    );
  /** ENTRYPOINT + CMD without tini, which only stands between the container runtime and node. */
  const daemonCommand = (): string[] =>
    local(
      imageCommand[0]?.endsWith('/tini') ? imageCommand.slice(imageCommand.indexOf('--') + 1) : imageCommand,
    );

  const start = (command: readonly string[], env: Record<string, string>): Process => {
    const p = new Process(command, env, app);
    processes.push(p);
    return p;
  };
  const healthcheck = (port: number): Promise<Finished> =>
    start(local(healthcheckCommand), { ...imageEnv, WATCHER_HTTP_PORT: String(port) }).finished;

  const listen = async (handler: Parameters<typeof createServer>[1], host = '127.0.0.1'): Promise<number> => {
    const server = createServer(handler);
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, host, resolve));
    return (server.address() as AddressInfo).port;
  };

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'sbg-deploy-'));
    app = join(tmp, 'app');
    mkdirSync(join(tmp, 'data'), { recursive: true });
    mkdirSync(app);
    copyFileSync(join(ROOT, 'package.json'), join(app, 'package.json'));
    linkProductionDependencies(join(app, 'node_modules'));
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const compiled = new Process(
      [process.execPath, tsc, '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(app, 'dist')],
      {},
      ROOT,
    );
    const { code, stdout, stderr } = await compiled.finished;
    expect(code, `tsc failed:\n${stdout}${stderr}`).toBe(0);
  }, 60_000);

  afterEach(async () => {
    for (const p of processes.splice(0)) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    for (const s of servers.splice(0)) {
      s.closeAllConnections();
      await new Promise((resolve) => s.close(resolve));
    }
  });
  afterAll(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('imports, from the compiled code, only packages that `npm ci --omit=dev` installs', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
      dependencies?: Record<string, string>;
    };
    const production = new Set(Object.keys(pkg.dependencies ?? {}));
    const dist = join(app, 'dist');
    const outside = (readdirSync(dist, { recursive: true }) as string[])
      .filter((f) => f.endsWith('.js'))
      .flatMap((f) =>
        staticImports(readFileSync(join(dist, f), 'utf8'))
          .filter((name) => !production.has(name))
          .map((name) => `dist/${f} imports ${name}, which is not in "dependencies"`),
      );
    expect(outside).toEqual([]);
  });

  describe('HEALTHCHECK', () => {
    it('exits 0 when GET /healthz answers 200', async () => {
      const port = await listen((req, res) => {
        const ok = req.method === 'GET' && req.url === '/healthz';
        res.writeHead(ok ? 200 : 404, { 'content-type': 'application/json' });
        res.end(ok ? '{"status":"ok"}' : '{}');
      });
      const result = await healthcheck(port);
      expect(result.code, result.stderr).toBe(0);
    });

    it('reads WATCHER_HTTP_PORT from .env in the working directory, as the daemon does', async () => {
      let asked = 0;
      const port = await listen((_req, res) => {
        asked++;
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
      });
      const dotenv = join(app, '.env');
      writeFileSync(dotenv, `WATCHER_HTTP_PORT=${port}\n`);
      try {
        const { WATCHER_HTTP_PORT: _set, ...withoutPort } = imageEnv;
        const result = await start(local(healthcheckCommand), withoutPort).finished;
        expect(result.code, result.stderr).toBe(0);
        // The environment still wins.
        const closed = await closedPort();
        const overridden = await start(local(healthcheckCommand), {
          ...withoutPort,
          WATCHER_HTTP_PORT: String(closed),
        }).finished;
        expect(overridden.code).toBe(1);
        expect(overridden.stderr).toContain(`:${closed}/healthz`);
        // Set but blank, it means the default, as in the daemon: .env does not fill it.
        const blank = await start(local(healthcheckCommand), { ...withoutPort, WATCHER_HTTP_PORT: '' })
          .finished;
        expect(asked).toBe(1);
        if (blank.code !== 0) expect(blank.stderr).toContain(':8080/healthz');
      } finally {
        rmSync(dotenv, { force: true });
      }
    });

    it('asks the address WATCHER_HTTP_HOST names when it is not a wildcard, from the environment or .env', async () => {
      // A daemon bound to one loopback address (or ::1, or an interface's address) is not reached
      // on 127.0.0.1.
      const healthz: Parameters<typeof createServer>[1] = (req, res) => {
        const ok = req.method === 'GET' && req.url === '/healthz';
        res
          .writeHead(ok ? 200 : 404, { 'content-type': 'application/json' })
          .end(ok ? '{"status":"ok"}' : '{}');
      };
      const port = await listen(healthz, '127.0.0.2');
      const fromEnv = await start(local(healthcheckCommand), {
        ...imageEnv,
        WATCHER_HTTP_HOST: '127.0.0.2',
        WATCHER_HTTP_PORT: String(port),
      }).finished;
      expect(fromEnv.code, fromEnv.stderr).toBe(0);

      const dotenv = join(app, '.env');
      writeFileSync(dotenv, `WATCHER_HTTP_HOST=127.0.0.2\nWATCHER_HTTP_PORT=${port}\n`);
      try {
        const { WATCHER_HTTP_HOST: _host, WATCHER_HTTP_PORT: _port, ...without } = imageEnv;
        const fromFile = await start(local(healthcheckCommand), without).finished;
        expect(fromFile.code, fromFile.stderr).toBe(0);
      } finally {
        rmSync(dotenv, { force: true });
      }

      // "[::1]" is ::1, as the daemon reads it; and :: (every interface) is reached on loopback.
      const v6 = await listen(healthz, '::1').catch(() => undefined); // no IPv6 here
      if (v6 !== undefined) {
        for (const host of ['::1', '[::1]']) {
          const result = await start(local(healthcheckCommand), {
            ...imageEnv,
            WATCHER_HTTP_HOST: host,
            WATCHER_HTTP_PORT: String(v6),
          }).finished;
          expect(result.code, `${host}: ${result.stderr}`).toBe(0);
        }
      }
      const wildcard = await listen(healthz);
      const result = await start(local(healthcheckCommand), {
        ...imageEnv,
        WATCHER_HTTP_HOST: '::',
        WATCHER_HTTP_PORT: String(wildcard),
      }).finished;
      expect(result.code, result.stderr).toBe(0);
    });

    it('exits 1 when /healthz answers 503', async () => {
      const port = await listen((_req, res) => {
        res.writeHead(503).end('{"status":"stopping"}');
      });
      const result = await healthcheck(port);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/answered 503/);
    });

    it('exits 1 when nothing listens on the port', async () => {
      const result = await healthcheck(await closedPort());
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/ECONNREFUSED/);
    });

    it('exits 1, within its own timeout, when the daemon accepts but never answers', async () => {
      const port = await listen(() => {});
      const result = await healthcheck(port);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/no answer within/);
    });
  });

  describe('ENTRYPOINT + CMD with the image environment', () => {
    it('refuses to start on 0.0.0.0 without WATCHER_API_TOKEN: exit 2 naming it', async () => {
      const daemon = start(daemonCommand(), {
        ...imageEnv,
        WATCHER_HTTP_PORT: '0',
        WATCHER_DATA_DIR: join(tmp, 'data'),
        SB_AUTH_TOKEN: 'tok_deploy_test_platform',
        SB_API_ENDPOINT: `http://127.0.0.1:${await closedPort()}/v2`,
      });
      const result = await daemon.finished;
      expect(result.code).toBe(2);
      expect(result.stderr).toMatch(/WATCHER_API_TOKEN/);
      expect(result.stdout).not.toMatch(/listening/);
    });

    it('with config/.env.example as its env_file (README compose) or a Kubernetes secret, still listens on every interface', async () => {
      // compose's env_file and envFrom put every assignment of the file over the image's ENV: one of
      // a variable the image sets would move the daemon off what its published port reaches.
      const example = parseDotenv(readFileSync(join(ROOT, 'config', '.env.example')));
      const daemon = start(daemonCommand(), {
        ...imageEnv,
        ...example,
        // What a user fills in.
        SB_AUTH_TOKEN: 'tok_deploy_test_platform',
        WATCHER_API_TOKEN: 'api_deploy_test_7f3b91',
        SB_API_ENDPOINT: `http://127.0.0.1:${await closedPort()}/v2`,
        WATCHER_HTTP_PORT: '0',
        WATCHER_DATA_DIR: join(tmp, 'data'),
      });
      const listening = await daemon.logLine((l) => l.msg === 'control API listening');
      expect(String(listening.url)).toMatch(/^http:\/\/0\.0\.0\.0:\d+$/);
      daemon.child.kill('SIGTERM');
      expect((await daemon.finished).code).toBe(0);
    });

    it('with a token: starts, passes its health check, guards /v1, and exits 0 on SIGTERM', async () => {
      const apiToken = 'api_deploy_test_7f3b91';
      const platformToken = 'tok_deploy_test_platform_c2e4';
      const daemon = start(daemonCommand(), {
        ...imageEnv,
        WATCHER_HTTP_PORT: '0',
        WATCHER_DATA_DIR: join(tmp, 'data'),
        WATCHER_API_TOKEN: apiToken,
        SB_AUTH_TOKEN: platformToken,
        SB_API_ENDPOINT: `http://127.0.0.1:${await closedPort()}/v2`,
      });
      const listening = await daemon.logLine((l) => l.msg === 'control API listening');
      expect(String(listening.url)).toMatch(/^http:\/\/0\.0\.0\.0:\d+$/);
      const port = Number(new URL(String(listening.url)).port);

      const health = await healthcheck(port);
      expect(health.code, health.stderr).toBe(0);
      const unauthorized = await fetch(`http://127.0.0.1:${port}/v1/exports`);
      await unauthorized.body?.cancel();
      expect(unauthorized.status).toBe(401);

      daemon.child.kill('SIGTERM');
      const result = await daemon.finished;
      expect(result.code, `${result.stdout}${result.stderr}`).toBe(0);
      expect(result.stdout + result.stderr).not.toContain(apiToken);
      expect(result.stdout + result.stderr).not.toContain(platformToken);
    });
  });
});

// ---- systemd unit ------------------------------------------------------------------------------

/** Section → key → every value it is given (comments and blank lines dropped). */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = new Map();
      sections.set(header[1]!, current);
      continue;
    }
    const eq = line.indexOf('=');
    const key = line.slice(0, eq);
    current?.set(key, [...(current.get(key) ?? []), line.slice(eq + 1)]);
  }
  return sections;
}

const hasSystemdAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

describe('config/sbg-export-watcher.service', () => {
  const unit = parseUnit(UNIT);
  const service = unit.get('Service') ?? new Map<string, string[]>();
  const value = (key: string): string | undefined => service.get(key)?.at(-1);

  it('runs the installed build with node as a restartable exec service', () => {
    expect(value('Type')).toBe('exec');
    expect(value('ExecStart')).toBe('/usr/bin/node /opt/sbg-export-watcher/dist/cli.js run');
    expect(UNIT).toMatch(/^# .*\/opt\/sbg-export-watcher/m);
    expect(value('Restart')).toBe('on-failure');
    expect(value('RestartSec')).toMatch(/^\d+s?$/);
    expect(unit.get('Install')?.get('WantedBy')).toEqual(['multi-user.target']);
  });

  it('takes configuration from an optional environment file and secrets as credentials', () => {
    expect(value('EnvironmentFile')).toBe('-/etc/sbg-export-watcher/env');
    for (const name of ['sb-auth-token', 'webhook-secret', 'api-token']) {
      expect(UNIT).toContain(`LoadCredential=${name}:/etc/sbg-export-watcher/${name}`);
    }
  });

  it('starts node with the same flags as the image, those the benchmark measures', () => {
    const image = /NODE_OPTIONS="([^"]+)"/.exec(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'))?.[1];
    expect(image).toMatch(/--max-old-space-size=\d+/);
    expect(service.get('Environment')).toContain(`"NODE_OPTIONS=${image}"`);
    expect(readFileSync(join(ROOT, 'test', 'bench', 'bench.ts'), 'utf8')).toContain(
      `const SHIPPED_NODE_FLAGS = '${image}';`,
    );
  });

  it('keeps its state in a StateDirectory under a dynamic user', () => {
    expect(value('DynamicUser')).toBe('yes');
    expect(value('StateDirectory')).toBe('sbg-export-watcher');
    expect(service.get('Environment')).toContain('WATCHER_DATA_DIR=%S/sbg-export-watcher');
  });

  it('stops with SIGTERM and waits longer than the daemon drains', () => {
    expect(value('KillSignal')).toBe('SIGTERM');
    const stopMs = parseDuration(value('TimeoutStopSec')?.replace(/^(\d+)$/, '$1s') ?? '');
    expect(stopMs).toBeGreaterThan(parseDuration(DEFAULTS.WATCHER_SHUTDOWN_TIMEOUT) + 5000);
  });

  it('is sandboxed, but without MemoryDenyWriteExecute, which V8 cannot run under', () => {
    const hardening: Record<string, string> = {
      NoNewPrivileges: 'yes',
      CapabilityBoundingSet: '',
      ProtectSystem: 'strict',
      ProtectHome: 'yes',
      PrivateTmp: 'yes',
      PrivateDevices: 'yes',
      ProtectKernelTunables: 'yes',
      ProtectKernelModules: 'yes',
      ProtectKernelLogs: 'yes',
      ProtectControlGroups: 'yes',
      ProtectClock: 'yes',
      ProtectHostname: 'yes',
      RestrictNamespaces: 'yes',
      RestrictRealtime: 'yes',
      RestrictSUIDSGID: 'yes',
      LockPersonality: 'yes',
      RestrictAddressFamilies: 'AF_INET AF_INET6 AF_UNIX',
      SystemCallArchitectures: 'native',
      UMask: '0077',
    };
    for (const [key, expected] of Object.entries(hardening)) expect(value(key), key).toBe(expected);
    expect(service.get('SystemCallFilter')?.[0]).toBe('@system-service');
    expect(service.has('MemoryDenyWriteExecute')).toBe(false);
  });

  describe.skipIf(!hasSystemdAnalyze)('systemd-analyze (skipped: systemd-analyze is not installed)', () => {
    let dir: string;
    let copy: string;
    beforeAll(() => {
      // verify fails when ExecStart's program does not exist (it does not look at the arguments):
      // point the copy at this Node, which need not be /usr/bin/node.
      dir = mkdtempSync(join(tmpdir(), 'sbg-unit-'));
      copy = join(dir, basename(UNIT_PATH));
      writeFileSync(copy, UNIT.replace(/^ExecStart=\/usr\/bin\/node /m, `ExecStart=${process.execPath} `));
    });
    afterAll(() => {
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it('verify finds nothing wrong with the unit', () => {
      const result = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8' });
      const output = `${result.stdout}${result.stderr}`;
      const aboutUnit = output.split('\n').filter((l) => l.includes(basename(UNIT_PATH)));
      expect(aboutUnit).toEqual([]);
      expect(result.status, output).toBe(0);
    });

    it('security --offline rates the unit below 2.0 exposure', (ctx) => {
      const result = spawnSync('systemd-analyze', ['security', '--offline=yes', copy], {
        encoding: 'utf8',
      });
      if (/unrecognized option|unknown option/i.test(result.stderr)) ctx.skip();
      const score = /Overall exposure level for \S+: ([\d.]+)/.exec(result.stdout)?.[1];
      expect(score, result.stdout + result.stderr).toBeDefined();
      expect(Number(score)).toBeLessThan(2);
    });
  });
});
