/**
 * A buffered big-endian writer onto a ByteSink.
 *
 * Writes are synchronous into a chunk of `chunkBytes` bytes; full chunks queue
 * up until `drain()` or `flush()` hands them to the sink, so a producer
 * decides where to wait (the migration loop drains between records and
 * flushes at section boundaries).
 *
 * Chunks are windows of larger slabs allocated without zero-filling: a flush
 * hands over the bytes written so far and the next chunk starts right after
 * them in the same slab (the sink owns what it was given; those bytes are
 * never written again). Nothing is allocated per record or per flush, and the
 * sink sees few large writes. A sink that can say when it is done with a
 * chunk (ByteSink.writeSegments or writeLent: sockets, pipes) gets slabs back
 * for reuse, so the steady state allocates nothing and writes into memory that
 * is already mapped (and warm in the cache).
 *
 * lend() writes a caller's bytes without copying them, when the sink can send
 * memory it does not own (writeSegments: one writev per batch): the current
 * chunk ends, the caller's view is queued as a segment of its own, and the
 * next chunk starts right after the ended one. Guest RAM pages go out this
 * way, as QEMU sends them (iovecs pointing at guest memory). Other sinks get a
 * copy, as from bytes(). The price is a segment object per lent view and per
 * chunk between two views, and an iovec each for Node and the kernel: worth
 * it for long views (multifd page runs); for single 4 KiB pages it costs
 * about what the copy did (a memcpy at 5 GB/s).
 */
import type { ByteSink } from './channel.js';

const textEncoder = new TextEncoder();

/** Default chunk size: large writes (a syscall per MiB on a socket, as the loopback limit is measured). */
export const WRITER_CHUNK_BYTES = 1 << 20;
/** Slabs hold several chunks, up to this size. */
const SLAB_BYTES = 4 << 20;

const fillBytes = Buffer.prototype.fill;

/**
 * target.set(source, targetOffset), fast whatever the alignment. V8 copies to
 * or from a SharedArrayBuffer (guest RAM) with relaxed atomics, word by word
 * only when source and target have the same alignment and byte by byte
 * otherwise (2-3x slower); a RAM page read at an odd stream offset is the
 * usual case. Such copies go through Buffer's fill with the source as the
 * pattern instead: one native memcpy, any alignment (measured 5.0 against
 * 3.3 GB/s for 4 KiB pages through an aligned scratch buffer, 1.6 with set).
 */
export function copyBytes(target: Uint8Array, targetOffset: number, source: Uint8Array): void {
  const n = source.length;
  // set() for short copies, same alignment, no shared memory, and one buffer (memcpy must not overlap).
  if (n < 256 || ((target.byteOffset + targetOffset - source.byteOffset) & 7) === 0 || !(target.buffer instanceof SharedArrayBuffer || source.buffer instanceof SharedArrayBuffer) || target.buffer === source.buffer) {
    target.set(source, targetOffset);
    return;
  }
  if (targetOffset < 0 || targetOffset + n > target.length) throw new RangeError(`copyBytes: ${n} bytes at ${targetOffset} do not fit a target of ${target.length}`);
  // fill(pattern, start, end) repeats the pattern over [start, end): exactly one copy of `source` here.
  fillBytes.call(target, source, targetOffset, targetOffset + n);
}

/** Free slabs kept for reuse. */
const SLAB_POOL = 4;
/**
 * Shorter views are copied even by lend(): an iovec of its own, and the chunk
 * it splits, cost more than copying a few hundred bytes.
 */
export const LEND_MIN_BYTES = 1024;
/** Segments per writeSegments() call at most: Linux's IOV_MAX, so a batch fits one writev call. */
const MAX_SEGMENTS_PER_WRITE = 1024;

interface Slab {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Chunks of this slab queued or lent to the sink and not yet released. */
  outstanding: number;
  /** The writer has moved on to another slab. */
  retired: boolean;
}

