/**
 * User-created objects, as QEMU's `-object` / QMP `object-add` / `object-del`
 * spell them: TLS credentials (`tls-creds-x509`, `tls-creds-psk`) and
 * authorization lists (`authz-simple`, `authz-list`). The migration names
 * them by id in `tls-creds` and `tls-authz`; this registry turns those ids
 * into TLS settings (it is the engine's ChannelSecurity).
 *
 * `--object TYPE,id=ID,KEY=VALUE,...` is QEMU's keyval syntax (`,,` is a comma
 * inside a value, `rules.0.match=...` builds lists); `--object '{"qom-type":...}'`
 * its JSON form. Both check every property as QMP's object-add does.
 */
import type { ChannelSecurity } from '../migration/security.js';
import type { TlsClientSettings, TlsServerSettings } from '../transport/tls.js';
import { printable } from '../wire/printable.js';
import { AuthzList, AuthzSimple, parseAuthzRules, type Authz } from './authz.js';
import { ObjectError, type Endpoint } from './object-error.js';
import { DEFAULT_PSK_USERNAME, PskCreds } from './psk.js';
import { X509Creds } from './x509.js';

export type TlsCreds = X509Creds | PskCreds;
export type UserObject = { type: 'tls-creds-x509'; value: X509Creds } | { type: 'tls-creds-psk'; value: PskCreds } | { type: 'authz-simple' | 'authz-list'; value: Authz };

type PropType = 'string' | 'bool' | 'endpoint' | 'policy' | 'rules';
interface PropSpec {
  type: PropType;
  required?: boolean;
  /** A QEMU property livemig does not implement: refused with this reason. */
  refused?: string;
}

const CREDS_COMMON: Record<string, PropSpec> = {
  dir: { type: 'string', required: true },
  endpoint: { type: 'endpoint' },
  'verify-peer': { type: 'bool' },
  loaded: { type: 'bool' }, // deprecated in QEMU; creating an object loads it
  priority: { type: 'string', refused: "a GnuTLS priority string; livemig's TLS is OpenSSL's (TLS 1.2 and 1.3 with its default suites)" },
};

const SCHEMAS: Record<string, Record<string, PropSpec>> = {
  'tls-creds-x509': {
    ...CREDS_COMMON,
    'sanity-check': { type: 'bool' },
    passwordid: { type: 'string', refused: 'encrypted private keys are not supported: give server-key.pem/client-key.pem unencrypted, readable by this user only' },
  },
  'tls-creds-psk': { ...CREDS_COMMON, username: { type: 'string' } },
  'authz-simple': { identity: { type: 'string', required: true } },
  'authz-list': { policy: { type: 'policy' }, rules: { type: 'rules' } },
};

/** Every property any object type has (QMP object-add's argument names besides qom-type and id). */
export const OBJECT_PROPERTY_NAMES: readonly string[] = [...new Set(Object.values(SCHEMAS).flatMap((schema) => Object.keys(schema)))];

const NOT_SUPPORTED: Record<string, string> = {
  'tls-creds-anon': 'anonymous TLS authenticates nobody, and OpenSSL does not offer it; use tls-creds-psk or tls-creds-x509',
  'authz-listfile': 'use authz-list (its rules given in the object itself)',
  'authz-pam': 'PAM is not available to livemig',
};

/** QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'. */
const ID_TEXT = /^[A-Za-z][A-Za-z0-9_.-]*$/;
const MAX_ID_CHARS = 128;

const TRUE_WORDS = new Set(['on', 'yes', 'true', 'y']);
const FALSE_WORDS = new Set(['off', 'no', 'false', 'n']);

/** `--object` text → `{qom-type, id, ...}` with string values (keyval) or JSON values (JSON form). */
export function parseObjectText(text: string): { props: Record<string, unknown>; typed: boolean } {
  if (text.trimStart().startsWith('{')) {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new ObjectError(`--object: not valid JSON: ${(err as Error).message}`);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ObjectError('--object: the JSON form must be an object');
    return { props: value as Record<string, unknown>, typed: true };
  }
  const props: Record<string, unknown> = {};
  const items: string[] = [];
  let current = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === ',') {
      if (text[i + 1] === ',') {
        current += ',';
        i++;
      } else {
        items.push(current);
        current = '';
      }
    } else current += c;
  }
  items.push(current);
  items.forEach((item, index) => {
    const eq = item.indexOf('=');
    if (eq < 0) {
      if (index === 0) return void (props['qom-type'] = item);
      throw new ObjectError(`--object '${printable(text)}': '${printable(item)}' is not KEY=VALUE`);
    }
    const key = item.slice(0, eq);
    if (!/^[A-Za-z0-9_.-]+$/.test(key)) throw new ObjectError(`--object '${printable(text)}': bad property name '${printable(key)}'`);
    setDotted(props, key, item.slice(eq + 1), text);
  });
  return { props, typed: false };
}

