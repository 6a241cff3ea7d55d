/**
 * The v86 dirty log's shadow copy (src/machine/shadow-copy.ts) against a
 * plain reference: after every compare the copy equals RAM and exactly the
 * pages whose contents changed since the previous compare (or since they
 * were set) are reported, through zero groups, non-zero groups, pages that
 * become zero again and misaligned RAM views.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SHADOW_GROUP_BYTES, ShadowCopy } from '../src/machine/shadow-copy.js';

const PAGE = 4096;
const PAGES_PER_GROUP = SHADOW_GROUP_BYTES / PAGE;

/** Deterministic PRNG (xorshift32). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const bits = (bitmap: Uint32Array): number[] => {
  const out: number[] = [];
  for (let w = 0; w < bitmap.length; w++) for (let b = 0; b < 32; b++) if (bitmap[w]! & (1 << b)) out.push(w * 32 + b);
  return out;
};

function compareAll(shadow: ShadowCopy, ram: Buffer, pieces: number[]): number[] {
  const bitmap = new Uint32Array(Math.ceil(ram.length / PAGE / 32));
  let n = 0;
  for (let i = 0; i + 1 < pieces.length; i++) n += shadow.compare(ram, pieces[i]!, pieces[i + 1]!, bitmap);
  const got = bits(bitmap);
  assert.equal(n, got.length, 'the count matches the bitmap');
  return got;
}

describe('ShadowCopy', () => {
  for (const misalign of [0, 1]) {
    it(`reports exactly the changed pages and stays equal to RAM (random writes${misalign ? ', RAM view not 4-aligned' : ''})`, () => {
      const groups = 8;
      const length = groups * SHADOW_GROUP_BYTES;
      const pages = length / PAGE;
      const backing = Buffer.alloc(length + misalign);
      const ram = backing.subarray(misalign);
      const random = rng(1234 + misalign);
      // Group 1 and page 40 start non-zero; the rest is zero.
      ram.fill(7, SHADOW_GROUP_BYTES, 2 * SHADOW_GROUP_BYTES);
      ram[40 * PAGE + 100] = 1;
      const shadow = new ShadowCopy(length);
      shadow.copyFrom(ram, 0, length / 2);
      shadow.copyFrom(ram, length / 2, length);
      assert.equal(Buffer.compare(shadow.bytes, ram), 0, 'copyFrom: the copy equals RAM');
      assert.deepEqual(compareAll(shadow, ram, [0, length]), [], 'nothing changed');
      let reference = Buffer.from(ram);
      for (let round = 0; round < 60; round++) {
        const writes = Math.floor(random() * 12);
        for (let i = 0; i < writes; i++) {
          const page = Math.floor(random() * pages);
          const at = page * PAGE + Math.floor(random() * PAGE);
          const kind = random();
          if (kind < 0.3) ram[at] = 0; // maybe back to zero
          else if (kind < 0.4) ram.fill(0, page * PAGE, (page + 1) * PAGE); // the whole page zero again
          else if (kind < 0.5) ram[page * PAGE] ^= 1; // the first word (the peek)
          else ram[at] = 1 + Math.floor(random() * 255);
        }
        // Sometimes A → B → A within one round: not a change.
        if (random() < 0.3) {
          const at = Math.floor(random() * length);
          const old = ram[at]!;
          ram[at] = old ^ 0x55;
          ram[at] = old;
        }
        const expected: number[] = [];
        for (let p = 0; p < pages; p++) if (Buffer.compare(ram.subarray(p * PAGE, (p + 1) * PAGE), reference.subarray(p * PAGE, (p + 1) * PAGE)) !== 0) expected.push(p);
        const cut = Math.floor(random() * groups) * SHADOW_GROUP_BYTES;
        assert.deepEqual(compareAll(shadow, ram, cut === 0 ? [0, length] : [0, cut, length]), expected, `round ${round}`);
        assert.equal(Buffer.compare(shadow.bytes, ram), 0, `round ${round}: the copy equals RAM`);
        reference = Buffer.from(ram);
      }
    });
  }

  it('setPage records what was sent: a page that goes B → C (sent) → B is reported; a zero page sent keeps a zero group zero', () => {
    const length = 4 * SHADOW_GROUP_BYTES;
    const ram = Buffer.alloc(length);
    ram.fill(9, 0, SHADOW_GROUP_BYTES);
    const shadow = new ShadowCopy(length);
    shadow.copyFrom(ram, 0, length);
    const page = 3;
    ram[page * PAGE] = 1; // B
    assert.deepEqual(compareAll(shadow, ram, [0, length]), [page]);
    ram[page * PAGE] = 2; // C, sent
    shadow.setPage(page * PAGE, ram.subarray(page * PAGE, (page + 1) * PAGE));
    ram[page * PAGE] = 1; // B again
    assert.deepEqual(compareAll(shadow, ram, [0, length]), [page], 'the destination holds C');
    // Zero pages sent: in a zero group nothing to do; in a non-zero one the copy's page becomes zero.
    const zeroGroupPage = 2 * PAGES_PER_GROUP + 1;
    shadow.setPage(zeroGroupPage * PAGE, undefined);
    assert.deepEqual(compareAll(shadow, ram, [0, length]), []);
    shadow.setPage(5 * PAGE, undefined); // RAM still holds 9s there
    assert.deepEqual(compareAll(shadow, ram, [0, length]), [5], 'RAM differs from the zero page sent');
    // A zero group gets a non-zero page by setPage, then RAM goes back to zero there.
    const p = 3 * PAGES_PER_GROUP + 2;
    ram[p * PAGE + 9] = 4;
    shadow.setPage(p * PAGE, ram.subarray(p * PAGE, (p + 1) * PAGE));
    assert.deepEqual(compareAll(shadow, ram, [0, length]), []);
    ram[p * PAGE + 9] = 0;
    assert.deepEqual(compareAll(shadow, ram, [0, length]), [p]);
    assert.equal(Buffer.compare(shadow.bytes, ram), 0);
  });

  it('copyFrom over a used copy (RAM written behind the log) makes it equal RAM again, zero groups included', () => {
    const length = 4 * SHADOW_GROUP_BYTES;
    const ram = Buffer.alloc(length, 3);
    const shadow = new ShadowCopy(length);
    shadow.copyFrom(ram, 0, length);
    ram.fill(0, 0, 2 * SHADOW_GROUP_BYTES);
    ram[3 * SHADOW_GROUP_BYTES] = 8;
    shadow.copyFrom(ram, 0, length);
    assert.equal(Buffer.compare(shadow.bytes, ram), 0);
    assert.deepEqual(compareAll(shadow, ram, [0, length]), []);
    ram[10] = 1;
    assert.deepEqual(compareAll(shadow, ram, [0, length]), [0]);
  });
});
