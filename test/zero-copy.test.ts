/**
 * Zero-copy sending of guest RAM: StreamWriter.lend over a real socket (one
 * writev per batch, bytes identical to the copying path), copies for sinks
 * that keep chunks, the accounting of lent bytes, which pages the RAM save
 * handler lends (guest RAM) and which it copies (XBZRLE cache entries,
 * blocks without stable memory), and multifd packets sent from guest RAM by
 * the worker threads: byte for byte as the copying main-thread path, and
 * livemig -> livemig migrations with a guest writing throughout.
 */
import { describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomFillSync } from 'node:crypto';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { createTestMachine, type TestMachine } from '../src/machine/index.js';
import { IncomingMigration, OutgoingMigration } from '../src/migration/index.js';
import { DenseRamBlock, FixedRamBlockTable, RamLoadHandler, RamSaveHandler, SparseRamBlock, type RamBlock } from '../src/ram/index.js';
import { MultifdSender } from '../src/ram/multifd/index.js';
import type { LoadSectionContext, SectionKind } from '../src/savevm/handlers.js';
import { NodeWritableSink } from '../src/transport/stream-io.js';
import { MemorySink, MemorySource, StreamReader, StreamWriter, type ByteSink } from '../src/wire/index.js';
import { LEND_MIN_BYTES, WRITER_CHUNK_BYTES } from '../src/wire/writer.js';
import { Prng } from './helpers/prng.js';

