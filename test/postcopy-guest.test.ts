/**
 * The guest side of postcopy on the test machine, with its real vCPU thread:
 * a missing page stops the guest at that page and faults it to the main
 * thread until the "engine" (the test) delivers it; pause and exit still work
 * while it waits, and the stopped vCPU retries the same access; disarm()
 * lets it run unchecked; blocktime counts the waits. The none machine's
 * trivial postcopy too. Timing bounds are generous (a loaded 2-core machine).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { FileBlockDevice } from '../src/block/file-block-device.js';
import { NoneMachine } from '../src/machine/none-machine.js';
import { createTestMachine, TEST_RAM_BLOCK, type TestMachine, type TestMachineOptions } from '../src/machine/test-machine.js';
import { measurePagesPerSecond, waitFor } from './helpers/wait.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
const RAM_BYTES = 8 * MiB;
const RAM_PAGES = RAM_BYTES / PAGE;
/** The workload's default range: 1 MiB up to the end of RAM. */
const START_PAGE = MiB / PAGE;
const END_PAGE = RAM_PAGES;
/** The first byte every range page holds before the guest runs (as if the source had made this many passes). */
const FILL = 7;

type Fault = [idstr: string, page: number];

/** An incoming machine (paused until resume()) whose range pages all start at FILL; destroyed after `body`. */
async function withIncoming(options: TestMachineOptions, body: (m: TestMachine) => Promise<void>): Promise<void> {
  const m = await createTestMachine({ ramSizeBytes: RAM_BYTES, incoming: true, serialEveryPasses: 0, ...options });
  try {
    for (let page = START_PAGE; page < END_PAGE; page++) m.load(page * PAGE, Uint8Array.of(FILL));
    await body(m);
  } finally {
    await m.destroy();
  }
}

/** A present bitmap over shared memory, as the engine keeps it (bit n = page n, LSB first). */
function presentBitmap(isPresent: (page: number) => boolean): Int32Array {
  const bitmap = new Int32Array(new SharedArrayBuffer(Math.ceil(RAM_PAGES / 32) * 4));
  for (let page = 0; page < RAM_PAGES; page++) if (isPresent(page)) bitmap[page >>> 5]! |= 1 << (page & 31);
  return bitmap;
}

/** What the engine does when a page arrives: write it, then set its bit and wake whoever waits on the word. */
function deliver(m: TestMachine, present: Int32Array, page: number, firstByte = FILL): void {
  m.load(page * PAGE, Uint8Array.of(firstByte));
  Atomics.or(present, page >>> 5, 1 << (page & 31));
  Atomics.notify(present, page >>> 5);
}

function arm(m: TestMachine, present: Int32Array): Fault[] {
  const faults: Fault[] = [];
  m.postcopy.arm(new Map([[TEST_RAM_BLOCK, present]]), (idstr, page) => faults.push([idstr, page]));
  return faults;
}

test('postcopy: the vCPU stops at the first missing page and faults it; delivered pages let it go on; memory ends consistent', async () => {
  await withIncoming({}, async (m) => {
    const missingFrom = START_PAGE + 100;
    const present = presentBitmap((page) => page < missingFrom);
    const faults = arm(m, present);
    const armedAtMs = performance.now();
    m.resume();
    await waitFor('the first fault', () => faults.length > 0);
    assert.deepEqual(faults[0], [TEST_RAM_BLOCK, missingFrom]);
    // Blocked: no progress past the 100 present pages, and the fault is re-posted (about every 100 ms), for that page only.
    await sleep(300);
    assert.equal(m.stats().pagesWritten, 100);
    assert.ok(faults.length >= 2, `fault re-posted while waiting: ${faults.length}`);
    assert.ok(faults.every(([idstr, page]) => idstr === TEST_RAM_BLOCK && page === missingFrom), JSON.stringify(faults));
    assert.equal(m.memory[missingFrom * PAGE], FILL, 'the missing page was not touched');

    deliver(m, present, missingFrom);
    await waitFor('the fault of the next page', () => faults.some(([, page]) => page === missingFrom + 1));
    assert.equal(m.stats().pagesWritten, 101);
    assert.equal(m.memory[missingFrom * PAGE], FILL + 1, 'the delivered page was written once');

    for (let page = missingFrom + 1; page < END_PAGE; page++) deliver(m, present, page);
    await waitFor('two passes', () => m.stats().passes >= 2);
    await m.pause();
    const check = m.checkMemory();
    assert.ok(check.ok, check.reason);
    assert.ok(check.firstByte >= FILL + 2, `first byte ${check.firstByte}`);
    const faultedPages = new Set(faults.map(([, page]) => page));
    assert.ok([...faultedPages].every((page) => page >= missingFrom && page < END_PAGE), 'only missing pages faulted');

    const blocktime = m.postcopy.blocktime();
    const sinceArmMs = performance.now() - armedAtMs;
    assert.ok(blocktime.totalMs >= 250 && blocktime.totalMs <= sinceArmMs, `blocktime ${blocktime.totalMs} ms of ${sinceArmMs} ms since arm`);
    assert.deepEqual(blocktime.perVcpuMs, [blocktime.totalMs]);
    m.postcopy.disarm();
  });
});

