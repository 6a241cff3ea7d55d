/**
 * Migration URIs in QEMU 7.2's syntax (`migrate` / `-incoming`):
 *   tcp:HOST:PORT   tcp:[IPV6]:PORT   (empty host or port 0 only make sense for listening)
 *   unix:PATH
 *   exec:CMDLINE    (everything after "exec:" goes to /bin/sh -c)
 *   file:PATH       (upstream 8.2+; 7.2 rejects it; we accept it without `,offset=`)
 *   ws://HOST:PORT/PATH  (livemig only: a WebSocket, so a browser can be either end;
 *                   HOST may be [IPV6]; PATH defaults to /; no query, fragment or user)
 */
import { utf8ByteLength } from '../wire/writer.js';
import { TransportError } from './errors.js';

export type MigrationAddress =
  | { kind: 'tcp'; uri: string; host: string; port: number }
  | { kind: 'unix'; uri: string; path: string }
  | { kind: 'exec'; uri: string; command: string }
  | { kind: 'file'; uri: string; path: string }
  | { kind: 'ws'; uri: string; host: string; port: number; path: string };

export type TransportKind = MigrationAddress['kind'];

/** Linux sun_path holds 108 bytes including the terminating NUL. */
export const UNIX_PATH_MAX_BYTES = 107;

// Host names: letters, digits, '-', '_' and dots (no spaces, commas, slashes or brackets).
const HOSTNAME = /^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$/;
const HOSTNAME_MAX_CHARS = 253;

// No node:net here: a browser parses ws: URIs too. These accept what node:net's isIPv4/isIPv6 accept (test/uri.test.ts compares them).
const IPV4_OCTET = '(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])';
const IPV4 = new RegExp(`^${IPV4_OCTET}(?:\\.${IPV4_OCTET}){3}$`);
const IPV6_ZONE = /%[0-9a-zA-Z.:-]+$/;

export function isIPv4Address(text: string): boolean {
  return IPV4.test(text);
}

/** An IPv6 address (with an optional %zone), by the URL parser's IPv6 rules (the WHATWG standard's, in Node and browsers alike). */
export function isIPv6Address(text: string): boolean {
  const address = text.replace(IPV6_ZONE, '');
  if (!address.includes(':') || !/^[0-9a-fA-F:.]+$/.test(address)) return false;
  try {
    new URL(`http://[${address}]/`);
    return true;
  } catch {
    return false;
  }
}

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
      if (utf8ByteLength(rest) > UNIX_PATH_MAX_BYTES) {
        throw bad(uri, `unix socket path is ${utf8ByteLength(rest)} bytes, at most ${UNIX_PATH_MAX_BYTES} fit`);
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
    case 'ws':
      return parseWs(uri, rest);
    case 'wss':
      // The TLS objects (tls.ts) secure raw sockets; an https server for WebSocket upgrades is more than that.
      throw new TransportError('unsupported', uri, `${uri}: wss: (WebSocket over TLS) is not implemented; use ws: on a trusted network, or tcp: with tls-creds`);
    case 'fd':
    case 'rdma':
    case 'vsock':
      throw new TransportError('unsupported', uri, `unsupported migration protocol '${scheme}': ${uri}`);
    default:
      throw new TransportError('bad-uri', uri, `unknown migration protocol: ${uri}`);
  }
}

function parseTcp(uri: string, rest: string, form = 'tcp:HOST:PORT'): MigrationAddress {
  const v6form = form.replace('HOST', '[IPV6]');
  if (form.startsWith('tcp') && rest.includes(',')) throw new TransportError('unsupported', uri, `${uri}: tcp options (,ipv4 ,ipv6 ,to=) are not supported`);
  let host: string;
  let portText: string;
  if (rest.startsWith('[')) {
    const end = rest.indexOf(']');
    if (end < 0) throw bad(uri, "missing ']' after the IPv6 address");
    host = rest.slice(1, end);
    if (!isIPv6Address(host)) throw bad(uri, `'${host}' is not an IPv6 address`);
    if (rest[end + 1] !== ':') throw bad(uri, `missing port (expected ${v6form})`);
    portText = rest.slice(end + 2);
  } else {
    const last = rest.lastIndexOf(':');
    if (last < 0) throw bad(uri, `missing port (expected ${form})`);
    host = rest.slice(0, last);
    portText = rest.slice(last + 1);
    if (host.includes(':')) throw bad(uri, `IPv6 addresses must be in brackets, e.g. ${form.startsWith('tcp') ? 'tcp:[::1]:4444' : 'ws://[::1]:4444/'}`);
    if (host !== '' && !isIPv4Address(host) && !isIPv6Address(host) && (host.length > HOSTNAME_MAX_CHARS || !HOSTNAME.test(host))) {
      throw bad(uri, `bad host '${host}'`);
    }
  }
  // Decimal only: QEMU would also resolve service names, which nobody uses for migration.
  if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) > 65535) throw bad(uri, `bad port '${portText}'`);
  return { kind: 'tcp', uri, host, port: Number(portText) };
}

function parseWs(uri: string, rest: string): MigrationAddress {
  if (!rest.startsWith('//')) throw bad(uri, "expected ws://HOST:PORT/PATH ('//' missing after 'ws:')");
  const afterSlashes = rest.slice(2);
  const slash = afterSlashes.indexOf('/');
  const authority = slash < 0 ? afterSlashes : afterSlashes.slice(0, slash);
  const path = slash < 0 ? '/' : afterSlashes.slice(slash);
  if (authority.includes('@')) throw bad(uri, 'user names are not supported in ws: URIs');
  if (/[?#]/.test(authority) || /[?#]/.test(path)) throw bad(uri, 'queries and fragments (? #) are not supported in ws: URIs');
  // The path is compared byte for byte with the request's; keep it to what a request line carries unchanged.
  if (!/^\/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$/.test(path)) throw bad(uri, `bad path '${path}' (letters, digits and -._~!$&'()*+,;=:@%/ only)`);
  if (authority === '') throw bad(uri, 'missing host and port (expected ws://HOST:PORT/PATH)');
  // The same host and port rules as tcp:, except that a host is required (0.0.0.0 or [::] listens everywhere).
  const tcp = parseTcp(uri, authority, 'ws://HOST:PORT/PATH');
  if (tcp.kind !== 'tcp' || tcp.host === '') throw bad(uri, 'missing host (expected ws://HOST:PORT/PATH)');
  return { kind: 'ws', uri, host: tcp.host, port: tcp.port, path };
}

/** `ws://HOST:PORT/PATH`, with brackets around an IPv6 host. */
export function formatWsUri(host: string, port: number, path: string): string {
  return `ws://${host.includes(':') ? `[${host}]` : host}:${port}${path}`;
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
    case 'ws':
      return formatWsUri(address.host, address.port, address.path);
  }
}

/** A host only this machine can reach (listening there exposes nothing to the network). */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^(::ffff:)?127\./i.test(host);
}
