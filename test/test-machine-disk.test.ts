/**
 * The test machine's disk workload: blocks that verify against the guest's
 * generation table, the disk's shared dirty log (exact, merged by
 * collectDirty), consistency at pause, corruption detection by checkDisk,
 * and the `test-disk` section's round trip and refusals. Real image files in
 * a tmp dir; timing bounds are generous (a loaded 2-core machine).
 */
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { CHUNK_SIZE, SECTOR_SIZE } from '../src/block/block-device.js';
import { FileBlockDevice } from '../src/block/file-block-device.js';
import { DISK_BLOCK_SIZE_BYTES, encodeDiskBlock, verifyDiskBlock } from '../src/machine/disk-workload.js';
import { createTestMachine, diskGenTableAddress, type TestMachine, type TestMachineOptions } from '../src/machine/test-machine.js';
import { loadVmState, SaveStateRegistry, SaveVmState } from '../src/savevm/index.js';
import { MemorySink, MemorySource, StreamReader, StreamWriter } from '../src/wire/index.js';
import { loadDevices, saveDevices } from './helpers/devices.js';
import { waitFor } from './helpers/wait.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
const BLOCK = DISK_BLOCK_SIZE_BYTES;
const SECTORS_PER_BLOCK = BLOCK / SECTOR_SIZE;
const BLOCKS_PER_CHUNK = CHUNK_SIZE / BLOCK;
/** The RAM workload keeps running, but not flat out: the disk tests are about the disk. */
const RAM_RATE = 50_000;

let dir = '';
let files = 0;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'livemig-disk-'));
});
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function openDisk(sizeBytes: number, path = join(dir, `disk${files++}.img`)): Promise<FileBlockDevice> {
  return FileBlockDevice.open('disk0', path, { create: true, size: sizeBytes });
}

/** A machine and its disk, both released at the end (the machine first: the vCPU writes through the disk's fd). */
async function withDiskMachine(
  diskSizeBytes: number,
  options: TestMachineOptions,
  body: (m: TestMachine, disk: FileBlockDevice) => Promise<void>,
): Promise<void> {
  const disk = await openDisk(diskSizeBytes);
  try {
    const m = await createTestMachine({ ramSizeBytes: 8 * MiB, dirtyRatePagesPerSecond: RAM_RATE, ...options, disk });
    try {
      await body(m, disk);
    } finally {
      await m.destroy();
    }
  } finally {
    await disk.close();
  }
}


function sum(values: Uint32Array): number {
  return values.reduce((n, v) => n + v, 0);
}

test('block format: encode and verify name what is wrong', () => {
  const buf = new Uint8Array(BLOCK);
  encodeDiskBlock(buf, 7, 3);
  assert.equal(Buffer.from(buf.subarray(0, 4)).toString('latin1'), 'LMDK');
  assert.equal(verifyDiskBlock(buf, 7, 3), undefined);
  assert.match(verifyDiskBlock(buf, 7, 4)!, /^block 7: stale write: generation 3 on disk, the guest wrote 4/);
  assert.match(verifyDiskBlock(buf, 7, 2)!, /^block 7: generation 3 on disk is newer/);
  assert.match(verifyDiskBlock(buf, 8, 3)!, /^block 8: misplaced write: the header names block 7/);
  assert.match(verifyDiskBlock(new Uint8Array(BLOCK), 7, 3)!, /^block 7: lost write: all zeros/);
  const other = new Uint8Array(BLOCK);
  encodeDiskBlock(other, 7, 4);
  assert.notDeepEqual(other.subarray(16), buf.subarray(16), 'the payload depends on the generation');
  buf[1000] ^= 1;
  assert.match(verifyDiskBlock(buf, 7, 3)!, /^block 7: payload mismatch at byte 1000/);
  buf[1000] ^= 1;
  buf[13] ^= 0x80;
  assert.match(verifyDiskBlock(buf, 7, 3)!, /^block 7: corrupt header: check word/);
});

