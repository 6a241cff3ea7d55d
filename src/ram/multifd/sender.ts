/**
 * The source side of multifd (QEMU 7.2 multifd_send_*): N extra connections
 * to the migration address, each starting with its init packet; pages queued
 * by the RAM handler are batched (one block, up to 128 pages) and each batch
 * goes to the next channel with room, round-robin, numbered by one global
 * packet counter. sync() (before every RAM EOS) flushes the batch, puts a
 * SYNC packet on every channel and waits until all are written.
 *
 * The caller says how to open a channel (`connect`, e.g. the transport's
 * connectOutgoing for the migration URI): this module does not know URIs.
 * Channels run in worker threads when every RAM block lives in a
 * SharedArrayBuffer and the connection can give up its socket (detach()):
 * the worker reads the pages itself and owns the descriptor. Otherwise they
 * run on the main thread over the channel as it is.
 *
 * A failed channel fails the sender: every later call rejects with that
 * error, so the migration fails while the guest still runs on the source.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { RamBlock } from '../block.js';
import { DenseRamBlock } from '../block.js';
import type { MigrationChannel } from '../../wire/index.js';
import { createSendCodec, ensureMultifdCodecs, type MultifdCompression, type MultifdSendCodec } from './codec.js';
import {
  encodeInitPacket,
  MULTIFD_FLAG_SYNC,
  MULTIFD_HEADER_BYTES,
  MULTIFD_PAGE_SIZE,
  MULTIFD_PAGES_PER_PACKET,
  MULTIFD_PROTOCOL_ERROR,
  writePacketHeader,
  ZERO_UUID,
} from './packet.js';
import { createJobRingMemory, JOB_RING_DEPTH, JobRingProducer, type RingJob } from './job-ring.js';
import type { SendWorkerData } from './send-worker.js';

/**
 * Packets a main-thread channel may have in hand at once (QEMU: 1; one more
 * hides the round trip). A thread's channel has its job ring's depth.
 */
const LOCAL_MAX_INFLIGHT = 2;

/** Opens one more connection to the destination (tcp or unix), e.g. `() => connectOutgoing(uri)`. */
export type MultifdConnect = () => Promise<MigrationChannel>;

export interface MultifdSenderOptions {
  /** Opens each channel's connection; called `channels` times, after the main channel is connected. */
  connect: MultifdConnect;
  /** The migration URI, for messages. */
  uri?: string;
  channels: number;
  blocks: readonly RamBlock[];
  /** The source's UUID (QEMU: all zeros unless -uuid). */
  uuid?: Uint8Array;
  compression?: MultifdCompression;
  /** Level for the compression method (zlib/zstd). */
  level?: number;
  /** Worker threads: default when every block's memory is a SharedArrayBuffer. */
  useWorkers?: boolean;
  /** Worker threads for the channels (default: the number of cores; a thread may send several channels). */
  sendThreads?: number;
  /** A module (URL or path) that registers compression codecs, loaded in each worker. */
  codecModule?: string;
  /**
   * Threads started ahead (MultifdSendThreads.start, when the capability was
   * set): used when they were started for these options, else ended.
   */
  prestarted?: MultifdSendThreads;
  /**
   * Settles once the main channel is connected: the channels connect after it
   * (a 7.2 destination takes the first connection as the main one), but their
   * worker threads start at once, so their start-up overlaps the main connect.
   */
  after?: Promise<unknown>;
}

/**
 * One channel as the sender drives it: jobs go in without a round trip each;
 * every job has a mark (the count of jobs pushed with it), and the channel
 * says when its written count reaches a mark.
 */
interface SenderChannel {
  readonly id: number;
  /** Jobs pushed and not yet written. */
  readonly inflight: number;
  /** The most jobs it takes in flight. */
  readonly depth: number;
  /** Jobs pushed so far: the mark of the last one. */
  readonly pushed: number;
  /** Hand over a job (only while inflight < depth); returns its mark. It copies what it needs of the job at once. */
  push(job: RingJob): number;
  /**
   * Resolves once `mark` jobs are written, when the channel fails, or on
   * interrupt(): the caller checks again. undefined when they are written.
   */
  whenWritten(mark: number): Promise<unknown> | undefined;
  /** Wake every whenWritten() wait now (failure, abort). */
  interrupt(): void;
  finish(): Promise<void>;
  /** Tear the channel down now; wakes every whenWritten() wait too. */
  abort(reason: Error): void;
}


