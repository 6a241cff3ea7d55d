/**
 * The Node side of the ws: transport, with the `ws` package: connecting
 * (its client has the standard WebSocket shape) and listening (an HTTP
 * server whose upgrades on the URI's path become migration channels; other
 * paths get 404). The channel itself is websocket-channel.ts, shared with
 * browsers.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer } from 'ws';
import createDebug from 'debug';
import type { MigrationChannel } from '../wire/channel.js';
import { TransportError } from './errors.js';
import type { AcceptOptions, IncomingListener, ListenOptions } from './incoming.js';
import { formatTcpUri, formatWsUri, type MigrationAddress } from './uri.js';
import { openWebSocket, webSocketChannel, type MinimalWebSocket, type WebSocketConnectOptions, type WebSocketExtras } from './websocket-channel.js';
import { waitForChannel, type ChannelWaiter } from './waiting.js';

const log = createDebug('livemig:transport');

type WsAddress = Extract<MigrationAddress, { kind: 'ws' }>;

/** Largest message taken: the engine's chunks are far smaller; this bounds what a stranger can make us buffer. */
export const WS_MAX_PAYLOAD_BYTES = 64 << 20;

/** What `ws` offers beyond the standard interface: send acknowledgements, paused reads, terminate. */
function nodeExtras(socket: WebSocket): WebSocketExtras {
  return {
    binaryType: 'nodebuffer', // Buffers as received, no copy into an ArrayBuffer
    sendAcknowledged: (data, done) => socket.send(data, { binary: true }, (err) => done(err ?? undefined)),
    pauseReading: () => socket.pause(),
    resumeReading: () => socket.resume(),
    terminate: () => socket.terminate(),
  };
}

/** The standard WebSocket shape, as `ws`'s types declare it a little differently (handler `this`, send's overloads). */
function asMinimal(socket: WebSocket): MinimalWebSocket {
  return socket as unknown as MinimalWebSocket;
}

export async function connectWebSocket(address: WsAddress, options: WebSocketConnectOptions = {}): Promise<MigrationChannel> {
  const { uri } = address;
  const url = formatWsUri(address.host, address.port, address.path);
  const socket = await openWebSocket(
    // A zero mask: `ws` then skips masking here and unmasking at a `ws` server (both byte loops in
    // JavaScript, without the optional native bufferutil). Masking guards proxies against scripts a
    // browser runs for a web page; this client is not one (browsers always mask, and that still works).
    () => asMinimal(new WebSocket(url, { perMessageDeflate: false, maxPayload: WS_MAX_PAYLOAD_BYTES, generateMask: (mask: Buffer) => void mask.fill(0) })),
    uri,
    options,
  );
  const ws = socket as unknown as WebSocket;
  // Latency matters more than packet count (return-path requests, small final sections).
  (ws as unknown as { _socket?: { setNoDelay?(on: boolean): void } })._socket?.setNoDelay?.(true);
  log('connected to %s', uri);
  return webSocketChannel(socket, uri, nodeExtras(ws));
}

/**
 * Listens on HOST:PORT and takes WebSocket upgrades on PATH. Without
 * multiChannel the first one is the channel and listening stops; with it,
 * every upgrade on PATH is handed out in turn (the engine then tells the
 * source's stream from strangers by its first bytes). Plain HTTP requests
 * and upgrades on other paths are answered and never end the wait.
 */
