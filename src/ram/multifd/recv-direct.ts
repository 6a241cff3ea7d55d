/**
 * One plain (uncompressed) multifd receive channel as a push parser: the
 * socket asks where its next read should land (next()) and reports how many
 * bytes landed there (filled()). While a header (or the init packet) is
 * missing bytes, next() is the rest of a header buffer; once the header is
 * checked, it is the rest of the current run of consecutive pages IN GUEST
 * RAM, so the kernel copies the pages into place and nothing copies them again
 * (the pull loop, recv-channel.ts, copies each byte twice: kernel → ring
 * buffer → RAM).
 *
 * Same checks, same MultifdError texts and offsets as the pull loop
 * (checkPacket, parseInitPacket); every check is done before any byte of the
 * packet's pages is asked for. A SYNC packet makes filled() return false
 * (stop reading) until release().
 *
 * Pure: no I/O here (recv-worker.ts drives it from a net.Socket's `onread`).
 */
import { DenseRamBlock, type RamBlock } from '../block.js';
import { FixedRamBlockTable, type RamBlockTable } from '../block-table.js';
import { UnexpectedEndError } from '../../wire/index.js';
import {
  encodeInitPacket,
  MULTIFD_FLAG_SYNC,
  MULTIFD_HEADER_BYTES,
  MULTIFD_INIT_BYTES,
  MULTIFD_PAGE_SIZE,
  MULTIFD_PAGES_PER_PACKET,
  MultifdError,
  pageRunLength,
  parseInitPacket,
  writePacketHeader,
} from './packet.js';
import { asMultifdError, checkPacket, type RecvChannelCounters } from './recv-channel.js';

export interface DirectRecvContext {
  uuid: Uint8Array;
  channels: number;
  table: RamBlockTable;
  counters: RecvChannelCounters;
  /** The init packet named this channel `id` (throw to refuse it). */
  onInit(id: number): void;
  /** A SYNC packet was read whole: call release() once the main channel lets this channel go on. */
  onSync(): void;
}

const enum State {
  Init,
  Header,
  Pages,
  Failed,
}

export class DirectMultifdReceiver {
  /** Bytes of this channel's stream taken so far. */
  offset = 0;
  id = -1;
  /** Set once a check failed (filled() threw it). */
  failure: MultifdError | undefined;

  private state = State.Init;
  /** True between a SYNC packet's end and release(). */
  private waiting = false;
  private readonly init = new Uint8Array(new ArrayBuffer(MULTIFD_INIT_BYTES));
  private readonly header = new Uint8Array(new ArrayBuffer(MULTIFD_HEADER_BYTES));
  private readonly offsets = new Float64Array(MULTIFD_PAGES_PER_PACKET);
  /** The current unit (init packet, header, run of pages): its place, its length, bytes already in, where it starts in the stream. */
  private unit: Uint8Array = this.init;
  private unitAt = 0;
  private unitBytes = MULTIFD_INIT_BYTES;
  private unitGot = 0;
  private unitStart = 0;
  /** The packet being received: its block, its pages, the next page to place, its flags. */
  private block: RamBlock | undefined;
  private memory: Uint8Array | undefined;
  private pages = 0;
  private nextPage = 0;
  private flags = 0;
  /** The page of a block without one memory (pageForUpdate), to be reported by pageUpdated. */
  private pendingPage = -1;
  /** A place for bytes after a failure (the socket still wants a buffer). */
  private scratch: Uint8Array | undefined;

  constructor(private readonly ctx: DirectRecvContext) {}

  /** Where the next bytes must go: exactly the bytes the current unit still misses. */
  next(): Uint8Array {
    if (this.state === State.Failed) return (this.scratch ??= new Uint8Array(new ArrayBuffer(MULTIFD_PAGE_SIZE)));
    return this.unit.subarray(this.unitAt + this.unitGot, this.unitAt + this.unitBytes);
  }

  /** True while the channel waits at a SYNC for release(). */
  get atSync(): boolean {
    return this.waiting;
  }

  /**
   * `n` bytes landed in next()'s view. False when reading must stop (at a
   * SYNC, until release(); after a failure). Throws the MultifdError of a
   * failed check (also kept in `failure`).
   */
  filled(n: number): boolean {
    if (this.state === State.Failed) return false;
    this.unitGot += n;
    this.offset += n;
    if (this.unitGot < this.unitBytes) return true;
    try {
      this.unitDone();
    } catch (err) {
      this.state = State.Failed;
      this.failure = asMultifdError(err, this.id < 0 ? undefined : this.id, this.offset);
      throw this.failure;
    }
    return !this.waiting;
  }

  /** Bytes received another way (before the socket was handed over): copied in. Returns how many were taken (fewer when a SYNC stops it). */
  feed(chunk: Uint8Array): number {
    let taken = 0;
    while (taken < chunk.length && !this.waiting && this.state !== State.Failed) {
      const into = this.next();
      const n = Math.min(into.length, chunk.length - taken);
      into.set(chunk.subarray(taken, taken + n));
      taken += n;
      this.filled(n);
    }
    return taken;
  }

  /** The main channel released this channel after its SYNC. */
  release(): void {
    this.waiting = false;
  }

  /** The stream ended: fine between packets, else the pull loop's "ended inside a packet" error (thrown). */
  end(): void {
    if (this.state === State.Failed) throw this.failure;
    if (this.state === State.Header && this.unitGot === 0) return;
    const e = new UnexpectedEndError(this.unitBytes, this.unitGot, this.unitStart);
    throw asMultifdError(e, this.id < 0 ? undefined : this.id, this.offset);
  }

  private expect(unit: Uint8Array, at: number, bytes: number): void {
    this.unit = unit;
    this.unitAt = at;
    this.unitBytes = bytes;
    this.unitGot = 0;
    this.unitStart = this.offset;
  }

