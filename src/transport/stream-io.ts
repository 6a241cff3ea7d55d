/**
 * ByteSource / ByteSink over Node streams (sockets, pipes) and guards for
 * other channels (files), with the guarantees the transports promise:
 *
 * - every stream error becomes a ChannelError from read()/write()/close(),
 *   never an unhandled 'error' event (listeners are attached at construction);
 * - an abort signal makes pending and later calls reject at once;
 * - closing the source of a socket does not close its sink (and vice versa),
 *   because the two directions of one socket are the stream and the return path.
 *
 * The wire layer's ReadableSource/WritableSink are not used for sockets: the
 * async iterator destroys the whole socket when the read side ends, and a write
 * after the stream closed waits for a 'close' event that already happened.
 */
import { writevSync } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { ChannelError, unwrittenPieces, type ByteSink, type ByteSource } from '../wire/index.js';
import { asChannelError } from './errors.js';
import { Wakeup } from './waiting.js';

/** `promise`, or a rejection with the abort reason as soon as `signal` fires. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal, context: string): Promise<T> {
  if (signal.aborted) {
    promise.catch(() => {}); // its outcome no longer matters; keep it from being an unhandled rejection
    return Promise.reject(asChannelError(signal.reason, context));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      promise.catch(() => {});
      reject(asChannelError(signal.reason, context));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** A promise that resolves after `ms`, and a way to cancel its timer (so tests and processes can exit). */
export function delay(ms: number): { promise: Promise<void>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  const promise = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

/** `promise`'s value, or undefined if it takes longer than `ms`. */
export async function withinMs<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  const timer = delay(ms);
  try {
    return await Promise.race([promise, timer.promise.then(() => undefined)]);
  } finally {
    timer.cancel();
  }
}

export interface NodeSourceOptions {
  /** Names the channel in error messages (the URI). */
  what: string;
  signal: AbortSignal;
  /** Runs at the clean end of the stream; may throw to turn the end into a failure (an exec child's exit status). */
  atEnd?: () => Promise<void>;
  /** Runs once when the consumer closes this source. */
  onClose?: () => void;
  /**
   * The socket reads into a ring of reused buffers (net.Socket `onread`, see
   * ringReads()) and hands chunks to deliver() instead of emitting 'data'.
   */
  ring?: RingReads;
  /** With `ring`: where its reads land (ByteSource.alignReads). */
  alignReads?: (streamOffsetMod8: number) => void;
}

/**
 * Socket reads into `chunks` buffers of `chunkBytes`, reused in turn: no
 * allocation and no fresh (page-faulting) memory per read, and no stream
 * machinery per chunk. At most `chunks / 2` chunks wait unread (then reading
 * stops until the consumer catches up), so a chunk is overwritten only after
 * the consumer has read at least `chunks / 2` later ones: a consumer must not
 * keep a chunk (or a view into it) that long. A StreamReader whose views are
 * used before it reads on holds at most two.
 */
export interface RingReads {
  chunkBytes: number;
  chunks: number;
}

/** Between a ring's socket reads and the source that takes them: `to` is set by the source. */
export interface RingLink {
  to?: (chunk: Uint8Array) => boolean;
  /** ByteSource.alignReads: where the next reads land. */
  alignReads(streamOffsetMod8: number): void;
}

/**
 * Buffers of rings whose connections are over (RingReadsUse.release), kept
 * for the next ring of the same chunk size in this thread, up to one ring's
 * worth each: a process's successive migrations (the warm-up's three
 * rehearsals, then the real one) read into memory already mapped, where each
 * ring used to be left as 4 MiB of garbage until V8's next full collection.
 */
const spareRingChunks = new Map<number, Uint8Array[]>();

function takeRingChunks(ring: RingReads): Uint8Array[] {
  const spare = spareRingChunks.get(ring.chunkBytes) ?? [];
  const taken = spare.splice(0, ring.chunks);
  while (taken.length < ring.chunks) taken.push(Buffer.allocUnsafeSlow(ring.chunkBytes));
  return taken;
}

