/**
 * The progress display of `livemig migrate` and the texts of `livemig query`: what a
 * `query-migrate` snapshot means to a person.
 *
 * On a terminal it is a three-line frame redrawn in place (cli-progress does the cursor
 * work: moving up, clearing, hiding the cursor, not wrapping); elsewhere one line every
 * couple of seconds, so a log file stays readable.
 */
import cliProgress from 'cli-progress';
import { formatBytes, jsonText } from './format.js';
import type { MigrationInfo } from '../monitor/qmp-client.js';
import { explainDowntime, ProgressModel, type ProgressObservation, type ProgressReport } from '../migration/progress-model.js';

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
  /** The progress model's reading (the source's x-livemig-progress, or derived here from QEMU's figures). */
  progress?: ProgressReport;
  /** Why it failed or was cancelled (error-desc). */
  errorDesc?: string;
}

/** The model's input from a query-migrate answer (a QEMU's or livemig's). */
export function observationOf(info: MigrationInfo, elapsedMs: number): ProgressObservation {
  const ram = info.ram;
  const o: ProgressObservation = { status: info.status ?? 'none', elapsedMs: info['total-time'] ?? elapsedMs };
  if (ram && ram.total !== undefined) {
    o.ram = {
      totalBytes: ram.total,
      remainingBytes: ram.remaining ?? 0,
      transferredBytes: ram.transferred ?? 0,
      pagesSent: (ram.normal ?? 0) + (ram.duplicate ?? 0) + (((info['xbzrle-cache'] as { pages?: number } | undefined)?.pages) ?? 0),
      dirtySyncCount: ram['dirty-sync-count'] ?? 0,
      ...(ram['page-size'] !== undefined && { pageSize: ram['page-size'] }),
      ...(ram['pages-per-second'] !== undefined && { pagesPerSecond: ram['pages-per-second'] }),
      ...(ram.mbps !== undefined && { mbps: ram.mbps }),
      ...(ram['dirty-pages-rate'] !== undefined && { dirtyPagesRate: ram['dirty-pages-rate'] }),
    };
  }
  if (info.disk) o.disk = { transferredBytes: info.disk.transferred, remainingBytes: info.disk.remaining, totalBytes: info.disk.total };
  if (info['cpu-throttle-percentage'] !== undefined) o.throttlePercent = info['cpu-throttle-percentage'];
  return o;
}

/**
 * The progress report for a snapshot: the source's own (livemig) when it sent one, else the
 * model's over the snapshots seen so far (a QEMU source); `model` keeps that history.
 */
export function progressOf(info: MigrationInfo, elapsedMs: number, model: ProgressModel = new ProgressModel()): ProgressReport {
  const own = info['x-livemig-progress'] as ProgressReport | undefined;
  if (own && typeof own.percent === 'number') return own;
  return model.observe(observationOf(info, elapsedMs));
}

/**
 * @param passFromEvents the highest MIGRATION_PASS seen (0 if none)
 * @param localElapsedMs time since we sent `migrate`, for states QEMU gives no total-time in
 */
export function figuresOf(info: MigrationInfo, passFromEvents: number, localElapsedMs: number, model?: ProgressModel): ProgressFigures {
  const ram = info.ram;
  const figures: ProgressFigures = {
    status: info.status ?? 'none',
    pass: Math.max(ram?.['dirty-sync-count'] ?? 0, passFromEvents),
    elapsedMs: info['total-time'] ?? localElapsedMs,
    expectedDowntimeMs: info['expected-downtime'],
    throttlePercent: info['cpu-throttle-percentage'],
  };
  // QEMU's QMP gives no error-desc for a cancel; a livemig source keeps who cancelled in x-livemig-error-desc.
  const why = info['error-desc'] ?? (info['x-livemig-error-desc'] as string | undefined);
  if (why !== undefined) figures.errorDesc = why;
  const progress = progressOf(info, localElapsedMs, model);
  figures.progress = progress;
  // QEMU adds a zeroed `ram` to a migration that failed before it began: no figures to draw.
  if (!ram || (ENDED.has(figures.status) && !ram.total && !ram.transferred)) return figures;
  figures.totalBytes = ram.total;
  figures.remainingBytes = ram.remaining;
  figures.transferredBytes = ram.transferred;
  // The model's percent: it never goes back (remaining rises again at every sync).
  figures.doneFraction = clamp01(progress.percent / 100);
  const dirtyPages = ram['dirty-pages-rate'];
  if (dirtyPages !== undefined) {
    figures.dirtyPagesPerSecond = dirtyPages;
    figures.dirtyBytesPerSecond = dirtyPages * (ram['page-size'] ?? 4096);
  }
  figures.throughputMbps = ram.mbps;
  if (figures.status.startsWith('postcopy')) figures.postcopyRequests = ram['postcopy-requests'] ?? 0;
  // The model's ETA: absent when not converging (the display says so), not remaining / throughput.
  if (progress['eta-ms'] !== undefined && !ENDED.has(figures.status)) figures.etaMs = progress['eta-ms'];
  return figures;
}

