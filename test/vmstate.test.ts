/**
 * VMState against real QEMU 7.2 bytes: the `timer` and `globalstate` sections
 * and the JSON trailer of a captured stream (reference 2.10), and the
 * `fw_cfg` section with subsections from the `-M pc` walk-through.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  decodeWithVmdesc,
  defineVmsd,
  field,
  formatVmdescJson,
  parseVmdescTrailer,
  vmdescDevice,
  vmstateLoad,
  vmstateSave,
  type VMStateDescription,
} from '../src/vmstate/index.js';
import { MemorySink, MemorySource, StreamError, StreamReader, StreamWriter } from '../src/wire/index.js';
import { fixturePath } from './helpers/paths.js';

const FIXTURE = fixturePath('qemu72-none-16M.mig');
const stream = new Uint8Array(readFileSync(FIXTURE));

// Offsets in the fixture (reference 2.10).
const TIMER_BODY = 0x907e;
const TIMER_END = 0x9096; // footer
const GLOBALSTATE_BODY = 0x90b4;
const GLOBALSTATE_END = 0x911c;
const VMDESC = 0x9121; // EOF byte, then 0x06, be32 length, JSON

/** QEMU 7.2 softmmu/cpu-timers.c `vmstate_timers` (the icount subsection is only sent with -icount). */
interface TimersState {
  cpu_ticks_offset: bigint;
  cpu_clock_offset: bigint;
  qemu_icount_bias: bigint;
  qemu_icount: bigint;
  icount: boolean;
}
const timerIcountVmsd = defineVmsd<TimersState>({
  name: 'timer/icount',
  version: 1,
  minimumVersion: 1,
  needed: (s) => s.icount,
  fields: [field.int64('qemu_icount_bias'), field.int64('qemu_icount')],
});
const timerVmsd = defineVmsd<TimersState>({
  name: 'timer',
  version: 2,
  minimumVersion: 1,
  fields: [field.int64('cpu_ticks_offset'), field.unused(8), field.int64('cpu_clock_offset', { fromVersion: 2 })],
  subsections: [timerIcountVmsd],
});

/** QEMU 7.2 migration/global_state.c: `size` is the runstate name length + 1 (the NUL). */
interface GlobalState {
  size: number;
  runstate: Uint8Array;
}
const globalStateVmsd = defineVmsd<GlobalState>({
  name: 'globalstate',
  version: 1,
  minimumVersion: 1,
  preSave(s) {
    const end = s.runstate.indexOf(0);
    s.size = (end < 0 ? s.runstate.length : end) + 1;
  },
  fields: [field.uint32('size'), field.buffer('runstate', 100)],
});

function runstate(name: string): Uint8Array {
  const out = new Uint8Array(100);
  out.set(new TextEncoder().encode(name));
  return out;
}

async function save<T extends object>(vmsd: VMStateDescription<T>, obj: T) {
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  const desc = vmstateSave(out, vmsd, obj);
  await out.flush();
  return { bytes: sink.bytes(), desc };
}

function readerOf(bytes: Uint8Array, chunkBytes = 3): StreamReader {
  return new StreamReader(new MemorySource(bytes, chunkBytes));
}

function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}

function fixtureJson(): string {
  assert.equal(stream[VMDESC], 0x00, 'EOF');
  assert.equal(stream[VMDESC + 1], 0x06, 'VMDESCRIPTION');
  const length = new DataView(stream.buffer, stream.byteOffset).getUint32(VMDESC + 2);
  return new TextDecoder().decode(stream.subarray(VMDESC + 6, VMDESC + 6 + length));
}

test('fixture: section headers are where the reference says', () => {
  assert.deepEqual(stream.subarray(0x906b, TIMER_BODY), hex('04 00000000 05 74696d6572 00000000 00000002'));
  assert.deepEqual(stream.subarray(TIMER_END, TIMER_END + 5), hex('7e 00000000'));
  assert.deepEqual(stream.subarray(0x909b, GLOBALSTATE_BODY), hex('04 00000004 0b 676c6f62616c7374617465 00000000 00000001'));
  assert.deepEqual(stream.subarray(GLOBALSTATE_END, GLOBALSTATE_END + 5), hex('7e 00000004'));
});

