/**
 * When to stop the guest: the switchover policy of the precopy loop, as a
 * pure function (no I/O, no clock: the time is an input).
 *
 * The rules (README, "Defaults that differ from QEMU 7.2"):
 * - The budget is what the measured bandwidth sends in the downtime limit,
 *   less what the dirty-log sync that starts the pause costs:
 *   threshold = bandwidth × max(0, downtime-limit − last sync cost).
 * - What is pending counts device state too: RAM pending + device state.
 * - When the (estimated) pending first fits the budget, the guest is not
 *   stopped: the rest of the pass is sent live ('drain') until it is drained
 *   (what is left takes ≤ DRAINED_MS at the measured bandwidth) or for at most
 *   max(downtime-limit, 2 × RAM pending / bandwidth) ms since it first fitted.
 * - Then the dirty log is synced ('sync-and-check'; with a return path the
 *   source first PINGs the destination and waits for its PONG, at most a
 *   downtime-limit, when the estimate fitted) and the guest is stopped only
 *   if what is pending then, exactly, fits the same budget ('switchover');
 *   otherwise iteration goes on and the drain starts over.
 * - RAM pending 0 always syncs, and exact RAM pending 0 always switches over
 *   (with bandwidth or downtime-limit 0, that is the only way).
 *
 * Usage: call with the estimate (`exact: false`); on 'sync-and-check', sync
 * the dirty log and call again with the exact figure (`exact: true`) and the
 * state returned; keep the returned state for the next call.
 */

/** What is left counts as drained when it would take this long to send (the pass is over, bar a straggler). */
export const DRAINED_MS = 2;

export interface SwitchoverInput {
  /** RAM (iterative state) still to send, in bytes on the wire. */
  ramPendingBytes: number;
  /** True when ramPendingBytes was measured right after a dirty-log sync (the answer to 'sync-and-check'). */
  exact: boolean;
  /** What the FULL sections (devices, EOF, trailer) will take at completion. */
  deviceStateBytes: number;
  /** Measured bandwidth; 0 (or not a finite positive number) while unknown. */
  bandwidthBytesPerMs: number;
  /** Parameter `downtime-limit`. */
  downtimeLimitMs: number;
  /** What the last dirty-log sync took (the pause starts with one more). */
  lastSyncCostMs: number;
  /** The current time, ms (any monotonic clock; only differences are used). */
  nowMs: number;
}

/** What the policy remembers between calls. Start from INITIAL_SWITCHOVER_STATE. */
export interface SwitchoverState {
  /** When the estimate first fitted the budget in this pass; undefined when it does not fit (or after a sync). */
  readonly fitsSinceMs: number | undefined;
  /** How long the rest of the pass may be sent live once it fits, ms. */
  readonly liveDrainLimitMs: number;
  /** The budget a 'sync-and-check' was decided with: the exact figure is held against the same one. */
  readonly syncThresholdBytes: number | undefined;
}

export const INITIAL_SWITCHOVER_STATE: SwitchoverState = Object.freeze({ fitsSinceMs: undefined, liveDrainLimitMs: 0, syncThresholdBytes: undefined });

export type SwitchoverDecisionKind =
  /** Keep iterating: the pending state does not fit the budget (or the exact check failed). */
  | 'iterate'
  /** Keep iterating: it fits, and the rest of the pass is being sent live before the sync. */
  | 'drain'
  /** Sync the dirty log (after a PING/PONG when `waitForDestination`) and call again with `exact: true`. */
  | 'sync-and-check'
  /** Stop the guest and complete. */
  | 'switchover';

export interface SwitchoverDecision {
  decision: SwitchoverDecisionKind;
  /** A readable sentence with the numbers behind the decision. */
  reason: string;
  /** The budget: bytes the pause may carry. */
  thresholdBytes: number;
  /** RAM pending + device state, bytes. */
  pendingBytes: number;
  ramPendingBytes: number;
  /** 'sync-and-check' only: PING the destination and wait for its PONG first (the estimate fitted). */
  waitForDestination: boolean;
  /** The state for the next call. */
  state: SwitchoverState;
}

function units(bytes: number): string {
  if (!Number.isFinite(bytes)) return String(bytes);
  const abs = Math.abs(bytes);
  if (abs < 1024) return `${Math.round(bytes)} B`;
  const [unit, div] = abs < 1 << 20 ? ['KiB', 1024] : abs < 1 << 30 ? ['MiB', 1 << 20] : ['GiB', 1 << 30];
  return `${(bytes / div).toFixed(1)} ${unit}`;
}

function ms(x: number): string {
  return `${Math.round(x * 10) / 10} ms`;
}