/** The mark at which half of what `ch` has in flight now is written: where a producer with nothing else to do waits. */
const halfWritten = (ch: SenderChannel): number => (ch.pushed - (ch.inflight >> 1)) | 0;

/** Whether all blocks can be read by worker threads (dense blocks over SharedArrayBuffers). */
export function sharedBlocks(blocks: readonly RamBlock[]): Array<{ idstr: string; buffer: SharedArrayBuffer; byteOffset: number; lengthBytes: number }> | undefined {
  const out = [];
  for (const b of blocks) {
    if (!(b instanceof DenseRamBlock) || !(b.memory.buffer instanceof SharedArrayBuffer)) return undefined;
    out.push({ idstr: b.idstr, buffer: b.memory.buffer, byteOffset: b.memory.byteOffset, lengthBytes: b.memory.length });
  }
  return out;
}

/** The options that decide how send threads are set up (a thread gets them when it starts). */
type ThreadOptions = Pick<MultifdSenderOptions, 'channels' | 'blocks' | 'uuid' | 'compression' | 'level' | 'sendThreads' | 'codecModule' | 'useWorkers'>;

/** Each thread's start-up data, or undefined when the channels cannot run in threads (RAM that is not shared memory). */
function planThreads(options: ThreadOptions): SendWorkerData[] | undefined {
  const shared = sharedBlocks(options.blocks);
  if (options.useWorkers === false || shared === undefined) return undefined;
  const n = options.channels;
  // No more threads than cores: channel `id` is sent by thread `id % threads`.
  const threads = Math.max(1, Math.min(n, options.sendThreads ?? availableParallelism()));
  const plan: SendWorkerData[] = [];
  for (let t = 0; t < threads; t++) {
    const ids: number[] = [];
    for (let id = t; id < n; id += threads) ids.push(id);
    const rings = Object.fromEntries(ids.map((id) => [id, createJobRingMemory(JOB_RING_DEPTH)]));
    plan.push({ channels: ids, rings, uuid: options.uuid ?? ZERO_UUID, blocks: shared, compression: options.compression ?? 'none', level: options.level ?? 1, ...(options.codecModule ? { codecModule: options.codecModule } : {}) });
  }
  return plan;
}

function samePlan(a: readonly SendWorkerData[], b: readonly SendWorkerData[]): boolean {
  const key = (d: SendWorkerData): string => JSON.stringify([d.channels, [...d.uuid], d.compression, d.level, d.codecModule ?? '', d.blocks.map((x) => [x.idstr, x.byteOffset, x.lengthBytes])]);
  // Block memories are compared by identity: a machine with other RAM needs other threads.
  return a.length === b.length && a.every((d, i) => key(d) === key(b[i]!) && d.blocks.every((x, j) => x.buffer === b[i]!.blocks[j]!.buffer));
}

/**
 * Send threads started before a migration, when multifd is switched on: a
 * Node worker thread takes ~30 ms of CPU to start, which would otherwise be
 * part of the migration's setup (QEMU starts a pthread in microseconds).
 * They wait idle, not keeping the process alive, until open() takes them.
 */
export class MultifdSendThreads {
  private threads: SendThread[] | undefined;

  private constructor(private readonly plan: SendWorkerData[]) {
    this.threads = plan.map((data) => new SendThread(data, { idle: true }));
  }

  /** Threads for a sender with these options; undefined when its channels could not run in threads. */
  static start(options: ThreadOptions): MultifdSendThreads | undefined {
    const plan = planThreads(options);
    return plan ? new MultifdSendThreads(plan) : undefined;
  }

  /** Whether these threads serve a sender with `options` (and are all still there). */
  matches(options: ThreadOptions): boolean {
    const plan = planThreads(options);
    return this.threads !== undefined && plan !== undefined && samePlan(plan, this.plan) && this.threads.every((t) => !t.hasExited);
  }

  /** The threads for a sender that plans `plan`, handed over once; undefined (and the threads ended) if they do not fit. */
  take(plan: readonly SendWorkerData[]): SendThread[] | undefined {
    const threads = this.threads;
    this.threads = undefined;
    if (threads === undefined) return undefined;
    if (samePlan(plan, this.plan) && threads.every((t) => !t.hasExited)) return threads;
    for (const t of threads) t.terminate();
    return undefined;
  }

