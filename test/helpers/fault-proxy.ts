/**
 * A loopback TCP proxy in front of a destination that injects network faults.
 *
 * Every accepted connection (the main stream and each multifd channel) is
 * forwarded both ways to `127.0.0.1:targetPort`; the controls apply to all of
 * them at once:
 *
 * - `cutAfter(n, dir)`: forward the first `n` bytes of direction `dir` in
 *   total (counted from the proxy's start, over all connections), then reset
 *   every connection.
 * - `cut()`: reset every connection now (RST both ways). Until `heal()`, new
 *   connections are reset as soon as they arrive (the link is down).
 * - `stall()`: stop forwarding both ways, sockets stay open: the peers see silence.
 * - `drop(dir)`: stop forwarding one direction, sockets stay open (what was
 *   read is held, not discarded, as TCP would keep retransmitting it).
 * - `delay(ms)`: each chunk is forwarded `ms` after it arrived (order kept).
 * - `heal()`: undo stall/drop/delay/cut (held bytes are forwarded).
 *
 * Backpressure: a direction that cannot forward (held, delayed, or its writer's
 * buffer full) pauses its reader once `HIGH_WATER` bytes wait, so a stalled
 * proxy holds at most about `HIGH_WATER` + one chunk per direction and connection.
 */
import { createServer, connect, type Server, type Socket, type AddressInfo } from 'node:net';
import { Prng } from './prng.js';

export type Direction = 'up' | 'down';

/** Bytes a pipe holds before pausing its reader. */
export const HIGH_WATER = 256 * 1024;

interface Item {
  buf: Buffer | null; // null: end of stream
  readyAt: number;
  cutAfter: boolean;
}

class Pipe {
  queue: Item[] = [];
  queued = 0;
  blocked = false; // waiting for 'drain'
  pausedByUs = false;
  ended = false;
  timer: NodeJS.Timeout | undefined;

  constructor(
    readonly proxy: FaultProxy,
    readonly dir: Direction,
    readonly from: Socket,
    readonly to: Socket,
  ) {}

  push(item: Item): void {
    this.queue.push(item);
    if (item.buf) this.queued += item.buf.length;
    if (this.queued > HIGH_WATER && !this.pausedByUs) {
      this.pausedByUs = true;
      this.from.pause();
    }
    this.pump();
  }

  pump(): void {
    while (this.queue.length > 0 && !this.blocked && !this.proxy.isHeld(this.dir)) {
      const item = this.queue[0]!;
      const wait = item.readyAt - Date.now();
      if (wait > 0) {
        if (!this.timer) {
          this.timer = setTimeout(() => {
            this.timer = undefined;
            this.pump();
          }, wait);
        }
        return;
      }
      this.queue.shift();
      if (item.buf === null) {
        if (!this.to.destroyed) this.to.end();
        continue;
      }
      this.queued -= item.buf.length;
      if (this.to.destroyed) {
        // Writing to a closed peer: the sender gets a reset, as with TCP.
        this.from.destroy();
        this.queue = [];
        this.queued = 0;
        return;
      }
      this.proxy.bytes[this.dir] += item.buf.length;
      if (item.cutAfter) {
        // Let the last bytes reach the kernel before the reset.
        this.to.write(item.buf, () => this.proxy.cut());
        this.queue = [];
        this.queued = 0;
        return;
      }
      const ok = this.to.write(item.buf);
      if (!ok) {
        this.blocked = true;
        this.to.once('drain', () => {
          this.blocked = false;
          this.pump();
        });
      }
    }
    if (this.pausedByUs && this.queued <= HIGH_WATER / 2) {
      this.pausedByUs = false;
      this.from.resume();
    }
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.queue = [];
    this.queued = 0;
  }
}

interface Pair {
  client: Socket;
  server: Socket;
  up: Pipe;
  down: Pipe;
}

export interface FaultProxyOptions {
  targetPort: number;
  targetHost?: string;
  /** Seeds `rng` (jitter for delay, and for tests that pick fault points). */
  seed?: number;
}

