/**
 * The migration engine and a v86 machine in real headless Chromium, from
 * the browser bundle (dist/browser/livemig-core.js) and v86's own build
 * (node_modules/v86/build/libv86.mjs and v86.wasm, loaded by the page):
 *
 * (a) in one page, our multiboot test kernel in a v86 machine migrated live
 *     through an in-memory channel into a second v86 machine of the same
 *     page (migrateOut / migrateIn); the destination's memory check passes
 *     and its guest runs on, the source's stays paused;
 * (b) browser -> Node: the page's machine migrates over ws:// to a
 *     `livemig run --machine v86 --incoming ws://... --verify --json` child;
 *     Node's memory check of RAM as loaded passes and its guest keeps running;
 * (c) Node -> browser: the page connects to a ws:// URL where a Node v86
 *     machine waits (the page cannot listen) and receives its migration on
 *     that connection (migrateIn; Node's OutgoingMigration over the accepted
 *     channel, openedChannels()).
 *
 * Also: what a page cannot do (multifd, tcp:) is refused with a clear error.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { BROWSER_BUNDLE } from '../scripts/build-browser.js';
import { CHROMIUM_PATH, chromiumMissing } from '../scripts/chart-check.js';
import { createV86Machine } from '../src/machine/v86-machine.js';
import { MigrationConfig, OutgoingMigration, openedChannels } from '../src/migration/index.js';
import { listenIncoming } from '../src/transport/incoming.js';
import { LivemigProcess } from './helpers/livemig-process.js';
import { repoRoot } from './helpers/paths.js';
import { serveFiles, type StaticServer } from './helpers/static-server.js';

const KERNEL = join(repoRoot, 'guests', 'multiboot', 'livemig-test-kernel.bin');
const V86_BUILD = dirname(createRequire(import.meta.url).resolve('v86'));
const RAM = '32M';
const RAM_BYTES = 32 << 20;

const skipBrowser = (existsSync(BROWSER_BUNDLE) ? undefined : `no ${BROWSER_BUNDLE}: run npm run build`) ?? (existsSync(KERNEL) ? undefined : `no ${KERNEL}: run guests/multiboot/build.sh`) ?? chromiumMissing();
if (skipBrowser) process.stderr.write(`browser-migration: skipped: ${skipBrowser}\n`);

// The page loads livemig's bundle and v86's own module; the tests drive it with page.evaluate.
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>livemig: v86 in a page</title>
<script type="module">
import * as livemig from '/livemig-core.js';
import { V86 } from '/v86/libv86.mjs';
window.livemig = livemig;
window.V86 = V86;
window.pageReady = true;
</script>
`;

/** Serves the page, the bundle, v86's build and the kernel; anything else is a 404 (and a failed request). */
function serve(): Promise<StaticServer> {
  return serveFiles({
    '/': () => ['text/html', PAGE],
    '/livemig-core.js': () => ['text/javascript', readFileSync(BROWSER_BUNDLE)],
    '/v86/libv86.mjs': () => ['text/javascript', readFileSync(join(V86_BUILD, 'libv86.mjs'))],
    '/v86/v86.wasm': () => ['application/wasm', readFileSync(join(V86_BUILD, 'v86.wasm'))],
    '/kernel.bin': () => ['application/octet-stream', readFileSync(KERNEL)],
  });
}

