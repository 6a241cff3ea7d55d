/**
 * The guest's dirty rate by page sampling (src/ram/dirty-rate.ts), and QMP's
 * calc-dirty-rate / query-dirty-rate on a real `livemig run` process whose
 * guest writes, then is stopped. (Parity of texts and shapes with real QEMU 7.2:
 * test/qmp-parity.test.ts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DenseRamBlock } from '../src/ram/index.js';
import { dirtyRateMiBps, MIN_SAMPLED_BLOCK_BYTES, PageSampler, pageHash } from '../src/ram/dirty-rate.js';
import { TARGET_PAGE_SIZE } from '../src/wire/constants.js';
import { LivemigProcess } from './helpers/livemig-process.js';
import { Prng } from './helpers/prng.js';
import { RawQmp } from './helpers/raw-qmp.js';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { DirtyRateMeter } from '../src/monitor/dirty-rate.js';
import type { Machine } from '../src/machine/index.js';

const MiB = 1 << 20;

test('pageHash: any one byte changed changes the hash, aligned or not', () => {
  const prng = new Prng(7);
  const memory = new Uint8Array(3 * TARGET_PAGE_SIZE + 1);
  for (let i = 0; i < memory.length; i++) memory[i] = prng.int(256);
  for (const offset of [0, 1]) {
    const page = memory.subarray(offset, offset + TARGET_PAGE_SIZE);
    const before = pageHash(page);
    for (const at of [0, 1, 2047, 4094, 4095]) {
      page[at] = (page[at]! + 1) & 0xff;
      assert.notEqual(pageHash(page), before, `offset ${offset}, byte ${at}`);
      page[at] = (page[at]! - 1) & 0xff;
      assert.equal(pageHash(page), before);
    }
  }
});

test('PageSampler: samples per GiB of each block, QEMU\'s rate from the pages that changed', () => {
  const memory = new Uint8Array(8 * MiB);
  const block = new DenseRamBlock('pc.ram', memory);
  const small = new DenseRamBlock('rom', new Uint8Array(MIN_SAMPLED_BLOCK_BYTES - TARGET_PAGE_SIZE));
  // 16384 per GiB of 8 MiB: 128 samples; the small block is skipped, as QEMU's MIN_RAMBLOCK_SIZE.
  const pick = new Prng(1);
  const quiet = new PageSampler([block, small], 16384, () => pick.next());
  assert.deepEqual(quiet.count(), { dirtySamples: 0, totalSamples: 128, totalBlockMiB: 8 });

  // Every page written: all samples dirty, the whole 8 MiB per elapsed second.
  const prng = new Prng(2);
  const all = new PageSampler([block], 16384, () => prng.next());
  for (let page = 0; page < block.pageCount; page++) memory[page * TARGET_PAGE_SIZE + 100] = memory[page * TARGET_PAGE_SIZE + 100]! ^ 0xff;
  const counted = all.count();
  assert.deepEqual(counted, { dirtySamples: 128, totalSamples: 128, totalBlockMiB: 8 });
  assert.equal(dirtyRateMiBps(counted, 1000), 8);
  assert.equal(dirtyRateMiBps(counted, 250), 32);

  // Even pages written: exactly the samples that fell on even pages are dirty (the same seeded choice).
  const choose = new Prng(3);
  const picked: number[] = [];
  const half = new PageSampler([block], 16384, () => {
    const x = choose.next();
    picked.push(Math.floor(x * block.pageCount));
    return x;
  });
  for (let page = 0; page < block.pageCount; page += 2) memory[page * TARGET_PAGE_SIZE] = memory[page * TARGET_PAGE_SIZE]! ^ 1;
  const evens = picked.filter((p) => p % 2 === 0).length;
  assert.ok(evens > 0 && evens < 128);
  assert.equal(half.count().dirtySamples, evens);

  // Nothing sampled (no block large enough): 0, as an idle guest.
  assert.equal(dirtyRateMiBps(new PageSampler([small], 512).count(), 1000), 0);
});

test('a measurement whose RAM goes away meanwhile ends without a figure, and throws nowhere', { timeout: 10_000 }, async () => {
  const memory = new Uint8Array(1 * MiB);
  const block = new DenseRamBlock('pc.ram', memory);
  // Only what the meter reads of a machine: its RAM blocks.
  const meter = new DirtyRateMeter({ ramBlocks: () => [block] } as unknown as Machine);
  meter.start(1, 16384, 'page-sampling');
  assert.equal(meter.query().status, 'measuring');
  // The RAM's buffer handed away (detached): reading a page now throws.
  structuredClone(memory.buffer, { transfer: [memory.buffer] });
  assert.throws(() => block.pageView(0));
  await new Promise((r) => setTimeout(r, 1200));
  assert.deepEqual(meter.query(), { status: 'unstarted', 'sample-pages': 0, mode: 'page-sampling', 'start-time': 0, 'calc-time': 0 });
});

test('calc-dirty-rate measures the rate a test guest is set to write at; stopped, 0', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-dirty-rate-'));
  const path = join(dir, 'm.qmp');
  // 2000 pages a second in order over 32 MiB (8192 pages): a quarter of the pages each second, 7.8 MiB/s.
  const proc = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--dirty-rate', '2000', '--pattern', 'sequential', '--qmp', `unix:${path}`]);
  let qmp: RawQmp | undefined;
  try {
    await proc.waitFor('qmp');
    qmp = await RawQmp.open(path);
    await qmp.next((m) => 'QMP' in m);
    await qmp.execute('qmp_capabilities');
    const measure = async (): Promise<Record<string, unknown>> => {
      assert.deepEqual((await qmp!.execute('calc-dirty-rate', { 'calc-time': 1, 'sample-pages': 16384 })).return, {});
      const measuring = (await qmp!.execute('query-dirty-rate')).return;
      assert.equal(measuring.status, 'measuring');
      assert.equal('dirty-rate' in measuring, false, 'no figure while measuring');
      const again = await qmp!.execute('calc-dirty-rate', { 'calc-time': 1 });
      assert.equal(again.error?.desc, 'the dirty rate is already being measured.');
      for (;;) {
        const info = (await qmp!.execute('query-dirty-rate')).return;
        if (info.status === 'measured') return info;
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    const running = await measure();
    assert.deepEqual(Object.keys(running), ['status', 'sample-pages', 'dirty-rate', 'mode', 'start-time', 'calc-time']);
    assert.equal(running['sample-pages'], 16384);
    assert.equal(running.mode, 'page-sampling');
    // 512 samples, ~125 of them dirty: the sampling's spread is ~8 %.
    const rate = running['dirty-rate'] as number;
    assert.ok(rate >= 5 && rate <= 10.5, `a guest writing 7.8 MiB/s measures ${rate} MB/s`);
    const hmp = (await qmp.execute('human-monitor-command', { 'command-line': 'info dirty_rate' })).return as string;
    assert.match(hmp, new RegExp(`^Status: measured\\r\\nStart Time: \\d+ \\(ms\\)\\r\\nSample Pages: 16384 \\(per GB\\)\\r\\nPeriod: 1 \\(sec\\)\\r\\nMode: page-sampling\\r\\nDirty rate: ${rate} \\(MB/s\\)\\r\\n$`));

    await qmp.execute('stop');
    const stopped = await measure();
    assert.equal(stopped['dirty-rate'], 0, 'a stopped guest writes nothing');
  } finally {
    qmp?.close();
    await proc.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a dirty-rate measurement during a migration: the migration completes and the guest arrives intact', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-dirty-rate-mig-'));
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--dirty-rate', '2000', '--qmp', `unix:${join(dir, 'src.qmp')}`]);
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--qmp', `unix:${join(dir, 'dst.qmp')}`, '--incoming', `unix:${join(dir, 'mig.sock')}`]);
  const clients: QmpClient[] = [];
  try {
    await Promise.all([src.waitFor('qmp'), dst.waitFor('listening')]);
    const s = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`);
    clients.push(s);
    // 16 MiB/s: the 32 MiB take two seconds, so the measurement falls inside the migration.
    await s.execute('migrate-set-parameters', { 'max-bandwidth': 16 << 20 });
    await s.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}` });
    await s.execute('calc-dirty-rate', { 'calc-time': 1 });
    let rate: Record<string, unknown>;
    for (;;) {
      rate = (await s.execute('query-dirty-rate')) as Record<string, unknown>;
      if (rate.status === 'measured') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(typeof rate['dirty-rate'], 'number');
    const during = (await s.execute('query-migrate')) as { status: string };
    assert.notEqual(during.status, 'failed');
    for (;;) {
      const info = (await s.execute('query-migrate')) as { status: string; 'error-desc'?: string };
      assert.notEqual(info.status, 'failed', info['error-desc']);
      if (info.status === 'completed') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const d = await QmpClient.connect(`unix:${join(dir, 'dst.qmp')}`);
    clients.push(d);
    assert.equal(((await d.execute('query-status')) as { status: string }).status, 'running');
    await d.execute('stop');
    const check = (await d.execute('x-livemig-check-guest')) as { memoryCheck: { ok: boolean; reason?: string } };
    assert.equal(check.memoryCheck.ok, true, check.memoryCheck.reason);
  } finally {
    for (const c of clients) await c.close();
    await src.stop();
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
