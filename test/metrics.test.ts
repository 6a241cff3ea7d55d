/**
 * `--metrics`: real `livemig run` processes, a real migration between them, and
 * real HTTP scrapes of /metrics during and after it (and of `livemig migrate`'s).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { LivemigProcess } from './helpers/livemig-process.js';
import { QemuProcess, qemuSkipReason } from './helpers/qemu.js';
import { cliPath } from './helpers/paths.js';
import { freePort } from './helpers/ports.js';

const MiB = 1024 * 1024;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const KUBEVIRT_NAMES = [
  'kubevirt_vmi_migration_data_processed_bytes',
  'kubevirt_vmi_migration_data_remaining_bytes',
  'kubevirt_vmi_migration_data_total_bytes',
  'kubevirt_vmi_migration_dirty_memory_rate_bytes',
  'kubevirt_vmi_migration_memory_transfer_rate_bytes',
  'kubevirt_vmi_migration_start_time_seconds',
  'kubevirt_vmi_migration_end_time_seconds',
  'kubevirt_vmi_migration_succeeded',
  'kubevirt_vmi_migration_failed',
];
const LIVEMIG_NAMES = ['livemig_migration_downtime_seconds', 'livemig_migration_downtime_phase_seconds', 'livemig_migration_passes', 'livemig_migration_status'];

interface Scrape {
  /** `name{labels}` -> value. */
  samples: Map<string, number>;
  /** Metric name -> its TYPE. */
  types: Map<string, string>;
  contentType: string;
}

async function scrape(url: string): Promise<Scrape> {
  const res = await fetch(url);
  assert.equal(res.status, 200);
  const text = await res.text();
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1]!, type[2]!);
    const sample = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (sample) samples.set(sample[1]!, Number(sample[2]));
  }
  return { samples, types, contentType: res.headers.get('content-type') ?? '' };
}

const value = (s: Scrape, key: string): number | undefined => s.samples.get(key);

async function waitStatus(qmp: QmpClient, done: (status: string) => boolean, timeoutMs = 60_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<{ status?: string }>('query-migrate');
    if (info.status && done(info.status)) return info.status;
    if (Date.now() > deadline) throw new Error(`migration still ${info.status}`);
    await sleep(100);
  }
}

