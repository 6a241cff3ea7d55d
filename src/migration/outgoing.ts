/**
 * The source side of a live migration: QEMU's migration_thread in three phases.
 *
 *   setup     every handler prepares (RAM: all pages dirty, first dirty-log sync);
 *   iterate   send dirty data while the guest runs, until what is pending fits
 *             in bandwidth x downtime-limit (the threshold);
 *   complete  stop the guest, send the rest and all device state, EOF; then wait
 *             for the destination to say it runs the guest (return path).
 *
 * The loop knows nothing of what a handler saves, nor of the transport beyond
 * its channel. Failure or cancel at any point before the destination can have
 * taken over leaves the source guest running as it was.
 */
import { EventEmitter } from 'node:events';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { BLOCK_SECTION_IDSTR, BLOCK_SECTION_VERSION, BlockSaveHandler, DISK_MANIFEST_IDSTR, DISK_MANIFEST_VERSION, DiskManifestSaveHandler } from '../block/index.js';
import type { Machine } from '../machine/machine.js';
import { RAM_IDSTR, RAM_SECTION_VERSION, RamSaveHandler, type RamSaveStats } from '../ram/index.js';
import { createGlobalState, globalStateVmsd, SaveStateRegistry, SaveVmState, storeGlobalState } from '../savevm/index.js';
import { MULTIFD_PROTOCOL_ERROR, MultifdSender } from '../ram/multifd/index.js';
import { connectOutgoing, parseMigrationUri, type MigrationChannel } from '../transport/index.js';
import { MigCommand, readReturnPathMessage, StreamReader, StreamWriter, TARGET_PAGE_SIZE, writeCommand } from '../wire/index.js';
import {
  applyCapabilities,
  applyParameters,
  DEFAULT_CAPABILITIES,
  DEFAULT_PARAMETERS,
  type MigrationCapabilities,
  type MigrationParameters,
} from './parameters.js';
import { AutoConverge } from './auto-converge.js';
import { RateWindow } from './rate-window.js';
import { ACTIVE_STATES, canTransition, type MigrationStatus } from './state.js';

/** What the loop saw when it decided to switch over (for tests and post-mortems). */
export interface SwitchoverRecord {
  pendingBytes: number;
  ramPendingBytes: number;
  deviceStateBytes: number;
  bandwidthBytesPerMs: number;
  downtimeLimitMs: number;
  thresholdBytes: number;
  /** Where the downtime went, ms: stopping the guest, the END sections (last dirty pages, device state), putting the rest on the wire, the destination's load until its confirmation. */
  downtimePhasesMs?: { pause: number; complete: number; flush: number; confirm: number };
}

/** `query-migrate` as QEMU shapes it (only the fields livemig has). */
export interface MigrationInfo {
  status?: MigrationStatus;
  'setup-time'?: number;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  ram?: {
    transferred: number;
    remaining: number;
    total: number;
    duplicate: number;
    skipped: number;
    normal: number;
    'normal-bytes': number;
    'dirty-pages-rate': number;
    mbps: number;
    'dirty-sync-count': number;
    'page-size': number;
    'pages-per-second': number;
    'precopy-bytes': number;
    'downtime-bytes': number;
    'postcopy-bytes': number;
    'multifd-bytes': number;
    'postcopy-requests': number;
  };
  /** Block migration, as QEMU 7.2's `disk`: bytes of the bulk phase sent, still to send, and the disks' total. */
  disk?: { transferred: number; remaining: number; total: number };
  'xbzrle-cache'?: { 'cache-size': number; bytes: number; pages: number; 'cache-miss': number; overflow: number };
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
}

export interface OutgoingMigrationEvents {
  status: [MigrationStatus];
  pass: [number];
  stop: [];
  /** Auto-converge changed the guest's throttle: percentage, at which pass. */
  throttle: [number, number];
  /** Block migration's bulk-phase progress (0–100) as written to the stream. */
  diskProgress: [number];
}

export interface StartOptions {
  /** Copy the disks in this migration even if capability `block` is off (QMP `migrate` `blk`). */
  blk?: boolean;
}

class Cancelled extends Error {}

const now = (): number => performance.now();
/** What is left counts as drained when it would take this long to send (the pass is over, bar a straggler). */
const DRAINED_MS = 2;

