/**
 * Stream framing, format version 3, exactly as QEMU 7.2 writes it
 * (migration/savevm.c): file header, configuration section, section headers
 * and footers, commands, EOF and the JSON trailer (vmdesc).
 *
 * This module knows the shape of the stream, never what a section holds.
 */
import {
  MAX_VMDESC_BYTES,
  MIG_COMMAND_LENGTHS,
  MIG_COMMAND_NAMES,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  QEMU_VM_FILE_VERSION_COMPAT,
  SectionType,
} from './constants.js';
import { StreamError } from './errors.js';
import type { StreamReader } from './reader.js';
import type { StreamWriter } from './writer.js';

const CONFIGURATION_VMSD = 'configuration';
/** QEMU's machine names are short; the configuration stores the length as be32. */
const MAX_MACHINE_NAME_BYTES = 256;
/** The target page bits QEMU's x86 target assumes when the subsection is absent. */
export const DEFAULT_TARGET_PAGE_BITS = 12;

/** What the configuration section (0x07) says. */
export interface StreamConfiguration {
  machineName: string;
  /** From `configuration/target-page-bits`; absent means the target's minimum (12 on x86). */
  targetPageBits?: number;
  /** From `configuration/capabilities` (7.2: only `x-ignore-shared` is validated). */
  capabilities?: string[];
  /** From `configuration/uuid`: 16 raw bytes. */
  uuid?: Uint8Array;
}

export function writeFileHeader(out: StreamWriter): void {
  out.be32(QEMU_VM_FILE_MAGIC).be32(QEMU_VM_FILE_VERSION);
}

export async function readFileHeader(input: StreamReader): Promise<void> {
  const at = input.offset;
  const magic = await input.be32();
  if (magic !== QEMU_VM_FILE_MAGIC) {
    throw new StreamError('bad-magic', `not a migration stream: magic 0x${magic.toString(16).padStart(8, '0')}, expected 0x5145564d ("QEVM")`, { offset: at });
  }
  const version = await input.be32();
  if (version === QEMU_VM_FILE_VERSION_COMPAT) {
    throw new StreamError('bad-version', 'SaveVM v2 format is obsolete and no longer supported', { offset: at + 4 });
  }
  if (version !== QEMU_VM_FILE_VERSION) {
    throw new StreamError('bad-version', `unsupported migration stream version ${version}, expected 3`, { offset: at + 4 });
  }
}

/** Configuration: u8 0x07, be32 name length, name, then optional subsections. */
export function writeConfiguration(out: StreamWriter, config: StreamConfiguration): void {
  const name = new TextEncoder().encode(config.machineName);
  out.u8(SectionType.Configuration).be32(name.length).bytes(name);
  if (config.targetPageBits !== undefined && config.targetPageBits !== DEFAULT_TARGET_PAGE_BITS) {
    out.u8(SectionType.Subsection).countedString(`${CONFIGURATION_VMSD}/target-page-bits`).be32(1).be32(config.targetPageBits);
  }
  if (config.capabilities && config.capabilities.length > 0) {
    out.u8(SectionType.Subsection).countedString(`${CONFIGURATION_VMSD}/capabilities`).be32(1).be32(config.capabilities.length);
    for (const cap of config.capabilities) out.countedString(cap);
  }
  if (config.uuid) {
    if (config.uuid.length !== 16) throw new RangeError('configuration uuid must be 16 bytes');
    out.u8(SectionType.Subsection).countedString(`${CONFIGURATION_VMSD}/uuid`).be32(1).bytes(config.uuid);
  }
}

export async function readConfiguration(input: StreamReader): Promise<StreamConfiguration> {
  const at = input.offset;
  const type = await input.u8();
  if (type !== SectionType.Configuration) {
    throw new StreamError('bad-configuration', `configuration section missing: found type byte 0x${type.toString(16)}, expected 0x07`, { offset: at });
  }
  const section = { idstr: CONFIGURATION_VMSD };
  const nameLength = await input.be32();
  const nameBytes = await input.bytes(nameLength, MAX_MACHINE_NAME_BYTES, 'machine name').catch((e: unknown) => {
    throw e instanceof StreamError ? e.withSection(section) : e;
  });
  const config: StreamConfiguration = { machineName: new TextDecoder().decode(nameBytes) };
  for (;;) {
    const head = await input.peek(2 + CONFIGURATION_VMSD.length + 1);
    if (head[0] !== SectionType.Subsection) break;
    const name = new TextDecoder().decode(head.subarray(2));
    if (head[1]! < CONFIGURATION_VMSD.length + 1 || name !== `${CONFIGURATION_VMSD}/`) break;
    const subAt = input.offset;
    await input.u8();
    const subName = await input.countedString();
    const version = await input.be32();
    if (version !== 1) {
      throw new StreamError('bad-configuration', `subsection ${subName} version ${version}, expected 1`, { offset: subAt, section });
    }
    switch (subName) {
      case `${CONFIGURATION_VMSD}/target-page-bits`:
        config.targetPageBits = await input.be32();
        break;
      case `${CONFIGURATION_VMSD}/capabilities`: {
        const count = await input.be32();
        if (count > 64) throw new StreamError('too-large', `capability count ${count} is implausible`, { offset: input.offset - 4, section });
        config.capabilities = [];
        for (let i = 0; i < count; i++) config.capabilities.push(await input.countedString());
        break;
      }
      case `${CONFIGURATION_VMSD}/uuid`:
        config.uuid = (await input.bytes(16, 16, 'uuid')).slice();
        break;
      default:
        throw new StreamError('bad-configuration', `unknown configuration subsection '${subName}'`, { offset: subAt, section });
    }
  }
  return config;
}

