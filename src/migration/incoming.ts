/**
 * The destination side: QEMU's process_incoming_migration. Accept the
 * source's connection (dropping stray ones), load the stream into a paused
 * machine, and start the guest only when the whole stream loaded — and,
 * with a livemig source, only after its go-ahead (handover.ts); then confirm
 * (SHUT 0). On any failure the guest is never started, received disks are
 * discarded, and the source is told (SHUT 1) when it can be.
 */
import type { IncomingDiskImage } from '../block/incoming-image.js';
import type { Machine } from '../machine/machine.js';
import { FixedRamBlockTable, type RamBlock } from '../ram/index.js';
import type { MultifdCompression } from '../ram/multifd/codec.js';
import { MULTIFD_MAGIC, MULTIFD_PROTOCOL_ERROR } from '../ram/multifd/packet.js';
import type { MultifdReceiver, MultifdReceiverStats } from '../ram/multifd/receiver.js';
import { loadVmState } from '../savevm/index.js';
import type { TlsServerSettings } from '../transport/tls.js';
import { parseMigrationUri } from '../transport/uri.js';
import {
  MigCommand,
  parseRecvBitmapCommand,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  StreamError,
  StreamReader,
  StreamWriter,
  TypedEmitter,
  UnexpectedEndError,
  unrefTimer,
  writeResumeAck,
  writeShut,
  yieldToEventLoop,
  type MigrationChannel,
} from '../wire/index.js';
import { defaultChannels, multifdUnavailable, OpenedChannelListener, type IncomingListener, type MigrationChannels } from './channels.js';
import { assembleIncoming } from './assemble.js';
import { MigrationError } from './errors.js';
import { DestinationHandover, HANDOVER_GO, UNCONFIRMED_ADVICE } from './handover.js';
import { DestinationPostcopy } from './postcopy-destination.js';
import { PeerWatchdog, watchSource } from './liveness.js';
import { DEFAULT_PARAMETERS } from './config.js';
import createDebug from 'debug';

const log = createDebug('livemig:incoming');

/** Guest RAM pages prepared per turn of the event loop (8 MiB: 5–25 ms of page faults on the bench's machine). */
const PREPARE_SLICE_PAGES = 2048;

export type IncomingStatus = 'none' | 'setup' | 'active' | 'postcopy-active' | 'postcopy-paused' | 'postcopy-recover' | 'completed' | 'failed' | 'cancelled';

export interface IncomingResult {
  status: 'completed' | 'failed' | 'cancelled';
  error?: MigrationError;
  /** Whether the guest was started (false when the source had it paused, with -S, or on failure). */
  started: boolean;
  /** Completed, but the source could not be told: what the operator must know. */
  warning?: string;
  /** ms from the first byte to the guest running. */
  loadTimeMs: number;
  bytes: number;
}

/** A TLS record carrying a handshake (0x16), version 3.x: a ClientHello. */
function isTlsClientHello(head: Uint8Array): boolean {
  return head.length >= 3 && head[0] === 0x16 && head[1] === 0x03 && head[2]! <= 0x04;
}

export interface IncomingOptions {
  /**
   * Disks this destination receives: written under a temporary name, renamed
   * into place (flushed) only after the whole stream loaded, deleted on failure.
   */
  disks?: IncomingDiskImage[];
  /** Start the guest after loading when the source ran it (default true; QEMU's `-S` turns it off). */
  autostart?: boolean;
  /** Appended to "has no disk of that name" (how to give this destination one). */
  diskHint?(name: string): string;
  /** tls-creds and tls-authz resolved (serverTlsFor): every connection runs a TLS handshake and the authorization check first. */
  tls?: TlsServerSettings;
  /** Capability `postcopy-ram` on this destination: the source may switch to postcopy. */
  postcopy?: boolean;
  /** How channels are opened (default: Node's transports; in a browser, browserChannels()). */
  channels?: MigrationChannels;
  /** `x-livemig-peer-timeout-ms`, read when needed (so a change before or during the migration applies). */
  peerTimeoutMs?(): number;
  /**
   * Capability `multifd` on this destination: accept `channels` extra
   * connections (parameter `multifd-channels`; the source must use the same
   * count, compression and UUID).
   */
  multifd?: {
    channels: number;
    compression?: MultifdCompression;
    uuid?: Uint8Array;
    connectTimeoutMs?: number;
    /** Receive channels in worker threads (default: when guest RAM is SharedArrayBuffers); false keeps them on this thread. */
    useWorkers?: boolean;
  };
}

