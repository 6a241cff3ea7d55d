// Side effect: the deprecated MultifdSender.open({ uri }) path (see multifd-connect.ts).
import './multifd-connect.js';
export * from './incoming.js';
export * from './outgoing.js';
export * from './config.js';
export * from './rate-window.js';
export * from './state.js';
export * from './auto-converge.js';
