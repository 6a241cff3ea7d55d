/**
 * Fault injection between real `livemig run` processes over real sockets:
 * "never lose a VM". Each case starts a source (test machine, 32 MiB,
 * sequential pattern) and a destination, migrates through a FaultProxy with a
 * bandwidth cap, injects one fault, then checks the invariants
 * (test/helpers/fault-scenario.ts) and that a second migration succeeds.
 *
 * Seeded: the seed is printed; LIVEMIG_FAULT_SEED=N repeats a run.
 * LIVEMIG_FAULT_PARAMS overrides the parameters given to every machine
 * (default x-livemig-peer-timeout-ms=2000; empty for none, for older engines).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { Prng } from './helpers/prng.js';
import {
  DEFAULT_BANDWIDTH,
  FAULT_PARAMS,
  Scenario,
  clearUnknownMessage,
  pollMigration,
  secondMigration,
  settleAndCheck,
  sleep,
  startMigration,
  waitEvent,
  type MachineOptions,
  type Outcome,
  type Vm,
} from './helpers/fault-scenario.js';
import type { FaultProxy } from './helpers/fault-proxy.js';

const SEED = process.env.LIVEMIG_FAULT_SEED !== undefined ? Number(process.env.LIVEMIG_FAULT_SEED) : Date.now() % 1_000_000;
process.stderr.write(`faults.test: seed ${SEED} (LIVEMIG_FAULT_SEED=${SEED} repeats it); params ${JSON.stringify(FAULT_PARAMS)}\n`);

const MiB = 1024 * 1024;
/** First migrations: slow enough to hit (about 3 s of 32 MiB at 20 MiB/s) and converging (downtime-limit 2 s). */
const SLOW = { 'max-bandwidth': DEFAULT_BANDWIDTH, 'downtime-limit': 2000 };
const CASE_TIMEOUT = 50_000;

let caseNo = 0;

interface Ctx {
  s: Scenario;
  rng: Prng;
  src: Vm;
  dst: Vm;
  proxy: FaultProxy;
  diag: (msg: string) => void;
}

/** One case: pair + proxy, the fault (`body`), then invariants and a second migration. */
function faultCase(
  name: string,
  body: (c: Ctx) => Promise<void>,
  extraOrOptions: ((c: Ctx, o: Outcome) => void) | { dst?: MachineOptions } = () => {},
): void {
  const extra = typeof extraOrOptions === 'function' ? extraOrOptions : () => {};
  const dstOptions = typeof extraOrOptions === 'function' ? {} : extraOrOptions.dst ?? {};
  const seed = SEED + 7919 * ++caseNo;
  it(`${name} [seed ${seed}]`, { timeout: CASE_TIMEOUT }, async (t) => {
    const s = await Scenario.create();
    const rng = new Prng(seed);
    const diag = (msg: string): void => {
      s.note(msg);
      t.diagnostic(msg);
    };
    try {
      const src = await s.source();
      const dst = await s.destination(dstOptions);
      const proxy = await s.proxy(dst, seed);
      await sleep(800); // the guest touches all its pages: a stream of about 32 MiB
      const c: Ctx = { s, rng, src, dst, proxy, diag };
      await body(c);
      const outcome = await settleAndCheck(s, src, dst);
      diag(`outcome: guest ${outcome.where}; source ${outcome.srcStatus}${outcome.errorDesc ? ` (${outcome.errorDesc})` : ''}; destination ${outcome.dstState}; proxy up ${proxy.bytes.up} down ${proxy.bytes.down}`);
      extra(c, outcome);
      const second = await secondMigration(s, outcome);
      if (second.reason) diag(`second migration: ${second.reason}`);
      const violations = [...outcome.violations, ...(second.ok ? [] : [second.reason!])];
      assert.deepEqual(violations, [], `invariants violated:\n  ${violations.join('\n  ')}\nlog:\n  ${s.log.join('\n  ')}\nsource stderr: ${src.tail()}\ndestination stderr: ${dst.tail()}`);
    } finally {
      await s.cleanup();
    }
  });
}

const active = (minBytes: number) => (i: { status?: string; ram?: { transferred: number } }) => i.status === 'active' && (i.ram?.transferred ?? 0) >= minBytes;

