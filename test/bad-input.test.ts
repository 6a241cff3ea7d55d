/**
 * Bad input: every truncation point and thousands of seeded random
 * corruptions of the QEMU fixture and of a livemig stream. Each must end in a
 * clean StreamError that names the byte offset (and the section when inside
 * one) — never another exception, a hang or a huge allocation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { analyzeBytes, type StreamAnalysis } from '../src/analyze/analyze-stream.js';
import { DenseRamBlock, FixedRamBlockTable, RAM_IDSTR, RAM_SECTION_VERSION, RamLoadHandler, RamSaveHandler } from '../src/ram/index.js';
import { createGlobalState, globalStateVmsd, loadVmState, SaveStateRegistry, SaveVmState, storeGlobalState } from '../src/savevm/index.js';
import { defineVmsd, field } from '../src/vmstate/index.js';
import { MemorySink, MemorySource, StreamError, StreamReader, StreamWriter, TARGET_PAGE_SIZE } from '../src/wire/index.js';
import { fixturePath } from './helpers/paths.js';
import { Prng } from './helpers/prng.js';

const OWN_RAM_PAGES = 16;

interface Device {
  mode: number;
  count: number;
  regs: number[];
  name: Uint8Array;
  extra: bigint;
  flags: { a: number; b: boolean };
}
const flagsVmsd = defineVmsd({ name: 'flags', version: 1, minimumVersion: 1, fields: [field.uint16('a'), field.bool('b')] });
const deviceVmsd = defineVmsd<Device>({
  name: 'dev',
  version: 2,
  minimumVersion: 1,
  fields: [field.uint8('mode'), field.uint8('count'), field.array('regs', 'uint32', { countField: 'count' }), field.vbuffer('name', { sizeField: 'count' }), field.struct('flags', flagsVmsd)],
  subsections: [defineVmsd<Device>({ name: 'dev/extra', version: 1, minimumVersion: 1, fields: [field.uint64('extra')], needed: (d) => d.extra !== 0n })],
});
const freshDevice = (): Device => ({ mode: 0, count: 0, regs: [], name: new Uint8Array(0), extra: 0n, flags: { a: 0, b: false } });

function machineRegistry(memory: Uint8Array, device: Device): SaveStateRegistry {
  const registry = new SaveStateRegistry();
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: new RamLoadHandler(new FixedRamBlockTable([new DenseRamBlock(RAM_IDSTR, memory)])) });
  registry.register({ idstr: 'dev', vmsd: deviceVmsd, opaque: device });
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: createGlobalState() });
  return registry;
}

/** A small livemig stream with every record kind: block list, PAGE, ZERO, XBZRLE, CONTINUE across sections, a device with subsection, globalstate, vmdesc. */
async function ownStream(): Promise<Uint8Array> {
  const prng = new Prng(7);
  const memory = new Uint8Array(OWN_RAM_PAGES * TARGET_PAGE_SIZE);
  for (let p = 0; p < OWN_RAM_PAGES; p += 3) memory.set(prng.bytes(TARGET_PAGE_SIZE), p * TARGET_PAGE_SIZE);
  const ram = new RamSaveHandler([new DenseRamBlock(RAM_IDSTR, memory)], { xbzrle: true, xbzrleCacheBytes: 1 << 20, maxIterateMs: Infinity });
  const registry = new SaveStateRegistry();
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram });
  registry.register({ idstr: 'dev', vmsd: deviceVmsd, opaque: { mode: 3, count: 3, regs: [1, 2, 3], name: Uint8Array.of(65, 66, 67), extra: 9n, flags: { a: 5, b: true } } });
  const gs = createGlobalState();
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: gs });
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  const save = new SaveVmState(registry, out, { configuration: { machineName: 'none' } });
  await save.writeHeader();
  await save.setup();
  const iterate = async (): Promise<void> => {
    for (;;) {
      let pages = 0;
      if (await save.iterate(() => pages++ >= 5)) return; // small PART sections
    }
  };
  await iterate();
  for (let round = 0; round < 2; round++) {
    for (let p = 0; p < OWN_RAM_PAGES; p += 3) {
      memory[p * TARGET_PAGE_SIZE + 100 + round] ^= 0x5a;
      ram.markDirty(RAM_IDSTR, p);
    }
    await iterate();
  }
  storeGlobalState(gs, 'paused');
  await save.completePrecopy();
  return sink.bytes();
}

