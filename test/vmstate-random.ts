/**
 * Seeded random VMState descriptions and values for the round-trip tests,
 * plus independent "expected result" walkers: what a load must leave in the
 * object, and what the vmdesc-driven decoder must print.
 */
import type { ScalarType, VMStateDescription, VMStateField } from '../src/vmstate/index.js';
import { field } from '../src/vmstate/index.js';

/** The suite's seeded PRNG (mulberry32), under the name these generators use. */
import { Prng as Rng } from './helpers/prng.js';
export { Rng };

type Obj = Record<string, unknown>;

const SCALARS: readonly ScalarType[] = ['int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64', 'bool', 'timer'];
const EQUAL_TYPES: readonly ScalarType[] = ['uint8', 'uint16', 'int32', 'uint32', 'uint64'];

/** A random value of a scalar type, biased towards edge values. */
export function randomScalar(rng: Rng, type: ScalarType): number | bigint | boolean {
  if (type === 'bool') return rng.chance(0.5);
  const edge = rng.chance(0.25);
  switch (type) {
    case 'int8':
      return edge ? rng.pick([-128, 127, -1, 0]) : rng.range(-128, 127);
    case 'uint8':
      return edge ? rng.pick([0, 255]) : rng.range(0, 255);
    case 'int16':
      return edge ? rng.pick([-32768, 32767, -1]) : rng.range(-32768, 32767);
    case 'uint16':
      return edge ? rng.pick([0, 65535]) : rng.range(0, 65535);
    case 'int32':
      return edge ? rng.pick([-0x80000000, 0x7fffffff, -1]) : (rng.int(0x100000000) | 0);
    case 'uint32':
      return edge ? rng.pick([0, 0xffffffff]) : rng.int(0x100000000);
    case 'int64':
    case 'timer':
      return edge ? rng.pick([-(1n << 63n), (1n << 63n) - 1n, -1n, 0n]) : BigInt.asIntN(64, rng.bigBits(64));
    case 'uint64':
      return edge ? rng.pick([0n, (1n << 64n) - 1n, 1n << 53n]) : rng.bigBits(rng.pick([8, 32, 53, 64]));
  }
}

/**
 * A generated description plus how to make values for it. `values(rng, role)`
 * makes a state object; role 'dst' makes the local defaults a load starts
 * from, which must agree with `src` on "equal" fields and bound "le" fields.
 */
export interface Generated {
  vmsd: VMStateDescription;
  fill(rng: Rng, src: Obj | undefined): Obj;
}

interface GenContext {
  rng: Rng;
  nextName: () => string;
  depth: number;
}

/**
 * Fields of one description (or subsection). Every property name is unique
 * (subsections share the parent's object). Count and size properties are
 * ungated scalars placed before their users, so they are on the wire
 * whenever their users are.
 */
