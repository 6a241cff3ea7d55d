/**
 * The bench's charts: pure functions of its results (docs/bench-results.json),
 * so they can be redrawn without re-running the bench
 * (`node dist/bench/run.js --redraw`) and tested from a saved object.
 *
 *   bench-ratios.svg    livemig / QEMU per scenario (total time, downtime, MB/s), log scale around 1
 *   bench-loopback.svg  each engine's throughput as a fraction of the loopback TCP limit
 */
import { PALETTE, barChart } from '../src/report/svg.js';

export const BENCH_RESULTS_VERSION = 1;

/** One scenario × engine, medians over its runs (what the bench's main table shows). */
export interface BenchRow {
  id: string;
  label: string;
  engine: 'livemig' | 'qemu';
  converged: number;
  runs: number;
  totalMs?: number;
  downtimeMs?: number;
  wireBytes?: number;
  throughputBytesPerSecond?: number;
  passes?: number;
}

export interface BenchResults {
  version: number;
  /** ISO date of the run. */
  date: string;
  command: string;
  /** The loopback TCP limit the run measured (bytes per second). */
  loopbackBytesPerSecond: number;
  rows: BenchRow[];
}

/** Checks a parsed docs/bench-results.json; throws an Error naming what is wrong. */
export function checkBenchResults(value: unknown, name = 'bench results'): BenchResults {
  const fail = (what: string): never => {
    throw new Error(`${name}: ${what}`);
  };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail('not a JSON object');
  const v = value as Record<string, unknown>;
  if (v.version !== BENCH_RESULTS_VERSION) fail(`version ${JSON.stringify(v.version)}, expected ${BENCH_RESULTS_VERSION}`);
  if (typeof v.loopbackBytesPerSecond !== 'number' || !(v.loopbackBytesPerSecond > 0)) fail('loopbackBytesPerSecond is not a positive number');
  if (!Array.isArray(v.rows)) fail("'rows' is not an array");
  (v.rows as unknown[]).forEach((row, i) => {
    const r = row as Record<string, unknown>;
    if (typeof row !== 'object' || row === null) fail(`rows[${i}] is not an object`);
    if (typeof r.id !== 'string' || r.id === '') fail(`rows[${i}].id is not a non-empty string`);
    if (r.engine !== 'livemig' && r.engine !== 'qemu') fail(`rows[${i}].engine is ${JSON.stringify(r.engine)}, not 'livemig' or 'qemu'`);
    for (const key of ['converged', 'runs', 'totalMs', 'downtimeMs', 'wireBytes', 'throughputBytesPerSecond', 'passes']) {
      if (r[key] !== undefined && (typeof r[key] !== 'number' || !Number.isFinite(r[key]))) fail(`rows[${i}].${key} is not a number`);
    }
  });
  return { version: BENCH_RESULTS_VERSION, date: String(v.date ?? ''), command: String(v.command ?? ''), loopbackBytesPerSecond: v.loopbackBytesPerSecond as number, rows: v.rows as BenchRow[] };
}

export interface RatioRow {
  id: string;
  /** Which engines did not converge in any run (then there is no time or downtime ratio). */
  notConverged: Array<'livemig' | 'QEMU'>;
  /** Ratios of medians livemig / QEMU; total and downtime only when both converged. */
  total?: number;
  downtime?: number;
  throughput?: number;
}

export function ratioRows(results: BenchResults): RatioRow[] {
  const out: RatioRow[] = [];
  for (const l of results.rows.filter((r) => r.engine === 'livemig')) {
    const q = results.rows.find((r) => r.engine === 'qemu' && r.id === l.id);
    if (!q) continue;
    const ratio = (a: number | undefined, b: number | undefined): number | undefined => (a !== undefined && b !== undefined && a > 0 && b > 0 ? a / b : undefined);
    const both = l.converged > 0 && q.converged > 0;
    const row: RatioRow = { id: l.id, notConverged: [...(l.converged ? [] : ['livemig' as const]), ...(q.converged ? [] : ['QEMU' as const])] };
    const total = both ? ratio(l.totalMs, q.totalMs) : undefined;
    if (total !== undefined) row.total = total;
    const downtime = both ? ratio(l.downtimeMs, q.downtimeMs) : undefined;
    if (downtime !== undefined) row.downtime = downtime;
    const throughput = ratio(l.throughputBytesPerSecond, q.throughputBytesPerSecond);
    if (throughput !== undefined) row.throughput = throughput;
    out.push(row);
  }
  return out;
}

const ratioFormat = (v: number): string => (v >= 10 ? v.toFixed(0) : v >= 1 ? v.toFixed(2).replace(/\.?0+$/, '') : v.toPrecision(2).replace(/\.?0+$/, ''));

