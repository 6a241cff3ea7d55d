/**
 * A QMP (QEMU Machine Protocol) client: the JSON monitor that QEMU, and livemig's own
 * `--qmp` server, speak on a socket.
 *
 * The protocol, as QEMU 7.2 speaks it: on connect the server sends a greeting
 * `{"QMP": {"version": ..., "capabilities": [...]}}` and accepts only `qmp_capabilities`
 * until that is sent (capabilities negotiation). Then each `{"execute", "arguments"?, "id"?}`
 * gets exactly one `{"return": ...}` or `{"error": {"class", "desc"}}`, with our `id` echoed,
 * and asynchronous `{"event", "data"?, "timestamp": {"seconds", "microseconds"}}` messages
 * may arrive in between. Every message is one JSON object on one line.
 *
 * Addresses use the migration URI syntax (`unix:PATH`, `tcp:HOST:PORT`), as QEMU's `-qmp` does.
 */
import { secureClient, type TlsClientSettings } from '../transport/tls.js';
import { EventEmitter } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { parseMigrationUri } from '../transport/uri.js';
import createDebug from 'debug';

const log = createDebug('livemig:qmp');

/** How long to wait for the greeting: QEMU serves one client per `-qmp` socket, so a second
 *  client connects (the kernel's listen backlog accepts it) but hears nothing until the first leaves. */
export const DEFAULT_GREETING_TIMEOUT_MS = 10_000;

export interface QmpGreeting {
  QMP: {
    version?: { qemu?: { major: number; minor: number; micro: number }; package?: string };
    capabilities?: string[];
  };
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** The server's wall clock when the event happened (QEMU: -1/-1 if it could not read it). */
  timestamp: { seconds: number; microseconds: number };
  /** `timestamp` as milliseconds since the epoch, for arithmetic. */
  timestampMs: number;
}

/** The server answered a command with `{"error": {"class", "desc"}}`. */
export class QmpError extends Error {
  constructor(
    readonly command: string,
    /** QEMU's error class: GenericError, CommandNotFound, DeviceNotFound, ... */
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`${command}: ${desc}`);
    this.name = 'QmpError';
  }
  /** The brief's name for errorClass (`class` is a keyword in some contexts, so both exist). */
  get class(): string {
    return this.errorClass;
  }
}

/** Could not connect, the greeting or a reply never came, or the connection closed. */
export class QmpConnectionError extends Error {
  constructor(
    readonly uri: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'QmpConnectionError';
  }
}

export interface QmpConnectOptions {
  /** Keep retrying a refused / missing socket this long (QEMU started with `wait=off` creates
   *  its socket a little after it starts). 0 = one attempt. */
  retryForMs?: number;
  greetingTimeoutMs?: number;
  /** Send `qmp_capabilities` right after the greeting (default true). */
  negotiate?: boolean;
  /** tcp: a TLS session first (a QEMU chardev's tls-creds, or livemig's `--qmp tcp:...,tls-creds=ID`). */
  tls?: TlsClientSettings;
}

type Pending = { command: string; resolve: (value: unknown) => void; reject: (err: Error) => void };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Events: `client.on('event', (e: QmpEvent) => ...)`, or `for await (const e of client.events())`.
 * `'close'` is emitted once, with the error that closed it (undefined after `close()`).
 */
export class QmpClient extends EventEmitter {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private buffered = '';
  private closedBy: Error | undefined;
  private isClosed = false;
  private negotiated = false;