function headerLength(section: StreamAnalysis['sections'][number]): number {
  return section.type === 'START' || section.type === 'FULL' ? 1 + 4 + 1 + Buffer.byteLength(section.idstr) + 4 + 4 : 5;
}

function checkError(error: StreamAnalysis['error'] | StreamError, length: number, what: string): void {
  assert.ok(error, `${what}: expected an error`);
  assert.ok(Number.isInteger(error.offset) && error.offset >= 0 && error.offset <= length, `${what}: offset ${error.offset} outside the stream`);
  assert.match(error.message, /at offset \d+ \(0x[0-9a-f]+\)/, `${what}: ${error.message}`);
}

async function loadIntoMachine(bytes: Uint8Array): Promise<unknown> {
  try {
    await loadVmState(new StreamReader(new MemorySource(bytes, 8192)), machineRegistry(new Uint8Array(OWN_RAM_PAGES * TARGET_PAGE_SIZE), freshDevice()), { machineName: 'none' });
    return undefined;
  } catch (err) {
    return err;
  }
}

async function truncationSweep(name: string, bytes: Uint8Array): Promise<void> {
  const clean = (await analyzeBytes(bytes, { keepRam: false })).analysis;
  assert.equal(clean.error, undefined, `${name} parses cleanly`);
  for (let cut = 0; cut < bytes.length; cut++) {
    const { analysis } = await analyzeBytes(bytes.subarray(0, cut), { keepRam: false });
    const where = `${name} cut at ${cut}`;
    checkError(analysis.error, cut, where);
    // Inside a section body the error names the section. Device sections can
    // only be decoded with the JSON trailer, which a cut stream lacks: from the
    // first one on, analysis stops there.
    const firstFull = clean.sections.find((s) => s.type === 'FULL')!;
    const inside =
      cut > firstFull.offset + headerLength(firstFull)
        ? firstFull
        : clean.sections.find((s) => cut > s.offset + headerLength(s) && cut < s.offset + s.sizeBytes);
    if (inside) {
      assert.equal(analysis.error!.section?.idstr, inside.idstr, `${where}: ${analysis.error!.message}`);
      assert.equal(analysis.error!.section?.sectionId, inside.sectionId, where);
    }
  }
}

test('every truncation point of the QEMU fixture gives a located error', { timeout: 600_000 }, async () => {
  await truncationSweep('fixture', new Uint8Array(await readFile(fixturePath('qemu72-none-16M.mig'))));
});

test("every truncation point of livemig's own stream gives a located error, in analysis and in a machine", { timeout: 600_000 }, async () => {
  const bytes = await ownStream();
  await truncationSweep('own stream', bytes);
  const clean = await loadIntoMachine(bytes);
  assert.equal(clean, undefined, 'the untouched stream loads into the machine');
  const eof = (await analyzeBytes(bytes, { keepRam: false })).analysis.eofOffset!;
  for (let cut = 0; cut < bytes.length; cut++) {
    const err = await loadIntoMachine(bytes.subarray(0, cut));
    if (cut === eof + 1) {
      // Right after EOF the trailer is optional (QEMU's lenient L4): a machine loads it.
      assert.equal(err, undefined);
      continue;
    }
    assert.ok(err instanceof StreamError, `machine, cut at ${cut}: ${String(err)}`);
    checkError(err, cut, `machine, cut at ${cut}`);
  }
});

/** Flip, overwrite, insert or delete a few bytes; half the time near a section boundary, where structure lives. */
function corrupt(bytes: Uint8Array, prng: Prng, boundaries: number[]): Uint8Array {
  let out = bytes.slice();
  const edits = 1 + prng.int(4);
  for (let e = 0; e < edits; e++) {
    const near = prng.next() < 0.5 ? prng.pick(boundaries) + prng.int(24) - 4 : prng.int(out.length);
    const at = Math.max(0, Math.min(out.length - 1, near));
    const kind = prng.int(10);
    if (kind < 6) out[at] = prng.int(256);
    else if (kind < 8) out[at] ^= 1 << prng.int(8);
    else if (kind < 9) out = Uint8Array.from([...out.subarray(0, at), prng.int(256), ...out.subarray(at)]);
    else out = Uint8Array.from([...out.subarray(0, at), ...out.subarray(at + 1)]);
  }
  return out;
}