test('postcopy: pause() while waiting for a page stops the vCPU promptly before the access; it retries it after resume', async () => {
  await withIncoming({}, async (m) => {
    const missing = START_PAGE + 50;
    const present = presentBitmap((page) => page !== missing);
    const faults = arm(m, present);
    m.resume();
    await waitFor('the fault', () => faults.length > 0);
    await m.pause();
    assert.ok(m.lastPauseLatencyMs < 100, `pause took ${m.lastPauseLatencyMs} ms`);
    const cpu = m.cpuState();
    assert.equal(cpu.positionPages, 50);
    assert.equal(cpu.pagesWritten, 50);
    assert.equal(m.memory[missing * PAGE], FILL);

    // Still missing: the run faults the same page again.
    const faultsBefore = faults.length;
    m.resume();
    await waitFor('the fault again', () => faults.length > faultsBefore);
    assert.deepEqual(faults.at(-1), [TEST_RAM_BLOCK, missing]);
    await m.pause();
    assert.equal(m.cpuState().pagesWritten, 50);

    // Delivered while stopped: the next run goes through without a fault.
    deliver(m, present, missing);
    const faultsWhenDelivered = faults.length;
    m.resume();
    await waitFor('a pass', () => m.stats().passes >= 1);
    await m.pause();
    assert.equal(faults.length, faultsWhenDelivered);
    const check = m.checkMemory();
    assert.ok(check.ok, check.reason);
  });
});

test('postcopy: a stop while waiting leaves the random pattern exactly where an unarmed guest would be', async () => {
  const options: TestMachineOptions = { pattern: 'random', seed: 42 };
  await withIncoming(options, async (armed) => {
    await withIncoming(options, async (reference) => {
      // Present: the pages the walk's first 30 writes touch (the reference shows which); it blocks at its first other page.
      const firstWrites = 30;
      await reference.step(firstWrites);
      const present = presentBitmap((page) => page < START_PAGE || reference.memory[page * PAGE] !== FILL);
      const faults = arm(armed, present);
      armed.resume();
      await waitFor('a fault', () => faults.length > 0);
      await armed.pause();
      const done = armed.cpuState().pagesWritten;
      assert.ok(done >= firstWrites, `${done} pages written before the fault`);
      if (done > firstWrites) await reference.step(done - firstWrites);
      assert.deepEqual(armed.cpuState(), reference.cpuState());
      assert.equal(armed.ramHash(), reference.ramHash());

      for (let page = 0; page < RAM_PAGES; page++) if ((present[page >>> 5]! & (1 << (page & 31))) === 0) deliver(armed, present, page);
      await armed.step(5000);
      await reference.step(5000);
      assert.deepEqual(armed.cpuState(), reference.cpuState());
      assert.equal(armed.ramHash(), reference.ramHash());
    });
  });
});

test('postcopy: the disk workload waits for its generation-table page before writing the disk', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-postcopy-'));
  const disk = await FileBlockDevice.open('disk0', join(dir, 'disk.img'), { create: true, size: MiB });
  try {
    // Slow RAM workload, so the disk's first token comes while the vCPU is still in the present range.
    await withIncoming({ disk, diskRateBlocksPerSecond: 2000, diskPattern: 'sequential', dirtyRatePagesPerSecond: 20_000 }, async (m) => {
      const tablePage = m.diskLayout!.genTableAddress / PAGE;
      assert.equal(tablePage, RAM_PAGES - 1);
      const present = presentBitmap((page) => page !== tablePage);
      const faults = arm(m, present);
      m.resume();
      await waitFor('the fault', () => faults.length > 0);
      assert.deepEqual(faults[0], [TEST_RAM_BLOCK, tablePage]);
      await m.pause();
      assert.equal(m.stats().diskBlocksWritten, 0);
      assert.equal(m.diskState()!.cursorBlocks, 0, 'the workload did not advance past the blocked write');

      deliver(m, present, tablePage, 0);
      m.resume();
      await waitFor('disk writes', () => m.stats().diskBlocksWritten >= 20);
      await m.pause();
      const diskCheck = await m.checkDisk();
      assert.ok(diskCheck.ok, diskCheck.errors.join('; '));
      assert.ok(diskCheck.blocksChecked >= 20);
      assert.deepEqual(new Set(faults.map(([, page]) => page)), new Set([tablePage]));
    });
  } finally {
    await disk.close();
    await rm(dir, { recursive: true, force: true });
  }
});


