/**
 * Migration parameters and capabilities in one place: the table of QEMU 7.2's
 * parameters and their types, the checks livemig applies when they are set
 * (QMP `migrate-set-parameters` / `migrate-set-capabilities`, with QEMU's
 * messages), their text forms on the command line (`--param NAME=VALUE`,
 * `--cap NAME[=on|off]`), and MigrationConfig, the settings of one machine.
 *
 * Every QEMU 7.2 parameter is accepted and listed (query-migrate-parameters)
 * with QEMU 7.2's default, because management tools set them all, mostly to
 * their defaults. One livemig does not implement takes only its default; any
 * other value is refused, naming the parameter and the default.
 *
 * Text is read in one of two scopes, the same text always giving the same value:
 *  - 'livemig': settings for livemig's own migrations (`livemig run`). A name
 *    not in QEMU 7.2 or livemig is an error, and so is a value it would refuse.
 *  - 'qmp': settings sent to a QMP monitor that may be real QEMU's (`livemig
 *    migrate`). Every name in the table is typed from it, a name not in it (a
 *    newer QEMU's) by guessing from the text; the monitor checks the values.
 *
 * Where livemig's default differs from QEMU 7.2's, the reason is given.
 */
import { TypedEmitter } from '../wire/emitter.js';
import { printable } from '../wire/printable.js';
import { parseSize } from './size.js';
import { BitmapMappingError, bitmapMappingFault, visitBitmapMapping, type BitmapMigrationNodeAlias } from './bitmap-mapping.js';
import { MULTIFD_COMPRESSION_FLAGS, MULTIFD_DEFAULT_LEVEL, multifdLevelRange, type MultifdCompression } from '../ram/multifd/codec.js';
import { DEFAULT_MULTIFD_CHANNELS } from '../ram/multifd/packet.js';
import { DEFAULT_XBZRLE_CACHE_BYTES } from '../ram/page-cache.js';

// ---------- errors ----------

export type ConfigErrorCode =
  /** The argument is not NAME=VALUE (parameters) or NAME[=on|off] (capabilities). */
  | 'syntax'
  /** The text does not read as the parameter's type (`downtime-limit=soon`). */
  | 'bad-text'
  /** A typed value livemig refuses: wrong JSON type, out of range, not one of the choices. */
  | 'invalid-value'
  /** Two parameters that contradict each other (cpu-throttle-initial above max-cpu-throttle). */
  | 'conflict'
  /** No such parameter / capability, in QEMU 7.2 or livemig. */
  | 'unknown-parameter'
  | 'unknown-capability'
  /** A QEMU parameter / capability livemig does not implement (scope 'livemig'). */
  | 'not-implemented';

/** A refused setting. The message names the argument or parameter and what was wrong; a QMP server sends it as the error's desc. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly code: ConfigErrorCode,
    message: string,
  ) {
    super(message);
  }
}

// ---------- the parameters ----------

export interface MigrationParameters {
  /** Self-announce after migration (ms; rounds): livemig has no network devices to announce; QEMU's defaults only. */
  'announce-initial': number;
  'announce-max': number;
  'announce-rounds': number;
  'announce-step': number;
  /** The `compress` capability's settings (not implemented; QEMU's defaults only). */
  'compress-level': number;
  'compress-threads': number;
  'compress-wait-thread': boolean;
  'decompress-threads': number;
  /**
   * TLS: the id of a tls-creds object ('' = no TLS), the name the peer's
   * certificate must carry ('' = the URI's host), the id of an authz object
   * for the client's certificate ('' = none). QMP also takes null for '' (QEMU 7.2's StrOrNull).
   */
  'tls-creds': string;
  'tls-hostname': string;
  'tls-authz': string;
  /** COLO's checkpoint interval (ms; not implemented; QEMU's default only). */
  'x-checkpoint-delay': number;
  /** Block migration of only the top image (not implemented; QEMU's default only). */
  'block-incremental': boolean;
  /** Postcopy's rate limit for the background stream, bytes/second (0 = none); page requests go out regardless. */
  'max-postcopy-bandwidth': number;
  /**
   * Dirty-bitmap aliases; QEMU lists it only once set. livemig migrates no
   * bitmaps, so only an empty mapping (a no-op here) is accepted.
   */
  'block-bitmap-mapping'?: readonly unknown[];
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
   * livemig's own: how long, in ms, a peer may send or acknowledge nothing
   * before the migration fails (default 10 s, range 100 ms..1 h). QEMU has no
   * such limit and waits on a silent peer for as long as TCP does; livemig
   * fails instead, so the source guest keeps running and a new attempt can start
   * (liveness.ts; read live, so a change applies to a running migration).
   */
  'x-livemig-peer-timeout-ms': number;
  /**
   * With capability postcopy-ram: switch to postcopy by itself once pre-copy
   * stops converging (postcopy-policy.ts: two passes in a row that close less
   * than 10 % of the gap to the downtime budget), not only on migrate-start-postcopy.
   */
  'x-livemig-postcopy-auto': boolean;
}

