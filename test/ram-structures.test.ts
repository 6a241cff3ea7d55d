import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  DenseRamBlock,
  DirtyBitmap,
  RamRecordWriter,
  RamSaveHandler,
  SparseRamBlock,
  XbzrlePageCache,
  isZeroBytes,
} from '../src/ram/index.js';
import { MemorySink, StreamWriter } from '../src/wire/index.js';

const PAGE = 4096;

describe('DirtyBitmap', () => {
  it('sets, tests, clears and counts', () => {
    const b = new DirtyBitmap(100);
    assert.equal(b.set(3), true);
    assert.equal(b.set(3), false);
    assert.equal(b.set(31), true);
    assert.equal(b.set(32), true);
    assert.equal(b.set(99), true);
    assert.equal(b.count, 4);
    assert.equal(b.test(31), true);
    assert.equal(b.test(30), false);
    assert.equal(b.clear(31), true);
    assert.equal(b.clear(31), false);
    assert.equal(b.count, 3);
    assert.throws(() => b.set(100), RangeError);
  });

  it('finds the next set bit across words, including bit 31 and the last bit', () => {
    const b = new DirtyBitmap(70);
    assert.equal(b.nextSetBit(0), 70);
    b.set(31);
    b.set(69);
    assert.equal(b.nextSetBit(0), 31);
    assert.equal(b.nextSetBit(31), 31);
    assert.equal(b.nextSetBit(32), 69);
    assert.equal(b.nextSetBit(70), 70);
    b.setAll();
    assert.equal(b.count, 70);
    assert.equal(b.words[2], 0x3f, 'no bits past the size');
    b.clearAll();
    assert.equal(b.nextSetBit(0), 70);
  });

  it('merges a dirty log word-wise and counts only new bits', () => {
    const b = new DirtyBitmap(40);
    b.set(0);
    const log = Uint32Array.of(0x80000003, 0xffffffff);
    assert.equal(b.merge(log), 1 + 1 + 8); // bit 1, bit 31, bits 32..39 (the rest is past the size)
    assert.equal(b.count, 11);
    assert.equal(b.setRange(35, 5), 0);
    assert.equal(b.setRange(2, 3), 3);
  });
});

describe('XbzrlePageCache', () => {
  it('needs a power-of-two number of pages', () => {
    assert.throws(() => new XbzrlePageCache(3 * PAGE), /power of two/);
    assert.throws(() => new XbzrlePageCache(100), /smaller than the page size/);
    assert.equal(new XbzrlePageCache().slotCount, 16384);
    assert.throws(() => new RamSaveHandler([], { xbzrle: true, xbzrleCacheBytes: 5 * PAGE }), /power of two/);
  });

  it('maps page numbers to slots and keeps fresh pages (age + 2 > generation)', () => {
    const cache = new XbzrlePageCache(4 * PAGE);
    const a = new Uint8Array(PAGE).fill(1);
    const b = new Uint8Array(PAGE).fill(2);
    assert.equal(cache.lookup(1, 1), undefined);
    const stored = cache.insert(1, a, 1);
    assert.deepEqual(stored, a);
    assert.notEqual(stored, a, 'a copy');
    assert.equal(cache.lookup(1, 1), stored);
    // page 5 shares slot 1: refused while page 1 is fresh (inserted at 1; 1 + 2 > 2)
    assert.equal(cache.insert(5, b, 2), undefined);
    // a hit at generation 2 refreshes the age: still refused at 3
    cache.lookup(1, 2);
    assert.equal(cache.insert(5, b, 3), undefined);
    // replaced once stale (2 + 2 > 4 is false)
    assert.deepEqual(cache.insert(5, b, 4), b);
    assert.equal(cache.lookup(1, 4), undefined);
    assert.equal(cache.usedSlots, 1);
    // page numbers above 2^32 keep their low bits
    assert.equal(cache.slotOf(2 ** 33 + 2), 2);
  });
});

