/**
 * A multifd channel's job queue in shared memory: the main thread (the
 * producer: page choice, packet numbers) writes jobs (a block and up to 128
 * page offsets) into a ring of slots; the channel's send thread (the
 * consumer) takes them in order, writes each packet and counts it written
 * once the OS took its last byte.
 *
 * Why not postMessage: a message per packet and one back cost both threads a
 * wake-up, ~40–70 µs of CPU per round trip on this project's 2-core bench
 * machine (2048 packets per GiB), while the kernel's copy of the packet is
 * ~70 µs. Here a thread waits (Atomics.waitAsync) only when it has nothing
 * to do: the consumer when the ring is empty, the producer when the ring is
 * full, and then only until half of it is written, so a wake-up carries
 * several packets.
 *
 * Counters only grow (jobs pushed, jobs written; int32, compared modulo
 * 2^32, so they may wrap); slot `n & (depth - 1)` holds job `n` from its
 * push until it is written (a power-of-two depth keeps that right across
 * the wrap).
 *
 * Slot layout (float64): packetNum, flags, blockIndex, count, then `count`
 * page offsets in bytes.
 */
import { MULTIFD_PAGES_PER_PACKET } from './packet.js';

/** Jobs a channel may have pushed and not yet written: 8 × 512 KiB, views of guest RAM, no copies. */
export const JOB_RING_DEPTH = 8;

const PUSHED = 0;
const WRITTEN = 1;
/** The producer waits until WRITTEN reaches this (the consumer notifies only then). */
const WANT_WRITTEN = 2;
const CONTROL_WORDS = 4;
const SLOT_HEAD = 4;
const SLOT_DOUBLES = SLOT_HEAD + MULTIFD_PAGES_PER_PACKET;
/** WANT_WRITTEN when nobody waits (counts compare modulo 2^32, so "never" is half the range away). */
const NOBODY_WAITS = 0x7fffffff;

/** The shared memory of one ring (sent to the consumer thread in its workerData). */
export interface JobRingMemory {
  control: SharedArrayBuffer;
  slots: SharedArrayBuffer;
  depth: number;
}

export function createJobRingMemory(depth: number = JOB_RING_DEPTH): JobRingMemory {
  if (!Number.isInteger(depth) || depth < 1 || depth > 1024 || (depth & (depth - 1)) !== 0) throw new RangeError(`job ring depth ${depth} is not a power of two in 1..1024`);
  const control = new SharedArrayBuffer(CONTROL_WORDS * 4);
  new Int32Array(control)[WANT_WRITTEN] = NOBODY_WAITS;
  return { control, slots: new SharedArrayBuffer(depth * SLOT_DOUBLES * 8), depth };
}

export interface RingJob {
  packetNum: number;
  flags: number;
  blockIndex: number;
  count: number;
  offsets: ArrayLike<number>;
}

/** A job as the consumer sees it: its offsets are a view of its slot; `mark` is its count for written(). */
export interface TakenJob extends RingJob {
  offsets: Float64Array;
  mark: number;
}

/** `a - b` for counters that wrap at 2^32. */
const distance = (a: number, b: number): number => (a - b) | 0;

/** Resolves when `control[index]` is no longer `seen` (at once if it already is not). */
function changeOf(control: Int32Array, index: number, seen: number): Promise<unknown> | undefined {
  const wait = Atomics.waitAsync(control, index, seen);
  return wait.async ? wait.value : undefined;
}

/** The main thread's end. */
export class JobRingProducer {
  private readonly control: Int32Array;
  private readonly slots: Float64Array;
  readonly depth: number;
  /** Jobs pushed so far (this thread is the only writer of PUSHED). */
  pushed: number;

  constructor(memory: JobRingMemory) {
    this.control = new Int32Array(memory.control);
    this.slots = new Float64Array(memory.slots);
    this.depth = memory.depth;
    this.pushed = Atomics.load(this.control, PUSHED);
  }

  /** Jobs written by the consumer so far. */
  get written(): number {
    return Atomics.load(this.control, WRITTEN);
  }

  /** Jobs pushed and not yet written. */
  get inflight(): number {
    return distance(this.pushed, this.written);
  }

