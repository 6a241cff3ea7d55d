/**
 * The progress model: what a migration's figures mean, as one pure model used by the source
 * (query-migrate's `x-livemig-progress`), `livemig migrate` (also against a QEMU source, from
 * successive query-migrate snapshots), `livemig run` and the demo. No I/O, no clock: times are inputs.
 *
 * A pass ends at each dirty-bitmap sync (dirty-sync-count). Per pass: bytes put on the wire,
 * bytes the guest dirtied, what remains at its end, and the rates they make.
 *
 * Percent (never decreases within one migration; 100 only once completed):
 *   - the first pass over RAM (and the disks' bulk copy) fills FIRST_PASS_PERCENT in proportion
 *     to the bytes it has covered;
 *   - later passes close the rest (up to 99) in proportion to how far the remaining bytes at a
 *     pass's end have come down from the first pass's towards the switchover threshold
 *     (throughput × downtime-limit). A migration that does not converge therefore stays where its
 *     first pass left it, instead of filling the bar and falling back at every sync;
 *   - the switchover (guest stopped) shows 99; completed 100; failed and cancelled keep theirs.
 *
 * Convergence: the ratio of the guest's dirty rate to the rate at which the migration clears
 * dirty pages (pages sent × page size per second; for raw pages that is the wire throughput,
 * with XBZRLE or zero pages it is more). Below 1 the remaining bytes shrink.
 */

/** The share of the bar the first pass over RAM (and the disks' bulk copy) fills. */
export const FIRST_PASS_PERCENT = 80;
/** Where the bar stays until the migration has completed. */
export const BEFORE_COMPLETION_PERCENT = 99;
/** Passes kept (the oldest dropped). */
export const MAX_PASSES_KEPT = 100;
/** Rates are taken over the latest passes covering at least this long (one short pass says little). */
export const RATE_WINDOW_MS = 1000;
/** Passes after the first full one without the remaining bytes coming down before the diagnosis is given. */
export const PASSES_WITHOUT_PROGRESS = 4;
/** ... and at least this long since the first full pass ended. */
export const MIN_STUCK_MS = 1500;
/** A convergence ratio at or above this is not converging (unless remaining visibly falls). */
export const NOT_CONVERGING_RATIO = 0.95;
/** Remaining must fall below this share of its earlier minimum to count as progress. */
const PROGRESS_FACTOR = 0.9;
const DEFAULT_PAGE_SIZE = 4096;

export type ProgressPhase = 'setup' | 'first-pass' | 'iterate' | 'postcopy' | 'switchover' | 'completed' | 'failed' | 'cancelled';

/** One finished pass, as in query-migrate's `x-livemig-progress.passes`. */
export interface ProgressPass {
  /** 1-based: dirty-sync-count at its end. */
  pass: number;
  'start-ms': number;
  'duration-ms': number;
  /** Bytes put on the wire during this pass. */
  'sent-bytes': number;
  /** Bytes the guest dirtied during this pass (newly dirty pages × page size, from the sync at its end). */
  'dirtied-bytes': number;
  /** Remaining at the end of this pass (after its sync). */
  'remaining-bytes': number;
  'dirty-rate-bytes-per-second': number;
  'throughput-bytes-per-second': number;
}

/** query-migrate's `x-livemig-progress`. */
export interface ProgressReport {
  percent: number;
  phase: ProgressPhase;
  passes: ProgressPass[];
  /** Dirty rate over the rate dirty pages are cleared, latest passes: below 1 converges. */
  'convergence-ratio'?: number;
  trend?: 'converging' | 'steady' | 'diverging';
  /** From the model; absent when not converging or unknown. */
  'eta-ms'?: number;
  converging?: boolean;
  diagnosis?: { summary: string; levers: string[] };
  disk?: { 'transferred-bytes': number; 'remaining-bytes': number; 'total-bytes': number; percent: number };
  /** True when a client derived this from the source's plain snapshots (a QEMU source), not the source from its own figures. */
  derived?: boolean;
}

