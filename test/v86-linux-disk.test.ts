/**
 * The Linux disk guest (issue 18): images/linux/disk.ext2 and the checker
 * that runs on it, guests/linux/diskcheck.c. The checker is run on this host
 * (it is a static i386 program) to show it catches a flipped byte and a lost
 * write. Then `--guest linux-disk` migrated live between two `livemig run
 * --machine v86` processes while it writes files: with its disk copied (the
 * images equal at the switchover, the guest's own check ok after the move),
 * and on a shared disk. Skipped with a message when `npm run images` could
 * not make the disk guest (it needs gcc-multilib and e2fsprogs).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { INCOMING_SUFFIX } from '../src/block/incoming-image.js';
import { readCpio } from '../src/images/cpio.js';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { defaultLinuxImageDir, DISKCHECK_LINES, LINUX_DISK_SIZE_BYTES, linuxDiskImagePath, loadLinuxImage } from '../src/images/linux-image.js';
import { startRun as startRunProcess } from './helpers/run-process.js';

const NO_DISK = `no Linux disk guest in ${defaultLinuxImageDir}: run \`npm run images\` (needs Debian packages gcc-multilib, seabios and e2fsprogs)`;

test('disk guest image: a 64 MiB ext2 file system, diskcheck and the ext2 modules in the initramfs', async (t) => {
  const diskPath = await linuxDiskImagePath();
  if (!diskPath) return t.skip(NO_DISK);
  const disk = await readFile(diskPath);
  assert.equal(disk.length, LINUX_DISK_SIZE_BYTES);
  // The ext2 superblock at 1024: magic 0xEF53 at +56, no journal (ext3's has_journal, compat bit 2).
  assert.equal(disk.readUInt16LE(1024 + 56), 0xef53, 'ext2 magic');
  assert.equal(disk.readUInt32LE(1024 + 92) & 4, 0, 'no journal: ext2');
  const image = await loadLinuxImage();
  assert.ok(image.manifest.disk, 'manifest.json describes the disk');
  assert.equal(image.manifest.files['disk.ext2']?.bytes, LINUX_DISK_SIZE_BYTES);
  const records = new Map(readCpio(gunzipSync(image.initramfs)).map((r) => [r.path, r]));
  assert.equal(records.get('bin/diskcheck')?.data.subarray(0, 4).toString('latin1'), '\x7fELF');
  // Loaded in this order by /init: ext4 last, after what it needs.
  const ext2 = [...records.keys()].filter((p) => p.startsWith('lib/modules/ext2/')).sort();
  assert.deepEqual(
    ext2.map((p) => p.replace(/^lib\/modules\/ext2\/\d+-/, '')),
    image.manifest.disk.modules.map((m) => m.split('/').pop()),
  );
  assert.match(ext2.at(-1)!, /ext4\.ko$/);
  assert.ok([...records.keys()].some((p) => /^lib\/modules\/disk\/\d+-sd_mod\.ko$/.test(p)), 'the /dev/sda driver');
});

test('diskcheck catches a flipped byte and a lost write, and answers a request', { timeout: 120_000 }, async (t) => {
  if (!(await linuxDiskImagePath())) return t.skip(NO_DISK);
  const image = await loadLinuxImage();
  const binary = readCpio(gunzipSync(image.initramfs)).find((r) => r.path === 'bin/diskcheck')!.data;
  const dir = await mkdtemp(join(tmpdir(), 'livemig-diskcheck-'));
  const program = join(dir, 'diskcheck');
  await writeFile(program, binary, { mode: 0o755 });
  const files = join(dir, 'files');
  const env = { ...process.env, DISKCHECK_PID_FILE: join(dir, 'pid'), DISKCHECK_KEEP_CACHES: '1' };
  // Can this host run an i386 program? (Its usage message, exit status 2.)
  const usage = await new Promise<{ code: number | null; error?: Error }>((resolve) => {
    const c = spawn(program, [], { env, stdio: 'ignore' });
    c.on('error', (error) => resolve({ code: null, error }));
    c.on('exit', (code) => resolve({ code }));
  });
  if (usage.code !== 2) {
    await rm(dir, { recursive: true, force: true });
    return t.skip(`cannot run the i386 diskcheck here (${usage.error?.message ?? `exit status ${usage.code}`})`);
  }
  // 3 files of up to 4 KiB, 1.5 s apart, a check after every 3 writes: the test
  // acts within a write's pause, on files that are not the next to be written.
  const child = spawn(program, [files, '3', '4', '1500', '3'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  const until = async (pattern: RegExp, what: string): Promise<void> => {
    const deadline = Date.now() + 60_000;
    while (!pattern.test(out)) {
      if (child.exitCode !== null) throw new Error(`diskcheck exited (${child.exitCode}) before ${what}: ${out}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${out}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  try {
    await until(/verify ok 3 files \d+ KiB, 3 written\n/, 'the first check');
    // f001 now holds write 2: keep it, to put back after write 5 replaced it.
    await copyFile(join(files, 'f001'), join(dir, 'f001.write2'));
    await until(/verify ok 3 files \d+ KiB, 6 written\n/, 'the second check');
    await copyFile(join(dir, 'f001.write2'), join(files, 'f001'));
    const f = await open(join(files, 'f002'), 'r+');
    const b = Buffer.alloc(1);
    await f.read(b, 0, 1, 24); // the first payload byte (after the 24-byte header)
    await f.write(Buffer.from([b[0]! ^ 0x40]), 0, 1, 24);
    await f.close();
    child.kill('SIGUSR1');
    await until(DISKCHECK_LINES.requestedVerdict, 'the requested check');
    const verdict = DISKCHECK_LINES.requestedVerdict.exec(out)!;
    assert.equal(verdict[1], 'CORRUPT', out);
    assert.match(out, /verify CORRUPT 2 of 3 files, 6 written, on request/);
    assert.match(out, /CORRUPT \S+\/f001: holds write 2, expected 5 \(a lost write\)/);
    assert.match(out, /CORRUPT \S+\/f002: write 6: byte 24 is 0x[0-9a-f]{2}, expected 0x[0-9a-f]{2}/);
  } finally {
    child.kill('SIGTERM');
    await exited;
    await rm(dir, { recursive: true, force: true });
  }
});

// ---- Between two processes ----

const startRun = (args: string[]) => startRunProcess(args, 120_000);
const MiB = 1 << 20;
const BOOT_TIMEOUT_MS = 300_000; // about 60 s to the first check here; a loaded 2-core machine is much slower

type Run = ReturnType<typeof startRun>;

async function stopAll(...runs: Array<Run | undefined>): Promise<void> {
  await Promise.all(
    runs.map(async (r) => {
      if (!r || r.child.exitCode !== null) return;
      const exited = new Promise((resolve) => r.child.once('exit', resolve));
      r.child.kill('SIGTERM');
      await exited;
    }),
  );
}

async function waitMigration(src: QmpClient): Promise<Record<string, any>> {
  for (;;) {
    const info = (await src.execute('query-migrate')) as Record<string, any>;
    if (['completed', 'failed', 'cancelled'].includes(info.status)) return info;
    await new Promise((r) => setTimeout(r, 100));
  }
}

const sha = async (path: string): Promise<string> => createHash('sha256').update(await readFile(path)).digest('hex');
/** The writes counted in each periodic or requested check (`..., W written`). */
const writeCounts = (text: string): number[] => [...text.matchAll(/diskcheck: verify ok [^\n]*?, (\d+) written/g)].map((m) => Number(m[1]));

