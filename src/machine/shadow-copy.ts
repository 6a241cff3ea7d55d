/**
 * The v86 machine's dirty log: a copy of guest RAM (what the destination
 * holds), compared with RAM to find the pages written since.
 *
 * The copy is allocated zeroed (calloc: nothing committed) and a byte per
 * 64 KiB group says "this group of the copy is all zero". Zero groups are
 * never copied, compared against a static zero group instead of the copy
 * (so reading them neither faults the copy's memory in nor streams it from
 * RAM) and stay uncommitted until a non-zero page lands in them: a guest
 * that uses 100 MiB of 256 costs ~100 MiB of copy, and a pass over its zero
 * memory reads RAM only.
 *
 * Offsets are bytes from the start of RAM; ranges start and end on group
 * boundaries (the RAM size is a multiple of 128 KiB).
 *
 * Plain Uint8Arrays (a page's v86 machine has one too); the comparisons are
 * native-bytes.ts's, Buffer's memcmp on Node.
 */
import { rangesEqual } from '../wire/native-bytes.js';

const PAGE = 4096;
export const SHADOW_GROUP_BYTES = 64 * 1024;
const ZERO_GROUP = new Uint8Array(SHADOW_GROUP_BYTES);
const ZERO_PAGE = ZERO_GROUP.subarray(0, PAGE);

export class ShadowCopy {
  /** The copy; where zeroGroups says so, all zero (and maybe not committed). */
  readonly bytes: Uint8Array;
  /** 1: the group is all zero in the copy. */
  private readonly zeroGroups: Uint8Array;

  constructor(readonly length: number) {
    if (length % SHADOW_GROUP_BYTES !== 0) throw new RangeError(`shadow length ${length} is not a multiple of ${SHADOW_GROUP_BYTES}`);
    this.bytes = new Uint8Array(length);
    this.zeroGroups = new Uint8Array(length / SHADOW_GROUP_BYTES).fill(1);
  }

  /** Make the copy equal RAM over [from, to). */
  copyFrom(ram: Uint8Array, from: number, to: number): void {
    const shadow = this.bytes;
    for (let g = from; g < to; g += SHADOW_GROUP_BYTES) {
      const gEnd = g + SHADOW_GROUP_BYTES;
      const gi = g / SHADOW_GROUP_BYTES;
      if (rangesEqual(ram, g, ZERO_GROUP, 0, SHADOW_GROUP_BYTES)) {
        if (this.zeroGroups[gi] === 0) {
          shadow.fill(0, g, gEnd);
          this.zeroGroups[gi] = 1;
        }
      } else {
        shadow.set(ram.subarray(g, gEnd), g);
        this.zeroGroups[gi] = 0;
      }
    }
  }

  /**
   * Compare RAM with the copy over [from, to): groups first (memcmp), then
   * the pages of a differing group (first word, then memcmp). Each differing
   * page is set in `bitmap` (bit n = page n) and copied into the copy
   * (adjacent ones in one copy). Returns how many differed.
   */
  compare(ram: Uint8Array, from: number, to: number, bitmap: Uint32Array): number {
    const shadow = this.bytes;
    // First-word peek: a page written at its start (common) costs no memcmp call. Only for 4-aligned views.
    const aligned = (ram.byteOffset & 3) === 0 && (shadow.byteOffset & 3) === 0;
    const ram32 = aligned ? new Int32Array(ram.buffer, ram.byteOffset + from, (to - from) >>> 2) : undefined;
    const shadow32 = aligned ? new Int32Array(shadow.buffer, shadow.byteOffset + from, (to - from) >>> 2) : undefined;
    let dirty = 0;
    for (let g = from; g < to; g += SHADOW_GROUP_BYTES) {
      const gEnd = g + SHADOW_GROUP_BYTES;
      const gi = g / SHADOW_GROUP_BYTES;
      const zero = this.zeroGroups[gi] === 1;
      if (zero ? rangesEqual(ram, g, ZERO_GROUP, 0, SHADOW_GROUP_BYTES) : rangesEqual(ram, g, shadow, g, SHADOW_GROUP_BYTES)) continue;
      let run = -1; // start of the current run of differing pages
      for (let p = g; p < gEnd; p += PAGE) {
        const w = (p - from) >>> 2;
        const same = zero
          ? (ram32 === undefined || ram32[w] === 0) && rangesEqual(ram, p, ZERO_PAGE, 0, PAGE)
          : (ram32 === undefined || ram32[w] === shadow32![w]) && rangesEqual(ram, p, shadow, p, PAGE);
        if (same) {
          if (run >= 0) shadow.set(ram.subarray(run, p), run);
          run = -1;
          continue;
        }
        if (run < 0) run = p;
        const page = p / PAGE;
        bitmap[page >>> 5]! |= 1 << (page & 31);
        dirty++;
      }
      if (run >= 0) shadow.set(ram.subarray(run, gEnd), run);
      this.zeroGroups[gi] = 0; // a page of it is not zero any more
    }
    return dirty;
  }

  /** The page at byte `at` now holds `view` (PAGE bytes), or zeros. */
  setPage(at: number, view: Uint8Array | undefined): void {
    const gi = Math.floor(at / SHADOW_GROUP_BYTES);
    if (view) {
      this.bytes.set(view, at);
      this.zeroGroups[gi] = 0;
    } else if (this.zeroGroups[gi] === 0 && !rangesEqual(this.bytes, at, ZERO_PAGE, 0, PAGE)) {
      this.bytes.fill(0, at, at + PAGE);
    }
  }
}
