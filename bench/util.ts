/** Small helpers shared by the benchmark scripts. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** The livemig CLI as built by `tsc -p .` (dist/bench/ → dist/src/cli/main.js). */
export const LIVEMIG_MAIN = new URL('../src/cli/main.js', import.meta.url).pathname;

/** A size field of /proc/PID/status (VmHWM, VmRSS, ...) in bytes; undefined when unavailable. */
function procStatusBytes(pid: number, field: 'VmHWM' | 'VmRSS'): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Peak resident set (VmHWM) of a live process, from /proc; undefined when unavailable. */
export function peakRssBytes(pid: number | undefined): number | undefined {
  return pid === undefined ? undefined : procStatusBytes(pid, 'VmHWM');
}

/** Resident set now (VmRSS) of a live process, from /proc; undefined when unavailable. */
export function currentRssBytes(pid: number): number | undefined {
  return procStatusBytes(pid, 'VmRSS');
}

/** A child process whose stdout lines are awaited one at a time. */
export class LineChild {
  readonly child: ChildProcess;
  stderr = '';
  private readonly lines: string[] = [];
  /** The last stdout lines, for messages about a child that stopped answering. */
  readonly recent: string[] = [];
  private wake: (() => void) | undefined;
  private ended = false;
  private readonly exited: Promise<number | null>;

  constructor(command: string, args: string[]) {
    this.child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))));
    const rl = createInterface({ input: this.child.stdout! });
    rl.on('line', (line) => {
      this.recent.push(line);
      if (this.recent.length > 8) this.recent.shift();
      this.lines.push(line);
      this.wake?.();
    });
    rl.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** The next stdout line for which `match` returns a value; throws if stdout ends first. */
  async waitFor<T>(match: (line: string) => T | undefined, what: string): Promise<T> {
    for (;;) {
      const line = this.lines.shift();
      if (line !== undefined) {
        const value = match(line);
        if (value !== undefined) return value;
        continue;
      }
      if (this.ended) throw new Error(`${what}: the child's output ended (exit ${await this.exited}): ${this.stderr.trim()}`);
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }

  /** Wait up to `timeoutMs` for the child to exit by itself; its exit code, or undefined if it still runs. */
  async exitWithin(timeoutMs: number): Promise<number | null | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), timeoutMs)));
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Send `signal` (if still running) and wait for the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

/** Matches a JSON line `{"event": name, ...}`. */
export function jsonEvent(name: string): (line: string) => Record<string, unknown> | undefined {
  return (line) => {
    try {
      const value = JSON.parse(line) as Record<string, unknown>;
      return value.event === name ? value : undefined;
    } catch {
      return undefined;
    }
  };
}

/** CPU seconds (user, system) a process has used so far, from /proc/PID/stat (all its threads). */
export function cpuSeconds(pid: number | undefined): { user: number; sys: number } | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields 3.. of proc(5)
    const ticks = 100; // USER_HZ, 100 on Linux x86
    return { user: Number(fields[11]) / ticks, sys: Number(fields[12]) / ticks };
  } catch {
    return undefined;
  }
}

/** This process's CPU seconds (user, system) so far, all its threads (getrusage RUSAGE_SELF, microseconds). */
export function ownCpuSeconds(): { user: number; sys: number } {
  const u = process.cpuUsage();
  return { user: u.user / 1e6, sys: u.system / 1e6 };
}

/** user + system seconds used between two readings; undefined when either is missing. */
export function cpuUsed(before: ReturnType<typeof cpuSeconds>, after: ReturnType<typeof cpuSeconds>): number | undefined {
  return before && after ? after.user - before.user + (after.sys - before.sys) : undefined;
}

/**
 * Samples another process's CPU time (cpuSeconds) every `everyMs` and keeps
 * the last reading, so it is known even after the process exited (a
 * destination that exits when its migration is cancelled or fails): the
 * figure is then at most `everyMs` short.
 */
