/**
 * exec: transports. Like QEMU, the command runs under `/bin/sh -c`; the source
 * writes the stream to its stdin (stdout goes to /dev/null), the destination
 * reads its stdout (stdin from /dev/null); stderr is inherited.
 *
 * Unlike QEMU 7.2 (which closes the pipe and sends SIGTERM 10 ms later), the
 * source waits for the command to exit after the end of the stream, so
 * `exec:cat > FILE` or `exec:gzip > FILE` always completes, and a non-zero exit
 * status or a signal is reported as the failure it is.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { ChannelError } from '../wire/index.js';
import { Socket } from 'node:net';
import { ACCEPTED_SOCKET_RING, Channel, descriptorOf, withRingReads, type MigrationChannel } from './channel.js';
import { asChannelError, ExecExitError, TransportError } from './errors.js';
import { NodeReadableSource, NodeWritableSink, releaseRingAfter, withinMs } from './stream-io.js';

/** Default time the source gives the command to exit after the end of the stream. */
export const EXEC_EXIT_TIMEOUT_MS = 30_000;
/** After SIGTERM, time before SIGKILL. */
const EXEC_KILL_GRACE_MS = 1_000;
/** At the end of its stdout, time the destination waits for the command's exit status. */
const EXEC_EXIT_AFTER_EOF_MS = 1_000;
/** When a write fails, time to wait for the exit status that explains it (EPIPE says little). */
const EXEC_EXIT_EXPLAINS_MS = 500;
/** When the destination stops reading early, time before the command is killed. */
const EXEC_INCOMING_CLOSE_GRACE_MS = 1_000;

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Set when the process could not be started at all. */
  error?: Error;
  /** Why we killed it, when we did. */
  note?: string;
}

/** A running command and its exit status. */
export class ExecChild {
  /** Resolves (never rejects) when the process has exited or could not start. */
  readonly exited: Promise<ExitStatus>;
  status: ExitStatus | undefined;
  private killNote: string | undefined;

  private constructor(readonly proc: ChildProcess, readonly uri: string) {
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.status = { code, signal, ...(this.killNote ? { note: this.killNote } : {}) };
        resolve(this.status);
      });
      // 'error' also reports failed kill()s; only a failed start means no 'exit' will come.
      proc.on('error', (error) => {
        if (proc.pid === undefined && !this.status) {
          this.status = { code: null, signal: null, error };
          resolve(this.status);
        }
      });
    });
  }

  /** Start `/bin/sh -c command`; rejects with a TransportError if it cannot start. */
  static async spawn(uri: string, command: string, direction: 'outgoing' | 'incoming'): Promise<ExecChild> {
    const proc = spawn('/bin/sh', ['-c', command], {
      stdio: direction === 'outgoing' ? ['pipe', 'ignore', 'inherit'] : ['ignore', 'pipe', 'inherit'],
    });
    const child = new ExecChild(proc, uri);
    const started = await new Promise<Error | null>((resolve) => {
      proc.once('spawn', () => resolve(null));
      proc.once('error', (err) => resolve(err));
    });
    if (started !== null && proc.pid === undefined) {
      throw new TransportError('spawn-failed', uri, `${uri}: cannot start /bin/sh: ${started.message}`, { cause: started });
    }
    return child;
  }

  /** The error an exit status stands for, or null for exit code 0. */
  failureOf(status: ExitStatus, cause?: unknown): ChannelError | null {
    if (status.error) return new ChannelError(`${this.uri}: command failed: ${status.error.message}`, { cause: status.error });
    if (status.code === 0) return null;
    return new ExecExitError(this.uri, status.code, status.signal, status.note, cause === undefined ? undefined : { cause });
  }

  kill(signal: NodeJS.Signals, note?: string): void {
    if (this.status) return;
    this.killNote ??= note;
    this.proc.kill(signal);
  }

  /** Wait up to `graceMs` for the exit, then SIGTERM, then SIGKILL. */
  async waitOrKill(graceMs: number, note: string): Promise<ExitStatus> {
    const early = await withinMs(this.exited, graceMs);
    if (early) return early;
    this.kill('SIGTERM', note);
    const late = await withinMs(this.exited, EXEC_KILL_GRACE_MS);
    if (late) return late;
    this.kill('SIGKILL', note);
    return this.exited;
  }
}

