/**
 * The `livemig-disks` section: livemig's list of the disks a block migration
 * will copy (name and size), sent in setup before any `block` data.
 *
 * QEMU 7.2's block stream names a device only on its chunks, so a destination
 * learns that it lacks a disk (or has one of another size) when the first
 * chunk for it arrives, after other disks may have been written. With this
 * list the destination refuses before writing anything. Streams from QEMU do
 * not carry it; the `block` loader still checks every chunk by itself.
 *
 * Body of the START section: be32 count, then per disk a counted-string name
 * and a be64 size in bytes. PART sections are never written; the END body is
 * empty.
 */
import type { LoadSectionContext, SaveVMHandlers } from '../savevm/handlers.js';
import { StreamError, type StreamReader, type StreamWriter } from '../wire/index.js';
import type { BlockDevice } from './block-device.js';
import { formatSize } from './geometry.js';

export const DISK_MANIFEST_IDSTR = 'livemig-disks';
export const DISK_MANIFEST_VERSION = 1;
/** More disks than any machine has: a larger count is a corrupt stream, not an allocation. */
const MAX_DISKS = 1024;

export interface DiskManifestEntry {
  name: string;
  sizeBytes: number;
}

/** Read the START body: the disks' names and sizes (bounded, sizes exact). */
export async function readDiskManifest(input: StreamReader, context: LoadSectionContext): Promise<DiskManifestEntry[]> {
  const at = { offset: input.offset, section: { idstr: context.idstr, instanceId: context.instanceId, sectionId: context.sectionId } };
  const count = await input.be32();
  if (count > MAX_DISKS) throw new StreamError('handler-failed', `disk list: ${count} disks is more than ${MAX_DISKS}`, at);
  const entries: DiskManifestEntry[] = [];
  for (let i = 0; i < count; i++) {
    const name = await input.countedString();
    const size = await input.be64();
    if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new StreamError('handler-failed', `disk '${name}': size ${size} is too large`, at);
    entries.push({ name, sizeBytes: Number(size) });
  }
  return entries;
}

/** Source: writes the list in setup. */
export class DiskManifestSaveHandler implements SaveVMHandlers {
  constructor(private readonly devices: readonly BlockDevice[]) {}

  isActive(): boolean {
    return this.devices.length > 0;
  }

  async saveSetup(out: StreamWriter): Promise<void> {
    out.be32(this.devices.length);
    for (const d of this.devices) {
      out.countedString(d.name);
      out.be64(BigInt(d.sizeBytes));
    }
  }

  async statePending(): Promise<number> {
    return 0;
  }

  async loadState(_input: StreamReader, context: LoadSectionContext): Promise<void> {
    throw new StreamError('handler-failed', 'DiskManifestSaveHandler cannot load', { offset: context.offset });
  }
}

/** Destination: checks the list against the local disks before any block data. */
export class DiskManifestLoadHandler implements SaveVMHandlers {
  /** The list as received (empty until the START section). */
  readonly entries: DiskManifestEntry[] = [];

  /** `local`: the destination's disks by name. `hint(name)` tells the user how to give one. */
  constructor(
    private readonly local: ReadonlyMap<string, BlockDevice>,
    private readonly hint: (name: string) => string = () => '',
  ) {}

  async loadState(input: StreamReader, context: LoadSectionContext): Promise<void> {
    if (context.kind !== 'start') return; // END is empty
    const at = { offset: input.offset, section: { idstr: context.idstr, instanceId: context.instanceId, sectionId: context.sectionId } };
    this.entries.push(...(await readDiskManifest(input, context)));
    for (const { name, sizeBytes } of this.entries) {
      const device = this.local.get(name);
      if (!device) {
        throw new StreamError('handler-failed', `the source migrates disk '${name}' (${formatSize(sizeBytes)}) but this destination has no disk of that name${this.hint(name)}`, at);
      }
      if (device.sizeBytes !== sizeBytes) {
        throw new StreamError('handler-failed', `disk '${name}': the source's is ${formatSize(sizeBytes)}, this destination's is ${formatSize(device.sizeBytes)}`, at);
      }
      if (device.readOnly) throw new StreamError('handler-failed', `disk '${name}' is read-only on this destination`, at);
    }
  }
}
