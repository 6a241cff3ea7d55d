/**
 * The v86 machine with our multiboot test kernel: boot and serial, pause,
 * the shadow-compare dirty log, device state save → restore into an incoming
 * machine, configuration mismatches.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { createV86Machine, V86_MACHINE_NAME, type V86Machine, type V86MachineOptions } from '../src/machine/v86-machine.js';
import { FixedRamBlockTable } from '../src/ram/index.js';
import { loadDevices, saveDevices } from './helpers/devices.js';

const MiB = 1024 * 1024;
const PAGE = 4096;

async function withMachine(options: V86MachineOptions, body: (m: V86Machine) => Promise<void>): Promise<void> {
  const m = await createV86Machine(options);
  try {
    await body(m);
  } finally {
    await m.destroy();
  }
}

function collectSerial(m: V86Machine): { text(): string } {
  let text = '';
  m.serial.on('data', (chunk: Buffer) => {
    text += chunk.toString('latin1');
  });
  return { text: () => text };
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 30_000): Promise<void> {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const count = (s: string, c: string): number => s.split(c).length - 1;


test('v86: the multiboot kernel boots, prints A then Bs, and its RAM passes the QEMU check', async () => {
  await withMachine({ ramSizeBytes: 32 * MiB }, async (m) => {
    assert.equal(m.kind, 'v86');
    assert.equal(m.machineName, V86_MACHINE_NAME);
    assert.deepEqual(
      m.ramBlocks().map((b) => [b.idstr, b.lengthBytes, b.pageCount]),
      [['pc.ram', 32 * MiB, (32 * MiB) / PAGE]],
    );
    assert.deepEqual(m.workloadRange, { startBytes: MiB, endBytes: 32 * MiB });
    const serial = collectSerial(m);
    assert.equal(m.running, true);
    await waitFor('three Bs', () => count(serial.text(), 'B') >= 3);
    assert.match(serial.text(), /^AB+$/);
    await m.pause();
    assert.equal(m.running, false);
    const check = m.checkMemory();
    assert.ok(check.ok, check.reason);
    assert.ok(m.memory[MiB]! > 0, 'the kernel incremented the first page');
    assert.equal(m.memory[32 * MiB - PAGE]! <= m.memory[MiB]!, true);
    const cpu = m.cpuState();
    assert.equal(cpu.protectedMode, true);
    assert.ok(m.stats().instructions > 1000);
  });
});

test('v86: pause really stops the guest; resume continues', async () => {
  await withMachine({ ramSizeBytes: 32 * MiB }, async (m) => {
    const serial = collectSerial(m);
    await waitFor('a B', () => count(serial.text(), 'B') >= 1);
    await m.pause();
    assert.ok(m.lastPauseLatencyMs < 1000, `pause took ${m.lastPauseLatencyMs} ms`);
    const hash = m.ramHash();
    const bytes = serial.text().length;
    const instructions = m.stats().instructions;
    await sleep(300);
    assert.equal(m.ramHash(), hash, 'RAM unchanged while paused');
    assert.equal(serial.text().length, bytes, 'no serial output while paused');
    assert.equal(m.stats().instructions, instructions);
    m.resume();
    await waitFor('more Bs', () => serial.text().length > bytes + 2);
    await m.pause();
    assert.notEqual(m.ramHash(), hash);
    assert.ok(m.checkMemory().ok);
  });
});

test('v86: the shadow-compare dirty log misses nothing (copy of reported pages equals RAM at stop)', async () => {
  await withMachine({ ramSizeBytes: 64 * MiB, syncChunkBytes: 4 * MiB }, async (m) => {
    const serial = collectSerial(m);
    await waitFor('a B', () => count(serial.text(), 'B') >= 1);
    const copy = new Uint8Array(m.ramSizeBytes);
    const syncInto = async (): Promise<number> => {
      let reported = 0;
      await m.syncDirtyLog((idstr, pages) => {
        assert.equal(idstr, 'pc.ram');
        assert.equal(pages.length, (m.ramSizeBytes / PAGE) / 32);
        // As the engine does: read the reported pages (here at once, in this same turn).
        const ram = m.memory;
        for (let w = 0; w < pages.length; w++) {
          let bits = pages[w]!;
          while (bits !== 0) {
            const bit = 31 - Math.clz32(bits);
            bits &= ~(1 << bit);
            const at = (w * 32 + bit) * PAGE;
            copy.set(ram.subarray(at, at + PAGE), at);
            reported++;
          }
        }
      });
      return reported;
    };
    assert.equal(await syncInto(), m.ramSizeBytes / PAGE, 'the first sync reports every page');
    let reportedWhileRunning = 0;
    for (let i = 0; i < 5; i++) {
      await sleep(50);
      reportedWhileRunning += await syncInto();
    }
    assert.ok(reportedWhileRunning > 100, `the running guest dirtied pages (${reportedWhileRunning})`);
    await m.pause();
    await syncInto();
    assert.equal(Buffer.compare(Buffer.from(copy), Buffer.from(m.memory)), 0, 'copy equals RAM');
    assert.equal(await syncInto(), 0, 'nothing is dirty after the final sync while paused');
    assert.ok(m.stats().syncs >= 8);
  });
});

const popcount = (bitmap: Uint32Array): number => {
  let n = 0;
  for (let w of bitmap) for (; w !== 0; w &= w - 1) n++;
  return n;
};

test('v86: startDirtyLog allocates the shadow, stopDirtyLog frees it; after a restart the first sync reports every page, then only new writes', async () => {
  await withMachine({ ramSizeBytes: 32 * MiB, startPaused: true }, async (m) => {
    const pages = m.ramSizeBytes / PAGE;
    const sync = async (): Promise<Uint32Array> => {
      let got: Uint32Array | undefined;
      await m.syncDirtyLog((_id, bitmap) => (got = bitmap.slice()));
      return got!;
    };
    const only = (bitmap: Uint32Array, page: number): boolean => popcount(bitmap) === 1 && (bitmap[page >>> 5]! & (1 << (page & 31))) !== 0;
    assert.equal(m.stats().dirtyLogBytes, 0, 'no shadow before tracking starts');
    for (let round = 0; round < 2; round++) {
      m.startDirtyLog();
      m.startDirtyLog(); // idempotent
      assert.equal(m.stats().dirtyLogBytes, m.ramSizeBytes, `round ${round}: the shadow is there while tracking`);
      assert.equal(popcount(await sync()), pages, `round ${round}: the first sync after start reports every page`);
      assert.equal(popcount(await sync()), 0, `round ${round}: nothing written since`);
      const page = 5 + round;
      m.memory[page * PAGE + 7]! ^= 0xff;
      assert.ok(only(await sync(), page), `round ${round}: exactly the written page is reported`);
      m.stopDirtyLog();
      m.stopDirtyLog(); // idempotent
      assert.equal(m.stats().dirtyLogBytes, 0, `round ${round}: stopDirtyLog freed the shadow`);
      m.memory[9 * PAGE]! ^= 1; // written while nothing tracks
    }
    // A sync while tracking is off starts it.
    assert.equal(popcount(await sync()), pages);
    assert.equal(m.stats().dirtyLogBytes, m.ramSizeBytes);
    // Stopping during a sync (it yields between chunks) makes that sync fail, not use a freed shadow.
    m.memory[3 * PAGE]! ^= 1;
    const racing = m.syncDirtyLog(() => assert.fail('a sync whose log was stopped must not report'));
    m.stopDirtyLog();
    await assert.rejects(racing, /dirty log was stopped during a sync/);
    assert.equal(m.stats().dirtyLogBytes, 0);
  });
});

test('v86: a dirty log stopped and started again (a second migration) still delivers every page written while the guest runs', async () => {
  await withMachine({ ramSizeBytes: 32 * MiB, syncChunkBytes: 4 * MiB }, async (m) => {
    const serial = collectSerial(m);
    await waitFor('a B', () => count(serial.text(), 'B') >= 1);
    const copy = new Uint8Array(m.ramSizeBytes);
    const syncInto = async (): Promise<number> => {
      let reported = 0;
      await m.syncDirtyLog((_idstr, bitmap) => {
        const ram = m.memory;
        for (let w = 0; w < bitmap.length; w++) {
          for (let bits = bitmap[w]!; bits !== 0; bits &= bits - 1) {
            const at = (w * 32 + 31 - Math.clz32(bits & -bits)) * PAGE;
            copy.set(ram.subarray(at, at + PAGE), at);
            reported++;
          }
        }
      });
      return reported;
    };
    // First "migration": tracked passes, then tracking stops while the guest keeps running.
    m.startDirtyLog();
    for (let i = 0; i < 3; i++) {
      await syncInto();
      await sleep(30);
    }
    m.stopDirtyLog();
    await sleep(100);
    // Second one: the copy is stale where the guest wrote meanwhile; the restarted log must cover that.
    m.startDirtyLog();
    assert.equal(await syncInto(), m.ramSizeBytes / PAGE, 'the first sync after the restart reports every page');
    let whileRunning = 0;
    for (let i = 0; i < 3; i++) {
      await sleep(30);
      whileRunning += await syncInto();
    }
    assert.ok(whileRunning > 0, 'the running guest dirtied pages after the restart');
    await m.pause();
    await syncInto();
    assert.equal(Buffer.compare(Buffer.from(copy), Buffer.from(m.memory)), 0, 'copy equals RAM');
    m.stopDirtyLog();
    assert.equal(m.stats().dirtyLogBytes, 0);
  });
});

test('v86: dirty log pass cost over 128 MiB (informational)', async () => {
  await withMachine({ ramSizeBytes: 128 * MiB, startPaused: true }, async (m) => {
    await m.syncDirtyLog(() => {});
    const t0 = performance.now();
    await m.syncDirtyLog(() => {});
    const ms = performance.now() - t0;
    console.log(`# v86 dirty-log pass over 128 MiB (clean, paused): ${ms.toFixed(1)} ms; device state ${(await saveDevices(m)).length} bytes`);
  });
});

test('v86: fair share: while the dirty log is on, a thread hog (10 ms a turn) still leaves the guest about half of the thread, or the share asked', async () => {
  const shareWithHog = async (fairShare: boolean, guestSharePercent?: number): Promise<number> => {
    let share = 0;
    await withMachine({ ramSizeBytes: 32 * MiB, fairShare, ...(guestSharePercent !== undefined ? { guestSharePercent } : {}) }, async (m) => {
      await sleep(100);
      m.startDirtyLog();
      let stop = false;
      const hog = (async () => {
        while (!stop) {
          const t = performance.now();
          while (performance.now() - t < 10); // e.g. the migration sending
          await new Promise((resolve) => setImmediate(resolve));
        }
      })();
      const e0 = m.stats().emulatorMs;
      const t0 = performance.now();
      await sleep(600);
      stop = true;
      await hog;
      share = (m.stats().emulatorMs - e0) / (performance.now() - t0);
    });
    return share;
  };
  const off = await shareWithHog(false);
  const on = await shareWithHog(true);
  const eighty = await shareWithHog(true, 80);
  console.log(`# v86 guest share of the thread beside a 10 ms hog: fair share on ${on.toFixed(2)}, at 80% ${eighty.toFixed(2)}, off ${off.toFixed(2)}`);
  assert.ok(on >= 0.4, `the guest ran ${on.toFixed(2)} of the time with the fair share`);
  assert.ok(on > off + 0.08, `more than without it (${off.toFixed(2)})`);
  assert.ok(eighty >= 0.65 && eighty > on + 0.1, `asked for 80%, the guest ran ${eighty.toFixed(2)} of the time (${on.toFixed(2)} at the default)`);
  for (const bad of [0, 96, Number.NaN]) {
    await assert.rejects(createV86Machine({ ramSizeBytes: 32 * MiB, guestSharePercent: bad }), /v86 guest share: .* is not a percentage from 1 to 95/);
  }
});

test('v86: device state save → restore into an incoming machine with RAM copied: the guest continues there', async () => {
  await withMachine({ ramSizeBytes: 64 * MiB }, async (src) => {
    const srcSerial = collectSerial(src);
    await waitFor('two Bs on the source', () => count(srcSerial.text(), 'B') >= 2);
    await src.pause();
    const state = await saveDevices(src);
    assert.ok(state.length > 1000 && state.length < 4 * MiB, `device state is ${state.length} bytes`);
    const ramAtStop = src.ramHash();
    const cpuAtStop = src.cpuState();
    await withMachine({ ramSizeBytes: 64 * MiB, incoming: true }, async (dst) => {
      assert.equal(dst.running, false);
      const dstSerial = collectSerial(dst);
      dst.memory.set(src.memory);
      await loadDevices(dst, state);
      assert.equal(dst.ramHash(), ramAtStop, 'restore left RAM alone');
      assert.deepEqual(dst.cpuState(), cpuAtStop, 'registers restored');
      assert.ok(dst.checkMemory().ok);
      dst.resume();
      await waitFor('Bs on the destination', () => count(dstSerial.text(), 'B') >= 3);
      assert.doesNotMatch(dstSerial.text(), /A/, 'the guest did not boot again');
      await dst.pause();
      const check = dst.checkMemory();
      assert.ok(check.ok, check.reason);
      assert.notEqual(dst.ramHash(), ramAtStop, 'the guest ran on the destination');
    });
    // The source can continue too (a failed migration resumes it).
    src.resume();
    await waitFor('the source continues', () => count(srcSerial.text(), 'B') >= 3);
  });
});

test('v86: a memory-size mismatch is refused with a clear error, by the RAM block list and by v86-config', async () => {
  await withMachine({ ramSizeBytes: 64 * MiB, startPaused: true }, async (src) => {
    const state = await saveDevices(src);
    await withMachine({ ramSizeBytes: 32 * MiB, incoming: true }, async (dst) => {
      const table = new FixedRamBlockTable(dst.ramBlocks());
      const announced = table.announce('pc.ram', 64 * MiB);
      assert.ok('error' in announced && announced.error);
      assert.match(String(announced.error), /Size mismatch: pc\.ram: 0x4000000 != 0x2000000.*stream's is 64 MiB/);
      const before = dst.cpuState();
      await assert.rejects(loadDevices(dst, state), /memory size mismatch: stream 64 MiB, local 32 MiB/);
      assert.deepEqual(dst.cpuState(), before, 'the device state was not touched');
    });
    await withMachine({ ramSizeBytes: 64 * MiB, vgaMemorySizeBytes: 512 * 1024, incoming: true }, async (dst) => {
      await assert.rejects(loadDevices(dst, state), /VGA memory size mismatch: stream 256 KiB, local 512 KiB/);
    });
  });
});

test('v86: throttle slows the guest, and pause works while throttled', async () => {
  await withMachine({ ramSizeBytes: 16 * MiB }, async (m) => {
    const rate = async (ms: number): Promise<number> => {
      const before = m.stats().instructions;
      const t0 = performance.now();
      await sleep(ms);
      return (m.stats().instructions - before) / (performance.now() - t0);
    };
    await rate(200); // warm the JIT
    const full = await rate(500);
    m.setThrottle(80);
    assert.equal(m.throttlePercent, 80);
    const throttled = await rate(500);
    assert.ok(throttled < full * 0.6, `throttled ${throttled.toFixed(0)}/ms vs ${full.toFixed(0)}/ms`);
    await m.pause();
    const hash = m.ramHash();
    await sleep(100);
    assert.equal(m.ramHash(), hash, 'paused while throttled');
    m.setThrottle(0);
    m.resume();
    assert.ok((await rate(300)) > 0);
  });
});

test('v86: the shadow follows what the engine sends, so a page that goes B → C (sent) → B is reported again', async () => {
  await withMachine({ ramSizeBytes: 16 * MiB, startPaused: true }, async (m) => {
    const reported = async (): Promise<number[]> => {
      const pages: number[] = [];
      await m.syncDirtyLog((_idstr, bitmap) => {
        for (let p = 0; p < bitmap.length * 32; p++) if (bitmap[p >>> 5]! & (1 << (p & 31))) pages.push(p);
      });
      return pages;
    };
    await reported(); // first sync: everything
    assert.deepEqual(await reported(), []);
    const block = m.ramBlocks()[0]!;
    const page = 300;
    m.memory[page * PAGE] = 0xb; // guest writes B
    assert.deepEqual(await reported(), [page]);
    m.memory[page * PAGE] = 0xc; // guest writes C before the engine sends the page
    assert.equal(block.isPageZero(page), false); // the engine sends C
    assert.equal(block.pageView(page)[0], 0xc);
    m.memory[page * PAGE] = 0xb; // back to B: the destination holds C
    assert.deepEqual(await reported(), [page]);
    // A page sent as a zero page: the shadow is zero.
    m.memory[(page + 1) * PAGE] = 1;
    assert.deepEqual(await reported(), [page + 1]);
    m.memory[(page + 1) * PAGE] = 0;
    assert.equal(block.isPageZero(page + 1), true);
    assert.deepEqual(await reported(), []);
  });
});
