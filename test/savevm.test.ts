import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  createGlobalState,
  globalStateVmsd,
  INSTANCE_ID_ANY,
  loadVmState,
  SaveStateRegistry,
  SaveVmState,
  storeGlobalState,
  type LoadedSection,
  type SaveVMHandlers,
} from '../src/savevm/index.js';
import { defineVmsd, field, MigrationPriority } from '../src/vmstate/index.js';
import { MemorySink, MemorySource, StreamError, StreamReader, StreamWriter } from '../src/wire/index.js';

/** An iterative entry that sends `total` counters, `perIteration` at a time (a tiny stand-in for RAM). */
class CounterHandlers implements SaveVMHandlers {
  sent = 0;
  received: number[] = [];
  setupCalls = 0;
  cleanupCalls = 0;
  constructor(private readonly total: number, private readonly perIteration: number) {}
  async saveSetup(out: StreamWriter): Promise<void> {
    out.be32(this.total);
  }
  async statePending(): Promise<number> {
    return (this.total - this.sent) * 4;
  }
  async saveIterate(out: StreamWriter, shouldStop: () => boolean): Promise<boolean> {
    let n = 0;
    while (this.sent < this.total && n < this.perIteration && !shouldStop()) {
      n++;
      this.sent++;
    }
    out.be32(n);
    for (let i = this.sent - n; i < this.sent; i++) out.be32(i);
    return this.sent === this.total;
  }
  async saveCompletePrecopy(out: StreamWriter): Promise<void> {
    const n = this.total - this.sent;
    out.be32(n);
    for (let i = this.sent; i < this.total; i++) out.be32(i);
    this.sent = this.total;
  }
  loadSetup(): void {
    this.setupCalls++;
  }
  async loadState(input: StreamReader, ctx: { kind: string }): Promise<void> {
    if (ctx.kind === 'start') {
      await input.be32();
      return;
    }
    const n = await input.be32();
    for (let i = 0; i < n; i++) this.received.push(await input.be32());
  }
  loadCleanup(): void {
    this.cleanupCalls++;
  }
}

/** A legacy (non-VMState) device with an opaque body. */
function legacyDevice(value: number): SaveVMHandlers & { loaded?: number } {
  const dev: SaveVMHandlers & { loaded?: number } = {
    async saveState(out) {
      out.be16(value);
    },
    async loadState(input) {
      dev.loaded = await input.be16();
    },
  };
  return dev;
}

interface Uart {
  ier: number;
  lcr: number;
  fifo: number[];
  scratch: number;
}
const uartVmsd = defineVmsd<Uart>({
  name: 'uart',
  version: 3,
  minimumVersion: 2,
  fields: [field.uint8('ier'), field.uint8('lcr'), field.array('fifo', 'uint8', { count: 4 }), field.uint8('scratch', { fromVersion: 3 })],
});

function buildSource() {
  const registry = new SaveStateRegistry();
  const counters = new CounterHandlers(10, 3);
  registry.register({ idstr: 'counter', version: 1, handlers: counters });
  const uart: Uart = { ier: 1, lcr: 3, fifo: [1, 2, 3, 4], scratch: 0x5a };
  registry.register({ idstr: 'uart', instanceId: 0, vmsd: uartVmsd, opaque: uart });
  registry.register({ idstr: 'legacy', version: 2, handlers: legacyDevice(0xbeef) });
  const gs = createGlobalState();
  storeGlobalState(gs, 'running');
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: gs });
  return { registry, counters };
}

function buildDestination() {
  const registry = new SaveStateRegistry();
  const counters = new CounterHandlers(10, 3);
  registry.register({ idstr: 'counter', version: 1, handlers: counters });
  const uart: Uart = { ier: 0, lcr: 0, fifo: [0, 0, 0, 0], scratch: 0 };
  registry.register({ idstr: 'uart', vmsd: uartVmsd, opaque: uart });
  const legacy = legacyDevice(0);
  registry.register({ idstr: 'legacy', version: 2, handlers: legacy });
  const gs = createGlobalState();
  registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: gs });
  return { registry, counters, uart, legacy, gs };
}

