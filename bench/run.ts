/**
 * `npm run bench` / `livemig bench`: the scenario runner (issue 7).
 *
 *   node dist/bench/run.js [--runs N] [--only a,b,c,d,v86|IDS] [--quick] [--bound-s S]
 *                          [--no-qemu] [--no-v86] [--write | --no-write]
 *
 * 1. Limits of this machine, measured in the same run: loopback TCP (a Node
 *    socket pair moving 2 GiB in 1 MiB writes; iperf3 too when installed) and
 *    memory copy.
 * 2. Each scenario (bench/scenarios.ts) `--runs` times (default 3), livemig
 *    then QEMU (when installed) in turn; each livemig run in fresh processes.
 *    A workload run that has not completed after the bound (default 20 s) is
 *    cancelled and counted as "did not converge".
 * 3. Tables: per scenario and engine the median and (min–max) of total time,
 *    downtime, wire bytes, throughput, passes, peak RSS, CPU seconds per GiB
 *    (source, destination); livemig/QEMU ratios; the targets of issues 7 and
 *    15 as figures of this run (printed, never asserted).
 *    Postcopy rows (issue 16) get a table of their own after the main one:
 *    when the switch came, the pause, the postcopy phase, blocktime, requested pages.
 * 4. The v86 running-guest migration (bench/v86.ts), its own table.
 * 5. Unless --quick (or --no-write), the results replace the generated section
 *    of docs/benchmarks.md (between the markers), with the command and the
 *    machine's facts; the hand-written history below it stays.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { parseArgs } from 'node:util';
import { iperf3BytesPerSecond, loopbackTcpBytesPerSecond, memoryCopyBytesPerSecond } from './limits.js';
import { qemuMigration } from './qemu-ref.js';
import { livemigHas, scenarios } from './scenarios.js';
import { makeTestPki } from '../test/helpers/certs.js';
import { FIRST_PASS_RULE, GiB, LineChild, type RunResult, type ScenarioSpec } from './util.js';
import type { V86BenchResult } from './v86.js';
import { BENCH_CHARTS_MARKDOWN, redrawBenchCharts, writeBenchCharts } from './chart-files.js';
import { BENCH_RESULTS_VERSION, type BenchResults } from './charts.js';

const { values: opts } = parseArgs({
  options: {
    runs: { type: 'string' },
    only: { type: 'string' },
    quick: { type: 'boolean', default: false },
    'bound-s': { type: 'string' },
    'no-qemu': { type: 'boolean', default: false },
    'no-v86': { type: 'boolean', default: false },
    write: { type: 'boolean', default: false },
    'no-write': { type: 'boolean', default: false },
    redraw: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});

if (opts.help) {
  console.log(`usage: node dist/bench/run.js [options]   (also: npm run bench -- [options], livemig bench [options])
  --runs N       runs per scenario (default 3; 1 with --quick)
  --only LIST    comma-separated groups (a, b, c, d, v86) or scenario ids (e.g. c-256m-50, c-unl-50-postcopy)
  --quick        a short smoke run: 1 run, 1 GiB sizes, two workload settings, 256 MiB disk, 10 s bound
  --bound-s S    cancel a workload run not completed after S seconds (default 20; 10 with --quick)
  --no-qemu      livemig only
  --no-v86       without the v86 running-guest table
  --write        write docs/benchmarks.md even with --quick;  --no-write  never write it
  --redraw       only redraw docs/bench-*.svg from docs/bench-results.json (no bench run)`);
  process.exit(0);
}

const MB = 1e6;
const MiB = 2 ** 20;
const quick = opts.quick;
const runs = Math.max(1, Number(opts.runs ?? (quick ? 1 : 3)));
const boundMs = Number(opts['bound-s'] ?? (quick ? 10 : 20)) * 1000;
const only = opts.only?.split(',').map((s) => s.trim()).filter(Boolean);
const withQemu = !opts['no-qemu'];
const write = !opts['no-write'] && (!quick || opts.write);
const selected = (s: ScenarioSpec): boolean => !only || only.includes(s.group) || only.includes(s.id);
const withV86 = !opts['no-v86'] && (!only || only.includes('v86'));

// ---------------------------------------------------------------------------------------------------------
// Running

async function childResult<T>(script: string, args: string[], what: string): Promise<T> {
  const child = new LineChild(process.execPath, [new URL(script, import.meta.url).pathname, ...args]);
  try {
    const result = await child.waitFor((line) => (line.startsWith('{') ? (JSON.parse(line) as T) : undefined), what);
    // Let it clean up (stop its destination, delete its temporary images) before it is told to stop.
    await child.exitWithin(30_000);
    return result;
  } finally {
    await child.stop();
  }
}

async function livemigRun(spec: ScenarioSpec): Promise<RunResult> {
  return childResult<RunResult>(spec.fill === 'disk' ? './disk.js' : './migrate-source.js', ['--spec', JSON.stringify(spec)], `livemig ${spec.id}`);
}

/**
 * The line of a failed run's message that says what went wrong: a child's
 * uncaught error prints its source line first and "Error: ..." further down
 * (a hung destination's set-up names its step and last lines there).
 */
