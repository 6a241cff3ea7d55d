import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Socket } from 'node:net';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  MemorySink,
  MemorySource,
  StreamError,
  StreamReader,
  StreamWriter,
  UnexpectedEndError,
  unwrittenPieces,
} from '../src/wire/index.js';
import { sharedSlabCount } from '../src/wire/writer.js';
import { FileSink, FileSource, ReadableSource, WritableSink } from '../src/wire/node-channels.js';
import { Prng } from './helpers/prng.js';

function sample(w: StreamWriter): void {
  w.u8(0xab).be16(0xbeef).be32(0xdeadbeef).be64(0x0123456789abcdefn).be64(2 ** 53 - 1).countedString('pc.ram');
  w.bytes(new Uint8Array(5000).fill(7));
  w.be64(-1n);
}

async function readSample(r: StreamReader): Promise<void> {
  assert.equal(await r.u8(), 0xab);
  assert.equal(await r.be16(), 0xbeef);
  assert.equal(await r.be32(), 0xdeadbeef);
  assert.equal(await r.be64(), 0x0123456789abcdefn);
  assert.equal(await r.be64Number(), 2 ** 53 - 1);
  assert.equal(await r.countedString(), 'pc.ram');
  const block = await r.bytes(5000, 5000);
  assert.equal(block.length, 5000);
  assert.ok(block.every((b) => b === 7));
  assert.equal(await r.be64(), 0xffffffffffffffffn);
  assert.equal(await r.atEnd(), true);
}

test('writer and reader round trip at every chunk size', async () => {
  const sink = new MemorySink();
  const w = new StreamWriter(sink, 64); // tiny buffer: values straddle buffer rotations
  sample(w);
  await w.flush();
  const data = sink.bytes();
  assert.equal(w.bytesWritten, data.length);
  assert.equal(data.length, 1 + 2 + 4 + 8 + 8 + 7 + 5000 + 8);
  for (const chunk of [1, 2, 3, 7, 8, 63, 4096, 1 << 20]) {
    const r = new StreamReader(new MemorySource(data, chunk));
    await readSample(r);
    assert.equal(r.offset, data.length);
  }
});

test('big-endian byte order', async () => {
  const sink = new MemorySink();
  const w = new StreamWriter(sink);
  w.be16(0x0102).be32(0x03040506).be64(0x0708090a0b0c0d0en);
  await w.flush();
  assert.deepEqual([...sink.bytes()], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
});

test('end of stream: a typed error with the offset, at every truncation point', async () => {
  const sink = new MemorySink();
  const w = new StreamWriter(sink);
  sample(w);
  await w.flush();
  const data = sink.bytes();
  for (let cut = 0; cut < data.length; cut += cut < 64 ? 1 : 97) {
    const r = new StreamReader(new MemorySource(data.subarray(0, cut), 5));
    await assert.rejects(readSample(r), (err: unknown) => {
      assert.ok(err instanceof UnexpectedEndError, `cut ${cut}: ${String(err)}`);
      assert.equal(err.code, 'unexpected-end');
      assert.ok(err.offset <= cut && err.offset >= 0);
      assert.match(err.message, /offset \d+/);
      return true;
    });
  }
});

test('lengths from the stream are bounded before allocation', async () => {
  const r = new StreamReader(new MemorySource(new Uint8Array(16)));
  await assert.rejects(r.bytes(1 << 30, 4096, 'page'), (err: unknown) => err instanceof StreamError && err.code === 'too-large' && /page length/.test(err.message));
  await assert.rejects(r.bytes(-1, 4096), StreamError);
  await assert.rejects(r.bytes(1.5, 4096), StreamError);
  const big = new StreamReader(new MemorySource(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])));
  await assert.rejects(big.be64Number('RAM offset'), (err: unknown) => err instanceof StreamError && err.code === 'too-large' && /RAM offset/.test(err.message));
});

test('peek does not consume; skip consumes without keeping', async () => {
  const data = new Prng(1).bytes(10000);
  const r = new StreamReader(new MemorySource(data, 3));
  assert.deepEqual([...(await r.peek(5))], [...data.subarray(0, 5)]);
  assert.equal(await r.peekU8(), data[0]);
  assert.equal(r.offset, 0);
  await r.skip(9990);
  assert.equal(r.offset, 9990);
  assert.equal((await r.peek(100)).length, 10, 'peek returns fewer bytes at the end');
  await assert.rejects(r.skip(11), UnexpectedEndError);
  const empty = new StreamReader(new MemorySource(new Uint8Array(0)));
  assert.equal(await empty.peekU8(), -1);
});

