/**
 * `--metrics tcp:HOST:PORT`: a Prometheus endpoint (`GET /metrics`) with the
 * migration figures under the names KubeVirt's virt-handler and virt-controller
 * export (`kubevirt_vmi_migration_*`, so existing dashboards and alerts work),
 * plus livemig's own (`livemig_migration_*`: downtime and its phases, passes, status).
 *
 * The figures are read from `query-migrate` when Prometheus scrapes (one query per
 * scrape, then prom-client's collect callbacks read that answer), never on a timer:
 * an idle endpoint costs nothing. The source of `query-migrate` is a function, so
 * the same endpoint serves `livemig run` (in-process) and `livemig migrate` (a QMP
 * client of any source, QEMU's included).
 *
 * Start and end times and the succeeded/failed figures need the moments a
 * migration started and ended: `observe()` is told each status as it is seen
 * (events when there are, and every scrape's answer), and derives them.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';
import createDebug from 'debug';
// The client's view of query-migrate: what QEMU and livemig both answer.
import type { MigrationInfo } from './qmp-client.js';

const log = createDebug('livemig:metrics');

/** QEMU 7.2's MigrationStatus values, each a `livemig_migration_status{status=...}` series. */
export const MIGRATION_STATUSES = [
  'none', 'setup', 'cancelling', 'cancelled', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover',
  'completed', 'failed', 'colo', 'pre-switchover', 'device', 'wait-unplug',
] as const;

const FINAL_STATUSES = new Set(['completed', 'failed', 'cancelled']);

export interface MigrationMetricsOptions {
  /** The VM's name: the `name` label of every series (KubeVirt labels by VMI name). */
  name: string;
  /** `query-migrate`, asked once per scrape. */
  queryMigrate(): MigrationInfo | Promise<MigrationInfo>;
  /** Wall clock in ms (tests). */
  nowMs?(): number;
  /**
   * A destination's `setup` means "listening" (livemig's, until a source connects): then a migration
   * starts at the next status, not at `setup`, so the start time is when the stream arrived.
   */
  setupMeansListening?: boolean;
}

export class MigrationMetrics {
  /** A registry of our own: the process-global one would mix in whatever else registers there. */
  readonly registry = new Registry();
  private info: MigrationInfo = {};
  private migrating = false;
  private endCounted = true;
  private startTimeMs: number | undefined;
  private endTimeMs: number | undefined;
  private readonly outcomes = { completed: 0, failed: 0, cancelled: 0 };
  private readonly nowMs: () => number;

