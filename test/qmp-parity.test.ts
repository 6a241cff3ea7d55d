/**
 * Parity with real QEMU 7.2: the fields livemig and QEMU both have in
 * query-migrate, query-migrate-capabilities and query-migrate-parameters
 * carry the same names and JSON types, and livemig adds no names of its own
 * (but for its x-livemig-* parameters, which QEMU's x- convention marks as extensions).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LIVEMIG_PARAMETER_PREFIX, parameterSpec } from '../src/migration/config.js';
import { LivemigProcess } from './helpers/livemig-process.js';
import { qemuSkipReason, QEMU_BINARY } from './helpers/qemu.js';
import { RawQmp, type QmpMessage } from './helpers/raw-qmp.js';

async function openQmp(path: string): Promise<RawQmp> {
  for (let attempt = 0; ; attempt++) {
    try {
      const qmp = await RawQmp.open(path);
      await qmp.next((m) => 'QMP' in m);
      await qmp.execute('qmp_capabilities');
      return qmp;
    } catch (err) {
      if (attempt > 200) throw err;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

interface Pair {
  src: RawQmp;
  dst: RawQmp;
  stop: () => Promise<void>;
}

async function qemuPair(dir: string): Promise<Pair> {
  const args = (name: string, extra: string[] = []): string[] => ['-M', 'none', '-m', '64M', '-nodefaults', '-display', 'none', '-qmp', `unix:${join(dir, name)},server=on,wait=off`, ...extra];
  const procs: ChildProcess[] = [spawn(QEMU_BINARY, args('qsrc')), spawn(QEMU_BINARY, args('qdst', ['-incoming', 'defer']))];
  return {
    src: await openQmp(join(dir, 'qsrc')),
    dst: await openQmp(join(dir, 'qdst')),
    stop: async () => {
      for (const p of procs) p.kill('SIGKILL');
    },
  };
}

async function livemigPair(dir: string): Promise<Pair> {
  const procs = [
    LivemigProcess.start(['--machine', 'test', '--ram', '64M', '--qmp', `unix:${join(dir, 'lsrc')}`]),
    LivemigProcess.start(['--machine', 'test', '--ram', '64M', '--qmp', `unix:${join(dir, 'ldst')}`, '--incoming', 'defer']),
  ];
  await Promise.all(procs.map((p) => p.waitFor('qmp')));
  return {
    src: await openQmp(join(dir, 'lsrc')),
    dst: await openQmp(join(dir, 'ldst')),
    stop: async () => {
      for (const p of procs) await p.stop();
    },
  };
}

/** Migrate src -> dst over unix:PATH through QMP; returns the source's final query-migrate. */
async function migrate(pair: Pair, migPath: string): Promise<QmpMessage> {
  assert.deepEqual((await pair.dst.execute('migrate-incoming', { uri: `unix:${migPath}` })).return, {});
  assert.deepEqual((await pair.src.execute('migrate', { uri: `unix:${migPath}` })).return, {});
  const deadline = Date.now() + 60_000;
  for (;;) {
    const info = (await pair.src.execute('query-migrate')).return;
    if (info.status === 'completed' || info.status === 'failed') return info;
    if (Date.now() > deadline) throw new Error('migration did not finish');
    await new Promise((r) => setTimeout(r, 50));
  }
}

const jsonType = (v: unknown): string => (Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v);

function assertSameShape(ours: Record<string, unknown>, qemus: Record<string, unknown>, where: string): void {
  for (const [key, value] of Object.entries(ours)) {
    assert.ok(key in qemus, `${where}: livemig's '${key}' is not in QEMU's reply (${Object.keys(qemus).join(', ')})`);
    assert.equal(jsonType(value), jsonType(qemus[key]), `${where}.${key}: type`);
    if (jsonType(value) === 'object') assertSameShape(value as Record<string, unknown>, qemus[key] as Record<string, unknown>, `${where}.${key}`);
  }
}

test('query-migrate, capabilities and parameters: same names and types as QEMU 7.2', { skip: qemuSkipReason(), timeout: 180_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-parity-'));
  const pairs: Pair[] = [];
  try {
    const qemu = await qemuPair(dir);
    pairs.push(qemu);
    const ours = await livemigPair(dir);
    pairs.push(ours);

    const qCaps = (await qemu.src.execute('query-migrate-capabilities')).return as Array<{ capability: string; state: boolean }>;
    const lCaps = (await ours.src.execute('query-migrate-capabilities')).return as Array<{ capability: string; state: boolean }>;
    const qemuCapNames = qCaps.map((c) => c.capability);
    for (const c of lCaps) {
      assert.ok(qemuCapNames.includes(c.capability), `capability ${c.capability} exists in QEMU`);
      assert.deepEqual(Object.keys(c).sort(), ['capability', 'state']);
      assert.equal(typeof c.state, 'boolean');
    }
    assert.deepEqual(lCaps.map((c) => c.capability), qemuCapNames.filter((n) => lCaps.some((c) => c.capability === n)), 'same order as QEMU (enum order)');

    const ourParams = (await ours.src.execute('query-migrate-parameters')).return as Record<string, unknown>;
    const livemigOwn = Object.keys(ourParams).filter((name) => name.startsWith(LIVEMIG_PARAMETER_PREFIX));
    for (const name of livemigOwn) assert.ok(parameterSpec(name), `livemig's own parameter ${name} is in the parameter table`);
    const sharedParams = Object.fromEntries(Object.entries(ourParams).filter(([name]) => !livemigOwn.includes(name)));
    assertSameShape(sharedParams, (await qemu.src.execute('query-migrate-parameters')).return, 'query-migrate-parameters');
    assert.deepEqual((await ours.src.execute('query-migrate')).return, (await qemu.src.execute('query-migrate')).return, 'before any migration: {}');

    const qInfo = await migrate(qemu, join(dir, 'q.sock'));
    const lInfo = await migrate(ours, join(dir, 'l.sock'));
    assert.equal(qInfo.status, 'completed');
    assert.equal(lInfo.status, 'completed');
    assertSameShape(lInfo, qInfo, 'query-migrate');
    for (const key of ['status', 'setup-time', 'total-time', 'downtime', 'ram']) {
      assert.ok(key in lInfo && key in qInfo, key);
    }
    const status = async (p: RawQmp): Promise<string> => (await p.execute('query-status')).return.status;
    assert.equal(await status(ours.src), await status(qemu.src), 'both sources end in postmigrate');
  } finally {
    for (const p of pairs) {
      p.src.close();
      p.dst.close();
      await p.stop();
    }
    await rm(dir, { recursive: true, force: true });
  }
});
