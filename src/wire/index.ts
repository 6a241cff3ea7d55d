export * from './channel.js';
export * from './constants.js';
export * from './errors.js';
export * from './reader.js';
export * from './writer.js';
export * from './framing.js';
export * from './return-path.js';
export * from './printable.js';
