/**
 * The progress display of `livemig migrate` and the texts of `livemig query`: what a
 * `query-migrate` snapshot means to a person.
 *
 * On a terminal it is a three-line frame redrawn in place (cli-progress does the cursor
 * work: moving up, clearing, hiding the cursor, not wrapping); elsewhere one line every
 * couple of seconds, so a log file stays readable.
 */
import cliProgress from 'cli-progress';
import { formatBytes } from './format.js';
import type { MigrationInfo, MigrationRamStats } from '../monitor/qmp-client.js';

/** Lines without a terminal: one every this often (and one at each change of state). */
export const PLAIN_LINE_INTERVAL_MS = 2000;

/** What the display shows, derived from one snapshot. Undefined = QEMU did not say (yet). */
export interface ProgressFigures {
  status: string;
  /** Dirty-bitmap syncs so far (QEMU's dirty-sync-count, or MIGRATION_PASS if later). */
  pass: number;
  totalBytes?: number;
  remainingBytes?: number;
  transferredBytes?: number;
  /** (total − remaining) / total: in the first pass, the share of RAM already sent. It is not
   *  transferred / total, because zero pages cost a few bytes each on the wire: a guest with
   *  mostly empty RAM would sit near 0 % until the end. */
  doneFraction?: number;
  dirtyPagesPerSecond?: number;
  dirtyBytesPerSecond?: number;
  throughputMbps?: number;
  expectedDowntimeMs?: number;
  throttlePercent?: number;
  elapsedMs: number;
  /** remaining / throughput; undefined while nothing has been measured. */
  etaMs?: number;
  /** In postcopy: page requests the destination made so far. */
  postcopyRequests?: number;
}

/**
 * @param passFromEvents the highest MIGRATION_PASS seen (0 if none)
 * @param localElapsedMs time since we sent `migrate`, for states QEMU gives no total-time in
 */
export function figuresOf(info: MigrationInfo, passFromEvents: number, localElapsedMs: number): ProgressFigures {
  const ram = info.ram;
  const figures: ProgressFigures = {
    status: info.status ?? 'none',
    pass: Math.max(ram?.['dirty-sync-count'] ?? 0, passFromEvents),
    elapsedMs: info['total-time'] ?? localElapsedMs,
    expectedDowntimeMs: info['expected-downtime'],
    throttlePercent: info['cpu-throttle-percentage'],
  };
  if (!ram) return figures;
  figures.totalBytes = ram.total;
  figures.remainingBytes = ram.remaining;
  figures.transferredBytes = ram.transferred;
  if (ram.total > 0 && ram.remaining !== undefined) figures.doneFraction = clamp01((ram.total - ram.remaining) / ram.total);
  else if (ram.total > 0) figures.doneFraction = clamp01(ram.transferred / ram.total);
  const dirtyPages = ram['dirty-pages-rate'];
  if (dirtyPages !== undefined) {
    figures.dirtyPagesPerSecond = dirtyPages;
    figures.dirtyBytesPerSecond = dirtyPages * (ram['page-size'] ?? 4096);
  }
  figures.throughputMbps = ram.mbps;
  if (figures.status.startsWith('postcopy')) figures.postcopyRequests = ram['postcopy-requests'] ?? 0;
  if (ram.remaining !== undefined && !ENDED.has(figures.status)) figures.etaMs = etaMs(ram.remaining, ram);
  return figures;
}

const ENDED = new Set(['completed', 'failed', 'cancelled']);

/**
 * remaining / throughput. Throughput is counted in pages when QEMU says (pages-per-second):
 * a zero page costs a few bytes on the wire but a whole page of `remaining`, so bytes/s
 * would predict minutes for an empty guest that is done in seconds.
 */
function etaMs(remainingBytes: number, ram: MigrationRamStats): number | undefined {
  const pagesPerSecond = ram['pages-per-second'];
  if (pagesPerSecond !== undefined && pagesPerSecond > 0) return (remainingBytes / (ram['page-size'] ?? 4096) / pagesPerSecond) * 1000;
  if (ram.mbps !== undefined && ram.mbps > 0) return ((remainingBytes * 8) / (ram.mbps * 1e6)) * 1000;
  return undefined;
}

