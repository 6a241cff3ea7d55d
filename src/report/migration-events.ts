/**
 * One migration, read back from JSON lines: `livemig run --migrate-to ... --json`
 * (events; `progress`/`completed`/`failed`/`cancelled` carry query-migrate's
 * answer as `info`) or `livemig migrate --json` (each line a query-migrate
 * answer, then a `{final: true, ...}` summary). Pure: the caller reads the file.
 *
 * Per-pass figures come from the source's `x-livemig-progress.passes` when it
 * has them (livemig's source); otherwise they are derived from successive
 * snapshots (dirty-sync-count, ram.transferred, ram.remaining,
 * dirty-pages-rate, mbps, total-time), so a QEMU source draws too, at the
 * resolution of the polling.
 */

/** Thrown for a file that is not one migration's JSON lines; names the line. */
export class ReportInputError extends Error {
  override name = 'ReportInputError';
}

export interface PassFigures {
  /** 1-based: the dirty-sync-count during (derived) or at the end of (model) the pass. */
  pass: number;
  startMs: number;
  durationMs: number;
  sentBytes: number;
  /** Unknown for a derived pass without a dirty rate. */
  dirtiedBytes?: number;
  remainingBytes?: number;
  dirtyRateBytesPerSecond?: number;
  throughputBytesPerSecond?: number;
}

export interface RatePoint {
  timeMs: number;
  dirtyRateBytesPerSecond: number;
  throughputBytesPerSecond: number;
}

export interface DowntimePhasesMs {
  pause: number;
  complete: number;
  flush: number;
  confirm: number;
}

export interface MigrationRecord {
  /** Which command wrote the file. */
  format: 'livemig run --json' | 'livemig migrate --json';
  /** The last status: completed, failed, cancelled, ... or the last one seen (an unfinished file). */
  outcome: string;
  reason?: string;
  errorCode?: string;
  totalTimeMs?: number;
  setupTimeMs?: number;
  downtimeMs?: number;
  downtimeLimitMs?: number;
  downtimePhasesMs?: DowntimePhasesMs;
  /** Why the source switched over when it did (livemig run's `switchover.reason`). */
  switchoverReason?: string;
  transferredBytes?: number;
  ramTotalBytes?: number;
  disk?: { transferredBytes: number; remainingBytes: number; totalBytes: number };
  /** dirty-sync-count at the end (passes over RAM). */
  passCount: number;
  passes: PassFigures[];
  /** True when `passes` is the source's own model (x-livemig-progress), false when derived from snapshots. */
  passesFromSource: boolean;
  rates: RatePoint[];
  snapshots: number;
  /** From the source's model (x-livemig-progress), latest snapshot: dirty rate / throughput and its trend. */
  convergenceRatio?: number;
  trend?: string;
  /** The model's diagnosis after passes without progress, and the levers it names. */
  diagnosis?: { summary: string; levers: string[] };
}

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** Events of `livemig run --json` that carry a query-migrate answer as `info`. */
const INFO_EVENTS = new Set(['progress', 'completed', 'failed', 'cancelled', 'cancelling', 'postcopy-paused']);
/** Events only the destination (`run --incoming`) writes. */
const DESTINATION_EVENTS = new Set(['listening', 'loaded', 'resumed', 'waiting', 'rejected', 'recovering']);

interface Snapshot {
  line: number;
  info: Json;
}