  private constructor(
    private readonly socket: Socket,
    readonly uri: string,
    readonly greeting: QmpGreeting,
    leftover: string,
  ) {
    super();
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.onClose(new QmpConnectionError(uri, `QMP connection to ${uri} failed: ${err.message}`, { cause: err })));
    socket.on('close', () => this.onClose(new QmpConnectionError(uri, `QMP connection to ${uri} closed by the server`)));
    if (leftover) this.onData(leftover);
  }

  /** Connect to `unix:PATH` or `tcp:HOST:PORT`, read the greeting and (by default) negotiate. */
  static async connect(uri: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const target = qmpSocketTarget(uri);
    const deadline = Date.now() + (options.retryForMs ?? 0);
    let socket: Socket;
    for (;;) {
      try {
        socket = await openSocket(target);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const retriable = code === 'ENOENT' || code === 'ECONNREFUSED';
        if (!retriable || Date.now() >= deadline) {
          throw new QmpConnectionError(uri, `cannot connect to QMP at ${uri}: ${(err as Error).message}`, { cause: err });
        }
        await sleep(50);
      }
    }
    if (options.tls) {
      try {
        socket = await secureClient(socket, options.tls, uri);
      } catch (err) {
        throw new QmpConnectionError(uri, `cannot connect to QMP at ${uri}: ${(err as Error).message}`, { cause: err });
      }
    }
    socket.setEncoding('utf8');
    const { greeting, leftover } = await readGreeting(socket, uri, options.greetingTimeoutMs ?? DEFAULT_GREETING_TIMEOUT_MS);
    const client = new QmpClient(socket, uri, greeting, leftover);
    if (options.negotiate ?? true) await client.negotiate();
    return client;
  }

  /** Leave capabilities-negotiation mode (`qmp_capabilities`); no QMP capabilities (e.g. oob) are asked for. */
  async negotiate(): Promise<void> {
    if (this.negotiated) return;
    await this.execute('qmp_capabilities');
    this.negotiated = true;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Run a command; resolves with its `return` value, rejects with QmpError or QmpConnectionError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.isClosed) {
      return Promise.reject(this.closedBy ?? new QmpConnectionError(this.uri, `QMP connection to ${this.uri} is closed`));
    }
    const id = this.nextId++;
    const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject });
      const line = JSON.stringify(message);
      if (log.enabled) log('%s <- %s', this.uri, line.length > 200 ? `${line.slice(0, 200)}... (${line.length} chars)` : line);
      this.socket.write(line + '\n');
    });
  }

  /**
   * Events from now on, until the connection closes or the loop is left. Each call buffers
   * independently, so a slow consumer misses nothing.
   */
  events(): AsyncIterableIterator<QmpEvent> {
    const queue: QmpEvent[] = [];
    let wake: (() => void) | undefined;
    let done = this.isClosed;
    const onEvent = (e: QmpEvent): void => {
      queue.push(e);
      wake?.();
    };
    const onClose = (): void => {
      done = true;
      wake?.();
    };
    const stop = (): void => {
      done = true;
      this.off('event', onEvent);
      this.off('close', onClose);
      wake?.();
    };
    this.on('event', onEvent);
    this.once('close', onClose);
    const iterator: AsyncIterableIterator<QmpEvent> = {
      next: async () => {
        for (;;) {
          const e = queue.shift();
          if (e) return { value: e, done: false };
          if (done) {
            stop();
            return { value: undefined, done: true };
          }
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
      },
      return: async () => {
        stop();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  /** The first event named `name` (satisfying `test`) from now on. */
  waitForEvent(name: string, test: (e: QmpEvent) => boolean = () => true, timeoutMs = 60_000): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`no QMP event ${name} within ${timeoutMs} ms`)), timeoutMs);
      const onEvent = (e: QmpEvent): void => {
        if (e.event === name && test(e)) finish(undefined, e);
      };
      const onClose = (err?: Error): void =>
        finish(err ?? new QmpConnectionError(this.uri, `QMP connection to ${this.uri} closed while waiting for ${name}`));
      const finish = (err?: Error, e?: QmpEvent): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
        if (err) reject(err);
        else resolve(e!);
      };
      if (this.isClosed) return onClose(this.closedBy);
      this.on('event', onEvent);
      this.once('close', onClose);
    });
  }

  /** Close the connection; pending commands are rejected. Resolves once the socket is closed. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    const closedEvent = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.onClose(undefined);
    this.socket.end();
    // A server that does not close its end would leave us waiting for ever.
    const timer = setTimeout(() => this.socket.destroy(), 1000);
    await closedEvent;
    clearTimeout(timer);
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl).trim(); // QEMU ends lines with \r\n
      this.buffered = this.buffered.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.fail(new QmpConnectionError(this.uri, `QMP server at ${this.uri} sent a line that is not JSON: ${line.slice(0, 200)}`));
      return;
    }
    if (typeof msg.event === 'string') {
      this.emit('event', toEvent(msg));
      return;
    }
    // A reply without our id (QEMU could not parse the request) belongs to the oldest request.
    const id = typeof msg.id === 'number' ? msg.id : this.pending.keys().next().value;
    const request = id === undefined ? undefined : this.pending.get(id);
    if (!request) return; // not ours: ignore rather than guess
    this.pending.delete(id!);
    if ('error' in msg) {
      const error = (msg.error ?? {}) as { class?: string; desc?: string };
      request.reject(new QmpError(request.command, error.class ?? 'GenericError', error.desc ?? JSON.stringify(msg.error)));
    } else {
      request.resolve(msg.return);
    }
  }

  private fail(err: Error): void {
    this.onClose(err);
    this.socket.destroy();
  }

  private onClose(err: Error | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closedBy = err ?? new QmpConnectionError(this.uri, `QMP connection to ${this.uri} is closed`);
    for (const [, request] of this.pending) {
      request.reject(
        new QmpConnectionError(this.uri, `QMP connection to ${this.uri} closed before the reply to '${request.command}'${err ? `: ${err.message}` : ''}`, {
          cause: err,
        }),
      );
    }
    this.pending.clear();
    this.emit('close', err);
  }
}

function toEvent(msg: Record<string, unknown>): QmpEvent {
  const ts = (msg.timestamp ?? {}) as { seconds?: number; microseconds?: number };
  const seconds = typeof ts.seconds === 'number' ? ts.seconds : -1;
  const microseconds = typeof ts.microseconds === 'number' ? ts.microseconds : -1;
  return {
    event: msg.event as string,
    data: (msg.data ?? {}) as Record<string, unknown>,
    timestamp: { seconds, microseconds },
    timestampMs: seconds * 1000 + microseconds / 1000,
  };
}

type SocketTarget = { path: string } | { host: string; port: number };

/** `unix:PATH` or `tcp:HOST:PORT` (the other migration schemes make no sense for a monitor). */
export function qmpSocketTarget(uri: string): SocketTarget {
  const address = parseMigrationUri(uri);
  if (address.kind === 'unix') return { path: address.path };
  if (address.kind === 'tcp') {
    if (address.host === '' || address.port === 0) throw new Error(`QMP address ${uri}: a host and a port are needed to connect`);
    return { host: address.host, port: address.port };
  }
  throw new Error(`QMP address ${uri}: only unix:PATH and tcp:HOST:PORT are supported`);
}

