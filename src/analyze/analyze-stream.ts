/**
 * `livemig analyze`: what a migration stream holds, section by section, from
 * livemig or from real QEMU — our answer to QEMU's scripts/analyze-migration.py.
 *
 * It runs the real loader (src/savevm/loadvm.ts) with stand-in handlers: the
 * RAM loader over sparse blocks, and a decoder driven by the stream's own JSON
 * trailer for device sections. So whatever the loader rejects, analysis
 * rejects too, with the same located error.
 */
import { mkdir, open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BLOCK_SECTION_IDSTR, BLOCK_SECTION_VERSION, BlockAnalysisHandler, DISK_MANIFEST_IDSTR, DISK_MANIFEST_VERSION, type BlockSummary } from '../block/index.js';
import { AnalysisRamBlockTable, RAM_IDSTR, RAM_SECTION_VERSION, RamLoadHandler, SparseRamBlock, type RamBlock, type RamLoadStats } from '../ram/index.js';
import { loadVmState, SaveStateRegistry, type SaveVMHandlers } from '../savevm/index.js';
import { decodeWithVmdesc, parseVmdescTrailer, type AnalyzedSection, type VmdescDevice } from '../vmstate/index.js';
import { FileSource } from '../wire/node-channels.js';
import { MemorySource, StreamError, StreamReader, TARGET_PAGE_SIZE, utf8ByteLength, type ByteSource, type StreamConfiguration } from '../wire/index.js';
import { findVmdescTrailer, TRAILER_SEARCH_BYTES } from './trailer.js';

export interface AnalyzedDevice {
  name: string;
  instanceId: number;
  /** Offset of the FULL section's type byte. */
  offset: number;
  vmsdName?: string;
  version: number;
  /** Field values decoded through the JSON trailer. */
  state: AnalyzedSection;
}

export interface RamSummary {
  announcedTotalBytes: number | null;
  sections: number;
  blocks: Array<{
    idstr: string;
    lengthBytes: number | null;
    normalPages: number;
    zeroPages: number;
    xbzrlePages: number;
    normalBytes: number;
    zeroBytes: number;
    xbzrleBytes: number;
  }>;
  totals: { normalPages: number; zeroPages: number; xbzrlePages: number; bytes: number };
}

export interface StreamAnalysis {
  sizeBytes: number;
  configuration: { machineName: string; targetPageBits?: number; capabilities?: string[]; uuid?: string };
  sections: Array<{ type: string; offset: number; sectionId: number; idstr: string; instanceId: number; versionId: number; sizeBytes: number }>;
  commands: Array<{ offset: number; name: string; payloadBytes: number }>;
  ram: RamSummary | null;
  /** Block migration: per-device chunk counts (null when the stream has no disks). */
  block: BlockSummary | null;
  devices: AnalyzedDevice[];
  eofOffset: number | null;
  vmdesc: { offset: number; lengthBytes: number; devices: number } | null;
  /** Set when the stream could not be read to the end; everything above is what came before. */
  error?: { code: string; message: string; offset: number; section?: StreamError['section'] };
}

export interface AnalyzeOptions {
  /** Keep RAM contents (needed for dumpRam and ramBlocks). Default true. */
  keepRam?: boolean;
  /** Bound on the RAM a stream may announce. */
  maxRamBytes?: number;
}

/** The analysis plus the decoded RAM blocks (sparse). */
export interface AnalysisOutcome {
  analysis: StreamAnalysis;
  ramBlocks: RamBlock[];
}

