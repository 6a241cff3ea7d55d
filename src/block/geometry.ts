/** Sector and chunk sizes of the block layer (QEMU 7.2 block migration), Node-free: shared by the disk files and the browser core. */
export const SECTOR_BITS = 9;
export const SECTOR_SIZE = 1 << SECTOR_BITS;
/** QEMU's BLK_MIG_BLOCK_SIZE: the unit of block migration and of dirty tracking. */
export const CHUNK_SIZE = 1 << 20;
export const SECTORS_PER_CHUNK = CHUNK_SIZE / SECTOR_SIZE;

/** A disk size for messages: "256 MiB" when whole MiB, else "N bytes". */
export function formatSize(bytes: number | bigint): string {
  const n = BigInt(bytes);
  const mib = BigInt(1024 * 1024);
  return n % mib === 0n ? `${n / mib} MiB` : `${n} bytes`;
}
