/**
 * The built-in test machine (`--machine test`): RAM in a SharedArrayBuffer, a
 * vCPU in a worker thread running QEMU's migration-test workload
 * (test-machine-worker.ts), an exact dirty log, a pause at page boundaries,
 * CPU and serial state as VMState sections, serial output as a stream.
 *
 * Optionally a disk (a BlockDevice the caller opened) with a disk workload in
 * the same vCPU: 4096-byte blocks whose generation the guest records in a
 * table at the top of its RAM, so checkDisk() can tell after a migration
 * whether every block holds what the guest last wrote.
 *
 * Postcopy (`postcopy`): the vCPU checks the engine's present bitmap before
 * each RAM access and waits for missing pages (see test-machine-worker.ts).
 */
import { Readable } from 'node:stream';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { CHUNK_SIZE, formatSize, SECTOR_SIZE, type BlockDevice } from '../block/block-device.js';
import { allocateSharedRam } from './guest-ram.js';
import type { FileBlockDevice } from '../block/file-block-device.js';
import { DenseRamBlock, type RamBlock } from '../ram/index.js';
import type { SaveStateRegistry } from '../savevm/index.js';
import { defineVmsd, field } from '../vmstate/index.js';
import type { DirtyLogSink, Machine, PostcopyGuestAccess } from './machine.js';
import { checkMemory, ramSha256, type MemoryCheckResult } from './memory-check.js';
import { DISK_BLOCK_SIZE_BYTES, verifyDiskBlock } from './disk-workload.js';
import {
  CTRL_WORDS,
  Ctrl,
  PAGE_SIZE_BYTES,
  Pattern,
  VcpuState,
  WORKER_KIND,
  type PostcopyArmMessage,
  type VcpuFaultMessage,
  type VcpuWorkerData,
} from './test-machine-worker.js';

export const TEST_MACHINE_NAME = 'livemig-test';
export const TEST_RAM_BLOCK = 'pc.ram';
const MiB = 1024 * 1024;
const TWO_POW_32 = 4294967296;

/** A counter the vCPU publishes as two u32 words: hi, lo, hi again, retried if the low word wrapped between the reads. */
function loadU64(c: Int32Array, hiIndex: number, loIndex: number): number {
  for (;;) {
    const hi = Atomics.load(c, hiIndex) >>> 0;
    const lo = Atomics.load(c, loIndex) >>> 0;
    if (hi === Atomics.load(c, hiIndex) >>> 0) return hi * TWO_POW_32 + lo;
  }
}

export type TestPattern = 'sequential' | 'random';

export interface TestMachineOptions {
  /** Guest RAM, a multiple of 4096 (default 128 MiB). */
  ramSizeBytes?: number;
  /** First page of the workload (default 1 MiB, as QEMU's 0x100000). */
  rangeStartBytes?: number;
  /** End of the workload, exclusive (default min(RAM, 100 MiB), as QEMU's 0x6400000). */
  rangeEndBytes?: number;
  /** `sequential` as QEMU's guest (the memory check applies), or `random` pages from a seeded PRNG. */
  pattern?: TestPattern;
  /** PRNG seed for the random pattern (default 1). */
  seed?: number;
  /** Cap on pages written per second, 0 = flat out (default 0). */
  dirtyRatePagesPerSecond?: number;
  /** Write `B` to the serial port every this many passes, 0 = never (default 16; QEMU's guest uses 64). */
  serialEveryPasses?: number;
  /** Start paused with zeroed RAM and wait for state to be loaded; resume() then continues from it. */
  incoming?: boolean;
  /** Do not start the vCPU (a non-incoming machine otherwise runs at once). */
  startPaused?: boolean;
  /**
   * A disk (opened by the caller, writable, at least one 4096-byte block; close
   * it only after destroy()). Its generation table (4 bytes per block, whole
   * pages) takes the top of RAM, which the RAM workload's range must not
   * reach: with a disk, the default range end is also capped at the table.
   */
  disk?: FileBlockDevice;
  /** Disk blocks written per second; 0 = the disk workload is off (default 0). */
  diskRateBlocksPerSecond?: number;
  /** Which block comes next: `sequential` through the disk, or `random` from a PRNG seeded with `seed` (default random). */
  diskPattern?: TestPattern;
}

/** The vCPU's registers (exact while it is stopped). */
export interface TestCpuState {
  passCount: number;
  /** Index of the next page to write within the range (sequential), or of writes done in this pass (random). */
  positionPages: number;
  pattern: TestPattern;
  prngState: number;
  rangeStartBytes: number;
  rangeEndBytes: number;
  serialEveryPasses: number;
  pagesWritten: number;
  /** The boot code ran (it wrote `A`); a migrated guest does not boot again. */
  booted: boolean;
  /** The byte value written last. */
  lastValue: number;
}

export interface TestMachineStats {
  /** Passes over the range so far (u32, wraps). Up to one 64-page chunk behind while running, exact when paused. */
  passes: number;
  pagesWritten: number;
  /** Disk blocks written (0 without a disk). */
  diskBlocksWritten: number;
}

/** The disk workload's registers and layout (exact while the vCPU is stopped). */
export interface TestDiskState {
  diskSizeBytes: number;
  blockSizeBytes: number;
  blockCount: number;
  /** Guest-physical address of the generation table (little-endian u32 per block). */
  genTableAddress: number;
  pattern: TestPattern;
  /** Next block (sequential pattern). */
  cursorBlocks: number;
  prngState: number;
  blocksWritten: number;
}

export interface DiskCheckResult {
  /** Blocks with a recorded generation (> 0), each read and verified. */
  blocksChecked: number;
  /** Blocks that failed. */
  badBlocks: number;
  /** The first few failures, each naming the block and what was wrong. */
  errors: string[];
  ok: boolean;
}

/** Where the disk workload keeps its generation table: the top of RAM, in whole pages. */
export function diskGenTableAddress(ramSizeBytes: number, diskSizeBytes: number): number {
  const blocks = Math.floor(diskSizeBytes / DISK_BLOCK_SIZE_BYTES);
  return ramSizeBytes - Math.ceil((blocks * 4) / PAGE_SIZE_BYTES) * PAGE_SIZE_BYTES;
}