function allocate(n: number): Slab {
  // allocUnsafeSlow: fresh memory that is not zero-filled (every byte handed out is written first).
  const b = Buffer.allocUnsafeSlow(n);
  const bytes = new Uint8Array(b.buffer, b.byteOffset, n);
  return { bytes, view: new DataView(bytes.buffer, bytes.byteOffset, n), outstanding: 0, retired: false };
}

export class StreamWriter {
  private current: Slab;
  private slab: Uint8Array;
  private view: DataView;
  private readonly free: Slab[] = [];
  private start = 0; // first byte of the current chunk in slab
  private limit: number; // end of the current chunk in slab
  private position = 0; // next byte to write in slab
  private readonly slabBytes: number;
  // Chunks and lent views waiting for the sink, and the slab of each (undefined for a lent view).
  // Two arrays rather than an object per entry: a page record is two entries when pages are lent.
  private readonly queued: Uint8Array[] = [];
  private readonly queuedSlabs: Array<Slab | undefined> = [];
  private queuedLength = 0;
  private flushedBytes = 0;
  /** The sink takes segments (writeSegments): lend() lends, chunks are made as Buffers (what Node writes, no conversion per chunk). */
  private readonly lends: boolean;

  constructor(private readonly sink: ByteSink, private readonly chunkBytes = WRITER_CHUNK_BYTES) {
    if (!Number.isInteger(chunkBytes) || chunkBytes < 16) throw new RangeError(`StreamWriter: buffer size ${chunkBytes} is too small`);
    this.slabBytes = Math.max(chunkBytes, Math.min(SLAB_BYTES, chunkBytes * 32));
    this.current = allocate(this.slabBytes);
    this.slab = this.current.bytes;
    this.view = this.current.view;
    this.limit = chunkBytes;
    this.lends = sink.writeSegments !== undefined;
  }

  /** Bytes written so far, whether or not they reached the sink. */
  get bytesWritten(): number {
    return this.flushedBytes + this.queuedLength + (this.position - this.start);
  }

  /** Bytes written but not yet handed to the sink. */
  get pendingBytes(): number {
    return this.queuedLength + (this.position - this.start);
  }

  /** Queue the current chunk (if not empty) and start the next one. */
  private rotate(): void {
    if (this.position > this.start) {
      const slab = this.slab;
      this.queued.push(this.lends ? Buffer.from(slab.buffer, slab.byteOffset + this.start, this.position - this.start) : slab.subarray(this.start, this.position));
      this.queuedSlabs.push(this.current);
      this.current.outstanding++;
      this.queuedLength += this.position - this.start;
    }
    if (this.slabBytes - this.position < 16) {
      const old = this.current;
      old.retired = true;
      if (old.outstanding === 0) this.recycle(old);
      const next = this.free.pop() ?? allocate(this.slabBytes);
      next.retired = false;
      this.current = next;
      this.slab = next.bytes;
      this.view = next.view;
      this.position = 0;
    }
    this.start = this.position;
    this.limit = Math.min(this.start + this.chunkBytes, this.slabBytes);
  }

  private recycle(slab: Slab): void {
    if (this.free.length < SLAB_POOL) this.free.push(slab);
  }

  private released(slab: Slab): void {
    if (--slab.outstanding === 0 && slab.retired) this.recycle(slab);
  }

  private room(n: number): void {
    if (this.limit - this.position < n) this.rotate();
  }

  u8(v: number): this {
    if (this.position >= this.limit) this.rotate();
    this.slab[this.position++] = v;
    return this;
  }

  be16(v: number): this {
    this.room(2);
    this.view.setUint16(this.position, v);
    this.position += 2;
    return this;
  }

  be32(v: number): this {
    this.room(4);
    this.view.setUint32(this.position, v >>> 0);
    this.position += 4;
    return this;
  }

