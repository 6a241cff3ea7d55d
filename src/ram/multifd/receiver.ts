/**
 * The destination side of multifd (QEMU 7.2 multifd_recv_*): each extra
 * channel starts with its init packet (magic, version, UUID, id: checked with
 * QEMU's texts), then packets whose pages go straight into guest RAM. A
 * channel that reads a SYNC packet waits; the RAM loader, at each EOS on the
 * main channel, waits for a SYNC from every channel and then releases them
 * all (multifd_recv_sync_main), so data of a later section never lands before
 * the main channel has applied the earlier one.
 *
 * Where guest RAM is SharedArrayBuffers, channels are received in worker
 * threads (recv-worker.ts), which own the connections' descriptors: no more
 * threads than cores (channel k goes to thread k mod threads), since threads
 * beyond the cores only compete for them; otherwise, or when the connection
 * cannot be handed over, on this thread (recv-channel.ts).
 *
 * Bad input is a MultifdError naming the channel and the byte offset in that
 * channel's stream; reads are bounded (fixed header, pages read in place,
 * compressed payloads capped).
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { RamBlockTable } from '../block-table.js';
import type { DetachedSocket, StreamReader } from '../../wire/index.js';
import type { MultifdCompression } from './codec.js';
import { MultifdError, ZERO_UUID } from './packet.js';
import { receiveMultifdChannel, type RecvChannelCounters } from './recv-channel.js';
import type { RecvWorkerCommand, RecvWorkerData, RecvWorkerMessage } from './recv-worker.js';
import { sharedBlocks } from './sender.js';

export interface MultifdReceiverOptions {
  channels: number;
  /** This destination's UUID (QEMU: zeros unless -uuid). */
  uuid?: Uint8Array;
  compression?: MultifdCompression;
  /** Where packets' block names are looked up. */
  table: RamBlockTable;
  /** How long the first sync waits for channels that have not connected yet (default 30 s). */
  connectTimeoutMs?: number;
  /** Worker threads for detached connections (default: when every block is a SharedArrayBuffer). */
  useWorkers?: boolean;
  /** How many worker threads share the channels (default: the number of cores, at most one per channel). */
  recvThreads?: number;
  /** Optional module that registers compression codecs in worker threads. */
  codecModule?: string;
  /**
   * The modules that will adopt this receiver's sockets (their
   * DetachedSocket.adopter): each thread loads them as it starts, so taking
   * over a connection does not pay for loading them (~30 ms of CPU per thread
   * for Node's socket modules) while the source sends.
   */
  adopters?: string[];
}

export interface MultifdReceiverStats {
  channels: number;
  /** Channels received in worker threads. */
  workerChannels: number;
  packets: number;
  pages: number;
  syncs: number;
  bytes: number;
}

/** A receive thread and the channels it was given, by key. */
interface RecvThread {
  worker: Worker;
  channels: Map<number, { onMessage(message: RecvWorkerMessage): void; onLost(why: string, cause?: Error): void }>;
  exited: boolean;
}

interface RecvChannel {
  id: number;
  syncArrived: boolean;
  release: (() => void) | undefined;
  ended: boolean;
  /** Where its stream stands (for errors). */
  offset(): number;
  close(): void;
}

export class MultifdReceiver {
  readonly stats: MultifdReceiverStats = { channels: 0, workerChannels: 0, packets: 0, pages: 0, syncs: 0, bytes: 0 };
  /** Called once with the first failure (abort the main channel so the load stops). */
  onError: ((err: Error) => void) | undefined;

  private readonly byId = new Map<number, RecvChannel>();
  private readonly all = new Set<RecvChannel>();
  private failure: Error | undefined;
  private closed = false;
  private waiters: Array<() => void> = [];
  private readonly uuid: Uint8Array;
  private readonly started = performance.now();
  private readonly shared: RecvWorkerData['blocks'] | undefined;
  /** Receive threads, started ahead of the connections; channel k is adopted by threads[k % length]. */
  private readonly threads: RecvThread[] = [];
  /** Threads for connections beyond the expected channels (their init packets will be refused). */
  private readonly extraThreads: RecvThread[] = [];
  /** Connections handed to threads so far: the next one's key. */
  private nextKey = 0;

