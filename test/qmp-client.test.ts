/**
 * QmpClient against real QEMU 7.2 (greeting, negotiation, commands, errors, events,
 * closing) and against a scripted fake server (what QEMU never does: replies out of order,
 * garbage).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { QmpClient, QmpConnectionError, QmpError, type QmpEvent } from '../src/monitor/qmp-client.js';
import { QemuProcess, qemuSkipReason } from './helpers/qemu.js';

const skip = qemuSkipReason();
const TEST_TIMEOUT_MS = 120_000;

/** A QEMU with a second QMP socket for the client under test (the helper keeps the first). */
async function withQemu(body: (uri: string, qemu: QemuProcess) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-qmp-'));
  const path = join(dir, 'client.sock');
  const qemu = await QemuProcess.start(['-M', 'none', '-m', '16M', '-nodefaults', '-display', 'none', '-qmp', `unix:${path},server=on,wait=off`]);
  try {
    await body(`unix:${path}`, qemu);
  } finally {
    await qemu.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

test('QMP greeting, then only qmp_capabilities until negotiated', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withQemu(async (uri) => {
    const client = await QmpClient.connect(uri, { negotiate: false, retryForMs: 10_000 });
    try {
      assert.equal(client.greeting.QMP.version?.qemu?.major, 7);
      assert.equal(client.greeting.QMP.version?.qemu?.minor, 2);
      assert.ok(Array.isArray(client.greeting.QMP.capabilities));
      await assert.rejects(client.execute('query-status'), (err: unknown) => {
        assert.ok(err instanceof QmpError);
        assert.equal(err.errorClass, 'CommandNotFound');
        assert.match(err.desc, /qmp_capabilities/);
        return true;
      });
      await client.negotiate();
      assert.deepEqual(await client.execute('query-status'), { status: 'running', singlestep: false, running: true });
    } finally {
      await client.close();
    }
  });
});

test('QMP commands: replies matched to their ids, errors as QmpError with class and desc', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withQemu(async (uri) => {
    const client = await QmpClient.connect(uri, { retryForMs: 10_000 });
    try {
      const version = await client.execute<{ qemu: { major: number } }>('query-version');
      assert.equal(version.qemu.major, 7);
      // Many in flight at once: each promise gets its own command's answer.
      const commands = ['query-version', 'query-status', 'query-migrate', 'query-name'] as const;
      const replies = await Promise.all(Array.from({ length: 24 }, (_, i) => client.execute<Record<string, unknown>>(commands[i % 4]!)));
      replies.forEach((reply, i) => {
        const command = commands[i % 4];
        if (command === 'query-version') assert.ok('qemu' in reply, JSON.stringify(reply));
        if (command === 'query-status') assert.equal(reply.status, 'running');
        if (command === 'query-migrate') assert.deepEqual(reply, {});
        if (command === 'query-name') assert.deepEqual(reply, {});
      });

      await assert.rejects(client.execute('no-such-command'), (err: unknown) => {
        assert.ok(err instanceof QmpError);
        assert.equal(err.errorClass, 'CommandNotFound');
        assert.equal(err.class, 'CommandNotFound');
        assert.match(err.desc, /no-such-command/);
        assert.equal(err.command, 'no-such-command');
        return true;
      });
      await assert.rejects(client.execute('query-migrate', { bogus: 1 }), (err: unknown) => {
        assert.ok(err instanceof QmpError);
        assert.equal(err.errorClass, 'GenericError');
        assert.match(err.desc, /bogus/);
        return true;
      });
      // The connection is still good after errors.
      assert.deepEqual(await client.execute('query-migrate'), {});
    } finally {
      await client.close();
    }
  });
});

test('QMP events: STOP and RESUME with their timestamps, by emitter and by async iterator', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withQemu(async (uri) => {
    const client = await QmpClient.connect(uri, { retryForMs: 10_000 });
    try {
      const emitted: QmpEvent[] = [];
      client.on('event', (e: QmpEvent) => emitted.push(e));
      const iterator = client.events();
      const before = Date.now();
      await client.execute('stop');
      await client.execute('cont');
      const first = (await iterator.next()).value as QmpEvent;
      const second = (await iterator.next()).value as QmpEvent;
      await iterator.return!();
      assert.deepEqual([first.event, second.event], ['STOP', 'RESUME']);
      for (const e of [first, second]) {
        assert.ok(Number.isInteger(e.timestamp.seconds) && Number.isInteger(e.timestamp.microseconds), JSON.stringify(e));
        assert.ok(e.timestamp.microseconds >= 0 && e.timestamp.microseconds < 1e6);
        // QEMU stamps events with its wall clock: same machine, so close to ours.
        assert.ok(Math.abs(e.timestampMs - before) < 60_000, `timestamp ${e.timestampMs} vs now ${before}`);
        assert.deepEqual(e.data, {});
      }
      assert.ok(second.timestampMs >= first.timestampMs);
      assert.deepEqual(
        emitted.map((e) => e.event),
        ['STOP', 'RESUME'],
      );
      // waitForEvent sees events from now on.
      const stopped = client.waitForEvent('STOP', () => true, 30_000);
      await client.execute('stop');
      assert.equal((await stopped).event, 'STOP');
    } finally {
      await client.close();
    }
  });
});

