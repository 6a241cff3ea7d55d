/**
 * `--machine none`: RAM only, as QEMU's `-M none -m SIZE` (machine `none`,
 * RAM block `ram`, the `timer` section), so a real QEMU `-M none` peer
 * migrates to and from it. `--pattern` fills a source's RAM (zero,
 * sequential, random[:SEED]; see none-machine.ts) so there are bytes to compare.
 */
import { NoneMachine, parseNonePattern } from '../machine/none-machine.js';
import type { GuestType } from './guest.js';

export const noneGuestType: GuestType = {
  name: 'none',
  description: "RAM only, as QEMU's -M none",
  async create(o) {
    if (o.media || o.diskShared || o.bios !== undefined || o.vgaBios !== undefined || o.guestSharePercent !== undefined) throw new Error('--hda, --hdb, --fda, --cdrom, --disk-shared, --bios, --vga-bios, --guest-share: only for --machine v86');
    if (o.disk) throw new Error('--disk: the none machine has no disks (as QEMU -M none)');
    if (o.guest !== undefined) throw new Error(`--guest: the none machine has no variants, got '${o.guest}'`);
    const pattern = parseNonePattern(o.pattern);
    const machine = new NoneMachine({ ramSizeBytes: o.ramSizeBytes, pattern, incoming: o.incoming });
    return {
      incomingDisks: [],
      machine,
      memory: () => machine.memory,
      // The virtual clock is the only thing that moves: it shows a destination runs after the move.
      progress: () => ({ vmClockMs: Math.floor(machine.vmClockNs() / 1e6) }),
      cpu: () => ({}),
      checkRange: () => undefined,
      ramHash: () => machine.ramHash(),
      check: async () => ({ ramHash: machine.ramHash(), vmClockMs: Math.floor(machine.vmClockNs() / 1e6) }),
    };
  },
  demo: {
    defaultRam: () => '64M',
    describe: () => "RAM-only machine (as QEMU's -M none)",
    sourceArgs: () => ['--pattern', 'random'],
    autoConverge: false,
    progressFigure: 'vmClockMs',
  },
};