export class WebSocketListener implements IncomingListener {
  readonly address: string;
  private arrived: MigrationChannel[] = [];
  private taken = false;
  private closed = false;
  private waiter: ChannelWaiter | undefined;
  private readonly wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: WS_MAX_PAYLOAD_BYTES });

  private constructor(
    readonly uri: string,
    private readonly path: string,
    private readonly server: Server,
    private readonly multi: boolean,
    private readonly options: ListenOptions,
  ) {
    const bound = server.address();
    this.address = typeof bound === 'object' && bound !== null ? formatWsUri(bound.address, bound.port, path) : uri;
    server.on('request', (request, response) => {
      const here = pathOf(request) === path;
      response.writeHead(here ? 426 : 404, { 'content-type': 'text/plain', connection: 'close' });
      response.end(here ? 'livemig: this path takes a WebSocket migration stream only\n' : 'livemig: no migration waits on this path\n');
    });
    server.on('upgrade', (request, socket, head) => this.onUpgrade(request, socket, head));
    // Bytes that are not HTTP at all (a port scan, a raw migration stream sent to a ws: port).
    server.on('clientError', (err: Error & { code?: string }, socket: Duplex) => {
      if (socket.writable && err.code !== 'ECONNRESET') socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      else socket.destroy();
      if (!this.closed && err.code !== 'ECONNRESET') this.options.onRejected?.(`a connection to ${this.address} was refused: not a WebSocket handshake (${err.message})`);
    });
  }

  static async listen(address: WsAddress, options: ListenOptions = {}): Promise<WebSocketListener> {
    const { uri } = address;
    if (options.tls) throw new TransportError('unsupported', uri, `${uri}: TLS (tls-creds) runs on tcp: and unix: channels only; wss: is not implemented`);
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(new TransportError('listen-failed', uri, `cannot listen on ${uri}: ${err.message}`, { cause: err }));
      server.once('error', onError);
      server.listen({ host: address.host, port: address.port }, () => {
        server.off('error', onError);
        resolve();
      });
    });
    log('listening on %s', uri);
    return new WebSocketListener(uri, address.path, server, options.multiChannel === true, options);
  }

  private onUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {}); // a reset during the handshake is the peer's business
    const from = request.socket.remoteAddress ? formatTcpUri(request.socket.remoteAddress, request.socket.remotePort ?? 0).slice(4) : 'a peer';
    if (pathOf(request) !== this.path) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      this.options.onRejected?.(`a WebSocket from ${from} for path ${JSON.stringify(request.url ?? '')} was refused with 404: the migration waits on ${this.path}`);
      return;
    }
    if (this.closed || (!this.multi && this.taken) || (!this.multi && this.arrived.length > 0)) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    this.wss.handleUpgrade(request, socket, head, (ws) => {
      log('%s: WebSocket from %s', this.uri, from);
      if (this.closed) {
        ws.terminate();
        return;
      }
      (socket as unknown as { setNoDelay?(on: boolean): void }).setNoDelay?.(true);
      this.arrived.push(webSocketChannel(asMinimal(ws), this.address, nodeExtras(ws)));
      if (!this.multi) this.stopListening();
      this.settle();
    });
  }

  private stopListening(): void {
    if (this.server.listening) {
      log('%s: stop listening', this.uri);
      this.server.close();
    }
    // Plain HTTP connections still open (keep-alive, a half-sent request); upgraded ones are not the server's any more.
    this.server.closeAllConnections();
  }

  private settle(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    if (this.arrived.length > 0 && (this.multi || !this.taken)) {
      this.waiter = undefined;
      this.taken = true;
      waiter.resolve(this.arrived.shift()!);
    } else if (this.closed) {
      this.waiter = undefined;
      waiter.reject(new TransportError('closed', this.uri, `${this.uri}: listener closed`));
    }
  }

  accept(options: AcceptOptions = {}): Promise<MigrationChannel> {
    const { signal } = options;
    if (this.taken && !this.multi) return Promise.reject(new TransportError('closed', this.uri, `${this.uri}: the connection was already accepted`));
    if (this.closed && this.arrived.length === 0) return Promise.reject(new TransportError('closed', this.uri, `${this.uri}: listener closed`));
    return waitForChannel(this.uri, signal, this.waiter !== undefined, (waiter) => (this.waiter = waiter), () => this.settle());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopListening();
    for (const channel of this.arrived.splice(0)) channel.abort('listener closed before the connection was accepted');
    this.settle();
  }
}

/** The request's path without a query (the URI has none; a client may add one). */
function pathOf(request: IncomingMessage): string {
  const url = request.url ?? '';
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}