/** START or FULL header: type, be32 section id, counted idstr, be32 instance, be32 version. */
export function writeFullSectionHeader(
  out: StreamWriter,
  type: SectionType.Start | SectionType.Full,
  sectionId: number,
  idstr: string,
  instanceId: number,
  versionId: number,
): void {
  out.u8(type).be32(sectionId).countedString(idstr).be32(instanceId).be32(versionId);
}

/** PART or END header: type, be32 section id. */
export function writeShortSectionHeader(out: StreamWriter, type: SectionType.Part | SectionType.End, sectionId: number): void {
  out.u8(type).be32(sectionId);
}

export function writeSectionFooter(out: StreamWriter, sectionId: number): void {
  out.u8(SectionType.Footer).be32(sectionId);
}

export async function readSectionFooter(input: StreamReader, sectionId: number, idstr: string): Promise<void> {
  const at = input.offset;
  const section = { idstr, sectionId };
  const marker = await input.u8();
  if (marker !== SectionType.Footer) {
    throw new StreamError('bad-footer', `missing section footer for '${idstr}': found 0x${marker.toString(16)}, expected 0x7e`, { offset: at, section });
  }
  const id = await input.be32();
  if (id !== sectionId) {
    throw new StreamError('bad-footer', `mismatched section id in footer for '${idstr}': ${id}, expected ${sectionId}`, { offset: at + 1, section });
  }
}

export function writeCommand(out: StreamWriter, command: number, payload: Uint8Array = new Uint8Array(0)): void {
  out.u8(SectionType.Command).be16(command).be16(payload.length).bytes(payload);
}

export function writeEof(out: StreamWriter): void {
  out.u8(SectionType.Eof);
}

/** The JSON trailer after EOF: u8 0x06, be32 length, the JSON text. */
export function writeVmdesc(out: StreamWriter, json: string): void {
  const bytes = new TextEncoder().encode(json);
  out.u8(SectionType.VmDescription).be32(bytes.length).bytes(bytes);
}

/** One top-level record of the stream, as read by `readTopLevel`. */
export type TopLevelRecord =
  | { type: 'start' | 'full'; offset: number; sectionId: number; idstr: string; instanceId: number; versionId: number }
  | { type: 'part' | 'end'; offset: number; sectionId: number }
  | { type: 'command'; offset: number; command: number; name: string; payload: Uint8Array }
  | { type: 'eof'; offset: number };

/** Read the next top-level record header (the body, if any, is left to the caller). */
export async function readTopLevel(input: StreamReader): Promise<TopLevelRecord> {
  const offset = input.offset;
  const type = await input.u8();
  switch (type) {
    case SectionType.Start:
    case SectionType.Full: {
      const sectionId = await input.be32();
      const idstr = await input.countedString();
      const instanceId = await input.be32();
      const versionId = await input.be32();
      return { type: type === SectionType.Start ? 'start' : 'full', offset, sectionId, idstr, instanceId, versionId };
    }
    case SectionType.Part:
    case SectionType.End: {
      const sectionId = await input.be32();
      return { type: type === SectionType.Part ? 'part' : 'end', offset, sectionId };
    }
    case SectionType.Command: {
      const command = await input.be16();
      const length = await input.be16();
      const name = MIG_COMMAND_NAMES[command];
      if (name === undefined) {
        throw new StreamError('bad-command', `MIG_CMD 0x${command.toString(16)} unknown`, { offset: offset + 1 });
      }
      const expected = MIG_COMMAND_LENGTHS[command]!;
      const validLength = expected >= 0 ? length === expected : command !== 3 || length === 0 || length === 16;
      if (!validLength) {
        throw new StreamError('bad-command', `${name} has length ${length}, expected ${expected >= 0 ? expected : '0 or 16'}`, { offset: offset + 3 });
      }
      const payload = (await input.bytes(length, 0xffff, `${name} payload`)).slice();
      return { type: 'command', offset, command, name, payload };
    }
    case SectionType.Eof:
      return { type: 'eof', offset };
    default:
      throw new StreamError('unknown-section-type', `unknown savevm section type ${type} (0x${type.toString(16)})`, { offset });
  }
}

/**
 * After EOF: an optional vmdesc trailer. QEMU only warns when it is absent
 * (lenient L4), so this returns null for end of stream or another byte.
 */
export async function readVmdescTrailer(input: StreamReader): Promise<{ offset: number; json: string } | null> {
  const offset = input.offset;
  const type = await input.peekU8();
  if (type !== SectionType.VmDescription) return null;
  await input.u8();
  const length = await input.be32();
  const bytes = await input.bytes(length, MAX_VMDESC_BYTES, 'vmdesc JSON');
  return { offset, json: new TextDecoder().decode(bytes) };
}
