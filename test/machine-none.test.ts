/**
 * `livemig run --machine none` against real QEMU 7.2 `-M none -m 16M`, both
 * driven through their command lines and monitors: QEMU -> livemig and
 * livemig -> QEMU over TCP, plain and with multifd; RAM equal byte for byte.
 * QEMU's RAM is a shared memory-backend-file (test/helpers/qemu-none.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { analyzeFile } from '../src/analyze/analyze-stream.js';
import { createGuest } from '../src/guests/index.js';
import { fillNoneRam, NoneMachine, parseNonePattern, type NonePattern } from '../src/machine/none-machine.js';
import { TARGET_PAGE_SIZE } from '../src/wire/index.js';
import type { LivemigProcess } from './helpers/livemig-process.js';
import { QemuProcess, qemuSkipReason } from './helpers/qemu.js';
import { livemigListening, qemuListen, readQemuRam, setQemuCapabilities, startLivemigNone, startQemuNone } from './helpers/qemu-none.js';
import { RawQmp } from './helpers/raw-qmp.js';

const RAM_BYTES = 16 << 20;

function expectedRam(pattern: NonePattern): Uint8Array {
  const ram = new Uint8Array(RAM_BYTES);
  fillNoneRam(ram, pattern);
  return ram;
}

function firstDifference(a: Uint8Array, b: Uint8Array): string {
  if (a.length !== b.length) return `length ${a.length} vs ${b.length}`;
  const i = Buffer.from(a.buffer, a.byteOffset, a.length).compare(Buffer.from(b.buffer, b.byteOffset, b.length)) === 0 ? -1 : a.findIndex((x, k) => x !== b[k]);
  return i < 0 ? 'none' : `offset 0x${i.toString(16)} (page ${Math.floor(i / TARGET_PAGE_SIZE)})`;
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

test('the none machine: patterns, dirty log, pause and resume', async () => {
  assert.deepEqual(parseNonePattern('random'), { kind: 'random', seed: 1 });
  assert.deepEqual(parseNonePattern('random:42'), { kind: 'random', seed: 42 });
  assert.throws(() => parseNonePattern('zigzag'), /--pattern: the none machine takes zero, sequential or random\[:SEED\].*got 'zigzag'/);
  const random = expectedRam({ kind: 'random', seed: 3 });
  assert.equal(firstDifference(random, expectedRam({ kind: 'random', seed: 3 })), 'none', 'a seed gives the same bytes');
  const zeroPages = Array.from({ length: RAM_BYTES / TARGET_PAGE_SIZE }, (_, p) => random.subarray(p * TARGET_PAGE_SIZE, (p + 1) * TARGET_PAGE_SIZE).every((b) => b === 0)).filter(Boolean).length;
  assert.ok(zeroPages > 500 && zeroPages < 2000, `about a quarter of the pages are zero: ${zeroPages}`);
  assert.ok(expectedRam({ kind: 'zero' }).every((b) => b === 0));

  const guest = await createGuest({ machine: 'none', ramSizeBytes: 1 << 20, incoming: false, dirtyRatePagesPerSecond: 0, pattern: 'sequential' });
  const m = guest.machine as NoneMachine;
  assert.equal(m.machineName, 'none');
  assert.deepEqual(m.ramBlocks().map((b) => [b.idstr, b.lengthBytes]), [['ram', 1 << 20]]);
  assert.equal(new DataView(m.memory.buffer).getBigUint64(5 * TARGET_PAGE_SIZE, true), 5n, 'sequential: page n starts with n');
  const synced: number[] = [];
  const sink = (idstr: string, log: Uint32Array): void => {
    assert.equal(idstr, 'ram');
    synced.push(log.reduce((n, w) => n + w.toString(2).replaceAll('0', '').length, 0));
  };
  await m.syncDirtyLog(sink);
  await m.syncDirtyLog(sink);
  m.stopDirtyLog();
  await m.syncDirtyLog(sink);
  assert.deepEqual(synced, [256, 256], 'every page once per tracking session, nothing in between');
  assert.equal(m.running, true);
  await m.pause();
  const clock = m.vmClockNs();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(m.vmClockNs(), clock, 'the virtual clock stops with the machine');
  m.resume();
  assert.equal(m.running, true);
  await assert.rejects(createGuest({ machine: 'none', ramSizeBytes: 1 << 20, incoming: false, dirtyRatePagesPerSecond: 0, pattern: 'x', disk: { path: '/tmp/x', id: 'd' } }), /--disk: the none machine has no disks/);
  await m.destroy();
});

/** A livemig destination's RAM, decoded from a migration of it on to a file: (so a difference can be located). */
async function livemigRamViaFile(qmpPath: string, dir: string): Promise<Uint8Array> {
  const qmp = await RawQmp.open(qmpPath);
  try {
    await qmp.next((m) => 'QMP' in m);
    await qmp.execute('qmp_capabilities');
    const file = join(dir, 'livemig-out.mig');
    // Multifd needs sockets; a file: migration goes without it.
    assert.deepEqual((await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: false }] })).return, {});
    assert.deepEqual((await qmp.execute('migrate', { uri: `file:${file}` })).return, {});
    for (const deadline = Date.now() + 30_000; ; ) {
      const status = (await qmp.execute('query-migrate')).return.status as string;
      if (status === 'completed') break;
      assert.ok(status !== 'failed' && Date.now() < deadline, `livemig's migration to a file: ${status}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const { analysis, ramBlocks } = await analyzeFile(file);
    assert.equal(analysis.error, undefined, analysis.error?.message);
    assert.equal(analysis.configuration.machineName, 'none');
    assert.deepEqual(analysis.devices.map((d) => d.name), ['timer', 'globalstate'], 'the device sections of QEMU -M none');
    const block = ramBlocks.find((b) => b.idstr === 'ram')!;
    const ram = new Uint8Array(block.lengthBytes);
    for (let page = 0; page < block.lengthBytes / TARGET_PAGE_SIZE; page++) block.readPage(page, ram, page * TARGET_PAGE_SIZE);
    return ram;
  } finally {
    qmp.close();
  }
}

for (const multifd of [false, true]) {
  const how = multifd ? 'multifd' : 'plain';
  const caps = multifd ? ['multifd'] : [];
  const livemigCaps = multifd ? ['--cap', 'multifd'] : [];

  test(`QEMU -M none -> livemig run --machine none over TCP (${how}): RAM byte for byte`, { skip: qemuSkipReason(), timeout: 120_000 }, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'livemig-none-'));
    let qemu: QemuProcess | undefined;
    let livemig: LivemigProcess | undefined;
    try {
      const ram = expectedRam({ kind: 'random', seed: multifd ? 11 : 10 });
      const qmpPath = join(dir, 'livemig.qmp');
      livemig = startLivemigNone(['--incoming', 'tcp:127.0.0.1:0', '--verify', '--qmp', `unix:${qmpPath}`, ...livemigCaps]);
      const address = await livemigListening(livemig);
      qemu = await startQemuNone({ ramFile: join(dir, 'qemu-ram.bin'), ramSizeBytes: RAM_BYTES, contents: ram });
      await setQemuCapabilities(qemu, caps);
      const started = Date.now();
      await qemu.execute('migrate', { uri: address });
      assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed']), 'completed', qemu.stderr);
      const qemuInfo = (await qemu.execute('query-migrate')) as { ram: { 'multifd-bytes': number } };
      if (multifd) assert.ok(qemuInfo.ram['multifd-bytes'] > 8 << 20, `QEMU sent pages over multifd: ${qemuInfo.ram['multifd-bytes']} bytes`);
      const loaded = await livemig.waitFor('loaded');
      const resumed = await livemig.waitFor('resumed');
      t.diagnostic(`migrated in ${Date.now() - started} ms, ${resumed.bytes} bytes on the main channel`);
      assert.equal(resumed.started, true, 'the destination runs the guest');
      assert.equal(loaded.ramHash, sha256(ram), 'livemig loaded exactly QEMU\'s RAM (sha256)');
      assert.equal(firstDifference(await livemigRamViaFile(qmpPath, dir), ram), 'none', 'livemig\'s RAM, migrated on to a file, equals QEMU\'s');
    } finally {
      await livemig?.stop();
      await qemu?.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test(`livemig run --machine none -> QEMU -M none over TCP (${how}): RAM byte for byte`, { skip: qemuSkipReason(), timeout: 120_000 }, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'livemig-none-'));
    let qemu: QemuProcess | undefined;
    let livemig: LivemigProcess | undefined;
    try {
      const seed = multifd ? 21 : 20;
      const ramFile = join(dir, 'qemu-ram.bin');
      qemu = await startQemuNone({ ramFile, ramSizeBytes: RAM_BYTES, incoming: 'defer' });
      await setQemuCapabilities(qemu, caps);
      const address = await qemuListen(qemu);
      const started = Date.now();
      livemig = startLivemigNone(['--pattern', `random:${seed}`, '--migrate-to', address, '--migrate-after-ms', '0', ...livemigCaps]);
      const completed = await livemig.waitFor('completed');
      t.diagnostic(`migrated in ${Date.now() - started} ms: downtime ${completed.info.downtime} ms, ${completed.info.ram.transferred} bytes`);
      if (multifd) assert.ok(completed.info.ram['multifd-bytes'] > 8 << 20, `livemig sent pages over multifd: ${completed.info.ram['multifd-bytes']} bytes`);
      assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed']), 'completed', qemu.stderr);
      assert.equal(((await qemu.execute('query-status')) as { status: string }).status, 'running', 'QEMU runs the guest');
      const expected = expectedRam({ kind: 'random', seed });
      assert.equal(completed.ramHash, sha256(expected), 'the source RAM is the seeded pattern');
      assert.equal(firstDifference(await readQemuRam({ ramFile }), expected), 'none', 'QEMU\'s RAM equals livemig\'s');
    } finally {
      await livemig?.stop();
      await qemu?.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
}