/** Parses the file's text; `name` (the file's name) goes into error messages. */
export function parseMigrationEvents(text: string, name = 'the input'): MigrationRecord {
  const snapshots: Snapshot[] = [];
  let format: MigrationRecord['format'] | undefined;
  let final: Json | undefined;
  let switchover: Json | undefined;
  let lastStatus: string | undefined;
  let destinationEvents = 0;
  const lines = text.split('\n');
  lines.forEach((raw, index) => {
    const line = raw.trim();
    const n = index + 1;
    if (line === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      const hint = snapshots.length === 0 && format === undefined ? '; was it written with --json?' : '';
      throw new ReportInputError(`${name}, line ${n}: not JSON (${(err as Error).message}): ${line.length > 60 ? line.slice(0, 60) + '...' : line}${hint}`);
    }
    if (!isObject(value)) throw new ReportInputError(`${name}, line ${n}: a JSON ${Array.isArray(value) ? 'array' : typeof value}, not an object (expected a livemig run --json event or a query-migrate answer)`);
    const event = value.event;
    if (event !== undefined) {
      if (typeof event !== 'string') throw new ReportInputError(`${name}, line ${n}: 'event' is ${JSON.stringify(event)}, not a string`);
      format ??= 'livemig run --json';
      if (DESTINATION_EVENTS.has(event)) destinationEvents++;
      if (event === 'status' && typeof value.status === 'string') lastStatus = value.status;
      if (INFO_EVENTS.has(event)) {
        if (!isObject(value.info)) throw new ReportInputError(`${name}, line ${n}: event '${event}' has no 'info' object (query-migrate's answer)`);
        snapshots.push({ line: n, info: value.info });
        if (event === 'completed' && isObject(value.switchover)) switchover = value.switchover;
      }
      return;
    }
    if (value.final === true) {
      format ??= 'livemig migrate --json';
      final = value;
      return;
    }
    if (Object.keys(value).length === 0) return; // query-migrate before any migration: status none
    if (typeof value.status !== 'string') throw new ReportInputError(`${name}, line ${n}: neither a livemig run --json event (no 'event') nor a query-migrate answer (no 'status')`);
    format ??= 'livemig migrate --json';
    snapshots.push({ line: n, info: value });
  });
  if (snapshots.length === 0 && !final) {
    const hint = destinationEvents > 0 ? ": this looks like the destination's output (run --incoming); the report is drawn from the source's (run --migrate-to ... --json or migrate --json)" : '';
    throw new ReportInputError(`${name} holds no migration: no query-migrate answer and no progress event${hint}`);
  }
  return buildRecord(format!, snapshots, final, switchover, lastStatus);
}

function buildRecord(format: MigrationRecord['format'], snapshots: Snapshot[], final: Json | undefined, switchover: Json | undefined, lastStatus: string | undefined): MigrationRecord {
  const infos = snapshots.map((s) => s.info);
  const last = infos[infos.length - 1] ?? {};
  const lastRam = [...infos].reverse().map((i) => i.ram).find(isObject);
  const outcome = str(final?.status) ?? str(last.status) ?? lastStatus ?? 'unknown';
  const record: MigrationRecord = {
    format,
    outcome,
    passCount: num(lastRam?.['dirty-sync-count']) ?? num(final?.passes) ?? 0,
    passes: [],
    passesFromSource: false,
    rates: [],
    snapshots: snapshots.length,
  };
  const reason = str(final?.['error-desc']) ?? str(last['error-desc']);
  if (reason !== undefined) record.reason = reason;
  const code = str(last['x-livemig-error-code']);
  if (code !== undefined) record.errorCode = code;
  const total = num(final?.['total-time']) ?? num(last['total-time']);
  if (total !== undefined) record.totalTimeMs = total;
  const setup = num(final?.['setup-time']) ?? num(last['setup-time']);
  if (setup !== undefined) record.setupTimeMs = setup;
  const downtime = num(final?.downtime) ?? num(last.downtime);
  if (downtime !== undefined) record.downtimeMs = downtime;
  const transferred = num(final?.transferred) ?? num(lastRam?.transferred);
  if (transferred !== undefined) record.transferredBytes = transferred;
  const ramTotal = num(lastRam?.total);
  if (ramTotal !== undefined) record.ramTotalBytes = ramTotal;

  const limit = num(last['x-livemig-downtime-limit-ms']) ?? num(switchover?.downtimeLimitMs);
  if (limit !== undefined) record.downtimeLimitMs = limit;
  const phases = phasesOf(last['x-livemig-downtime-phases'], ['pause-ms', 'complete-ms', 'flush-ms', 'confirm-ms']) ?? phasesOf(switchover?.downtimePhasesMs, ['pause', 'complete', 'flush', 'confirm']);
  if (phases) record.downtimePhasesMs = phases;
  const why = str(switchover?.reason);
  if (why !== undefined) record.switchoverReason = why;

  const progress = [...infos].reverse().map((i) => i['x-livemig-progress']).find(isObject);
  const modelDisk = isObject(progress?.disk) ? progress.disk : undefined;
  const disk = [...infos].reverse().map((i) => i.disk).find(isObject);
  if (modelDisk && num(modelDisk['total-bytes']) !== undefined) {
    record.disk = { transferredBytes: num(modelDisk['transferred-bytes']) ?? 0, remainingBytes: num(modelDisk['remaining-bytes']) ?? 0, totalBytes: num(modelDisk['total-bytes'])! };
  } else if (disk && num(disk.total) !== undefined) {
    record.disk = { transferredBytes: num(disk.transferred) ?? 0, remainingBytes: num(disk.remaining) ?? 0, totalBytes: num(disk.total)! };
  }

  const ratio = num(progress?.['convergence-ratio']);
  if (ratio !== undefined) record.convergenceRatio = ratio;
  const trend = str(progress?.trend);
  if (trend !== undefined) record.trend = trend;
  // The diagnosis may be dropped from the last snapshot (a completed one); keep the latest one given.
  const diagnosis = [...infos].reverse().map((i) => (isObject(i['x-livemig-progress']) ? i['x-livemig-progress'].diagnosis : undefined)).find(isObject);
  if (diagnosis && typeof diagnosis.summary === 'string') {
    record.diagnosis = { summary: diagnosis.summary, levers: Array.isArray(diagnosis.levers) ? diagnosis.levers.filter((l): l is string => typeof l === 'string') : [] };
  }

  const modelPasses = passesFromModel(infos);
  if (modelPasses.length > 0) {
    record.passes = modelPasses;
    record.passesFromSource = true;
    record.passCount = Math.max(record.passCount, modelPasses[modelPasses.length - 1]!.pass);
  } else {
    record.passes = passesFromSnapshots(infos);
  }
  record.rates = ratesOf(infos, record.passesFromSource ? record.passes : undefined);
  return record;
}

