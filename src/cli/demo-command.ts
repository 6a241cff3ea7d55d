/**
 * `livemig demo` (also `npm start`): a live migration between two processes,
 * driven through their QMP monitors as management software would.
 *
 * Starts a destination (`livemig run --incoming defer --qmp ...`) and a source
 * (`livemig run --qmp ...`) as child processes, issues `migrate-incoming` and
 * `migrate` over QMP, draws a progress line from `query-migrate`, prints the
 * summary and the memory-consistency verdict, and shows the destination's
 * guest still running.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { guestType } from '../guests/index.js';
import { QmpClient } from '../monitor/qmp-client.js';
import { formatBytes } from './format.js';
import { parseSize } from '../migration/size.js';
import { figuresOf, formatDuration, formatProgressLine } from './progress.js';
import { explainDowntime } from '../migration/progress-model.js';

type Event = { event: string } & Record<string, any>;

const cliPath = fileURLToPath(new URL('./main.js', import.meta.url));

/** A `livemig run --json` child whose events we can wait for. */
class Child {
  readonly events: Event[] = [];
  private stderr = '';
  private wake: () => void = () => {};
  readonly process: ChildProcess;
  constructor(args: string[]) {
    // --serial-stdin: what the demo types into the guest's serial console.
    this.process = spawn(process.execPath, [cliPath, 'run', '--json', ...args], { stdio: [args.includes('--serial-stdin') ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    this.process.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));
    createInterface({ input: this.process.stdout! }).on('line', (line) => {
      try {
        this.events.push(JSON.parse(line) as Event);
        this.wake();
      } catch {
        /* not an event */
      }
    });
  }
  /** Everything the guest wrote to its serial console so far (it arrives in small pieces). */
  serialText(from = 0): string {
    return this.events.slice(from).filter((e) => e.event === 'serial').map((e) => String(e.text)).join('');
  }

  async waitForSerial(pattern: RegExp, from = 0, timeoutMs = 180_000): Promise<void> {
    await this.next(() => pattern.test(this.serialText(from)), from, timeoutMs);
  }

  async next(test: (e: Event) => boolean, from = 0, timeoutMs = 120_000): Promise<Event> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.slice(from).find(test);
      if (found) return found;
      if (this.process.exitCode !== null) throw new Error(`a livemig process exited: ${this.stderr.trim()}`);
      if (Date.now() > deadline) throw new Error('a livemig process did not answer in time');
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 250).unref();
      });
    }
  }
}

export interface DemoOptions {
  machine: string;
  guest?: string;
  ram?: string;
  dirtyRate: string;
  /** Switch to postcopy once the first pass is through, and check the guest's memory on the destination afterwards. */
  postcopy?: boolean;
}

