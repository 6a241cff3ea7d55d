/**
 * The destination prepares guest RAM (touches every page, notes the zero
 * ones) a slice at a time after listen(): the event loop keeps turning, and a
 * source that connects before it is done is loaded meanwhile, byte for byte.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { createTestMachine } from '../src/machine/index.js';
import { IncomingMigration, MigrationConfig, OutgoingMigration } from '../src/migration/index.js';

const RAM_BYTES = 256 << 20;

test('listen() returns before guest RAM is prepared; the event loop turns while it is; ramPrepared says when it is done', { timeout: 60_000 }, async () => {
  const destination = await createTestMachine({ ramSizeBytes: RAM_BYTES, incoming: true });
  try {
    const incoming = new IncomingMigration(destination);
    let turns = 0;
    let counting = true;
    const counter = (async () => {
      while (counting) {
        await nextTurn();
        turns++;
      }
    })();
    await incoming.listen('tcp:127.0.0.1:0');
    await incoming.ramPrepared;
    counting = false;
    await counter;
    // 256 MiB is 32 slices of 8 MiB, each followed by a turn of the event loop; in one go there were none.
    assert.ok(turns >= 16, `${turns} turns of the event loop while 256 MiB were prepared`);
    incoming.cancel();
    assert.equal((await incoming.run()).status, 'cancelled');
  } finally {
    await destination.destroy();
  }
});

for (const multifd of [false, true]) {
  test(`a source that connects while the destination still prepares its RAM is loaded meanwhile, RAM intact${multifd ? ' (multifd: its threads write guest RAM while pages are touched)' : ''}`, { timeout: 120_000 }, async () => {
    const source = await createTestMachine({ ramSizeBytes: RAM_BYTES, dirtyRatePagesPerSecond: 5000 });
    const destination = await createTestMachine({ ramSizeBytes: RAM_BYTES, incoming: true });
    try {
      const incoming = new IncomingMigration(destination, multifd ? { multifd: { channels: 2 } } : {});
      let hashAtLoad = '';
      incoming.on('loaded', () => (hashAtLoad = destination.ramHash()));
      const address = await incoming.listen('tcp:127.0.0.1:0');
      let prepared = false;
      void incoming.ramPrepared.then(() => (prepared = true));
      const outgoing = new OutgoingMigration(source, new MigrationConfig());
      if (multifd) {
        outgoing.setCapabilities({ multifd: true });
        outgoing.setParameters({ 'multifd-channels': 2 });
      }
      let hashAtStop = '';
      outgoing.on('status', (status) => {
        if (status === 'completed') hashAtStop = source.ramHash();
      });
      assert.equal(prepared, false, 'the migration starts before the destination finished preparing');
      outgoing.start(address);
      const [status, result] = await Promise.all([outgoing.finished, incoming.run()]);
      assert.equal(status, 'completed', outgoing.error?.message);
      assert.equal(result.status, 'completed', result.error?.message);
      assert.equal(hashAtLoad, hashAtStop, 'the destination loaded RAM exactly as the source stopped it');
      // The load ended first: the preparation stops there, and says so.
      await incoming.ramPrepared;
    } finally {
      await source.destroy();
      await destination.destroy();
    }
  });
}

test('loadTimeMs counts from the source\'s connection, not from run(): the wait for a source is not the load', { timeout: 60_000 }, async () => {
  const source = await createTestMachine({ ramSizeBytes: 16 << 20, dirtyRatePagesPerSecond: 1000 });
  const destination = await createTestMachine({ ramSizeBytes: 16 << 20, incoming: true });
  try {
    const incoming = new IncomingMigration(destination);
    const address = await incoming.listen('tcp:127.0.0.1:0');
    const loaded = incoming.run();
    const waitStartedMs = performance.now();
    await new Promise((resolve) => setTimeout(resolve, 1000)); // nobody connects yet
    const outgoing = new OutgoingMigration(source, new MigrationConfig());
    outgoing.start(address);
    const [status, result] = await Promise.all([outgoing.finished, loaded]);
    const elapsedMs = performance.now() - waitStartedMs;
    assert.equal(status, 'completed', outgoing.error?.message);
    assert.equal(result.status, 'completed', result.error?.message);
    assert.ok(elapsedMs - result.loadTimeMs >= 900, `loadTimeMs ${Math.round(result.loadTimeMs)} of ${Math.round(elapsedMs)} ms since run(), 1000 of them waiting for a source`);
  } finally {
    await source.destroy();
    await destination.destroy();
  }
});