export class CpuSampler {
  private last: ReturnType<typeof cpuSeconds>;
  private readonly timer: NodeJS.Timeout;
  constructor(private readonly pid: () => number | undefined, everyMs = 200) {
    this.last = cpuSeconds(pid());
    this.timer = setInterval(() => this.sample(), everyMs);
    this.timer.unref();
  }
  sample(): ReturnType<typeof cpuSeconds> {
    const v = cpuSeconds(this.pid());
    if (v) this.last = v;
    return this.last;
  }
  /** Take a last sample and stop. */
  stop(): ReturnType<typeof cpuSeconds> {
    clearInterval(this.timer);
    return this.sample();
  }
}

/** CPU used between two cpuSeconds() readings, as "user+sys s". */
export function cpuDelta(before: ReturnType<typeof cpuSeconds>, after: ReturnType<typeof cpuSeconds>): string {
  if (!before || !after) return '?';
  return `${(after.user - before.user).toFixed(1)}+${(after.sys - before.sys).toFixed(1)}`;
}

/** `{ [key]: value }`, or nothing when the value is undefined (optional RunResult fields). */
export function optNumber<K extends string>(key: K, value: number | undefined): Partial<Record<K, number>> {
  return value === undefined ? {} : ({ [key]: value } as Record<K, number>);
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** `promise`, or an error naming `what` once `ms` passed without it settling (a hung step becomes a failed run, not a hung bench). */
export async function within<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(what())), ms)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Samples a process's peak RSS (VmHWM) every `everyMs` and keeps the last
 * value read, so it is known even after the process exited (e.g. a
 * destination that exits when its migration is cancelled).
 */
export class PeakRssSampler {
  private last: number | undefined;
  private readonly timer: NodeJS.Timeout;
  constructor(private readonly pid: () => number | undefined, everyMs = 200) {
    this.timer = setInterval(() => this.sample(), everyMs);
    this.timer.unref();
  }
  sample(): number | undefined {
    const v = peakRssBytes(this.pid());
    if (v !== undefined) this.last = Math.max(this.last ?? 0, v);
    return this.last;
  }
  /** Take a last sample and stop. */
  stop(): number | undefined {
    clearInterval(this.timer);
    return this.sample();
  }
}

/**
 * One migration's figures, the same for livemig and QEMU (one line of JSON
 * from each child; one cell of the runner's tables).
 */
export interface RunResult {
  engine: 'livemig' | 'qemu';
  scenario: string;
  /** Final status: completed, cancelled (did not converge within the bound), failed. */
  status: string;
  converged: boolean;
  /** total-time (ms); for a cancelled run, the time until the cancel. */
  totalMs: number;
  setupMs?: number;
  downtimeMs?: number;
  /** ram.transferred (+ disk bytes for block migration). */
  wireBytes: number;
  /** dirty-sync-count. */
  passes: number;
  guestRamBytes: number;
  sourcePeakRssBytes?: number;
  /**
   * livemig only: the source's resident set just before `migrate` (Node, the
   * machine with its RAM resident, the destination already listening): the
   * peak minus this is what the migration itself added.
   */
  sourceRssBeforeMigrateBytes?: number;
  /** livemig only: the source's resident set before the machine was created (Node with livemig's modules loaded). */
  sourceRssBeforeMachineBytes?: number;
  destPeakRssBytes?: number;
  /** CPU used from `migrate` to the end, user+system seconds as "user+sys" (printed per run). */
  sourceCpu: string;
  destCpu: string;
  /**
   * The same as numbers (user + system seconds, every thread of the process):
   * livemig source = the bench child itself (process.cpuUsage), livemig
   * destination = its `livemig run` child, QEMU = each QEMU process
   * (/proc/PID/stat: utime + stime, which count all threads, those that have
   * exited too). Workload rows include the guest's vCPU.
   */
  sourceCpuSeconds?: number;
  destCpuSeconds?: number;
  /** Bytes sent while the guest was stopped (livemig only). */
  downtimeBytes?: number;
  xbzrle?: { bytes: number; pages: number; cacheMiss: number; overflow: number };
  /** Disk scenario: sequential read speed of the source image, bytes/s. */
  readBytesPerSecond?: number;
  error?: string;
  /**
   * Workload scenarios: the guest's full passes over its 99 MiB range per
   * second while the migration ran (a pass = 25,344 page writes); how hard the
   * guest really wrote, which differs between engines.
   */
  guestPassesPerSecond?: number;
  /** Anything unusual about this run's figures (printed with it). */
  note?: string;
  /** Postcopy scenarios (spec.postcopy): figures of the switch and what followed. */
  postcopy?: PostcopyFigures;
}

