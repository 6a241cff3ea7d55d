/**
 * TLS on migration channels, as QEMU 7.2 does it: no STARTTLS; the handshake
 * is the first thing on every socket (the main channel, whose return path
 * runs inside the same session, and each multifd channel on its own).
 *
 * This module knows Node's TLS and nothing about credentials objects: the
 * caller (src/security/) turns `tls-creds`, `tls-hostname` and `tls-authz`
 * into the settings below. Failures are explained in words an operator can act
 * on (which side refused what, and why), since OpenSSL's own texts
 * ("tlsv13 alert certificate required") name neither.
 */
import { X509Certificate } from 'node:crypto';
import { isIP, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { checkServerIdentity, connect as tlsConnect, TLSSocket, type ConnectionOptions, type TLSSocketOptions } from 'node:tls';
import { TransportError } from './errors.js';

/** What the source's side of a TLS session uses. */
export interface TlsClientSettings {
  /** Node's options: `ca`, `cert`, `key` (x509) or `pskCallback` and SHA-256 `ciphers` (PSK). */
  options: ConnectionOptions;
  /**
   * The name the destination's certificate must carry (x509: `tls-hostname`,
   * else the URI's host); undefined for PSK, which has no certificate.
   */
  hostname?: string;
  /** For messages: e.g. `tls-creds 'tls0' (x509, /etc/livemig/tls)`. */
  describe: string;
}

/** Who the peer proved to be: an x509 certificate's distinguished name (RFC 4514, as GnuTLS prints it) or a PSK identity. */
export interface TlsPeer {
  kind: 'x509' | 'psk';
  /** `CN=host.example,O=Example,C=GB`, or the PSK username; '' when the peer showed no certificate. */
  identity: string;
}

/** What the destination's side of a TLS session uses. */
export interface TlsServerSettings {
  /** Node's options for `new TLSSocket(socket, { isServer: true, ... })`. */
  options: TLSSocketOptions;
  /**
   * After the handshake (verify-peer): check the client's certificate, a reason
   * to refuse it or undefined. Needed because a server-side TLSSocket made
   * from a socket (not by tls.Server) completes its handshake whatever
   * OpenSSL thought of the certificate; only a missing one fails inside it.
   */
  verifyPeer?(certificate: X509Certificate | undefined): string | undefined;
  /** After the handshake (tls-authz): a reason to refuse this peer, or undefined to accept it. */
  authorize?(peer: TlsPeer): string | undefined;
  describe: string;
}

/** The ALPN protocol a livemig source offers; a QEMU source offers none. */
export const LIVEMIG_ALPN = 'x-livemig-1';

/**
 * The connection under a destination's TLS session, holding back what the
 * session writes between the handshake and our first write.
 *
 * Why: OpenSSL's TLS 1.3 server sends session tickets right after the
 * handshake (Node cannot turn that off), and GnuTLS's (QEMU's) sends none.
 * A QEMU source never reads its main channel without the return path, nor its
 * multifd channels: the tickets stay unread in its socket, so its close()
 * at the end becomes a TCP reset, and the reset throws away the stream's
 * last megabytes still queued here. Held back, they go out only in front
 * of our first own bytes, which a peer that reads will read. A livemig
 * source (ALPN x-livemig-1) reads them at once and gets them at once.
 */
class TicketHold extends Duplex {
  private held: Buffer[] | undefined;

  constructor(private readonly raw: Socket) {
    super({ allowHalfOpen: true });
    raw.setNoDelay?.(true);
    raw.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) raw.pause();
    });
    raw.on('end', () => this.push(null));
    raw.on('error', (err) => this.destroy(err));
    raw.on('close', () => this.destroy());
  }

  /** From now on, keep what is written until `session` writes (or ends) itself. */
  holdUntilWritten(session: TLSSocket): void {
    this.held = [];
    const release = (): void => {
      session.write = write;
      session.end = end;
      const held = this.held ?? [];
      this.held = undefined;
      for (const chunk of held) this.raw.write(chunk);
    };
    const write = session.write;
    const end = session.end;
    session.write = ((...args: Parameters<TLSSocket['write']>) => {
      release();
      return write.apply(session, args);
    }) as TLSSocket['write'];
    session.end = ((...args: Parameters<TLSSocket['end']>) => {
      release();
      return end.apply(session, args);
    }) as TLSSocket['end'];
  }

  override _read(): void {
    this.raw.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.held) {
      this.held.push(chunk);
      callback();
    } else this.raw.write(chunk, callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.raw.end(callback);
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.raw.destroy();
    callback(err);
  }
}

