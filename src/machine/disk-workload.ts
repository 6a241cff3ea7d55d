/**
 * The test machine's disk blocks: what the vCPU writes (encodeDiskBlock) and
 * what checkDisk verifies (verifyDiskBlock), in one place so both agree.
 *
 * A block is 4096 bytes: a 16-byte header — magic `LMDK`, block number,
 * generation, a check word over (block, generation), all little-endian u32 —
 * then a payload of u32 words from a mulberry32 stream seeded by the check
 * word. Every byte depends on (block, generation), so a block that holds
 * anything but the generation the guest recorded is caught: an older one is a
 * stale write, no header is a lost write.
 *
 * Imported by the vCPU worker: no imports here.
 */

export const DISK_BLOCK_SIZE_BYTES = 4096;
/** `LMDK` in byte order, read as a little-endian u32. */
export const DISK_BLOCK_MAGIC = 0x4b444d4c;
export const DISK_HEADER_BYTES = 16;

/** murmur3's finaliser: every input bit affects every output bit. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The header's check word for block `block` at generation `generation` (both u32). */
export function diskCheckWord(block: number, generation: number): number {
  return fmix32(fmix32(block ^ DISK_BLOCK_MAGIC) ^ Math.imul(generation, 0x9e3779b1)) >>> 0;
}

/** Fill `into` (at least 4096 bytes) with block `block`'s contents at `generation`. */
export function encodeDiskBlock(into: Uint8Array, block: number, generation: number): void {
  const view = new DataView(into.buffer, into.byteOffset, DISK_BLOCK_SIZE_BYTES);
  const check = diskCheckWord(block, generation);
  view.setUint32(0, DISK_BLOCK_MAGIC, true);
  view.setUint32(4, block, true);
  view.setUint32(8, generation, true);
  view.setUint32(12, check, true);
  let state = check;
  for (let at = DISK_HEADER_BYTES; at < DISK_BLOCK_SIZE_BYTES; at += 4) {
    // mulberry32, as the RAM workload's PRNG.
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    view.setUint32(at, (t ^ (t >>> 14)) >>> 0, true);
  }
}

const hex = (v: number): string => `0x${(v >>> 0).toString(16).padStart(8, '0')}`;

/**
 * Check that `data` (4096 bytes read from block `block`) holds exactly
 * generation `expectedGeneration`; undefined when it does, else what is wrong.
 * `scratch` (4096 bytes) saves an allocation per block when checking many.
 */
export function verifyDiskBlock(data: Uint8Array, block: number, expectedGeneration: number, scratch?: Uint8Array): string | undefined {
  if (data.length < DISK_BLOCK_SIZE_BYTES) return `block ${block}: only ${data.length} bytes read`;
  const view = new DataView(data.buffer, data.byteOffset, DISK_BLOCK_SIZE_BYTES);
  const magic = view.getUint32(0, true);
  if (magic !== DISK_BLOCK_MAGIC) {
    const what = data.subarray(0, DISK_BLOCK_SIZE_BYTES).every((b) => b === 0) ? 'all zeros' : `magic ${hex(magic)}`;
    return `block ${block}: lost write: ${what} where the guest wrote generation ${expectedGeneration}`;
  }
  const named = view.getUint32(4, true);
  if (named !== block) return `block ${block}: misplaced write: the header names block ${named}`;
  const generation = view.getUint32(8, true);
  if (generation !== expectedGeneration) {
    return generation < expectedGeneration
      ? `block ${block}: stale write: generation ${generation} on disk, the guest wrote ${expectedGeneration}`
      : `block ${block}: generation ${generation} on disk is newer than the guest's record ${expectedGeneration} (its RAM is stale)`;
  }
  const check = view.getUint32(12, true);
  if (check !== diskCheckWord(block, generation)) return `block ${block}: corrupt header: check word ${hex(check)}, expected ${hex(diskCheckWord(block, generation))}`;
  const expected = scratch && scratch.length >= DISK_BLOCK_SIZE_BYTES ? scratch : new Uint8Array(DISK_BLOCK_SIZE_BYTES);
  encodeDiskBlock(expected, block, generation);
  // Native compare first (a whole disk is checked at once); the byte loop only runs to name a mismatch.
  const got = Buffer.from(data.buffer, data.byteOffset + DISK_HEADER_BYTES, DISK_BLOCK_SIZE_BYTES - DISK_HEADER_BYTES);
  if (got.equals(Buffer.from(expected.buffer, expected.byteOffset + DISK_HEADER_BYTES, DISK_BLOCK_SIZE_BYTES - DISK_HEADER_BYTES))) return undefined;
  for (let at = DISK_HEADER_BYTES; at < DISK_BLOCK_SIZE_BYTES; at++) {
    if (data[at] !== expected[at]) {
      return `block ${block}: payload mismatch at byte ${at} (0x${data[at]!.toString(16)}, expected 0x${expected[at]!.toString(16)}) at generation ${generation}`;
    }
  }
  return undefined;
}
