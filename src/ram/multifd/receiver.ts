/**
 * The destination side of multifd (QEMU 7.2 multifd_recv_*): each extra
 * channel starts with its init packet (magic, version, UUID, id: checked with
 * QEMU's texts), then packets whose pages go straight into guest RAM. A
 * channel that reads a SYNC packet waits; the RAM loader, at each EOS on the
 * main channel, waits for a SYNC from every channel and then releases them
 * all (multifd_recv_sync_main), so data of a later section never lands before
 * the main channel has applied the earlier one.
 *
 * Bad input is a MultifdError naming the channel and the byte offset in that
 * channel's stream; reads are bounded (fixed header, pages read in place,
 * compressed payloads capped).
 */
import type { RamBlock } from '../block.js';
import type { RamBlockTable } from '../block-table.js';
import { StreamError, UnexpectedEndError, type StreamReader } from '../../wire/index.js';
import { compressionOfFlags, createRecvCodec, ensureMultifdCodecs, MULTIFD_COMPRESSION_FLAGS, type MultifdCompression, type MultifdRecvCodec } from './codec.js';
import {
  findBadOffset,
  MULTIFD_FLAG_COMPRESSION_MASK,
  MULTIFD_FLAG_SYNC,
  MULTIFD_HEADER_BYTES,
  MULTIFD_INIT_BYTES,
  MULTIFD_PAGE_SIZE,
  MULTIFD_PAGES_PER_PACKET,
  MultifdError,
  parseInitPacket,
  parsePacketHeader,
  ZERO_UUID,
} from './packet.js';

/** A compressed payload may not exceed this: twice the packet size, as the buffers of QEMU 7.2 on both sides. */
export const MULTIFD_MAX_PAYLOAD_BYTES = 2 * MULTIFD_PAGES_PER_PACKET * MULTIFD_PAGE_SIZE; // QEMU 7.2's zbuff_len

export interface MultifdReceiverOptions {
  channels: number;
  /** This destination's UUID (QEMU: zeros unless -uuid). */
  uuid?: Uint8Array;
  compression?: MultifdCompression;
  /** Where packets' block names are looked up. */
  table: RamBlockTable;
  /** How long the first sync waits for channels that have not connected yet (default 30 s). */
  connectTimeoutMs?: number;
}

export interface MultifdReceiverStats {
  channels: number;
  packets: number;
  pages: number;
  syncs: number;
  bytes: number;
}

interface RecvChannel {
  id: number;
  reader: StreamReader;
  syncArrived: boolean;
  release: (() => void) | undefined;
  ended: boolean;
  close(): void;
}

export class MultifdReceiver {
  readonly stats: MultifdReceiverStats = { channels: 0, packets: 0, pages: 0, syncs: 0, bytes: 0 };
  /** Called once with the first failure (abort the main channel so the load stops). */
  onError: ((err: Error) => void) | undefined;

  private readonly byId = new Map<number, RecvChannel>();
  private readonly all = new Set<RecvChannel>();
  private failure: Error | undefined;
  private waiters: Array<() => void> = [];
  private readonly uuid: Uint8Array;
  private readonly expectedFlags: number;
  private readonly started = performance.now();

  constructor(private readonly options: MultifdReceiverOptions) {
    this.uuid = options.uuid ?? ZERO_UUID;
    this.expectedFlags = MULTIFD_COMPRESSION_FLAGS[options.compression ?? 'none'];
  }

