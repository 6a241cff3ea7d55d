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
  allCapabilities,
  QEMU_CAPABILITIES,
  applyParameters,
  ConfigError,
  DEFAULT_CAPABILITIES,
  DEFAULT_PARAMETERS,
  IMPLEMENTED_PARAMETERS,
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

test('every listed parameter: its default, written as text, reads back the same in both scopes', () => {
  for (const [name, value] of Object.entries(DEFAULT_PARAMETERS)) {
    const text = typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value);
    for (const scope of SCOPES) assert.deepEqual(parseParameterText(name, text, scope), value, `${scope}: ${name}=${text}`);
    const spec = parameterSpec(name)!;
    assert.ok(spec.implemented || spec.onlyDefault, `${name} is implemented or taken at its default`);
  }
  // Listed: every accepted name but block-bitmap-mapping (QEMU lists it only once set).
  const accepted = Object.entries(PARAMETER_TABLE).filter(([, spec]) => 'implemented' in spec || 'onlyDefault' in spec).map(([name]) => name);
  assert.deepEqual(accepted.filter((n) => n !== 'block-bitmap-mapping').sort(), Object.keys(DEFAULT_PARAMETERS).sort());
  assert.deepEqual(IMPLEMENTED_PARAMETERS, Object.entries(PARAMETER_TABLE).filter(([, spec]) => 'implemented' in spec).map(([name]) => name));
});

/** QEMU 7.2's query-migrate-parameters on `-M none` (7.2.22), as a management tool would set them all back. */
const QEMU_72_DEFAULTS: Record<string, unknown> = {
  'announce-initial': 50, 'announce-max': 550, 'announce-rounds': 5, 'announce-step': 100,
  'compress-level': 1, 'compress-threads': 8, 'compress-wait-thread': true, 'decompress-threads': 2,
  'throttle-trigger-threshold': 50, 'cpu-throttle-initial': 20, 'cpu-throttle-increment': 10, 'cpu-throttle-tailslow': false,
  'tls-creds': '', 'tls-hostname': '', 'tls-authz': '', 'max-bandwidth': 134217728, 'downtime-limit': 300,
  'x-checkpoint-delay': 20000, 'block-incremental': false, 'multifd-channels': 2, 'xbzrle-cache-size': 67108864,
  'max-postcopy-bandwidth': 0, 'max-cpu-throttle': 99, 'multifd-compression': 'none', 'multifd-zlib-level': 1, 'multifd-zstd-level': 1,
};

