/**
 * QMP requests parsed with the number types QEMU 7.2's JSON parser gives
 * them. QEMU reads a number written with a fraction or an exponent (`1.0`,
 * `1e3`, `-0.0`), or an integer beyond both int64 and uint64, as a double,
 * and its input visitor refuses a double wherever an integer is expected:
 * `migrate-set-parameters {"downtime-limit": 1.0}` answers "Parameter
 * 'downtime-limit' expects uint64". JSON.parse cannot tell `1.0` from `1`,
 * so such numbers come back from parseQmpRequest() as QmpFloat, and every
 * check that wants a number (`typeof v === 'number'`) refuses them as QEMU
 * does; integers come back as numbers. A QmpFloat prints as its number
 * (toJSON: an echoed `id`).
 */
import { randomUUID } from 'node:crypto';

/** A number the client wrote as a double (see above). */
export class QmpFloat {
  constructor(readonly value: number) {}
  toJSON(): number {
    return this.value;
  }
}

/** A JSON object member, not an array, null or a QmpFloat. */
export function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof QmpFloat);
}

/** A JSON number token, as the grammar has it (matched where a token may start). */
const NUMBER_TOKEN = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
/** Characters that would continue a malformed number: such text is left as it is, for JSON.parse to refuse. */
const NUMBER_CHARS = /[0-9.eE+-]/;
const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

/**
 * Stands in for a double in the rewritten text: a string JSON.parse's reviver
 * turns back into a QmpFloat. Random per process, so no client string can
 * pass for one; its first character (NUL) is written as an escape.
 */
const MARKER = `\u0000livemig-float-${randomUUID()}:`;
const MARKER_IN_JSON = `\\u0000${MARKER.slice(1)}`;

/** QEMU's reading of an integer token: int64, else uint64, else a double. */
function isDoubleToken(token: string): boolean {
  if (/[.eE]/.test(token)) return true;
  const digits = token.startsWith('-') ? token.length - 1 : token.length;
  if (digits < 19) return false;
  if (digits > 20) return true;
  const n = BigInt(token);
  return n < INT64_MIN || n > UINT64_MAX;
}

/**
 * JSON.parse(text), except that numbers QEMU reads as doubles are QmpFloat.
 * Throws JSON.parse's own SyntaxError for text that is not JSON.
 */
export function parseQmpRequest(text: string): unknown {
  let rewritten: string | undefined;
  let copiedUpTo = 0;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (ch === 0x22 /* " */) {
      // Skip the string, escapes included; an unterminated one runs to the end (JSON.parse refuses it).
      for (i++; i < text.length && text.charCodeAt(i) !== 0x22; i++) if (text.charCodeAt(i) === 0x5c /* \ */) i++;
      continue;
    }
    if (ch !== 0x2d /* - */ && !(ch >= 0x30 && ch <= 0x39)) continue;
    NUMBER_TOKEN.lastIndex = i;
    const token = NUMBER_TOKEN.exec(text)?.[0];
    if (token === undefined) continue;
    const end = i + token.length;
    if (end < text.length && NUMBER_CHARS.test(text[end]!)) {
      i = end;
      continue;
    }
    if (isDoubleToken(token)) {
      rewritten = (rewritten ?? '') + text.slice(copiedUpTo, i) + `"${MARKER_IN_JSON}${token}"`;
      copiedUpTo = end;
    }
    i = end - 1;
  }
  if (rewritten === undefined) return JSON.parse(text);
  rewritten += text.slice(copiedUpTo);
  try {
    return JSON.parse(rewritten, (key, value: unknown) => {
      // A number where a member name must be is not JSON: refused below with JSON.parse's words for the original.
      if (key.startsWith(MARKER)) throw new SyntaxError('a number as a member name');
      return typeof value === 'string' && value.startsWith(MARKER) ? new QmpFloat(Number(value.slice(MARKER.length))) : value;
    });
  } catch (err) {
    JSON.parse(text); // throws the error the client's own text deserves
    throw err;
  }
}
