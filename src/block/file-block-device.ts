/**
 * A disk backed by a raw image file (Node-side: node:fs). Created images are
 * sparse (the file is sized with truncate). Besides the async sector I/O of
 * every BlockDevice it has synchronous byte I/O on its descriptor
 * (readSync/writeSync), for emulated devices that cannot wait, and its
 * descriptor for a writer in another thread.
 */
import { constants as fsConstants, readSync as fsReadSync, writeSync as fsWriteSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { BlockDeviceBase, checkBlockDeviceGeometry } from './block-device.js';
import { SECTOR_SIZE } from './geometry.js';

export interface BlockDeviceOpenOptions {
  /** Create the file when missing. */
  create?: boolean;
  /** Size in bytes (multiple of 512): the file is truncated or extended (sparse) to it. */
  size?: number;
  readOnly?: boolean;
}

export class FileBlockDevice extends BlockDeviceBase {
  private constructor(
    name: string,
    readonly path: string,
    private readonly handle: FileHandle,
    sizeBytes: number,
    readOnly: boolean,
  ) {
    super(name, sizeBytes, readOnly);
  }

  /** Open (or create) the raw image at `path` as device `name`. */
  static async open(name: string, path: string, options: BlockDeviceOpenOptions = {}): Promise<FileBlockDevice> {
    const { size } = options;
    if (size !== undefined) checkBlockDeviceGeometry(name, size);
    else checkBlockDeviceGeometry(name, SECTOR_SIZE);
    const readOnly = options.readOnly ?? false;
    let flags = readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR;
    if (options.create) {
      if (readOnly) throw new RangeError(`block device ${name}: cannot create a read-only image`);
      flags |= fsConstants.O_CREAT;
    }
    const handle = await open(path, flags, 0o644);
    try {
      if (size !== undefined && !readOnly) {
        const current = (await handle.stat()).size;
        if (current !== size) await handle.truncate(size);
      }
      const actual = (await handle.stat()).size;
      if (actual === 0 || actual % SECTOR_SIZE !== 0) {
        throw new RangeError(`block device ${name}: image ${path} has size ${actual}, not a positive multiple of ${SECTOR_SIZE}`);
      }
      if (size !== undefined && actual !== size) {
        throw new RangeError(`block device ${name}: image ${path} has size ${actual}, expected ${size}`);
      }
      return new FileBlockDevice(name, path, handle, actual, readOnly);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /**
   * The image's file descriptor, for a writer in another thread (fs.writeSync):
   * descriptors are per process. Valid until close().
   */
  get fd(): number {
    return this.handle.fd;
  }

  protected async readAt(offsetBytes: number, into: Uint8Array): Promise<void> {
    let done = 0;
    while (done < into.length) {
      const { bytesRead } = await this.handle.read(into, done, into.length - done, offsetBytes + done);
      if (bytesRead === 0) {
        into.fill(0, done); // past EOF (a file shrunk behind our back): zeros
        break;
      }
      done += bytesRead;
    }
  }

  protected async writeAt(offsetBytes: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, offsetBytes + done);
      done += bytesWritten;
    }
  }

  /** Read `into.length` bytes at `offsetBytes` now (pread on the descriptor). */
  readSync(offsetBytes: number, into: Uint8Array): void {
    this.checkByteRange(offsetBytes, into.length);
    let done = 0;
    while (done < into.length) {
      const n = fsReadSync(this.handle.fd, into, done, into.length - done, offsetBytes + done);
      if (n === 0) {
        into.fill(0, done);
        break;
      }
      done += n;
    }
  }

  /** Write `data` at `offsetBytes` now (pwrite on the descriptor), then mark its chunks dirty. */
  writeSync(offsetBytes: number, data: Uint8Array): void {
    this.checkByteRange(offsetBytes, data.length);
    this.checkWritable();
    let done = 0;
    while (done < data.length) done += fsWriteSync(this.handle.fd, data, done, data.length - done, offsetBytes + done);
    this.markDirtyBytes(offsetBytes, data.length);
  }

  /** Make written data durable. */
  async flush(): Promise<void> {
    if (!this.readOnly) await this.handle.datasync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}
