/**
 * The source side of the `ram` entry (QEMU 7.2 migration/ram.c, precopy).
 *
 * setup: block list + EOS, every page dirty.
 * iterate: send dirty pages from where the last section stopped until the
 *   rate limit (shouldStop) or the time budget says stop, then EOS.
 * complete: sync the dirty log, send everything left, EOS.
 *
 * Per page, as QEMU: all-zero → ZERO record; else, once XBZRLE is active
 * (after the first complete pass), cache hit → XBZRLE record (or nothing if
 * unchanged, or PAGE on overflow); cache miss → insert + PAGE.
 *
 * Not produced: postcopy page sizes and x-ignore-shared addresses in the
 * block list, multifd, compression (none of them are needed for a 7.2
 * destination in plain precopy).
 */
import type { LoadSectionContext, SaveVMHandlers } from '../savevm/handlers.js';
import { TARGET_PAGE_SIZE, type StreamReader, type StreamWriter } from '../wire/index.js';
import type { RamBlock } from './block.js';
import { FixedRamBlockTable } from './block-table.js';
import { DirtyBitmap } from './dirty-bitmap.js';
import { RAM_RECORD_HEADER_BYTES } from './flags.js';
import { RamLoadHandler } from './load.js';
import { DEFAULT_XBZRLE_CACHE_BYTES, XbzrlePageCache, xbzrleCacheSlots } from './page-cache.js';
import { RamRecordWriter } from './record-writer.js';
import { xbzrleDecode, xbzrleEncode } from './xbzrle.js';
import type { MultifdSender } from './multifd/sender.js';

/** QEMU's MAX_WAIT: an iterate call stops after this many ms (checked every 64 pages). */
export const RAM_ITERATE_MAX_WAIT_MS = 50;
/** Hand buffered output to the sink once this much is queued, so END sections stay bounded in memory. */
const DRAIN_THRESHOLD_BYTES = 4 << 20;
/** In postcopy: a requested page waits behind at most this much output. */
const POSTCOPY_DRAIN_THRESHOLD_BYTES = 256 << 10;

const ZERO_PAGE = new Uint8Array(TARGET_PAGE_SIZE);
/** At most this many never-written pages go out per run (4.5 KiB of ZERO records: the rate limit and time budget still look often). */
const ZERO_RUN_MAX_PAGES = 512;

export interface RamSaveOptions {
  /** Capability `xbzrle`. */
  xbzrle?: boolean;
  /** Parameter `xbzrle-cache-size` (default 64 MiB; a power-of-two number of pages). */
  xbzrleCacheBytes?: number;
  /**
   * Called at each dirty-bitmap sync (setup, exact pending, completion): the
   * machine reports pages written since the last sync through markDirty /
   * mergeDirty. Without it, only explicit markDirty calls make pages dirty.
   */
  syncDirtyLog?: (handler: RamSaveHandler) => void | Promise<void>;
  /** Time budget per iterate call (default 50 ms as QEMU; Infinity disables). */
  maxIterateMs?: number;
  /** Name the block in every record instead of using CONTINUE (L7). */
  alwaysSendBlockName?: boolean;
}

/** Counters as QEMU's query-migrate `ram` and `xbzrle-cache` objects. */
export interface RamSaveStats {
  /** Page records + iterate EOS markers (QEMU's `transferred`; setup/END framing not counted). */
  transferredBytes: number;
  /** Part of transferredBytes sent while the guest ran (iterate). */
  precopyBytes: number;
  /** Part of transferredBytes sent with the guest stopped (complete). */
  downtimeBytes: number;
  totalBytes: number;
  remainingBytes: number;
  /** Zero pages (`duplicate`). */
  duplicatePages: number;
  /** Pages sent raw (`normal`), including XBZRLE misses and overflows. */
  normalPages: number;
  normalBytes: number;
  /** Multifd packet bytes, headers included (QEMU's `multifd-bytes`; also in transferredBytes). */
  multifdBytes: number;
  dirtySyncCount: number;
  /**
   * Times the page scan wrapped to the first block to send more pages (the
   * end of a pass over RAM; XBZRLE is used from then on).
   */
  completedRounds: number;
  /** Postcopy: page requests the destination sent (QEMU's `postcopy-requests`). */
  postcopyRequests: number;
  /** Postcopy: bytes sent after the switch to postcopy (QEMU's `postcopy-bytes`). */
  postcopyBytes: number;
  xbzrle: {
    cacheSizeBytes: number;
    /** Encoded bytes + 3-byte sub-header + block name; 4096 per overflow (QEMU's accounting). */
    bytes: number;
    /** Cache hits, including pages skipped as unchanged and overflows. */
    pages: number;
    cacheMiss: number;
    overflow: number;
    /** Hits that needed no record at all. */
    unchangedPages: number;
  };
}

