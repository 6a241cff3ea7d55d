/**
 * Incomplete streams: a well-formed stream that reaches EOF without what a
 * guest needs (no RAM, RAM never completed, a block not listed, a required
 * device missing) must be refused by a destination that asks for the checks
 * — never loaded as "completed" into blank RAM. Whole streams (livemig's own
 * and the QEMU 7.2 fixture) still load, and `livemig analyze` still accepts
 * the partial ones.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { analyzeBytes } from '../src/analyze/analyze-stream.js';
import { createTestMachine } from '../src/machine/index.js';
import { createV86Machine } from '../src/machine/v86-machine.js';
import { DenseRamBlock, FixedRamBlockTable, RAM_IDSTR, RAM_SECTION_VERSION, RamLoadHandler, RamSaveHandler } from '../src/ram/index.js';
import { createGlobalState, globalStateVmsd, loadVmState, SaveStateRegistry, SaveVmState, storeGlobalState, type LoadOptions } from '../src/savevm/index.js';
import { defineVmsd, field } from '../src/vmstate/index.js';
import { IncompleteStreamError, MemorySink, MemorySource, StreamError, StreamReader, StreamWriter, TARGET_PAGE_SIZE, writeEof } from '../src/wire/index.js';
import { fixturePath } from './helpers/paths.js';
import { Prng } from './helpers/prng.js';

const LAYOUT: Array<[string, number]> = [
  ['pc.ram', 16],
  ['vga.vram', 4],
];

interface Dev {
  mode: number;
  count: number;
}
const devVmsd = defineVmsd<Dev>({ name: 'dev', version: 1, minimumVersion: 1, fields: [field.uint8('mode'), field.uint32('count')] });

function sourceMemory(pages: number, seed: number): Uint8Array {
  const prng = new Prng(seed);
  const memory = new Uint8Array(pages * TARGET_PAGE_SIZE);
  for (let p = 0; p < pages; p += 2) memory.set(prng.bytes(TARGET_PAGE_SIZE), p * TARGET_PAGE_SIZE);
  return memory;
}

/** How far the source gets before it writes EOF. */
type Stage = 'header' | 'start' | 'part' | 'complete';

/** A livemig source stream, cut short at `stage` (the sections written so far, then EOF). */
async function sourceStream(stage: Stage, options: { blocks?: string[]; device?: boolean } = {}): Promise<Uint8Array> {
  const names = options.blocks ?? LAYOUT.map(([n]) => n);
  const blocks = LAYOUT.filter(([n]) => names.includes(n)).map(([n, pages], i) => new DenseRamBlock(n, sourceMemory(pages, 11 + i)));
  const registry = new SaveStateRegistry();
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: new RamSaveHandler(blocks, { maxIterateMs: Infinity }) });
  if (options.device ?? true) registry.register({ idstr: 'dev', vmsd: devVmsd, opaque: { mode: 3, count: 77 } });
  const gs = createGlobalState();
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: gs });
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  const save = new SaveVmState(registry, out, { configuration: { machineName: 'none' } });
  await save.writeHeader();
  if (stage !== 'header') await save.setup();
  if (stage === 'part' || stage === 'complete') {
    let n = 0;
    await save.iterate(() => n++ >= 4); // one PART with a few pages
  }
  if (stage === 'complete') {
    storeGlobalState(gs, 'running');
    await save.completePrecopy();
  } else {
    writeEof(out);
    await out.flush();
  }
  return sink.bytes();
}

interface Destination {
  memory: Map<string, Uint8Array>;
  dev: Dev;
  ram: RamLoadHandler;
  load(bytes: Uint8Array, options?: LoadOptions): ReturnType<typeof loadVmState>;
}