/** Settles with the child's exit: rejects on failure or abort. */
function exitPromise(child: ExecChild, signal: AbortSignal): Promise<void> {
  return child.exited.then((status) => {
    if (signal.aborted) throw asChannelError(signal.reason, child.uri);
    const failure = child.failureOf(status);
    if (failure) throw failure;
  });
}

/** Source side: the stream goes to the command's stdin. */
export function execOutgoingChannel(child: ExecChild, exitTimeoutMs = EXEC_EXIT_TIMEOUT_MS): MigrationChannel {
  const controller = new AbortController();
  const signal = controller.signal;
  const uri = child.uri;
  const stdin = child.proc.stdin!;
  const note = `did not exit within ${exitTimeoutMs} ms after the end of the stream`;
  const output = new NodeWritableSink(stdin, {
    what: uri,
    signal,
    // The child's stdin is a pipe: gathered writes go to it directly.
    ...(stdin instanceof Socket ? { descriptor: () => descriptorOf(stdin) } : {}),
    explain: async (failure) => {
      const status = await withinMs(child.exited, EXEC_EXIT_EXPLAINS_MS);
      return (status && child.failureOf(status, failure)) || failure;
    },
    afterEnd: async () => {
      const failure = child.failureOf(await child.waitOrKill(exitTimeoutMs, note));
      if (failure) throw failure;
    },
  });
  return new Channel({
    uri,
    kind: 'exec',
    input: null,
    output,
    supportsReturnPath: false,
    controller,
    closed: exitPromise(child, signal),
    release: async () => {
      stdin.destroy();
      await child.waitOrKill(exitTimeoutMs, note);
    },
    destroy: () => {
      stdin.destroy();
      child.kill('SIGKILL', 'migration aborted');
    },
  });
}

/** Destination side: the stream comes from the command's stdout. */
export function execIncomingChannel(child: ExecChild): MigrationChannel {
  const controller = new AbortController();
  const signal = controller.signal;
  const uri = child.uri;
  // Read into reused buffers, as an accepted socket is: the command has not run long enough to have been read from.
  const moved = child.proc.stdout instanceof Socket ? withRingReads(child.proc.stdout, ACCEPTED_SOCKET_RING, { writable: false }) : undefined;
  const stdout = moved?.socket ?? child.proc.stdout!;
  const input = new NodeReadableSource(stdout, {
    what: uri,
    signal,
    ...(moved ? { ring: moved.ring, alignReads: moved.deliver.alignReads, onClose: releaseRingAfter(moved.socket, moved.release) } : {}),
    // A command that fails (`exec:cat MISSING`) ends its stdout like one that succeeds:
    // only the exit status tells a truncated stream from a complete one.
    atEnd: async () => {
      const status = await withinMs(child.exited, EXEC_EXIT_AFTER_EOF_MS);
      const failure = status && child.failureOf(status);
      if (failure) throw failure;
    },
  });
  if (moved) moved.deliver.to = (chunk) => input.deliver(chunk);
  return new Channel({
    uri,
    kind: 'exec',
    input,
    output: null,
    supportsReturnPath: false,
    controller,
    closed: exitPromise(child, signal),
    release: async () => {
      stdout.destroy();
      await child.waitOrKill(EXEC_INCOMING_CLOSE_GRACE_MS, 'the destination stopped reading');
    },
    destroy: () => {
      stdout.destroy();
      child.kill('SIGKILL', 'migration aborted');
    },
  });
}
