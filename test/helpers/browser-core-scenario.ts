/**
 * What test/browser-core.test.ts runs with the browser bundle, in Chromium and
 * in plain Node: the core is passed in (the bundle's module namespace), so
 * this file has no import at run time and loads in a page as it is.
 *
 * 1. A live save of 8 MiB of RAM plus one device through the engine's real
 *    savevm loop (header, setup, iterate until converged, with the guest
 *    writing pages between passes, complete) into an in-memory pipe, loaded
 *    concurrently by the real loader into a second RAM block and device.
 * 2. The QEMU 7.2 capture in test/fixtures, fetched, loaded by the same
 *    loader into the devices of QEMU's `-M none`.
 */
type Core = typeof import('../../src/browser/index.js');

export interface ScenarioResult {
  /** Whether Node's Buffer paths were used (false in a browser: the typed-array fallbacks ran). */
  nativeBytes: boolean;
  roundTrip: {
    ramBytes: number;
    equal: boolean;
    firstDifference: number;
    passes: number;
    dirtiedPages: number;
    xbzrlePages: number;
    zeroPages: number;
    normalPages: number;
    streamBytes: number;
    device: { counter: string; label: string };
    runstate: string;
  };
  fixture: {
    totalBytes: number;
    allZero: boolean;
    zeroPages: number;
    cpuTicksOffset: string;
    cpuClockOffset: string;
    runstate: string;
    sections: string[];
  };
  /** warmUpMigrations() as the bundle runs it: no default channels there, so through a memory pipe. */
  warmUp: { rounds: number; over: string; error: string | undefined };
}

const PAGE = 4096;

/** A small deterministic PRNG (xorshift32): the same RAM contents everywhere. */
function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

export async function runCoreScenario(core: Core, fetchBytes: (name: string) => Promise<Uint8Array>): Promise<ScenarioResult> {
  const warmed = await core.warmUpMigrations();
  return { nativeBytes: core.NATIVE_BYTES, roundTrip: await roundTrip(core), fixture: await fixture(core, fetchBytes), warmUp: { rounds: warmed.rounds, over: warmed.over, error: warmed.error } };
}

interface Device {
  counter: bigint;
  label: Uint8Array;
}