test('views handed out stay valid after later reads', async () => {
  const data = new Prng(2).bytes(300);
  const r = new StreamReader(new MemorySource(data, 7));
  const first = await r.bytes(10, 10);
  const copy = [...first];
  await r.bytes(290, 290);
  assert.deepEqual([...first], copy);
});

test('counted strings: UTF-8, at most 255 bytes', async () => {
  const sink = new MemorySink();
  const w = new StreamWriter(sink);
  w.countedString('0000:00:01.1/ide').countedString('').countedString('x'.repeat(255));
  assert.throws(() => w.countedString('x'.repeat(256)), RangeError);
  await w.flush();
  const r = new StreamReader(new MemorySource(sink.bytes()));
  assert.equal(await r.countedString(), '0000:00:01.1/ide');
  assert.equal(await r.countedString(), '');
  assert.equal((await r.countedString()).length, 255);
});

test('writer validates 64-bit numbers', () => {
  const w = new StreamWriter(new MemorySink());
  assert.throws(() => w.be64(-1), RangeError);
  assert.throws(() => w.be64(2 ** 53), RangeError);
  assert.throws(() => w.be64(0.5), RangeError);
});

test('writer queues full buffers until drained', async () => {
  const sink = new MemorySink();
  const w = new StreamWriter(sink, 100);
  w.bytes(new Uint8Array(250));
  assert.equal(w.pendingBytes, 250);
  assert.equal(sink.byteLength, 0);
  await w.drain();
  assert.equal(sink.byteLength, 200, 'drain hands over only full buffers');
  await w.flush();
  assert.equal(sink.byteLength, 250);
  assert.equal(w.pendingBytes, 0);
});

test('writer: after a chunk boundary, pages copied from shared memory sit 8-byte aligned in the chunks handed over, and the bytes are unchanged', async () => {
  // What a RAM section looks like: a 5-byte section header, then 8-byte record headers and 4 KiB pages of guest RAM.
  const pageBytes = 4096;
  const pages = 300;
  const ram = new Uint8Array(new SharedArrayBuffer(pages * pageBytes));
  ram.set(new Prng(7).bytes(ram.length));
  const chunks: Uint8Array[] = [];
  const sink = {
    write: async (chunk: Uint8Array): Promise<void> => void chunks.push(chunk.slice()),
    // Lent chunks are looked at where they are (their offsets are the point) and copied before they are released.
    writeLent: async (chunk: Uint8Array, release: () => void): Promise<void> => {
      chunks.push(chunk);
      release();
    },
    close: async (): Promise<void> => {},
  };
  const w = new StreamWriter(sink, 64 * 1024);
  const expected = new Uint8Array(5 + pages * (8 + pageBytes));
  const ev = new DataView(expected.buffer);
  w.u8(2).be32(0x11223344);
  expected.set([2, 0x11, 0x22, 0x33, 0x44]);
  let at = 5;
  const pageStreamOffsets: number[] = [];
  for (let i = 0; i < pages; i++) {
    w.be64(i * pageBytes + 8);
    ev.setUint32(at + 4, i * pageBytes + 8);
    at += 8;
    pageStreamOffsets.push(at);
    const page = ram.subarray(i * pageBytes, (i + 1) * pageBytes);
    w.bytes(page);
    expected.set(page, at);
    at += pageBytes;
  }
  await w.flush();
  // Lent chunks may be reused once released: check offsets and copy the bytes out first (nothing wrote since).
  let streamAt = 0;
  let alignedPages = 0;
  const got = new Uint8Array(expected.length);
  for (const [k, chunk] of chunks.entries()) {
    for (const p of pageStreamOffsets) {
      if (p < streamAt || p + pageBytes > streamAt + chunk.length) continue;
      // In the first chunk the pages keep the stream's alignment (5 + 8: off by 5); every later chunk starts so that they are aligned.
      if (k > 0) assert.equal((chunk.byteOffset + (p - streamAt)) % 8, 0, `page at stream offset ${p} in chunk ${k}`);
      alignedPages += k > 0 ? 1 : 0;
    }
    got.set(chunk, streamAt);
    streamAt += chunk.length;
  }
  assert.equal(streamAt, expected.length);
  assert.deepEqual(got, expected);
  assert.ok(alignedPages > pages * 0.8, `${alignedPages} of ${pages} pages checked in later chunks`);
});

