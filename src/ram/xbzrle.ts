/**
 * XBZRLE (Xor-Based Zero Run-Length Encoding), byte-compatible with QEMU 7.2
 * (migration/xbzrle.c).
 *
 * Encoded data alternates zero-runs (bytes equal in old and new page) and
 * data-runs (the new bytes themselves), starting with a zero-run and never
 * ending with one. Run lengths are a small ULEB128 of at most two bytes
 * (max 0x3fff).
 */
import { rangesEqual, StreamError } from '../wire/index.js';

/** Largest run length a two-byte ULEB128 can hold. */
export const XBZRLE_MAX_RUN = 0x3fff;

/** Write `n` (≤ 0x3fff) at `out[at]`; returns the bytes written (1 or 2). */
function putRunLength(out: Uint8Array, at: number, n: number): number {
  if (n < 0x80) {
    out[at] = n;
    return 1;
  }
  out[at] = (n & 0x7f) | 0x80;
  out[at + 1] = n >>> 7;
  return 2;
}

/**
 * 32-bit views of both pages when they are aligned, for word-at-a-time scans
 * of long runs; made on first use, since most runs are a few bytes.
 */
class WordViews {
  private views: [Uint32Array, Uint32Array] | undefined | null = null;
  constructor(private readonly a: Uint8Array, private readonly b: Uint8Array) {}
  get(): [Uint32Array, Uint32Array] | undefined {
    if (this.views === null) {
      const { a, b } = this;
      this.views = (a.byteOffset | b.byteOffset | a.length) & 3 ? undefined : [new Uint32Array(a.buffer, a.byteOffset, a.length >>> 2), new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2)];
    }
    return this.views;
  }
}

/** Runs are scanned byte by byte this far before the word views are used. */
const BYTE_SCAN_BYTES = 16;

/** Bytes from which a native comparison of the rest beats the word loop (measured: a call costs ~0.2 µs). */
const NATIVE_COMPARE_MIN_BYTES = 256;

/** Whether a[from, n) equals b[from, n), by memcmp on Node. */
function restEqual(a: Uint8Array, b: Uint8Array, from: number): boolean {
  return rangesEqual(a, from, b, from, a.length - from);
}

