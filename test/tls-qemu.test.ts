/**
 * TLS against real QEMU 7.2 (`-M none` with its RAM in a file): QEMU -> livemig
 * and livemig -> QEMU over x509 (verify-peer, the certificate checked against
 * the URI's host or tls-hostname, tls-authz on the destination) and PSK, one
 * channel and multifd, RAM equal byte for byte; and the failures a peer of
 * the other kind must report clearly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { fillNoneRam } from '../src/machine/none-machine.js';
import { opensslSkipReason, pkiSuite } from './helpers/certs.js';
import type { LivemigProcess } from './helpers/livemig-process.js';
import { qemuSkipReason, type QemuProcess } from './helpers/qemu.js';
import { livemigListening, qemuListen, readQemuRam, setQemuCapabilities, startLivemigNone, startQemuNone } from './helpers/qemu-none.js';

const RAM_BYTES = 16 << 20;
const skip = qemuSkipReason() ?? opensslSkipReason();
let runIndex = 0;

const suite = pkiSuite('livemig-tls-qemu-', skip);

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');
function seededRam(seed: number): Uint8Array {
  const ram = new Uint8Array(RAM_BYTES);
  fillNoneRam(ram, { kind: 'random', seed });
  return ram;
}

type Kind = 'x509' | 'psk';
/** The same credentials as QEMU's -object and as livemig's --object. */
function credsObject(kind: Kind, endpoint: 'server' | 'client', credsDir?: string): string {
  const d = credsDir ?? (kind === 'psk' ? suite.pki.pskA : endpoint === 'server' ? suite.pki.server : suite.pki.client);
  return kind === 'psk' ? `tls-creds-psk,id=tls0,dir=${d},endpoint=${endpoint}` : `tls-creds-x509,id=tls0,dir=${d},endpoint=${endpoint},verify-peer=on`;
}
/** authz-simple for the test client's DN in keyval syntax (commas doubled), as both QEMU and livemig read it. */
const authzObject = (dn: string): string => `authz-simple,id=auth0,identity=${dn.replace(/,/g, ',,')}`;

async function qemuParams(qemu: QemuProcess, params: Record<string, unknown>): Promise<void> {
  await qemu.execute('migrate-set-parameters', params);
}

