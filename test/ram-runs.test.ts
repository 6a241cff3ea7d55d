/**
 * Runs of records, the bulk of every stream: the source writes never-written
 * pages as one run of ZERO records (DirtyBitmap.clearCommonRun,
 * RamRecordWriter.writeZeroRun), the destination loads buffered PAGE and ZERO
 * records that continue a block in one loop. Each must give exactly what the
 * record-by-record path gives: the same bytes, the same RAM, the same
 * counters, and errors at the same stream offsets, however the stream is cut
 * into chunks.
 */
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { describe, it } from 'node:test';
import type { LoadSectionContext } from '../src/savevm/handlers.js';
import { DenseRamBlock, DirtyBitmap, FixedRamBlockTable, RamLoadHandler, RamRecordWriter } from '../src/ram/index.js';
import { MemorySource, StreamError, StreamReader } from '../src/wire/index.js';
import { written } from './helpers/written.js';

const PAGE = 4096;
const ZERO = 0x02;
const RAW = 0x08;
const EOS = 0x10;
const CONT = 0x20;
const XBZRLE = 0x40;

function ctx(): LoadSectionContext {
  return { kind: 'part', versionId: 4, idstr: 'ram', instanceId: 0, sectionId: 2, offset: 0 };
}


/** Chunk sizes from one byte (never a whole record buffered) to the whole stream at once. */
const CHUNKINGS = [1, 5, 4103, 4104, 4105, 65536, 1 << 30];

describe('DirtyBitmap.clearCommonRun', () => {
  it('clears and counts the run set in both, word-wise and bit-wise, up to the limit', () => {
    const a = new DirtyBitmap(200);
    const b = new DirtyBitmap(200);
    a.setAll();
    b.setRange(3, 150); // 3..152
    assert.equal(a.clearCommonRun(b, 0, 1000), 0, 'bit 0 is not set in b');
    assert.equal(a.count, 200);
    assert.equal(a.clearCommonRun(b, 5, 10), 10, 'limited by maxBits');
    assert.equal(a.test(4), true);
    assert.equal(a.test(5), false);
    assert.equal(a.test(14), false);
    assert.equal(a.test(15), true);
    assert.equal(b.test(15), true);
    assert.equal(a.clearCommonRun(b, 15, 1000), 138, '15..152: bits up to 31, whole words 32..127, bits 128..152');
    assert.equal(a.test(152), false);
    assert.equal(a.test(153), true);
    assert.equal(a.count, 200 - 148);
    assert.equal(b.count, 2, 'bits 3 and 4 are left in b');
    assert.equal(b.nextSetBit(0), 3);
    // Stops at the end of the bitmap.
    const c = new DirtyBitmap(70);
    const d = new DirtyBitmap(70);
    c.setAll();
    d.setAll();
    assert.equal(c.clearCommonRun(d, 1, 1 << 20), 69);
    assert.equal(c.count, 1);
    assert.equal(d.count, 1);
    assert.throws(() => c.clearCommonRun(new DirtyBitmap(71), 0, 1), /sizes differ/);
    assert.throws(() => c.clearCommonRun(d, 70, 1), /outside/);
  });
});

describe('RamRecordWriter.writeZeroRun', () => {
  for (const useContinue of [true, false]) {
    it(`writes the bytes of one writeZero per page (${useContinue ? 'CONTINUE' : 'block named in every record'}), offsets past 4 GiB included`, async () => {
      const first = (1 << 20) * PAGE - 3 * PAGE; // the run crosses 4 GiB
      for (const named of ['pc.ram', undefined]) {
        const runWriter = new RamRecordWriter({ useContinue });
        const oneWriter = new RamRecordWriter({ useContinue });
        const run = await written((w) => {
          if (named === undefined) runWriter.writeZero(w, 'pc.ram', 0); // the run then continues the block
          assert.equal(runWriter.writeZeroRun(w, 'pc.ram', first, 7), useContinue && named === undefined ? 7 * 9 : useContinue ? 8 + 7 + 1 + 6 * 9 : 7 * (8 + 7 + 1));
          assert.equal(runWriter.writeZeroRun(w, 'pc.ram', first, 0), 0);
        });
        const one = await written((w) => {
          if (named === undefined) oneWriter.writeZero(w, 'pc.ram', 0);
          for (let i = 0; i < 7; i++) oneWriter.writeZero(w, 'pc.ram', first + i * PAGE);
        });
        assert.deepEqual(run, one);
      }
    });
  }
});

/** A stream of runs: named first record, PAGE and ZERO runs, interruptions the loop must leave to the general path. */
async function mixedStream(ramPages: number): Promise<{ bytes: Uint8Array; expected: Uint8Array }> {
  const expected = new Uint8Array(ramPages * PAGE);
  const page = (p: number): Uint8Array => {
    const data = new Uint8Array(PAGE);
    randomFillSync(data);
    expected.set(data, p * PAGE);
    return data;
  };
  const bytes = await written((w) => {
    w.be64(0 + RAW).countedString('pc.ram').bytes(page(0));
    for (let p = 1; p < 40; p++) w.be64(p * PAGE + RAW + CONT).bytes(page(p));
    for (let p = 40; p < 90; p++) w.be64(p * PAGE + ZERO + CONT).u8(0);
    w.be64(90 * PAGE + ZERO + CONT).u8(0x5a); // a fill byte other than 0: the general path
    expected.fill(0x5a, 90 * PAGE, 91 * PAGE);
    w.be64(91 * PAGE + XBZRLE + CONT).u8(1).be16(3).bytes(Uint8Array.of(0x00, 0x01, 0x77)); // XBZRLE over a zero page
    expected[91 * PAGE] = 0x77;
    for (let p = 92; p < ramPages; p++) w.be64(p * PAGE + RAW + CONT).bytes(page(p));
    w.be64(EOS);
  });
  return { bytes, expected };
}

