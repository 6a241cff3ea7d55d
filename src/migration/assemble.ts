/**
 * Assembling a migration: which save-state entries take part, in which order,
 * with which handlers. One function per direction, so that source and
 * destination register the same sections the same way; the loops that run a
 * migration (outgoing.ts, incoming.ts) get a ready registry and never decide
 * what is saved.
 */
// The block section's own modules, not block/index.js: that also holds the raw-image devices (node:fs).
import { BlockLoadHandler, BlockSaveHandler } from '../block/block-handler.js';
import { BLOCK_SECTION_IDSTR, BLOCK_SECTION_VERSION } from '../block/block-records.js';
import { DISK_MANIFEST_IDSTR, DISK_MANIFEST_VERSION, DiskManifestLoadHandler, DiskManifestSaveHandler } from '../block/manifest.js';
import type { Machine } from '../machine/machine.js';
import { FixedRamBlockTable, RAM_IDSTR, RAM_SECTION_VERSION, RamLoadHandler, RamSaveHandler } from '../ram/index.js';
import { createGlobalState, globalStateVmsd, SaveStateRegistry, type GlobalState } from '../savevm/index.js';
import type { MigrationCapabilities, MigrationParameters } from './config.js';

export interface OutgoingAssembly {
  registry: SaveStateRegistry;
  ram: RamSaveHandler;
  /** Present when disks are copied. */
  block: BlockSaveHandler | undefined;
  globalState: GlobalState;
}

export interface OutgoingAssemblyOptions {
  parameters: Readonly<MigrationParameters>;
  capabilities: Readonly<MigrationCapabilities>;
  /** Copy the machine's disks (capability `block`, or `migrate` with `blk`). */
  copyDisks: boolean;
  /** RAM's dirty-log sync, owned by the loop (it counts passes and drives auto-converge). */
  syncDirtyLog(ram: RamSaveHandler): Promise<void>;
  onDiskProgress?(percent: number): void;
}

/** The source's registry: disks (manifest, block) before RAM, as QEMU registers them; then devices; then globalstate. */
export function assembleOutgoing(machine: Machine, o: OutgoingAssemblyOptions): OutgoingAssembly {
  const ram = new RamSaveHandler(machine.ramBlocks(), {
    xbzrle: o.capabilities.xbzrle,
    xbzrleCacheBytes: o.parameters['xbzrle-cache-size'],
    syncDirtyLog: (h) => o.syncDirtyLog(h),
  });
  const registry = new SaveStateRegistry();
  const disks = o.copyDisks ? (machine.blockDevices?.() ?? []) : [];
  let block: BlockSaveHandler | undefined;
  if (disks.length > 0) {
    // Disks go first: RAM waits for their bulk phase (RAM sent during it would be dirty again).
    registry.register({ idstr: DISK_MANIFEST_IDSTR, version: DISK_MANIFEST_VERSION, handlers: new DiskManifestSaveHandler(disks) });
    block = new BlockSaveHandler(disks, { zeroBlocks: o.capabilities['zero-blocks'], ...(o.onDiskProgress ? { onProgress: o.onDiskProgress } : {}) });
    registry.register({ idstr: BLOCK_SECTION_IDSTR, version: BLOCK_SECTION_VERSION, handlers: block });
  }
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram });
  machine.registerDevices(registry);
  const globalState = createGlobalState();
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: globalState });
  return { registry, ram, block, globalState };
}

export interface IncomingAssembly {
  registry: SaveStateRegistry;
  table: FixedRamBlockTable;
  ram: RamLoadHandler;
  manifest: DiskManifestLoadHandler;
  block: BlockLoadHandler;
  globalState: GlobalState;
}

export interface IncomingAssemblyOptions {
  table: FixedRamBlockTable;
  /** Multifd: wait for every channel's pages at a RAM sync point. */
  multifdSync?(): Promise<void>;
  /** Appended to "has no disk of that name" (how to give this destination one). */
  diskHint?(name: string): string;
  onDiskProgress?(percent: number): void;
}

/** The destination's registry: every section a source may send (disks are matched by name when they come). */
export function assembleIncoming(machine: Machine, o: IncomingAssemblyOptions): IncomingAssembly {
  const registry = new SaveStateRegistry();
  const ram = new RamLoadHandler(o.table, o.multifdSync ? { multifdSync: o.multifdSync } : {});
  const localDisks = new Map((machine.blockDevices?.() ?? []).map((d) => [d.name, d]));
  const manifest = new DiskManifestLoadHandler(localDisks, o.diskHint);
  const block = new BlockLoadHandler(localDisks, o.onDiskProgress ? { onProgress: o.onDiskProgress } : {});
  registry.register({ idstr: DISK_MANIFEST_IDSTR, version: DISK_MANIFEST_VERSION, handlers: manifest });
  registry.register({ idstr: BLOCK_SECTION_IDSTR, version: BLOCK_SECTION_VERSION, handlers: block });
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram });
  machine.registerDevices(registry);
  const globalState = createGlobalState();
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: globalState });
  return { registry, table: o.table, ram, manifest, block, globalState };
}