test('postcopy: armed with every page present, and after disarm(), the guest runs at full speed', async (t) => {
  await withIncoming({}, async (m) => {
    const unarmed = await measurePagesPerSecond(m, 300);
    const present = presentBitmap(() => true);
    const faults = arm(m, present);
    const armed = await measurePagesPerSecond(m, 300);
    m.postcopy.disarm();
    const disarmed = await measurePagesPerSecond(m, 300);
    t.diagnostic(`pages/s: unarmed ${Math.round(unarmed)}, armed (all present) ${Math.round(armed)}, disarmed ${Math.round(disarmed)}`);
    assert.equal(faults.length, 0);
    assert.equal(m.postcopy.blocktime().totalMs, 0);
    // Loose: the point is no slow path, not a benchmark on a shared 2-core machine.
    assert.ok(armed > unarmed * 0.3, `armed ${armed} vs unarmed ${unarmed} pages/s`);
    assert.ok(disarmed > unarmed * 0.3, `disarmed ${disarmed} vs unarmed ${unarmed} pages/s`);
    const check = m.checkMemory();
    assert.ok(check.ok, check.reason);
  });
});

test('postcopy: disarm() releases a waiting vCPU and no fault is reported after it', async () => {
  await withIncoming({}, async (m) => {
    const missing = START_PAGE + 10;
    const present = presentBitmap((page) => page !== missing);
    const faults = arm(m, present);
    m.resume();
    await waitFor('the fault', () => faults.length > 0);
    m.postcopy.disarm();
    const faultsAtDisarm = faults.length;
    await waitFor('progress past the page', () => m.stats().pagesWritten > 10);
    await sleep(150);
    await m.pause();
    assert.equal(faults.length, faultsAtDisarm);
  });
});

test('postcopy: arm() refuses a running vCPU, a missing or foreign block, an unshared or short bitmap; destroy() ends a waiting vCPU', async () => {
  const m = await createTestMachine({ ramSizeBytes: RAM_BYTES, incoming: true });
  try {
    const onFault = (): void => {};
    const good = presentBitmap(() => false);
    assert.throws(() => m.postcopy.arm(new Map(), onFault), /no present bitmap for RAM block pc\.ram/);
    assert.throws(() => m.postcopy.arm(new Map([[TEST_RAM_BLOCK, good], ['other', good]]), onFault), /no RAM block other/);
    assert.throws(() => m.postcopy.arm(new Map([[TEST_RAM_BLOCK, new Int32Array(RAM_PAGES / 32)]]), onFault), /shared memory/);
    assert.throws(() => m.postcopy.arm(new Map([[TEST_RAM_BLOCK, new Int32Array(new SharedArrayBuffer(4))]]), onFault), /1 words/);
    m.resume();
    assert.throws(() => m.postcopy.arm(new Map([[TEST_RAM_BLOCK, good]]), onFault), /must be paused/);
    await m.pause();
    let faults = 0;
    m.postcopy.arm(new Map([[TEST_RAM_BLOCK, good]]), () => faults++);
    m.resume();
    await waitFor('the fault', () => faults > 0);
  } finally {
    const t0 = performance.now();
    await m.destroy();
    assert.ok(performance.now() - t0 < 1000, 'destroy() of a waiting vCPU is prompt');
  }
});

test('postcopy: the none machine has nothing that touches RAM, so arming it is a no-op', () => {
  const m = new NoneMachine({ ramSizeBytes: 16 * PAGE, incoming: true });
  m.postcopy.arm(new Map([['pc.ram', presentBitmap(() => false)]]), () => assert.fail('no fault expected'));
  m.resume();
  assert.deepEqual(m.postcopy.blocktime(), { totalMs: 0, perVcpuMs: [] });
  m.postcopy.disarm();
});