  /** End the threads (multifd switched off, other parameters). */
  dispose(): void {
    for (const t of this.threads ?? []) t.terminate();
    this.threads = undefined;
  }
}

export class MultifdSender {
  /** Header + page bytes of every packet handed to channels (QEMU's multifd-bytes; the init packets are not counted, as 7.2). */
  bytes = 0;
  packets = 0;
  /** Called with the bytes of every packet as it is queued (rate limit, `transferred`). */
  onCharge: ((bytes: number, pages: number) => void) | undefined;
  /** True when every channel runs in a worker thread. */
  workers: boolean;

  private packetNum = 0;
  private nextChannel = 0;
  private failure: Error | undefined;
  // The batch being filled.
  private batchBlock = -1;
  private batchCount = 0;
  private batchOffsets = new Float64Array(MULTIFD_PAGES_PER_PACKET);
  /** Full batches waiting for a channel with room. */
  private readonly ready: RingJob[] = [];
  private finished = false;

  /** The channels' threads were started ahead (MultifdSenderOptions.prestarted). */
  prestarted = false;

  private constructor(private readonly channels: SenderChannel[], workers: boolean) {
    this.workers = workers;
  }

  /** Open every channel and send its init packet (after the main channel is connected). */
  static async open(options: MultifdSenderOptions): Promise<MultifdSender> {
    const connect = options.connect;
    const n = options.channels;
    if (!Number.isInteger(n) || n < 1 || n > 255) throw new RangeError(`multifd-channels ${n} is not in 1..255`);
    const uuid = options.uuid ?? ZERO_UUID;
    const compression = options.compression ?? 'none';
    const level = options.level ?? 1;
    await ensureMultifdCodecs(compression);
    const plan = planThreads(options);
    const useWorkers = plan !== undefined;
    const opened: SenderChannel[] = [];
    const sender = new MultifdSender(opened, useWorkers);
    let allWorkers = useWorkers;
    // Threads start before their connections (tens of milliseconds each; they get the descriptor later),
    // unless they were started ahead for these very options.
    const spare: WorkerSenderChannel[] = [];
    const prestarted = plan ? options.prestarted?.take(plan) : (options.prestarted?.dispose(), undefined);
    try {
      if (plan) {
        sender.prestarted = prestarted !== undefined;
        plan.forEach((data, t) => {
          const thread = prestarted?.[t] ?? new SendThread(data);
          thread.ref();
          for (const id of data.channels) spare[id] = new WorkerSenderChannel(id, thread, (err) => sender.fail(err));
        });
      }
      await options.after;
      const pending = [];
      for (let id = 0; id < n; id++) {
        pending.push(
          (async () => {
            const channel = await connect();
            if (channel.kind !== 'tcp' && channel.kind !== 'unix') {
              channel.abort(new Error(MULTIFD_PROTOCOL_ERROR));
              throw new Error(MULTIFD_PROTOCOL_ERROR);
            }
            const what = `multifd channel ${id} (${options.uri ?? channel.uri})`;
            const detached = useWorkers ? channel.detach?.() : undefined;
            const started = spare[id];
            if (detached && started) {
              // The worker owns the descriptor from here on (the detached channel never touches it again).
              spare[id] = undefined!;
              opened.push(started);
              started.adopt(detached.fd, what);
              await started.ready;
            } else {
              if (started) {
                spare[id] = undefined!;
                started.dispose();
              }
              allWorkers = false;
              const ch = new LocalSenderChannel(id, channel, options.blocks, createSendCodec(compression, level), (err) => sender.fail(err));
              opened.push(ch);
              await ch.start(uuid);
            }
          })(),
        );
      }
      const results = await Promise.allSettled(pending);
      const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (bad) throw bad.reason;
      opened.sort((a, b) => a.id - b.id);
      sender.workers = allWorkers;
      return sender;
    } catch (err) {
      for (const ch of spare) ch?.dispose();
      sender.abort(err as Error);
      throw err;
    }
  }

  get channelCount(): number {
    return this.channels.length;
  }