test('timer: loads the captured body and encodes the same bytes', async () => {
  const body = stream.subarray(TIMER_BODY, TIMER_END);
  const state: TimersState = { cpu_ticks_offset: 0n, cpu_clock_offset: 0n, qemu_icount_bias: 0n, qemu_icount: 0n, icount: false };
  const input = readerOf(body);
  await vmstateLoad(input, timerVmsd, state, 2);
  assert.equal(input.offset, body.length);
  assert.equal(state.cpu_ticks_offset, 0xa6ef59n);
  assert.equal(state.cpu_clock_offset, 0x403385n);

  const { bytes, desc } = await save(timerVmsd, state);
  assert.deepEqual(bytes, body);
  assert.deepEqual(desc, {
    vmsd_name: 'timer',
    version: 2,
    fields: [
      { name: 'cpu_ticks_offset', type: 'int64', size: 8 },
      { name: 'unused', type: 'unused_buffer', size: 8 },
      { name: 'cpu_clock_offset', type: 'int64', size: 8 },
    ],
  });
});

test('timer: a version 1 body has no cpu_clock_offset, which keeps its value', async () => {
  const state: TimersState = { cpu_ticks_offset: 0n, cpu_clock_offset: 77n, qemu_icount_bias: 0n, qemu_icount: 0n, icount: false };
  const input = readerOf(stream.subarray(TIMER_BODY, TIMER_BODY + 16));
  await vmstateLoad(input, timerVmsd, state, 1);
  assert.equal(input.offset, 16);
  assert.equal(state.cpu_ticks_offset, 0xa6ef59n);
  assert.equal(state.cpu_clock_offset, 77n);
});

test('globalstate: loads the captured body and encodes the same bytes', async () => {
  const body = stream.subarray(GLOBALSTATE_BODY, GLOBALSTATE_END);
  const state: GlobalState = { size: 0, runstate: new Uint8Array(100) };
  await vmstateLoad(readerOf(body), globalStateVmsd, state, 1);
  assert.equal(state.size, 8);
  assert.deepEqual(state.runstate, runstate('running'));

  const { bytes, desc } = await save(globalStateVmsd, { size: 0, runstate: runstate('running') });
  assert.deepEqual(bytes, body);
  assert.deepEqual(desc, {
    vmsd_name: 'globalstate',
    version: 1,
    fields: [
      { name: 'size', type: 'uint32', size: 4 },
      { name: 'runstate', type: 'buffer', size: 100 },
    ],
  });
});

test('vmdesc: our entries make the captured JSON trailer byte for byte', async () => {
  const timers: TimersState = { cpu_ticks_offset: 0xa6ef59n, cpu_clock_offset: 0x403385n, qemu_icount_bias: 0n, qemu_icount: 0n, icount: false };
  const timer = await save(timerVmsd, timers);
  const global = await save(globalStateVmsd, { size: 0, runstate: runstate('running') });
  const trailer = { page_size: 4096, devices: [vmdescDevice('timer', 0, timer.desc), vmdescDevice('globalstate', 0, global.desc)] };
  const json = fixtureJson();
  assert.equal(formatVmdescJson(trailer), json);
  assert.deepEqual(parseVmdescTrailer(JSON.parse(json)), trailer);
});

test('vmdesc decoder: reads the captured bodies with the captured JSON', async () => {
  const { devices } = JSON.parse(fixtureJson()) as { devices: unknown[] };
  const timer = await decodeWithVmdesc(readerOf(stream.subarray(TIMER_BODY, TIMER_END)), devices[0]);
  assert.deepEqual(timer, { cpu_ticks_offset: 0xa6ef59, unused: '00 00 00 00 00 00 00 00', cpu_clock_offset: 0x403385 });
  const input = readerOf(stream.subarray(GLOBALSTATE_BODY, GLOBALSTATE_END));
  const global = await decodeWithVmdesc(input, devices[1]);
  assert.equal(input.offset, GLOBALSTATE_END - GLOBALSTATE_BODY);
  assert.equal(global.size, 8);
  assert.equal(global.runstate, Array.from(runstate('running'), (b) => b.toString(16).padStart(2, '0')).join(' '));
});

