/**
 * `--qmp` addresses: `unix:PATH`, or `tcp:HOST:PORT` with QEMU's chardev
 * options for TLS, `,tls-creds=ID` (an --object's id) and, on a server,
 * `,tls-authz=ID`. QEMU's `server=on` and `wait=off` are accepted and mean
 * nothing more here.
 */
import { parseMigrationUri } from '../transport/index.js';
import { printable } from '../wire/index.js';
import type { QmpListenOptions } from '../monitor/qmp-server.js';
import type { ObjectRegistry } from '../security/index.js';
import { tlsPeerOf, type TlsClientSettings } from '../transport/tls.js';

export interface QmpAddress {
  uri: string;
  tlsCreds?: string;
  tlsAuthz?: string;
}

export function parseQmpAddress(text: string): QmpAddress {
  if (!text.startsWith('tcp:')) return { uri: text };
  const [uri, ...options] = text.split(',');
  const address: QmpAddress = { uri: uri! };
  for (const option of options) {
    const eq = option.indexOf('=');
    const key = eq < 0 ? option : option.slice(0, eq);
    const value = eq < 0 ? '' : option.slice(eq + 1);
    if (key === 'tls-creds' && value !== '') address.tlsCreds = value;
    else if (key === 'tls-authz' && value !== '') address.tlsAuthz = value;
    else if ((key === 'server' && value === 'on') || (key === 'wait' && value === 'off')) continue;
    else throw new Error(`--qmp '${printable(text)}': unknown option '${printable(option)}' (tcp:HOST:PORT takes tls-creds=ID and tls-authz=ID)`);
  }
  if (address.tlsAuthz !== undefined && address.tlsCreds === undefined) throw new Error(`--qmp '${printable(text)}': tls-authz needs tls-creds`);
  return address;
}

/** What QmpServer.listen needs for `address` (TLS from the registry's objects, with verify-peer and tls-authz). */
export function qmpServerTls(address: QmpAddress, objects: ObjectRegistry): Pick<QmpListenOptions, 'tls' | 'authorize'> {
  if (address.tlsCreds === undefined) return {};
  const settings = objects.server({ credsId: address.tlsCreds, authzId: address.tlsAuthz ?? '' });
  return {
    tls: settings.options,
    authorize: (socket) => {
      const peer = tlsPeerOf(socket);
      return (peer.kind === 'x509' ? settings.verifyPeer?.(socket.getPeerX509Certificate()) : undefined) ?? settings.authorize?.(peer);
    },
  };
}

/** What QmpClient.connect needs for `address`: the server's certificate must name the URI's host. */
export function qmpClientTls(address: QmpAddress, objects: ObjectRegistry): TlsClientSettings | undefined {
  if (address.tlsCreds === undefined) return undefined;
  const parsed = parseMigrationUri(address.uri);
  return objects.client({ credsId: address.tlsCreds, hostname: parsed.kind === 'tcp' ? parsed.host : undefined });
}
