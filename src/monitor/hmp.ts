/**
 * `human-monitor-command`: the few HMP commands management tools and
 * `qmp-shell -H` send, answered with QEMU 7.2's text layout (monitor/hmp-cmds.c:
 * hmp_info_status, hmp_info_migrate, hmp_info_migrate_parameters,
 * hmp_info_migrate_capabilities), lines ending in "\r\n" as QEMU's monitor
 * writes them. Any other command gets QEMU's "unknown command" text (a
 * successful reply, as QEMU's: HMP reports its errors as output).
 */
import type { MigrationInfo } from './query-migrate.js';

/** What the HMP commands read: the same figures QMP's query-* commands return. */
export interface HmpSource {
  status(): { status: string; running: boolean; singlestep: boolean };
  migrate(): MigrationInfo;
  parameters(): Record<string, unknown>;
  /** Every QEMU 7.2 capability, in QEMU's enum order. */
  capabilities(): Array<{ capability: string; state: boolean }>;
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

function infoStatus(s: ReturnType<HmpSource['status']>): string[] {
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
  const ms = (name: string): string => `${name}: ${String(p[name])} ms`;
  const plain = (name: string): string => `${name}: ${String(p[name])}`;
  const str = (name: string): string => `${name}: '${String(p[name] ?? '')}'`;
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
    `max-bandwidth: ${String(p['max-bandwidth'])} bytes/second`,
    ms('downtime-limit'),
    ms('x-checkpoint-delay'),
    `block-incremental: ${onOff(p['block-incremental'])}`,
    plain('multifd-channels'),
    plain('multifd-compression'),
    `xbzrle-cache-size: ${String(p['xbzrle-cache-size'])} bytes`,
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

/** The `info` subcommands livemig answers. */
const INFO: Record<string, (s: HmpSource) => string[]> = {
  status: (s) => infoStatus(s.status()),
  migrate: (s) => infoMigrate(s.migrate()),
  migrate_parameters: (s) => infoMigrateParameters(s.parameters()),
  migrate_capabilities: (s) => s.capabilities().map((c) => `${c.capability}: ${onOff(c.state)}`),
};

/** `info` alone lists the subcommands, with QEMU's help texts. */
const INFO_HELP: Record<string, string> = {
  status: 'show the current VM status (running|paused)',
  migrate: 'show migration status',
  migrate_parameters: 'show current migration parameters',
  migrate_capabilities: 'show current migration capabilities',
};

/** `help`: the commands livemig's HMP has, in QEMU's `name args -- text` layout. */
const HELP = ['help|? [cmd] -- show the help', 'info [subcommand] -- show various information about the system state'];

/** Run one HMP command line; returns the monitor's output as QEMU's human-monitor-command does. */
export function runHmpCommand(commandLine: string, source: HmpSource): string {
  const words = commandLine.trim().split(/\s+/).filter((w) => w !== '');
  if (words.length === 0) return '';
  // qmp-shell -H reads `help` and `info` at start for its completions (the first and second word of each line).
  if (words[0] === 'help' || words[0] === '?') return HELP.map((line) => `${line}\r\n`).join('');
  if (words[0] !== 'info') return `unknown command: '${words[0]}'\r\n`;
  if (words.length === 1) return Object.keys(INFO).map((name) => `info ${name}  -- ${INFO_HELP[name]}\r\n`).join('');
  const sub = words[1]!;
  const info = Object.hasOwn(INFO, sub) ? INFO[sub] : undefined;
  if (!info) return `unknown command: 'info ${sub}'\r\n`;
  // These subcommands take no argument; QEMU's parser says so in these words.
  if (words.length > 2) return `${sub}: extraneous characters at the end of line\r\nTry "help info ${sub}" for more information\r\n`;
  return info(source).map((line) => `${line}\r\n`).join('');
}
