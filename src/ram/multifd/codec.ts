/**
 * Per-channel payload codecs: how a packet's pages become its payload and back
 * (QEMU 7.2's MultiFDMethods). One codec object per channel and direction, kept
 * for the whole migration, because QEMU's zlib/zstd methods keep one stream per
 * channel (each packet ends with a sync flush).
 *
 * `none` is built in. Compressing codecs (parameter `multifd-compression`)
 * plug in through registerMultifdCodec(); a codec must be constructible in a
 * worker thread from its name and level alone (the send workers build their
 * own).
 */
import { MULTIFD_FLAG_COMPRESSION_MASK, MULTIFD_FLAG_NOCOMP, MULTIFD_FLAG_ZLIB, MULTIFD_FLAG_ZSTD } from './packet.js';

export type MultifdCompression = 'none' | 'zlib' | 'zstd';

/** Parameter ranges and defaults of `multifd-zlib-level` / `multifd-zstd-level` (QEMU 7.2). */
export const MULTIFD_ZLIB_LEVEL_MAX = 9;
export const MULTIFD_ZSTD_LEVEL_MAX = 20;
export const MULTIFD_DEFAULT_LEVEL = 1;

/** Inclusive level range of a method ([0, 0] for none). */
export function multifdLevelRange(method: MultifdCompression): [min: number, max: number] {
  return method === 'zlib' ? [0, MULTIFD_ZLIB_LEVEL_MAX] : method === 'zstd' ? [0, MULTIFD_ZSTD_LEVEL_MAX] : [0, 0];
}

/** The packet flag bits for each method (7.2: none 0, zlib 1<<1, zstd 2<<1). */
export const MULTIFD_COMPRESSION_FLAGS: Record<MultifdCompression, number> = {
  none: MULTIFD_FLAG_NOCOMP,
  zlib: MULTIFD_FLAG_ZLIB,
  zstd: MULTIFD_FLAG_ZSTD,
};

export interface MultifdSendCodec {
  /** Compression bits of the packet flags. */
  readonly flags: number;
  /**
   * The payload for `pages` (normalPages × 4096 bytes, contiguous). `none`
   * returns `pages` itself. The result is the packet's next_packet_size.
   */
  encode(pages: Uint8Array): Uint8Array;
  /** Release resources (streams). */
  close?(): void;
}

export interface MultifdRecvCodec {
  readonly flags: number;
  /** Turn `payload` (next_packet_size bytes) into exactly targets.length pages, one per target view. Throws on bad data. */
  decode(payload: Uint8Array, targets: Uint8Array[]): void;
  close?(): void;
}

export interface MultifdCodecFactory {
  send(level: number): MultifdSendCodec;
  recv(): MultifdRecvCodec;
}

const factories = new Map<MultifdCompression, MultifdCodecFactory>();

/** Make a compression method available (done by the compression module when it is loaded). */
export function registerMultifdCodec(method: MultifdCompression, factory: MultifdCodecFactory): void {
  factories.set(method, factory);
}

/** The compression method named by packet flags, or undefined for unknown bits. */
export function compressionOfFlags(flags: number): MultifdCompression | undefined {
  const bits = flags & MULTIFD_FLAG_COMPRESSION_MASK;
  for (const [name, value] of Object.entries(MULTIFD_COMPRESSION_FLAGS)) if (value === bits) return name as MultifdCompression;
  return undefined;
}

/** Load the compression codecs (zlib, zstd) if `method` needs them; call before createSendCodec/createRecvCodec. */
export async function ensureMultifdCodecs(method: MultifdCompression): Promise<void> {
  // A specifier put together at run time: the browser bundle (which takes this module for its
  // constants, and never runs multifd) must not follow it into node:zlib.
  if (method !== 'none' && !factories.has(method)) await import(['.', 'compression.js'].join('/'));
}

export function createSendCodec(method: MultifdCompression, level: number): MultifdSendCodec | undefined {
  if (method === 'none') return undefined; // the raw path needs no codec
  const factory = factories.get(method);
  if (!factory) throw new Error(`multifd compression '${method}' is not available`);
  return factory.send(level);
}

export function createRecvCodec(method: MultifdCompression): MultifdRecvCodec | undefined {
  if (method === 'none') return undefined;
  const factory = factories.get(method);
  if (!factory) throw new Error(`multifd compression '${method}' is not available`);
  return factory.recv();
}
