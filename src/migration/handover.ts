/**
 * The handover: how the guest passes from the source to the destination so
 * that it runs on exactly one side, whatever the link does.
 *
 * QEMU 7.2's handover (what a QEMU peer gets, and what livemig does with one):
 *
 *   source                                   destination
 *   OPEN_RETURN_PATH, PING 1  ------------>
 *                             <------------  PONG 1
 *   ... iterate (PING keepalives) ...
 *   stop guest; END, FULL sections, EOF ->   load all; start guest
 *                             <------------  SHUT 0
 *   completed
 *
 * The weak point is after EOF: the destination starts the guest as soon as it
 * has loaded the stream, so a source that hears nothing back cannot know
 * whether to resume. Between two livemig peers the destination therefore
 * holds the loaded guest until the source's go-ahead. The extension uses
 * only messages QEMU already has (a QEMU destination echoes a PING, a QEMU
 * source ignores an unexpected PONG), plus four bytes after the stream's JSON
 * trailer, which are sent only once the destination has said it waits for
 * them:
 *
 *   PING HANDOVER_OFFER       ------------>  (a QEMU destination echoes it: classic handover)
 *                             <------------  PONG HANDOVER_ACCEPT   (livemig: will hold)
 *   ... iterate ...
 *   stop guest; END, FULL, EOF, trailer ->   load all; do NOT start
 *                             <------------  PONG HANDOVER_LOADED
 *   ---- point of no return: before it, cancel resumes the source ----
 *   "LMGO"                    ------------>  start guest
 *                             <------------  SHUT 0
 *   "LMOK", close             ------------>  (confirmed: the source knows where the guest runs)
 *   completed
 *
 * Before the go-ahead, any failure (cancel, cut, stall, a timeout) leaves the
 * guest on the source, which resumes it, and the destination discards what it
 * loaded. After the go-ahead the destination runs the guest; if the source
 * then hears nothing, the outcome is unknown to it and it says so, keeping its
 * guest paused (see OUTCOME_UNKNOWN_ADVICE).
 */
import { readRecvBitmap, readReturnPathMessage, type StreamReader, StreamWriter, writeCommand, writePong, MigCommand } from '../wire/index.js';
import { MigrationError } from './errors.js';
import type { PeerWatchdog } from './liveness.js';

/** PING: a livemig source offers the held handover (version 1). */
export const HANDOVER_OFFER = 0x4c4d4801;
/** PONG: a livemig destination accepts it: it will hold the guest until the go-ahead. */
export const HANDOVER_ACCEPT = 0x4c4d4881;
/** PONG: the destination has loaded the whole stream and holds the guest. */
export const HANDOVER_LOADED = 0x4c4d4c44;
/** The go-ahead, written by the source after the stream's trailer: ASCII "LMGO". */
export const HANDOVER_GO = 0x4c4d474f;
/** The source's acknowledgement of SHUT 0, the last bytes of the stream: ASCII "LMOK". */
export const HANDOVER_ACK = 0x4c4d4f4b;
/** PING values the source numbers its own pings from (keepalives, catch-up waits). */
const FIRST_PING = 0x100;

/** What the source tells its operator when the go-ahead went out and no confirmation came back. */
export const OUTCOME_UNKNOWN_ADVICE =
  'the outcome is unknown: the destination may be running the guest. The source keeps its copy paused. ' +
  "Run query-status on the destination: if it is 'running', the guest moved (quit this source); if not, or the destination is gone, run cont here";

/** What the source tells its operator when the link broke in postcopy. */
export const POSTCOPY_PAUSED_ADVICE =
  'postcopy paused: the guest runs on the destination and waits there for pages only this source has; this source keeps them and its own copy stays paused. ' +
  'Recover: on the destination migrate-recover with a new URI, then here migrate with that URI and resume=true. ' +
  "If the destination is gone, or its query-migrate says it failed without starting the guest: migrate_cancel here, then cont (this copy is the guest as it was at the switch)";

