/**
 * `npm run soak`: chained live migrations A→B→C→... between fresh `livemig run`
 * processes (test machine, sequential pattern, some chains with a disk), mixed
 * capabilities per hop, random faults per hop, every hop checked against the
 * "never lose a VM" invariants (test/helpers/fault-scenario.ts).
 *
 *   node dist/scripts/soak.js [--count N] [--seed S] [--max-minutes M] [--fault-rate P] [--json]
 *
 * LIVEMIG_FAULT_PARAMS as for test/faults.test.ts (empty for engines without
 * x-livemig-peer-timeout-ms). Exits 1 on any invariant violation.
 */
import { unlink } from 'node:fs/promises';
import { Prng } from '../test/helpers/prng.js';
import type { FaultProxy } from '../test/helpers/fault-proxy.js';
import {
  FAULT_PARAMS,
  Scenario,
  pollMigration,
  resetMigrationSettings,
  settleAndCheck,
  sleep,
  startMigration,
  type Outcome,
  type Vm,
} from '../test/helpers/fault-scenario.js';

const MiB = 1024 * 1024;

interface Options {
  count: number;
  seed: number;
  maxMinutes: number;
  faultRate: number;
  json: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { count: 500, seed: Date.now() % 1_000_000, maxMinutes: 60, faultRate: 0.5, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = (): number => {
      const v = Number(argv[++i]);
      if (!Number.isFinite(v)) throw new Error(`${a} expects a number`);
      return v;
    };
    if (a === '--count') o.count = next();
    else if (a === '--seed') o.seed = next();
    else if (a === '--max-minutes') o.maxMinutes = next();
    else if (a === '--fault-rate') o.faultRate = next();
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: soak [--count N=500] [--seed S] [--max-minutes M=60] [--fault-rate P=0.5] [--json]\n');
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  return o;
}

const CAPS = ['plain', 'xbzrle', 'multifd', 'auto-converge'] as const;
const FAULTS = ['cut', 'stall', 'drop-down', 'delay', 'kill-source', 'kill-destination', 'cancel'] as const;
type Fault = (typeof FAULTS)[number] | 'none';

interface Hop {
  hop: number;
  seed: number;
  chain: number;
  from: string;
  to: string;
  caps: string;
  disk: boolean;
  bandwidth: number;
  fault: Fault;
  faultDetail: string;
  where?: string;
  srcStatus?: string;
  errorDesc?: string;
  dstState?: string;
  violations: string[];
  ms: number;
}

interface Totals {
  attempted: number;
  completed: number;
  failed: number;
  failedBy: Record<string, number>;
  cancelled: number;
  lostWrites: number;
  nowhere: number;
  twice: number;
  killedWithGuest: number;
  sourceKilled: number;
  pausedUnknown: number;
  violations: Array<{ hop: Hop; log: string[] }>;
}

function reasonOf(desc: string | undefined): string {
  return (desc ?? '(no error-desc)')
    .replace(/tcp:[^ :]+:\d+/g, 'tcp:ADDR')
    .replace(/\d+/g, 'N')
    .slice(0, 110);
}

const HOP_TIMEOUT_MS = 90_000;
const CHAIN_MAX = 8;

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const deadline = started + o.maxMinutes * 60_000;
  const rng = new Prng(o.seed);
  const totals: Totals = { attempted: 0, completed: 0, failed: 0, failedBy: {}, cancelled: 0, lostWrites: 0, nowhere: 0, twice: 0, killedWithGuest: 0, sourceKilled: 0, pausedUnknown: 0, violations: [] };
  const say = (line: string): void => {
    if (!o.json) process.stdout.write(line + '\n');
  };
  say(`soak: seed ${o.seed}, count ${o.count}, max ${o.maxMinutes} min, fault rate ${o.faultRate}, params ${JSON.stringify(FAULT_PARAMS)}`);