test('FileBlockDevice: fd, shared dirty log, collectDirty merges and counts new chunks', async () => {
  const disk = await openDisk(40 * MiB);
  try {
    assert.ok(Number.isInteger(disk.fd) && disk.fd > 2);
    assert.equal(disk.sharedDirtyLog, undefined);
    assert.equal(disk.collectDirty(), 0);
    assert.throws(() => disk.attachSharedDirtyLog(new SharedArrayBuffer(4)), /need 8/);
    const log = disk.attachSharedDirtyLog();
    assert.equal(disk.sharedDirtyLog, log);
    assert.equal(log.byteLength, 8);
    const words = new Int32Array(log);
    Atomics.or(words, 0, (1 << 3) | (1 << 31));
    Atomics.or(words, 1, 1 << 7); // chunk 39, the last
    await disk.writeSectors(3 * (CHUNK_SIZE / SECTOR_SIZE), new Uint8Array(SECTOR_SIZE)); // chunk 3, marked directly
    assert.equal(disk.dirty.count, 1);
    assert.equal(disk.collectDirty(), 2, 'chunk 3 was dirty already: two new ones');
    assert.deepEqual([3, 31, 39].map((c) => disk.dirty.test(c)), [true, true, true]);
    assert.equal(disk.dirty.count, 3);
    assert.deepEqual(Array.from(words), [0, 0], 'collected bits are cleared');
    assert.equal(disk.collectDirty(), 0);
    // Re-attaching keeps bits set in the old log.
    Atomics.or(words, 0, 1 << 5);
    disk.attachSharedDirtyLog(new SharedArrayBuffer(8));
    assert.equal(disk.dirty.test(5), true);
  } finally {
    await disk.close();
  }
});

test('disk workload: blocks verify, counters add up, the rate cap and the throttle hold', async (t) => {
  await withDiskMachine(4 * MiB, { diskRateBlocksPerSecond: 5000, startPaused: true }, async (m, disk) => {
    assert.deepEqual(m.blockDevices(), [disk]);
    const state = m.diskState()!;
    assert.deepEqual(state, {
      diskSizeBytes: 4 * MiB,
      blockSizeBytes: 4096,
      blockCount: 1024,
      genTableAddress: 8 * MiB - PAGE,
      pattern: 'random',
      cursorBlocks: 0,
      prngState: (1 ^ 0x9e3779b9) >>> 0,
      blocksWritten: 0,
    });
    assert.equal(m.cpuState().rangeEndBytes, 8 * MiB - PAGE, 'the default range stops below the generation table');

    const t0 = performance.now();
    m.resume();
    await sleep(300);
    await m.pause();
    const seconds = (performance.now() - t0) / 1000;
    const written = m.stats().diskBlocksWritten;
    t.diagnostic(`disk capped at 5000 blocks/s: measured ${(written / seconds).toFixed(0)}`);
    assert.ok(written / seconds < 1.3 * 5000, `disk rate ${written / seconds} above the cap`);
    assert.ok(written / seconds > 0.3 * 5000, `disk rate ${written / seconds} far below the cap`);

    assert.equal(m.diskState()!.blocksWritten, written);
    const generations = m.diskGenerations();
    assert.equal(sum(generations), written, 'each write raised one generation by one');
    const check = await m.checkDisk();
    assert.deepEqual(check, { blocksChecked: generations.filter((g) => g > 0).length, badBlocks: 0, errors: [], ok: true });
    assert.ok(check.blocksChecked > 100);

    // The CPU throttle slows the disk workload too (its budget accrues only while the vCPU runs).
    m.setThrottle(75);
    const t1 = performance.now();
    m.resume();
    await sleep(200);
    await m.pause();
    const throttledRate = (m.stats().diskBlocksWritten - written) / ((performance.now() - t1) / 1000);
    t.diagnostic(`throttled 75 %: ${throttledRate.toFixed(0)} blocks/s`);
    assert.ok(throttledRate > 0 && throttledRate < 0.6 * 5000, `throttled disk rate ${throttledRate}`);
    m.setThrottle(0);
    assert.equal((await m.checkDisk()).ok, true);

    const afterThrottle = m.stats().diskBlocksWritten;
    m.setDiskRateLimit(0);
    m.resume();
    await sleep(50);
    await m.pause();
    assert.equal(m.stats().diskBlocksWritten, afterThrottle, 'rate 0: the disk workload is off');
    assert.ok(m.stats().pagesWritten > 0);
  });

  const diskless = await createTestMachine({ ramSizeBytes: 4 * MiB, startPaused: true });
  try {
    assert.deepEqual(diskless.blockDevices(), []);
    assert.equal(diskless.diskState(), undefined);
    assert.deepEqual(await diskless.checkDisk(), { blocksChecked: 0, badBlocks: 0, errors: [], ok: true });
    assert.equal(diskless.stats().diskBlocksWritten, 0);
    assert.throws(() => diskless.setDiskRateLimit(10), /no disk/);
  } finally {
    await diskless.destroy();
  }
});