export class OutgoingMigration extends EventEmitter<OutgoingMigrationEvents> {
  private currentStatus: MigrationStatus = 'none';
  parameters: MigrationParameters = { ...DEFAULT_PARAMETERS };
  capabilities: MigrationCapabilities = { ...DEFAULT_CAPABILITIES };

  // Per-migration state, reset by start().
  private startedMs = 0;
  private setupTimeMs: number | undefined;
  private totalTimeMs: number | undefined;
  private downtimeMs: number | undefined;
  private expectedDowntimeMs: number | undefined;
  private errorDesc: string | undefined;
  private ram: RamSaveHandler | undefined;
  private block: BlockSaveHandler | undefined;
  private window: RateWindow | undefined;
  private dirtyPagesRate = 0;
  private periodStartMs = 0;
  private periodDirtyPages = 0;
  private periodStartTransferredBytes = 0;
  private autoConverge = new AutoConverge();
  private finalMbps: number | undefined;
  private channel: MigrationChannel | undefined;
  private multifd: MultifdSender | undefined;
  private cancelRequested = false;
  private pointOfNoReturn = false;
  private returnPathFailure: Error | undefined;
  private wakeLoop: (() => void) | undefined;
  private continueSwitchover: (() => void) | undefined;
  /** How long the last dirty-log sync took. */
  private lastSyncMs = 0;
  /** PINGs in flight: value -> resolve on its PONG. */
  private readonly pongWaiters = new Map<number, () => void>();
  private pingValue = 1;
  /** The switchover decision of the last migration. */
  switchover: SwitchoverRecord | undefined;
  /** Resolves when the current migration ends, with its final status. */
  finished: Promise<MigrationStatus> = Promise.resolve('none');

  constructor(private readonly machine: Machine) {
    super();
  }

  get status(): MigrationStatus {
    return this.currentStatus;
  }

  private transition(to: MigrationStatus): void {
    if (!canTransition(this.currentStatus, to)) throw new Error(`bug: migration state ${this.currentStatus} -> ${to}`);
    this.currentStatus = to;
    this.emit('status', to);
  }

  /** Change parameters; `max-bandwidth` and `downtime-limit` apply to a running migration at once. */
  setParameters(update: Partial<Record<string, unknown>>): void {
    this.parameters = applyParameters(this.parameters, update);
    this.wakeLoop?.();
  }

  /** Change capabilities; refused while a migration runs, as QEMU does. */
  setCapabilities(update: Partial<Record<string, unknown>>): void {
    if (ACTIVE_STATES.has(this.currentStatus)) throw new Error('There\'s a migration process in progress');
    this.capabilities = applyCapabilities(this.capabilities, update);
  }

  /** Start migrating to `uri`; returns at once. `finished` tells how it ended. */
  start(uri: string, options: StartOptions = {}): void {
    if (ACTIVE_STATES.has(this.currentStatus)) throw new Error("There's a migration process in progress");
    this.startedMs = now();
    this.setupTimeMs = this.totalTimeMs = this.downtimeMs = this.errorDesc = undefined;
    this.expectedDowntimeMs = this.parameters['downtime-limit'];
    this.cancelRequested = this.pointOfNoReturn = false;
    this.returnPathFailure = undefined;
    this.switchover = undefined;
    this.lastSyncMs = 0;
    this.pongWaiters.clear();
    this.finalMbps = undefined;
    this.dirtyPagesRate = 0;
    this.block = undefined;
    this.transition('setup');
    this.finished = this.run(uri, this.capabilities.block || options.blk === true);
  }

  /**
   * Cancel: the source guest keeps (or resumes) running, status `cancelled`.
   * A no-op when nothing runs. Refused once the whole state has been handed to
   * the destination, which may already run the guest.
   */
  cancel(): void {
    if (!ACTIVE_STATES.has(this.currentStatus) || this.currentStatus === 'cancelling') return;
    if (this.pointOfNoReturn) throw new Error('too late to cancel: the destination has received the whole state');
    this.cancelRequested = true;
    this.transition('cancelling');
    this.channel?.abort(new Error('migration cancelled'));
    this.multifd?.abort(new Error('migration cancelled'));
    this.wakeLoop?.();
    this.continueSwitchover?.();
  }

