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
