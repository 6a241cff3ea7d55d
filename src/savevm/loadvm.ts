/**
 * The load side of the registry: QEMU's qemu_loadvm_state.
 *
 * Reads the header and configuration, then dispatches each section to its
 * entry — START/FULL by (idstr, instance), PART/END by the section id the
 * stream introduced — with QEMU 7.2's checks: magic and version, machine name,
 * unknown sections, versions too new or too old, footers.
 */
import { vmstateLoad } from '../vmstate/index.js';
import {
  DEFAULT_TARGET_PAGE_BITS,
  readConfiguration,
  readFileHeader,
  readSectionFooter,
  readTopLevel,
  readVmdescTrailer,
  IncompleteStreamError,
  MemorySource,
  MigCommand,
  parsePackagedLength,
  StreamError,
  StreamReader,
  type StreamConfiguration,
  type TopLevelRecord,
} from '../wire/index.js';
import type { LoadSectionContext, SaveVMHandlers, SectionKind } from './handlers.js';
import type { SaveStateEntry, SaveStateRegistry } from './registry.js';

export interface LoadOptions {
  /** The local machine type; the stream's must equal it. Undefined accepts any (analysis). */
  machineName?: string;
  /** Capabilities validated through the configuration (7.2: `x-ignore-shared`) that are on locally. */
  validatedCapabilities?: string[];
  /**
   * Called for a START/FULL section no registered entry matches; return a
   * handler to load it (stream analysis), or undefined to fail as QEMU does.
   */
  resolveUnknown?: (record: { idstr: string; instanceId: number; versionId: number; kind: SectionKind }) => SaveVMHandlers | undefined;
  /** Called once the configuration section has been read, before it is checked. */
  onConfiguration?: (configuration: StreamConfiguration) => void;
  /** Called for every section after its footer was checked (for listings). */
  onSection?: (section: LoadedSection) => void;
  /**
   * The stream broke (any error while reading or loading): return a reader on
   * a new channel to go on from the next top-level record (postcopy recovery,
   * with every section's state kept), or undefined to fail with `err`.
   */
  onStreamBroken?: (err: unknown) => Promise<StreamReader | undefined>;
  /** Whether the JSON trailer may follow EOF (default true); false once a postcopy stream switched to postcopy. */
  expectVmdesc?: () => boolean;
  /** Called for every COMMAND record; without it any command fails as unsupported. */
  onCommand?: (command: { offset: number; command: number; name: string; payload: Uint8Array }) => void | Promise<void>;
  /**
   * At EOF, refuse the stream (IncompleteStreamError, code 'incomplete-stream')
   * when an entry registered with `required: true` got no START or FULL
   * section; the error names every one missing. Default true (a registry
   * without required entries, as analysis builds, is unaffected).
   */
  checkRequired?: boolean;
  /**
   * Completeness checks at EOF: called once the EOF byte and the vmdesc
   * trailer were read and the required entries checked, before the result is
   * returned. Throw to refuse the stream, e.g.
   * `onEof: (eof) => ram.checkComplete(eof.offset)`. A StreamError passes
   * through; anything else becomes one ('incomplete-stream').
   */
  onEof?: (eof: { offset: number; totalBytes: number }) => void | Promise<void>;
}

/** What a section looked like on the wire. */
export interface LoadedSection {
  kind: SectionKind;
  /** Offset of the type byte. */
  offset: number;
  /** Bytes from the type byte to the end of the footer. */
  sizeBytes: number;
  sectionId: number;
  idstr: string;
  instanceId: number;
  versionId: number;
}

export interface LoadResult {
  configuration: StreamConfiguration;
  /** Offset of the EOF byte. */
  eofOffset: number;
  /** The JSON trailer, if the stream had one. */
  vmdesc: { offset: number; json: string } | null;
  /** Bytes read in all. */
  totalBytes: number;
}

interface LoadingEntry {
  /** The registered entry; undefined for a section resolveUnknown took. */
  entry: SaveStateEntry | undefined;
  handlers: SaveVMHandlers;
  idstr: string;
  instanceId: number;
  versionId: number;
}

/** A vmsd entry seen through the handler interface, so the loop has one path. */
function vmstateLoader(entry: SaveStateEntry): SaveVMHandlers {
  return {
    loadState: (input, context) => vmstateLoad(input, entry.vmsd!, entry.opaque!, context.versionId),
  };
}

