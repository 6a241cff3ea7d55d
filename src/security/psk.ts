/**
 * `tls-creds-psk`: a directory with `keys.psk`, one `identity:hexkey` per line
 * (QEMU's crypto/tlscredspsk.c). The client uses the line of its `username`
 * (default `qemu`); the server accepts any identity in the file.
 *
 * QEMU negotiates TLS 1.3 with a PSK and (EC)DHE through GnuTLS's default
 * priority. OpenSSL in Node does the same when the cipher suites are
 * restricted to SHA-256 ones (a TLS 1.3 PSK is bound to its suite's hash).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ConnectionOptions, TLSSocketOptions } from 'node:tls';
import { notePskIdentity } from '../transport/tls.js';
import { printable } from '../wire/printable.js';
import { ObjectError, type Endpoint } from './object-error.js';

export const PSK_CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';
export const DEFAULT_PSK_USERNAME = 'qemu';
/** RFC 4279 bounds identities to 128 bytes; keys much longer than 64 bytes are a mistake. */
const MAX_IDENTITY_BYTES = 128;
const MAX_KEY_BYTES = 256;

export interface PskCredsProps {
  id: string;
  dir: string;
  endpoint: Endpoint;
  username: string;
}

/** keys.psk → identity → key; throws ObjectError naming the line. */
export function parsePskFile(text: string, path: string, id: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, index) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') return;
    const where = `tls-creds-psk '${id}': ${printable(path)} line ${index + 1}`;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new ObjectError(`${where}: expected IDENTITY:HEXKEY`);
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1).trim();
    if (Buffer.byteLength(identity) > MAX_IDENTITY_BYTES) throw new ObjectError(`${where}: the identity is longer than ${MAX_IDENTITY_BYTES} bytes`);
    if (!/^([0-9a-fA-F]{2})+$/.test(hex)) throw new ObjectError(`${where}: the key of '${printable(identity)}' is not hexadecimal bytes`);
    if (hex.length / 2 > MAX_KEY_BYTES) throw new ObjectError(`${where}: the key is longer than ${MAX_KEY_BYTES} bytes`);
    keys.set(identity, Buffer.from(hex, 'hex'));
  });
  return keys;
}

export class PskCreds {
  readonly kind = 'psk';
  private readonly keys: Map<string, Buffer>;

  constructor(readonly props: PskCredsProps) {
    const path = join(props.dir, 'keys.psk');
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new ObjectError(`tls-creds-psk '${props.id}': Unable to access credentials ${printable(path)}: ${(err as Error).message}`);
    }
    this.keys = parsePskFile(text, path, props.id);
    if (props.endpoint === 'client' && !this.keys.has(props.username)) {
      throw new ObjectError(`tls-creds-psk '${props.id}': no key for username '${printable(props.username)}' in ${printable(path)}`);
    }
    if (this.keys.size === 0) throw new ObjectError(`tls-creds-psk '${props.id}': ${printable(path)} holds no keys`);
  }

  get describe(): string {
    return `tls-creds-psk '${this.props.id}' (${printable(this.props.dir)}, identity '${printable(this.props.username)}')`;
  }

  clientOptions(): ConnectionOptions {
    const identity = this.props.username;
    const psk = this.keys.get(identity)!;
    return { pskCallback: () => ({ psk, identity }), ciphers: PSK_CIPHERS, minVersion: 'TLSv1.3' };
  }

  serverOptions(): TLSSocketOptions {
    return {
      ciphers: PSK_CIPHERS,
      minVersion: 'TLSv1.3',
      pskCallback: (socket: unknown, identity: string) => {
        notePskIdentity(socket as object, identity);
        return this.keys.get(identity) ?? null;
      },
    } as TLSSocketOptions;
  }
}
