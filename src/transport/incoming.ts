/**
 * The destination side: wait for the channel the migration stream comes in on.
 *
 * tcp/unix listen until the first connection arrives and then stop, or with
 * multiChannel (multifd, and a destination that must survive strangers) keep
 * listening until closed; with TLS every connection runs its handshake first
 * (tls.ts). Plain sockets read into a ring of reused buffers. exec/file start the
 * command or open the file right away, like QEMU's `-incoming`, so a bad
 * command or missing file fails early; accept() then hands that channel out.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import { FileSource } from '../wire/node-channels.js';
import { acceptedSocketChannel, fileChannel, type MigrationChannel } from './channel.js';
import { TransportError } from './errors.js';
import { ExecChild, execIncomingChannel } from './exec.js';
import { secureServer, type TlsServerSettings } from './tls.js';
import createDebug from 'debug';

const log = createDebug('livemig:transport');
import { formatTcpUri, parseMigrationUri } from './uri.js';
import { WebSocketListener } from './websocket-node.js';
import { waitForChannel, type ChannelWaiter } from './waiting.js';

export interface AcceptOptions {
  signal?: AbortSignal;
}

export interface ListenOptions {
  /**
   * tcp/unix: keep listening after the first connection, and let accept()
   * hand out every connection in arrival order (multifd's extra channels).
   */
  multiChannel?: boolean;
  /**
   * tcp/unix: every connection runs a TLS handshake (and tls-authz) before it
   * is accepted; one that fails is dropped, reported to onRejected, and the
   * listener keeps listening (a stranger cannot end the wait).
   */
  tls?: TlsServerSettings;
  /** Why a connection was dropped before it was handed out (TLS handshake or authorization). */
  onRejected?(reason: string): void;
}

/** Connections in their TLS handshake at once; more are dropped at once (a flood must not pile up). */
export const MAX_PENDING_HANDSHAKES = 16;

/** `file:` reads 1 MiB at a time into this many reused buffers (FileSource's ring): 4 MiB, as long a lag as the socket ring allows its consumer. */
const FILE_RING_CHUNKS = 4;

export interface IncomingListener {
  /** The URI as given. */
  readonly uri: string;
  /** Where peers connect: the bound `tcp:HOST:PORT` (the real port when 0 was given), else the URI. */
  readonly address: string;
  /** The first (only) connection; a second call rejects (unless listening with multiChannel: then the next one). */
  accept(options?: AcceptOptions): Promise<MigrationChannel>;
  /** Stop listening (removes a unix socket file); aborts a channel not yet accepted. Idempotent. */
  close(): Promise<void>;
  /** Exactly one channel, there from the start (exec:, file:, one opened elsewhere): no connections to tell apart. */
  readonly oneChannel?: boolean;
}

export async function listenIncoming(uri: string, options: ListenOptions = {}): Promise<IncomingListener> {
  const address = parseMigrationUri(uri);
  const multi = options.multiChannel === true;
  if (options.tls && address.kind !== 'tcp' && address.kind !== 'unix') {
    throw new TransportError('unsupported', uri, `${uri}: TLS (tls-creds) runs on tcp: and unix: channels only${address.kind === 'ws' ? '; wss: is not implemented' : ''}`);
  }
  switch (address.kind) {
    case 'tcp':
      // An empty host listens on every address, like QEMU.
      return SocketListener.listen(uri, 'tcp', { port: address.port, ...(address.host ? { host: address.host } : {}) }, multi, options);
    case 'unix':
      await removeStaleSocket(uri, address.path);
      return SocketListener.listen(uri, 'unix', { path: address.path }, multi, options);
    case 'ws':
      return WebSocketListener.listen(address, options);
    case 'exec':
      return new ReadyListener(uri, execIncomingChannel(await ExecChild.spawn(uri, address.command, 'incoming')));
    case 'file': {
      let source: FileSource;
      try {
        // The loader copies each chunk's pages out at once, as it does a socket's ring: the file's chunks may be reused too.
        source = await FileSource.open(address.path, { ringChunks: FILE_RING_CHUNKS });
      } catch (err) {
        throw new TransportError('open-failed', uri, `${uri}: ${(err as Error).message}`, { cause: err });
      }
      return new ReadyListener(uri, fileChannel(uri, { input: source }));
    }
  }
}

/**
 * A socket file left by a process that died cannot be listened on (EADDRINUSE).
 * QEMU unlinks whatever is there; we only remove sockets, never a regular file.
 */
async function removeStaleSocket(uri: string, path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(path)).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new TransportError('listen-failed', uri, `${uri}: ${(err as Error).message}`, { cause: err });
  }
  if (!isSocket) throw new TransportError('listen-failed', uri, `${uri}: ${path} exists and is not a socket`);
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw new TransportError('listen-failed', uri, `${uri}: cannot remove stale socket: ${err.message}`, { cause: err });
  });
}

function peerName(socket: Socket): string {
  return socket.remoteAddress ? formatTcpUri(socket.remoteAddress, socket.remotePort ?? 0).slice(4) : 'a local peer';
}

class SocketListener implements IncomingListener {
  readonly address: string;
  private arrived: MigrationChannel | undefined; // connected, not yet accepted
  private taken = false;
  private closed = false;
  private failure: TransportError | undefined;
  private waiter: ChannelWaiter | undefined;
  /** multiChannel: connections arrived after the first, not yet accepted. */
  private readonly more: MigrationChannel[] = [];

