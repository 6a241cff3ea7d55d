/**
 * `livemig demo`: the three phases end to end on a synthetic VM.
 *
 * The source is a RAM block with mixed content (random, zero and text pages)
 * plus the `globalstate` device. Between iterations the demo writes to guest
 * pages the way a running guest would, so later passes resend them (as
 * XBZRLE deltas). The stream goes through a real file; the destination loads
 * it into its own RAM and the demo checks both sides byte for byte, then
 * prints what `livemig analyze` sees in the stream.
 * (A guest that really runs during the copy is the test machine, issue 3.)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { analyzeFile } from '../analyze/analyze-stream.js';
import { DenseRamBlock, FixedRamBlockTable, RAM_IDSTR, RAM_SECTION_VERSION, RamLoadHandler, RamSaveHandler } from '../ram/index.js';
import { createGlobalState, globalStateVmsd, loadVmState, SaveStateRegistry, SaveVmState, storeGlobalState } from '../savevm/index.js';
import { FileSink, FileSource, StreamReader, StreamWriter, TARGET_PAGE_SIZE } from '../wire/index.js';
import { formatBytes } from './format.js';

const MACHINE_NAME = 'none';
const BYTES_PER_ITERATION = 8 << 20;

function fillGuestRam(ram: Uint8Array): void {
  const pages = ram.length / TARGET_PAGE_SIZE;
  for (let page = 0; page < pages; page++) {
    const at = page * TARGET_PAGE_SIZE;
    const kind = page % 8;
    if (kind < 3) randomFillSync(ram, at, TARGET_PAGE_SIZE);
    else if (kind < 5) ram.fill(0, at, at + TARGET_PAGE_SIZE);
    else ram.set(new TextEncoder().encode(`page ${page} of the livemig demo guest `.repeat(60).slice(0, TARGET_PAGE_SIZE)), at);
  }
}

/** What a running guest does between passes: bump a counter in every 16th page (its working set). */
function guestWrites(ram: Uint8Array, save: RamSaveHandler): number {
  const pages = ram.length / TARGET_PAGE_SIZE;
  let written = 0;
  for (let page = 0; page < pages; page += 16) {
    ram[page * TARGET_PAGE_SIZE + 64] = (ram[page * TARGET_PAGE_SIZE + 64]! + 1) & 0xff;
    save.markDirty(RAM_IDSTR, page);
    written++;
  }
  return written;
}

export async function demoCommand(options: { ramMib: string; keep?: string }): Promise<number> {
  const ramMib = Number(options.ramMib);
  if (!Number.isInteger(ramMib) || ramMib < 1 || ramMib > 4096) throw new Error(`--ram-mib must be an integer from 1 to 4096, got '${options.ramMib}'`);
  const dir = await mkdtemp(join(tmpdir(), 'livemig-demo-'));
  const streamPath = options.keep ?? join(dir, 'demo.mig');
  try {
    const log = (s: string): boolean => process.stdout.write(s + '\n');
    log(`livemig demo: ${ramMib} MiB guest, machine '${MACHINE_NAME}', stream ${streamPath}`);

    // Source.
    const sourceRam = new Uint8Array(ramMib << 20);
    fillGuestRam(sourceRam);
    const ramSave = new RamSaveHandler([new DenseRamBlock(RAM_IDSTR, sourceRam)], { xbzrle: true, maxIterateMs: Infinity });
    const source = new SaveStateRegistry();
    source.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: ramSave });
    const sourceGlobal = createGlobalState();
    source.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: sourceGlobal });

    const started = performance.now();
    const out = new StreamWriter(await FileSink.create(streamPath));
    const save = new SaveVmState(source, out, { configuration: { machineName: MACHINE_NAME } });
    await save.writeHeader();
    await save.setup();
    log(`setup:    ${formatBytes(await save.pendingBytes(true))} pending (every page dirty)`);
    let passes = 0;
    for (let round = 0; round < 40; round++) {
      const budgetEnd = out.bytesWritten + BYTES_PER_ITERATION;
      const done = await save.iterate(() => out.bytesWritten >= budgetEnd);
      const pending = await save.pendingBytes(true);
      if (done) {
        passes++;
        if (passes >= 3) break;
        const written = guestWrites(sourceRam, ramSave);
        log(`iterate:  pass ${passes} done; the guest wrote ${written} page(s) meanwhile`);
      } else {
        log(`iterate:  ${formatBytes(out.bytesWritten)} sent, ${formatBytes(pending)} pending`);
      }
    }
    storeGlobalState(sourceGlobal, 'running');
    log(`complete: guest stopped, ${formatBytes(await save.pendingBytes(true))} left to send`);
    await save.completePrecopy();
    await save.cleanup();
    await out.close();
    const stats = ramSave.stats;
    log(`stream:   ${formatBytes(out.bytesWritten)} in ${(performance.now() - started).toFixed(0)} ms; ` +
      `${stats.normalPages} normal, ${stats.duplicatePages} zero, ${stats.xbzrle.pages} xbzrle page(s)`);

    // Destination.
    const destinationRam = new Uint8Array(ramMib << 20);
    const destination = new SaveStateRegistry();
    destination.register({ idstr: RAM_IDSTR, version: RAM_SECTION_VERSION, handlers: new RamLoadHandler(new FixedRamBlockTable([new DenseRamBlock(RAM_IDSTR, destinationRam)])) });
    const destinationGlobal = createGlobalState();
    destination.register({ idstr: 'globalstate', vmsd: globalStateVmsd, opaque: destinationGlobal });
    const loadStarted = performance.now();
    const input = new StreamReader(await FileSource.open(streamPath));
    try {
      await loadVmState(input, destination, { machineName: MACHINE_NAME });
    } finally {
      await input.close();
    }
    const same = Buffer.compare(Buffer.from(sourceRam.buffer), Buffer.from(destinationRam.buffer)) === 0;
    log(`load:     ${(performance.now() - loadStarted).toFixed(0)} ms; destination run state '${destinationGlobal.state}'; RAM ${same ? 'identical to the source' : 'DIFFERS from the source'}`);

    const { analysis } = await analyzeFile(streamPath, { keepRam: false });
    const counts = new Map<string, number>();
    for (const s of analysis.sections) counts.set(s.type, (counts.get(s.type) ?? 0) + 1);
    log(`analyze:  ${[...counts].map(([t, n]) => `${n} ${t}`).join(', ')}; devices ${analysis.devices.map((d) => d.name).join(', ')}`);
    if (!same || analysis.error) {
      log(`demo FAILED${analysis.error ? `: ${analysis.error.message}` : ''}`);
      return 1;
    }
    log('demo OK');
    return 0;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
