/**
 * Zero-copy sending of guest RAM: by the multifd worker threads (headers and
 * page runs in one writev), byte for byte what the copying main-thread path
 * sends; by the main channel (ByteSink.writeGather over a socket: headers
 * and pages in one writev); and livemig -> livemig migrations with a guest
 * writing throughout (one channel, in place; multifd; multifd with
 * compression, which copies).
 */
import { queryMigrate } from '../src/monitor/query-migrate.js';
import { describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomFillSync } from 'node:crypto';
import { createServer, Socket, type AddressInfo, type Server } from 'node:net';
import { createTestMachine, type TestMachine } from '../src/machine/index.js';
import { IncomingMigration, OutgoingMigration } from '../src/migration/index.js';
import { DenseRamBlock } from '../src/ram/index.js';
import { MultifdSender } from '../src/ram/multifd/index.js';
import { connectOutgoing } from '../src/transport/index.js';
import { socketChannel } from '../src/transport/channel.js';
import { NodeWritableSink } from '../src/transport/stream-io.js';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { TLSSocket } from 'node:tls';
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

/**
 * A listening TCP server on 127.0.0.1 that keeps every connection's bytes until it ends; stop() closes everything.
 * `paused`: each connection is accepted but not read until the test resumes its socket (a stalled reader).
 */
async function collectingServer(options: { paused?: boolean } = {}): Promise<{ port: number; connections: Array<Promise<Buffer>>; sockets: Socket[]; stop(): void }> {
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
        if (options.paused) socket.pause();
      }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const stop = (): void => {
    server.close();
    for (const socket of sockets) socket.destroy();
  };
  return { port: (server.address() as AddressInfo).port, connections, sockets, stop };
}

describe('the main channel sends guest pages in place (writeGather)', () => {
  it('a TLS socket gets no gathered writes: its bytes are encrypted in Node, never written to the descriptor', () => {
    const tls = new TLSSocket(new Socket());
    const channel = socketChannel(tls, 'tcp:127.0.0.1:1', 'tcp');
    assert.equal(channel.output!.writeGather, undefined);
    channel.abort();
    channel.closed.catch(() => {});
  });

  it("exec: gathers too (the child's stdin is a pipe with a descriptor): 4 MiB of views reach the command in order", { timeout: 30_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livemig-exec-gather-'));
    try {
      const file = join(dir, 'out');
      const { memory } = sharedRandom(4 * MiB, 13);
      const pieces: Uint8Array[] = [];
      for (let at = 0; at < memory.length; at += PAGE) pieces.push(Buffer.from([(at >>> 12) & 0xff, 0xee]), memory.subarray(at, at + PAGE));
      const channel = await connectOutgoing(`exec:cat > '${file}'`);
      const output = channel.output!;
      assert.equal(typeof output.writeGather, 'function', 'an exec channel gathers');
      await output.writeGather!(pieces);
      await channel.close();
      assert.ok((await readFile(file)).equals(Buffer.concat(pieces)), 'the command got every byte in order');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a stream whose descriptor is gone (destroyed, handed to another thread) gets the pieces copied into one chunk, in order', async () => {
    const chunks: Buffer[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        chunks.push(Buffer.from(chunk));
        callback();
      },
    });
    const sink = new NodeWritableSink(stream, { what: 'test', signal: new AbortController().signal, descriptor: () => undefined });
    const { memory } = sharedRandom(64 * 1024, 12);
    const pieces = [Buffer.from('head'), memory.subarray(0, 4096), Buffer.from('mid'), memory.subarray(8192, 65536)];
    await sink.writeGather!(pieces);
    assert.equal(chunks.length, 1, 'one write');
    assert.ok(chunks[0]!.equals(Buffer.concat(pieces)));
  });

  it('over a real socket whose reader stalls: every byte in order after a plain write, settling only once the OS took the last piece', { timeout: 60_000 }, async () => {
    // 16 MiB of "guest RAM" as 4 KiB views between 8-byte headers: far more than the socket buffers hold.
    const { memory } = sharedRandom(16 * MiB, 11);
    const first = Buffer.from('before the pages; ');
    const pieces: Uint8Array[] = [];
    const expected: Buffer[] = [first];
    for (let at = 0; at < memory.length; at += PAGE) {
      const header = Buffer.alloc(8);
      header.writeUInt32BE(at | 8, 4);
      pieces.push(header, memory.subarray(at, at + PAGE));
      expected.push(header, Buffer.from(memory.buffer, at, PAGE));
    }
    const { port, connections, sockets, stop } = await collectingServer({ paused: true });
    let got: Buffer;
    let settled = false;
    try {
      const channel = await connectOutgoing(`tcp:127.0.0.1:${port}`);
      const output = channel.output!;
      assert.ok(output.writeGather, 'a plain socket gathers');
      await output.write(first);
      const gathered = output.writeGather(pieces).then(() => (settled = true));
      await waitUntil(() => sockets.length === 1);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(settled, false, 'with the reader stalled, the OS cannot have taken 16 MiB');
      sockets[0]!.resume();
      await gathered;
      await channel.close();
      got = await connections[0]!;
    } finally {
      stop();
    }
    assert.equal(got.length, first.length + 16 * MiB + (16 * MiB / PAGE) * 8);
    assert.ok(got.equals(Buffer.concat(expected)), 'the reader got every byte in order');
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
    // The thread writes straight to the descriptor while the socket takes it; a reader that stalls for a while sends
    // the rest through Node (EAGAIN, partial writes): the bytes must be the same.
    for (const { useWorkers, stall } of [{ useWorkers: true, stall: false }, { useWorkers: false, stall: false }, { useWorkers: true, stall: true }]) {
      const { port, connections, sockets, stop } = await collectingServer({ paused: stall });
      if (stall) void waitUntil(() => sockets.length === 1).then(() => setTimeout(() => sockets[0]!.resume(), 300));
      try {
        const sender = await MultifdSender.open({ connect: () => connectOutgoing(`tcp:127.0.0.1:${port}`), channels: 1, blocks, useWorkers });
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
    assert.ok(wire[2]!.equals(wire[1]!), 'a worker channel whose reader stalled sends the same bytes');
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
  assert.equal(await out.finished, 'completed', queryMigrate(out)['error-desc']);
  const r = await result;
  assert.equal(r.status, 'completed', r.error?.message);
  return loadedHash;
}

for (const [name, multifd] of [
  ['one channel', undefined],
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