export const DEFAULT_PEER_TIMEOUT_MS = 10_000;
/** livemig's own parameters carry this prefix (QEMU's `x-` marks experimental ones); no QEMU parameter does. */
export const LIVEMIG_PARAMETER_PREFIX = 'x-livemig-';

/** QEMU 7.2's max-bandwidth default (MAX_THROTTLE), which livemig does not share (see MigrationParameters). */
export const QEMU_DEFAULT_MAX_BANDWIDTH = 128 << 20;

/**
 * In QEMU 7.2's MigrationParameters order (livemig's own last), as
 * query-migrate-parameters lists them. Checked against real QEMU 7.2's
 * query-migrate-parameters by test/qmp-parity.test.ts.
 */
export const DEFAULT_PARAMETERS: Readonly<MigrationParameters> = Object.freeze({
  'announce-initial': 50,
  'announce-max': 550,
  'announce-rounds': 5,
  'announce-step': 100,
  'compress-level': 1,
  'compress-threads': 8,
  'compress-wait-thread': true,
  'decompress-threads': 2,
  'throttle-trigger-threshold': 50,
  'cpu-throttle-initial': 20,
  'cpu-throttle-increment': 10,
  'cpu-throttle-tailslow': false,
  'tls-creds': '',
  'tls-hostname': '',
  'tls-authz': '',
  'max-bandwidth': 0,
  'downtime-limit': 300,
  'x-checkpoint-delay': 20_000,
  'block-incremental': false,
  'multifd-channels': DEFAULT_MULTIFD_CHANNELS,
  'xbzrle-cache-size': DEFAULT_XBZRLE_CACHE_BYTES,
  'max-postcopy-bandwidth': 0,
  'max-cpu-throttle': 99,
  'multifd-compression': 'none',
  'multifd-zlib-level': MULTIFD_DEFAULT_LEVEL,
  'multifd-zstd-level': MULTIFD_DEFAULT_LEVEL,
  'x-livemig-peer-timeout-ms': DEFAULT_PEER_TIMEOUT_MS,
  'x-livemig-postcopy-auto': false,
});

/**
 * How a parameter is written. In QMP every one is a JSON value of its kind;
 * on the command line `size` also takes a K/M/G/T suffix (binary: 1K = 1024)
 * and `boolean` on/off, true/false, yes/no.
 */
export type ParameterType = 'integer' | 'size' | 'boolean' | 'string' | 'json';

/**
 * The values livemig accepts for a parameter it implements. QEMU 7.2's
 * parameters first pass QEMU's own reading and checks (their `qapi` type,
 * QEMU_CHECKS); these bounds come after.
 */
export type AcceptedValues =
  /** integer and size: an inclusive range; `unit` only completes the message. */
  | { readonly min: number; readonly max: number; readonly unit?: string }
  /** string: one of these. */
  | { readonly oneOf: readonly string[] }
  /** QEMU 7.2's: whatever QEMU 7.2 takes. */
  | 'qemu'
  /** livemig's own boolean: either. */
  | 'any';

/**
 * QEMU 7.2's QAPI type of a parameter (MigrateSetParameters): how QEMU's QMP
 * input visitor reads the JSON value, and its words when it cannot.
 */
export type QapiType = 'size' | 'uint64' | 'uint32' | 'uint8' | 'bool' | 'StrOrNull' | 'enum' | 'array';

export interface ParameterSpec {
  readonly type: ParameterType;
  /** QEMU 7.2's parameters: their QAPI type (absent for newer QEMUs' and livemig's own). */
  readonly qapi?: QapiType;
  /** For parameters added after QEMU 7.2: the version that added them (so `livemig migrate` types them for a newer QEMU). */
  readonly since?: string;
  /** Present if livemig implements the parameter: what it accepts. */
  readonly implemented?: AcceptedValues;
  /**
   * QEMU 7.2's parameters livemig does not implement: the one value accepted,
   * QEMU 7.2's default (so a tool that sets every parameter to its default works).
   */
  readonly onlyDefault?: true;
}

const MILLISECONDS = 'milliseconds';

/**
 * QEMU 7.2's MigrateSetParameters in its order (QAPI `size` and uintN are
 * `integer`; byte counts and rates are `size` for the suffixes; the tls-*
 * StrOrNull are strings), a few newer QEMU parameters, and livemig's own.
 */
