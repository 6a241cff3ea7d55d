/**
 * The loader's view of the destination's RAM blocks.
 *
 * A machine has a fixed set of blocks: the incoming block list must name known
 * blocks with matching sizes (QEMU: `Unknown ramblock "…", cannot accept
 * migration`). A stream analyzer has no machine: it creates sparse blocks as
 * the block list names them, with a bound on the total it will believe.
 */
import { TARGET_PAGE_SIZE } from '../wire/index.js';
import { SparseRamBlock, type RamBlock, type SparseRamBlockOptions } from './block.js';

/** A block, or why the table refuses. */
export type RamBlockResult = { block: RamBlock; error?: undefined } | { block?: undefined; error: string };

export interface RamBlockTable {
  /** An entry of the MEM_SIZE block list: the block that takes it, or an error. */
  announce(idstr: string, lengthBytes: number): RamBlockResult;
  /** The block a page record names (not necessarily listed before: L3). */
  lookup(idstr: string): RamBlockResult;
  /** All blocks currently known. */
  blocks(): RamBlock[];
}

/** A machine's blocks. */
export class FixedRamBlockTable implements RamBlockTable {
  private readonly byName = new Map<string, RamBlock>();

  constructor(blocks: Iterable<RamBlock>) {
    for (const block of blocks) {
      if (this.byName.has(block.idstr)) throw new RangeError(`duplicate RAM block name '${block.idstr}'`);
      this.byName.set(block.idstr, block);
    }
  }

  announce(idstr: string, lengthBytes: number): RamBlockResult {
    const block = this.byName.get(idstr);
    if (!block) return { error: `Unknown ramblock "${idstr}", cannot accept migration` };
    if (lengthBytes !== block.lengthBytes) {
      // QEMU resizes resizeable blocks and refuses a different size otherwise.
      const error = block.resize
        ? block.resize(lengthBytes)
        : `Size mismatch: ${idstr}: 0x${lengthBytes.toString(16)} != 0x${block.lengthBytes.toString(16)}`;
      if (error !== undefined) return { error };
    }
    return { block };
  }

  lookup(idstr: string): RamBlockResult {
    const block = this.byName.get(idstr);
    return block ? { block } : { error: `Can't find block ${idstr}` };
  }

  blocks(): RamBlock[] {
    return [...this.byName.values()];
  }
}

/** Default bound on the RAM an analysed stream may claim: 1 PiB. */
export const MAX_ANALYSIS_RAM_BYTES = 2 ** 50;

export interface AnalysisRamBlockTableOptions extends SparseRamBlockOptions {
  /** Refuse block lists adding up to more than this (default 2^50). */
  maxTotalBytes?: number;
  /**
   * Accept page records for blocks the block list did not name (a real
   * destination may have them, L3), as blocks of unknown length bounded by
   * maxTotalBytes (default true).
   */
  acceptUnlistedBlocks?: boolean;
}

/** Sparse blocks created on demand, for stream analysis. */
export class AnalysisRamBlockTable implements RamBlockTable {
  private readonly byName = new Map<string, SparseRamBlock>();
  private readonly unlisted = new Set<string>();
  private listedBytes = 0;
  readonly maxTotalBytes: number;

  constructor(private readonly options: AnalysisRamBlockTableOptions = {}) {
    this.maxTotalBytes = options.maxTotalBytes ?? MAX_ANALYSIS_RAM_BYTES;
  }

  announce(idstr: string, lengthBytes: number): RamBlockResult {
    const known = this.byName.get(idstr);
    if (known && !this.unlisted.has(idstr)) {
      if (known.lengthBytes === lengthBytes) return { block: known };
      return { error: `Size mismatch: ${idstr}: 0x${lengthBytes.toString(16)} != 0x${known.lengthBytes.toString(16)} (listed twice)` };
    }
    if (lengthBytes % TARGET_PAGE_SIZE !== 0) {
      return { error: `RAM block ${idstr}: length 0x${lengthBytes.toString(16)} is not a multiple of the page size` };
    }
    if (this.listedBytes + lengthBytes > this.maxTotalBytes) {
      return { error: `RAM block ${idstr}: total RAM would exceed the analysis limit of 0x${this.maxTotalBytes.toString(16)} bytes` };
    }
    if (known) {
      // Pages arrived before the block was listed; keep them if they fit.
      const last = known.storedPageIndices().at(-1);
      if (last !== undefined && last >= lengthBytes / TARGET_PAGE_SIZE) {
        return { error: `RAM block ${idstr}: listed length 0x${lengthBytes.toString(16)} is below pages already received` };
      }
    }
    const block = new SparseRamBlock(idstr, lengthBytes, this.options);
    if (known) for (const index of known.storedPageIndices()) block.writePage(index, known.pageView(index));
    this.unlisted.delete(idstr);
    this.byName.set(idstr, block);
    this.listedBytes += lengthBytes;
    return { block };
  }

  lookup(idstr: string): RamBlockResult {
    const known = this.byName.get(idstr);
    if (known) return { block: known };
    if (this.options.acceptUnlistedBlocks === false) return { error: `Can't find block ${idstr}` };
    const bound = Math.floor(this.maxTotalBytes / TARGET_PAGE_SIZE) * TARGET_PAGE_SIZE;
    const block = new SparseRamBlock(idstr, bound, this.options);
    this.byName.set(idstr, block);
    this.unlisted.add(idstr);
    return { block };
  }

  /** Whether a block was created by a page record rather than the block list. */
  isUnlisted(idstr: string): boolean {
    return this.unlisted.has(idstr);
  }

  /** Sum of the lengths the block list announced. */
  get listedTotalBytes(): number {
    return this.listedBytes;
  }

  blocks(): SparseRamBlock[] {
    return [...this.byName.values()];
  }
}
