/**
 * A TCP proxy in front of a server (PostgreSQL in the tests) that can be cut silently, as a
 * network that drops packets: see `CuttableProxy`.
 */
import net from 'node:net';

/**
 * A TCP proxy to the server that can be cut: after `cut()` it forwards nothing in either direction
 * and closes nothing, and new connections are accepted and ignored, as when a network drops
 * packets silently.
 */
export class CuttableProxy {
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  #cut = false;

  private constructor(target: { host: string; port: number }) {
    this.#server = net.createServer((client) => {
      this.#track(client);
      if (this.#cut) return;
      const upstream = net.connect(target.port, target.host);
      this.#track(upstream);
      client.on('data', (data) => {
        if (!this.#cut) upstream.write(data);
      });
      upstream.on('data', (data) => {
        if (!this.#cut) client.write(data);
      });
      client.on('close', () => {
        if (!this.#cut) upstream.destroy();
      });
      upstream.on('close', () => {
        if (!this.#cut) client.destroy();
      });
    });
  }

  static async start(target: { host: string; port: number }): Promise<CuttableProxy> {
    const proxy = new CuttableProxy(target);
    await new Promise<void>((resolve) => proxy.#server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  /** `url` with its host and port replaced by the proxy's. */
  via(url: string): string {
    const address = this.#server.address() as net.AddressInfo;
    const proxied = new URL(url);
    proxied.hostname = '127.0.0.1';
    proxied.port = String(address.port);
    return proxied.href;
  }

  cut(): void {
    this.#cut = true;
  }

  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #track(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => this.#sockets.delete(socket));
  }
}
