/**
 * `livemig run --machine test`: run a guest; with `--incoming URI` wait for a
 * migration into it; with `--migrate-to URI` migrate it away once it runs.
 *
 * With `--json` every line on stdout is one JSON event (for scripts and the
 * demo); otherwise lines are for people.
 */
import { queryMigrate, type MigrationInfo } from '../monitor/query-migrate.js';
import { checkMemory, ramSha256 } from '../machine/index.js';
import { createGuest, type Guest } from '../guests/index.js';
import { guestTypes } from '../guests/registry.js';
import { MigrationConfig, OutgoingMigration } from '../migration/index.js';
import { MachineMonitor } from '../monitor/machine-monitor.js';
import { ObjectRegistry } from '../security/index.js';
import { parseQmpAddress, qmpServerTls } from './qmp-address.js';
import { formatBytes } from './format.js';
import { parseDiskSpec } from './disk-spec.js';
import { parseSize } from '../migration/size.js';

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
  diskRate: string;
  diskPattern: string;
  /** With --migrate-to: switch to postcopy this long after the migration started (needs --cap postcopy-ram). */
  postcopyAfterMs?: string;
  /** False with -S: a destination stays paused after the migration until `cont`. */
  autostart: boolean;
}

export async function runCommand(options: RunOptions): Promise<number> {
  if (options.incoming && options.migrateTo) throw new Error('--incoming and --migrate-to exclude each other');
  // Read --param/--cap before the guest starts, so a typo costs nothing.
  const config = MigrationConfig.fromArgs(options.param, options.cap);
  // So are the objects: a missing certificate or a bad keys.psk is reported before anything runs.
  const objects = new ObjectRegistry();
  for (const text of options.object ?? []) objects.addFromText(text);
  const emit = (event: string, data: Record<string, unknown>, human: string): void => {
    process.stdout.write(options.json ? JSON.stringify({ event, ...data }) + '\n' : human + '\n');
  };
  const guest = await createGuest({
    machine: options.machine,
    ...(options.guest !== undefined ? { guest: options.guest } : {}),
    ...(options.kernel !== undefined ? { kernel: options.kernel } : {}),
    ramSizeBytes: parseSize(options.ram, '--ram'),
    incoming: options.incoming !== undefined,
    dirtyRatePagesPerSecond: Number(options.dirtyRate),
    pattern: options.pattern,
    ...(options.disk !== undefined ? { disk: parseDiskSpec(options.disk), diskRateBlocksPerSecond: Number(options.diskRate), diskPattern: options.diskPattern } : {}),
  });
  const machine = guest.machine;
  if (options.serialStdin && guest.writeSerial) {
    process.stdin.setEncoding('utf8').on('data', (text: string) => guest.writeSerial!(text));
  }
  let serialBytes = 0;
  machine.serial.on('data', (chunk: Buffer) => {
    serialBytes += chunk.length;
    if (!options.json) process.stdout.write(chunk.toString('latin1'));
    else emit('serial', { text: chunk.toString('latin1') }, '');
  });
  const monitor = new MachineMonitor(machine, {
    ...(options.incoming !== undefined ? { incoming: options.incoming } : {}),
    incomingOptions: {
      disks: guest.incomingDisks,
      autostart: options.autostart !== false,
      diskHint: (name) => `; give it one with --disk PATH,id=${name}`,
    },
    ...(guest.check ? { checkGuest: guest.check } : {}),
    // --cap/--param apply to every migration of this machine: a destination's too (multifd must be on at
    // both ends, as QEMU's migrate-set-* before migrate-incoming), and one started later over QMP.
    config,
    objects,
    machineTypes: guestTypes().map((t) => ({ name: t.name, isDefault: t.name === 'test' })),
  });
  monitor.on('warning', (text) => process.stderr.write(`livemig: warning: ${text}\n`));
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
  try {
    if (options.qmp) {
      const qmpAddress = parseQmpAddress(options.qmp);
      const address = await monitor.server.listen(qmpAddress.uri, {
        ...qmpServerTls(qmpAddress, objects),
        onWarning: (text) => process.stderr.write(`livemig: warning: ${text}\n`),
      });
      emit('qmp', { address }, `QMP monitor on ${address}`);
    }
    if (options.incoming) {
      return await runIncoming(guest, monitor, options.incoming, options.verify === true, emit, stop);
    }
    if (options.migrateTo) return await runOutgoing(guest, monitor.migration, options, emit, () => serialBytes, stop);
    // From the blocks, not guest.memory(): handing RAM out costs the test machine its never-written pages.
    const ramBytes = machine.ramBlocks().reduce((sum, block) => sum + block.lengthBytes, 0);
    emit('running', { machine: machine.machineName, ramBytes }, `guest running: ${formatBytes(ramBytes)} of RAM; Ctrl-C stops it`);
    return await stop;
  } finally {
    clearInterval(guestTicker);
    await monitor.server.close();
    await machine.destroy();
  }
}

