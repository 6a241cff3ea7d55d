/** VMState failures: every bad input is a StreamError with a code and an offset; bad values on save are RangeErrors. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeWithVmdesc,
  defineVmsd,
  field,
  parseVmdescDevice,
  parseVmdescTrailer,
  vmstateLoad,
  vmstateSave,
  VMSTATE_LIMITS,
  type VMStateDescription,
} from '../src/vmstate/index.js';
import { MemorySink, MemorySource, StreamError, StreamReader, StreamWriter, type StreamErrorCode } from '../src/wire/index.js';

function readerOf(bytes: Uint8Array | number[]): StreamReader {
  return new StreamReader(new MemorySource(Uint8Array.from(bytes), 5));
}

function writer(): StreamWriter {
  return new StreamWriter(new MemorySink());
}

async function rejectsWith(promise: Promise<unknown>, code: StreamErrorCode, offset: number, message?: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof StreamError, `StreamError expected, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.equal(err.offset, offset, err.message);
    if (message) assert.match(err.message, message);
    return true;
  });
}

const simple = defineVmsd({ name: 'simple', version: 3, minimumVersion: 2, fields: [field.uint32('a'), field.uint8('b', { fromVersion: 3 })] });

test('version too new / too old', async () => {
  await rejectsWith(vmstateLoad(readerOf([0, 0, 0, 1, 2]), simple, {}, 4), 'version-too-new', 0, /too new/);
  await rejectsWith(vmstateLoad(readerOf([0, 0, 0, 1, 2]), simple, {}, 1), 'version-too-old', 0, /too old/);
  const state = { a: 0, b: 9 };
  await vmstateLoad(readerOf([0, 0, 0, 1]), simple, state, 2);
  assert.deepEqual(state, { a: 1, b: 9 });
});

test('subsection version checks use the version in its header', async () => {
  const vmsd = defineVmsd({
    name: 'p',
    version: 1,
    minimumVersion: 1,
    fields: [],
    subsections: [{ name: 'p/s', version: 2, minimumVersion: 2, fields: [field.uint8('x')] }],
  });
  const header = (v: number) => [0x05, 3, ...Buffer.from('p/s'), 0, 0, 0, v, 7];
  await rejectsWith(vmstateLoad(readerOf(header(3)), vmsd, {}, 1), 'version-too-new', 9);
  await rejectsWith(vmstateLoad(readerOf(header(1)), vmsd, {}, 1), 'version-too-old', 9);
});

test('truncated body: unexpected-end at the offset where bytes ran out', async () => {
  await rejectsWith(vmstateLoad(readerOf([0, 0]), simple, {}, 3), 'unexpected-end', 0);
  await rejectsWith(vmstateLoad(readerOf([0, 0, 0, 1]), simple, {}, 3), 'unexpected-end', 4);
  // A subsection marker cut short is an error too, not "no subsection".
  const withSub = defineVmsd({ name: 'w', version: 1, minimumVersion: 1, fields: [], subsections: [{ name: 'w/s', version: 1, minimumVersion: 1, fields: [] }] });
  await rejectsWith(vmstateLoad(readerOf([0x05]), withSub, {}, 1), 'unexpected-end', 0);
  await rejectsWith(vmstateLoad(readerOf([0x05, 3, 0x77]), withSub, {}, 1), 'unexpected-end', 0);
});

test('"equal" fields must match the local value', async () => {
  const vmsd = defineVmsd({ name: 'eq', version: 1, minimumVersion: 1, fields: [field.uint8('x'), field.uint32Equal('n'), field.uint64Equal('big')] });
  const bytes = [1, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 5];
  await vmstateLoad(readerOf(bytes), vmsd, { n: 16, big: 5n }, 1);
  await rejectsWith(vmstateLoad(readerOf(bytes), vmsd, { n: 15, big: 5n }, 1), 'bad-vmstate', 1, /field 'n': incoming 16 .*differs from local 15/);
  await rejectsWith(vmstateLoad(readerOf(bytes), vmsd, { n: 16, big: 6n }, 1), 'bad-vmstate', 5, /field 'big'/);
});

test('int32 "le" accepts 0..local only', async () => {
  const vmsd = defineVmsd({ name: 'le', version: 1, minimumVersion: 1, fields: [field.int32Le('n')] });
  const state = { n: 10 };
  await vmstateLoad(readerOf([0, 0, 0, 4]), vmsd, state, 1);
  assert.equal(state.n, 4);
  await rejectsWith(vmstateLoad(readerOf([0, 0, 0, 11]), vmsd, { n: 10 }, 1), 'bad-vmstate', 0);
  await rejectsWith(vmstateLoad(readerOf([0xff, 0xff, 0xff, 0xff]), vmsd, { n: 10 }, 1), 'bad-vmstate', 0);
});

test('huge or bad vbuffer sizes and array counts are refused before allocating', async () => {
  const vb = defineVmsd({ name: 'vb', version: 1, minimumVersion: 1, fields: [field.uint32('len'), field.vbuffer('data', { sizeField: 'len', multiplier: 1 })] });
  await rejectsWith(vmstateLoad(readerOf([0xff, 0xff, 0xff, 0xff, 1, 2, 3]), vb, {}, 1), 'too-large', 4, /exceeds the limit/);
  const limit = VMSTATE_LIMITS.maxVbufferBytes;
  const justOver = [(limit + 1) >>> 24, ((limit + 1) >>> 16) & 0xff, ((limit + 1) >>> 8) & 0xff, (limit + 1) & 0xff];
  await rejectsWith(vmstateLoad(readerOf(justOver), vb, {}, 1), 'too-large', 4);
  // Within bounds but more than the stream holds: unexpected end, nothing allocated up front.
  await rejectsWith(vmstateLoad(readerOf([0x01, 0, 0, 0, 1, 2]), vb, {}, 1), 'unexpected-end', 4);
  // A multiplier can push an acceptable size over the limit.
  const vbm = defineVmsd({ name: 'vbm', version: 1, minimumVersion: 1, fields: [field.uint32('len'), field.vbuffer('data', { sizeField: 'len', multiplier: 1024 })] });
  await rejectsWith(vmstateLoad(readerOf([0, 0x10, 0, 0]), vbm, {}, 1), 'too-large', 4);

  const arr = defineVmsd({ name: 'arr', version: 1, minimumVersion: 1, fields: [field.int32('n'), field.array('xs', 'uint8', { countField: 'n' })] });
  await rejectsWith(vmstateLoad(readerOf([0x7f, 0xff, 0xff, 0xff]), arr, {}, 1), 'too-large', 4);
  await rejectsWith(vmstateLoad(readerOf([0xff, 0xff, 0xff, 0xff]), arr, {}, 1), 'bad-vmstate', 4, /negative/);
  const sarr = defineVmsd({ name: 'sarr', version: 1, minimumVersion: 1, fields: [field.uint32('n'), field.structArray('xs', simple, { countField: 'n' })] });
  await rejectsWith(vmstateLoad(readerOf([0xff, 0xff, 0xff, 0xff]), sarr, {}, 1), 'too-large', 4);
});

test('validate fields and throwing hooks', async () => {
  const v = defineVmsd({ name: 'v', version: 1, minimumVersion: 1, fields: [field.uint8('n'), field.validate('n_ok', (o: { n: number }) => o.n < 4)] });
  await vmstateLoad(readerOf([3]), v, {}, 1);
  await rejectsWith(vmstateLoad(readerOf([4]), v, {}, 1), 'bad-vmstate', 1, /validation failed/);
  assert.throws(() => vmstateSave(writer(), v, { n: 9 }), /validation failed/);

  const hooked: VMStateDescription = {
    ...simple,
    postLoad() {
      throw new Error('device says no');
    },
  };
  await rejectsWith(vmstateLoad(readerOf([0, 0, 0, 1, 2]), hooked, {}, 3), 'handler-failed', 5, /postLoad failed: device says no/);
  const throwingTest = defineVmsd({ name: 't', version: 1, minimumVersion: 1, fields: [field.uint8('x', { exists: () => { throw new Error('boom'); } })] });
  await rejectsWith(vmstateLoad(readerOf([1]), throwingTest, {}, 1), 'bad-vmstate', 0, /boom/);
});

test('postSave runs even when saving fails', () => {
  const calls: string[] = [];
  const vmsd = defineVmsd({ ...simple, preSave: () => void calls.push('pre'), postSave: () => void calls.push('post') });
  assert.throws(() => vmstateSave(writer(), vmsd, { a: -1, b: 0 }), RangeError);
  assert.deepEqual(calls, ['pre', 'post']);
});

test('encoding validates values', () => {
  const all = defineVmsd({
    name: 'all',
    version: 1,
    minimumVersion: 1,
    fields: [field.uint8('u8'), field.int16('i16'), field.int64('i64'), field.bool('b'), field.buffer('buf', 4), field.array('xs', 'uint16', { count: 2 }), field.struct('s', simple)],
  });
  const good = { u8: 255, i16: -32768, i64: 0n, b: false, buf: new Uint8Array(4), xs: [0, 65535], s: { a: 0, b: 0 } };
  vmstateSave(writer(), all, good);
  const bad: [string, unknown, RegExp][] = [
    ['u8', 256, /'u8'.*out of range: 256/],
    ['u8', 1.5, /out of range/],
    ['i16', -32769, /out of range/],
    ['i64', 1, /bigint/],
    ['i64', 1n << 63n, /bigint/],
    ['b', 1, /bool expected/],
    ['buf', new Uint8Array(5), /4 bytes expected, got 5/],
    ['buf', [0, 0, 0, 0], /Uint8Array expected/],
    ['xs', [1], /2 elements expected/],
    ['xs', [1, 65536], /'xs'\[1\].*out of range/],
    ['s', null, /object expected/],
  ];
  for (const [key, value, message] of bad) {
    assert.throws(() => vmstateSave(writer(), all, { ...good, [key]: value }), (err: unknown) => err instanceof RangeError && message.test(err.message), `${key}=${String(value)}`);
  }
  const vb = defineVmsd({ name: 'vb', version: 1, minimumVersion: 1, fields: [field.vbuffer('d', { sizeField: 'len', multiplier: 2 })] });
  assert.throws(() => vmstateSave(writer(), vb, { len: 2, d: new Uint8Array(3) }), /4 bytes expected/);
  assert.throws(() => vmstateSave(writer(), vb, { len: -1, d: new Uint8Array(0) }), /negative/);
});

test('defineVmsd rejects malformed descriptions', () => {
  const base = { name: 'd', version: 1, minimumVersion: 1, fields: [] };
  assert.throws(() => defineVmsd({ ...base, minimumVersion: 2 }), /minimumVersion/);
  assert.throws(() => defineVmsd({ ...base, name: '' }), /name/);
  assert.throws(() => defineVmsd({ ...base, subsections: [{ ...base, name: 'other/x' }] }), /must start with 'd\/'/);
  assert.throws(() => defineVmsd({ ...base, subsections: [{ ...base, name: 'd/x' }, { ...base, name: 'd/x' }] }), /duplicate/);
  assert.throws(() => defineVmsd({ ...base, fields: [{ kind: 'scalar', name: 'x', type: 'int8', check: 'equal' }] }), /no "equal" variant/);
  assert.throws(() => defineVmsd({ ...base, fields: [field.array('x', 'uint8', {})] }), /exactly one of count and countField/);
  assert.throws(() => defineVmsd({ ...base, fields: [field.buffer('x', -1)] }), /bad size/);
  const loop: VMStateDescription = { ...base, fields: [] };
  (loop.fields as unknown[]).push(field.struct('self', loop));
  assert.throws(() => defineVmsd(loop), /contains itself/);
});

// ---------------------------------------------------------------------------
// vmdesc-driven decoder: the JSON is untrusted.

const device = (fields: unknown[], extra: Record<string, unknown> = {}) => ({ name: 'd', instance_id: 0, vmsd_name: 'd', version: 1, fields, ...extra });

test('vmdesc shape errors are bad-vmdesc', async () => {
  const bad: unknown[] = [
    null,
    [],
    { name: 'd', instance_id: 0 }, // no fields
    { name: 5, instance_id: 0, fields: [] },
    { name: 'd', instance_id: -1, fields: [] },
    device([{ name: 'x', type: 'uint8' }]), // no size
    device([{ name: 'x', type: 'uint8', size: '1' }]),
    device([{ name: 'x', type: 'uint8', size: 1.5 }]),
    device([{ name: 'x', type: 'buffer', size: 2 ** 40 }]),
    device([{ name: 'x', type: 'uint8', size: 1, array_len: 2 ** 30 }]),
    device([{ name: 'x', type: 'uint8', size: 1, array_len: 2, index: 0 }]),
    device([{ name: 'x', type: 'struct', size: 1 }]), // no struct
    device([{ name: 'x', type: 'struct', size: 1, struct: { vmsd_name: 's', version: 1 } }]), // struct without fields
    device([], { subsections: {} }),
    device([], { subsections: [{ version: 1, fields: [] }] }), // subsection without vmsd_name
  ];
  for (const json of bad) {
    assert.throws(() => parseVmdescDevice(json, 1234), (err: unknown) => err instanceof StreamError && err.code === 'bad-vmdesc' && err.offset === 1234, JSON.stringify(json));
    await rejectsWith(decodeWithVmdesc(readerOf([]), json), 'bad-vmdesc', 0);
  }
  assert.throws(() => parseVmdescTrailer({ page_size: 4096, devices: {} }), StreamError);
  // Absurd nesting is refused rather than followed.
  let deep: Record<string, unknown> = { vmsd_name: 's', version: 1, fields: [] };
  for (let i = 0; i < 100; i++) deep = { vmsd_name: 's', version: 1, fields: [{ name: 'x', type: 'struct', size: 0, struct: deep }] };
  assert.throws(() => parseVmdescDevice(device([{ name: 'x', type: 'struct', size: 0, struct: deep }])), /nested deeper/);
});

test('vmdesc decoder: stream/description mismatches', async () => {
  await rejectsWith(decodeWithVmdesc(readerOf([1]), device([{ name: 'x', type: 'uint32', size: 3 }])), 'bad-vmdesc', 0, /uint32 of 3 bytes/);
  await rejectsWith(decodeWithVmdesc(readerOf([1, 2]), device([{ name: 'x', type: 'uint32', size: 4 }])), 'unexpected-end', 0);
  const withSub = device([{ name: 'x', type: 'uint8', size: 1 }], { subsections: [{ vmsd_name: 'd/s', version: 1, fields: [] }] });
  await rejectsWith(decodeWithVmdesc(readerOf([1, 0x7e]), withSub), 'bad-vmstate', 1, /subsection 'd\/s' expected \(0x05\), found 0x7e/);
  await rejectsWith(decodeWithVmdesc(readerOf([1, 5, 3, ...Buffer.from('d/t'), 0, 0, 0, 1]), withSub), 'bad-vmstate', 1, /found 'd\/t'/);
  await rejectsWith(decodeWithVmdesc(readerOf([1, 5, 3, ...Buffer.from('d/s'), 0, 0, 0, 2]), withSub), 'bad-vmstate', 1, /version 2/);
  const struct = device([{ name: 's', type: 'struct', size: 3, struct: { vmsd_name: 's', version: 1, fields: [{ name: 'a', type: 'uint16', size: 2 }] } }]);
  await rejectsWith(decodeWithVmdesc(readerOf([0, 1, 2]), struct), 'bad-vmstate', 0, /took 2 bytes, vmdesc says 3/);
  // Zero-size elements cannot make it loop forever.
  const many = device(Array.from({ length: 20 }, () => ({ name: 'x', type: 'buffer', size: 0, array_len: VMSTATE_LIMITS.maxArrayElements })));
  await rejectsWith(decodeWithVmdesc(readerOf([]), many), 'too-large', 0);
});

test('vmdesc decoder: odd names and types', async () => {
  const json = device([
    { name: '__proto__', type: 'uint8', size: 1 },
    { name: 'f', type: 'CPU_Double_U', size: 8 },
    { name: 'big', type: 'buffer', size: 10 },
    { name: 'p', type: 'nullptr', size: 1 },
    { name: 'cap', type: 'capability', size: 4 },
    { name: 'neg', type: 'int64', size: 8 },
  ]);
  const bytes = [7, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, ...new Array(10).fill(0xaa), 0x30, 3, ...Buffer.from('abc'), 0x80, 0, 0, 0, 0, 0, 0, 1];
  const out = await decodeWithVmdesc(readerOf(bytes), json, { maxHexBytes: 8 });
  assert.ok(Object.prototype.hasOwnProperty.call(out, '__proto__'));
  assert.equal(Object.getPrototypeOf(out), Object.prototype);
  assert.equal(out['__proto__'], 7);
  assert.equal(out.f, '3f f0 00 00 00 00 00 00');
  assert.equal(out.big, '<10 bytes>');
  assert.equal(out.p, 'nullptr');
  assert.equal(out.cap, 'abc');
  assert.equal(out.neg, '0x8000000000000001 (-9223372036854775807)');
});
