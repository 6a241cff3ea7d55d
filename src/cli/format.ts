/** Small formatting helpers for the command line. */

// One formatBytes for the CLI, the report and the browser page (it lives with parseSize, in the core).
export { formatBytes } from '../migration/size.js';

export const hex = (n: number, width = 8): string => `0x${n.toString(16).padStart(width, '0')}`;

/**
 * Characters JSON.stringify leaves raw that a terminal acts on: DEL and the C1 controls (U+009B is
 * CSI, as ESC [), and the bidi controls that reorder what is shown; also U+2028/U+2029. `--json`
 * lines carry strings from outside (a guest's serial bytes, a peer's error text, a stream's idstrs)
 * and are often read on a terminal. Escaped as \uXXXX they parse back to the same value.
 */
const TERMINAL_ACTIVE = /[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** JSON.stringify, with the characters above escaped (only strings can hold them, so the JSON stays valid). */
export function jsonText(value: unknown, space?: number): string {
  return (JSON.stringify(value, null, space) ?? String(value)).replace(TERMINAL_ACTIVE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
