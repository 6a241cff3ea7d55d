/**
 * `--machine v86`: an x86 PC emulated by v86, running our multiboot test
 * kernel (`--guest multiboot`, the default) or the Linux guest built by
 * `npm run images` (`--guest linux`), or that Linux writing and checking
 * files on an ext2 disk (`--guest linux-disk`: hda is images/linux/disk.ext2,
 * see guests/linux/README.md). The v86 package is large: it is loaded on
 * demand, when such a guest is created.
 *
 * Media: `--hda/--hdb/--fda PATH` (raw images, used in place and migrated
 * live by the `block` section as devices hda, hdb, fda), `--cdrom PATH`
 * (read-only, never copied, checked), `--disk-shared` (both sides open the
 * same files). On a destination a copied disk's PATH must exist: the
 * migrated disk is written beside it (PATH.livemig-incoming, the size of
 * PATH) and takes its name when the migration completed.
 */
import { rmSync } from 'node:fs';
import { copyFile, mkdtemp, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IncomingDiskImage } from '../block/index.js';
import { DISKCHECK_LINES, LINUX_DISK_SIZE_BYTES, linuxCmdline, linuxDiskImagePath, loadLinuxImage } from '../images/linux-image.js';
import type { V86Machine, V86Medium, V86MediaSlot } from '../machine/v86-machine.js';
import type { GuestOptions, GuestType } from './guest.js';

const VARIANTS = [
  { name: 'multiboot', description: 'our test kernel' },
  { name: 'linux', description: 'after npm run images' },
  { name: 'linux-disk', description: 'Linux writing files to an ext2 disk, after npm run images' },
];

/** The disk guest's workload on the kernel command line (diskcheck=...; its memory dirtier off, so the disk is what moves). */
const DISK_GUEST_CMDLINE = { dirtierMiB: 0, diskcheck: {} };

export const v86GuestType: GuestType = {
  name: 'v86',
  description: 'an x86 PC',
  variants: VARIANTS,
  async create(o) {
    if (o.disk) throw new Error('--disk: the v86 machine takes --hda PATH (and --hdb, --fda, --cdrom) instead');
    if (o.guest !== undefined && !VARIANTS.some((v) => v.name === o.guest)) throw new Error(`--guest: ${VARIANTS.map((v) => v.name).join(' or ')}, got '${o.guest}'`);
    // Loaded on demand: the v86 package is large and only this guest needs it.
    const { createV86Machine } = await import('../machine/v86-machine.js');
    const diskGuest = o.guest === 'linux-disk';
    const linux = o.guest === 'linux' || diskGuest;
    if (diskGuest && o.media?.hda === undefined) o = { ...o, media: { ...o.media, hda: await scratchDisk(o) } };
    let extra = {};
    if (linux && !o.incoming) {
      const image = await loadLinuxImage();
      extra = { bios: image.bios, vgaBios: image.vgaBios, bzimage: image.kernel, initrd: image.initramfs, cmdline: linuxCmdline({ ...(diskGuest ? DISK_GUEST_CMDLINE : {}), disks: o.media?.hda !== undefined || o.media?.hdb !== undefined }) };
    } else if (o.kernel !== undefined) extra = { multiboot: o.kernel };
    // The user's firmware (to boot from a disk) replaces the Linux image's.
    if (o.bios !== undefined) extra = { ...extra, bios: o.bios };
    if (o.vgaBios !== undefined) extra = { ...extra, vgaBios: o.vgaBios };
    if ((o.bios === undefined) !== (o.vgaBios === undefined) && !linux) throw new Error('--bios and --vga-bios go together (e.g. /usr/share/seabios/bios.bin and vgabios-stdvga.bin)');
    const { media, incomingDisks } = await openMedia(o);
    let machine: V86Machine;
    try {
      machine = await createV86Machine({
        ramSizeBytes: o.ramSizeBytes,
        incoming: o.incoming,
        ...extra,
        ...media,
        ...(o.diskShared ? { sharedDisks: true } : {}),
        ...(o.guestSharePercent !== undefined ? { guestSharePercent: o.guestSharePercent } : {}),
      });
    } catch (err) {
      for (const image of incomingDisks) await image.discard();
      throw err;
    }
    return {
      incomingDisks,
      diskHint: (name) => `; give it one with --${name} PATH${o.diskShared ? ' (or --disk-shared on both sides or neither)' : ''}`,
      machine,
      memory: () => machine.memory,
      progress: () => {
        const s = machine.stats();
        return { instructions: s.instructions, throttlePercent: s.throttlePercent };
      },
      cpu: () => ({ ...machine.cpuState() }),
      checkRange: () => (linux ? undefined : machine.workloadRange),
      ramHash: () => machine.ramHash(),
      writeSerial: (data) => machine.writeSerial(data),
    };
  },
  demo: {
    defaultRam: (guest) => (guest === 'linux' || guest === 'linux-disk' ? '128M' : '32M'),
    describe: ({ guest }) =>
      guest === 'linux' ? 'v86 PC running Debian Linux' : guest === 'linux-disk' ? 'v86 PC running Debian Linux, writing files to its 64 MiB ext2 disk' : 'v86 PC running our multiboot test kernel',
    sourceArgs: () => [],
    // A real guest can write memory faster than the link carries it: let livemig slow it down if needed.
    autoConverge: true,
    progressFigure: 'instructions',
    selfCheck: (guest) =>
      guest === 'linux'
        ? { waiting: 'waiting for Linux to boot and its self-checking program to report', ready: /dirtier: pass \d+ ok/, result: /dirtier: pass \d+ (ok|CORRUPT)/, linePrefix: 'dirtier:', corrupt: 'CORRUPT' }
        : guest === 'linux-disk'
          ? {
              waiting: 'waiting for Linux to boot, mount its disk and check the files it wrote',
              ready: /diskcheck: verify ok/,
              // Asked for on the destination after the move: every file read back from the migrated disk.
              request: 'diskcheck verify\n',
              result: DISKCHECK_LINES.requestedVerdict,
              linePrefix: 'diskcheck:',
              corrupt: 'CORRUPT',
            }
          : undefined,
    disk: async (guest) => {
      if (guest !== 'linux-disk') return undefined;
      const image = await linuxDiskImagePath();
      if (!image) throw new Error(NO_DISK_IMAGE);
      return { slot: 'hda', image };
    },
  },
};

