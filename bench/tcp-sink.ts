/**
 * Child of bench/run.ts for the loopback TCP limit: accept one connection on
 * 127.0.0.1, discard everything it sends, and answer its end with the byte count.
 */
import { createServer, type AddressInfo } from 'node:net';

const server = createServer((socket) => {
  let bytes = 0;
  socket.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
  });
  socket.on('end', () => {
    socket.end(`${bytes}\n`);
    server.close();
  });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
});