// ---------------------------------------------------------------------------
// fw_cfg (hw/nvram/fw_cfg.c in 7.2): version 1 sent cur_offset as a uint16
// (VMSTATE_UINT16_HACK, an existence test), version 2 as a uint32, hence two
// fields named cur_offset and the vmdesc name "cur_offset[1]".

interface FwCfgState {
  cur_entry: number;
  cur_offset: number;
  dma_enabled: boolean;
  dma_addr: bigint;
  acpi_mr_restore: boolean;
  table_mr_size: bigint;
  linker_mr_size: bigint;
  rsdp_mr_size: bigint;
}
const fwCfgVmsd = defineVmsd<FwCfgState>({
  name: 'fw_cfg',
  version: 2,
  minimumVersion: 1,
  fields: [
    field.uint16('cur_entry'),
    field.uint16('cur_offset', { exists: (_s, versionId) => versionId === 1 }),
    field.uint32('cur_offset', { fromVersion: 2 }),
  ],
  subsections: [
    { name: 'fw_cfg/dma', version: 0, minimumVersion: 0, needed: (s) => s.dma_enabled, fields: [field.uint64('dma_addr')] },
    {
      name: 'fw_cfg/acpi_mr',
      version: 1,
      minimumVersion: 1,
      needed: (s) => s.acpi_mr_restore,
      fields: [field.uint64('table_mr_size'), field.uint64('linker_mr_size'), field.uint64('rsdp_mr_size')],
    },
  ],
});

const FW_CFG_BODY = hex(`
  0000 00000000
  05 0a ${Buffer.from('fw_cfg/dma').toString('hex')} 00000000
  0000000000000000
  05 0e ${Buffer.from('fw_cfg/acpi_mr').toString('hex')} 00000001
  0000000000020000 0000000000001000 0000000000000014`);

function fwCfgDefaults(): FwCfgState {
  return {
    cur_entry: 0x1234,
    cur_offset: 99,
    dma_enabled: true,
    dma_addr: 5n,
    acpi_mr_restore: true,
    table_mr_size: 0n,
    linker_mr_size: 0n,
    rsdp_mr_size: 0n,
  };
}

const FW_CFG_VMDESC = {
  vmsd_name: 'fw_cfg',
  version: 2,
  fields: [
    { name: 'cur_entry', type: 'uint16', size: 2 },
    { name: 'cur_offset[1]', type: 'uint32', size: 4 },
  ],
  subsections: [
    { vmsd_name: 'fw_cfg/dma', version: 0, fields: [{ name: 'dma_addr', type: 'uint64', size: 8 }] },
    {
      vmsd_name: 'fw_cfg/acpi_mr',
      version: 1,
      fields: [
        { name: 'table_mr_size', type: 'uint64', size: 8 },
        { name: 'linker_mr_size', type: 'uint64', size: 8 },
        { name: 'rsdp_mr_size', type: 'uint64', size: 8 },
      ],
    },
  ],
};

