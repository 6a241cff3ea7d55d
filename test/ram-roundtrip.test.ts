/**
 * Save → load round trips of the RAM entry over in-memory channels: several
 * blocks, zero and random pages, a rate limit that splits every pass into
 * many PART sections (so CONTINUE crosses section boundaries), re-dirtied
 * pages re-sent as PAGE (cache miss), XBZRLE (hit), nothing (unchanged) and
 * PAGE again (overflow).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { LoadSectionContext, SectionKind } from '../src/savevm/handlers.js';
import {
  DenseRamBlock,
  FixedRamBlockTable,
  RAM_FLAG_CONTINUE,
  RamLoadHandler,
  RamSaveHandler,
  type RamSaveOptions,
} from '../src/ram/index.js';
import { MemorySink, MemorySource, StreamError, StreamReader, StreamWriter } from '../src/wire/index.js';
import { Prng } from './helpers/prng.js';

const PAGE = 4096;
/** A dirty page as the pending estimate counts it: a page record (8-byte header + data). */
const PAGE_ON_WIRE = PAGE + 8;

/** Uniform [0, 1) numbers from the suite's seeded PRNG. */
function rng(seed: number): () => number {
  const prng = new Prng(seed);
  return () => prng.next();
}

function context(kind: SectionKind): LoadSectionContext {
  return { kind, versionId: 4, idstr: 'ram', instanceId: 0, sectionId: 2, offset: 0 };
}

interface Machine {
  blocks: Map<string, Uint8Array>;
  /** Pages written since the last dirty-log sync. */
  log: Array<[string, number]>;
}

const LAYOUT: Array<[string, number]> = [
  ['pc.ram', 512],
  ['vga.vram', 64],
  ['/rom@etc/acpi/tables', 32],
];

function makeMachine(next: () => number): Machine {
  const blocks = new Map<string, Uint8Array>();
  for (const [name, pages] of LAYOUT) {
    const memory = new Uint8Array(pages * PAGE);
    for (let p = 0; p < pages; p++) {
      const zero = name === 'pc.ram' ? p % 7 === 0 : name === 'vga.vram' ? p >= 4 : p === 31;
      if (!zero) for (let i = p * PAGE; i < (p + 1) * PAGE; i++) memory[i] = (next() * 256) | 0;
    }
    blocks.set(name, memory);
  }
  return { blocks, log: [] };
}

function page(m: Machine, name: string, index: number): Uint8Array {
  return m.blocks.get(name)!.subarray(index * PAGE, (index + 1) * PAGE);
}

/** Guest writes: change a few bytes (XBZRLE material). */
function touch(m: Machine, name: string, index: number, next: () => number): void {
  const p = page(m, name, index);
  for (let k = 0; k < 3; k++) p[(next() * PAGE) | 0] ^= 1 + ((next() * 254) | 0);
  m.log.push([name, index]);
}

function zeroPage(m: Machine, name: string, index: number): void {
  page(m, name, index).fill(0);
  m.log.push([name, index]);
}

function randomize(m: Machine, name: string, index: number, next: () => number): void {
  const p = page(m, name, index);
  for (let i = 0; i < PAGE; i++) p[i] = (next() * 256) | 0;
  m.log.push([name, index]);
}

