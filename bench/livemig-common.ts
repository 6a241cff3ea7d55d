/**
 * One livemig migration of a scenario (bench/util.ts ScenarioSpec), source in
 * this process, destination a `livemig run --incoming` child, over loopback
 * TCP. Shared by bench/migrate-source.ts (RAM scenarios) and bench/disk.ts.
 *
 * A run that has not completed `spec.boundMs` after `migrate` is cancelled
 * (OutgoingMigration.cancel, as QMP `migrate_cancel`) and reported as not
 * converged. Capabilities the destination must know too (multifd) are set on
 * it through QMP before `migrate-incoming`, as with QEMU.
 */
import { queryMigrate } from '../src/monitor/query-migrate.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Machine } from '../src/machine/index.js';
import { MigrationConfig, OutgoingMigration, warmUpMigrations } from '../src/migration/index.js';
import { QmpClient } from '../src/monitor/qmp-client.js';
import { ObjectRegistry } from '../src/security/index.js';
import { cpuDelta, CpuSampler, firstPassDone, POSTCOPY_POLL_MS, type PostcopyFigures, cpuUsed, currentRssBytes, jsonEvent, LineChild, LIVEMIG_MAIN, MiB, optNumber, ownCpuSeconds, PeakRssSampler, peakRssBytes, sleep, within, type RunResult, type ScenarioSpec } from './util.js';

/** Capabilities a destination must have turned on as well (QEMU requires it for multifd and postcopy-ram). */
const BOTH_SIDES = new Set(['multifd', 'postcopy-ram']);

export interface LivemigRunOptions {
  spec: ScenarioSpec;
  /** Extra `livemig run` arguments for the destination (e.g. --disk). */
  destArgs?: string[];
  /** Creates the source machine, given nothing; runs after the destination listens. */
  makeSource: () => Promise<Machine>;
  /** migrate with blk (block migration). */
  blk?: boolean;
  /** Time the source guest runs before `migrate` (workload warm-up). */
  warmupMs?: number;
  /** The source guest's passes over its workload range so far (workload scenarios). */
  guestPasses?: (machine: Machine) => number;
}

/** From spawning the destination until it listens (QMP set-up included); a healthy one takes well under a second. */
const DEST_SETUP_TIMEOUT_MS = 30_000;

