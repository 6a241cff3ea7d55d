/**
 * QEMU's migration-test memory-consistency check (facts 8.2), for RAM written
 * by the sequential workload, and a RAM hash for workloads it does not fit.
 */
import { createHash } from 'node:crypto';

export { checkMemory, type MemoryCheckResult } from './memory-consistency.js';

/** SHA-256 of the bytes (hex): "RAM at resume equals RAM at stop" for any workload. */
export function ramSha256(ram: Uint8Array): string {
  return createHash('sha256').update(ram).digest('hex');
}