async function saveStream(registry: SaveStateRegistry, machineName = 'test'): Promise<{ bytes: Uint8Array; iterations: number }> {
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  const save = new SaveVmState(registry, out, { configuration: { machineName } });
  await save.writeHeader();
  await save.setup();
  let iterations = 0;
  while (!(await save.iterate(() => false))) iterations++;
  await save.completePrecopy();
  await save.cleanup();
  return { bytes: sink.bytes(), iterations };
}

test('registry: save order is descending priority, FIFO within one; instance ids', () => {
  const registry = new SaveStateRegistry();
  const mk = (name: string, priority: number) => defineVmsd({ name, version: 1, minimumVersion: 1, priority, fields: [] });
  registry.register({ idstr: 'a', vmsd: mk('a', MigrationPriority.Default), opaque: {} });
  registry.register({ idstr: 'bus', vmsd: mk('bus', MigrationPriority.PciBus), opaque: {} });
  registry.register({ idstr: 'b', vmsd: mk('b', MigrationPriority.Default), opaque: {} });
  registry.register({ idstr: 'iommu', vmsd: mk('iommu', MigrationPriority.Iommu), opaque: {} });
  assert.deepEqual(registry.entries().map((e) => e.idstr), ['bus', 'iommu', 'a', 'b']);
  assert.deepEqual(registry.entries().map((e) => e.sectionId), [2, 4, 1, 3], 'section ids follow registration order, from 1');
  const d0 = registry.register({ idstr: 'dma', instanceId: INSTANCE_ID_ANY, version: 1, handlers: legacyDevice(1) });
  const d1 = registry.register({ idstr: 'dma', instanceId: INSTANCE_ID_ANY, version: 1, handlers: legacyDevice(2), aliasId: 7 });
  assert.equal(d0.instanceId, 0);
  assert.equal(d1.instanceId, 1);
  assert.equal(registry.find('dma', 7), d1, 'alias id is accepted on load');
  assert.throws(() => registry.register({ idstr: 'dma', instanceId: 1, version: 1, handlers: legacyDevice(3) }), /already registered/);
  assert.throws(() => registry.register({ idstr: 'x'.repeat(256), version: 1, handlers: legacyDevice(3) }), RangeError);
  registry.unregister(d0);
  assert.equal(registry.find('dma', 0), undefined);
});