/** How long a peer may take over its handshake before its connection is dropped. */
export const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * `C=GB,O=...,CN=...`: the subject as QEMU 7.2 hands it to tls-authz
 * (gnutls_x509_crt_get_dn: the certificate's own order, joined by commas;
 * checked against real QEMU), so one authz identity works for both.
 */
export function distinguishedName(certificate: X509Certificate): string {
  // Node prints one attribute per line, in the certificate's order.
  return certificate.subject.split('\n').filter((line) => line !== '').join(',');
}

/** The PSK identity a server-side socket was offered (recorded by pskCallback). */
const pskIdentities = new WeakMap<object, string>();

/** For the server's pskCallback: remember which identity this socket used. */
export function notePskIdentity(socket: object, identity: string): void {
  pskIdentities.set(socket, identity);
}

/** Who the peer of a server-side session proved to be. */
export function tlsPeerOf(socket: TLSSocket): TlsPeer {
  const psk = pskIdentities.get(socket);
  if (psk !== undefined) return { kind: 'psk', identity: psk };
  const certificate = socket.getPeerX509Certificate();
  return { kind: 'x509', identity: certificate ? distinguishedName(certificate) : '' };
}

/** The source side: run the handshake on a connected socket; rejects with TransportError('tls-failed') saying why. */
export function secureClient(socket: Socket, settings: TlsClientSettings, uri: string, signal?: AbortSignal): Promise<TLSSocket> {
  const { hostname } = settings;
  const options: ConnectionOptions = {
    ...settings.options,
    socket,
    // Tells a livemig destination that we read what it sends (see TicketHold).
    ALPNProtocols: [LIVEMIG_ALPN],
    // SNI carries names only, never addresses (RFC 6066).
    ...(hostname !== undefined && isIP(hostname) === 0 ? { servername: hostname } : {}),
    // Node would check the name it connected to; QEMU checks tls-hostname when it is set.
    checkServerIdentity: hostname === undefined ? () => undefined : (_host, cert) => checkServerIdentity(hostname, cert),
  };
  return new Promise<TLSSocket>((resolve, reject) => {
    const secure = tlsConnect(options);
    const timer = setTimeout(() => fail(new Error(`no TLS handshake within ${TLS_HANDSHAKE_TIMEOUT_MS} ms`)), TLS_HANDSHAKE_TIMEOUT_MS);
    const onAbort = (): void => fail(new Error('aborted'));
    signal?.addEventListener('abort', onAbort, { once: true });
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      secure.off('error', fail);
    };
    function fail(err: Error): void {
      done();
      secure.destroy();
      socket.destroy();
      const code = signal?.aborted ? 'aborted' : 'tls-failed';
      reject(new TransportError(code, uri, `TLS handshake with ${uri} failed: ${explainTlsError(err, 'client', settings)}`, { cause: err }));
    }
    secure.once('error', fail);
    secure.once('secureConnect', () => {
      // Only a livemig destination (it answered our ALPN) is known to send tickets at once;
      // QEMU's GnuTLS sends none, and waiting for them would only add TLS13_CONFIRM_MS.
      if (secure.getProtocol() !== 'TLSv1.3' || secure.alpnProtocol !== LIVEMIG_ALPN) {
        done();
        explainLaterErrors(secure, 'client', settings);
        setImmediate(() => resolve(secure)); // see confirmed() below
        return;
      }
      // TLS 1.3: the client is done before the server has judged the client's
      // certificate. A server that accepts sends session tickets; one that
      // refuses sends an alert. Waiting for either turns "write EPIPE" in the
      // middle of the stream into the server's reason, here.
      clearTimeout(timer);
      const onClose = (): void => fail(Object.assign(new Error('closed'), { code: 'ECONNRESET' }));
      const confirmed = (): void => {
        clearTimeout(grace);
        secure.off('session', confirmed);
        secure.off('close', onClose);
        done();
        explainLaterErrors(secure, 'client', settings);
        // 'session' is emitted from inside OpenSSL's read: writing from there (the
        // caller's continuation runs as a microtask at its end) corrupts the record
        // layer (the peer sees "bad record mac"). Continue from a fresh tick.
        setImmediate(() => resolve(secure));
      };
      const grace = setTimeout(confirmed, TLS13_CONFIRM_MS); // a server that sends no tickets
      secure.once('session', confirmed);
      secure.once('close', onClose);
      secure.once('error', () => {
        clearTimeout(grace);
        secure.off('session', confirmed);
        secure.off('close', onClose);
      });
    });
  });
}

