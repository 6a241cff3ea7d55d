/**
 * The core of livemig for a browser (bundled by esbuild into
 * dist/browser/livemig-core.js): the wire format, VMState, the save-state
 * registry and its save/load loops (savevm), RAM (blocks, dirty bitmaps,
 * XBZRLE, the `ram` section's save and load handlers), the `block` section's
 * records, disk manifest and handlers, and the migration engine's state
 * machine and policies. The same modules Node runs, unchanged: none of them
 * imports a Node built-in
 * (test/architecture.test.ts checks it, and the bundle build fails on one).
 *
 * Also the WebSocket migration channel, over the page's own `WebSocket`.
 *
 * Not here yet, as they still need Node: the outgoing and incoming migration
 * loops (their transports, multifd's worker threads, EventEmitter), disks in
 * raw image files (FileBlockDevice), the analyzer's file input.
 */
export * from '../wire/index.js';
export * from '../vmstate/index.js';
export * from '../savevm/index.js';
export * from '../ram/index.js';

// The `block` section's format and handlers, the disk interface and in-memory disks (file-backed disks are Node-side).
export * from '../block/block-device.js';
export * from '../block/memory-block-device.js';
export * from '../block/block-records.js';
export * from '../block/manifest.js';
export * from '../block/block-analysis.js';
export * from '../block/block-handler.js';

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
