/**
 * Fault scenarios between real `livemig run` processes: start a source and
 * destinations (optionally behind a FaultProxy), drive them over QMP, and check
 * the "never lose a VM" invariants after a fault:
 *
 * - the guest runs on exactly one side, or waits paused on exactly one side
 *   with a clear message (outcome unknown, naming the command that resolves it);
 *   never on both, never nowhere (except when the process that held the only copy
 *   was SIGKILLed: "killed with its guest");
 * - its memory is intact by its own check (`x-livemig-check-guest` on the paused guest);
 * - a second migration from wherever it is to a fresh destination succeeds.
 *
 * Used by test/faults.test.ts and scripts/soak.ts. Everything started here is
 * registered in its Scenario and ended by `cleanup()`, even after a failure.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient, type MigrationInfo, type QmpEvent } from '../../src/monitor/qmp-client.js';
import { FaultProxy } from './fault-proxy.js';
import { LivemigProcess } from './livemig-process.js';

const MiB = 1024 * 1024;

/**
 * Parameters given to every machine (`--param` on `run`, both sides). The peer
 * timeout is the engine's target behaviour; today's engine rejects the name, so
 * `LIVEMIG_FAULT_PARAMS` overrides the list: `LIVEMIG_FAULT_PARAMS=` (empty) for
 * none, or `NAME=V,NAME=V`.
 */
export const PEER_TIMEOUT_MS = 2000;
export const FAULT_PARAMS: Readonly<Record<string, number>> = parseParams(process.env.LIVEMIG_FAULT_PARAMS) ?? {
  'x-livemig-peer-timeout-ms': PEER_TIMEOUT_MS,
};

function parseParams(text: string | undefined): Record<string, number> | undefined {
  if (text === undefined) return undefined;
  const out: Record<string, number> = {};
  for (const item of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const [k, v] = item.split('=');
    out[k!] = Number(v);
  }
  return out;
}

/** How long a side may take to notice a dead or silent peer and settle. */
export const SETTLE_MS = Number(process.env.LIVEMIG_FAULT_SETTLE_MS ?? PEER_TIMEOUT_MS * 4 + 6000);

export const FINAL = new Set(['completed', 'failed', 'cancelled']);

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export type Role = 'source' | 'destination';

/** One `livemig run` process with its QMP connection and the QMP events it sent. */
export class Vm {
  qmp: QmpClient | undefined;
  readonly qmpEvents: QmpEvent[] = [];
  /** Listening URI (destinations). */
  uri = '';
  /** Index into qmpEvents where the current outgoing migration started (startMigration sets it). */
  migrateMark = -1;
  killed = false;
  constructor(
    readonly name: string,
    readonly role: Role,
    readonly proc: LivemigProcess,
    readonly qmpPath: string,
  ) {}

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signal === null;
  }

  async connect(): Promise<void> {
    this.qmp = await QmpClient.connect(`unix:${this.qmpPath}`, { retryForMs: 5000 });
    this.qmp.on('event', (e: QmpEvent) => this.qmpEvents.push(e));
  }

  /** A QMP command; rejects if the process is gone. */
  exec<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (!this.qmp) return Promise.reject(new Error(`${this.name}: no QMP connection`));
    return this.qmp.execute<T>(command, args);
  }

  async status(): Promise<string | undefined> {
    if (!this.alive) return undefined;
    try {
      return (await this.exec<{ status: string }>('query-status')).status;
    } catch {
      return undefined;
    }
  }

  async query(): Promise<MigrationInfo | undefined> {
    if (!this.alive) return undefined;
    try {
      return await this.exec<MigrationInfo>('query-migrate');
    } catch {
      return undefined;
    }
  }

  /** Migration statuses seen in MIGRATION events, in order. */
  statuses(): string[] {
    return this.qmpEvents.filter((e) => e.event === 'MIGRATION').map((e) => String(e.data.status));
  }

  /** The last MIGRATION status of the outgoing migration started by startMigration, from its events. */
  eventStatus(): string | undefined {
    if (this.migrateMark < 0) return undefined;
    const e = this.qmpEvents.slice(this.migrateMark).filter((x) => x.event === 'MIGRATION').at(-1);
    return e ? String(e.data.status) : undefined;
  }

  /**
   * The outgoing migration's status: from its own MIGRATION events when it was
   * started by startMigration (capability `events` is always on here), since
   * query-migrate may report another migration; else query-migrate's.
   */
  async migrationStatus(): Promise<{ status: string | undefined; info: MigrationInfo | undefined }> {
    // The event first: the query that follows is at least as new (its error-desc belongs to that status).
    const status = this.eventStatus();
    const info = await this.query();
    if (this.migrateMark < 0) return { status: info?.status, info };
    return { status: status ?? 'setup', info };
  }

  /** Once settled: does query-migrate agree with this migration's events? */
  async queryMismatch(): Promise<string | undefined> {
    const ev = this.eventStatus();
    const q = (await this.query())?.status;
    if (ev === undefined || q === undefined || ev === q) return undefined;
    return `query-migrate reports '${q}' but this migration's MIGRATION events say '${ev}'`;
  }

  sawEvent(name: string): boolean {
    return this.qmpEvents.some((e) => e.event === name);
  }

  /** SIGKILL, and wait until the process is gone. */
  async kill(): Promise<void> {
    if (!this.alive) return;
    this.killed = true;
    this.proc.child.kill('SIGKILL');
    await this.proc.exited;
  }

  async stop(): Promise<void> {
    await this.qmp?.close().catch(() => {});
    if (this.alive) {
      this.proc.child.kill('SIGTERM');
      const t = setTimeout(() => this.proc.child.kill('SIGKILL'), 3000);
      await this.proc.exited;
      clearTimeout(t);
    }
  }

  /** Last lines of stderr, for reports. */
  tail(): string {
    return this.proc.stderr.trim().split('\n').slice(-3).join(' | ');
  }
}

