/** `--machine test`: the built-in test machine (a vCPU thread writing RAM, optionally a disk). */
import type { FileBlockDevice, IncomingDiskImage } from '../block/index.js';
import { createTestMachine, type TestPattern } from '../machine/index.js';
import { openIncomingDisk, openSourceDisk } from './disk.js';
import type { GuestType } from './guest.js';

export const testGuestType: GuestType = {
  name: 'test',
  description: 'built-in',
  async create(o) {
    if (o.media || o.diskShared || o.bios !== undefined || o.vgaBios !== undefined || o.guestSharePercent !== undefined) throw new Error('--hda, --hdb, --fda, --cdrom, --disk-shared, --bios, --vga-bios, --guest-share: only for --machine v86 (this machine takes --disk PATH)');
    const pattern = o.pattern as TestPattern;
    if (pattern !== 'sequential' && pattern !== 'random') throw new Error(`--pattern: sequential or random, got '${o.pattern}'`);
    const diskPattern = (o.diskPattern ?? 'random') as TestPattern;
    if (diskPattern !== 'sequential' && diskPattern !== 'random') throw new Error(`--disk-pattern: sequential or random, got '${o.diskPattern}'`);
    const incomingDisks: IncomingDiskImage[] = [];
    let disk: FileBlockDevice | undefined;
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
  },
  demo: {
    defaultRam: () => '256M',
    describe: ({ dirtyRate }) => `test machine writing ${dirtyRate} pages/s`,
    sourceArgs: ({ dirtyRate }) => ['--dirty-rate', dirtyRate],
    autoConverge: false,
    progressFigure: 'passes',
  },
};
