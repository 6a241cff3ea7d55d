/** Rules shared by the encoder and the decoder (QEMU: migration/vmstate.c). */
import { EQUAL_TYPE_NAMES, type VMStateDescription, type VMStateField, type VmstateObject } from './types.js';

/**
 * Is the field on the wire at `versionId`? An `exists` test alone decides;
 * otherwise the field must be no newer than the version (vmstate_field_exists).
 */
export function fieldExists(f: VMStateField, obj: VmstateObject, versionId: number): boolean {
  if (f.exists) return Boolean(f.exists(obj, versionId));
  return (f.fromVersion ?? 0) <= versionId;
}

/** The `type` QEMU's vmdesc gives a field (vmfield_get_type_name plus the VMStateInfo names). */
export function vmdescTypeName(f: VMStateField): string {
  switch (f.kind) {
    case 'scalar':
      if (f.check === 'equal') return EQUAL_TYPE_NAMES[f.type] ?? 'unknown';
      if (f.check === 'le') return 'int32 le';
      return f.type;
    case 'array':
      return f.type;
    case 'buffer':
    case 'vbuffer':
      return 'buffer';
    case 'unused':
      return 'unused_buffer';
    case 'struct':
    case 'structArray':
      return 'struct';
    case 'validate':
      return 'unknown'; // never described: a validate field has no elements
  }
}

/**
 * May an array be described once for all its elements (`array_len`) rather
 * than once per element (`index`)? Not when elements could differ in shape:
 * existence tests, or structs with subsections (vmsd_can_compress).
 */
export function canCompress(f: VMStateField): boolean {
  if (f.exists) return false;
  if (f.kind === 'struct' || f.kind === 'structArray') {
    if (!f.vmsd.fields.every(canCompress)) return false;
    if (f.vmsd.subsections && f.vmsd.subsections.length > 0) return false;
  }
  return true;
}

/** The JSON name of a field: `name[n]` when several fields of the description share a name. */
export function vmdescFieldName(vmsd: VMStateDescription<any>, f: VMStateField): string {
  const name = f.vmdescName ?? f.name;
  let total = 0;
  let index = -1;
  for (const other of vmsd.fields) {
    if ((other.vmdescName ?? other.name) !== name) continue;
    if (other === f) index = total;
    total++;
  }
  return total > 1 ? `${name}[${index}]` : name;
}

/** A property as a count/size, or a description of what is wrong with it. */
export function asCount(value: unknown): number | string {
  if (typeof value === 'bigint') {
    if (value < 0n) return `negative (${value})`;
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) return `too large (${value})`;
    return Number(value);
  }
  if (typeof value === 'number' && Number.isSafeInteger(value)) return value < 0 ? `negative (${value})` : value;
  return `not an integer (${typeof value === 'object' ? 'object' : String(value)})`;
}