  constructor(private readonly options: MultifdReceiverOptions) {
    this.uuid = options.uuid ?? ZERO_UUID;
    const blocks = options.table.blocks();
    const shared = options.useWorkers === false ? undefined : sharedBlocks(blocks);
    this.shared = shared?.map((b, i) => ({ ...b, usedBytes: blocks[i]!.lengthBytes }));
    // A worker thread takes tens of milliseconds to start (more with every thread starting at
    // once on few cores): start them now, while the source connects, not when its pages arrive.
    if (this.shared) {
      const n = options.channels;
      const threads = Math.max(1, Math.min(n, options.recvThreads ?? availableParallelism()));
      for (let t = 0; t < threads; t++) this.threads.push(this.startThread(Math.ceil((n - t) / threads)));
    }
  }

  /** A thread that will receive `threadChannels` channels; idle (unref'd) until it adopts one. */
  private startThread(threadChannels: number): RecvThread {
    const data: RecvWorkerData = {
      uuid: this.uuid,
      channels: this.options.channels,
      threadChannels,
      compression: this.options.compression ?? 'none',
      blocks: this.shared!,
      ...(this.options.codecModule ? { codecModule: this.options.codecModule } : {}),
      ...(this.options.adopters ? { adopters: this.options.adopters } : {}),
    };
    const worker = new Worker(new URL('./recv-worker.js', import.meta.url), { workerData: data });
    const thread: RecvThread = { worker, channels: new Map(), exited: false };
    worker.on('message', (message: RecvWorkerMessage) => thread.channels.get(message.key)?.onMessage(message));
    const lost = (why: string, cause?: Error): void => {
      thread.exited = true;
      for (const c of thread.channels.values()) c.onLost(why, cause);
    };
    worker.on('error', (err) => lost(`its thread failed: ${err.message}`, err));
    worker.on('exit', () => lost('its thread ended'));
    // Idle until it adopts a channel: it does not keep the process alive. (After the
    // listeners: adding a 'message' listener refs the worker's port again.)
    worker.unref();
    return thread;
  }

  private command(thread: RecvThread, command: RecvWorkerCommand): void {
    if (!thread.exited) thread.worker.postMessage(command);
  }

  /** Ask every thread to stop, and make sure it does. */
  private stopThreads(): void {
    for (const thread of [...this.threads, ...this.extraThreads]) {
      if (thread.exited) continue;
      this.command(thread, { type: 'close' });
      // A thread closes its sockets on 'close'; terminate also closes them if it is stuck.
      setTimeout(() => void thread.worker.terminate(), 1000).unref();
    }
  }

  get error(): Error | undefined {
    return this.failure;
  }

