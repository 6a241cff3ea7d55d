/**
 * Real QEMU 7.2 as the oracle: it loads a stream livemig wrote, its memory
 * (read back with pmemsave) must equal ours byte for byte; then it migrates
 * the VM out again and livemig must decode exactly the same RAM.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { createServer, type AddressInfo } from 'node:net';
import { analyzeBytes, analyzeFile } from '../src/analyze/analyze-stream.js';
import { DenseRamBlock, RAM_IDSTR, RAM_SECTION_VERSION, RamSaveHandler } from '../src/ram/index.js';
import { createGlobalState, globalStateVmsd, SaveStateRegistry, SaveVmState, storeGlobalState } from '../src/savevm/index.js';
import { connectOutgoing } from '../src/transport/index.js';
import { StreamWriter, TARGET_PAGE_SIZE } from '../src/wire/index.js';
import { FileSink } from '../src/wire/node-channels.js';
import { Prng } from './helpers/prng.js';
import { QemuProcess, qemuSkipReason } from './helpers/qemu.js';

const RAM_BYTES = 16 << 20;
const PAGES = RAM_BYTES / TARGET_PAGE_SIZE;
const QEMU_NONE_ARGS = ['-M', 'none', '-m', '16M', '-nodefaults', '-display', 'none'];
const KERNEL = fileURLToPath(new URL('../../guests/multiboot/livemig-test-kernel.bin', import.meta.url));

/** Write a `-M none -m 16M` stream: random and zero pages, then pages sent a second time as XBZRLE. */
async function writeStream(out: StreamWriter, ram: Uint8Array): Promise<RamSaveHandler> {
  const prng = new Prng(0x5eed);
  for (let page = 0; page < PAGES; page++) {
    const at = page * TARGET_PAGE_SIZE;
    if (page % 3 === 0) ram.set(prng.bytes(TARGET_PAGE_SIZE), at); // random
    else if (page % 3 === 1 && page % 5 === 0) ram.fill(page & 0xff || 1, at, at + 64); // mostly zero
  }
  const ramSave = new RamSaveHandler([new DenseRamBlock(RAM_IDSTR, ram)], { xbzrle: true, xbzrleCacheBytes: 4 << 20, maxIterateMs: Infinity });
  const registry = new SaveStateRegistry();
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ramSave });
  const gs = createGlobalState();
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: gs });
  const save = new SaveVmState(registry, out, { configuration: { machineName: 'none' } });
  await save.writeHeader();
  await save.setup();
  // Several PART sections per pass (CONTINUE crosses section boundaries).
  const step = () => {
    const limit = out.bytesWritten + (3 << 20);
    return save.iterate(() => out.bytesWritten >= limit);
  };
  while (!(await step()));
  // The "guest" rewrites a working set twice: the first resend fills the XBZRLE
  // cache (a miss), the second is sent as XBZRLE deltas against it.
  for (let round = 1; round <= 2; round++) {
    for (let page = 0; page < PAGES; page += 7) {
      const at = page * TARGET_PAGE_SIZE + ((page * 13) % 4000);
      ram[at] = (ram[at]! + round) & 0xff;
      ram[at + 50] = round;
      ramSave.markDirty(RAM_IDSTR, page);
    }
    while (!(await step()));
  }
  // Some pages become zero and some change completely (XBZRLE overflow -> PAGE).
  for (let page = 0; page < PAGES; page += 7 * 11) {
    ram.fill(0, page * TARGET_PAGE_SIZE, (page + 1) * TARGET_PAGE_SIZE);
    ramSave.markDirty(RAM_IDSTR, page);
  }
  for (let page = 7 * 5; page < PAGES; page += 7 * 13) {
    ram.set(prng.bytes(TARGET_PAGE_SIZE), page * TARGET_PAGE_SIZE);
    ramSave.markDirty(RAM_IDSTR, page);
  }
  storeGlobalState(gs, 'running');
  await save.completePrecopy();
  await out.close();
  return ramSave;
}

function firstDifference(a: Uint8Array, b: Uint8Array): string {
  const i = a.findIndex((x, k) => x !== b[k]);
  return i < 0 ? (a.length === b.length ? 'none' : `length ${a.length} vs ${b.length}`) : `offset 0x${i.toString(16)} (page ${Math.floor(i / TARGET_PAGE_SIZE)})`;
}

