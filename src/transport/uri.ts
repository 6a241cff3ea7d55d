/**
 * Migration URIs in QEMU 7.2's syntax (`migrate` / `-incoming`):
 *   tcp:HOST:PORT   tcp:[IPV6]:PORT   (empty host or port 0 only make sense for listening)
 *   unix:PATH
 *   exec:CMDLINE    (everything after "exec:" goes to /bin/sh -c)
 *   file:PATH       (upstream 8.2+; 7.2 rejects it; we accept it without `,offset=`)
 */
import { isIP, isIPv6 } from 'node:net';
import { TransportError } from './errors.js';

export type MigrationAddress =
  | { kind: 'tcp'; uri: string; host: string; port: number }
  | { kind: 'unix'; uri: string; path: string }
  | { kind: 'exec'; uri: string; command: string }
  | { kind: 'file'; uri: string; path: string };

export type TransportKind = MigrationAddress['kind'];

/** Linux sun_path holds 108 bytes including the terminating NUL. */
export const UNIX_PATH_MAX_BYTES = 107;

// Host names: letters, digits, '-', '_' and dots (no spaces, commas, slashes or brackets).
const HOSTNAME = /^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$/;
const HOSTNAME_MAX_CHARS = 253;

function bad(uri: string, why: string): TransportError {
  return new TransportError('bad-uri', uri, `bad migration URI '${uri}': ${why}`);
}

export function parseMigrationUri(uri: string): MigrationAddress {
  const colon = uri.indexOf(':');
  const scheme = colon < 0 ? '' : uri.slice(0, colon);
  const rest = uri.slice(colon + 1);
  switch (scheme) {
    case 'tcp':
      return parseTcp(uri, rest);
    case 'unix':
      if (rest === '') throw bad(uri, 'empty socket path');
      if (Buffer.byteLength(rest) > UNIX_PATH_MAX_BYTES) {
        throw bad(uri, `unix socket path is ${Buffer.byteLength(rest)} bytes, at most ${UNIX_PATH_MAX_BYTES} fit`);
      }
      return { kind: 'unix', uri, path: rest };
    case 'exec':
      if (rest.trim() === '') throw bad(uri, 'empty command');
      return { kind: 'exec', uri, command: rest };
    case 'file':
      if (rest === '') throw bad(uri, 'empty file path');
      // Upstream's suffix (8.2+, for mapped-ram); 7.2 has no such option.
      if (/,offset=[^,]*$/.test(rest)) {
        throw new TransportError('unsupported', uri, `${uri}: the file: offset option is not supported (QEMU 7.2 has none)`);
      }
      return { kind: 'file', uri, path: rest };
    case 'fd':
    case 'rdma':
    case 'vsock':
      throw new TransportError('unsupported', uri, `unsupported migration protocol '${scheme}': ${uri}`);
    default:
      throw new TransportError('bad-uri', uri, `unknown migration protocol: ${uri}`);
  }
}

function parseTcp(uri: string, rest: string): MigrationAddress {
  if (rest.includes(',')) throw new TransportError('unsupported', uri, `${uri}: tcp options (,ipv4 ,ipv6 ,to=) are not supported`);
  let host: string;
  let portText: string;
  if (rest.startsWith('[')) {
    const end = rest.indexOf(']');
    if (end < 0) throw bad(uri, "missing ']' after the IPv6 address");
    host = rest.slice(1, end);
    if (!isIPv6(host)) throw bad(uri, `'${host}' is not an IPv6 address`);
    if (rest[end + 1] !== ':') throw bad(uri, 'missing port (expected tcp:[IPV6]:PORT)');
    portText = rest.slice(end + 2);
  } else {
    const last = rest.lastIndexOf(':');
    if (last < 0) throw bad(uri, 'missing port (expected tcp:HOST:PORT)');
    host = rest.slice(0, last);
    portText = rest.slice(last + 1);
    if (host.includes(':')) throw bad(uri, 'IPv6 addresses must be in brackets, e.g. tcp:[::1]:4444');
    if (host !== '' && isIP(host) === 0 && (host.length > HOSTNAME_MAX_CHARS || !HOSTNAME.test(host))) {
      throw bad(uri, `bad host '${host}'`);
    }
  }
  // Decimal only: QEMU would also resolve service names, which nobody uses for migration.
  if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) > 65535) throw bad(uri, `bad port '${portText}'`);
  return { kind: 'tcp', uri, host, port: Number(portText) };
}

/** `tcp:HOST:PORT`, with brackets around an IPv6 host. */
export function formatTcpUri(host: string, port: number): string {
  return `tcp:${host.includes(':') ? `[${host}]` : host}:${port}`;
}

export function formatMigrationUri(address: MigrationAddress): string {
  switch (address.kind) {
    case 'tcp':
      return formatTcpUri(address.host, address.port);
    case 'unix':
    case 'file':
      return `${address.kind}:${address.path}`;
    case 'exec':
      return `exec:${address.command}`;
  }
}

/** A host only this machine can reach (listening there exposes nothing to the network). */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^(::ffff:)?127\./i.test(host);
}
