/**
 * The v86 machine (`--machine v86`): a real x86 PC emulated by v86 0.5.462
 * (npm `v86`, pinned exactly: we use its internals) in this thread.
 *
 * - RAM is one block (`pc.ram`) over v86's own WebAssembly memory; the view
 *   is rebuilt whenever a memory grow detaches the old buffer.
 * - v86 has no dirty log: syncDirtyLog() compares RAM with a shadow copy, in
 *   slices of about 8 ms that yield so the emulator (scheduled with
 *   setImmediate on this same thread) keeps running; a paused machine is
 *   compared in one go. The RAM block also records in the shadow
 *   what the engine sends (the page's contents when it checks or reads it for
 *   sending), so the shadow always equals what the destination holds and a
 *   page that goes A → B → A between a sync and its send is not lost.
 *   The shadow (shadow-copy.ts) starts zeroed and uncommitted; RAM's zero
 *   64 KiB groups are compared with a zero group, not copied, so it costs
 *   about the guest's non-zero memory.
 *   The shadow exists only between startDirtyLog() (or the first sync) and
 *   stopDirtyLog(), which frees it.
 * - CPU and device state is v86's save_state() with RAM left out, in the
 *   `v86-state` section; `v86-config` (memory sizes, disk size) comes first
 *   and the destination refuses a stream for another configuration.
 * - Media (hda, hdb, fda, cdrom: BlockDevices or raw image files, through
 *   v86-disk.ts): v86 reads and writes them in place, nothing is loaded
 *   whole. The writable ones are the machine's blockDevices(), copied by
 *   the `block` section, unless shared (both sides open the same file:
 *   flushed at pause, never copied). The `v86-media` section, sent in setup
 *   before any RAM or disk data, lists every medium (size, copied, shared
 *   or read-only) and the destination refuses a stream whose media differ.
 *   Without media the machine has a zeroed 64 KiB hda in memory (v86 needs
 *   one to restore state) that travels in the device state, as before.
 * - Throttle (auto-converge): stop/run on a 10 ms slice timer.
 *
 * The machine runs in Node and in a page alike: what differs (v86's
 * constructor and wasm, reading images, the serial stream, hashing) is a
 * V86Platform — v86-node.ts in Node (the default of createV86Machine), the
 * browser's in src/browser/v86-browser.ts.
 */
import type { BlockDevice } from '../block/block-device.js';
import { formatSize } from '../block/geometry.js';
import { DenseRamBlock, type RamBlock } from '../ram/index.js';
import type { LoadSectionContext, SaveStateRegistry, SaveVMHandlers } from '../savevm/index.js';
import { StreamError, type StreamReader, type StreamWriter } from '../wire/index.js';
import { defineVmsd, field } from '../vmstate/index.js';
import { yieldToEventLoop as nextTurn } from '../wire/native-bytes.js';
import type { DirtyLogSink, Machine, SerialOutput } from './machine.js';
import { DEFAULT_GUEST_SHARE_PERCENT, MAX_GUEST_SHARE_PERCENT, MIN_GUEST_SHARE_PERCENT } from './guest-share.js';
import { checkMemory, type MemoryCheckResult } from './memory-consistency.js';
import { SHADOW_GROUP_BYTES, ShadowCopy } from './shadow-copy.js';
import { V86DiskBuffer } from './v86-disk.js';

export const V86_MACHINE_NAME = 'livemig-v86';
export const V86_RAM_BLOCK = 'pc.ram';
export const V86_PACKAGE_VERSION = '0.5.462';
const PAGE = 4096;
const KiB = 1024;
const MiB = 1024 * KiB;
/** v86 sizes RAM in 128 KiB units. */
const V86_RAM_GRANULE = 128 * KiB;
/**
 * A sync compares in slices and yields to the emulator between them: a slice
 * ends after this long (checked every SYNC_UNIT_BYTES) or at syncChunkBytes.
 * About one v86 turn (main_loop runs ~5 ms): 256 MiB take ~4 slices, not 32.
 */
const DEFAULT_SYNC_SLICE_MS = 8;
const SYNC_UNIT_BYTES = 1 * MiB;
const THROTTLE_SLICE_MS = 10;
/** The longest turn the fair share gives the guest at its default half of the thread (longer for a larger share, in proportion). */
const MAX_FAIR_TURN_MS = 20;
const LOAD_TIMEOUT_MS = 30_000;

/** v86's media slots; a medium's BlockDevice carries the slot as its name (the name on the wire). */
export const V86_MEDIA_SLOTS = ['hda', 'hdb', 'fda', 'cdrom'] as const;
export type V86MediaSlot = (typeof V86_MEDIA_SLOTS)[number];

/** A medium: a BlockDevice named as its slot (the caller keeps it open and closes it), or a raw image file the machine opens and closes. */
export type V86Medium = BlockDevice | { path: string; readOnly?: boolean };

/** Floppy image sizes v86 knows (src/floppy.js DISK_FORMATS); another size it would copy into memory. */
export const V86_FLOPPY_SIZES_BYTES: readonly number[] = [
  163840, 184320, 204800, 327680, 368640, 409600, 419840, 430080, 655360, 737280, 819200, 839680, 849920, 901120, 1064960, 1146880, 1228800, 1474560, 1511424,
  1529856, 1638400, 1720320, 1763328, 1784832, 1802240, 1884160, 1966080, 2949120, 3276800, 3604480, 3932160,
];