test('into and out of real QEMU 7.2: RAM byte for byte', { skip: qemuSkipReason(), timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-interop-'));
  let qemu: QemuProcess | undefined;
  try {
    const ram = new Uint8Array(RAM_BYTES);
    const streamPath = join(dir, 'livemig.mig');
    const ramSave = await writeStream(new StreamWriter(await FileSink.create(streamPath)), ram);
    const stats = ramSave.stats;
    assert.ok(stats.duplicatePages > 1000, `zero pages sent: ${stats.duplicatePages}`);
    assert.ok(stats.normalPages > 1300, `normal pages sent: ${stats.normalPages}`);
    assert.ok(stats.xbzrle.pages - stats.xbzrle.overflow > 300, `XBZRLE pages: ${JSON.stringify(stats.xbzrle)}`);
    assert.ok(stats.xbzrle.overflow > 0, 'some pages overflow XBZRLE and go as PAGE');
    const ours = await analyzeFile(streamPath);
    assert.equal(ours.analysis.error, undefined);
    assert.ok(ours.analysis.ram!.totals.xbzrlePages > 300, 'the stream really holds XBZRLE records');

    // Into QEMU.
    qemu = await QemuProcess.start([...QEMU_NONE_ARGS, '-incoming', 'defer']);
    await qemu.execute('migrate-incoming', { uri: `exec:cat ${streamPath}` });
    const status = await qemu.waitForMigrationStatus(['completed', 'failed']);
    assert.equal(status, 'completed', qemu.stderr);
    const memPath = join(dir, 'qemu-mem.bin');
    await qemu.execute('pmemsave', { val: 0, size: RAM_BYTES, filename: memPath });
    const qemuMemory = new Uint8Array(await readFile(memPath));
    assert.equal(firstDifference(qemuMemory, ram), 'none', 'QEMU memory equals what livemig sent');

    // Out of QEMU.
    const outPath = join(dir, 'qemu-out.mig');
    await qemu.execute('migrate', { uri: `exec:cat > ${outPath}` });
    assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed']), 'completed', qemu.stderr);
    const { analysis, ramBlocks } = await analyzeFile(outPath);
    assert.equal(analysis.error, undefined, analysis.error?.message);
    assert.equal(analysis.configuration.machineName, 'none');
    assert.deepEqual(analysis.devices.map((d) => d.name), ['timer', 'globalstate']);
    const block = ramBlocks.find((b) => b.idstr === RAM_IDSTR)!;
    assert.equal(block.lengthBytes, RAM_BYTES);
    const decoded = new Uint8Array(RAM_BYTES);
    for (let page = 0; page < PAGES; page++) block.readPage(page, decoded, page * TARGET_PAGE_SIZE);
    assert.equal(firstDifference(decoded, ram), 'none', 'RAM decoded from QEMU equals the original');
  } finally {
    await qemu?.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('real QEMU rejects a stream for another machine type, as livemig does', { skip: qemuSkipReason(), timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-interop-'));
  let qemu: QemuProcess | undefined;
  try {
    const path = join(dir, 'pc.mig');
    const registry = new SaveStateRegistry();
    registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: new RamSaveHandler([new DenseRamBlock(RAM_IDSTR, new Uint8Array(RAM_BYTES))]) });
    const out = new StreamWriter(await FileSink.create(path));
    const save = new SaveVmState(registry, out, { configuration: { machineName: 'pc-i440fx-7.2' } });
    await save.writeHeader();
    await save.setup();
    await save.completePrecopy();
    await out.close();
    qemu = await QemuProcess.start([...QEMU_NONE_ARGS, '-incoming', 'defer']);
    await qemu.execute('migrate-incoming', { uri: `exec:cat ${path}` });
    assert.equal(await qemu.waitForExit(), 1, 'a 7.2 destination exits 1 on a load error');
    assert.match(qemu.stderr, /Machine type received is 'pc-i440fx-7.2' and local is 'none'/);
  } finally {
    await qemu?.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('XBZRLE over TCP, livemig to QEMU 7.2: QEMU loads the XBZRLE records, RAM byte for byte', { skip: qemuSkipReason(), timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-interop-'));
  let qemu: QemuProcess | undefined;
  try {
    qemu = await QemuProcess.start([...QEMU_NONE_ARGS, '-incoming', 'defer']);
    await qemu.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const info = (await qemu.execute('query-migrate')) as { 'socket-address'?: Array<{ host: string; port: string }> };
    const port = info['socket-address']?.[0]?.port;
    assert.ok(port, `QEMU reports where it listens: ${JSON.stringify(info)}`);
    const channel = await connectOutgoing(`tcp:127.0.0.1:${port}`);
    const ram = new Uint8Array(RAM_BYTES);
    const ramSave = await writeStream(new StreamWriter(channel.output!), ram);
    await channel.close();
    assert.ok(ramSave.stats.xbzrle.pages - ramSave.stats.xbzrle.overflow > 300, `XBZRLE pages sent: ${JSON.stringify(ramSave.stats.xbzrle)}`);
    assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed']), 'completed', qemu.stderr);
    const memPath = join(dir, 'qemu-mem.bin');
    await qemu.execute('pmemsave', { val: 0, size: RAM_BYTES, filename: memPath });
    assert.equal(firstDifference(new Uint8Array(await readFile(memPath)), ram), 'none', 'QEMU memory equals what livemig sent');
  } finally {
    await qemu?.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

/*
 * QEMU to livemig with XBZRLE needs a guest that rewrites its RAM between passes,
 * and `-M none` has no CPU (and Debian's QEMU has no qtest accelerator to poke
 * memory). So the source is a PC running our multiboot test kernel, QEMU's own
 * migration-test workload; livemig receives the stream over TCP and decodes it.
 */
test('XBZRLE over TCP, QEMU 7.2 to livemig: livemig decodes QEMU\'s XBZRLE records, RAM byte for byte', { skip: qemuSkipReason(), timeout: 180_000 }, async (t) => {
  const t0 = Date.now();
  const step = (what: string): void => t.diagnostic(`${Date.now() - t0} ms: ${what}`);
  const dir = await mkdtemp(join(tmpdir(), 'livemig-interop-'));
  let qemu: QemuProcess | undefined;
  const server = createServer();
  try {
    const chunks: Buffer[] = [];
    const received = new Promise<void>((resolve, reject) => {
      server.once('connection', (socket) => {
        socket.on('data', (chunk: Buffer) => chunks.push(chunk));
        socket.once('end', resolve);
        socket.once('error', reject);
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    const ramMiB = 128;
    const serialPath = join(dir, 'serial.txt');
    qemu = await QemuProcess.start(['-M', 'pc', '-m', `${ramMiB}M`, '-nodefaults', '-display', 'none', '-kernel', KERNEL, '-serial', `file:${serialPath}`]);
    // 'A' once it runs, 'B' after each pass over its range. Migrating only after a whole pass: before it, most
    // of RAM is zero pages (a few bytes each on the wire), and a guest starved by a loaded machine may dirty so
    // little that QEMU switches over at once, before sending any XBZRLE page.
    for (let waited = 0; !(await readFile(serialPath, 'latin1').catch(() => '')).includes('B'); waited += 50) {
      assert.ok(waited < 60_000, 'the test kernel did not complete a pass over its range in QEMU');
      await new Promise((r) => setTimeout(r, 50));
    }
    step('guest running, one pass over its range done');
    await qemu.execute('migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: true }] });
    // A downtime limit QEMU cannot meet keeps it in passes, so pages the guest
    // rewrites go as XBZRLE deltas; then a generous one lets it finish.
    await qemu.execute('migrate-set-parameters', { 'max-bandwidth': 256 << 20, 'downtime-limit': 1, 'xbzrle-cache-size': 128 << 20 });
    await qemu.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    type Info = { status: string; ram?: { 'dirty-sync-count': number }; 'xbzrle-cache'?: { pages: number } };
    const deadline = Date.now() + 60_000;
    for (;;) {
      const info = (await qemu.execute('query-migrate')) as Info;
      assert.ok(info.status === 'active' || info.status === 'setup', `${info.status}: ${qemu.stderr}`);
      if ((info['xbzrle-cache']?.pages ?? 0) > 20_000 && (info.ram?.['dirty-sync-count'] ?? 0) >= 4) break;
      assert.ok(Date.now() < deadline, `QEMU sent no XBZRLE pages: ${JSON.stringify(info)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    step('XBZRLE pages sent; letting QEMU finish');
    await qemu.execute('migrate-set-parameters', { 'downtime-limit': 20_000 });
    assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed']), 'completed', qemu.stderr);
    step('QEMU completed');
    await Promise.race([received, new Promise((_, reject) => setTimeout(() => reject(new Error('QEMU completed but its stream did not end')), 30_000).unref())]);
    // The source stays paused after the migration: its RAM is what it sent.
    const memPath = join(dir, 'qemu-mem.bin');
    await qemu.execute('pmemsave', { val: 0, size: ramMiB << 20, filename: memPath });
    const qemuMemory = new Uint8Array(await readFile(memPath));

    const { analysis, ramBlocks } = await analyzeBytes(Buffer.concat(chunks));
    step(`stream of ${chunks.reduce((n, c) => n + c.length, 0)} bytes analyzed`);
    assert.equal(analysis.error, undefined, analysis.error?.message);
    assert.ok(analysis.ram!.totals.xbzrlePages > 20_000, `XBZRLE records in QEMU's stream: ${analysis.ram!.totals.xbzrlePages}`);
    const block = ramBlocks.find((b) => b.idstr === 'pc.ram')!;
    const decoded = new Uint8Array(block.lengthBytes);
    for (let page = 0; page < block.lengthBytes / TARGET_PAGE_SIZE; page++) block.readPage(page, decoded, page * TARGET_PAGE_SIZE);
    // Compare from 1 MiB (below it the PC maps ROMs and VGA over RAM) to the end of RAM.
    const from = 1 << 20;
    const to = ramMiB << 20;
    assert.equal(firstDifference(decoded.subarray(from, to), qemuMemory.subarray(from, to)), 'none', 'decoded RAM equals QEMU\'s');
    assert.ok(decoded.subarray(from, to).some((b) => b !== 0), 'the guest wrote its RAM');
  } finally {
    server.close();
    await qemu?.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