export interface IncomingEvents {
  status: [IncomingStatus];
  /** The whole stream loaded (synchronous: listeners see RAM exactly as loaded, before the guest runs). */
  loaded: [];
  resume: [];
  diskProgress: [number];
  /** A connection that was not a migration was dropped; the destination keeps listening. */
  rejected: [string];
}

export class IncomingMigration extends TypedEmitter<IncomingEvents> {
  status: IncomingStatus = 'none';
  /** Multifd receive counters of the current migration (which channels ran in worker threads, packets, pages). */
  multifdStats: MultifdReceiverStats | undefined;
  /** Why it failed or was cancelled. */
  error: MigrationError | undefined;
  private listener: IncomingListener | undefined;
  private channel: MigrationChannel | undefined;
  private receiver: MultifdReceiver | undefined;
  private cancelRequested = false;
  /** Past this (LOADED sent, or the guest started) a cancel here could lose the guest: refused. */
  private cancelClosed = false;
  private abortReason: MigrationError | undefined;
  private startedMs = 0;
  private mainReader: StreamReader | undefined;
  /** Postcopy's destination side, for the migration under way. */
  postcopy: DestinationPostcopy | undefined;
  /** Postcopy paused: hands the listener of `migrate-recover` to the waiting load. */
  private recoverWaiter: ((listener: IncomingListener) => void) | undefined;
  private preparing: Promise<void> = Promise.resolve();
  private ramLoadEnded = false;

  constructor(
    private readonly machine: Machine,
    private readonly options: IncomingOptions = {},
  ) {
    super();
  }

  private setStatus(status: IncomingStatus): void {
    log('status %s -> %s', this.status, status);
    this.status = status;
    this.emit('status', status);
  }

  private peerTimeoutMs(): number {
    return this.options.peerTimeoutMs?.() ?? DEFAULT_PARAMETERS['x-livemig-peer-timeout-ms'];
  }

  /**
   * Settles once every page of guest RAM was touched after listen() (see
   * prepareRam), or the load ended first. Never rejects. Who tells the source
   * to start (`livemig run` reports `listening` then) may wait for it, so
   * that no page fault lands in the migration; the load does not need it.
   */
  get ramPrepared(): Promise<void> {
    return this.preparing;
  }

  /** Listen on `uri`; resolves with the actual address (tcp port 0 becomes a real port). */
  async listen(uri: string): Promise<string> {
    if (this.status !== 'none') throw new MigrationError('refused', 'migrate-incoming can only be used once');
    const kind = parseMigrationUri(uri).kind;
    if (this.options.multifd && kind !== 'tcp' && kind !== 'unix') throw new MigrationError('refused', kind === 'ws' ? `${MULTIFD_PROTOCOL_ERROR} (ws: carries one WebSocket; multifd needs tcp: or unix:)` : MULTIFD_PROTOCOL_ERROR);
    const channels = await this.channels();
    const noMultifd = this.options.multifd ? multifdUnavailable(channels) : undefined;
    if (noMultifd) throw new MigrationError('refused', noMultifd);
    // Sockets keep listening until the source's stream is found, so a stray connection does not end the wait.
    this.listener = await channels.listen(uri, {
      multiChannel: kind === 'tcp' || kind === 'unix' || kind === 'ws',
      ...(this.options.tls ? { tls: this.options.tls } : {}),
      // A failed handshake is a stranger (or a misconfigured source): say why, keep waiting.
      onRejected: (why) => this.emit('rejected', why),
    });
    this.prepareRam();
    this.setStatus('setup');
    return this.listener.address;
  }