  private pendingHandshakes = 0;

  private constructor(
    readonly uri: string,
    private readonly kind: 'tcp' | 'unix',
    private readonly server: Server,
    private readonly multi = false,
    private readonly options: ListenOptions = {},
  ) {
    const bound = server.address();
    this.address = typeof bound === 'object' && bound !== null ? formatTcpUri(bound.address, bound.port) : uri;
    server.on('connection', (socket) => (options.tls ? this.onTlsConnection(socket, options.tls) : this.onConnection(socket)));
    server.on('error', (err) => {
      this.failure ??= new TransportError('listen-failed', uri, `${uri}: ${err.message}`, { cause: err });
      this.settle();
    });
  }

  static async listen(
    uri: string,
    kind: 'tcp' | 'unix',
    target: { host?: string; port: number } | { path: string },
    multi = false,
    options: ListenOptions = {},
  ): Promise<SocketListener> {
    const server = createServer({ allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void =>
        reject(new TransportError('listen-failed', uri, `cannot listen on ${uri}: ${err.message}`, { cause: err }));
      server.once('error', onError);
      server.listen(target, () => {
        log('listening on %s', uri);
        server.off('error', onError);
        resolve();
      });
    });
    return new SocketListener(uri, kind, server, multi, options);
  }

  /** Handshake first; only a secured, authorized connection arrives. */
  private onTlsConnection(socket: Socket, tls: TlsServerSettings): void {
    if (this.closed || (!this.multi && (this.arrived || this.taken))) {
      socket.destroy();
      return;
    }
    if (this.pendingHandshakes >= MAX_PENDING_HANDSHAKES) {
      socket.destroy();
      this.options.onRejected?.(`a connection from ${peerName(socket)} was dropped: ${MAX_PENDING_HANDSHAKES} TLS handshakes are already in progress`);
      return;
    }
    this.pendingHandshakes++;
    const from = peerName(socket);
    secureServer(socket, tls, this.uri).then(
      ({ socket: secure }) => {
        this.pendingHandshakes--;
        this.onConnection(secure as unknown as Socket);
      },
      (err: Error) => {
        this.pendingHandshakes--;
        if (!this.closed) this.options.onRejected?.(`a connection from ${from} was refused: ${err.message}`);
      },
    );
  }

  private onConnection(socket: Socket): void {
    log('%s: connection from %s', this.uri, peerName(socket));
    if (this.multi && !this.closed) {
      const channel = acceptedSocketChannel(socket, this.kind === 'tcp' ? this.address : this.uri, this.kind);
      if (this.arrived || this.taken) this.more.push(channel);
      else this.arrived = channel;
      this.settle();
      return;
    }
    if (this.arrived || this.taken || this.closed) {
      socket.destroy(); // connections racing the first one, before the listener closed
      return;
    }
    this.arrived = acceptedSocketChannel(socket, this.kind === 'tcp' ? this.address : this.uri, this.kind);
    this.stopListening();
    this.settle();
  }

  /** Closes the listening socket (libuv unlinks a unix socket's file); the accepted connection stays. */
  private stopListening(): void {
    if (this.server.listening) log('%s: stop listening', this.uri);
    if (this.server.listening) this.server.close();
  }

  private settle(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    if (this.arrived) {
      this.waiter = undefined;
      this.taken = true;
      const channel = this.arrived;
      this.arrived = undefined;
      waiter.resolve(channel);
    } else if (this.multi && this.taken && this.more.length > 0) {
      this.waiter = undefined;
      waiter.resolve(this.more.shift()!);
    } else if (this.closed || this.failure) {
      this.waiter = undefined;
      waiter.reject(this.failure ?? new TransportError('closed', this.uri, `${this.uri}: listener closed`));
    }
  }

  accept(options: AcceptOptions = {}): Promise<MigrationChannel> {
    const { signal } = options;
    if (this.taken && !this.multi) return Promise.reject(new TransportError('closed', this.uri, `${this.uri}: the connection was already accepted`));
    if (this.closed && this.multi) return Promise.reject(new TransportError('closed', this.uri, `${this.uri}: listener closed`));
    return waitForChannel(this.uri, signal, this.waiter !== undefined, (waiter) => (this.waiter = waiter), () => this.settle());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopListening();
    this.arrived?.abort('listener closed before the connection was accepted');
    this.arrived = undefined;
    for (const c of this.more.splice(0)) c.abort('listener closed before the connection was accepted');
    this.settle();
  }
}

/** exec/file: the channel exists from the start; accept() hands it out once. */
class ReadyListener implements IncomingListener {
  readonly oneChannel = true;
  readonly address: string;
  private channel: MigrationChannel | undefined;
  constructor(readonly uri: string, channel: MigrationChannel) {
    this.address = uri;
    this.channel = channel;
  }
  async accept(options: AcceptOptions = {}): Promise<MigrationChannel> {
    if (options.signal?.aborted) throw new TransportError('aborted', this.uri, `${this.uri}: accept aborted`, { cause: options.signal.reason });
    const channel = this.channel;
    if (!channel) throw new TransportError('closed', this.uri, `${this.uri}: listener closed or channel already accepted`);
    this.channel = undefined;
    return channel;
  }
  async close(): Promise<void> {
    this.channel?.abort('listener closed before the channel was accepted');
    this.channel = undefined;
  }
}
