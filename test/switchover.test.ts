/**
 * The switchover policy (src/migration/switchover.ts) over recorded input
 * sequences, fed as the precopy loop feeds it: the estimate each round, and
 * on 'sync-and-check' the exact figure after the dirty-log sync.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decideSwitchover, DRAINED_MS, INITIAL_SWITCHOVER_STATE, type SwitchoverDecision, type SwitchoverInput, type SwitchoverState } from '../src/migration/switchover.js';
import { Prng } from './helpers/prng.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Link {
  bandwidthBytesPerMs: number;
  downtimeLimitMs: number;
  lastSyncCostMs: number;
  deviceStateBytes: number;
}
/** 100 MiB/s-ish, QEMU's default downtime-limit, a 2 ms sync, 2 KiB of devices: budget 100 KiB × 298. */
const LINK: Link = { bandwidthBytesPerMs: 100 * KiB, downtimeLimitMs: 300, lastSyncCostMs: 2, deviceStateBytes: 2 * KiB };
const THRESHOLD = 100 * KiB * 298;

/** One loop round as recorded: the time, the estimate, and the exact figure the sync would give. */
interface Step {
  nowMs: number;
  ramEstimate: number;
  ramExact?: number;
  link?: Partial<Link>;
}

interface Round {
  first: SwitchoverDecision;
  exact?: SwitchoverDecision;
  final: SwitchoverDecision;
}

/** Drive the policy as the loop does; returns every round. */
function drive(steps: Step[], link: Link = LINK, start: SwitchoverState = INITIAL_SWITCHOVER_STATE): Round[] {
  let state = start;
  const rounds: Round[] = [];
  for (const step of steps) {
    const l = { ...link, ...step.link };
    const base = { ...l, nowMs: step.nowMs };
    const first = decideSwitchover({ ...base, ramPendingBytes: step.ramEstimate, exact: false }, state);
    let final = first;
    let exact: SwitchoverDecision | undefined;
    if (first.decision === 'sync-and-check') {
      assert.notEqual(step.ramExact, undefined, `step at ${step.nowMs} ms syncs: record its exact figure`);
      exact = decideSwitchover({ ...base, ramPendingBytes: step.ramExact!, exact: true }, first.state);
      final = exact;
    }
    state = final.state;
    rounds.push({ first, exact, final });
    if (final.decision === 'switchover') break;
  }
  return rounds;
}

const kinds = (rounds: Round[]): string[] => rounds.map((r) => (r.exact ? `${r.first.decision}>${r.exact.decision}` : r.first.decision));

test('idle guest: the first pass drains, the sync finds nothing dirtied, switch over', () => {
  const rounds = drive([
    { nowMs: 0, ramEstimate: 64 * MiB },
    { nowMs: 100, ramEstimate: 40 * MiB },
    { nowMs: 300, ramEstimate: 20 * MiB }, // fits (29.1 MiB budget): drain, limit max(300, 2 × 20 MiB / 100 KiB) = 409.6 ms
    { nowMs: 400, ramEstimate: 8 * MiB },
    { nowMs: 480, ramEstimate: 0, ramExact: 0 },
  ]);
  assert.deepEqual(kinds(rounds), ['iterate', 'iterate', 'drain', 'drain', 'sync-and-check>switchover']);
  assert.equal(rounds[2]!.first.state.fitsSinceMs, 300);
  assert.equal(rounds[2]!.first.state.liveDrainLimitMs, (2 * 20 * MiB) / (100 * KiB));
  assert.equal(rounds[3]!.first.state.fitsSinceMs, 300, 'still fitting: the drain keeps its start');
  assert.equal(rounds[3]!.first.state.liveDrainLimitMs, 409.6, 'and its limit');
  const last = rounds[4]!;
  assert.equal(last.first.waitForDestination, true, 'PING before the sync: the estimate fits');
  assert.equal(last.final.thresholdBytes, THRESHOLD);
  assert.equal(last.final.pendingBytes, 2 * KiB);
  assert.match(last.final.reason, /after the dirty-log sync no RAM is pending; device state 2\.0 KiB is all the pause carries: switch over/);
  assert.deepEqual(last.final.state, INITIAL_SWITCHOVER_STATE);
});