test('the disk dirty log holds exactly the chunks written; the RAM log exactly the table pages', async () => {
  // 256 chunks, a few dozen random writes per round: some chunks written, most not.
  await withDiskMachine(256 * MiB, { diskRateBlocksPerSecond: 400, startPaused: true }, async (m, disk) => {
    const table = m.diskState()!.genTableAddress;
    const tableFirstPage = table / PAGE;
    assert.equal(disk.collectDirty(), 0);
    await m.syncDirtyLog(() => {});
    for (let round = 0; round < 3; round++) {
      disk.dirty.clearAll();
      const before = m.diskGenerations();
      m.resume();
      await sleep(60);
      await m.pause();
      const now = m.diskGenerations();
      const chunks = new Set<number>();
      const pages = new Set<number>();
      for (let b = 0; b < now.length; b++) {
        if (now[b] === before[b]) continue;
        chunks.add(Math.floor(b / BLOCKS_PER_CHUNK));
        pages.add(Math.floor((table + 4 * b) / PAGE));
      }
      assert.ok(chunks.size > 0 && chunks.size < disk.chunkCount, `round ${round}: ${chunks.size} chunks written`);
      assert.equal(disk.collectDirty(), chunks.size);
      for (let c = 0; c < disk.chunkCount; c++) assert.equal(disk.dirty.test(c), chunks.has(c), `chunk ${c}`);
      assert.equal(disk.collectDirty(), 0);
      let ramLog: Uint32Array | undefined;
      await m.syncDirtyLog((_id, bitmap) => (ramLog = bitmap));
      for (let p = tableFirstPage; p < 8 * MiB / PAGE; p++) {
        assert.equal((ramLog![p >>> 5]! & (1 << (p & 31))) !== 0, pages.has(p), `table page ${p}`);
      }
    }
    assert.equal((await m.checkDisk()).ok, true);
  });
});

test('a shadow copy made from the disk dirty log while the vCPU writes equals the disk', async (t) => {
  await withDiskMachine(8 * MiB, { diskRateBlocksPerSecond: 40_000 }, async (m, disk) => {
    const shadow = new Uint8Array(disk.sizeBytes); // the image starts as zeros
    let copiedChunks = 0;
    const copyDirty = async (): Promise<void> => {
      disk.collectDirty();
      for (let c = disk.dirty.nextSetBit(0); c < disk.chunkCount; c = disk.dirty.nextSetBit(c + 1)) {
        disk.dirty.clear(c); // cleared before the read: a write that lands meanwhile is sent again
        await disk.readSectors(c * (CHUNK_SIZE / SECTOR_SIZE), disk.chunkSectors(c), shadow.subarray(c * CHUNK_SIZE));
        copiedChunks++;
      }
    };
    const deadline = performance.now() + 300;
    let rounds = 0;
    while (performance.now() < deadline) {
      await copyDirty();
      rounds++;
    }
    await m.pause();
    await copyDirty();
    t.diagnostic(`${rounds} rounds, ${copiedChunks} chunks copied, ${m.stats().diskBlocksWritten} blocks written`);
    assert.ok(m.stats().diskBlocksWritten > 100);
    assert.ok(Buffer.compare(shadow, await readFile(disk.path)) === 0, 'shadow copy differs from the disk: a write was lost');
    assert.equal((await m.checkDisk()).ok, true);
  });
});

test('pause stops disk writes between whole operations: the disk matches the table every time', async () => {
  await withDiskMachine(2 * MiB, { diskRateBlocksPerSecond: 40_000, diskPattern: 'sequential', startPaused: true }, async (m, disk) => {
    for (let i = 0; i < 8; i++) {
      m.resume();
      await sleep(10 + i);
      await m.pause();
      const check = await m.checkDisk();
      assert.equal(check.ok, true, check.errors.join('\n'));
    }
    const state = m.diskState()!;
    assert.ok(state.blocksWritten > 0);
    assert.equal(state.cursorBlocks, state.blocksWritten % 512, 'sequential: the cursor follows the writes');
    const image = await readFile(disk.path);
    const stats = m.stats();
    await sleep(50);
    assert.deepEqual(m.stats(), stats);
    assert.ok(Buffer.compare(image, await readFile(disk.path)) === 0, 'the disk changed while paused');
  });
});

