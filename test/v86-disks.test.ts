/**
 * v86 with the user's own media: the disk buffer over a BlockDevice (writes
 * land in place and mark exactly their chunks dirty; v86's saved state stays
 * small), and `livemig run --machine v86 --hda ...` processes migrating over
 * real sockets: a Linux guest writing its disk during a live migration, a
 * shared disk (nothing copied), every slot at once, and destinations whose
 * media differ, refused before any data moves while the source runs on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { CHUNK_SIZE, type BlockDevice } from '../src/block/block-device.js';
import { FileBlockDevice } from '../src/block/file-block-device.js';
import { INCOMING_SUFFIX } from '../src/block/incoming-image.js';
import { MemoryBlockDevice } from '../src/block/memory-block-device.js';
import { linuxImageExists } from '../src/images/linux-image.js';
import { V86DiskBuffer } from '../src/machine/v86-disk.js';
import { createV86Machine, type V86Machine } from '../src/machine/v86-machine.js';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { cliPath } from './helpers/paths.js';

const MiB = 1024 * 1024;
type Event = { event: string } & Record<string, any>;

function startRun(args: string[]) {
  const child = spawn(process.execPath, [cliPath, 'run', '--json', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const events: Event[] = [];
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  createInterface({ input: child.stdout }).on('line', (line) => events.push(JSON.parse(line)));
  const serial = (from = 0): string => events.slice(from).filter((e) => e.event === 'serial').map((e) => e.text).join('');
  const until = async (test: () => boolean, what: string, timeoutMs = 180_000): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!test()) {
      if (child.exitCode !== null) throw new Error(`livemig exited (${child.exitCode}) before ${what}: ${stderr}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; serial so far: ${serial().slice(-500)}; stderr: ${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const event = async (name: string, timeoutMs = 60_000): Promise<Event> => {
    await until(() => events.some((e) => e.event === name), `the '${name}' event`, timeoutMs);
    return events.find((e) => e.event === name)!;
  };
  return { child, events, serial, until, event, stderr: () => stderr };
}
type Run = ReturnType<typeof startRun>;

async function waitMigration(src: QmpClient, timeoutMs = 300_000): Promise<Record<string, any>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = (await src.execute('query-migrate')) as Record<string, any>;
    if (['completed', 'failed', 'cancelled'].includes(info.status)) return info;
    if (Date.now() > deadline) throw new Error(`migration still ${info.status} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const sha = async (path: string): Promise<string> => createHash('sha256').update(await readFile(path)).digest('hex');

async function randomImage(path: string, sizeBytes: number): Promise<void> {
  await writeFile(path, randomBytes(sizeBytes));
}

async function stopAll(...runs: Array<Run | undefined>): Promise<void> {
  for (const r of runs) {
    if (!r || r.child.exitCode !== null) continue;
    r.child.kill('SIGTERM');
    await new Promise((resolve) => r.child.once('exit', resolve));
  }
}

// ---- The disk buffer ----

test('the v86 disk buffer: writes land in place and mark exactly the chunks they touch', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-v86disk-'));
  try {
    const memory = new MemoryBlockDevice('hda', { sizeBytes: 8 * MiB });
    const file = await FileBlockDevice.open('hda', join(dir, 'hda.img'), { create: true, size: 8 * MiB });
    for (const device of [memory, file]) {
      const buffer = new V86DiskBuffer(device);
      assert.equal(buffer.byteLength, 8 * MiB);
      let loaded = false;
      buffer.onload = () => (loaded = true);
      buffer.load();
      assert.ok(loaded, 'load() reports the medium ready');
      const data = randomBytes(4096);
      let done = 0;
      buffer.set(3 * CHUNK_SIZE + 512, data, () => done++); // inside chunk 3
      buffer.set(5 * CHUNK_SIZE - 1024, data, () => done++); // across chunks 4 and 5
      assert.equal(done, 2, 'a synchronous backend completes the write before set returns');
      assert.deepEqual([...Array(8).keys()].filter((c) => device.dirty.test(c)), [3, 4, 5]);
      let read: Uint8Array | undefined;
      buffer.get(5 * CHUNK_SIZE - 1024, 4096, (d) => (read = d));
      assert.ok(read && Buffer.from(read).equals(data), 'get reads the write back at once');
      assert.ok(Buffer.from(buffer.get_from_cache(3 * CHUNK_SIZE + 512, 4096)!).equals(data));
      const onDisk = await device.readSectors((3 * CHUNK_SIZE + 512) / 512, 8);
      assert.ok(Buffer.from(onDisk).equals(data), 'the data is in the device');
      // The saved state is the size, not the contents.
      assert.deepEqual(buffer.get_state(), [8 * MiB]);
      assert.throws(() => buffer.set_state([4 * MiB]), /saved state is for a 4194304-byte medium, this one has 8388608 bytes/);
      assert.throws(() => buffer.get(8 * MiB - 512, 1024, () => {}), /outside/);
    }
    await file.close();
    assert.equal((await readFile(join(dir, 'hda.img'))).subarray(3 * CHUNK_SIZE + 512, 3 * CHUNK_SIZE + 512 + 16).length, 16);

    // A backend without synchronous I/O: operations run in order, a read sees every earlier write.
    // (own properties hiding the synchronous methods, as a backend without them)
    const slow = Object.assign(new MemoryBlockDevice('hdb', { sizeBytes: 2 * MiB }), { readSync: undefined, writeSync: undefined }) as unknown as BlockDevice;
    const buffer = new V86DiskBuffer(slow);
    const order: string[] = [];
    buffer.set(1000, Uint8Array.of(1, 2, 3), () => order.push('write')); // unaligned: read-modify-write of a sector
    let got: Uint8Array | undefined;
    buffer.get(999, 5, (d) => {
      order.push('read');
      got = d;
    });
    assert.equal(buffer.get_from_cache(0, 512), undefined, 'no synchronous MBR read: v86 guesses the geometry from the size');
    await buffer.settled();
    assert.deepEqual(order, ['write', 'read']);
    assert.deepEqual([...got!], [0, 1, 2, 3, 0]);
    assert.ok(slow.dirty.test(0) && slow.dirty.count === 1);

    // A read-only medium (a CD-ROM) ignores writes.
    const cd = new MemoryBlockDevice('cdrom', { sizeBytes: MiB, readOnly: true });
    let acknowledged = false;
    new V86DiskBuffer(cd).set(0, Uint8Array.of(9), () => (acknowledged = true));
    assert.ok(acknowledged);
    assert.equal(cd.bytes[0], 0);
    assert.equal(cd.dirty.count, 0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a v86 machine with media: blockDevices are the writable ones by slot, v86-state stays small, bad media are refused', { timeout: 120_000 }, async () => {
  const hda = new MemoryBlockDevice('hda', { sizeBytes: 64 * MiB });
  const fda = new MemoryBlockDevice('fda', { sizeBytes: 1474560 });
  const cdrom = new MemoryBlockDevice('cdrom', { sizeBytes: 4 * MiB, readOnly: true });
  const machine = await createV86Machine({ ramSizeBytes: 32 * MiB, hda, fda, cdrom, startPaused: true });
  const stub = await createV86Machine({ ramSizeBytes: 32 * MiB, startPaused: true });
  try {
    assert.deepEqual(machine.blockDevices().map((d) => d.name), ['hda', 'fda']);
    assert.deepEqual(machine.mediaInfo(), [
      { slot: 'hda', sizeBytes: 64 * MiB, mode: 'copied' },
      { slot: 'fda', sizeBytes: 1474560, mode: 'copied' },
      { slot: 'cdrom', sizeBytes: 4 * MiB, mode: 'read-only' },
    ]);
    assert.equal(machine.diskSizeBytes, 0);
    const withMedia = machine.saveDeviceState().length;
    const without = stub.saveDeviceState().length; // holds its 64 KiB stub disk
    assert.ok(withMedia < without, `device state with a 64 MiB disk: ${withMedia} bytes, with the 64 KiB stub: ${without}`);
    assert.equal(stub.blockDevices().length, 0);
  } finally {
    await machine.destroy();
    await stub.destroy();
  }
  const shared = await createV86Machine({ ramSizeBytes: 32 * MiB, hda: new MemoryBlockDevice('hda', { sizeBytes: MiB }), sharedDisks: true, startPaused: true });
  try {
    assert.deepEqual(shared.blockDevices(), [], 'shared disks are not copied');
    assert.equal(shared.mediaInfo()[0]!.mode, 'shared');
  } finally {
    await shared.destroy();
  }
  // A read-only floppy: not copied, and write-protected as the guest sees it (the FDC's SENSE DRIVE STATUS, ST3 bit 6).
  const senseWriteProtect = (m: V86Machine): boolean => {
    const io = (m as unknown as { cpu: { io: { port_write8(port: number, value: number): void; port_read8(port: number): number } } }).cpu.io;
    io.port_write8(0x3f5, 0x04); // SENSE DRIVE STATUS
    io.port_write8(0x3f5, 0x00); // drive 0, head 0
    return (io.port_read8(0x3f5) & 0x40) !== 0;
  };
  const floppyOf = (readOnly: boolean): MemoryBlockDevice => new MemoryBlockDevice('fda', { sizeBytes: 1474560, readOnly });
  for (const readOnly of [true, false]) {
    const m = await createV86Machine({ ramSizeBytes: 32 * MiB, fda: floppyOf(readOnly), startPaused: true });
    try {
      assert.equal(senseWriteProtect(m), readOnly, `a ${readOnly ? 'read-only' : 'writable'} floppy is ${readOnly ? '' : 'not '}write-protected`);
      assert.deepEqual(m.blockDevices().map((d) => d.name), readOnly ? [] : ['fda']);
    } finally {
      await m.destroy();
    }
  }
  // A read-only hard disk would acknowledge and lose the guest's writes: refused.
  for (const slot of ['hda', 'hdb'] as const) {
    const disks = { hda: new MemoryBlockDevice('hda', { sizeBytes: MiB, readOnly: slot === 'hda' }), ...(slot === 'hdb' ? { hdb: new MemoryBlockDevice('hdb', { sizeBytes: MiB, readOnly: true }) } : {}) };
    await assert.rejects(createV86Machine({ ramSizeBytes: 32 * MiB, ...disks }), new RegExp(`--${slot}: a read-only medium cannot be a hard disk`));
  }
  await assert.rejects(createV86Machine({ ramSizeBytes: 32 * MiB, fda: new MemoryBlockDevice('fda', { sizeBytes: MiB }) }), /--fda: 1048576 bytes is no floppy size v86 knows/);
  await assert.rejects(createV86Machine({ ramSizeBytes: 32 * MiB, hda: new MemoryBlockDevice('disk0', { sizeBytes: MiB }) }), /block device is named 'disk0'; name it 'hda'/);
  await assert.rejects(createV86Machine({ ramSizeBytes: 32 * MiB, hdb: new MemoryBlockDevice('hdb', { sizeBytes: MiB }) }), /--hdb needs --hda/);
  await assert.rejects(createV86Machine({ ramSizeBytes: 32 * MiB, hda: { path: '/nonexistent/livemig.img' } }), /--hda \/nonexistent\/livemig.img: no such file/);
});

// ---- Between two processes ----

test('v86 multiboot with hda, hdb, fda and a CD-ROM: the disks are copied, the CD-ROM is not, the images match', { timeout: 200_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-v86media-'));
  let source: Run | undefined;
  let destination: Run | undefined;
  try {
    const sizes = { hda: 8 * MiB, hdb: 2 * MiB, fda: 1474560 };
    for (const [slot, size] of Object.entries(sizes)) {
      await randomImage(join(dir, `src-${slot}.img`), size);
      await truncate(join(dir, `dst-${slot}.img`), size).catch(async () => writeFile(join(dir, `dst-${slot}.img`), Buffer.alloc(size)));
    }
    await randomImage(join(dir, 'cd.iso'), 4 * MiB);
    const media = (side: string): string[] => [...Object.keys(sizes).flatMap((slot) => [`--${slot}`, join(dir, `${side}-${slot}.img`)]), '--cdrom', join(dir, 'cd.iso')];
    source = startRun(['--machine', 'v86', '--ram', '32M', ...media('src'), '--qmp', `unix:${join(dir, 'src.qmp')}`]);
    destination = startRun(['--machine', 'v86', '--ram', '32M', ...media('dst'), '-S', '--incoming', `unix:${join(dir, 'mig.sock')}`]);
    await source.event('qmp');
    await destination.event('listening');
    const src = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 5000 });
    const cdBefore = await sha(join(dir, 'cd.iso'));
    await src.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}`, blk: true });
    const info = await waitMigration(src);
    assert.equal(info.status, 'completed', info['error-desc']);
    const diskBytes = sizes.hda + sizes.hdb + sizes.fda;
    assert.equal(info.disk.total, diskBytes, 'hda + hdb + fda copied, not the CD-ROM');
    await destination.event('resumed');
    for (const slot of Object.keys(sizes)) {
      assert.equal(await sha(join(dir, `dst-${slot}.img`)), await sha(join(dir, `src-${slot}.img`)), `${slot} identical`);
      assert.ok(!existsSync(join(dir, `dst-${slot}.img${INCOMING_SUFFIX}`)));
    }
    assert.equal(await sha(join(dir, 'cd.iso')), cdBefore);
    await src.close();
  } finally {
    await stopAll(source, destination);
    await rm(dir, { recursive: true, force: true });
  }
});

test('--disk-shared: both sides open the same image, nothing is copied, the destination runs from it', { timeout: 200_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-v86shared-'));
  let source: Run | undefined;
  let destination: Run | undefined;
  try {
    const image = join(dir, 'shared.img');
    await randomImage(image, 64 * MiB);
    const before = await sha(image);
    source = startRun(['--machine', 'v86', '--ram', '32M', '--hda', image, '--disk-shared', '--qmp', `unix:${join(dir, 'src.qmp')}`]);
    destination = startRun(['--machine', 'v86', '--ram', '32M', '--hda', image, '--disk-shared', '--incoming', `unix:${join(dir, 'mig.sock')}`]);
    await source.event('qmp');
    await destination.event('listening');
    const src = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 5000 });
    await src.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}`, blk: true });
    const info = await waitMigration(src);
    assert.equal(info.status, 'completed', info['error-desc']);
    assert.equal(info.disk, undefined, 'no disk section');
    const resumed = await destination.event('resumed');
    const beyondRam = resumed.bytes - info.ram.transferred;
    assert.ok(beyondRam >= 0 && beyondRam < 4 * MiB, `the destination received ${resumed.bytes} bytes, ${beyondRam} beyond RAM's: the 64 MiB disk did not travel`);
    assert.ok(!existsSync(image + INCOMING_SUFFIX), 'no incoming image on a shared disk');
    assert.equal(await sha(image), before, 'the shared image is untouched');
    await src.close();
  } finally {
    await stopAll(source, destination);
    await rm(dir, { recursive: true, force: true });
  }
});

interface Refusal {
  name: string;
  source: (dir: string) => string[];
  destination: (dir: string) => string[];
  blk: boolean;
  error: RegExp;
  /** When the destination finds out (default: in setup, before any data). */
  late?: boolean;
}