interface BlockState {
  block: RamBlock;
  dirty: DirtyBitmap;
  /** Global page number of page 0 (blocks laid out back to back, like ram_addr). */
  basePage: number;
  /** Position in the block list (multifd packets name blocks by it). */
  index: number;
  /**
   * Pages the block vouched at setup were never written (RamBlock.pristinePages),
   * less every page a sync or markDirty has reported since: sent as zero pages
   * without reading them. A page leaves the set when it is sent or reported.
   */
  pristine: DirtyBitmap | undefined;
}

export class RamSaveHandler implements SaveVMHandlers {
  private readonly states: BlockState[];
  private readonly byName = new Map<string, BlockState>();
  private readonly records: RamRecordWriter;
  private cache: XbzrlePageCache | undefined;
  private readonly encoded = new Uint8Array(TARGET_PAGE_SIZE);
  // Scan position: next page to look at.
  private cursorBlock = 0;
  private cursorPage = 0;
  private xbzrleActive = false;
  // XBZRLE cache hits and the bytes they took on the wire: the pending estimate's per-page cost.
  private xbzrleHitPages = 0;
  private xbzrleHitWireBytes = 0;
  /** Share of the dirty pages found in the XBZRLE cache at the last sync. */
  private cachedDirtyShare = 0;
  private lastStage = false;
  private loader: RamLoadHandler | undefined;
  /** Multifd channels: page contents go there, zero pages and EOS stay on the main stream (7.2). */
  private multifd: MultifdSender | undefined;
  private counters: RamSaveStats;
  /** Postcopy: set by startPostcopy(); from then on requested pages go first and XBZRLE is off. */
  private postcopy = false;
  /** Postcopy: pages the destination asked for, oldest first. */
  private requestedPages: { state: BlockState; page: number }[] = [];

  constructor(blocks: readonly RamBlock[], private readonly options: RamSaveOptions = {}) {
    let basePage = 0;
    this.states = blocks.map((block, index) => {
      if (this.byName.has(block.idstr)) throw new RangeError(`duplicate RAM block name '${block.idstr}'`);
      const state: BlockState = { block, dirty: new DirtyBitmap(block.pageCount), basePage, index, pristine: undefined };
      basePage += block.pageCount;
      this.byName.set(block.idstr, state);
      return state;
    });
    this.records = new RamRecordWriter({ useContinue: !options.alwaysSendBlockName });
    this.counters = this.freshCounters();
    // Validate the cache size early, as QEMU validates the parameter when it is set.
    if (options.xbzrle) xbzrleCacheSlots(options.xbzrleCacheBytes ?? DEFAULT_XBZRLE_CACHE_BYTES, TARGET_PAGE_SIZE);
  }

  private freshCounters(): RamSaveStats {
    return {
      transferredBytes: 0,
      precopyBytes: 0,
      downtimeBytes: 0,
      totalBytes: this.states.reduce((sum, s) => sum + s.block.lengthBytes, 0),
      remainingBytes: 0,
      duplicatePages: 0,
      normalPages: 0,
      normalBytes: 0,
      multifdBytes: 0,
      dirtySyncCount: 0,
      completedRounds: 0,
      postcopyRequests: 0,
      postcopyBytes: 0,
      xbzrle: {
        cacheSizeBytes: this.options.xbzrle ? (this.options.xbzrleCacheBytes ?? DEFAULT_XBZRLE_CACHE_BYTES) : 0,
        bytes: 0,
        pages: 0,
        cacheMiss: 0,
        overflow: 0,
        unchangedPages: 0,
      },
    };
  }

  /** A snapshot of the counters. */
  get stats(): RamSaveStats {
    const c = this.counters;
    return { ...c, remainingBytes: this.dirtyPageCount * TARGET_PAGE_SIZE, xbzrle: { ...c.xbzrle } };
  }

  /** Dirty pages over all blocks. */
  get dirtyPageCount(): number {
    let n = 0;
    for (const s of this.states) n += s.dirty.count;
    return n;
  }