test('checkDisk finds a corrupted byte, a rolled-back block and a lost block', async () => {
  // 256 blocks written in order several times over: every generation is above 1.
  await withDiskMachine(MiB, { diskRateBlocksPerSecond: 20_000, diskPattern: 'sequential' }, async (m, disk) => {
    await waitFor('three passes over the disk', () => m.stats().diskBlocksWritten > 3 * 256);
    await m.pause();
    const generations = m.diskGenerations();
    assert.ok(generations.every((g) => g >= 3));
    assert.equal((await m.checkDisk()).ok, true);

    const block = new Uint8Array(BLOCK);
    // One payload byte flipped in block 10.
    await disk.readSectors(10 * SECTORS_PER_BLOCK, SECTORS_PER_BLOCK, block);
    block[2000] ^= 0x40;
    await disk.writeSectors(10 * SECTORS_PER_BLOCK, block);
    // Block 20 rolled back to its previous generation (a stale copy).
    encodeDiskBlock(block, 20, generations[20]! - 1);
    await disk.writeSectors(20 * SECTORS_PER_BLOCK, block);
    // Block 30 never reached the disk.
    await disk.writeSectors(30 * SECTORS_PER_BLOCK, new Uint8Array(BLOCK));

    const bad = await m.checkDisk();
    assert.equal(bad.ok, false);
    assert.equal(bad.blocksChecked, 256);
    assert.equal(bad.badBlocks, 3);
    assert.equal(bad.errors.length, 3);
    assert.match(bad.errors[0]!, /^block 10: payload mismatch at byte 2000/);
    assert.match(bad.errors[1]!, new RegExp(`^block 20: stale write: generation ${generations[20]! - 1} on disk, the guest wrote ${generations[20]}`));
    assert.match(bad.errors[2]!, /^block 30: lost write: all zeros/);

    // A wiped disk: every block counted, ten named.
    await disk.writeZeroes(0, disk.totalSectors);
    const wiped = await m.checkDisk();
    assert.equal(wiped.badBlocks, 256);
    assert.equal(wiped.errors.length, 10);
  });
});

test('test-disk round trip: the destination continues the disk workload and verifies', async () => {
  const srcDisk = await openDisk(4 * MiB);
  const dstPath = join(dir, `disk${files++}.img`);
  let dstDisk: FileBlockDevice | undefined;
  const options = { ramSizeBytes: 8 * MiB, dirtyRatePagesPerSecond: RAM_RATE, diskRateBlocksPerSecond: 10_000, pattern: 'random' } as const;
  const src = await createTestMachine({ ...options, disk: srcDisk, seed: 99 });
  let dst: TestMachine | undefined;
  try {
    await waitFor('source disk writes', () => src.stats().diskBlocksWritten > 1000);
    await src.pause();
    const state = await saveDevices(src);
    // What block migration would deliver: the source's image, and (the RAM section) its memory.
    await srcDisk.flush();
    await copyFile(srcDisk.path, dstPath);
    dstDisk = await FileBlockDevice.open('disk0', dstPath);
    dst = await createTestMachine({ ...options, disk: dstDisk, diskPattern: 'sequential', incoming: true });
    await loadDevices(dst, state);
    dst.memory.set(src.memory);
    const before = src.diskState()!;
    assert.deepEqual(dst.diskState(), before, 'pattern, PRNG state and counters come from the source');
    assert.deepEqual(dst.stats(), src.stats());
    assert.equal((await dst.checkDisk()).ok, true);

    dst.resume();
    await waitFor('destination disk writes', () => dst!.stats().diskBlocksWritten > before.blocksWritten + 500);
    await dst.pause();
    const check = await dst.checkDisk();
    assert.equal(check.ok, true, check.errors.join('\n'));
    assert.equal(sum(dst.diskGenerations()), dst.stats().diskBlocksWritten);
    // The source, still paused, did not move.
    assert.deepEqual(src.diskState(), before);
  } finally {
    await Promise.all([src.destroy(), dst?.destroy()]);
    await Promise.all([srcDisk.close(), dstDisk?.close()]);
  }
});

