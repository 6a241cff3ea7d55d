import { once } from 'node:events';
import { createServer } from 'node:net';

/** A loopback TCP port nobody listens on now: bound to port 0, then released (for a peer to listen on, or to be refused by). */
export async function freePort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}