function giveBackRingChunks(ring: RingReads, chunks: Uint8Array[]): void {
  let spare = spareRingChunks.get(ring.chunkBytes);
  if (!spare) spareRingChunks.set(ring.chunkBytes, (spare = []));
  spare.push(...chunks.slice(0, Math.max(0, ring.chunks - spare.length)));
}

/** @internal How many spare ring chunks of `chunkBytes` this thread keeps (tests). */
export function spareRingChunkCount(chunkBytes: number): number {
  return spareRingChunks.get(chunkBytes)?.length ?? 0;
}

/** A ring's socket-side parts (ringReads). */
export interface RingReadsUse {
  onread: { buffer: () => Uint8Array; callback: (n: number, buf: Uint8Array) => boolean };
  deliver: RingLink;
  /**
   * The ring's buffers are free for another connection's ring: call once
   * the socket can read no more (its 'close') and the consumer let go of its
   * chunks (it closed the source). Never calling it is safe: they become garbage.
   */
  release: () => void;
}

/**
 * Runs `release` (RingReadsUse.release) once `stream` closed (it reads no
 * more) and the returned function was called (the consumer closed its source).
 */
export function releaseRingAfter(stream: Readable, release: () => void): () => void {
  let streamGone = stream.destroyed && stream.closed;
  let consumerDone = false;
  const releaseIfBoth = (): void => {
    if (streamGone && consumerDone) release();
  };
  if (!streamGone) {
    stream.once('close', () => {
      streamGone = true;
      releaseIfBoth();
    });
  }
  return () => {
    consumerDone = true;
    releaseIfBoth();
  };
}

/**
 * The `onread` option for a net.Socket reading into a ring; `deliver.to` is
 * set by the source. `receivedBeforeBytes`: the stream's bytes read before
 * this ring's first (the stream offset of its first byte).
 *
 * Each read lands 0-7 bytes into its buffer, so that stream offsets ≡ the
 * consumer's alignReads() (its pages) sit 8-byte aligned in memory: copied
 * into guest RAM (shared memory) they then go word by word, not byte by byte
 * (see copyBytes). The consumer sees the same bytes either way.
 */
export function ringReads(ring: RingReads, receivedBeforeBytes = 0): RingReadsUse {
  const pool = takeRingChunks(ring);
  let released = false;
  let next = 0;
  let receivedBytes = receivedBeforeBytes;
  let pageOffsetMod8 = 0;
  const deliver: RingLink = {
    alignReads: (streamOffsetMod8) => {
      pageOffsetMod8 = streamOffsetMod8 & 7;
    },
  };
  return {
    onread: {
      buffer: () => {
        const chunk = pool[next++ % ring.chunks]!;
        // A byte at stream offset S + k lands at `skip + k`: aligned for S + k ≡ pageOffsetMod8.
        const skip = (receivedBytes - pageOffsetMod8) & 7;
        return skip === 0 ? chunk : chunk.subarray(skip);
      },
      // false stops reading (Node calls readStop); resume() starts it again.
      callback: (n, buf) => {
        receivedBytes += n;
        return deliver.to!(buf.subarray(0, n));
      },
    },
    deliver,
    release: () => {
      if (released) return;
      released = true;
      giveBackRingChunks(ring, pool);
    },
  };
}

/** Received bytes kept ahead of the consumer before the stream is paused (then TCP's window pushes back). */
const SOURCE_QUEUE_HIGH_BYTES = 1 << 20;
/** Reading resumes once the consumer has taken the queue below this. */
const SOURCE_QUEUE_LOW_BYTES = 256 * 1024;

export class NodeReadableSource implements ByteSource {
  private ended = false;
  private closedByUser = false;
  private failure: ChannelError | undefined;
  private endCheck: Promise<void> | undefined;
  private readonly wake = new Wakeup();
  /** Chunks received and not yet read, as they came (never joined: no copy). */
  private readonly queue: Uint8Array[] = [];
  private queueHead = 0;
  private queuedBytes = 0;
  private paused = false;

