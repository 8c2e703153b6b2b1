/** Loopback ports for tests. */
import { createServer } from 'node:net';

/** A port nothing listens on: one the system handed out on 127.0.0.1, then closed. */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}
