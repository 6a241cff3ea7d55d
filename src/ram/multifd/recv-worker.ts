/**
 * Multifd receive channels in a worker thread: the thread adopts each
 * connection's descriptor (detached by the main thread after it read the
 * first bytes to tell the connection apart) and receives it, writing pages
 * straight into guest RAM, a SharedArrayBuffer. The main thread keeps the
 * SYNC rendezvous with the main channel and the failure handling; threads do
 * the socket reads, so other cores are used. A thread serves several channels
 * (the receiver starts no more threads than cores: more threads than cores
 * only compete for them), each by its own key.
 *
 * The descriptor is turned back into a channel by the module the socket names
 * (DetachedSocket.adopter, set by the transport that detached it): this core
 * module does not import the transports.
 *
 * Threads are started before their connections arrive (the receiver starts
 * them when it is created, so a thread's start-up is not paid while the
 * source already sends); each connection comes as { type: 'adopt', key, socket }.
 * The thread ends once `workerData.channels` channels have ended or failed,
 * or on 'close' without a key.
 *
 * Messages in:  { type: 'adopt', key, socket }, { type: 'release', key } after
 *               a SYNC, { type: 'close', key? } (one channel, or all of them).
 * Messages out: { type: 'init', key, id }, { type: 'sync', key, counters },
 *               { type: 'ended', key, offset, counters } at a channel's clean end,
 *               { type: 'error', key, channel, offset, reason }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { StreamReader, type AdoptDetachedSocket, type AdoptDetachedSocketReads, type DetachedSocket, type MigrationChannel, type PlacedReadSocket } from '../../wire/index.js';
import { DenseRamBlock } from '../block.js';
import { FixedRamBlockTable } from '../block-table.js';
import type { MultifdCompression } from './codec.js';
import { asMultifdError, receiveMultifdChannel, type RecvChannelCounters } from './recv-channel.js';
import { DirectMultifdReceiver, rehearseDirectReceive } from './recv-direct.js';

export interface RecvWorkerData {
  uuid: Uint8Array;
  /** Channels of the whole migration (init packets name ids below it). */
  channels: number;
  /** Channels this thread will be given: it ends once they have all ended or failed. */
  threadChannels: number;
  compression: MultifdCompression;
  /** Guest RAM: every block's SharedArrayBuffer, its whole memory and its used length. */
  blocks: Array<{ idstr: string; buffer: SharedArrayBuffer; byteOffset: number; lengthBytes: number; usedBytes: number }>;
  /** Optional module that registers compression codecs (loaded first). */
  codecModule?: string;
  /** Modules that will adopt sockets here (DetachedSocket.adopter), loaded at start (MultifdReceiverOptions.adopters). */
  adopters?: string[];
}

export type RecvWorkerMessage =
  | { type: 'init'; key: number; id: number }
  | { type: 'sync'; key: number; counters: RecvChannelCounters }
  | { type: 'ended'; key: number; offset: number; counters: RecvChannelCounters }
  | { type: 'error'; key: number; channel: number | undefined; offset: number; reason: string };

export type RecvWorkerCommand = { type: 'adopt'; key: number; socket: DetachedSocket } | { type: 'release'; key: number } | { type: 'close'; key?: number };

/** 16 × 256 KiB per channel: large reads, no allocation per read (halves the receive cost, measured). */
const RECV_RING = { chunkBytes: 256 * 1024, chunks: 16 };

const data = workerData as RecvWorkerData;
const port = parentPort!;
const table = new FixedRamBlockTable(data.blocks.map((b) => new DenseRamBlock(b.idstr, new Uint8Array(b.buffer, b.byteOffset, b.lengthBytes), { lengthBytes: b.usedBytes })));
const post = (message: RecvWorkerMessage): void => port.postMessage(message);

/** One channel's state in this thread. */
class Slot {
  stopped = false;
  release: (() => void) | undefined;
  channel: MigrationChannel | undefined;
  /** The plain channel's socket (receiveDirect). */
  placed: PlacedReadSocket | undefined;
  constructor(readonly key: number) {}

  stop(): void {
    this.stopped = true;
    this.channel?.abort(new Error('multifd receiver closed'));
    this.placed?.close(new Error('multifd receiver closed'));
    const go = this.release;
    this.release = undefined;
    go?.();
  }
}

const slots = new Map<number, Slot>();
let finished = 0;
let closing = false;

function finish(): void {
  if (++finished >= data.threadChannels) port.close();
}

port.on('message', (message: RecvWorkerCommand) => {
  if (message.type === 'adopt') {
    const slot = new Slot(message.key);
    slots.set(message.key, slot);
    if (closing) slot.stopped = true;
    void receive(slot, message.socket).finally(() => {
      slots.delete(slot.key);
      finish();
    });
  } else if (message.type === 'release') {
    const slot = slots.get(message.key);
    const go = slot?.release;
    if (slot) slot.release = undefined;
    go?.();
  } else if (message.key !== undefined) {
    slots.get(message.key)?.stop();
  } else {
    closing = true;
    for (const slot of slots.values()) slot.stop();
    port.close();
  }
});

// Load what adopting a socket needs now, while no source sends (receive() awaits the same modules; a load that fails
// fails there, with its channel).
for (const adopter of data.adopters ?? []) import(adopter).catch(() => {});
// And get the plain channel's per-packet code compiled in this fresh isolate before the first packet (an 'adopt'
// meanwhile waits). Compressed channels take the pull loop (recv-channel.ts), which this does not rehearse.
if (data.compression === 'none') rehearseDirectReceive();

