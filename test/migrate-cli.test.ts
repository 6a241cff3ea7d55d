/**
 * `livemig migrate / query / cancel` as child processes, driving migrations between two real
 * QEMU 7.2 processes through QMP. (The terminal display is in migrate-cli-tty.test.ts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { QemuProcess, qemuSkipReason } from './helpers/qemu.js';
import { repoRoot } from './helpers/paths.js';
import { parseCapabilityArgs, parseParameterArgs } from '../src/migration/config.js';
import { freePort } from './helpers/ports.js';

const skip = qemuSkipReason();
const TEST_TIMEOUT_MS = 180_000;
const entry = resolve(repoRoot, 'dist', 'test', 'helpers', 'migrate-cli-entry.js');

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface RunningCli {
  child: ReturnType<typeof spawn>;
  stdout: () => string;
  /** Resolves once stdout contains `text`. */
  waitFor: (text: string, timeoutMs?: number) => Promise<void>;
  done: Promise<CliResult>;
}

function startCli(args: string[]): RunningCli {
  // Not a test process itself: without node:test's variable it behaves as on a user's machine.
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const child = spawn(process.execPath, [entry, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stdout = '';
  let stderr = '';
  const waiters: Array<() => void> = [];
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    stdout += s;
    waiters.forEach((w) => w());
  });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const done = new Promise<CliResult>((resolveDone) =>
    child.once('close', (code) => {
      waiters.forEach((w) => w());
      resolveDone({ code, stdout, stderr });
    }),
  );
  const waitFor = async (text: string, timeoutMs = 60_000): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!stdout.includes(text)) {
      if (child.exitCode !== null) throw new Error(`the CLI exited (${child.exitCode}) before printing '${text}': ${stdout}\n${stderr}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for '${text}' in: ${stdout}\n${stderr}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 200).unref();
      });
    }
  };
  return { child, stdout: () => stdout, waitFor, done };
}

const runCli = (args: string[]): Promise<CliResult> => startCli(args).done;

interface Pair {
  /** QMP sockets on the source for the CLI runs (QEMU serves one client per socket). */
  srcUris: string[];
  src: QemuProcess;
  dst: QemuProcess;
  destUri: string;
}

/** A source and a destination waiting on a free TCP port (`-incoming defer` + migrate-incoming). */
async function withPair(ram: string, body: (pair: Pair) => Promise<void>, cliSockets = 2): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-cli-'));
  const machine = ['-M', 'none', '-m', ram, '-nodefaults', '-display', 'none'];
  const srcUris = Array.from({ length: cliSockets }, (_, i) => `unix:${join(dir, `src${i}.sock`)}`);
  const src = await QemuProcess.start([...machine, ...srcUris.flatMap((uri) => ['-qmp', `${uri},server=on,wait=off`])]);
  let dst: QemuProcess | undefined;
  try {
    dst = await QemuProcess.start([...machine, '-incoming', 'defer']);
    const destUri = `tcp:127.0.0.1:${await freePort()}`;
    await dst.execute('migrate-incoming', { uri: destUri });
    await body({ srcUris, src, dst, destUri });
  } finally {
    await src.stop();
    await dst?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

function jsonLines(stdout: string): Array<Record<string, any>> {
  return stdout
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as Record<string, any>);
}

test('livemig migrate --json drives a migration between two QEMU processes to completed', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withPair('64M', async ({ srcUris, src, dst, destUri }) => {
    const result = await runCli([
      'migrate', '--qmp', srcUris[0]!, '--json', '--interval-ms', '50',
      '--cap', 'xbzrle', '--cap', 'auto-converge=off', '--param', 'downtime-limit=500', '--param', 'max-bandwidth=1G',
      destUri,
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stderr, '');
    const lines = jsonLines(result.stdout); // every stdout line is JSON
    const final = lines.at(-1)!;
    assert.equal(final.final, true);
    assert.equal(final.status, 'completed');
    assert.ok(final.passes >= 2, JSON.stringify(final));
    assert.ok(final.transferred > 0 && final['total-time'] >= 0 && final.downtime >= 0, JSON.stringify(final));
    const snapshots = lines.slice(0, -1);
    assert.ok(snapshots.length >= 1);
    assert.equal(snapshots.at(-1)!.status, 'completed');
    assert.equal(snapshots.at(-1)!.ram.total, 64 * 2 ** 20);
    for (const s of snapshots) assert.ok(['setup', 'active', 'device', 'completed'].includes(s.status), JSON.stringify(s));
    // QEMU sends no x-livemig-progress: livemig migrate derives the same model from its snapshots.
    const percents = snapshots.map((s) => s['x-livemig-progress'].percent as number);
    for (let i = 1; i < percents.length; i++) assert.ok(percents[i]! >= percents[i - 1]!, percents.join(' '));
    assert.equal(snapshots.at(-1)!['x-livemig-progress'].phase, 'completed');
    assert.equal(final.percent, 100);
    assert.equal(await dst.waitForMigrationStatus(['completed']), 'completed');

    // The settings reached QEMU, events turned on for the MIGRATION / MIGRATION_PASS events.
    const caps = (await src.execute('query-migrate-capabilities')) as Array<{ capability: string; state: boolean }>;
    const on = caps.filter((c) => c.state).map((c) => c.capability).sort();
    assert.deepEqual(on, ['events', 'xbzrle']);
    const params = (await src.execute('query-migrate-parameters')) as Record<string, unknown>;
    assert.equal(params['downtime-limit'], 500);
    assert.equal(params['max-bandwidth'], 2 ** 30);

    // livemig query, human and raw.
    const human = await runCli(['query', '--qmp', srcUris[1]!]);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^status: completed$/m);
    assert.match(human.stdout, /^ {2}transferred: .* \(\d+\)$/m);
    const raw = await runCli(['query', '--qmp', srcUris[1]!, '--json']);
    assert.equal(JSON.parse(raw.stdout).status, 'completed');
    // cancel after the end: nothing runs, it says so and succeeds.
    const cancel = await runCli(['cancel', '--qmp', srcUris[1]!]);
    assert.equal(cancel.code, 0, cancel.stderr);
    assert.equal(cancel.stdout, 'status: completed\n');
  });
});

test('livemig migrate without a terminal prints progress lines and the final report', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withPair('256M', async ({ srcUris, destUri }) => {
    // ~2.5 s: the empty guest's pages are ~10 bytes each on the wire.
    const result = await runCli(['migrate', '--qmp', srcUris[0]!, '--param', 'max-bandwidth=250000', destUri]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^Migrating unix:.* to tcp:127\.0\.0\.1:\d+/);
    assert.match(result.stdout, /^\[ *[\d.]+ m?s\] active, pass 1: +\d+% of 256\.0 MiB, .* sent, .*Mbit\/s/m);
    assert.match(result.stdout, /^Migration completed after /m);
    for (const row of ['total time', 'downtime', 'setup time', 'transferred', 'throughput', 'passes']) {
      assert.match(result.stdout, new RegExp(`^  ${row} +\\S`, 'm'), row);
    }
    assert.ok(!result.stdout.includes('\x1b['), 'no terminal escapes without a terminal');
  });
});

test('livemig migrate to a closed port fails with QEMU\'s reason, exit 1', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withPair('16M', async ({ srcUris }) => {
    const closed = `tcp:127.0.0.1:${await freePort()}`;
    const json = await runCli(['migrate', '--qmp', srcUris[0]!, '--json', closed]);
    assert.equal(json.code, 1);
    const final = jsonLines(json.stdout).at(-1)!;
    assert.equal(final.status, 'failed');
    assert.match(final['error-desc'], /Connection refused/);
    assert.match(json.stderr, /^livemig: migration failed: .*Connection refused/m);

    const plain = await runCli(['migrate', '--qmp', srcUris[1]!, 'tcp:127.0.0.1:1']);
    assert.equal(plain.code, 1);
    assert.match(plain.stdout, /^Migration failed after /m);
    assert.match(plain.stderr, /migration failed: .*Connection refused/);
  });
});

test('livemig cancel stops a running livemig migrate; SIGINT without a terminal cancels too', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withPair('256M', async ({ srcUris, destUri }) => {
    // ~25 s unless cancelled.
    const migrate = startCli(['migrate', '--qmp', srcUris[0]!, '--json', '--param', 'max-bandwidth=25000', destUri]);
    await migrate.waitFor('"status":"active"');
    const cancel = await runCli(['cancel', '--qmp', srcUris[1]!]);
    assert.equal(cancel.code, 0, cancel.stderr);
    assert.equal(cancel.stdout, 'status: cancelled\n');
    const result = await migrate.done;
    assert.equal(result.code, 1);
    const final = jsonLines(result.stdout).at(-1)!;
    assert.equal(final.status, 'cancelled');
    assert.ok(final.transferred > 0, 'bytes sent before the cancel are reported');
    // QEMU gives no reason for a cancel: the watcher says it was not its own.
    assert.match(result.stderr, /^livemig: migration cancelled: cancelled by migrate_cancel from another client of the monitor \(not from here; e\.g\. livemig cancel\)$/m);
  });
  await withPair('256M', async ({ srcUris, src, destUri }) => {
    const migrate = startCli(['migrate', '--qmp', srcUris[0]!, '--param', 'max-bandwidth=25000', destUri]);
    await migrate.waitFor('active, pass 1');
    migrate.child.kill('SIGINT');
    const result = await migrate.done;
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /interrupted: cancelling the migration/);
    assert.match(result.stdout, /^Migration cancelled after /m);
    assert.equal(await src.waitForMigrationStatus(['cancelled']), 'cancelled');
  });
});

test('livemig migrate: bad arguments and an unreachable monitor exit 2', { timeout: TEST_TIMEOUT_MS }, async () => {
  const badCap = await runCli(['migrate', '--qmp', 'unix:/nonexistent.sock', '--cap', 'xbzrle=maybe', 'tcp:127.0.0.1:1']);
  assert.equal(badCap.code, 2);
  assert.match(badCap.stderr, /--cap 'xbzrle=maybe': the value must be on or off/);
  const badParam = await runCli(['migrate', '--qmp', 'unix:/nonexistent.sock', '--param', 'downtime-limit=fast', 'tcp:127.0.0.1:1']);
  assert.equal(badParam.code, 2);
  assert.match(badParam.stderr, /--param downtime-limit: 'fast' is not an integer/);
  const noMonitor = await runCli(['migrate', '--qmp', 'unix:/nonexistent.sock', 'tcp:127.0.0.1:1']);
  assert.equal(noMonitor.code, 2);
  assert.match(noMonitor.stderr, /cannot connect to QMP at unix:\/nonexistent\.sock/);
});

test('livemig migrate: settings the monitor rejects exit 2', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withPair('16M', async ({ srcUris }) => {
    const rejected = await runCli(['migrate', '--qmp', srcUris[0]!, '--cap', 'no-such-capability', 'tcp:127.0.0.1:1']);
    assert.equal(rejected.code, 2);
    assert.match(rejected.stderr, /the monitor rejected the settings: migrate-set-capabilities: .*no-such-capability/);
  });
});

test('--cap and --param values are typed as QMP wants them', () => {
  assert.deepEqual(parseCapabilityArgs(['xbzrle', 'events=off', 'multifd=on'], 'qmp'), [
    { capability: 'xbzrle', state: true },
    { capability: 'events', state: false },
    { capability: 'multifd', state: true },
  ]);
  assert.deepEqual(
    parseParameterArgs([
      'downtime-limit=300', 'max-bandwidth=128M', 'cpu-throttle-tailslow=on', 'tls-creds=tls0', 'multifd-compression=zstd',
      'block-bitmap-mapping=[]', 'x-future-int=7', 'x-future-flag=false', 'x-future-text=abc',
    ], 'qmp'),
    {
      'downtime-limit': 300, 'max-bandwidth': 128 * 2 ** 20, 'cpu-throttle-tailslow': true, 'tls-creds': 'tls0',
      'multifd-compression': 'zstd', 'block-bitmap-mapping': [], 'x-future-int': 7, 'x-future-flag': false, 'x-future-text': 'abc',
    },
  );
  assert.throws(() => parseParameterArgs(['downtime-limit'], 'qmp'), /expected NAME=VALUE/);
  assert.throws(() => parseParameterArgs(['compress-wait-thread=maybe'], 'qmp'), /not on\/off/);
});
