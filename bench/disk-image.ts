/** Disk images for the disk scenario: a fully written random image, and its sequential read speed. */
import { randomFillSync } from 'node:crypto';
import { open } from 'node:fs/promises';
import { MiB } from './util.js';

export async function writeRandomImage(path: string, bytes: number): Promise<void> {
  const handle = await open(path, 'w');
  const buffer = Buffer.alloc(16 * MiB);
  try {
    for (let offset = 0; offset < bytes; offset += buffer.length) {
      randomFillSync(buffer);
      await handle.write(buffer, 0, Math.min(buffer.length, bytes - offset), offset);
    }
  } finally {
    await handle.close();
  }
}

export async function sequentialReadBytesPerSecond(path: string): Promise<number> {
  const handle = await open(path, 'r');
  const buffer = Buffer.alloc(MiB);
  try {
    const t0 = performance.now();
    let total = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, total);
      if (bytesRead === 0) break;
      total += bytesRead;
    }
    return total / ((performance.now() - t0) / 1000);
  } finally {
    await handle.close();
  }
}
