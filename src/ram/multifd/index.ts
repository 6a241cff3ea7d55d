/** Multifd (QEMU 7.2 wire format): packets, per-channel codecs, the sender and the receiver. */
export * from './packet.js';
export * from './codec.js';
export * from './sender.js';
export * from './receiver.js';
export * from './recv-channel.js';
