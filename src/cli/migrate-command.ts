/**
 * `livemig migrate`, `livemig query`, `livemig cancel`: drive a migration through a QMP
 * monitor — real QEMU's, or a livemig machine's `--qmp` — as a person would with QMP by
 * hand, with a live progress display.
 *
 * Exit codes: 0 the migration completed (cancel: nothing runs any more);
 * 1 it failed, was cancelled or `migrate` was refused (the reason on stderr);
 * 2 bad arguments, settings the monitor rejected, or the monitor connection failed
 *   (then the migration's outcome is unknown);
 * 3 the migration failed after the destination was told to run the guest (livemig
 *   source): the guest is paused here and may run there; the message names the
 *   command that tells which (query-status on the destination).
 */
import type { Command } from 'commander';
import { ObjectRegistry } from '../security/index.js';
import { parseQmpAddress, qmpClientTls } from './qmp-address.js';
import { performance } from 'node:perf_hooks';
import { MIGRATION_FINAL_STATES, MIGRATION_WAIT_STATES, QmpClient, QmpError, type MigrationInfo, type QmpEvent } from '../monitor/qmp-client.js';
import { parseCapabilityArgs, parseParameterArgs, type CapabilitySetting } from '../migration/config.js';
import { MigrationMetrics, parseMetricsAddress, serveMetrics, type MetricsAddress, type MetricsEndpoint } from '../monitor/metrics.js';
import { ProgressDisplay, buildReport, figuresOf, formatMigrationInfo, formatReport, progressOf, reportJson } from './progress.js';
import { ProgressModel, type ProgressReport, type ProgressSettings } from '../migration/progress-model.js';
import { jsonText } from './format.js';

export const DEFAULT_POLL_INTERVAL_MS = 250;
/** `livemig cancel` gives up waiting for the migration to stop after this long. */
export const DEFAULT_CANCEL_TIMEOUT_MS = 60_000;
/**
 * A final status seen before any sign that the new migration started may be the previous
 * migration's (a server that sets `setup` only after answering `migrate`); it is believed
 * after this long. QEMU 7.2 sets `setup` inside `migrate` and emits its event first.
 */
const STALE_STATUS_GRACE_MS = 1000;

const collect = (value: string, previous: string[]): string[] => [...previous, value];
const OBJECT_HELP = 'TLS credentials for the monitor connection, as QEMU -object (e.g. tls-creds-x509,id=tls0,dir=DIR,endpoint=client); then --qmp tcp:HOST:PORT,tls-creds=tls0 (repeatable)';

