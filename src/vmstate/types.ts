/**
 * Declarative descriptions of device state, QEMU's VMStateDescription
 * (include/migration/vmstate.h) in TypeScript.
 *
 * A description lists the fields of a plain JS object ("opaque") in wire
 * order. Nothing but the section version is written on the wire: the reader
 * must hold the same description to make sense of the bytes, exactly as in
 * QEMU. Build fields with the `field` helpers in fields.ts rather than by hand.
 */

/** QEMU's MigrationPriority: higher priorities are saved first (2.6). */
export const MigrationPriority = {
  Default: 0,
  Iommu: 1,
  PciBus: 2,
  VirtioMem: 3,
  Gicv3Its: 4,
  Gicv3: 5,
  Max: 6,
} as const;
export type MigrationPriority = (typeof MigrationPriority)[keyof typeof MigrationPriority];

/** Integer wire types. 64-bit values are `bigint` in JS, narrower ones `number`. */
export type IntegerType = 'int8' | 'int16' | 'int32' | 'int64' | 'uint8' | 'uint16' | 'uint32' | 'uint64';

/**
 * Scalar wire types. `bool` is one byte (non-zero = true); `timer` is a
 * signed 64-bit expiry time in ns, -1n meaning "not pending".
 */
export type ScalarType = IntegerType | 'bool' | 'timer';

/** A scalar value as held in the state object. */
export type ScalarValue = number | bigint | boolean;

/** Size and range of each scalar type. */
export interface ScalarInfo {
  sizeBytes: 1 | 2 | 4 | 8;
  signed: boolean;
  /** True when the JS value is a bigint. */
  big: boolean;
  min: number | bigint;
  max: number | bigint;
}

export const SCALAR_INFO: Readonly<Record<ScalarType, ScalarInfo>> = {
  bool: { sizeBytes: 1, signed: false, big: false, min: 0, max: 1 },
  int8: { sizeBytes: 1, signed: true, big: false, min: -0x80, max: 0x7f },
  uint8: { sizeBytes: 1, signed: false, big: false, min: 0, max: 0xff },
  int16: { sizeBytes: 2, signed: true, big: false, min: -0x8000, max: 0x7fff },
  uint16: { sizeBytes: 2, signed: false, big: false, min: 0, max: 0xffff },
  int32: { sizeBytes: 4, signed: true, big: false, min: -0x80000000, max: 0x7fffffff },
  uint32: { sizeBytes: 4, signed: false, big: false, min: 0, max: 0xffffffff },
  int64: { sizeBytes: 8, signed: true, big: true, min: -(1n << 63n), max: (1n << 63n) - 1n },
  uint64: { sizeBytes: 8, signed: false, big: true, min: 0n, max: (1n << 64n) - 1n },
  timer: { sizeBytes: 8, signed: true, big: true, min: -(1n << 63n), max: (1n << 63n) - 1n },
};

/**
 * Extra load-time checks QEMU attaches to some scalar types:
 * - `equal`: the incoming value must equal the local one (VMSTATE_*_EQUAL);
 * - `le`: int32 only, accepted if 0 <= incoming <= local, then stored (VMSTATE_INT32_POSITIVE_LE).
 */
export type ScalarCheck = 'equal' | 'le';

/** Types QEMU has an "equal" variant for, with the name QEMU's vmdesc uses. */
export const EQUAL_TYPE_NAMES: Readonly<Partial<Record<ScalarType, string>>> = {
  uint8: 'uint8 equal',
  uint16: 'uint16 equal',
  int32: 'int32 equal',
  uint32: 'uint32 equal',
  uint64: 'int64 equal', // sic: QEMU's vmstate_info_uint64_equal is named "int64 equal"
};

/** Does a field exist at this version? When given, this test alone decides (QEMU's field_exists). */
export type ExistsTest = (obj: any, versionId: number) => boolean;

