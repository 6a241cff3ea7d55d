/**
 * Byte channels: where a migration stream comes from and goes to.
 *
 * A source hands out chunks it no longer touches (the reader keeps views into
 * them); a sink takes ownership of the chunks it is given. The channels over
 * Node files and streams are in node-channels.ts, outside the core's browser bundle.
 */
import { ChannelError } from './errors.js';

export interface ByteSource {
  /** The next chunk, or null at the end of the stream. */
  read(): Promise<Uint8Array | null>;
  /** Stop reading and release the channel. */
  close(): Promise<void>;
  /**
   * Optional: the consumer copies large runs (pages) that start at stream
   * offsets ≡ `streamOffsetMod8` (mod 8), from here on. A source that chooses
   * where its reads land may place those bytes 8-byte aligned in memory:
   * copies into shared memory (guest RAM) are several times faster aligned.
   * A hint only: the bytes delivered are the same whatever it says.
   */
  alignReads?(streamOffsetMod8: number): void;
}

export interface ByteSink {
  write(chunk: Uint8Array): Promise<void>;
  /**
   * Optional: as write(), and call `release` once the sink no longer needs the
   * chunk's memory (its bytes went to the OS, or the write failed), so that the
   * caller may reuse it. Sinks that keep chunks (memory) do not offer it.
   */
  writeLent?(chunk: Uint8Array, release: () => void): Promise<void>;
  /**
   * Optional: write `pieces` in order, as if they were one chunk, without
   * copying them first: the OS reads them where they are (views of guest RAM
   * go out in place, as QEMU's iovecs). Settles once the sink holds none of
   * them any more (all went to the OS, or the write failed), so the caller
   * may then reuse their memory. A piece's bytes are read when the OS takes
   * them, not when this is called.
   */
  writeGather?(pieces: readonly Uint8Array[]): Promise<void>;
  /** Flush and release the channel. */
  close(): Promise<void>;
}

const NO_PIECES: readonly Uint8Array[] = [];

/**
 * What gathered `pieces` still hold once the OS took the first `n` bytes of
 * them (a writev takes a prefix): the pieces it did not reach, the first one
 * trimmed. `pieces` itself when n is 0; no allocation when all were taken.
 */
export function unwrittenPieces(pieces: readonly Uint8Array[], n: number): readonly Uint8Array[] {
  if (n === 0) return pieces;
  let i = 0;
  while (i < pieces.length && n >= pieces[i]!.length) n -= pieces[i++]!.length;
  if (i === pieces.length) return NO_PIECES;
  const left = pieces.slice(i);
  if (n > 0) left[0] = left[0]!.subarray(n);
  return left;
}

/** A source over bytes in memory, cut into chunks of `chunkBytes` (to exercise chunk boundaries). */
export class MemorySource implements ByteSource {
  private position = 0;
  constructor(private readonly data: Uint8Array, private readonly chunkBytes = 65536) {
    if (chunkBytes < 1) throw new RangeError('chunkBytes must be >= 1');
  }
  async read(): Promise<Uint8Array | null> {
    if (this.position >= this.data.length) return null;
    const chunk = this.data.subarray(this.position, this.position + this.chunkBytes);
    this.position += chunk.length;
    return chunk;
  }
  async close(): Promise<void> {
    this.position = this.data.length;
  }
}