export const PARAMETER_TABLE = {
  'announce-initial': { type: 'integer', qapi: 'size', onlyDefault: true },
  'announce-max': { type: 'integer', qapi: 'size', onlyDefault: true },
  'announce-rounds': { type: 'integer', qapi: 'size', onlyDefault: true },
  'announce-step': { type: 'integer', qapi: 'size', onlyDefault: true },
  'compress-level': { type: 'integer', qapi: 'uint8', onlyDefault: true },
  'compress-threads': { type: 'integer', qapi: 'uint8', onlyDefault: true },
  'compress-wait-thread': { type: 'boolean', qapi: 'bool', onlyDefault: true },
  'decompress-threads': { type: 'integer', qapi: 'uint8', onlyDefault: true },
  'throttle-trigger-threshold': { type: 'integer', qapi: 'uint8', implemented: 'qemu' },
  'cpu-throttle-initial': { type: 'integer', qapi: 'uint8', implemented: 'qemu' },
  'cpu-throttle-increment': { type: 'integer', qapi: 'uint8', implemented: 'qemu' },
  'cpu-throttle-tailslow': { type: 'boolean', qapi: 'bool', implemented: 'qemu' },
  'tls-creds': { type: 'string', qapi: 'StrOrNull', implemented: 'qemu' },
  'tls-hostname': { type: 'string', qapi: 'StrOrNull', implemented: 'qemu' },
  'tls-authz': { type: 'string', qapi: 'StrOrNull', implemented: 'qemu' },
  'max-bandwidth': { type: 'size', qapi: 'size', implemented: 'qemu' },
  'downtime-limit': { type: 'integer', qapi: 'uint64', implemented: 'qemu' },
  'x-checkpoint-delay': { type: 'integer', qapi: 'uint32', onlyDefault: true },
  'block-incremental': { type: 'boolean', qapi: 'bool', onlyDefault: true },
  'multifd-channels': { type: 'integer', qapi: 'uint8', implemented: 'qemu' },
  // QEMU 7.2 takes caches up to what it can allocate; livemig's cache is an ArrayBuffer.
  'xbzrle-cache-size': { type: 'size', qapi: 'size', implemented: { min: 0, max: 2 ** 40, unit: "bytes (livemig's limit)" } },
  'max-postcopy-bandwidth': { type: 'size', qapi: 'size', implemented: 'qemu' },
  'max-cpu-throttle': { type: 'integer', qapi: 'uint8', implemented: 'qemu' },
  'multifd-compression': { type: 'string', qapi: 'enum', implemented: { oneOf: Object.keys(MULTIFD_COMPRESSION_FLAGS) } },
  'multifd-zlib-level': { type: 'integer', qapi: 'uint8', implemented: 'qemu' },
  'multifd-zstd-level': { type: 'integer', qapi: 'uint8', implemented: 'qemu' },
  'block-bitmap-mapping': { type: 'json', qapi: 'array', onlyDefault: true },
  // Newer QEMUs' (livemig migrate may drive one).
  'x-vcpu-dirty-limit-period': { type: 'integer', since: '8.1' },
  'vcpu-dirty-limit': { type: 'integer', since: '8.1' },
  'avail-switchover-bandwidth': { type: 'size', since: '8.2' },
  'mode': { type: 'string', since: '9.0' },
  'zero-page-detection': { type: 'string', since: '9.0' },
  // livemig's own.
  'x-livemig-peer-timeout-ms': { type: 'integer', implemented: { min: 100, max: 3_600_000, unit: MILLISECONDS } },
  'x-livemig-postcopy-auto': { type: 'boolean', implemented: 'any' },
} as const satisfies Record<string, ParameterSpec>;

export type ParameterName = keyof typeof PARAMETER_TABLE;

/** The names livemig accepts: implemented, or QEMU 7.2's taken at their default. */
type AcceptedName = { [K in ParameterName]: (typeof PARAMETER_TABLE)[K] extends { implemented: AcceptedValues } | { onlyDefault: true } ? K : never }[ParameterName];
// Compile-time: MigrationParameters' fields are exactly the accepted names.
const acceptedMatchesInterface: [AcceptedName, keyof MigrationParameters] extends [keyof MigrationParameters, AcceptedName] ? true : never = true;
void acceptedMatchesInterface;

/** The parameters livemig implements (the others take only QEMU 7.2's default). */
export const IMPLEMENTED_PARAMETERS: readonly string[] = Object.entries(PARAMETER_TABLE)
  .filter(([, spec]) => 'implemented' in spec)
  .map(([name]) => name);

/** The table entry for `name`, if any (own properties only: `constructor` is no parameter). */
export function parameterSpec(name: string): ParameterSpec | undefined {
  return Object.hasOwn(PARAMETER_TABLE, name) ? (PARAMETER_TABLE as Record<string, ParameterSpec>)[name] : undefined;
}

// ---------- the capabilities ----------

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
  /**
   * Postcopy, on both sides: `migrate-start-postcopy` moves the guest to the
   * destination before all its RAM has gone; the rest follows, pages the
   * guest touches first. Needs the return path; not with multifd or block migration (as 7.2).
   */
  'postcopy-ram': boolean;
  /** Destination: measure the time the guest waits for pages (query-migrate `postcopy-blocktime`, `postcopy-vcpu-blocktime`). */
  'postcopy-blocktime': boolean;
  /**
   * Destination: QEMU takes its disk images' locks and rereads their metadata
   * only once the guest starts (not when the stream ends under `-S`), so the
   * source keeps its images until `cont`. libvirt sets it on every destination
   * that lists it. A livemig destination takes no image locks and caches no
   * image metadata, and uses a disk only once the guest runs: it behaves so
   * whatever the setting, which is kept and reported.
   */
  'late-block-activate': boolean;
}

