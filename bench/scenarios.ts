/**
 * The benchmark's scenarios (issue 7): which migrations `npm run bench` runs,
 * for livemig and for QEMU alike.
 *
 *   a  1 GiB and 4 GiB of non-zero (random) RAM, guest idle
 *   b  4 GiB mostly zero (64 MiB random at address 0), guest idle
 *   c  QEMU's migration-test workload (150 MiB guest rewriting byte 0 of every
 *      page of [1 MiB, 100 MiB) flat out) at max-bandwidth unlimited, 1 GiB/s
 *      and 256 MiB/s, each at downtime-limit 300 ms and 50 ms; plus XBZRLE at
 *      256 MiB/s: 300 ms (default cache) and 50 ms (a 128 MiB cache, which holds the working set)
 *      Postcopy (issue 16): the workload at unlimited and 256 MiB/s, 50 ms, with
 *      postcopy-ram on both sides, switched to postcopy once the first pass over
 *      RAM is complete (util.ts FIRST_PASS_RULE)
 *   d  a 1 GiB fully written disk, 64 MiB idle guest (block migration)
 *
 * Rows for capabilities appear only when livemig has them
 * (src/migration/config.ts DEFAULT_CAPABILITIES): multifd (2 and 4 channels)
 * for 1 GiB idle; xbzrle for c.
 */
import { DEFAULT_CAPABILITIES } from '../src/migration/config.js';
import { GiB, MiB, type ScenarioSpec } from './util.js';

export const livemigHas = (capability: string): boolean => capability in DEFAULT_CAPABILITIES;

export interface ScenarioOptions {
  quick: boolean;
  boundMs: number;
}

const base = { caps: [] as string[], params: {} as Record<string, number>, maxBandwidth: 0, downtimeLimitMs: 300 };

export function scenarios(o: ScenarioOptions): ScenarioSpec[] {
  const list: ScenarioSpec[] = [];
  // An idle guest always converges: its bound only catches a hung run (the workload's is o.boundMs).
  const idleBound = Math.max(o.boundMs, 120_000);
  const idle = (gib: number): ScenarioSpec => ({ ...base, id: `a-${gib}g`, group: 'a', label: `${gib} GiB random RAM, idle`, ramBytes: gib * GiB, fill: 'random', boundMs: idleBound });
  list.push(idle(1));
  if (!o.quick) list.push(idle(4));
  if (livemigHas('multifd')) {
    list.push({ ...idle(1), id: 'a-1g-multifd', label: '1 GiB random RAM, idle, multifd 2 channels', caps: ['multifd'], params: { 'multifd-channels': 2 } });
    // Issue 15: more channels must be faster, not just possible.
    list.push({ ...idle(1), id: 'a-1g-multifd4', label: '1 GiB random RAM, idle, multifd 4 channels', caps: ['multifd'], params: { 'multifd-channels': 4 } });
  }
  // The cost of encryption (x509, verify-peer), against QEMU with the same certificates.
  list.push({ ...idle(1), id: 'a-1g-tls', label: '1 GiB random RAM, idle, TLS x509', tls: true });
  if (livemigHas('multifd') && !o.quick) {
    list.push({ ...idle(1), id: 'a-1g-multifd-tls', label: '1 GiB random RAM, idle, multifd 2 channels, TLS x509', caps: ['multifd'], params: { 'multifd-channels': 2 }, tls: true });
  }
  const zeroGiB = o.quick ? 1 : 4;
  list.push({ ...base, id: `b-${zeroGiB}g`, group: 'b', label: `${zeroGiB} GiB mostly zero (64 MiB random), idle`, ramBytes: zeroGiB * GiB, fill: 'mostly-zero', nonZeroBytes: 64 * MiB, boundMs: idleBound });
  const bandwidths: Array<[string, number]> = [
    ['unlimited', 0],
    ['1 GiB/s', GiB],
    ['256 MiB/s', 256 * MiB],
  ];
  const workload = (name: string, bw: number, dl: number): ScenarioSpec => ({
    ...base,
    id: `c-${name === 'unlimited' ? 'unl' : name.replace(' GiB/s', 'g').replace(' MiB/s', 'm')}-${dl}`,
    group: 'c',
    label: `workload, ${name}, ${dl} ms`,
    ramBytes: 150 * MiB,
    fill: 'workload',
    maxBandwidth: bw,
    downtimeLimitMs: dl,
    boundMs: o.boundMs,
  });
  for (const [name, bw] of bandwidths) {
    for (const dl of [300, 50]) {
      if (o.quick && !((name === 'unlimited' && dl === 300) || (name === '256 MiB/s' && dl === 50))) continue;
      list.push(workload(name, bw, dl));
    }
  }
  if (livemigHas('xbzrle') && !o.quick) {
    // The issue's convergence target: 256 MiB/s at 300 ms and at 50 ms. The default
    // 64 MiB cache holds 16384 of the 25,344 pages the workload rewrites; that is
    // enough at 300 ms, and both engines also get a cache that holds the working set
    // (128 MiB, as XBZRLE is meant to be sized) at 50 ms.
    const s300 = workload('256 MiB/s', 256 * MiB, 300);
    list.push({ ...s300, id: `${s300.id}-xbzrle`, label: `${s300.label}, XBZRLE`, caps: ['xbzrle'] });
    const s50 = workload('256 MiB/s', 256 * MiB, 50);
    list.push({ ...s50, id: `${s50.id}-xbzrle-128m`, label: `${s50.label}, XBZRLE 128 MiB cache`, caps: ['xbzrle'], params: { 'xbzrle-cache-size': 128 * MiB } });
  }
  if (livemigHas('postcopy-ram') && !o.quick) {
    // Issue 16: what pre-copy cannot fit into 50 ms, moved in postcopy.
    for (const [name, bw] of [bandwidths[0]!, bandwidths[2]!]) {
      const s = workload(name, bw, 50);
      list.push({ ...s, id: `${s.id}-postcopy`, label: `${s.label}, postcopy after the first pass`, postcopy: true });
    }
  }
  const diskBytes = o.quick ? 256 * MiB : GiB;
  list.push({ ...base, id: 'd', group: 'd', label: `${diskBytes / MiB >= 1024 ? `${diskBytes / GiB} GiB` : `${diskBytes / MiB} MiB`} written disk, idle 64 MiB guest`, ramBytes: 64 * MiB, fill: 'disk', diskBytes, boundMs: idleBound });
  return list;
}