export interface V86MachineOptions {
  /** IDE primary master and slave disks. */
  hda?: V86Medium;
  hdb?: V86Medium;
  /** Floppy drive A (one of V86_FLOPPY_SIZES_BYTES). */
  fda?: V86Medium;
  /** CD-ROM (IDE secondary master): always read-only, never copied. */
  cdrom?: V86Medium;
  /**
   * The writable media are shared with the other side of a migration (both
   * open the same files): blockDevices() is empty (nothing is copied) and
   * pause() flushes them, so the destination reads every write.
   */
  sharedDisks?: boolean;
  /** Guest RAM in bytes, a multiple of 128 KiB (default 128 MiB). */
  ramSizeBytes?: number;
  /** VGA memory (default 256 KiB, v86's minimum; it travels in the device state). */
  vgaMemorySizeBytes?: number;
  /** Without media: size of the zeroed IDE disk v86 needs to restore state (default 64 KiB; it travels in the device state). */
  diskSizeBytes?: number;
  /**
   * Multiboot kernel: bytes or a file path (default: our test kernel,
   * guests/multiboot/livemig-test-kernel.bin). Not loaded on an incoming machine.
   */
  multiboot?: Uint8Array | string;
  /** BIOS and VGA BIOS (e.g. Debian's seabios bios.bin, vgabios-stdvga.bin): bytes or paths. Without them a multiboot kernel boots directly; with them and no kernel the BIOS boots from the media. */
  bios?: Uint8Array | string;
  vgaBios?: Uint8Array | string;
  /** Linux kernel, initrd and command line (needs `bios`). */
  bzimage?: Uint8Array | string;
  initrd?: Uint8Array | string;
  cmdline?: string;
  /** Turn off v86's JIT (default false). */
  disableJit?: boolean;
  /** Start paused and wait for state to be loaded; resume() then continues from it. */
  incoming?: boolean;
  /** Do not start the CPU (a non-incoming machine otherwise runs at once). */
  startPaused?: boolean;
  /** At most this many bytes compared by syncDirtyLog between yields to the emulator (default: no limit but the time). */
  syncChunkBytes?: number;
  /** A syncDirtyLog slice ends after this many ms (checked every 1 MiB) and yields to the emulator (default 8). */
  syncSliceMs?: number;
  /**
   * While dirty tracking is on and the guest is not throttled, give it at
   * least guestSharePercent of this thread: a turn lasts as long as the
   * other work (the migration's sending, the sync's slices) ran since the
   * previous one, times share / (100 − share), up to 20 ms times the same
   * (default true).
   */
  fairShare?: boolean;
  /**
   * With fairShare: the guest's share of the thread, 1 to 95 (default 50).
   * One thread runs both the guest and the migration's work here, so a
   * larger share keeps the guest faster and makes the migration slower
   * (docs/benchmarks.md measures 50, 80 and 90 on a 256 MiB guest).
   */
  guestSharePercent?: number;
}

export interface V86MachineStats {
  /** Instructions executed since start (v86's counter, widened past 2^32 at each read). */
  instructions: number;
  /** Bytes written by the guest to COM1. */
  serialBytes: number;
  /** Dirty-log syncs done; the last one's wall time (emulator turns between its slices included), its own time (comparing and copying), its slices and the pages it reported. */
  syncs: number;
  lastSyncMs: number;
  lastSyncBusyMs: number;
  lastSyncSlices: number;
  lastSyncDirtyPages: number;
  /** Wall time spent in v86's main loop (running the guest), in ms since start. */
  emulatorMs: number;
  /** Bytes the dirty log holds (the shadow copy of RAM while tracking is on, else 0). */
  dirtyLogBytes: number;
  throttlePercent: number;
}

/** The registers, read while paused. */
export interface V86CpuState {
  eip: number;
  eax: number;
  ecx: number;
  edx: number;
  ebx: number;
  esp: number;
  ebp: number;
  esi: number;
  edi: number;
  eflags: number;
  protectedMode: boolean;
}

/** WebAssembly is in Node 20 but not in the ES2022 lib typings: the part we use. */
interface WasmApi {
  compile(bytes: Uint8Array): Promise<WasmModule>;
  instantiate(module: WasmModule, imports: object): Promise<{ exports: object }>;
}
export type WasmModule = { readonly __wasmModule: unique symbol };
export const Wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

/** Where the guest's serial output goes: `output` is what machine.serial hands out. */
export interface V86SerialPort {
  readonly output: SerialOutput;
  push(bytes: Uint8Array): void;
  end(): void;
}

/** What differs between Node and a page (v86-node.ts; src/browser/v86-browser.ts). */
export interface V86Platform {
  /** v86's constructor: the npm package's in Node, build/libv86.mjs's in a page. */
  readonly V86: new (settings: Record<string, unknown>) => unknown;
  /** v86's wasm, compiled (once per process or page). */
  wasmModule(): Promise<WasmModule>;
  /** An image option's bytes: a path in Node, a URL in a page. */
  loadImage(image: Uint8Array | string): Promise<ArrayBuffer>;
  /** The multiboot kernel to boot when no image is given (our test kernel). */
  defaultMultiboot(): Uint8Array | string;
  /** This machine's serial output. */
  readonly serial: V86SerialPort;
  /** SHA-256 of the bytes, hex (Node's crypto; absent in a page, where ramHash() refuses). */
  sha256?(bytes: Uint8Array): string;
  /** More v86 settings (a page's `screen_container`). */
  readonly settings?: Record<string, unknown>;
  /** Open a medium given as a path (Node: a raw image file); absent in a page, which passes BlockDevices. */
  openDisk?(slot: string, path: string, options: { readOnly: boolean }): Promise<BlockDevice>;
}

/** The internals we use (v86 0.5.462: src/browser/starter.js, src/main.js, src/cpu.js). */
interface V86Cpu {
  wasm_memory: { readonly buffer: ArrayBuffer };
  mem8: Uint8Array;
  memory_size: Int32Array | Uint32Array;
  reg32: Int32Array;
  instruction_pointer: Int32Array;
  flags: Int32Array;
  protected_mode: Int32Array;
  /** Runs the guest for one turn (~5 ms); returns the ms until the next one is due. */
  main_loop: () => number;
  pack_memory: () => unknown;
  unpack_memory: (bitmap: unknown, packed: unknown) => void;
  /** src/floppy.js: the drives' write-protect switch (saved with v86's state). */
  devices: { fdc?: { drives?: Array<{ read_only: boolean }> } };
}
interface V86Main {
  cpu: V86Cpu;
  running: boolean;
  run(): void;
  stop(): void;
  save_state(): ArrayBuffer;
  restore_state(state: ArrayBuffer): void;
}
interface V86Emulator {
  v86: V86Main;
  bus: { send(event: string, data?: unknown): void };
  add_listener(event: string, listener: (arg: never) => void): void;
  remove_listener(event: string, listener: (arg: never) => void): void;
  run(): Promise<void>;
  stop(): Promise<void>;
  destroy(): Promise<void>;
  is_running(): boolean;
  get_instruction_counter(): number;
}

