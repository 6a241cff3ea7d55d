/**
 * A real two-process live migration of the v86 multiboot guest over TCP: the
 * engine's OutgoingMigration here, a v86 destination in a child process
 * (test/helpers/v86-destination.ts).
 */
import { queryMigrate } from '../src/monitor/query-migrate.js';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createV86Machine } from '../src/machine/v86-machine.js';
import { OutgoingMigration } from '../src/migration/index.js';

const MiB = 1024 * 1024;
type Event = { event: string } & Record<string, any>;

function startDestination(ramMiB: number): { next(name: string): Promise<Event>; stderr(): string; exited: Promise<number | null>; kill(): void } {
  const script = fileURLToPath(new URL('./helpers/v86-destination.js', import.meta.url));
  const child = spawn(process.execPath, [script, String(ramMiB)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const events: Event[] = [];
  let wake: (() => void) | undefined;
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  createInterface({ input: child.stdout }).on('line', (line) => {
    events.push(JSON.parse(line) as Event);
    wake?.();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => (resolve(code), wake?.())));
  let exitCode: number | null | undefined;
  void exited.then((c) => (exitCode = c));
  return {
    async next(name) {
      for (;;) {
        const e = events.find((x) => x.event === name);
        if (e) return e;
        if (exitCode !== undefined) throw new Error(`destination exited (${exitCode}) before '${name}': ${stderr}`);
        await new Promise<void>((r) => (wake = r));
      }
    },
    stderr: () => stderr,
    exited,
    kill: () => child.kill(),
  };
}

test('v86: live migration of the multiboot guest between two processes over TCP', { timeout: 120_000 }, async () => {
  const ramMiB = 32;
  const machine = await createV86Machine({ ramSizeBytes: ramMiB * MiB });
  const dst = startDestination(ramMiB);
  try {
    let serial = '';
    machine.serial.on('data', (c: Buffer) => (serial += c.toString('latin1')));
    while (!serial.includes('B')) await new Promise((r) => setTimeout(r, 10));
    const { address } = await dst.next('listening');
    const migration = new OutgoingMigration(machine);
    // The guest rewrites its whole range ~150 times a second: without auto-converge, let the
    // downtime budget cover one pass over the RAM so it switches over after the first pass.
    migration.setParameters({ 'downtime-limit': 20_000 });
    migration.start(address);
    assert.equal(await migration.finished, 'completed', queryMigrate(migration)['error-desc']);
    assert.equal(machine.running, false);
    const loaded = await dst.next('loaded');
    assert.equal(loaded.memoryCheck.ok, true, loaded.memoryCheck.reason);
    assert.equal(loaded.ramHash, machine.ramHash(), 'destination RAM at resume equals source RAM at stop');
    const resumed = await dst.next('resumed');
    assert.equal(resumed.status, 'completed', resumed.error);
    assert.equal(resumed.started, true);
    const guest = await dst.next('guest');
    assert.ok(guest.bs >= 3, `Bs keep coming on the destination (${guest.bs})`);
    assert.equal(guest.rebooted, false);
    const final = await dst.next('final');
    assert.equal(final.memoryCheck.ok, true, final.memoryCheck.reason);
    const info = queryMigrate(migration);
    console.log(`# v86 ${ramMiB} MiB: total ${info['total-time']} ms, downtime ${info.downtime} ms, ${JSON.stringify(info.ram)}`);
    assert.equal(await dst.exited, 0, dst.stderr());
  } finally {
    dst.kill();
    await machine.destroy();
  }
});
