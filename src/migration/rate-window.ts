/**
 * Bandwidth measured over ~100 ms windows and the per-window rate limit,
 * as QEMU's migration thread (BUFFER_DELAY, XFER_LIMIT_RATIO).
 */
export const WINDOW_MS = 100;

export class RateWindow {
  private startMs: number;
  private startBytes: number;
  private startPages: number;
  /** Throughput of the last closed window, bytes per ms (0 until one closes, as QEMU). */
  bandwidthBytesPerMs: number;
  mbps: number;
  pagesPerSecond: number;

  constructor(nowMs: number, bytes: number, pages: number) {
    this.startMs = nowMs;
    this.startBytes = bytes;
    this.startPages = pages;
    // Set here, not as `= 0` initializers: a field that starts as a small integer changes the
    // object's hidden class when its first fraction is stored (the first window to close),
    // which threw away the loop's compiled code once per migration (a migration rehearsed by
    // warm-up.ts never closes a window). Declared first, then set, they hold any number.
    this.bandwidthBytesPerMs = 0;
    this.mbps = 0;
    this.pagesPerSecond = 0;
    this.debtBytes = 0;
  }

  /**
   * Bytes sent beyond the limit in windows already closed, charged to the next ones. One record
   * may be larger than a window's budget (a disk's 1 MiB chunk against max-bandwidth 5M carries
   * 500 kB per 100 ms): without the carry each window forgave it and 5M moved twice that.
   * QEMU forgives it (qemu_file_reset_rate_limit).
   */
  private debtBytes: number;

  /** True when the window has carried all `maxBandwidth` allows (bytes/s, 0 = unlimited), debts included. */
  overBudget(bytesNow: number, maxBandwidthBytesPerSecond: number): boolean {
    return maxBandwidthBytesPerSecond > 0 && bytesNow - this.startBytes + this.debtBytes >= maxBandwidthBytesPerSecond / (1000 / WINDOW_MS);
  }

  /**
   * The bandwidth the switchover policy goes by: the last closed window's, or
   * while no closed window has measured any, the rate of the one running if it
   * has run at least half a window. A first pass that ends before the first
   * window closes (150 MiB at 1.5 GB/s takes ~100 ms) otherwise met a budget
   * of 0 at its sync and sent a whole second pass for nothing. Bytes still in socket buffers
   * inflate an early rate; the policy's PING before the exact check lets them
   * drain while the guest runs. 0 while nothing is known.
   */
  estimateBytesPerMs(nowMs: number, bytesNow: number): number {
    if (this.bandwidthBytesPerMs > 0) return this.bandwidthBytesPerMs;
    const elapsedMs = nowMs - this.startMs;
    return elapsedMs >= WINDOW_MS / 2 ? (bytesNow - this.startBytes) / elapsedMs : 0;
  }

  msUntilEnd(nowMs: number): number {
    return Math.max(0, this.startMs + WINDOW_MS - nowMs);
  }

  /**
   * Close the window if 100 ms passed; returns true when it did. A window in
   * which the sender ran out of data (`idle`) says little about the link: it
   * may raise the estimate but not lower it (QEMU lowers it, a known cause of
   * migrations that do not switch over: reference 9.2).
   */
  maybeClose(nowMs: number, bytesNow: number, pagesNow: number, idle = false, maxBandwidthBytesPerSecond = 0): boolean {
    const elapsedMs = nowMs - this.startMs;
    if (elapsedMs < WINDOW_MS) return false;
    const bytes = bytesNow - this.startBytes;
    // What this window sent beyond what its time allowed is owed by the next (at most a second's worth).
    this.debtBytes =
      maxBandwidthBytesPerSecond > 0
        ? Math.min(maxBandwidthBytesPerSecond, Math.max(0, bytes + this.debtBytes - (maxBandwidthBytesPerSecond * elapsedMs) / 1000))
        : 0;
    const measured = bytes / elapsedMs;
    if (!idle || measured > this.bandwidthBytesPerMs) this.bandwidthBytesPerMs = measured;
    this.mbps = (bytes * 8) / (elapsedMs / 1000) / 1e6;
    this.pagesPerSecond = (pagesNow - this.startPages) / (elapsedMs / 1000);
    this.startMs = nowMs;
    this.startBytes = bytesNow;
    this.startPages = pagesNow;
    return true;
  }
}
