/**
 * A static file server on 127.0.0.1 for the headless-browser tests: a fixed
 * table of paths, each read when requested; /favicon.ico is 204 and anything
 * else 404 (the tests check `requests` for what the page asked for).
 */
import { createServer, type Server } from 'node:http';

export type StaticFiles = Record<string, () => [contentType: string, body: Buffer | string]>;

export interface StaticServer {
  server: Server;
  origin: string;
  /** Every path requested, in order. */
  requests: string[];
}

export function serveFiles(files: StaticFiles): Promise<StaticServer> {
  const requests: string[] = [];
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    requests.push(path);
    if (path === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    const file = files[path];
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    const [type, body] = file();
    res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, origin: `http://127.0.0.1:${(server.address() as { port: number }).port}`, requests })));
}