const refusals: Refusal[] = [
  {
    name: 'a destination hda of another size',
    source: (d) => ['--hda', join(d, 'src.img')],
    destination: (d) => ['--hda', join(d, 'small.img')],
    blk: true,
    error: /disk 'hda': the source's is 8 MiB, this destination's is 4 MiB/,
  },
  {
    name: 'a destination without hda',
    source: (d) => ['--hda', join(d, 'src.img')],
    destination: () => [],
    blk: true,
    error: /the source migrates disk 'hda' \(8 MiB\) but this destination has no disk of that name; give it one with --hda PATH/,
  },
  {
    name: 'a destination CD-ROM of another size',
    source: (d) => ['--hda', join(d, 'src.img'), '--cdrom', join(d, 'cd.iso')],
    destination: (d) => ['--hda', join(d, 'dst.img'), '--cdrom', join(d, 'small.img')],
    blk: true,
    error: /v86 media: cdrom: the source's is 2 MiB, this destination's is 4 MiB/,
  },
  {
    name: 'a destination without the CD-ROM',
    source: (d) => ['--cdrom', join(d, 'cd.iso')],
    destination: () => [],
    blk: false,
    error: /v86 media: the source has cdrom \(2 MiB, read-only\), this destination has no cdrom; give it one with --cdrom PATH/,
  },
  {
    name: 'a source without media, to a destination with a CD-ROM',
    source: () => [],
    destination: (d) => ['--cdrom', join(d, 'cd.iso')],
    blk: false,
    error: /v86 media: this destination has cdrom \(2 MiB, read-only\), the source has no cdrom/,
  },
  {
    name: 'a shared disk on one side only',
    source: (d) => ['--hda', join(d, 'src.img'), '--disk-shared'],
    destination: (d) => ['--hda', join(d, 'dst.img')],
    blk: true,
    error: /v86 media: hda \(8 MiB\) is shared on the source, copied on this destination \(give --disk-shared on both sides or on neither\)/,
  },
  {
    name: 'a migration without blk to a destination waiting for hda',
    source: (d) => ['--hda', join(d, 'src.img')],
    destination: (d) => ['--hda', join(d, 'dst.img')],
    blk: false,
    error: /disk 'hda' was to be received, but the source did not migrate it/,
    late: true,
  },
];

