/**
 * When pre-copy has stopped converging, so that switching to postcopy by
 * itself is the better way to finish (parameter `x-livemig-postcopy-auto`,
 * beyond QEMU, which only switches on `migrate-start-postcopy`). A pure
 * function: the loop feeds it the result of every dirty-log sync that did not
 * allow the switchover, and keeps the returned state.
 *
 * Rule: pre-copy converges when each pass leaves clearly less to send than the
 * one before. After a complete round over RAM, two consecutive failed checks
 * whose pending bytes did not shrink by at least MIN_SHRINK (10 %) of the
 * gap to the budget mean the guest dirties about as fast as the link sends:
 * more passes only resend the same pages. A first round still in progress
 * never counts (its pending figure falls by itself).
 */

/** A pass must close at least this share of the gap between pending and the budget to count as progress. */
export const MIN_SHRINK = 0.1;
/** Passes without progress, in a row, before switching. */
export const STALLED_PASSES = 2;

export interface PostcopyAutoInput {
  /** What was pending right after the sync (RAM + device state, wire bytes). */
  pendingBytes: number;
  /** What the pause may carry (the switchover policy's threshold). */
  thresholdBytes: number;
  /** Complete rounds over RAM so far. */
  completedRounds: number;
}

export interface PostcopyAutoState {
  /** The gap (pending − budget) after the previous failed check of this streak, bytes. */
  readonly previousGapBytes: number | undefined;
  readonly stalledPasses: number;
}

export const INITIAL_POSTCOPY_AUTO_STATE: PostcopyAutoState = Object.freeze({ previousGapBytes: undefined, stalledPasses: 0 });

export interface PostcopyAutoDecision {
  switchToPostcopy: boolean;
  /** The numbers behind it, as a sentence (for events and logs). */
  reason: string;
  state: PostcopyAutoState;
}

const mib = (bytes: number): string => `${(bytes / (1 << 20)).toFixed(1)} MiB`;

export function decidePostcopyAuto(input: PostcopyAutoInput, state: PostcopyAutoState): PostcopyAutoDecision {
  const gapBytes = Math.max(0, input.pendingBytes - input.thresholdBytes);
  if (input.completedRounds < 1) {
    return { switchToPostcopy: false, reason: 'the first round over RAM is not complete', state: INITIAL_POSTCOPY_AUTO_STATE };
  }
  const previous = state.previousGapBytes;
  const progressed = previous === undefined || gapBytes <= previous * (1 - MIN_SHRINK);
  const stalledPasses = progressed ? 0 : state.stalledPasses + 1;
  const next: PostcopyAutoState = { previousGapBytes: gapBytes, stalledPasses };
  const figures = `${mib(input.pendingBytes)} pending after the sync against the ${mib(input.thresholdBytes)} the pause may carry (gap ${mib(gapBytes)}${previous === undefined ? '' : `, ${mib(previous)} the pass before`})`;
  if (stalledPasses >= STALLED_PASSES) {
    return {
      switchToPostcopy: true,
      reason: `pre-copy is not converging: ${figures}; ${stalledPasses} passes in a row closed less than ${MIN_SHRINK * 100} % of the gap, so the guest dirties memory about as fast as it is sent: switching to postcopy`,
      state: next,
    };
  }
  return { switchToPostcopy: false, reason: progressed ? `converging: ${figures}` : `not converging for ${stalledPasses} pass(es): ${figures}`, state: next };
}
