/**
 * One livemig migration of a RAM scenario over loopback TCP, in its own
 * process so that its peak RSS is the migration's alone. Prints one JSON line
 * (a RunResult, bench/util.ts). Run by bench/run.ts with `--spec JSON`; by hand:
 *
 *   node [--cpu-prof] dist/bench/migrate-source.js [--zero] [--ram-gib N]
 *
 * Guest RAM by `spec.fill`:
 * - random: every page random (crypto.randomFillSync), guest created paused and
 *   left paused, so it writes nothing (idle);
 * - mostly-zero: `nonZeroBytes` of random data at address 0, the rest zero, idle;
 *   (both fills go through TestMachine.load(), as QEMU's `-device loader`);
 * - workload: the test machine's vCPU runs QEMU's migration-test workload
 *   (increments the first byte of every page of [1 MiB, 100 MiB) flat out) from
 *   1 s before `migrate` until the switchover.
 */
import { randomFillSync } from 'node:crypto';
import { createTestMachine, type TestMachine } from '../src/machine/index.js';
import { runLivemigMigration } from './livemig-common.js';
import { GiB, MiB, specFromArgs, type ScenarioSpec } from './util.js';

function legacySpec(args: string[]): ScenarioSpec {
  const gibIndex = args.indexOf('--ram-gib');
  const ramBytes = gibIndex >= 0 ? Number(args[gibIndex + 1]) * GiB : GiB;
  const zero = args.includes('--zero');
  return {
    id: zero ? 'zero' : 'idle',
    group: zero ? 'b' : 'a',
    label: `${ramBytes / GiB} GiB ${zero ? 'zero' : 'random'}, idle`,
    ramBytes,
    fill: zero ? 'mostly-zero' : 'random',
    nonZeroBytes: 0,
    maxBandwidth: 0,
    downtimeLimitMs: 300,
    caps: [],
    params: {},
    boundMs: 120_000,
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const spec = specFromArgs(args) ?? legacySpec(args);
  const result = await runLivemigMigration({
    spec,
    warmupMs: spec.fill === 'workload' ? 1000 : 0,
    ...(spec.fill === 'workload' ? { guestPasses: (m) => (m as TestMachine).stats().passes } : {}),
    makeSource: async () => {
      const machine = await createTestMachine({ ramSizeBytes: spec.ramBytes, startPaused: spec.fill !== 'workload' });
      const fillBytes = spec.fill === 'random' ? spec.ramBytes : spec.fill === 'mostly-zero' ? (spec.nonZeroBytes ?? 0) : 0;
      // Through load(), as QEMU's side puts its data in with `-device loader`: the pages
      // are logged as written, and the machine still knows the rest was never touched.
      // 1 MiB at a time: a larger scratch buffer would show in the source's peak RSS.
      const chunk = Buffer.allocUnsafe(Math.min(MiB, fillBytes));
      for (let off = 0; off < fillBytes; off += chunk.length) {
        const part = chunk.subarray(0, Math.min(chunk.length, fillBytes - off));
        randomFillSync(part);
        machine.load(off, part);
      }
      return machine;
    },
  });
  process.stdout.write(JSON.stringify(result) + '\n');
}

await main();
// Everything is cleaned up (destination stopped, temporary files deleted); a leftover handle must not keep us alive.
process.exit(0);