describe('RamRecordWriter', () => {
  it('names a block once, then CONTINUEs, across calls; reset() names it again', async () => {
    const sink = new MemorySink();
    const out = new StreamWriter(sink);
    const w = new RamRecordWriter();
    assert.equal(w.writeZero(out, 'ram', 0), 8 + 4 + 1);
    assert.equal(w.writeEos(out), 8);
    assert.equal(w.writeZero(out, 'ram', PAGE), 9); // after EOS: still CONTINUE
    assert.equal(w.writeXbzrle(out, 'rom', 2 * PAGE, Uint8Array.of(0, 1, 0x2e)), 8 + 4 + 3 + 3);
    w.reset();
    assert.equal(w.writeZero(out, 'rom', 0, 0xab), 13);
    await out.flush();
    assert.deepEqual(
      [...sink.bytes()],
      [
        ...[0, 0, 0, 0, 0, 0, 0, 0x02, 3, 0x72, 0x61, 0x6d, 0],
        ...[0, 0, 0, 0, 0, 0, 0, 0x10],
        ...[0, 0, 0, 0, 0, 0, 0x10, 0x22, 0],
        ...[0, 0, 0, 0, 0, 0, 0x20, 0x40, 3, 0x72, 0x6f, 0x6d, 1, 0, 3, 0, 1, 0x2e],
        ...[0, 0, 0, 0, 0, 0, 0, 0x02, 3, 0x72, 0x6f, 0x6d, 0xab],
      ],
    );
  });

  it('writes the block list with the total', async () => {
    const sink = new MemorySink();
    const out = new StreamWriter(sink);
    const n = new RamRecordWriter().writeBlockList(out, [
      { idstr: 'pc.ram', lengthBytes: 0x9600000 },
      { idstr: 'pc.bios', lengthBytes: 0x40000 },
    ]);
    await out.flush();
    const bytes = Buffer.from(sink.bytes());
    assert.equal(n, bytes.length);
    assert.equal(bytes.readBigUInt64BE(0), 0x9640000n | 4n);
    assert.equal(bytes.subarray(8, 15).toString('latin1'), '\x06pc.ram');
    assert.equal(bytes.readBigUInt64BE(15), 0x9600000n);
  });

  it('rejects unaligned offsets', () => {
    const out = new StreamWriter(new MemorySink());
    assert.throws(() => new RamRecordWriter().writeZero(out, 'ram', 100), RangeError);
  });
});

