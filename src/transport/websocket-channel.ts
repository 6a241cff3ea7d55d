/**
 * A MigrationChannel over a WebSocket: the standard browser `WebSocket`, or
 * anything with the same shape (the `ws` package's client and server
 * sockets). No Node API is used here, so a browser can be either end.
 *
 * On the wire (livemig's own convention; QEMU has no WebSocket migration):
 * - every binary message carries stream bytes, in order;
 * - an empty binary message ends the sender's direction. A WebSocket has no
 *   half-close (a Close frame ends both directions), but the source ends its
 *   stream and then still reads the destination's return path;
 * - a text message is a protocol error;
 * - once both directions have ended, either side closes with 1000; an abort
 *   closes with 4001 and the reason, which the peer reports.
 */
import type { ByteSink, ByteSource, MigrationChannel } from '../wire/channel.js';
import { ChannelError } from '../wire/errors.js';
import { TransportError } from './errors.js';
import { Wakeup } from './waiting.js';

/** The part of the standard WebSocket interface the channel uses. */
export interface MinimalWebSocket {
  binaryType: string;
  readonly readyState: number;
  readonly bufferedAmount: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/**
 * What a WebSocket may offer beyond the standard (the `ws` package does): an
 * acknowledgement per send, so backpressure is event-driven instead of polled,
 * pausing reads (the standard WebSocket cannot: its messages are then queued
 * without bound), and an immediate teardown.
 */
export interface WebSocketExtras {
  sendAcknowledged?(data: Uint8Array, done: (err?: Error) => void): void;
  pauseReading?(): void;
  resumeReading?(): void;
  terminate?(): void;
  /** The binaryType to ask for (default 'arraybuffer'; Node's `ws` can hand Buffers over with no copy). */
  binaryType?: string;
}

/** WebSocket.OPEN */
const OPEN = 1;
/** Close code for a normal end (both directions ended). */
export const WS_CLOSE_NORMAL = 1000;
/** Close code for an abort (the reason says why); 4000-4999 is the application's range. */
export const WS_CLOSE_ABORTED = 4001;
/** Close code after the peer sent something the channel does not take (a text frame). */
export const WS_CLOSE_UNSUPPORTED_DATA = 1003;
/** A close reason may hold 123 bytes. */
const CLOSE_REASON_MAX_CHARS = 60;

/** Bytes handed to the WebSocket and not yet sent before write() waits. */
export const WS_SEND_HIGH_BYTES = 4 << 20;
/** How often bufferedAmount is looked at while waiting (a standard WebSocket has no drain event). */
const SEND_POLL_MS = 2;
/** Received bytes queued ahead of the consumer before reading pauses (where it can). */
const RECEIVE_HIGH_BYTES = 4 << 20;
const RECEIVE_LOW_BYTES = 1 << 20;
/** How long release() waits for the peer's Close before tearing down. */
const CLOSE_WAIT_MS = 2000;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** RFC 6455's names for the close codes a user may meet. */
function describeClose(code: number, reason: string): string {
  const name =
    code === 1000 ? 'normal closure'
    : code === 1001 ? 'the peer went away'
    : code === 1002 ? 'protocol error'
    : code === 1003 ? 'unsupported data'
    : code === 1005 ? 'no status'
    : code === 1006 ? 'abnormal closure: the connection dropped without a Close frame'
    : code === 1009 ? 'message too big'
    : code === 1011 ? 'the peer hit an internal error'
    : code === WS_CLOSE_ABORTED ? 'the peer aborted'
    : 'close code';
  return `${name} (code ${code}${reason ? `: ${reason}` : ''})`;
}

function asError(reason: unknown, context: string): ChannelError {
  if (reason instanceof ChannelError) return reason;
  return new ChannelError(`${context}: ${reason instanceof Error ? reason.message : String(reason)}`, { cause: reason });
}

/** The channel over an open WebSocket. `uri` names it in errors. */
export function webSocketChannel(socket: MinimalWebSocket, uri: string, extras: WebSocketExtras = {}): MigrationChannel {
  const controller = new AbortController();
  const signal = controller.signal;
  const wake = new Wakeup();
  signal.addEventListener('abort', wake.notify, { once: true });

  const queue: Uint8Array[] = [];
  let queuedBytes = 0;
  let paused = false;
  let inputEnded = false; // the peer's end message came
  let inputClosed = false; // our consumer stopped reading
  let outputEnded = false; // our end message went out
  let failure: ChannelError | undefined; // the connection broke (or the peer broke the protocol)
  let closeEvent: { code: number; reason: string } | undefined;
  let outstandingBytes = 0; // sent with acknowledgement, not yet acknowledged
  // Both directions done: what comes after (the peer's Close, a dropped connection) loses nothing.
  const finished = (): boolean => (inputEnded || inputClosed) && outputEnded;

  let settleClosed!: () => void;
  const closed = new Promise<void>((resolve, reject) => {
    settleClosed = () => {
      if (signal.aborted) reject(asError(signal.reason, uri));
      else if (failure && !finished()) reject(failure);
      else resolve();
    };
  });

  const fail = (err: ChannelError): void => {
    failure ??= err;
    wake.notify();
  };

  socket.binaryType = extras.binaryType ?? 'arraybuffer';
  socket.onmessage = (event) => {
    const data = event.data;
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else {
      const what = typeof data === 'string' ? `a text frame (${data.length} characters)` : 'a message that is not an ArrayBuffer (binaryType must be arraybuffer)';
      fail(new ChannelError(`${uri}: ${what} arrived; the migration stream travels in binary frames only`));
      closeSocket(WS_CLOSE_UNSUPPORTED_DATA, 'binary frames only');
      return;
    }
    if (inputEnded || failure) return;
    if (bytes.length === 0) {
      inputEnded = true;
      wake.notify();
      finishIfDone();
      return;
    }
    if (inputClosed) return;
    queue.push(bytes);
    queuedBytes += bytes.length;
    if (queuedBytes >= RECEIVE_HIGH_BYTES && extras.pauseReading && !paused) {
      paused = true;
      extras.pauseReading();
    }
    wake.notify();
  };
  socket.onerror = (event) => {
    // Browsers say nothing in an error event (the close event follows); `ws` gives the cause.
    const message = (event as { message?: unknown } | undefined)?.message;
    if (typeof message === 'string' && message !== '') fail(new ChannelError(`${uri}: ${message}`, { cause: (event as { error?: unknown }).error }));
  };
  socket.onclose = (event) => {
    closeEvent = { code: event.code, reason: event.reason };
    if (!finished()) {
      const normal = event.code === WS_CLOSE_NORMAL;
      fail(new ChannelError(`${uri}: connection closed ${inputEnded ? 'before our end of the stream was sent' : 'before the end of the stream'}: ${normal ? 'the peer closed it' : describeClose(event.code, event.reason)}`));
    }
    wake.notify();
    settleClosed();
  };

  function closeSocket(code: number, reason: string): void {
    if (closeEvent) return;
    try {
      socket.close(code, reason.length > CLOSE_REASON_MAX_CHARS ? `${reason.slice(0, CLOSE_REASON_MAX_CHARS - 3)}...` : reason);
    } catch {
      /* already closing */
    }
  }

  function finishIfDone(): void {
    if (finished()) closeSocket(WS_CLOSE_NORMAL, 'done');
  }

  const check = (): void => {
    if (signal.aborted) throw asError(signal.reason, uri);
  };

  const input: ByteSource = {
    async read() {
      for (;;) {
        check();
        if (inputClosed) return null;
        // Data that came before a failure is still delivered: the reader gets up to where the stream broke.
        if (queue.length > 0) {
          const chunk = queue.shift()!;
          queuedBytes -= chunk.length;
          if (paused && queuedBytes < RECEIVE_LOW_BYTES) {
            paused = false;
            extras.resumeReading?.();
          }
          return chunk;
        }
        if (inputEnded) return null;
        if (failure) throw failure;
        await wake.wait();
      }
    },
    async close() {
      if (inputClosed) return;
      inputClosed = true;
      queue.length = 0;
      queuedBytes = 0;
      if (paused) extras.resumeReading?.();
      wake.notify();
      finishIfDone();
    },
  };

  const unsent = (): number => (extras.sendAcknowledged ? outstandingBytes : socket.bufferedAmount);
  const waitForRoom = async (limitBytes: number): Promise<void> => {
    while (unsent() > limitBytes) {
      check();
      if (failure) throw failure;
      if (extras.sendAcknowledged) await wake.wait();
      else await sleep(SEND_POLL_MS);
    }
    check();
    if (failure) throw failure;
  };
  const send = (bytes: Uint8Array): void => {
    if (socket.readyState !== OPEN) throw failure ?? new ChannelError(`${uri}: channel closed while writing`);
    if (!extras.sendAcknowledged) {
      socket.send(bytes);
      return;
    }
    outstandingBytes += bytes.length;
    extras.sendAcknowledged(bytes, (err) => {
      outstandingBytes -= bytes.length;
      if (err) fail(new ChannelError(`${uri}: write failed: ${err.message}`, { cause: err }));
      wake.notify();
    });
  };

  let closing: Promise<void> | undefined;
  const output: ByteSink = {
    async write(chunk) {
      check();
      if (failure) throw failure;
      if (closing) throw new ChannelError(`${uri}: write after close`);
      // An empty message means "end of stream" on this channel: never send one for an empty chunk.
      if (chunk.length === 0) return;
      send(chunk);
      await waitForRoom(WS_SEND_HIGH_BYTES);
    },
    close() {
      closing ??= (async () => {
        check();
        if (failure) throw failure;
        send(new Uint8Array(0));
        await waitForRoom(0);
        outputEnded = true;
        finishIfDone();
      })();
      return closing;
    },
  };

  const teardown = (): void => {
    if (extras.terminate) extras.terminate();
    else closeSocket(WS_CLOSE_ABORTED, 'aborted');
  };

  return new WebSocketChannel(uri, input, output, controller, closed, {
    release: async () => {
      closeSocket(WS_CLOSE_NORMAL, 'done');
      if (closeEvent) return;
      const timer = sleep(CLOSE_WAIT_MS).then(() => 'timeout' as const);
      if ((await Promise.race([closed.then(() => 'closed' as const, () => 'closed' as const), timer])) === 'timeout') teardown();
    },
    destroy: () => {
      // The reason reaches the peer (its error names it); the socket itself goes at once where it can.
      const why = signal.reason instanceof Error ? signal.reason.message : 'aborted';
      closeSocket(WS_CLOSE_ABORTED, why.replace(`${uri}: `, ''));
      if (extras.terminate) setTimeout(() => extras.terminate!(), 200);
    },
  });
}

/**
 * The MigrationChannel contract over the parts above (as channel.ts's Channel,
 * which lives beside Node's sockets and so cannot come into a browser).
 */
class WebSocketChannel implements MigrationChannel {
  readonly kind = 'ws' as const;
  readonly supportsReturnPath = true;
  private closing: Promise<void> | undefined;

