/**
 * `livemig run --machine test`: run a guest; with `--incoming URI` wait for a
 * migration into it; with `--migrate-to URI` migrate it away once it runs.
 *
 * With `--json` every line on stdout is one JSON event (for scripts and the
 * demo); otherwise lines are for people.
 */
import { queryMigrate, type MigrationInfo } from '../monitor/query-migrate.js';
import { checkMemory, ramSha256 } from '../machine/index.js';
import { createGuest, type Guest, type GuestOptions } from '../guests/index.js';
import { guestTypes } from '../guests/registry.js';
import { MigrationConfig, OutgoingMigration } from '../migration/index.js';
import { MachineMonitor } from '../monitor/machine-monitor.js';
import { ObjectRegistry } from '../security/index.js';
import { parseQmpAddress, qmpServerTls } from './qmp-address.js';
import { formatBytes, jsonText } from './format.js';
import { parseDiskSpec } from './disk-spec.js';
import { printable } from '../wire/printable.js';
import { parseSize } from '../migration/size.js';
import { MigrationMetrics, parseMetricsAddress, serveMetrics, type MetricsEndpoint } from '../monitor/metrics.js';
import { createWriteStream, type WriteStream } from 'node:fs';
import { figuresOf, formatDiagnosis, formatProgressLine, reachedText } from './progress.js';
import { explainDowntime } from '../migration/progress-model.js';
import { MAX_GUEST_SHARE_PERCENT, MIN_GUEST_SHARE_PERCENT } from '../machine/guest-share.js';

export interface RunOptions {
  machine: string;
  ram: string;
  incoming?: string;
  migrateTo?: string;
  migrateAfterMs: string;
  dirtyRate: string;
  pattern: string;
  param: string[];
  cap: string[];
  /** `--object TYPE,id=ID,...` (QEMU's -object): TLS credentials and authorization objects. */
  object?: string[];
  json?: boolean;
  exitAfterMs?: string;
  qmp?: string;
  verify?: boolean;
  guest?: string;
  kernel?: string;
  serialStdin?: boolean;
  disk?: string;
  /** v86 media and firmware (see GuestOptions.media). */
  hda?: string;
  hdb?: string;
  fda?: string;
  cdrom?: string;
  diskShared?: boolean;
  bios?: string;
  vgaBios?: string;
  /** `--guest-share PERCENT` (v86). */
  guestShare?: string;
  diskRate: string;
  diskPattern: string;
  /** With --migrate-to: switch to postcopy this long after the migration started (needs --cap postcopy-ram). */
  postcopyAfterMs?: string;
  /** False with -S: a destination stays paused after the migration until `cont`. */
  autostart: boolean;
  /** `--serial stdio|none|FILE`: where the guest's serial output goes (see serialTarget). */
  serial?: string;
  /** `--metrics tcp:HOST:PORT`: serve Prometheus metrics there. */
  metrics?: string;
  /** `--name NAME` (QEMU's -name): the VM's name, the metrics' `name` label. */
  name?: string;
}

/**
 * Where the guest's serial bytes go, and then where livemig's own lines go. As QEMU's
 * `-serial stdio`, the default puts the guest's console on stdout; livemig's status
 * lines then go to stderr, so neither stream cuts into the other (`run | tee console.log`
 * keeps the guest's bytes alone). With a file or none, stdout is free for the status lines.
 * `--json` keeps its one stream of events (serial as `serial` events) unless a file or
 * none is asked for.
 */
type SerialTarget = { kind: 'stdio' } | { kind: 'none' } | { kind: 'file'; path: string };

export function parseSerialOption(text: string | undefined): SerialTarget {
  if (text === undefined || text === 'stdio') return { kind: 'stdio' };
  if (text === 'none' || text === 'null') return { kind: 'none' };
  if (text === '') throw new Error("--serial: give stdio, none or a file's path");
  return { kind: 'file', path: text.startsWith('file:') ? text.slice(5) : text };
}

