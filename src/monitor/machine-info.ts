/**
 * The machine queries management tools send before anything else
 * (query-name, query-uuid, query-kvm, query-cpus-fast, query-machines,
 * query-block), in QEMU 7.2's shapes with livemig's own values: no KVM, the
 * machine's disks, livemig's machine types.
 */
import { statSync } from 'node:fs';
import type { Machine } from '../machine/machine.js';
import type { QmpCommandDefinition } from './qmp-server.js';

/** A machine type `livemig run --machine` takes (query-machines). */
export interface MachineTypeInfo {
  name: string;
  /** The type `run` uses without --machine. */
  isDefault?: boolean;
}

/** QEMU's UUID when none was given (-uuid): livemig machines have none. */
const NO_UUID = '00000000-0000-0000-0000-000000000000';

/** vCPUs of a machine: `none` has none (as QEMU's -M none); test and v86 run one. */
function vcpuCount(machine: Machine): number {
  return machine.kind === 'none' ? 0 : 1;
}

/** The image's allocated bytes (sparse images use less than their size), as QEMU's `actual-size`; absent if unknown. */
function actualSize(path: string | undefined): { 'actual-size'?: number } {
  if (path === undefined) return {};
  try {
    return { 'actual-size': statSync(path).blocks * 512 };
  } catch {
    return {};
  }
}

export function machineCommands(machine: Machine, machineTypes: readonly MachineTypeInfo[] = [{ name: machine.kind }]): Record<string, QmpCommandDefinition> {
  return {
    // No -name: QEMU answers an empty object.
    'query-name': { args: {}, run: () => ({}) },
    'query-uuid': { args: {}, run: () => ({ UUID: NO_UUID }) },
    // livemig emulates in JavaScript: no KVM, present or enabled.
    'query-kvm': { args: {}, run: () => ({ enabled: false, present: false }) },
    'query-cpus-fast': {
      args: {},
      run: () =>
        Array.from({ length: vcpuCount(machine) }, (_, index) => ({
          'cpu-index': index,
          'qom-path': `/machine/unattached/device[${index}]`,
          // The vCPU runs in this process (the test machine in a worker thread, whose OS thread id Node does not tell).
          'thread-id': process.pid,
          props: { 'core-id': 0, 'thread-id': 0, 'socket-id': index },
          target: machine.kind === 'v86' ? 'i386' : 'x86_64',
        })),
    },
    'query-machines': {
      args: { 'compat-props': 'bool?' },
      run: () =>
        machineTypes.map((t) => ({
          name: t.name,
          ...(t.isDefault ? { 'is-default': true } : {}),
          'cpu-max': 1,
          'hotpluggable-cpus': false,
          'numa-mem-supported': false,
          deprecated: false,
        })),
    },
    'query-block': {
      args: {},
      run: () =>
        (machine.blockDevices?.() ?? []).map((d) => ({
          device: d.name,
          locked: false,
          removable: false,
          type: 'unknown',
          'io-status': 'ok',
          inserted: {
            file: d.path ?? '',
            'node-name': d.name,
            ro: d.readOnly,
            drv: 'raw',
            'backing_file_depth': 0,
            encrypted: false,
            'detect_zeroes': 'off',
            bps: 0,
            'bps_rd': 0,
            'bps_wr': 0,
            iops: 0,
            'iops_rd': 0,
            'iops_wr': 0,
            'write_threshold': 0,
            cache: { writeback: true, direct: false, 'no-flush': false },
            image: { filename: d.path ?? '', format: 'raw', 'virtual-size': d.sizeBytes, ...actualSize(d.path), 'dirty-flag': false },
          },
        })),
    },
  };
}