function errorLine(message: string): string {
  const lines = message.split('\n');
  return lines.find((l) => /^\s*[A-Za-z]*Error: /.test(l))?.trim() ?? lines[0]!;
}

function failedRun(engine: RunResult['engine'], spec: ScenarioSpec, err: unknown): RunResult {
  return { engine, scenario: spec.id, status: 'error', converged: false, totalMs: NaN, wireBytes: NaN, passes: NaN, guestRamBytes: spec.ramBytes, sourceCpu: '?', destCpu: '?', error: err instanceof Error ? errorLine(err.message) : String(err) };
}

function describeRun(r: RunResult): string {
  if (r.status === 'error' || r.status === 'failed') return `${r.status}: ${r.error}`;
  const mbps = ((r.wireBytes / (r.totalMs / 1000)) / MB).toFixed(0);
  const p = r.postcopy;
  const pc = p
    ? `, postcopy: ${p.switched === false ? 'NOT SWITCHED (completed in pre-copy before migrate-start-postcopy took effect), ' : ''}started at ${p.startedAtMs ?? '–'} ms, stop→running ${p.stopToRunningMs ?? '–'} ms, postcopy ${p.postcopyMs ?? '–'} ms, blocktime ${p.blocktimeMs ?? '–'} ms, ${p.requests ?? '–'} requested pages${p.destRequests !== undefined ? ` (destination: ${p.destRequests})` : ''}, ${p.postcopyBytes !== undefined ? (p.postcopyBytes / MB).toFixed(0) : '–'} MB after the switch`
    : '';
  const note = pc + (r.guestPassesPerSecond !== undefined ? `, guest ${r.guestPassesPerSecond.toFixed(0)} passes/s` : '') + (r.note ? ` [${r.note}]` : '');
  if (!r.converged) return `did not converge (${r.status} after ${r.totalMs} ms, ${r.passes} passes, ${mbps} MB/s${note})`;
  return `${r.totalMs} ms, downtime ${r.downtimeMs} ms, ${(r.wireBytes / MB).toFixed(0)} MB, ${mbps} MB/s, ${r.passes} passes, CPU user+sys s: source ${r.sourceCpu}, destination ${r.destCpu}${note}`;
}

// ---------------------------------------------------------------------------------------------------------
// Figures

interface Stat {
  median: number;
  min: number;
  max: number;
  n: number;
}

function stat(values: Array<number | undefined>): Stat | undefined {
  const v = values.filter((x): x is number => x !== undefined && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = v.length >> 1;
  const median = v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v[v.length - 1]!, n: v.length };
}

function cell(s: Stat | undefined, digits = 0, scale = 1): string {
  if (!s) return '–';
  const f = (x: number): string => (x / scale).toFixed(digits);
  return s.n === 1 || f(s.min) === f(s.max) ? f(s.median) : `${f(s.median)} (${f(s.min)}–${f(s.max)})`;
}

interface Summary {
  spec: ScenarioSpec;
  engine: RunResult['engine'];
  runs: RunResult[];
  converged: number;
  total?: Stat;
  downtime?: Stat;
  wire?: Stat;
  throughput?: Stat;
  passes?: Stat;
  srcRss?: Stat;
  dstRss?: Stat;
  srcOverhead?: Stat;
  /** livemig: source peak RSS − its RSS just before `migrate` (what the migration itself added). */
  srcMigrationRss?: Stat;
  /** livemig: the source's RSS before its machine existed (Node and livemig's modules). */
  srcNodeRss?: Stat;
  readSpeed?: Stat;
  guestRate?: Stat;
  /** CPU seconds (user + system) per GiB of guest state (movedBytes), source and destination. */
  srcCpu?: Stat;
  dstCpu?: Stat;
  /** Postcopy rows (issue 16), completed runs: see PostcopyFigures. */
  /** Postcopy rows: completed runs that switched to postcopy (the figures below are theirs). */
  pcSwitched?: number;
  pcPause?: Stat;
  pcStopToRunning?: Stat;
  pcTotal?: Stat;
  pcStartedAt?: Stat;
  pcTime?: Stat;
  pcBlocktime?: Stat;
  pcRequests?: Stat;
  pcDestRequests?: Stat;
  pcBytes?: Stat;
}

/**
 * The denominator of CPU per GiB: the guest's RAM (+ its disk for d), the same
 * for both engines, so a ratio of CPU per GiB is a ratio of CPU spent on the
 * same job; an engine that sends more (more passes, no zero-page detection)
 * pays for it. Wire bytes would reward sending more.
 */
const movedBytes = (spec: ScenarioSpec): number => spec.ramBytes + (spec.fill === 'disk' ? (spec.diskBytes ?? 0) : 0);

