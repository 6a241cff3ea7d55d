/** Transports: QEMU 7.2 migration URIs (tcp, unix, exec, file) and livemig's ws://HOST:PORT/PATH, outgoing and incoming. */
export { TransportError, ExecExitError, type TransportErrorCode } from './errors.js';
export {
  parseMigrationUri,
  formatMigrationUri,
  formatTcpUri,
  formatWsUri,
  isLoopbackHost,
  UNIX_PATH_MAX_BYTES,
  type MigrationAddress,
  type TransportKind,
} from './uri.js';
export type { MigrationChannel, DetachedSocket } from './channel.js';
export { EXEC_EXIT_TIMEOUT_MS, type ExitStatus } from './exec.js';
export { connectOutgoing, type ConnectOptions } from './outgoing.js';
export { listenIncoming, type IncomingListener, type AcceptOptions, type ListenOptions } from './incoming.js';
export { webSocketChannel, openWebSocket, type MinimalWebSocket, type WebSocketExtras, type WebSocketConnectOptions } from './websocket-channel.js';
