/** livemig report and the chart primitives, without a browser (test/charts-browser.test.ts loads them in Chromium). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ReportInputError, parseMigrationEvents } from '../src/report/migration-events.js';
import { renderReport } from '../src/report/report-html.js';
import { byteTicks, escapeXml, logTicks, niceTicks } from '../src/report/svg.js';
import { benchLoopbackSvg, benchRatiosSvg, checkBenchResults, ratioRows, resultsFromMarkdown } from '../bench/charts.js';
import { SAMPLE_BENCH } from './helpers/bench-sample.js';
import { cliPath, repoRoot } from './helpers/paths.js';
import { benchArgs } from '../src/cli/bench-command.js';

const MiB = 2 ** 20;
const lines = (...values: unknown[]): string => values.map((v) => JSON.stringify(v)).join('\n') + '\n';
const count = (text: string, needle: RegExp): number => (text.match(needle) ?? []).length;

/** A query-migrate answer as QEMU 7.2 shapes it (no x-livemig-* fields). */
function qemuInfo(status: string, timeMs: number, sync: number, transferred: number, remaining: number, dirtyPagesRate: number, mbps: number): Record<string, unknown> {
  return { status, 'total-time': timeMs, 'setup-time': 5, ram: { transferred, remaining, total: 256 * MiB, 'dirty-sync-count': sync, 'dirty-pages-rate': dirtyPagesRate, mbps, 'page-size': 4096 } };
}

function modelPass(pass: number, startMs: number, sent: number, dirtied: number): Record<string, unknown> {
  return { pass, 'start-ms': startMs, 'duration-ms': 100, 'sent-bytes': sent, 'dirtied-bytes': dirtied, 'remaining-bytes': dirtied, 'dirty-rate-bytes-per-second': dirtied * 10, 'throughput-bytes-per-second': sent * 10 };
}

test("livemig run --json with the source's progress model: its passes, downtime phases and limit are drawn as they are", () => {
  const passes = [modelPass(1, 0, 64 * MiB, 8 * MiB), modelPass(2, 100, 8 * MiB, 2 * MiB), modelPass(3, 200, 2 * MiB, 1 * MiB)];
  const text = lines(
    { event: 'status', status: 'setup' },
    { event: 'serial', text: 'BBBB' },
    { event: 'progress', info: { status: 'active', 'total-time': 150, ram: { transferred: 70 * MiB, 'dirty-sync-count': 2 }, 'x-livemig-progress': { percent: 60, phase: 'iterate', passes: passes.slice(0, 1) } } },
    { event: 'completed', info: { status: 'completed', 'total-time': 320, downtime: 55, ram: { transferred: 75 * MiB, total: 128 * MiB, 'dirty-sync-count': 3 }, 'x-livemig-progress': { percent: 100, phase: 'completed', passes }, 'x-livemig-downtime-phases': { 'pause-ms': 5, 'complete-ms': 40, 'flush-ms': 4, 'confirm-ms': 6 }, 'x-livemig-downtime-limit-ms': 50 } },
  );
  const m = parseMigrationEvents(text, 'events.jsonl');
  assert.equal(m.format, 'livemig run --json');
  assert.equal(m.outcome, 'completed');
  assert.equal(m.passesFromSource, true);
  assert.deepEqual(m.passes.map((p) => [p.pass, p.sentBytes, p.dirtiedBytes]), [[1, 64 * MiB, 8 * MiB], [2, 8 * MiB, 2 * MiB], [3, 2 * MiB, 1 * MiB]]);
  assert.equal(m.rates.length, 6, 'a step per pass: its rates from its start to its end');
  assert.deepEqual(m.downtimePhasesMs, { pause: 5, complete: 40, flush: 4, confirm: 6 });
  assert.equal(m.downtimeLimitMs, 50);
  const html = renderReport(m);
  assert.equal(count(html, /class="bar" data-series="sent"/g), 3);
  assert.equal(count(html, /class="bar" data-series="dirtied"/g), 3);
  assert.equal(count(html, /class="segment"/g), 4);
  assert.match(html, /55 ms \(limit 50 ms, over it\)/);
  assert.match(html, /went over its limit of 50 ms: most of it \(40 ms\) went to complete\./);
  assert.doesNotMatch(html, /<script/i, 'no script: the page draws without one');
  assert.doesNotMatch(html, /\s(src|href)=/, 'nothing loaded from elsewhere (no network, opens from file://)');
});

