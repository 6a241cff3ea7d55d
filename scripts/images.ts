/**
 * `npm run images`: builds the Linux guest into images/linux/.
 *
 *  1. Debian bookworm i386 packages (the 6.1 686 kernel, busybox-static),
 *     fetched with `apt-get download` and a private apt state directory
 *     (images/.cache/apt): the system's apt configuration and state are
 *     only read, never changed. Downloaded .debs are kept in
 *     images/.cache/debs and reused (`--refresh` fetches again).
 *  2. guests/linux/dirtier.c compiled with `gcc -m32 -static -O2` (libc), or
 *     freestanding with raw system calls when no i386 libc is installed.
 *  3. The initramfs (/init, busybox and its applet links, the dirtier, the
 *     kernel modules for v86's IDE disk: DISK_MODULES), packed by
 *     src/images/cpio.ts.
 *  4. SeaBIOS (bios.bin, vgabios-stdvga.bin) from /usr/share/seabios, or
 *     from Debian's `seabios` package fetched the same way.
 *  5. The disk guest: guests/linux/diskcheck.c (gcc -m32 -static, libc)
 *     and the ext2 modules (EXT2_MODULES) go into the initramfs;
 *     disk.ext2, an empty 64 MiB ext2 file system made by `mke2fs -d`
 *     (e2fsprogs), reproducible. Skipped, with a message, without an i386
 *     libc or mke2fs: the rest of the guest does not need them.
 *
 * Output: images/linux/{vmlinuz,initramfs.cpio.gz,bios.bin,vgabios-stdvga.bin,disk.ext2,manifest.json}.
 * Usage: node dist/scripts/images.js [--refresh] [--out DIR]
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { type CpioEntry, writeInitramfs } from '../src/images/cpio.js';
import { LINUX_DISK_FILE, LINUX_DISK_SIZE_BYTES, LINUX_IMAGE_FILES, type LinuxImageManifest, linuxCmdline } from '../src/images/linux-image.js';

const run = promisify(execFile);
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const guestDir = join(repoRoot, 'guests', 'linux');
/** Debian's seabios package installs here; LIVEMIG_SEABIOS_DIR overrides (a missing dir: fetch the package). */
const SEABIOS_DIR = process.env['LIVEMIG_SEABIOS_DIR'] ?? '/usr/share/seabios';

class BuildError extends Error {}

/**
 * Kernel modules for v86's IDE disk (PIIX) as /dev/sda, in load order (each
 * after what it depends on: `depends=` in its .modinfo). Debian's 686 kernel
 * builds libata, SCSI and sd as modules; /init insmods these from
 * /lib/modules/disk/ (no modprobe, no modules.dep). About 0.5 MiB.
 */
const DISK_MODULES = [
  'drivers/scsi/scsi_common.ko',
  'drivers/scsi/scsi_mod.ko',
  'drivers/ata/libata.ko',
  'drivers/ata/ata_piix.ko',
  'crypto/crct10dif_common.ko',
  'lib/crc-t10dif.ko',
  'lib/crc64.ko',
  'lib/crc64-rocksoft.ko',
  'block/t10-pi.ko',
  'drivers/scsi/sd_mod.ko',
];

/**
 * ext2 for the disk guest, in load order: ext4 mounts it (EXT4_USE_FOR_EXT2).
 * crc32c_generic is ext4's softdep, needed even for ext2 (without it every
 * mount fails: "Cannot load crc32c driver"). /init insmods these from
 * /lib/modules/ext2/ only with diskcheck=. About 1.2 MiB.
 */
const EXT2_MODULES = ['crypto/crc32c_generic.ko', 'lib/crc16.ko', 'fs/mbcache.ko', 'fs/jbd2/jbd2.ko', 'fs/ext4/ext4.ko'];

const t0 = Date.now();
const log = (msg: string): void => console.log(`[images ${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${msg}`);

async function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<{ stdout: string; stderr: string }> {
  try {
    return await run(cmd, args, { maxBuffer: 64 << 20, ...opts });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string; stdout?: string };
    if (err.code === 'ENOENT') throw new BuildError(`${cmd} not found (needed to build the Linux guest)`);
    const out = `${err.stderr ?? ''}${err.stdout ?? ''}`.trim().split('\n').slice(-15).join('\n');
    throw Object.assign(new BuildError(`${cmd} ${args.join(' ')} failed:\n${out}`), { stdout: err.stdout ?? '', stderr: err.stderr ?? '' });
  }
}