/** The `v86-config` section: what must match between source and destination. */
interface ConfigSection {
  readonly machine: V86Machine;
  memory_size: number;
  vga_memory_size: number;
  disk_size: number;
}

/** The `v86-state` section: v86's own state format, RAM left out. */
interface StateSection {
  readonly machine: V86Machine;
  length: number;
  state: Uint8Array;
}

const sizeText = (bytes: number): string => (bytes % MiB === 0 ? `${bytes / MiB} MiB` : bytes % KiB === 0 ? `${bytes / KiB} KiB` : `${bytes} bytes`);

export const v86ConfigVmsd = defineVmsd<ConfigSection>({
  name: 'v86-config',
  version: 1,
  minimumVersion: 1,
  fields: [field.uint32('memory_size'), field.uint32('vga_memory_size'), field.uint32('disk_size')],
  preSave(s) {
    s.memory_size = s.machine.ramSizeBytes;
    s.vga_memory_size = s.machine.vgaMemorySizeBytes;
    s.disk_size = s.machine.diskSizeBytes;
  },
  postLoad(s) {
    const m = s.machine;
    const check = (what: string, stream: number, local: number): void => {
      if (stream !== local) throw new Error(`v86-config: ${what} mismatch: stream ${sizeText(stream)}, local ${sizeText(local)}`);
    };
    check('memory size', s.memory_size, m.ramSizeBytes);
    check('VGA memory size', s.vga_memory_size, m.vgaMemorySizeBytes);
    if (s.disk_size !== m.diskSizeBytes && (s.disk_size === 0 || m.diskSizeBytes === 0)) {
      // 0: the side has media (their sizes are in v86-media), else the 64 KiB stub hda.
      throw new Error(
        s.disk_size === 0
          ? `v86-config: the source has media (hda, hdb, fda or cdrom), this machine has none (only its ${sizeText(m.diskSizeBytes)} stub disk)`
          : `v86-config: this machine has media (${m.mediaInfo().map((x) => x.slot).join(', ')}), the source has none (only its ${sizeText(s.disk_size)} stub disk)`,
      );
    }
    check('disk size', s.disk_size, m.diskSizeBytes);
  },
});

export const v86StateVmsd = defineVmsd<StateSection>({
  name: 'v86-state',
  version: 1,
  minimumVersion: 1,
  fields: [field.uint32('length'), field.vbuffer('state', { sizeField: 'length' })],
  preSave(s) {
    s.state = s.machine.saveDeviceState();
    s.length = s.state.length;
  },
  postLoad(s) {
    s.machine.restoreDeviceState(s.state);
  },
});

/** How a medium takes part in a migration. */
type MediumMode = 'copied' | 'shared' | 'read-only';
const MEDIUM_MODES: readonly MediumMode[] = ['copied', 'shared', 'read-only'];

export interface V86MediumInfo {
  slot: string;
  sizeBytes: number;
  mode: MediumMode;
}

export const V86_MEDIA_IDSTR = 'v86-media';
export const V86_MEDIA_VERSION = 1;

/**
 * The `v86-media` section: every medium the source has, written in setup
 * (before any RAM or disk data) so the destination refuses other media
 * before anything moved. START body: be32 count, then per medium a counted
 * string slot, be64 size in bytes and a byte mode (0 copied, 1 shared,
 * 2 read-only). Sent by every machine, one without media with a count of
 * 0: a destination that has media then refuses a source without any in
 * setup too, not only at the end (v86-config, in the device state), after
 * all of RAM moved. Every incoming v86 machine loads it.
 */
class V86MediaHandler implements SaveVMHandlers {
  constructor(private readonly machine: V86Machine) {}

  async saveSetup(out: StreamWriter): Promise<void> {
    const media = this.machine.mediaInfo();
    out.be32(media.length);
    for (const m of media) {
      out.countedString(m.slot);
      out.be64(BigInt(m.sizeBytes));
      out.u8(MEDIUM_MODES.indexOf(m.mode));
    }
  }

  async statePending(): Promise<number> {
    return 0;
  }

