/** Save and load a machine's device sections (not RAM) through the registry, for machine tests. */
import assert from 'node:assert/strict';
import type { Machine } from '../../src/machine/machine.js';
import { SaveStateRegistry } from '../../src/savevm/index.js';
import { vmstateLoad, vmstateSave } from '../../src/vmstate/index.js';
import { MemorySink, MemorySource, StreamReader, StreamWriter } from '../../src/wire/index.js';

/** The device sections of a paused machine, one after another. */
export async function saveDevices(m: Machine): Promise<Uint8Array> {
  const registry = new SaveStateRegistry();
  m.registerDevices(registry);
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  // VMState sections only (an iterative entry, such as v86-media, writes in a migration's setup).
  for (const e of registry.entries()) if (e.vmsd) vmstateSave(out, e.vmsd, e.opaque!);
  await out.flush();
  return sink.bytes();
}

/** Load what saveDevices wrote into another machine; every byte must be consumed. */
export async function loadDevices(m: Machine, bytes: Uint8Array): Promise<void> {
  const registry = new SaveStateRegistry();
  m.registerDevices(registry);
  const input = new StreamReader(new MemorySource(bytes));
  for (const e of registry.entries()) if (e.vmsd) await vmstateLoad(input, e.vmsd, e.opaque!, e.version);
  assert.equal(input.offset, bytes.length);
}