describe('faults between two livemig processes', { timeout: 300_000 }, () => {
  faultCase('cut after N bytes (random N within the stream)', async ({ src, proxy, rng, diag }) => {
    const n = rng.range(1024, 36 * MiB);
    diag(`cut after ${n} bytes up`);
    proxy.cutAfter(n, 'up');
    await startMigration(src, proxy.uri, { params: SLOW });
  });

  faultCase('cut after N bytes with multifd (every channel goes through the proxy)', async ({ src, dst, proxy, rng, diag }) => {
    const n = rng.range(1024, 36 * MiB);
    diag(`cut after ${n} bytes up, multifd`);
    proxy.cutAfter(n, 'up');
    await startMigration(src, proxy.uri, { params: SLOW, caps: ['multifd'] });
    await pollMigration(src, () => false, 20_000);
    diag(`${proxy.connections} connections through the proxy`);
  }, { dst: { caps: ['multifd'] } });

  faultCase('a stream that ends before the RAM and device state never starts a guest', async ({ src, proxy, rng, diag }) => {
    const n = rng.range(1, 4096);
    diag(`cut after ${n} bytes up`);
    proxy.cutAfter(n, 'up');
    await startMigration(src, proxy.uri, { params: SLOW });
  }, (_c, o) => assert.notEqual(o.where, 'destination', 'a truncated stream started the guest'));

  faultCase('stall both ways during active: both sides time out, the source runs on', async ({ src, proxy, rng, diag }) => {
    await startMigration(src, proxy.uri, { params: SLOW });
    const at = rng.range(1, 20) * MiB;
    await pollMigration(src, active(at), 20_000);
    diag(`stall at ${proxy.bytes.up} bytes up`);
    proxy.stall();
  }, (_c, o) => {
    assert.equal(o.where, 'source');
    assert.equal(o.srcStatus, 'failed');
  });

  faultCase('stall at pre-switchover, migrate-continue, then migrate_cancel: cancelled, guest on the source', async ({ src, proxy, diag }) => {
    await startMigration(src, proxy.uri, { params: SLOW, caps: ['pause-before-switchover'] });
    const pre = await waitEvent(src, 'MIGRATION', (e) => e.data.status === 'pre-switchover', 30_000);
    assert.ok(pre, 'pre-switchover reached');
    assert.ok(src.sawEvent('STOP'), 'STOP before pre-switchover');
    proxy.stall();
    diag(`stalled at pre-switchover, ${proxy.bytes.up} bytes up`);
    await src.exec('migrate-continue', { state: 'pre-switchover' });
    await sleep(100);
    try {
      await src.exec('migrate_cancel');
      diag('migrate_cancel accepted');
    } catch (e) {
      diag(`migrate_cancel refused: ${(e as Error).message}`);
    }
  }, (_c, o) => {
    assert.equal(o.srcStatus, 'cancelled', 'cancel before the go-ahead works even with a silent link');
    assert.equal(o.where, 'source');
  });

  faultCase("drop the return path ('down') during active", async ({ src, proxy, rng, diag }) => {
    await startMigration(src, proxy.uri, { params: SLOW });
    await pollMigration(src, active(rng.range(1, 16) * MiB), 20_000);
    diag(`drop down at ${proxy.bytes.up} bytes up`);
    proxy.drop('down');
  }, (_c, o) => assert.notEqual(o.srcStatus, 'completed', 'no completion without the destination\'s confirmation'));

  faultCase('drop the return path on STOP: either the source resumes, or the destination runs and the source says the outcome is unknown', async ({ src, proxy, diag }) => {
    src.qmp!.on('event', (e) => {
      if (e.event === 'STOP') proxy.drop('down');
    });
    await startMigration(src, proxy.uri, { params: SLOW });
    await waitEvent(src, 'STOP', () => true, 30_000);
    diag(`return path dropped on STOP at ${proxy.bytes.up} bytes up, ${proxy.bytes.down} down`);
  }, (_c, o) => {
    if (o.dstState === 'running') {
      assert.equal(o.srcStatus, 'failed', 'no confirmation: the source cannot report completed');
      assert.ok(clearUnknownMessage(o.errorDesc), `error-desc says the outcome is unknown and names the command: ${o.errorDesc}`);
    } else assert.equal(o.where, 'source');
  });

  faultCase('SIGKILL of the destination on STOP', async ({ src, dst, proxy, diag }) => {
    src.qmp!.on('event', (e) => {
      if (e.event === 'STOP') void dst.kill();
    });
    await startMigration(src, proxy.uri, { params: SLOW });
    await waitEvent(src, 'STOP', () => true, 30_000);
    await dst.proc.exited;
    diag(`destination killed on STOP at ${proxy.bytes.up} bytes up`);
  }, (_c, o) => assert.ok(o.where === 'source' || o.where === 'source-paused', `guest ${o.where}`));

  faultCase('delay on every chunk: the migration still completes', async ({ src, proxy, rng, diag }) => {
    const ms = rng.range(2, 15);
    diag(`delay ${ms} ms (+ up to 5 ms jitter)`);
    proxy.delay(ms, 5);
    await startMigration(src, proxy.uri, { params: SLOW });
  }, (_c, o) => {
    assert.equal(o.srcStatus, 'completed', o.errorDesc);
    assert.equal(o.where, 'destination');
  });

  faultCase('SIGKILL of the destination at a random point', async ({ src, dst, proxy, rng, diag }) => {
    await startMigration(src, proxy.uri, { params: SLOW });
    const ms = rng.range(0, 2000);
    await sleep(ms);
    diag(`kill -9 destination after ${ms} ms (${proxy.bytes.up} bytes up, source ${src.statuses().at(-1)})`);
    await dst.kill();
  });

  faultCase('SIGKILL of the source at a random point: the destination starts only after the go-ahead', async ({ src, proxy, rng, diag }) => {
    await startMigration(src, proxy.uri, { params: SLOW });
    const ms = rng.range(0, 2000);
    await sleep(ms);
    diag(`kill -9 source after ${ms} ms (${proxy.bytes.up} bytes up, source ${src.statuses().at(-1)})`);
    await src.kill();
  });

  faultCase('migrate_cancel at a random point', async ({ src, proxy, rng, diag }) => {
    await startMigration(src, proxy.uri, { params: SLOW });
    const ms = rng.range(0, 2000);
    await sleep(ms);
    const st = src.statuses().at(-1);
    try {
      await src.exec('migrate_cancel');
      diag(`migrate_cancel after ${ms} ms (status ${st}) accepted`);
    } catch (e) {
      diag(`migrate_cancel after ${ms} ms (status ${st}) refused: ${(e as Error).message}`);
    }
  }, (c, o) => {
    // Before the go-ahead a cancel must win; after it, the destination runs the guest.
    if (o.srcStatus === 'completed') assert.equal(o.where, 'destination');
    else assert.equal(o.where, 'source', `cancelled: guest back on the source (${o.srcStatus})`);
  });

  faultCase('migrate_cancel immediately on the STOP event: cancelled, guest running on the source', async ({ src, proxy, diag }) => {
    let answer: Promise<unknown> | undefined;
    src.qmp!.on('event', (e) => {
      if (e.event === 'STOP' && !answer) answer = src.exec('migrate_cancel');
    });
    await startMigration(src, proxy.uri, { params: SLOW });
    await waitEvent(src, 'STOP', () => true, 30_000);
    for (let i = 0; i < 100 && !answer; i++) await sleep(10);
    try {
      await answer;
      diag('migrate_cancel on STOP accepted');
    } catch (e) {
      diag(`migrate_cancel on STOP refused: ${(e as Error).message}`);
    }
  }, (_c, o) => {
    assert.equal(o.srcStatus, 'cancelled');
    assert.equal(o.where, 'source');
  });

  faultCase('migrate_cancel in pre-switchover: cancelled, guest running on the source', async ({ src, proxy }) => {
    await startMigration(src, proxy.uri, { params: SLOW, caps: ['pause-before-switchover'] });
    assert.ok(await waitEvent(src, 'MIGRATION', (e) => e.data.status === 'pre-switchover', 30_000), 'pre-switchover reached');
    await src.exec('migrate_cancel');
  }, (_c, o) => {
    assert.equal(o.srcStatus, 'cancelled');
    assert.equal(o.where, 'source');
  });

  faultCase('migrate_cancel on a destination while it receives: no guest starts there', async ({ src, dst, proxy, rng, diag }) => {
    await startMigration(src, proxy.uri, { params: SLOW });
    await pollMigration(src, active(rng.range(1, 16) * MiB), 20_000);
    try {
      await dst.exec('migrate_cancel');
      diag('destination migrate_cancel accepted');
    } catch (e) {
      diag(`destination migrate_cancel refused: ${(e as Error).message}`);
    }
  }, (_c, o) => {
    assert.notEqual(o.dstState, 'running');
    assert.equal(o.where, 'source');
  });

  it(`migrate_cancel on a waiting destination ends its incoming migration; the source runs on [seed ${SEED}]`, { timeout: CASE_TIMEOUT }, async () => {
    const s = await Scenario.create();
    try {
      const src = await s.source();
      const dst = await s.destination();
      let refused: string | undefined;
      await dst.exec('migrate_cancel').catch((e: Error) => (refused = e.message));
      assert.equal(refused, undefined, `migrate_cancel on a waiting destination: ${refused}`);
      await sleep(500);
      const st = await dst.status();
      const q = await dst.query();
      assert.notEqual(st, 'running');
      assert.ok(!dst.alive || ['cancelled', 'failed'].includes(q?.status ?? ''), `the incoming migration ended (alive ${dst.alive}, status ${q?.status})`);
      // A migration to it now fails; the source guest runs on, intact; a fresh destination works.
      await startMigration(src, dst.uri, { params: SLOW }).catch(() => {});
      const end = await pollMigration(src, () => false, 20_000);
      assert.notEqual(end?.status, 'completed');
      assert.notEqual(await dst.status(), 'running');
      const outcome = await settleAndCheck(s, src, dst);
      assert.equal(outcome.where, 'source');
      const second = await secondMigration(s, outcome);
      assert.deepEqual([...outcome.violations, ...(second.ok ? [] : [second.reason])], []);
    } finally {
      await s.cleanup();
    }
  });

  it(`stray connections (connect-and-close, garbage) do not end a destination; a real migration then succeeds [seed ${SEED}]`, { timeout: CASE_TIMEOUT }, async () => {
    const s = await Scenario.create();
    const rng = new Prng(SEED);
    try {
      const src = await s.source();
      const dst = await s.destination();
      const port = Number(/:(\d+)$/.exec(dst.uri)![1]);
      const stray = (payload?: Buffer): Promise<void> =>
        new Promise((resolve) => {
          const c = connect({ port, host: '127.0.0.1' }, () => (payload ? c.end(payload) : c.end()));
          c.on('error', () => resolve()).on('close', () => resolve());
          c.resume();
        });
      await stray();
      await stray(Buffer.from(rng.bytes(rng.range(1, 2000))));
      await stray(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
      await sleep(300);
      assert.ok(dst.alive, `destination still alive after stray connections: ${dst.tail()}`);
      assert.equal(await dst.status(), 'inmigrate');
      await startMigration(src, dst.uri, { params: { 'max-bandwidth': 0 } });
      const end = await pollMigration(src, () => false, 30_000);
      assert.equal(end?.status, 'completed', end?.['error-desc']);
      const outcome = await settleAndCheck(s, src, dst);
      assert.equal(outcome.where, 'destination');
      assert.deepEqual(outcome.violations, []);
    } finally {
      await s.cleanup();
    }
  });

  it('query-migrate reports the latest migration: in A→B→C, B reports B→C once it started', { timeout: CASE_TIMEOUT }, async () => {
    const s = await Scenario.create();
    try {
      const a = await s.source();
      const b = await s.destination();
      await startMigration(a, b.uri, { params: { 'max-bandwidth': 0 } });
      assert.equal((await pollMigration(a, () => false, 30_000))?.status, 'completed');
      for (let i = 0; i < 50 && (await b.status()) !== 'running'; i++) await sleep(100);
      assert.equal((await b.query())?.status, 'completed', 'B reports its incoming migration');
      const c = await s.destination();
      const eventsBefore = b.qmpEvents.length; // B's incoming migration had its own 'active'
      await startMigration(b, c.uri, { params: SLOW });
      assert.ok(await waitEvent(b, 'MIGRATION', (e) => e.data.status === 'active', 10_000, eventsBefore), 'B→C is active (by its events)');
      const during = await b.query();
      assert.equal(during?.status, 'active', `B's query-migrate during B→C: ${JSON.stringify(during)}`);
      assert.ok(during?.ram, 'B reports the outgoing RAM figures');
      await pollMigration(b, () => false, 30_000);
      assert.equal((await b.query())?.status, 'completed', "B's query-migrate after B→C");
    } finally {
      await s.cleanup();
    }
  });

  it('the outcome-unknown message names a resolving command (message checker)', () => {
    assert.ok(clearUnknownMessage("the destination may already run the guest: outcome unknown; check with query-status on the destination, then cont here if it does not"));
    assert.ok(!clearUnknownMessage('socket closed'));
  });
});
