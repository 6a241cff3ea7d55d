/**
 * The initramfs writer (src/images/cpio.ts): the newc layout byte for byte,
 * parent directories, errors, determinism, and extraction by a real cpio
 * (GNU cpio, or busybox cpio) to the same files, modes and symlinks.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { lstat, mkdtemp, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { type CpioEntry, CpioWriter, readCpio, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, writeCpio, writeInitramfs } from '../src/images/cpio.js';

const run = promisify(execFile);

/** Names and sizes of every length mod 4, so each padding case is exercised. */
function sampleEntries(): CpioEntry[] {
  const entries: CpioEntry[] = [
    { type: 'directory', path: 'bin' },
    { type: 'file', path: '/init', data: Buffer.from('#!/bin/sh\necho hi\n'), mode: 0o755 },
    { type: 'file', path: 'bin/empty', data: new Uint8Array(0), mode: 0o600 },
    { type: 'symlink', path: 'bin/sh', target: '/bin/busybox' },
    { type: 'symlink', path: 'bin/rel', target: '../init' },
    { type: 'directory', path: 'tmp', mode: 0o1777 },
    { type: 'directory', path: 'private', mode: 0o700 },
    { type: 'file', path: 'deep/er/still/file.txt', data: Buffer.from('nested, parents added by the writer'), mode: 0o640 },
  ];
  for (let n = 1; n <= 8; n++) {
    const data = Buffer.alloc(n * 37 + n, n);
    entries.push({ type: 'file', path: `data/${'x'.repeat(n)}`, data, mode: n % 2 ? 0o644 : 0o755 });
  }
  const big = Buffer.alloc(300_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 2654435761) >>> 24;
  entries.push({ type: 'file', path: 'data/big.bin', data: big, mode: 0o444 });
  return entries;
}