  async loadState(input: StreamReader, context: LoadSectionContext): Promise<void> {
    if (context.kind !== 'start') return; // END is empty
    const at = { offset: input.offset, section: { idstr: context.idstr, instanceId: context.instanceId, sectionId: context.sectionId } };
    const fail = (text: string): never => {
      throw new StreamError('handler-failed', `v86 media: ${text}`, at);
    };
    const count = await input.be32();
    if (count > V86_MEDIA_SLOTS.length) fail(`${count} media is more than v86 has slots`);
    const stream: V86MediumInfo[] = [];
    for (let i = 0; i < count; i++) {
      const slot = await input.countedString();
      const size = await input.be64();
      const mode = MEDIUM_MODES[await input.u8()];
      if (!mode) fail(`${slot}: unknown mode`);
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${slot}: size ${size} is too large`);
      stream.push({ slot, sizeBytes: Number(size), mode: mode! });
    }
    const local = new Map(this.machine.mediaInfo().map((m) => [m.slot, m]));
    const describe = (m: V86MediumInfo): string => `${formatSize(m.sizeBytes)}, ${m.mode}`;
    for (const m of stream) {
      const here = local.get(m.slot);
      if (!here) fail(`the source has ${m.slot} (${describe(m)}), this destination has no ${m.slot}; give it one with --${m.slot} PATH`);
      if (here!.sizeBytes !== m.sizeBytes) fail(`${m.slot}: the source's is ${formatSize(m.sizeBytes)}, this destination's is ${formatSize(here!.sizeBytes)}`);
      if (here!.mode !== m.mode) {
        fail(`${m.slot} (${formatSize(m.sizeBytes)}) is ${m.mode} on the source, ${here!.mode} on this destination${m.mode === 'shared' || here!.mode === 'shared' ? ' (give --disk-shared on both sides or on neither)' : ''}`);
      }
      local.delete(m.slot);
    }
    for (const m of local.values()) fail(`this destination has ${m.slot} (${describe(m)}), the source has no ${m.slot}`);
  }
}

/** The bytes of an image given as bytes (a copy: v86 keeps and may write its buffer). */
export function imageBytes(bytes: Uint8Array): ArrayBuffer {
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer;
}

/** A RamBlock over whatever view of v86's memory is current; records sent pages in the shadow. */
class V86RamBlock implements RamBlock {
  readonly idstr = V86_RAM_BLOCK;
  constructor(private readonly machine: V86Machine) {}
  private get dense(): DenseRamBlock {
    return this.machine.denseBlock();
  }
  get lengthBytes(): number {
    return this.machine.ramSizeBytes;
  }
  get pageCount(): number {
    return this.machine.ramSizeBytes / PAGE;
  }
  pageView(pageIndex: number): Uint8Array {
    const view = this.dense.pageView(pageIndex);
    this.machine.noteSent(pageIndex, view);
    return view;
  }
  readPage(pageIndex: number, out: Uint8Array, outOffset = 0): void {
    out.set(this.pageView(pageIndex), outOffset);
  }
  writePage(pageIndex: number, data: Uint8Array): void {
    this.dense.writePage(pageIndex, data);
  }
  fillPage(pageIndex: number, byte: number): void {
    this.dense.fillPage(pageIndex, byte);
  }
  isPageZero(pageIndex: number): boolean {
    const zero = this.dense.isPageZero(pageIndex);
    if (zero) this.machine.noteSent(pageIndex, undefined);
    return zero;
  }
  pageForUpdate(pageIndex: number): Uint8Array {
    return this.dense.pageForUpdate(pageIndex);
  }
  pageUpdated(pageIndex: number): void {
    this.dense.pageUpdated(pageIndex);
  }
  resize(lengthBytes: number): string | undefined {
    return lengthBytes === this.lengthBytes ? undefined : `Size mismatch: ${this.idstr}: 0x${lengthBytes.toString(16)} != 0x${this.lengthBytes.toString(16)} (v86 memory size is ${sizeText(this.lengthBytes)}, the stream's is ${sizeText(lengthBytes)})`;
  }
}

/**
 * No `postcopy`: v86's vCPU and devices read and write guest RAM straight in
 * WebAssembly memory, with no hook to stop an access to a page that has not
 * arrived (short of forking v86), so postcopy is refused for this guest type.
 */
export class V86Machine implements Machine {
  readonly kind = 'v86';
  readonly machineName = V86_MACHINE_NAME;
  readonly serial: SerialOutput;
  readonly ramSizeBytes: number;
  readonly vgaMemorySizeBytes: number;
  /** The stub hda's size without media; 0 with media (v86-config's disk_size). */
  readonly diskSizeBytes: number;
  /** The media are shared with the other side (not copied). */
  readonly sharedDisks: boolean;
  /** The workload range of the test kernel: [1 MiB, min(RAM, 100 MiB)). */
  readonly workloadRange: { startBytes: number; endBytes: number };
  /** Duration of the last pause(), in ms. */
  lastPauseLatencyMs = 0;

  private emulator!: V86Emulator;
  private cpu!: V86Cpu;
  private ramOffset = 0;
  private view: Uint8Array | undefined;
  private dense: DenseRamBlock | undefined;
  private readonly block: V86RamBlock;
  /** The dirty log: RAM as the destination holds it; allocated by startDirtyLog(), freed by stopDirtyLog(). */
  private shadow: ShadowCopy | undefined;
  /** The shadow's contents are not RAM's yet (just started, or RAM was written behind it): the next sync copies all and reports every page. */
  private shadowStale = false;
  private readonly syncChunkBytes: number;
  private readonly syncSliceMs: number;
  /** Guest ms per ms of other work while a migration shares the thread (0: no fair share). */
  private readonly guestTurnPerOtherMs: number;
  private wantRunning = false;
  private pausing = false;
  private throttle = 0;
  private throttleTimer: ReturnType<typeof setTimeout> | undefined;
  private destroyed = false;
  private serialBytes = 0;
  private instructionsHigh = 0;
  private instructionsLast = 0;
  private syncs = 0;
  private lastSyncMs = 0;
  private lastSyncBusyMs = 0;
  private lastSyncSlices = 0;
  private lastSyncDirtyPages = 0;
  private emulatorMs = 0;
  private readonly configSection: ConfigSection;
  private readonly stateSection: StateSection;
  /** Media by slot, once start() opened them. */
  private readonly media = new Map<V86MediaSlot, { device: BlockDevice; buffer: V86DiskBuffer; owned: boolean }>();

  /** Use createV86Machine() (or, in a page, createBrowserV86Machine()). */
  constructor(
    private readonly options: V86MachineOptions,
    private readonly platform: V86Platform,
  ) {
    const ram = options.ramSizeBytes ?? 128 * MiB;
    if (!Number.isSafeInteger(ram) || ram < 2 * MiB || ram % V86_RAM_GRANULE !== 0 || ram > 2 * 1024 * MiB - V86_RAM_GRANULE) {
      throw new RangeError(`v86 RAM ${ram} must be a multiple of 128 KiB from 2 MiB to 2 GiB - 128 KiB`);
    }
    const vga = options.vgaMemorySizeBytes ?? 256 * KiB;
    if (!Number.isSafeInteger(vga) || vga < 256 * KiB || vga > 256 * MiB || (vga & (vga - 1)) !== 0) {
      throw new RangeError(`v86 VGA memory ${vga} must be a power of two from 256 KiB to 256 MiB`);
    }
    const hasMedia = V86_MEDIA_SLOTS.some((slot) => options[slot] !== undefined);
    if (hasMedia && options.diskSizeBytes !== undefined) throw new RangeError('v86: diskSizeBytes sizes the stub disk of a machine without media; this one has media');
    const disk = hasMedia ? 0 : (options.diskSizeBytes ?? 64 * KiB);
    if (!hasMedia && (!Number.isSafeInteger(disk) || disk < 512 || disk % 512 !== 0 || disk > 64 * MiB)) {
      throw new RangeError(`v86 disk ${disk} must be a multiple of 512 up to 64 MiB`);
    }
    for (const slot of V86_MEDIA_SLOTS) {
      const m = options[slot];
      if (m && 'name' in m && m.name !== slot) throw new RangeError(`v86 ${slot}: the block device is named '${m.name}'; name it '${slot}' (the name on the wire)`);
    }
    this.sharedDisks = options.sharedDisks ?? false;
    const chunk = options.syncChunkBytes ?? ram;
    if (!Number.isSafeInteger(chunk) || chunk < SHADOW_GROUP_BYTES || chunk % SHADOW_GROUP_BYTES !== 0) {
      throw new RangeError(`syncChunkBytes ${chunk} must be a positive multiple of ${SHADOW_GROUP_BYTES}`);
    }
    const sliceMs = options.syncSliceMs ?? DEFAULT_SYNC_SLICE_MS;
    if (!Number.isFinite(sliceMs) || sliceMs < 0) throw new RangeError(`syncSliceMs ${sliceMs} must be a number >= 0`);
    this.ramSizeBytes = ram;
    this.vgaMemorySizeBytes = vga;
    this.diskSizeBytes = disk;
    this.syncChunkBytes = chunk;
    this.syncSliceMs = sliceMs;
    const sharePercent = options.guestSharePercent ?? DEFAULT_GUEST_SHARE_PERCENT;
    if (!Number.isFinite(sharePercent) || sharePercent < MIN_GUEST_SHARE_PERCENT || sharePercent > MAX_GUEST_SHARE_PERCENT) {
      throw new RangeError(`v86 guest share: ${sharePercent} is not a percentage from ${MIN_GUEST_SHARE_PERCENT} to ${MAX_GUEST_SHARE_PERCENT}`);
    }
    this.guestTurnPerOtherMs = options.fairShare === false ? 0 : sharePercent / (100 - sharePercent);
    this.workloadRange = { startBytes: MiB, endBytes: Math.min(ram, 100 * MiB) };
    this.block = new V86RamBlock(this);
    this.serial = platform.serial.output;
    this.configSection = { machine: this, memory_size: 0, vga_memory_size: 0, disk_size: 0 };
    this.stateSection = { machine: this, length: 0, state: new Uint8Array(0) };
  }

  /** @internal Create the emulator and wait until it is loaded (stopped). */
  async start(): Promise<void> {
    const o = this.options;
    const platform = this.platform;
    const module = await platform.wasmModule();
    await this.openMedia();
    const image = async (bytes: Uint8Array | string): Promise<{ buffer: ArrayBuffer }> => ({ buffer: await platform.loadImage(bytes) });
    const settings: Record<string, unknown> = {
      ...platform.settings,
      wasm_fn: async (env: object) => (await Wasm.instantiate(module, env)).exports,
      memory_size: this.ramSizeBytes,
      vga_memory_size: this.vgaMemorySizeBytes,
      autostart: false,
      disable_keyboard: true,
      disable_mouse: true,
      disable_speaker: true,
      disable_jit: o.disableJit ?? false,
    };
    if (this.media.size === 0) settings['hda'] = { buffer: new ArrayBuffer(this.diskSizeBytes) };
    for (const [slot, m] of this.media) settings[slot] = m.buffer;
    // A kernel given to v86 boots that kernel, not the disks (v86 would otherwise let the BIOS try the disk first).
    if (this.media.size > 0 && (o.bzimage || o.multiboot !== undefined || !o.bios)) settings['boot_order'] = 0x213;
    if (o.bios) settings['bios'] = await image(o.bios);
    if (o.vgaBios) settings['vga_bios'] = await image(o.vgaBios);
    if (!o.incoming) {
      if (o.bzimage) settings['bzimage'] = await image(o.bzimage);
      if (o.initrd) settings['initrd'] = await image(o.initrd);
      if (o.cmdline !== undefined) settings['cmdline'] = o.cmdline;
      // With a BIOS and no kernel the BIOS boots from the media (the user's own system).
      if (!o.bzimage && (o.multiboot !== undefined || !o.bios)) settings['multiboot'] = await image(o.multiboot ?? platform.defaultMultiboot());
    }
    const emulator = new platform.V86(settings) as V86Emulator;
    this.emulator = emulator;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`v86 did not load within ${LOAD_TIMEOUT_MS} ms`)), LOAD_TIMEOUT_MS);
      emulator.add_listener('emulator-loaded', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.cpu = emulator.v86.cpu;
    // A read-only floppy is write-protected, as the guest sees it: its writes fail there rather than vanish here.
    const floppy = this.media.get('fda');
    const drive = this.cpu.devices.fdc?.drives?.[0];
    if (floppy?.device.readOnly) {
      if (!drive) throw new Error('--fda: v86 made no floppy drive to write-protect');
      drive.read_only = true;
    }
    if (this.cpu.memory_size[0] !== this.ramSizeBytes) {
      throw new Error(`v86 made ${this.cpu.memory_size[0]} bytes of RAM, not ${this.ramSizeBytes}`);
    }
    this.ramOffset = this.cpu.mem8.byteOffset;
    // v86's main loop (one turn, ~5 ms) is a property we can wrap: for stats().emulatorMs and the fair share.
    const mainLoop = this.cpu.main_loop;
    let lastTurnEnd = performance.now();
    this.cpu.main_loop = () => {
      const t = performance.now();
      try {
        let next = mainLoop();
        // While a migration shares this thread (dirty log on, no throttle), the guest runs in proportion to
        // the other work since its last turn (as long at the default share), up to a bound; not while it idles (next >= 1).
        const perOtherMs = this.guestTurnPerOtherMs;
        if (perOtherMs > 0 && this.shadow && this.throttle === 0) {
          const budget = perOtherMs * Math.min(MAX_FAIR_TURN_MS, t - lastTurnEnd);
          while (next < 1 && performance.now() - t < budget && this.wantRunning) next = mainLoop();
        }
        return next;
      } finally {
        lastTurnEnd = performance.now();
        this.emulatorMs += lastTurnEnd - t;
      }
    };
    emulator.add_listener('serial0-output-byte', ((byte: number) => {
      this.serialBytes++;
      this.platform.serial.push(Uint8Array.of(byte));
    }) as (arg: never) => void);
  }

