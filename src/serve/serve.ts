/**
 * `livemig serve`: an HTTP server for the page that runs a v86 VM in a
 * browser tab and moves it live into a `livemig run` process on this host
 * and back (web/index.html, web/page.js).
 *
 * - Static files from a fixed table (the page, the browser core bundle,
 *   v86's libv86.mjs and v86.wasm, the multiboot test kernel): nothing else
 *   on disk is reachable, whatever the path.
 * - POST /api/to-server starts a `livemig run --machine v86 --incoming ws://...`
 *   child (server-vm.ts) and hands out a one-time WebSocket path; the page's
 *   migrateOut connects there and serve relays it to the child (relay.ts).
 * - POST /api/to-tab hands out a WebSocket path for the page's migrateIn;
 *   once the page is connected, serve tells the child over QMP to `migrate`
 *   to an internal loopback endpoint and relays that to the page (a browser
 *   cannot listen). The child keeps the guest, paused, until the page
 *   confirms its copy runs (POST /api/to-tab/confirm); if the page could not
 *   start it, the child runs it again (QMP cont). A failed move leaves the
 *   guest where it ran.
 * - GET /api/status: where the server's VM is and what it reported.
 *
 * A POST must be JSON and, from a browser, from the page's own origin; a
 * WebSocket upgrade must come from the page's origin too (a page elsewhere
 * cannot drive this server from a user's browser).
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Duplex } from 'node:stream';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket, WebSocketServer } from 'ws';
import type { MigrationInfo } from '../monitor/qmp-client.js';
import { WS_MAX_PAYLOAD_BYTES } from '../transport/websocket-node.js';
import { relayWebSockets } from './relay.js';
import { ServerVm, type ServerVmReport } from './server-vm.js';

const here = dirname(fileURLToPath(import.meta.url));
/** The repository (or installed package) root, from src/serve or dist/src/serve. */
const packageRoot = existsSync(join(here, '..', '..', 'package.json')) ? resolve(here, '..', '..') : resolve(here, '..', '..', '..');
/** The CLI the children run: the built one next to this module. */
export const DEFAULT_CLI_PATH = resolve(here, '..', 'cli', 'main.js');

/** v86 sizes RAM in 128 KiB units; the page offers up to 1 GiB. */
const RAM_GRANULE_BYTES = 128 * 1024;
export const SERVE_MAX_RAM_BYTES = 1 << 30;
const MAX_BODY_BYTES = 16 * 1024;
/** How long the page has to connect to a path handed out. */
const TOKEN_TTL_MS = 60_000;
const QUERY_INTERVAL_MS = 200;
/** After the child's side completed, how long a confirm waits for it; the guest stays paused there meanwhile. */
const SETTLE_WAIT_MS = 120_000;

type StaticFile = { path: () => string; type: string };

function v86BuildDir(): string {
  return dirname(createRequire(import.meta.url).resolve('v86'));
}

/** The whole list of files served: a path not here is a 404. */
const STATIC_FILES: Record<string, StaticFile> = {
  '/': { path: () => join(packageRoot, 'web', 'index.html'), type: 'text/html; charset=utf-8' },
  '/page.js': { path: () => join(packageRoot, 'web', 'page.js'), type: 'text/javascript; charset=utf-8' },
  '/page.css': { path: () => join(packageRoot, 'web', 'page.css'), type: 'text/css; charset=utf-8' },
  '/livemig-core.js': { path: () => join(packageRoot, 'dist', 'browser', 'livemig-core.js'), type: 'text/javascript; charset=utf-8' },
  '/v86/libv86.mjs': { path: () => join(v86BuildDir(), 'libv86.mjs'), type: 'text/javascript; charset=utf-8' },
  '/v86/v86.wasm': { path: () => join(v86BuildDir(), 'v86.wasm'), type: 'application/wasm' },
  '/guests/livemig-test-kernel.bin': { path: () => join(packageRoot, 'guests', 'multiboot', 'livemig-test-kernel.bin'), type: 'application/octet-stream' },
};

/**
 * The page's scripts are files of this server; v86 compiles WebAssembly
 * (its JIT too), and the page's WebSockets go back to this server.
 */
const CONTENT_SECURITY_POLICY = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; connect-src 'self'; style-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

export interface ServeOptions {
  host?: string;
  port?: number;
  /** The livemig CLI the server's VM runs as (default: this build's dist/src/cli/main.js). */
  cliPath?: string;
  /** Each change of the server's VM, for the command's output. */
  onEvent?(event: string, data: Record<string, unknown>): void;
}

