/**
 * The cost of saving a guest to a file and loading it back (`file:` and
 * `exec:` URIs), which the scenario runner does not cover. Each run is its own
 * process, after the warm-up (and, loading, after the destination prepared its
 * RAM), with process.cpuUsage() around the migration only:
 *
 *   node dist/bench/file-transport.js save [PATH]            # a 1 GiB random test machine to file:PATH
 *   node dist/bench/file-transport.js load [PATH]            # file:PATH into a fresh 1 GiB test machine
 *   node dist/bench/file-transport.js load [PATH] exec       # the same through exec:cat PATH
 *
 * PATH defaults to /dev/shm/livemig-file-transport.mig (memory, so the disk
 * does not set the pace); `save` must run once before `load`. One line each:
 * status, wall ms, user and system CPU ms.
 */
import { randomFillSync } from 'node:crypto';
import { createTestMachine } from '../src/machine/index.js';
import { IncomingMigration, MigrationConfig, OutgoingMigration, warmUpMigrations } from '../src/migration/index.js';
import { GiB, MiB } from './util.js';

const [mode, path = '/dev/shm/livemig-file-transport.mig', via] = process.argv.slice(2);

function report(status: string, startedMs: number, cpu: NodeJS.CpuUsage): void {
  const used = process.cpuUsage(cpu);
  console.log(`${mode}${via ? ` via ${via}` : ''}: ${status}, wall ${Math.round(performance.now() - startedMs)} ms, user ${Math.round(used.user / 1000)} ms, system ${Math.round(used.system / 1000)} ms`);
}

async function main(): Promise<void> {
  await warmUpMigrations();
  if (mode === 'save') {
    const machine = await createTestMachine({ ramSizeBytes: GiB, startPaused: true });
    const chunk = Buffer.allocUnsafe(MiB);
    for (let off = 0; off < GiB; off += chunk.length) {
      randomFillSync(chunk);
      machine.load(off, chunk);
    }
    const outgoing = new OutgoingMigration(machine, new MigrationConfig());
    const cpu = process.cpuUsage();
    const startedMs = performance.now();
    outgoing.start(`file:${path}`);
    report(await outgoing.finished, startedMs, cpu);
    await machine.destroy();
  } else if (mode === 'load') {
    const machine = await createTestMachine({ ramSizeBytes: GiB, incoming: true });
    const incoming = new IncomingMigration(machine);
    await incoming.listen(via === 'exec' ? `exec:cat '${path}'` : `file:${path}`);
    await incoming.ramPrepared;
    const cpu = process.cpuUsage();
    const startedMs = performance.now();
    const result = await incoming.run();
    report(result.status, startedMs, cpu);
    await machine.destroy();
  } else {
    console.error('usage: file-transport.js save|load [PATH] [exec]');
    process.exitCode = 2;
  }
}

await main();
process.exit();