  /** Open the media given as paths, check them all, and wrap each in a v86 disk buffer. */
  private async openMedia(): Promise<void> {
    for (const slot of V86_MEDIA_SLOTS) {
      const given = this.options[slot];
      if (!given) continue;
      let device: BlockDevice;
      let owned = false;
      if ('path' in given && !('name' in given)) {
        // A CD-ROM is read-only media; the other slots open read-write unless asked.
        const readOnly = slot === 'cdrom' || (given.readOnly ?? false);
        try {
          if (!this.platform.openDisk) throw new Error(`v86 ${slot}: a path (${given.path}) needs a platform that opens files; pass a BlockDevice here`);
          device = await this.platform.openDisk(slot, given.path, { readOnly });
        } catch (err) {
          const e = err as NodeJS.ErrnoException;
          throw new Error(`--${slot} ${given.path}: ${e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message}`);
        }
        owned = true;
      } else {
        device = given as BlockDevice;
      }
      this.media.set(slot, { device, buffer: new V86DiskBuffer(device), owned });
      if (slot === 'fda' && !V86_FLOPPY_SIZES_BYTES.includes(device.sizeBytes)) {
        throw new Error(`--fda: ${device.sizeBytes} bytes is no floppy size v86 knows (e.g. 1474560 for 1.44 MB, 2949120 for 2.88 MB)`);
      }
      if ((slot === 'hda' || slot === 'hdb') && device.sizeBytes > 2 ** 48 * 512) throw new Error(`--${slot}: ${device.sizeBytes} bytes is beyond LBA48`);
      // v86's IDE disk has no write protection: its writes would be acknowledged and lost (QEMU 7.2 refuses a read-only IDE disk too).
      if ((slot === 'hda' || slot === 'hdb') && device.readOnly) {
        throw new Error(`--${slot}: a read-only medium cannot be a hard disk (the guest's writes would be lost); give a writable image (a copy), or attach it as --cdrom`);
      }
    }
    if (this.media.has('hdb') && !this.media.has('hda')) throw new Error('--hdb needs --hda (v86 attaches hdb as the slave of hda)');
  }