test("a migration that did not converge: the model's diagnosis and levers are shown, escaped", () => {
  const progress = (passes: unknown[], diagnosis?: unknown) => ({ percent: 40, phase: 'iterate', passes, 'convergence-ratio': 1.6, trend: 'steady', converging: false, ...(diagnosis ? { diagnosis } : {}) });
  const passes = [modelPass(1, 0, 64 * MiB, 80 * MiB), modelPass(2, 100, 64 * MiB, 90 * MiB)];
  const diagnosis = { summary: 'not converging: the guest dirties 1.6 × what the link carries', levers: ['capability auto-converge', 'parameter max-bandwidth <higher>'] };
  const m = parseMigrationEvents(
    lines(
      { event: 'progress', info: { status: 'active', 'total-time': 200, ram: { transferred: 128 * MiB, 'dirty-sync-count': 2 }, 'x-livemig-progress': progress(passes, diagnosis) } },
      { event: 'cancelled', info: { status: 'cancelled', 'total-time': 250, 'error-desc': 'cancelled by livemig run on SIGTERM', 'x-livemig-progress': progress(passes) } },
    ),
  );
  assert.equal(m.outcome, 'cancelled');
  assert.deepEqual(m.diagnosis, diagnosis);
  assert.equal(m.convergenceRatio, 1.6);
  const html = renderReport(m);
  assert.match(html, /Migration cancelled: cancelled by livemig run on SIGTERM/);
  assert.match(html, /<strong>Diagnosis:<\/strong> not converging/);
  assert.match(html, /<li>parameter max-bandwidth &lt;higher&gt;<\/li>/);
  assert.match(html, /dirty rate \/ throughput 1\.60 in the last pass, steady/);
});

test('a migration of 250 passes: a bar per pass, and labels thinned so they do not overlap', () => {
  const passes = Array.from({ length: 250 }, (_, i) => modelPass(i + 1, i * 100, 4 * MiB, 5 * MiB));
  const m = parseMigrationEvents(lines({ event: 'cancelled', info: { status: 'cancelled', 'total-time': 25_000, 'x-livemig-progress': { percent: 50, phase: 'cancelled', passes } } }));
  const html = renderReport(m);
  const passesSvg = html.slice(html.indexOf('data-chart="passes"'), html.indexOf('data-chart="rates"'));
  assert.equal(count(passesSvg, /class="bar" data-series="sent"/g), 250);
  const labels = count(passesSvg, /text-anchor="middle">\d+<\/text>/g);
  assert.ok(labels >= 10 && labels <= 60, `${labels} pass labels`);
});

test('disk progress: from the model when present, else from query-migrate disk', () => {
  const withDisk = (info: Record<string, unknown>) => parseMigrationEvents(lines({ event: 'progress', info: { status: 'active', 'total-time': 100, ...info } }));
  const plain = withDisk({ disk: { transferred: 64 * MiB, remaining: 192 * MiB, total: 256 * MiB } });
  assert.deepEqual(plain.disk, { transferredBytes: 64 * MiB, remainingBytes: 192 * MiB, totalBytes: 256 * MiB });
  assert.match(renderReport(plain), /64\.0 MiB of 256\.0 MiB sent, 192\.0 MiB remaining/);
  const model = withDisk({ disk: { transferred: 1, remaining: 1, total: 2 }, 'x-livemig-progress': { percent: 30, phase: 'first-pass', passes: [], disk: { 'transferred-bytes': 128 * MiB, 'remaining-bytes': 128 * MiB, 'total-bytes': 256 * MiB, percent: 50 } } });
  assert.deepEqual(model.disk, { transferredBytes: 128 * MiB, remainingBytes: 128 * MiB, totalBytes: 256 * MiB });
});

test('livemig migrate --json from a QEMU source: passes derived from successive snapshots', () => {
  const text = lines(
    {},
    qemuInfo('setup', 0, 0, 0, 256 * MiB, 0, 0),
    qemuInfo('active', 200, 1, 100 * MiB, 156 * MiB, 0, 4000),
    qemuInfo('active', 400, 1, 200 * MiB, 56 * MiB, 0, 4000),
    qemuInfo('active', 600, 2, 270 * MiB, 20 * MiB, 2000, 3000),
    qemuInfo('active', 800, 3, 300 * MiB, 4 * MiB, 1000, 2500),
    qemuInfo('completed', 900, 4, 310 * MiB, 0, 0, 2600),
    { final: true, status: 'completed', 'total-time': 900, downtime: 30, transferred: 310 * MiB, passes: 4, 'wall-time': 950 },
  );
  const m = parseMigrationEvents(text);
  assert.equal(m.format, 'livemig migrate --json');
  assert.equal(m.outcome, 'completed');
  assert.equal(m.passesFromSource, false);
  assert.equal(m.passCount, 4);
  assert.deepEqual(m.passes.map((p) => p.pass), [0, 1, 2, 3]);
  assert.deepEqual(m.passes.map((p) => p.sentBytes / MiB), [100, 170, 30, 10], 'each pass holds the bytes sent up to the snapshot where dirty-sync-count moved on');
  assert.equal(m.passes.reduce((n, p) => n + p.sentBytes, 0), 310 * MiB, 'every byte sent is in one pass');
  assert.equal(m.passes[2]!.dirtiedBytes, Math.round((2000 * 4096 * 200) / 1000), "pass 2's dirtied bytes: the dirty rate at its end × its duration");
  assert.equal(m.downtimeMs, 30);
  assert.equal(m.downtimePhasesMs, undefined);
  assert.equal(m.rates.length, 5, 'one rate point per snapshot taken while it ran (not the completed averages)');
  const html = renderReport(m);
  assert.match(html, /derived from successive query-migrate snapshots/);
  assert.match(html, /No downtime phases in this file/);
});