/** Attributes every field kind accepts. */
export interface FieldOptions {
  /** The field is on the wire only from this section version on (default 0: always). */
  fromVersion?: number;
  /** Overrides `fromVersion`: the field is on the wire when this returns true. */
  exists?: ExistsTest;
  /** Name in the vmdesc JSON when it differs from the property (QEMU names fields after C members, e.g. `env.eip`). */
  vmdescName?: string;
}

interface FieldBase extends FieldOptions {
  /** Property of the state object (for `unused`, only a label). */
  name: string;
}

/** One integer, bool or timer. */
export interface ScalarField extends FieldBase {
  kind: 'scalar';
  type: ScalarType;
  check?: ScalarCheck;
}

/**
 * How many elements an array has: a fixed `count` (VMSTATE_*_ARRAY), or the
 * current value of another property, `countField` (VMSTATE_VARRAY_*). On load
 * that property must already hold the incoming count, i.e. be an earlier field.
 */
export interface ElementCount {
  count?: number;
  countField?: string;
}

/** An array of scalars (a JS array; 64-bit elements are bigints). */
export interface ArrayField extends FieldBase, ElementCount {
  kind: 'array';
  type: ScalarType;
}

/** Raw bytes of a fixed size (a Uint8Array). */
export interface BufferField extends FieldBase {
  kind: 'buffer';
  sizeBytes: number;
}

/** Raw bytes whose size is another property's value times `multiplier` (VMSTATE_VBUFFER*). */
export interface VBufferField extends FieldBase {
  kind: 'vbuffer';
  sizeField: string;
  multiplier: number;
}

/** `sizeBytes` zero bytes on save, skipped on load: keeps an old layout (VMSTATE_UNUSED). */
export interface UnusedField extends FieldBase {
  kind: 'unused';
  sizeBytes: number;
}

/** A nested object described by `vmsd`, at that description's own version (not written). */
export interface StructField extends FieldBase {
  kind: 'struct';
  vmsd: VMStateDescription<any>;
}

/** An array of nested objects. */
export interface StructArrayField extends FieldBase, ElementCount {
  kind: 'structArray';
  vmsd: VMStateDescription<any>;
}

/**
 * A check on load with no bytes on the wire (VMSTATE_VALIDATE): loading fails
 * when `exists` (the test) returns false.
 */
export interface ValidateField extends FieldBase {
  kind: 'validate';
  exists: ExistsTest;
}

export type VMStateField =
  | ScalarField
  | ArrayField
  | BufferField
  | VBufferField
  | UnusedField
  | StructField
  | StructArrayField
  | ValidateField;

/**
 * The state of one device or subsystem. `T` is the state object's type.
 *
 * Subsections are descriptions too; their `needed` decides whether they are
 * sent (no `needed` = always), and their names must start with `<name>/`.
 * Hooks may throw to abort; `postSave` runs even if saving failed.
 */
export interface VMStateDescription<T extends object = any> {
  name: string;
  /** Version written when saving. */
  version: number;
  /** Oldest incoming version accepted when loading. */
  minimumVersion: number;
  /** Save order among sections (only the registry uses it); default MigrationPriority.Default. */
  priority?: number;
  fields: readonly VMStateField[];
  subsections?: readonly VMStateDescription<T>[];
  /** Top-level: is a section sent at all? Subsection: is it sent? */
  needed?(obj: T): boolean;
  preSave?(obj: T): void;
  postSave?(obj: T): void;
  preLoad?(obj: T): void | Promise<void>;
  /** After fields and subsections are loaded; `versionId` is the incoming version. */
  postLoad?(obj: T, versionId: number): void | Promise<void>;
}

/** Bounds on sizes and counts that come from the stream (or from vmdesc JSON). */
export const VMSTATE_LIMITS = {
  /** Largest variable buffer we accept (vbuffer sizes come from fields sent in the stream). */
  maxVbufferBytes: 256 * 1024 * 1024,
  /** Largest element count of a variable array. */
  maxArrayElements: 1 << 24,
} as const;

/** The state object as the codecs see it. */
export type VmstateObject = Record<string, unknown>;
