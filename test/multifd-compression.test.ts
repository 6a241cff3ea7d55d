import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { describe, it } from 'node:test';
import zlib from 'node:zlib';
import { createRecvCodec, createSendCodec } from '../src/ram/multifd/codec.js';
import { benchmarkMultifdCompression } from '../src/ram/multifd/compression-bench.js';
import { ZlibStream, Z_NO_FLUSH, Z_SYNC_FLUSH } from '../src/ram/multifd/compression-zlib.js';
import { ZstdDecompressStream } from '../src/ram/multifd/compression-zstd.js';
import {
  MULTIFD_COMPRESSED_MAX,
  MultifdCompressionError,
  createMultifdCodec,
  multifdCompressionFlags,
  multifdLevelRange,
  zstdAvailable,
  type MultifdCodec,
  type MultifdCompression,
} from '../src/ram/multifd/compression.js';
import { Prng } from './helpers/prng.js';

const PAGE = 4096;
const zstdSkip = zstdAvailable() ? false : 'the zstd-napi addon is not built (npm ci builds it)';

type Kind = 'random' | 'zero' | 'text' | 'mixed';

function textPage(prng: Prng, out: Uint8Array, off: number): void {
  const words = ['migration ', 'page ', 'dirty ', 'the ', 'qemu ', 'ram\n', 'block ', 'guest ', 'return 0;\n', '{ ', '} '];
  let i = off;
  while (i < off + PAGE) {
    const w = prng.chance(0.2) ? `${prng.int(100000)} ` : prng.pick(words);
    for (let k = 0; k < w.length && i < off + PAGE; k++) out[i++] = w.charCodeAt(k);
  }
}

/** `n` pages of one kind (mixed: each page random, zero or text). */
function pages(kind: Kind, n: number, prng: Prng): Uint8Array {
  const buf = new Uint8Array(n * PAGE);
  for (let p = 0; p < n; p++) {
    const k = kind === 'mixed' ? prng.pick(['random', 'zero', 'text'] as const) : kind;
    if (k === 'random') randomFillSync(buf, p * PAGE, PAGE);
    else if (k === 'text') textPage(prng, buf, p * PAGE);
  }
  return buf;
}

