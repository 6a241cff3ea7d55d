/**
 * `livemig/qmp`: QEMU's monitor protocol, both ends. Everything exported here
 * is public (semver applies); deep paths into dist/src are internal.
 *
 *  - QmpClient: connect to any QMP monitor (QEMU's or livemig's), execute
 *    commands, read events; QmpError / QmpConnectionError; the parts of
 *    QEMU 7.2's migration schema clients read (MigrationInfo,
 *    MIGRATION_FINAL_STATES).
 *  - QmpServer: serve QMP with your own command table.
 *  - MachineMonitor: a Machine's full monitor, as `livemig run` serves it
 *    (migrate, migrate-incoming, query-migrate, migrate-set-parameters,
 *    migrate-set-capabilities, cont, stop, object-add, ...), with the
 *    machine's OutgoingMigration and MigrationConfig; ObjectRegistry holds
 *    its TLS credentials and authorization objects.
 *  - queryMigrate / outgoingInfo / incomingInfo: `query-migrate`'s answer,
 *    shaped as QEMU 7.2's, from the engine's migrations (LivemigMigrationInfo).
 */

export {
  DEFAULT_GREETING_TIMEOUT_MS,
  MIGRATION_FINAL_STATES,
  MIGRATION_WAIT_STATES,
  QmpClient,
  QmpConnectionError,
  QmpError,
  type MigrationInfo,
  type MigrationRamStats,
  type QmpConnectOptions,
  type QmpEvent,
  type QmpGreeting,
} from './monitor/qmp-client.js';
export {
  QmpCommandError,
  QmpListenError,
  QmpServer,
  type QmpArguments,
  type QmpClientSession,
  type QmpCommand,
  type QmpCommandDefinition,
  type QmpErrorClass,
  type QmpListenOptions,
  type QmpServerOptions,
} from './monitor/qmp-server.js';
export type { ArgumentKind, ArgumentSchema } from './monitor/arguments.js';
export { MachineMonitor, QMP_VERSION, type MachineMonitorOptions, type RunState } from './monitor/machine-monitor.js';
export { ObjectRegistry } from './security/objects.js';
export {
  incomingInfo,
  outgoingInfo,
  queryMigrate,
  type IncomingPostcopyInfo,
  type MigrationInfo as LivemigMigrationInfo,
} from './monitor/query-migrate.js';