  /**
   * Instead of listen(): receive the stream on `channel`, already open (a
   * page that connected to its source's ws URL, a memory pipe). `uri` names
   * it in messages. run() then loads from it.
   */
  receiveFrom(channel: MigrationChannel, uri: string): void {
    if (this.status !== 'none') throw new MigrationError('refused', 'migrate-incoming can only be used once');
    if (this.options.multifd) throw new MigrationError('refused', 'multifd needs listen(): its channels connect separately');
    this.listener = new OpenedChannelListener(uri, channel);
    this.prepareRam();
    this.setStatus('setup');
  }

  /** The channels given, else Node's (loaded once). */
  private channels(): Promise<MigrationChannels> {
    return this.options.channels ? Promise.resolve(this.options.channels) : defaultChannels();
  }

  /**
   * Touch every page of guest RAM before the stream arrives: the first write
   * to a never-used page costs a page fault and zeroing by the kernel, which
   * would otherwise land in the load, perhaps in the downtime. Blocks that
   * can (preparePages) are prepared PREPARE_SLICE_PAGES at a time between
   * turns of the event loop: in one go, a 4 GiB guest blocked the destination
   * for ~10 s on the bench's machine (0.6–3 s of page faults per GiB there),
   * QMP did not answer, and a source that connected meanwhile stopped with a
   * peer timeout. The load may run meanwhile (preparing changes no byte);
   * ramPrepared says when it is done.
   */
  private prepareRam(): void {
    const sliced: RamBlock[] = [];
    for (const block of this.machine.ramBlocks()) {
      // Zero pages are tracked unless multifd's worker threads may write guest RAM behind the blocks' backs.
      if (block.prepareForLoad) {
        block.prepareForLoad({ trackZeroPages: !this.options.multifd });
        if (block.preparePages) sliced.push(block);
        continue;
      }
      for (let page = 0; page < block.pageCount; page++) {
        const view = block.pageForUpdate(page);
        view[0] = view[0]!;
        block.pageUpdated(page);
      }
    }
    this.preparing = this.prepareInSlices(sliced).catch((err: unknown) => log('preparing guest RAM stopped: %s', (err as Error).message));
  }

  private async prepareInSlices(blocks: RamBlock[]): Promise<void> {
    for (const block of blocks) {
      for (let first = 0; first < block.pageCount; first += PREPARE_SLICE_PAGES) {
        // The load is over (completed, failed or cancelled): the guest may run, and nothing is left to prepare for.
        if (this.ramLoadEnded) return;
        block.preparePages!(first, PREPARE_SLICE_PAGES);
        await yieldToEventLoop();
      }
    }
  }

  /**
   * QMP `migrate_cancel` on the destination: stop waiting or receiving; the
   * guest is not started and received disks are discarded. Refused once the
   * source may have been told to give the guest up (held handover: LOADED sent).
   */
  cancel(): void {
    if (this.status !== 'setup' && this.status !== 'active') return;
    if (this.cancelClosed) {
      throw new MigrationError('refused', 'too late to cancel here: the whole state is loaded and the source was told so; the guest starts on its go-ahead, or is dropped if it does not come within x-livemig-peer-timeout-ms');
    }
    this.cancelRequested = true;
    this.abort(new MigrationError('cancelled', 'incoming migration cancelled'));
  }

  private abort(reason: MigrationError): void {
    this.abortReason ??= reason;
    void this.listener?.close().catch(() => {});
    this.channel?.abort(reason);
    this.receiver?.fail(reason);
  }