  /** The block's dirty bitmap (for inspection and bulk merges). */
  dirtyBitmap(idstr: string): DirtyBitmap {
    return this.stateOf(idstr).dirty;
  }

  private stateOf(idstr: string): BlockState {
    const state = this.byName.get(idstr);
    if (!state) throw new RangeError(`unknown RAM block '${idstr}'`);
    return state;
  }

  /** Mark one page for (re)sending. */
  markDirty(idstr: string, pageIndex: number): void {
    const state = this.stateOf(idstr);
    state.dirty.set(pageIndex);
    state.pristine?.clear(pageIndex);
  }

  /** Mark `count` pages from `firstPage`. */
  markDirtyRange(idstr: string, firstPage: number, count: number): void {
    const state = this.stateOf(idstr);
    state.dirty.setRange(firstPage, count);
    if (state.pristine) for (let page = firstPage; page < firstPage + count; page++) state.pristine.clear(page);
  }

  /** OR a dirty log (bit i = page i, LSB first) into the block's bitmap; returns newly dirty pages. */
  mergeDirty(idstr: string, log: Uint32Array | DirtyBitmap): number {
    const state = this.stateOf(idstr);
    // A reported page was written: it is not pristine any more, whatever setup was told.
    state.pristine?.subtract(log);
    return state.dirty.merge(log);
  }

  /** A dirty-bitmap sync: pull the machine's dirty log and start a new cache generation. */
  async syncDirty(): Promise<void> {
    this.counters.dirtySyncCount++;
    await this.options.syncDirtyLog?.(this);
  }

  async saveSetup(out: StreamWriter): Promise<void> {
    this.records.reset();
    this.counters = this.freshCounters();
    this.cursorBlock = 0;
    this.cursorPage = 0;
    this.xbzrleActive = false;
    this.xbzrleHitPages = 0;
    this.xbzrleHitWireBytes = 0;
    this.cachedDirtyShare = 0;
    this.lastStage = false;
    this.postcopy = false;
    this.requestedPages = [];
    this.cache = this.options.xbzrle
      ? new XbzrlePageCache(this.options.xbzrleCacheBytes ?? DEFAULT_XBZRLE_CACHE_BYTES, TARGET_PAGE_SIZE)
      : undefined;
    for (const s of this.states) {
      s.dirty.setAll();
      s.pristine = undefined;
    }
    // QEMU syncs once at setup (dirty-sync-count 1); it also resets the machine's log.
    await this.syncDirty();
    // Asked after the sync, so every later write shows in the next one (which takes it out again).
    for (const s of this.states) {
      const words = s.block.pristinePages?.();
      if (words === undefined) continue;
      const pristine = new DirtyBitmap(s.block.pageCount);
      pristine.merge(words);
      if (pristine.count > 0) s.pristine = pristine;
    }
    this.records.writeBlockList(out, this.states.map((s) => s.block));
    if (this.multifd) await this.multifd.sync(); // QEMU syncs the channels before every RAM EOS
    // Setup framing is not counted in `transferred` (QEMU does not count it).
    this.records.writeEos(out);
    // The destination's channels wait at their SYNC until it reads this EOS: send it now.
    if (this.multifd) await out.flush();
  }

  /**
   * The bytes the dirty pages will take on the wire, so that the switchover
   * decision compares like with like (the bandwidth it uses is wire bytes).
   * A page with an XBZRLE cache entry is counted at the average wire cost of
   * the XBZRLE hits so far (0 for unchanged pages, a full record for an
   * overflow); every other page as a full page record. QEMU 7.2 counts every
   * dirty page as 4 KiB, so a guest that rewrites a few bytes of many pages
   * never converges there even though XBZRLE would send it in a few bytes.
   */
  async statePending(exact: boolean): Promise<number> {
    if (exact) await this.syncDirty();
    const fullPageBytes = RAM_RECORD_HEADER_BYTES + TARGET_PAGE_SIZE;
    const dirtyPages = this.dirtyPageCount;
    const cache = this.cache;
    if (!this.xbzrleActive || !cache || this.xbzrleHitPages === 0) return dirtyPages * fullPageBytes;
    // Which dirty pages are cached is looked up after a sync only; the estimates in
    // between (every loop turn) reuse that share rather than walk the bitmap again.
    if (exact) {
      let cachedPages = 0;
      for (const s of this.states) {
        for (let page = s.dirty.nextSetBit(0); page < s.block.pageCount; page = s.dirty.nextSetBit(page + 1)) {
          if (cache.has(s.basePage + page)) cachedPages++;
        }
      }
      this.cachedDirtyShare = dirtyPages === 0 ? 0 : cachedPages / dirtyPages;
    }
    const cachedPages = Math.round(dirtyPages * this.cachedDirtyShare);
    const perHitBytes = this.xbzrleHitWireBytes / this.xbzrleHitPages;
    return Math.ceil((dirtyPages - cachedPages) * fullPageBytes + cachedPages * perHitBytes);
  }