function summarize(spec: ScenarioSpec, engine: RunResult['engine'], rs: RunResult[]): Summary {
  const ok = rs.filter((r) => r.status !== 'error' && r.status !== 'failed');
  const conv = ok.filter((r) => r.converged);
  return {
    spec,
    engine,
    runs: rs,
    converged: conv.length,
    // Total time and downtime of the runs that completed; throughput, wire and passes of every run that ran.
    ...opt('total', stat(conv.map((r) => r.totalMs))),
    ...opt('downtime', stat(conv.map((r) => r.downtimeMs))),
    ...opt('wire', stat((conv.length ? conv : ok).map((r) => r.wireBytes))),
    ...opt('throughput', stat(ok.map((r) => r.wireBytes / (r.totalMs / 1000)))),
    ...opt('passes', stat((conv.length ? conv : ok).map((r) => r.passes))),
    ...opt('srcRss', stat(ok.map((r) => r.sourcePeakRssBytes))),
    ...opt('dstRss', stat(ok.map((r) => r.destPeakRssBytes))),
    ...opt('srcOverhead', stat(ok.map((r) => (r.sourcePeakRssBytes === undefined ? undefined : r.sourcePeakRssBytes - r.guestRamBytes)))),
    ...opt('srcMigrationRss', stat(ok.map((r) => (r.sourcePeakRssBytes === undefined || r.sourceRssBeforeMigrateBytes === undefined ? undefined : r.sourcePeakRssBytes - r.sourceRssBeforeMigrateBytes)))),
    ...opt('srcNodeRss', stat(ok.map((r) => r.sourceRssBeforeMachineBytes))),
    ...opt('readSpeed', stat(ok.map((r) => r.readBytesPerSecond))),
    ...opt('guestRate', stat(ok.map((r) => r.guestPassesPerSecond))),
    ...opt('srcCpu', stat(ok.map((r) => (r.sourceCpuSeconds === undefined ? undefined : r.sourceCpuSeconds / (movedBytes(spec) / GiB))))),
    ...opt('dstCpu', stat(ok.map((r) => (r.destCpuSeconds === undefined ? undefined : r.destCpuSeconds / (movedBytes(spec) / GiB))))),
    ...(spec.postcopy ? postcopyStats(conv.filter((r) => r.postcopy?.switched)) : {}),
  };
}

/** A postcopy row's figures, over the completed runs that did switch. */
function postcopyStats(sw: RunResult[]): Partial<Summary> {
  return {
    pcSwitched: sw.length,
    ...opt('pcTotal', stat(sw.map((r) => r.totalMs))),
    ...opt('pcPause', stat(sw.map((r) => r.downtimeMs))),
    ...opt('pcStopToRunning', stat(sw.map((r) => r.postcopy?.stopToRunningMs))),
    ...opt('pcStartedAt', stat(sw.map((r) => r.postcopy?.startedAtMs))),
    ...opt('pcTime', stat(sw.map((r) => r.postcopy?.postcopyMs))),
    ...opt('pcBlocktime', stat(sw.map((r) => r.postcopy?.blocktimeMs))),
    ...opt('pcRequests', stat(sw.map((r) => r.postcopy?.requests))),
    ...opt('pcDestRequests', stat(sw.map((r) => r.postcopy?.destRequests))),
    ...opt('pcBytes', stat(sw.map((r) => r.postcopy?.postcopyBytes))),
    ...opt('guestRate', stat(sw.map((r) => r.guestPassesPerSecond))),
  };
}

function opt<K extends string>(key: K, value: Stat | undefined): Partial<Record<K, Stat>> {
  return value === undefined ? {} : ({ [key]: value } as Record<K, Stat>);
}

const ratio = (a: Stat | undefined, b: Stat | undefined, digits = 2): string => (a && b && b.median !== 0 ? (a.median / b.median).toFixed(digits) : '–');

// ---------------------------------------------------------------------------------------------------------
// Output

type Table = string[][];

