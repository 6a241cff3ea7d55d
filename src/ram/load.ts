/**
 * The destination side of the `ram` entry (QEMU 7.2 ram_load_precopy).
 *
 * Reads records until EOS. The "last block" used by CONTINUE is kept across
 * sections (the sender relies on it: 3.2) and reset only by loadSetup().
 * Every error carries the stream offset of the record or field at fault.
 */
import type { LoadSectionContext, SaveVMHandlers } from '../savevm/handlers.js';
import { copyBytes, IncompleteStreamError, StreamError, TARGET_PAGE_SIZE, yieldToEventLoop, type StreamErrorCode, type StreamLocation, type StreamReader } from '../wire/index.js';
import type { RamBlock } from './block.js';
import type { RamBlockTable } from './block-table.js';
import {
  RAM_FLAG_COMPRESS_PAGE,
  RAM_FLAG_CONTINUE,
  RAM_FLAG_EOS,
  RAM_FLAG_HOOK,
  RAM_FLAG_MASK,
  RAM_FLAG_MEM_SIZE,
  RAM_FLAG_PAGE,
  RAM_FLAG_XBZRLE,
  RAM_FLAG_ZERO,
  RAM_IDSTR,
  RAM_PAGE_RECORD_FLAGS,
  RAM_RECORD_HEADER_BYTES,
  RAM_SECTION_VERSION,
  XBZRLE_ENCODING_FLAG,
  describeRamFlags,
} from './flags.js';
import { popcount32 } from './dirty-bitmap.js';
import { xbzrleDecode } from './xbzrle.js';

/** Set bits among the first `bitCount` of a shared bitmap. */
function countBits(words: Int32Array, bitCount: number): number {
  let n = 0;
  for (let w = 0; w < words.length; w++) {
    let v = Atomics.load(words, w);
    if (w === words.length - 1 && bitCount % 32) v &= (1 << bitCount % 32) - 1;
    n += popcount32(v);
  }
  return n;
}

/** QEMU's loader yields to the main loop every 32768 records; so do we (event loop). */
const YIELD_EVERY_RECORDS = 32768;

export interface RamLoadOptions {
  /**
   * Capability `x-ignore-shared` is on: each block-list entry carries a be64
   * guest physical address after its length.
   */
  ignoreShared?: boolean;
  /**
   * Multifd: called at every EOS before the section ends; waits until every
   * multifd channel has delivered its SYNC for this section (7.2's
   * multifd_recv_sync_main).
   */
  multifdSync?: () => Promise<void>;
}

export interface RamLoadBlockStats {
  idstr: string;
  /** Length given by the block list, if the block was listed. */
  listedLengthBytes?: number;
  /** Guest physical address from the block list (x-ignore-shared only). */
  guestPhysicalAddress?: number;
  zeroPages: number;
  /** ZERO records with a fill byte other than 0 (accepted: L8). */
  nonZeroFillPages: number;
  normalPages: number;
  xbzrlePages: number;
  /** Stream bytes of the records of each kind, headers and block names included. */
  zeroBytes: number;
  normalBytes: number;
  xbzrleBytes: number;
  /** XBZRLE payload bytes only (after the 3-byte sub-header). */
  xbzrleEncodedBytes: number;
}

export interface RamLoadStats {
  sections: number;
  /** All records, EOS and block lists included. */
  records: number;
  eosRecords: number;
  blockListRecords: number;
  /** Total of the last block list (the offset field of MEM_SIZE). */
  announcedTotalBytes?: number;
  /** Per block, in the order first seen. */
  blocks: RamLoadBlockStats[];
  /** Stream offset of the first record of each kind. */
  firstOffsets: { blockList?: number; zero?: number; page?: number; xbzrle?: number; eos?: number };
}

function freshStats(): RamLoadStats {
  return { sections: 0, records: 0, eosRecords: 0, blockListRecords: 0, blocks: [], firstOffsets: {} };
}

