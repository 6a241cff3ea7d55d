/** The source side: open the channel the migration stream goes out on. */
import { connect, type Socket, type NetConnectOpts } from 'node:net';
import { FileSink } from '../wire/node-channels.js';
import { fileChannel, socketChannel, type MigrationChannel } from './channel.js';
import { TransportError } from './errors.js';
import { EXEC_EXIT_TIMEOUT_MS, ExecChild, execOutgoingChannel } from './exec.js';
import { secureClient, type TlsClientSettings } from './tls.js';
import { parseMigrationUri } from './uri.js';
import { connectWebSocket } from './websocket-node.js';
import createDebug from 'debug';

const log = createDebug('livemig:transport');

export interface ConnectOptions {
  /** Cancels the connect (or spawn/open); the promise then rejects with TransportError 'aborted'. */
  signal?: AbortSignal;
  /** Give up a tcp/unix connect after this long (default: the system's own timeout). */
  connectTimeoutMs?: number;
  /** exec: how long closing waits for the command to exit after the end of the stream. */
  execExitTimeoutMs?: number;
  /** tcp/unix: run a TLS handshake first (tls-creds); the channel then carries the session. */
  tls?: TlsClientSettings;
}

function abortedError(uri: string, signal: AbortSignal): TransportError {
  return new TransportError('aborted', uri, `${uri}: connect aborted`, { cause: signal.reason });
}

export async function connectOutgoing(uri: string, options: ConnectOptions = {}): Promise<MigrationChannel> {
  const address = parseMigrationUri(uri);
  log('connecting to %s%s', uri, options.tls ? ' (TLS)' : '');
  const { signal } = options;
  if (signal?.aborted) throw abortedError(uri, signal);
  const { tls } = options;
  if (tls && address.kind !== 'tcp' && address.kind !== 'unix') {
    throw new TransportError('unsupported', uri, `${uri}: TLS (tls-creds) runs on tcp: and unix: channels only${address.kind === 'ws' ? '; wss: is not implemented' : ''}`);
  }
  switch (address.kind) {
    case 'tcp': {
      if (address.host === '') throw new TransportError('bad-uri', uri, `${uri}: a host is needed to connect`);
      if (address.port === 0) throw new TransportError('bad-uri', uri, `${uri}: port 0 is only for listening`);
      const socket = await connectSocket(uri, { host: address.host, port: address.port }, options);
      return socketChannel(tls ? await secureClient(socket, tls, uri, signal) : socket, uri, 'tcp');
    }
    case 'unix': {
      const socket = await connectSocket(uri, { path: address.path }, options);
      return socketChannel(tls ? await secureClient(socket, tls, uri, signal) : socket, uri, 'unix');
    }
    case 'exec': {
      const child = await ExecChild.spawn(uri, address.command, 'outgoing');
      const channel = execOutgoingChannel(child, options.execExitTimeoutMs ?? EXEC_EXIT_TIMEOUT_MS);
      if (signal?.aborted) {
        channel.abort(signal.reason);
        throw abortedError(uri, signal);
      }
      return channel;
    }
    case 'ws':
      if (address.port === 0) throw new TransportError('bad-uri', uri, `${uri}: port 0 is only for listening`);
      return connectWebSocket(address, { ...(signal ? { signal } : {}), ...(options.connectTimeoutMs !== undefined ? { connectTimeoutMs: options.connectTimeoutMs } : {}) });
    case 'file': {
      let sink: FileSink;
      try {
        sink = await FileSink.create(address.path); // create or truncate, like `cat > FILE`
      } catch (err) {
        throw new TransportError('open-failed', uri, `${uri}: ${(err as Error).message}`, { cause: err });
      }
      const channel = fileChannel(uri, { output: sink });
      if (signal?.aborted) {
        channel.abort(signal.reason);
        throw abortedError(uri, signal);
      }
      return channel;
    }
  }
}

function connectSocket(uri: string, target: NetConnectOpts, options: ConnectOptions): Promise<Socket> {
  const { signal, connectTimeoutMs } = options;
  return new Promise<Socket>((resolve, reject) => {
    // allowHalfOpen: the source ends its stream with a half-close and may still read the return path.
    const socket = connect({ ...target, allowHalfOpen: true });
    // Stays attached: an error between 'connect' and the channel's own listeners is never unhandled.
    socket.on('error', () => {});
    let timer: NodeJS.Timeout | undefined;
    const onAbort = (): void => finish(abortedError(uri, signal!));
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.off('connect', onConnect);
      socket.off('error', onError);
      if (err) {
        socket.destroy();
        reject(err);
      } else {
        resolve(socket);
      }
    };
    const onConnect = (): void => {
      log('connected to %s', uri);
      finish();
    };
    const onError = (err: Error): void =>
      finish(new TransportError('connect-failed', uri, `cannot connect to ${uri}: ${err.message}`, { cause: err }));
    socket.once('connect', onConnect);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (connectTimeoutMs !== undefined) {
      timer = setTimeout(
        () => finish(new TransportError('timeout', uri, `cannot connect to ${uri}: no answer within ${connectTimeoutMs} ms`)),
        connectTimeoutMs,
      );
    }
  });
}
