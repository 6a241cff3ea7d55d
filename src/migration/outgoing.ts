/**
 * The source side of a live migration: QEMU's migration_thread in three phases.
 *
 *   setup     connect, every handler prepares (RAM: all pages dirty, first
 *             dirty-log sync);                                    -> setup()
 *   iterate   send dirty data while the guest runs, until what is pending fits
 *             in bandwidth x downtime-limit (the switchover policy) -> iterate()
 *   complete  stop the guest, send the rest and all device state, EOF; then
 *             hand the guest over (handover.ts)                    -> complete()
 *
 * The loop knows nothing of what a handler saves (assemble.ts builds the
 * registry), nor of the transport beyond its channel. Until the point of no
 * return (the go-ahead to a livemig destination, the EOF to a QEMU one) any
 * failure or cancel resumes the source guest; after it the guest is never
 * resumed here without the operator, who is told how to find out where it runs.
 */
import type { BlockSaveHandler } from '../block/block-handler.js';
import type { Machine } from '../machine/machine.js';
import type { RamSaveHandler, RamSaveStats } from '../ram/index.js';
import { MULTIFD_PROTOCOL_ERROR } from '../ram/multifd/packet.js';
import type { MultifdSender, MultifdSenderOptions, MultifdSendThreads } from '../ram/multifd/sender.js';
import { saveCleanup, SaveVmState, storeGlobalState } from '../savevm/index.js';
import { parseMigrationUri } from '../transport/uri.js';
import {
  MemorySink,
  MigCommand,
  StreamReader,
  StreamWriter,
  TARGET_PAGE_SIZE,
  TypedEmitter,
  unrefTimer,
  writeCommand,
  writePackaged,
  writePostcopyAdvise,
  writeRamDiscard,
  writeRecvBitmapCommand,
  yieldToEventLoop,
  type MigrationChannel,
} from '../wire/index.js';
import { defaultChannels, multifdUnavailable, type MigrationChannels } from './channels.js';
import { assembleOutgoing, type OutgoingAssembly } from './assemble.js';
import { AutoConverge } from './auto-converge.js';
import { MigrationError } from './errors.js';
import { HANDOVER_GO, OUTCOME_UNKNOWN_ADVICE, POSTCOPY_LOST_ADVICE, POSTCOPY_PAUSED_ADVICE, SourceReturnPath, type PeerKind } from './handover.js';
import { PeerWatchdog, watchSink } from './liveness.js';
import { MigrationConfig, type MigrationCapabilities, type MigrationParameters } from './config.js';
import { RateWindow } from './rate-window.js';
import { clientTlsFor, type ChannelSecurity } from './security.js';
import type { TlsClientSettings } from '../transport/tls.js';
import { decideSwitchover, INITIAL_SWITCHOVER_STATE } from './switchover.js';
import { decidePostcopyAuto, INITIAL_POSTCOPY_AUTO_STATE } from './postcopy-policy.js';
import { ACTIVE_STATES, canTransition, POSTCOPY_STATES, type MigrationStatus } from './state.js';
import { ProgressModel, type ProgressReport } from './progress-model.js';
import createDebug from 'debug';

// DEBUG=livemig:migration (states, switchover decision) and livemig:ram (one line per pass, never per page).
const log = createDebug('livemig:migration');
const logRam = createDebug('livemig:ram');

/** What the loop saw when it decided to switch over (for tests and post-mortems). */
export interface SwitchoverRecord {
  pendingBytes: number;
  ramPendingBytes: number;
  deviceStateBytes: number;
  bandwidthBytesPerMs: number;
  downtimeLimitMs: number;
  thresholdBytes: number;
  /** The policy's reason, with its numbers. */
  reason?: string;
  /** Which handover the destination spoke: livemig's held one, or QEMU's (also for one-way channels). */
  handover?: PeerKind | 'one-way';
  /** Where the downtime went, ms: stopping the guest, the END sections (last dirty pages, device state), putting the rest on the wire, the destination's load until its confirmation. */
  downtimePhasesMs?: { pause: number; complete: number; flush: number; confirm: number };
}

/** Everything known about the current (or last) outgoing migration; monitor/query-migrate.ts shapes it for QMP. */
export interface OutgoingSnapshot {
  status: MigrationStatus;
  elapsedMs: number;
  setupTimeMs?: number;
  totalTimeMs?: number;
  expectedDowntimeMs?: number;
  downtimeMs?: number;
  /** Absent during setup. */
  ram?: RamSaveStats;
  dirtyPagesRate: number;
  /** Mbit/s: the last window's while running, the average once completed. */
  mbps: number;
  pagesPerSecond: number;
  disk?: { transferredBytes: number; remainingBytes: number; totalBytes: number };
  xbzrle: boolean;
  throttlePercent: number;
  error?: MigrationError;
  /** The progress model's reading of these figures (progress-model.ts). */
  progress?: ProgressReport;
  /** After the switchover: where the downtime went, and the limit it was decided with. */
  downtimePhasesMs?: { pause: number; complete: number; flush: number; confirm: number };
  downtimeLimitMs?: number;
}

export interface OutgoingMigrationEvents {
  status: [MigrationStatus];
  pass: [number];
  stop: [];
  /** Auto-converge changed the guest's throttle: percentage, at which pass. */
  throttle: [number, number];
  /** Block migration's bulk-phase progress (0–100) as written to the stream. */
  diskProgress: [number];
  /** The switch to postcopy begins, and why (migrate-start-postcopy, or x-livemig-postcopy-auto's reason). */
  postcopy: [string];
}

export interface StartOptions {
  /** Copy the disks in this migration even if capability `block` is off (QMP `migrate` `blk`). */
  blk?: boolean;
}

const now = (): number => performance.now();
/** Postcopy: background bytes that may be on their way to the destination, unconfirmed (flow control). */
const POSTCOPY_IN_FLIGHT_BYTES = 2 << 20;
/** Postcopy: a tracked PING after this many bytes. */
const POSTCOPY_PING_EVERY_BYTES = 512 << 10;
/** The shortest period a first dirty-pages-rate is taken over (before QEMU's 1 s period has passed). */
const MIN_DIRTY_RATE_PERIOD_MS = 50;
/** Keepalive PINGs go out this often (at most a quarter of the peer timeout). */
const KEEPALIVE_MS = 1000;