  /** Accept the source, load, start the guest. Never throws: the result says how it went. */
  async run(): Promise<IncomingResult> {
    if (!this.listener) throw new Error('listen() first');
    this.startedMs = performance.now();
    const watchdog = new PeerWatchdog({
      peer: 'source',
      timeoutMs: () => this.peerTimeoutMs(),
      progress: () => (this.mainReader?.offset ?? 0) + (this.receiver?.stats.bytes ?? 0),
      onStall: (err) => this.abort(err),
    });
    const handover = new DestinationHandover(() => watchdog.start());
    let reader: StreamReader | undefined;
    try {
      const table = new FixedRamBlockTable(this.machine.ramBlocks());
      if (this.options.multifd) {
        this.receiver = (await this.channels()).multifd!.createReceiver({ ...this.options.multifd, table });
        this.multifdStats = this.receiver.stats;
        this.receiver.onError = (err) => this.channel?.abort(err);
      }
      const main = await this.acceptSource(watchdog);
      // loadTimeMs counts from here: the wait for a source (and, since listen(), for RAM to be prepared) is not the load's.
      this.startedMs = performance.now();
      this.channel = main.channel;
      reader = main.reader;
      const input = reader;
      this.setStatus('active');
      const receiver = this.receiver;
      const { registry, ram, manifest, block, globalState } = assembleIncoming(this.machine, {
        table,
        ...(receiver ? { multifdSync: () => receiver.syncMain() } : {}),
        ...(this.options.diskHint ? { diskHint: this.options.diskHint } : {}),
        onDiskProgress: (p) => this.emit('diskProgress', p),
      });
      const output = main.channel.output;
      const postcopy = new DestinationPostcopy(this.machine, ram, this.options.postcopy === true, () => handover.writer);
      this.postcopy = postcopy;
      /** Postcopy with a livemig source: RUN came, the guest waits for the go-ahead. */
      let awaitingGo = false;
      let started = false;
      /** Start the guest unless the source had it paused (L11) or -S. In postcopy (at RUN or the go-ahead) the device state came in the package; RAM follows. */
      const startGuest = (): void => {
        this.cancelClosed = true;
        started = (this.options.autostart ?? true) && (!globalState.received || globalState.state === 'running');
        if (started) {
          this.machine.resume();
          this.emit('resume');
        }
      };
      await watchdog.busy(() =>
        loadVmState(input, registry, {
          // Postcopy: once the guest runs here, a broken stream pauses (the guest waits for its pages) until migrate-recover.
          onStreamBroken: async (err) => {
            if (!postcopy.switched || !this.cancelClosed || this.cancelRequested) return undefined;
            const next = await this.pauseForRecovery(err, watchdog, handover);
            reader = next;
            return next;
          },
          machineName: this.machine.machineName,
          // Never start a blank guest: the RAM section must have listed every block and ended.
          expectVmdesc: () => !postcopy.switched,
          onEof: (eof) => {
            ram.checkComplete(eof.offset);
            if (awaitingGo) throw new StreamError('incomplete-stream', 'EOF before the go-ahead that was to follow POSTCOPY_RUN', { offset: eof.offset });
            postcopy.end(eof.offset);
          },
          onCommand: async (command) => {
            if (command.command === MigCommand.OpenReturnPath) {
              if (!output) throw new StreamError('unsupported-command', 'OPEN_RETURN_PATH on a one-way channel', { offset: command.offset });
              handover.open(new StreamWriter(output, 512));
            } else if (command.command === MigCommand.Ping) {
              if (!handover.writer) throw new StreamError('bad-command', 'PING without a return path', { offset: command.offset });
              const value = new DataView(command.payload.buffer, command.payload.byteOffset, 4).getUint32(0);
              if (value === HANDOVER_GO && awaitingGo) {
                awaitingGo = false;
                startGuest();
              } else {
                await handover.ping(value);
              }
            } else if (command.command === MigCommand.PostcopyAdvise) {
              postcopy.advise(command.payload, command.offset);
            } else if (command.command === MigCommand.PostcopyRamDiscard) {
              postcopy.discard(command.payload, command.offset);
            } else if (command.command === MigCommand.PostcopyListen) {
              postcopy.listen(command.offset);
              this.setStatus('postcopy-active');
            } else if (command.command === MigCommand.RecvBitmap) {
              // Recovery: which pages we have, so the source resends the rest.
              if (this.status !== 'postcopy-recover' || !handover.writer) throw new StreamError('bad-command', 'RECV_BITMAP outside postcopy recovery', { offset: command.offset });
              postcopy.sendReceivedBitmap(handover.writer, parseRecvBitmapCommand(command.payload, command.offset), command.offset);
              await handover.writer.flush();
            } else if (command.command === MigCommand.PostcopyResume) {
              if (this.status !== 'postcopy-recover' || !handover.writer) throw new StreamError('bad-command', 'POSTCOPY_RESUME outside postcopy recovery', { offset: command.offset });
              this.setStatus('postcopy-active');
              writeResumeAck(handover.writer);
              // Requests that went out on the broken link may be lost: ask again.
              postcopy.resendOutstanding();
              await handover.writer.flush();
            } else if (command.command === MigCommand.PostcopyRun) {
              postcopy.run(command.offset);
              if (handover.held) {
                // The device state is loaded: say so, and start the guest at the source's go-ahead (a PING after the package).
                awaitingGo = true;
                await handover.sayLoaded();
              } else {
                startGuest();
              }
            } else {
              throw new StreamError('unsupported-command', `command ${command.name} is not supported`, { offset: command.offset });
            }
          },
        }),
      );
      this.endRamLoad();
      // Disks to receive must have come (listed, or at least written to), flushed before the guest may run.
      for (const image of this.options.disks ?? []) {
        const name = image.device.name;
        if (!manifest.entries.some((e) => e.name === name) && !block.stats.chunks.has(name)) {
          throw new MigrationError('bad-stream', `disk '${name}' was to be received, but the source did not migrate it (migrate with blk=true, or capability block)`);
        }
      }
      await block.flush();
      if (handover.held && !postcopy.switched) {
        // Say LOADED and wait for the go-ahead; from LOADED on, a cancel here could lose the guest.
        this.cancelClosed = true;
        await watchdog.busy(() => handover.awaitGo(input));
      }
      this.throwIfAborted();
      this.cancelClosed = true;
      watchdog.stop();
      for (const image of this.options.disks ?? []) await image.commit();
      if (!postcopy.switched) {
        // The whole stream is in (listeners see RAM as loaded before the guest runs).
        this.emit('loaded');
        startGuest();
      }
      const loadTimeMs = performance.now() - this.startedMs;
      let warning: string | undefined;
      const rp = handover.writer;
      if (rp) {
        writeShut(rp, 0);
        try {
          await rp.close();
          // A livemig source acknowledges our SHUT: then it knows where the guest runs.
          if (handover.held && !(await handover.acknowledged(reader, this.peerTimeoutMs()))) throw new Error('the source did not acknowledge the confirmation');
        } catch (err) {
          warning = `${(err as Error).message}: ${UNCONFIRMED_ADVICE}`;
        }
      }
      await main.channel.close().catch(() => {});
      this.receiver?.close();
      this.setStatus('completed');
      return { status: 'completed', started, loadTimeMs, bytes: reader.offset, ...(warning ? { warning } : {}) };
    } catch (caught) {
      watchdog.stop();
      // A multifd channel's failure, a stall or a cancel is the reason the main channel was aborted.
      const err = explainPeerClosed(this.abortReason ?? MigrationError.from(this.receiver?.error ?? caught));
      this.receiver?.close();
      await this.tellSourceWeFailed(handover.writer);
      this.channel?.abort(err);
      for (const image of this.options.disks ?? []) await image.discard().catch(() => {});
      this.error = err;
      const status = this.cancelRequested ? 'cancelled' : 'failed';
      this.setStatus(status);
      return { status, error: err, started: false, loadTimeMs: performance.now() - this.startedMs, bytes: reader?.offset ?? 0 };
    } finally {
      this.endRamLoad();
      await this.listener.close().catch(() => {});
    }
  }

