/**
 * The interface between the savevm layer and the state it saves: QEMU's
 * SaveVMHandlers (include/migration/register.h) in TypeScript.
 *
 * A handler knows how to write and read its own section bodies; it never sees
 * section headers, footers, transports or the migration loop.
 */
import type { StreamReader, StreamWriter } from '../wire/index.js';

/** Which kind of section a body belongs to. */
export type SectionKind = 'start' | 'part' | 'end' | 'full';

/** What a loader handler is told about the section it is reading. */
export interface LoadSectionContext {
  kind: SectionKind;
  /** The version from the START/FULL header of this entry. */
  versionId: number;
  idstr: string;
  instanceId: number;
  sectionId: number;
  /** Stream offset of the section's type byte. */
  offset: number;
}

export interface SaveVMHandlers {
  /** Whether the entry takes part in this migration at all (default true). */
  isActive?(): boolean;

  /** Write the START body. Its presence makes the entry iterative ("live"). */
  saveSetup?(out: StreamWriter): Promise<void>;
  /**
   * Bytes still to send. With `exact` false a cheap estimate; with `exact`
   * true the handler may do expensive work (sync a dirty log) to be precise.
   */
  statePending?(exact: boolean): Promise<number>;
  /**
   * Write one PART body, honouring `shouldStop()` (the rate limit) between
   * records. Resolves true when nothing is left for now.
   */
  saveIterate?(out: StreamWriter, shouldStop: () => boolean): Promise<boolean>;
  /** Write the END body with everything left; the guest is stopped. */
  saveCompletePrecopy?(out: StreamWriter): Promise<void>;
  /** Non-iterative (legacy) state: write the FULL body. */
  saveState?(out: StreamWriter): Promise<void>;
  /** After the migration ends, successfully or not. */
  saveCleanup?(): Promise<void> | void;

  /** Before the first section of this entry is loaded. */
  loadSetup?(): Promise<void> | void;
  /** Read one section body of this entry (any kind), exactly as written. */
  loadState(input: StreamReader, context: LoadSectionContext): Promise<void>;
  /** After the load ends, successfully or not. */
  loadCleanup?(): Promise<void> | void;
}