/** Load a whole stream into the registry's entries. Any problem throws a StreamError. */
export async function loadVmState(input: StreamReader, registry: SaveStateRegistry, options: LoadOptions = {}): Promise<LoadResult> {
  await readFileHeader(input);
  const configuration = await readConfiguration(input);
  options.onConfiguration?.(configuration);
  checkConfiguration(configuration, options, input.offset);

  const started = new Set<SaveVMHandlers>();
  const byStreamId = new Map<number, LoadingEntry>();
  /** Entries a START or FULL section was loaded for. */
  const arrived = new Set<SaveStateEntry>();

  /** Sections and commands until EOF (the stream) or POSTCOPY_RUN / its end (a package). */
  const loadRecords = async (reader: StreamReader, packageAt: number | undefined): Promise<LoadResult | undefined> => {
    for (;;) {
      if (packageAt !== undefined && (await reader.atEnd())) return undefined;
      const record = await readTopLevel(reader);
      if (record.type === 'eof') {
        if (packageAt !== undefined) throw new StreamError('bad-command', `EOF inside the PACKAGED command at offset ${packageAt}`, { offset: packageAt });
        // No trailer follows a postcopy stream (QEMU's should_send_vmdesc): reading for it would wait forever.
        const vmdesc = (options.expectVmdesc?.() ?? true) ? await readVmdescTrailer(reader) : null;
        const result = { configuration, eofOffset: record.offset, vmdesc, totalBytes: reader.offset };
        if (options.checkRequired ?? true) checkRequiredEntries(registry, arrived, record.offset);
        if (options.onEof) await runEofCheck(options.onEof, result);
        return result;
      }
      if (record.type === 'command') {
        if (record.command === MigCommand.Packaged && options.onCommand) {
          if (packageAt !== undefined) throw new StreamError('bad-command', 'PACKAGED inside a package', { offset: record.offset });
          // QEMU's loadvm_handle_cmd_packaged: the package is read whole, then loaded as a stream of its own.
          const length = parsePackagedLength(record.payload, record.offset);
          const pkg = (await reader.bytes(length, length, 'PACKAGED data')).slice();
          const pkgReader = new StreamReader(new MemorySource(pkg, Math.max(1, pkg.length)));
          try {
            await loadRecords(pkgReader, record.offset);
          } catch (err) {
            if (err instanceof StreamError) throw err.inPackage(record.offset);
            throw err;
          }
          continue;
        }
        if (!options.onCommand) {
          throw new StreamError('unsupported-command', `command ${record.name} (${record.command}) is not supported yet`, { offset: record.offset });
        }
        await options.onCommand(record);
        // POSTCOPY_RUN ends the package it came in (QEMU's LOADVM_QUIT).
        if (record.command === MigCommand.PostcopyRun && packageAt !== undefined) return undefined;
        continue;
      }
      const loading = resolveSection(record, registry, options, byStreamId);
      if (!started.has(loading.handlers) && loading.handlers.loadSetup) {
        await loading.handlers.loadSetup();
        started.add(loading.handlers);
      }
      const context: LoadSectionContext = {
        kind: record.type,
        versionId: loading.versionId,
        idstr: loading.idstr,
        instanceId: loading.instanceId,
        sectionId: record.sectionId,
        offset: record.offset,
      };
      const section = { idstr: loading.idstr, instanceId: loading.instanceId, sectionId: record.sectionId };
      try {
        await loading.handlers.loadState(reader, context);
        await readSectionFooter(reader, record.sectionId, loading.idstr);
      } catch (err) {
        if (err instanceof StreamError) throw err.withSection(section);
        // A handler bug or a value it could not take: still a clean, located error.
        throw new StreamError('handler-failed', `loading failed: ${(err as Error).message}`, { offset: reader.offset, section }, { cause: err });
      }
      if (loading.entry && (record.type === 'start' || record.type === 'full')) arrived.add(loading.entry);
      options.onSection?.({ ...context, sizeBytes: reader.offset - record.offset });
    }
  };

  try {
    for (const entry of registry.entries()) {
      if (entry.handlers?.loadSetup) {
        await entry.handlers.loadSetup();
        started.add(entry.handlers);
      }
    }
    let reader = input;
    for (;;) {
      try {
        return (await loadRecords(reader, undefined))!;
      } catch (err) {
        // Postcopy recovery: the record being read is abandoned; the next one comes from a new channel.
        const next = options.onStreamBroken ? await options.onStreamBroken(err) : undefined;
        if (!next) throw err;
        reader = next;
      }
    }
  } finally {
    for (const handlers of started) await handlers.loadCleanup?.();
  }
}