  get error(): Error | undefined {
    return this.failure;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private changed(timeoutMs?: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      if (timeoutMs !== undefined) timer = setTimeout(done, Math.max(0, timeoutMs));
      this.waiters.push(done);
    });
  }

  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const ch of this.all) ch.close();
    this.wake();
    this.onError?.(err);
  }

  /**
   * A connection classified as a multifd channel: read its init packet and
   * then its packets until EOF. `close` tears the connection down.
   */
  addChannel(reader: StreamReader, close: () => void): void {
    const ch: RecvChannel = { id: -1, reader, syncArrived: false, release: undefined, ended: false, close };
    this.all.add(ch);
    if (this.failure) {
      close();
      return;
    }
    this.run(ch).catch((err: unknown) => {
      if (this.failure) return;
      let e = err instanceof Error ? err : new Error(String(err));
      if (!(e instanceof MultifdError)) {
        const at = e instanceof StreamError ? e.offset : reader.offset;
        const what = e instanceof UnexpectedEndError ? `the channel ended inside a packet or init packet (${e.reason})` : e.message;
        e = new MultifdError(ch.id < 0 ? undefined : ch.id, at, what, { cause: e });
      }
      this.fail(e);
    });
  }

  private async run(ch: RecvChannel): Promise<void> {
    const { reader } = ch;
    await ensureMultifdCodecs(this.options.compression ?? 'none');
    const init = new Uint8Array(MULTIFD_INIT_BYTES);
    await reader.readInto(init, 0, MULTIFD_INIT_BYTES);
    const id = parseInitPacket(init, this.uuid, this.options.channels);
    if (this.byId.has(id)) throw new MultifdError(id, 24, `multifd: received id '${id}' already setup'`);
    ch.id = id;
    this.byId.set(id, ch);
    this.stats.channels++;
    this.wake();

    const header = new Uint8Array(MULTIFD_HEADER_BYTES);
    const offsets = new Float64Array(MULTIFD_PAGES_PER_PACKET);
    let codec: MultifdRecvCodec | undefined;
    let codecMade = false;
    for (;;) {
      if (this.failure) return;
      if (await reader.atEnd()) {
        ch.ended = true;
        this.wake();
        return;
      }
      const at = reader.offset;
      await reader.readInto(header, 0, MULTIFD_HEADER_BYTES);
      const h = parsePacketHeader(header, id, at, offsets);
      // As 7.2, only packets with pages are checked (QEMU sets no compression bits on the others).
      if (h.normalPages > 0 && (h.flags & MULTIFD_FLAG_COMPRESSION_MASK) !== this.expectedFlags) {
        const name = compressionOfFlags(h.flags) ?? 'unknown';
        throw new MultifdError(id, at + 8, `multifd ${id}: flags received ${(h.flags & MULTIFD_FLAG_COMPRESSION_MASK).toString(16)} flags expected ${this.expectedFlags.toString(16)} (compression ${name}, expected ${this.options.compression ?? 'none'})`);
      }
      this.stats.packets++;
      this.stats.bytes += MULTIFD_HEADER_BYTES;
      if (h.normalPages > 0) {
        const found = this.options.table.lookup(h.ramblock);
        if (!found.block) throw new MultifdError(id, at + 64, `multifd: unknown ram block ${h.ramblock}`);
        const block = found.block;
        const bad = findBadOffset(h, block.lengthBytes);
        if (bad >= 0) {
          throw new MultifdError(id, at + 320 + 8 * bad, `multifd: offset too long ${h.offsets[bad]!.toString(16)} (max ${block.lengthBytes.toString(16)})${h.offsets[bad]! % MULTIFD_PAGE_SIZE ? ' (not page-aligned)' : ''}`);
        }
        if (this.expectedFlags === 0) {
          await this.readPages(reader, block, h.offsets, h.normalPages);
          this.stats.bytes += h.normalPages * MULTIFD_PAGE_SIZE;
        } else {
          if (!codecMade) {
            codec = createRecvCodec(this.options.compression ?? 'none');
            codecMade = true;
          }
          const payloadAt = reader.offset;
          const payload = await reader.bytes(h.nextPacketSize, MULTIFD_MAX_PAYLOAD_BYTES, 'multifd payload');
          const targets: Uint8Array[] = [];
          for (let i = 0; i < h.normalPages; i++) targets.push(block.pageForUpdate(h.offsets[i]! / MULTIFD_PAGE_SIZE));
          try {
            codec!.decode(payload, targets);
          } catch (err) {
            throw new MultifdError(id, payloadAt, `multifd ${id}: cannot decompress the payload: ${(err as Error).message}`, { cause: err });
          } finally {
            for (let i = 0; i < h.normalPages; i++) block.pageUpdated(h.offsets[i]! / MULTIFD_PAGE_SIZE);
          }
          this.stats.bytes += h.nextPacketSize;
        }
        this.stats.pages += h.normalPages;
      }
      if (h.flags & MULTIFD_FLAG_SYNC) {
        // Wait for the main channel's EOS (multifd_recv_sync_main) before reading on.
        await new Promise<void>((resolve) => {
          ch.release = resolve;
          ch.syncArrived = true;
          this.wake();
        });
      }
    }
  }

  private async readPages(reader: StreamReader, block: RamBlock, offsets: Float64Array, count: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      const pageIndex = offsets[i]! / MULTIFD_PAGE_SIZE;
      const page = block.pageForUpdate(pageIndex);
      try {
        if (reader.buffered >= MULTIFD_PAGE_SIZE) reader.readIntoSync(page, 0, MULTIFD_PAGE_SIZE);
        else await reader.readInto(page, 0, MULTIFD_PAGE_SIZE);
      } finally {
        block.pageUpdated(pageIndex);
      }
    }
  }

  /** At a RAM EOS on the main channel: one SYNC from every channel, then release them all. */
  async syncMain(): Promise<void> {
    const n = this.options.channels;
    const deadline = this.started + (this.options.connectTimeoutMs ?? 30_000);
    for (;;) {
      if (this.failure) throw this.failure;
      let missing: number | undefined;
      let waiting = false;
      for (let id = 0; id < n; id++) {
        const ch = this.byId.get(id);
        if (!ch) {
          missing ??= id;
          continue;
        }
        if (!ch.syncArrived) {
          if (ch.ended) {
            const err = new MultifdError(id, ch.reader.offset, 'the channel ended before its SYNC packet for this section');
            this.fail(err);
            throw err;
          }
          waiting = true;
        }
      }
      if (missing === undefined && !waiting) break;
      if (missing !== undefined) {
        const left = deadline - performance.now();
        if (left <= 0) {
          const err = new MultifdError(missing, 0, `multifd channel ${missing} of ${n} did not connect`);
          this.fail(err);
          throw err;
        }
        await this.changed(left);
      } else {
        await this.changed();
      }
    }
    this.stats.syncs++;
    for (const ch of this.byId.values()) {
      ch.syncArrived = false;
      const release = ch.release;
      ch.release = undefined;
      release?.();
    }
  }

  /** Tear every channel down. */
  close(): void {
    for (const ch of this.all) ch.close();
    this.wake();
  }
}