export interface MachineOptions {
  ram?: string;
  /** Extra `run` arguments (disks, -S, ...). */
  args?: string[];
  /** Pages per second the guest writes (source only). */
  dirtyRate?: number;
  params?: Record<string, number>;
  caps?: string[];
}

/** Owns every process, proxy and temp file of one case. */
export class Scenario {
  readonly vms: Vm[] = [];
  readonly proxies: FaultProxy[] = [];
  readonly log: string[] = [];
  private serial = 0;
  private constructor(readonly dir: string) {}

  static async create(prefix = 'livemig-fault-'): Promise<Scenario> {
    return new Scenario(await mkdtemp(join(tmpdir(), prefix)));
  }

  note(line: string): void {
    this.log.push(`${new Date().toISOString().slice(11, 23)} ${line}`);
  }

  private paramArgs(extra: Record<string, number> = {}): string[] {
    return Object.entries({ ...FAULT_PARAMS, ...extra }).flatMap(([k, v]) => ['--param', `${k}=${v}`]);
  }

  private async startVm(role: Role, args: string[], o: MachineOptions): Promise<Vm> {
    const name = `${role === 'source' ? 'src' : 'dst'}${this.serial++}`;
    const qmpPath = join(this.dir, `${name}.qmp`);
    const proc = LivemigProcess.start([
      '--machine', 'test', '--ram', o.ram ?? '32M', '--pattern', 'sequential', '--qmp', `unix:${qmpPath}`,
      ...this.paramArgs(o.params), ...(o.caps ?? []).flatMap((c) => ['--cap', c]), ...args, ...(o.args ?? []),
    ]);
    const vm = new Vm(name, role, proc, qmpPath);
    this.vms.push(vm);
    try {
      await proc.waitFor('qmp', () => true, 20_000);
      await vm.connect();
      await vm.exec('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
      // `run --param` reaches only destinations and --migrate-to sources; a QMP-driven source takes them here.
      const params = { ...FAULT_PARAMS, ...(o.params ?? {}) };
      if (Object.keys(params).length > 0) await vm.exec('migrate-set-parameters', params);
    } catch (e) {
      await sleep(200);
      const why = proc.stderr.trim() || (e as Error).message;
      throw new Error(`${name} (${role}) did not start: ${why}${/x-livemig-peer-timeout-ms/.test(why) ? ' (this engine lacks the peer timeout; LIVEMIG_FAULT_PARAMS= runs without it)' : ''}`);
    }
    return vm;
  }

  /** A running source guest (test machine, sequential pattern). */
  async source(o: MachineOptions = {}): Promise<Vm> {
    const vm = await this.startVm('source', ['--dirty-rate', String(o.dirtyRate ?? 8000)], o);
    this.note(`${vm.name} started (source)`);
    return vm;
  }

  /** A destination waiting on tcp:127.0.0.1:PORT (its real port from the `listening` event). */
  async destination(o: MachineOptions = {}): Promise<Vm> {
    // The dirty rate is the host's setting: the same on destinations, so chains behave alike at every hop.
    const vm = await this.startVm('destination', ['--incoming', 'tcp:127.0.0.1:0', '--dirty-rate', String(o.dirtyRate ?? 8000)], o);
    const listening = await vm.proc.waitFor('listening', () => true, 20_000);
    vm.uri = String(listening.address);
    this.note(`${vm.name} listening on ${vm.uri}`);
    return vm;
  }

  async proxy(target: Vm, seed?: number): Promise<FaultProxy> {
    const port = Number(/:(\d+)$/.exec(target.uri)![1]);
    const proxy = await FaultProxy.start({ targetPort: port, ...(seed !== undefined ? { seed } : {}) });
    this.proxies.push(proxy);
    return proxy;
  }

  path(name: string): string {
    return join(this.dir, name);
  }

  /** Stop one process and forget it (long chains). */
  async retire(vm: Vm): Promise<void> {
    await vm.stop().catch(() => {});
    const i = this.vms.indexOf(vm);
    if (i >= 0) this.vms.splice(i, 1);
  }

  async retireProxy(proxy: FaultProxy): Promise<void> {
    await proxy.close().catch(() => {});
    const i = this.proxies.indexOf(proxy);
    if (i >= 0) this.proxies.splice(i, 1);
  }

  /** Stop every process (SIGTERM, then SIGKILL), close proxies, remove the temp dir. */
  async cleanup(): Promise<void> {
    await Promise.all(this.vms.map((vm) => vm.stop().catch(() => {})));
    await Promise.all(this.proxies.map((p) => p.close().catch(() => {})));
    await rm(this.dir, { recursive: true, force: true });
  }
}

export interface MigrateOptions {
  caps?: string[];
  params?: Record<string, unknown>;
  blk?: boolean;
}

/** Set capabilities (events always) and parameters on the source, then `migrate`. */
export async function startMigration(src: Vm, uri: string, o: MigrateOptions = {}): Promise<void> {
  const caps = ['events', ...(o.caps ?? [])];
  await src.exec('migrate-set-capabilities', { capabilities: caps.map((capability) => ({ capability, state: true })) });
  if (o.params && Object.keys(o.params).length > 0) await src.exec('migrate-set-parameters', o.params);
  src.migrateMark = src.qmpEvents.length;
  await src.exec('migrate', { uri, ...(o.blk ? { blk: true } : {}) });
}

/** Undo per-migration capabilities and parameters so the next migration starts plain. */
export async function resetMigrationSettings(vm: Vm): Promise<void> {
  const off = ['xbzrle', 'multifd', 'auto-converge', 'pause-before-switchover', 'block'];
  await vm.exec('migrate-set-capabilities', { capabilities: off.map((capability) => ({ capability, state: false })) });
  await vm.exec('migrate-set-parameters', { 'max-bandwidth': 0, 'downtime-limit': 300 });
}

/** Poll query-migrate until `until` holds, a final state, the process dies, or the timeout. */
export async function pollMigration(vm: Vm, until: (i: MigrationInfo) => boolean = () => false, timeoutMs = 60_000): Promise<MigrationInfo | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { status, info } = await vm.migrationStatus();
    if (!info) return undefined;
    // A migration started by startMigration is judged by its own events: query-migrate may show an older one.
    const own = { ...info, status };
    if (until(own) || FINAL.has(own.status ?? '')) return own;
    if (Date.now() > deadline) return own;
    await sleep(20);
  }
}

