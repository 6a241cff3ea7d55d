/**
 * `human-monitor-command`: the HMP commands management tools and
 * `qmp-shell -H` send for migration, answered with QEMU 7.2's text layout
 * (monitor/hmp-cmds.c), lines ending in "\r\n" as QEMU's monitor writes them:
 * - `info status|migrate|migrate_parameters|migrate_capabilities|version|
 *   name|uuid|kvm|cpus`, from the QMP queries' answers;
 * - `migrate_set_capability`, `migrate_set_parameter`, `migrate`,
 *   `migrate_cancel`, `migrate_incoming`, `migrate_continue`, `stop`, `cont`:
 *   their arguments parsed as QEMU's HMP parses them (sizes with suffixes,
 *   `max-bandwidth` in MiB/s without one, on/off), then run as the QMP
 *   command they stand for, so both monitors check and do the same.
 * Any other command gets QEMU's "unknown command" text. Errors are output (a
 * successful reply, as QEMU's), in QEMU's words where the parsing fails and
 * as "Error: " and the QMP error's text where the command does.
 */
import { parameterSpec, type ParameterSpec } from '../migration/config.js';
import { printable } from '../wire/printable.js';
import type { DirtyRateInfo } from './dirty-rate.js';
import type { MigrationInfo } from './query-migrate.js';

/** What the HMP commands read: the same figures QMP's query-* commands return. */
export interface HmpSource {
  /** A QMP query's answer (query-status, query-migrate, query-migrate-parameters, ...), as the monitor gives it. */
  query(command: string): unknown;
  /** Run a QMP command as the monitor runs it; rejects with its error (the message is QMP's `desc`). */
  execute(command: string, args: Record<string, unknown>): Promise<unknown>;
}

/** QEMU's migration globals (migration_global_dump): livemig writes its streams as QEMU 7.2's defaults say. */
const GLOBALS = [
  'globals:',
  'store-global-state: on',
  'only-migratable: off',
  'send-configuration: on',
  'send-section-footer: on',
  'decompress-error-check: on',
  'clear-bitmap-shift: 18',
];

const kib = (bytes: number): string => `${Math.floor(bytes / 1024)} kbytes`;
const onOff = (v: unknown): string => (v ? 'on' : 'off');

type StatusInfo = { status: string; running: boolean; singlestep: boolean };
type CapabilityInfo = Array<{ capability: string; state: boolean }>;

function infoStatus(s: StatusInfo): string[] {
  let line = `VM status: ${s.running ? 'running' : 'paused'}${s.singlestep ? ' (single step mode)' : ''}`;
  if (!s.running && s.status !== 'paused') line += ` (${s.status})`;
  return [line];
}

