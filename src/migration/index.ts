export * from './incoming.js';
export * from './outgoing.js';
export * from './parameters.js';
export * from './rate-window.js';
export * from './state.js';
export * from './auto-converge.js';
export * from './switchover.js';
