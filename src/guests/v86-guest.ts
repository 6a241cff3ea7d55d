/**
 * `--machine v86`: an x86 PC emulated by v86, running our multiboot test
 * kernel (`--guest multiboot`, the default) or the Linux guest built by
 * `npm run images` (`--guest linux`). The v86 package is large: it is loaded
 * on demand, when such a guest is created.
 */
import type { GuestType } from './guest.js';

const VARIANTS = [
  { name: 'multiboot', description: 'our test kernel' },
  { name: 'linux', description: 'after npm run images' },
];

export const v86GuestType: GuestType = {
  name: 'v86',
  description: 'an x86 PC',
  variants: VARIANTS,
  async create(o) {
    if (o.disk) throw new Error('--disk: only the test machine has a disk so far (v86 disks are not migrated yet)');
    if (o.guest !== undefined && !VARIANTS.some((v) => v.name === o.guest)) throw new Error(`--guest: ${VARIANTS.map((v) => v.name).join(' or ')}, got '${o.guest}'`);
    // Loaded on demand: the v86 package is large and only this guest needs it.
    const { createV86Machine } = await import('../machine/v86-machine.js');
    const linux = o.guest === 'linux';
    let extra = {};
    if (linux && !o.incoming) {
      const { loadLinuxImage, linuxCmdline } = await import('../images/linux-image.js');
      const image = await loadLinuxImage();
      extra = { bios: image.bios, vgaBios: image.vgaBios, bzimage: image.kernel, initrd: image.initramfs, cmdline: linuxCmdline() };
    } else if (o.kernel !== undefined) extra = { multiboot: o.kernel };
    const machine = await createV86Machine({ ramSizeBytes: o.ramSizeBytes, incoming: o.incoming, ...extra });
    return {
      incomingDisks: [],
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
    defaultRam: (guest) => (guest === 'linux' ? '128M' : '32M'),
    describe: ({ guest }) => (guest === 'linux' ? 'v86 PC running Debian Linux' : 'v86 PC running our multiboot test kernel'),
    sourceArgs: () => [],
    // A real guest can write memory faster than the link carries it: let livemig slow it down if needed.
    autoConverge: true,
    progressFigure: 'instructions',
    selfCheck: (guest) =>
      guest === 'linux'
        ? { waiting: 'waiting for Linux to boot and its self-checking program to report', ready: /dirtier: pass \d+ ok/, result: /dirtier: pass \d+ (ok|CORRUPT)/, linePrefix: 'dirtier:', corrupt: 'CORRUPT' }
        : undefined,
  },
};