test("QEMU 7.2's parameters: all accepted at their defaults, the unimplemented refused at any other value", () => {
  const all = applyParameters(DEFAULT_PARAMETERS, QEMU_72_DEFAULTS);
  // livemig's own parameters are beside QEMU's, at their defaults.
  assert.deepEqual({ ...all, 'x-livemig-peer-timeout-ms': undefined, 'x-livemig-postcopy-auto': undefined }, { ...QEMU_72_DEFAULTS, 'x-livemig-peer-timeout-ms': undefined, 'x-livemig-postcopy-auto': undefined });
  for (const [name, value] of Object.entries(DEFAULT_PARAMETERS)) {
    if (name === 'max-bandwidth' || name.startsWith('x-livemig-')) continue;
    assert.deepEqual(value, QEMU_72_DEFAULTS[name], `livemig's default of ${name} is QEMU 7.2's`);
  }
  const refused: Array<[string, unknown, string]> = [
    ['compress-level', 9, '1'], ['compress-threads', 1, '8'], ['decompress-threads', 4, '2'], ['compress-wait-thread', false, 'true'],
    ['announce-initial', 100, '50'], ['announce-max', 1, '550'], ['announce-rounds', 0, '5'], ['announce-step', 10, '100'],
    ['x-checkpoint-delay', 100, '20000'], ['block-incremental', true, 'false'],
  ];
  for (const [name, value, only] of refused) {
    throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { [name]: value }), 'not-implemented', `livemig does not implement '${name}'; only its default ${only} is accepted`);
  }
  // A value QEMU 7.2 refuses gets QEMU's refusal first (its visitor's words, then its checks').
  throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'compress-level': 'high' }), 'invalid-value', "Parameter 'compress-level' expects uint64");
  throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'compress-level': 256 }), 'invalid-value', "Parameter 'compress-level' expects uint8_t");
  throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'compress-level': 10 }), 'invalid-value', "Parameter 'compress_level' expects a value between 0 and 9");
  throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'announce-step': 0 }), 'invalid-value', "Parameter 'announce_step' expects a value between 0 and 10000");
  throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'x-checkpoint-delay': 2 ** 32 }), 'invalid-value', "Parameter 'x-checkpoint-delay' expects uint32_t");
  throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'block-incremental': 0 }), 'invalid-value', "Invalid parameter type for 'block-incremental', expected: boolean");
  // block-bitmap-mapping: listed once set, as QEMU; only the empty mapping (livemig migrates no bitmaps).
  assert.equal('block-bitmap-mapping' in DEFAULT_PARAMETERS, false);
  assert.deepEqual(applyParameters(DEFAULT_PARAMETERS, { 'block-bitmap-mapping': [] })['block-bitmap-mapping'], []);
  throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'block-bitmap-mapping': [{ 'node-name': 'a', alias: 'b', bitmaps: [] }] }), 'not-implemented', "only its default [] is accepted");
  throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'block-bitmap-mapping': {} }), 'invalid-value', "Invalid parameter type for 'block-bitmap-mapping', expected: array");
  // A malformed mapping gets QEMU's answer (its visitor, then its alias map check) before livemig's own refusal.
  const mapping = (value: unknown): (() => unknown) => () => applyParameters(DEFAULT_PARAMETERS, { 'block-bitmap-mapping': value });
  throwsConfig(mapping([{ 'node-name': 'a' }]), 'invalid-value', "Parameter 'block-bitmap-mapping[0].alias' is missing");
  throwsConfig(mapping([{ 'node-name': 'a', alias: 'b', bitmaps: [{ name: 'n', alias: 'm', transform: { persistent: 1 } }] }]), 'invalid-value', "Invalid parameter type for 'block-bitmap-mapping[0].bitmaps[0].transform.persistent', expected: boolean");
  throwsConfig(mapping([{ 'node-name': 'a', alias: 'b', bitmaps: [], x: 1 }]), 'invalid-value', "Parameter 'block-bitmap-mapping[0].x' is unexpected");
  throwsConfig(mapping([{ 'node-name': 'a', alias: 'b', bitmaps: [] }, { 'node-name': 'c', alias: 'b', bitmaps: [] }]), 'invalid-value', "Invalid mapping given for block-bitmap-mapping: The node alias 'b' is used twice");
  throwsConfig(mapping([{ 'node-name': 'a', alias: 'b\u001b[2J', bitmaps: [] }]), 'invalid-value', "The node alias 'b\\x1b[2J' is not well-formed");
  // Newer QEMUs' parameters are unknown to a 7.2 monitor, as to QEMU 7.2.
  throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'vcpu-dirty-limit': 1 }), 'unknown-parameter', "Parameter 'vcpu-dirty-limit' is unexpected");
});

test('tls-creds, tls-hostname, tls-authz: strings, empty by default; null is empty (StrOrNull)', () => {
  const set = applyParameters(DEFAULT_PARAMETERS, { 'tls-creds': 'tls0', 'tls-hostname': 'dest.example', 'tls-authz': 'authz0' });
  assert.deepEqual([set['tls-creds'], set['tls-hostname'], set['tls-authz']], ['tls0', 'dest.example', 'authz0']);
  const cleared = applyParameters(set, { 'tls-creds': null, 'tls-hostname': null, 'tls-authz': null });
  assert.deepEqual([cleared['tls-creds'], cleared['tls-hostname'], cleared['tls-authz']], ['', '', '']);
  throwsConfig(() => applyParameters(DEFAULT_PARAMETERS, { 'tls-creds': 5 }), 'invalid-value', "Invalid parameter type for 'tls-creds', expected: StrOrNull");
  assert.deepEqual(parseParameterArgs(['tls-creds=tls0', 'tls-hostname=', 'tls-authz=authz0'], 'livemig'), { 'tls-creds': 'tls0', 'tls-hostname': '', 'tls-authz': 'authz0' });
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
  throwsConfig(() => parseParameterText('downtime-limit', '-1'), 'invalid-value', '--param downtime-limit: ', "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms", "(got '-1')");
  throwsConfig(() => parseParameterText('multifd-channels', '0'), 'invalid-value', '--param multifd-channels: ', "'multifd_channels' expects a value between 1 and 255");
  throwsConfig(() => parseParameterText('multifd-channels', '256'), 'invalid-value', "'multifd-channels' expects uint8_t");
  throwsConfig(() => parseParameterText('multifd-zstd-level', '21'), 'invalid-value', 'a value between 0 and 20');
  throwsConfig(() => parseParameterText('multifd-zlib-level', '10'), 'invalid-value', 'a value between 0 and 9');
  // Each argument alone: max-cpu-throttle is held against cpu-throttle-initial once the arguments are merged.
  assert.equal(parseParameterText('max-cpu-throttle', '10'), 10);
  throwsConfig(() => parseParameterText('max-cpu-throttle', '100'), 'invalid-value', "'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99");
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
  // QEMU 7.2's parameters livemig lacks: their default is accepted, another value refused naming the default.
  assert.equal(parseParameterText('compress-level', '1', 'livemig'), 1);
  assert.equal(parseParameterText('max-postcopy-bandwidth', '0', 'livemig'), 0);
  assert.equal(parseParameterText('compress-wait-thread', 'on', 'livemig'), true);
  throwsConfig(() => parseParameterText('compress-level', '3', 'livemig'), 'not-implemented', "--param compress-level: livemig does not implement 'compress-level'; only its default 1 is accepted (got '3')");
  throwsConfig(() => parseParameterText('block-incremental', 'on', 'livemig'), 'not-implemented', "only its default false is accepted");
  // A newer QEMU's parameter: not implemented, naming the version.
  throwsConfig(() => parseParameterText('mode', 'normal', 'livemig'), 'not-implemented', "--param mode: livemig does not implement QEMU 9.0's parameter 'mode'");
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
  throwsConfig(() => MigrationConfig.fromArgs(['cpu-throttle-initial=60', 'max-cpu-throttle=50'], []), 'conflict', '--param', "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99");
  assert.equal(MigrationConfig.fromArgs(['cpu-throttle-initial=5', 'max-cpu-throttle=10'], []).parameters['max-cpu-throttle'], 10);
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
  throwsConfig(() => parseCapabilityText('x-colo'), 'not-implemented', "--cap 'x-colo': livemig does not implement QEMU's capability 'x-colo'; only its default (off) is accepted");
  assert.deepEqual(parseCapabilityText('x-colo=off'), { capability: 'x-colo', state: false }, 'an unimplemented capability at its default (off)');
  assert.deepEqual(parseCapabilityText('postcopy-ram'), { capability: 'postcopy-ram', state: true });
  // A QMP monitor decides about names livemig does not know.
  assert.deepEqual(parseCapabilityArgs(['postcopy-ram', 'x-future=off'], 'qmp'), [
    { capability: 'postcopy-ram', state: true },
    { capability: 'x-future', state: false },
  ]);
});