/** One query-migrate's figures (the source's own, or a QEMU's), in the model's terms. */
export interface ProgressObservation {
  status: string;
  /** Since the migration started. */
  elapsedMs: number;
  ram?: {
    totalBytes: number;
    remainingBytes: number;
    /** On the wire so far (QEMU's `transferred`). */
    transferredBytes: number;
    /** Pages dealt with so far: normal + duplicate (+ xbzrle); lets a client derive cleared bytes. */
    pagesSent?: number;
    pageSize?: number;
    dirtySyncCount: number;
    /** The live window's rates (QEMU's pages-per-second, mbps, dirty-pages-rate). */
    pagesPerSecond?: number;
    mbps?: number;
    dirtyPagesRate?: number;
  };
  disk?: { transferredBytes: number; remainingBytes: number; totalBytes: number };
  /** The source's own: all it still has to send (RAM, the disks' dirty chunks, device state), bytes. */
  pendingBytes?: number;
  throttlePercent?: number;
}

/** What the levers depend on: the migration's settings, as far as they are known. */
export interface ProgressSettings {
  downtimeLimitMs?: number;
  /** 0 = unlimited. */
  maxBandwidthBytesPerSecond?: number;
  capabilities?: { 'auto-converge'?: boolean; xbzrle?: boolean; 'postcopy-ram'?: boolean };
  /** Disks are copied: postcopy is not possible with them. */
  copiesDisks?: boolean;
  /** x-livemig-peer-timeout-ms (livemig sources): how long the destination may take no data before the source fails. */
  peerTimeoutMs?: number;
}

/** A first pass that stalls with less than this going out is the link's or the destination's doing, not the guest's. */
const LINK_STALLED_BYTES_PER_SECOND = 1_000_000;

/** What the source knows at a sync (exact dirtied bytes); a client derives the same from snapshots. */
export interface PassSample {
  atMs: number;
  dirtySyncCount: number;
  transferredBytes: number;
  pagesSent: number;
  remainingBytes: number;
  /** Newly dirty pages found by this sync × page size. */
  dirtiedBytes: number;
  pageSize?: number;
}

interface PassInternal extends ProgressPass {
  clearedBytes: number;
}

interface PassEnd {
  atMs: number;
  transferredBytes: number;
  pagesSent: number;
  remainingBytes: number;
  dirtySyncCount: number;
  pageSize?: number;
}

const mb = (bytesPerSecond: number): string => `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;
const mib = (bytes: number): string => (bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(1)} GiB` : `${(bytes / (1 << 20)).toFixed(1)} MiB`);
const clamp01 = (x: number): number => (Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0);
const round = (x: number): number => Math.round(x);

export class ProgressModel {
  private readonly passes: PassInternal[] = [];
  private lastEnd: PassEnd | undefined;
  private percentShown = 0;
  private firstFullPassRemaining: number | undefined;
  private firstFullPassEndMs: number | undefined;
  /** Set once a sample came from the source itself: snapshots then no longer derive passes. */
  private exactSamples = false;
  private last: ProgressReport | undefined;
  /** When every RAM page and disk chunk had been sent once (the first pass over everything ended). */
  private firstPassDoneMs: number | undefined;
  /** The work figure behind the percent, and when it last moved (a first pass can stall: nothing of RAM goes out). */
  private lastWorkPercent = -1;
  private lastAdvanceMs = 0;
  /** Postcopy: the percent and RAM remaining when it began (the rest of the bar follows what is still missing). */
  private postcopyStart: { percent: number; remainingBytes: number } | undefined;

  constructor(private readonly settings: () => ProgressSettings = () => ({})) {}

  /** The source, at each dirty-bitmap sync (outgoing.ts). */
  recordPass(sample: PassSample): void {
    this.exactSamples = true;
    this.addPass(sample, sample.dirtiedBytes);
  }

