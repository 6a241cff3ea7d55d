/**
 * `livemig migrate`'s live display on a terminal: the CLI runs under a pseudo-terminal
 * (Python's pty module, which Debian's python3 has) against two real QEMU processes; the
 * test reads what the terminal received and types at it (Ctrl-C, y, n).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { QemuProcess, qemuSkipReason } from './helpers/qemu.js';
import { repoRoot } from './helpers/paths.js';

const entry = resolve(repoRoot, 'dist', 'test', 'helpers', 'migrate-cli-entry.js');
const TEST_TIMEOUT_MS = 180_000;

function skipReason(): string | undefined {
  const qemu = qemuSkipReason();
  if (qemu) return qemu;
  const python = spawnSync('python3', ['-c', 'import pty'], { encoding: 'utf8' });
  if (python.error || python.status !== 0) return 'python3 (for its pty module) not found: install Debian\'s python3';
  return undefined;
}
const skip = skipReason();

/**
 * Runs argv on a 120x40 pseudo-terminal; prints everything the terminal received and exits
 * with the program's exit code. Rules [text, keys, n]: once `text` has appeared n times,
 * type `keys` (each rule once, in order of appearance).
 */
const PTY_DRIVER = `
import json, os, pty, select, sys, time, fcntl, termios, struct
spec = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.execvp(spec["argv"][0], spec["argv"])
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
out = b""
rules = [list(r) for r in spec["rules"]]
deadline = time.time() + spec["timeout"]
while time.time() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    for rule in rules:
        if rule[2] is not None and out.count(rule[0].encode()) >= rule[2]:
            time.sleep(0.2)
            os.write(fd, rule[1].encode())
            rule[2] = None
else:
    os.kill(pid, 9)
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status) & 0xff)
`;
import { freePort } from './helpers/ports.js';

async function runOnTerminal(args: string[], rules: Array<[string, string, number]>, timeoutS = 120): Promise<{ code: number | null; output: string; stderr: string }> {
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const spec = JSON.stringify({ argv: [process.execPath, entry, ...args], rules, timeout: timeoutS });
  const child = spawn('python3', ['-c', PTY_DRIVER, spec], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let output = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (output += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, output, stderr };
}

async function withPair(body: (srcUri: string, destUri: string, src: QemuProcess) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-tty-'));
  // -M none RAM is all zero, ~10 bytes a page on the wire: 256M at a low max-bandwidth takes seconds.
  const machine = ['-M', 'none', '-m', '256M', '-nodefaults', '-display', 'none'];
  const srcUri = `unix:${join(dir, 'cli.sock')}`;
  const src = await QemuProcess.start([...machine, '-qmp', `${srcUri},server=on,wait=off`]);
  let dst: QemuProcess | undefined;
  try {
    dst = await QemuProcess.start([...machine, '-incoming', 'defer']);
    const destUri = `tcp:127.0.0.1:${await freePort()}`;
    await dst.execute('migrate-incoming', { uri: destUri });
    await body(srcUri, destUri, src);
  } finally {
    await src.stop();
    await dst?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** The frames' first lines ("active   pass 1  [###---]  40% of ..."), in order, without repeats. */
function firstLines(output: string): string[] {
  const lines = output.match(/(?:setup|active|completed|cancelled|failed) +pass \d+ [^\r\n\x1b]*/g) ?? [];
  return lines.filter((line, i) => line !== lines[i - 1]);
}

test('livemig migrate on a terminal: a live display redrawn in place, then the report', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withPair(async (srcUri, destUri) => {
    const { code, output, stderr } = await runOnTerminal(['migrate', '--qmp', srcUri, '--param', 'max-bandwidth=250000', destUri], []);
    assert.equal(code, 0, output + stderr);
    const frames = firstLines(output);
    const passOne = frames.filter((line) => /^active +pass 1 +\[[#-]{24}\] +\d+% of 256\.0 MiB, .* sent$/.test(line));
    assert.ok(passOne.length >= 3, `several distinct frames of the first pass:\n${frames.join('\n')}`);
    assert.ok(frames.at(-1)!.startsWith('completed'), frames.join('\n'));
    // Redrawn in place: the cursor goes back up over the three lines, lines are cleared.
    assert.ok(output.split('\x1b[2A').length - 1 >= 3, 'cursor moved up between frames');
    assert.ok(output.includes('\x1b[0K') && output.includes('\r'));
    assert.match(output, /Mbit\/s {2}dirty \d+ pages\/s \([\d.]+ MB\/s\)/);
    assert.match(output, /elapsed [\d.]+ m?s {2}ETA (≥ )?[\d.]+ m?s {2}expected downtime 300 ms/);
    assert.match(output, /Migration completed after [\d.]+ m?s\r\n {2}total time/);
    assert.match(output, / {2}passes +\d+\r\n/);
    assert.ok(output.includes('\x1b[?25h'), 'the cursor is shown again');
  });
});

test('livemig migrate on a terminal: Ctrl-C asks; n continues, y cancels', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withPair(async (srcUri, destUri, src) => {
    // ~25 s if nothing cancelled it.
    const { code, output, stderr } = await runOnTerminal(
      ['migrate', '--qmp', srcUri, '--param', 'max-bandwidth=25000', destUri],
      [
        ['ETA', '\x03', 3], // Ctrl-C once the display runs
        ['[y/N]', 'n', 1],
        ['continuing', '\x03', 1],
        ['[y/N]', 'y', 2],
      ],
    );
    assert.equal(code, 1, output + stderr);
    const asked = output.indexOf('Cancel the migration? [y/N] n - continuing');
    assert.ok(asked > 0, output);
    assert.ok(/active +pass 1/.test(output.slice(asked)), 'the display resumed after n');
    assert.match(output.slice(asked), /Cancel the migration\? \[y\/N\] y/);
    assert.match(output, /Cancelling the migration/);
    assert.match(output, /Migration cancelled after/);
    assert.match(output, /livemig: migration cancelled: cancelled on request/);
    assert.equal(await src.waitForMigrationStatus(['cancelled']), 'cancelled');
  });
});

test('livemig migrate on a terminal: a second Ctrl-C at the question cancels at once', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withPair(async (srcUri, destUri) => {
    const { code, output, stderr } = await runOnTerminal(
      ['migrate', '--qmp', srcUri, '--param', 'max-bandwidth=25000', destUri],
      [
        ['ETA', '\x03', 3],
        ['[y/N]', '\x03', 1],
      ],
    );
    assert.equal(code, 1, output + stderr);
    assert.match(output, /Cancel the migration\? \[y\/N\] \^C/);
    assert.match(output, /Migration cancelled after/);
  });
});