  constructor(private readonly stream: Readable, private readonly options: NodeSourceOptions) {
    // Flowing mode with our own bounded queue: each chunk is handed over as it
    // came (a paused-mode read() would join buffered chunks, and the socket
    // would stop and restart reading around every chunk). Past the queue's
    // bound the stream is paused, so the kernel's window (TCP) or the pipe
    // applies backpressure to the peer.
    if (!options.ring) stream.on('data', this.onData);
    stream.on('end', () => {
      this.ended = true;
      this.wake.notify();
    });
    stream.on('error', (err: Error) => {
      this.failure ??= new ChannelError(`${options.what}: read failed: ${err.message}`, { cause: err });
      this.wake.notify();
    });
    stream.on('close', () => {
      if (!this.ended) this.failure ??= new ChannelError(`${options.what}: connection closed before the end of the stream`);
      this.wake.notify();
    });
    options.signal.addEventListener('abort', this.wake.notify, { once: true });
  }

  alignReads(streamOffsetMod8: number): void {
    this.options.alignReads?.(streamOffsetMod8);
  }

  /** A chunk read into the ring (RingReads); false when reading must stop for now. */
  deliver(chunk: Uint8Array): boolean {
    if (this.closedByUser) return false;
    this.queue.push(chunk);
    this.queuedBytes += chunk.length;
    this.wake.notify();
    if (this.queue.length - this.queueHead >= this.options.ring!.chunks / 2) {
      this.paused = true;
      return false;
    }
    return true;
  }

  private readonly onData = (chunk: Buffer | string): void => {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : chunk;
    this.queue.push(bytes);
    this.queuedBytes += bytes.length;
    if (this.queuedBytes >= SOURCE_QUEUE_HIGH_BYTES && !this.paused) {
      this.paused = true;
      this.stream.pause();
    }
    this.wake.notify();
  };

  private shift(): Uint8Array | null {
    if (this.queueHead >= this.queue.length) return null;
    const chunk = this.queue[this.queueHead]!;
    this.queue[this.queueHead++] = undefined as unknown as Uint8Array;
    if (this.queueHead === this.queue.length) {
      this.queue.length = 0;
      this.queueHead = 0;
    } else if (this.queueHead >= 1024) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
    this.queuedBytes -= chunk.length;
    const ring = this.options.ring;
    const low = ring ? this.queue.length - this.queueHead <= ring.chunks / 4 : this.queuedBytes < SOURCE_QUEUE_LOW_BYTES;
    if (this.paused && low && !this.closedByUser) {
      this.paused = false;
      this.stream.resume();
    }
    return chunk;
  }

  async read(): Promise<Uint8Array | null> {
    const { signal, what } = this.options;
    for (;;) {
      if (signal.aborted) throw asChannelError(signal.reason, what);
      if (this.closedByUser) return null;
      // Data that arrived before a failure is still delivered: it brings the reader
      // up to the real point where the stream broke.
      const chunk = this.shift();
      if (chunk !== null) return chunk;
      if (this.ended) {
        if (this.options.atEnd) {
          this.endCheck ??= this.options.atEnd();
          await abortable(this.endCheck, signal, what);
        }
        return null;
      }
      if (this.failure) throw this.failure;
      await this.wake.wait();
    }
  }

  /**
   * The chunks received and not yet read, taken out of this source (a socket
   * handed to another thread): copies when they are in a ring, whose buffers
   * go to the next connection once this one is over.
   */
  takeQueued(): Uint8Array[] {
    const queued = this.queue.slice(this.queueHead);
    const chunks = this.options.ring ? queued.map((chunk) => chunk.slice()) : queued;
    this.queue.length = 0;
    this.queueHead = 0;
    this.queuedBytes = 0;
    return chunks;
  }

  /** Stop reading. Does not touch the other direction of the channel. */
  async close(): Promise<void> {
    if (this.closedByUser) return;
    this.closedByUser = true;
    this.stream.off('data', this.onData);
    this.stream.pause();
    this.queue.length = 0;
    this.queueHead = 0;
    this.queuedBytes = 0;
    this.wake.notify();
    this.options.onClose?.();
  }
}

export interface NodeSinkOptions {
  what: string;
  signal: AbortSignal;
  /** Runs after close() flushed everything; may throw (an exec child's exit status). */
  afterEnd?: () => Promise<void>;
  /** Turns a write failure into a better one (an exec child's exit explains its EPIPE). */
  explain?: (failure: ChannelError) => Promise<ChannelError>;
  /**
   * The descriptor the stream writes to, when gathered writes may go to it
   * directly (a plain socket or pipe; never a TLS socket, whose bytes must
   * be encrypted): undefined when there is none, or none any more.
   */
  descriptor?: () => number | undefined;
}

