/**
 * The push parser of plain multifd channels (recv-direct.ts, what the
 * receive threads drive from their sockets): the same pages and the same
 * errors as the pull loop (recv-channel.ts), whatever the read sizes; reads
 * stop at a SYNC until release(); nothing of a packet's pages is asked for
 * before its header is checked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DenseRamBlock, FixedRamBlockTable } from '../src/ram/index.js';
import { DirectMultifdReceiver, rehearseDirectReceive } from '../src/ram/multifd/recv-direct.js';
import { encodeInitPacket, MULTIFD_FLAG_SYNC, MULTIFD_HEADER_BYTES, receiveMultifdChannel, writePacketHeader, ZERO_UUID, type MultifdError } from '../src/ram/multifd/index.js';
import { MemorySource, StreamReader } from '../src/wire/index.js';

const BLOCK_BYTES = 1 << 20;

function packet(offsets: number[], flags = 0, fill = 0x10, ramblock = 'ram'): Uint8Array {
  const b = new Uint8Array(MULTIFD_HEADER_BYTES + offsets.length * 4096);
  writePacketHeader(b, 0, { flags, normalPages: offsets.length, nextPacketSize: offsets.length * 4096, packetNum: 0, ramblock, offsets });
  for (let i = 0; i < offsets.length; i++) b.fill(fill + i, MULTIFD_HEADER_BYTES + i * 4096, MULTIFD_HEADER_BYTES + (i + 1) * 4096);
  return b;
}

const concat = (...parts: Uint8Array[]): Uint8Array => Buffer.concat(parts);

/** Feed `stream` through next()/filled() in reads of random sizes; releases every SYNC at once. */
function pushAll(stream: Uint8Array, seed: number): { memory: Uint8Array; error: MultifdError | undefined; syncs: number; stops: number } {
  const memory = new Uint8Array(BLOCK_BYTES);
  let syncs = 0;
  let stops = 0;
  const rx = new DirectMultifdReceiver({
    uuid: ZERO_UUID,
    channels: 2,
    table: new FixedRamBlockTable([new DenseRamBlock('ram', memory)]),
    counters: { packets: 0, pages: 0, bytes: 0 },
    onInit: () => {},
    onSync: () => syncs++,
  });
  let x = seed;
  let at = 0;
  try {
    while (at < stream.length) {
      x = (x * 1103515245 + 12345) >>> 0;
      const into = rx.next();
      assert.ok(into.length > 0);
      const n = Math.min(into.length, stream.length - at, 1 + (x % 9000));
      into.set(stream.subarray(at, at + n));
      at += n;
      if (!rx.filled(n)) {
        stops++;
        assert.ok(rx.atSync);
        rx.release();
      }
    }
    rx.end();
    assert.equal(rx.offset, stream.length);
    return { memory, error: undefined, syncs, stops };
  } catch (err) {
    return { memory, error: err as MultifdError, syncs, stops };
  }
}

async function pullAll(stream: Uint8Array): Promise<{ memory: Uint8Array; error: MultifdError | undefined }> {
  const memory = new Uint8Array(BLOCK_BYTES);
  try {
    await receiveMultifdChannel(new StreamReader(new MemorySource(stream, 777)), {
      uuid: ZERO_UUID,
      channels: 2,
      compression: 'none',
      table: new FixedRamBlockTable([new DenseRamBlock('ram', memory)]),
      counters: { packets: 0, pages: 0, bytes: 0 },
      onInit: () => {},
      onSync: async () => {},
      stopped: () => false,
    });
    return { memory, error: undefined };
  } catch (err) {
    return { memory, error: err as MultifdError };
  }
}

const good = concat(
  encodeInitPacket(ZERO_UUID, 1),
  packet([0x3000, 0x4000, 0x5000, 0x9000, 0x1000, 0x2000], 0, 0x20),
  packet([], MULTIFD_FLAG_SYNC),
  packet(Array.from({ length: 128 }, (_, i) => 0x80000 + i * 4096), 0, 0x40),
  packet([0xff000], MULTIFD_FLAG_SYNC, 0x90),
  packet([0x3000], 0, 0x77),
);

