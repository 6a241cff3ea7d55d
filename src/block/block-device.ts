/**
 * A disk as the block layer sees it: sector (512 B) reads and writes, a dirty
 * bitmap at 1 MiB chunk granularity (QEMU's block-migration dirty bitmap),
 * flush. Browser-safe: the `block` section's handlers depend on this
 * interface only; the backends are FileBlockDevice (a raw image file,
 * Node-side: file-block-device.ts) and MemoryBlockDevice (an ArrayBuffer).
 */
import { DirtyBitmap } from '../ram/index.js';
import { utf8ByteLength } from '../wire/writer.js';
import { CHUNK_SIZE, SECTOR_SIZE, SECTORS_PER_CHUNK } from './geometry.js';
// Sector and chunk sizes live in geometry.ts; re-exported for existing importers.
export { CHUNK_SIZE, formatSize, SECTOR_BITS, SECTOR_SIZE, SECTORS_PER_CHUNK } from './geometry.js';

export interface BlockDevice {
  /** The device's name on the wire (source and destination match disks by it). */
  readonly name: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** The image file, for reports (query-block); absent for a disk that is no file. */
  readonly path?: string;
  /** One bit per 1 MiB chunk, set by every write (tracking is always on; consumers clear it). */
  readonly dirty: DirtyBitmap;
  readonly totalSectors: number;
  readonly chunkCount: number;
  /** Sectors in chunk `chunk` (the last chunk may be short). */
  chunkSectors(chunk: number): number;
  /** Mark the chunks covering `count` sectors from `sector` dirty. */
  markDirty(sector: number, count: number): void;
  /** Move writes made outside this object (a shared dirty log) into `dirty`; returns how many chunks became newly dirty. */
  collectDirty(): number;
  /** Read `count` sectors from `sector` into `into` (default: a new buffer). */
  readSectors(sector: number, count: number, into?: Uint8Array): Promise<Uint8Array>;
  /** Write whole sectors (data.length a multiple of 512) at `sector`; marks the chunks dirty. */
  writeSectors(sector: number, data: Uint8Array): Promise<void>;
  /** Write zeros to `count` sectors. */
  writeZeroes(sector: number, count: number): Promise<void>;
  /**
   * Synchronous byte-range access, where the backend has it (a file's
   * descriptor, memory): for device models that cannot wait (an emulator's
   * IDE must never read around a write still in flight). writeSync marks the
   * chunks dirty after the data landed, as writeSectors.
   */
  readSync?(offsetBytes: number, into: Uint8Array): void;
  writeSync?(offsetBytes: number, data: Uint8Array): void;
  /** Make written data durable. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** Check a device name and size (shared by the backends' constructors). */
export function checkBlockDeviceGeometry(name: string, sizeBytes: number): void {
  if (name.length === 0 || utf8ByteLength(name) > 255) throw new RangeError(`bad block device name '${name}'`);
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % SECTOR_SIZE !== 0) {
    throw new RangeError(`block device ${name}: size ${sizeBytes} is not a positive multiple of ${SECTOR_SIZE}`);
  }
}

/**
 * What every backend shares: the dirty bitmap, an optional shared dirty log
 * (bits set by a writer in another thread), range checks. A backend supplies
 * the byte I/O.
 */
export abstract class BlockDeviceBase implements BlockDevice {
  readonly dirty: DirtyBitmap;
  protected closed = false;
  /** Chunk bits set by a writer outside this object (a vCPU thread), same word layout as `dirty`. */
  private sharedLog: Int32Array | undefined;

  protected constructor(
    readonly name: string,
    readonly sizeBytes: number,
    readonly readOnly: boolean,
  ) {
    checkBlockDeviceGeometry(name, sizeBytes);
    this.dirty = new DirtyBitmap(Math.ceil(sizeBytes / CHUNK_SIZE));
  }

  get totalSectors(): number {
    return this.sizeBytes / SECTOR_SIZE;
  }

  get chunkCount(): number {
    return this.dirty.sizeBits;
  }

  /** Bytes a shared dirty log needs: one bit per chunk, in whole 32-bit words. */
  get sharedDirtyLogBytes(): number {
    return this.dirty.words.length * 4;
  }

  /** The attached shared dirty log, if any. */
  get sharedDirtyLog(): SharedArrayBuffer | undefined {
    return this.sharedLog?.buffer as SharedArrayBuffer | undefined;
  }

  /**
   * Attach a shared chunk bitmap (a new one when `log` is omitted) that an
   * external writer sets: bit c of 32-bit word c >> 5 (LSB first, as `dirty`),
   * with Atomics.or *after* its write to the image returned. collectDirty()
   * moves the bits into `dirty`. Bits of a previously attached log are
   * collected first, so none is lost by the switch. Returns the log.
   */
  attachSharedDirtyLog(log: SharedArrayBuffer = new SharedArrayBuffer(this.sharedDirtyLogBytes)): SharedArrayBuffer {
    if (!(log instanceof SharedArrayBuffer)) throw new TypeError(`block device ${this.name}: the shared dirty log must be a SharedArrayBuffer`);
    if (log.byteLength < this.sharedDirtyLogBytes) {
      throw new RangeError(`block device ${this.name}: shared dirty log of ${log.byteLength} bytes, ${this.chunkCount} chunks need ${this.sharedDirtyLogBytes}`);
    }
    if (this.sharedLog && this.sharedLog.buffer !== log) this.collectDirty();
    this.sharedLog = new Int32Array(log, 0, this.dirty.words.length);
    return log;
  }