type Emit = (event: string, data: Record<string, unknown>, human: string) => void;

async function runIncoming(guest: Guest, monitor: MachineMonitor, uri: string, verify: boolean, emit: Emit, stop: Promise<number>): Promise<number> {
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
      emit('postcopy-paused', { error: error?.message, code: error?.code }, `incoming migration postcopy-paused: ${error?.message}`);
      process.stderr.write(`livemig: incoming migration postcopy-paused: ${error?.message}\n`);
    } else if (status === 'postcopy-recover' || status === 'postcopy-active') {
      emit(status, {}, `incoming migration ${status}`);
    }
  });
  monitor.on('recovering', (address) => emit('recovering', { address }, `waiting for the source to resume postcopy on ${address}`));
  monitor.on('rejected', (why) => emit('rejected', { reason: why }, `${why}; still waiting`));
  const result = new Promise<number>((resolve) => {
    monitor.once('incoming', (r) => {
      if (r.status !== 'completed') {
        // The guest was not started here; the source keeps (or resumes) it.
        emit(r.status, { error: r.error?.message, code: r.error?.code }, `incoming migration ${r.status}: ${r.error?.message}; the guest was not started here`);
        process.stderr.write(`livemig: incoming migration ${r.status}: ${r.error?.message}\n`);
        resolve(1);
        return;
      }
      if (r.warning) process.stderr.write(`livemig: warning: ${r.warning}\n`);
      emit('resumed', { started: r.started, loadTimeMs: Math.round(r.loadTimeMs), bytes: r.bytes }, `migration completed: ${formatBytes(r.bytes)} received; guest ${r.started ? 'running' : 'left paused'}`);
      resolve(stop);
    });
  });
  if (uri !== 'defer') await monitor.startIncoming(uri);
  else emit('waiting', {}, 'waiting for migrate-incoming on the QMP monitor');
  // QEMU 7.2 exits when an incoming migration fails; so do we. A quit or signal ends it too.
  return Promise.race([result, stop]);
}

async function runOutgoing(guest: Guest, migration: OutgoingMigration, options: RunOptions, emit: Emit, serialBytes: () => number, stop: Promise<number>): Promise<number> {
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
        process.stderr.write(`livemig: --postcopy-after-ms: ${(err as Error).message}\n`);
      }
    }, Number(options.postcopyAfterMs));
    void migration.finished.finally(() => clearTimeout(timer));
  }
  const progress = setInterval(() => emit('progress', { info: queryMigrate(migration) }, progressLine(migration)), 200);
  // A signal cancels the migration (the guest stays here, intact) and then exits.
  const signalled = stop.then((code) => {
    try {
      migration.cancel();
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
    emit(status, { info }, `migration ${status}: ${info['error-desc'] ?? ''}`);
    return await stop;
  }
  if (status !== 'completed') {
    emit(status, { info }, `migration ${status}: ${info['error-desc'] ?? ''}`);
    return 1;
  }
  emit('completed', { info, switchover: migration.switchover, ramHash: guest.ramHash(), serialBytes: serialBytes(), ...guest.progress() }, summary(info));
  return 0;
}

function progressLine(m: OutgoingMigration): string {
  const q = queryMigrate(m);
  const r = q.ram;
  if (!r) return `migration: ${q.status}`;
  const disk = q.disk ? `, disk ${formatBytes(q.disk.transferred)} of ${formatBytes(q.disk.total)}` : '';
  return `migration: ${q.status}, pass ${r['dirty-sync-count']}, ${formatBytes(r.transferred)} sent, ${formatBytes(r.remaining)} remaining, ${r.mbps.toFixed(0)} Mbit/s, dirty ${r['dirty-pages-rate']} pages/s${disk}`;
}

function summary(q: MigrationInfo): string {
  const r = q.ram!;
  const disk = q.disk ? `, disk ${formatBytes(q.disk.total)} copied` : '';
  return `migration completed in ${q['total-time']} ms: downtime ${q.downtime} ms, ${r['dirty-sync-count']} passes, ${formatBytes(r.transferred)} of RAM sent, ${r.mbps.toFixed(0)} Mbit/s${disk}`;
}