function infoMigrate(info: MigrationInfo): string[] {
  const lines = [...GLOBALS];
  if (info.status !== undefined) {
    const failed = info.status === 'failed' && info['error-desc'] !== undefined;
    lines.push(`Migration status: ${info.status}${failed ? ` (${info['error-desc']})` : ''}`);
    lines.push(`total time: ${info['total-time'] ?? 0} ms`);
    if (info['expected-downtime'] !== undefined) lines.push(`expected downtime: ${info['expected-downtime']} ms`);
    if (info.downtime !== undefined) lines.push(`downtime: ${info.downtime} ms`);
    if (info['setup-time'] !== undefined) lines.push(`setup: ${info['setup-time']} ms`);
  }
  const r = info.ram;
  if (r) {
    lines.push(
      `transferred ram: ${kib(r.transferred)}`,
      `throughput: ${r.mbps.toFixed(2)} mbps`,
      `remaining ram: ${kib(r.remaining)}`,
      `total ram: ${kib(r.total)}`,
      `duplicate: ${r.duplicate} pages`,
      `skipped: ${r.skipped} pages`,
      `normal: ${r.normal} pages`,
      `normal bytes: ${kib(r['normal-bytes'])}`,
      `dirty sync count: ${r['dirty-sync-count']}`,
      `page size: ${kib(r['page-size'])}`,
      `multifd bytes: ${kib(r['multifd-bytes'])}`,
      `pages-per-second: ${r['pages-per-second']}`,
    );
    if (r['dirty-pages-rate']) lines.push(`dirty pages rate: ${r['dirty-pages-rate']} pages`);
    if (r['postcopy-requests']) lines.push(`postcopy request count: ${r['postcopy-requests']}`);
    if (r['precopy-bytes']) lines.push(`precopy ram: ${kib(r['precopy-bytes'])}`);
    if (r['downtime-bytes']) lines.push(`downtime ram: ${kib(r['downtime-bytes'])}`);
    if (r['postcopy-bytes']) lines.push(`postcopy ram: ${kib(r['postcopy-bytes'])}`);
    if (r['dirty-sync-missed-zero-copy']) lines.push(`Zero-copy-send fallbacks happened: ${r['dirty-sync-missed-zero-copy']} times`);
  }
  if (info.disk) lines.push(`transferred disk: ${kib(info.disk.transferred)}`, `remaining disk: ${kib(info.disk.remaining)}`, `total disk: ${kib(info.disk.total)}`);
  const x = info['xbzrle-cache'];
  if (x) {
    lines.push(`cache size: ${x['cache-size']} bytes`, `xbzrle transferred: ${kib(x.bytes)}`, `xbzrle pages: ${x.pages} pages`, `xbzrle cache miss: ${x['cache-miss']} pages`);
    lines.push(`xbzrle cache miss rate: ${x['cache-miss-rate'].toFixed(2)}`, `xbzrle encoding rate: ${x['encoding-rate'].toFixed(2)}`);
    lines.push(`xbzrle overflow: ${x.overflow}`);
  }
  if (info['cpu-throttle-percentage'] !== undefined) lines.push(`cpu throttle percentage: ${info['cpu-throttle-percentage']}`);
  if (info['postcopy-blocktime'] !== undefined) lines.push(`postcopy blocktime: ${info['postcopy-blocktime']}`);
  if (info['postcopy-vcpu-blocktime'] !== undefined) lines.push(`postcopy vcpu blocktime: [${info['postcopy-vcpu-blocktime'].join(', ')}]`);
  if (info['socket-address']) {
    lines.push('socket address: [');
    for (const a of info['socket-address']) lines.push(`\t${socketUri(a)}`);
    lines.push(']');
  }
  return lines;
}

/** QEMU's socket_uri(): how HMP prints a SocketAddress. */
function socketUri(a: Record<string, unknown>): string {
  if (typeof a['x-livemig-uri'] === 'string') return a['x-livemig-uri'];
  if (a.type === 'inet') return `tcp:${String(a.host)}:${String(a.port)}`;
  if (a.type === 'unix') return `unix:${String(a.path)}`;
  return `${String(a.type)}:${String(a.uri ?? '')}`;
}

/** hmp_info_migrate_parameters: QEMU 7.2's order and units (it prints neither multifd-z*-level nor livemig's own). */
function infoMigrateParameters(p: Record<string, unknown>): string[] {
  // Integers in full, as QEMU's PRIu64 (a rate of 2^63 - 2^20 is no 9223372036853727000).
  const num = (v: unknown): string => (typeof v === 'number' && Number.isInteger(v) ? BigInt(v).toString() : String(v));
  const ms = (name: string): string => `${name}: ${num(p[name])} ms`;
  const plain = (name: string): string => `${name}: ${num(p[name])}`;
  // A QMP client set these strings: inert here, whoever prints the reply.
  const str = (name: string): string => `${name}: '${printable(String(p[name] ?? ''))}'`;
  const lines = [
    ms('announce-initial'),
    ms('announce-max'),
    plain('announce-rounds'),
    ms('announce-step'),
    plain('compress-level'),
    plain('compress-threads'),
    `compress-wait-thread: ${onOff(p['compress-wait-thread'])}`,
    plain('decompress-threads'),
    plain('throttle-trigger-threshold'),
    plain('cpu-throttle-initial'),
    plain('cpu-throttle-increment'),
    `cpu-throttle-tailslow: ${onOff(p['cpu-throttle-tailslow'])}`,
    plain('max-cpu-throttle'),
    str('tls-creds'),
    str('tls-hostname'),
    `max-bandwidth: ${num(p['max-bandwidth'])} bytes/second`,
    ms('downtime-limit'),
    ms('x-checkpoint-delay'),
    `block-incremental: ${onOff(p['block-incremental'])}`,
    plain('multifd-channels'),
    plain('multifd-compression'),
    `xbzrle-cache-size: ${num(p['xbzrle-cache-size'])} bytes`,
    plain('max-postcopy-bandwidth'),
    str('tls-authz'),
  ];
  const mapping = p['block-bitmap-mapping'];
  if (Array.isArray(mapping)) {
    lines.push('block-bitmap-mapping:');
    for (const m of mapping as Array<{ 'node-name': string; alias: string }>) lines.push(`  '${m['node-name']}' -> '${m.alias}'`);
  }
  return lines;
}