/** In the order of QEMU's MigrationCapability enum, which query-migrate-capabilities follows. */
export const DEFAULT_CAPABILITIES: Readonly<MigrationCapabilities> = Object.freeze({
  xbzrle: false,
  'auto-converge': false,
  'zero-blocks': true,
  events: false,
  'postcopy-ram': false,
  block: false,
  'return-path': true,
  'pause-before-switchover': false,
  multifd: false,
  'postcopy-blocktime': false,
  'late-block-activate': false,
});

/** QEMU 7.2's MigrationCapability enum, for telling "not implemented" from "no such capability". */
export const QEMU_CAPABILITIES: readonly string[] = [
  'xbzrle', 'rdma-pin-all', 'auto-converge', 'zero-blocks', 'compress', 'events', 'postcopy-ram', 'x-colo',
  'release-ram', 'block', 'return-path', 'pause-before-switchover', 'multifd', 'dirty-bitmaps', 'postcopy-blocktime',
  'late-block-activate', 'x-ignore-shared', 'validate-uuid', 'background-snapshot', 'zero-copy-send', 'postcopy-preempt',
];

/**
 * Every QEMU 7.2 capability with its state, in QEMU's enum order (as
 * query-migrate-capabilities lists them): the ones livemig does not implement are off.
 */
export function allCapabilities(caps: Readonly<MigrationCapabilities>): Array<{ capability: string; state: boolean }> {
  return QEMU_CAPABILITIES.map((capability) => ({ capability, state: Object.hasOwn(caps, capability) ? (caps as unknown as Record<string, boolean>)[capability]! : false }));
}

// ---------- checking typed values (QMP) ----------

/** The values of the parameters that take only their default; block-bitmap-mapping's is the empty mapping. */
const ONLY_DEFAULT: Readonly<Record<string, unknown>> = { ...DEFAULT_PARAMETERS, 'block-bitmap-mapping': [] };

/** Implemented, or taken at QEMU 7.2's default. */
const isAcceptedParameter = (name: string): name is keyof MigrationParameters => {
  const spec = parameterSpec(name);
  return spec?.implemented !== undefined || spec?.onlyDefault === true;
};

const sameJson = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

const TWO_POW_64 = 2 ** 64;
/**
 * Where uint64 values are kept: JSON numbers from 2^53 on are doubles in
 * JavaScript, and 2^64 - 1 reads as 2^64, which a client would then read back
 * out of range. The largest double below 2^64 is kept instead.
 */
const MAX_UINT64_DOUBLE = TWO_POW_64 - 2048;

/**
 * A JSON value as QEMU 7.2's QMP input visitor reads a parameter of `qapi`
 * type, in its words when it cannot (QERR_INVALID_PARAMETER_VALUE and _TYPE,
 * which name the parameter with dashes). Unsigned integers take -2^63..2^64-1,
 * negatives wrapping (the visitor's "backward compatibility"), so
 * `max-bandwidth: -1` is 2^64 - 1, as libvirt's "unlimited" 2^63 - 2^20 is
 * taken too; then uint8 and uint32 are bounded.
 */
function visitQapi(name: string, qapi: QapiType, value: unknown, enumValues: readonly string[] = []): unknown {
  const invalidType = (expected: string): ConfigError => new ConfigError('invalid-value', `Invalid parameter type for '${name}', expected: ${expected}`);
  switch (qapi) {
    case 'size':
    case 'uint64':
    case 'uint32':
    case 'uint8': {
      if (typeof value !== 'number' || !Number.isInteger(value) || value < -(2 ** 63) || value > TWO_POW_64) {
        throw new ConfigError('invalid-value', `Parameter '${name}' expects uint64`);
      }
      const n = Math.min(value < 0 ? TWO_POW_64 + value : value, MAX_UINT64_DOUBLE);
      if (qapi === 'uint8' && n > 0xff) throw new ConfigError('invalid-value', `Parameter '${name}' expects uint8_t`);
      if (qapi === 'uint32' && n > 0xffffffff) throw new ConfigError('invalid-value', `Parameter '${name}' expects uint32_t`);
      return n;
    }
    case 'bool':
      if (typeof value !== 'boolean') throw invalidType('boolean');
      return value;
    case 'StrOrNull':
      if (value === null) return ''; // null is ''
      if (typeof value !== 'string') throw invalidType('StrOrNull');
      return value;
    case 'enum':
      if (typeof value !== 'string') throw invalidType('string');
      if (!enumValues.includes(value)) throw new ConfigError('invalid-value', `Parameter '${name}' does not accept value '${printable(value)}'`);
      return value;
    case 'array':
      // The only array parameter (QEMU 7.2's BitmapMigrationNodeAliasList), visited member by member.
      try {
        return visitBitmapMapping(name, value);
      } catch (err) {
        throw err instanceof BitmapMappingError ? new ConfigError('invalid-value', err.message) : err;
      }
  }
}

