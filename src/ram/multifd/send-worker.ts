/**
 * Multifd send channels in a worker thread: one thread may send several
 * channels (the sender starts no more threads than there are cores: a thread
 * costs tens of milliseconds of CPU to start, and its work is mostly the
 * kernel's). For each channel it takes over the connection's socket
 * descriptor (connected and detached by the main thread), sends the init
 * packet, then turns jobs (a block and up to 128 page offsets) into packets
 * and writes them to that socket. The jobs come through the channel's job
 * ring in shared memory (job-ring.ts), not as messages: no wake-up per
 * packet on either side. The main thread keeps the page choice, packet
 * numbering and accounting; this thread does the encoding and the socket
 * work, so another core is used.
 *
 * Uncompressed packets are not copied: the header and, per run of
 * consecutive pages, a view of guest RAM (a SharedArrayBuffer) go out as one
 * writev, as QEMU's multifd_send_thread sends iovecs pointing at guest
 * memory. The OS may read a page after the guest wrote it again; that write
 * also marked the page dirty (its bit was cleared before it was queued), so
 * it is sent again after the next sync. Compressed packets copy the pages
 * into the packet buffer for the encoder.
 *
 * A job counts as written (JobRingConsumer.written) once the callback of
 * its packet's last write says the OS took it; its slot is free from then.
 *
 * Every message names its channel (`ch`).
 * Messages in:  { type: 'adopt', ch, fd, what } (threads start before their connections),
 *               { type: 'finish', ch } (write what the ring holds, then end),
 *               { type: 'drop', ch } (a channel that got no connection).
 * Messages out: { type: 'ready', ch } once the init packet is written,
 *               { type: 'finished', ch }, { type: 'error', ch, message }.
 * The thread ends once every channel finished or was dropped.
 */
import { writevSync } from 'node:fs';
import { Socket } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { createSendCodec, ensureMultifdCodecs, type MultifdCompression, type MultifdSendCodec } from './codec.js';
import { unwrittenPieces } from '../../wire/channel.js';
import { JobRingConsumer, type JobRingMemory, type TakenJob } from './job-ring.js';
import { encodeInitPacket, MULTIFD_HEADER_BYTES, MULTIFD_PAGE_SIZE, MULTIFD_PAGES_PER_PACKET, pageRunLength, writePacketHeader } from './packet.js';

export interface SendWorkerData {
  /** The channels this thread sends (each gets its descriptor later, in { type: 'adopt', ch, fd, what }). */
  channels: number[];
  /** Each channel's job ring, by channel id. */
  rings: Record<number, JobRingMemory>;
  uuid: Uint8Array;
  blocks: Array<{ idstr: string; buffer: SharedArrayBuffer; byteOffset: number; lengthBytes: number }>;
  compression: MultifdCompression;
  level: number;
  /** Optional module that registers compression codecs (loaded before the first job). */
  codecModule?: string;
}

type Incoming =
  | { type: 'adopt'; ch: number; fd: number; what: string }
  | { type: 'finish'; ch: number }
  | { type: 'drop'; ch: number };

const data = workerData as SendWorkerData;
const port = parentPort!;
const memories = data.blocks.map((b) => new Uint8Array(b.buffer, b.byteOffset, b.lengthBytes));
let codec: MultifdSendCodec | undefined;

/** One channel of this thread. */
class SendChannel {
  socket: Socket | undefined;
  /** The socket's descriptor: packets go straight to it with writevSync while Node has nothing queued. */
  fd = -1;
  what = '';
  lastBlock: string | undefined;
  failed = false;
  /** 'finish' came: end once the ring is empty. */
  finishing = false;
  /** Finished or dropped: the thread ends once every channel is. */
  over = false;
  /** Header (and compressed packet) buffers, reused. */
  readonly free: Buffer[] = [];
  readonly ring: JobRingConsumer;
  constructor(readonly id: number) {
    this.ring = new JobRingConsumer(data.rings[id]!);
  }

  fail(message: string): void {
    if (this.failed) return;
    this.failed = true;
    port.postMessage({ type: 'error', ch: this.id, message });
    this.ring.wake();
  }
}

const channels = new Map(data.channels.map((id) => [id, new SendChannel(id)]));

function ended(ch: SendChannel): void {
  ch.over = true;
  if ([...channels.values()].every((c) => c.over)) port.close();
}

function adopt(ch: SendChannel, fd: number, what: string): void {
  ch.what = what;
  const socket = new Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
  ch.socket = socket;
  ch.fd = fd;
  socket.setNoDelay(true);
  socket.on('error', (err) => ch.fail(`${ch.what}: ${err.message}`));
  socket.on('close', () => {
    if (!ch.finishing) ch.fail(`${ch.what}: connection closed`);
  });
  socket.on('data', () => {}); // nothing is expected from the destination on this channel
  socket.write(encodeInitPacket(data.uuid, ch.id), (err) => {
    if (!err) port.postMessage({ type: 'ready', ch: ch.id });
  });
  void sendJobs(ch);
}

/** Send the channel's jobs as they come, until 'finish' and an empty ring (or a failure). */
async function sendJobs(ch: SendChannel): Promise<void> {
  const ring = ch.ring;
  for (;;) {
    if (ch.failed) return;
    const job = ring.take();
    if (job) {
      try {
        send(ch, job);
      } catch (err) {
        ch.fail(`${ch.what}: ${(err as Error).message}`);
        return;
      }
      continue;
    }
    if (ch.finishing) break;
    await ring.whenPushed();
  }
  ch.socket!.end(() => {
    port.postMessage({ type: 'finished', ch: ch.id });
    ended(ch);
  });
}

