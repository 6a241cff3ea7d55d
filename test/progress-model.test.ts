/** The progress model (src/migration/progress-model.ts) over synthetic migrations: percent, convergence, ETA, diagnosis. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { explainDowntime, ProgressModel, type ProgressObservation, type ProgressReport } from '../src/migration/progress-model.js';

const PAGE = 4096;
const MiB = 1 << 20;

/**
 * A synthetic source: RAM of `totalBytes`, sent at `sendBytesPerSecond`, the guest dirtying
 * `dirtyBytesPerSecond` over a working set of `workingSetBytes`; a sync whenever the pass is drained.
 * Snapshots every 100 ms (as a poller would see them); returns every report.
 */
function simulate(o: { totalBytes: number; sendBytesPerSecond: number; dirtyBytesPerSecond: number; workingSetBytes: number; durationMs: number; exact: boolean; downtimeLimitMs?: number; maxBandwidth?: number }): ProgressReport[] {
  const model = new ProgressModel(() => ({ downtimeLimitMs: o.downtimeLimitMs ?? 300, maxBandwidthBytesPerSecond: o.maxBandwidth ?? 0, capabilities: {} }));
  let remaining = o.totalBytes;
  let transferred = 0;
  let pagesSent = 0;
  let syncs = 1;
  let dirtyPending = 0; // dirtied since the last sync, not yet in `remaining`
  const reports: ProgressReport[] = [];
  if (o.exact) model.recordPass({ atMs: 0, dirtySyncCount: 1, transferredBytes: 0, pagesSent: 0, remainingBytes: remaining, dirtiedBytes: 0 });
  const stepMs = 10;
  for (let t = stepMs; t <= o.durationMs; t += stepMs) {
    const send = Math.min(remaining, (o.sendBytesPerSecond * stepMs) / 1000);
    remaining -= send;
    transferred += send;
    pagesSent += send / PAGE;
    // Newly dirty pages: only those already sent can become dirty again (capped by the working set).
    const sentOfWorkingSet = Math.min(o.workingSetBytes, o.totalBytes - remaining);
    dirtyPending = Math.min(dirtyPending + (o.dirtyBytesPerSecond * stepMs) / 1000, Math.max(0, sentOfWorkingSet - 0));
    if (remaining <= 0.5 * PAGE) {
      syncs++;
      const dirtied = Math.min(dirtyPending, o.workingSetBytes);
      remaining += dirtied;
      dirtyPending = 0;
      if (o.exact) model.recordPass({ atMs: t, dirtySyncCount: syncs, transferredBytes: transferred, pagesSent, remainingBytes: remaining, dirtiedBytes: dirtied });
      if (remaining < (o.sendBytesPerSecond * (o.downtimeLimitMs ?? 300)) / 1000) {
        reports.push(model.observe(obs('completed', t)));
        return reports;
      }
    }
    if (t % 100 === 0) reports.push(model.observe(obs('active', t)));
  }
  return reports;
  function obs(status: string, t: number): ProgressObservation {
    return {
      status,
      elapsedMs: t,
      ram: { totalBytes: o.totalBytes, remainingBytes: status === 'completed' ? 0 : remaining, transferredBytes: transferred, pagesSent, dirtySyncCount: syncs, mbps: (o.sendBytesPerSecond * 8) / 1e6, pagesPerSecond: o.sendBytesPerSecond / PAGE },
    };
  }
}

function assertNeverBackwards(reports: ProgressReport[]): void {
  for (let i = 1; i < reports.length; i++) assert.ok(reports[i]!.percent >= reports[i - 1]!.percent, `percent went back from ${reports[i - 1]!.percent} to ${reports[i]!.percent} at report ${i}`);
}