describe('RAM blocks', () => {
  it('dense: views into caller memory, zero checks, fill skips zero pages', () => {
    const memory = new Uint8Array(4 * PAGE);
    const block = new DenseRamBlock('ram', memory);
    assert.equal(block.pageCount, 4);
    assert.equal(block.isPageZero(2), true);
    block.pageForUpdate(2)[5] = 1;
    assert.equal(memory[2 * PAGE + 5], 1);
    assert.equal(block.isPageZero(2), false);
    block.fillPage(1, 0x11);
    assert.ok(memory.subarray(PAGE, 2 * PAGE).every((b) => b === 0x11));
    const out = new Uint8Array(PAGE);
    block.readPage(1, out);
    assert.equal(out[0], 0x11);
    assert.throws(() => new DenseRamBlock('ram', new Uint8Array(100)), RangeError);
    assert.match(block.resize(PAGE) ?? '', /Size mismatch/);
  });

  it('dense: prepareForLoad tracks pages still zero; every write through the block forgets them', () => {
    const memory = new Uint8Array(40 * PAGE);
    memory[3 * PAGE + 7] = 9; // a page already non-zero before the load (in the first group of 16)
    memory[20 * PAGE] = 1; // and one in the second group
    const block = new DenseRamBlock('ram', memory);
    block.prepareForLoad({ trackZeroPages: true });
    // Nothing is known zero until prepared: a ZERO record on an unprepared page writes.
    memory[30 * PAGE + 1] = 3;
    block.fillPage(30, 0);
    assert.equal(memory[30 * PAGE + 1], 0, 'an unprepared page is zeroed');
    const before = memory.slice();
    block.preparePages(0, 16);
    block.preparePages(16, 100); // past the end: stops at the last page
    assert.deepEqual(memory, before, 'preparing changes no byte');
    block.fillPage(3, 0);
    assert.ok(memory.subarray(3 * PAGE, 4 * PAGE).every((b) => b === 0), 'a non-zero page is zeroed');
    block.fillPage(20, 0);
    assert.equal(memory[20 * PAGE], 0);
    block.writePage(5, new Uint8Array(PAGE).fill(4));
    block.fillPage(5, 0);
    assert.equal(memory[5 * PAGE + 100], 0, 'written page, then ZERO: zeroed');
    block.pageForUpdate(6)[1] = 2;
    block.pageUpdated(6);
    block.fillPage(6, 0);
    assert.equal(memory[6 * PAGE + 1], 0, 'updated page, then ZERO: zeroed');
    block.fillPage(7, 0x33);
    block.fillPage(7, 0);
    assert.equal(memory[7 * PAGE], 0, 'filled page, then ZERO: zeroed');
    block.fillPage(8, 0);
    assert.ok(memory.subarray(8 * PAGE, 9 * PAGE).every((b) => b === 0));
    block.endLoad();
    memory[9 * PAGE] = 5; // behind the block's back: only safe once the load is over
    block.fillPage(9, 0);
    assert.equal(memory[9 * PAGE], 0, 'after endLoad every ZERO page is checked again');
  });

  it('dense: a page prepared while a record is read into it in pieces is not taken for zero afterwards', () => {
    // The loader's page record split over socket reads: pageForUpdate(), an await (the preparation's
    // slice runs meanwhile and finds the page still zero), the rest of the bytes, pageUpdated().
    const memory = new Uint8Array(4 * PAGE);
    const block = new DenseRamBlock('ram', memory);
    block.prepareForLoad({ trackZeroPages: true });
    const view = block.pageForUpdate(2);
    block.preparePages(0, 4);
    view[4000] = 7;
    block.pageUpdated(2);
    block.fillPage(2, 0); // a later ZERO record for the page
    assert.equal(memory[2 * PAGE + 4000], 0, 'the ZERO record is applied');
  });

  it('dense over an unaligned view still works', () => {
    const backing = new Uint8Array(2 * PAGE + 1);
    const block = new DenseRamBlock('ram', backing.subarray(1));
    assert.equal(block.isPageZero(1), true);
    backing[PAGE + 10] = 1;
    assert.equal(block.isPageZero(1), false);
  });

  it('sparse: stores only non-zero written pages', () => {
    const block = new SparseRamBlock('big', 2 ** 45);
    assert.equal(block.pageCount, 2 ** 33);
    block.writePage(2 ** 32, new Uint8Array(PAGE).fill(3));
    block.writePage(7, new Uint8Array(PAGE));
    block.fillPage(8, 0);
    block.fillPage(9, 4);
    assert.equal(block.storedPageCount, 2);
    assert.equal(block.pageView(2 ** 32)[100], 3);
    assert.equal(block.isPageZero(7), true);
    const p = block.pageForUpdate(10);
    block.pageUpdated(10);
    assert.equal(p.length, PAGE);
    assert.equal(block.storedPageCount, 2, 'a page left zero after an update is dropped');
    block.fillPage(9, 0);
    assert.deepEqual(block.storedPageIndices(), [2 ** 32]);
  });

  it('isZeroBytes handles aligned and unaligned input', () => {
    const a = new Uint8Array(13);
    assert.equal(isZeroBytes(a), true);
    a[12] = 1;
    assert.equal(isZeroBytes(a), false);
    assert.equal(isZeroBytes(new Uint8Array(16).subarray(4)), true);
  });
});
