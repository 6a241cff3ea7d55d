/**
 * How the migration loops open their channels, injected so the loops run in
 * Node and in a browser alike:
 *
 * - Node (the default): node-channels.ts — tcp:, unix:, exec:,
 *   file:, ws:, TLS on tcp:/unix:, and multifd's extra connections with their
 *   worker threads. Loaded on first use by a dynamic import the browser
 *   bundler does not follow, so nothing of it is in the browser bundle.
 * - A browser: browser/channels.ts — ws:// only, and the page is always the
 *   connecting side (a page cannot listen): as a destination it connects to a
 *   ws URL and receives the stream on that connection.
 * - One channel that is already open (a memory pipe, a WebSocket a server
 *   accepted from a page): openedChannels().
 */
import type { MultifdReceiver, MultifdReceiverOptions } from '../ram/multifd/receiver.js';
import type { MultifdSender, MultifdSenderOptions, MultifdSendThreads } from '../ram/multifd/sender.js';
import type { IncomingListener, ListenOptions } from '../transport/incoming.js';
import type { TlsClientSettings } from '../transport/tls.js';
import { TransportError } from '../transport/errors.js';
import type { MigrationChannel } from '../wire/index.js';
import { MigrationError } from './errors.js';

export type { IncomingListener, ListenOptions };

export interface MigrationChannels {
  /** Where these channels work ('node', 'browser', 'opened'): said in refusals. */
  readonly platform: string;
  /** The source's main channel to `uri` (TLS when `tls` is given). */
  connect(uri: string, options: { tls?: TlsClientSettings }): Promise<MigrationChannel>;
  /** The destination's: the source's connection(s) to `uri`, handed out by accept(). */
  listen(uri: string, options: ListenOptions): Promise<IncomingListener>;
  /** Multifd's channels and threads; absent where there are none (a browser): multifd is then refused. */
  readonly multifd?: {
    openSender(options: MultifdSenderOptions): Promise<MultifdSender>;
    /** Start the send threads before the migration (given to openSender as `prestarted`); undefined where threads cannot be used. */
    prestartSender?(options: Omit<MultifdSenderOptions, 'connect'>): MultifdSendThreads | undefined;
    createReceiver(options: MultifdReceiverOptions): MultifdReceiver;
  };
}

/** Whether this is Node (looked up on globalThis: a bare `process` is a ReferenceError in a browser). */
const IS_NODE = typeof (globalThis as { process?: { versions?: { node?: unknown } } }).process?.versions?.node === 'string';

let nodeChannels: Promise<MigrationChannels> | undefined;

/**
 * Node's channels, for an engine given none. The module path is put
 * together at run time so that a bundler (esbuild for the browser core)
 * leaves Node's transports out; in a browser this refuses, naming the fix.
 */
export function defaultChannels(): Promise<MigrationChannels> {
  if (!IS_NODE) {
    return Promise.reject(new MigrationError('refused', 'no channels were given to this migration, and outside Node there are no default ones: pass `channels` (browserChannels() for ws:// URIs, or openedChannels(channel) for a channel already open)'));
  }
  const specifier = ['.', 'node-channels.js'].join('/');
  nodeChannels ??= import(specifier).then((m: { NODE_CHANNELS: MigrationChannels }) => m.NODE_CHANNELS);
  return nodeChannels;
}

// In Node, load them as soon as the engine is loaded: a first migration would otherwise
// spend ~30 ms of its setup importing Node's transports, TLS and multifd. A failure
// shows when a migration asks for them.
if (IS_NODE) defaultChannels().catch(() => {});

/** Why multifd cannot run over `channels`, or undefined when it can. */
export function multifdUnavailable(channels: MigrationChannels): string | undefined {
  if (channels.multifd) return undefined;
  return channels.platform === 'browser'
    ? 'multifd is not available in a browser (it needs worker threads and several tcp: or unix: connections); migrate without capability multifd'
    : `multifd is not available over ${channels.platform} channels (one channel, already open); migrate without capability multifd`;
}

/**
 * A listener over exactly one channel that is already there: accept() hands
 * it out once; a second accept() waits until close() (the engine asks again
 * only for more connections, which never come).
 */
export class OpenedChannelListener implements IncomingListener {
  readonly address: string;
  /** One channel and nothing else: no connections to tell apart (as exec: and file:). */
  readonly oneChannel = true;
  private channel: MigrationChannel | undefined;
  private closed = false;
  private wakeClosed: (() => void) | undefined;

  constructor(
    readonly uri: string,
    channel: MigrationChannel,
  ) {
    this.address = uri;
    this.channel = channel;
  }

  async accept(): Promise<MigrationChannel> {
    const channel = this.channel;
    if (channel) {
      this.channel = undefined;
      return channel;
    }
    if (!this.closed) await new Promise<void>((resolve) => (this.wakeClosed = resolve));
    throw new TransportError('closed', this.uri, `${this.uri}: listener closed or channel already accepted`);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.channel?.abort(new Error('listener closed before the channel was accepted'));
    this.channel = undefined;
    this.wakeClosed?.();
  }
}

/**
 * Channels for one migration over `channel`, already open: the source sends
 * on it (whatever URI start() is given), or the destination receives from
 * it (listen()'s URI only names it in messages). For a memory pipe, or a
 * WebSocket a server accepted from a page. Used once.
 */
export function openedChannels(channel: MigrationChannel): MigrationChannels {
  let taken = false;
  const take = (uri: string): MigrationChannel => {
    if (taken) throw new TransportError('closed', uri, `${uri}: the opened channel was used already (openedChannels() serves one migration)`);
    taken = true;
    return channel;
  };
  return {
    platform: 'opened',
    connect: async (uri, options) => {
      if (options.tls) throw new TransportError('unsupported', uri, `${uri}: TLS (tls-creds) is not available on an opened channel`);
      return take(uri);
    },
    listen: async (uri, options) => {
      if (options.tls) throw new TransportError('unsupported', uri, `${uri}: TLS (tls-creds) is not available on an opened channel`);
      return new OpenedChannelListener(uri, take(uri));
    },
  };
}