export interface ServeHandle {
  /** http://HOST:PORT/ */
  url: string;
  port: number;
  host: string;
  /** Stops listening and ends the server's VM, if any. */
  close(): Promise<void>;
}

/** One move of the VM, as /api/status shows it. */
export interface MoveState {
  direction: 'to-server' | 'to-tab';
  /** connecting: path handed out; moving: streams relayed; then completed or failed. */
  phase: 'connecting' | 'moving' | 'completed' | 'failed';
  /** to-tab: the child's query-migrate, last read (percent, passes, remaining in x-livemig-progress). */
  info?: MigrationInfo;
  error?: string;
  relayedBytes?: number;
}

export interface ServeStatus {
  /** The server's VM: null when none runs here (the guest is in a tab, or was never moved). */
  vm: (ServerVmReport & { phase: VmPhase }) | null;
  move: MoveState | null;
  /** The last server VM's end, kept for the page after it is gone. */
  lastVmEnd?: string;
}

/**
 * receiving: waiting for / loading the page's migration; running: the guest runs here;
 * sending: migrating to a tab; migrated: sent and paused here until the tab confirms.
 */
type VmPhase = 'receiving' | 'running' | 'sending' | 'migrated';

class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
  ) {
    super(message);
  }
}

export async function startServe(options: ServeOptions = {}): Promise<ServeHandle> {
  const host = options.host ?? '127.0.0.1';
  const cliPath = options.cliPath ?? DEFAULT_CLI_PATH;
  const onEvent = options.onEvent ?? (() => {});
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: WS_MAX_PAYLOAD_BYTES });

  let vm: ServerVm | undefined;
  let phase: VmPhase = 'receiving';
  let move: MoveState | null = null;
  let lastVmEnd: string | undefined;
  /** Serializes the API's state changes (two clicks, two tabs). */
  let busy = false;
  /** One-time WebSocket paths handed to the page. */
  const tokens = new Map<string, { direction: 'to-server' | 'to-tab'; vm: ServerVm; expiresMs: number }>();
  /** to-tab: the page's socket, waiting for the child to connect to the internal endpoint. */
  const waitingPages = new Map<string, WebSocket>();
  /** to-tab: resolves with the child's final migration status. */
  let settled: Promise<string> | undefined;
  let closing = false;

  const status = (): ServeStatus => ({
    vm: vm ? { ...vm.report, phase } : null,
    move,
    ...(lastVmEnd ? { lastVmEnd } : {}),
  });

  const forget = (gone: ServerVm, why: string): void => {
    if (vm !== gone) return;
    vm = undefined;
    lastVmEnd = why;
    for (const [token, t] of tokens) if (t.vm === gone) tokens.delete(token);
    onEvent('vm-ended', { pid: gone.pid, reason: why });
  };

  const watchVm = (started: ServerVm): void => {
    void started.exited.then(() => {
      const how = started.report.exitCode !== null && started.report.exitCode !== undefined ? `exit code ${started.report.exitCode}` : `signal ${started.report.exitSignal}`;
      if (vm === started && phase !== 'migrated' && !closing) {
        // Not asked to stop: say so, with its own words.
        const why = started.report.incoming === 'failed' ? `the migration into it failed: ${started.report.incomingError}` : `it exited (${how})${started.stderr ? `: ${started.stderr.split('\n').slice(-3).join(' ')}` : ''}`;
        if (move && move.phase !== 'completed' && move.phase !== 'failed') Object.assign(move, { phase: 'failed', error: why });
        forget(started, `the server's livemig run (pid ${started.pid}) ended: ${why}`);
      } else forget(started, `the server's livemig run (pid ${started.pid}) ended (${how})`);
    });
    // The incoming migration's outcome, from the child's events.
    void started
      .waitFor('resumed', 24 * 3600_000)
      .then(() => {
        if (vm !== started) return;
        phase = 'running';
        if (move?.direction === 'to-server') move.phase = 'completed';
        onEvent('vm-running', { pid: started.pid, memoryCheck: started.report.memoryCheck });
      })
      .catch(() => {});
  };

  // ---- The API ----

  async function toServer(body: Record<string, unknown>): Promise<[number, unknown]> {
    checkFields(body, ['ramSizeBytes']);
    const ramSizeBytes = body.ramSizeBytes;
    if (typeof ramSizeBytes !== 'number' || !Number.isSafeInteger(ramSizeBytes) || ramSizeBytes <= 0 || ramSizeBytes % RAM_GRANULE_BYTES !== 0 || ramSizeBytes > SERVE_MAX_RAM_BYTES) {
      throw new HttpError(400, `ramSizeBytes: a positive multiple of 131072 (128 KiB) up to ${SERVE_MAX_RAM_BYTES} (1 GiB), not ${JSON.stringify(ramSizeBytes)}`);
    }
    if (vm) throw new HttpError(409, `a VM already runs on the server (pid ${vm.pid}, ${phase}): bring it back first`);
    const started = await ServerVm.start({ cliPath, ramSizeBytes }).catch((err: Error) => {
      throw new HttpError(500, `could not start livemig run on the server: ${err.message}`);
    });
    vm = started;
    phase = 'receiving';
    lastVmEnd = undefined;
    move = { direction: 'to-server', phase: 'connecting' };
    watchVm(started);
    const token = randomUUID();
    tokens.set(token, { direction: 'to-server', vm: started, expiresMs: Date.now() + TOKEN_TTL_MS });
    onEvent('vm-started', { pid: started.pid, ramSizeBytes, incoming: started.incomingAddress });
    return [201, { pid: started.pid, wsPath: `/ws/to-server/${token}` }];
  }

  async function toTab(body: Record<string, unknown>): Promise<[number, unknown]> {
    checkFields(body, []);
    if (!vm) throw new HttpError(409, 'no VM runs on the server: there is nothing to bring back');
    if (phase !== 'running') throw new HttpError(409, `the server's VM (pid ${vm.pid}) is ${phase}, not running: it cannot move now`);
    const token = randomUUID();
    tokens.set(token, { direction: 'to-tab', vm, expiresMs: Date.now() + TOKEN_TTL_MS });
    return [201, { pid: vm.pid, token, wsPath: `/ws/to-tab/${token}` }];
  }

  async function confirmToTab(body: Record<string, unknown>): Promise<[number, unknown]> {
    checkFields(body, ['running', 'error']);
    if (typeof body.running !== 'boolean') throw new HttpError(400, `running: true (the tab's guest runs) or false, not ${JSON.stringify(body.running)}`);
    if (body.error !== undefined && typeof body.error !== 'string') throw new HttpError(400, 'error: a string');
    const current = vm;
    if (!current || move?.direction !== 'to-tab' || !settled) throw new HttpError(409, 'no move to a tab is under way');
    const final = await withTimeout(settled, SETTLE_WAIT_MS, 'waiting');
    if (body.running) {
      if (final !== 'completed') throw new HttpError(409, `the server's side of the move is ${final}, not completed: the guest is still on the server (pid ${current.pid})`);
      // The tab runs the guest: the server's paused copy is stale now.
      forget(current, `the VM moved to a tab; its livemig run (pid ${current.pid}) quit`);
      await current.quit();
      onEvent('vm-moved-to-tab', { pid: current.pid });
      return [200, { where: 'tab' }];
    }
    // The tab could not run it: the guest goes on here.
    if (final === 'completed') {
      await current.cont();
      phase = 'running';
      move.phase = 'failed';
      move.error = `the tab could not start the guest${body.error ? ` (${body.error})` : ''}; it runs again on the server`;
    }
    onEvent('vm-kept', { pid: current.pid, reason: body.error ?? '' });
    return [200, { where: 'server', pid: current.pid }];
  }

  // ---- WebSocket upgrades ----

  /** A path handed out, taken once; expired ones are dropped. */
  const takeToken = (token: string, direction: 'to-server' | 'to-tab'): ServerVm | undefined => {
    const now = Date.now();
    for (const [k, t] of tokens) if (t.expiresMs < now) tokens.delete(k);
    const t = tokens.get(token);
    if (!t || t.direction !== direction || t.vm !== vm) return undefined;
    tokens.delete(token);
    return t.vm;
  };

  function upgradeToServer(request: IncomingMessage, socket: Duplex, head: Buffer, target: ServerVm): void {
    if (move) move.phase = 'moving';
    // The child first: the page's socket opens only when the whole path is there.
    const child = new WebSocket(target.incomingAddress, { perMessageDeflate: false, maxPayload: WS_MAX_PAYLOAD_BYTES, generateMask: (mask: Buffer) => void mask.fill(0) });
    let opened = false;
    child.once('error', (err) => {
      // After the open, the relay reports a broken connection (as a Close to the page).
      if (opened) return;
      refuse(socket, 502, `the server's livemig run does not take the migration: ${err.message}`);
      if (move) Object.assign(move, { phase: 'failed', error: `could not reach the server's livemig run: ${err.message}` });
      void target.kill();
    });
    child.once('open', () => {
      opened = true;
      wss.handleUpgrade(request, socket, head, (page) => {
        void relayWebSockets(page, child).then((r) => {
          if (move?.direction === 'to-server') move.relayedBytes = r.aToBBytes + r.bToABytes;
        });
      });
    });
  }

  function upgradeToTab(request: IncomingMessage, socket: Duplex, head: Buffer, target: ServerVm, token: string): void {
    wss.handleUpgrade(request, socket, head, (page) => {
      waitingPages.set(token, page);
      page.once('close', () => waitingPages.delete(token));
      move = { direction: 'to-tab', phase: 'moving' };
      phase = 'sending';
      const thisMove = move;
      settled = (async () => {
        try {
          await target.migrate(`ws://127.0.0.1:${internalPort}/${token}`);
        } catch (err) {
          page.close(4001, `the server could not start the migration: ${(err as Error).message}`.slice(0, 120));
          phase = 'running';
          Object.assign(thisMove, { phase: 'failed', error: `QMP migrate failed: ${(err as Error).message}` });
          return 'failed';
        }
        for (;;) {
          await sleep(QUERY_INTERVAL_MS);
          let info: MigrationInfo;
          try {
            info = await target.queryMigrate();
          } catch (err) {
            Object.assign(thisMove, { phase: 'failed', error: `the server's livemig run stopped answering: ${(err as Error).message}` });
            return 'failed';
          }
          thisMove.info = info;
          const s = info.status ?? '';
          if (s === 'completed') {
            // Paused here until the tab confirms (never two running copies, never none).
            phase = 'migrated';
            thisMove.phase = 'completed';
            return s;
          }
          if (s === 'failed' || s === 'cancelled') {
            // The child runs its guest again itself, as QEMU's source does.
            phase = 'running';
            Object.assign(thisMove, { phase: 'failed', error: `the migration to the tab ${s}: ${info['error-desc'] ?? info['x-livemig-error-desc'] ?? 'no reason given'}; the VM keeps running on the server (pid ${target.pid})` });
            return s;
          }
        }
      })();
    });
  }

  /** The internal endpoint the child migrates to (loopback only): paired with the waiting page by token. */
  const internal = createServer((_req, res) => res.writeHead(404).end());
  internal.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => {});
    const token = (request.url ?? '').slice(1);
    const page = waitingPages.get(token);
    if (!page) {
      refuse(socket, 404, 'no page waits for this migration');
      return;
    }
    waitingPages.delete(token);
    wss.handleUpgrade(request, socket, head, (child) => {
      if (page.readyState !== page.OPEN) {
        child.close(4001, 'the page went away before the migration started');
        return;
      }
      void relayWebSockets(child, page).then((r) => {
        if (move?.direction === 'to-tab') move.relayedBytes = r.aToBBytes + r.bToABytes;
      });
    });
  });
  await new Promise<void>((ok, fail) => internal.once('error', fail).listen(0, '127.0.0.1', () => ok()));
  const internalPort = (internal.address() as { port: number }).port;

  // ---- HTTP ----

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      const e = err instanceof HttpError ? err : new HttpError(500, `livemig serve: ${(err as Error).message}`);
      sendJson(res, e.statusCode, { error: e.message });
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname;
    if (path.startsWith('/api/')) {
      if (path === '/api/status') {
        if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, `${path}: GET only`);
        sendJson(res, 200, status());
        return;
      }
      const routes: Record<string, (body: Record<string, unknown>) => Promise<[number, unknown]>> = {
        '/api/to-server': toServer,
        '/api/to-tab': toTab,
        '/api/to-tab/confirm': confirmToTab,
      };
      const route = routes[path];
      if (!route) throw new HttpError(404, `no API ${path} (there are /api/status, ${Object.keys(routes).join(', ')})`);
      if (req.method !== 'POST') throw new HttpError(405, `${path}: POST only`);
      checkOrigin(req);
      const body = await readJsonBody(req);
      if (busy) throw new HttpError(409, 'another request is changing the VM; try again');
      busy = true;
      try {
        const [code, result] = await route(body);
        sendJson(res, code, result);
      } finally {
        busy = false;
      }
      return;
    }
    if (path === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    const file = Object.hasOwn(STATIC_FILES, path) ? STATIC_FILES[path]! : undefined;
    if (!file) throw new HttpError(404, `no file ${printablePath(path)} here`);
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, `${path}: GET only`);
    let bytes: Buffer;
    try {
      bytes = readFileSync(file.path());
    } catch (err) {
      const missing = path === '/livemig-core.js' ? ' (run npm run build)' : '';
      throw new HttpError(500, `${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}${missing}`);
    }
    res.writeHead(200, {
      'content-type': file.type,
      'content-length': bytes.length,
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      ...(file.type.startsWith('text/html') ? { 'content-security-policy': CONTENT_SECURITY_POLICY, 'referrer-policy': 'no-referrer' } : {}),
    });
    res.end(req.method === 'HEAD' ? undefined : bytes);
  }

  server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => {});
    const m = /^\/ws\/(to-server|to-tab)\/([0-9a-f-]{36})$/.exec((request.url ?? '').split('?')[0]!);
    try {
      checkOrigin(request);
    } catch (err) {
      refuse(socket, 403, (err as Error).message);
      return;
    }
    const direction = m?.[1] as 'to-server' | 'to-tab' | undefined;
    const target = m ? takeToken(m[2]!, direction!) : undefined;
    if (!m || !target) {
      refuse(socket, 404, 'no migration waits on this path (ask /api/to-server or /api/to-tab for one)');
      return;
    }
    if (direction === 'to-server') upgradeToServer(request, socket, head, target);
    else upgradeToTab(request, socket, head, target, m[2]!);
  });

  await new Promise<void>((ok, fail) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      internal.close();
      fail(new Error(`livemig serve: cannot listen on ${host}:${options.port ?? 8086}: ${err.code === 'EADDRINUSE' ? 'the port is in use' : err.message}`));
    });
    server.listen(options.port ?? 8086, host, () => ok());
  });
  const port = (server.address() as { port: number }).port;
  const shownHost = host.includes(':') ? `[${host}]` : host;

  return {
    url: `http://${shownHost}:${port}/`,
    port,
    host,
    async close() {
      closing = true;
      server.close();
      internal.close();
      server.closeAllConnections();
      internal.closeAllConnections();
      for (const client of wss.clients) client.terminate();
      await vm?.kill();
    },
  };
}