  constructor(private readonly options: MigrationMetricsOptions) {
    this.nowMs = options.nowMs ?? Date.now;
    const labelNames = ['name'] as const;
    const name = { name: options.name };
    const registers = [this.registry];
    // A gauge whose one series is `value()`, or absent while value() is undefined (unknown is not zero).
    const gauge = (metricName: string, help: string, value: () => number | undefined): void => {
      new Gauge({
        name: metricName, help, labelNames, registers,
        collect(this: Gauge<'name'>) {
          this.reset();
          const v = value();
          if (v !== undefined) this.set(name, v);
        },
      });
    };
    const ram = (): NonNullable<MigrationInfo['ram']> | undefined => this.info.ram;
    const disk = (): MigrationInfo['disk'] => this.info.disk;
    const sum = (a: number | undefined, b: number | undefined): number | undefined => (a === undefined && b === undefined ? undefined : (a ?? 0) + (b ?? 0));

    // KubeVirt's names, types and help texts (virt-handler's domain job figures, virt-controller's outcome).
    gauge('kubevirt_vmi_migration_data_processed_bytes', 'The total Guest OS data processed and migrated to the new VM.', () => sum(ram()?.transferred, disk()?.transferred));
    gauge('kubevirt_vmi_migration_data_remaining_bytes', 'The remaining guest OS data to be migrated to the new VM.', () => sum(ram()?.remaining, disk()?.remaining));
    const total = (): number | undefined => sum(ram()?.total, disk()?.total);
    // KubeVirt made it a counter (and renamed it *_bytes_total later): both names, the type it has there.
    for (const [metricName, help] of [
      ['kubevirt_vmi_migration_data_total_bytes', 'The total Guest OS data to be migrated to the new VM.'],
      ['kubevirt_vmi_migration_data_bytes_total', 'The total Guest OS data to be migrated to the new VM.'],
    ] as const) {
      new Counter({
        name: metricName, help, labelNames, registers,
        collect(this: Counter<'name'>) {
          this.reset();
          const v = total();
          if (v !== undefined) this.inc(name, v);
        },
      });
    }
    gauge('kubevirt_vmi_migration_dirty_memory_rate_bytes', 'The rate of memory being dirty in the Guest OS.', () => {
      const r = ram();
      return r?.['dirty-pages-rate'] === undefined ? undefined : r['dirty-pages-rate'] * (r['page-size'] ?? 4096);
    });
    // query-migrate's mbps is megabits (10^6) per second.
    gauge('kubevirt_vmi_migration_memory_transfer_rate_bytes', 'The rate at which the memory is being transferred.', () => {
      const r = ram();
      return r?.mbps === undefined ? undefined : Math.round((r.mbps * 1e6) / 8);
    });
    gauge('kubevirt_vmi_migration_start_time_seconds', 'The time at which the migration started.', () => (this.startTimeMs === undefined ? undefined : this.startTimeMs / 1000));
    gauge('kubevirt_vmi_migration_end_time_seconds', 'The time at which the migration ended.', () => (this.endTimeMs === undefined ? undefined : this.endTimeMs / 1000));
    // KubeVirt's are 0/1 gauges for one migration object; a livemig process may migrate more than once: how many did.
    gauge('kubevirt_vmi_migration_succeeded', 'Indicates if the VMI migration succeeded (livemig: migrations of this VM that succeeded in this process).', () => this.outcomes.completed);
    gauge('kubevirt_vmi_migration_failed', 'Indicates if the VMI migration failed (livemig: migrations of this VM that failed in this process).', () => this.outcomes.failed);

    // livemig's own.
    gauge('livemig_migration_cancelled', 'Migrations of this VM that were cancelled in this process.', () => this.outcomes.cancelled);
    gauge('livemig_migration_downtime_seconds', 'How long the guest was stopped for the switchover (query-migrate downtime).', () => (this.info.downtime === undefined ? undefined : this.info.downtime / 1000));
    gauge('livemig_migration_expected_downtime_seconds', 'The downtime the switchover would cost now (query-migrate expected-downtime).', () => {
      const ms = this.info['expected-downtime'];
      return ms === undefined ? undefined : ms / 1000;
    });
    gauge('livemig_migration_passes', 'Passes over the dirty bitmap so far (query-migrate ram.dirty-sync-count).', () => ram()?.['dirty-sync-count']);
    const downtimePhases = (): MigrationInfo['x-livemig-downtime-phases'] => this.info['x-livemig-downtime-phases'];
    new Gauge({
      name: 'livemig_migration_downtime_phase_seconds',
      help: "The last switchover's downtime by phase: pause (stopping the guest), complete (the last dirty pages and the device state), flush (until the destination has loaded it all, or the stream is on the wire for a QEMU destination), confirm (the go-ahead and the destination's answer).",
      labelNames: ['name', 'phase'] as const,
      registers,
      collect: function (this: Gauge<'name' | 'phase'>) {
        this.reset();
        // From query-migrate itself, so `migrate --metrics` has them too (a livemig source; QEMU has no phases).
        const phases = downtimePhases();
        if (!phases) return;
        for (const phase of ['pause', 'complete', 'flush', 'confirm'] as const) this.set({ name: options.name, phase }, phases[`${phase}-ms`] / 1000);
      },
    });
    const current = (): string => this.info.status ?? 'none';
    new Gauge({
      name: 'livemig_migration_status',
      help: "The migration's status as query-migrate reports it: 1 for the current one, 0 for the others.",
      labelNames: ['name', 'status'] as const,
      registers,
      collect(this: Gauge<'name' | 'status'>) {
        const now = current();
        for (const status of MIGRATION_STATUSES) this.set({ name: options.name, status }, status === now ? 1 : 0);
      },
    });
  }

