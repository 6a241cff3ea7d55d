/**
 * RAM blocks: named, page-granular guest memory regions (QEMU's RAMBlock).
 *
 * Two implementations:
 * - DenseRamBlock over a caller-supplied Uint8Array (a machine's RAM);
 * - SparseRamBlock storing only the pages a stream actually wrote, so that
 *   analysing a stream that claims terabytes of RAM allocates nothing for them.
 */
import { rangesEqual, TARGET_PAGE_SIZE } from '../wire/index.js';

const ZERO_PAGE = new Uint8Array(TARGET_PAGE_SIZE);

/** True when every byte is zero (word-at-a-time when aligned). */
const ZERO_PAGE_BUFFER = new Uint8Array(TARGET_PAGE_SIZE);
const PAGE_WORDS = TARGET_PAGE_SIZE / 8;
/** prepareForLoad() checks pages for zero this many at a time (one memcmp for a zero group). */
const PREPARE_GROUP_PAGES = 16;
const ZERO_GROUP_BUFFER = new Uint8Array(PREPARE_GROUP_PAGES * TARGET_PAGE_SIZE);

export function isZeroBytes(data: Uint8Array): boolean {
  let i = 0;
  if (((data.byteOffset | data.length) & 3) === 0) {
    const words = new Uint32Array(data.buffer, data.byteOffset, data.length >>> 2);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0) return false;
    return true;
  }
  for (; i < data.length; i++) if (data[i] !== 0) return false;
  return true;
}

export interface RamBlock {
  readonly idstr: string;
  /** Used length in bytes, a multiple of TARGET_PAGE_SIZE. */
  readonly lengthBytes: number;
  /** lengthBytes / TARGET_PAGE_SIZE. */
  readonly pageCount: number;
  /**
   * The page's current contents. Dense blocks return a view into RAM (no
   * copy); sparse blocks return the stored page or a shared zero page. Treat
   * it as read-only and do not keep it across writes.
   */
  pageView(pageIndex: number): Uint8Array;
  /**
   * Optional: true when every write to the block's memory after pageView()
   * returned a view shows in the next dirty sync (a log of writes, as the
   * test machine's vCPU keeps). The source may then send a page's bytes as
   * they are when the OS takes them, later than pageView(), without copying
   * them first: a page written meanwhile is dirty again and goes out again.
   * A log that compares RAM with what was read (v86's shadow copy) must not
   * say so: a page written and written back before the next sync would keep
   * the in-between bytes on the destination.
   */
  readonly logsEveryWrite?: boolean;
  /** Copy the page into `out` at `outOffset`. */
  readPage(pageIndex: number, out: Uint8Array, outOffset?: number): void;
  writePage(pageIndex: number, data: Uint8Array): void;
  /** Fill the page with one byte value (QEMU skips the write for 0 on a zero page). */
  fillPage(pageIndex: number, byte: number): void;
  isPageZero(pageIndex: number): boolean;
  /**
   * A writable view of the page for decoding in place (XBZRLE, raw reads);
   * call pageUpdated() after changing it.
   */
  pageForUpdate(pageIndex: number): Uint8Array;
  /** Tell the block a pageForUpdate() view was changed. */
  pageUpdated(pageIndex: number): void;
  /**
   * Blocks over one contiguous memory: a page is written in place at
   * pageOffsetForUpdate() (which stands for pageForUpdate() and
   * pageUpdated() around the write), with no view per page.
   */
  readonly memory?: Uint8Array;
  pageOffsetForUpdate?(pageIndex: number): number;
  /**
   * Change the used length (QEMU's resizeable blocks). Absent or returning an
   * error message when the block cannot take that length.
   */
  resize?(lengthBytes: number): string | undefined;
  /**
   * A destination, as a load begins: touch every page (the first write to a
   * never-used page costs a page fault and zeroing by the kernel, which would
   * otherwise land in the load, perhaps in the downtime). With
   * `trackZeroPages`, also note which pages are all zero, while they are hot
   * in the cache: until endLoad(), a zero fillPage() on a page still zero
   * since then costs nothing. Only for loads where every write to the block's
   * memory goes through this interface (not multifd: its worker threads write
   * guest RAM directly). A block with preparePages() only begins here (no page
   * is touched) and is prepared a slice at a time by it.
   */
  prepareForLoad?(options?: { trackZeroPages?: boolean }): void;
  /**
   * After prepareForLoad(): touch pages [firstPage, firstPage + count) and
   * note the zero ones. The load may have written them already, or write them
   * meanwhile from another thread (multifd): preparing changes no byte (the
   * touch is an atomic or of 0).
   */
  preparePages?(firstPage: number, count: number): void;
  /** The load is over (whatever its outcome): forget what prepareForLoad() noted. */
  endLoad?(): void;
  /**
   * Pages nothing has written since the memory was allocated, so they are
   * zero without reading them (bit n = page n, LSB first; a fresh copy), or
   * undefined when the owner cannot vouch for that (as virtio-balloon's free
   * page hints: a hint the source may use to skip work). Reading a page that
   * was never written costs a page fault per 4 KiB in JavaScript (no huge zero
   * page), which dominates a mostly empty guest. Asked after dirty tracking
   * started: a page written after the answer is in the dirty log.
   */
  pristinePages?(): Uint32Array | undefined;
}

