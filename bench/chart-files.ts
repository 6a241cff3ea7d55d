/**
 * The bench's results and charts on disk, next to docs/benchmarks.md:
 * docs/bench-results.json (what the charts are drawn from) and the SVGs.
 * `node dist/bench/run.js --redraw` redraws the SVGs from the JSON alone.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchLoopbackSvg, benchRatiosSvg, checkBenchResults, type BenchResults } from './charts.js';

export const DOCS_DIR = fileURLToPath(new URL('../../docs/', import.meta.url));
export const RESULTS_FILE = 'bench-results.json';

/** The images' lines in the generated section of docs/benchmarks.md (paths relative to docs/). */
export const BENCH_CHARTS_MARKDOWN = [
  '![livemig / QEMU 7.2 per scenario: total time, downtime and MB/s, log scale](bench-ratios.svg)',
  '',
  '![throughput of each engine over the loopback TCP limit](bench-loopback.svg)',
  '',
  `The charts are drawn from [${RESULTS_FILE}](${RESULTS_FILE}); \`node dist/bench/run.js --redraw\` redraws them from it.`,
].join('\n');

/** Writes the SVGs (and, unless `saveResults` is false, the results JSON); returns the paths written. */
export function writeBenchCharts(results: BenchResults, docsDir = DOCS_DIR, saveResults = true): string[] {
  const written: string[] = [];
  const write = (name: string, text: string): void => {
    writeFileSync(join(docsDir, name), text);
    written.push(join(docsDir, name));
  };
  if (saveResults) write(RESULTS_FILE, JSON.stringify(results, null, 1) + '\n');
  write('bench-ratios.svg', benchRatiosSvg(results) + '\n');
  write('bench-loopback.svg', benchLoopbackSvg(results) + '\n');
  return written;
}

/** Reads docs/bench-results.json and redraws the SVGs from it. */
export function redrawBenchCharts(docsDir = DOCS_DIR): string[] {
  const path = join(docsDir, RESULTS_FILE);
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`cannot read ${path}: ${(err as Error).message} (a full \`npm run bench\` writes it)`);
  }
  return writeBenchCharts(checkBenchResults(parsed, path), docsDir, false);
}