/** hmp_info_dirty_rate (page sampling: no per-vCPU rates). */
function infoDirtyRate(info: DirtyRateInfo): string[] {
  return [
    `Status: ${info.status}`,
    // QEMU's label says ms; the figure is its clock's seconds.
    `Start Time: ${info['start-time']} (ms)`,
    ...(info.mode === 'page-sampling' ? [`Sample Pages: ${info['sample-pages']} (per GB)`] : []),
    `Period: ${info['calc-time']} (sec)`,
    `Mode: ${info.mode}`,
    `Dirty rate: ${info['dirty-rate'] === undefined ? '(not ready)' : `${info['dirty-rate']} (MB/s)`}`,
  ];
}

/** hmp_info_cpus: the monitor's current CPU (the first, as QEMU's default) starred. */
function infoCpus(cpus: ReadonlyArray<{ 'cpu-index': number; 'thread-id': number }>): string[] {
  return cpus.map((cpu, i) => `${i === 0 ? '*' : ' '} CPU #${cpu['cpu-index']}: thread_id=${cpu['thread-id']}`);
}

/**
 * The `info` subcommands livemig answers, by name as QEMU lists them: QEMU's help text, and the lines, in QEMU's
 * formats, from the QMP queries' answers.
 */
const INFO: Record<string, { help: string; run: (s: HmpSource) => string[] }> = {
  cpus: { help: 'show infos for each CPU', run: (s) => infoCpus(s.query('query-cpus-fast') as Array<{ 'cpu-index': number; 'thread-id': number }>) },
  dirty_rate: { help: 'show dirty rate information', run: (s) => infoDirtyRate(s.query('query-dirty-rate') as DirtyRateInfo) },
  kvm: {
    help: 'show KVM information',
    run: (s) => {
      const kvm = s.query('query-kvm') as { enabled: boolean; present: boolean };
      return [`kvm support: ${kvm.present ? (kvm.enabled ? 'enabled' : 'disabled') : 'not compiled'}`];
    },
  },
  migrate: { help: 'show migration status', run: (s) => infoMigrate(s.query('query-migrate') as MigrationInfo) },
  migrate_capabilities: {
    help: 'show current migration capabilities',
    run: (s) => (s.query('query-migrate-capabilities') as CapabilityInfo).map((c) => `${c.capability}: ${onOff(c.state)}`),
  },
  migrate_parameters: { help: 'show current migration parameters', run: (s) => infoMigrateParameters(s.query('query-migrate-parameters') as Record<string, unknown>) },
  name: {
    help: 'show the current VM name',
    run: (s) => {
      const { name } = s.query('query-name') as { name?: string };
      return name === undefined ? [] : [name];
    },
  },
  status: { help: 'show the current VM status (running|paused)', run: (s) => infoStatus(s.query('query-status') as StatusInfo) },
  uuid: { help: 'show the current VM UUID', run: (s) => [(s.query('query-uuid') as { UUID: string }).UUID] },
  version: {
    help: 'show the version of QEMU',
    // QEMU prints the package right after the version ("7.2.22Debian 1:7.2+dfsg-7").
    run: (s) => {
      const v = s.query('query-version') as { qemu: { major: number; minor: number; micro: number }; package: string };
      return [`${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}${v.package}`];
    },
  },
};

/** `info` alone and `help info`: the subcommands with their help. */
const INFO_LIST = Object.entries(INFO).map(([name, { help }]) => `info ${name}  -- ${help}`);

/** An HMP usage error: QEMU's text for a command line it could not parse (no "Error: " prefix). */
class HmpUsageError extends Error {}

/** A command's error after the warnings QEMU printed before it. */
class HmpWarnedError extends Error {
  constructor(readonly warnings: readonly string[], readonly failure: Error) {
    super(failure.message);
  }
}

/** QEMU's text when an argument is missing or one too many was given. */
const usage = (name: string, what: string, typed = name): HmpUsageError => new HmpUsageError(`${name}: ${what}\r\nTry "help ${typed}" for more information`);

/**
 * How QEMU 7.2's HMP reads integer parameters (hmp_migrate_set_parameter): QAPI sizes and downtime-limit as sizes
 * (with suffixes), uint8 as uint8, any other as uint32. The types themselves are the configuration's (PARAMETER_TABLE).
 */
