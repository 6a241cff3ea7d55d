/**
 * Loads a page in real headless Chromium (Debian's /usr/bin/chromium through
 * playwright-core), collects console errors and page errors, answers questions
 * about what it drew, and takes a screenshot. Shared by
 * test/charts-browser.test.ts and scripts/charts.ts.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

export const CHROMIUM_PATH = process.env.LIVEMIG_CHROMIUM ?? '/usr/bin/chromium';

/** Why the browser checks cannot run here, or undefined when they can. */
export function chromiumMissing(): string | undefined {
  return existsSync(CHROMIUM_PATH) ? undefined : `no Chromium at ${CHROMIUM_PATH} (apt-get install chromium, or set LIVEMIG_CHROMIUM)`;
}

export interface LoadedPage {
  page: Page;
  /** Console messages of type error, and uncaught page errors. */
  errors: string[];
}

export class ChartBrowser {
  private constructor(
    private readonly context: BrowserContext,
    private readonly userDataDir: string,
  ) {}

  static async launch(): Promise<ChartBrowser> {
    // A fresh profile each time: nothing from an earlier run (cache, prefs) can change what is drawn.
    const userDataDir = mkdtempSync(join(tmpdir(), 'livemig-chromium-'));
    const context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 900, height: 800 },
      offline: true,
    });
    return new ChartBrowser(context, userDataDir);
  }

  /** Opens a file (file:// URL, as a user would) and waits for it to load. */
  async open(path: string): Promise<LoadedPage> {
    const page = await this.context.newPage();
    const errors: string[] = [];
    page.on('console', (msg) => {
      if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
    });
    page.on('pageerror', (err) => errors.push(`page error: ${err.message}`));
    page.on('requestfailed', (req) => errors.push(`request failed: ${req.url()}`));
    await page.goto(pathToFileURL(path).href, { waitUntil: 'load' });
    return { page, errors };
  }

  async close(): Promise<void> {
    await this.context.close();
    rmSync(this.userDataDir, { recursive: true, force: true });
  }
}

/** What a report or chart page drew, read from the DOM (see src/report/svg.ts for the classes). */
export interface DrawnFigures {
  charts: string[];
  bars: Record<string, number>;
  lines: Array<{ series: string; points: number; length: number }>;
  segments: string[];
  limits: number;
  /** XML parse errors (a standalone .svg that is not well-formed still draws up to the error). */
  parseErrors: number;
  outcome?: string;
  outcomeText?: string;
}

export async function drawnFigures(page: Page): Promise<DrawnFigures> {
  // Runs in the page (the DOM's types are not in this project's lib: hence `any`).
  return page.evaluate(() => {
    const doc = (globalThis as any).document;
    const all = (selector: string): any[] => Array.from(doc.querySelectorAll(selector));
    const bars: Record<string, number> = {};
    for (const rect of all('rect.bar')) {
      const series: string = rect.getAttribute('data-series') ?? '?';
      const box = rect.getBBox();
      if (box.height > 0 && box.width > 0) bars[series] = (bars[series] ?? 0) + 1;
    }
    const lines = all('path.line').map((p) => ({ series: String(p.getAttribute('data-series')), points: Number(p.getAttribute('data-points')), length: Number(p.getTotalLength()) }));
    const outcome = doc.querySelector('.outcome');
    return {
      charts: all('svg.chart').map((s) => String(s.getAttribute('data-chart'))),
      bars,
      lines,
      segments: all('rect.segment').map((s) => String(s.getAttribute('data-segment'))),
      limits: all('line.limit').length,
      parseErrors: doc.getElementsByTagName('parsererror').length,
      ...(outcome ? { outcome: String(outcome.getAttribute('data-outcome')), outcomeText: String(outcome.textContent) } : {}),
    };
  });
}

/**
 * A real migration between two `livemig run` processes over loopback TCP;
 * returns the source's `--json` output (the input of `livemig report`).
 * `sourceArgs` come after `--machine test`; `destination: false` migrates to a
 * closed port (a failed migration).
 */
export async function migrationEvents(cliPath: string, sourceArgs: string[], options: { ramSize?: string; destination?: boolean; cancelAfterMs?: number } = {}): Promise<string> {
  const { spawn } = await import('node:child_process');
  const ram = options.ramSize ?? '64M';
  const run = (args: string[]) => spawn(process.execPath, [cliPath, 'run', '--json', '--machine', 'test', '--ram', ram, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let port: number;
  let destination: ReturnType<typeof run> | undefined;
  if (options.destination === false) {
    // A port nothing listens on: bind one, note it, close it.
    const { createServer } = await import('node:net');
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as { port: number }).port;
    await new Promise<void>((resolve) => server.close(() => resolve()));
  } else {
    destination = run(['--incoming', 'tcp:127.0.0.1:0']);
    port = await new Promise<number>((resolve, reject) => {
      let out = '';
      let err = '';
      destination!.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      destination!.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /"event":"listening","address":"tcp:[^"]*:(\d+)"/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      destination!.once('exit', (code) => reject(new Error(`the destination exited (${code}) before listening: ${err.trim()}`)));
    });
  }
  try {
    const source = run([...sourceArgs, '--migrate-to', `tcp:127.0.0.1:${port}`]);
    let out = '';
    let err = '';
    source.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    source.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    // SIGTERM makes `livemig run` cancel its migration (the guest stays on the source) and exit.
    const cancel = options.cancelAfterMs === undefined ? undefined : setTimeout(() => source.kill('SIGTERM'), options.cancelAfterMs);
    const code = await new Promise<number | null>((resolve) => source.once('exit', resolve));
    clearTimeout(cancel);
    if (code !== 0 && options.destination !== false && options.cancelAfterMs === undefined) throw new Error(`the source exited with ${code}: ${err.trim()}`);
    return out;
  } finally {
    if (destination && destination.exitCode === null) {
      destination.kill('SIGTERM');
      await new Promise((resolve) => destination!.once('exit', resolve));
    }
  }
}

/** The source arguments of the example report: a guest that dirties pages while a capped link carries them. */
export const EXAMPLE_SOURCE_ARGS = ['--dirty-rate', '6000', '--migrate-after-ms', '1000', '--param', 'max-bandwidth=60M', '--param', 'downtime-limit=40'];

/** A migration that cannot converge (the guest dirties more than the capped link carries): cancel it. */
export const NOT_CONVERGING_SOURCE_ARGS = ['--dirty-rate', '20000', '--migrate-after-ms', '300', '--param', 'max-bandwidth=40M', '--param', 'downtime-limit=30'];

/** An HTML page holding SVG files side by side (for the bench charts' check and screenshot). */
export function svgPage(title: string, svgs: string[]): string {
  return `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${title}</title><style>body{margin:16px;background:#fff}svg{display:block;margin-bottom:16px}</style></head><body>${svgs.join('\n')}</body></html>\n`;
}
