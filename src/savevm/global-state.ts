/**
 * The `globalstate` section (QEMU migration/global_state.c): the source's
 * run state just before it stopped, so the destination resumes the guest only
 * if it was running. Byte-compatible with QEMU 7.2 (version 1).
 */
import { defineVmsd, field } from '../vmstate/index.js';

/** QEMU's RunState names (qapi/run-state.json). */
export const RUN_STATES = [
  'debug', 'inmigrate', 'internal-error', 'io-error', 'paused', 'postmigrate', 'prelaunch', 'finish-migrate',
  'restore-vm', 'running', 'save-vm', 'shutdown', 'suspended', 'watchdog', 'guest-panicked', 'colo',
] as const;
export type RunState = (typeof RUN_STATES)[number];

const RUNSTATE_BYTES = 100;

export interface GlobalState {
  /** strlen(runstate) + 1, as QEMU writes it. */
  size: number;
  /** NUL-padded run-state name. */
  runstate: Uint8Array;
  /** Set when a globalstate section was loaded. */
  received: boolean;
  /** The decoded run state. */
  state: RunState | undefined;
}

export function createGlobalState(): GlobalState {
  return { size: 0, runstate: new Uint8Array(RUNSTATE_BYTES), received: false, state: undefined };
}

/** Record the run state to send (QEMU: global_state_store, just before the guest stops). */
export function storeGlobalState(gs: GlobalState, state: RunState): void {
  const name = new TextEncoder().encode(state);
  gs.runstate = new Uint8Array(RUNSTATE_BYTES);
  gs.runstate.set(name);
  gs.size = name.length + 1;
  gs.state = state;
}

export const globalStateVmsd = defineVmsd<GlobalState>({
  name: 'globalstate',
  version: 1,
  minimumVersion: 1,
  fields: [field.uint32('size'), field.buffer('runstate', RUNSTATE_BYTES)],
  postLoad(gs) {
    gs.received = true;
    const end = gs.runstate.indexOf(0);
    const name = new TextDecoder().decode(gs.runstate.subarray(0, end < 0 ? RUNSTATE_BYTES : end));
    if (!(RUN_STATES as readonly string[]).includes(name)) throw new Error(`globalstate: unknown run state '${name.slice(0, 40)}'`);
    gs.state = name as RunState;
  },
});
