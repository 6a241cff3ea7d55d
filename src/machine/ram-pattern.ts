/**
 * What a none machine's RAM starts with (`--pattern`), and the same fill for
 * any RAM that needs zero, sparse and random pages: no Node API, so the
 * engine's warm-up (src/migration/warm-up.ts) uses it too.
 */
const PAGE_SIZE_BYTES = 4096;

/**
 * What a source's RAM starts with:
 *  - `zero`: all zero, as QEMU's own `-M none`;
 *  - `sequential`: the first 8 bytes of page n hold n (u64 little-endian), the rest zero;
 *  - `random[:SEED]`: from a PRNG seeded with SEED (default 1), per page one
 *    of: zero, a few bytes set, or random throughout (so zero and normal pages both travel).
 */
export type NonePattern = { kind: 'zero' } | { kind: 'sequential' } | { kind: 'random'; seed: number };

/** Read `--pattern` text for the none machine; throws naming what is accepted. */
export function parseNonePattern(text: string): NonePattern {
  if (text === 'zero' || text === 'sequential') return { kind: text };
  const m = /^random(?::(\d+))?$/.exec(text);
  if (m) {
    const seed = m[1] === undefined ? 1 : Number(m[1]);
    if (Number.isSafeInteger(seed) && seed >= 0 && seed <= 0xffffffff) return { kind: 'random', seed };
  }
  throw new Error(`--pattern: the none machine takes zero, sequential or random[:SEED] (SEED 0..4294967295), got '${text}'`);
}

/** Fill `memory` (a whole number of pages) with `pattern`; deterministic, so a test can compute the same bytes. */
export function fillNoneRam(memory: Uint8Array, pattern: NonePattern): void {
  const pages = Math.floor(memory.length / PAGE_SIZE_BYTES);
  memory.fill(0);
  if (pattern.kind === 'zero') return;
  const view = new DataView(memory.buffer, memory.byteOffset, memory.byteLength);
  if (pattern.kind === 'sequential') {
    for (let page = 0; page < pages; page++) view.setBigUint64(page * PAGE_SIZE_BYTES, BigInt(page), true);
    return;
  }
  // xorshift32; a zero state would stay zero, so seed 0 is mapped to another constant.
  let state = pattern.seed >>> 0 || 0x9e3779b9;
  const next = (): number => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>>= 0);
  };
  for (let page = 0; page < pages; page++) {
    const at = page * PAGE_SIZE_BYTES;
    const kind = next() & 3;
    if (kind === 0) continue; // zero page
    if (kind === 1) {
      for (let i = 0; i < 8; i++) memory[at + (next() & (PAGE_SIZE_BYTES - 1))] = next() & 0xff || 1;
      continue;
    }
    for (let i = 0; i < PAGE_SIZE_BYTES; i += 4) view.setUint32(at + i, next(), true);
  }
}
