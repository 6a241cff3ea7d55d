/**
 * Decoding a section body from its vmdesc JSON alone, without the device's
 * description (what `livemig analyze` does, like QEMU's
 * scripts/analyze-migration.py).
 *
 * The trailer lists, per FULL section, the fields actually written with their
 * types and sizes, and the subsections actually sent. Output follows
 * analyze-migration.py: an object keyed by field name (a name seen several
 * times, i.e. an array, becomes a list), subsections keyed by their name.
 * Integers are numbers when exactly representable, otherwise hex strings
 * (`0x%0Nx`, plus ` (decimal)` when negative); bools are booleans; anything
 * else (buffers, unused, bitmaps, unknown types) is hex bytes `"0a 1b ..."`.
 *
 * The JSON is untrusted: its shape is checked (`bad-vmdesc`) and every size
 * and count is bounded before use.
 */
import { SectionType, StreamError, type StreamReader } from '../wire/index.js';
import { VMSTATE_LIMITS } from './types.js';
import type { VmdescDevice, VmdescEntry, VmdescField, VmdescTrailer } from './vmdesc.js';

/** A decoded value, ready for JSON.stringify. */
export type AnalyzedValue = number | string | boolean | AnalyzedValue[] | { [key: string]: AnalyzedValue };
export type AnalyzedSection = { [key: string]: AnalyzedValue };

export interface VmdescDecodeOptions {
  /** Buffers larger than this are skipped and shown as `"<N bytes>"` (default 1 MiB). */
  maxHexBytes?: number;
}

/** Deepest struct/subsection nesting we follow (QEMU devices nest a few levels). */
const MAX_DEPTH = 64;
/** Largest single field we accept from the JSON. */
const MAX_FIELD_BYTES = VMSTATE_LIMITS.maxVbufferBytes;
/** Most array elements one field may declare. */
const MAX_ELEMENTS = VMSTATE_LIMITS.maxArrayElements;
/**
 * Most values one section may declare in all (arrays times nesting). Checked
 * before decoding: zero-size elements consume no input, so the stream's
 * length alone would not bound the work.
 */
const MAX_SECTION_VALUES = 1 << 22;

/** Integer types and their signedness. `timer` is an int64 (analyze-migration.py shows it as bytes). */
const INTEGER_TYPES: Readonly<Record<string, boolean>> = {
  int8: true,
  int16: true,
  int32: true,
  int64: true,
  'int32 equal': true,
  'int32 le': true,
  timer: true,
  uint8: false,
  uint16: false,
  uint32: false,
  uint64: false,
  'uint8 equal': false,
  'uint16 equal': false,
  'uint32 equal': false,
  'int64 equal': false, // QEMU's name for the uint64 "equal" variant
};

const NULLPTR_MARKER = 0x30; // '0', QEMU's VMS_NULLPTR_MARKER

// ---------------------------------------------------------------------------
// Shape validation

class Shape {
  constructor(private readonly offset: number) {}

  fail(path: string, reason: string): StreamError {
    return new StreamError('bad-vmdesc', `vmdesc ${path}: ${reason}`, { offset: this.offset });
  }

  object(value: unknown, path: string): Record<string, unknown> {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw this.fail(path, 'object expected');
    return value as Record<string, unknown>;
  }

  array(value: unknown, path: string): unknown[] {
    if (!Array.isArray(value)) throw this.fail(path, 'array expected');
    return value;
  }

  string(value: unknown, path: string): string {
    if (typeof value !== 'string') throw this.fail(path, 'string expected');
    return value;
  }