/** `rules.0.match=X` → props.rules[0].match = 'X' (QEMU's keyval list syntax). */
function setDotted(target: Record<string, unknown>, key: string, value: string, text: string): void {
  const parts = key.split('.');
  let node: Record<string, unknown> | unknown[] = target;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    const last = i === parts.length - 1;
    const isIndex = /^\d{1,4}$/.test(part);
    if (Array.isArray(node) !== isIndex && i > 0) throw new ObjectError(`--object '${printable(text)}': '${printable(key)}' mixes list indexes and names`);
    const slot = isIndex ? Number(part) : part;
    const container = node as Record<string | number, unknown>;
    if (last) {
      if (container[slot] !== undefined) throw new ObjectError(`--object '${printable(text)}': '${printable(key)}' is given twice`);
      container[slot] = value;
    } else {
      container[slot] ??= /^\d{1,4}$/.test(parts[i + 1]!) ? [] : {};
      node = container[slot] as Record<string, unknown> | unknown[];
    }
  }
}

export class ObjectRegistry implements ChannelSecurity {
  private readonly objects = new Map<string, UserObject>();

  /** `--object TEXT`. */
  addFromText(text: string): UserObject {
    const { props, typed } = parseObjectText(text);
    const type = props['qom-type'];
    if (typeof type !== 'string') throw new ObjectError(`--object '${printable(text)}': the object type is missing (e.g. tls-creds-x509,id=tls0,...)`);
    const { 'qom-type': _, ...rest } = props;
    return this.add(type, rest, typed);
  }

  /**
   * QMP `object-add` (typed: JSON values must have the property's type) or a
   * command line's keyval text (strings, converted). All checks and file
   * loading happen before the object is added.
   */
  add(type: string, props: Record<string, unknown>, typed = true): UserObject {
    if (Object.hasOwn(NOT_SUPPORTED, type)) throw new ObjectError(`object type '${type}' is not supported: ${NOT_SUPPORTED[type]}`);
    if (!Object.hasOwn(SCHEMAS, type)) throw new ObjectError(`invalid object type: ${printable(type)} (livemig has ${Object.keys(SCHEMAS).join(', ')})`);
    const id = props.id;
    if (typeof id !== 'string') throw new ObjectError(`${type}: Parameter 'id' is missing`);
    if (!ID_TEXT.test(id) || id.length > MAX_ID_CHARS) throw new ObjectError(`${type}: Parameter 'id' expects an identifier (a letter, then letters, digits, '-', '.', '_')`);
    if (this.objects.has(id)) throw new ObjectError(`attempt to add duplicate object '${id}': an object with that id exists`);
    const values = checkProps(type, id, props, typed);
    const object = build(type, id, values);
    this.objects.set(id, object);
    return object;
  }

  /** QMP `object-del`. A migration that already started keeps the settings it took. */
  delete(id: string): void {
    if (!this.objects.delete(id)) throw new ObjectError(`object '${printable(id)}' not found`);
  }

  get(id: string): UserObject | undefined {
    return this.objects.get(id);
  }

  list(): Array<{ id: string; type: string }> {
    return [...this.objects].map(([id, o]) => ({ id, type: o.type }));
  }

  private creds(id: string, endpoint: Endpoint): TlsCreds {
    const object = this.objects.get(id);
    if (!object) throw new ObjectError(`No TLS credentials with id '${printable(id)}'`);
    if (object.type !== 'tls-creds-x509' && object.type !== 'tls-creds-psk') throw new ObjectError(`Object with id '${printable(id)}' is not TLS credentials`);
    if (object.value.props.endpoint !== endpoint) {
      throw new ObjectError(`Expecting TLS credentials with a ${endpoint} endpoint ('${printable(id)}' has endpoint=${object.value.props.endpoint})`);
    }
    return object.value;
  }

  client({ credsId, hostname }: { credsId: string; hostname: string | undefined }): TlsClientSettings {
    const creds = this.creds(credsId, 'client');
    if (creds.kind === 'psk') return { options: creds.clientOptions(), describe: creds.describe };
    if (hostname === undefined || hostname === '') {
      if (creds.props.verifyPeer) throw new ObjectError('No hostname available for TLS: set the tls-hostname parameter (a unix: URI has no host to check the certificate against)');
      return { options: creds.clientOptions(), describe: creds.describe };
    }
    return { options: creds.clientOptions(), ...(creds.props.verifyPeer ? { hostname } : {}), describe: creds.describe };
  }

