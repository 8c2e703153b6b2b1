/**
 * A TCP server on 127.0.0.1 that accepts connections and never says a word: a TLS handshake to it
 * never ends. Closed, with its connections, by the test's cleanups.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { Cleanups } from './platform.js';

/** `https://127.0.0.1:PORT{path}` of the server, and a promise of its first connection. */
export async function silentServer(
  cleanups: Cleanups,
  path: string,
): Promise<{ url: string; connected: Promise<void> }> {
  const sockets = new Set<Socket>();
  let onConnection!: () => void;
  const connected = new Promise<void>((resolve) => {
    onConnection = resolve;
  });
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    onConnection();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  );
  const { port } = server.address() as { port: number };
  return { url: `https://127.0.0.1:${port}${path}`, connected };
}
