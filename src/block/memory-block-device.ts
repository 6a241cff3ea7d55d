/**
 * A disk held in an ArrayBuffer: for a browser (no files) and for tests.
 * Browser-safe. Its I/O is synchronous underneath, so it has readSync and
 * writeSync as a file does.
 */
import { BlockDeviceBase } from './block-device.js';

export interface MemoryBlockDeviceOptions {
  /** The initial contents (copied), or the size of a zeroed disk. */
  contents?: Uint8Array;
  sizeBytes?: number;
  readOnly?: boolean;
}

export class MemoryBlockDevice extends BlockDeviceBase {
  /** The disk's bytes (live: writes land here). */
  readonly bytes: Uint8Array;

  constructor(name: string, options: MemoryBlockDeviceOptions) {
    const size = options.contents?.length ?? options.sizeBytes;
    if (size === undefined) throw new RangeError(`block device ${name}: give its contents or its size`);
    if (options.contents && options.sizeBytes !== undefined && options.sizeBytes !== options.contents.length) {
      throw new RangeError(`block device ${name}: ${options.contents.length} bytes of contents for a ${options.sizeBytes}-byte disk`);
    }
    super(name, size, options.readOnly ?? false);
    this.bytes = options.contents ? options.contents.slice() : new Uint8Array(size);
  }

  protected async readAt(offsetBytes: number, into: Uint8Array): Promise<void> {
    into.set(this.bytes.subarray(offsetBytes, offsetBytes + into.length));
  }

  protected async writeAt(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.bytes.set(data, offsetBytes);
  }

  readSync(offsetBytes: number, into: Uint8Array): void {
    this.checkByteRange(offsetBytes, into.length);
    into.set(this.bytes.subarray(offsetBytes, offsetBytes + into.length));
  }

  writeSync(offsetBytes: number, data: Uint8Array): void {
    this.checkByteRange(offsetBytes, data.length);
    this.checkWritable();
    this.bytes.set(data, offsetBytes);
    this.markDirtyBytes(offsetBytes, data.length);
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    this.closed = true;
  }
}