const readsAsSize = (name: string, spec: ParameterSpec): boolean => spec.qapi === 'size' || name === 'downtime-limit';

/** qemu_strtosz's suffixes: powers of its unit (1024). */
const SIZE_SUFFIX_POWERS: Record<string, number> = { B: 0, K: 1, M: 2, G: 3, T: 4, P: 5, E: 6 };
const TWO_POW_64 = 1n << 64n;

/** What qemu_strtosz made of a size: the value, or its error (EINVAL, ERANGE); `hexSuffix`: QEMU warns of it. */
type SizeReading = { bytes: bigint; hexSuffix: boolean } | { error: 'EINVAL' | 'ERANGE' };

/**
 * QEMU 7.2's qemu_strtosz (util/cutils.c do_strtosz), to the byte: a decimal
 * integer (an optional '+', never '-') or 0x hex; then, for a decimal, an
 * optional fraction ("1.", "1.5"; no exponent); then one suffix B, K, M, G,
 * T, P or E (any case, powers of 1024; `defaultSuffix` when there is none),
 * and nothing after it. A fraction needs a scale above bytes; the result is
 * rounded half up; 2^64 and above is ERANGE. Hex with a suffix is taken, with
 * a deprecation warning.
 */
export function qemuStrtosz(text: string, defaultSuffix: 'B' | 'M'): SizeReading {
  const integral = /^\+?(\d+)/.exec(text);
  if (!integral) return { error: 'EINVAL' };
  let at = integral[0].length;
  let value = BigInt(integral[1]!);
  // qemu_strtou64's ERANGE, unless something follows the digits (then the whole input is invalid).
  if (value >= TWO_POW_64) return { error: at === text.length ? 'ERANGE' : 'EINVAL' };
  let fraction = 0n; // 64.64 fixed point: the fraction's bits
  let hex = false;
  if (value === 0n && (text[at] === 'x' || text[at] === 'X')) {
    const digits = /^\+?0[xX]([0-9a-fA-F]+)/.exec(text);
    if (!digits) return { error: 'EINVAL' };
    at = digits[0].length;
    value = BigInt(`0x${digits[1]}`);
    if (text[at] === '.') return { error: 'EINVAL' };
    hex = true;
  } else if (text[at] === '.') {
    // strtod over ".digits": an exponent makes the whole input invalid; no digits at all is a fraction of 0.
    const decimals = /^\.(\d*)([eE][+-]?\d+)?/.exec(text.slice(at))!;
    if (decimals[2] !== undefined && decimals[1] !== '') return { error: 'EINVAL' };
    if (decimals[1] === '') at += 1;
    else {
      at += 1 + decimals[1]!.length;
      fraction = BigInt(Math.min(Math.floor(Number(`0.${decimals[1]}`) * 2 ** 64), 2 ** 64 - 2 ** 11));
    }
  }
  if (value >= TWO_POW_64) return { error: at === text.length ? 'ERANGE' : 'EINVAL' }; // hex
  const suffix = text[at]?.toUpperCase();
  const power = suffix !== undefined && Object.hasOwn(SIZE_SUFFIX_POWERS, suffix) ? SIZE_SUFFIX_POWERS[suffix]! : undefined;
  if (power !== undefined) at += 1;
  if (at !== text.length) return { error: 'EINVAL' };
  const multiplier = 1024n ** BigInt(power ?? SIZE_SUFFIX_POWERS[defaultSuffix]!);
  if (multiplier === 1n) {
    if (fraction !== 0n) return { error: 'EINVAL' };
    return { bytes: value, hexSuffix: false };
  }
  const scaledFraction = fraction * multiplier;
  const bytes = value * multiplier + (scaledFraction >> 64n) + ((scaledFraction >> 63n) & 1n);
  if (bytes >= TWO_POW_64) return { error: 'ERANGE' };
  return { bytes, hexSuffix: hex && power !== undefined };
}

/** The string input visitor's unsigned integers: decimal or 0x hex. */
function parseUint(text: string): number | undefined {
  if (!/^(0x[0-9a-fA-F]+|\d+)$/.test(text)) return undefined;
  const value = Number(text);
  return value < 2 ** 64 ? value : undefined;
}

const INT64_MAX = (1n << 63n) - 1n;

