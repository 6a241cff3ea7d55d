/**
 * `npm run charts`: regenerates the committed chart images in docs/ the way
 * test/charts-browser.test.ts checks them, in real headless Chromium:
 *
 *   docs/report-example.html, .png  `livemig report` of a real migration between two processes
 *   docs/bench-*.svg, bench-ratios.png  the bench charts, from docs/bench-results.json
 *
 * docs/bench-results.json is written by `npm run bench`; when it is missing it
 * is seeded from the generated section of docs/benchmarks.md (medians only).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DOCS_DIR, RESULTS_FILE, writeBenchCharts } from '../bench/chart-files.js';
import { benchLoopbackSvg, benchRatiosSvg, checkBenchResults, resultsFromMarkdown } from '../bench/charts.js';
import { parseMigrationEvents } from '../src/report/migration-events.js';
import { renderReport } from '../src/report/report-html.js';
import { ChartBrowser, EXAMPLE_SOURCE_ARGS, chromiumMissing, drawnFigures, migrationEvents, svgPage } from './chart-check.js';

const cliPath = resolve(fileURLToPath(import.meta.url), '..', '..', 'src', 'cli', 'main.js');

const missing = chromiumMissing();
if (missing) {
  console.error(`livemig charts: ${missing}`);
  process.exit(1);
}

const resultsPath = join(DOCS_DIR, RESULTS_FILE);
const results = existsSync(resultsPath)
  ? checkBenchResults(JSON.parse(readFileSync(resultsPath, 'utf8')), resultsPath)
  : resultsFromMarkdown(readFileSync(join(DOCS_DIR, 'benchmarks.md'), 'utf8'));
console.log(`wrote ${writeBenchCharts(results, DOCS_DIR, !existsSync(resultsPath)).join(', ')}`);

const events = await migrationEvents(cliPath, EXAMPLE_SOURCE_ARGS, { ramSize: '128M' });
const record = parseMigrationEvents(events, 'the example migration');
const reportPath = join(DOCS_DIR, 'report-example.html');
writeFileSync(reportPath, renderReport(record, { source: 'livemig run --machine test --ram 128M ' + EXAMPLE_SOURCE_ARGS.join(' ') }));
console.log(`wrote ${reportPath}: ${record.outcome}, ${record.passes.length} passes drawn`);

const work = mkdtempSync(join(tmpdir(), 'livemig-charts-'));
const browser = await ChartBrowser.launch();
try {
  const report = await browser.open(reportPath);
  if (report.errors.length) throw new Error(`the report page: ${report.errors.join('; ')}`);
  console.log('report drew', JSON.stringify(await drawnFigures(report.page)));
  await report.page.screenshot({ path: join(DOCS_DIR, 'report-example.png'), fullPage: true });
  for (const name of ['bench-ratios.svg', 'bench-loopback.svg']) {
    const svg = await browser.open(join(DOCS_DIR, name));
    const drawn = await drawnFigures(svg.page);
    if (svg.errors.length || drawn.parseErrors || drawn.charts.length !== 1) throw new Error(`docs/${name}: ${svg.errors.join('; ')} ${drawn.parseErrors} XML errors, ${drawn.charts.length} charts`);
  }
  const benchPage = join(work, 'bench.html');
  writeFileSync(benchPage, svgPage('livemig bench charts', [benchRatiosSvg(results), benchLoopbackSvg(results)]));
  const bench = await browser.open(benchPage);
  if (bench.errors.length) throw new Error(`the bench page: ${bench.errors.join('; ')}`);
  await bench.page.setViewportSize({ width: 1020, height: 900 });
  await bench.page.screenshot({ path: join(DOCS_DIR, 'bench-ratios.png'), fullPage: true });
  console.log(`wrote ${join(DOCS_DIR, 'report-example.png')}, ${join(DOCS_DIR, 'bench-ratios.png')}`);
} finally {
  await browser.close();
  rmSync(work, { recursive: true, force: true });
}
