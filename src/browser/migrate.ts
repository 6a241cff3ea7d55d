/**
 * A page's two calls: migrate a machine out to a ws:// URL, or into it from
 * one. Each runs the engine's own loop (OutgoingMigration, IncomingMigration)
 * with the browser's channels, reports progress as QMP's query-migrate
 * shapes it (with x-livemig-progress), and resolves with the outcome; a
 * failed or cancelled migration resolves too (status says so; the guest then
 * runs where it ran before). Only arguments the engine refuses outright
 * (a bad URI or setting) reject.
 */
import type { Machine } from '../machine/machine.js';
import { MigrationConfig } from '../migration/config.js';
import type { MigrationChannels } from '../migration/channels.js';
import { IncomingMigration, type IncomingStatus } from '../migration/incoming.js';
import { OutgoingMigration } from '../migration/outgoing.js';
import type { MigrationStatus } from '../migration/state.js';
import { incomingInfo, outgoingInfo, type MigrationInfo } from '../monitor/query-migrate.js';
import { browserChannels } from './channels.js';

/** How often onProgress is called while a migration runs (also at every status change). */
export const PROGRESS_INTERVAL_MS = 250;

export interface MigrationOutcome {
  status: MigrationStatus | IncomingStatus;
  /** From start to the end (completed, failed or cancelled), ms. */
  totalMs: number;
  /**
   * Source: the guest's downtime (stopped here until the destination ran
   * it), ms. Destination: undefined (the source measures it).
   */
  downtimeMs: number | undefined;
  /** Source, after the switchover: where the downtime went, ms (stopping the guest, the last sections, the wire, the destination's confirmation). */
  downtimePhasesMs?: { pause: number; complete: number; flush: number; confirm: number };
  /** Source: RAM bytes sent (query-migrate's ram.transferred); destination: stream bytes received. */
  bytes: number;
  /** Why it failed or was cancelled. */
  error?: string;
  errorCode?: string;
  /** Destination: whether the guest was started here. */
  started?: boolean;
}

export interface MigrateOutOptions {
  /** Migration parameters (QMP migrate-set-parameters' names, e.g. { 'downtime-limit': 300 }). */
  parameters?: Partial<Record<string, unknown>>;
  /** Capabilities (e.g. { xbzrle: true }); multifd and postcopy-ram are refused for a v86 guest in a page. */
  capabilities?: Partial<Record<string, unknown>>;
  onProgress?(info: MigrationInfo): void;
  progressIntervalMs?: number;
  /** Default: browserChannels() (ws:// over the page's WebSocket); openedChannels(channel) for a memory pipe. */
  channels?: MigrationChannels;
}

export interface MigrateInOptions {
  onProgress?(info: MigrationInfo): void;
  progressIntervalMs?: number;
  channels?: MigrationChannels;
  /** Start the guest once loaded (default true; false keeps it paused, as QEMU's -S). */
  autostart?: boolean;
}

/** Calls `report` every intervalMs until stopped; a throwing callback is the page's bug, reported once to the console and not again. */
function ticker(report: (() => void) | undefined, intervalMs: number): { tick(): void; stop(): void } {
  if (!report) return { tick() {}, stop() {} };
  let broken = false;
  const tick = (): void => {
    if (broken) return;
    try {
      report();
    } catch (err) {
      broken = true;
      console.error('livemig: onProgress threw; no more progress reports', err);
    }
  };
  const timer = setInterval(tick, intervalMs);
  return { tick, stop: () => clearInterval(timer) };
}

/**
 * Migrate `machine` (running or paused) to the destination listening on
 * `wsUrl`. After `completed` the guest runs there and this machine stays
 * paused (a stale copy: destroy it); after `failed` or `cancelled` it runs here.
 */
export async function migrateOut(machine: Machine, wsUrl: string, options: MigrateOutOptions = {}): Promise<MigrationOutcome> {
  const config = new MigrationConfig({ ...(options.parameters ? { parameters: options.parameters } : {}), ...(options.capabilities ? { capabilities: options.capabilities } : {}) });
  const migration = new OutgoingMigration(machine, config, { channels: options.channels ?? browserChannels() });
  const progress = ticker(options.onProgress && (() => options.onProgress!(outgoingInfo(migration.snapshot()))), options.progressIntervalMs ?? PROGRESS_INTERVAL_MS);
  migration.on('status', () => progress.tick());
  try {
    migration.start(wsUrl);
    const status = await migration.finished;
    const s = migration.snapshot();
    return {
      status,
      totalMs: s.totalTimeMs ?? s.elapsedMs,
      downtimeMs: s.downtimeMs,
      ...(s.downtimePhasesMs ? { downtimePhasesMs: s.downtimePhasesMs } : {}),
      bytes: s.ram?.transferredBytes ?? 0,
      ...(s.error ? { error: s.error.message, errorCode: s.error.code } : {}),
    };
  } finally {
    progress.stop();
  }
}

/**
 * Receive a migration into `machine` (created with `incoming: true`): the
 * page connects to `wsUrl`, where the source (or a relay) sends the stream on
 * that connection. On `completed` the guest runs here (unless autostart is
 * false or the source had it paused); on failure it is never started here.
 */
export async function migrateIn(machine: Machine, wsUrl: string, options: MigrateInOptions = {}): Promise<MigrationOutcome> {
  const incoming = new IncomingMigration(machine, { channels: options.channels ?? browserChannels(), ...(options.autostart !== undefined ? { autostart: options.autostart } : {}) });
  const info = (): MigrationInfo => incomingInfo(incoming.status, wsUrl, incoming.error ? { code: incoming.error.code, message: incoming.error.message } : undefined);
  const progress = ticker(options.onProgress && (() => options.onProgress!(info())), options.progressIntervalMs ?? PROGRESS_INTERVAL_MS);
  incoming.on('status', () => progress.tick());
  const startedMs = performance.now();
  try {
    await incoming.listen(wsUrl);
    const result = await incoming.run();
    return {
      status: result.status,
      totalMs: Math.round(performance.now() - startedMs),
      downtimeMs: undefined,
      bytes: result.bytes,
      started: result.started,
      ...(result.error ? { error: result.error.message, errorCode: result.error.code } : {}),
    };
  } finally {
    progress.stop();
  }
}
