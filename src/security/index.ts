/** Credentials and authorization objects (QEMU's -object / object-add), Node-only: they read keys and certificates. */
export { OBJECT_PROPERTY_NAMES, ObjectRegistry, parseObjectText, type TlsCreds, type UserObject } from './objects.js';
export { ObjectError, type Endpoint } from './object-error.js';
export { X509Creds } from './x509.js';
export { PskCreds, PSK_CIPHERS, parsePskFile } from './psk.js';
export { AuthzList, AuthzSimple, globToRegExp, type Authz, type AuthzRule } from './authz.js';