let context: BrowserContext | undefined;
let userDataDir: string | undefined;
let served: StaticServer | undefined;
before(async () => {
  if (skipBrowser) return;
  served = await serve();
  userDataDir = mkdtempSync(join(tmpdir(), 'livemig-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  await context?.close();
  served?.server.close();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

/** A fresh page with the bundle and v86 loaded; `errors` collects console errors, page errors and failed requests. */
async function openPage(): Promise<{ page: Page; errors: string[] }> {
  const page = await context!.newPage();
  const errors: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => errors.push(`page error: ${err.message}`));
  page.on('requestfailed', (req) => errors.push(`request failed: ${req.url()}`));
  await page.goto(`${served!.origin}/`, { waitUntil: 'load' });
  await page.waitForFunction(() => (globalThis as any).pageReady === true, undefined, { timeout: 30_000 });
  return { page, errors };
}

test('(a) in one page: a v86 machine migrates live through a memory channel into a second one; memory check ok, the guest runs on there', { skip: skipBrowser, timeout: 180_000 }, async (t) => {
  const { page, errors } = await openPage();
  try {
    const r = await page.evaluate(async (ramBytes) => {
      const { livemig, V86 } = globalThis as any;
      const common = { V86, wasmUrl: '/v86/v86.wasm', ramSizeBytes: ramBytes };
      const source = await livemig.createBrowserV86Machine({ ...common, multiboot: '/kernel.bin' });
      let serial = '';
      source.serial.on('data', (bytes: Uint8Array) => (serial += String.fromCharCode(...bytes)));
      // The kernel prints B after each pass over its workload range: let it write memory for a while.
      const t0 = performance.now();
      while ((serial.match(/B/g) ?? []).length < 2 && performance.now() - t0 < 60_000) await new Promise((ok) => setTimeout(ok, 20));
      const destination = await livemig.createBrowserV86Machine({ ...common, incoming: true });
      const uri = 'ws://in-page:1/memory';
      const pair = livemig.createMemoryChannelPair(uri);
      const progress: any[] = [];
      const [out, into] = await Promise.all([
        livemig.migrateOut(source, uri, { channels: livemig.openedChannels(pair.source), capabilities: { 'auto-converge': true }, onProgress: (info: any) => progress.push(info), progressIntervalMs: 50 }),
        livemig.migrateIn(destination, uri, { channels: livemig.openedChannels(pair.destination) }),
      ]);
      const instructionsAtEnd = destination.stats().instructions;
      await new Promise((ok) => setTimeout(ok, 500));
      const result = {
        out,
        into,
        serialBefore: serial,
        sourceRunning: source.running,
        destinationRunning: destination.running,
        instructionsAtEnd,
        instructionsLater: destination.stats().instructions,
        // One thread: nothing of the guest runs while this reads RAM.
        check: destination.checkMemory(),
        statuses: [...new Set(progress.map((p) => p.status))],
        lastProgress: progress.at(-1),
        sawPercent: progress.some((p) => typeof p['x-livemig-progress']?.percent === 'number'),
      };
      await source.destroy();
      await destination.destroy();
      return result;
    }, RAM_BYTES);
    t.diagnostic(`page -> page: ${JSON.stringify(r.out)}`);
    assert.match(r.serialBefore, /B/, 'the source guest ran its workload before the migration');
    assert.equal(r.out.status, 'completed', `source: ${r.out.error}`);
    assert.equal(r.into.status, 'completed', `destination: ${r.into.error}`);
    assert.equal(r.into.started, true);
    assert.ok(typeof r.out.downtimeMs === 'number' && r.out.downtimeMs >= 0, `downtime ${r.out.downtimeMs}`);
    assert.deepEqual(Object.keys(r.out.downtimePhasesMs ?? {}).sort(), ['complete', 'confirm', 'flush', 'pause'], 'where the downtime went');
    assert.ok(r.out.totalMs > 0 && r.out.bytes > 0, `total ${r.out.totalMs} ms, ${r.out.bytes} bytes`);
    assert.ok(r.into.bytes >= r.out.bytes, `the destination read the whole stream (${r.into.bytes} >= ${r.out.bytes} RAM bytes)`);
    assert.equal(r.check.ok, true, `memory check on the destination: ${r.check.reason}`);
    assert.notEqual(r.check.firstByte, 0, 'the workload had written the range');
    assert.equal(r.sourceRunning, false, 'the source stays paused: the guest runs on exactly one side');
    assert.equal(r.destinationRunning, true);
    assert.ok(r.instructionsLater > r.instructionsAtEnd, `the destination guest runs on (${r.instructionsAtEnd} -> ${r.instructionsLater} instructions)`);
    assert.ok(r.statuses.includes('active') && r.statuses.includes('completed'), `progress statuses ${r.statuses.join(', ')}`);
    assert.equal(r.sawPercent, true, 'progress carried x-livemig-progress');
    assert.equal(r.lastProgress.status, 'completed');
    assert.equal(typeof r.lastProgress.downtime, 'number');
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});

test('(b) browser -> Node over ws://: livemig run --incoming checks the memory and its guest keeps running', { skip: skipBrowser, timeout: 180_000 }, async (t) => {
  const node = LivemigProcess.start(['--machine', 'v86', '--ram', RAM, '--incoming', 'ws://127.0.0.1:0/livemig', '--verify']);
  const { page, errors } = await openPage();
  try {
    const listening = await node.waitFor('listening', () => true, 60_000);
    const address = String(listening['address']);
    assert.match(address, /^ws:\/\/127\.0\.0\.1:[1-9][0-9]*\/livemig$/);
    const r = await page.evaluate(
      async ({ ramBytes, url }) => {
        const { livemig, V86 } = globalThis as any;
        const machine = await livemig.createBrowserV86Machine({ V86, wasmUrl: '/v86/v86.wasm', ramSizeBytes: ramBytes, multiboot: '/kernel.bin' });
        let serial = '';
        machine.serial.on('data', (bytes: Uint8Array) => (serial += String.fromCharCode(...bytes)));
        const t0 = performance.now();
        while ((serial.match(/B/g) ?? []).length < 2 && performance.now() - t0 < 60_000) await new Promise((ok) => setTimeout(ok, 20));
        let progressCalls = 0;
        // The kernel rewrites its whole range every few seconds, about as fast as the page's WebSocket carries it here
        // (~60 Mbit/s with the guest on the same thread and Node unmasking in JavaScript): throttle it early and
        // allow a long downtime, so the test checks the function, not this machine's speed.
        const out = await livemig.migrateOut(machine, url, {
          capabilities: { 'auto-converge': true },
          parameters: { 'downtime-limit': 3000, 'cpu-throttle-initial': 60 },
          onProgress: () => progressCalls++,
        });
        const result = { out, progressCalls, running: machine.running, throttle: machine.stats().throttlePercent };
        await machine.destroy();
        return result;
      },
      { ramBytes: RAM_BYTES, url: address },
    );
    t.diagnostic(`page -> Node: ${JSON.stringify(r.out)}`);
    assert.equal(r.out.status, 'completed', `page: ${r.out.error}`);
    assert.ok(typeof r.out.downtimeMs === 'number', `downtime ${r.out.downtimeMs}`);
    assert.ok(r.out.bytes > 0);
    assert.ok(r.progressCalls > 0, 'onProgress was called');
    assert.equal(r.running, false, 'the page guest stays paused once Node runs it');
    const loaded = await node.waitFor('loaded', () => true, 30_000);
    assert.equal(loaded['memoryCheck']?.ok, true, `Node's memory check of RAM as loaded: ${JSON.stringify(loaded['memoryCheck'])}`);
    const resumed = await node.waitFor('resumed', () => true, 30_000);
    assert.equal(resumed['started'], true);
    // Node reports its guest every 500 ms: running, and its instruction counter moving on.
    const at = node.events.indexOf(resumed);
    const first = await node.waitFor('guest', (e) => e['running'] === true, 10_000, at + 1);
    const later = await node.waitFor('guest', (e) => e['running'] === true && e['instructions'] > first['instructions'], 10_000, node.events.indexOf(first) + 1);
    assert.ok(later['instructions'] > first['instructions'], `Node's guest runs on: ${first['instructions']} -> ${later['instructions']} instructions`);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
    await node.stop();
  }
});

test('(c) Node -> browser over ws://: the page connects to a Node v86 machine and receives its migration; memory check ok, the guest runs on in the page', { skip: skipBrowser, timeout: 180_000 }, async (t) => {
  const source = await createV86Machine({ ramSizeBytes: RAM_BYTES });
  const listener = await listenIncoming('ws://127.0.0.1:0/to-page');
  const { page, errors } = await openPage();
  try {
    let serial = '';
    source.serial.on('data', (chunk: Buffer) => (serial += chunk.toString('latin1')));
    const t0 = performance.now();
    while ((serial.match(/B/g) ?? []).length < 2 && performance.now() - t0 < 60_000) await new Promise((ok) => setTimeout(ok, 20));
    const inPage = page.evaluate(
      async ({ ramBytes, url }) => {
        const { livemig, V86 } = globalThis as any;
        const machine = await livemig.createBrowserV86Machine({ V86, wasmUrl: '/v86/v86.wasm', ramSizeBytes: ramBytes, incoming: true });
        const statuses: string[] = [];
        const into = await livemig.migrateIn(machine, url, { onProgress: (info: any) => statuses.push(info.status ?? 'listening') });
        const instructionsAtEnd = machine.stats().instructions;
        await new Promise((ok) => setTimeout(ok, 500));
        const result = { into, statuses: [...new Set(statuses)], running: machine.running, instructionsAtEnd, instructionsLater: machine.stats().instructions, check: machine.checkMemory() };
        await machine.destroy();
        return result;
      },
      { ramBytes: RAM_BYTES, url: listener.address },
    );
    // The page's connection is the channel: Node's source sends the stream on it.
    const channel = await listener.accept();
    await listener.close();
    const migration = new OutgoingMigration(source, new MigrationConfig({ capabilities: { 'auto-converge': true }, parameters: { 'downtime-limit': 1000 } }), { channels: openedChannels(channel) });
    migration.start(listener.address);
    const status = await migration.finished;
    const r = await inPage;
    const snap = migration.snapshot();
    t.diagnostic(`Node -> page: ${status}, total ${snap.totalTimeMs} ms, downtime ${snap.downtimeMs} ms, RAM ${snap.ram?.transferredBytes} bytes; page: ${JSON.stringify(r.into)}`);
    assert.equal(status, 'completed', `Node source: ${migration.error?.message}`);
    assert.equal(source.running, false, 'the Node source stays paused: the guest runs in the page');
    assert.equal(r.into.status, 'completed', `page: ${r.into.error}`);
    assert.equal(r.into.started, true);
    assert.ok(r.into.bytes > RAM_BYTES / 8, `${r.into.bytes} bytes received`);
    assert.equal(r.check.ok, true, `memory check in the page: ${r.check.reason}`);
    assert.notEqual(r.check.firstByte, 0);
    assert.equal(r.running, true);
    assert.ok(r.instructionsLater > r.instructionsAtEnd, `the page's guest runs on (${r.instructionsAtEnd} -> ${r.instructionsLater})`);
    assert.ok(r.statuses.includes('completed'), `page progress statuses ${r.statuses.join(', ')}`);
    assert.deepEqual(errors, []);
  } finally {
    await listener.close();
    await page.close();
    await source.destroy();
  }
});

test('a page refuses what it cannot do, with errors that say why', { skip: skipBrowser, timeout: 60_000 }, async () => {
  const { page, errors } = await openPage();
  try {
    const r = await page.evaluate(async () => {
      const { livemig } = globalThis as any;
      const messages: Record<string, string> = {};
      const attempt = async (name: string, run: () => Promise<unknown>): Promise<void> => {
        try {
          const result: any = await run();
          messages[name] = `resolved: ${result?.status} ${result?.error ?? ''}`;
        } catch (err) {
          messages[name] = String((err as Error).message);
        }
      };
      const channels = livemig.browserChannels();
      await attempt('tcp', () => channels.connect('tcp:127.0.0.1:4444', {}));
      await attempt('listen-unix', () => channels.listen('unix:/tmp/x.sock', {}));
      await attempt('bad-uri', () => channels.connect('ws://no-port/', {}));
      await attempt('refused-port', () => channels.connect('ws://127.0.0.1:1/none', {}));
      // The engine with a machine-less stand-in: multifd is refused before anything is touched.
      const config = new livemig.MigrationConfig({ capabilities: { multifd: true } });
      const fakeMachine = { kind: 'test', machineName: 'x', ramBlocks: () => [], startDirtyLog() {}, stopDirtyLog() {}, async syncDirtyLog() {}, async pause() {}, resume() {}, running: true, setThrottle() {}, registerDevices() {}, serial: { on() {} }, async destroy() {} };
      await attempt('multifd', async () => {
        const m = new livemig.OutgoingMigration(fakeMachine, config, { channels });
        m.start('ws://127.0.0.1:1/x');
        await m.finished;
        return { status: m.status, error: m.error?.message };
      });
      await attempt('no-kernel', () => livemig.createBrowserV86Machine({ V86: (globalThis as any).V86, wasmUrl: '/v86/v86.wasm', ramSizeBytes: 4 << 20 }));
      await attempt('bad-wasm', () => livemig.createBrowserV86Machine({ V86: (globalThis as any).V86, wasmUrl: '/v86/missing.wasm', multiboot: '/kernel.bin' }));
      return messages;
    });
    assert.match(r['tcp']!, /a browser migrates over ws:\/\/HOST:PORT\/PATH only \(tcp: needs Node\)/);
    assert.match(r['listen-unix']!, /ws:\/\/HOST:PORT\/PATH only \(unix: needs Node\)/);
    assert.match(r['bad-uri']!, /bad migration URI 'ws:\/\/no-port\/'/);
    assert.match(r['refused-port']!, /cannot connect to ws:\/\/127\.0\.0\.1:1\/none/);
    assert.match(r['multifd']!, /resolved: failed .*multifd/);
    assert.match(r['no-kernel']!, /give `multiboot`/);
    assert.match(r['bad-wasm']!, /v86\.wasm: GET \/v86\/missing\.wasm: 404/);
    // The failed connect and the 404 are what the browser itself logs; nothing else went wrong.
    assert.deepEqual(errors.filter((e) => !/127\.0\.0\.1:1\/none|missing\.wasm|404/.test(e)), []);
  } finally {
    await page.close();
  }
});