/** Source handler, destination handler, and a recorder of every body. */
function setup(m: Machine, options: RamSaveOptions = {}) {
  const saver = new RamSaveHandler(
    LAYOUT.map(([name]) => new DenseRamBlock(name, m.blocks.get(name)!)),
    {
      maxIterateMs: Infinity,
      ...options,
      syncDirtyLog: (h) => {
        for (const [name, index] of m.log) h.markDirty(name, index);
        m.log.length = 0;
      },
    },
  );
  const destination = new Map(LAYOUT.map(([name, pages]) => [name, new Uint8Array(pages * PAGE).fill(0xee)]));
  const loader = new RamLoadHandler(new FixedRamBlockTable(LAYOUT.map(([name]) => new DenseRamBlock(name, destination.get(name)!))));
  loader.loadSetup();
  const bodies: Array<{ kind: SectionKind; bytes: Uint8Array }> = [];

  async function transfer(kind: SectionKind, write: (out: StreamWriter) => Promise<unknown>): Promise<unknown> {
    const sink = new MemorySink();
    const out = new StreamWriter(sink);
    const result = await write(out);
    await out.flush();
    const bytes = sink.bytes();
    bodies.push({ kind, bytes });
    const reader = new StreamReader(new MemorySource(bytes, 777));
    await loader.loadState(reader, context(kind));
    assert.ok(await reader.atEnd(), `${kind} body fully consumed`);
    return result;
  }

  /** Iterate until RAM reports nothing left, `pagesPerSection` pages per PART. */
  async function pass(pagesPerSection: number): Promise<number> {
    let sections = 0;
    for (;;) {
      let calls = 0;
      sections++;
      const done = await transfer('part', (out) => saver.saveIterate(out, () => calls++ >= pagesPerSection));
      if (done) return sections;
      assert.ok(sections < 10000, 'iteration terminates');
    }
  }

  return { saver, loader, destination, bodies, transfer, pass };
}

function assertSameRam(m: Machine, destination: Map<string, Uint8Array>): void {
  for (const [name] of LAYOUT) assert.ok(Buffer.from(m.blocks.get(name)!).equals(destination.get(name)!), `block ${name} equal`);
}

function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}

