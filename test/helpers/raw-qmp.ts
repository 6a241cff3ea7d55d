/** A raw QMP connection for protocol tests: send exact text, read each message. */
import { connect, type Socket } from 'node:net';
import { once } from 'node:events';

export type QmpMessage = Record<string, any>;

export class RawQmp {
  readonly messages: QmpMessage[] = [];
  /** Each message's text as received (messages[i] is lines[i] parsed): what a C client reads, digits and all. */
  readonly lines: string[] = [];
  private buffered = '';
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffered += chunk;
      let nl: number;
      while ((nl = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, nl).trim();
        this.buffered = this.buffered.slice(nl + 1);
        if (!line) continue;
        this.messages.push(JSON.parse(line));
        this.lines.push(line);
      }
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => {});
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    w.forEach((f) => f());
  }

  static async open(path: string): Promise<RawQmp> {
    const socket = connect(path);
    await once(socket, 'connect');
    return new RawQmp(socket);
  }

  send(text: string): void {
    this.socket.write(text);
  }

  /** The next message from index `from` that satisfies `test`; returns it and its index. */
  async next(test: (m: QmpMessage) => boolean, from = 0, timeoutMs = 30_000): Promise<{ message: QmpMessage; index: number }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.messages.findIndex((m, i) => i >= from && test(m));
      if (index >= 0) return { message: this.messages[index]!, index };
      if (this.closed) throw new Error('QMP connection closed');
      if (Date.now() > deadline) throw new Error('timed out waiting for a QMP message');
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200).unref();
      });
    }
  }

  private nextId = 1;
  /** Execute and return the reply (`return` or `error` object). */
  async execute(command: string, args?: Record<string, unknown>): Promise<QmpMessage> {
    return (await this.executeRaw(command, args)).message;
  }

  /** execute(), with the reply's text as received. */
  async executeRaw(command: string, args?: Record<string, unknown>): Promise<{ message: QmpMessage; text: string }> {
    const id = `t${this.nextId++}`;
    this.send(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + '\n');
    const { message, index } = await this.next((m) => m.id === id);
    return { message, text: this.lines[index]! };
  }

  /** execute() with the arguments object written as given (numbers as the client spells them: `1.0`, `1e3`). */
  async executeText(command: string, argumentsText: string): Promise<QmpMessage> {
    const id = `t${this.nextId++}`;
    this.send(`{"execute": ${JSON.stringify(command)}, "arguments": ${argumentsText}, "id": ${JSON.stringify(id)}}\n`);
    return (await this.next((m) => m.id === id)).message;
  }

  /** Events so far, by name. */
  events(name?: string): QmpMessage[] {
    return this.messages.filter((m) => 'event' in m && (name === undefined || m.event === name));
  }

  close(): void {
    this.socket.destroy();
  }
}
