/**
 * Browser <-> Node figures for docs/benchmarks.md: a v86 guest (the
 * multiboot test kernel, 128 MiB by default) moved by `livemig serve`'s page
 * in headless Chromium to a `livemig run` on this host (browser -> Node) and
 * back into a fresh page (Node -> browser), N runs (default 3); total time,
 * downtime and throughput of each, and their medians.
 *
 *   npm run build && node dist/scripts/browser-bench.js [--runs 3] [--ram-mib 128] [--downtime-limit-ms MS]
 *
 * browser -> Node: the page's migrateOut result (the source's figures).
 * Node -> browser: the server VM's query-migrate (the source's figures), and
 * the page's migrateIn total beside it.
 */
import { parseArgs } from 'node:util';
import { startServe } from '../src/serve/serve.js';
import { launchChromium, openServePage, waitForWhere, type PageMove } from './serve-driver.js';

interface Figures {
  totalMs: number;
  downtimeMs: number;
  bytes: number;
}

const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' }, 'ram-mib': { type: 'string', default: '128' }, 'downtime-limit-ms': { type: 'string' } } });
const runs = Number(values.runs);
const ramMiB = Number(values['ram-mib']);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs: a positive integer, not '${values.runs}'`);
if (!Number.isInteger(ramMiB) || ramMiB < 1) throw new Error(`--ram-mib: a positive integer, not '${values['ram-mib']}'`);

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const mbps = (f: Figures): number => (f.bytes * 8) / (f.totalMs / 1000) / 1e6;

async function status(url: string): Promise<any> {
  return (await fetch(new URL('/api/status', url))).json();
}

async function waitForStatus(url: string, what: string, test: (s: any) => boolean, timeoutMs: number): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await status(url);
    if (test(s)) return s;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const serve = await startServe({ port: 0 });
const browser = await launchChromium();
const toNode: Figures[] = [];
const toBrowser: Figures[] = [];
const toBrowserPageMs: number[] = [];
try {
  // --downtime-limit-ms: the page's limit for browser -> Node (its default is 2000).
  const url = `${serve.url}?ram=${ramMiB}${values['downtime-limit-ms'] ? `&downtime-limit=${Number(values['downtime-limit-ms'])}` : ''}`;
  for (let run = 1; run <= runs; run++) {
    const first = await openServePage(browser.context, url);
    await waitForWhere(first.page, 'tab', 60_000);
    // Let the guest run a while, as a VM that was in use.
    await new Promise((r) => setTimeout(r, 2000));
    await first.page.click('#to-server');
    const there = await waitForWhere(first.page, 'server', 300_000);
    const out = there.moves.at(-1) as PageMove;
    if (out.status !== 'completed') throw new Error(`run ${run}: browser -> Node ${out.status}: ${out.error}`);
    const running = await waitForStatus(serve.url, 'the server VM running', (s) => s.vm?.phase === 'running' && s.vm.memoryCheck !== undefined, 60_000);
    if (!running.vm.memoryCheck.ok) throw new Error(`run ${run}: the server's memory check failed: ${JSON.stringify(running.vm.memoryCheck)}`);
    toNode.push({ totalMs: out.totalMs, downtimeMs: out.downtimeMs, bytes: out.bytes });
    await first.page.close();
    await new Promise((r) => setTimeout(r, 2000));

    const second = await openServePage(browser.context, url);
    await waitForWhere(second.page, 'server', 30_000);
    await second.page.click('#to-tab');
    const back = await waitForWhere(second.page, 'tab', 300_000);
    const inMove = back.moves.at(-1) as PageMove;
    if (inMove.status !== 'completed') throw new Error(`run ${run}: Node -> browser ${inMove.status}: ${inMove.error}`);
    const info = (await status(serve.url)).move?.info;
    toBrowser.push({ totalMs: info['total-time'], downtimeMs: info.downtime, bytes: info.ram.transferred });
    toBrowserPageMs.push(inMove.totalMs);
    await second.page.close();
    process.stderr.write(`run ${run}: browser -> Node ${Math.round(out.totalMs)} ms (downtime ${Math.round(out.downtimeMs)} ms), Node -> browser ${info['total-time']} ms (downtime ${info.downtime} ms)\n`);
  }
} finally {
  await browser.close();
  await serve.close();
}

const row = (name: string, fs: Figures[]): string =>
  `| ${name} | ${Math.round(median(fs.map((f) => f.totalMs)))} ms | ${Math.round(median(fs.map((f) => f.downtimeMs)))} ms | ${median(fs.map(mbps)).toFixed(0)} Mbit/s | ${(median(fs.map((f) => f.bytes)) / 2 ** 20).toFixed(1)} MiB | ${fs.map((f) => Math.round(f.totalMs)).join(', ')} |`;
process.stdout.write(
  [
    `v86 ${ramMiB} MiB (multiboot test kernel), ${runs} runs, medians; downtime-limit browser -> Node ${values['downtime-limit-ms'] ?? 2000} ms, Node -> browser 2000 ms:`,
    '',
    '| direction | total | downtime | throughput | sent | total per run (ms) |',
    '|---|---|---|---|---|---|',
    row('browser -> Node', toNode),
    row('Node -> browser', toBrowser),
    '',
    `Node -> browser as the page saw it (migrateIn, connect to running): ${toBrowserPageMs.map(Math.round).join(', ')} ms`,
    '',
  ].join('\n'),
);