test('an idle guest from the start: pending 0 syncs at once and switches over', () => {
  const rounds = drive([{ nowMs: 5, ramEstimate: 0, ramExact: 0 }]);
  assert.deepEqual(kinds(rounds), ['sync-and-check>switchover']);
  assert.match(rounds[0]!.first.reason, /no RAM is pending \(estimate\), and pending 2\.0 KiB \(RAM 0 B \+ device state 2\.0 KiB\) fits the 29\.1 MiB the pause may carry \(100\.0 KiB\/ms × \(downtime-limit 300 ms − sync 2 ms\)\)/);
});

test('the pass drained (RAM ≤ 2 ms of sending) syncs before the drain limit', () => {
  const rounds = drive([
    { nowMs: 0, ramEstimate: 1 * MiB },
    { nowMs: 10, ramEstimate: 100 * KiB * DRAINED_MS, ramExact: 12 * KiB },
  ]);
  assert.deepEqual(kinds(rounds), ['drain', 'sync-and-check>switchover']);
  assert.match(rounds[1]!.first.reason, /the pass is drained \(RAM ≤ 200\.0 KiB, 2 ms of sending\)/);
  assert.match(rounds[1]!.final.reason, /after the dirty-log sync pending 14\.0 KiB \(RAM 12\.0 KiB \+ device state 2\.0 KiB\) fits the 29\.1 MiB .*: switch over/);
});

test('busy guest that never fits: iterates forever, no drain, no sync', () => {
  const steps: Step[] = [];
  for (let i = 0; i < 50; i++) steps.push({ nowMs: i * 50, ramEstimate: 30 * MiB + i * 4096 });
  const rounds = drive(steps);
  assert.equal(rounds.length, 50);
  assert.ok(rounds.every((r) => r.final.decision === 'iterate' && r.final.state.fitsSinceMs === undefined));
  assert.match(rounds[0]!.final.reason, /^pending 30\.0 MiB \(RAM 30\.0 MiB \+ device state 2\.0 KiB\) exceeds the 29\.1 MiB the pause may carry .*: keep iterating$/);
});

test('a guest that fits after draining for the whole limit; the sync check passes', () => {
  // The estimate fits but never drains (the guest keeps dirtying at ~ the link's speed).
  const steps: Step[] = [];
  for (let t = 0; t <= 700; t += 50) steps.push({ nowMs: 1000 + t, ramEstimate: 10 * MiB, ramExact: 9 * MiB });
  const rounds = drive(steps);
  // Limit: max(300, 2 × 10 MiB / 100 KiB/ms) = 204.8 → 300 ms from 1000.
  assert.equal(rounds[0]!.first.state.liveDrainLimitMs, 300);
  assert.deepEqual(kinds(rounds), ['drain', 'drain', 'drain', 'drain', 'drain', 'drain', 'sync-and-check>switchover']);
  assert.match(rounds[5]!.first.reason, /sending the rest of the pass live \(250 ms of at most 300 ms, until RAM ≤ 200\.0 KiB\)/);
  assert.match(rounds[6]!.first.reason, /has been sent live for 300 ms \(limit 300 ms\): sync the dirty log/);
  assert.equal(rounds[6]!.final.pendingBytes, 9 * MiB + 2 * KiB);
});

test('a dip that fits then stops fitting resets the drain', () => {
  const rounds = drive([
    { nowMs: 0, ramEstimate: 10 * MiB },
    { nowMs: 50, ramEstimate: 40 * MiB },
    { nowMs: 100, ramEstimate: 10 * MiB },
  ]);
  assert.deepEqual(kinds(rounds), ['drain', 'iterate', 'drain']);
  assert.equal(rounds[1]!.final.state.fitsSinceMs, undefined);
  assert.equal(rounds[2]!.final.state.fitsSinceMs, 100);
});

