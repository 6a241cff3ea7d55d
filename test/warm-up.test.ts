/**
 * warmUpMigrations(): a migration rehearsed in memory once per process, so the
 * first real migration runs compiled code (src/migration/warm-up.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { rehearseMigrations, warmUpMigrations, WARM_UP_RAM_BYTES, WARM_UP_ROUNDS } from '../src/migration/warm-up.js';
import { cliPath } from './helpers/paths.js';
import { ACCEPTED_SOCKET_RING } from '../src/transport/channel.js';
import { spareRingChunkCount } from '../src/transport/stream-io.js';

test('the rehearsal completes every round: the written pages and a second pass travel, once per process', async () => {
  const first = warmUpMigrations();
  assert.equal(warmUpMigrations(), first, 'later calls share the first rehearsal');
  const result = await first;
  assert.equal(result.error, undefined);
  assert.equal(result.rounds, WARM_UP_ROUNDS);
  assert.equal(result.over, 'tcp', 'in Node the rehearsal runs over a loopback connection (the socket code is warmed too)');
  // Per round: a record per written page (three quarters of the RAM, some of them zero: 9-byte records) and
  // 9 bytes per never-written page, 0.56 of the RAM; then every fourth written page again: above 0.7 of the
  // RAM only if the second pass ran.
  const perRound = result.bytes / WARM_UP_ROUNDS;
  assert.ok(perRound > WARM_UP_RAM_BYTES * 0.7, `bytes per round ${perRound}`);
  assert.ok(perRound < WARM_UP_RAM_BYTES * 0.9, `bytes per round ${perRound}`);
  // The ring the rounds' connections read into is spare now, for the real migration's connection.
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(spareRingChunkCount(ACCEPTED_SOCKET_RING.chunkBytes), ACCEPTED_SOCKET_RING.chunks);
});

test('where there is no loopback socket, the rehearsal runs through a memory pipe and moves the same bytes', async () => {
  const [overTcp, overMemory] = [await rehearseMigrations(1, WARM_UP_RAM_BYTES, 'tcp'), await rehearseMigrations(1, WARM_UP_RAM_BYTES, 'memory')];
  assert.equal(overMemory.error, undefined);
  assert.equal(overMemory.over, 'memory');
  assert.equal(overMemory.rounds, 1);
  assert.equal(overMemory.bytes, overTcp.bytes, 'the same scratch machine, the same passes');
});

test('a MachineMonitor rehearses when created, and not with warmUp: false', { timeout: 30_000 }, async () => {
  // Once per process: each case in a process of its own; the debug line says whether a rehearsal ran.
  const monitorModule = new URL('../src/monitor/machine-monitor.js', import.meta.url).href;
  const machineModule = new URL('../src/machine/none-machine.js', import.meta.url).href;
  const run = async (options: string): Promise<string> => {
    const script = `import { MachineMonitor } from ${JSON.stringify(monitorModule)};
      import { NoneMachine } from ${JSON.stringify(machineModule)};
      new MachineMonitor(new NoneMachine({ ramSizeBytes: 4 << 20 }), ${options});
      setTimeout(() => {}, 2000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, DEBUG: 'livemig:warm-up' }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    assert.equal(code, 0, stderr);
    return stderr;
  };
  const [byDefault, off] = await Promise.all([run('{}'), run('{ warmUp: false }')]);
  assert.match(byDefault, /livemig:warm-up rehearsal completed/);
  assert.doesNotMatch(off, /livemig:warm-up/);
});

test('`livemig run` rehearses as it starts, on a destination too, and a real migration into it is unaffected', { timeout: 60_000 }, async () => {
  const dest = spawn(process.execPath, [cliPath, 'run', '--machine', 'none', '--ram', '16M', '--incoming', 'tcp:127.0.0.1:0', '--json'], {
    env: { ...process.env, DEBUG: 'livemig:warm-up' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  dest.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const lines = createInterface({ input: dest.stdout });
  const events: string[] = [];
  const listening = new Promise<string>((resolve) =>
    lines.on('line', (line) => {
      const e = JSON.parse(line) as { event: string; address?: string };
      events.push(e.event);
      if (e.event === 'listening') resolve(e.address!);
    }),
  );
  try {
    const address = await listening;
    const source = spawn(process.execPath, [cliPath, 'run', '--machine', 'none', '--ram', '16M', '--pattern', 'random:5', '--migrate-to', address.startsWith('tcp:') ? address : `tcp:${address}`, '--migrate-after-ms', '0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const sourceExit = await new Promise<number | null>((resolve) => source.once('exit', resolve));
    assert.equal(sourceExit, 0, 'the source completed');
    const deadline = Date.now() + 20_000;
    while (!events.includes('resumed') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(events.includes('resumed'), `the destination resumed the guest (events: ${events.join(', ')})`);
    while (!/rehearsal/.test(stderr) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.match(stderr, /livemig:warm-up rehearsal completed in \d+ ms, \d+ bytes/);
  } finally {
    dest.kill();
  }
});