  /**
   * A status as it was seen (an event, a poll, a scrape); `totalTimeMs` is query-migrate's
   * total-time if known, so a migration first seen midway or already ended gets its start time.
   */
  observe(status: string | undefined, totalTimeMs?: number): void {
    const now = this.nowMs();
    if (status === undefined || status === 'none') return;
    if (status === 'setup' && this.options.setupMeansListening) return;
    if (!FINAL_STATUSES.has(status)) {
      if (!this.migrating) {
        this.migrating = true;
        this.endCounted = false;
        this.startTimeMs = now - (totalTimeMs ?? 0);
        this.endTimeMs = undefined;
        log('migration started (%s)', status);
      }
      return;
    }
    if (this.endCounted) return;
    this.migrating = false;
    this.endCounted = true;
    this.endTimeMs = now;
    if (this.startTimeMs === undefined) this.startTimeMs = now - (totalTimeMs ?? 0);
    this.outcomes[status as keyof typeof this.outcomes]++;
    log('migration %s', status);
  }

  /**
   * A migration that was already final when first seen (the first scrape came after it):
   * count it once. Called with each scrape's answer.
   */
  private observeAnswer(info: MigrationInfo): void {
    const status = info.status;
    if (status && FINAL_STATUSES.has(status) && !this.migrating && this.startTimeMs === undefined) this.endCounted = false;
    this.observe(status, info['total-time']);
  }

  /** Ask query-migrate once, then render every metric from that answer. */
  async scrape(): Promise<string> {
    this.info = await this.options.queryMigrate();
    this.observeAnswer(this.info);
    return this.registry.metrics();
  }
}

export interface MetricsAddress {
  host: string;
  port: number;
}

/** `tcp:HOST:PORT` (IPv6 in brackets); PORT 0 picks a free one. A clear error names what is wrong. */
export function parseMetricsAddress(text: string): MetricsAddress {
  const m = /^tcp:(\[[^\]]+\]|[^:[\]]+):(\d+)$/.exec(text);
  if (!m) throw new Error(`--metrics: '${text}' is not tcp:HOST:PORT (e.g. tcp:127.0.0.1:9100)`);
  const port = Number(m[2]);
  if (port > 65535) throw new Error(`--metrics: port ${port} in '${text}' is above 65535`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

export interface MetricsEndpoint {
  /** http://HOST:PORT/metrics, with the port actually bound. */
  readonly url: string;
  /** Resolves once the next scrape has been answered (with figures, not an error). */
  nextScrape(): Promise<void>;
  close(): Promise<void>;
}

/** Serve `GET /metrics` at the address; resolves once listening, rejects with a clear error if it cannot. */
export async function serveMetrics(address: MetricsAddress, metrics: MigrationMetrics): Promise<MetricsEndpoint> {
  let scrapeWaiters: Array<() => void> = [];
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end('only GET /metrics\n');
      return;
    }
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('livemig serves /metrics\n');
      return;
    }
    metrics.scrape().then(
      (text) => {
        res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(req.method === 'HEAD' ? undefined : text);
        const waiters = scrapeWaiters;
        scrapeWaiters = [];
        for (const wake of waiters) wake();
      },
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`query-migrate failed: ${err instanceof Error ? err.message : String(err)}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new Error(`--metrics: cannot listen on ${address.host}:${address.port}: ${err.code === 'EADDRINUSE' ? 'the port is in use' : err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND' ? 'no such local address' : err.message}`)),
    );
    server.listen(address.port, address.host, () => resolve());
  });
  // Scrapes must not keep a process alive that is otherwise done.
  server.unref();
  const bound = server.address();
  const port = bound && typeof bound === 'object' ? bound.port : address.port;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  const url = `http://${host}:${port}/metrics`;
  log('serving %s', url);
  return {
    url,
    nextScrape: () => new Promise<void>((resolve) => scrapeWaiters.push(resolve)),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
