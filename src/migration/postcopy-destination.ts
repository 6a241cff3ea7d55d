/**
 * Postcopy on the destination (QEMU's loadvm_postcopy_handle_* and its fault
 * thread), for incoming.ts:
 *
 *   ADVISE    check the page sizes, that postcopy is on here and that this
 *             guest type can run with pages missing; record arriving pages
 *   DISCARD   pages the source sent and the guest wrote again: missing again
 *   LISTEN    (in the package) pages are placed once from now on; the guest's
 *             accesses are checked against what has arrived (Machine.postcopy)
 *   RUN       (ends the package) the guest may start: at once with a QEMU
 *             source, at the go-ahead with a livemig one (handover.ts)
 *   a fault   the guest touched a missing page: REQ_PAGES[_ID] on the return path
 *   EOF       every page must be here; stop checking
 */
import type { Machine } from '../machine/machine.js';
import type { RamLoadHandler, ReceivedPages } from '../ram/index.js';
import { parsePostcopyAdvise, parseRamDiscard, StreamError, TARGET_PAGE_SIZE, writeRecvBitmap, writeReqPages, type StreamWriter } from '../wire/index.js';

export type DestinationPostcopyState = 'none' | 'advised' | 'listening' | 'running' | 'ended';

export interface DestinationPostcopyStats {
  /** Page requests sent to the source. */
  requests: number;
  /** Pages placed after LISTEN. */
  placedPages: number;
  /** Pages that arrived after LISTEN but were here already (dropped). */
  droppedPages: number;
  /** Pages still missing (0 before ADVISE). */
  missingPages: number;
}

export class DestinationPostcopy {
  state: DestinationPostcopyState = 'none';
  private received: ReceivedPages | undefined;
  /** Requested and not arrived yet: asked once, not at every fault. */
  private readonly outstanding = new Set<string>();
  private lastRequestedBlock: string | undefined;
  private requests = 0;

  constructor(
    private readonly machine: Machine,
    private readonly ram: RamLoadHandler,
    /** Capability `postcopy-ram` on this side. */
    private readonly enabled: boolean,
    /** The return path, once OPEN_RETURN_PATH came. */
    private readonly returnPath: () => StreamWriter | undefined,
  ) {}

  /** Postcopy was advised: the source may switch (and its counters mean something). */
  get advised(): boolean {
    return this.state !== 'none';
  }

  /** The source switched to postcopy (LISTEN came): the guest starts before the stream ends. */
  get switched(): boolean {
    return this.state === 'listening' || this.state === 'running' || this.state === 'ended';
  }

  advise(payload: Uint8Array, offset: number): void {
    const fail = (reason: string): StreamError => new StreamError('bad-command', reason, { offset });
    const advice = parsePostcopyAdvise(payload, offset);
    if (advice === undefined) {
      // The empty form is dirty-bitmap postcopy only: nothing to do for RAM.
      if (this.enabled) throw fail('RAM postcopy is enabled but have 0 byte advise');
      return;
    }
    if (this.state !== 'none') throw fail(`POSTCOPY_ADVISE in the wrong postcopy state (${this.state})`);
    if (!this.enabled) throw fail("RAM postcopy is disabled but have 16 byte advise (the source has capability postcopy-ram: set it here too before migrate-incoming)");
    if (!this.machine.postcopy) throw fail(`postcopy is not possible with a ${this.machine.kind} guest: it cannot run with pages missing (turn postcopy-ram off at the source)`);
    if (advice.pageSizeSummary !== TARGET_PAGE_SIZE || advice.targetPageSize !== TARGET_PAGE_SIZE) {
      throw fail(`Postcopy needs matching RAM page sizes (s=${advice.pageSizeSummary.toString(16)} d=${TARGET_PAGE_SIZE.toString(16)}, target ${advice.targetPageSize.toString(16)})`);
    }
    this.received = this.ram.adviseReceivedMap();
    this.ram.onPagePlaced = (block, page) => {
      if (this.outstanding.size > 0) this.outstanding.delete(`${block.idstr}\0${page}`);
    };
    this.state = 'advised';
  }

