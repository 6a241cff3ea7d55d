/**
 * The JSON "vmdesc" trailer QEMU appends after EOF (2.8): a description of
 * the FULL sections of one concrete stream. Key order follows QEMU's so that
 * the text we produce is byte-identical to QEMU's for the same state.
 */

/** One field entry: `name`, then `array_len` (all elements alike) or `index` (one entry per element), `type`, `struct`, `size`. */
export interface VmdescField {
  name: string;
  array_len?: number;
  index?: number;
  /** A primitive name (`uint32`, `buffer`, `unused_buffer`, `int32 equal`, ...), `struct`, `vstruct` or `unknown`. */
  type: string;
  /** For `struct`: the nested description (of the first element when compressed). */
  struct?: VmdescEntry;
  /** Bytes written for one element, nested subsections included. */
  size: number;
}

/** A description as written for a section, struct or subsection. */
export interface VmdescEntry {
  vmsd_name: string;
  version: number;
  fields: VmdescField[];
  /** Present only when at least one subsection was sent. */
  subsections?: VmdescEntry[];
}

/**
 * One device of the trailer. VMState devices carry the VmdescEntry keys;
 * legacy (non-VMState) ones only `size` and one `data` buffer field.
 */
export interface VmdescDevice {
  name: string;
  instance_id: number;
  vmsd_name?: string;
  version?: number;
  size?: number;
  fields: VmdescField[];
  subsections?: VmdescEntry[];
}

/** The whole trailer. */
export interface VmdescTrailer {
  page_size: number;
  devices: VmdescDevice[];
}

/** The device entry for a VMState section, keys in QEMU's order. */
export function vmdescDevice(name: string, instanceId: number, entry: VmdescEntry): VmdescDevice {
  return { name, instance_id: instanceId, ...entry };
}

/** A string quoted as QEMU's JSON writer does (json-writer.c quoted_str): non-ASCII as \uXXXX. */
function quote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (cp > 0xffff) {
      const hi = 0xd800 + ((cp - 0x10000) >> 10);
      const lo = 0xdc00 + ((cp - 0x10000) & 0x3ff);
      out += `\\u${hi.toString(16).toUpperCase().padStart(4, '0')}\\u${lo.toString(16).toUpperCase().padStart(4, '0')}`;
    } else if (cp < 0x20 || cp >= 0x7f) out += `\\u${cp.toString(16).toUpperCase().padStart(4, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}

/**
 * JSON text in the layout of QEMU's non-pretty JSON writer: `": "` after keys,
 * `", "` between items, no newlines. Keys with undefined values are left out.
 */
export function formatVmdescJson(value: unknown): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
      return quote(value);
    case 'number':
      if (!Number.isFinite(value)) throw new RangeError(`vmdesc JSON: ${value} is not a JSON number`);
      return String(value);
    case 'bigint':
      return value.toString();
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object':
      if (Array.isArray(value)) return `[${value.map(formatVmdescJson).join(', ')}]`;
      return `{${Object.entries(value as Record<string, unknown>)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${quote(k)}: ${formatVmdescJson(v)}`)
        .join(', ')}}`;
    default:
      throw new TypeError(`vmdesc JSON: cannot format a ${typeof value}`);
  }
}
