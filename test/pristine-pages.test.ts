/**
 * Pages a RAM block vouches were never written (RamBlock.pristinePages) go
 * out as zero pages without being read, and every page written after setup
 * is still sent with its contents: reported by a sync, marked dirty, or
 * written by the test machine's vCPU while the migration runs.
 */
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { describe, it, test } from 'node:test';
import { createTestMachine, type TestMachine } from '../src/machine/index.js';
import { IncomingMigration, OutgoingMigration } from '../src/migration/index.js';
import { queryMigrate } from '../src/monitor/query-migrate.js';
import { DenseRamBlock, FixedRamBlockTable, RamLoadHandler, RamSaveHandler } from '../src/ram/index.js';
import type { LoadSectionContext, SectionKind } from '../src/savevm/handlers.js';
import { MemorySink, MemorySource, StreamReader, StreamWriter } from '../src/wire/index.js';

const PAGE = 4096;
const MiB = 1024 * 1024;

function context(kind: SectionKind): LoadSectionContext {
  return { kind, versionId: 4, idstr: 'ram', instanceId: 0, sectionId: 2, offset: 0 };
}

function bitmapOf(pages: number, set: (page: number) => boolean): Uint32Array {
  const words = new Uint32Array(Math.ceil(pages / 32));
  for (let p = 0; p < pages; p++) if (set(p)) words[p >>> 5]! |= 1 << (p & 31);
  return words;
}

describe('RamSaveHandler with pristine pages', () => {
  it('sends pristine pages as zero unread, and pages written after setup with their contents', async () => {
    const pages = 64;
    const source = new Uint8Array(pages * PAGE);
    const fill = (page: number): void => void randomFillSync(source.subarray(page * PAGE, (page + 1) * PAGE));
    for (let p = 0; p < 4; p++) fill(p);
    // The owner's account: pages 0..3 written, the rest never.
    const block = new DenseRamBlock('ram', source, { pristinePages: () => bitmapOf(pages, (p) => p >= 4) });
    const log: number[] = [];
    const saver = new RamSaveHandler([block], {
      maxIterateMs: Infinity,
      syncDirtyLog: (h) => {
        if (log.length > 0) h.mergeDirty('ram', bitmapOf(pages, (p) => log.includes(p)));
        log.length = 0;
      },
    });
    const destination = new Uint8Array(pages * PAGE).fill(0xee);
    const loader = new RamLoadHandler(new FixedRamBlockTable([new DenseRamBlock('ram', destination)]));
    loader.loadSetup();
    const transfer = async (kind: SectionKind, write: (out: StreamWriter) => Promise<unknown>): Promise<unknown> => {
      const sink = new MemorySink();
      const out = new StreamWriter(sink);
      const result = await write(out);
      await out.flush();
      await loader.loadState(new StreamReader(new MemorySource(sink.bytes(), 777)), context(kind));
      return result;
    };

    await transfer('start', (out) => saver.saveSetup(out));
    // Written after setup: page 10 reported by the next sync, page 20 marked dirty at once;
    // page 30 written behind the owner's back (it breaks the promise: this shows pristine pages are not read).
    fill(10);
    log.push(10);
    fill(20);
    saver.markDirty('ram', 20);
    fill(30);
    let calls = 0;
    assert.equal(await transfer('part', (out) => saver.saveIterate(out, () => calls++ >= 5)), false);
    await saver.statePending(true); // the sync that reports page 10, not yet sent
    while (!(await transfer('part', (out) => saver.saveIterate(out, () => false)))) {}
    await transfer('end', (out) => saver.saveCompletePrecopy(out));

    const same = (p: number): boolean => Buffer.from(source.subarray(p * PAGE, (p + 1) * PAGE)).equals(destination.subarray(p * PAGE, (p + 1) * PAGE));
    for (const p of [0, 1, 2, 3, 10, 20]) assert.ok(same(p), `page ${p} arrived with its contents`);
    assert.ok(destination.subarray(30 * PAGE, 31 * PAGE).every((b) => b === 0), 'page 30 was taken as pristine (sent as zero, not read)');
    for (let p = 4; p < pages; p++) if (p !== 10 && p !== 20 && p !== 30) assert.ok(same(p), `page ${p} zero on both sides`);
    // Page 10 went out (as zero) in the first iterate's run of never-written pages 4..19,
    // before the sync reported it; it went out again with its contents after that sync.
    assert.equal(saver.stats.duplicatePages, pages - 6 + 1);
    assert.equal(saver.stats.normalPages, 6);
  });

  it('a block that was written through (a load) stops vouching for pages', () => {
    const block = new DenseRamBlock('ram', new Uint8Array(8 * PAGE), { pristinePages: () => bitmapOf(8, () => true) });
    assert.equal(block.pristinePages!()?.[0], 0xff);
    block.fillPage(3, 0);
    assert.equal(block.pristinePages!(), undefined);
  });
});

