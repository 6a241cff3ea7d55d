/**
 * Synchronous, persistent zlib streams for multifd compression, on Node's own
 * zlib (the C library Node ships, 1.3.x).
 *
 * Node documents no synchronous *streaming* zlib API: zlib.deflateSync()
 * compresses one whole buffer and ends the stream, and Deflate#flush() and
 * Deflate#params() call back asynchronously. QEMU 7.2's multifd zlib method
 * needs one deflate stream per channel for the whole migration with a
 * Z_SYNC_FLUSH at the end of every packet, and the channels run in worker
 * threads that compress a packet synchronously. So this module drives the
 * native handle behind a zlib.Deflate / zlib.Inflate stream directly, with the
 * two calls Node's own code makes:
 *
 * - `handle.writeSync(flush, in, inOff, inLen, out, outOff, outLen)`: one
 *   deflate()/inflate() call; afterwards `stream._writeState` holds
 *   [avail_out, avail_in] (what zlib.deflateSync uses, lib/zlib.js
 *   processChunkSync);
 * - `handle.params(level, strategy)`: deflateParams() (what Deflate#params
 *   does after its flush).
 *
 * A zlib error is reported by the handle synchronously through the stream's
 * destroy(err), so it is read back from `stream.errored`. These internals have
 * been stable since Node 10 and exist in Node 20 and 22; `assertInternals`
 * checks them when a stream is created so a Node that lacks them fails with a
 * clear message instead of a TypeError.
 */
import zlib from 'node:zlib';

interface NativeZlibHandle {
  writeSync(flush: number, input: Uint8Array, inOff: number, inLen: number, out: Uint8Array, outOff: number, outLen: number): void;
  params(level: number, strategy: number): void;
  close(): void;
}

interface ZlibInternals {
  _handle: NativeZlibHandle | null;
  _writeState: Uint32Array;
  errored: Error | null;
}

export const Z_NO_FLUSH = zlib.constants.Z_NO_FLUSH;
export const Z_SYNC_FLUSH = zlib.constants.Z_SYNC_FLUSH;
const Z_DEFAULT_STRATEGY = zlib.constants.Z_DEFAULT_STRATEGY;
const EMPTY = new Uint8Array(0);

function assertInternals(stream: zlib.Deflate | zlib.Inflate): ZlibInternals {
  const s = stream as unknown as Partial<ZlibInternals>;
  const h = s._handle;
  if (!h || typeof h.writeSync !== 'function' || typeof h.params !== 'function' || !(s._writeState instanceof Uint32Array)) {
    throw new Error(`multifd zlib: this Node.js (${process.version}) lacks the zlib stream internals livemig uses for synchronous streaming (handle.writeSync, _writeState)`);
  }
  return s as ZlibInternals;
}

/** Result of one zlib call: input bytes consumed and output bytes produced. */
export interface ZlibStep {
  consumed: number;
  produced: number;
}

/** A deflate or inflate stream kept open for the whole migration. */
export class ZlibStream {
  private readonly stream: zlib.Deflate | zlib.Inflate;
  private readonly internals: ZlibInternals;
  private readonly step: ZlibStep = { consumed: 0, produced: 0 };
  private broken: Error | undefined;

  /**
   * `deflate` with `level` is QEMU's deflateInit(zs, level): zlib wrapper,
   * 32 KiB window (windowBits 15), memLevel 8, default strategy.
   * `inflate` is QEMU's inflateInit(): zlib wrapper, windowBits 15.
   */
  constructor(
    readonly kind: 'deflate' | 'inflate',
    level = 1,
  ) {
    this.stream =
      kind === 'deflate'
        ? zlib.createDeflate({ level, windowBits: 15, memLevel: 8, strategy: Z_DEFAULT_STRATEGY })
        : zlib.createInflate({ windowBits: 15 });
    // Errors are read synchronously from `errored`; the 'error' event that
    // destroy() also schedules must not become an uncaught exception.
    this.stream.on('error', () => {});
    this.internals = assertInternals(this.stream);
  }

  /**
   * One deflate()/inflate() call with `flush` on in[inOff, inOff+inLen) into
   * out[outOff, outOff+outLen). The returned object is reused by the next call.
   */
  run(flush: number, input: Uint8Array, inOff: number, inLen: number, out: Uint8Array, outOff: number, outLen: number): ZlibStep {
    const h = this.handle();
    h.writeSync(flush, inLen === 0 ? EMPTY : input, inLen === 0 ? 0 : inOff, inLen, out, outOff, outLen);
    const err = this.internals.errored;
    if (err || !this.internals._handle) {
      this.broken = err ?? new Error('zlib stream closed');
      throw this.broken;
    }
    const state = this.internals._writeState;
    this.step.produced = outLen - state[0]!;
    this.step.consumed = inLen - state[1]!;
    return this.step;
  }

  /**
   * deflateParams(level, default strategy). Call it only right after a packet
   * ended with Z_SYNC_FLUSH: nothing is pending then, so zlib emits nothing and
   * the next packet starts at the new level in the same stream.
   */
  setLevel(level: number): void {
    this.handle().params(level, Z_DEFAULT_STRATEGY);
    const err = this.internals.errored;
    if (err) {
      this.broken = err;
      throw err;
    }
  }

  close(): void {
    if (this.internals._handle) this.internals._handle.close();
    this.internals._handle = null;
    this.broken ??= new Error('zlib stream closed');
  }

  private handle(): NativeZlibHandle {
    if (this.broken) throw new Error(`${this.kind} stream is unusable after an earlier error: ${this.broken.message}`);
    const h = this.internals._handle;
    if (!h) throw new Error(`${this.kind} stream closed`);
    return h;
  }
}
