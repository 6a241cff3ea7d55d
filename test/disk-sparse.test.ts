/**
 * Block migration of a mostly-zero disk: few bytes on the wire, `livemig
 * analyze` counts the chunks per device, and the stream loads into a new
 * machine whose disk then equals the source's.
 */
import { queryMigrate } from '../src/monitor/query-migrate.js';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { analyzeFile } from '../src/analyze/analyze-stream.js';
import { CHUNK_SIZE, FileBlockDevice, IncomingDiskImage } from '../src/block/index.js';
import { createTestMachine } from '../src/machine/index.js';
import { IncomingMigration, OutgoingMigration } from '../src/migration/index.js';
import { Prng } from './helpers/prng.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

test('a mostly-zero 1 GiB disk: far fewer bytes than its size; analyze counts chunks per device; it loads back', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-sparse-'));
  const cleanup: Array<() => Promise<void>> = [];
  try {
    const disk = await FileBlockDevice.open('disk0', join(dir, 'src.img'), { create: true, size: GiB });
    const prng = new Prng(11);
    const dataChunks = [0, 5, 700];
    for (const chunk of dataChunks) {
      const data = new Uint8Array(CHUNK_SIZE);
      for (let i = 0; i < data.length; i += 4096) data[i] = 1 + prng.int(255);
      await disk.writeSectors((chunk * CHUNK_SIZE) / 512, data);
    }
    cleanup.push(() => disk.close());
    const machine = await createTestMachine({ ramSizeBytes: 16 * MiB, rangeEndBytes: 8 * MiB, disk, startPaused: true });
    cleanup.push(() => machine.destroy()); // before the disk it writes (run in reverse)
    const streamPath = join(dir, 'stream.mig');
    const migration = new OutgoingMigration(machine);
    migration.start(`file:${streamPath}`, { blk: true });
    assert.equal(await migration.finished, 'completed', queryMigrate(migration)['error-desc']);
    const info = queryMigrate(migration);
    assert.deepEqual(info.disk, { transferred: GiB, remaining: 0, total: GiB });
    const wireBytes = (await stat(streamPath)).size;
    assert.ok(wireBytes < 3 * CHUNK_SIZE + 17 * MiB, `${wireBytes} bytes on the wire for a 1 GiB disk and 16 MiB of RAM`);
    // The disk's share alone: 3 data chunks plus small records for the 1021 zero chunks.
    const notRam = wireBytes - info.ram!.transferred;
    assert.ok(notRam < 3 * CHUNK_SIZE + 128 * 1024, `${notRam} bytes besides RAM: 3 data chunks of 1 MiB and 1021 zero chunks`);

    const { analysis } = await analyzeFile(streamPath, { keepRam: false });
    assert.equal(analysis.error, undefined, analysis.error?.message);
    assert.ok(analysis.block);
    const [device] = analysis.block.devices;
    assert.equal(analysis.block.devices.length, 1);
    assert.equal(device!.name, 'disk0');
    assert.equal(device!.sizeBytes, GiB);
    assert.equal(device!.dataChunks, dataChunks.length);
    assert.equal(device!.zeroChunks, 1024 - dataChunks.length);
    assert.equal(device!.distinctChunks, 1024);
    assert.equal(analysis.block.progress[0], 0);
    assert.equal(analysis.block.progress.at(-1), 100);

    // Load the file into a new machine with a disk to receive.
    const image = await IncomingDiskImage.create('disk0', join(dir, 'dst.img'), GiB);
    cleanup.push(() => image.device.close());
    const target = await createTestMachine({ ramSizeBytes: 16 * MiB, rangeEndBytes: 8 * MiB, disk: image.device, incoming: true });
    cleanup.push(() => target.destroy());
    const incoming = new IncomingMigration(target, { disks: [image], autostart: false });
    await incoming.listen(`file:${streamPath}`);
    const result = await incoming.run();
    assert.equal(result.status, 'completed', result.error?.message);
    assert.ok((await readFile(join(dir, 'src.img'))).equals(await readFile(join(dir, 'dst.img'))));
    assert.ok((await stat(join(dir, 'dst.img'))).blocks * 512 < 64 * MiB, 'the destination image stays sparse');
  } finally {
    for (const step of cleanup.reverse()) await step().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
});
