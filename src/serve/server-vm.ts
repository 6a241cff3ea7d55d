/**
 * The server side of `livemig serve`: one `livemig run --machine v86
 * --incoming ws://127.0.0.1:0/... --qmp unix:... --json --verify` child,
 * read event by event from its JSON lines and driven over its QMP monitor.
 * The child is a whole livemig process, as an operator would run it: serve
 * only relays its migration streams and reads what it reports.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { QmpClient, type MigrationInfo } from '../monitor/qmp-client.js';

/** Path the child listens on for the incoming migration (on loopback, a port of its own). */
const INCOMING_PATH = '/livemig-incoming';
/** Serial output kept for the page, the newest part. */
const SERIAL_TAIL_CHARS = 4096;
/** The child's stderr kept for error messages. */
const STDERR_TAIL_CHARS = 4096;
const START_TIMEOUT_MS = 30_000;
/**
 * Its migration back goes to a tab, which loads far slower than Node sends (the page's one thread
 * also runs its VM): as the page's own migrateOut, a downtime limit of 2 s and auto-converge with a
 * throttle that starts at 50% and climbs by 20 (our test kernel outruns a tab at QEMU's defaults).
 */
const TO_TAB_MIGRATION_ARGS = ['--cap', 'auto-converge', '--param', 'downtime-limit=2000', '--param', 'cpu-throttle-initial=50', '--param', 'cpu-throttle-increment=20'];

export interface MemoryCheck {
  ok: boolean;
  reason?: string;
  [field: string]: unknown;
}

/** What the child said last about itself (from its JSON events). */
export interface ServerVmReport {
  pid: number;
  /** Its incoming migration: waiting, then completed or failed (the child then exits, as QEMU does). */
  incoming: 'waiting' | 'completed' | 'failed';
  incomingError?: string;
  /** The memory check of the state as loaded (`--verify`): the guest's own checksummed pages. */
  memoryCheck?: MemoryCheck;
  ramHash?: string;
  /** From the child's `guest` events, every 500 ms. */
  running: boolean;
  instructions?: number;
  serialBytes?: number;
  /** How many `guest` events came: the page sees the figures move. */
  guestReports: number;
  serialTail: string;
  exitCode?: number | null;
  exitSignal?: string | null;
}

type Event = { event: string } & Record<string, unknown>;

export class ServerVm {
  readonly report: ServerVmReport;
  /** ws://127.0.0.1:PORT/PATH the child waits on for the page's migration. */
  incomingAddress = '';
  readonly exited: Promise<void>;
  private qmp: QmpClient | undefined;
  private stderrTail = '';
  private waiters: Array<() => void> = [];
  private readonly events: Event[] = [];