export async function runLivemigMigration(o: LivemigRunOptions): Promise<RunResult> {
  const { spec } = o;
  // As README's embedding section advises: rehearse once at start-up, so the first migration runs compiled code
  // (the destination, `livemig run`, does the same through its MachineMonitor).
  await warmUpMigrations();
  const dir = await mkdtemp(join(tmpdir(), 'livemig-bench-'));
  // Postcopy: postcopy-ram on both sides, and the destination measures how long its guest waits for pages.
  const bothSides = [...spec.caps.filter((c) => BOTH_SIDES.has(c)), ...(spec.postcopy ? ['postcopy-ram', 'postcopy-blocktime'] : [])].filter((c, i, all) => all.indexOf(c) === i);
  const qmpUri = `unix:${join(dir, 'dst.qmp')}`;
  const dest = new LineChild(process.execPath, [
    ...process.execArgv,
    LIVEMIG_MAIN,
    'run',
    '--machine',
    'test',
    '--ram',
    `${spec.ramBytes / MiB}M`,
    ...(bothSides.length > 0 ? ['--incoming', 'defer', '--qmp', qmpUri] : ['--incoming', 'tcp:127.0.0.1:0']),
    '--json',
    ...(spec.tlsDirs ? ['--object', `tls-creds-x509,id=tls0,dir=${spec.tlsDirs.server},endpoint=server,verify-peer=on`, '--param', 'tls-creds=tls0'] : []),
    ...(o.destArgs ?? []),
  ]);
  const destRss = new PeakRssSampler(() => dest.pid);
  // The destination's CPU (/proc/PID/stat, every thread), its last reading kept should it exit (a cancel).
  const destCpu = new CpuSampler(() => dest.pid);
  let machine: Machine | undefined;
  let qmp: QmpClient | undefined;
  try {
    let step = 'start';
    // Until the destination listens: bounded, so a destination that stops answering fails this run with what it last said.
    const { address } = await within(
      (async () => {
        if (bothSides.length > 0) {
          step = 'QMP connect';
          qmp = await QmpClient.connect(qmpUri, { retryForMs: 10_000 });
          step = 'migrate-set-capabilities';
          await qmp.execute('migrate-set-capabilities', { capabilities: bothSides.map((capability) => ({ capability, state: true })) });
          step = 'migrate-set-parameters';
          if (Object.keys(spec.params).length > 0) await qmp.execute('migrate-set-parameters', spec.params);
          step = 'migrate-incoming';
          await qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
        }
        step = "the destination's 'listening' line";
        return (await dest.waitFor(jsonEvent('listening'), 'destination')) as { address: string };
      })(),
      DEST_SETUP_TIMEOUT_MS,
      () => `destination set-up: no answer within ${DEST_SETUP_TIMEOUT_MS} ms at ${step}; its last lines: ${dest.recent.join(' | ') || 'none'}; stderr: ${dest.stderr.trim().slice(-500) || 'none'}`,
    );
    const rssBeforeMachine = currentRssBytes(process.pid);
    machine = await o.makeSource();
    if (o.warmupMs) await sleep(o.warmupMs);

    const objects = new ObjectRegistry();
    if (spec.tlsDirs) objects.addFromText(`tls-creds-x509,id=tls0,dir=${spec.tlsDirs.client},endpoint=client`);
    const migration = new OutgoingMigration(machine, new MigrationConfig(), { security: objects });
    migration.setParameters({ 'max-bandwidth': spec.maxBandwidth, 'downtime-limit': spec.downtimeLimitMs, ...spec.params, ...(spec.tlsDirs ? { 'tls-creds': 'tls0' } : {}) });
    migration.setCapabilities(Object.fromEntries([...spec.caps, ...(spec.postcopy ? ['postcopy-ram'] : [])].map((c) => [c, true])));
    // The source is this process: its own CPU (process.cpuUsage, every thread), in microseconds.
    const cpu0 = [ownCpuSeconds(), destCpu.sample()];
    const passes0 = o.guestPasses?.(machine);
    const rssBeforeMigrate = currentRssBytes(process.pid);
    const mt0 = performance.now();
    // Passes when the guest stopped (switchover) or when the migration ended.
    let passesAtStop: number | undefined;
    const src = machine;
    let stoppedAtWallMs: number | undefined;
    migration.once('stop', () => {
      stoppedAtWallMs = Date.now();
      passesAtStop = o.guestPasses?.(src);
    });
    // The destination's RESUME (its guest running), for the postcopy pause as the guest sees it.
    let resumedAtWallMs: number | undefined;
    qmp?.on('event', (e: { event: string; timestampMs: number }) => {
      if (e.event === 'RESUME') resumedAtWallMs ??= e.timestampMs;
    });
    migration.start(address, o.blk ? { blk: true } : {});
    const bound = setTimeout(() => {
      try {
        migration.cancel();
      } catch {
        /* too late to cancel: the destination has the whole state; it completes */
      }
    }, spec.boundMs);
    // Postcopy: the source's status changes (postcopy-active until completed), and the switch by the first-pass rule.
    const pc: PostcopyFigures = {};
    let postcopyActiveAt: number | undefined;
    let poll: NodeJS.Timeout | undefined;
    let startError: string | undefined;
    if (spec.postcopy) {
      migration.on('status', (s) => {
        if (s === 'postcopy-active') {
          postcopyActiveAt ??= performance.now();
          pc.switched = true;
        }
        else if (s === 'completed' && postcopyActiveAt !== undefined) pc.postcopyMs = Math.round(performance.now() - postcopyActiveAt);
      });
      poll = setInterval(() => {
        if (migration.status !== 'active') return;
        if (!firstPassDone(queryMigrate(migration).ram)) return;
        clearInterval(poll);
        pc.startedAtMs = Math.round(performance.now() - mt0);
        try {
          migration.startPostcopy();
        } catch (err) {
          startError = `migrate-start-postcopy: ${(err as Error).message}`;
        }
      }, POSTCOPY_POLL_MS);
    }
    const status = await migration.finished;
    const mt1 = performance.now();
    clearTimeout(bound);
    clearInterval(poll);
    const passes1 = passesAtStop ?? o.guestPasses?.(machine);
    const info = queryMigrate(migration);
    if (process.env.LIVEMIG_BENCH_DEBUG) process.stderr.write(`switchover: ${JSON.stringify(migration.switchover)}\n`);
    const srcCpu1 = ownCpuSeconds();
    if (status === 'completed') {
      await Promise.race([dest.waitFor(jsonEvent('resumed'), 'destination'), sleep(30_000)]);
    }
    if (spec.postcopy && qmp) {
      // Right after the destination completed: its blocktime and its own count of requested pages.
      const d = (await qmp.execute('query-migrate').catch(() => ({}))) as { 'postcopy-blocktime'?: number; 'x-livemig-postcopy'?: { requests: number } };
      if (d['postcopy-blocktime'] !== undefined) pc.blocktimeMs = d['postcopy-blocktime'];
      if (d['x-livemig-postcopy']) pc.destRequests = d['x-livemig-postcopy'].requests;
      pc.switched ??= false;
      if (pc.switched && stoppedAtWallMs !== undefined && resumedAtWallMs !== undefined) pc.stopToRunningMs = Math.round(resumedAtWallMs - stoppedAtWallMs);
    }
    // The destination's work ends when it has loaded everything ('resumed'), after the source's.
    const cpu1 = [srcCpu1, destCpu.stop()];
    const ram = info.ram;
    const x = info['xbzrle-cache'];
    return {
      engine: 'livemig',
      scenario: spec.id,
      status,
      converged: status === 'completed',
      totalMs: info['total-time'] ?? NaN,
      ...(info['setup-time'] !== undefined ? { setupMs: info['setup-time'] } : {}),
      ...(info.downtime !== undefined ? { downtimeMs: info.downtime } : {}),
      wireBytes: (ram?.transferred ?? 0) + (info.disk?.transferred ?? 0),
      passes: ram?.['dirty-sync-count'] ?? 0,
      guestRamBytes: spec.ramBytes,
      // VmHWM, not getrusage's maxRSS: Linux carries ru_maxrss over fork+exec, so that would
      // report the bench parent's RSS (about 0.5 GiB) whenever the migration itself used less.
      sourcePeakRssBytes: peakRssBytes(process.pid) ?? process.resourceUsage().maxRSS * 1024,
      ...optNumber('sourceRssBeforeMachineBytes', rssBeforeMachine),
      ...optNumber('sourceRssBeforeMigrateBytes', rssBeforeMigrate),
      ...(destRss.stop() !== undefined ? { destPeakRssBytes: destRss.stop()! } : {}),
      sourceCpu: cpuDelta(cpu0[0], cpu1[0]),
      destCpu: cpuDelta(cpu0[1], cpu1[1]),
      ...optNumber('sourceCpuSeconds', cpuUsed(cpu0[0], cpu1[0])),
      ...optNumber('destCpuSeconds', cpuUsed(cpu0[1], cpu1[1])),
      ...(ram ? { downtimeBytes: ram['downtime-bytes'] } : {}),
      ...(x ? { xbzrle: { bytes: x.bytes, pages: x.pages, cacheMiss: x['cache-miss'], overflow: x.overflow } } : {}),
      ...(passes0 !== undefined && passes1 !== undefined ? { guestPassesPerSecond: (passes1 - passes0) / ((mt1 - mt0) / 1000) } : {}),
      ...(status === 'failed' ? { error: info['error-desc'] ?? 'failed' } : {}),
      ...(startError ? { note: startError } : {}),
      ...(spec.postcopy ? { postcopy: { ...pc, ...(ram ? { requests: ram['postcopy-requests'], postcopyBytes: ram['postcopy-bytes'] } : {}) } } : {}),
    };
  } finally {
    destRss.stop();
    destCpu.stop();
    await qmp?.close().catch(() => {});
    await dest.stop('SIGTERM');
    await machine?.destroy();
    await rm(dir, { recursive: true, force: true });
  }
}