  private addPass(end: PassEnd, dirtiedBytes: number | undefined): void {
    const prev = this.lastEnd;
    this.lastEnd = { ...end };
    if (!prev) {
      // The first sync (setup: every page dirty) is pass 1: nothing sent before it.
      this.pushPass({ pass: end.dirtySyncCount, 'start-ms': 0, 'duration-ms': round(end.atMs), 'sent-bytes': 0, 'dirtied-bytes': 0, 'remaining-bytes': end.remainingBytes, 'dirty-rate-bytes-per-second': 0, 'throughput-bytes-per-second': 0, clearedBytes: 0 });
      return;
    }
    const durationMs = Math.max(0, end.atMs - prev.atMs);
    const sent = Math.max(0, end.transferredBytes - prev.transferredBytes);
    const pageSize = end.pageSize ?? DEFAULT_PAGE_SIZE;
    const cleared = Math.max(0, end.pagesSent - prev.pagesSent) * pageSize;
    // remaining_end = remaining_start − cleared + dirtied: a client without the sync's own count derives it so.
    const dirtied = dirtiedBytes ?? Math.max(0, end.remainingBytes - prev.remainingBytes + cleared);
    const perSecond = (bytes: number): number => (durationMs > 0 ? round((bytes * 1000) / durationMs) : 0);
    this.pushPass({
      pass: end.dirtySyncCount,
      'start-ms': round(prev.atMs),
      'duration-ms': round(durationMs),
      'sent-bytes': sent,
      'dirtied-bytes': dirtied,
      'remaining-bytes': end.remainingBytes,
      'dirty-rate-bytes-per-second': perSecond(dirtied),
      'throughput-bytes-per-second': perSecond(sent),
      clearedBytes: cleared,
    });
    if (this.firstFullPassRemaining === undefined && end.dirtySyncCount >= 2) {
      this.firstFullPassRemaining = end.remainingBytes;
      this.firstFullPassEndMs = end.atMs;
    }
  }

  private pushPass(p: PassInternal): void {
    this.passes.push(p);
    if (this.passes.length > MAX_PASSES_KEPT) this.passes.shift();
  }