  private constructor(
    private readonly child: ChildProcess,
    private readonly dir: string,
  ) {
    this.report = { pid: child.pid ?? 0, incoming: 'waiting', running: false, guestReports: 0, serialTail: '' };
    createInterface({ input: child.stdout! }).on('line', (line) => this.onLine(line));
    child.stderr!.setEncoding('utf8').on('data', (text: string) => (this.stderrTail = (this.stderrTail + text).slice(-STDERR_TAIL_CHARS)));
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        this.report.exitCode = code;
        this.report.exitSignal = signal;
        this.report.running = false;
        void this.qmp?.close();
        rmSync(this.dir, { recursive: true, force: true });
        this.wake();
        resolve();
      }),
    );
  }

  /** Starts the child and waits until it listens for the migration and its QMP monitor answers. */
  static async start(options: { cliPath: string; ramSizeBytes: number }): Promise<ServerVm> {
    const dir = mkdtempSync(join(tmpdir(), 'livemig-serve-'));
    const qmpPath = join(dir, 'qmp.sock');
    const args = [options.cliPath, 'run', '--machine', 'v86', '--ram', String(options.ramSizeBytes), '--incoming', `ws://127.0.0.1:0${INCOMING_PATH}`, '--qmp', `unix:${qmpPath}`, '--json', '--verify', ...TO_TAB_MIGRATION_ARGS];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const vm = new ServerVm(child, dir);
    try {
      const listening = await vm.waitFor('listening', START_TIMEOUT_MS);
      vm.incomingAddress = String(listening.address);
      vm.qmp = await QmpClient.connect(`unix:${qmpPath}`, { retryForMs: 5000 });
      vm.qmp.on('close', () => {});
    } catch (err) {
      await vm.kill();
      throw err;
    }
    return vm;
  }

  get pid(): number {
    return this.report.pid;
  }

  get alive(): boolean {
    return this.report.exitCode === undefined;
  }

  /** The child's stderr, last lines (for an error message). */
  get stderr(): string {
    return this.stderrTail.trim();
  }

  private onLine(line: string): void {
    let e: Event;
    try {
      e = JSON.parse(line) as Event;
    } catch {
      return; // not an event (nothing else is written with --json)
    }
    this.events.push(e);
    if (this.events.length > 1000) this.events.splice(0, 500);
    const r = this.report;
    switch (e.event) {
      case 'loaded':
        if (e.memoryCheck) r.memoryCheck = e.memoryCheck as MemoryCheck;
        if (typeof e.ramHash === 'string') r.ramHash = e.ramHash;
        break;
      case 'resumed':
        r.incoming = 'completed';
        break;
      case 'failed':
      case 'cancelled':
        if (r.incoming === 'waiting') {
          r.incoming = 'failed';
          r.incomingError = String(e.error ?? e.event);
        }
        break;
      case 'guest':
        r.running = e.running === true;
        if (typeof e.instructions === 'number') r.instructions = e.instructions;
        if (typeof e.serialBytes === 'number') r.serialBytes = e.serialBytes;
        r.guestReports++;
        break;
      case 'serial':
        r.serialTail = (r.serialTail + String(e.text ?? '')).slice(-SERIAL_TAIL_CHARS);
        break;
    }
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** The first event named `name` (already seen or to come). */
  async waitFor(name: string, timeoutMs: number, test: (e: Event) => boolean = () => true): Promise<Event> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find((e) => e.event === name && test(e));
      if (found) return found;
      if (!this.alive) throw new Error(`the server's livemig run (pid ${this.pid}) exited (${this.report.exitCode ?? this.report.exitSignal}) before '${name}'${this.stderr ? `: ${this.stderr}` : ''}`);
      if (Date.now() > deadline) throw new Error(`the server's livemig run (pid ${this.pid}) did not report '${name}' within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200).unref();
      });
    }
  }

  private monitor(): QmpClient {
    if (!this.qmp || this.qmp.closed) throw new Error(`the QMP monitor of the server's livemig run (pid ${this.pid}) is gone${this.alive ? '' : ': the process exited'}`);
    return this.qmp;
  }

  /** QMP `migrate`: the child sends its guest to `uri` (returns at once; follow with queryMigrate). */
  async migrate(uri: string): Promise<void> {
    await this.monitor().execute('migrate', { uri });
  }

  queryMigrate(): Promise<MigrationInfo> {
    return this.monitor().execute<MigrationInfo>('query-migrate');
  }

  /** QMP `cont`: run the guest again here (after a migration away the page could not finish). */
  async cont(): Promise<void> {
    await this.monitor().execute('cont');
  }

  /** QMP `quit`, then SIGTERM and SIGKILL if the child lingers. */
  async quit(timeoutMs = 5000): Promise<void> {
    if (!this.alive) return;
    try {
      await this.monitor().execute('quit');
    } catch {
      this.child.kill('SIGTERM');
    }
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** Ends the child now (serve is stopping, or the child never got going). */
  async kill(): Promise<void> {
    if (!this.alive) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await this.exited;
    clearTimeout(timer);
  }
}