test('fw_cfg: subsections load, and encode to the captured bytes and vmdesc', async () => {
  const state = fwCfgDefaults();
  const body = Uint8Array.from([...FW_CFG_BODY, 0x7e, 0, 0, 0, 8]); // the footer follows
  const input = readerOf(body, 1);
  await vmstateLoad(input, fwCfgVmsd, state, 2);
  assert.equal(input.offset, FW_CFG_BODY.length, 'stops before the footer');
  assert.deepEqual(state, { ...fwCfgDefaults(), cur_entry: 0, cur_offset: 0, dma_addr: 0n, table_mr_size: 0x20000n, linker_mr_size: 0x1000n, rsdp_mr_size: 0x14n });

  const { bytes, desc } = await save(fwCfgVmsd, state);
  assert.deepEqual(bytes, FW_CFG_BODY);
  assert.deepEqual(desc, FW_CFG_VMDESC);
  assert.equal(
    formatVmdescJson(vmdescDevice('fw_cfg', 0, desc)),
    '{"name": "fw_cfg", "instance_id": 0, "vmsd_name": "fw_cfg", "version": 2, "fields": [{"name": "cur_entry", "type": "uint16", "size": 2}, ' +
      '{"name": "cur_offset[1]", "type": "uint32", "size": 4}], "subsections": [{"vmsd_name": "fw_cfg/dma", "version": 0, "fields": ' +
      '[{"name": "dma_addr", "type": "uint64", "size": 8}]}, {"vmsd_name": "fw_cfg/acpi_mr", "version": 1, "fields": [{"name": ' +
      '"table_mr_size", "type": "uint64", "size": 8}, {"name": "linker_mr_size", "type": "uint64", "size": 8}, {"name": "rsdp_mr_size", ' +
      '"type": "uint64", "size": 8}]}]}',
  );

  const analyzed = await decodeWithVmdesc(readerOf(FW_CFG_BODY), vmdescDevice('fw_cfg', 0, desc));
  assert.deepEqual(analyzed, {
    cur_entry: 0,
    'cur_offset[1]': 0,
    'fw_cfg/dma': { dma_addr: 0 },
    'fw_cfg/acpi_mr': { table_mr_size: 0x20000, linker_mr_size: 0x1000, rsdp_mr_size: 0x14 },
  });
});

test('fw_cfg: subsections in any order, absent ones keep defaults', async () => {
  const swapped = hex(`
    0001 00000002
    05 0e ${Buffer.from('fw_cfg/acpi_mr').toString('hex')} 00000001
    0000000000000001 0000000000000002 0000000000000003
    05 0a ${Buffer.from('fw_cfg/dma').toString('hex')} 00000000
    00000000000000ff`);
  const state = fwCfgDefaults();
  await vmstateLoad(readerOf(swapped), fwCfgVmsd, state, 2);
  assert.deepEqual([state.dma_addr, state.table_mr_size, state.rsdp_mr_size], [0xffn, 1n, 3n]);

  const none = fwCfgDefaults();
  await vmstateLoad(readerOf(hex('0001 00000002')), fwCfgVmsd, none, 2);
  assert.deepEqual(none, { ...fwCfgDefaults(), cur_entry: 1, cur_offset: 2 });

  // Not needed → not sent, and no "subsections" key in the vmdesc.
  const { bytes, desc } = await save(fwCfgVmsd, { ...fwCfgDefaults(), dma_enabled: false, acpi_mr_restore: false });
  assert.deepEqual(bytes, hex('1234 00000063'));
  assert.equal('subsections' in desc, false);
});

test('fw_cfg: version 1 carries cur_offset as a uint16', async () => {
  const state = fwCfgDefaults();
  await vmstateLoad(readerOf(hex('0007 0009')), fwCfgVmsd, state, 1);
  assert.deepEqual([state.cur_entry, state.cur_offset], [7, 9]);
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  const desc = vmstateSave(out, fwCfgVmsd, { ...state, dma_enabled: false, acpi_mr_restore: false }, 1);
  await out.flush();
  assert.deepEqual(sink.bytes(), hex('0007 0009'));
  assert.deepEqual(desc.fields.map((f) => f.name), ['cur_entry', 'cur_offset[0]']);
});

