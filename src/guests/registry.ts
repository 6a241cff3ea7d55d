/**
 * The guest types `livemig run --machine NAME` and `livemig demo` know.
 * Adding one: a module exporting a GuestType (see test-guest.ts), and one
 * line in BUILT_IN below. Keep such modules light: load large dependencies
 * inside create() (v86-guest.ts imports v86 there).
 */
import type { Guest, GuestOptions, GuestType } from './guest.js';
import { testGuestType } from './test-guest.js';
import { v86GuestType } from './v86-guest.js';
import { noneGuestType } from './none-guest.js';

const BUILT_IN: readonly GuestType[] = [
  testGuestType,
  v86GuestType,
  noneGuestType,
];

const registry = new Map<string, GuestType>();

/** Add a guest type (built-ins are registered when this module loads). */
export function registerGuestType(type: GuestType): void {
  if (registry.has(type.name)) throw new Error(`guest type '${type.name}' is already registered`);
  registry.set(type.name, type);
}

for (const type of BUILT_IN) registerGuestType(type);

/** Registered guest types, in registration order. */
export function guestTypes(): GuestType[] {
  return [...registry.values()];
}

export function guestTypeNames(): string[] {
  return [...registry.keys()];
}

/** The guest type called `name`; throws, naming the available ones, if there is none. */
export function guestType(name: string): GuestType {
  const type = registry.get(name);
  if (!type) throw new Error(`unknown machine '${name}' (available: ${guestTypeNames().join(', ')})`);
  return type;
}

/** Start a guest of type `options.machine`. */
export async function createGuest(options: GuestOptions): Promise<Guest> {
  return guestType(options.machine).create(options);
}

/** For help texts: "test (built-in) or v86 (an x86 PC)". */
export function describeGuestTypes(): string {
  const items = guestTypes().map((t) => `${t.name} (${t.description})`);
  return items.length <= 1 ? items.join('') : `${items.slice(0, -1).join(', ')} or ${items.at(-1)}`;
}
