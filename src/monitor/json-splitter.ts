/**
 * Cuts a QMP byte stream into top-level JSON texts, as QEMU's JSON streamer
 * does: requests need not be newline-separated, and a bad one must not poison
 * the ones after it.
 *
 * Works on bytes, not on decoded text: each complete value is decoded on its
 * own with a fatal UTF-8 decoder, so invalid UTF-8 is a parse error of that
 * request (as in QEMU) instead of U+FFFD smuggled into a command name.
 *
 * Memory is bounded: a value larger than `maxBytes` (or nested deeper than
 * MAX_NESTING) yields one error, then the rest of it is skipped by tracking
 * depth and strings without storing it; garbage between values is skipped up
 * to the next newline, also without storing it.
 */
import { printable } from '../wire/printable.js';

export type SplitItem = { json: string } | { error: string };

/** QEMU's json-streamer MAX_NESTING. */
export const MAX_NESTING = 1024;

const OPEN_BRACE = 0x7b;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACE = 0x7d;
const CLOSE_BRACKET = 0x5d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const NEWLINE = 0x0a;
const isSpace = (b: number): boolean => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;

/** Between values; inside a value being kept; inside one being skipped; skipping garbage to a newline. */
type Mode = 'between' | 'value' | 'skip-value' | 'skip-line';

export class JsonSplitter {
  private mode: Mode = 'between';
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** Pieces of the current value (mode 'value') and their total size. */
  private pieces: Buffer[] = [];
  private valueBytes = 0;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  constructor(private readonly maxBytes = 1 << 20) {}

  /** Feed bytes; returns the complete values (and errors) found in them. */
  push(chunk: Uint8Array): SplitItem[] {
    const out: SplitItem[] = [];
    let valueStart = this.mode === 'value' ? 0 : -1; // where the current value starts in this chunk
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (this.mode === 'between') {
        if (b === OPEN_BRACE || b === OPEN_BRACKET) {
          this.mode = 'value';
          this.depth = 1;
          this.inString = this.escaped = false;
          valueStart = i;
        } else if (!isSpace(b)) {
          const end = chunk.indexOf(NEWLINE, i);
          const token = new TextDecoder().decode(chunk.subarray(i, Math.min(end < 0 ? chunk.length : end, i + 32))).trim();
          out.push({ error: `JSON parse error, invalid token '${printable(token)}'` });
          if (end < 0) {
            this.mode = 'skip-line';
            break;
          }
          i = end;
        }
        continue;
      }
      if (this.mode === 'skip-line') {
        const end = chunk.indexOf(NEWLINE, i);
        if (end < 0) break;
        this.mode = 'between';
        i = end;
        continue;
      }
      // 'value' or 'skip-value': track strings and depth.
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (b === BACKSLASH) this.escaped = true;
        else if (b === QUOTE) this.inString = false;
        continue;
      }
      if (b === QUOTE) this.inString = true;
      else if (b === OPEN_BRACE || b === OPEN_BRACKET) {
        if (++this.depth > MAX_NESTING && this.mode === 'value') {
          this.abandonValue(out, 'JSON nesting depth limit exceeded');
          valueStart = -1;
        }
      } else if (b === CLOSE_BRACE || b === CLOSE_BRACKET) {
        if (--this.depth > 0) continue;
        if (this.mode === 'value') {
          this.keep(chunk.subarray(valueStart, i + 1));
          out.push(this.finishValue());
        }
        this.mode = 'between';
        valueStart = -1;
      }
      if (this.mode === 'value' && this.valueBytes + (i + 1 - valueStart) > this.maxBytes) {
        this.abandonValue(out, `JSON parse error, request larger than ${this.maxBytes} bytes`);
        valueStart = -1;
      }
    }
    if (this.mode === 'value') {
      this.keep(chunk.subarray(valueStart));
      if (this.valueBytes > this.maxBytes) this.abandonValue(out, `JSON parse error, request larger than ${this.maxBytes} bytes`);
    }
    return out;
  }

  private keep(piece: Uint8Array): void {
    // A copy: the socket's chunk may be reused, and a small value must not pin a 64 KiB chunk.
    this.pieces.push(Buffer.from(piece));
    this.valueBytes += piece.length;
  }

  /** One error for the value, then skip the rest of it without storing it. */
  private abandonValue(out: SplitItem[], error: string): void {
    out.push({ error });
    this.pieces = [];
    this.valueBytes = 0;
    this.mode = 'skip-value';
  }

  private finishValue(): SplitItem {
    const bytes = Buffer.concat(this.pieces, this.valueBytes);
    this.pieces = [];
    this.valueBytes = 0;
    try {
      return { json: this.decoder.decode(bytes) };
    } catch {
      // QEMU's json-parser text for the same input.
      return { error: 'JSON parse error, invalid UTF-8 sequence in string' };
    }
  }
}