export function registerMigrateCommands(program: Command): void {
  program
    .command('migrate')
    .description('migrate a VM (QEMU, or livemig run --qmp) to DEST_URI through its QMP monitor, with live progress')
    .argument('<dest-uri>', 'where the source sends its state: tcp:HOST:PORT, unix:PATH, ws://HOST:PORT/PATH, exec:CMD, file:PATH')
    .requiredOption('--qmp <uri>', "the source's QMP monitor: unix:PATH or tcp:HOST:PORT[,tls-creds=ID]")
    .option('--cap <name[=on|off]>', 'set a migration capability first, e.g. xbzrle or auto-converge=on (repeatable)', collect, [])
    .option('--param <name=value>', 'set a migration parameter first, e.g. max-bandwidth=100M, downtime-limit=300 (repeatable)', collect, [])
    .option('--object <type,id=ID,...>', OBJECT_HELP, collect, [])
    .option('--blk', "copy the VM's disks too (migrate with blk: true; the destination needs disks of the same names and sizes)")
    .option('--json', 'print each query-migrate snapshot as one JSON line, then a final summary line')
    .option('--interval-ms <ms>', 'how often to ask query-migrate', String(DEFAULT_POLL_INTERVAL_MS))
    .option('--postcopy-after-ms <ms>', 'switch to postcopy (migrate-start-postcopy) this long after migrate; needs --cap postcopy-ram on both sides')
    .option('--resume', "resume a paused postcopy migration to DEST_URI, the destination's migrate-recover address (livemig recover)")
    .option('--metrics <address>', "serve Prometheus metrics from the source's query-migrate at http://HOST:PORT/metrics while migrating: tcp:HOST:PORT")
    .option('--name <name>', "the metrics' name label (default: the VM's query-name, else livemig)")
    .option('--metrics-linger-ms <ms>', 'with --metrics: after the end, keep serving the final figures until the next scrape or this long, whichever comes first (give your scrape interval: a short migration may otherwise end between two scrapes)', '0')
    .addHelpText(
      'after',
      '\nCtrl-C asks "Cancel the migration? [y/N]" (a second Ctrl-C at the question cancels at once);\n' +
        'without a terminal to ask on, Ctrl-C cancels. Once the cancel is sent, Ctrl-C stops waiting for it.',
    )
    .action(async (destUri: string, options: MigrateOptions) => {
      process.exitCode = await migrateCommand(destUri, options);
    });

  program
    .command('recover')
    .description("postcopy paused: make the destination listen for the source again (migrate-recover) at LISTEN_URI; then livemig migrate --resume")
    .argument('<listen-uri>', 'where the destination listens: tcp:HOST:PORT or unix:PATH')
    .requiredOption('--qmp <uri>', "the destination's QMP monitor: unix:PATH or tcp:HOST:PORT[,tls-creds=ID]")
    .option('--object <type,id=ID,...>', OBJECT_HELP, collect, [])
    .action(async (listenUri: string, options: { qmp: string; object?: string[] }) => {
      process.exitCode = await recoverCommand(listenUri, options);
    });

  program
    .command('query')
    .description("show a VM's migration status (one query-migrate)")
    .requiredOption('--qmp <uri>', 'the QMP monitor: unix:PATH or tcp:HOST:PORT[,tls-creds=ID]')
    .option('--json', 'print the query-migrate answer as JSON')
    .option('--object <type,id=ID,...>', OBJECT_HELP, collect, [])
    .action(async (options: { qmp: string; json?: boolean; object?: string[] }) => {
      process.exitCode = await queryCommand(options);
    });

  program
    .command('cancel')
    .description("cancel a VM's outgoing migration (migrate_cancel) and wait until it has stopped")
    .requiredOption('--qmp <uri>', 'the QMP monitor: unix:PATH or tcp:HOST:PORT[,tls-creds=ID]')
    .option('--json', 'print the final query-migrate answer as JSON')
    .option('--timeout-ms <ms>', 'give up waiting after this long', String(DEFAULT_CANCEL_TIMEOUT_MS))
    .option('--object <type,id=ID,...>', OBJECT_HELP, collect, [])
    .action(async (options: { qmp: string; json?: boolean; timeoutMs: string; object?: string[] }) => {
      process.exitCode = await cancelCommand(options);
    });
}

export interface MigrateOptions {
  qmp: string;
  object?: string[];
  cap: string[];
  param: string[];
  json?: boolean;
  intervalMs: string;
  blk?: boolean;
  postcopyAfterMs?: string;
  resume?: boolean;
  metrics?: string;
  metricsLingerMs?: string;
  name?: string;
}

/** `livemig recover`: QMP migrate-recover on a destination whose postcopy paused. */
export async function recoverCommand(listenUri: string, options: { qmp: string; object?: string[] }): Promise<number> {
  const client = await connectOrComplain(options.qmp, options.object);
  if (!client) return 2;
  try {
    await client.execute('migrate-recover', { uri: listenUri });
    process.stdout.write(`the destination waits for the source on ${listenUri}: livemig migrate --resume ${listenUri} --qmp <the source's monitor>\n`);
    return 0;
  } catch (err) {
    complain(err instanceof QmpError ? `migrate-recover refused: ${err.desc}` : message(err));
    return 1;
  } finally {
    await client.close();
  }
}

function parseMs(text: string, what: string, min: number): number {
  if (!/^\d+$/.test(text) || Number(text) < min) throw new Error(`${what}: '${text}' must be an integer of at least ${min}`);
  return Number(text);
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));
const complain = (text: string): void => void process.stderr.write(`livemig: ${text}\n`);

/** `--qmp ADDRESS` with `--object`s: TLS when the address names tls-creds. */
async function connectOrComplain(qmp: string, objectTexts: readonly string[] = []): Promise<QmpClient | undefined> {
  try {
    const address = parseQmpAddress(qmp);
    const objects = new ObjectRegistry();
    for (const text of objectTexts) objects.addFromText(text);
    const tls = qmpClientTls(address, objects);
    return await QmpClient.connect(address.uri, tls ? { tls } : {});
  } catch (err) {
    complain(message(err));
    return undefined;
  }
}

// ---------- livemig migrate ----------

