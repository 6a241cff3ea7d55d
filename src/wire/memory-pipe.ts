/**
 * An in-memory byte pipe: what one side writes, the other reads, with a bound
 * on the bytes in flight so a fast writer waits for the reader (as a socket's
 * send buffer makes it). For a migration inside one page or worker (tests, a
 * loopback); the browser's network transports are WebSocket channels.
 */
import type { ByteSink, ByteSource, MigrationChannel } from './channel.js';
import { ChannelError } from './errors.js';

/** Default bound on the bytes written and not yet read. */
export const MEMORY_PIPE_HIGH_WATER_BYTES = 4 << 20;

export interface MemoryPipe {
  /** The writing end: takes ownership of the chunks it is given. */
  readonly sink: ByteSink;
  /** The reading end: the same chunks, in order, then null once the sink is closed. */
  readonly source: ByteSource;
}

export function createMemoryPipe(highWaterBytes = MEMORY_PIPE_HIGH_WATER_BYTES): MemoryPipe {
  if (!Number.isSafeInteger(highWaterBytes) || highWaterBytes < 1) throw new RangeError(`memory pipe: highWaterBytes must be a positive integer, not ${highWaterBytes}`);
  const queue: Uint8Array[] = [];
  let queuedBytes = 0;
  let ended = false;
  /** Set when the reader closed: writes fail from then on. */
  let readerGone = false;
  let wakeReader: (() => void) | undefined;
  let wakeWriter: (() => void) | undefined;
  const wake = (which: 'reader' | 'writer'): void => {
    const w = which === 'reader' ? wakeReader : wakeWriter;
    if (which === 'reader') wakeReader = undefined;
    else wakeWriter = undefined;
    w?.();
  };

  const sink: ByteSink = {
    async write(chunk: Uint8Array): Promise<void> {
      if (ended) throw new ChannelError('write to a closed memory pipe');
      if (readerGone) throw new ChannelError('memory pipe: the reading end was closed');
      if (chunk.length === 0) return;
      queue.push(chunk);
      queuedBytes += chunk.length;
      wake('reader');
      while (queuedBytes > highWaterBytes && !readerGone) await new Promise<void>((resolve) => (wakeWriter = resolve));
      if (readerGone) throw new ChannelError('memory pipe: the reading end was closed');
    },
    async close(): Promise<void> {
      ended = true;
      wake('reader');
    },
  };

  const source: ByteSource = {
    async read(): Promise<Uint8Array | null> {
      while (queue.length === 0) {
        if (ended || readerGone) return null;
        await new Promise<void>((resolve) => (wakeReader = resolve));
      }
      const chunk = queue.shift()!;
      queuedBytes -= chunk.length;
      if (queuedBytes <= highWaterBytes) wake('writer');
      return chunk;
    },
    async close(): Promise<void> {
      readerGone = true;
      queue.length = 0;
      queuedBytes = 0;
      wake('writer');
      wake('reader'); // a read waiting for data ends (null) instead of hanging
    },
  };
  return { sink, source };
}

/**
 * Two ends of an in-memory two-way channel (two pipes): what `source` writes,
 * `destination` reads, and back (the return path). For a migration between
 * two machines of one page or process (openedChannels() on each side).
 * close() ends this end's output (the peer reads the end of its input);
 * abort() also stops this end's reading, so the peer's writes fail.
 */
export function createMemoryChannelPair(uri: string, highWaterBytes = MEMORY_PIPE_HIGH_WATER_BYTES): { source: MigrationChannel; destination: MigrationChannel } {
  const forward = createMemoryPipe(highWaterBytes);
  const back = createMemoryPipe(highWaterBytes);
  const end = (input: ByteSource, output: ByteSink): MigrationChannel => {
    let closing: Promise<void> | undefined;
    let settle!: (err?: unknown) => void;
    const closed = new Promise<void>((resolve, reject) => (settle = (err) => (err === undefined ? resolve() : reject(err))));
    closed.catch(() => {});
    return {
      uri,
      kind: 'memory',
      input,
      output,
      supportsReturnPath: true,
      closed,
      close() {
        closing ??= output.close().then(
          () => settle(),
          (err: unknown) => {
            settle(err);
            throw err;
          },
        );
        return closing;
      },
      abort(reason?: unknown) {
        void output.close().catch(() => {});
        void input.close().catch(() => {});
        settle(reason instanceof Error ? reason : new ChannelError(`${uri}: aborted`));
      },
    };
  };
  return { source: end(back.source, forward.sink), destination: end(forward.source, back.sink) };
}
