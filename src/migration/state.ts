/** The migration state machine's states (QEMU's MigrationStatus names, 4.9). */
export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'pre-switchover'
  | 'device'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'postcopy-recover'
  | 'completed'
  | 'failed';

/** States in which a migration is under way (a new one is refused, cancel applies). */
export const ACTIVE_STATES: ReadonlySet<MigrationStatus> = new Set(['setup', 'active', 'pre-switchover', 'device', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'cancelling']);

/** Postcopy's states: the guest has moved (or is moving) to the destination, which needs pages only the source has. */
export const POSTCOPY_STATES: ReadonlySet<MigrationStatus> = new Set(['postcopy-active', 'postcopy-paused', 'postcopy-recover']);

/** Allowed transitions; anything else is a bug. */
const TRANSITIONS: Readonly<Record<MigrationStatus, readonly MigrationStatus[]>> = {
  none: ['setup'],
  setup: ['active', 'failed', 'cancelling'],
  active: ['pre-switchover', 'device', 'postcopy-active', 'failed', 'cancelling'],
  // Before the destination was told to run the guest a failure or cancel still returns it here (failed, cancelling).
  'postcopy-active': ['completed', 'postcopy-paused', 'failed', 'cancelling'],
  'postcopy-paused': ['postcopy-recover', 'failed'],
  'postcopy-recover': ['postcopy-active', 'postcopy-paused'],
  'pre-switchover': ['device', 'failed', 'cancelling'],
  device: ['completed', 'failed', 'cancelling'],
  cancelling: ['cancelled', 'failed'],
  completed: ['setup'],
  failed: ['setup'],
  cancelled: ['setup'],
};

export function canTransition(from: MigrationStatus, to: MigrationStatus): boolean {
  return TRANSITIONS[from].includes(to);
}