/** The media as the machine takes them: paths to use in place, or (destination, copied disks) fresh incoming images. */
async function openMedia(o: GuestOptions): Promise<{ media: Partial<Record<V86MediaSlot, V86Medium>>; incomingDisks: IncomingDiskImage[] }> {
  const media: Partial<Record<V86MediaSlot, V86Medium>> = {};
  const incomingDisks: IncomingDiskImage[] = [];
  try {
    for (const slot of ['hda', 'hdb', 'fda', 'cdrom'] as const) {
      const path = o.media?.[slot];
      if (path === undefined) continue;
      if (path === '') throw new Error(`--${slot}: give the image's path`);
      if (o.incoming && !o.diskShared && slot !== 'cdrom') {
        const image = await IncomingDiskImage.create(slot, path).catch((err: Error) => {
          const missing = /does not exist/.test(err.message);
          throw new Error(`--${slot} ${path}: ${missing ? `no such file (on a destination --${slot} names an existing image of the source disk's size, replaced by the migrated disk once complete)` : err.message}`);
        });
        incomingDisks.push(image);
        media[slot] = image.device;
      } else {
        media[slot] = { path };
      }
    }
    if (o.diskShared && !media.hda && !media.hdb && !media.fda) throw new Error('--disk-shared: give the shared disks (--hda, --hdb or --fda)');
  } catch (err) {
    for (const image of incomingDisks) await image.discard();
    throw err;
  }
  return { media, incomingDisks };
}

const NO_DISK_IMAGE = '--guest linux-disk: no images/linux/disk.ext2; run `npm run images` (it needs gcc-multilib and e2fsprogs)';

/**
 * linux-disk without --hda: a source boots a copy of images/linux/disk.ext2
 * (the shipped image stays empty), a destination receives into a fresh file
 * of its size. Both are temporary, removed when the process exits.
 */
async function scratchDisk(o: GuestOptions): Promise<string> {
  if (o.diskShared) throw new Error('--guest linux-disk --disk-shared: give both sides the same --hda PATH (a copy of images/linux/disk.ext2)');
  const image = await linuxDiskImagePath();
  if (!image) throw new Error(NO_DISK_IMAGE);
  const dir = await mkdtemp(join(tmpdir(), 'livemig-disk-'));
  const path = join(dir, 'disk.ext2');
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  if (o.incoming) {
    // Sparse: the migration writes what the source's disk holds.
    await writeFile(path, '');
    await truncate(path, LINUX_DISK_SIZE_BYTES);
  } else await copyFile(image, path);
  return path;
}