/** How far the `ram` entry got, for the completeness check at EOF. */
export interface RamLoadProgress {
  /** A START section of this entry was loaded. */
  started: boolean;
  /** Blocks named by the block list(s) received (MEM_SIZE). */
  listedBlocks: ReadonlySet<string>;
  /** An END section of this entry was loaded through its EOS. */
  ended: boolean;
}

/**
 * Postcopy on the destination (QEMU's receivedmap): from ADVISE on, which
 * pages have arrived, one bit per page in shared memory, so the guest can
 * check a page before it touches it (Machine.postcopy). After LISTEN a page is
 * placed once: its contents are written, *then* its bit set and the word's
 * waiters woken; a page already here is dropped (the guest may have written it).
 */
export interface ReceivedPages {
  /** Per block, the bitmap the guest checks (Int32 words over a SharedArrayBuffer). */
  readonly bitmaps: ReadonlyMap<string, Int32Array>;
  /** Pages of all blocks that have not arrived. */
  missingPages(): number;
  /** Whether page `page` of `idstr` has arrived. */
  has(idstr: string, page: number): boolean;
}

export class RamLoadHandler implements SaveVMHandlers {
  private lastBlock: RamBlock | undefined;
  /** Postcopy: set by adviseReceivedMap(). */
  private received: Map<RamBlock, Int32Array> | undefined;
  /** Postcopy: after LISTEN, place pages once and wake waiting guests. */
  private placing = false;
  /** Postcopy: pages placed after LISTEN, and pages dropped because they were here already. */
  postcopyPlacedPages = 0;
  postcopyDroppedPages = 0;
  /** Called (after LISTEN) for every page placed, once its bit is set. */
  onPagePlaced: ((block: RamBlock, page: number) => void) | undefined;
  private started = false;
  private ended = false;
  private readonly listed = new Set<string>();
  private counters = freshStats();
  private readonly blockStats = new Map<string, RamLoadBlockStats>();
  private lastStatsBlock: RamBlock | undefined;
  private lastStats: RamLoadBlockStats | undefined;

  constructor(readonly table: RamBlockTable, private readonly options: RamLoadOptions = {}) {}

  /** Counters so far (a live object; copy it if you keep it). */
  get stats(): RamLoadStats {
    return this.counters;
  }

  loadSetup(): void {
    this.lastBlock = undefined;
    this.counters = freshStats();
    this.blockStats.clear();
    this.lastStatsBlock = undefined;
    this.lastStats = undefined;
    this.started = false;
    this.ended = false;
    this.listed.clear();
  }

  /**
   * POSTCOPY_ADVISE: record from now on which pages arrive. Every page of the
   * precopy phase counts (a ZERO record too): a page not recorded is missing.
   */
  adviseReceivedMap(): ReceivedPages {
    if (!this.received) {
      this.received = new Map();
      for (const block of this.table.blocks()) this.received.set(block, new Int32Array(new SharedArrayBuffer(Math.ceil(block.pageCount / 32) * 4)));
    }
    const received = this.received;
    const byName = new Map([...received].map(([block, bits]) => [block.idstr, bits] as const));
    return {
      bitmaps: byName,
      missingPages: () => {
        let missing = 0;
        for (const [block, bits] of received) missing += block.pageCount - countBits(bits, block.pageCount);
        return missing;
      },
      has: (idstr, page) => {
        const bits = byName.get(idstr);
        return bits !== undefined && (Atomics.load(bits, page >>> 5) & (1 << (page & 31))) !== 0;
      },
    };
  }

