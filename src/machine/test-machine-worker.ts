/**
 * The test machine's vCPU: QEMU's migration-test guest (facts 8.1) as a loop
 * in a worker thread. For each page of [rangeStart, rangeEnd) it increments
 * the page's first byte; a full range is a *pass*; every `serialEveryPasses`
 * passes it writes `B` to the serial port (and `A` once at boot).
 *
 * Everything the main thread shares with it lives in three SharedArrayBuffers:
 * RAM (Uint8Array), the dirty log (Int32Array, one bit per page) and the
 * control block (Int32Array, layout below: run state, knobs, published
 * counters, the CPU registers and the serial registers).
 *
 * With a disk attached, a second workload interleaves with the page writes
 * at its own rate: write one 4096-byte block (disk-workload.ts) to the image
 * with pwrite, set the block's 1 MiB chunk bit in the disk's shared dirty log,
 * then record the block's generation in a u32 table at the top of guest RAM
 * (and mark that page dirty). The guest's RAM thus says what the disk must
 * hold, so a lost or stale disk write after migration is detectable.
 *
 * Ordering rules (the JS memory model gives happens-before only through
 * atomics, so every hand-over goes through one):
 * - RAM write, *then* Atomics.or of the page's dirty bit (see syncDirtyLog in
 *   test-machine.ts for why this makes the dirty log exact); the same for a
 *   disk block: pwrite returned, *then* Atomics.or of its chunk's bit;
 * - registers are plain stores, published by the atomic store of the
 *   `Stopped` state; they are read back after the atomic CAS that takes a
 *   `RunRequested` (which the main thread stored after writing them), so a
 *   destination that loaded state while stopped is seen whole.
 *
 * Postcopy (a destination running before all of its RAM has arrived): once
 * armed, every guest RAM access (the page write, the disk workload's
 * generation-table entry) first checks the page's bit in the engine's shared
 * present bitmap. A missing page: the vCPU posts a fault to the main thread
 * and sleeps on the bitmap's word until the engine sets the bit, staying
 * responsive to pause and exit; a stop while waiting leaves the registers as
 * before the access, so the next run retries it.
 *
 * This module is also imported by the main thread for its layout constants;
 * the vCPU only runs when loaded as the worker (see the guard at the end).
 */