test('livemig run --metrics: KubeVirt names move during a real migration; succeeded, failed and end time after', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-metrics-'));
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--dirty-rate', '2000', '--qmp', `unix:${join(dir, 'src.qmp')}`, '--metrics', 'tcp:127.0.0.1:0', '--name', 'vm-a']);
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--incoming', `unix:${join(dir, 'mig.sock')}`, '--metrics', 'tcp:127.0.0.1:0', '--name', 'vm-a']);
  let qmp: QmpClient | undefined;
  try {
    const srcUrl = (await src.waitFor('metrics')).url as string;
    const dstUrl = (await dst.waitFor('metrics')).url as string;
    await dst.waitFor('listening');
    const l = '{name="vm-a"}';

    const before = await scrape(srcUrl);
    assert.match(before.contentType, /^text\/plain; version=0\.0\.4/);
    for (const name of [...KUBEVIRT_NAMES, ...LIVEMIG_NAMES]) assert.ok(before.types.has(name), `${name} is declared`);
    assert.equal(before.types.get('kubevirt_vmi_migration_data_total_bytes'), 'counter', "KubeVirt's type");
    assert.equal(before.types.get('kubevirt_vmi_migration_data_processed_bytes'), 'gauge');
    assert.equal(value(before, `kubevirt_vmi_migration_succeeded${l}`), 0);
    assert.equal(value(before, `kubevirt_vmi_migration_failed${l}`), 0);
    assert.equal(value(before, 'livemig_migration_status{name="vm-a",status="none"}'), 1);
    assert.equal(value(before, `kubevirt_vmi_migration_data_processed_bytes${l}`), undefined, 'no figure before a migration, rather than a made-up 0');

    qmp = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 10_000 });
    // A migration to nowhere fails: the failed figure counts it.
    await qmp.execute('migrate', { uri: `unix:${join(dir, 'nobody-listens.sock')}` });
    assert.equal(await waitStatus(qmp, (s) => s === 'failed' || s === 'completed'), 'failed');
    const afterFailure = await scrape(srcUrl);
    assert.equal(value(afterFailure, `kubevirt_vmi_migration_failed${l}`), 1);
    assert.equal(value(afterFailure, `kubevirt_vmi_migration_succeeded${l}`), 0);
    assert.equal(value(afterFailure, 'livemig_migration_status{name="vm-a",status="failed"}'), 1);

    // Once the guest has written all its 32 MiB (zero pages cost nothing to send), 16 MiB/s against
    // 8 MB/s of dirtying gives passes of 2, 1, 0.5 s... : a few seconds to scrape in, and it converges.
    await src.waitFor('guest', (e) => e.pagesWritten >= 8192);
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 16 * MiB, 'downtime-limit': 300 });
    const startedSeconds = Date.now() / 1000;
    await qmp.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}` });
    const processed: number[] = [];
    const remaining: number[] = [];
    let during: Scrape | undefined;
    for (;;) {
      const s = await scrape(srcUrl);
      if (value(s, 'livemig_migration_status{name="vm-a",status="completed"}') === 1) break;
      if (value(s, 'livemig_migration_status{name="vm-a",status="active"}') === 1) {
        during = s;
        processed.push(value(s, `kubevirt_vmi_migration_data_processed_bytes${l}`)!);
        remaining.push(value(s, `kubevirt_vmi_migration_data_remaining_bytes${l}`)!);
      }
      assert.equal(value(s, 'livemig_migration_status{name="vm-a",status="failed"}') === 1 && processed.length > 0, false, 'the second migration failed');
      await sleep(150);
    }
    assert.ok(during, 'scraped while active');
    assert.ok(processed.length >= 2, `several scrapes while active (${processed.length})`);
    for (let i = 1; i < processed.length; i++) assert.ok(processed[i]! >= processed[i - 1]!, `processed bytes never go back: ${processed.join(', ')}`);
    assert.ok(processed.at(-1)! > processed[0]!, `processed bytes grow: ${processed.join(', ')}`);
    assert.equal(value(during, `kubevirt_vmi_migration_data_total_bytes${l}`), 32 * MiB, 'total = RAM size');
    // The last active scrape may fall after the final pass sent everything (remaining 0, status
    // still active until the destination confirms), so ask that the figure was seen above 0 at all.
    assert.ok(remaining.some((r) => r > 0), `remaining bytes seen above 0 while active: ${remaining.join(', ')}`);
    const rate = value(during, `kubevirt_vmi_migration_memory_transfer_rate_bytes${l}`)!;
    assert.ok(rate > 4 * MiB && rate < 32 * MiB, `transfer rate ${rate} B/s near the 16 MiB/s cap`);
    assert.ok(value(during, `kubevirt_vmi_migration_start_time_seconds${l}`)! >= startedSeconds - 1);

    const after = await scrape(srcUrl);
    assert.equal(value(after, `kubevirt_vmi_migration_succeeded${l}`), 1);
    assert.equal(value(after, `kubevirt_vmi_migration_failed${l}`), 1, 'the earlier failure still counts');
    const start = value(after, `kubevirt_vmi_migration_start_time_seconds${l}`)!;
    const end = value(after, `kubevirt_vmi_migration_end_time_seconds${l}`)!;
    assert.ok(end > start && start >= startedSeconds - 1 && end <= Date.now() / 1000 + 1, `start ${start} < end ${end}`);
    assert.equal(value(after, `kubevirt_vmi_migration_data_remaining_bytes${l}`), 0);
    const downtime = value(after, `livemig_migration_downtime_seconds${l}`)!;
    assert.ok(downtime > 0 && downtime < 5, `downtime ${downtime} s`);
    const phases = ['pause', 'complete', 'flush', 'confirm'].map((phase) => value(after, `livemig_migration_downtime_phase_seconds{name="vm-a",phase="${phase}"}`));
    assert.ok(phases.every((p) => p !== undefined && p >= 0), `phases ${phases.join(', ')}`);
    assert.ok(value(after, `livemig_migration_passes${l}`)! >= 1);

    // The destination counts its incoming migration too.
    await dst.waitFor('resumed');
    const destination = await scrape(dstUrl);
    assert.equal(value(destination, `kubevirt_vmi_migration_succeeded${l}`), 1);
    assert.equal(value(destination, 'livemig_migration_status{name="vm-a",status="completed"}'), 1);
    assert.ok(value(destination, `kubevirt_vmi_migration_end_time_seconds${l}`)! >= start);
    // Its migration started when the stream arrived, not when it began listening (seconds earlier here).
    const destinationStart = value(destination, `kubevirt_vmi_migration_start_time_seconds${l}`)!;
    assert.ok(destinationStart >= start - 0.5 && destinationStart <= end, `destination start ${destinationStart}, source ${start}..${end}`);

    // Anything but GET /metrics is refused plainly.
    assert.equal((await fetch(srcUrl.replace('/metrics', '/'))).status, 404);
  } finally {
    await qmp?.close();
    await src.stop();
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test("livemig migrate --metrics serves the source's query-migrate while it migrates", { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-metrics-migrate-'));
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--dirty-rate', '2000', '--qmp', `unix:${join(dir, 'src.qmp')}`]);
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--incoming', `unix:${join(dir, 'mig.sock')}`]);
  try {
    await Promise.all([src.waitFor('qmp'), dst.waitFor('listening')]);
    await src.waitFor('guest', (e) => e.pagesWritten >= 8192); // as above: a few seconds of migration
    const port = await freePort();
    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT;
    const child = spawn(process.execPath, [cliPath, 'migrate', '--qmp', `unix:${join(dir, 'src.qmp')}`, '--json', '--metrics', `tcp:127.0.0.1:${port}`, '--name', 'vm-b', '--param', 'max-bandwidth=16M', `unix:${join(dir, 'mig.sock')}`], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const exited = once(child, 'exit');
    const seen: number[] = [];
    let total: number | undefined;
    let ended = false;
    void exited.then(() => (ended = true));
    while (!ended) {
      const s = await scrape(`http://127.0.0.1:${port}/metrics`).catch(() => undefined);
      const processed = s && value(s, 'kubevirt_vmi_migration_data_processed_bytes{name="vm-b"}');
      if (processed !== undefined) {
        seen.push(processed);
        total = value(s!, 'kubevirt_vmi_migration_data_total_bytes{name="vm-b"}');
      }
      await sleep(150);
    }
    const [code] = (await exited) as [number | null];
    assert.equal(code, 0, stderr);
    assert.ok(seen.length >= 2 && seen.at(-1)! > seen[0]!, `processed bytes grow: ${seen.join(', ')}`);
    assert.equal(total, 32 * MiB);
  } finally {
    await src.stop();
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('livemig migrate --metrics-linger-ms: after the end the final figures wait for one scrape, then migrate exits', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-metrics-linger-'));
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '16M', '--qmp', `unix:${join(dir, 'src.qmp')}`]);
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', '16M', '--incoming', `unix:${join(dir, 'mig.sock')}`]);
  try {
    await Promise.all([src.waitFor('qmp'), dst.waitFor('listening')]);
    const port = await freePort();
    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT;
    const child = spawn(process.execPath, [cliPath, 'migrate', '--qmp', `unix:${join(dir, 'src.qmp')}`, '--json', '--metrics', `tcp:127.0.0.1:${port}`, '--metrics-linger-ms', '60000', '--name', 'vm-c', `unix:${join(dir, 'mig.sock')}`], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    const exited = once(child, 'exit');
    // The migration is over when the final line is out; nobody has scraped yet, so migrate stays.
    while (!/"final":true/.test(stdout)) {
      assert.equal(child.exitCode, null, 'migrate exited before its final line');
      await sleep(50);
    }
    await sleep(500);
    assert.equal(child.exitCode, null, 'still serving the final figures');
    const last = await scrape(`http://127.0.0.1:${port}/metrics`);
    assert.equal(value(last, 'kubevirt_vmi_migration_succeeded{name="vm-c"}'), 1);
    assert.ok((value(last, 'kubevirt_vmi_migration_end_time_seconds{name="vm-c"}') ?? 0) > 0, 'end time set');
    // The downtime's phases come from the source's query-migrate, so migrate --metrics has them too.
    for (const phase of ['pause', 'complete', 'flush', 'confirm']) assert.ok(value(last, `livemig_migration_downtime_phase_seconds{name="vm-c",phase="${phase}"}`) !== undefined, `phase ${phase}`);
    const scrapedAt = Date.now();
    const [code] = (await exited) as [number | null];
    assert.equal(code, 0);
    assert.ok(Date.now() - scrapedAt < 10_000, 'exits after that scrape, not at the end of the 60 s linger');
  } finally {
    await src.stop();
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a bad --metrics address is refused before the guest starts, naming what is wrong', { timeout: 60_000 }, async () => {
  const run = promisify(execFile);
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const refuse = async (address: string, pattern: RegExp): Promise<void> => {
    const result = await run(process.execPath, [cliPath, 'run', '--machine', 'test', '--ram', '16M', '--exit-after-ms', '2000', '--metrics', address], { env }).then(
      () => assert.fail(`accepted --metrics ${address}`),
      (err: { code: number; stdout: string; stderr: string }) => err,
    );
    assert.equal(result.code, 2, address);
    assert.match(result.stderr, pattern);
    assert.equal(result.stderr.match(/livemig:/g)?.length, 1, `said once: ${result.stderr}`);
    assert.doesNotMatch(result.stdout + result.stderr, /guest running/, 'no guest was started');
  };
  await refuse('9100', /--metrics: '9100' is not tcp:HOST:PORT/);
  await refuse('http://127.0.0.1:9100', /is not tcp:HOST:PORT/);
  await refuse('tcp:127.0.0.1:70000', /port 70000 .* is above 65535/);
  const busy = createServer().listen(0, '127.0.0.1');
  await once(busy, 'listening');
  try {
    await refuse(`tcp:127.0.0.1:${(busy.address() as { port: number }).port}`, /cannot listen on 127\.0\.0\.1:\d+: the port is in use/);
  } finally {
    busy.close();
  }
  const migrate = await run(process.execPath, [cliPath, 'migrate', '--qmp', 'unix:/nonexistent.qmp', '--metrics', 'tcp:nowhere', 'tcp:127.0.0.1:1'], { env }).then(
    () => assert.fail('accepted'),
    (err: { code: number; stderr: string }) => err,
  );
  assert.equal(migrate.code, 2);
  assert.match(migrate.stderr, /--metrics: 'tcp:nowhere' is not tcp:HOST:PORT/);
});

