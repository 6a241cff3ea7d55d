/**
 * The same `livemig migrate` client that drives QEMU (migrate-cli.test.ts)
 * drives two livemig machines through their QMP monitors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { LivemigProcess } from './helpers/livemig-process.js';
import { cliPath } from './helpers/paths.js';

const run = promisify(execFile);

test('livemig migrate --json drives a migration between two livemig machines; query and the final report work', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-cli-'));
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '64M', '--dirty-rate', '20000', '--qmp', `unix:${join(dir, 'src.qmp')}`]);
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', '64M', '--qmp', `unix:${join(dir, 'dst.qmp')}`, '--incoming', 'defer', '--verify']);
  try {
    await Promise.all([src.waitFor('qmp'), dst.waitFor('qmp')]);
    const dstQmp = await QmpClient.connect(`unix:${join(dir, 'dst.qmp')}`);
    await dstQmp.execute('migrate-incoming', { uri: `unix:${join(dir, 'mig.sock')}` });
    await dstQmp.close();

    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT;
    const { stdout } = await run(process.execPath, [cliPath, 'migrate', '--qmp', `unix:${join(dir, 'src.qmp')}`, '--json', '--param', 'downtime-limit=300', `unix:${join(dir, 'mig.sock')}`], { env });
    const lines = stdout.trim().split('\n').map((l) => JSON.parse(l));
    const final = lines.at(-1);
    assert.equal(final.final, true);
    assert.equal(final.status, 'completed');
    for (const key of ['total-time', 'downtime', 'transferred', 'passes']) assert.equal(typeof final[key], 'number', key);
    assert.ok(lines.slice(0, -1).every((l) => typeof l.status === 'string'), 'snapshots are query-migrate answers');

    const loaded = await dst.waitFor('loaded');
    assert.equal(loaded.memoryCheck.ok, true);
    const query = await run(process.execPath, [cliPath, 'query', '--qmp', `unix:${join(dir, 'src.qmp')}`], { env });
    assert.match(query.stdout, /completed/);
  } finally {
    await src.stop();
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a chain A -> B -> C -> D through livemig migrate: every hop reports its own migration, never the incoming one', { timeout: 180_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-chain-'));
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const names = ['a', 'b', 'c', 'd'];
  const vms = names.map((name, i) =>
    LivemigProcess.start([
      // 2000 pages/s (8 MB/s) converges under the 40 MiB/s cap below.
      '--machine', 'test', '--ram', '32M', '--dirty-rate', '2000', '--pattern', 'sequential',
      '--qmp', `unix:${join(dir, `${name}.qmp`)}`, ...(i > 0 ? ['--incoming', `unix:${join(dir, `${name}.mig`)}`] : []),
    ]),
  );
  try {
    await Promise.all(vms.map((vm) => vm.waitFor('qmp')));
    for (let hop = 0; hop < 3; hop++) {
      const from = names[hop]!;
      const to = names[hop + 1]!;
      // A client believing B's incoming migration's `completed` (the old bug) returned while B -> C still ran:
      // the query right after it would then not say `completed`.
      const { stdout } = await run(process.execPath, [cliPath, 'migrate', '--qmp', `unix:${join(dir, `${from}.qmp`)}`, '--json', '--param', 'max-bandwidth=40M', `unix:${join(dir, `${to}.mig`)}`], { env });
      const lines = stdout.trim().split('\n').map((l) => JSON.parse(l));
      const final = lines.at(-1);
      assert.equal(final.status, 'completed', `${from} -> ${to}`);
      assert.ok(final.transferred > 0 && final.passes >= 1, `${from} -> ${to} reports its own figures`);
      const q = await run(process.execPath, [cliPath, 'query', '--qmp', `unix:${join(dir, `${from}.qmp`)}`, '--json'], { env });
      assert.equal(JSON.parse(q.stdout).status, 'completed');
      assert.equal(JSON.parse(q.stdout).ram?.total, 32 << 20, `${from}'s query-migrate is its outgoing migration's`);
    }
    // The guest ran through all four: D runs it, with its memory intact.
    const d = await QmpClient.connect(`unix:${join(dir, 'd.qmp')}`);
    assert.equal(((await d.execute('query-status')) as { status: string }).status, 'running');
    await d.execute('stop');
    const check = (await d.execute('x-livemig-check-guest')) as { memoryCheck: { ok: boolean; reason?: string } };
    assert.equal(check.memoryCheck.ok, true, check.memoryCheck.reason);
    await d.close();
  } finally {
    await Promise.all(vms.map((vm) => vm.stop()));
    await rm(dir, { recursive: true, force: true });
  }
});
