/**
 * `tls-creds-x509`: a directory of PEM files, named as QEMU names them
 * (crypto/tlscredsx509.c): ca-cert.pem (and optional ca-crl.pem) for both
 * ends, server-cert.pem + server-key.pem for a server, client-cert.pem +
 * client-key.pem (optional) for a client.
 *
 * Loaded and checked when the object is created, as QEMU does, so a bad
 * file is reported by `--object`/`object-add` rather than in the middle of a
 * migration. `sanity-check=off` skips the checks of the certificates' own
 * validity (QEMU's property), e.g. to show what a peer says about them.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext, type ConnectionOptions, type TLSSocketOptions } from 'node:tls';
import { printable } from '../wire/printable.js';
import { ObjectError, type Endpoint } from './object-error.js';

export interface X509CredsProps {
  id: string;
  dir: string;
  endpoint: Endpoint;
  verifyPeer: boolean;
  sanityCheck: boolean;
}

const SERVER_AUTH_OID = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';

interface Loaded {
  ca: Buffer;
  crl?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

function readOptional(path: string): Buffer | undefined {
  try {
    return readFileSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Every certificate of a PEM bundle. */
function certificatesOf(pem: Buffer, path: string, id: string): X509Certificate[] {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new ObjectError(`tls-creds-x509 '${id}': ${printable(path)} holds no PEM certificate`);
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new ObjectError(`tls-creds-x509 '${id}': certificate ${i + 1} of ${printable(path)} does not parse: ${(err as Error).message}`);
    }
  });
}

export class X509Creds {
  readonly kind = 'x509';
  private readonly files: Loaded;

  constructor(readonly props: X509CredsProps) {
    this.files = this.load();
  }

  get describe(): string {
    return `tls-creds-x509 '${this.props.id}' (${printable(this.props.dir)})`;
  }

  private path(name: string): string {
    return join(this.props.dir, name);
  }

  private load(): Loaded {
    const { id, endpoint } = this.props;
    const read = (name: string, required: boolean): Buffer | undefined => {
      let data: Buffer | undefined;
      try {
        data = readOptional(this.path(name));
      } catch (err) {
        throw new ObjectError(`tls-creds-x509 '${id}': cannot read ${printable(this.path(name))}: ${(err as Error).message}`);
      }
      if (!data && required) throw new ObjectError(`tls-creds-x509 '${id}': Unable to access credentials ${printable(this.path(name))}: No such file or directory`);
      return data;
    };
    const ca = read('ca-cert.pem', true)!;
    const crl = read('ca-crl.pem', false);
    const cert = read(`${endpoint}-cert.pem`, endpoint === 'server');
    const key = read(`${endpoint}-key.pem`, endpoint === 'server' || cert !== undefined);
    if (key && !cert) throw new ObjectError(`tls-creds-x509 '${id}': ${printable(this.path(`${endpoint}-key.pem`))} has no ${endpoint}-cert.pem beside it`);
    const loaded: Loaded = { ca, ...(crl ? { crl } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) };
    this.check(loaded);
    try {
      createSecureContext(this.contextOptions(loaded)); // what Node would refuse later, refused now
    } catch (err) {
      throw new ObjectError(`tls-creds-x509 '${id}': the files in ${printable(this.props.dir)} do not form usable credentials: ${(err as Error).message}`);
    }
    return loaded;
  }

