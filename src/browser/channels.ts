/**
 * The migration engine's channels in a browser: ws:// only, over the page's
 * own WebSocket. A page cannot listen, so it is always the connecting side:
 * as a source it connects to the destination's `ws://HOST:PORT/PATH`; as a
 * destination its listen(uri) connects to `uri` as well, and the stream the
 * server (the source, or a relay) sends on that connection is the one loaded.
 * No TLS objects (wss: is not implemented) and no multifd (worker threads,
 * several sockets): both are refused with a message that says so.
 */
import { MigrationError } from '../migration/errors.js';
import { OpenedChannelListener, type MigrationChannels } from '../migration/channels.js';
import { TransportError } from '../transport/errors.js';
import { parseMigrationUri } from '../transport/uri.js';
import { openWebSocket, webSocketChannel, type MinimalWebSocket } from '../transport/websocket-channel.js';
import type { MigrationChannel } from '../wire/channel.js';

export interface BrowserChannelsOptions {
  /** The WebSocket constructor (default: the page's own). */
  WebSocket?: new (url: string) => MinimalWebSocket;
  /** Give up connecting after this long (default: the browser's own timeout). */
  connectTimeoutMs?: number;
}

function pageWebSocket(): new (url: string) => MinimalWebSocket {
  const ctor = (globalThis as { WebSocket?: new (url: string) => MinimalWebSocket }).WebSocket;
  if (!ctor) throw new MigrationError('refused', 'this environment has no WebSocket: pass browserChannels({ WebSocket })');
  return ctor;
}

/** Opens a WebSocket to a ws:// URI; anything else (tcp:, unix:, exec:, file:) is refused, naming the URI. */
async function connectWs(uri: string, options: BrowserChannelsOptions, tls: boolean): Promise<MigrationChannel> {
  const address = parseMigrationUri(uri);
  if (address.kind !== 'ws') throw new TransportError('unsupported', uri, `${uri}: a browser migrates over ws://HOST:PORT/PATH only (${address.kind}: needs Node)`);
  if (tls) throw new TransportError('unsupported', uri, `${uri}: TLS (tls-creds) is not available in a browser (and wss: is not implemented)`);
  if (address.port === 0) throw new TransportError('bad-uri', uri, `${uri}: port 0 is only for listening`);
  const Ctor = options.WebSocket ?? pageWebSocket();
  const socket = await openWebSocket(() => new Ctor(uri), uri, options.connectTimeoutMs !== undefined ? { connectTimeoutMs: options.connectTimeoutMs } : {});
  return webSocketChannel(socket, uri);
}

export function browserChannels(options: BrowserChannelsOptions = {}): MigrationChannels {
  return {
    platform: 'browser',
    connect: (uri, o) => connectWs(uri, options, o.tls !== undefined),
    // The page connects out; the source's stream arrives on that one connection.
    listen: async (uri, o) => new OpenedChannelListener(uri, await connectWs(uri, options, o.tls !== undefined)),
  };
}
