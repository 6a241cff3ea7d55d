/** A saved bench results object for the chart tests. */
import type { BenchResults } from '../../bench/charts.js';

/** A saved bench results object (two scenarios, both engines; one where livemig did not converge). */
export const SAMPLE_BENCH: BenchResults = {
  version: 1,
  date: '2026-12-02T15:15:00Z',
  command: 'npm run bench',
  loopbackBytesPerSecond: 3837e6,
  rows: [
    { id: 'a-1g', label: '1 GiB random RAM, idle', engine: 'livemig', converged: 3, runs: 3, totalMs: 779, downtimeMs: 7, wireBytes: 1076e6, throughputBytesPerSecond: 1381e6, passes: 3 },
    { id: 'a-1g', label: '1 GiB random RAM, idle', engine: 'qemu', converged: 3, runs: 3, totalMs: 567, downtimeMs: 258, wireBytes: 1076e6, throughputBytesPerSecond: 1897e6, passes: 3 },
    { id: 'c-unl-50', label: 'workload, unlimited, 50 ms', engine: 'livemig', converged: 0, runs: 3, wireBytes: 25954e6, throughputBytesPerSecond: 1297e6, passes: 253 },
    { id: 'c-unl-50', label: 'workload, unlimited, 50 ms', engine: 'qemu', converged: 3, runs: 3, totalMs: 129, downtimeMs: 58, wireBytes: 209e6, throughputBytesPerSecond: 1617e6, passes: 2 },
    { id: 'd', label: '1 GiB written disk', engine: 'livemig', converged: 3, runs: 3, totalMs: 2400, downtimeMs: 47, throughputBytesPerSecond: 447e6, passes: 3 },
  ],
};