const exists = (p: string): Promise<boolean> => stat(p).then(() => true, () => false);

/** apt-get/apt-cache options for a private, i386-only state in `dir`. */
async function aptOptions(dir: string): Promise<string[]> {
  for (const d of ['lists/partial', 'cache/archives/partial', 'preferences.d']) await mkdir(join(dir, d), { recursive: true });
  if (!(await exists(join(dir, 'status')))) await writeFile(join(dir, 'status'), '');
  const o = [
    `Dir::State=${dir}`,
    `Dir::State::Lists=${join(dir, 'lists')}`,
    `Dir::State::status=${join(dir, 'status')}`,
    `Dir::Cache=${join(dir, 'cache')}`,
    `Dir::Etc::preferencesparts=${join(dir, 'preferences.d')}`,
    'Dir::Etc::sourcelist=/etc/apt/sources.list',
    'Dir::Etc::sourceparts=/etc/apt/sources.list.d',
    'APT::Architecture=i386',
    'APT::Architectures::=i386',
    'Debug::NoLocking=1',
    'Acquire::Languages=none',
    'APT::Get::List-Cleanup=0',
  ];
  // apt's download sandbox user cannot write into our directories.
  if (process.getuid?.() === 0) o.push('APT::Sandbox::User=root');
  return o.flatMap((x) => ['-o', x]);
}

async function aptUpdate(opts: string[]): Promise<void> {
  try {
    await sh('apt-get', [...opts, '-q', 'update']);
  } catch (e) {
    if (!(e instanceof BuildError)) throw e;
    // A failing secondary index (a mirror mid-sync) is not fatal if the
    // packages still resolve; resolution below reports a real failure.
    const errs = ((e as BuildError & { stderr?: string }).stderr ?? e.message).split('\n').filter((l) => l.startsWith('E:') || l.startsWith('W:'));
    log(`apt-get update reported problems (continuing if the packages resolve):\n    ${errs.join('\n    ')}`);
  }
}

async function resolveKernelPackage(opts: string[]): Promise<string> {
  const { stdout } = await sh('apt-cache', [...opts, 'depends', 'linux-image-686']);
  const m = /Depends:\s*(linux-image-6\.1\.\S+-686)\s*$/m.exec(stdout);
  if (!m) throw new BuildError(`cannot resolve linux-image-686 to a 6.1 kernel package; apt-cache said:\n${stdout}`);
  return m[1]!;
}

async function findDeb(dir: string, prefix: string): Promise<string | undefined> {
  const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => n.startsWith(prefix) && n.endsWith('.deb')).sort();
  return names.length ? join(dir, names[names.length - 1]!) : undefined;
}

async function fetchDebs(cache: string, refresh: boolean, wantSeabios: boolean): Promise<{ kernel: string; busybox: string; seabios?: string }> {
  const debs = join(cache, 'debs');
  await mkdir(debs, { recursive: true });
  const have = async (): Promise<{ kernel?: string; busybox?: string; seabios?: string }> => ({
    kernel: await findDeb(debs, 'linux-image-6.1.'),
    busybox: await findDeb(debs, 'busybox-static_'),
    seabios: await findDeb(debs, 'seabios_'),
  });
  let found = await have();
  if (!refresh && found.kernel && found.busybox && (!wantSeabios || found.seabios)) {
    log(`using cached packages in ${debs} (--refresh to fetch again)`);
    return { kernel: found.kernel, busybox: found.busybox, ...(found.seabios ? { seabios: found.seabios } : {}) };
  }
  const opts = await aptOptions(join(cache, 'apt'));
  const start = Date.now();
  log('apt-get update (private state, i386)');
  await aptUpdate(opts);
  const kernelPkg = await resolveKernelPackage(opts);
  const pkgs = [kernelPkg, 'busybox-static', ...(wantSeabios ? ['seabios'] : [])];
  log(`apt-get download ${pkgs.join(' ')}`);
  for (const old of await readdir(debs)) if (old.endsWith('.deb')) await rm(join(debs, old));
  await sh('apt-get', [...opts, '-q', 'download', ...pkgs], { cwd: debs });
  found = await have();
  if (!found.kernel || !found.busybox || (wantSeabios && !found.seabios)) throw new BuildError(`apt-get download did not produce all of ${pkgs.join(', ')} in ${debs}`);
  log(`downloaded in ${((Date.now() - start) / 1000).toFixed(1)} s`);
  return { kernel: found.kernel, busybox: found.busybox, ...(found.seabios ? { seabios: found.seabios } : {}) };
}