for (const exact of [true, false]) {
  const source = exact ? 'the source records passes' : 'derived from snapshots (a QEMU source)';
  test(`a converging migration: percent never goes back, ends at 100, ETA falls to about the real time left (${source})`, () => {
    const reports = simulate({ totalBytes: 256 * MiB, sendBytesPerSecond: 100e6, dirtyBytesPerSecond: 30e6, workingSetBytes: 64 * MiB, durationMs: 30_000, exact });
    assertNeverBackwards(reports);
    const last = reports.at(-1)!;
    assert.equal(last.phase, 'completed');
    assert.equal(last.percent, 100);
    assert.ok(reports.slice(0, -1).every((r) => r.percent < 100), '100 only once completed');
    const endMs = reports.length * 100;
    // Every ETA given while iterating is within a factor of the real time left (the model, not 0).
    const etas = reports.map((r, i) => ({ eta: r['eta-ms'], left: endMs - (i + 1) * 100, phase: r.phase })).filter((e) => e.eta !== undefined && e.phase === 'iterate');
    assert.ok(etas.length > 0, 'an ETA while iterating');
    for (const e of etas) assert.ok(e.eta! > 0 && e.eta! < Math.max(3 * e.left, 1000), `ETA ${e.eta} ms with ${e.left} ms left`);
    const withRatio = reports.filter((r) => r['convergence-ratio'] !== undefined && r.phase === 'iterate');
    assert.ok(withRatio.length > 0, 'a convergence ratio while iterating');
    assert.ok(withRatio.every((r) => r['convergence-ratio']! < 1), 'converges: ratio below 1');
    assert.ok(!reports.some((r) => r.diagnosis), 'no diagnosis for a converging migration');
  });

  test(`a migration that cannot converge: percent stays put (no 100 -> 86), no ETA, and a diagnosis with the numbers and levers (${source})`, () => {
    // 200M cap: the guest dirties more than goes out; the working set (48 MiB) never fits 300 ms at 25 MB/s.
    const reports = simulate({ totalBytes: 128 * MiB, sendBytesPerSecond: 25e6, dirtyBytesPerSecond: 60e6, workingSetBytes: 48 * MiB, durationMs: 60_000, exact, maxBandwidth: 25e6 });
    assertNeverBackwards(reports);
    const last = reports.at(-1)!;
    assert.equal(last.phase, 'iterate');
    assert.ok(last.percent < 99, `percent ${last.percent}`);
    assert.equal(last.converging, false);
    assert.equal(last['eta-ms'], undefined);
    assert.ok(last.passes.length > 10);
    assert.ok(last.diagnosis, 'a diagnosis');
    assert.match(last.diagnosis!.summary, /not converging after \d+ passes/);
    assert.match(last.diagnosis!.summary, /dirties [\d.]+ MB\/s while 2[45]\.\d MB\/s go out/);
    assert.match(last.diagnosis!.summary, /remaining [\d.]+ MiB stays above the switchover threshold/);
    const levers = last.diagnosis!.levers.join('\n');
    for (const lever of ['auto-converge', 'xbzrle', 'postcopy', 'downtime-limit', 'max-bandwidth']) assert.match(levers, new RegExp(`^${lever}:`, 'm'));
    // The diagnosis comes within a few seconds of the first full pass.
    const firstDiagnosis = reports.findIndex((r) => r.diagnosis);
    assert.ok(firstDiagnosis * 100 < 15_000, `diagnosis after ${firstDiagnosis * 100} ms`);
  });
}

test('levers: only those that apply and are not already on', () => {
  const model = new ProgressModel(() => ({ downtimeLimitMs: 300, maxBandwidthBytesPerSecond: 0, capabilities: { 'auto-converge': true, xbzrle: true, 'postcopy-ram': true } }));
  let report: ProgressReport | undefined;
  model.recordPass({ atMs: 0, dirtySyncCount: 1, transferredBytes: 0, pagesSent: 0, remainingBytes: 64 * MiB, dirtiedBytes: 0 });
  let sent = 0;
  for (let pass = 2; pass < 12; pass++) {
    sent += 16 * MiB;
    model.recordPass({ atMs: pass * 500, dirtySyncCount: pass, transferredBytes: sent, pagesSent: sent / PAGE, remainingBytes: 16 * MiB, dirtiedBytes: 16 * MiB });
    report = model.observe({ status: 'active', elapsedMs: pass * 500, ram: { totalBytes: 64 * MiB, remainingBytes: 16 * MiB, transferredBytes: sent, dirtySyncCount: pass } });
  }
  const levers = report!.diagnosis!.levers.join('\n');
  assert.doesNotMatch(levers, /^auto-converge|^xbzrle|^max-bandwidth/m);
  assert.match(levers, /^postcopy: migrate-start-postcopy now/m);
  assert.match(levers, /^downtime-limit: raise it from 300 ms/m);
});

test('disk progress: the bulk copy counts in the percent and is reported; RAM done early does not show 100 %', () => {
  const model = new ProgressModel(() => ({ downtimeLimitMs: 300 }));
  const ram = { totalBytes: 64 * MiB, remainingBytes: 0, transferredBytes: 64 * MiB, dirtySyncCount: 1 };
  const disk = { transferredBytes: 32 * MiB, remainingBytes: 224 * MiB, totalBytes: 256 * MiB };
  const r = model.observe({ status: 'active', elapsedMs: 1000, ram, disk });
  assert.deepEqual(r.disk, { 'transferred-bytes': 32 * MiB, 'remaining-bytes': 224 * MiB, 'total-bytes': 256 * MiB, percent: 12 });
  assert.ok(r.percent > 20 && r.percent < 30, `percent ${r.percent}: RAM 64 MiB done, disk 32 of 256 MiB`);
  const later = model.observe({ status: 'active', elapsedMs: 5000, ram, disk: { transferredBytes: 192 * MiB, remainingBytes: 64 * MiB, totalBytes: 256 * MiB } });
  assert.ok(later.percent > r.percent && later.percent < 80);
});

