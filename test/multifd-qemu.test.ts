/**
 * Multifd against real QEMU 7.2 over TCP on a `-M none -m 16M` machine:
 * livemig source -> QEMU destination (QEMU's memory read back with pmemsave),
 * then QEMU source -> livemig destination; RAM equal byte for byte both ways.
 */
import { queryMigrate } from '../src/monitor/query-migrate.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import type { DirtyLogSink, Machine } from '../src/machine/machine.js';
import { IncomingMigration, OutgoingMigration } from '../src/migration/index.js';
import { DenseRamBlock, RAM_IDSTR, type RamBlock } from '../src/ram/index.js';
import type { SaveStateRegistry } from '../src/savevm/index.js';
import { defineVmsd, field } from '../src/vmstate/index.js';
import { TARGET_PAGE_SIZE } from '../src/wire/index.js';
import { zstdAvailable } from '../src/ram/multifd/compression.js';
import { Prng } from './helpers/prng.js';
import { QemuProcess, qemuSkipReason } from './helpers/qemu.js';
import { freePort } from './helpers/ports.js';

const RAM_BYTES = 16 << 20;
const PAGES = RAM_BYTES / TARGET_PAGE_SIZE;
const QEMU_NONE_ARGS = ['-M', 'none', '-m', '16M', '-nodefaults', '-display', 'none'];

/** QEMU's `timer` section (as -M none sends it), so a livemig destination can load QEMU's stream. */
const timersVmsd = defineVmsd<{ cpu_ticks_offset: bigint; cpu_clock_offset: bigint }>({
  name: 'timer',
  version: 2,
  minimumVersion: 1,
  fields: [field.int64('cpu_ticks_offset'), field.unused(8), field.int64('cpu_clock_offset', { fromVersion: 2 })],
});

/**
 * A machine that is only RAM (block `ram`, as `-M none -m 16M`), in a
 * SharedArrayBuffer so the multifd workers read it. While migrating, each of
 * the first dirty-log syncs rewrites some pages, so pages travel again in
 * later sections.
 */
class RamOnlyMachine implements Machine {
  readonly kind = 'ram-only';
  readonly machineName = 'none';
  readonly serial = new PassThrough();
  readonly memory = new Uint8Array(new SharedArrayBuffer(RAM_BYTES));
  running = true;
  private readonly block: RamBlock = new DenseRamBlock(RAM_IDSTR, this.memory);
  private syncs = 0;
  private readonly prng = new Prng(0x3f0d);
  constructor(private readonly rewrite = false) {}
  ramBlocks(): RamBlock[] {
    return [this.block];
  }
  // RAM's setup marks every page dirty: this machine's log only reports the rewrites below.
  startDirtyLog(): void {}
  stopDirtyLog(): void {}
  async syncDirtyLog(sink: DirtyLogSink): Promise<void> {
    if (!this.rewrite || this.syncs++ >= 3 || !this.running) return;
    const log = new Uint32Array(Math.ceil(PAGES / 32));
    for (let page = this.syncs; page < PAGES; page += 5) {
      this.memory.set(this.prng.bytes(64), page * TARGET_PAGE_SIZE + ((page * 97) % 4000));
      log[page >>> 5]! |= 1 << (page & 31);
    }
    sink(RAM_IDSTR, log);
  }
  async pause(): Promise<void> {
    this.running = false;
  }
  resume(): void {
    this.running = true;
  }
  setThrottle(): void {}
  registerDevices(registry: SaveStateRegistry): void {
    registry.register({ idstr: 'timer', vmsd: timersVmsd, opaque: { cpu_ticks_offset: 0n, cpu_clock_offset: 0n } });
  }
  async destroy(): Promise<void> {}
}

function firstDifference(a: Uint8Array, b: Uint8Array): string {
  const i = a.findIndex((x, k) => x !== b[k]);
  return i < 0 ? (a.length === b.length ? 'none' : `length ${a.length} vs ${b.length}`) : `offset 0x${i.toString(16)} (page ${Math.floor(i / TARGET_PAGE_SIZE)})`;
}

