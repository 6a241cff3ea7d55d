/**
 * Helpers to write descriptions readably, e.g.
 *
 *   const timers = defineVmsd({
 *     name: 'timer', version: 2, minimumVersion: 1,
 *     fields: [
 *       field.int64('cpu_ticks_offset'),
 *       field.unused(8),
 *       field.int64('cpu_clock_offset', { fromVersion: 2 }),
 *     ],
 *   });
 *
 * Each helper returns a plain VMStateField object; `defineVmsd` checks a
 * description once, when the module defining it loads, so mistakes show up
 * at startup rather than in the middle of a migration.
 */
import {
  EQUAL_TYPE_NAMES,
  type ArrayField,
  type ElementCount,
  type ExistsTest,
  type FieldOptions,
  type ScalarCheck,
  type ScalarField,
  type ScalarType,
  type StructArrayField,
  type VMStateDescription,
  type VMStateField,
} from './types.js';

function scalar(name: string, type: ScalarType, options?: FieldOptions, check?: ScalarCheck): ScalarField {
  return check ? { ...options, kind: 'scalar', name, type, check } : { ...options, kind: 'scalar', name, type };
}

type CountOptions = ElementCount & FieldOptions;

export const field = {
  int8: (name: string, options?: FieldOptions) => scalar(name, 'int8', options),
  int16: (name: string, options?: FieldOptions) => scalar(name, 'int16', options),
  int32: (name: string, options?: FieldOptions) => scalar(name, 'int32', options),
  /** Value is a bigint. */
  int64: (name: string, options?: FieldOptions) => scalar(name, 'int64', options),
  uint8: (name: string, options?: FieldOptions) => scalar(name, 'uint8', options),
  uint16: (name: string, options?: FieldOptions) => scalar(name, 'uint16', options),
  uint32: (name: string, options?: FieldOptions) => scalar(name, 'uint32', options),
  /** Value is a bigint. */
  uint64: (name: string, options?: FieldOptions) => scalar(name, 'uint64', options),
  bool: (name: string, options?: FieldOptions) => scalar(name, 'bool', options),
  /** Expiry time in ns as a bigint; -1n = not pending. */
  timer: (name: string, options?: FieldOptions) => scalar(name, 'timer', options),

  /** Loading fails unless the incoming value equals the local one. */
  uint8Equal: (name: string, options?: FieldOptions) => scalar(name, 'uint8', options, 'equal'),
  uint16Equal: (name: string, options?: FieldOptions) => scalar(name, 'uint16', options, 'equal'),
  int32Equal: (name: string, options?: FieldOptions) => scalar(name, 'int32', options, 'equal'),
  uint32Equal: (name: string, options?: FieldOptions) => scalar(name, 'uint32', options, 'equal'),
  uint64Equal: (name: string, options?: FieldOptions) => scalar(name, 'uint64', options, 'equal'),
  /** Loading accepts 0 <= incoming <= local value, then stores it. */
  int32Le: (name: string, options?: FieldOptions) => scalar(name, 'int32', options, 'le'),

  /** Scalars, `{ count: 4 }` or `{ countField: 'num_regs' }`. */
  array: (name: string, type: ScalarType, options: CountOptions): ArrayField => ({ ...options, kind: 'array', name, type }),
  /** A Uint8Array of exactly `sizeBytes` bytes. */
  buffer: (name: string, sizeBytes: number, options?: FieldOptions): VMStateField => ({ ...options, kind: 'buffer', name, sizeBytes }),
  /** A Uint8Array of `obj[sizeField] * multiplier` bytes. */
  vbuffer: (name: string, options: { sizeField: string; multiplier?: number } & FieldOptions): VMStateField => ({
    ...options,
    kind: 'vbuffer',
    name,
    multiplier: options.multiplier ?? 1,
  }),
  /** `sizeBytes` zeros on the wire, ignored on load. Named "unused" as in QEMU. */
  unused: (sizeBytes: number, options?: FieldOptions): VMStateField => ({ ...options, kind: 'unused', name: 'unused', sizeBytes }),
  /** A nested object at `vmsd`'s own version. */
  struct: (name: string, vmsd: VMStateDescription<any>, options?: FieldOptions): VMStateField => ({ ...options, kind: 'struct', name, vmsd }),
  /** An array of nested objects, `{ count: 4 }` or `{ countField: 'n' }`. */
  structArray: (name: string, vmsd: VMStateDescription<any>, options: CountOptions): StructArrayField => ({
    ...options,
    kind: 'structArray',
    name,
    vmsd,
  }),
  /** No bytes; loading fails when `test` returns false. */
  validate: (name: string, test: ExistsTest): VMStateField => ({ kind: 'validate', name, exists: test }),
} as const;