for (const kind of ['x509', 'psk'] as const) {
  for (const multifd of [false, true]) {
    const how = `${kind}, ${multifd ? 'multifd' : 'one channel'}`;
    const caps = multifd ? ['multifd'] : [];
    const livemigCaps = multifd ? ['--cap', 'multifd'] : [];

    test(`QEMU 7.2 -> livemig over TLS (${how}${kind === 'x509' ? ', tls-authz on livemig' : ''}): RAM byte for byte`, { skip, timeout: 120_000 }, async (t) => {
      const ram = seededRam(100 + runIndex++);
      let qemu: QemuProcess | undefined;
      let livemig: LivemigProcess | undefined;
      try {
        const authz = kind === 'x509' ? ['--object', authzObject(suite.pki.clientDn), '--param', 'tls-authz=auth0'] : [];
        livemig = startLivemigNone(['--incoming', 'tcp:127.0.0.1:0', '--verify', '--object', credsObject(kind, 'server'), '--param', 'tls-creds=tls0', ...authz, ...livemigCaps]);
        const address = await livemigListening(livemig);
        qemu = await startQemuNone({ ramFile: join(suite.dir, `qemu-ram-${runIndex}.bin`), ramSizeBytes: RAM_BYTES, contents: ram, args: ['-object', credsObject(kind, 'client')] });
        await setQemuCapabilities(qemu, caps); // no return-path: QEMU then never reads its channels (see TicketHold)
        await qemuParams(qemu, { 'tls-creds': 'tls0' });
        const started = Date.now();
        await qemu.execute('migrate', { uri: address });
        assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed']), 'completed', `QEMU: ${qemu.stderr}; livemig: ${livemig.stderr}`);
        const loaded = await livemig.waitFor('loaded');
        const resumed = await livemig.waitFor('resumed');
        t.diagnostic(`migrated in ${Date.now() - started} ms`);
        assert.equal(resumed.started, true);
        assert.equal(loaded.ramHash, sha256(ram), "livemig loaded exactly QEMU's RAM");
        if (multifd) {
          const info = (await qemu.execute('query-migrate')) as { ram: { 'multifd-bytes': number } };
          assert.ok(info.ram['multifd-bytes'] > 8 << 20, `pages went over the multifd channels: ${info.ram['multifd-bytes']} bytes`);
        }
      } finally {
        await livemig?.stop();
        await qemu?.stop();
      }
    });

    test(`livemig -> QEMU 7.2 over TLS (${how}${kind === 'x509' ? ', tls-hostname, tls-authz on QEMU' : ''}): RAM byte for byte`, { skip, timeout: 120_000 }, async (t) => {
      const seed = 200 + runIndex++;
      const ramFile = join(suite.dir, `qemu-ram-${runIndex}.bin`);
      let qemu: QemuProcess | undefined;
      let livemig: LivemigProcess | undefined;
      try {
        const authz = kind === 'x509' ? ['-object', authzObject(suite.pki.clientDn)] : [];
        qemu = await startQemuNone({ ramFile, ramSizeBytes: RAM_BYTES, incoming: 'defer', args: ['-object', credsObject(kind, 'server'), ...authz] });
        await setQemuCapabilities(qemu, caps);
        await qemuParams(qemu, { 'tls-creds': 'tls0', ...(kind === 'x509' ? { 'tls-authz': 'auth0' } : {}) });
        const address = await qemuListen(qemu);
        const hostname = kind === 'x509' ? ['--param', 'tls-hostname=localhost'] : [];
        const started = Date.now();
        livemig = startLivemigNone(['--pattern', `random:${seed}`, '--migrate-to', address, '--migrate-after-ms', '0', '--object', credsObject(kind, 'client'), '--param', 'tls-creds=tls0', ...hostname, ...livemigCaps]);
        const completed = await livemig.waitFor('completed').catch((err: Error) => {
          const failed = livemig!.events.find((e) => e.event === 'failed');
          throw new Error(`${failed ? failed.info['error-desc'] : err.message}; QEMU: ${qemu!.stderr}`);
        });
        t.diagnostic(`migrated in ${Date.now() - started} ms, downtime ${completed.info.downtime} ms`);
        assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed']), 'completed', qemu.stderr);
        assert.equal(((await qemu.execute('query-status')) as { status: string }).status, 'running');
        const expected = seededRam(seed);
        assert.ok(Buffer.from(await readQemuRam({ ramFile })).equals(Buffer.from(expected)), "QEMU's RAM equals livemig's");
        if (multifd) assert.ok(completed.info.ram['multifd-bytes'] > 8 << 20, `pages went over the multifd channels: ${completed.info.ram['multifd-bytes']} bytes`);
      } finally {
        await livemig?.stop();
        await qemu?.stop();
      }
    });
  }
}

