/**
 * Live migration end to end: an in-process source whose guest writes memory
 * the whole time, and a destination in a real child process.
 */
import { queryMigrate } from '../src/monitor/query-migrate.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, connect, type Socket } from 'node:net';
import { analyzeFile } from '../src/analyze/analyze-stream.js';
import { createTestMachine, type TestMachine } from '../src/machine/index.js';
import { OutgoingMigration, type MigrationStatus } from '../src/migration/index.js';
import { LivemigProcess } from './helpers/livemig-process.js';

const RAM = '64M';
const RAM_BYTES = 64 << 20;

async function sourceMachine(dirtyRatePagesPerSecond = 20_000): Promise<TestMachine> {
  const machine = await createTestMachine({ ramSizeBytes: RAM_BYTES, dirtyRatePagesPerSecond, serialEveryPasses: 1 });
  await waitUntil(() => machine.stats().pagesWritten > 1000);
  return machine;
}

async function waitUntil(condition: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function destination(uri = 'tcp:127.0.0.1:0', extra: string[] = []): Promise<{ dst: LivemigProcess; address: string }> {
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', RAM, '--incoming', uri, '--verify', ...extra]);
  const { address } = await dst.waitFor('listening');
  return { dst, address };
}

/** The guest keeps running: passes advance while we watch. */
async function assertGuestRuns(machine: TestMachine): Promise<void> {
  assert.equal(machine.running, true, 'source guest running');
  const before = machine.stats().pagesWritten;
  await waitUntil(() => machine.stats().pagesWritten > before + 100, 10_000);
}

async function migrateAndCheck(uri: string, dst: LivemigProcess, machine: TestMachine): Promise<OutgoingMigration> {
  const migration = new OutgoingMigration(machine);
  const statuses: MigrationStatus[] = [];
  migration.on('status', (s) => statuses.push(s));
  migration.start(uri);
  assert.equal(await migration.finished, 'completed', queryMigrate(migration)['error-desc']);
  assert.deepEqual(statuses, ['setup', 'active', 'device', 'completed']);
  assert.equal(machine.running, false, 'the source guest stays stopped after handing over');

  const loaded = await dst.waitFor('loaded');
  assert.equal(loaded.memoryCheck.ok, true, `QEMU's memory check on the destination: ${loaded.memoryCheck.reason}`);
  assert.equal(loaded.ramHash, machine.ramHash(), "destination RAM at resume equals source RAM at stop");
  const resumed = await dst.waitFor('resumed');
  assert.equal(resumed.started, true);
  // The destination's guest keeps running: passes and serial output continue.
  const at = dst.events.length;
  const first = await dst.waitFor('guest', (e) => e.running, 10_000, at);
  await dst.waitFor('guest', (e) => e.passes > first.passes && e.serialBytes > first.serialBytes, 20_000, dst.events.indexOf(first) + 1);
  return migration;
}

for (const transport of ['tcp', 'unix'] as const) {
  test(`live migration over ${transport} between two processes, guest writing throughout`, { timeout: 120_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livemig-mig-'));
    const machine = await sourceMachine();
    const { dst, address } = await destination(transport === 'tcp' ? 'tcp:127.0.0.1:0' : `unix:${join(dir, 'mig.sock')}`);
    try {
      const migration = await migrateAndCheck(address, dst, machine);
      const info = queryMigrate(migration);
      assert.equal(info.status, 'completed');
      assert.ok(info.ram!['dirty-sync-count'] >= 2, 'setup sync and the final sync at least');
      assert.ok(info.ram!.normal + info.ram!.duplicate >= RAM_BYTES / 4096, `every page sent at least once: ${JSON.stringify(info.ram)}`);
      assert.ok(info.downtime! >= 0 && info['total-time']! >= info.downtime!);
    } finally {
      await dst.stop();
      await machine.destroy();
      await rm(dir, { recursive: true, force: true });
    }
  });
}

test('convergence: a low dirty rate switches over within the downtime limit', { timeout: 120_000 }, async () => {
  const machine = await sourceMachine(2_000);
  const { dst, address } = await destination();
  try {
    const migration = new OutgoingMigration(machine);
    // The cap makes the first pass outlast several 100 ms windows: unbounded, 64 MiB can go
    // in one, and with nothing dirty at the sync the switchover then needs no bandwidth figure.
    migration.setParameters({ 'downtime-limit': 500, 'max-bandwidth': 256 << 20 });
    migration.start(address);
    assert.equal(await migration.finished, 'completed', queryMigrate(migration)['error-desc']);
    const s = migration.switchover!;
    // Either what was left fitted the measured budget, or nothing at all was left at the last sync (the
    // policy's other way out: a starved guest on a loaded machine may dirty nothing for a whole pass).
    if (s.ramPendingBytes > 0) {
      assert.ok(s.thresholdBytes > 0, `a bandwidth was measured before switching over (${s.reason})`);
      assert.ok(s.pendingBytes <= s.bandwidthBytesPerMs * s.downtimeLimitMs, `pending ${s.pendingBytes} <= ${s.bandwidthBytesPerMs} B/ms x ${s.downtimeLimitMs} ms`);
    } else {
      assert.match(s.reason ?? '', /no RAM is pending/, `switched over with nothing pending: ${s.reason}`);
    }
    assert.ok(s.deviceStateBytes > 0, 'device state counts in what is pending');
    const downtime = queryMigrate(migration).downtime!;
    assert.ok(downtime <= 500, `measured downtime ${downtime} ms within the 500 ms limit`);
    await dst.waitFor('resumed');
  } finally {
    await dst.stop();
    await machine.destroy();
  }
});

test('convergence: a dirty rate above max-bandwidth stays active until the limits are raised', { timeout: 120_000 }, async () => {
  const machine = await sourceMachine(0); // flat out: millions of page writes per second
  const { dst, address } = await destination();
  try {
    const migration = new OutgoingMigration(machine);
    migration.setParameters({ 'max-bandwidth': 40 << 20, 'downtime-limit': 10 });
    const passes: number[] = [];
    migration.on('pass', (p) => passes.push(p));
    migration.start(address);
    await waitUntil(() => passes.length >= 4, 60_000);
    assert.equal(migration.status, 'active', 'does not converge: the guest dirties faster than 40 MiB/s');
    const q = queryMigrate(migration);
    assert.ok(q.ram!.remaining > 10 << 20, `much remains: ${q.ram!.remaining}`);
    // The rate limit holds: 40 MiB/s is 335 Mbit/s (allow for window rounding).
    assert.ok(q.ram!.mbps > 0 && q.ram!.mbps < 335 * 1.3, `throughput ${q.ram!.mbps} Mbit/s under max-bandwidth`);
    // What QEMU's tests do: raise the limits so that it can converge.
    migration.setParameters({ 'max-bandwidth': 0, 'downtime-limit': 20_000 });
    assert.equal(await migration.finished, 'completed', queryMigrate(migration)['error-desc']);
    const s = migration.switchover!;
    assert.equal(s.downtimeLimitMs, 20_000);
    assert.ok(s.pendingBytes <= s.thresholdBytes, `pending ${s.pendingBytes} <= threshold ${s.thresholdBytes}`);
    const loaded = await dst.waitFor('loaded');
    assert.equal(loaded.memoryCheck.ok, true, loaded.memoryCheck.reason);
    assert.equal(loaded.ramHash, machine.ramHash());
  } finally {
    await dst.stop();
    await machine.destroy();
  }
});

for (const when of ['setup', 'active', 'device'] as const) {
  test(`cancel in ${when}: the source guest keeps running, then a new migration succeeds`, { timeout: 120_000 }, async () => {
    const machine = await sourceMachine();
    const first = await destination();
    let second: Awaited<ReturnType<typeof destination>> | undefined;
    try {
      const migration = new OutgoingMigration(machine);
      if (when === 'active') migration.setParameters({ 'max-bandwidth': 20 << 20 }); // slow enough to catch it active
      migration.on('status', (s) => {
        if (s === when) migration.cancel();
      });
      migration.start(first.address);
      assert.equal(await migration.finished, 'cancelled');
      assert.equal(queryMigrate(migration).status, 'cancelled');
      await assertGuestRuns(machine);
      migration.removeAllListeners('status');
      migration.setParameters({ 'max-bandwidth': 0 });
      if (when === 'setup') {
        // Cancelled before its stream began: at most a connection that said nothing, which
        // the destination drops; it keeps waiting, and the next migration goes to it.
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(first.dst.exitCode, null, 'the destination still waits');
        await migrateAndCheck(first.address, first.dst, machine);
        return;
      }
      // The destination saw an incomplete stream: it fails and never starts the guest.
      const failed = await first.dst.waitFor('failed');
      assert.ok(failed.error);
      await first.dst.exited;
      assert.equal(first.dst.exitCode, 1);
      assert.equal(first.dst.events.some((e) => e.event === 'resumed'), false);

      second = await destination();
      await migrateAndCheck(second.address, second.dst, machine);
    } finally {
      await first.dst.stop();
      await second?.dst.stop();
      await machine.destroy();
    }
  });
}

test('the destination dies mid-stream: the source fails, keeps running, and migrates again', { timeout: 120_000 }, async () => {
  const machine = await sourceMachine();
  const first = await destination();
  let second: Awaited<ReturnType<typeof destination>> | undefined;
  try {
    const migration = new OutgoingMigration(machine);
    migration.setParameters({ 'max-bandwidth': 20 << 20 });
    migration.on('status', (s) => {
      if (s === 'active') setTimeout(() => first.dst.child.kill('SIGKILL'), 300);
    });
    migration.start(first.address);
    assert.equal(await migration.finished, 'failed');
    assert.ok(queryMigrate(migration)['error-desc'], 'the reason is given');
    await assertGuestRuns(machine);
    migration.removeAllListeners('status');
    migration.setParameters({ 'max-bandwidth': 0 });
    second = await destination();
    await migrateAndCheck(second.address, second.dst, machine);
  } finally {
    await first.dst.stop();
    await second?.dst.stop();
    await machine.destroy();
  }
});

/** A TCP proxy that can cut either side of the connection. */
async function proxyTo(target: string): Promise<{ address: string; cut: (side: 'source' | 'destination') => void; close: () => void }> {
  const [, host, port] = /^tcp:(.+):(\d+)$/.exec(target)!;
  let sourceSide: Socket | undefined;
  let destinationSide: Socket | undefined;
  const server = createServer((client) => {
    sourceSide = client;
    destinationSide = connect(Number(port), host!);
    client.pipe(destinationSide);
    destinationSide.pipe(client);
    client.on('error', () => destinationSide?.destroy());
    destinationSide.on('error', () => client.destroy());
    client.on('close', () => destinationSide?.destroy());
    destinationSide.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `tcp:127.0.0.1:${(server.address() as { port: number }).port}`,
    cut: (side) => (side === 'source' ? sourceSide : destinationSide)?.resetAndDestroy(),
    close: () => server.close(),
  };
}

for (const side of ['source', 'destination'] as const) {
  test(`the connection is cut at the ${side} end: the source fails and keeps running; the destination does not start`, { timeout: 120_000 }, async () => {
    const machine = await sourceMachine();
    const { dst, address } = await destination();
    const proxy = await proxyTo(address);
    try {
      const migration = new OutgoingMigration(machine);
      migration.setParameters({ 'max-bandwidth': 20 << 20 });
      migration.on('status', (s) => {
        if (s === 'active') setTimeout(() => proxy.cut(side), 300);
      });
      migration.start(proxy.address);
      assert.equal(await migration.finished, 'failed');
      assert.match(queryMigrate(migration)['error-desc']!, /./);
      await assertGuestRuns(machine);
      await dst.exited;
      assert.equal(dst.exitCode, 1, 'the destination exits with an error');
      assert.equal(dst.events.some((e) => e.event === 'resumed'), false, 'and never starts the guest');
    } finally {
      proxy.close();
      await dst.stop();
      await machine.destroy();
    }
  });
}

test('a destination that rejects the stream: the source fails with its reason and keeps running', { timeout: 60_000 }, async () => {
  const machine = await sourceMachine();
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--incoming', 'tcp:127.0.0.1:0']);
  try {
    const { address } = await dst.waitFor('listening');
    const migration = new OutgoingMigration(machine);
    migration.start(address);
    assert.equal(await migration.finished, 'failed');
    assert.match(queryMigrate(migration)['error-desc']!, /destination|closed|SHUT/);
    await assertGuestRuns(machine);
    const failed = await dst.waitFor('failed');
    assert.match(failed.error, /Size mismatch: pc\.ram/);
  } finally {
    await dst.stop();
    await machine.destroy();
  }
});

test('file: snapshot of a running machine, analyzed, then restored in a new process that continues', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-file-'));
  const machine = await sourceMachine();
  let restored: LivemigProcess | undefined;
  try {
    const path = join(dir, 'snapshot.mig');
    const migration = new OutgoingMigration(machine);
    migration.start(`file:${path}`);
    assert.equal(await migration.finished, 'completed', queryMigrate(migration)['error-desc']);
    const cpuAtStop = machine.cpuState();
    const hashAtStop = machine.ramHash();

    const { analysis } = await analyzeFile(path, { keepRam: false });
    assert.equal(analysis.error, undefined, analysis.error?.message);
    assert.equal(analysis.configuration.machineName, 'livemig-test');
    assert.deepEqual([...new Set(analysis.sections.map((s) => s.idstr))], ['ram', 'test-cpu', 'test-serial', 'globalstate']);
    assert.equal(analysis.ram!.blocks[0]!.idstr, 'pc.ram');
    assert.equal(analysis.ram!.blocks[0]!.lengthBytes, RAM_BYTES);
    assert.deepEqual(analysis.devices.map((d) => d.name), ['test-cpu', 'test-serial', 'globalstate']);

    restored = LivemigProcess.start(['--machine', 'test', '--ram', RAM, '--incoming', `file:${path}`, '--verify']);
    const loaded = await restored.waitFor('loaded');
    assert.equal(loaded.ramHash, hashAtStop);
    assert.equal(loaded.cpu.passCount, cpuAtStop.passCount);
    assert.equal(loaded.cpu.positionPages, cpuAtStop.positionPages);
    assert.equal(loaded.memoryCheck.ok, true);
    const resumed = await restored.waitFor('resumed');
    assert.equal(resumed.started, true);
    await restored.waitFor('guest', (e) => e.passes > cpuAtStop.passCount);
  } finally {
    await restored?.stop();
    await machine.destroy();
    await rm(dir, { recursive: true, force: true });
  }
});

test('exec: migrate through a shell pipeline into a compressed file, and back', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-exec-'));
  const machine = await sourceMachine();
  let restored: LivemigProcess | undefined;
  try {
    const path = join(dir, 'vm.mig.gz');
    const migration = new OutgoingMigration(machine);
    migration.start(`exec:gzip -1 > ${path}`);
    assert.equal(await migration.finished, 'completed', queryMigrate(migration)['error-desc']);
    restored = LivemigProcess.start(['--machine', 'test', '--ram', RAM, '--incoming', `exec:gzip -dc ${path}`, '--verify']);
    const loaded = await restored.waitFor('loaded');
    assert.equal(loaded.ramHash, machine.ramHash());
    assert.equal(loaded.memoryCheck.ok, true);
    await restored.waitFor('resumed');
  } finally {
    await restored?.stop();
    await machine.destroy();
    await rm(dir, { recursive: true, force: true });
  }
});