/** What the source says when the destination failed after it ran the guest in postcopy. */
export const POSTCOPY_LOST_ADVICE =
  "the guest had run on the destination since the switch to postcopy, so this source's copy is not current; it stays paused. " +
  'cont here starts that older copy (the writes the guest made on the destination are lost); quit here to drop it';

/** What a destination says when it runs the guest but could not tell the source. */
export const UNCONFIRMED_ADVICE =
  'the guest runs here, but the source may not have heard it: it keeps its copy paused and reports the outcome as unknown. Do not cont the source; quit it';

export type PeerKind = 'livemig' | 'qemu';

/** A value the return path delivers once, or its failure. Never an unhandled rejection: waiters attach later. */
class Milestone<T> {
  readonly promise: Promise<T>;
  resolve!: (value: T) => void;
  reject!: (err: Error) => void;
  constructor() {
    this.promise = new Promise<T>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.promise.catch(() => {});
  }
}

/**
 * The source's end of the return path: reads the destination's messages,
 * learns which handover the peer speaks, and resolves the handover's
 * milestones. A broken or closed return path fails every wait.
 */
export class SourceReturnPath {
  private pingValue = FIRST_PING;
  private readonly pongWaiters = new Map<number, () => void>();
  private failure: MigrationError | undefined;
  /** Any message came back: the destination reads our stream. */
  heardFromPeer = false;
  /** The destination's answer to the offer: a livemig destination accepts, a QEMU one echoes. */
  private readonly peer = new Milestone<PeerKind>();
  /** PONG LOADED: the destination holds the loaded guest (held handover only). */
  private readonly loadedMilestone = new Milestone<void>();
  /** The SHUT value (0: the destination runs the guest). */
  private readonly shutMilestone = new Milestone<number>();
  /** Rejects with the failure (ends a ping's wait early). */
  private readonly failedMilestone = new Milestone<never>();
  /** Resolves when the reading loop ends (after SHUT, or on failure). */
  readonly done: Promise<void>;
  /** Postcopy recovery: the bitmaps asked for (RECV_BITMAP), by block. */
  private readonly recvBitmaps = new Map<string, { pageCount: number; milestone: Milestone<Uint32Array> }>();
  /** Postcopy recovery: RESUME_ACK. */
  private readonly resumeAck = new Milestone<void>();
  /** Postcopy: where page requests go (the RAM handler's queue); a request without it is a protocol error. */
  onPageRequest: ((idstr: string, startBytes: number, lengthBytes: number) => void) | undefined;
  private lastRequestedBlock: string | undefined;

  constructor(
    private readonly input: StreamReader,
    private readonly out: StreamWriter,
    private readonly watchdog: PeerWatchdog,
    /** Called once when the return path fails (the migration aborts its channels). */
    private readonly onFailure: (err: MigrationError) => void,
  ) {
    this.done = this.readLoop();
  }

  /** OPEN_RETURN_PATH, PING 1 (as QEMU) and the handover offer; the caller flushes. */
  open(): void {
    writeCommand(this.out, MigCommand.OpenReturnPath);
    this.writePing(1);
    this.writePing(HANDOVER_OFFER);
  }

  private writePing(value: number): void {
    const payload = new Uint8Array(4);
    new DataView(payload.buffer).setUint32(0, value);
    writeCommand(this.out, MigCommand.Ping, payload);
    this.watchdog.expectReply();
  }

