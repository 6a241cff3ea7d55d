/**
 * Postcopy's commands and return-path messages: the bytes QEMU 7.2 wrote in
 * the captures of the reference facts, both ways, and bad frames.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MAX_PACKAGE_BYTES,
  MemorySource,
  MigCommand,
  StreamError,
  StreamReader,
  parsePackagedLength,
  parsePostcopyAdvise,
  parseRamDiscard,
  parseRecvBitmapCommand,
  readRecvBitmap,
  readReturnPathMessage,
  readTopLevel,
  writePackaged,
  writePostcopyAdvise,
  writeRamDiscard,
  writeRecvBitmap,
  writeRecvBitmapCommand,
  writeReqPages,
  writeResumeAck,
} from '../src/wire/index.js';
import { written } from './helpers/written.js';

const hex = (text: string): Uint8Array => Uint8Array.from(Buffer.from(text.replace(/\s+/g, ''), 'hex'));
const ascii = (text: string): string => Buffer.from(text, 'latin1').toString('hex');


const reader = (bytes: Uint8Array, chunk = 3): StreamReader => new StreamReader(new MemorySource(bytes, chunk));

test('POSTCOPY_ADVISE and RAM_DISCARD are the bytes QEMU 7.2 sent', async () => {
  const advise = await written((out) => writePostcopyAdvise(out));
  assert.deepEqual(advise, hex('08 0003 0010 0000000000001000 0000000000001000'));
  const discard = await written((out) => writeRamDiscard(out, 'pc.ram', [{ startBytes: 0x100000, lengthBytes: 0x6300000 }]));
  assert.deepEqual(discard, hex(`08 0006 0019 00 06 ${ascii('pc.ram')} 00 0000000000100000 0000000006300000`));

  const record = await readTopLevel(reader(discard));
  assert.equal(record.type, 'command');
  if (record.type !== 'command') return;
  assert.equal(record.command, MigCommand.PostcopyRamDiscard);
  assert.deepEqual(parseRamDiscard(record.payload, 0), { idstr: 'pc.ram', ranges: [{ startBytes: 0x100000, lengthBytes: 0x6300000 }] });
  const adviceRecord = await readTopLevel(reader(advise));
  assert.ok(adviceRecord.type === 'command');
  assert.deepEqual(parsePostcopyAdvise(adviceRecord.payload, 0), { pageSizeSummary: 4096, targetPageSize: 4096 });
  assert.equal(parsePostcopyAdvise(new Uint8Array(0), 0), undefined, 'the empty form: dirty-bitmap postcopy only');
});

test('RAM_DISCARD: at most 12 ranges per command, as QEMU', async () => {
  const ranges = Array.from({ length: 30 }, (_, i) => ({ startBytes: i * 0x2000, lengthBytes: 0x1000 }));
  const bytes = await written((out) => assert.equal(writeRamDiscard(out, 'ram', ranges), 3));
  const input = reader(bytes, 7);
  const got: { startBytes: number; lengthBytes: number }[] = [];
  for (const expected of [12, 12, 6]) {
    const record = await readTopLevel(input);
    assert.ok(record.type === 'command');
    const parsed = parseRamDiscard(record.payload, record.offset);
    assert.equal(parsed.ranges.length, expected);
    got.push(...parsed.ranges);
  }
  assert.deepEqual(got, ranges);
});

test('RAM_DISCARD: bad payloads are refused naming the byte at fault', () => {
  const good = hex(`00 03 ${ascii('ram')} 00 0000000000001000 0000000000001000`);
  const cases: [string, Uint8Array, RegExp, number][] = [
    ['version 1', hex(`01 03 ${ascii('ram')} 00`), /version 1 is not supported/, 5],
    ['name past the end', hex(`00 09 ${ascii('ram')} 00`), /runs past/, 6],
    ['no 0 after the name', hex(`00 03 ${ascii('ram')} 07`), /expected a 0 byte/, 10],
    ['half a range', good.subarray(0, good.length - 8), /not a whole number/, 11],
    ['a start past 2^53', hex(`00 03 ${ascii('ram')} 00 ffffffffffffffff 0000000000001000`), /exceeds 2\^53/, 11],
    ['two bytes', hex('0000'), /too short/, 5],
  ];
  for (const [what, payload, message, offset] of cases) {
    assert.throws(() => parseRamDiscard(payload, 0), (err: unknown) => err instanceof StreamError && message.test(err.message) && err.offset === offset, what);
  }
});

test('PACKAGED: the length, then the package; an oversized package is refused before anything is read', async () => {
  const pkg = hex('08 0004 0000 08 0005 0000');
  const bytes = await written((out) => writePackaged(out, pkg));
  assert.deepEqual(bytes, hex(`08 0007 0004 0000000a ${Buffer.from(pkg).toString('hex')}`));
  const input = reader(bytes);
  const record = await readTopLevel(input);
  assert.ok(record.type === 'command');
  assert.equal(parsePackagedLength(record.payload, record.offset), 10);
  assert.deepEqual(await input.bytes(10, 10), pkg);
  const huge = hex('ffffffff');
  assert.throws(() => parsePackagedLength(huge, 100), (err: unknown) => err instanceof StreamError && err.code === 'too-large' && err.offset === 105 && err.message.includes(String(MAX_PACKAGE_BYTES)));
});

test('RECV_BITMAP command: the block name, counted', async () => {
  const bytes = await written((out) => writeRecvBitmapCommand(out, 'pc.ram'));
  assert.deepEqual(bytes, hex(`08 000a 0007 06 ${ascii('pc.ram')}`));
  const record = await readTopLevel(reader(bytes));
  assert.ok(record.type === 'command');
  assert.equal(parseRecvBitmapCommand(record.payload, 0), 'pc.ram');
  assert.throws(() => parseRecvBitmapCommand(hex(`09 ${ascii('pc.ram')}`), 0), /block name of 9 bytes/);
});

test('return path: REQ_PAGES_ID and REQ_PAGES are the bytes QEMU 7.2 sent; RESUME_ACK', async () => {
  const bytes = await written((out) => {
    writeReqPages(out, 0x2b57000, 0x1000, 'pc.ram');
    writeReqPages(out, 0x2b5a000, 0x1000);
    writeResumeAck(out);
  });
  assert.deepEqual(bytes, hex(`0003 0013 0000000002b57000 00001000 06 ${ascii('pc.ram')}  0004 000c 0000000002b5a000 00001000  0006 0004 00000001`));
  const input = reader(bytes, 5);
  assert.deepEqual(await readReturnPathMessage(input), { type: 'req-pages', startBytes: 0x2b57000, lengthBytes: 0x1000, offset: 0, idstr: 'pc.ram' });
  assert.deepEqual(await readReturnPathMessage(input), { type: 'req-pages', startBytes: 0x2b5a000, lengthBytes: 0x1000, offset: 23 });
  assert.deepEqual(await readReturnPathMessage(input), { type: 'resume-ack', value: 1 });
  assert.equal(await readReturnPathMessage(input), null);
});

test('return path: bad postcopy messages are refused', async () => {
  const cases: [string, string, RegExp][] = [
    ['REQ_PAGES of 11 bytes', '0004 000b 0000000000001000 000010', /shorter than a start/],
    ['REQ_PAGES of 13 bytes', '0004 000d 0000000000001000 00001000 00', /expected 12/],
    ['REQ_PAGES_ID name overrun', `0003 000f 0000000000001000 00001000 06 ${ascii('pc')}`, /block name of 6 bytes/],
    ['REQ_PAGES start past 2^53', '0004 000c ffffffff00001000 00001000', /exceeds 2\^53/],
    ['RESUME_ACK of 2 bytes', '0006 0002 0001', /expected 4/],
    ['type 9', '0009 0000', /unknown message type 9/],
  ];
  for (const [what, bytes, message] of cases) {
    await assert.rejects(readReturnPathMessage(reader(hex(bytes))), (err: unknown) => err instanceof StreamError && message.test(err.message), what);
  }
});

test('return path: RECV_BITMAP round trip (little-endian 64-bit words, end mark) and its checks', async () => {
  const pageCount = 100;
  const bitmap = new Uint32Array(4);
  for (const page of [0, 1, 31, 32, 63, 64, 99]) bitmap[page >>> 5]! |= 1 << (page & 31);
  const bytes = await written((out) => writeRecvBitmap(out, 'ram', bitmap, pageCount));
  // 100 pages: 2 u64 words = 16 bytes.
  assert.equal(bytes.length, 2 + 2 + 4 + 8 + 16 + 8);
  assert.deepEqual(bytes.subarray(16, 24), hex('0300008001000080'), 'pages 0, 1, 31, 32, 63 as a little-endian u64');
  const input = reader(bytes, 5);
  assert.deepEqual(await readReturnPathMessage(input), { type: 'recv-bitmap', idstr: 'ram', offset: 0 });
  assert.deepEqual(await readRecvBitmap(input, 'ram', pageCount), bitmap);

  const badEnd = Uint8Array.from(bytes);
  badEnd[badEnd.length - 1] = 0;
  const badInput = reader(badEnd);
  await readReturnPathMessage(badInput);
  await assert.rejects(readRecvBitmap(badInput, 'ram', pageCount), /end mark/);
  const wrongSize = reader(bytes);
  await readReturnPathMessage(wrongSize);
  await assert.rejects(readRecvBitmap(wrongSize, 'ram', 1000), /16 bytes, but its 1000 pages take 128/);
});
