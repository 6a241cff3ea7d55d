/**
 * The stream captured from real QEMU 7.2 (`-M none -m 16M`, see
 * test/fixtures/README.md) through `livemig analyze` and through a
 * destination that holds the same devices as QEMU's `-M none` machine.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DenseRamBlock, FixedRamBlockTable, RAM_IDSTR, RAM_SECTION_VERSION, RamLoadHandler, RamSaveHandler } from '../src/ram/index.js';
import { createGlobalState, globalStateVmsd, loadVmState, SaveStateRegistry, SaveVmState, storeGlobalState } from '../src/savevm/index.js';
import { defineVmsd, field } from '../src/vmstate/index.js';
import { MemorySink, StreamReader, StreamWriter } from '../src/wire/index.js';
import { FileSource } from '../src/wire/node-channels.js';
import { cliPath, fixturePath } from './helpers/paths.js';

const run = promisify(execFile);
const FIXTURE = fixturePath('qemu72-none-16M.mig');
const MIB = 1 << 20;

/** QEMU's `timer` section (softmmu/cpu-timers.c, vmstate_timers) without its optional subsections. */
interface Timers {
  cpu_ticks_offset: bigint;
  cpu_clock_offset: bigint;
}
const timersVmsd = defineVmsd<Timers>({
  name: 'timer',
  version: 2,
  minimumVersion: 1,
  fields: [field.int64('cpu_ticks_offset'), field.unused(8), field.int64('cpu_clock_offset', { fromVersion: 2 })],
});

test('livemig analyze --json: the QEMU 7.2 fixture, every section and value', async () => {
  const { stdout } = await run(process.execPath, [cliPath, 'analyze', '--json', FIXTURE]);
  const a = JSON.parse(stdout);
  assert.equal(a.sizeBytes, 37645);
  assert.deepEqual(a.configuration, { machineName: 'none' });
  assert.deepEqual(a.sections, [
    { type: 'START', offset: 0x11, sectionId: 2, idstr: 'ram', instanceId: 0, versionId: 4, sizeBytes: 0x43 - 0x11 },
    { type: 'PART', offset: 0x43, sectionId: 2, idstr: 'ram', instanceId: 0, versionId: 4, sizeBytes: 0x9059 - 0x43 },
    { type: 'END', offset: 0x9059, sectionId: 2, idstr: 'ram', instanceId: 0, versionId: 4, sizeBytes: 0x906b - 0x9059 },
    { type: 'FULL', offset: 0x906b, sectionId: 0, idstr: 'timer', instanceId: 0, versionId: 2, sizeBytes: 0x909b - 0x906b },
    { type: 'FULL', offset: 0x909b, sectionId: 4, idstr: 'globalstate', instanceId: 0, versionId: 1, sizeBytes: 0x9121 - 0x909b },
  ]);
  assert.deepEqual(a.commands, []);
  assert.equal(a.eofOffset, 0x9121);
  assert.deepEqual(a.vmdesc, { offset: 0x9122, lengthBytes: 486, devices: 2 });
  assert.equal(a.ram.announcedTotalBytes, 16 * MIB);
  assert.equal(a.ram.sections, 3);
  assert.deepEqual(a.ram.blocks, [
    { idstr: 'ram', lengthBytes: 16 * MIB, normalPages: 0, zeroPages: 4096, xbzrlePages: 0, normalBytes: 0, zeroBytes: 36868, xbzrleBytes: 0 },
  ]);
  assert.deepEqual(a.devices.map((d: { name: string; offset: number; version: number; vmsdName: string }) => [d.name, d.offset, d.version, d.vmsdName]), [
    ['timer', 0x906b, 2, 'timer'],
    ['globalstate', 0x909b, 1, 'globalstate'],
  ]);
  assert.equal(a.devices[0].state.cpu_ticks_offset, 0xa6ef59);
  assert.equal(a.devices[0].state.cpu_clock_offset, 0x403385);
  assert.equal(a.devices[1].state.size, 8);
  assert.match(a.devices[1].state.runstate, /^72 75 6e 6e 69 6e 67 00/);
  assert.equal(a.error, undefined);
});

test('livemig analyze (human) lists the sections, and --dump-ram writes the block', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-fixture-'));
  try {
    const { stdout } = await run(process.execPath, [cliPath, 'analyze', '--dump-ram', dir, FIXTURE]);
    assert.match(stdout, /machine 'none'/);
    assert.match(stdout, /0x0000906b\s+FULL\s+0\s+timer/);
    assert.match(stdout, /ram \(16\.0 MiB\): normal 0, zero 4096, xbzrle 0/);
    const dumped = join(dir, 'ram');
    assert.equal((await stat(dumped)).size, 16 * MIB);
    assert.ok((await readFile(dumped)).every((b) => b === 0));
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('a destination with the devices of QEMU -M none loads the fixture', async () => {
  const memory = new Uint8Array(16 * MIB).fill(0xee); // not zero yet: ZERO records must clear it
  const registry = new SaveStateRegistry();
  const timers: Timers = { cpu_ticks_offset: 0n, cpu_clock_offset: 0n };
  registry.register({ idstr: 'timer', vmsd: timersVmsd, opaque: timers });
  const ram = new RamLoadHandler(new FixedRamBlockTable([new DenseRamBlock(RAM_IDSTR, memory)]));
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram });
  const gs = createGlobalState();
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: gs });
  const input = new StreamReader(await FileSource.open(FIXTURE, { chunkBytes: 4093 }));
  const result = await loadVmState(input, registry, { machineName: 'none' });
  await input.close();
  assert.equal(result.totalBytes, 37645);
  assert.ok(memory.every((b) => b === 0));
  assert.equal(timers.cpu_ticks_offset, 0xa6ef59n);
  assert.equal(timers.cpu_clock_offset, 0x403385n);
  assert.equal(gs.state, 'running');
  assert.equal(ram.stats.blocks[0]!.zeroPages, 4096);
});

test('livemig writes the same bytes as QEMU for the same -M none machine', async () => {
  // Register in QEMU's order so the section ids match: timer 0, (block 1), ram 2, (dirty-bitmap 3), globalstate 4.
  const registry = new SaveStateRegistry();
  registry.register({ idstr: 'timer', vmsd: timersVmsd, opaque: { cpu_ticks_offset: 0xa6ef59n, cpu_clock_offset: 0x403385n }, sectionId: 0 });
  // No 50 ms bound on an iteration: on a loaded host it would split the pass into
  // more sections than QEMU (on its idle host) wrote.
  const ram = new RamSaveHandler([new DenseRamBlock(RAM_IDSTR, new Uint8Array(16 * MIB))], { maxIterateMs: Infinity });
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram, sectionId: 2 });
  const gs = createGlobalState();
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: gs, sectionId: 4 });
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  const save = new SaveVmState(registry, out, { configuration: { machineName: 'none' } });
  await save.writeHeader();
  await save.setup();
  while (!(await save.iterate(() => false)));
  storeGlobalState(gs, 'running');
  await save.completePrecopy();
  const ours = sink.bytes();
  const qemus = new Uint8Array(await readFile(FIXTURE));
  const firstDiff = ours.findIndex((b, i) => b !== qemus[i]);
  assert.equal(firstDiff, -1, `first difference at offset 0x${firstDiff.toString(16)}`);
  assert.equal(ours.length, qemus.length);
  assert.ok(Buffer.from(ours).equals(Buffer.from(qemus)), 'byte-identical to the QEMU 7.2 capture');
  assert.equal(ram.stats.transferredBytes, 36876, "QEMU's query-migrate ram.transferred for this stream");
});