test('writer: a cleanly closed writer leaves its slabs to the next one, a slab only once the sink released all its chunks, and refuses writes after close', async () => {
  // Whatever earlier tests left in the process-wide pool is taken first.
  const nullSink = { write: async (): Promise<void> => {}, close: async (): Promise<void> => {} };
  while (sharedSlabCount() > 0) new StreamWriter(nullSink);
  const held: Array<() => void> = [];
  const lent: Uint8Array[] = [];
  const holdingSink = {
    write: async (): Promise<void> => assert.fail('lent chunks only'),
    // Keeps every chunk until the test releases it, as a socket whose writes have not completed.
    writeLent: async (chunk: Uint8Array, release: () => void): Promise<void> => {
      lent.push(chunk);
      held.push(release);
    },
    close: async (): Promise<void> => {},
  };
  const first = new StreamWriter(holdingSink);
  first.bytes(new Uint8Array(100).fill(0xaa));
  await first.close();
  assert.equal(sharedSlabCount(), 0, 'a slab with a chunk still lent is not shared');
  assert.throws(() => first.u8(1), /write after close/);
  assert.throws(() => first.bytes(new Uint8Array(8)), /write after close/);
  assert.deepEqual([...lent[0]!], new Array(100).fill(0xaa), 'the lent bytes were not touched by the refused writes');
  for (const release of held.splice(0)) release();
  assert.equal(sharedSlabCount(), 1, 'released: the slab is shared');

  const second = new StreamWriter(holdingSink);
  assert.equal(sharedSlabCount(), 0, 'the next writer took it');
  second.bytes(new Uint8Array(100).fill(0xbb));
  await second.flush();
  assert.equal(lent[1]!.buffer, lent[0]!.buffer, 'the second writer writes into the first one\'s memory');
  assert.deepEqual([...lent[1]!], new Array(100).fill(0xbb));
  for (const release of held.splice(0)) release();
  await second.close();
  assert.equal(sharedSlabCount(), 1);

  // A writer whose sink keeps chunks for good (plain write) never gives its slabs away.
  const kept: Uint8Array[] = [];
  const keepingSink = { write: async (chunk: Uint8Array): Promise<void> => void kept.push(chunk), close: async (): Promise<void> => {} };
  const third = new StreamWriter(keepingSink);
  third.bytes(new Uint8Array(100).fill(0xcc));
  await third.close();
  assert.equal(sharedSlabCount(), 0, 'its slab (taken from the pool) went to the sink for good');
  new StreamWriter(holdingSink).bytes(new Uint8Array(100).fill(0xdd));
  assert.deepEqual([...kept[0]!], new Array(100).fill(0xcc), 'what the sink kept is never written again');
});

/** Runs `body` with a fresh temporary directory, removed afterwards whatever happens. */
async function inTempDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-wire-'));
  try {
    await body(dir);
  } finally {
    await rm(dir, { recursive: true });
  }
}

test('file channel round trip', () =>
  inTempDir(async (dir) => {
    const path = join(dir, 'stream.bin');
    const w = new StreamWriter(await FileSink.create(path));
    sample(w);
    await w.close();
    const r = new StreamReader(await FileSource.open(path, { chunkBytes: 1000 }));
    await readSample(r);
    await r.close();
    await assert.rejects(FileSource.open(join(dir, 'missing')), /cannot open .*missing/);
  }));

