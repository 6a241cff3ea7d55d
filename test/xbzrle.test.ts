import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { xbzrleDecode, xbzrleEncode, xbzrleValidate } from '../src/ram/xbzrle.js';
import { StreamError } from '../src/wire/index.js';
import { Prng } from './helpers/prng.js';

const PAGE = 4096;

/** Uniform [0, 1) numbers from the suite's seeded PRNG. */
function rng(seed: number): () => number {
  const prng = new Prng(seed);
  return () => prng.next();
}

/** A byte-at-a-time transcription of QEMU's encoder, as the oracle for the fast one. */
function referenceEncode(oldPage: Uint8Array, newPage: Uint8Array, dlen: number): Uint8Array | 0 | -1 {
  const out: number[] = [];
  const put = (n: number): void => {
    if (n < 0x80) out.push(n);
    else out.push((n & 0x7f) | 0x80, n >> 7);
  };
  let i = 0;
  while (i < newPage.length) {
    if (out.length + 2 > dlen) return -1;
    let z = 0;
    while (i < newPage.length && oldPage[i] === newPage[i]) {
      z++;
      i++;
    }
    if (z === newPage.length) return 0;
    if (i === newPage.length) return Uint8Array.from(out);
    put(z);
    if (out.length + 2 > dlen) return -1;
    const start = i;
    while (i < newPage.length && oldPage[i] !== newPage[i]) i++;
    put(i - start);
    if (out.length + (i - start) > dlen) return -1;
    for (let k = start; k < i; k++) out.push(newPage[k]!);
  }
  return Uint8Array.from(out);
}

function encode(oldPage: Uint8Array, newPage: Uint8Array, limit = PAGE): Uint8Array | 0 | -1 {
  const out = new Uint8Array(PAGE);
  const n = xbzrleEncode(oldPage, newPage, out, limit);
  return n <= 0 ? (n as 0 | -1) : out.slice(0, n);
}

function hex(s: string): Uint8Array {
  return Uint8Array.from(s.split(/\s+/).filter(Boolean).map((b) => parseInt(b, 16)));
}

function randomPair(next: () => number): [Uint8Array, Uint8Array] {
  const oldPage = new Uint8Array(PAGE);
  for (let i = 0; i < PAGE; i++) oldPage[i] = next() < 0.3 ? 0 : (next() * 256) | 0;
  const newPage = oldPage.slice();
  const kind = (next() * 5) | 0;
  if (kind === 0) {
    // a few scattered single-byte changes
    for (let k = (next() * 20) | 0; k >= 0; k--) newPage[(next() * PAGE) | 0]! ^= 1 + ((next() * 255) | 0);
  } else if (kind === 1) {
    // a few runs of changes of random length and position (unaligned on purpose)
    for (let k = (next() * 6) | 0; k >= 0; k--) {
      const start = (next() * PAGE) | 0;
      const len = 1 + ((next() * 300) | 0);
      for (let i = start; i < Math.min(PAGE, start + len); i++) newPage[i] = (newPage[i]! + 1 + ((next() * 255) | 0)) & 0xff;
    }
  } else if (kind === 2) {
    // dense random changes: often overflows
    for (let i = 0; i < PAGE; i++) if (next() < 0.5) newPage[i] = (newPage[i]! + 1) & 0xff;
  } else if (kind === 3) {
    // change every other byte: maximal run overhead
    for (let i = (next() * 2) | 0; i < PAGE; i += 2) newPage[i] = (newPage[i]! + 1) & 0xff;
  } else {
    // identical, or only the last byte changed
    if (next() < 0.5) newPage[PAGE - 1] = (newPage[PAGE - 1]! + 1) & 0xff;
  }
  return [oldPage, newPage];
}

function expectXbzrleError(encoded: Uint8Array, offset: number, pattern: RegExp, base = 1000): void {
  const page = new Uint8Array(PAGE).fill(0x5a);
  assert.throws(
    () => xbzrleDecode(encoded, page, base),
    (err: unknown) => {
      assert.ok(err instanceof StreamError, String(err));
      assert.equal(err.code, 'bad-xbzrle');
      assert.equal(err.offset, base + offset, err.message);
      assert.match(err.message, pattern);
      return true;
    },
  );
  assert.ok(page.every((b) => b === 0x5a), 'page untouched after a rejected encoding');
}

