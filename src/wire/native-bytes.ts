/**
 * The few byte operations the core wants native: on Node, Buffer's memcmp,
 * memcpy (through fill) and unzeroed allocation; in a browser, where there is
 * no Buffer, plain typed-array code that gives the same results. Chosen once,
 * when this module loads, so the core itself imports nothing from Node.
 */

/** Node's Buffer when there is one (looked up on globalThis: a bare `Buffer` is a ReferenceError in a browser). */
const NodeBuffer: typeof Buffer | undefined = (globalThis as { Buffer?: typeof Buffer }).Buffer;

/** Whether Buffer's native paths are in use (false in a browser). */
export const NATIVE_BYTES = NodeBuffer !== undefined;

const nativeCompare = NodeBuffer?.prototype.compare;
const nativeFill = NodeBuffer?.prototype.fill;

/** Whether a[aStart, aStart + length) equals b[bStart, bStart + length); both ranges must be in bounds. */
export function rangesEqual(a: Uint8Array, aStart: number, b: Uint8Array, bStart: number, length: number): boolean {
  // Buffer's compare takes any Uint8Array as `this` and target: no Buffer is made per call.
  if (nativeCompare) return nativeCompare.call(a, b, bStart, bStart + length, aStart, aStart + length) === 0;
  if (aStart < 0 || bStart < 0 || aStart + length > a.length || bStart + length > b.length) throw new RangeError('rangesEqual: range out of bounds');
  for (let i = 0; i < length; i++) if (a[aStart + i] !== b[bStart + i]) return false;
  return true;
}

/**
 * target[targetOffset, +source.length) = source as one native memcpy, any
 * alignment, also to and from shared memory (Buffer's fill with the source as
 * the pattern covers the range exactly once). Without Buffer: set(). The two
 * must not share a buffer.
 */
export function copyUnaligned(target: Uint8Array, targetOffset: number, source: Uint8Array): void {
  if (nativeFill) nativeFill.call(target, source, targetOffset, targetOffset + source.length);
  else target.set(source, targetOffset);
}

/** n bytes of fresh memory, not zero-filled on Node (every byte must be written before it is read). */
export function allocateBytes(n: number): Uint8Array {
  if (!NodeBuffer) return new Uint8Array(n);
  const b = NodeBuffer.allocUnsafeSlow(n);
  return new Uint8Array(b.buffer, b.byteOffset, n);
}

/**
 * Resolves after pending I/O and timers had a turn: setImmediate on Node;
 * in a browser a MessageChannel message (setTimeout(0) is clamped to 4 ms
 * once nested, which would throttle a loop that yields often).
 */
const nodeSetImmediate = (globalThis as { setImmediate?: (callback: () => void) => unknown }).setImmediate;
export const yieldToEventLoop: () => Promise<void> = nodeSetImmediate ? () => new Promise<void>((resolve) => nodeSetImmediate(resolve)) : messageChannelYield();

/** The web MessageChannel as used here (Node's typings describe a different MessagePort). */
interface WebMessageChannel {
  port1: { onmessage: (() => void) | null };
  port2: { postMessage(message: unknown): void };
}

function messageChannelYield(): () => Promise<void> {
  let channel: WebMessageChannel | undefined;
  const waiting: Array<() => void> = [];
  return () =>
    new Promise<void>((resolve) => {
      if (!channel) {
        channel = new (globalThis as unknown as { MessageChannel: new () => WebMessageChannel }).MessageChannel();
        channel.port1.onmessage = () => waiting.shift()?.();
      }
      waiting.push(resolve);
      channel.port2.postMessage(null);
    });
}

/** SharedArrayBuffer is undefined in a page that is not cross-origin isolated: `instanceof` it would throw. */
const SharedMemory: typeof SharedArrayBuffer | undefined = (globalThis as { SharedArrayBuffer?: typeof SharedArrayBuffer }).SharedArrayBuffer;

/** Whether `buffer` is shared memory (a SharedArrayBuffer), false where there is none. */
export function isSharedMemory(buffer: ArrayBufferLike): boolean {
  return SharedMemory !== undefined && buffer instanceof SharedMemory;
}

/**
 * `timer` no longer keeps Node's process alive (a watchdog or a grace period
 * must not delay exit); in a browser, where setTimeout returns a number, nothing.
 */
export function unrefTimer<T>(timer: T): T {
  (timer as { unref?: () => void }).unref?.();
  return timer;
}
