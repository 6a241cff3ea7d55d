/**
 * Multifd's send threads start when multifd is switched on, not at migrate
 * time (a Node worker thread takes ~30 ms to start): the next migration uses
 * them if they fit its parameters, idle ones never keep a process alive, and
 * other parameters get other threads.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createTestMachine } from '../src/machine/index.js';
import { IncomingMigration, OutgoingMigration } from '../src/migration/index.js';
import { queryMigrate } from '../src/monitor/query-migrate.js';
import { DenseRamBlock } from '../src/ram/index.js';
import { MultifdSender, MultifdSendThreads } from '../src/ram/multifd/sender.js';

const MiB = 1 << 20;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const sha = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

test('MultifdSendThreads: serve only the options they were started for, once', async () => {
  const ram = new DenseRamBlock('pc.ram', new Uint8Array(new SharedArrayBuffer(MiB)));
  const other = new DenseRamBlock('pc.ram', new Uint8Array(new SharedArrayBuffer(MiB)));
  const options = { channels: 2, blocks: [ram], compression: 'none' as const, level: 1 };
  const threads = MultifdSendThreads.start(options);
  assert.ok(threads, 'RAM in shared memory: threads can send it');
  try {
    assert.equal(threads.matches(options), true);
    assert.equal(threads.matches({ ...options, channels: 3 }), false, 'other channel count');
    assert.equal(threads.matches({ ...options, compression: 'zlib' }), false, 'other compression');
    assert.equal(threads.matches({ ...options, blocks: [other] }), false, 'other guest RAM (same name and size)');
    assert.equal(MultifdSendThreads.start({ ...options, blocks: [new DenseRamBlock('pc.ram', new Uint8Array(MiB))] }), undefined, 'RAM threads cannot read: none');
  } finally {
    threads.dispose();
  }
  assert.equal(threads.matches(options), false, 'ended threads serve nothing');
});

test('a migration uses the send threads started when multifd was switched on; RAM arrives whole', { timeout: 60_000 }, async () => {
  const src = await createTestMachine({ ramSizeBytes: 16 * MiB, dirtyRatePagesPerSecond: 5_000 });
  const dst = await createTestMachine({ ramSizeBytes: 16 * MiB, startPaused: true });
  const original = MultifdSender.open;
  const senders: MultifdSender[] = [];
  MultifdSender.open = async (o) => {
    const sender = await original(o);
    senders.push(sender);
    return sender;
  };
  try {
    for (const [channels, waitMs] of [[2, 300], [3, 0]] as const) {
      const incoming = new IncomingMigration(dst, { multifd: { channels } });
      const address = await incoming.listen('tcp:127.0.0.1:0');
      let loadedHash = '';
      incoming.on('loaded', () => (loadedHash = sha(dst.memory)));
      const result = incoming.run();
      const out = new OutgoingMigration(src);
      out.setParameters({ 'multifd-channels': 4 });
      out.setCapabilities({ multifd: true });
      // Other parameters while idle: threads for those instead.
      out.setParameters({ 'multifd-channels': channels, 'downtime-limit': 100 });
      await sleep(waitMs);
      out.start(address);
      assert.equal(await out.finished, 'completed', queryMigrate(out)['error-desc']);
      const r = await result;
      assert.equal(r.status, 'completed', r.error?.message);
      const sender = senders.at(-1)!;
      assert.equal(sender.channelCount, channels);
      assert.equal(sender.workers, true);
      assert.equal(sender.prestarted, true, `${channels} channels: the threads started ahead were used`);
      assert.equal(loadedHash, src.ramHash(), 'destination RAM at load equals source RAM at stop');
      assert.equal(incoming.multifdStats?.channels, channels);
      src.resume();
      await dst.pause(); // awaited: the finally below may destroy it next, and a pause still waiting would then fail
    }
  } finally {
    MultifdSender.open = original;
    await src.destroy();
    await dst.destroy();
  }
});

test('idle send threads do not keep a process alive', { timeout: 30_000 }, async () => {
  const engine = fileURLToPath(new URL('../src/migration/index.js', import.meta.url));
  const machines = fileURLToPath(new URL('../src/machine/index.js', import.meta.url));
  const script = `
    const { OutgoingMigration } = await import(${JSON.stringify(engine)});
    const { createTestMachine } = await import(${JSON.stringify(machines)});
    const machine = await createTestMachine({ ramSizeBytes: 4 << 20, startPaused: true });
    const out = new OutgoingMigration(machine);
    out.setCapabilities({ multifd: true });
    await new Promise((resolve) => setTimeout(resolve, 500));
    await machine.destroy();
    console.log('done');`;
  // Not a test-runner child (node --test passes NODE_TEST_CONTEXT on).
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const dir = await mkdtemp(join(tmpdir(), 'livemig-prestart-'));
  const file = join(dir, 'idle-threads.mjs');
  await writeFile(file, script);
  const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stdout = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const started = performance.now();
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.on('exit', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  assert.equal(stdout.trim(), 'done', stderr);
  assert.equal(code, 0, 'exited by itself (not killed after 10 s)');
  assert.ok(performance.now() - started < 8_000);
  await rm(dir, { recursive: true, force: true });
});