  /** A query-migrate snapshot: the report for it (passes derived from dirty-sync-count changes unless the source recorded them). */
  observe(o: ProgressObservation): ProgressReport {
    const ram = o.ram;
    const ended = o.status === 'completed' || o.status === 'failed' || o.status === 'cancelled';
    if (ram && !this.exactSamples && !ended) {
      const sync = ram.dirtySyncCount;
      if (!this.lastEnd || sync > this.lastEnd.dirtySyncCount) {
        this.addPass({ atMs: o.elapsedMs, transferredBytes: ram.transferredBytes, pagesSent: ram.pagesSent ?? 0, remainingBytes: ram.remainingBytes, dirtySyncCount: sync, ...(ram.pageSize !== undefined && { pageSize: ram.pageSize }) }, undefined);
      }
    }
    // The first pass is over once every page and chunk went out once (a sync may not follow while the disks keep it busy).
    if (this.firstPassDoneMs === undefined && ram && o.status === 'active' && (ram.dirtySyncCount >= 2 || (ram.remainingBytes === 0 && (o.disk?.remainingBytes ?? 0) === 0))) this.firstPassDoneMs = o.elapsedMs;
    const phase = phaseOf(o.status, this.firstFullPassRemaining !== undefined || this.firstPassDoneMs !== undefined || (ram?.dirtySyncCount ?? 0) >= 2, this.last?.phase);
    const report: ProgressReport = { percent: 0, phase, passes: this.passes.map(({ clearedBytes: _, ...p }) => p) };
    const settings = this.settings();
    const rates = this.rates(o);
    if (rates.ratio !== undefined) report['convergence-ratio'] = Math.round(rates.ratio * 1000) / 1000;
    const trend = this.trend();
    if (trend) report.trend = trend;
    const thresholdBytes = rates.throughput !== undefined && settings.downtimeLimitMs !== undefined ? (rates.throughput * settings.downtimeLimitMs) / 1000 : undefined;
    if (o.disk && o.disk.totalBytes > 0) {
      report.disk = {
        'transferred-bytes': o.disk.transferredBytes,
        'remaining-bytes': o.disk.remainingBytes,
        'total-bytes': o.disk.totalBytes,
        percent: Math.floor(clamp01(o.disk.transferredBytes / o.disk.totalBytes) * 100),
      };
    }
    // Percent.
    let percent = this.percentShown;
    if (phase === 'completed') percent = 100;
    else if (phase === 'switchover') percent = Math.max(percent, BEFORE_COMPLETION_PERCENT);
    else if (phase === 'postcopy' && ram) {
      this.postcopyStart ??= { percent: this.percentShown, remainingBytes: Math.max(1, ram.remainingBytes) };
      const start = this.postcopyStart;
      percent = Math.max(percent, start.percent + (BEFORE_COMPLETION_PERCENT - start.percent) * clamp01(1 - ram.remainingBytes / start.remainingBytes));
      // What is still missing on the destination, at the rate it goes out (the guest's requests come first).
      const live = liveRates(o).throughput;
      if (live && live > 0 && o.status === 'postcopy-active') report['eta-ms'] = round((ram.remainingBytes * 1000) / live);
    } else if (!ended && ram) {
      const work = this.workPercent(o, thresholdBytes);
      if (work > this.lastWorkPercent + 0.01) {
        this.lastWorkPercent = work;
        this.lastAdvanceMs = o.elapsedMs;
      }
      percent = Math.max(percent, work);
    }
    percent = phase === 'completed' ? 100 : Math.min(BEFORE_COMPLETION_PERCENT, percent);
    this.percentShown = Math.max(this.percentShown, percent);
    report.percent = Math.floor(this.percentShown * 10) / 10;
    // Convergence, ETA, diagnosis: only while pre-copy iterates.
    if (!ended && ram && (phase === 'first-pass' || phase === 'iterate')) {
      const remaining = phase === 'iterate' && o.pendingBytes !== undefined ? o.pendingBytes : ram.remainingBytes;
      const stalledMs = phase === 'first-pass' && o.status === 'active' ? o.elapsedMs - this.lastAdvanceMs : 0;
      const stalled = stalledMs >= 2 * MIN_STUCK_MS;
      const stuck = stalled || this.stuck(o.elapsedMs, thresholdBytes) || this.stuckWithoutSync(o, thresholdBytes);
      // A ratio this close to 1 gains too little per pass to call it converging (an ETA of hours helps nobody).
      const notConverging = stuck || (rates.ratio !== undefined && rates.ratio >= NOT_CONVERGING_RATIO && phase === 'iterate' && trend !== 'converging' && this.laterPasses().length >= 2);
      if (phase === 'iterate' && (rates.ratio !== undefined || stuck)) report.converging = !notConverging;
      if (!notConverging) {
        const eta = etaMs(remaining, rates, thresholdBytes, phase, o);
        if (eta !== undefined) report['eta-ms'] = round(eta);
      }
      if (stuck) report.diagnosis = this.diagnose(remaining, rates, thresholdBytes, settings, o, stalled ? stalledMs : undefined);
    }
    this.last = report;
    return report;
  }

  /** The passes after the first full one. */
  private laterPasses(): PassInternal[] {
    return this.passes.filter((p) => p.pass >= 3);
  }

  /** Rates over the latest passes covering RATE_WINDOW_MS (the first full pass only when nothing later exists). */
  private rates(o: ProgressObservation): { dirty?: number; throughput?: number; clear?: number; ratio?: number } {
    const later = this.laterPasses();
    const pool = later.length > 0 ? later : this.passes.filter((p) => p.pass >= 2);
    let ms = 0;
    let sent = 0;
    let dirtied = 0;
    let cleared = 0;
    for (let i = pool.length - 1; i >= 0 && ms < RATE_WINDOW_MS; i--) {
      const p = pool[i]!;
      ms += p['duration-ms'];
      sent += p['sent-bytes'];
      dirtied += p['dirtied-bytes'];
      cleared += p.clearedBytes;
    }
    const live = liveRates(o);
    if (ms <= 0) return live; // first pass: only the live window's figures
    const out: { dirty?: number; throughput?: number; clear?: number; ratio?: number } = {
      dirty: (dirtied * 1000) / ms,
      throughput: (sent * 1000) / ms,
      clear: (cleared * 1000) / ms,
    };
    if (cleared > 0) out.ratio = dirtied / cleared;
    else if (dirtied > 0) out.ratio = Infinity;
    return out;
  }

