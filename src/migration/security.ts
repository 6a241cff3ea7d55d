/**
 * TLS for a migration's channels: what `tls-creds`, `tls-hostname` and
 * `tls-authz` turn into. The engine only names credentials by id; whoever owns
 * the credentials objects (src/security/, the QMP `object-add` registry)
 * implements ChannelSecurity, so this core never reads a key or certificate.
 */
import type { TlsClientSettings, TlsServerSettings } from '../transport/tls.js';
import { parseMigrationUri } from '../transport/uri.js';
import { MigrationError } from './errors.js';
import type { MigrationParameters } from './config.js';

export interface ChannelSecurity {
  /** The source's settings; throws Error with QEMU's wording when the id is unknown or the endpoint wrong. */
  client(request: { credsId: string; hostname: string | undefined }): TlsClientSettings;
  /** The destination's settings, with the tls-authz check when authzId is not ''. */
  server(request: { credsId: string; authzId: string }): TlsServerSettings;
}

/** A string parameter as QEMU keeps it: absent or null reads as ''. */
function stringParameter(parameters: Readonly<MigrationParameters>, name: 'tls-creds' | 'tls-hostname' | 'tls-authz'): string {
  const value = (parameters as unknown as Record<string, unknown>)[name];
  return typeof value === 'string' ? value : '';
}

function refused(err: unknown): MigrationError {
  return err instanceof MigrationError ? err : new MigrationError('refused', (err as Error).message, { cause: err });
}

/**
 * The source's TLS settings for a migration to `uri`, or undefined without
 * tls-creds. The certificate must name `tls-hostname` if set, else the URI's
 * host; a unix: URI has none, so x509 there needs tls-hostname (as QEMU).
 */
export function clientTlsFor(parameters: Readonly<MigrationParameters>, uri: string, security: ChannelSecurity | undefined): TlsClientSettings | undefined {
  const credsId = stringParameter(parameters, 'tls-creds');
  if (credsId === '') return undefined;
  if (!security) throw new MigrationError('refused', `No TLS credentials with id '${credsId}'`);
  const address = parseMigrationUri(uri);
  if (address.kind !== 'tcp' && address.kind !== 'unix') {
    throw new MigrationError('refused', `${uri}: TLS (tls-creds) runs on tcp: and unix: channels only`);
  }
  const configured = stringParameter(parameters, 'tls-hostname');
  const hostname = configured !== '' ? configured : address.kind === 'tcp' ? address.host : undefined;
  try {
    return security.client({ credsId, hostname });
  } catch (err) {
    throw refused(err);
  }
}

/** The destination's TLS settings, or undefined without tls-creds. */
export function serverTlsFor(parameters: Readonly<MigrationParameters>, uri: string, security: ChannelSecurity | undefined): TlsServerSettings | undefined {
  const credsId = stringParameter(parameters, 'tls-creds');
  if (credsId === '') return undefined;
  if (!security) throw new MigrationError('refused', `No TLS credentials with id '${credsId}'`);
  const kind = parseMigrationUri(uri).kind;
  if (kind !== 'tcp' && kind !== 'unix') throw new MigrationError('refused', `${uri}: TLS (tls-creds) runs on tcp: and unix: channels only`);
  try {
    return security.server({ credsId, authzId: stringParameter(parameters, 'tls-authz') });
  } catch (err) {
    throw refused(err);
  }
}