  /** Leave `pre-switchover` (capability `pause-before-switchover`), as QMP `migrate-continue`. */
  continue(state: MigrationStatus): void {
    if (this.currentStatus !== state || state !== 'pre-switchover') throw new Error('Migration not in expected state: ' + this.currentStatus);
    this.continueSwitchover?.();
  }

  private throwIfStopped(): void {
    if (this.cancelRequested) throw new Cancelled('migration cancelled');
    if (this.returnPathFailure) throw this.returnPathFailure;
  }

  /** Sleep up to `ms`, woken early by parameter changes and cancel. */
  private async pause(ms: number): Promise<void> {
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

  /** PING the destination and wait (at most `timeoutMs`) for its PONG: everything sent so far is loaded. */
  private async waitForDestination(out: StreamWriter, timeoutMs: number): Promise<void> {
    const value = ++this.pingValue;
    const payload = new Uint8Array(4);
    new DataView(payload.buffer).setUint32(0, value);
    writeCommand(out, MigCommand.Ping, payload);
    await out.flush();
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.pongWaiters.set(value, resolve);
      timer = setTimeout(resolve, timeoutMs);
      this.wakeLoop = resolve; // cancel and a failed return path end the wait early
    });
    clearTimeout(timer);
    this.pongWaiters.delete(value);
    this.wakeLoop = undefined;
    this.throwIfStopped();
  }

  /** A dirty-log sync: the machine's log into RAM's bitmap; counts a pass. */
  private async syncDirtyLog(ram: RamSaveHandler): Promise<void> {
    let newlyDirty = 0;
    const syncStartMs = now();
    await this.machine.syncDirtyLog((idstr, pages) => {
      newlyDirty += ram.mergeDirty(idstr, pages);
    });
    this.lastSyncMs = now() - syncStartMs;
    this.periodDirtyPages += newlyDirty;
    const t = now();
    const stats = ram.stats;
    if (t - this.periodStartMs >= 1000) {
      this.dirtyPagesRate = Math.round((this.periodDirtyPages * 1000) / (t - this.periodStartMs));
      // Not at setup's sync: throttling can start from the second pass on, as QEMU.
      if (this.capabilities['auto-converge'] && this.currentStatus === 'active') {
        const bytesDirtied = this.periodDirtyPages * TARGET_PAGE_SIZE;
        const changed = this.autoConverge.onPeriod(bytesDirtied, stats.transferredBytes - this.periodStartTransferredBytes, this.parameters);
        if (changed !== undefined) {
          this.machine.setThrottle(changed);
          this.emit('throttle', changed, stats.dirtySyncCount);
        }
      }
      this.periodStartMs = t;
      this.periodDirtyPages = 0;
      this.periodStartTransferredBytes = stats.transferredBytes;
    }
    this.emit('pass', stats.dirtySyncCount);
  }

  private async run(uri: string, blockEnabled: boolean): Promise<MigrationStatus> {
    const machine = this.machine;
    const params = (): MigrationParameters => this.parameters;
    const ram = new RamSaveHandler(machine.ramBlocks(), {
      xbzrle: this.capabilities.xbzrle,
      xbzrleCacheBytes: this.parameters['xbzrle-cache-size'],
      syncDirtyLog: (h) => this.syncDirtyLog(h),
    });
    this.ram = ram;
    const registry = new SaveStateRegistry();
    const disks = blockEnabled ? (machine.blockDevices?.() ?? []) : [];
    if (disks.length > 0) {
      // Before RAM, as QEMU registers them: disks go first, RAM waits for their bulk phase.
      registry.register({ idstr: DISK_MANIFEST_IDSTR, version: DISK_MANIFEST_VERSION, handlers: new DiskManifestSaveHandler(disks) });
      this.block = new BlockSaveHandler(disks, { zeroBlocks: this.capabilities['zero-blocks'], onProgress: (p) => this.emit('diskProgress', p) });
      registry.register({ idstr: BLOCK_SECTION_IDSTR, version: BLOCK_SECTION_VERSION, handlers: this.block });
    }
    registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram });
    machine.registerDevices(registry);
    const globalState = createGlobalState();
    registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: globalState });

    let pausedByUs = false;
    let returnPath: Promise<void> | undefined;
    let shut: Promise<number> | undefined;
    try {
      // ---- Phase 1: setup ----
      const multifd = this.capabilities.multifd;
      if (multifd && !['tcp', 'unix'].includes(parseMigrationUri(uri).kind)) throw new Error(MULTIFD_PROTOCOL_ERROR);
      const channel = await connectOutgoing(uri);
      this.channel = channel;
      this.throwIfStopped();
      if (multifd) {
        // After the main channel is connected (a 7.2 destination takes the first connection as main).
        const p = params();
        this.multifd = await MultifdSender.open({
          uri,
          channels: p['multifd-channels'],
          blocks: machine.ramBlocks(),
          compression: p['multifd-compression'],
          level: p['multifd-compression'] === 'zstd' ? p['multifd-zstd-level'] : p['multifd-zlib-level'],
        });
        ram.attachMultifd(this.multifd);
        this.throwIfStopped();
      }
      const out = new StreamWriter(channel.output!);
      const save = new SaveVmState(registry, out, { configuration: { machineName: machine.machineName } });
      await save.writeHeader();
      if (this.capabilities['return-path'] && channel.supportsReturnPath && channel.input) {
        writeCommand(out, MigCommand.OpenReturnPath);
        writeCommand(out, MigCommand.Ping, Uint8Array.of(0, 0, 0, 1));
        ({ returnPath, shut } = this.listenReturnPath(new StreamReader(channel.input)));
      }
      this.periodStartMs = now();
      this.periodDirtyPages = 0;
      this.periodStartTransferredBytes = 0;
      this.autoConverge = new AutoConverge();
      await save.setup();
      const deviceStateBytes = save.deviceStateBytesEstimate();
      this.setupTimeMs = Math.round(now() - this.startedMs);
      this.throwIfStopped();
      this.transition('active');

      // ---- Phase 2: iterate while the guest runs ----
      const pagesSent = (): number => {
        const s = ram.stats;
        return s.normalPages + s.duplicatePages + s.xbzrle.pages;
      };
      // Bytes on the wire: the main channel and the multifd channels (QEMU charges both to the rate limit).
      const sentBytes = (): number => out.bytesWritten + ram.multifdBytes;
      const window = new RateWindow(now(), sentBytes(), pagesSent());
      this.window = window;
      let idleInWindow = false; // ran out of dirty pages during this window
      let fitsSinceMs: number | undefined; // when the estimate first fitted the budget in this pass
      let liveDrainLimitMs = 0; // how long the rest of the pass may be sent live once it fits
      for (;;) {
        this.throwIfStopped();
        const downtimeLimitMs = params()['downtime-limit'];
        // The pause starts with one more dirty-log sync, which costs what the last one did
        // (a few ms for an exact log, a shadow compare of all RAM for v86).
        const thresholdBytes = window.bandwidthBytesPerMs * Math.max(0, downtimeLimitMs - this.lastSyncMs);
        let ramPendingBytes = await save.pendingBytes(false);
        // QEMU syncs and stops the guest as soon as the rest fits the budget, so
        // even a guest that writes nothing pauses for about a downtime-limit's
        // worth of sending. We keep sending live until this pass is drained (or
        // for at most twice the time that should take, at least a downtime-limit), then sync: what the
        // guest dirtied meanwhile is what the pause must carry, ~0 for an idle guest.
        const fits = ramPendingBytes + deviceStateBytes <= thresholdBytes;
        if (!fits) fitsSinceMs = undefined;
        else if (fitsSinceMs === undefined) {
          fitsSinceMs = now();
          // Sending the rest of the pass should take pending / bandwidth; allow twice that
          // (the estimate is a past window's) but at least a downtime-limit.
          liveDrainLimitMs = Math.max(downtimeLimitMs, (2 * ramPendingBytes) / Math.max(1, window.bandwidthBytesPerMs));
        }
        const drained = ramPendingBytes <= window.bandwidthBytesPerMs * DRAINED_MS;
        if (ramPendingBytes === 0 || (fits && (drained || now() - fitsSinceMs! >= liveDrainLimitMs))) {
          // What the destination has not loaded yet (records still in socket buffers: for
          // zero pages, hundreds of thousands) would be loaded inside the pause. Let it
          // catch up while the guest runs: QEMU's PING is answered once all before it is loaded.
          if (fits && returnPath) await this.waitForDestination(out, downtimeLimitMs);
          ramPendingBytes = await save.pendingBytes(true); // exact: sync the dirty log
          fitsSinceMs = undefined;
          const pendingBytes = ramPendingBytes + deviceStateBytes;
          if (pendingBytes <= thresholdBytes || ramPendingBytes === 0) {
            this.switchover = { pendingBytes, ramPendingBytes, deviceStateBytes, bandwidthBytesPerMs: window.bandwidthBytesPerMs, downtimeLimitMs, thresholdBytes };
            break;
          }
        }
        const pendingBytes = ramPendingBytes + deviceStateBytes;
        const allSent = await save.iterate(() => this.cancelRequested || this.returnPathFailure !== undefined || window.overBudget(sentBytes(), params()['max-bandwidth']));
        idleInWindow ||= allSent;
        const t = now();
        if (window.maybeClose(t, sentBytes(), pagesSent(), idleInWindow)) {
          idleInWindow = false;
          if (window.bandwidthBytesPerMs > 0) this.expectedDowntimeMs = Math.round(pendingBytes / window.bandwidthBytesPerMs);
        } else if (window.overBudget(sentBytes(), params()['max-bandwidth'])) {
          await this.pause(window.msUntilEnd(t)); // rate limit: wait for the next window
        } else if (allSent) {
          // Nothing dirty right now and no bandwidth figure yet: let the guest
          // run a little instead of spinning out empty sections.
          await this.pause(Math.min(5, window.msUntilEnd(t)));
        }
        await yieldToEventLoop(); // let the return path, timers and monitors run
      }

      // ---- Phase 3: complete with the guest stopped ----
      const downtimeStartMs = now();
      const wasRunning = machine.running;
      if (wasRunning) {
        await machine.pause();
        pausedByUs = true;
      }
      this.emit('stop');
      if (this.capabilities['pause-before-switchover']) {
        this.transition('pre-switchover');
        await new Promise<void>((resolve) => (this.continueSwitchover = resolve));
        this.continueSwitchover = undefined;
        this.throwIfStopped();
      }
      this.transition('device');
      const pausedMs = now();
      storeGlobalState(globalState, wasRunning ? 'running' : 'paused');
      await save.completePrecopy();
      this.throwIfStopped();
      const completedMs = now();
      // Once the EOF is on its way the destination may start the guest: no going back.
      this.pointOfNoReturn = true;
      await out.close();
      const flushedMs = now();
      if (shut) {
        const value = await shut;
        if (value !== 0) throw new Error(`the destination failed to load the state (SHUT ${value})`);
      }
      this.downtimeMs = Math.round(now() - downtimeStartMs);
      if (this.switchover) {
        const ms = (x: number): number => Math.round(x * 10) / 10;
        this.switchover.downtimePhasesMs = { pause: ms(pausedMs - downtimeStartMs), complete: ms(completedMs - pausedMs), flush: ms(flushedMs - completedMs), confirm: ms(now() - flushedMs) };
      }
      this.totalTimeMs = Math.round(now() - this.startedMs);
      this.finalMbps = (ram.stats.transferredBytes * 8) / (this.totalTimeMs / 1000) / 1e6;
      this.expectedDowntimeMs = undefined;
      await channel.close().catch(() => {});
      await returnPath;
      this.transition('completed');
      return 'completed';
    } catch (caught) {
      let err = caught;
      if (returnPath && !(err instanceof Cancelled) && !this.cancelRequested) {
        // A destination that rejects the stream says so (SHUT 1) and closes; our
        // write may fail first. Give its message a moment to arrive: it is the reason.
        await Promise.race([returnPath, new Promise((r) => setTimeout(r, 500).unref())]);
        if (this.returnPathFailure && /SHUT/.test(this.returnPathFailure.message)) err = this.returnPathFailure;
      }
      this.channel?.abort(err);
      await returnPath?.catch(() => {});
      const cancelled = err instanceof Cancelled || this.cancelRequested;
      if (pausedByUs && !this.pointOfNoReturn) machine.resume();
      this.totalTimeMs = Math.round(now() - this.startedMs);
      if (cancelled && !this.pointOfNoReturn) {
        this.transition('cancelled');
        return 'cancelled';
      }
      this.errorDesc = this.pointOfNoReturn && pausedByUs
        ? `${(err as Error).message}; the destination received the whole state but did not confirm it runs the guest, so the source guest stays paused (resume it only if the destination is not running it)`
        : (err as Error).message;
      this.transition('failed');
      return 'failed';
    } finally {
      // The throttle only serves the migration; the guest runs at full speed again.
      if (this.autoConverge.percent > 0) this.machine.setThrottle(0);
      this.channel = undefined;
      this.multifd = undefined;
      ram.saveCleanup();
    }
  }

  /** Read destination-to-source messages; `shut` resolves with the SHUT value. */
  private listenReturnPath(input: StreamReader): { returnPath: Promise<void>; shut: Promise<number> } {
    let resolveShut!: (v: number) => void;
    const shut = new Promise<number>((resolve) => (resolveShut = resolve));
    const returnPath = (async () => {
      try {
        for (;;) {
          const message = await readReturnPathMessage(input);
          if (message === null) throw new Error('the destination closed the connection before confirming');
          if (message.type === 'shut') {
            resolveShut(message.value);
            if (message.value !== 0) throw new Error(`the destination rejected the stream or failed to load it (SHUT ${message.value}); see its log for the reason`);
            return;
          }
          // PONG: the destination has loaded everything sent before the PING.
          this.pongWaiters.get(message.value)?.();
          this.pongWaiters.delete(message.value);
        }
      } catch (err) {
        this.returnPathFailure ??= err instanceof Error ? err : new Error(String(err));
        this.wakeLoop?.();
        resolveShut(-1);
      }
    })();
    const checkedShut = shut.then((v) => {
      if (v === -1) throw this.returnPathFailure!;
      return v;
    });
    checkedShut.catch(() => {}); // awaited only on the success path; failures surface through returnPathFailure
    return { returnPath, shut: checkedShut };
  }

  /** `query-migrate`. */
  query(): MigrationInfo {
    if (this.currentStatus === 'none') return {};
    const info: MigrationInfo = { status: this.currentStatus };
    const elapsed = Math.round(now() - this.startedMs);
    if (this.setupTimeMs !== undefined) info['setup-time'] = this.setupTimeMs;
    info['total-time'] = this.totalTimeMs ?? elapsed;
    if (this.currentStatus !== 'completed' && this.expectedDowntimeMs !== undefined) info['expected-downtime'] = this.expectedDowntimeMs;
    if (this.currentStatus === 'completed' && this.downtimeMs !== undefined) info.downtime = this.downtimeMs;
    if (this.ram && this.currentStatus !== 'setup') info.ram = this.ramInfo(this.ram.stats);
    if (this.block && this.currentStatus !== 'setup') {
      const b = this.block;
      info.disk = { transferred: b.bytesTransferred, remaining: b.bytesRemaining, total: b.bytesTotal };
    }
    if (this.capabilities.xbzrle && this.ram) {
      const x = this.ram.stats.xbzrle;
      info['xbzrle-cache'] = { 'cache-size': x.cacheSizeBytes, bytes: x.bytes, pages: x.pages, 'cache-miss': x.cacheMiss, overflow: x.overflow };
    }
    if (this.autoConverge.percent > 0 && ACTIVE_STATES.has(this.currentStatus)) info['cpu-throttle-percentage'] = this.autoConverge.percent;
    if (this.errorDesc !== undefined) info['error-desc'] = this.errorDesc;
    return info;
  }

  private ramInfo(s: RamSaveStats): NonNullable<MigrationInfo['ram']> {
    const done = this.currentStatus === 'completed';
    return {
      transferred: s.transferredBytes,
      remaining: done ? 0 : s.remainingBytes,
      total: s.totalBytes,
      duplicate: s.duplicatePages,
      skipped: 0,
      normal: s.normalPages,
      'normal-bytes': s.normalPages * TARGET_PAGE_SIZE,
      'dirty-pages-rate': done ? 0 : this.dirtyPagesRate,
      mbps: done && this.finalMbps !== undefined ? this.finalMbps : (this.window?.mbps ?? 0),
      'dirty-sync-count': s.dirtySyncCount,
      'page-size': TARGET_PAGE_SIZE,
      'pages-per-second': Math.round(this.window?.pagesPerSecond ?? 0),
      'precopy-bytes': s.precopyBytes,
      'downtime-bytes': s.downtimeBytes,
      'postcopy-bytes': 0,
      'multifd-bytes': s.multifdBytes,
      'postcopy-requests': 0,
    };
  }
}
