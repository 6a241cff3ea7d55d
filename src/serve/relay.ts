/**
 * Pipes two WebSockets into each other, message by message, for `livemig
 * serve`: the page's socket and a `livemig run` child's. A browser can only
 * connect, so serve stands between the two connecting ends (or between the
 * page and a child that listens) and the page needs serve's one port only.
 *
 * Messages go through as they are, empty ones too (the migration channel's
 * end-of-direction mark, see transport/websocket-channel.ts), and so does a
 * Close's code and reason, so each end sees what the other said. A slow
 * receiver pauses reading from the sender (backpressure across the relay).
 */
import type { RawData, WebSocket } from 'ws';

/** Bytes forwarded and not yet written to the receiving socket before the sender is paused. */
const RELAY_HIGH_BYTES = 8 << 20;
const RELAY_LOW_BYTES = 2 << 20;

export interface RelayResult {
  /** Bytes carried each way. */
  aToBBytes: number;
  bToABytes: number;
  /** The first Close seen: which end closed, and its code and reason. */
  closedBy: 'a' | 'b';
  code: number;
  reason: string;
}

/** Close codes a Close frame may carry (1005, 1006 and 1015 are only reported, never sent). */
function sendableCode(code: number): number {
  return code === 1000 || (code >= 1001 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999) ? code : 1011;
}

function bytesOf(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/** Relays until either side closes; resolves when both are closed. */
export function relayWebSockets(a: WebSocket, b: WebSocket): Promise<RelayResult> {
  const counts = { a: 0, b: 0 };
  let first: { closedBy: 'a' | 'b'; code: number; reason: string } | undefined;
  const pipe = (from: WebSocket, to: WebSocket, name: 'a' | 'b'): void => {
    let pendingBytes = 0;
    let paused = false;
    from.on('message', (data, isBinary) => {
      const bytes = bytesOf(data);
      counts[name] += bytes.length;
      if (to.readyState !== to.OPEN) return;
      pendingBytes += bytes.length;
      to.send(bytes, { binary: isBinary }, () => {
        pendingBytes -= bytes.length;
        if (paused && pendingBytes < RELAY_LOW_BYTES) {
          paused = false;
          from.resume();
        }
      });
      if (!paused && pendingBytes >= RELAY_HIGH_BYTES) {
        paused = true;
        from.pause();
      }
    });
    from.on('close', (code, reason) => {
      first ??= { closedBy: name, code, reason: reason.toString() };
      if (paused) from.resume();
      if (to.readyState === to.OPEN) to.close(sendableCode(code), reason.toString().slice(0, 120));
      else if (to.readyState === to.CONNECTING) to.terminate();
    });
    // The close event follows an error; the other side is closed there.
    from.on('error', () => {});
  };
  pipe(a, b, 'a');
  pipe(b, a, 'b');
  const closed = (socket: WebSocket): Promise<void> => (socket.readyState === socket.CLOSED ? Promise.resolve() : new Promise((resolve) => socket.once('close', () => resolve())));
  return Promise.all([closed(a), closed(b)]).then(() => ({ aToBBytes: counts.a, bToABytes: counts.b, ...first! }));
}
