/**
 * `GET /v1/exports/{id}` shows a job's record and the events of its transitions. Read in two
 * steps, a transition committed between them showed the job in one state with the event of the
 * next (an `export.completed` event under `"state": "UNKNOWN"`). The two are read at one moment.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { storedEventBuilder } from '../src/delivery/events.js';
import { move } from './helpers/changes.js';
import { type Stack, startStack } from './helpers/stack.js';

let stack: Stack | undefined;
afterEach(async () => {
  await stack?.close();
  stack = undefined;
});

async function until(test: () => Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await test())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('GET /v1/exports/{id} while a transition commits', () => {
  it('never shows a state with the event of another', async () => {
    // Checked once at once (RUNNING for an hour), then not for an hour.
    stack = await startStack({ env: { WATCHER_POLL_INTERVAL: '1h' } });
    const { daemon } = stack;
    const [id = ''] = stack.sim.createExports(1, { pendingMs: 0, runningMs: 3_600_000 });
    expect((await stack.post('/v1/exports', { ids: [id] })).status).toBe(202);
    await until(async () => (await daemon.store.getExport(id))?.state === 'RUNNING', 'the first check');

    // The job finishes right after its record is read, before anything else is.
    const store = daemon.store;
    const getExport = store.getExport.bind(store);
    store.getExport = async (exportId, kind) => {
      const record = await getExport(exportId, kind);
      if (record && exportId === id) {
        store.getExport = getExport;
        const at = Date.now();
        await store.commitChanges(
          [move(id, record.state, 'COMPLETED', at)],
          storedEventBuilder('all'),
          daemon.deliveries.endpoints,
          at,
        );
      }
      return record;
    };

    const { status, json } = await stack.get(`/v1/exports/${id}`);
    expect(status).toBe(200);
    const shown = json as { state: string; events: Array<{ type: string }> };
    expect({
      state: shown.state,
      completedEvent: shown.events.some((e) => e.type === 'export.completed'),
    }).toEqual({ state: shown.state, completedEvent: shown.state === 'COMPLETED' });
  });
});
