/** `livemig demo` with the test machine, as a user runs it: two real processes, QMP, loopback TCP. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { cliPath } from './helpers/paths.js';

const run = promisify(execFile);

test('livemig demo --machine test: pre-copy, and the RAM the destination resumed with is the source RAM at stop', { timeout: 120_000 }, async () => {
  const { stdout } = await run(process.execPath, [cliPath, 'demo', '--machine', 'test', '--ram', '64M'], { timeout: 110_000 });
  assert.match(stdout, /migration completed/);
  // The guest writes 50,000 pages/s: never drawn as 0 (unknown before the first sync), and measured in the summary.
  assert.doesNotMatch(stdout, /dirty 0 pages\/s/);
  assert.doesNotMatch(stdout, /expected downtime - ms/);
  assert.match(stdout, /^ {2}dirty rate +[1-9]\d* pages\/s newly dirtied while it ran/m);
  assert.match(stdout, /^ {2}downtime +\d+ ms \(.*; limit 300 ms\)$/m);
  // The same progress line as livemig migrate, from the source's model (a 64 MiB guest may be past its first pass at the first poll).
  assert.match(stdout, /^ {2}\[ *[\d.]+ m?s\] [a-z-]+, pass \d+: +\d+%/m);
  assert.match(stdout, /destination RAM at resume equals source RAM at stop/);
  assert.match(stdout, /demo OK$/m);
});

test('livemig demo --postcopy: the guest moves first, its memory check passes on the destination, and it runs on', { timeout: 120_000 }, async () => {
  const { stdout } = await run(process.execPath, [cliPath, 'demo', '--machine', 'test', '--ram', '64M', '--dirty-rate', '0', '--postcopy'], { timeout: 110_000 });
  assert.match(stdout, /> source: migrate-start-postcopy/);
  assert.match(stdout, /postcopy-active +\d+ pages still missing on the destination/);
  assert.match(stdout, /postcopy +[\d.]+ [KMG]?i?B after the switch; \d+ pages requested/);
  assert.match(stdout, /memory check \(QEMU's\) PASSED/);
  assert.match(stdout, /destination guest still running/);
  assert.match(stdout, /demo OK$/m);
});

test('livemig demo --postcopy refuses a v86 guest, saying why', async () => {
  await assert.rejects(run(process.execPath, [cliPath, 'demo', '--machine', 'v86', '--postcopy'], { timeout: 30_000 }), (err: { stderr: string; code: number }) => {
    assert.match(err.stderr, /--postcopy: .*v86 guest cannot run with pages missing/);
    return err.code !== 0;
  });
});

test('livemig demo --machine none: a guest without a console is seen running on by its clock, and the demo ends', { timeout: 60_000 }, async () => {
  const { stdout } = await run(process.execPath, [cliPath, 'demo', '--machine', 'none', '--ram', '16M'], { timeout: 50_000 });
  assert.match(stdout, /destination RAM at resume equals source RAM at stop/);
  assert.match(stdout, /destination guest still running: vmClockMs (\d+) -> (\d+), serial output 0 -> 0 bytes/);
  const [, before, after] = /vmClockMs (\d+) -> (\d+)/.exec(stdout)!;
  assert.ok(Number(after) > Number(before));
  assert.match(stdout, /demo OK$/m);
});
