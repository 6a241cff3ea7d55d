/**
 * Reading state: QEMU's vmstate_load_state (migration/vmstate.c).
 *
 * Reads the fields present at the incoming version into the state object,
 * then any subsections, then runs postLoad. Fields absent at that version, and
 * subsections not sent, keep whatever the object held (its defaults).
 *
 * Every failure is a StreamError carrying the stream offset. Counts and sizes
 * that come from the stream are bounded (VMSTATE_LIMITS) and buffers are only
 * allocated once their bytes have arrived.
 */
import { ChannelError, SectionType, StreamError, UnexpectedEndError, type StreamReader } from '../wire/index.js';
import { asCount, fieldExists } from './common.js';
import {
  VMSTATE_LIMITS,
  type ScalarType,
  type ScalarValue,
  type VMStateDescription,
  type VMStateField,
  type VmstateObject,
} from './types.js';

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8');

async function readScalar(input: StreamReader, type: ScalarType): Promise<ScalarValue> {
  switch (type) {
    case 'bool':
      return (await input.u8()) !== 0; // QEMU: any non-zero byte is true
    case 'uint8':
      return input.u8();
    case 'int8':
      return ((await input.u8()) << 24) >> 24;
    case 'uint16':
      return input.be16();
    case 'int16':
      return ((await input.be16()) << 16) >> 16;
    case 'uint32':
      return input.be32();
    case 'int32':
      return (await input.be32()) | 0;
    case 'uint64':
      return input.be64();
    case 'int64':
    case 'timer':
      return BigInt.asIntN(64, await input.be64());
  }
}

function isPlainObject(value: unknown): value is VmstateObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value);
}

function formatValue(v: unknown): string {
  if (typeof v === 'number') return `${v} (0x${(v >>> 0).toString(16)})`;
  if (typeof v === 'bigint') return `${v} (0x${BigInt.asUintN(64, v).toString(16)})`;
  return String(v);
}

/** Per-description context for error messages. */
class FieldReader {
  constructor(
    private readonly input: StreamReader,
    private readonly vmsd: VMStateDescription<any>,
    private readonly obj: VmstateObject,
  ) {}

  private fail(code: 'bad-vmstate' | 'too-large', f: VMStateField, reason: string, offset: number): StreamError {
    return new StreamError(code, `vmstate '${this.vmsd.name}' field '${f.name}': ${reason}`, { offset });
  }

  /** A count or size taken from another property (filled earlier from the stream or locally). */
  private countFrom(f: VMStateField, property: string, what: string, limit: number): number {
    const at = this.input.offset;
    const n = asCount(this.obj[property]);
    if (typeof n === 'string') throw this.fail('bad-vmstate', f, `${what} field '${property}' is ${n}`, at);
    if (n > limit) throw this.fail('too-large', f, `${what} ${n} (from '${property}') exceeds the limit of ${limit}`, at);
    return n;
  }

  private elementCount(f: VMStateField & { count?: number; countField?: string }): number {
    if (f.count !== undefined) return f.count;
    return this.countFrom(f, f.countField!, 'count', VMSTATE_LIMITS.maxArrayElements);
  }

  async load(f: VMStateField, versionId: number): Promise<void> {
    const { input, obj } = this;
    if (!fieldExists(f, obj, versionId)) {
      if (f.kind === 'validate') throw this.fail('bad-vmstate', f, 'input validation failed', input.offset);
      return;
    }
    switch (f.kind) {
      case 'scalar': {
        const at = input.offset;
        const value = await readScalar(input, f.type);
        const local = obj[f.name];
        if (f.check === 'equal' && value !== local) {
          throw this.fail('bad-vmstate', f, `incoming ${formatValue(value)} differs from local ${formatValue(local)}`, at);
        }
        if (f.check === 'le' && !(typeof local === 'number' && (value as number) >= 0 && (value as number) <= local)) {
          throw this.fail('bad-vmstate', f, `incoming ${formatValue(value)} is not within 0..${formatValue(local)}`, at);
        }
        obj[f.name] = value;
        return;
      }
      case 'array': {
        const n = this.elementCount(f);
        const values: ScalarValue[] = [];
        for (let i = 0; i < n; i++) values.push(await readScalar(input, f.type));
        obj[f.name] = values;
        return;
      }
      case 'buffer':
        // Copy: the reader hands out views into its (or the source's) buffers.
        obj[f.name] = (await input.bytes(f.sizeBytes, f.sizeBytes, `${this.vmsd.name}.${f.name}`)).slice();
        return;
      case 'vbuffer': {
        const limit = VMSTATE_LIMITS.maxVbufferBytes;
        const size = this.countFrom(f, f.sizeField, 'size', limit) * f.multiplier;
        if (size > limit) throw this.fail('too-large', f, `size ${size} exceeds the limit of ${limit} bytes`, input.offset);
        obj[f.name] = (await input.bytes(size, limit, `${this.vmsd.name}.${f.name}`)).slice();
        return;
      }
      case 'unused':
        await input.skip(f.sizeBytes);
        return;
      case 'struct': {
        // Load into the existing object, as QEMU loads into the device's memory.
        const target = isPlainObject(obj[f.name]) ? (obj[f.name] as VmstateObject) : {};
        obj[f.name] = target;
        await vmstateLoad(input, f.vmsd, target, f.vmsd.version);
        return;
      }
      case 'structArray': {
        const n = this.elementCount(f);
        const existing = Array.isArray(obj[f.name]) ? (obj[f.name] as unknown[]) : [];
        const result: VmstateObject[] = [];
        for (let i = 0; i < n; i++) {
          const target = isPlainObject(existing[i]) ? (existing[i] as VmstateObject) : {};
          await vmstateLoad(input, f.vmsd, target, f.vmsd.version);
          result.push(target);
        }
        obj[f.name] = result;
        return;
      }
      case 'validate':
        return; // the test passed; nothing on the wire
    }
  }
}

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && startsWith(a, b);
}