const PAGE = 4096;
const MiB = 1 << 20;

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function waitUntil(condition: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Guest-like memory: a SharedArrayBuffer of random bytes. */
function sharedRandom(bytes: number, seed: number): { sab: SharedArrayBuffer; memory: Uint8Array } {
  const sab = new SharedArrayBuffer(bytes);
  const memory = new Uint8Array(sab);
  memory.set(new Prng(seed).bytes(bytes));
  return { sab, memory };
}

/** A listening TCP server on 127.0.0.1 that keeps every connection's bytes until it ends; stop() closes everything. */
async function collectingServer(): Promise<{ port: number; connections: Array<Promise<Buffer>>; stop(): void }> {
  const connections: Array<Promise<Buffer>> = [];
  const sockets: Socket[] = [];
  const server: Server = createServer((socket) => {
    sockets.push(socket);
    connections.push(
      new Promise((resolve, reject) => {
        const parts: Buffer[] = [];
        socket.on('data', (d: Buffer) => parts.push(d));
        socket.on('end', () => {
          resolve(Buffer.concat(parts));
          socket.end();
        });
        socket.on('error', reject);
      }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const stop = (): void => {
    server.close();
    for (const socket of sockets) socket.destroy();
  };
  return { port: (server.address() as AddressInfo).port, connections, stop };
}

/** A socket to a collecting server, as a NodeWritableSink; `received` resolves with everything sent once the sink is closed. */
async function socketSink(): Promise<{ sink: NodeWritableSink; socket: Socket; received: Promise<Buffer>; stop(): void }> {
  const server = await collectingServer();
  const socket = connect({ host: '127.0.0.1', port: server.port });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  await waitUntil(() => server.connections.length === 1);
  const sink = new NodeWritableSink(socket, { what: 'test socket', signal: new AbortController().signal });
  const stop = (): void => {
    socket.destroy();
    server.stop();
  };
  return { sink, socket, received: server.connections[0]!, stop };
}

/** Passes everything to `inner`, recording each writeSegments batch (offered only when `inner` has it). */
class RecordingSink implements ByteSink {
  readonly batches: Uint8Array[][] = [];
  readonly writeSegments: ByteSink['writeSegments'];
  constructor(private readonly inner: ByteSink) {
    if (inner.writeSegments) {
      const writeSegments = inner.writeSegments.bind(inner);
      this.writeSegments = (segments, release) => {
        this.batches.push([...segments]);
        return writeSegments(segments, release);
      };
    }
  }
  write(chunk: Uint8Array): Promise<void> {
    return this.inner.write(chunk);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * A sink that lends like a socket: writeSegments copies each segment at once
 * (as the OS would) and releases. The writer's own chunks are in slabs from
 * Buffer.allocUnsafeSlow (plain ArrayBuffers of at least a chunk): any other
 * segment is a caller's lent view.
 */
class SegmentSink implements ByteSink {
  private readonly memory = new MemorySink();
  /** Lengths of the segments that were views of `guest`. */
  lentLengths: number[] = [];
  /** Lent segments from anywhere else (an XBZRLE cache entry, a sparse block's page). */
  foreignLent = 0;
  constructor(private readonly guest: ArrayBufferLike | undefined) {}
  async write(chunk: Uint8Array): Promise<void> {
    await this.memory.write(chunk.slice());
  }
  async writeSegments(segments: readonly Uint8Array[], release?: () => void): Promise<void> {
    for (const s of segments) {
      if (s.buffer === this.guest) this.lentLengths.push(s.length);
      else if (s.buffer.byteLength < WRITER_CHUNK_BYTES) this.foreignLent++;
      await this.memory.write(s.slice());
    }
    release?.();
  }
  async close(): Promise<void> {}
  bytes(): Uint8Array {
    return this.memory.bytes();
  }
}

type Op = { kind: 'u8'; value: number } | { kind: 'be64'; value: bigint } | { kind: 'bytes'; data: Uint8Array } | { kind: 'lend'; at: number; length: number } | { kind: 'drain' } | { kind: 'flush' };

/**
 * Interleaved small writes and lent views of `memory` (chunk size `chunkBytes`):
 * fixed edge cases first (empty and short views, views larger than a chunk,
 * a lend right at a chunk boundary, lends back to back), then random ones,
 * past several slabs.
 */
function script(memory: Uint8Array, chunkBytes: number, seed: number): Op[] {
  const prng = new Prng(seed);
  const view = (length: number): Op => ({ kind: 'lend', at: prng.int(memory.length - length), length });
  const ops: Op[] = [
    { kind: 'u8', value: 1 },
    { kind: 'lend', at: 0, length: 0 },
    { kind: 'lend', at: 5, length: LEND_MIN_BYTES - 1 },
    { kind: 'lend', at: 7, length: LEND_MIN_BYTES },
    { kind: 'be64', value: 0x0102030405060708n },
    { kind: 'lend', at: 3, length: 3 * chunkBytes + 17 },
    { kind: 'lend', at: 9, length: 2 * chunkBytes },
    { kind: 'u8', value: 2 },
    // A chunk filled exactly (the writer rotates lazily), then a lend.
    { kind: 'flush' },
    { kind: 'bytes', data: new Prng(seed + 1).bytes(chunkBytes) },
    { kind: 'lend', at: PAGE, length: PAGE },
    // A lend as the first thing of a chunk, and one more straight after it.
    { kind: 'flush' },
    { kind: 'lend', at: 2 * PAGE, length: PAGE },
    { kind: 'lend', at: 3 * PAGE + 1, length: PAGE },
    { kind: 'drain' },
    { kind: 'lend', at: 11, length: 0 },
    { kind: 'u8', value: 3 },
  ];
  let bytes = 0;
  while (bytes < 3 * MiB) {
    const r = prng.next();
    if (r < 0.3) ops.push({ kind: 'be64', value: prng.bigBits(64) });
    else if (r < 0.4) ops.push({ kind: 'u8', value: prng.int(256) });
    else if (r < 0.5) ops.push({ kind: 'bytes', data: prng.bytes(prng.range(0, 3000)) });
    else if (r < 0.8) ops.push(view(PAGE));
    else if (r < 0.9) ops.push(view(prng.range(0, 3 * chunkBytes)));
    else if (r < 0.95) ops.push({ kind: 'drain' });
    else ops.push({ kind: 'flush' });
    const op = ops[ops.length - 1]!;
    bytes += op.kind === 'lend' ? op.length : op.kind === 'bytes' ? op.data.length : 8;
  }
  return ops;
}

/** Runs the script; returns the bytes it should produce. */
async function play(w: StreamWriter, memory: Uint8Array, ops: readonly Op[]): Promise<Buffer> {
  const expected: Uint8Array[] = [];
  for (const op of ops) {
    switch (op.kind) {
      case 'u8':
        w.u8(op.value);
        expected.push(Uint8Array.of(op.value));
        break;
      case 'be64': {
        w.be64(op.value);
        const b = Buffer.alloc(8);
        b.writeBigUInt64BE(op.value);
        expected.push(b);
        break;
      }
      case 'bytes':
        w.bytes(op.data);
        expected.push(op.data);
        break;
      case 'lend': {
        const before = w.bytesWritten;
        w.lend(memory.subarray(op.at, op.at + op.length));
        assert.equal(w.bytesWritten, before + op.length, 'bytesWritten counts a lent view at once');
        expected.push(memory.slice(op.at, op.at + op.length));
        break;
      }
      case 'drain':
        await w.drain();
        break;
      case 'flush':
        await w.flush();
        assert.equal(w.pendingBytes, 0);
        break;
    }
  }
  return Buffer.concat(expected);
}

describe('StreamWriter.lend', () => {
  for (const chunkBytes of [4096, 65536]) {
    it(`over a real socket delivers exactly what the copying path does (chunks of ${chunkBytes} bytes)`, { timeout: 30_000 }, async () => {
      const { sab, memory } = sharedRandom(4 * MiB, 1);
      const ops = script(memory, chunkBytes, chunkBytes);

      const copySink = new MemorySink();
      const copying = new StreamWriter(copySink, chunkBytes);
      const expected = await play(copying, memory, ops);
      await copying.flush();
      assert.ok(Buffer.from(copySink.bytes()).equals(expected), 'the copying path writes the script');

      const { sink, received, stop } = await socketSink();
      try {
        const recording = new RecordingSink(sink);
        const w = new StreamWriter(recording, chunkBytes);
        await play(w, memory, ops);
        assert.equal(w.bytesWritten, expected.length);
        await w.close();
        const got = await received;
        assert.equal(got.length, expected.length);
        assert.ok(got.equals(expected), 'the socket received the same bytes');
        const segments = recording.batches.flat();
        const lent = segments.filter((s) => s.buffer === sab);
        assert.ok(lent.length > 100, `views of guest memory went to the socket as they are (${lent.length})`);
        assert.ok(lent.every((s) => s.length >= LEND_MIN_BYTES), 'short views are copied');
        assert.ok(segments.every((s) => s.length > 0), 'no empty segments');
        assert.equal(segments.reduce((n, s) => n + s.length, 0), expected.length);
      } finally {
        stop();
      }
    });
  }

  it('a drain of 1 MiB of page records is one writeSegments call (one writev) of about 512 segments', { timeout: 30_000 }, async () => {
    const { sab, memory } = sharedRandom(2 * MiB, 2);
    const { sink, received, stop } = await socketSink();
    try {
      const recording = new RecordingSink(sink);
      const w = new StreamWriter(recording);
      const records = 255; // 255 × (8 + 4096) bytes: just under the 1 MiB chunk
      for (let i = 0; i < records; i++) w.be64(i * PAGE + 8).lend(memory.subarray(i * PAGE, (i + 1) * PAGE));
      assert.equal(recording.batches.length, 0, 'nothing is written before the drain');
      await w.flush();
      assert.equal(recording.batches.length, 1);
      assert.equal(recording.batches[0]!.length, 2 * records);
      assert.equal(recording.batches[0]!.filter((s) => s.buffer === sab).length, records);

      // 4 MiB: batches of about a chunk each, within IOV_MAX.
      recording.batches.length = 0;
      for (let i = 0; i < 1024; i++) w.be64(i).lend(memory.subarray((i % 512) * PAGE, (i % 512 + 1) * PAGE));
      await w.drain();
      assert.ok(recording.batches.length >= 4 && recording.batches.length <= 5, `batches: ${recording.batches.length}`);
      for (const batch of recording.batches) assert.ok(batch.length <= 1024 && batch.reduce((n, s) => n + s.length, 0) <= MiB + PAGE);
      assert.equal(recording.batches.flat().filter((s) => s.buffer === sab).length, 1024);
      await w.close();
      assert.equal((await received).length, records * (8 + PAGE) + 1024 * (8 + PAGE));
    } finally {
      stop();
    }
  });

  it('a MemorySink gets copies: changing the lent memory afterwards changes nothing it holds', async () => {
    const { memory } = sharedRandom(64 * 1024, 3);
    const original = memory.slice(0, 3 * PAGE);
    const sink = new MemorySink();
    const w = new StreamWriter(sink, 4096);
    w.u8(9).lend(memory.subarray(0, PAGE)).lend(memory.subarray(PAGE, 3 * PAGE));
    memory.fill(0xaa, 0, 3 * PAGE); // before the flush
    await w.flush();
    memory.fill(0x55, 0, 3 * PAGE); // after it
    const bytes = sink.bytes();
    assert.equal(bytes.length, 1 + 3 * PAGE);
    assert.equal(bytes[0], 9);
    assert.ok(Buffer.from(bytes.subarray(1)).equals(original));
  });

  it('pendingBytes and bytesWritten count lent bytes, for lending and copying sinks', { timeout: 30_000 }, async () => {
    const { memory } = sharedRandom(64 * 1024, 4);
    const { sink, received, stop } = await socketSink();
    try {
      for (const [name, target] of [['socket', sink], ['memory', new MemorySink()]] as const) {
        const w = new StreamWriter(target);
        w.u8(1).lend(memory.subarray(0, PAGE)).u8(2);
        assert.equal(w.pendingBytes, PAGE + 2, name);
        assert.equal(w.bytesWritten, PAGE + 2, name);
        w.lend(memory.subarray(PAGE, 3 * PAGE));
        assert.equal(w.pendingBytes, 3 * PAGE + 2, name);
        await w.drain();
        // The socket writer queued the lent views apart (all handed over but for the last
        // partial chunk); the memory writer copied them into its partial chunk, which a drain keeps.
        assert.equal(w.pendingBytes, name === 'socket' ? 0 : 3 * PAGE + 2, name);
        assert.equal(w.bytesWritten, 3 * PAGE + 2, name);
        w.u8(3);
        await w.flush();
        assert.equal(w.pendingBytes, 0, name);
        assert.equal(w.bytesWritten, 3 * PAGE + 3, name);
      }
      await sink.close();
      assert.equal((await received).length, 3 * PAGE + 3);
    } finally {
      stop();
    }
  });
});

function context(kind: SectionKind): LoadSectionContext {
  return { kind, versionId: 4, idstr: 'ram', instanceId: 0, sectionId: 2, offset: 0 };
}

/** Saves `source` section by section through SegmentSinks (lending like a socket) and loads each into `dest`. */
function saveLoad(source: RamBlock, dest: RamBlock, lentFrom: ArrayBufferLike | undefined, xbzrle: boolean) {
  const dirty: number[] = [];
  const saver = new RamSaveHandler([source], {
    xbzrle,
    lendPages: true,
    maxIterateMs: Infinity,
    syncDirtyLog: (h) => {
      for (const p of dirty) h.markDirty(source.idstr, p);
      dirty.length = 0;
    },
  });
  const loader = new RamLoadHandler(new FixedRamBlockTable([dest]));
  loader.loadSetup();
  /** Lengths of lent guest-memory segments per section. */
  const lent: number[][] = [];
  async function transfer(kind: SectionKind, write: (out: StreamWriter) => Promise<unknown>): Promise<void> {
    const sink = new SegmentSink(lentFrom);
    const out = new StreamWriter(sink);
    await write(out);
    await out.flush();
    lent.push(sink.lentLengths);
    assert.equal(sink.foreignLent, 0, `${kind}: only guest memory is lent`);
    const reader = new StreamReader(new MemorySource(sink.bytes(), 777));
    await loader.loadState(reader, context(kind));
    assert.ok(await reader.atEnd(), `${kind} body fully consumed`);
  }
  const pass = (): Promise<void> => transfer('part', async (out) => assert.equal(await saver.saveIterate(out, () => false), true));
  return { saver, dirty, lent, transfer, pass };
}

describe('RAM save handler: lends guest RAM, copies XBZRLE cache entries and unstable memory', () => {
  it('dense block over a SharedArrayBuffer: pages lent while no cache entry is sent, copied from the cache', async () => {
    const pages = 64;
    const { sab, memory } = sharedRandom(pages * PAGE, 5);
    for (let p = 0; p < pages; p += 8) memory.fill(0, p * PAGE, (p + 1) * PAGE); // zero pages: ZERO records
    const source = new DenseRamBlock('pc.ram', memory);
    assert.equal(source.stableMemory, true);
    const destMemory = new Uint8Array(pages * PAGE).fill(0xee);
    const { saver, dirty, lent, transfer, pass } = saveLoad(source, new DenseRamBlock('pc.ram', destMemory), sab, true);
    const same = (): boolean => Buffer.from(memory).equals(destMemory);

    await transfer('start', (out) => saver.saveSetup(out));
    await pass();
    assert.ok(same());
    assert.deepEqual(lent.at(-1), new Array(pages - pages / 8).fill(PAGE), 'first pass: every non-zero page lent');

    // Pass 2: XBZRLE is on, the pages are cache misses; what is sent is the cache's copy.
    const touched = [1, 2, 3, 4, 5];
    const rewrite = (p: number, seed: number): void => memory.set(new Prng(seed).bytes(PAGE), p * PAGE);
    for (const p of touched) {
      memory[p * PAGE + 100]! ^= 1;
      dirty.push(p);
    }
    await saver.statePending(true);
    await pass();
    assert.ok(same());
    assert.equal(saver.stats.xbzrle.cacheMiss, touched.length);
    assert.deepEqual(lent.at(-1), [], 'cache entries are copied');

    // Pass 3: hits. Small changes (XBZRLE records) and a page rewritten (overflow: the cache entry as PAGE).
    memory[1 * PAGE + 7]! ^= 0xff;
    rewrite(2, 50);
    dirty.push(1, 2);
    await saver.statePending(true);
    await pass();
    assert.ok(same());
    assert.equal(saver.stats.xbzrle.overflow, 1);
    assert.deepEqual(lent.at(-1), [], 'an overflow sends the cache entry: copied');

    // Completion, guest stopped: a page never cached (miss, no insert) is guest RAM again: lent.
    rewrite(9, 51);
    dirty.push(9);
    await transfer('end', (out) => saver.saveCompletePrecopy(out));
    assert.ok(same());
    assert.deepEqual(lent.at(-1), [PAGE]);
  });

  it('blocks without stable memory are copied: sparse blocks, dense blocks over an ArrayBuffer (unless told otherwise)', async () => {
    const pages = 16;
    const data = new Prng(6).bytes(pages * PAGE);

    const sparse = new SparseRamBlock('pc.ram', pages * PAGE);
    for (let p = 1; p < pages; p += 2) sparse.writePage(p, data.subarray(p * PAGE, (p + 1) * PAGE));
    assert.equal(sparse.stableMemory, false);

    const plain = new Uint8Array(data);
    const unstable = new DenseRamBlock('pc.ram', plain);
    assert.equal(unstable.stableMemory, false);
    const vouched = new DenseRamBlock('pc.ram', plain, { stableMemory: true });

    for (const [name, block, lentFrom, lentPages] of [
      ['sparse', sparse, undefined, 0],
      ['dense over an ArrayBuffer', unstable, plain.buffer, 0],
      ['dense over an ArrayBuffer, stableMemory: true', vouched, plain.buffer, pages],
    ] as const) {
      const dest = new Uint8Array(pages * PAGE).fill(0xee);
      const { saver, lent, transfer, pass } = saveLoad(block, new DenseRamBlock('pc.ram', dest), lentFrom, false);
      await transfer('start', (out) => saver.saveSetup(out));
      await pass();
      await transfer('end', (out) => saver.saveCompletePrecopy(out));
      for (let p = 0; p < pages; p++) assert.ok(Buffer.from(block.pageView(p)).equals(dest.subarray(p * PAGE, (p + 1) * PAGE)), `${name}: page ${p}`);
      assert.equal(lent.flat().length, lentPages, name);
    }
  });
});

describe('multifd worker channels send pages from guest RAM', () => {
  it('packets on the wire are byte for byte those of the copying main-thread channels', { timeout: 60_000 }, async () => {
    const a = sharedRandom(8 * MiB, 7);
    const b = sharedRandom(1 * MiB, 8);
    const blocks = [new DenseRamBlock('pc.ram', a.memory), new DenseRamBlock('vga.vram', b.memory)];
    // Runs of consecutive pages, single pages, out-of-order pages, block changes, partial packets and syncs.
    const prng = new Prng(9);
    const plan: Array<[number, number] | 'sync'> = [];
    for (let i = 0; i < 2000; i++) {
      const r = prng.next();
      if (r < 0.01) plan.push('sync');
      else if (r < 0.1) plan.push([1, prng.int(256)]);
      else {
        const start = prng.int(2048 - 40);
        const run = prng.range(1, 40);
        for (let k = 0; k < run; k++) plan.push([0, start + k]);
      }
    }
    const wire: Buffer[] = [];
    for (const useWorkers of [true, false]) {
      const { port, connections, stop } = await collectingServer();
      try {
        const sender = await MultifdSender.open({ uri: `tcp:127.0.0.1:${port}`, channels: 1, blocks, useWorkers });
        assert.equal(sender.workers, useWorkers);
        for (const step of plan) {
          if (step === 'sync') await sender.sync();
          else {
            sender.queuePage(step[0], step[1] * PAGE);
            if (sender.mustWait) await sender.waitForRoom();
          }
        }
        await sender.sync();
        await sender.finish();
        assert.equal(connections.length, 1);
        wire.push(await connections[0]!);
        sender.abort(new Error('done'));
      } finally {
        stop();
      }
    }
    assert.ok(wire[0]!.length > 8 * MiB, `bytes on the wire: ${wire[0]!.length}`);
    assert.equal(wire[0]!.length, wire[1]!.length);
    assert.ok(wire[0]!.equals(wire[1]!), 'worker (zero-copy) and main-thread (copying) channels send the same bytes');
  });
});

async function migrateInProcess(src: TestMachine, dst: TestMachine, multifd: { channels: number; compression?: 'none' | 'zlib' } | undefined): Promise<string> {
  const incoming = new IncomingMigration(dst, multifd ? { multifd } : {});
  const address = await incoming.listen('tcp:127.0.0.1:0');
  let loadedHash = '';
  incoming.on('loaded', () => (loadedHash = sha(dst.memory)));
  const result = incoming.run();
  const out = new OutgoingMigration(src);
  out.setParameters({ 'downtime-limit': 100 });
  if (multifd) {
    out.setCapabilities({ multifd: true });
    out.setParameters({ 'multifd-channels': multifd.channels, 'multifd-compression': multifd.compression ?? 'none' });
  }
  out.start(address);
  assert.equal(await out.finished, 'completed', out.query()['error-desc']);
  const r = await result;
  assert.equal(r.status, 'completed', r.error?.message);
  return loadedHash;
}

for (const [name, multifd] of [
  ['one channel (page records lent to the socket)', undefined],
  ['multifd, 2 worker channels', { channels: 2 }],
  ['multifd, 2 worker channels, zlib (the copying path)', { channels: 2, compression: 'zlib' as const }],
] as const) {
  test(`livemig -> livemig over TCP, ${name}, guest writing throughout: RAM byte for byte`, { timeout: 120_000 }, async () => {
    const ramBytes = 32 * MiB;
    // The guest rewrites [1 MiB, 16 MiB) the whole time; the upper half holds random pages it never touches.
    const src = await createTestMachine({ ramSizeBytes: ramBytes, rangeEndBytes: ramBytes / 2, dirtyRatePagesPerSecond: 20_000, serialEveryPasses: 1 });
    const dst = await createTestMachine({ ramSizeBytes: ramBytes, startPaused: true });
    try {
      randomFillSync(src.memory.subarray(ramBytes / 2));
      await waitUntil(() => src.stats().pagesWritten > 1000);
      const loadedHash = await migrateInProcess(src, dst, multifd);
      assert.equal(src.running, false);
      assert.equal(loadedHash, src.ramHash(), 'destination RAM at load equals source RAM at stop');
      const check = src.checkMemory();
      assert.equal(check.ok, true, check.reason);
    } finally {
      await src.destroy();
      await dst.destroy();
    }
  });
}
