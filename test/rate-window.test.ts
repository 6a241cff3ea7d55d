/** The per-window rate limit: max-bandwidth holds on average even when one record is larger than a window's budget. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RateWindow, WINDOW_MS } from '../src/migration/rate-window.js';

/** A sender as the migration loop drives it, on a simulated clock: records while not over budget, else wait for the window's end. */
function simulate(recordBytes: number, maxBandwidthBytesPerSecond: number, durationMs: number): number {
  let nowMs = 0;
  let sentBytes = 0;
  const window = new RateWindow(nowMs, sentBytes, 0);
  while (nowMs < durationMs) {
    if (!window.overBudget(sentBytes, maxBandwidthBytesPerSecond)) {
      sentBytes += recordBytes;
      nowMs += recordBytes / 1e6; // a 1 GB/s link
    } else {
      nowMs += window.msUntilEnd(nowMs) || 1;
    }
    window.maybeClose(nowMs, sentBytes, 0, false, maxBandwidthBytesPerSecond);
  }
  return (sentBytes / durationMs) * 1000;
}

test('max-bandwidth holds with records larger than a window (a 1 MiB disk chunk at 5 MB/s): the excess is owed by the next windows', () => {
  const limit = 5_000_000;
  const rate = simulate(1 << 20, limit, 10_000);
  assert.ok(rate <= limit * 1.12, `${(rate / 1e6).toFixed(2)} MB/s against a 5 MB/s limit`);
  assert.ok(rate >= limit * 0.85, `${(rate / 1e6).toFixed(2)} MB/s: the limit is used, not starved`);
});

test('small records fill the limit as before, and no limit means no debt', () => {
  const limit = 50_000_000;
  const rate = simulate(4096, limit, 5_000);
  assert.ok(rate <= limit * 1.05 && rate >= limit * 0.9, `${(rate / 1e6).toFixed(2)} MB/s against 50 MB/s`);
  const window = new RateWindow(0, 0, 0);
  window.maybeClose(WINDOW_MS, 10 << 20, 0, false, 0);
  assert.equal(window.overBudget(10 << 20, 0), false);
  // A limit set after a fast window: no debt from the time it was unlimited.
  assert.equal(window.overBudget(10 << 20, 1_000_000), false);
});

test('the estimate the switchover goes by: the last closed window, else the running first window once it has run half a window', () => {
  const window = new RateWindow(1000, 0, 0);
  // Nothing is known yet: a first pass that ended 20 ms in says little.
  assert.equal(window.estimateBytesPerMs(1020, 30 << 20), 0);
  // 150 MiB in 99 ms, before the first window closed: that rate, not 0 (which made the sync's budget 0
  // and sent a whole second pass for nothing).
  assert.equal(window.estimateBytesPerMs(1099, 150 << 20), (150 << 20) / 99);
  assert.equal(window.bandwidthBytesPerMs, 0, 'the estimate does not close the window');
  // Once a window closed, its figure, whatever the running window does.
  assert.ok(window.maybeClose(1100, 150 << 20, 0));
  assert.equal(window.estimateBytesPerMs(1160, 151 << 20), (150 << 20) / 100);
});
