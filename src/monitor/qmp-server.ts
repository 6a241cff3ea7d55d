/**
 * A QMP server: QEMU's monitor protocol (docs/interop/qmp-spec) over unix or
 * TCP sockets, several clients at once.
 *
 * Greeting, `qmp_capabilities` negotiation, `{"execute", "arguments", "id"}`
 * requests, `{"return"}` / `{"error": {"class", "desc"}}` replies with the id
 * echoed, and timestamped events to every negotiated client. Commands are
 * supplied by the caller; this module only speaks the protocol.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { unlink } from 'node:fs/promises';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { parseMigrationUri } from '../transport/index.js';
import { JsonSplitter } from './json-splitter.js';

export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap';

/** Thrown by a command to reply with a QMP error. */
export class QmpCommandError extends Error {
  constructor(readonly errorClass: QmpErrorClass, desc: string) {
    super(desc);
  }
}

export type QmpArguments = Record<string, unknown>;
export type QmpCommand = (args: QmpArguments, client: QmpClientSession) => unknown | Promise<unknown>;

export interface QmpServerOptions {
  /** The `version` object of the greeting and of `query-version`. */
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  commands: Record<string, QmpCommand>;
}

export interface QmpClientSession {
  readonly id: number;
  negotiated: boolean;
}

interface Session extends QmpClientSession {
  socket: Socket;
}

/** Wall-clock time with microseconds, as QEMU stamps events. */
function timestamp(): { seconds: number; microseconds: number } {
  const ms = performance.timeOrigin + performance.now();
  return { seconds: Math.floor(ms / 1000), microseconds: Math.floor((ms % 1000) * 1000) };
}

export class QmpServer {
  private server: Server | undefined;
  private readonly sessions = new Set<Session>();
  private nextSessionId = 1;
  private unixPath: string | undefined;
  address = '';

  constructor(private readonly options: QmpServerOptions) {}

  /** Listen on `unix:PATH` or `tcp:HOST:PORT`; resolves with the actual address. */
  async listen(uri: string): Promise<string> {
    const address = parseMigrationUri(uri);
    const server = createServer((socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (address.kind === 'unix') {
        this.unixPath = address.path;
        unlink(address.path).catch(() => {}).finally(() => server.listen(address.path, resolve));
      } else if (address.kind === 'tcp') {
        server.listen(address.port, address.host, resolve);
      } else {
        reject(new Error(`QMP needs a unix: or tcp: address, got '${uri}'`));
      }
    });
    if (address.kind === 'tcp') {
      const a = server.address() as { address: string; port: number };
      this.address = `tcp:${a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}`;
    } else this.address = uri;
    return this.address;
  }

  private accept(socket: Socket): void {
    const session: Session = { id: this.nextSessionId++, negotiated: false, socket };
    this.sessions.add(session);
    socket.setEncoding('utf8');
    socket.on('error', () => {}); // a client that vanishes changes nothing
    socket.on('close', () => this.sessions.delete(session));
    this.send(session, { QMP: { version: this.options.version, capabilities: [] } });
    const splitter = new JsonSplitter();
    // Requests of one client run in order; a flood waits its turn without holding the event loop.
    let queue = Promise.resolve();
    socket.on('data', (chunk: string) => {
      for (const item of splitter.push(chunk)) {
        queue = queue.then(async () => {
          if ('error' in item) this.send(session, { error: { class: 'GenericError', desc: item.error } });
          else await this.handle(session, item.json);
          await yieldToEventLoop();
        });
      }
    });
  }

  private send(session: Session, message: unknown): void {
    if (!session.socket.destroyed) session.socket.write(JSON.stringify(message) + '\r\n');
  }

  private async handle(session: Session, text: string): Promise<void> {
    let request: unknown;
    try {
      request = JSON.parse(text);
    } catch (err) {
      this.send(session, { error: { class: 'GenericError', desc: `JSON parse error, ${(err as Error).message}` } });
      return;
    }
    if (typeof request !== 'object' || request === null || Array.isArray(request)) {
      this.send(session, { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
      return;
    }
    const r = request as Record<string, unknown>;
    const hasId = 'id' in r;
    const reply = (body: object): void => this.send(session, hasId ? { ...body, id: r.id } : body);
    const fail = (errorClass: QmpErrorClass, desc: string): void => reply({ error: { class: errorClass, desc } });
    for (const key of Object.keys(r)) {
      if (!['execute', 'arguments', 'id'].includes(key)) return fail('GenericError', `QMP input member '${key}' is unexpected`);
    }
    if (!('execute' in r)) return fail('GenericError', "QMP input lacks member 'execute'");
    if (typeof r.execute !== 'string') return fail('GenericError', "QMP input member 'execute' must be a string");
    if ('arguments' in r && (typeof r.arguments !== 'object' || r.arguments === null || Array.isArray(r.arguments))) {
      return fail('GenericError', "QMP input member 'arguments' must be an object");
    }
    const name = r.execute;
    const args = (r.arguments ?? {}) as QmpArguments;
    if (name === 'qmp_capabilities') {
      if (session.negotiated) return fail('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
      const enable = args.enable;
      if (enable !== undefined && (!Array.isArray(enable) || enable.length > 0)) {
        return fail('GenericError', "Parameter 'enable' does not accept value: livemig has no optional QMP capabilities");
      }
      session.negotiated = true;
      return reply({ return: {} });
    }
    if (!session.negotiated) return fail('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
    const command = this.options.commands[name];
    if (!command) return fail('CommandNotFound', `The command ${name} has not been found`);
    try {
      const result = await command(args, session);
      reply({ return: result ?? {} });
    } catch (err) {
      if (err instanceof QmpCommandError) fail(err.errorClass, err.message);
      else fail('GenericError', (err as Error).message);
    }
  }

  /** Send an event to every negotiated client. */
  emitEvent(event: string, data?: Record<string, unknown>): void {
    const message = data === undefined ? { timestamp: timestamp(), event } : { timestamp: timestamp(), event, data };
    for (const s of this.sessions) if (s.negotiated) this.send(s, message);
  }

  commandNames(): string[] {
    return ['qmp_capabilities', ...Object.keys(this.options.commands)];
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.socket.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    if (this.unixPath) await unlink(this.unixPath).catch(() => {});
  }
}