export async function migrateCommand(destUri: string, options: MigrateOptions): Promise<number> {
  let settings: RunSettings;
  let metricsAddress: MetricsAddress | undefined;
  let lingerMs = 0;
  try {
    // Scope 'qmp': the monitor may be a QEMU's with parameters livemig lacks; it checks the values.
    const capabilities = parseCapabilityArgs(options.cap ?? [], 'qmp');
    // MIGRATION / MIGRATION_PASS are emitted only with `events` (QEMU 7.2); respect an explicit events=off.
    if (!capabilities.some((c) => c.capability === 'events')) capabilities.push({ capability: 'events', state: true });
    settings = {
      destUri,
      capabilities,
      parameters: parseParameterArgs(options.param ?? [], 'qmp'),
      json: options.json === true,
      blk: options.blk === true,
      resume: options.resume === true,
      ...(options.postcopyAfterMs !== undefined ? { postcopyAfterMs: parseMs(options.postcopyAfterMs, '--postcopy-after-ms', 0) } : {}),
      intervalMs: parseMs(options.intervalMs ?? String(DEFAULT_POLL_INTERVAL_MS), '--interval-ms', 10),
    };
    metricsAddress = options.metrics !== undefined ? parseMetricsAddress(options.metrics) : undefined;
    lingerMs = parseMs(options.metricsLingerMs ?? '0', '--metrics-linger-ms', 0);
  } catch (err) {
    complain(message(err));
    return 2;
  }
  const client = await connectOrComplain(options.qmp, options.object);
  if (!client) return 2;
  let metricsEndpoint: MetricsEndpoint | undefined;
  try {
    if (metricsAddress) {
      // Every scrape asks the source (QEMU or livemig) itself, as virt-handler asks libvirt.
      const name = options.name ?? (await client.execute<{ name?: string }>('query-name').then((r) => r.name, () => undefined)) ?? 'livemig';
      settings.metrics = new MigrationMetrics({ name, queryMigrate: () => client.execute<MigrationInfo>('query-migrate') });
      metricsEndpoint = await serveMetrics(metricsAddress, settings.metrics).catch((err: unknown) => {
        complain(message(err));
        return undefined;
      });
      if (!metricsEndpoint) return 2;
      // Stdout stays query-migrate answers with --json: the URL goes to stderr then, if the port was picked here.
      if (!settings.json) process.stdout.write(`Metrics on ${metricsEndpoint.url}\n`);
      else if (metricsAddress.port === 0) process.stderr.write(`livemig: metrics on ${metricsEndpoint.url}\n`);
    }
    const code = await new MigrationRun(client, settings).run();
    if (metricsEndpoint && lingerMs > 0) {
      // Let a scraper see how it ended (succeeded/failed, end time, downtime), then go.
      if (!settings.json) process.stdout.write(`Metrics: the final figures stay on ${metricsEndpoint.url} until the next scrape, at most ${lingerMs} ms\n`);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([metricsEndpoint.nextScrape(), new Promise<void>((resolve) => (timer = setTimeout(resolve, lingerMs)))]);
      clearTimeout(timer);
    }
    return code;
  } catch (err) {
    complain(`${message(err)} (the migration's outcome is unknown)`);
    return 2;
  } finally {
    await metricsEndpoint?.close();
    await client.close();
  }
}

interface RunSettings {
  destUri: string;
  capabilities: CapabilitySetting[];
  parameters: Record<string, unknown>;
  json: boolean;
  intervalMs: number;
  blk: boolean;
  resume: boolean;
  postcopyAfterMs?: number;
  /** --metrics: told every status seen (start and end times, outcomes). */
  metrics?: MigrationMetrics;
}

type CancelState = 'none' | 'asking' | 'sent' | 'abandoned';

/** One `migrate`: settings, start, poll and draw until a final state, Ctrl-C, report. */
class MigrationRun {
  private passFromEvents = 0;
  private lastRam: MigrationInfo['ram'];
  /** Likewise the disks' figures: the report says how much of them went out before a failure. */
  private lastDisk: MigrationInfo['disk'];
  private startedAtMs = 0;
  /** A non-final status was seen since `migrate` (so a final one is this migration's). */
  private sawThisMigration = false;
  private wakePoll: (() => void) | undefined;
  private cancel: CancelState = 'none';
  private closePrompt: (() => void) | undefined;
  private readonly display: ProgressDisplay | undefined;
  private readonly eventsOn: boolean;
  /** The monitor's settings, for the model's levers (read once the ones given here are set). */
  private progressSettings: ProgressSettings = {};
  /** The model over this migration's snapshots (used when the source sends no x-livemig-progress, as QEMU). */
  private readonly model = new ProgressModel(() => this.progressSettings);
  private lastProgress: ProgressReport | undefined;