for (const compression of ['none', 'zlib', 'zstd'] as const) {
test(`multifd (compression ${compression}) with real QEMU 7.2 over TCP, both directions: RAM byte for byte`, { skip: qemuSkipReason() ?? (compression === 'zstd' && !zstdAvailable() ? 'zstd-napi is not installed' : undefined), timeout: 120_000 }, async () => {
  let qemu: QemuProcess | undefined;
  const source = new RamOnlyMachine(true);
  try {
    // Random, mostly-zero and zero pages.
    const prng = new Prng(0x5eed);
    for (let page = 0; page < PAGES; page++) {
      const at = page * TARGET_PAGE_SIZE;
      if (page % 3 === 0) source.memory.set(prng.bytes(TARGET_PAGE_SIZE), at);
      else if (page % 7 === 1) source.memory.fill(page & 0xff || 1, at, at + 100);
    }

    // ---- livemig -> QEMU ----
    qemu = await QemuProcess.start([...QEMU_NONE_ARGS, '-incoming', 'defer']);
    await qemu.execute('migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: true }] });
    await qemu.execute('migrate-set-parameters', { 'multifd-channels': 2, 'multifd-compression': compression });
    const port = await freePort();
    await qemu.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${port}` });
    const out = new OutgoingMigration(source);
    out.setCapabilities({ multifd: true });
    out.setParameters({ 'multifd-channels': 2, 'max-bandwidth': 64 << 20, 'multifd-compression': compression });
    out.start(`tcp:127.0.0.1:${port}`);
    assert.equal(await out.finished, 'completed', `${queryMigrate(out)['error-desc']}\n${qemu.stderr}`);
    const qemuStatus = await qemu.waitForMigrationStatus(['completed', 'failed']);
    assert.equal(qemuStatus, 'completed', `QEMU destination: ${JSON.stringify(await qemu.execute('query-migrate'))} ${qemu.stderr}`);
    const info = queryMigrate(out).ram!;
    assert.ok(info['multifd-bytes'] > 5 << 20, `multifd bytes ${info['multifd-bytes']}`); // accounted as uncompressed pages + headers
    assert.ok(info['dirty-sync-count'] >= 2, 'several passes');
    const memPath = join(qemu.dir, 'mem.bin');
    await qemu.execute('pmemsave', { val: 0, size: RAM_BYTES, filename: memPath });
    assert.equal(firstDifference(new Uint8Array(await readFile(memPath)), source.memory), 'none', 'QEMU memory equals the source RAM at stop');

    // ---- QEMU -> livemig ----
    const dest = new RamOnlyMachine();
    dest.running = false;
    const incoming = new IncomingMigration(dest, { multifd: { channels: 2, compression } });
    const address = await incoming.listen('tcp:127.0.0.1:0');
    const result = incoming.run();
    await qemu.execute('migrate', { uri: address });
    const qemuOutStatus = await qemu.waitForMigrationStatus(['completed', 'failed']);
    assert.equal(qemuOutStatus, 'completed', `QEMU source: ${JSON.stringify(await qemu.execute('query-migrate'))} ${qemu.stderr}; livemig: ${(await Promise.race([result, new Promise((r) => setTimeout(r, 2000))]) as { error?: Error } | undefined)?.error?.message}`);
    const qInfo = (await qemu.execute('query-migrate')) as { ram: { 'multifd-bytes': number } };
    assert.ok(qInfo.ram['multifd-bytes'] > 5 << 20, `QEMU sent over multifd: ${qInfo.ram['multifd-bytes']}`);
    const r = await result;
    assert.equal(r.status, 'completed', r.error?.message);
    assert.equal(firstDifference(dest.memory, source.memory), 'none', 'livemig memory equals what QEMU had');
    assert.equal(incoming.multifdStats?.workerChannels, 2, 'livemig received both channels in worker threads');
    assert.equal(dest.running, true, 'the destination runs the guest (QEMU ran it)');
  } finally {
    await qemu?.stop();
  }
});
}