/** One migration's working state; a new one per start(). */
interface Run {
  readonly uri: string;
  /** tls-creds resolved at start(): every channel of this migration runs its handshake with these. */
  readonly tls: TlsClientSettings | undefined;
  /** Fixed for the migration's life, as QEMU's. */
  readonly capabilities: Readonly<MigrationCapabilities>;
  readonly startedMs: number;
  readonly assembly: OutgoingAssembly;
  readonly watchdog: PeerWatchdog;
  channel?: MigrationChannel;
  multifd?: MultifdSender;
  out?: StreamWriter;
  save?: SaveVmState;
  returnPath?: SourceReturnPath;
  window?: RateWindow;
  deviceStateBytes: number;
  pausedByUs: boolean;
  cancelRequested: boolean;
  /** `migrate-start-postcopy` (or the auto-switch) asked for postcopy; the loop switches at its next turn. */
  postcopyRequested: boolean;
  /** Why postcopy was asked for. */
  postcopyReason?: string;
  /** Set once the destination may run the guest: from then on the source never resumes it by itself. */
  pointOfNoReturn: boolean;
  /** The first reason to give up that came from outside the loop (stall, return path). */
  abortReason?: MigrationError;
  lastKeepaliveMs: number;
  lastSyncMs: number;
  periodStartMs: number;
  periodDirtyPages: number;
  periodStartTransferredBytes: number;
  dirtyPagesRate: number;
  setupTimeMs?: number;
  totalTimeMs?: number;
  downtimeMs?: number;
  expectedDowntimeMs?: number;
  finalMbps?: number;
  error?: MigrationError;
  /** Per-pass figures and what they mean (percent, convergence, ETA, diagnosis). */
  readonly progress: ProgressModel;
  /** cancel()'s caller, as a phrase ("migrate_cancel on the QMP monitor"). */
  cancelledBy?: string;
  /** What the switchover policy last found pending (RAM, the disks' dirty chunks, device state), bytes. */
  pendingBytes?: number;
}

export interface OutgoingMigrationOptions {
  /** tls-creds' owner (src/security/): without it, a migration with tls-creds is refused. */
  security?: ChannelSecurity;
  /** How channels are opened (default: Node's transports; in a browser, browserChannels()). */
  channels?: MigrationChannels;
  /**
   * Start multifd's send threads as soon as multifd is on (default true), not
   * at migrate time; false for a machine that waits to be migrated into
   * (a destination sends nothing).
   */
  prestartThreads?: boolean;
}

export class OutgoingMigration extends TypedEmitter<OutgoingMigrationEvents> {
  private currentStatus: MigrationStatus = 'none';
  private run: Run | undefined;
  private autoConverge = new AutoConverge();
  private wakeLoop: (() => void) | undefined;
  private continueSwitchover: (() => void) | undefined;
  /** The switchover decision of the last migration. */
  switchover: SwitchoverRecord | undefined;
  /** Resolves when the current migration ends, with its final status. */
  finished: Promise<MigrationStatus> = Promise.resolve('none');

  /**
   * `config` is the machine's, shared with its incoming migration. Capabilities
   * are fixed at start(); parameters are read live, so `max-bandwidth`,
   * `downtime-limit`, the throttle and the peer timeout apply at once.
   */
  constructor(
    private readonly machine: Machine,
    readonly config: MigrationConfig = new MigrationConfig(),
    private readonly options: OutgoingMigrationOptions = {},
  ) {
    super();
    config.on('parameters', () => {
      this.wakeLoop?.();
      this.prestartMultifd();
    });
    config.on('capabilities', () => this.prestartMultifd());
    this.prestartMultifd();
  }

  /** Multifd's send threads, started while no migration runs so that the next one does not wait for them. */
  private multifdThreads: MultifdSendThreads | undefined;

  /** The send threads' options for the parameters as they are now. */
  private multifdThreadOptions(): Omit<MultifdSenderOptions, 'connect'> {
    const p = this.parameters;
    return {
      channels: p['multifd-channels'],
      blocks: this.machine.ramBlocks(),
      compression: p['multifd-compression'],
      level: p['multifd-compression'] === 'zstd' ? p['multifd-zstd-level'] : p['multifd-zlib-level'],
    };
  }

  /**
   * With multifd on and no migration running, have its send threads started
   * now (a Node worker thread takes ~30 ms to start, which would otherwise be
   * part of the next migration's setup); with other parameters, new ones; with
   * multifd off, none. Idle threads do not keep the process alive.
   */
  private prestartMultifd(): void {
    if (ACTIVE_STATES.has(this.currentStatus) || this.options.prestartThreads === false) return;
    void this.channels()
      .then((channels) => {
        if (ACTIVE_STATES.has(this.currentStatus)) return;
        const options = this.multifdThreadOptions();
        const wanted = this.config.capabilities.multifd && channels.multifd?.prestartSender !== undefined;
        if (wanted && this.multifdThreads?.matches(options)) return;
        this.multifdThreads?.dispose();
        this.multifdThreads = wanted ? channels.multifd!.prestartSender!(options) : undefined;
      })
      .catch(() => {}); // no channels here: start() says why
  }

  get parameters(): Readonly<MigrationParameters> {
    return this.config.parameters;
  }

  /** The capabilities of the running migration (as at its start), else the configured ones. */
  get capabilities(): Readonly<MigrationCapabilities> {
    return this.run && ACTIVE_STATES.has(this.currentStatus) ? this.run.capabilities : this.config.capabilities;
  }

  get status(): MigrationStatus {
    return this.currentStatus;
  }

  /** Why the last migration failed or was cancelled (a code and a sentence). */
  get error(): MigrationError | undefined {
    return this.run?.error;
  }

  private transition(to: MigrationStatus): void {
    if (!canTransition(this.currentStatus, to)) throw new Error(`bug: migration state ${this.currentStatus} -> ${to}`);
    log('status %s -> %s', this.currentStatus, to);
    this.currentStatus = to;
    this.emit('status', to);
  }

  /** The channels given, else Node's (loaded once). */
  private channels(): Promise<MigrationChannels> {
    return this.options.channels ? Promise.resolve(this.options.channels) : defaultChannels();
  }

  /** Change parameters; `max-bandwidth`, `downtime-limit` and the peer timeout apply to a running migration at once. */
  setParameters(update: Partial<Record<string, unknown>>): void {
    this.config.setParameters(update);
  }

  /** Change capabilities; refused while a migration runs, as QEMU does. */
  setCapabilities(update: Partial<Record<string, unknown>>): void {
    if (ACTIVE_STATES.has(this.currentStatus)) throw new MigrationError('refused', "There's a migration process in progress");
    this.config.setCapabilities(update);
  }