export async function runCommand(options: RunOptions): Promise<number> {
  if (options.incoming && options.migrateTo) throw new Error('--incoming and --migrate-to exclude each other');
  // Read --param/--cap before the guest starts, so a typo costs nothing.
  const config = MigrationConfig.fromArgs(options.param, options.cap);
  // So are the objects: a missing certificate or a bad keys.psk is reported before anything runs.
  const objects = new ObjectRegistry();
  for (const text of options.object ?? []) objects.addFromText(text);
  const serialTarget = parseSerialOption(options.serial);
  const metricsAddress = options.metrics !== undefined ? parseMetricsAddress(options.metrics) : undefined;
  const serialFile = serialTarget.kind === 'file' ? await openSerialFile(serialTarget.path) : undefined;
  // Human lines go where the serial output does not (see SerialTarget).
  const statusStream = !options.json && serialTarget.kind === 'stdio' ? process.stderr : process.stdout;
  // On one terminal two streams still meet: a status line starts on a line of its own.
  const sameTerminal = statusStream !== process.stdout && process.stdout.isTTY === true && process.stderr.isTTY === true;
  let serialLineOpen = false;
  const writeLine = (stream: NodeJS.WriteStream, text: string): void => {
    if (serialLineOpen && (stream === process.stdout || sameTerminal)) {
      text = '\n' + text;
      serialLineOpen = false;
    }
    stream.write(text + '\n');
  };
  const emit = (event: string, data: Record<string, unknown>, human: string): void => {
    if (options.json) process.stdout.write(jsonText({ event, ...data }) + '\n');
    else writeLine(statusStream, human);
  };
  // An error or warning: once, on stderr (and, with --json, as its event for scripts).
  const complain = (text: string, event?: { name: string; data: Record<string, unknown> }): void => {
    if (options.json && event) process.stdout.write(jsonText({ event: event.name, ...event.data }) + '\n');
    writeLine(process.stderr, `livemig: ${text}`);
  };
  // The monitor comes with the guest; the endpoint listens first, so a taken port costs no guest start.
  let monitorForMetrics: MachineMonitor | undefined;
  let metricsObserver: MigrationMetrics | undefined;
  let metricsEndpoint: MetricsEndpoint | undefined;
  if (metricsAddress) {
    const metrics = new MigrationMetrics({
      name: options.name ?? 'livemig',
      queryMigrate: () => monitorForMetrics?.queryMigrate() ?? {},
      setupMeansListening: options.incoming !== undefined,
    });
    metricsEndpoint = await serveMetrics(metricsAddress, metrics);
    metricsObserver = metrics;
  }
  const guest = await createGuest({
    machine: options.machine,
    ...(options.guest !== undefined ? { guest: options.guest } : {}),
    ...(options.kernel !== undefined ? { kernel: options.kernel } : {}),
    ramSizeBytes: parseSize(options.ram, '--ram'),
    incoming: options.incoming !== undefined,
    dirtyRatePagesPerSecond: Number(options.dirtyRate),
    pattern: options.pattern,
    ...(options.disk !== undefined ? { disk: parseDiskSpec(options.disk), diskRateBlocksPerSecond: Number(options.diskRate), diskPattern: options.diskPattern } : {}),
    ...mediaOptions(options),
  });
  const machine = guest.machine;
  if (metricsEndpoint) emit('metrics', { url: metricsEndpoint.url }, `metrics on ${metricsEndpoint.url}`);
  if (options.serialStdin && guest.writeSerial) {
    process.stdin.setEncoding('utf8').on('data', (text: string) => guest.writeSerial!(text));
  }
  let serialBytes = 0;
  machine.serial.on('data', (chunk: Buffer) => {
    serialBytes += chunk.length;
    if (serialTarget.kind === 'none') return;
    if (serialFile) serialFile.write(chunk);
    else if (options.json) emit('serial', { text: chunk.toString('latin1') }, '');
    else {
      process.stdout.write(chunk.toString('latin1'));
      serialLineOpen = chunk[chunk.length - 1] !== 0x0a;
    }
  });
  const monitor = new MachineMonitor(machine, {
    ...(options.incoming !== undefined ? { incoming: options.incoming } : {}),
    incomingOptions: {
      disks: guest.incomingDisks,
      autostart: options.autostart !== false,
      diskHint: guest.diskHint ?? ((name) => `; give it one with --disk PATH,id=${name}`),
    },
    ...(guest.check ? { checkGuest: guest.check } : {}),
    // --cap/--param apply to every migration of this machine: a destination's too (multifd must be on at
    // both ends, as QEMU's migrate-set-* before migrate-incoming), and one started later over QMP.
    config,
    objects,
    machineTypes: guestTypes().map((t) => ({ name: t.name, isDefault: t.name === 'test' })),
  });
  monitorForMetrics = monitor;
  if (metricsObserver) {
    const observer = metricsObserver;
    monitor.migration.on('status', (status) => observer.observe(status));
    monitor.on('incomingStatus', (status) => observer.observe(status));
    monitor.on('incoming', (result) => observer.observe(result.status));
  }
  monitor.on('warning', (text) => complain(`warning: ${text}`));
  const stop = new Promise<number>((resolve) => {
    // As QEMU, a monitor client hears SHUTDOWN (reason host-signal) before the monitor closes.
    const shutdownEvent = (): void => monitor.server.emitEvent('SHUTDOWN', { guest: false, reason: 'host-signal' });
    process.once('SIGINT', () => (shutdownEvent(), resolve(130)));
    process.once('SIGTERM', () => (shutdownEvent(), resolve(0)));
    monitor.once('quit', () => resolve(0));
    if (options.exitAfterMs !== undefined) setTimeout(() => resolve(0), Number(options.exitAfterMs)).unref();
  });
  const guestTicker = setInterval(() => {
    const progress = guest.progress();
    const figures = Object.entries(progress).map(([k, v]) => `${k} ${v}`).join(', ');
    emit('guest', { running: machine.running, ...progress, serialBytes }, `[guest] ${machine.running ? 'running' : 'paused'}, ${figures}, ${serialBytes} serial bytes`);
  }, 500);
  // However a migration was started (QMP or --migrate-to), report what left:
  // the source guest is stopped once it completed, so its RAM can be hashed outside the downtime.
  monitor.migration.on('status', (status) => {
    if (status === 'completed' && options.verify) emit('migrated', { ramHash: guest.ramHash() }, `source RAM at stop: sha256 ${guest.ramHash().slice(0, 16)}...`);
  });
  // Everything a QMP command can set off is reported from here on: the monitor is wired before its
  // socket accepts a client (a fast client's migrate-incoming once ran before the 'listening' report
  // was wired, and its line never came).
  const incoming = options.incoming !== undefined ? reportIncoming(guest, monitor, options.verify === true, emit, complain, stop) : undefined;
  try {
    if (options.qmp) {
      const qmpAddress = parseQmpAddress(options.qmp);
      const address = await monitor.server.listen(qmpAddress.uri, {
        ...qmpServerTls(qmpAddress, objects),
        onWarning: (text) => complain(`warning: ${text}`),
      });
      emit('qmp', { address }, `QMP monitor on ${address}`);
    }
    if (options.incoming !== undefined && incoming) {
      if (options.incoming !== 'defer') await monitor.startIncoming(options.incoming);
      else emit('waiting', {}, 'waiting for migrate-incoming on the QMP monitor');
      // QEMU 7.2 exits when an incoming migration fails; so do we. A quit or signal ends it too.
      return await Promise.race([incoming, stop]);
    }
    if (options.migrateTo) return await runOutgoing(guest, monitor.migration, options, emit, complain, () => serialBytes, stop);
    // From the blocks, not guest.memory(): handing RAM out costs the test machine its never-written pages.
    const ramBytes = machine.ramBlocks().reduce((sum, block) => sum + block.lengthBytes, 0);
    emit('running', { machine: machine.machineName, ramBytes }, `guest running: ${formatBytes(ramBytes)} of RAM; Ctrl-C stops it`);
    return await stop;
  } finally {
    clearInterval(guestTicker);
    await metricsEndpoint?.close();
    await monitor.server.close();
    await machine.destroy();
    if (serialFile) await new Promise<void>((resolve) => serialFile.end(resolve));
  }
}

