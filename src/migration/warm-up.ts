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
 * sparse, zero and never-written pages, some rewritten for a second pass) to
 * another one with the same OutgoingMigration and IncomingMigration code a
 * real migration runs, three times over: in Node over a loopback TCP
 * connection (the engine's own channels, so the socket code is warmed too),
 * elsewhere or without a loopback port through an in-memory pipe. Once per
 * process; 150–300 ms in the background. It leaves its two scratch machines
 * (8 MiB) as garbage until V8's next full garbage collection frees them; its
 * one receive ring (4 MiB: the three rounds' connections take it in turn) in
 * the spare ring chunks that the next accepted connection reads into
 * (stream-io.ts), and two stream-writer slabs (8 MiB) in the writers' shared
 * pool, which the real migration then writes into instead of fresh memory
 * (writer.ts). Nothing else outside this file sees
 * it: its machines, connections and migrations are its own and are dropped
 * when it ends (a stranger connecting to the loopback port meanwhile could
 * only fail the rehearsal).
 *
 * Multifd's worker threads are separate isolates and are not warmed by this.
 */
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import { createMemoryChannelPair } from '../wire/memory-pipe.js';
import { DenseRamBlock, type RamBlock } from '../ram/index.js';
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

/**
 * Scratch RAM per side (a-1g's first window, 3 runs each: 8 MiB no better, 1–2 MiB a little worse; with
 * three rounds of 2 MiB the page path was still compiled only in the real migration).
 */
export const WARM_UP_RAM_BYTES = 4 << 20;

/**
 * Migrations rehearsed, one after the other. One was not enough: V8 had
 * compiled none of the page path's functions by its end (--trace-opt), so the
 * real migration still ran them unoptimized for its first ~100 ms and
 * compiled them meanwhile (up to 28 ms of compiler CPU each), and branches
 * taken only early (before V8 keeps type feedback for a function) had none.
 * After three, the page path is compiled before the real migration starts
 * (measured through the memory pipe): a-1g 545–580 ms against 610–649 with one, a destination loading a recorded
 * 1 GiB stream 406–436 against 457–477 ms; six were no better than three.
 * Over loopback TCP rather than a memory pipe, the destination's socket reads
 * are warmed too: one deoptimization at the real load's start instead of
 * five (Buffer chunks, not the pipe's Uint8Arrays).
 */
export const WARM_UP_ROUNDS = 3;

/** QEMU's name for a PC's RAM, which the test machine uses too. */
const SCRATCH_RAM_BLOCK = 'pc.ram';

export interface WarmUpResult {
  /** Wall-clock time of the rehearsal. */
  durationMs: number;
  /** Bytes the rehearsal's sources sent, all rounds together. */
  bytes: number;
  /** Rounds that completed (WARM_UP_ROUNDS unless one failed). */
  rounds: number;
  /** What carried the streams: a loopback TCP connection (Node), else an in-memory pipe. */
  over: 'tcp' | 'memory';
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
  warmUp ??= rehearseMigrations(WARM_UP_ROUNDS, WARM_UP_RAM_BYTES, 'tcp').then((result) => {
    log(result.error ? 'rehearsal failed after %d ms: %s' : 'rehearsal completed in %d ms, %d bytes', result.durationMs, result.error ?? result.bytes);
    return result;
  });
  return warmUp;
}

/**
 * @internal `rounds` rehearsals of `ramBytes` scratch machines, over a
 * loopback connection when `over` is 'tcp' and one can be had, else through
 * a memory pipe (warmUpMigrations' work, exported for its tests).
 */
export async function rehearseMigrations(rounds: number, ramBytes: number, over: WarmUpResult['over']): Promise<WarmUpResult> {
  const startedMs = performance.now();
  // One pair for every round (each round starts them afresh): what a round leaves is garbage until V8's next full collection.
  const machines = { source: new ScratchMachine(ramBytes, true), destination: new ScratchMachine(ramBytes, false) };
  let bytes = 0;
  for (let done = 0; done < rounds; done++) {
    let round = await rehearse(machines, over);
    if (round.listenError !== undefined) {
      // No loopback socket here (a browser, a sandbox): the memory pipe still warms all but the socket code.
      log('no loopback socket (%s): rehearsing through a memory pipe', round.listenError);
      over = 'memory';
      round = await rehearse(machines, over);
    }
    bytes += round.bytes;
    if (round.error !== undefined) return { durationMs: Math.round(performance.now() - startedMs), bytes, rounds: done, over, error: round.error };
  }
  return { durationMs: Math.round(performance.now() - startedMs), bytes, rounds, over };
}

/**
 * One rehearsal: bytes sent, or why it did not complete. Over `tcp`, the
 * engine's own channels on a loopback port (what a real migration reads and
 * writes through: Node's sockets, the receive ring); `listenError` says the
 * port could not be had, and nothing ran.
 */
async function rehearse(machines: { source: ScratchMachine; destination: ScratchMachine }, over: 'tcp' | 'memory'): Promise<{ bytes: number; error?: string; listenError?: string }> {
  const { source, destination } = machines;
  source.rewind();
  destination.rewind();
  let outgoing: OutgoingMigration;
  let incoming: IncomingMigration;
  let uri: string;
  if (over === 'tcp') {
    incoming = new IncomingMigration(destination);
    try {
      uri = await incoming.listen('tcp:127.0.0.1:0');
    } catch (err) {
      return { bytes: 0, listenError: err instanceof Error ? err.message : String(err) };
    }
    outgoing = new OutgoingMigration(source, new MigrationConfig(), { prestartThreads: false });
  } else {
    // Any URI the engine parses; the opened channel is what carries the stream.
    uri = 'ws://in-process:1/warm-up';
    const pair = createMemoryChannelPair(uri);
    incoming = new IncomingMigration(destination);
    incoming.receiveFrom(pair.destination, uri);
    outgoing = new OutgoingMigration(source, new MigrationConfig(), { channels: openedChannels(pair.source), prestartThreads: false });
  }
  try {
    outgoing.start(uri);
    const [status, result] = await Promise.all([outgoing.finished, incoming.run()]);
    const bytes = outgoing.snapshot().ram?.transferredBytes ?? 0;
    if (status !== 'completed' || result.status !== 'completed') {
      return { bytes, error: outgoing.error?.message ?? result.error?.message ?? `source ${status}, destination ${result.status}` };
    }
    return { bytes };
  } catch (err) {
    return { bytes: 0, error: err instanceof Error ? err.message : String(err) };
  }
}

/**
 * RAM only, no vCPU and no devices, shaped like the machines a real
 * migration moves (the same V8 hidden classes and code paths, so that what
 * V8 compiles here is not thrown away there): a block named as QEMU names a
 * PC's RAM, in shared memory, whose owner accounts for never-written pages.
 * A source's RAM holds zero, sparse and random pages (the none machine's
 * `random` pattern) in its first three quarters and was never written in the
 * last quarter (pristine: sent as runs of ZERO records without being read);
 * every page is reported dirty on the first sync; on the second sync every
 * fourth written page is rewritten and reported, so the rehearsal iterates a
 * second pass; nothing after that. A destination vouches for no page (as a
 * test machine waiting for a migration).
 */
class ScratchMachine implements Machine {
  readonly kind = 'scratch';
  readonly machineName = 'livemig-warm-up';
  readonly serial = { on: (): void => {} };
  private readonly memory: Uint8Array;
  private readonly block: RamBlock;
  private readonly writtenPages: number;
  private isRunning: boolean;
  private syncs = 0;

  constructor(ramBytes: number, private readonly isSource: boolean) {
    // Shared memory where there is any, as the machines a real migration moves.
    const buffer = typeof SharedArrayBuffer === 'function' ? new SharedArrayBuffer(ramBytes) : new ArrayBuffer(ramBytes);
    this.memory = new Uint8Array(buffer);
    const pages = ramBytes / TARGET_PAGE_SIZE;
    this.writtenPages = isSource ? Math.floor((pages * 3) / 4) : 0;
    this.block = new DenseRamBlock(SCRATCH_RAM_BLOCK, this.memory, { pristinePages: () => this.pristinePages(), logsEveryWrite: true });
    this.isRunning = isSource;
    if (isSource) fillNoneRam(this.memory.subarray(0, this.writtenPages * TARGET_PAGE_SIZE), { kind: 'random', seed: 1 });
  }

  get running(): boolean {
    return this.isRunning;
  }

  /** Ready for another rehearsal: a source runs and reports every page on its next sync, a destination waits. */
  rewind(): void {
    this.syncs = 0;
    this.isRunning = this.isSource;
  }

  ramBlocks(): RamBlock[] {
    return [this.block];
  }

  /** The last quarter of a source's RAM (never written); a destination vouches for nothing. */
  private pristinePages(): Uint32Array | undefined {
    if (!this.isSource) return undefined;
    const pages = this.memory.length / TARGET_PAGE_SIZE;
    const words = new Uint32Array(Math.ceil(pages / 32));
    for (let page = this.writtenPages; page < pages; page++) words[page >>> 5]! |= 1 << (page & 31);
    return words;
  }

  startDirtyLog(): void {}
  stopDirtyLog(): void {}

  async syncDirtyLog(sink: DirtyLogSink): Promise<void> {
    const pages = this.memory.length / TARGET_PAGE_SIZE;
    const log = new Uint32Array(Math.ceil(pages / 32));
    const sync = this.syncs++;
    if (sync === 0) log.fill(0xffffffff);
    else if (sync === 1) {
      for (let page = 0; page < this.writtenPages; page += 4) {
        this.memory[page * TARGET_PAGE_SIZE + 1] = (this.memory[page * TARGET_PAGE_SIZE + 1]! + 1) & 0xff;
        log[page >>> 5]! |= 1 << (page & 31);
      }
    }
    sink(SCRATCH_RAM_BLOCK, log);
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