/**
 * Subsections, QEMU's way (vmstate_subsection_load): while the next byte is
 * 0x05 and the counted name after it is longer than the parent's name and
 * starts with it, the subsection is ours: unknown → error, known → load at the
 * version sent. Anything else is left for the caller (a footer, or the next
 * field of an enclosing struct). There is no terminator and any order goes.
 */
async function loadSubsections(input: StreamReader, vmsd: VMStateDescription<any>, obj: VmstateObject): Promise<void> {
  const prefix = textEncoder.encode(vmsd.name);
  for (;;) {
    const head = await input.peek(2);
    if (head.length === 0 || head[0] !== SectionType.Subsection) return;
    // A 0x05 right at the end of the stream cannot be followed by anything valid.
    if (head.length < 2) throw new UnexpectedEndError(2, head.length, input.offset);
    const nameLength = head[1]!;
    if (nameLength < prefix.length + 1) return;
    const peeked = await input.peek(2 + nameLength);
    if (peeked.length < 2 + nameLength) throw new UnexpectedEndError(2 + nameLength, peeked.length, input.offset);
    const name = peeked.subarray(2, 2 + nameLength);
    if (!startsWith(name, prefix)) return;
    const sub = (vmsd.subsections ?? []).find((s) => sameBytes(textEncoder.encode(s.name), name));
    if (!sub) {
      throw new StreamError('bad-vmstate', `vmstate '${vmsd.name}': unknown subsection '${textDecoder.decode(name)}'`, {
        offset: input.offset,
      });
    }
    await input.skip(2 + nameLength);
    const subVersion = await input.be32();
    await vmstateLoad(input, sub, obj, subVersion);
  }
}

async function runHook(input: StreamReader, vmsd: VMStateDescription<any>, hook: string, call: () => unknown): Promise<void> {
  try {
    await call();
  } catch (err) {
    if (err instanceof StreamError || err instanceof ChannelError) throw err;
    const message = err instanceof Error ? err.message : String(err);
    throw new StreamError('handler-failed', `vmstate '${vmsd.name}': ${hook} failed: ${message}`, { offset: input.offset }, { cause: err });
  }
}

/**
 * Read a body written at `versionId` (from the section header, or the
 * subsection header) into `obj`.
 *
 * Fails with `version-too-new` / `version-too-old` outside
 * minimumVersion..version, `bad-vmstate` for data the description rejects
 * (equal mismatch, unknown subsection, validation), `too-large` for
 * out-of-bounds counts and sizes, `unexpected-end` when the stream ends, and
 * `handler-failed` when a hook throws.
 */
export async function vmstateLoad<T extends object>(input: StreamReader, vmsd: VMStateDescription<T>, obj: T, versionId: number): Promise<void> {
  const state = obj as unknown as VmstateObject;
  if (versionId > vmsd.version) {
    throw new StreamError('version-too-new', `vmstate '${vmsd.name}': incoming version ${versionId} is too new for local version ${vmsd.version}`, {
      offset: input.offset,
    });
  }
  if (versionId < vmsd.minimumVersion) {
    throw new StreamError(
      'version-too-old',
      `vmstate '${vmsd.name}': incoming version ${versionId} is too old for local minimum version ${vmsd.minimumVersion}`,
      { offset: input.offset },
    );
  }
  await runHook(input, vmsd, 'preLoad', () => vmsd.preLoad?.(obj));
  try {
    const reader = new FieldReader(input, vmsd, state);
    for (const f of vmsd.fields) await reader.load(f, versionId);
    await loadSubsections(input, vmsd, state);
  } catch (err) {
    if (err instanceof StreamError || err instanceof ChannelError) throw err;
    // E.g. an `exists` test that threw: still report where we were.
    const message = err instanceof Error ? err.message : String(err);
    throw new StreamError('bad-vmstate', `vmstate '${vmsd.name}': ${message}`, { offset: input.offset }, { cause: err });
  }
  await runHook(input, vmsd, 'postLoad', () => vmsd.postLoad?.(obj, versionId));
}
