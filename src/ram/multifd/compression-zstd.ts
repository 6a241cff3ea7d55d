/**
 * Synchronous, persistent zstd streams for multifd compression, on the
 * `zstd-napi` package (pinned, 0.0.13: libzstd 1.5.7 built from source as a
 * Node-API addon). We use its low-level `zstd-napi/binding` module, a thin
 * wrapper of ZSTD_CCtx / ZSTD_DCtx: `compressStream2` is ZSTD_compressStream2
 * and `decompressStream` is ZSTD_decompressStream, both synchronous, which is
 * what QEMU 7.2's multifd-zstd.c calls per page.
 *
 * The addon is loaded on first use, so a machine where it failed to build can
 * still use `none` and `zlib`; creating a zstd stream there says why.
 */
import { createRequire } from 'node:module';

/**
 * The part of `zstd-napi/binding` we use, declared here rather than imported:
 * zstd-napi is an optional dependency, and the build must not need it.
 */
interface Binding {
  versionString(): string;
  CParameter: { compressionLevel: number };
  CCtx: new () => {
    setParameter(param: number, value: number): void;
    compressStream2(dst: Uint8Array, src: Uint8Array, end: number): number[];
  };
  DCtx: new () => {
    decompressStream(dst: Uint8Array, src: Uint8Array): number[];
  };
}

let binding: Binding | undefined;
let loadError: Error | undefined;

/** The zstd-napi binding, loaded once. Throws a clear error if it is missing. */
export function zstdBinding(): Binding {
  if (binding) return binding;
  if (!loadError) {
    try {
      binding = createRequire(import.meta.url)('zstd-napi/binding') as Binding;
      return binding;
    } catch (err) {
      loadError = err as Error;
    }
  }
  throw new Error(`multifd zstd: the zstd-napi native addon could not be loaded (${loadError.message}); reinstall with 'npm ci' (it builds with node-gyp)`);
}

/** True when the zstd addon loads (for tests and capability checks). */
export function zstdAvailable(): boolean {
  try {
    zstdBinding();
    return true;
  } catch {
    return false;
  }
}

/** [returnValue, dstProduced, srcConsumed] as ZSTD_compressStream2 / ZSTD_decompressStream report them. */
export type ZstdStep = [ret: number, produced: number, consumed: number];

/** ZSTD_e_continue / ZSTD_e_flush / ZSTD_e_end. */
export const enum ZstdEnd {
  continue = 0,
  flush = 1,
  end = 2,
}

/**
 * A compression stream: QEMU's ZSTD_createCStream + ZSTD_initCStream(level),
 * i.e. default parameters (no checksum, no content size) at `level`
 * (0 = libzstd's default level, 3, as in QEMU).
 */
export class ZstdCompressStream {
  private readonly cctx: InstanceType<Binding['CCtx']>;
  private readonly b: Binding;

  constructor(level: number) {
    this.b = zstdBinding();
    this.cctx = new this.b.CCtx();
    this.cctx.setParameter(this.b.CParameter.compressionLevel, level);
  }

  /** One ZSTD_compressStream2 call: src into dst. */
  run(dst: Uint8Array, src: Uint8Array, end: ZstdEnd): ZstdStep {
    return this.cctx.compressStream2(dst, src, end) as ZstdStep;
  }

  /**
   * Level for the next frame. libzstd accepts a new compressionLevel only
   * between frames (single-threaded), so call it right after a frame ended.
   */
  setLevel(level: number): void {
    this.cctx.setParameter(this.b.CParameter.compressionLevel, level);
  }
}

/** A decompression stream: QEMU's ZSTD_createDStream + ZSTD_initDStream. */
export class ZstdDecompressStream {
  private readonly dctx: InstanceType<Binding['DCtx']>;

  constructor() {
    this.dctx = new (zstdBinding().DCtx)();
  }

  /** One ZSTD_decompressStream call: src into dst. Throws on corrupt data. */
  run(dst: Uint8Array, src: Uint8Array): ZstdStep {
    return this.dctx.decompressStream(dst, src) as ZstdStep;
  }
}
