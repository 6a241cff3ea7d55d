/**
 * The registry of save-state entries: QEMU's SaveStateEntry list
 * (migration/savevm.c, `savevm_state.handlers`).
 *
 * An entry is either declarative (a VMStateDescription and the object it
 * describes) or a handler table (RAM, disks). Entries are kept in save order:
 * descending priority, registration order within a priority.
 */
import type { VMStateDescription } from '../vmstate/index.js';
import { utf8ByteLength } from '../wire/writer.js';
import type { SaveVMHandlers } from './handlers.js';

/** Pass as `instanceId` to take the next free instance for the idstr (QEMU's VMSTATE_INSTANCE_ID_ANY). */
export const INSTANCE_ID_ANY = -1;

interface EntryCommon {
  /** Section name, at most 255 bytes (e.g. `ram`, `timer`, `0000:00:01.1/ide`). */
  idstr: string;
  /** Instance number; INSTANCE_ID_ANY for the next free one. Default 0. */
  instanceId?: number;
  /** Another instance id accepted when loading (QEMU's alias id). */
  aliasId?: number;
  /** Section id to write; default: the registry's counter, as QEMU numbers at registration. */
  sectionId?: number;
  /**
   * Loading only: a stream that reaches EOF without a START or FULL section
   * for this entry is refused as incomplete (the guest cannot run without
   * it). Default false, as QEMU, which leaves such a device at its reset
   * state. Saving ignores it.
   */
  required?: boolean;
}

export interface VmstateEntryOptions<T extends object> extends EntryCommon {
  vmsd: VMStateDescription<T>;
  opaque: T;
}

export interface HandlerEntryOptions extends EntryCommon {
  /** The version written in START/FULL headers and the highest accepted on load. */
  version: number;
  handlers: SaveVMHandlers;
}

export interface SaveStateEntry {
  readonly idstr: string;
  readonly instanceId: number;
  readonly aliasId: number | undefined;
  readonly sectionId: number;
  readonly version: number;
  readonly priority: number;
  readonly vmsd: VMStateDescription<object> | undefined;
  readonly opaque: object | undefined;
  readonly handlers: SaveVMHandlers | undefined;
  /** Has a setup handler: sends START/PART/END sections instead of one FULL. */
  readonly isIterative: boolean;
  /** A load must see this entry's section before EOF (see EntryCommon.required). */
  readonly required: boolean;
}

const MAX_IDSTR_BYTES = 255;

export class SaveStateRegistry {
  private readonly list: SaveStateEntry[] = [];
  /**
   * Not 0: QEMU 7.2 dispatches PART/END by each entry's load_section_id, which
   * is 0 for every entry that has not seen a START, so a live section numbered
   * 0 lands in the destination's first entry (found loading into real QEMU:
   * "timer: incoming version_id 0 is too old").
   */
  private nextSectionId = 1;

  register<T extends object>(options: VmstateEntryOptions<T> | HandlerEntryOptions): SaveStateEntry {
    const idstrBytes = utf8ByteLength(options.idstr);
    if (idstrBytes === 0 || idstrBytes > MAX_IDSTR_BYTES) {
      throw new RangeError(`idstr '${options.idstr}' must be 1..${MAX_IDSTR_BYTES} bytes`);
    }
    let instanceId = options.instanceId ?? 0;
    if (instanceId === INSTANCE_ID_ANY) {
      instanceId = 1 + Math.max(-1, ...this.list.filter((e) => e.idstr === options.idstr).map((e) => e.instanceId));
    }
    if (!Number.isInteger(instanceId) || instanceId < 0 || instanceId > 0xffffffff) {
      throw new RangeError(`instance id ${instanceId} of '${options.idstr}' is not a u32`);
    }
    if (this.find(options.idstr, instanceId)) {
      throw new Error(`'${options.idstr}' instance ${instanceId} is already registered`);
    }
    const sectionId = options.sectionId ?? this.nextSectionId;
    this.nextSectionId = Math.max(this.nextSectionId, sectionId) + 1;
    const isVmstate = 'vmsd' in options;
    const entry: SaveStateEntry = {
      idstr: options.idstr,
      instanceId,
      aliasId: options.aliasId,
      sectionId,
      version: isVmstate ? options.vmsd.version : options.version,
      priority: isVmstate ? (options.vmsd.priority ?? 0) : 0,
      vmsd: isVmstate ? (options.vmsd as VMStateDescription<object>) : undefined,
      opaque: isVmstate ? options.opaque : undefined,
      handlers: isVmstate ? undefined : options.handlers,
      isIterative: !isVmstate && options.handlers.saveSetup !== undefined,
      required: options.required ?? false,
    };
    // Insert after every entry of higher or equal priority (FIFO within a priority).
    let at = this.list.length;
    while (at > 0 && this.list[at - 1]!.priority < entry.priority) at--;
    this.list.splice(at, 0, entry);
    return entry;
  }

  unregister(entry: SaveStateEntry): void {
    const at = this.list.indexOf(entry);
    if (at >= 0) this.list.splice(at, 1);
  }

  /** Entries in save order. */
  entries(): readonly SaveStateEntry[] {
    return this.list;
  }

  /** The entry for an incoming (idstr, instance), also by alias id, as QEMU's find_se. */
  find(idstr: string, instanceId: number): SaveStateEntry | undefined {
    return this.list.find(
      (e) => e.idstr === idstr && (e.instanceId === instanceId || (e.aliasId !== undefined && e.aliasId === instanceId)),
    );
  }
}