export async function demoCommand(options: DemoOptions): Promise<number> {
  const log = (s: string): void => void process.stdout.write(s + '\n');
  const tty = process.stdout.isTTY === true;
  const type = guestType(options.machine);
  const demo = type.demo;
  const selfCheck = demo.selfCheck?.(options.guest);
  const ram = options.ram ?? demo.defaultRam(options.guest);
  const common = ['--machine', options.machine, '--ram', ram, '--verify', ...(options.guest ? ['--guest', options.guest] : [])];
  const what = demo.describe({ guest: options.guest, dirtyRate: options.dirtyRate });
  const postcopy = options.postcopy === true;
  // Postcopy's check is the test machine's own memory check on the destination (its RAM moves on after the switch).
  if (postcopy && options.machine !== 'test') throw new Error(`--postcopy: the demo shows postcopy with the test machine only (a ${options.machine} guest ${options.machine === 'v86' ? 'cannot run with pages missing' : 'has no memory check'})`);
  log(`livemig demo: a ${ram} ${what}, migrated live over loopback TCP${postcopy ? ' in postcopy (the guest moves first, its RAM follows)' : ''}`);
  const dir = await mkdtemp(join(tmpdir(), 'livemig-demo-'));
  const disk = await demo.disk?.(options.guest);
  const sourceDisk = join(dir, 'source-disk.img');
  const destinationDisk = join(dir, 'destination-disk.img');
  if (disk) {
    await copyFile(disk.image, sourceDisk);
    await writeFile(destinationDisk, '');
    await truncate(destinationDisk, (await stat(disk.image)).size);
  }
  const destinationArgs = [
    ...(disk ? [`--${disk.slot}`, destinationDisk, '-S'] : []),
    ...(selfCheck?.request !== undefined ? ['--serial-stdin'] : []),
  ];
  const destination = new Child([...common, ...destinationArgs, '--incoming', 'defer', '--qmp', `unix:${join(dir, 'destination.qmp')}`]);
  const source = new Child([...common, ...(disk ? [`--${disk.slot}`, sourceDisk] : []), ...demo.sourceArgs({ dirtyRate: options.dirtyRate }), '--qmp', `unix:${join(dir, 'source.qmp')}`]);
  const clients: QmpClient[] = [];
  try {
    await Promise.all([destination.next((e) => e.event === 'qmp'), source.next((e) => e.event === 'qmp')]);
    const dst = await QmpClient.connect(`unix:${join(dir, 'destination.qmp')}`, { retryForMs: 5000 });
    const src = await QmpClient.connect(`unix:${join(dir, 'source.qmp')}`, { retryForMs: 5000 });
    clients.push(dst, src);
    log(`destination: pid ${destination.process.pid}, QMP ${dst.uri}`);
    log(`source:      pid ${source.process.pid}, QMP ${src.uri}, guest running`);

    if (postcopy) {
      const capabilities = ['postcopy-ram', 'postcopy-blocktime'].map((capability) => ({ capability, state: true }));
      await dst.execute('migrate-set-capabilities', { capabilities });
      await src.execute('migrate-set-capabilities', { capabilities: capabilities.slice(0, 1) });
      log('> both sides: migrate-set-capabilities postcopy-ram');
      // Unlimited, a small guest's background pages would be through in a blink; half its RAM per
      // second keeps the postcopy phase on screen for about two seconds. The guest's own page requests pass this limit.
      const bandwidthBytesPerSecond = Math.max(1 << 20, Math.floor(parseSize(ram, '--ram') / 2));
      await src.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': bandwidthBytesPerSecond });
      log(`> source: migrate-set-parameters max-postcopy-bandwidth=${bandwidthBytesPerSecond} (${formatBytes(bandwidthBytesPerSecond)}/s, so the postcopy phase can be watched; the guest's page requests pass it)`);
    }
    await dst.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const listening = (await dst.execute('query-migrate')) as { 'socket-address': Array<{ host: string; port: string }> };
    const { host, port } = listening['socket-address'][0]!;
    const uri = `tcp:${host}:${port}`;
    log(`> destination: migrate-incoming, listening on ${uri}`);
    if (selfCheck) {
      log(`  (${selfCheck.waiting})`);
      await source.waitForSerial(selfCheck.ready);
    } else await new Promise((r) => setTimeout(r, 1000)); // let the guest run a moment first
    if (demo.autoConverge) await src.execute('migrate-set-capabilities', { capabilities: [{ capability: 'auto-converge', state: true }] });
    await src.execute('migrate', { uri, ...(disk ? { blk: true } : {}) });
    log(`> source: migrate ${uri}${disk ? ` blk=true (its ${disk.slot} too)` : ''}`);

    let info: any;
    let switched = false;
    if (postcopy) {
      // At once: the guest moves after the first round of pages it had time for, the rest follows while it runs there.
      await src.execute('migrate-start-postcopy');
      log('> source: migrate-start-postcopy');
    }
    // Until the first progress line, ask often: a small guest's migration may be over in ~100 ms, and a demo
    // that is watched should show it running at least once.
    let drewProgress = false;
    for (;;) {
      info = await src.execute('query-migrate');
      const r = info.ram;
      switched ||= String(info.status).startsWith('postcopy');
      // The end is told by the summary below: QEMU's live figures (dirty rate, expected downtime) are gone by then.
      if (r && !['completed', 'failed', 'cancelled'].includes(info.status)) {
        // Pre-copy: the same line as livemig migrate, from the source's progress model (percent, ETA, convergence).
        const line = String(info.status).startsWith('postcopy')
          ? `  ${String(info.status).padEnd(15)} ${Math.round(r.remaining / r['page-size'])} pages still missing on the destination, ${r['postcopy-requests']} requested by its guest, ${formatBytes(r['postcopy-bytes'])} sent since the switch`
          : `  ${formatProgressLine(figuresOf(info, 0, info['total-time'] ?? 0))}`;
        process.stdout.write(tty ? `\r${line}\x1b[K` : line + '\n');
        drewProgress = true;
      }
      if (['completed', 'failed', 'cancelled'].includes(info.status)) break;
      await new Promise((r) => setTimeout(r, drewProgress ? 150 : 10));
    }
    if (tty) process.stdout.write('\n');
    // A short postcopy phase may fall between two polls: the bytes sent after the switch tell.
    switched ||= (info.ram?.['postcopy-bytes'] ?? 0) > 0;
    if (info.status !== 'completed') {
      log(`migration ${info.status}: ${info['error-desc'] ?? ''}`);
      return 1;
    }
    const r = info.ram;
    log('');
    log('migration completed');
    log(`  total time   ${info['total-time']} ms (setup ${info['setup-time']} ms)`);
    log(`  downtime     ${info.downtime} ms (${postcopy && switched ? 'postcopy: from the guest stopping here until the destination ran it with its device state; RAM followed' : 'measured until the destination confirmed its guest runs'}; limit ${info['x-livemig-downtime-limit-ms'] ?? '?'} ms)`);
    const over = explainDowntime(info.downtime, info['x-livemig-downtime-limit-ms'], info['x-livemig-downtime-phases']);
    if (over) log(`               ${over}`);
    log(`  passes       ${r['dirty-sync-count']}`);
    // The guest's dirty rate, from the passes (QEMU's dirty-pages-rate is gone once completed).
    const passes: Array<{ 'dirtied-bytes': number; 'duration-ms': number; pass: number }> = info['x-livemig-progress']?.passes ?? [];
    const later = passes.filter((p) => p.pass >= 2);
    const dirtiedBytes = later.reduce((sum, p) => sum + p['dirtied-bytes'], 0);
    const passMs = later.reduce((sum, p) => sum + p['duration-ms'], 0);
    if (passMs > 0) log(`  dirty rate   ${Math.round((dirtiedBytes / r['page-size'] / passMs) * 1000)} pages/s newly dirtied while it ran (${formatBytes(dirtiedBytes)} in ${formatDuration(passMs)} of passes)`);
    log(`  sent         ${formatBytes(r.transferred)}: ${r.normal} normal pages, ${r.duplicate} zero pages`);
    if (info.disk) log(`  disk         ${formatBytes(info.disk.transferred)} of ${formatBytes(info.disk.total)} sent (${disk?.slot ?? 'the disks'}, copied live)`);
    log(`  throughput   ${r.mbps.toFixed(0)} Mbit/s average`);
    if (postcopy && !switched) log('  (pre-copy completed before the switch to postcopy took effect: checked as pre-copy)');
    else if (postcopy) return await finishPostcopyDemo(log, info, dst, destination, demo.progressFigure);

    const migrated = await source.next((e) => e.event === 'migrated');
    const loaded = await destination.next((e) => e.event === 'loaded');
    const sameRam = loaded.ramHash === migrated.ramHash;
    const check = loaded.memoryCheck ?? { ok: true, reason: '' };
    log('');
    if (loaded.memoryCheck) log(`memory check (QEMU's: first byte of every page equal, one drop by 1 at the vCPU position): ${check.ok ? 'PASSED' : `FAILED: ${check.reason}`}`);
    log(`destination RAM at resume ${sameRam ? 'equals' : 'DIFFERS FROM'} source RAM at stop (sha256 ${String(loaded.ramHash).slice(0, 16)}...)`);
    let sameDisk = true;
    if (disk) {
      // The destination waits paused (-S): both images as they are at the switchover.
      const [a, b] = await Promise.all([sourceDisk, destinationDisk].map(async (p) => createHash('sha256').update(await readFile(p)).digest('hex')));
      sameDisk = a === b;
      log(`destination disk ${sameDisk ? 'equals' : 'DIFFERS FROM'} source disk at stop (sha256 ${a!.slice(0, 16)}...)`);
      await dst.execute('cont');
      log('> destination: cont');
    }
    log(`> source: query-status -> ${((await src.execute('query-status')) as { status: string }).status}; destination: query-status -> ${((await dst.execute('query-status')) as { status: string }).status}`);

    const from = destination.events.length;
    const firstTick = await destination.next((e) => e.event === 'guest' && e.running === true, from);
    // Running means the guest's own figure moves on (a guest without a console, as `none`, writes no serial bytes).
    const figure = demo.progressFigure;
    const laterTick = await destination.next((e) => e.event === 'guest' && e[figure] > firstTick[figure], destination.events.indexOf(firstTick) + 1);
    const progress = `${figure} ${firstTick[figure]} -> ${laterTick[figure]}`;
    log(`destination guest still running: ${progress}, serial output ${firstTick.serialBytes} -> ${laterTick.serialBytes} bytes`);
    if (selfCheck) {
      if (selfCheck.request !== undefined) {
        destination.process.stdin!.write(selfCheck.request);
        log(`> destination serial console: ${selfCheck.request.trim()}`);
      }
      await destination.waitForSerial(selfCheck.result, from, 60_000);
      const lines = destination.serialText(from).split('\n').filter((l) => l.startsWith(selfCheck.linePrefix));
      log(`destination guest's self-check after the move: ${selfCheck.result.exec(destination.serialText(from))![0].trim()}`);
      if (lines.some((l) => l.includes(selfCheck.corrupt))) return 1;
    }
    const ok = check.ok && sameRam && sameDisk;
    log(ok ? 'demo OK' : 'demo FAILED');
    return ok ? 0 : 1;
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    source.process.kill('SIGTERM');
    destination.process.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
  }
}