  integer(value: unknown, path: string, min: number, max: number): number {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
      throw this.fail(path, `integer ${min}..${max} expected, got ${JSON.stringify(value) ?? typeof value}`);
    }
    return value;
  }

  field(value: unknown, path: string, depth: number): VmdescField {
    const o = this.object(value, path);
    const name = this.string(o.name, `${path}.name`);
    const at = `${path} '${name}'`;
    const out = { name } as VmdescField;
    if (o.array_len !== undefined && o.index !== undefined) throw this.fail(at, 'both array_len and index');
    if (o.array_len !== undefined) out.array_len = this.integer(o.array_len, `${at}.array_len`, 0, MAX_ELEMENTS);
    if (o.index !== undefined) out.index = this.integer(o.index, `${at}.index`, 0, 0xffffffff);
    out.type = this.string(o.type, `${at}.type`);
    if (out.type === 'struct') out.struct = this.entry(o.struct, `${at}.struct`, depth + 1);
    out.size = this.integer(o.size, `${at}.size`, 0, MAX_FIELD_BYTES);
    return out;
  }

  /** A struct or subsection description (QEMU always writes vmsd_name and version there). */
  entry(value: unknown, path: string, depth: number): VmdescEntry {
    if (depth > MAX_DEPTH) throw this.fail(path, `nested deeper than ${MAX_DEPTH}`);
    const o = this.object(value, path);
    const out = {
      vmsd_name: this.string(o.vmsd_name, `${path}.vmsd_name`),
      version: this.integer(o.version, `${path}.version`, 0, 0xffffffff),
      fields: this.array(o.fields, `${path}.fields`).map((f, i) => this.field(f, `${path}.fields[${i}]`, depth)),
    } as VmdescEntry;
    if (o.subsections !== undefined) {
      out.subsections = this.array(o.subsections, `${path}.subsections`).map((s, i) => this.entry(s, `${path}.subsections[${i}]`, depth + 1));
    }
    return out;
  }

  device(value: unknown, path: string): VmdescDevice {
    const o = this.object(value, path);
    const name = this.string(o.name, `${path}.name`);
    const at = `device '${name}'`;
    const out: VmdescDevice = { name, instance_id: this.integer(o.instance_id, `${at}.instance_id`, 0, 0xffffffff), fields: [] };
    // Legacy (non-VMState) devices have no vmsd_name / version.
    if (o.vmsd_name !== undefined) out.vmsd_name = this.string(o.vmsd_name, `${at}.vmsd_name`);
    if (o.version !== undefined) out.version = this.integer(o.version, `${at}.version`, 0, 0xffffffff);
    if (o.size !== undefined) out.size = this.integer(o.size, `${at}.size`, 0, Number.MAX_SAFE_INTEGER);
    out.fields = this.array(o.fields, `${at}.fields`).map((f, i) => this.field(f, `${at}.fields[${i}]`, 0));
    if (o.subsections !== undefined) {
      out.subsections = this.array(o.subsections, `${at}.subsections`).map((s, i) => this.entry(s, `${at}.subsections[${i}]`, 1));
    }
    return out;
  }
}

/**
 * Check one device entry of a trailer and return a clean copy holding only
 * the keys we use. `jsonOffset` (the trailer's position) goes into errors.
 */
export function parseVmdescDevice(json: unknown, jsonOffset = 0): VmdescDevice {
  return new Shape(jsonOffset).device(json, 'device');
}

/** Check a whole trailer (`{page_size, devices}`), e.g. the result of JSON.parse on it. */
export function parseVmdescTrailer(json: unknown, jsonOffset = 0): VmdescTrailer {
  const shape = new Shape(jsonOffset);
  const o = shape.object(json, 'trailer');
  return {
    page_size: shape.integer(o.page_size, 'page_size', 1, 0x7fffffff),
    devices: shape.array(o.devices, 'devices').map((d, i) => shape.device(d, `devices[${i}]`)),
  };
}

// ---------------------------------------------------------------------------
// Decoding

/** Set an own property even for names like `__proto__` (names come from untrusted JSON). */
function setOwn(target: AnalyzedSection, key: string, value: AnalyzedValue): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

function hexBytes(bytes: Uint8Array): string {
  let out = '';
  for (let i = 0; i < bytes.length; i++) out += (i ? ' ' : '') + bytes[i]!.toString(16).padStart(2, '0');
  return out;
}