/** migrate_set_parameter's value for `name`, as QEMU 7.2's HMP converts it (throws its error texts); `warn` gets its warnings. */
function parameterValue(name: string, text: string, warn: (text: string) => void): unknown {
  const spec = parameterSpec(name);
  // QEMU 7.2 knows none of the later QEMUs' parameters.
  if (!spec || spec.since !== undefined) throw new Error(`invalid parameter value: ${printable(name)}`);
  const fail = (what: string): Error => new Error(`Parameter '${name}' expects ${what}`);
  const size = (defaultSuffix: 'B' | 'M'): number => {
    const read = qemuStrtosz(text, defaultSuffix);
    // QEMU warns as it reads, before anything can refuse the value.
    if ('bytes' in read && read.hexSuffix) warn(`Using a multiplier suffix on hex numbers is deprecated: ${printable(text)}`);
    // max-bandwidth goes through qemu_strtosz_MiB (and must fit an int64), the others through the size visitor: each says it its way.
    if (name === 'max-bandwidth') {
      if ('error' in read || read.bytes > INT64_MAX) throw new Error(`Invalid size ${printable(text)}`);
      return Number(read.bytes);
    }
    if ('bytes' in read) return Number(read.bytes);
    if (read.error === 'ERANGE') throw new Error(`Value '${printable(text)}' is out of range for parameter '${name}'`);
    throw fail('a non-negative number below 2^64\r\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\r\nand exabytes, respectively.');
  };
  switch (spec.type) {
    case 'size':
      return size(name === 'max-bandwidth' ? 'M' : 'B');
    case 'integer': {
      if (readsAsSize(name, spec)) return size('B');
      const value = parseUint(text);
      if (value === undefined) throw fail('uint64');
      if (spec.qapi === 'uint8' && value > 0xff) throw fail('uint8_t');
      if (value > 0xffffffff) throw fail('uint32_t');
      return value;
    }
    case 'boolean':
      if (text !== 'on' && text !== 'off') throw fail("'on' or 'off'");
      return text === 'on';
    case 'string':
      return text;
    case 'json':
      throw new Error(`The ${name} parameter can only be set through QMP`);
  }
}

interface HmpCommand {
  /** QEMU's `name args -- text` help line(s). */
  help: string;
  /** QEMU's name in its parse errors (`stop|s`). */
  shown?: string;
  /**
   * The arguments after the flags, in order, as hmp-commands.hx types them: a string (`s`), on/off (`b`), an
   * integer (`l`), an optional integer (`l?`).
   */
  args: ReadonlyArray<'s' | 'b' | 'l' | 'l?'>;
  /** Single-letter flags (`-d`) taken before the arguments. */
  flags?: string;
  run(args: readonly string[], flags: Set<string>, s: HmpSource): Promise<string[]>;
}

const runQmp = async (s: HmpSource, command: string, args: Record<string, unknown> = {}): Promise<string[]> => {
  await s.execute(command, args);
  return [];
};

/** The escapes of a quoted HMP string (QEMU's get_str): the character after the backslash, what it stands for. */
const HMP_STRING_ESCAPES: Readonly<Record<string, string>> = { n: '\n', r: '\r', '\\': '\\', "'": "'", '"': '"' };

/** A command line read from left to right, as QEMU's monitor reads a command's arguments. */
class HmpLine {
  constructor(private readonly text: string, private at: number) {}

  private skipSpaces(): void {
    while (this.at < this.text.length && /\s/.test(this.text[this.at]!)) this.at++;
  }

  /** The next word is a flag (`-d`). */
  peekFlag(): boolean {
    this.skipSpaces();
    return this.text[this.at] === '-';
  }

  /** The next run of non-space characters ('' at the end). */
  word(): string {
    this.skipSpaces();
    const from = this.at;
    while (this.at < this.text.length && !/\s/.test(this.text[this.at]!)) this.at++;
    return this.text.slice(from, this.at);
  }

  /**
   * QEMU's get_str(): a word, or a double-quoted string with its escapes
   * (\n, \r, \\, \' and \"); undefined at the end of the line, for an
   * unterminated string or another escape (QEMU then says "string expected").
   */
  string(): string | undefined {
    this.skipSpaces();
    if (this.at >= this.text.length) return undefined;
    if (this.text[this.at] !== '"') return this.word();
    let out = '';
    for (this.at++; this.at < this.text.length && this.text[this.at] !== '"'; this.at++) {
      let c = this.text[this.at]!;
      if (c === '\\') {
        c = this.text[++this.at] ?? '';
        const escaped = Object.hasOwn(HMP_STRING_ESCAPES, c) ? HMP_STRING_ESCAPES[c] : undefined;
        if (escaped === undefined) return undefined;
        c = escaped;
      }
      out += c;
    }
    if (this.at >= this.text.length) return undefined;
    this.at++;
    return out;
  }

