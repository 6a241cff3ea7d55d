import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MemorySource,
  readConfiguration,
  readFileHeader,
  readSectionFooter,
  readTopLevel,
  readVmdescTrailer,
  SectionType,
  StreamError,
  StreamReader,
  writeCommand,
  writeConfiguration,
  writeEof,
  writeFileHeader,
  writeFullSectionHeader,
  writeSectionFooter,
  writeShortSectionHeader,
  writeVmdesc,
} from '../src/wire/index.js';
import { written } from './helpers/written.js';

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const ascii = (s: string): string => Buffer.from(s, 'latin1').toString('hex');
const reader = (bytes: Uint8Array): StreamReader => new StreamReader(new MemorySource(bytes, 3));


// Reference 2.4 [verified]: `-M none` with x-ignore-shared + validate-uuid.
const VERIFIED_CONFIGURATION = hex(
  `5145564d 00000003 07 00000004 ${ascii('none')}
   05 1a ${ascii('configuration/capabilities')} 00000001 00000001 0f ${ascii('x-ignore-shared')}
   05 12 ${ascii('configuration/uuid')} 00000001 11111111 22223333 44445555 55555555`,
);

test('header and configuration: byte-exact with QEMU 7.2', async () => {
  const uuid = hex('11111111222233334444555555555555');
  const bytes = await written((w) => {
    writeFileHeader(w);
    writeConfiguration(w, { machineName: 'none', capabilities: ['x-ignore-shared'], uuid });
  });
  assert.deepEqual(bytes, VERIFIED_CONFIGURATION);
  const r = reader(VERIFIED_CONFIGURATION);
  await readFileHeader(r);
  const config = await readConfiguration(r);
  assert.equal(config.machineName, 'none');
  assert.deepEqual(config.capabilities, ['x-ignore-shared']);
  assert.deepEqual(config.uuid, uuid);
  assert.equal(r.offset, 0x6d);
});

test('bad magic, obsolete and unknown versions, missing configuration', async () => {
  const cases: Array<[string, string, RegExp]> = [
    ['5145564e00000003', 'bad-magic', /not a migration stream/],
    ['5145564d00000002', 'bad-version', /v2 format is obsolete/],
    ['5145564d00000004', 'bad-version', /unsupported migration stream version 4/],
  ];
  for (const [bytes, code, message] of cases) {
    await assert.rejects(readFileHeader(reader(hex(bytes))), (e: unknown) => e instanceof StreamError && e.code === code && message.test(e.message));
  }
  await assert.rejects(readConfiguration(reader(hex('01'))), (e: unknown) => e instanceof StreamError && e.code === 'bad-configuration' && e.offset === 0);
  await assert.rejects(readConfiguration(reader(hex('07 ffffffff'))), (e: unknown) => e instanceof StreamError && e.code === 'too-large');
  const unknownSub = hex(`07 00000004 ${ascii('none')} 05 11 ${ascii('configuration/xyz')} 00000001`);
  await assert.rejects(readConfiguration(reader(unknownSub)), /unknown configuration subsection 'configuration\/xyz'/);
});

test('section headers, footers, EOF and vmdesc round trip', async () => {
  const bytes = await written((w) => {
    writeFullSectionHeader(w, SectionType.Start, 2, 'ram', 0, 4);
    writeSectionFooter(w, 2);
    writeShortSectionHeader(w, SectionType.Part, 2);
    writeSectionFooter(w, 2);
    writeFullSectionHeader(w, SectionType.Full, 4, 'globalstate', 0, 1);
    writeSectionFooter(w, 4);
    writeEof(w);
    writeVmdesc(w, '{"page_size": 4096, "devices": []}');
  });
  assert.deepEqual(bytes.subarray(0, 18), hex(`01 00000002 03 ${ascii('ram')} 00000000 00000004 7e`));
  const r = reader(bytes);
  assert.deepEqual(await readTopLevel(r), { type: 'start', offset: 0, sectionId: 2, idstr: 'ram', instanceId: 0, versionId: 4 });
  await readSectionFooter(r, 2, 'ram');
  assert.deepEqual(await readTopLevel(r), { type: 'part', offset: 22, sectionId: 2 });
  await readSectionFooter(r, 2, 'ram');
  const full = await readTopLevel(r);
  assert.equal(full.type, 'full');
  await readSectionFooter(r, 4, 'globalstate');
  assert.equal((await readTopLevel(r)).type, 'eof');
  const trailer = await readVmdescTrailer(r);
  assert.equal(trailer?.json, '{"page_size": 4096, "devices": []}');
  assert.equal(await r.atEnd(), true);
  assert.equal(await readVmdescTrailer(reader(new Uint8Array(0))), null, 'trailer is optional');
});

test('footer errors name the section', async () => {
  await assert.rejects(readSectionFooter(reader(hex('00 00000002')), 2, 'ram'), (e: unknown) =>
    e instanceof StreamError && e.code === 'bad-footer' && /missing section footer for 'ram'/.test(e.message) && e.section?.sectionId === 2);
  await assert.rejects(readSectionFooter(reader(hex('7e 00000003')), 2, 'ram'), (e: unknown) =>
    e instanceof StreamError && e.code === 'bad-footer' && /mismatched section id/.test(e.message) && e.offset === 1);
});

test('commands: parsed, lengths checked, unknown numbers rejected', async () => {
  const bytes = await written((w) => {
    writeCommand(w, 1);
    writeCommand(w, 2, hex('00000001'));
  });
  assert.deepEqual(bytes, hex('08 0001 0000 08 0002 0004 00000001'));
  const r = reader(bytes);
  const open = await readTopLevel(r);
  assert.equal(open.type === 'command' && open.name, 'OPEN_RETURN_PATH');
  const ping = await readTopLevel(r);
  assert.ok(ping.type === 'command');
  assert.deepEqual(ping.payload, hex('00000001'));
  await assert.rejects(readTopLevel(reader(hex('08 0000 0000'))), /MIG_CMD 0x0 unknown/);
  await assert.rejects(readTopLevel(reader(hex('08 000b 0000'))), /MIG_CMD 0xb unknown/);
  await assert.rejects(readTopLevel(reader(hex('08 0002 0003 000000'))), /PING has length 3, expected 4/);
  await assert.rejects(readTopLevel(reader(hex('08 0003 0004 00000000'))), /POSTCOPY_ADVISE has length 4, expected 0 or 16/);
});

test('unknown top-level type bytes are rejected with their offset', async () => {
  for (const type of [0x05, 0x06, 0x07, 0x09, 0x7e, 0xff]) {
    await assert.rejects(readTopLevel(reader(Uint8Array.of(type))), (e: unknown) =>
      e instanceof StreamError && e.code === 'unknown-section-type' && e.offset === 0 && e.message.includes(`type ${type}`));
  }
});
