/**
 * `npm run bench`: measure the loopback TCP and memory-copy limits, then
 * migrate 1 GiB over loopback TCP with livemig (and with QEMU, if installed),
 * and print one table with every throughput as a ratio of the TCP limit
 * measured in the same run. Writes nothing; docs/benchmarks.md records a run.
 *
 *   node dist/bench/run.js [--no-qemu] [--no-zero]
 */
import { execFileSync } from 'node:child_process';
import { cpus } from 'node:os';
import { loopbackTcpBytesPerSecond, memoryCopyBytesPerSecond } from './limits.js';
import type { MigrationBenchResult } from './migrate-source.js';
import { qemuMigration, type QemuBenchResult } from './qemu-ref.js';
import { LineChild } from './util.js';

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
  const widths = header.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  for (const row of rows) console.log(row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  '));
  for (const note of notes) console.log(note);
  console.log('CPU s = user+sys seconds of the whole process during the migration');
  console.log('wire = ram.transferred (page records); MB = 10^6 bytes; RAM MB/s = guest RAM size / total time; x TCP = wire MB/s / loopback TCP limit');
}

await main();