/** Wait for a QMP event on `vm` (from those already seen, or later). */
/** The first event `name` satisfying `test`, among those from index `from` of the VM's event log on. */
export async function waitEvent(vm: Vm, name: string, test: (e: QmpEvent) => boolean = () => true, timeoutMs = 30_000, from = 0): Promise<QmpEvent | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const e = vm.qmpEvents.slice(from).find((x) => x.event === name && test(x));
    if (e) return e;
    if (!vm.alive || Date.now() > deadline) return undefined;
    await sleep(10);
  }
}

export type Where = 'source' | 'destination' | 'source-paused' | 'destination-paused' | 'killed' | 'nowhere' | 'both';

export interface Outcome {
  where: Where;
  srcStatus: string;
  errorDesc?: string;
  dstState: string;
  /** The process holding the guest, for a second migration. */
  holder?: Vm;
  violations: string[];
  lostWrites: boolean;
  notes: string[];
}

/** An error-desc that says the outcome is unknown and names the command that resolves it. */
export function clearUnknownMessage(desc: string | undefined): boolean {
  if (!desc) return false;
  return /unknown|not known|cannot tell|may (already )?run/i.test(desc) && /\b(cont|query-status|query-migrate|migrate_cancel|x-livemig-[a-z-]+|migrate-[a-z-]+|quit)\b/.test(desc);
}

