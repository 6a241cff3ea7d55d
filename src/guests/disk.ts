/**
 * Disk images for guests (`--disk PATH[,size=SIZE][,id=NAME]`, parsed by the
 * CLI into a DiskSpec).
 *
 * On a source the image is opened (created sparse when missing, which needs a
 * size). On a destination it names where the migrated disk goes: the data is
 * written to `PATH.livemig-incoming` and renamed to PATH once the migration
 * completed; the size is `size=` or that of an existing image at PATH. `id`
 * names the device as on the wire: source and destination match disks by it.
 */
import { FileBlockDevice, IncomingDiskImage } from '../block/index.js';

export interface DiskSpec {
  path: string;
  id: string;
  sizeBytes?: number;
}

/** Source side: open (or create) the image. */
export async function openSourceDisk(spec: DiskSpec): Promise<FileBlockDevice> {
  try {
    return await FileBlockDevice.open(spec.id, spec.path, spec.sizeBytes !== undefined ? { create: true, size: spec.sizeBytes } : {});
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new Error(`--disk: ${spec.path} does not exist; give size=SIZE to create it`);
    throw err;
  }
}

/** Destination side: a fresh image under the temporary name. */
export function openIncomingDisk(spec: DiskSpec): Promise<IncomingDiskImage> {
  return IncomingDiskImage.create(spec.id, spec.path, spec.sizeBytes);
}
