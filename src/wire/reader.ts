/**
 * A buffered big-endian reader over a ByteSource.
 *
 * Every read names how many bytes it needs; the reader pulls chunks until it
 * has them or the source ends, which raises UnexpectedEndError with the offset.
 * Lengths taken from the stream are always checked against an explicit bound
 * before anything is allocated for them.
 *
 * Chunks from the source are used in place: reads inside one chunk cost no
 * copy, and large reads into a caller's memory (readInto: RAM pages) copy
 * straight from each chunk. Only a small read that straddles two chunks
 * stitches the unread tail with just the bytes it needs from the next chunk;
 * the rest of that chunk waits in `pending` and is used in place afterwards.
 */
import type { ByteSource } from './channel.js';
import { StreamError, UnexpectedEndError } from './errors.js';
import { ALIGNED_COPY_MIN_BYTES, copyBytes } from './writer.js';

const EMPTY = new Uint8Array(0);
const textDecoder = new TextDecoder('utf-8');

export class StreamReader {
  private buffer: Uint8Array = EMPTY;
  private view: DataView = new DataView(EMPTY.buffer);
  private position = 0; // next unread byte in buffer
  private consumedBefore = 0; // stream offset of buffer[0]
  private ended = false;
  /** Chunks already taken from the source that follow `buffer` (in order). */
  private readonly pending: Uint8Array[] = [];
  private pendingHead = 0;
  /** The stream offset (mod 8) of the last page-sized copy out, as last told to the source (ByteSource.alignReads). */
  private copyOffsetMod8 = 0;

  constructor(private readonly source: ByteSource) {}

  /** Bytes consumed from the stream so far (the offset of the next byte). */
  get offset(): number {
    return this.consumedBefore + this.position;
  }

  /** Bytes buffered and readable by the *Sync methods without waiting. */
  get buffered(): number {
    return this.buffer.length - this.position;
  }

  private nextPending(): Uint8Array | undefined {
    if (this.pendingHead >= this.pending.length) return undefined;
    const chunk = this.pending[this.pendingHead]!;
    this.pending[this.pendingHead++] = EMPTY;
    if (this.pendingHead === this.pending.length) {
      this.pending.length = 0;
      this.pendingHead = 0;
    }
    return chunk;
  }

  private unshiftPending(chunk: Uint8Array): void {
    if (this.pendingHead > 0) this.pending[--this.pendingHead] = chunk;
    else this.pending.unshift(chunk);
  }

  private setBuffer(buffer: Uint8Array): void {
    this.buffer = buffer;
    this.position = 0;
    this.view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  }

  /**
   * Add `chunk` after the unread bytes so that (if it holds enough) `n` bytes
   * are contiguous. A fully read buffer is simply replaced by the chunk; an
   * unread tail is joined with only the bytes it lacks, the rest of the chunk
   * is kept for later.
   */
  private append(chunk: Uint8Array, n: number): void {
    const rest = this.buffer.length - this.position;
    if (rest === 0) {
      this.consumedBefore += this.buffer.length;
      this.setBuffer(chunk);
      return;
    }
    const take = Math.min(chunk.length, n - rest);
    // Views handed out earlier keep pointing at the old buffer, which is never written again.
    const joined = new Uint8Array(rest + take);
    joined.set(this.buffer.subarray(this.position), 0);
    joined.set(take === chunk.length ? chunk : chunk.subarray(0, take), rest);
    if (take < chunk.length) this.unshiftPending(chunk.subarray(take));
    this.consumedBefore += this.position;
    this.setBuffer(joined);
  }

  /**
   * Make `n` bytes readable synchronously from chunks already received; never
   * waits. False when more must come from the source first.
   */
  available(n: number): boolean {
    while (this.buffer.length - this.position < n) {
      const chunk = this.nextPending();
      if (chunk === undefined) return false;
      if (chunk.length > 0) this.append(chunk, n);
    }
    return true;
  }

  /** The next chunk: a pending one, else one from the source; null at the end. */
  private async nextChunk(): Promise<Uint8Array | null> {
    for (;;) {
      const pending = this.nextPending();
      if (pending !== undefined) {
        if (pending.length > 0) return pending;
        continue;
      }
      if (this.ended) return null;
      const chunk = await this.source.read();
      if (chunk === null) {
        this.ended = true;
        return null;
      }
      if (chunk.length > 0) return chunk;
    }
  }

