/**
 * QEMU's migration-test memory-consistency check (facts 8.2), for RAM written
 * by the sequential workload, and a RAM hash for workloads it does not fit.
 */
import { createHash } from 'node:crypto';

export { checkMemory, type MemoryCheckResult } from './memory-consistency.js';

/** Bytes per Hash#update: Node refuses one input of 2 GiB or more ("data is too long"). */
const HASH_SLICE_BYTES = 256 << 20;

/** SHA-256 of the bytes (hex): "RAM at resume equals RAM at stop" for any workload, any size. */
export function ramSha256(ram: Uint8Array): string {
  const hash = createHash('sha256');
  for (let at = 0; at < ram.length; at += HASH_SLICE_BYTES) hash.update(ram.subarray(at, Math.min(ram.length, at + HASH_SLICE_BYTES)));
  return hash.digest('hex');
}