/** --hda/--hdb/--fda/--cdrom/--disk-shared/--bios/--vga-bios/--guest-share as guest options (only those given). */
function mediaOptions(o: RunOptions): Partial<GuestOptions> {
  const media = Object.fromEntries((['hda', 'hdb', 'fda', 'cdrom'] as const).filter((slot) => o[slot] !== undefined).map((slot) => [slot, o[slot]!]));
  return {
    ...(Object.keys(media).length > 0 ? { media } : {}),
    ...(o.diskShared ? { diskShared: true } : {}),
    ...(o.bios !== undefined ? { bios: o.bios } : {}),
    ...(o.vgaBios !== undefined ? { vgaBios: o.vgaBios } : {}),
    ...(o.guestShare !== undefined ? { guestSharePercent: parseGuestShare(o.guestShare) } : {}),
  };
}

/** `--guest-share`: a whole percentage from MIN_GUEST_SHARE_PERCENT to MAX_GUEST_SHARE_PERCENT. */
function parseGuestShare(text: string): number {
  const percent = /^\d{1,3}$/.test(text) ? Number(text) : Number.NaN;
  if (!(percent >= MIN_GUEST_SHARE_PERCENT && percent <= MAX_GUEST_SHARE_PERCENT)) {
    throw new Error(`--guest-share: expects a whole percentage from ${MIN_GUEST_SHARE_PERCENT} to ${MAX_GUEST_SHARE_PERCENT}, got '${printable(text)}'`);
  }
  return percent;
}

