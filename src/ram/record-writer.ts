/**
 * Writes RAM records (section bodies only).
 *
 * Keeps QEMU's "last sent block" state: a page record for the same block as
 * the previous one carries CONTINUE instead of the block name. That state
 * survives section boundaries (QEMU resets it only at setup), so the first
 * record of a PART/END section usually continues a block named earlier.
 *
 * Every method returns the bytes it wrote, for QEMU-style accounting.
 */
import { TARGET_PAGE_SIZE, type StreamWriter } from '../wire/index.js';
import {
  RAM_FLAG_CONTINUE,
  RAM_FLAG_EOS,
  RAM_FLAG_MEM_SIZE,
  RAM_FLAG_PAGE,
  RAM_FLAG_XBZRLE,
  RAM_FLAG_ZERO,
  RAM_RECORD_HEADER_BYTES,
  XBZRLE_ENCODING_FLAG,
} from './flags.js';

const textEncoder = new TextEncoder();

export interface RamBlockListEntry {
  idstr: string;
  lengthBytes: number;
}

export interface RamRecordWriterOptions {
  /** Use CONTINUE for consecutive records of one block (default true; false names the block every time, L7). */
  useContinue?: boolean;
}

export class RamRecordWriter {
  private lastBlock: string | undefined;
  private readonly nameBytes = new Map<string, number>();

  constructor(private readonly options: RamRecordWriterOptions = {}) {}

  /** Forget the last block (QEMU does this at setup only). */
  reset(): void {
    this.lastBlock = undefined;
  }

  /** The block the next CONTINUE would refer to. */
  get lastBlockIdstr(): string | undefined {
    return this.lastBlock;
  }

  private checkOffset(offsetBytes: number): void {
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || offsetBytes % TARGET_PAGE_SIZE !== 0) {
      throw new RangeError(`RAM record offset ${offsetBytes} is not a page-aligned non-negative integer`);
    }
  }

  /** be64(offset | flags), plus the block name unless it continues the last block. */
  private header(out: StreamWriter, idstr: string, offsetBytes: number, flags: number): number {
    this.checkOffset(offsetBytes);
    if (this.options.useContinue !== false && idstr === this.lastBlock) {
      out.be64(offsetBytes + (flags | RAM_FLAG_CONTINUE));
      return RAM_RECORD_HEADER_BYTES;
    }
    out.be64(offsetBytes + flags);
    out.countedString(idstr);
    this.lastBlock = idstr;
    let n = this.nameBytes.get(idstr);
    if (n === undefined) {
      n = textEncoder.encode(idstr).length;
      this.nameBytes.set(idstr, n);
    }
    return RAM_RECORD_HEADER_BYTES + 1 + n;
  }

  /** The setup body's block list: be64(total | MEM_SIZE), then name + be64 length per block. */
  writeBlockList(out: StreamWriter, blocks: readonly RamBlockListEntry[]): number {
    const total = blocks.reduce((sum, b) => sum + b.lengthBytes, 0);
    this.checkOffset(total);
    const before = out.bytesWritten;
    out.be64(total + RAM_FLAG_MEM_SIZE);
    for (const block of blocks) {
      out.countedString(block.idstr);
      out.be64(block.lengthBytes);
    }
    return out.bytesWritten - before;
  }

  /** A uniform page: header + fill byte (QEMU always sends 0). */
  writeZero(out: StreamWriter, idstr: string, offsetBytes: number, fill = 0): number {
    const n = this.header(out, idstr, offsetBytes, RAM_FLAG_ZERO);
    out.u8(fill);
    return n + 1;
  }

  /**
   * `count` ZERO records for consecutive pages of one block from
   * `firstOffsetBytes` (the first names the block unless it continues the
   * last one; the rest continue it), in one loop: the bytes of `count`
   * writeZero() calls.
   */
  writeZeroRun(out: StreamWriter, idstr: string, firstOffsetBytes: number, count: number): number {
    if (count <= 0) return 0;
    this.checkOffset(firstOffsetBytes + (count - 1) * TARGET_PAGE_SIZE);
    let n = this.writeZero(out, idstr, firstOffsetBytes, 0);
    if (this.options.useContinue === false) {
      for (let i = 1; i < count; i++) n += this.writeZero(out, idstr, firstOffsetBytes + i * TARGET_PAGE_SIZE, 0);
      return n;
    }
    const flags = RAM_FLAG_ZERO | RAM_FLAG_CONTINUE;
    for (let i = 1; i < count; i++) {
      const offsetBytes = firstOffsetBytes + i * TARGET_PAGE_SIZE;
      // Page aligned: the flags fit the low 12 bits, which are zero.
      out.be64Parts(Math.floor(offsetBytes / 0x100000000), ((offsetBytes >>> 0) | flags) >>> 0).u8(0);
    }
    return n + (count - 1) * (RAM_RECORD_HEADER_BYTES + 1);
  }

  /**
   * A raw page: header + 4096 bytes. `inPlace`: the page is guest RAM whose
   * later writes are logged (RamBlock.logsEveryWrite), which the writer may
   * hand to the OS where it is (StreamWriter.bytesInPlace).
   */
  writePage(out: StreamWriter, idstr: string, offsetBytes: number, page: Uint8Array, inPlace = false): number {
    if (page.length !== TARGET_PAGE_SIZE) throw new RangeError(`page of ${page.length} bytes, expected ${TARGET_PAGE_SIZE}`);
    const n = this.header(out, idstr, offsetBytes, RAM_FLAG_PAGE);
    if (inPlace) out.bytesInPlace(page);
    else out.bytes(page);
    return n + TARGET_PAGE_SIZE;
  }

  /** An XBZRLE delta: header + 0x01 + be16 length + encoded bytes. */
  writeXbzrle(out: StreamWriter, idstr: string, offsetBytes: number, encoded: Uint8Array): number {
    if (encoded.length > TARGET_PAGE_SIZE) throw new RangeError(`XBZRLE data of ${encoded.length} bytes exceeds ${TARGET_PAGE_SIZE}`);
    const n = this.header(out, idstr, offsetBytes, RAM_FLAG_XBZRLE);
    out.u8(XBZRLE_ENCODING_FLAG);
    out.be16(encoded.length);
    out.bytes(encoded);
    return n + 3 + encoded.length;
  }

  /** End of this section's RAM data. */
  writeEos(out: StreamWriter): number {
    out.be64(RAM_FLAG_EOS);
    return RAM_RECORD_HEADER_BYTES;
  }
}