const clamp01 = (x: number): number => Math.min(1, Math.max(0, x));

// ---------- text pieces ----------

/** 840 ms, 1.8 s, 2 min 05 s */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '?';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const seconds = Math.round(ms / 1000);
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const rest = String(seconds % 60).padStart(2, '0');
  return hours > 0 ? `${hours} h ${String(minutes).padStart(2, '0')} min` : `${minutes} min ${rest} s`;
}

/** QEMU's mbps is megabits (10^6) per second. */
export const formatMbps = (mbps: number): string => `${mbps.toFixed(mbps < 10 ? 2 : 1)} Mbit/s`;
const formatMBps = (bytesPerSecond: number): string => `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;

function dirtyText(f: ProgressFigures): string | undefined {
  if (f.dirtyPagesPerSecond === undefined) return undefined;
  return `dirty ${Math.round(f.dirtyPagesPerSecond)} pages/s (${formatMBps(f.dirtyBytesPerSecond ?? 0)})`;
}

function amountText(f: ProgressFigures): string {
  if (f.totalBytes === undefined) return '';
  const percent = `${Math.floor((f.doneFraction ?? 0) * 100)}%`.padStart(4);
  // In postcopy the guest runs on the destination; what remains here is what it still lacks.
  if (f.postcopyRequests !== undefined) {
    const missingPages = Math.round((f.remainingBytes ?? 0) / 4096);
    return `${percent}  postcopy: ${missingPages} pages (${formatBytes(f.remainingBytes ?? 0)}) still missing on the destination, ${f.postcopyRequests} requested by its guest`;
  }
  // The first pass sends every page once; later passes resend what the guest dirtied.
  if (f.pass <= 1) return `${percent} of ${formatBytes(f.totalBytes)}, ${formatBytes(f.transferredBytes ?? 0)} sent`;
  return `${percent}  remaining ${formatBytes(f.remainingBytes ?? 0)} of ${formatBytes(f.totalBytes)}`;
}

/** The three lines drawn on a terminal; `bar` draws a bar for a fraction. */
export function formatFrame(f: ProgressFigures, bar: (fraction: number) => string): [string, string, string] {
  const head = `${f.status.padEnd(8)} pass ${f.pass}`;
  const line1 = f.totalBytes === undefined ? head : `${head}  [${bar(f.doneFraction ?? 0)}] ${amountText(f)}`;
  const rates = [
    f.throughputMbps !== undefined ? formatMbps(f.throughputMbps) : undefined,
    dirtyText(f),
    f.throttlePercent !== undefined ? `cpu throttle ${f.throttlePercent}%` : undefined,
  ].filter(Boolean);
  const times = [
    `elapsed ${formatDuration(f.elapsedMs)}`,
    f.etaMs !== undefined ? `ETA ${formatDuration(f.etaMs)}` : ENDED.has(f.status) ? undefined : 'ETA --',
    f.expectedDowntimeMs !== undefined ? `expected downtime ${formatDuration(f.expectedDowntimeMs)}` : undefined,
  ].filter(Boolean);
  return [line1, `  ${rates.join('  ') || 'waiting for the first figures'}`, `  ${times.join('  ')}`];
}

/** One line, for logs and pipes. */
export function formatProgressLine(f: ProgressFigures): string {
  const parts = [`[${formatDuration(f.elapsedMs).padStart(8)}] ${f.status}`];
  if (f.totalBytes !== undefined) {
    parts.push(`pass ${f.pass}: ${amountText(f).trim()}`);
    if (f.throughputMbps !== undefined) parts.push(formatMbps(f.throughputMbps));
    const dirty = dirtyText(f);
    if (dirty) parts.push(dirty);
    if (f.throttlePercent !== undefined) parts.push(`cpu throttle ${f.throttlePercent}%`);
    if (f.expectedDowntimeMs !== undefined) parts.push(`expected downtime ${formatDuration(f.expectedDowntimeMs)}`);
    if (f.etaMs !== undefined) parts.push(`ETA ${formatDuration(f.etaMs)}`);
  }
  return parts.join(', ');
}

// ---------- the live display ----------

type Output = NodeJS.WriteStream;

/**
 * Draws figures on `stream`: redrawn in place on a terminal, else a line every couple of
 * seconds. `pause()` stops drawing (the last frame stays) so a question can be asked below it;
 * `resume()` starts a new frame under the question.
 */
export class ProgressDisplay {
  private bars: cliProgress.MultiBar | undefined;
  private latest: ProgressFigures | undefined;
  private lastLineAtMs = 0;
  private lastStatus = '';
  private paused = false;
  private stopped = false;

  constructor(
    private readonly stream: Output,
    readonly tty: boolean = stream.isTTY === true,
  ) {}

  update(f: ProgressFigures): void {
    // QEMU drops the RAM figures of a cancelled migration: keep showing the last ones.
    if (f.totalBytes === undefined && this.latest?.totalBytes !== undefined) {
      f = { ...this.latest, status: f.status, elapsedMs: f.elapsedMs, etaMs: undefined };
    }
    this.latest = f;
    if (this.paused) return;
    if (this.tty) {
      this.ensureBars();
      return; // cli-progress redraws from `latest` on its own timer
    }
    const now = Date.now();
    if (f.status !== this.lastStatus || now - this.lastLineAtMs >= PLAIN_LINE_INTERVAL_MS) {
      this.stream.write(formatProgressLine(f) + '\n');
      this.lastLineAtMs = now;
      this.lastStatus = f.status;
    }
  }

  /** A message above the frame (or a plain line). */
  note(text: string): void {
    if (this.bars) {
      this.bars.log(text + '\n');
      this.bars.update(); // draw it now, not at the next tick (there may be none)
    } else {
      this.stream.write(text + '\n');
    }
  }

  pause(): void {
    this.paused = true;
    this.stopBars();
  }

  resume(): void {
    if (this.stopped) return;
    this.paused = false;
    if (this.latest) this.update(this.latest);
  }

  /** Draw the last frame once more and leave it on the screen. */
  stop(): void {
    this.stopped = true;
    this.paused = true;
    this.stopBars();
  }

  private ensureBars(): void {
    if (this.bars) return;
    const bars = new cliProgress.MultiBar({
      stream: this.stream,
      fps: 5,
      hideCursor: true,
      // We ask "Cancel the migration?" on SIGINT ourselves; cli-progress would stop the bars.
      gracefulExit: false,
      barsize: 24,
      barCompleteChar: '#',
      barIncompleteChar: '-',
    });
    for (let line = 0; line < 3; line++) {
      bars.create(1, 0, {}, {
        // Each "bar" of the MultiBar is one line of our frame; cli-progress draws the bar itself.
        format: (options) =>
          this.latest ? formatFrame(this.latest, (fraction) => cliProgress.Format.BarFormat(fraction, options))[line]! : '',
      });
    }
    this.bars = bars;
  }

  private stopBars(): void {
    const bars = this.bars;
    this.bars = undefined;
    bars?.stop();
  }
}

// ---------- the final report ----------

export interface MigrationReport {
  status: string;
  errorDesc?: string;
  /** QEMU's total-time: from `migrate` to the end. */
  totalTimeMs?: number;
  downtimeMs?: number;
  setupTimeMs?: number;
  transferredBytes?: number;
  /** transferred × 8 / total-time, in 10^6 bit/s. */
  averageMbps?: number;
  /** Block migration: the size of the disks copied. */
  diskBytes?: number;
  passes: number;
  /** Our own clock, from sending `migrate` to seeing the end. */
  wallTimeMs: number;
}

export function buildReport(info: MigrationInfo, passFromEvents: number, wallTimeMs: number): MigrationReport {
  const ram = info.ram;
  const report: MigrationReport = {
    status: info.status ?? 'none',
    passes: Math.max(ram?.['dirty-sync-count'] ?? 0, passFromEvents),
    wallTimeMs,
  };
  if (info['error-desc'] !== undefined) report.errorDesc = info['error-desc'];
  if (info['total-time'] !== undefined) report.totalTimeMs = info['total-time'];
  if (info.downtime !== undefined) report.downtimeMs = info.downtime;
  if (info['setup-time'] !== undefined) report.setupTimeMs = info['setup-time'];
  if (ram) report.transferredBytes = ram.transferred;
  if (info.disk) report.diskBytes = info.disk.total;
  const seconds = (report.totalTimeMs ?? wallTimeMs) / 1000;
  if (ram && seconds > 0) report.averageMbps = (ram.transferred * 8) / seconds / 1e6;
  return report;
}

/** The report as the `--json` final line: QEMU's spelling, times in ms. */
export function reportJson(report: MigrationReport): Record<string, unknown> {
  return {
    final: true,
    status: report.status,
    ...(report.errorDesc !== undefined && { 'error-desc': report.errorDesc }),
    ...(report.totalTimeMs !== undefined && { 'total-time': report.totalTimeMs }),
    ...(report.downtimeMs !== undefined && { downtime: report.downtimeMs }),
    ...(report.setupTimeMs !== undefined && { 'setup-time': report.setupTimeMs }),
    ...(report.transferredBytes !== undefined && { transferred: report.transferredBytes }),
    ...(report.averageMbps !== undefined && { 'average-mbps': Number(report.averageMbps.toFixed(3)) }),
    ...(report.diskBytes !== undefined && { 'disk-total': report.diskBytes }),
    passes: report.passes,
    'wall-time': Math.round(report.wallTimeMs),
  };
}

export function formatReport(report: MigrationReport): string {
  const took = report.totalTimeMs ?? report.wallTimeMs;
  // The reason of a failure goes to stderr (livemig: migration failed: ...), not here twice.
  const lines = [`Migration ${report.status} after ${formatDuration(took)}`];
  const row = (name: string, value: string): number => lines.push(`  ${name.padEnd(13)}${value}`);
  row('total time', formatDuration(took));
  if (report.downtimeMs !== undefined) row('downtime', formatDuration(report.downtimeMs));
  if (report.setupTimeMs !== undefined) row('setup time', formatDuration(report.setupTimeMs));
  if (report.transferredBytes !== undefined) row('transferred', `${formatBytes(report.transferredBytes)} (${report.transferredBytes} bytes)`);
  if (report.averageMbps !== undefined) row('throughput', `${formatMbps(report.averageMbps)} average`);
  if (report.diskBytes !== undefined) row('disks', `${formatBytes(report.diskBytes)} copied`);
  row('passes', String(report.passes));
  return lines.join('\n');
}

// ---------- `livemig query` ----------

/** A `query-migrate` answer for a person: status first, then times, RAM, the rest as QEMU names it. */
export function formatMigrationInfo(info: MigrationInfo): string {
  if (info.status === undefined) return 'status: none (no migration since this process started)';
  const lines = [`status: ${info.status}`];
  if (info['error-desc'] !== undefined) lines.push(`error: ${info['error-desc']}`);
  for (const key of ['total-time', 'setup-time', 'expected-downtime', 'downtime'] as const) {
    const value = info[key];
    if (value !== undefined) lines.push(`${key}: ${formatDuration(value)}`);
  }
  if (info['cpu-throttle-percentage'] !== undefined) lines.push(`cpu-throttle-percentage: ${info['cpu-throttle-percentage']}%`);
  const ram = info.ram;
  if (ram) {
    lines.push('ram:');
    const bytes = new Set(['transferred', 'remaining', 'total', 'normal-bytes', 'precopy-bytes', 'downtime-bytes', 'postcopy-bytes', 'multifd-bytes']);
    for (const [key, value] of Object.entries(ram)) {
      if (typeof value === 'number' && bytes.has(key)) lines.push(`  ${key}: ${formatBytes(value)} (${value})`);
      else if (key === 'mbps' && typeof value === 'number') lines.push(`  ${key}: ${formatMbps(value)}`);
      else lines.push(`  ${key}: ${JSON.stringify(value)}`);
    }
  }
  const shown = new Set(['status', 'error-desc', 'total-time', 'setup-time', 'expected-downtime', 'downtime', 'cpu-throttle-percentage', 'ram']);
  for (const [key, value] of Object.entries(info)) {
    if (!shown.has(key)) lines.push(`${key}: ${JSON.stringify(value)}`);
  }
  return lines.join('\n');
}
