/**
 * livemig report of a migration whose source is real QEMU 7.2, driven by
 * `livemig migrate --json`: no x-livemig-* fields, so every per-pass figure is
 * derived from successive query-migrate snapshots.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QemuProcess, qemuSkipReason } from './helpers/qemu.js';
import { cliPath } from './helpers/paths.js';
import { qemuListen } from './helpers/qemu-none.js';
import { parseMigrationEvents } from '../src/report/migration-events.js';

const skip = qemuSkipReason();

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

test('livemig report draws a QEMU source migration from livemig migrate --json: passes derived from the snapshots', { skip, timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-report-qemu-'));
  const machine = ['-M', 'none', '-m', '256M', '-nodefaults', '-display', 'none'];
  const qmp = `unix:${join(dir, 'src.sock')}`;
  const src = await QemuProcess.start([...machine, '-qmp', `${qmp},server=on,wait=off`]);
  let dst: QemuProcess | undefined;
  try {
    dst = await QemuProcess.start([...machine, '-incoming', 'defer']);
    const destUri = await qemuListen(dst);
    // ~2.5 s at 250 kB/s: the empty guest's pages are ~10 bytes each on the wire; many snapshots at 50 ms.
    const migrated = await run(['migrate', '--qmp', qmp, '--json', '--interval-ms', '50', '--param', 'max-bandwidth=250000', destUri]);
    assert.equal(migrated.code, 0, migrated.stderr);
    const events = join(dir, 'events.jsonl');
    await writeFile(events, migrated.stdout);
    const record = parseMigrationEvents(migrated.stdout, 'events.jsonl');
    assert.equal(record.format, 'livemig migrate --json');
    assert.equal(record.outcome, 'completed');
    assert.equal(record.passesFromSource, false);
    assert.ok(record.passes.length >= 1 && record.rates.length >= 5, `${record.passes.length} passes, ${record.rates.length} rate points`);
    assert.equal(record.passes.reduce((n, p) => n + p.sentBytes, 0), record.transferredBytes, 'every byte QEMU sent is in one pass');
    for (const p of record.passes) assert.ok(p.durationMs >= 0 && p.sentBytes >= 0, JSON.stringify(p));

    const html = join(dir, 'report.html');
    const report = await run(['report', events, '-o', html]);
    assert.equal(report.code, 0, report.stderr);
    const page = await readFile(html, 'utf8');
    assert.equal((page.match(/class="bar" data-series="sent"/g) ?? []).length, record.passes.length);
    assert.match(page, /data-outcome="completed">Migration completed</);
    assert.match(page, /derived from successive query-migrate snapshots/);
    assert.match(page, /class="line" data-series="throughput" data-points="\d+"/);
  } finally {
    await src.stop();
    await dst?.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
