/** The progress display's figures and lines (src/cli/progress.ts) for a few snapshots a migration goes through. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildReport, figuresOf, formatFrame, formatProgressLine, formatReport } from '../src/cli/progress.js';
import { ProgressModel } from '../src/migration/progress-model.js';

const ram = { transferred: 200 << 20, remaining: 24 << 20, total: 256 << 20, mbps: 8000, 'dirty-sync-count': 3, 'page-size': 4096, 'pages-per-second': 200_000, 'dirty-pages-rate': 0 };

test('postcopy: the phase, the pages still missing on the destination and the requests its guest made', () => {
  const f = figuresOf({ status: 'postcopy-active', 'total-time': 1500, ram: { ...ram, 'postcopy-requests': 42, 'postcopy-bytes': 50 << 20 } }, 3, 1500);
  const line = formatProgressLine(f);
  assert.match(line, /postcopy-active/);
  assert.match(line, /postcopy: 6144 pages \(24\.0 MiB\) still missing on the destination, 42 requested by its guest/);
  const frame = formatFrame(f, () => '');
  assert.match(frame[0], /6144 pages .* still missing/);
});

test('pre-copy lines are unchanged: no postcopy figures', () => {
  const f = figuresOf({ status: 'active', 'total-time': 1500, ram }, 3, 1500);
  assert.equal(f.postcopyRequests, undefined);
  assert.doesNotMatch(formatProgressLine(f), /postcopy/);
});

// ---- issue 17: the display tells the truth ----

const MiB = 1 << 20;

test('a failed migration is drawn as failed with its reason, not as "failed, pass 0: 100% of 128.0 MiB" (QEMU adds a zeroed ram)', () => {
  const zeroed = { transferred: 0, remaining: 0, total: 128 * MiB, duplicate: 0, normal: 0, mbps: 0, 'dirty-sync-count': 0, 'page-size': 4096, 'pages-per-second': 0, 'dirty-pages-rate': 0 };
  const f = figuresOf({ status: 'failed', 'error-desc': 'Failed to connect socket: Connection refused', 'total-time': 3, ram: zeroed }, 0, 3, new ProgressModel());
  const line = formatProgressLine(f);
  assert.equal(line, '[    3 ms] failed: FAILED at 0% done, before the first pass: Failed to connect socket: Connection refused');
  assert.match(formatFrame(f, () => '')[0], /^failed +pass 0 +FAILED at 0% done, before the first pass: Failed to connect/);
});

test('QEMU snapshots through several passes: the percent never goes back (no 100% -> 86% at each sync), ETA never 0 ms while work remains', () => {
  const model = new ProgressModel(() => ({ downtimeLimitMs: 300 }));
  const total = 128 * MiB;
  const lines: string[] = [];
  let transferred = 0;
  let pages = 0;
  // Each pass drains what is dirty (remaining falls to 0), then the sync brings back what the guest dirtied.
  const passes = [{ start: total, end: 18 * MiB }, { start: 18 * MiB, end: 16 * MiB }, { start: 16 * MiB, end: 17 * MiB }, { start: 17 * MiB, end: 16 * MiB }];
  let t = 0;
  for (const [i, p] of passes.entries()) {
    for (let k = 0; k <= 4; k++) {
      t += 250;
      const remaining = Math.round(p.start * (1 - k / 4));
      const sent = k === 0 ? 0 : p.start / 4;
      transferred += sent;
      pages += sent / 4096;
      const ram = { transferred, remaining: k === 4 ? p.end : remaining, total, duplicate: 0, normal: pages, mbps: 400, 'dirty-sync-count': k === 4 ? i + 2 : i + 1, 'page-size': 4096, 'pages-per-second': 12_000, 'dirty-pages-rate': i > 0 ? 4000 : 0 };
      lines.push(formatProgressLine(figuresOf({ status: 'active', 'total-time': t, ram }, 0, t, model)));
    }
  }
  const percents = lines.map((l) => Number(/: +(\d+)%/.exec(l)![1]));
  for (let i = 1; i < percents.length; i++) assert.ok(percents[i]! >= percents[i - 1]!, lines.join('\n'));
  assert.ok(percents.every((p) => p < 100), lines.join('\n'));
  assert.ok(lines.every((l) => !/ETA (≥ )?0 ms/.test(l)), lines.join('\n'));
  assert.match(lines.at(-1)!, /ETA none: not converging|convergence/);
});

test('the report: a refused disk destination is not "disks 256.0 MiB copied"; a downtime over its limit is explained by its phases', () => {
  const failed = buildReport({ status: 'failed', 'error-desc': 'the destination could not load the stream (SHUT 1)', 'total-time': 120, ram: { ...ram, transferred: 0 }, disk: { transferred: 0, remaining: 256 * MiB, total: 256 * MiB } }, 1, 130);
  const text = formatReport(failed);
  assert.match(text, /^ {2}disks {8}0 B of 256\.0 MiB sent, not copied \(the migration failed\)$/m);
  assert.doesNotMatch(text, /256\.0 MiB copied/);

  const over = buildReport({ status: 'completed', 'total-time': 900, downtime: 434, ram, 'x-livemig-downtime-limit-ms': 300, 'x-livemig-downtime-phases': { 'pause-ms': 1, 'complete-ms': 20, 'flush-ms': 3, 'confirm-ms': 410 } }, 3, 900);
  const overText = formatReport(over);
  assert.match(overText, /^ {2}downtime {5}434 ms, OVER the 300 ms limit$/m);
  assert.match(overText, /where it went: stopping the guest 1 ms, .*; most of it went to the destination's load until its confirmation \(410 ms\)/);
  const within = formatReport(buildReport({ status: 'completed', 'total-time': 900, downtime: 120, ram, 'x-livemig-downtime-limit-ms': 300 }, 3, 900));
  assert.match(within, /^ {2}downtime {5}120 ms \(limit 300 ms\)$/m);
});
