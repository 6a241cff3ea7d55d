/**
 * Drives `livemig serve`'s page (web/page.js) in headless Chromium: open a
 * page, read its state (window.livemigPage), wait for the VM to be in the tab
 * or on the server. Shared by test/serve-browser.test.ts and
 * scripts/browser-bench.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { CHROMIUM_PATH } from './chart-check.js';

/** One move as the page records it (the engine's result: totalMs, downtimeMs, bytes, status; error when it failed). */
export type PageMove = { direction: string; status: string; totalMs: number; downtimeMs: number; bytes: number; error?: string };
export type PageState = { where: string; serialBytes: number; errors: string[]; moves: PageMove[]; serverPid?: number };

export interface ServePage {
  page: Page;
  /** Console errors, uncaught page errors, failed requests. */
  errors: string[];
}

export async function launchChromium(): Promise<{ context: BrowserContext; close(): Promise<void> }> {
  const userDataDir = mkdtempSync(join(tmpdir(), 'livemig-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 860 },
  });
  return {
    context,
    close: async () => {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

export async function openServePage(context: BrowserContext, url: string): Promise<ServePage> {
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => errors.push(`page error: ${err.message}`));
  page.on('requestfailed', (req) => errors.push(`request failed: ${req.url()}`));
  await page.goto(url, { waitUntil: 'load' });
  return { page, errors };
}

export function pageState(page: Page): Promise<PageState> {
  return page.evaluate(() => {
    const s = (globalThis as any).livemigPage;
    return s === undefined ? { where: 'loading', serialBytes: 0, errors: [], moves: [] } : { where: s.where, serialBytes: s.serialBytes, errors: s.errors, moves: s.moves, serverPid: s.serverPid };
  });
}

/** Waits for the page to say the VM is `wanted` ('tab' or 'server'); fails at once when the page gave up. */
export async function waitForWhere(page: Page, wanted: string, timeoutMs: number): Promise<PageState> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await pageState(page);
    if (s.where === wanted) return s;
    if (s.where === 'error') throw new Error(`the page gave up: ${s.errors.join('; ')}`);
    if (Date.now() > deadline) throw new Error(`the page is '${s.where}', not '${wanted}', after ${timeoutMs} ms; its errors: ${s.errors.join('; ') || 'none'}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
