/**
 * Migration parameters and capabilities, named as in QEMU's QMP
 * (`migrate-set-parameters`, `migrate-set-capabilities`).
 *
 * Where livemig's default differs from QEMU 7.2's, the reason is given.
 */
import { MULTIFD_COMPRESSION_FLAGS, MULTIFD_DEFAULT_LEVEL, multifdLevelRange, type MultifdCompression } from '../ram/multifd/codec.js';
import { DEFAULT_MULTIFD_CHANNELS } from '../ram/multifd/packet.js';
import { DEFAULT_XBZRLE_CACHE_BYTES } from '../ram/page-cache.js';

export interface MigrationParameters {
  /**
   * Rate limit in bytes per second; 0 = unlimited. QEMU 7.2 defaults to
   * 128 MiB/s, a known cause of slow migrations on fast links; livemig
   * defaults to unlimited: a user who shares the link sets a cap.
   */
  'max-bandwidth': number;
  /** The pause the user accepts at switchover, in ms (QEMU: 300, at most 2,000,000). */
  'downtime-limit': number;
  /** XBZRLE cache size in bytes (QEMU: 64 MiB; a power-of-two number of pages). */
  'xbzrle-cache-size': number;
  /** Auto-converge: first throttle (%), increment (%), ceiling (%), trigger (% of transferred bytes). */
  'cpu-throttle-initial': number;
  'cpu-throttle-increment': number;
  'max-cpu-throttle': number;
  'throttle-trigger-threshold': number;
  /** Auto-converge: raise the throttle by less than the increment when less is needed (QEMU: false). */
  'cpu-throttle-tailslow': boolean;
  /** Multifd: extra connections that carry page contents (QEMU: 2, range 1..255); both sides must agree. */
  'multifd-channels': number;
  /** Multifd payload compression (QEMU 7.2: none, zlib, zstd); both sides must agree. */
  'multifd-compression': MultifdCompression;
  /** zlib level for multifd (QEMU: 1, range 0..9). */
  'multifd-zlib-level': number;
  /** zstd level for multifd (QEMU: 1, range 0..20). */
  'multifd-zstd-level': number;
  /**
   * livemig: how long (ms) a peer may take, send or acknowledge nothing
   * before the migration fails with `peer-timeout` and the source resumes its
   * guest. QEMU has no such bound: a blackholed link hangs it until cancelled.
   */
  'x-livemig-peer-timeout-ms': number;
}

export interface MigrationCapabilities {
  xbzrle: boolean;
  'auto-converge': boolean;
  events: boolean;
  /**
   * Destination to source messages on the same socket. QEMU defaults to off;
   * livemig turns it on for sockets because the source then completes only
   * once the destination confirms it runs the guest (SHUT 0), and the reported
   * downtime is the real pause. Ignored for exec: and file:, which are one-way.
   */
  'return-path': boolean;
  'pause-before-switchover': boolean;
  /** Copy the machine's disks too (QEMU's block migration; `migrate` with `blk: true` turns it on for one migration). */
  block: boolean;
  /**
   * Send all-zero disk chunks as a flag without data. QEMU defaults to off;
   * livemig turns it on: sparse and fresh disks are mostly zeros, and the
   * check costs far less than sending 1 MiB.
   */
  'zero-blocks': boolean;
  /** Page contents over `multifd-channels` extra connections (tcp: and unix: only), QEMU 7.2's format. */
  multifd: boolean;
}

export const DEFAULT_PARAMETERS: Readonly<MigrationParameters> = {
  'max-bandwidth': 0,
  'downtime-limit': 300,
  'xbzrle-cache-size': DEFAULT_XBZRLE_CACHE_BYTES,
  'cpu-throttle-initial': 20,
  'cpu-throttle-increment': 10,
  'max-cpu-throttle': 99,
  'throttle-trigger-threshold': 50,
  'cpu-throttle-tailslow': false,
  'multifd-channels': DEFAULT_MULTIFD_CHANNELS,
  'multifd-compression': 'none',
  'multifd-zlib-level': MULTIFD_DEFAULT_LEVEL,
  'multifd-zstd-level': MULTIFD_DEFAULT_LEVEL,
  'x-livemig-peer-timeout-ms': 10_000,
};