const ENDED = new Set(['completed', 'failed', 'cancelled']);

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
  // Before the first sync after setup nothing has been measured: 0 would read as an idle guest.
  if (f.dirtyPagesPerSecond === 0 && f.pass <= 1 && !ENDED.has(f.status)) return 'dirty rate known after the first pass';
  return `dirty ${Math.round(f.dirtyPagesPerSecond)} pages/s (${formatMBps(f.dirtyBytesPerSecond ?? 0)})`;
}

function amountText(f: ProgressFigures): string {
  if (f.totalBytes === undefined) return '';
  const percent = `${Math.floor((f.doneFraction ?? 0) * 100)}%`.padStart(4);
  const disk = diskText(f);
  // In postcopy the guest runs on the destination; what remains here is what it still lacks.
  if (f.postcopyRequests !== undefined) {
    const missingPages = Math.round((f.remainingBytes ?? 0) / 4096);
    return `${percent}  postcopy: ${missingPages} pages (${formatBytes(f.remainingBytes ?? 0)}) still missing on the destination, ${f.postcopyRequests} requested by its guest`;
  }
  // The first pass sends every page once; later passes resend what the guest dirtied.
  if (f.pass <= 1) return `${percent} of ${formatBytes(f.totalBytes)}, ${formatBytes(f.transferredBytes ?? 0)} sent${disk}`;
  return `${percent}  remaining ${formatBytes(f.remainingBytes ?? 0)} of ${formatBytes(f.totalBytes)}${disk}`;
}

/** Block migration's bulk copy, while it runs (RAM may be long done: the disks are then what remains). */
function diskText(f: ProgressFigures): string {
  const d = f.progress?.disk;
  if (!d) return '';
  return `; disks ${d.percent}%, ${formatBytes(d['transferred-bytes'])} of ${formatBytes(d['total-bytes'])}`;
}

/** The convergence ratio and its trend (dirty rate over the rate dirty pages are cleared). */
function convergenceText(f: ProgressFigures): string | undefined {
  const p = f.progress;
  if (!p || p['convergence-ratio'] === undefined || p.phase !== 'iterate') return undefined;
  const ratio = Number.isFinite(p['convergence-ratio']) ? p['convergence-ratio'].toFixed(2) : 'inf';
  return `convergence ${ratio}${p.trend ? ` (${p.trend})` : ''}`;
}

/** ETA, or why there is none. */
function etaText(f: ProgressFigures): string | undefined {
  if (ENDED.has(f.status)) return undefined;
  if (f.progress?.phase === 'switchover') return 'switching over (guest stopped)';
  // In the first pass the model knows no dirty rate yet: the time to finish it is a lower bound.
  if (f.etaMs !== undefined) return `ETA ${f.progress?.phase === 'first-pass' ? '≥ ' : ''}${formatDuration(f.etaMs)}`;
  if (f.progress?.converging === false) return 'ETA none: not converging';
  return 'ETA --';
}

/** A failed or cancelled migration: what it reached, and why it ended. */
function endedText(f: ProgressFigures): string {
  const percent = f.progress ? `${Math.floor(f.progress.percent)}% done` : undefined;
  const reached = [percent, f.pass > 0 ? `pass ${f.pass}` : 'before the first pass', f.transferredBytes ? `${formatBytes(f.transferredBytes)} sent` : undefined].filter(Boolean).join(', ');
  return `${f.status.toUpperCase()} at ${reached}${f.errorDesc ? `: ${f.errorDesc}` : ''}`;
}