async function corruptionSweep(name: string, bytes: Uint8Array, seeds: number, machine: boolean): Promise<{ failed: number; codes: Map<string, number> }> {
  const clean = (await analyzeBytes(bytes, { keepRam: false })).analysis;
  const boundaries = [0, 8, ...clean.sections.flatMap((s) => [s.offset, s.offset + s.sizeBytes - 5]), clean.eofOffset!];
  const codes = new Map<string, number>();
  let failed = 0;
  for (let seed = 1; seed <= seeds; seed++) {
    const bad = corrupt(bytes, new Prng(seed), boundaries);
    const { analysis } = await analyzeBytes(bad, { keepRam: false });
    if (analysis.error) {
      failed++;
      checkError(analysis.error, bad.length, `${name} seed ${seed}`);
      codes.set(analysis.error.code, (codes.get(analysis.error.code) ?? 0) + 1);
    }
    if (machine) {
      const err = await loadIntoMachine(bad);
      if (err !== undefined) {
        assert.ok(err instanceof StreamError, `${name} seed ${seed} in a machine: ${String(err)}`);
        checkError(err, bad.length, `${name} seed ${seed} in a machine`);
      }
    }
  }
  const before = process.memoryUsage().arrayBuffers;
  assert.ok(before < 1 << 30, `array buffers stay bounded: ${before} bytes`);
  return { failed, codes };
}

test('seeded random corruptions of the QEMU fixture give clean errors', { timeout: 600_000 }, async () => {
  const bytes = new Uint8Array(await readFile(fixturePath('qemu72-none-16M.mig')));
  const { failed, codes } = await corruptionSweep('fixture', bytes, 2000, false);
  assert.ok(failed > 800, `most structural corruptions are caught (${failed} of 2000)`);
  assert.ok(codes.size >= 6, `many kinds of error seen: ${[...codes.keys()].join(', ')}`);
});

test("seeded random corruptions of livemig's own stream give clean errors, in analysis and in a machine", { timeout: 600_000 }, async () => {
  const { failed, codes } = await corruptionSweep('own stream', await ownStream(), 2000, true);
  assert.ok(failed > 800, `most structural corruptions are caught (${failed} of 2000)`);
  assert.ok(codes.size >= 6, `many kinds of error seen: ${[...codes.keys()].join(', ')}`);
});

test('a stream announcing absurd sizes allocates nothing for them', async () => {
  // MEM_SIZE announcing 2^52 bytes in one block, then a PAGE at its far end.
  const out = new StreamWriter(new MemorySink());
  const sink = new MemorySink();
  const w = new StreamWriter(sink);
  w.be32(0x5145564d).be32(3).u8(7).be32(4).bytes(Buffer.from('none'));
  w.u8(1).be32(1).countedString('ram').be32(0).be32(4);
  w.be64(2 ** 49 + 4).countedString('ram').be64(2 ** 49).be64(0x10).u8(0x7e).be32(1);
  w.u8(2).be32(1).be64(2 ** 49 - 4096 + 8).countedString('ram').bytes(new Uint8Array(4096).fill(1)).be64(0x10).u8(0x7e).be32(1);
  w.u8(0);
  await w.flush();
  void out;
  const before = process.memoryUsage().arrayBuffers;
  const { analysis, ramBlocks } = await analyzeBytes(sink.bytes());
  assert.equal(analysis.error, undefined, analysis.error?.message);
  assert.equal(ramBlocks[0]!.lengthBytes, 2 ** 49);
  assert.ok(process.memoryUsage().arrayBuffers - before < 64 << 20, 'sparse: only the one page is stored');
  // The same block list is refused by a machine with 16 pages of RAM.
  const err = await loadIntoMachine(sink.bytes());
  assert.ok(err instanceof StreamError && err.code === 'bad-ram-record' && /Size mismatch: ram/.test(err.message), String(err));
});
