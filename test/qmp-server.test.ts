/**
 * The QMP monitor of `livemig run --qmp`, over a real unix socket, in real
 * child processes: protocol, every command, every refusal, events in order,
 * and a migration driven entirely through QMP.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LivemigProcess } from './helpers/livemig-process.js';
import { RawQmp, type QmpMessage } from './helpers/raw-qmp.js';
import { DEFAULT_CAPABILITIES, QEMU_CAPABILITIES } from '../src/migration/config.js';
import { qemuStrtosz } from '../src/monitor/hmp.js';

async function machine(dir: string, name: string, extra: string[] = []): Promise<{ proc: LivemigProcess; qmp: RawQmp }> {
  const path = join(dir, `${name}.qmp`);
  const proc = LivemigProcess.start(['--machine', 'test', '--ram', '64M', '--qmp', `unix:${path}`, ...extra]);
  await proc.waitFor('qmp');
  const qmp = await RawQmp.open(path);
  await qmp.next((m) => 'QMP' in m);
  return { proc, qmp };
}

const isError = (reply: QmpMessage, errorClass: string, desc: RegExp): boolean =>
  reply.error?.class === errorClass && desc.test(reply.error.desc);

test("HMP sizes as QEMU 7.2's qemu_strtosz reads them (test/qmp-parity checks them against real QEMU)", () => {
  const bytes = (text: string, suffix: 'B' | 'M' = 'B'): bigint | string => {
    const read = qemuStrtosz(text, suffix);
    return 'bytes' in read ? read.bytes : read.error;
  };
  assert.equal(bytes('1.5k'), 1536n);
  assert.equal(bytes('0.001k'), 1n, 'rounded half up');
  assert.equal(bytes('0.0001k'), 0n);
  assert.equal(bytes('1.0'), 1n, 'a zero fraction needs no scale');
  assert.equal(bytes('1.5'), 'EINVAL', 'a fraction needs a scale');
  assert.equal(bytes('1.5', 'M'), 1572864n);
  assert.equal(bytes('+0x10'), 16n);
  assert.deepEqual(qemuStrtosz('0x10k', 'B'), { bytes: 16384n, hexSuffix: true });
  assert.equal(bytes('18446744073709551615'), 18446744073709551615n);
  assert.equal(bytes('18446744073709551616'), 'ERANGE');
  assert.equal(bytes('16E'), 'ERANGE');
  for (const bad of ['', '-1', '.5k', '1e3', '1..5', '1kB', '0x', '0x1.5', '1k5', ' 5']) assert.equal(bytes(bad), 'EINVAL', bad);
});

test('QMP protocol: greeting, negotiation, ids, malformed input, unknown commands, argument errors', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-qmp-'));
  const { proc, qmp } = await machine(dir, 'src');
  try {
    const greeting = qmp.messages[0]!;
    assert.deepEqual(greeting.QMP.version.qemu, { major: 7, minor: 2, micro: 0 });
    assert.match(greeting.QMP.version.package, /livemig/);
    assert.deepEqual(greeting.QMP.capabilities, []);

    assert.ok(isError(await qmp.execute('query-status'), 'CommandNotFound', /Expecting capabilities negotiation/));
    assert.deepEqual((await qmp.execute('qmp_capabilities')).return, {});
    assert.ok(isError(await qmp.execute('qmp_capabilities'), 'CommandNotFound', /already complete/));

    // ids of any JSON type are echoed; two requests in one write, no newline between.
    qmp.send('{"execute":"query-status","id":{"a":[1,2]}}{"execute":"query-version","id":7}');
    assert.deepEqual((await qmp.next((m) => m.id?.a !== undefined)).message.return.status, 'running');
    assert.equal((await qmp.next((m) => m.id === 7)).message.return.package, 'livemig 0.1.0');

    // Malformed input gets an error and the connection stays usable.
    const before = qmp.messages.length;
    qmp.send('this is not json\n');
    assert.ok(isError((await qmp.next((m) => 'error' in m, before)).message, 'GenericError', /JSON parse error/));
    const before2 = qmp.messages.length;
    qmp.send('{"execute": "query-status", "id": 1, }\n');
    assert.ok(isError((await qmp.next((m) => 'error' in m, before2)).message, 'GenericError', /JSON parse error/));
    const before3 = qmp.messages.length;
    qmp.send('[1, 2]\n');
    assert.ok(isError((await qmp.next((m) => 'error' in m, before3)).message, 'GenericError', /must be a JSON object/));
    const before4 = qmp.messages.length;
    qmp.send('{"arguments": {}}\n');
    assert.ok(isError((await qmp.next((m) => 'error' in m, before4)).message, 'GenericError', /lacks member 'execute'/));
    assert.equal((await qmp.execute('query-status')).return.running, true, 'still usable');

    assert.ok(isError(await qmp.execute('no-such-command'), 'CommandNotFound', /The command no-such-command has not been found/));
    assert.ok(isError(await qmp.execute('migrate'), 'GenericError', /Parameter 'uri' is missing/));
    assert.ok(isError(await qmp.execute('migrate', { uri: 5 }), 'GenericError', /Invalid parameter type for 'uri', expected: string/));
    assert.ok(isError(await qmp.execute('migrate', { uri: 'tcp:127.0.0.1:1', bogus: 1 }), 'GenericError', /Parameter 'bogus' is unexpected/));
    assert.ok(isError(await qmp.execute('migrate-set-parameters', { 'downtime-limit': -1 }), 'GenericError', /^Parameter 'downtime_limit' expects an integer in the range of 0 to \(2000 \* 1000\) ms$/));
    assert.ok(isError(await qmp.execute('migrate-set-parameters', { 'no-such': 1 }), 'GenericError', /'no-such' is unexpected/));
    assert.ok(isError(await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'nope', state: true }] }), 'GenericError', /does not accept value 'nope'/));
    assert.ok(isError(await qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' }), 'GenericError', /'-incoming' was not specified/));
    assert.ok(isError(await qmp.execute('migrate-continue', { state: 'pre-switchover' }), 'GenericError', /not in expected state/));
    // SIGTERM: SHUTDOWN (host-signal) reaches the client before the monitor closes, as QEMU 7.2's.
    await proc.stop();
    assert.deepEqual(qmp.events('SHUTDOWN').map((e) => e.data), [{ guest: false, reason: 'host-signal' }]);
  } finally {
    qmp.close();
    await proc.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('QMP commands: status, stop/cont with events, capabilities, parameters, version, commands, quit', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-qmp-'));
  const { proc, qmp } = await machine(dir, 'src');
  try {
    await qmp.execute('qmp_capabilities');
    assert.deepEqual((await qmp.execute('query-status')).return, { status: 'running', singlestep: false, running: true });
    assert.deepEqual((await qmp.execute('stop')).return, {});
    assert.deepEqual((await qmp.execute('query-status')).return, { status: 'paused', singlestep: false, running: false });
    const stop = (await qmp.next((m) => m.event === 'STOP')).message;
    assert.ok(Number.isInteger(stop.timestamp.seconds) && Number.isInteger(stop.timestamp.microseconds));
    await qmp.execute('cont');
    await qmp.next((m) => m.event === 'RESUME');
    assert.equal((await qmp.execute('query-status')).return.status, 'running');

    assert.deepEqual((await qmp.execute('query-migrate')).return, {});
    const caps = (await qmp.execute('query-migrate-capabilities')).return as Array<{ capability: string; state: boolean }>;
    assert.deepEqual(caps.map((c) => c.capability), QEMU_CAPABILITIES, "all of QEMU 7.2's capabilities, in its order");
    assert.deepEqual(caps.filter((c) => !Object.hasOwn(DEFAULT_CAPABILITIES, c.capability)).map((c) => c.state), Array(10).fill(false), 'the unimplemented ones off');
    assert.deepEqual((await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-colo', state: false }] })).return, {}, 'an unimplemented capability set to its default');
    const colo = await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-colo', state: true }] });
    assert.ok(isError(colo, 'GenericError', /livemig does not implement the capability 'x-colo'; only its default \(off\) is accepted/), JSON.stringify(colo));
    assert.ok(isError(await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'no-such', state: false }] }), 'GenericError', /does not accept value 'no-such'/));
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }, { capability: 'xbzrle', state: true }] });
    const caps2 = (await qmp.execute('query-migrate-capabilities')).return as Array<{ capability: string; state: boolean }>;
    assert.equal(caps2.find((c) => c.capability === 'events')!.state, true);
    await qmp.execute('migrate-set-parameters', { 'downtime-limit': 123, 'max-bandwidth': 1000000 });
    const params = (await qmp.execute('query-migrate-parameters')).return;
    assert.equal(params['downtime-limit'], 123);
    assert.equal(params['max-bandwidth'], 1000000);
    assert.equal(params['xbzrle-cache-size'], 64 << 20);

    assert.deepEqual((await qmp.execute('query-version')).return.qemu, { major: 7, minor: 2, micro: 0 });
    const names = ((await qmp.execute('query-commands')).return as Array<{ name: string }>).map((c) => c.name);
    for (const n of ['qmp_capabilities', 'migrate', 'migrate-incoming', 'query-migrate', 'migrate-set-capabilities', 'query-migrate-capabilities',
      'migrate-set-parameters', 'query-migrate-parameters', 'migrate_cancel', 'migrate-continue', 'query-status', 'stop', 'cont', 'quit', 'query-version', 'query-commands']) {
      assert.ok(names.includes(n), n);
    }
    assert.deepEqual((await qmp.execute('migrate_cancel')).return, {}, 'cancel with nothing running is a no-op');
    // What qmp-shell -H sends when it starts (cpu-index 0), and how it reads the answers: words of each line.
    const hmp = async (line: string): Promise<string> => (await qmp.execute('human-monitor-command', { 'command-line': line, 'cpu-index': 0 })).return;
    assert.deepEqual(
      (await hmp('help')).split('\r\n').filter((l) => /^\S/.test(l)).map((l) => l.split(/\s+/)[0]),
      ['calc_dirty_rate', 'cont|c', 'help|?', 'info', 'migrate', 'migrate_cancel', 'migrate_continue', 'migrate_incoming', 'migrate_set_capability', 'migrate_set_parameter', 'stop|s'],
    );
    assert.deepEqual((await hmp('info')).split('\r\n').filter(Boolean).map((l) => l.split(/\s+/)[1]), ['cpus', 'dirty_rate', 'kvm', 'migrate', 'migrate_capabilities', 'migrate_parameters', 'name', 'status', 'uuid', 'version'], 'by name, as QEMU lists them');
    assert.equal(await hmp('info status'), 'VM status: running\r\n');
    assert.match(await hmp('info migrate_parameters'), /^announce-initial: 50 ms\r\n(.*\r\n)*downtime-limit: 123 ms\r\n/);
    assert.ok(isError(await qmp.execute('human-monitor-command', { 'command-line': 'info status', 'cpu-index': 1 }), 'GenericError', /'cpu-index' expects a CPU number/));
    // HMP's setters parse as QEMU 7.2's do (sizes with suffixes, max-bandwidth in MiB/s), then run as the QMP commands.
    assert.equal(await hmp('migrate_set_parameter downtime-limit 1k'), '');
    assert.equal(await hmp('migrate_set_parameter max-bandwidth 2'), '');
    assert.equal(await hmp('migrate_set_parameter multifd-channels 0x4'), '');
    assert.equal(await hmp('migrate_set_capability xbzrle on'), '');
    const viaHmp = (await qmp.execute('query-migrate-parameters')).return;
    assert.deepEqual([viaHmp['downtime-limit'], viaHmp['max-bandwidth'], viaHmp['multifd-channels']], [1024, 2 << 20, 4]);
    assert.ok(((await qmp.execute('query-migrate-capabilities')).return as Array<{ capability: string; state: boolean }>).some((c) => c.capability === 'xbzrle' && c.state));
    assert.equal(await hmp('migrate_set_parameter downtime-limit abc'), "Error: Parameter 'downtime-limit' expects a non-negative number below 2^64\r\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\r\nand exabytes, respectively.\r\n");
    assert.equal(await hmp('migrate_set_parameter multifd-channels 0'), "Error: Parameter 'multifd_channels' expects a value between 1 and 255\r\n", 'the QMP check refuses it, in its words');
    assert.equal(await hmp('migrate_set_capability xbzrle'), `Expected 'on' or 'off'\r\nTry "help migrate_set_capability" for more information\r\n`);
    assert.equal(await hmp('migrate_set_parameter no-such 1'), 'Error: invalid parameter value: no-such\r\n');
    assert.equal(await hmp('migrate -x tcp:127.0.0.1:1'), 'migrate: unsupported option -x\r\nTry "help migrate" for more information\r\n');
    assert.equal(await hmp('migrate_set_parameter no\x1b[2Jsuch 1'), 'Error: invalid parameter value: no\\x1b[2Jsuch\r\n', "an operator's terminal gets the escape sequence inert");
    // A string a QMP client set is shown inert by info migrate_parameters.
    assert.deepEqual((await qmp.execute('migrate-set-parameters', { 'tls-hostname': 'h\x1b[2Jost' })).return, {});
    assert.match(await hmp('info migrate_parameters'), /\r\ntls-hostname: 'h\\x1b\[2Jost'\r\n/);
    assert.deepEqual((await qmp.execute('migrate-set-parameters', { 'tls-hostname': '' })).return, {});
    assert.equal(await hmp('s'), '');
    assert.equal(await hmp('info status'), 'VM status: paused\r\n');
    assert.equal(await hmp('c'), '');
    assert.equal(await hmp('info status'), 'VM status: running\r\n');
    assert.equal(await hmp('migrate_set_parameter downtime-limit 123'), '');
    assert.deepEqual((await qmp.execute('quit')).return, {});
    await proc.exited;
    assert.equal(proc.exitCode, 0);
    assert.deepEqual(qmp.events('SHUTDOWN').map((e) => e.data), [{ guest: false, reason: 'host-qmp-quit' }], 'SHUTDOWN after the reply, as QEMU 7.2');
  } finally {
    qmp.close();
    await proc.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a migration driven entirely through QMP: not converging, passes watched, limits raised live, completed; refusals and flood meanwhile', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-qmp-'));
  const src = await machine(dir, 'src');
  const dst = await machine(dir, 'dst', ['--incoming', 'defer']);
  try {
    await src.qmp.execute('qmp_capabilities');
    await dst.qmp.execute('qmp_capabilities');
    assert.equal((await dst.qmp.execute('query-status')).return.status, 'inmigrate');
    assert.ok(isError(await dst.qmp.execute('migrate', { uri: 'tcp:127.0.0.1:1' }), 'GenericError', /waiting for an incoming migration/));
    await dst.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    const migUri = `unix:${join(dir, 'mig.sock')}`;
    // One that cannot listen is refused, and a retry may follow (as QEMU 7.2).
    assert.ok(isError(await dst.qmp.execute('migrate-incoming', { uri: `unix:${join(dir, 'no-such-dir', 'mig.sock')}` }), 'GenericError', /no-such-dir/));
    assert.deepEqual((await dst.qmp.execute('migrate-incoming', { uri: migUri })).return, {});
    assert.ok(isError(await dst.qmp.execute('migrate-incoming', { uri: migUri }), 'GenericError', /already been started/));
    assert.deepEqual((await dst.qmp.execute('query-migrate')).return['socket-address'], [{ type: 'unix', path: join(dir, 'mig.sock') }]);

    await src.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 20 << 20, 'downtime-limit': 50 });
    // A second client that disconnects mid-migration, and a flood of requests from a third.
    const bystander = await RawQmp.open(join(dir, 'src.qmp'));
    await bystander.execute('qmp_capabilities');
    assert.deepEqual((await src.qmp.execute('migrate', { uri: migUri })).return, {});
    await src.qmp.next((m) => m.event === 'MIGRATION_PASS' && m.data.pass >= 4);
    assert.equal((await src.qmp.execute('query-migrate')).return.status, 'active', 'cannot converge at 20 MiB/s');
    assert.ok(isError(await src.qmp.execute('migrate', { uri: migUri }), 'GenericError', /migration process in progress/));
    assert.ok(isError(await src.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: true }] }), 'GenericError', /in progress/));
    bystander.close();
    const flood = await RawQmp.open(join(dir, 'src.qmp'));
    await flood.next((m) => 'QMP' in m);
    flood.send('{"execute":"qmp_capabilities"}\n' + '{"execute":"query-migrate"}\n'.repeat(2000));

    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 0, 'downtime-limit': 20_000 });
    await src.qmp.next((m) => m.event === 'MIGRATION' && ['completed', 'failed'].includes(m.data.status));
    const info = (await src.qmp.execute('query-migrate')).return;
    assert.equal(info.status, 'completed', info['error-desc']);
    for (const key of ['setup-time', 'total-time', 'downtime']) assert.equal(typeof info[key], 'number', key);
    for (const key of ['transferred', 'remaining', 'total', 'duplicate', 'normal', 'normal-bytes', 'dirty-pages-rate', 'mbps', 'dirty-sync-count', 'pages-per-second', 'precopy-bytes', 'downtime-bytes']) {
      assert.equal(typeof info.ram[key], 'number', `ram.${key}`);
    }
    assert.equal((await src.qmp.execute('query-status')).return.status, 'postmigrate');

    // Events in order on the source.
    const seq = src.qmp.events().filter((e) => e.event !== 'RESUME').map((e) => (e.event === 'MIGRATION' ? e.data.status : e.event === 'MIGRATION_PASS' ? 'pass' : e.event));
    const compact = seq.filter((s, i) => !(s === 'pass' && seq[i - 1] === 'pass'));
    assert.deepEqual(compact, ['setup', 'pass', 'active', 'pass', 'STOP', 'pass', 'completed'], 'as QEMU 7.2: no device status without pause-before-switchover');
    const passes = src.qmp.events('MIGRATION_PASS').map((e) => e.data.pass);
    assert.deepEqual(passes, passes.map((_, i) => i + 1), 'passes counted 1, 2, 3, ...');

    // Destination: setup, active, RESUME, completed; guest running.
    await dst.qmp.next((m) => m.event === 'MIGRATION' && m.data.status === 'completed');
    const dseq = dst.qmp.events().map((e) => (e.event === 'MIGRATION' ? e.data.status : e.event));
    assert.deepEqual(dseq, ['setup', 'active', 'RESUME', 'completed']);
    assert.equal((await dst.qmp.execute('query-status')).return.status, 'running');

    // The flood was answered in full, and did not keep the migration from completing.
    await flood.next((m, ) => flood.messages.filter((x) => x.return?.status !== undefined || x.return?.ram !== undefined).length >= 2000, 0, 60_000);
    flood.close();
  } finally {
    src.qmp.close();
    dst.qmp.close();
    await src.proc.stop();
    await dst.proc.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
