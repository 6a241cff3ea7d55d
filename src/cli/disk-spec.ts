/**
 * `--disk PATH[,size=SIZE][,id=NAME]`: a raw disk image for the guest.
 *
 * On a source the image is opened (created sparse when missing, which needs a
 * size). On a destination (`--incoming`) it names where the migrated disk
 * goes: the data is written to `PATH.livemig-incoming` and renamed to PATH
 * once the migration completed; the size is `size=` or that of an existing
 * image at PATH. `id` names the device as on the wire (default `disk0`):
 * source and destination match disks by it.
 */
import { BlockDevice, IncomingDiskImage } from '../block/index.js';
import { parseSize } from '../migration/size.js';

export interface DiskSpec {
  path: string;
  id: string;
  sizeBytes?: number;
}

export function parseDiskSpec(text: string): DiskSpec {
  const [path, ...options] = text.split(',');
  if (!path) throw new Error(`--disk: expected PATH[,size=SIZE][,id=NAME], got '${text}'`);
  const spec: DiskSpec = { path, id: 'disk0' };
  for (const option of options) {
    const eq = option.indexOf('=');
    const key = eq < 0 ? option : option.slice(0, eq);
    const value = eq < 0 ? '' : option.slice(eq + 1);
    if (key === 'size') spec.sizeBytes = parseSize(value, '--disk size');
    else if (key === 'id' && /^[A-Za-z0-9_.-]{1,64}$/.test(value)) spec.id = value;
    else throw new Error(`--disk: unknown or bad option '${option}' (known: size=SIZE, id=NAME of letters, digits, _ . -)`);
  }
  if (spec.sizeBytes !== undefined && (spec.sizeBytes <= 0 || spec.sizeBytes % 512 !== 0)) {
    throw new Error(`--disk size: ${spec.sizeBytes} is not a positive multiple of 512 bytes`);
  }
  return spec;
}

/** Source side: open (or create) the image. */
export async function openSourceDisk(spec: DiskSpec): Promise<BlockDevice> {
  try {
    return await BlockDevice.open(spec.id, spec.path, spec.sizeBytes !== undefined ? { create: true, size: spec.sizeBytes } : {});
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