  /**
   * POSTCOPY_RAM_DISCARD: pages the source sent but the guest wrote again
   * since; they count as missing until they arrive again. Ranges in bytes.
   */
  discard(idstr: string, ranges: readonly { startBytes: number; lengthBytes: number }[], offset: number): void {
    const fail = (reason: string): StreamError => new StreamError('bad-command', `POSTCOPY_RAM_DISCARD: ${reason}`, { offset });
    if (!this.received) throw fail('before POSTCOPY_ADVISE');
    if (this.placing) throw fail('after POSTCOPY_LISTEN (the guest may run: pages cannot be taken back)');
    const found = this.table.lookup(idstr);
    if (!found.block) throw fail(found.error);
    const bits = this.received.get(found.block)!;
    for (const { startBytes, lengthBytes } of ranges) {
      if (startBytes % TARGET_PAGE_SIZE !== 0 || lengthBytes % TARGET_PAGE_SIZE !== 0) throw fail(`range 0x${startBytes.toString(16)}+0x${lengthBytes.toString(16)} of '${idstr}' is not page aligned`);
      if (startBytes + lengthBytes > found.block.lengthBytes) throw fail(`range 0x${startBytes.toString(16)}+0x${lengthBytes.toString(16)} runs past the end of '${idstr}' (0x${found.block.lengthBytes.toString(16)} bytes)`);
      const last = (startBytes + lengthBytes) / TARGET_PAGE_SIZE;
      for (let page = startBytes / TARGET_PAGE_SIZE; page < last; page++) bits[page >>> 5]! &= ~(1 << (page & 31));
    }
  }

  /** POSTCOPY_LISTEN: from now on a page is placed once, and its waiters are woken. */
  listen(offset: number): void {
    if (!this.received) throw new StreamError('bad-command', 'POSTCOPY_LISTEN before POSTCOPY_ADVISE', { offset });
    this.placing = true;
  }

  /** After a page record's contents are in guest RAM: record it (and wake a guest waiting for it). */
  private recordReceived(block: RamBlock, page: number): void {
    const bits = this.received!.get(block)!;
    const word = page >>> 5;
    if (!this.placing) {
      bits[word]! |= 1 << (page & 31);
      return;
    }
    Atomics.or(bits, word, 1 << (page & 31));
    Atomics.notify(bits, word);
    this.postcopyPlacedPages++;
    this.onPagePlaced?.(block, page);
  }

  /** Postcopy after LISTEN: the page is here already (the guest may have written it since). */
  private alreadyPlaced(block: RamBlock, page: number): boolean {
    if (!this.placing) return false;
    return (Atomics.load(this.received!.get(block)!, page >>> 5) & (1 << (page & 31))) !== 0;
  }

  /** What arrived so far: START, the blocks listed, END. */
  get progress(): RamLoadProgress {
    return { started: this.started, listedBlocks: new Set(this.listed), ended: this.ended };
  }

  /**
   * Why the RAM received so far cannot run a guest, or undefined when it can:
   * no `ram` section at all, no block list, a block of the table (the local
   * machine's) missing from the block list, or no END section (the source
   * never completed). For a destination at EOF; `livemig analyze` does not
   * ask. Per-page coverage is not checked (see docs in checkComplete).
   */
  incompleteReason(): string | undefined {
    if (this.counters.sections === 0) return "the stream has no RAM section ('ram'): guest RAM would be left blank";
    if (!this.started || this.counters.blockListRecords === 0) return "the RAM section never started: no START section with the RAM block list";
    const missing = this.table.blocks().filter((b) => !this.listed.has(b.idstr));
    if (missing.length > 0) {
      const names = missing.map((b) => `${b.idstr} (0x${b.lengthBytes.toString(16)} bytes)`).join(', ');
      return `RAM block${missing.length > 1 ? 's' : ''} ${names} of this machine ${missing.length > 1 ? 'are' : 'is'} missing from the stream's block list`;
    }
    if (!this.ended) return 'the RAM section never ended: no END section (the source did not complete the migration)';
    return undefined;
  }

