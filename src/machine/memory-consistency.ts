/**
 * QEMU's migration-test memory-consistency check (facts 8.2), for RAM written
 * by the sequential workload. Nothing of Node here: a page's v86 machine runs
 * it too (memory-check.ts adds the RAM hash, with node:crypto).
 */
const PAGE_SIZE_BYTES = 4096;
/** QEMU prints the first 10 inconsistencies; we keep as many for the reason text. */
const MAX_REPORTED = 10;

export interface MemoryCheckResult {
  ok: boolean;
  /** Why the check failed, naming the first bad pages (absent when ok). */
  reason?: string;
  /** The first byte of the first page of the range. */
  firstByte: number;
  /** Guest-physical address of the page after which the value drops by one (the vCPU's position), if there is one. */
  dropAt?: number;
  /** Number of inconsistent pages (QEMU's `bad`). */
  badPages: number;
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/**
 * Over [rangeStartBytes, rangeEndBytes) in page steps: every page's first byte
 * must equal the previous one, except at most one place where it drops by 1
 * (mod 256) — the pages before the vCPU's position were incremented once more
 * than the ones after it. Anything else is a lost or duplicated update.
 * As QEMU, the comparison goes on from each page's own value after a mismatch,
 * so one corrupted page counts as the (at most two) edges it creates.
 */
export function checkMemory(ram: Uint8Array, rangeStartBytes: number, rangeEndBytes: number): MemoryCheckResult {
  if (rangeStartBytes % PAGE_SIZE_BYTES !== 0 || rangeEndBytes % PAGE_SIZE_BYTES !== 0 || rangeStartBytes >= rangeEndBytes || rangeEndBytes > ram.length) {
    return { ok: false, reason: `bad range ${hex(rangeStartBytes)}..${hex(rangeEndBytes)} for ${ram.length} bytes of RAM`, firstByte: 0, badPages: 0 };
  }
  const firstByte = ram[rangeStartBytes]!;
  let last = firstByte;
  let dropAt: number | undefined;
  let badPages = 0;
  const reported: string[] = [];
  for (let at = rangeStartBytes + PAGE_SIZE_BYTES; at < rangeEndBytes; at += PAGE_SIZE_BYTES) {
    const b = ram[at]!;
    if (b !== last) {
      if (((b + 1) & 0xff) === last && dropAt === undefined) {
        dropAt = at;
      } else {
        badPages++;
        if (reported.length < MAX_REPORTED) {
          reported.push(`page ${hex(at)} holds ${hex(b)} after ${hex(last)}${dropAt === undefined ? '' : ` (edge already at ${hex(dropAt)})`}`);
        }
      }
    }
    last = b;
  }
  const result: MemoryCheckResult = { ok: badPages === 0, firstByte, badPages };
  if (dropAt !== undefined) result.dropAt = dropAt;
  if (badPages > 0) {
    result.reason = `memory inconsistent: ${badPages} bad page(s), first byte ${hex(firstByte)}: ${reported.join('; ')}${badPages > reported.length ? '; …' : ''}`;
  }
  return result;
}