  /** Start migrating to `uri`; returns at once. `finished` tells how it ended. */
  start(uri: string, options: StartOptions = {}): void {
    if (ACTIVE_STATES.has(this.currentStatus)) throw new MigrationError('refused', "There's a migration process in progress");
    const uriKind = parseMigrationUri(uri).kind; // a bad URI is refused now, not reported later as a failed migration
    if (this.config.capabilities['postcopy-ram']) this.checkPostcopyPossible(uriKind, options);
    // So are unknown credentials, as QEMU's `migrate` refuses them.
    const tls = clientTlsFor(this.config.parameters, uri, this.options.security);
    this.switchover = undefined;
    this.autoConverge = new AutoConverge();
    const watchdog = new PeerWatchdog({
      peer: 'destination',
      timeoutMs: () => this.parameters['x-livemig-peer-timeout-ms'],
      progress: () => (this.run?.out?.bytesWritten ?? 0) + (this.run?.assembly.ram.multifdBytes ?? 0),
      onStall: (err) => this.abortRun(err),
    });
    const { capabilities, parameters } = this.config.snapshot();
    const assembly = assembleOutgoing(this.machine, {
      parameters,
      capabilities,
      copyDisks: capabilities.block || options.blk === true,
      syncDirtyLog: (ram) => this.syncDirtyLog(ram),
      onDiskProgress: (p) => this.emit('diskProgress', p),
    });
    const t = now();
    // Every field is present from the start, even those set later: one hidden
    // class for every run, so code V8 optimized in one migration (the warm-up's)
    // is not thrown away in the next because a field was added in another order.
    this.run = {
      uri,
      tls,
      capabilities,
      startedMs: t,
      assembly,
      watchdog,
      channel: undefined,
      multifd: undefined,
      out: undefined,
      save: undefined,
      returnPath: undefined,
      window: undefined,
      postcopyReason: undefined,
      abortReason: undefined,
      setupTimeMs: undefined,
      totalTimeMs: undefined,
      downtimeMs: undefined,
      finalMbps: undefined,
      error: undefined,
      cancelledBy: undefined,
      pendingBytes: undefined,
      deviceStateBytes: 0,
      pausedByUs: false,
      cancelRequested: false,
      postcopyRequested: false,
      pointOfNoReturn: false,
      lastKeepaliveMs: t,
      lastSyncMs: 0,
      periodStartMs: t,
      periodDirtyPages: 0,
      periodStartTransferredBytes: 0,
      dirtyPagesRate: 0,
      expectedDowntimeMs: this.parameters['downtime-limit'],
      progress: new ProgressModel(() => ({
        downtimeLimitMs: this.parameters['downtime-limit'],
        maxBandwidthBytesPerSecond: this.parameters['max-bandwidth'],
        capabilities,
        copiesDisks: assembly.block !== undefined,
        peerTimeoutMs: this.parameters['x-livemig-peer-timeout-ms'],
      })),
    };
    this.transition('setup');
    this.finished = this.execute(this.run);
  }

  /** Postcopy's limits, as QEMU 7.2 (multifd) and livemig (block migration, one-way channels). */
  private checkPostcopyPossible(uriKind: string, options: StartOptions): void {
    const caps = this.config.capabilities;
    if (caps.multifd) throw new MigrationError('refused', 'Postcopy is not yet compatible with multifd');
    if (caps.block || options.blk) throw new MigrationError('refused', 'postcopy-ram with block migration is not supported: the disks would have to be handed over while the guest already runs on the destination; migrate the disks first (a precopy migration with blk), or share them');
    if (uriKind !== 'tcp' && uriKind !== 'unix' && uriKind !== 'ws') throw new MigrationError('refused', `postcopy-ram needs a two-way channel (tcp: or unix:) or ws: for the destination's page requests, not ${uriKind}:`);
    // The destination runs the same guest type: one that cannot run with pages missing cannot take postcopy there either.
    if (!this.machine.postcopy) {
      throw new MigrationError('refused', `postcopy-ram is not possible with a ${this.machine.kind} guest: it cannot run on the destination with pages missing${this.machine.kind === 'v86' ? " (v86 reads and writes guest memory straight in WebAssembly memory; there is no hook for a missing page short of forking v86)" : ''}; use pre-copy (with xbzrle or auto-converge for a busy guest)`);
    }
  }

  /**
   * QMP `migrate` with `resume: true`: after a break in postcopy, reconnect to
   * the destination's `migrate-recover` address, learn which pages it has
   * (RECV_BITMAP), resend every other one, and finish. Returns at once;
   * `finished` tells how it ended (postcopy-paused again if this link breaks too).
   */
  resume(uri: string): void {
    const run = this.run;
    if (this.currentStatus !== 'postcopy-paused' || !run) throw new MigrationError('refused', "Cannot resume if there is no paused migration");
    if (!['tcp', 'unix', 'ws'].includes(parseMigrationUri(uri).kind)) throw new MigrationError('refused', 'postcopy recovery needs a two-way channel (tcp: or unix:) or ws:');
    run.abortReason = undefined;
    run.error = undefined;
    this.transition('postcopy-recover');
    this.finished = this.resumePostcopy(run, uri);
  }

  private async resumePostcopy(run: Run, uri: string): Promise<MigrationStatus> {
    run.watchdog.start();
    try {
      const { ram } = run.assembly;
      const channels = await this.channels();
      const channel = await run.watchdog.busy(() => channels.connect(uri, run.tls ? { tls: run.tls } : {}));
      run.channel = channel;
      this.throwIfStopped(run);
      if (!channel.input || !channel.output) throw new MigrationError('refused', 'postcopy recovery needs a two-way channel');
      const out = new StreamWriter(watchSink(channel.output, run.watchdog));
      run.out = out;
      run.save!.redirect(out);
      // No header: the destination goes on reading its stream where it broke off. The return path is this channel's.
      const rp = new SourceReturnPath(new StreamReader(channel.input), out, run.watchdog, (err) => this.abortRun(err));
      run.returnPath = rp;
      const blocks = this.machine.ramBlocks();
      const bitmaps = blocks.map((block) => rp.expectRecvBitmap(block.idstr, block.pageCount));
      for (const block of blocks) writeRecvBitmapCommand(out, block.idstr);
      await run.watchdog.busy(() => out.flush());
      for (const [i, bitmap] of bitmaps.entries()) ram.resumeFromReceived(blocks[i]!.idstr, await run.watchdog.busy(() => bitmap));
      this.servePageRequests(run, rp);
      writeCommand(out, MigCommand.PostcopyResume);
      await run.watchdog.busy(() => out.flush());
      await run.watchdog.busy(() => rp.resumeAcknowledged());
      this.throwIfStopped(run);
      this.transition('postcopy-active');
      await this.iteratePostcopy(run);
      await this.completePostcopy(run);
      this.transition('completed');
      return 'completed' as const;
    } catch (caught) {
      return await this.failed(run, caught);
    } finally {
      run.watchdog.stop();
    }
  }

