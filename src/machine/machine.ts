/**
 * The Machine interface: what a guest type implements so livemig can migrate
 * it without the engine knowing what it is (cloud-hypervisor's small traits:
 * pause, snapshot, dirty log, transport).
 */
import type { Readable } from 'node:stream';
import type { BlockDevice } from '../block/index.js';
import type { RamBlock } from '../ram/index.js';
import type { SaveStateRegistry } from '../savevm/index.js';

/** Receives the pages written since the last sync, one bitmap per RAM block (bit n = page n, LSB first in each word). */
export type DirtyLogSink = (blockIdstr: string, dirtyPages: Uint32Array) => void;

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
  /** Register CPU and device state (not RAM) in the registry; RAM is the engine's `ram` entry. */
  registerDevices(registry: SaveStateRegistry): void;
  /** Serial console output. */
  readonly serial: Readable;
  /** Stop everything and release resources. */
  destroy(): Promise<void>;
}
