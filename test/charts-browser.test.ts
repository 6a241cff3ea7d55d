/**
 * The charts in a real browser: Debian's headless Chromium (through
 * playwright-core) loads the report of a real migration between two
 * `livemig run` processes, the report of a real failed one, and the bench
 * charts drawn from a results object; no console or page error, and the DOM
 * holds what the data says should be drawn. Screenshots go to a temporary
 * directory (scripts/charts.ts makes the committed ones in docs/ the same way).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseMigrationEvents } from '../src/report/migration-events.js';
import { renderReport } from '../src/report/report-html.js';
import { benchLoopbackSvg, benchRatiosSvg, ratioRows } from '../bench/charts.js';
import { ChartBrowser, EXAMPLE_SOURCE_ARGS, NOT_CONVERGING_SOURCE_ARGS, chromiumMissing, drawnFigures, migrationEvents, svgPage } from '../scripts/chart-check.js';
import { cliPath } from './helpers/paths.js';
import { SAMPLE_BENCH } from './helpers/bench-sample.js';

const skip = chromiumMissing();
if (skip) process.stderr.write(`charts-browser: skipped: ${skip}\n`);

let browser: ChartBrowser;
let dir: string;
before(async () => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), 'livemig-charts-test-'));
  browser = await ChartBrowser.launch();
});
after(async () => {
  if (skip) return;
  await browser.close();
  rmSync(dir, { recursive: true, force: true });
});

async function screenshot(page: import('playwright-core').Page, name: string): Promise<void> {
  const path = join(dir, name);
  await page.screenshot({ path, fullPage: true });
  assert.ok(statSync(path).size > 5000, `${name} holds an image`);
}

test("the report of a real migration loads with no error and draws every pass, both rate lines and the downtime's phases", { skip, timeout: 120_000 }, async () => {
  const events = await migrationEvents(cliPath, EXAMPLE_SOURCE_ARGS, { ramSize: '128M' });
  const record = parseMigrationEvents(events, 'source events');
  assert.equal(record.outcome, 'completed');
  const path = join(dir, 'report.html');
  writeFileSync(path, renderReport(record));
  const { page, errors } = await browser.open(path);
  const drawn = await drawnFigures(page);
  assert.deepEqual(errors, []);
  assert.deepEqual(drawn.charts, ['passes', 'rates', 'downtime']);
  assert.ok(record.passes.length >= 1);
  assert.equal(drawn.bars.sent, record.passes.length, 'one sent bar per pass in the data');
  assert.deepEqual(drawn.lines.map((l) => l.series), ['dirty rate', 'throughput']);
  for (const line of drawn.lines) {
    assert.equal(line.points, record.rates.length);
    if (record.rates.length > 1) assert.ok(line.length > 0, `the ${line.series} line has a length`);
  }
  assert.deepEqual(drawn.segments, ['pause', 'complete', 'flush', 'confirm']);
  assert.equal(drawn.limits, 1, 'the downtime limit is drawn');
  assert.equal(drawn.outcome, 'completed');
  await screenshot(page, 'report.png');
});

test('the report of a real failed migration shows it failed and why, and draws no pass', { skip, timeout: 60_000 }, async () => {
  const events = await migrationEvents(cliPath, ['--migrate-after-ms', '0'], { destination: false });
  const record = parseMigrationEvents(events, 'source events');
  assert.equal(record.outcome, 'failed');
  const path = join(dir, 'failed.html');
  writeFileSync(path, renderReport(record));
  const { page, errors } = await browser.open(path);
  const drawn = await drawnFigures(page);
  assert.deepEqual(errors, []);
  assert.equal(drawn.outcome, 'failed');
  assert.match(drawn.outcomeText!, /^Migration failed: cannot connect to tcp:127\.0\.0\.1:\d+/);
  assert.deepEqual(drawn.bars, {});
  await screenshot(page, 'failed.png');
});

test('the report of a real cancelled migration says it was cancelled and why, and draws the passes it made', { skip, timeout: 60_000 }, async () => {
  const events = await migrationEvents(cliPath, NOT_CONVERGING_SOURCE_ARGS, { ramSize: '32M', cancelAfterMs: 3000 });
  const record = parseMigrationEvents(events, 'source events');
  assert.equal(record.outcome, 'cancelled');
  const path = join(dir, 'cancelled.html');
  writeFileSync(path, renderReport(record));
  const { page, errors } = await browser.open(path);
  const drawn = await drawnFigures(page);
  assert.deepEqual(errors, []);
  assert.equal(drawn.outcome, 'cancelled');
  assert.match(drawn.outcomeText!, /^Migration cancelled: .*(SIGTERM|cancel)/);
  assert.ok(record.passes.length >= 1);
  assert.equal(drawn.bars.sent, record.passes.length);
  assert.deepEqual(drawn.segments, [], 'no downtime: the guest never stopped');
  await screenshot(page, 'cancelled.png');
});

test('the bench charts drawn from a results object load with no error and draw a bar per figure', { skip, timeout: 60_000 }, async () => {
  const path = join(dir, 'bench.html');
  writeFileSync(path, svgPage('bench', [benchRatiosSvg(SAMPLE_BENCH), benchLoopbackSvg(SAMPLE_BENCH)]));
  const { page, errors } = await browser.open(path);
  const drawn = await drawnFigures(page);
  assert.deepEqual(errors, []);
  assert.deepEqual(drawn.charts, ['bench-ratios', 'bench-loopback']);
  const ratios = ratioRows(SAMPLE_BENCH);
  assert.equal(drawn.bars['total time'], ratios.filter((r) => r.total !== undefined).length);
  assert.equal(drawn.bars.downtime, ratios.filter((r) => r.downtime !== undefined).length);
  assert.equal(drawn.bars['MB/s'], ratios.length);
  assert.equal(drawn.bars.livemig, 3);
  assert.equal(drawn.bars['QEMU 7.2'], 2);
  assert.equal(drawn.limits, 3, "ratio 1, the loopback limit and the target");
  await screenshot(page, 'bench.png');
});

test('a bench chart opened as a standalone .svg file (as GitHub shows docs/*.svg) parses and draws', { skip, timeout: 30_000 }, async () => {
  const path = join(dir, 'bench-ratios.svg');
  writeFileSync(path, benchRatiosSvg(SAMPLE_BENCH));
  const { page, errors } = await browser.open(path);
  const drawn = await drawnFigures(page);
  assert.deepEqual(errors, []);
  assert.equal(drawn.parseErrors, 0, 'well-formed XML');
  assert.deepEqual(drawn.charts, ['bench-ratios']);
  assert.equal(Object.values(drawn.bars).reduce((n, b) => n + b, 0), 4);
});

test('the check itself sees a console error, an uncaught page error and a malformed SVG (so none found means none happened)', { skip, timeout: 30_000 }, async () => {
  const svg = join(dir, 'malformed.svg');
  writeFileSync(svg, '<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="x"><rect></svg>');
  assert.equal((await drawnFigures((await browser.open(svg)).page)).parseErrors, 1);
  const path = join(dir, 'broken.html');
  writeFileSync(path, '<!DOCTYPE html><html><body><script>console.error("drawn wrong"); throw new Error("boom");</script></body></html>');
  const { errors } = await browser.open(path);
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.ok(errors.some((e) => e.includes('drawn wrong')), errors.join('; '));
  assert.ok(errors.some((e) => e.includes('boom')), errors.join('; '));
});
