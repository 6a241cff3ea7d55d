/**
 * The `block` save-state entry (QEMU 7.2 migration/block.c, version 1).
 *
 * Source: setup clears each device's dirty bitmap (tracking starts) and writes
 * EOS; iterations run the bulk phase (every chunk in order, the chunk's dirty
 * bit cleared before it is read, PROGRESS when the percentage changes), then
 * the dirty phase (chunks written since they were sent, from a cursor);
 * completion (guest stopped) flushes, sends every dirty chunk, PROGRESS 100
 * and EOS. Reads are synchronous per chunk (no parallel AIO), so there is
 * never anything in flight between calls. Zero chunks go as ZERO_BLOCK when
 * `zeroBlocks` is on (QEMU's `zero-blocks` capability).
 *
 * Destination: every DEVICE_BLOCK is written into the device of that name.
 */
import type { LoadSectionContext, SaveVMHandlers } from '../savevm/handlers.js';
import type { StreamReader, StreamWriter } from '../wire/index.js';
import type { BlockDevice } from './block-device.js';
import { CHUNK_SIZE, SECTOR_SIZE, SECTORS_PER_CHUNK } from './geometry.js';
import {
  BLK_MIG_BLOCK_SIZE,
  BlockStreamError,
  readBlockSection,
  writeDeviceBlock,
  writeEos,
  writeProgress,
  type BlockRecord,
} from './block-records.js';

const DRAIN_THRESHOLD_BYTES = 4 * CHUNK_SIZE;

export interface BlockSaveOptions {
  /** Send all-zero chunks as ZERO_BLOCK without data (default true). */
  zeroBlocks?: boolean;
  /** Called with each PROGRESS percentage written. */
  onProgress?(percent: number): void;
  /** Longest a single iterate call runs before yielding to the loop (QEMU's MAX_WAIT for RAM: 50 ms). */
  maxIterateMs?: number;
}

export interface BlockSaveStats {
  /** Chunks sent by the bulk phase. */
  bulkChunks: number;
  /** Chunks re-sent by the dirty phase and completion. */
  dirtyChunks: number;
  /** Of all chunks sent, those sent as ZERO_BLOCK. */
  zeroChunks: number;
  /** PROGRESS values written, in order. */
  progress: number[];
}

interface DeviceState {
  device: BlockDevice;
  /** Next chunk of the bulk phase. */
  bulkCursor: number;
  /** Next chunk the dirty phase looks at. */
  dirtyCursor: number;
}