  /** Remaining at the passes' ends: falling (converging), flat (steady) or rising (diverging), over the last few. */
  private trend(): ProgressReport['trend'] {
    const later = this.laterPasses();
    if (later.length < 2) return undefined;
    const recent = later.slice(-4);
    const first = recent[0]!['remaining-bytes'];
    const lastRemaining = recent.at(-1)!['remaining-bytes'];
    if (lastRemaining < first * PROGRESS_FACTOR) return 'converging';
    if (lastRemaining > first / PROGRESS_FACTOR) return 'diverging';
    return 'steady';
  }

  /** After PASSES_WITHOUT_PROGRESS later passes (and MIN_STUCK_MS) the remaining bytes have not come down meaningfully and stay above the threshold. */
  private stuck(nowMs: number, thresholdBytes: number | undefined): boolean {
    if (this.firstFullPassRemaining === undefined || this.firstFullPassEndMs === undefined) return false;
    const later = this.laterPasses();
    if (later.length < PASSES_WITHOUT_PROGRESS || nowMs - this.firstFullPassEndMs < MIN_STUCK_MS) return false;
    const recent = later.slice(-PASSES_WITHOUT_PROGRESS);
    const before = this.passes.filter((p) => p.pass >= 2 && !recent.includes(p));
    const earlierMin = Math.min(...before.map((p) => p['remaining-bytes']), this.firstFullPassRemaining);
    const recentMin = Math.min(...recent.map((p) => p['remaining-bytes']));
    const latest = recent.at(-1)!['remaining-bytes'];
    return recentMin >= earlierMin * PROGRESS_FACTOR && latest > (thresholdBytes ?? 0);
  }

  /**
   * No sync for long after the first pass: what is pending never fits the threshold, so the policy never even
   * checks (the disks' dirty chunks can do that: a guest writing all over its disk). Needs the source's pending figure.
   */
  private stuckWithoutSync(o: ProgressObservation, thresholdBytes: number | undefined): boolean {
    if (this.firstPassDoneMs === undefined || o.pendingBytes === undefined || this.laterPasses().length > 0) return false;
    if (this.firstFullPassRemaining !== undefined) return false;
    return o.elapsedMs - this.firstPassDoneMs >= 2 * MIN_STUCK_MS && o.pendingBytes > (thresholdBytes ?? 0);
  }

  /** First pass: its share of the work done; later: how far remaining has come towards the threshold. */
  private workPercent(o: ProgressObservation, thresholdBytes: number | undefined): number {
    const ram = o.ram!;
    const ramFraction = this.firstFullPassRemaining !== undefined || ram.dirtySyncCount >= 2 ? 1 : ram.totalBytes > 0 ? clamp01((ram.totalBytes - ram.remainingBytes) / ram.totalBytes) : 0;
    const diskTotal = o.disk?.totalBytes ?? 0;
    const diskFraction = diskTotal > 0 ? clamp01(o.disk!.transferredBytes / diskTotal) : 1;
    const work = ram.totalBytes + diskTotal;
    const firstFraction = work > 0 ? (ramFraction * ram.totalBytes + diskFraction * diskTotal) / work : ramFraction;
    let closeness = 0;
    const start = this.firstFullPassRemaining;
    if (start !== undefined) {
      const threshold = thresholdBytes ?? 0;
      const minRemaining = Math.min(...this.passes.filter((p) => p.pass >= 2).map((p) => p['remaining-bytes']));
      closeness = start <= threshold ? 1 : clamp01((start - minRemaining) / (start - threshold));
    }
    return FIRST_PASS_PERCENT * firstFraction + (BEFORE_COMPLETION_PERCENT - FIRST_PASS_PERCENT) * closeness * firstFraction;
  }

