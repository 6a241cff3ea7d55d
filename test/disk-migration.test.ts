/**
 * Live block migration end to end: `livemig run` processes with disks,
 * driven over QMP, over real TCP sockets and real image files.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { INCOMING_SUFFIX } from '../src/block/index.js';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { LivemigProcess } from './helpers/livemig-process.js';

const MiB = 1024 * 1024;

interface Machine {
  process: LivemigProcess;
  qmp: QmpClient;
}

let dir: string;
let serial = 0;

async function startMachine(args: string[]): Promise<Machine> {
  const qmpPath = join(dir, `m${serial++}.qmp`);
  const process = LivemigProcess.start(['--machine', 'test', '--qmp', `unix:${qmpPath}`, ...args]);
  await process.waitFor('qmp');
  const qmp = await QmpClient.connect(`unix:${qmpPath}`);
  return { process, qmp };
}

async function stopMachine(m: Machine | undefined): Promise<void> {
  if (!m) return;
  await m.qmp.close().catch(() => {});
  await m.process.stop();
}

type Info = { status?: string; disk?: { transferred: number; remaining: number; total: number }; ram?: { remaining: number }; 'error-desc'?: string };

/** Poll query-migrate until `until` says so or a final state; returns every snapshot. */
async function poll(qmp: QmpClient, until: (i: Info) => boolean = () => false, timeoutMs = 120_000): Promise<Info[]> {
  const seen: Info[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<Info>('query-migrate');
    seen.push(info);
    if (until(info) || ['completed', 'failed', 'cancelled'].includes(info.status ?? '')) return seen;
    if (Date.now() > deadline) throw new Error(`migration still ${info.status} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

type Check = { ramHash: string; diskCheck: { ok: boolean; blocksChecked: number; errors: string[] }; diskBlocksWritten?: number };

async function check(m: Machine): Promise<Check> {
  return m.qmp.execute<Check>('x-livemig-check-guest');
}

async function incomingDestination(args: string[]): Promise<{ machine: Machine; uri: string }> {
  const machine = await startMachine(['--incoming', 'tcp:127.0.0.1:0', ...args]);
  const listening = await machine.process.waitFor('listening');
  return { machine, uri: listening.address as string };
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'livemig-disk-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('block migration between two processes over TCP', { timeout: 300_000 }, () => {
  it('moves a 256 MiB disk the guest writes during the migration; images identical, headers verify, the guest writes on', async () => {
    const srcImage = join(dir, 'a-src.img');
    const dstImage = join(dir, 'a-dst.img');
    let src: Machine | undefined;
    let dst: Machine | undefined;
    try {
      src = await startMachine(['--ram', '256M', '--dirty-rate', '20000', '--disk', `${srcImage},size=256M`, '--disk-rate', '2000', '--disk-pattern', 'sequential']);
      await new Promise((r) => setTimeout(r, 1000)); // the guest fills its disk for a while
      const d = await incomingDestination(['--ram', '256M', '--disk', `${dstImage},size=256M`, '--disk-rate', '2000', '-S']);
      dst = d.machine;
      // Bandwidth capped so that the bulk phase takes a while and the guest's writes land on chunks already sent.
      await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 256 * MiB });
      const writtenBefore = src.process.events.filter((e) => e.event === 'guest').at(-1)?.diskBlocksWritten as number;
      await src.qmp.execute('migrate', { uri: d.uri, blk: true });
      const snapshots = await poll(src.qmp);
      const final = snapshots.at(-1)!;
      assert.equal(final.status, 'completed', final['error-desc']);
      const disk = snapshots.filter((s) => s.disk).map((s) => s.disk!);
      assert.ok(disk.length > 2, 'disk stats while running');
      assert.ok(disk.every((x) => x.total === 256 * MiB));
      for (let i = 1; i < disk.length; i++) assert.ok(disk[i]!.transferred >= disk[i - 1]!.transferred, 'disk.transferred never goes back');
      assert.equal(final.disk!.remaining, 0);

      const resumed = await dst.process.waitFor('resumed');
      assert.equal(resumed.started, false, '-S: the destination waits for cont');
      assert.ok(!existsSync(dstImage + INCOMING_SUFFIX), 'the temporary image was renamed');
      // Source paused after completion and destination not started yet: both disks are as at stop.
      assert.ok((await readFile(srcImage)).equals(await readFile(dstImage)), 'destination image byte-identical to the source image at stop');
      const [srcCheck, dstCheck] = [await check(src), await check(dst)];
      assert.equal(srcCheck.diskCheck.ok, true, srcCheck.diskCheck.errors.join('; '));
      assert.equal(dstCheck.diskCheck.ok, true, dstCheck.diskCheck.errors.join('; '));
      assert.ok(dstCheck.diskCheck.blocksChecked > 1000, `${dstCheck.diskCheck.blocksChecked} blocks checked`);
      assert.equal(dstCheck.ramHash, srcCheck.ramHash);
      // The guest really wrote its disk while it was being copied (so chunks were dirtied after being sent).
      assert.ok(srcCheck.diskBlocksWritten! > writtenBefore + 500, `${writtenBefore} -> ${srcCheck.diskBlocksWritten} blocks written during the migration`);

      // The guest goes on writing its disk on the destination.
      await dst.qmp.execute('cont');
      await new Promise((r) => setTimeout(r, 700));
      await dst.qmp.execute('stop');
      const later = await check(dst);
      assert.equal(later.diskCheck.ok, true, later.diskCheck.errors.join('; '));
      assert.ok(later.diskBlocksWritten! > dstCheck.diskBlocksWritten!, `${dstCheck.diskBlocksWritten} -> ${later.diskBlocksWritten} blocks written`);
      assert.notEqual(later.ramHash, dstCheck.ramHash);
    } finally {
      await stopMachine(src);
      await stopMachine(dst);
    }
  });

  for (const phase of ['bulk', 'dirty'] as const) {
    it(`kill -9 of the destination in the ${phase} phase: the source runs on with its disk intact; a second migration succeeds`, async () => {
      const srcImage = join(dir, `k-${phase}-src.img`);
      const dstImage = join(dir, `k-${phase}-dst.img`);
      let src: Machine | undefined;
      let dst: Machine | undefined;
      let dst2: Machine | undefined;
      try {
        src = await startMachine(['--ram', '128M', '--dirty-rate', '20000', '--disk', `${srcImage},size=256M`, '--disk-rate', '2000', '--disk-pattern', 'sequential']);
        await new Promise((r) => setTimeout(r, 500));
        const d = await incomingDestination(['--ram', '128M', '--disk', `${dstImage},size=256M`]);
        dst = d.machine;
        await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * MiB });
        await src.qmp.execute('migrate', { uri: d.uri, blk: true });
        const inPhase = phase === 'bulk'
          ? (i: Info) => i.disk !== undefined && i.disk.transferred > 0.3 * i.disk.total
          : (i: Info) => i.status === 'active' && i.disk !== undefined && i.disk.remaining === 0;
        const reached = (await poll(src.qmp, inPhase)).at(-1)!;
        assert.equal(reached.status, 'active', `the ${phase} phase was reached`);
        dst.process.child.kill('SIGKILL');
        await dst.process.exited;
        const end = (await poll(src.qmp)).at(-1)!;
        assert.equal(end.status, 'failed');
        assert.ok(existsSync(dstImage + INCOMING_SUFFIX) && !existsSync(dstImage), 'the partial image keeps its temporary name');
        const status = await src.qmp.execute<{ status: string }>('query-status');
        assert.equal(status.status, 'running', 'the source guest runs on');
        await src.qmp.execute('stop');
        const srcCheck = await check(src);
        assert.equal(srcCheck.diskCheck.ok, true, srcCheck.diskCheck.errors.join('; '));
        await src.qmp.execute('cont');

        const d2 = await incomingDestination(['--ram', '128M', '--disk', `${dstImage},size=256M`, '-S']);
        dst2 = d2.machine;
        await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 0 });
        await src.qmp.execute('migrate', { uri: d2.uri, blk: true });
        const second = (await poll(src.qmp)).at(-1)!;
        assert.equal(second.status, 'completed', second['error-desc']);
        await dst2.process.waitFor('resumed');
        assert.ok((await readFile(srcImage)).equals(await readFile(dstImage)), 'second migration: images identical');
        const dstCheck = await check(dst2);
        assert.equal(dstCheck.diskCheck.ok, true, dstCheck.diskCheck.errors.join('; '));
      } finally {
        await stopMachine(src);
        await stopMachine(dst);
        await stopMachine(dst2);
      }
    });
  }

  it('a destination with a disk of another size refuses before writing; the source runs on', async () => {
    const srcImage = join(dir, 's-src.img');
    const dstImage = join(dir, 's-dst.img');
    let src: Machine | undefined;
    let dst: Machine | undefined;
    try {
      src = await startMachine(['--ram', '32M', '--disk', `${srcImage},size=64M`, '--disk-rate', '1000']);
      const d = await incomingDestination(['--ram', '32M', '--disk', `${dstImage},size=32M`]);
      dst = d.machine;
      await src.qmp.execute('migrate', { uri: d.uri, blk: true });
      const end = (await poll(src.qmp)).at(-1)!;
      assert.equal(end.status, 'failed');
      assert.match(end['error-desc']!, /SHUT|disk 'disk0'/);
      const failed = await dst.process.waitFor('failed', () => true, 30_000).catch(() => undefined);
      assert.match(String(failed?.error ?? dst.process.stderr), /disk 'disk0': the source's is 64 MiB, this destination's is 32 MiB/);
      assert.ok(!existsSync(dstImage + INCOMING_SUFFIX) && !existsSync(dstImage), 'no image left behind');
      assert.equal((await src.qmp.execute<{ status: string }>('query-status')).status, 'running');
    } finally {
      await stopMachine(src);
      await stopMachine(dst);
    }
  });

  it('a destination without the source\'s disk says which one and how to give it', async () => {
    const srcImage = join(dir, 'n-src.img');
    let src: Machine | undefined;
    let dst: Machine | undefined;
    try {
      src = await startMachine(['--ram', '32M', '--disk', `${srcImage},size=16M,id=data`]);
      const d = await incomingDestination(['--ram', '32M']);
      dst = d.machine;
      await src.qmp.execute('migrate', { uri: d.uri, blk: true });
      assert.equal((await poll(src.qmp)).at(-1)!.status, 'failed');
      const failed = await dst.process.waitFor('failed', () => true, 30_000);
      assert.match(String(failed.error), /the source migrates disk 'data' \(16 MiB\) but this destination has no disk of that name; give it one with --disk PATH,id=data/);
      assert.equal((await stat(srcImage)).size, 16 * MiB);
    } finally {
      await stopMachine(src);
      await stopMachine(dst);
    }
  });
});
