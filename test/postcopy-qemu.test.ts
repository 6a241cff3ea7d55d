/**
 * Postcopy against real QEMU 7.2 (`-M none`, RAM in a shared file on tmpfs, so
 * a QEMU destination can register it with userfaultfd): QEMU -> livemig and
 * livemig -> QEMU with `postcopy-ram` on both sides, the switch made while the
 * first pre-copy pass is still running (max-bandwidth 32 MiB/s), RAM equal
 * byte for byte. The none machine has no vCPU; QEMU's own read of guest
 * memory (HMP xp) on a QEMU destination faults and sends a page request.
 * A third test rewrites pages at the switch (an in-process source), so QEMU
 * gets many POSTCOPY_RAM_DISCARD commands (12 ranges each) for pages it has.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { analyzeFile } from '../src/analyze/analyze-stream.js';
import type { DirtyLogSink } from '../src/machine/machine.js';
import { fillNoneRam, NoneMachine } from '../src/machine/none-machine.js';
import { OutgoingMigration, type MigrationStatus } from '../src/migration/index.js';
import { queryMigrate } from '../src/monitor/query-migrate.js';
import { TARGET_PAGE_SIZE } from '../src/wire/index.js';
import type { LivemigProcess } from './helpers/livemig-process.js';
import { qemuSkipReason, type QemuProcess } from './helpers/qemu.js';
import { livemigListening, qemuListen, readQemuRam, setQemuCapabilities, startLivemigNone, startQemuNone } from './helpers/qemu-none.js';
import { RawQmp } from './helpers/raw-qmp.js';

const MiB = 1 << 20;
const RAM_BYTES = 128 * MiB;
const BANDWIDTH = 32 * MiB;
/** userfaultfd on a shared file mapping needs shmem (tmpfs); ext4 files cannot be registered. */
const RAM_DIR = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A QEMU postcopy destination registers its RAM with userfaultfd: root, or vm.unprivileged_userfaultfd=1, and tmpfs. */
function userfaultfdSkipReason(): string | undefined {
  const qemu = qemuSkipReason();
  if (qemu) return qemu;
  if (!existsSync('/dev/shm')) return "QEMU's postcopy destination needs its RAM on tmpfs: no /dev/shm here";
  const root = process.getuid?.() === 0;
  let unprivileged = false;
  try {
    unprivileged = readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim() === '1';
  } catch {
    /* no such sysctl: only root */
  }
  return root || unprivileged ? undefined : "QEMU's postcopy destination needs userfaultfd: run the tests as root, or sysctl vm.unprivileged_userfaultfd=1";
}

function seededRam(seed: number): Uint8Array {
  const ram = new Uint8Array(RAM_BYTES);
  fillNoneRam(ram, { kind: 'random', seed }); // a quarter zero pages, the rest random or mostly zero
  return ram;
}

function firstDifference(a: Uint8Array, b: Uint8Array): string {
  if (a.length !== b.length) return `length ${a.length} vs ${b.length}`;
  if (Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) return 'none';
  const i = a.findIndex((x, k) => x !== b[k]);
  return `offset 0x${i.toString(16)} (page ${Math.floor(i / TARGET_PAGE_SIZE)})`;
}

async function qmpExecute(qmp: RawQmp, command: string, args?: Record<string, unknown>): Promise<any> {
  const reply = (await qmp.execute(command, args)) as Record<string, any>;
  if ('error' in reply) throw new Error(`livemig QMP ${command}: ${JSON.stringify(reply.error)}`);
  return reply.return;
}