export class FaultProxy {
  readonly bytes: Record<Direction, number> = { up: 0, down: 0 };
  /** Connections accepted so far. */
  connections = 0;
  readonly rng: Prng;
  readonly seed: number;
  private readonly pairs = new Set<Pair>();
  private readonly held: Record<Direction, boolean> = { up: false, down: false };
  private readonly accepted: Record<Direction, number> = { up: 0, down: 0 };
  private readonly cutAt: Record<Direction, number> = { up: Infinity, down: Infinity };
  private delayMs = 0;
  private jitterMs = 0;
  private down = false;
  /** How many times the link was cut (by cut() or cutAfter). */
  cuts = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly target: { host: string; port: number },
    seed: number,
  ) {
    this.seed = seed;
    this.rng = new Prng(seed);
  }

  static async start(options: FaultProxyOptions): Promise<FaultProxy> {
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const port = (server.address() as AddressInfo).port;
    const proxy = new FaultProxy(server, port, { host: options.targetHost ?? '127.0.0.1', port: options.targetPort }, options.seed ?? Date.now() >>> 0);
    server.on('connection', (socket) => proxy.accept(socket));
    return proxy;
  }

  get uri(): string {
    return `tcp:127.0.0.1:${this.port}`;
  }

  /** Bytes read but not yet forwarded, over all connections and directions. */
  bufferedBytes(): number {
    let n = 0;
    for (const p of this.pairs) n += p.up.queued + p.down.queued;
    return n;
  }

  /** Open connection pairs. */
  get openConnections(): number {
    return this.pairs.size;
  }

  isHeld(dir: Direction): boolean {
    return this.held[dir];
  }

  /** Forward the first `bytes` bytes of `dir` (counted over all connections since start), then cut. */
  cutAfter(bytes: number, dir: Direction): void {
    this.cutAt[dir] = bytes;
    if (this.accepted[dir] >= bytes) this.cut();
  }

  /** Reset every connection now; new ones are reset until heal(). */
  cut(): void {
    if (!this.down) this.cuts++;
    this.down = true;
    for (const pair of [...this.pairs]) this.reset(pair);
  }

  stall(): void {
    this.held.up = this.held.down = true;
  }

  drop(dir: Direction): void {
    this.held[dir] = true;
  }

  delay(ms: number, jitterMs = 0): void {
    this.delayMs = ms;
    this.jitterMs = jitterMs;
  }

  heal(): void {
    this.held.up = this.held.down = false;
    this.delayMs = this.jitterMs = 0;
    this.down = false;
    this.cutAt.up = this.cutAt.down = Infinity;
    for (const pair of this.pairs) {
      pair.up.pump();
      pair.down.pump();
    }
  }

  async close(): Promise<void> {
    for (const pair of [...this.pairs]) this.reset(pair);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private reset(pair: Pair): void {
    pair.up.clear();
    pair.down.clear();
    for (const s of [pair.client, pair.server]) {
      if (s.destroyed) continue;
      if (typeof s.resetAndDestroy === 'function' && s.readyState === 'open') s.resetAndDestroy();
      else s.destroy();
    }
    this.pairs.delete(pair);
  }

  private accept(client: Socket): void {
    this.connections++;
    if (this.down) {
      client.on('error', () => {});
      client.resetAndDestroy();
      return;
    }
    const server = connect({ host: this.target.host, port: this.target.port, allowHalfOpen: true });
    const pair: Pair = { client, server, up: undefined!, down: undefined! };
    pair.up = new Pipe(this, 'up', client, server);
    pair.down = new Pipe(this, 'down', server, client);
    this.pairs.add(pair);
    const wire = (pipe: Pipe): void => {
      pipe.from.on('data', (chunk: Buffer) => this.onData(pipe, chunk));
      pipe.from.on('end', () => {
        if (!pipe.ended) {
          pipe.ended = true;
          pipe.push({ buf: null, readyAt: this.readyAt(), cutAfter: false });
        }
      });
      pipe.from.on('error', () => {});
      pipe.from.on('close', (hadError) => {
        if (hadError || !pipe.ended) {
          // An abortive close: the other peer is reset too.
          pipe.clear();
          if (!pipe.to.destroyed) pipe.to.destroy();
        }
        if (pair.client.destroyed && pair.server.destroyed) {
          pair.up.clear();
          pair.down.clear();
          this.pairs.delete(pair);
        }
      });
    };
    wire(pair.up);
    wire(pair.down);
    client.resume();
  }

  private readyAt(): number {
    if (this.delayMs === 0 && this.jitterMs === 0) return 0;
    return Date.now() + this.delayMs + (this.jitterMs ? this.rng.int(this.jitterMs + 1) : 0);
  }

  private onData(pipe: Pipe, chunk: Buffer): void {
    if (this.down) return;
    const dir = pipe.dir;
    const left = this.cutAt[dir] - this.accepted[dir];
    if (chunk.length >= left) {
      const part = chunk.subarray(0, Math.max(0, left));
      this.accepted[dir] += part.length;
      if (part.length === 0) return this.cut();
      pipe.push({ buf: part, readyAt: this.readyAt(), cutAfter: true });
      return;
    }
    this.accepted[dir] += chunk.length;
    // Delays keep order: never earlier than the item before.
    const last = pipe.queue.at(-1);
    const readyAt = Math.max(this.readyAt(), last?.readyAt ?? 0);
    pipe.push({ buf: chunk, readyAt, cutAfter: false });
  }
}