test('QMP connection closed: by the server (quit) and by close()', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  await withQemu(async (uri, qemu) => {
    const client = await QmpClient.connect(uri, { retryForMs: 10_000 });
    const iterator = client.events();
    const closed = once(client, 'close');
    assert.deepEqual(await client.execute('quit'), {});
    const [reason] = await closed;
    assert.ok(reason instanceof QmpConnectionError, String(reason));
    assert.equal(client.closed, true);
    await assert.rejects(client.execute('query-status'), QmpConnectionError);
    // An iterator ends when the connection does (after SHUTDOWN, which quit emits).
    const names: string[] = [];
    for await (const e of iterator) names.push(e.event);
    assert.deepEqual(names, ['SHUTDOWN']);
    await client.close(); // a no-op now
    assert.equal(await qemu.waitForExit(), 0);
  });
  await withQemu(async (uri) => {
    const client = await QmpClient.connect(uri, { retryForMs: 10_000 });
    await client.close();
    await assert.rejects(client.execute('query-status'), /closed/);
    // The socket is free again for the next client.
    const again = await QmpClient.connect(uri);
    assert.equal((await again.execute<{ status: string }>('query-status')).status, 'running');
    await again.close();
  });
});

test('QMP connect errors: no socket, a busy socket (one client at a time), a URI that is not a socket', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-qmp-'));
  try {
    await assert.rejects(QmpClient.connect(`unix:${join(dir, 'missing.sock')}`), (err: unknown) => {
      assert.ok(err instanceof QmpConnectionError);
      assert.match(err.message, /cannot connect to QMP at unix:.*missing\.sock.*ENOENT/);
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  await assert.rejects(QmpClient.connect('exec:cat'), /only unix:PATH and tcp:HOST:PORT/);
  await assert.rejects(QmpClient.connect('tcp:127.0.0.1'), /missing port/);
  await withQemu(async (uri) => {
    const first = await QmpClient.connect(uri, { retryForMs: 10_000 });
    try {
      await assert.rejects(QmpClient.connect(uri, { greetingTimeoutMs: 500 }), /no QMP greeting .* another client/);
    } finally {
      await first.close();
    }
  });
});

// ---------- a fake server: what real QEMU does not do ----------

async function fakeServer(onLine: (line: Record<string, unknown>, socket: Socket) => void): Promise<{ server: Server; uri: string }> {
  const server = createServer((socket) => {
    socket.setEncoding('utf8');
    socket.write(JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: [] } }) + '\r\n');
    let buffered = '';
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        onLine(JSON.parse(line) as Record<string, unknown>, socket);
      }
    });
    socket.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address() as { port: number };
  return { server, uri: `tcp:127.0.0.1:${address.port}` };
}

test('QmpClient matches replies by id even out of order; reply-less requests fail when the server goes', async () => {
  const held: Array<{ id: unknown; socket: Socket }> = [];
  const { server, uri } = await fakeServer((msg, socket) => {
    if (msg.execute === 'qmp_capabilities') return void socket.write(JSON.stringify({ return: {}, id: msg.id }) + '\r\n');
    if (msg.execute === 'hang') return; // never answered
    held.push({ id: msg.id, socket });
    if (held.length === 3) {
      // Answer in reverse order, with an event in between.
      for (const { id, socket: s } of held.reverse()) {
        s.write(JSON.stringify({ return: { answer: id }, id }) + '\r\n');
        s.write(JSON.stringify({ event: 'PING', data: { n: 1 }, timestamp: { seconds: 5, microseconds: 250_000 } }) + '\r\n');
      }
    }
  });
  try {
    const client = await QmpClient.connect(uri);
    const pings: QmpEvent[] = [];
    client.on('event', (e: QmpEvent) => pings.push(e));
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((name) => client.execute<{ answer: number }>(name)));
    assert.ok(a!.answer < b!.answer && b!.answer < c!.answer, JSON.stringify([a, b, c]));
    assert.equal(pings.length, 3);
    assert.deepEqual(pings[0], { event: 'PING', data: { n: 1 }, timestamp: { seconds: 5, microseconds: 250_000 }, timestampMs: 5250 });

    const hanging = client.execute('hang');
    const closed = once(client, 'close');
    held[0]!.socket.destroy();
    await assert.rejects(hanging, (err: unknown) => {
      assert.ok(err instanceof QmpConnectionError);
      assert.match(err.message, /closed before the reply to 'hang'/);
      return true;
    });
    await closed;
  } finally {
    server.close();
  }
});

test('QmpClient rejects a server that is not QMP', async () => {
  const server = createServer((socket) => socket.end('SSH-2.0-OpenSSH\r\n'));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const { port } = server.address() as { port: number };
    await assert.rejects(QmpClient.connect(`tcp:127.0.0.1:${port}`), /is not a QMP server/);
  } finally {
    server.close();
  }
});
