/**
 * The ws: transport: URIs, a live migration between two `livemig run`
 * processes over a WebSocket, a cut connection, and what a destination does
 * with strangers (wrong path, bytes that are not HTTP, text frames).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { createTestMachine, type TestMachine } from '../src/machine/index.js';
import { OutgoingMigration, type MigrationParameters } from '../src/migration/index.js';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { queryMigrate, socketAddress } from '../src/monitor/query-migrate.js';
import { connectOutgoing, formatMigrationUri, listenIncoming, parseMigrationUri, TransportError, webSocketChannel, type MinimalWebSocket } from '../src/transport/index.js';
import type { MigrationChannel } from '../src/wire/channel.js';
import { build } from 'esbuild';
import { chromium } from 'playwright-core';
import { CHROMIUM_PATH, chromiumMissing } from '../scripts/chart-check.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { LivemigProcess } from './helpers/livemig-process.js';

const RAM = '32M';
const RAM_BYTES = 32 << 20;

async function waitUntil(condition: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function sourceMachine(): Promise<TestMachine> {
  const machine = await createTestMachine({ ramSizeBytes: RAM_BYTES, dirtyRatePagesPerSecond: 5_000, serialEveryPasses: 1 });
  await waitUntil(() => machine.stats().pagesWritten > 1000);
  return machine;
}

/** The guest keeps running: pages are written while we watch. */
async function assertGuestRuns(machine: TestMachine): Promise<void> {
  assert.equal(machine.running, true, 'source guest running');
  const before = machine.stats().pagesWritten;
  await waitUntil(() => machine.stats().pagesWritten > before + 100, 10_000);
}

/** A migration to `uri` at 8 MB/s (about 4 s for 32 MiB: slow enough to be cut in the middle), once `afterBytes` are sent. */
async function slowMigrationUnderWay(machine: TestMachine, uri: string, afterBytes: number, params: Partial<MigrationParameters> = {}): Promise<OutgoingMigration> {
  const migration = new OutgoingMigration(machine);
  migration.setParameters({ 'max-bandwidth': 8_000_000, ...params });
  migration.start(uri);
  await waitUntil(() => (queryMigrate(migration).ram?.transferred ?? 0) > afterBytes, 30_000);
  return migration;
}

function refusal(uri: string, code: string, pattern: RegExp): void {
  assert.throws(
    () => parseMigrationUri(uri),
    (err: unknown) => err instanceof TransportError && err.code === code && pattern.test(err.message) && err.message.includes(uri),
    uri,
  );
}