  /** Each medium: its slot, size and how it migrates (for the v86-media section and reports). */
  mediaInfo(): V86MediumInfo[] {
    return [...this.media].map(([slot, { device }]) => ({
      slot,
      sizeBytes: device.sizeBytes,
      mode: slot === 'cdrom' || device.readOnly ? 'read-only' : this.sharedDisks ? 'shared' : 'copied',
    }));
  }

  /** The medium in `slot`, if any (its BlockDevice). */
  medium(slot: V86MediaSlot): BlockDevice | undefined {
    return this.media.get(slot)?.device;
  }

  /**
   * The disks block migration copies: the writable media (hda, hdb, fda),
   * named by slot; none when they are shared or read-only.
   */
  blockDevices(): BlockDevice[] {
    return this.mediaInfo()
      .filter((m) => m.mode === 'copied')
      .map((m) => this.media.get(m.slot as V86MediaSlot)!.device);
  }

  /** Guest RAM: a view over v86's wasm memory, rebuilt if a memory grow detached the old one. Do not keep it across awaits. */
  get memory(): Uint8Array {
    const buffer = this.cpu.wasm_memory.buffer;
    if (!this.view || this.view.buffer !== buffer) {
      this.view = new Uint8Array(buffer, this.ramOffset, this.ramSizeBytes);
      this.dense = undefined;
    }
    return this.view;
  }

  /** @internal A DenseRamBlock over the current view. */
  denseBlock(): DenseRamBlock {
    const view = this.memory;
    if (!this.dense || this.dense.memory !== view) this.dense = new DenseRamBlock(V86_RAM_BLOCK, view);
    return this.dense;
  }

  /** @internal The engine is sending this page (contents `view`, or zeros): the destination will hold exactly that. */
  noteSent(pageIndex: number, view: Uint8Array | undefined): void {
    const shadow = this.shadow;
    if (!shadow || this.shadowStale) return;
    shadow.setPage(pageIndex * PAGE, view);
  }

  get running(): boolean {
    return this.wantRunning;
  }

  /** The emulator is stopped (not just asked to stop). */
  get isStopped(): boolean {
    return !this.emulator.is_running();
  }

  ramBlocks(): RamBlock[] {
    return [this.block];
  }

  /**
   * Dirty tracking on: allocates the RAM-sized shadow, zeroed (calloc: its
   * pages are only committed when written). The first sync copies RAM into
   * it, except where RAM is zero, and reports every page.
   */
  startDirtyLog(): void {
    this.checkAlive();
    if (this.shadow) return;
    this.shadow = new ShadowCopy(this.ramSizeBytes);
    this.shadowStale = true;
  }

  /** Dirty tracking off: the shadow is dropped (stats().dirtyLogBytes is 0 again). */
  stopDirtyLog(): void {
    this.shadow = undefined;
    this.shadowStale = false;
  }

  /** Bytes the dirty log holds (the shadow copy), 0 while tracking is off. */
  get dirtyLogBytes(): number {
    return this.shadow?.length ?? 0;
  }

