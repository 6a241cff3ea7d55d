/**
 * The destination side: QEMU's process_incoming_migration. Accept a channel,
 * load the stream into a paused machine, and start the guest only when the
 * whole stream loaded; then confirm to the source over the return path
 * (SHUT 0). On any failure the guest is never started and the source is told
 * (SHUT 1) when it can be.
 */
import { EventEmitter } from 'node:events';
import { BLOCK_SECTION_IDSTR, BLOCK_SECTION_VERSION, BlockLoadHandler, DISK_MANIFEST_IDSTR, DISK_MANIFEST_VERSION, DiskManifestLoadHandler, type IncomingDiskImage } from '../block/index.js';
import type { Machine } from '../machine/machine.js';
import { FixedRamBlockTable, RAM_IDSTR, RAM_SECTION_VERSION, RamLoadHandler } from '../ram/index.js';
import { createGlobalState, globalStateVmsd, loadVmState, SaveStateRegistry } from '../savevm/index.js';
import { MULTIFD_MAGIC, MULTIFD_PROTOCOL_ERROR, MultifdReceiver, type MultifdCompression, type MultifdReceiverStats } from '../ram/multifd/index.js';
import { listenIncoming, parseMigrationUri, type IncomingListener, type MigrationChannel } from '../transport/index.js';
import { MigCommand, QEMU_VM_FILE_MAGIC, StreamError, StreamReader, StreamWriter, writePong, writeShut } from '../wire/index.js';

export type IncomingStatus = 'none' | 'setup' | 'active' | 'completed' | 'failed';

export interface IncomingResult {
  status: 'completed' | 'failed';
  error?: Error;
  /** Whether the guest was started (false when the source had it paused, or on failure). */
  started: boolean;
  /** ms from the first byte to the guest running. */
  loadTimeMs: number;
  bytes: number;
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

export class IncomingMigration extends EventEmitter<{ status: [IncomingStatus]; loaded: []; resume: []; diskProgress: [number] }> {
  status: IncomingStatus = 'none';
  /** Multifd receive counters of the current migration (which channels ran in worker threads, packets, pages). */
  multifdStats: MultifdReceiverStats | undefined;
  private listener: IncomingListener | undefined;

  constructor(
    private readonly machine: Machine,
    private readonly options: IncomingOptions = {},
  ) {
    super();
  }

  private setStatus(status: IncomingStatus): void {
    this.status = status;
    this.emit('status', status);
  }

  /** Listen on `uri`; resolves with the actual address (tcp port 0 becomes a real port). */
  async listen(uri: string): Promise<string> {
    if (this.status !== 'none') throw new Error('migrate-incoming can only be used once');
    const multifd = this.options.multifd !== undefined;
    if (multifd && !['tcp', 'unix'].includes(parseMigrationUri(uri).kind)) throw new Error(MULTIFD_PROTOCOL_ERROR);
    this.listener = await listenIncoming(uri, { multiChannel: multifd });
    this.prepareRam();
    this.setStatus('setup');
    return this.listener.address;
  }

  /**
   * Touch every page of guest RAM before the stream arrives: the first write
   * to a never-used page costs a page fault and zeroing by the kernel, which
   * would otherwise land in the downtime.
   */
  private prepareRam(): void {
    for (const block of this.machine.ramBlocks()) {
      for (let page = 0; page < block.pageCount; page++) {
        const view = block.pageForUpdate(page);
        view[0] = view[0]!;
        block.pageUpdated(page);
      }
    }
  }