type Merged = Readonly<MigrationParameters>;

/**
 * QEMU 7.2's migrate_params_check, in its order and words: it checks the
 * parameters as they would be after the update, and names them with
 * underscores. (max_bandwidth's bound, SIZE_MAX, is 2^64 - 1 on the hosts
 * livemig runs on: no check.) QEMU 7.2 itself skips its two multifd level
 * checks (real QEMU takes levels up to 255; zlib then refuses 10 and above
 * when the channels start); livemig applies them, in QEMU's words.
 */
const QEMU_CHECKS: ReadonlyArray<readonly [qemuName: string, ok: (p: Merged) => boolean, expects: string]> = [
  ['compress_level', (p) => p['compress-level'] <= 9, 'a value between 0 and 9'],
  ['compress_threads', (p) => p['compress-threads'] >= 1, 'a value between 1 and 255'],
  ['decompress_threads', (p) => p['decompress-threads'] >= 1, 'a value between 1 and 255'],
  ['throttle_trigger_threshold', (p) => p['throttle-trigger-threshold'] >= 1 && p['throttle-trigger-threshold'] <= 100, 'an integer in the range of 1 to 100'],
  ['cpu_throttle_initial', (p) => p['cpu-throttle-initial'] >= 1 && p['cpu-throttle-initial'] <= 99, 'an integer in the range of 1 to 99'],
  ['cpu_throttle_increment', (p) => p['cpu-throttle-increment'] >= 1 && p['cpu-throttle-increment'] <= 99, 'an integer in the range of 1 to 99'],
  ['downtime_limit', (p) => p['downtime-limit'] <= MAX_DOWNTIME_LIMIT_MS, 'an integer in the range of 0 to (2000 * 1000) ms'],
  ['multifd_channels', (p) => p['multifd-channels'] >= 1, 'a value between 1 and 255'],
  ['multifd_zlib_level', (p) => p['multifd-zlib-level'] <= multifdLevelRange('zlib')[1], 'a value between 0 and 9'],
  ['multifd_zstd_level', (p) => p['multifd-zstd-level'] <= multifdLevelRange('zstd')[1], 'a value between 0 and 20'],
  ['xbzrle_cache_size', (p) => p['xbzrle-cache-size'] >= TARGET_PAGE_BYTES && Number.isInteger(Math.log2(p['xbzrle-cache-size'])), 'a power of two no less than the target page size'],
  ['max_cpu_throttle', (p) => p['max-cpu-throttle'] >= p['cpu-throttle-initial'] && p['max-cpu-throttle'] <= 99, 'an integer in the range of cpu_throttle_initial to 99'],
  ['announce_initial', (p) => p['announce-initial'] <= 100_000, 'a value between 0 and 100000'],
  ['announce_max', (p) => p['announce-max'] <= 100_000, 'a value between 0 and 100000'],
  ['announce_rounds', (p) => p['announce-rounds'] <= 1000, 'a value between 0 and 1000'],
  ['announce_step', (p) => p['announce-step'] >= 1 && p['announce-step'] <= 10_000, 'a value between 0 and 10000'],
];

/** QEMU 7.2's MAX_MIGRATE_DOWNTIME (ms). */
const MAX_DOWNTIME_LIMIT_MS = 2000 * 1000;
/** migrate_params_check's "target page size" (x86). */
const TARGET_PAGE_BYTES = 4096;

/** livemig's own bounds and the default-only rule: after QEMU's reading and checks, or alone for livemig's own parameters. */
function checkLivemigValue(name: keyof MigrationParameters, value: unknown): unknown {
  const spec: ParameterSpec = PARAMETER_TABLE[name];
  if (!spec.implemented) {
    const only = ONLY_DEFAULT[name];
    if (!sameJson(value, only)) {
      throw new ConfigError('not-implemented', `livemig does not implement '${name}'; only its default ${JSON.stringify(only)} is accepted`);
    }
    return value;
  }
  const accepted = spec.implemented;
  if (accepted === 'qemu') return value;
  if (accepted === 'any') {
    if (typeof value !== 'boolean') throw new ConfigError('invalid-value', `Parameter '${name}' expects a boolean`);
    return value;
  }
  if ('oneOf' in accepted) {
    if (typeof value !== 'string' || !accepted.oneOf.includes(value)) {
      throw new ConfigError('invalid-value', `Parameter '${name}' does not accept value '${printable(String(value))}'`);
    }
    return value;
  }
  const { min, max, unit } = accepted;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError('invalid-value', `Parameter '${name}' expects an integer in the range of ${min} to ${max}${unit ? ` ${unit}` : ''}`);
  }
  return value;
}

