/**
 * The Linux guest built by `npm run images` (scripts/images.ts): where its
 * files are, the kernel command line to boot it with, and a loader that
 * reads everything v86 needs.
 */
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** images/linux/ in the repository (this file runs from dist/src/images/). */
export const defaultLinuxImageDir = resolve(fileURLToPath(import.meta.url), '..', '..', '..', '..', 'images', 'linux');

export const LINUX_IMAGE_FILES = {
  kernel: 'vmlinuz',
  initramfs: 'initramfs.cpio.gz',
  bios: 'bios.bin',
  vgaBios: 'vgabios-stdvga.bin',
  manifest: 'manifest.json',
} as const;

/**
 * The kernel command line: the serial port is the console; kernel messages
 * kept quiet so the guest's own lines are readable; `dirtier=MIB,EVERY,SLEEP_MS`
 * and `disks=ide` are read by /init (see guests/linux/init).
 */
export function linuxCmdline(opts: { dirtierMiB?: number; verifyEvery?: number; sleepMs?: number; disks?: boolean; extra?: string } = {}): string {
  const d = `${opts.dirtierMiB ?? 16},${opts.verifyEvery ?? 4},${opts.sleepMs ?? 0}`;
  // disks=ide: /init loads the IDE disk modules (only for a guest with disks: they cost seconds of boot).
  return ['console=ttyS0,115200', 'loglevel=3', 'tsc=reliable', 'mitigations=off', 'random.trust_cpu=on', `dirtier=${d}`, opts.disks ? 'disks=ide' : '', opts.extra ?? ''].filter(Boolean).join(' ');
}

export interface LinuxImageManifest {
  kernelPackage: string;
  kernelVersion: string;
  busyboxVersion: string;
  dirtierBuild: 'libc' | 'freestanding';
  cmdline: string;
  files: Record<string, { bytes: number; sha256: string }>;
}

export interface LinuxImage {
  dir: string;
  kernel: Buffer;
  initramfs: Buffer;
  bios: Buffer;
  vgaBios: Buffer;
  manifest: LinuxImageManifest;
}

/** True if `dir` holds a complete image (all files present). */
export async function linuxImageExists(dir = defaultLinuxImageDir): Promise<boolean> {
  try {
    await Promise.all(Object.values(LINUX_IMAGE_FILES).map((f) => stat(join(dir, f))));
    return true;
  } catch {
    return false;
  }
}

export async function loadLinuxImage(dir = defaultLinuxImageDir): Promise<LinuxImage> {
  const read = (f: string): Promise<Buffer> =>
    readFile(join(dir, f)).catch((e: NodeJS.ErrnoException) => {
      throw new Error(`Linux guest image incomplete (${e.code ?? e.message}: ${join(dir, f)}); run \`npm run images\``);
    });
  const [kernel, initramfs, bios, vgaBios, manifest] = await Promise.all([
    read(LINUX_IMAGE_FILES.kernel),
    read(LINUX_IMAGE_FILES.initramfs),
    read(LINUX_IMAGE_FILES.bios),
    read(LINUX_IMAGE_FILES.vgaBios),
    read(LINUX_IMAGE_FILES.manifest),
  ]);
  return { dir, kernel, initramfs, bios, vgaBios, manifest: JSON.parse(manifest.toString('utf8')) as LinuxImageManifest };
}