/** Names each unknown field (a typo is an error, not ignored). */
function checkFields(body: Record<string, unknown>, known: string[]): void {
  const unknown = Object.keys(body).filter((k) => !known.includes(k));
  if (unknown.length > 0) throw new HttpError(400, `unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => JSON.stringify(k)).join(', ')}${known.length ? ` (known: ${known.join(', ')})` : ' (this request takes none)'}`);
}

/** A browser sends Origin on POSTs and WebSocket handshakes: it must be this server's. Tools (curl) send none. */
function checkOrigin(req: IncomingMessage): void {
  const origin = req.headers.origin;
  if (origin === undefined) return;
  if (origin !== `http://${req.headers.host ?? ''}`) throw new HttpError(403, `requests from ${printablePath(origin)} are refused: only the page of this server (http://${printablePath(req.headers.host ?? '')}) may drive it`);
}

async function readJsonBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim();
  if (type !== 'application/json') throw new HttpError(415, `the request body must be JSON (content-type application/json), not ${type === '' ? 'none' : printablePath(type)}`);
  const chunks: Buffer[] = [];
  let sizeBytes = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    sizeBytes += chunk.length;
    if (sizeBytes > MAX_BODY_BYTES) throw new HttpError(413, `the request body is larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  let value: unknown;
  try {
    value = text.trim() === '' ? {} : JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `the request body is not JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new HttpError(400, 'the request body must be a JSON object');
  return value as Record<string, unknown>;
}

function sendJson(res: ServerResponse, statusCode: number, value: unknown): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const text = JSON.stringify(value);
  res.writeHead(statusCode, { 'content-type': 'application/json', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** Answers an upgrade that is not taken, with a short reason. */
function refuse(socket: Duplex, statusCode: number, reason: string): void {
  const text = { 403: 'Forbidden', 404: 'Not Found', 502: 'Bad Gateway' }[statusCode] ?? 'Error';
  if (socket.writable) socket.end(`HTTP/1.1 ${statusCode} ${text}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(reason) + 1}\r\n\r\n${reason}\n`);
}

/** A path or header as it may be shown (no control characters, bounded). */
function printablePath(text: string): string {
  const clean = text.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > 100 ? `${clean.slice(0, 100)}...` : clean;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function withTimeout<T>(promise: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  return Promise.race([promise, new Promise<T>((r) => (timer = setTimeout(() => r(fallback), ms)))]).finally(() => clearTimeout(timer));
}
