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
 * chunk (ByteSink.writeLent: sockets, pipes) gets slabs back for reuse, so the
 * steady state allocates nothing and writes into memory that is already mapped
 * (and warm in the cache).
 *
 * A sink that writes gathered pieces (ByteSink.writeGather: sockets) is also
 * given large runs in place (bytesInPlace(): guest pages): the chunk becomes
 * a list of pieces, this slab's bytes (record headers) between views of the
 * caller's memory, and the OS copies each page once, straight from guest
 * RAM, where the writer would otherwise copy it into a slab first. The price
 * is a view of the slab per run of headers in the chunk's list (the caller's
 * views it made anyway); the slab bytes are still reused.
 */
import type { ByteSink } from './channel.js';
import { allocateBytes, copyUnaligned } from './native-bytes.js';

const textEncoder = new TextEncoder();

/** How many bytes `text` takes in UTF-8, as countedString() and the stream's other strings write it. */
export function utf8ByteLength(text: string): number {
  return textEncoder.encode(text).length;
}

/** Default chunk size: large writes (a syscall per MiB on a socket, as the loopback limit is measured). */
export const WRITER_CHUNK_BYTES = 1 << 20;
/** Slabs hold several chunks, up to this size. */
const SLAB_BYTES = 4 << 20;

/**
 * target.set(source, targetOffset), fast whatever the alignment. V8 copies to
 * or from a SharedArrayBuffer (guest RAM) with relaxed atomics: word by word
 * when source and target have the same alignment (mod 8), byte by byte
 * otherwise, 6x slower. So an aligned copy goes through set() (one 4 KiB page
 * from shared memory: 112–156 ms per GiB, into it 116–125), any other of 256
 * bytes or more through Buffer's fill with the source as the pattern: one
 * native memcpy whatever the alignment, but behind Node's argument checks
 * (168–244 and 148–161 ms per GiB; microbenchmarks in
 * docs/benchmarks.md, issue 15's fifth session). The alignment test is
 * arithmetic on the views' offsets: asking whether a buffer is shared cost
 * more per page (25 ms per GiB) than the cases it would tell apart.
 */
export function copyBytes(target: Uint8Array, targetOffset: number, source: Uint8Array): void {
  const n = source.length;
  // set() for short and aligned copies, and within one buffer (memcpy must not overlap).
  if (n < 256 || ((target.byteOffset + targetOffset - source.byteOffset) & 7) === 0 || target.buffer === source.buffer) {
    target.set(source, targetOffset);
    return;
  }
  if (targetOffset < 0 || targetOffset + n > target.length) throw new RangeError(`copyBytes: ${n} bytes at ${targetOffset} do not fit a target of ${target.length}`);
  // fill(pattern, start, end) repeats the pattern over [start, end): exactly one copy of `source` here.
  copyUnaligned(target, targetOffset, source);
}

/**
 * Copies this large or larger are pages (or runs of them), whose alignment is
 * worth keeping: the writer lays them out aligned after its next chunk
 * boundary, the reader tells its source theirs (ByteSource.alignReads).
 */
export const ALIGNED_COPY_MIN_BYTES = 1024;

/** Free slabs a writer keeps for its own reuse. */
const SLAB_POOL = 4;

/**
 * Free slabs of SLAB_BYTES that writers closed cleanly left for the next
 * writer in this process: a migration then writes into memory an earlier
 * one (the warm-up's rehearsal, warm-up.ts) already mapped, rather than
 * faulting fresh slabs in (2.5–2.9 ms of page faults per 4 MiB slab on the
 * bench's machine) while the warm-up's lie as garbage. Two cover a
 * single-channel migration's writer (a-1g allocates two). A slab is shared
 * only once none of its chunks is queued or lent to a sink.
 */
const sharedSlabs: Slab[] = [];
const SHARED_SLAB_POOL = 2;

/** Slabs in the process-wide pool (for tests). @internal */
export function sharedSlabCount(): number {
  return sharedSlabs.length;
}