async function receive(slot: Slot, socket: DetachedSocket): Promise<void> {
  const key = slot.key;
  let reader: StreamReader | undefined;
  try {
    if (data.codecModule) await import(data.codecModule);
    const adopter = (await import(socket.adopter)) as { adoptDetachedSocket: AdoptDetachedSocket; adoptDetachedSocketReads?: AdoptDetachedSocketReads };
    if (slot.stopped) {
      // Closed before it began: the descriptor is this thread's to close.
      adopter.adoptDetachedSocket(socket).abort(new Error('multifd receiver closed'));
      return;
    }
    if (data.compression === 'none' && typeof adopter.adoptDetachedSocketReads === 'function') {
      await receiveDirect(slot, socket, adopter.adoptDetachedSocketReads);
      return;
    }
    // Reads into a ring of reused buffers: the loop below copies every page out
    // (or decodes a payload) before it reads on, so no chunk is kept for long.
    const { adoptDetachedSocket } = adopter;
    if (typeof adoptDetachedSocket !== 'function') throw new Error(`${socket.adopter} does not export adoptDetachedSocket`);
    slot.channel = adoptDetachedSocket(socket, { ring: RECV_RING });
    reader = new StreamReader(slot.channel.input!);
    const counters: RecvChannelCounters = { packets: 0, pages: 0, bytes: 0 };
    await receiveMultifdChannel(reader, {
      uuid: data.uuid,
      channels: data.channels,
      compression: data.compression,
      table,
      counters,
      onInit: (id) => post({ type: 'init', key, id }),
      onSync: () =>
        new Promise<void>((resolve) => {
          slot.release = resolve;
          post({ type: 'sync', key, counters: { ...counters } });
        }),
      stopped: () => slot.stopped,
    });
    if (!slot.stopped) post({ type: 'ended', key, offset: reader.offset, counters });
    await slot.channel.close().catch(() => {});
  } catch (err) {
    const e = asMultifdError(err, undefined, reader?.offset ?? 0);
    if (!slot.stopped) post({ type: 'error', key, channel: e.channel, offset: e.offset, reason: e.reason });
    slot.channel?.abort(e);
  }
}

/**
 * A plain channel: reads land in guest RAM in place (DirectMultifdReceiver
 * says where each read goes), so each page byte is copied once, by the
 * kernel. Reading stops at a SYNC until the main thread's release.
 */
async function receiveDirect(slot: Slot, socket: DetachedSocket, adoptReads: AdoptDetachedSocketReads): Promise<void> {
  const key = slot.key;
  const counters: RecvChannelCounters = { packets: 0, pages: 0, bytes: 0 };
  const rx = new DirectMultifdReceiver({
    uuid: data.uuid,
    channels: data.channels,
    table,
    counters,
    onInit: (id) => post({ type: 'init', key, id }),
    onSync: () => {
      slot.release = () => {
        rx.release();
        pump();
      };
      post({ type: 'sync', key, counters: { ...counters } });
    },
  });
  // The bytes read before the hand-over go first, copied in.
  const early = socket.received.filter((c) => c.length > 0);
  let settle!: (err?: unknown) => void;
  const done = new Promise<void>((resolve, reject) => {
    let settled = false;
    settle = (err) => {
      if (settled) return;
      settled = true;
      if (err === undefined) resolve();
      else reject(err);
    };
  });
  const fail = (err: unknown): void => {
    const e = asMultifdError(err, rx.id < 0 ? undefined : rx.id, rx.offset);
    slot.placed?.close(e);
    settle(e);
  };
  // Early bytes first, then the socket's reads (started, or resumed after a SYNC).
  const pump = (): void => {
    if (slot.stopped) return settle();
    try {
      while (early.length > 0 && !rx.atSync) {
        const taken = rx.feed(early[0]!);
        if (taken === early[0]!.length) early.shift();
        else early[0] = early[0]!.subarray(taken);
      }
    } catch (err) {
      return fail(err);
    }
    if (rx.atSync || early.length > 0) return;
    if (slot.placed) {
      slot.placed.resume();
      return;
    }
    const placed = adoptReads(socket, {
      buffer: () => rx.next(),
      callback: (n) => {
        try {
          return rx.filled(n);
        } catch (err) {
          fail(err);
          return false;
        }
      },
    });
    placed.ended.then(
      () => {
        try {
          rx.end();
          settle();
        } catch (err) {
          fail(err);
        }
      },
      (err: unknown) => fail(slot.stopped ? err : (rx.failure ?? err)),
    );
    slot.placed = placed;
  };
  pump();
  try {
    await done;
  } catch (err) {
    const e = asMultifdError(err, rx.id < 0 ? undefined : rx.id, rx.offset);
    if (!slot.stopped) post({ type: 'error', key, channel: e.channel, offset: e.offset, reason: e.reason });
    return;
  } finally {
    // Also when it failed or stopped before its socket was made (on the bytes read before the hand-over): the descriptor is this thread's to close.
    slot.placed ??= adoptReads(socket, { buffer: () => rx.next(), callback: () => false });
    slot.placed.close();
  }
  if (!slot.stopped) post({ type: 'ended', key, offset: rx.offset, counters });
}