function checkLength(what: string, lengthBytes: number): void {
  if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0 || lengthBytes % TARGET_PAGE_SIZE !== 0) {
    throw new RangeError(`${what}: length ${lengthBytes} is not a non-negative multiple of ${TARGET_PAGE_SIZE}`);
  }
}

function checkIdstr(idstr: string): void {
  const bytes = new TextEncoder().encode(idstr);
  if (bytes.length === 0 || bytes.length > 255) throw new RangeError(`RAM block name must be 1..255 bytes: '${idstr}'`);
}

export interface DenseRamBlockOptions {
  /** Used length (default: the whole memory). */
  lengthBytes?: number;
  /** Allow the incoming block list to change the used length, up to memory.length. */
  resizeable?: boolean;
  /**
   * The owner's account of pages never written since the memory was
   * allocated (see RamBlock.pristinePages). The block itself stops answering
   * once anything wrote through it (a load).
   */
  pristinePages?: () => Uint32Array | undefined;
  /** RamBlock.logsEveryWrite (default false). */
  logsEveryWrite?: boolean;
}

/** A block over caller-owned memory; page views are windows into it. */
export class DenseRamBlock implements RamBlock {
  private usedBytes: number;
  /**
   * The memory as 8-byte words (when aligned): a page whose first word is not 0
   * is not a zero page, decided without a call into native code (most pages of
   * a busy guest). A word reads as 0 only for the +0/-0 bit patterns.
   */
  private readonly words: Float64Array | undefined;
  /**
   * Between prepareForLoad() and endLoad(): 1 for a page known to be all zero
   * (every write through this block clears it); undefined otherwise.
   */
  private knownZero: Uint8Array | undefined;
  /** Something wrote through this block (a load): the owner's pristine-page account no longer holds. */
  private writtenThrough = false;
  readonly logsEveryWrite: boolean;

  constructor(readonly idstr: string, readonly memory: Uint8Array, private readonly options: DenseRamBlockOptions = {}) {
    checkIdstr(idstr);
    checkLength(`RAM block '${idstr}' memory`, memory.length);
    this.usedBytes = options.lengthBytes ?? memory.length;
    checkLength(`RAM block '${idstr}'`, this.usedBytes);
    if (this.usedBytes > memory.length) throw new RangeError(`RAM block '${idstr}': length ${this.usedBytes} exceeds its memory (${memory.length})`);
    this.logsEveryWrite = options.logsEveryWrite ?? false;
    this.words = memory.byteOffset % 8 === 0 ? new Float64Array(memory.buffer, memory.byteOffset, Math.floor(memory.length / 8)) : undefined;
  }

  get lengthBytes(): number {
    return this.usedBytes;
  }

  get pageCount(): number {
    return this.usedBytes / TARGET_PAGE_SIZE;
  }