  constructor(
    private readonly client: QmpClient,
    private readonly settings: RunSettings,
  ) {
    this.display = settings.json ? undefined : new ProgressDisplay(process.stdout);
    this.eventsOn = settings.capabilities.some((c) => c.capability === 'events' && c.state);
  }

  async run(): Promise<number> {
    const { client, settings } = this;
    try {
      await client.execute('migrate-set-capabilities', { capabilities: settings.capabilities });
      if (Object.keys(settings.parameters).length > 0) await client.execute('migrate-set-parameters', settings.parameters);
    } catch (err) {
      if (!(err instanceof QmpError)) throw err;
      complain(`the monitor rejected the settings: ${err.message}`);
      return 2;
    }
    await this.readSettings();
    const onEvent = (e: QmpEvent): void => this.onEvent(e);
    const onSigint = (): void => this.onSigint();
    client.on('event', onEvent);
    process.on('SIGINT', onSigint);
    try {
      if (!settings.json) {
        process.stdout.write(`Migrating ${client.uri} to ${settings.destUri} (Ctrl-C to cancel)\n`);
      }
      this.startedAtMs = performance.now();
      try {
        await client.execute('migrate', { uri: settings.destUri, ...(settings.blk ? { blk: true } : {}), ...(settings.resume ? { resume: true } : {}) });
      } catch (err) {
        if (!(err instanceof QmpError)) throw err;
        return this.finish({ status: 'failed', 'error-desc': err.desc }, `migrate refused: ${err.desc}`);
      }
      const postcopyTimer =
        settings.postcopyAfterMs === undefined
          ? undefined
          : setTimeout(() => {
              client.execute('migrate-start-postcopy').catch((err: unknown) => complain(`migrate-start-postcopy: ${err instanceof QmpError ? err.desc : message(err)}`));
            }, settings.postcopyAfterMs);
      const last = await this.pollUntilFinal();
      clearTimeout(postcopyTimer);
      if (!last) {
        complain('interrupted: migrate_cancel was sent, not waiting for the migration to stop');
        return 1;
      }
      return this.finish(last);
    } finally {
      process.off('SIGINT', onSigint);
      client.off('event', onEvent);
      this.closePrompt?.();
      this.display?.stop();
    }
  }

  /** What the diagnosis's levers depend on; a monitor that does not answer leaves them generic. */
  private async readSettings(): Promise<void> {
    try {
      const params = await this.client.execute<Record<string, unknown>>('query-migrate-parameters');
      const caps = await this.client.execute<Array<{ capability: string; state: boolean }>>('query-migrate-capabilities');
      const on = (name: string): boolean => caps.some((c) => c.capability === name && c.state);
      this.progressSettings = {
        ...(typeof params['downtime-limit'] === 'number' && { downtimeLimitMs: params['downtime-limit'] }),
        ...(typeof params['max-bandwidth'] === 'number' && { maxBandwidthBytesPerSecond: params['max-bandwidth'] }),
        capabilities: { 'auto-converge': on('auto-converge'), xbzrle: on('xbzrle'), 'postcopy-ram': on('postcopy-ram') },
        copiesDisks: this.settings.blk || on('block'),
        ...(typeof params['x-livemig-peer-timeout-ms'] === 'number' && { peerTimeoutMs: params['x-livemig-peer-timeout-ms'] }),
      };
    } catch (err) {
      if (!(err instanceof QmpError)) throw err;
    }
  }

  /** The last snapshot, in a final state; undefined if the user stopped waiting for a cancel. */
  private async pollUntilFinal(): Promise<MigrationInfo | undefined> {
    for (;;) {
      const info = await this.client.execute<MigrationInfo>('query-migrate');
      if (this.abandoned()) return undefined;
      this.show(info);
      const status = info.status ?? 'none';
      const final = MIGRATION_FINAL_STATES.includes(status) || MIGRATION_WAIT_STATES.includes(status);
      if (!final && status !== 'none') this.sawThisMigration = true;
      if (final && (this.sawThisMigration || !this.eventsOn || this.elapsedMs() > STALE_STATUS_GRACE_MS)) return info;
      // After a cancel, `none` means there was nothing to cancel.
      if (status === 'none' && this.cancel === 'sent') return info;
      await this.sleep(this.settings.intervalMs);
      if (this.abandoned()) return undefined;
    }
  }

