/**
 * Finding the vmdesc JSON trailer from the end of a stream, the way QEMU's
 * scripts/analyze-migration.py does: the trailer describes the FULL sections,
 * which cannot be decoded without it, and it sits after all of them.
 */
import { MAX_VMDESC_BYTES, SectionType } from '../wire/index.js';

/** How much of a stream's end to search: the largest trailer we accept, plus its header. */
export const TRAILER_SEARCH_BYTES = MAX_VMDESC_BYTES + 6;

/**
 * Locate `00 06 <be32 len> <len bytes of JSON>` ending exactly at the end of
 * `tail`, whose first byte is at stream offset `tailOffset`. Returns the
 * offset of the 0x06 byte and the JSON text, or null when there is none.
 */
export function findVmdescTrailer(tail: Uint8Array, tailOffset: number): { offset: number; json: string } | null {
  const view = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  // Scan backwards for the '{' that starts the JSON; its header precedes it.
  for (let brace = tail.length - 1; brace >= 6; brace--) {
    if (tail[brace] !== 0x7b /* { */) continue;
    const type = brace - 5;
    if (tail[type] !== SectionType.VmDescription || tail[type - 1] !== SectionType.Eof) continue;
    const length = view.getUint32(type + 1);
    if (brace + length !== tail.length) continue;
    const json = new TextDecoder().decode(tail.subarray(brace));
    try {
      JSON.parse(json);
    } catch {
      continue;
    }
    return { offset: tailOffset + type, json };
  }
  return null;
}