function openSocket(target: SocketTarget): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(target);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

async function readGreeting(socket: Socket, uri: string, timeoutMs: number): Promise<{ greeting: QmpGreeting; leftover: string }> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(
      () =>
        fail(
          `no QMP greeting from ${uri} within ${timeoutMs} ms (QEMU serves one client per -qmp socket: is another client connected?)`,
        ),
      timeoutMs,
    );
    const fail = (why: string, cause?: unknown): void => {
      cleanup();
      socket.destroy();
      reject(new QmpConnectionError(uri, why, { cause }));
    };
    const onData = (chunk: string): void => {
      text += chunk;
      const nl = text.indexOf('\n');
      if (nl < 0) return;
      cleanup();
      const line = text.slice(0, nl).trim();
      let greeting: QmpGreeting;
      try {
        greeting = JSON.parse(line) as QmpGreeting;
      } catch {
        return fail(`${uri} is not a QMP server: it sent ${JSON.stringify(line.slice(0, 100))}`);
      }
      if (typeof greeting !== 'object' || greeting === null || typeof greeting.QMP !== 'object') {
        return fail(`${uri} is not a QMP server: its first message has no "QMP" greeting: ${line.slice(0, 200)}`);
      }
      resolve({ greeting, leftover: text.slice(nl + 1) });
    };
    const onError = (err: Error): void => fail(`QMP connection to ${uri} failed before the greeting: ${err.message}`, err);
    const onClose = (): void => fail(`QMP server at ${uri} closed the connection before its greeting`);
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
  });
}

// ---- The parts of QEMU's migration schema (qapi/migration.json, 7.2) that clients read ----

export interface MigrationRamStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate?: number;
  normal?: number;
  'normal-bytes'?: number;
  'dirty-pages-rate'?: number;
  /** Mbit/s over the last window; the average once completed. */
  mbps?: number;
  'dirty-sync-count'?: number;
  'page-size'?: number;
  'pages-per-second'?: number;
  'precopy-bytes'?: number;
  'downtime-bytes'?: number;
  'postcopy-bytes'?: number;
  'postcopy-requests'?: number;
  [field: string]: unknown;
}

/** `query-migrate`'s return: `{}` before any migration; fields appear by state (facts 7.3). */
export interface MigrationInfo {
  status?: string;
  'setup-time'?: number;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  ram?: MigrationRamStats;
  /** Block migration (QEMU 7.2 `disk`). */
  disk?: { transferred: number; remaining: number; total: number };
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  /** livemig's reason code (MigrationErrorCode), e.g. `outcome-unknown`. */
  'x-livemig-error-code'?: string;
  /** livemig: why a cancelled migration ended (QEMU's reply has no error-desc then). */
  'x-livemig-error-desc'?: string;
  /** livemig source: the last switchover's downtime by phase. */
  'x-livemig-downtime-phases'?: { 'pause-ms': number; 'complete-ms': number; 'flush-ms': number; 'confirm-ms': number };
  'x-livemig-downtime-limit-ms'?: number;
  'blocked-reasons'?: string[];
  [field: string]: unknown;
}

/** States after which a migration no longer runs (until the next `migrate`). */
export const MIGRATION_FINAL_STATES: readonly string[] = ['completed', 'failed', 'cancelled'];
/** Where `livemig migrate` stops watching without an end: postcopy waits for the operator (recover, or give up). */
export const MIGRATION_WAIT_STATES: readonly string[] = ['postcopy-paused'];