/** Every entry registered `required` must have had a START or FULL section by EOF. */
function checkRequiredEntries(registry: SaveStateRegistry, arrived: ReadonlySet<SaveStateEntry>, eofOffset: number): void {
  const missing = registry.entries().filter((e) => e.required && !arrived.has(e));
  if (missing.length === 0) return;
  const names = missing.map((e) => `'${e.idstr}' instance ${e.instanceId}`).join(', ');
  const reason = `incomplete stream: EOF without the required section${missing.length > 1 ? 's' : ''} ${names} (the guest cannot run without ${missing.length > 1 ? 'them' : 'it'})`;
  throw new IncompleteStreamError(reason, { offset: eofOffset }, missing.map((e) => ({ idstr: e.idstr, instanceId: e.instanceId })));
}

async function runEofCheck(onEof: NonNullable<LoadOptions['onEof']>, result: LoadResult): Promise<void> {
  try {
    await onEof({ offset: result.eofOffset, totalBytes: result.totalBytes });
  } catch (err) {
    if (err instanceof StreamError) throw err;
    throw new StreamError('incomplete-stream', `incomplete stream: ${(err as Error).message}`, { offset: result.eofOffset }, { cause: err });
  }
}

function checkConfiguration(config: StreamConfiguration, options: LoadOptions, offset: number): void {
  const section = { idstr: 'configuration' };
  if (options.machineName !== undefined && config.machineName !== options.machineName) {
    throw new StreamError('machine-mismatch', `machine type received is '${config.machineName}' and local is '${options.machineName}'`, { offset, section });
  }
  const pageBits = config.targetPageBits ?? DEFAULT_TARGET_PAGE_BITS;
  if (pageBits !== DEFAULT_TARGET_PAGE_BITS) {
    throw new StreamError('bad-configuration', `received target page bits ${pageBits}, but local is ${DEFAULT_TARGET_PAGE_BITS}`, { offset, section });
  }
  if (options.machineName !== undefined) {
    const local = new Set(options.validatedCapabilities ?? []);
    const remote = new Set(config.capabilities ?? []);
    for (const cap of new Set([...local, ...remote])) {
      if (local.has(cap) !== remote.has(cap)) {
        throw new StreamError('bad-configuration', `capability ${cap} is ${local.has(cap) ? 'on' : 'off'}, but received capability is ${remote.has(cap) ? 'on' : 'off'}`, { offset, section });
      }
    }
  }
}

function resolveSection(
  record: Exclude<TopLevelRecord, { type: 'eof' | 'command' }>,
  registry: SaveStateRegistry,
  options: LoadOptions,
  byStreamId: Map<number, LoadingEntry>,
): LoadingEntry {
  if (!('idstr' in record)) {
    const loading = byStreamId.get(record.sectionId);
    if (!loading) {
      throw new StreamError('unknown-section', `unknown savevm section ${record.sectionId}: no START introduced it`, { offset: record.offset, section: { sectionId: record.sectionId } });
    }
    return loading;
  }
  const { idstr, instanceId, versionId, sectionId } = record;
  const section = { idstr, instanceId, sectionId };
  const entry = registry.find(idstr, instanceId);
  let handlers: SaveVMHandlers | undefined;
  if (entry) {
    if (versionId > entry.version) {
      throw new StreamError('version-too-new', `savevm: unsupported version ${versionId} for '${idstr}' v${entry.version}`, { offset: record.offset, section });
    }
    handlers = entry.vmsd ? vmstateLoader(entry) : entry.handlers!;
  } else {
    handlers = options.resolveUnknown?.({ idstr, instanceId, versionId, kind: record.type });
    if (!handlers) {
      throw new StreamError('unknown-section', `unknown savevm section or instance '${idstr}' ${instanceId}`, { offset: record.offset, section });
    }
  }
  const loading = { entry, handlers, idstr, instanceId, versionId };
  byStreamId.set(sectionId, loading);
  return loading;
}
