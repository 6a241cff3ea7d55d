/**
 * `livemig bench`: the benchmark scenarios of `npm run bench` (bench/run.ts),
 * run as a child process of the built dist/bench/run.js with the same options.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Command } from 'commander';

export interface BenchOptions {
  runs?: string;
  only?: string;
  quick?: boolean;
  boundS?: string;
  /** Commander's negatable options: false when --no-qemu / --no-v86 / --no-write are given. */
  qemu: boolean;
  v86: boolean;
  write?: boolean;
  /** Only redraw the charts (docs/bench-*.svg) from docs/bench-results.json. */
  redraw?: boolean;
}

/** dist/src/cli/bench-command.js → dist/bench/run.js */
const RUNNER = new URL('../../bench/run.js', import.meta.url).pathname;

export function benchArgs(o: BenchOptions): string[] {
  const args: string[] = [];
  if (o.runs !== undefined) args.push('--runs', o.runs);
  if (o.only !== undefined) args.push('--only', o.only);
  if (o.quick) args.push('--quick');
  if (o.boundS !== undefined) args.push('--bound-s', o.boundS);
  if (!o.qemu) args.push('--no-qemu');
  if (!o.v86) args.push('--no-v86');
  if (o.write === true) args.push('--write');
  if (o.write === false) args.push('--no-write');
  if (o.redraw) args.push('--redraw');
  return args;
}

export async function benchCommand(o: BenchOptions): Promise<number> {
  if (!existsSync(RUNNER)) throw new Error(`${RUNNER} not found: build livemig with its benchmarks (npm run build)`);
  const args = benchArgs(o);
  const child = spawn(process.execPath, [RUNNER, ...args], {
    stdio: 'inherit',
    env: { ...process.env, LIVEMIG_BENCH_COMMAND: `livemig bench${args.length ? ` ${args.join(' ')}` : ''}` },
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

export function registerBenchCommand(program: Command): void {
  program
    .command('bench')
    .description('benchmark scenarios against real QEMU 7.2 and this machine\'s limits (as npm run bench); results to docs/benchmarks.md')
    .option('--runs <n>', 'runs per scenario (default 3; 1 with --quick)')
    .option('--only <list>', 'comma-separated groups (a, b, c, d, v86) or scenario ids, e.g. c-256m-50')
    .option('--quick', 'a short smoke run (under 3 minutes); does not write docs/benchmarks.md unless --write')
    .option('--bound-s <seconds>', 'cancel a workload migration not completed after this long (default 20)')
    .option('--no-qemu', 'livemig only, without the QEMU reference')
    .option('--no-v86', 'without the v86 running-guest migration')
    .option('--write', 'write docs/benchmarks.md even with --quick')
    .option('--no-write', 'do not write docs/benchmarks.md')
    .option('--redraw', 'no run: redraw the charts docs/bench-*.svg from the results the last run saved (docs/bench-results.json)')
    .action(async (options: BenchOptions) => {
      process.exitCode = await benchCommand(options);
    });
}