test('multifd push parser: same RAM as the pull loop, in any read sizes; stops at each SYNC', async () => {
  const pulled = await pullAll(good);
  assert.equal(pulled.error, undefined);
  for (let seed = 1; seed <= 20; seed++) {
    const pushed = pushAll(good, seed);
    assert.equal(pushed.error, undefined);
    assert.equal(pushed.syncs, 2);
    assert.equal(pushed.stops, 2);
    assert.ok(Buffer.from(pushed.memory).equals(Buffer.from(pulled.memory)), `seed ${seed}`);
  }
  assert.equal(pulled.memory[0x3000], 0x77);
  assert.equal(pulled.memory[0xfffff], 0x90);
});

test('multifd push parser: early bytes (feed) stop at a SYNC and go on after release', () => {
  const memory = new Uint8Array(BLOCK_BYTES);
  let syncs = 0;
  const rx = new DirectMultifdReceiver({ uuid: ZERO_UUID, channels: 2, table: new FixedRamBlockTable([new DenseRamBlock('ram', memory)]), counters: { packets: 0, pages: 0, bytes: 0 }, onInit: () => {}, onSync: () => syncs++ });
  const stream = concat(encodeInitPacket(ZERO_UUID, 0), packet([0x1000], MULTIFD_FLAG_SYNC, 0x31), packet([0x2000], 0, 0x32));
  const first = rx.feed(stream);
  assert.equal(first, 64 + MULTIFD_HEADER_BYTES + 4096);
  assert.equal(syncs, 1);
  assert.ok(rx.atSync);
  assert.equal(rx.feed(stream.subarray(first)), 0);
  rx.release();
  assert.equal(rx.feed(stream.subarray(first)), stream.length - first);
  rx.end();
  assert.equal(memory[0x1000], 0x31);
  assert.equal(memory[0x2fff], 0x32);
});

const bad: Array<[string, Uint8Array]> = [
  ['unknown block', concat(encodeInitPacket(ZERO_UUID, 0), packet([0x1000], 0, 0x10, 'pc.ram'))],
  ['offset beyond the block', concat(encodeInitPacket(ZERO_UUID, 0), packet([0x1000, BLOCK_BYTES]))],
  ['cut inside the pages', concat(encodeInitPacket(ZERO_UUID, 0), packet([0x1000, 0x2000, 0x8000])).subarray(0, 64 + MULTIFD_HEADER_BYTES + 6000)],
  ['cut inside a header', concat(encodeInitPacket(ZERO_UUID, 0), packet([0x1000])).subarray(0, 64 + 100)],
  ['cut inside the init packet', encodeInitPacket(ZERO_UUID, 0).subarray(0, 30)],
  ['compression flag', concat(encodeInitPacket(ZERO_UUID, 0), packet([0x1000], 2))],
];

for (const [name, stream] of bad) {
  test(`multifd push parser: the pull loop's error and offset: ${name}`, async () => {
    const pulled = await pullAll(stream);
    assert.ok(pulled.error);
    for (const seed of [1, 2, 3]) {
      const pushed = pushAll(stream, seed);
      assert.ok(pushed.error);
      assert.equal(pushed.error.message, pulled.error.message);
      // A rejected packet's pages never land.
      if (!name.startsWith('cut')) assert.ok(pushed.memory.every((b) => b === 0));
    }
  });
}

test('a receive thread\'s rehearsal runs the parser over whole packets, one run and 128 runs alternately, without a fault', () => {
  const counters = rehearseDirectReceive(6);
  assert.deepEqual(counters, { packets: 6, pages: 6 * 128, bytes: 6 * (MULTIFD_HEADER_BYTES + 128 * 4096) });
});
