/**
 * Byte channels over Node files and streams. Node-only, so not exported from
 * wire/index.ts (the core, which also runs in a browser): import them from
 * here.
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import type { ByteSink, ByteSource } from './channel.js';
import { ChannelError } from './errors.js';

export class FileSource implements ByteSource {
  private constructor(private readonly handle: FileHandle, private readonly chunkBytes: number) {}
  static async open(path: string, chunkBytes = 1 << 20): Promise<FileSource> {
    try {
      return new FileSource(await open(path, 'r'), chunkBytes);
    } catch (err) {
      throw new ChannelError(`cannot open ${path} for reading: ${(err as Error).message}`, { cause: err });
    }
  }
  private closed = false;
  async read(): Promise<Uint8Array | null> {
    if (this.closed) return null;
    const chunk = new Uint8Array(this.chunkBytes);
    const { bytesRead } = await this.handle.read(chunk, 0, chunk.length, null);
    if (bytesRead === 0) return null;
    return chunk.subarray(0, bytesRead);
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