  /** Make at least `n` bytes available; false if the stream ends first. */
  async tryEnsure(n: number): Promise<boolean> {
    const rest = this.buffer.length - this.position;
    if (rest >= n) return true;
    let chunk = await this.nextChunk();
    if (chunk === null) return false;
    if (rest + chunk.length >= n) {
      this.append(chunk, n);
      return true;
    }
    // Several chunks make up the n bytes (a 1 MiB block record from 64 KiB socket
    // reads): gather them into one buffer of n bytes, so each byte is copied once.
    const joined = new Uint8Array(n);
    joined.set(this.buffer.subarray(this.position), 0);
    let filled = rest;
    for (;;) {
      const take = Math.min(chunk.length, n - filled);
      joined.set(take === chunk.length ? chunk : chunk.subarray(0, take), filled);
      filled += take;
      if (take < chunk.length) this.unshiftPending(chunk.subarray(take));
      if (filled === n) break;
      const next = await this.nextChunk();
      if (next === null) break;
      chunk = next;
    }
    // Views handed out earlier keep pointing at the old buffer, which is never written again.
    this.consumedBefore += this.position;
    this.setBuffer(filled === n ? joined : joined.subarray(0, filled));
    return filled === n;
  }

  /** Make at least `n` bytes available or throw UnexpectedEndError. */
  async ensure(n: number): Promise<void> {
    if (this.buffer.length - this.position >= n) return;
    if (!(await this.tryEnsure(n))) throw new UnexpectedEndError(n, this.buffered, this.offset);
  }

  /** True when no byte is left in the stream. */
  async atEnd(): Promise<boolean> {
    if (this.buffer.length > this.position) return false;
    return !(await this.tryEnsure(1));
  }

  /** Up to `n` next bytes without consuming them (fewer only at end of stream). */
  async peek(n: number): Promise<Uint8Array> {
    await this.tryEnsure(n);
    return this.buffer.subarray(this.position, Math.min(this.position + n, this.buffer.length));
  }

  /** The next byte without consuming it, or -1 at end of stream. */
  async peekU8(): Promise<number> {
    if (!(await this.tryEnsure(1))) return -1;
    return this.buffer[this.position]!;
  }

  /*
   * Synchronous reads for hot loops: valid only when `buffered` covers them
   * (check it or available() first, or call ensure()). They skip the promise
   * machinery that dominates the cost of small records such as ZERO pages.
   */
  u8Sync(): number {
    if (this.position >= this.buffer.length) throw new RangeError('u8Sync past the buffered bytes');
    return this.buffer[this.position++]!;
  }

  /** The byte `ahead` bytes past the next one, without consuming anything (see u8Sync). */
  peekU8Sync(ahead = 0): number {
    if (this.buffer.length - this.position <= ahead) throw new RangeError('peekU8Sync past the buffered bytes');
    return this.buffer[this.position + ahead]!;
  }

  /** `n` buffered bytes as a view, consumed (see u8Sync). */
  bytesSync(n: number): Uint8Array {
    const at = this.position;
    if (this.buffer.length - at < n) throw new RangeError('bytesSync past the buffered bytes');
    this.position = at + n;
    return this.buffer.subarray(at, at + n);
  }

  be32Sync(): number {
    if (this.buffer.length - this.position < 4) throw new RangeError('be32Sync past the buffered bytes');
    const v = this.view.getUint32(this.position);
    this.position += 4;
    return v;
  }

  /** The be32 `ahead` bytes past the next one, without consuming anything (see u8Sync). */
  peekBe32Sync(ahead = 0): number {
    if (this.buffer.length - this.position < ahead + 4) throw new RangeError('peekBe32Sync past the buffered bytes');
    return this.view.getUint32(this.position + ahead);
  }

  /** Consume `n` buffered bytes (see u8Sync). */
  skipSync(n: number): void {
    if (this.buffer.length - this.position < n) throw new RangeError('skipSync past the buffered bytes');
    this.position += n;
  }

  /** Copy `n` buffered bytes into `target` at `targetOffset` (see u8Sync). */
  readIntoSync(target: Uint8Array, targetOffset: number, n: number): void {
    const at = this.position;
    const buffer = this.buffer;
    if (buffer.length - at < n) throw new RangeError('readIntoSync past the buffered bytes');
    if (n >= ALIGNED_COPY_MIN_BYTES) this.copiesFrom(this.consumedBefore + at);
    // A plain Uint8Array view: a Buffer's subarray() builds its view through the
    // species constructor, which costs more than the 4 KiB page copy's setup.
    copyBytes(target, targetOffset, new Uint8Array(buffer.buffer, buffer.byteOffset + at, n));
    this.position = at + n;
  }

  /**
   * The buffered bytes, for a caller that parses a run of small records
   * without a call per field (the RAM loader's pages): `bytes[start..]` is
   * readable now, `view` reads the same memory, and `bytes[0]` is at stream
   * offset `offset - start`. Consume what was parsed with skipSync(); valid
   * until the next call that reads. A caller that copies page-sized runs out
   * of it says where they start (copiesFrom).
   */
  window(): { bytes: Uint8Array; view: DataView; start: number } {
    return { bytes: this.buffer, view: this.view, start: this.position };
  }

