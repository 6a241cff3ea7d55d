/**
 * `livemig analyze` for block migration: reads `block` sections without any
 * disk behind them and counts, per device, the chunks sent with data and as
 * zeros, and the PROGRESS values; reads the `livemig-disks` list when present.
 */
import type { LoadSectionContext, SaveVMHandlers } from '../savevm/handlers.js';
import type { StreamReader } from '../wire/index.js';
import { BLK_MIG_BLOCK_SIZE, readBlockSection } from './block-records.js';
import { readDiskManifest } from './manifest.js';

export interface BlockDeviceSummary {
  name: string;
  /** Size announced by the `livemig-disks` list (livemig streams only). */
  sizeBytes: number | null;
  dataChunks: number;
  zeroChunks: number;
  /** Chunks sent more than once (dirty-phase re-sends). */
  resentChunks: number;
  /** Distinct chunks seen. */
  distinctChunks: number;
}

export interface BlockSummary {
  sections: number;
  devices: BlockDeviceSummary[];
  /** PROGRESS values in stream order. */
  progress: number[];
  /** Payload bytes of DEVICE_BLOCK records (1 MiB each, zero chunks none). */
  dataBytes: number;
}

export class BlockAnalysisHandler implements SaveVMHandlers {
  private sections = 0;
  private readonly progress: number[] = [];
  private readonly devices = new Map<string, { summary: BlockDeviceSummary; seen: Set<number> }>();
  private readonly listed = new Map<string, number>();

  /** A loader for the `livemig-disks` section that records the list. */
  readonly manifestHandler: SaveVMHandlers = {
    loadState: async (input: StreamReader, context: LoadSectionContext): Promise<void> => {
      if (context.kind !== 'start') return;
      for (const { name, sizeBytes } of await readDiskManifest(input, context)) this.listed.set(name, sizeBytes);
    },
  };

  private device(name: string): { summary: BlockDeviceSummary; seen: Set<number> } {
    let d = this.devices.get(name);
    if (!d) {
      d = { summary: { name, sizeBytes: null, dataChunks: 0, zeroChunks: 0, resentChunks: 0, distinctChunks: 0 }, seen: new Set() };
      this.devices.set(name, d);
    }
    return d;
  }

  async loadState(input: StreamReader): Promise<void> {
    this.sections++;
    await readBlockSection(input, (record) => {
      if (record.type === 'progress') this.progress.push(record.percent);
      if (record.type !== 'device-block') return;
      const d = this.device(record.device);
      if (record.zero) d.summary.zeroChunks++;
      else d.summary.dataChunks++;
      if (d.seen.has(record.sector)) d.summary.resentChunks++;
      else d.seen.add(record.sector);
    });
  }

  /** Null when the stream had no block section and no disk list. */
  summary(): BlockSummary | null {
    if (this.sections === 0 && this.listed.size === 0) return null;
    for (const name of this.listed.keys()) this.device(name);
    const devices = [...this.devices.values()].map(({ summary, seen }) => ({ ...summary, sizeBytes: this.listed.get(summary.name) ?? null, distinctChunks: seen.size }));
    return { sections: this.sections, devices, progress: [...this.progress], dataBytes: devices.reduce((s, d) => s + d.dataChunks * BLK_MIG_BLOCK_SIZE, 0) };
  }
}