function printTable(rows: Table): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => (row[i] ?? '').length)));
  rows.forEach((row, r) => {
    console.log(row.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
    if (r === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  });
}

function markdownTable(rows: Table, leftColumns = 2): string {
  const [head, ...body] = rows;
  const line = (row: string[]): string => `| ${row.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`;
  return [line(head!), `| ${head!.map((_, i) => (i < leftColumns ? '---' : '---:')).join(' | ')} |`, ...body.map(line)].join('\n');
}

function engineName(e: RunResult['engine']): string {
  return e === 'livemig' ? 'livemig' : 'QEMU 7.2';
}

function convergedCell(s: Summary): string {
  const n = s.runs.length;
  const errors = s.runs.filter((r) => r.status === 'error' || r.status === 'failed').length;
  const base = s.converged === n ? `yes ${n}/${n}` : s.converged === 0 ? `NO 0/${n}` : `${s.converged}/${n}`;
  return errors ? `${base} (${errors} failed)` : base;
}

function mainTable(summaries: Summary[], tcp: number): Table {
  const rows: Table = [['scenario', 'engine', 'converged', 'total ms', 'downtime ms', 'wire MB', 'MB/s', '× TCP', 'passes', 'src peak RSS MiB', 'dst peak RSS MiB', 'src overhead MiB', 'src CPU s/GiB', 'dst CPU s/GiB', 'guest passes/s']];
  for (const s of summaries) {
    const tput = s.throughput;
    rows.push([
      `${s.spec.id}: ${s.spec.label}`,
      engineName(s.engine),
      convergedCell(s),
      s.converged ? cell(s.total) : s.runs.every((r) => r.status === 'error' || r.status === 'failed') ? 'failed' : 'did not converge',
      cell(s.downtime),
      cell(s.wire, 0, MB),
      cell(tput, 0, MB),
      tput ? (tput.median / tcp).toFixed(2) : '–',
      cell(s.passes),
      cell(s.srcRss, 0, MiB),
      cell(s.dstRss, 0, MiB),
      cell(s.srcOverhead, 0, MiB),
      cell(s.srcCpu, 2),
      cell(s.dstCpu, 2),
      cell(s.guestRate),
    ]);
  }
  return rows;
}

/** Issue 16: the postcopy rows' own figures (a separate table, so the main one does not grow). */
function postcopyTable(summaries: Summary[]): Table {
  const rows: Table = [['scenario', 'engine', 'completed', 'in postcopy', 'total ms', 'switch at ms', 'pause ms', 'stop→running ms', 'postcopy ms', 'blocktime ms', 'requested pages', 'MB after switch', 'guest passes/s']];
  for (const s of summaries.filter((x) => x.spec.postcopy)) {
    rows.push([
      `${s.spec.id}: ${s.spec.label}`,
      engineName(s.engine),
      convergedCell(s),
      `${s.pcSwitched ?? 0}/${s.runs.length}`,
      s.pcSwitched ? cell(s.pcTotal) : s.runs.every((r) => r.status === 'error' || r.status === 'failed') ? 'failed' : '–',
      cell(s.pcStartedAt),
      cell(s.pcPause),
      cell(s.pcStopToRunning),
      cell(s.pcTime),
      cell(s.pcBlocktime),
      // The destination's own count beside the source's, only where they differ.
      cell(s.pcRequests) + (s.pcDestRequests && cell(s.pcDestRequests) !== cell(s.pcRequests) ? `; dst ${cell(s.pcDestRequests)}` : ''),
      cell(s.pcBytes, 0, MB),
      cell(s.guestRate),
    ]);
  }
  return rows;
}

const POSTCOPY_NOTES = [
  `Postcopy rows (issue 16): capability postcopy-ram on both sides, postcopy-blocktime on the destination; ${FIRST_PASS_RULE}. In the postcopy table, figures of the completed runs that did switch ("in postcopy"; a run whose source had already begun completing in pre-copy when migrate-start-postcopy came is counted in the main table only).`,
  'switch at = ms from `migrate` until `migrate-start-postcopy` was sent; pause = the source\'s `downtime`, which in postcopy is guest stop until the device state was sent (the same definition in QEMU 7.2 and livemig; livemig\'s includes waiting for its destination to confirm it loaded that state, its held handover); stop→running = the source\'s guest stop until the destination\'s QMP RESUME (the guest running there), wall clock of the one host; postcopy = the source\'s status `postcopy-active` until `completed` (livemig: its status events; QEMU: its MIGRATION events\' timestamps); blocktime = the destination\'s `postcopy-blocktime` from its query-migrate right after it completed (ms its guest waited for pages); requested pages = the source\'s `ram.postcopy-requests` (livemig: "dst" = the destination\'s own count, `x-livemig-postcopy.requests`); MB after switch = `ram.postcopy-bytes`; guest passes/s = the source guest\'s, from `migrate` until it stopped at the switch. After the switch both engines send at `max-postcopy-bandwidth`, 0 (unlimited) in both: the 256 MiB/s row differs only before it.',
];

function ratioTable(pairs: Array<[Summary, Summary]>): Table {
  const rows: Table = [['scenario', 'converged livemig / QEMU', 'total', 'downtime', 'wire', 'MB/s', 'passes', 'src peak RSS', 'src CPU/GiB', 'dst CPU/GiB']];
  for (const [l, q] of pairs) {
    rows.push([
      `${l.spec.id}: ${l.spec.label}`,
      `${l.converged}/${l.runs.length} vs ${q.converged}/${q.runs.length}`,
      l.converged && q.converged ? ratio(l.total, q.total) : '–',
      l.converged && q.converged ? ratio(l.downtime, q.downtime) : '–',
      ratio(l.wire, q.wire),
      ratio(l.throughput, q.throughput),
      ratio(l.passes, q.passes),
      ratio(l.srcRss, q.srcRss),
      ratio(l.srcCpu, q.srcCpu),
      ratio(l.dstCpu, q.dstCpu),
    ]);
  }
  return rows;
}

/**
 * The targets of issues 7 and 15, as figures of this run (printed, never
 * asserted). A row appears when its scenarios ran; "met?" compares the
 * figure with the target and nothing here is tuned to meet it.
 */
function targetsTable(summaries: Summary[], tcp: number): Table {
  const find = (id: string, engine: RunResult['engine']): Summary | undefined => summaries.find((s) => s.spec.id === id && s.engine === engine);
  const rows: Table = [['target', 'figure of this run', 'met?']];
  const met = (ok: boolean | undefined): string => (ok === undefined ? '–' : ok ? 'met' : 'missed');
  const add = (target: string, figure: string, ok: boolean | undefined): void => void rows.push([target, figure, met(ok)]);
  const ms = (s: Summary): string => (s.converged ? `${s.total!.median} ms` : 'did not converge');

  /** livemig's total time over a reference's (QEMU's same row, or another livemig row): target ratio <= `max`. */
  const totalRatio = (target: string, l: Summary | undefined, ref: Summary | undefined, max: number, strict = false): void => {
    if (!l || !ref) return;
    // livemig completed and the reference was cancelled at the bound: livemig was faster.
    if (!l.total || !ref.total) return add(target, `${ms(l)} / ${ms(ref)}`, l.total ? (ref.runs.some((r) => r.status === 'cancelled') ? true : undefined) : false);
    const r = l.total.median / ref.total.median;
    add(target, `${ratio(l.total, ref.total)} (${l.total.median} / ${ref.total.median} ms)`, strict ? r < max : r <= max);
  };
  const what = (id: string): string => `${id} (${find(id, 'livemig')?.spec.label ?? id})`;

  // Issue 15: time against QEMU 7.2 in the same run.
  totalRatio(`${what('a-1g')}: livemig/QEMU total time (target <= 0.8)`, find('a-1g', 'livemig'), find('a-1g', 'qemu'), 0.8);
  const a1 = find('a-1g', 'livemig');
  if (a1?.throughput) add('a-1g: throughput / loopback TCP (target >= 0.85)', `${(a1.throughput.median / tcp).toFixed(2)} (${(a1.throughput.median / MB).toFixed(0)} / ${(tcp / MB).toFixed(0)} MB/s)`, a1.throughput.median / tcp >= 0.85);
  totalRatio(`${what('a-1g-multifd')}: livemig/QEMU total time (target <= 1)`, find('a-1g-multifd', 'livemig'), find('a-1g-multifd', 'qemu'), 1);
  const m2 = find('a-1g-multifd', 'livemig');
  if (m2?.throughput) add('a-1g-multifd: throughput / loopback TCP (target >= 0.85)', `${(m2.throughput.median / tcp).toFixed(2)} (${(m2.throughput.median / MB).toFixed(0)} / ${(tcp / MB).toFixed(0)} MB/s)`, m2.throughput.median / tcp >= 0.85);
  {
    const q4 = find('a-1g-multifd4', 'qemu');
    const q2 = find('a-1g-multifd', 'qemu');
    const before = rows.length;
    totalRatio('a-1g-multifd4: livemig total time, 4 channels / 2 channels (target < 1)', find('a-1g-multifd4', 'livemig'), m2, 1, true);
    if (rows.length > before && q4?.total && q2?.total) rows[rows.length - 1]![1] += `; QEMU ${ratio(q4.total, q2.total)} (${q4.total.median} / ${q2.total.median} ms)`;
  }
  totalRatio(`${what('a-4g')}: livemig/QEMU total time (target <= 1)`, find('a-4g', 'livemig'), find('a-4g', 'qemu'), 1);
  totalRatio(`${what('b-4g')}: livemig/QEMU total time (target <= 1)`, find('b-4g', 'livemig'), find('b-4g', 'qemu'), 1);
  // Issue 15: CPU per GiB (user + system, /proc), on each side, against QEMU's.
  for (const [side, key] of [['source', 'srcCpu'], ['destination', 'dstCpu']] as const) {
    const l = find('a-1g', 'livemig')?.[key];
    const q = find('a-1g', 'qemu')?.[key];
    if (l && q) add(`a-1g: ${side} CPU s/GiB, livemig/QEMU (target <= 1)`, `${ratio(l, q)} (${l.median.toFixed(2)} / ${q.median.toFixed(2)} s/GiB)`, l.median <= q.median);
  }
  // Issue 7: an idle guest stops for next to nothing.
  for (const id of ['a-1g', 'a-4g', 'b-4g', 'b-1g']) {
    const l = find(id, 'livemig');
    if (l?.downtime) add(`${id} idle downtime (target <= 10 ms)`, `${cell(l.downtime)} ms${find(id, 'qemu')?.downtime ? ` (QEMU ${cell(find(id, 'qemu')!.downtime)} ms)` : ''}`, l.downtime.median <= 10);
  }
  // Issue 15: the workload, unlimited bandwidth.
  const u50 = find('c-unl-50', 'livemig');
  if (u50) {
    const q = find('c-unl-50', 'qemu');
    const dt = u50.downtime ? `, downtime ${cell(u50.downtime)} ms (max ${u50.downtime.max})` : '';
    add(
      'c-unl-50: livemig converges in every run, each downtime <= 55 ms',
      `livemig ${u50.converged}/${u50.runs.length}${dt}${q ? `; QEMU ${q.converged}/${q.runs.length}${q.downtime ? `, ${cell(q.downtime)} ms` : ''}` : ''}`,
      u50.converged === u50.runs.length && u50.downtime !== undefined && u50.downtime.max <= 55,
    );
  }
  totalRatio('c-unl-300: livemig/QEMU total time (target <= 1)', find('c-unl-300', 'livemig'), find('c-unl-300', 'qemu'), 1);
  // Issue 7: the workload's downtime and convergence.
  for (const s of summaries.filter((x) => x.engine === 'livemig' && x.spec.group === 'c' && !x.spec.postcopy)) {
    const q = find(s.spec.id, 'qemu');
    if (q && q.converged === q.runs.length && q.downtime) {
      add(`${s.spec.id}: livemig/QEMU downtime where QEMU converges (target <= 1)`, s.downtime ? `${ratio(s.downtime, q.downtime)} (${s.downtime.median} / ${q.downtime.median} ms)` : `livemig did not converge (QEMU ${q.downtime.median} ms)`, s.downtime ? s.downtime.median <= q.downtime.median : false);
    }
  }
  for (const s of summaries.filter((x) => x.engine === 'livemig' && x.spec.group === 'c' && !x.spec.postcopy && x.spec.maxBandwidth === 256 * MiB)) {
    const q = find(s.spec.id, 'qemu');
    add(`${s.spec.id}: converged at 256 MiB/s & ${s.spec.downtimeLimitMs} ms${s.spec.caps.length ? ` (${s.spec.caps.join(', ')})` : ''}, no throttling (target: livemig yes)`, `livemig ${s.converged}/${s.runs.length}${q ? `, QEMU ${q.converged}/${q.runs.length}` : ''}`, s.converged === s.runs.length);
  }
  const big = find('a-4g', 'livemig');
  if (big?.srcOverhead) {
    const bitmap = (4 * 2 ** 30) / 4096 / 8;
    const mib = (bytes: number): string => `${(bytes / MiB).toFixed(0)} MiB`;
    const node = big.srcNodeRss?.median;
    const migration = big.srcMigrationRss?.median;
    const split =
      migration === undefined
        ? ''
        : `: the migration added ${mib(migration)} (peak - RSS just before migrate)` +
          (node === undefined
            ? `, Node and the test machine hold the other ${mib(big.srcOverhead.median - migration)}`
            : `; Node with livemig loaded ${mib(node)} (RSS before the machine existed), the test machine beyond its RAM ${mib(big.srcOverhead.median - migration - node)}`);
    add('4 GiB test machine: src overhead = src peak RSS - guest RAM (target <= 64 MiB + 0.125 MiB dirty bitmap)', `${(big.srcOverhead.median / MiB).toFixed(0)} MiB${split}`, big.srcOverhead.median <= 64 * MiB + bitmap);
  }
  const d = find('d', 'livemig');
  if (d?.throughput) {
    add('disk: throughput / loopback TCP', `${(d.throughput.median / tcp).toFixed(2)}`, undefined);
    if (d.readSpeed) add('disk: throughput / image sequential read speed', `${(d.throughput.median / d.readSpeed.median).toFixed(2)} (read ${(d.readSpeed.median / MB).toFixed(0)} MB/s)`, undefined);
  }
  return rows;
}

/** The v86 guest's share of the source's thread while the migration shares it, one row each: the default, then what buys guest speed with migration time. */
const V86_GUEST_SHARES = [50, 80, 90];

function v86Table(results: readonly (V86BenchResult | string)[], tcp: number): Table {
  const mips = (ips: number): string => (ips / 1e6).toFixed(0);
  const mib = (b: number | undefined): string => (b === undefined ? '?' : `${Math.round(b / MiB)}`);
  const header = ['migration (v86, 256 MiB over 127.0.0.1)', 'status', 'sync ms', 'total ms', 'setup ms', 'downtime ms', 'wire MB', 'MB/s', '× TCP', 'passes', 'max throttle %', 'MIPS before', 'MIPS during', 'src peak RSS MiB', 'dst peak RSS MiB', 'src CPU s', 'dst CPU s'];
  const row = (r: V86BenchResult | string): string[] => {
    if (typeof r === 'string') return [r, 'failed', ...header.slice(2).map(() => '–')];
    const total = r.info['total-time'] ?? NaN;
    const wire = r.info.ram?.transferred ?? NaN;
    const wireRate = wire / (total / 1000);
    return [
      r.what,
      r.status,
      r.syncMs.join('/'),
      String(total),
      String(r.info['setup-time']),
      String(r.info.downtime),
      (wire / MB).toFixed(1),
      (wireRate / MB).toFixed(0),
      (wireRate / tcp).toFixed(3),
      String(r.info.ram?.['dirty-sync-count'] ?? '?'),
      String(r.maxThrottlePercent),
      mips(r.ipsBefore),
      mips(r.ipsDuring),
      mib(r.sourcePeakRssBytes),
      mib(r.destPeakRssBytes),
      r.sourceCpu,
      r.destCpu,
    ];
  };
  return [header, ...results.map(row)];
}

// ---------------------------------------------------------------------------------------------------------

const BEGIN = '<!-- BEGIN GENERATED by npm run bench: everything up to the END marker is replaced by the next run -->';
const END = '<!-- END GENERATED -->';

function writeDocs(section: string): string {
  const path = new URL('../../docs/benchmarks.md', import.meta.url).pathname;
  const doc = readFileSync(path, 'utf8');
  const block = `${BEGIN}\n${section.trim()}\n${END}`;
  const b = doc.indexOf(BEGIN);
  const e = doc.indexOf(END);
  let next: string;
  if (b >= 0 && e > b) next = doc.slice(0, b) + block + doc.slice(e + END.length);
  else {
    // No markers yet: put the section before the first "## " heading after the title.
    const at = doc.indexOf('\n## ');
    next = at >= 0 ? `${doc.slice(0, at + 1)}${block}\n\n${doc.slice(at + 1)}` : `${doc}\n${block}\n`;
  }
  writeFileSync(path, next);
  return path;
}

function qemuVersion(): string {
  try {
    return execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0]!;
  } catch {
    return 'not installed';
  }
}

