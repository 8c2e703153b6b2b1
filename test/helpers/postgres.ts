/**
 * A PostgreSQL server for the tests. `WATCHER_TEST_DATABASE_URL` names a database on it, as a user
 * that may create databases (`.ci/run` starts such a server). Every database or schema a test asks
 * for is new and is dropped after it, so test files run in parallel without seeing each other's
 * rows, and a run leaves nothing behind (unless it is killed: the names start with
 * `watcher_test_`). A schema (a URL whose `options` set the `search_path`, in one database per
 * test file) costs well under a millisecond; a database, tens.
 *
 * Without the variable the PostgreSQL tests are skipped, with the reason in their name. With
 * `WATCHER_TEST_REQUIRE_POSTGRES=1` (`.ci/run` sets it once it has tried to start a server), a
 * missing or unusable server is a failing test instead: CI never passes by skipping them.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, describe, it } from 'vitest';

const URL_VARIABLE = 'WATCHER_TEST_DATABASE_URL';
const REQUIRE_VARIABLE = 'WATCHER_TEST_REQUIRE_POSTGRES';

/** The server the tests use: makes and drops their databases. */
export class TestPostgres {
  readonly #admin: pg.Pool;
  readonly #base: URL;
  readonly #created = new Set<string>();
  #counter = 0;
  /** The database that holds this file's schemas, and a pool on it. */
  #schemaHome: Promise<{ url: string; pool: pg.Pool }> | undefined;

  constructor(url: string) {
    this.#base = new URL(url);
    this.#admin = new pg.Pool({ connectionString: url, max: 2, connectionTimeoutMillis: 5000 });
    this.#admin.on('error', () => undefined);
  }

  /** The URL given, with its password: for tests that need one that works, or a wrong one. */
  get url(): URL {
    return new URL(this.#base);
  }

  /** Creates an empty database and returns its URL. */
  async createDatabase(): Promise<string> {
    this.#counter += 1;
    const name = `watcher_test_${process.pid}_${this.#counter}_${randomBytes(3).toString('hex')}`;
    await this.#admin.query(`CREATE DATABASE ${name} TEMPLATE template0 ENCODING 'UTF8'`);
    this.#created.add(name);
    const url = new URL(this.#base);
    url.pathname = `/${name}`;
    return url.href;
  }

  /** Creates an empty schema and returns a URL whose connections use it (their `search_path`). */
  async createSchema(): Promise<string> {
    this.#schemaHome ??= this.createDatabase().then((url) => {
      const pool = new pg.Pool({ connectionString: url, max: 1 });
      pool.on('error', () => undefined);
      return { url, pool };
    });
    const home = await this.#schemaHome;
    this.#counter += 1;
    const name = `watcher_test_${this.#counter}_${randomBytes(3).toString('hex')}`;
    await home.pool.query(`CREATE SCHEMA ${name}`);
    const url = new URL(home.url);
    url.searchParams.set('options', `-c search_path=${name}`);
    return url.href;
  }

  /** Drops a schema made by `createSchema` (given by its URL), with everything in it. */
  async dropSchema(url: string): Promise<void> {
    const name = /search_path=(\w+)/.exec(new URL(url).searchParams.get('options') ?? '')?.[1];
    if (name === undefined || this.#schemaHome === undefined) return;
    await (await this.#schemaHome).pool.query(`DROP SCHEMA IF EXISTS ${name} CASCADE`);
  }

  /** Drops a database made here (given by its URL), closing any connection still open to it. */
  async dropDatabase(url: string): Promise<void> {
    const name = decodeURIComponent(new URL(url).pathname.slice(1));
    if (!this.#created.delete(name)) return;
    // FORCE ends the sessions still open, but PostgreSQL refuses (42501) when one of them is an
    // autovacuum worker and the role may not signal it: a busy test database gets one at times.
    // Such a worker is short-lived; trying again shortly is enough.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        return;
      } catch (error) {
        if ((error as { code?: unknown }).code !== '42501' || attempt === 20) throw error;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  }

  /** Drops every database still here, and disconnects. */
  async end(): Promise<void> {
    const home = this.#schemaHome;
    this.#schemaHome = undefined;
    if (home) await (await home).pool.end();
    for (const name of this.#created) {
      await this.#admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => undefined);
    }
    this.#created.clear();
    await this.#admin.end();
  }

  /** Runs one statement as the test user on `url`'s database, on a connection of its own. */
  async query<R extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []): Promise<R[]> {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      return (await client.query<R>(text, values)).rows;
    } finally {
      await client.end();
    }
  }
}

type Probe = { status: 'ready'; server: TestPostgres } | { status: 'skip' | 'fail'; reason: string };

/** Whether the tests have a server: connects once to `WATCHER_TEST_DATABASE_URL`. */
async function probe(): Promise<Probe> {
  const url = process.env[URL_VARIABLE];
  const required = process.env[REQUIRE_VARIABLE] === '1';
  const unusable = (reason: string): Probe => ({
    status: required ? 'fail' : 'skip',
    reason: required ? `${REQUIRE_VARIABLE}=1, but ${reason}` : reason,
  });
  if (url === undefined || url === '') return unusable(`${URL_VARIABLE} is not set`);
  let server: TestPostgres;
  try {
    server = new TestPostgres(url);
  } catch {
    return unusable(`${URL_VARIABLE} is not a URL`);
  }
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return { status: 'ready', server };
  } catch (error) {
    await server.end().catch(() => undefined);
    const password = server.url.password;
    let message = error instanceof Error ? error.message || String(error) : String(error);
    if (password !== '') message = message.split(password).join('***');
    return unusable(`the server at ${URL_VARIABLE} cannot be used (${message})`);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * Declares `body`'s tests under `name` when there is a server; otherwise one skipped test (or,
 * when the server is required, one failing test) that says why.
 */
export async function describeWithPostgres(
  name: string,
  body: (server: TestPostgres) => void,
): Promise<void> {
  const found = await probe();
  if (found.status === 'ready') {
    describe(name, () => {
      afterAll(() => found.server.end());
      body(found.server);
    });
    return;
  }
  if (found.status === 'fail') {
    describe(name, () => {
      it('has a PostgreSQL server to test against', () => {
        throw new Error(found.reason);
      });
    });
    return;
  }
  describe(name, () => {
    it.skip(`skipped: ${found.reason} (set it to postgres://user:password@host:port/database)`, () => {});
  });
}