/** Postcopy's ending: its figures, then the guest's own memory check on the destination (paused for it, then resumed). */
async function finishPostcopyDemo(log: (s: string) => void, info: any, dst: QmpClient, destination: Child, figure: string): Promise<number> {
  const r = info.ram;
  const dstInfo = (await dst.execute('query-migrate')) as Record<string, any>;
  log(`  postcopy     ${formatBytes(r['postcopy-bytes'])} after the switch; ${r['postcopy-requests']} pages requested by the guest on the destination, which waited ${dstInfo['postcopy-blocktime'] ?? '?'} ms for pages in all`);
  const from = destination.events.length;
  const firstTick = await destination.next((e) => e.event === 'guest' && e.running === true, from);
  await dst.execute('stop');
  const check = (await dst.execute('x-livemig-check-guest')) as { memoryCheck?: { ok: boolean; reason?: string } };
  await dst.execute('cont');
  const ok = check.memoryCheck?.ok === true;
  log('');
  log(`> destination: stop, x-livemig-check-guest, cont: memory check (QEMU's) ${ok ? 'PASSED' : `FAILED: ${check.memoryCheck?.reason ?? 'not available'}`}`);
  const laterTick = await destination.next((e) => e.event === 'guest' && e.running === true && e.serialBytes > firstTick.serialBytes, destination.events.length);
  log(`destination guest still running: ${figure} ${firstTick[figure]} -> ${laterTick[figure]}, serial output ${firstTick.serialBytes} -> ${laterTick.serialBytes} bytes`);
  log(ok ? 'demo OK' : 'demo FAILED');
  return ok ? 0 : 1;
}