describe('xbzrle encoder', () => {
  it('encodes a one-byte change at offset 0 as 00 01 2e (verified record)', () => {
    const oldPage = new Uint8Array(PAGE).fill(0x2d);
    const newPage = oldPage.slice();
    newPage[0] = 0x2e;
    assert.deepEqual(encode(oldPage, newPage), hex('00 01 2e'));
  });

  it('reproduces the hand-built payload 0a 03 11 22 33 a0 1f 01 44', () => {
    const oldPage = new Uint8Array(PAGE).fill(0xaa);
    const newPage = oldPage.slice();
    newPage.set([0x11, 0x22, 0x33], 10);
    newPage[10 + 3 + 4000] = 0x44;
    assert.deepEqual(encode(oldPage, newPage), hex('0a 03 11 22 33 a0 1f 01 44'));
  });

  it('returns 0 for identical pages and omits the trailing zero-run', () => {
    const page = new Uint8Array(PAGE).fill(7);
    assert.equal(encode(page, page.slice()), 0);
    const changed = page.slice();
    changed[PAGE - 1] = 8;
    assert.deepEqual(encode(page, changed), hex('ff 1f 01 08'));
  });

  it('returns -1 past the limit, with QEMU overflow checks', () => {
    const oldPage = new Uint8Array(PAGE);
    const newPage = oldPage.slice();
    for (let i = 0; i < PAGE; i += 2) newPage[i] = 1; // 2048 runs × 3 bytes > 4096
    assert.equal(encode(oldPage, newPage), -1);
    // every byte different: 00 a0 20 + 4096 bytes = 4099 > 4096
    assert.equal(encode(oldPage, new Uint8Array(PAGE).fill(9)), -1);
    // a small limit overflows a small encoding
    const one = oldPage.slice();
    one[100] = 1;
    // QEMU checks for 2 bytes of room at the top of every loop, even before
    // scanning the trailing zero-run: 3 encoded bytes need a limit of 5.
    assert.deepEqual(encode(oldPage, one, 5), hex('64 01 01'));
    assert.equal(encode(oldPage, one, 4), -1);
  });

  it('matches the byte-wise reference on seeded random pairs (incl. unaligned views)', () => {
    const next = rng(0x5eed);
    const backing = new Uint8Array(PAGE + 3);
    for (let round = 0; round < 400; round++) {
      const [oldPage, newPage] = randomPair(next);
      for (const limit of [PAGE, 600]) {
        assert.deepEqual(encode(oldPage, newPage, limit), referenceEncode(oldPage, newPage, limit), `round ${round} limit ${limit}`);
      }
      if (round % 10 === 0) {
        const shifted = backing.subarray(3, 3 + PAGE);
        shifted.set(newPage);
        assert.deepEqual(encode(oldPage, shifted), referenceEncode(oldPage, newPage, PAGE), `unaligned round ${round}`);
      }
    }
  });

  it('round-trips: decoding over the old page yields the new page', () => {
    const next = rng(42);
    let encodedPages = 0;
    for (let round = 0; round < 400; round++) {
      const [oldPage, newPage] = randomPair(next);
      const out = new Uint8Array(PAGE);
      const n = xbzrleEncode(oldPage, newPage, out);
      if (n < 0) continue;
      const page = oldPage.slice();
      xbzrleDecode(out.subarray(0, n), page);
      assert.deepEqual(page, newPage, `round ${round}`);
      encodedPages++;
    }
    assert.ok(encodedPages > 200, `enough pages encoded (${encodedPages})`);
  });
});

