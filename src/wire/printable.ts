/**
 * Strings that came from outside (a migration stream, a QMP client) go into
 * error messages that end up on an operator's terminal. Raw, an idstr holding
 * `ESC]0;...BEL` retitles it and `ESC[2J` clears it; bidi overrides reorder
 * what is shown. printable() makes such a string inert and visible. Pure, no
 * Node APIs: the core also runs in browsers.
 */

/** Bidi controls that reorder displayed text (embeddings, overrides, isolates, marks). */
function isBidiControl(code: number): boolean {
  return (code >= 0x202a && code <= 0x202e) || (code >= 0x2066 && code <= 0x2069) || code === 0x200e || code === 0x200f || code === 0x061c;
}

const hex2 = (code: number): string => `\\x${code.toString(16).padStart(2, '0')}`;
const unicode = (code: number): string => `\\u{${code.toString(16)}}`;

/**
 * `text` with C0/C1 controls and DEL as `\xNN`, lone surrogates and bidi
 * controls as `\u{...}`, and backslash as `\\` (so an escaped form in the
 * input cannot pass for an escape). Everything else is kept as is.
 */
export function printable(text: string): string {
  let out = '';
  let clean = 0; // start of the run of characters kept as they are
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    let escaped: string | undefined;
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) escaped = hex2(code);
    else if (code === 0x5c) escaped = '\\\\';
    else if (isBidiControl(code)) escaped = unicode(code);
    else if (code >= 0xd800 && code <= 0xdbff) {
      const next = i + 1 < text.length ? text.charCodeAt(i + 1) : 0;
      if (next >= 0xdc00 && next <= 0xdfff) i++; // a pair: one astral character, kept
      else escaped = unicode(code);
    } else if (code >= 0xdc00 && code <= 0xdfff) escaped = unicode(code);
    if (escaped === undefined) continue;
    out += text.slice(clean, i) + escaped;
    clean = i + 1;
  }
  return clean === 0 ? text : out + text.slice(clean);
}