  /**
   * Throw an IncompleteStreamError (code 'incomplete-stream', section 'ram',
   * at `offset`, the EOF offset) when incompleteReason() gives one. For
   * loadVmState's `onEof`.
   *
   * Pages are not checked one by one: with multifd, worker threads write
   * pages straight into shared guest memory and only report counts, so a
   * per-page record would need a shared bitmap updated by every channel.
   */
  checkComplete(offset = 0): void {
    const reason = this.incompleteReason();
    if (reason !== undefined) throw new IncompleteStreamError(`incomplete stream: ${reason}`, { offset, section: { idstr: RAM_IDSTR } });
  }

  /** statsFor(block.idstr), remembered for the block of the previous record (most records continue it). */
  private statsOf(block: RamBlock): RamLoadBlockStats {
    if (this.lastStatsBlock === block && this.lastStats !== undefined) return this.lastStats;
    const s = this.statsFor(block.idstr);
    this.lastStatsBlock = block;
    this.lastStats = s;
    return s;
  }

  private statsFor(idstr: string): RamLoadBlockStats {
    let s = this.blockStats.get(idstr);
    if (!s) {
      s = { idstr, zeroPages: 0, nonZeroFillPages: 0, normalPages: 0, xbzrlePages: 0, zeroBytes: 0, normalBytes: 0, xbzrleBytes: 0, xbzrleEncodedBytes: 0 };
      this.blockStats.set(idstr, s);
      this.counters.blocks.push(s);
    }
    return s;
  }