  private diagnose(remainingBytes: number, rates: { dirty?: number; throughput?: number; clear?: number; ratio?: number }, thresholdBytes: number | undefined, s: ProgressSettings, o: ProgressObservation, stalledMs?: number): { summary: string; levers: string[] } {
    const dirty = rates.dirty ?? 0;
    const throughput = rates.throughput ?? 0;
    const later = this.laterPasses().length;
    if (stalledMs !== undefined && throughput < LINK_STALLED_BYTES_PER_SECOND && !(o.disk && o.disk.remainingBytes === 0)) {
      // Nothing goes out: no setting of the guest's side helps (auto-converge, xbzrle and the rest would mislead).
      const timeout = s.peerTimeoutMs;
      return {
        summary:
          `no data has gone out for ${(stalledMs / 1000).toFixed(1)} s in the first pass (${mb(throughput)}): the destination is not taking it ` +
          `(busy, stopped, or the link is down); RAM remaining ${mib(o.ram?.remainingBytes ?? 0)} of ${mib(o.ram?.totalBytes ?? 0)}`,
        levers: [
          'the destination: is it running and reading? Its query-migrate and its log say',
          timeout !== undefined
            ? `x-livemig-peer-timeout-ms: the source fails the migration (its guest keeps running here) once the destination has taken no data for ${timeout} ms; raise it with migrate-set-parameters if the destination is only slow`
            : 'the source fails the migration (its guest keeps running here) once the destination has taken no data for its peer timeout',
        ],
      };
    }
    const since = this.firstPassDoneMs !== undefined ? ` (${((o.elapsedMs - this.firstPassDoneMs) / 1000).toFixed(1)} s)` : '';
    const parts = [
      stalledMs !== undefined
        ? `no progress for ${(stalledMs / 1000).toFixed(1)} s in the first pass: RAM remaining ${mib(o.ram?.remainingBytes ?? 0)} of ${mib(o.ram?.totalBytes ?? 0)} while ${mb(throughput)} go out${o.disk && o.disk.remainingBytes === 0 ? ", all of it to the disks' rewritten chunks (the guest writes its disks faster than they can be sent)" : ''}`
        : later > 0
        ? `not converging after ${later} passes since the first full one${since}: the guest dirties ${mb(dirty)} while ${mb(throughput)} go out`
        : `not converging: no pass has ended since the first${since}, what is pending never came near the switchover threshold; ${mb(throughput)} go out`,
    ];
    if (o.throttlePercent) parts.push(`(auto-converge throttles the guest at ${o.throttlePercent}% so far)`);
    if (o.disk && later === 0 && stalledMs === undefined) parts.push('(the guest keeps rewriting its disks: their dirty chunks count too)');
    if (rates.ratio !== undefined && Number.isFinite(rates.ratio)) parts.push(`(ratio ${rates.ratio.toFixed(2)})`);
    let summary = parts.join(' ') + `; remaining ${mib(remainingBytes)} stays above the switchover threshold`;
    if (thresholdBytes !== undefined && s.downtimeLimitMs !== undefined) summary += ` of ${mib(thresholdBytes)} (${mb(throughput)} × downtime-limit ${s.downtimeLimitMs} ms)`;
    const levers: string[] = [];
    const caps = s.capabilities ?? {};
    if (!caps['auto-converge'] && !(o.throttlePercent && o.throttlePercent > 0)) levers.push('auto-converge: migrate-set-capabilities auto-converge on (before migrate) throttles the guest until it converges');
    if (!caps.xbzrle) levers.push('xbzrle: migrate-set-capabilities xbzrle on (before migrate) sends rewritten pages as small deltas');
    if (!s.copiesDisks) {
      levers.push(caps['postcopy-ram'] ? 'postcopy: migrate-start-postcopy now moves the guest and sends the rest of its RAM on demand' : 'postcopy: migrate-set-capabilities postcopy-ram on both sides (before migrate), then migrate-start-postcopy');
    }
    if (throughput > 0) {
      const neededMs = Math.ceil((remainingBytes * 1000) / throughput / 100) * 100;
      if (s.downtimeLimitMs === undefined || neededMs > s.downtimeLimitMs) levers.push(`downtime-limit: raise it${s.downtimeLimitMs !== undefined ? ` from ${s.downtimeLimitMs} ms` : ''} to about ${neededMs} ms (remaining ${mib(remainingBytes)} at ${mb(throughput)}) with migrate-set-parameters`);
    }
    const cap = s.maxBandwidthBytesPerSecond ?? 0;
    if (cap > 0 && throughput >= cap * 0.8) levers.push(`max-bandwidth: the migration runs at its cap of ${mb(cap)}; raise it with migrate-set-parameters max-bandwidth`);
    return { summary, levers };
  }
}