type Emit = (event: string, data: Record<string, unknown>, human: string) => void;
type Complain = (text: string, event?: { name: string; data: Record<string, unknown> }) => void;

/** Opened before the guest starts, so a bad path is reported before anything runs. */
async function openSerialFile(path: string): Promise<WriteStream> {
  const stream = createWriteStream(path, { flags: 'a' });
  await new Promise<void>((resolve, reject) => {
    stream.once('open', () => resolve());
    stream.once('error', (err: NodeJS.ErrnoException) => reject(new Error(`--serial ${path}: ${err.code === 'ENOENT' ? 'no such directory' : err.code === 'EACCES' ? 'permission denied' : err.message}`)));
  });
  return stream;
}

/**
 * Reports a destination's progress (listening, loaded, resumed, failures) as
 * lines; resolves with the exit code once its incoming migration ended.
 * Wired before anything can start the migration (--incoming URI, or QMP's
 * migrate-incoming for defer).
 */
function reportIncoming(guest: Guest, monitor: MachineMonitor, verify: boolean, emit: Emit, complain: Complain, stop: Promise<number>): Promise<number> {
  // --verify: copy RAM as loaded into a buffer prepared in advance (a memcpy in
  // the downtime), and hash and check the copy once the guest runs again.
  const shadow = verify ? Buffer.alloc(guest.memory().length) : undefined;
  monitor.on('loaded', () => {
    const cpu = guest.cpu();
    if (!shadow) {
      emit('loaded', { cpu }, 'state loaded');
      return;
    }
    shadow.set(guest.memory());
    const range = guest.checkRange();
    setImmediate(() => {
      const check = range ? checkMemory(shadow, range.startBytes, range.endBytes) : undefined;
      emit('loaded', { ramHash: ramSha256(shadow), ...(check ? { memoryCheck: check } : {}), cpu }, `state loaded; memory check ${!check ? 'not applicable' : check.ok ? 'passed' : `FAILED: ${check.reason}`}`);
    });
  });
  monitor.on('listening', (address) => emit('listening', { address }, `waiting for a migration on ${address}`));
  monitor.on('incomingStatus', (status, error) => {
    if (status === 'postcopy-paused') {
      complain(`incoming migration postcopy-paused: ${error?.message}`, { name: 'postcopy-paused', data: { error: error?.message, code: error?.code } });
    } else if (status === 'postcopy-recover' || status === 'postcopy-active') {
      emit(status, {}, `incoming migration ${status}`);
    }
  });
  monitor.on('recovering', (address) => emit('recovering', { address }, `waiting for the source to resume postcopy on ${address}`));
  monitor.on('rejected', (why) => emit('rejected', { reason: why }, `${why}; still waiting`));
  return new Promise<number>((resolve) => {
    monitor.once('incoming', (r) => {
      if (r.status !== 'completed') {
        // The guest was not started here; the source keeps (or resumes) it.
        complain(`incoming migration ${r.status}: ${r.error?.message}; the guest was not started here`, { name: r.status, data: { error: r.error?.message, code: r.error?.code } });
        resolve(1);
        return;
      }
      if (r.warning) complain(`warning: ${r.warning}`);
      emit('resumed', { started: r.started, loadTimeMs: Math.round(r.loadTimeMs), bytes: r.bytes }, `migration completed: ${formatBytes(r.bytes)} received; guest ${r.started ? 'running' : 'left paused'}`);
      resolve(stop);
    });
  });
}

