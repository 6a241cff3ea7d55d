/**
 * Argument checks for QMP commands, with QEMU's error texts: a missing,
 * mistyped or unexpected argument is a GenericError naming it.
 */
import { QmpCommandError, type QmpArguments } from './qmp-server.js';

type Kind = 'string' | 'bool' | 'int' | 'array' | 'object' | 'number';
const TYPE_NAMES: Record<Kind, string> = { string: 'string', bool: 'boolean', int: 'integer', array: 'array', object: 'object', number: 'number' };

function matches(kind: Kind, v: unknown): boolean {
  switch (kind) {
    case 'string':
      return typeof v === 'string';
    case 'bool':
      return typeof v === 'boolean';
    case 'int':
      return typeof v === 'number' && Number.isSafeInteger(v);
    case 'number':
      return typeof v === 'number' && Number.isFinite(v);
    case 'array':
      return Array.isArray(v);
    case 'object':
      return typeof v === 'object' && v !== null && !Array.isArray(v);
  }
}

/**
 * Check `args` against a schema `{ name: 'string' | 'string?' ... }` ('?' =
 * optional). Returns the arguments typed loosely for the caller to pick.
 */
export function checkArguments(args: QmpArguments, schema: Record<string, `${Kind}` | `${Kind}?`>): QmpArguments {
  for (const key of Object.keys(args)) {
    if (!(key in schema)) throw new QmpCommandError('GenericError', `Parameter '${key}' is unexpected`);
  }
  for (const [name, spec] of Object.entries(schema)) {
    const optional = spec.endsWith('?');
    const kind = spec.replace('?', '') as Kind;
    if (!(name in args)) {
      if (optional) continue;
      throw new QmpCommandError('GenericError', `Parameter '${name}' is missing`);
    }
    if (!matches(kind, args[name])) throw new QmpCommandError('GenericError', `Invalid parameter type for '${name}', expected: ${TYPE_NAMES[kind]}`);
  }
  return args;
}