async function roundTrip(core: Core): Promise<ScenarioResult['roundTrip']> {
  const ramBytes = 8 << 20;
  const pages = ramBytes / PAGE;
  const next = xorshift(0x5eed);
  const source = new Uint8Array(ramBytes);
  // Every third page zero; the rest random bytes.
  for (let p = 0; p < pages; p++) if (p % 3 !== 0) for (let i = p * PAGE; i < (p + 1) * PAGE; i += 4) new DataView(source.buffer).setUint32(i, next());
  const destination = new Uint8Array(ramBytes).fill(0xee); // ZERO records must clear it

  const deviceVmsd = core.defineVmsd<Device>({ name: 'browser-device', version: 1, minimumVersion: 1, fields: [core.field.uint64('counter'), core.field.buffer('label', 16)] });
  const sourceDevice: Device = { counter: 0x0123456789abcdefn, label: new TextEncoder().encode('in a browser tab') };
  const destinationDevice: Device = { counter: 0n, label: new Uint8Array(16) };

  // The guest's dirty log: pages written since the last sync.
  let written: number[] = [];
  let dirtiedPages = 0;
  const save = new core.RamSaveHandler([new core.DenseRamBlock(core.RAM_IDSTR, source)], {
    xbzrle: true,
    xbzrleCacheBytes: 1 << 20,
    syncDirtyLog: (h) => {
      for (const p of written) h.markDirty(core.RAM_IDSTR, p);
      written = [];
    },
  });
  const sourceRegistry = new core.SaveStateRegistry();
  sourceRegistry.register({ idstr: core.RAM_IDSTR, version: core.RAM_SECTION_VERSION, handlers: save });
  sourceRegistry.register({ idstr: 'browser-device', vmsd: deviceVmsd, opaque: sourceDevice });
  const sourceGlobal = core.createGlobalState();
  sourceRegistry.register({ idstr: 'globalstate', vmsd: core.globalStateVmsd, opaque: sourceGlobal });

  const load = new core.RamLoadHandler(new core.FixedRamBlockTable([new core.DenseRamBlock(core.RAM_IDSTR, destination)]));
  const destinationRegistry = new core.SaveStateRegistry();
  destinationRegistry.register({ idstr: core.RAM_IDSTR, version: core.RAM_SECTION_VERSION, handlers: load });
  destinationRegistry.register({ idstr: 'browser-device', vmsd: deviceVmsd, opaque: destinationDevice });
  const destinationGlobal = core.createGlobalState();
  destinationRegistry.register({ idstr: 'globalstate', vmsd: core.globalStateVmsd, opaque: destinationGlobal });

  // Small enough that the writer waits for the reader (backpressure) many times.
  const pipe = core.createMemoryPipe(256 << 10);
  const reader = new core.StreamReader(pipe.source);
  const loading = core.loadVmState(reader, destinationRegistry, { machineName: 'browser' });
  const out = new core.StreamWriter(pipe.sink);
  const saver = new core.SaveVmState(sourceRegistry, out, { configuration: { machineName: 'browser' } });
  await saver.writeHeader();
  await saver.setup();
  let passes = 0;
  for (;;) {
    passes++;
    const converged = await saver.iterate(() => false);
    if (passes >= 4 && converged) break;
    // The guest runs between passes: a few bytes in a working set of pages
    // (XBZRLE material from their second re-send on), whole pages now and then.
    for (let k = 0; k < 64; k++) {
      const p = 1 + 3 * (next() % 32);
      const at = p * PAGE + (next() % PAGE);
      source[at] = (source[at]! + 1) & 0xff;
      if (k % 8 === 0) for (let i = p * PAGE; i < (p + 1) * PAGE; i++) source[i] = next() & 0xff;
      written.push(p);
      dirtiedPages++;
    }
    if (passes > 20) throw new Error('the RAM save did not converge in 20 passes');
    // As the migration loop between passes: an exact count syncs the dirty log.
    await saver.pendingBytes(true);
  }
  // Switchover: the guest stops; the last dirty pages and the devices go in the completion.
  sourceDevice.counter += 1n;
  core.storeGlobalState(sourceGlobal, 'running');
  await saver.completePrecopy();
  await out.close();
  const result = await loading;
  await reader.close();

  let firstDifference = -1;
  for (let i = 0; i < ramBytes; i++) {
    if (source[i] !== destination[i]) {
      firstDifference = i;
      break;
    }
  }
  const block = load.stats.blocks[0]!;
  return {
    ramBytes,
    equal: firstDifference === -1,
    firstDifference,
    passes,
    dirtiedPages,
    xbzrlePages: block.xbzrlePages,
    zeroPages: block.zeroPages,
    normalPages: block.normalPages,
    streamBytes: result.totalBytes,
    device: { counter: destinationDevice.counter.toString(16), label: new TextDecoder().decode(destinationDevice.label) },
    runstate: String(destinationGlobal.state),
  };
}

/** QEMU's `timer` section (softmmu/cpu-timers.c) without its optional subsections, as test/fixture.test.ts. */
interface Timers {
  cpu_ticks_offset: bigint;
  cpu_clock_offset: bigint;
}

async function fixture(core: Core, fetchBytes: (name: string) => Promise<Uint8Array>): Promise<ScenarioResult['fixture']> {
  const bytes = await fetchBytes('qemu72-none-16M.mig');
  const timersVmsd = core.defineVmsd<Timers>({
    name: 'timer',
    version: 2,
    minimumVersion: 1,
    fields: [core.field.int64('cpu_ticks_offset'), core.field.unused(8), core.field.int64('cpu_clock_offset', { fromVersion: 2 })],
  });
  const memory = new Uint8Array(16 << 20).fill(0xee);
  const registry = new core.SaveStateRegistry();
  const timers: Timers = { cpu_ticks_offset: 0n, cpu_clock_offset: 0n };
  registry.register({ idstr: 'timer', vmsd: timersVmsd, opaque: timers });
  const ram = new core.RamLoadHandler(new core.FixedRamBlockTable([new core.DenseRamBlock(core.RAM_IDSTR, memory)]));
  registry.register({ idstr: core.RAM_IDSTR, version: core.RAM_SECTION_VERSION, handlers: ram });
  const gs = core.createGlobalState();
  registry.register({ idstr: 'globalstate', vmsd: core.globalStateVmsd, opaque: gs });
  const sections: string[] = [];
  // Chunks of 4093 bytes: records cross chunk boundaries, as from a network.
  const input = new core.StreamReader(new core.MemorySource(bytes, 4093));
  const result = await core.loadVmState(input, registry, { machineName: 'none', onSection: (s) => sections.push(`${s.kind} ${s.idstr}`) });
  await input.close();
  return {
    totalBytes: result.totalBytes,
    allZero: memory.every((b) => b === 0),
    zeroPages: ram.stats.blocks[0]!.zeroPages,
    cpuTicksOffset: timers.cpu_ticks_offset.toString(16),
    cpuClockOffset: timers.cpu_clock_offset.toString(16),
    runstate: String(gs.state),
    sections,
  };
}
