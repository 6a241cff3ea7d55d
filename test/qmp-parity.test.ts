/**
 * Parity with real QEMU 7.2: the fields livemig and QEMU both have in
 * query-migrate, query-migrate-capabilities and query-migrate-parameters
 * carry the same names and JSON types, and livemig adds no names of its own
 * (but for its x-livemig-* parameters, which QEMU's x- convention marks as extensions).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LIVEMIG_PARAMETER_PREFIX, parameterSpec, QEMU_DEFAULT_MAX_BANDWIDTH } from '../src/migration/config.js';
import { MigrationError } from '../src/migration/errors.js';
import { outgoingInfo, qmpOutgoingInfo, socketAddress } from '../src/monitor/query-migrate.js';
import type { OutgoingSnapshot } from '../src/migration/outgoing.js';
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

/**
 * Waits until a source has left `finish-migrate`. QEMU 7.2 announces COMPLETED
 * (migration_completion) before migration_iteration_finish sets the runstate to
 * postmigrate, so for a moment after the event it still reads finish-migrate;
 * livemig is in postmigrate by the time it announces. Reads nothing into a transcript.
 */
async function settledRunState(qmp: RawQmp): Promise<string> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const status = ((await qmp.execute('query-status')).return as { status: string }).status;
    if (status !== 'finish-migrate' || Date.now() > deadline) return status;
    await new Promise((r) => setTimeout(r, 10));
  }
}

interface Pair {
  src: RawQmp;
  dst: RawQmp;
  /** A second destination (withSpare), for a migration that is cancelled: a destination whose migration fails exits. */
  spare?: RawQmp;
  stop: () => Promise<void>;
}

/** Close every pair's monitors, stop their processes, and remove their directory. */
async function closePairs(pairs: readonly Pair[], dir: string): Promise<void> {
  for (const p of pairs) {
    p.src.close();
    p.dst.close();
    p.spare?.close();
    await p.stop();
  }
  await rm(dir, { recursive: true, force: true });
}

async function qemuPair(dir: string, withSpare = false): Promise<Pair> {
  const args = (name: string, extra: string[] = []): string[] => ['-M', 'none', '-m', '64M', '-nodefaults', '-display', 'none', '-qmp', `unix:${join(dir, name)},server=on,wait=off`, ...extra];
  const procs: ChildProcess[] = [spawn(QEMU_BINARY, args('qsrc')), spawn(QEMU_BINARY, args('qdst', ['-incoming', 'defer']))];
  if (withSpare) procs.push(spawn(QEMU_BINARY, args('qspare', ['-incoming', 'defer'])));
  return {
    src: await openQmp(join(dir, 'qsrc')),
    dst: await openQmp(join(dir, 'qdst')),
    ...(withSpare ? { spare: await openQmp(join(dir, 'qspare')) } : {}),
    stop: async () => {
      for (const p of procs) p.kill('SIGKILL');
    },
  };
}

async function livemigPair(dir: string, machine = 'test', withSpare = false): Promise<Pair> {
  const procs = [
    ...(withSpare ? [LivemigProcess.start(['--machine', machine, '--ram', '64M', '--qmp', `unix:${join(dir, 'lspare')}`, '--incoming', 'defer'])] : []),
    LivemigProcess.start(['--machine', machine, '--ram', '64M', '--qmp', `unix:${join(dir, 'lsrc')}`]),
    LivemigProcess.start(['--machine', machine, '--ram', '64M', '--qmp', `unix:${join(dir, 'ldst')}`, '--incoming', 'defer']),
  ];
  await Promise.all(procs.map((p) => p.waitFor('qmp')));
  return {
    src: await openQmp(join(dir, 'lsrc')),
    dst: await openQmp(join(dir, 'ldst')),
    ...(withSpare ? { spare: await openQmp(join(dir, 'lspare')) } : {}),
    stop: async () => {
      for (const p of procs) await p.stop();
    },
  };
}

/**
 * Migrate src -> dst over TCP through QMP, the destination on a port of its
 * choosing, read back from its socket-address as tools do; returns the
 * source's final query-migrate and the destination's socket-address.
 */