describe('xbzrle decoder', () => {
  it('applies 00 01 2e over the current page', () => {
    const page = new Uint8Array(PAGE).fill(0x2d);
    assert.equal(xbzrleDecode(hex('00 01 2e'), page), 1);
    assert.equal(page[0], 0x2e);
    assert.ok(page.subarray(1).every((b) => b === 0x2d));
  });

  it('applies the hand-built payload over a 0xAA page', () => {
    const page = new Uint8Array(PAGE).fill(0xaa);
    xbzrleDecode(hex('0a 03 11 22 33 a0 1f 01 44'), page);
    const expected = new Uint8Array(PAGE).fill(0xaa);
    expected.set([0x11, 0x22, 0x33], 10);
    expected[4013] = 0x44;
    assert.deepEqual(page, expected);
  });

  it('accepts an empty encoding (no change), like QEMU', () => {
    const page = new Uint8Array(PAGE).fill(3);
    assert.equal(xbzrleDecode(new Uint8Array(0), page), 0);
    assert.ok(page.every((b) => b === 3));
  });

  it('accepts a data-run reaching exactly the end of the page', () => {
    const page = new Uint8Array(PAGE);
    xbzrleDecode(hex('ff 1f 01 08'), page);
    assert.equal(page[PAGE - 1], 8);
    assert.equal(xbzrleValidate(hex('ff 1f 01 08'), PAGE), PAGE);
  });

  it('rejects every rule violation with the offending offset', () => {
    // rule 1: a later zero-run of 0
    expectXbzrleError(hex('00 01 2e 00 01 2f'), 3, /empty zero-run/);
    // rule 1: a data-run of 0
    expectXbzrleError(hex('05 00 00'), 1, /empty data-run/);
    // rule 2: one byte left before a zero-run length
    expectXbzrleError(hex('00 01 2e 05'), 3, /truncated zero-run/);
    expectXbzrleError(hex('05'), 0, /truncated zero-run/);
    // rule 2: data ends right after a zero-run (one byte left for the data-run length)
    expectXbzrleError(hex('05 01 aa 05 01'), 4, /truncated data-run/);
    expectXbzrleError(hex('00 01 2e 80 01'), 5, /truncated data-run/);
    // a three-byte ULEB128
    expectXbzrleError(hex('80 80 01 01 aa'), 0, /longer than two bytes/);
    expectXbzrleError(hex('00 80 80 01'), 1, /longer than two bytes/);
    // rule 3: zero-run past the page (0x1001 = 4097)
    expectXbzrleError(hex('81 20 01 aa'), 0, /zero-run passes the end of the page/);
    // rule 3: data-run past the page: zero-run 4095, data-run 2
    expectXbzrleError(hex('ff 1f 02 aa bb'), 2, /data-run passes the end of the page/);
    // rule 3: data bytes past the encoded length
    expectXbzrleError(hex('00 05 11 22'), 1, /passes the end of the encoded data/);
  });

  it('validates before writing: a bad tail leaves the page unchanged', () => {
    expectXbzrleError(hex('00 01 2e 00 01 2f'), 3, /empty zero-run/, 0);
  });
});

describe('xbzrle: encoding guest RAM that changes while it is read', () => {
  it('always yields a valid encoding whose runs land where the page changed', { timeout: 30_000 }, async () => {
    const { Worker } = await import('node:worker_threads');
    const shared = new SharedArrayBuffer(4096);
    const page = new Uint8Array(shared);
    const stopFlag = new SharedArrayBuffer(4);
    // A thread that keeps toggling a few bytes (a guest writing the page): the encoder
    // sees a byte differ, then equal, while it reads it twice.
    const writer = new Worker(
      `const { workerData } = require('node:worker_threads');
       const p = new Uint8Array(workerData.shared); const stop = new Int32Array(workerData.stop);
       let v = 0;
       while (Atomics.load(stop, 0) === 0) { v ^= 0xff; p[0] = v; p[1000] = v; p[1001] = v ^ 0xff; p[4095] = v; }`,
      { eval: true, workerData: { shared, stop: stopFlag } },
    );
    const stop = new Int32Array(stopFlag);
    const TOGGLED = new Set([0, 1000, 1001, 4095]);
    const cache = new Uint8Array(4096); // the sender's cache, as the destination holds the page
    const out = new Uint8Array(4096);
    let encoded = 0;
    try {
      const until = Date.now() + 1500;
      while (Date.now() < until) {
        const n = xbzrleEncode(cache, page, out, 4096);
        if (n <= 0) {
          // Unchanged or overflow: a full page goes out, copied into the cache first.
          cache.set(page);
          continue;
        }
        encoded++;
        const delta = out.subarray(0, n);
        xbzrleValidate(delta, 4096); // throws on an empty run or any other malformation
        xbzrleDecode(delta, cache);
        // Only the bytes the guest writes may differ from zero: a run placed at the wrong offset would show.
        for (let i = 0; i < 4096; i++) if (!TOGGLED.has(i) && cache[i] !== 0) assert.fail(`byte ${i} of the decoded page is ${cache[i]}`);
      }
    } finally {
      Atomics.store(stop, 0, 1);
      await writer.terminate();
    }
    assert.ok(encoded > 100, `${encoded} deltas encoded while the page changed`);
  });
});