/**
 * Check a partial update (QMP `migrate-set-parameters` arguments, the API's
 * setParameters) as QEMU 7.2 does, then livemig's own bounds; returns the
 * merged parameters. QEMU's order: every value read by its type (in the
 * table's order, QEMU's), then its checks over the merged parameters. All or
 * nothing: `current` is not changed, and nothing is merged if any value is refused.
 */
export function applyParameters(current: Readonly<MigrationParameters>, update: Partial<Record<string, unknown>>): MigrationParameters {
  for (const name of Object.keys(update)) {
    if (!isAcceptedParameter(name)) throw new ConfigError('unknown-parameter', `Parameter '${printable(name)}' is unexpected`);
  }
  const next: MigrationParameters = { ...current };
  const assign = (name: keyof MigrationParameters, value: unknown): void => {
    (next as unknown as Record<string, unknown>)[name] = value;
  };
  const given = (Object.keys(PARAMETER_TABLE) as ParameterName[]).filter((name): name is keyof MigrationParameters => Object.hasOwn(update, name));
  for (const name of given) {
    const spec: ParameterSpec = PARAMETER_TABLE[name];
    if (spec.qapi) assign(name, visitQapi(name, spec.qapi, update[name], enumValues(spec)));
    else assign(name, update[name]);
  }
  runQemuChecks(next);
  for (const name of given) assign(name, checkLivemigValue(name, next[name]));
  return next;
}

function runQemuChecks(p: Merged, only?: string): void {
  for (const [qemuName, ok, expects] of QEMU_CHECKS) {
    if (only !== undefined && qemuName !== only.replaceAll('-', '_')) continue;
    if (!ok(p)) {
      // max_cpu_throttle's range starts at cpu_throttle_initial: within 1..99 it is the two that disagree.
      const code = qemuName === 'max_cpu_throttle' && p['max-cpu-throttle'] >= 1 && p['max-cpu-throttle'] <= 99 ? 'conflict' : 'invalid-value';
      throw new ConfigError(code, `Parameter '${qemuName}' expects ${expects}`);
    }
  }
  // migrate_params_check's last: check_dirty_bitmap_mig_alias_map.
  if (only === undefined || only === 'block-bitmap-mapping') {
    const fault = bitmapMappingFault((p['block-bitmap-mapping'] ?? []) as readonly BitmapMigrationNodeAlias[]);
    if (fault !== undefined) throw new ConfigError('invalid-value', `Invalid mapping given for block-bitmap-mapping: ${fault}`);
  }
}

/**
 * One value alone, as applyParameters checks it (`--param NAME=VALUE`, before
 * the arguments are merged); the relation of max-cpu-throttle to
 * cpu-throttle-initial is checked once they are.
 */
function checkParameterValue(name: keyof MigrationParameters, value: unknown): unknown {
  const spec: ParameterSpec = PARAMETER_TABLE[name];
  const read = spec.qapi ? visitQapi(name, spec.qapi, value, enumValues(spec)) : value;
  runQemuChecks({ ...DEFAULT_PARAMETERS, 'cpu-throttle-initial': 1, [name]: read }, name);
  return checkLivemigValue(name, read);
}

/** An enum parameter's values (multifd-compression: QEMU 7.2's MultifdCompression, all of which livemig implements). */
function enumValues(spec: ParameterSpec): readonly string[] {
  return typeof spec.implemented === 'object' && 'oneOf' in spec.implemented ? spec.implemented.oneOf : [];
}

/** Check a partial update of capabilities (name → state); returns the merged capabilities, all or nothing. */
export function applyCapabilities(current: Readonly<MigrationCapabilities>, update: Partial<Record<string, unknown>>): MigrationCapabilities {
  const next: MigrationCapabilities = { ...current };
  for (const [name, value] of Object.entries(update)) {
    const implemented = Object.hasOwn(DEFAULT_CAPABILITIES, name);
    if (!implemented && !QEMU_CAPABILITIES.includes(name)) throw new ConfigError('unknown-capability', `Capability '${printable(name)}' is not supported`);
    if (typeof value !== 'boolean') throw new ConfigError('invalid-value', `Capability '${name}' expects a boolean`);
    if (!implemented) {
      // Management tools set every capability QEMU lists, mostly off: off is what livemig does anyway.
      if (value) throw new ConfigError('not-implemented', `livemig does not implement the capability '${name}'; only its default (off) is accepted`);
      continue;
    }
    (next as unknown as Record<string, boolean>)[name] = value;
  }
  return next;
}

// ---------- text (command line) ----------

/** Where text settings go; see the top of this file. */
export type ConfigScope = 'livemig' | 'qmp';

const TRUE_WORDS = new Set(['on', 'true', 'yes', '1']);
const FALSE_WORDS = new Set(['off', 'false', 'no', '0']);
const INTEGER_TEXT = /^-?\d+$/;
/** QEMU's parameter and capability names: lower case, digits, dashes (and `_` in a few old ones). */
const NAME_TEXT = /^[a-z0-9][a-z0-9_-]*$/i;