/** Decide the next step of the precopy loop. Pure: the same input and state give the same output. */
export function decideSwitchover(input: SwitchoverInput, state: SwitchoverState): SwitchoverDecision {
  const bandwidth = Number.isFinite(input.bandwidthBytesPerMs) && input.bandwidthBytesPerMs > 0 ? input.bandwidthBytesPerMs : 0;
  const downtimeLimitMs = Math.max(0, input.downtimeLimitMs);
  const ramPendingBytes = Math.max(0, input.ramPendingBytes);
  const pendingBytes = ramPendingBytes + input.deviceStateBytes;
  const budgetMs = Math.max(0, downtimeLimitMs - input.lastSyncCostMs);
  const computedThreshold = bandwidth * budgetMs;
  const pending = `pending ${units(pendingBytes)} (RAM ${units(ramPendingBytes)} + device state ${units(input.deviceStateBytes)})`;
  const budget = (threshold: number): string =>
    `the ${units(threshold)} the pause may carry (${bandwidth === 0 ? 'bandwidth unknown or 0' : `${units(bandwidth)}/ms`} × (downtime-limit ${ms(downtimeLimitMs)} − sync ${ms(input.lastSyncCostMs)}))`;
  const decision = (kind: SwitchoverDecisionKind, reason: string, thresholdBytes: number, next: SwitchoverState, waitForDestination = false): SwitchoverDecision => ({
    decision: kind,
    reason,
    thresholdBytes,
    pendingBytes,
    ramPendingBytes,
    waitForDestination,
    state: next,
  });

  if (input.exact) {
    // The check after a sync: against the budget the sync was decided with. The state resets either way
    // (a new drain starts at the next estimate that fits).
    const thresholdBytes = state.syncThresholdBytes ?? computedThreshold;
    const next = INITIAL_SWITCHOVER_STATE;
    if (ramPendingBytes === 0) {
      return decision('switchover', `after the dirty-log sync no RAM is pending; device state ${units(input.deviceStateBytes)} is all the pause carries: switch over`, thresholdBytes, next);
    }
    if (pendingBytes <= thresholdBytes) {
      return decision('switchover', `after the dirty-log sync ${pending} fits ${budget(thresholdBytes)}: switch over`, thresholdBytes, next);
    }
    return decision('iterate', `after the dirty-log sync ${pending} exceeds ${budget(thresholdBytes)}: keep iterating, the drain starts over`, thresholdBytes, next);
  }

  const thresholdBytes = computedThreshold;
  const fits = pendingBytes <= thresholdBytes;
  let fitsSinceMs = state.fitsSinceMs;
  let liveDrainLimitMs = state.liveDrainLimitMs;
  if (!fits) fitsSinceMs = undefined;
  else if (fitsSinceMs === undefined) {
    fitsSinceMs = input.nowMs;
    // Sending the rest of the pass should take pending / bandwidth; allow twice that
    // (the estimate is a past window's) but at least a downtime-limit.
    liveDrainLimitMs = Math.max(downtimeLimitMs, (2 * ramPendingBytes) / Math.max(1, bandwidth));
  }
  const drainedBytes = bandwidth * DRAINED_MS;
  const drained = ramPendingBytes <= drainedBytes;
  const sinceMs = fitsSinceMs === undefined ? 0 : input.nowMs - fitsSinceMs;
  const next: SwitchoverState = { fitsSinceMs, liveDrainLimitMs, syncThresholdBytes: undefined };

  if (ramPendingBytes === 0 || (fits && (drained || sinceMs >= liveDrainLimitMs))) {
    const why =
      ramPendingBytes === 0
        ? `no RAM is pending (estimate)${fits ? `, and ${pending} fits ${budget(thresholdBytes)}` : `, though ${pending} exceeds ${budget(thresholdBytes)}`}`
        : drained
          ? `${pending} fits ${budget(thresholdBytes)} and the pass is drained (RAM ≤ ${units(drainedBytes)}, ${ms(DRAINED_MS)} of sending)`
          : `${pending} fits ${budget(thresholdBytes)} and the rest of the pass has been sent live for ${ms(sinceMs)} (limit ${ms(liveDrainLimitMs)})`;
    return decision('sync-and-check', `${why}: sync the dirty log and check what the guest dirtied`, thresholdBytes, { ...next, syncThresholdBytes: thresholdBytes }, fits);
  }
  if (fits) {
    return decision(
      'drain',
      `${pending} fits ${budget(thresholdBytes)}: sending the rest of the pass live (${ms(sinceMs)} of at most ${ms(liveDrainLimitMs)}, until RAM ≤ ${units(drainedBytes)})`,
      thresholdBytes,
      next,
    );
  }
  return decision('iterate', `${pending} exceeds ${budget(thresholdBytes)}: keep iterating`, thresholdBytes, next);
}