/** Types `diskcheck verify` on the destination's console; resolves with its verdict line. */
async function requestVerdict(run: Run): Promise<string> {
  const from = run.events.length;
  run.child.stdin.write('diskcheck verify\n');
  await run.until(() => DISKCHECK_LINES.requestedVerdict.test(run.serial(from)), "the guest's verdict on request", 120_000);
  return DISKCHECK_LINES.requestedVerdict.exec(run.serial(from))![0];
}

test('linux-disk migrates live with its disk while writing files: the images are equal at the switchover, the guest verifies every file ok after the move', { timeout: BOOT_TIMEOUT_MS + 300_000 }, async (t) => {
  const image = await linuxDiskImagePath();
  if (!image) return t.skip(NO_DISK);
  const dir = await mkdtemp(join(tmpdir(), 'livemig-linuxdisk-'));
  let source: Run | undefined;
  let destination: Run | undefined;
  try {
    const srcImage = join(dir, 'src.ext2');
    const dstImage = join(dir, 'dst.ext2');
    await copyFile(image, srcImage);
    await writeFile(dstImage, '');
    await truncate(dstImage, LINUX_DISK_SIZE_BYTES);
    const common = ['--machine', 'v86', '--guest', 'linux-disk', '--ram', '128M'];
    source = startRun([...common, '--hda', srcImage, '--qmp', `unix:${join(dir, 'src.qmp')}`]);
    // -S: the destination waits after the switchover, so both images can be compared as they were then.
    destination = startRun([...common, '--hda', dstImage, '-S', '--serial-stdin', '--qmp', `unix:${join(dir, 'dst.qmp')}`, '--incoming', `unix:${join(dir, 'mig.sock')}`]);
    const s = source;
    await s.until(() => /diskcheck: verify ok/.test(s.serial()), 'the guest to boot, mount its disk and check its files', BOOT_TIMEOUT_MS);
    await destination.until(() => destination!.events.some((e) => e.event === 'listening'), 'the destination');
    const src = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 5000 });
    const dst = await QmpClient.connect(`unix:${join(dir, 'dst.qmp')}`, { retryForMs: 5000 });
    try {
      // Slow at first (2 MiB/s: the 64 MiB disk alone would take 32 s), until the guest was seen writing and checking files mid-migration.
      await src.execute('migrate-set-parameters', { 'max-bandwidth': 2 * MiB });
      const migrateAt = s.events.length;
      await src.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}`, blk: true });
      await s.until(() => writeCounts(s.serial(migrateAt)).length > 0, 'a check by the guest during the migration', 120_000);
      const during = (await src.execute('query-migrate')) as Record<string, any>;
      assert.equal(during.status, 'active', 'the guest wrote and checked files while the migration ran');
      const writtenDuring = Math.max(...writeCounts(s.serial(migrateAt)));
      await src.execute('migrate-set-parameters', { 'max-bandwidth': 1024 * MiB });
      const info = await waitMigration(src);
      assert.equal(info.status, 'completed', info['error-desc']);
      assert.equal(info.disk?.total, LINUX_DISK_SIZE_BYTES, 'hda was migrated');
      assert.doesNotMatch(s.serial(), /CORRUPT/);

      // At the switchover: the destination's disk is the source's, byte for byte.
      await destination.until(() => destination!.events.some((e) => e.event === 'resumed'), 'the destination to load');
      assert.equal(((await dst.execute('query-status')) as { status: string }).status, 'paused');
      assert.equal(((await src.execute('query-status')) as { status: string }).status, 'postmigrate');
      assert.ok(!existsSync(dstImage + INCOMING_SUFFIX), 'the incoming image took its name');
      assert.equal(await sha(dstImage), await sha(srcImage), 'destination image equals the source image at the switchover');

      // After the move: the guest reads every file back from the migrated disk and says ok.
      await dst.execute('cont');
      const verdict = await requestVerdict(destination);
      assert.match(verdict, /^diskcheck: verify ok (\d+) files/, verdict);
      assert.ok(writeCounts(verdict)[0]! > writtenDuring, `${verdict}: more files written than the ${writtenDuring} seen mid-migration`);
      assert.doesNotMatch(destination.serial(), /CORRUPT/);
    } finally {
      await src.close();
      await dst.close();
    }
  } finally {
    await stopAll(source, destination);
    await rm(dir, { recursive: true, force: true });
  }
});

test('linux-disk refuses --disk-shared without --hda (both sides must name the same image)', { timeout: 60_000 }, async (t) => {
  if (!(await linuxDiskImagePath())) return t.skip(NO_DISK);
  const run = startRun(['--machine', 'v86', '--guest', 'linux-disk', '--disk-shared']);
  const code = await new Promise<number | null>((resolve) => run.child.once('exit', resolve));
  assert.notEqual(code, 0);
  assert.match(run.stderr(), /--guest linux-disk --disk-shared: give both sides the same --hda PATH/);
});

test('linux-disk on a shared disk (--disk-shared): nothing copied, the guest verifies every file ok after the move', { timeout: BOOT_TIMEOUT_MS + 200_000 }, async (t) => {
  const image = await linuxDiskImagePath();
  if (!image) return t.skip(NO_DISK);
  const dir = await mkdtemp(join(tmpdir(), 'livemig-linuxdisk-shared-'));
  let source: Run | undefined;
  let destination: Run | undefined;
  try {
    const shared = join(dir, 'shared.ext2');
    await copyFile(image, shared);
    const common = ['--machine', 'v86', '--guest', 'linux-disk', '--ram', '128M', '--hda', shared, '--disk-shared'];
    source = startRun([...common, '--qmp', `unix:${join(dir, 'src.qmp')}`]);
    destination = startRun([...common, '--serial-stdin', '--incoming', `unix:${join(dir, 'mig.sock')}`]);
    const s = source;
    await s.until(() => /diskcheck: verify ok/.test(s.serial()), 'the guest to boot, mount its disk and check its files', BOOT_TIMEOUT_MS);
    await destination.until(() => destination!.events.some((e) => e.event === 'listening'), 'the destination');
    const src = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 5000 });
    try {
      const before = writeCounts(s.serial());
      await src.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}`, blk: true });
      const info = await waitMigration(src);
      assert.equal(info.status, 'completed', info['error-desc']);
      assert.equal(info.disk, undefined, 'a shared disk is not copied');
      const resumed = await (async () => {
        await destination!.until(() => destination!.events.some((e) => e.event === 'resumed'), 'the destination to run');
        return destination!.events.find((e) => e.event === 'resumed')!;
      })();
      assert.ok(resumed.bytes < info.ram.transferred + 4 * MiB, `the destination received ${resumed.bytes} bytes: RAM and state, not the 64 MiB disk`);
      assert.ok(!existsSync(shared + INCOMING_SUFFIX));
      const verdict = await requestVerdict(destination);
      assert.match(verdict, /^diskcheck: verify ok (\d+) files/, verdict);
      assert.ok(writeCounts(verdict)[0]! > Math.max(...before), `${verdict}: the guest kept writing`);
      assert.doesNotMatch(destination.serial() + s.serial(), /CORRUPT/);
    } finally {
      await src.close();
    }
  } finally {
    await stopAll(source, destination);
    await rm(dir, { recursive: true, force: true });
  }
});