  /** Queue a job (there must be room: inflight < depth); returns the count of jobs pushed, its "written" mark. */
  push(job: RingJob): number {
    if (this.inflight >= this.depth) throw new Error('multifd job ring is full');
    const at = (this.pushed & (this.depth - 1)) * SLOT_DOUBLES;
    const slots = this.slots;
    slots[at] = job.packetNum;
    slots[at + 1] = job.flags;
    slots[at + 2] = job.blockIndex;
    slots[at + 3] = job.count;
    for (let i = 0; i < job.count; i++) slots[at + SLOT_HEAD + i] = job.offsets[i]!;
    this.pushed = (this.pushed + 1) | 0;
    Atomics.store(this.control, PUSHED, this.pushed);
    // Wakes the consumer only if it waits (an empty ring); otherwise it finds the job itself.
    Atomics.notify(this.control, PUSHED);
    return this.pushed;
  }

  /**
   * Resolves once `mark` jobs are written, or on interrupt() (the caller
   * checks again: a failed channel never writes). undefined if they are.
   */
  whenWritten(mark: number): Promise<unknown> | undefined {
    const control = this.control;
    Atomics.store(control, WANT_WRITTEN, mark);
    const seen = Atomics.load(control, WRITTEN);
    if (distance(seen, mark) >= 0) {
      Atomics.store(control, WANT_WRITTEN, NOBODY_WAITS);
      return undefined;
    }
    return changeOf(control, WRITTEN, seen);
  }

  /** Wake this thread's waits on the ring (the channel failed or the sender is torn down). */
  interrupt(): void {
    Atomics.notify(this.control, WRITTEN);
  }
}

/** The send thread's end. */
export class JobRingConsumer {
  private readonly control: Int32Array;
  private readonly slots: Float64Array;
  private readonly depth: number;
  /** Jobs taken so far. */
  private taken: number;
  /** The job take() returned last, valid until the next take(). */
  private readonly job: TakenJob;

  constructor(memory: JobRingMemory) {
    this.control = new Int32Array(memory.control);
    this.slots = new Float64Array(memory.slots);
    this.depth = memory.depth;
    // Where the producer's counts stand (0 for a new ring): jobs not yet written are still to be taken.
    this.taken = Atomics.load(this.control, WRITTEN);
    this.job = { packetNum: 0, flags: 0, blockIndex: 0, count: 0, offsets: this.slots.subarray(0, 0), mark: 0 };
  }

  /** Whether every pushed job was taken. */
  get empty(): boolean {
    return Atomics.load(this.control, PUSHED) === this.taken;
  }

  /** The next job (this.job, its offsets a view of the slot), or undefined when the ring is empty. */
  take(): TakenJob | undefined {
    if (this.empty) return undefined;
    const at = (this.taken & (this.depth - 1)) * SLOT_DOUBLES;
    const slots = this.slots;
    const job = this.job;
    job.packetNum = slots[at]!;
    job.flags = slots[at + 1]!;
    job.blockIndex = slots[at + 2]!;
    job.count = slots[at + 3]!;
    job.offsets = slots.subarray(at + SLOT_HEAD, at + SLOT_HEAD + job.count);
    this.taken = (this.taken + 1) | 0;
    job.mark = this.taken;
    return job;
  }

  /** Resolves when a job is pushed, or on wake(); undefined if one is there already. */
  whenPushed(): Promise<unknown> | undefined {
    return changeOf(this.control, PUSHED, this.taken);
  }

  /** Wake this thread's whenPushed() (a 'finish' came, the channel failed). */
  wake(): void {
    Atomics.notify(this.control, PUSHED);
  }

  /**
   * Jobs up to `mark` (take()'s job.mark) are written: the OS took their last
   * byte, and their slots are free. Marks must come in order (a socket's write
   * callbacks do).
   */
  written(mark: number): void {
    const control = this.control;
    // A mark behind the count changes nothing (a later job can be counted first: a write that went straight to the OS
    // while an earlier one's callback was still to come).
    if (distance(mark, Atomics.load(control, WRITTEN)) <= 0) return;
    Atomics.store(control, WRITTEN, mark);
    const want = Atomics.load(control, WANT_WRITTEN);
    if (distance(mark, want) >= 0) {
      Atomics.notify(control, WRITTEN);
      // Served: later jobs notify nobody, unless the producer asked again meanwhile.
      Atomics.compareExchange(control, WANT_WRITTEN, want, NOBODY_WAITS);
    }
  }
}