  /**
   * Large copies out of the stream (pages) start at `streamOffset` from here
   * on: when its alignment changes, tell the source, so one that can lays
   * the next ones out 8-byte aligned (ByteSource.alignReads).
   */
  copiesFrom(streamOffset: number): void {
    const mod8 = streamOffset & 7;
    if (mod8 === this.copyOffsetMod8) return;
    this.copyOffsetMod8 = mod8;
    this.source.alignReads?.(mod8);
  }

  async u8(): Promise<number> {
    if (this.position >= this.buffer.length) await this.ensure(1);
    return this.buffer[this.position++]!;
  }

  async be16(): Promise<number> {
    if (this.buffer.length - this.position < 2) await this.ensure(2);
    const v = this.view.getUint16(this.position);
    this.position += 2;
    return v;
  }

  async be32(): Promise<number> {
    if (this.buffer.length - this.position < 4) await this.ensure(4);
    const v = this.view.getUint32(this.position);
    this.position += 4;
    return v;
  }

  async be64(): Promise<bigint> {
    if (this.buffer.length - this.position < 8) await this.ensure(8);
    const v = this.view.getBigUint64(this.position);
    this.position += 8;
    return v;
  }

  /**
   * A be64 as a JS number. Values above 2^53 cannot be represented exactly and
   * are rejected (RAM offsets and sizes never come near that).
   */
  async be64Number(what = 'value'): Promise<number> {
    const at = this.offset;
    if (this.buffer.length - this.position < 8) await this.ensure(8);
    const high = this.view.getUint32(this.position);
    const low = this.view.getUint32(this.position + 4);
    if (high > 0x1fffff) {
      throw new StreamError('too-large', `${what} 0x${high.toString(16)}${low.toString(16).padStart(8, '0')} exceeds 2^53`, { offset: at });
    }
    this.position += 8;
    return high * 0x100000000 + low;
  }

  /**
   * `n` bytes as a view (no copy). `maxBytes` bounds lengths that come from the
   * stream: a larger `n` is rejected before anything is allocated.
   */
  async bytes(n: number, maxBytes: number, what = 'field'): Promise<Uint8Array> {
    if (!Number.isInteger(n) || n < 0 || n > maxBytes) {
      throw new StreamError('too-large', `${what} length ${n} exceeds the limit of ${maxBytes} bytes`, { offset: this.offset });
    }
    if (this.buffer.length - this.position < n) await this.ensure(n);
    const out = this.buffer.subarray(this.position, this.position + n);
    this.position += n;
    return out;
  }

  /**
   * Copy `n` bytes into `target` at `targetOffset`, straight from each chunk
   * (nothing is joined or allocated, whatever `n` is). On a truncated stream
   * the error names the offset where this read started.
   */
  async readInto(target: Uint8Array, targetOffset: number, n: number): Promise<void> {
    if (this.buffer.length - this.position >= n) {
      this.readIntoSync(target, targetOffset, n);
      return;
    }
    if (targetOffset < 0 || targetOffset + n > target.length) throw new RangeError(`readInto: ${n} bytes at ${targetOffset} do not fit a target of ${target.length}`);
    const startOffset = this.offset;
    let done = 0;
    for (;;) {
      const step = Math.min(n - done, this.buffer.length - this.position);
      if (step > 0) {
        copyBytes(target, targetOffset + done, this.buffer.subarray(this.position, this.position + step));
        this.position += step;
        done += step;
      }
      if (done === n) return;
      const chunk = await this.nextChunk();
      if (chunk === null) throw new UnexpectedEndError(n, done, startOffset);
      this.consumedBefore += this.buffer.length;
      this.setBuffer(chunk);
    }
  }

  /** Skip `n` bytes without keeping them (bounded memory whatever `n` is). */
  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.position >= this.buffer.length) await this.ensure(1);
      const step = Math.min(left, this.buffer.length - this.position);
      this.position += step;
      left -= step;
    }
  }

  /** A counted string: u8 length then that many bytes (QEMU's idstr encoding). */
  async countedString(): Promise<string> {
    const n = await this.u8();
    return textDecoder.decode(await this.bytes(n, 255, 'string'));
  }

  /**
   * Take every byte this reader holds but has not consumed (the unread part of
   * the current chunk and chunks waiting behind it), in order; the reader is
   * then empty, its source untouched. For handing a connection over after
   * peeking at it.
   */
  takeBuffered(): Uint8Array[] {
    const chunks: Uint8Array[] = [];
    if (this.buffer.length > this.position) chunks.push(this.buffer.subarray(this.position));
    this.consumedBefore += this.buffer.length;
    this.setBuffer(EMPTY);
    for (let chunk = this.nextPending(); chunk !== undefined; chunk = this.nextPending()) if (chunk.length > 0) chunks.push(chunk);
    return chunks;
  }

  async close(): Promise<void> {
    await this.source.close();
  }
}