function commandLine(): string {
  const args = process.argv.slice(2).join(' ');
  if (process.env.LIVEMIG_BENCH_COMMAND) return process.env.LIVEMIG_BENCH_COMMAND;
  if (process.env.npm_lifecycle_event === 'bench') return `npm run bench${args ? ` -- ${args}` : ''}`;
  return `node dist/bench/run.js${args ? ` ${args}` : ''}`;
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const started = new Date();
  const load0 = loadavg().map((x) => x.toFixed(2)).join(' ');
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM`;
  const qemu = withQemu ? qemuVersion() : 'not run (--no-qemu)';
  console.log(`livemig bench — ${started.toISOString()}, node ${process.version}, ${machine}, QEMU: ${qemu}, load average ${load0}`);
  console.log(`runs per scenario: ${runs}; workload bound: ${boundMs / 1000} s; livemig capabilities: multifd ${livemigHas('multifd') ? 'yes' : 'no'}, xbzrle ${livemigHas('xbzrle') ? 'yes' : 'no'}, postcopy-ram ${livemigHas('postcopy-ram') ? 'yes' : 'no'}`);

  // The loopback limit is measured at the start and again at the end; the higher one is "the limit"
  // (a capacity: other load on the machine can only lower a measurement).
  const tcpStart = await loopbackTcpBytesPerSecond();
  const iperf = await iperf3BytesPerSecond();
  const memcpy = memoryCopyBytesPerSecond();
  const memcpyText = `memory copy ${(memcpy / MB).toFixed(0)} MB/s (Buffer.copy 256 MiB × 8)`;
  const iperfText = `iperf3 ${iperf === undefined ? 'not installed' : `${(iperf / MB).toFixed(0)} MB/s (single stream, 3 s)`}`;
  console.log(`limits: loopback TCP ${(tcpStart / MB).toFixed(0)} MB/s (Node socket pair, 2 GiB in 1 MiB writes, process to process); ${iperfText}; ${memcpyText}`);

  const list = scenarios({ quick, boundMs }).filter(selected);
  if (list.some((spec) => spec.tls)) {
    // One set of certificates (openssl) for every TLS row, livemig's and QEMU's.
    const pki = makeTestPki(await mkdtemp(join(tmpdir(), 'livemig-bench-pki-')));
    for (const spec of list) if (spec.tls) spec.tlsDirs = { server: pki.server, client: pki.client };
  }
  const qemuUsable = withQemu && qemu !== 'not installed';
  const summaries: Summary[] = [];
  const pairs: Array<[Summary, Summary]> = [];
  const qemuSkipped = new Map<string, string>();
  for (const spec of list) {
    const results: Record<RunResult['engine'], RunResult[]> = { livemig: [], qemu: [] };
    for (let i = 1; i <= runs; i++) {
      let l: RunResult;
      try {
        l = await livemigRun(spec);
      } catch (err) {
        l = failedRun('livemig', spec, err);
      }
      results.livemig.push(l);
      console.log(`[${spec.id}] livemig run ${i}/${runs}: ${describeRun(l)}`);
      if (qemuUsable && !qemuSkipped.has(spec.id)) {
        let q: RunResult;
        try {
          const r = await qemuMigration(spec);
          if (typeof r === 'string') {
            qemuSkipped.set(spec.id, r);
            console.log(`[${spec.id}] QEMU    not run: ${r}`);
            continue;
          }
          q = r;
        } catch (err) {
          q = failedRun('qemu', spec, err);
        }
        results.qemu.push(q);
        console.log(`[${spec.id}] QEMU    run ${i}/${runs}: ${describeRun(q)}`);
      }
    }
    const l = summarize(spec, 'livemig', results.livemig);
    summaries.push(l);
    if (qemuUsable && !qemuSkipped.has(spec.id)) {
      const q = summarize(spec, 'qemu', results.qemu);
      summaries.push(q);
      pairs.push([l, q]);
    }
  }

  const v86: (V86BenchResult | string)[] = [];
  if (withV86) {
    for (const share of V86_GUEST_SHARES) {
      try {
        v86.push(await childResult<V86BenchResult>('./v86.js', ['--guest-share', String(share)], `v86 migration, guest share ${share}%`));
      } catch (err) {
        v86.push(`v86 migration, guest share ${share}%: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }

  const tcpEnd = list.length > 0 ? await loopbackTcpBytesPerSecond() : tcpStart;
  const tcp = Math.max(tcpStart, tcpEnd);
  const limits = `loopback TCP **${(tcp / MB).toFixed(0)} MB/s** (Node socket pair, 2 GiB in 1 MiB writes, process to process; the higher of ${(tcpStart / MB).toFixed(0)} at the start and ${(tcpEnd / MB).toFixed(0)} at the end); ${iperfText}; ${memcpyText}`;
  console.log(`\nlimits: ${limits.replace(/\*\*/g, '')}`);

  const main = mainTable(summaries, tcp);
  const ratios = ratioTable(pairs);
  const targets = targetsTable(summaries, tcp);
  const postcopy = summaries.some((s) => s.spec.postcopy) ? postcopyTable(summaries) : undefined;
  const elapsedS = Math.round((performance.now() - t0) / 1000);
  const load1 = loadavg().map((x) => x.toFixed(2)).join(' ');

  console.log('');
  printTable(main);
  if (postcopy) {
    console.log('\npostcopy (issue 16): the switch and what followed, completed runs that switched');
    printTable(postcopy);
  }
  if (pairs.length) {
    console.log('\nlivemig / QEMU (ratios of medians; total and downtime of converged runs only)');
    printTable(ratios);
  }
  console.log('\ntargets (issues 7 and 15), as figures of this run');
  printTable(targets);
  if (v86.length > 0) {
    console.log('');
    printTable(v86Table(v86, tcp));
  }
  const notes = [
    `median (min–max) over ${runs} run${runs > 1 ? 's' : ''}; total ms and downtime ms over the runs that completed; "did not converge" = cancelled after ${boundMs / 1000} s (workload) or 120 s (idle); MB = 10^6 bytes.`,
    'wire = ram.transferred (+ disk.transferred for d); MB/s = wire / total-time (for a cancelled run, / time until the cancel); × TCP = MB/s / the Node loopback limit above.',
    'passes = dirty-sync-count; src overhead = source peak RSS − guest RAM size (meaningless for mostly-zero RAM, whose zero pages are never resident); livemig source peak RSS is the whole bench child (Node, the test machine, the migration).',
    'guest passes/s (c) = full passes of the workload over its 99 MiB (25,344 page writes each) per second from `migrate` until the guest stopped or the cancel: how hard each guest really wrote during the migration (QEMU: its \'B\' serial output).',
    'src/dst CPU s/GiB = user + system CPU seconds of the source / destination process (every thread) from `migrate` until it completed (the destination: until it had loaded everything), per GiB of guest RAM (+ disk for d), not per wire GiB: the same denominator for both engines, so sending more costs more. livemig source = the bench child itself (process.cpuUsage), livemig destination = its `livemig run` child, QEMU = each qemu-system-x86_64 process (/proc/PID/stat utime + stime, which include its migration and multifd threads). c rows include the guest vCPU.',
    'QEMU: -M none (a, b; no CPU, nothing writes RAM) or -M pc under TCG booting guests/multiboot/livemig-test-kernel.bin (c); destination RAM preallocated; return-path on; "unlimited" = max-bandwidth 100 GB/s.',
  ];
  if (postcopy) notes.push(...POSTCOPY_NOTES);
  for (const [id, why] of qemuSkipped) notes.push(`${id}: no QEMU row: ${why}.`);
  for (const n of notes) console.log(n);
  console.log(`finished in ${elapsedS} s; load average ${load0} at the start, ${load1} at the end`);

  if (write) {
    const md = [
      '## Latest run (generated)',
      '',
      `- **Command:** \`${commandLine()}\``,
      `- **Date:** ${started.toISOString().replace('T', ' ').slice(0, 16)} UTC; took ${Math.round(elapsedS / 60)} min`,
      `- **Machine:** ${machine}; load average ${load0} at the start, ${load1} at the end`,
      `- **Software:** node ${process.version}; QEMU: ${qemu}`,
      `- **livemig capabilities:** multifd ${livemigHas('multifd') ? 'yes' : 'not yet (no multifd rows)'}, xbzrle ${livemigHas('xbzrle') ? 'yes' : 'no'}, postcopy-ram ${livemigHas('postcopy-ram') ? 'yes' : 'no (no postcopy rows)'}`,
      `- **Limits:** ${limits}`,
      '',
      markdownTable(main),
      '',
      ...(postcopy ? ['Postcopy (issue 16): the switch and what followed, completed runs that switched:', '', markdownTable(postcopy), ''] : []),
      ...(pairs.length ? ['livemig / QEMU, ratios of medians (total and downtime: converged runs only):', '', markdownTable(ratios, 2), ''] : []),
      'Targets (issues 7 and 15), as figures of this run — printed, not asserted:',
      '',
      markdownTable(targets, 2),
      '',
      ...(v86.length > 0 ? [markdownTable(v86Table(v86, tcp), 2), ''] : []),
      ...notes.map((n) => `- ${n}`),
      '',
      BENCH_CHARTS_MARKDOWN,
    ].join('\n');
    const results: BenchResults = {
      version: BENCH_RESULTS_VERSION,
      date: started.toISOString(),
      command: commandLine(),
      loopbackBytesPerSecond: tcp,
      rows: summaries.map((s) => ({
        id: s.spec.id,
        label: s.spec.label,
        engine: s.engine,
        converged: s.converged,
        runs: s.runs.length,
        ...(s.converged && s.total ? { totalMs: s.total.median } : {}),
        ...(s.downtime ? { downtimeMs: s.downtime.median } : {}),
        ...(s.wire ? { wireBytes: s.wire.median } : {}),
        ...(s.throughput ? { throughputBytesPerSecond: s.throughput.median } : {}),
        ...(s.passes ? { passes: s.passes.median } : {}),
      })),
    };
    console.log(`wrote ${writeBenchCharts(results).join(', ')}`);
    console.log(`\nwrote ${writeDocs(md)}`);
  }
}

if (opts.redraw) console.log(`wrote ${redrawBenchCharts().join(', ')}`);
else await main();
