/** A `livemig run --json` child process, read event by event. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { cliPath } from './paths.js';

export type LivemigEvent = { event: string } & Record<string, any>;

export class LivemigProcess {
  readonly events: LivemigEvent[] = [];
  stderr = '';
  exitCode: number | null = null;
  signal: NodeJS.Signals | null = null;
  private waiters: Array<() => void> = [];
  readonly exited: Promise<void>;

  private constructor(readonly child: ChildProcess) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        this.events.push(JSON.parse(line) as LivemigEvent);
      } catch {
        this.events.push({ event: 'text', line });
      }
      this.wake();
    });
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        this.exitCode = code;
        this.signal = signal;
        this.wake();
        resolve();
      }),
    );
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    w.forEach((f) => f());
  }

  static start(args: string[]): LivemigProcess {
    return new LivemigProcess(spawn(process.execPath, [cliPath, 'run', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
  }

  /** The first event (from `from` on) named `event` that satisfies `test`. */
  async waitFor(event: string, test: (e: LivemigEvent) => boolean = () => true, timeoutMs = 60_000, from = 0): Promise<LivemigEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.slice(from).find((e) => e.event === event && test(e));
      if (found) return found;
      if (this.exitCode !== null || this.signal !== null) throw new Error(`livemig exited (${this.exitCode ?? this.signal}) before '${event}': ${this.stderr.trim()}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for '${event}'`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200).unref();
      });
    }
  }

  async stop(): Promise<void> {
    if (this.exitCode === null && this.signal === null) this.child.kill('SIGTERM');
    await this.exited;
  }
}
