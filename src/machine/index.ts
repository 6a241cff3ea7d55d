/** Machines livemig can migrate: the Machine interface and the built-in test machine. */
export * from './machine.js';
export * from './memory-check.js';
export {
  TEST_MACHINE_NAME,
  TEST_RAM_BLOCK,
  TestMachine,
  createTestMachine,
  testCpuVmsd,
  testSerialVmsd,
  type TestCpuState,
  type TestMachineOptions,
  type TestMachineStats,
  type TestPattern,
} from './test-machine.js';
