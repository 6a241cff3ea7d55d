/**
 * Guest RAM as one SharedArrayBuffer and a byte view of it, or an error that
 * says why not. V8 caps a typed array's length (Node 20: 2^32 elements, so a
 * guest of more than 4 GiB cannot be one Uint8Array) and the host may refuse
 * the memory; V8's own messages for these ("Invalid typed array length:
 * undefined", "Array buffer allocation failed") name neither the size nor
 * the way out.
 */
import { formatSize } from '../block/block-device.js';

export function allocateSharedRam(ramSizeBytes: number, what: string): Uint8Array {
  let buffer: SharedArrayBuffer;
  try {
    buffer = new SharedArrayBuffer(ramSizeBytes);
  } catch (err) {
    throw new RangeError(`${what}: ${formatSize(ramSizeBytes)} of guest RAM could not be allocated (${(err as Error).message}); give it less RAM`);
  }
  try {
    return new Uint8Array(buffer);
  } catch {
    throw new RangeError(`${what}: ${formatSize(ramSizeBytes)} of guest RAM is more than this JavaScript engine holds in one typed array (Node 20: 4 GiB); give it less RAM`);
  }
}
