/**
 * One multifd send channel in a worker thread: it takes over the connection's
 * socket descriptor (connected and detached by the main thread), sends the init packet, then turns jobs (a block and up to
 * 128 page offsets) into packets and writes them to its socket. The main
 * thread keeps the page choice, packet numbering and accounting; this thread
 * does the encoding and the socket work, so a second core is used.
 *
 * Uncompressed packets are not copied: the header and, per run of
 * consecutive pages, a view of guest RAM (a SharedArrayBuffer) go out as one
 * writev, as QEMU's multifd_send_thread sends iovecs pointing at guest
 * memory. The OS may read a page after the guest wrote it again; that write
 * also marked the page dirty (its bit was cleared before it was queued), so
 * it is sent again after the next sync. Compressed packets copy the pages
 * into the packet buffer for the encoder.
 *
 * Messages in:  { type: 'adopt', fd, what } (a thread started before its connection)
 *               { type: 'job', seq, packetNum, flags, blockIndex, count, offsets },
 *               { type: 'jobs', jobs } (several jobs queued at once)
 *               { type: 'finish' }
 * Messages out: { type: 'ready' } once the init packet is written,
 *               { type: 'done', seq } once the packets of every job up to seq are
 *               handed to the OS (the callback of their last write; one message
 *               per turn of the event loop),
 *               { type: 'finished' }, { type: 'error', message }.
 */
import { Socket } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { createSendCodec, ensureMultifdCodecs, type MultifdCompression, type MultifdSendCodec } from './codec.js';
import { encodeInitPacket, MULTIFD_HEADER_BYTES, MULTIFD_PAGE_SIZE, MULTIFD_PAGES_PER_PACKET, writePacketHeader } from './packet.js';

export interface SendWorkerData {
  /**
   * The connected socket's descriptor (MigrationChannel.detach()); this thread owns it.
   * Absent for a thread started before its connection: it comes in { type: 'adopt', fd, what }.
   */
  fd?: number;
  what: string;
  id: number;
  uuid: Uint8Array;
  blocks: Array<{ idstr: string; buffer: SharedArrayBuffer; byteOffset: number; lengthBytes: number }>;
  compression: MultifdCompression;
  level: number;
  /** Optional module that registers compression codecs (loaded before the first job). */
  codecModule?: string;
}

export interface SendJob {
  type: 'job';
  seq: number;
  packetNum: number;
  flags: number;
  blockIndex: number;
  count: number;
  offsets: Float64Array;
}

const data = workerData as SendWorkerData;
const port = parentPort!;
const memories = data.blocks.map((b) => new Uint8Array(b.buffer, b.byteOffset, b.lengthBytes));
const free: Buffer[] = [];
let lastBlock: string | undefined;
let failed = false;
let finishing = false;
let codec: MultifdSendCodec | undefined;

function fail(message: string): void {
  if (failed) return;
  failed = true;
  port.postMessage({ type: 'error', message });
}

async function main(): Promise<void> {
  let adoptMessage: ((msg: { type: string; fd?: number; what?: string }) => void) | undefined;
  const adopted =
    data.fd !== undefined
      ? Promise.resolve(data.fd)
      : new Promise<number>((resolve) => {
          adoptMessage = (msg) => {
            if (msg.type !== 'adopt') return;
            port.off('message', adoptMessage!);
            data.what = msg.what ?? data.what;
            resolve(msg.fd!);
          };
          port.on('message', adoptMessage);
        });
  if (data.codecModule) await import(data.codecModule);
  await ensureMultifdCodecs(data.compression);
  codec = createSendCodec(data.compression, data.level);
  const fd = await adopted;
  const socket = new Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
  socket.setNoDelay(true);
  socket.on('error', (err) => fail(`${data.what}: ${err.message}`));
  socket.on('close', () => {
    if (!finishing) fail(`${data.what}: connection closed`);
  });
  socket.on('data', () => {}); // nothing is expected from the destination on this channel
  socket.write(encodeInitPacket(data.uuid, data.id), (err) => {
    if (!err) port.postMessage({ type: 'ready' });
  });
  port.on('message', (msg: SendJob | { type: 'jobs'; jobs: SendJob[] } | { type: 'finish' }) => {
    if (failed) return;
    if (msg.type === 'jobs') {
      for (const job of msg.jobs) {
        try {
          send(socket, job);
        } catch (err) {
          fail(`${data.what}: ${(err as Error).message}`);
          return;
        }
      }
      return;
    }
    if (msg.type === 'finish') {
      finishing = true;
      socket.end(() => {
        flushDone();
        port.postMessage({ type: 'finished' });
        port.close();
      });
      return;
    }
    try {
      send(socket, msg);
    } catch (err) {
      fail(`${data.what}: ${(err as Error).message}`);
    }
  });
}

/** The last job handed to the OS and not yet reported; reported once per turn of the event loop (jobs complete in order). */
let doneSeq = -1;
let doneScheduled = false;
function reportDone(seq: number): void {
  doneSeq = seq;
  if (doneScheduled) return;
  doneScheduled = true;
  setImmediate(flushDone);
}
function flushDone(): void {
  if (!doneScheduled) return;
  doneScheduled = false;
  port.postMessage({ type: 'done', seq: doneSeq });
}

/** A pooled buffer of at least `bytes` bytes (every pooled buffer fits a header; the compressed path needs room for the pages). */
function packetBuffer(bytes: number): Buffer {
  const buf = free.pop();
  if (buf && buf.length >= bytes) return buf;
  return Buffer.allocUnsafe(codec ? MULTIFD_HEADER_BYTES + MULTIFD_PAGES_PER_PACKET * MULTIFD_PAGE_SIZE : MULTIFD_HEADER_BYTES);
}

/** Calls `visit(byteOffset, lengthBytes)` for each run of consecutive pages of the job, in order. */
function forEachRun(job: SendJob, visit: (byteOffset: number, lengthBytes: number) => void): void {
  const count = job.count;
  for (let i = 0; i < count; ) {
    const first = job.offsets[i]!;
    let run = 1;
    while (i + run < count && job.offsets[i + run] === first + run * MULTIFD_PAGE_SIZE) run++;
    visit(first, run * MULTIFD_PAGE_SIZE);
    i += run;
  }
}

function send(socket: Socket, job: SendJob): void {
  const count = job.count;
  const payloadBytes = count * MULTIFD_PAGE_SIZE;
  if (count > 0) lastBlock = data.blocks[job.blockIndex]!.idstr;
  const compressed = codec !== undefined && count > 0;
  const packet = packetBuffer(compressed ? MULTIFD_HEADER_BYTES + payloadBytes : MULTIFD_HEADER_BYTES);
  // The header buffer returns to the pool once its write is done; callbacks come in
  // order, so the last write's callback says the whole packet was handed to the OS.
  const done = (err?: Error | null): void => {
    free.push(packet);
    if (!err) reportDone(job.seq);
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
  // Header then the pages where they are: corked, the writes go out as one writev.
  const block = data.blocks[job.blockIndex]!;
  const views: Buffer[] = [];
  forEachRun(job, (first, lengthBytes) => views.push(Buffer.from(block.buffer, block.byteOffset + first, lengthBytes)));
  socket.cork();
  socket.write(header);
  const last = views.length - 1;
  for (let i = 0; i < last; i++) socket.write(views[i]!);
  socket.write(views[last]!, done);
  socket.uncork();
}

main().catch((err) => fail(`${data.what}: ${(err as Error).message}`));