  private async readLoop(): Promise<void> {
    try {
      for (;;) {
        const message = await readReturnPathMessage(this.input);
        if (message === null) throw new MigrationError('peer-closed', 'the destination closed the connection before confirming that it runs the guest');
        this.watchdog.replied();
        if (message.type === 'shut') {
          this.shutMilestone.resolve(message.value);
          if (message.value !== 0) {
            throw new MigrationError('destination-failed', `the destination could not load the stream (SHUT ${message.value}); its log says why`);
          }
          return;
        }
        this.heardFromPeer = true;
        if (message.type === 'req-pages') {
          // REQ_PAGES names no block: the one of the last REQ_PAGES_ID.
          const idstr = message.idstr ?? this.lastRequestedBlock;
          if (idstr === undefined) throw new MigrationError('bad-stream', `return path: REQ_PAGES at offset ${message.offset} before any REQ_PAGES_ID named a block`);
          this.lastRequestedBlock = idstr;
          if (!this.onPageRequest) throw new MigrationError('bad-stream', `return path: a page request (${idstr} at 0x${message.startBytes.toString(16)}) outside postcopy`);
          this.onPageRequest(idstr, message.startBytes, message.lengthBytes);
          continue;
        }
        if (message.type === 'recv-bitmap') {
          const wanted = this.recvBitmaps.get(message.idstr);
          if (!wanted) throw new MigrationError('bad-stream', `return path: a received bitmap for '${message.idstr}', which was not asked for`);
          wanted.milestone.resolve(await readRecvBitmap(this.input, message.idstr, wanted.pageCount));
          continue;
        }
        if (message.type === 'resume-ack') {
          if (message.value !== 1) throw new MigrationError('bad-stream', `return path: RESUME_ACK ${message.value}, expected 1`);
          this.resumeAck.resolve();
          continue;
        }
        const value = message.value;
        if (value === HANDOVER_ACCEPT) this.peer.resolve('livemig');
        else if (value === HANDOVER_OFFER) this.peer.resolve('qemu'); // a QEMU destination answering a PING
        else if (value === HANDOVER_LOADED) this.loadedMilestone.resolve();
        else {
          // PONG: the destination has loaded everything sent before that PING.
          this.pongWaiters.get(value)?.();
          this.pongWaiters.delete(value);
        }
      }
    } catch (err) {
      this.fail(MigrationError.from(err, 'peer-closed'));
    }
  }

  /** The return path failed (also called by the migration when it gives up, to end every wait). */
  fail(err: MigrationError): void {
    if (this.failure) return;
    this.failure = err;
    // A milestone already reached keeps its value; the others fail.
    for (const m of [this.peer, this.loadedMilestone, this.shutMilestone, this.failedMilestone, this.resumeAck, ...[...this.recvBitmaps.values()].map((b) => b.milestone)]) m.reject(err);
    this.onFailure(err);
  }

  get failed(): MigrationError | undefined {
    return this.failure;
  }

  /** Which handover the destination speaks (its answer to the offer). */
  peerKind(): Promise<PeerKind> {
    return this.peer.promise;
  }

  /** The destination loaded the whole stream and holds the guest (held handover only). */
  loaded(): Promise<void> {
    this.watchdog.expectReply();
    return this.loadedMilestone.promise;
  }

  /** Recovery: the destination's received bitmap of a block, once its RECV_BITMAP answer came (ask before sending the command). */
  expectRecvBitmap(idstr: string, pageCount: number): Promise<Uint32Array> {
    const milestone = new Milestone<Uint32Array>();
    if (this.failure) milestone.reject(this.failure);
    this.recvBitmaps.set(idstr, { pageCount, milestone });
    this.watchdog.expectReply();
    return milestone.promise;
  }

  /** Recovery: RESUME_ACK came (the destination is postcopy-active again). */
  resumeAcknowledged(): Promise<void> {
    this.watchdog.expectReply();
    return this.resumeAck.promise;
  }

  /** The destination's SHUT value (0: it runs the guest). */
  shut(): Promise<number> {
    this.watchdog.expectReply();
    return this.shutMilestone.promise;
  }

  /**
   * PING and flush; resolves on its PONG, i.e. once the destination has loaded
   * everything sent before it, or after `timeoutMs` (the caller goes on either way).
   */
  async ping(timeoutMs: number): Promise<void> {
    const value = ++this.pingValue;
    this.writePing(value);
    await this.out.flush();
    let timer: NodeJS.Timeout | undefined;
    const answered = new Promise<void>((resolve) => {
      this.pongWaiters.set(value, resolve);
      timer = setTimeout(resolve, timeoutMs);
    });
    try {
      await Promise.race([answered, this.failedMilestone.promise]);
    } finally {
      clearTimeout(timer);
      this.pongWaiters.delete(value);
    }
  }

