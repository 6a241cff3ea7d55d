/**
 * The guest's dirty rate by page sampling, as QEMU 7.2's `calc-dirty-rate`
 * measures it in its default mode (migration/dirtyrate.c): hash a random
 * sample of each RAM block's pages, wait, hash them again, and scale the
 * share that changed to the blocks' size and the time waited. It only reads
 * guest RAM, so it runs beside a migration without touching the dirty log.
 *
 * Pure and browser-safe: the caller waits and says how long it waited.
 */
import type { RamBlock } from './block.js';

/** QEMU skips blocks smaller than this (MIN_RAMBLOCK_SIZE, 128 KiB): option ROMs and the like. */
export const MIN_SAMPLED_BLOCK_BYTES = 128 << 10;

interface BlockSample {
  readonly block: RamBlock;
  readonly pages: Uint32Array;
  readonly hashes: Uint32Array;
}

/** What one measurement found: QEMU's DirtyStat.page_sampling totals. */
export interface SampleCount {
  /** Sampled pages whose contents changed. */
  dirtySamples: number;
  /** Pages sampled in all. */
  totalSamples: number;
  /** The sampled blocks' size, MiB (QEMU's total_block_mem_MB, each block's rounded down). */
  totalBlockMiB: number;
}

/**
 * A 32-bit hash of one page, to tell whether it changed (not a checksum on
 * the wire: any good mixing serves). Word by word where the view is aligned.
 */
export function pageHash(page: Uint8Array): number {
  let h1 = 0x811c9dc5;
  let h2 = 0x9e3779b9;
  if ((page.byteOffset & 3) === 0 && page.length % 4 === 0) {
    const words = new Uint32Array(page.buffer, page.byteOffset, page.length >>> 2);
    for (let i = 0; i < words.length; i++) {
      const w = words[i]!;
      h1 = Math.imul(h1 ^ w, 0x01000193);
      h2 = Math.imul((h2 + w) | 0, 0x85ebca6b) ^ (h2 >>> 15);
    }
  } else {
    for (let i = 0; i < page.length; i++) {
      const b = page[i]!;
      h1 = Math.imul(h1 ^ b, 0x01000193);
      h2 = Math.imul((h2 + b) | 0, 0x85ebca6b) ^ (h2 >>> 15);
    }
  }
  return (h1 ^ Math.imul(h2, 0xc2b2ae35)) >>> 0;
}

export class PageSampler {
  private readonly samples: BlockSample[] = [];

  /**
   * Picks and hashes the samples now: `samplesPerGiB` pages per GiB of each
   * block (rounded down, as QEMU's), chosen with `random` (0 <= x < 1).
   */
  constructor(blocks: readonly RamBlock[], samplesPerGiB: number, random: () => number = Math.random) {
    for (const block of blocks) {
      if (block.lengthBytes < MIN_SAMPLED_BLOCK_BYTES) continue;
      const count = Math.floor((block.lengthBytes * samplesPerGiB) / 2 ** 30);
      const pages = new Uint32Array(count);
      const hashes = new Uint32Array(count);
      for (let i = 0; i < count; i++) {
        pages[i] = Math.floor(random() * block.pageCount);
        hashes[i] = pageHash(block.pageView(pages[i]!));
      }
      this.samples.push({ block, pages, hashes });
    }
  }

  /** Hashes the samples again and counts those that changed. */
  count(): SampleCount {
    let dirtySamples = 0;
    let totalSamples = 0;
    let totalBlockMiB = 0;
    for (const { block, pages, hashes } of this.samples) {
      for (let i = 0; i < pages.length; i++) {
        if (pageHash(block.pageView(pages[i]!)) !== hashes[i]) dirtySamples++;
      }
      totalSamples += pages.length;
      totalBlockMiB += Math.floor(block.lengthBytes / 2 ** 20);
    }
    return { dirtySamples, totalSamples, totalBlockMiB };
  }
}

/**
 * QEMU's update_dirtyrate(): MB/s (its MB are MiB), rounded down, from what
 * changed over `elapsedMs`; 0 when nothing was sampled.
 */
export function dirtyRateMiBps(count: SampleCount, elapsedMs: number): number {
  if (count.totalSamples === 0 || elapsedMs <= 0) return 0;
  return Math.floor((count.dirtySamples * count.totalBlockMiB * 1000) / (count.totalSamples * elapsedMs));
}