async function runOutgoing(guest: Guest, migration: OutgoingMigration, options: RunOptions, emit: Emit, complain: Complain, serialBytes: () => number, stop: Promise<number>): Promise<number> {
  await new Promise((r) => setTimeout(r, Number(options.migrateAfterMs)));
  migration.on('status', (status) => emit('status', { status }, `migration: ${status}`));
  migration.on('pass', (pass) => emit('pass', { pass }, `migration: pass ${pass}`));
  migration.on('postcopy', (reason) => emit('postcopy', { reason }, `migration: switching to postcopy (${reason})`));
  migration.start(options.migrateTo!);
  if (options.postcopyAfterMs !== undefined) {
    const timer = setTimeout(() => {
      try {
        migration.startPostcopy();
      } catch (err) {
        complain(`--postcopy-after-ms: ${(err as Error).message}`);
      }
    }, Number(options.postcopyAfterMs));
    void migration.finished.finally(() => clearTimeout(timer));
  }
  let diagnosed = false;
  const progress = setInterval(() => {
    const info = queryMigrate(migration);
    emit('progress', { info }, progressLine(info));
    // The not-converging diagnosis once, as its own event (it is also in every progress event's info).
    const diagnosis = info['x-livemig-progress']?.diagnosis;
    if (diagnosis && !diagnosed) {
      diagnosed = true;
      emit('diagnosis', { diagnosis }, formatDiagnosis(diagnosis));
    }
  }, 200);
  // A signal cancels the migration (the guest stays here, intact) and then exits.
  const signalled = stop.then((code) => {
    try {
      migration.cancel(code === 130 ? 'livemig run on SIGINT' : 'livemig run stopping (SIGTERM, quit or --exit-after-ms)');
    } catch {
      /* too late: the destination has the whole state; wait for the end */
    }
    return code;
  });
  const status = await Promise.race([migration.finished, signalled.then(() => migration.finished)]);
  clearInterval(progress);
  const info = queryMigrate(migration);
  if (status === 'postcopy-paused') {
    // The destination runs the guest and needs pages only this process has: stay until told otherwise.
    complain(`migration ${status}: ${info['error-desc'] ?? ''}`, { name: status, data: { info } });
    return await stop;
  }
  if (status !== 'completed') {
    complain(`migration ${status}${reachedText(info['x-livemig-progress']?.percent, info.ram?.['dirty-sync-count'] ?? 0)}: ${info['error-desc'] ?? (status === 'cancelled' ? 'cancelled on request' : 'no reason given')}`, { name: status, data: { info } });
    return 1;
  }
  emit('completed', { info, switchover: migration.switchover, ramHash: guest.ramHash(), serialBytes: serialBytes(), ...guest.progress() }, summary(info));
  return 0;
}

/** The same line as `livemig migrate` draws without a terminal, from the source's progress model. */
function progressLine(q: MigrationInfo): string {
  return `migration: ${formatProgressLine(figuresOf(q as Record<string, unknown>, 0, q['total-time'] ?? 0)).replace(/^\[ *[^\]]*\] /, '')}`;
}

function summary(q: MigrationInfo): string {
  const r = q.ram!;
  const disk = q.disk ? `, disk ${formatBytes(q.disk.total)} copied` : '';
  const over = q.downtime !== undefined ? explainDowntime(q.downtime, q['x-livemig-downtime-limit-ms'], q['x-livemig-downtime-phases']) : undefined;
  return `migration completed in ${q['total-time']} ms: downtime ${q.downtime} ms, ${r['dirty-sync-count']} passes, ${formatBytes(r.transferred)} of RAM sent, ${r.mbps.toFixed(0)} Mbit/s${disk}${over ? `\nmigration: ${over}` : ''}`;
}