/** livemig / QEMU per scenario, log scale, bars growing from 1 (equal). */
export function benchRatiosSvg(results: BenchResults): string {
  const rows = ratioRows(results);
  return barChart({
    id: 'bench-ratios',
    title: `livemig / QEMU 7.2 per scenario (ratios of medians; bench of ${results.date.slice(0, 10)})`,
    footnote: 'Below 1: livemig took less time or downtime. Above 1 for MB/s: livemig moved data faster. n/c: did not converge (no time or downtime ratio).',
    categories: rows.map((r) => (r.notConverged.length === 0 ? r.id : `${r.id} (${r.notConverged.length === 2 ? 'both' : r.notConverged[0]} n/c)`)),
    series: [
      { name: 'total time', color: PALETTE[0], values: rows.map((r) => r.total) },
      { name: 'downtime', color: PALETTE[1], values: rows.map((r) => r.downtime) },
      { name: 'MB/s', color: PALETTE[2], values: rows.map((r) => r.throughput) },
    ],
    yLabel: 'livemig / QEMU (log scale)',
    formatValue: ratioFormat,
    scale: 'log',
    baseline: 1,
    references: [{ value: 1, label: 'equal', color: '#444' }],
    width: 980,
    height: 480,
    rotateLabels: true,
  });
}

/** Throughput over the loopback TCP limit, per scenario and engine. */
export function benchLoopbackSvg(results: BenchResults): string {
  const ids = [...new Set(results.rows.map((r) => r.id))];
  const value = (id: string, engine: BenchRow['engine']): number | undefined => {
    const row = results.rows.find((r) => r.id === id && r.engine === engine);
    return row?.throughputBytesPerSecond === undefined ? undefined : row.throughputBytesPerSecond / results.loopbackBytesPerSecond;
  };
  return barChart({
    id: 'bench-loopback',
    title: `Throughput / loopback TCP limit (${(results.loopbackBytesPerSecond / 1e6).toFixed(0)} MB/s)`,
    footnote: 'MB/s = wire bytes / total time (until the cancel for a run that did not converge), over the loopback limit the bench measured.',
    categories: ids,
    series: [
      { name: 'livemig', color: PALETTE[0], values: ids.map((id) => value(id, 'livemig')) },
      { name: 'QEMU 7.2', color: PALETTE[1], values: ids.map((id) => value(id, 'qemu')) },
    ],
    yLabel: 'fraction of the loopback limit',
    formatValue: (v) => v.toFixed(2),
    references: [
      { value: 1, label: 'loopback limit' },
      { value: 0.85, label: 'target 0.85 (a-1g)', color: '#888' },
    ],
    width: 980,
    height: 440,
    rotateLabels: true,
  });
}

/**
 * Results from the main table of a generated section of docs/benchmarks.md
 * (medians only: the first number of each cell), to seed the charts from a run
 * made before the bench saved its results as JSON. Throws when the table is
 * not there or a row does not have the columns the bench writes.
 */
export function resultsFromMarkdown(markdown: string): BenchResults {
  const loopback = /loopback TCP \*\*(\d+) MB\/s\*\*/.exec(markdown);
  if (!loopback) throw new Error('docs/benchmarks.md: no "loopback TCP **N MB/s**" in the generated section');
  const date = /\*\*Date:\*\* (\d{4}-\d\d-\d\d) (\d\d:\d\d) UTC/.exec(markdown);
  const command = /\*\*Command:\*\* `([^`]*)`/.exec(markdown);
  const lines = markdown.split('\n');
  const header = lines.findIndex((l) => l.startsWith('| scenario | engine | converged | total ms | downtime ms | wire MB | MB/s |'));
  if (header < 0) throw new Error('docs/benchmarks.md: no main table (| scenario | engine | converged | total ms | downtime ms | wire MB | MB/s | ...)');
  const rows: BenchRow[] = [];
  const first = (cell: string): number | undefined => {
    const m = /^-?\d+(\.\d+)?/.exec(cell.trim());
    return m ? Number(m[0]) : undefined;
  };
  for (let i = header + 2; i < lines.length && lines[i]!.startsWith('|'); i++) {
    const cells = lines[i]!.split('|').slice(1, -1).map((c) => c.trim());
    if (cells.length < 9) throw new Error(`docs/benchmarks.md, line ${i + 1}: ${cells.length} cells, expected at least 9`);
    const [scenario, engine, converged, total, downtime, wire, mbps, , passes] = cells as [string, string, string, string, string, string, string, string, string];
    const colon = scenario.indexOf(':');
    const conv = /(\d+)\/(\d+)/.exec(converged);
    if (colon < 0 || !conv) throw new Error(`docs/benchmarks.md, line ${i + 1}: cannot read scenario or converged from "${scenario}" / "${converged}"`);
    const row: BenchRow = { id: scenario.slice(0, colon), label: scenario.slice(colon + 1).trim(), engine: engine.startsWith('QEMU') ? 'qemu' : 'livemig', converged: Number(conv[1]), runs: Number(conv[2]) };
    const set = (key: 'totalMs' | 'downtimeMs' | 'wireBytes' | 'throughputBytesPerSecond' | 'passes', v: number | undefined, scale = 1): void => {
      if (v !== undefined) row[key] = v * scale;
    };
    set('totalMs', first(total));
    set('downtimeMs', first(downtime));
    set('wireBytes', first(wire), 1e6);
    set('throughputBytesPerSecond', first(mbps), 1e6);
    set('passes', first(passes));
    rows.push(row);
  }
  if (rows.length === 0) throw new Error('docs/benchmarks.md: the main table has no rows');
  return {
    version: BENCH_RESULTS_VERSION,
    date: date ? `${date[1]}T${date[2]}:00Z` : '',
    command: command ? command[1]! : '',
    loopbackBytesPerSecond: Number(loopback[1]) * 1e6,
    rows,
  };
}