  get error(): Error | undefined {
    return this.failure;
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const ch of this.channels) ch.interrupt();
  }

  private check(): void {
    if (this.failure) throw this.failure;
  }

  /** Add one page to the batch (multifd_queue_page); the batch goes out when full or when the block changes. */
  queuePage(blockIndex: number, offsetBytes: number): void {
    this.check();
    if (this.batchCount > 0 && blockIndex !== this.batchBlock) this.closeBatch();
    this.batchBlock = blockIndex;
    this.batchOffsets[this.batchCount++] = offsetBytes;
    if (this.batchCount === MULTIFD_PAGES_PER_PACKET) this.closeBatch();
  }

  /** A full batch waits for a channel: the producer should await waitForRoom() before queuing more. */
  get mustWait(): boolean {
    return this.ready.length > 0 || this.failure !== undefined;
  }

  async waitForRoom(): Promise<void> {
    for (;;) {
      this.check();
      this.pump();
      if (this.ready.length === 0) return;
      // Every channel is full: wait for the next in turn to be half written, so one wake-up carries several packets.
      const next = this.channels[this.nextChannel]!;
      await next.whenWritten(halfWritten(next));
    }
  }

  private closeBatch(): void {
    const count = this.batchCount;
    if (count === 0) return;
    const job = { packetNum: this.packetNum++, flags: 0, blockIndex: this.batchBlock, count, offsets: this.batchOffsets.subarray(0, count) };
    this.batchCount = 0;
    this.charge(MULTIFD_HEADER_BYTES + count * MULTIFD_PAGE_SIZE, count);
    // A channel with room copies the offsets as it takes the job; one that waits for room needs its own (the batch is refilled).
    const channel = this.ready.length === 0 ? this.nextWithRoom() : undefined;
    if (channel) channel.push(job);
    else this.ready.push({ ...job, offsets: job.offsets.slice() });
  }

  private charge(bytes: number, pages: number): void {
    this.bytes += bytes;
    this.packets++;
    this.onCharge?.(bytes, pages);
  }

  /** The next channel with room, round-robin (and the turn passes it), or undefined (all full, or failed). */
  private nextWithRoom(): SenderChannel | undefined {
    if (this.failure) return undefined;
    const n = this.channels.length;
    for (let k = 0; k < n; k++) {
      const ch = this.channels[(this.nextChannel + k) % n]!;
      if (ch.inflight < ch.depth) {
        this.nextChannel = (ch.id + 1) % n;
        return ch;
      }
    }
    return undefined;
  }

  /** Hand waiting batches to channels with room. */
  private pump(): void {
    while (this.ready.length > 0) {
      const ch = this.nextWithRoom();
      if (!ch) return;
      ch.push(this.ready.shift()!);
    }
  }

  /**
   * multifd_send_sync_main: flush the partial batch and queue one SYNC packet
   * on every channel. Unlike QEMU 7.2 it does not wait until the channels have
   * written them. The destination keeps the passes in order by itself: a
   * channel stops at its SYNC until the main stream's EOS, and that EOS waits
   * for every channel's SYNC, so a page of the next pass, on any channel or the
   * main stream, lands after this pass's copy. Waiting here emptied every
   * channel once per iteration (every RAM_ITERATE_MAX_WAIT_MS) and left the
   * threads idle while the main thread refilled them. The last sync waits
   * (syncAndFinish).
   */
  async sync(): Promise<void> {
    await this.queueSync();
    this.check();
  }

  /**
   * The last sync of a migration, then end every channel: both are queued
   * at once, so the downtime pays for one round trip to each channel's
   * thread, not two (the channel writes its SYNC before it ends).
   */
  async syncAndFinish(): Promise<void> {
    const marks = await this.queueSync();
    await Promise.all([this.allWritten(marks), this.finish()]);
    this.check();
  }

  /** Queue one SYNC packet on every channel; returns each channel's mark for it. */
  private async queueSync(): Promise<Array<[SenderChannel, number]>> {
    this.closeBatch();
    await this.waitForRoom();
    const marks: Array<[SenderChannel, number]> = [];
    for (const ch of this.channels) {
      for (;;) {
        this.check();
        if (ch.inflight < ch.depth) break;
        await ch.whenWritten(halfWritten(ch));
      }
      marks.push([ch, ch.push({ packetNum: this.packetNum++, flags: MULTIFD_FLAG_SYNC, blockIndex: -1, count: 0, offsets: [] })]);
      this.charge(MULTIFD_HEADER_BYTES, 0);
    }
    return marks;
  }

  /** Until every channel has written its job at `mark` (or one failed: then throws). */
  private async allWritten(marks: Array<[SenderChannel, number]>): Promise<void> {
    for (const [ch, mark] of marks) {
      for (;;) {
        this.check();
        const wait = ch.whenWritten(mark);
        if (wait === undefined) break;
        await wait;
      }
    }
  }

  /** After the last sync: end every channel cleanly (the destination sees EOF at a packet boundary). */
  async finish(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    this.check();
    await Promise.all(this.channels.map((ch) => ch.finish()));
  }

  /** Tear every channel down at once (failure, cancel). Never throws. */
  abort(reason: Error): void {
    this.failure ??= reason;
    this.finished = true;
    // Each channel's abort also wakes its waits.
    for (const ch of this.channels) ch.abort(reason);
  }
}

