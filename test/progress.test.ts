/** The progress display's figures and lines (src/cli/progress.ts) for a few snapshots a migration goes through. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { figuresOf, formatFrame, formatProgressLine } from '../src/cli/progress.js';

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