  /**
   * Postcopy, the stream broke while the guest runs here: pause (the guest
   * waits for missing pages; nothing is dropped) until `migrate-recover`
   * gives a new address and the source connects to it. Returns the reader of
   * the new channel, whose return path replaces the old one.
   */
  private async pauseForRecovery(err: unknown, watchdog: PeerWatchdog, handover: DestinationHandover): Promise<StreamReader> {
    watchdog.stop();
    const reason = this.abortReason ?? MigrationError.from(err, 'peer-closed');
    this.abortReason = undefined;
    this.channel?.abort(reason);
    const missing = this.postcopy?.stats.missingPages ?? 0;
    this.error = new MigrationError(
      'postcopy-paused',
      `${reason.message}; postcopy paused: the guest runs here and waits for ${missing} pages that only the source has; do not quit this destination. ` +
        'Recover: migrate-recover with a new URI here, then migrate with that URI and resume=true on the source',
      { cause: reason },
    );
    this.setStatus('postcopy-paused');
    for (;;) {
      const listener = await new Promise<IncomingListener>((resolve) => (this.recoverWaiter = resolve));
      this.recoverWaiter = undefined;
      let channel: MigrationChannel;
      try {
        channel = await listener.accept();
      } catch {
        continue; // the listener closed before a source came: wait for another migrate-recover
      } finally {
        await listener.close().catch(() => {});
      }
      if (!channel.input || !channel.output) {
        channel.abort(new Error('recovery needs a two-way channel'));
        continue;
      }
      this.channel = channel;
      const reader = new StreamReader(watchSource(channel.input, watchdog));
      this.mainReader = reader;
      handover.reopen(new StreamWriter(channel.output, 512));
      this.error = undefined;
      this.setStatus('postcopy-recover');
      watchdog.start();
      return reader;
    }
  }