  /**
   * Move the shared log's bits into `dirty` (each word exchanged with 0) and
   * return how many chunks became newly dirty. Call before looking at
   * `dirty`. Lossless by the same argument as the test machine's RAM log: the
   * writer sets a bit after its data landed, and the caller reads a chunk
   * after this exchange, so a write is either in what the caller reads or
   * its bit is set again for the next collect.
   */
  collectDirty(): number {
    const log = this.sharedLog;
    if (!log) return 0;
    let words: Uint32Array | undefined;
    for (let w = 0; w < log.length; w++) {
      // A plain atomic load first keeps us off the writer's cache line when the word is clean.
      if (Atomics.load(log, w) === 0) continue;
      words ??= new Uint32Array(log.length);
      words[w] = Atomics.exchange(log, w, 0) >>> 0;
    }
    return words ? this.dirty.merge(words) : 0;
  }

  protected checkRange(sector: number, count: number): void {
    if (!Number.isSafeInteger(sector) || !Number.isSafeInteger(count) || sector < 0 || count < 0 || sector + count > this.totalSectors) {
      throw new RangeError(`block device ${this.name}: sectors ${sector}+${count} outside 0..${this.totalSectors}`);
    }
    if (this.closed) throw new Error(`block device ${this.name} is closed`);
  }

  protected checkByteRange(offsetBytes: number, length: number): void {
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || offsetBytes + length > this.sizeBytes) {
      throw new RangeError(`block device ${this.name}: bytes ${offsetBytes}+${length} outside 0..${this.sizeBytes}`);
    }
    if (this.closed) throw new Error(`block device ${this.name} is closed`);
  }

  protected checkWritable(): void {
    if (this.readOnly) throw new Error(`block device ${this.name} is read-only`);
  }

  /** Read `count` sectors from `sector` into `into` (default: a new buffer). */
  async readSectors(sector: number, count: number, into?: Uint8Array): Promise<Uint8Array> {
    this.checkRange(sector, count);
    const length = count * SECTOR_SIZE;
    const target = into ?? new Uint8Array(length);
    if (target.length < length) throw new RangeError('readSectors: buffer too small');
    await this.readAt(sector * SECTOR_SIZE, target.subarray(0, length));
    return target;
  }

  /** Write whole sectors (data.length a multiple of 512) at `sector`; marks the chunks dirty. */
  async writeSectors(sector: number, data: Uint8Array): Promise<void> {
    if (data.length % SECTOR_SIZE !== 0) throw new RangeError(`writeSectors: ${data.length} bytes is not a whole number of sectors`);
    const count = data.length / SECTOR_SIZE;
    this.checkRange(sector, count);
    this.checkWritable();
    await this.writeAt(sector * SECTOR_SIZE, data);
    // Marked after the data landed: a reader that cleared the bit before reading re-sends it.
    this.markDirty(sector, count);
  }

  /** Write zeros to `count` sectors (in 1 MiB pieces). */
  async writeZeroes(sector: number, count: number): Promise<void> {
    this.checkRange(sector, count);
    const zeros = new Uint8Array(Math.min(count, SECTORS_PER_CHUNK) * SECTOR_SIZE);
    for (let s = sector; s < sector + count; s += SECTORS_PER_CHUNK) {
      const n = Math.min(SECTORS_PER_CHUNK, sector + count - s);
      await this.writeSectors(s, n * SECTOR_SIZE === zeros.length ? zeros : zeros.subarray(0, n * SECTOR_SIZE));
    }
  }

  /** Mark the chunks covering `count` sectors from `sector` dirty. */
  markDirty(sector: number, count: number): void {
    if (count <= 0) return;
    this.markDirtyBytes(sector * SECTOR_SIZE, count * SECTOR_SIZE);
  }

  /** Mark the chunks covering `length` bytes from `offsetBytes` dirty. */
  markDirtyBytes(offsetBytes: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offsetBytes / CHUNK_SIZE);
    const last = Math.floor((offsetBytes + length - 1) / CHUNK_SIZE);
    this.dirty.setRange(first, last - first + 1);
  }

  /** Sectors in chunk `chunk` (the last chunk may be short). */
  chunkSectors(chunk: number): number {
    return Math.min(SECTORS_PER_CHUNK, this.totalSectors - chunk * SECTORS_PER_CHUNK);
  }

  /** Fill `into` from the device at `offsetBytes` (range checked by the caller). */
  protected abstract readAt(offsetBytes: number, into: Uint8Array): Promise<void>;
  /** Write `data` at `offsetBytes` (range and writability checked by the caller; the caller marks dirty). */
  protected abstract writeAt(offsetBytes: number, data: Uint8Array): Promise<void>;
  abstract flush(): Promise<void>;
  abstract close(): Promise<void>;
}