test("QEMU's total-time at completion (a snapshot polled meanwhile reads more, the completed one may read 0): the passes still add up to what was sent", () => {
  for (const completedAtMs of [250, 0]) {
    const text = lines(
      {},
      qemuInfo('active', 100, 1, 100 * MiB, 20 * MiB, 0, 4000),
      // Polled while QEMU completed: the running total-time is past the total it then reports.
      qemuInfo('active', 260, 2, 118 * MiB, 2 * MiB, 0, 4000),
      qemuInfo('completed', completedAtMs, 3, 120 * MiB, 0, 0, 4000),
      { final: true, status: 'completed', 'total-time': 250, downtime: 30, transferred: 120 * MiB, passes: 3, 'wall-time': 300 },
    );
    const m = parseMigrationEvents(text);
    assert.equal(m.passes.reduce((n, p) => n + p.sentBytes, 0), 120 * MiB, `completed at ${completedAtMs} ms: every byte sent is in one pass`);
    assert.ok(m.passes.every((p) => p.durationMs >= 0 && p.startMs >= 0), JSON.stringify(m.passes));
  }
});

test('a failed migration is drawn as failed, with its reason, escaped', () => {
  const reason = 'cannot connect to tcp:127.0.0.1:1: <script>alert(1)</script> & more';
  const m = parseMigrationEvents(lines({ event: 'status', status: 'setup' }, { event: 'failed', info: { status: 'failed', 'total-time': 7, ram: { transferred: 0, remaining: 0, total: 128 * MiB, 'dirty-sync-count': 0 }, 'error-desc': reason, 'x-livemig-error-code': 'transport' } }));
  assert.equal(m.outcome, 'failed');
  assert.equal(m.passes.length, 0, 'nothing was sent: no pass bar');
  const html = renderReport(m);
  assert.match(html, /class="outcome failed" data-outcome="failed">Migration failed: cannot connect/);
  assert.ok(html.includes(escapeXml(reason)));
  assert.ok(!html.includes('<script>alert'), 'the reason is escaped');
  assert.doesNotMatch(html, /100%/);
});

test('a cancelled migration says so, with the reason or that none was recorded', () => {
  const cancelled = parseMigrationEvents(lines(qemuInfo('active', 200, 1, 10 * MiB, 100 * MiB, 0, 400), { status: 'cancelled' }, { final: true, status: 'cancelled', 'total-time': 250, passes: 1 }));
  assert.equal(cancelled.outcome, 'cancelled');
  assert.match(renderReport(cancelled), /Migration cancelled: no reason recorded \(cancelled on request\)/);
});

