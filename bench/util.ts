/** Small helpers shared by the benchmark scripts. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** The livemig CLI as built by `tsc -p .` (dist/bench/ → dist/src/cli/main.js). */
export const LIVEMIG_MAIN = new URL('../src/cli/main.js', import.meta.url).pathname;

/** Peak resident set (VmHWM) of a live process, from /proc; undefined when unavailable. */
export function peakRssBytes(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** A child process whose stdout lines are awaited one at a time. */
export class LineChild {
  readonly child: ChildProcess;
  stderr = '';
  private readonly lines: string[] = [];
  private wake: (() => void) | undefined;
  private ended = false;
  private readonly exited: Promise<number | null>;

  constructor(command: string, args: string[]) {
    this.child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))));
    const rl = createInterface({ input: this.child.stdout! });
    rl.on('line', (line) => {
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

/** CPU used between two cpuSeconds() readings, as "user+sys s". */
export function cpuDelta(before: ReturnType<typeof cpuSeconds>, after: ReturnType<typeof cpuSeconds>): string {
  if (!before || !after) return '?';
  return `${(after.user - before.user).toFixed(1)}+${(after.sys - before.sys).toFixed(1)}`;
}