  server({ credsId, authzId }: { credsId: string; authzId: string }): TlsServerSettings {
    const creds = this.creds(credsId, 'server');
    let authz: Authz | undefined;
    if (authzId !== '') {
      const object = this.objects.get(authzId);
      if (!object) throw new ObjectError(`No authorization object with id '${printable(authzId)}'`);
      if (object.type !== 'authz-simple' && object.type !== 'authz-list') throw new ObjectError(`Object with id '${printable(authzId)}' is not an authorization object`);
      authz = object.value;
      if (creds.kind === 'x509' && !creds.props.verifyPeer) {
        throw new ObjectError(`tls-authz '${authzId}' needs the client's certificate, but '${credsId}' has verify-peer=off`);
      }
    }
    const describe = creds.describe;
    return {
      options: creds.serverOptions(),
      describe,
      ...(creds.kind === 'x509' && creds.props.verifyPeer ? { verifyPeer: (certificate) => creds.checkClientCertificate(certificate) } : {}),
      ...(authz
        ? {
            authorize: (peer) => {
              if (peer.identity === '') return `the source showed no ${peer.kind === 'psk' ? 'PSK identity' : 'certificate'}, and tls-authz '${authzId}' needs one`;
              if (authz!.isAllowed(peer.identity)) return undefined;
              return `${peer.kind === 'psk' ? 'PSK identity' : 'certificate'} '${printable(peer.identity)}' is not allowed by tls-authz '${authzId}'`;
            },
          }
        : {}),
    };
  }
}

function checkProps(type: string, id: string, props: Record<string, unknown>, typed: boolean): Record<string, unknown> {
  const schema = SCHEMAS[type]!;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(props)) {
    if (key === 'id') continue;
    if (!Object.hasOwn(schema, key)) throw new ObjectError(`Property '${type}.${printable(key)}' not found`);
    const spec = schema[key]!;
    if (spec.refused) throw new ObjectError(`${type} '${id}': livemig does not implement '${key}': ${spec.refused}`);
    out[key] = convert(type, id, key, spec.type, value, typed);
  }
  for (const [key, spec] of Object.entries(schema)) {
    if (spec.required && !(key in out)) throw new ObjectError(`${type} '${id}': Parameter '${key}' is missing`);
  }
  return out;
}

function convert(type: string, id: string, key: string, propType: PropType, value: unknown, typed: boolean): unknown {
  const bad = (expected: string): ObjectError => new ObjectError(`${type} '${id}': Invalid parameter type for '${key}', expected: ${expected}`);
  switch (propType) {
    case 'string':
      if (typeof value !== 'string') throw bad('string');
      return value;
    case 'bool':
      if (typeof value === 'boolean') return value;
      if (!typed && typeof value === 'string') {
        if (TRUE_WORDS.has(value.toLowerCase())) return true;
        if (FALSE_WORDS.has(value.toLowerCase())) return false;
        throw new ObjectError(`${type} '${id}': Parameter '${key}' expects 'on' or 'off'`);
      }
      throw bad('boolean');
    case 'endpoint':
      if (value !== 'server' && value !== 'client') throw new ObjectError(`${type} '${id}': Parameter 'endpoint' does not accept value '${printable(String(value))}' (server or client)`);
      return value;
    case 'policy':
      if (value !== 'allow' && value !== 'deny') throw new ObjectError(`${type} '${id}': Parameter 'policy' does not accept value '${printable(String(value))}' (allow or deny)`);
      return value;
    case 'rules':
      return parseAuthzRules(id, value);
  }
}

function build(type: string, id: string, v: Record<string, unknown>): UserObject {
  switch (type) {
    case 'tls-creds-x509':
      return {
        type,
        value: new X509Creds({
          id,
          dir: v.dir as string,
          endpoint: (v.endpoint as Endpoint | undefined) ?? 'client',
          verifyPeer: (v['verify-peer'] as boolean | undefined) ?? true,
          sanityCheck: (v['sanity-check'] as boolean | undefined) ?? true,
        }),
      };
    case 'tls-creds-psk':
      return {
        type,
        value: new PskCreds({ id, dir: v.dir as string, endpoint: (v.endpoint as Endpoint | undefined) ?? 'client', username: (v.username as string | undefined) ?? DEFAULT_PSK_USERNAME }),
      };
    case 'authz-simple':
      return { type, value: new AuthzSimple(id, v.identity as string) };
    default:
      return { type: 'authz-list', value: new AuthzList(id, (v.policy as 'allow' | 'deny' | undefined) ?? 'deny', (v.rules as ReturnType<typeof parseAuthzRules> | undefined) ?? []) };
  }
}
