/** Guest types: what `--machine` can start, and the registry they are found in. */
export * from './guest.js';
export * from './disk.js';
export * from './registry.js';
