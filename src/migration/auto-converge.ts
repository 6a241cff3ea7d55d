/**
 * Auto-converge: QEMU's CPU throttling (migration/ram.c
 * mig_throttle_guest_down and migration_trigger_throttle, reference 4.8).
 *
 * At each dirty-log sync that closes a period of more than a second: if the
 * guest dirtied more than `throttle-trigger-threshold` % of what was sent in
 * the period, count it; every second such period, throttle harder (start at
 * `cpu-throttle-initial`, then add `cpu-throttle-increment`, or less with
 * `cpu-throttle-tailslow`, never above `max-cpu-throttle`).
 */
import type { MigrationParameters } from './config.js';

export class AutoConverge {
  /** Current throttle, 0 = none. */
  percent = 0;
  private dirtyRateHighCount = 0;

  /** One closed period; returns the new percentage when it changed. */
  onPeriod(bytesDirtied: number, bytesTransferred: number, params: MigrationParameters): number | undefined {
    const thresholdBytes = (bytesTransferred * params['throttle-trigger-threshold']) / 100;
    if (bytesDirtied <= thresholdBytes) return undefined;
    // As QEMU, the counter is not reset when a period is fine: throttling reacts on the 2nd, 4th, ... bad period.
    if (++this.dirtyRateHighCount < 2) return undefined;
    this.dirtyRateHighCount = 0;
    const max = params['max-cpu-throttle'];
    let next: number;
    if (this.percent === 0) next = params['cpu-throttle-initial'];
    else if (params['cpu-throttle-tailslow']) {
      // Slow down in the tail: add only what the measured ratio says is needed.
      const cpuNow = 100 - this.percent;
      const needed = cpuNow - (cpuNow * thresholdBytes) / bytesDirtied;
      next = this.percent + Math.max(1, Math.min(params['cpu-throttle-increment'], Math.ceil(needed)));
    } else next = this.percent + params['cpu-throttle-increment'];
    next = Math.min(next, max);
    if (next === this.percent) return undefined;
    this.percent = next;
    return next;
  }
}