async function debField(deb: string, field: string): Promise<string> {
  return (await sh('dpkg-deb', ['-f', deb, field])).stdout.trim();
}

/** Compiles the dirtier: static against i386 libc, else freestanding. */
async function buildDirtier(work: string): Promise<{ binary: Buffer; build: 'libc' | 'freestanding' }> {
  const src = join(guestDir, 'dirtier.c');
  const out = join(work, 'dirtier');
  const common = ['-m32', '-static', '-O2', '-Wall', '-Wextra', '-s', '-o', out, src];
  try {
    await sh('gcc', common);
    return { binary: await readFile(out), build: 'libc' };
  } catch (e) {
    if (!(e instanceof BuildError) || /gcc not found/.test(e.message)) throw e;
    log(`static i386 libc build failed (install gcc-multilib for it); building freestanding:\n    ${e.message.split('\n').slice(-3).join('\n    ')}`);
  }
  await sh('gcc', ['-nostdlib', '-ffreestanding', '-fno-pic', '-no-pie', '-fno-stack-protector', '-DDIRTIER_FREESTANDING', ...common]);
  return { binary: await readFile(out), build: 'freestanding' };
}

/** Compiles the disk checker, static against i386 libc; undefined (with a message) if that cannot be done. */
async function buildDiskcheck(work: string): Promise<Buffer | undefined> {
  const out = join(work, 'diskcheck');
  try {
    await sh('gcc', ['-m32', '-static', '-O2', '-Wall', '-Wextra', '-s', '-o', out, join(guestDir, 'diskcheck.c')]);
    return await readFile(out);
  } catch (e) {
    if (!(e instanceof BuildError)) throw e;
    log(`no disk guest: guests/linux/diskcheck.c needs a static i386 libc (install gcc-multilib):\n    ${e.message.split('\n').slice(-3).join('\n    ')}`);
    return undefined;
  }
}

/**
 * disk.ext2: an empty ext2 file system of LINUX_DISK_SIZE_BYTES with a
 * README. Reproducible: fixed UUID, hash seed and times (E2FSPROGS_FAKE_TIME,
 * the README's). False (with a message) without mke2fs.
 */
async function buildDisk(work: string, out: string): Promise<boolean> {
  const FIXED_TIME_S = 1700000000; // 2023-11-14: any fixed instant
  const UUID = '6c6d6967-6469-736b-8000-000000000001';
  const content = join(work, 'disk-root');
  await mkdir(content, { recursive: true });
  const readme = join(content, 'README');
  await writeFile(readme, 'livemig Linux guest disk: /init mounts it on /mnt/disk; diskcheck writes and verifies files in diskcheck/.\n');
  await utimes(readme, FIXED_TIME_S, FIXED_TIME_S);
  await utimes(content, FIXED_TIME_S, FIXED_TIME_S);
  await rm(out, { force: true });
  try {
    await run('mke2fs', ['-q', '-F', '-t', 'ext2', '-b', '4096', '-L', 'livemig', '-U', UUID, '-E', `hash_seed=${UUID},root_owner=0:0`, '-d', content, out, `${LINUX_DISK_SIZE_BYTES / 1024}k`], {
      env: { ...process.env, E2FSPROGS_FAKE_TIME: String(FIXED_TIME_S) },
    });
    // mke2fs -d copies the README's ctime, which utimes() cannot set: fix it here.
    await run('debugfs', ['-w', '-R', `set_inode_field /README ctime @${FIXED_TIME_S}`, out], { env: { ...process.env, E2FSPROGS_FAKE_TIME: String(FIXED_TIME_S) } });
    return true;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') {
      log('no disk guest: mke2fs or debugfs not found (install e2fsprogs)');
      return false;
    }
    throw new BuildError(`mke2fs/debugfs failed making ${out}:\n${(err.stderr ?? err.message).trim()}`);
  }
}