test('failed and cancelled: the phase says so and the percent stays where it was; cancelling keeps the phase', () => {
  for (const end of ['failed', 'cancelled'] as const) {
    const model = new ProgressModel();
    const ram = { totalBytes: 128 * MiB, remainingBytes: 64 * MiB, transferredBytes: 64 * MiB, dirtySyncCount: 1 };
    const during = model.observe({ status: 'active', elapsedMs: 500, ram });
    assert.equal(during.phase, 'first-pass');
    assert.equal(during.percent, 40);
    assert.equal(model.observe({ status: 'cancelling', elapsedMs: 600, ram }).phase, 'first-pass');
    const after = model.observe({ status: end, elapsedMs: 700 });
    assert.equal(after.phase, end);
    assert.equal(after.percent, 40);
    assert.equal(after['eta-ms'], undefined);
  }
});

test('a downtime over the limit is explained by its phases; one within it is not', () => {
  const phases = { 'pause-ms': 1.2, 'complete-ms': 410, 'flush-ms': 3, 'confirm-ms': 20 };
  const text = explainDowntime(434, 300, phases)!;
  assert.match(text, /downtime 434 ms is over the downtime-limit of 300 ms/);
  assert.match(text, /most of it went to the last dirty pages and the device state \(410 ms\)/);
  assert.equal(explainDowntime(120, 300, phases), undefined);
});

test('a first pass that stops moving (the disks\' rewritten chunks take the bandwidth) is diagnosed, without an ETA', () => {
  const model = new ProgressModel(() => ({ downtimeLimitMs: 300, maxBandwidthBytesPerSecond: 5 << 20, copiesDisks: true }));
  const disk = { transferredBytes: 64 * MiB, remainingBytes: 0, totalBytes: 64 * MiB };
  let report: ProgressReport | undefined;
  for (let t = 0; t <= 6000; t += 250) {
    // RAM stuck at 4 MiB sent of 16 MiB; the link busy at its cap.
    report = model.observe({ status: 'active', elapsedMs: t, ram: { totalBytes: 16 * MiB, remainingBytes: 12 * MiB, transferredBytes: 4 * MiB, dirtySyncCount: 1, mbps: 42 }, disk });
    if (t < 3000) assert.equal(report.diagnosis, undefined, `no diagnosis yet at ${t} ms`);
  }
  assert.equal(report!.phase, 'first-pass');
  assert.equal(report!['eta-ms'], undefined);
  assert.match(report!.diagnosis!.summary, /^no progress for [\d.]+ s in the first pass: RAM remaining 12\.0 MiB of 16\.0 MiB while 5\.3 MB\/s go out, all of it to the disks' rewritten chunks/);
  assert.doesNotMatch(report!.diagnosis!.levers.join('\n'), /^postcopy/m, 'no postcopy with disks');
});

test('a first pass with nothing going out is the destination\'s or the link\'s doing: the diagnosis says so and offers no guest-side lever', () => {
  const model = new ProgressModel(() => ({ downtimeLimitMs: 300, capabilities: {}, peerTimeoutMs: 10_000 }));
  let report: ProgressReport | undefined;
  for (let t = 0; t <= 6000; t += 250) {
    // 4 MiB went out, then nothing (a destination that stopped reading): 0 MB/s.
    report = model.observe({ status: 'active', elapsedMs: t, ram: { totalBytes: 4096 * MiB, remainingBytes: 4092 * MiB, transferredBytes: 4 * MiB, dirtySyncCount: 1, mbps: 0 } });
  }
  assert.match(report!.diagnosis!.summary, /^no data has gone out for [\d.]+ s in the first pass \(0\.0 MB\/s\): the destination is not taking it/);
  const levers = report!.diagnosis!.levers.join('\n');
  assert.match(levers, /x-livemig-peer-timeout-ms: .*10000 ms/);
  assert.doesNotMatch(levers, /auto-converge|xbzrle|postcopy|downtime-limit/);
});

test('postcopy: the rest of the bar follows what is still missing on the destination, with an ETA', () => {
  const model = new ProgressModel(() => ({ downtimeLimitMs: 300 }));
  const ram = (remainingBytes: number, sync: number) => ({ totalBytes: 64 * MiB, remainingBytes, transferredBytes: 64 * MiB - remainingBytes, dirtySyncCount: sync, mbps: 800 });
  assert.equal(model.observe({ status: 'active', elapsedMs: 100, ram: ram(32 * MiB, 1) }).percent, 40);
  const start = model.observe({ status: 'postcopy-active', elapsedMs: 200, ram: ram(40 * MiB, 2) });
  assert.equal(start.phase, 'postcopy');
  assert.equal(start.percent, 40);
  const half = model.observe({ status: 'postcopy-active', elapsedMs: 300, ram: ram(20 * MiB, 2) });
  assert.ok(half.percent > 65 && half.percent < 75, String(half.percent));
  assert.ok(half['eta-ms']! > 0);
  assert.equal(model.observe({ status: 'completed', elapsedMs: 400, ram: ram(0, 2) }).percent, 100);
});
