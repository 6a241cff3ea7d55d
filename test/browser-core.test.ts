/**
 * The core's browser bundle (dist/browser/livemig-core.js, made by
 * `npm run build`) in real headless Chromium, from a page served over HTTP by
 * this test: a live save of RAM and a device through the engine's real savevm
 * loop into an in-memory pipe, loaded by the real loader, and the QEMU 7.2
 * capture fetched and loaded (test/helpers/browser-core-scenario.ts). No
 * console or page error. The same bundle is also imported by plain Node.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type BrowserContext } from 'playwright-core';
import { BROWSER_BUNDLE } from '../scripts/build-browser.js';
import { CHROMIUM_PATH, chromiumMissing } from '../scripts/chart-check.js';
import { createMemoryPipe } from '../src/wire/memory-pipe.js';
import { runCoreScenario, type ScenarioResult } from './helpers/browser-core-scenario.js';
import { fixturePath, repoRoot } from './helpers/paths.js';
import { serveFiles, type StaticServer } from './helpers/static-server.js';

const SCENARIO = join(repoRoot, 'dist', 'test', 'helpers', 'browser-core-scenario.js');
const bundleMissing = existsSync(BROWSER_BUNDLE) ? undefined : `no ${BROWSER_BUNDLE}: run npm run build`;
const skipBrowser = bundleMissing ?? chromiumMissing();
if (skipBrowser) process.stderr.write(`browser-core: the Chromium test is skipped: ${skipBrowser}\n`);

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>livemig core</title>
<pre id="out">running</pre>
<script type="module">
import * as core from '/livemig-core.js';
import { runCoreScenario } from '/scenario.js';
const fetchBytes = async (name) => {
  const response = await fetch('/fixtures/' + name);
  if (!response.ok) throw new Error('GET /fixtures/' + name + ': ' + response.status);
  return new Uint8Array(await response.arrayBuffer());
};
try {
  window.scenarioResult = await runCoreScenario(core, fetchBytes);
  document.getElementById('out').textContent = JSON.stringify(window.scenarioResult, null, 1);
} catch (err) {
  window.scenarioError = String(err && err.stack || err);
  document.getElementById('out').textContent = window.scenarioError;
}
</script>
`;

/** Serves the page, the bundle, the scenario and the fixtures; anything else is a 404 (and a failed test). */
function serve(): Promise<StaticServer> {
  return serveFiles({
    '/': () => ['text/html', PAGE],
    '/livemig-core.js': () => ['text/javascript', readFileSync(BROWSER_BUNDLE)],
    '/scenario.js': () => ['text/javascript', readFileSync(SCENARIO)],
    '/fixtures/qemu72-none-16M.mig': () => ['application/octet-stream', readFileSync(fixturePath('qemu72-none-16M.mig'))],
  });
}

function checkResult(r: ScenarioResult): void {
  const rt = r.roundTrip;
  assert.equal(rt.equal, true, `destination RAM differs from the source's at byte ${rt.firstDifference}`);
  assert.ok(rt.passes >= 4, `${rt.passes} passes`);
  assert.ok(rt.xbzrlePages > 0, 'pages re-sent as XBZRLE (the cache and the encoder ran)');
  assert.ok(rt.zeroPages >= rt.ramBytes / 4096 / 3, 'zero pages sent as ZERO records');
  assert.deepEqual(rt.device, { counter: '123456789abcdf0', label: 'in a browser tab' }, 'device state as at the switchover');
  assert.equal(rt.runstate, 'running');
  assert.deepEqual(r.fixture, {
    totalBytes: 37645,
    allZero: true,
    zeroPages: 4096,
    cpuTicksOffset: 'a6ef59',
    cpuClockOffset: '403385',
    runstate: 'running',
    sections: ['start ram', 'part ram', 'end ram', 'full timer', 'full globalstate'],
  });
  // The bundle has no Node channels (a page has no sockets): the rehearsal falls back to the memory pipe.
  assert.deepEqual(r.warmUp, { rounds: 3, over: 'memory', error: undefined });
}

