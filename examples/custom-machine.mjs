#!/usr/bin/env node
/**
 * livemig as a library: a guest type of your own, migrated live between two
 * processes.
 *
 *   node examples/custom-machine.mjs          # source; starts the destination itself
 *
 * The toy emulator is a "counter CPU": every millisecond it executes a few
 * steps, step n writing page n mod P of its RAM (the byte n*7+1 throughout,
 * the value n in the page's first 4 bytes) and counting n up in its one
 * register. It keeps an exact dirty log, and its register travels as a
 * VMState section. Because every page's content follows from the register,
 * the destination can check after the migration that its RAM is exactly what
 * the source's was at the stop: a page the dirty log had missed would hold
 * an older step's value.
 *
 * The script forks itself (`--incoming`) as the destination, which listens on
 * loopback TCP; the source migrates to it while the toy keeps writing, then
 * the destination checks the RAM, lets the toy run on, and reports back.
 * It prints `example OK` at the end.
 */
import { fork } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import {
  DenseRamBlock,
  DirtyBitmap,
  IncomingMigration,
  OutgoingMigration,
  TARGET_PAGE_SIZE,
  defineVmsd,
  field,
} from 'livemig';

const RAM_PAGES = 2048; // 8 MiB
const STEPS_PER_TICK = 16; // ~16 000 pages a second: well under the default 128 MiB/s bandwidth

/** The register state, described for the stream: one section `toy-cpu`. */
const toyCpuVmsd = defineVmsd({
  name: 'toy-cpu',
  version: 1,
  minimumVersion: 1,
  fields: [
    // Loading fails unless both sides have the same RAM size.
    field.uint32Equal('ramPages'),
    field.uint32('counter'),
  ],
});

/** A toy emulator that implements livemig's `Machine` interface. */
class CounterMachine {
  kind = 'counter';
  /** Written in the stream's configuration section: source and destination must agree. */
  machineName = 'livemig-example-counter';
  serial = new PassThrough();
  memory = new Uint8Array(RAM_PAGES * TARGET_PAGE_SIZE);
  /** The registers: the object the VMState description reads and writes. */
  cpu = { ramPages: RAM_PAGES, counter: 0 };
  // Every write below marks its page dirty, so the engine may send pages straight from this memory (no copy).
  block = new DenseRamBlock('counter.ram', this.memory, { logsEveryWrite: true });
  dirty = new DirtyBitmap(RAM_PAGES);
  tracking = false;
  reportAll = false;
  timer = undefined;

  constructor({ incoming }) {
    if (!incoming) this.resume();
  }

  get running() {
    return this.timer !== undefined;
  }

  /** One instruction: write page n mod P and count on. */
  step() {
    const n = this.cpu.counter;
    const page = n % RAM_PAGES;
    const at = page * TARGET_PAGE_SIZE;
    this.memory.fill((n * 7 + 1) & 0xff, at, at + TARGET_PAGE_SIZE);
    new DataView(this.memory.buffer, at, 4).setUint32(0, n, true);
    if (this.tracking) this.dirty.set(page);
    this.cpu.counter = (n + 1) >>> 0;
  }

  // ---- Machine ----
  ramBlocks() {
    return [this.block];
  }
  startDirtyLog() {
    if (this.tracking) return;
    this.tracking = true;
    this.reportAll = true;
  }
  stopDirtyLog() {
    this.tracking = false;
    this.dirty.clearAll();
  }
  /** Exact: the pages stepped on since the last sync (every page on the first one). */
  async syncDirtyLog(sink) {
    this.startDirtyLog();
    if (this.reportAll) {
      this.reportAll = false;
      this.dirty.setAll();
    }
    // Steps run on this thread too, so none can slip in between the copy and the clear.
    sink(this.block.idstr, this.dirty.words.slice());
    this.dirty.clearAll();
  }
  async pause() {
    clearInterval(this.timer);
    this.timer = undefined;
  }
  resume() {
    this.timer ??= setInterval(() => {
      for (let i = 0; i < STEPS_PER_TICK; i++) this.step();
    }, 1);
  }
  setThrottle(_percent) {}
  registerDevices(registry) {
    registry.register({ idstr: 'toy-cpu', instanceId: 0, vmsd: toyCpuVmsd, opaque: this.cpu });
  }
  async destroy() {
    await this.pause();
    this.serial.end();
  }
}