/** A destination as incoming.ts builds it: RAM, a required device, globalstate; RAM checked at EOF. */
function destination(): Destination {
  const memory = new Map(LAYOUT.map(([n, pages]) => [n, new Uint8Array(pages * TARGET_PAGE_SIZE)]));
  const ram = new RamLoadHandler(new FixedRamBlockTable(LAYOUT.map(([n]) => new DenseRamBlock(n, memory.get(n)!))));
  const dev: Dev = { mode: 0, count: 0 };
  const registry = new SaveStateRegistry();
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram });
  registry.register({ idstr: 'dev', vmsd: devVmsd, opaque: dev, required: true });
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: createGlobalState() });
  return {
    memory,
    dev,
    ram,
    load: (bytes, options = {}) =>
      loadVmState(new StreamReader(new MemorySource(bytes)), registry, { machineName: 'none', onEof: (eof) => ram.checkComplete(eof.offset), ...options }),
  };
}

/** The load fails with an IncompleteStreamError at the EOF offset whose message matches. */
async function assertIncomplete(bytes: Uint8Array, pattern: RegExp, check?: (err: IncompleteStreamError) => void): Promise<void> {
  const analysis = (await analyzeBytes(bytes)).analysis;
  await assert.rejects(destination().load(bytes), (err: unknown) => {
    assert.ok(err instanceof IncompleteStreamError, `IncompleteStreamError, got ${String(err)}`);
    assert.equal(err.code, 'incomplete-stream');
    assert.equal(err.offset, analysis.eofOffset, 'located at the EOF byte');
    assert.match(err.message, pattern);
    check?.(err);
    return true;
  });
}

test('header + configuration + EOF: refused (no RAM section, and the required device is named)', async () => {
  const bytes = await sourceStream('header');
  await assertIncomplete(bytes, /required section 'dev' instance 0/, (err) => assert.deepEqual(err.missing, [{ idstr: 'dev', instanceId: 0 }]));
  // Without required devices, RAM's own check names the cause.
  const d = destination();
  await assert.rejects(d.load(bytes, { checkRequired: false }), (err: unknown) => {
    assert.ok(err instanceof IncompleteStreamError);
    assert.match(err.message, /no RAM section \('ram'\)/);
    assert.equal(err.section?.idstr, 'ram');
    return true;
  });
  assert.equal(d.ram.incompleteReason()?.includes('no RAM section'), true);
});

test('header + configuration + RAM START + EOF: refused, the RAM section never ended', async () => {
  const bytes = await sourceStream('start');
  const d = destination();
  await assert.rejects(d.load(bytes, { checkRequired: false }), /incomplete stream: the RAM section never ended: no END section/);
  assert.equal(d.ram.progress.started, true);
  assert.deepEqual([...d.ram.progress.listedBlocks], ['pc.ram', 'vga.vram']);
  assert.equal(d.ram.progress.ended, false);
  // With the device check on, the missing device is reported first.
  await assertIncomplete(bytes, /required section 'dev'/);
});

test('RAM START + PART + EOF (the source stopped mid-pass): refused', async () => {
  const d = destination();
  await assert.rejects(d.load(await sourceStream('part'), { checkRequired: false }), (err: unknown) => {
    assert.ok(err instanceof StreamError && err.code === 'incomplete-stream');
    assert.match(err.message, /never ended/);
    return true;
  });
});

test('a local RAM block missing from the block list: refused, naming it', async () => {
  const bytes = await sourceStream('complete', { blocks: ['pc.ram'] });
  await assertIncomplete(bytes, /RAM block vga\.vram \(0x4000 bytes\) of this machine is missing from the stream's block list/);
});

test('a required device missing from a complete RAM stream: refused, naming it', async () => {
  const bytes = await sourceStream('complete', { device: false });
  await assertIncomplete(bytes, /EOF without the required section 'dev' instance 0 \(the guest cannot run without it\)/, (err) =>
    assert.deepEqual(err.missing, [{ idstr: 'dev', instanceId: 0 }]),
  );
  // Not required: the same stream loads (QEMU leaves such a device at reset).
  const memory = new Uint8Array(16 * TARGET_PAGE_SIZE);
  const vram = new Uint8Array(4 * TARGET_PAGE_SIZE);
  const ram = new RamLoadHandler(new FixedRamBlockTable([new DenseRamBlock('pc.ram', memory), new DenseRamBlock('vga.vram', vram)]));
  const registry = new SaveStateRegistry();
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram });
  registry.register({ idstr: 'dev', vmsd: devVmsd, opaque: { mode: 0, count: 0 } });
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: createGlobalState() });
  await loadVmState(new StreamReader(new MemorySource(bytes)), registry, { machineName: 'none', onEof: (eof) => ram.checkComplete(eof.offset) });
});

