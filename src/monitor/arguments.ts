/**
 * Argument checks for QMP commands, with QEMU's error texts: a missing,
 * mistyped or unexpected argument is a GenericError naming it.
 *
 * Every command declares its schema (QmpCommandDefinition.args) and the
 * server checks it before the command runs, so no command can forget to
 * refuse unexpected arguments. Names are looked up as own properties only:
 * `constructor` or `__proto__` is no argument of anything.
 */
import { printable } from '../wire/printable.js';
import { isJsonObject } from './qmp-parse.js';

/** Thrown for arguments that do not match the schema; the server replies GenericError with its message. */
export class QmpArgumentError extends Error {}

export type ArgumentKind = 'string' | 'bool' | 'int' | 'array' | 'object' | 'any';
/** Argument name → kind; a trailing '?' makes it optional. */
export type ArgumentSchema = Readonly<Record<string, ArgumentKind | `${ArgumentKind}?`>>;

const TYPE_NAMES: Record<ArgumentKind, string> = {
  string: 'string', bool: 'boolean', int: 'integer', array: 'array', object: 'object', any: 'any',
};

function matches(kind: ArgumentKind, v: unknown): boolean {
  switch (kind) {
    case 'string':
      return typeof v === 'string';
    case 'bool':
      return typeof v === 'boolean';
    case 'int':
      // Not a QmpFloat (qmp-parse.ts): QEMU's visitor refuses a number written as a double (1.0) where it wants an integer.
      return typeof v === 'number' && Number.isSafeInteger(v);
    case 'array':
      return Array.isArray(v);
    case 'object':
      return isJsonObject(v);
    case 'any':
      return true;
  }
}

/**
 * Check `args` against `schema`; throws QmpArgumentError. Returns the
 * arguments typed loosely for the caller to pick.
 */
export function checkArguments(args: Readonly<Record<string, unknown>>, schema: ArgumentSchema): Record<string, unknown> {
  for (const key of Object.keys(args)) {
    if (!Object.hasOwn(schema, key)) throw new QmpArgumentError(`Parameter '${printable(key)}' is unexpected`);
  }
  for (const [name, spec] of Object.entries(schema)) {
    const optional = spec.endsWith('?');
    const kind = spec.replace('?', '') as ArgumentKind;
    if (!Object.hasOwn(args, name)) {
      if (optional) continue;
      throw new QmpArgumentError(`Parameter '${name}' is missing`);
    }
    if (!matches(kind, args[name])) throw new QmpArgumentError(`Invalid parameter type for '${name}', expected: ${TYPE_NAMES[kind]}`);
  }
  return args as Record<string, unknown>;
}
