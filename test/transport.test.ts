import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync, existsSync, readFileSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  connectOutgoing,
  ExecExitError,
  formatMigrationUri,
  listenIncoming,
  parseMigrationUri,
  TransportError,
  UNIX_PATH_MAX_BYTES,
  type MigrationChannel,
} from '../src/transport/index.js';
import { ACCEPTED_SOCKET_RING, adoptDetachedSocket } from '../src/transport/channel.js';
import { spareRingChunkCount } from '../src/transport/stream-io.js';
import { ChannelError, StreamError, StreamReader, StreamWriter } from '../src/wire/index.js';
import { freePort } from './helpers/ports.js';

const STREAM_BYTES = 4 << 20;
const dir = mkdtempSync(join(tmpdir(), 'livemig-transport-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** Write `data` through a StreamWriter on one channel and read it back with a StreamReader on the other. */
async function sendAndCompare(source: MigrationChannel, destination: MigrationChannel, data: Uint8Array): Promise<void> {
  const writer = new StreamWriter(source.output!);
  const sending = (async () => {
    writer.bytes(data);
    await writer.close(); // flush + half-close: the destination sees the end of the stream
  })();
  const reader = new StreamReader(destination.input!);
  const got = new Uint8Array(data.length);
  await reader.readInto(got, 0, data.length);
  assert.equal(await reader.atEnd(), true);
  await sending;
  assert.ok(Buffer.from(got).equals(data), 'bytes differ');
}

test('parseMigrationUri: accepted forms', () => {
  assert.deepEqual(parseMigrationUri('tcp:127.0.0.1:4444'), { kind: 'tcp', uri: 'tcp:127.0.0.1:4444', host: '127.0.0.1', port: 4444 });
  assert.deepEqual(parseMigrationUri('tcp:localhost:0'), { kind: 'tcp', uri: 'tcp:localhost:0', host: 'localhost', port: 0 });
  assert.deepEqual(parseMigrationUri('tcp:[::1]:65535'), { kind: 'tcp', uri: 'tcp:[::1]:65535', host: '::1', port: 65535 });
  assert.deepEqual(parseMigrationUri('tcp::4444'), { kind: 'tcp', uri: 'tcp::4444', host: '', port: 4444 });
  assert.deepEqual(parseMigrationUri('unix:/run/mig.sock'), { kind: 'unix', uri: 'unix:/run/mig.sock', path: '/run/mig.sock' });
  // Everything after exec: is the shell command, colons and spaces included.
  assert.deepEqual(parseMigrationUri('exec:cat > a:b'), { kind: 'exec', uri: 'exec:cat > a:b', command: 'cat > a:b' });
  assert.deepEqual(parseMigrationUri('file:/tmp/a,b'), { kind: 'file', uri: 'file:/tmp/a,b', path: '/tmp/a,b' });
  for (const uri of ['tcp:[::1]:4444', 'tcp:host.example:1', 'unix:x', 'exec:true', 'file:f']) {
    assert.equal(formatMigrationUri(parseMigrationUri(uri)), uri);
  }
});

test('parseMigrationUri: rejected forms name the URI', () => {
  const cases: Array<[string, RegExp]> = [
    ['', /unknown migration protocol/],
    ['/tmp/file', /unknown migration protocol/],
    ['http://x', /unknown migration protocol/],
    ['TCP:127.0.0.1:1', /unknown migration protocol/],
    ['fd:3', /unsupported migration protocol/],
    ['vsock:3:4444', /unsupported/],
    ['tcp:127.0.0.1', /missing port/],
    ['tcp:127.0.0.1:', /bad port/],
    ['tcp:127.0.0.1:65536', /bad port/],
    ['tcp:127.0.0.1:-1', /bad port/],
    ['tcp:127.0.0.1:http', /bad port/],
    ['tcp:::1:4444', /brackets/],
    ['tcp:[::1]4444', /missing port/],
    ['tcp:[::1:4444', /missing '\]'/],
    ['tcp:[1.2.3.4]:1', /not an IPv6/],
    ['tcp:bad host:1', /bad host/],
    ['tcp:127.0.0.1:1,ipv4', /not supported/],
    ['unix:', /empty socket path/],
    ['unix:/' + 'x'.repeat(UNIX_PATH_MAX_BYTES), /at most 107/],
    ['exec:', /empty command/],
    ['exec:   ', /empty command/],
    ['file:', /empty file path/],
    ['file:/tmp/x,offset=0x1000', /offset option is not supported/],
  ];
  for (const [uri, message] of cases) {
    assert.throws(
      () => parseMigrationUri(uri),
      (err: unknown) => err instanceof TransportError && message.test(err.message) && err.message.includes(uri) && err.uri === uri,
      uri,
    );
  }
});

test('connectOutgoing refuses listen-only tcp forms', async () => {
  await assert.rejects(connectOutgoing('tcp:127.0.0.1:0'), /port 0 is only for listening/);
  await assert.rejects(connectOutgoing('tcp::4444'), /a host is needed/);
});

test('tcp: port 0 gives the real address; stream one way, return path the other', async () => {
  const listener = await listenIncoming('tcp:127.0.0.1:0');
  assert.match(listener.address, /^tcp:127\.0\.0\.1:[1-9][0-9]*$/);
  const [source, destination] = await Promise.all([connectOutgoing(listener.address), listener.accept()]);
  assert.equal(source.supportsReturnPath, true);
  assert.equal(destination.supportsReturnPath, true);
  await sendAndCompare(source, destination, randomBytes(STREAM_BYTES));

  // The source half-closed its stream; the destination can still answer (PONG 1, SHUT 0, then data).
  const back = randomBytes(256 << 10);
  const returnWriter = new StreamWriter(destination.output!);
  returnWriter.be16(2).be16(4).be32(1).be16(1).be16(4).be32(0).bytes(back);
  const answering = returnWriter.close();
  const returnReader = new StreamReader(source.input!);
  assert.deepEqual([await returnReader.be16(), await returnReader.be16(), await returnReader.be32()], [2, 4, 1]);
  assert.deepEqual([await returnReader.be16(), await returnReader.be16(), await returnReader.be32()], [1, 4, 0]);
  const got = new Uint8Array(back.length);
  await returnReader.readInto(got, 0, back.length);
  assert.ok(Buffer.from(got).equals(back));
  assert.equal(await returnReader.atEnd(), true);
  await answering;

  await Promise.all([source.close(), destination.close()]);
  await source.close(); // idempotent
  await Promise.all([source.closed, destination.closed]);
  await assert.rejects(listener.accept(), (err: unknown) => err instanceof TransportError && err.code === 'closed');
  await listener.close();
});

test('tcp: an accepted connection lays out the pages its reader copies 8-byte aligned (alignReads), bytes unchanged', async () => {
  const listener = await listenIncoming('tcp:127.0.0.1:0');
  const [source, destination] = await Promise.all([connectOutgoing(listener.address), listener.accept()]);
  // A RAM section's shape: a 5-byte header, then 8-byte record headers each followed by a 4 KiB page.
  const pageBytes = 4096;
  const pages = 3000;
  const data = randomBytes(pages * pageBytes);
  const writer = new StreamWriter(source.output!);
  writer.u8(2).be32(7);
  for (let i = 0; i < pages; i++) writer.be64(i).bytes(data.subarray(i * pageBytes, (i + 1) * pageBytes));
  const sending = writer.close();
  const reader = new StreamReader(destination.input!);
  try {
    assert.deepEqual([await reader.u8(), await reader.be32()], [2, 7]);
    const ram = new Uint8Array(new SharedArrayBuffer(pageBytes));
    let ringViews = 0;
    let aligned = 0;
    for (let i = 0; i < pages; i++) {
      assert.equal(await reader.be64Number(), i);
      if (i < 10 || reader.buffered < pageBytes) {
        // Copied into shared memory as the RAM loader does: this is what tells the channel the pages' alignment.
        await reader.readInto(ram, 0, pageBytes);
        assert.ok(Buffer.from(ram).equals(data.subarray(i * pageBytes, (i + 1) * pageBytes)), `page ${i}`);
        continue;
      }
      const view = await reader.bytes(pageBytes, pageBytes);
      assert.ok(Buffer.from(view.buffer, view.byteOffset, view.length).equals(data.subarray(i * pageBytes, (i + 1) * pageBytes)), `page ${i}`);
      // Reads made before the hint keep their place; count the second half, long after it, and only
      // views into the receive ring (a page split over two reads is joined into a fresh buffer).
      if (i >= pages / 2 && view.buffer.byteLength >= 64 * 1024) {
        ringViews++;
        if (view.byteOffset % 8 === 0) aligned++;
      }
    }
    assert.equal(await reader.atEnd(), true);
    await sending;
    assert.ok(ringViews > pages / 4, `${ringViews} pages looked at in place`);
    assert.equal(aligned, ringViews, `${aligned} of ${ringViews} pages 8-byte aligned in the receive buffers`);
  } finally {
    // A failed check must not leave the sockets holding the test process open.
    source.abort(new Error('test over'));
    destination.abort(new Error('test over'));
    await listener.close();
  }
});

test("tcp: an accepted connection's ring goes to the next connection once it is over, not while it is in use", async () => {
  const chunkBytes = ACCEPTED_SOCKET_RING.chunkBytes;
  const listener = await listenIncoming('tcp:127.0.0.1:0', { multiChannel: true });
  // Rings of earlier tests may be spare already: count from here.
  const spareBefore = spareRingChunkCount(chunkBytes);
  const buffersOf = async (destination: MigrationChannel, source: MigrationChannel): Promise<Set<ArrayBufferLike>> => {
    const writer = new StreamWriter(source.output!);
    const data = randomBytes(STREAM_BYTES);
    const sending = writer.bytes(data).close();
    const seen = new Set<ArrayBufferLike>();
    const got: Buffer[] = [];
    for (let chunk = await destination.input!.read(); chunk !== null; chunk = await destination.input!.read()) {
      seen.add(chunk.buffer);
      got.push(Buffer.from(chunk));
    }
    await sending;
    assert.ok(Buffer.concat(got).equals(data));
    return seen;
  };
  const [s1, d1] = await Promise.all([connectOutgoing(listener.address), listener.accept()]);
  const first = await buffersOf(d1, s1);
  assert.equal(spareRingChunkCount(chunkBytes), Math.max(0, spareBefore - ACCEPTED_SOCKET_RING.chunks), 'in use: not spare');
  await Promise.all([s1.close(), d1.close()]);
  await Promise.all([s1.closed, d1.closed]);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(spareRingChunkCount(chunkBytes), ACCEPTED_SOCKET_RING.chunks, 'over: its ring is spare');

  const [s2, d2] = await Promise.all([connectOutgoing(listener.address), listener.accept()]);
  assert.equal(spareRingChunkCount(chunkBytes), 0, 'the next connection took it');
  const second = await buffersOf(d2, s2);
  assert.ok([...second].every((b) => first.has(b)), 'and reads into the same memory');
  await Promise.all([s2.close(), d2.close()]);
  await listener.close();
});

test('tcp over IPv6 loopback', async (t) => {
  let listener;
  try {
    listener = await listenIncoming('tcp:[::1]:0');
  } catch (err) {
    t.skip(`no IPv6 loopback: ${(err as Error).message}`);
    return;
  }
  assert.match(listener.address, /^tcp:\[::1\]:[1-9][0-9]*$/);
  const [source, destination] = await Promise.all([connectOutgoing(listener.address), listener.accept()]);
  await sendAndCompare(source, destination, randomBytes(64 << 10));
  await Promise.all([source.close(), destination.close()]);
});

test('unix: stream and return path; the socket file is removed when the listener stops', async () => {
  const path = join(dir, 'mig.sock');
  const listener = await listenIncoming(`unix:${path}`);
  assert.equal(listener.address, `unix:${path}`);
  assert.ok(lstatSync(path).isSocket());
  const [source, destination] = await Promise.all([connectOutgoing(`unix:${path}`), listener.accept()]);
  assert.equal(existsSync(path), false, 'listener closes after the first connection');
  await sendAndCompare(source, destination, randomBytes(STREAM_BYTES));
  await sendAndCompare(destination, source, randomBytes(100_000)); // return path
  await Promise.all([source.close(), destination.close()]);
  await listener.close();

  // A listener closed before anyone connects removes its file too, and fails a waiting accept().
  const idle = await listenIncoming(`unix:${path}`);
  const waiting = idle.accept();
  await idle.close();
  await assert.rejects(waiting, (err: unknown) => err instanceof TransportError && err.code === 'closed');
  assert.equal(existsSync(path), false);
});

test('unix: a stale socket file is replaced; a regular file is not touched', async () => {
  const path = join(dir, 'stale.sock');
  // A process killed while listening leaves its socket file behind.
  const child = spawn(process.execPath, [
    '-e',
    `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`,
  ]);
  await once(child, 'exit');
  assert.ok(lstatSync(path).isSocket(), 'stale socket left behind');
  const listener = await listenIncoming(`unix:${path}`);
  const [source, destination] = await Promise.all([connectOutgoing(`unix:${path}`), listener.accept()]);
  await sendAndCompare(source, destination, randomBytes(1000));
  await Promise.all([source.close(), destination.close(), listener.close()]);

  const regular = join(dir, 'not-a-socket');
  writeFileSync(regular, 'keep me');
  await assert.rejects(listenIncoming(`unix:${regular}`), /exists and is not a socket/);
  assert.equal(readFileSync(regular, 'utf8'), 'keep me');
});

test('exec: `cat > FILE` out, `cat FILE` in', async () => {
  const path = join(dir, 'exec.mig');
  const data = randomBytes(STREAM_BYTES);
  const source = await connectOutgoing(`exec:cat > '${path}'`);
  assert.equal(source.input, null);
  assert.equal(source.supportsReturnPath, false);
  const writer = new StreamWriter(source.output!);
  writer.bytes(data);
  await writer.close(); // returns after cat exited 0
  await source.close();
  await source.closed;
  assert.ok(readFileSync(path).equals(data));

  const listener = await listenIncoming(`exec:cat '${path}'`);
  assert.equal(listener.address, `exec:cat '${path}'`);
  const destination = await listener.accept();
  assert.equal(destination.output, null);
  const reader = new StreamReader(destination.input!);
  const got = new Uint8Array(data.length);
  await reader.readInto(got, 0, data.length);
  assert.equal(await reader.atEnd(), true);
  assert.ok(Buffer.from(got).equals(data));
  await destination.close();
  await listener.close();
});

test("exec: the command's stdout is read into reused buffers (the socket ring), the bytes unchanged", async () => {
  const path = join(dir, 'exec-ring.mig');
  const data = randomBytes(8 << 20);
  writeFileSync(path, data);
  const listener = await listenIncoming(`exec:cat '${path}'`);
  const destination = await listener.accept();
  const input = destination.input!;
  const chunks: Buffer[] = [];
  const buffers = new Set<ArrayBufferLike>();
  for (let chunk = await input.read(); chunk !== null; chunk = await input.read()) {
    chunks.push(Buffer.from(chunk)); // a copy: the ring reuses the memory
    buffers.add(chunk.buffer);
  }
  assert.ok(Buffer.concat(chunks).equals(data));
  assert.ok(chunks.length > 32, `${chunks.length} reads`);
  assert.ok(buffers.size <= 16, `${chunks.length} reads through ${buffers.size} buffers`);
  await destination.close();
  await listener.close();
});

const exitCode = (code: number) => (err: unknown) => err instanceof ExecExitError && err.exitCode === code && err.message.includes(`code ${code}`);

test('exec: a command that fails is reported with its exit status', async () => {
  // Exits at once: the writes hit a closed pipe, and the error says why.
  const early = await connectOutgoing('exec:exit 3');
  const writer = new StreamWriter(early.output!);
  writer.bytes(randomBytes(1 << 20));
  await assert.rejects(writer.close(), exitCode(3));
  await assert.rejects(early.closed, exitCode(3));
  early.abort();

  // Takes the whole stream, then fails.
  const late = await connectOutgoing('exec:cat > /dev/null; exit 4');
  const lateWriter = new StreamWriter(late.output!);
  lateWriter.bytes(randomBytes(100_000));
  await assert.rejects(lateWriter.close(), exitCode(4));
  await assert.rejects(late.close(), exitCode(4));

  // Destination: a short stream from a failed command is an error, not a clean end.
  const incoming = await (await listenIncoming('exec:printf abc; exit 5')).accept();
  const reader = new StreamReader(incoming.input!);
  await assert.rejects(reader.readInto(new Uint8Array(10), 0, 10), exitCode(5));
  await incoming.close();

  const killed = await (await listenIncoming('exec:kill -TERM $$')).accept();
  await assert.rejects(killed.input!.read(), (err: unknown) => err instanceof ExecExitError && err.signal === 'SIGTERM');
  await killed.close();
});

test('file: write, then read back', async () => {
  const path = join(dir, 'stream.mig');
  writeFileSync(path, 'old contents, longer than nothing');
  const source = await connectOutgoing(`file:${path}`);
  const data = randomBytes(STREAM_BYTES);
  const writer = new StreamWriter(source.output!);
  writer.bytes(data);
  await writer.close();
  await source.close();
  assert.ok(readFileSync(path).equals(data), 'file truncated and rewritten');

  const listener = await listenIncoming(`file:${path}`);
  const destination = await listener.accept();
  const reader = new StreamReader(destination.input!);
  const got = new Uint8Array(data.length);
  await reader.readInto(got, 0, data.length);
  assert.equal(await reader.atEnd(), true);
  assert.ok(Buffer.from(got).equals(data));
  assert.equal(destination.output, null);
  await destination.close();
  assert.equal(await destination.input!.read(), null); // closed: nothing more
  await destination.closed;

  await assert.rejects(connectOutgoing(`file:${join(dir, 'no-such-dir', 'x')}`), (err: unknown) => err instanceof TransportError && err.code === 'open-failed');
  await assert.rejects(listenIncoming(`file:${join(dir, 'missing')}`), (err: unknown) => err instanceof TransportError && err.code === 'open-failed');
});

test('file: the output lends and gathers (slabs reused, pages in place); after an abort each is refused, a lent chunk handed back', async () => {
  const path = join(dir, 'gathered.mig');
  const source = await connectOutgoing(`file:${path}`);
  const output = source.output!;
  assert.ok(output.writeLent && output.writeGather, 'a file sink offers both');
  const pageRun = randomBytes(3 * 4096);
  let released = 0;
  await output.writeGather([Buffer.from('head'), pageRun.subarray(0, 4096), pageRun.subarray(4096)]);
  await output.writeLent(Buffer.from('tail'), () => released++);
  assert.equal(released, 1);
  source.abort(new Error('operator cancelled'));
  await assert.rejects(output.writeLent(Buffer.from('late'), () => released++), /operator cancelled/);
  assert.equal(released, 2, 'a chunk the sink never took is handed back at once');
  await assert.rejects(output.writeGather([Buffer.from('late')]), /operator cancelled/);
  await source.closed.catch(() => {});
  assert.ok(readFileSync(path).equals(Buffer.concat([Buffer.from('head'), pageRun, Buffer.from('tail')])));
});

test('tcp: the source dies mid-stream -> the destination gets an end or a ChannelError', async () => {
  const listener = await listenIncoming('tcp:127.0.0.1:0');
  const [source, destination] = await Promise.all([connectOutgoing(listener.address), listener.accept()]);
  const writer = new StreamWriter(source.output!);
  writer.bytes(randomBytes(1 << 20));
  await writer.flush();
  source.abort(new Error('source crashed'));
  const reader = new StreamReader(destination.input!);
  await assert.rejects(reader.readInto(new Uint8Array(STREAM_BYTES), 0, STREAM_BYTES), (err: unknown) => err instanceof StreamError || err instanceof ChannelError);
  destination.abort();
  await assert.rejects(source.closed, /source crashed/);
});

test('tcp: the destination dies while the source writes -> ChannelError on write', async () => {
  const listener = await listenIncoming('tcp:127.0.0.1:0');
  const [source, destination] = await Promise.all([connectOutgoing(listener.address), listener.accept()]);
  const writer = new StreamWriter(source.output!);
  const sending = (async () => {
    for (let i = 0; i < 256; i++) {
      writer.bytes(randomBytes(1 << 20));
      await writer.drain();
    }
  })();
  await new Promise((resolve) => setTimeout(resolve, 30));
  destination.abort(); // unread data in its buffer: the kernel answers with a reset
  await assert.rejects(sending, ChannelError);
  await assert.rejects(source.input!.read(), ChannelError);
  source.abort();
});

test('connect failures and cancel', async () => {
  const port = await freePort();
  await assert.rejects(
    connectOutgoing(`tcp:127.0.0.1:${port}`),
    (err: unknown) => err instanceof TransportError && err.code === 'connect-failed' && /ECONNREFUSED/.test(err.message),
  );
  await assert.rejects(connectOutgoing(`unix:${join(dir, 'nobody.sock')}`), (err: unknown) => err instanceof TransportError && err.code === 'connect-failed');

  // Aborted before, and during, the connect.
  const listener = await listenIncoming('tcp:127.0.0.1:0');
  await assert.rejects(connectOutgoing(listener.address, { signal: AbortSignal.abort() }), (err: unknown) => err instanceof TransportError && err.code === 'aborted');
  const controller = new AbortController();
  const connecting = connectOutgoing(listener.address, { signal: controller.signal });
  controller.abort();
  await assert.rejects(connecting, (err: unknown) => err instanceof TransportError && err.code === 'aborted');
  await assert.rejects(connectOutgoing('exec:cat > /dev/null', { signal: AbortSignal.abort() }), /aborted/);

  // accept() can be cancelled too, and a later accept() still works.
  const acceptController = new AbortController();
  const accepting = listener.accept({ signal: acceptController.signal });
  acceptController.abort();
  await assert.rejects(accepting, (err: unknown) => err instanceof TransportError && err.code === 'aborted');
  await listener.close();
});

test('abort() makes a pending read and write reject at once', async () => {
  const listener = await listenIncoming('tcp:127.0.0.1:0');
  const [source, destination] = await Promise.all([connectOutgoing(listener.address), listener.accept()]);
  const pendingRead = source.input!.read(); // the return path: nothing comes
  // Fill the socket until a write has to wait for the destination, which never reads.
  let pendingWrite: Promise<void> | undefined;
  for (let i = 0; i < 1024 && !pendingWrite; i++) {
    const write = source.output!.write(new Uint8Array(1 << 20));
    const done = await Promise.race([write.then(() => true), new Promise((resolve) => setTimeout(resolve, 5, false))]);
    if (!done) pendingWrite = write;
  }
  assert.ok(pendingWrite, 'a write should block');
  const started = Date.now();
  source.abort('cancelled by user');
  await assert.rejects(pendingRead, (err: unknown) => err instanceof ChannelError && /cancelled by user/.test(err.message));
  await assert.rejects(pendingWrite, ChannelError);
  await assert.rejects(source.output!.write(new Uint8Array(1)), ChannelError);
  assert.ok(Date.now() - started < 200);
  await source.close(); // cleanup after abort does not throw
  // The destination sees the end of the data that arrived, then an end or an error, never a hang.
  const reader = destination.input!;
  await assert.rejects(
    (async () => {
      for (;;) if ((await reader.read()) === null) throw new ChannelError('clean end');
    })(),
    ChannelError,
  );
  await destination.close().catch(() => {});
  await listener.close();
});

// ---- handing a connection to another thread (multifd receive workers) ----

for (const [kind, ring] of [['tcp', undefined], ['unix', undefined], ['tcp', { chunkBytes: 64 * 1024, chunks: 8 }]] as const) {
  const how = ring ? ', reading into a ring of 8 reused 64 KiB buffers, slowly' : '';
  test(`${kind}: a peeked connection detached and adopted again delivers every byte in order${how}`, { timeout: 30_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'livemig-detach-'));
    const listener = await listenIncoming(kind === 'tcp' ? 'tcp:127.0.0.1:0' : `unix:${join(dir, 's')}`, { multiChannel: true });
    try {
      const data = randomBytes(3 << 20); // more than the source's 1 MiB queue: part of it waits in Node's stream buffer
      const peer = await connectOutgoing(listener.address);
      const writing = (async () => {
        const w = new StreamWriter(peer.output!);
        w.bytes(data);
        await w.close();
      })();
      const channel = await listener.accept();
      const reader = new StreamReader(channel.input!);
      assert.deepEqual(await reader.peek(4), data.subarray(0, 4));
      await new Promise((r) => setTimeout(r, 200)); // let chunks queue up (and the source pause)
      const detached = (channel as MigrationChannel).detach?.();
      assert.ok(detached, 'a socket channel can be detached');
      assert.equal(channel.detach?.(), undefined, 'only once');
      detached.received.unshift(...reader.takeBuffered());
      assert.equal(reader.buffered, 0);
      const adopted = adoptDetachedSocket(detached, ring ? { ring } : {});
      const again = new StreamReader(adopted.input!);
      const got = new Uint8Array(data.length);
      // Slowly, in 10 KiB steps with a pause in between: a ring buffer reused too early would show.
      for (let at = 0; at < data.length; at += 10_240) {
        await again.readInto(got, at, Math.min(10_240, data.length - at));
        if (ring) await new Promise((r) => setImmediate(r));
      }
      assert.equal(await again.atEnd(), true);
      assert.ok(Buffer.from(got).equals(data), 'the same bytes in the same order');
      await writing;
      await adopted.close();
      channel.abort('done'); // must not close the descriptor the adopted channel used
      await peer.close().catch(() => {});
    } finally {
      await listener.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
