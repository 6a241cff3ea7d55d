/**
 * warmUpMigrations(): a migration rehearsed in memory once per process, so the
 * first real migration runs compiled code (src/migration/warm-up.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { warmUpMigrations, WARM_UP_RAM_BYTES } from '../src/migration/warm-up.js';
import { cliPath } from './helpers/paths.js';

test('the rehearsal completes: every scratch page and a second pass travel, once per process', async () => {
  const first = warmUpMigrations();
  assert.equal(warmUpMigrations(), first, 'later calls share the first rehearsal');
  const result = await first;
  assert.equal(result.error, undefined);
  // A record per scratch page (a quarter of them zero: 8-byte records), ~0.75 of the RAM; then a quarter of
  // the pages again, rewritten: above 0.9 of the RAM only if the second pass ran.
  assert.ok(result.bytes > WARM_UP_RAM_BYTES * 0.9, `bytes ${result.bytes}`);
  assert.ok(result.bytes < WARM_UP_RAM_BYTES * 1.5, `bytes ${result.bytes}`);
});

test('`livemig run` rehearses as it starts, on a destination too, and a real migration into it is unaffected', { timeout: 60_000 }, async () => {
  const dest = spawn(process.execPath, [cliPath, 'run', '--machine', 'none', '--ram', '16M', '--incoming', 'tcp:127.0.0.1:0', '--json'], {
    env: { ...process.env, DEBUG: 'livemig:warm-up' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  dest.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const lines = createInterface({ input: dest.stdout });
  const events: string[] = [];
  const listening = new Promise<string>((resolve) =>
    lines.on('line', (line) => {
      const e = JSON.parse(line) as { event: string; address?: string };
      events.push(e.event);
      if (e.event === 'listening') resolve(e.address!);
    }),
  );
  try {
    const address = await listening;
    const source = spawn(process.execPath, [cliPath, 'run', '--machine', 'none', '--ram', '16M', '--pattern', 'random:5', '--migrate-to', address.startsWith('tcp:') ? address : `tcp:${address}`, '--migrate-after-ms', '0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const sourceExit = await new Promise<number | null>((resolve) => source.once('exit', resolve));
    assert.equal(sourceExit, 0, 'the source completed');
    const deadline = Date.now() + 20_000;
    while (!events.includes('resumed') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(events.includes('resumed'), `the destination resumed the guest (events: ${events.join(', ')})`);
    while (!/rehearsal/.test(stderr) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.match(stderr, /livemig:warm-up rehearsal completed in \d+ ms, \d+ bytes/);
  } finally {
    dest.kill();
  }
});