const MAX_NAME_BYTES = 255; // names travel as counted strings
const textEncoder = new TextEncoder();

function isCount(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

function checkField(vmsd: VMStateDescription<any>, f: VMStateField, seen: Set<VMStateDescription<any>>): void {
  const where = `vmstate '${vmsd.name}' field '${f.name}'`;
  if (typeof f.name !== 'string' || f.name.length === 0) throw new TypeError(`vmstate '${vmsd.name}': a field has no name`);
  if (f.fromVersion !== undefined && !isCount(f.fromVersion)) throw new RangeError(`${where}: bad fromVersion ${f.fromVersion}`);
  switch (f.kind) {
    case 'scalar':
      if (f.check === 'equal' && !EQUAL_TYPE_NAMES[f.type]) throw new TypeError(`${where}: QEMU has no "equal" variant of ${f.type}`);
      if (f.check === 'le' && f.type !== 'int32') throw new TypeError(`${where}: "le" applies to int32 only`);
      return;
    case 'array':
    case 'structArray':
      if ((f.count === undefined) === (f.countField === undefined)) throw new TypeError(`${where}: give exactly one of count and countField`);
      if (f.count !== undefined && !isCount(f.count)) throw new RangeError(`${where}: bad count ${f.count}`);
      if (f.kind === 'structArray') checkVmsd(f.vmsd, seen);
      return;
    case 'buffer':
    case 'unused':
      if (!isCount(f.sizeBytes)) throw new RangeError(`${where}: bad size ${f.sizeBytes}`);
      return;
    case 'vbuffer':
      if (typeof f.sizeField !== 'string' || f.sizeField.length === 0) throw new TypeError(`${where}: sizeField missing`);
      if (!isCount(f.multiplier) || f.multiplier === 0) throw new RangeError(`${where}: bad multiplier ${f.multiplier}`);
      return;
    case 'struct':
      checkVmsd(f.vmsd, seen);
      return;
    case 'validate':
      if (typeof f.exists !== 'function') throw new TypeError(`${where}: validate needs a test`);
      return;
    default:
      throw new TypeError(`${where}: unknown field kind ${(f as { kind: unknown }).kind}`);
  }
}

function checkVmsd(vmsd: VMStateDescription<any>, seen: Set<VMStateDescription<any>>): void {
  if (seen.has(vmsd)) throw new TypeError(`vmstate '${vmsd.name}' contains itself`);
  seen.add(vmsd);
  const nameBytes = textEncoder.encode(vmsd.name ?? '').length;
  if (typeof vmsd.name !== 'string' || nameBytes === 0 || nameBytes > MAX_NAME_BYTES) {
    throw new TypeError(`vmstate name must be 1..${MAX_NAME_BYTES} bytes: '${vmsd.name}'`);
  }
  if (!isCount(vmsd.version) || vmsd.version > 0xffffffff) throw new RangeError(`vmstate '${vmsd.name}': bad version ${vmsd.version}`);
  if (!isCount(vmsd.minimumVersion) || vmsd.minimumVersion > vmsd.version) {
    throw new RangeError(`vmstate '${vmsd.name}': minimumVersion ${vmsd.minimumVersion} must be 0..version`);
  }
  if (!Array.isArray(vmsd.fields)) throw new TypeError(`vmstate '${vmsd.name}': fields must be an array`);
  for (const f of vmsd.fields) checkField(vmsd, f, seen);
  const subNames = new Set<string>();
  for (const sub of vmsd.subsections ?? []) {
    // QEMU's loader only recognises subsections named "<parent>/..." (5.6).
    if (typeof sub.name !== 'string' || !sub.name.startsWith(`${vmsd.name}/`)) {
      throw new TypeError(`vmstate '${vmsd.name}': subsection name '${sub.name}' must start with '${vmsd.name}/'`);
    }
    if (subNames.has(sub.name)) throw new TypeError(`vmstate '${vmsd.name}': duplicate subsection '${sub.name}'`);
    subNames.add(sub.name);
    checkVmsd(sub, seen);
  }
  seen.delete(vmsd);
}

/**
 * Check a description (names, versions, counts, subsection names, no
 * self-nesting) and return it unchanged. Throws TypeError / RangeError.
 */
export function defineVmsd<T extends object = any>(vmsd: VMStateDescription<T>): VMStateDescription<T> {
  checkVmsd(vmsd, new Set());
  return vmsd;
}