test('three phases frame the stream as QEMU does, and the loader restores every entry', async () => {
  const { registry, counters } = buildSource();
  const { bytes, iterations } = await saveStream(registry);
  assert.equal(iterations, 3, 'three unfinished PART rounds, then one that finishes');
  assert.equal(counters.sent, 10);

  const dst = buildDestination();
  const sections: LoadedSection[] = [];
  const result = await loadVmState(new StreamReader(new MemorySource(bytes, 13)), dst.registry, { machineName: 'test', onSection: (s) => sections.push(s) });
  assert.deepEqual(
    sections.map((s) => `${s.kind}:${s.idstr}`),
    ['start:counter', 'part:counter', 'part:counter', 'part:counter', 'part:counter', 'end:counter', 'full:uart', 'full:legacy', 'full:globalstate'],
  );
  assert.deepEqual(dst.counters.received, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(dst.counters.setupCalls, 1);
  assert.equal(dst.counters.cleanupCalls, 1);
  assert.deepEqual(dst.uart, { ier: 1, lcr: 3, fifo: [1, 2, 3, 4], scratch: 0x5a });
  assert.equal(dst.legacy.loaded, 0xbeef);
  assert.equal(dst.gs.state, 'running');
  assert.equal(result.configuration.machineName, 'test');
  assert.equal(result.totalBytes, bytes.length);
  // Section sizes tile the stream between the configuration and EOF.
  assert.equal(sections[0]!.offset, 8 + 1 + 4 + 4);
  for (let i = 1; i < sections.length; i++) assert.equal(sections[i]!.offset, sections[i - 1]!.offset + sections[i - 1]!.sizeBytes);
  assert.equal(result.eofOffset, sections.at(-1)!.offset + sections.at(-1)!.sizeBytes);
  const vmdesc = JSON.parse(result.vmdesc!.json);
  assert.equal(vmdesc.page_size, 4096);
  assert.deepEqual(vmdesc.devices.map((d: { name: string }) => d.name), ['uart', 'legacy', 'globalstate']);
  assert.deepEqual(vmdesc.devices[1], { name: 'legacy', instance_id: 0, size: 2, fields: [{ name: 'data', size: 2, type: 'buffer' }] });
});

test('rate limit: iterate writes nothing once shouldStop says so', async () => {
  const { registry } = buildSource();
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  const save = new SaveVmState(registry, out, { configuration: { machineName: 'test' } });
  await save.writeHeader();
  await save.setup();
  const before = out.bytesWritten;
  assert.equal(await save.iterate(() => true), false);
  assert.equal(out.bytesWritten, before);
  assert.equal(await save.pendingBytes(false), 40);
});

/** An entry always done for now but always with more to send, each turn bigger than the window: a disk whose guest rewrites chunks faster than the link. */
class RewrittenChunks implements SaveVMHandlers {
  turns = 0;
  received = 0;
  async saveSetup(): Promise<void> {}
  async saveIterate(out: StreamWriter): Promise<boolean> {
    this.turns++;
    out.be32(25);
    for (let i = 0; i < 25; i++) out.be32(i);
    return true;
  }
  async saveCompletePrecopy(out: StreamWriter): Promise<void> {
    out.be32(0);
  }
  async loadState(input: StreamReader, ctx: { kind: string }): Promise<void> {
    if (ctx.kind === 'start') return; // saveSetup wrote nothing
    const n = await input.be32();
    for (let i = 0; i < n; i++) await input.be32();
    this.received += n;
  }
}

test('rate limit: an entry the limit kept from its turn goes first in the next round (a busy disk does not starve RAM)', async () => {
  const registry = new SaveStateRegistry();
  const disk = new RewrittenChunks();
  const ram = new CounterHandlers(1000, 1000);
  registry.register({ idstr: 'disk', version: 1, handlers: disk });
  registry.register({ idstr: 'ram', version: 1, handlers: ram });
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  const save = new SaveVmState(registry, out, { configuration: { machineName: 'test' } });
  await save.writeHeader();
  await save.setup();
  // The window: 64 bytes, 16 counters (CounterHandlers writes its counters after its loop, so count them).
  for (let round = 0; round < 6; round++) {
    const start = out.bytesWritten;
    const ramAtStart = ram.sent;
    await save.iterate(() => out.bytesWritten - start >= 64 || ram.sent - ramAtStart >= 16);
  }
  // Disk first (over the window, RAM starved), then RAM first (up to the window, not done: the round ends), and so on.
  assert.equal(disk.turns, 3);
  assert.equal(ram.sent, 3 * 16, 'RAM had three rounds of its own');
  await save.completePrecopy();
  // The rounds' sections in either order load as they were sent.
  const dst = new SaveStateRegistry();
  const dstDisk = new RewrittenChunks();
  const dstRam = new CounterHandlers(1000, 1000);
  dst.register({ idstr: 'disk', version: 1, handlers: dstDisk });
  dst.register({ idstr: 'ram', version: 1, handlers: dstRam });
  await loadVmState(new StreamReader(new MemorySource(sink.bytes())), dst, { machineName: 'test' });
  assert.equal(dstDisk.received, 3 * 25);
  assert.deepEqual(dstRam.received, Array.from({ length: 1000 }, (_, i) => i));
});

async function expectLoadError(bytes: Uint8Array, code: string, message: RegExp, machineName = 'test'): Promise<StreamError> {
  const dst = buildDestination();
  let caught: unknown;
  try {
    await loadVmState(new StreamReader(new MemorySource(bytes)), dst.registry, { machineName });
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof StreamError, `expected a StreamError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  assert.match(caught.message, message);
  return caught;
}

function indexOfBytes(haystack: Uint8Array, needle: number[], from = 0): number {
  outer: for (let i = from; i <= haystack.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

test('loader checks: machine name, unknown section, versions, footers', async () => {
  const { registry } = buildSource();
  const { bytes } = await saveStream(registry);
  await expectLoadError(bytes, 'machine-mismatch', /machine type received is 'test' and local is 'pc'/, 'pc');

  // The uart FULL header: 04, id, 04 "uart", instance, version.
  const uartAt = indexOfBytes(bytes, [4, 0, 0, 0, 2, 4, ...Buffer.from('uart')]);
  assert.ok(uartAt > 0);
  const renamed = bytes.slice();
  renamed[uartAt + 6] = 'v'.charCodeAt(0);
  const unknown = await expectLoadError(renamed, 'unknown-section', /unknown savevm section or instance 'vart' 0/);
  assert.equal(unknown.offset, uartAt);

  const versionAt = uartAt + 1 + 4 + 5 + 4;
  const tooNew = bytes.slice();
  tooNew[versionAt + 3] = 4;
  await expectLoadError(tooNew, 'version-too-new', /uart/);
  const tooOld = bytes.slice();
  tooOld[versionAt + 3] = 1;
  await expectLoadError(tooOld, 'version-too-old', /uart/);

  // The uart body is 1+1+4+1 bytes; its footer follows.
  const footerAt = versionAt + 4 + 7;
  assert.equal(bytes[footerAt], 0x7e);
  const noFooter = bytes.slice();
  noFooter[footerAt] = 0x7d;
  const missing = await expectLoadError(noFooter, 'bad-footer', /missing section footer for 'uart'/);
  assert.equal(missing.offset, footerAt);
  const wrongId = bytes.slice();
  wrongId[footerAt + 4] ^= 0xff;
  await expectLoadError(wrongId, 'bad-footer', /mismatched section id/);

  // A PART for a section id no START introduced.
  const partAt = indexOfBytes(bytes, [2, 0, 0, 0, 1]);
  const badPart = bytes.slice();
  badPart[partAt + 4] = 9;
  await expectLoadError(badPart, 'unknown-section', /unknown savevm section 9: no START introduced it/);

  // Commands are parsed, but none is supported yet.
  const withCommand = Uint8Array.from([...bytes.subarray(0, 17), 0x08, 0, 1, 0, 0, ...bytes.subarray(17)]);
  await expectLoadError(withCommand, 'unsupported-command', /OPEN_RETURN_PATH \(1\) is not supported yet/);
});

test('load cleanup runs even when the load fails', async () => {
  const { registry } = buildSource();
  const { bytes } = await saveStream(registry);
  const dst = buildDestination();
  await assert.rejects(loadVmState(new StreamReader(new MemorySource(bytes.subarray(0, bytes.length - 200))), dst.registry));
  assert.equal(dst.counters.cleanupCalls, 1);
});

test('a handler that throws a plain error still yields a located StreamError', async () => {
  const { registry } = buildSource();
  const { bytes } = await saveStream(registry);
  const dst = new SaveStateRegistry();
  dst.register({ idstr: 'counter', version: 1, handlers: { loadState: async () => { throw new TypeError('boom'); } } });
  await assert.rejects(loadVmState(new StreamReader(new MemorySource(bytes)), dst), (err: unknown) =>
    err instanceof StreamError && err.code === 'handler-failed' && err.section?.idstr === 'counter' && /boom/.test(err.message));
});
