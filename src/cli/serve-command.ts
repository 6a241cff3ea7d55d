/**
 * `livemig serve --port P [--host H]`: serves the page that runs a v86 VM in
 * a browser tab and moves it live to a `livemig run` on this host and back
 * (src/serve/serve.ts). Runs until SIGINT/SIGTERM, then ends the server's VM.
 */
import { startServe } from '../serve/serve.js';
import { jsonText } from './format.js';

export interface ServeCommandOptions {
  port: string;
  host: string;
  json?: boolean;
}

export async function serveCommand(options: ServeCommandOptions): Promise<number> {
  const port = Number(options.port);
  if (!/^\d+$/.test(options.port) || port > 65535) throw new Error(`--port: a port number 0-65535 (0 picks a free one), not '${options.port}'`);
  const emit = (event: string, data: Record<string, unknown>, human: string): void => {
    process.stdout.write(options.json ? `${jsonText({ event, ...data })}\n` : `${human}\n`);
  };
  const handle = await startServe({
    host: options.host,
    port,
    onEvent: (event, data) => emit(event, data, `livemig serve: ${event.replace(/-/g, ' ')}${Object.keys(data).length ? ` ${jsonText(data)}` : ''}`),
  });
  emit('serving', { url: handle.url, host: handle.host, port: handle.port }, `livemig serve: open ${handle.url} (Ctrl-C stops it and the server's VM)`);
  const code = await new Promise<number>((resolve) => {
    process.once('SIGINT', () => resolve(130));
    process.once('SIGTERM', () => resolve(0));
  });
  await handle.close();
  return code;
}