  const s = await Scenario.create('livemig-soak-');
  let interrupted = false;
  const onSignal = (): void => {
    interrupted = true;
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  let holder: Vm | undefined;
  let disk = false;
  let chain = 0;
  let chainLength = 0;
  const images = new Map<Vm, string>();
  const typical = { ram: 1200, disk: 2800 };
  // The disk-rate is a property of the host: given on destinations too, so the guest writes on after each hop.
  const diskArgs = (vm: string): { args: string[]; path: string } => {
    const path = s.path(`${vm}.img`);
    return { path, args: ['--disk', `${path},size=32M`, '--disk-rate', '500', '--disk-pattern', 'sequential'] };
  };
  const retire = async (vm: Vm): Promise<void> => {
    await s.retire(vm);
    const img = images.get(vm);
    images.delete(vm);
    if (img) {
      await unlink(img).catch(() => {});
      await unlink(img + '.livemig-incoming').catch(() => {});
    }
  };

  try {
    for (let hop = 1; hop <= o.count && Date.now() < deadline && !interrupted; hop++) {
      const hopSeed = (o.seed * 31 + hop * 7919) >>> 0;
      const r = new Prng(hopSeed);
      // A fresh chain when the guest was lost (killed) or the chain is long enough.
      if (!holder || !holder.alive || chainLength >= CHAIN_MAX) {
        if (holder) await retire(holder);
        chain++;
        chainLength = 0;
        disk = chain % 3 === 2 || rng.chance(0.25); // every third chain, and some more, carries a disk
        const d = diskArgs(`c${chain}-src`);
        holder = await s.source({ args: disk ? d.args : [] });
        if (disk) images.set(holder, d.path);
        await sleep(800);
      }
      chainLength++;
      const caps = r.pick(CAPS);
      const fault: Fault = r.chance(o.faultRate) ? r.pick(FAULTS) : 'none';
      const bandwidth = r.range(20, 50) * MiB;
      const dd = diskArgs(`c${chain}-h${hop}`);
      const dst = await s.destination({ args: disk ? dd.args : [], caps: caps === 'multifd' ? ['multifd'] : [] });
      if (disk) images.set(dst, dd.path);
      const proxy = await s.proxy(dst, hopSeed);
      const src = holder;
      const h: Hop = { hop, seed: hopSeed, chain, from: src.name, to: dst.name, caps, disk, bandwidth, fault, faultDetail: '', violations: [], ms: 0 };
      const t0 = Date.now();
      s.note(`hop ${hop}: ${src.name} -> ${dst.name}, ${caps}${disk ? ', disk' : ''}, ${bandwidth / MiB} MiB/s, fault ${fault}`);
      let outcome: Outcome | undefined;
      try {
        outcome = await withTimeout(runHop(src, dst, proxy, h, r, s, typical[disk ? 'disk' : 'ram']), HOP_TIMEOUT_MS, `hop ${hop} did not finish within ${HOP_TIMEOUT_MS / 1000} s`);
      } catch (e) {
        h.violations.push(`hop error: ${(e as Error).message}`);
      }
      h.ms = Date.now() - t0;
      // Faults are timed within a typical migration of this kind (moving average of clean hops).
      if (fault === 'none' && outcome?.srcStatus === 'completed') typical[disk ? 'disk' : 'ram'] = 0.7 * typical[disk ? 'disk' : 'ram'] + 0.3 * h.ms;
      totals.attempted++;
      if (outcome) {
        h.where = outcome.where;
        h.srcStatus = outcome.srcStatus;
        if (outcome.errorDesc !== undefined) h.errorDesc = outcome.errorDesc;
        h.dstState = outcome.dstState;
        h.violations.push(...outcome.violations);
        if (outcome.srcStatus === 'completed') totals.completed++;
        else if (outcome.srcStatus === 'cancelled') totals.cancelled++;
        else if (outcome.srcStatus === 'failed') {
          totals.failed++;
          const why = reasonOf(outcome.errorDesc);
          totals.failedBy[why] = (totals.failedBy[why] ?? 0) + 1;
        } else if (outcome.srcStatus === 'killed') totals.sourceKilled++;
        if (outcome.lostWrites) totals.lostWrites++;
        if (outcome.where === 'nowhere') totals.nowhere++;
        if (outcome.where === 'both') totals.twice++;
        if (outcome.where === 'killed') totals.killedWithGuest++;
        if (outcome.where === 'source-paused') totals.pausedUnknown++;
        // A hop without a fault (or with only a delay) must complete: that is the "second migration succeeds" check.
        if ((fault === 'none' || fault === 'delay') && outcome.srcStatus !== 'completed') h.violations.push(`hop without a disruptive fault did not complete: ${outcome.srcStatus} ${outcome.errorDesc ?? ''}`);
      }
      if (h.violations.length > 0) totals.violations.push({ hop: h, log: s.log.slice(-30) });
      if (o.json) process.stdout.write(JSON.stringify({ event: 'hop', ...h }) + '\n');
      else {
        const mark = h.violations.length ? `  VIOLATION: ${h.violations.join('; ')}` : '';
        say(`[${hop}] ${h.from}->${h.to} ${caps}${disk ? '+disk' : ''} ${fault}${h.faultDetail ? ` (${h.faultDetail})` : ''}: ${h.srcStatus ?? '?'}, guest ${h.where ?? '?'}, ${(h.ms / 1000).toFixed(1)} s | ` +
          `done ${totals.completed} failed ${totals.failed} cancelled ${totals.cancelled} violations ${totals.violations.length}${mark}`);
      }
      // Next hop from wherever the guest is; everything else goes.
      let next = outcome?.holder;
      if (next && outcome?.where === 'source-paused') await next.exec('cont').catch(() => {});
      if (next && (!next.alive || (await next.status()) !== 'running')) next = undefined;
      for (const vm of [src, dst]) if (vm !== next) await retire(vm);
      await s.retireProxy(proxy);
      s.log.length = 0;
      holder = next;
      if (next) await resetMigrationSettings(next).catch(() => {});
    }
  } finally {
    await s.cleanup();
  }

  const minutes = (Date.now() - started) / 60_000;
  const table: Array<[string, number | string]> = [
    ['migrations attempted', totals.attempted],
    ['completed', totals.completed],
    ['failed (with a reason)', totals.failed],
    ['cancelled', totals.cancelled],
    ['source killed (outcome by destination)', totals.sourceKilled],
    ['paused with outcome unknown', totals.pausedUnknown],
    ['lost writes (memory check failures)', totals.lostWrites],
    ['guests running nowhere', totals.nowhere],
    ['guests running twice', totals.twice],
    ['killed with their guest', totals.killedWithGuest],
    ['invariant violations', totals.violations.length],
    ['rate (migrations/minute)', (totals.attempted / minutes).toFixed(1)],
  ];
  if (o.json) {
    process.stdout.write(JSON.stringify({ event: 'summary', seed: o.seed, minutes, totals }) + '\n');
  } else {
    say('');
    for (const [k, v] of table) say(`${k.padEnd(40)} ${v}`);
    if (Object.keys(totals.failedBy).length) {
      say('\nfailed, by reason:');
      for (const [why, n] of Object.entries(totals.failedBy).sort((a, b) => b[1] - a[1])) say(`  ${String(n).padStart(4)}  ${why}`);
    }
    if (totals.violations.length) {
      say('\ninvariant violations:');
      for (const { hop, log } of totals.violations) {
        say(`  hop ${hop.hop} (seed ${hop.seed}, chain ${hop.chain}) ${hop.from}->${hop.to} ${hop.caps}${hop.disk ? '+disk' : ''} fault ${hop.fault}${hop.faultDetail ? ` (${hop.faultDetail})` : ''}, ${(hop.bandwidth / MiB).toFixed(0)} MiB/s: source ${hop.srcStatus}, guest ${hop.where}, destination ${hop.dstState}`);
        for (const v of hop.violations) say(`      - ${v}`);
        for (const l of log.slice(-8)) say(`        ${l}`);
      }
    }
    say(`\nsoak: seed ${o.seed}; ${totals.attempted} migrations in ${minutes.toFixed(1)} min${interrupted ? ' (interrupted)' : ''}`);
  }
  return totals.violations.length > 0 ? 1 : 0;
}

async function runHop(src: Vm, dst: Vm, proxy: FaultProxy, h: Hop, r: Prng, s: Scenario, typicalMs: number): Promise<Outcome> {
  const caps = h.caps === 'plain' ? [] : [h.caps];
  const params = { 'max-bandwidth': h.bandwidth, 'downtime-limit': 2000 };
  const at = Math.round(r.next() * typicalMs * 1.1);
  switch (h.fault) {
    case 'cut': {
      // The return path carries a few dozen bytes; the main stream tens of MiB.
      const dir = r.chance(0.8) ? 'up' : 'down';
      const n = dir === 'up' ? r.range(1, (h.disk ? 100 : 66) * MiB) : r.range(1, 24);
      h.faultDetail = `after ${n} bytes ${dir}`;
      proxy.cutAfter(n, dir);
      await startMigration(src, proxy.uri, { caps, params, blk: h.disk });
      break;
    }
    case 'delay': {
      const ms = r.range(1, 10);
      h.faultDetail = `${ms} ms`;
      proxy.delay(ms, 3);
      await startMigration(src, proxy.uri, { caps, params, blk: h.disk });
      break;
    }
    case 'none':
      await startMigration(src, proxy.uri, { caps, params, blk: h.disk });
      break;
    default: {
      await startMigration(src, proxy.uri, { caps, params, blk: h.disk });
      await sleep(at);
      h.faultDetail = `at ${at} ms, ${proxy.bytes.up} bytes up, source ${src.statuses().at(-1) ?? '?'}`;
      if (h.fault === 'stall') proxy.stall();
      else if (h.fault === 'drop-down') proxy.drop('down');
      else if (h.fault === 'kill-source') await src.kill();
      else if (h.fault === 'kill-destination') await dst.kill();
      else if (h.fault === 'cancel') {
        await src.exec('migrate_cancel').catch((e: Error) => (h.faultDetail += `; cancel refused: ${e.message}`));
      }
    }
  }
  s.note(`fault ${h.fault} ${h.faultDetail}`);
  if (h.fault === 'none' || h.fault === 'delay') await pollMigration(src, () => false, 60_000);
  return settleAndCheck(s, src, dst);
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(what)), ms)))]).finally(() => clearTimeout(timer));
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`soak: ${(err as Error).stack ?? err}\n`);
    process.exit(2);
  },
);
