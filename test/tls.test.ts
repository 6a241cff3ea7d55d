/**
 * TLS between two livemig processes (real sockets, real certificates from
 * openssl): x509 with verify-peer, the URI's host or tls-hostname, tls-authz;
 * PSK; one channel and multifd; and every way it can fail, each with a clear
 * reason on both sides, the source guest running on, and the destination
 * still waiting (it then takes a correct migration).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { connect, createServer, type AddressInfo } from 'node:net';
import { fillNoneRam } from '../src/machine/none-machine.js';
import { join } from 'node:path';
import { QmpClient, QmpError } from '../src/monitor/qmp-client.js';
import { opensslSkipReason, pkiSuite } from './helpers/certs.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { LivemigProcess } from './helpers/livemig-process.js';
import { cliPath } from './helpers/paths.js';

const skip = opensslSkipReason();

const suite = pkiSuite('livemig-tls-', skip);

const x509 = (id: string, credsDir: string, endpoint: 'server' | 'client', extra = ''): string[] => ['--object', `tls-creds-x509,id=${id},dir=${credsDir},endpoint=${endpoint}${extra}`];
const psk = (id: string, credsDir: string, endpoint: 'server' | 'client'): string[] => ['--object', `tls-creds-psk,id=${id},dir=${credsDir},endpoint=${endpoint}`];
/** authz-simple for the test client's DN, in QEMU's JSON form of -object (the DN holds commas). */
const authzFor = (dn: string): string[] => ['--object', JSON.stringify({ 'qom-type': 'authz-simple', id: 'auth0', identity: dn })];

async function destination(args: string[]): Promise<{ proc: LivemigProcess; port: number }> {
  const proc = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--incoming', 'tcp:127.0.0.1:0', '--verify', ...args]);
  const listening = await proc.waitFor('listening');
  return { proc, port: Number(String(listening.address).split(':').at(-1)) };
}

type Info = Record<string, any>;
async function waitFinal(qmp: QmpClient, timeoutMs = 60_000): Promise<Info> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<Info>('query-migrate');
    if (['completed', 'failed', 'cancelled'].includes(info.status)) return info;
    if (Date.now() > deadline) throw new Error(`migration still ${info.status}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('x509 with verify-peer, the URI host and tls-authz; then PSK; one channel and multifd: the guest arrives intact', { skip, timeout: 180_000 }, async () => {
  const cases: Array<{ name: string; dst: string[]; src: string[]; uri: (port: number) => string; multifd?: boolean }> = [
    {
      name: 'x509 + authz, one channel',
      dst: [...x509('tls0', suite.pki.server, 'server'), ...authzFor(suite.pki.clientDn), '--param', 'tls-creds=tls0', '--param', 'tls-authz=auth0'],
      src: [...x509('tls0', suite.pki.client, 'client'), '--param', 'tls-creds=tls0'],
      uri: (port) => `tcp:localhost:${port}`,
    },
    {
      name: 'x509 + authz, multifd',
      dst: [...x509('tls0', suite.pki.server, 'server'), ...authzFor(suite.pki.clientDn), '--param', 'tls-creds=tls0', '--param', 'tls-authz=auth0', '--cap', 'multifd'],
      src: [...x509('tls0', suite.pki.client, 'client'), '--param', 'tls-creds=tls0', '--cap', 'multifd'],
      uri: (port) => `tcp:127.0.0.1:${port}`,
      multifd: true,
    },
    {
      name: 'x509, tls-hostname overrides the URI host',
      dst: [...x509('tls0', suite.pki.serverOtherName, 'server'), '--param', 'tls-creds=tls0'],
      src: [...x509('tls0', suite.pki.client, 'client'), '--param', 'tls-creds=tls0', '--param', 'tls-hostname=other.example'],
      uri: (port) => `tcp:127.0.0.1:${port}`,
    },
    {
      name: 'PSK, one channel',
      dst: [...psk('tls0', suite.pki.pskA, 'server'), '--param', 'tls-creds=tls0'],
      src: [...psk('tls0', suite.pki.pskA, 'client'), '--param', 'tls-creds=tls0'],
      uri: (port) => `tcp:127.0.0.1:${port}`,
    },
    {
      name: 'PSK, multifd',
      dst: [...psk('tls0', suite.pki.pskA, 'server'), '--param', 'tls-creds=tls0', '--cap', 'multifd'],
      src: [...psk('tls0', suite.pki.pskA, 'client'), '--param', 'tls-creds=tls0', '--cap', 'multifd'],
      uri: (port) => `tcp:127.0.0.1:${port}`,
      multifd: true,
    },
  ];
  for (const c of cases) {
    const { proc: dst, port } = await destination(c.dst);
    const src = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--dirty-rate', '5000', '--verify', '--migrate-to', c.uri(port), '--migrate-after-ms', '200', ...c.src]);
    try {
      const done = await src.waitFor('completed', () => true, 60_000).catch(async (err: Error) => {
        const failed = src.events.find((e) => e.event === 'failed');
        throw new Error(`${c.name}: ${failed ? JSON.stringify(failed.info?.['error-desc']) : err.message}`);
      });
      const migrated = await src.waitFor('migrated');
      const loaded = await dst.waitFor('loaded');
      assert.equal(loaded.memoryCheck.ok, true, `${c.name}: the destination's memory check`);
      assert.equal(loaded.ramHash, migrated.ramHash, `${c.name}: RAM as loaded equals the source's at stop`);
      assert.equal(done.info.status, 'completed');
      await dst.waitFor('resumed');
    } finally {
      await src.stop();
      await dst.stop();
    }
  }
});

