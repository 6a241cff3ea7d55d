/**
 * The same-shape reference with real QEMU 7.2: `-M none` with 1 GiB of RAM,
 * QEMU to QEMU over loopback TCP. Non-zero RAM comes from a memory-backend-file
 * in /dev/shm that we fill with random bytes first (the machine has no CPU, so
 * nothing writes it); zero RAM is a plain memory-backend-ram. Return path on, as
 * livemig's default; max-bandwidth raised from QEMU's 128 MiB/s default to
 * effectively unlimited, as livemig's default.
 */
import { randomFillSync } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QemuProcess, qemuSkipReason } from '../test/helpers/qemu.js';
import { cpuDelta, cpuSeconds, GiB, MiB, peakRssBytes } from './util.js';

export interface QemuBenchResult {
  what: string;
  status: string;
  info: { 'total-time': number; downtime: number; 'setup-time': number; ram: { transferred: number; mbps: number } };
  sourcePeakRssBytes: number | undefined;
  destPeakRssBytes: number | undefined;
  sourceCpu: string;
  destCpu: string;
}

async function freePort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  return port;
}

async function fillFile(path: string, bytes: number): Promise<void> {
  const file = await open(path, 'w');
  const chunk = Buffer.allocUnsafe(64 * MiB);
  try {
    for (let off = 0; off < bytes; off += chunk.length) await file.write(randomFillSync(chunk), 0, chunk.length, off);
  } finally {
    await file.close();
  }
}

const pidOf = async (pidFile: string): Promise<number> => Number((await readFile(pidFile, 'utf8')).trim());

/** The result, or the reason to skip when QEMU is not installed. */
export async function qemuMigration(nonZero: boolean): Promise<QemuBenchResult | string> {
  const skip = qemuSkipReason();
  if (skip) return skip;
  const dir = await mkdtemp(join(nonZero ? '/dev/shm' : tmpdir(), 'livemig-bench-'));
  const ramFile = join(dir, 'ram');
  const common = ['-M', 'none,memory-backend=mem', '-m', '1G', '-nodefaults', '-display', 'none'];
  let src: QemuProcess | undefined;
  let dst: QemuProcess | undefined;
  try {
    if (nonZero) await fillFile(ramFile, GiB);
    const port = await freePort();
    dst = await QemuProcess.start([...common, '-object', 'memory-backend-ram,id=mem,size=1G', '-pidfile', join(dir, 'dst.pid'), '-incoming', `tcp:127.0.0.1:${port}`]);
    const backend = nonZero ? `memory-backend-file,id=mem,size=1G,mem-path=${ramFile},share=on` : 'memory-backend-ram,id=mem,size=1G';
    src = await QemuProcess.start([...common, '-object', backend, '-pidfile', join(dir, 'src.pid')]);
    await src.execute('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: true }] });
    await src.execute('migrate-set-parameters', { 'max-bandwidth': 100 * 1000 ** 3, 'downtime-limit': 300 });
    const pids = [await pidOf(join(dir, 'src.pid')), await pidOf(join(dir, 'dst.pid'))];
    const cpu0 = pids.map(cpuSeconds);
    await src.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    const status = await src.waitForMigrationStatus(['completed', 'failed'], 120_000);
    const info = (await src.execute('query-migrate')) as QemuBenchResult['info'];
    if (status === 'completed') await dst.waitForMigrationStatus(['completed'], 30_000);
    const cpu1 = pids.map(cpuSeconds);
    return {
      what: `QEMU 1 GiB ${nonZero ? 'random' : 'zero'} RAM (-M none)`,
      status,
      info,
      sourcePeakRssBytes: peakRssBytes(pids[0]),
      destPeakRssBytes: peakRssBytes(pids[1]),
      sourceCpu: cpuDelta(cpu0[0], cpu1[0]),
      destCpu: cpuDelta(cpu0[1], cpu1[1]),
    };
  } finally {
    await src?.stop();
    await dst?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}
