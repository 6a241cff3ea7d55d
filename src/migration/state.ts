/** The migration state machine's states (QEMU's MigrationStatus names, 4.9). */
export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'pre-switchover'
  | 'device'
  | 'completed'
  | 'failed';

/** States in which a migration is under way (a new one is refused, cancel applies). */
export const ACTIVE_STATES: ReadonlySet<MigrationStatus> = new Set(['setup', 'active', 'pre-switchover', 'device', 'cancelling']);

/** Allowed transitions; anything else is a bug. */
const TRANSITIONS: Readonly<Record<MigrationStatus, readonly MigrationStatus[]>> = {
  none: ['setup'],
  setup: ['active', 'failed', 'cancelling'],
  active: ['pre-switchover', 'device', 'failed', 'cancelling'],
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
