/** The auto-switch policy (postcopy-policy.ts), a pure function: converging passes never switch; stalled ones do. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decidePostcopyAuto, INITIAL_POSTCOPY_AUTO_STATE, type PostcopyAutoState } from '../src/migration/postcopy-policy.js';

const MiB = 1 << 20;

function run(passes: Array<[pendingMiB: number, rounds: number]>, thresholdMiB = 50): boolean[] {
  let state: PostcopyAutoState = INITIAL_POSTCOPY_AUTO_STATE;
  return passes.map(([pendingMiB, rounds]) => {
    const d = decidePostcopyAuto({ pendingBytes: pendingMiB * MiB, thresholdBytes: thresholdMiB * MiB, completedRounds: rounds }, state);
    state = d.state;
    return d.switchToPostcopy;
  });
}

test('a guest that dirties as fast as the link sends: the second pass in a row without progress switches', () => {
  assert.deepEqual(run([[100, 1], [99, 1], [101, 2]]), [false, false, true]);
});

test('converging passes never switch, however many', () => {
  assert.deepEqual(run([[400, 1], [300, 1], [220, 2], [160, 2], [120, 3], [95, 3], [80, 4]]), [false, false, false, false, false, false, false]);
});

test('the first round over RAM never counts; one stalled pass between good ones does not switch', () => {
  assert.deepEqual(run([[100, 0], [100, 0], [100, 0]]), [false, false, false]);
  assert.deepEqual(run([[200, 1], [195, 1], [120, 1], [118, 2], [60, 2]]), [false, false, false, false, false]);
});

test('the reason carries the numbers', () => {
  let state = INITIAL_POSTCOPY_AUTO_STATE;
  let reason = '';
  for (const pending of [100, 100, 100]) {
    const d = decidePostcopyAuto({ pendingBytes: pending * MiB, thresholdBytes: 40 * MiB, completedRounds: 1 }, state);
    state = d.state;
    reason = d.reason;
  }
  assert.match(reason, /^pre-copy is not converging: 100\.0 MiB pending after the sync against the 40\.0 MiB the pause may carry \(gap 60\.0 MiB, 60\.0 MiB the pass before\); 2 passes in a row/);
});