function phasesOf(value: unknown, keys: [string, string, string, string]): DowntimePhasesMs | undefined {
  if (!isObject(value)) return undefined;
  const [pause, complete, flush, confirm] = keys.map((k) => num(value[k]));
  if (pause === undefined && complete === undefined && flush === undefined && confirm === undefined) return undefined;
  return { pause: pause ?? 0, complete: complete ?? 0, flush: flush ?? 0, confirm: confirm ?? 0 };
}

/** The union over snapshots of `x-livemig-progress.passes` (each holds at most the last 100), by pass number. */
function passesFromModel(infos: Json[]): PassFigures[] {
  const byPass = new Map<number, PassFigures>();
  for (const info of infos) {
    const progress = info['x-livemig-progress'];
    // A model `livemig migrate` derived from a QEMU source's snapshots: derive the passes here instead, from the same snapshots.
    if (!isObject(progress) || !Array.isArray(progress.passes) || progress.derived === true) continue;
    for (const p of progress.passes) {
      if (!isObject(p)) continue;
      const pass = num(p.pass);
      if (pass === undefined) continue;
      const figures: PassFigures = { pass, startMs: num(p['start-ms']) ?? 0, durationMs: num(p['duration-ms']) ?? 0, sentBytes: num(p['sent-bytes']) ?? 0 };
      const dirtied = num(p['dirtied-bytes']);
      if (dirtied !== undefined) figures.dirtiedBytes = dirtied;
      const remaining = num(p['remaining-bytes']);
      if (remaining !== undefined) figures.remainingBytes = remaining;
      const dirtyRate = num(p['dirty-rate-bytes-per-second']);
      if (dirtyRate !== undefined) figures.dirtyRateBytesPerSecond = dirtyRate;
      const throughput = num(p['throughput-bytes-per-second']);
      if (throughput !== undefined) figures.throughputBytesPerSecond = throughput;
      byPass.set(pass, figures);
    }
  }
  return [...byPass.values()].sort((a, b) => a.pass - b.pass);
}

interface Sample {
  timeMs: number;
  sync: number;
  transferred: number;
  remaining?: number;
  dirtyBytesPerSecond?: number;
  throughputBytesPerSecond?: number;
}

/**
 * The snapshots with figures, in time order; a completed one last, whatever
 * its total-time says. QEMU 7.2 reports the running total (now − start) until
 * the status is completed, then the total it computes after that (0 until
 * then): a snapshot polled during the completion can read more than the
 * final total, and one polled at completion can read 0. Sorted by time
 * alone, the completed figures would not be the last, and the passes would
 * not add up to what was sent.
 */