  /** Ctrl-C after the cancel was sent: stop waiting. (A method, so TypeScript does not narrow it.) */
  private abandoned(): boolean {
    return this.cancel === 'abandoned';
  }

  private show(info: MigrationInfo): void {
    this.settings.metrics?.observe(info.status, info['total-time']);
    if (info.ram) this.lastRam = info.ram;
    if (info.disk) this.lastDisk = info.disk;
    if (this.settings.json) {
      // A QEMU source has no x-livemig-progress: the same model, derived here, so scripts read one shape.
      this.lastProgress = progressOf(info, this.elapsedMs(), this.model);
      const derived = this.lastProgress && !info['x-livemig-progress'] ? { 'x-livemig-progress': { ...this.lastProgress, derived: true } } : {};
      process.stdout.write(jsonText({ ...info, ...derived }) + '\n');
      return;
    }
    const figures = figuresOf(info, this.passFromEvents, this.elapsedMs(), this.model);
    this.lastProgress = figures.progress;
    this.display!.update(figures);
  }

  private finish(info: MigrationInfo, reason?: string): number {
    // QEMU drops the RAM figures of a cancelled migration; what was sent until then still counts.
    const withRam0 = info.ram || !this.lastRam ? info : { ...info, ram: this.lastRam };
    const withRam = withRam0.disk || !this.lastDisk ? withRam0 : { ...withRam0, disk: this.lastDisk };
    const report = buildReport(withRam, this.passFromEvents, this.elapsedMs(), this.lastProgress, this.progressSettings.downtimeLimitMs);
    if (this.settings.blk) report.disksRequested = true;
    this.closePrompt?.();
    this.display?.stop();
    if (this.settings.json) process.stdout.write(jsonText(reportJson(report)) + '\n');
    else process.stdout.write(formatReport(report) + '\n');
    if (report.status === 'completed') {
      if (this.cancel === 'sent') complain('the migration completed before the cancel took effect');
      return 0;
    }
    // QEMU gives no reason for a cancel: say whose it was (ours, or another client's migrate_cancel, e.g. livemig cancel).
    const cancelledElsewhere = 'cancelled by migrate_cancel from another client of the monitor (not from here; e.g. livemig cancel)';
    const why =
      reason ??
      (this.cancel === 'sent'
        ? 'cancelled on request from here (migrate_cancel after Ctrl-C)'
        : report.errorDesc ?? (report.status === 'cancelled' ? cancelledElsewhere : 'the monitor gave no reason (no error-desc)'));
    complain(`migration ${report.status}: ${why}`);
    // Postcopy paused: the guest lives on the destination, which needs this source; the operator decides (recover or give up).
    if (report.status === 'postcopy-paused') return 4;
    // livemig's source says when it cannot know where the guest runs (the error names the command that tells).
    return info['x-livemig-error-code'] === 'outcome-unknown' ? 3 : 1;
  }

  private elapsedMs(): number {
    return performance.now() - this.startedAtMs;
  }

  private onEvent(e: QmpEvent): void {
    if (e.event === 'MIGRATION_PASS' && typeof e.data.pass === 'number') {
      this.passFromEvents = Math.max(this.passFromEvents, e.data.pass);
    } else if (e.event === 'MIGRATION' && typeof e.data.status === 'string') {
      if (MIGRATION_FINAL_STATES.includes(e.data.status)) {
        this.sawThisMigration = true; // an event after our `migrate` is about our migration
        this.wakePoll?.(); // ask now rather than at the next tick
      } else if (e.data.status !== 'none') {
        this.sawThisMigration = true;
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wakePoll = done;
    });
  }

  // ----- Ctrl-C -----

  private onSigint(): void {
    switch (this.cancel) {
      case 'none':
        if (process.stdin.isTTY) void this.ask();
        else {
          complain('interrupted: cancelling the migration (Ctrl-C again to stop waiting)');
          void this.sendCancel();
        }
        return;
      case 'asking': // (only if the terminal still sends signals while we read a key)
        this.closePrompt?.();
        void this.sendCancel();
        return;
      case 'sent':
        this.cancel = 'abandoned';
        this.wakePoll?.();
        return;
      case 'abandoned':
        return;
    }
  }

