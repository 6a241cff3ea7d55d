/**
 * One multifd receive channel in a worker thread: it adopts the connection's
 * descriptor (detached by the main thread after it read the first bytes to
 * tell the connection apart), then runs the same loop as the main thread
 * would (recv-channel.ts), writing pages straight into guest RAM, a
 * SharedArrayBuffer. The main thread keeps the SYNC rendezvous with the main
 * channel and the failure handling; this thread does the socket reads and
 * the copying, so a second core is used.
 *
 * The descriptor is turned back into a channel by the module the socket names
 * (DetachedSocket.adopter, set by the transport that detached it): this core
 * module does not import the transports.
 *
 * A thread may be started before its connection arrives (the receiver starts
 * them when it is created, so a thread's start-up is not paid while the
 * source already sends): it then waits for { type: 'adopt', socket }.
 *
 * Messages in:  { type: 'adopt', socket } (threads started ahead),
 *               { type: 'release' } after a SYNC, { type: 'close' }.
 * Messages out: { type: 'init', id }, { type: 'sync', counters },
 *               { type: 'ended', offset, counters } at the channel's clean end,
 *               { type: 'error', channel, offset, reason }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { StreamReader, type AdoptDetachedSocket, type AdoptDetachedSocketReads, type DetachedSocket, type MigrationChannel, type PlacedReadSocket } from '../../wire/index.js';
import { DenseRamBlock } from '../block.js';
import { FixedRamBlockTable } from '../block-table.js';
import type { MultifdCompression } from './codec.js';
import { asMultifdError, receiveMultifdChannel, type RecvChannelCounters } from './recv-channel.js';
import { DirectMultifdReceiver } from './recv-direct.js';

export interface RecvWorkerData {
  /** The connection; absent for a thread started ahead of it, which gets it in an 'adopt' message. */
  socket?: DetachedSocket;
  uuid: Uint8Array;
  channels: number;
  compression: MultifdCompression;
  /** Guest RAM: every block's SharedArrayBuffer, its whole memory and its used length. */
  blocks: Array<{ idstr: string; buffer: SharedArrayBuffer; byteOffset: number; lengthBytes: number; usedBytes: number }>;
  /** Optional module that registers compression codecs (loaded first). */
  codecModule?: string;
}

export type RecvWorkerMessage =
  | { type: 'init'; id: number }
  | { type: 'sync'; counters: RecvChannelCounters }
  | { type: 'ended'; offset: number; counters: RecvChannelCounters }
  | { type: 'error'; channel: number | undefined; offset: number; reason: string };

/** 16 × 256 KiB per channel: large reads, no allocation per read (halves the receive cost, measured). */
const RECV_RING = { chunkBytes: 256 * 1024, chunks: 16 };

const data = workerData as RecvWorkerData;
const port = parentPort!;
const table = new FixedRamBlockTable(data.blocks.map((b) => new DenseRamBlock(b.idstr, new Uint8Array(b.buffer, b.byteOffset, b.lengthBytes), { lengthBytes: b.usedBytes })));
let stopped = false;
let release: (() => void) | undefined;
let channel: MigrationChannel | undefined;
/** The plain channel's socket (receiveDirect). */
let placed: PlacedReadSocket | undefined;
const post = (message: RecvWorkerMessage): void => port.postMessage(message);

let adopt: ((socket: DetachedSocket) => void) | undefined;
const adopted = data.socket ? Promise.resolve(data.socket) : new Promise<DetachedSocket>((resolve) => (adopt = resolve));

port.on('message', (message: { type: 'release' | 'close' } | { type: 'adopt'; socket: DetachedSocket }) => {
  if (message.type === 'adopt') {
    adopt?.(message.socket);
  } else if (message.type === 'release') {
    const go = release;
    release = undefined;
    go?.();
  } else {
    stopped = true;
    channel?.abort(new Error('multifd receiver closed'));
    placed?.close(new Error('multifd receiver closed'));
    release?.();
    port.close();
  }
});

async function main(): Promise<void> {
  let reader: StreamReader | undefined;
  try {
    if (data.codecModule) await import(data.codecModule);
    const socket = await adopted;
    if (stopped) return;
    // Reads into a ring of reused buffers: the loop below copies every page out
    // (or decodes a payload) before it reads on, so no chunk is kept for long.
    const adopter = (await import(socket.adopter)) as { adoptDetachedSocket: AdoptDetachedSocket; adoptDetachedSocketReads?: AdoptDetachedSocketReads };
    if (data.compression === 'none' && typeof adopter.adoptDetachedSocketReads === 'function') {
      await receiveDirect(socket, adopter.adoptDetachedSocketReads);
      return;
    }
    const { adoptDetachedSocket } = adopter;
    if (typeof adoptDetachedSocket !== 'function') throw new Error(`${socket.adopter} does not export adoptDetachedSocket`);
    channel = adoptDetachedSocket(socket, { ring: RECV_RING });
    reader = new StreamReader(channel.input!);
    const counters: RecvChannelCounters = { packets: 0, pages: 0, bytes: 0 };
    await receiveMultifdChannel(reader, {
      uuid: data.uuid,
      channels: data.channels,
      compression: data.compression,
      table,
      counters,
      onInit: (id) => post({ type: 'init', id }),
      onSync: () =>
        new Promise<void>((resolve) => {
          release = resolve;
          post({ type: 'sync', counters: { ...counters } });
        }),
      stopped: () => stopped,
    });
    if (!stopped) post({ type: 'ended', offset: reader.offset, counters });
    await channel.close().catch(() => {});
  } catch (err) {
    const e = asMultifdError(err, undefined, reader?.offset ?? 0);
    if (!stopped) post({ type: 'error', channel: e.channel, offset: e.offset, reason: e.reason });
    channel?.abort(e);
  } finally {
    port.close();
  }
}

/**
 * A plain channel: reads land in guest RAM in place (DirectMultifdReceiver
 * says where each read goes), so each page byte is copied once, by the
 * kernel. Reading stops at a SYNC until the main thread's release.
 */
async function receiveDirect(socket: DetachedSocket, adoptReads: AdoptDetachedSocketReads): Promise<void> {
  const counters: RecvChannelCounters = { packets: 0, pages: 0, bytes: 0 };
  const rx = new DirectMultifdReceiver({
    uuid: data.uuid,
    channels: data.channels,
    table,
    counters,
    onInit: (id) => post({ type: 'init', id }),
    onSync: () => {
      release = () => {
        rx.release();
        pump();
      };
      post({ type: 'sync', counters: { ...counters } });
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
    placed?.close(e);
    settle(e);
  };
  // Early bytes first, then the socket's reads (started, or resumed after a SYNC).
  const pump = (): void => {
    if (stopped) return settle();
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
    if (placed) {
      placed.resume();
      return;
    }
    placed = adoptReads(socket, {
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
      (err: unknown) => fail(stopped ? err : (rx.failure ?? err)),
    );
  };
  pump();
  try {
    await done;
  } catch (err) {
    const e = asMultifdError(err, rx.id < 0 ? undefined : rx.id, rx.offset);
    if (!stopped) post({ type: 'error', channel: e.channel, offset: e.offset, reason: e.reason });
    return;
  } finally {
    // Also when it failed or stopped before its socket was made (on the bytes read before the hand-over): the descriptor is this thread's to close.
    placed ??= adoptReads(socket, { buffer: () => rx.next(), callback: () => false });
    placed.close();
  }
  if (!stopped) post({ type: 'ended', offset: rx.offset, counters });
}

void main();