/** Busybox applet paths ("bin/sh", "sbin/ifconfig"...), or [] if the i386 binary cannot run here. */
async function busyboxApplets(busybox: string): Promise<string[]> {
  try {
    const { stdout } = await sh(busybox, ['--list-full']);
    return stdout.split('\n').map((l) => l.trim()).filter((l) => /^[\w./+-]+$/.test(l) && !l.includes('..'));
  } catch (e) {
    log(`cannot run the i386 busybox here (${(e as Error).message.split('\n')[0]}); /init will run busybox --install at boot`);
    return [];
  }
}

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const refresh = argv.includes('--refresh');
  const outIdx = argv.indexOf('--out');
  const outDir = outIdx >= 0 && argv[outIdx + 1] ? resolve(argv[outIdx + 1]!) : join(repoRoot, 'images', 'linux');
  const cache = join(repoRoot, 'images', '.cache');

  const systemSeabios = (await exists(join(SEABIOS_DIR, 'bios.bin'))) && (await exists(join(SEABIOS_DIR, 'vgabios-stdvga.bin')));
  const debs = await fetchDebs(cache, refresh, !systemSeabios);

  const work = await mkdtemp(join(tmpdir(), 'livemig-images-'));
  try {
    log('extracting packages');
    const kroot = join(work, 'kernel');
    const broot = join(work, 'busybox');
    // Only boot/ and the disk modules of the kernel package (all its modules are ~300 MB unpacked).
    await mkdir(kroot, { recursive: true });
    const modulePatterns = [...DISK_MODULES, ...EXT2_MODULES].map((m) => `./lib/modules/*/kernel/${m}`);
    await sh('sh', ['-c', 'f="$1"; d="$2"; shift 2; dpkg-deb --fsys-tarfile "$f" | tar -x -C "$d" --wildcards "./boot/vmlinuz-*" "$@"', 'sh', debs.kernel, kroot, ...modulePatterns]);
    await sh('dpkg-deb', ['-x', debs.busybox, broot]);
    const vmlinuzName = (await readdir(join(kroot, 'boot'))).find((n) => n.startsWith('vmlinuz-'));
    if (!vmlinuzName) throw new BuildError(`no boot/vmlinuz-* in ${debs.kernel}`);
    const kernel = await readFile(join(kroot, 'boot', vmlinuzName));
    const moduleDir = join(kroot, 'lib', 'modules', vmlinuzName.slice('vmlinuz-'.length), 'kernel');
    const readModules = async (list: string[], dir: string): Promise<CpioEntry[]> => {
      const out: CpioEntry[] = [];
      for (const [i, m] of list.entries()) {
        const data = await readFile(join(moduleDir, m)).catch(() => {
          throw new BuildError(`no ${m} for ${vmlinuzName} in ${debs.kernel}`);
        });
        // Numbered: /init loads them in this order.
        out.push({ type: 'file', path: `lib/modules/${dir}/${String(i).padStart(2, '0')}-${m.split('/').pop()}`, data, mode: 0o644 });
      }
      return out;
    };
    const modules = await readModules(DISK_MODULES, 'disk');
    const busyboxPath = join(broot, 'bin', 'busybox');
    const busybox = await readFile(busyboxPath).catch(() => {
      throw new BuildError(`no bin/busybox in ${debs.busybox}`);
    });

    log('compiling guests/linux/dirtier.c');
    const dirtier = await buildDirtier(work);
    log(`dirtier: ${dirtier.build} build, ${dirtier.binary.length} bytes`);

    log('compiling guests/linux/diskcheck.c');
    const diskcheck = await buildDiskcheck(work);
    const ext2Modules = diskcheck ? await readModules(EXT2_MODULES, 'ext2') : [];
    if (diskcheck) log(`diskcheck: ${diskcheck.length} bytes`);

    const applets = await busyboxApplets(busyboxPath);
    const init = await readFile(join(guestDir, 'init'));
    const own = new Set(['init', 'bin/busybox', 'bin/dirtier', 'bin/diskcheck']);
    const entries: CpioEntry[] = [
      { type: 'directory', path: 'dev' },
      { type: 'char', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
      { type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
      { type: 'char', path: 'dev/ttyS0', major: 4, minor: 64, mode: 0o600 },
      ...['proc', 'sys', 'root', 'etc', 'sbin', 'usr/bin', 'usr/sbin', 'lib', 'lib/modules', 'lib/modules/disk'].map((path): CpioEntry => ({ type: 'directory', path })),
      { type: 'directory', path: 'tmp', mode: 0o1777 },
      { type: 'file', path: 'init', data: init, mode: 0o755 },
      { type: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 },
      { type: 'file', path: 'bin/dirtier', data: dirtier.binary, mode: 0o755 },
      ...(diskcheck
        ? [
            { type: 'file', path: 'bin/diskcheck', data: diskcheck, mode: 0o755 } as CpioEntry,
            { type: 'directory', path: 'lib/modules/ext2' } as CpioEntry,
            ...ext2Modules,
          ]
        : []),
      { type: 'file', path: 'etc/passwd', data: Buffer.from('root:x:0:0:root:/root:/bin/sh\n'), mode: 0o644 },
      { type: 'file', path: 'etc/group', data: Buffer.from('root:x:0:\n'), mode: 0o644 },
      ...modules,
      ...applets.filter((p) => !own.has(p)).map((path): CpioEntry => ({ type: 'symlink', path, target: '/bin/busybox' })),
    ];
    log(`packing initramfs: ${entries.length} entries (${applets.length} busybox applet links)`);
    const initramfs = writeInitramfs(entries);

    let biosDir = SEABIOS_DIR;
    if (!systemSeabios) {
      const sroot = join(work, 'seabios');
      await sh('dpkg-deb', ['-x', debs.seabios!, sroot]);
      biosDir = join(sroot, 'usr', 'share', 'seabios');
      log(`no SeaBIOS in ${SEABIOS_DIR}: using Debian's seabios package (${debs.seabios})`);
    }

    await mkdir(outDir, { recursive: true });
    await rm(join(outDir, LINUX_IMAGE_FILES.manifest), { force: true });
    await writeFile(join(outDir, LINUX_IMAGE_FILES.kernel), kernel);
    await writeFile(join(outDir, LINUX_IMAGE_FILES.initramfs), initramfs);
    await copyFile(join(biosDir, 'bios.bin'), join(outDir, LINUX_IMAGE_FILES.bios));
    await copyFile(join(biosDir, 'vgabios-stdvga.bin'), join(outDir, LINUX_IMAGE_FILES.vgaBios));
    let disk = false;
    if (diskcheck) {
      log(`making ${LINUX_DISK_FILE} (ext2, ${LINUX_DISK_SIZE_BYTES >> 20} MiB)`);
      disk = await buildDisk(work, join(outDir, LINUX_DISK_FILE));
    }
    // A disk image of an earlier build must not outlive a build that could not make one.
    if (!disk) await rm(join(outDir, LINUX_DISK_FILE), { force: true });

    const files: LinuxImageManifest['files'] = {};
    for (const f of [LINUX_IMAGE_FILES.kernel, LINUX_IMAGE_FILES.initramfs, LINUX_IMAGE_FILES.bios, LINUX_IMAGE_FILES.vgaBios, ...(disk ? [LINUX_DISK_FILE] : [])]) {
      const b = await readFile(join(outDir, f));
      files[f] = { bytes: b.length, sha256: sha256(b) };
    }
    const manifest: LinuxImageManifest = {
      kernelPackage: `${await debField(debs.kernel, 'Package')} ${await debField(debs.kernel, 'Version')}`,
      kernelVersion: vmlinuzName.slice('vmlinuz-'.length),
      busyboxVersion: await debField(debs.busybox, 'Version'),
      dirtierBuild: dirtier.build,
      cmdline: linuxCmdline(),
      ...(disk ? { disk: { file: LINUX_DISK_FILE, sizeBytes: LINUX_DISK_SIZE_BYTES, fileSystem: 'ext2' as const, modules: EXT2_MODULES } } : {}),
      files,
    };
    await writeFile(join(outDir, LINUX_IMAGE_FILES.manifest), JSON.stringify(manifest, null, 2) + '\n');

    log(`done: ${outDir}`);
    for (const [f, { bytes }] of Object.entries(files)) console.log(`  ${f.padEnd(20)} ${(bytes / 1048576).toFixed(2).padStart(6)} MiB`);
    console.log(`  kernel ${manifest.kernelPackage}, busybox ${manifest.busyboxVersion}`);
    console.log(`  cmdline: ${manifest.cmdline}`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(`npm run images: ${e instanceof BuildError ? e.message : (e as Error).stack ?? String(e)}`);
  process.exitCode = 1;
});
