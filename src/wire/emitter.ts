/**
 * A small typed event emitter for the core (the migration loops, their
 * settings, a browser machine's serial output): the part of Node's
 * EventEmitter that livemig's callers use — on/addListener, once, off/
 * removeListener, removeAllListeners, emit, listenerCount — with the same
 * semantics (listeners run synchronously in the order added; one removed
 * during an emit still runs for that emit; off() also removes a once()
 * listener), and nothing from Node, so it runs in a browser too.
 *
 * Events are declared as Node's typed EventEmitter does: a map from the
 * event's name to its arguments' tuple.
 */
type EventMap<E> = { [K in keyof E]: unknown[] };
type Listener<A extends unknown[]> = (...args: A) => void;

interface Entry {
  // Stored untyped: each event's listeners are typed by on() and emit().
  listener: Function;
  /** once(): the listener as given (so off(listener) finds it). */
  once: boolean;
}

export class TypedEmitter<E extends EventMap<E>> {
  private readonly listenersByEvent = new Map<keyof E, Entry[]>();

  on<K extends keyof E>(event: K, listener: Listener<E[K]>): this {
    const entries = this.listenersByEvent.get(event);
    const entry: Entry = { listener, once: false };
    if (entries) entries.push(entry);
    else this.listenersByEvent.set(event, [entry]);
    return this;
  }

  addListener<K extends keyof E>(event: K, listener: Listener<E[K]>): this {
    return this.on(event, listener);
  }

  once<K extends keyof E>(event: K, listener: Listener<E[K]>): this {
    this.on(event, listener);
    this.listenersByEvent.get(event)!.at(-1)!.once = true;
    return this;
  }

  /** Removes the most recently added registration of `listener`, as Node does. */
  off<K extends keyof E>(event: K, listener: Listener<E[K]>): this {
    const entries = this.listenersByEvent.get(event);
    if (!entries) return this;
    for (let i = entries.length - 1; i >= 0; i--) {
      if (entries[i]!.listener === (listener as Function)) {
        this.removeEntry(event, entries[i]!);
        break;
      }
    }
    return this;
  }

  private removeEntry(event: keyof E, entry: Entry): void {
    const entries = this.listenersByEvent.get(event);
    if (!entries || !entries.includes(entry)) return;
    // A new array: an emit under way keeps iterating over the one it started with.
    const rest = entries.filter((e) => e !== entry);
    if (rest.length > 0) this.listenersByEvent.set(event, rest);
    else this.listenersByEvent.delete(event);
  }

  removeListener<K extends keyof E>(event: K, listener: Listener<E[K]>): this {
    return this.off(event, listener);
  }

  removeAllListeners(event?: keyof E): this {
    if (event === undefined) this.listenersByEvent.clear();
    else this.listenersByEvent.delete(event);
    return this;
  }

  listenerCount(event: keyof E): number {
    return this.listenersByEvent.get(event)?.length ?? 0;
  }

  /** Calls every listener of `event` in order; a listener that throws stops the emit and the error propagates (as Node). Returns whether there was one. */
  emit<K extends keyof E>(event: K, ...args: E[K]): boolean {
    const entries = this.listenersByEvent.get(event);
    if (!entries || entries.length === 0) return false;
    for (const entry of entries) {
      if (entry.once) this.removeEntry(event, entry);
      (entry.listener as Listener<E[K]>)(...args);
    }
    return true;
  }
}
