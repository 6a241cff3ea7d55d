/**
 * Node's channels for the migration engine (channels.ts): every
 * transport, TLS, and multifd's connections and worker threads. The engine
 * loads this by itself when it is given no channels, so in Node nothing
 * changes for its callers; the browser bundle never includes it.
 */
import { MultifdReceiver } from '../ram/multifd/receiver.js';
import { MultifdSender, MultifdSendThreads } from '../ram/multifd/sender.js';
import { SOCKET_ADOPTER } from '../transport/channel.js';
import { listenIncoming } from '../transport/incoming.js';
import { connectOutgoing } from '../transport/outgoing.js';
import type { MigrationChannels } from './channels.js';

export const NODE_CHANNELS: MigrationChannels = {
  platform: 'node',
  connect: (uri, options) => connectOutgoing(uri, options.tls ? { tls: options.tls } : {}),
  listen: (uri, options) => listenIncoming(uri, options),
  multifd: {
    openSender: (options) => MultifdSender.open(options),
    prestartSender: (options) => MultifdSendThreads.start(options),
    // Node's sockets are what its threads adopt: they load that module as they start.
    createReceiver: (options) => new MultifdReceiver({ adopters: [SOCKET_ADOPTER], ...options }),
  },
};
