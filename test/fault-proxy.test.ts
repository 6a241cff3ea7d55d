/**
 * The fault-injection proxy alone, with real loopback sockets: forwarding,
 * every control, several connections, counters, bounded memory when stalled.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, connect, type Server, type Socket, type AddressInfo } from 'node:net';
import { FaultProxy, HIGH_WATER } from './helpers/fault-proxy.js';
import { waitFor } from './helpers/wait.js';

/** A target that records what each connection sent and keeps its sockets. */
interface Target {
  server: Server;
  port: number;
  sockets: Socket[];
  received: Buffer[][];
  closed: boolean[];
}

let target: Target;

before(async () => {
  const t: Target = { server: createServer({ allowHalfOpen: true }), port: 0, sockets: [], received: [], closed: [] };
  t.server.on('connection', (s) => {
    const i = t.sockets.length;
    t.sockets.push(s);
    t.received.push([]);
    t.closed.push(false);
    s.on('data', (b: Buffer) => t.received[i]!.push(b));
    s.on('error', () => {});
    s.on('close', () => (t.closed[i] = true));
    s.on('end', () => {
      t.closed[i] = true;
      s.end();
    });
  });
  await new Promise<void>((r) => t.server.listen(0, '127.0.0.1', () => r()));
  t.port = (t.server.address() as AddressInfo).port;
  target = t;
});

after(async () => {
  for (const s of target.sockets) s.destroy();
  await new Promise<void>((r) => target.server.close(() => r()));
});

function open(proxy: FaultProxy): Promise<{ socket: Socket; received: Buffer[]; closed: () => boolean; index: number }> {
  const before = target.sockets.length;
  return new Promise((resolve, reject) => {
    const socket = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true });
    const received: Buffer[] = [];
    let closed = false;
    socket.on('data', (b: Buffer) => received.push(b));
    socket.on('error', () => {});
    // A cut is a reset or an end, depending on what the kernel had in flight.
    socket.on('close', () => (closed = true));
    socket.on('end', () => (closed = true));
    socket.once('connect', async () => {
      try {
        await waitFor('the target to accept', () => target.sockets.length > before, 2000);
        resolve({ socket, received, closed: () => closed, index: target.sockets.length - 1 });
      } catch (e) {
        reject(e);
      }
    });
  });
}

const total = (bufs: Buffer[]): number => bufs.reduce((n, b) => n + b.length, 0);
const sha = (bufs: Buffer[]): string => createHash('sha256').update(Buffer.concat(bufs)).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

