/**
 * QMP `calc-dirty-rate` and `query-dirty-rate`, as QEMU 7.2 answers them in
 * its default mode, page sampling (src/ram/dirty-rate.ts does the sampling):
 * how fast the guest dirties its RAM, the figure that says whether a
 * migration can converge at a given bandwidth and downtime-limit. One
 * measurement at a time, in the background; it reads guest RAM only, so it
 * may run beside a migration. QEMU 7.2's other modes, KVM's dirty ring and
 * the dirty bitmap, livemig does not have: it refuses them in QEMU's words.
 */
import { uptime } from 'node:os';
import type { Machine } from '../machine/machine.js';
import { dirtyRateMiBps, PageSampler } from '../ram/dirty-rate.js';
import { printable } from '../wire/printable.js';
import { QmpCommandError, type QmpCommandDefinition } from './qmp-server.js';

/** QEMU 7.2's DirtyRateMeasureMode, in its order. */
export const DIRTY_RATE_MODES = ['page-sampling', 'dirty-ring', 'dirty-bitmap'] as const;
export type DirtyRateMode = (typeof DIRTY_RATE_MODES)[number];

/** QEMU 7.2's bounds (dirtyrate.h): calc-time in seconds, sample pages per GiB. */
export const CALC_TIME_RANGE_S = [1, 60] as const;
export const SAMPLE_PAGES_RANGE = [128, 16384] as const;
export const DEFAULT_SAMPLE_PAGES = 512;

/** query-dirty-rate's answer (QEMU 7.2's DirtyRateInfo, in its order). */
export interface DirtyRateInfo {
  status: 'unstarted' | 'measuring' | 'measured';
  'sample-pages': number;
  /** MB/s (MiB), once measured. */
  'dirty-rate'?: number;
  mode: DirtyRateMode;
  /** When the measurement started: seconds of the host's monotonic clock (QEMU's QEMU_CLOCK_REALTIME / 1000). */
  'start-time': number;
  'calc-time': number;
}

/** QEMU's answer before any measurement. */
const UNSTARTED: Readonly<DirtyRateInfo> = Object.freeze({ status: 'unstarted', 'sample-pages': 0, mode: 'page-sampling', 'start-time': 0, 'calc-time': 0 });

export class DirtyRateMeter {
  private info: DirtyRateInfo = UNSTARTED;

  constructor(private readonly machine: Machine) {}

  /** qmp_calc_dirty_rate: its checks in its order and words, then a measurement of `calcTimeS` seconds in the background. */
  start(calcTimeS: number, samplePages: number | undefined, mode: string = 'page-sampling'): void {
    if (!(DIRTY_RATE_MODES as readonly string[]).includes(mode)) throw new QmpCommandError('GenericError', `Parameter 'mode' does not accept value '${printable(mode)}'`);
    if (this.info.status === 'measuring') throw new QmpCommandError('GenericError', 'the dirty rate is already being measured.');
    if (calcTimeS < CALC_TIME_RANGE_S[0] || calcTimeS > CALC_TIME_RANGE_S[1]) {
      throw new QmpCommandError('GenericError', `calc-time is out of range[${CALC_TIME_RANGE_S[0]}, ${CALC_TIME_RANGE_S[1]}].`);
    }
    if (samplePages !== undefined && mode === 'dirty-ring') throw new QmpCommandError('GenericError', 'either sample-pages or dirty-ring can be specified.');
    if (samplePages !== undefined && (samplePages < SAMPLE_PAGES_RANGE[0] || samplePages > SAMPLE_PAGES_RANGE[1])) {
      throw new QmpCommandError('GenericError', `sample-pages is out of range[${SAMPLE_PAGES_RANGE[0]}, ${SAMPLE_PAGES_RANGE[1]}].`);
    }
    // No KVM dirty ring here, and no dirty-bitmap mode (the dirty log belongs to migrations).
    if (mode !== 'page-sampling') throw new QmpCommandError('GenericError', `mode ${mode} is not enabled, use other method instead.`);
    const pages = samplePages ?? DEFAULT_SAMPLE_PAGES;
    const sampler = new PageSampler(this.machine.ramBlocks(), pages);
    const startedMs = performance.now();
    const measuring: DirtyRateInfo = { status: 'measuring', 'sample-pages': pages, mode, 'start-time': Math.floor(uptime()), 'calc-time': calcTimeS };
    this.info = measuring;
    setTimeout(() => {
      try {
        const rate = dirtyRateMiBps(sampler.count(), performance.now() - startedMs);
        this.info = { status: 'measured', 'sample-pages': pages, 'dirty-rate': rate, mode, 'start-time': measuring['start-time'], 'calc-time': calcTimeS };
      } catch {
        // The guest's RAM went away meanwhile (the machine was torn down): no figure, and never a crash of the VM's process.
        this.info = UNSTARTED;
      }
    }, calcTimeS * 1000).unref();
  }

  /** query-dirty-rate's answer. */
  query(): DirtyRateInfo {
    return { ...this.info };
  }
}

export function dirtyRateCommands(meter: DirtyRateMeter): Record<string, QmpCommandDefinition> {
  return {
    'calc-dirty-rate': {
      args: { 'calc-time': 'int', 'sample-pages': 'int?', mode: 'string?' },
      run: (a) => {
        meter.start(a['calc-time'] as number, a['sample-pages'] as number | undefined, a.mode as string | undefined);
        return {};
      },
    },
    'query-dirty-rate': { args: {}, run: () => meter.query() },
  };
}