describe('RAM save → load round trip', () => {
  it('copies RAM across passes with ZERO, PAGE, XBZRLE, and CONTINUE across sections', async () => {
    const next = rng(7);
    const m = makeMachine(next);
    const { saver, loader, destination, bodies, transfer, pass } = setup(m, { xbzrle: true });
    const zeroPagesAtStart = 74 + 60 + 1; // pc.ram p % 7 == 0, vram pages 4.., acpi page 31
    const totalPages = 512 + 64 + 32;

    await transfer('start', (out) => saver.saveSetup(out));
    assert.equal(await saver.statePending(false), totalPages * PAGE_ON_WIRE);

    // Pass 1: everything, 37 pages per section.
    const sections1 = await pass(37);
    assert.ok(sections1 >= 16, `several PART sections (${sections1})`);
    assertSameRam(m, destination);
    let s = saver.stats;
    assert.equal(s.duplicatePages, zeroPagesAtStart);
    assert.equal(s.normalPages, totalPages - s.duplicatePages);
    assert.equal(s.xbzrle.pages + s.xbzrle.cacheMiss, 0, 'no XBZRLE in the first pass');

    // Pass 2: touched pages are cache misses (the first pass caches nothing), sent as PAGE.
    const pc = [...Array(512).keys()].filter((p) => p % 7 !== 0);
    const s1 = pc.slice(0, 20);
    const z = pc.slice(100, 105);
    const u: Array<[string, number]> = [['/rom@etc/acpi/tables', 1], ['/rom@etc/acpi/tables', 2], ['/rom@etc/acpi/tables', 3]];
    for (const p of s1) touch(m, 'pc.ram', p, next);
    for (const p of z) zeroPage(m, 'pc.ram', p);
    for (const [name, p] of u) m.log.push([name, p]); // dirty but unchanged
    assert.equal(await saver.statePending(true), (20 + 5 + 3) * PAGE_ON_WIRE);
    await pass(6);
    assertSameRam(m, destination);
    s = saver.stats;
    assert.equal(s.xbzrle.cacheMiss, 23);
    assert.equal(s.xbzrle.pages, 0);
    assert.equal(s.duplicatePages, zeroPagesAtStart + 5);
    assert.equal(s.normalPages, totalPages - zeroPagesAtStart + 23);

    // Pass 3: cache hits. 15 small changes → XBZRLE; one page replaced → overflow → PAGE;
    // 3 unchanged → nothing sent; 2 zeroed pages (cached as zeros) written → XBZRLE.
    for (const p of s1.slice(0, 15)) touch(m, 'pc.ram', p, next);
    randomize(m, 'pc.ram', s1[15]!, next);
    for (const [name, p] of u) m.log.push([name, p]);
    for (const p of z.slice(0, 2)) touch(m, 'pc.ram', p, next);
    assert.equal(await saver.statePending(true), (15 + 1 + 3 + 2) * PAGE_ON_WIRE);
    const before = saver.stats;
    const sections3 = await pass(4);
    assert.ok(sections3 >= 5, `sections in pass 3: ${sections3}`);
    assertSameRam(m, destination);
    s = saver.stats;
    assert.equal(s.xbzrle.pages, 15 + 1 + 3 + 2);
    assert.equal(s.xbzrle.unchangedPages, 3);
    assert.equal(s.xbzrle.overflow, 1);
    assert.equal(s.xbzrle.cacheMiss, 23);
    assert.equal(s.normalPages, before.normalPages + 1);
    assert.equal(s.duplicatePages, before.duplicatePages);

    // Completion (guest stopped): one cached page changed (XBZRLE), one never-cached page (miss, no insert → PAGE).
    touch(m, 'pc.ram', s1[0]!, next);
    randomize(m, 'vga.vram', 10, next);
    await transfer('end', (out) => saver.saveCompletePrecopy(out));
    assertSameRam(m, destination);
    s = saver.stats;
    assert.equal(s.xbzrle.pages, 22);
    assert.equal(s.xbzrle.cacheMiss, 24);
    assert.equal(s.dirtySyncCount, 4); // setup, two exact pendings, completion
    assert.equal(s.remainingBytes, 0);

    // Loader and saver agree on what was sent.
    const l = loader.stats;
    assert.equal(sum(l.blocks.map((b) => b.normalPages)), s.normalPages);
    assert.equal(sum(l.blocks.map((b) => b.zeroPages)), s.duplicatePages);
    const xbzrleRecords = sum(l.blocks.map((b) => b.xbzrlePages));
    assert.equal(xbzrleRecords, 15 + 2 + 1);
    assert.equal(s.xbzrle.bytes, sum(l.blocks.map((b) => b.xbzrleBytes)) - 8 * xbzrleRecords + PAGE * s.xbzrle.overflow);
    assert.equal(s.normalBytes, s.normalPages * PAGE);

    // transferred = page records + the EOS of every PART; START and the END's EOS are not counted.
    const parts = bodies.filter((b) => b.kind === 'part');
    const end = bodies.find((b) => b.kind === 'end')!;
    assert.equal(s.transferredBytes, sum(parts.map((b) => b.bytes.length)) + end.bytes.length - 8);
    assert.equal(s.precopyBytes + s.downtimeBytes, s.transferredBytes);

    // CONTINUE crosses section boundaries: many PART bodies start with a CONTINUE record.
    const continued = parts.filter((b) => b.bytes.length > 8 && (b.bytes[7]! & RAM_FLAG_CONTINUE) !== 0);
    assert.ok(continued.length >= 10, `sections starting with CONTINUE: ${continued.length}`);

    // ...which a loader without the previous sections rejects (S13), at the first record.
    const fresh = new RamLoadHandler(new FixedRamBlockTable(LAYOUT.map(([name, pages]) => new DenseRamBlock(name, new Uint8Array(pages * PAGE)))));
    await assert.rejects(fresh.loadState(new StreamReader(new MemorySource(continued[0]!.bytes)), context('part')), (err: unknown) => {
      assert.ok(err instanceof StreamError);
      assert.equal(err.code, 'bad-ram-record');
      assert.equal(err.offset, 0);
      assert.match(err.message, /Ack, bad migration stream/);
      return true;
    });
  });

  it('with XBZRLE the pending estimate counts cached pages at their encoded cost, not 4 KiB', async () => {
    const next = rng(21);
    const m = makeMachine(next);
    const { saver, destination, transfer, pass } = setup(m, { xbzrle: true, xbzrleCacheBytes: 1024 * PAGE });
    await transfer('start', (out) => saver.saveSetup(out));
    await pass(1000);
    // The guest changes a few bytes of ~170 pages: pass 2 caches them (misses), pass 3 sends XBZRLE records.
    const written = Array.from({ length: 200 }, (_, i) => 1 + i * 2).filter((p) => p % 7 !== 0);
    for (const p of written) touch(m, 'pc.ram', p, next);
    assert.equal(await saver.statePending(true), written.length * PAGE_ON_WIRE, 'before any XBZRLE hit: full pages');
    await pass(1000);
    for (const p of written) touch(m, 'pc.ram', p, next);
    await saver.statePending(true);
    await pass(1000);
    assert.ok(saver.stats.xbzrle.pages > 0, `XBZRLE hits: ${JSON.stringify(saver.stats)}`);
    // Pass 4: the same pages again, plus 10 pages never sent with XBZRLE (misses: full pages).
    for (const p of written) touch(m, 'pc.ram', p, next);
    for (let p = 0; p < 10; p++) randomize(m, 'vga.vram', 4 + p, next);
    const estimate = await saver.statePending(true);
    const perHit = (estimate - 10 * PAGE_ON_WIRE) / written.length;
    assert.ok(perHit > 8 && perHit < 64, `an XBZRLE hit of 3 changed bytes is estimated at ${perHit.toFixed(1)} bytes`);
    const before = saver.stats.transferredBytes;
    await pass(1000);
    const sent = saver.stats.transferredBytes - before - 8; // minus the EOS
    assert.ok(Math.abs(sent - estimate) < 0.1 * estimate, `estimate ${estimate} bytes, sent ${sent} bytes`);
    await transfer('end', (out) => saver.saveCompletePrecopy(out));
    assertSameRam(m, destination);
  });

  it('without XBZRLE re-sends dirty pages as PAGE; with alwaysSendBlockName never uses CONTINUE', async () => {
    const next = rng(99);
    const m = makeMachine(next);
    const { saver, destination, bodies, transfer, pass } = setup(m, { alwaysSendBlockName: true });
    await transfer('start', (out) => saver.saveSetup(out));
    await pass(50);
    for (let p = 1; p < 40; p += 3) touch(m, 'pc.ram', p, next);
    await saver.statePending(true);
    await pass(5);
    await transfer('end', (out) => saver.saveCompletePrecopy(out));
    assertSameRam(m, destination);
    const s = saver.stats;
    assert.equal(s.xbzrle.pages + s.xbzrle.cacheMiss + s.xbzrle.bytes, 0);
    for (const b of bodies.filter((x) => x.kind === 'part' && x.bytes.length > 8)) {
      assert.equal(b.bytes[7]! & RAM_FLAG_CONTINUE, 0);
    }
  });

  it('stops at shouldStop before the first page (an EOS-only PART) and resumes where it stopped', async () => {
    const m = makeMachine(rng(3));
    const { saver, destination, bodies, transfer, pass } = setup(m);
    await transfer('start', (out) => saver.saveSetup(out));
    const done = await transfer('part', (out) => saver.saveIterate(out, () => true));
    assert.equal(done, false);
    assert.deepEqual(bodies.at(-1)!.bytes, Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0x10));
    assert.equal(saver.stats.transferredBytes, 8);
    await pass(100);
    await transfer('end', (out) => saver.saveCompletePrecopy(out));
    assertSameRam(m, destination);
  });

  it('honours the iterate time budget', async () => {
    const m = makeMachine(rng(5));
    const { saver, transfer } = setup(m, { maxIterateMs: -1 });
    await transfer('start', (out) => saver.saveSetup(out));
    // With the budget already used up, the check after the first page ends the section.
    const done = await transfer('part', (out) => saver.saveIterate(out, () => false));
    assert.equal(done, false);
    assert.equal(await saver.statePending(false), (512 + 64 + 32 - 1) * PAGE_ON_WIRE);
  });
});