describe('FaultProxy', { timeout: 60_000 }, () => {
  it('forwards both ways on several connections and counts bytes per direction', async () => {
    const proxy = await FaultProxy.start({ targetPort: target.port, seed: 1 });
    try {
      assert.match(proxy.uri, /^tcp:127\.0\.0\.1:\d+$/);
      const conns = [await open(proxy), await open(proxy), await open(proxy)];
      const ups = conns.map((_, i) => pattern(200_000 + i * 1000, i + 1));
      conns.forEach((c, i) => c.socket.write(ups[i]!));
      const downs = conns.map((_, i) => pattern(50_000 + i, i + 10));
      conns.forEach((c, i) => target.sockets[c.index]!.write(downs[i]!));
      await waitFor('all bytes', () => conns.every((c, i) => total(target.received[c.index]!) === ups[i]!.length && total(c.received) === downs[i]!.length));
      conns.forEach((c, i) => {
        assert.ok(Buffer.concat(target.received[c.index]!).equals(ups[i]!));
        assert.ok(Buffer.concat(c.received).equals(downs[i]!));
      });
      assert.equal(proxy.bytes.up, ups.reduce((n, b) => n + b.length, 0));
      assert.equal(proxy.bytes.down, downs.reduce((n, b) => n + b.length, 0));
      assert.equal(proxy.connections, 3);
      // A half close travels through: the target ends its side in reply, both close.
      for (const c of conns) c.socket.end();
      await waitFor('connections closed', () => conns.every((c) => c.closed()) && proxy.openConnections === 0);
    } finally {
      await proxy.close();
    }
  });

  it('cutAfter(n, up) forwards exactly n bytes over all connections, then resets every connection', async () => {
    const proxy = await FaultProxy.start({ targetPort: target.port, seed: 2 });
    try {
      const a = await open(proxy);
      const b = await open(proxy);
      a.socket.write(pattern(10_000, 3));
      await waitFor('first bytes', () => proxy.bytes.up === 10_000);
      proxy.cutAfter(10_000 + 123_457, 'up');
      b.socket.write(pattern(1_000_000, 4));
      await waitFor('both reset', () => a.closed() && b.closed() && target.closed[a.index]! && target.closed[b.index]!);
      assert.equal(proxy.bytes.up, 133_457);
      assert.ok(total(target.received[b.index]!) <= 123_457);
      assert.equal(proxy.cuts, 1);
      // The link stays down until heal.
      const c = connect({ port: proxy.port, host: '127.0.0.1' });
      let cClosed = false;
      c.on('error', () => {}).on('close', () => (cClosed = true)).on('end', () => (cClosed = true));
      await waitFor('new connection refused while down', () => cClosed);
      proxy.heal();
      const d = await open(proxy);
      d.socket.write('after heal');
      await waitFor('forwarded after heal', () => Buffer.concat(target.received[d.index]!).toString() === 'after heal');
    } finally {
      await proxy.close();
    }
  });

  it('cutAfter(n, down) counts the return direction; cut() resets at once', async () => {
    const proxy = await FaultProxy.start({ targetPort: target.port, seed: 3 });
    try {
      const a = await open(proxy);
      proxy.cutAfter(5000, 'down');
      target.sockets[a.index]!.write(pattern(8000, 5));
      await waitFor('reset', () => a.closed());
      assert.equal(proxy.bytes.down, 5000);
      proxy.heal();
      const b = await open(proxy);
      proxy.cut();
      await waitFor('cut() resets', () => b.closed() && target.closed[b.index]!);
    } finally {
      await proxy.close();
    }
  });

  it('stall() keeps both sockets open and silent; heal() delivers everything in order', async () => {
    const proxy = await FaultProxy.start({ targetPort: target.port, seed: 4 });
    try {
      const a = await open(proxy);
      proxy.stall();
      const up = pattern(300_000, 6);
      const down = pattern(70_000, 7);
      a.socket.write(up);
      target.sockets[a.index]!.write(down);
      await sleep(300);
      assert.equal(total(target.received[a.index]!), 0, 'nothing forwarded up while stalled');
      assert.equal(total(a.received), 0, 'nothing forwarded down while stalled');
      assert.equal(a.closed() || target.closed[a.index]!, false, 'sockets stay open');
      proxy.heal();
      await waitFor('delivered', () => total(target.received[a.index]!) === up.length && total(a.received) === down.length);
      assert.equal(sha(target.received[a.index]!), sha([up]));
      assert.equal(sha(a.received), sha([down]));
    } finally {
      await proxy.close();
    }
  });

  it('a stalled proxy holds a bounded amount: the sender is pushed back, not buffered without end', async () => {
    const proxy = await FaultProxy.start({ targetPort: target.port, seed: 5 });
    try {
      const a = await open(proxy);
      proxy.stall();
      const chunk = pattern(64 * 1024, 8);
      const sent: Buffer[] = [];
      // Write until the sender's own buffer is full too (write() returns false for a while).
      let blockedFor = 0;
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline && sent.length < 1024) {
        if (a.socket.writableLength > 4 * 1024 * 1024) {
          blockedFor += 50;
          if (blockedFor > 500) break;
          await sleep(50);
          continue;
        }
        a.socket.write(chunk);
        sent.push(chunk);
        await new Promise((r) => setImmediate(r));
      }
      const held = proxy.bufferedBytes();
      assert.ok(held <= HIGH_WATER + 256 * 1024, `the proxy holds ${held} bytes`);
      assert.ok(a.socket.writableLength > 0, 'the sender is pushed back (its own buffer fills)');
      assert.ok(sent.length < 1024, 'the sender could not write 64 MiB into a stalled link');
      proxy.heal();
      const want = sent.length * chunk.length;
      await waitFor('delivered after heal', () => total(target.received[a.index]!) === want, 20_000);
      assert.equal(sha(target.received[a.index]!), sha(sent));
    } finally {
      await proxy.close();
    }
  });

  it("drop('down') holds only the return direction", async () => {
    const proxy = await FaultProxy.start({ targetPort: target.port, seed: 6 });
    try {
      const a = await open(proxy);
      proxy.drop('down');
      a.socket.write('up goes');
      target.sockets[a.index]!.write('down held');
      await waitFor('up forwarded', () => Buffer.concat(target.received[a.index]!).toString() === 'up goes');
      await sleep(200);
      assert.equal(total(a.received), 0);
      assert.equal(a.closed(), false);
      proxy.heal();
      await waitFor('down after heal', () => Buffer.concat(a.received).toString() === 'down held');
    } finally {
      await proxy.close();
    }
  });

  it('delay(ms) forwards each chunk that much later, in order', async () => {
    const proxy = await FaultProxy.start({ targetPort: target.port, seed: 7 });
    try {
      const a = await open(proxy);
      proxy.delay(150, 20);
      const t0 = Date.now();
      for (let i = 0; i < 5; i++) a.socket.write(pattern(10_000, 20 + i));
      await waitFor('first chunk', () => total(target.received[a.index]!) > 0);
      assert.ok(Date.now() - t0 >= 140, `arrived after ${Date.now() - t0} ms`);
      await waitFor('all chunks', () => total(target.received[a.index]!) === 50_000);
      assert.equal(sha(target.received[a.index]!), sha([0, 1, 2, 3, 4].map((i) => pattern(10_000, 20 + i))));
    } finally {
      await proxy.close();
    }
  });

  it('a target that goes away resets the client; close() ends everything', async () => {
    const proxy = await FaultProxy.start({ targetPort: target.port, seed: 8 });
    const a = await open(proxy);
    target.sockets[a.index]!.destroy();
    await waitFor('client closed', () => a.closed());
    const b = await open(proxy);
    await proxy.close();
    await waitFor('closed by close()', () => b.closed());
  });
});