/** A worker thread that sends one or more channels (send-worker.ts); messages name their channel. */
class SendThread {
  readonly worker: Worker;
  private readonly channels = new Map<number, WorkerSenderChannel>();
  private readonly dropped = new Set<number>();
  private exited = false;

  /** `idle`: started ahead of its channels; it does not keep the process alive until ref(). */
  constructor(private readonly data: SendWorkerData, options: { idle?: boolean } = {}) {
    this.worker = new Worker(new URL('./send-worker.js', import.meta.url), { workerData: data });
    this.worker.on('message', (msg: { type: string; ch: number; seq?: number; message?: string }) => this.channels.get(msg.ch)?.onMessage(msg));
    this.worker.on('error', (err) => {
      for (const ch of this.channels.values()) ch.threadFailed(new Error(`multifd channel ${ch.id}: ${err.message}`, { cause: err }));
    });
    this.worker.on('exit', () => {
      this.exited = true;
      for (const ch of this.channels.values()) ch.threadExited();
    });
    // After the listeners: adding a 'message' listener refs the worker's port again.
    if (options.idle) this.worker.unref();
  }

  attach(ch: WorkerSenderChannel): void {
    this.channels.set(ch.id, ch);
  }

  /** The job ring of channel `id` (shared with the thread since it started). */
  ringOf(id: number): JobRingProducer {
    return new JobRingProducer(this.data.rings[id]!);
  }

  get hasExited(): boolean {
    return this.exited;
  }

  /** Its channels are in use: it keeps the process alive until it ends. */
  ref(): void {
    this.worker.ref();
  }

  post(message: unknown): void {
    if (!this.exited) this.worker.postMessage(message);
  }

  /** A channel that got no connection: the thread no longer waits for it; ends the thread if no channel is left. */
  drop(id: number): void {
    this.dropped.add(id);
    this.channels.delete(id);
    this.post({ type: 'drop', ch: id });
    if (this.data.channels.every((c) => this.dropped.has(c))) void this.worker.terminate();
  }

  terminate(): void {
    void this.worker.terminate();
  }
}

class WorkerSenderChannel implements SenderChannel {
  readonly ready: Promise<void>;
  private readonly ring: JobRingProducer;
  private failure: Error | undefined;
  private onFinished: (() => void) | undefined;
  private finishing = false;
  private resolveReady!: () => void;
  private rejectReady!: (err: Error) => void;

  constructor(readonly id: number, private readonly thread: SendThread, private readonly onFail: (err: Error) => void) {
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {});
    this.ring = thread.ringOf(id);
    thread.attach(this);
  }

  get inflight(): number {
    return this.ring.inflight;
  }

  get depth(): number {
    return this.ring.depth;
  }

  get pushed(): number {
    return this.ring.pushed;
  }

  private failWith(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.rejectReady(err);
    this.ring.interrupt();
    this.onFail(err);
  }

  onMessage(msg: { type: string; message?: string }): void {
    switch (msg.type) {
      case 'ready':
        this.resolveReady();
        break;
      case 'finished':
        this.onFinished?.();
        break;
      case 'error':
        this.failWith(new Error(msg.message));
        break;
    }
  }

  threadFailed(err: Error): void {
    this.failWith(err);
  }

  threadExited(): void {
    if (!this.finishing) this.failWith(new Error(`multifd channel ${this.id}: its thread ended`));
    this.onFinished?.();
  }

  /** Hand the thread its connection's descriptor (it owns it from now on). */
  adopt(fd: number, what: string): void {
    this.thread.post({ type: 'adopt', ch: this.id, fd, what });
  }

  /** A channel that got no connection: its thread no longer waits for it. */
  dispose(): void {
    this.finishing = true;
    this.failure ??= new Error('multifd channel not used');
    this.thread.drop(this.id);
  }

  push(job: RingJob): number {
    if (this.failure) throw this.failure;
    return this.ring.push(job);
  }

  whenWritten(mark: number): Promise<unknown> | undefined {
    // A failed channel writes nothing more: the caller's check() throws its error.
    if (this.failure) return Promise.resolve();
    return this.ring.whenWritten(mark);
  }

  interrupt(): void {
    this.ring.interrupt();
  }

  /** The thread writes what the ring holds, then ends the connection. */
  finish(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    this.finishing = true;
    return new Promise<void>((resolve) => {
      this.onFinished = resolve;
      this.thread.post({ type: 'finish', ch: this.id });
    });
  }

  abort(reason: Error): void {
    this.finishing = true;
    this.failure ??= reason;
    this.ring.interrupt();
    // The thread's other channels go with it: an abort is for the whole sender.
    this.thread.terminate();
  }
}