  pageView(pageIndex: number): Uint8Array {
    if (!(pageIndex >= 0 && pageIndex < this.pageCount)) throw new RangeError(`RAM block '${this.idstr}': page ${pageIndex} is not in 0..${this.pageCount - 1}`);
    // A view made over the buffer costs about half of subarray() (7.5–14 against 12–27 ms per 262144 views).
    return new Uint8Array(this.memory.buffer, this.memory.byteOffset + pageIndex * TARGET_PAGE_SIZE, TARGET_PAGE_SIZE);
  }

  readPage(pageIndex: number, out: Uint8Array, outOffset = 0): void {
    out.set(this.pageView(pageIndex), outOffset);
  }

  writePage(pageIndex: number, data: Uint8Array): void {
    this.writtenThrough = true;
    if (this.knownZero !== undefined) this.knownZero[pageIndex] = 0;
    this.memory.set(data.subarray(0, TARGET_PAGE_SIZE), pageIndex * TARGET_PAGE_SIZE);
  }

  fillPage(pageIndex: number, byte: number): void {
    this.writtenThrough = true;
    const knownZero = this.knownZero;
    if (byte === 0) {
      // Still zero since prepareForLoad(): nothing to compare, nothing to write.
      if (knownZero !== undefined && knownZero[pageIndex] === 1) return;
      // As QEMU's ram_handle_compressed: leave an already-zero page alone (no write fault).
      if (this.isPageZero(pageIndex)) {
        if (knownZero !== undefined) knownZero[pageIndex] = 1;
        return;
      }
    }
    const at = pageIndex * TARGET_PAGE_SIZE;
    this.memory.fill(byte, at, at + TARGET_PAGE_SIZE);
    if (knownZero !== undefined) knownZero[pageIndex] = byte === 0 ? 1 : 0;
  }

  isPageZero(pageIndex: number): boolean {
    if (this.words !== undefined && this.words[pageIndex * PAGE_WORDS] !== 0) return false;
    const at = pageIndex * TARGET_PAGE_SIZE;
    // memcmp against a zero page: about 3x faster than a word loop in JS.
    return rangesEqual(this.memory, at, ZERO_PAGE_BUFFER, 0, TARGET_PAGE_SIZE);
  }

  pageForUpdate(pageIndex: number): Uint8Array {
    this.writtenThrough = true;
    if (this.knownZero !== undefined) this.knownZero[pageIndex] = 0;
    return this.pageView(pageIndex);
  }

  pageUpdated(pageIndex: number): void {
    // Also after the change: a page prepared (found zero) while it was being read in pieces is not zero now.
    if (this.knownZero !== undefined) this.knownZero[pageIndex] = 0;
  }

  pageOffsetForUpdate(pageIndex: number): number {
    this.writtenThrough = true;
    if (this.knownZero !== undefined) this.knownZero[pageIndex] = 0;
    return pageIndex * TARGET_PAGE_SIZE;
  }

  prepareForLoad(options: { trackZeroPages?: boolean } = {}): void {
    this.writtenThrough = true;
    // Every page is unknown (0) until preparePages() has looked at it.
    this.knownZero = options.trackZeroPages ? new Uint8Array(this.memory.length / TARGET_PAGE_SIZE) : undefined;
  }

  preparePages(firstPage: number, count: number): void {
    const memory = this.memory;
    const end = Math.min(this.pageCount, firstPage + count);
    const knownZero = this.knownZero;
    for (let first = firstPage; first < end; first += PREPARE_GROUP_PAGES) {
      const groupEnd = Math.min(end, first + PREPARE_GROUP_PAGES);
      // An atomic or of 0 is a write access (the fault allocates the page) that changes no byte, whoever writes it meanwhile.
      for (let page = first; page < groupEnd; page++) Atomics.or(memory, page * TARGET_PAGE_SIZE, 0);
      if (knownZero === undefined) continue;
      const from = first * TARGET_PAGE_SIZE;
      const to = groupEnd * TARGET_PAGE_SIZE;
      if (rangesEqual(memory, from, ZERO_GROUP_BUFFER, 0, to - from)) knownZero.fill(1, first, groupEnd);
      else for (let page = first; page < groupEnd; page++) if (this.isPageZero(page)) knownZero[page] = 1;
    }
  }