  private expectHeader(): void {
    this.state = State.Header;
    this.expect(this.header, 0, MULTIFD_HEADER_BYTES);
  }

  private unitDone(): void {
    switch (this.state) {
      case State.Init:
        this.id = parseInitPacket(this.init, this.ctx.uuid, this.ctx.channels);
        this.ctx.onInit(this.id);
        this.expectHeader();
        return;
      case State.Header: {
        const at = this.unitStart;
        const { h, block } = checkPacket(this.header, this.id, at, this.offsets, { compression: 'none', table: this.ctx.table });
        const counters = this.ctx.counters;
        counters.packets++;
        counters.bytes += MULTIFD_HEADER_BYTES;
        this.flags = h.flags;
        if (block) {
          this.block = block;
          this.memory = block.pageOffsetForUpdate !== undefined ? block.memory : undefined;
          this.pages = h.normalPages;
          this.nextPage = 0;
          counters.pages += h.normalPages;
          counters.bytes += h.normalPages * MULTIFD_PAGE_SIZE;
          this.state = State.Pages;
          this.expectRun();
        } else {
          this.packetDone();
        }
        return;
      }
      case State.Pages:
        if (this.pendingPage >= 0) {
          this.block!.pageUpdated(this.pendingPage);
          this.pendingPage = -1;
        }
        if (this.nextPage < this.pages) this.expectRun();
        else this.packetDone();
        return;
    }
  }

  /** The next run of consecutive pages as one unit, in place in guest RAM (a block without one memory: one page, its pageForUpdate view). */
  private expectRun(): void {
    const offsets = this.offsets;
    const block = this.block!;
    const i = this.nextPage;
    const first = offsets[i]!;
    if (this.memory === undefined) {
      this.pendingPage = first / MULTIFD_PAGE_SIZE;
      this.nextPage = i + 1;
      this.expect(block.pageForUpdate(this.pendingPage), 0, MULTIFD_PAGE_SIZE);
      return;
    }
    const run = pageRunLength(offsets, i, this.pages);
    // Every page of the run is marked written before its bytes land (as pageForUpdate would).
    const at = block.pageOffsetForUpdate!(first / MULTIFD_PAGE_SIZE);
    for (let k = 1; k < run; k++) block.pageOffsetForUpdate!(first / MULTIFD_PAGE_SIZE + k);
    this.nextPage = i + run;
    this.expect(this.memory, at, run * MULTIFD_PAGE_SIZE);
  }

  private packetDone(): void {
    this.block = undefined;
    this.memory = undefined;
    this.expectHeader();
    // Wait for the main channel's EOS (multifd_recv_sync_main) before reading on.
    if (this.flags & MULTIFD_FLAG_SYNC) {
      this.waiting = true;
      this.ctx.onSync();
    }
  }
}

/**
 * Packets a receive thread rehearses at start-up: after 1024 its per-packet
 * code (header parse and checks, the run loop) is compiled (a fresh process:
 * 1024 packets written and parsed in 28–29 ms cold, 3–4 ms after).
 */
export const RECEIVE_REHEARSAL_PACKETS = 1024;

/**
 * Runs the parser over `packets` made-up packets into a scratch block of
 * shared memory (no page bytes are written: where the kernel would put them,
 * only the parser's bookkeeping runs). A receive thread is a fresh V8 isolate
 * that the process's warm-up (migration/warm-up.ts) never reaches, so without
 * this its first thousand packets ran in V8's slower tiers inside the
 * migration (profiles of a-1g-multifd's destination: the header parsing and
 * checks took ~35–50 ms per thread, ~5–7 ms with the rehearsal;
 * docs/benchmarks.md, issue 15's thirteenth session). Threads start when the receiver is created,
 * before the source connects, so this is paid before the first packet.
 * Alternate packets are one run of 128 pages and 128 runs of one page.
 * Returns the parser's counters (what it took as received).
 */
export function rehearseDirectReceive(packets = RECEIVE_REHEARSAL_PACKETS): RecvChannelCounters {
  const pages = MULTIFD_PAGES_PER_PACKET;
  const idstr = 'livemig-rehearsal';
  const memory = new Uint8Array(typeof SharedArrayBuffer === 'function' ? new SharedArrayBuffer(2 * pages * MULTIFD_PAGE_SIZE) : new ArrayBuffer(2 * pages * MULTIFD_PAGE_SIZE));
  const table = new FixedRamBlockTable([new DenseRamBlock(idstr, memory, { lengthBytes: memory.length })]);
  const uuid = new Uint8Array(16);
  const counters: RecvChannelCounters = { packets: 0, pages: 0, bytes: 0 };
  const receiver = new DirectMultifdReceiver({ uuid, channels: 1, table, counters, onInit: () => {}, onSync: () => {} });
  receiver.feed(encodeInitPacket(uuid, 0));
  const header = new Uint8Array(MULTIFD_HEADER_BYTES);
  const runs = [new Float64Array(pages), new Float64Array(pages)];
  for (let i = 0; i < pages; i++) {
    runs[0]![i] = i * MULTIFD_PAGE_SIZE;
    runs[1]![i] = 2 * i * MULTIFD_PAGE_SIZE;
  }
  for (let p = 0; p < packets; p++) {
    writePacketHeader(header, 0, { flags: 0, normalPages: pages, nextPacketSize: pages * MULTIFD_PAGE_SIZE, packetNum: p, ramblock: idstr, offsets: runs[p & 1]! });
    receiver.feed(header);
    for (let landed = 0; landed < pages * MULTIFD_PAGE_SIZE; ) {
      const into = receiver.next();
      receiver.filled(into.length);
      landed += into.length;
    }
  }
  return counters;
}
