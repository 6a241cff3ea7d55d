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
 * For a page (h4's `livemig serve` page uses these names):
 *
 *   createBrowserV86Machine({ V86, wasmUrl, multiboot?, screenContainer?, ...V86MachineOptions })
 *       -> Promise<V86Machine>: a v86 PC in the page, the same machine as Node's
 *       `--machine v86`. v86 is NOT bundled: the page imports v86's own
 *       build/libv86.mjs (npm package v86) and passes its V86 constructor and
 *       the URL of build/v86.wasm. machine.serial.on('data', bytes => ...).
 *   migrateOut(machine, wsUrl, { parameters?, capabilities?, onProgress?(info), channels? })
 *       -> Promise<{ status, totalMs, downtimeMs, bytes, error?, errorCode? }>
 *   migrateIn(machine, wsUrl, { onProgress?(info), autostart?, channels? })
 *       -> Promise<{ status, totalMs, downtimeMs: undefined, bytes, started, error? }>
 *       (the page connects to wsUrl and loads the stream sent on that connection)
 *   `info` is QMP query-migrate's shape (outgoingInfo/incomingInfo), with
 *   x-livemig-progress on the source; both resolve also on failure (status says).
 *
 * Not here, as they need Node: the Node transports (tcp, unix, exec, file,
 * TLS, the ws server), multifd's worker threads, the block devices (raw image
 * files), the analyzer's file input.
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
export { formatBytes, parseSize } from '../migration/size.js';
// A page's first migration gains from it too (over a memory pipe: a page has no loopback socket).
export { warmUpMigrations, WARM_UP_RAM_BYTES, WARM_UP_ROUNDS, type WarmUpResult } from '../migration/warm-up.js';

export * from './v86-browser.js';
export * from './migrate.js';

// The machine the page runs, and query-migrate's shape for its progress.
export { V86Machine, V86_MACHINE_NAME, V86_RAM_BLOCK, type V86MachineOptions, type V86MachineStats, type V86Platform, type V86SerialPort } from '../machine/v86-machine.js';
export type { Machine, SerialOutput } from '../machine/machine.js';
export { checkMemory, type MemoryCheckResult } from '../machine/memory-consistency.js';
export { outgoingInfo, incomingInfo, type MigrationInfo } from '../monitor/query-migrate.js';

// A migration channel over the browser's own WebSocket (ws:// URIs; the Node side is transport/websocket-node.ts).
export * from '../transport/websocket-channel.js';
export { TransportError, type TransportErrorCode } from '../transport/errors.js';
export { parseMigrationUri, formatWsUri, type MigrationAddress, type TransportKind } from '../transport/uri.js';
export * from './channels.js';
