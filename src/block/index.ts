/** The `block` save-state entry: raw-image disks, QEMU 7.2 block records, save and load handlers. */
export * from './block-device.js';
export * from './file-block-device.js';
export * from './memory-block-device.js';
export * from './block-records.js';
export * from './block-handler.js';
export * from './manifest.js';
export * from './incoming-image.js';
export * from './block-analysis.js';
