/**
 * A QMP server: QEMU's monitor protocol (docs/interop/qmp-spec) over unix or
 * TCP sockets (optionally TLS), several clients at once.
 *
 * Greeting, `qmp_capabilities` negotiation, `{"execute", "arguments", "id"}`
 * requests, `{"return"}` / `{"error": {"class", "desc"}}` replies with the id
 * echoed, and timestamped events to every negotiated client. Commands are
 * supplied by the caller with their argument schemas; this module speaks the
 * protocol, checks arguments, and keeps one client from hurting the others
 * (bounded input, bounded unsent output, no lookups through prototypes).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TlsOptions, type TLSSocket } from 'node:tls';
import { chmod, mkdtemp, rename, rmdir, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { isLoopbackHost, parseMigrationUri, UNIX_PATH_MAX_BYTES } from '../transport/index.js';
import { printable } from '../wire/printable.js';
import { checkArguments, QmpArgumentError, type ArgumentSchema } from './arguments.js';
import { JsonSplitter, type SplitItem } from './json-splitter.js';
import { qmpJson } from './qmp-json.js';
import { isJsonObject, parseQmpRequest } from './qmp-parse.js';
import createDebug from 'debug';

// DEBUG=livemig:qmp: each command as received, cut short (a query-migrate poll is a line, not a page).
const log = createDebug('livemig:qmp');
const truncated = (text: string, max = 200): string => (text.length > max ? `${text.slice(0, max)}... (${text.length} chars)` : text);

export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap';

/** Thrown by a command to reply with a QMP error. */
export class QmpCommandError extends Error {
  constructor(readonly errorClass: QmpErrorClass, desc: string) {
    super(desc);
  }
}

/** Thrown by listen() for an address QMP cannot listen on. */
export class QmpListenError extends Error {}

export type QmpArguments = Record<string, unknown>;
export type QmpCommand = (args: QmpArguments, client: QmpClientSession) => unknown | Promise<unknown>;

/** A command and the arguments it accepts; the server refuses others before `run` is called. */
export interface QmpCommandDefinition {
  readonly args: ArgumentSchema;
  readonly run: QmpCommand;
}

export interface QmpServerOptions {
  /** The `version` object of the greeting and of `query-version`. */
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  commands: Readonly<Record<string, QmpCommandDefinition>>;
}

export interface QmpListenOptions {
  /** Told about a risky setup (e.g. plain TCP reachable from other hosts); the CLI prints it. */
  onWarning?(text: string): void;
  /** Serve QMP over TLS (tcp: only): key, cert, ca, requestCert, rejectUnauthorized, pskCallback... */
  tls?: TlsOptions;
  /** With tls: after the handshake, a reason to refuse this client, or undefined to accept it. */
  authorize?(socket: TLSSocket): string | undefined;
}

export interface QmpClientSession {
  readonly id: number;
  negotiated: boolean;
}

interface Session extends QmpClientSession {
  socket: Socket;
  /** Requests split but not yet handled, and their size. */
  queue: SplitItem[];
  queuedBytes: number;
  pumping: boolean;
}

/**
 * A client's unsent output above which its requests wait (and events to it
 * are dropped): a client that pipelines requests and never reads must not
 * grow the server without bound.
 */
export const MAX_UNSENT_BYTES = 1 << 20;
/** A client's queued requests above which its socket is no longer read until the queue drains. */
export const MAX_QUEUED_REQUESTS = 1024;
export const MAX_QUEUED_BYTES = 1 << 20;
/** A TLS client has this long to finish its handshake. */
const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

/** Wall-clock time with microseconds, as QEMU stamps events. */
function timestamp(): { seconds: number; microseconds: number } {
  const ms = performance.timeOrigin + performance.now();
  return { seconds: Math.floor(ms / 1000), microseconds: Math.floor((ms % 1000) * 1000) };
}


function itemBytes(item: SplitItem): number {
  return 'json' in item ? item.json.length : item.error.length;
}

const QMP_CAPABILITIES_ARGS: ArgumentSchema = { enable: 'array?' };

export class QmpServer {
  private server: Server | undefined;
  private readonly sessions = new Set<Session>();
  /** By own names only: a client's `constructor` or `__proto__` is no command. */
  private readonly commands: ReadonlyMap<string, QmpCommandDefinition>;
  private nextSessionId = 1;
  private unixPath: string | undefined;
  address = '';

  constructor(private readonly options: QmpServerOptions) {
    this.commands = new Map(Object.entries(options.commands));
  }

