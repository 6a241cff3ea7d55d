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

/** A member's kind: what QEMU's visitor names when the value is not one. */
type Member = readonly [name: string, kind: 'string' | 'boolean' | 'object' | 'array', optional?: 'optional'];

const NODE_MEMBERS: readonly Member[] = [['node-name', 'string'], ['alias', 'string'], ['bitmaps', 'array']];
const BITMAP_MEMBERS: readonly Member[] = [['name', 'string'], ['alias', 'string'], ['transform', 'object', 'optional']];
const TRANSFORM_MEMBERS: readonly Member[] = [['persistent', 'boolean', 'optional']];

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

/** A struct's members in QAPI order, then any member it does not have (QEMU's visit_check_struct). */
function visitStruct(path: string, value: unknown, members: readonly Member[], visitArray?: (path: string, items: unknown[]) => void): void {
  if (!isObject(value)) throw typeError(path, 'object');
  for (const [name, kind, optional] of members) {
    const memberPath = `${path}.${name}`;
    if (!Object.hasOwn(value, name)) {
      if (optional) continue;
      throw new BitmapMappingError(`Parameter '${printable(memberPath)}' is missing`);
    }
    const member = value[name];
    if (kind === 'string' && typeof member !== 'string') throw typeError(memberPath, 'string');
    if (kind === 'boolean' && typeof member !== 'boolean') throw typeError(memberPath, 'boolean');
    if (kind === 'array') {
      if (!Array.isArray(member)) throw typeError(memberPath, 'array');
      visitArray?.(memberPath, member);
    }
    if (kind === 'object') visitStruct(memberPath, member, TRANSFORM_MEMBERS);
  }
  const unexpected = Object.keys(value).find((key) => !members.some(([name]) => name === key));
  if (unexpected !== undefined) throw new BitmapMappingError(`Parameter '${printable(`${path}.${unexpected}`)}' is unexpected`);
}

/** QEMU's QMP visitor over the value of `name` (block-bitmap-mapping): the mapping, or BitmapMappingError. */
export function visitBitmapMapping(name: string, value: unknown): BitmapMigrationNodeAlias[] {
  if (!Array.isArray(value)) throw typeError(name, 'array');
  value.forEach((node, i) =>
    visitStruct(`${name}[${i}]`, node, NODE_MEMBERS, (bitmapsPath, bitmaps) => bitmaps.forEach((bitmap, j) => visitStruct(`${bitmapsPath}[${j}]`, bitmap, BITMAP_MEMBERS))),
  );
  return value as BitmapMigrationNodeAlias[];
}

/** QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_' (ASCII). */
function idWellFormed(id: string): boolean {
  return /^[A-Za-z][A-Za-z0-9._-]*$/.test(id);
}

const utf8Bytes = (text: string): number => new TextEncoder().encode(text).length;
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
      const show = (text: string): string => printable(text);
      if (!idWellFormed(node.alias)) return `The node alias '${show(node.alias)}' is not well-formed`;
      if (utf8Bytes(node.alias) > MAX_ALIAS_BYTES) return `The node alias '${show(node.alias)}' is longer than ${MAX_ALIAS_BYTES} bytes`;
      if (utf8Bytes(node['node-name']) > MAX_NODE_NAME_BYTES) return `The node name '${show(node['node-name'])}' is longer than ${MAX_NODE_NAME_BYTES} bytes`;
      const nodeFrom = nameToAlias ? node['node-name'] : node.alias;
      if (nodes.has(nodeFrom)) return nameToAlias ? `The node name '${show(nodeFrom)}' is mapped twice` : `The node alias '${show(nodeFrom)}' is used twice`;
      nodes.add(nodeFrom);
      const bitmaps = new Set<string>();
      for (const bitmap of node.bitmaps) {
        if (utf8Bytes(bitmap.alias) > MAX_ALIAS_BYTES) return `The bitmap alias '${show(bitmap.alias)}' is longer than ${MAX_ALIAS_BYTES} bytes`;
        if (utf8Bytes(bitmap.name) > MAX_BITMAP_NAME_BYTES) return `The bitmap name '${show(bitmap.name)}' is longer than ${MAX_BITMAP_NAME_BYTES} bytes`;
        const bitmapFrom = nameToAlias ? bitmap.name : bitmap.alias;
        if (bitmaps.has(bitmapFrom)) {
          return nameToAlias ? `The bitmap '${show(node['node-name'])}'/'${show(bitmapFrom)}' is mapped twice` : `The bitmap alias '${show(node.alias)}'/'${show(bitmapFrom)}' is used twice`;
        }
        bitmaps.add(bitmapFrom);
      }
    }
  }
  return undefined;
}