/** How long a TLS 1.3 client waits for the server to accept it (session tickets) before it starts sending anyway. */
export const TLS13_CONFIRM_MS = 300;

/**
 * The destination side: run the handshake on an accepted socket, then the
 * authorization check. Rejects with TransportError('tls-failed') saying why;
 * the socket is then destroyed.
 */
export function secureServer(socket: Socket, settings: TlsServerSettings, uri: string): Promise<{ socket: TLSSocket; peer: TlsPeer }> {
  return new Promise((resolve, reject) => {
    const wire = new TicketHold(socket);
    const secure = new TLSSocket(wire, { ...settings.options, isServer: true, ALPNProtocols: [LIVEMIG_ALPN] });
    const timer = setTimeout(() => fail(new Error(`no TLS handshake within ${TLS_HANDSHAKE_TIMEOUT_MS} ms`)), TLS_HANDSHAKE_TIMEOUT_MS);
    const done = (): void => {
      clearTimeout(timer);
      secure.off('error', fail);
      secure.off('close', onClose);
      secure.off('end', onClose);
    };
    function fail(err: Error): void {
      done();
      secure.destroy();
      socket.destroy();
      reject(new TransportError('tls-failed', uri, `TLS handshake failed: ${explainTlsError(err, 'server', settings)}`, { cause: err }));
    }
    const onClose = (): void => fail(Object.assign(new Error('the peer closed the connection during the TLS handshake'), { code: 'ECONNRESET' }));
    secure.once('error', fail);
    // The TLS socket owns the connection's handle now: it, not `socket`, reports the close.
    secure.once('close', onClose);
    // Listeners allow half-open sockets: a peer that gives up only ends its side.
    secure.once('end', onClose);
    secure.once('secure', () => {
      done();
      // A peer that is not livemig (QEMU) gets our session tickets only once we have something to say.
      if (secure.alpnProtocol !== LIVEMIG_ALPN) wire.holdUntilWritten(secure);
      const peer = tlsPeerOf(secure);
      const refusal = (peer.kind === 'x509' ? settings.verifyPeer?.(secure.getPeerX509Certificate()) : undefined) ?? settings.authorize?.(peer);
      if (refusal !== undefined) {
        secure.destroy();
        socket.destroy();
        reject(new TransportError('tls-failed', uri, `TLS peer refused: ${refusal}`));
        return;
      }
      explainLaterErrors(secure, 'server', settings);
      // 'secure' is emitted from inside OpenSSL: continue from a fresh tick (see secureClient).
      setImmediate(() => resolve({ socket: secure, peer }));
    });
  });
}

/**
 * In TLS 1.3 the client finishes its handshake before the server has checked
 * the client's certificate: a refusal arrives later, as a read error. Its text
 * is rewritten here, before the channel's own 'error' listener reads it.
 */
function explainLaterErrors(socket: TLSSocket, role: 'client' | 'server', settings: TlsClientSettings | TlsServerSettings): void {
  socket.prependListener('error', (err: Error & { code?: string }) => {
    if (typeof err.code === 'string' && err.code.startsWith('ERR_SSL_')) err.message = `TLS: ${explainTlsError(err, role, settings)}`;
  });
}

