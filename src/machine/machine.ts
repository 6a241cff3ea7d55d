/**
 * The Machine interface: what a guest type implements so livemig can migrate
 * it without the engine knowing what it is (cloud-hypervisor's small traits:
 * pause, snapshot, dirty log, transport).
 */
import type { BlockDevice } from '../block/index.js';
import type { RamBlock } from '../ram/index.js';
import type { SaveStateRegistry } from '../savevm/index.js';

/**
 * A machine's serial console output: a Node Readable fits (the CLI's and the
 * test machine's are), and so does a page's small emitter. Chunks are
 * Uint8Arrays (Buffers in Node, so a listener there may take a Buffer: the
 * listener's type is a method's, compared bivariantly).
 */
export interface SerialOutput {
  on(event: 'data', listener: SerialListener): unknown;
}
type SerialListener = { bivarianceHack(chunk: Uint8Array): void }['bivarianceHack'];

/** Receives the pages written since the last sync, one bitmap per RAM block (bit n = page n, LSB first in each word). */
export type DirtyLogSink = (blockIdstr: string, dirtyPages: Uint32Array) => void;

/**
 * A destination machine's side of postcopy (QEMU's userfaultfd, done by the
 * guest type): the guest runs before all of its RAM has arrived, and any
 * access to a page not received yet waits until the engine has it.
 */
export interface PostcopyGuestAccess {
  /**
   * From now until disarm(): before the guest (every vCPU, and anything else
   * of the machine that reads or writes guest RAM, e.g. a device or a disk
   * workload) touches page `page` of block `idstr`, it checks bit `page` of
   * `present.get(idstr)` (bit n = page n, LSB first in each Int32 word; shared
   * memory the engine sets with Atomics.or and wakes with Atomics.notify on
   * the word). A missing page: `onFault(idstr, page)` is called on the main
   * thread (at least once per wait) and the access waits until the bit is set.
   * The engine never writes a page once its bit is set, and the guest never
   * touches a page before: neither sees the other's half-written page.
   * Called before the guest first runs on the destination.
   */
  arm(present: ReadonlyMap<string, Int32Array>, onFault: (idstr: string, page: number) => void): void;
  /** Every page has arrived: stop checking (and stop calling onFault). */
  disarm(): void;
  /** Time the guest spent waiting for missing pages since arm(): in all and per vCPU, ms (QEMU's postcopy-blocktime). */
  blocktime(): { totalMs: number; perVcpuMs: number[] };
}

export interface Machine {
  /** Guest type, e.g. `test`, `v86`. */
  readonly kind: string;
  /** The machine type written in the stream's configuration section; source and destination must agree. */
  readonly machineName: string;
  /** Guest RAM, as blocks the RAM handler reads (source) and writes (destination). */
  ramBlocks(): RamBlock[];
  /**
   * Begin dirty tracking (QEMU's memory_global_dirty_log_start), e.g. when a
   * migration starts. The first syncDirtyLog() after it reports every page
   * (RAM's setup marks every page dirty anyway); later ones report the pages
   * written since the previous sync. May allocate what tracking costs (v86:
   * a RAM-sized shadow copy). Does nothing while tracking is on.
   */
  startDirtyLog(): Promise<void> | void;
  /**
   * End dirty tracking (memory_global_dirty_log_stop), e.g. when a migration
   * completed, failed or was cancelled, and free what tracking costs. Does
   * nothing while tracking is off. A sync running meanwhile rejects.
   */
  stopDirtyLog(): void;
  /**
   * Report every page written since the previous call. Called while tracking
   * is off, it starts tracking first (as startDirtyLog()), so it then reports
   * every page; it stays on until stopDirtyLog(). Exact for guests with a
   * write log; guests without one compare against a shadow copy. Must never
   * miss a write: a page written while this runs is reported now or at the
   * next call.
   */
  syncDirtyLog(sink: DirtyLogSink): Promise<void>;
  /** Stop the vCPUs at a safe point (instruction boundary); resolves once stopped. */
  pause(): Promise<void>;
  /** Start or restart the vCPUs. */
  resume(): void;
  readonly running: boolean;
  /** Slow the guest down: the share of each time slice (0–99 %) the vCPUs are kept from running (auto-converge). */
  setThrottle(percent: number): void;
  /**
   * The machine's disks (optional): on a source, what block migration copies;
   * on a destination, where incoming chunks are written (matched by name).
   */
  blockDevices?(): BlockDevice[];
  /**
   * Postcopy on a destination: how the guest waits for pages that have not
   * arrived. Absent: the guest type cannot run with pages missing, and
   * postcopy is refused for it.
   */
  readonly postcopy?: PostcopyGuestAccess;
  /** Register CPU and device state (not RAM) in the registry; RAM is the engine's `ram` entry. */
  registerDevices(registry: SaveStateRegistry): void;
  /** Serial console output. */
  readonly serial: SerialOutput;
  /** Stop everything and release resources. */
  destroy(): Promise<void>;
}