/** The section bodies, named as on the wire; hooks move them between shared memory and these objects. */
interface CpuSection {
  readonly machine: TestMachine;
  pass_count: number;
  position: number;
  pattern: number;
  prng_state: number;
  range_start: bigint;
  range_end: bigint;
  serial_every_passes: number;
  pages_written: bigint;
  booted: boolean;
  last_value: number;
}

interface DiskSection {
  readonly machine: TestMachine;
  disk_size: bigint;
  block_size: number;
  gen_table_address: bigint;
  pattern: number;
  cursor: number;
  prng_state: number;
  blocks_written: bigint;
}

interface SerialSection {
  readonly machine: TestMachine;
  tx_bytes: bigint;
  lcr: number;
  mcr: number;
  scr: number;
  thr: number;
}

function requireStopped(machine: TestMachine, what: string): Int32Array {
  if (!machine.isStopped) throw new Error(`${what}: the vCPU must be paused first`);
  return machine.controlBlock;
}

/** CPU state: QEMU saves CPUs while stopped, so saving a running vCPU is an error, not a stale snapshot. */
export const testCpuVmsd = defineVmsd<CpuSection>({
  name: 'test-cpu',
  version: 1,
  minimumVersion: 1,
  fields: [
    field.uint32('pass_count'),
    field.uint32('position'),
    field.uint8('pattern'),
    field.uint32('prng_state'),
    field.uint64('range_start'),
    field.uint64('range_end'),
    field.uint32('serial_every_passes'),
    field.uint64('pages_written'),
    field.bool('booted'),
    field.uint8('last_value'),
  ],
  preSave(s) {
    const c = requireStopped(s.machine, 'test-cpu save');
    s.pass_count = c[Ctrl.PassCount]! >>> 0;
    s.position = c[Ctrl.PositionPages]! >>> 0;
    s.pattern = c[Ctrl.Pattern]!;
    s.prng_state = c[Ctrl.PrngState]! >>> 0;
    s.range_start = BigInt(c[Ctrl.RangeStartPage]! >>> 0) * BigInt(PAGE_SIZE_BYTES);
    s.range_end = BigInt(c[Ctrl.RangeEndPage]! >>> 0) * BigInt(PAGE_SIZE_BYTES);
    s.serial_every_passes = c[Ctrl.SerialEveryPasses]! >>> 0;
    s.pages_written = (BigInt(c[Ctrl.PagesWrittenHi]! >>> 0) << 32n) | BigInt(c[Ctrl.PagesWrittenLo]! >>> 0);
    s.booted = c[Ctrl.Booted] !== 0;
    s.last_value = c[Ctrl.LastValue]! & 0xff;
  },
  postLoad(s) {
    const c = requireStopped(s.machine, 'test-cpu load');
    const ramBytes = BigInt(s.machine.ramSizeBytes);
    const page = BigInt(PAGE_SIZE_BYTES);
    // The range is the guest's code, so it comes from the source; it must still fit this RAM.
    if (s.range_start % page !== 0n || s.range_end % page !== 0n || s.range_start >= s.range_end || s.range_end > ramBytes) {
      throw new RangeError(`range 0x${s.range_start.toString(16)}..0x${s.range_end.toString(16)} is not a page-aligned range inside ${ramBytes} bytes of RAM`);
    }
    const genTable = s.machine.diskLayout;
    if (genTable && s.range_end > BigInt(genTable.genTableAddress)) {
      // Else the RAM workload would scribble over the disk's generation records.
      throw new RangeError(
        `range 0x${s.range_start.toString(16)}..0x${s.range_end.toString(16)} overlaps this machine's disk generation table at 0x${genTable.genTableAddress.toString(16)}`,
      );
    }
    const rangePages = Number((s.range_end - s.range_start) / page);
    if (s.position >= rangePages) throw new RangeError(`position ${s.position} is outside the ${rangePages}-page range`);
    if (s.pattern !== Pattern.Sequential && s.pattern !== Pattern.Random) throw new RangeError(`unknown pattern ${s.pattern}`);
    if (s.pages_written >= 1n << 53n) throw new RangeError(`pages_written ${s.pages_written} is beyond 2^53`);
    const pages = Number(s.pages_written);
    c[Ctrl.PassCount] = s.pass_count | 0;
    c[Ctrl.PositionPages] = s.position | 0;
    c[Ctrl.Pattern] = s.pattern;
    c[Ctrl.PrngState] = s.prng_state | 0;
    c[Ctrl.RangeStartPage] = Number(s.range_start / page) | 0;
    c[Ctrl.RangeEndPage] = Number(s.range_end / page) | 0;
    c[Ctrl.SerialEveryPasses] = s.serial_every_passes | 0;
    c[Ctrl.PagesWrittenLo] = pages % TWO_POW_32 | 0;
    c[Ctrl.PagesWrittenHi] = Math.floor(pages / TWO_POW_32) | 0;
    c[Ctrl.Booted] = s.booted ? 1 : 0;
    c[Ctrl.LastValue] = s.last_value;
    Atomics.store(c, Ctrl.StatPasses, s.pass_count | 0);
    Atomics.store(c, Ctrl.StatPagesHi, c[Ctrl.PagesWrittenHi]!);
    Atomics.store(c, Ctrl.StatPagesLo, c[Ctrl.PagesWrittenLo]!);
  },
});

/**
 * The disk workload's registers. Registered only on machines with a disk, so
 * diskless machines' streams are unchanged; a destination without a disk
 * refuses a source's disk as it refuses any device it lacks (loadvm's
 * "unknown savevm section or instance 'test-disk' 0").
 */
