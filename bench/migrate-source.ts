/**
 * One livemig migration of a 1 GiB test machine over loopback TCP, in its own
 * process so that its peak RSS is the migration's alone. Prints one JSON line
 * (a MigrationBenchResult). Run by bench/run.ts; by hand:
 *
 *   node [--cpu-prof] dist/bench/migrate-source.js [--zero] [--ram-gib N]
 *
 * The source guest is created paused and stays paused (it writes nothing), so
 * the destination loads the state and leaves its guest paused too. RAM is
 * random (every page non-zero, so every page is a NORMAL record) unless --zero.
 */
import { randomFillSync } from 'node:crypto';
import { createTestMachine } from '../src/machine/index.js';
import { OutgoingMigration, type MigrationInfo, type SwitchoverRecord } from '../src/migration/index.js';
import { cpuDelta, cpuSeconds, GiB, jsonEvent, LineChild, LIVEMIG_MAIN, MiB, peakRssBytes } from './util.js';

export interface MigrationBenchResult {
  what: string;
  status: string;
  info: MigrationInfo;
  switchover: SwitchoverRecord | undefined;
  /** Bytes the destination read (the whole stream, framing and device state included). */
  streamBytes: number;
  ramBytes: number;
  /** null: not verified (the destination ran without --verify). */
  ramMatches: boolean | null;
  /** SHA-256 of the RAM on this side: the destination's `livemig run` hashes its RAM before it confirms, inside the downtime. */
  ramHashMs: number;
  /** CPU "user+sys" seconds during the migration. */
  sourceCpu: string;
  destCpu: string;
  sourcePeakRssBytes: number;
  destPeakRssBytes: number | undefined;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const zero = args.includes('--zero');
  const gibIndex = args.indexOf('--ram-gib');
  const ramBytes = gibIndex >= 0 ? Number(args[gibIndex + 1]) * GiB : GiB;

  const dest = new LineChild(process.execPath, [...process.execArgv, LIVEMIG_MAIN, 'run', '--machine', 'test', '--ram', `${ramBytes / MiB}M`, '--incoming', 'tcp:127.0.0.1:0', '--json']);
  const machine = await createTestMachine({ ramSizeBytes: ramBytes, startPaused: true });
  try {
    const { address } = (await dest.waitFor(jsonEvent('listening'), 'destination')) as { address: string };
    if (!zero) for (let off = 0; off < ramBytes; off += 64 * MiB) randomFillSync(machine.memory, off, Math.min(64 * MiB, ramBytes - off));

    const migration = new OutgoingMigration(machine);
    migration.setParameters({ 'max-bandwidth': 0, 'downtime-limit': 300 });
    const cpu0 = [cpuSeconds(process.pid), cpuSeconds(dest.pid)];
    migration.start(address);
    const status = await migration.finished;
    const info = migration.query();
    const cpu1 = [cpuSeconds(process.pid), cpuSeconds(dest.pid)];

    // The destination runs without --verify (which would add a RAM copy to its
    // memory and downtime); correctness is the tests' job.
    const loaded = (await dest.waitFor(jsonEvent('loaded'), 'destination')) as { ramHash?: string };
    const resumed = (await dest.waitFor(jsonEvent('resumed'), 'destination')) as { bytes: number };
    const t0 = performance.now();
    const ramHash = loaded.ramHash === undefined ? undefined : machine.ramHash();
    const ramHashMs = Math.round(performance.now() - t0);
    const result: MigrationBenchResult = {
      what: `livemig ${ramBytes / GiB} GiB ${zero ? 'zero' : 'random'} RAM, paused guest`,
      status,
      info,
      switchover: migration.switchover,
      streamBytes: resumed.bytes,
      ramBytes,
      ramMatches: loaded.ramHash === undefined ? null : loaded.ramHash === ramHash,
      ramHashMs,
      sourceCpu: cpuDelta(cpu0[0], cpu1[0]),
      destCpu: cpuDelta(cpu0[1], cpu1[1]),
      sourcePeakRssBytes: process.resourceUsage().maxRSS * 1024,
      destPeakRssBytes: peakRssBytes(dest.pid),
    };
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await dest.stop('SIGTERM');
    await machine.destroy();
  }
}

await main();
