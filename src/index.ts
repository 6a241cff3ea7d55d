/**
 * `livemig`: the engine as a library. Everything exported here is the public
 * surface (semver applies to it); anything reached by a deep path into
 * dist/src is internal and may change in any release. The QMP client, server
 * and machine monitor are in `livemig/qmp` (src/qmp.ts).
 *
 * What is here, and why a caller needs it:
 *  - Migrations: OutgoingMigration (the source: start(uri), `finished`,
 *    events) and IncomingMigration (the destination: listen(uri), run()),
 *    their options, results and events; MigrationConfig (QEMU's parameters
 *    and capabilities, one object shared by a machine's two directions);
 *    MigrationError and ConfigError, with their codes.
 *  - The Machine interface a guest type implements (Machine, DirtyLogSink,
 *    PostcopyGuestAccess) and the building blocks it needs: RAM blocks
 *    (RamBlock, DenseRamBlock), DirtyBitmap for keeping a dirty log, the
 *    save-state registry it registers its device state in
 *    (SaveStateRegistry) and VMState descriptions of that state (defineVmsd,
 *    field), TARGET_PAGE_SIZE, and BlockDevice for machines with disks.
 *  - Ready machines: NoneMachine (QEMU's `-M none`: RAM only) and the test
 *    machine (createTestMachine: a vCPU in a worker thread writing RAM with an
 *    exact dirty log), with the memory check of QEMU's migration test.
 *    The v86 PC is not exported: it loads the v86 emulator at import.
 *  - The stream analyzer (`livemig analyze`): analyzeFile, analyzeBytes.
 */

// ---- Migrations ----
export {
  OutgoingMigration,
  type OutgoingMigrationEvents,
  type OutgoingSnapshot,
  type StartOptions,
  type SwitchoverRecord,
} from './migration/outgoing.js';
export {
  IncomingMigration,
  type IncomingEvents,
  type IncomingOptions,
  type IncomingResult,
  type IncomingStatus,
} from './migration/incoming.js';
export {
  ConfigError,
  DEFAULT_CAPABILITIES,
  DEFAULT_PARAMETERS,
  MigrationConfig,
  type ConfigErrorCode,
  type MigrationCapabilities,
  type MigrationConfigEvents,
  type MigrationParameters,
  type MigrationSettings,
} from './migration/config.js';
export { MigrationError, type MigrationErrorCode } from './migration/errors.js';
export { warmUpMigrations, type WarmUpResult } from './migration/warm-up.js';
export type { MigrationStatus } from './migration/state.js';
export type { ChannelSecurity } from './migration/security.js';

// ---- The Machine interface and what a machine is built from ----
export type { DirtyLogSink, Machine, PostcopyGuestAccess } from './machine/machine.js';
export { DenseRamBlock, type DenseRamBlockOptions, type RamBlock } from './ram/block.js';
export { DirtyBitmap } from './ram/dirty-bitmap.js';
export { RAM_IDSTR } from './ram/flags.js';
export type { RamSaveStats } from './ram/save.js';
export { TARGET_PAGE_SIZE } from './wire/constants.js';
export {
  INSTANCE_ID_ANY,
  SaveStateRegistry,
  type SaveStateEntry,
  type VmstateEntryOptions,
} from './savevm/registry.js';
export { defineVmsd, field } from './vmstate/fields.js';
export { MigrationPriority, type FieldOptions, type VMStateDescription, type VMStateField } from './vmstate/types.js';
export type { BlockDevice } from './block/block-device.js';
export { FileBlockDevice, type BlockDeviceOpenOptions } from './block/file-block-device.js';
export { MemoryBlockDevice, type MemoryBlockDeviceOptions } from './block/memory-block-device.js';
export { IncomingDiskImage } from './block/incoming-image.js';

// ---- Ready machines ----
export { NoneMachine, type NoneMachineOptions, type NonePattern } from './machine/none-machine.js';
export {
  TEST_MACHINE_NAME,
  TEST_RAM_BLOCK,
  TestMachine,
  createTestMachine,
  type TestCpuState,
  type TestMachineOptions,
  type TestMachineStats,
  type TestPattern,
} from './machine/test-machine.js';
export { checkMemory, ramSha256, type MemoryCheckResult } from './machine/memory-check.js';

// ---- The stream analyzer ----
export {
  analyzeBytes,
  analyzeFile,
  type AnalysisOutcome,
  type AnalyzeOptions,
  type AnalyzedDevice,
  type RamSummary,
  type StreamAnalysis,
} from './analyze/analyze-stream.js';
