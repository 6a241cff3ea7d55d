/**
 * The Linux disk guest (issue 18): images/linux/disk.ext2 and the checker
 * that runs on it, guests/linux/diskcheck.c. The checker is run on this host
 * (it is a static i386 program) to show it catches a flipped byte and a lost
 * write. Skipped with a message when `npm run images` could not make the disk
 * guest (it needs gcc-multilib and e2fsprogs).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFile, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { readCpio } from '../src/images/cpio.js';
import { defaultLinuxImageDir, DISKCHECK_LINES, LINUX_DISK_SIZE_BYTES, linuxDiskImagePath, loadLinuxImage } from '../src/images/linux-image.js';

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
