export * from './handlers.js';
export * from './loadvm.js';
export * from './registry.js';
export * from './savevm.js';
export * from './global-state.js';