  /**
   * Pages that differ from the shadow copy, in slices (`syncSliceMs`, at most
   * `syncChunkBytes`) with a yield to the emulator between them while it
   * runs; the shadow takes the current
   * contents of every reported page. Never misses a write: a page written
   * after its chunk was compared differs from the shadow at the next call.
   * The first call after startDirtyLog() (implicit when tracking is off)
   * reports every page. Rejects if stopDirtyLog() is called meanwhile.
   */
  async syncDirtyLog(sink: DirtyLogSink): Promise<void> {
    this.checkAlive();
    this.startDirtyLog();
    const shadow = this.shadow!;
    const t0 = performance.now();
    const pages = this.ramSizeBytes / PAGE;
    const bitmap = new Uint32Array(Math.ceil(pages / 32));
    let dirty = 0;
    let busyMs = 0;
    let slices = 0;
    // One slice: [at, end) at most, stopping early at a unit boundary once the slice's time is up.
    // Within one slice no guest code runs (same thread), so compare and copy see the same bytes.
    const slice = (at: number, work: (from: number, to: number) => void): number => {
      const s0 = performance.now();
      const limit = Math.min(this.ramSizeBytes, at + this.syncChunkBytes);
      let end = at;
      while (end < limit) {
        const next = Math.min(limit, end + SYNC_UNIT_BYTES);
        work(end, next);
        end = next;
        // While the guest is stopped there is nobody to yield to: one slice does it all.
        if (this.wantRunning && performance.now() - s0 >= this.syncSliceMs) break;
      }
      busyMs += performance.now() - s0;
      slices++;
      return end;
    };
    const yieldToGuest = async (): Promise<void> => {
      await nextTurn();
      this.checkAlive();
      if (this.shadow !== shadow) throw new Error('v86 machine: the dirty log was stopped during a sync');
    };
    if (this.shadowStale) {
      const copy = (from: number, to: number): void => shadow.copyFrom(this.memory, from, to);
      for (let at = 0; at < this.ramSizeBytes; ) {
        at = slice(at, copy);
        if (at < this.ramSizeBytes) await yieldToGuest();
      }
      this.shadowStale = false;
      bitmap.fill(0xffffffff);
      if (pages % 32) bitmap[bitmap.length - 1] = (1 << pages % 32) - 1;
      dirty = pages;
    } else {
      const compare = (from: number, to: number): void => {
        dirty += shadow.compare(this.memory, from, to, bitmap);
      };
      for (let at = 0; at < this.ramSizeBytes; ) {
        at = slice(at, compare);
        if (at < this.ramSizeBytes) await yieldToGuest();
      }
    }
    // Always yield at least once (a small or paused RAM takes one slice): a stopDirtyLog() meanwhile still rejects this sync.
    if (slices === 1) await yieldToGuest();
    this.syncs++;
    this.lastSyncMs = performance.now() - t0;
    this.lastSyncBusyMs = busyMs;
    this.lastSyncSlices = slices;
    this.lastSyncDirtyPages = dirty;
    sink(V86_RAM_BLOCK, bitmap);
  }

  /** Stop the emulator on an instruction boundary; resolves once it has stopped. */
  async pause(): Promise<void> {
    this.checkAlive();
    const t0 = performance.now();
    this.wantRunning = false;
    this.clearThrottleTimer();
    this.pausing = true;
    try {
      await this.emulator.stop();
      // Writes of an asynchronous disk backend land before the state is saved or the disks are copied;
      // shared disks are flushed, so the other side reads every write.
      for (const { buffer } of this.media.values()) await buffer.settled();
      if (this.sharedDisks) for (const { device } of this.media.values()) if (!device.readOnly) await device.flush();
    } finally {
      this.pausing = false;
    }
    this.lastPauseLatencyMs = performance.now() - t0;
  }

  resume(): void {
    this.checkAlive();
    // v86.run() would cancel the pending stop and pause() would never resolve.
    if (this.pausing) throw new Error('v86 machine: resume() was called before the CPU stopped');
    if (this.wantRunning) return;
    this.wantRunning = true;
    this.applyThrottle();
  }

  /** Keep the CPU stopped for `percent` % of every 10 ms slice (0–99). */
  setThrottle(percent: number): void {
    if (!Number.isFinite(percent)) throw new RangeError(`throttle ${percent} is not a number`);
    const p = Math.max(0, Math.min(99, Math.round(percent)));
    if (p === this.throttle) return;
    this.throttle = p;
    if (this.wantRunning && !this.destroyed) this.applyThrottle();
  }

  get throttlePercent(): number {
    return this.throttle;
  }

  registerDevices(registry: SaveStateRegistry): void {
    // Config first: the destination checks it before it touches the device state.
    // Both required on load: without v86-state the CPU and devices would run from their boot state over migrated RAM.
    registry.register({ idstr: 'v86-config', instanceId: 0, vmsd: v86ConfigVmsd, opaque: this.configSection, required: true });
    registry.register({ idstr: 'v86-state', instanceId: 0, vmsd: v86StateVmsd, opaque: this.stateSection, required: true });
    // Sent by every source (without media: a count of 0), so either side's media are checked in setup.
    // Required only by a destination with media: streams of sources that predate it still load elsewhere.
    registry.register({ idstr: V86_MEDIA_IDSTR, instanceId: 0, version: V86_MEDIA_VERSION, handlers: new V86MediaHandler(this), required: this.hasMediaOptions() });
  }

  /** v86's save_state() without RAM (paused only). */
  saveDeviceState(): Uint8Array {
    this.requireStopped('v86-state save');
    const cpu = this.cpu;
    const pack = cpu.pack_memory;
    cpu.pack_memory = () => ({ packed_memory: new Uint8Array(0), bitmap: { get_buffer: () => new ArrayBuffer(0) } });
    try {
      return new Uint8Array(this.emulator.v86.save_state());
    } finally {
      cpu.pack_memory = pack;
    }
  }