  endLoad(): void {
    this.knownZero = undefined;
  }

  pristinePages(): Uint32Array | undefined {
    return this.writtenThrough ? undefined : this.options.pristinePages?.();
  }

  resize(lengthBytes: number): string | undefined {
    if (!this.options.resizeable) return `Size mismatch: ${this.idstr}: 0x${lengthBytes.toString(16)} != 0x${this.usedBytes.toString(16)}`;
    if (lengthBytes % TARGET_PAGE_SIZE !== 0 || lengthBytes > this.memory.length) {
      return `Length 0x${lengthBytes.toString(16)} exceeds the maximum 0x${this.memory.length.toString(16)} of resizeable block ${this.idstr} (or is not page aligned)`;
    }
    this.usedBytes = lengthBytes;
    return undefined;
  }
}

export interface SparseRamBlockOptions {
  /**
   * Keep page contents (default true). Without it the block only absorbs
   * writes: an analyzer that needs record statistics but not memory uses
   * constant space whatever the stream holds.
   */
  storeContents?: boolean;
}

/** A block that stores only non-zero pages that were written. */
export class SparseRamBlock implements RamBlock {
  private readonly pages = new Map<number, Uint8Array>();
  private readonly scratch: Uint8Array | undefined;
  readonly pageCount: number;

  constructor(readonly idstr: string, readonly lengthBytes: number, options: SparseRamBlockOptions = {}) {
    checkIdstr(idstr);
    checkLength(`RAM block '${idstr}'`, lengthBytes);
    this.pageCount = lengthBytes / TARGET_PAGE_SIZE;
    this.scratch = options.storeContents === false ? new Uint8Array(TARGET_PAGE_SIZE) : undefined;
  }

  /** Number of pages held in memory (non-zero pages written so far). */
  get storedPageCount(): number {
    return this.pages.size;
  }

  /** Indices of stored pages, ascending. */
  storedPageIndices(): number[] {
    return [...this.pages.keys()].sort((a, b) => a - b);
  }

  pageView(pageIndex: number): Uint8Array {
    return this.pages.get(pageIndex) ?? ZERO_PAGE;
  }

  readPage(pageIndex: number, out: Uint8Array, outOffset = 0): void {
    out.set(this.pageView(pageIndex), outOffset);
  }

  writePage(pageIndex: number, data: Uint8Array): void {
    const page = data.subarray(0, TARGET_PAGE_SIZE);
    if (this.scratch || isZeroBytes(page)) {
      this.pages.delete(pageIndex);
      return;
    }
    const stored = this.pages.get(pageIndex);
    if (stored) stored.set(page);
    else this.pages.set(pageIndex, page.slice());
  }

  fillPage(pageIndex: number, byte: number): void {
    if (this.scratch || byte === 0) {
      this.pages.delete(pageIndex);
      return;
    }
    const stored = this.pages.get(pageIndex);
    if (stored) stored.fill(byte);
    else this.pages.set(pageIndex, new Uint8Array(TARGET_PAGE_SIZE).fill(byte));
  }

  isPageZero(pageIndex: number): boolean {
    const stored = this.pages.get(pageIndex);
    return stored === undefined || isZeroBytes(stored);
  }

  pageForUpdate(pageIndex: number): Uint8Array {
    if (this.scratch) return this.scratch;
    let page = this.pages.get(pageIndex);
    if (!page) {
      page = new Uint8Array(TARGET_PAGE_SIZE);
      this.pages.set(pageIndex, page);
    }
    return page;
  }

  pageUpdated(pageIndex: number): void {
    // Drop pages that ended up all zero so memory tracks real content only.
    const page = this.pages.get(pageIndex);
    if (page && isZeroBytes(page)) this.pages.delete(pageIndex);
  }
}