test('fw_cfg: a 0x05 not named fw_cfg... is left for the caller; an unknown fw_cfg/ name fails', async () => {
  const other = Uint8Array.from([...hex('0001 00000002'), 0x05, 0x03, ...Buffer.from('abc'), 0, 0, 0, 1]);
  const input = readerOf(other);
  await vmstateLoad(input, fwCfgVmsd, fwCfgDefaults(), 2);
  assert.equal(input.offset, 6);

  // Too short to be "fw_cfg/x": left alone too.
  const short = Uint8Array.from([...hex('0001 00000002'), 0x05, 0x06, ...Buffer.from('fw_cfg')]);
  const input2 = readerOf(short);
  await vmstateLoad(input2, fwCfgVmsd, fwCfgDefaults(), 2);
  assert.equal(input2.offset, 6);

  // QEMU compares the prefix without the '/': "fw_cfg_io" would be taken as
  // ours and rejected as unknown (vmstate_subsection_load), and so are we.
  const noSlash = Uint8Array.from([...hex('0001 00000002'), 0x05, 0x09, ...Buffer.from('fw_cfg_io'), 0, 0, 0, 1]);
  await assert.rejects(vmstateLoad(readerOf(noSlash), fwCfgVmsd, fwCfgDefaults(), 2), /unknown subsection 'fw_cfg_io'/);

  const unknown = Uint8Array.from([...hex('0001 00000002'), 0x05, 0x0b, ...Buffer.from('fw_cfg/nope'), 0, 0, 0, 1]);
  await assert.rejects(vmstateLoad(readerOf(unknown), fwCfgVmsd, fwCfgDefaults(), 2), (err: unknown) => {
    assert.ok(err instanceof StreamError);
    assert.equal(err.code, 'bad-vmstate');
    assert.equal(err.offset, 6);
    assert.match(err.message, /unknown subsection 'fw_cfg\/nope'/);
    return true;
  });
});

test('nested structs and struct arrays: compressed vs per-element vmdesc entries', async () => {
  const reg = defineVmsd({ name: 'reg', version: 3, minimumVersion: 3, fields: [field.uint32('value'), field.bool('dirty')] });
  const withSub = defineVmsd({
    name: 'chan',
    version: 1,
    minimumVersion: 1,
    fields: [field.uint8('mode')],
    subsections: [{ name: 'chan/extra', version: 2, minimumVersion: 1, needed: (c: { mode: number }) => c.mode > 0, fields: [field.uint16('extra')] }],
  });
  const dev = defineVmsd({
    name: 'dev',
    version: 1,
    minimumVersion: 1,
    fields: [
      field.uint8('n'),
      field.structArray('regs', reg, { count: 2 }),
      field.structArray('chans', withSub, { countField: 'n' }),
      field.struct('main', reg),
      field.array('words', 'uint16', { count: 3 }),
    ],
  });
  const state = {
    n: 2,
    regs: [
      { value: 1, dirty: true },
      { value: 2, dirty: false },
    ],
    chans: [
      { mode: 0, extra: 0 },
      { mode: 1, extra: 0xbeef },
    ],
    main: { value: 0xffffffff, dirty: true },
    words: [1, 2, 0xffff],
  };
  const { bytes, desc } = await save(dev, state);
  assert.deepEqual(
    bytes,
    hex(`02  00000001 01  00000002 00  00  01 05 0a ${Buffer.from('chan/extra').toString('hex')} 00000002 beef  ffffffff 01  0001 0002 ffff`),
  );
  const regDesc = { vmsd_name: 'reg', version: 3, fields: [{ name: 'value', type: 'uint32', size: 4 }, { name: 'dirty', type: 'bool', size: 1 }] };
  assert.deepEqual(desc.fields, [
    { name: 'n', type: 'uint8', size: 1 },
    { name: 'regs', array_len: 2, type: 'struct', struct: regDesc, size: 5 },
    { name: 'chans', index: 0, type: 'struct', struct: { vmsd_name: 'chan', version: 1, fields: [{ name: 'mode', type: 'uint8', size: 1 }] }, size: 1 },
    {
      name: 'chans',
      index: 1,
      type: 'struct',
      struct: {
        vmsd_name: 'chan',
        version: 1,
        fields: [{ name: 'mode', type: 'uint8', size: 1 }],
        subsections: [{ vmsd_name: 'chan/extra', version: 2, fields: [{ name: 'extra', type: 'uint16', size: 2 }] }],
      },
      size: 19,
    },
    { name: 'main', type: 'struct', struct: regDesc, size: 5 },
    { name: 'words', array_len: 3, type: 'uint16', size: 2 },
  ]);
  const loaded: Record<string, unknown> = { chans: [{ mode: 9, extra: 7 }] };
  await vmstateLoad(readerOf(bytes), dev, loaded, 1);
  assert.deepEqual(loaded, { ...state, chans: [{ mode: 0, extra: 7 }, { mode: 1, extra: 0xbeef }] });

  const analyzed = await decodeWithVmdesc(readerOf(bytes), vmdescDevice('dev', 0, desc));
  assert.deepEqual(analyzed, {
    n: 2,
    regs: [
      { value: 1, dirty: true },
      { value: 2, dirty: false },
    ],
    chans: [{ mode: 0 }, { mode: 1, 'chan/extra': { extra: 0xbeef } }],
    main: { value: 0xffffffff, dirty: true },
    words: [1, 2, 0xffff],
  });
});