  /** v86's restore_state() leaving RAM as it is (paused only). */
  restoreDeviceState(state: Uint8Array): void {
    this.requireStopped('v86-state load');
    const cpu = this.cpu;
    const unpack = cpu.unpack_memory;
    cpu.unpack_memory = () => {};
    try {
      const copy = state.buffer.slice(state.byteOffset, state.byteOffset + state.length) as ArrayBuffer;
      this.emulator.v86.restore_state(copy);
    } catch (err) {
      throw new Error(`v86-state: v86 could not restore the device state: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      cpu.unpack_memory = unpack;
    }
    if (this.cpu.memory_size[0] !== this.ramSizeBytes) throw new Error(`v86-state: memory size mismatch: stream ${sizeText(this.cpu.memory_size[0]!)}, local ${sizeText(this.ramSizeBytes)}`);
    if (this.shadow) this.shadowStale = true; // RAM was written behind the dirty log: the next sync reports everything
  }

  /** Send bytes to the guest's COM1. */
  writeSerial(data: string | Uint8Array): void {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    for (const b of bytes) this.emulator.bus.send('serial0-input', b);
  }

  stats(): V86MachineStats {
    const counter = this.emulator.get_instruction_counter() >>> 0;
    if (counter < this.instructionsLast) this.instructionsHigh += 2 ** 32;
    this.instructionsLast = counter;
    return {
      instructions: this.instructionsHigh + counter,
      serialBytes: this.serialBytes,
      syncs: this.syncs,
      lastSyncMs: this.lastSyncMs,
      lastSyncBusyMs: this.lastSyncBusyMs,
      lastSyncSlices: this.lastSyncSlices,
      lastSyncDirtyPages: this.lastSyncDirtyPages,
      emulatorMs: this.emulatorMs,
      dirtyLogBytes: this.dirtyLogBytes,
      throttlePercent: this.throttle,
    };
  }

  cpuState(): V86CpuState {
    this.requireStopped('cpuState');
    const r = this.cpu.reg32;
    return {
      eip: this.cpu.instruction_pointer[0]! >>> 0,
      eax: r[0]! >>> 0,
      ecx: r[1]! >>> 0,
      edx: r[2]! >>> 0,
      ebx: r[3]! >>> 0,
      esp: r[4]! >>> 0,
      ebp: r[5]! >>> 0,
      esi: r[6]! >>> 0,
      edi: r[7]! >>> 0,
      eflags: this.cpu.flags[0]! >>> 0,
      protectedMode: this.cpu.protected_mode[0] !== 0,
    };
  }

  /** QEMU's memory check over the test kernel's range (paused). */
  checkMemory(): MemoryCheckResult {
    return checkMemory(this.memory, this.workloadRange.startBytes, this.workloadRange.endBytes);
  }

  /** SHA-256 of all of RAM (hex). */
  ramHash(): string {
    if (!this.platform.sha256) throw new Error('v86 machine: ramHash() needs Node (node:crypto); in a page, hash machine.memory with crypto.subtle');
    return this.platform.sha256(this.memory);
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    this.wantRunning = false;
    this.clearThrottleTimer();
    if (this.emulator) await this.emulator.destroy();
    this.stopDirtyLog();
    for (const { device, owned } of this.media.values()) if (owned) await device.close().catch(() => {});
    this.platform.serial.end();
  }

  private hasMediaOptions(): boolean {
    return V86_MEDIA_SLOTS.some((slot) => this.options[slot] !== undefined);
  }

  private applyThrottle(): void {
    this.clearThrottleTimer();
    if (this.throttle === 0) {
      this.emulator.v86.run();
      return;
    }
    const runMs = (THROTTLE_SLICE_MS * (100 - this.throttle)) / 100;
    const stopMs = (THROTTLE_SLICE_MS * this.throttle) / 100;
    const runPhase = (): void => {
      if (!this.wantRunning || this.destroyed) return;
      this.emulator.v86.run();
      this.throttleTimer = setTimeout(stopPhase, runMs);
    };
    const stopPhase = (): void => {
      if (!this.wantRunning || this.destroyed) return;
      this.emulator.v86.stop();
      this.throttleTimer = setTimeout(runPhase, stopMs);
    };
    runPhase();
  }

  private clearThrottleTimer(): void {
    if (this.throttleTimer) clearTimeout(this.throttleTimer);
    this.throttleTimer = undefined;
  }

  private requireStopped(what: string): void {
    if (this.wantRunning || this.emulator.is_running()) throw new Error(`${what}: the v86 CPU must be paused first`);
  }

  private checkAlive(): void {
    if (this.destroyed) throw new Error('v86 machine: destroyed');
  }
}

/**
 * Create a v86 PC and wait until it is loaded. A normal machine boots at once
 * (unless `startPaused`); an `incoming` one stays paused until state is
 * loaded and resume() is called.
 */
export async function createV86Machine(options: V86MachineOptions = {}, platform?: V86Platform): Promise<V86Machine> {
  const machine = new V86Machine(options, platform ?? (await nodeV86Platform()));
  try {
    await machine.start();
  } catch (err) {
    await machine.destroy().catch(() => {});
    throw err;
  }
  if (!options.incoming && !options.startPaused) machine.resume();
  return machine;
}

let nodePlatform: Promise<() => V86Platform> | undefined;

/**
 * Node's platform (v86-node.ts: the npm package, files, a Readable serial),
 * loaded on first use by a path put together at run time, so the browser
 * bundle never includes it; in a page, createBrowserV86Machine() passes its own.
 */
async function nodeV86Platform(): Promise<V86Platform> {
  if (typeof (globalThis as { process?: { versions?: { node?: unknown } } }).process?.versions?.node !== 'string') {
    throw new Error('createV86Machine: outside Node a V86Platform must be given (in a page: createBrowserV86Machine())');
  }
  const specifier = ['.', 'v86-node.js'].join('/');
  nodePlatform ??= import(specifier).then((m: { nodeV86Platform: () => V86Platform }) => m.nodeV86Platform);
  return (await nodePlatform)();
}
