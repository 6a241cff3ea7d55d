/**
 * `livemig demo` (also `npm start`): a live migration between two processes.
 *
 * Starts a destination (`livemig run --incoming tcp:127.0.0.1:0`) and a source
 * (`livemig run --migrate-to ...`) as child processes, migrates the running
 * test machine over loopback TCP with a live progress line, prints the summary
 * and the memory-consistency verdict, and shows the destination's guest still
 * running afterwards.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { formatBytes } from './format.js';

type Event = { event: string } & Record<string, any>;

const cliPath = fileURLToPath(new URL('./main.js', import.meta.url));

function startChild(args: string[], onEvent: (e: Event) => void): { child: ChildProcess; exited: Promise<number | null>; stderr: () => string } {
  const child = spawn(process.execPath, [cliPath, 'run', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try {
      onEvent(JSON.parse(line) as Event);
    } catch {
      /* not an event */
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, exited, stderr: () => stderr };
}

export async function demoCommand(options: { ram: string; dirtyRate: string }): Promise<number> {
  const log = (s: string): void => void process.stdout.write(s + '\n');
  const tty = process.stdout.isTTY === true;
  const common = ['--machine', 'test', '--ram', options.ram];
  log(`livemig demo: a ${options.ram} test machine writing ${options.dirtyRate} pages/s, migrated live over loopback TCP`);

  let destinationEvents: Event[] = [];
  let wake: () => void = () => {};
  const destination = startChild([...common, '--incoming', 'tcp:127.0.0.1:0', '--verify'], (e) => {
    destinationEvents.push(e);
    wake();
  });
  const next = async (test: (e: Event) => boolean, timeoutMs = 120_000): Promise<Event> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = destinationEvents.find(test);
      if (found) return found;
      if (destination.child.exitCode !== null) throw new Error(`the destination exited: ${destination.stderr().trim()}`);
      if (Date.now() > deadline) throw new Error('the destination did not answer in time');
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 250).unref();
      });
    }
  };
  let sourceChild: ChildProcess | undefined;
  try {
    const { address } = await next((e) => e.event === 'listening');
    log(`destination: pid ${destination.child.pid}, waiting on ${address}`);

    let completed: Event | undefined;
    let failure: Event | undefined;
    const source = startChild([...common, '--dirty-rate', options.dirtyRate, '--migrate-to', address, '--migrate-after-ms', '1500'], (e) => {
      if (e.event === 'running' || e.event === 'status') return;
      if (e.event === 'progress') {
        const q = e.info;
        const r = q.ram;
        const line = r
          ? `  ${q.status.padEnd(8)} pass ${r['dirty-sync-count']}  sent ${formatBytes(r.transferred).padStart(9)}  remaining ${formatBytes(r.remaining).padStart(9)}  ${r.mbps.toFixed(0).padStart(5)} Mbit/s  dirty ${r['dirty-pages-rate']} pages/s  expected downtime ${q['expected-downtime'] ?? '-'} ms`
          : `  ${q.status}`;
        process.stdout.write(tty ? `\r${line}\x1b[K` : line + '\n');
      } else if (e.event === 'completed') completed = e;
      else if (e.event === 'failed' || e.event === 'cancelled') failure = e;
    });
    sourceChild = source.child;
    log(`source:      pid ${source.child.pid}, guest running; migrating in 1.5 s`);
    const sourceExit = await source.exited;
    if (tty) process.stdout.write('\n');
    if (!completed) {
      log(`migration failed: ${failure?.info?.['error-desc'] ?? source.stderr().trim() ?? `source exited ${sourceExit}`}`);
      return 1;
    }
    const q = completed.info;
    const r = q.ram;
    log('');
    log(`migration completed`);
    log(`  total time   ${q['total-time']} ms (setup ${q['setup-time']} ms)`);
    log(`  downtime     ${q.downtime} ms (limit ${completed.switchover?.downtimeLimitMs} ms; measured until the destination confirmed its guest runs)`);
    log(`  passes       ${r['dirty-sync-count']}`);
    log(`  sent         ${formatBytes(r.transferred)}: ${r.normal} normal pages, ${r.duplicate} zero pages`);
    log(`  throughput   ${r.mbps.toFixed(0)} Mbit/s average`);

    const loaded = await next((e) => e.event === 'loaded');
    const sameRam = loaded.ramHash === completed.ramHash;
    const check = loaded.memoryCheck;
    log('');
    log(`memory check (QEMU's: first byte of every page equal, one drop by 1 at the vCPU position): ${check.ok ? 'PASSED' : `FAILED: ${check.reason}`}`);
    log(`destination RAM at resume ${sameRam ? 'equals' : 'DIFFERS FROM'} source RAM at stop (sha256 ${String(loaded.ramHash).slice(0, 16)}...)`);

    await next((e) => e.event === 'resumed');
    const firstTick = await next((e) => e.event === 'guest' && e.running === true);
    destinationEvents = destinationEvents.slice(destinationEvents.indexOf(firstTick) + 1);
    const laterTick = await next((e) => e.event === 'guest' && e.passes > firstTick.passes + 2);
    log(`destination guest still running: pass ${firstTick.passes} -> ${laterTick.passes}, serial output ${firstTick.serialBytes} -> ${laterTick.serialBytes} bytes`);
    const ok = check.ok && sameRam;
    log(ok ? 'demo OK' : 'demo FAILED');
    return ok ? 0 : 1;
  } finally {
    sourceChild?.kill('SIGTERM');
    destination.child.kill('SIGTERM');
    await destination.exited;
  }
}
