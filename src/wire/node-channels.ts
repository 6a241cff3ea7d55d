/**
 * Byte channels over Node files and streams. Node-only, so not exported from
 * wire/index.ts (the core, which also runs in a browser): import them from
 * here.
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import { unwrittenPieces, type ByteSink, type ByteSource } from './channel.js';
import { ChannelError } from './errors.js';
import { allocateBytes } from './native-bytes.js';

export interface FileSourceOptions {
  /** Bytes per read (default 1 MiB). */
  chunkBytes?: number;
  /**
   * Read into this many buffers in turn instead of a fresh one per read:
   * for a consumer that lets go of a chunk's views within that many chunks,
   * as the migration loader does (it copies pages into guest RAM at once; the
   * socket's receive ring asks the same of it). Unset: every chunk is fresh
   * and the consumer may keep views (the analyzer does). A fresh zeroed
   * 1 MiB per read cost a 1 GiB load ~0.3 s of zeroing and garbage collection.
   */
  ringChunks?: number;
}

export class FileSource implements ByteSource {
  /** The ring's buffers, each allocated at its first use (a short file needs one or two of them). */
  private readonly ring: Array<Uint8Array | undefined> | undefined;
  private nextInRing = 0;
  /** Stream bytes read so far (the offset of the next one). */
  private position = 0;
  /** See alignReads(). */
  private pageOffsetMod8 = 0;
  private closed = false;

  private constructor(private readonly handle: FileHandle, private readonly chunkBytes: number, ringChunks: number | undefined) {
    this.ring = ringChunks ? new Array<Uint8Array | undefined>(ringChunks).fill(undefined) : undefined;
  }

  static async open(path: string, options: FileSourceOptions = {}): Promise<FileSource> {
    try {
      return new FileSource(await open(path, 'r'), options.chunkBytes ?? 1 << 20, options.ringChunks);
    } catch (err) {
      throw new ChannelError(`cannot open ${path} for reading: ${(err as Error).message}`, { cause: err });
    }
  }

  /** ByteSource.alignReads: each read lands 0-7 bytes into its buffer so that such offsets sit 8-byte aligned. */
  alignReads(streamOffsetMod8: number): void {
    this.pageOffsetMod8 = streamOffsetMod8 & 7;
  }

  async read(): Promise<Uint8Array | null> {
    if (this.closed) return null;
    // Each buffer starts 8-aligned (its own allocation): a byte at offset S lands at skip + S - position.
    const skip = (this.position - this.pageOffsetMod8) & 7;
    const chunk = this.ring ? (this.ring[this.nextInRing++ % this.ring.length] ??= allocateBytes(this.chunkBytes + 8)) : allocateBytes(this.chunkBytes + skip);
    const { bytesRead } = await this.handle.read(chunk, skip, this.chunkBytes, null);
    if (bytesRead === 0) return null;
    this.position += bytesRead;
    return chunk.subarray(skip, skip + bytesRead);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

export class FileSink implements ByteSink {
  private constructor(private readonly handle: FileHandle) {}
  static async create(path: string): Promise<FileSink> {
    try {
      return new FileSink(await open(path, 'w'));
    } catch (err) {
      throw new ChannelError(`cannot open ${path} for writing: ${(err as Error).message}`, { cause: err });
    }
  }
  private closed = false;
  async write(chunk: Uint8Array): Promise<void> {
    let done = 0;
    while (done < chunk.length) {
      const { bytesWritten } = await this.handle.write(chunk, done, chunk.length - done);
      done += bytesWritten;
    }
  }
  /** ByteSink.writeLent: the chunk is the writer's again once the write settled (its slab is reused, not garbage). */
  async writeLent(chunk: Uint8Array, release: () => void): Promise<void> {
    try {
      await this.write(chunk);
    } finally {
      release();
    }
  }
  /** ByteSink.writeGather: one writev per call (guest pages in place, as on a socket); a short write goes on from where it stopped. */
  async writeGather(pieces: readonly Uint8Array[]): Promise<void> {
    let left = pieces;
    while (left.length > 0) {
      const { bytesWritten } = await this.handle.writev(left as Uint8Array[]);
      if (bytesWritten === 0) throw new ChannelError('the file took no bytes (writev wrote 0)');
      left = unwrittenPieces(left, bytesWritten);
    }
  }
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

/** A source over a Node readable stream (socket, pipe, child stdout). */
export class ReadableSource implements ByteSource {
  private readonly iterator: AsyncIterator<Buffer | string>;
  constructor(private readonly stream: Readable) {
    this.iterator = stream[Symbol.asyncIterator]();
  }
  async read(): Promise<Uint8Array | null> {
    try {
      const next = await this.iterator.next();
      if (next.done) return null;
      const value = next.value;
      return typeof value === 'string' ? Buffer.from(value, 'latin1') : value;
    } catch (err) {
      throw new ChannelError(`read failed: ${(err as Error).message}`, { cause: err });
    }
  }
  async close(): Promise<void> {
    this.stream.destroy();
  }
}

/** A sink over a Node writable stream, honouring backpressure. */
export class WritableSink implements ByteSink {
  private failure: Error | undefined;
  constructor(private readonly stream: Writable) {
    stream.on('error', (err) => {
      this.failure ??= err;
    });
  }
  async write(chunk: Uint8Array): Promise<void> {
    if (this.failure) throw new ChannelError(`write failed: ${this.failure.message}`, { cause: this.failure });
    if (this.stream.write(chunk)) return;
    await new Promise<void>((resolve, reject) => {
      const onDrain = (): void => {
        cleanup();
        resolve();
      };
      const onError = (err: Error): void => {
        cleanup();
        reject(new ChannelError(`write failed: ${err.message}`, { cause: err }));
      };
      const onClose = (): void => {
        cleanup();
        reject(new ChannelError('channel closed while writing'));
      };
      const cleanup = (): void => {
        this.stream.off('drain', onDrain);
        this.stream.off('error', onError);
        this.stream.off('close', onClose);
      };
      this.stream.on('drain', onDrain);
      this.stream.on('error', onError);
      this.stream.on('close', onClose);
    });
  }
  async close(): Promise<void> {
    if (this.failure) throw new ChannelError(`write failed: ${this.failure.message}`, { cause: this.failure });
    await new Promise<void>((resolve, reject) => {
      this.stream.end((err?: Error | null) => (err ? reject(new ChannelError(err.message, { cause: err })) : resolve()));
    });
  }
}