  /** Listen on `unix:PATH` or `tcp:HOST:PORT`; resolves with the actual address. */
  async listen(uri: string, listenOptions: QmpListenOptions = {}): Promise<string> {
    const address = parseMigrationUri(uri);
    if (address.kind !== 'unix' && address.kind !== 'tcp') throw new QmpListenError(`QMP needs a unix: or tcp: address, got '${printable(uri)}'`);
    if (listenOptions.tls && address.kind !== 'tcp') throw new QmpListenError('QMP over TLS needs a tcp: address');
    const server = this.createServer(listenOptions);
    this.server = server;
    if (address.kind === 'unix') {
      this.unixPath = address.path;
      await listenUnixOwnerOnly(server, address.path);
      this.address = uri;
      return uri;
    }
    await listenOn(server, (done) => server.listen(address.port, address.host, done));
    const a = server.address() as { address: string; port: number };
    this.address = `tcp:${a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}`;
    if (!listenOptions.tls && !isLoopbackHost(address.host)) {
      listenOptions.onWarning?.(
        `the QMP monitor on ${this.address} accepts plain TCP from other hosts without authentication: ` +
          'anyone who can reach it controls the machine (an exec: migration URI runs shell commands); ' +
          'listen on 127.0.0.1 or a unix: socket, or use TLS with client certificates',
      );
    }
    return this.address;
  }

  private createServer(listenOptions: QmpListenOptions): Server {
    if (!listenOptions.tls) return createServer((socket) => this.accept(socket));
    const server = createTlsServer({ handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS, ...listenOptions.tls }, (socket) => {
      const refusal = listenOptions.authorize?.(socket);
      if (refusal !== undefined) {
        socket.destroy();
        return;
      }
      this.accept(socket);
    });
    // A client failing the handshake is dropped; the others are not concerned.
    server.on('tlsClientError', (_err, socket) => socket.destroy());
    return server;
  }

  private accept(socket: Socket): void {
    const session: Session = { id: this.nextSessionId++, negotiated: false, socket, queue: [], queuedBytes: 0, pumping: false };
    this.sessions.add(session);
    socket.on('error', () => {}); // a client that vanishes changes nothing
    socket.on('close', () => {
      this.sessions.delete(session);
      session.queue = [];
    });
    this.send(session, { QMP: { version: this.options.version, capabilities: [] } });
    const splitter = new JsonSplitter();
    socket.on('data', (chunk: Buffer) => {
      for (const item of splitter.push(chunk)) {
        session.queue.push(item);
        session.queuedBytes += itemBytes(item);
      }
      // Back-pressure: stop reading a client whose queue is full; the pump resumes it.
      if (session.queue.length > MAX_QUEUED_REQUESTS || session.queuedBytes > MAX_QUEUED_BYTES) socket.pause();
      void this.pump(session);
    });
  }

  /** Handle a client's requests in order, one at a time, without holding the event loop. */
  private async pump(session: Session): Promise<void> {
    if (session.pumping) return;
    session.pumping = true;
    const { socket } = session;
    try {
      while (session.queue.length > 0 && !socket.destroyed) {
        // A client that does not read its replies waits until it has: its output stays bounded.
        if (socket.writableLength > MAX_UNSENT_BYTES) {
          await drainedOrClosed(socket);
          continue;
        }
        const item = session.queue.shift()!;
        session.queuedBytes -= itemBytes(item);
        if (socket.isPaused() && session.queue.length <= MAX_QUEUED_REQUESTS / 2 && session.queuedBytes <= MAX_QUEUED_BYTES / 2) socket.resume();
        if ('error' in item) this.send(session, { error: { class: 'GenericError', desc: item.error } });
        else await this.handle(session, item.json);
        await yieldToEventLoop();
      }
    } finally {
      session.pumping = false;
    }
    if (socket.isPaused() && !socket.destroyed) socket.resume();
  }

  private send(session: Session, message: unknown): void {
    if (!session.socket.destroyed) session.socket.write(qmpJson(message) + '\r\n');
  }