  async saveIterate(out: StreamWriter, shouldStop: () => boolean): Promise<boolean> {
    const maxMs = this.options.maxIterateMs ?? RAM_ITERATE_MAX_WAIT_MS;
    const started = performance.now();
    let done = false;
    // As QEMU, the rate limit is consulted before every page, the first included.
    // In postcopy the guest may be waiting for a page: hand output over sooner, so requests are read and served sooner.
    const drainBytes = this.postcopy ? POSTCOPY_DRAIN_THRESHOLD_BYTES : DRAIN_THRESHOLD_BYTES;
    for (let sent = 0; !shouldStop() || this.requestedPages.length > 0; sent++) {
      const urgent = this.requestedPages.length > 0;
      const bytes = this.sendNextDirtyPage(out);
      if (bytes < 0) {
        done = true;
        break;
      }
      if (this.postcopy) this.counters.postcopyBytes += bytes;
      else this.counters.precopyBytes += bytes;
      if (urgent) await out.flush(); // a guest waits for it
      else if ((sent & 63) === 0 && performance.now() - started > maxMs) break;
      if (out.pendingBytes >= drainBytes) await out.drain();
      if (this.multifd?.mustWait) await this.multifd.waitForRoom();
    }
    if (this.multifd) await this.multifd.sync();
    // The iterate EOS counts in `transferred` (QEMU: ram_transferred_add(8)).
    const eos = this.records.writeEos(out);
    this.counters.transferredBytes += eos;
    if (this.postcopy) this.counters.postcopyBytes += eos;
    else this.counters.precopyBytes += eos;
    if (this.multifd) await out.flush();
    return done;
  }

  async saveCompletePrecopy(out: StreamWriter): Promise<void> {
    this.lastStage = true;
    // In postcopy the source guest has been stopped since the switch, whose sync was the last.
    if (!this.postcopy) await this.syncDirty();
    for (;;) {
      const bytes = this.sendNextDirtyPage(out);
      if (bytes < 0) break;
      if (this.postcopy) this.counters.postcopyBytes += bytes;
      else this.counters.downtimeBytes += bytes;
      if (out.pendingBytes >= DRAIN_THRESHOLD_BYTES) await out.drain();
      if (this.multifd?.mustWait) await this.multifd.waitForRoom();
    }
    // Everything is queued: the last SYNC, then the channels end cleanly.
    if (this.multifd) await this.multifd.syncAndFinish();
    // QEMU does not count the END section's EOS.
    this.records.writeEos(out);
  }

  /**
   * Switch to postcopy (the guest is stopped; call after the last sync): the
   * pages still dirty, as byte ranges per block, for POSTCOPY_RAM_DISCARD.
   * The destination drops what it has of them and waits for them again.
   */
  startPostcopy(): { idstr: string; ranges: { startBytes: number; lengthBytes: number }[] }[] {
    this.postcopy = true;
    // QEMU 7.2 sends postcopy pages raw: the destination places whole pages.
    this.xbzrleActive = false;
    const discards = [];
    for (const s of this.states) {
      const ranges: { startBytes: number; lengthBytes: number }[] = [];
      for (let page = s.dirty.nextSetBit(0); page < s.block.pageCount; ) {
        let end = page + 1;
        while (end < s.block.pageCount && s.dirty.test(end)) end++;
        ranges.push({ startBytes: page * TARGET_PAGE_SIZE, lengthBytes: (end - page) * TARGET_PAGE_SIZE });
        page = s.dirty.nextSetBit(end);
      }
      if (ranges.length > 0) discards.push({ idstr: s.block.idstr, ranges });
    }
    return discards;
  }

