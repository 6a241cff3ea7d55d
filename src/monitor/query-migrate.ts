/**
 * `query-migrate` as QEMU 7.2 shapes it, from the engine's figures: the
 * outgoing migration's snapshot, or the incoming migration's state. Which of
 * the two a machine reports is the monitor's business (the latest one).
 */
import type { IncomingStatus, MigrationStatus, OutgoingMigration, OutgoingSnapshot } from '../migration/index.js';
import { TARGET_PAGE_SIZE } from '../wire/index.js';
import type { ProgressReport } from '../migration/progress-model.js';

/** `query-migrate`'s answer (only the fields livemig has; `x-livemig-*` are extensions). */
export interface MigrationInfo {
  status?: MigrationStatus | IncomingStatus;
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
    /** QEMU 7.2's zero-copy-send fallbacks; livemig has no zero-copy send, so always 0. */
    'dirty-sync-missed-zero-copy': number;
  };
  /** Block migration, as QEMU 7.2's `disk`: bytes of the bulk phase sent, still to send, and the disks' total. */
  disk?: { transferred: number; remaining: number; total: number };
  'xbzrle-cache'?: { 'cache-size': number; bytes: number; pages: number; 'cache-miss': number; 'cache-miss-rate': number; 'encoding-rate': number; overflow: number };
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  /** livemig: the error's code (MigrationErrorCode), so scripts need not parse `error-desc`. */
  'x-livemig-error-code'?: string;
  /** livemig: why a migration was cancelled (who, how), kept where QEMU's QMP drops error-desc. */
  'x-livemig-error-desc'?: string;
  'socket-address'?: Array<Record<string, unknown>>;
  /** Destination with capability postcopy-blocktime: ms the guest waited for pages, in all and per vCPU. */
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
  /** livemig, destination in postcopy: pages requested from the source, and pages still missing. */
  'x-livemig-postcopy'?: { requests: number; 'missing-pages': number; 'placed-pages': number };
  /** livemig, source: the progress model (src/migration/progress-model.ts): percent, passes, convergence, ETA, diagnosis. */
  'x-livemig-progress'?: ProgressReport;
  /** livemig, source after the switchover: where the downtime went, and the limit. */
  'x-livemig-downtime-phases'?: { 'pause-ms': number; 'complete-ms': number; 'flush-ms': number; 'confirm-ms': number };
  'x-livemig-downtime-limit-ms'?: number;
}

/** The source's `query-migrate`. */
export function outgoingInfo(s: OutgoingSnapshot): MigrationInfo {
  if (s.status === 'none') return {};
  const info: MigrationInfo = { status: s.status };
  if (s.setupTimeMs !== undefined) info['setup-time'] = s.setupTimeMs;
  info['total-time'] = s.totalTimeMs ?? s.elapsedMs;
  if (s.expectedDowntimeMs !== undefined) info['expected-downtime'] = s.expectedDowntimeMs;
  if (s.downtimeMs !== undefined) info.downtime = s.downtimeMs;
  const done = s.status === 'completed';
  const r = s.ram;
  if (r) {
    info.ram = {
      transferred: r.transferredBytes,
      remaining: done ? 0 : r.remainingBytes,
      total: r.totalBytes,
      duplicate: r.duplicatePages,
      skipped: 0,
      normal: r.normalPages,
      'normal-bytes': r.normalPages * TARGET_PAGE_SIZE,
      'dirty-pages-rate': s.dirtyPagesRate,
      mbps: s.mbps,
      'dirty-sync-count': r.dirtySyncCount,
      'page-size': TARGET_PAGE_SIZE,
      'pages-per-second': s.pagesPerSecond,
      'precopy-bytes': r.precopyBytes,
      'downtime-bytes': r.downtimeBytes,
      'postcopy-bytes': r.postcopyBytes,
      'multifd-bytes': r.multifdBytes,
      'postcopy-requests': r.postcopyRequests,
      'dirty-sync-missed-zero-copy': 0,
    };
    if (s.xbzrle) {
      const x = r.xbzrle;
      info['xbzrle-cache'] = {
        'cache-size': x.cacheSizeBytes,
        bytes: x.bytes,
        pages: x.pages,
        'cache-miss': x.cacheMiss,
        // Over the whole migration (QEMU: over the last second): misses per page looked up, page bytes per encoded byte.
        'cache-miss-rate': x.cacheMiss + x.pages > 0 ? x.cacheMiss / (x.cacheMiss + x.pages) : 0,
        'encoding-rate': x.bytes > 0 ? (x.pages * TARGET_PAGE_SIZE) / x.bytes : 0,
        overflow: x.overflow,
      };
    }
  }
  if (s.disk) info.disk = { transferred: s.disk.transferredBytes, remaining: s.disk.remainingBytes, total: s.disk.totalBytes };
  if (s.throttlePercent > 0) info['cpu-throttle-percentage'] = s.throttlePercent;
  if (s.error) {
    info['error-desc'] = s.error.message;
    info['x-livemig-error-code'] = s.error.code;
  }
  if (s.error && s.status === 'cancelled') info['x-livemig-error-desc'] = s.error.message;
  if (s.progress) info['x-livemig-progress'] = s.progress;
  const phases = s.downtimePhasesMs;
  if (phases) info['x-livemig-downtime-phases'] = { 'pause-ms': phases.pause, 'complete-ms': phases.complete, 'flush-ms': phases.flush, 'confirm-ms': phases.confirm };
  if (s.downtimeLimitMs !== undefined) info['x-livemig-downtime-limit-ms'] = s.downtimeLimitMs;
  // Failed before it was set up (a refused connection): nothing was sent, there are no figures to show.
  if (s.status === 'failed' && s.setupTimeMs === undefined) return onlyKeys(info, ['status', 'error-desc']);
  return info;
}