  async loadState(input: StreamReader, context: LoadSectionContext): Promise<void> {
    const section = { idstr: context.idstr, sectionId: context.sectionId, instanceId: context.instanceId };
    const fail = (code: StreamErrorCode, reason: string, offset: number): StreamError =>
      new StreamError(code, reason, { offset, section });

    if (context.versionId !== RAM_SECTION_VERSION) {
      const code = context.versionId > RAM_SECTION_VERSION ? 'version-too-new' : 'version-too-old';
      throw fail(code, `RAM section version ${context.versionId} is not supported (only ${RAM_SECTION_VERSION})`, input.offset);
    }
    const c = this.counters;
    c.sections++;
    if (context.kind === 'start') this.started = true;

    for (;;) {
      // The bulk of a stream, in one loop while it is buffered; anything else below.
      if (this.lastBlock !== undefined && this.received === undefined) this.loadBufferedRun(input);
      const at = input.offset;
      if (++c.records % YIELD_EVERY_RECORDS === 0) await yieldToEventLoop();
      // Read the be64 as two halves: offsets stay exact numbers without BigInt.
      let high: number;
      let low: number;
      if (input.buffered >= 8 || input.available(8)) {
        high = input.be32Sync();
        low = input.be32Sync();
      } else {
        high = await input.be32();
        low = await input.be32();
      }
      const flags = low & RAM_FLAG_MASK;
      const offsetBytes = high * 0x100000000 + ((low & ~RAM_FLAG_MASK) >>> 0);

      if (flags & RAM_FLAG_COMPRESS_PAGE) {
        throw fail('bad-ram-record', 'Received an unexpected compressed page (COMPRESS_PAGE records of capability `compress` are not supported)', at);
      }
      let block: RamBlock | undefined;
      let pageIndex = 0;
      if (flags & RAM_PAGE_RECORD_FLAGS) {
        const resolved = this.resolveBlock(input, flags, at, section);
        block = resolved instanceof Promise ? await resolved : resolved;
        if (offsetBytes >= block.lengthBytes) {
          throw fail('bad-ram-record', `Illegal RAM offset 0x${offsetBytes.toString(16)} in block ${block.idstr} (length 0x${block.lengthBytes.toString(16)})`, at);
        }
        pageIndex = offsetBytes / TARGET_PAGE_SIZE;
      }

      switch (flags & ~RAM_FLAG_CONTINUE) {
        case RAM_FLAG_MEM_SIZE:
          c.blockListRecords++;
          c.firstOffsets.blockList ??= at;
          if (high > 0x1fffff) throw fail('too-large', 'RAM block list total exceeds 2^53 bytes', at);
          await this.readBlockList(input, offsetBytes, section);
          break;
        case RAM_FLAG_ZERO: {
          const fill = input.buffered >= 1 || input.available(1) ? input.u8Sync() : await input.u8();
          if (this.alreadyPlaced(block!, pageIndex)) {
            this.postcopyDroppedPages++;
          } else {
            block!.fillPage(pageIndex, fill);
            if (this.received) this.recordReceived(block!, pageIndex);
          }
          const s = this.statsOf(block!);
          s.zeroPages++;
          if (fill !== 0) s.nonZeroFillPages++;
          s.zeroBytes += input.offset - at;
          c.firstOffsets.zero ??= at;
          break;
        }
        case RAM_FLAG_PAGE: {
          // Straight from the received chunk(s) into guest RAM; no await when the page is already here.
          const memory = block!.memory;
          const dropped = this.alreadyPlaced(block!, pageIndex);
          if (dropped) {
            await input.skip(TARGET_PAGE_SIZE);
            this.postcopyDroppedPages++;
          } else if (memory !== undefined && input.buffered >= TARGET_PAGE_SIZE) {
            input.readIntoSync(memory, block!.pageOffsetForUpdate!(pageIndex), TARGET_PAGE_SIZE);
          } else {
            const page = block!.pageForUpdate(pageIndex);
            try {
              if (input.buffered >= TARGET_PAGE_SIZE) input.readIntoSync(page, 0, TARGET_PAGE_SIZE);
              else await input.readInto(page, 0, TARGET_PAGE_SIZE);
            } finally {
              block!.pageUpdated(pageIndex);
            }
          }
          if (this.received && !dropped) this.recordReceived(block!, pageIndex);
          const s = this.statsOf(block!);
          s.normalPages++;
          s.normalBytes += input.offset - at;
          c.firstOffsets.page ??= at;
          break;
        }
        case RAM_FLAG_XBZRLE: {
          if (this.placing) throw fail('bad-ram-record', 'an XBZRLE record during postcopy (QEMU allows only ZERO, PAGE and EOS there)', at);
          // Records already received are decoded without a promise per field (the common case);
          // anything else (split over chunks, or bad) takes the general path.
          let encodedBytes = this.loadXbzrleBuffered(input, block!, pageIndex, section);
          if (encodedBytes < 0) encodedBytes = await this.loadXbzrle(input, block!, pageIndex, section);
          const s = this.statsOf(block!);
          if (this.received) this.recordReceived(block!, pageIndex);
          s.xbzrlePages++;
          s.xbzrleBytes += input.offset - at;
          s.xbzrleEncodedBytes += encodedBytes;
          c.firstOffsets.xbzrle ??= at;
          break;
        }
        case RAM_FLAG_EOS:
          c.eosRecords++;
          c.firstOffsets.eos ??= at;
          if (this.options.multifdSync) await this.options.multifdSync();
          if (context.kind === 'end') this.ended = true;
          return;
        default:
          if (flags & RAM_FLAG_HOOK) {
            throw fail('bad-ram-record', 'RAM_SAVE_FLAG_HOOK record (RDMA control) is not supported', at);
          }
          throw fail('bad-ram-record', `Unknown combination of migration flags: 0x${flags.toString(16)} (${describeRamFlags(flags)})`, at);
      }
    }
  }