test('auto-converge: a guest that cannot converge does once throttled, within QEMU\'s rules', { timeout: 180_000 }, async () => {
  const machine = await sourceMachine(40_000); // 160 MB/s of page writes, CPU-bound: slowed by the throttle
  const { dst, address } = await destination();
  try {
    const migration = new OutgoingMigration(machine);
    migration.setCapabilities({ 'auto-converge': true });
    // QEMU's /migration/auto_converge settings: 5 % first, +25 %, at most 95 %.
    migration.setParameters({ 'max-bandwidth': 40_000_000, 'downtime-limit': 300, 'cpu-throttle-initial': 5, 'cpu-throttle-increment': 25, 'max-cpu-throttle': 95 });
    const throttles: Array<{ percent: number; pass: number }> = [];
    migration.on('throttle', (percent, pass) => throttles.push({ percent, pass }));
    let seenInInfo = 0;
    const poll = setInterval(() => {
      seenInInfo = Math.max(seenInInfo, queryMigrate(migration)['cpu-throttle-percentage'] ?? 0);
    }, 50);
    migration.start(address);
    const status = await migration.finished;
    clearInterval(poll);
    assert.equal(status, 'completed', queryMigrate(migration)['error-desc']);
    assert.ok(throttles.length >= 1, 'it had to throttle to converge');
    assert.ok(throttles[0]!.percent >= 5, `first throttle ${throttles[0]!.percent} >= cpu-throttle-initial`);
    assert.ok(throttles[0]!.pass >= 2, `throttling starts no earlier than the second pass (pass ${throttles[0]!.pass})`);
    assert.ok(throttles.every((t) => t.percent <= 95), `never above max-cpu-throttle: ${JSON.stringify(throttles)}`);
    assert.deepEqual(throttles.map((t) => t.percent), [...throttles.map((t) => t.percent)].sort((a, b) => a - b), 'only ever harder');
    assert.ok(seenInInfo > 0, 'cpu-throttle-percentage shows in query-migrate while throttling');
    assert.equal(machine.throttlePercent, 0, 'the throttle is lifted after the migration');
    const loaded = await dst.waitFor('loaded');
    assert.equal(loaded.memoryCheck.ok, true);
    assert.equal(loaded.ramHash, machine.ramHash());
  } finally {
    await dst.stop();
    await machine.destroy();
  }
});