import { writeSync } from 'node:fs';
import { isMainThread, parentPort, receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { DISK_BLOCK_SIZE_BYTES, encodeDiskBlock } from './disk-workload.js';

export const PAGE_SIZE_BYTES = 4096;
export const WORKER_KIND = 'livemig-test-cpu';

/** Values of the control block's `State` word. Main requests, the vCPU acknowledges. */
export const VcpuState = {
  /** Worker not up yet. */
  Starting: 0,
  /** Main asked to run; the vCPU turns it into Running when it picks it up. */
  RunRequested: 1,
  Running: 2,
  /** Main asked to stop; the vCPU turns it into Stopped at the next page boundary. */
  StopRequested: 3,
  /** The vCPU is stopped: no RAM or disk write happens until the next RunRequested. */
  Stopped: 4,
  /** Leave the loop and end the thread. */
  Exit: 5,
} as const;

export const Pattern = { Sequential: 0, Random: 1 } as const;

/** Word indices in the control block (Int32Array; u32 values read back with `>>> 0`). */
export const Ctrl = {
  State: 0,
  ThrottlePercent: 1,
  DirtyRatePagesPerSecond: 2,
  /** Non-zero when a run should stop by itself after this many pages (step()). */
  StepPages: 3,
  // Counters the vCPU publishes while running (every chunk) and when it stops.
  StatPasses: 4,
  StatPagesLo: 5,
  StatPagesHi: 6,
  // CPU registers: valid while the vCPU is stopped.
  PassCount: 8,
  PositionPages: 9,
  Pattern: 10,
  PrngState: 11,
  RangeStartPage: 12,
  RangeEndPage: 13,
  SerialEveryPasses: 14,
  PagesWrittenLo: 15,
  PagesWrittenHi: 16,
  Booted: 17,
  LastValue: 18,
  // Serial registers (the vCPU updates them as it transmits).
  SerialTxLo: 24,
  SerialTxHi: 25,
  SerialLcr: 26,
  SerialMcr: 27,
  SerialScr: 28,
  SerialThr: 29,
  // The disk workload (used only with a disk attached).
  DiskRateBlocksPerSecond: 32,
  StatDiskBlocksLo: 33,
  StatDiskBlocksHi: 34,
  // Disk workload registers: valid while the vCPU is stopped.
  DiskBlockCount: 35,
  DiskGenTablePage: 36,
  DiskPattern: 37,
  DiskCursorBlocks: 38,
  DiskPrngState: 39,
  DiskBlocksWrittenLo: 40,
  DiskBlocksWrittenHi: 41,
  // Postcopy.
  /** Non-zero while armed; disarm() clears it while the vCPU may be running (read per chunk and while waiting). */
  PostcopyArmed: 42,
  /** The present-bitmap word the vCPU is waiting on, -1 when not waiting: pause()/disarm()/destroy() notify it. */
  PostcopyWaitWord: 43,
  /** Time spent waiting for missing pages since arm(), in µs (the vCPU adds to it every wait slice). */
  PostcopyBlocktimeUsLo: 44,
  PostcopyBlocktimeUsHi: 45,
} as const;
export const CTRL_WORDS = 48;

export interface VcpuWorkerData {
  kind: typeof WORKER_KIND;
  ram: SharedArrayBuffer;
  dirty: SharedArrayBuffer;
  ctrl: SharedArrayBuffer;
  /** The disk, when one is attached: its image's fd (shared by all threads) and its shared chunk dirty log. */
  disk?: { fd: number; dirtyLog: SharedArrayBuffer; chunkSizeBytes: number };
  /** Where arm() puts the present bitmap; polled when the vCPU picks up a run request (it never yields to its event loop). */
  postcopyPort: MessagePort;
}

/** Main → vCPU on `postcopyPort`: the present bitmap of the RAM block (bit n = page n), from arm(). */
export interface PostcopyArmMessage {
  present: Int32Array;
}

/** vCPU → main on parentPort (the other messages are serial bytes, as Uint8Array): the vCPU waits for `page`. */
export interface VcpuFaultMessage {
  kind: 'fault';
  page: number;
}

const TWO_POW_32 = 4294967296;

/** mulberry32 (as test/helpers/prng.ts): the state advances by this before each output. */
const MULBERRY32_STEP = 0x6d2b79f5;

/** mulberry32's output (a u32) for an advanced state; a plain function, so the page loop allocates nothing. */
function mulberry32(state: number): number {
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return (t ^ (t >>> 14)) >>> 0;
}
/** Pages written between checks of the clock, knobs and published counters. */
const CHUNK_PAGES = 64;
/** Disk blocks written at most between those checks (each is a syscall, far slower than a page). */
const CHUNK_DISK_BLOCKS = 8;
/** QEMU's CPU throttle time slice. */
const THROTTLE_SLICE_MS = 10;
/** Serial bytes are batched into one message at most this often (a tiny range can pass very fast). */
const SERIAL_FLUSH_MS = 2;

/** A vCPU blocked on a missing page sleeps at most this long before checking pause/exit/disarm (notifies usually wake it earlier). */
const FAULT_WAIT_SLICE_MS = 20;
/** ... and re-posts its fault at most this often (the engine may have lost it over a broken link; repeats are harmless). */
const FAULT_REPOST_MS = 100;

/** Why a run ended. */
const enum RunEnd {
  StopRequested,
  StepDone,
  Exit,
}

function runVcpu(data: VcpuWorkerData): void {
  const port = parentPort!;
  const ram = new Uint8Array(data.ram);
  const dirty = new Int32Array(data.dirty);
  const ctrl = new Int32Array(data.ctrl);

  // The register file lives in locals while running (fast), in ctrl while stopped.
  let passes = 0;
  let position = 0;
  let pattern = 0;
  let prng = 0;
  let startPage = 0;
  let rangePages = 0;
  let serialEvery = 0;
  let pagesWritten = 0;
  let lastValue = 0;
  // Disk workload registers.
  let diskBlocks = 0;
  let genTableAt = 0;
  let diskPattern = 0;
  let diskCursor = 0;
  let diskPrng = 0;
  let diskBlocksWritten = 0;

  const disk = data.disk;
  const diskDirty = disk ? new Int32Array(disk.dirtyLog) : undefined;
  const blocksPerChunkShift = disk ? Math.log2(disk.chunkSizeBytes / DISK_BLOCK_SIZE_BYTES) : 0;
  const diskBuffer = new Uint8Array(DISK_BLOCK_SIZE_BYTES);
  // The generation table is little-endian u32s in guest RAM, whatever the host's byte order.
  const ramView = new DataView(data.ram);

  /** The engine's present bitmap while postcopy is armed, else null (the unarmed fast path: one null check per access). */
  let present: Int32Array | null = null;
  /**
   * A word of `present` last seen with all 32 bits set, -1 if none: bits are
   * only ever set, so its pages need no atomic load (the sequential pattern
   * then checks the bitmap once per 32 pages).
   */
  let presentFullWord = -1;

  let serialPending: number[] = [];
  let lastSerialFlushMs = 0;

  const loadRegs = (): void => {
    passes = ctrl[Ctrl.PassCount]! >>> 0;
    position = ctrl[Ctrl.PositionPages]! >>> 0;
    pattern = ctrl[Ctrl.Pattern]!;
    prng = ctrl[Ctrl.PrngState]! >>> 0;
    startPage = ctrl[Ctrl.RangeStartPage]! >>> 0;
    rangePages = (ctrl[Ctrl.RangeEndPage]! >>> 0) - startPage;
    serialEvery = ctrl[Ctrl.SerialEveryPasses]! >>> 0;
    pagesWritten = (ctrl[Ctrl.PagesWrittenHi]! >>> 0) * TWO_POW_32 + (ctrl[Ctrl.PagesWrittenLo]! >>> 0);
    lastValue = ctrl[Ctrl.LastValue]! & 0xff;
    diskBlocks = ctrl[Ctrl.DiskBlockCount]! >>> 0;
    genTableAt = (ctrl[Ctrl.DiskGenTablePage]! >>> 0) * PAGE_SIZE_BYTES;
    diskPattern = ctrl[Ctrl.DiskPattern]!;
    diskCursor = ctrl[Ctrl.DiskCursorBlocks]! >>> 0;
    diskPrng = ctrl[Ctrl.DiskPrngState]! >>> 0;
    diskBlocksWritten = (ctrl[Ctrl.DiskBlocksWrittenHi]! >>> 0) * TWO_POW_32 + (ctrl[Ctrl.DiskBlocksWrittenLo]! >>> 0);
  };

  const publishStats = (): void => {
    Atomics.store(ctrl, Ctrl.StatPasses, passes | 0);
    Atomics.store(ctrl, Ctrl.StatPagesHi, Math.floor(pagesWritten / TWO_POW_32) | 0);
    Atomics.store(ctrl, Ctrl.StatPagesLo, pagesWritten % TWO_POW_32 | 0);
    Atomics.store(ctrl, Ctrl.StatDiskBlocksHi, Math.floor(diskBlocksWritten / TWO_POW_32) | 0);
    Atomics.store(ctrl, Ctrl.StatDiskBlocksLo, diskBlocksWritten % TWO_POW_32 | 0);
  };

  const storeRegs = (): void => {
    ctrl[Ctrl.PassCount] = passes | 0;
    ctrl[Ctrl.PositionPages] = position | 0;
    ctrl[Ctrl.PrngState] = prng | 0;
    ctrl[Ctrl.PagesWrittenLo] = pagesWritten % TWO_POW_32 | 0;
    ctrl[Ctrl.PagesWrittenHi] = Math.floor(pagesWritten / TWO_POW_32) | 0;
    ctrl[Ctrl.LastValue] = lastValue;
    ctrl[Ctrl.DiskCursorBlocks] = diskCursor | 0;
    ctrl[Ctrl.DiskPrngState] = diskPrng | 0;
    ctrl[Ctrl.DiskBlocksWrittenLo] = diskBlocksWritten % TWO_POW_32 | 0;
    ctrl[Ctrl.DiskBlocksWrittenHi] = Math.floor(diskBlocksWritten / TWO_POW_32) | 0;
    publishStats();
  };

  /**
   * One disk write, whole: the block's next generation to the image, its
   * chunk's bit, then the generation into the table in RAM and that page's
   * bit. The pause check is outside, so a stopped guest's table matches its disk.
   */
  const diskWrite = (block: number): void => {
    if (diskPattern === Pattern.Random) diskPrng = (diskPrng + MULBERRY32_STEP) >>> 0;
    else if (++diskCursor >= diskBlocks) diskCursor = 0;
    const entryAt = genTableAt + block * 4;
    // u32 wrap after 2^32 writes of one block gives 0 ("never written"): not reachable in a test.
    const generation = (ramView.getUint32(entryAt, true) + 1) >>> 0;
    encodeDiskBlock(diskBuffer, block, generation);
    const offset = block * DISK_BLOCK_SIZE_BYTES;
    for (let done = 0; done < DISK_BLOCK_SIZE_BYTES; ) done += writeSync(disk!.fd, diskBuffer, done, DISK_BLOCK_SIZE_BYTES - done, offset + done);
    // After pwrite returned: whoever clears this bit and then reads the chunk sees the block.
    const chunk = block >>> blocksPerChunkShift;
    Atomics.or(diskDirty!, chunk >>> 5, 1 << (chunk & 31));
    ramView.setUint32(entryAt, generation, true);
    const page = Math.floor(entryAt / PAGE_SIZE_BYTES);
    Atomics.or(dirty, page >>> 5, 1 << (page & 31));
    diskBlocksWritten++;
  };

  /** The block the next disk write takes, without advancing the workload (so a wait for its table page can stop before it). */
  const nextDiskBlock = (): number =>
    diskPattern === Pattern.Random ? Math.floor((mulberry32((diskPrng + MULBERRY32_STEP) >>> 0) * diskBlocks) / TWO_POW_32) : diskCursor;

  const flushSerial = (): void => {
    if (serialPending.length === 0) return;
    port.postMessage(Uint8Array.from(serialPending));
    serialPending = [];
    lastSerialFlushMs = performance.now();
  };

  /** The guest's `outb` to COM1: the serial registers change now, the byte reaches the host stream in the next flush. */
  const serialTx = (byte: number): void => {
    const lo = (ctrl[Ctrl.SerialTxLo]! >>> 0) + 1;
    ctrl[Ctrl.SerialTxLo] = lo | 0;
    if (lo === TWO_POW_32) ctrl[Ctrl.SerialTxHi] = ((ctrl[Ctrl.SerialTxHi]! >>> 0) + 1) | 0;
    ctrl[Ctrl.SerialThr] = byte;
    serialPending.push(byte);
  };

  /** The boot code before the loop: program the UART (8N1, DTR|RTS|OUT2, probe the scratch register) and say `A`. */
  const boot = (): void => {
    ctrl[Ctrl.SerialLcr] = 0x03;
    ctrl[Ctrl.SerialMcr] = 0x0b;
    ctrl[Ctrl.SerialScr] = 0x5a;
    serialTx(0x41);
    ctrl[Ctrl.Booted] = 1;
  };

  /** Sleep, but wake at once when the main thread changes the run state (pause stays fast when throttled). */
  const nap = (ms: number): void => {
    if (ms > 0) Atomics.wait(ctrl, Ctrl.State, VcpuState.Running, ms);
  };

  /** Called when State is not Running: true to go on running, else why to stop. */
  const control = (): true | RunEnd => {
    for (;;) {
      const s = Atomics.load(ctrl, Ctrl.State);
      if (s === VcpuState.Running) return true;
      if (s === VcpuState.RunRequested) {
        // A resume() that cancelled a pause before we saw it: acknowledge and go on.
        if (Atomics.compareExchange(ctrl, Ctrl.State, s, VcpuState.Running) === s) {
          Atomics.notify(ctrl, Ctrl.State);
          return true;
        }
        continue;
      }
      return s === VcpuState.Exit ? RunEnd.Exit : RunEnd.StopRequested;
    }
  };

  const addBlocktime = (ms: number): void => {
    const us = (ctrl[Ctrl.PostcopyBlocktimeUsHi]! >>> 0) * TWO_POW_32 + (ctrl[Ctrl.PostcopyBlocktimeUsLo]! >>> 0) + Math.round(ms * 1000);
    Atomics.store(ctrl, Ctrl.PostcopyBlocktimeUsHi, Math.floor(us / TWO_POW_32) | 0);
    Atomics.store(ctrl, Ctrl.PostcopyBlocktimeUsLo, us % TWO_POW_32 | 0);
  };

  /**
   * Page `page` is missing from `bitmap`: fault and wait until the engine sets
   * its bit (true: go on with the access) or the run must end (the access has
   * not happened; the caller returns with its registers untouched). Disarm
   * also ends the wait: the engine disarms only once every page is here.
   */
  const waitForPage = (bitmap: Int32Array, page: number): true | RunEnd => {
    const word = page >>> 5;
    const bit = 1 << (page & 31);
    // The wait may be long: show where the guest stands and what it said so far.
    publishStats();
    flushSerial();
    Atomics.store(ctrl, Ctrl.PostcopyWaitWord, word);
    const fault: VcpuFaultMessage = { kind: 'fault', page };
    port.postMessage(fault);
    let lastFaultMs = performance.now();
    let accountedMs = lastFaultMs;
    try {
      for (;;) {
        const seen = Atomics.load(bitmap, word);
        if ((seen & bit) !== 0) return true;
        if (Atomics.load(ctrl, Ctrl.PostcopyArmed) === 0) {
          present = null;
          return true;
        }
        if (Atomics.load(ctrl, Ctrl.State) !== VcpuState.Running) {
          const go = control();
          if (go !== true) return go;
        }
        Atomics.wait(bitmap, word, seen, FAULT_WAIT_SLICE_MS);
        const now = performance.now();
        addBlocktime(now - accountedMs);
        accountedMs = now;
        if (now - lastFaultMs >= FAULT_REPOST_MS) {
          port.postMessage(fault);
          lastFaultMs = now;
        }
      }
    } finally {
      Atomics.store(ctrl, Ctrl.PostcopyWaitWord, -1);
    }
  };

  /** The guest loop, until a stop request, the end of a step, or exit. */
  const run = (): RunEnd => {
    const stepPages = Atomics.load(ctrl, Ctrl.StepPages);
    // Only a step counts its pages down. (An Infinity to count down from made every page write allocate a heap
    // number: ~300 MB/s of garbage, whose collections took the engine's cores.)
    const stepping = stepPages > 0;
    let stepLeft = stepPages;
    let tokens = 0;
    let lastRefillMs = performance.now();
    let sliceStartMs = lastRefillMs;
    let diskTokens = 0;
    let diskLastRefillMs = lastRefillMs;
    for (;;) {
      if (Atomics.load(ctrl, Ctrl.State) !== VcpuState.Running) {
        const go = control();
        if (go !== true) return go;
      }
      if (present !== null && Atomics.load(ctrl, Ctrl.PostcopyArmed) === 0) present = null;
      const throttlePercent = Atomics.load(ctrl, Ctrl.ThrottlePercent);
      const ratePagesPerSecond = Atomics.load(ctrl, Ctrl.DirtyRatePagesPerSecond);
      const diskRateBlocksPerSecond = disk && diskBlocks > 0 ? Atomics.load(ctrl, Ctrl.DiskRateBlocksPerSecond) : 0;
      const now = performance.now();
      let n = CHUNK_PAGES;
      let waitMs = Infinity;
      if (ratePagesPerSecond > 0) {
        // Token bucket with at most 20 ms worth of burst.
        tokens = Math.min(tokens + ((now - lastRefillMs) * ratePagesPerSecond) / 1000, Math.max(1, ratePagesPerSecond / 50));
        lastRefillMs = now;
        if (tokens < 1) {
          n = 0;
          waitMs = ((1 - tokens) * 1000) / ratePagesPerSecond;
        } else {
          n = Math.min(n, Math.floor(tokens));
        }
      }
      // The disk's own bucket (0 = no disk writes), the same shape.
      let diskN = 0;
      if (diskRateBlocksPerSecond > 0) {
        diskTokens = Math.min(diskTokens + ((now - diskLastRefillMs) * diskRateBlocksPerSecond) / 1000, Math.max(1, diskRateBlocksPerSecond / 50));
        if (diskTokens < 1) waitMs = Math.min(waitMs, ((1 - diskTokens) * 1000) / diskRateBlocksPerSecond);
        else diskN = Math.min(CHUNK_DISK_BLOCKS, Math.floor(diskTokens));
      } else {
        diskTokens = 0;
      }
      diskLastRefillMs = now;
      if (n === 0 && diskN === 0) {
        nap(Math.min(THROTTLE_SLICE_MS, waitMs));
        continue;
      }
      if (throttlePercent > 0) {
        // Within each 10 ms slice run (100 - p) % of it and sleep p % (QEMU's cpu throttle ratio).
        const now = performance.now();
        if (now - sliceStartMs >= (THROTTLE_SLICE_MS * (100 - throttlePercent)) / 100) {
          nap((THROTTLE_SLICE_MS * throttlePercent) / 100);
          sliceStartMs = performance.now();
          // The vCPU's time stands still while it is throttled: the dirty-rate budget
          // accrues only while it runs, so a capped workload slows down by (100 - p) %
          // like a CPU-bound guest under QEMU's throttle.
          lastRefillMs = sliceStartMs;
          diskLastRefillMs = sliceStartMs;
          continue;
        }
      }
      for (let i = 0; i < diskN; i++) {
        // The same safe point as for pages: between whole disk writes.
        if (Atomics.load(ctrl, Ctrl.State) !== VcpuState.Running) {
          const go = control();
          if (go !== true) return go;
        }
        const block = nextDiskBlock();
        if (present !== null) {
          // The generation-table entry's page, before the disk write (the table and the disk change together).
          const page = Math.floor((genTableAt + block * 4) / PAGE_SIZE_BYTES);
          if ((Atomics.load(present, page >>> 5) & (1 << (page & 31))) === 0) {
            const go = waitForPage(present, page);
            if (go !== true) return go;
          }
        }
        diskWrite(block);
        diskTokens--;
      }
      for (let i = 0; i < n; i++) {
        // The safe point: one atomic load per page, so a pause takes effect within one page write.
        if (Atomics.load(ctrl, Ctrl.State) !== VcpuState.Running) {
          const go = control();
          if (go !== true) return go;
        }
        let index: number;
        // The PRNG advances only once the access is done: a stop while waiting for the page retries it.
        let nextPrng = prng;
        if (pattern === Pattern.Random) {
          nextPrng = (prng + MULBERRY32_STEP) >>> 0;
          index = Math.floor((mulberry32(nextPrng) * rangePages) / TWO_POW_32);
        } else {
          index = position;
        }
        const page = startPage + index;
        if (present !== null && page >>> 5 !== presentFullWord) {
          const bits = Atomics.load(present, page >>> 5);
          if (bits === -1) {
            presentFullWord = page >>> 5;
          } else if ((bits & (1 << (page & 31))) === 0) {
            const go = waitForPage(present, page);
            if (go !== true) return go;
          }
        }
        prng = nextPrng;
        const at = page * PAGE_SIZE_BYTES;
        const value = (ram[at]! + 1) & 0xff;
        ram[at] = value;
        // After the write: whoever clears this bit and then reads the page sees the value.
        Atomics.or(dirty, page >>> 5, 1 << (page & 31));
        lastValue = value;
        pagesWritten++;
        tokens--;
        if (++position >= rangePages) {
          position = 0;
          passes = (passes + 1) >>> 0;
          if (serialEvery > 0 && passes % serialEvery === 0) serialTx(0x42);
        }
        if (stepping && --stepLeft === 0) return RunEnd.StepDone;
      }
      publishStats();
      if (serialPending.length > 0 && (serialPending.length >= 4096 || performance.now() - lastSerialFlushMs >= SERIAL_FLUSH_MS)) flushSerial();
    }
  };

  /** Store Stopped unless the state is Exit; `from` limits which state may be replaced. Returns false on Exit. */
  const ackStopped = (onlyFrom?: number): boolean => {
    for (;;) {
      const s = Atomics.load(ctrl, Ctrl.State);
      if (s === VcpuState.Exit) return false;
      if (onlyFrom !== undefined && s !== onlyFrom) return true; // someone resumed meanwhile: the outer loop runs again
      if (Atomics.compareExchange(ctrl, Ctrl.State, s, VcpuState.Stopped) === s) {
        Atomics.notify(ctrl, Ctrl.State);
        return true;
      }
    }
  };

  /** The latest bitmap arm() posted (it arms only while we are stopped, so before this run request), or none if disarmed. */
  const takePostcopyBitmap = (): void => {
    for (let m = receiveMessageOnPort(data.postcopyPort); m !== undefined; m = receiveMessageOnPort(data.postcopyPort)) {
      present = (m.message as PostcopyArmMessage).present;
      presentFullWord = -1;
    }
    if (Atomics.load(ctrl, Ctrl.PostcopyArmed) === 0) present = null;
  };

  if (!ackStopped()) return;
  for (;;) {
    const s = Atomics.load(ctrl, Ctrl.State);
    if (s === VcpuState.Exit) return;
    if (s === VcpuState.Stopped) {
      Atomics.wait(ctrl, Ctrl.State, VcpuState.Stopped);
      continue;
    }
    if (s === VcpuState.StopRequested) {
      if (!ackStopped(VcpuState.StopRequested)) return;
      continue;
    }
    if (s === VcpuState.RunRequested && Atomics.compareExchange(ctrl, Ctrl.State, s, VcpuState.Running) !== s) continue;
    Atomics.notify(ctrl, Ctrl.State);
    loadRegs();
    takePostcopyBitmap();
    if (ctrl[Ctrl.Booted] === 0) boot();
    const end = run();
    Atomics.store(ctrl, Ctrl.StepPages, 0); // a step interrupted by pause() must not limit the next run
    storeRegs();
    flushSerial();
    if (end === RunEnd.Exit) return;
    if (end === RunEnd.StepDone) {
      if (!ackStopped()) return;
    } else if (!ackStopped(VcpuState.StopRequested)) {
      return;
    }
  }
}

const data = workerData as Partial<VcpuWorkerData> | null | undefined;
if (!isMainThread && data?.kind === WORKER_KIND) runVcpu(data as VcpuWorkerData);
