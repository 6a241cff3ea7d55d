/**
 * `--disk PATH[,size=SIZE][,id=NAME]`: a raw disk image for the guest (what
 * PATH means on a source and on a destination: src/guests/disk.ts). `id`
 * names the device as on the wire (default `disk0`).
 */
import type { DiskSpec } from '../guests/index.js';
import { parseSize } from '../migration/size.js';

export type { DiskSpec };

export function parseDiskSpec(text: string): DiskSpec {
  const [path, ...options] = text.split(',');
  if (!path) throw new Error(`--disk: expected PATH[,size=SIZE][,id=NAME], got '${text}'`);
  const spec: DiskSpec = { path, id: 'disk0' };
  for (const option of options) {
    const eq = option.indexOf('=');
    const key = eq < 0 ? option : option.slice(0, eq);
    const value = eq < 0 ? '' : option.slice(eq + 1);
    if (key === 'size') spec.sizeBytes = parseSize(value, '--disk size');
    else if (key === 'id' && /^[A-Za-z0-9_.-]{1,64}$/.test(value)) spec.id = value;
    else throw new Error(`--disk: unknown or bad option '${option}' (known: size=SIZE, id=NAME of letters, digits, _ . -)`);
  }
  if (spec.sizeBytes !== undefined && (spec.sizeBytes <= 0 || spec.sizeBytes % 512 !== 0)) {
    throw new Error(`--disk size: ${spec.sizeBytes} is not a positive multiple of 512 bytes`);
  }
  return spec;
}