function genFields(ctx: GenContext, version: number): { fields: VMStateField[]; fillers: ((o: Obj, src: Obj | undefined) => void)[] } {
  const { rng } = ctx;
  const fields: VMStateField[] = [];
  const fillers: ((o: Obj, src: Obj | undefined) => void)[] = [];
  const counts: string[] = []; // ungated non-negative integer properties usable as counts
  const flags: string[] = []; // ungated bool properties usable by exists tests
  const gate = (): { fromVersion?: number; exists?: (o: any, v: number) => boolean } => {
    const r = rng.int(6);
    if (r === 0) return { fromVersion: rng.range(0, version) };
    if (r === 1) {
      const from = rng.range(0, version);
      return { exists: (_o, v) => v >= from }; // same as fromVersion, but changes vmdesc compression
    }
    if (r === 2 && flags.length > 0) {
      const flag = rng.pick(flags);
      const want = rng.chance(0.5);
      return { exists: (o) => o[flag] === want };
    }
    return {};
  };
  if (ctx.depth > 0) {
    // Nested bodies start with a byte that cannot be 0x05. Otherwise a struct
    // array element with no field bytes would let the previous element's
    // subsection loop swallow this element's subsections: QEMU's format is
    // ambiguous there (its loader is just as greedy), real devices avoid it.
    const name = ctx.nextName();
    fields.push(field.bool(name));
    flags.push(name);
    fillers.push((o) => (o[name] = rng.chance(0.5)));
  }
  const n = rng.range(0, ctx.depth === 0 ? 9 : 5);
  for (let i = 0; i < n; i++) {
    const name = ctx.nextName();
    const kind = rng.pick(['scalar', 'scalar', 'count', 'flag', 'equal', 'le', 'array', 'buffer', 'vbuffer', 'unused', 'struct', 'structArray', 'validate'] as const);
    switch (kind) {
      case 'scalar': {
        const type = rng.pick(SCALARS);
        fields.push({ ...field.uint8(name, gate()), type });
        fillers.push((o) => (o[name] = randomScalar(rng, type)));
        break;
      }
      case 'count': {
        const type = rng.pick(['uint8', 'uint16', 'uint32', 'int32', 'uint64'] as const);
        fields.push({ ...field.uint8(name), type });
        counts.push(name);
        fillers.push((o) => (o[name] = type === 'uint64' ? BigInt(rng.range(0, 4)) : rng.range(0, 4)));
        break;
      }
      case 'flag':
        fields.push(field.bool(name));
        flags.push(name);
        fillers.push((o) => (o[name] = rng.chance(0.5)));
        break;
      case 'equal': {
        const type = rng.pick(EQUAL_TYPES);
        fields.push({ ...field.uint8Equal(name, gate()), type });
        fillers.push((o, src) => (o[name] = src ? src[name] : randomScalar(rng, type)));
        break;
      }
      case 'le':
        fields.push(field.int32Le(name, gate()));
        fillers.push((o, src) => (o[name] = src ? Math.min(0x7fffffff, (src[name] as number) + rng.range(0, 3)) : rng.range(0, 1000)));
        break;
      case 'array': {
        const type = rng.pick(SCALARS);
        const byField = counts.length > 0 && rng.chance(0.5);
        const countField = byField ? rng.pick(counts) : undefined;
        const fixed = rng.range(0, 4);
        fields.push(field.array(name, type, { ...(countField ? { countField } : { count: fixed }), ...gate() }));
        fillers.push((o) => {
          const len = countField ? Number(o[countField]) : fixed;
          o[name] = Array.from({ length: len }, () => randomScalar(rng, type));
        });
        break;
      }
      case 'buffer': {
        const size = rng.range(0, 16);
        fields.push(field.buffer(name, size, gate()));
        fillers.push((o) => (o[name] = rng.bytes(size)));
        break;
      }
      case 'vbuffer': {
        if (counts.length === 0) {
          i--;
          continue;
        }
        const sizeField = rng.pick(counts);
        const multiplier = rng.range(1, 3);
        fields.push(field.vbuffer(name, { sizeField, multiplier, ...gate() }));
        fillers.push((o) => (o[name] = rng.bytes(Number(o[sizeField]) * multiplier)));
        break;
      }
      case 'unused':
        fields.push(field.unused(rng.range(0, 9), gate()));
        break;
      case 'validate':
        fields.push(field.validate(name, () => true));
        break;
      case 'struct':
      case 'structArray': {
        if (ctx.depth >= 2) {
          i--;
          continue;
        }
        const nested = genVmsd({ ...ctx, depth: ctx.depth + 1 }, `s${name}`);
        if (kind === 'struct') {
          fields.push(field.struct(name, nested.vmsd, gate()));
          fillers.push((o, src) => (o[name] = nested.fill(rng, src?.[name] as Obj | undefined)));
        } else {
          const byField = counts.length > 0 && rng.chance(0.5);
          const countField = byField ? rng.pick(counts) : undefined;
          const fixed = rng.range(0, 3);
          fields.push(field.structArray(name, nested.vmsd, { ...(countField ? { countField } : { count: fixed }), ...gate() }));
          fillers.push((o, src) => {
            const from = src?.[name] as Obj[] | undefined;
            // Defaults hold at least as many elements as src: loading reuses them,
            // and "equal" fields need a local value to compare with.
            const len = Math.max(countField ? Number(o[countField]) : fixed, from?.length ?? 0);
            o[name] = Array.from({ length: len }, (_, k) => nested.fill(rng, from?.[k]));
          });
        }
        break;
      }
    }
  }
  return { fields, fillers };
}

/** A random description named `name`, with random subsections (needed decided now, at random). */
export function genVmsd(ctx: GenContext, name: string): Generated {
  const { rng } = ctx;
  const version = rng.range(1, 4);
  const { fields, fillers } = genFields(ctx, version);
  const subs: Generated[] = [];
  const subCount = ctx.depth < 2 ? rng.range(0, 2) : 0;
  for (let i = 0; i < subCount; i++) {
    const sub = genVmsd({ ...ctx, depth: ctx.depth + 1 }, `${name}/sub${i}`);
    const needed = rng.chance(0.6);
    sub.vmsd.needed = () => needed;
    subs.push(sub);
  }
  const vmsd: VMStateDescription = {
    name,
    version,
    minimumVersion: rng.range(0, version),
    fields,
    ...(subs.length > 0 ? { subsections: subs.map((s) => s.vmsd) } : {}),
  };
  return {
    vmsd,
    fill(r: Rng, src: Obj | undefined): Obj {
      const o: Obj = {};
      // Count properties first come from src too when dst is built, so that
      // a dst array never has a length its (equal) count would contradict.
      for (const fill of fillers) fill(o, src);
      for (const sub of subs) Object.assign(o, sub.fill(r, src));
      return o;
    },
  };
}

