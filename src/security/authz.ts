/**
 * Authorization of a TLS peer's identity (QEMU's authz/ objects): the
 * destination's `tls-authz` names one. The identity is the client
 * certificate's distinguished name (`C=GB,O=...,CN=...`, in the certificate's
 * order, as QEMU 7.2 prints it) or the PSK username.
 *
 * - `authz-simple,identity=DN`: exactly one identity is allowed.
 * - `authz-list`: rules `{match, policy: allow|deny, format: exact|glob}` tried
 *   in order, the first match decides; `policy` (default deny) otherwise.
 */
import { printable } from '../wire/printable.js';
import { ObjectError } from './object-error.js';

export interface Authz {
  readonly id: string;
  /** True when `identity` may connect. */
  isAllowed(identity: string): boolean;
}

export class AuthzSimple implements Authz {
  constructor(readonly id: string, readonly identity: string) {}
  isAllowed(identity: string): boolean {
    return identity === this.identity;
  }
}

export type AuthzPolicy = 'allow' | 'deny';
export interface AuthzRule {
  match: string;
  policy: AuthzPolicy;
  format: 'exact' | 'glob';
}

/** fnmatch(3) without flags: `*` and `?` match any characters (including '/'), `[...]` a set. */
export function globToRegExp(pattern: string): RegExp {
  let out = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') out += '[\\s\\S]*';
    else if (c === '?') out += '[\\s\\S]';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 2);
      if (end < 0) out += '\\[';
      else {
        let set = pattern.slice(i + 1, end).replace(/\\/g, '\\\\');
        if (set.startsWith('!')) set = '^' + set.slice(1);
        out += `[${set}]`;
        i = end;
      }
    } else out += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
  }
  return new RegExp(`^${out}$`);
}

export class AuthzList implements Authz {
  private readonly matchers: Array<{ test(identity: string): boolean; policy: AuthzPolicy }>;

  constructor(readonly id: string, readonly policy: AuthzPolicy, readonly rules: readonly AuthzRule[]) {
    this.matchers = rules.map((rule) => {
      const re = rule.format === 'glob' ? globToRegExp(rule.match) : undefined;
      return { test: (identity: string) => (re ? re.test(identity) : identity === rule.match), policy: rule.policy };
    });
  }

  isAllowed(identity: string): boolean {
    for (const m of this.matchers) if (m.test(identity)) return m.policy === 'allow';
    return this.policy === 'allow';
  }
}

/** authz-list's `rules` from QMP JSON (or the command line's JSON form); throws ObjectError naming the rule. */
export function parseAuthzRules(id: string, value: unknown): AuthzRule[] {
  if (!Array.isArray(value)) throw new ObjectError(`authz-list '${id}': 'rules' must be a list of {match, policy, format}`);
  return value.map((item: unknown, i) => {
    const where = `authz-list '${id}': rules[${i}]`;
    if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new ObjectError(`${where} must be an object`);
    const rule = item as Record<string, unknown>;
    for (const key of Object.keys(rule)) {
      if (!['match', 'policy', 'format'].includes(key)) throw new ObjectError(`${where}: Parameter '${printable(key)}' is unexpected`);
    }
    if (typeof rule.match !== 'string') throw new ObjectError(`${where}: 'match' must be a string`);
    if (rule.policy !== 'allow' && rule.policy !== 'deny') throw new ObjectError(`${where}: 'policy' must be allow or deny`);
    const format = rule.format ?? 'exact';
    if (format !== 'exact' && format !== 'glob') throw new ObjectError(`${where}: 'format' must be exact or glob`);
    return { match: rule.match, policy: rule.policy, format };
  });
}