/** Stop (if running), run the guest's own memory check, resume if it was running. */
export async function memoryCheck(vm: Vm): Promise<{ ok: boolean; reason?: string }> {
  const was = await vm.status();
  if (was === undefined) return { ok: false, reason: `${vm.name} is gone` };
  try {
    if (was === 'running') await vm.exec('stop');
    const c = await vm.exec<{ memoryCheck?: { ok: boolean; reason?: string }; diskCheck?: { ok: boolean; errors: string[] } }>('x-livemig-check-guest');
    if (!c.memoryCheck) return { ok: false, reason: 'no memoryCheck in x-livemig-check-guest' };
    if (!c.memoryCheck.ok) return { ok: false, reason: `memory check: ${c.memoryCheck.reason}` };
    if (c.diskCheck && !c.diskCheck.ok) return { ok: false, reason: `disk check: ${c.diskCheck.errors.slice(0, 3).join('; ')}` };
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: `check failed: ${(e as Error).message}` };
  } finally {
    if (was === 'running') await vm.exec('cont').catch(() => {});
  }
}

/**
 * After a fault: wait for both sides to settle, then classify where the guest is
 * and check the invariants. `src`/`dst` may have been killed (vm.killed).
 */
export async function settleAndCheck(s: Scenario, src: Vm, dst: Vm, settleMs = SETTLE_MS): Promise<Outcome> {
  const violations: string[] = [];
  const notes: string[] = [];
  const deadline = Date.now() + settleMs;
  // 1. The source's migration ends.
  let info: MigrationInfo | undefined;
  let status: string | undefined;
  for (;;) {
    ({ status, info } = await src.migrationStatus());
    if (!info || FINAL.has(status ?? '') || Date.now() > deadline) break;
    await sleep(50);
  }
  const mismatch = src.alive ? await src.queryMismatch() : undefined;
  if (mismatch) violations.push(`source: ${mismatch}`);
  const srcStatus = src.killed ? 'killed' : src.alive ? status ?? 'none' : `exited(${src.proc.exitCode ?? src.proc.signal})`;
  const errorDesc = info?.['error-desc'];
  if (src.alive && !src.killed && !FINAL.has(srcStatus)) violations.push(`source migration still '${srcStatus}' ${settleMs} ms after the fault (no peer timeout?)`);
  if (!src.alive && !src.killed) violations.push(`source process exited (${src.proc.exitCode ?? src.proc.signal}): ${src.tail()}`);
  // 2. The destination settles: exits, or leaves 'inmigrate'.
  let dstState = 'gone';
  for (;;) {
    const st = await dst.status();
    dstState = st ?? (dst.killed ? 'killed' : dst.alive ? 'unreachable' : `exited(${dst.proc.exitCode ?? dst.proc.signal}: ${dst.tail().slice(0, 160)})`);
    // Alive but not answering: it is going away (a failed destination exits), look again.
    if ((st !== 'inmigrate' && !(st === undefined && dst.alive)) || Date.now() > deadline) break;
    await sleep(50);
  }
  if (dstState === 'inmigrate') {
    const q = await dst.query();
    if (q?.status === 'setup') {
      // Still waiting for a source: nothing of the guest reached it (the source died or gave up before its
      // stream began; a silent connection is dropped after the peer timeout). Not a lost guest: a waiting
      // destination must be cancellable, so cancel it.
      await dst.qmp?.execute('migrate_cancel').catch(() => {});
      for (let i = 0; i < 40 && (await dst.query())?.status === 'setup'; i++) await sleep(50);
      const after = (await dst.query())?.status;
      if (after !== undefined && after !== 'cancelled') violations.push(`a waiting destination did not cancel (status ${after})`);
      dstState = (await dst.status()) ?? 'gone';
    } else {
      violations.push(`destination still waiting in its incoming migration (${q?.status ?? '?'}) ${settleMs} ms after the fault`);
    }
  }
  // A source that completed must have a running destination; the destination may take a moment.
  if (srcStatus === 'completed' && dstState !== 'running') {
    await sleep(500);
    dstState = (await dst.status()) ?? dstState;
  }
  const srcState = (await src.status()) ?? (src.killed ? 'killed' : 'gone');
  s.note(`settled: source ${srcStatus}/${srcState}${errorDesc ? ` (${errorDesc})` : ''}; destination ${dstState}`);

  // 3. Where is the guest?
  let where: Where;
  let holder: Vm | undefined;
  const srcRuns = srcState === 'running';
  const dstRuns = dstState === 'running';
  if (srcRuns && dstRuns) {
    where = 'both';
    violations.push('the guest runs on both sides');
  } else if (srcRuns) {
    where = 'source';
    holder = src;
  } else if (dstRuns) {
    where = 'destination';
    holder = dst;
    if (src.killed && !src.sawEvent('STOP')) violations.push('the destination started the guest although the killed source never stopped it (no go-ahead can have been sent)');
    if (srcStatus === 'cancelled') violations.push('source reports cancelled but the destination runs the guest');
    if (srcStatus === 'failed' && !clearUnknownMessage(errorDesc)) violations.push(`source reports failed without saying the outcome is unknown, but the destination runs the guest: ${errorDesc}`);
  } else if (dst.killed && srcStatus === 'completed') {
    // The destination had the only running copy.
    where = 'killed';
  } else if (src.alive && (srcState === 'paused' || srcState === 'postmigrate' || srcState === 'finish-migrate')) {
    if (srcStatus === 'failed' && clearUnknownMessage(errorDesc)) {
      where = 'source-paused';
      holder = src;
      notes.push(`source paused with: ${errorDesc}`);
    } else {
      where = 'nowhere';
      violations.push(`the guest runs nowhere: source ${srcStatus}/${srcState} without a clear message (${errorDesc ?? 'no error-desc'}), destination ${dstState}`);
    }
  } else if (dst.alive && dstState === 'paused') {
    where = 'destination-paused';
    holder = dst;
    violations.push('the destination holds the guest paused (no -S was given)');
  } else if (src.killed && srcState === 'killed') {
    where = 'killed';
  } else if (dst.killed && srcState !== 'running') {
    where = src.alive ? 'nowhere' : 'killed';
    if (src.alive) violations.push(`destination killed and the source guest is ${srcState} (${srcStatus}: ${errorDesc ?? ''})`);
  } else {
    where = 'nowhere';
    violations.push(`the guest runs nowhere: source ${srcStatus}/${srcState}, destination ${dstState}`);
  }
  if (srcStatus === 'cancelled' && srcState !== 'running' && src.alive) violations.push(`source cancelled but its guest is ${srcState}`);

  // 4. The guest's own memory check, where it is (and on the source if it still holds a copy).
  let lostWrites = false;
  const toCheck = new Set<Vm>();
  if (holder) toCheck.add(holder);
  if (where === 'destination' && src.alive && srcState !== 'postmigrate') toCheck.add(src);
  for (const vm of toCheck) {
    const c = await memoryCheck(vm);
    if (!c.ok) {
      lostWrites = true;
      violations.push(`${vm.name}: ${c.reason}`);
    }
  }
  return { where, srcStatus, ...(errorDesc !== undefined ? { errorDesc } : {}), dstState, ...(holder ? { holder } : {}), violations, lostWrites, notes };
}