/** Words for a TLS failure, seen from `role` (client = the source, server = the destination). */
export function explainTlsError(err: Error & { code?: string; reason?: string }, role: 'client' | 'server', settings: { describe: string }): string {
  const peer = role === 'client' ? 'the destination' : 'the source';
  const ours = settings.describe;
  const code = err.code ?? '';
  switch (code) {
    // Checks this side made of the peer's certificate.
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'CERT_SIGNATURE_FAILURE':
      return `${peer}'s certificate is not signed by the CA we trust (ca-cert.pem of ${ours}): ${err.message}`;
    case 'CERT_HAS_EXPIRED':
      return `${peer}'s certificate has expired (${ours} checked it against the current time)`;
    case 'CERT_NOT_YET_VALID':
      return `${peer}'s certificate is not valid yet (its notBefore is in the future; check both clocks)`;
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return `${peer}'s certificate does not name the host we expect: ${err.reason ?? err.message}; connect by a name it carries or set the tls-hostname parameter`;
    case 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE':
      return `${peer} sent no certificate, and ${ours} verifies peers (verify-peer=on): give the source client-cert.pem and client-key.pem`;
    case 'ERR_SSL_CERTIFICATE_VERIFY_FAILED':
      return `${peer}'s certificate failed verification against ca-cert.pem of ${ours} (wrong CA, expired or not yet valid): ${err.message}`;
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
    case 'ERR_SSL_HTTP_REQUEST':
    case 'ERR_SSL_PACKET_LENGTH_TOO_LONG':
    case 'ERR_SSL_UNEXPECTED_MESSAGE':
      return role === 'server'
        ? `${peer} did not start a TLS handshake (a plaintext migration stream? set tls-creds on the source too)`
        : `${peer} does not speak TLS (set tls-creds on the destination too)`;
    // Alerts: the peer refused something of ours.
    case 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED':
      return `${peer} requires a client certificate and ${ours} has none (client-cert.pem and client-key.pem)`;
    case 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA':
      return `${peer} does not trust our certificate (unknown CA; ${ours})`;
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED':
      return `${peer} says our certificate has expired (${ours})`;
    case 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE':
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN':
    case 'ERR_SSL_TLSV1_ALERT_ACCESS_DENIED':
      return `${peer} refused our certificate (${ours}): ${err.message.replace(/^.*SSL routines:[^:]*:/, '')}`;
    case 'ERR_SSL_TLSV1_ALERT_DECRYPT_ERROR':
    case 'ERR_SSL_DECRYPTION_FAILED_OR_BAD_RECORD_MAC':
    case 'ERR_SSL_BAD_RECORD_MAC':
    case 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE':
    case 'ERR_SSL_NO_SHARED_CIPHER':
    case 'ERR_SSL_NO_SUITABLE_SIGNATURE_ALGORITHM':
    case 'ERR_SSL_TLSV1_ALERT_INTERNAL_ERROR':
    case 'ERR_SSL_NO_SHARED_SIGNATURE_ALGORITHMS':
      return `the TLS handshake failed (${code.replace(/^ERR_SSL_/, '').toLowerCase().replace(/_/g, ' ')}): with PSK the two sides' keys differ or ${role === 'client' ? 'the destination has no key for our identity' : 'the identity is unknown here'}; with x509 the credentials do not fit each other (${ours})`;
    case 'ECONNRESET':
    case 'EPIPE':
      return role === 'client'
        ? `${peer} closed the connection during the TLS handshake: it may have no tls-creds (a plaintext destination), or it refused our credentials (${ours}); its own log says which`
        : `${peer} closed the connection during the TLS handshake (it may not trust our certificate, or may use other credentials; its own log says which)`;
    default:
      return err.message.replace(/^[0-9A-F]+:error:[0-9A-F]+:SSL routines:[^:]*:/, '') + (code ? ` (${code})` : '');
  }
}