function concat(parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

/**
 * QEMU 7.2's zlib_recv_pages, transcribed (same loop and checks, lenient about
 * trailing input as QEMU is), over a stream of its own: the oracle that 7.2
 * decodes what we send.
 */
function qemuZlibRecv(zs: ZlibStream, payload: Uint8Array, used: number): Uint8Array {
  const pagesOut = new Uint8Array(used * PAGE);
  let inPos = 0;
  let outSize = 0;
  for (let i = 0; i < used; i++) {
    const flush = i === used - 1 ? Z_SYNC_FLUSH : Z_NO_FLUSH;
    let got = 0;
    let progress: boolean;
    do {
      const step = zs.run(flush, payload, inPos, payload.length - inPos, pagesOut, i * PAGE + got, PAGE - got);
      inPos += step.consumed;
      got += step.produced;
      progress = step.consumed > 0 || step.produced > 0; // no progress = Z_BUF_ERROR, which 7.2 treats as an error
    } while (progress && inPos < payload.length && got < PAGE);
    if (!progress) throw new Error(`qemu: inflate returned Z_BUF_ERROR instead of Z_OK (page ${i})`);
    if (got < PAGE) throw new Error('qemu: inflate generated too few output');
    outSize += got;
  }
  if (outSize !== used * PAGE) throw new Error(`qemu: packet size received ${outSize} size expected ${used * PAGE}`);
  return pagesOut;
}

/** QEMU 7.2's zstd_recv_pages, transcribed. */
function qemuZstdRecv(zds: ZstdDecompressStream, payload: Uint8Array, used: number): Uint8Array {
  const pagesOut = new Uint8Array(used * PAGE);
  let inPos = 0;
  let outSize = 0;
  for (let i = 0; i < used; i++) {
    const page = pagesOut.subarray(i * PAGE, (i + 1) * PAGE);
    let outPos = 0;
    let ret: number;
    do {
      const [r, produced, consumed] = zds.run(page.subarray(outPos), payload.subarray(inPos));
      ret = r;
      outPos += produced;
      inPos += consumed;
    } while (ret > 0 && inPos < payload.length && outPos < PAGE);
    if (ret > 0 && outPos < PAGE) throw new Error('qemu: decompressStream buffer too small');
    outSize += outPos;
  }
  if (outSize !== used * PAGE) throw new Error(`qemu: packet size received ${outSize} size expected ${used * PAGE}`);
  return pagesOut;
}

/** A fresh decoder that reads the channel the way a 7.2 destination does. */
function qemuReceiver(method: MultifdCompression): (payload: Uint8Array, used: number) => Uint8Array {
  if (method === 'zlib') {
    const zs = new ZlibStream('inflate');
    return (p, n) => qemuZlibRecv(zs, p, n);
  }
  const zds = new ZstdDecompressStream();
  return (p, n) => qemuZstdRecv(zds, p, n);
}

/** Whole-channel decode with a decoder that knows nothing of packets: proves one continuous stream per channel. */
function decodeChannelAtOnce(method: MultifdCompression, payloads: Uint8Array[], total: number): Uint8Array {
  const all = concat(payloads);
  if (method === 'zlib') return new Uint8Array(zlib.inflateSync(all, { finishFlush: zlib.constants.Z_SYNC_FLUSH }));
  const out = new Uint8Array(total + 1);
  const zds = new ZstdDecompressStream();
  let inPos = 0;
  let outPos = 0;
  for (;;) {
    const [, produced, consumed] = zds.run(out.subarray(outPos), all.subarray(inPos));
    inPos += consumed;
    outPos += produced;
    if (!produced && !consumed) break;
  }
  assert.equal(inPos, all.length, 'the whole channel is consumed');
  return out.subarray(0, outPos);
}

interface ChannelRun {
  payloads: Uint8Array[];
  counts: number[];
  input: Uint8Array[];
  codec: MultifdCodec;
}

/** Send packets of the given kinds/sizes through one channel. */
function send(method: MultifdCompression, level: number, plan: Array<[Kind, number]>, seed: number, backoff?: false): ChannelRun {
  const prng = new Prng(seed);
  const codec = createMultifdCodec(method, level, { channel: 3, ...(backoff === false ? { backoff } : {}) });
  const run: ChannelRun = { payloads: [], counts: [], input: [], codec };
  for (const [i, [kind, n]] of plan.entries()) {
    const data = pages(kind, n, prng);
    // Alternate the input forms: contiguous, one view per page.
    const arg = i % 2 === 0 ? data : Array.from({ length: n }, (_, p) => data.subarray(p * PAGE, (p + 1) * PAGE));
    const payload = codec.compressPacket(arg);
    run.payloads.push(method === 'none' ? payload.slice() : payload);
    run.counts.push(n);
    run.input.push(data);
  }
  return run;
}

/** Receive a channel with our decoder, alternating target forms, and check every page. */
function receiveAndCheck(method: MultifdCompression, run: ChannelRun): MultifdCodec {
  const codec = createMultifdCodec(method, undefined, { channel: 3 });
  for (const [i, payload] of run.payloads.entries()) {
    const n = run.counts[i]!;
    const out = new Uint8Array(n * PAGE + PAGE).fill(0xee);
    if (i % 3 === 0) codec.decompressPacket(payload, n, out, i);
    else if (i % 3 === 1) codec.decompressPacket(payload, n, Array.from({ length: n }, (_, p) => out.subarray(p * PAGE, (p + 1) * PAGE)), i);
    else codec.decompressPacket(payload, n, (p) => out.subarray(p * PAGE, (p + 1) * PAGE), i);
    assert.ok(Buffer.from(out.subarray(0, n * PAGE)).equals(run.input[i]!), `packet ${i}: pages differ`);
    assert.ok(out.subarray(n * PAGE).every((b) => b === 0xee), `packet ${i}: wrote past its pages`);
  }
  assert.equal(codec.stats.packetsDecompressed, run.payloads.length);
  return codec;
}

/** Decode with the transcribed QEMU loops and with a packet-blind decoder. */
function checkQemuCompatible(method: MultifdCompression, run: ChannelRun): void {
  const qemu = qemuReceiver(method);
  for (const [i, payload] of run.payloads.entries()) {
    assert.ok(payload.length <= MULTIFD_COMPRESSED_MAX);
    const out = qemu(payload, run.counts[i]!);
    assert.ok(Buffer.from(out).equals(run.input[i]!), `packet ${i}: QEMU's loop decodes other pages`);
  }
  const total = run.counts.reduce((a, b) => a + b, 0) * PAGE;
  const all = decodeChannelAtOnce(method, run.payloads, total);
  assert.equal(all.length, total);
  assert.ok(Buffer.from(all).equals(Buffer.from(concat(run.input))), 'the channel decodes as one stream');
}

const PLAN: Array<[Kind, number]> = [
  ['text', 128],
  ['zero', 128],
  ['random', 1],
  ['mixed', 128],
  ['text', 7],
  ['random', 128],
  ['zero', 1],
  ['mixed', 64],
  ['text', 128],
  ['random', 3],
  ['mixed', 128],
  ['text', 128],
];

describe('multifd compression: methods and parameters', () => {
  it('uses QEMU 7.2 flag bits and level ranges', () => {
    assert.equal(multifdCompressionFlags('none'), 0);
    assert.equal(multifdCompressionFlags('zlib'), 0x2);
    assert.equal(multifdCompressionFlags('zstd'), 0x4);
    assert.deepEqual(multifdLevelRange('zlib'), [0, 9]);
    assert.deepEqual(multifdLevelRange('zstd'), [0, 20]);
    assert.equal(createMultifdCodec('zlib').level, 1);
    assert.equal(createMultifdCodec('zlib').flags, 0x2);
    assert.equal(createMultifdCodec('none', 5).level, 0);
    assert.throws(() => createMultifdCodec('zlib', 10), /multifd-zlib-level must be an integer in 0\.\.9/);
    assert.throws(() => createMultifdCodec('zlib', -1), RangeError);
    assert.throws(() => createMultifdCodec('zstd', 21), /multifd-zstd-level must be an integer in 0\.\.20/);
    assert.throws(() => createMultifdCodec('zstd', 1.5), RangeError);
    assert.throws(() => createMultifdCodec('lz4' as MultifdCompression), /unknown multifd compression/);
  });

  it('rejects packets outside 1..128 pages on the sender', () => {
    const c = createMultifdCodec('zlib', 1, { channel: 1 });
    assert.throws(() => c.compressPacket(new Uint8Array(129 * PAGE)), /channel 1: zlib packet 0: page count 129 is not in 1\.\.128/);
    assert.throws(() => c.compressPacket(new Uint8Array(0)), /page count 0/);
    assert.throws(() => c.compressPacket(new Uint8Array(PAGE), 2), /fewer than 2 pages/);
  });

  it('none: payload is the pages; the receiver wants exactly pages × 4096 bytes', () => {
    const run = send('none', 0, PLAN, 1);
    run.payloads.forEach((p, i) => assert.equal(p.length, run.counts[i]! * PAGE));
    receiveAndCheck('none', run);
    const c = createMultifdCodec('none', 0, { channel: 2 });
    assert.throws(() => c.decompressPacket(new Uint8Array(PAGE - 1), 1, new Uint8Array(PAGE), 77), /channel 2: none packet 0 \(packet_num 77\): payload has 4095 bytes, expected 4096/);
  });
});

for (const method of ['zlib', 'zstd'] as const) {
  const skip = method === 'zstd' ? zstdSkip : false;
  const levels = method === 'zlib' ? [0, 1, 6, 9] : [0, 1, 3, 20];
  describe(`multifd compression: ${method}`, { skip }, () => {
    for (const level of levels) {
      it(`level ${level}: random, zero, text and mixed packets round-trip through one persistent stream, decodable by QEMU 7.2's loop`, () => {
        const plan = level === 20 ? PLAN.slice(0, 5) : PLAN;
        const run = send(method, level, plan, 100 + level, false);
        receiveAndCheck(method, run);
        checkQemuCompatible(method, run);
        if (method === 'zlib') {
          // deflateInit(level): zlib header, 32 KiB window; every packet ends with a sync flush.
          assert.equal(run.payloads[0]![0], 0x78);
          assert.equal(((run.payloads[0]![0]! << 8) | run.payloads[0]![1]!) % 31, 0);
          for (const p of run.payloads) assert.deepEqual([...p.subarray(-4)], [0x00, 0x00, 0xff, 0xff]);
          // Only the first packet carries the header: one stream for the channel.
          assert.notEqual(run.payloads[1]![0], 0x78);
        } else {
          assert.deepEqual([...run.payloads[0]!.subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd], 'zstd frame magic');
          assert.ok(run.payloads.slice(1).every((p) => !(p[0] === 0x28 && p[1] === 0xb5 && p[2] === 0x2f && p[3] === 0xfd)), 'one frame for the channel');
        }
        if (level > 0) assert.ok(run.payloads[0]!.length < 128 * PAGE * 0.6, 'text compresses');
        assert.equal(run.codec.stats.packetsCompressed, plan.length);
        assert.equal(run.codec.stats.bytesIn, plan.reduce((a, [, n]) => a + n * PAGE, 0));
      });
    }

    it('many packets through one stream (200 packets of varying size)', () => {
      const prng = new Prng(9);
      const plan: Array<[Kind, number]> = Array.from({ length: 200 }, () => [prng.pick(['text', 'zero', 'mixed', 'random'] as const), prng.range(1, 128)]);
      const run = send(method, 1, plan, 10);
      receiveAndCheck(method, run);
      checkQemuCompatible(method, run);
    });

    it('backs off on random pages (output ≈ input), probes, and resumes compressing when pages compress again', () => {
      const plan: Array<[Kind, number]> = [...Array.from({ length: 60 }, (): [Kind, number] => ['random', 128]), ...Array.from({ length: 40 }, (): [Kind, number] => ['text', 128])];
      const run = send(method, 1, plan, 20);
      const s = run.codec.stats;
      assert.equal(s.backoffs >= 1, true, 'backed off');
      assert.equal(s.packetsCompressed + s.packetsBackedOff, plan.length);
      assert.ok(s.packetsBackedOff >= 40, `most random packets backed off (${s.packetsBackedOff})`);
      assert.ok(s.probes >= 3, `probed (${s.probes})`);
      // Random packets: payload ≈ input + small overhead.
      for (let i = 0; i < 60; i++) {
        const p = run.payloads[i]!.length;
        assert.ok(p >= 128 * PAGE && p <= 128 * PAGE + 256, `random packet ${i}: ${p} bytes`);
      }
      // Back to normal once text arrives: the last packets compress well.
      assert.equal(s.backedOff, false);
      for (const p of run.payloads.slice(-10)) assert.ok(p.length < 128 * PAGE * 0.6);
      receiveAndCheck(method, run);
      checkQemuCompatible(method, run);
    });

    it('probes early when a backed-off packet looks compressible', () => {
      const plan: Array<[Kind, number]> = [...Array.from({ length: 4 }, (): [Kind, number] => ['random', 128]), ...Array.from({ length: 4 }, (): [Kind, number] => ['text', 128])];
      const run = send(method, 1, plan, 25);
      const sizes = run.payloads.map((p) => p.length / (128 * PAGE));
      assert.equal(run.codec.stats.backoffs, 1);
      // zlib changes level before the first text packet, zstd only after it (between frames).
      const firstCompressed = method === 'zlib' ? 4 : 5;
      assert.equal(run.codec.stats.packetsBackedOff, firstCompressed - 2, 'backed off after two random packets until the probe');
      assert.equal(run.codec.stats.probes, 1);
      for (let i = firstCompressed; i < 8; i++) assert.ok(sizes[i]! < 0.6, `text packet ${i} compressed (${sizes[i]})`);
      assert.equal(run.codec.stats.backedOff, false);
      receiveAndCheck(method, run);
      checkQemuCompatible(method, run);
    });

    it('does not back off when told not to, or on compressible data', () => {
      const random = send(method, 1, Array.from({ length: 12 }, (): [Kind, number] => ['random', 128]), 30, false);
      assert.equal(random.codec.stats.packetsBackedOff, 0);
      assert.equal(random.codec.stats.backoffs, 0);
      const text = send(method, 1, Array.from({ length: 12 }, (): [Kind, number] => ['text', 128]), 31);
      assert.equal(text.codec.stats.packetsBackedOff, 0);
      assert.ok(text.codec.stats.bytesOut < text.codec.stats.bytesIn / 2);
    });

    it('rejects a truncated payload, naming channel and packet', () => {
      const run = send(method, 1, [['text', 16], ['text', 16]], 40);
      const c = createMultifdCodec(method, 1, { channel: 3 });
      c.decompressPacket(run.payloads[0]!, 16, new Uint8Array(16 * PAGE));
      const cut = run.payloads[1]!.subarray(0, run.payloads[1]!.length - 20);
      assert.throws(
        () => c.decompressPacket(cut, 16, new Uint8Array(16 * PAGE), 1234),
        (err: unknown) => err instanceof MultifdCompressionError && err.channel === 3 && err.packet === 1 && /channel 3: .* packet 1 \(packet_num 1234\): payload \(\d+ bytes\) yields only \d+ bytes, expected 65536/.test(err.message),
      );
    });

    it('rejects a corrupt payload', () => {
      const garbage = new Uint8Array(5000);
      randomFillSync(garbage);
      garbage[0] = 0x12; // neither a zlib header nor zstd's magic
      const c = createMultifdCodec(method, 1, { channel: 0 });
      assert.throws(() => c.decompressPacket(garbage, 2, new Uint8Array(2 * PAGE), 5), (err: unknown) => err instanceof MultifdCompressionError && /channel 0: .* packet 0 \(packet_num 5\): corrupt payload/.test(err.message));
      // The channel's stream is unusable afterwards, as in QEMU.
      assert.throws(() => c.decompressPacket(garbage, 2, new Uint8Array(2 * PAGE)), MultifdCompressionError);
    });

    it('rejects a payload that yields more or fewer bytes than the header says', () => {
      const run = send(method, 1, [['text', 3]], 50);
      const tooMany = createMultifdCodec(method, 1, { channel: 4 });
      assert.throws(() => tooMany.decompressPacket(run.payloads[0]!, 2, new Uint8Array(3 * PAGE)), /channel 4: .* packet 0: payload yields more than 8192 bytes \(2 pages\)/);
      const tooFew = createMultifdCodec(method, 1, { channel: 4 });
      assert.throws(() => tooFew.decompressPacket(run.payloads[0]!, 4, new Uint8Array(4 * PAGE)), /yields only 12288 bytes, expected 16384 \(4 pages\)/);
      const big = createMultifdCodec(method, 1);
      assert.throws(() => big.decompressPacket(new Uint8Array(MULTIFD_COMPRESSED_MAX + 1), 128, new Uint8Array(128 * PAGE)), /exceeds 1048576 \(QEMU 7.2's buffer\)/);
    });

    it('ignores packets without pages (QEMU never decodes them)', () => {
      const c = createMultifdCodec(method);
      c.decompressPacket(new Uint8Array(10), 0, new Uint8Array(0));
      assert.equal(c.stats.packetsDecompressed, 0);
    });

    it('plugs into the multifd engine registry (codec.ts)', () => {
      const sendCodec = createSendCodec(method, 2)!;
      const recvCodec = createRecvCodec(method)!;
      assert.equal(sendCodec.flags, multifdCompressionFlags(method));
      const prng = new Prng(60);
      for (let i = 0; i < 5; i++) {
        const data = pages('mixed', 32, prng);
        const targets = Array.from({ length: 32 }, () => new Uint8Array(PAGE));
        recvCodec.decode(sendCodec.encode(data), targets);
        assert.ok(Buffer.from(concat(targets)).equals(data));
      }
      sendCodec.close?.();
      recvCodec.close?.();
    });
  });
}

describe('multifd compression: benchmark helper', { skip: zstdSkip }, () => {
  it('reports MB/s and ratio per method (no timing asserted)', () => {
    const r = benchmarkMultifdCompression({ mib: 1, rounds: 1, data: ['random', 'text'] });
    assert.equal(r.length, 6);
    for (const x of r) {
      assert.ok(x.compressMBps > 0 && x.decompressMBps > 0);
      assert.ok(x.ratio > 0 && x.ratio <= 1.01);
    }
  });
});
