/**
 * `block-bitmap-mapping` (QEMU 7.2's BitmapMigrationNodeAliasList) read and
 * checked as QEMU does, in its words, so a malformed mapping gets QEMU's
 * answer from livemig too: first its QMP input visitor (each element a
 * struct; a missing, mistyped or unexpected member named by its path,
 * `block-bitmap-mapping[0].bitmaps[1].alias`), then migrate_params_check's
 * check_dirty_bitmap_mig_alias_map (well-formed aliases, lengths, nothing
 * mapped twice). livemig migrates no dirty bitmaps, so a mapping that
 * passes is then refused unless empty (config.ts, the default-only rule).
 */
import { printable } from '../wire/printable.js';
import { utf8ByteLength } from '../wire/writer.js';

export interface BitmapMigrationBitmapAlias {
  name: string;
  alias: string;
  transform?: { persistent?: boolean };
}

export interface BitmapMigrationNodeAlias {
  'node-name': string;
  alias: string;
  bitmaps: BitmapMigrationBitmapAlias[];
}

/**
 * A struct member: its name, its kind (what QEMU's visitor names when the
 * value is not one), whether it may be left out, and for a struct or a list
 * of structs the members of those.
 */
interface Member {
  name: string;
  kind: 'string' | 'boolean' | 'struct' | 'list of structs';
  optional?: true;
  members?: readonly Member[];
}

const TRANSFORM_MEMBERS: readonly Member[] = [{ name: 'persistent', kind: 'boolean', optional: true }];
const BITMAP_MEMBERS: readonly Member[] = [
  { name: 'name', kind: 'string' },
  { name: 'alias', kind: 'string' },
  { name: 'transform', kind: 'struct', optional: true, members: TRANSFORM_MEMBERS },
];
const NODE_MEMBERS: readonly Member[] = [
  { name: 'node-name', kind: 'string' },
  { name: 'alias', kind: 'string' },
  { name: 'bitmaps', kind: 'list of structs', members: BITMAP_MEMBERS },
];

/** Thrown with QEMU's text (a GenericError over QMP). */
export class BitmapMappingError extends Error {}

function isObject(value: unknown): value is Record<string, unknown> {
  // A plain object (not an array, null, or a number the QMP parser boxed: a class instance).
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const prototype: unknown = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

function typeError(path: string, expected: string): BitmapMappingError {
  return new BitmapMappingError(`Invalid parameter type for '${printable(path)}', expected: ${expected}`);
}

/** A list of structs: each element in turn, named by its index. */
function visitList(path: string, value: unknown, members: readonly Member[]): void {
  if (!Array.isArray(value)) throw typeError(path, 'array');
  value.forEach((item, i) => visitStruct(`${path}[${i}]`, item, members));
}

/** A struct's members in QAPI order, then any member it does not have (QEMU's visit_check_struct). */
function visitStruct(path: string, value: unknown, members: readonly Member[]): void {
  if (!isObject(value)) throw typeError(path, 'object');
  for (const member of members) {
    const memberPath = `${path}.${member.name}`;
    if (!Object.hasOwn(value, member.name)) {
      if (member.optional) continue;
      throw new BitmapMappingError(`Parameter '${printable(memberPath)}' is missing`);
    }
    const item = value[member.name];
    if (member.kind === 'string' && typeof item !== 'string') throw typeError(memberPath, 'string');
    if (member.kind === 'boolean' && typeof item !== 'boolean') throw typeError(memberPath, 'boolean');
    if (member.kind === 'struct') visitStruct(memberPath, item, member.members!);
    if (member.kind === 'list of structs') visitList(memberPath, item, member.members!);
  }
  const unexpected = Object.keys(value).find((key) => !members.some((member) => member.name === key));
  if (unexpected !== undefined) throw new BitmapMappingError(`Parameter '${printable(`${path}.${unexpected}`)}' is unexpected`);
}

/** QEMU's QMP visitor over the value of `name` (block-bitmap-mapping): the mapping, or BitmapMappingError. */
export function visitBitmapMapping(name: string, value: unknown): BitmapMigrationNodeAlias[] {
  visitList(name, value, NODE_MEMBERS);
  return value as BitmapMigrationNodeAlias[];
}

/** QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_' (ASCII). */
function idWellFormed(id: string): boolean {
  return /^[A-Za-z][A-Za-z0-9._-]*$/.test(id);
}

/** QEMU's bounds: a node name fits BlockDriverState.node_name (32 bytes with its NUL), aliases a counted string. */
const MAX_NODE_NAME_BYTES = 31;
const MAX_ALIAS_BYTES = 255;
const MAX_BITMAP_NAME_BYTES = 1023;

/**
 * QEMU 7.2's check_dirty_bitmap_mig_alias_map: construct_alias_map() from
 * names to aliases, then from aliases to names. The reason a mapping is
 * refused (migrate_params_check prefixes it), or undefined.
 */
export function bitmapMappingFault(mapping: readonly BitmapMigrationNodeAlias[]): string | undefined {
  for (const nameToAlias of [true, false]) {
    const nodes = new Set<string>();
    for (const node of mapping) {
      if (!idWellFormed(node.alias)) return `The node alias '${printable(node.alias)}' is not well-formed`;
      if (utf8ByteLength(node.alias) > MAX_ALIAS_BYTES) return `The node alias '${printable(node.alias)}' is longer than ${MAX_ALIAS_BYTES} bytes`;
      if (utf8ByteLength(node['node-name']) > MAX_NODE_NAME_BYTES) return `The node name '${printable(node['node-name'])}' is longer than ${MAX_NODE_NAME_BYTES} bytes`;
      const nodeFrom = nameToAlias ? node['node-name'] : node.alias;
      if (nodes.has(nodeFrom)) return nameToAlias ? `The node name '${printable(nodeFrom)}' is mapped twice` : `The node alias '${printable(nodeFrom)}' is used twice`;
      nodes.add(nodeFrom);
      const bitmaps = new Set<string>();
      for (const bitmap of node.bitmaps) {
        if (utf8ByteLength(bitmap.alias) > MAX_ALIAS_BYTES) return `The bitmap alias '${printable(bitmap.alias)}' is longer than ${MAX_ALIAS_BYTES} bytes`;
        if (utf8ByteLength(bitmap.name) > MAX_BITMAP_NAME_BYTES) return `The bitmap name '${printable(bitmap.name)}' is longer than ${MAX_BITMAP_NAME_BYTES} bytes`;
        const bitmapFrom = nameToAlias ? bitmap.name : bitmap.alias;
        if (bitmaps.has(bitmapFrom)) {
          return nameToAlias ? `The bitmap '${printable(node['node-name'])}'/'${printable(bitmapFrom)}' is mapped twice` : `The bitmap alias '${printable(node.alias)}'/'${printable(bitmapFrom)}' is used twice`;
        }
        bitmaps.add(bitmapFrom);
      }
    }
  }
  return undefined;
}
