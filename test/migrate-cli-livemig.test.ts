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
import { connect, type Socket } from 'node:net';
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

test('a QMP client that sends migrate-incoming the moment the socket exists still gets the destination\'s listening line', { timeout: 120_000 }, async () => {
  // The bench's destination once hung here (2 runs in ~100): `livemig run` wired its 'listening' report
  // only after the QMP server's listen() had resolved, and the socket takes clients a little before that
  // (listen, then rename into place, then remove a private directory). A client quick enough had its
  // migrate-incoming answered, and the line never came. This client connects as soon as the path
  // appears and sends the whole conversation in one write; the race is narrow, so it runs a few times.
  for (let attempt = 0; attempt < 4; attempt++) {
    const dir = await mkdtemp(join(tmpdir(), 'livemig-early-qmp-'));
    const qmpPath = join(dir, 'dst.qmp');
    const dst = LivemigProcess.start(['--machine', 'test', '--ram', '16M', '--qmp', `unix:${qmpPath}`, '--incoming', 'defer']);
    try {
      const socket = await connectAsSoonAsItExists(qmpPath, 20_000);
      const answers = collectLines(socket);
      socket.write('{"execute":"qmp_capabilities"}\n{"execute":"migrate-incoming","arguments":{"uri":"tcp:127.0.0.1:0"}}\n');
      // The greeting, then both answers.
      await answers.count(3, 20_000);
      assert.deepEqual(answers.lines.slice(1).map((l) => Object.keys(JSON.parse(l))), [['return'], ['return']], answers.lines.join(' | '));
      const listening = await dst.waitFor('listening', () => true, 10_000);
      assert.match(String(listening.address), /^tcp:127\.0\.0\.1:\d+$/);
      socket.destroy();
    } finally {
      await dst.stop();
      await rm(dir, { recursive: true, force: true });
    }
  }
});

/** A unix socket connected to `path` as soon as something listens there (polled every millisecond). */
async function connectAsSoonAsItExists(path: string, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const socket = await new Promise<Socket | undefined>((resolve) => {
      const s = connect(path);
      s.once('connect', () => resolve(s));
      s.once('error', () => resolve(undefined));
    });
    if (socket) return socket;
    if (Date.now() > deadline) throw new Error(`nothing listened on ${path} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

function collectLines(socket: Socket): { lines: string[]; count(n: number, timeoutMs: number): Promise<void> } {
  const lines: string[] = [];
  let partial = '';
  socket.setEncoding('utf8').on('data', (text: string) => {
    partial += text;
    const parts = partial.split('\n');
    partial = parts.pop()!;
    lines.push(...parts.filter((l) => l.trim() !== ''));
  });
  return {
    lines,
    async count(n, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (lines.length < n) {
        if (Date.now() > deadline) throw new Error(`QMP answered ${lines.length} of ${n} lines: ${lines.join(' | ')}`);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    },
  };
}
