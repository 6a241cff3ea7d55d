/**
 * The XBZRLE page cache, with QEMU's replacement rule (migration/page_cache.c).
 *
 * Direct-mapped: a page's slot is its global page number & (slots - 1). An
 * occupied slot holding another page is not replaced while that page is
 * "fresh": its age (the dirty-sync count when it was last inserted or hit)
 * plus CACHED_PAGE_LIFETIME (2) is still above the current sync count. Slot
 * memory is allocated on first use, as QEMU does.
 */
import { TARGET_PAGE_SIZE } from '../wire/index.js';

const CACHED_PAGE_LIFETIME = 2;

export const DEFAULT_XBZRLE_CACHE_BYTES = 64 * 1024 * 1024;

/**
 * Slots of a cache of `cacheBytes`; throws RangeError for sizes QEMU refuses
 * (below one page, or not a power-of-two number of pages).
 */
export function xbzrleCacheSlots(cacheBytes: number, pageBytes = TARGET_PAGE_SIZE): number {
  if (!Number.isSafeInteger(cacheBytes) || cacheBytes < pageBytes) {
    throw new RangeError(`XBZRLE cache size ${cacheBytes} is smaller than the page size`);
  }
  const slots = Math.floor(cacheBytes / pageBytes);
  if ((slots & (slots - 1)) !== 0 || slots > 2 ** 30) {
    throw new RangeError(`XBZRLE cache size ${cacheBytes}: number of pages (${slots}) is not a power of two`);
  }
  return slots;
}

export class XbzrlePageCache {
  readonly slotCount: number;
  /** Global page number held by each slot, -1 when empty. */
  private readonly addresses: Float64Array;
  private readonly ages: Float64Array;
  private readonly data: Array<Uint8Array | undefined>;
  private used = 0;

  constructor(readonly cacheBytes: number = DEFAULT_XBZRLE_CACHE_BYTES, readonly pageBytes = TARGET_PAGE_SIZE) {
    const slots = xbzrleCacheSlots(cacheBytes, pageBytes);
    this.slotCount = slots;
    this.addresses = new Float64Array(slots).fill(-1);
    this.ages = new Float64Array(slots);
    this.data = new Array<Uint8Array | undefined>(slots);
  }

  slotOf(pageNumber: number): number {
    // pageNumber may exceed 2^32: take the low bits without 32-bit truncation.
    return pageNumber % this.slotCount;
  }

  /** Slots holding a page. */
  get usedSlots(): number {
    return this.used;
  }

  /**
   * The cached copy of the page, or undefined on a miss. A hit refreshes the
   * slot's age (QEMU's cache_is_cached).
   */
  lookup(pageNumber: number, generation: number): Uint8Array | undefined {
    const slot = this.slotOf(pageNumber);
    if (this.addresses[slot] !== pageNumber) return undefined;
    this.ages[slot] = generation;
    return this.data[slot];
  }

  /** Whether the page is cached, without refreshing its age (for estimates). */
  has(pageNumber: number): boolean {
    return this.addresses[this.slotOf(pageNumber)] === pageNumber;
  }

  /**
   * Store a copy of `page`. Returns the cached copy, or undefined when the
   * slot holds another page that is still fresh (QEMU's cache_insert = -1).
   */
  insert(pageNumber: number, page: Uint8Array, generation: number): Uint8Array | undefined {
    const slot = this.slotOf(pageNumber);
    let stored = this.data[slot];
    if (stored && this.addresses[slot] !== pageNumber && this.ages[slot]! + CACHED_PAGE_LIFETIME > generation) {
      return undefined;
    }
    if (!stored) {
      stored = new Uint8Array(this.pageBytes);
      this.data[slot] = stored;
      this.used++;
    }
    stored.set(page.subarray(0, this.pageBytes));
    this.ages[slot] = generation;
    this.addresses[slot] = pageNumber;
    return stored;
  }

  clear(): void {
    this.addresses.fill(-1);
    this.ages.fill(0);
    this.data.fill(undefined);
    this.used = 0;
  }
}
