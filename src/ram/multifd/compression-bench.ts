/**
 * A small benchmark of the multifd codecs: compress and decompress speed (MB/s
 * of page data, 10^6 bytes per second, one thread) and ratio per method, level
 * and kind of data. Pure measurement, no assertions; `npm run bench` or a
 * REPL can print it.
 */
import { randomFillSync } from 'node:crypto';
import { createMultifdCodec, type MultifdCodecOptions, type MultifdCompression } from './compression.js';

const PAGE = 4096;
const PACKET_PAGES = 128;

export type MultifdBenchData = 'random' | 'text' | 'mixed';

export interface MultifdBenchResult {
  method: MultifdCompression;
  level: number;
  data: MultifdBenchData;
  /** Page bytes compressed per second, MB/s (10^6). */
  compressMBps: number;
  /** Page bytes decompressed per second, MB/s. */
  decompressMBps: number;
  /** Payload bytes / page bytes. */
  ratio: number;
  packetsBackedOff: number;
  packets: number;
}

export interface MultifdBenchOptions {
  /** Page data per case, MiB (default 32: 64 packets). */
  mib?: number;
  methods?: Array<{ method: MultifdCompression; level?: number }>;
  data?: MultifdBenchData[];
  backoff?: MultifdCodecOptions['backoff'];
  /** Runs per case; the fastest is reported (default 3; the machine may be shared). */
  rounds?: number;
}

/** Deterministic text-like pages: words from a small vocabulary with numbers, like logs or source. */
function textLike(buf: Uint8Array, seed: number): void {
  const words = ['migration', 'page', 'dirty', 'the', 'of', 'qemu', 'ram', 'block', 'guest', 'stream', '0x7f3a', 'ERROR', 'info:', '{', '}', 'return', 'int', 'len'];
  let s = seed >>> 0 || 1;
  let i = 0;
  while (i < buf.length) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const w = (s >>> 0) % 23 < words.length ? words[(s >>> 0) % 23]! : String((s >>> 8) % 100000);
    for (let k = 0; k < w.length && i < buf.length; k++) buf[i++] = w.charCodeAt(k);
    if (i < buf.length) buf[i++] = (s & 15) === 0 ? 10 : 32;
  }
}

function makeData(kind: MultifdBenchData, bytes: number): Uint8Array {
  const buf = new Uint8Array(bytes);
  if (kind === 'random') randomFillSync(buf);
  else if (kind === 'text') textLike(buf, 12345);
  else {
    // Alternating 1 MiB regions, so whole packets are one kind or the other.
    textLike(buf, 777);
    for (let off = 0; off < bytes; off += 2 << 20) randomFillSync(buf, off, Math.min(1 << 20, bytes - off));
  }
  return buf;
}

/** One pass of `data` through a fresh sender and receiver. */
function runCase(m: { method: MultifdCompression; level?: number }, kind: MultifdBenchData, data: Uint8Array, codecOptions: MultifdCodecOptions): MultifdBenchResult {
  const packetBytes = PACKET_PAGES * PAGE;
  const target = new Uint8Array(packetBytes);
  const send = createMultifdCodec(m.method, m.level, codecOptions);
  const recv = createMultifdCodec(m.method, m.level, codecOptions);
  const payloads: Uint8Array[] = [];
  let t = performance.now();
  for (let off = 0; off < data.length; off += packetBytes) {
    const p = send.compressPacket(data.subarray(off, off + packetBytes));
    payloads.push(m.method === 'none' ? p.slice() : p); // none: the copy a sender makes
  }
  const compressMs = performance.now() - t;
  t = performance.now();
  for (const p of payloads) recv.decompressPacket(p, PACKET_PAGES, target);
  const decompressMs = performance.now() - t;
  const result: MultifdBenchResult = {
    method: m.method,
    level: send.level,
    data: kind,
    compressMBps: data.length / 1e6 / (compressMs / 1000),
    decompressMBps: data.length / 1e6 / (decompressMs / 1000),
    ratio: send.stats.bytesOut / send.stats.bytesIn,
    packetsBackedOff: send.stats.packetsBackedOff,
    packets: payloads.length,
  };
  send.close();
  recv.close();
  return result;
}

/** Compress then decompress `mib` MiB of each kind of data with each method, in full packets through one channel. */
export function benchmarkMultifdCompression(options: MultifdBenchOptions = {}): MultifdBenchResult[] {
  const bytes = Math.max(1, options.mib ?? 32) * (1 << 20);
  const methods = options.methods ?? [{ method: 'none' }, { method: 'zlib', level: 1 }, { method: 'zstd', level: 1 }];
  const kinds = options.data ?? ['random', 'text', 'mixed'];
  const codecOptions: MultifdCodecOptions = options.backoff === undefined ? {} : { backoff: options.backoff };
  const results: MultifdBenchResult[] = [];
  for (const kind of kinds) {
    const data = makeData(kind, bytes);
    for (const m of methods) {
      const best = runCase(m, kind, data, codecOptions);
      for (let round = 1; round < Math.max(1, options.rounds ?? 3); round++) {
        const r = runCase(m, kind, data, codecOptions);
        best.compressMBps = Math.max(best.compressMBps, r.compressMBps);
        best.decompressMBps = Math.max(best.decompressMBps, r.decompressMBps);
      }
      results.push(best);
    }
  }
  return results;
}