function summarizeRam(stats: RamLoadStats, table: AnalysisRamBlockTable): RamSummary {
  const lengths = new Map(table.blocks().map((b) => [b.idstr, b.lengthBytes]));
  const blocks = stats.blocks.map((b) => ({
    idstr: b.idstr,
    lengthBytes: b.listedLengthBytes ?? lengths.get(b.idstr) ?? null,
    normalPages: b.normalPages,
    zeroPages: b.zeroPages,
    xbzrlePages: b.xbzrlePages,
    normalBytes: b.normalBytes,
    zeroBytes: b.zeroBytes,
    xbzrleBytes: b.xbzrleBytes,
  }));
  const totals = { normalPages: 0, zeroPages: 0, xbzrlePages: 0, bytes: 0 };
  for (const b of blocks) {
    totals.normalPages += b.normalPages;
    totals.zeroPages += b.zeroPages;
    totals.xbzrlePages += b.xbzrlePages;
    totals.bytes += b.normalBytes + b.zeroBytes + b.xbzrleBytes;
  }
  return { announcedTotalBytes: stats.announcedTotalBytes ?? null, sections: stats.sections, blocks, totals };
}

function describeConfiguration(c: StreamConfiguration): StreamAnalysis['configuration'] {
  const out: StreamAnalysis['configuration'] = { machineName: c.machineName };
  if (c.targetPageBits !== undefined) out.targetPageBits = c.targetPageBits;
  if (c.capabilities) out.capabilities = c.capabilities;
  if (c.uuid) out.uuid = Buffer.from(c.uuid).toString('hex');
  return out;
}

/**
 * Analyze a stream from `source`. `trailer` is the vmdesc JSON found at the
 * stream's end (null if none); `sizeBytes` the stream's length. Never throws
 * for bad input: a problem ends the analysis and is reported in `error`.
 */
export async function analyzeStream(
  source: ByteSource,
  trailer: { offset: number; json: string } | null,
  sizeBytes: number,
  options: AnalyzeOptions = {},
): Promise<AnalysisOutcome> {
  const analysis: StreamAnalysis = {
    sizeBytes,
    configuration: { machineName: '' },
    sections: [],
    commands: [],
    ram: null,
    block: null,
    devices: [],
    eofOffset: null,
    vmdesc: null,
  };
  const table = new AnalysisRamBlockTable({
    storeContents: options.keepRam ?? true,
    ...(options.maxRamBytes !== undefined ? { maxTotalBytes: options.maxRamBytes } : {}),
  });
  const ram = new RamLoadHandler(table);
  const registry = new SaveStateRegistry();
  registry.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ram });
  const block = new BlockAnalysisHandler();
  registry.register({ idstr: BLOCK_SECTION_IDSTR, version: BLOCK_SECTION_VERSION, handlers: block });
  registry.register({ idstr: DISK_MANIFEST_IDSTR, version: DISK_MANIFEST_VERSION, handlers: block.manifestHandler });

  const input = new StreamReader(source);
  try {
    // Device descriptions by (name, instance), in stream order.
    const described = new Map<string, VmdescDevice[]>();
    if (trailer) {
      const parsed = parseVmdescTrailer(JSON.parse(trailer.json), trailer.offset + 5);
      for (const device of parsed.devices) {
        const key = `${device.name}\0${device.instance_id}`;
        described.set(key, [...(described.get(key) ?? []), device]);
      }
    }
    const resolveUnknown = ({ idstr, instanceId, kind }: { idstr: string; instanceId: number; kind: string }): SaveVMHandlers | undefined => {
      if (kind !== 'full') {
        return {
          loadState: async (r) => {
            throw new StreamError('unknown-section', `cannot decode iterative section '${idstr}': analyze knows '${RAM_IDSTR}', '${BLOCK_SECTION_IDSTR}' and '${DISK_MANIFEST_IDSTR}'`, { offset: r.offset });
          },
        };
      }
      return {
        loadState: async (r, ctx) => {
          const device = described.get(`${idstr}\0${instanceId}`)?.shift();
          if (!device) {
            const why = trailer ? `the JSON trailer has no description of '${idstr}' instance ${instanceId}` : 'the stream has no JSON trailer (truncated, or written without one)';
            throw new StreamError('bad-vmdesc', `${why}: cannot decode device section '${idstr}'`, { offset: r.offset });
          }
          const state = await decodeWithVmdesc(r, device);
          const entry: AnalyzedDevice = { name: idstr, instanceId, offset: ctx.offset, version: ctx.versionId, state };
          if (device.vmsd_name !== undefined) entry.vmsdName = device.vmsd_name;
          analysis.devices.push(entry);
        },
      };
    };
    const result = await loadVmState(input, registry, {
      resolveUnknown,
      onConfiguration: (c) => (analysis.configuration = describeConfiguration(c)),
      onSection: (s) => {
        analysis.sections.push({
          type: s.kind.toUpperCase(),
          offset: s.offset,
          sectionId: s.sectionId,
          idstr: s.idstr,
          instanceId: s.instanceId,
          versionId: s.versionId,
          sizeBytes: s.sizeBytes,
        });
      },
      onCommand: (c) => {
        analysis.commands.push({ offset: c.offset, name: c.name, payloadBytes: c.payload.length });
        if (c.name === 'PACKAGED') {
          throw new StreamError('unsupported-command', 'PACKAGED (postcopy) streams are not supported by analyze yet', { offset: c.offset });
        }
      },
    });
    analysis.eofOffset = result.eofOffset;
    if (result.vmdesc) {
      analysis.vmdesc = { offset: result.vmdesc.offset, lengthBytes: utf8ByteLength(result.vmdesc.json), devices: trailer ? JSON.parse(trailer.json).devices.length : 0 };
    }
    if (result.totalBytes !== sizeBytes) {
      throw new StreamError('bad-vmdesc', `${sizeBytes - result.totalBytes} unexpected byte(s) after the end of the stream`, { offset: result.totalBytes });
    }
  } catch (err) {
    if (!(err instanceof StreamError)) throw err; // a bug, not bad input
    analysis.error = { code: err.code, message: err.message, offset: err.offset, ...(err.section ? { section: err.section } : {}) };
  }
  if (ram.stats.sections > 0) analysis.ram = summarizeRam(ram.stats, table);
  analysis.block = block.summary();
  return { analysis, ramBlocks: table.blocks() };
}

