/**
 * A `livemig run --json` child for tests that watch a guest's serial output:
 * its events as they arrive, the serial text, and a poll-until that fails
 * early (with the serial tail and stderr) when the process exits.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { cliPath } from './paths.js';

export type RunEvent = { event: string } & Record<string, any>;

export function startRun(args: string[], defaultTimeoutMs = 180_000) {
  const child = spawn(process.execPath, [cliPath, 'run', '--json', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const events: RunEvent[] = [];
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  createInterface({ input: child.stdout }).on('line', (line) => events.push(JSON.parse(line)));
  const serial = (from = 0): string => events.slice(from).filter((e) => e.event === 'serial').map((e) => e.text).join('');
  const until = async (test: () => boolean, what: string, timeoutMs = defaultTimeoutMs): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!test()) {
      if (child.exitCode !== null) throw new Error(`livemig exited (${child.exitCode}) before ${what}: ${stderr}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; serial so far: ${serial().slice(-800)}; stderr: ${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  return { child, events, serial, until, stderr: () => stderr };
}