test('failures with QEMU as the source: livemig refuses it with the reason and keeps waiting; QEMU keeps its guest running', { skip, timeout: 120_000 }, async () => {
  const cases: Array<{ name: string; livemig: string[]; qemuCreds: string; params?: Record<string, unknown>; reason: RegExp }> = [
    { name: 'client certificate not authorized', livemig: ['--object', credsObject('x509', 'server'), '--object', authzObject(suite.pki.clientDn), '--param', 'tls-creds=tls0', '--param', 'tls-authz=auth0'], qemuCreds: credsObject('x509', 'client', suite.pki.clientIntruder), reason: /C=GB,O=livemig test,CN=intruder\.example' is not allowed by tls-authz 'auth0'/ },
    { name: 'PSK mismatch', livemig: ['--object', credsObject('psk', 'server', suite.pki.pskB), '--param', 'tls-creds=tls0'], qemuCreds: credsObject('psk', 'client', suite.pki.pskA), reason: /TLS handshake failed/ },
    { name: 'a plaintext QEMU', livemig: ['--object', credsObject('x509', 'server'), '--param', 'tls-creds=tls0'], qemuCreds: '', reason: /did not start a TLS handshake/ },
    { name: 'QEMU with TLS, livemig without', livemig: [], qemuCreds: credsObject('x509', 'client'), reason: /a TLS handshake, but this destination has no tls-creds/ },
  ];
  for (const c of cases) {
    let qemu: QemuProcess | undefined;
    let livemig: LivemigProcess | undefined;
    try {
      livemig = startLivemigNone(['--incoming', 'tcp:127.0.0.1:0', ...c.livemig]);
      const address = await livemigListening(livemig);
      qemu = await startQemuNone({ ramFile: join(suite.dir, `qemu-fail-${runIndex++}.bin`), ramSizeBytes: RAM_BYTES, contents: seededRam(7), args: c.qemuCreds ? ['-object', c.qemuCreds] : [] });
      // Without a return path a QEMU source calls a migration completed once its socket took the bytes.
      await setQemuCapabilities(qemu, ['return-path']);
      if (c.qemuCreds) await qemuParams(qemu, { 'tls-creds': 'tls0' });
      await qemu.execute('migrate', { uri: address });
      assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed']), 'failed', `${c.name}: QEMU's migration fails`);
      assert.equal(((await qemu.execute('query-status')) as { status: string }).status, 'running', `${c.name}: QEMU's guest runs on`);
      const rejected = await livemig.waitFor('rejected', () => true, 15_000);
      assert.match(String(rejected.reason), c.reason, `${c.name}: livemig's reason`);
      assert.equal(livemig.exitCode, null, `${c.name}: livemig still waits`);
    } finally {
      await livemig?.stop();
      await qemu?.stop();
    }
  }
});

test('failures with QEMU as the destination: the livemig source says why and its guest runs on', { skip, timeout: 120_000 }, async () => {
  const cases: Array<{ name: string; qemuArgs: string[]; qemuParams: Record<string, unknown>; livemig: string[]; reason: RegExp }> = [
    { name: 'not authorized by QEMU', qemuArgs: ['-object', credsObject('x509', 'server'), '-object', authzObject(suite.pki.clientDn)], qemuParams: { 'tls-creds': 'tls0', 'tls-authz': 'auth0' }, livemig: ['--object', credsObject('x509', 'client', suite.pki.clientIntruder), '--param', 'tls-creds=tls0'], reason: /destination closed the connection|refused our certificate|TLS/ },
    { name: "QEMU's certificate does not carry tls-hostname", qemuArgs: ['-object', credsObject('x509', 'server')], qemuParams: { 'tls-creds': 'tls0' }, livemig: ['--object', credsObject('x509', 'client'), '--param', 'tls-creds=tls0', '--param', 'tls-hostname=wrong.example'], reason: /does not name the host we expect/ },
    { name: 'PSK mismatch', qemuArgs: ['-object', credsObject('psk', 'server', suite.pki.pskB)], qemuParams: { 'tls-creds': 'tls0' }, livemig: ['--object', credsObject('psk', 'client', suite.pki.pskA), '--param', 'tls-creds=tls0'], reason: /TLS handshake .*failed/ },
    { name: 'a plaintext QEMU', qemuArgs: [], qemuParams: {}, livemig: ['--object', credsObject('x509', 'client'), '--param', 'tls-creds=tls0', '--param', 'tls-hostname=localhost'], reason: /TLS handshake .*failed/ },
    { name: 'QEMU with TLS, livemig without', qemuArgs: ['-object', credsObject('x509', 'server')], qemuParams: { 'tls-creds': 'tls0' }, livemig: [], reason: /if it expects TLS, set tls-creds here too/ },
  ];
  for (const c of cases) {
    let qemu: QemuProcess | undefined;
    let livemig: LivemigProcess | undefined;
    try {
      qemu = await startQemuNone({ ramFile: join(suite.dir, `qemu-fail-${runIndex++}.bin`), ramSizeBytes: RAM_BYTES, incoming: 'defer', args: c.qemuArgs });
      if (Object.keys(c.qemuParams).length) await qemuParams(qemu, c.qemuParams);
      const address = await qemuListen(qemu);
      livemig = startLivemigNone(['--pattern', 'random:5', '--migrate-to', address.replace('127.0.0.1', 'localhost'), '--migrate-after-ms', '0', ...c.livemig]);
      const failed = await livemig.waitFor('failed', () => true, 30_000);
      assert.match(String(failed.info['error-desc']), c.reason, `${c.name}: livemig's reason`);
      assert.doesNotMatch(String(failed.info['error-desc']), /outcome|may run/, `${c.name}: the guest stays with the source`);
    } finally {
      await livemig?.stop();
      await qemu?.stop();
    }
  }
});
