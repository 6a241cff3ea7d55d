/**
 * Records of QEMU 7.2's `block` section (migration/block.c, version 1).
 *
 * Each record starts with a be64 header: (sector << BDRV_SECTOR_BITS) | flags,
 * flags in the low 9 bits. DEVICE_BLOCK is followed by the device name as a
 * counted string and, unless ZERO_BLOCK is also set, a full 1 MiB of data (a
 * device's short last chunk is padded). PROGRESS carries the percentage in the
 * sector field. EOS ends a section body. Like block_load, the reader looks at
 * DEVICE_BLOCK first, then PROGRESS, then EOS, and ignores other bits; a
 * header with none of the three is rejected.
 */
import { StreamError, type StreamReader, type StreamWriter } from '../wire/index.js';
import { CHUNK_SIZE, SECTOR_BITS } from './geometry.js';

export const BLOCK_SECTION_IDSTR = 'block';
export const BLOCK_SECTION_VERSION = 1;

export const BLK_MIG_FLAG_DEVICE_BLOCK = 0x01;
export const BLK_MIG_FLAG_EOS = 0x02;
export const BLK_MIG_FLAG_PROGRESS = 0x04;
export const BLK_MIG_FLAG_ZERO_BLOCK = 0x08;
/** The flag bits of a header: BDRV_SECTOR_SIZE - 1. */
export const BLK_MIG_FLAGS_MASK = (1 << SECTOR_BITS) - 1;
export const BLK_MIG_BLOCK_SIZE = CHUNK_SIZE;

export type BlockRecord =
  | {
      type: 'device-block';
      device: string;
      sector: number;
      /** ZERO_BLOCK: no payload, the chunk is all zeros. */
      zero: boolean;
      /** The 1 MiB payload (a view valid until the next read), absent for zero chunks. */
      data?: Uint8Array;
      flags: number;
      offset: number;
    }
  | { type: 'progress'; percent: number; flags: number; offset: number }
  | { type: 'eos'; flags: number; offset: number };

/** Bad input in a block section (code 'handler-failed'; `blockCode` says what). */
export class BlockStreamError extends StreamError {
  constructor(
    readonly blockCode: 'bad-block-record' | 'unknown-device' | 'bad-sector' | 'io-error',
    reason: string,
    offset: number,
    options?: { cause?: unknown },
  ) {
    super('handler-failed', reason, { offset }, options);
    this.name = 'BlockStreamError';
  }
}

function header(value: number, flags: number): bigint {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`block record: bad sector/progress ${value}`);
  return (BigInt(value) << BigInt(SECTOR_BITS)) | BigInt(flags);
}

/** A DEVICE_BLOCK record: `data` is the chunk (padded with zeros to 1 MiB), or null for ZERO_BLOCK. */
export function writeDeviceBlock(out: StreamWriter, device: string, sector: number, data: Uint8Array | null): void {
  if (data !== null && data.length > BLK_MIG_BLOCK_SIZE) throw new RangeError(`block record: ${data.length} bytes exceed a chunk`);
  out.be64(header(sector, BLK_MIG_FLAG_DEVICE_BLOCK | (data === null ? BLK_MIG_FLAG_ZERO_BLOCK : 0)));
  out.countedString(device);
  if (data === null) return;
  out.bytes(data);
  if (data.length < BLK_MIG_BLOCK_SIZE) out.bytes(new Uint8Array(BLK_MIG_BLOCK_SIZE - data.length));
}

export function writeProgress(out: StreamWriter, percent: number): void {
  out.be64(header(percent, BLK_MIG_FLAG_PROGRESS));
}

export function writeEos(out: StreamWriter): void {
  out.be64(BigInt(BLK_MIG_FLAG_EOS));
}

/** One record. Bounded: at most one 1 MiB payload is buffered. */
export async function readBlockRecord(input: StreamReader): Promise<BlockRecord> {
  const offset = input.offset;
  const raw = await input.be64();
  const flags = Number(raw & BigInt(BLK_MIG_FLAGS_MASK));
  const high = raw >> BigInt(SECTOR_BITS);
  if (flags & BLK_MIG_FLAG_DEVICE_BLOCK) {
    if (high > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new BlockStreamError('bad-sector', `block record: sector ${high} too large`, offset);
    }
    const sector = Number(high);
    const device = await input.countedString();
    const zero = (flags & BLK_MIG_FLAG_ZERO_BLOCK) !== 0;
    if (zero) return { type: 'device-block', device, sector, zero, flags, offset };
    const data = await input.bytes(BLK_MIG_BLOCK_SIZE, BLK_MIG_BLOCK_SIZE, 'block chunk');
    return { type: 'device-block', device, sector, zero, data, flags, offset };
  }
  if (flags & BLK_MIG_FLAG_PROGRESS) {
    // QEMU prints the value as an int; we only bound it.
    if (high > 0xffffffffn) throw new BlockStreamError('bad-block-record', `block record: progress ${high} out of range`, offset);
    return { type: 'progress', percent: Number(high), flags, offset };
  }
  if (flags & BLK_MIG_FLAG_EOS) return { type: 'eos', flags, offset };
  throw new BlockStreamError('bad-block-record', `Unknown block migration flags: 0x${flags.toString(16)}`, offset);
}

/** Whether a record ends the section body (EOS bit set, whatever else is). */
export function endsSection(record: BlockRecord): boolean {
  return (record.flags & BLK_MIG_FLAG_EOS) !== 0;
}

/** Read records until one with EOS (included), calling `onRecord` for each. Returns the count. */
export async function readBlockSection(input: StreamReader, onRecord: (r: BlockRecord) => Promise<void> | void): Promise<number> {
  let n = 0;
  for (;;) {
    const record = await readBlockRecord(input);
    n++;
    await onRecord(record);
    if (endsSection(record)) return n;
  }
}