test('cpio newc: headers are 4-byte aligned, fields round-trip, the trailer ends the archive', () => {
  const archive = writeCpio(sampleEntries());
  assert.equal(archive.length % 4, 0);
  assert.equal(archive.toString('ascii', 0, 6), '070701');
  const records = readCpio(archive);
  const byPath = new Map(records.map((r) => [r.path, r]));
  // Parents come before children, and only once.
  assert.deepEqual(
    records.map((r) => r.path).filter((p) => ['deep', 'deep/er', 'deep/er/still', 'deep/er/still/file.txt', 'data'].includes(p)),
    ['deep', 'deep/er', 'deep/er/still', 'deep/er/still/file.txt', 'data'],
  );
  assert.equal(new Set(records.map((r) => r.path)).size, records.length);
  assert.equal(byPath.get('init')!.mode, S_IFREG | 0o755);
  assert.equal(byPath.get('deep')!.mode, S_IFDIR | 0o755);
  assert.equal(byPath.get('deep')!.nlink, 2);
  assert.equal(byPath.get('tmp')!.mode, S_IFDIR | 0o1777);
  assert.equal(byPath.get('bin/sh')!.mode, S_IFLNK | 0o777);
  assert.equal(byPath.get('bin/sh')!.data.toString(), '/bin/busybox');
  assert.equal(byPath.get('bin/empty')!.data.length, 0);
  for (const e of sampleEntries()) {
    if (e.type === 'file') assert.ok(byPath.get(e.path.replace(/^\//, ''))!.data.equals(e.data), e.path);
  }
  // Every header starts on a 4-byte boundary: walk the raw bytes.
  let count = 0;
  for (let off = archive.indexOf('070701'); off >= 0; off = archive.indexOf('070701', off + 1)) {
    if (off % 4 === 0 && /^070701[0-9a-f]{104}$/.test(archive.toString('ascii', off, off + 110))) count++;
  }
  assert.equal(count, records.length + 1); // + the trailer
  const trailer = archive.lastIndexOf('TRAILER!!!');
  assert.equal(archive.toString('ascii', trailer - 110, trailer - 104), '070701');
});

test('cpio newc: device nodes carry rdev major/minor', () => {
  const records = readCpio(writeCpio([{ type: 'char', path: 'dev/console', major: 5, minor: 1 }]));
  assert.equal(records[0]!.path, 'dev');
  assert.equal(records[1]!.mode, S_IFCHR | 0o600);
  assert.equal(records[1]!.mode & S_IFMT, S_IFCHR);
  assert.deepEqual([records[1]!.rdevMajor, records[1]!.rdevMinor], [5, 1]);
});

test('cpio newc: output is deterministic, and the gzip form decompresses to it', () => {
  const a = writeCpio(sampleEntries());
  assert.ok(a.equals(writeCpio(sampleEntries())));
  const gz = writeInitramfs(sampleEntries());
  assert.deepEqual([gz[0], gz[1]], [0x1f, 0x8b]);
  assert.ok(gunzipSync(gz).equals(a));
  assert.ok(gz.equals(writeInitramfs(sampleEntries())));
});

test('cpio newc: bad input is refused with a clear error', () => {
  assert.throws(() => writeCpio([{ type: 'file', path: '../etc/passwd', data: new Uint8Array(1) }]), /escapes the archive/);
  assert.throws(() => writeCpio([{ type: 'file', path: '/', data: new Uint8Array(1) }]), /empty path/);
  assert.throws(() => writeCpio([{ type: 'directory', path: 'a' }, { type: 'directory', path: '/a/' }]), /duplicate path "a"/);
  assert.throws(() => writeCpio([{ type: 'file', path: 'f', data: new Uint8Array(1) }, { type: 'file', path: 'f/g', data: new Uint8Array(1) }]), /"f" is a file, not a directory/);
  assert.throws(() => writeCpio([{ type: 'file', path: 'f', data: new Uint8Array(1), mode: 0o10000 }]), /bad mode/);
  assert.throws(() => writeCpio([{ type: 'char', path: 'c', major: -1, minor: 0 }]), /rdevmajor .* does not fit/);
  assert.throws(() => writeCpio([{ type: 'symlink', path: 's', target: '' }]), /bad symlink target/);
  const w = new CpioWriter();
  w.finish();
  assert.throws(() => w.add({ type: 'directory', path: 'x' }), /already finished/);
  assert.throws(() => readCpio(Buffer.from('070702' + '0'.repeat(104))), /bad magic/);
  assert.throws(() => readCpio(writeCpio([]).subarray(0, 100)), /truncated/);
});

/** A cpio extractor on this machine: GNU cpio, else busybox's. */
function findCpio(): { cmd: string; args: string[] } | undefined {
  if (spawnSync('cpio', ['--version']).status === 0) return { cmd: 'cpio', args: ['-idv', '--no-absolute-filenames'] };
  if (spawnSync('busybox', ['cpio', '--help']).error === undefined) return { cmd: 'busybox', args: ['cpio', '-idv'] };
  return undefined;
}

test('cpio newc: a real cpio extracts the same files, modes and symlinks', async (t) => {
  const cpio = findCpio();
  if (!cpio) {
    t.skip('no cpio on this machine: install it with `apt-get install -y cpio` (CI does)');
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'livemig-cpio-'));
  try {
    const archive = writeCpio(sampleEntries());
    await new Promise<void>((resolve, reject) => {
      const child = execFile(cpio.cmd, cpio.args, { cwd: dir }, (err, _stdout, stderr) => (err ? reject(new Error(`${cpio.cmd} failed: ${stderr}`)) : resolve()));
      child.stdin!.end(archive);
    });
    for (const r of readCpio(archive)) {
      const p = join(dir, r.path);
      const st = await lstat(p);
      assert.equal(st.mode & S_IFMT, r.mode & S_IFMT, `type of ${r.path}`);
      if ((r.mode & S_IFMT) === S_IFLNK) {
        assert.equal(await readlink(p), r.data.toString(), `target of ${r.path}`);
        continue;
      }
      assert.equal((st.mode & 0o7777).toString(8), (r.mode & 0o7777).toString(8), `mode of ${r.path}`);
      if ((r.mode & S_IFMT) === S_IFREG) assert.ok((await readFile(p)).equals(r.data), `contents of ${r.path}`);
    }
    // The device node, listed (creating it would need root).
    const { stdout } = await run('sh', ['-c', `printf '%s' "$0" | base64 -d | ${cpio.cmd === 'cpio' ? 'cpio -itv' : 'busybox cpio -itv'}`, writeCpio([{ type: 'char', path: 'dev/console', major: 5, minor: 1 }]).toString('base64')]);
    assert.match(stdout, /^crw------- .*\b5, +1\b.*dev\/console$/m);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
