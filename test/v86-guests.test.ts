/**
 * Real x86 guests migrated between two `livemig run --machine v86` processes,
 * driven through QMP: Debian Linux mid-run (its own memory self-check keeps
 * saying ok, its shell answers after the move), and a destination with the
 * wrong memory size, which refuses before writing any RAM.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { linuxImageExists } from '../src/images/linux-image.js';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { startRun } from './helpers/run-process.js';



async function waitMigration(src: QmpClient): Promise<Record<string, any>> {
  for (;;) {
    const info = (await src.execute('query-migrate')) as Record<string, any>;
    if (['completed', 'failed', 'cancelled'].includes(info.status)) return info;
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('the Linux guest migrates mid-run: its self-check stays ok and its shell answers after the move', { timeout: 400_000 }, async (t) => {
  if (!(await linuxImageExists())) return t.skip('no Linux guest image: run `npm run images` (needs Debian packages gcc-multilib and seabios)');
  const dir = await mkdtemp(join(tmpdir(), 'livemig-linux-'));
  const common = ['--machine', 'v86', '--guest', 'linux', '--ram', '128M'];
  const source = startRun([...common, '--qmp', `unix:${join(dir, 'src.qmp')}`]);
  const destination = startRun([...common, '--incoming', 'defer', '--serial-stdin', '--qmp', `unix:${join(dir, 'dst.qmp')}`]);
  try {
    await source.until(() => /dirtier: pass \d+ ok/.test(source.serial()), 'the guest to boot and self-check');
    await destination.until(() => destination.events.some((e) => e.event === 'qmp'), 'the destination monitor');
    const src = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 5000 });
    const dst = await QmpClient.connect(`unix:${join(dir, 'dst.qmp')}`, { retryForMs: 5000 });
    await dst.execute('migrate-incoming', { uri: `unix:${join(dir, 'mig.sock')}` });
    await src.execute('migrate-set-capabilities', { capabilities: [{ capability: 'auto-converge', state: true }] });
    await src.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}` });
    const info = await waitMigration(src);
    assert.equal(info.status, 'completed', info['error-desc']);
    await src.close();

    // After the move: the guest's own check of all its pages keeps printing ok.
    const from = destination.events.length;
    await destination.until(() => (destination.serial(from).match(/dirtier: pass \d+ ok/g) ?? []).length >= 2, 'two self-checks after the move', 120_000);
    assert.doesNotMatch(destination.serial(), /CORRUPT/);
    // And its shell answers a command typed on the serial console.
    const typedAt = destination.events.length;
    destination.child.stdin.write('echo -n te; echo st\n');
    await destination.until(() => destination.serial(typedAt).replace(/dirtier:[^\n]*\n/g, '').includes('test'), 'the shell to answer', 60_000);
    assert.equal(((await dst.execute('query-status')) as { status: string }).status, 'running');
    await dst.close();
  } finally {
    source.child.kill('SIGTERM');
    destination.child.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
  }
});

test('a v86 destination with another memory size refuses before writing RAM; the source keeps running', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-v86size-'));
  const source = startRun(['--machine', 'v86', '--ram', '32M', '--qmp', `unix:${join(dir, 'src.qmp')}`]);
  const destination = startRun(['--machine', 'v86', '--ram', '64M', '--incoming', `unix:${join(dir, 'mig.sock')}`]);
  try {
    await source.until(() => source.events.some((e) => e.event === 'qmp'), 'the source monitor');
    await destination.until(() => destination.events.some((e) => e.event === 'listening'), 'the destination');
    const src = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 5000 });
    await src.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}` });
    const info = await waitMigration(src);
    assert.equal(info.status, 'failed');
    assert.match(info['error-desc'], /destination/);
    await destination.until(() => destination.events.some((e) => e.event === 'failed'), 'the destination to fail');
    const failed = destination.events.find((e) => e.event === 'failed')!;
    assert.match(failed.error, /Size mismatch: pc\.ram/);
    assert.equal(destination.events.some((e) => e.event === 'loaded'), false, 'nothing was loaded');
    // The source guest runs on: its serial output keeps growing.
    assert.equal(((await src.execute('query-status')) as { status: string }).status, 'running');
    const before = source.serial().length;
    await source.until(() => source.serial().length > before, 'more serial output from the source guest', 30_000);
    await src.close();
  } finally {
    source.child.kill('SIGTERM');
    destination.child.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
  }
});