/** A channel on the main thread (RAM that worker threads cannot read). */
class LocalSenderChannel implements SenderChannel {
  readonly depth = LOCAL_MAX_INFLIGHT;
  pushed = 0;
  private written = 0;
  private failed = false;
  private tail: Promise<void> = Promise.resolve();
  private lastBlock: string | undefined;
  private waiters: Array<{ mark: number; wake(): void }> = [];

  constructor(
    readonly id: number,
    private readonly channel: MigrationChannel,
    private readonly blocks: readonly RamBlock[],
    private readonly codec: MultifdSendCodec | undefined,
    private readonly onFail: (err: Error) => void,
  ) {
    // A channel that drops while idle must fail the migration too.
    channel.closed.catch((err: Error) => this.failWith(new Error(`multifd channel ${id}: ${err.message}`, { cause: err })));
  }

  get inflight(): number {
    return this.pushed - this.written;
  }

  async start(uuid: Uint8Array): Promise<void> {
    await this.channel.output!.write(encodeInitPacket(uuid, this.id));
  }

  private failWith(err: Error): void {
    if (!this.failed) {
      this.failed = true;
      this.onFail(err);
    }
    this.interrupt();
  }

  push(job: RingJob): number {
    const count = job.count;
    const payloadBytes = count * MULTIFD_PAGE_SIZE;
    const packet = Buffer.allocUnsafe(MULTIFD_HEADER_BYTES + payloadBytes);
    if (count > 0) {
      const block = this.blocks[job.blockIndex]!;
      for (let i = 0; i < count; i++) block.readPage(job.offsets[i]! / MULTIFD_PAGE_SIZE, packet, MULTIFD_HEADER_BYTES + i * MULTIFD_PAGE_SIZE);
      this.lastBlock = block.idstr;
    }
    const chunks: Uint8Array[] = [];
    let payloadSize = payloadBytes;
    if (this.codec && count > 0) {
      const payload = this.codec.encode(packet.subarray(MULTIFD_HEADER_BYTES));
      payloadSize = payload.length;
      chunks.push(packet.subarray(0, MULTIFD_HEADER_BYTES), payload);
    } else {
      chunks.push(packet);
    }
    writePacketHeader(packet, 0, { flags: job.flags | (this.codec && count > 0 ? this.codec.flags : 0), normalPages: count, nextPacketSize: payloadSize, packetNum: job.packetNum, ramblock: this.lastBlock, offsets: job.offsets });
    const output = this.channel.output!;
    this.tail = this.tail.then(async () => {
      for (const c of chunks) await output.write(c);
      this.written++;
      this.wakeUpTo(this.written);
    });
    this.tail.catch((err: Error) => this.failWith(new Error(`multifd channel ${this.id}: ${err.message}`, { cause: err })));
    return ++this.pushed;
  }

  whenWritten(mark: number): Promise<unknown> | undefined {
    if (this.failed) return Promise.resolve();
    if (this.written >= mark) return undefined;
    return new Promise<void>((wake) => this.waiters.push({ mark, wake }));
  }

  private wakeUpTo(written: number): void {
    if (this.waiters.length === 0) return;
    const waiting = this.waiters;
    this.waiters = waiting.filter((w) => w.mark > written);
    for (const w of waiting) if (w.mark <= written) w.wake();
  }

  interrupt(): void {
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) w.wake();
  }

  async finish(): Promise<void> {
    await this.tail;
    this.codec?.close?.();
    await this.channel.close();
  }

  abort(reason: Error): void {
    this.codec?.close?.();
    this.channel.abort(reason);
    this.interrupt();
  }
}