/** A livemig destination's RAM, decoded from a migration of it on to a file (postcopy off for that one). */
async function livemigRamViaFile(qmp: RawQmp, dir: string): Promise<Uint8Array> {
  const file = join(dir, 'livemig-out.mig');
  await qmpExecute(qmp, 'migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: false }] });
  await qmpExecute(qmp, 'migrate', { uri: `file:${file}` });
  for (const deadline = Date.now() + 30_000; ; ) {
    const status = (await qmpExecute(qmp, 'query-migrate')).status as string;
    if (status === 'completed') break;
    assert.ok(status !== 'failed' && Date.now() < deadline, `livemig's migration to a file: ${status}`);
    await sleep(20);
  }
  const { analysis, ramBlocks } = await analyzeFile(file);
  assert.equal(analysis.error, undefined, analysis.error?.message);
  const block = ramBlocks.find((b) => b.idstr === 'ram')!;
  const ram = new Uint8Array(block.lengthBytes);
  for (let page = 0; page < block.lengthBytes / TARGET_PAGE_SIZE; page++) block.readPage(page, ram, page * TARGET_PAGE_SIZE);
  return ram;
}

test('postcopy QEMU 7.2 -> livemig (none machine): QEMU goes postcopy-active and completes, RAM byte for byte', { skip: qemuSkipReason(), timeout: 60_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-postcopy-qemu-'));
  const ramDir = await mkdtemp(join(RAM_DIR, 'livemig-postcopy-qemu-'));
  let qemu: QemuProcess | undefined;
  let livemig: LivemigProcess | undefined;
  let qmp: RawQmp | undefined;
  try {
    const ram = seededRam(31);
    const qmpPath = join(dir, 'livemig.qmp');
    livemig = startLivemigNone(['--incoming', 'tcp:127.0.0.1:0', '--qmp', `unix:${qmpPath}`, '--cap', 'postcopy-ram'], { ram: `${RAM_BYTES / MiB}M` });
    const address = await livemigListening(livemig);
    qmp = await RawQmp.open(qmpPath);
    await qmp.next((m) => 'QMP' in m);
    await qmpExecute(qmp, 'qmp_capabilities');

    qemu = await startQemuNone({ ramFile: join(ramDir, 'qemu-ram.bin'), ramSizeBytes: RAM_BYTES, contents: ram });
    await setQemuCapabilities(qemu, ['postcopy-ram', 'events']);
    await qemu.execute('migrate-set-parameters', { 'max-bandwidth': BANDWIDTH });
    const started = Date.now();
    await qemu.execute('migrate', { uri: address });
    // Still in the first pass (128 MiB at 32 MiB/s takes seconds): switch.
    assert.equal(await qemu.waitForMigrationStatus(['active', 'failed', 'completed']), 'active');
    await sleep(500);
    const before = (await qemu.execute('query-migrate')) as { status: string; ram: { remaining: number } };
    assert.equal(before.status, 'active', 'QEMU is still in pre-copy');
    assert.ok(before.ram.remaining > 16 * MiB, `much is left to send before the switch: ${before.ram.remaining}`);
    await qemu.execute('migrate-start-postcopy');
    const switchedAt = Date.now();
    const final = await qemu.waitForMigrationStatus(['completed', 'failed'], 20_000);
    const qemuInfo = (await qemu.execute('query-migrate')) as Record<string, any>;
    assert.equal(final, 'completed', `QEMU: ${JSON.stringify(qemuInfo)} ${qemu.stderr}; livemig: ${livemig.stderr}`);
    const statuses = qemu.events.filter((e) => e.event === 'MIGRATION').map((e) => (e.data as { status: string }).status);
    t.diagnostic(`QEMU states ${statuses.join(' -> ')}; switched ${switchedAt - started} ms in, completed ${Date.now() - switchedAt} ms later; postcopy-requests ${qemuInfo.ram['postcopy-requests']}, postcopy-bytes ${qemuInfo.ram['postcopy-bytes']}, downtime ${qemuInfo.downtime} ms`);
    assert.ok(statuses.includes('postcopy-active'), `QEMU went postcopy-active: ${statuses.join(', ')}`);
    assert.ok(statuses.indexOf('completed') > statuses.indexOf('postcopy-active'), `then completed: ${statuses.join(', ')}`);
    assert.ok(qemuInfo.ram['postcopy-bytes'] > 16 * MiB, `RAM went after the switch: ${qemuInfo.ram['postcopy-bytes']}`);
    assert.equal(qemuInfo.ram['postcopy-requests'], 0, 'no vCPU, no page requests');

    const resumed = await livemig.waitFor('resumed');
    assert.equal(resumed.started, true, 'the destination runs the guest');
    const dstInfo = await qmpExecute(qmp, 'query-migrate');
    assert.equal(dstInfo.status, 'completed');
    assert.equal(dstInfo['x-livemig-postcopy']?.['missing-pages'], 0, JSON.stringify(dstInfo));
    assert.equal(dstInfo['x-livemig-postcopy'].requests, 0);
    assert.ok(dstInfo['x-livemig-postcopy']['placed-pages'] > 0, `pages placed after LISTEN: ${JSON.stringify(dstInfo['x-livemig-postcopy'])}`);
    assert.equal(firstDifference(await livemigRamViaFile(qmp, dir), ram), 'none', "livemig's RAM equals QEMU's source RAM");
  } finally {
    qmp?.close();
    await livemig?.stop();
    await qemu?.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(ramDir, { recursive: true, force: true });
  }
});

test('postcopy livemig (none machine) -> QEMU 7.2: QEMU loads the package and the PART sections, its read of a missing page is served, it completes, RAM byte for byte', { skip: userfaultfdSkipReason(), timeout: 60_000 }, async (t) => {
  const ramDir = await mkdtemp(join(RAM_DIR, 'livemig-postcopy-qemu-'));
  let qemu: QemuProcess | undefined;
  let livemig: LivemigProcess | undefined;
  try {
    const seed = 32;
    const ramFile = join(ramDir, 'qemu-ram.bin');
    qemu = await startQemuNone({ ramFile, ramSizeBytes: RAM_BYTES, incoming: 'defer' });
    await setQemuCapabilities(qemu, ['postcopy-ram', 'events']);
    const address = await qemuListen(qemu);
    const started = Date.now();
    const expected = new Uint8Array(RAM_BYTES);
    fillNoneRam(expected, { kind: 'random', seed });
    // After the switch too, at 32 MiB/s: RAM's tail is still at the source when QEMU reads it below.
    livemig = startLivemigNone(['--pattern', `random:${seed}`, '--migrate-to', address, '--migrate-after-ms', '0', '--cap', 'postcopy-ram', '--param', `max-bandwidth=${BANDWIDTH}`, '--param', `max-postcopy-bandwidth=${BANDWIDTH}`, '--postcopy-after-ms', '500'], { ram: `${RAM_BYTES / MiB}M` });
    // No vCPU faults, but QEMU's own read of guest memory (HMP xp) does: its fault thread sends a page
    // request, and the read waits until livemig has served the page.
    assert.equal(await qemu.waitForMigrationStatus(['postcopy-active', 'completed', 'failed'], 15_000), 'postcopy-active');
    const view = new DataView(expected.buffer);
    let probe = RAM_BYTES - TARGET_PAGE_SIZE;
    while (view.getBigUint64(probe, true) === 0n || view.getBigUint64(probe + 8, true) === 0n) probe -= TARGET_PAGE_SIZE;
    const readAt = Date.now();
    const xp = (await qemu.execute('human-monitor-command', { 'command-line': `xp /2xg 0x${probe.toString(16)}` })) as string;
    const readMs = Date.now() - readAt;
    const words = [...xp.matchAll(/0x([0-9a-f]{16})/g)].map((m) => BigInt(`0x${m[1]}`));
    assert.deepEqual(words, [view.getBigUint64(probe, true), view.getBigUint64(probe + 8, true)], `QEMU read the requested page: ${xp}`);
    const completed = await livemig.waitFor('completed', () => true, 20_000).catch((err: Error) => {
      const failed = livemig!.events.find((e) => e.event === 'failed' || e.event === 'postcopy-paused');
      throw new Error(`${failed ? JSON.stringify(failed.info) : err.message}; livemig: ${livemig!.stderr}; QEMU: ${qemu!.stderr}`);
    });
    const statuses = livemig.events.filter((e) => e.event === 'status').map((e) => e.status as string);
    const info = completed.info;
    t.diagnostic(`livemig states ${statuses.join(' -> ')}; completed in ${Date.now() - started} ms, downtime ${info.downtime} ms, postcopy-bytes ${info.ram['postcopy-bytes']}, postcopy-requests ${info.ram['postcopy-requests']}`);
    assert.deepEqual(statuses, ['setup', 'active', 'postcopy-active', 'completed']);
    t.diagnostic(`QEMU's read of page ${probe / TARGET_PAGE_SIZE} (of ${RAM_BYTES / TARGET_PAGE_SIZE}) took ${readMs} ms`);
    assert.ok(info.ram['postcopy-bytes'] > 16 * MiB, `RAM went after the switch: ${info.ram['postcopy-bytes']}`);
    assert.ok(info.ram['postcopy-requests'] >= 1, `livemig served QEMU's page request: ${info.ram['postcopy-requests']}`);
    assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed'], 10_000), 'completed', qemu.stderr);
    const qemuStatuses = qemu.events.filter((e) => e.event === 'MIGRATION').map((e) => (e.data as { status: string }).status);
    t.diagnostic(`QEMU states ${qemuStatuses.join(' -> ')}`);
    assert.ok(qemuStatuses.includes('postcopy-active'), `QEMU went postcopy-active: ${qemuStatuses.join(', ')}`);
    assert.equal(((await qemu.execute('query-status')) as { status: string }).status, 'running', 'QEMU runs the guest');
    assert.equal(firstDifference(await readQemuRam({ ramFile }), expected), 'none', "QEMU's RAM equals livemig's");
  } finally {
    await livemig?.stop();
    await qemu?.stop();
    await rm(ramDir, { recursive: true, force: true });
  }
});

/**
 * The none machine, but at the sync made at the switch to postcopy it rewrites
 * every 5th page (stands in for a guest): pages already sent become dirty
 * again, so the source must discard them on the destination and send them anew.
 */
class RewritingNoneMachine extends NoneMachine {
  syncs = 0;
  rewrittenPages = 0;
  override async syncDirtyLog(sink: DirtyLogSink): Promise<void> {
    await super.syncDirtyLog(sink);
    if (this.syncs++ === 0) return; // the first sync: every page, from setup
    const pages = this.memory.length / TARGET_PAGE_SIZE;
    const log = new Uint32Array(Math.ceil(pages / 32));
    for (let page = this.syncs; page < pages; page += 5) {
      const at = page * TARGET_PAGE_SIZE + ((page * 97) % 4000);
      this.memory[at] = (this.memory[at]! + 1) & 0xff;
      this.memory[at + 90] = this.syncs;
      log[page >>> 5]! |= 1 << (page & 31);
      this.rewrittenPages++;
    }
    sink('ram', log);
  }
}

test('postcopy livemig -> QEMU 7.2 with pages dirtied at the switch: QEMU takes the discards (12 ranges per command) and completes, RAM byte for byte', { skip: userfaultfdSkipReason(), timeout: 60_000 }, async (t) => {
  const ramDir = await mkdtemp(join(RAM_DIR, 'livemig-postcopy-qemu-'));
  let qemu: QemuProcess | undefined;
  const machine = new RewritingNoneMachine({ ramSizeBytes: RAM_BYTES, pattern: { kind: 'random', seed: 33 } });
  try {
    const ramFile = join(ramDir, 'qemu-ram.bin');
    qemu = await startQemuNone({ ramFile, ramSizeBytes: RAM_BYTES, incoming: 'defer' });
    await setQemuCapabilities(qemu, ['postcopy-ram', 'events']);
    const address = await qemuListen(qemu);
    const migration = new OutgoingMigration(machine);
    migration.setCapabilities({ 'postcopy-ram': true });
    migration.setParameters({ 'max-bandwidth': BANDWIDTH });
    const statuses: MigrationStatus[] = [];
    migration.on('status', (s) => statuses.push(s));
    const started = Date.now();
    migration.start(address);
    await sleep(500);
    assert.equal(migration.status, 'active', 'still in pre-copy');
    migration.startPostcopy();
    const status = await migration.finished;
    const info = queryMigrate(migration);
    assert.equal(status, 'completed', `${info['error-desc']}; QEMU: ${qemu.stderr}`);
    t.diagnostic(`livemig states ${statuses.join(' -> ')}; ${machine.rewrittenPages} pages rewritten at the switch; completed in ${Date.now() - started} ms, downtime ${info.downtime} ms, postcopy-bytes ${info.ram!['postcopy-bytes']}`);
    assert.deepEqual(statuses, ['setup', 'active', 'postcopy-active', 'completed']);
    assert.ok(machine.rewrittenPages > 1000, 'pages were dirtied at the switch');
    assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed'], 10_000), 'completed', qemu.stderr);
    const qemuStatuses = qemu.events.filter((e) => e.event === 'MIGRATION').map((e) => (e.data as { status: string }).status);
    assert.ok(qemuStatuses.includes('postcopy-active'), `QEMU went postcopy-active: ${qemuStatuses.join(', ')}`);
    assert.equal(((await qemu.execute('query-status')) as { status: string }).status, 'running', 'QEMU runs the guest');
    assert.equal(firstDifference(await readQemuRam({ ramFile }), machine.memory), 'none', "QEMU's RAM equals the source's at the switch");
  } finally {
    await machine.destroy();
    await qemu?.stop();
    await rm(ramDir, { recursive: true, force: true });
  }
});