  /**
   * PAGE and zero-fill ZERO records that continue the last block and are
   * buffered whole (nearly every record of a stream), loaded in one loop: no
   * promise, switch or stats lookup per record. Stops at the first record
   * that is anything else, not buffered whole, or bad (the general path then
   * reads it and names the fault), and before the next yield point. Not
   * during postcopy, whose pages are recorded one by one.
   */
  private loadBufferedRun(input: StreamReader): void {
    const c = this.counters;
    const block = this.lastBlock!;
    const memory = block.memory;
    const lengthBytes = block.lengthBytes;
    const maxRecords = YIELD_EVERY_RECORDS - 1 - (c.records % YIELD_EVERY_RECORDS);
    // Straight over the reader's buffer: no call per header field, one skipSync for the run.
    const { bytes, view, start } = input.window();
    const end = bytes.length;
    const base = input.offset - start; // the stream offset of bytes[0]
    let at = start;
    let copyMod8 = -1;
    let firstPageAt = -1;
    let firstZeroAt = -1;
    let pages = 0;
    let zeros = 0;
    try {
      while (pages + zeros < maxRecords && end - at >= RAM_RECORD_HEADER_BYTES + 1) {
        const high = view.getUint32(at);
        const low = view.getUint32(at + 4);
        const offsetBytes = high * 0x100000000 + ((low & ~RAM_FLAG_MASK) >>> 0);
        if (offsetBytes >= lengthBytes) break;
        const flags = low & RAM_FLAG_MASK;
        if (flags === (RAM_FLAG_PAGE | RAM_FLAG_CONTINUE)) {
          if (memory === undefined || end - at < RAM_RECORD_HEADER_BYTES + TARGET_PAGE_SIZE) break;
          if (firstPageAt < 0) firstPageAt = base + at;
          const dataAt = at + RAM_RECORD_HEADER_BYTES;
          if (((base + dataAt) & 7) !== copyMod8) {
            copyMod8 = (base + dataAt) & 7;
            input.copiesFrom(base + dataAt);
          }
          // A plain Uint8Array view: a Buffer's subarray() builds its view through the species constructor.
          copyBytes(memory, block.pageOffsetForUpdate!(offsetBytes / TARGET_PAGE_SIZE), new Uint8Array(bytes.buffer, bytes.byteOffset + dataAt, TARGET_PAGE_SIZE));
          at = dataAt + TARGET_PAGE_SIZE;
          pages++;
        } else if (flags === (RAM_FLAG_ZERO | RAM_FLAG_CONTINUE) && bytes[at + RAM_RECORD_HEADER_BYTES] === 0) {
          if (firstZeroAt < 0) firstZeroAt = base + at;
          block.fillPage(offsetBytes / TARGET_PAGE_SIZE, 0);
          at += RAM_RECORD_HEADER_BYTES + 1;
          zeros++;
        } else {
          break;
        }
      }
    } finally {
      input.skipSync(at - start);
    }
    if (pages + zeros === 0) return;
    c.records += pages + zeros;
    const s = this.statsOf(block);
    s.normalPages += pages;
    s.normalBytes += pages * (RAM_RECORD_HEADER_BYTES + TARGET_PAGE_SIZE);
    s.zeroPages += zeros;
    s.zeroBytes += zeros * (RAM_RECORD_HEADER_BYTES + 1);
    if (firstPageAt >= 0) c.firstOffsets.page ??= firstPageAt;
    if (firstZeroAt >= 0) c.firstOffsets.zero ??= firstZeroAt;
  }

  /** The block of a page record: named after the header, or the last one for CONTINUE. */
  private resolveBlock(input: StreamReader, flags: number, at: number, section: StreamLocation['section']): RamBlock | Promise<RamBlock> {
    if (flags & RAM_FLAG_CONTINUE) {
      if (!this.lastBlock) {
        throw new StreamError('bad-ram-record', 'Ack, bad migration stream! (CONTINUE flag with no previous block)', { offset: at, section });
      }
      return this.lastBlock;
    }
    return this.resolveNamedBlock(input, section);
  }

  private async resolveNamedBlock(input: StreamReader, section: StreamLocation['section']): Promise<RamBlock> {
    const nameAt = input.offset;
    const idstr = await input.countedString();
    const found = this.table.lookup(idstr);
    if (!found.block) throw new StreamError('bad-ram-record', found.error, { offset: nameAt, section });
    this.lastBlock = found.block;
    return found.block;
  }

