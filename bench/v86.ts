/**
 * Issue 5's benchmark: one live migration of a running 256 MiB v86 guest (our
 * multiboot test kernel, which rewrites byte 0 of every page of [1 MiB, 100 MiB)
 * flat out) over loopback TCP, with auto-converge on and the default
 * downtime-limit (300 ms). In its own process, like migrate-source.ts; prints
 * one JSON line (a V86BenchResult). Run by bench/run.ts; by hand:
 *
 *   node dist/bench/v86.js [--ram-mib N] [--guest-share PERCENT]
 *
 * --guest-share: the guest's share of the source's thread while the migration
 * shares it (V86MachineOptions.guestSharePercent; default 50).
 *
 * Measures, on the source: the guest's instructions/s over 2 s before the
 * migration; the cost of one dirty-log pass (V86Machine.syncDirtyLog, a
 * compare of RAM with the shadow copy, after the first pass that creates the
 * shadow): its wall time (the emulator's turns between its slices included)
 * and its own time; then the migration (total, setup, downtime, throughput,
 * passes, final throttle), the guest's instructions/s over the migration, the
 * share of the source thread's wall time the guest ran (v86's main loop)
 * before and during it, and the migration's own syncs.
 */
import { queryMigrate } from '../src/monitor/query-migrate.js';
import { createV86Machine } from '../src/machine/v86-machine.js';
import { DEFAULT_GUEST_SHARE_PERCENT } from '../src/machine/guest-share.js';
import { OutgoingMigration } from '../src/migration/index.js';
import type { MigrationInfo } from '../src/monitor/query-migrate.js';
import { cpuDelta, cpuSeconds, jsonEvent, LineChild, LIVEMIG_MAIN, MiB, peakRssBytes } from './util.js';

export interface V86BenchResult {
  what: string;
  status: string;
  info: MigrationInfo;
  ramBytes: number;
  /** Shadow-compare dirty-log passes (not the first, which only copies RAM into the shadow). */
  syncMs: number[];
  syncDirtyPages: number[];
  /** Their own time (comparing and copying, without the emulator turns between slices), and slices. */
  syncBusyMs: number[];
  syncSlices: number[];
  /** The first pass (allocates and fills the shadow). */
  firstSyncMs: number;
  /** The migration's syncs: wall ms, own ms, dirty pages (the last one is the final, paused sync). */
  migrationSyncs: { ms: number; busyMs: number; dirtyPages: number }[];
  /** Share of the wall time the guest ran (v86's main loop), before and during the migration. */
  guestShareBefore: number;
  guestShareDuring: number;
  /** Highest auto-converge throttle (%) during the migration. */
  maxThrottlePercent: number;
  ipsBefore: number;
  ipsDuring: number;
  sourceCpu: string;
  destCpu: string;
  sourcePeakRssBytes: number;
  destPeakRssBytes: number | undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const mibIndex = args.indexOf('--ram-mib');
  const ramBytes = (mibIndex >= 0 ? Number(args[mibIndex + 1]) : 256) * MiB;
  const shareIndex = args.indexOf('--guest-share');
  const guestSharePercent = shareIndex >= 0 ? Number(args[shareIndex + 1]) : DEFAULT_GUEST_SHARE_PERCENT;

  const dest = new LineChild(process.execPath, [...process.execArgv, LIVEMIG_MAIN, 'run', '--json', '--machine', 'v86', '--ram', `${ramBytes / MiB}M`, '--incoming', 'tcp:127.0.0.1:0']);
  const machine = await createV86Machine({ ramSizeBytes: ramBytes, guestSharePercent });
  try {
    const { address } = (await dest.waitFor(jsonEvent('listening'), 'destination')) as { address: string };
    await sleep(1000); // boot and reach the write loop

    const i0 = machine.stats().instructions;
    const e0 = machine.stats().emulatorMs;
    const t0 = performance.now();
    await sleep(2000);
    const ipsBefore = (machine.stats().instructions - i0) / ((performance.now() - t0) / 1000);
    const guestShareBefore = (machine.stats().emulatorMs - e0) / (performance.now() - t0);

    const noop = (): void => {};
    await machine.syncDirtyLog(noop); // creates the shadow
    const firstSyncMs = machine.stats().lastSyncMs;
    const syncMs: number[] = [];
    const syncDirtyPages: number[] = [];
    const syncBusyMs: number[] = [];
    const syncSlices: number[] = [];
    const round1 = (x: number): number => Math.round(x * 10) / 10;
    for (let i = 0; i < 3; i++) {
      await machine.syncDirtyLog(noop);
      const s = machine.stats();
      syncMs.push(round1(s.lastSyncMs));
      syncBusyMs.push(round1(s.lastSyncBusyMs));
      syncSlices.push(s.lastSyncSlices);
      syncDirtyPages.push(s.lastSyncDirtyPages);
    }

    // The migration's setup marks every page dirty, so the passes above lose nothing.
    const migration = new OutgoingMigration(machine);
    migration.setParameters({ 'max-bandwidth': 0, 'downtime-limit': 300 });
    migration.setCapabilities({ 'auto-converge': true });
    let maxThrottlePercent = 0;
    migration.on('throttle', (percent) => (maxThrottlePercent = Math.max(maxThrottlePercent, percent)));
    const migrationSyncs: V86BenchResult['migrationSyncs'] = [];
    let lastSyncs = machine.stats().syncs;
    migration.on('pass', () => {
      const s = machine.stats();
      if (s.syncs === lastSyncs) return;
      lastSyncs = s.syncs;
      migrationSyncs.push({ ms: round1(s.lastSyncMs), busyMs: round1(s.lastSyncBusyMs), dirtyPages: s.lastSyncDirtyPages });
    });
    const cpu0 = [cpuSeconds(process.pid), cpuSeconds(dest.pid)];
    const m0 = machine.stats().instructions;
    const me0 = machine.stats().emulatorMs;
    const mt0 = performance.now();
    migration.start(address);
    const status = await migration.finished;
    const mt1 = performance.now();
    const info = queryMigrate(migration);
    const cpu1 = [cpuSeconds(process.pid), cpuSeconds(dest.pid)];
    const ipsDuring = (machine.stats().instructions - m0) / ((mt1 - mt0) / 1000);
    const guestShareDuring = (machine.stats().emulatorMs - me0) / (mt1 - mt0);
    if (status === 'completed') await dest.waitFor(jsonEvent('resumed'), 'destination');

    const result: V86BenchResult = {
      what: `livemig v86 ${ramBytes / MiB} MiB, running guest, auto-converge, guest share ${guestSharePercent}%`,
      status,
      info,
      ramBytes,
      syncMs,
      syncDirtyPages,
      syncBusyMs,
      syncSlices,
      firstSyncMs: Math.round(firstSyncMs),
      migrationSyncs,
      guestShareBefore: Math.round(guestShareBefore * 1000) / 1000,
      guestShareDuring: Math.round(guestShareDuring * 1000) / 1000,
      maxThrottlePercent,
      ipsBefore,
      ipsDuring,
      sourceCpu: cpuDelta(cpu0[0], cpu1[0]),
      destCpu: cpuDelta(cpu0[1], cpu1[1]),
      sourcePeakRssBytes: peakRssBytes(process.pid) ?? process.resourceUsage().maxRSS * 1024, // VmHWM: ru_maxrss survives fork+exec
      destPeakRssBytes: peakRssBytes(dest.pid),
    };
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await dest.stop('SIGTERM');
    await machine.destroy();
  }
}

await main();
// Everything is cleaned up (destination stopped, temporary files deleted); a leftover handle must not keep us alive.
process.exit(0);