for (const r of refusals) {
  test(`${r.name} is refused ${r.late ? 'before the destination image is replaced' : 'before any data moves'}; the source runs on`, { timeout: 120_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livemig-v86refuse-'));
    let source: Run | undefined;
    let destination: Run | undefined;
    try {
      await randomImage(join(dir, 'src.img'), 8 * MiB);
      await randomImage(join(dir, 'dst.img'), 8 * MiB);
      await randomImage(join(dir, 'small.img'), 4 * MiB);
      await randomImage(join(dir, 'cd.iso'), 2 * MiB);
      const dstHash = await sha(join(dir, 'dst.img'));
      source = startRun(['--machine', 'v86', '--ram', '32M', ...r.source(dir), '--qmp', `unix:${join(dir, 'src.qmp')}`]);
      destination = startRun(['--machine', 'v86', '--ram', '32M', ...r.destination(dir), '--incoming', `unix:${join(dir, 'mig.sock')}`]);
      await source.event('qmp');
      await destination.event('listening');
      const src = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 5000 });
      await src.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}`, blk: r.blk });
      const info = await waitMigration(src);
      assert.equal(info.status, 'failed');
      const failed = await destination.event('failed');
      assert.match(failed.error, r.error);
      assert.equal(destination.events.some((e) => e.event === 'loaded'), false, 'nothing was loaded');
      // Nothing written on the destination: its images are as they were and no partial image is left.
      assert.equal(await sha(join(dir, 'dst.img')), dstHash);
      for (const f of ['dst.img', 'small.img']) assert.ok(!existsSync(join(dir, f + INCOMING_SUFFIX)), `no ${f}${INCOMING_SUFFIX} left`);
      // The source guest runs on.
      assert.equal(((await src.execute('query-status')) as { status: string }).status, 'running');
      const serialBefore = source.serial().length + source.events.filter((e) => e.event === 'guest').length;
      const s = source;
      await s.until(() => s.serial().length + s.events.filter((e) => e.event === 'guest').length > serialBefore, 'the source guest to go on', 10_000);
      await src.close();
    } finally {
      await stopAll(source, destination);
      await rm(dir, { recursive: true, force: true });
    }
  });
}

/** A boot sector that prints MESSAGE on COM1 and halts (16-bit real mode, hand-assembled). */
function bootSector(message: string): Buffer {
  const code = [
    0x31, 0xc0, 0x8e, 0xd8, // xor ax,ax; mov ds,ax
    0xba, 0xf8, 0x03, // mov dx,0x3f8
    0xbe, 0x15, 0x7c, // mov si,0x7c15 (the message)
    0xac, 0x84, 0xc0, 0x74, 0x03, // lodsb; test al,al; jz halt
    0xee, 0xeb, 0xf8, // out dx,al; jmp lodsb
    0xf4, 0xeb, 0xfd, // halt: hlt; jmp halt
  ];
  const sector = Buffer.alloc(512);
  Buffer.from(code).copy(sector);
  sector.write(message + '\n', code.length, 'latin1');
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

test('--bios and --vga-bios boot the user\'s own disk (SeaBIOS from the hda boot sector)', { timeout: 120_000 }, async (t) => {
  const seabios = '/usr/share/seabios';
  if (!existsSync(join(seabios, 'bios.bin')) || !existsSync(join(seabios, 'vgabios-stdvga.bin'))) return t.skip('no SeaBIOS: install the Debian package seabios');
  const dir = await mkdtemp(join(tmpdir(), 'livemig-v86boot-'));
  let run: Run | undefined;
  try {
    const image = join(dir, 'boot.img');
    await writeFile(image, Buffer.concat([bootSector('booted from hda by livemig'), Buffer.alloc(MiB - 512)]));
    run = startRun(['--machine', 'v86', '--ram', '32M', '--hda', image, '--bios', join(seabios, 'bios.bin'), '--vga-bios', join(seabios, 'vgabios-stdvga.bin')]);
    const r = run;
    await r.until(() => r.serial().includes('booted from hda by livemig'), 'the boot sector\'s message', 60_000);
  } finally {
    await stopAll(run);
    await rm(dir, { recursive: true, force: true });
  }
});

test('Linux writes its disk during a live migration: the destination image equals the source image at the switchover, and the guest writes on there', { timeout: 600_000 }, async (t) => {
  if (!(await linuxImageExists())) return t.skip('no Linux guest image: run `npm run images` (needs Debian packages gcc-multilib and seabios)');
  const dir = await mkdtemp(join(tmpdir(), 'livemig-v86linuxdisk-'));
  let source: Run | undefined;
  let destination: Run | undefined;
  try {
    const srcImage = join(dir, 'src.img');
    const dstImage = join(dir, 'dst.img');
    const blocks = 16 * 256; // 16 MiB of 4 KiB blocks
    await writeFile(srcImage, Buffer.alloc(16 * MiB));
    await writeFile(dstImage, Buffer.alloc(16 * MiB));
    const common = ['--machine', 'v86', '--guest', 'linux', '--ram', '128M'];
    source = startRun([...common, '--hda', srcImage, '--serial-stdin', '--qmp', `unix:${join(dir, 'src.qmp')}`]);
    destination = startRun([...common, '--hda', dstImage, '--serial-stdin', '-S', '--incoming', `unix:${join(dir, 'mig.sock')}`, '--qmp', `unix:${join(dir, 'dst.qmp')}`]);
    const s = source;
    await s.until(() => /dirtier: pass \d+ ok/.test(s.serial()), 'the guest to boot and self-check', 300_000);
    // The kernel sees the IDE disk.
    let from = s.events.length;
    s.child.stdin.write('cat /sys/block/sda/size\n');
    await s.until(() => /\n32768\r?\n/.test(s.serial(from)), 'the size of /dev/sda (32768 sectors)', 60_000);
    // A writer of random 64 KiB pieces all over the disk, written through (fsync), forever.
    from = s.events.length;
    s.child.stdin.write(`(n=0; while :; do dd if=/dev/urandom of=/dev/sda bs=4k count=16 seek=$((RANDOM % ${blocks - 16})) conv=notrunc,fsync 2>/dev/null; n=$((n+1)); [ $((n % 50)) = 0 ] && echo "writer: $n"; done) &\n`);
    await s.until(() => /writer: 100/.test(s.serial(from)), 'the disk writer to run', 120_000);
    await destination.event('listening');
    const src = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 5000 });
    const imageAtStart = await readFile(srcImage);
    const atStart = createHash('sha256').update(imageAtStart).digest('hex');
    // Capped so the bulk phase takes a while and the guest dirties chunks already sent.
    await src.execute('migrate-set-parameters', { 'max-bandwidth': 8 * MiB });
    await src.execute('migrate-set-capabilities', { capabilities: [{ capability: 'auto-converge', state: true }] });
    await src.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}`, blk: true });
    // Once the bulk phase is over, the cap goes: RAM and the dirty chunks then move at loopback speed.
    for (;;) {
      const now = (await src.execute('query-migrate')) as Record<string, any>;
      if (now.status !== 'active' || now.disk?.remaining === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await src.execute('migrate-set-parameters', { 'max-bandwidth': 1024 * MiB });
    const info = await waitMigration(src);
    assert.equal(info.status, 'completed', info['error-desc']);
    assert.equal(info.disk.total, 16 * MiB);
    const resumed = await destination.event('resumed');
    assert.equal(resumed.started, false, '-S: the destination waits for cont');
    // Source stopped at the switchover, destination not started yet: the images are as at the switchover.
    const srcAtSwitchover = await sha(srcImage);
    assert.notEqual(srcAtSwitchover, atStart, 'the guest wrote its disk during the migration');
    const imageAtSwitchover = await readFile(srcImage);
    let chunksChanged = 0;
    for (let c = 0; c < 16; c++) if (!imageAtStart.subarray(c * MiB, (c + 1) * MiB).equals(imageAtSwitchover.subarray(c * MiB, (c + 1) * MiB))) chunksChanged++;
    t.diagnostic(`migration ${info['total-time']} ms, downtime ${info.downtime} ms, ${info.ram['dirty-sync-count']} passes; ${chunksChanged} of 16 disk chunks written by the guest during it`);
    assert.equal(await sha(dstImage), srcAtSwitchover, 'destination image identical to the source image at the switchover');
    assert.ok(!existsSync(dstImage + INCOMING_SUFFIX));
    await src.close();

    // The guest runs on at the destination, and its writer with it.
    const d = destination;
    const dst = await QmpClient.connect(`unix:${join(dir, 'dst.qmp')}`, { retryForMs: 5000 });
    const fromDst = d.events.length;
    await dst.execute('cont');
    await d.until(() => /writer: \d+/.test(d.serial(fromDst)), 'the writer to go on at the destination', 120_000);
    await dst.execute('stop');
    assert.notEqual(await sha(dstImage), srcAtSwitchover, 'the guest writes its disk at the destination');
    assert.equal(await sha(srcImage), srcAtSwitchover, 'the source image is left as at the switchover');
    await dst.close();
  } finally {
    await stopAll(source, destination);
    await rm(dir, { recursive: true, force: true });
  }
});

