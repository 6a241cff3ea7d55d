/**
 * What a guest type provides: a Machine plus what the CLI reports about it.
 * A guest type is one module (e.g. test-guest.ts) registered by one line in
 * registry.ts.
 */
import type { IncomingDiskImage } from '../block/index.js';
import type { Machine } from '../machine/machine.js';
import type { DiskSpec } from './disk.js';

export interface GuestOptions {
  /** The guest type's name (`--machine`). */
  machine: string;
  /** A variant of the guest type (`--guest`), if it has any. */
  guest?: string;
  ramSizeBytes: number;
  incoming: boolean;
  dirtyRatePagesPerSecond: number;
  pattern: string;
  kernel?: string;
  /** A disk, and its workload (guest types that have disks). */
  disk?: DiskSpec;
  diskRateBlocksPerSecond?: number;
  diskPattern?: string;
  /**
   * v86 media (`--hda`, `--hdb`, `--fda`, `--cdrom`): raw image paths. On a
   * source the images are used in place; on a destination a writable one
   * names where the migrated disk goes (PATH.livemig-incoming, renamed when
   * complete; PATH must exist, the size is its size), unless `diskShared`.
   */
  media?: { hda?: string; hdb?: string; fda?: string; cdrom?: string };
  /** `--disk-shared`: both sides open the same image files; nothing is copied, the source flushes them before the switchover. */
  diskShared?: boolean;
  /** `--bios`, `--vga-bios`: firmware images (e.g. /usr/share/seabios/bios.bin) for guests that boot from their disks. */
  bios?: string;
  vgaBios?: string;
  /** `--guest-share`: the v86 guest's share of its thread while a migration shares it (V86MachineOptions.guestSharePercent). */
  guestSharePercent?: number;
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
  /** How to give this guest type the disk `name` (appended to "has no disk of that name"), e.g. '; give it one with --hda PATH'. */
  diskHint?(name: string): string;
}

/** How `livemig demo` runs a guest type. */
export interface GuestDemo {
  /** Guest RAM when --ram is not given, e.g. '256M'. */
  defaultRam(guest: string | undefined): string;
  /** What runs, for the opening line ("a 256M <what>, migrated live ..."). */
  describe(o: { guest: string | undefined; dirtyRate: string }): string;
  /** Extra `livemig run` arguments for the source. */
  sourceArgs(o: { dirtyRate: string }): string[];
  /** Turn auto-converge on: the guest can write memory faster than the link carries it. */
  autoConverge: boolean;
  /** The `guest` event figure that shows the destination's guest still runs. */
  progressFigure: string;
  /**
   * A program in the guest that checks its own memory and reports on the
   * serial console: the source waits for `ready` before migrating; the
   * destination's next line matching `result` is shown, and `corrupt` there
   * fails the demo. `request`, if given, is typed into the destination's
   * serial console after the move (it runs with --serial-stdin) to ask for
   * that check.
   */
  selfCheck?(guest: string | undefined): { waiting: string; ready: RegExp; result: RegExp; linePrefix: string; corrupt: string; request?: string } | undefined;
  /**
   * A disk the demo attaches to both sides (the source boots a copy of
   * `image`, the destination receives into an empty file of its size) and
   * migrates live (`blk`). The destination starts paused (-S): the demo
   * compares the two images at the switchover, then sends `cont`.
   */
  disk?(guest: string | undefined): Promise<{ slot: 'hda'; image: string } | undefined>;
}

export interface GuestType {
  /** `--machine NAME`. */
  readonly name: string;
  /** One line for the help text, e.g. 'an x86 PC (v86)'. */
  readonly description: string;
  /** Values `--guest` accepts, the default first (none: the type has no variants). */
  readonly variants?: ReadonlyArray<{ name: string; description: string }>;
  /** Start a guest (or, with `incoming`, one waiting for a migration). Load large dependencies here, on demand. */
  create(options: GuestOptions): Promise<Guest>;
  readonly demo: GuestDemo;
}