/** Error codes of a non-blocking descriptor with no room. */
const NO_ROOM = new Set(['EAGAIN', 'EWOULDBLOCK']);

export class NodeWritableSink implements ByteSink {
  /** Only over a descriptor (NodeSinkOptions.descriptor): other streams are written chunk by chunk. */
  readonly writeGather: ((pieces: readonly Uint8Array[]) => Promise<void>) | undefined;
  private failure: ChannelError | undefined;
  private explained: Promise<ChannelError> | undefined;
  private closing: Promise<void> | undefined;
  private readonly wake = new Wakeup();

  constructor(private readonly stream: Writable, private readonly options: NodeSinkOptions) {
    stream.on('drain', this.wake.notify);
    stream.on('finish', this.wake.notify);
    stream.on('close', this.wake.notify);
    stream.on('error', (err: Error) => {
      this.failure ??= new ChannelError(`${options.what}: write failed: ${err.message}`, { cause: err });
      this.wake.notify();
    });
    options.signal.addEventListener('abort', this.wake.notify, { once: true });
    this.writeGather = options.descriptor ? (pieces) => this.gather(pieces) : undefined;
  }

  /** Throws if aborted or failed. Synchronous when all is well (no await per chunk). */
  private check(): Promise<never> | undefined {
    const { signal, what, explain } = this.options;
    if (signal.aborted) return Promise.reject(asChannelError(signal.reason, what));
    if (this.failure) {
      const failure = this.failure;
      this.explained ??= explain ? explain(failure).catch(() => failure) : Promise.resolve(failure);
      return this.explained.then((err) => Promise.reject(err));
    }
    return undefined;
  }

  /** Throws unless a write may begin: aborted, failed, closing or closed. */
  private async checkWritable(): Promise<void> {
    await this.check();
    if (this.closing) throw new ChannelError(`${this.options.what}: write after close`);
    if (this.stream.destroyed) throw new ChannelError(`${this.options.what}: channel is closed`);
  }

  write(chunk: Uint8Array): Promise<void> {
    return this.send(chunk, undefined);
  }

  /** write(), and `release` once Node has handed the chunk to the OS (or given up on it). */
  writeLent(chunk: Uint8Array, release: () => void): Promise<void> {
    return this.send(chunk, release);
  }

  private async send(chunk: Uint8Array, release: (() => void) | undefined): Promise<void> {
    await this.checkWritable();
    // Node calls the callback when the chunk was written, or with the error that ended the stream.
    if (release) {
      let released = false;
      const done = (): void => {
        if (released) return;
        released = true;
        release();
      };
      this.stream.write(chunk, done);
      // Nothing left in Node's queue: the OS took the whole chunk synchronously.
      // Release now rather than on the next tick (a busy producer would otherwise
      // run ahead of the callbacks and allocate fresh memory meanwhile).
      if (this.stream.writableLength === 0) done();
    } else {
      this.stream.write(chunk);
    }
    // Returning once Node has buffered the chunk below its high-water mark is the backpressure.
    while (this.stream.writableNeedDrain) {
      await this.wake.wait();
      await this.check();
      if (this.stream.destroyed) throw new ChannelError(`${this.options.what}: channel closed while writing`);
    }
  }