  /**
   * QMP `migrate-recover` (postcopy paused only): listen on `uri` for the
   * source's new channel; resolves with the address.
   */
  async recover(uri: string): Promise<string> {
    const waiter = this.recoverWaiter;
    if (this.status !== 'postcopy-paused' || !waiter) throw new MigrationError('refused', 'Migrate recover can only be run when postcopy is paused.');
    const listener = await (await this.channels()).listen(uri, { multiChannel: false, ...(this.options.tls ? { tls: this.options.tls } : {}), onRejected: (why) => this.emit('rejected', why) });
    if (this.recoverWaiter !== waiter) {
      await listener.close().catch(() => {});
      throw new MigrationError('refused', 'Migrate recover can only be run when postcopy is paused.');
    }
    waiter(listener);
    return listener.address;
  }

  /** The stream is loaded (or failed): what prepareRam() noted about zero pages no longer holds once the guest runs. */
  private endRamLoad(): void {
    this.ramLoadEnded = true;
    for (const block of this.machine.ramBlocks()) block.endLoad?.();
  }

  private throwIfAborted(): void {
    if (this.abortReason) throw this.abortReason;
  }

  /** SHUT 1, then keep reading (dropping) for a moment: closing with unread data would reset the connection and could lose the SHUT. */
  private async tellSourceWeFailed(returnPath: StreamWriter | undefined): Promise<void> {
    if (!returnPath || !this.channel?.input || this.abortReason) return;
    try {
      writeShut(returnPath, 1);
      await returnPath.close();
      const input = this.channel.input;
      const drain = (async () => {
        while ((await input.read()) !== null);
      })().catch(() => {});
      await Promise.race([drain, new Promise((r) => unrefTimer(setTimeout(r, 1000)))]);
    } catch {
      /* the source may be gone already */
    }
  }

  /**
   * Wait for the source's main stream. Every connection is told apart by its
   * first bytes, concurrently: the main stream's magic and version, or (with
   * multifd) a multifd channel's magic; anything else — a port scan, a stray
   * client, garbage, a connection silent for the peer timeout — is logged
   * (`rejected`) and dropped, and the wait goes on. Multifd channels go to the
   * receiver as they come, in any order; once the main stream and every
   * channel are in, the listener closes.
   */
  private async acceptSource(watchdog: PeerWatchdog): Promise<{ channel: MigrationChannel; reader: StreamReader }> {
    const listener = this.listener!;
    if (listener.oneChannel) {
      // One channel, there from the start: the loader checks its header.
      const channel = await listener.accept();
      const reader = new StreamReader(watchSource(channel.input!, watchdog));
      this.mainReader = reader;
      return { channel, reader };
    }
    return this.acceptSocket(watchdog);
  }

