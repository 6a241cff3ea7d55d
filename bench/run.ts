/**
 * `npm run bench`: measure the loopback TCP and memory-copy limits, then
 * migrate 1 GiB over loopback TCP with livemig (and with QEMU, if installed),
 * and print one table with every throughput as a ratio of the TCP limit
 * measured in the same run. Writes nothing; docs/benchmarks.md records a run.
 *
 *   node dist/bench/run.js [--no-qemu] [--no-zero] [--no-v86]
 *
 * Then (unless --no-v86) a live migration of a running 256 MiB v86 guest with
 * auto-converge, in its own table (bench/v86.ts).
 */
import { execFileSync } from 'node:child_process';
import { cpus } from 'node:os';
import { loopbackTcpBytesPerSecond, memoryCopyBytesPerSecond } from './limits.js';
import type { MigrationBenchResult } from './migrate-source.js';
import { qemuMigration, type QemuBenchResult } from './qemu-ref.js';
import { LineChild } from './util.js';
import type { V86BenchResult } from './v86.js';

const args = process.argv.slice(2);
const MB = 1e6;

async function livemigMigration(zero: boolean): Promise<MigrationBenchResult> {
  const child = new LineChild(process.execPath, [new URL('./migrate-source.js', import.meta.url).pathname, ...(zero ? ['--zero'] : [])]);
  try {
    return await child.waitFor((line) => (line.startsWith('{') ? (JSON.parse(line) as MigrationBenchResult) : undefined), 'livemig migration');
  } finally {
    await child.stop();
  }
}

async function v86Migration(): Promise<V86BenchResult> {
  const child = new LineChild(process.execPath, [new URL('./v86.js', import.meta.url).pathname]);
  try {
    return await child.waitFor((line) => (line.startsWith('{') ? (JSON.parse(line) as V86BenchResult) : undefined), 'v86 migration');
  } finally {
    await child.stop();
  }
}

function printTable(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  for (const row of rows) console.log(row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  '));
}

const mib = (bytes: number | undefined): string => (bytes === undefined ? '?' : `${Math.round(bytes / 2 ** 20)} MiB`);

async function main(): Promise<void> {
  const qemuVersion = (): string => {
    try {
      return execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0]!;
    } catch {
      return 'not installed';
    }
  };
  console.log(`livemig bench — ${new Date().toISOString()}, node ${process.version}, ${cpus().length} × ${cpus()[0]?.model ?? '?'}, QEMU: ${qemuVersion()}`);

  const tcp = await loopbackTcpBytesPerSecond();
  const memcpy = memoryCopyBytesPerSecond();
  console.log(`limits: loopback TCP ${(tcp / MB).toFixed(0)} MB/s (2 GiB in 1 MiB writes, process to process); memory copy ${(memcpy / MB).toFixed(0)} MB/s (Buffer.copy 256 MiB x 8)`);

  const runs: Array<MigrationBenchResult | QemuBenchResult | string> = [await livemigMigration(false)];
  if (!args.includes('--no-zero')) runs.push(await livemigMigration(true));
  if (!args.includes('--no-qemu')) {
    runs.push(await qemuMigration(true));
    if (!args.includes('--no-zero')) runs.push(await qemuMigration(false));
  }

  const header = ['migration (1 GiB over 127.0.0.1)', 'total ms', 'setup ms', 'downtime ms', 'wire MB', 'wire MB/s', 'x TCP', 'RAM MB/s', 'src peak RSS', 'dst peak RSS', 'src CPU s', 'dst CPU s'];
  const rows = [header];
  const notes: string[] = [];
  for (const r of runs) {
    if (typeof r === 'string') {
      console.log(`skipped: ${r}`);
      continue;
    }
    const total = r.info['total-time'] ?? NaN;
    const wire = r.info.ram?.transferred ?? NaN;
    const wireRate = wire / (total / 1000);
    rows.push([
      r.status === 'completed' ? r.what : `${r.what} (${r.status})`,
      String(total),
      String(r.info['setup-time']),
      String(r.info.downtime),
      (wire / MB).toFixed(1),
      (wireRate / MB).toFixed(0),
      (wireRate / tcp).toFixed(3),
      (2 ** 30 / (total / 1000) / MB).toFixed(0),
      mib(r.sourcePeakRssBytes),
      mib(r.destPeakRssBytes),
      r.sourceCpu,
      r.destCpu,
    ]);
    if ('ramMatches' in r) {
      if (r.ramMatches === false) console.log(`WARNING: ${r.what}: destination RAM differs from the source`);
      if (r.ramMatches === null) notes.push(`${r.what}: RAM not verified here (the destination runs without --verify; the tests verify it)`);
      else notes.push(`${r.what}: RAM identical on both sides: ${r.ramMatches}`);
    }
  }
  printTable(rows);
  for (const note of notes) console.log(note);
  console.log('CPU s = user+sys seconds of the whole process during the migration');
  console.log('wire = ram.transferred (page records); MB = 10^6 bytes; RAM MB/s = guest RAM size / total time; x TCP = wire MB/s / loopback TCP limit');

  if (!args.includes('--no-v86')) {
    const r = await v86Migration();
    const total = r.info['total-time'] ?? NaN;
    const wire = r.info.ram?.transferred ?? NaN;
    const wireRate = wire / (total / 1000);
    const mips = (ips: number): string => (ips / 1e6).toFixed(0);
    console.log('');
    printTable([
      ['migration (v86, 256 MiB over 127.0.0.1)', 'sync ms', 'total ms', 'setup ms', 'downtime ms', 'wire MB', 'wire MB/s', 'x TCP', 'passes', 'max throttle %', 'MIPS before', 'MIPS during', 'src peak RSS', 'dst peak RSS', 'src CPU s', 'dst CPU s'],
      [
        r.status === 'completed' ? r.what : `${r.what} (${r.status})`,
        r.syncMs.join('/'),
        String(total),
        String(r.info['setup-time']),
        String(r.info.downtime),
        (wire / MB).toFixed(1),
        (wireRate / MB).toFixed(0),
        (wireRate / tcp).toFixed(3),
        String(r.info.ram?.['dirty-sync-count'] ?? '?'),
        String(r.maxThrottlePercent),
        mips(r.ipsBefore),
        mips(r.ipsDuring),
        mib(r.sourcePeakRssBytes),
        mib(r.destPeakRssBytes),
        r.sourceCpu,
        r.destCpu,
      ],
    ]);
    console.log(`sync ms = three dirty-log passes (shadow compare of ${mib(r.ramBytes)}) on the running guest before the migration, dirty pages ${r.syncDirtyPages.join('/')}; the first pass (shadow copy) took ${r.firstSyncMs} ms`);
    console.log('MIPS = guest instructions/s (10^6), over 2 s before the migration and over the migration on the source; max throttle % = highest auto-converge throttle; downtime-limit 300 ms, max-bandwidth 0');
    console.log(`passes = dirty-sync-count; sent while stopped: ${((r.info.ram?.['downtime-bytes'] ?? NaN) / MB).toFixed(1)} MB`);
  }
}

await main();
