/**
 * Seeded random round trips: random descriptions (every field kind, nesting,
 * arrays, vbuffers, subsections, version gating) and random values, encoded
 * then decoded at the current and at an older version, and read back through
 * the vmdesc-driven decoder. A failure names its seed; rerun one with
 * VMSTATE_SEED=<n>.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeWithVmdesc,
  defineVmsd,
  formatVmdescJson,
  vmdescDevice,
  vmstateLoad,
  vmstateSave,
  type VMStateDescription,
} from '../src/vmstate/index.js';
import { MemorySink, MemorySource, StreamError, StreamReader, StreamWriter } from '../src/wire/index.js';
import { expectedAfterLoad, expectedAnalyzed, genCase, type Rng } from './vmstate-random.js';

type Obj = Record<string, unknown>;

async function save(vmsd: VMStateDescription, obj: Obj, version: number) {
  const sink = new MemorySink();
  const out = new StreamWriter(sink, 64); // a small buffer exercises the writer's rotation
  const desc = vmstateSave(out, vmsd, obj, version);
  await out.flush();
  return { bytes: sink.bytes(), desc };
}

function readerOf(bytes: Uint8Array, rng: Rng): StreamReader {
  return new StreamReader(new MemorySource(bytes, rng.range(1, 9)));
}

async function roundTrip(seed: number, rng: Rng, vmsd: VMStateDescription, src: Obj, dst: Obj, version: number): Promise<Uint8Array> {
  const { bytes, desc } = await save(vmsd, src, version);
  const target = structuredClone(dst);
  const input = readerOf(bytes, rng);
  await vmstateLoad(input, vmsd, target, version);
  assert.equal(input.offset, bytes.length, `seed ${seed} v${version}: whole body consumed`);
  assert.deepStrictEqual(target, expectedAfterLoad(vmsd, src, dst, version), `seed ${seed} v${version}: loaded state`);

  // The trailer entry must survive JSON text, and describe the same bytes.
  const device: unknown = JSON.parse(formatVmdescJson(vmdescDevice(vmsd.name, 0, desc)));
  const analyzed = await decodeWithVmdesc(readerOf(bytes, rng), device);
  assert.deepStrictEqual(analyzed, expectedAnalyzed(vmsd, src, version), `seed ${seed} v${version}: vmdesc decode`);
  return bytes;
}

const only = process.env.VMSTATE_SEED;
const seeds = only ? [Number(only)] : Array.from({ length: 400 }, (_, i) => i + 1);

test('random descriptions round-trip at the current and an older version', async () => {
  let withSubsections = 0;
  let gatedOut = 0;
  for (const seed of seeds) {
    const { rng, gen } = genCase(seed);
    const vmsd = defineVmsd(gen.vmsd);
    const src = gen.fill(rng, undefined);
    const dst = gen.fill(rng, src);
    try {
      const current = await roundTrip(seed, rng, vmsd, src, dst, vmsd.version);
      if (current.includes(0x05) && vmsd.subsections?.length) withSubsections++;
      const older = rng.range(vmsd.minimumVersion, vmsd.version);
      const old = await roundTrip(seed, rng, vmsd, src, dst, older);
      if (old.length < current.length) gatedOut++;
    } catch (err) {
      throw new Error(`seed ${seed}: ${String(err)}`, { cause: err });
    }
  }
  // The generator must really exercise subsections and version gating.
  if (!only) {
    assert.ok(withSubsections > 50, `only ${withSubsections} cases had subsections`);
    assert.ok(gatedOut > 50, `only ${gatedOut} cases lost fields at the older version`);
  }
});

test('truncated random bodies fail with a StreamError at every offset', async () => {
  let cases = 0;
  for (const seed of seeds.slice(0, 120)) {
    const { rng, gen } = genCase(seed);
    const src = gen.fill(rng, undefined);
    const dst = gen.fill(rng, src);
    const { bytes, desc } = await save(gen.vmsd, src, gen.vmsd.version);
    if (bytes.length > 400) continue;
    cases++;
    const device = vmdescDevice(gen.vmsd.name, 0, desc);
    for (let length = 0; length < bytes.length; length++) {
      const cut = bytes.subarray(0, length);
      const input = readerOf(cut, rng);
      try {
        await vmstateLoad(input, gen.vmsd, structuredClone(dst), gen.vmsd.version);
        // Only possible when the cut falls just before optional subsections:
        // then the prefix is itself a complete body.
        assert.equal(input.offset, length, `seed ${seed}: success must consume the whole prefix (${length})`);
      } catch (err) {
        assert.ok(err instanceof StreamError, `seed ${seed} cut ${length}: ${String(err)}`);
      }
      await assert.rejects(decodeWithVmdesc(readerOf(cut, rng), device), StreamError, `seed ${seed} cut ${length}: vmdesc decoder`);
    }
  }
  if (!only) assert.ok(cases > 50, `only ${cases} short cases`);
});
