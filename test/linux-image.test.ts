/**
 * The Linux guest built by `npm run images` boots in v86: the dirtier's
 * self-check prints ok, and a command typed on the serial console is
 * answered. Skipped with a message when the image has not been built.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { readCpio, S_IFLNK, S_IFMT } from '../src/images/cpio.js';
import { repoRoot } from './helpers/paths.js';
import { defaultLinuxImageDir, linuxCmdline, linuxImageExists, loadLinuxImage } from '../src/images/linux-image.js';

const BOOT_TIMEOUT_MS = 150_000; // 15–25 s here; generous for a loaded 2-core machine
const ANSWER_TIMEOUT_MS = 30_000;

const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;

test('Linux image: the initramfs holds /init, busybox and its links, the dirtier', async (t) => {
  if (!(await linuxImageExists())) {
    t.skip(`no Linux guest image in ${defaultLinuxImageDir}: run \`npm run images\``);
    return;
  }
  const image = await loadLinuxImage();
  const records = new Map(readCpio(gunzipSync(image.initramfs)).map((r) => [r.path, r]));
  for (const p of ['init', 'bin/busybox', 'bin/dirtier', 'dev/console']) assert.ok(records.has(p), p);
  assert.equal(records.get('init')!.mode & 0o777, 0o755);
  assert.equal(records.get('bin/dirtier')!.data.subarray(0, 4).toString('latin1'), '\x7fELF');
  assert.equal(records.get('bin/dirtier')!.data[4], 1, 'the dirtier is a 32-bit ELF');
  const sh = records.get('bin/sh');
  if (sh) assert.equal(sh.mode & S_IFMT, S_IFLNK);
  assert.equal(image.kernel.toString('latin1', 0x202, 0x206), 'HdrS', 'vmlinuz is a bzImage');
});

test('Linux image boots in v86: dirtier self-check ok, serial console answers', { timeout: BOOT_TIMEOUT_MS + ANSWER_TIMEOUT_MS + 30_000 }, async (t) => {
  if (!(await linuxImageExists())) {
    t.skip(`no Linux guest image in ${defaultLinuxImageDir}: run \`npm run images\``);
    return;
  }
  let V86: typeof import('v86').V86;
  try {
    ({ V86 } = await import('v86'));
  } catch {
    t.skip('v86 is not installed: run `npm ci`');
    return;
  }
  const image = await loadLinuxImage();
  const wasmPath = join(dirname(fileURLToPath(import.meta.resolve('v86'))), 'v86.wasm');
  const cmdline = linuxCmdline({ dirtierMiB: 16, verifyEvery: 4 });
  const started = Date.now();
  const emulator = new V86({
    wasm_path: wasmPath,
    memory_size: 128 << 20,
    vga_memory_size: 2 << 20,
    bios: { buffer: toArrayBuffer(image.bios) },
    vga_bios: { buffer: toArrayBuffer(image.vgaBios) },
    bzimage: { buffer: toArrayBuffer(image.kernel) },
    initrd: { buffer: toArrayBuffer(image.initramfs) },
    cmdline,
    hda: { buffer: new ArrayBuffer(1 << 20) },
    disable_speaker: true,
    autostart: true,
  });
  let output = '';
  const waiters = new Set<() => void>();
  emulator.add_listener('serial0-output-byte', (byte: number) => {
    output += String.fromCharCode(byte);
    for (const w of waiters) w();
  });
  /** Resolves with the match once `pattern` appears in the output (from `from` on). */
  const waitFor = (pattern: RegExp, timeoutMs: number, what: string, from = 0, filter = (s: string) => s): Promise<RegExpExecArray> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const m = pattern.exec(filter(output.slice(from)));
        if (m) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(m);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}; serial output so far:\n${output.slice(-3000)}`));
      }, timeoutMs);
      waiters.add(check);
      check();
    });
  try {
    const ok = await waitFor(/dirtier: pass (\d+) ok/, BOOT_TIMEOUT_MS, 'the first "dirtier: pass N ok"');
    t.diagnostic(`first self-check ok (pass ${ok[1]}) after ${((Date.now() - started) / 1000).toFixed(1)} s`);
    assert.doesNotMatch(output, /CORRUPT/);
    await waitFor(/# /, BOOT_TIMEOUT_MS, 'the shell prompt on the serial console');

    const mark = output.length;
    emulator.serial0_send('echo -n te; echo st\n');
    // Dirtier lines can land between the shell's writes: take them out first.
    await waitFor(/(^|\n)\r?test\r?\n/, ANSWER_TIMEOUT_MS, 'the shell to answer `echo -n te; echo st` with "test"', mark, (s) => s.replace(/dirtier: [^\n]*\n/g, ''));
    t.diagnostic(`serial console answered after ${((Date.now() - started) / 1000).toFixed(1)} s`);

    // The self-check keeps passing.
    const after = output.length;
    await waitFor(/dirtier: pass \d+ ok/, ANSWER_TIMEOUT_MS, 'another self-check', after);
    assert.doesNotMatch(output, /CORRUPT/);
  } finally {
    await emulator.destroy();
  }
});

/** Runs an i386 dirtier on this (x86) host for a moment; undefined if it cannot run here. */
async function runDirtier(binary: string, args: string[]): Promise<string | undefined> {
  return new Promise((resolve) => {
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (/pass 8 /.test(out)) child.kill();
    });
    const timer = setTimeout(() => child.kill(), 20_000);
    child.on('error', () => resolve(undefined));
    child.on('exit', () => {
      clearTimeout(timer);
      resolve(out);
    });
  });
}

/** The dirtier's self-check catches a flipped word (INJECT_PASS 4, verify every 2) and recovers. */
function assertCatchesInjectedCorruption(out: string): void {
  assert.match(out, /^dirtier: 1 MiB, 256 pages, verify every 2 passes/m);
  assert.match(out, /^dirtier: pass 2 ok$/m);
  assert.match(out, /^dirtier: CORRUPT page 4 word 7 expected 0x[0-9a-f]{8} got 0x[0-9a-f]{8}$/m);
  assert.match(out, /^dirtier: pass 4 CORRUPT 1 pages$/m);
  assert.doesNotMatch(out, /^dirtier: pass 4 ok$/m);
  assert.match(out, /^dirtier: pass 6 ok$/m);
}

test('the dirtier in the image detects a corrupted page (run on this host)', async (t) => {
  if (!(await linuxImageExists())) {
    t.skip(`no Linux guest image in ${defaultLinuxImageDir}: run \`npm run images\``);
    return;
  }
  if (process.arch !== 'x64' && process.arch !== 'ia32') {
    t.skip(`an i386 binary cannot run on ${process.arch}`);
    return;
  }
  const image = await loadLinuxImage();
  const dirtier = readCpio(gunzipSync(image.initramfs)).find((r) => r.path === 'bin/dirtier')!;
  const dir = await mkdtemp(join(tmpdir(), 'livemig-dirtier-'));
  try {
    const bin = join(dir, 'dirtier');
    await writeFile(bin, dirtier.data, { mode: 0o755 });
    const out = await runDirtier(bin, ['1', '2', '0', '4']);
    if (out === undefined || out === '') {
      t.skip('this kernel cannot run i386 binaries (no IA32 emulation)');
      return;
    }
    assertCatchesInjectedCorruption(out);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('dirtier.c also builds freestanding (no i386 libc) and behaves the same', async (t) => {
  if (process.arch !== 'x64' && process.arch !== 'ia32') {
    t.skip(`an i386 binary cannot run on ${process.arch}`);
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'livemig-dirtier-'));
  try {
    const bin = join(dir, 'dirtier');
    const flags = ['-m32', '-static', '-O2', '-Wall', '-Wextra', '-Werror', '-nostdlib', '-ffreestanding', '-fno-pic', '-no-pie', '-fno-stack-protector', '-DDIRTIER_FREESTANDING'];
    const built = await new Promise<string | undefined>((resolve) =>
      execFile('gcc', [...flags, '-o', bin, join(repoRoot, 'guests', 'linux', 'dirtier.c')], (err, _o, stderr) => resolve(err ? `${err.message}\n${stderr}` : undefined)),
    );
    if (built !== undefined) {
      if (/ENOENT|not found/.test(built)) {
        t.skip('no gcc on this machine');
        return;
      }
      assert.fail(`freestanding build failed:\n${built}`);
    }
    const out = await runDirtier(bin, ['1', '2', '0', '4']);
    if (out === undefined || out === '') {
      t.skip('this kernel cannot run i386 binaries (no IA32 emulation)');
      return;
    }
    assertCatchesInjectedCorruption(out);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
