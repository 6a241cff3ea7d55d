/**
 * A per-block dirty-page bitmap (QEMU's RAMBlock bmap).
 *
 * Bit i lives in word i >> 5 at bit position i & 31 (least significant bit
 * first), the layout of QEMU's and KVM's bitmaps on a little-endian host, so a
 * machine's dirty log can be merged word by word. The number of set bits is
 * kept up to date so pending-bytes queries are O(1).
 */

/** Set bits in a 32-bit word. */
export function popcount32(v: number): number {
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
}

export class DirtyBitmap {
  readonly words: Uint32Array;
  private setBits = 0;

  constructor(readonly sizeBits: number) {
    if (!Number.isSafeInteger(sizeBits) || sizeBits < 0) throw new RangeError(`DirtyBitmap: bad size ${sizeBits}`);
    this.words = new Uint32Array(Math.ceil(sizeBits / 32));
  }

  /** Number of set bits. */
  get count(): number {
    return this.setBits;
  }

  private check(bit: number): void {
    if (!(bit >= 0 && bit < this.sizeBits && Number.isInteger(bit))) {
      throw new RangeError(`DirtyBitmap: bit ${bit} outside 0..${this.sizeBits - 1}`);
    }
  }

  test(bit: number): boolean {
    this.check(bit);
    return (this.words[bit >>> 5]! & (1 << (bit & 31))) !== 0;
  }

  /** Set a bit; true when it was clear before. */
  set(bit: number): boolean {
    this.check(bit);
    const w = bit >>> 5;
    const mask = 1 << (bit & 31);
    const old = this.words[w]!;
    if (old & mask) return false;
    this.words[w] = old | mask;
    this.setBits++;
    return true;
  }

  /** Clear a bit; true when it was set (QEMU's test_and_clear_bit). */
  clear(bit: number): boolean {
    this.check(bit);
    const w = bit >>> 5;
    const mask = 1 << (bit & 31);
    const old = this.words[w]!;
    if (!(old & mask)) return false;
    this.words[w] = old & ~mask;
    this.setBits--;
    return true;
  }

  /**
   * The run of bits from `start` that are set both here and in `other` (a
   * bitmap of the same size), at most `maxBits` long: cleared in both, and its
   * length returned (0 when `start` is not set in both). Whole words at a time
   * where it can, for long runs (never-written pages of a mostly empty guest).
   */
  clearCommonRun(other: DirtyBitmap, start: number, maxBits: number): number {
    if (other.sizeBits !== this.sizeBits) throw new RangeError(`DirtyBitmap: sizes differ (${this.sizeBits} and ${other.sizeBits} bits)`);
    this.check(start);
    const end = Math.min(this.sizeBits, start + Math.max(0, maxBits));
    const a = this.words;
    const b = other.words;
    let bit = start;
    while (bit < end) {
      const w = bit >>> 5;
      if ((bit & 31) === 0 && bit + 32 <= end && a[w] === 0xffffffff && b[w] === 0xffffffff) {
        a[w] = 0;
        b[w] = 0;
        bit += 32;
        continue;
      }
      const mask = 1 << (bit & 31);
      if ((a[w]! & mask) === 0 || (b[w]! & mask) === 0) break;
      a[w] = a[w]! & ~mask;
      b[w] = b[w]! & ~mask;
      bit++;
    }
    const n = bit - start;
    this.setBits -= n;
    other.setBits -= n;
    return n;
  }

  /** Set `count` bits from `start`; returns how many were newly set. */
  setRange(start: number, count: number): number {
    if (count <= 0) return 0;
    this.check(start);
    this.check(start + count - 1);
    let added = 0;
    for (let bit = start; bit < start + count; bit++) if (this.set(bit)) added++;
    return added;
  }

  setAll(): void {
    this.words.fill(0xffffffff);
    const tail = this.sizeBits & 31;
    if (tail) this.words[this.words.length - 1] = (1 << tail) - 1;
    this.setBits = this.sizeBits;
  }

  clearAll(): void {
    this.words.fill(0);
    this.setBits = 0;
  }

  /** First set bit at or after `from`, or sizeBits when there is none. */
  nextSetBit(from: number): number {
    if (from >= this.sizeBits) return this.sizeBits;
    if (from < 0) from = 0;
    const words = this.words;
    let w = from >>> 5;
    // Mask off bits below `from` in the first word.
    let word = words[w]! & (~0 << (from & 31));
    while (word === 0) {
      if (++w >= words.length) return this.sizeBits;
      word = words[w]!;
    }
    const bit = (w << 5) + (31 - Math.clz32(word & -word));
    return bit < this.sizeBits ? bit : this.sizeBits;
  }

  /** Clear every bit that is set in `source` (same word layout); returns how many were cleared. */
  subtract(source: Uint32Array | DirtyBitmap): number {
    const src = source instanceof DirtyBitmap ? source.words : source;
    const n = Math.min(src.length, this.words.length);
    let removed = 0;
    for (let w = 0; w < n; w++) {
      const gone = this.words[w]! & src[w]!;
      if (gone) {
        this.words[w] = this.words[w]! & ~gone;
        removed += popcount32(gone);
      }
    }
    this.setBits -= removed;
    return removed;
  }

  /**
   * OR a dirty log into the bitmap (same word layout; bits past sizeBits are
   * ignored). Returns how many bits were newly set.
   */
  merge(source: Uint32Array | DirtyBitmap): number {
    const src = source instanceof DirtyBitmap ? source.words : source;
    const n = Math.min(src.length, this.words.length);
    const tail = this.sizeBits & 31;
    let added = 0;
    for (let w = 0; w < n; w++) {
      let incoming = src[w]!;
      if (w === this.words.length - 1 && tail) incoming &= (1 << tail) - 1;
      const old = this.words[w]!;
      const fresh = incoming & ~old;
      if (fresh) {
        this.words[w] = old | fresh;
        added += popcount32(fresh);
      }
    }
    this.setBits += added;
    return added;
  }
}