  atEnd(): boolean {
    this.skipSpaces();
    return this.at >= this.text.length;
  }
}

/** The commands besides `info` and `help`, as QEMU 7.2's hmp-commands.hx describes them. */
const COMMANDS: Record<string, HmpCommand> = {
  migrate: {
    help: 'migrate [-d] [-b] [-i] [-r] uri -- migrate to URI (using -d to not wait for completion)\r\n\t\t\t -b for migration without shared storage with full copy of disk\r\n\t\t\t -i for migration without shared storage with incremental copy of disk (base image shared between src and destination)\r\n\t\t\t -r to resume a paused migration',
    args: ['s'],
    flags: 'dbir',
    run: async ([uri], flags, s) => {
      await s.execute('migrate', { uri: uri!, ...(flags.has('b') && { blk: true }), ...(flags.has('i') && { inc: true }), ...(flags.has('r') && { resume: true }) });
      // A monitor reached through QMP cannot wait for the end (QEMU: monitor_suspend fails), so it says so.
      return flags.has('d') ? [] : ['terminal does not allow synchronous migration, continuing detached'];
    },
  },
  migrate_cancel: { help: 'migrate_cancel  -- cancel the current VM migration', args: [], run: (_a, _f, s) => runQmp(s, 'migrate_cancel') },
  migrate_continue: { help: 'migrate_continue state -- Continue migration from the given paused state', args: ['s'], run: ([state], _f, s) => runQmp(s, 'migrate-continue', { state: state! }) },
  migrate_incoming: { help: 'migrate_incoming uri -- Continue an incoming migration from an -incoming defer', args: ['s'], run: ([uri], _f, s) => runQmp(s, 'migrate-incoming', { uri: uri! }) },
  migrate_set_capability: {
    help: 'migrate_set_capability capability state -- Enable/Disable the usage of a capability for migration',
    args: ['s', 'b'],
    run: async ([capability, state], _f, s) => {
      if (!(s.query('query-migrate-capabilities') as CapabilityInfo).some((c) => c.capability === capability)) throw new Error(`invalid parameter value: ${printable(capability!)}`);
      return runQmp(s, 'migrate-set-capabilities', { capabilities: [{ capability: capability!, state: state === 'on' }] });
    },
  },
  migrate_set_parameter: {
    help: 'migrate_set_parameter parameter value -- Set the parameter for migration',
    args: ['s', 's'],
    run: async ([name, text], _f, s) => {
      // QEMU's warn_report lines come first, whether or not the value is then taken.
      const warnings: string[] = [];
      try {
        await runQmp(s, 'migrate-set-parameters', { [name!]: parameterValue(name!, text!, (w) => warnings.push(`warning: ${w}`)) });
      } catch (err) {
        throw warnings.length > 0 ? new HmpWarnedError(warnings, err as Error) : err;
      }
      return warnings;
    },
  },
  calc_dirty_rate: {
    help: 'calc_dirty_rate [-r] [-b] second [sample_pages_per_GB] -- start a round of guest dirty rate measurement (using -r to\r\n\t\t\t specify dirty ring as the method of calculation and\r\n\t\t\t -b to specify dirty bitmap as method of calculation)',
    args: ['l', 'l?'],
    flags: 'rb',
    run: async ([seconds, samplePages], flags, s) => {
      if (flags.has('r') && flags.has('b')) return ['Either dirty ring or dirty bitmap can be specified!'];
      const mode = flags.has('b') ? 'dirty-bitmap' : flags.has('r') ? 'dirty-ring' : 'page-sampling';
      const calcTime = parseUint(seconds!)!;
      await s.execute('calc-dirty-rate', { 'calc-time': calcTime, ...(samplePages !== undefined && { 'sample-pages': parseUint(samplePages)! }), mode });
      return [`Starting dirty rate measurement with period ${calcTime} seconds`, "[Please use 'info dirty_rate' to check results]"];
    },
  },
  stop: { help: 'stop|s  -- stop emulation', shown: 'stop|s', args: [], run: (_a, _f, s) => runQmp(s, 'stop') },
  cont: { help: 'cont|c  -- resume emulation', shown: 'cont|c', args: [], run: (_a, _f, s) => runQmp(s, 'cont') },
};
const ALIASES: Record<string, string> = { s: 'stop', c: 'cont' };

