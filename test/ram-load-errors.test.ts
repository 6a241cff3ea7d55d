/**
 * The RAM loader on hand-built bodies: QEMU 7.2's strict cases S12–S16 and
 * lenient cases L3, L7, L8, each error with its code and stream offset.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { LoadSectionContext } from '../src/savevm/handlers.js';
import {
  AnalysisRamBlockTable,
  DenseRamBlock,
  FixedRamBlockTable,
  RamLoadHandler,
  type RamBlockTable,
  type RamLoadOptions,
} from '../src/ram/index.js';
import { MemorySource, StreamError, StreamReader, type StreamErrorCode, type StreamWriter } from '../src/wire/index.js';
import { written } from './helpers/written.js';

const PAGE = 4096;
const ZERO = 0x02;
const MEM_SIZE = 0x04;
const RAW = 0x08;
const EOS = 0x10;
const CONT = 0x20;
const XBZRLE = 0x40;

function ctx(versionId = 4): LoadSectionContext {
  return { kind: 'part', versionId, idstr: 'ram', instanceId: 0, sectionId: 2, offset: 0 };
}


function machine(): { table: FixedRamBlockTable; ram: Uint8Array; rom: Uint8Array } {
  const ram = new Uint8Array(16 * PAGE);
  const rom = new Uint8Array(2 * PAGE);
  return { table: new FixedRamBlockTable([new DenseRamBlock('pc.ram', ram), new DenseRamBlock('pc.rom', rom)]), ram, rom };
}

async function load(table: RamBlockTable, bytes: Uint8Array, options: RamLoadOptions = {}, loader = new RamLoadHandler(table, options), versionId = 4): Promise<RamLoadHandler> {
  const reader = new StreamReader(new MemorySource(bytes, 5));
  await loader.loadState(reader, ctx(versionId));
  assert.ok(await reader.atEnd(), 'body fully consumed');
  return loader;
}

async function rejects(table: RamBlockTable, bytes: Uint8Array, code: StreamErrorCode, offset: number, pattern: RegExp, loader?: RamLoadHandler, versionId = 4): Promise<void> {
  await assert.rejects(load(table, bytes, {}, loader, versionId), (err: unknown) => {
    assert.ok(err instanceof StreamError, String(err));
    assert.equal(err.code, code, err.message);
    assert.equal(err.offset, offset, err.message);
    assert.match(err.message, pattern);
    assert.equal(err.section?.idstr, 'ram');
    return true;
  });
}

describe('RAM loader: accepted input', () => {
  it('takes a block list that omits blocks when the lengths add up (L3)', async () => {
    const { table } = machine();
    const bytes = await written((w) => w.be64(16 * PAGE + MEM_SIZE).countedString('pc.ram').be64(16 * PAGE).be64(EOS));
    const loader = await load(table, bytes);
    assert.equal(loader.stats.blocks.length, 1);
    assert.equal(loader.stats.blocks[0]?.listedLengthBytes, 16 * PAGE);
  });

  it('reads a guest physical address per entry with x-ignore-shared', async () => {
    const { table } = machine();
    const bytes = await written((w) => w.be64(2 * PAGE + MEM_SIZE).countedString('pc.rom').be64(2 * PAGE).be64(0xfffc0000).be64(EOS));
    const loader = await load(table, bytes, { ignoreShared: true });
    assert.equal(loader.stats.blocks[0]?.guestPhysicalAddress, 0xfffc0000);
  });

  it('resizes a resizeable block to the listed length', async () => {
    const memory = new Uint8Array(8 * PAGE);
    const block = new DenseRamBlock('acpi', memory, { lengthBytes: 2 * PAGE, resizeable: true });
    const bytes = await written((w) => w.be64(4 * PAGE + MEM_SIZE).countedString('acpi').be64(4 * PAGE).be64(EOS));
    await load(new FixedRamBlockTable([block]), bytes);
    assert.equal(block.lengthBytes, 4 * PAGE);
  });

  it('applies ZERO (any fill byte, L8), PAGE, XBZRLE, names on every record (L7), CONTINUE', async () => {
    const { table, ram, rom } = machine();
    ram.fill(0xaa, 3 * PAGE, 4 * PAGE);
    const raw = new Uint8Array(PAGE).map((_, i) => i & 0xff);
    const bytes = await written((w) => {
      w.be64(0 + ZERO).countedString('pc.ram').u8(0); // zero page already zero
      w.be64(PAGE + ZERO + CONT).u8(0xab); // fill byte 0xab
      w.be64(2 * PAGE + RAW).countedString('pc.ram').bytes(raw); // name repeated instead of CONTINUE
      w.be64(3 * PAGE + XBZRLE + CONT).u8(1).be16(9).bytes(Uint8Array.of(0x0a, 0x03, 0x11, 0x22, 0x33, 0xa0, 0x1f, 0x01, 0x44));
      w.be64(PAGE + RAW).countedString('pc.rom').bytes(raw);
      w.be64(EOS);
    });
    const loader = await load(table, bytes);
    assert.ok(ram.subarray(0, PAGE).every((b) => b === 0));
    assert.ok(ram.subarray(PAGE, 2 * PAGE).every((b) => b === 0xab));
    assert.deepEqual(ram.subarray(2 * PAGE, 3 * PAGE), raw);
    const xpage = ram.subarray(3 * PAGE, 4 * PAGE);
    assert.deepEqual([...xpage.subarray(9, 14)], [0xaa, 0x11, 0x22, 0x33, 0xaa]);
    assert.equal(xpage[4013], 0x44);
    assert.equal(xpage.filter((b) => b !== 0xaa).length, 4);
    assert.deepEqual(rom.subarray(PAGE), raw);

    const [pcram, pcrom] = loader.stats.blocks;
    assert.equal(pcram?.zeroPages, 2);
    assert.equal(pcram?.nonZeroFillPages, 1);
    assert.equal(pcram?.normalPages, 1);
    assert.equal(pcram?.xbzrlePages, 1);
    assert.equal(pcram?.xbzrleEncodedBytes, 9);
    assert.equal(pcram?.xbzrleBytes, 8 + 3 + 9);
    assert.equal(pcram?.zeroBytes, 8 + 7 + 1 + 8 + 1);
    assert.equal(pcrom?.normalPages, 1);
    assert.equal(loader.stats.records, 6);
    assert.deepEqual(loader.stats.firstOffsets, { zero: 0, page: 25, xbzrle: 25 + 8 + 7 + PAGE, eos: bytes.length - 8 });
  });

  it('keeps the last block across sections; loadSetup() forgets it (S13)', async () => {
    const { table, ram } = machine();
    const loader = new RamLoadHandler(table);
    await load(table, await written((w) => w.be64(5 * PAGE + ZERO).countedString('pc.ram').u8(7).be64(EOS)), {}, loader);
    const continued = await written((w) => w.be64(6 * PAGE + ZERO + CONT).u8(9).be64(EOS));
    await load(table, continued, {}, loader);
    assert.equal(ram[6 * PAGE], 9);
    loader.loadSetup();
    await rejects(table, continued, 'bad-ram-record', 0, /Ack, bad migration stream/, loader);
  });

  it('accepts EOS-only sections (L9)', async () => {
    const { table } = machine();
    const loader = await load(table, await written((w) => w.be64(EOS)));
    assert.equal(loader.stats.eosRecords, 1);
  });
});

describe('RAM loader: rejected input', () => {
  it('rejects section versions other than 4', async () => {
    const eos = await written((w) => w.be64(EOS));
    await rejects(machine().table, eos, 'version-too-new', 0, /version 5 is not supported/, undefined, 5);
    await rejects(machine().table, eos, 'version-too-old', 0, /version 3 is not supported/, undefined, 3);
  });

  it('S12: unknown block in the block list, at the entry', async () => {
    const bytes = await written((w) => w.be64(PAGE + MEM_SIZE).countedString('pc.ram').be64(16 * PAGE).countedString('nope').be64(PAGE).be64(EOS));
    // total 4096 is smaller than pc.ram's length: that is reported first, at entry 0.
    await rejects(machine().table, bytes, 'bad-ram-record', 8, /exceeds the 0x1000 bytes left/);
    const unknown = await written((w) => w.be64(17 * PAGE + MEM_SIZE).countedString('pc.ram').be64(16 * PAGE).countedString('nope').be64(PAGE).be64(EOS));
    await rejects(machine().table, unknown, 'bad-ram-record', 8 + 7 + 8, /Unknown ramblock "nope", cannot accept migration/);
  });

  it('S12: size mismatch for a fixed block', async () => {
    const bytes = await written((w) => w.be64(8 * PAGE + MEM_SIZE).countedString('pc.ram').be64(8 * PAGE).be64(EOS));
    await rejects(machine().table, bytes, 'bad-ram-record', 8, /Size mismatch: pc\.ram: 0x8000 != 0x10000/);
  });

  it('S12: unknown block named by a page record', async () => {
    const bytes = await written((w) => w.be64(ZERO).countedString('vga.vram').u8(0).be64(EOS));
    await rejects(machine().table, bytes, 'bad-ram-record', 8, /Can't find block vga\.vram/);
  });

  it('S13: CONTINUE with no previous block', async () => {
    const bytes = await written((w) => w.be64(EOS).be64(PAGE + RAW + CONT));
    const loader = new RamLoadHandler(machine().table);
    await load(machine().table, bytes.subarray(0, 8), {}, loader);
    await rejects(machine().table, bytes.subarray(8), 'bad-ram-record', 0, /Ack, bad migration stream!/, loader);
  });

  it('S14: unknown flag combinations', async () => {
    const cases: Array<[string, (w: StreamWriter) => void, RegExp]> = [
      ['FULL', (w) => w.be64(0x01), /flags: 0x1 \(FULL\)/],
      ['none', (w) => w.be64(PAGE), /flags: 0x0 \(none\)/],
      ['ZERO|PAGE', (w) => w.be64(ZERO + RAW).countedString('pc.ram'), /flags: 0xa \(ZERO\|PAGE\)/],
      ['MULTIFD_FLUSH (upstream 8.1)', (w) => w.be64(0x200), /flags: 0x200/],
      ['EOS|ZERO', (w) => w.be64(EOS + ZERO).countedString('pc.ram'), /flags: 0x12/],
      ['HOOK', (w) => w.be64(0x80), /HOOK record \(RDMA control\) is not supported/],
    ];
    for (const [name, build, pattern] of cases) {
      const bytes = await written((w) => {
        w.be64(ZERO).countedString('pc.ram').u8(0); // a good record first: the error offset is the bad one's
        build(w);
      });
      await rejects(machine().table, bytes, 'bad-ram-record', 8 + 7 + 1, pattern).catch((err: unknown) => {
        throw new Error(`${name}: ${String(err)}`);
      });
    }
  });

  it('S14: page offset outside the block', async () => {
    const bytes = await written((w) => w.be64(ZERO).countedString('pc.rom').u8(0).be64(2 * PAGE + ZERO + CONT).u8(0));
    await rejects(machine().table, bytes, 'bad-ram-record', 16, /Illegal RAM offset 0x2000 in block pc\.rom/);
    const huge = await written((w) => w.be64(2n ** 60n + BigInt(RAW)).countedString('pc.ram'));
    await rejects(machine().table, huge, 'bad-ram-record', 0, /Illegal RAM offset/);
  });

  it('S15: XBZRLE encoding byte, length and data', async () => {
    const prefix = (w: StreamWriter): StreamWriter => w.be64(XBZRLE).countedString('pc.ram');
    await rejects(machine().table, await written((w) => prefix(w).u8(2).be16(3).bytes(Uint8Array.of(0, 1, 0x2e))), 'bad-xbzrle', 15, /wrong compression! \(encoding byte 0x2/);
    await rejects(machine().table, await written((w) => prefix(w).u8(1).be16(4097)), 'bad-xbzrle', 16, /len overflow! \(4097 > 4096\)/);
    // zero-run 0, data-run 1, then a zero-run of 0 at data byte 3 → offset 18 + 3.
    await rejects(machine().table, await written((w) => prefix(w).u8(1).be16(6).bytes(Uint8Array.of(0, 1, 0x2e, 0, 1, 0x2f)).be64(EOS)), 'bad-xbzrle', 21, /decode error: empty zero-run/);
  });

  it('S15: a failed XBZRLE decode leaves the page untouched', async () => {
    const { table, ram } = machine();
    ram.fill(0x33, 0, PAGE);
    await rejects(table, await written((w) => w.be64(XBZRLE).countedString('pc.ram').u8(1).be16(5).bytes(Uint8Array.of(0, 1, 0x2e, 0, 1))), 'bad-xbzrle', 18 + 3, /truncated|empty/);
    assert.ok(ram.subarray(0, PAGE).every((b) => b === 0x33));
  });

  it('S16: COMPRESS_PAGE is not supported', async () => {
    const bytes = await written((w) => w.be64(0x100 + 0x20).be32(10));
    await rejects(machine().table, bytes, 'bad-ram-record', 0, /unexpected compressed page/);
  });

  it('a truncated body reports unexpected-end', async () => {
    const bytes = await written((w) => w.be64(RAW).countedString('pc.ram').bytes(new Uint8Array(100)));
    await assert.rejects(load(machine().table, bytes), (err: unknown) => err instanceof StreamError && err.code === 'unexpected-end');
  });
});

describe('RAM loader: analysis mode (sparse blocks)', () => {
  it('creates blocks from the list without allocating them and stores only written pages', async () => {
    const table = new AnalysisRamBlockTable();
    const tib = 2 ** 40;
    const raw = new Uint8Array(PAGE).fill(5);
    const bytes = await written((w) => {
      w.be64(tib + 2 * PAGE + MEM_SIZE).countedString('pc.ram').be64(tib).countedString('pc.rom').be64(2 * PAGE);
      w.be64(tib - PAGE + RAW).countedString('pc.ram').bytes(raw);
      w.be64(0 + RAW + CONT).bytes(new Uint8Array(PAGE)); // an all-zero raw page is not stored
      w.be64(7 * PAGE + ZERO + CONT).u8(0);
      w.be64(PAGE + XBZRLE).countedString('pc.rom').u8(1).be16(3).bytes(Uint8Array.of(0, 1, 0x2e));
      w.be64(EOS);
    });
    const loader = await load(table, bytes);
    const [pcram, pcrom] = table.blocks();
    assert.equal(pcram?.lengthBytes, tib);
    assert.equal(pcram?.storedPageCount, 1);
    assert.deepEqual(pcram?.pageView(tib / PAGE - 1), raw);
    assert.equal(pcrom?.storedPageCount, 1);
    assert.equal(pcrom?.pageView(1)[0], 0x2e);
    assert.equal(table.listedTotalBytes, tib + 2 * PAGE);
    assert.equal(loader.stats.blocks[0]?.normalPages, 2);
  });

  it('refuses block lists beyond the bound (default 2^50)', async () => {
    const big = 2 ** 49;
    const bytes = await written((w) => w.be64(3 * big + MEM_SIZE).countedString('a').be64(big).countedString('b').be64(big).countedString('c').be64(big));
    await rejects(new AnalysisRamBlockTable(), bytes, 'bad-ram-record', 8 + 2 + 8 + 2 + 8, /exceed the analysis limit/);
    const small = await written((w) => w.be64(2 * PAGE + MEM_SIZE).countedString('a').be64(2 * PAGE));
    await rejects(new AnalysisRamBlockTable({ maxTotalBytes: PAGE }), small, 'bad-ram-record', 8, /exceed the analysis limit/);
  });

  it('accepts page records for unlisted blocks unless told not to', async () => {
    const bytes = await written((w) => w.be64(PAGE + ZERO).countedString('extra').u8(1).be64(EOS));
    const table = new AnalysisRamBlockTable();
    await load(table, bytes);
    assert.equal(table.isUnlisted('extra'), true);
    assert.equal(table.blocks()[0]?.pageView(1)[0], 1);
    await rejects(new AnalysisRamBlockTable({ acceptUnlistedBlocks: false }), bytes, 'bad-ram-record', 8, /Can't find block extra/);
  });

  it('with storeContents false keeps no pages at all', async () => {
    const table = new AnalysisRamBlockTable({ storeContents: false });
    const bytes = await written((w) => w.be64(PAGE + MEM_SIZE).countedString('a').be64(PAGE).be64(RAW).countedString('a').bytes(new Uint8Array(PAGE).fill(1)).be64(EOS));
    const loader = await load(table, bytes);
    assert.equal(table.blocks()[0]?.storedPageCount, 0);
    assert.equal(loader.stats.blocks[0]?.normalPages, 1);
  });
});