test('after-sync check failing: keep iterating, the state resets and the drain starts over', () => {
  const rounds = drive([
    { nowMs: 0, ramEstimate: 5 * MiB },
    { nowMs: 400, ramEstimate: 5 * MiB, ramExact: 40 * MiB }, // limit 300 ms passed; the guest dirtied 40 MiB meanwhile
    { nowMs: 450, ramEstimate: 40 * MiB },
    { nowMs: 500, ramEstimate: 6 * MiB },
    { nowMs: 700, ramEstimate: 1 * MiB },
    { nowMs: 800, ramEstimate: 1 * MiB, ramExact: 1 * MiB },
  ]);
  assert.deepEqual(kinds(rounds), ['drain', 'sync-and-check>iterate', 'iterate', 'drain', 'drain', 'sync-and-check>switchover']);
  const failed = rounds[1]!.final;
  assert.match(failed.reason, /after the dirty-log sync pending 40\.0 MiB \(RAM 40\.0 MiB \+ device state 2\.0 KiB\) exceeds the 29\.1 MiB .*: keep iterating, the drain starts over/);
  assert.equal(failed.state.fitsSinceMs, undefined);
  assert.equal(failed.state.syncThresholdBytes, undefined);
  assert.equal(rounds[3]!.final.state.fitsSinceMs, 500, 'a new drain from the next fit');
  assert.equal(rounds[3]!.final.state.liveDrainLimitMs, 300);
  assert.deepEqual(failed.state, INITIAL_SWITCHOVER_STATE);
});

test('the exact check uses the budget the sync was decided with', () => {
  const first = decideSwitchover({ ...LINK, nowMs: 0, ramPendingBytes: 0, exact: false }, INITIAL_SWITCHOVER_STATE);
  assert.equal(first.decision, 'sync-and-check');
  assert.equal(first.state.syncThresholdBytes, THRESHOLD);
  // The sync itself took 250 ms: a fresh threshold would be 100 KiB × 50; the decision keeps 298.
  const exact = decideSwitchover({ ...LINK, lastSyncCostMs: 250, nowMs: 260, ramPendingBytes: 20 * MiB, exact: true }, first.state);
  assert.equal(exact.decision, 'switchover');
  assert.equal(exact.thresholdBytes, THRESHOLD);
});

test('bandwidth 0 or unknown: nothing fits; only RAM pending 0 syncs (no PING) and only exact 0 switches over', () => {
  for (const bandwidthBytesPerMs of [0, Number.NaN, -5]) {
    const link = { ...LINK, bandwidthBytesPerMs };
    const rounds = drive(
      [
        { nowMs: 0, ramEstimate: 4096 },
        { nowMs: 10, ramEstimate: 1 },
        { nowMs: 20, ramEstimate: 0, ramExact: 4096 },
        { nowMs: 30, ramEstimate: 4096 },
        { nowMs: 40, ramEstimate: 0, ramExact: 0 },
      ],
      link,
    );
    assert.deepEqual(kinds(rounds), ['iterate', 'iterate', 'sync-and-check>iterate', 'iterate', 'sync-and-check>switchover'], String(bandwidthBytesPerMs));
    assert.ok(rounds.every((r) => r.final.thresholdBytes === 0));
    assert.equal(rounds[2]!.first.waitForDestination, false, 'the estimate did not fit: no PING wait');
    assert.match(rounds[2]!.first.reason, /no RAM is pending \(estimate\), though pending 2\.0 KiB .* exceeds the 0 B the pause may carry \(bandwidth unknown or 0 × \(downtime-limit 300 ms − sync 2 ms\)\)/);
  }
});

test('downtime-limit 0 (or a sync costlier than the limit): the budget is 0', () => {
  for (const link of [{ ...LINK, downtimeLimitMs: 0 }, { ...LINK, lastSyncCostMs: 500 }]) {
    const rounds = drive(
      [
        { nowMs: 0, ramEstimate: 8 * MiB },
        { nowMs: 10, ramEstimate: 4096 },
        { nowMs: 20, ramEstimate: 0, ramExact: 8192 },
        { nowMs: 30, ramEstimate: 0, ramExact: 0 },
      ],
      link,
    );
    assert.deepEqual(kinds(rounds), ['iterate', 'iterate', 'sync-and-check>iterate', 'sync-and-check>switchover']);
    assert.ok(rounds.every((r) => r.final.thresholdBytes === 0));
  }
  // With no device state at all, a 0 budget is met by exactly nothing pending: the estimate fits and PINGs.
  const d = decideSwitchover({ ...LINK, downtimeLimitMs: 0, deviceStateBytes: 0, nowMs: 0, ramPendingBytes: 0, exact: false }, INITIAL_SWITCHOVER_STATE);
  assert.equal(d.decision, 'sync-and-check');
  assert.equal(d.waitForDestination, true);
});