test("livemig migrate --metrics against real QEMU 7.2: the name from query-name, the figures from QEMU's query-migrate", { skip: qemuSkipReason(), timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-metrics-qemu-'));
  const machine = ['-M', 'none', '-m', '64M', '-nodefaults', '-display', 'none'];
  const cliQmp = `unix:${join(dir, 'cli.sock')}`;
  const src = await QemuProcess.start([...machine, '-name', 'vm-q', '-qmp', `${cliQmp},server=on,wait=off`]);
  const dst = await QemuProcess.start([...machine, '-incoming', 'defer']);
  try {
    const destUri = `tcp:127.0.0.1:${await freePort()}`;
    await dst.execute('migrate-incoming', { uri: destUri });
    const port = await freePort();
    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT;
    // pause-before-switchover holds QEMU in pre-switchover: a window to scrape in, however fast the copy was.
    const child = spawn(process.execPath, [cliPath, 'migrate', '--qmp', cliQmp, '--json', '--cap', 'pause-before-switchover', '--metrics', `tcp:127.0.0.1:${port}`, destUri], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const exited = once(child, 'exit');
    let held: Scrape | undefined;
    for (const deadline = Date.now() + 30_000; !held; await sleep(100)) {
      assert.ok(Date.now() < deadline, `never in pre-switchover: ${stderr}`);
      const s = await scrape(`http://127.0.0.1:${port}/metrics`).catch(() => undefined);
      if (s && value(s, 'livemig_migration_status{name="vm-q",status="pre-switchover"}') === 1) held = s;
    }
    assert.equal(value(held, 'kubevirt_vmi_migration_data_total_bytes{name="vm-q"}'), 64 * MiB);
    assert.ok(value(held, 'kubevirt_vmi_migration_data_processed_bytes{name="vm-q"}')! > 0);
    assert.ok(value(held, 'kubevirt_vmi_migration_start_time_seconds{name="vm-q"}')! > 0);
    assert.equal(value(held, 'kubevirt_vmi_migration_succeeded{name="vm-q"}'), 0);
    await src.execute('migrate-continue', { state: 'pre-switchover' });
    const [code] = (await exited) as [number | null];
    assert.equal(code, 0, stderr);
  } finally {
    await src.stop();
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