describe('RAM loader: buffered runs', () => {
  it('loads the same RAM with the same counters however the stream is cut', async () => {
    const ramPages = 128;
    const { bytes, expected } = await mixedStream(ramPages);
    let reference: unknown;
    for (const chunkBytes of CHUNKINGS) {
      const ram = new Uint8Array(ramPages * PAGE).fill(0xee, 40 * PAGE, 50 * PAGE); // zero pages must be written where not zero
      const loader = new RamLoadHandler(new FixedRamBlockTable([new DenseRamBlock('pc.ram', ram)]));
      const reader = new StreamReader(new MemorySource(bytes, chunkBytes));
      await loader.loadState(reader, ctx());
      assert.ok(await reader.atEnd(), `chunks of ${chunkBytes}: body fully consumed`);
      assert.ok(Buffer.from(ram).equals(expected), `chunks of ${chunkBytes}: RAM as sent`);
      const stats = structuredClone(loader.stats);
      assert.equal(stats.records, ramPages + 1);
      assert.equal(stats.blocks[0]?.normalPages, ramPages - 52);
      assert.equal(stats.blocks[0]?.zeroPages, 51);
      assert.equal(stats.blocks[0]?.nonZeroFillPages, 1);
      assert.equal(stats.blocks[0]?.normalBytes, 7 + (ramPages - 52) * (8 + PAGE));
      assert.equal(stats.blocks[0]?.zeroBytes, 51 * 9);
      assert.deepEqual(stats.firstOffsets, { page: 0, zero: 15 + PAGE + 39 * (8 + PAGE), xbzrle: 15 + 39 * (8 + PAGE) + PAGE + 51 * 9, eos: bytes.length - 8 });
      if (reference === undefined) reference = stats;
      else assert.deepEqual(stats, reference, `chunks of ${chunkBytes}: the counters of one-byte chunks`);
    }
  });

  it('tells its source where page copies start, so reads can land them 8-byte aligned (alignReads), once per change', async () => {
    // Page data at stream offset 15 (header and block name first): ≡ 7 (mod 8); 4104-byte PAGE records keep that;
    // a 9-byte ZERO record moves the pages after it to ≡ 0.
    const bytes = await written((w) => {
      w.be64(0 + RAW).countedString('pc.ram').bytes(new Uint8Array(PAGE).fill(1));
      for (let p = 1; p < 8; p++) w.be64(p * PAGE + RAW + CONT).bytes(new Uint8Array(PAGE).fill(p));
      w.be64(8 * PAGE + ZERO + CONT).u8(0);
      for (let p = 9; p < 16; p++) w.be64(p * PAGE + RAW + CONT).bytes(new Uint8Array(PAGE).fill(p));
      w.be64(EOS);
    });
    for (const chunkBytes of [65536, 1 << 30]) {
      const hints: number[] = [];
      const inner = new MemorySource(bytes, chunkBytes);
      const source = { read: () => inner.read(), close: () => inner.close(), alignReads: (mod8: number) => void hints.push(mod8) };
      const ram = new Uint8Array(16 * PAGE);
      await new RamLoadHandler(new FixedRamBlockTable([new DenseRamBlock('pc.ram', ram)])).loadState(new StreamReader(source), ctx());
      assert.deepEqual(hints, [7, 0], `chunks of ${chunkBytes}`);
      for (let p = 0; p < 16; p++) assert.equal(ram[p * PAGE + PAGE - 1], p === 8 ? 0 : p === 0 ? 1 : p, `page ${p}`);
    }
  });

  it('an offset past the block inside a run fails at that record, after loading the ones before it', async () => {
    const bad = 30;
    const bytes = await written((w) => {
      w.be64(0 + RAW).countedString('pc.ram').bytes(new Uint8Array(PAGE).fill(1));
      for (let p = 1; p < 64; p++) w.be64((p === bad ? 64 : p) * PAGE + (p & 1 ? ZERO + CONT : RAW + CONT)).bytes(p & 1 ? Uint8Array.of(0) : new Uint8Array(PAGE).fill(p));
      w.be64(EOS);
    });
    let at = 15 + PAGE;
    for (let p = 1; p < bad; p++) at += p & 1 ? 9 : 8 + PAGE;
    for (const chunkBytes of CHUNKINGS) {
      const ram = new Uint8Array(64 * PAGE).fill(0xee);
      const loader = new RamLoadHandler(new FixedRamBlockTable([new DenseRamBlock('pc.ram', ram)]));
      await assert.rejects(loader.loadState(new StreamReader(new MemorySource(bytes, chunkBytes)), ctx()), (err: unknown) => {
        assert.ok(err instanceof StreamError, String(err));
        assert.equal(err.offset, at, `chunks of ${chunkBytes}: ${err.message}`);
        assert.match(err.message, /Illegal RAM offset 0x40000 in block pc\.ram/);
        return true;
      });
      assert.equal(loader.stats.records, bad + 1, `chunks of ${chunkBytes}: the records before it, and it`);
      assert.equal(ram[(bad - 2) * PAGE], bad - 2, `chunks of ${chunkBytes}: page ${bad - 2} loaded`);
      assert.equal(ram[(bad - 1) * PAGE], 0, `chunks of ${chunkBytes}: page ${bad - 1} zeroed`);
      assert.equal(ram[bad * PAGE], 0xee, `chunks of ${chunkBytes}: page ${bad} untouched`);
    }
  });
});
