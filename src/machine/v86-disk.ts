/**
 * A v86 disk buffer over a BlockDevice: what v86 0.5.462's starter accepts as
 * a medium (an object with get, set and load: src/browser/starter.js
 * add_file) and its IDE, floppy and CD-ROM models call (get, set,
 * get_from_cache, get_and_cache, byteLength, get_state/set_state).
 *
 * - Nothing is read whole into memory: every get reads the bytes asked for.
 * - With a synchronous backend (readSync/writeSync: a file's descriptor,
 *   memory) get and set complete before they return, so the IDE never
 *   reads around a write in flight. A backend without them is used
 *   asynchronously, each operation queued after the previous one (same
 *   effect: a read sees every earlier write).
 * - set writes through and the device marks the 1 MiB chunks it touched
 *   dirty: the `block` section re-sends them.
 * - get_state is the size only: the disk's contents travel in the `block`
 *   section (or stay in a shared file), not in `v86-state`.
 */
import type { BlockDevice } from '../block/block-device.js';

type Done = () => void;

export class V86DiskBuffer {
  readonly byteLength: number;
  /** Set by v86's loader, called by load(). */
  onload: ((event: object) => void) | undefined;
  onprogress: ((event: object) => void) | undefined;
  /** Writes v86 made (each `set`), for stats. */
  writes = 0;
  /** Asynchronous backends: the last queued operation. */
  private queue: Promise<void> = Promise.resolve();
  /** The first failure of an asynchronous operation (v86 has no way to hear of it). */
  failure: Error | undefined;

  constructor(readonly device: BlockDevice) {
    this.byteLength = device.sizeBytes;
  }

  /** v86 calls this once its loader set onload; the medium is ready at once. */
  load(): void {
    this.onload?.({});
  }

  get(start: number, length: number, done: (data: Uint8Array) => void): void {
    this.checkRange(start, length);
    const data = new Uint8Array(length);
    const read = this.device.readSync;
    if (read) {
      read.call(this.device, start, data);
      done(data);
      return;
    }
    this.enqueue(async () => {
      await this.readAsync(start, data);
      done(data);
    });
  }

  get_and_cache(start: number, length: number, done: (data: Uint8Array) => void): void {
    this.get(start, length, done);
  }

  /** The IDE reads the MBR through this to guess the geometry: undefined (a guess from the size) when the read cannot be synchronous. */
  get_from_cache(start: number, length: number): Uint8Array | undefined {
    if (!this.device.readSync) return undefined;
    this.checkRange(start, length);
    const data = new Uint8Array(length);
    this.device.readSync(start, data);
    return data;
  }

  set(start: number, data: Uint8Array, done: Done): void {
    this.checkRange(start, data.length);
    this.writes++;
    // Read-only here: a CD-ROM, or a floppy the guest sees write-protected (the machine refuses read-only hard
    // disks), so no guest write should come; a stray one is dropped, never written to the image.
    if (this.device.readOnly) {
      done();
      return;
    }
    const write = this.device.writeSync;
    if (write) {
      write.call(this.device, start, data);
      done();
      return;
    }
    const copy = data.slice(); // v86 may reuse its buffer once set returns
    this.enqueue(async () => {
      await this.writeAsync(start, copy);
      done();
    });
  }

  /** Only the size: the contents are migrated by the `block` section. */
  get_state(): unknown[] {
    return [this.byteLength];
  }

  set_state(state: unknown[]): void {
    const size = state[0];
    if (size !== this.byteLength) throw new Error(`v86 disk ${this.device.name}: the saved state is for a ${String(size)}-byte medium, this one has ${this.byteLength} bytes`);
  }

  /** Resolves once every queued operation of an asynchronous backend is done. */
  async settled(): Promise<void> {
    await this.queue;
    if (this.failure) throw this.failure;
  }

  private checkRange(start: number, length: number): void {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(length) || start < 0 || length < 0 || start + length > this.byteLength) {
      throw new RangeError(`v86 disk ${this.device.name}: bytes ${start}+${length} outside 0..${this.byteLength}`);
    }
  }

  private enqueue(op: () => Promise<void>): void {
    this.queue = this.queue.then(op).catch((err: unknown) => {
      this.failure ??= err instanceof Error ? err : new Error(String(err));
    });
  }

  /** Any byte range through whole sectors (the block layer's unit). */
  private async readAsync(start: number, into: Uint8Array): Promise<void> {
    const first = Math.floor(start / 512);
    const last = Math.ceil((start + into.length) / 512);
    const sectors = await this.device.readSectors(first, last - first);
    into.set(sectors.subarray(start - first * 512, start - first * 512 + into.length));
  }

  private async writeAsync(start: number, data: Uint8Array): Promise<void> {
    const first = Math.floor(start / 512);
    const last = Math.ceil((start + data.length) / 512);
    let whole = data;
    if (start % 512 !== 0 || data.length % 512 !== 0) {
      whole = await this.device.readSectors(first, last - first);
      whole.set(data, start - first * 512);
    }
    await this.device.writeSectors(first, whole);
  }
}