test('failures, source side: each refused with its reason on both sides; the source guest runs on; the destination keeps waiting and then takes a good migration', { skip, timeout: 180_000 }, async () => {
  const { proc: dst, port } = await destination([...x509('tls0', suite.pki.server, 'server'), ...authzFor(suite.pki.clientDn), '--param', 'tls-creds=tls0', '--param', 'tls-authz=auth0']);
  const qmpPath = join(suite.dir, 'src-qmp.sock');
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--dirty-rate', '5000', '--qmp', `unix:${qmpPath}`]);
  const qmp = await QmpClient.connect(`unix:${qmpPath}`, { retryForMs: 10_000 });
  const uri = `tcp:localhost:${port}`;
  const cases: Array<{ name: string; creds?: { 'qom-type': string; [k: string]: unknown }; params?: Record<string, string>; source: RegExp; destination: RegExp }> = [
    { name: 'client certificate not authorized (tls-authz)', creds: { 'qom-type': 'tls-creds-x509', dir: suite.pki.clientIntruder, endpoint: 'client' }, source: /closed the connection after the TLS handshake.*tls-authz/, destination: /C=GB,O=livemig test,CN=intruder\.example' is not allowed by tls-authz 'auth0'/ },
    { name: 'no client certificate', creds: { 'qom-type': 'tls-creds-x509', dir: suite.pki.clientNoCert, endpoint: 'client' }, source: /requires a client certificate/, destination: /sent no certificate/ },
    { name: 'a CA the destination does not know (and the source does not know the destination\'s)', creds: { 'qom-type': 'tls-creds-x509', dir: suite.pki.clientOtherCa, endpoint: 'client' }, source: /certificate is not signed by the CA we trust/, destination: /refused|closed|dropped/ },
    { name: 'a client certificate from a CA the destination does not trust', creds: { 'qom-type': 'tls-creds-x509', dir: suite.pki.clientForeign, endpoint: 'client', 'sanity-check': false }, source: /closed the connection after the TLS handshake/, destination: /certificate 'CN=foreigner\.example' \(issuer CN=some other CA\) is not signed by a CA in/ },
    { name: 'the destination\'s certificate does not carry tls-hostname', creds: { 'qom-type': 'tls-creds-x509', dir: suite.pki.client, endpoint: 'client' }, params: { 'tls-hostname': 'wrong.example' }, source: /does not name the host we expect.*wrong\.example/, destination: /dropped|closed/ },
    { name: 'PSK against x509', creds: { 'qom-type': 'tls-creds-psk', dir: suite.pki.pskA, endpoint: 'client' }, source: /TLS handshake .*failed/, destination: /TLS handshake failed/ },
    { name: 'a plaintext source', source: /if it expects TLS, set tls-creds here too/, destination: /did not start a TLS handshake/ },
  ];
  try {
    for (const c of cases) {
      const rejectedBefore = dst.events.filter((e) => e.event === 'rejected').length;
      if (c.creds) await qmp.execute('object-add', { ...c.creds, id: 'tls-case' });
      await qmp.execute('migrate-set-parameters', { 'tls-creds': c.creds ? 'tls-case' : '', 'tls-hostname': c.params?.['tls-hostname'] ?? '' });
      await qmp.execute('migrate', { uri });
      const info = await waitFinal(qmp);
      assert.equal(info.status, 'failed', `${c.name}: the migration fails`);
      assert.match(String(info['error-desc']), c.source, `${c.name}: the source's reason`);
      assert.deepEqual(await qmp.execute('query-status'), { status: 'running', singlestep: false, running: true }, `${c.name}: the source guest runs on`);
      const rejected = await dst.waitFor('rejected', () => true, 15_000, 0).then(async () => {
        for (let i = 0; i < 100; i++) {
          const all = dst.events.filter((e) => e.event === 'rejected');
          if (all.length > rejectedBefore) return all.slice(rejectedBefore);
          await new Promise((r) => setTimeout(r, 100));
        }
        return [];
      });
      assert.ok(rejected.length > 0, `${c.name}: the destination says it refused a connection`);
      assert.match(rejected.map((e) => e.reason).join('\n'), c.destination, `${c.name}: the destination's reason`);
      assert.doesNotMatch(rejected.map((e) => e.reason).join('\n'), /[\u0000-\u0008\u001b]/, 'no control characters in messages');
      if (c.creds) await qmp.execute('object-del', { id: 'tls-case' });
    }
    // The destination waited through all of that; a correct source now gets through.
    await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls-good', dir: suite.pki.client, endpoint: 'client' });
    await qmp.execute('migrate-set-parameters', { 'tls-creds': 'tls-good', 'tls-hostname': '' });
    await qmp.execute('migrate', { uri });
    const info = await waitFinal(qmp);
    assert.equal(info.status, 'completed', JSON.stringify(info['error-desc']));
    const loaded = await dst.waitFor('loaded');
    assert.equal(loaded.memoryCheck.ok, true);
  } finally {
    await qmp.close().catch(() => {});
    await src.stop();
    await dst.stop();
  }
});

test('failures, destination side: expired, not yet valid, another name, another PSK, no TLS at all; the source guest runs on', { skip, timeout: 120_000 }, async () => {
  type Creds = { 'qom-type': string; dir: string };
  const client: Creds = { 'qom-type': 'tls-creds-x509', dir: suite.pki.client };
  const cases: Array<{ name: string; dst: string[]; creds: Creds; source: RegExp; destination?: RegExp }> = [
    { name: 'expired', dst: [...x509('tls0', suite.pki.serverExpired, 'server', ',sanity-check=off'), '--param', 'tls-creds=tls0'], creds: client, source: /destination's certificate has expired/ },
    { name: 'not yet valid', dst: [...x509('tls0', suite.pki.serverFuture, 'server', ',sanity-check=off'), '--param', 'tls-creds=tls0'], creds: client, source: /destination's certificate is not valid yet/ },
    { name: 'another name', dst: [...x509('tls0', suite.pki.serverOtherName, 'server'), '--param', 'tls-creds=tls0'], creds: client, source: /does not name the host we expect/ },
    { name: 'PSK mismatch', dst: [...psk('tls0', suite.pki.pskB, 'server'), '--param', 'tls-creds=tls0'], creds: { 'qom-type': 'tls-creds-psk', dir: suite.pki.pskA }, source: /TLS handshake .*failed/, destination: /TLS handshake failed/ },
    { name: 'a plaintext destination', dst: [], creds: client, source: /closed the connection during the TLS handshake/, destination: /a TLS handshake, but this destination has no tls-creds/ },
  ];
  const qmpPath = join(suite.dir, 'src2-qmp.sock');
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--dirty-rate', '5000', '--qmp', `unix:${qmpPath}`]);
  const qmp = await QmpClient.connect(`unix:${qmpPath}`, { retryForMs: 10_000 });
  try {
    for (const c of cases) {
      const { proc: dst, port } = await destination(c.dst);
      try {
        await qmp.execute('object-add', { ...c.creds, id: 'tls-case', endpoint: 'client' });
        await qmp.execute('migrate-set-parameters', { 'tls-creds': 'tls-case' });
        await qmp.execute('migrate', { uri: `tcp:localhost:${port}` });
        const info = await waitFinal(qmp);
        assert.equal(info.status, 'failed', `${c.name}: the migration fails`);
        assert.match(String(info['error-desc']), c.source, `${c.name}: the source's reason`);
        assert.equal((await qmp.execute<Info>('query-status')).status, 'running', `${c.name}: the source guest runs on`);
        if (c.destination) {
          const rejected = await dst.waitFor('rejected', () => true, 15_000);
          assert.match(String(rejected.reason), c.destination, `${c.name}: the destination's reason`);
        }
        assert.equal(dst.exitCode, null, `${c.name}: the destination still waits`);
        await qmp.execute('object-del', { id: 'tls-case' });
      } finally {
        await dst.stop();
      }
    }
  } finally {
    await qmp.close().catch(() => {});
    await src.stop();
  }
});

test('credentials are checked when created: expired or not-yet-valid certificates, missing files, wrong endpoint, bad keys.psk', { skip, timeout: 60_000 }, async () => {
  const run = promisify(execFile);
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const refuse = async (args: string[], pattern: RegExp): Promise<void> => {
    const result = await run(process.execPath, [cliPath, 'run', '--machine', 'test', '--ram', '16M', '--exit-after-ms', '100', ...args], { env }).then(
      () => assert.fail(`accepted: ${args.join(' ')}`),
      (err: { code: number; stderr: string }) => err,
    );
    assert.equal(result.code, 2, args.join(' '));
    assert.match(result.stderr, pattern);
  };
  await refuse(x509('tls0', suite.pki.serverExpired, 'server'), /certificate .*server-cert\.pem has expired/);
  await refuse(x509('tls0', suite.pki.serverFuture, 'server'), /is not yet active/);
  await refuse(x509('tls0', suite.pki.client, 'server'), /server-cert\.pem: No such file or directory/);
  await refuse(x509('tls0', join(suite.dir, 'nowhere'), 'client'), /ca-cert\.pem: No such file or directory/);
  await refuse(['--object', `tls-creds-x509,id=tls0,dir=${suite.pki.server},endpoint=sideways`], /Parameter 'endpoint' does not accept value 'sideways'/);
  await refuse(['--object', `tls-creds-x509,id=tls0,dir=${suite.pki.server},colour=blue`], /Property 'tls-creds-x509\.colour' not found/);
  await refuse(['--object', `tls-creds-psk,id=tls0,dir=${suite.pki.pskA},endpoint=client,username=nobody`], /no key for username 'nobody'/);
  await refuse(['--object', 'tls-creds-anon,id=tls0,endpoint=server'], /not supported/);
  await refuse(['--param', 'tls-creds=tls0', '--incoming', 'tcp:127.0.0.1:0'], /No TLS credentials with id 'tls0'/);
  await refuse([...x509('tls0', suite.pki.client, 'client'), '--param', 'tls-creds=tls0', '--incoming', 'tcp:127.0.0.1:0'], /Expecting TLS credentials with a server endpoint/);
});

test('QMP: object-add checks like --object; migrate refuses unknown or wrong-endpoint credentials at once', { skip, timeout: 60_000 }, async () => {
  const qmpPath = join(suite.dir, 'qmp-objects.sock');
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '16M', '--qmp', `unix:${qmpPath}`]);
  const qmp = await QmpClient.connect(`unix:${qmpPath}`, { retryForMs: 10_000 });
  const refused = async (command: string, args: Record<string, unknown>, pattern: RegExp): Promise<void> => {
    await assert.rejects(qmp.execute(command, args), (err: unknown) => err instanceof QmpError && pattern.test(err.message));
  };
  try {
    await refused('object-add', { 'qom-type': 'tls-creds-x509', id: 'a', dir: suite.pki.client, endpoint: 'client', 'verify-peer': 'on' }, /Invalid parameter type for 'verify-peer', expected: boolean/);
    await refused('object-add', { 'qom-type': 'no-such-type', id: 'a' }, /invalid object type: no-such-type/);
    await refused('object-add', { 'qom-type': 'authz-simple', id: '1bad' }, /Parameter 'id' expects an identifier/);
    await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: 'srv', dir: suite.pki.server, endpoint: 'server' });
    await refused('object-add', { 'qom-type': 'tls-creds-x509', id: 'srv', dir: suite.pki.server, endpoint: 'server' }, /duplicate/);
    await qmp.execute('migrate-set-parameters', { 'tls-creds': 'srv' });
    await refused('migrate', { uri: 'tcp:127.0.0.1:1' }, /Expecting TLS credentials with a client endpoint/);
    await qmp.execute('migrate-set-parameters', { 'tls-creds': 'missing' });
    await refused('migrate', { uri: 'tcp:127.0.0.1:1' }, /No TLS credentials with id 'missing'/);
    await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: 'cli', dir: suite.pki.client, endpoint: 'client' });
    await qmp.execute('migrate-set-parameters', { 'tls-creds': 'cli' });
    await refused('migrate', { uri: `unix:${join(suite.dir, 'x.sock')}` }, /No hostname available for TLS/);
    await refused('migrate', { uri: 'exec:cat > /dev/null' }, /TLS \(tls-creds\) runs on tcp: and unix: channels only/);
    await qmp.execute('object-del', { id: 'cli' });
    await refused('object-del', { id: 'cli' }, /object 'cli' not found/);
    const params = await qmp.execute<Record<string, unknown>>('query-migrate-parameters');
    assert.equal(params['tls-creds'], 'cli');
    assert.equal(await qmp.execute('migrate-set-parameters', { 'tls-creds': null }).then(() => qmp.execute<Record<string, unknown>>('query-migrate-parameters')).then((p) => p['tls-creds']), '');
    assert.deepEqual((await qmp.execute<Record<string, unknown>>('query-status')).status, 'running');
  } finally {
    await qmp.close().catch(() => {});
    await src.stop();
  }
});