function isZero(buf: Uint8Array): boolean {
  const words = new BigUint64Array(buf.buffer, buf.byteOffset, buf.length >>> 3);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  for (let i = words.length << 3; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

export function isZeroChunk(buf: Uint8Array): boolean {
  return buf.byteOffset % 8 === 0 ? isZero(buf) : buf.every((b) => b === 0);
}

export class BlockSaveHandler implements SaveVMHandlers {
  private readonly states: DeviceState[];
  private readonly zeroBlocks: boolean;
  private readonly buffer = new Uint8Array(BLK_MIG_BLOCK_SIZE);
  private bulkCompleted = false;
  private prevProgress = -1;
  private backgroundFlush: Promise<void> | undefined;
  private readonly totalSectors: number;
  readonly stats: BlockSaveStats = { bulkChunks: 0, dirtyChunks: 0, zeroChunks: 0, progress: [] };

  constructor(devices: BlockDevice[], private readonly options: BlockSaveOptions = {}) {
    const names = new Set<string>();
    for (const d of devices) {
      if (names.has(d.name)) throw new Error(`block migration: duplicate device name '${d.name}'`);
      names.add(d.name);
    }
    this.states = devices.filter((d) => !d.readOnly).map((device) => ({ device, bulkCursor: 0, dirtyCursor: 0 }));
    this.zeroBlocks = options.zeroBlocks ?? true;
    this.totalSectors = this.states.reduce((s, d) => s + d.device.totalSectors, 0);
  }

  get devices(): BlockDevice[] {
    return this.states.map((s) => s.device);
  }

  get isBulkCompleted(): boolean {
    return this.bulkCompleted;
  }

  /**
   * Bytes sent so far by the bulk phase: QEMU's disk.transferred, which 7.2
   * computes the same way (blk_mig_bytes_transferred sums each device's
   * completed_sectors), so dirty chunks sent again are not counted.
   */
  get bytesTransferred(): number {
    let sectors = 0;
    for (const s of this.states) sectors += Math.min(s.bulkCursor * SECTORS_PER_CHUNK, s.device.totalSectors);
    return sectors * SECTOR_SIZE;
  }

  get bytesTotal(): number {
    return this.totalSectors * SECTOR_SIZE;
  }

  get bytesRemaining(): number {
    return this.bytesTotal - this.bytesTransferred;
  }

  isActive(): boolean {
    return this.states.length > 0;
  }

  async saveSetup(out: StreamWriter): Promise<void> {
    this.collectDirty(); // writes from before the migration: the bulk phase copies them anyway
    for (const s of this.states) {
      s.device.dirty.clearAll();
      s.bulkCursor = 0;
      s.dirtyCursor = 0;
    }
    this.bulkCompleted = false;
    this.backgroundFlush = undefined;
    // Written back while the guest runs, the images have little left to flush when
    // it stops (that flush is part of the downtime).
    this.startBackgroundFlush();
    this.prevProgress = -1;
    writeEos(out);
  }

  private dirtyChunkCount(): number {
    let n = 0;
    for (const s of this.states) n += s.device.dirty.count;
    return n;
  }

  /** Pull writes made outside the device object (a vCPU thread's shared log) into the dirty bitmaps. */
  private collectDirty(): void {
    for (const s of this.states) s.device.collectDirty();
  }

  async statePending(_exact: boolean): Promise<number> {
    this.collectDirty();
    let pending = this.dirtyChunkCount() * CHUNK_SIZE;
    if (!this.bulkCompleted) {
      for (const s of this.states) pending += Math.max(0, s.device.chunkCount - s.bulkCursor) * CHUNK_SIZE;
      pending = Math.max(pending, CHUNK_SIZE);
    }
    return pending;
  }

  private progress(out: StreamWriter, percent: number): void {
    if (percent === this.prevProgress) return;
    this.prevProgress = percent;
    writeProgress(out, percent);
    this.stats.progress.push(percent);
    this.options.onProgress?.(percent);
  }

  private bulkPercent(): number {
    if (this.totalSectors === 0) return 100;
    const done = this.bytesTransferred / SECTOR_SIZE;
    return Math.floor((done * 100) / this.totalSectors);
  }

  /** Read chunk `chunk` (dirty bit cleared first) and send it. */
  private async sendChunk(out: StreamWriter, s: DeviceState, chunk: number): Promise<void> {
    const { device } = s;
    device.dirty.clear(chunk);
    const sectors = device.chunkSectors(chunk);
    const buf = this.buffer;
    await device.readSectors(chunk * SECTORS_PER_CHUNK, sectors, buf);
    if (sectors < SECTORS_PER_CHUNK) buf.fill(0, sectors * SECTOR_SIZE);
    const zero = this.zeroBlocks && isZeroChunk(buf);
    if (zero) this.stats.zeroChunks++;
    writeDeviceBlock(out, device.name, chunk * SECTORS_PER_CHUNK, zero ? null : buf);
    if (out.pendingBytes >= DRAIN_THRESHOLD_BYTES) await out.drain();
  }

  /** One bulk step: the next chunk of the first device not done. False when the bulk phase has ended. */
  private async bulkStep(out: StreamWriter): Promise<boolean> {
    const s = this.states.find((st) => st.bulkCursor < st.device.chunkCount);
    if (!s) {
      this.bulkCompleted = true;
      this.progress(out, 100);
      return false;
    }
    this.progress(out, this.bulkPercent());
    await this.sendChunk(out, s, s.bulkCursor);
    s.bulkCursor++;
    this.stats.bulkChunks++;
    if (this.states.every((st) => st.bulkCursor >= st.device.chunkCount)) {
      this.bulkCompleted = true;
      this.progress(out, 100);
      this.startBackgroundFlush();
    }
    return true;
  }

  /** Write back what the guest wrote meanwhile while it still runs (completion awaits it, then flushes the rest). */
  private startBackgroundFlush(): void {
    const flushAll = (): Promise<void> =>
      Promise.all(this.states.map((st) => st.device.flush())).then(
        () => {},
        () => {}, // completion's own flush reports a failure
      );
    this.backgroundFlush = this.backgroundFlush ? this.backgroundFlush.then(flushAll) : flushAll();
  }

  /** One dirty chunk from the cursors; false when none is dirty. */
  private async dirtyStep(out: StreamWriter): Promise<boolean> {
    for (let pass = 0; pass < 2; pass++) {
      for (const s of this.states) {
        const chunk = s.device.dirty.nextSetBit(s.dirtyCursor);
        if (chunk < s.device.chunkCount) {
          await this.sendChunk(out, s, chunk);
          s.dirtyCursor = chunk + 1;
          this.stats.dirtyChunks++;
          return true;
        }
        s.dirtyCursor = s.device.chunkCount;
      }
      // Every cursor reached its end: start over (QEMU resets the cursors each iteration).
      for (const s of this.states) s.dirtyCursor = 0;
    }
    return false;
  }

  /**
   * One PART body: bulk chunks until the bulk phase ends, then dirty chunks,
   * while the rate limit and the time bound allow. Returns false during the
   * bulk phase, so the round ends here and RAM waits (QEMU skips RAM while the
   * block bulk phase runs: RAM sent now would mostly be dirty again by its end);
   * afterwards true, so RAM gets its turn every round as in QEMU.
   */
  async saveIterate(out: StreamWriter, shouldStop: () => boolean): Promise<boolean> {
    for (const s of this.states) s.dirtyCursor = 0;
    this.collectDirty();
    const deadline = performance.now() + (this.options.maxIterateMs ?? 50);
    while (!shouldStop() && performance.now() < deadline) {
      if (!this.bulkCompleted) {
        await this.bulkStep(out);
        continue;
      }
      if (!(await this.dirtyStep(out))) break;
    }
    writeEos(out);
    return this.bulkCompleted;
  }

  async loadState(_input: StreamReader, context: LoadSectionContext): Promise<void> {
    throw new BlockStreamError('bad-block-record', 'BlockSaveHandler cannot load; use BlockLoadHandler', context.offset);
  }

  async saveCompletePrecopy(out: StreamWriter): Promise<void> {
    await this.backgroundFlush;
    for (const s of this.states) await s.device.flush();
    this.collectDirty(); // the guest is stopped: this is the last of its writes
    // Whatever the bulk phase did not reach is sent now (the guest is stopped).
    while (!this.bulkCompleted) await this.bulkStep(out);
    for (const s of this.states) s.dirtyCursor = 0;
    while (await this.dirtyStep(out)) {
      /* until clean */
    }
    this.prevProgress = -1;
    this.progress(out, 100);
    writeEos(out);
  }
}

export interface BlockLoadOptions {
  /** Called with each PROGRESS percentage received. */
  onProgress?(percent: number): void;
}

export interface BlockLoadStats {
  /** Chunks received, per device. */
  chunks: Map<string, number>;
  zeroChunks: number;
  progress: number[];
}

/** A destination image is written back in the background after this much new data, so the flush before the guest resumes is short. */
const BACKGROUND_FLUSH_BYTES = 128 * 1024 * 1024;

export class BlockLoadHandler implements SaveVMHandlers {
  private readonly devices: Map<string, BlockDevice>;
  private readonly scratch = new Uint8Array(BLK_MIG_BLOCK_SIZE);
  private readonly unflushedBytes = new Map<BlockDevice, number>();
  private readonly flushing = new Map<BlockDevice, Promise<void>>();
  private flushFailure: Error | undefined;
  readonly stats: BlockLoadStats = { chunks: new Map(), zeroChunks: 0, progress: [] };

  constructor(devices: BlockDevice[] | Map<string, BlockDevice>, private readonly options: BlockLoadOptions = {}) {
    this.devices = devices instanceof Map ? devices : new Map(devices.map((d) => [d.name, d]));
  }

  async loadState(input: StreamReader, _context: LoadSectionContext): Promise<void> {
    await readBlockSection(input, (record) => this.apply(record));
  }

  private async apply(record: BlockRecord): Promise<void> {
    if (record.type === 'progress') {
      this.stats.progress.push(record.percent);
      this.options.onProgress?.(record.percent);
      // The bulk phase is over: write it back while RAM still arrives.
      if (record.percent === 100) for (const d of this.devices.values()) this.startFlush(d);
      return;
    }
    if (record.type !== 'device-block') return;
    const device = this.devices.get(record.device);
    if (!device) throw new BlockStreamError('unknown-device', `unknown block device '${record.device}'`, record.offset);
    if (device.readOnly) throw new BlockStreamError('io-error', `block device '${record.device}' is read-only`, record.offset);
    const total = device.totalSectors;
    if (record.sector >= total) {
      throw new BlockStreamError('bad-sector', `block device '${record.device}': sector ${record.sector} beyond its ${total} sectors`, record.offset);
    }
    const sectors = Math.min(SECTORS_PER_CHUNK, total - record.sector);
    const bytes = sectors * SECTOR_SIZE;
    this.stats.chunks.set(device.name, (this.stats.chunks.get(device.name) ?? 0) + 1);
    try {
      if (record.zero) {
        this.stats.zeroChunks++;
        // Keep sparse images sparse: skip the write when the range already reads as zeros.
        const current = await device.readSectors(record.sector, sectors, this.scratch);
        if (!isZeroChunk(current.subarray(0, bytes))) await device.writeZeroes(record.sector, sectors);
      } else {
        await device.writeSectors(record.sector, record.data!.subarray(0, bytes));
        this.wrote(device, bytes);
      }
    } catch (err) {
      throw new BlockStreamError('io-error', `block device '${record.device}': write failed: ${(err as Error).message}`, record.offset, { cause: err });
    }
  }

  private wrote(device: BlockDevice, bytes: number): void {
    const unflushed = (this.unflushedBytes.get(device) ?? 0) + bytes;
    this.unflushedBytes.set(device, unflushed);
    if (unflushed >= BACKGROUND_FLUSH_BYTES) this.startFlush(device);
  }

  /** Write the device back in the background, unless that is already going on. */
  private startFlush(device: BlockDevice): void {
    if (this.flushing.has(device) || device.readOnly) return;
    this.unflushedBytes.set(device, 0);
    const flushed = device.flush().then(
      () => {},
      (err: Error) => {
        this.flushFailure ??= err;
      },
    );
    this.flushing.set(device, flushed.finally(() => this.flushing.delete(device)));
  }

  /** Flush every destination disk (before the guest resumes). */
  async flush(): Promise<void> {
    await Promise.all(this.flushing.values());
    if (this.flushFailure) throw new BlockStreamError('io-error', `block device flush failed: ${this.flushFailure.message}`, 0, { cause: this.flushFailure });
    for (const d of this.devices.values()) await d.flush();
  }

  async loadCleanup(): Promise<void> {
    await this.flush();
  }
}