  /**
   * QMP `migrate-start-postcopy`: switch to postcopy at the loop's next turn
   * (the guest stops here and runs on the destination; the rest of RAM follows).
   */
  startPostcopy(): void {
    if (!this.capabilities['postcopy-ram']) throw new MigrationError('refused', 'Enable postcopy with migrate_set_capability before the start of migration');
    if (this.currentStatus === 'none' || !this.run) throw new MigrationError('refused', 'Postcopy must be started after migration has been started');
    this.run.postcopyRequested = true;
    this.run.postcopyReason ??= 'migrate-start-postcopy';
    this.wakeLoop?.();
  }

  /**
   * Cancel: the source guest keeps (or resumes) running, status `cancelled`.
   * A no-op when nothing runs. Refused once the destination may run the guest
   * (the go-ahead, or with a QEMU destination the whole stream, went out).
   */
  cancel(by?: string): void {
    const run = this.run;
    if (!run || !ACTIVE_STATES.has(this.currentStatus) || this.currentStatus === 'cancelling') return;
    if (this.currentStatus === 'postcopy-paused') {
      // The operator gives up on the destination (gone, or it says it never started the guest): this copy, as at the switch, is the guest now.
      run.error = new MigrationError('postcopy-lost', `postcopy abandoned (migrate_cancel while paused): ${POSTCOPY_LOST_ADVICE}`);
      this.transition('failed');
      return;
    }
    if (run.pointOfNoReturn && POSTCOPY_STATES.has(this.currentStatus)) {
      throw new MigrationError('refused', 'cannot cancel in postcopy: the guest runs on the destination, which needs the pages only this source has; let it complete (or recover it after a break)');
    }
    if (run.pointOfNoReturn) {
      throw new MigrationError('refused', 'too late to cancel: the destination has been told to run the guest; waiting for its confirmation');
    }
    run.cancelRequested = true;
    // Who cancelled and how: a watcher of this migration (livemig migrate) did not, and says so.
    run.cancelledBy = by;
    this.transition('cancelling');
    this.abortRun(new MigrationError('cancelled', 'migration cancelled'));
  }

  /** Give up on the current run's channels (cancel, stall, broken return path); the loop notices and unwinds. */
  private abortRun(reason: MigrationError): void {
    const run = this.run;
    if (!run) return;
    run.abortReason ??= reason;
    run.channel?.abort(reason);
    run.multifd?.abort(reason);
    run.returnPath?.fail(reason);
    this.wakeLoop?.();
    this.continueSwitchover?.();
  }

  /** Leave `pre-switchover` (capability `pause-before-switchover`), as QMP `migrate-continue`. */
  continue(state: MigrationStatus): void {
    if (this.currentStatus !== state || state !== 'pre-switchover') throw new MigrationError('refused', 'Migration not in expected state: ' + this.currentStatus);
    this.continueSwitchover?.();
  }

  private throwIfStopped(run: Run): void {
    if (run.cancelRequested) throw new MigrationError('cancelled', 'migration cancelled');
    if (run.abortReason) throw run.abortReason;
  }

