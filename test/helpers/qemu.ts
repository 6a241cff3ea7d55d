/**
 * Real QEMU for interop tests: spawn `qemu-system-x86_64` with a QMP socket and
 * talk to it. Tests that need it skip with a message when it is not installed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';

/** A timer that does not keep the test process alive. */
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms).unref());

export const QEMU_BINARY = 'qemu-system-x86_64';

/** Undefined when QEMU is usable, else the reason to skip (naming the Debian package). */
export function qemuSkipReason(): string | undefined {
  const probe = spawnSync(QEMU_BINARY, ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    return `${QEMU_BINARY} not found: install Debian's qemu-system-x86 (apt-get install -y qemu-system-x86)`;
  }
  return undefined;
}

type QmpMessage = Record<string, unknown>;

export class QemuProcess {
  private buffered = '';
  private readonly replies: Array<(msg: QmpMessage) => void> = [];
  readonly events: QmpMessage[] = [];
  stderr = '';
  exitCode: number | null = null;
  private readonly exited: Promise<void>;

  private constructor(private readonly child: ChildProcess, private readonly socket: Socket, readonly dir: string) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    // QEMU closing the socket when it exits is expected; the exit code tells why.
    socket.on('error', () => {});
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => (this.stderr += s));
    this.exited = new Promise((resolve) =>
      child.once('exit', (code) => {
        this.exitCode = code;
        resolve();
      }),
    );
  }

  /** Start QEMU with the given machine arguments and a QMP socket; negotiation done. */
  static async start(args: string[]): Promise<QemuProcess> {
    const dir = await mkdtemp(join(tmpdir(), 'livemig-qemu-'));
    const qmpPath = join(dir, 'qmp.sock');
    const child = spawn(QEMU_BINARY, [...args, '-qmp', `unix:${qmpPath},server=on,wait=off`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let socket: Socket | undefined;
    for (let attempt = 0; attempt < 200 && !socket; attempt++) {
      if (child.exitCode !== null) break;
      try {
        const s = connect(qmpPath);
        await once(s, 'connect');
        socket = s;
      } catch {
        await sleep(25);
      }
    }
    if (!socket) {
      child.kill('SIGKILL');
      throw new Error(`QEMU did not open its QMP socket (exit ${child.exitCode})`);
    }
    const qemu = new QemuProcess(child, socket, dir);
    await qemu.nextReply(); // greeting
    await qemu.execute('qmp_capabilities');
    return qemu;
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl).trim();
      this.buffered = this.buffered.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as QmpMessage;
      if ('event' in msg) {
        this.events.push(msg);
      } else {
        this.replies.shift()?.(msg);
      }
    }
  }

  private nextReply(): Promise<QmpMessage> {
    return new Promise((resolve) => this.replies.push(resolve));
  }

  /** Run a QMP command; rejects with QEMU's error description. */
  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const reply = this.nextReply();
    this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    // A QEMU that exits never replies: say so instead of waiting forever.
    const msg = await Promise.race([
      reply,
      this.exited.then(() => {
        throw new Error(`QMP ${command}: QEMU exited with ${this.exitCode}: ${this.stderr.trim()}`);
      }),
    ]);
    if ('error' in msg) throw new Error(`QMP ${command}: ${JSON.stringify(msg.error)}`);
    return msg.return;
  }

  /**
   * Poll `query-migrate` until its status is one of `statuses`. (QEMU emits
   * MIGRATION events only with the `events` capability, so polling is the
   * portable way.) Throws with QEMU's stderr if it exits meanwhile.
   */
  async waitForMigrationStatus(statuses: string[], timeoutMs = 60_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.exitCode !== null) throw new Error(`QEMU exited with ${this.exitCode}: ${this.stderr.trim()}`);
      const reply = (await Promise.race([this.execute('query-migrate'), this.exited.then(() => undefined)])) as { status?: string } | undefined;
      if (reply?.status && statuses.includes(reply.status)) return reply.status;
      if (Date.now() > deadline) throw new Error(`timed out waiting for migration status ${statuses.join('/')} (last: ${reply?.status})`);
      await sleep(50);
    }
  }

  /** Resolves with the exit code once QEMU has exited (a failed incoming migration exits 1). */
  async waitForExit(timeoutMs = 30_000): Promise<number | null> {
    await Promise.race([this.exited, sleep(timeoutMs)]);
    return this.exitCode;
  }

  async stop(): Promise<void> {
    if (this.exitCode === null) {
      try {
        this.socket.write(JSON.stringify({ execute: 'quit' }) + '\n');
      } catch {
        /* already gone */
      }
      await Promise.race([this.exited, sleep(3000)]);
      if (this.exitCode === null) this.child.kill('SIGKILL');
      await this.exited;
    }
    this.socket.destroy();
    await rm(this.dir, { recursive: true, force: true });
  }
}
