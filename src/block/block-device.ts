/**
 * A disk backed by a raw image file: sector (512 B) reads and writes, a dirty
 * bitmap at 1 MiB chunk granularity (QEMU's block-migration dirty bitmap), and
 * flush. Created images are sparse (the file is sized with truncate).
 */
import { constants as fsConstants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { DirtyBitmap } from '../ram/index.js';
import { SECTOR_SIZE, CHUNK_SIZE, SECTORS_PER_CHUNK } from './geometry.js';
// Sector and chunk sizes live in geometry.ts (Node-free, for the browser core); re-exported for existing importers.
export { CHUNK_SIZE, formatSize, SECTOR_BITS, SECTOR_SIZE, SECTORS_PER_CHUNK } from './geometry.js';

export interface BlockDeviceOpenOptions {
  /** Create the file when missing. */
  create?: boolean;
  /** Size in bytes (multiple of 512): the file is truncated or extended (sparse) to it. */
  size?: number;
  readOnly?: boolean;
}

export class BlockDevice {
  /** One bit per 1 MiB chunk, set by every write (tracking is always on; consumers clear it). */
  readonly dirty: DirtyBitmap;
  private closed = false;
  /** Chunk bits set by a writer outside this object (a vCPU thread), same word layout as `dirty`. */
  private sharedLog: Int32Array | undefined;

  private constructor(
    readonly name: string,
    readonly path: string,
    private readonly handle: FileHandle,
    readonly sizeBytes: number,
    readonly readOnly: boolean,
  ) {
    this.dirty = new DirtyBitmap(Math.ceil(sizeBytes / CHUNK_SIZE));
  }

  /** Open (or create) the raw image at `path` as device `name`. */
  static async open(name: string, path: string, options: BlockDeviceOpenOptions = {}): Promise<BlockDevice> {
    if (name.length === 0 || Buffer.byteLength(name) > 255) throw new RangeError(`bad block device name '${name}'`);
    const { size } = options;
    if (size !== undefined && (!Number.isSafeInteger(size) || size <= 0 || size % SECTOR_SIZE !== 0)) {
      throw new RangeError(`block device ${name}: size ${size} is not a positive multiple of ${SECTOR_SIZE}`);
    }
    const readOnly = options.readOnly ?? false;
    let flags = readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR;
    if (options.create) {
      if (readOnly) throw new RangeError(`block device ${name}: cannot create a read-only image`);
      flags |= fsConstants.O_CREAT;
    }
    const handle = await open(path, flags, 0o644);
    try {
      if (size !== undefined && !readOnly) {
        const current = (await handle.stat()).size;
        if (current !== size) await handle.truncate(size);
      }
      const actual = (await handle.stat()).size;
      if (actual === 0 || actual % SECTOR_SIZE !== 0) {
        throw new RangeError(`block device ${name}: image ${path} has size ${actual}, not a positive multiple of ${SECTOR_SIZE}`);
      }
      if (size !== undefined && actual !== size) {
        throw new RangeError(`block device ${name}: image ${path} has size ${actual}, expected ${size}`);
      }
      return new BlockDevice(name, path, handle, actual, readOnly);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  get totalSectors(): number {
    return this.sizeBytes / SECTOR_SIZE;
  }

  get chunkCount(): number {
    return this.dirty.sizeBits;
  }

  /**
   * The image's file descriptor, for a writer in another thread (fs.writeSync):
   * descriptors are per process. Valid until close().
   */
  get fd(): number {
    return this.handle.fd;
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

  private checkRange(sector: number, count: number): void {
    if (!Number.isSafeInteger(sector) || !Number.isSafeInteger(count) || sector < 0 || count < 0 || sector + count > this.totalSectors) {
      throw new RangeError(`block device ${this.name}: sectors ${sector}+${count} outside 0..${this.totalSectors}`);
    }
    if (this.closed) throw new Error(`block device ${this.name} is closed`);
  }

  /** Read `count` sectors from `sector` into `into` (default: a new buffer). */
  async readSectors(sector: number, count: number, into?: Uint8Array): Promise<Uint8Array> {
    this.checkRange(sector, count);
    const length = count * SECTOR_SIZE;
    const target = into ?? new Uint8Array(length);
    if (target.length < length) throw new RangeError('readSectors: buffer too small');
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(target, done, length - done, sector * SECTOR_SIZE + done);
      if (bytesRead === 0) {
        target.fill(0, done, length); // past EOF (a file shrunk behind our back): zeros
        break;
      }
      done += bytesRead;
    }
    return target;
  }

  /** Write whole sectors (data.length a multiple of 512) at `sector`; marks the chunks dirty. */
  async writeSectors(sector: number, data: Uint8Array): Promise<void> {
    if (data.length % SECTOR_SIZE !== 0) throw new RangeError(`writeSectors: ${data.length} bytes is not a whole number of sectors`);
    const count = data.length / SECTOR_SIZE;
    this.checkRange(sector, count);
    if (this.readOnly) throw new Error(`block device ${this.name} is read-only`);
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, sector * SECTOR_SIZE + done);
      done += bytesWritten;
    }
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
    const first = Math.floor(sector / SECTORS_PER_CHUNK);
    const last = Math.floor((sector + count - 1) / SECTORS_PER_CHUNK);
    this.dirty.setRange(first, last - first + 1);
  }

  /** Sectors in chunk `chunk` (the last chunk may be short). */
  chunkSectors(chunk: number): number {
    return Math.min(SECTORS_PER_CHUNK, this.totalSectors - chunk * SECTORS_PER_CHUNK);
  }

  /** Make written data durable. */
  async flush(): Promise<void> {
    if (!this.readOnly) await this.handle.datasync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}
