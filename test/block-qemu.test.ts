/**
 * Interop: real QEMU 7.2 migrates a raw disk with capability `block` into a
 * file; our block records reader and BlockLoadHandler parse its `block`
 * section (RAM sections go through the RAM loader) and rebuild the disk byte
 * for byte. Skipped when qemu-system-x86_64 is not installed.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { analyzeFile } from '../src/analyze/analyze-stream.js';
import { CHUNK_SIZE } from '../src/block/block-device.js';
import { FileBlockDevice } from '../src/block/file-block-device.js';
import { BlockLoadHandler } from '../src/block/block-handler.js';
import { AnalysisRamBlockTable, RamLoadHandler } from '../src/ram/index.js';
import type { SaveVMHandlers, SectionKind } from '../src/savevm/handlers.js';
import { FileSource } from '../src/wire/node-channels.js';
import { readConfiguration, readFileHeader, readSectionFooter, readTopLevel, StreamReader } from '../src/wire/index.js';
import { Prng } from './helpers/prng.js';
import { QemuProcess, qemuSkipReason } from './helpers/qemu.js';

const skip = qemuSkipReason();

describe('block section from real QEMU', { skip }, () => {
  it('parses QEMU 7.2 block records and rebuilds the disk', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livemig-blockq-'));
    let qemu: QemuProcess | undefined;
    try {
      const size = 6 * CHUNK_SIZE + 4096;
      const image = new Uint8Array(size);
      const prng = new Prng(72);
      for (const chunk of [0, 2, 5]) for (let i = chunk * CHUNK_SIZE; i < (chunk + 1) * CHUNK_SIZE; i++) image[i] = prng.int(256);
      for (let i = 6 * CHUNK_SIZE; i < size; i++) image[i] = 0x5a; // short last chunk
      const srcPath = join(dir, 'src.img');
      await writeFile(srcPath, image);
      qemu = await QemuProcess.start(['-M', 'none', '-m', '16M', '-nodefaults', '-display', 'none', '-drive', `file=${srcPath},format=raw,if=none,id=disk0`]);
      await qemu.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'block', state: true },
          { capability: 'zero-blocks', state: true },
        ],
      });
      const streamPath = join(dir, 'qemu.mig');
      await qemu.execute('migrate', { uri: `exec:cat > ${streamPath}` });
      assert.equal(await qemu.waitForMigrationStatus(['completed', 'failed']), 'completed', qemu.stderr);
      await qemu.stop();
      qemu = undefined;

      const dst = await FileBlockDevice.open('disk0', join(dir, 'dst.img'), { create: true, size });
      const block = new BlockLoadHandler([dst]);
      const ram = new RamLoadHandler(new AnalysisRamBlockTable({ storeContents: false }));
      ram.loadSetup?.();
      const input = new StreamReader(await FileSource.open(streamPath));
      await readFileHeader(input);
      await readConfiguration(input);
      const bySection = new Map<number, { idstr: string; handler: SaveVMHandlers; versionId: number }>();
      let blockEnded = false;
      while (!blockEnded) {
        const rec = await readTopLevel(input);
        if (rec.type === 'command') continue;
        assert.ok(rec.type !== 'eof' && rec.type !== 'full', `unexpected ${rec.type} before block END`);
        if (rec.type === 'start') {
          const handler = rec.idstr === 'block' ? block : rec.idstr === 'ram' ? ram : undefined;
          assert.ok(handler, `unexpected iterative section ${rec.idstr}`);
          if (rec.idstr === 'block') assert.equal(rec.versionId, 1);
          bySection.set(rec.sectionId, { idstr: rec.idstr, handler, versionId: rec.versionId });
        }
        const entry = bySection.get(rec.sectionId)!;
        const kind: SectionKind = rec.type;
        await entry.handler.loadState(input, { kind, versionId: entry.versionId, idstr: entry.idstr, instanceId: 0, sectionId: rec.sectionId, offset: rec.offset });
        await readSectionFooter(input, rec.sectionId, entry.idstr);
        if (entry.idstr === 'block' && kind === 'end') blockEnded = true;
      }
      await input.close();
      await block.flush();
      assert.ok(Buffer.from(await readFile(dst.path)).equals(image), 'disk rebuilt from QEMU stream');
      assert.equal(block.stats.chunks.get('disk0')! >= 7, true);
      assert.ok(block.stats.zeroChunks >= 3, `zero chunks: ${block.stats.zeroChunks}`);
      assert.equal(block.stats.progress.at(-1), 100);
      await dst.close();

      // `livemig analyze` reads the same QEMU stream, block section included.
      const { analysis } = await analyzeFile(streamPath, { keepRam: false });
      assert.equal(analysis.error, undefined, analysis.error?.message);
      const device = analysis.block?.devices.find((d) => d.name === 'disk0');
      assert.ok(device, 'disk0 in the analysis');
      assert.equal(device.distinctChunks, 7);
      assert.equal(device.dataChunks + device.zeroChunks, block.stats.chunks.get('disk0'));
      assert.equal(device.zeroChunks, block.stats.zeroChunks);
      assert.equal(device.sizeBytes, null, 'QEMU streams carry no disk list');
    } finally {
      await qemu?.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