  /**
   * A page request from the destination (REQ_PAGES): those pages go out
   * before any other. Throws (a protocol error) for a block or range that does not exist.
   */
  requestPages(idstr: string, startBytes: number, lengthBytes: number): void {
    const state = this.byName.get(idstr);
    if (!state) throw new RangeError(`the destination asked for pages of an unknown RAM block '${idstr}'`);
    if (!this.postcopy) throw new RangeError(`the destination asked for pages of '${idstr}' before postcopy started`);
    if (startBytes % TARGET_PAGE_SIZE !== 0 || lengthBytes === 0 || lengthBytes % TARGET_PAGE_SIZE !== 0 || startBytes + lengthBytes > state.block.lengthBytes) {
      throw new RangeError(`the destination asked for 0x${lengthBytes.toString(16)} bytes at 0x${startBytes.toString(16)} of '${idstr}' (0x${state.block.lengthBytes.toString(16)} bytes, whole pages only)`);
    }
    this.counters.postcopyRequests++;
    for (let page = startBytes / TARGET_PAGE_SIZE; page < (startBytes + lengthBytes) / TARGET_PAGE_SIZE; page++) this.requestedPages.push({ state, page });
  }

  /**
   * Postcopy recovery: the destination's received bitmap for `idstr`. Every
   * page it lacks is dirty again (what was in flight when the link broke is
   * lost), queued requests are dropped (it asks again), and the next record
   * names its block (the new channel has no "last block").
   */
  resumeFromReceived(idstr: string, received: Uint32Array): void {
    const state = this.stateOf(idstr);
    state.dirty.setAll();
    state.dirty.subtract(received);
    this.requestedPages = this.requestedPages.filter((r) => r.state !== state);
    this.records.reset();
  }

  /** Requested pages are waiting: send now, whatever the rate limit says. */
  get hasPageRequests(): boolean {
    return this.requestedPages.length > 0;
  }

  saveCleanup(): void {
    this.requestedPages = [];
    this.cache = undefined;
    for (const s of this.states) s.pristine = undefined;
    // Closes channels that are still open (failure, cancel); a no-op after finish().
    this.multifd?.abort(new Error('migration ended'));
    this.multifd = undefined;
  }

  /**
   * Send page contents over multifd channels from the next setup on (opened
   * by the migration after the main channel). Packets are charged to
   * `transferred` and `multifd-bytes` as they are queued.
   */
  attachMultifd(sender: MultifdSender): void {
    this.multifd = sender;
    sender.onCharge = (bytes, pages) => {
      const c = this.counters;
      c.transferredBytes += bytes;
      c.multifdBytes += bytes;
      // The page bytes were counted per page by the send loop; add the header here.
      const header = bytes - pages * TARGET_PAGE_SIZE;
      if (this.lastStage) c.downtimeBytes += header;
      else c.precopyBytes += header;
    };
  }

  /** Multifd bytes so far (cheap, for the rate limiter). */
  get multifdBytes(): number {
    return this.counters.multifdBytes;
  }

  /** Loading into the same blocks (a handler registered on both sides). */
  loadState(input: StreamReader, context: LoadSectionContext): Promise<void> {
    this.loader ??= new RamLoadHandler(new FixedRamBlockTable(this.states.map((s) => s.block)));
    return this.loader.loadState(input, context);
  }

  /**
   * Find the next dirty page from the cursor (wrapping once), clear its bit
   * and send it (with the never-written pages right after it, as one run).
   * Pages that XBZRLE finds unchanged send nothing and the search goes on.
   * Returns the bytes written, or -1 when no dirty page is left.
   */
  private sendNextDirtyPage(out: StreamWriter): number {
    while (this.requestedPages.length > 0) {
      const { state, page } = this.requestedPages.shift()!;
      // Not dirty: it went out already (it is on its way, or the destination asked twice).
      if (!state.dirty.clear(page)) continue;
      // The background scan goes on from there: the guest is likely to want the pages after it next.
      this.cursorBlock = state.index;
      this.cursorPage = page + 1;
      const bytes = this.sendPage(out, state, page);
      if (bytes > 0) return bytes;
    }
    const blockCount = this.states.length;
    for (;;) {
      const state = this.states[this.cursorBlock]!;
      const page = state.dirty.nextSetBit(this.cursorPage);
      if (page >= state.block.pageCount) {
        // Counted at a block's end only (not per page): some block has a dirty page, or we are done.
        if (this.dirtyPageCount === 0) return -1;
        this.cursorPage = 0;
        if (++this.cursorBlock >= blockCount) {
          // Wrapped: a full round is complete and XBZRLE may start (QEMU's find_dirty_block).
          this.cursorBlock = 0;
          this.counters.completedRounds++;
          if (this.options.xbzrle) this.xbzrleActive = true;
        }
        continue;
      }
      // Never-written pages in a row (most of a mostly empty guest) go out as one run of
      // ZERO records: a loop over the records, not a call chain per page. (With XBZRLE
      // active each zero page also replaces its cache entry: sendPage does that.)
      if (state.pristine !== undefined && !this.xbzrleActive) {
        const run = state.dirty.clearCommonRun(state.pristine, page, ZERO_RUN_MAX_PAGES);
        if (run > 0) {
          this.cursorPage = page + run;
          const n = this.records.writeZeroRun(out, state.block.idstr, page * TARGET_PAGE_SIZE, run);
          this.counters.duplicatePages += run;
          this.counters.transferredBytes += n;
          return n;
        }
      }
      state.dirty.clear(page);
      this.cursorPage = page + 1;
      const bytes = this.sendPage(out, state, page);
      if (bytes > 0) return bytes;
    }
  }