  private async ask(): Promise<void> {
    this.cancel = 'asking';
    this.display?.pause();
    const out = this.display?.tty ? process.stdout : process.stderr;
    const answer = await askKey(out, 'Cancel the migration? [y/N] ', (close) => (this.closePrompt = close));
    this.closePrompt = undefined;
    if (answer === 'closed' || this.cancel !== 'asking') return; // the migration ended meanwhile, or a signal decided
    if (answer === 'yes' || answer === 'interrupt') {
      await this.sendCancel();
    } else {
      this.cancel = 'none';
      this.display?.resume();
    }
  }

  private async sendCancel(): Promise<void> {
    this.cancel = 'sent';
    this.display?.resume();
    this.display?.note('Cancelling the migration (Ctrl-C again to stop waiting)...');
    try {
      await this.client.execute('migrate_cancel');
    } catch (err) {
      complain(`migrate_cancel: ${message(err)}`);
    }
    this.wakePoll?.();
  }
}

type Answer = 'yes' | 'no' | 'interrupt' | 'closed';

/**
 * Ask a yes/no question and read one key from the terminal in raw mode (no Enter needed).
 * In raw mode Ctrl-C arrives as the byte 0x03 instead of SIGINT: that is the "second
 * Ctrl-C", answered 'interrupt'. `onClose` receives a function that withdraws the question.
 */
function askKey(out: NodeJS.WriteStream, question: string, onClose: (close: () => void) => void): Promise<Answer> {
  const stdin = process.stdin;
  return new Promise((resolve) => {
    let open = true;
    const finish = (answer: Answer, echo: string): void => {
      if (!open) return;
      open = false;
      stdin.off('data', onData);
      if (stdin.isTTY) stdin.setRawMode(false);
      stdin.pause();
      out.write(echo + '\n');
      resolve(answer);
    };
    const onData = (data: Buffer): void => {
      const key = data.toString('utf8');
      if (key.startsWith('\x03')) finish('interrupt', '^C');
      else if (/^[yY]/.test(key)) finish('yes', 'y');
      else finish('no', 'n - continuing');
    };
    out.write(`\n${question}`);
    stdin.setRawMode(true);
    stdin.on('data', onData);
    stdin.resume();
    onClose(() => finish('closed', ''));
  });
}

// ---------- livemig query / cancel ----------

export async function queryCommand(options: { qmp: string; json?: boolean; object?: string[] }): Promise<number> {
  const client = await connectOrComplain(options.qmp, options.object);
  if (!client) return 2;
  try {
    const info = await client.execute<MigrationInfo>('query-migrate');
    process.stdout.write((options.json ? jsonText(info) : formatMigrationInfo(info)) + '\n');
    return 0;
  } catch (err) {
    complain(message(err));
    return 2;
  } finally {
    await client.close();
  }
}

/** Statuses in which no outgoing migration runs (`none`: there never was one). */
const SETTLED_STATES = new Set([...MIGRATION_FINAL_STATES, 'none']);

export async function cancelCommand(options: { qmp: string; json?: boolean; timeoutMs?: string; object?: string[] }): Promise<number> {
  let timeoutMs: number;
  try {
    timeoutMs = parseMs(options.timeoutMs ?? String(DEFAULT_CANCEL_TIMEOUT_MS), '--timeout-ms', 0);
  } catch (err) {
    complain(message(err));
    return 2;
  }
  const client = await connectOrComplain(options.qmp, options.object);
  if (!client) return 2;
  try {
    await client.execute('migrate_cancel');
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const info = await client.execute<MigrationInfo>('query-migrate');
      const status = info.status ?? 'none';
      if (SETTLED_STATES.has(status)) {
        if (options.json) process.stdout.write(jsonText(info) + '\n');
        else {
          const why = info['error-desc'] ?? (info['x-livemig-error-desc'] as string | undefined);
          process.stdout.write(`status: ${status}${why ? ` (${why})` : ''}\n`);
        }
        return 0;
      }
      if (performance.now() > deadline) {
        complain(`the migration is still ${status} ${timeoutMs} ms after migrate_cancel`);
        return 1;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } catch (err) {
    complain(message(err));
    return 2;
  } finally {
    await client.close();
  }
}
