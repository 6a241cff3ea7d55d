/**
 * The core of livemig for a browser (bundled by esbuild into
 * dist/browser/livemig-core.js): the wire format, VMState, the save-state
 * registry and its save/load loops (savevm), RAM (blocks, dirty bitmaps,
 * XBZRLE, the `ram` section's save and load handlers), the `block` section's
 * records, disk manifest and handlers, and the migration engine: the
 * outgoing and incoming loops (OutgoingMigration, IncomingMigration), their
 * settings (MigrationConfig), state machine and policies. The same modules
 * Node runs, unchanged: none of them imports a Node built-in
 * (test/architecture.test.ts checks it, and the bundle build fails on one).
 *
 * Channels: the engine is given them (`channels` option). In a page,
 * browserChannels() (ws:// over the page's own WebSocket; the page always
 * connects, also as a destination), or openedChannels(channel) for one that
 * is already open, e.g. a memory pipe (createMemoryPipe) between two machines
 * of one page. No multifd and no TLS in a browser: both are refused.
 *
 * Not here, as they need Node: the Node transports (tcp, unix, exec, file,
 * TLS, the ws server), multifd's worker threads, the block devices (raw image
 * files), the analyzer's file input.
 */
export * from '../wire/index.js';
export * from '../vmstate/index.js';
export * from '../savevm/index.js';
export * from '../ram/index.js';

// The `block` section's format and handlers; its disks (BlockDevice) are files, so Node-side for now.
export * from '../block/geometry.js';
export * from '../block/block-records.js';
export * from '../block/manifest.js';
export * from '../block/block-analysis.js';
export * from '../block/block-handler.js';

export * from '../migration/outgoing.js';
export * from '../migration/incoming.js';
export * from '../migration/config.js';
export * from '../migration/errors.js';
export * from '../migration/channels.js';
export * from '../migration/state.js';
export * from '../migration/switchover.js';
export * from '../migration/postcopy-policy.js';
export * from '../migration/progress-model.js';
export * from '../migration/rate-window.js';
export * from '../migration/auto-converge.js';
export { parseSize } from '../migration/size.js';

export * from './memory-pipe.js';

// A migration channel over the browser's own WebSocket (ws:// URIs; the Node side is transport/websocket-node.ts).
export * from '../transport/websocket-channel.js';
export { TransportError, type TransportErrorCode } from '../transport/errors.js';
export { parseMigrationUri, formatWsUri, type MigrationAddress, type TransportKind } from '../transport/uri.js';
export * from './channels.js';