  /** Accept the source, load, start the guest. Never throws: the result says how it went. */
  async run(): Promise<IncomingResult> {
    if (!this.listener) throw new Error('listen() first');
    const started = performance.now();
    let channel: MigrationChannel | undefined;
    let reader: StreamReader | undefined;
    let returnPath: StreamWriter | undefined;
    let receiver: MultifdReceiver | undefined;
    try {
      const table = new FixedRamBlockTable(this.machine.ramBlocks());
      if (this.options.multifd) {
        receiver = new MultifdReceiver({ ...this.options.multifd, table });
        this.multifdStats = receiver.stats;
        receiver.onError = (err) => channel?.abort(err);
        ({ channel, reader } = await this.acceptMultifd(receiver, this.options.multifd.channels));
      } else {
        channel = await this.listener.accept();
        reader = new StreamReader(channel.input!);
      }
      this.setStatus('active');
      const registry = new SaveStateRegistry();
      const ram = new RamLoadHandler(table, receiver ? { multifdSync: () => receiver!.syncMain() } : {});
      const localDisks = new Map((this.machine.blockDevices?.() ?? []).map((d) => [d.name, d]));
      const manifest = new DiskManifestLoadHandler(localDisks, this.options.diskHint);
      const block = new BlockLoadHandler(localDisks, { onProgress: (p) => this.emit('diskProgress', p) });
      registry.register({ idstr: DISK_MANIFEST_IDSTR, version: DISK_MANIFEST_VERSION, handlers: manifest });
      registry.register({ idstr: BLOCK_SECTION_IDSTR, version: BLOCK_SECTION_VERSION, handlers: block });
      registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram });
      this.machine.registerDevices(registry);
      const globalState = createGlobalState();
      registry.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: globalState });
      const output = channel.output;
      await loadVmState(reader, registry, {
        machineName: this.machine.machineName,
        onCommand: async (command) => {
          if (command.command === MigCommand.OpenReturnPath) {
            if (!output) throw new StreamError('unsupported-command', 'OPEN_RETURN_PATH on a one-way channel', { offset: command.offset });
            returnPath ??= new StreamWriter(output, 512);
          } else if (command.command === MigCommand.Ping) {
            if (!returnPath) throw new StreamError('bad-command', 'PING without a return path', { offset: command.offset });
            writePong(returnPath, new DataView(command.payload.buffer, command.payload.byteOffset, 4).getUint32(0));
            await returnPath.flush();
          } else {
            throw new StreamError('unsupported-command', `command ${command.name} is not supported`, { offset: command.offset });
          }
        },
      });
      // Disks to receive must have come (listed, or at least written to), then
      // they are flushed and renamed into place before the guest may run.
      for (const image of this.options.disks ?? []) {
        const name = image.device.name;
        if (!manifest.entries.some((e) => e.name === name) && !block.stats.chunks.has(name)) {
          throw new Error(`disk '${name}' was to be received, but the source did not migrate it (migrate with blk=true, or capability block)`);
        }
      }
      await block.flush();
      for (const image of this.options.disks ?? []) await image.commit();
      // The whole stream is in: start the guest unless the source had it paused (L11).
      const start = (this.options.autostart ?? true) && (!globalState.received || globalState.state === 'running');
      this.emit('loaded'); // synchronous: listeners see the RAM exactly as loaded
      if (start) {
        this.machine.resume();
        this.emit('resume');
      }
      const loadTimeMs = performance.now() - started;
      if (returnPath) {
        writeShut(returnPath, 0);
        await returnPath.close().catch(() => {});
      }
      await channel.close().catch(() => {});
      receiver?.close();
      this.setStatus('completed');
      return { status: 'completed', started: start, loadTimeMs, bytes: reader.offset };
    } catch (caught) {
      // A multifd channel's failure is the reason the main channel was aborted.
      const err = receiver?.error ?? caught;
      receiver?.close();
      if (returnPath) {
        try {
          writeShut(returnPath, 1);
          await returnPath.close();
          // Keep reading (and dropping) what the source still sends for a moment:
          // closing with unread data would reset the connection and could lose
          // the SHUT before the source reads it.
          const input = channel!.input!;
          const drain = (async () => {
            while ((await input.read()) !== null);
          })().catch(() => {});
          await Promise.race([drain, new Promise((r) => setTimeout(r, 1000).unref())]);
        } catch {
          /* the source may be gone already */
        }
      }
      channel?.abort(err);
      for (const image of this.options.disks ?? []) await image.discard().catch(() => {});
      this.setStatus('failed');
      return { status: 'failed', error: err as Error, started: false, loadTimeMs: performance.now() - started, bytes: reader?.offset ?? 0 };
    } finally {
      await this.listener.close().catch(() => {});
    }
  }

  /**
   * Multifd: connections are told apart by their first four bytes (the main
   * stream's magic or multifd's), so the order in which they arrive does not
   * matter; a QEMU 7.2 source connects its main channel first, as 7.2's
   * destination expects. Multifd channels go to the receiver as they come;
   * this returns once the main channel is found, and keeps accepting the
   * rest in the background until the listener closes.
   */
  private async acceptMultifd(receiver: MultifdReceiver, channels: number): Promise<{ channel: MigrationChannel; reader: StreamReader }> {
    const listener = this.listener!;
    let main: { channel: MigrationChannel; reader: StreamReader } | undefined;
    let multifdCount = 0;
    let connections = 0;
    const classify = async (ch: MigrationChannel): Promise<'main' | 'multifd'> => {
      const n = connections++;
      const r = new StreamReader(ch.input!);
      const head = await r.peek(4);
      const magic = head.length === 4 ? new DataView(head.buffer, head.byteOffset, 4).getUint32(0) : -1;
      if (magic === QEMU_VM_FILE_MAGIC && !main) {
        main = { channel: ch, reader: r };
        return 'main';
      }
      if (magic === MULTIFD_MAGIC || (main && magic !== QEMU_VM_FILE_MAGIC)) {
        // Anything after the main channel is a multifd channel (7.2); the receiver checks its init packet.
        multifdCount++;
        // A worker thread takes the connection over where it can, with the bytes already read.
        const detached = receiver.wantsWorkers ? ch.detach?.() : undefined;
        if (detached) {
          detached.received.unshift(...r.takeBuffered());
          receiver.addDetachedChannel(detached);
        } else {
          receiver.addChannel(r, () => ch.abort(new Error('multifd channel closed')));
        }
        return 'multifd';
      }
      ch.abort(new Error('unexpected connection'));
      const what = magic === QEMU_VM_FILE_MAGIC ? 'a second migration stream' : `neither a migration stream nor a multifd channel (first bytes ${Buffer.from(head).toString('hex') || 'none'})`;
      throw new StreamError('bad-magic', `connection ${n} to ${listener.address} is ${what}`, { offset: 0 });
    };
    while (!main) await classify(await listener.accept());
    void (async () => {
      while (multifdCount < channels) await classify(await listener.accept());
    })().catch((err: Error) => {
      if (this.status === 'active' || this.status === 'setup') receiver.fail(err);
    });
    return main;
  }
}