/** In the order of QEMU's MigrationCapability enum, which query-migrate-capabilities follows. */
export const DEFAULT_CAPABILITIES: Readonly<MigrationCapabilities> = {
  xbzrle: false,
  'auto-converge': false,
  'zero-blocks': true,
  events: false,
  block: false,
  'return-path': true,
  'pause-before-switchover': false,
  multifd: false,
};

function integerIn(name: string, value: unknown, min: number, max: number, unit = ''): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new RangeError(`Parameter '${name}' expects an integer in the range of ${min} to ${max}${unit}`);
  }
  return value;
}

/** Check a partial update against QEMU's ranges; returns the merged parameters. */
export function applyParameters(current: MigrationParameters, update: Partial<Record<string, unknown>>): MigrationParameters {
  const next: MigrationParameters = { ...current };
  for (const [name, value] of Object.entries(update)) {
    switch (name) {
      case 'max-bandwidth':
        next[name] = integerIn(name, value, 0, Number.MAX_SAFE_INTEGER, ' bytes/second');
        break;
      case 'downtime-limit':
        next[name] = integerIn(name, value, 0, 2_000_000, ' milliseconds');
        break;
      case 'xbzrle-cache-size': {
        const v = integerIn(name, value, 4096, 2 ** 40);
        if (!Number.isInteger(Math.log2(v))) throw new RangeError(`Parameter '${name}' expects a power of two`);
        next[name] = v;
        break;
      }
      case 'cpu-throttle-initial':
      case 'cpu-throttle-increment':
      case 'max-cpu-throttle':
        next[name] = integerIn(name, value, 1, 99);
        break;
      case 'throttle-trigger-threshold':
        next[name] = integerIn(name, value, 1, 100);
        break;
      case 'cpu-throttle-tailslow':
        if (typeof value !== 'boolean') throw new RangeError(`Parameter '${name}' expects a boolean`);
        next[name] = value;
        break;
      case 'multifd-channels':
        next[name] = integerIn(name, value, 1, 255);
        break;
      case 'multifd-compression':
        if (typeof value !== 'string' || !Object.hasOwn(MULTIFD_COMPRESSION_FLAGS, value)) {
          throw new RangeError(`Parameter 'multifd-compression' does not accept value '${String(value)}'`);
        }
        next[name] = value as MultifdCompression;
        break;
      case 'multifd-zlib-level':
        next[name] = integerIn(name, value, ...multifdLevelRange('zlib'));
        break;
      case 'multifd-zstd-level':
        next[name] = integerIn(name, value, ...multifdLevelRange('zstd'));
        break;
      case 'x-livemig-peer-timeout-ms':
        next[name] = integerIn(name, value, 100, 3_600_000, ' milliseconds');
        break;
      default:
        throw new RangeError(`Parameter '${name}' is unexpected`);
    }
  }
  if (next['cpu-throttle-initial'] > next['max-cpu-throttle']) {
    throw new RangeError("Parameter 'cpu-throttle-initial' must not exceed 'max-cpu-throttle'");
  }
  return next;
}

export function applyCapabilities(current: MigrationCapabilities, update: Partial<Record<string, unknown>>): MigrationCapabilities {
  const next: MigrationCapabilities = { ...current };
  for (const [name, value] of Object.entries(update)) {
    if (!(name in DEFAULT_CAPABILITIES)) throw new RangeError(`Capability '${name}' is not supported`);
    if (typeof value !== 'boolean') throw new TypeError(`Capability '${name}' expects a boolean`);
    (next as unknown as Record<string, boolean>)[name] = value;
  }
  return next;
}