/** A TCP relay that keeps every byte the source sends, per connection: what a wiretap on the link sees. */
async function capturingRelay(targetPort: number): Promise<{ port: number; captured: Buffer[][]; close(): void }> {
  const captured: Buffer[][] = [];
  const server = createServer((inbound) => {
    const chunks: Buffer[] = [];
    captured.push(chunks);
    const outbound = connect(targetPort, '127.0.0.1');
    inbound.on('data', (chunk: Buffer) => chunks.push(chunk));
    inbound.pipe(outbound).pipe(inbound);
    inbound.on('error', () => outbound.destroy());
    outbound.on('error', () => inbound.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as AddressInfo).port, captured, close: () => server.close() };
}

test('a capture of the link during a TLS migration (main channel and multifd) shows no plaintext; the same capture without TLS does', { skip, timeout: 120_000 }, async () => {
  const ram = new Uint8Array(16 << 20);
  fillNoneRam(ram, { kind: 'random', seed: 42 });
  // Markers of plaintext: the stream's magic, section names, the JSON trailer, and the guest's own pages.
  const pages = [3, 1000, 4000].map((page) => Buffer.from(ram.subarray(page * 4096, page * 4096 + 64))).filter((b) => b.some((x) => x !== 0));
  const markers = [Buffer.from('QEVM'), Buffer.from('globalstate'), Buffer.from('"vmsd_name"'), ...pages];
  for (const tls of [true, false]) {
    const tlsArgs = (endpoint: 'server' | 'client'): string[] => (tls ? [...x509('tls0', endpoint === 'server' ? suite.pki.server : suite.pki.client, endpoint), '--param', 'tls-creds=tls0'] : []);
    const dst = LivemigProcess.start(['--machine', 'none', '--ram', '16M', '--incoming', 'tcp:127.0.0.1:0', '--cap', 'multifd', ...tlsArgs('server')]);
    const port = Number(String((await dst.waitFor('listening')).address).split(':').at(-1));
    const relay = await capturingRelay(port);
    const src = LivemigProcess.start(['--machine', 'none', '--ram', '16M', '--pattern', 'random:42', '--cap', 'multifd', '--migrate-to', `tcp:localhost:${relay.port}`, '--migrate-after-ms', '0', ...tlsArgs('client')]);
    try {
      await src.waitFor('completed');
      await dst.waitFor('resumed');
      assert.ok(relay.captured.length >= 3, `the main channel and two multifd channels went through the relay (${relay.captured.length})`);
      const streams = relay.captured.map((chunks) => Buffer.concat(chunks));
      const total = streams.reduce((n, s) => n + s.length, 0);
      assert.ok(total > 8 << 20, `the guest's RAM crossed the link (${total} bytes)`);
      const found = markers.filter((m) => streams.some((s) => s.includes(m))).map((m) => m.subarray(0, 12).toString('hex'));
      if (tls) {
        assert.ok(streams.every((s) => s[0] === 0x16 && s[1] === 0x03), 'every connection starts with a TLS handshake record');
        assert.deepEqual(found, [], 'no plaintext marker on the link');
      } else {
        assert.equal(found.length, markers.length, 'without TLS every marker is on the link (the check can fail)');
      }
    } finally {
      relay.close();
      await src.stop();
      await dst.stop();
    }
  }
});

test('QMP over TLS: run --qmp tcp:...,tls-creds=,tls-authz= and livemig migrate --object ... --qmp tcp:...,tls-creds=; a client without credentials gets nothing', { skip, timeout: 120_000 }, async () => {
  const run = promisify(execFile);
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const dst = await destination([...x509('tls0', suite.pki.server, 'server'), '--param', 'tls-creds=tls0']);
  const qmpServerArgs = [...x509('qmp0', suite.pki.server, 'server'), '--object', JSON.stringify({ 'qom-type': 'authz-simple', id: 'qauth', identity: suite.pki.clientDn })];
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--dirty-rate', '5000', ...qmpServerArgs, '--qmp', 'tcp:127.0.0.1:0,tls-creds=qmp0,tls-authz=qauth', ...x509('tls0', suite.pki.client, 'client'), '--param', 'tls-creds=tls0']);
  try {
    const qmpPort = Number(String((await src.waitFor('qmp')).address).split(':').at(-1));
    // A plain client and one whose certificate tls-authz refuses are dropped without a greeting.
    const plain = await run(process.execPath, [cliPath, 'query', '--qmp', `tcp:127.0.0.1:${qmpPort}`], { env }).then(() => undefined, (err: { code: number; stderr: string }) => err);
    assert.equal(plain?.code, 2);
    const intruder = await run(process.execPath, [cliPath, 'query', ...x509('c', suite.pki.clientIntruder, 'client'), '--qmp', `tcp:localhost:${qmpPort},tls-creds=c`], { env }).then(() => undefined, (err: { code: number; stderr: string }) => err);
    assert.equal(intruder?.code, 2);
    assert.match(intruder!.stderr, /QMP/);
    const { stdout } = await run(process.execPath, [cliPath, 'migrate', ...x509('c', suite.pki.client, 'client'), '--qmp', `tcp:localhost:${qmpPort},tls-creds=c`, '--json', `tcp:localhost:${dst.port}`], { env });
    const final = stdout.trim().split('\n').map((l) => JSON.parse(l)).at(-1);
    assert.equal(final.status, 'completed');
    assert.equal((await dst.proc.waitFor('loaded')).memoryCheck.ok, true);
  } finally {
    await src.stop();
    await dst.proc.stop();
  }
});

test('a migration listener on a non-loopback address without TLS warns; with TLS or on 127.0.0.1 it does not', { skip, timeout: 60_000 }, async () => {
  const warning = /warning: the migration listener on tcp:0\.0\.0\.0:\d+ takes a plaintext stream from any host/;
  const cases: Array<[string[], boolean]> = [
    [['--incoming', 'tcp:0.0.0.0:0'], true],
    [['--incoming', 'tcp:127.0.0.1:0'], false],
    [['--incoming', 'tcp:0.0.0.0:0', ...x509('tls0', suite.pki.server, 'server'), '--param', 'tls-creds=tls0'], false],
  ];
  for (const [args, warns] of cases) {
    const proc = LivemigProcess.start(['--machine', 'test', '--ram', '16M', ...args]);
    try {
      await proc.waitFor('listening');
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(warning.test(proc.stderr), warns, `${args.join(' ')}: ${proc.stderr}`);
    } finally {
      await proc.stop();
    }
  }
});

test('faults on a TLS link (cut inside the stream, stall, destination killed): the source guest runs on, no guest starts on the destination', { skip, timeout: 180_000 }, async () => {
  const faults: Array<{ name: string; inject: (proxy: FaultProxy, dst: LivemigProcess) => void }> = [
    { name: 'cut after 5 MiB', inject: (proxy) => proxy.cutAfter(5 << 20, 'up') },
    { name: 'stall both ways', inject: (proxy) => setTimeout(() => proxy.stall(), 300) },
    { name: 'destination killed', inject: (_proxy, dst) => setTimeout(() => dst.child.kill('SIGKILL'), 300) },
  ];
  for (const fault of faults) {
    // The none machine with random RAM: a 32 MiB stream, so a cut at 5 MiB lands inside it.
    const dst = LivemigProcess.start(['--machine', 'none', '--ram', '32M', '--incoming', 'tcp:127.0.0.1:0', ...x509('tls0', suite.pki.server, 'server'), '--param', 'tls-creds=tls0', '--param', 'x-livemig-peer-timeout-ms=1500']);
    const port = Number(String((await dst.waitFor('listening')).address).split(':').at(-1));
    const proxy = await FaultProxy.start({ targetPort: port, seed: 14 });
    const qmpPath = join(suite.dir, `fault-${fault.name.replace(/\W/g, '')}.sock`);
    const src = LivemigProcess.start(['--machine', 'none', '--ram', '32M', '--pattern', 'random:9', '--qmp', `unix:${qmpPath}`, ...x509('tls0', suite.pki.client, 'client'), '--param', 'tls-creds=tls0', '--param', 'x-livemig-peer-timeout-ms=1500', '--param', 'max-bandwidth=20M']);
    const qmp = await QmpClient.connect(`unix:${qmpPath}`, { retryForMs: 10_000 });
    try {
      fault.inject(proxy, dst);
      await qmp.execute('migrate', { uri: `tcp:localhost:${proxy.port}` });
      const info = await waitFinal(qmp, 30_000);
      assert.equal(info.status, 'failed', `${fault.name}: the migration fails`);
      assert.doesNotMatch(String(info['error-desc']), /outcome|may run/, `${fault.name}: the source knows the guest is here`);
      assert.equal((await qmp.execute<Info>('query-status')).status, 'running', `${fault.name}: the source guest runs on`);
      await new Promise((r) => setTimeout(r, 500));
      assert.ok(!dst.events.some((e) => e.event === 'resumed'), `${fault.name}: no guest started on the destination`);
    } finally {
      await qmp.close().catch(() => {});
      await proxy.close();
      await src.stop();
      await dst.stop();
    }
  }
});
