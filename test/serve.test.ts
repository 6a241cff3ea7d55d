/**
 * `livemig serve` from Node, with real processes and sockets: the static
 * files (content types, CSP, no traversal), the API's answers to bad input,
 * and a whole round trip of a v86 guest through serve's relays, with Node
 * standing in for the page: `livemig run --machine v86 --migrate-to ws://...`
 * as the tab migrating out, and a v86 destination (helpers/v86-destination.ts)
 * bridged to serve's WebSocket as the tab migrating in (a browser connects;
 * the bridge connects both ways the same). test/serve-browser.test.ts does it
 * in Chromium with the page itself.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { relayWebSockets } from '../src/serve/relay.js';
import { LivemigProcess } from './helpers/livemig-process.js';
import { repoRoot } from './helpers/paths.js';
import { ServeProcess } from './helpers/serve-process.js';

const RAM_BYTES = 32 * 1024 * 1024;
const serves: ServeProcess[] = [];
after(async () => {
  for (const s of serves) await s.stop();
});

async function startServe(): Promise<ServeProcess> {
  const serve = await ServeProcess.start();
  serves.push(serve);
  return serve;
}

/** A raw HTTP request line (fetch would normalize `..` away before sending it). */
async function rawGet(port: number, path: string): Promise<number> {
  const { connect } = await import('node:net');
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`));
    let text = '';
    socket.setEncoding('utf8').on('data', (s: string) => (text += s));
    socket.on('end', () => resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(text)?.[1] ?? 0)));
    socket.on('error', reject);
  });
}

test('serve: its files with their content types and a CSP on the page; nothing else on disk, whatever the path', { timeout: 60_000 }, async () => {
  const serve = await startServe();
  assert.match(serve.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
  assert.ok(serve.port > 0);
  const page = await fetch(serve.url);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
  const csp = page.headers.get('content-security-policy') ?? '';
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self' 'wasm-unsafe-eval'/);
  assert.match(await page.text(), /Migrate to server/);
  for (const [path, type] of [
    ['/page.js', /^text\/javascript/],
    ['/page.css', /^text\/css/],
    ['/v86/libv86.mjs', /^text\/javascript/],
    ['/v86/v86.wasm', /^application\/wasm$/],
    ['/guests/livemig-test-kernel.bin', /^application\/octet-stream$/],
  ] as const) {
    const r = await serve.get(path);
    assert.equal(r.status, 200, path);
    assert.match(r.type, type, path);
  }
  const kernel = await fetch(new URL('/guests/livemig-test-kernel.bin', serve.url));
  assert.deepEqual(Buffer.from(await kernel.arrayBuffer()), readFileSync(`${repoRoot}/guests/multiboot/livemig-test-kernel.bin`));

  const missing = await serve.get('/nothing-here.js');
  assert.equal(missing.status, 404);
  assert.match(JSON.parse(missing.body).error, /no file \/nothing-here\.js here/);
  for (const path of ['/../package.json', '/v86/../../package.json', '/%2e%2e/package.json', '/v86/..%2f..%2fpackage.json', '/web/page.js', '/dist/browser/livemig-core.js', '//etc/passwd']) {
    assert.equal(await rawGet(serve.port, path), 404, path);
  }
  assert.equal((await serve.post('/page.js', {})).status, 405);
});

test('serve: bad API input gets a clear 4xx naming what was wrong, and no VM starts', { timeout: 60_000 }, async () => {
  const serve = await startServe();
  const cases: Array<[string, unknown, Record<string, string> | undefined, number, RegExp]> = [
    ['/api/to-server', '{}', { 'content-type': 'text/plain' }, 415, /must be JSON \(content-type application\/json\), not text\/plain/],
    ['/api/to-server', '{ram', undefined, 400, /not JSON/],
    ['/api/to-server', '[1]', undefined, 400, /a JSON object/],
    ['/api/to-server', { ramSizeBytes: 1000 }, undefined, 400, /ramSizeBytes: a positive multiple of 131072 .*not 1000/],
    ['/api/to-server', { ramSizeBytes: '128M' }, undefined, 400, /ramSizeBytes: .*not "128M"/],
    ['/api/to-server', { ramSizeBytes: 4 << 30 }, undefined, 400, /up to 1073741824/],
    ['/api/to-server', { ram: 1 }, undefined, 400, /unknown field "ram" \(known: ramSizeBytes\)/],
    ['/api/to-server', 'x'.repeat(20_000), undefined, 413, /larger than 16384 bytes/],
    ['/api/to-tab', {}, undefined, 409, /no VM runs on the server/],
    ['/api/to-tab/confirm', { running: true }, undefined, 409, /no move to a tab is under way/],
    ['/api/to-tab/confirm', { running: 'yes' }, undefined, 400, /running: true .* or false/],
    ['/api/nope', {}, undefined, 404, /no API \/api\/nope/],
    ['/api/to-server', { ramSizeBytes: RAM_BYTES }, { 'content-type': 'application/json', origin: 'http://evil.example' }, 403, /requests from http:\/\/evil\.example are refused/],
  ];
  for (const [path, body, headers, status, error] of cases) {
    const r = await serve.post(path, body, headers);
    assert.equal(r.status, status, `${path} ${JSON.stringify(body).slice(0, 40)}: ${JSON.stringify(r.json)}`);
    assert.match(r.json.error, error);
  }
  assert.equal((await serve.get('/api/to-server')).status, 405);
  // A WebSocket on a path never handed out, or from another origin, is refused.
  for (const [path, origin, code] of [
    ['/ws/to-server/00000000-0000-0000-0000-000000000000', undefined, 404],
    ['/ws/elsewhere', undefined, 404],
    ['/ws/to-tab/00000000-0000-0000-0000-000000000000', 'http://evil.example', 403],
  ] as const) {
    const refused = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${serve.port}${path}`, origin ? { origin } : {});
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => resolve(101));
      ws.on('error', () => {});
    });
    assert.equal(refused, code, path);
  }
  assert.deepEqual(await serve.status(), { vm: null, move: null });
});