  private acceptSocket(watchdog: PeerWatchdog): Promise<{ channel: MigrationChannel; reader: StreamReader }> {
    const listener = this.listener!;
    const receiver = this.receiver;
    const wantedChannels = this.options.multifd?.channels ?? 0;
    let multifdCount = 0;
    let connections = 0;
    let main: { channel: MigrationChannel; reader: StreamReader } | undefined;
    return new Promise((resolve, reject) => {
      const maybeStopListening = (): void => {
        if (main && multifdCount >= wantedChannels) void listener.close().catch(() => {});
      };
      const drop = (why: string, ch: MigrationChannel): void => {
        ch.abort(new Error(why));
        this.emit('rejected', why);
      };
      const classify = async (ch: MigrationChannel): Promise<void> => {
        const n = ++connections;
        const what = `connection ${n} to ${listener.address}`;
        // Reads are watched (liveness) only once this turns out to be the source's stream.
        let isMain = false;
        const reader = new StreamReader(watchSource(ch.input!, watchdog, () => isMain));
        const timeoutMs = this.peerTimeoutMs();
        let timer: ReturnType<typeof setTimeout> | undefined;
        let head: Uint8Array;
        try {
          head = await Promise.race([
            reader.peek(8),
            new Promise<never>((_, fail) => {
              timer = setTimeout(() => fail(new Error(`sent nothing valid for ${timeoutMs} ms`)), timeoutMs);
            }),
          ]);
        } catch (err) {
          // Node's TLS client checks the server's certificate after the handshake and just closes.
          const hint = this.options.tls ? ' (after the TLS handshake: the source may have refused our certificate, e.g. the name it carries; the source says why)' : '';
          drop(`${what} dropped: ${(err as Error).message}${hint}`, ch);
          return;
        } finally {
          clearTimeout(timer);
        }
        const view = new DataView(head.buffer, head.byteOffset, head.length);
        const magic = head.length >= 4 ? view.getUint32(0) : -1;
        if (magic === QEMU_VM_FILE_MAGIC && head.length === 8 && view.getUint32(4) === QEMU_VM_FILE_VERSION && !main && !this.abortReason) {
          isMain = true;
          main = { channel: ch, reader };
          this.mainReader = reader;
          resolve(main);
          maybeStopListening();
          return;
        }
        if (magic === MULTIFD_MAGIC && receiver && !this.abortReason) {
          multifdCount++;
          // A worker thread takes the connection over where it can, with the bytes already read.
          const detached = receiver.wantsWorkers ? ch.detach?.() : undefined;
          if (detached) {
            detached.received.unshift(...reader.takeBuffered());
            receiver.addDetachedChannel(detached);
          } else {
            receiver.addChannel(reader, () => ch.abort(new Error('multifd channel closed')));
          }
          maybeStopListening();
          return;
        }
        const hex = Array.from(head, (b) => b.toString(16).padStart(2, '0')).join('') || 'none';
        const kind =
          magic === QEMU_VM_FILE_MAGIC ? (main ? 'a second migration stream' : `a migration stream of an unsupported version (first bytes ${hex})`)
          : magic === MULTIFD_MAGIC ? 'a multifd channel, but multifd is off here (set capability multifd before migrate-incoming)'
          : isTlsClientHello(head) ? 'a TLS handshake, but this destination has no tls-creds (the source has; set tls-creds here too)'
          : `not a migration stream (first bytes ${hex})`;
        drop(`${what} dropped: ${kind}`, ch);
      };
      void (async () => {
        for (;;) {
          let ch: MigrationChannel;
          try {
            ch = await listener.accept();
          } catch (err) {
            // The listener closed: because all is in, or cancel/failure before the stream came.
            if (!main) reject(this.abortReason ?? MigrationError.from(err, 'transport'));
            return;
          }
          void classify(ch).catch((err: Error) => drop(`a connection to ${listener.address} dropped: ${err.message}`, ch));
        }
      })();
    });
  }
}

/** The stream stopped short: most often the source cancelled (or failed) and closed it. Say so, not only which byte was missing. */
function explainPeerClosed(err: MigrationError): MigrationError {
  if (err.code !== 'peer-closed' || !(err.cause instanceof UnexpectedEndError)) return err;
  return new MigrationError('peer-closed', `the source closed the stream before its end (it cancelled or failed there; the guest stays on the source): ${err.message}`, { cause: err });
}