describe('test machine: never-written pages', () => {
  it('load() and the vCPU log their pages; handing out memory or an incoming machine vouches for none', async () => {
    const m = await createTestMachine({ ramSizeBytes: 4 * MiB, startPaused: true });
    const incoming = await createTestMachine({ ramSizeBytes: 4 * MiB, incoming: true });
    try {
      const block = m.ramBlocks()[0]!;
      assert.equal(block.pristinePages!()?.[0], 0xffffffff, 'a fresh machine: every page pristine');
      m.load(PAGE + 100, new Uint8Array(PAGE).fill(7)); // pages 1 and 2
      assert.equal(block.pristinePages!()![0], 0xfffffff9);
      // A sync collects the log; the pages stay known as written.
      await m.syncDirtyLog(() => {});
      await m.syncDirtyLog(() => {});
      assert.equal(block.pristinePages!()![0], 0xfffffff9);
      assert.throws(() => m.load(4 * MiB - 10, new Uint8Array(20)), /do not fit/);
      assert.equal(incoming.ramBlocks()[0]!.pristinePages!(), undefined, 'an incoming machine: the loader writes RAM');
      void m.memory;
      assert.equal(block.pristinePages!(), undefined, 'memory handed out: writes through it would bypass the log');
    } finally {
      await m.destroy();
      await incoming.destroy();
    }
  });

  async function migrateInProcess(src: TestMachine, dst: TestMachine, multifd: boolean): Promise<string> {
    const incoming = new IncomingMigration(dst, multifd ? { multifd: { channels: 2 } } : {});
    const address = await incoming.listen('tcp:127.0.0.1:0');
    let loadedHash = '';
    incoming.on('loaded', () => (loadedHash = dst.ramHash()));
    const result = incoming.run();
    const out = new OutgoingMigration(src);
    out.setParameters({ 'downtime-limit': 100 });
    if (multifd) {
      out.setCapabilities({ multifd: true });
      out.setParameters({ 'multifd-channels': 2 });
    }
    out.start(address);
    assert.equal(await out.finished, 'completed', queryMigrate(out)['error-desc']);
    const r = await result;
    assert.equal(r.status, 'completed', r.error?.message);
    return loadedHash;
  }

  for (const multifd of [false, true]) {
    test(`a guest writing never-written pages during the migration${multifd ? ', multifd' : ''}: RAM byte for byte`, { timeout: 120_000 }, async () => {
      const ramBytes = 64 * MiB;
      // Random pages over [1 MiB, 64 MiB) at a rate that leaves most of them untouched at setup
      // and writes many during the migration; 4 MiB loaded at address 0.
      const src = await createTestMachine({ ramSizeBytes: ramBytes, rangeEndBytes: ramBytes, pattern: 'random', dirtyRatePagesPerSecond: 20_000, startPaused: true });
      const dst = await createTestMachine({ ramSizeBytes: ramBytes, incoming: true });
      try {
        src.load(0, randomFillSync(new Uint8Array(MiB)));
        src.resume();
        await new Promise((resolve) => setTimeout(resolve, 100));
        const pristineAtStart = countBits(src.ramBlocks()[0]!.pristinePages!()!);
        assert.ok(pristineAtStart > (ramBytes / PAGE) / 2, `most pages pristine at the start (${pristineAtStart})`);
        const loadedHash = await migrateInProcess(src, dst, multifd);
        assert.equal(src.running, false);
        assert.equal(loadedHash, src.ramHash(), 'destination RAM at load equals source RAM at stop');
      } finally {
        await src.destroy();
        await dst.destroy();
      }
    });
  }
});

function countBits(words: Uint32Array): number {
  let n = 0;
  for (const w of words) for (let v = w; v !== 0; v &= v - 1) n++;
  return n;
}