test('ws: URIs: the forms taken, and bad forms refused naming what is wrong', () => {
  assert.deepEqual(parseMigrationUri('ws://127.0.0.1:4444/migrate'), { kind: 'ws', uri: 'ws://127.0.0.1:4444/migrate', host: '127.0.0.1', port: 4444, path: '/migrate' });
  assert.deepEqual(parseMigrationUri('ws://[::1]:0/a/b'), { kind: 'ws', uri: 'ws://[::1]:0/a/b', host: '::1', port: 0, path: '/a/b' });
  assert.equal((parseMigrationUri('ws://example.org:80') as { path: string }).path, '/', 'no path is /');
  for (const uri of ['ws://127.0.0.1:4444/migrate', 'ws://[::1]:1/x', 'ws://host-1.example:65535/vm%201']) assert.equal(formatMigrationUri(parseMigrationUri(uri)), uri);

  refusal('ws:127.0.0.1:4444/x', 'bad-uri', /'\/\/' missing/);
  refusal('ws://127.0.0.1/x', 'bad-uri', /missing port \(expected ws:\/\/HOST:PORT\/PATH\)/);
  refusal('ws://:4444/x', 'bad-uri', /missing host/);
  refusal('ws:///x', 'bad-uri', /missing host and port/);
  refusal('ws://h:70000/x', 'bad-uri', /bad port '70000'/);
  refusal('ws://h:http/x', 'bad-uri', /bad port 'http'/);
  refusal('ws://::1:4444/x', 'bad-uri', /IPv6 addresses must be in brackets, e.g. ws:\/\/\[::1\]:4444\//);
  refusal('ws://[::1/x', 'bad-uri', /missing '\]'/);
  refusal('ws://user@h:1/x', 'bad-uri', /user names are not supported/);
  refusal('ws://h:1/x?token=1', 'bad-uri', /queries and fragments/);
  refusal('ws://h:1/x#frag', 'bad-uri', /queries and fragments/);
  refusal('ws://h:1/a b', 'bad-uri', /bad path '\/a b'/);
  refusal('ws://bad host:1/', 'bad-uri', /bad host 'bad host'/);
  refusal('wss://h:443/x', 'unsupported', /wss: \(WebSocket over TLS\) is not implemented/);
});

test('ws: setup failures: port 0 to connect, nobody listening, TLS asked for, multifd', async () => {
  await assert.rejects(connectOutgoing('ws://127.0.0.1:0/x'), (e: unknown) => e instanceof TransportError && e.code === 'bad-uri' && /port 0 is only for listening/.test(e.message));
  // A port nobody listens on: find one by listening and closing.
  const probe = await listenIncoming('ws://127.0.0.1:0/x');
  const freeUri = probe.address;
  await probe.close();
  await assert.rejects(connectOutgoing(freeUri), (e: unknown) => e instanceof TransportError && e.code === 'connect-failed' && e.message.includes(freeUri) && /ECONNREFUSED/.test(e.message));
  await assert.rejects(
    listenIncoming('ws://127.0.0.1:0/x', { tls: {} as never }),
    (e: unknown) => e instanceof TransportError && e.code === 'unsupported' && /wss: is not implemented/.test(e.message),
  );
  const machine = await sourceMachine();
  try {
    const migration = new OutgoingMigration(machine);
    migration.setCapabilities({ multifd: true });
    migration.start(freeUri);
    assert.equal(await migration.finished, 'failed');
    assert.match(queryMigrate(migration)['error-desc']!, /multifd is not supported by current protocol \(ws: carries one WebSocket; multifd needs tcp: or unix:\)/);
    await assertGuestRuns(machine);
  } finally {
    await machine.destroy();
  }
});

test("query-migrate's socket-address for a ws: listener: the TCP socket as inet, the full URI beside it", () => {
  assert.deepEqual(socketAddress('ws://127.0.0.1:4444/migrate'), { type: 'inet', host: '127.0.0.1', port: '4444', ipv4: true, 'x-livemig-uri': 'ws://127.0.0.1:4444/migrate' });
  assert.deepEqual(socketAddress('ws://[::1]:4444/'), { type: 'inet', host: '::1', port: '4444', ipv6: true, 'x-livemig-uri': 'ws://[::1]:4444/' });
});

test('live migration between two livemig run processes over ws:, after strangers were turned away', { timeout: 120_000 }, async () => {
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', RAM, '--incoming', 'ws://127.0.0.1:0/migrate', '--verify']);
  let src: LivemigProcess | undefined;
  try {
    const { address } = await dst.waitFor('listening');
    assert.match(address, /^ws:\/\/127\.0\.0\.1:\d+\/migrate$/);
    const { port } = new URL(address);

    // A WebSocket for another path: 404, and the destination keeps waiting.
    const wrongPath = address.replace('/migrate', '/elsewhere');
    await assert.rejects(connectOutgoing(wrongPath), (e: unknown) => e instanceof TransportError && e.code === 'connect-failed' && /404.*nothing listens on this path/.test(e.message));
    await dst.waitFor('rejected', (e) => /path "\/elsewhere" was refused with 404/.test(e.reason));

    // Plain HTTP on the right path: 426; bytes that are not HTTP at all: 400.
    const http = await fetch(`http://127.0.0.1:${port}/migrate`);
    assert.equal(http.status, 426);
    const garbage = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(port), '127.0.0.1', () => socket.write(Buffer.from([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3, 0xff, 0x00, 0x0d, 0x0a, 0x0d, 0x0a])));
      let answer = '';
      socket.setEncoding('latin1').on('data', (s: string) => (answer += s));
      socket.on('close', () => resolve(answer));
      socket.on('error', reject);
    });
    assert.match(garbage, /^HTTP\/1\.1 400 Bad Request/);
    await dst.waitFor('rejected', (e) => /not a WebSocket handshake/.test(e.reason));

    // A WebSocket on the right path that sends a text frame: dropped, with the reason.
    const stranger = new WebSocket(address);
    await new Promise((resolve, reject) => stranger.once('open', resolve).once('error', reject));
    stranger.send('hello, I am not a migration stream');
    const closedWith = await new Promise<number>((resolve) => stranger.once('close', (code) => resolve(code)));
    assert.ok(closedWith === 1003 || closedWith === 4001, `stranger closed with ${closedWith}`);
    await dst.waitFor('rejected', (e) => /text frame .*binary frames only/.test(e.reason));

    src = LivemigProcess.start(['--machine', 'test', '--ram', RAM, '--dirty-rate', '5000', '--verify', '--migrate-to', address, '--migrate-after-ms', '200']);
    const done = await src.waitFor('completed', () => true, 60_000).catch((err: Error) => {
      const failed = src!.events.find((e) => e.event === 'failed');
      throw new Error(failed ? JSON.stringify(failed.info?.['error-desc']) : `${err.message}: ${src!.stderr}`);
    });
    assert.equal(done.info.status, 'completed');
    const migrated = await src.waitFor('migrated');
    const loaded = await dst.waitFor('loaded');
    assert.equal(loaded.memoryCheck.ok, true, `the destination's memory check: ${loaded.memoryCheck.reason}`);
    assert.equal(loaded.ramHash, migrated.ramHash, "RAM as loaded equals the source's at stop");
    const resumed = await dst.waitFor('resumed');
    assert.equal(resumed.started, true);
    // The guest keeps running there.
    await dst.waitFor('guest', (e) => e.passes > loaded.cpu.passCount, 30_000);
  } finally {
    await src?.stop();
    await dst.stop();
  }
});

