/** The `ram` save-state entry: records, blocks, XBZRLE, save and load handlers. */
export * from './flags.js';
export * from './xbzrle.js';
export * from './block.js';
export * from './block-table.js';
export * from './dirty-bitmap.js';
export * from './page-cache.js';
export * from './record-writer.js';
export * from './save.js';
export * from './load.js';