test("applyParameters / applyCapabilities: QEMU's messages, all or nothing", () => {
  const current = { ...DEFAULT_PARAMETERS };
  // QEMU 7.2's words (from real QEMU over QMP): its visitor's name the parameter with dashes, its checks with underscores.
  throwsConfig(() => applyParameters(current, { 'downtime-limit': 2_000_001 }), 'invalid-value', "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms");
  throwsConfig(() => applyParameters(current, { 'downtime-limit': -1 }), 'invalid-value', "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms");
  throwsConfig(() => applyParameters(current, { 'downtime-limit': 1.5 }), 'invalid-value', "Parameter 'downtime-limit' expects uint64");
  throwsConfig(() => applyParameters(current, { 'max-bandwidth': '100M' }), 'invalid-value', "Parameter 'max-bandwidth' expects uint64");
  throwsConfig(() => applyParameters(current, { 'cpu-throttle-tailslow': 1 }), 'invalid-value', "Invalid parameter type for 'cpu-throttle-tailslow', expected: boolean");
  throwsConfig(() => applyParameters(current, { 'multifd-compression': 5 }), 'invalid-value', "Invalid parameter type for 'multifd-compression', expected: string");
  throwsConfig(() => applyParameters(current, { 'xbzrle-cache-size': 12288 }), 'invalid-value', "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size");
  throwsConfig(() => applyParameters(current, { 'xbzrle-cache-size': 2 ** 41 }), 'invalid-value', "Parameter 'xbzrle-cache-size' expects an integer in the range of 0 to 1099511627776 bytes (livemig's limit)");
  // Two refused: the first in QEMU's order of checks is named (throttle_trigger_threshold before cpu_throttle_initial).
  throwsConfig(() => applyParameters(current, { 'cpu-throttle-initial': 0, 'throttle-trigger-threshold': 0 }), 'invalid-value', "'throttle_trigger_threshold'");
  // Rates as QEMU 7.2's visitor reads a uint64: libvirt's "unlimited" (2^63 - 2^20 bytes/s), and -1 as 2^64 - 1,
  // kept as the largest double below 2^64 (a client reading it back as a uint64 can).
  assert.equal(applyParameters(current, { 'max-bandwidth': 9223372036853727232 })['max-bandwidth'], 9223372036853727232);
  for (const huge of [-1, 2 ** 64]) {
    const kept = applyParameters(current, { 'max-bandwidth': huge, 'max-postcopy-bandwidth': huge });
    assert.equal(kept['max-bandwidth'], 2 ** 64 - 2048);
    assert.equal(kept['max-postcopy-bandwidth'], 2 ** 64 - 2048);
  }
  throwsConfig(() => applyParameters(current, { 'max-bandwidth': 2 ** 65 }), 'invalid-value', "Parameter 'max-bandwidth' expects uint64");
  throwsConfig(() => applyParameters(current, { 'multifd-channels': -1 }), 'invalid-value', "Parameter 'multifd-channels' expects uint8_t");
  throwsConfig(() => applyParameters(current, { 'multifd-compression': 'lz4' }), 'invalid-value', "Parameter 'multifd-compression' does not accept value 'lz4'");
  // Names and values from outside reach an operator's terminal inert.
  throwsConfig(() => applyParameters(current, { 'multifd-compression': 'z\x1b]0;owned\x07' }), 'invalid-value', "does not accept value 'z\\x1b]0;owned\\x07'");
  throwsConfig(() => applyParameters(current, { 'no\x1b[2Jsuch': 1 }), 'unknown-parameter', "Parameter 'no\\x1b[2Jsuch' is unexpected");
  throwsConfig(() => applyCapabilities(DEFAULT_CAPABILITIES, { 'no\x1b[2Jsuch': true }), 'unknown-capability', "Capability 'no\\x1b[2Jsuch' is not supported");
  throwsConfig(() => parseCapabilityText('x\x1b[2J=maybe'), 'syntax', "--cap 'x\\x1b[2J=maybe'");
  throwsConfig(() => applyParameters(current, { 'no-such': 1 }), 'unknown-parameter', "Parameter 'no-such' is unexpected");
  throwsConfig(() => applyParameters(current, { 'cpu-throttle-initial': 90, 'max-cpu-throttle': 80 }), 'conflict', "'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99");
  throwsConfig(() => applyParameters(current, { 'max-cpu-throttle': 10 }), 'conflict', 'cpu_throttle_initial to 99');
  throwsConfig(() => applyParameters(current, { 'downtime-limit': 100, 'multifd-channels': 0 }), 'invalid-value', 'multifd_channels');
  assert.deepEqual(current, DEFAULT_PARAMETERS, 'nothing merged, the input untouched');
  assert.equal(applyParameters(current, { 'downtime-limit': 100 })['downtime-limit'], 100);
  throwsConfig(() => applyCapabilities(DEFAULT_CAPABILITIES, { nope: true }), 'unknown-capability', "Capability 'nope' is not supported");
  throwsConfig(() => applyCapabilities(DEFAULT_CAPABILITIES, { xbzrle: 'on' }), 'invalid-value', "Capability 'xbzrle' expects a boolean");
  // late-block-activate (libvirt sets it on every destination): taken and kept; a livemig destination behaves so anyway.
  assert.equal(applyCapabilities(DEFAULT_CAPABILITIES, { 'late-block-activate': true })['late-block-activate'], true);
  // QEMU 7.2's capabilities livemig does not implement: off is accepted (and changes nothing), on is refused naming it.
  assert.deepEqual(applyCapabilities(DEFAULT_CAPABILITIES, { 'x-colo': false, 'zero-copy-send': false }), DEFAULT_CAPABILITIES);
  throwsConfig(() => applyCapabilities(DEFAULT_CAPABILITIES, { 'zero-copy-send': true }), 'not-implemented', "livemig does not implement the capability 'zero-copy-send'; only its default (off) is accepted");
  assert.deepEqual(allCapabilities(DEFAULT_CAPABILITIES).map((c) => c.capability), QEMU_CAPABILITIES);
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

  throwsConfig(() => config.setParameters({ 'downtime-limit': 1, 'multifd-channels': 999 }), 'invalid-value', "'multifd-channels' expects uint8_t");
  assert.equal(config.parameters['downtime-limit'], 300, 'a refused update changes nothing');
  assert.equal(seen.length, 1, 'and tells nobody');

  assert.equal(config.setCapabilities({ xbzrle: true }).xbzrle, true);
  assert.equal(atStart.capabilities.xbzrle, false);
  assert.throws(() => {
    (config.parameters as { 'downtime-limit': number })['downtime-limit'] = 5;
  }, TypeError, 'the current parameters are read-only');
  throwsConfig(() => new MigrationConfig({ parameters: { 'downtime-limit': -1 } }), 'invalid-value', 'downtime_limit');
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
  const defaults = await runCli(['--machine', 'test', '--ram', '16M', '--incoming', 'defer', '--exit-after-ms', '200', '--param', 'compress-level=1', '--param', 'announce-rounds=5', '--param', 'tls-creds=']);
  assert.equal(defaults.code, 0, defaults.stderr);
  const unimplemented = await runCli(['--machine', 'test', '--ram', '16M', '--incoming', 'defer', '--exit-after-ms', '200', '--param', 'compress-level=5']);
  assert.equal(unimplemented.code, 2);
  assert.match(unimplemented.stderr, /--param compress-level: livemig does not implement 'compress-level'; only its default 1 is accepted/);
  const unknown = await runCli(['--machine', 'test', '--ram', '16M', '--exit-after-ms', '200', '--cap', 'no-such-cap']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /--cap 'no-such-cap': there is no migration capability/);
});
