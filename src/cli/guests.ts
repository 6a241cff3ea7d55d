/**
 * The guests `livemig run` can start: the built-in test machine, and v86 PCs
 * running our multiboot test kernel or the Linux guest from `npm run images`.
 * Each comes with what the command reports about it.
 */
import type { BlockDevice, IncomingDiskImage } from '../block/index.js';
import { createTestMachine, type TestPattern } from '../machine/index.js';
import type { Machine } from '../machine/machine.js';
import { openIncomingDisk, openSourceDisk, type DiskSpec } from './disk-spec.js';

export interface GuestOptions {
  machine: string;
  guest?: string;
  ramSizeBytes: number;
  incoming: boolean;
  dirtyRatePagesPerSecond: number;
  pattern: string;
  kernel?: string;
  /** Test machine: a disk, and its workload. */
  disk?: DiskSpec;
  diskRateBlocksPerSecond?: number;
  diskPattern?: string;
}

export interface Guest {
  machine: Machine;
  /** Guest RAM as it is now. */
  memory(): Uint8Array;
  /** Progress figures for `guest` events. */
  progress(): Record<string, number>;
  /** CPU registers worth reporting (the guest must be stopped). */
  cpu(): Record<string, unknown>;
  /** Where QEMU's memory check applies (the test workload's range), if anywhere. */
  checkRange(): { startBytes: number; endBytes: number } | undefined;
  ramHash(): string;
  /** Type into the serial console. */
  writeSerial?(data: string): void;
  /** The guest's self-checks and hashes (paused guest), for QMP `x-livemig-check-guest`. */
  check?(): Promise<Record<string, unknown>>;
  /** Destination: disks being received (renamed into place when the migration completes). */
  incomingDisks: IncomingDiskImage[];
}

export async function createGuest(o: GuestOptions): Promise<Guest> {
  if (o.machine === 'test') {
    const pattern = o.pattern as TestPattern;
    if (pattern !== 'sequential' && pattern !== 'random') throw new Error(`--pattern: sequential or random, got '${o.pattern}'`);
    const diskPattern = (o.diskPattern ?? 'random') as TestPattern;
    if (diskPattern !== 'sequential' && diskPattern !== 'random') throw new Error(`--disk-pattern: sequential or random, got '${o.diskPattern}'`);
    const incomingDisks: IncomingDiskImage[] = [];
    let disk: BlockDevice | undefined;
    if (o.disk) {
      if (o.incoming) {
        const image = await openIncomingDisk(o.disk);
        incomingDisks.push(image);
        disk = image.device;
      } else {
        disk = await openSourceDisk(o.disk);
      }
    }
    const machine = await createTestMachine({
      ramSizeBytes: o.ramSizeBytes,
      pattern,
      dirtyRatePagesPerSecond: o.dirtyRatePagesPerSecond,
      incoming: o.incoming,
      ...(disk ? { disk, diskRateBlocksPerSecond: o.diskRateBlocksPerSecond ?? 0, diskPattern } : {}),
    });
    return {
      incomingDisks,
      check: async () => {
        const c = machine.cpuState();
        const memoryCheck = pattern === 'sequential' ? machine.checkMemory() : undefined;
        const diskCheck = disk ? await machine.checkDisk() : undefined;
        return { ramHash: machine.ramHash(), ...(memoryCheck ? { memoryCheck } : {}), ...(diskCheck ? { diskCheck } : {}), ...machine.stats(), pagesWritten: c.pagesWritten };
      },
      machine,
      memory: () => machine.memory,
      progress: () => ({ ...machine.stats() }),
      cpu: () => ({ ...machine.cpuState() }),
      checkRange: () => {
        const c = machine.cpuState();
        return pattern === 'sequential' ? { startBytes: c.rangeStartBytes, endBytes: c.rangeEndBytes } : undefined;
      },
      ramHash: () => machine.ramHash(),
    };
  }
  if (o.machine === 'v86') {
    if (o.disk) throw new Error('--disk: only the test machine has a disk so far (v86 disks are not migrated yet)');
    // Loaded on demand: the v86 package is large and only this guest needs it.
    const { createV86Machine } = await import('../machine/v86-machine.js');
    const linux = o.guest === 'linux';
    if (o.guest !== undefined && o.guest !== 'linux' && o.guest !== 'multiboot') throw new Error(`--guest: multiboot or linux, got '${o.guest}'`);
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
  }
  throw new Error(`unknown machine '${o.machine}' (available: test, v86)`);
}