function samplesOf(infos: Json[]): Sample[] {
  const samples: Sample[] = [];
  const completed: Sample[] = [];
  for (const info of infos) {
    const ram = info.ram;
    const t = num(info['total-time']);
    if (!isObject(ram) || t === undefined) continue;
    const pageSize = num(ram['page-size']) ?? 4096;
    const sample: Sample = { timeMs: t, sync: num(ram['dirty-sync-count']) ?? 0, transferred: num(ram.transferred) ?? 0 };
    const remaining = num(ram.remaining);
    if (remaining !== undefined) sample.remaining = remaining;
    const rate = num(ram['dirty-pages-rate']);
    if (rate !== undefined) sample.dirtyBytesPerSecond = rate * pageSize;
    const mbps = num(ram.mbps);
    if (mbps !== undefined) sample.throughputBytesPerSecond = (mbps * 1e6) / 8;
    (info.status === 'completed' ? completed : samples).push(sample);
  }
  samples.sort((a, b) => a.timeMs - b.timeMs);
  const lastMs = samples.at(-1)?.timeMs ?? 0;
  return [...samples, ...completed.map((c) => ({ ...c, timeMs: Math.max(c.timeMs, lastMs) })).sort((a, b) => a.transferred - b.transferred)];
}

/**
 * Passes from snapshots: pass p is the span while dirty-sync-count read p; it
 * starts at the first snapshot showing p and ends at the first showing more
 * (or the last snapshot). Passes that began and ended between two snapshots
 * are counted in the pass before them (the polling could not see them).
 */
function passesFromSnapshots(infos: Json[]): PassFigures[] {
  const samples = samplesOf(infos);
  const passes: PassFigures[] = [];
  let start: Sample | undefined;
  let startTransferred = 0;
  let startTime = 0;
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i]!;
    if (!start) {
      start = s;
      continue;
    }
    if (s.sync !== start.sync || i === samples.length - 1) {
      const end = s;
      const durationMs = Math.max(0, end.timeMs - startTime);
      const figures: PassFigures = { pass: start.sync, startMs: startTime, durationMs, sentBytes: Math.max(0, end.transferred - startTransferred) };
      const prev = samples[i - 1]!;
      if (prev.remaining !== undefined) figures.remainingBytes = prev.remaining;
      if (prev.dirtyBytesPerSecond !== undefined) {
        figures.dirtyRateBytesPerSecond = prev.dirtyBytesPerSecond;
        figures.dirtiedBytes = Math.round((prev.dirtyBytesPerSecond * durationMs) / 1000);
      }
      if (durationMs > 0) figures.throughputBytesPerSecond = (figures.sentBytes * 1000) / durationMs;
      passes.push(figures);
      startTransferred = end.transferred;
      startTime = end.timeMs;
      start = s;
    }
  }
  if (passes.length === 0 && samples.length === 1 && samples[0]!.transferred > 0) {
    // One snapshot (e.g. only the final answer): one bar for everything that was sent.
    const s = samples[0]!;
    passes.push({ pass: Math.max(1, s.sync), startMs: 0, durationMs: s.timeMs, sentBytes: s.transferred });
  }
  return passes;
}

function ratesOf(infos: Json[], modelPasses: PassFigures[] | undefined): RatePoint[] {
  if (modelPasses && modelPasses.length > 0) {
    // A pass's rates hold for its whole span: a step per pass. Passes that sent nothing (the sync at
    // setup, the last one taken with the guest stopped) have no throughput to show.
    return modelPasses
      .filter((p) => p.sentBytes > 0 && p.durationMs > 0)
      .flatMap((p) => {
        const rate = { dirtyRateBytesPerSecond: p.dirtyRateBytesPerSecond ?? 0, throughputBytesPerSecond: p.throughputBytesPerSecond ?? 0 };
        return [{ timeMs: p.startMs, ...rate }, { timeMs: p.startMs + p.durationMs, ...rate }];
      });
  }
  // The final answer of a completed migration reports its averages, not a live rate: leave it out.
  return samplesOf(infos.filter((i) => i.status !== 'completed'))
    .filter((s) => s.dirtyBytesPerSecond !== undefined || s.throughputBytesPerSecond !== undefined)
    .map((s) => ({ timeMs: s.timeMs, dirtyRateBytesPerSecond: s.dirtyBytesPerSecond ?? 0, throughputBytesPerSecond: s.throughputBytesPerSecond ?? 0 }));
}