  constructor(
    readonly uri: string,
    readonly input: ByteSource,
    readonly output: ByteSink,
    private readonly controller: AbortController,
    readonly closed: Promise<void>,
    private readonly socket: { release(): Promise<void>; destroy(): void },
  ) {
    closed.catch(() => {});
  }

  close(): Promise<void> {
    this.closing ??= this.finish();
    return this.closing;
  }

  private async finish(): Promise<void> {
    let failure: unknown;
    if (!this.controller.signal.aborted) {
      try {
        await this.output.close();
      } catch (err) {
        failure = err;
      }
      await this.input.close().catch(() => {});
    }
    await this.socket.release();
    if (failure !== undefined && !this.controller.signal.aborted) throw failure;
  }

  abort(reason?: unknown): void {
    if (!this.controller.signal.aborted) {
      const why = reason === undefined ? 'aborted' : asError(reason, 'aborted').message;
      this.controller.abort(reason instanceof ChannelError ? reason : new ChannelError(`${this.uri}: ${why}`, { cause: reason }));
    }
    this.socket.destroy();
  }
}

export interface WebSocketConnectOptions {
  signal?: AbortSignal;
  connectTimeoutMs?: number;
}

/** Open `create()`'s WebSocket and wait for it to be open; setup failures are TransportErrors naming `uri`. */
export function openWebSocket<T extends MinimalWebSocket>(create: () => T, uri: string, options: WebSocketConnectOptions = {}): Promise<T> {
  const { signal, connectTimeoutMs } = options;
  if (signal?.aborted) return Promise.reject(new TransportError('aborted', uri, `${uri}: connect aborted`, { cause: signal.reason }));
  let socket: T;
  try {
    socket = create();
  } catch (err) {
    return Promise.reject(new TransportError('connect-failed', uri, `cannot connect to ${uri}: ${(err as Error).message}`, { cause: err }));
  }
  return new Promise<T>((resolve, reject) => {
    let errorText = '';
    let timer: ReturnType<typeof setTimeout> | undefined;
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.onopen = socket.onclose = socket.onerror = null;
      if (!err) {
        resolve(socket);
        return;
      }
      socket.onerror = () => {}; // a late error of a socket given up on is nobody's concern
      try {
        socket.close();
      } catch {
        /* not open yet */
      }
      reject(err);
    };
    const onAbort = (): void => finish(new TransportError('aborted', uri, `${uri}: connect aborted`, { cause: signal!.reason }));
    socket.onopen = () => finish();
    socket.onerror = (event) => {
      const message = (event as { message?: unknown } | undefined)?.message;
      if (typeof message === 'string') errorText = message;
    };
    socket.onclose = (event) => {
      const why = errorText || describeClose(event.code, event.reason);
      const hint = /\b404\b/.test(why) ? ' (nothing listens on this path)' : '';
      finish(new TransportError('connect-failed', uri, `cannot connect to ${uri}: ${why}${hint}`));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    if (connectTimeoutMs !== undefined) {
      timer = setTimeout(() => finish(new TransportError('timeout', uri, `cannot connect to ${uri}: no answer within ${connectTimeoutMs} ms`)), connectTimeoutMs);
    }
  });
}