function booleanOf(text: string): boolean | undefined {
  const word = text.trim().toLowerCase();
  return TRUE_WORDS.has(word) ? true : FALSE_WORDS.has(word) ? false : undefined;
}

/** Read `text` as `type`; throws ConfigError('bad-text') naming `argument` (`--param NAME`). */
function readText(type: ParameterType, text: string, argument: string): unknown {
  switch (type) {
    case 'integer': {
      const value = Number(text.trim());
      if (!INTEGER_TEXT.test(text.trim()) || !Number.isSafeInteger(value)) throw new ConfigError('bad-text', `${argument}: '${text}' is not an integer`);
      return value;
    }
    case 'size':
      try {
        return parseSize(text, argument);
      } catch (err) {
        throw new ConfigError('bad-text', (err as Error).message);
      }
    case 'boolean': {
      const value = booleanOf(text);
      if (value === undefined) throw new ConfigError('bad-text', `${argument}: '${text}' is not on/off/true/false/yes/no`);
      return value;
    }
    case 'string':
      return text; // may be empty: tls-creds= turns TLS off
    case 'json':
      try {
        return JSON.parse(text);
      } catch {
        throw new ConfigError('bad-text', `${argument}: '${text}' is not JSON`);
      }
  }
}

/** The type of a parameter not in the table, guessed from its text (scope 'qmp'; the monitor checks). */
function guessType(text: string): ParameterType {
  if (INTEGER_TEXT.test(text.trim())) return 'integer';
  if (booleanOf(text) !== undefined) return 'boolean';
  if (/^\s*[[{]/.test(text)) return 'json';
  return 'string';
}

/**
 * The typed value of `--param NAME=TEXT`. Scope 'livemig' (the default) also
 * refuses names livemig does not implement and values it would refuse;
 * scope 'qmp' types any name. Throws ConfigError naming the argument.
 */
export function parseParameterText(name: string, text: string, scope: ConfigScope = 'livemig'): unknown {
  const argument = `--param ${name}`;
  if (!NAME_TEXT.test(name)) throw new ConfigError('syntax', `--param '${printable(name)}=${printable(text)}': '${printable(name)}' is not a parameter name`);
  const spec = parameterSpec(name);
  if (scope === 'qmp') return readText(spec?.type ?? guessType(text), text, argument);
  if (!spec) throw new ConfigError('unknown-parameter', `${argument}: there is no migration parameter '${name}' (livemig implements: ${IMPLEMENTED_PARAMETERS.join(', ')})`);
  if (!isAcceptedParameter(name)) throw new ConfigError('not-implemented', `${argument}: livemig does not implement QEMU ${spec.since}'s parameter '${name}'`);
  const value = readText(spec.type, text, argument);
  try {
    return checkParameterValue(name, value);
  } catch (err) {
    throw err instanceof ConfigError ? new ConfigError(err.code, `${argument}: ${err.message} (got '${printable(text)}')`) : err;
  }
}

/** A capability as QMP's `migrate-set-capabilities` lists it. */
export interface CapabilitySetting {
  capability: string;
  state: boolean;
}

/**
 * `--cap NAME` (on) or `--cap NAME=on|off|true|false|yes|no`. Scope 'livemig'
 * (the default) refuses capabilities livemig does not implement; scope 'qmp'
 * any name (the monitor checks). Throws ConfigError naming the argument.
 */
export function parseCapabilityText(text: string, scope: ConfigScope = 'livemig'): CapabilitySetting {
  const argument = `--cap '${printable(text)}'`;
  const eq = text.indexOf('=');
  const name = (eq < 0 ? text : text.slice(0, eq)).trim();
  if (!NAME_TEXT.test(name)) throw new ConfigError('syntax', `${argument}: expected NAME or NAME=on|off`);
  const state = eq < 0 ? true : booleanOf(text.slice(eq + 1));
  if (state === undefined) throw new ConfigError('bad-text', `${argument}: the value must be on or off (or true/false, yes/no)`);
  if (scope === 'livemig' && !Object.hasOwn(DEFAULT_CAPABILITIES, name)) {
    // Off is what livemig does anyway (and what QMP accepts for it); on is refused.
    if (QEMU_CAPABILITIES.includes(name) && !state) return { capability: name, state };
    if (QEMU_CAPABILITIES.includes(name)) throw new ConfigError('not-implemented', `${argument}: livemig does not implement QEMU's capability '${name}'; only its default (off) is accepted`);
    throw new ConfigError('unknown-capability', `${argument}: there is no migration capability '${name}' (livemig's: ${Object.keys(DEFAULT_CAPABILITIES).join(', ')})`);
  }
  return { capability: name, state };
}

/** `--param` arguments (NAME=VALUE each) → `migrate-set-parameters` arguments; a later NAME wins. */
export function parseParameterArgs(args: readonly string[], scope: 'livemig'): Partial<MigrationParameters>;
export function parseParameterArgs(args: readonly string[], scope: ConfigScope): Record<string, unknown>;
export function parseParameterArgs(args: readonly string[], scope: ConfigScope): Record<string, unknown> {
  const update: Record<string, unknown> = {};
  for (const arg of args) {
    const eq = arg.indexOf('=');
    if (eq < 0) throw new ConfigError('syntax', `--param '${arg}': expected NAME=VALUE`);
    const name = arg.slice(0, eq).trim();
    update[name] = parseParameterText(name, arg.slice(eq + 1), scope);
  }
  return update;
}

/** `--cap` arguments → `migrate-set-capabilities`' list, in the given order. */
export function parseCapabilityArgs(args: readonly string[], scope: ConfigScope): CapabilitySetting[] {
  return args.map((arg) => parseCapabilityText(arg, scope));
}

/** A capability list as an update for applyCapabilities / MigrationConfig.setCapabilities (a later entry wins). */
export function capabilityUpdate(settings: readonly CapabilitySetting[]): Record<string, boolean> {
  return Object.fromEntries(settings.map((s) => [s.capability, s.state]));
}

// ---------- one machine's settings ----------

/** Parameters and capabilities as one migration uses them. */
export interface MigrationSettings {
  readonly parameters: Readonly<MigrationParameters>;
  readonly capabilities: Readonly<MigrationCapabilities>;
}

export interface MigrationConfigEvents {
  /** After setParameters: the new parameters and the names the update carried. */
  parameters: [parameters: Readonly<MigrationParameters>, names: string[]];
  capabilities: [capabilities: Readonly<MigrationCapabilities>];
}

/**
 * The migration settings of one machine, shared by its incoming and outgoing
 * migrations (QEMU keeps one set per process). Values are checked as
 * applyParameters / applyCapabilities do; the stored objects are frozen and
 * replaced on each change, so a reference read earlier never changes under
 * its reader. A migration takes snapshot() at its start for what must stay
 * fixed (capabilities, multifd-*, xbzrle-cache-size), and reads `parameters`
 * (or listens to 'parameters') for what applies at once (max-bandwidth,
 * downtime-limit, the auto-converge throttles), as QEMU does.
 *
 * Refusing capability changes while a migration runs is the owner's job (it
 * knows whether one runs): QEMU's "There's a migration process in progress".
 */
export class MigrationConfig extends TypedEmitter<MigrationConfigEvents> {
  private currentParameters: Readonly<MigrationParameters>;
  private currentCapabilities: Readonly<MigrationCapabilities>;

  /** Starts from livemig's defaults, with `initial` applied (checked). */
  constructor(initial: { parameters?: Partial<Record<string, unknown>>; capabilities?: Partial<Record<string, unknown>> } = {}) {
    super();
    this.currentParameters = Object.freeze(applyParameters(DEFAULT_PARAMETERS, initial.parameters ?? {}));
    this.currentCapabilities = Object.freeze(applyCapabilities(DEFAULT_CAPABILITIES, initial.capabilities ?? {}));
  }

  /**
   * The settings of `livemig run --param ... --cap ...` (scope 'livemig'): each
   * argument checked, then all together (a conflict names --param).
   */
  static fromArgs(paramArgs: readonly string[], capArgs: readonly string[]): MigrationConfig {
    const parameters = parseParameterArgs(paramArgs, 'livemig');
    const capabilities = capabilityUpdate(parseCapabilityArgs(capArgs, 'livemig'));
    try {
      return new MigrationConfig({ parameters, capabilities });
    } catch (err) {
      throw err instanceof ConfigError ? new ConfigError(err.code, `--param: ${err.message}`) : err;
    }
  }

  get parameters(): Readonly<MigrationParameters> {
    return this.currentParameters;
  }

  get capabilities(): Readonly<MigrationCapabilities> {
    return this.currentCapabilities;
  }

  /** Merge a checked update (QMP `migrate-set-parameters` arguments); throws ConfigError and changes nothing if any value is refused. */
  setParameters(update: Partial<Record<string, unknown>>): Readonly<MigrationParameters> {
    this.currentParameters = Object.freeze(applyParameters(this.currentParameters, update));
    this.emit('parameters', this.currentParameters, Object.keys(update));
    return this.currentParameters;
  }

  /** Merge a checked update (name → state); throws ConfigError and changes nothing if any is refused. */
  setCapabilities(update: Partial<Record<string, unknown>>): Readonly<MigrationCapabilities> {
    this.currentCapabilities = Object.freeze(applyCapabilities(this.currentCapabilities, update));
    this.emit('capabilities', this.currentCapabilities);
    return this.currentCapabilities;
  }

  /** The settings now, frozen: what a migration keeps from its start to its end. */
  snapshot(): MigrationSettings {
    return Object.freeze({ parameters: this.currentParameters, capabilities: this.currentCapabilities });
  }
}
