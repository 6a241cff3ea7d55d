/**
 * Migrations between real QEMU `-M none` and `livemig run --machine none`
 * through their command lines and monitors, for tests that vary the transport
 * (plain TCP, multifd, TLS: pass QEMU objects in `args` and livemig options in
 * `args` of startLivemigNone).
 *
 * QEMU's RAM is a file (memory-backend-file, share=on, id `ram` so the RAM
 * block is named `ram` as with `-m`): a test writes it before QEMU starts (a
 * source's content) and reads it after a migration into QEMU.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { LivemigProcess } from './livemig-process.js';
import { QemuProcess } from './qemu.js';

export interface QemuNoneOptions {
  /** QEMU's guest RAM: written as is if `contents` is given, else created zero-filled if it does not exist. */
  ramFile: string;
  ramSizeBytes: number;
  /** The RAM's bytes before QEMU starts (a source's content); length ramSizeBytes. */
  contents?: Uint8Array;
  /** `-incoming URI` (e.g. 'defer'); none: an ordinary (source) QEMU. */
  incoming?: string;
  /** More QEMU arguments, e.g. `-object tls-creds-x509,...`. */
  args?: string[];
}

/** Start `qemu-system-x86_64 -M none` with its RAM in `ramFile` and a QMP socket (negotiated). */
export async function startQemuNone(options: QemuNoneOptions): Promise<QemuProcess> {
  const { ramFile, ramSizeBytes } = options;
  if (options.contents) {
    if (options.contents.length !== ramSizeBytes) throw new Error(`startQemuNone: contents are ${options.contents.length} bytes, RAM is ${ramSizeBytes}`);
    await writeFile(ramFile, options.contents);
  } else {
    // 'wx' keeps an existing file's bytes.
    await writeFile(ramFile, new Uint8Array(ramSizeBytes), { flag: 'wx' }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  }
  return QemuProcess.start([
    '-nodefaults',
    '-display', 'none',
    '-object', `memory-backend-file,id=ram,size=${ramSizeBytes},mem-path=${ramFile},share=on`,
    '-machine', 'none,memory-backend=ram',
    ...(options.incoming !== undefined ? ['-incoming', options.incoming] : []),
    ...(options.args ?? []),
  ]);
}

/** QEMU's RAM as it is now (share=on: QEMU's writes are in the file). */
export async function readQemuRam(options: Pick<QemuNoneOptions, 'ramFile'>): Promise<Uint8Array> {
  return new Uint8Array(await readFile(options.ramFile));
}

/**
 * On a QEMU started with `incoming: 'defer'`: migrate-incoming on `uri`
 * (default tcp:127.0.0.1:0) and return where it listens, e.g. `tcp:127.0.0.1:40123`.
 */
export async function qemuListen(qemu: QemuProcess, uri = 'tcp:127.0.0.1:0'): Promise<string> {
  await qemu.execute('migrate-incoming', { uri });
  if (!uri.startsWith('tcp:')) return uri;
  const info = (await qemu.execute('query-migrate')) as { 'socket-address'?: Array<{ host: string; port: string }> };
  const address = info['socket-address']?.[0];
  if (!address) throw new Error(`QEMU does not report where it listens: ${JSON.stringify(info)}`);
  return `tcp:${address.host}:${address.port}`;
}

/** Turn QEMU capabilities on (migrate-set-capabilities), e.g. ['multifd']. */
export async function setQemuCapabilities(qemu: QemuProcess, names: readonly string[]): Promise<void> {
  if (names.length) await qemu.execute('migrate-set-capabilities', { capabilities: names.map((capability) => ({ capability, state: true })) });
}

export interface LivemigNoneOptions {
  /** `--ram` (default 16M, as the QEMU tests' -m 16M). */
  ram?: string;
}

/**
 * `livemig run --json --machine none --ram SIZE ARGS...` as a child process
 * (e.g. `['--incoming', 'tcp:127.0.0.1:0', '--verify']` or
 * `['--pattern', 'random:7', '--migrate-to', URI, '--migrate-after-ms', '0']`).
 */
export function startLivemigNone(args: readonly string[], options: LivemigNoneOptions = {}): LivemigProcess {
  return LivemigProcess.start(['--machine', 'none', '--ram', options.ram ?? '16M', ...args]);
}

/** A livemig destination's listening address (its `listening` event), e.g. `tcp:127.0.0.1:40123`. */
export async function livemigListening(livemig: LivemigProcess, timeoutMs = 30_000): Promise<string> {
  return (await livemig.waitFor('listening', () => true, timeoutMs)).address as string;
}