async function migrate(pair: Pair): Promise<{ info: QmpMessage; address: QmpMessage }> {
  assert.deepEqual((await pair.dst.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' })).return, {});
  const [address] = (await pair.dst.execute('query-migrate')).return['socket-address'];
  assert.deepEqual((await pair.src.execute('migrate', { uri: `tcp:${address.host}:${address.port}` })).return, {});
  const deadline = Date.now() + 60_000;
  for (;;) {
    const info = (await pair.src.execute('query-migrate')).return;
    if (info.status === 'completed' || info.status === 'failed') return { info, address };
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

  // What QEMU 7.2 refuses, livemig refuses in the same words (its input visitor's, then migrate_params_check's, in
  // that order), and what it takes, livemig takes: libvirt's "unlimited" rate among them.
  for (const args of SAME_ANSWERS) {
    const q = await qemu.execute('migrate-set-parameters', args);
    const l = await ours.execute('migrate-set-parameters', args);
    assert.deepEqual(l.error ?? l.return, q.error ?? q.return, `migrate-set-parameters ${JSON.stringify(args)}`);
  }
  // Numbers as the client wrote them: QEMU's parser takes 1.0, 1e3, -0.0 and integers beyond int64 and uint64 for
  // doubles, which its visitor refuses where an integer is wanted (JSON.parse alone cannot tell 1.0 from 1).
  for (const text of SAME_ANSWERS_AS_WRITTEN) {
    const q = await qemu.executeText('migrate-set-parameters', text);
    const l = await ours.executeText('migrate-set-parameters', text);
    assert.deepEqual(l.error ?? l.return, q.error ?? q.return, `migrate-set-parameters ${text}`);
  }
  // HMP reads sizes with qemu_strtosz: fractions only with a scale, hex (with a warning if suffixed), rounding half up,
  // 2^64 out of range; max-bandwidth in MiB and below 2^63. Same answer, and the same value read back.
  for (const [name, values] of HMP_SIZES_AS_QEMU) {
    for (const value of values) {
      const answers = await Promise.all([qemu, ours].map(async (p) => {
        const reply = await p.execute('human-monitor-command', { 'command-line': `migrate_set_parameter ${name} ${value}` });
        const info = (await p.execute('human-monitor-command', { 'command-line': 'info migrate_parameters' })).return as string;
        return [reply.return, info.split('\r\n').find((line) => line.startsWith(`${name}:`))];
      }));
      assert.deepEqual(answers[1], answers[0], `HMP migrate_set_parameter ${name} ${value}`);
    }
  }
  // HMP's string arguments may be double-quoted, with QEMU's escapes (get_str); anything else after them is extraneous.
  for (const commandLine of HMP_LINES_AS_QEMU) {
    const answers = await Promise.all([qemu, ours].map(async (p) => {
      const reply = await p.execute('human-monitor-command', { 'command-line': commandLine });
      // Read back over QMP: HMP's `info` lines would differ where livemig escapes what it prints (a backslash).
      const parameters = (await p.execute('query-migrate-parameters')).return as Record<string, unknown>;
      const capabilities = (await p.execute('query-migrate-capabilities')).return as Array<{ capability: string; state: boolean }>;
      return [reply.return, parameters['tls-hostname'], parameters['downtime-limit'], capabilities.find((c) => c.capability === 'xbzrle')?.state];
    }));
    assert.deepEqual(answers[1], answers[0], `HMP ${commandLine}`);
  }
  for (const p of [qemu, ours]) {
    await p.execute('migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: false }] });
    await p.execute('migrate-set-parameters', { 'tls-hostname': '', 'downtime-limit': 300 });
  }
  // HMP reads libvirt's rate in MiB/s, and both print it in full.
  const maxBandwidthLine = async (p: RawQmp): Promise<string | undefined> => {
    await p.execute('human-monitor-command', { 'command-line': 'migrate_set_parameter max-bandwidth 8796093022207' });
    const text = (await p.execute('human-monitor-command', { 'command-line': 'info migrate_parameters' })).return as string;
    return text.split('\r\n').find((line) => line.startsWith('max-bandwidth:'));
  };
  assert.equal(await maxBandwidthLine(ours), await maxBandwidthLine(qemu));
  assert.equal(await maxBandwidthLine(ours), 'max-bandwidth: 9223372036853727232 bytes/second');
  // QMP prints it in full too (JSON.stringify would print the double's shortest form, ...727000, another integer to libvirt).
  const maxBandwidthJson = async (p: RawQmp): Promise<string | undefined> => /"max-bandwidth": ?(\d+)/.exec((await p.executeRaw('query-migrate-parameters')).text)?.[1];
  assert.equal(await maxBandwidthJson(ours), await maxBandwidthJson(qemu));
  assert.equal(await maxBandwidthJson(ours), '9223372036853727232');
  // Where livemig differs on purpose: QEMU 7.2 skips its own multifd level checks (and fails at the first
  // compressed packet); livemig's XBZRLE cache is bounded.
  for (const [args, desc] of DIFFERENT_ANSWERS) {
    assert.deepEqual((await qemu.execute('migrate-set-parameters', args)).return, {}, `QEMU 7.2 takes ${JSON.stringify(args)}`);
    assert.equal((await ours.execute('migrate-set-parameters', args)).error?.desc, desc);
  }
}

/** migrate-set-parameters arguments QEMU 7.2 and livemig answer alike. */
const SAME_ANSWERS: Array<Record<string, unknown>> = [
  { 'downtime-limit': 2_000_001 }, { 'downtime-limit': -1 }, { 'downtime-limit': 'x' }, { 'downtime-limit': 1.5 }, { 'downtime-limit': true },
  { 'max-bandwidth': 'x' }, { 'max-bandwidth': -1 }, { 'max-bandwidth': 9223372036853727232 }, { 'max-postcopy-bandwidth': -1 },
  { 'xbzrle-cache-size': 1000 }, { 'xbzrle-cache-size': 12288 },
  { 'cpu-throttle-initial': 0 }, { 'cpu-throttle-initial': 100 }, { 'cpu-throttle-increment': 100 }, { 'max-cpu-throttle': 100 }, { 'max-cpu-throttle': 10 },
  { 'throttle-trigger-threshold': 101 }, { 'cpu-throttle-initial': 0, 'throttle-trigger-threshold': 0 }, { 'max-cpu-throttle': 50, 'cpu-throttle-initial': 60 },
  { 'multifd-channels': 0 }, { 'multifd-channels': 256 }, { 'multifd-channels': -1 }, { 'downtime-limit': -1, 'multifd-channels': 0 },
  { 'multifd-zlib-level': 256 }, { 'multifd-compression': 'lz4' }, { 'multifd-compression': 5 },
  { 'cpu-throttle-tailslow': 1 }, { 'tls-creds': 5 }, { 'block-bitmap-mapping': 5 },
  { 'compress-level': 10 }, { 'compress-level': 256 }, { 'compress-threads': 0 }, { 'decompress-threads': 0 },
  { 'announce-initial': 100_001 }, { 'announce-rounds': 1001 }, { 'announce-step': 0 }, { 'x-checkpoint-delay': 2 ** 32 }, { 'x-checkpoint-delay': 'x' },
  { 'no-such-parameter': 1 },
];

/** The same, written as text: numbers QEMU reads as doubles, and their integer neighbours; malformed bitmap mappings. */
const SAME_ANSWERS_AS_WRITTEN: string[] = [
  '{"downtime-limit": 1.0}', '{"downtime-limit": 0.0}', '{"downtime-limit": -0.0}', '{"downtime-limit": -0}', '{"downtime-limit": 1e3}',
  '{"max-bandwidth": 1E3}', '{"max-bandwidth": 18446744073709551615}', '{"max-bandwidth": 18446744073709551616}',
  '{"max-bandwidth": -9223372036854775808}', '{"max-bandwidth": -9223372036854775809}', '{"multifd-channels": 2.0}',
  '{"compress-wait-thread": 1.0}', '{"tls-creds": 1.5}', '{"multifd-compression": 1e0}',
  // block-bitmap-mapping: QEMU's visitor names the member at fault, then its alias map check says what is wrong.
  ...[
    '[1.5]', '{"a": 1}', '[{}]', '[{"x": 1, "node-name": "a"}]', '[{"node-name": 1, "alias": "b", "bitmaps": []}]',
    '[{"node-name": "a", "alias": "b", "bitmaps": [], "x": 1}]', '[{"node-name": "a", "alias": "b", "bitmaps": {}}]',
    '[{"node-name": "a", "alias": "b", "bitmaps": [{"name": "n", "alias": "m", "transform": {"persistent": 1}}]}]',
    '[{"node-name": "a", "alias": "b", "bitmaps": [{"name": "n", "alias": "m", "transform": null}]}]',
    '[{"node-name": "a", "alias": "b", "bitmaps": [{"name": "n", "alias": "m", "y": 2}]}]',
    '[{"node-name": "a", "alias": "1b", "bitmaps": []}]', `[{"node-name": "${'x'.repeat(32)}", "alias": "b", "bitmaps": []}]`,
    '[{"node-name": "a", "alias": "b", "bitmaps": []}, {"node-name": "a", "alias": "c", "bitmaps": []}]',
    '[{"node-name": "a", "alias": "b", "bitmaps": []}, {"node-name": "c", "alias": "b", "bitmaps": []}]',
    '[{"node-name": "a", "alias": "b", "bitmaps": [{"name": "n", "alias": "m"}, {"name": "n", "alias": "k"}]}]',
    '[{"node-name": "a", "alias": "b", "bitmaps": [{"name": "n", "alias": "m"}, {"name": "o", "alias": "m"}]}]',
  ].map((mapping) => `{"block-bitmap-mapping": ${mapping}}`),
];

/** HMP migrate_set_parameter values, read by qemu_strtosz (downtime-limit through the size visitor, max-bandwidth in MiB). */
const HMP_SIZES_AS_QEMU: Array<[string, string[]]> = [
  ['downtime-limit', ['1.0', '1.5', '0x10', '0x10k', '0x1.5', '0X10', '1.k', '.5k', '1e3', '5x', '-1', '+5', '1.00', '1.', '1..5', '1.5b', '1kB',
    '0.001k', '0.0001k', '1.25k', '18446744073709551615', '18446744073709551616', '99999999999999999999x', '16E', '15.9E', '1.5e', '0x', '0xg', '1k5']],
  ['max-bandwidth', ['1.5', '1.0000001', '0.5', '0x10', '0x10k', '0x1.5', '+5', '-1', '1e3', '1..5', '1.5b', '8796093022207', '8796093022208', '15E', '16E']],
];

/** HMP command lines with quoted (or badly quoted) string arguments. */
const HMP_LINES_AS_QEMU: string[] = [
  'migrate_set_parameter tls-hostname "a b"', 'migrate_set_parameter tls-hostname "x\\"y"', "migrate_set_parameter tls-hostname \"it\\'s\"",
  'migrate_set_parameter tls-hostname "back\\\\slash"', 'migrate_set_parameter tls-hostname "unterminated', 'migrate_set_parameter tls-hostname "bad\\qescape"',
  'migrate_set_parameter "tls-hostname" h2', 'migrate_set_parameter tls-hostname ""', 'migrate_set_parameter tls-hostname "a"b',
  'migrate_set_parameter downtime-limit "5"', 'migrate_set_parameter downtime-limit "5 "', 'migrate_set_capability "xbzrle" on', 'migrate_set_capability xbzrle "on"',
];

/** migrate-set-parameters arguments QEMU 7.2 takes and livemig refuses, with livemig's words. */
const DIFFERENT_ANSWERS: Array<[Record<string, unknown>, string]> = [
  [{ 'multifd-zlib-level': 10 }, "Parameter 'multifd_zlib_level' expects a value between 0 and 9"],
  [{ 'multifd-zstd-level': 21 }, "Parameter 'multifd_zstd_level' expects a value between 0 and 20"],
  [{ 'xbzrle-cache-size': 2 ** 41 }, "Parameter 'xbzrle-cache-size' expects an integer in the range of 0 to 1099511627776 bytes (livemig's limit)"],
];

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

    const { info: qInfo, address: qAddress } = await migrate(qemu);
    const { info: lInfo, address: lAddress } = await migrate(ours);
    assert.deepEqual({ ...lAddress, port: 'PORT' }, { ...qAddress, port: 'PORT' }, "socket-address of a tcp listener: QEMU's SocketAddress with ipv4");
    assert.equal(qInfo.status, 'completed');
    assert.equal(lInfo.status, 'completed');
    assertSameShape(lInfo, qInfo, 'query-migrate');
    for (const key of ['status', 'setup-time', 'total-time', 'downtime', 'ram']) {
      assert.ok(key in lInfo && key in qInfo, key);
    }
    assert.equal(await settledRunState(ours.src), await settledRunState(qemu.src), 'both sources end in postmigrate');
  } finally {
    await closePairs(pairs, dir);
  }
});

// ---------- the side-by-side script ----------

/** One reply or event the script saw, under a name both runs share. */
interface Step {
  name: string;
  value: unknown;
}

interface Transcript {
  steps: Step[];
  /** Events in order, per side: names, and MIGRATION's status. */
  srcEvents: string[];
  dstEvents: string[];
  /** The destination of the cancelled migration. */
  spareEvents: string[];
  eventMessages: QmpMessage[];
  commandNames: string[];
}


/** The commands the script sends (query-commands must list them on both). */
const SCRIPT_COMMANDS = [
  'query-status', 'query-version', 'query-name', 'query-uuid', 'query-kvm', 'query-cpus-fast', 'query-machines', 'query-block',
  'query-commands', 'query-migrate-capabilities', 'migrate-set-capabilities', 'query-migrate-parameters', 'migrate-set-parameters',
  'human-monitor-command', 'migrate', 'migrate-incoming', 'query-migrate', 'migrate-continue', 'migrate_cancel', 'quit',
];

/** HMP commands the script sends, on both sides. */
const HMP_COMMANDS = [
  'info status', 'info migrate', 'info migrate_parameters', 'info migrate_capabilities', 'info no-such-thing', 'no-such-command', 'info status extra',
  // The commands that change something, with what they refuse (nothing here changes what the rest of the script does).
  'migrate_set_capability events on', 'migrate_set_capability events maybe', 'migrate_set_capability events', 'migrate_set_capability', 'migrate_set_capability no-such on',
  'migrate_set_parameter downtime-limit 1k', 'migrate_set_parameter downtime-limit abc', 'migrate_set_parameter downtime-limit 1 2', 'migrate_set_parameter max-bandwidth 1x',
  'migrate_set_parameter multifd-channels 300', 'migrate_set_parameter multifd-channels abc', 'migrate_set_parameter cpu-throttle-tailslow maybe', 'migrate_set_parameter block-bitmap-mapping x',
  'migrate_set_parameter no-such 1', 'migrate_set_parameter tls-hostname', 'info migrate_parameters', 'migrate_cancel now', 'stop now', 'migrate -x tcp:127.0.0.1:1', 'migrate -db tcp:127.0.0.1:1',
  'migrate', 'migrate_continue', 'help migrate_set_parameter', 'help s', 'help no-such-command',
];

/**
 * The client script: what a management tool does with a fresh pair, one
 * migration (with pause-before-switchover, so "during" is a fixed point), a
 * migration to a refused port, and quit. Both runs use the same socket file
 * names under their own directory, which is replaced by $DIR in texts.
 */
async function clientScript(pair: Pair, dir: string): Promise<Transcript> {
  const steps: Step[] = [];
  const record = (name: string, value: unknown): void => {
    steps.push({ name, value: JSON.parse(JSON.stringify(value).split(dir).join('$DIR')) });
  };
  const run = async (side: 'src' | 'dst', command: string, args?: Record<string, unknown>, label = command): Promise<QmpMessage> => {
    const reply = await pair[side].execute(command, args);
    const { id: _id, ...rest } = reply;
    record(`${side} ${label}`, rest);
    return reply;
  };
  record('src greeting', pair.src.messages.find((m) => 'QMP' in m));
  record('src qmp_capabilities', pair.src.messages.find((m) => 'return' in m));
  for (const c of ['query-status', 'query-version', 'query-name', 'query-uuid', 'query-kvm', 'query-cpus-fast', 'query-machines', 'query-block', 'query-events']) await run('src', c);
  const commandNames = ((await pair.src.execute('query-commands')).return as Array<{ name: string }>).map((c) => c.name);
  await run('dst', 'query-status');

  // Capabilities and parameters: read, set back as read (every one at its default), read again.
  for (const side of ['src', 'dst'] as const) {
    const caps = (await run(side, 'query-migrate-capabilities')).return;
    await run(side, 'migrate-set-capabilities', { capabilities: caps }, 'migrate-set-capabilities (as read)');
    await run(side, 'query-migrate-capabilities', undefined, 'query-migrate-capabilities (again)');
    const params = (await run(side, 'query-migrate-parameters')).return;
    await run(side, 'migrate-set-parameters', params, 'migrate-set-parameters (as read)');
    await run(side, 'query-migrate-parameters', undefined, 'query-migrate-parameters (again)');
  }
  for (const line of HMP_COMMANDS) await run('src', 'human-monitor-command', { 'command-line': line }, `hmp '${line}'`);
  await run('dst', 'human-monitor-command', { 'command-line': 'info status' }, "hmp 'info status'");

  for (const side of ['src', 'dst'] as const) {
    // As libvirt sets them: pause-before-switchover on a source, late-block-activate on a destination.
    const on = [{ capability: 'events', state: true }, { capability: 'pause-before-switchover', state: side === 'src' }, { capability: 'xbzrle', state: true }, { capability: 'late-block-activate', state: side === 'dst' }];
    await run(side, 'migrate-set-capabilities', { capabilities: on });
  }
  // A destination that is not there.
  await run('src', 'migrate', { uri: 'tcp:127.0.0.1:1' }, 'migrate (refused)');
  await pair.src.next((m) => m.event === 'MIGRATION' && m.data.status === 'failed');
  await run('src', 'query-migrate', undefined, 'query-migrate (refused)');
  await run('src', 'human-monitor-command', { 'command-line': 'info migrate' }, "hmp 'info migrate' (refused)");

  // A migration cancelled at pre-switchover (to the spare destination, which then fails and exits).
  const spare = pair.spare!;
  await spare.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  const spareUri = `unix:${join(dir, 'spare.sock')}`;
  await spare.execute('migrate-incoming', { uri: spareUri });
  const cancelFrom = pair.src.messages.length;
  await run('src', 'migrate', { uri: spareUri }, 'migrate (to be cancelled)');
  await pair.src.next((m) => m.event === 'MIGRATION' && m.data.status === 'pre-switchover', cancelFrom);
  await run('src', 'migrate_cancel');
  await pair.src.next((m) => m.event === 'MIGRATION' && m.data.status === 'cancelled', cancelFrom);
  await run('src', 'query-migrate', undefined, 'query-migrate (cancelled)');
  await run('src', 'query-status', undefined, 'query-status (cancelled)');
  await run('src', 'human-monitor-command', { 'command-line': 'info migrate' }, "hmp 'info migrate' (cancelled)");
  await spare.next((m) => m.event === 'MIGRATION' && m.data.status === 'failed');
  const spareEvents = spare.events().map((m) => (m.event === 'MIGRATION' ? `MIGRATION ${m.data.status}` : m.event));

  // The migration.
  await run('dst', 'query-migrate', undefined, 'query-migrate (before)');
  const uri = `unix:${join(dir, 'mig.sock')}`;
  await run('dst', 'migrate-incoming', { uri });
  await run('dst', 'query-migrate', undefined, 'query-migrate (listening)');
  await run('dst', 'human-monitor-command', { 'command-line': 'info migrate' }, "hmp 'info migrate' (listening)");
  const from = pair.src.messages.length;
  await run('src', 'migrate', { uri });
  await pair.src.next((m) => m.event === 'MIGRATION' && m.data.status === 'pre-switchover', from);
  await run('src', 'query-migrate', undefined, 'query-migrate (pre-switchover)');
  await run('src', 'query-status', undefined, 'query-status (pre-switchover)');
  await run('dst', 'query-migrate', undefined, 'query-migrate (receiving)');
  await run('dst', 'human-monitor-command', { 'command-line': 'info migrate' }, "hmp 'info migrate' (receiving)");
  await run('src', 'human-monitor-command', { 'command-line': 'info migrate' }, "hmp 'info migrate' (pre-switchover)");
  await run('src', 'migrate-continue', { state: 'pre-switchover' });
  await pair.src.next((m) => m.event === 'MIGRATION' && (m.data.status === 'completed' || m.data.status === 'failed'), from, 60_000);
  await pair.dst.next((m) => m.event === 'MIGRATION' && (m.data.status === 'completed' || m.data.status === 'failed'), 0, 60_000);
  await settledRunState(pair.src);
  for (const side of ['src', 'dst'] as const) {
    await run(side, 'query-migrate', undefined, 'query-migrate (after)');
    await run(side, 'query-status', undefined, 'query-status (after)');
    await run(side, 'human-monitor-command', { 'command-line': 'info status' }, "hmp 'info status' (after)");
  }
  for (const side of ['src', 'dst'] as const) await run(side, 'human-monitor-command', { 'command-line': 'info migrate' }, "hmp 'info migrate' (after)");
  await run('dst', 'quit');
  const shutdown = (await pair.dst.next((m) => m.event === 'SHUTDOWN', 0, 10_000)).message;
  const eventName = (m: QmpMessage): string => (m.event === 'MIGRATION' ? `MIGRATION ${m.data.status}` : m.event);
  // How many passes run while the guest runs (between `active` and STOP) depends on the guest and the
  // engine (QEMU: none for an idle guest, many for a busy one): those are left out; the pass at setup
  // and the final one after STOP stay, runs of passes counting as one.
  const collapse = (names: string[]): string[] => {
    let live = false;
    const kept = names.filter((n) => {
      if (n === 'MIGRATION active') live = true;
      if (n === 'STOP' || n.startsWith('MIGRATION ') && n !== 'MIGRATION active') live = false;
      return !(live && n === 'MIGRATION_PASS');
    });
    // QEMU 7.2's migrate_fd_cancel races its own migration thread at pre-switchover: it wakes the thread
    // (pause_sem) before it sets `cancelling`, so the thread may first move pre-switchover -> device, and the
    // cancel then goes on from device. Either order is QEMU's; keep the one without the lost race.
    const raced = (n: string, i: number): boolean => n === 'MIGRATION device' && kept[i - 1] === 'MIGRATION pre-switchover' && kept[i + 1] === 'MIGRATION cancelling';
    return kept.filter((n, i) => !(n === 'MIGRATION_PASS' && kept[i - 1] === 'MIGRATION_PASS') && !raced(n, i));
  };
  return {
    steps,
    srcEvents: collapse(pair.src.events().map(eventName)),
    dstEvents: collapse(pair.dst.events().map(eventName)),
    spareEvents,
    eventMessages: [...pair.src.events(), ...pair.dst.events(), shutdown],
    commandNames,
  };
}

/**
 * Differences livemig makes on purpose, by path (a `*` matches one path
 * element), and why. Anything else that differs fails the test.
 */
const ALLOWED: Array<{ path: RegExp; why: string }> = [
  { path: /(^|\.)x-livemig-[a-z0-9-]+$/, why: "livemig's extensions are named x-livemig-* (QEMU's x- convention for what is not stable QAPI)" },
  { path: /^src greeting\.QMP\.capabilities$/, why: 'livemig offers no out-of-band execution (QEMU offers oob); a client that asks for it is refused' },
];

const allowed = (path: string): boolean => ALLOWED.some((a) => a.path.test(path));

/** Each difference of shape: keys present on one side only, and JSON types, recursively; arrays by their elements' keys. */
function shapeDiffs(ours: unknown, qemus: unknown, path: string, out: string[]): void {
  if (allowed(path)) return;
  const lt = jsonType(ours);
  const qt = jsonType(qemus);
  if (lt !== qt) {
    out.push(`${path}: livemig ${lt} ${JSON.stringify(ours)?.slice(0, 80)}, QEMU ${qt} ${JSON.stringify(qemus)?.slice(0, 80)}`);
    return;
  }
  if (lt === 'object') {
    const l = ours as Record<string, unknown>;
    const q = qemus as Record<string, unknown>;
    for (const key of Object.keys(l)) {
      if (!(key in q)) {
        if (!allowed(`${path}.${key}`)) out.push(`${path}.${key}: only livemig has it (${JSON.stringify(l[key])?.slice(0, 80)})`);
      } else shapeDiffs(l[key], q[key], `${path}.${key}`, out);
    }
    for (const key of Object.keys(q)) if (!(key in l) && !allowed(`${path}.${key}`)) out.push(`${path}.${key}: only QEMU has it (${JSON.stringify(q[key])?.slice(0, 80)})`);
  } else if (lt === 'array') {
    const l = ours as unknown[];
    const q = qemus as unknown[];
    if (l.length === 0 || q.length === 0) {
      if (l.length !== q.length && !allowed(path)) out.push(`${path}: livemig has ${l.length} elements, QEMU ${q.length}`);
      return;
    }
    if (q.every((e) => jsonType(e) === 'object') && l.every((e) => jsonType(e) === 'object')) {
      // Elements may carry optional keys (query-machines' alias): required are those every QEMU element has.
      const qs = q as Array<Record<string, unknown>>;
      const required = Object.keys(qs[0]!).filter((k) => qs.every((e) => k in e));
      for (const [i, e] of (l as Array<Record<string, unknown>>).entries()) {
        for (const k of required) if (!(k in e) && !allowed(`${path}[].${k}`)) out.push(`${path}[${i}].${k}: only QEMU has it`);
        for (const [k, v] of Object.entries(e)) {
          const model = qs.find((x) => k in x);
          if (!model) {
            if (!allowed(`${path}[].${k}`)) out.push(`${path}[${i}].${k}: only livemig has it`);
          } else shapeDiffs(v, model[k], `${path}[].${k}`, out);
        }
      }
    } else shapeDiffs(l[0], q[0], `${path}[]`, out);
  }
}

/** A reply without livemig's x-livemig-* extensions (at any depth). */
function withoutExtensions(value: unknown): unknown {
  if (jsonType(value) !== 'object') return value;
  return Object.fromEntries(Object.entries(value as Record<string, unknown>).filter(([k]) => !k.startsWith('x-livemig-')).map(([k, v]) => [k, withoutExtensions(v)]));
}

/** An HMP reply's layout: its lines with numbers as N and a failure's reason as REASON. */
function hmpLayout(text: string): string[] {
  return text
    .split('\r\n')
    .map((line) =>
      line
        .replace(/^(Migration status: failed) \(.*\)$/, '$1 (REASON)')
        .replace(/: (on|off)$/, ': on|off')
        .replace(/\d+(\.\d+)?/g, 'N'),
    );
}

test('the same client script against QEMU 7.2 and livemig: every reply and event has the same shape', { skip: qemuSkipReason(), timeout: 240_000 }, async () => {
  const root = await mkdtemp(join(tmpdir(), 'livemig-parity-'));
  const pairs: Pair[] = [];
  try {
    const run = async (start: (dir: string) => Promise<Pair>, name: string): Promise<Transcript> => {
      const dir = join(root, name);
      await mkdir(dir);
      const pair = await start(dir);
      pairs.push(pair);
      return clientScript(pair, dir);
    };
    const qemu = await run((dir) => qemuPair(dir, true), 'qemu');
    const ours = await run((dir) => livemigPair(dir, 'none', true), 'livemig');
    // LIVEMIG_PARITY_DUMP=FILE keeps both transcripts for reading side by side.
    if (process.env.LIVEMIG_PARITY_DUMP) await writeFile(process.env.LIVEMIG_PARITY_DUMP, JSON.stringify({ qemu, livemig: ours }, null, 1));

    // Every reply: same step names in the same order, same shapes.
    assert.deepEqual(ours.steps.map((s) => s.name), qemu.steps.map((s) => s.name));
    const diffs: string[] = [];
    for (const [i, step] of ours.steps.entries()) {
      const q = qemu.steps[i]!.value;
      if (step.name.includes('hmp ')) {
        const l = hmpLayout((step.value as QmpMessage).return);
        const ql = hmpLayout((q as QmpMessage).return);
        if (JSON.stringify(l) !== JSON.stringify(ql)) diffs.push(`${step.name}: livemig's lines ${JSON.stringify(l)}\n   QEMU's ${JSON.stringify(ql)}`);
      } else shapeDiffs(step.value, q, step.name, diffs);
    }
    // Events: the same names and MIGRATION statuses in the same order, and the same shapes.
    if (JSON.stringify(ours.srcEvents) !== JSON.stringify(qemu.srcEvents)) diffs.push(`source events: livemig ${ours.srcEvents.join(', ')}\n   QEMU ${qemu.srcEvents.join(', ')}`);
    if (JSON.stringify(ours.spareEvents) !== JSON.stringify(qemu.spareEvents)) diffs.push(`cancelled destination's events: livemig ${ours.spareEvents.join(', ')}\n   QEMU ${qemu.spareEvents.join(', ')}`);
    if (JSON.stringify(ours.dstEvents) !== JSON.stringify(qemu.dstEvents)) diffs.push(`destination events: livemig ${ours.dstEvents.join(', ')}\n   QEMU ${qemu.dstEvents.join(', ')}`);
    for (const m of ours.eventMessages) {
      const model = qemu.eventMessages.find((q) => q.event === m.event);
      if (model) shapeDiffs(m, model, `event ${m.event}`, diffs);
    }
    for (const c of SCRIPT_COMMANDS) {
      if (!ours.commandNames.includes(c)) diffs.push(`query-commands: livemig does not list ${c}`);
      if (!qemu.commandNames.includes(c)) diffs.push(`query-commands: QEMU does not list ${c}`);
    }
    assert.deepEqual(diffs, [], `livemig differs from QEMU 7.2 in ${diffs.length} places:\n${diffs.join('\n')}`);

    // Some values must be equal too, not only shapes.
    const value = (t: Transcript, name: string): any => t.steps.find((s) => s.name === name)!.value;
    for (const name of ['src query-status', 'dst query-status', 'src query-status (cancelled)', 'src query-migrate (cancelled)', 'src query-status (pre-switchover)', 'src query-status (after)', 'dst query-status (after)', 'dst query-migrate (before)', 'src query-kvm', 'src query-name', 'src query-uuid', 'src query-events']) {
      const l = value(ours, name);
      const q = value(qemu, name);
      if (name === 'src query-kvm') assert.deepEqual(l, { return: { enabled: false, present: false } }, 'no KVM in livemig (QEMU here may have it present)');
      else if (name === 'src query-events') assert.deepEqual(l.error.class, q.error.class, 'QEMU 7.2 has no query-events (removed in 4.0): CommandNotFound on both');
      else assert.deepEqual(withoutExtensions(l), q, name);
    }
    for (const hmp of ["src hmp 'info status'", "src hmp 'info migrate_capabilities'", "src hmp 'info no-such-thing'", "src hmp 'no-such-command'", "src hmp 'info status extra'", "dst hmp 'info status'", "src hmp 'info status' (after)", "dst hmp 'info status' (after)"]) {
      assert.equal(value(ours, hmp).return.replace(/zero-blocks: on|return-path: on/g, (s: string) => s.replace('on', 'off')), value(qemu, hmp).return, `${hmp}: the same text (livemig's defaults zero-blocks and return-path on aside)`);
    }
    assert.equal(value(ours, 'src query-migrate (refused)').return.ram, undefined, 'a refused connection: no figures');
    assert.deepEqual(value(ours, 'dst query-migrate (listening)').return['socket-address'], value(qemu, 'dst query-migrate (listening)').return['socket-address'], 'the same socket-address (same path under $DIR)');
    const shutdown = ours.eventMessages.find((m) => m.event === 'SHUTDOWN')!;
    assert.deepEqual(shutdown.data, { guest: false, reason: 'host-qmp-quit' });
  } finally {
    await closePairs(pairs, root);
  }
});

test("a machine with a vCPU and a disk: query-block (a raw image on virtio-blk), query-cpus-fast and query-machines in QEMU 7.2's shapes", { skip: qemuSkipReason(), timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-parity-block-'));
  const image = join(dir, 'd0.raw');
  await writeFile(image, Buffer.alloc(0));
  await truncate(image, 1 << 20);
  const qemu = spawn(QEMU_BINARY, ['-M', 'pc', '-S', '-m', '64M', '-nodefaults', '-display', 'none', '-qmp', `unix:${join(dir, 'q')},server=on,wait=off`,
    '-drive', `if=none,id=d0,file=${image},format=raw`, '-device', 'virtio-blk-pci,drive=d0']);
  const ours = LivemigProcess.start(['--machine', 'test', '--ram', '16M', '--disk', `${join(dir, 'l0.raw')},size=1M,id=d0`, '--qmp', `unix:${join(dir, 'l')}`]);
  try {
    await ours.waitFor('qmp');
    const qemuQmp = await openQmp(join(dir, 'q'));
    const ourQmp = await openQmp(join(dir, 'l'));
    const q = (await qemuQmp.execute('query-block')).return;
    const l = (await ourQmp.execute('query-block')).return;
    const cpus = { qemu: (await qemuQmp.execute('query-cpus-fast')).return, ours: (await ourQmp.execute('query-cpus-fast')).return };
    const machines = { qemu: (await qemuQmp.execute('query-machines')).return, ours: (await ourQmp.execute('query-machines')).return };
    // HMP's info subcommands over the same queries: QEMU's layouts, each side's values.
    const hmp = async (p: RawQmp, line: string): Promise<string> => (await p.execute('human-monitor-command', { 'command-line': line })).return as string;
    const layouts: Record<string, RegExp> = {
      'info cpus': /^\* CPU #0: thread_id=\d+\r\n$/,
      'info version': /^7\.2\.\d+\S.*\r\n$/,
      'info kvm': /^kvm support: (enabled|disabled|not compiled)\r\n$/,
      'info uuid': /^00000000-0000-0000-0000-000000000000\r\n$/,
      'info name': /^$/,
      'info uuid extra': /^uuid: extraneous characters at the end of line\r\nTry "help info uuid" for more information\r\n$/,
    };
    for (const [line, layout] of Object.entries(layouts)) {
      assert.match(await hmp(qemuQmp, line), layout, `QEMU's ${line}`);
      assert.match(await hmp(ourQmp, line), layout, `livemig's ${line}`);
    }
    assert.equal(await hmp(ourQmp, 'info kvm'), 'kvm support: not compiled\r\n', 'no KVM in livemig (query-kvm: not present)');
    // calc-dirty-rate / query-dirty-rate (page sampling): the same refusals word for word, the same shapes and HMP layouts.
    for (const args of [{ 'calc-time': 0 }, { 'calc-time': 61 }, { 'calc-time': 1, 'sample-pages': 127 }, { 'calc-time': 1, 'sample-pages': 16385 }, { 'calc-time': 'x' }, {}, { 'calc-time': 1, mode: 'nope' }]) {
      const qe = await qemuQmp.execute('calc-dirty-rate', args);
      const le = await ourQmp.execute('calc-dirty-rate', args);
      assert.deepEqual(le.error, qe.error, `calc-dirty-rate ${JSON.stringify(args)}`);
    }
    for (const line of ['calc_dirty_rate', 'calc_dirty_rate x', 'calc_dirty_rate -r -b 1', 'calc_dirty_rate 1 5', 'calc_dirty_rate 1 200 3', 'calc_dirty_rate -x 1', 'help calc_dirty_rate']) {
      assert.equal(await hmp(ourQmp, line), await hmp(qemuQmp, line), line);
    }
    const dirtyRate = async (p: RawQmp): Promise<{ unstarted: unknown; measured: Record<string, unknown>; text: string }> => {
      const unstarted = (await p.execute('query-dirty-rate')).return;
      assert.deepEqual((await p.execute('calc-dirty-rate', { 'calc-time': 1, 'sample-pages': 256 })).return, {});
      for (;;) {
        await new Promise((r) => setTimeout(r, 200));
        const measured = (await p.execute('query-dirty-rate')).return;
        if (measured.status === 'measured') return { unstarted, measured, text: await hmp(p, 'info dirty_rate') };
      }
    };
    const [qRate, lRate] = [await dirtyRate(qemuQmp), await dirtyRate(ourQmp)];
    assert.deepEqual(lRate.unstarted, qRate.unstarted, 'before any measurement');
    assert.deepEqual(Object.keys(lRate.measured), Object.keys(qRate.measured), 'measured: the same fields in the same order');
    assert.deepEqual({ ...lRate.measured, 'dirty-rate': 'R', 'start-time': 'T' }, { ...qRate.measured, 'dirty-rate': 'R', 'start-time': 'T' });
    assert.deepEqual(hmpLayout(lRate.text), hmpLayout(qRate.text), 'info dirty_rate');
    const helpOf = async (p: RawQmp): Promise<string[]> => (await hmp(p, 'info')).split('\r\n').filter((l) => l !== '');
    const qemuHelp = await helpOf(qemuQmp);
    for (const line of await helpOf(ourQmp)) assert.ok(qemuHelp.includes(line), `QEMU's 'info' lists ${JSON.stringify(line)} too`);
    qemuQmp.close();
    ourQmp.close();
    assert.equal(cpus.ours.length, 1, "the test machine's one vCPU");
    assert.deepEqual(machines.ours.map((m: { name: string }) => m.name).sort(), ['none', 'test', 'v86']);
    const cpuDiffs: string[] = [];
    shapeDiffs(cpus.ours, cpus.qemu, 'query-cpus-fast', cpuDiffs);
    shapeDiffs(machines.ours, machines.qemu, 'query-machines', cpuDiffs);
    assert.deepEqual(cpuDiffs, [], cpuDiffs.join('\n'));
    assert.equal(l.length, 1);
    assert.equal(l[0].device, 'd0');
    assert.equal(l[0].inserted.image['virtual-size'], 1 << 20);
    const diffs: string[] = [];
    shapeDiffs(l, q, 'query-block', diffs);
    // QEMU's qdev is the device's QOM path; livemig's disks belong to the guest, which has no QOM tree.
    assert.deepEqual(diffs, ['query-block[0].qdev: only QEMU has it'], diffs.join('\n'));
  } finally {
    qemu.kill('SIGKILL');
    await ours.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test("query-migrate in setup, after a refused connection, failed and cancelled: over QMP only what QEMU 7.2 shows then (and livemig's x-livemig-*)", () => {
  const base = { elapsedMs: 12, dirtyPagesRate: 0, mbps: 0, pagesPerSecond: 0, xbzrle: false, throttlePercent: 0, expectedDowntimeMs: 300 };
  const qmp = (s: OutgoingSnapshot): unknown => qmpOutgoingInfo(outgoingInfo(s));
  // QEMU 7.2 right after `migrate`: {"status": "setup"} (fill_source_migration_info has no figures in setup).
  assert.deepEqual(qmp({ ...base, status: 'setup' }), { status: 'setup' });
  // A refused connection: no figures, also for the CLI (nothing was sent).
  const refused = outgoingInfo({ ...base, status: 'failed', error: new MigrationError('transport', 'cannot connect') });
  assert.deepEqual(refused, { status: 'failed', 'error-desc': 'cannot connect', 'x-livemig-error-code': 'transport' });
  // Failed or cancelled later: QMP as QEMU (status, and why); the CLI's outgoingInfo keeps the figures.
  const failed = { ...base, status: 'failed' as const, setupTimeMs: 3, error: new MigrationError('transport', 'connection reset') };
  assert.deepEqual(qmp(failed), { status: 'failed', 'error-desc': 'connection reset', 'x-livemig-error-code': 'transport' });
  assert.equal(outgoingInfo(failed)['total-time'], 12);
  assert.deepEqual(qmp({ ...base, status: 'cancelled', setupTimeMs: 3, error: new MigrationError('cancelled', 'migration cancelled by migrate_cancel on the QMP monitor') }), {
    status: 'cancelled',
    'x-livemig-error-code': 'cancelled',
    // QEMU drops error-desc on a cancel; livemig keeps who cancelled as an extension (livemig migrate shows it).
    'x-livemig-error-desc': 'migration cancelled by migrate_cancel on the QMP monitor',
  });
});

test("socket-address: QEMU's SocketAddress, the listener's family as ipv4 or ipv6", () => {
  assert.deepEqual(socketAddress('tcp:127.0.0.1:4444'), { type: 'inet', host: '127.0.0.1', port: '4444', ipv4: true });
  assert.deepEqual(socketAddress('tcp:[::1]:4444'), { type: 'inet', host: '::1', port: '4444', ipv6: true });
  assert.deepEqual(socketAddress('unix:/run/mig.sock'), { type: 'unix', path: '/run/mig.sock' });
});