test('hooks run in QEMU order', async () => {
  const calls: string[] = [];
  const sub = { name: 'h/sub', version: 1, minimumVersion: 1, fields: [field.uint8('b')], preLoad: () => void calls.push('sub.preLoad'), postLoad: () => void calls.push('sub.postLoad') };
  const vmsd = defineVmsd({
    name: 'h',
    version: 3,
    minimumVersion: 1,
    fields: [field.uint8('a')],
    subsections: [sub],
    preSave: () => void calls.push('preSave'),
    postSave: () => void calls.push('postSave'),
    preLoad: () => void calls.push('preLoad'),
    postLoad: (_o: unknown, v: number) => void calls.push(`postLoad v${v}`),
  });
  const { bytes } = await save(vmsd, { a: 1, b: 2 });
  await vmstateLoad(readerOf(bytes), vmsd, { a: 0, b: 0 }, 2);
  assert.deepEqual(calls, ['preSave', 'postSave', 'preLoad', 'sub.preLoad', 'sub.postLoad', 'postLoad v2']);
});

test('int, bool and timer encodings', async () => {
  const vmsd = defineVmsd({
    name: 'ints',
    version: 1,
    minimumVersion: 1,
    fields: [
      field.int8('i8'),
      field.int16('i16'),
      field.int32('i32'),
      field.int64('i64'),
      field.uint64('u64'),
      field.bool('b'),
      field.timer('t'),
      field.timer('idle'),
      field.vbuffer('data', { sizeField: 'i8n', multiplier: 2 }),
    ],
  });
  const state = { i8: -2, i16: -3, i32: -4, i64: -5n, u64: (1n << 64n) - 1n, b: true, t: 1_000_000n, idle: -1n, i8n: 2, data: hex('01020304') };
  const { bytes, desc } = await save(vmsd, state);
  assert.deepEqual(bytes, hex('fe fffd fffffffc fffffffffffffffb ffffffffffffffff 01 00000000000f4240 ffffffffffffffff 01020304'));
  assert.deepEqual(desc.fields.map((f) => `${f.name}:${f.type}:${f.size}`), [
    'i8:int8:1', 'i16:int16:2', 'i32:int32:4', 'i64:int64:8', 'u64:uint64:8', 'b:bool:1', 't:timer:8', 'idle:timer:8', 'data:buffer:4',
  ]);
  const loaded: Record<string, unknown> = { i8n: 2 };
  await vmstateLoad(readerOf(bytes), vmsd, loaded, 1);
  assert.deepEqual(loaded, state);
  // A bool byte other than 0/1 reads as true, as in QEMU.
  const odd = bytes.slice();
  odd[1 + 2 + 4 + 8 + 8] = 0x7f;
  const again: Record<string, unknown> = { i8n: 2 };
  await vmstateLoad(readerOf(odd), vmsd, again, 1);
  assert.equal(again.b, true);

  const analyzed = await decodeWithVmdesc(readerOf(bytes), vmdescDevice('ints', 0, desc));
  assert.deepEqual(analyzed, {
    i8: -2, i16: -3, i32: -4, i64: -5, u64: '0xffffffffffffffff', b: true, t: 1_000_000, idle: -1, data: '01 02 03 04',
  });
});