test('ws: the destination killed mid-stream: the source fails with a clear error, its guest keeps running', { timeout: 120_000 }, async () => {
  const machine = await sourceMachine();
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', RAM, '--incoming', 'ws://127.0.0.1:0/migrate']);
  try {
    const { address } = await dst.waitFor('listening');
    const migration = await slowMigrationUnderWay(machine, address, 4 << 20);
    dst.child.kill('SIGKILL');
    assert.equal(await migration.finished, 'failed');
    const why = queryMigrate(migration)['error-desc']!;
    assert.ok(why.includes(address), `the error names the URI: ${why}`);
    assert.match(why, /connection closed|abnormal closure|ECONNRESET|write failed/);
    await assertGuestRuns(machine);
  } finally {
    await dst.stop();
    await machine.destroy();
  }
});

test('ws: the source aborts: the destination reports the peer closed the stream and does not start the guest', { timeout: 60_000 }, async () => {
  const machine = await sourceMachine();
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', RAM, '--incoming', 'ws://127.0.0.1:0/migrate']);
  try {
    const { address } = await dst.waitFor('listening');
    const migration = await slowMigrationUnderWay(machine, address, 2 << 20);
    migration.cancel('test cancels');
    assert.equal(await migration.finished, 'cancelled');
    const failed = await dst.waitFor('failed');
    assert.match(failed.error, /closed|aborted|cancel/);
    await dst.exited;
    assert.equal(dst.exitCode, 1);
    await assertGuestRuns(machine);
  } finally {
    await dst.stop();
    await machine.destroy();
  }
});

test('ws: postcopy: the return path carries page requests; the guest runs on the destination and its memory check passes', { timeout: 120_000 }, async () => {
  // The unthrottled test workload, as test/postcopy.test.ts: pre-copy alone would not converge at 50 ms.
  const machine = await createTestMachine({ ramSizeBytes: 64 << 20, serialEveryPasses: 1 });
  await waitUntil(() => machine.stats().passes >= 2);
  const dir = await mkdtemp(join(tmpdir(), 'livemig-ws-postcopy-'));
  const qmpPath = join(dir, 'dst.qmp');
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', '64M', '--incoming', 'ws://127.0.0.1:0/migrate', '--qmp', `unix:${qmpPath}`, '--cap', 'postcopy-ram']);
  let qmp: QmpClient | undefined;
  try {
    const { address } = await dst.waitFor('listening');
    qmp = await QmpClient.connect(`unix:${qmpPath}`, { retryForMs: 10_000 });
    const listening = (await qmp.execute('query-migrate')) as { 'socket-address': Array<Record<string, unknown>> };
    assert.equal(listening['socket-address'][0]!['x-livemig-uri'], address);
    const migration = new OutgoingMigration(machine);
    migration.setCapabilities({ 'postcopy-ram': true });
    migration.setParameters({ 'downtime-limit': 50 });
    const statuses: string[] = [];
    migration.on('status', (status) => statuses.push(status));
    migration.start(address);
    await waitUntil(() => (migration.snapshot().ram?.completedRounds ?? 0) >= 1 || migration.status !== 'active');
    migration.startPostcopy();
    assert.equal(await migration.finished, 'completed', queryMigrate(migration)['error-desc']);
    assert.deepEqual(statuses, ['setup', 'active', 'postcopy-active', 'completed']);
    assert.ok(queryMigrate(migration).ram!['postcopy-bytes'] > 0, 'RAM went after the switch');
    assert.equal((await dst.waitFor('resumed')).started, true);
    const first = await dst.waitFor('guest', (e) => e.running, 10_000);
    await dst.waitFor('guest', (e) => e.passes > first.passes, 20_000, dst.events.indexOf(first) + 1);
    await qmp.execute('stop');
    const check = (await qmp.execute('x-livemig-check-guest')) as { memoryCheck: { ok: boolean; reason?: string } };
    assert.equal(check.memoryCheck.ok, true, `the guest's memory check on the destination: ${check.memoryCheck.reason}`);
  } finally {
    await qmp?.close().catch(() => {});
    await dst.stop();
    await machine.destroy();
    await rm(dir, { recursive: true, force: true });
  }
});