/** Whether RAM is exactly what `counter` steps leave behind: the first bad page, or undefined. */
function badPage(machine) {
  const steps = machine.cpu.counter;
  const view = new DataView(machine.memory.buffer);
  for (let page = 0; page < RAM_PAGES; page++) {
    const at = page * TARGET_PAGE_SIZE;
    if (steps <= page) {
      if (machine.memory.subarray(at, at + TARGET_PAGE_SIZE).some((b) => b !== 0)) return `page ${page}: written, but never stepped on`;
      continue;
    }
    const n = page + Math.floor((steps - 1 - page) / RAM_PAGES) * RAM_PAGES;
    const value = view.getUint32(at, true);
    if (value !== n) return `page ${page}: holds step ${value}, expected step ${n}`;
    const fill = (n * 7 + 1) & 0xff;
    for (let i = 4; i < TARGET_PAGE_SIZE; i++) if (machine.memory[at + i] !== fill) return `page ${page}: byte ${i} is not step ${n}'s`;
  }
  return undefined;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The destination (the forked process): listen, load, check, run on, report to the parent. */
async function destination() {
  const machine = new CounterMachine({ incoming: true });
  const incoming = new IncomingMigration(machine);
  let atLoad;
  // Synchronous with the load's end: RAM exactly as loaded, before the toy runs again.
  incoming.on('loaded', () => {
    atLoad = { counter: machine.cpu.counter, bad: badPage(machine) };
  });
  const address = await incoming.listen('tcp:127.0.0.1:0');
  const loaded = incoming.run();
  await incoming.ramPrepared; // guest RAM touched: no page fault of ours in the migration
  process.send({ listening: address });
  const result = await loaded;
  if (result.status !== 'completed') {
    report({ ok: false, why: `incoming migration ${result.status}: ${result.error?.message}` });
    return;
  }
  await sleep(200); // the toy runs on here
  await machine.pause();
  const after = { counter: machine.cpu.counter, bad: badPage(machine) };
  await machine.destroy();
  const ok = result.started && atLoad !== undefined && atLoad.bad === undefined && after.bad === undefined && after.counter > atLoad.counter;
  report({ ok, atLoad, after, started: result.started, loadTimeMs: result.loadTimeMs, bytes: result.bytes });
}

/** The last word to the parent; then the IPC channel closes, so this process can exit. */
function report(message) {
  process.send(message, () => process.disconnect());
}

/** The source: run the toy, start the destination, migrate to it while the toy writes. */
async function source() {
  const machine = new CounterMachine({ incoming: false });
  const child = fork(fileURLToPath(import.meta.url), ['--incoming'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const messages = [];
  let wake = () => {};
  child.on('message', (m) => {
    messages.push(m);
    wake();
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal)));
  const next = async () => {
    while (messages.length === 0) {
      const exitedFirst = await Promise.race([exited.then((c) => ({ c })), new Promise((r) => (wake = r))]);
      if (exitedFirst && messages.length === 0) throw new Error(`the destination exited (${exitedFirst.c}) without reporting`);
    }
    return messages.shift();
  };
  try {
    const { listening } = await next();
    console.log(`destination listening at ${listening}`);
    await sleep(100); // some pages written before the migration starts

    const migration = new OutgoingMigration(machine);
    let passes = 0;
    migration.on('pass', (p) => (passes = p));
    migration.on('status', (s) => console.log(`source: ${s}`));
    migration.start(listening);
    const status = await migration.finished;
    if (status !== 'completed') throw new Error(`migration ${status}: ${migration.error?.message}`);
    const snapshot = migration.snapshot();
    console.log(
      `source: migrated after ${passes} passes, ${snapshot.ram?.transferredBytes ?? '?'} bytes, ` +
        `downtime ${snapshot.downtimeMs?.toFixed(1)} ms; the source stopped at step ${machine.cpu.counter}, running: ${machine.running}`,
    );

    const report = await next();
    if (!report.ok) throw new Error(`the destination's check failed: ${JSON.stringify(report)}`);
    if (report.atLoad.counter !== machine.cpu.counter) {
      throw new Error(`the destination loaded step ${report.atLoad.counter}, the source stopped at ${machine.cpu.counter}`);
    }
    console.log(
      `destination: RAM exact at step ${report.atLoad.counter} (every page as the steps left it), ` +
        `ran on to step ${report.after.counter}, still exact`,
    );
    console.log('example OK');
  } finally {
    await machine.destroy();
    if (child.exitCode === null) child.kill();
    await exited;
  }
}

if (process.argv.includes('--incoming')) {
  destination().catch((err) => {
    if (process.connected) report({ ok: false, why: err.stack ?? String(err) });
    process.exitCode = 1;
  });
} else {
  source().catch((err) => {
    console.error(`example FAILED: ${err.message}`);
    process.exitCode = 1;
  });
}