/** `help`: the commands livemig's HMP has, in QEMU's `name args -- text` layout. */
const HELP = [
  'help|? [cmd] -- show the help',
  'info [subcommand] -- show various information about the system state',
  ...Object.values(COMMANDS).map((c) => c.help),
].sort();

/** Run one HMP command line; resolves to the monitor's output as QEMU's human-monitor-command returns it. */
export async function runHmpCommand(commandLine: string, source: HmpSource): Promise<string> {
  const words = commandLine.trim().split(/\s+/).filter((w) => w !== '');
  if (words.length === 0) return '';
  const lines = (out: readonly string[]): string => out.map((line) => `${line}\r\n`).join('');
  // qmp-shell -H reads `help` and `info` at start for its completions (the first and second word of each line).
  if (words[0] === 'help' || words[0] === '?') {
    if (words.length === 1) return lines(HELP);
    const name = ALIASES[words[1]!] ?? words[1]!;
    if (name === 'info') return lines(INFO_LIST);
    const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
    return command ? lines([command.help]) : `unknown command: '${printable(words[1]!)}'\r\n`;
  }
  if (words[0] === 'info') {
    if (words.length === 1) return lines(INFO_LIST);
    const sub = words[1]!;
    const info = Object.hasOwn(INFO, sub) ? INFO[sub] : undefined;
    if (!info) return `unknown command: 'info ${printable(sub)}'\r\n`;
    // These subcommands take no argument; QEMU's parser says so in these words.
    if (words.length > 2) return `${sub}: extraneous characters at the end of line\r\nTry "help info ${sub}" for more information\r\n`;
    return lines(info.run(source));
  }
  const typed = words[0]!;
  const name = ALIASES[typed] ?? typed;
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name]! : undefined;
  if (!command) return `unknown command: '${printable(typed)}'\r\n`;
  const shown = command.shown ?? name;
  try {
    // What follows the command's name, read as QEMU's monitor_parse_arguments does: flags, then each argument
    // by its type (a string may be double-quoted), then nothing more.
    const line = new HmpLine(commandLine, commandLine.indexOf(typed) + typed.length);
    const flags = new Set<string>();
    while (command.flags && line.peekFlag()) {
      const word = line.word();
      const flag = word.slice(1, 2);
      if (!command.flags.includes(flag) || flag === '') throw usage(shown, `unsupported option -${printable(flag)}`, name);
      if (word.length > 2) throw usage(shown, 'extraneous characters at the end of line', name);
      flags.add(flag);
    }
    const tryHelp = `\r\nTry "help ${name}" for more information`;
    const args: string[] = [];
    for (const type of command.args) {
      if (type === 's') {
        const text = line.string();
        if (text === undefined) throw usage(shown, 'string expected', name);
        args.push(text);
        continue;
      }
      const word = line.word();
      if (type === 'b') {
        if (word !== 'on' && word !== 'off') throw new HmpUsageError(`Expected 'on' or 'off'${tryHelp}`);
        args.push(word);
        continue;
      }
      // QEMU reads an expression; livemig a decimal or 0x hex integer, and says what QEMU says of anything else.
      if (word === '') {
        if (type === 'l') throw new HmpUsageError(`unexpected end of expression${tryHelp}`);
        continue;
      }
      if (parseUint(word) === undefined) {
        const bad = /^0x/i.test(word) ? word.slice(2).replace(/^[0-9a-f]*/i, '') : word.replace(/^\d*/, '');
        throw new HmpUsageError(`invalid char '${printable(bad.charAt(0) || word.charAt(0))}' in expression${tryHelp}`);
      }
      args.push(word);
    }
    if (!line.atEnd()) throw usage(shown, 'extraneous characters at the end of line', name);
    return lines(await command.run(args, flags, source));
  } catch (err) {
    if (err instanceof HmpUsageError) return `${err.message}\r\n`;
    if (err instanceof HmpWarnedError) return `${err.warnings.map((w) => `${w}\r\n`).join('')}Error: ${err.message}\r\n`;
    return `Error: ${(err as Error).message}\r\n`;
  }
}
