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
import { LIVEMIG_PARAMETER_PREFIX, parameterSpec, QEMU_DEFAULT_MAX_BANDWIDTH } from '../src/migration/config.js';
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
    if (key.startsWith('x-livemig-')) continue; // livemig's extensions (QEMU's x- convention), e.g. query-migrate's x-livemig-progress
    assert.ok(key in qemus, `${where}: livemig's '${key}' is not in QEMU's reply (${Object.keys(qemus).join(', ')})`);
    assert.equal(jsonType(value), jsonType(qemus[key]), `${where}.${key}: type`);
    if (jsonType(value) === 'object') assertSameShape(value as Record<string, unknown>, qemus[key] as Record<string, unknown>, `${where}.${key}`);
  }
}

/**
 * query-migrate-parameters: the same names and defaults as QEMU 7.2 (but
 * max-bandwidth, whose default livemig changes on purpose, and livemig's own
 * x-livemig-*); QEMU's whole list set back is accepted (as tools do);
 * block-bitmap-mapping is listed once set; tls-* take null; an unimplemented
 * parameter at another value is refused by livemig, naming its default.
 */
async function parametersLikeQemu(qemu: RawQmp, ours: RawQmp): Promise<void> {
  const qParams = (await qemu.execute('query-migrate-parameters')).return as Record<string, unknown>;
  const lParams = (await ours.execute('query-migrate-parameters')).return as Record<string, unknown>;
  const shared = Object.fromEntries(Object.entries(lParams).filter(([name]) => !name.startsWith(LIVEMIG_PARAMETER_PREFIX)));
  assert.deepEqual(Object.keys(shared).sort(), Object.keys(qParams).sort(), 'the same parameter names as QEMU 7.2');
  assert.equal(qParams['max-bandwidth'], QEMU_DEFAULT_MAX_BANDWIDTH, "QEMU 7.2's max-bandwidth default as config.ts says");
  assert.deepEqual({ ...shared, 'max-bandwidth': qParams['max-bandwidth'] }, qParams, "QEMU 7.2's defaults (max-bandwidth aside)");
  assert.deepEqual((await ours.execute('migrate-set-parameters', qParams)).return, {}, "QEMU's whole parameter list, set back, is accepted");
  assert.equal((await ours.execute('query-migrate-parameters')).return['max-bandwidth'], QEMU_DEFAULT_MAX_BANDWIDTH);
  assert.deepEqual((await ours.execute('migrate-set-parameters', { 'max-bandwidth': 0 })).return, {});
  for (const p of [qemu, ours]) {
    assert.equal('block-bitmap-mapping' in (await p.execute('query-migrate-parameters')).return, false, 'block-bitmap-mapping is not listed until set');
    assert.deepEqual((await p.execute('migrate-set-parameters', { 'block-bitmap-mapping': [], 'tls-creds': 'c0', 'tls-hostname': 'h', 'tls-authz': 'a' })).return, {});
    const set = (await p.execute('query-migrate-parameters')).return;
    assert.deepEqual([set['block-bitmap-mapping'], set['tls-creds'], set['tls-hostname'], set['tls-authz']], [[], 'c0', 'h', 'a']);
    assert.deepEqual((await p.execute('migrate-set-parameters', { 'tls-creds': null, 'tls-hostname': null, 'tls-authz': null })).return, {});
    const cleared = (await p.execute('query-migrate-parameters')).return;
    assert.deepEqual([cleared['tls-creds'], cleared['tls-hostname'], cleared['tls-authz']], ['', '', ''], 'null clears a tls-* parameter');
  }
  const refused = await ours.execute('migrate-set-parameters', { 'compress-level': 9 });
  assert.equal(refused.error?.class, 'GenericError');
  assert.match(refused.error?.desc, /livemig does not implement 'compress-level'; only its default 1 is accepted/);
  assert.deepEqual((await qemu.execute('migrate-set-parameters', { 'compress-level': 9 })).return, {}, 'QEMU takes it (it implements compression)');
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
    await parametersLikeQemu(qemu.dst, ours.dst);

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
