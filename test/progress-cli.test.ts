/**
 * The progress model end to end: `livemig migrate` against real `livemig run` machines over
 * real sockets: a migration that cannot converge is diagnosed and then cancelled from another
 * client; a disk migration shows its disks' progress; a refused disk destination is drawn as failed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { LivemigProcess } from './helpers/livemig-process.js';
import { cliPath } from './helpers/paths.js';

const run = promisify(execFile);
const env = { ...process.env };
delete env.NODE_TEST_CONTEXT;

/** `livemig ARGS` as a child whose output we can watch while it runs. */
function startCli(args: string[]): { output: () => string; stderr: () => string; done: Promise<number | null>; waitFor: (pattern: RegExp, timeoutMs: number) => Promise<number> } {
  const child = spawn(process.execPath, [cliPath, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
  const done = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const startedMs = Date.now();
  return {
    output: () => out,
    stderr: () => err,
    done,
    /** Resolves with the ms since the start when `pattern` appeared on stdout. */
    async waitFor(pattern, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (!pattern.test(out)) {
        if (child.exitCode !== null) throw new Error(`livemig exited before ${pattern}: ${out}\n${err}`);
        if (Date.now() > deadline) throw new Error(`no ${pattern} within ${timeoutMs} ms:\n${out}\n${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      return Date.now() - startedMs;
    },
  };
}

async function withMachines(srcArgs: string[], dstArgs: string[], body: (o: { dir: string; srcQmp: string; migUri: string }) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-progress-'));
  const src = LivemigProcess.start(['--machine', 'test', ...srcArgs, '--qmp', `unix:${join(dir, 'src.qmp')}`]);
  const dst = LivemigProcess.start(['--machine', 'test', ...dstArgs, '--qmp', `unix:${join(dir, 'dst.qmp')}`, '--incoming', 'defer']);
  try {
    await Promise.all([src.waitFor('qmp'), dst.waitFor('qmp')]);
    const dstQmp = await QmpClient.connect(`unix:${join(dir, 'dst.qmp')}`);
    await dstQmp.execute('migrate-incoming', { uri: `unix:${join(dir, 'mig.sock')}` });
    await dstQmp.close();
    await body({ dir, srcQmp: `unix:${join(dir, 'src.qmp')}`, migUri: `unix:${join(dir, 'mig.sock')}` });
  } finally {
    await src.stop();
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** The percents of the plain progress lines ("[  2.3 s] active, pass 7: 80% ..."), in order. */
function percents(output: string): number[] {
  return [...output.matchAll(/^\[[^\]]*\] [a-z-]+, pass \d+: +(\d+)%/gm)].map((m) => Number(m[1]));
}

function assertNeverBackwards(values: number[]): void {
  for (let i = 1; i < values.length; i++) assert.ok(values[i]! >= values[i - 1]!, `went back from ${values[i - 1]} to ${values[i]}: ${values.join(' ')}`);
}

test('a migration that cannot converge: diagnosed within seconds with its numbers and levers, then cancelled from another client and drawn as cancelled with who did it', { timeout: 60_000 }, async () => {
  // The guest dirties ~80 MB/s; 40 MB/s may go out; 50 ms of downtime fits 2 MiB of the 16 MiB it keeps dirty.
  await withMachines(['--ram', '16M', '--dirty-rate', '20000'], ['--ram', '16M'], async ({ srcQmp, migUri }) => {
    const migrate = startCli(['migrate', '--qmp', srcQmp, '--interval-ms', '100', '--param', 'max-bandwidth=40M', '--param', 'downtime-limit=50', migUri]);
    const diagnosedAfterMs = await migrate.waitFor(/^Not converging after \d+ passes/m, 20_000);
    assert.ok(diagnosedAfterMs < 10_000, `diagnosed after ${diagnosedAfterMs} ms`);
    // Two plain lines (one every 2 s) after the diagnosis.
    await migrate.waitFor(/Not converging[^]*ETA none: not converging[^]*ETA none: not converging/, 6000);
    const cancel = await run(process.execPath, [cliPath, 'cancel', '--qmp', srcQmp], { env });
    assert.match(cancel.stdout, /^status: cancelled \(migration cancelled by migrate_cancel on the QMP monitor\)$/m);
    assert.equal(await migrate.done, 1);
    const out = migrate.output();
    assert.match(out, /the guest dirties [\d.]+ MB\/s while [\d.]+ MB\/s go out \(ratio [\d.]+\); remaining [\d.]+ MiB stays above the switchover threshold of [\d.]+ MiB \([\d.]+ MB\/s × downtime-limit 50 ms\)/);
    for (const lever of ['auto-converge', 'xbzrle', 'postcopy', 'downtime-limit: raise it from 50 ms', 'max-bandwidth: the migration runs at its cap']) assert.ok(out.includes(`    - ${lever}`), `lever ${lever}:\n${out}`);
    assert.match(out, /convergence [\d.]+ \((steady|diverging)\)/);
    // Never backwards, never 100 %: the first pass filled 80 % and nothing came closer since.
    const seen = percents(out);
    assert.ok(seen.length >= 3, out);
    assertNeverBackwards(seen);
    assert.ok(seen.every((p) => p < 99), seen.join(' '));
    assert.doesNotMatch(out, /ETA 0 ms/);
    // Drawn as cancelled, with who cancelled.
    assert.match(out, /^\[[^\]]*\] cancelled: CANCELLED at \d+% done, pass \d+, .* sent: migration cancelled by migrate_cancel on the QMP monitor$/m);
    assert.match(out, /^Migration cancelled after [\d.]+ m?s at \d+% \(pass \d+\)$/m);
    assert.match(migrate.stderr(), /^livemig: migration cancelled: migration cancelled by migrate_cancel on the QMP monitor$/m);
  });
});

test('a disk migration shows its disks\' progress (x-livemig-progress.disk and the lines), never 100 % before completed', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-progress-disk-'));
  try {
    // A disk full of data (zero chunks would go in a few bytes each); the guest leaves it alone meanwhile.
    await writeFile(join(dir, 'src.img'), randomBytes(32 << 20));
    const guest = ['--ram', '16M', '--dirty-rate', '500', '--disk', join(dir, 'src.img')];
    await withMachines(guest, ['--ram', '16M', '--disk', `${join(dir, 'dst.img')},size=32M`], async ({ srcQmp, migUri }) => {
      // ~2.5 s at 20 MB/s: 32 MiB of disk, then 16 MiB of RAM.
      const json = startCli(['migrate', '--qmp', srcQmp, '--json', '--blk', '--interval-ms', '50', '--param', 'max-bandwidth=20M', migUri]);
      assert.equal(await json.done, 0, json.stderr());
      const lines = json.output().trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
      const snapshots = lines.filter((l) => !l.final && l['x-livemig-progress']);
      const withDisk = snapshots.filter((s) => s['x-livemig-progress'].disk);
      assert.ok(withDisk.length >= 3, `disk progress in several snapshots: ${withDisk.length}`);
      const diskPercents = withDisk.map((s) => s['x-livemig-progress'].disk.percent as number);
      assert.ok(new Set(diskPercents).size >= 2 && diskPercents.some((p) => p > 0 && p < 100), diskPercents.join(' '));
      assert.equal(withDisk[0]['x-livemig-progress'].disk['total-bytes'], 32 << 20);
      const overall = snapshots.map((s) => s['x-livemig-progress'].percent as number);
      assertNeverBackwards(overall);
      assert.ok(snapshots.filter((s) => s.status !== 'completed').every((s) => s['x-livemig-progress'].percent < 100), overall.join(' '));
      const final = lines.at(-1)!;
      assert.equal(final.status, 'completed');
      assert.equal(final['disk-transferred'], 32 << 20);
      assert.equal(final.percent, 100);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a refused disk destination: drawn as failed with the reason, the report says the disks were not copied', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-progress-refused-'));
  try {
    // The destination has no disk: it refuses the stream once it reads the disk's name.
    await withMachines(['--ram', '16M', '--disk', `${join(dir, 'src.img')},size=64M,id=data`], ['--ram', '16M'], async ({ srcQmp, migUri }) => {
      const migrate = startCli(['migrate', '--qmp', srcQmp, '--blk', '--interval-ms', '50', migUri]);
      assert.equal(await migrate.done, 1, migrate.stderr());
      const out = migrate.output();
      // The source hears only that the destination refused the stream (its own log names the disk).
      assert.match(out, /^\[[^\]]*\] failed: FAILED at \d+% done, .*: the destination could not load the stream/m);
      assert.doesNotMatch(out, /failed, pass \d+: +100%/);
      assert.match(out, /^Migration failed after [\d.]+ m?s at \d+% \(pass \d+\)$/m);
      // With figures if a snapshot carried them before the failure (QMP shows a failed migration's status and reason only).
      assert.match(out, /^ {2}disks {8}([\d.]+ [KMG]?i?B of 64\.0 MiB sent, )?not copied \(the migration failed\)$/m);
      assert.doesNotMatch(out, /64\.0 MiB copied/);
      assert.match(migrate.stderr(), /^livemig: migration failed: the destination could not load the stream/m);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('livemig run --json: progress events carry x-livemig-progress (the contract\'s fields), completed carries the downtime phases and limit', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-progress-run-'));
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--incoming', `unix:${join(dir, 'mig.sock')}`]);
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--dirty-rate', '2000', '--migrate-to', `unix:${join(dir, 'mig.sock')}`, '--migrate-after-ms', '1500', '--param', 'max-bandwidth=10M']);
  try {
    await dst.waitFor('listening');
    const completed = await src.waitFor('completed', () => true, 30_000);
    const progress = src.events.filter((e) => e.event === 'progress' && e.info['x-livemig-progress']).map((e) => e.info['x-livemig-progress']);
    assert.ok(progress.length >= 2, `${progress.length} progress events`);
    for (let i = 1; i < progress.length; i++) assert.ok(progress[i].percent >= progress[i - 1].percent);
    const last = completed.info['x-livemig-progress'];
    assert.equal(last.phase, 'completed');
    assert.equal(last.percent, 100);
    assert.ok(last.passes.length >= 2);
    for (const p of last.passes) {
      for (const key of ['pass', 'start-ms', 'duration-ms', 'sent-bytes', 'dirtied-bytes', 'remaining-bytes', 'dirty-rate-bytes-per-second', 'throughput-bytes-per-second']) assert.equal(typeof p[key], 'number', key);
    }
    assert.deepEqual(last.passes.map((p: { pass: number }) => p.pass), [...last.passes.keys()].map((i) => i + 1), 'one per sync, 1-based');
    assert.ok(last.passes.slice(1).some((p: { 'dirtied-bytes': number }) => p['dirtied-bytes'] > 0), 'the guest dirtied pages');
    const phases = completed.info['x-livemig-downtime-phases'];
    for (const key of ['pause-ms', 'complete-ms', 'flush-ms', 'confirm-ms']) assert.equal(typeof phases[key], 'number', key);
    assert.equal(completed.info['x-livemig-downtime-limit-ms'], 300);
  } finally {
    await src.stop();
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