  /** A PING of a given value, not awaited (postcopy's numbered pings, the postcopy go-ahead); the caller flushes. */
  sendPing(value: number): void {
    this.writePing(value);
  }

  /**
   * A PING whose PONG resolves the returned promise: everything sent before it
   * has been loaded. Not awaited by the caller (postcopy's flow control); the
   * caller flushes. Rejects if the return path fails first.
   */
  sendTrackedPing(onPong: () => void): Promise<void> {
    const value = ++this.pingValue;
    this.writePing(value);
    const answered = new Promise<void>((resolve) => {
      this.pongWaiters.set(value, () => {
        onPong();
        resolve();
      });
    });
    const settled = Promise.race([answered, this.failedMilestone.promise]);
    settled.catch(() => {});
    return settled;
  }

  /** A keepalive PING (not awaited): the watchdog expects an answer within the timeout. */
  async keepalive(): Promise<void> {
    this.writePing(++this.pingValue);
    await this.out.flush();
  }

  /** The go-ahead, after the trailer: from here on the destination may run the guest. */
  async sendGo(): Promise<void> {
    this.out.be32(HANDOVER_GO);
    await this.out.flush();
  }

  /** After SHUT 0: tell the destination its confirmation arrived (then the stream ends). */
  acknowledge(): void {
    this.out.be32(HANDOVER_ACK);
  }
}

/**
 * The destination's end: answers PINGs in stream order, accepts the held
 * handover when a livemig source offers it, and after the whole stream says
 * LOADED and waits for the go-ahead.
 */
export class DestinationHandover {
  /** The source offered the held handover and we accepted: do not start the guest before the go-ahead. */
  held = false;
  private returnPath: StreamWriter | undefined;

  constructor(private readonly onOffer: () => void = () => {}) {}

  /** OPEN_RETURN_PATH: the channel's output becomes the return path. */
  open(out: StreamWriter): void {
    this.returnPath ??= out;
  }

  get writer(): StreamWriter | undefined {
    return this.returnPath;
  }

  /** Postcopy recovery: the new channel's output is the return path from now on. */
  reopen(out: StreamWriter): void {
    this.returnPath = out;
  }

  /** A PING: answer it (after everything before it was loaded, which stream order gives us). */
  async ping(value: number): Promise<void> {
    const rp = this.returnPath;
    if (!rp) throw new MigrationError('bad-stream', 'PING without a return path');
    if (value === HANDOVER_OFFER) {
      this.held = true;
      writePong(rp, HANDOVER_ACCEPT);
      this.onOffer();
    } else {
      writePong(rp, value);
    }
    await rp.flush();
  }

  /**
   * Held handover, after SHUT 0: whether the source acknowledged it within
   * `timeoutMs` (if not, it may not know that the guest runs here).
   */
  async acknowledged(input: StreamReader, timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    try {
      return await Promise.race([input.be32().then((v) => v === HANDOVER_ACK, () => false), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Held handover: the state is loaded (the whole stream; in postcopy, the device state) and the guest waits for the go-ahead. */
  async sayLoaded(): Promise<void> {
    const rp = this.returnPath!;
    writePong(rp, HANDOVER_LOADED);
    await rp.flush();
  }

  /** Held handover, after the whole stream loaded: say so, then read the go-ahead (or fail). */
  async awaitGo(input: StreamReader): Promise<void> {
    await this.sayLoaded();
    let go: number;
    try {
      go = await input.be32();
    } catch (err) {
      throw new MigrationError('peer-closed', 'the source did not give the go-ahead (it cancelled, or the link broke): the guest was not started here', { cause: err });
    }
    if (go !== HANDOVER_GO) {
      throw new MigrationError('bad-stream', `expected the source's go-ahead after the stream, got 0x${go.toString(16).padStart(8, '0')}: the guest was not started here`);
    }
  }
}
