/**
 * One multifd send channel in a worker thread: it opens its own connection to
 * the destination, sends the init packet, then turns jobs (a block and up to
 * 128 page offsets) into packets, reading the pages straight out of guest RAM
 * (a SharedArrayBuffer), and writes them to its socket. The main thread keeps
 * the page choice, packet numbering and accounting; this thread does the
 * copying and the socket work, so a second core is used.
 *
 * Messages in:  { type: 'job', seq, packetNum, flags, blockIndex, count, offsets }
 *               { type: 'finish' }
 * Messages out: { type: 'ready' } once the init packet is written,
 *               { type: 'done', seq } once a job's packet is handed to the OS,
 *               { type: 'finished' }, { type: 'error', message }.
 */
import { connect, type Socket } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { createSendCodec, ensureMultifdCodecs, type MultifdCompression, type MultifdSendCodec } from './codec.js';
import { encodeInitPacket, MULTIFD_HEADER_BYTES, MULTIFD_PAGE_SIZE, MULTIFD_PAGES_PER_PACKET, writePacketHeader } from './packet.js';

export interface SendWorkerData {
  target: { host: string; port: number } | { path: string };
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
  if (data.codecModule) await import(data.codecModule);
  await ensureMultifdCodecs(data.compression);
  codec = createSendCodec(data.compression, data.level);
  const socket: Socket = connect({ ...data.target, allowHalfOpen: true });
  socket.setNoDelay(true);
  socket.on('error', (err) => fail(`${data.what}: ${err.message}`));
  socket.on('close', () => {
    if (!finishing) fail(`${data.what}: connection closed`);
  });
  socket.on('data', () => {}); // nothing is expected from the destination on this channel
  socket.once('connect', () => {
    socket.write(encodeInitPacket(data.uuid, data.id), (err) => {
      if (!err) port.postMessage({ type: 'ready' });
    });
  });
  port.on('message', (msg: SendJob | { type: 'finish' }) => {
    if (failed) return;
    if (msg.type === 'finish') {
      finishing = true;
      socket.end(() => {
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

function send(socket: Socket, job: SendJob): void {
  const count = job.count;
  const payloadBytes = count * MULTIFD_PAGE_SIZE;
  let buf = free.pop();
  if (!buf || buf.length < MULTIFD_HEADER_BYTES + payloadBytes) buf = Buffer.allocUnsafe(MULTIFD_HEADER_BYTES + MULTIFD_PAGES_PER_PACKET * MULTIFD_PAGE_SIZE);
  const packet = buf;
  if (count > 0) {
    const memory = memories[job.blockIndex]!;
    let at = MULTIFD_HEADER_BYTES;
    for (let i = 0; i < count; i++) {
      // Runs of consecutive pages are copied in one go.
      const first = job.offsets[i]!;
      let run = 1;
      while (i + run < count && job.offsets[i + run] === first + run * MULTIFD_PAGE_SIZE) run++;
      packet.set(memory.subarray(first, first + run * MULTIFD_PAGE_SIZE), at);
      at += run * MULTIFD_PAGE_SIZE;
      i += run - 1;
    }
    lastBlock = data.blocks[job.blockIndex]!.idstr;
  }
  const done = (err?: Error | null): void => {
    free.push(packet);
    if (!err) port.postMessage({ type: 'done', seq: job.seq });
  };
  if (codec && count > 0) {
    const payload = codec.encode(packet.subarray(MULTIFD_HEADER_BYTES, MULTIFD_HEADER_BYTES + payloadBytes));
    writePacketHeader(packet, 0, { flags: job.flags | codec.flags, normalPages: count, nextPacketSize: payload.length, packetNum: job.packetNum, ramblock: lastBlock, offsets: job.offsets });
    socket.cork();
    socket.write(packet.subarray(0, MULTIFD_HEADER_BYTES));
    socket.write(payload, done);
    socket.uncork();
  } else {
    // As 7.2: packets without pages carry no compression bits.
    writePacketHeader(packet, 0, { flags: job.flags | (codec && count > 0 ? codec.flags : 0), normalPages: count, nextPacketSize: payloadBytes, packetNum: job.packetNum, ramblock: lastBlock, offsets: job.offsets });
    socket.write(packet.subarray(0, MULTIFD_HEADER_BYTES + payloadBytes), done);
  }
}

main().catch((err) => fail(`${data.what}: ${(err as Error).message}`));