  /** MEM_SIZE: entries until the announced total is used up (L3: the list may omit blocks). */
  private async readBlockList(input: StreamReader, totalBytes: number, section: StreamLocation['section']): Promise<void> {
    this.counters.announcedTotalBytes = totalBytes;
    let remaining = totalBytes;
    while (remaining > 0) {
      const entryAt = input.offset;
      const idstr = await input.countedString();
      const lengthBytes = await input.be64Number('RAM block length');
      const result = this.table.announce(idstr, lengthBytes);
      if (!result.block) throw new StreamError('bad-ram-record', result.error, { offset: entryAt, section });
      this.listed.add(idstr);
      const s = this.statsFor(idstr);
      s.listedLengthBytes = lengthBytes;
      if (this.options.ignoreShared) s.guestPhysicalAddress = await input.be64Number('guest physical address');
      if (lengthBytes > remaining) {
        // QEMU's unsigned total would wrap and read garbage; say what happened instead.
        throw new StreamError('bad-ram-record', `RAM block list: ${idstr} (0x${lengthBytes.toString(16)} bytes) exceeds the 0x${remaining.toString(16)} bytes left of the announced total`, { offset: entryAt, section });
      }
      remaining -= lengthBytes;
      // An analysis table may replace a block it had created for early page records.
      if (this.lastBlock?.idstr === idstr) this.lastBlock = result.block;
    }
  }

  /**
   * loadXbzrle for a well-formed record whose bytes are all buffered: no
   * await. Returns the data length, or -1 (nothing consumed) to take the
   * general path.
   */
  private loadXbzrleBuffered(input: StreamReader, block: RamBlock, pageIndex: number, section: StreamLocation['section']): number {
    if (!(input.buffered >= 3 || input.available(3))) return -1;
    const length = (input.peekU8Sync(1) << 8) | input.peekU8Sync(2);
    if (input.peekU8Sync(0) !== XBZRLE_ENCODING_FLAG || length > TARGET_PAGE_SIZE) return -1;
    if (!(input.buffered >= 3 + length || input.available(3 + length))) return -1;
    input.bytesSync(3);
    const dataAt = input.offset;
    const data = input.bytesSync(length);
    this.decodeXbzrle(data, dataAt, block, pageIndex, section);
    return length;
  }

  /** XBZRLE: u8 0x01, be16 length ≤ 4096, data decoded over the current page. Returns the data length. */
  private async loadXbzrle(input: StreamReader, block: RamBlock, pageIndex: number, section: StreamLocation['section']): Promise<number> {
    const headerAt = input.offset;
    const encoding = await input.u8();
    const length = await input.be16();
    if (encoding !== XBZRLE_ENCODING_FLAG) {
      throw new StreamError('bad-xbzrle', `Failed to load XBZRLE page - wrong compression! (encoding byte 0x${encoding.toString(16)}, expected 0x01)`, { offset: headerAt, section });
    }
    if (length > TARGET_PAGE_SIZE) {
      throw new StreamError('bad-xbzrle', `Failed to load XBZRLE page - len overflow! (${length} > ${TARGET_PAGE_SIZE})`, { offset: headerAt + 1, section });
    }
    const dataAt = input.offset;
    const data = await input.bytes(length, TARGET_PAGE_SIZE, 'XBZRLE data');
    this.decodeXbzrle(data, dataAt, block, pageIndex, section);
    return length;
  }

  /** Apply XBZRLE data over the page; a decode error names the section. */
  private decodeXbzrle(data: Uint8Array, dataAt: number, block: RamBlock, pageIndex: number, section: StreamLocation['section']): void {
    const page = block.pageForUpdate(pageIndex);
    try {
      xbzrleDecode(data, page, dataAt);
    } catch (err) {
      throw err instanceof StreamError ? err.withSection(section!) : err;
    } finally {
      block.pageUpdated(pageIndex);
    }
  }
}
