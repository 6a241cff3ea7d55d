/**
 * `livemig serve`'s page in real headless Chromium (Debian's /usr/bin/chromium
 * through playwright-core, no browser download): the page boots the
 * multiboot test kernel in v86 in the tab, "Migrate to server" moves it live
 * over serve's WebSocket into a `livemig run` child (whose memory check must
 * pass and whose guest must keep running), and a fresh page brings it back
 * ("Bring it back"), where it runs again. A screenshot of that page is taken
 * into a temporary file; with LIVEMIG_WRITE_DOCS=1 it is also written to
 * docs/serve-round-trip.png (so a test run leaves the tree as it was).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { BROWSER_BUNDLE } from '../scripts/build-browser.js';
import { CHROMIUM_PATH, chromiumMissing } from '../scripts/chart-check.js';
import { repoRoot } from './helpers/paths.js';
import { ServeProcess } from './helpers/serve-process.js';

const RAM_MIB = 32;
const bundleMissing = existsSync(BROWSER_BUNDLE) ? undefined : `no ${BROWSER_BUNDLE}: run npm run build`;
const skipBrowser = bundleMissing ?? chromiumMissing();
/** The engine in the page (createBrowserV86Machine, migrateOut, migrateIn) comes with the browser core. */
const engineMissing = skipBrowser
  ? skipBrowser
  : ['createBrowserV86Machine', 'migrateOut', 'migrateIn'].every((name) => new RegExp(`\\b${name}\\b`).test(readFileSync(BROWSER_BUNDLE, 'utf8')))
    ? undefined
    : `${BROWSER_BUNDLE} has no createBrowserV86Machine/migrateOut/migrateIn yet (the browser engine)`;
if (skipBrowser) process.stderr.write(`serve-browser: the Chromium tests are skipped: ${skipBrowser}\n`);
else if (engineMissing) process.stderr.write(`serve-browser: the round trip is skipped: ${engineMissing}\n`);

let context: BrowserContext | undefined;
let userDataDir: string | undefined;
let serve: ServeProcess | undefined;
before(async () => {
  if (skipBrowser) return;
  userDataDir = mkdtempSync(join(tmpdir(), 'livemig-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 860 },
  });
});
after(async () => {
  await context?.close();
  await serve?.stop();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

type PageState = { where: string; serialBytes: number; errors: string[]; moves: Array<Record<string, any>>; serverPid?: number };

async function openPage(url: string): Promise<{ page: Page; errors: string[] }> {
  const page = await context!.newPage();
  const errors: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => errors.push(`page error: ${err.message}`));
  page.on('requestfailed', (req) => errors.push(`request failed: ${req.url()}`));
  await page.goto(url, { waitUntil: 'load' });
  return { page, errors };
}

const pageState = (page: Page): Promise<PageState> => page.evaluate(() => {
  const s = (globalThis as any).livemigPage;
  return { where: s.where, serialBytes: s.serialBytes, errors: s.errors, moves: s.moves, serverPid: s.serverPid };
});

async function waitForWhere(page: Page, wanted: string, timeoutMs: number): Promise<PageState> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await pageState(page);
    if (s.where === wanted) return s;
    if (s.where === 'error') throw new Error(`the page gave up: ${s.errors.join('; ')}`);
    if (Date.now() > deadline) throw new Error(`the page is '${s.where}', not '${wanted}', after ${timeoutMs} ms; its log: ${s.errors.join('; ')}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('the page loads under its CSP: script, styles and the status API, no console error but what it says of a missing engine', { skip: skipBrowser, timeout: 60_000 }, async () => {
  serve ??= await ServeProcess.start();
  const { page, errors } = await openPage(`${serve.url}?ram=${RAM_MIB}`);
  await page.waitForFunction(() => (globalThis as any).livemigPage !== undefined && (globalThis as any).livemigPage.where !== 'booting', undefined, { timeout: 30_000 });
  const s = await pageState(page);
  // The module ran (CSP let it), and so did its first /api/status call (the server pane is filled).
  assert.notEqual(await page.textContent('#where'), 'nowhere yet');
  assert.equal(await page.textContent('#server dt'), 'VM');
  assert.equal(await page.$eval('header', (h) => (globalThis as any).getComputedStyle(h).backgroundColor), 'rgb(29, 35, 48)', 'page.css applied');
  if (engineMissing) assert.equal(s.where, 'error');
  const unexpected = errors.filter((e) => !/createBrowserV86Machine/.test(e));
  assert.deepEqual(unexpected.filter((e) => /Content Security Policy|Refused/.test(e)), [], 'no CSP violation');
  await page.close();
});

test('in Chromium the page boots the multiboot guest, migrates it to the server and a fresh page brings it back', { skip: engineMissing, timeout: 300_000 }, async () => {
  serve ??= await ServeProcess.start();
  const url = `${serve.url}?ram=${RAM_MIB}`;
  const first = await openPage(url);
  await waitForWhere(first.page, 'tab', 60_000);
  await first.page.waitForFunction(() => (globalThis as any).livemigPage.serialBytes > 0, undefined, { timeout: 30_000 });

  await first.page.click('#to-server');
  const there = await waitForWhere(first.page, 'server', 120_000);
  const out = there.moves.at(-1)!;
  assert.equal(out.status, 'completed', JSON.stringify(out));
  assert.ok(out.totalMs > 0 && out.downtimeMs >= 0 && out.bytes > 0, JSON.stringify(out));
  assert.match((await first.page.textContent('#where')) ?? '', /^on the server, pid \d+$/);
  const running = await serve.waitForStatus('the server VM running', (s) => s.vm?.phase === 'running' && s.vm.memoryCheck !== undefined && s.vm.instructions > 0);
  assert.equal(running.vm.memoryCheck.ok, true, `the Node side's memory check: ${JSON.stringify(running.vm.memoryCheck)}`);
  assert.equal(there.serverPid, running.vm.pid);
  const later = await serve.waitForStatus("the server guest's count to move", (s) => s.vm?.instructions > running.vm.instructions && s.vm.running === true, 10_000);
  assert.ok(later.vm.instructions > running.vm.instructions, 'the guest keeps running on the server');
  await first.page.close();

  // A fresh page finds the VM on the server and brings it back.
  const second = await openPage(url);
  await waitForWhere(second.page, 'server', 30_000);
  await second.page.click('#to-tab');
  const back = await waitForWhere(second.page, 'tab', 120_000);
  const inMove = back.moves.at(-1)!;
  assert.equal(inMove.status, 'completed', JSON.stringify(inMove));
  assert.ok(inMove.totalMs > 0 && inMove.downtimeMs >= 0, JSON.stringify(inMove));
  const serialAtArrival = back.serialBytes;
  await second.page.waitForFunction((n) => (globalThis as any).livemigPage.serialBytes > n, serialAtArrival, { timeout: 30_000 });
  const gone = await serve.status();
  assert.equal(gone.vm, null, 'the server VM quit once the tab confirmed');
  assert.match(gone.lastVmEnd, /moved to a tab/);

  const shot = join(mkdtempSync(join(tmpdir(), 'livemig-shot-')), 'serve-round-trip.png');
  await second.page.screenshot({ path: shot, fullPage: true });
  assert.ok(statSync(shot).size > 10_000, 'a screenshot with something in it');
  if (process.env.LIVEMIG_WRITE_DOCS === '1') copyFileSync(shot, join(repoRoot, 'docs', 'serve-round-trip.png'));
  assert.deepEqual(first.errors, []);
  assert.deepEqual(second.errors, []);
});