/** First index ≥ i where the pages differ (length if none). */
function firstDifference(a: Uint8Array, b: Uint8Array, i: number, views: WordViews): number {
  const n = a.length;
  // Most rewritten pages differ in a few places: the unchanged tail is found in one memcmp.
  if (n - i >= NATIVE_COMPARE_MIN_BYTES && restEqual(a, b, i)) return n;
  const scanEnd = Math.min(n, i + BYTE_SCAN_BYTES);
  while (i < scanEnd && a[i] === b[i]) i++;
  if (i < scanEnd || i === n) return i;
  const words = views.get();
  if (words) {
    while (i < n && i & 3) {
      if (a[i] !== b[i]) return i;
      i++;
    }
    const [wa, wb] = words;
    let w = i >>> 2;
    const wn = n >>> 2;
    while (w < wn && wa[w] === wb[w]) w++;
    i = w << 2;
  }
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** First index ≥ i where the pages are equal (length if none). */
function firstEquality(a: Uint8Array, b: Uint8Array, i: number, views: WordViews): number {
  const n = a.length;
  const scanEnd = Math.min(n, i + BYTE_SCAN_BYTES);
  while (i < scanEnd && a[i] !== b[i]) i++;
  if (i < scanEnd || i === n) return i;
  const words = views.get();
  if (words) {
    while (i < n && i & 3) {
      if (a[i] === b[i]) return i;
      i++;
    }
    const [wa, wb] = words;
    let w = i >>> 2;
    const wn = n >>> 2;
    // A word of a^b has a zero byte exactly where the pages agree; the classic
    // "has zero byte" test is exact about whether one exists (not which).
    while (w < wn) {
      const x = wa[w]! ^ wb[w]!;
      if (((x - 0x01010101) & ~x & 0x80808080) !== 0) break;
      w++;
    }
    i = w << 2;
  }
  while (i < n && a[i] !== b[i]) i++;
  return i;
}

/**
 * Encode the change from `oldPage` to `newPage` into `out`.
 *
 * Returns the encoded length, 0 when the pages are equal, or -1 when the
 * encoding would exceed `limitBytes` (default `out.length`; QEMU uses the page
 * size). The overflow checks are QEMU's, including their slight pessimism
 * (two bytes of room are demanded before every run length), so that the same
 * pages overflow here as in QEMU.
 *
 * `newPage` may change while it is encoded (guest RAM of a running guest):
 * the result is then a valid encoding of some mix of old and new bytes, and
 * applying it (xbzrleDecode) to a copy of `oldPage` gives exactly what a
 * destination will hold.
 */
export function xbzrleEncode(oldPage: Uint8Array, newPage: Uint8Array, out: Uint8Array, limitBytes = out.length): number {
  const length = newPage.length;
  if (oldPage.length !== length) throw new RangeError(`xbzrleEncode: page lengths differ (${oldPage.length} vs ${length})`);
  if (length > XBZRLE_MAX_RUN) throw new RangeError(`xbzrleEncode: page of ${length} bytes exceeds the run-length limit`);
  const limit = Math.min(limitBytes, out.length);
  const words = new WordViews(oldPage, newPage);
  let d = 0;
  let i = 0;
  while (i < length) {
    if (d + 2 > limit) return -1;
    const zeroStart = i;
    i = firstDifference(oldPage, newPage, i, words);
    // Runs after the first are never empty. They could only come out empty if
    // newPage changed while it was read (guest RAM encoded in place); a byte
    // is then counted in the other run, which still decodes to a valid page.
    if (i === zeroStart && d > 0) i++;
    if (i - zeroStart === length) return 0; // unchanged page
    if (i === length) return d; // the trailing zero-run is omitted
    d += putRunLength(out, d, i - zeroStart);

    if (d + 2 > limit) return -1;
    const dataStart = i;
    i = firstEquality(oldPage, newPage, i, words);
    if (i === dataStart) i++;
    const dataLength = i - dataStart;
    d += putRunLength(out, d, dataLength);
    if (d + dataLength > limit) return -1;
    // Short runs are common (scattered writes); a loop beats a subarray + set() there.
    if (dataLength < 32) {
      for (let k = dataStart; k < i; k++) out[d++] = newPage[k]!;
    } else {
      out.set(newPage.subarray(dataStart, i), d);
      d += dataLength;
    }
  }
  return d;
}

function decodeError(reason: string, streamOffset: number): StreamError {
  return new StreamError('bad-xbzrle', `Failed to load XBZRLE page - decode error: ${reason}`, { offset: streamOffset });
}

/**
 * Check `encoded` against QEMU's decoder rules without touching any page.
 * Returns the number of page bytes the encoding spans (end of the last
 * data-run). `streamOffset` is where `encoded[0]` sits in the stream; errors
 * point at the offending byte.
 */
export function xbzrleValidate(encoded: Uint8Array, pageBytes: number, streamOffset = 0): number {
  const n = encoded.length;
  let i = 0;
  let d = 0;
  while (i < n) {
    // Rule 2: a run length needs two input bytes left (a zero-run can never end the data).
    if (n - i < 2) throw decodeError(`truncated zero-run length at encoded byte ${i}`, streamOffset + i);
    let count = encoded[i]!;
    let used = 1;
    if (count & 0x80) {
      if (encoded[i + 1]! & 0x80) throw decodeError(`run length longer than two bytes at encoded byte ${i}`, streamOffset + i);
      count = (count & 0x7f) | (encoded[i + 1]! << 7);
      used = 2;
    }
    // Rule 1: only the very first zero-run may be empty.
    if (i !== 0 && count === 0) throw decodeError(`empty zero-run at encoded byte ${i}`, streamOffset + i);
    i += used;
    d += count;
    if (d > pageBytes) throw decodeError(`zero-run passes the end of the page (${d} > ${pageBytes})`, streamOffset + i - used);

    if (n - i < 2) throw decodeError(`truncated data-run length at encoded byte ${i}`, streamOffset + i);
    count = encoded[i]!;
    used = 1;
    if (count & 0x80) {
      if (encoded[i + 1]! & 0x80) throw decodeError(`run length longer than two bytes at encoded byte ${i}`, streamOffset + i);
      count = (count & 0x7f) | (encoded[i + 1]! << 7);
      used = 2;
    }
    if (count === 0) throw decodeError(`empty data-run at encoded byte ${i}`, streamOffset + i);
    i += used;
    if (d + count > pageBytes) throw decodeError(`data-run passes the end of the page (${d + count} > ${pageBytes})`, streamOffset + i - used);
    if (i + count > n) throw decodeError(`data-run of ${count} bytes passes the end of the encoded data`, streamOffset + i - used);
    d += count;
    i += count;
  }
  return d;
}

/**
 * Apply `encoded` over `page` (its current contents are the "old" page; bytes
 * outside data-runs keep their value). The whole encoding is validated first,
 * so on error the page is left untouched. Returns the bytes spanned.
 * An empty encoding is valid and changes nothing (QEMU accepts it too).
 */
export function xbzrleDecode(encoded: Uint8Array, page: Uint8Array, streamOffset = 0): number {
  const spanned = xbzrleValidate(encoded, page.length, streamOffset);
  const n = encoded.length;
  let i = 0;
  let d = 0;
  while (i < n) {
    let count = encoded[i++]!;
    if (count & 0x80) count = (count & 0x7f) | (encoded[i++]! << 7);
    d += count;
    count = encoded[i++]!;
    if (count & 0x80) count = (count & 0x7f) | (encoded[i++]! << 7);
    if (count < 32) {
      for (let k = 0; k < count; k++) page[d + k] = encoded[i + k]!;
    } else {
      page.set(encoded.subarray(i, i + count), d);
    }
    d += count;
    i += count;
  }
  return spanned;
}