test('pure: the same input and state give the same output, and the state passed in is not changed', () => {
  const state: SwitchoverState = Object.freeze({ fitsSinceMs: 100, liveDrainLimitMs: 300, syncThresholdBytes: undefined });
  const input: SwitchoverInput = { ...LINK, nowMs: 250, ramPendingBytes: 3 * MiB, exact: false };
  const a = decideSwitchover(input, state);
  const b = decideSwitchover({ ...input }, { ...state });
  assert.deepEqual(a, b);
  assert.deepEqual(state, { fitsSinceMs: 100, liveDrainLimitMs: 300, syncThresholdBytes: undefined });
  assert.equal(a.decision, 'drain');
});

/**
 * The loop's policy as it stood inline in outgoing.ts run() (phase 2), copied
 * for comparison: thresholdBytes, fitsSinceMs, liveDrainLimitMs, DRAINED_MS,
 * the PING wait, the exact sync.
 */
function inlineLoop(steps: Step[], link: Link): string[] {
  const out: string[] = [];
  let fitsSinceMs: number | undefined;
  let liveDrainLimitMs = 0;
  for (const step of steps) {
    const { bandwidthBytesPerMs, downtimeLimitMs, lastSyncCostMs, deviceStateBytes } = link;
    const thresholdBytes = bandwidthBytesPerMs * Math.max(0, downtimeLimitMs - lastSyncCostMs);
    let ramPendingBytes = step.ramEstimate;
    const fits = ramPendingBytes + deviceStateBytes <= thresholdBytes;
    if (!fits) fitsSinceMs = undefined;
    else if (fitsSinceMs === undefined) {
      fitsSinceMs = step.nowMs;
      liveDrainLimitMs = Math.max(downtimeLimitMs, (2 * ramPendingBytes) / Math.max(1, bandwidthBytesPerMs));
    }
    const drained = ramPendingBytes <= bandwidthBytesPerMs * 2;
    if (ramPendingBytes === 0 || (fits && (drained || step.nowMs - fitsSinceMs! >= liveDrainLimitMs))) {
      const ping = fits ? '+ping' : '';
      ramPendingBytes = step.ramExact!;
      fitsSinceMs = undefined;
      if (ramPendingBytes + deviceStateBytes <= thresholdBytes || ramPendingBytes === 0) {
        out.push(`sync${ping}>switchover`);
        break;
      }
      out.push(`sync${ping}>iterate`);
      continue;
    }
    out.push('iterate');
  }
  return out;
}

test('same decisions as the inline loop of outgoing.ts over random recorded sequences', () => {
  for (let seed = 1; seed <= 300; seed++) {
    const prng = new Prng(seed);
    const link: Link = {
      bandwidthBytesPerMs: prng.chance(0.1) ? 0 : prng.range(1, 200) * KiB,
      downtimeLimitMs: prng.chance(0.1) ? 0 : prng.range(1, 500),
      lastSyncCostMs: prng.range(0, 20),
      deviceStateBytes: prng.range(0, 64 * KiB),
    };
    const steps: Step[] = [];
    let t = prng.range(0, 1000);
    for (let i = 0; i < 40; i++) {
      t += prng.range(0, 200);
      const ramEstimate = prng.chance(0.15) ? 0 : prng.range(0, 64) * prng.range(0, 1 << 20);
      const ramExact = prng.chance(0.3) ? 0 : prng.range(0, 64) * prng.range(0, 1 << 20);
      steps.push({ nowMs: t, ramEstimate, ramExact });
    }
    const expected = inlineLoop(steps, link);
    const got = drive(steps, link).map((r) => (r.exact ? `sync${r.first.waitForDestination ? '+ping' : ''}>${r.exact.decision}` : 'iterate'));
    assert.deepEqual(got, expected, `seed ${seed}`);
  }
});
