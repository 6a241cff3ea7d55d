/**
 * MigrationChannel implementations over Node sockets, files and processes
 * (the interface itself is src/wire/channel.ts).
 */
import { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { ChannelError, type AdoptDetachedSocket, type AdoptDetachedSocketReads, type ByteSink, type ByteSource, type DetachedSocket, type MigrationChannel, type PlacedReads, type PlacedReadSocket } from '../wire/index.js';
import { asChannelError } from './errors.js';
import { GuardedSink, GuardedSource, NodeReadableSource, NodeWritableSink, releaseRingAfter, ringReads, type RingLink, type RingReads } from './stream-io.js';
import type { TransportKind } from './uri.js';

// The interfaces live in src/wire/channel.ts, where the core may see them; re-exported here for existing importers.
export type { MigrationChannel, DetachedSocket } from '../wire/index.js';

export interface ChannelParts {
  uri: string;
  kind: TransportKind;
  input: ByteSource | null;
  output: ByteSink | null;
  supportsReturnPath: boolean;
  /** Aborted by abort(); the input and output watch its signal. */
  controller: AbortController;
  closed: Promise<void>;
  /** Release what is left after close() closed input and output; never throws. */
  release(): Promise<void>;
  /** Immediate teardown, after the controller was aborted. */
  destroy(): void;
  detach?(): DetachedSocket | undefined;
}

export class Channel implements MigrationChannel {
  readonly uri: string;
  readonly kind: TransportKind;
  readonly input: ByteSource | null;
  readonly output: ByteSink | null;
  readonly supportsReturnPath: boolean;
  readonly closed: Promise<void>;
  private closing: Promise<void> | undefined;

  constructor(private readonly parts: ChannelParts) {
    ({ uri: this.uri, kind: this.kind, input: this.input, output: this.output } = parts);
    this.supportsReturnPath = parts.supportsReturnPath;
    this.closed = parts.closed;
    this.closed.catch(() => {});
  }

  close(): Promise<void> {
    this.closing ??= this.finish();
    return this.closing;
  }

  private async finish(): Promise<void> {
    let failure: unknown;
    if (!this.parts.controller.signal.aborted) {
      try {
        await this.output?.close();
      } catch (err) {
        failure = err;
      }
      await this.input?.close().catch(() => {});
    }
    await this.parts.release();
    // After abort() the caller already knows; closing is then only cleanup.
    if (failure !== undefined && !this.parts.controller.signal.aborted) throw failure;
  }

  abort(reason?: unknown): void {
    const { controller, uri } = this.parts;
    if (!controller.signal.aborted) {
      const why = reason === undefined ? 'aborted' : asChannelError(reason, 'aborted').message;
      controller.abort(reason instanceof ChannelError ? reason : new ChannelError(`${uri}: ${why}`, { cause: reason }));
    }
    this.parts.destroy();
  }

  detach(): DetachedSocket | undefined {
    if (this.parts.controller.signal.aborted) return undefined;
    return this.parts.detach?.();
  }
}

/**
 * Take the libuv handle out of a Socket (Node 20's net.Socket._handle; Node
 * has no public way to move a connection): reading stops, and the Socket no
 * longer closes the connection when destroyed. Undefined, and the Socket left
 * as it is, for a TLS socket (its session lives in this thread) or when the
 * handle is not where Node 20 keeps it.
 */
function takeHandle(socket: Socket, o: { needsFd: boolean }): NonNullable<SocketInternals['_handle']> | undefined {
  if (socket instanceof TLSSocket || socket.destroyed) return undefined;
  const internals = socket as unknown as SocketInternals;
  const handle = internals._handle;
  if (!handle || typeof handle.readStop !== 'function') return undefined;
  if (o.needsFd && (typeof handle.fd !== 'number' || handle.fd < 0)) return undefined;
  handle.readStop();
  handle.reading = false;
  internals._handle = null;
  return handle;
}

/**
 * The descriptor under a plain socket or pipe (Node 20's net.Socket._handle.fd),
 * for writes that bypass Node's queue (NodeSinkOptions.descriptor); undefined
 * once the socket has no handle (destroyed, detached) or Node keeps it elsewhere.
 */
export function descriptorOf(socket: Socket): number | undefined {
  const fd = (socket as unknown as SocketInternals)._handle?.fd;
  return typeof fd === 'number' && fd >= 0 && !socket.destroyed ? fd : undefined;
}

/**
 * Handles whose descriptors were given to another thread. Node closes a
 * handle's descriptor when the handle is closed, and the descriptor number
 * may by then belong to something else: these handles are kept here, out of
 * their sockets, and never closed.
 */
const detachedHandles = new Set<unknown>();

interface SocketInternals {
  _handle: { fd?: number; reading?: boolean; readStop?(): number } | null;
}

/** A tcp or unix socket: the stream one way, the return path the other. */
export function socketChannel(
  socket: Socket,
  uri: string,
  kind: 'tcp' | 'unix',
  received: readonly Uint8Array[] = [],
  ringReading?: { ring: RingReads; deliver: RingLink; release?: () => void },
): MigrationChannel {
  const controller = new AbortController();
  const signal = controller.signal;
  // Latency matters more than packet count (return-path requests, small final sections).
  if (kind === 'tcp') socket.setNoDelay(true);
  let socketError: ChannelError | undefined;
  socket.on('error', (err: Error) => {
    socketError ??= new ChannelError(`${uri}: ${err.message}`, { cause: err });
  });
  const closed = new Promise<void>((resolve, reject) => {
    const settle = (): void => {
      if (signal.aborted) reject(asChannelError(signal.reason, uri));
      else if (socketError) reject(socketError);
      else resolve();
    };
    if (socket.destroyed) settle();
    else socket.once('close', settle);
  });

  // The socket is released when both directions are closed, so closing the stream
  // side does not cut the return path (and vice versa).
  let inputClosed = false;
  let outputClosed = false;
  const releaseIfDone = (): void => {
    if (inputClosed && outputClosed) socket.destroy();
  };
  // A ring's buffers go to the next connection once this socket reads no more and the consumer let go of them.
  const ringConsumerClosed = ringReading?.release ? releaseRingAfter(socket, ringReading.release) : undefined;
  // Bytes read from this socket by another thread before it was handed over (detach()).
  const early = received.filter((c) => c.length > 0);
  const input = new NodeReadableSource(socket, {
    what: uri,
    signal,
    ...(ringReading ? { ring: ringReading.ring, alignReads: ringReading.deliver.alignReads } : {}),
    onClose: () => {
      inputClosed = true;
      releaseIfDone();
      ringConsumerClosed?.();
    },
  });
  if (ringReading) ringReading.deliver.to = (chunk) => input.deliver(chunk);
  const output = new NodeWritableSink(socket, {
    what: uri,
    signal,
    ...(socket instanceof TLSSocket ? {} : { descriptor: () => descriptorOf(socket) }),
    afterEnd: async () => {
      outputClosed = true;
      releaseIfDone();
    },
  });
  const source: ByteSource =
    early.length === 0
      ? input
      : {
          read: () => (early.length > 0 ? Promise.resolve(early.shift()!) : input.read()),
          close: () => {
            early.length = 0;
            return input.close();
          },
        };
  return new Channel({
    uri,
    kind,
    input: source,
    output,
    supportsReturnPath: true,
    controller,
    closed,
    release: async () => {
      socket.destroy();
      await closed.catch(() => {});
    },
    destroy: () => socket.destroy(),
    detach: () => {
      // Node has no public way to hand a socket to a worker thread; this takes
      // its libuv handle out of the Socket (Node 20's net.Socket._handle): reading
      // stops, and the Socket no longer closes the descriptor when destroyed.
      const handle = takeHandle(socket, { needsFd: true });
      if (!handle) return undefined;
      detachedHandles.add(handle);
      const fd = handle.fd!;
      // What Node read before the stop: in the reader's queue, or still in the stream's buffer.
      const received = input.takeQueued();
      void input.close(); // stops listening for 'data': the reads below must not be queued twice
      for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) received.push(chunk);
      socket.destroy(); // the Socket object only: it has no handle any more
      return { fd, uri, kind, received: [...early, ...received], adopter: SOCKET_ADOPTER };
    },
  });
}