  /** QEMU's sanity checks (crypto/tlscredsx509.c), the ones that catch real mistakes. */
  private check(files: Loaded): void {
    const { id, endpoint, sanityCheck } = this.props;
    const where = (name: string): string => printable(this.path(name));
    const cas = certificatesOf(files.ca, this.path('ca-cert.pem'), id);
    const nowMs = Date.now();
    const checkTimes = (cert: X509Certificate, name: string): void => {
      if (!sanityCheck) return;
      if (Date.parse(cert.validTo) < nowMs) throw new ObjectError(`tls-creds-x509 '${id}': the certificate ${where(name)} has expired (notAfter ${cert.validTo})`);
      if (Date.parse(cert.validFrom) > nowMs) throw new ObjectError(`tls-creds-x509 '${id}': the certificate ${where(name)} is not yet active (notBefore ${cert.validFrom})`);
    };
    for (const ca of cas) {
      checkTimes(ca, 'ca-cert.pem');
      if (sanityCheck && !ca.ca) throw new ObjectError(`tls-creds-x509 '${id}': the certificate ${where('ca-cert.pem')} is not a CA (basicConstraints CA:FALSE or absent)`);
    }
    if (!files.cert || !files.key) return;
    const certName = `${endpoint}-cert.pem`;
    const [cert] = certificatesOf(files.cert, this.path(certName), id);
    checkTimes(cert!, certName);
    let keyMatches: boolean;
    try {
      keyMatches = cert!.checkPrivateKey(createPrivateKey(files.key));
    } catch (err) {
      throw new ObjectError(`tls-creds-x509 '${id}': ${where(`${endpoint}-key.pem`)} is not a usable private key: ${(err as Error).message}`);
    }
    if (!keyMatches) throw new ObjectError(`tls-creds-x509 '${id}': ${where(`${endpoint}-key.pem`)} is not the key of ${where(certName)}`);
    if (!sanityCheck) return;
    if (!cas.some((ca) => cert!.checkIssued(ca) && cert!.verify(ca.publicKey))) {
      throw new ObjectError(`tls-creds-x509 '${id}': ${where(certName)} (issuer ${printable(cert!.issuer.replace(/\n/g, ', '))}) is not signed by ${where('ca-cert.pem')}`);
    }
    const purposes = cert!.keyUsage; // extended key usage OIDs, undefined when the certificate restricts none
    const wanted = endpoint === 'server' ? SERVER_AUTH_OID : CLIENT_AUTH_OID;
    if (purposes && purposes.length > 0 && !purposes.includes(wanted)) {
      throw new ObjectError(`tls-creds-x509 '${id}': ${where(certName)} is not for ${endpoint === 'server' ? 'TLS servers (extendedKeyUsage serverAuth)' : 'TLS clients (extendedKeyUsage clientAuth)'}`);
    }
  }

  private contextOptions(files: Loaded): { ca: Buffer; crl?: Buffer; cert?: Buffer; key?: Buffer } {
    return { ca: files.ca, ...(files.crl ? { crl: files.crl } : {}), ...(files.cert ? { cert: files.cert } : {}), ...(files.key ? { key: files.key } : {}) };
  }

  /** Node's options for the source's end. */
  clientOptions(): ConnectionOptions {
    return { ...this.contextOptions(this.files), rejectUnauthorized: this.props.verifyPeer, minVersion: 'TLSv1.2' };
  }

  /**
   * verify-peer on a server: the client's certificate must be signed by a CA
   * in ca-cert.pem (directly: list intermediates there too), be valid now and
   * be meant for TLS clients.
   */
  checkClientCertificate(certificate: X509Certificate | undefined): string | undefined {
    if (!certificate) return 'the source sent no certificate, and verify-peer is on';
    const subject = printable(certificate.subject.split('\n').join(','));
    const cas = certificatesOf(this.files.ca, this.path('ca-cert.pem'), this.props.id);
    if (!cas.some((ca) => certificate.checkIssued(ca) && certificate.verify(ca.publicKey))) {
      return `the source's certificate '${subject}' (issuer ${printable(certificate.issuer.replace(/\n/g, ', '))}) is not signed by a CA in ${printable(this.path('ca-cert.pem'))}`;
    }
    const nowMs = Date.now();
    if (Date.parse(certificate.validTo) < nowMs) return `the source's certificate '${subject}' has expired (notAfter ${certificate.validTo})`;
    if (Date.parse(certificate.validFrom) > nowMs) return `the source's certificate '${subject}' is not valid yet (notBefore ${certificate.validFrom})`;
    const purposes = certificate.keyUsage;
    if (purposes && purposes.length > 0 && !purposes.includes(CLIENT_AUTH_OID)) return `the source's certificate '${subject}' is not meant for TLS clients (no extendedKeyUsage clientAuth)`;
    return undefined;
  }

  /** Node's options for the destination's end: with verify-peer the client must show a certificate from our CA. */
  serverOptions(): TLSSocketOptions {
    return {
      // Both forms: a TLSSocket uses the context, a tls.Server (QMP) builds its own from the files.
      ...this.contextOptions(this.files),
      minVersion: 'TLSv1.2',
      secureContext: createSecureContext({ ...this.contextOptions(this.files), minVersion: 'TLSv1.2' }),
      requestCert: this.props.verifyPeer,
      rejectUnauthorized: this.props.verifyPeer,
    };
  }
}