  discard(payload: Uint8Array, offset: number): void {
    if (this.state !== 'advised') throw new StreamError('bad-command', `POSTCOPY_RAM_DISCARD in the wrong postcopy state (${this.state})`, { offset });
    const { idstr, ranges } = parseRamDiscard(payload, offset);
    this.ram.discard(idstr, ranges, offset);
  }

  listen(offset: number): void {
    if (this.state !== 'advised') throw new StreamError('bad-command', `POSTCOPY_LISTEN in the wrong postcopy state (${this.state})`, { offset });
    if (!this.returnPath()) throw new StreamError('bad-command', 'POSTCOPY_LISTEN without a return path: page requests could not be sent', { offset });
    this.ram.listen(offset);
    this.machine.postcopy!.arm(this.received!.bitmaps, (idstr, page) => this.fault(idstr, page));
    this.state = 'listening';
  }

  /** RUN: checked here; the caller starts the guest (now, or at the go-ahead). */
  run(offset: number): void {
    if (this.state !== 'listening') throw new StreamError('bad-command', `POSTCOPY_RUN in the wrong postcopy state (${this.state})`, { offset });
    this.state = 'running';
  }

  /** The guest touched a missing page: ask the source for it (once). */
  private fault(idstr: string, page: number): void {
    if (this.state === 'ended' || this.received!.has(idstr, page)) return;
    const key = `${idstr}\0${page}`;
    if (this.outstanding.has(key)) return;
    const rp = this.returnPath();
    if (!rp) return;
    this.outstanding.add(key);
    this.requests++;
    writeReqPages(rp, page * TARGET_PAGE_SIZE, TARGET_PAGE_SIZE, idstr === this.lastRequestedBlock ? undefined : idstr);
    this.lastRequestedBlock = idstr;
    // A flush fails only when the channel broke: the main stream's read fails with it, the load pauses
    // for recovery, and resendOutstanding() asks again for every page still outstanding.
    rp.flush().catch(() => {});
  }

  /** Recovery: RECV_BITMAP for `idstr`, answered with the pages received (the source resends every other one). */
  sendReceivedBitmap(rp: StreamWriter, idstr: string, offset: number): void {
    const bits = this.received?.bitmaps.get(idstr);
    const block = this.ram.table.lookup(idstr).block;
    if (!bits || !block) throw new StreamError('bad-command', `RECV_BITMAP for '${idstr}', which is no RAM block here`, { offset });
    const snapshot = new Uint32Array(bits.length);
    for (let w = 0; w < bits.length; w++) snapshot[w] = Atomics.load(bits, w) >>> 0;
    writeRecvBitmap(rp, idstr, snapshot, block.pageCount);
  }

  /** Recovery done: ask again for every page still outstanding (the old link may have lost the requests). */
  resendOutstanding(): void {
    const pending = [...this.outstanding];
    this.outstanding.clear();
    this.lastRequestedBlock = undefined;
    for (const key of pending) {
      const [idstr, page] = key.split('\0') as [string, string];
      this.fault(idstr, Number(page));
    }
  }

  /** EOF in postcopy: every page must have come; then the guest runs unchecked. */
  end(offset: number): void {
    if (!this.switched) return; // advised only: a pre-copy stream, checked as such
    const missing = this.received!.missingPages();
    if (missing > 0) {
      throw new StreamError('incomplete-stream', `incomplete stream: ${missing} page${missing > 1 ? 's' : ''} of RAM never arrived in postcopy`, { offset, section: { idstr: 'ram' } });
    }
    this.machine.postcopy!.disarm();
    this.state = 'ended';
  }

  get stats(): DestinationPostcopyStats {
    return {
      requests: this.requests,
      placedPages: this.ram.postcopyPlacedPages,
      droppedPages: this.ram.postcopyDroppedPages,
      missingPages: this.received ? this.received.missingPages() : 0,
    };
  }

  /** QEMU's postcopy-blocktime and postcopy-vcpu-blocktime (ms), once the guest may have waited. */
  blocktime(): { totalMs: number; perVcpuMs: number[] } | undefined {
    if (this.state === 'none' || this.state === 'advised') return undefined;
    return this.machine.postcopy!.blocktime();
  }
}
