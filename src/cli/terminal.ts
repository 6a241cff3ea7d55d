/**
 * The terminal as livemig found it, on every way out.
 *
 * The progress display (cli-progress) hides the cursor and turns line wrap off;
 * the Ctrl-C question puts stdin in raw mode. A normal end undoes that, but a
 * signal, an exception or a `process.exit()` in the middle does not, and the
 * shell is left without a cursor. One hook, installed once by main.ts, covers
 * them all: `exit` runs after process.exit(), an uncaught exception and a normal
 * end; a signal nobody else handles is turned into a restore and then the same
 * signal again, so the exit status still says "killed by SIGTERM".
 */

/** Show the cursor (DECTCEM) and turn auto-wrap back on (DECAWM): the defaults, so safe to send always. */
export const RESTORE_SEQUENCE = '\x1b[?25h\x1b[?7h';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
let installed = false;

/** Write the restore sequence to the terminal (if stdout or stderr is one) and leave raw mode. */
export function restoreTerminal(): void {
  const stream = process.stdout.isTTY ? process.stdout : process.stderr.isTTY ? process.stderr : undefined;
  // A TTY write is synchronous on POSIX, so this is out before the process ends.
  if (stream) {
    try {
      stream.write(RESTORE_SEQUENCE);
    } catch {
      /* the terminal is gone: nothing to restore */
    }
  }
  if (process.stdin.isTTY && process.stdin.isRaw) process.stdin.setRawMode(false);
}

export function restoreTerminalOnExit(): void {
  if (installed) return;
  installed = true;
  if (!process.stdout.isTTY && !process.stderr.isTTY) return; // nothing to restore: pipes and files stay byte-exact
  process.on('exit', restoreTerminal);
  for (const signal of SIGNALS) {
    const onSignal = (): void => {
      // Another handler (livemig run's graceful stop, migrate's Ctrl-C question) owns the signal: it ends the
      // process its way and `exit` restores the terminal. Alone, we do what the default action would.
      if (process.listenerCount(signal) > 1) return;
      restoreTerminal();
      process.off(signal, onSignal);
      process.kill(process.pid, signal);
    };
    process.on(signal, onSignal);
  }
}
