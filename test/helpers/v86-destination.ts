/**
 * A v86 migration destination for tests (until `livemig run --machine v86`
 * exists): `node v86-destination.js RAM_MIB [URI]`. Prints one JSON event per
 * line: listening {address}, loaded {ramHash, memoryCheck}, resumed {status,
 * started, error}, guest {bs} after three Bs from the destination's guest,
 * final {memoryCheck}; then exits.
 */
import { createV86Machine } from '../../src/machine/v86-machine.js';
import { IncomingMigration } from '../../src/migration/index.js';

const print = (event: string, data: Record<string, unknown> = {}): void => {
  process.stdout.write(`${JSON.stringify({ event, ...data })}\n`);
};

const ramMiB = Number(process.argv[2] ?? '32');
const uri = process.argv[3] ?? 'tcp:127.0.0.1:0';
const machine = await createV86Machine({ ramSizeBytes: ramMiB * 1024 * 1024, incoming: true });
let serial = '';
machine.serial.on('data', (chunk: Buffer) => (serial += chunk.toString('latin1')));
const incoming = new IncomingMigration(machine);
print('listening', { address: await incoming.listen(uri) });
incoming.on('loaded', () => print('loaded', { ramHash: machine.ramHash(), memoryCheck: machine.checkMemory() }));
const result = await incoming.run();
print('resumed', { status: result.status, started: result.started, error: result.error?.message, loadTimeMs: result.loadTimeMs });
if (result.status === 'completed' && result.started) {
  const t0 = performance.now();
  while ((serial.match(/B/g) ?? []).length < 3 && performance.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 20));
  print('guest', { bs: (serial.match(/B/g) ?? []).length, rebooted: serial.includes('A') });
  await machine.pause();
  print('final', { memoryCheck: machine.checkMemory() });
}
await machine.destroy();
process.exit(result.status === 'completed' ? 0 : 1);