async function main(): Promise<void> {
  // Messages wait until the codecs are ready (they come in order).
  const queued: Incoming[] = [];
  let ready = false;
  const handle = (msg: Incoming): void => {
    const ch = channels.get(msg.ch);
    if (!ch) return;
    if (msg.type === 'adopt') return adopt(ch, msg.fd, msg.what);
    if (msg.type === 'drop') return ended(ch);
    if (ch.failed || !ch.socket) return;
    if (msg.type === 'finish') {
      ch.finishing = true;
      ch.ring.wake();
    }
  };
  port.on('message', (msg: Incoming) => {
    if (ready) handle(msg);
    else queued.push(msg);
  });
  if (data.codecModule) await import(data.codecModule);
  await ensureMultifdCodecs(data.compression);
  codec = createSendCodec(data.compression, data.level);
  ready = true;
  for (const msg of queued.splice(0)) handle(msg);
}

/** A pooled buffer of at least `bytes` bytes (every pooled buffer fits a header; the compressed path needs room for the pages). */
function packetBuffer(free: Buffer[], bytes: number): Buffer {
  const buf = free.pop();
  if (buf && buf.length >= bytes) return buf;
  return Buffer.allocUnsafe(codec ? MULTIFD_HEADER_BYTES + MULTIFD_PAGES_PER_PACKET * MULTIFD_PAGE_SIZE : MULTIFD_HEADER_BYTES);
}

/** Calls `visit(byteOffset, lengthBytes)` for each run of consecutive pages of the job, in order. */
function forEachRun(job: TakenJob, visit: (byteOffset: number, lengthBytes: number) => void): void {
  const count = job.count;
  for (let i = 0; i < count; ) {
    const first = job.offsets[i]!;
    const run = pageRunLength(job.offsets, i, count);
    visit(first, run * MULTIFD_PAGE_SIZE);
    i += run;
  }
}

function send(ch: SendChannel, job: TakenJob): void {
  const socket = ch.socket!;
  const count = job.count;
  const payloadBytes = count * MULTIFD_PAGE_SIZE;
  if (count > 0) ch.lastBlock = data.blocks[job.blockIndex]!.idstr;
  const lastBlock = ch.lastBlock;
  const compressed = codec !== undefined && count > 0;
  const packet = packetBuffer(ch.free, compressed ? MULTIFD_HEADER_BYTES + payloadBytes : MULTIFD_HEADER_BYTES);
  // The header buffer returns to the pool once its write is done; callbacks come in
  // order, so the last write's callback says the whole packet was handed to the OS.
  const mark = job.mark;
  const done = (err?: Error | null): void => {
    ch.free.push(packet);
    if (!err) ch.ring.written(mark);
  };
  if (compressed) {
    const memory = memories[job.blockIndex]!;
    let at = MULTIFD_HEADER_BYTES;
    forEachRun(job, (first, lengthBytes) => {
      packet.set(memory.subarray(first, first + lengthBytes), at);
      at += lengthBytes;
    });
    const payload = codec!.encode(packet.subarray(MULTIFD_HEADER_BYTES, MULTIFD_HEADER_BYTES + payloadBytes));
    writePacketHeader(packet, 0, { flags: job.flags | codec!.flags, normalPages: count, nextPacketSize: payload.length, packetNum: job.packetNum, ramblock: lastBlock, offsets: job.offsets });
    socket.cork();
    socket.write(packet.subarray(0, MULTIFD_HEADER_BYTES));
    socket.write(payload, done);
    socket.uncork();
    return;
  }
  // As 7.2: packets without pages carry no compression bits.
  writePacketHeader(packet, 0, { flags: job.flags, normalPages: count, nextPacketSize: payloadBytes, packetNum: job.packetNum, ramblock: lastBlock, offsets: job.offsets });
  const header = packet.subarray(0, MULTIFD_HEADER_BYTES);
  if (count === 0) {
    socket.write(header, done);
    return;
  }
  // Header then the pages where they are, as one writev: straight to the descriptor while Node has nothing of this
  // socket queued (no stream bookkeeping, and the slot is free at once), else (and for what the OS did not take)
  // through Node, corked.
  const block = data.blocks[job.blockIndex]!;
  const pieces: Uint8Array[] = [header];
  forEachRun(job, (first, lengthBytes) => pieces.push(new Uint8Array(block.buffer, block.byteOffset + first, lengthBytes)));
  let left: readonly Uint8Array[] = pieces;
  // Not once the socket is gone: its descriptor number may already name something else.
  if (socket.writableLength === 0 && !socket.destroyed) {
    let taken = 0;
    try {
      taken = writevSync(ch.fd, pieces);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    }
    left = unwrittenPieces(pieces, taken);
    if (left.length === 0) {
      done();
      return;
    }
  }
  socket.cork();
  const last = left.length - 1;
  for (let k = 0; k < last; k++) socket.write(left[k]!);
  socket.write(left[last]!, done);
  socket.uncork();
}

main().catch((err) => {
  for (const ch of channels.values()) ch.fail(`${ch.what || `multifd channel ${ch.id}`}: ${(err as Error).message}`);
});
