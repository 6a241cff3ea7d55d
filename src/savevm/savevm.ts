/**
 * The save side of the registry: QEMU's qemu_savevm_state_setup,
 * qemu_savevm_state_iterate and qemu_savevm_state_complete_precopy.
 *
 * It walks the registry in save order and frames each entry's output as QEMU
 * does (START / PART / END for iterative entries, FULL for the rest, footers,
 * EOF and the JSON trailer). When to call each phase is the migration loop's
 * business, not this module's.
 */
import { formatVmdescJson, vmdescDevice, vmstateFixedSizeBytes, vmstateSave, vmstateSectionNeeded, type VmdescDevice } from '../vmstate/index.js';
import {
  SectionType,
  TARGET_PAGE_SIZE,
  writeConfiguration,
  writeEof,
  writeFileHeader,
  writeFullSectionHeader,
  writeSectionFooter,
  writeShortSectionHeader,
  writeVmdesc,
  utf8ByteLength,
  type StreamConfiguration,
  type StreamWriter,
} from '../wire/index.js';
import type { SaveStateEntry, SaveStateRegistry } from './registry.js';

export interface SaveOptions {
  /** What the configuration section announces; `machineName` must match the destination's exactly. */
  configuration: StreamConfiguration;
  /** Write the JSON trailer after EOF (QEMU does, except for very old machine types). Default true. */
  sendVmdesc?: boolean;
}

export class SaveVmState {
  private readonly sendVmdesc: boolean;
  private setupDone = false;
  /** The entry the rate limit kept from its turn in the last round: it goes first in the next. */
  private starvedEntry: SaveStateEntry | undefined;

  constructor(
    private readonly registry: SaveStateRegistry,
    private out: StreamWriter,
    private readonly options: SaveOptions,
  ) {
    this.sendVmdesc = options.sendVmdesc ?? true;
  }

  private active(entry: SaveStateEntry): boolean {
    return entry.handlers?.isActive?.() ?? true;
  }

  private iterativeEntries(): SaveStateEntry[] {
    return this.registry.entries().filter((e) => e.isIterative && this.active(e));
  }

  /**
   * Bytes the FULL sections will take at completion, estimated from the
   * descriptions (values may be unreadable while the guest runs): what the
   * guest's pause must also carry besides the remaining RAM.
   */
  deviceStateBytesEstimate(): number {
    let bytes = 1 + (this.sendVmdesc ? 5 + 1024 : 0); // EOF, trailer header and a typical trailer
    for (const entry of this.registry.entries()) {
      if (entry.isIterative) continue;
      const header = 1 + 4 + 1 + utf8ByteLength(entry.idstr) + 4 + 4 + 5;
      if (entry.vmsd) bytes += header + vmstateFixedSizeBytes(entry.vmsd);
      else if (entry.handlers?.saveState) bytes += header;
    }
    return bytes;
  }

  /** Postcopy recovery: write to a new channel from now on. */
  redirect(out: StreamWriter): void {
    this.out = out;
  }

  /** File header and configuration section. */
  async writeHeader(): Promise<void> {
    writeFileHeader(this.out);
    writeConfiguration(this.out, this.options.configuration);
    await this.out.flush();
  }

  /** Phase 1, setup: a START section from every active iterative entry. */
  async setup(): Promise<void> {
    for (const entry of this.iterativeEntries()) {
      writeFullSectionHeader(this.out, SectionType.Start, entry.sectionId, entry.idstr, entry.instanceId, entry.version);
      await entry.handlers!.saveSetup!(this.out);
      writeSectionFooter(this.out, entry.sectionId);
    }
    this.setupDone = true;
    await this.out.flush();
  }

  /** Bytes the iterative entries still have to send (`exact` may sync dirty logs). */
  async pendingBytes(exact: boolean): Promise<number> {
    let total = 0;
    for (const entry of this.iterativeEntries()) total += (await entry.handlers!.statePending?.(exact)) ?? 0;
    return total;
  }

