/**
 * Block migration: raw-image devices, QEMU 7.2 `block` section records (byte
 * layout from migration/block.c), and save → load round trips over in-memory
 * channels with random and zero chunks re-dirtied between iterations.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CHUNK_SIZE, SECTOR_SIZE, SECTORS_PER_CHUNK } from '../src/block/block-device.js';
import { FileBlockDevice } from '../src/block/file-block-device.js';
import { BlockLoadHandler, BlockSaveHandler } from '../src/block/block-handler.js';
import {
  BLK_MIG_FLAG_DEVICE_BLOCK,
  BLK_MIG_FLAG_EOS,
  BLK_MIG_FLAG_PROGRESS,
  BLK_MIG_FLAG_ZERO_BLOCK,
  BlockStreamError,
  readBlockRecord,
  readBlockSection,
  writeDeviceBlock,
  writeEos,
  writeProgress,
  type BlockRecord,
} from '../src/block/block-records.js';
import type { LoadSectionContext, SectionKind } from '../src/savevm/handlers.js';
import { MemorySink, MemorySource, StreamError, StreamReader, StreamWriter } from '../src/wire/index.js';
import { Prng } from './helpers/prng.js';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'livemig-block-'));
});
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

function context(kind: SectionKind): LoadSectionContext {
  return { kind, versionId: 1, idstr: 'block', instanceId: 0, sectionId: 3, offset: 0 };
}

async function encode(write: (out: StreamWriter) => void | Promise<unknown>): Promise<Uint8Array> {
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  await write(out);
  await out.flush();
  return sink.bytes();
}

function reader(bytes: Uint8Array, chunk = 777): StreamReader {
  return new StreamReader(new MemorySource(bytes, chunk));
}

function be64(v: bigint): number[] {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v);
  return [...b];
}

describe('BlockDevice', () => {
  it('creates a sparse image, reads and writes sectors, tracks dirty 1 MiB chunks', async () => {
    const path = join(dir, 'dev.img');
    const size = 5 * CHUNK_SIZE + 3 * SECTOR_SIZE;
    const dev = await FileBlockDevice.open('drive0', path, { create: true, size });
    assert.equal(dev.sizeBytes, size);
    assert.equal(dev.totalSectors, size / SECTOR_SIZE);
    assert.equal(dev.chunkCount, 6);
    assert.equal(dev.chunkSectors(5), 3);
    const st = await stat(path);
    assert.equal(st.size, size);
    assert.ok(st.blocks * 512 < size, 'sparse');
    assert.deepEqual(await dev.readSectors(0, 1), new Uint8Array(SECTOR_SIZE));
    assert.equal(dev.dirty.count, 0);
    const data = new Uint8Array(3 * SECTOR_SIZE).map((_, i) => i & 0xff);
    await dev.writeSectors(SECTORS_PER_CHUNK - 1, data); // spans chunks 0 and 1
    assert.deepEqual([dev.dirty.test(0), dev.dirty.test(1), dev.dirty.test(2)], [true, true, false]);
    assert.deepEqual(await dev.readSectors(SECTORS_PER_CHUNK - 1, 3), data);
    await dev.writeSectors(dev.totalSectors - 1, new Uint8Array(SECTOR_SIZE).fill(7));
    assert.ok(dev.dirty.test(5));
    await assert.rejects(dev.writeSectors(dev.totalSectors, new Uint8Array(SECTOR_SIZE)), RangeError);
    await assert.rejects(dev.writeSectors(0, new Uint8Array(100)), RangeError);
    await assert.rejects(dev.readSectors(dev.totalSectors - 1, 2), RangeError);
    await dev.flush();
    await dev.close();
    const again = await FileBlockDevice.open('drive0', path);
    assert.equal(again.sizeBytes, size);
    assert.deepEqual(await again.readSectors(SECTORS_PER_CHUNK - 1, 3), data);
    await again.close();
  });

  it('rejects bad sizes and missing files', async () => {
    await assert.rejects(FileBlockDevice.open('d', join(dir, 'bad.img'), { create: true, size: 1000 }), RangeError);
    await assert.rejects(FileBlockDevice.open('d', join(dir, 'missing.img')));
    const odd = join(dir, 'odd.img');
    await writeFile(odd, new Uint8Array(700));
    await assert.rejects(FileBlockDevice.open('d', odd), /multiple of 512/);
  });
});

describe('block records', () => {
  it('have QEMU 7.2 block.c byte layout', async () => {
    const data = new Uint8Array(CHUNK_SIZE).fill(0xab);
    const bytes = await encode((out) => {
      writeDeviceBlock(out, 'ide0-hd0', 2048, data);
      writeDeviceBlock(out, 'ide0-hd0', 4096, null);
      writeProgress(out, 42);
      writeEos(out);
    });
    // be64 (sector << 9) | DEVICE_BLOCK, u8 len, name, 1 MiB
    assert.deepEqual([...bytes.subarray(0, 8)], be64((2048n << 9n) | 1n));
    assert.deepEqual([...bytes.subarray(0, 8)], [0, 0, 0, 0, 0, 0x10, 0, 0x01]);
    assert.equal(bytes[8], 8);
    assert.equal(new TextDecoder().decode(bytes.subarray(9, 17)), 'ide0-hd0');
    let at = 17 + CHUNK_SIZE;
    assert.ok(bytes.subarray(17, at).every((b) => b === 0xab));
    // ZERO_BLOCK: header, name, no payload
    assert.deepEqual([...bytes.subarray(at, at + 8)], be64((4096n << 9n) | 0x9n));
    at += 8 + 1 + 8;
    // PROGRESS: percentage in the sector field
    assert.deepEqual([...bytes.subarray(at, at + 8)], be64((42n << 9n) | 4n));
    at += 8;
    assert.deepEqual([...bytes.subarray(at, at + 8)], [0, 0, 0, 0, 0, 0, 0, 2]);
    assert.equal(bytes.length, at + 8);
  });

  it('round trip through the reader; a short chunk is padded', async () => {
    const prng = new Prng(11);
    const short = new Uint8Array(3 * SECTOR_SIZE).map(() => prng.int(256));
    const bytes = await encode((out) => {
      writeDeviceBlock(out, 'd', 7 * SECTORS_PER_CHUNK, short);
      writeDeviceBlock(out, 'disk-two', 0, null);
      writeProgress(out, 100);
      writeEos(out);
    });
    const records: BlockRecord[] = [];
    const input = reader(bytes, 1000);
    const n = await readBlockSection(input, (r) => {
      records.push(r.type === 'device-block' && r.data ? { ...r, data: r.data.slice() } : r);
    });
    assert.equal(n, 4);
    assert.ok(await input.atEnd());
    const [a, b, c, d] = records;
    assert.ok(a?.type === 'device-block' && !a.zero && a.device === 'd' && a.sector === 7 * SECTORS_PER_CHUNK);
    assert.equal(a.data!.length, CHUNK_SIZE);
    assert.deepEqual(a.data!.subarray(0, short.length), short);
    assert.ok(a.data!.subarray(short.length).every((x) => x === 0));
    assert.ok(b?.type === 'device-block' && b.zero && b.data === undefined && b.device === 'disk-two' && b.sector === 0);
    assert.deepEqual(c && c.type === 'progress' ? c.percent : -1, 100);
    assert.equal(d?.type, 'eos');
    assert.equal(d!.offset, bytes.length - 8);
  });

  it('accepts what block_load accepts: extra bits ignored, EOS with others', async () => {
    const bytes = new Uint8Array([...be64(0x12n), ...be64((5n << 9n) | 0x16n)]);
    const input = reader(bytes);
    assert.equal((await readBlockRecord(input)).type, 'eos');
    const p = await readBlockRecord(input);
    assert.ok(p.type === 'progress' && p.percent === 5 && (p.flags & BLK_MIG_FLAG_EOS) !== 0);
  });

  it('rejects bad records with offsets', async () => {
    for (const flags of [0n, BigInt(BLK_MIG_FLAG_ZERO_BLOCK), 0x10n, 0x1f0n]) {
      const bytes = new Uint8Array([...be64(BigInt(BLK_MIG_FLAG_EOS)), ...be64((3n << 9n) | flags)]);
      const input = reader(bytes);
      await readBlockRecord(input);
      await assert.rejects(readBlockRecord(input), (e: unknown) => e instanceof BlockStreamError && e.offset === 8 && /flags/.test(e.message));
    }
    // huge sector
    await assert.rejects(readBlockRecord(reader(new Uint8Array([...be64(0xffffffffffffff01n), 1, 0x41]))), (e: unknown) => e instanceof StreamError && e.offset === 0);
    // huge progress
    await assert.rejects(readBlockRecord(reader(new Uint8Array(be64((1n << 40n << 9n) | 4n)))), BlockStreamError);
    // truncated: header, name, payload
    await assert.rejects(readBlockRecord(reader(new Uint8Array([0, 0, 0]))), (e: unknown) => e instanceof StreamError && e.code === 'unexpected-end');
    await assert.rejects(readBlockRecord(reader(new Uint8Array([...be64(1n), 5, 0x61]))), (e: unknown) => e instanceof StreamError && e.code === 'unexpected-end');
    const cut = await encode((out) => writeDeviceBlock(out, 'd', 0, new Uint8Array(CHUNK_SIZE).fill(1)));
    await assert.rejects(readBlockRecord(reader(cut.subarray(0, cut.length - 1))), (e: unknown) => e instanceof StreamError && e.code === 'unexpected-end');
    // a section without EOS
    const noEos = await encode((out) => writeProgress(out, 3));
    await assert.rejects(readBlockSection(reader(noEos), () => {}), (e: unknown) => e instanceof StreamError && e.code === 'unexpected-end');
  });

  it('the loader rejects unknown devices and sectors past the end before writing', async () => {
    const dev = await FileBlockDevice.open('known', join(dir, 'known.img'), { create: true, size: 2 * CHUNK_SIZE });
    try {
      const loader = new BlockLoadHandler([dev]);
      const unknown = await encode((out) => {
        writeDeviceBlock(out, 'other', 0, new Uint8Array(CHUNK_SIZE).fill(9));
        writeEos(out);
      });
      await assert.rejects(loader.loadState(reader(unknown), context('part')), (e: unknown) => e instanceof BlockStreamError && e.blockCode === 'unknown-device' && e.offset === 0);
      const past = await encode((out) => {
        writeProgress(out, 1);
        writeDeviceBlock(out, 'known', 2 * SECTORS_PER_CHUNK, null);
        writeEos(out);
      });
      await assert.rejects(loader.loadState(reader(past), context('part')), (e: unknown) => e instanceof BlockStreamError && e.blockCode === 'bad-sector' && e.offset === 8);
      assert.equal(dev.dirty.count, 0, 'nothing written');
    } finally {
      await dev.close();
    }
  });
});

describe('block save → load', () => {
  async function fillRandom(dev: FileBlockDevice, chunk: number, prng: Prng): Promise<void> {
    const sectors = dev.chunkSectors(chunk);
    const buf = new Uint8Array(sectors * SECTOR_SIZE);
    for (let i = 0; i < buf.length; i += 4) new DataView(buf.buffer).setUint32(i, (prng.next() * 2 ** 32) >>> 0);
    await dev.writeSectors(chunk * SECTORS_PER_CHUNK, buf);
  }

  it('copies two disks byte for byte while chunks are re-dirtied between iterations', async () => {
    const prng = new Prng(2026);
    const layout: Array<[string, number]> = [
      ['virtio0', 9 * CHUNK_SIZE + 5 * SECTOR_SIZE],
      ['ide0-hd1', 4 * CHUNK_SIZE],
    ];
    const src: FileBlockDevice[] = [];
    const dst: FileBlockDevice[] = [];
    for (const [name, size] of layout) {
      const s = await FileBlockDevice.open(name, join(dir, `src-${name}.img`), { create: true, size });
      for (let c = 0; c < s.chunkCount; c++) if (c % 3 !== 1) await fillRandom(s, c, prng); // every third chunk stays zero
      src.push(s);
      const d = await FileBlockDevice.open(name, join(dir, `dst-${name}.img`), { create: true, size });
      // Stale content on the destination must be overwritten, zeros included.
      await d.writeSectors(SECTORS_PER_CHUNK, new Uint8Array(SECTOR_SIZE).fill(0xee));
      dst.push(d);
    }
    const saver = new BlockSaveHandler(src);
    const loader = new BlockLoadHandler(dst);
    let wireBytes = 0;
    async function transfer(kind: SectionKind, write: (out: StreamWriter) => Promise<unknown>): Promise<unknown> {
      let result: unknown;
      const bytes = await encode(async (out) => {
        result = await write(out);
      });
      wireBytes += bytes.length;
      const input = reader(bytes, 65536 + 13);
      await loader.loadState(input, context(kind));
      assert.ok(await input.atEnd(), `${kind} body consumed`);
      return result;
    }

    await transfer('start', (out) => saver.saveSetup(out));
    assert.ok((await saver.statePending(false)) >= 13 * CHUNK_SIZE);
    const [a, b] = src as [FileBlockDevice, FileBlockDevice];

    // Bulk: 3 chunks per iteration. Between iterations the guest writes chunks
    // already sent (must be re-sent) and chunks not yet reached (sent once).
    let iterations = 0;
    let expectedDirty = 0;
    const written = new Set<string>();
    for (;;) {
      let calls = 0;
      const done = (await transfer('part', (out) => saver.saveIterate(out, () => calls++ >= 3))) as boolean;
      iterations++;
      if (saver.isBulkCompleted) break;
      assert.ok(!done);
      if (iterations === 1) {
        await fillRandom(a, 0, prng); // sent: re-send
        await a.writeZeroes(2 * SECTORS_PER_CHUNK, SECTORS_PER_CHUNK); // sent: re-send, as zero
        await fillRandom(a, 7, prng); // not yet sent: bulk takes it
        await fillRandom(b, 1, prng); // not yet sent
        expectedDirty += 2;
        written.add('a0').add('a2');
      }
      if (iterations === 3) {
        await fillRandom(a, 1, prng); // sent (zero before): re-send
        await fillRandom(a, 0, prng); // still dirty: one re-send covers both writes
        expectedDirty += 1;
      }
      assert.ok(iterations < 100);
    }
    assert.equal(saver.stats.bulkChunks, 14);
    assert.deepEqual(saver.stats.progress, [...saver.stats.progress].sort((x, y) => x - y), 'monotonic');
    assert.equal(saver.stats.progress[0], 0);
    assert.equal(saver.stats.progress.at(-1), 100);
    // The last bulk iteration may already have started on dirty chunks.
    const dirtySoFar = saver.stats.dirtyChunks;
    assert.equal((await saver.statePending(true)) / CHUNK_SIZE + dirtySoFar, expectedDirty);

    // Dirty phase, one chunk per iteration; a write in between.
    let calls = 0;
    await transfer('part', (out) => saver.saveIterate(out, () => calls++ >= 1));
    assert.equal(saver.stats.dirtyChunks, dirtySoFar + 1);
    await fillRandom(b, 3, prng);
    await fillRandom(a, 9, prng); // the short last chunk
    expectedDirty += 2;
    for (let guard = 0; ; guard++) {
      const done = (await transfer('part', (out) => saver.saveIterate(out, () => false))) as boolean;
      if (done) break;
      assert.ok(guard < 10);
    }
    assert.equal(saver.stats.dirtyChunks, expectedDirty);
    assert.equal(await saver.statePending(true), 0);

    // Stopped guest writes a last chunk; completion sends it.
    await fillRandom(b, 0, prng);
    await transfer('end', (out) => saver.saveCompletePrecopy(out));
    assert.equal(saver.stats.dirtyChunks, expectedDirty + 1);
    assert.equal(saver.stats.progress.at(-1), 100);
    assert.equal(loader.stats.progress.at(-1), 100);
    assert.equal(saver.stats.zeroChunks, 3); // a1, a4 in bulk, a2 re-sent after being zeroed
    assert.equal(saver.bytesTransferred, saver.bytesTotal);
    await loader.flush();

    for (let i = 0; i < src.length; i++) {
      const [s, d] = [src[i]!, dst[i]!];
      await s.flush();
      assert.ok(Buffer.from(await readFile(s.path)).equals(await readFile(d.path)), `${s.name} identical`);
      assert.equal(loader.stats.chunks.get(s.name)! >= s.chunkCount, true);
      await s.close();
      await d.close();
    }
    assert.ok(wireBytes < (14 + expectedDirty + 1) * (CHUNK_SIZE + 64));
  });

  it('a mostly-zero disk moves with few bytes; destination stays sparse', async () => {
    const size = 256 * CHUNK_SIZE;
    const s = await FileBlockDevice.open('sparse', join(dir, 'sparse-src.img'), { create: true, size });
    const d = await FileBlockDevice.open('sparse', join(dir, 'sparse-dst.img'), { create: true, size });
    const prng = new Prng(5);
    await fillRandom(s, 17, prng);
    await s.writeSectors(200 * SECTORS_PER_CHUNK + 5, new Uint8Array(SECTOR_SIZE).fill(1));
    const saver = new BlockSaveHandler([s]);
    const loader = new BlockLoadHandler([d]);
    const bytes = await encode(async (out) => {
      await saver.saveSetup(out);
      await saver.saveIterate(out, () => false);
      await saver.saveCompletePrecopy(out);
    });
    assert.ok(bytes.length < 3 * CHUNK_SIZE, `${bytes.length} bytes on the wire`);
    const input = reader(bytes, 1 << 20);
    for (const kind of ['start', 'part', 'end'] as const) await loader.loadState(input, context(kind));
    assert.ok(await input.atEnd());
    assert.equal(saver.stats.zeroChunks, 254);
    assert.ok(Buffer.from(await readFile(s.path)).equals(await readFile(d.path)));
    assert.ok((await stat(d.path)).blocks * 512 < 16 * CHUNK_SIZE, 'destination sparse');
    await s.close();
    await d.close();
  });

  it('without zeroBlocks every chunk carries data', async () => {
    const s = await FileBlockDevice.open('z', join(dir, 'z.img'), { create: true, size: 2 * CHUNK_SIZE });
    const saver = new BlockSaveHandler([s], { zeroBlocks: false });
    const bytes = await encode(async (out) => {
      await saver.saveSetup(out);
      await saver.saveCompletePrecopy(out);
    });
    const records: BlockRecord[] = [];
    const input = reader(bytes);
    await readBlockSection(input, () => {});
    await readBlockSection(input, (r) => void records.push(r.type === 'device-block' ? { ...r, data: undefined } : r));
    const blocks = records.filter((r) => r.type === 'device-block');
    assert.equal(blocks.length, 2);
    assert.ok(blocks.every((r) => r.flags === BLK_MIG_FLAG_DEVICE_BLOCK));
    assert.ok(records.some((r) => r.type === 'progress' && r.flags === BLK_MIG_FLAG_PROGRESS && r.percent === 100));
    await s.close();
  });
});