test('ws: over QMP: migrate-incoming listens on a ws: URI (query-migrate names it), migrate sends there', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-ws-qmp-'));
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', RAM, '--incoming', 'defer', '--qmp', `unix:${join(dir, 'dst.qmp')}`, '--verify']);
  const src = LivemigProcess.start(['--machine', 'test', '--ram', RAM, '--dirty-rate', '2000', '--qmp', `unix:${join(dir, 'src.qmp')}`]);
  const clients: QmpClient[] = [];
  try {
    const dstQmp = await QmpClient.connect(`unix:${join(dir, 'dst.qmp')}`, { retryForMs: 10_000 });
    clients.push(dstQmp);
    await dstQmp.execute('migrate-incoming', { uri: 'ws://127.0.0.1:0/qmp-migrate' });
    const listening = (await dstQmp.execute('query-migrate')) as { 'socket-address': Array<Record<string, any>> };
    const [where] = listening['socket-address'];
    assert.equal(where!.type, 'inet');
    const address = where!['x-livemig-uri'] as string;
    assert.equal(address, `ws://127.0.0.1:${where!.port}/qmp-migrate`);

    const srcQmp = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 10_000 });
    clients.push(srcQmp);
    await assert.rejects(srcQmp.execute('migrate', { uri: 'ws://127.0.0.1/qmp-migrate' }), /Parameter 'uri' expects a valid migration URI: .*missing port/);
    await srcQmp.execute('migrate', { uri: address });
    for (let i = 0; ; i++) {
      const info = (await srcQmp.execute('query-migrate')) as { status: string; 'error-desc'?: string };
      if (info.status === 'completed') break;
      assert.ok(!['failed', 'cancelled'].includes(info.status) && i < 600, `source: ${info.status} ${info['error-desc'] ?? ''}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const loaded = await dst.waitFor('loaded');
    assert.equal(loaded.memoryCheck.ok, true, `the destination's memory check: ${loaded.memoryCheck.reason}`);
    assert.equal((await dst.waitFor('resumed')).started, true);
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    await src.stop();
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

/** Bytes where byte i is a function of i and a seed, so a reordered, lost or doubled chunk shows. */
function pattern(lengthBytes: number, seed: number): Uint8Array {
  const out = new Uint8Array(lengthBytes);
  for (let i = 0; i < lengthBytes; i++) out[i] = (i * 31 + (i >>> 12) + seed) & 0xff;
  return out;
}

/** Read a channel's input to its end. */
async function readAll(channel: MigrationChannel): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (let c = await channel.input!.read(); c !== null; c = await channel.input!.read()) {
    chunks.push(c.slice());
    total += c.length;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

async function writeAll(channel: MigrationChannel, bytes: Uint8Array, chunkBytes: number): Promise<void> {
  for (let at = 0; at < bytes.length; at += chunkBytes) await channel.output!.write(bytes.slice(at, at + chunkBytes));
  await channel.output!.close();
}

test('the channel over the standard WebSocket interface only (as in a browser: arraybuffer, bufferedAmount, no pause): both directions, half-closed in turn', { timeout: 60_000 }, async () => {
  const listener = await listenIncoming('ws://127.0.0.1:0/std');
  try {
    const accepted = listener.accept();
    const raw = new WebSocket(listener.address);
    await new Promise((resolve, reject) => raw.once('open', resolve).once('error', reject));
    const client = webSocketChannel(raw as unknown as MinimalWebSocket, listener.address); // no extras
    const server = await accepted;
    const stream = pattern(24 << 20, 1);
    const reply = pattern(3 << 20, 2);
    // The client's stream ends first; its return path (the server's reply) is read after that.
    const [received] = await Promise.all([readAll(server), writeAll(client, stream, 200_000)]);
    assert.ok(Buffer.from(received).equals(Buffer.from(stream)), 'the stream arrives whole and in order');
    const [back] = await Promise.all([readAll(client), writeAll(server, reply, 65_536)]);
    assert.ok(Buffer.from(back).equals(Buffer.from(reply)), 'the return path arrives whole and in order');
    await Promise.all([client.close(), server.close()]);
    await client.closed;
    await server.closed;
  } finally {
    await listener.close();
  }
});

test('a text frame on an accepted channel: read() fails naming it, the peer is closed with 1003', { timeout: 30_000 }, async () => {
  const listener = await listenIncoming('ws://127.0.0.1:0/text');
  try {
    const accepted = listener.accept();
    const raw = new WebSocket(listener.address);
    await new Promise((resolve, reject) => raw.once('open', resolve).once('error', reject));
    const server = await accepted;
    raw.send(new Uint8Array([1, 2, 3]));
    raw.send('QEVM');
    const code = new Promise<number>((resolve) => raw.once('close', (c) => resolve(c)));
    const first = await server.input!.read();
    assert.deepEqual([...first!], [1, 2, 3], 'bytes before the bad frame are delivered');
    await assert.rejects(server.input!.read(), /text frame \(4 characters\) arrived; the migration stream travels in binary frames only/);
    assert.equal(await code, 1003);
    server.abort();
  } finally {
    await listener.close();
  }
});

const noChromium = chromiumMissing();

test('headless Chromium: the channel bundled for the browser (esbuild) sends a stream to a Node listener and reads the return path', { skip: noChromium, timeout: 120_000 }, async () => {
  const bundle = await build({
    entryPoints: [join(import.meta.dirname, '..', '..', 'src', 'transport', 'websocket-channel.ts')],
    bundle: true,
    platform: 'browser',
    format: 'iife',
    globalName: 'livemigWs',
    write: false,
  });
  const script = bundle.outputFiles[0]!.text;
  assert.doesNotMatch(script, /require\(|from "node:/, 'no Node module in the browser bundle');
  const listener = await listenIncoming('ws://127.0.0.1:0/browser');
  const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: ['--no-sandbox', '--disable-gpu'] });
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    await page.addScriptTag({ content: script });
    const streamBytes = 16 << 20;
    const accepted = listener.accept();
    const inPage = page.evaluate(
      async ({ url, streamBytes }) => {
        const ws = (globalThis as any).livemigWs;
        const socket = await ws.openWebSocket(() => new WebSocket(url), url, { connectTimeoutMs: 10_000 });
        const channel = ws.webSocketChannel(socket, url);
        const stream = new Uint8Array(streamBytes);
        for (let i = 0; i < streamBytes; i++) stream[i] = (i * 31 + (i >>> 12) + 1) & 0xff;
        const started = performance.now();
        for (let at = 0; at < streamBytes; at += 256 * 1024) await channel.output.write(stream.subarray(at, at + 256 * 1024));
        await channel.output.close();
        const sentMs = performance.now() - started;
        let back = '';
        for (let c = await channel.input.read(); c !== null; c = await channel.input.read()) back += new TextDecoder().decode(c);
        await channel.close();
        return { back, sentMs };
      },
      { url: listener.address, streamBytes },
    );
    const server = await accepted;
    const received = await readAll(server);
    assert.equal(received.length, streamBytes);
    assert.ok(Buffer.from(received).equals(Buffer.from(pattern(streamBytes, 1))), 'the stream from the page arrives whole and in order');
    await server.output!.write(new TextEncoder().encode('got it'));
    await server.close();
    const { back, sentMs } = await inPage;
    assert.equal(back, 'got it');
    assert.deepEqual(errors, []);
    process.stderr.write(`browser -> node over ws: ${(streamBytes / 1e6 / (sentMs / 1000)).toFixed(0)} MB/s (${streamBytes >> 20} MiB in ${sentMs.toFixed(0)} ms)\n`);
  } finally {
    await browser.close();
    await listener.close();
  }
});

test('ws: a link that stalls mid-stream (a TCP proxy stops forwarding): the peer timeout fails the migration, the source guest runs on', { timeout: 120_000 }, async () => {
  const machine = await sourceMachine();
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', RAM, '--incoming', 'ws://127.0.0.1:0/migrate']);
  const { address } = await dst.waitFor('listening');
  const proxy = await FaultProxy.start({ targetPort: Number(new URL(address).port) });
  try {
    const migration = await slowMigrationUnderWay(machine, `ws://127.0.0.1:${proxy.port}/migrate`, 2 << 20, { 'x-livemig-peer-timeout-ms': 2000 });
    proxy.stall();
    const startedMs = Date.now();
    assert.equal(await migration.finished, 'failed');
    const why = queryMigrate(migration)['error-desc']!;
    assert.match(why, /\d+ ms|silent|stall|timeout|no progress/i, why);
    assert.ok(Date.now() - startedMs < 30_000, 'failed within the peer timeout, not hung');
    await assertGuestRuns(machine);
  } finally {
    await proxy.close();
    await dst.stop();
    await machine.destroy();
  }
});