  /** True when connections should be detached and handed to worker threads. */
  get wantsWorkers(): boolean {
    return this.shared !== undefined;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private changed(timeoutMs?: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      if (timeoutMs !== undefined) timer = setTimeout(done, Math.max(0, timeoutMs));
      this.waiters.push(done);
    });
  }

  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const ch of this.all) ch.close();
    this.stopThreads();
    this.wake();
    this.onError?.(err);
  }

  private get stopped(): boolean {
    return this.failure !== undefined || this.closed;
  }

  /** A channel's init packet named it `id`. */
  private named(ch: RecvChannel, id: number): void {
    if (this.byId.has(id)) throw new MultifdError(id, 24, `multifd: received id '${id}' already setup'`);
    ch.id = id;
    this.byId.set(id, ch);
    this.stats.channels++;
    this.wake();
  }

  private synced(ch: RecvChannel, release: () => void): void {
    ch.release = release;
    ch.syncArrived = true;
    this.wake();
  }

  private ended(ch: RecvChannel): void {
    ch.ended = true;
    this.wake();
  }

  private add(ch: RecvChannel, close: () => void): boolean {
    this.all.add(ch);
    if (this.stopped) {
      close();
      return false;
    }
    return true;
  }

  /**
   * A connection classified as a multifd channel, received on this thread:
   * read its init packet and then its packets until EOF. `close` tears the
   * connection down.
   */
  addChannel(reader: StreamReader, close: () => void): void {
    const ch: RecvChannel = { id: -1, syncArrived: false, release: undefined, ended: false, offset: () => reader.offset, close };
    if (!this.add(ch, close)) return;
    const counters: RecvChannelCounters = this.stats;
    receiveMultifdChannel(reader, {
      uuid: this.uuid,
      channels: this.options.channels,
      compression: this.options.compression ?? 'none',
      table: this.options.table,
      counters,
      onInit: (id) => this.named(ch, id),
      onSync: () => new Promise<void>((resolve) => this.synced(ch, resolve)),
      stopped: () => this.stopped,
    }).then(
      () => this.ended(ch),
      (err: Error) => {
        if (!this.stopped) this.fail(err);
      },
    );
  }

  /**
   * A connection classified as a multifd channel and detached from this
   * thread (wantsWorkers): a worker thread adopts its descriptor and receives
   * it. The bytes already read from it travel along.
   */
  addDetachedChannel(socket: DetachedSocket): void {
    if (!this.shared) throw new Error('multifd: worker threads need guest RAM in SharedArrayBuffers');
    const key = this.nextKey++;
    let thread = key < this.options.channels ? this.threads[key % this.threads.length]! : undefined;
    if (thread === undefined || thread.exited || this.stopped) {
      // An extra connection, or one after a failure: a thread of its own adopts it (and, once stopped, closes it).
      thread = this.startThread(1);
      this.extraThreads.push(thread);
    }
    const owner = thread;
    let endOffset = 0;
    let last: RecvChannelCounters = { packets: 0, pages: 0, bytes: 0 };
    let done = false;
    const ch: RecvChannel = {
      id: -1,
      syncArrived: false,
      release: undefined,
      ended: false,
      offset: () => endOffset,
      close: () => {
        if (done) return;
        done = true;
        this.command(owner, { type: 'close', key });
      },
    };
    const account = (c: RecvChannelCounters): void => {
      this.stats.packets += c.packets - last.packets;
      this.stats.pages += c.pages - last.pages;
      this.stats.bytes += c.bytes - last.bytes;
      last = c;
    };
    const failWith = (err: Error): void => {
      if (!this.stopped) this.fail(err);
    };
    owner.channels.set(key, {
      onMessage: (message) => {
        switch (message.type) {
          case 'init':
            try {
              this.named(ch, message.id);
            } catch (err) {
              failWith(err as Error);
            }
            break;
          case 'sync':
            account(message.counters);
            this.synced(ch, () => this.command(owner, { type: 'release', key }));
            break;
          case 'ended':
            account(message.counters);
            endOffset = message.offset;
            done = true;
            this.ended(ch);
            break;
          case 'error':
            done = true;
            failWith(new MultifdError(message.channel, message.offset, message.reason));
            break;
        }
      },
      onLost: (why, cause) => {
        if (!done) failWith(new MultifdError(ch.id < 0 ? undefined : ch.id, endOffset, why, cause ? { cause } : undefined));
      },
    });
    // The thread keeps the process alive while it receives (it ends by itself after its last channel).
    owner.worker.ref();
    this.command(owner, { type: 'adopt', key, socket });
    // After the adopt: a receiver that has stopped closes the channel, and the thread its descriptor.
    if (!this.add(ch, () => ch.close())) return;
    this.stats.workerChannels++;
  }

  /** At a RAM EOS on the main channel: one SYNC from every channel, then release them all. */
  async syncMain(): Promise<void> {
    const n = this.options.channels;
    const deadline = this.started + (this.options.connectTimeoutMs ?? 30_000);
    for (;;) {
      if (this.failure) throw this.failure;
      let missing: number | undefined;
      let waiting = false;
      for (let id = 0; id < n; id++) {
        const ch = this.byId.get(id);
        if (!ch) {
          missing ??= id;
          continue;
        }
        if (!ch.syncArrived) {
          if (ch.ended) {
            const err = new MultifdError(id, ch.offset(), 'the channel ended before its SYNC packet for this section');
            this.fail(err);
            throw err;
          }
          waiting = true;
        }
      }
      if (missing === undefined && !waiting) break;
      if (missing !== undefined) {
        const left = deadline - performance.now();
        if (left <= 0) {
          const err = new MultifdError(missing, 0, `multifd channel ${missing} of ${n} did not connect`);
          this.fail(err);
          throw err;
        }
        await this.changed(left);
      } else {
        await this.changed();
      }
    }
    this.stats.syncs++;
    for (const ch of this.byId.values()) {
      ch.syncArrived = false;
      const release = ch.release;
      ch.release = undefined;
      release?.();
    }
  }

  /** Tear every channel down. */
  close(): void {
    this.closed = true;
    for (const ch of this.all) ch.close();
    this.stopThreads();
    this.wake();
  }
}