  private async handle(session: Session, text: string): Promise<void> {
    let request: unknown;
    try {
      request = parseQmpRequest(text);
    } catch (err) {
      this.send(session, { error: { class: 'GenericError', desc: `JSON parse error, ${printable((err as Error).message)}` } });
      return;
    }
    if (!isJsonObject(request)) {
      this.send(session, { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
      return;
    }
    const r = request as Record<string, unknown>;
    const hasId = Object.hasOwn(r, 'id');
    const reply = (body: object): void => this.send(session, hasId ? { ...body, id: r.id } : body);
    const fail = (errorClass: QmpErrorClass, desc: string): void => reply({ error: { class: errorClass, desc } });
    for (const key of Object.keys(r)) {
      if (key !== 'execute' && key !== 'arguments' && key !== 'id') return fail('GenericError', `QMP input member '${printable(key)}' is unexpected`);
    }
    if (!Object.hasOwn(r, 'execute')) return fail('GenericError', "QMP input lacks member 'execute'");
    if (typeof r.execute !== 'string') return fail('GenericError', "QMP input member 'execute' must be a string");
    if (Object.hasOwn(r, 'arguments') && !isJsonObject(r.arguments)) {
      return fail('GenericError', "QMP input member 'arguments' must be an object");
    }
    const name = r.execute;
    const args = (Object.hasOwn(r, 'arguments') ? r.arguments : {}) as QmpArguments;
    if (log.enabled) log('session %d: %s', session.id, truncated(text));
    if (name === 'qmp_capabilities') {
      if (session.negotiated) return fail('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
      try {
        checkArguments(args, QMP_CAPABILITIES_ARGS);
      } catch (err) {
        return fail('GenericError', (err as Error).message);
      }
      if (args.enable !== undefined && (args.enable as unknown[]).length > 0) {
        return fail('GenericError', "Parameter 'enable' does not accept value: livemig has no optional QMP capabilities");
      }
      session.negotiated = true;
      return reply({ return: {} });
    }
    if (!session.negotiated) return fail('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
    const command = this.commands.get(name);
    if (!command) return fail('CommandNotFound', `The command ${printable(name)} has not been found`);
    try {
      const result = await command.run(checkArguments(args, command.args), session);
      reply({ return: result ?? {} });
    } catch (err) {
      if (err instanceof QmpCommandError) fail(err.errorClass, err.message);
      else if (err instanceof QmpArgumentError) fail('GenericError', err.message);
      else fail('GenericError', (err as Error).message);
    }
  }

  /**
   * Send an event to every negotiated client. A client whose unsent output is
   * over MAX_UNSENT_BYTES does not read: the event is dropped for it rather
   * than buffered without bound (QEMU also rate-limits and drops events).
   */
  emitEvent(event: string, data?: Record<string, unknown>): void {
    const message = data === undefined ? { timestamp: timestamp(), event } : { timestamp: timestamp(), event, data };
    for (const s of this.sessions) if (s.negotiated && s.socket.writableLength <= MAX_UNSENT_BYTES) this.send(s, message);
  }

  commandNames(): string[] {
    return ['qmp_capabilities', ...this.commands.keys()];
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.socket.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    if (this.unixPath) await unlink(this.unixPath).catch(() => {});
  }
}

function listenOn(server: Server, start: (done: () => void) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    start(() => {
      server.off('error', reject);
      resolve();
    });
  });
}

function drainedOrClosed(socket: Socket): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = (): void => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

/**
 * Listen on a unix socket that only its owner can connect to (mode 0600).
 * Without care the socket would exist with the umask's mode (often 0755/0775)
 * until a chmod, and anyone connecting in between keeps the connection. So it
 * is bound inside a fresh directory only we can enter (mkdtemp: 0700) next to
 * the target, made 0600 there, and renamed into place: nobody can reach it
 * before it is 0600. If that longer path would not fit in sun_path, the
 * socket is bound under a umask of 0177 instead (set and restored around
 * the synchronous bind; the umask is process-wide, hence only the fallback).
 */
async function listenUnixOwnerOnly(server: Server, path: string): Promise<void> {
  await unlink(path).catch(() => {}); // a stale socket of an earlier run
  const privateDir = await mkdtemp(join(dirname(path), '.qmp-'));
  const tempPath = join(privateDir, 's');
  try {
    if (Buffer.byteLength(tempPath) <= UNIX_PATH_MAX_BYTES) {
      await listenOn(server, (done) => server.listen(tempPath, done));
      await chmod(tempPath, 0o600);
      await rename(tempPath, path);
      return;
    }
  } finally {
    await rmdir(privateDir).catch(() => {});
  }
  await listenOn(server, (done) => {
    const previous = process.umask(0o177);
    try {
      server.listen(path, done);
    } finally {
      process.umask(previous);
    }
  });
  await chmod(path, 0o600);
}
