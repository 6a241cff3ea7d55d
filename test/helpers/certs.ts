/**
 * Test certificates made with `openssl` (Debian's openssl package), laid out
 * as QEMU's tls-creds-x509 directories: ca-cert.pem plus server-cert.pem /
 * server-key.pem or client-cert.pem / client-key.pem. Also tls-creds-psk
 * directories (keys.psk). One call makes every variant the failure tests need.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';

/** Undefined when openssl runs, else why the test is skipped and what to install. */
export function opensslSkipReason(): string | undefined {
  const probe = spawnSync('openssl', ['version'], { encoding: 'utf8' });
  return probe.error || probe.status !== 0 ? 'openssl not found: install it (apt-get install -y openssl)' : undefined;
}

export interface TestPki {
  root: string;
  /** x509 directories: a server and a client of one CA. */
  server: string;
  client: string;
  /** The client certificate's DN as tls-authz sees it. */
  clientDn: string;
  /** Same CA, no client certificate. */
  clientNoCert: string;
  /** Same CA, a client certificate with another DN. */
  clientIntruder: string;
  intruderDn: string;
  /** A client of another CA (its ca-cert.pem and certificate are the other CA's). */
  clientOtherCa: string;
  /** A client that trusts our CA but whose certificate another CA signed. */
  clientForeign: string;
  /** Server certificates of the first CA: expired, not yet valid, for another host name. */
  serverExpired: string;
  serverFuture: string;
  serverOtherName: string;
  /** PSK: the same identity ('qemu') with the same key, and with another key. */
  pskA: string;
  pskB: string;
}

const CA_CONFIG = `[ ca ]
default_ca = CA_default
[ CA_default ]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[ policy_any ]
countryName = optional
organizationName = optional
commonName = supplied
`;

function openssl(cwd: string, args: string[]): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeCa(dir: string, name: string): void {
  mkdirSync(dir, { recursive: true });
  openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem',
    '-subj', `/CN=${name}`, '-days', '30', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  writeFileSync(join(dir, 'ca.cnf'), CA_CONFIG);
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '1000\n');
}

/** A certificate of the CA in caDir, written as DIR/<endpoint>-cert.pem and -key.pem beside a copy of ca-cert.pem. */
function issue(
  caDir: string,
  dir: string,
  endpoint: 'server' | 'client',
  subject: string,
  opts: { altNames?: string; startDate?: string; endDate?: string; days?: number; trustCaDir?: string } = {},
): void {
  mkdirSync(dir, { recursive: true });
  const base = join(dir, endpoint);
  openssl(caDir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${base}-key.pem`, '-out', `${base}.csr`, '-subj', subject]);
  const ext = [
    'basicConstraints=CA:FALSE',
    'keyUsage=digitalSignature,keyEncipherment',
    `extendedKeyUsage=${endpoint}Auth`,
    ...(opts.altNames ? [`subjectAltName=${opts.altNames}`] : []),
  ].join('\n');
  writeFileSync(`${base}.ext`, ext + '\n');
  const dates = opts.startDate ? ['-startdate', opts.startDate, '-enddate', opts.endDate!] : ['-days', String(opts.days ?? 30)];
  openssl(caDir, ['ca', '-batch', '-config', 'ca.cnf', '-cert', 'ca-cert.pem', '-keyfile', 'ca-key.pem', '-in', `${base}.csr`, '-out', `${base}-cert.pem`,
    '-extfile', `${base}.ext`, '-notext', '-preserveDN', ...dates]);
  copyFileSync(join(opts.trustCaDir ?? caDir, 'ca-cert.pem'), join(dir, 'ca-cert.pem'));
}

export function makeTestPki(root: string): TestPki {
  const ca = join(root, 'ca');
  const otherCa = join(root, 'other-ca');
  makeCa(ca, 'livemig test CA');
  makeCa(otherCa, 'some other CA');
  const localNames = 'DNS:localhost,IP:127.0.0.1,IP:::1';
  const pki: TestPki = {
    root,
    server: join(root, 'server'),
    client: join(root, 'client'),
    clientDn: 'C=GB,O=livemig test,CN=source.example',
    clientNoCert: join(root, 'client-nocert'),
    clientIntruder: join(root, 'client-intruder'),
    intruderDn: 'C=GB,O=livemig test,CN=intruder.example',
    clientOtherCa: join(root, 'client-otherca'),
    clientForeign: join(root, 'client-foreign'),
    serverExpired: join(root, 'server-expired'),
    serverFuture: join(root, 'server-future'),
    serverOtherName: join(root, 'server-othername'),
    pskA: join(root, 'psk-a'),
    pskB: join(root, 'psk-b'),
  };
  issue(ca, pki.server, 'server', '/CN=destination.example', { altNames: localNames });
  issue(ca, pki.client, 'client', '/C=GB/O=livemig test/CN=source.example');
  mkdirSync(pki.clientNoCert, { recursive: true });
  copyFileSync(join(ca, 'ca-cert.pem'), join(pki.clientNoCert, 'ca-cert.pem'));
  issue(ca, pki.clientIntruder, 'client', '/C=GB/O=livemig test/CN=intruder.example');
  issue(otherCa, pki.clientOtherCa, 'client', '/CN=stranger.example', { trustCaDir: otherCa });
  issue(otherCa, pki.clientForeign, 'client', '/CN=foreigner.example', { trustCaDir: ca });
  issue(ca, pki.serverExpired, 'server', '/CN=destination.example', { altNames: localNames, startDate: '20200101000000Z', endDate: '20210101000000Z' });
  issue(ca, pki.serverFuture, 'server', '/CN=destination.example', { altNames: localNames, startDate: '20990101000000Z', endDate: '20991231000000Z' });
  issue(ca, pki.serverOtherName, 'server', '/CN=other.example', { altNames: 'DNS:other.example' });
  const key = randomBytes(32).toString('hex');
  for (const [dir, hex] of [[pki.pskA, key], [pki.pskB, randomBytes(32).toString('hex')]] as const) {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'keys.psk'), `qemu:${hex}\n`, { mode: 0o600 });
  }
  return pki;
}

/** A test file's scratch directory and certificates, made in `before` (unless skipped) and removed in `after`. */
export interface PkiSuite {
  /** The scratch directory (the certificates are in its `pki` folder). */
  dir: string;
  pki: TestPki;
}

/** Register the hooks that make (and remove) a PkiSuite for the calling test file. */
export function pkiSuite(prefix: string, skip: string | undefined): PkiSuite {
  const suite = { dir: '' } as PkiSuite;
  before(() => {
    if (skip) return;
    suite.dir = mkdtempSync(join(tmpdir(), prefix));
    suite.pki = makeTestPki(join(suite.dir, 'pki'));
  });
  after(() => {
    if (suite.dir) rmSync(suite.dir, { recursive: true, force: true });
  });
  return suite;
}