/** `info` with only the `keep` keys and livemig's x-livemig-* extensions. */
function onlyKeys(info: MigrationInfo, keep: readonly string[]): MigrationInfo {
  return Object.fromEntries(Object.entries(info).filter(([key]) => keep.includes(key) || key.startsWith('x-livemig-'))) as MigrationInfo;
}

/**
 * The source's query-migrate as QEMU 7.2's QMP shows it (fill_source_migration_info):
 * in setup the status alone, failed the status and why, cancelled the status
 * alone (QEMU drops the figures; clients keep the last ones they read), the
 * x-livemig-* extensions kept. The CLI and library read outgoingInfo's figures in every state.
 */
export function qmpOutgoingInfo(info: MigrationInfo): MigrationInfo {
  if (info.status === 'setup' || info.status === 'cancelled') return onlyKeys(info, ['status']);
  if (info.status === 'failed') return onlyKeys(info, ['status', 'error-desc']);
  return info;
}

/** `query-migrate` of a migration object (for the CLI, benchmarks and tests). */
export function queryMigrate(migration: OutgoingMigration): MigrationInfo {
  return outgoingInfo(migration.snapshot());
}

/** QEMU's SocketAddress for the destination's `socket-address`. */
export function socketAddress(uri: string): Record<string, unknown> {
  const tcp = /^tcp:\[?([^\]]*)\]?:(\d+)$/.exec(uri);
  // QEMU reports the listening socket's family as ipv4 or ipv6 (socket_sockaddr_to_address_inet).
  if (tcp) return { type: 'inet', host: tcp[1], port: tcp[2], ...(tcp[1]!.includes(':') ? { ipv6: true } : { ipv4: true }) };
  if (uri.startsWith('unix:')) return { type: 'unix', path: uri.slice(5) };
  // QEMU has no WebSocket migration: the listening TCP socket as inet (what tools read for the port), the full URI beside it.
  const ws = /^ws:\/\/\[?([^\]/]*?)\]?:(\d+)(\/.*)$/.exec(uri);
  if (ws) return { type: 'inet', host: ws[1], port: ws[2], ...(ws[1]!.includes(':') ? { ipv6: true } : { ipv4: true }), 'x-livemig-uri': uri };
  return { type: 'other', uri };
}

/** The destination's `query-migrate`. */
export interface IncomingPostcopyInfo {
  requests: number;
  missingPages: number;
  placedPages: number;
  /** Only with capability postcopy-blocktime. */
  blocktime?: { totalMs: number; perVcpuMs: number[] };
}

export function incomingInfo(status: IncomingStatus, address: string | undefined, error?: { code: string; message: string }, postcopy?: IncomingPostcopyInfo): MigrationInfo {
  if (status === 'none') return {};
  // Listening, no source yet: QEMU 7.2's destination is still in state none then and shows only where it listens.
  if (status === 'setup') return address ? { 'socket-address': [socketAddress(address)] } : {};
  const info: MigrationInfo = { status };
  if (postcopy) {
    info['x-livemig-postcopy'] = { requests: postcopy.requests, 'missing-pages': postcopy.missingPages, 'placed-pages': postcopy.placedPages };
    if (postcopy.blocktime) {
      info['postcopy-blocktime'] = Math.round(postcopy.blocktime.totalMs);
      info['postcopy-vcpu-blocktime'] = postcopy.blocktime.perVcpuMs.map((ms) => Math.round(ms));
    }
  }
  if (address && status === 'active') info['socket-address'] = [socketAddress(address)];
  if (error) {
    info['error-desc'] = error.message;
    info['x-livemig-error-code'] = error.code;
  }
  return info;
}