test('a complete livemig stream loads with every check on, RAM and device intact', async () => {
  const bytes = await sourceStream('complete');
  const d = destination();
  const result = await d.load(bytes);
  assert.equal(result.totalBytes, bytes.length);
  assert.deepEqual(d.dev, { mode: 3, count: 77 });
  LAYOUT.forEach(([n, pages], i) => assert.deepEqual(d.memory.get(n), sourceMemory(pages, 11 + i), n));
  assert.equal(d.ram.incompleteReason(), undefined);
  assert.deepEqual(d.ram.progress, { started: true, listedBlocks: new Set(['pc.ram', 'vga.vram']), ended: true });
});

test('onEof: a non-StreamError becomes an incomplete-stream StreamError at EOF', async () => {
  const bytes = await sourceStream('complete');
  await assert.rejects(
    destination().load(bytes, {
      onEof: () => {
        throw new Error('disk x never arrived');
      },
    }),
    (err: unknown) => err instanceof StreamError && err.code === 'incomplete-stream' && /incomplete stream: disk x never arrived/.test(err.message),
  );
});

/** QEMU's `timer` section (see fixture.test.ts). */
const timersVmsd = defineVmsd<{ cpu_ticks_offset: bigint; cpu_clock_offset: bigint }>({
  name: 'timer',
  version: 2,
  minimumVersion: 1,
  fields: [field.int64('cpu_ticks_offset'), field.unused(8), field.int64('cpu_clock_offset', { fromVersion: 2 })],
});

test('the QEMU 7.2 fixture loads with every check on (timer required)', async () => {
  const bytes = new Uint8Array(await readFile(fixturePath('qemu72-none-16M.mig')));
  const memory = new Uint8Array(16 << 20).fill(0xaa);
  const ram = new RamLoadHandler(new FixedRamBlockTable([new DenseRamBlock(RAM_IDSTR, memory)]));
  const registry = new SaveStateRegistry();
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram });
  const timers = { cpu_ticks_offset: 0n, cpu_clock_offset: 0n };
  registry.register({ idstr: 'timer', vmsd: timersVmsd, opaque: timers, required: true });
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: createGlobalState(), required: true });
  const result = await loadVmState(new StreamReader(new MemorySource(bytes)), registry, { machineName: 'none', onEof: (eof) => ram.checkComplete(eof.offset) });
  assert.equal(result.totalBytes, bytes.length);
  assert.equal(timers.cpu_ticks_offset, 0xa6ef59n);
  assert.ok(memory.every((b) => b === 0));
  assert.equal(ram.incompleteReason(), undefined);
});

test('livemig analyze still accepts the partial streams', async () => {
  for (const stage of ['header', 'start', 'part'] as const) {
    const { analysis } = await analyzeBytes(await sourceStream(stage));
    assert.equal(analysis.error, undefined, stage);
    assert.notEqual(analysis.eofOffset, null, stage);
  }
  const { analysis } = await analyzeBytes(await sourceStream('complete', { blocks: ['pc.ram'], device: false }));
  assert.equal(analysis.error, undefined);
});

test('the test machine and v86 machine register their device sections as required', async () => {
  const m = await createTestMachine({ ramSizeBytes: 8 << 20 });
  try {
    const registry = new SaveStateRegistry();
    m.registerDevices(registry);
    assert.deepEqual(registry.entries().map((e) => [e.idstr, e.required]), [
      ['test-cpu', true],
      ['test-serial', true],
    ]);
  } finally {
    await m.destroy();
  }
  const v = await createV86Machine({ ramSizeBytes: 32 << 20 });
  try {
    const registry = new SaveStateRegistry();
    v.registerDevices(registry);
    assert.deepEqual(registry.entries().map((e) => [e.idstr, e.required]), [
      ['v86-config', true],
      ['v86-state', true],
      // Sent by every v86 source (no medium in it here); required only by a destination with media.
      ['v86-media', false],
    ]);
  } finally {
    await v.destroy();
  }
});