/**
 * The socket channel over a descriptor another thread detached (detach()),
 * for use in this thread; its input yields the bytes already received first.
 */
export function adoptDetachedSocket(detached: DetachedSocket, options: { ring?: RingReads } = {}): MigrationChannel {
  if (!options.ring) {
    const socket = new Socket({ fd: detached.fd, readable: true, writable: true, allowHalfOpen: true });
    return socketChannel(socket, detached.uri, detached.kind, detached.received);
  }
  const { onread, deliver, release } = ringReads(options.ring, detached.received.reduce((sum, c) => sum + c.length, 0));
  const socket = new Socket({ fd: detached.fd, readable: true, writable: true, allowHalfOpen: true, onread } as ConstructorParameters<typeof Socket>[0]);
  return socketChannel(socket, detached.uri, detached.kind, detached.received, { ring: options.ring, deliver, release });
}
// This module is what its DetachedSockets name as `adopter`: its export must fit the contract.
adoptDetachedSocket satisfies AdoptDetachedSocket;
/** The module sockets detached here name as their `adopter` (this one). */
export const SOCKET_ADOPTER = import.meta.url;

/**
 * The descriptor another thread detached, as a socket whose reads land where
 * `reads` says (net.Socket `onread` with a buffer function: Node 20 asks for
 * the buffer when reading starts and after every read; a callback returning
 * false makes it call readStop, and Socket.resume() calls readStart again).
 * Reading starts at once. The bytes in `detached.received` are the caller's
 * to take first.
 */