/** The tab migrating in, played by a v86 destination listening on loopback, bridged to serve's WebSocket. */
async function destinationThroughServe(serve: ServeProcess, wsPath: string): Promise<{ events: any[]; done: Promise<number | null> }> {
  const script = fileURLToPath(new URL('./helpers/v86-destination.js', import.meta.url));
  const child = spawn(process.execPath, [script, String(RAM_BYTES / 1024 / 1024), 'ws://127.0.0.1:0/tab'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const events: any[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => events.push(JSON.parse(line)));
  const done = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + 30_000;
  while (!events.some((e) => e.event === 'listening')) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error('the v86 destination did not listen');
    await new Promise((r) => setTimeout(r, 50));
  }
  const opened = (ws: WebSocket): Promise<WebSocket> => new Promise((resolve, reject) => ws.once('open', () => resolve(ws)).once('error', reject));
  const toDestination = await opened(new WebSocket(events.find((e) => e.event === 'listening').address, { perMessageDeflate: false }));
  const toServe = await opened(new WebSocket(`ws://127.0.0.1:${serve.port}${wsPath}`, { perMessageDeflate: false, origin: serve.url.replace(/\/$/, '') }));
  void relayWebSockets(toServe, toDestination);
  return { events, done };
}

test('serve: a v86 guest moves to the server and back through serve\'s relays; memory checks pass on both sides, the guest runs on each in turn', { timeout: 240_000 }, async () => {
  const serve = await startServe();
  // To the server: the "tab" is a livemig run source that connects to serve's path.
  const grant = await serve.post('/api/to-server', { ramSizeBytes: RAM_BYTES });
  assert.equal(grant.status, 201, JSON.stringify(grant.json));
  assert.match(grant.json.wsPath, /^\/ws\/to-server\/[0-9a-f-]{36}$/);
  const pid = grant.json.pid as number;
  assert.equal((await serve.post('/api/to-server', { ramSizeBytes: RAM_BYTES })).status, 409, 'one VM on the server at a time');
  const source = LivemigProcess.start(['--machine', 'v86', '--ram', String(RAM_BYTES), '--migrate-to', `ws://127.0.0.1:${serve.port}${grant.json.wsPath}`, '--migrate-after-ms', '1000', '--serial', 'none']);
  const completed = await source.waitFor('completed', () => true, 120_000);
  assert.ok(completed.info.downtime >= 0);
  await source.exited;
  assert.equal(source.exitCode, 0, source.stderr);
  // The path was for one connection only.
  const reuse = await new Promise<number>((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${serve.port}${grant.json.wsPath}`);
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.on('open', () => resolve(101));
    ws.on('error', () => {});
  });
  assert.equal(reuse, 404);

  const running = await serve.waitForStatus('the server VM running', (s) => s.vm?.phase === 'running' && s.vm.memoryCheck !== undefined);
  assert.equal(running.vm.pid, pid);
  assert.equal(running.vm.memoryCheck.ok, true, JSON.stringify(running.vm.memoryCheck));
  assert.equal(running.move.direction, 'to-server');
  assert.equal(running.move.phase, 'completed');
  // It keeps running there: the instruction count grows.
  const first = await serve.waitForStatus('a guest report', (s) => s.vm?.running === true && s.vm.instructions > 0);
  const later = await serve.waitForStatus('the count to move', (s) => s.vm?.instructions > first.vm.instructions, 10_000);
  assert.ok(later.vm.instructions > first.vm.instructions);
  assert.match(later.vm.serialTail, /B/, "the guest's serial output on the server");

  // And back: the "tab" connects to serve, serve has the child migrate to it.
  const back = await serve.post('/api/to-tab', {});
  assert.equal(back.status, 201, JSON.stringify(back.json));
  const destination = await destinationThroughServe(serve, back.json.wsPath);
  const migrated = await serve.waitForStatus('the server side to complete', (s) => s.vm?.phase === 'migrated' || s.move?.phase === 'failed', 120_000);
  assert.equal(migrated.move.phase, 'completed', JSON.stringify(migrated.move));
  assert.equal(migrated.vm.phase, 'migrated', 'paused on the server until the tab confirms');
  assert.equal(migrated.move.info.status, 'completed');
  assert.ok(migrated.move.info['total-time'] > 0 && migrated.move.info.downtime >= 0);
  assert.equal(await destination.done, 0);
  const loaded = destination.events.find((e) => e.event === 'loaded');
  assert.equal(loaded.memoryCheck.ok, true, JSON.stringify(loaded.memoryCheck));
  assert.ok(destination.events.find((e) => e.event === 'guest').bs >= 3, 'the guest ran in the "tab"');
  const confirmed = await serve.post('/api/to-tab/confirm', { running: true });
  assert.deepEqual(confirmed.json, { where: 'tab' });
  const gone = await serve.status();
  assert.equal(gone.vm, null);
  assert.match(gone.lastVmEnd, new RegExp(`moved to a tab; its livemig run \\(pid ${pid}\\) quit`));
  assert.throws(() => process.kill(pid, 0), 'the server VM process exited');
});

test('serve: when the tab cannot take the VM back, it keeps running on the server', { timeout: 180_000 }, async () => {
  const serve = await startServe();
  const grant = await serve.post('/api/to-server', { ramSizeBytes: RAM_BYTES });
  const source = LivemigProcess.start(['--machine', 'v86', '--ram', String(RAM_BYTES), '--migrate-to', `ws://127.0.0.1:${serve.port}${grant.json.wsPath}`, '--migrate-after-ms', '500', '--serial', 'none']);
  await source.waitFor('completed', () => true, 120_000);
  await serve.waitForStatus('the server VM running', (s) => s.vm?.phase === 'running');
  // A "tab" that connects and then drops the connection mid-stream.
  const back = await serve.post('/api/to-tab', {});
  const ws = new WebSocket(`ws://127.0.0.1:${serve.port}${back.json.wsPath}`);
  await new Promise((resolve) => ws.once('message', resolve));
  ws.terminate();
  const failed = await serve.waitForStatus('the move to fail', (s) => s.move?.phase === 'failed', 60_000);
  assert.match(failed.move.error, /the VM keeps running on the server/);
  const kept = await serve.waitForStatus('the guest to run on the server again', (s) => s.vm?.phase === 'running' && s.vm.running === true, 20_000);
  const before = kept.vm.instructions;
  await serve.waitForStatus('its count to move', (s) => s.vm?.instructions > before, 10_000);
  // serve's end ends its VM.
  const pid = kept.vm.pid as number;
  assert.equal(await serve.stop(), 0);
  await new Promise((r) => setTimeout(r, 500));
  assert.throws(() => process.kill(pid, 0), 'the server VM ended with serve');
});