export function genCase(seed: number): { rng: Rng; gen: Generated } {
  const rng = new Rng(seed);
  let counter = 0;
  const gen = genVmsd({ rng, nextName: () => `f${counter++}`, depth: 0 }, `dev${seed}`);
  return { rng, gen };
}

// ---------------------------------------------------------------------------
// Expected results, computed independently of the codec.

function clone<T>(v: T): T {
  if (v instanceof Uint8Array) return v.slice() as T;
  if (Array.isArray(v)) return v.map(clone) as T;
  if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, clone(x)])) as T;
  return v;
}

function exists(f: VMStateField, o: Obj, v: number): boolean {
  return f.exists ? f.exists(o, v) : (f.fromVersion ?? 0) <= v;
}

/** Apply what loading `src` saved at `version` does to `target` (a clone of the defaults). */
function applyLoad(vmsd: VMStateDescription, src: Obj, target: Obj, version: number): void {
  for (const f of vmsd.fields) {
    if (!exists(f, target, version)) continue;
    if (f.kind === 'unused' || f.kind === 'validate') continue;
    if (f.kind === 'struct') {
      const t = (typeof target[f.name] === 'object' && target[f.name] !== null ? target[f.name] : {}) as Obj;
      applyLoad(f.vmsd, src[f.name] as Obj, t, f.vmsd.version);
      target[f.name] = t;
    } else if (f.kind === 'structArray') {
      const old = Array.isArray(target[f.name]) ? (target[f.name] as Obj[]) : [];
      target[f.name] = (src[f.name] as Obj[]).map((s, i) => {
        const t = old[i] ?? {};
        applyLoad(f.vmsd, s, t, f.vmsd.version);
        return t;
      });
    } else {
      target[f.name] = clone(src[f.name]);
    }
  }
  for (const sub of vmsd.subsections ?? []) {
    if (sub.needed?.(src) ?? true) applyLoad(sub, src, target, sub.version);
  }
}

export function expectedAfterLoad(vmsd: VMStateDescription, src: Obj, dst: Obj, version: number): Obj {
  const target = clone(dst);
  applyLoad(vmsd, src, target, version);
  return target;
}

type Shown = number | string | boolean | Shown[] | { [k: string]: Shown };

function showInt(v: number | bigint | boolean, bytes: number): Shown {
  if (typeof v === 'boolean') return v;
  const b = BigInt(v);
  if (b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(b);
  const hex = `0x${BigInt.asUintN(bytes * 8, b).toString(16).padStart(bytes * 2, '0')}`;
  return b < 0n ? `${hex} (${b})` : hex;
}

const SIZES: Record<ScalarType, number> = { bool: 1, int8: 1, uint8: 1, int16: 2, uint16: 2, int32: 4, uint32: 4, int64: 8, uint64: 8, timer: 8 };

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}

/** `name`, or `name[n]` when the description has several fields of that name. */
function vmdescKey(vmsd: VMStateDescription, f: VMStateField): string {
  const same = vmsd.fields.filter((g) => (g.vmdescName ?? g.name) === (f.vmdescName ?? f.name));
  return same.length > 1 ? `${f.vmdescName ?? f.name}[${same.indexOf(f)}]` : f.vmdescName ?? f.name;
}

/** What decodeWithVmdesc must print for `obj` saved at `version` (all names unique in generated cases). */
export function expectedAnalyzed(vmsd: VMStateDescription, obj: Obj, version: number): { [k: string]: Shown } {
  const out: { [k: string]: Shown } = {};
  for (const f of vmsd.fields) {
    if (!exists(f, obj, version)) continue;
    let values: Shown[];
    switch (f.kind) {
      case 'scalar':
        values = [showInt(obj[f.name] as number, SIZES[f.type])];
        break;
      case 'array':
        values = (obj[f.name] as (number | bigint | boolean)[]).map((v) => showInt(v, SIZES[f.type]));
        break;
      case 'buffer':
      case 'vbuffer':
        values = [hex(obj[f.name] as Uint8Array)];
        break;
      case 'unused':
        values = [hex(new Uint8Array(f.sizeBytes))];
        break;
      case 'struct':
        values = [expectedAnalyzed(f.vmsd, obj[f.name] as Obj, f.vmsd.version)];
        break;
      case 'structArray':
        values = (obj[f.name] as Obj[]).map((s) => expectedAnalyzed(f.vmsd, s, f.vmsd.version));
        break;
      case 'validate':
        values = [];
        break;
    }
    const key = vmdescKey(vmsd, f);
    if (values.length === 1) out[key] = values[0]!;
    else if (values.length > 1) out[key] = values;
  }
  for (const sub of vmsd.subsections ?? []) {
    if (sub.needed?.(obj) ?? true) out[sub.name] = expectedAnalyzed(sub, obj, sub.version);
  }
  return out;
}
