/**
 * Liveness: notice a peer that stopped taking, sending or acknowledging data
 * within `x-livemig-peer-timeout-ms`, instead of waiting on a dead link forever.
 *
 * A socket whose peer vanished (blackholed link, frozen process) gives no
 * error: writes fill the kernel's buffer and then simply never complete,
 * reads never return. So the watchdog watches what the migration waits for:
 *
 *   - a write or read handed to the channel that has not completed;
 *   - a step of the migration that is busy with I/O while no byte moves
 *     (covers multifd channels, whose writes happen in worker threads);
 *   - a PING on the return path that has not been answered.
 *
 * A wait that lasts longer than the timeout is a stall: the watchdog calls
 * `onStall` once with a `peer-timeout` MigrationError, and the migration
 * aborts its channels with it. Silence is never a stall by itself: a source
 * with nothing to send and no return path is simply idle.
 */
import { unrefTimer, type ByteSink, type ByteSource } from '../wire/index.js';
import { MigrationError } from './errors.js';

export interface PeerWatchdogOptions {
  /** Read on every check, so `migrate-set-parameters` applies to a running migration. */
  timeoutMs(): number;
  /** Bytes moved so far by means the watchdog does not wrap (multifd channels); any change is progress. */
  progress?(): number;
  /** Who the peer is, for the message: 'destination' or 'source'. */
  peer: string;
  onStall(err: MigrationError): void;
  /** For tests: the clock. */
  now?(): number;
}

export class PeerWatchdog {
  private readonly now: () => number;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private stalled = false;
  private lastProgressValue = -1;
  private lastProgressMs: number;
  /** The channels' reads and writes, tracked by counting (IoGauge): no clock read per operation. */
  private readonly gauges: IoGauge[] = [];
  private busyDepth = 0;
  private busySinceMs = 0;
  private replyWantedSinceMs: number | undefined;

  constructor(private readonly options: PeerWatchdogOptions) {
    this.now = options.now ?? (() => performance.now());
    this.lastProgressMs = this.now();
    this.lastProgressValue = options.progress?.() ?? -1;
  }

  /** Check every quarter of the timeout (at most every 250 ms) until stop(). */
  start(): this {
    this.lastProgressMs = this.now();
    this.lastProgressValue = this.options.progress?.() ?? -1;
    const tick = (): void => {
      this.check();
      if (!this.stalled) this.timer = unrefTimer(setTimeout(tick, Math.min(250, Math.max(10, this.options.timeoutMs() / 4))));
    };
    this.timer = unrefTimer(setTimeout(tick, 10));
    return this;
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Any sign of life from the peer or the link (bytes moved, a message). */
  noteProgress(): void {
    this.lastProgressMs = this.now();
  }

  /**
   * A gauge for one stream of I/O operations that wait on the peer (a
   * channel's reads, or its writes), for hot paths: begin() and end() only
   * count, and check() sees progress in the counts. An operation pending
   * with no count changing for the timeout is a stall, seen up to one check
   * interval (at most 250 ms) late.
   */
  gauge(what: string): IoGauge {
    const gauge = new IoGauge(what, this.now());
    this.gauges.push(gauge);
    return gauge;
  }

  /** Run `step` (a part of the migration that does I/O) as busy: no progress for the timeout inside it is a stall. */
  async busy<T>(step: () => Promise<T>): Promise<T> {
    if (this.busyDepth++ === 0) {
      this.busySinceMs = this.now();
      this.lastProgressValue = this.options.progress?.() ?? -1;
    }
    try {
      return await step();
    } finally {
      this.busyDepth--;
    }
  }

  /** A PING went out: the peer must answer (any message) within the timeout. */
  expectReply(): void {
    this.replyWantedSinceMs ??= this.now();
  }

  /** A message came from the peer. */
  replied(): void {
    this.replyWantedSinceMs = undefined;
    this.noteProgress();
  }

  /** One check (the timer calls it; tests may too). */
  check(): void {
    if (this.stalled) return;
    const now = this.now();
    const timeoutMs = this.options.timeoutMs();
    const progress = this.options.progress?.();
    if (progress !== undefined && progress !== this.lastProgressValue) {
      this.lastProgressValue = progress;
      this.lastProgressMs = now;
    }
    const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
    const since = (startedMs: number): number => now - Math.max(startedMs, this.lastProgressMs);
    let reason: string | undefined;
    for (const gauge of this.gauges) {
      if (gauge.count !== gauge.seenCount) {
        // Operations began or ended since the last check: progress, seen now.
        gauge.seenCount = gauge.count;
        gauge.seenMs = now;
        this.lastProgressMs = now;
      }
    }
    for (const gauge of this.gauges) {
      if (gauge.pending > 0 && since(gauge.seenMs) > timeoutMs) {
        reason = `the ${this.options.peer} has not ${gauge.what} for ${seconds(since(gauge.seenMs))}`;
        break;
      }
    }
    if (!reason && this.busyDepth > 0 && since(this.busySinceMs) > timeoutMs) {
      reason = `no data has moved to or from the ${this.options.peer} for ${seconds(since(this.busySinceMs))}`;
    }
    // Only an answer answers: bytes flowing the other way do not.
    if (!reason && this.replyWantedSinceMs !== undefined && now - this.replyWantedSinceMs > timeoutMs) {
      reason = `the ${this.options.peer} has not answered for ${seconds(now - this.replyWantedSinceMs)}`;
    }
    if (reason) {
      this.stalled = true;
      this.stop();
      this.options.onStall(new MigrationError('peer-timeout', `${reason} (x-livemig-peer-timeout-ms is ${timeoutMs})`));
    }
  }
}

/** Counts one stream of operations for PeerWatchdog.gauge(). */
export class IoGauge {
  /** Operations begun plus operations ended: any change is progress. */
  count = 0;
  pending = 0;
  /** What check() last saw, and when. */
  seenCount = 0;
  seenMs: number;
  /** Ends an operation; made once, so tracking allocates nothing per operation. */
  readonly end: () => void;