  /**
   * Phase 2, one iteration: a PART section per entry, in order, until the rate
   * limit stops us. As QEMU, an entry that is not finished with its current
   * pass ends the round, so a fast-changing entry is not resent over and over
   * while later ones wait. Unlike QEMU, an entry the rate limit kept from its
   * turn goes first in the next round: a disk whose guest rewrites more chunks
   * than the link carries would otherwise take every window, and RAM would
   * never move (QEMU's block migration has that starvation).
   * Resolves true when every entry is done for now.
   */
  async iterate(shouldStop: () => boolean): Promise<boolean> {
    if (!this.setupDone) throw new Error('iterate before setup');
    const entries = this.iterativeEntries().filter((e) => e.handlers!.saveIterate);
    const first = this.starvedEntry ? Math.max(0, entries.indexOf(this.starvedEntry)) : 0;
    this.starvedEntry = undefined;
    let allDone = true;
    for (let k = 0; k < entries.length; k++) {
      const entry = entries[(first + k) % entries.length]!;
      if (shouldStop()) {
        this.starvedEntry = entry; // kept from its turn (even as the first: the window may still be spent)
        return false;
      }
      writeShortSectionHeader(this.out, SectionType.Part, entry.sectionId);
      const done = await entry.handlers!.saveIterate!(this.out, shouldStop);
      writeSectionFooter(this.out, entry.sectionId);
      if (!done) {
        allDone = false;
        break;
      }
    }
    await this.out.flush();
    return allDone;
  }

  /**
   * Phase 3, completion with the guest stopped: END for every iterative entry,
   * FULL for every other entry (vmsd `needed` permitting), EOF, vmdesc.
   */
  async completePrecopy(): Promise<void> {
    if (!this.setupDone) throw new Error('complete before setup');
    await this.writeEndSections();
    const devices: VmdescDevice[] = [];
    for (const entry of this.registry.entries()) {
      if (entry.isIterative) continue;
      const device = await this.saveFull(entry);
      if (device) devices.push(device);
      await this.out.drain();
    }
    writeEof(this.out);
    if (this.sendVmdesc) writeVmdesc(this.out, formatVmdescJson({ page_size: TARGET_PAGE_SIZE, devices }));
    await this.out.flush();
  }

  /**
   * Postcopy's switch: the FULL sections of every non-iterative entry into
   * `pkg` (the package, which the caller wraps in LISTEN ... RUN), as QEMU's
   * qemu_savevm_state_complete_precopy_non_iterable. No EOF, no vmdesc.
   */
  async savePostcopyDeviceState(pkg: StreamWriter): Promise<void> {
    if (!this.setupDone) throw new Error('postcopy before setup');
    for (const entry of this.registry.entries()) {
      if (!entry.isIterative) await this.saveFull(entry, pkg);
    }
  }

  /** Postcopy's end: END for every iterative entry (the rest of RAM), then EOF; no vmdesc (QEMU sends none in postcopy). */
  async completePostcopy(): Promise<void> {
    await this.writeEndSections();
    writeEof(this.out);
    await this.out.flush();
  }

  /** END for every iterative entry: what each still has (the guest is stopped, or runs on the destination in postcopy). */
  private async writeEndSections(): Promise<void> {
    for (const entry of this.iterativeEntries()) {
      writeShortSectionHeader(this.out, SectionType.End, entry.sectionId);
      await entry.handlers!.saveCompletePrecopy?.(this.out);
      writeSectionFooter(this.out, entry.sectionId);
      await this.out.drain();
    }
  }

  /** One FULL section and its vmdesc entry; null when the entry sends nothing. */
  private async saveFull(entry: SaveStateEntry, out: StreamWriter = this.out): Promise<VmdescDevice | null> {
    if (entry.vmsd) {
      if (!vmstateSectionNeeded(entry.vmsd, entry.opaque!)) return null;
      writeFullSectionHeader(out, SectionType.Full, entry.sectionId, entry.idstr, entry.instanceId, entry.version);
      const description = vmstateSave(out, entry.vmsd, entry.opaque!);
      writeSectionFooter(out, entry.sectionId);
      return vmdescDevice(entry.idstr, entry.instanceId, description);
    }
    const handlers = entry.handlers!;
    if (!handlers.saveState || !this.active(entry)) return null;
    writeFullSectionHeader(out, SectionType.Full, entry.sectionId, entry.idstr, entry.instanceId, entry.version);
    const before = out.bytesWritten;
    await handlers.saveState(out);
    const size = out.bytesWritten - before;
    writeSectionFooter(out, entry.sectionId);
    // QEMU describes a legacy body as one opaque buffer (vmstate_save_old_style).
    return { name: entry.idstr, instance_id: entry.instanceId, size, fields: [{ name: 'data', size, type: 'buffer' }] };
  }

  /** After the migration, successful or not: every entry's save cleanup. */
  cleanup(): Promise<void> {
    return saveCleanup(this.registry);
  }
}

/** Every entry's save cleanup (QEMU's qemu_savevm_state_cleanup), also for a migration that failed before its stream began. */
export async function saveCleanup(registry: SaveStateRegistry): Promise<void> {
  for (const entry of registry.entries()) await entry.handlers?.saveCleanup?.();
}
