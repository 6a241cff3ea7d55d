/**
 * Waiting, shared by the transports: a wake-up for readers and writers of a channel, and the
 * wait of a listener's accept(). No Node APIs (the WebSocket channel also runs in browsers).
 */
import type { MigrationChannel } from '../wire/channel.js';
import { TransportError } from './errors.js';

/** Wakes every waiter on the next notify(): one set of listeners instead of one per call. */
export class Wakeup {
  private waiters: Array<() => void> = [];
  wait(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  readonly notify = (): void => {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  };
}

/** A pending accept(), settled by the listener when a channel arrives or it closes. */
export type ChannelWaiter = { resolve(channel: MigrationChannel): void; reject(err: Error): void };

/**
 * accept()'s wait: one waiter at a time; `signal` aborts it. `install` puts the waiter where the
 * listener settles it (undefined once aborted); `settle` hands over a channel that already arrived.
 */
export function waitForChannel(
  uri: string,
  signal: AbortSignal | undefined,
  alreadyWaiting: boolean,
  install: (waiter: ChannelWaiter | undefined) => void,
  settle: () => void,
): Promise<MigrationChannel> {
  if (alreadyWaiting) return Promise.reject(new TransportError('closed', uri, `${uri}: accept() is already waiting`));
  if (signal?.aborted) return Promise.reject(new TransportError('aborted', uri, `${uri}: accept aborted`, { cause: signal.reason }));
  return new Promise<MigrationChannel>((resolve, reject) => {
    const onAbort = (): void => {
      install(undefined);
      reject(new TransportError('aborted', uri, `${uri}: accept aborted`, { cause: signal!.reason }));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    install({
      resolve: (channel) => {
        signal?.removeEventListener('abort', onAbort);
        resolve(channel);
      },
      reject: (err) => {
        signal?.removeEventListener('abort', onAbort);
        reject(err);
      },
    });
    settle();
  });
}