export const testDiskVmsd = defineVmsd<DiskSection>({
  name: 'test-disk',
  version: 1,
  minimumVersion: 1,
  fields: [
    field.uint64('disk_size'),
    field.uint32('block_size'),
    field.uint64('gen_table_address'),
    field.uint8('pattern'),
    field.uint32('cursor'),
    field.uint32('prng_state'),
    field.uint64('blocks_written'),
  ],
  preSave(s) {
    const c = requireStopped(s.machine, 'test-disk save');
    const layout = s.machine.diskLayout!;
    s.disk_size = BigInt(layout.diskSizeBytes);
    s.block_size = DISK_BLOCK_SIZE_BYTES;
    s.gen_table_address = BigInt(layout.genTableAddress);
    s.pattern = c[Ctrl.DiskPattern]!;
    s.cursor = c[Ctrl.DiskCursorBlocks]! >>> 0;
    s.prng_state = c[Ctrl.DiskPrngState]! >>> 0;
    s.blocks_written = (BigInt(c[Ctrl.DiskBlocksWrittenHi]! >>> 0) << 32n) | BigInt(c[Ctrl.DiskBlocksWrittenLo]! >>> 0);
  },
  postLoad(s) {
    const c = requireStopped(s.machine, 'test-disk load');
    const layout = s.machine.diskLayout;
    // The blocks and the table come from the source (block migration, RAM): both must land where this guest looks.
    if (!layout) throw new Error(`test-disk: the source has a ${formatSize(s.disk_size)} disk, this machine has none`);
    if (s.disk_size !== BigInt(layout.diskSizeBytes)) {
      throw new Error(`test-disk: the source has a ${formatSize(s.disk_size)} disk, this machine has a ${formatSize(layout.diskSizeBytes)} disk`);
    }
    if (s.block_size !== DISK_BLOCK_SIZE_BYTES) throw new Error(`test-disk: the source writes ${s.block_size}-byte blocks, this machine ${DISK_BLOCK_SIZE_BYTES}-byte ones`);
    if (s.gen_table_address !== BigInt(layout.genTableAddress)) {
      throw new Error(
        `test-disk: the source keeps its block generation table at 0x${s.gen_table_address.toString(16)}, this machine at 0x${layout.genTableAddress.toString(16)} (RAM sizes differ?)`,
      );
    }
    if (s.pattern !== Pattern.Sequential && s.pattern !== Pattern.Random) throw new RangeError(`test-disk: unknown pattern ${s.pattern}`);
    if (s.cursor >= layout.blockCount) throw new RangeError(`test-disk: cursor ${s.cursor} is outside the ${layout.blockCount}-block disk`);
    if (s.blocks_written >= 1n << 53n) throw new RangeError(`test-disk: blocks_written ${s.blocks_written} is beyond 2^53`);
    const blocks = Number(s.blocks_written);
    c[Ctrl.DiskPattern] = s.pattern;
    c[Ctrl.DiskCursorBlocks] = s.cursor | 0;
    c[Ctrl.DiskPrngState] = s.prng_state | 0;
    c[Ctrl.DiskBlocksWrittenLo] = blocks % TWO_POW_32 | 0;
    c[Ctrl.DiskBlocksWrittenHi] = Math.floor(blocks / TWO_POW_32) | 0;
    Atomics.store(c, Ctrl.StatDiskBlocksHi, c[Ctrl.DiskBlocksWrittenHi]!);
    Atomics.store(c, Ctrl.StatDiskBlocksLo, c[Ctrl.DiskBlocksWrittenLo]!);
  },
});

/** A 16550-like COM1, only what the guest touches: transmit count, LCR, MCR, scratch, last byte sent. */
export const testSerialVmsd = defineVmsd<SerialSection>({
  name: 'test-serial',
  version: 1,
  minimumVersion: 1,
  fields: [field.uint64('tx_bytes'), field.uint8('lcr'), field.uint8('mcr'), field.uint8('scr'), field.uint8('thr')],
  preSave(s) {
    const c = requireStopped(s.machine, 'test-serial save');
    s.tx_bytes = (BigInt(c[Ctrl.SerialTxHi]! >>> 0) << 32n) | BigInt(c[Ctrl.SerialTxLo]! >>> 0);
    s.lcr = c[Ctrl.SerialLcr]! & 0xff;
    s.mcr = c[Ctrl.SerialMcr]! & 0xff;
    s.scr = c[Ctrl.SerialScr]! & 0xff;
    s.thr = c[Ctrl.SerialThr]! & 0xff;
  },
  postLoad(s) {
    const c = requireStopped(s.machine, 'test-serial load');
    c[Ctrl.SerialTxLo] = Number(s.tx_bytes & 0xffffffffn) | 0;
    c[Ctrl.SerialTxHi] = Number((s.tx_bytes >> 32n) & 0xffffffffn) | 0;
    c[Ctrl.SerialLcr] = s.lcr;
    c[Ctrl.SerialMcr] = s.mcr;
    c[Ctrl.SerialScr] = s.scr;
    c[Ctrl.SerialThr] = s.thr;
  },
});

