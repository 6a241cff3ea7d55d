/**
 * Writing state: QEMU's vmstate_save_state (migration/vmstate.c).
 *
 * Fields go out in order, big-endian, with no counts, sizes or names; then
 * every subsection whose `needed` is true as `0x05`, counted name, be32
 * version, body. Alongside, the encoder builds the JSON QEMU puts in the
 * vmdesc trailer, with the same names, types and byte counts.
 *
 * Values are checked as they are written; a bad one throws a RangeError
 * naming the description and field. (The bytes written before it stay in the
 * writer, so a caller should abandon that stream.)
 */
import { SectionType, type StreamWriter } from '../wire/index.js';
import { asCount, canCompress, fieldExists, vmdescFieldName, vmdescTypeName } from './common.js';
import { SCALAR_INFO, type ScalarType, type VMStateDescription, type VMStateField, type VmstateObject } from './types.js';
import type { VmdescEntry, VmdescField } from './vmdesc.js';

/** Should a top-level section be sent at all (vmstate_section_needed)? */
export function vmstateSectionNeeded<T extends object>(vmsd: VMStateDescription<T>, obj: T): boolean {
  return vmsd.needed ? Boolean(vmsd.needed(obj)) : true;
}

function describeValue(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n`;
  if (v instanceof Uint8Array) return `Uint8Array(${v.length})`;
  if (typeof v === 'object') return v === null ? 'null' : Array.isArray(v) ? `array(${v.length})` : 'object';
  return String(v);
}

function writeScalar(out: StreamWriter, type: ScalarType, value: unknown, where: string): void {
  const info = SCALAR_INFO[type];
  if (type === 'bool') {
    if (typeof value !== 'boolean') throw new RangeError(`${where}: bool expected, got ${describeValue(value)}`);
    out.u8(value ? 1 : 0);
    return;
  }
  if (info.big) {
    if (typeof value !== 'bigint' || value < (info.min as bigint) || value > (info.max as bigint)) {
      throw new RangeError(`${where}: ${type} (bigint) expected, got ${describeValue(value)}`);
    }
    out.be64(value);
    return;
  }
  if (typeof value !== 'number' || !Number.isInteger(value) || value < (info.min as number) || value > (info.max as number)) {
    throw new RangeError(`${where}: ${type} value out of range: ${describeValue(value)}`);
  }
  // Masking turns negatives into their two's complement bytes.
  if (info.sizeBytes === 1) out.u8(value & 0xff);
  else if (info.sizeBytes === 2) out.be16(value & 0xffff);
  else out.be32(value >>> 0);
}

function expectBytes(value: unknown, sizeBytes: number, where: string): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new RangeError(`${where}: Uint8Array expected, got ${describeValue(value)}`);
  if (value.length !== sizeBytes) throw new RangeError(`${where}: ${sizeBytes} bytes expected, got ${value.length}`);
  return value;
}

function expectObject(value: unknown, where: string): VmstateObject {
  if (typeof value !== 'object' || value === null || Array.isArray(value) || value instanceof Uint8Array) {
    throw new RangeError(`${where}: object expected, got ${describeValue(value)}`);
  }
  return value as VmstateObject;
}

/** Number of elements the field writes (1 for non-arrays), checked against the array held. */
function elementCount(f: VMStateField, obj: VmstateObject, where: string): number {
  if (f.kind !== 'array' && f.kind !== 'structArray') return f.kind === 'validate' ? 0 : 1;
  let n: number;
  if (f.count !== undefined) {
    n = f.count;
  } else {
    const count = asCount(obj[f.countField!]);
    if (typeof count === 'string') throw new RangeError(`${where}: count field '${f.countField}' is ${count}`);
    n = count;
  }
  const values = obj[f.name];
  if (!Array.isArray(values) && !ArrayBuffer.isView(values)) throw new RangeError(`${where}: array expected, got ${describeValue(values)}`);
  const length = (values as ArrayLike<unknown>).length;
  if (length !== n) throw new RangeError(`${where}: ${n} elements expected, array has ${length}`);
  return n;
}

/** Write element `i` of field `f`; returns the nested description for struct elements. */
function writeElement(out: StreamWriter, f: VMStateField, obj: VmstateObject, i: number, where: string): VmdescEntry | undefined {
  switch (f.kind) {
    case 'scalar':
      writeScalar(out, f.type, obj[f.name], where);
      return undefined;
    case 'array':
      writeScalar(out, f.type, (obj[f.name] as ArrayLike<unknown>)[i], `${where}[${i}]`);
      return undefined;
    case 'buffer':
      out.bytes(expectBytes(obj[f.name], f.sizeBytes, where));
      return undefined;
    case 'vbuffer': {
      const size = asCount(obj[f.sizeField]);
      if (typeof size === 'string') throw new RangeError(`${where}: size field '${f.sizeField}' is ${size}`);
      out.bytes(expectBytes(obj[f.name], size * f.multiplier, where));
      return undefined;
    }
    case 'unused':
      out.bytes(new Uint8Array(f.sizeBytes));
      return undefined;
    case 'struct':
      return vmstateSave(out, f.vmsd, expectObject(obj[f.name], where));
    case 'structArray':
      return vmstateSave(out, f.vmsd, expectObject((obj[f.name] as ArrayLike<unknown>)[i], `${where}[${i}]`));
    case 'validate':
      return undefined;
  }
}

function saveField(out: StreamWriter, vmsd: VMStateDescription<any>, f: VMStateField, obj: VmstateObject, versionId: number, described: VmdescField[]): void {
  const where = `vmstate '${vmsd.name}' field '${f.name}'`;
  if (!fieldExists(f, obj, versionId)) {
    if (f.kind === 'validate') throw new RangeError(`Output state validation failed: ${vmsd.name}/${f.name}`);
    return;
  }
  const n = elementCount(f, obj, where);
  const compress = canCompress(f);
  let describe = true;
  for (let i = 0; i < n; i++) {
    let desc: VmdescField | undefined;
    if (describe) {
      // Key order matters: the JSON must read like QEMU's (name, array_len|index, type, struct, size).
      desc = { name: vmdescFieldName(vmsd, f) } as VmdescField;
      if (n > 1) {
        if (compress) desc.array_len = n;
        else desc.index = i;
      }
      desc.type = vmdescTypeName(f);
    }
    const before = out.bytesWritten;
    const nested = writeElement(out, f, obj, i, where);
    if (desc) {
      if (nested) desc.struct = nested;
      desc.size = out.bytesWritten - before;
      described.push(desc);
      // A compressed array is described by its first element only.
      if (compress) describe = false;
    }
  }
}

function saveSubsections(out: StreamWriter, vmsd: VMStateDescription<any>, obj: VmstateObject): VmdescEntry[] {
  const described: VmdescEntry[] = [];
  for (const sub of vmsd.subsections ?? []) {
    if (!vmstateSectionNeeded(sub, obj)) continue;
    out.u8(SectionType.Subsection);
    out.countedString(sub.name);
    out.be32(sub.version);
    described.push(vmstateSave(out, sub, obj));
  }
  return described;
}

/**
 * Write `obj` as described by `vmsd` at `versionId` (default: the current
 * version; nested structs and subsections always use their own). Returns the
 * vmdesc JSON object for it: `{vmsd_name, version, fields, subsections?}`.
 *
 * Runs preSave first and postSave last, postSave also when saving failed.
 * Whether to send a top-level section at all (`needed`) is the caller's call:
 * see vmstateSectionNeeded.
 */
export function vmstateSave<T extends object>(out: StreamWriter, vmsd: VMStateDescription<T>, obj: T, versionId: number = vmsd.version): VmdescEntry {
  vmsd.preSave?.(obj);
  let entry: VmdescEntry;
  try {
    const state = obj as unknown as VmstateObject;
    entry = { vmsd_name: vmsd.name, version: versionId, fields: [] };
    for (const f of vmsd.fields) saveField(out, vmsd, f, state, versionId, entry.fields);
    const subsections = saveSubsections(out, vmsd, state);
    // QEMU only writes the key when at least one subsection was sent.
    if (subsections.length > 0) entry.subsections = subsections;
  } catch (err) {
    try {
      vmsd.postSave?.(obj);
    } catch {
      // The first failure is the one worth reporting.
    }
    throw err;
  }
  vmsd.postSave?.(obj);
  return entry;
}