test('file source with a ring: the same bytes from reused buffers, runs placed 8-byte aligned on request', () =>
  inTempDir(async (dir) => {
    const path = join(dir, 'bytes.bin');
    const data = new Uint8Array(10_000);
    const prng = new Prng(7);
    for (let i = 0; i < data.length; i++) data[i] = prng.int(256);
    await writeFile(path, data);
    const source = await FileSource.open(path, { chunkBytes: 1000, ringChunks: 3 });
    const got: number[] = [];
    const buffers = new Set<ArrayBufferLike>();
    let offset = 0;
    for (let k = 0; ; k++) {
      // Ask for a different alignment now and then, as the reader does when its pages shift (a ZERO record is 9 bytes).
      const mod8 = (k * 3) & 7;
      source.alignReads(mod8);
      const chunk = await source.read();
      if (chunk === null) break;
      // The byte at stream offset ≡ mod8 sits at an 8-aligned address.
      const firstAligned = (mod8 - offset) & 7;
      if (firstAligned < chunk.length) assert.equal((chunk.byteOffset + firstAligned) % 8, 0, `read ${k}: offset ${offset + firstAligned} is aligned`);
      buffers.add(chunk.buffer);
      got.push(...chunk);
      offset += chunk.length;
    }
    assert.deepEqual(new Uint8Array(got), data, 'every byte, in order');
    assert.equal(buffers.size, 3, 'ten reads through three buffers');
    assert.equal(await source.read(), null, 'the end stays the end');
    await source.close();

    // Without a ring every chunk is its own memory (a consumer may keep its views: the analyzer does).
    const fresh = await FileSource.open(path, { chunkBytes: 4000 });
    const chunks: Uint8Array[] = [];
    for (let c = await fresh.read(); c !== null; c = await fresh.read()) chunks.push(c);
    assert.equal(new Set(chunks.map((c) => c.buffer)).size, chunks.length);
    assert.deepEqual(Buffer.concat(chunks), Buffer.from(data));
    await fresh.close();
  }));

test('file sink: gathered pieces (more than IOV_MAX in one call) and lent chunks land in order; a lent chunk is released once written', () =>
  inTempDir(async (dir) => {
    const path = join(dir, 'out.bin');
    const sink = await FileSink.create(path);
    const prng = new Prng(11);
    const pieces = Array.from({ length: 3000 }, () => {
      const piece = new Uint8Array(prng.range(1, 40));
      for (let i = 0; i < piece.length; i++) piece[i] = prng.int(256);
      return piece;
    });
    await sink.writeGather(pieces.slice(0, 2500));
    const lent = new Uint8Array(5000).fill(0x5a);
    let released = 0;
    await sink.writeLent(lent, () => released++);
    assert.equal(released, 1, 'released once, after the write');
    await sink.writeGather(pieces.slice(2500));
    await sink.close();
    const expected = Buffer.concat([...pieces.slice(0, 2500), lent, ...pieces.slice(2500)]);
    assert.deepEqual(await readFile(path), expected);
  }));

test('socket channel round trip over loopback TCP, and a dropped peer', async () => {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  const client = connect(port, '127.0.0.1');
  await new Promise<void>((resolve) => client.once('connect', resolve));
  const serverSide = await accepted;
  const w = new StreamWriter(new WritableSink(client));
  const r = new StreamReader(new ReadableSource(serverSide));
  sample(w);
  await w.close();
  await readSample(r);

  // A peer that disconnects mid-structure gives a clean end-of-stream error.
  const accepted2 = new Promise<Socket>((resolve) => server.once('connection', resolve));
  const client2 = connect(port, '127.0.0.1');
  await new Promise<void>((resolve) => client2.once('connect', resolve));
  const r2 = new StreamReader(new ReadableSource(await accepted2));
  client2.end(Buffer.from([0, 0, 0]));
  await assert.rejects(r2.be64(), (err: unknown) => err instanceof UnexpectedEndError && err.offset === 0);
  server.close();
});

