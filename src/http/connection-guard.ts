/**
 * Keeps an HTTP server able to accept a new connection (a liveness probe's, say) while a flood of
 * connections holds it open.
 *
 * `server.maxConnections` alone is not enough: at the cap Node accepts and at once closes every new
 * connection, the probe's included, and thousands of connections that never send a request (or
 * send their headers a byte at a time) can sit at the cap until `headersTimeout`. So the guard
 * keeps `headroom` connections free below the cap: when a new connection arrives and the open count
 * has reached `maxConnections - headroom`, it closes the oldest connections that have no request in
 * progress (idle keep-alive, or still sending headers) until it is back under that mark. A
 * connection with a request in progress is never shed here: those are bounded elsewhere (the
 * control API's limit on requests in progress, and the server's request timeout).
 *
 * A flood is logged twice, not once per connection: at warn when shedding (or dropping) starts, at
 * info when the open count is back under half the mark, with what was shed and dropped meanwhile.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';

export interface ConnectionGuardOptions {
  /** Open connections the server accepts at most; past it Node closes new ones at once. */
  maxConnections: number;
  /** Connections kept free below the cap by shedding idle ones. 1 ≤ headroom < maxConnections. */
  headroom: number;
  log: Logger;
}

export interface ConnectionStats {
  /** Connections open now. */
  open: number;
  /** Connections with a request in progress now. */
  busy: number;
  /** Idle connections closed to make room, since start. */
  shed: number;
  /** Connections Node refused at the cap, since start. */
  dropped: number;
}

interface Tracked {
  /** Requests received on this connection whose response has not closed yet (pipelining: > 1). */
  requests: number;
}

export class ConnectionGuard {
  readonly #options: ConnectionGuardOptions;
  /** Every open connection, oldest first (a Map iterates in insertion order). */
  readonly #connections = new Map<Socket, Tracked>();
  #busy = 0;
  #shed = 0;
  #dropped = 0;
  /** Set while a flood is being handled, so it is logged when it starts and when it ends. */
  #pressure: { shed: number; dropped: number } | undefined;

  constructor(server: Server, options: ConnectionGuardOptions) {
    if (!Number.isInteger(options.headroom) || options.headroom < 1) {
      throw new RangeError(`headroom must be an integer of at least 1, got ${options.headroom}`);
    }
    if (options.headroom >= options.maxConnections) {
      throw new RangeError(
        `headroom must be below maxConnections (${options.maxConnections}), got ${options.headroom}`,
      );
    }
    this.#options = options;
    server.maxConnections = options.maxConnections;
    server.on('connection', (socket: Socket) => this.#onConnection(socket));
    server.on('request', (req: IncomingMessage, res: ServerResponse) => this.#onRequest(req, res));
    server.on('drop', () => {
      this.#dropped++;
      this.#underPressure().dropped++;
    });
  }

  stats(): ConnectionStats {
    return { open: this.#connections.size, busy: this.#busy, shed: this.#shed, dropped: this.#dropped };
  }

  /** The open count at which idle connections start to be shed. */
  get #shedMark(): number {
    return this.#options.maxConnections - this.#options.headroom;
  }

  #onConnection(socket: Socket): void {
    if (this.#connections.size >= this.#shedMark) this.#shedIdle();
    const tracked: Tracked = { requests: 0 };
    this.#connections.set(socket, tracked);
    socket.once('close', () => {
      if (this.#connections.get(socket) === tracked) this.#forget(socket);
    });
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const socket = req.socket;
    const tracked = this.#connections.get(socket);
    if (!tracked) return;
    tracked.requests++;
    this.#busy++;
    res.once('close', () => {
      tracked.requests--;
      this.#busy--;
    });
  }

  /** Closes the oldest idle connections until the open count is under the mark again. */
  #shedIdle(): void {
    const excess = this.#connections.size - this.#shedMark + 1;
    let shed = 0;
    for (const [socket, tracked] of this.#connections) {
      if (shed >= excess) break;
      if (tracked.requests > 0) continue;
      this.#forget(socket);
      socket.destroy();
      shed++;
    }
    if (shed === 0) return;
    this.#shed += shed;
    this.#underPressure().shed += shed;
  }

  #underPressure(): { shed: number; dropped: number } {
    if (!this.#pressure) {
      this.#pressure = { shed: 0, dropped: 0 };
      this.#options.log.warn(
        {
          open: this.#connections.size,
          max_connections: this.#options.maxConnections,
          headroom: this.#options.headroom,
        },
        'too many open connections; closing the oldest idle ones',
      );
    }
    return this.#pressure;
  }

  #forget(socket: Socket): void {
    this.#connections.delete(socket);
    if (this.#pressure && this.#connections.size < this.#shedMark / 2) {
      this.#options.log.info(
        { open: this.#connections.size, shed: this.#pressure.shed, dropped: this.#pressure.dropped },
        'connection flood over',
      );
      this.#pressure = undefined;
    }
  }
}