  constructor(
    readonly what: string,
    nowMs: number,
  ) {
    this.seenMs = nowMs;
    this.end = () => {
      this.pending--;
      this.count++;
    };
  }

  begin(): void {
    this.pending++;
    this.count++;
  }
}

/**
 * A sink whose writes the watchdog tracks: a write the peer does not take
 * within the timeout is a stall. Counted (IoGauge), not timed: a page-path
 * write costs two increments, not two clock reads and a map entry.
 */
export function watchSink(sink: ByteSink, watchdog: PeerWatchdog): ByteSink {
  const gauge = watchdog.gauge('taken any data');
  const watched: ByteSink = {
    write(chunk) {
      return tracked(gauge, () => sink.write(chunk));
    },
    close: () => sink.close(),
  };
  if (sink.writeLent) {
    const writeLent = sink.writeLent.bind(sink);
    watched.writeLent = (chunk, release) => tracked(gauge, () => writeLent(chunk, release));
  }
  if (sink.writeGather) {
    const writeGather = sink.writeGather.bind(sink);
    watched.writeGather = (pieces) => tracked(gauge, () => writeGather(pieces));
  }
  return watched;
}

/** A source whose reads the watchdog tracks (while `enabled`): a read the peer does not feed within the timeout is a stall. */
export function watchSource(source: ByteSource, watchdog: PeerWatchdog, enabled: () => boolean = () => true): ByteSource {
  const gauge = watchdog.gauge('sent any data');
  return {
    read() {
      if (!enabled()) return source.read();
      return tracked(gauge, () => source.read());
    },
    close: () => source.close(),
    alignReads: (streamOffsetMod8) => source.alignReads?.(streamOffsetMod8),
  };
}

/** `operation()`, counted on `gauge` until it settles either way (one promise, where finally() makes two). */
function tracked<T>(gauge: IoGauge, operation: () => Promise<T>): Promise<T> {
  gauge.begin();
  let pending: Promise<T>;
  try {
    pending = operation();
  } catch (err) {
    gauge.end();
    throw err;
  }
  const end = gauge.end;
  return pending.then(
    (value) => {
      end();
      return value;
    },
    (err: unknown) => {
      end();
      throw err;
    },
  );
}