/** A sink that keeps everything written, for tests and for in-process streams. */
export class MemorySink implements ByteSink {
  private readonly chunks: Uint8Array[] = [];
  private length = 0;
  closed = false;
  async write(chunk: Uint8Array): Promise<void> {
    if (this.closed) throw new ChannelError('write to a closed memory sink');
    this.chunks.push(chunk);
    this.length += chunk.length;
  }
  async close(): Promise<void> {
    this.closed = true;
  }
  get byteLength(): number {
    return this.length;
  }
  /** Everything written so far, as one array. */
  bytes(): Uint8Array {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}

/**
 * How a migration connection is carried (QEMU 7.2's URI schemes and file:).
 * The transports (src/transport) produce channels of these kinds; the core
 * (RAM, multifd, savevm) only sees the MigrationChannel interface below.
 */
export type ChannelKind = 'tcp' | 'unix' | 'exec' | 'file' | 'ws' | 'memory';

/**
 * MigrationChannel: one migration connection, as the migration code sees it.
 *
 *             input (bytes from the peer)        output (bytes to the peer)
 * source      return path (tcp/unix), else null  the migration stream
 * destination the migration stream               return path (tcp/unix), else null
 *
 * Normal end: close the output (StreamWriter.close(): flush + half-close; for
 * exec it also waits for the command's exit status), read what is left, then
 * close() the channel. On failure or cancel: abort(), which never throws and
 * makes pending reads and writes reject at once.
 */
export interface MigrationChannel {
  /** The URI this channel was opened with (for a listener: its actual address). */
  readonly uri: string;
  readonly kind: ChannelKind;
  /** Bytes from the peer: the return path on the source, the stream on the destination. */
  readonly input: ByteSource | null;
  /** Bytes to the peer: the stream on the source, the return path on the destination. */
  readonly output: ByteSink | null;
  /** True on tcp and unix, where one socket carries both directions. */
  readonly supportsReturnPath: boolean;
  /**
   * Settles when the channel's resources are released: rejects with the first
   * failure (socket error, exec command's non-zero exit or signal, abort).
   * Already has a handler attached, so leaving it unobserved is fine.
   */
  readonly closed: Promise<void>;
  /**
   * Finish and release: flush and close the output, close the input, release
   * the socket / process / file. Idempotent (same promise). Rejects if the output
   * could not be finished (also when output.close() already reported it).
   * Waits for the peer to take the remaining bytes; use abort() to give up.
   */
  close(): Promise<void>;
  /** Immediate teardown (cancel, or after a failure): destroys the socket, kills an exec child. Never throws. */
  abort(reason?: unknown): void;
  /**
   * tcp and unix only: stop reading and give up the socket's file descriptor
   * so that another thread can own it (see DetachedSocket.adopter). Undefined
   * when that is not possible (the socket is gone, not a socket channel); the
   * channel is then unchanged. After a detach this channel never touches the
   * descriptor again: close() and abort() only settle its own state.
   */
  detach?(): DetachedSocket | undefined;
}

/**
 * A socket's descriptor on its way to another thread, with what was already
 * read from it. Plain data (it is posted to worker threads).
 */
export interface DetachedSocket {
  fd: number;
  uri: string;
  kind: 'tcp' | 'unix';
  /** Bytes Node had received and the channel's reader had not taken, in order. */
  received: Uint8Array[];
  /**
   * URL of a module exporting `adoptDetachedSocket: AdoptDetachedSocket`,
   * set by whoever detached the socket (the transport): the thread that takes
   * the descriptor loads it to turn the descriptor back into a channel. So the
   * core hands sockets between threads without importing the transports.
   */
  adopter: string;
}

/** Reads into a ring of `chunks` reused buffers of `chunkBytes` each (no allocation per read). */
export interface RingReadOptions {
  chunkBytes: number;
  chunks: number;
}

/** What a DetachedSocket's `adopter` module exports as `adoptDetachedSocket`. */
export type AdoptDetachedSocket = (detached: DetachedSocket, options?: { ring?: RingReadOptions }) => MigrationChannel;

/**
 * Reads that land where the consumer says (net.Socket `onread` with a buffer
 * function): buffer() is asked for the place of the next read (Node asks once
 * when reading starts and again after every read), callback() hears how many
 * bytes landed in it; callback() returning false stops reading until resume().
 */
export interface PlacedReads {
  buffer(): Uint8Array;
  callback(n: number, buf: Uint8Array): boolean;
}

/** A socket reading through PlacedReads (see AdoptDetachedSocketReads). */
export interface PlacedReadSocket {
  /** Start reading again after callback() returned false. */
  resume(): void;
  /** Resolves at the peer's end of stream; rejects with a ChannelError on a read error, a close before the end, or abort(). */
  readonly ended: Promise<void>;
  /** Release the socket (after the end, or to give up). Never throws. */
  close(reason?: unknown): void;
}

/**
 * What a DetachedSocket's `adopter` module may also export as
 * `adoptDetachedSocketReads`: the descriptor as a socket whose reads land
 * where `reads` says. The socket's earlier bytes (`received`) are not
 * replayed: the caller takes them first.
 */
export type AdoptDetachedSocketReads = (detached: DetachedSocket, reads: PlacedReads) => PlacedReadSocket;
