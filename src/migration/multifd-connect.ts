/**
 * Compatibility, to be removed: MultifdSender.open({ uri }) without `connect`
 * connects through this hook. The core (src/ram) does not import the
 * transports; the migration layer may, so it supplies the connector. Once
 * outgoing.ts passes `connect: () => connectOutgoing(uri)`, delete this file
 * and its import in index.ts (and MultifdSender.connectUri).
 */
import { MultifdSender } from '../ram/multifd/index.js';
import { connectOutgoing } from '../transport/index.js';

MultifdSender.connectUri ??= (uri) => connectOutgoing(uri);