test('bad input gets an error naming the line and what is wrong', () => {
  const bad = (text: string, expected: RegExp): void => assert.throws(() => parseMigrationEvents(text, 'x.jsonl'), (err: unknown) => err instanceof ReportInputError && expected.test(err.message));
  bad('{"event":"status","status":"setup"}\n{not json\n', /^x\.jsonl, line 2: not JSON/);
  bad('migration: active, pass 1, 20.0 MiB sent\n', /^x\.jsonl, line 1: not JSON .*; was it written with --json\?$/);
  bad('[1,2]\n', /^x\.jsonl, line 1: a JSON array, not an object/);
  bad('\n\n{"a":1}\n', /^x\.jsonl, line 3: neither a livemig run --json event .* nor a query-migrate answer/);
  bad('{"event":"progress"}\n', /^x\.jsonl, line 1: event 'progress' has no 'info' object/);
  bad('{"event":7}\n', /line 1: 'event' is 7, not a string/);
  bad('', /^x\.jsonl holds no migration/);
  bad('{"event":"listening","address":"tcp:127.0.0.1:4444"}\n{"event":"resumed","started":true}\n', /looks like the destination's output/);
});

test('livemig report: writes the page, and a bad file gets one clear error on stderr and exit status 2', () => {
  const dir = mkdtempSync(join(tmpdir(), 'livemig-report-'));
  const good = join(dir, 'good.jsonl');
  writeFileSync(good, lines(qemuInfo('active', 200, 1, 10 * MiB, 100 * MiB, 10, 400), { final: true, status: 'completed', 'total-time': 300, downtime: 20, passes: 2 }));
  const ok = spawnSync(process.execPath, [cliPath, 'report', good, '-o', join(dir, 'r.html')], { encoding: 'utf8' });
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /Migration completed; 1 pass drawn: wrote .*r\.html/);
  assert.match(readFileSync(join(dir, 'r.html'), 'utf8'), /^<!DOCTYPE html>/);
  const badFile = join(dir, 'bad.jsonl');
  writeFileSync(badFile, '{"event":"status","status":"setup"}\nnot json at all\n');
  const bad = spawnSync(process.execPath, [cliPath, 'report', badFile, '-o', join(dir, 'b.html')], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.equal(bad.stdout, '');
  assert.equal(count(bad.stderr, /line 2: not JSON/g), 1, bad.stderr);
  const absent = spawnSync(process.execPath, [cliPath, 'report', join(dir, 'absent.jsonl')], { encoding: 'utf8' });
  assert.equal(absent.status, 2);
  assert.match(absent.stderr, /^livemig report: cannot read .*absent\.jsonl: ENOENT/);
});

test('ticks: round values covering the range (linear, bytes in binary units, log)', () => {
  assert.deepEqual(niceTicks(0, 9.3), [0, 2, 4, 6, 8, 10]);
  assert.deepEqual(byteTicks(0, 28 * MiB), [0, 10, 20, 30].map((x) => x * MiB));
  assert.deepEqual(logTicks(0.02, 124), [0.01, 0.1, 1, 10, 100, 1000]);
});

test('bench charts are a pure function of the results: ratios only where both engines ran (time and downtime only where both converged)', () => {
  const rows = ratioRows(SAMPLE_BENCH);
  assert.equal(rows.length, 2);
  assert.equal(rows[0]!.total!.toFixed(2), '1.37');
  assert.equal(rows[0]!.downtime!.toFixed(2), '0.03');
  assert.deepEqual(Object.keys(rows[1]!).sort(), ['id', 'notConverged', 'throughput']);
  assert.deepEqual(rows[1]!.notConverged, ['livemig']);
  const ratios = benchRatiosSvg(SAMPLE_BENCH);
  assert.equal(count(ratios, /class="bar"/g), 4);
  assert.equal(benchRatiosSvg(SAMPLE_BENCH), ratios, 'the same results draw the same SVG');
  assert.match(ratios, />c-unl-50 \(livemig n\/c\)</, 'a scenario where an engine did not converge says so');
  assert.match(ratios, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/, 'a standalone SVG (GitHub renders it as an image)');
  const loopback = benchLoopbackSvg(SAMPLE_BENCH);
  assert.equal(count(loopback, /class="bar" data-series="livemig"/g), 3);
  assert.equal(count(loopback, /class="bar" data-series="QEMU 7.2"/g), 2);
  assert.equal(count(loopback, /class="limit"/g), 2);
});

test('bench results: a bad file is refused naming the field; the committed docs/bench-results.json and benchmarks.md table read back', () => {
  assert.throws(() => checkBenchResults({ ...SAMPLE_BENCH, version: 2 }, 'r.json'), /^Error: r\.json: version 2, expected 1/);
  assert.throws(() => checkBenchResults({ ...SAMPLE_BENCH, rows: [{ id: 'x', engine: 'kvm' }] }, 'r.json'), /rows\[0\]\.engine is "kvm"/);
  assert.throws(() => checkBenchResults({ ...SAMPLE_BENCH, rows: [{ ...SAMPLE_BENCH.rows[0], totalMs: 'fast' }] }, 'r.json'), /rows\[0\]\.totalMs is not a number/);
  const saved = checkBenchResults(JSON.parse(readFileSync(join(repoRoot, 'docs', 'bench-results.json'), 'utf8')));
  assert.ok(saved.rows.length >= 2);
  const fromMarkdown = resultsFromMarkdown(readFileSync(join(repoRoot, 'docs', 'benchmarks.md'), 'utf8'));
  assert.ok(fromMarkdown.rows.some((r) => r.engine === 'qemu') && fromMarkdown.rows.some((r) => r.engine === 'livemig'));
  assert.ok(fromMarkdown.rows.every((r) => r.runs > 0 && r.id.length > 0));
  assert.throws(() => resultsFromMarkdown('# nothing here'), /no "loopback TCP/);
});

test('livemig bench --redraw hands --redraw to the runner (charts from the saved results, no run)', () => {
  assert.deepEqual(benchArgs({ qemu: true, v86: true, redraw: true }), ['--redraw']);
  assert.deepEqual(benchArgs({ qemu: false, v86: true, only: 'a', write: false }), ['--only', 'a', '--no-qemu', '--no-write']);
});