  /** Send one page; 0 when XBZRLE found it unchanged. */
  private sendPage(out: StreamWriter, state: BlockState, page: number): number {
    const c = this.counters;
    const block = state.block;
    const offsetBytes = page * TARGET_PAGE_SIZE;
    const globalPage = state.basePage + page;
    const generation = c.dirtySyncCount;

    // A pristine page is zero without being read (reading it would fault it in).
    const pristine = state.pristine !== undefined && state.pristine.clear(page);
    if (pristine || block.isPageZero(page)) {
      const n = this.records.writeZero(out, block.idstr, offsetBytes, 0);
      c.duplicatePages++;
      c.transferredBytes += n;
      // Replace a stale cached copy so a later small write is encoded against zeros.
      if (this.xbzrleActive && this.cache) this.cache.insert(globalPage, ZERO_PAGE, generation);
      return n;
    }

    if (this.multifd) {
      // As 7.2: a non-zero page goes to multifd (XBZRLE is not used with multifd).
      this.multifd.queuePage(state.index, offsetBytes);
      c.normalPages++;
      c.normalBytes += TARGET_PAGE_SIZE;
      return TARGET_PAGE_SIZE;
    }

    const view = block.pageView(page);
    let data = view;
    if (this.xbzrleActive && this.cache) {
      const cached = this.cache.lookup(globalPage, generation);
      if (!cached) {
        c.xbzrle.cacheMiss++;
        if (!this.lastStage) {
          // Send what went into the cache, so cache and destination agree.
          const stored = this.cache.insert(globalPage, data, generation);
          if (stored) data = stored;
        }
      } else {
        c.xbzrle.pages++;
        this.xbzrleHitPages++;
        // Encoded straight from guest RAM, which the guest may write meanwhile:
        // the cache is brought up to date by applying the very delta that is sent,
        // so it holds exactly what the destination will (no 4 KiB snapshot or copy).
        const length = xbzrleEncode(cached, data, this.encoded, TARGET_PAGE_SIZE);
        if (length === 0) {
          c.xbzrle.unchangedPages++;
          return 0;
        }
        if (length < 0) {
          c.xbzrle.overflow++;
          c.xbzrle.bytes += TARGET_PAGE_SIZE;
          this.xbzrleHitWireBytes += RAM_RECORD_HEADER_BYTES + TARGET_PAGE_SIZE;
          if (!this.lastStage) {
            // Send what went into the cache, so cache and destination agree.
            cached.set(data);
            data = cached;
          }
        } else {
          const encoded = this.encoded.subarray(0, length);
          if (!this.lastStage) xbzrleDecode(encoded, cached);
          const n = this.records.writeXbzrle(out, block.idstr, offsetBytes, encoded);
          c.xbzrle.bytes += n - RAM_RECORD_HEADER_BYTES;
          c.transferredBytes += n;
          this.xbzrleHitWireBytes += n;
          return n;
        }
      }
    }

    // Guest RAM itself (not a cache entry, which later pages change) may go out in place.
    const n = this.records.writePage(out, block.idstr, offsetBytes, data, data === view && block.logsEveryWrite === true);
    c.normalPages++;
    c.normalBytes += TARGET_PAGE_SIZE;
    c.transferredBytes += n;
    return n;
  }
}
