/**
 * The handover and liveness, both sides in this process over real loopback
 * sockets, with a proxy between them that can stall, cut, or drop one
 * direction when a given byte pattern passes (to hit the exact moments of
 * the handover: the go-ahead, the confirmation).
 *
 * After every case: where the guest runs (exactly one side, or paused on
 * exactly one side with an error naming the command that resolves it),
 * and the guest's own memory check.
 */
import assert from 'node:assert/strict';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { test } from 'node:test';
import { createTestMachine, type TestMachine } from '../src/machine/index.js';
import {
  HANDOVER_GO,
  HANDOVER_LOADED,
  IncomingMigration,
  MigrationConfig,
  OutgoingMigration,
  PeerWatchdog,
  type IncomingResult,
  type MigrationError,
} from '../src/migration/index.js';
import { queryMigrate } from '../src/monitor/query-migrate.js';
import { MemorySink, StreamWriter, writeConfiguration, writeEof, writeFileHeader } from '../src/wire/index.js';

const RAM_BYTES = 16 << 20;

async function waitUntil(condition: () => boolean, timeoutMs = 20_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function source(): Promise<TestMachine> {
  const machine = await createTestMachine({ ramSizeBytes: RAM_BYTES, dirtyRatePagesPerSecond: 20_000, pattern: 'sequential' });
  await waitUntil(() => machine.stats().pagesWritten > 500);
  return machine;
}

/** A destination machine with its incoming migration listening on a loopback port. */
async function destination(config = new MigrationConfig()): Promise<{ machine: TestMachine; incoming: IncomingMigration; address: string; result: Promise<IncomingResult>; rejected: string[] }> {
  const machine = await createTestMachine({ ramSizeBytes: RAM_BYTES, pattern: 'sequential', incoming: true });
  const incoming = new IncomingMigration(machine, { peerTimeoutMs: () => config.parameters['x-livemig-peer-timeout-ms'] });
  const rejected: string[] = [];
  incoming.on('rejected', (why) => rejected.push(why));
  const address = await incoming.listen('tcp:127.0.0.1:0');
  return { machine, incoming, address, result: incoming.run(), rejected };
}

/** The source guest runs and its memory is intact (checked paused, then resumed). */
async function assertSourceGuestIntact(machine: TestMachine): Promise<void> {
  assert.equal(machine.running, true, 'source guest running');
  await machine.pause();
  const check = machine.checkMemory();
  machine.resume();
  assert.equal(check.ok, true, check.reason);
}

type Direction = 'up' | 'down';

/**
 * Loopback proxy: `up` is source -> destination. `dropDownAfterUp(bytes)` stops
 * forwarding `down` (keeping the sockets open) once `bytes` passed `up`;
 * `stall()` stops forwarding both ways.
 */
class Proxy {
  private readonly server: Server;
  private readonly pairs: Array<{ client: Socket; upstream: Socket }> = [];
  private stalled = false;
  private dropped = new Set<Direction>();
  private trigger: { direction: Direction; pattern: Buffer; seen: Buffer; then: () => void } | undefined;
  port = 0;

  constructor(targetPort: number) {
    this.server = createServer((client) => {
      const upstream = connect(targetPort, '127.0.0.1');
      this.pairs.push({ client, upstream });
      client.on('data', (chunk: Buffer) => this.forward('up', chunk, upstream));
      upstream.on('data', (chunk: Buffer) => this.forward('down', chunk, client));
      // A stalled link is a blackhole: nothing, not even a close, gets through.
      for (const [a, b] of [[client, upstream], [upstream, client]] as const) {
        a.on('error', () => !this.stalled && b.destroy());
        a.on('close', () => !this.stalled && b.destroy());
        a.on('end', () => !this.stalled && b.end());
      }
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as { port: number }).port;
    return `tcp:127.0.0.1:${this.port}`;
  }

  private forward(direction: Direction, chunk: Buffer, to: Socket): void {
    if (this.stalled || this.dropped.has(direction)) return;
    to.write(chunk);
    if (this.trigger?.direction === direction) {
      const t = this.trigger;
      t.seen = Buffer.concat([t.seen, chunk]).subarray(-64);
      if (t.seen.includes(t.pattern)) {
        this.trigger = undefined;
        t.then();
      }
    }
  }

  /** Once `pattern` went through in `direction`, run `then` (e.g. drop the other direction). */
  when(direction: Direction, pattern: Buffer, then: () => void): void {
    this.trigger = { direction, pattern, seen: Buffer.alloc(0), then };
  }

  drop(direction: Direction): void {
    this.dropped.add(direction);
  }

  stall(): void {
    this.stalled = true;
  }

  close(): void {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.server.close();
  }
}

const portOf = (address: string): number => Number(/:(\d+)$/.exec(address)![1]);
const be32 = (value: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value);
  return b;
};
/** The return-path message PONG LOADED: type 2, length 4, the value. */
const loadedMessage = (): Buffer => Buffer.concat([Buffer.from([0, 2, 0, 4]), be32(HANDOVER_LOADED)]);

interface Pair {
  src: TestMachine;
  dst: Awaited<ReturnType<typeof destination>>;
  config: MigrationConfig;
  migration: OutgoingMigration;
  /** Where the source migrates to: the proxy's address. */
  uri: string;
  proxy: Proxy;
}

/** A source, a destination and a proxy between them (peer timeout `peerTimeoutMs` on both sides); everything torn down after `body`. */
async function withPair(peerTimeoutMs: number | undefined, body: (p: Pair) => Promise<void>): Promise<void> {
  const src = await source();
  const config = new MigrationConfig(peerTimeoutMs ? { parameters: { 'x-livemig-peer-timeout-ms': peerTimeoutMs } } : {});
  const dst = await destination(config);
  const proxy = new Proxy(portOf(dst.address));
  try {
    const uri = await proxy.listen();
    await body({ src, dst, config, migration: new OutgoingMigration(src, config), uri, proxy });
  } finally {
    proxy.close();
    await src.destroy();
    await dst.machine.destroy();
    await dst.result;
  }
}

test('livemig to livemig: the held handover is used; the destination starts the guest only on the go-ahead', { timeout: 60_000 }, async () => {
  const src = await source();
  const dst = await destination();
  try {
    const migration = new OutgoingMigration(src);
    let startedBeforeGo = false;
    dst.incoming.on('loaded', () => (startedBeforeGo = dst.machine.running));
    migration.start(dst.address);
    assert.equal(await migration.finished, 'completed', queryMigrate(migration)['error-desc']);
    assert.equal(migration.switchover?.handover, 'livemig');
    const result = await dst.result;
    assert.equal(result.status, 'completed');
    assert.equal(result.started, true);
    assert.equal(result.warning, undefined);
    assert.equal(startedBeforeGo, false);
    assert.equal(src.running, false);
    assert.equal(dst.machine.running, true);
    await dst.machine.pause();
    assert.equal(dst.machine.checkMemory().ok, true);
  } finally {
    await src.destroy();
    await dst.machine.destroy();
  }
});

for (const moment of ['stop', 'pre-switchover', 'device'] as const) {
  test(`cancel at ${moment}: the source resumes its guest, the destination starts nothing`, { timeout: 60_000 }, async () => {
    const src = await source();
    const dst = await destination();
    try {
      const migration = new OutgoingMigration(src);
      if (moment === 'pre-switchover') migration.setCapabilities({ 'pause-before-switchover': true });
      let cancelError: unknown;
      const cancel = (): void => {
        try {
          migration.cancel();
        } catch (err) {
          cancelError = err;
        }
      };
      if (moment === 'stop') migration.on('stop', cancel);
      else migration.on('status', (s) => s === moment && cancel());
      migration.start(dst.address);
      assert.equal(await migration.finished, 'cancelled', String(cancelError));
      assert.equal(cancelError, undefined, 'cancel accepted');
      await assertSourceGuestIntact(src);
      const result = await dst.result;
      assert.notEqual(result.status, 'completed');
      assert.equal(result.started, false);
      assert.equal(dst.machine.running, false);
    } finally {
      await src.destroy();
      await dst.machine.destroy();
    }
  });
}

test('a link stalled after switchover: migrate-continue, then cancel works and the source resumes (the QEMU-frozen case)', { timeout: 60_000 }, () =>
  withPair(undefined, async ({ src, dst, migration, uri, proxy }) => {
    migration.setCapabilities({ 'pause-before-switchover': true });
    migration.on('status', (s) => {
      if (s !== 'pre-switchover') return;
      proxy.stall();
      migration.continue('pre-switchover');
      setTimeout(() => migration.cancel(), 300);
    });
    migration.start(uri);
    assert.equal(await migration.finished, 'cancelled');
    await assertSourceGuestIntact(src);
    assert.equal(dst.machine.running, false);
  }));

for (const fault of ['blackholed link', 'return path alone dropped (destination -> source)'] as const) {
  test(`liveness: ${fault} during active: the source notices within the peer timeout and resumes; the destination starts nothing`, { timeout: 60_000 }, () =>
    withPair(1000, async ({ src, dst, migration, uri, proxy }) => {
      migration.setParameters({ 'max-bandwidth': 8 << 20 });
      migration.on('status', (s) => s === 'active' && setTimeout(() => (fault === 'blackholed link' ? proxy.stall() : proxy.drop('down')), 200));
      const t0 = performance.now();
      migration.start(uri);
      assert.equal(await migration.finished, 'failed');
      const elapsedMs = performance.now() - t0;
      assert.equal(migration.error?.code, 'peer-timeout', migration.error?.message);
      assert.ok(elapsedMs < 6000, `noticed in ${elapsedMs} ms`);
      await assertSourceGuestIntact(src);
      const result = await dst.result;
      assert.equal(result.status, 'failed');
      assert.equal(result.started, false);
      // A blackholed destination notices by itself; with only the return path dropped it sees the source go.
      assert.ok(['peer-timeout', 'peer-closed'].includes(result.error!.code), result.error!.message);
    }));
}

test('the confirmation lost after the go-ahead: the source keeps its guest paused and says the outcome is unknown; the destination runs it and says the source may not know', { timeout: 60_000 }, () =>
  withPair(1000, async ({ src, dst, migration, uri, proxy }) => {
    proxy.when('up', be32(HANDOVER_GO), () => proxy.drop('down'));
    migration.start(uri);
    assert.equal(await migration.finished, 'failed');
    const err = migration.error as MigrationError;
    assert.equal(err.code, 'outcome-unknown', err.message);
    assert.match(err.message, /query-status on the destination/);
    assert.match(queryMigrate(migration)['error-desc']!, /outcome is unknown/);
    assert.equal(queryMigrate(migration)['x-livemig-error-code'], 'outcome-unknown');
    assert.equal(src.running, false, 'the source guest stays paused');
    const result = await dst.result;
    assert.equal(result.status, 'completed');
    assert.equal(result.started, true);
    assert.match(result.warning ?? '', /Do not cont the source/);
    assert.equal(dst.machine.running, true, 'the guest runs on exactly one side: the destination');
  }));

test('the go-ahead lost: the destination gives up and starts nothing; the source is paused with the outcome unknown, and cont runs it again', { timeout: 60_000 }, () =>
  withPair(1000, async ({ src, dst, migration, uri, proxy }) => {
    // LOADED reaches the source, so it sends the go-ahead; that does not get through.
    proxy.when('down', loadedMessage(), () => proxy.drop('up'));
    migration.start(uri);
    assert.equal(await migration.finished, 'failed');
    assert.equal(migration.error?.code, 'outcome-unknown', migration.error?.message);
    assert.equal(src.running, false, 'paused: the source cannot know');
    const result = await dst.result;
    assert.equal(result.started, false, 'no go-ahead: not started');
    assert.equal(dst.machine.running, false);
    src.resume(); // the operator's `cont`, after query-status on the destination said it is not running
    await assertSourceGuestIntact(src);
  }));

test('a waiting destination can be cancelled; one that is receiving too, and the source resumes', { timeout: 60_000 }, async () => {
  const waiting = await destination();
  waiting.incoming.cancel();
  const r1 = await waiting.result;
  assert.equal(r1.status, 'cancelled');
  assert.equal(r1.error?.code, 'cancelled');
  assert.equal(waiting.incoming.status, 'cancelled');
  await waiting.machine.destroy();

  const src = await source();
  const dst = await destination();
  try {
    const migration = new OutgoingMigration(src);
    migration.setParameters({ 'max-bandwidth': 8 << 20 });
    migration.on('status', (s) => s === 'active' && setTimeout(() => dst.incoming.cancel(), 200));
    migration.start(dst.address);
    assert.equal(await migration.finished, 'failed');
    await assertSourceGuestIntact(src);
    const r2 = await dst.result;
    assert.equal(r2.status, 'cancelled');
    assert.equal(r2.started, false);
  } finally {
    await src.destroy();
    await dst.machine.destroy();
  }
});

test('stray connections (connect-and-close, garbage, silence) are dropped; the destination keeps waiting and then migrates', { timeout: 60_000 }, async () => {
  const config = new MigrationConfig({ parameters: { 'x-livemig-peer-timeout-ms': 500 } });
  const dst = await destination(config);
  const src = await source();
  const port = portOf(dst.address);
  const silent = connect(port, '127.0.0.1');
  try {
    await new Promise<void>((resolve) => connect(port, '127.0.0.1', function (this: Socket) {
      this.end();
      resolve();
    }));
    await new Promise<void>((resolve) => connect(port, '127.0.0.1', function (this: Socket) {
      this.end('GET / HTTP/1.1\r\n\r\n');
      resolve();
    }));
    await waitUntil(() => dst.rejected.length >= 3, 10_000, 'three rejected connections');
    assert.ok(dst.rejected.some((r) => /first bytes 474554/.test(r)), dst.rejected.join('\n'));
    assert.ok(dst.rejected.some((r) => /sent nothing valid/.test(r)), dst.rejected.join('\n'));
    assert.equal(dst.incoming.status, 'setup');
    const migration = new OutgoingMigration(src, config);
    migration.start(dst.address);
    assert.equal(await migration.finished, 'completed', queryMigrate(migration)['error-desc']);
    assert.equal((await dst.result).started, true);
  } finally {
    silent.destroy();
    await src.destroy();
    await dst.machine.destroy();
  }
});

test('an incomplete stream (header, configuration, EOF) never starts a blank guest', { timeout: 30_000 }, async () => {
  const dst = await destination();
  try {
    const sink = new MemorySink();
    const w = new StreamWriter(sink);
    writeFileHeader(w);
    writeConfiguration(w, { machineName: dst.machine.machineName });
    writeEof(w);
    await w.flush();
    const socket = connect(portOf(dst.address), '127.0.0.1');
    socket.end(Buffer.from(sink.bytes()));
    const result = await dst.result;
    assert.equal(result.status, 'failed');
    assert.equal(result.started, false);
    assert.equal(result.error?.code, 'bad-stream');
    assert.match(result.error!.message, /incomplete stream/);
    assert.equal(dst.machine.running, false);
    socket.destroy();
  } finally {
    await dst.machine.destroy();
  }
});

test('PeerWatchdog: pending operations, busy steps without progress, unanswered pings; progress resets the clock', () => {
  let nowMs = 0;
  let progress = 0;
  const stalls: MigrationError[] = [];
  const make = (): PeerWatchdog =>
    new PeerWatchdog({ peer: 'destination', timeoutMs: () => 1000, progress: () => progress, onStall: (e) => stalls.push(e), now: () => nowMs });

  // A channel's reads or writes are counted (a gauge): progress is seen by the check after it.
  const g = make();
  const reads = g.gauge('sent any data');
  reads.begin();
  nowMs = 600;
  g.check(); // the read began since the last check: progress, seen at 600
  nowMs = 1500;
  g.check();
  assert.equal(stalls.length, 0, 'a read pending 900 ms since it was seen is not yet a stall');
  nowMs = 1601;
  g.check();
  assert.equal(stalls.length, 1);
  assert.equal(stalls[0]!.code, 'peer-timeout');
  assert.match(stalls[0]!.message, /has not sent any data for 1\.0 s/);
  reads.end();
  nowMs = 9000;
  g.check();
  assert.equal(stalls.length, 1, 'a watchdog stalls once');
  const h = make();
  const writes = h.gauge('taken any data');
  for (let t = 0; t <= 5000; t += 250) {
    // Writes that keep completing are never a stall, however long the stream; an idle gauge neither.
    nowMs = t;
    writes.begin();
    if (t < 4000) writes.end();
    h.check();
  }
  nowMs = 5000 + 1001;
  h.check();
  assert.equal(stalls.length, 2, 'the last write, pending for over the timeout since it began, is a stall');
  assert.match(stalls[1]!.message, /has not taken any data for 1\.0 s/);
  stalls.splice(1, 1);

  nowMs = 0;
  const b = make();
  let release!: () => void;
  void b.busy(() => new Promise<void>((r) => (release = r)));
  nowMs = 800;
  progress = 1; // bytes moved: not a stall
  b.check();
  nowMs = 1700;
  b.check();
  assert.equal(stalls.length, 1);
  nowMs = 1801;
  b.check();
  assert.equal(stalls.length, 2);
  assert.match(stalls[1]!.message, /no data has moved/);
  release();

  nowMs = 0;
  const c = make();
  c.expectReply();
  nowMs = 999;
  c.replied();
  nowMs = 1500;
  c.check();
  assert.equal(stalls.length, 2, 'answered in time');
  c.expectReply();
  nowMs = 2501;
  c.check();
  assert.equal(stalls.length, 3);
  assert.match(stalls[2]!.message, /has not answered/);
});
