/**
 * The v86 machine in a page: the same V86Machine as Node's `--machine v86`
 * (src/machine/v86-machine.ts), with the page's V86Platform. v86 itself is
 * not in livemig's bundle: the page loads v86's own build (build/libv86.mjs
 * of the npm package, as served by the page's server) and passes its `V86`
 * constructor and the URL of its v86.wasm; images are bytes or URLs fetched.
 */
import { TypedEmitter } from '../wire/emitter.js';
import { createV86Machine, imageBytes, Wasm, type V86Machine, type V86MachineOptions, type V86Platform, type WasmModule } from '../machine/v86-machine.js';

export interface BrowserV86MachineOptions extends V86MachineOptions {
  /** v86's constructor, from its build/libv86.mjs: `import { V86 } from '/v86/libv86.mjs'`. */
  V86: V86Platform['V86'];
  /** Where the page fetches v86.wasm (the npm package's build/v86.wasm). */
  wasmUrl: string;
  /**
   * Kernel (or BIOS, bzimage, initrd): bytes, or a URL the page fetches.
   * A machine that boots needs one (`multiboot`, or `bios` and `bzimage`);
   * in Node our test kernel is found on disk, a page has no default.
   */
  multiboot?: Uint8Array | string;
  /** The element v86 draws the VGA screen in (v86's `screen_container`); none: headless. */
  screenContainer?: unknown;
}

/** The serial output of a page's machine: 'data' with each chunk (Uint8Array), 'end' when it is destroyed. */
export class PageSerial extends TypedEmitter<{ data: [Uint8Array]; end: [] }> {}

const wasmModules = new Map<string, Promise<WasmModule>>();

/** v86.wasm compiled once per URL and page. */
function wasmFrom(url: string): Promise<WasmModule> {
  let module = wasmModules.get(url);
  if (!module) {
    module = (async () => Wasm.compile(await fetchBytes(url, 'v86.wasm')))();
    module.catch(() => wasmModules.delete(url)); // a failed fetch may be retried
    wasmModules.set(url, module);
  }
  return module;
}

async function fetchBytes(url: string, what: string): Promise<Uint8Array> {
  let response: Response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new Error(`${what}: cannot fetch ${url}: ${(err as Error).message}`);
  }
  if (!response.ok) throw new Error(`${what}: GET ${url}: ${response.status} ${response.statusText}`);
  return new Uint8Array(await response.arrayBuffer());
}

/** The page's V86Platform for one machine. */
export function browserV86Platform(options: { V86: V86Platform['V86']; wasmUrl: string; screenContainer?: unknown }): V86Platform {
  if (typeof options.V86 !== 'function') throw new TypeError("createBrowserV86Machine: V86 must be v86's constructor (import { V86 } from its build/libv86.mjs)");
  if (typeof options.wasmUrl !== 'string' || options.wasmUrl === '') throw new TypeError('createBrowserV86Machine: wasmUrl must be the URL of v86.wasm');
  const serial = new PageSerial();
  return {
    V86: options.V86,
    wasmModule: () => wasmFrom(options.wasmUrl),
    loadImage: async (image) => imageBytes(typeof image === 'string' ? await fetchBytes(image, 'image') : image),
    defaultMultiboot: () => {
      throw new Error('createBrowserV86Machine: give `multiboot` (the kernel as bytes or a URL), or `bios` and `bzimage`: a page has no default kernel');
    },
    serial: { output: serial, push: (bytes) => void serial.emit('data', bytes), end: () => void serial.emit('end') },
    ...(options.screenContainer !== undefined ? { settings: { screen_container: options.screenContainer } } : {}),
  };
}

/**
 * A v86 PC in this page, loaded (and booting unless `incoming` or
 * `startPaused`). Its `serial` is a PageSerial; `checkMemory()`, `stats()`,
 * `pause()`/`resume()` are those of Node's machine; `ramHash()` needs Node.
 */
export async function createBrowserV86Machine(options: BrowserV86MachineOptions): Promise<V86Machine> {
  const { V86, wasmUrl, screenContainer, ...machineOptions } = options;
  return createV86Machine(machineOptions, browserV86Platform({ V86, wasmUrl, ...(screenContainer !== undefined ? { screenContainer } : {}) }));
}
