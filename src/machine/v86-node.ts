/**
 * The v86 machine's Node side (V86Platform, v86-machine.ts): v86 from the npm
 * package and its wasm next to it, images read from files, serial output as
 * a Readable of Buffers, SHA-256 from node:crypto. createV86Machine() loads
 * this by itself in Node.
 */
import { FileBlockDevice } from '../block/file-block-device.js';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { V86 } from 'v86';
import { ramSha256 } from './memory-check.js';
import { imageBytes, Wasm, type V86Platform, type WasmModule } from './v86-machine.js';

let wasmModule: Promise<WasmModule> | undefined;
const requireFromHere = createRequire(import.meta.url);

/** v86's wasm, compiled once per process. */
function v86WasmModule(): Promise<WasmModule> {
  wasmModule ??= (async () => {
    const main = requireFromHere.resolve('v86');
    return Wasm.compile(readFileSync(join(dirname(main), 'v86.wasm')));
  })();
  return wasmModule;
}

/** The built test kernel, found from this module upwards (src/machine or dist/src/machine). */
export function defaultMultibootKernelPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'guests', 'multiboot', 'livemig-test-kernel.bin');
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error('guests/multiboot/livemig-test-kernel.bin not found (run guests/multiboot/build.sh)');
}

/** A fresh platform per machine (its own serial stream). */
export function nodeV86Platform(): V86Platform {
  const serial = new Readable({ read() {} });
  return {
    V86: V86 as unknown as V86Platform['V86'],
    wasmModule: v86WasmModule,
    loadImage: async (image) => imageBytes(typeof image === 'string' ? readFileSync(image) : image),
    defaultMultiboot: defaultMultibootKernelPath,
    serial: {
      output: serial,
      push: (bytes) => {
        if (!serial.destroyed) serial.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length));
      },
      end: () => void serial.push(null),
    },
    sha256: ramSha256,
    openDisk: (slot, path, { readOnly }) => FileBlockDevice.open(slot, path, { readOnly }),
  };
}
