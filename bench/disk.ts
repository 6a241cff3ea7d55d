/**
 * Block migration benchmark: a 1 GiB disk, every chunk written with random
 * data, of an idle (paused) 64 MiB test machine, migrated over loopback TCP to
 * a `livemig run --incoming --disk` process. Also measures, in the same run,
 * the image's sequential read speed (1 MiB reads, as the block handler does),
 * so the result can be read against both limits. Prints one JSON line (a
 * RunResult with readBytesPerSecond). Run by bench/run.ts with --spec; by hand:
 *
 *   node dist/bench/disk.js [--disk-gib N]
 *
 * The image is created in the OS temp directory and deleted afterwards. The
 * freshly written image is mostly in the page cache, so "read speed" is the
 * speed of reading it now, which is what the migration sees too.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBlockDevice } from '../src/block/index.js';
import { createTestMachine } from '../src/machine/index.js';
import { sequentialReadBytesPerSecond, writeRandomImage } from './disk-image.js';
import { runLivemigMigration } from './livemig-common.js';
import { GiB, MiB, specFromArgs, type ScenarioSpec } from './util.js';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const gibIndex = args.indexOf('--disk-gib');
  const spec: ScenarioSpec = specFromArgs(args) ?? {
    id: 'd',
    group: 'd',
    label: 'disk',
    ramBytes: 64 * MiB,
    fill: 'disk',
    diskBytes: (gibIndex >= 0 ? Number(args[gibIndex + 1]) : 1) * GiB,
    maxBandwidth: 0,
    downtimeLimitMs: 300,
    caps: [],
    params: {},
    boundMs: 120_000,
  };
  const diskBytes = spec.diskBytes!;
  const dir = await mkdtemp(join(tmpdir(), 'livemig-bench-disk-'));
  const srcPath = join(dir, 'src.img');
  const dstPath = join(dir, 'dst.img');
  let disk: FileBlockDevice | undefined;
  try {
    await writeRandomImage(srcPath, diskBytes);
    const readBytesPerSecond = await sequentialReadBytesPerSecond(srcPath);
    const result = await runLivemigMigration({
      spec,
      destArgs: ['--disk', `${dstPath},size=${diskBytes}`],
      blk: true,
      makeSource: async () => {
        disk = await FileBlockDevice.open('disk0', srcPath);
        return createTestMachine({ ramSizeBytes: spec.ramBytes, startPaused: true, disk });
      },
    });
    process.stdout.write(JSON.stringify({ ...result, readBytesPerSecond }) + '\n');
  } finally {
    await disk?.close();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
// Everything is cleaned up (destination stopped, temporary files deleted); a leftover handle must not keep us alive.
process.exit(0);
