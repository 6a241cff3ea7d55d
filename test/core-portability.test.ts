/**
 * The pieces that replaced Node APIs in the core so it runs in a browser
 * behave as the Node APIs did: the typed emitter (node:events' EventEmitter
 * semantics the engine's callers rely on) and the URI parser's IP address
 * checks (node:net's isIPv4/isIPv6). And the engine over a channel opened
 * elsewhere (what a page and a ws server that accepted a page use).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import { isIPv4, isIPv6 } from 'node:net';
import { isIPv4Address, isIPv6Address, parseMigrationUri } from '../src/transport/uri.js';
import { TypedEmitter } from '../src/wire/emitter.js';
import { createMemoryChannelPair } from '../src/wire/memory-pipe.js';
import { createTestMachine } from '../src/machine/test-machine.js';
import { IncomingMigration, MigrationConfig, OutgoingMigration, openedChannels } from '../src/migration/index.js';

test('the URI parser accepts exactly the IP addresses node:net accepts', () => {
  const cases = [
    '1.2.3.4', '255.255.255.255', '0.0.0.0', '256.1.1.1', '01.2.3.4', '1.2.3.04', '1.2.3', '1.2.3.4.5', 'localhost',
    '::', '::1', '1::', 'fe80::1%eth0', 'fe80::%eth0', '::1%1', 'fe80::1%', '::ffff:1.2.3.4', '::ffff:256.1.1.1', '::01.2.3.4',
    '1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7::', '::1.2.3.4', '1::2::3', 'gggg::1', '12345::1',
    '1:2:3:4:5:6:1.2.3.4', '1:2:3:4:5:6:7:1.2.3.4', ':1', '1:', '[::1]', 'a:b:c:d:e:f:0:1', 'ABCD::EF',
  ];
  for (const c of cases) {
    assert.equal(isIPv4Address(c), isIPv4(c), `isIPv4(${c})`);
    assert.equal(isIPv6Address(c), isIPv6(c), `isIPv6(${c})`);
  }
  assert.equal(parseMigrationUri('tcp:[fe80::1]:4444').kind, 'tcp');
  assert.throws(() => parseMigrationUri('tcp:[1::2::3]:4444'), /'1::2::3' is not an IPv6 address/);
  assert.throws(() => parseMigrationUri(`unix:/${'é'.repeat(60)}`), /is 121 bytes, at most 107 fit/);
});

interface Events {
  tick: [number];
  done: [];
}

test("the typed emitter keeps EventEmitter's order, once, off and removal-during-emit semantics", async () => {
  // Node's own EventEmitter runs the same checks: the reference the typed emitter must match.
  for (const make of [() => new TypedEmitter<Events>(), () => new EventEmitter<Events>() as unknown as TypedEmitter<Events>]) {
    const e = make();
    const seen: string[] = [];
    const a = (n: number): void => void seen.push(`a${n}`);
    const b = (n: number): void => {
      seen.push(`b${n}`);
      e.off('tick', c); // removed during the emit: still runs for this one
    };
    const c = (n: number): void => void seen.push(`c${n}`);
    e.on('tick', a).on('tick', b).on('tick', c);
    e.once('tick', (n) => seen.push(`once${n}`));
    assert.equal(e.listenerCount('tick'), 4);
    assert.equal(e.emit('tick', 1), true);
    assert.equal(e.emit('tick', 2), true);
    assert.deepEqual(seen, ['a1', 'b1', 'c1', 'once1', 'a2', 'b2']);
    // off() finds a once() listener by the function given.
    const never = (): void => assert.fail('removed once listener ran');
    e.once('done', never);
    e.off('done', never);
    assert.equal(e.emit('done'), false);
    // node:events' once() helper works on it (tests and callers await events this way).
    const waited = once(e as unknown as EventEmitter, 'tick');
    e.emit('tick', 7);
    assert.deepEqual(await waited, [7]);
    e.removeAllListeners('tick');
    assert.equal(e.listenerCount('tick'), 0);
    // A throwing listener's error reaches the emitter's caller.
    e.on('done', () => {
      throw new Error('listener failed');
    });
    assert.throws(() => e.emit('done'), /listener failed/);
  }
});

test('a migration over a channel that is already open: openedChannels() on the source, IncomingMigration.receiveFrom() on the destination (memory channel pair)', { timeout: 60_000 }, async () => {
  const ramSizeBytes = 8 << 20;
  const source = await createTestMachine({ ramSizeBytes, dirtyRatePagesPerSecond: 2000 });
  const destination = await createTestMachine({ ramSizeBytes, incoming: true });
  try {
    const uri = 'ws://in-process:1/pipe';
    const pair = createMemoryChannelPair(uri);
    const incoming = new IncomingMigration(destination);
    let hashAtLoad = '';
    incoming.on('loaded', () => (hashAtLoad = destination.ramHash()));
    incoming.receiveFrom(pair.destination, uri);
    assert.throws(() => incoming.receiveFrom(pair.destination, uri), /can only be used once/);
    const outgoing = new OutgoingMigration(source, new MigrationConfig(), { channels: openedChannels(pair.source) });
    let hashAtStop = '';
    outgoing.on('status', (status) => {
      if (status === 'completed') hashAtStop = source.ramHash();
    });
    outgoing.start(uri);
    const [status, result] = await Promise.all([outgoing.finished, incoming.run()]);
    assert.equal(status, 'completed', outgoing.error?.message);
    assert.equal(result.status, 'completed', result.error?.message);
    assert.equal(result.started, true);
    assert.equal(hashAtLoad, hashAtStop, 'the destination loaded RAM exactly as the source stopped it');
    assert.equal(source.running, false, 'the guest runs on one side only');
    assert.equal(destination.running, true);
    // The opened channel serves one migration: a second start fails clearly instead of reusing it.
    outgoing.start(uri);
    assert.equal(await outgoing.finished, 'failed');
    assert.match(outgoing.error?.message ?? '', /the opened channel was used already/);
  } finally {
    await source.destroy();
    await destination.destroy();
  }
});
