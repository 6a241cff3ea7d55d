/**
 * Multifd (QEMU 7.2 format): packets, livemig -> livemig with a guest that
 * keeps writing (channels in worker threads), the fallback on the main
 * thread, a dropped channel, exec: refused, and bad multifd input.
 */
import { queryMigrate } from '../src/monitor/query-migrate.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { connect } from 'node:net';
import { createTestMachine, type TestMachine } from '../src/machine/index.js';
import { IncomingMigration, OutgoingMigration } from '../src/migration/index.js';
import { DenseRamBlock, FixedRamBlockTable } from '../src/ram/index.js';
import {
  encodeInitPacket,
  MULTIFD_FLAG_SYNC,
  MULTIFD_HEADER_BYTES,
  MULTIFD_PAGES_PER_PACKET,
  MultifdReceiver,
  MultifdSender,
  parseInitPacket,
  parsePacketHeader,
  parseUuid,
  writePacketHeader,
  ZERO_UUID,
} from '../src/ram/multifd/index.js';
import { listenIncoming } from '../src/transport/index.js';
import { MemorySource, StreamReader } from '../src/wire/index.js';

const MiB = 1 << 20;

async function waitUntil(condition: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

test('multifd packets: init packet and header round-trip, QEMU 7.2 layout', () => {
  const uuid = parseUuid('11111111-2222-3333-4444-555555555555');
  const init = encodeInitPacket(uuid, 1);
  assert.equal(Buffer.from(init.subarray(0, 25)).toString('hex'), '1122334400000001111111112222333344445555555555550' + '1');
  assert.ok(init.subarray(25).every((b) => b === 0));
  assert.equal(parseInitPacket(init, uuid, 2), 1);
  assert.equal(MULTIFD_HEADER_BYTES, 1344);
  const buf = new Uint8Array(MULTIFD_HEADER_BYTES);
  const offsets = [0, 0x6000, 0x7000, 0x9f000, 2 ** 40];
  writePacketHeader(buf, 0, { flags: MULTIFD_FLAG_SYNC, normalPages: offsets.length, nextPacketSize: offsets.length * 4096, packetNum: 2 ** 33 + 5, ramblock: 'pc.ram', offsets });
  const h = parsePacketHeader(buf, 0, 0);
  assert.deepEqual({ ...h, offsets: [...h.offsets.subarray(0, h.normalPages)] }, {
    flags: 1, pagesAlloc: MULTIFD_PAGES_PER_PACKET, normalPages: 5, nextPacketSize: 5 * 4096, packetNum: 2 ** 33 + 5, ramblock: 'pc.ram', offsets,
  });
});

async function machines(ramBytes: number, dirtyRate: number): Promise<{ src: TestMachine; dst: TestMachine }> {
  const src = await createTestMachine({ ramSizeBytes: ramBytes, dirtyRatePagesPerSecond: dirtyRate, serialEveryPasses: 1 });
  await waitUntil(() => src.stats().pagesWritten > 1000);
  const dst = await createTestMachine({ ramSizeBytes: ramBytes, startPaused: true });
  return { src, dst };
}

async function migrate(src: TestMachine, dst: TestMachine, channels: number, options: { useWorkers?: boolean } = {}): Promise<{ out: OutgoingMigration; incoming: IncomingMigration; loadedHash: string }> {
  const incoming = new IncomingMigration(dst, { multifd: { channels, ...(options.useWorkers === false ? { useWorkers: false } : {}) } });
  const address = await incoming.listen('tcp:127.0.0.1:0');
  let loadedHash = '';
  incoming.on('loaded', () => (loadedHash = sha(dst.memory)));
  const result = incoming.run();
  const out = new OutgoingMigration(src);
  out.setCapabilities({ multifd: true });
  out.setParameters({ 'multifd-channels': channels, 'downtime-limit': 100 });
  // Keep the sender to check which path ran; with useWorkers false, force the main-thread fallback.
  const original = MultifdSender.open;
  let sender: MultifdSender | undefined;
  MultifdSender.open = async (o) => (sender = await original(options.useWorkers === false ? { ...o, useWorkers: false } : o));
  try {
    out.start(address);
    assert.equal(await out.finished, 'completed', queryMigrate(out)['error-desc']);
  } finally {
    MultifdSender.open = original;
  }
  assert.equal(sender?.workers, options.useWorkers !== false, 'the channels ran where the test says');
  const r = await result;
  assert.equal(r.status, 'completed', r.error?.message);
  assert.equal(incoming.multifdStats?.workerChannels, options.useWorkers === false ? 0 : channels, 'the destination received where the test says');
  assert.equal(incoming.multifdStats?.channels, channels);
  assert.ok(incoming.multifdStats.pages > 0, 'pages arrived on multifd channels');
  return { out, incoming, loadedHash };
}

for (const useWorkers of [true, false]) {
  test(`livemig -> livemig multifd, 3 channels (${useWorkers ? 'worker threads' : 'main-thread fallback'}), guest writing throughout`, { timeout: 60_000 }, async () => {
    const { src, dst } = await machines(32 * MiB, 20_000);
    try {
      const { out, loadedHash } = await migrate(src, dst, 3, { useWorkers });
      const info = queryMigrate(out);
      assert.equal(src.running, false);
      assert.equal(loadedHash, src.ramHash(), 'destination RAM at load equals source RAM at stop');
      // The destination's guest already runs (and writes) here; its RAM at load equals
      // the source's at stop, so QEMU's check runs on the paused source.
      const check = src.checkMemory();
      assert.equal(check.ok, true, check.reason);
      const ram = info.ram!;
      assert.ok(ram['multifd-bytes'] > 8 * MiB, `multifd bytes: ${ram['multifd-bytes']}`);
      assert.ok(ram.transferred >= ram['multifd-bytes'], 'multifd bytes count in transferred');
      assert.ok(ram['dirty-sync-count'] >= 2);
      await waitUntil(() => dst.running);
      const before = dst.stats().pagesWritten;
      await waitUntil(() => dst.stats().pagesWritten > before + 100, 10_000);
    } finally {
      await src.destroy();
      await dst.destroy();
    }
  });
}

test('multifd over exec: fails as QEMU 7.2, guest keeps running', { timeout: 30_000 }, async () => {
  const src = await createTestMachine({ ramSizeBytes: 4 * MiB });
  try {
    const out = new OutgoingMigration(src);
    out.setCapabilities({ multifd: true });
    out.start('exec:cat > /dev/null');
    assert.equal(await out.finished, 'failed');
    assert.equal(queryMigrate(out)['error-desc'], 'multifd is not supported by current protocol');
    assert.equal(src.running, true);
  } finally {
    await src.destroy();
  }
});

type AcceptedChannel = { abort(r?: unknown): void; input: { read(): Promise<Uint8Array | null> } | null };

/**
 * A source migrating 64 MiB with multifd (no return path) to a destination
 * that is not livemig: `serve` gets every connection it accepts (the main one
 * first), with how many came before it, and does what the test wants.
 */
async function migrateToRawDestination(serve: (ch: AcceptedChannel, index: number) => void, check: (out: OutgoingMigration, src: TestMachine) => Promise<void>): Promise<void> {
  const src = await createTestMachine({ ramSizeBytes: 64 * MiB, dirtyRatePagesPerSecond: 0 });
  const listener = await listenIncoming('tcp:127.0.0.1:0', { multiChannel: true });
  const accepted: AcceptedChannel[] = [];
  void (async () => {
    for (;;) {
      const ch = await listener.accept();
      accepted.push(ch);
      serve(ch, accepted.length - 1);
    }
  })().catch(() => {});
  try {
    const out = new OutgoingMigration(src);
    out.setCapabilities({ multifd: true, 'return-path': false });
    out.start(listener.address);
    await check(out, src);
  } finally {
    for (const ch of accepted) ch.abort();
    await listener.close();
    await src.destroy();
  }
}

test('multifd: a dropped channel fails the migration on the source, whose guest keeps running', { timeout: 60_000 }, async () => {
  // A destination that accepts everything, reads slowly, and drops the second connection.
  const serve = (ch: AcceptedChannel, index: number): void => {
    void (async () => {
      while ((await ch.input!.read()) !== null) await new Promise((r) => setTimeout(r, 2));
    })().catch(() => {});
    if (index === 1) setTimeout(() => ch.abort(new Error('dropped')), 200);
  };
  await migrateToRawDestination(serve, async (out, src) => {
    assert.equal(await out.finished, 'failed');
    assert.match(queryMigrate(out)['error-desc'] ?? '', /^multifd channel \d/);
    assert.equal(src.running, true, 'the source guest still runs');
    const before = src.stats().pagesWritten;
    await waitUntil(() => src.stats().pagesWritten > before + 100, 10_000);
  });
});

test('multifd: cancel while every channel is full (a destination that stopped reading) ends it at once, guest on the source', { timeout: 60_000 }, async () => {
  // Reads a little of each connection, then nothing: the sockets fill, then the job rings.
  const serve = (ch: AcceptedChannel): void => void ch.input!.read().catch(() => {});
  await migrateToRawDestination(serve, async (out, src) => {
    // Until the sender has stopped for room: its bytes stop growing while it is active.
    let last = -1;
    await waitUntil(() => {
      const now = queryMigrate(out).ram?.transferred ?? 0;
      const still = out.status === 'active' && now > 0 && now === last;
      last = now;
      return still;
    });
    assert.ok(last < 64 * MiB, `stuck before the end of RAM (${last} bytes)`);
    const cancelledAt = Date.now();
    out.cancel();
    assert.equal(await out.finished, 'cancelled');
    assert.ok(Date.now() - cancelledAt < 2_000, `cancelled within ${Date.now() - cancelledAt} ms`);
    assert.equal(src.running, true, 'the source guest still runs');
  });
});

// ---- bad input on a multifd channel ----

const BLOCK_BYTES = 1 * MiB;

function packet(o: { magic?: number; version?: number; flags?: number; pagesAlloc?: number; normalPages?: number; ramblock?: string; offsets?: number[]; packetNum?: number; payload?: boolean }): Uint8Array {
  const offsets = o.offsets ?? [0];
  const normal = o.normalPages ?? offsets.length;
  const pages = o.payload === false ? 0 : Math.min(normal, offsets.length);
  const b = new Uint8Array(MULTIFD_HEADER_BYTES + pages * 4096);
  writePacketHeader(b, 0, { flags: o.flags ?? 0, normalPages: Math.min(normal, 128), nextPacketSize: pages * 4096, packetNum: o.packetNum ?? 0, ramblock: o.ramblock ?? 'ram', offsets });
  const v = new DataView(b.buffer);
  if (o.magic !== undefined) v.setUint32(0, o.magic);
  if (o.version !== undefined) v.setUint32(4, o.version);
  if (o.pagesAlloc !== undefined) v.setUint32(12, o.pagesAlloc);
  v.setUint32(16, normal);
  for (let i = 0; i < pages; i++) b.fill(0xa0 + i, MULTIFD_HEADER_BYTES + i * 4096, MULTIFD_HEADER_BYTES + (i + 1) * 4096);
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return Buffer.concat(parts);
}

/**
 * Feed channel byte streams to a receiver for 2 channels, then run one sync;
 * the error (or undefined). `via`: 'reader' hands the receiver readers over
 * memory (main-thread path); 'worker' sends each stream over a real loopback
 * connection, reads its first bytes as the destination does to classify it,
 * detaches it and lets a worker thread receive it.
 */
async function receive(streams: Uint8Array[], channels = 2, via: 'reader' | 'worker' = 'reader'): Promise<{ error: Error | undefined; memory: Uint8Array }> {
  const memory = new Uint8Array(via === 'worker' ? new SharedArrayBuffer(BLOCK_BYTES) : new ArrayBuffer(BLOCK_BYTES));
  const receiver = new MultifdReceiver({ channels, table: new FixedRamBlockTable([new DenseRamBlock('ram', memory)]), connectTimeoutMs: 2000 });
  const listener = via === 'worker' ? await listenIncoming('tcp:127.0.0.1:0', { multiChannel: true }) : undefined;
  try {
    for (const s of streams) {
      if (!listener) {
        receiver.addChannel(new StreamReader(new MemorySource(s, 1000)), () => {});
        continue;
      }
      const port = Number(listener.address.split(':').pop());
      const socket = connect(port, '127.0.0.1');
      socket.on('error', () => {});
      socket.end(Buffer.from(s));
      const channel = await listener.accept();
      const reader = new StreamReader(channel.input!);
      await reader.peek(4);
      const detached = channel.detach?.();
      assert.ok(detached, 'the connection can be handed to a worker');
      detached.received.unshift(...reader.takeBuffered());
      receiver.addDetachedChannel(detached);
    }
    assert.equal(receiver.stats.workerChannels, listener ? streams.length : 0);
    let error: Error | undefined;
    try {
      await receiver.syncMain();
    } catch (err) {
      error = err as Error;
    }
    return { error, memory };
  } finally {
    receiver.close();
    await listener?.close();
  }
}

const sync = (n = 1): Uint8Array => packet({ flags: MULTIFD_FLAG_SYNC, offsets: [], normalPages: 0, packetNum: n });

for (const via of ['reader', 'worker'] as const) {
  test(`multifd receiver (${via}): good channels deliver pages straight into RAM and sync`, async () => {
    const { error, memory } = await receive(
      [
        concat(encodeInitPacket(ZERO_UUID, 0), packet({ offsets: [0x3000, 0x5000] }), sync()),
        concat(encodeInitPacket(ZERO_UUID, 1), packet({ offsets: [BLOCK_BYTES - 4096] }), sync()),
      ],
      2,
      via,
    );
    assert.equal(error, undefined);
    assert.equal(memory[0x3000], 0xa0);
    assert.equal(memory[0x5fff], 0xa1);
    assert.equal(memory[BLOCK_BYTES - 1], 0xa0);
    assert.equal(memory[0], 0);
  });
}

const badCases: Array<[string, () => Uint8Array[], RegExp]> = [
  ['wrong magic (init)', () => [concat(Uint8Array.of(0x11, 0x22, 0x33, 0x45), encodeInitPacket(ZERO_UUID, 0).subarray(4))], /multifd channel at offset 0 \(0x0\): multifd: received packet magic 11223345 expected 11223344/],
  ['wrong version (init)', () => { const b = encodeInitPacket(ZERO_UUID, 0); b[7] = 2; return [b]; }, /offset 4 .*received packet version 2 expected 1/],
  ['wrong uuid', () => [encodeInitPacket(parseUuid('11111111-2222-3333-4444-555555555555'), 1)], /multifd channel 1 at offset 8 .*received uuid '11111111-2222-3333-4444-555555555555' and expected uuid '00000000-0000-0000-0000-000000000000' for channel 1/],
  ['channel id out of range', () => [encodeInitPacket(ZERO_UUID, 2)], /multifd channel 2 at offset 24 .*received channel id 2 is greater than number of channels 2/],
  // Both with a SYNC: the first channel must not end (another error) before the second one's init is read.
  ['duplicate channel id', () => [concat(encodeInitPacket(ZERO_UUID, 0), sync()), concat(encodeInitPacket(ZERO_UUID, 0), sync())], /multifd channel 0 at offset 24 .*received id '0' already setup/],
  ['wrong packet magic', () => [concat(encodeInitPacket(ZERO_UUID, 0), packet({ magic: 0x5145564d }))], /multifd channel 0 at offset 64 .*received packet magic 5145564d and expected magic 11223344/],
  ['too many pages (pages_alloc)', () => [concat(encodeInitPacket(ZERO_UUID, 0), packet({ pagesAlloc: 129, normalPages: 129, payload: false }))], /multifd channel 0 at offset 76 .*received packet with 129 pages and expected maximum pages are 128/],
  ['more pages than allocated', () => [concat(encodeInitPacket(ZERO_UUID, 0), packet({ pagesAlloc: 4, normalPages: 5, payload: false }))], /multifd channel 0 at offset 80 .*received packet with 5 pages and expected maximum pages are 4/],
  ['offset beyond the block', () => [concat(encodeInitPacket(ZERO_UUID, 0), packet({ offsets: [0, BLOCK_BYTES] }))], /multifd channel 0 at offset 392 .*offset too long 100000 \(max 100000\)/],
  ['unknown block name', () => [concat(encodeInitPacket(ZERO_UUID, 0), packet({ ramblock: 'pc.ram' }))], /multifd channel 0 at offset 128 .*unknown ram block pc\.ram/],
  ['compression flag not negotiated', () => [concat(encodeInitPacket(ZERO_UUID, 0), packet({ flags: 2 }))], /multifd channel 0 at offset 72 .*flags received 2 flags expected 0/],
  ['packet cut short', () => [concat(encodeInitPacket(ZERO_UUID, 0), packet({ offsets: [0, 4096] }).subarray(0, MULTIFD_HEADER_BYTES + 5000))], /multifd channel 0 at offset \d+ .*ended inside a packet/],
  ['channel ends before its SYNC', () => [concat(encodeInitPacket(ZERO_UUID, 0), sync()), encodeInitPacket(ZERO_UUID, 1)], /multifd channel 1 at offset 64 .*ended before its SYNC/],
  ['init packet cut short', () => [encodeInitPacket(ZERO_UUID, 0).subarray(0, 30)], /multifd channel at offset 0 .*ended inside a packet or init packet/],
];

for (const via of ['reader', 'worker'] as const) {
  for (const [name, streams, message] of badCases) {
    test(`multifd receiver (${via}) rejects bad input: ${name}`, async () => {
      const { error } = await receive(streams(), 2, via);
      assert.ok(error, 'an error');
      assert.match(error.message, message);
    });
  }
}

test('multifd receiver: a channel that never connects fails the sync after the timeout', async () => {
  const started = Date.now();
  const { error } = await receive([concat(encodeInitPacket(ZERO_UUID, 0), sync())]);
  assert.match(error?.message ?? '', /multifd channel 1 of 2 did not connect/);
  assert.ok(Date.now() - started < 5000);
});