/** The three lines drawn on a terminal; `bar` draws a bar for a fraction. */
export function formatFrame(f: ProgressFigures, bar: (fraction: number) => string): [string, string, string] {
  const head = `${f.status.padEnd(8)} pass ${f.pass}`;
  const failedOrCancelled = f.status === 'failed' || f.status === 'cancelled';
  const line1 = failedOrCancelled ? `${head}  ${endedText(f)}` : f.totalBytes === undefined ? head : `${head}  [${bar(f.doneFraction ?? 0)}] ${amountText(f)}`;
  const rates = [
    f.throughputMbps !== undefined ? formatMbps(f.throughputMbps) : undefined,
    dirtyText(f),
    convergenceText(f),
    f.throttlePercent !== undefined ? `cpu throttle ${f.throttlePercent}%` : undefined,
  ].filter(Boolean);
  const times = [
    `elapsed ${formatDuration(f.elapsedMs)}`,
    etaText(f),
    f.expectedDowntimeMs !== undefined ? `expected downtime ${formatDuration(f.expectedDowntimeMs)}` : undefined,
  ].filter(Boolean);
  return [line1, `  ${rates.join('  ') || 'waiting for the first figures'}`, `  ${times.join('  ')}`];
}

/** One line, for logs and pipes. */
export function formatProgressLine(f: ProgressFigures): string {
  const parts = [`[${formatDuration(f.elapsedMs).padStart(8)}] ${f.status}`];
  if (f.status === 'failed' || f.status === 'cancelled') return `${parts[0]}: ${endedText(f)}`;
  if (f.totalBytes !== undefined) {
    parts.push(`pass ${f.pass}: ${amountText(f).trim()}`);
    if (f.throughputMbps !== undefined) parts.push(formatMbps(f.throughputMbps));
    const dirty = dirtyText(f);
    if (dirty) parts.push(dirty);
    const convergence = convergenceText(f);
    if (convergence) parts.push(convergence);
    if (f.throttlePercent !== undefined) parts.push(`cpu throttle ${f.throttlePercent}%`);
    if (f.expectedDowntimeMs !== undefined) parts.push(`expected downtime ${formatDuration(f.expectedDowntimeMs)}`);
    const eta = etaText(f);
    if (eta) parts.push(eta);
  }
  return parts.join(', ');
}

/** The not-converging diagnosis as lines (shown once, when it first appears). */
export function formatDiagnosis(d: { summary: string; levers: string[] }): string {
  return [d.summary.replace(/^not converging/, 'Not converging'), '  levers:', ...d.levers.map((lever) => `    - ${lever}`)].join('\n');
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
  private diagnosed = false;

  constructor(
    private readonly stream: Output,
    readonly tty: boolean = stream.isTTY === true,
  ) {}

  update(f: ProgressFigures): void {
    // QEMU drops the RAM figures of a cancelled migration: keep showing the last ones.
    if (f.totalBytes === undefined && this.latest?.totalBytes !== undefined) {
      f = { ...this.latest, status: f.status, elapsedMs: f.elapsedMs, etaMs: undefined, ...(f.progress && { progress: f.progress }), ...(f.errorDesc !== undefined && { errorDesc: f.errorDesc }) };
    }
    this.latest = f;
    // The diagnosis once, above the frame (the frame keeps saying "not converging").
    const diagnosis = f.progress?.diagnosis;
    if (diagnosis && !this.diagnosed && !this.paused) {
      this.diagnosed = true;
      if (this.tty) this.ensureBars();
      this.note(formatDiagnosis(diagnosis));
    }
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
  /** Block migration: bytes of the bulk copy sent (all of diskBytes only when completed). */
  diskTransferredBytes?: number;
  /** The disks were to be copied (migrate blk), whether or not figures for them arrived. */
  disksRequested?: boolean;
  passes: number;
  /** The progress model's last percent (never more than where it got). */
  percent?: number;
  /** Downtime over its limit, explained by its phases. */
  downtimeExplanation?: string;
  downtimeLimitMs?: number;
  /** Our own clock, from sending `migrate` to seeing the end. */
  wallTimeMs: number;
}

export function buildReport(info: MigrationInfo, passFromEvents: number, wallTimeMs: number, progress?: ProgressReport, downtimeLimitMs?: number): MigrationReport {
  const ram = info.ram;
  const report: MigrationReport = {
    status: info.status ?? 'none',
    passes: Math.max(ram?.['dirty-sync-count'] ?? 0, passFromEvents),
    wallTimeMs,
  };
  const why = info['error-desc'] ?? (info['x-livemig-error-desc'] as string | undefined);
  if (why !== undefined) report.errorDesc = why;
  if (info['total-time'] !== undefined) report.totalTimeMs = info['total-time'];
  if (info.downtime !== undefined) report.downtimeMs = info.downtime;
  if (info['setup-time'] !== undefined) report.setupTimeMs = info['setup-time'];
  if (ram) report.transferredBytes = ram.transferred;
  if (info.disk) {
    report.diskBytes = info.disk.total;
    report.diskTransferredBytes = report.status === 'completed' ? info.disk.total : info.disk.transferred;
  }
  const own = info['x-livemig-progress'] as ProgressReport | undefined;
  const percent = (own ?? progress)?.percent;
  if (percent !== undefined) report.percent = percent;
  const limit = (info['x-livemig-downtime-limit-ms'] as number | undefined) ?? downtimeLimitMs;
  if (limit !== undefined) report.downtimeLimitMs = limit;
  if (report.downtimeMs !== undefined) {
    const explanation = explainDowntime(report.downtimeMs, limit, info['x-livemig-downtime-phases'] as Parameters<typeof explainDowntime>[2]);
    if (explanation) report.downtimeExplanation = explanation;
  }
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
    ...(report.diskTransferredBytes !== undefined && { 'disk-transferred': report.diskTransferredBytes }),
    ...(report.percent !== undefined && { percent: report.percent }),
    ...(report.downtimeLimitMs !== undefined && { 'downtime-limit': report.downtimeLimitMs }),
    ...(report.downtimeExplanation !== undefined && { 'downtime-over-limit': report.downtimeExplanation }),
    passes: report.passes,
    'wall-time': Math.round(report.wallTimeMs),
  };
}