  /** Sleep up to `ms`, woken early by parameter changes, cancel and failures. */
  private async sleep(ms: number): Promise<void> {
    if (ms <= 0) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wakeLoop = done;
    });
    this.wakeLoop = undefined;
  }

  private keepaliveDue(run: Run): boolean {
    const interval = Math.min(KEEPALIVE_MS, this.parameters['x-livemig-peer-timeout-ms'] / 4);
    return run.returnPath !== undefined && now() - run.lastKeepaliveMs >= interval;
  }

  private async keepalive(run: Run): Promise<void> {
    run.lastKeepaliveMs = now();
    await run.watchdog.busy(() => run.returnPath!.keepalive());
  }

  /** A dirty-log sync: the machine's log into RAM's bitmap; counts a pass, drives auto-converge. */
  private async syncDirtyLog(ram: RamSaveHandler): Promise<void> {
    const run = this.run!;
    let newlyDirty = 0;
    const syncStartMs = now();
    await this.machine.syncDirtyLog((idstr, pages) => {
      newlyDirty += ram.mergeDirty(idstr, pages);
    });
    run.lastSyncMs = now() - syncStartMs;
    run.periodDirtyPages += newlyDirty;
    const t = now();
    const stats = ram.stats;
    if (t - run.periodStartMs >= 1000) {
      run.dirtyPagesRate = Math.round((run.periodDirtyPages * 1000) / (t - run.periodStartMs));
      // Not at setup's sync: throttling can start from the second pass on, as QEMU.
      if (this.capabilities['auto-converge'] && this.currentStatus === 'active') {
        const bytesDirtied = run.periodDirtyPages * TARGET_PAGE_SIZE;
        const changed = this.autoConverge.onPeriod(bytesDirtied, stats.transferredBytes - run.periodStartTransferredBytes, this.parameters);
        if (changed !== undefined) {
          this.machine.setThrottle(changed);
          this.emit('throttle', changed, stats.dirtySyncCount);
        }
      }
      run.periodStartMs = t;
      run.periodDirtyPages = 0;
      run.periodStartTransferredBytes = stats.transferredBytes;
    } else if (run.dirtyPagesRate === 0 && stats.dirtySyncCount > 1 && t - run.periodStartMs >= MIN_DIRTY_RATE_PERIOD_MS) {
      // QEMU measures over 1 s periods, so a migration shorter than that showed `dirty 0 pages/s` throughout
      // (for a guest writing 50,000 pages/s): a first figure from the shorter period until a full one ends.
      run.dirtyPagesRate = Math.round((run.periodDirtyPages * 1000) / (t - run.periodStartMs));
    }
    run.progress.recordPass({
      atMs: t - run.startedMs,
      dirtySyncCount: stats.dirtySyncCount,
      transferredBytes: stats.transferredBytes,
      pagesSent: stats.normalPages + stats.duplicatePages + stats.xbzrle.pages,
      remainingBytes: stats.remainingBytes,
      dirtiedBytes: newlyDirty * TARGET_PAGE_SIZE,
    });
    logRam('pass %d: %d bytes sent, %d remaining, %d pages newly dirty, %d normal and %d zero pages so far', stats.dirtySyncCount, stats.transferredBytes, stats.remainingBytes, newlyDirty, stats.normalPages, stats.duplicatePages);
    this.emit('pass', stats.dirtySyncCount);
  }

  private async execute(run: Run): Promise<MigrationStatus> {
    run.watchdog.start();
    try {
      await this.setup(run);
      if ((await this.iterate(run)) === 'postcopy') {
        await this.switchToPostcopy(run);
        await this.iteratePostcopy(run);
        await this.completePostcopy(run);
      } else {
        await this.complete(run);
      }
      this.transition('completed');
      return 'completed';
    } catch (caught) {
      return await this.failed(run, caught);
    } finally {
      run.watchdog.stop();
      this.machine.stopDirtyLog();
      // The throttle only serves the migration; the guest runs at full speed again.
      if (this.autoConverge.percent > 0) this.machine.setThrottle(0);
      run.channel = undefined;
      run.multifd = undefined;
      // Every handler's save cleanup (RAM: XBZRLE cache, multifd channels), through the registry.
      await saveCleanup(run.assembly.registry).catch(() => {});
    }
  }

  // ---- Phase 1: setup ----
  private async setup(run: Run): Promise<void> {
    const { ram, registry } = run.assembly;
    const multifd = this.capabilities.multifd;
    if (multifd && !['tcp', 'unix'].includes(parseMigrationUri(run.uri).kind)) throw new MigrationError('refused', multifdRefusal(run.uri));
    const channels = await this.channels();
    const noMultifd = multifd ? multifdUnavailable(channels) : undefined;
    if (noMultifd) throw new MigrationError('refused', noMultifd);
    // Dirty logging from here to the end of the migration (v86 keeps a RAM-sized shadow meanwhile).
    await this.machine.startDirtyLog();
    const connect = (): Promise<MigrationChannel> => channels.connect(run.uri, run.tls ? { tls: run.tls } : {});
    const connected = run.watchdog.busy(connect);
    // The channels' threads start now; their connections follow the main one
    // (a 7.2 destination takes the first connection as main).
    // Threads started ahead are used if they fit the parameters now (else ended).
    const prestarted = this.multifdThreads;
    this.multifdThreads = undefined;
    const opening = multifd
      ? channels.multifd!.openSender({ uri: run.uri, connect, after: connected, ...this.multifdThreadOptions(), ...(prestarted ? { prestarted } : {}) })
      : (prestarted?.dispose(), undefined);
    opening?.catch(() => {});
    const channel = await connected;
    run.channel = channel;
    if (opening) {
      const sender = await run.watchdog.busy(() => opening);
      // A stop (cancel) that came meanwhile finds it here.
      run.multifd = sender;
    }
    this.throwIfStopped(run);
    if (run.multifd) {
      ram.attachMultifd(run.multifd);
      this.throwIfStopped(run);
    }
    const out = new StreamWriter(watchSink(channel.output!, run.watchdog));
    run.out = out;
    const save = new SaveVmState(registry, out, { configuration: { machineName: this.machine.machineName } });
    run.save = save;
    await run.watchdog.busy(async () => {
      await save.writeHeader();
      const postcopy = this.capabilities['postcopy-ram'];
      // Postcopy needs the return path whatever `return-path` says (QEMU opens it for either).
      if ((this.capabilities['return-path'] || postcopy) && channel.supportsReturnPath && channel.input) {
        run.returnPath = new SourceReturnPath(new StreamReader(channel.input), out, run.watchdog, (err) => this.abortRun(err));
        run.returnPath.open();
      }
      if (postcopy) {
        if (!run.returnPath) throw new MigrationError('refused', 'postcopy-ram needs a return path, and this channel has none');
        writePostcopyAdvise(out);
      }
      run.periodStartMs = now();
      await save.setup();
    });
    run.deviceStateBytes = save.deviceStateBytesEstimate();
    run.setupTimeMs = Math.round(now() - run.startedMs);
    this.throwIfStopped(run);
    this.transition('active');
  }

  // ---- Phase 2: iterate while the guest runs (until the switchover, or postcopy is asked for) ----
  private async iterate(run: Run): Promise<'complete' | 'postcopy'> {
    const { ram } = run.assembly;
    const save = run.save!;
    const out = run.out!;
    const params = (): MigrationParameters => this.parameters;
    const pagesSent = (): number => {
      const s = ram.stats;
      return s.normalPages + s.duplicatePages + s.xbzrle.pages;
    };
    // Bytes on the wire: the main channel and the multifd channels (QEMU charges both to the rate limit).
    const sentBytes = (): number => out.bytesWritten + ram.multifdBytes;
    const window = new RateWindow(now(), sentBytes(), pagesSent());
    run.window = window;
    let idleInWindow = false; // ran out of dirty pages during this window
    let policy = INITIAL_SWITCHOVER_STATE;
    let autoPostcopy = INITIAL_POSTCOPY_AUTO_STATE;
    const deviceStateBytes = run.deviceStateBytes;
    for (;;) {
      this.throwIfStopped(run);
      if (this.keepaliveDue(run)) await this.keepalive(run);
      if (run.postcopyRequested) {
        this.emit('postcopy', run.postcopyReason ?? 'migrate-start-postcopy');
        return 'postcopy';
      }
      // When to stop the guest is switchover.ts's pure decision; here are its inputs and its I/O.
      const downtimeLimitMs = params()['downtime-limit'];
      const link = { deviceStateBytes, bandwidthBytesPerMs: window.estimateBytesPerMs(now(), sentBytes()), downtimeLimitMs, lastSyncCostMs: run.lastSyncMs };
      let step = decideSwitchover({ ...link, ramPendingBytes: await save.pendingBytes(false), exact: false, nowMs: now() }, policy);
      if (step.decision === 'sync-and-check') {
        // What the destination has not loaded yet (records still in socket buffers: for
        // zero pages, hundreds of thousands) would be loaded inside the pause. Let it
        // catch up while the guest runs: QEMU's PING is answered once all before it is loaded.
        if (step.waitForDestination && run.returnPath) {
          await run.returnPath.ping(downtimeLimitMs);
          run.lastKeepaliveMs = now();
        }
        step = decideSwitchover({ ...link, ramPendingBytes: await save.pendingBytes(true), exact: true, nowMs: now() }, step.state);
        if (step.decision !== 'switchover') log('no switchover yet: %s', step.reason);
        if (step.decision !== 'switchover' && this.capabilities['postcopy-ram'] && params()['x-livemig-postcopy-auto']) {
          // Pre-copy failed its check again: is it still getting anywhere? (postcopy-policy.ts)
          const auto = decidePostcopyAuto({ pendingBytes: step.pendingBytes, thresholdBytes: step.thresholdBytes, completedRounds: ram.stats.completedRounds }, autoPostcopy);
          autoPostcopy = auto.state;
          if (auto.switchToPostcopy) {
            run.postcopyRequested = true;
            run.postcopyReason = auto.reason;
          }
        }
      }
      policy = step.state;
      run.pendingBytes = step.pendingBytes;
      if (step.decision === 'switchover') {
        this.switchover = { pendingBytes: step.pendingBytes, ramPendingBytes: step.ramPendingBytes, deviceStateBytes, bandwidthBytesPerMs: link.bandwidthBytesPerMs, downtimeLimitMs, thresholdBytes: step.thresholdBytes, reason: step.reason };
        log('switchover (%s): %d bytes pending (RAM %d, devices %d) <= threshold %d = %d bytes/ms x downtime-limit %d ms', step.reason, step.pendingBytes, step.ramPendingBytes, deviceStateBytes, step.thresholdBytes, Math.round(link.bandwidthBytesPerMs), downtimeLimitMs);
        return 'complete';
      }
      const pendingBytes = step.pendingBytes;
      const allSent = await run.watchdog.busy(() =>
        save.iterate(() => run.cancelRequested || run.abortReason !== undefined || window.overBudget(sentBytes(), params()['max-bandwidth'])),
      );
      idleInWindow ||= allSent;
      const t = now();
      if (window.maybeClose(t, sentBytes(), pagesSent(), idleInWindow, params()['max-bandwidth'])) {
        idleInWindow = false;
        if (window.bandwidthBytesPerMs > 0) run.expectedDowntimeMs = Math.round(pendingBytes / window.bandwidthBytesPerMs);
      } else if (window.overBudget(sentBytes(), params()['max-bandwidth'])) {
        await this.sleep(window.msUntilEnd(t)); // rate limit: wait for the next window
      } else if (allSent) {
        // Nothing dirty right now and no bandwidth figure yet: let the guest
        // run a little instead of spinning out empty sections.
        await this.sleep(Math.min(5, window.msUntilEnd(t)));
      }
      await yieldToEventLoop(); // let the return path, timers and monitors run
    }
  }

  // ---- Phase 3: complete with the guest stopped, then hand over ----
  private async complete(run: Run): Promise<void> {
    const { globalState } = run.assembly;
    const save = run.save!;
    const out = run.out!;
    const rp = run.returnPath;
    // Which handover: a livemig destination accepted the held one in setup; a QEMU one echoed the offer.
    const handover: PeerKind | 'one-way' = rp ? await run.watchdog.busy(() => rp.peerKind()) : 'one-way';
    this.throwIfStopped(run);
    const { downtimeStartMs, wasRunning } = await this.stopGuest(run);
    if (this.capabilities['pause-before-switchover']) {
      this.transition('pre-switchover');
      await this.waitForContinue(run);
    }
    this.transition('device');
    const pausedMs = now();
    storeGlobalState(globalState, wasRunning ? 'running' : 'paused');
    await run.watchdog.busy(() => save.completePrecopy());
    this.throwIfStopped(run);
    const completedMs = now();
    let flushedMs: number;
    if (handover === 'livemig') {
      // The destination holds the loaded guest until our go-ahead: up to here, cancel resumes the guest here.
      await rp!.loaded();
      flushedMs = now();
      this.throwIfStopped(run);
      run.pointOfNoReturn = true;
      await run.watchdog.busy(() => rp!.sendGo());
      await this.expectShut(rp!);
      // The destination learns that its confirmation arrived (else it warns that we may not know).
      // The outcome is known now: a failure to say so changes nothing here.
      rp!.acknowledge();
      await out.close().catch(() => {});
    } else {
      // A QEMU destination (or a one-way channel) starts the guest once it has the EOF: no going back.
      run.pointOfNoReturn = true;
      await run.watchdog.busy(() => out.close());
      flushedMs = now();
      if (rp) await this.expectShut(rp);
    }
    run.downtimeMs = Math.round(now() - downtimeStartMs);
    if (this.switchover) {
      const ms = (x: number): number => Math.round(x * 10) / 10;
      this.switchover.handover = handover;
      this.switchover.downtimePhasesMs = { pause: ms(pausedMs - downtimeStartMs), complete: ms(completedMs - pausedMs), flush: ms(flushedMs - completedMs), confirm: ms(now() - flushedMs) };
    }
    await this.closeCompleted(run);
  }

  /** The destination confirmed: final figures, and the channel and return path wound down. */
  private async closeCompleted(run: Run): Promise<void> {
    run.totalTimeMs = Math.round(now() - run.startedMs);
    run.finalMbps = (run.assembly.ram.stats.transferredBytes * 8) / (run.totalTimeMs / 1000) / 1e6;
    run.expectedDowntimeMs = undefined;
    await run.channel!.close().catch(() => {});
    await run.returnPath?.done;
  }

  // ---- Postcopy, phase 3a: stop the guest, send the device state, let the destination run it ----
  private async switchToPostcopy(run: Run): Promise<void> {
    const { ram, globalState } = run.assembly;
    const save = run.save!;
    const out = run.out!;
    const rp = run.returnPath!;
    // A livemig destination holds the guest until our go-ahead; a QEMU one runs it once it has the package.
    const handover = await run.watchdog.busy(() => rp.peerKind());
    this.throwIfStopped(run);
    this.transition('postcopy-active'); // before the guest stops, as QEMU
    const { downtimeStartMs, wasRunning } = await this.stopGuest(run);
    storeGlobalState(globalState, wasRunning ? 'running' : 'paused');
    // The last sync: what is dirty now is all the destination still needs (and must drop what it has of it).
    await ram.syncDirty();
    const pendingBytes = ram.dirtyPageCount * TARGET_PAGE_SIZE;
    for (const { idstr, ranges } of ram.startPostcopy()) writeRamDiscard(out, idstr, ranges);
    this.servePageRequests(run, rp);
    rp.sendPing(2);
    // The package: LISTEN, every device's state, RUN; loaded by the destination as one piece.
    const pkgSink = new MemorySink();
    const pkg = new StreamWriter(pkgSink);
    writeCommand(pkg, MigCommand.PostcopyListen);
    await save.savePostcopyDeviceState(pkg);
    writeCommand(pkg, MigCommand.Ping, Uint8Array.of(0, 0, 0, 3));
    writeCommand(pkg, MigCommand.PostcopyRun);
    await pkg.flush();
    const packageBytes = pkgSink.bytes();
    writePackaged(out, packageBytes);
    if (handover === 'livemig') {
      await run.watchdog.busy(() => out.flush());
      // LOADED: the destination has the device state and holds the guest; until our go-ahead a failure resumes it here.
      await run.watchdog.busy(() => rp.loaded());
      this.throwIfStopped(run);
      run.pointOfNoReturn = true;
      rp.sendPing(HANDOVER_GO);
    } else {
      // A QEMU destination runs the guest once it has the package: no going back from here.
      run.pointOfNoReturn = true;
      rp.sendPing(4);
    }
    await run.watchdog.busy(() => out.flush());
    // QEMU's postcopy downtime: from stopping the guest to the device state sent.
    run.downtimeMs = Math.round(now() - downtimeStartMs);
    this.switchover = {
      pendingBytes,
      ramPendingBytes: pendingBytes,
      deviceStateBytes: packageBytes.length,
      bandwidthBytesPerMs: run.window?.bandwidthBytesPerMs ?? 0,
      downtimeLimitMs: this.parameters['downtime-limit'],
      thresholdBytes: 0,
      reason: `postcopy (${run.postcopyReason ?? 'migrate-start-postcopy'}): ${pendingBytes} bytes of RAM follow while the guest runs on the destination`,
      handover,
    };
  }

  /** The destination's page requests go to RAM's queue and wake the loop (they pass every limit). */
  private servePageRequests(run: Run, rp: SourceReturnPath): void {
    rp.onPageRequest = (idstr, startBytes, lengthBytes) => {
      run.assembly.ram.requestPages(idstr, startBytes, lengthBytes);
      this.wakeLoop?.();
    };
  }

  // ---- Postcopy, phase 3b: the rest of RAM while the guest runs there; its requests first ----
  private async iteratePostcopy(run: Run): Promise<void> {
    const { ram } = run.assembly;
    const save = run.save!;
    const out = run.out!;
    const rp = run.returnPath!;
    const sentBytes = (): number => out.bytesWritten;
    const pagesSent = (): number => ram.stats.normalPages + ram.stats.duplicatePages;
    const window = new RateWindow(now(), sentBytes(), pagesSent());
    run.window = window;
    const limit = (): number => this.parameters['max-postcopy-bandwidth'];
    const stopped = (): boolean => run.cancelRequested || run.abortReason !== undefined;
    // Flow control: a requested page queues behind every background byte already in the socket buffers,
    // so keep at most POSTCOPY_IN_FLIGHT_BYTES that the destination has not confirmed loading (a PING every
    // POSTCOPY_PING_EVERY_BYTES; its PONG says everything before it is loaded). QEMU 8 uses a second channel instead.
    let loadedBytes = sentBytes();
    let lastPingBytes = sentBytes();
    let pingsInFlight = 0;
    const windowFull = (): boolean => sentBytes() - loadedBytes >= POSTCOPY_IN_FLIGHT_BYTES;
    while (ram.dirtyPageCount > 0) {
      this.throwIfStopped(run);
      if (this.keepaliveDue(run)) await this.keepalive(run);
      // Requested pages go out whatever the limits (saveIterate sends them first and flushes each).
      await run.watchdog.busy(() =>
        save.iterate(() => stopped() || (!ram.hasPageRequests && (windowFull() || sentBytes() - lastPingBytes >= POSTCOPY_PING_EVERY_BYTES || window.overBudget(sentBytes(), limit())))),
      );
      // A PING per POSTCOPY_PING_EVERY_BYTES; one more only when none is out to confirm the tail (no storm of PINGs for empty sections).
      if (sentBytes() - lastPingBytes >= POSTCOPY_PING_EVERY_BYTES || (windowFull() && pingsInFlight === 0 && lastPingBytes < sentBytes())) {
        const at = sentBytes();
        lastPingBytes = at;
        pingsInFlight++;
        void rp.sendTrackedPing(() => {
          pingsInFlight--;
          loadedBytes = Math.max(loadedBytes, at);
          this.wakeLoop?.();
        });
        run.lastKeepaliveMs = now();
        await run.watchdog.busy(() => out.flush());
      }
      const t = now();
      if (ram.hasPageRequests) continue;
      if (windowFull()) await this.sleep(50); // woken by the PONG, or at once by a page request
      else if (!window.maybeClose(t, sentBytes(), pagesSent(), false, limit()) && window.overBudget(sentBytes(), limit())) await this.sleep(window.msUntilEnd(t));
      await yieldToEventLoop(); // the return path's requests come in here
    }
  }

  // ---- Postcopy, phase 3c: nothing left; END, EOF and the destination's confirmation ----
  private async completePostcopy(run: Run): Promise<void> {
    const save = run.save!;
    const out = run.out!;
    const rp = run.returnPath!;
    await run.watchdog.busy(() => save.completePostcopy());
    await this.expectShut(rp);
    if (this.switchover?.handover === 'livemig') rp.acknowledge();
    await out.close().catch(() => {});
    await this.closeCompleted(run);
  }

  /** The downtime starts: stop the guest (if it runs) and say so. */
  private async stopGuest(run: Run): Promise<{ downtimeStartMs: number; wasRunning: boolean }> {
    const downtimeStartMs = now();
    const wasRunning = this.machine.running;
    if (wasRunning) {
      await this.machine.pause();
      run.pausedByUs = true;
    }
    this.emit('stop');
    return { downtimeStartMs, wasRunning };
  }

  private async expectShut(rp: SourceReturnPath): Promise<void> {
    const value = await rp.shut();
    if (value !== 0) throw new MigrationError('destination-failed', `the destination could not load the stream (SHUT ${value})`);
  }

  /** `pre-switchover`: wait for migrate-continue (or cancel), keeping the destination's watchdog fed. */
  private async waitForContinue(run: Run): Promise<void> {
    let continued = false;
    const resumed = new Promise<void>((resolve) => {
      this.continueSwitchover = () => {
        continued = true;
        resolve();
      };
    });
    try {
      while (!continued) {
        this.throwIfStopped(run);
        if (this.keepaliveDue(run)) await this.keepalive(run);
        await Promise.race([resumed, new Promise((r) => unrefTimer(setTimeout(r, 100)))]);
      }
    } finally {
      this.continueSwitchover = undefined;
    }
    this.throwIfStopped(run);
  }

  /** The run ended without completing: decide where the guest stays, and say why. */
  private async failed(run: Run, caught: unknown): Promise<MigrationStatus> {
    // The loop's own error is often a consequence (a write failing on an aborted channel); the first reason is the one to tell.
    let err = run.abortReason ?? MigrationError.from(caught);
    const rp = run.returnPath;
    if (rp && !run.cancelRequested && err.code !== 'destination-failed') {
      // A destination that rejects the stream says so (SHUT 1) and closes; our write
      // may fail first. Give its message a moment to arrive: it is the reason.
      await Promise.race([rp.done, new Promise((r) => unrefTimer(setTimeout(r, 500)))]);
      if (rp.failed?.code === 'destination-failed') err = rp.failed;
    }
    if (err.code === 'peer-closed' && !rp?.heardFromPeer && !run.pointOfNoReturn) {
      // All a source sees of a destination that refuses it before reading: a closed connection.
      const why = run.tls
        ? 'after the TLS handshake, before answering: it may not trust our certificate or not authorize our identity (tls-authz); its log says why'
        : 'before answering; if it expects TLS, set tls-creds here too';
      err = new MigrationError('peer-closed', `${err.message} (the destination closed the connection ${why})`, { cause: err });
    }
    run.channel?.abort(err);
    run.multifd?.abort(err);
    await rp?.done.catch(() => {});
    run.totalTimeMs = Math.round(now() - run.startedMs);
    if (run.pointOfNoReturn && POSTCOPY_STATES.has(this.currentStatus)) {
      if (err.code === 'destination-failed') {
        // It ran the guest and then failed: never resume our older copy without the operator.
        run.error = new MigrationError('postcopy-lost', `${err.message}; ${POSTCOPY_LOST_ADVICE}`, { cause: err });
        if (this.currentStatus !== 'postcopy-paused') this.transition('postcopy-paused');
        this.transition('failed');
        return 'failed';
      }
      // The guest runs on the destination and waits for pages only we have: neither copy is whole.
      run.error = new MigrationError('postcopy-paused', `${err.message}; ${POSTCOPY_PAUSED_ADVICE}`, { cause: err });
      if (this.currentStatus !== 'postcopy-paused') this.transition('postcopy-paused');
      return 'postcopy-paused';
    }
    // A destination that said it failed does not run the guest, whatever the point reached.
    const guestIsHere = !run.pointOfNoReturn || err.code === 'destination-failed';
    if (run.pausedByUs && guestIsHere) this.machine.resume();
    if (run.cancelRequested && guestIsHere) {
      run.error = new MigrationError('cancelled', run.cancelledBy ? `migration cancelled by ${run.cancelledBy}` : 'migration cancelled');
      this.transition('cancelled');
      return 'cancelled';
    }
    run.error = guestIsHere ? err : new MigrationError('outcome-unknown', `${err.message}; ${OUTCOME_UNKNOWN_ADVICE}`, { cause: err });
    this.transition('failed');
    return 'failed';
  }

  /** The current (or last) migration's figures. */
  snapshot(): OutgoingSnapshot {
    const run = this.run;
    const status = this.currentStatus;
    if (!run) return { status, elapsedMs: 0, dirtyPagesRate: 0, mbps: 0, pagesPerSecond: 0, xbzrle: this.capabilities.xbzrle, throttlePercent: 0 };
    const done = status === 'completed';
    const block: BlockSaveHandler | undefined = run.assembly.block;
    const snap: OutgoingSnapshot = {
      status,
      elapsedMs: Math.round(now() - run.startedMs),
      dirtyPagesRate: done ? 0 : run.dirtyPagesRate,
      mbps: done && run.finalMbps !== undefined ? run.finalMbps : (run.window?.mbps ?? 0),
      pagesPerSecond: Math.round(run.window?.pagesPerSecond ?? 0),
      xbzrle: this.capabilities.xbzrle,
      throttlePercent: ACTIVE_STATES.has(status) ? this.autoConverge.percent : 0,
    };
    if (run.setupTimeMs !== undefined) snap.setupTimeMs = run.setupTimeMs;
    if (run.totalTimeMs !== undefined) snap.totalTimeMs = run.totalTimeMs;
    if (run.expectedDowntimeMs !== undefined && !done) snap.expectedDowntimeMs = run.expectedDowntimeMs;
    if (done && run.downtimeMs !== undefined) snap.downtimeMs = run.downtimeMs;
    if (status !== 'setup') {
      snap.ram = run.assembly.ram.stats;
      if (block) snap.disk = { transferredBytes: block.bytesTransferred, remainingBytes: block.bytesRemaining, totalBytes: block.bytesTotal };
    }
    if (run.error) snap.error = run.error;
    if (this.switchover?.downtimePhasesMs) snap.downtimePhasesMs = this.switchover.downtimePhasesMs;
    snap.downtimeLimitMs = this.switchover?.downtimeLimitMs ?? this.parameters['downtime-limit'];
    snap.progress = run.progress.observe({
      status,
      elapsedMs: snap.elapsedMs,
      ...(snap.ram && {
        ram: {
          totalBytes: snap.ram.totalBytes,
          remainingBytes: done ? 0 : snap.ram.remainingBytes,
          transferredBytes: snap.ram.transferredBytes,
          pagesSent: snap.ram.normalPages + snap.ram.duplicatePages + snap.ram.xbzrle.pages,
          dirtySyncCount: snap.ram.dirtySyncCount,
          pagesPerSecond: snap.pagesPerSecond,
          mbps: snap.mbps,
          dirtyPagesRate: snap.dirtyPagesRate,
        },
      }),
      ...(snap.disk && { disk: snap.disk }),
      ...(run.pendingBytes !== undefined && status === 'active' && { pendingBytes: run.pendingBytes }),
      throttlePercent: snap.throttlePercent,
    });
    return snap;
  }
}

/** QEMU's words for multifd over a protocol without it; for ws: also why (livemig's own transport). */
function multifdRefusal(uri: string): string {
  return parseMigrationUri(uri).kind === 'ws' ? `${MULTIFD_PROTOCOL_ERROR} (ws: carries one WebSocket; multifd needs tcp: or unix:)` : MULTIFD_PROTOCOL_ERROR;
}
