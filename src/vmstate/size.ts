/**
 * How many bytes a description writes, without its values: used to count
 * device state in the expected downtime while the guest still runs (reading
 * the values may need the guest stopped). Variable-length parts count 0;
 * subsections count fully, as if all were needed (an upper bound).
 */
import { utf8ByteLength } from '../wire/writer.js';
import { SCALAR_INFO, type VMStateDescription } from './types.js';

export function vmstateFixedSizeBytes(vmsd: VMStateDescription<any>): number {
  let bytes = 0;
  for (const f of vmsd.fields) {
    switch (f.kind) {
      case 'scalar':
        bytes += SCALAR_INFO[f.type].sizeBytes;
        break;
      case 'array':
        bytes += (f.count ?? 0) * SCALAR_INFO[f.type].sizeBytes;
        break;
      case 'buffer':
      case 'unused':
        bytes += f.sizeBytes;
        break;
      case 'struct':
        bytes += vmstateFixedSizeBytes(f.vmsd);
        break;
      case 'structArray':
        bytes += (f.count ?? 0) * vmstateFixedSizeBytes(f.vmsd);
        break;
      case 'vbuffer':
      case 'validate':
        break;
    }
  }
  for (const sub of vmsd.subsections ?? []) {
    // 0x05, counted name, be32 version, body.
    bytes += 1 + 1 + utf8ByteLength(sub.name) + 4 + vmstateFixedSizeBytes(sub);
  }
  return bytes;
}
