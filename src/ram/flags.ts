/**
 * RAM record flags (QEMU 7.2 migration/ram.c, RAM_SAVE_FLAG_*).
 *
 * Every record starts with a be64 holding the page's byte offset inside its
 * block OR-ed with these flags in the bits below the page size.
 */
import { TARGET_PAGE_SIZE } from '../wire/index.js';

export const RAM_FLAG_FULL = 0x01; // obsolete since 2009, never valid
export const RAM_FLAG_ZERO = 0x02;
export const RAM_FLAG_MEM_SIZE = 0x04;
export const RAM_FLAG_PAGE = 0x08;
export const RAM_FLAG_EOS = 0x10;
export const RAM_FLAG_CONTINUE = 0x20;
export const RAM_FLAG_XBZRLE = 0x40;
export const RAM_FLAG_HOOK = 0x80; // RDMA only
export const RAM_FLAG_COMPRESS_PAGE = 0x100;

/** Record kinds that carry a page and therefore name (or continue) a block. */
export const RAM_PAGE_RECORD_FLAGS = RAM_FLAG_ZERO | RAM_FLAG_PAGE | RAM_FLAG_COMPRESS_PAGE | RAM_FLAG_XBZRLE;

/** The flag bits of a record header: everything below the page size. */
export const RAM_FLAG_MASK = TARGET_PAGE_SIZE - 1;

/** The byte after an XBZRLE record header (ENCODING_FLAG_XBZRLE). */
export const XBZRLE_ENCODING_FLAG = 0x01;

/** The only section version QEMU 7.2 reads or writes for `ram`. */
export const RAM_SECTION_VERSION = 4;
export const RAM_IDSTR = 'ram';

/** Bytes of a record header (the be64). */
export const RAM_RECORD_HEADER_BYTES = 8;

/** Human-readable flag names, for error messages and analyzers. */
export function describeRamFlags(flags: number): string {
  const names: string[] = [];
  const table: Array<[number, string]> = [
    [RAM_FLAG_FULL, 'FULL'],
    [RAM_FLAG_ZERO, 'ZERO'],
    [RAM_FLAG_MEM_SIZE, 'MEM_SIZE'],
    [RAM_FLAG_PAGE, 'PAGE'],
    [RAM_FLAG_EOS, 'EOS'],
    [RAM_FLAG_CONTINUE, 'CONTINUE'],
    [RAM_FLAG_XBZRLE, 'XBZRLE'],
    [RAM_FLAG_HOOK, 'HOOK'],
    [RAM_FLAG_COMPRESS_PAGE, 'COMPRESS_PAGE'],
  ];
  let rest = flags;
  for (const [bit, name] of table) {
    if (flags & bit) {
      names.push(name);
      rest &= ~bit;
    }
  }
  if (rest) names.push(`0x${rest.toString(16)}`);
  return names.length ? names.join('|') : 'none';
}