  /** A 64-bit value: a bigint (two's complement for negatives) or a non-negative safe integer. */
  be64(v: number | bigint): this {
    this.room(8);
    if (typeof v === 'bigint') {
      this.view.setBigUint64(this.position, BigInt.asUintN(64, v));
    } else {
      if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`be64: ${v} is not a non-negative safe integer`);
      this.view.setUint32(this.position, Math.floor(v / 0x100000000));
      this.view.setUint32(this.position + 4, v >>> 0);
    }
    this.position += 8;
    return this;
  }

  bytes(data: Uint8Array): this {
    const n = data.length;
    if (this.limit - this.position >= n) {
      // The common case (a page into a large chunk): one copy.
      copyBytes(this.slab, this.position, data);
      this.position += n;
      return this;
    }
    let done = 0;
    while (done < n) {
      if (this.position >= this.limit) this.rotate();
      const step = Math.min(n - done, this.limit - this.position);
      copyBytes(this.slab, this.position, data.subarray(done, done + step));
      this.position += step;
      done += step;
    }
    return this;
  }

  /**
   * Write `data` without copying it, when the sink can send it from where it
   * is (ByteSink.writeSegments); otherwise (or for fewer than LEND_MIN_BYTES)
   * copy it as bytes() does. A lent view is read when the OS takes it, which
   * may be after the next drain() or flush() returned (as late as the sink's
   * close()): its memory must stay valid until then, and its contents are
   * whatever they are at that time. For memory that may be reused or freed
   * sooner, use bytes().
   */
  lend(data: Uint8Array): this {
    const n = data.length;
    if (n < LEND_MIN_BYTES || !this.lends) return this.bytes(data);
    // End the current chunk so that the view goes out after what precedes it; the next chunk starts after the ended one.
    this.rotate();
    this.queued.push(data);
    this.queuedSlabs.push(undefined);
    this.queuedLength += n;
    return this;
  }

  /** A counted string: u8 length then the UTF-8 bytes (at most 255). */
  countedString(s: string): this {
    const encoded = textEncoder.encode(s);
    if (encoded.length > 255) throw new RangeError(`counted string too long (${encoded.length} bytes): ${s.slice(0, 40)}...`);
    this.u8(encoded.length);
    return this.bytes(encoded);
  }

  /** Hand full chunks (and lent views) to the sink, keeping the partial chunk. */
  async drain(): Promise<void> {
    const sink = this.sink;
    if (sink.writeSegments) {
      await this.drainSegments(sink.writeSegments.bind(sink));
      return;
    }
    while (this.queued.length > 0) {
      const bytes = this.queued.shift()!;
      const slab = this.queuedSlabs.shift();
      this.queuedLength -= bytes.length;
      this.flushedBytes += bytes.length;
      // Without writeSegments nothing is lent (lend() copied): every chunk is in a slab.
      // A chunk given to write() stays the sink's for good: its slab is never reused.
      if (sink.writeLent) await sink.writeLent(bytes, () => this.released(slab!));
      else await sink.write(bytes);
    }
  }

  /**
   * Queued segments in batches of about a chunk's bytes (at most
   * MAX_SEGMENTS_PER_WRITE), one sink call each: a chunk of page records is
   * one writev of a few hundred iovecs, not an await per page. Waiting for
   * the sink between batches keeps Node's buffer, and the memory it holds on
   * to, at about a chunk.
   */
  private async drainSegments(writeSegments: NonNullable<ByteSink['writeSegments']>): Promise<void> {
    const queued = this.queued;
    while (queued.length > 0) {
      let count = 0;
      let batchBytes = 0;
      while (count < queued.length && count < MAX_SEGMENTS_PER_WRITE && batchBytes < this.chunkBytes) batchBytes += queued[count++]!.length;
      const segments = queued.splice(0, count);
      const slabs = this.queuedSlabs.splice(0, count);
      this.queuedLength -= batchBytes;
      this.flushedBytes += batchBytes;
      await writeSegments(segments, () => {
        for (const slab of slabs) if (slab) this.released(slab);
      });
    }
  }

  /** Hand everything written so far to the sink. */
  async flush(): Promise<void> {
    if (this.position > this.start) this.rotate();
    await this.drain();
  }

  /** Flush and close the sink. */
  async close(): Promise<void> {
    await this.flush();
    await this.sink.close();
  }
}
