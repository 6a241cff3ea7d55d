/**
 * Cuts a byte stream into top-level JSON texts, as QEMU's JSON lexer does for
 * QMP: requests need not be newline-separated, and a bad one must not poison
 * the ones after it.
 */
export type SplitItem = { json: string } | { error: string };

export class JsonSplitter {
  private text = '';
  private depth = 0;
  private inString = false;
  private escaped = false;
  private start = -1; // start of the current value, -1 when between values
  private scanned = 0;

  constructor(private readonly maxBytes = 1 << 20) {}

  /** Feed text; returns the complete values (and errors) found so far. */
  push(chunk: string): SplitItem[] {
    this.text += chunk;
    const out: SplitItem[] = [];
    let i = this.scanned;
    for (; i < this.text.length; i++) {
      const c = this.text[i]!;
      if (this.start < 0) {
        if (c === '{' || c === '[') {
          this.start = i;
          this.depth = 1;
        } else if (c.trim() !== '') {
          // Garbage between values: report it once per line and skip the line.
          const nl = this.text.indexOf('\n', i);
          const end = nl < 0 ? this.text.length : nl + 1;
          out.push({ error: `JSON parse error, invalid token '${this.text.slice(i, Math.min(end, i + 32)).trim()}'` });
          i = end - 1;
        }
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === '\\') this.escaped = true;
        else if (c === '"') this.inString = false;
      } else if (c === '"') this.inString = true;
      else if (c === '{' || c === '[') this.depth++;
      else if (c === '}' || c === ']') {
        if (--this.depth === 0) {
          out.push({ json: this.text.slice(this.start, i + 1) });
          this.start = -1;
        }
      }
    }
    // Keep only what is still needed.
    const keepFrom = this.start >= 0 ? this.start : i;
    this.text = this.text.slice(keepFrom);
    if (this.start >= 0) this.start = 0;
    this.scanned = this.text.length;
    if (this.text.length > this.maxBytes) {
      this.text = '';
      this.start = -1;
      this.depth = 0;
      this.inString = this.escaped = false;
      this.scanned = 0;
      out.push({ error: `JSON parse error, request larger than ${this.maxBytes} bytes` });
    }
    return out;
  }
}
