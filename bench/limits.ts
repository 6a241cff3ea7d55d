/** The references a migration is measured against: loopback TCP between two processes, and memory copy. */
import { randomFillSync } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { GiB, LineChild, MiB } from './util.js';

/** Bytes per second through 127.0.0.1 from this process into a sink child, in 1 MiB writes. */
export async function loopbackTcpBytesPerSecond(totalBytes = 2 * GiB): Promise<number> {
  const sink = new LineChild(process.execPath, [new URL('./tcp-sink.js', import.meta.url).pathname]);
  try {
    const port = await sink.waitFor((line) => Number(line) || undefined, 'tcp sink');
    const socket = connect(port, '127.0.0.1');
    await once(socket, 'connect');
    const chunk = randomFillSync(Buffer.allocUnsafe(MiB));
    let reply = '';
    socket.setEncoding('utf8').on('data', (s: string) => (reply += s));
    const t0 = performance.now();
    for (let sent = 0; sent < totalBytes; sent += chunk.length) {
      if (!socket.write(chunk)) await once(socket, 'drain');
    }
    socket.end();
    await once(socket, 'end'); // the sink answers after it has read everything
    const seconds = (performance.now() - t0) / 1000;
    if (Number(reply) !== totalBytes) throw new Error(`tcp sink received ${reply.trim()} bytes, expected ${totalBytes}`);
    return totalBytes / seconds;
  } finally {
    await sink.stop();
  }
}

/** Bytes per second of Buffer.copy between two 256 MiB buffers (already faulted in), `rounds` times. */
export function memoryCopyBytesPerSecond(bufferBytes = 256 * MiB, rounds = 8): number {
  const a = Buffer.alloc(bufferBytes, 1);
  const b = Buffer.alloc(bufferBytes, 2);
  a.copy(b); // warm-up
  const t0 = performance.now();
  for (let i = 0; i < rounds; i++) (i % 2 ? b : a).copy(i % 2 ? a : b);
  return (bufferBytes * rounds) / ((performance.now() - t0) / 1000);
}

/**
 * Single-stream loopback TCP with iperf3 (`-t seconds`, receiver's figure),
 * when `iperf3` is installed; undefined otherwise (it is not installed for this).
 */
export async function iperf3BytesPerSecond(seconds = 3): Promise<number | undefined> {
  const probe = spawnSync('iperf3', ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) return undefined;
  const port = 15201 + Math.floor(Math.random() * 1000);
  const server = spawn('iperf3', ['-s', '-1', '-p', String(port), '-B', '127.0.0.1'], { stdio: 'ignore' });
  try {
    await new Promise((resolve) => setTimeout(resolve, 500));
    const client = spawnSync('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-J'], { encoding: 'utf8', timeout: (seconds + 10) * 1000 });
    if (client.status !== 0) return undefined;
    const report = JSON.parse(client.stdout) as { end?: { sum_received?: { bits_per_second?: number } } };
    const bps = report.end?.sum_received?.bits_per_second;
    return bps === undefined ? undefined : bps / 8;
  } catch {
    return undefined;
  } finally {
    if (server.exitCode === null) server.kill('SIGTERM');
  }
}
