/**
 * Migration parameters and capabilities (src/migration/config.ts): the text
 * forms of --param/--cap in both scopes, QEMU's checks, MigrationConfig, and
 * `livemig run` reading its --param/--cap through them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import {
  applyCapabilities,
  applyParameters,
  ConfigError,
  DEFAULT_CAPABILITIES,
  DEFAULT_PARAMETERS,
  MigrationConfig,
  PARAMETER_TABLE,
  parameterSpec,
  parseCapabilityArgs,
  parseCapabilityText,
  parseParameterArgs,
  parseParameterText,
  type ConfigErrorCode,
  type ConfigScope,
} from '../src/migration/config.js';
import { cliPath } from './helpers/paths.js';

const SCOPES: ConfigScope[] = ['livemig', 'qmp'];

/** Asserts fn throws a ConfigError with `code` whose message contains every one of `mentions`. */
function throwsConfig(fn: () => unknown, code: ConfigErrorCode, ...mentions: string[]): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `a ConfigError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    for (const text of mentions) assert.ok(err.message.includes(text), `'${err.message}' mentions '${text}'`);
    return true;
  });
}

test('every type from its text, the same in both scopes', () => {
  const cases: Array<[name: string, text: string, value: unknown]> = [
    ['downtime-limit', '300', 300], // integer
    ['max-bandwidth', '100M', 100 * 2 ** 20], // size
    ['cpu-throttle-tailslow', 'on', true], // boolean
    ['multifd-compression', 'zstd', 'zstd'], // string
    ['x-livemig-peer-timeout-ms', '2500', 2500],
  ];
  for (const [name, text, value] of cases) {
    for (const scope of SCOPES) assert.deepEqual(parseParameterText(name, text, scope), value, `${scope}: ${name}=${text}`);
  }
  // JSON and the QEMU parameters livemig lacks: typed from the table in scope 'qmp'.
  assert.deepEqual(parseParameterText('block-bitmap-mapping', '[{"node-name":"a","alias":"b","bitmaps":[]}]', 'qmp'), [{ 'node-name': 'a', alias: 'b', bitmaps: [] }]);
  assert.equal(parseParameterText('compress-wait-thread', 'no', 'qmp'), false);
  assert.equal(parseParameterText('tls-creds', '123', 'qmp'), '123', 'a string parameter stays a string even if it looks like a number');
  assert.equal(parseParameterText('tls-creds', '', 'qmp'), '', 'empty: TLS off');
  assert.equal(parseParameterText('max-postcopy-bandwidth', '1G', 'qmp'), 2 ** 30);
});

test('every implemented parameter: its default, written as text, reads back the same in both scopes', () => {
  for (const [name, value] of Object.entries(DEFAULT_PARAMETERS)) {
    const text = typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value);
    for (const scope of SCOPES) assert.deepEqual(parseParameterText(name, text, scope), value, `${scope}: ${name}=${text}`);
    assert.ok(parameterSpec(name)?.implemented, `${name} is implemented in the table`);
  }
  const implemented = Object.entries(PARAMETER_TABLE).filter(([, spec]) => 'implemented' in spec).map(([name]) => name);
  assert.deepEqual(implemented.sort(), Object.keys(DEFAULT_PARAMETERS).sort());
});

test('size suffixes: K, M, G, T (binary), KiB/MB spellings, any case, or plain bytes', () => {
  const cases: Array<[string, number]> = [
    ['0', 0], ['4096', 4096], ['512k', 512 * 1024], ['512K', 512 * 1024], ['128M', 128 * 2 ** 20], ['128MiB', 128 * 2 ** 20],
    ['128mb', 128 * 2 ** 20], ['1G', 2 ** 30], ['2T', 2 * 2 ** 40],
  ];
  for (const [text, bytes] of cases) assert.equal(parseParameterText('max-bandwidth', text), bytes, text);
  assert.equal(parseParameterText('xbzrle-cache-size', '256M'), 256 * 2 ** 20);
  // Integers that are not sizes take no suffix.
  throwsConfig(() => parseParameterText('downtime-limit', '3k'), 'bad-text', "--param downtime-limit: '3k' is not an integer");
});

test('bad values: a ConfigError naming the argument and what was wrong', () => {
  for (const scope of SCOPES) {
    throwsConfig(() => parseParameterText('downtime-limit', 'soon', scope), 'bad-text', "--param downtime-limit: 'soon' is not an integer");
    throwsConfig(() => parseParameterText('downtime-limit', '1.5', scope), 'bad-text', "--param downtime-limit: '1.5'");
    throwsConfig(() => parseParameterText('downtime-limit', '', scope), 'bad-text', "--param downtime-limit: ''");
    throwsConfig(() => parseParameterText('downtime-limit', '99999999999999999999', scope), 'bad-text', 'not an integer');
    throwsConfig(() => parseParameterText('max-bandwidth', '12X', scope), 'bad-text', "--param max-bandwidth: '12X' is not a size");
    throwsConfig(() => parseParameterText('max-bandwidth', '-1M', scope), 'bad-text', "--param max-bandwidth: '-1M'");
    throwsConfig(() => parseParameterText('max-bandwidth', '99999999T', scope), 'bad-text', 'too large');
    throwsConfig(() => parseParameterText('cpu-throttle-tailslow', 'maybe', scope), 'bad-text', "--param cpu-throttle-tailslow: 'maybe' is not on/off");
    throwsConfig(() => parseParameterText('bad name', '1', scope), 'syntax', "--param 'bad name=1'", "'bad name' is not a parameter name");
  }
  throwsConfig(() => parseParameterText('block-bitmap-mapping', '[oops', 'qmp'), 'bad-text', "--param block-bitmap-mapping: '[oops' is not JSON");
  // Scope 'livemig' also refuses values livemig would refuse, with QEMU's message after the argument.
  throwsConfig(() => parseParameterText('downtime-limit', '-1'), 'invalid-value', '--param downtime-limit: ', 'range of 0 to 2000000 milliseconds', "(got '-1')");
  throwsConfig(() => parseParameterText('multifd-channels', '0'), 'invalid-value', '--param multifd-channels: ', 'range of 1 to 255');
  throwsConfig(() => parseParameterText('multifd-zstd-level', '21'), 'invalid-value', 'range of 0 to 20');
  throwsConfig(() => parseParameterText('multifd-zlib-level', '10'), 'invalid-value', 'range of 0 to 9');
  throwsConfig(() => parseParameterText('multifd-compression', 'lz4'), 'invalid-value', '--param multifd-compression: ', "does not accept value 'lz4'");
  throwsConfig(() => parseParameterText('xbzrle-cache-size', '3M'), 'invalid-value', '--param xbzrle-cache-size: ', 'power of two');
  // Scope 'qmp' leaves ranges to the monitor (QEMU's differ from livemig's for some).
  assert.equal(parseParameterText('downtime-limit', '-1', 'qmp'), -1);
  assert.equal(parseParameterText('multifd-compression', 'lz4', 'qmp'), 'lz4');
  // Argument lists.
  for (const scope of SCOPES) throwsConfig(() => parseParameterArgs(['downtime-limit'], scope), 'syntax', "--param 'downtime-limit': expected NAME=VALUE");
});

test('unknown names: an error for livemig, typed by guessing for a QMP monitor', () => {
  throwsConfig(() => parseParameterText('no-such-param', '1'), 'unknown-parameter', "--param no-such-param: there is no migration parameter 'no-such-param'", 'downtime-limit');
  throwsConfig(() => parseParameterText('compress-level', '1', 'livemig'), 'not-implemented', "--param compress-level: livemig does not implement QEMU's parameter 'compress-level'");
  throwsConfig(() => parseParameterText('constructor', '1'), 'unknown-parameter', 'constructor');
  assert.deepEqual(parseParameterArgs(['x-future-int=7', 'x-future-flag=off', 'x-future-json={"a":1}', 'x-future-text=abc', 'compress-level=3'], 'qmp'), {
    'x-future-int': 7, 'x-future-flag': false, 'x-future-json': { a: 1 }, 'x-future-text': 'abc', 'compress-level': 3,
  });
  // A newer QEMU's size parameter takes suffixes too.
  assert.equal(parseParameterText('avail-switchover-bandwidth', '10M', 'qmp'), 10 * 2 ** 20);
});

test('the run side (scope livemig) takes multifd-compression=zstd and any parameter type', () => {
  assert.deepEqual(parseParameterArgs(['multifd-compression=zstd', 'max-bandwidth=1G', 'cpu-throttle-tailslow=yes', 'downtime-limit=300'], 'livemig'), {
    'multifd-compression': 'zstd', 'max-bandwidth': 2 ** 30, 'cpu-throttle-tailslow': true, 'downtime-limit': 300,
  });
  const config = MigrationConfig.fromArgs(['multifd-compression=zstd', 'multifd-channels=4'], ['multifd']);
  assert.equal(config.parameters['multifd-compression'], 'zstd');
  assert.equal(config.parameters['multifd-channels'], 4);
  assert.equal(config.capabilities.multifd, true);
  throwsConfig(() => MigrationConfig.fromArgs(['cpu-throttle-initial=60', 'max-cpu-throttle=50'], []), 'conflict', '--param', "'cpu-throttle-initial' must not exceed 'max-cpu-throttle'");
});

test('capabilities: NAME alone is on; on/off, true/false, yes/no, 1/0 in any case', () => {
  const spellings: Array<[string, boolean]> = [
    ['xbzrle', true], ['xbzrle=on', true], ['xbzrle=off', false], ['xbzrle=true', true], ['xbzrle=false', false],
    ['xbzrle=yes', true], ['xbzrle=no', false], ['xbzrle=ON', true], ['xbzrle=Off', false], ['xbzrle=1', true], ['xbzrle=0', false],
  ];
  for (const scope of SCOPES) {
    for (const [text, state] of spellings) assert.deepEqual(parseCapabilityText(text, scope), { capability: 'xbzrle', state }, `${scope}: ${text}`);
    throwsConfig(() => parseCapabilityText('xbzrle=maybe', scope), 'bad-text', "--cap 'xbzrle=maybe': the value must be on or off");
    throwsConfig(() => parseCapabilityText('=on', scope), 'syntax', "--cap '=on': expected NAME");
    throwsConfig(() => parseCapabilityText('', scope), 'syntax', 'expected NAME');
  }
  throwsConfig(() => parseCapabilityText('no-such-capability'), 'unknown-capability', "--cap 'no-such-capability': there is no migration capability", 'multifd');
  throwsConfig(() => parseCapabilityText('postcopy-ram'), 'not-implemented', "--cap 'postcopy-ram': livemig does not implement QEMU's capability");
  // A QMP monitor decides about names livemig does not know.
  assert.deepEqual(parseCapabilityArgs(['postcopy-ram', 'x-future=off'], 'qmp'), [
    { capability: 'postcopy-ram', state: true },
    { capability: 'x-future', state: false },
  ]);
});

test("applyParameters / applyCapabilities: QEMU's messages, all or nothing", () => {
  const current = { ...DEFAULT_PARAMETERS };
  throwsConfig(() => applyParameters(current, { 'downtime-limit': 2_000_001 }), 'invalid-value', "Parameter 'downtime-limit' expects an integer in the range of 0 to 2000000 milliseconds");
  throwsConfig(() => applyParameters(current, { 'max-bandwidth': '100M' }), 'invalid-value', "Parameter 'max-bandwidth' expects an integer", 'bytes/second');
  throwsConfig(() => applyParameters(current, { 'cpu-throttle-tailslow': 1 }), 'invalid-value', "Parameter 'cpu-throttle-tailslow' expects a boolean");
  throwsConfig(() => applyParameters(current, { 'multifd-compression': 'lz4' }), 'invalid-value', "Parameter 'multifd-compression' does not accept value 'lz4'");
  throwsConfig(() => applyParameters(current, { 'no-such': 1 }), 'unknown-parameter', "Parameter 'no-such' is unexpected");
  throwsConfig(() => applyParameters(current, { 'cpu-throttle-initial': 90, 'max-cpu-throttle': 80 }), 'conflict', 'must not exceed');
  throwsConfig(() => applyParameters(current, { 'downtime-limit': 100, 'multifd-channels': 0 }), 'invalid-value', 'multifd-channels');
  assert.deepEqual(current, DEFAULT_PARAMETERS, 'nothing merged, the input untouched');
  assert.equal(applyParameters(current, { 'downtime-limit': 100 })['downtime-limit'], 100);
  throwsConfig(() => applyCapabilities(DEFAULT_CAPABILITIES, { nope: true }), 'unknown-capability', "Capability 'nope' is not supported");
  throwsConfig(() => applyCapabilities(DEFAULT_CAPABILITIES, { xbzrle: 'on' }), 'invalid-value', "Capability 'xbzrle' expects a boolean");
});

test('x-livemig-peer-timeout-ms: 10 s by default, 100 ms to 1 h', () => {
  assert.equal(DEFAULT_PARAMETERS['x-livemig-peer-timeout-ms'], 10_000);
  assert.equal(new MigrationConfig().parameters['x-livemig-peer-timeout-ms'], 10_000);
  for (const ok of [100, 3_600_000]) assert.equal(applyParameters(DEFAULT_PARAMETERS, { 'x-livemig-peer-timeout-ms': ok })['x-livemig-peer-timeout-ms'], ok);
  for (const bad of [99, 3_600_001, 0, 1.5]) {
    throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'x-livemig-peer-timeout-ms': bad }), 'invalid-value', 'range of 100 to 3600000 milliseconds');
  }
  throwsConfig(() => parseParameterText('x-livemig-peer-timeout-ms', '50'), 'invalid-value', '--param x-livemig-peer-timeout-ms: ', "(got '50')");
});

test('MigrationConfig: checked merges, frozen snapshots, change events', () => {
  const config = new MigrationConfig({ capabilities: { multifd: true } });
  assert.deepEqual(config.parameters, DEFAULT_PARAMETERS);
  assert.equal(config.capabilities.multifd, true);
  const seen: string[][] = [];
  config.on('parameters', (_, names) => seen.push(names));
  const atStart = config.snapshot();
  assert.ok(Object.isFrozen(atStart) && Object.isFrozen(atStart.parameters) && Object.isFrozen(atStart.capabilities));

  const merged = config.setParameters({ 'max-bandwidth': 2 ** 20 });
  assert.equal(merged['max-bandwidth'], 2 ** 20);
  assert.equal(config.parameters['max-bandwidth'], 2 ** 20);
  assert.equal(config.parameters['downtime-limit'], 300, 'the rest kept');
  assert.deepEqual(seen, [['max-bandwidth']]);
  assert.equal(atStart.parameters['max-bandwidth'], 0, 'a snapshot does not follow later changes');

  throwsConfig(() => config.setParameters({ 'downtime-limit': 1, 'multifd-channels': 999 }), 'invalid-value', 'multifd-channels');
  assert.equal(config.parameters['downtime-limit'], 300, 'a refused update changes nothing');
  assert.equal(seen.length, 1, 'and tells nobody');

  assert.equal(config.setCapabilities({ xbzrle: true }).xbzrle, true);
  assert.equal(atStart.capabilities.xbzrle, false);
  assert.throws(() => {
    (config.parameters as { 'downtime-limit': number })['downtime-limit'] = 5;
  }, TypeError, 'the current parameters are read-only');
  throwsConfig(() => new MigrationConfig({ parameters: { 'downtime-limit': -1 } }), 'invalid-value', 'downtime-limit');
});

/** `livemig run` with `args`; resolves with its exit code and stderr. */
async function runCli(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [cliPath, 'run', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stderr };
}

test('livemig run: a destination takes --param multifd-compression=zstd; a bad --param exits 2 naming it', { timeout: 60_000 }, async () => {
  const good = await runCli(['--machine', 'test', '--ram', '16M', '--incoming', 'defer', '--exit-after-ms', '200', '--cap', 'multifd', '--param', 'multifd-compression=zstd', '--param', 'max-bandwidth=100M']);
  assert.equal(good.code, 0, good.stderr);
  const bad = await runCli(['--machine', 'test', '--ram', '16M', '--incoming', 'defer', '--exit-after-ms', '200', '--param', 'downtime-limit=soon']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--param downtime-limit: 'soon' is not an integer/);
  const unknown = await runCli(['--machine', 'test', '--ram', '16M', '--exit-after-ms', '200', '--cap', 'no-such-cap']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /--cap 'no-such-cap': there is no migration capability/);
});