function integerValue(bytes: Uint8Array, signed: boolean): number | string {
  let unsigned = 0n;
  for (const b of bytes) unsigned = (unsigned << 8n) | BigInt(b);
  const bits = BigInt(bytes.length * 8);
  const value = signed ? BigInt.asIntN(Number(bits), unsigned) : unsigned;
  if (value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(value);
  const hex = `0x${unsigned.toString(16).padStart(bytes.length * 2, '0')}`;
  return value < 0n ? `${hex} (${value})` : hex;
}

class VmdescDecoder {
  private readonly maxHexBytes: number;

  constructor(private readonly input: StreamReader, options: VmdescDecodeOptions) {
    this.maxHexBytes = options.maxHexBytes ?? 1 << 20;
  }

  private mismatch(reason: string, offset: number): StreamError {
    return new StreamError('bad-vmstate', `stream does not match vmdesc: ${reason}`, { offset });
  }

  private async field(f: VmdescField): Promise<AnalyzedValue> {
    const { input } = this;
    const at = input.offset;
    const signed = INTEGER_TYPES[f.type];
    if (signed !== undefined) {
      if (f.size !== 1 && f.size !== 2 && f.size !== 4 && f.size !== 8) {
        throw new StreamError('bad-vmdesc', `vmdesc field '${f.name}': ${f.type} of ${f.size} bytes`, { offset: at });
      }
      return integerValue(await input.bytes(f.size, 8, f.name), signed);
    }
    switch (f.type) {
      case 'bool':
        if (f.size !== 1) throw new StreamError('bad-vmdesc', `vmdesc field '${f.name}': bool of ${f.size} bytes`, { offset: at });
        return (await input.u8()) !== 0;
      case 'struct': {
        const value = await this.entry(f.struct!, 1);
        // `size` counts the struct's fields and subsections; a difference means we misread.
        if (input.offset - at !== f.size) throw this.mismatch(`struct '${f.name}' took ${input.offset - at} bytes, vmdesc says ${f.size}`, at);
        return value;
      }
      case 'nullptr': {
        const bytes = await input.bytes(f.size, MAX_FIELD_BYTES, f.name);
        if (bytes.length !== 1 || bytes[0] !== NULLPTR_MARKER) throw this.mismatch(`'${f.name}' is not a null-pointer marker`, at);
        return 'nullptr';
      }
      case 'capability':
        return input.countedString();
      default:
        // buffer, unused_buffer, bitmap, CPU_Double_U, vstruct, unknown, ...: raw bytes.
        if (f.size > this.maxHexBytes) {
          await input.skip(f.size);
          return `<${f.size} bytes>`;
        }
        return hexBytes(await input.bytes(f.size, MAX_FIELD_BYTES, f.name));
    }
  }

  async entry(desc: Pick<VmdescEntry, 'fields' | 'subsections'>, depth: number): Promise<AnalyzedSection> {
    const { input } = this;
    const data: AnalyzedSection = {};
    const lists = new Set<string>();
    const add = (name: string, value: AnalyzedValue): void => {
      // analyze-migration.py: a name seen again turns into a list of its values.
      if (!Object.prototype.hasOwnProperty.call(data, name)) setOwn(data, name, value);
      else if (lists.has(name)) (data[name] as AnalyzedValue[]).push(value);
      else {
        setOwn(data, name, [data[name]!, value]);
        lists.add(name);
      }
    };
    for (const f of desc.fields) {
      // A compressed array is one description for array_len elements.
      const count = f.array_len ?? 1;
      for (let i = 0; i < count; i++) add(f.name, await this.field(f));
    }
    for (const sub of desc.subsections ?? []) {
      const at = input.offset;
      const marker = await input.u8();
      if (marker !== SectionType.Subsection) {
        throw this.mismatch(`subsection '${sub.vmsd_name}' expected (0x05), found 0x${marker.toString(16).padStart(2, '0')}`, at);
      }
      const name = await input.countedString();
      const version = await input.be32();
      if (name !== sub.vmsd_name) throw this.mismatch(`subsection '${sub.vmsd_name}' expected, found '${name}'`, at);
      if (version !== sub.version) throw this.mismatch(`subsection '${name}' version ${version}, vmdesc says ${sub.version}`, at);
      if (depth > MAX_DEPTH) throw new StreamError('bad-vmdesc', `vmdesc nested deeper than ${MAX_DEPTH}`, { offset: at });
      add(name, await this.entry(sub, depth + 1));
    }
    return data;
  }
}

/** How many values decoding `desc` produces, saturating just above MAX_SECTION_VALUES. */
function countValues(desc: Pick<VmdescEntry, 'fields' | 'subsections'>): number {
  let total = 0;
  for (const f of desc.fields) {
    const each = f.struct ? 1 + countValues(f.struct) : 1;
    total += (f.array_len ?? 1) * each;
    if (total > MAX_SECTION_VALUES) return MAX_SECTION_VALUES + 1;
  }
  for (const sub of desc.subsections ?? []) {
    total += 1 + countValues(sub);
    if (total > MAX_SECTION_VALUES) return MAX_SECTION_VALUES + 1;
  }
  return total;
}

/**
 * Decode one FULL section body (the bytes between the section header and the
 * footer) described by `device`, an entry of the trailer's `devices` (checked
 * here; pass the raw JSON value).
 */
export async function decodeWithVmdesc(input: StreamReader, device: unknown, options: VmdescDecodeOptions = {}): Promise<AnalyzedSection> {
  const checked = parseVmdescDevice(device, input.offset);
  if (countValues(checked) > MAX_SECTION_VALUES) {
    throw new StreamError('too-large', `vmdesc for '${checked.name}' declares more than ${MAX_SECTION_VALUES} values`, { offset: input.offset });
  }
  return new VmdescDecoder(input, options).entry(checked, 0);
}