export function adoptDetachedSocketReads(detached: DetachedSocket, reads: PlacedReads): PlacedReadSocket {
  const what = detached.uri;
  const socket = new Socket({
    fd: detached.fd,
    readable: true,
    writable: true,
    allowHalfOpen: true,
    onread: { buffer: () => reads.buffer(), callback: (n: number, buf: Uint8Array) => reads.callback(n, buf) },
  } as ConstructorParameters<typeof Socket>[0]);
  let aborted: ChannelError | undefined;
  const ended = new Promise<void>((resolve, reject) => {
    socket.once('end', resolve);
    socket.on('error', (err: Error) => reject(new ChannelError(`${what}: read failed: ${err.message}`, { cause: err })));
    socket.once('close', () => reject(aborted ?? new ChannelError(`${what}: connection closed before the end of the stream`)));
  });
  ended.catch(() => {});
  return {
    resume: () => {
      if (!socket.destroyed) socket.resume();
    },
    ended,
    close: (reason?: unknown) => {
      if (reason !== undefined) aborted ??= asChannelError(reason, `${what}: aborted`);
      socket.destroy();
    },
  };
}
adoptDetachedSocketReads satisfies AdoptDetachedSocketReads;

/**
 * Ring reads for a socket a listener accepted (the destination's channels):
 * a ring of 16 × 256 KiB buffers instead of a fresh 64 KiB buffer per read.
 */
export const ACCEPTED_SOCKET_RING: RingReads = { chunkBytes: 256 * 1024, chunks: 16 };

/**
 * The channel over a socket a server just accepted (called from its
 * 'connection' event, before any byte was read), reading into a ring of
 * reused buffers (ringReads). Consumers must not keep views into chunks for
 * long (RingReads); every reader of a destination's stream copies what it
 * keeps. A TLS socket, or a socket without the expected handle, keeps the
 * ordinary reads.
 */
export function acceptedSocketChannel(socket: Socket, uri: string, kind: 'tcp' | 'unix', ring: RingReads = ACCEPTED_SOCKET_RING): MigrationChannel {
  // Nothing was read yet: the connection's reads start in a later turn of the event loop.
  const moved = withRingReads(socket, ring, { writable: true });
  return moved ? socketChannel(moved.socket, uri, kind, [], moved) : socketChannel(socket, uri, kind);
}

/**
 * The connection or pipe under `socket` moved into a new Socket that reads
 * into a ring (ringReads): `onread` can only be given when a Socket is built.
 * The old Socket is destroyed (it no longer owns the connection). Undefined,
 * and `socket` left as it is, for a TLS socket, a handle Node keeps
 * elsewhere, or a socket that already read bytes (they are in its buffer).
 */
export function withRingReads(socket: Socket, ring: RingReads, o: { writable: boolean }): { socket: Socket; ring: RingReads; deliver: RingLink; release: () => void } | undefined {
  if (socket.readableLength > 0) return undefined;
  const handle = takeHandle(socket, { needsFd: false });
  if (!handle) return undefined;
  socket.destroy(); // the Socket object only (it has no handle any more)
  const { onread, deliver, release } = ringReads(ring);
  const adopted = new Socket({ handle, readable: true, writable: o.writable, allowHalfOpen: true, onread } as unknown as ConstructorParameters<typeof Socket>[0]);
  return { socket: adopted, ring, deliver, release };
}

/** A file: written by the source, read by the destination; no return path. */
export function fileChannel(uri: string, inner: { input: ByteSource } | { output: ByteSink }): MigrationChannel {
  const controller = new AbortController();
  const signal = controller.signal;
  const input = 'input' in inner ? new GuardedSource(inner.input, uri, signal) : null;
  const output = 'output' in inner ? new GuardedSink(inner.output, uri, signal) : null;
  let settle!: () => void;
  const closed = new Promise<void>((resolve, reject) => {
    settle = () => (signal.aborted ? reject(asChannelError(signal.reason, uri)) : resolve());
  });
  // Closing the file handle is all there is to release; a FileHandle waits for in-flight operations.
  const closeInner = async (): Promise<void> => {
    await ('input' in inner ? inner.input.close() : inner.output.close()).catch(() => {});
    settle();
  };
  return new Channel({
    uri,
    kind: 'file',
    input,
    output,
    supportsReturnPath: false,
    controller,
    closed,
    release: closeInner,
    destroy: () => void closeInner(),
  });
}