function phaseOf(status: string, afterFirstPass: boolean, previous: ProgressPhase | undefined): ProgressPhase {
  switch (status) {
    case 'completed':
    case 'failed':
    case 'cancelled':
      return status;
    case 'device':
    case 'pre-switchover':
      return 'switchover';
    case 'setup':
    case 'none':
      return 'setup';
    case 'cancelling':
      return previous ?? 'setup';
    default:
      if (status.startsWith('postcopy')) return 'postcopy';
      return afterFirstPass ? 'iterate' : 'first-pass';
  }
}

/** The live window's figures (QEMU's pages-per-second, mbps, dirty-pages-rate), for before any full pass. */
function liveRates(o: ProgressObservation): { dirty?: number; throughput?: number; clear?: number } {
  const ram = o.ram;
  if (!ram) return {};
  const pageSize = ram.pageSize ?? DEFAULT_PAGE_SIZE;
  const out: { dirty?: number; throughput?: number; clear?: number } = {};
  if (ram.mbps !== undefined && ram.mbps > 0) out.throughput = (ram.mbps * 1e6) / 8;
  if (ram.pagesPerSecond !== undefined && ram.pagesPerSecond > 0) out.clear = ram.pagesPerSecond * pageSize;
  if (ram.dirtyPagesRate !== undefined && ram.dirtyPagesRate > 0) out.dirty = ram.dirtyPagesRate * pageSize;
  return out;
}

/**
 * The fluid model: remaining work shrinks at (clear rate − dirty rate) until it fits the threshold,
 * then the rest goes in the pause. In the first pass without a dirty rate yet: the time to finish
 * the first pass (a lower bound).
 */
function etaMs(remainingBytes: number, rates: { dirty?: number; throughput?: number; clear?: number }, thresholdBytes: number | undefined, phase: ProgressPhase, o: ProgressObservation): number | undefined {
  const clear = rates.clear ?? rates.throughput;
  if (clear === undefined || clear <= 0) return undefined;
  // The first pass has sent everything once: what the guest dirtied meanwhile is known only after the sync.
  if (phase === 'first-pass' && remainingBytes === 0 && (o.disk?.remainingBytes ?? 0) === 0) return undefined;
  const diskRemaining = o.disk?.remainingBytes ?? 0;
  const dirty = rates.dirty ?? 0;
  const net = clear - dirty;
  if (net <= 0) return undefined;
  const threshold = phase === 'first-pass' ? 0 : (thresholdBytes ?? 0);
  const above = Math.max(0, remainingBytes - threshold);
  const pauseMs = rates.throughput && rates.throughput > 0 ? (Math.min(remainingBytes, threshold) * 1000) / rates.throughput : 0;
  const diskMs = rates.throughput && rates.throughput > 0 ? (diskRemaining * 1000) / rates.throughput : 0;
  return (above * 1000) / net + pauseMs + diskMs;
}

/** Where a downtime over its limit went, in words (the source records the phases). */
export function explainDowntime(downtimeMs: number, limitMs: number | undefined, phases: { 'pause-ms': number; 'complete-ms': number; 'flush-ms': number; 'confirm-ms': number } | undefined): string | undefined {
  if (limitMs === undefined || downtimeMs <= limitMs) return undefined;
  const over = `downtime ${downtimeMs} ms is over the downtime-limit of ${limitMs} ms`;
  if (!phases) return `${over} (no breakdown: the source did not record its phases)`;
  const named: Array<[string, number]> = [
    ['stopping the guest', phases['pause-ms']],
    ['the last dirty pages and the device state', phases['complete-ms']],
    ['putting the rest on the wire', phases['flush-ms']],
    ["the destination's load until its confirmation", phases['confirm-ms']],
  ];
  const [worstName, worstMs] = named.reduce((a, b) => (b[1] > a[1] ? b : a));
  return `${over}: ${named.map(([name, ms]) => `${name} ${Math.round(ms)} ms`).join(', ')}; most of it went to ${worstName} (${Math.round(worstMs)} ms)`;
}
