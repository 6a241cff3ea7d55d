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
import { copyFileSync, existsSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BROWSER_BUNDLE } from '../scripts/build-browser.js';
import { chromiumMissing } from '../scripts/chart-check.js';
import { launchChromium, openServePage, pageState, waitForWhere, type ServePage } from '../scripts/serve-driver.js';
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

let browser: Awaited<ReturnType<typeof launchChromium>> | undefined;
let serve: ServeProcess | undefined;
before(async () => {
  if (!skipBrowser) browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await serve?.stop();
});

const openPage = (url: string): Promise<ServePage> => openServePage(browser!.context, url);

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
  // The guest's own check of its memory, in the tab it came back to.
  const tabCheck = await second.page.evaluate(() => (globalThis as any).livemigPage.checkMemory());
  assert.equal(tabCheck.ok, true, `the tab's memory check: ${JSON.stringify(tabCheck)}`);
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