/** " at 80% (pass 5)": how far a failed or cancelled migration got; nothing when it got nowhere (the reason says it all). */
export function reachedText(percent: number | undefined, passes: number): string {
  if (percent === undefined || (percent === 0 && passes === 0)) return '';
  return ` at ${Math.floor(percent)}% (pass ${passes})`;
}

export function formatReport(report: MigrationReport): string {
  const took = report.totalTimeMs ?? report.wallTimeMs;
  // The reason of a failure goes to stderr (livemig: migration failed: ...), not here twice.
  const ended = report.status === 'failed' || report.status === 'cancelled';
  const reached = ended ? reachedText(report.percent, report.passes) : '';
  const lines = [`Migration ${report.status} after ${formatDuration(took)}${reached}`];
  const row = (name: string, value: string): number => lines.push(`  ${name.padEnd(13)}${value}`);
  row('total time', formatDuration(took));
  if (report.downtimeMs !== undefined) {
    const limit = report.downtimeLimitMs !== undefined ? (report.downtimeExplanation ? `, OVER the ${report.downtimeLimitMs} ms limit` : ` (limit ${report.downtimeLimitMs} ms)`) : '';
    row('downtime', formatDuration(report.downtimeMs) + limit);
    if (report.downtimeExplanation) lines.push(`    ${report.downtimeExplanation.replace(/^.*?limit of \d+ ms: /, 'where it went: ')}`);
  }
  if (report.setupTimeMs !== undefined) row('setup time', formatDuration(report.setupTimeMs));
  if (report.transferredBytes !== undefined) row('transferred', `${formatBytes(report.transferredBytes)} (${report.transferredBytes} bytes)`);
  if (report.averageMbps !== undefined) row('throughput', `${formatMbps(report.averageMbps)} average`);
  if (report.diskBytes !== undefined) {
    const copied = report.diskTransferredBytes ?? 0;
    row('disks', report.status === 'completed' ? `${formatBytes(report.diskBytes)} copied` : `${formatBytes(copied)} of ${formatBytes(report.diskBytes)} sent, not copied (the migration ${report.status})`);
  } else if (report.disksRequested && report.status !== 'completed') {
    row('disks', `not copied (the migration ${report.status})`);
  }
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
      else lines.push(`  ${key}: ${jsonText(value)}`);
    }
  }
  const shown = new Set(['status', 'error-desc', 'total-time', 'setup-time', 'expected-downtime', 'downtime', 'cpu-throttle-percentage', 'ram']);
  for (const [key, value] of Object.entries(info)) {
    if (!shown.has(key)) lines.push(`${key}: ${jsonText(value)}`);
  }
  return lines.join('\n');
}
