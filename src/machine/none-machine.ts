/**
 * `--machine none`: QEMU's `-M none -m SIZE` — RAM only, no vCPU, no devices
 * but what QEMU's stream for it carries: configuration `none`, the RAM block
 * `ram`, and the `timer` section (globalstate is the engine's). So a real
 * QEMU `-M none` peer with the same RAM size migrates to and from it.
 *
 * Nothing but the loader writes RAM, so the dirty log reports every page
 * once (the first sync after tracking starts) and nothing after. A source's
 * RAM can be filled with a pattern (fillNoneRam) so tests have bytes to compare.
 */
import { PassThrough } from 'node:stream';
import { DenseRamBlock, RAM_IDSTR, type RamBlock } from '../ram/index.js';
import type { SaveStateRegistry } from '../savevm/index.js';
import { defineVmsd, field } from '../vmstate/index.js';
import type { DirtyLogSink, Machine, PostcopyGuestAccess } from './machine.js';
import { ramSha256 } from './memory-check.js';
import { fillNoneRam, type NonePattern } from './ram-pattern.js';
import { allocateSharedRam } from './guest-ram.js';

// The RAM patterns live in a browser-safe module (the engine's warm-up fills its scratch RAM with them).
export { fillNoneRam, parseNonePattern, type NonePattern } from './ram-pattern.js';

export const NONE_MACHINE_NAME = 'none';
const PAGE_SIZE_BYTES = 4096;

/**
 * QEMU's `timer` section (cpu-timers.c vmstate_timers, instance 0, version 2):
 * the guest's tick counter and virtual clock at stop. The subsections exist
 * only with icount, which -M none peers do not use.
 */
interface TimerSection {
  readonly machine: NoneMachine;
  cpu_ticks_offset: bigint;
  cpu_clock_offset: bigint;
}

export const noneTimerVmsd = defineVmsd<TimerSection>({
  name: 'timer',
  version: 2,
  minimumVersion: 1,
  fields: [field.int64('cpu_ticks_offset'), field.unused(8), field.int64('cpu_clock_offset', { fromVersion: 2 })],
  preSave(s) {
    s.cpu_clock_offset = BigInt(Math.round(s.machine.vmClockNs()));
    s.cpu_ticks_offset = s.machine.ticksAtZero + s.cpu_clock_offset;
  },
  postLoad(s) {
    s.machine.setClock(s.cpu_clock_offset, s.cpu_ticks_offset);
  },
});

export interface NoneMachineOptions {
  /** Guest RAM, a whole number of 4096-byte pages. */
  ramSizeBytes: number;
  /** A source's RAM content (default zero); a destination's RAM starts zero and is loaded. */
  pattern?: NonePattern;
  /** Start paused, waiting for a migration (as QEMU -incoming). */
  incoming?: boolean;
}

export class NoneMachine implements Machine {
  readonly kind = 'none';
  readonly machineName = NONE_MACHINE_NAME;
  /** Nothing in the machine writes a console: the stream stays empty (and ends at destroy). */
  readonly serial = new PassThrough();
  /** Shared, so multifd's worker threads read and write it directly. */
  readonly memory: Uint8Array;
  private readonly block: RamBlock;
  private isRunning: boolean;
  private tracking = false;
  private reportAll = false;
  /** The virtual clock (ns) as of the last stop; running time adds to it. QEMU's cpu_clock_offset at stop. */
  private clockAtStopNs = 0;
  private runningSinceMs: number | undefined;
  /** QEMU counts ticks in host cycles; livemig has none to read, so ticks are kept as the loaded offset plus clock ns. */
  ticksAtZero = 0n;
  private readonly section: TimerSection;
  /** Postcopy: no vCPU or device touches RAM (only the loader, which is the engine), so there is never a page to wait for. */
  readonly postcopy: PostcopyGuestAccess = {
    arm() {},
    disarm() {},
    blocktime: () => ({ totalMs: 0, perVcpuMs: [] }),
  };

  constructor(options: NoneMachineOptions) {
    const { ramSizeBytes } = options;
    if (!Number.isSafeInteger(ramSizeBytes) || ramSizeBytes <= 0 || ramSizeBytes % PAGE_SIZE_BYTES !== 0) {
      throw new Error(`--ram: the none machine needs a whole number of 4096-byte pages, got ${ramSizeBytes} bytes`);
    }
    this.memory = allocateSharedRam(ramSizeBytes, 'none machine');
    if (!options.incoming && options.pattern) fillNoneRam(this.memory, options.pattern);
    // Only the loader writes this RAM (never a source's): pages may go out in place.
    this.block = new DenseRamBlock(RAM_IDSTR, this.memory, { logsEveryWrite: true });
    this.isRunning = !options.incoming;
    if (this.isRunning) this.runningSinceMs = performance.now();
    this.section = { machine: this, cpu_ticks_offset: 0n, cpu_clock_offset: 0n };
  }

  get running(): boolean {
    return this.isRunning;
  }

  /** The virtual clock in ns: time spent running, carried over migrations (QEMU_CLOCK_VIRTUAL). */
  vmClockNs(): number {
    return this.clockAtStopNs + (this.runningSinceMs === undefined ? 0 : (performance.now() - this.runningSinceMs) * 1e6);
  }

  /** Loaded `timer` state: the clock continues from the source's. */
  setClock(clockNs: bigint, ticks: bigint): void {
    this.clockAtStopNs = Number(clockNs);
    this.ticksAtZero = ticks - clockNs;
    if (this.runningSinceMs !== undefined) this.runningSinceMs = performance.now();
  }

  ramBlocks(): RamBlock[] {
    return [this.block];
  }

  startDirtyLog(): void {
    if (this.tracking) return;
    this.tracking = true;
    this.reportAll = true;
  }

  stopDirtyLog(): void {
    this.tracking = false;
    this.reportAll = false;
  }

  /** Every page on the first sync after tracking starts, nothing later: only the loader writes this RAM. */
  async syncDirtyLog(sink: DirtyLogSink): Promise<void> {
    this.startDirtyLog();
    if (!this.reportAll) return;
    this.reportAll = false;
    const pages = this.memory.length / PAGE_SIZE_BYTES;
    const log = new Uint32Array(Math.ceil(pages / 32)).fill(0xffffffff);
    if (pages % 32 !== 0) log[log.length - 1] = (2 ** (pages % 32) - 1) >>> 0;
    sink(RAM_IDSTR, log);
  }

  async pause(): Promise<void> {
    if (!this.isRunning) return;
    this.clockAtStopNs = this.vmClockNs();
    this.runningSinceMs = undefined;
    this.isRunning = false;
  }

  resume(): void {
    if (this.isRunning) return;
    this.runningSinceMs = performance.now();
    this.isRunning = true;
  }

  /** No vCPU to slow down. */
  setThrottle(_percent: number): void {}

  registerDevices(registry: SaveStateRegistry): void {
    registry.register({ idstr: 'timer', instanceId: 0, vmsd: noneTimerVmsd, opaque: this.section });
  }

  ramHash(): string {
    return ramSha256(this.memory);
  }

  async destroy(): Promise<void> {
    this.isRunning = false;
    this.serial.end();
  }
}