/**
 * A postcopy run's own figures (issue 16). `pause` is RunResult.downtimeMs
 * (the source's `downtime`: in postcopy, guest stop until the device state
 * went out, as QEMU defines it).
 */
export interface PostcopyFigures {
  /** ms from `migrate` until the first-pass rule held and `migrate-start-postcopy` was sent; undefined if it never was. */
  startedAtMs?: number;
  /** The source went to `postcopy-active` (false: it completed in pre-copy before the switch). */
  switched?: boolean;
  /** ms from the source guest's stop until the destination's guest ran (wall clock: the source's stop, the destination's QMP RESUME event). */
  stopToRunningMs?: number;
  /** ms from the source's status `postcopy-active` until `completed`. */
  postcopyMs?: number;
  /** Destination `postcopy-blocktime` (ms the guest waited for pages, all vCPUs). */
  blocktimeMs?: number;
  /** Source `ram.postcopy-requests`: pages the destination asked for. */
  requests?: number;
  /** livemig destination `x-livemig-postcopy.requests` (its own count of the pages it asked for). */
  destRequests?: number;
  /** Source `ram.postcopy-bytes`: RAM sent after the switch. */
  postcopyBytes?: number;
}

/** What a scenario run does, passed to children as JSON. */
export interface ScenarioSpec {
  id: string;
  group: 'a' | 'b' | 'c' | 'd';
  label: string;
  ramBytes: number;
  /** random: every page random, guest idle; mostly-zero: `nonZeroBytes` random at 0, the rest zero, idle; workload: QEMU's migration-test guest running; disk: idle guest with a written disk. */
  fill: 'random' | 'mostly-zero' | 'workload' | 'disk';
  nonZeroBytes?: number;
  diskBytes?: number;
  /** bytes/s, 0 = unlimited. */
  maxBandwidth: number;
  downtimeLimitMs: number;
  /** Extra capabilities (multifd, xbzrle). */
  caps: string[];
  /** Extra parameters (multifd-channels). */
  params: Record<string, number>;
  /** Cancel and report "did not converge" after this long. */
  boundMs: number;
  /** TLS x509 on every channel (verify-peer on): the same certificates for livemig and QEMU. */
  tls?: boolean;
  /** Set by the runner when `tls`: tls-creds-x509 directories (server, client). */
  tlsDirs?: { server: string; client: string };
  /**
   * Postcopy (issue 16): capability postcopy-ram on both sides (postcopy-blocktime on the
   * destination) and `migrate-start-postcopy` once the first pass over RAM is complete
   * (FIRST_PASS_RULE).
   */
  postcopy?: boolean;
}

/**
 * When a postcopy scenario switches, the same for both engines: the source's
 * `query-migrate`, polled every POSTCOPY_POLL_MS, shows every guest page
 * handled once (`ram.normal + ram.duplicate >= ram.total / ram.page-size`: each
 * page of the first pass is sent either as a page or as a zero page, and
 * neither engine counts anything else there before the pass ends).
 */
export const POSTCOPY_POLL_MS = 10;
export const FIRST_PASS_RULE = `migrate-start-postcopy once the source's query-migrate (polled every ${POSTCOPY_POLL_MS} ms) shows the first pass over RAM complete: ram.normal + ram.duplicate >= ram.total / ram.page-size`;

export function firstPassDone(ram: { normal: number; duplicate: number; total: number; 'page-size'?: number } | undefined): boolean {
  if (!ram || !(ram.total > 0)) return false;
  return ram.normal + ram.duplicate >= ram.total / (ram['page-size'] || 4096);
}

/** Reads `--spec JSON` from argv (children of bench/run.ts). */
export function specFromArgs(args: string[]): ScenarioSpec | undefined {
  const i = args.indexOf('--spec');
  return i >= 0 ? (JSON.parse(args[i + 1]!) as ScenarioSpec) : undefined;
}
