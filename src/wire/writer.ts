/**
 * A buffered big-endian writer onto a ByteSink.
 *
 * Writes are synchronous into a buffer of IO_BUF_SIZE bytes (QEMU's size);
 * full buffers queue up until `drain()` or `flush()` hands them to the sink, so
 * a producer decides where to wait (the migration loop drains between records
 * and flushes at section boundaries).
 */
import type { ByteSink } from './channel.js';
import { IO_BUF_SIZE } from './constants.js';

const textEncoder = new TextEncoder();

export class StreamWriter {
  private buffer: Uint8Array;
  private view: DataView;
  private position = 0;
  private readonly queued: Uint8Array[] = [];
  private queuedLength = 0;
  private flushedBytes = 0;

  constructor(private readonly sink: ByteSink, private readonly bufferBytes = IO_BUF_SIZE) {
    this.buffer = new Uint8Array(bufferBytes);
    this.view = new DataView(this.buffer.buffer);
  }

  /** Bytes written so far, whether or not they reached the sink. */
  get bytesWritten(): number {
    return this.flushedBytes + this.queuedLength + this.position;
  }

  /** Bytes written but not yet handed to the sink. */
  get pendingBytes(): number {
    return this.queuedLength + this.position;
  }

  private rotate(): void {
    this.queued.push(this.buffer.subarray(0, this.position));
    this.queuedLength += this.position;
    this.buffer = new Uint8Array(this.bufferBytes);
    this.view = new DataView(this.buffer.buffer);
    this.position = 0;
  }

  private room(n: number): void {
    if (this.bufferBytes - this.position < n) this.rotate();
  }

  u8(v: number): this {
    this.room(1);
    this.buffer[this.position++] = v;
    return this;
  }

  be16(v: number): this {
    this.room(2);
    this.view.setUint16(this.position, v);
    this.position += 2;
    return this;
  }

  be32(v: number): this {
    this.room(4);
    this.view.setUint32(this.position, v >>> 0);
    this.position += 4;
    return this;
  }

  /** A 64-bit value: a bigint (two's complement for negatives) or a non-negative safe integer. */
  be64(v: number | bigint): this {
    this.room(8);
    if (typeof v === 'bigint') {
      this.view.setBigUint64(this.position, BigInt.asUintN(64, v));
    } else {
      if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`be64: ${v} is not a non-negative safe integer`);
      this.view.setUint32(this.position, Math.floor(v / 0x100000000));
      this.view.setUint32(this.position + 4, v >>> 0);
    }
    this.position += 8;
    return this;
  }

  bytes(data: Uint8Array): this {
    let done = 0;
    while (done < data.length) {
      if (this.position === this.bufferBytes) this.rotate();
      const step = Math.min(data.length - done, this.bufferBytes - this.position);
      this.buffer.set(data.subarray(done, done + step), this.position);
      this.position += step;
      done += step;
    }
    return this;
  }

  /** A counted string: u8 length then the UTF-8 bytes (at most 255). */
  countedString(s: string): this {
    const encoded = textEncoder.encode(s);
    if (encoded.length > 255) throw new RangeError(`counted string too long (${encoded.length} bytes): ${s.slice(0, 40)}...`);
    this.u8(encoded.length);
    return this.bytes(encoded);
  }

  /** Hand full buffers to the sink, keeping the partial one. */
  async drain(): Promise<void> {
    while (this.queued.length > 0) {
      const chunk = this.queued.shift()!;
      this.queuedLength -= chunk.length;
      await this.sink.write(chunk);
      this.flushedBytes += chunk.length;
    }
  }

  /** Hand everything written so far to the sink. */
  async flush(): Promise<void> {
    if (this.position > 0) this.rotate();
    await this.drain();
  }

  /** Flush and close the sink. */
  async close(): Promise<void> {
    await this.flush();
    await this.sink.close();
  }
}