  /**
   * ByteSink.writeGather: the pieces go to the OS with writev, in place,
   * while Node has nothing of this stream queued (else the order would
   * break); what the OS has no room for yet goes on one piece at a time
   * through Node, whose callback says the OS took it and has room again
   * (Node has no public "writable" event for a socket that is not full of
   * its own writes). Without a descriptor, the pieces are copied into one
   * chunk and written as write() does (the socket lost it: destroyed, or
   * handed to another thread).
   */
  private async gather(pieces: readonly Uint8Array[]): Promise<void> {
    await this.checkWritable();
    let left = pieces;
    while (left.length > 0) {
      const fd = this.options.descriptor?.();
      if (fd === undefined) return this.send(Buffer.concat(left), undefined);
      let taken = 0;
      if (this.stream.writableLength === 0) {
        try {
          taken = writevSync(fd, left as Uint8Array[]);
        } catch (err) {
          if (!NO_ROOM.has((err as NodeJS.ErrnoException).code ?? '')) {
            this.failure ??= new ChannelError(`${this.options.what}: write failed: ${(err as Error).message}`, { cause: err });
            this.stream.destroy();
            await this.check();
          }
        }
        left = unwrittenPieces(left, taken);
        if (left.length === 0) return;
      }
      const piece = left[0]!;
      const failed = await new Promise<Error | null | undefined>((resolve) => this.stream.write(piece, resolve));
      if (failed) this.failure ??= new ChannelError(`${this.options.what}: write failed: ${failed.message}`, { cause: failed });
      await this.check();
      if (this.stream.destroyed) throw new ChannelError(`${this.options.what}: channel closed while writing`);
      left = unwrittenPieces(left, piece.length);
    }
  }

  /** Flush, end this direction (half-close on a socket), then run afterEnd. Same promise on every call. */
  close(): Promise<void> {
    this.closing ??= this.finish();
    return this.closing;
  }

  private async finish(): Promise<void> {
    await this.check();
    if (!this.stream.writableEnded) this.stream.end();
    while (!this.stream.writableFinished) {
      await this.check();
      if (this.stream.destroyed) throw new ChannelError(`${this.options.what}: closed before all data was written`);
      await this.wake.wait();
    }
    await this.options.afterEnd?.();
  }
}

/** Guards a source that has no abort of its own (a file): abort, closed state, ChannelError for every failure. */
export class GuardedSource implements ByteSource {
  private closed = false;
  constructor(private readonly inner: ByteSource, private readonly what: string, private readonly signal: AbortSignal) {}
  async read(): Promise<Uint8Array | null> {
    if (this.signal.aborted) throw asChannelError(this.signal.reason, this.what);
    if (this.closed) return null;
    try {
      return await abortable(this.inner.read(), this.signal, this.what);
    } catch (err) {
      throw asChannelError(err, `${this.what}: read failed`);
    }
  }
  alignReads(streamOffsetMod8: number): void {
    this.inner.alignReads?.(streamOffsetMod8);
  }
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.inner.close().catch(() => {}); // nothing is lost by a failed close of a read-only channel
  }
}

export class GuardedSink implements ByteSink {
  private closing: Promise<void> | undefined;
  /** Offered when the inner sink offers it (a file: its slabs come back for reuse). */
  readonly writeLent?: (chunk: Uint8Array, release: () => void) => Promise<void>;
  /** Offered when the inner sink offers it (a file: guest pages written in place). */
  readonly writeGather?: (pieces: readonly Uint8Array[]) => Promise<void>;

  constructor(private readonly inner: ByteSink, private readonly what: string, private readonly signal: AbortSignal) {
    if (inner.writeLent) {
      const writeLent = inner.writeLent.bind(inner);
      this.writeLent = (chunk, release) => this.guarded(() => writeLent(chunk, release), release);
    }
    if (inner.writeGather) {
      const writeGather = inner.writeGather.bind(inner);
      this.writeGather = (pieces) => this.guarded(() => writeGather(pieces));
    }
  }

  write(chunk: Uint8Array): Promise<void> {
    return this.guarded(() => this.inner.write(chunk));
  }

  /** `operation` under the abort signal, any failure a ChannelError; `notStarted` runs when it is refused before it starts. */
  private async guarded(operation: () => Promise<void>, notStarted?: () => void): Promise<void> {
    if (this.signal.aborted || this.closing) {
      notStarted?.();
      throw this.signal.aborted ? asChannelError(this.signal.reason, this.what) : new ChannelError(`${this.what}: write after close`);
    }
    try {
      await abortable(operation(), this.signal, this.what);
    } catch (err) {
      throw asChannelError(err, `${this.what}: write failed`);
    }
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.signal.aborted) throw asChannelError(this.signal.reason, this.what);
      try {
        await this.inner.close();
      } catch (err) {
        throw asChannelError(err, `${this.what}: close failed`);
      }
    })();
    return this.closing;
  }
}