test('writer: bytes given in place reach a gathering sink as views of the caller\'s memory between the writer\'s own bytes, read when the sink sends them; other sinks get a copy', async () => {
  const pageBytes = 4096;
  const pages = 40;
  const ram = new Uint8Array(new SharedArrayBuffer(pages * pageBytes));
  ram.set(new Prng(9).bytes(ram.length));
  const writeAll = (w: StreamWriter): void => {
    w.u8(0x10);
    for (let i = 0; i < pages; i++) w.be64(i * pageBytes + 8).bytesInPlace(ram.subarray(i * pageBytes, (i + 1) * pageBytes));
    w.be32(0xfeedf00d);
  };
  const expectedBytes = (): Uint8Array => {
    const out = new Uint8Array(1 + pages * (8 + pageBytes) + 4);
    const v = new DataView(out.buffer);
    out[0] = 0x10;
    for (let i = 0; i < pages; i++) {
      v.setUint32(1 + i * (8 + pageBytes) + 4, i * pageBytes + 8);
      out.set(ram.subarray(i * pageBytes, (i + 1) * pageBytes), 1 + i * (8 + pageBytes) + 8);
    }
    v.setUint32(out.length - 4, 0xfeedf00d);
    return out;
  };
  const concat = (parts: Uint8Array[]): Uint8Array => Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.length)));

  // A gathering sink: it reads each piece when it takes it.
  const gathered: Uint8Array[][] = [];
  const sent: Uint8Array[] = [];
  const gatherSink = {
    write: async (): Promise<void> => assert.fail('a chunk holding in-place bytes is gathered'),
    writeGather: async (pieces: readonly Uint8Array[]): Promise<void> => {
      gathered.push([...pieces]);
      sent.push(concat([...pieces]));
    },
    close: async (): Promise<void> => {},
  };
  const w = new StreamWriter(gatherSink, 64 * 1024);
  writeAll(w);
  assert.equal(w.bytesWritten, 1 + pages * (8 + pageBytes) + 4);
  // The guest writes a page after it was queued and before the sink took it: the sink sends what is there then.
  ram.fill(0xee, 39 * pageBytes, 39 * pageBytes + 16);
  await w.flush();
  assert.deepEqual(concat(sent), Buffer.from(expectedBytes()));
  const pagePieces = gathered.flat().filter((p) => p.buffer === ram.buffer);
  assert.equal(pagePieces.length, pages, 'every page went as a view of guest RAM, none copied');
  assert.ok(pagePieces.every((p, i) => p.byteOffset === i * pageBytes && p.length === pageBytes));
  assert.ok(gathered.length >= 3, `${gathered.length} gathered chunks of at most about 64 KiB`);
  assert.equal(w.pendingBytes, 0);

  // A sink that cannot gather gets the bytes as they were when written.
  const copySink = new MemorySink();
  const c = new StreamWriter(copySink, 64 * 1024);
  writeAll(c);
  const before = expectedBytes();
  ram.fill(0x11, 0, pageBytes);
  await c.flush();
  assert.deepEqual(copySink.bytes(), before);
});

test('writer: a gathered chunk\'s slab is reused only after writeGather settles, also when it fails', async () => {
  const nullSink = { write: async (): Promise<void> => {}, close: async (): Promise<void> => {} };
  while (sharedSlabCount() > 0) new StreamWriter(nullSink);
  const page = new Uint8Array(4096).fill(3);
  let fail = true;
  const sink = {
    write: async (): Promise<void> => assert.fail('gathered only'),
    writeGather: async (): Promise<void> => {
      if (fail) throw new Error('link cut');
    },
    close: async (): Promise<void> => {},
  };
  const w = new StreamWriter(sink);
  w.be64(8).bytesInPlace(page);
  await assert.rejects(w.flush(), /link cut/);
  fail = false;
  w.be64(8).bytesInPlace(page);
  await w.close();
  assert.equal(sharedSlabCount(), 1, 'every chunk released: the slab went to the pool');
  assert.throws(() => w.bytesInPlace(page), /write after close/);
});

test('unwrittenPieces: what a gathered write still holds after the OS took a prefix', () => {
  const pieces = [Uint8Array.of(1, 2, 3), new Uint8Array(0), Uint8Array.of(4, 5), Uint8Array.of(6)];
  const flat = (left: readonly Uint8Array[]): number[] => left.flatMap((p) => [...p]);
  assert.equal(unwrittenPieces(pieces, 0), pieces, 'nothing taken: the same pieces');
  for (let n = 1; n <= 6; n++) assert.deepEqual(flat(unwrittenPieces(pieces, n)), [1, 2, 3, 4, 5, 6].slice(n), `${n} bytes taken`);
  assert.equal(unwrittenPieces(pieces, 3)[0]![0], 4, 'the empty piece after a taken one is skipped');
  assert.deepEqual(unwrittenPieces(pieces, 6), []);
  assert.equal(pieces[0]!.length, 3, 'the caller\'s pieces are not changed');
});
