/**
 * What `livemig` prints, and where: the guest's serial output on its own stream
 * (`--serial`), each error once on stderr, `DEBUG=livemig:*` logging, and the
 * terminal restored when `livemig migrate` is killed mid-display (on a real
 * pseudo-terminal, through util-linux's `script`).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { LivemigProcess } from './helpers/livemig-process.js';
import { cliPath } from './helpers/paths.js';
import { jsonText } from '../src/cli/format.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  delete env.NODE_TEST_CONTEXT;
  if (!('DEBUG' in extra)) delete env.DEBUG;
  return env;
}

/** `livemig run ARGS` to its end: exit code, stdout, stderr. */
async function runCli(args: string[], env = cleanEnv()): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [cliPath, 'run', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('latin1').on('data', (s: string) => (stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stdout, stderr };
}

/** A destination (`run --json --incoming`) for a human-mode source to migrate to. */
async function destination(dir: string, ram = '16M'): Promise<{ dst: LivemigProcess; uri: string }> {
  const uri = `unix:${join(dir, 'mig.sock')}`;
  const dst = LivemigProcess.start(['--machine', 'test', '--ram', ram, '--incoming', uri]);
  await dst.waitFor('listening');
  return { dst, uri };
}

test('run --serial stdio (the default): stdout carries only the guest serial bytes, status lines go to stderr', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-out-'));
  const { dst, uri } = await destination(dir);
  try {
    const src = await runCli(['--machine', 'test', '--ram', '16M', '--dirty-rate', '20000', '--migrate-to', uri, '--migrate-after-ms', '1200']);
    assert.equal(src.code, 0, src.stderr);
    // The test machine prints one letter per pass over its RAM: that, and only that, is on stdout.
    assert.match(src.stdout, /^[A-Z]+$/, `stdout: ${JSON.stringify(src.stdout.slice(0, 200))}`);
    const lines = src.stderr.trimEnd().split('\n');
    assert.ok(lines.some((l) => /^migration: pass \d+$/.test(l)), src.stderr);
    assert.ok(lines.some((l) => l.startsWith('migration completed in')), src.stderr);
    for (const line of lines) assert.match(line, /^(\[guest\]|migration|source RAM)/, `a status line of its own: ${JSON.stringify(line)}`);
  } finally {
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('run --serial FILE and --serial none: stdout carries the status lines, and the serial bytes go to the file or nowhere', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-out-'));
  try {
    const file = join(dir, 'console.log');
    await writeFile(file, 'earlier run\n');
    const toFile = await runCli(['--machine', 'test', '--ram', '16M', '--dirty-rate', '20000', '--serial', file, '--exit-after-ms', '1500']);
    assert.equal(toFile.code, 0, toFile.stderr);
    assert.equal(toFile.stderr, '');
    assert.match(toFile.stdout, /^guest running: 16\.0 MiB of RAM/);
    assert.match(toFile.stdout, /\n\[guest\] running, .*serial bytes\n/);
    assert.match(await readFile(file, 'latin1'), /^earlier run\n[A-Z]+$/, 'appended');

    const none = await runCli(['--machine', 'test', '--ram', '16M', '--dirty-rate', '20000', '--serial', 'none', '--exit-after-ms', '1500']);
    assert.equal(none.code, 0, none.stderr);
    for (const line of none.stdout.trimEnd().split('\n')) assert.match(line, /^(guest running|\[guest\])/);

    const bad = await runCli(['--machine', 'test', '--ram', '16M', '--serial', join(dir, 'no', 'such', 'dir', 'log'), '--exit-after-ms', '1500']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^livemig: --serial .*: no such directory\n$/);
    assert.equal(bad.stdout, '', 'refused before the guest starts');

    // More RAM than one typed array holds (V8's own message named neither the size nor the limit).
    for (const machine of ['test', 'none']) {
      const big = await runCli(['--machine', machine, '--ram', '5G', '--exit-after-ms', '1500']);
      assert.equal(big.code, 2, big.stderr);
      assert.match(big.stderr, /^livemig: (test|none) machine: 5120 MiB of guest RAM (is more than this JavaScript engine holds in one typed array \(Node 20: 4 GiB\)|could not be allocated \(.*\)); give it less RAM\n$/);
      assert.equal(big.stdout, '');
    }

    // --json keeps serial as events on its one stream.
    const json = await runCli(['--machine', 'test', '--ram', '16M', '--dirty-rate', '20000', '--json', '--exit-after-ms', '1500']);
    const events = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event: string; text?: string });
    assert.ok(events.some((e) => e.event === 'serial' && /^[A-Z]+$/.test(e.text!)));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('each error is printed once, on stderr: a failed outgoing and a failed incoming migration', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-out-'));
  try {
    const out = await runCli(['--machine', 'test', '--ram', '16M', '--serial', 'none', '--migrate-to', `unix:${join(dir, 'nobody.sock')}`, '--migrate-after-ms', '100']);
    assert.equal(out.code, 1);
    assert.doesNotMatch(out.stdout, /cannot connect/, 'the reason is not on stdout');
    assert.equal(out.stderr.match(/cannot connect/g)?.length, 1, out.stderr);
    assert.match(out.stderr, /^livemig: migration failed: .*cannot connect/m);

    const uri = `unix:${join(dir, 'in.sock')}`;
    const child = spawn(process.execPath, [cliPath, 'run', '--machine', 'test', '--ram', '16M', '--serial', 'none', '--incoming', uri], { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    while (!stdout.includes('waiting for a migration')) {
      assert.equal(child.exitCode, null, stderr);
      await sleep(50);
    }
    const socket = connect(join(dir, 'in.sock'));
    await once(socket, 'connect');
    // A migration stream's header (QEVM, version 3), then a section type that does not exist: the load fails.
    socket.end(Buffer.from([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3, 0xee, 0, 0, 0, 0]));
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 1);
    assert.doesNotMatch(stdout, /incoming migration failed/, 'not on stdout');
    assert.equal(stderr.match(/incoming migration failed/g)?.length, 1, stderr);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('DEBUG=livemig:* logs migration, ram, transport, incoming and qmp lines on stderr; without DEBUG nothing extra', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-out-'));
  const uri = `unix:${join(dir, 'mig.sock')}`;
  const qmpPath = join(dir, 'dst.qmp');
  const dst = spawn(process.execPath, [cliPath, 'run', '--json', '--machine', 'test', '--ram', '16M', '--incoming', uri, '--qmp', `unix:${qmpPath}`, '--exit-after-ms', '4000'], {
    env: cleanEnv({ DEBUG: 'livemig:*' }),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let dstErr = '';
  dst.stderr.setEncoding('utf8').on('data', (s: string) => (dstErr += s));
  try {
    const qmp = await QmpClient.connect(`unix:${qmpPath}`, { retryForMs: 10_000 });
    await qmp.execute('query-status');
    await qmp.close();
    const src = await runCli(['--json', '--machine', 'test', '--ram', '16M', '--dirty-rate', '2000', '--migrate-to', uri, '--migrate-after-ms', '300'], cleanEnv({ DEBUG: 'livemig:*' }));
    assert.equal(src.code, 0, src.stderr);
    assert.match(src.stderr, /livemig:migration status setup -> active/);
    assert.match(src.stderr, /livemig:migration switchover /);
    assert.match(src.stderr, /livemig:ram pass 1: /);
    assert.match(src.stderr, /livemig:transport connected to unix:/);
    const passLines = src.stderr.match(/livemig:ram pass/g)?.length ?? 0;
    assert.ok(passLines < 1000, `a line per pass, not per page (${passLines})`);
    assert.ok(JSON.parse(src.stdout.trim().split('\n').at(-1)!).event === 'completed', 'stdout stays pure JSON');
    await once(dst, 'exit');
    assert.match(dstErr, /livemig:transport listening on unix:/);
    assert.match(dstErr, /livemig:transport unix:\S+: connection from a local peer/);
    assert.match(dstErr, /livemig:incoming status active -> completed/);
    assert.match(dstErr, /livemig:qmp session \d+: \{"execute":"query-status"/);

    const quiet = await runCli(['--json', '--machine', 'test', '--ram', '16M', '--exit-after-ms', '500']);
    assert.equal(quiet.code, 0);
    assert.equal(quiet.stderr, '', 'without DEBUG, nothing extra');
  } finally {
    if (dst.exitCode === null) dst.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
  }
});

const noScript = spawnSync('script', ['--version']).status === 0 ? undefined : "util-linux's script is not installed";

test('livemig migrate killed by SIGTERM mid-display leaves the terminal with its cursor and line wrap (a real pty via script)', { skip: noScript, timeout: 90_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-tty-'));
  // 80 MB/s of dirtying against 4 MiB/s: it never converges, so the display is up when the signal comes.
  const src = LivemigProcess.start(['--machine', 'test', '--ram', '32M', '--dirty-rate', '20000', '--qmp', `unix:${join(dir, 'src.qmp')}`]);
  const { dst, uri } = await destination(dir, '32M');
  try {
    await src.waitFor('qmp');
    const typescript = join(dir, 'typescript');
    const pidFile = join(dir, 'pid');
    const inner = `echo $$ > ${pidFile}; exec ${process.execPath} ${cliPath} migrate --qmp unix:${join(dir, 'src.qmp')} --param max-bandwidth=4M ${uri}`;
    const script = spawn('script', ['-qfec', inner, typescript], { env: cleanEnv({ TERM: 'xterm' }), stdio: ['pipe', 'ignore', 'ignore'] });
    const deadline = Date.now() + 30_000;
    let shown = '';
    while (!shown.includes('\x1b[?25l') || !shown.includes('\x1b[?7l')) {
      assert.ok(Date.now() < deadline, `the display never hid the cursor: ${JSON.stringify(shown.slice(-300))}`);
      await sleep(100);
      shown = await readFile(typescript, 'latin1').catch(() => '');
    }
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    process.kill(pid, 'SIGTERM');
    await once(script, 'exit');
    const all = await readFile(typescript, 'latin1');
    assert.ok(all.lastIndexOf('\x1b[?25h') > all.lastIndexOf('\x1b[?25l'), `cursor shown again: ${JSON.stringify(all.slice(-200))}`);
    assert.ok(all.lastIndexOf('\x1b[?7h') > all.lastIndexOf('\x1b[?7l'), 'line wrap on again');
    // The source's migration was not ours to finish: cancel it for the clean-up.
    await promisify(execFile)(process.execPath, [cliPath, 'cancel', '--qmp', `unix:${join(dir, 'src.qmp')}`], { env: cleanEnv() });
  } finally {
    await src.stop();
    await dst.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('the terminal is restored after an uncaught exception and after process.exit() too (the same exit hook, on a real pty)', { skip: noScript, timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-tty-'));
  try {
    const terminalModule = join(cliPath, '..', 'terminal.js');
    for (const [name, ending] of [['exception', "throw new Error('boom')"], ['exit', 'process.exit(3)']] as const) {
      // What cli-progress does when it starts drawing: hide the cursor, turn line wrap off.
      const program = `import { restoreTerminalOnExit } from ${JSON.stringify(terminalModule)}; restoreTerminalOnExit(); process.stdout.write('\\x1b[?25l\\x1b[?7ldrawing'); setTimeout(() => { ${ending}; }, 100);`;
      const typescript = join(dir, `typescript-${name}`);
      const script = spawn('script', ['-qfec', `${process.execPath} --input-type=module -e ${JSON.stringify(program).replace(/\$/g, '\\$')}`, typescript], { env: cleanEnv({ TERM: 'xterm' }), stdio: ['pipe', 'ignore', 'ignore'] });
      const [code] = (await once(script, 'exit')) as [number | null];
      assert.notEqual(code, 0, name);
      const all = await readFile(typescript, 'latin1');
      assert.ok(all.includes('drawing'), `${name}: the program ran: ${JSON.stringify(all)}`);
      assert.ok(all.lastIndexOf('\x1b[?25h') > all.lastIndexOf('\x1b[?25l'), `${name}: cursor shown again: ${JSON.stringify(all.slice(-300))}`);
      assert.ok(all.lastIndexOf('\x1b[?7h') > all.lastIndexOf('\x1b[?7l'), `${name}: line wrap on again`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('--json text: C1 controls, DEL and bidi controls from outside are escaped, and the line parses back to the same value', () => {
  const fromGuest = 'ok\u009b2J\u001b]0;title\u0007\u202eevil\u2066x\u2069\u007f\u2028end';
  const line = jsonText({ event: 'serial', text: fromGuest });
  assert.doesNotMatch(line, /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\u2028]/, 'nothing a terminal acts on is left raw');
  assert.match(line, /\\u009b2J/);
  assert.match(line, /\\u202eevil/);
  assert.deepEqual(JSON.parse(line), { event: 'serial', text: fromGuest });
  assert.equal(jsonText({ a: [1, 'é'] }, 2), JSON.stringify({ a: [1, 'é'] }, null, 2), 'ordinary text unchanged');
});

test('run --guest-share: a bad percentage or the wrong machine is refused at once, naming the flag', () => {
  const refuse = (args: string[], message: RegExp): void => {
    const r = spawnSync(process.execPath, [cliPath, 'run', ...args], { env: cleanEnv(), encoding: 'utf8', timeout: 30_000 });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, message);
  };
  refuse(['--machine', 'v86', '--guest-share', '120'], /--guest-share: expects a whole percentage from 1 to 95, got '120'/);
  refuse(['--machine', 'v86', '--guest-share', '8\u001b[2J'], /got '8\\x1b\[2J'|got '8\\u001b\[2J'/);
  refuse(['--machine', 'test', '--guest-share', '80'], /--guest-share: only for --machine v86/);
});