/** Analyze a stream held in memory. */
export async function analyzeBytes(bytes: Uint8Array, options: AnalyzeOptions = {}): Promise<AnalysisOutcome> {
  const tailStart = Math.max(0, bytes.length - TRAILER_SEARCH_BYTES);
  const trailer = findVmdescTrailer(bytes.subarray(tailStart), tailStart);
  return analyzeStream(new MemorySource(bytes), trailer, bytes.length, options);
}

/** Analyze a stream file, reading it once from the front plus its tail for the trailer. */
export async function analyzeFile(path: string, options: AnalyzeOptions = {}): Promise<AnalysisOutcome> {
  const { size } = await stat(path);
  const tailStart = Math.max(0, size - TRAILER_SEARCH_BYTES);
  const tail = new Uint8Array(size - tailStart);
  const handle = await open(path, 'r');
  try {
    await handle.read(tail, 0, tail.length, tailStart);
  } finally {
    await handle.close();
  }
  const source = await FileSource.open(path);
  try {
    return await analyzeStream(source, findVmdescTrailer(tail, tailStart), size, options);
  } finally {
    await source.close();
  }
}

/** A file name for a RAM block (block names contain '/', e.g. `/rom@etc/acpi/tables`). */
export function ramDumpFileName(idstr: string): string {
  return idstr.replace(/^\/+/, '').replace(/[/\\]/g, '_') || '_';
}

/** Write each block's final contents to DIR/<block name>, sparse where the file system allows. */
export async function dumpRamBlocks(blocks: RamBlock[], dir: string): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const written: string[] = [];
  for (const block of blocks) {
    const path = join(dir, ramDumpFileName(block.idstr));
    const handle = await open(path, 'w');
    try {
      await handle.truncate(block.lengthBytes);
      const indices = block instanceof SparseRamBlock ? block.storedPageIndices() : Array.from({ length: block.pageCount }, (_, i) => i);
      for (const index of indices) {
        if (block.isPageZero(index)) continue;
        await handle.write(block.pageView(index), 0, TARGET_PAGE_SIZE, index * TARGET_PAGE_SIZE);
      }
    } finally {
      await handle.close();
    }
    written.push(path);
  }
  return written;
}
