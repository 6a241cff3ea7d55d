/**
 * A destination disk image that is written under a temporary name while a
 * migration brings it in, and takes its real name only once the whole stream
 * loaded and the data is flushed. A failed or cancelled migration removes the
 * partial file; a destination killed mid-way leaves `<path>.livemig-incoming`,
 * whose name says what it is. Either way nothing partial sits at `<path>`.
 */
import { rename, rm, stat } from 'node:fs/promises';
import { FileBlockDevice } from './file-block-device.js';

export const INCOMING_SUFFIX = '.livemig-incoming';

export class IncomingDiskImage {
  private state: 'receiving' | 'committed' | 'discarded' = 'receiving';

  private constructor(
    readonly device: FileBlockDevice,
    /** Where the image goes once complete. */
    readonly finalPath: string,
  ) {}

  /**
   * Create a fresh sparse image at `<finalPath>.livemig-incoming` of `sizeBytes`,
   * or of the size of an existing image at `finalPath` (which is left alone
   * until commit).
   */
  static async create(name: string, finalPath: string, sizeBytes?: number): Promise<IncomingDiskImage> {
    let size = sizeBytes;
    if (size === undefined) {
      const existing = await stat(finalPath).catch(() => undefined);
      if (!existing) throw new Error(`disk '${name}': ${finalPath} does not exist; give its size (size=SIZE)`);
      size = existing.size;
    }
    const partialPath = finalPath + INCOMING_SUFFIX;
    await rm(partialPath, { force: true }); // a leftover from an earlier failed attempt
    const device = await FileBlockDevice.open(name, partialPath, { create: true, size });
    return new IncomingDiskImage(device, finalPath);
  }

  get partialPath(): string {
    return this.finalPath + INCOMING_SUFFIX;
  }

  /** Flush and give the image its real name (the open descriptor follows the file). */
  async commit(): Promise<void> {
    if (this.state !== 'receiving') throw new Error(`disk '${this.device.name}': already ${this.state}`);
    await this.device.flush();
    await rename(this.partialPath, this.finalPath);
    this.state = 'committed';
  }

  /** Close and delete the partial image. */
  async discard(): Promise<void> {
    if (this.state !== 'receiving') return;
    this.state = 'discarded';
    await this.device.close().catch(() => {});
    await rm(this.partialPath, { force: true });
  }
}