/** The device sections through the real save and load drivers (loadvm names unknown sections). */
async function migrateDevices(src: TestMachine, dst: TestMachine): Promise<void> {
  const srcRegistry = new SaveStateRegistry();
  src.registerDevices(srcRegistry);
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  const save = new SaveVmState(srcRegistry, out, { configuration: { machineName: src.machineName } });
  await save.writeHeader();
  await save.setup();
  await save.completePrecopy();
  await save.cleanup();
  const dstRegistry = new SaveStateRegistry();
  dst.registerDevices(dstRegistry);
  await loadVmState(new StreamReader(new MemorySource(sink.bytes())), dstRegistry, { machineName: dst.machineName });
}

test('disk mismatches between source and destination are refused, naming what differs', async () => {
  const disks: FileBlockDevice[] = [];
  const machines: TestMachine[] = [];
  const disk = async (size: number): Promise<FileBlockDevice> => {
    const d = await openDisk(size);
    disks.push(d);
    return d;
  };
  const machine = async (options: TestMachineOptions): Promise<TestMachine> => {
    const m = await createTestMachine({ ramSizeBytes: 8 * MiB, startPaused: true, ...options });
    machines.push(m);
    return m;
  };
  try {
    const src = await machine({ disk: await disk(4 * MiB) });
    const state = await saveDevices(src);
    await assert.rejects(
      loadDevices(await machine({ disk: await disk(2 * MiB), incoming: true }), state),
      /test-disk: the source has a 4 MiB disk, this machine has a 2 MiB disk/,
    );
    await assert.rejects(
      loadDevices(await machine({ ramSizeBytes: 16 * MiB, disk: await disk(4 * MiB), incoming: true }), state),
      /test-disk: the source keeps its block generation table at 0x7ff000, this machine at 0xfff000/,
    );
    // A destination without a disk lacks the device, as QEMU says of any device.
    await assert.rejects(migrateDevices(src, await machine({ incoming: true })), /unknown savevm section or instance 'test-disk' 0/);

    // A diskless source into a destination with a disk: fine when the source's RAM workload
    // stayed clear of the table (it is then zeros: no block recorded, the workload starts afresh) ...
    const small = await machine({ rangeEndBytes: 4 * MiB });
    await small.step(100);
    const dst = await machine({ disk: await disk(MiB), diskRateBlocksPerSecond: 5000, incoming: true });
    await migrateDevices(small, dst);
    dst.memory.set(small.memory);
    dst.resume();
    await waitFor('destination disk writes', () => dst.stats().diskBlocksWritten > 100);
    await dst.pause();
    assert.equal((await dst.checkDisk()).ok, true);
    // ... and refused when it ran over where the table is.
    const full = await machine({});
    await assert.rejects(loadDevices(await machine({ disk: await disk(MiB), incoming: true }), await saveDevices(full)), /range 0x100000..0x800000 overlaps this machine's disk generation table at 0x7ff000/);
  } finally {
    await Promise.all(machines.map((m) => m.destroy()));
    await Promise.all(disks.map((d) => d.close()));
  }
});

test('bad disk options are refused', async () => {
  const disk = await openDisk(4 * MiB);
  const readOnly = await FileBlockDevice.open('ro', disk.path, { readOnly: true });
  const tiny = await openDisk(SECTOR_SIZE);
  try {
    await assert.rejects(createTestMachine({ ramSizeBytes: 8 * MiB, disk, rangeEndBytes: 8 * MiB }), /overlaps the disk's generation table at 8384512/);
    await assert.rejects(createTestMachine({ ramSizeBytes: 8 * MiB, diskRateBlocksPerSecond: 5 }), /needs a disk/);
    await assert.rejects(createTestMachine({ ramSizeBytes: 8 * MiB, disk: readOnly }), /read-only/);
    await assert.rejects(createTestMachine({ ramSizeBytes: 8 * MiB, disk: tiny }), /holds no 4096-byte block/);
    await assert.rejects(createTestMachine({ ramSizeBytes: 8 * MiB, disk, diskPattern: 'zigzag' as 'random' }), /unknown disk pattern/);
    // 4 GiB of disk needs a 4 MiB table: 4 MiB of RAM leaves no room.
    const big = await openDisk(4096 * MiB);
    try {
      await assert.rejects(createTestMachine({ ramSizeBytes: 4 * MiB, disk: big }), /needs 4194304 bytes at the top of RAM/);
    } finally {
      await big.close();
    }
    assert.equal(diskGenTableAddress(256 * MiB, 256 * MiB), 256 * MiB - 256 * 1024, '256 MiB disk: a 256 KiB table, above the default 100 MiB range');
  } finally {
    await Promise.all([disk.close(), readOnly.close(), tiny.close()]);
  }
});