interface Slab {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Chunks of this slab queued or lent to the sink and not yet released. */
  outstanding: number;
  /** The writer has moved on to another slab. */
  retired: boolean;
}

interface QueuedChunk {
  /** The chunk's bytes in its slab, or (bytesInPlace()) slab bytes and the caller's views in order. */
  data: Uint8Array | Uint8Array[];
  length: number;
  slab: Slab;
}

function allocate(n: number): Slab {
  // Fresh memory that is not zero-filled on Node (every byte handed out is written first).
  const bytes = allocateBytes(n);
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
  private readonly queued: QueuedChunk[] = [];
  private queuedLength = 0;
  private flushedBytes = 0;
  /**
   * How far (mod 8) the last large copy's bytes sat from its source's
   * alignment: the next chunk starts that much further on, so that the copies
   * after it (pages of one block, which keep their stream alignment until a
   * record of another size) are aligned and take set()'s fast path.
   */
  private copySkew = 0;
  /** close() completed: the slabs went to the shared pool, and nothing may be written. */
  private closed = false;
  /** The sink writes gathered pieces: bytesInPlace() does not copy. */
  private readonly gathers: boolean;
  /**
   * The current chunk as pieces, once it holds views given to bytesInPlace():
   * slab bytes up to segmentStart, and the views; undefined otherwise.
   */
  private pieces: Uint8Array[] | undefined;
  /** First byte in the slab of the current chunk not yet in `pieces`. */
  private segmentStart = 0;
  /** Bytes of the views in the current chunk. */
  private inPlaceBytes = 0;

  constructor(private readonly sink: ByteSink, private readonly chunkBytes = WRITER_CHUNK_BYTES) {
    if (!Number.isInteger(chunkBytes) || chunkBytes < 16) throw new RangeError(`StreamWriter: buffer size ${chunkBytes} is too small`);
    this.slabBytes = Math.max(chunkBytes, Math.min(SLAB_BYTES, chunkBytes * 32));
    this.current = this.newSlab();
    this.slab = this.current.bytes;
    this.view = this.current.view;
    this.limit = chunkBytes;
    this.gathers = sink.writeGather !== undefined;
  }

  /** Bytes written so far, whether or not they reached the sink. */
  get bytesWritten(): number {
    return this.flushedBytes + this.queuedLength + (this.position - this.start) + this.inPlaceBytes;
  }

  /** Bytes written but not yet handed to the sink. */
  get pendingBytes(): number {
    return this.queuedLength + (this.position - this.start) + this.inPlaceBytes;
  }

  /** Queue the current chunk (if not empty) and start the next one. */
  private rotate(): void {
    const pieces = this.pieces;
    if (pieces !== undefined) {
      if (this.position > this.segmentStart) pieces.push(this.slab.subarray(this.segmentStart, this.position));
      const length = this.position - this.start + this.inPlaceBytes;
      this.queued.push({ data: pieces, length, slab: this.current });
      this.current.outstanding++;
      this.queuedLength += length;
      this.pieces = undefined;
      this.inPlaceBytes = 0;
    } else if (this.position > this.start) {
      const length = this.position - this.start;
      this.queued.push({ data: this.slab.subarray(this.start, this.position), length, slab: this.current });
      this.current.outstanding++;
      this.queuedLength += length;
    }
    if (this.closed) throw new RangeError('StreamWriter: write after close');
    if (this.slabBytes - this.position < 16) {
      const old = this.current;
      old.retired = true;
      if (old.outstanding === 0) this.recycle(old);
      const next = this.free.pop() ?? this.newSlab();
      next.retired = false;
      this.current = next;
      this.slab = next.bytes;
      this.view = next.view;
      this.position = 0;
    }
    // The bytes skipped here are in no chunk: the sink never sees them. Room for 9 bytes remains.
    this.position += (8 - this.copySkew) & 7;
    this.copySkew = 0;
    this.start = this.segmentStart = this.position;
    this.limit = Math.min(this.start + this.chunkBytes, this.slabBytes);
  }

  private newSlab(): Slab {
    return (this.slabBytes === SLAB_BYTES ? sharedSlabs.pop() : undefined) ?? allocate(this.slabBytes);
  }

  private recycle(slab: Slab): void {
    if (this.closed) share(slab);
    else if (this.free.length < SLAB_POOL) this.free.push(slab);
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

  /**
   * A 64-bit value given as its high and low 32-bit halves (unsigned), with
   * no range checks: for hot loops whose values are known good (runs of RAM
   * records).
   */
  be64Parts(high: number, low: number): this {
    this.room(8);
    this.view.setUint32(this.position, high);
    this.view.setUint32(this.position + 4, low);
    this.position += 8;
    return this;
  }

  bytes(data: Uint8Array): this {
    const n = data.length;
    if (n >= ALIGNED_COPY_MIN_BYTES) this.copySkew = (this.slab.byteOffset + this.position - data.byteOffset) & 7;
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
   * The bytes of `data` as they are when the sink sends them: not copied
   * now when the sink gathers (ByteSink.writeGather), copied as bytes() does
   * otherwise. Only for memory whose changes from now on are accounted for
   * (a guest page whose later writes are in the dirty log, RamBlock.logsEveryWrite):
   * the sink may read it any time until the next drain() or flush() settles.
   */
  bytesInPlace(data: Uint8Array): this {
    if (!this.gathers) return this.bytes(data);
    if (this.closed) throw new RangeError('StreamWriter: write after close');
    const pieces = (this.pieces ??= []);
    if (this.position > this.segmentStart) pieces.push(this.slab.subarray(this.segmentStart, this.position));
    pieces.push(data);
    this.segmentStart = this.position;
    this.inPlaceBytes += data.length;
    if (this.inPlaceBytes + (this.position - this.start) >= this.chunkBytes) this.rotate();
    return this;
  }

  /** A counted string: u8 length then the UTF-8 bytes (at most 255: see utf8ByteLength). */
  countedString(s: string): this {
    const encoded = textEncoder.encode(s);
    if (encoded.length > 255) throw new RangeError(`counted string too long (${encoded.length} bytes): ${s.slice(0, 40)}...`);
    this.u8(encoded.length);
    return this.bytes(encoded);
  }

  /** Hand full chunks to the sink, keeping the partial one. */
  async drain(): Promise<void> {
    const sink = this.sink;
    while (this.queued.length > 0) {
      const { data, length, slab } = this.queued.shift()!;
      this.queuedLength -= length;
      if (Array.isArray(data)) {
        // The sink holds no piece once this settles, either way.
        try {
          await sink.writeGather!(data);
        } finally {
          this.released(slab);
        }
      } else if (sink.writeLent) await sink.writeLent(data, () => this.released(slab));
      // A chunk given to write() stays the sink's for good: its slab is never reused.
      else await sink.write(data);
      this.flushedBytes += length;
    }
  }

  /** Hand everything written so far to the sink. */
  async flush(): Promise<void> {
    if (this.position > this.start || this.pieces !== undefined) this.rotate();
    await this.drain();
  }

  /**
   * Flush and close the sink. Once both succeeded, the writer's free slabs
   * (and the others as the sink releases them) go to the shared pool, and
   * any further write throws.
   */
  async close(): Promise<void> {
    await this.flush();
    await this.sink.close();
    if (this.closed) return;
    this.closed = true;
    // Every write from here on goes through rotate(), which refuses it.
    this.start = this.position = this.limit = 0;
    const current = this.current;
    current.retired = true;
    if (current.outstanding === 0) share(current);
    for (const slab of this.free.splice(0)) share(slab);
  }
}

/** A slab none of whose chunks is queued or lent (outstanding 0) goes to the pool, if it is of the pooled size and there is room. */
function share(slab: Slab): void {
  // The includes() guard is cheap (two entries) against the worst mistake here: two writers in one slab.
  if (slab.bytes.length === SLAB_BYTES && sharedSlabs.length < SHARED_SLAB_POOL && !sharedSlabs.includes(slab)) {
    slab.retired = false;
    sharedSlabs.push(slab);
  }
}
