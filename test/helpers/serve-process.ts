/** A `livemig serve --port 0 --json` child for tests: its URL, its events, and JSON API calls. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { cliPath } from './paths.js';

export type ServeEvent = { event: string } & Record<string, any>;

export class ServeProcess {
  readonly events: ServeEvent[] = [];
  stderr = '';
  readonly exited: Promise<number | null>;
  url = '';
  port = 0;

  private constructor(readonly child: ChildProcess) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        this.events.push(JSON.parse(line) as ServeEvent);
      } catch {
        this.events.push({ event: 'text', line });
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  static async start(extraArgs: string[] = []): Promise<ServeProcess> {
    const serve = new ServeProcess(spawn(process.execPath, [cliPath, 'serve', '--port', '0', '--json', ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'] }));
    const deadline = Date.now() + 20_000;
    while (!serve.events.some((e) => e.event === 'serving')) {
      if (serve.child.exitCode !== null) throw new Error(`livemig serve exited (${serve.child.exitCode}): ${serve.stderr}`);
      if (Date.now() > deadline) throw new Error(`livemig serve printed no 'serving' line: ${serve.stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const serving = serve.events.find((e) => e.event === 'serving')!;
    serve.url = serving.url as string;
    serve.port = serving.port as number;
    return serve;
  }

  async get(path: string): Promise<{ status: number; type: string; body: string }> {
    const response = await fetch(new URL(path, this.url));
    return { status: response.status, type: response.headers.get('content-type') ?? '', body: await response.text() };
  }

  async post(path: string, body: unknown, headers: Record<string, string> = { 'content-type': 'application/json' }): Promise<{ status: number; json: any }> {
    const response = await fetch(new URL(path, this.url), { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
    return { status: response.status, json: await response.json() };
  }

  async status(): Promise<any> {
    return JSON.parse((await this.get('/api/status')).body);
  }

  /** Polls /api/status until `test` holds. */
  async waitForStatus(what: string, test: (status: any) => boolean, timeoutMs = 60_000): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = JSON.parse((await this.get('/api/status')).body);
      if (test(status)) return status;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; status: ${JSON.stringify(status)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async stop(): Promise<number | null> {
    if (this.child.exitCode === null) this.child.kill('SIGTERM');
    return this.exited;
  }
}