test('Linux writes a shared disk (--disk-shared) during a live migration: nothing is copied, the destination goes on writing the same image', { timeout: 600_000 }, async (t) => {
  if (!(await linuxImageExists())) return t.skip('no Linux guest image: run `npm run images` (needs Debian packages gcc-multilib and seabios)');
  const dir = await mkdtemp(join(tmpdir(), 'livemig-v86linuxshared-'));
  let source: Run | undefined;
  let destination: Run | undefined;
  try {
    const image = join(dir, 'shared.img');
    await writeFile(image, Buffer.alloc(16 * MiB));
    const common = ['--machine', 'v86', '--guest', 'linux', '--ram', '128M', '--hda', image, '--disk-shared', '--serial-stdin'];
    source = startRun([...common, '--qmp', `unix:${join(dir, 'src.qmp')}`]);
    destination = startRun([...common, '-S', '--incoming', `unix:${join(dir, 'mig.sock')}`, '--qmp', `unix:${join(dir, 'dst.qmp')}`]);
    const s = source;
    await s.until(() => /dirtier: pass \d+ ok/.test(s.serial()), 'the guest to boot and self-check', 300_000);
    const from = s.events.length;
    s.child.stdin.write(`(n=0; while :; do dd if=/dev/urandom of=/dev/sda bs=4k count=16 seek=$((RANDOM % ${16 * 256 - 16})) conv=notrunc,fsync 2>/dev/null; n=$((n+1)); [ $((n % 50)) = 0 ] && echo "writer: $n"; done) &\n`);
    await s.until(() => /writer: 100/.test(s.serial(from)), 'the disk writer to run', 120_000);
    await destination.event('listening');
    const src = await QmpClient.connect(`unix:${join(dir, 'src.qmp')}`, { retryForMs: 5000 });
    await src.execute('migrate-set-capabilities', { capabilities: [{ capability: 'auto-converge', state: true }] });
    await src.execute('migrate', { uri: `unix:${join(dir, 'mig.sock')}`, blk: true });
    const info = await waitMigration(src);
    assert.equal(info.status, 'completed', info['error-desc']);
    assert.equal(info.disk, undefined, 'no disk section');
    const resumed = await destination.event('resumed');
    const beyondRam = resumed.bytes - info.ram.transferred;
    assert.ok(beyondRam >= 0 && beyondRam < 4 * MiB, `${beyondRam} bytes beyond RAM's: the disk did not travel`);
    assert.ok(!existsSync(image + INCOMING_SUFFIX));
    const atSwitchover = await sha(image);
    await src.close();
    // The source is stopped: the image changes only once the destination runs, and its writer goes on there.
    const d = destination;
    const dst = await QmpClient.connect(`unix:${join(dir, 'dst.qmp')}`, { retryForMs: 5000 });
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(await sha(image), atSwitchover, 'nobody writes the image between the switchover and cont');
    const fromDst = d.events.length;
    await dst.execute('cont');
    await d.until(() => /writer: \d+/.test(d.serial(fromDst)), 'the writer to go on at the destination', 120_000);
    assert.notEqual(await sha(image), atSwitchover, 'the destination guest writes the shared image');
    await dst.close();
  } finally {
    await stopAll(source, destination);
    await rm(dir, { recursive: true, force: true });
  }
});
