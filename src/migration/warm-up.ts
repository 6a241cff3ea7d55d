/**
 * A migration rehearsed in memory, so the first real one runs compiled code.
 *
 * V8 runs a function as bytecode until it has been called (or has looped)
 * often enough, then compiles it; the page path (dirty-bitmap scan, page
 * records, the stream writer, the reader and the loader's copy into RAM)
 * reaches full speed only after tens of MiB. A fresh process — every
 * destination, and a source's first migration — paid that inside the
 * migration: its first 100 ms window ran at a third of the later ones
 * (docs/benchmarks.md, issue 15's fourth session), which also made the
 * bandwidth estimate, and so the switchover, too pessimistic.
 *
 * warmUpMigrations() migrates a small scratch machine (RAM only: random,
 * sparse and zero pages, some rewritten for a second pass) to another one
 * through an in-memory pipe, with the same OutgoingMigration and
 * IncomingMigration code a real migration runs. Once per process; a few tens
 * of ms of CPU. Nothing outside this file sees it: its machines, channel and
 * migrations are its own and are dropped when it ends.
 *
 * Multifd's worker threads are separate isolates and are not warmed by this.
 */
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import { createMemoryChannelPair } from '../wire/memory-pipe.js';
import { DenseRamBlock, RAM_IDSTR, type RamBlock } from '../ram/index.js';
import type { SaveStateRegistry } from '../savevm/index.js';
import type { DirtyLogSink, Machine } from '../machine/machine.js';
import { fillNoneRam } from '../machine/ram-pattern.js';
import { MigrationConfig } from './config.js';
import { openedChannels } from './channels.js';
import { IncomingMigration } from './incoming.js';
import { OutgoingMigration } from './outgoing.js';
import createDebug from 'debug';

// DEBUG=livemig:warm-up: one line when the rehearsal ends.
const log = createDebug('livemig:warm-up');

/** Scratch RAM per side: enough for V8 to compile the page loops (a-1g's first window, 3 runs each: 8 MiB no better, 1–2 MiB a little worse). */
export const WARM_UP_RAM_BYTES = 4 << 20;

export interface WarmUpResult {
  /** Wall-clock time of the rehearsal. */
  durationMs: number;
  /** Bytes the rehearsal's source sent. */
  bytes: number;
  /** Set when the rehearsal did not complete (it is only a warm-up: nothing else depends on it). */
  error?: string;
}

let warmUp: Promise<WarmUpResult> | undefined;

/**
 * Rehearse a migration in memory once per process (later calls return the
 * first call's promise). Never rejects. Embedders: call it once after start-up
 * (MachineMonitor, and so `livemig run`, does), so the first migration does
 * not pay for compiling the engine.
 */
export function warmUpMigrations(): Promise<WarmUpResult> {
  warmUp ??= rehearse(WARM_UP_RAM_BYTES).then((result) => {
    log(result.error ? 'rehearsal failed after %d ms: %s' : 'rehearsal completed in %d ms, %d bytes', result.durationMs, result.error ?? result.bytes);
    return result;
  });
  return warmUp;
}

async function rehearse(ramBytes: number): Promise<WarmUpResult> {
  const startedMs = performance.now();
  const source = new ScratchMachine(ramBytes, true);
  const destination = new ScratchMachine(ramBytes, false);
  // Any URI the engine parses; the opened channel is what carries the stream.
  const uri = 'ws://in-process:1/warm-up';
  const pair = createMemoryChannelPair(uri);
  const incoming = new IncomingMigration(destination);
  const outgoing = new OutgoingMigration(source, new MigrationConfig(), { channels: openedChannels(pair.source), prestartThreads: false });
  try {
    incoming.receiveFrom(pair.destination, uri);
    outgoing.start(uri);
    const [status, result] = await Promise.all([outgoing.finished, incoming.run()]);
    const durationMs = Math.round(performance.now() - startedMs);
    const bytes = outgoing.snapshot().ram?.transferredBytes ?? 0;
    if (status !== 'completed' || result.status !== 'completed') {
      return { durationMs, bytes, error: outgoing.error?.message ?? result.error?.message ?? `source ${status}, destination ${result.status}` };
    }
    return { durationMs, bytes };
  } catch (err) {
    return { durationMs: Math.round(performance.now() - startedMs), bytes: 0, error: err instanceof Error ? err.message : String(err) };
  }
}

/**
 * RAM only, no vCPU and no devices. A source's RAM holds zero, sparse and
 * random pages (the none machine's `random` pattern), reported dirty on the
 * first sync; on the second sync every fourth page is rewritten and reported,
 * so the rehearsal iterates a second pass; nothing after that.
 */
class ScratchMachine implements Machine {
  readonly kind = 'scratch';
  readonly machineName = 'livemig-warm-up';
  readonly serial = { on: (): void => {} };
  private readonly memory: Uint8Array;
  private readonly block: RamBlock;
  private isRunning: boolean;
  private syncs = 0;

  constructor(ramBytes: number, isSource: boolean) {
    // Shared memory where there is any, as the machines a real migration moves.
    const buffer = typeof SharedArrayBuffer === 'function' ? new SharedArrayBuffer(ramBytes) : new ArrayBuffer(ramBytes);
    this.memory = new Uint8Array(buffer);
    this.block = new DenseRamBlock(RAM_IDSTR, this.memory);
    this.isRunning = isSource;
    if (isSource) fillNoneRam(this.memory, { kind: 'random', seed: 1 });
  }

  get running(): boolean {
    return this.isRunning;
  }

  ramBlocks(): RamBlock[] {
    return [this.block];
  }

  startDirtyLog(): void {}
  stopDirtyLog(): void {}

  async syncDirtyLog(sink: DirtyLogSink): Promise<void> {
    const pages = this.memory.length / TARGET_PAGE_SIZE;
    const log = new Uint32Array(Math.ceil(pages / 32));
    const sync = this.syncs++;
    if (sync === 0) log.fill(0xffffffff);
    else if (sync === 1) {
      for (let page = 0; page < pages; page += 4) {
        this.memory[page * TARGET_PAGE_SIZE + 1] = (this.memory[page * TARGET_PAGE_SIZE + 1]! + 1) & 0xff;
        log[page >>> 5]! |= 1 << (page & 31);
      }
    }
    sink(RAM_IDSTR, log);
  }

  async pause(): Promise<void> {
    this.isRunning = false;
  }

  resume(): void {
    this.isRunning = true;
  }

  setThrottle(): void {}
  registerDevices(_registry: SaveStateRegistry): void {}

  async destroy(): Promise<void> {
    this.isRunning = false;
  }
}