/** Atomics.waitAsync is in Node 20 but not in the ES2022 lib typings. */
type WaitAsyncResult = { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
const waitAsync = (Atomics as unknown as { waitAsync(ta: Int32Array, index: number, value: number, timeoutMs?: number): WaitAsyncResult }).waitAsync;

/**
 * How long pause() blocks the event loop waiting for the vCPU before waiting
 * asynchronously: the vCPU answers within one page write unless the OS has
 * descheduled it, and a stop is on the migration's downtime path.
 */
const PAUSE_BLOCK_MS = 2;
/** checkDisk names at most this many bad blocks (and counts them all). */
const MAX_DISK_CHECK_ERRORS = 10;
/** Wait slices, so a dead worker is noticed. */
const WAIT_SLICE_MS = 50;

export class TestMachine implements Machine {
  readonly kind = 'test';
  readonly machineName = TEST_MACHINE_NAME;
  readonly serial: Readable;
  /** Duration of the last pause(), from request to the vCPU's acknowledgement, in ms. */
  lastPauseLatencyMs = 0;

  /** Guest RAM (a view over a SharedArrayBuffer the vCPU writes). */
  private readonly ram: Uint8Array;
  private readonly ctrl: Int32Array;
  private readonly dirty: Int32Array;
  /**
   * Pages the vCPU or load() has written since boot, as far as syncs have
   * collected them from the dirty log (the log's current words hold the rest):
   * every other page is still the zero the SharedArrayBuffer started with.
   */
  private readonly everWritten: Uint32Array;
  /**
   * Someone may have written RAM where the log cannot see it: the machine was
   * an incoming one (the loader writes RAM), or `memory` was handed out.
   * From then on it vouches for no page (pristinePages() is undefined).
   */
  private ramUnaccounted: boolean;
  private readonly block: DenseRamBlock;
  private readonly worker: Worker;
  private failure: Error | undefined;
  private destroyed = false;
  private dirtyLogging = false;
  /** The next sync reports every page (tracking was just started). */
  private dirtyLogFresh = false;
  private readonly cpuSection: CpuSection;
  private readonly serialSection: SerialSection;
  private readonly disk: FileBlockDevice | undefined;
  private readonly diskSection: DiskSection | undefined;
  /** Main's end of the channel arm() hands the present bitmap over on. */
  private readonly postcopyPort: MessagePort;
  /** The armed bitmap (to wake a vCPU waiting on it) and fault callback; undefined while disarmed. */
  private postcopyPresent: Int32Array | undefined;
  private postcopyOnFault: ((idstr: string, page: number) => void) | undefined;
  /** The guest side of postcopy: the vCPU waits for pages the engine has not delivered yet. */
  readonly postcopy: PostcopyGuestAccess = {
    arm: (present, onFault) => this.armPostcopy(present, onFault),
    disarm: () => this.disarmPostcopy(),
    blocktime: () => this.postcopyBlocktime(),
  };
  /** @internal The disk workload's layout (undefined without a disk), for this module's VMState hooks. */
  readonly diskLayout: { readonly diskSizeBytes: number; readonly blockCount: number; readonly genTableAddress: number } | undefined;

  /** Use createTestMachine(). */
  constructor(options: TestMachineOptions = {}) {
    const ramSizeBytes = options.ramSizeBytes ?? 128 * MiB;
    const rangeStartBytes = options.rangeStartBytes ?? MiB;
    const disk = options.disk;
    const diskBlocks = disk ? Math.floor(disk.sizeBytes / DISK_BLOCK_SIZE_BYTES) : 0;
    const genTableAddress = disk ? diskGenTableAddress(ramSizeBytes, disk.sizeBytes) : ramSizeBytes;
    if (disk && genTableAddress <= rangeStartBytes) {
      throw new RangeError(
        `a ${formatSize(disk.sizeBytes)} disk needs ${ramSizeBytes - genTableAddress} bytes at the top of RAM for its generation table: ${ramSizeBytes} bytes of RAM leave no room for the workload range from ${rangeStartBytes}`,
      );
    }
    const rangeEndBytes = options.rangeEndBytes ?? Math.min(ramSizeBytes, 100 * MiB, genTableAddress);
    const serialEveryPasses = options.serialEveryPasses ?? 16;
    const pattern = options.pattern ?? 'sequential';
    checkPositiveMultiple('ramSizeBytes', ramSizeBytes);
    if (ramSizeBytes / PAGE_SIZE_BYTES > 0x7fffffff) throw new RangeError(`ramSizeBytes ${ramSizeBytes} is too large`);
    checkPositiveMultiple('rangeStartBytes', rangeStartBytes, true);
    checkPositiveMultiple('rangeEndBytes', rangeEndBytes);
    if (rangeStartBytes >= rangeEndBytes || rangeEndBytes > ramSizeBytes) {
      throw new RangeError(`range ${rangeStartBytes}..${rangeEndBytes} must be non-empty and inside ${ramSizeBytes} bytes of RAM`);
    }
    if (pattern !== 'sequential' && pattern !== 'random') throw new RangeError(`unknown pattern '${String(pattern)}'`);
    checkU32('serialEveryPasses', serialEveryPasses);
    checkU32('seed', options.seed ?? 1);
    const diskPattern = options.diskPattern ?? 'random';
    if (diskPattern !== 'sequential' && diskPattern !== 'random') throw new RangeError(`unknown disk pattern '${String(diskPattern)}'`);
    if (disk) {
      if (disk.readOnly) throw new RangeError(`disk ${disk.name} is read-only: the disk workload writes it`);
      if (diskBlocks < 1) throw new RangeError(`disk ${disk.name} of ${disk.sizeBytes} bytes holds no ${DISK_BLOCK_SIZE_BYTES}-byte block`);
      if (diskBlocks > 0x7fffffff) throw new RangeError(`disk ${disk.name} of ${disk.sizeBytes} bytes is too large`);
      if (CHUNK_SIZE % DISK_BLOCK_SIZE_BYTES !== 0 || ((CHUNK_SIZE / DISK_BLOCK_SIZE_BYTES) & (CHUNK_SIZE / DISK_BLOCK_SIZE_BYTES - 1)) !== 0) {
        throw new Error(`disk chunk size ${CHUNK_SIZE} is not a power-of-two multiple of ${DISK_BLOCK_SIZE_BYTES}`);
      }
      if (rangeEndBytes > genTableAddress) {
        throw new RangeError(
          `range ${rangeStartBytes}..${rangeEndBytes} overlaps the disk's generation table at ${genTableAddress}..${ramSizeBytes}: end the range at ${genTableAddress} at most`,
        );
      }
    } else if ((options.diskRateBlocksPerSecond ?? 0) !== 0) {
      throw new RangeError('diskRateBlocksPerSecond needs a disk');
    }
    this.disk = disk;
    this.diskLayout = disk ? { diskSizeBytes: disk.sizeBytes, blockCount: diskBlocks, genTableAddress } : undefined;

    this.ram = allocateSharedRam(ramSizeBytes, 'test machine');
    const ramBuffer = this.ram.buffer as SharedArrayBuffer;
    const pageCount = ramSizeBytes / PAGE_SIZE_BYTES;
    const dirtyBuffer = new SharedArrayBuffer(Math.ceil(pageCount / 32) * 4);
    const ctrlBuffer = new SharedArrayBuffer(CTRL_WORDS * 4);
    this.dirty = new Int32Array(dirtyBuffer);
    this.ctrl = new Int32Array(ctrlBuffer);
    this.everWritten = new Uint32Array(this.dirty.length);
    this.ramUnaccounted = options.incoming === true;
    this.block = new DenseRamBlock(TEST_RAM_BLOCK, this.ram, {
      pristinePages: () => this.pristinePages(),
      // The vCPU and load() set a page's dirty bit after every write: pages may go out in place.
      logsEveryWrite: true,
    });

    const c = this.ctrl;
    c[Ctrl.Pattern] = pattern === 'random' ? Pattern.Random : Pattern.Sequential;
    c[Ctrl.PrngState] = (options.seed ?? 1) | 0;
    c[Ctrl.RangeStartPage] = rangeStartBytes / PAGE_SIZE_BYTES;
    c[Ctrl.RangeEndPage] = rangeEndBytes / PAGE_SIZE_BYTES;
    c[Ctrl.SerialEveryPasses] = serialEveryPasses | 0;
    c[Ctrl.PostcopyWaitWord] = -1;
    this.setDirtyRateLimit(options.dirtyRatePagesPerSecond ?? 0);
    if (disk) {
      c[Ctrl.DiskBlockCount] = diskBlocks;
      c[Ctrl.DiskGenTablePage] = genTableAddress / PAGE_SIZE_BYTES;
      c[Ctrl.DiskPattern] = diskPattern === 'random' ? Pattern.Random : Pattern.Sequential;
      // Not the RAM PRNG's seed as is: the two streams should not move in lockstep.
      c[Ctrl.DiskPrngState] = ((options.seed ?? 1) ^ 0x9e3779b9) | 0;
      this.setDiskRateLimit(options.diskRateBlocksPerSecond ?? 0);
    }

    this.cpuSection = {
      machine: this,
      pass_count: 0,
      position: 0,
      pattern: 0,
      prng_state: 0,
      range_start: 0n,
      range_end: 0n,
      serial_every_passes: 0,
      pages_written: 0n,
      booted: false,
      last_value: 0,
    };
    this.serialSection = { machine: this, tx_bytes: 0n, lcr: 0, mcr: 0, scr: 0, thr: 0 };
    this.diskSection = disk
      ? { machine: this, disk_size: 0n, block_size: 0, gen_table_address: 0n, pattern: 0, cursor: 0, prng_state: 0, blocks_written: 0n }
      : undefined;

    this.serial = new Readable({ read() {} });
    const postcopyChannel = new MessageChannel();
    this.postcopyPort = postcopyChannel.port1;
    const workerData: VcpuWorkerData = { kind: WORKER_KIND, ram: ramBuffer, dirty: dirtyBuffer, ctrl: ctrlBuffer, postcopyPort: postcopyChannel.port2 };
    if (disk) {
      // The disk's own log, so the block migration handler sees the vCPU's writes through collectDirty().
      const dirtyLog = disk.sharedDirtyLog ?? disk.attachSharedDirtyLog();
      workerData.disk = { fd: disk.fd, dirtyLog, chunkSizeBytes: CHUNK_SIZE };
    }
    this.worker = new Worker(new URL('./test-machine-worker.js', import.meta.url), { workerData, transferList: [postcopyChannel.port2] });
    this.worker.on('message', (msg: Uint8Array | VcpuFaultMessage) => {
      if (msg instanceof Uint8Array) {
        if (!this.serial.destroyed) this.serial.push(Buffer.from(msg.buffer, msg.byteOffset, msg.length));
        return;
      }
      // A fault posted before disarm() may arrive after it: the contract says no calls once disarmed.
      this.postcopyOnFault?.(TEST_RAM_BLOCK, msg.page);
    });
    this.worker.on('error', (err) => {
      this.failure ??= err;
    });
    this.worker.on('exit', (code) => {
      if (!this.destroyed) this.failure ??= new Error(`test machine vCPU exited unexpectedly (code ${code})`);
    });
  }

  /**
   * Guest RAM, for callers that read or write it directly (tests, checks).
   * Writes through this view bypass the dirty log, so once it has been handed
   * out the machine no longer tells the engine which pages were never written
   * (see pristinePages); write with load() to keep that.
   */
  get memory(): Uint8Array {
    this.ramUnaccounted = true;
    return this.ram;
  }

  get ramSizeBytes(): number {
    return this.ram.length;
  }

  /**
   * Write `data` into guest RAM at `addressBytes` (QEMU's `-device loader`):
   * the pages go through the dirty log like the vCPU's writes, so a migration
   * in progress sends them again and untouched pages stay known as zero.
   */
  load(addressBytes: number, data: Uint8Array): void {
    this.checkAlive();
    if (!Number.isSafeInteger(addressBytes) || addressBytes < 0 || addressBytes + data.length > this.ram.length) {
      throw new RangeError(`load: ${data.length} bytes at ${addressBytes} do not fit in ${this.ram.length} bytes of RAM`);
    }
    if (data.length === 0) return;
    // One native memcpy (Buffer#fill with the data as its pattern): set() into shared memory goes word by word.
    Buffer.prototype.fill.call(this.ram, data, addressBytes, addressBytes + data.length);
    // After the write, as the vCPU does (see syncDirtyLog).
    const last = Math.floor((addressBytes + data.length - 1) / PAGE_SIZE_BYTES);
    for (let page = Math.floor(addressBytes / PAGE_SIZE_BYTES); page <= last; page++) Atomics.or(this.dirty, page >>> 5, 1 << (page & 31));
  }

  /**
   * Pages never written since boot (zero without reading them), or undefined
   * when RAM may have been written behind the log. Written pages are those the
   * syncs collected plus the log's current bits; a write racing with this call
   * sets its bit afterwards and the next sync reports it (the engine then
   * takes the page out of its pristine set).
   */
  private pristinePages(): Uint32Array | undefined {
    if (this.ramUnaccounted) return undefined;
    const pages = this.block.pageCount;
    const out = new Uint32Array(this.everWritten.length);
    for (let w = 0; w < out.length; w++) out[w] = ~(this.everWritten[w]! | Atomics.load(this.dirty, w)) >>> 0;
    if (pages % 32) out[out.length - 1]! &= (1 << pages % 32) - 1;
    return out;
  }

  /** Resolves once the worker is up and stopped. */
  async started(): Promise<void> {
    while (Atomics.load(this.ctrl, Ctrl.State) === VcpuState.Starting) {
      this.checkAlive();
      const r = waitAsync(this.ctrl, Ctrl.State, VcpuState.Starting, WAIT_SLICE_MS);
      if (r.async) await r.value;
    }
  }

  /** @internal The shared control block, for this module's VMState hooks. */
  get controlBlock(): Int32Array {
    return this.ctrl;
  }

  /** The vCPU has acknowledged a stop (and the registers in shared memory are current). */
  get isStopped(): boolean {
    return Atomics.load(this.ctrl, Ctrl.State) === VcpuState.Stopped;
  }

  get running(): boolean {
    const s = Atomics.load(this.ctrl, Ctrl.State);
    return s === VcpuState.Running || s === VcpuState.RunRequested;
  }

  ramBlocks(): RamBlock[] {
    return [this.block];
  }

  /** The disk, if one is attached. */
  blockDevices(): BlockDevice[] {
    return this.disk ? [this.disk] : [];
  }

  /**
   * Why this never loses a write: the vCPU stores the RAM byte and *then*
   * Atomics.or's the page's bit; we Atomics.exchange the word to 0 and only
   * then does the caller read the page. Atomics are sequentially consistent,
   * so for each write W with its bit-set S either
   *  - S precedes our exchange X: X reads S's value, so W happens-before X,
   *    and the page the caller reads afterwards already holds W; or
   *  - S follows X: the bit is set again after we cleared it, so the page is
   *    reported by the next sync (the copy made now may or may not hold W —
   *    either is fine, it will be sent again).
   * After pause() resolves, every write happens-before our read of the Stopped
   * state, so the sync after it reports everything that is left: the last
   * copy equals RAM. The first sync after startDirtyLog() (implicit when
   * tracking is off) reports every page.
   */
  async syncDirtyLog(sink: DirtyLogSink): Promise<void> {
    this.checkAlive();
    this.startDirtyLog();
    const words = this.dirty;
    const out = new Uint32Array(words.length);
    const everWritten = this.everWritten;
    for (let w = 0; w < words.length; w++) {
      // Plain atomic load first: skipping clean words keeps us off the vCPU's cache lines.
      if (Atomics.load(words, w) !== 0) {
        out[w] = Atomics.exchange(words, w, 0) >>> 0;
        everWritten[w] = everWritten[w]! | out[w]!;
      }
    }
    if (this.dirtyLogFresh) {
      this.dirtyLogFresh = false;
      const pages = this.block.pageCount;
      out.fill(0xffffffff);
      if (pages % 32) out[out.length - 1] = (1 << pages % 32) - 1;
    }
    sink(TEST_RAM_BLOCK, out);
  }

  /**
   * Dirty tracking on; the next sync reports every page. The vCPU's exact
   * write log costs one bit per page and is kept whether tracking is on or
   * off (no allocation here, nothing for stopDirtyLog() to free).
   */
  startDirtyLog(): void {
    this.checkAlive();
    if (this.dirtyLogging) return;
    this.dirtyLogging = true;
    this.dirtyLogFresh = true;
  }

  /** Dirty tracking off (the write log itself stays: see startDirtyLog()). */
  stopDirtyLog(): void {
    this.dirtyLogging = false;
    this.dirtyLogFresh = false;
  }

  /** Whether dirty tracking is on (startDirtyLog() or a sync since the last stopDirtyLog()). */
  get dirtyLogActive(): boolean {
    return this.dirtyLogging;
  }

  /**
   * Stop the vCPU at a page boundary; resolves once it has acknowledged, after
   * which no RAM write happens until resume(). Rejects if resume() is called
   * before the vCPU stopped.
   */
  async pause(): Promise<void> {
    this.checkAlive();
    const c = this.ctrl;
    const t0 = performance.now();
    let requested = false;
    for (;;) {
      const s = Atomics.load(c, Ctrl.State);
      if (s === VcpuState.Stopped) break;
      if (s === VcpuState.Running || s === VcpuState.RunRequested) {
        // Only a resume() during our wait can bring it back to running: do not override it.
        if (requested) throw new Error('test machine: resume() was called before the vCPU stopped');
        if (Atomics.compareExchange(c, Ctrl.State, s, VcpuState.StopRequested) === s) {
          Atomics.notify(c, Ctrl.State);
          this.wakePostcopyWaiter();
          requested = true;
        }
        continue;
      }
      if (s !== VcpuState.StopRequested) throw new Error(`test machine: cannot pause in vCPU state ${s}`);
      requested = true;
      const blockedMs = performance.now() - t0;
      if (blockedMs < PAUSE_BLOCK_MS) {
        // Node lets the main thread block in Atomics.wait: a futex sleep woken by the vCPU's notify,
        // faster than an event-loop hop and, unlike spinning, it leaves the core to the vCPU.
        Atomics.wait(c, Ctrl.State, VcpuState.StopRequested, PAUSE_BLOCK_MS - blockedMs);
        continue;
      }
      this.checkAlive();
      const r = waitAsync(c, Ctrl.State, VcpuState.StopRequested, WAIT_SLICE_MS);
      if (r.async) await r.value;
    }
    this.lastPauseLatencyMs = performance.now() - t0;
  }

  resume(): void {
    this.checkAlive();
    const c = this.ctrl;
    for (;;) {
      const s = Atomics.load(c, Ctrl.State);
      if (s === VcpuState.Running || s === VcpuState.RunRequested) return;
      if (s !== VcpuState.Stopped && s !== VcpuState.StopRequested) throw new Error(`test machine: cannot resume in vCPU state ${s}`);
      if (Atomics.compareExchange(c, Ctrl.State, s, VcpuState.RunRequested) === s) {
        Atomics.notify(c, Ctrl.State);
        return;
      }
    }
  }

  /**
   * Run exactly `pages` page writes from a stopped vCPU, then stop (for
   * deterministic tests: two machines with equal state and RAM end up equal).
   * Disk writes are paced by time, not counted here: set the disk rate to 0
   * for an exact step.
   */
  async step(pages: number): Promise<void> {
    if (!Number.isInteger(pages) || pages < 1 || pages > 0x7fffffff) throw new RangeError(`step: bad page count ${pages}`);
    if (!this.isStopped) throw new Error('step: the vCPU must be paused first');
    Atomics.store(this.ctrl, Ctrl.StepPages, pages);
    this.resume();
    // The vCPU stops by itself; wait for Stopped without requesting it.
    for (;;) {
      const s = Atomics.load(this.ctrl, Ctrl.State);
      if (s === VcpuState.Stopped) return;
      this.checkAlive();
      const r = waitAsync(this.ctrl, Ctrl.State, s, WAIT_SLICE_MS);
      if (r.async) await r.value;
    }
  }

  /** Keep the vCPU off the CPU for `percent` % of every 10 ms slice (0–99). */
  setThrottle(percent: number): void {
    if (!Number.isFinite(percent)) throw new RangeError(`throttle ${percent} is not a number`);
    Atomics.store(this.ctrl, Ctrl.ThrottlePercent, Math.max(0, Math.min(99, Math.round(percent))));
    Atomics.notify(this.ctrl, Ctrl.State); // cut a long throttle sleep short
  }

  get throttlePercent(): number {
    return Atomics.load(this.ctrl, Ctrl.ThrottlePercent);
  }

  /** Cap the guest's dirty rate in pages per second; 0 = unlimited. */
  setDirtyRateLimit(pagesPerSecond: number): void {
    if (!Number.isFinite(pagesPerSecond) || pagesPerSecond < 0) throw new RangeError(`dirty rate ${pagesPerSecond} pages/s must be >= 0`);
    Atomics.store(this.ctrl, Ctrl.DirtyRatePagesPerSecond, Math.min(0x7fffffff, Math.round(pagesPerSecond)));
    Atomics.notify(this.ctrl, Ctrl.State);
  }

  /** Cap the disk workload in blocks written per second; 0 = off. */
  setDiskRateLimit(blocksPerSecond: number): void {
    if (!Number.isFinite(blocksPerSecond) || blocksPerSecond < 0) throw new RangeError(`disk rate ${blocksPerSecond} blocks/s must be >= 0`);
    if (!this.disk && blocksPerSecond !== 0) throw new Error('setDiskRateLimit: this test machine has no disk');
    Atomics.store(this.ctrl, Ctrl.DiskRateBlocksPerSecond, Math.min(0x7fffffff, Math.round(blocksPerSecond)));
    Atomics.notify(this.ctrl, Ctrl.State);
  }

  registerDevices(registry: SaveStateRegistry): void {
    // The vCPU and serial are required on load: without them the guest would run from its reset state over migrated RAM.
    // test-disk is not: a diskless source may migrate into a destination with a disk (its workload then starts afresh).
    registry.register({ idstr: 'test-cpu', instanceId: 0, vmsd: testCpuVmsd, opaque: this.cpuSection, required: true });
    registry.register({ idstr: 'test-serial', instanceId: 0, vmsd: testSerialVmsd, opaque: this.serialSection, required: true });
    if (this.diskSection) registry.register({ idstr: 'test-disk', instanceId: 0, vmsd: testDiskVmsd, opaque: this.diskSection });
  }

  /** Counters published by the vCPU (exact when paused). */
  stats(): TestMachineStats {
    const c = this.ctrl;
    return { passes: Atomics.load(c, Ctrl.StatPasses) >>> 0, pagesWritten: loadU64(c, Ctrl.StatPagesHi, Ctrl.StatPagesLo), diskBlocksWritten: loadU64(c, Ctrl.StatDiskBlocksHi, Ctrl.StatDiskBlocksLo) };
  }

  /** The disk workload's registers and layout, or undefined without a disk; paused only. */
  diskState(): TestDiskState | undefined {
    const c = requireStopped(this, 'diskState');
    const layout = this.diskLayout;
    if (!layout) return undefined;
    return {
      diskSizeBytes: layout.diskSizeBytes,
      blockSizeBytes: DISK_BLOCK_SIZE_BYTES,
      blockCount: layout.blockCount,
      genTableAddress: layout.genTableAddress,
      pattern: c[Ctrl.DiskPattern] === Pattern.Random ? 'random' : 'sequential',
      cursorBlocks: c[Ctrl.DiskCursorBlocks]! >>> 0,
      prngState: c[Ctrl.DiskPrngState]! >>> 0,
      blocksWritten: (c[Ctrl.DiskBlocksWrittenHi]! >>> 0) * TWO_POW_32 + (c[Ctrl.DiskBlocksWrittenLo]! >>> 0),
    };
  }

  /**
   * A copy of the guest's generation table (generation of each disk block, 0
   * = never written); empty without a disk. Exact when paused.
   */
  diskGenerations(): Uint32Array {
    const layout = this.diskLayout;
    if (!layout) return new Uint32Array(0);
    const view = new DataView(this.ram.buffer, this.ram.byteOffset + layout.genTableAddress, layout.blockCount * 4);
    const out = new Uint32Array(layout.blockCount);
    for (let b = 0; b < out.length; b++) out[b] = view.getUint32(b * 4, true);
    return out;
  }

  /**
   * Verify the disk against the guest's record (vCPU paused): every block with
   * a generation > 0 must hold exactly that generation, header and payload.
   * Blocks never written (generation 0) are not checked: the image may have
   * held anything. Without a disk: ok, nothing checked.
   */
  async checkDisk(): Promise<DiskCheckResult> {
    requireStopped(this, 'checkDisk');
    const result: DiskCheckResult = { blocksChecked: 0, badBlocks: 0, errors: [], ok: true };
    const disk = this.disk;
    if (!disk) return result;
    const generations = this.diskGenerations();
    const blocksPerChunk = CHUNK_SIZE / DISK_BLOCK_SIZE_BYTES;
    const sectorsPerBlock = DISK_BLOCK_SIZE_BYTES / SECTOR_SIZE;
    const buffer = new Uint8Array(CHUNK_SIZE);
    const scratch = new Uint8Array(DISK_BLOCK_SIZE_BYTES);
    // Read a chunk at a time, skipping chunks the guest never wrote.
    for (let first = 0; first < generations.length; first += blocksPerChunk) {
      const end = Math.min(first + blocksPerChunk, generations.length);
      let any = false;
      for (let b = first; b < end && !any; b++) any = generations[b] !== 0;
      if (!any) continue;
      await disk.readSectors(first * sectorsPerBlock, (end - first) * sectorsPerBlock, buffer);
      for (let b = first; b < end; b++) {
        const generation = generations[b]!;
        if (generation === 0) continue;
        result.blocksChecked++;
        const at = (b - first) * DISK_BLOCK_SIZE_BYTES;
        const problem = verifyDiskBlock(buffer.subarray(at, at + DISK_BLOCK_SIZE_BYTES), b, generation, scratch);
        if (problem !== undefined) {
          result.badBlocks++;
          if (result.errors.length < MAX_DISK_CHECK_ERRORS) result.errors.push(problem);
        }
      }
    }
    result.ok = result.badBlocks === 0;
    return result;
  }

  /** The vCPU registers; paused only. */
  cpuState(): TestCpuState {
    const c = requireStopped(this, 'cpuState');
    return {
      passCount: c[Ctrl.PassCount]! >>> 0,
      positionPages: c[Ctrl.PositionPages]! >>> 0,
      pattern: c[Ctrl.Pattern] === Pattern.Random ? 'random' : 'sequential',
      prngState: c[Ctrl.PrngState]! >>> 0,
      rangeStartBytes: (c[Ctrl.RangeStartPage]! >>> 0) * PAGE_SIZE_BYTES,
      rangeEndBytes: (c[Ctrl.RangeEndPage]! >>> 0) * PAGE_SIZE_BYTES,
      serialEveryPasses: c[Ctrl.SerialEveryPasses]! >>> 0,
      pagesWritten: (c[Ctrl.PagesWrittenHi]! >>> 0) * TWO_POW_32 + (c[Ctrl.PagesWrittenLo]! >>> 0),
      booted: c[Ctrl.Booted] !== 0,
      lastValue: c[Ctrl.LastValue]! & 0xff,
    };
  }

  /** QEMU's memory check over the vCPU's range (meaningful for the sequential pattern, with the vCPU paused). */
  checkMemory(): MemoryCheckResult {
    const c = this.ctrl;
    return checkMemory(this.ram, (c[Ctrl.RangeStartPage]! >>> 0) * PAGE_SIZE_BYTES, (c[Ctrl.RangeEndPage]! >>> 0) * PAGE_SIZE_BYTES);
  }

  /** SHA-256 of all of RAM (hex). */
  ramHash(): string {
    return ramSha256(this.ram);
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    Atomics.store(this.ctrl, Ctrl.State, VcpuState.Exit);
    Atomics.notify(this.ctrl, Ctrl.State);
    this.wakePostcopyWaiter();
    this.postcopyOnFault = undefined;
    this.postcopyPort.close();
    // The vCPU leaves its loop at the next page; terminate() covers a wedged one.
    await this.worker.terminate();
    this.serial.push(null);
  }

  /**
   * Postcopy's arm(): the vCPU must be stopped (a destination arms before the
   * guest first runs). The bitmap goes to the vCPU through its port, which it
   * reads when it next picks up a run request; the armed flag is shared memory,
   * so disarm() reaches it while running.
   */
  private armPostcopy(present: ReadonlyMap<string, Int32Array>, onFault: (idstr: string, page: number) => void): void {
    this.checkAlive();
    if (!this.isStopped) throw new Error('postcopy arm: the vCPU must be paused first');
    const bitmap = present.get(TEST_RAM_BLOCK);
    if (!bitmap) throw new Error(`postcopy arm: no present bitmap for RAM block ${TEST_RAM_BLOCK}`);
    for (const idstr of present.keys()) if (idstr !== TEST_RAM_BLOCK) throw new Error(`postcopy arm: this machine has no RAM block ${idstr}`);
    if (!(bitmap.buffer instanceof SharedArrayBuffer)) throw new Error('postcopy arm: the present bitmap must be shared memory (the vCPU thread reads it)');
    const words = Math.ceil(this.block.pageCount / 32);
    if (bitmap.length < words) throw new RangeError(`postcopy arm: the present bitmap has ${bitmap.length} words, ${TEST_RAM_BLOCK}'s ${this.block.pageCount} pages need ${words}`);
    const c = this.ctrl;
    // The vCPU is stopped: it writes neither counter until it runs again.
    Atomics.store(c, Ctrl.PostcopyBlocktimeUsHi, 0);
    Atomics.store(c, Ctrl.PostcopyBlocktimeUsLo, 0);
    this.postcopyPresent = bitmap;
    this.postcopyOnFault = onFault;
    const message: PostcopyArmMessage = { present: bitmap };
    this.postcopyPort.postMessage(message);
    Atomics.store(c, Ctrl.PostcopyArmed, 1);
  }

  private disarmPostcopy(): void {
    Atomics.store(this.ctrl, Ctrl.PostcopyArmed, 0);
    // A vCPU still waiting (it should not be: every page is here) sees the flag now rather than after its slice.
    this.wakePostcopyWaiter();
    this.postcopyPresent = undefined;
    this.postcopyOnFault = undefined;
  }

  private postcopyBlocktime(): { totalMs: number; perVcpuMs: number[] } {
    const ms = loadU64(this.ctrl, Ctrl.PostcopyBlocktimeUsHi, Ctrl.PostcopyBlocktimeUsLo) / 1000;
    return { totalMs: ms, perVcpuMs: [ms] };
  }

  /** Wake the vCPU if it sleeps on a missing page, so it sees a stop, exit or disarm at once. */
  private wakePostcopyWaiter(): void {
    const bitmap = this.postcopyPresent;
    if (!bitmap) return;
    const word = Atomics.load(this.ctrl, Ctrl.PostcopyWaitWord);
    if (word >= 0) Atomics.notify(bitmap, word);
  }

  private checkAlive(): void {
    if (this.failure) throw this.failure;
    if (this.destroyed) throw new Error('test machine: destroyed');
  }
}

function checkPositiveMultiple(name: string, bytes: number, zeroOk = false): void {
  if (!Number.isSafeInteger(bytes) || bytes < (zeroOk ? 0 : 1) || bytes % PAGE_SIZE_BYTES !== 0) {
    throw new RangeError(`${name} ${bytes} must be a ${zeroOk ? 'non-negative' : 'positive'} multiple of ${PAGE_SIZE_BYTES}`);
  }
}

function checkU32(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`${name} ${value} must be a u32`);
}

/**
 * Create a test machine and wait for its vCPU thread. A normal machine runs
 * at once (unless `startPaused`); an `incoming` one stays paused with zeroed
 * RAM until state is loaded and resume() is called.
 */
export async function createTestMachine(options: TestMachineOptions = {}): Promise<TestMachine> {
  const machine = new TestMachine(options);
  try {
    await machine.started();
  } catch (err) {
    await machine.destroy();
    throw err;
  }
  if (!options.incoming && !options.startPaused) machine.resume();
  return machine;
}