/**
 * The second migration: from wherever the guest is to a fresh destination, no
 * faults; the new destination must run a guest whose memory check passes.
 * A source paused with "outcome unknown" whose destination is gone is resumed
 * first (`cont`, what its message names for that case).
 */
export async function secondMigration(s: Scenario, outcome: Outcome, o: MigrateOptions & { dst?: MachineOptions; timeoutMs?: number } = {}): Promise<{ ok: boolean; reason?: string; dst?: Vm }> {
  const holder = outcome.holder;
  if (!holder || !holder.alive) return { ok: true, reason: 'no guest to migrate' };
  // A source paused with "outcome unknown" whose destination did not run the guest: resolve with cont.
  if (outcome.where === 'source-paused') await holder.exec('cont').catch(() => {});
  await resetMigrationSettings(holder).catch(() => {});
  const next = await s.destination(o.dst ?? {});
  await startMigration(holder, next.uri, o);
  const end = await pollMigration(holder, () => false, o.timeoutMs ?? 60_000);
  if (end?.status !== 'completed') return { ok: false, reason: `second migration ${end?.status ?? 'lost'}: ${end?.['error-desc'] ?? ''}`, dst: next };
  let st: string | undefined;
  for (let i = 0; i < 50 && (st = await next.status()) !== 'running'; i++) await sleep(100);
  if (st !== 'running') return { ok: false, reason: `second migration completed but the new destination is ${st ?? 'gone'}: ${next.tail()}`, dst: next };
  const srcSt = await holder.status();
  if (srcSt === 'running') return { ok: false, reason: 'second migration: the guest runs on both sides', dst: next };
  const c = await memoryCheck(next);
  if (!c.ok) return { ok: false, reason: `second migration: ${c.reason}`, dst: next };
  return { ok: true, dst: next };
}

export const DEFAULT_BANDWIDTH = 20 * MiB;
