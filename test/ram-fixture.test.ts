/**
 * The RAM section bodies of a real QEMU 7.2 capture (`-M none -m 16M`, 2.10):
 * load them, and produce them byte for byte.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import type { LoadSectionContext, SectionKind } from '../src/savevm/handlers.js';
import { DenseRamBlock, FixedRamBlockTable, RamLoadHandler, RamSaveHandler, AnalysisRamBlockTable } from '../src/ram/index.js';
import { MemorySink, MemorySource, StreamReader, StreamWriter } from '../src/wire/index.js';
import { fixturePath } from './helpers/paths.js';

const FIXTURE = fixturePath('qemu72-none-16M.mig');
const MIB16 = 16 * 1024 * 1024;

// Body ranges in the fixture: [start, end) — each ends right before the 7e footer.
const START_BODY = [0x22, 0x36 + 8] as const;
const PART_BODY = [0x48, 0x904c + 8] as const;
const END_BODY = [0x5e + 0x9000, 0x5e + 0x9000 + 8] as const;

// Offsets of the section headers (type byte) in the fixture.
const HEADER_OFFSETS: Record<string, number> = { start: 0x11, part: 0x43, end: 0x9059 };

function context(kind: SectionKind): LoadSectionContext {
  return { kind, versionId: 4, idstr: 'ram', instanceId: 0, sectionId: 2, offset: HEADER_OFFSETS[kind] ?? 0 };
}

async function readerAt(file: Uint8Array, offset: number): Promise<StreamReader> {
  // Chunks of 1000 bytes exercise records split across reads; offsets stay absolute.
  const reader = new StreamReader(new MemorySource(file, 1000));
  await reader.skip(offset);
  return reader;
}

async function section(write: (out: StreamWriter) => Promise<unknown>): Promise<{ bytes: Uint8Array; result: unknown }> {
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  const result = await write(out);
  await out.flush();
  return { bytes: sink.bytes(), result };
}

describe('QEMU 7.2 -M none capture', async () => {
  const file = new Uint8Array(await readFile(FIXTURE));

  it('has the bodies where the walk-through says', () => {
    assert.equal(file[START_BODY[1]], 0x7e);
    assert.equal(file[PART_BODY[1]], 0x7e);
    assert.equal(file[0x9059], 0x03); // SECTION_END header
    assert.equal(file[END_BODY[1]], 0x7e);
  });

  it('loads START, PART and END into a 16 MiB block named ram', async () => {
    const memory = new Uint8Array(MIB16).fill(0x55); // ZERO records must clear it
    const loader = new RamLoadHandler(new FixedRamBlockTable([new DenseRamBlock('ram', memory)]));
    loader.loadSetup();

    for (const [kind, [from, to]] of [['start', START_BODY], ['part', PART_BODY], ['end', END_BODY]] as const) {
      const reader = await readerAt(file, from);
      await loader.loadState(reader, context(kind));
      assert.equal(reader.offset, to, `${kind} body consumed exactly`);
    }

    assert.ok(memory.every((b) => b === 0), 'all RAM zero');
    const stats = loader.stats;
    assert.equal(stats.sections, 3);
    assert.equal(stats.records, 1 + 1 + 4096 + 1 + 1);
    assert.equal(stats.eosRecords, 3);
    assert.equal(stats.announcedTotalBytes, MIB16);
    assert.equal(stats.blocks.length, 1);
    const ram = stats.blocks[0]!;
    assert.equal(ram.idstr, 'ram');
    assert.equal(ram.listedLengthBytes, MIB16);
    assert.equal(ram.zeroPages, 4096);
    assert.equal(ram.normalPages, 0);
    assert.equal(ram.xbzrlePages, 0);
    assert.equal(ram.zeroBytes, 4096 * 9 + 4); // the first record names the block
    assert.deepEqual(stats.firstOffsets, { blockList: 0x22, zero: 0x48, eos: 0x36 });
  });

  it('analyses the capture with a sparse block that stores nothing', async () => {
    const table = new AnalysisRamBlockTable();
    const loader = new RamLoadHandler(table);
    for (const [kind, [from]] of [['start', START_BODY], ['part', PART_BODY], ['end', END_BODY]] as const) {
      await loader.loadState(await readerAt(file, from), context(kind));
    }
    const [block] = table.blocks();
    assert.equal(block?.idstr, 'ram');
    assert.equal(block?.lengthBytes, MIB16);
    assert.equal(block?.storedPageCount, 0);
    assert.equal(loader.stats.blocks[0]?.zeroPages, 4096);
  });

  it('saves byte-identical START, PART and END bodies for an all-zero 16 MiB block', async () => {
    const saver = new RamSaveHandler([new DenseRamBlock('ram', new Uint8Array(MIB16))], { maxIterateMs: Infinity });

    const start = await section((out) => saver.saveSetup(out));
    assert.deepEqual(start.bytes, file.subarray(...START_BODY));

    const part = await section((out) => saver.saveIterate(out, () => false));
    assert.equal(part.result, true, 'nothing left after the first pass');
    assert.equal(part.bytes.length, PART_BODY[1] - PART_BODY[0]);
    assert.deepEqual(part.bytes, file.subarray(...PART_BODY));
    assert.equal(await saver.statePending(false), 0);

    const end = await section((out) => saver.saveCompletePrecopy(out));
    assert.deepEqual(end.bytes, file.subarray(...END_BODY));

    // query-migrate after that capture: transferred 36876, duplicate 4096, normal 0, dirty-sync-count 2.
    const stats = saver.stats;
    assert.equal(stats.transferredBytes, 36876);
    assert.equal(stats.duplicatePages, 4096);
    assert.equal(stats.normalPages, 0);
    assert.equal(stats.normalBytes, 0);
    assert.equal(stats.dirtySyncCount, 2);
    assert.equal(stats.totalBytes, MIB16);
    assert.equal(stats.remainingBytes, 0);
  });
});
