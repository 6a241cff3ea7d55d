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

/** The disk guest's ext2 image (made only where an i386 libc and mke2fs are installed). */
export const LINUX_DISK_FILE = 'disk.ext2';
export const LINUX_DISK_SIZE_BYTES = 64 << 20;

/** guests/linux/diskcheck.c's workload: a ring of `files` files of up to `maxKiB`, a pause after each, a full check every `verifyEvery` writes (0: on request only). */
export interface DiskcheckOptions {
  files?: number;
  maxKiB?: number;
  sleepMs?: number;
  verifyEvery?: number;
}

/**
 * The kernel command line: the serial port is the console; kernel messages
 * kept quiet so the guest's own lines are readable; `dirtier=MIB,EVERY,SLEEP_MS`
 * (`dirtierMiB: 0`: dirtier=off), `disks=ide` and `diskcheck=FILES,MAX_KIB,SLEEP_MS,EVERY`
 * are read by /init (see guests/linux/init).
 */
export function linuxCmdline(opts: { dirtierMiB?: number; verifyEvery?: number; sleepMs?: number; disks?: boolean; diskcheck?: DiskcheckOptions; extra?: string } = {}): string {
  const d = opts.dirtierMiB === 0 ? 'off' : `${opts.dirtierMiB ?? 16},${opts.verifyEvery ?? 4},${opts.sleepMs ?? 0}`;
  const k = opts.diskcheck;
  const disk = k ? `diskcheck=${k.files ?? 32},${k.maxKiB ?? 128},${k.sleepMs ?? 50},${k.verifyEvery ?? 16}` : '';
  // disks=ide: /init loads the IDE disk modules (only for a guest with disks: they cost seconds of boot).
  return ['console=ttyS0,115200', 'loglevel=3', 'tsc=reliable', 'mitigations=off', 'random.trust_cpu=on', `dirtier=${d}`, opts.disks ? 'disks=ide' : '', disk, opts.extra ?? ''].filter(Boolean).join(' ');
}

/** The disk guest's lines on the serial port (guests/linux/diskcheck.c); they end in \r\n there (the tty's onlcr). */
export const DISKCHECK_LINES = {
  /** A full check of every file, periodic or on request; group 1: ok or CORRUPT. */
  verdict: /diskcheck: verify (ok|CORRUPT)\b[^\n]*/,
  /** The answer to `diskcheck verify` typed on the serial console. */
  requestedVerdict: /diskcheck: verify (ok|CORRUPT)\b[^\n]*, on request/,
} as const;

export interface LinuxImageManifest {
  kernelPackage: string;
  kernelVersion: string;
  busyboxVersion: string;
  dirtierBuild: 'libc' | 'freestanding';
  cmdline: string;
  /** The disk guest, if it was built: disk.ext2 and the kernel modules /init loads for it. */
  disk?: { file: string; sizeBytes: number; fileSystem: 'ext2'; modules: string[] };
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

/** The path of the disk guest's ext2 image, or undefined if `npm run images` could not make it here. */
export async function linuxDiskImagePath(dir = defaultLinuxImageDir): Promise<string | undefined> {
  const path = join(dir, LINUX_DISK_FILE);
  return (await stat(path).then((s) => s.isFile(), () => false)) ? path : undefined;
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