let context: BrowserContext | undefined;
let userDataDir: string | undefined;
before(async () => {
  if (skipBrowser) return;
  userDataDir = mkdtempSync(join(tmpdir(), 'livemig-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  await context?.close();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

test('in headless Chromium the bundle saves and loads RAM and devices live through an in-memory pipe, and loads the QEMU 7.2 capture', { skip: skipBrowser, timeout: 120_000 }, async () => {
  const { server, origin, requests } = await serve();
  try {
    const page = await context!.newPage();
    const errors: string[] = [];
    page.on('console', (msg) => {
      if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
    });
    page.on('pageerror', (err) => errors.push(`page error: ${err.message}`));
    page.on('requestfailed', (req) => errors.push(`request failed: ${req.url()}`));
    await page.goto(`${origin}/`, { waitUntil: 'load' });
    await page.waitForFunction(() => (globalThis as any).scenarioResult !== undefined || (globalThis as any).scenarioError !== undefined, undefined, { timeout: 90_000 });
    const scenarioError = await page.evaluate(() => (globalThis as any).scenarioError as string | undefined);
    assert.equal(scenarioError, undefined, `the scenario failed in the page:\n${scenarioError}`);
    const result = await page.evaluate(() => (globalThis as any).scenarioResult as ScenarioResult);
    // Chromium has no Buffer: the typed-array fallbacks and the MessageChannel yield ran.
    assert.equal(result.nativeBytes, false);
    checkResult(result);
    assert.deepEqual(errors, []);
    assert.deepEqual(requests.filter((p) => p !== '/favicon.ico').sort(), ['/', '/fixtures/qemu72-none-16M.mig', '/livemig-core.js', '/scenario.js']);
    await page.close();
  } finally {
    server.close();
  }
});

test('plain Node imports the same bundle and runs the same scenario', { skip: bundleMissing, timeout: 60_000 }, async () => {
  // The package's `livemig/browser` entry is this file (what bundlers and pages import).
  assert.equal(import.meta.resolve('livemig/browser'), pathToFileURL(BROWSER_BUNDLE).href);
  const core = await import(pathToFileURL(BROWSER_BUNDLE).href);
  const result = await runCoreScenario(core, async (name) => new Uint8Array(readFileSync(fixturePath(name))));
  assert.equal(result.nativeBytes, true, 'on Node the bundle uses Buffer through globalThis');
  checkResult(result);
});

test('the memory pipe: order, backpressure, end of stream, and clear errors on misuse', async () => {
  assert.throws(() => createMemoryPipe(0), /highWaterBytes must be a positive integer, not 0/);
  const { sink, source } = createMemoryPipe(10);
  // The writer waits while more than 10 bytes are unread.
  let written = false;
  const writing = sink.write(new Uint8Array(16).fill(1)).then(() => (written = true));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(written, false, 'the writer waits for the reader');
  assert.deepEqual(await source.read(), new Uint8Array(16).fill(1));
  await writing;
  await sink.write(new Uint8Array([2]));
  await sink.write(new Uint8Array(0));
  await sink.close();
  assert.deepEqual(await source.read(), new Uint8Array([2]));
  assert.equal(await source.read(), null, 'end of stream after close');
  await assert.rejects(sink.write(new Uint8Array(1)), /write to a closed memory pipe/);

  const idle = createMemoryPipe();
  const waitingRead = idle.source.read();
  await idle.source.close();
  assert.equal(await waitingRead, null, 'a read waiting for data ends when the reader closes');

  const other = createMemoryPipe(4);
  const blocked = other.sink.write(new Uint8Array(8));
  await other.source.close();
  await assert.rejects(blocked, /the reading end was closed/, 'a waiting writer fails when the reader goes');
  await assert.rejects(other.sink.write(new Uint8Array(1)), /the reading end was closed/);
});
