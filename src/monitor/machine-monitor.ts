/**
 * The QMP commands of a livemig machine, with QEMU's names, arguments, result
 * fields and refusals, and its events (MIGRATION and MIGRATION_PASS with the
 * `events` capability, STOP, RESUME).
 */
import { EventEmitter } from 'node:events';
import type { Machine } from '../machine/machine.js';
import {
  ACTIVE_STATES,
  POSTCOPY_STATES,
  type MigrationStatus,
  PARAMETER_TABLE,
  IncomingMigration,
  MigrationConfig,
  OutgoingMigration,
  type IncomingOptions,
  type IncomingResult,
  type IncomingStatus,
  type MigrationError,
  type MigrationCapabilities,
  allCapabilities,
  QEMU_CAPABILITIES,
  warmUpMigrations,
} from '../migration/index.js';
import { runHmpCommand, type HmpSource } from './hmp.js';
import { machineCommands, type MachineTypeInfo } from './machine-info.js';
import { dirtyRateCommands, DirtyRateMeter } from './dirty-rate.js';
import { serverTlsFor } from '../migration/security.js';
import { OBJECT_PROPERTY_NAMES, ObjectError, ObjectRegistry } from '../security/index.js';
import { checkArguments } from './arguments.js';
import { incomingInfo, outgoingInfo, qmpOutgoingInfo, type MigrationInfo } from './query-migrate.js';
import { QmpCommandError, QmpServer, type QmpCommandDefinition } from './qmp-server.js';
import { isLoopbackHost, parseMigrationUri, TransportError } from '../transport/index.js';
import { printable } from '../wire/printable.js';

export type RunState = 'running' | 'paused' | 'inmigrate' | 'finish-migrate' | 'postmigrate';

/** The QEMU version whose protocol we speak; the package names livemig. */
export const QMP_VERSION = { qemu: { major: 7, minor: 2, micro: 0 }, package: 'livemig 0.1.0' };

export interface MachineMonitorOptions {
  /** `defer` to wait for `migrate-incoming`, a URI to listen at once, or undefined for a running machine. */
  incoming?: string;
  /** How the destination receives disks and whether it starts the guest (see IncomingMigration). */
  incomingOptions?: IncomingOptions;
  /**
   * `x-livemig-check-guest`: the guest's own consistency checks (memory
   * pattern, disk block headers) and hashes, for tests and demos. The guest
   * must be paused. Absent: the command reports that this guest has none.
   */
  checkGuest?(): Promise<Record<string, unknown>>;
  /** The machine's migration parameters and capabilities (e.g. from `run --param/--cap`), shared by both directions. */
  config?: MigrationConfig;
  /** Credentials and authorization objects (`--object`, QMP object-add): what tls-creds and tls-authz name. */
  objects?: ObjectRegistry;
  /** query-machines: the machine types this program runs (default: this machine's own). */
  machineTypes?: readonly MachineTypeInfo[];
  /**
   * Rehearse a migration in memory once the monitor exists (warmUpMigrations(),
   * once per process), so the first real migration, either way, does not run
   * the engine before V8 has compiled it. Default true.
   */
  warmUp?: boolean;
}

export class MachineMonitor extends EventEmitter<{
  quit: [];
  loaded: [];
  incoming: [IncomingResult];
  /** Every status change of the incoming migration (postcopy's pauses and recoveries among them), with its error if any. */
  incomingStatus: [IncomingStatus, MigrationError | undefined];
  /** migrate-recover listens at this address. */
  recovering: [string];
  listening: [string];
  rejected: [string];
  warning: [string];
}> {
  readonly migration: OutgoingMigration;
  readonly config: MigrationConfig;
  readonly objects: ObjectRegistry;
  readonly server: QmpServer;
  private readonly commandTable: Record<string, QmpCommandDefinition>;
  runState: RunState;
  private incoming: IncomingMigration | undefined;
  private incomingStarted = false;
  private incomingAddress: string | undefined;
  /**
   * A machine has at most one incoming and one outgoing migration; like QEMU,
   * `query-migrate` reports the one started last (in a chain A -> B -> C, B
   * reports B -> C as soon as it started, never A -> B's `completed`).
   */
  private latest: 'incoming' | 'outgoing' | undefined;
  /** The destination's MIGRATION `setup` event was sent (it is held back until the source connects). */

  constructor(private readonly machine: Machine, private readonly options: MachineMonitorOptions = {}) {
    super();
    this.runState = options.incoming !== undefined ? 'inmigrate' : machine.running ? 'running' : 'paused';
    this.config = options.config ?? new MigrationConfig();
    this.objects = options.objects ?? new ObjectRegistry();
    // A destination sends nothing: no multifd send threads started ahead for it.
    this.migration = new OutgoingMigration(machine, this.config, { security: this.objects, prestartThreads: options.incoming === undefined });
    this.commandTable = this.commands();
    this.server = new QmpServer({ version: QMP_VERSION, commands: this.commandTable });
    this.wireOutgoingEvents();
    // After the caller's own start-up (a listening socket, the guest's first run); unref'd, so it never holds the process.
    if (options.warmUp !== false) setTimeout(() => void warmUpMigrations(), 0).unref();
  }

  private get events(): boolean {
    return this.config.capabilities.events;
  }

  private wireOutgoingEvents(): void {
    const m = this.migration;
    m.on('status', (status) => {
      // QEMU 7.2 enters (and announces) `device` only when it pauses before switchover.
      const announced = status !== 'device' || this.config.capabilities['pause-before-switchover'];
      const ended = (status === 'failed' || status === 'cancelled') && this.runState === 'finish-migrate';
      // The loop resumed the guest if it had stopped it: QEMU 7.2 says RESUME before `cancelled`, after `failed`.
      if (ended && status === 'cancelled') this.setRunState(this.machine.running ? 'running' : 'paused');
      if (this.events && announced) this.server.emitEvent('MIGRATION', { status });
      if (status === 'completed') this.runState = 'postmigrate';
      if (ended && status === 'failed') this.setRunState(this.machine.running ? 'running' : 'paused');
    });
    m.on('pass', (pass) => {
      if (this.events) this.server.emitEvent('MIGRATION_PASS', { pass });
    });
    m.on('stop', () => {
      this.runState = 'finish-migrate';
      this.server.emitEvent('STOP');
    });
  }

  /** `query-migrate`'s answer in-process, as a QMP client gets it (the metrics endpoint reads it at each scrape). */
  async queryMigrate(): Promise<MigrationInfo> {
    return this.runQuery<MigrationInfo>('query-migrate');
  }

  /** A query from the command table, run in-process (it answers synchronously). */
  private runQuery<T>(name: string): T {
    return this.commandTable[name]!.run({}, { id: 0, negotiated: true }) as T;
  }

  private setRunState(state: RunState): void {
    const wasRunning = this.runState === 'running';
    this.runState = state;
    if (state === 'running' && !wasRunning) this.server.emitEvent('RESUME');
    if (state !== 'running' && wasRunning) this.server.emitEvent('STOP');
  }

  /** Listen for the incoming migration and load it in the background. */
  async startIncoming(uri: string): Promise<string> {
    if (this.incomingStarted) throw new QmpCommandError('GenericError', 'The incoming migration has already been started');
    this.incomingStarted = true;
    // Capabilities and parameters set before migrate-incoming apply to the destination (multifd, as QEMU).
    const { capabilities: caps, parameters: params } = this.config.snapshot();
    let tls;
    try {
      tls = serverTlsFor(params, uri, this.objects);
    } catch (err) {
      this.incomingStarted = false;
      throw new QmpCommandError('GenericError', (err as Error).message);
    }
    const incomingOptions: IncomingOptions = {
      ...this.options.incomingOptions,
      ...(tls ? { tls } : {}),
      peerTimeoutMs: () => this.config.parameters['x-livemig-peer-timeout-ms'],
      ...(caps.multifd ? { multifd: { channels: params['multifd-channels'], compression: params['multifd-compression'] } } : {}),
      postcopy: caps['postcopy-ram'],
    };
    const incoming = new IncomingMigration(this.machine, incomingOptions);
    const before = { incoming: this.incoming, latest: this.latest };
    this.incoming = incoming;
    this.latest = 'incoming';
    incoming.on('rejected', (why) => this.emit('rejected', why));
    let setupAnnounced = false; // this incoming migration's MIGRATION 'setup' event
    incoming.on('status', (status) => {
      // QEMU 7.2's destination says `setup` when the source connects, not while it listens.
      if (this.events && status !== 'setup') {
        if (!setupAnnounced && status === 'active') this.server.emitEvent('MIGRATION', { status: 'setup' });
        this.server.emitEvent('MIGRATION', { status });
      }
      if (status !== 'setup') setupAnnounced = true;
      this.emit('incomingStatus', status, incoming.error);
    });
    incoming.on('loaded', () => this.emit('loaded'));
    incoming.on('resume', () => this.setRunState('running'));
    let address: string;
    try {
      address = await incoming.listen(uri);
    } catch (err) {
      // As QEMU 7.2: a migrate-incoming that could not listen (a bad URI, a port in use) may be retried.
      this.incomingStarted = false;
      this.incoming = before.incoming;
      this.latest = before.latest;
      throw err;
    }
    this.incomingAddress = address;
    // Loading starts now (a source that connects early is read at once). Where a source is told to start when we
    // listen (sockets), `listening` is said once guest RAM is prepared, so that it pays no page faults of ours
    // (IncomingMigration.ramPrepared); a file or a command's output is read at once, whatever is prepared.
    void incoming.run().then((result) => {
      if (result.status === 'completed' && !result.started) this.runState = 'paused';
      this.emit('incoming', result);
    });
    const parsed = parseMigrationUri(uri);
    if (parsed.kind === 'tcp' || parsed.kind === 'unix' || parsed.kind === 'ws') await incoming.ramPrepared;
    if (!tls && (parsed.kind === 'tcp' || parsed.kind === 'ws') && !isLoopbackHost(parsed.host)) {
      this.emit(
        'warning',
        `the migration listener on ${address} takes a plaintext stream from any host that can reach it: the guest's memory ` +
          'crosses the network unencrypted and anyone may send a guest; use tls-creds (README: Security) or listen on 127.0.0.1',
      );
    }
    // A load that already ended (a quick source, or migrate_cancel while RAM was prepared) has said how it ended.
    if (incoming.status !== 'completed' && incoming.status !== 'failed' && incoming.status !== 'cancelled') this.emit('listening', address);
    return address;
  }

  /** What human-monitor-command reads (the QMP queries' answers) and runs (the QMP commands, checked as the server checks them). */
  private hmpSource(): HmpSource {
    return {
      query: (name) => this.runQuery(name),
      execute: async (name, args) => {
        const command = this.commandTable[name]!;
        return command.run(checkArguments(args, command.args), { id: 0, negotiated: true });
      },
    };
  }

  /** Each command with the arguments it accepts: the server refuses any other before running it. */
  /** Object errors as QMP's GenericError. */
  private objectCommand(action: () => unknown): void {
    try {
      action();
    } catch (err) {
      if (err instanceof ObjectError) throw new QmpCommandError('GenericError', err.message);
      throw err;
    }
  }

  private commands(): Record<string, QmpCommandDefinition> {
    const caps = (): Readonly<MigrationCapabilities> => this.config.capabilities;
    return {
      migrate: {
        args: { uri: 'string', blk: 'bool?', inc: 'bool?', detach: 'bool?', resume: 'bool?' },
        run: async (a) => {
          if (a.resume) {
            // Postcopy recovery: only a paused postcopy migration resumes, to the destination's migrate-recover address.
            this.migration.resume(a.uri as string);
            return {};
          }
          if (this.runState === 'inmigrate') throw new QmpCommandError('GenericError', 'Guest is waiting for an incoming migration');
          if (ACTIVE_STATES.has(this.migration.status)) throw new QmpCommandError('GenericError', "There's a migration process in progress");
          if (this.runState === 'postmigrate') throw new QmpCommandError('GenericError', "Can't migrate the vm that was paused due to previous migration");
          if (a.inc) throw new QmpCommandError('GenericError', 'incremental block migration (inc) is not supported: livemig disks have no shared backing image; use blk');
          // A bad URI is refused now, as QEMU does, not reported later as a failed migration.
          try {
            parseMigrationUri(a.uri as string);
          } catch (err) {
            if (err instanceof TransportError) throw new QmpCommandError('GenericError', `Parameter 'uri' expects a valid migration URI: ${printable(err.message)}`);
            throw err;
          }
          this.migration.start(a.uri as string, { blk: a.blk === true });
          this.latest = 'outgoing';
          return {};
        },
      },
      'migrate-recover': {
        args: { uri: 'string' },
        run: async (a) => {
          if (!this.incoming) throw new QmpCommandError('GenericError', 'Migrate recover can only be run when postcopy is paused.');
          const address = await this.incoming.recover(a.uri as string);
          this.emit('recovering', address);
          return {};
        },
      },
      'migrate-incoming': {
        args: { uri: 'string' },
        run: async (a) => {
          if (this.options.incoming === undefined) throw new QmpCommandError('GenericError', "'-incoming' was not specified on the command line");
          await this.startIncoming(a.uri as string);
          return {};
        },
      },
      'query-migrate': {
        args: {},
        run: () => {
          if (this.latest === 'incoming' && this.incoming) {
            const e = this.incoming.error;
            const pc = this.incoming.postcopy;
            const postcopy = pc?.advised
              ? { ...pc.stats, ...(this.config.capabilities['postcopy-blocktime'] && pc.blocktime() ? { blocktime: pc.blocktime()! } : {}) }
              : undefined;
            return incomingInfo(this.incoming.status, this.incomingAddress, e ? { code: e.code, message: e.message } : undefined, postcopy);
          }
          const info = qmpOutgoingInfo(outgoingInfo(this.migration.snapshot()));
          // Without pause-before-switchover QEMU 7.2 stays `active` up to completion (see the MIGRATION event).
          if (info.status === 'device' && !caps()['pause-before-switchover']) info.status = 'active';
          return info;
        },
      },
      'migrate-set-capabilities': {
        args: { capabilities: 'array' },
        run: (a) => {
          const update: Record<string, boolean> = {};
          for (const item of a.capabilities as unknown[]) {
            if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new QmpCommandError('GenericError', "Invalid parameter type for 'capabilities', expected: array of objects");
            const c = checkArguments(item as Record<string, unknown>, { capability: 'string', state: 'bool' });
            if (!QEMU_CAPABILITIES.includes(c.capability as string)) {
              throw new QmpCommandError('GenericError', `Parameter 'capability' does not accept value '${printable(c.capability as string)}'`);
            }
            update[c.capability as string] = c.state as boolean;
          }
          this.migration.setCapabilities(update);
          return {};
        },
      },
      'query-migrate-capabilities': { args: {}, run: () => allCapabilities(caps()) },
      'migrate-set-parameters': {
        // Every parameter optional; values are checked by the configuration (QEMU's ranges and texts).
        args: Object.fromEntries(Object.keys(PARAMETER_TABLE).map((name) => [name, 'any?'] as const)),
        run: (a) => {
          this.migration.setParameters(a);
          return {};
        },
      },
      'query-migrate-parameters': { args: {}, run: () => ({ ...this.config.parameters }) },
      migrate_cancel: {
        args: {},
        run: () => {
          // The latest migration: a destination that waits or receives can be cancelled too (QEMU 7.2 cannot).
          if (this.latest === 'incoming' && this.incoming) this.incoming.cancel();
          else this.migration.cancel('migrate_cancel on the QMP monitor');
          return {};
        },
      },
      'migrate-start-postcopy': {
        args: {},
        run: () => {
          this.migration.startPostcopy();
          return {};
        },
      },
      'migrate-continue': {
        args: { state: 'string' },
        run: (a) => {
          if (this.migration.status !== a.state) throw new QmpCommandError('GenericError', `Migration not in expected state: ${this.migration.status}`);
          this.migration.continue(this.migration.status);
          return {};
        },
      },
      'query-status': { args: {}, run: () => ({ status: this.runState, singlestep: false, running: this.runState === 'running' }) },
      stop: {
        args: {},
        run: async () => {
          if (this.runState === 'inmigrate') throw new QmpCommandError('GenericError', 'Guest is waiting for an incoming migration');
          if (this.machine.running) await this.machine.pause();
          if (this.runState === 'running') this.setRunState('paused');
          return {};
        },
      },
      'object-add': {
        // Each type's own properties are checked by the registry, as QEMU's object_new_with_props.
        args: { 'qom-type': 'string', id: 'string', ...Object.fromEntries(OBJECT_PROPERTY_NAMES.map((name) => [name, 'any?'] as const)) },
        run: (a) => {
          const { 'qom-type': type, ...props } = a;
          this.objectCommand(() => this.objects.add(type as string, props));
          return {};
        },
      },
      'object-del': {
        args: { id: 'string' },
        run: (a) => {
          this.objectCommand(() => this.objects.delete(a.id as string));
          return {};
        },
      },
      cont: {
        args: {},
        run: () => {
          if (this.runState === 'inmigrate') throw new QmpCommandError('GenericError', 'Guest is waiting for an incoming migration; it starts when the migration completes');
          if (this.runState === 'finish-migrate') throw new QmpCommandError('GenericError', 'Migration is in its final stage');
          if (POSTCOPY_STATES.has(this.migration.status)) {
            throw new QmpCommandError('GenericError', `the migration is in ${this.migration.status}: the guest runs on the destination, and this copy is not current; it must stay paused`);
          }
          this.machine.resume();
          this.setRunState('running');
          return {};
        },
      },
      quit: {
        args: {},
        run: () => {
          // In postcopy each side holds part of the guest: quitting either loses it (QEMU quits anyway).
          const incomingStatus = this.incoming?.status;
          if (incomingStatus !== undefined && POSTCOPY_STATES.has(incomingStatus as MigrationStatus)) {
            throw new QmpCommandError('GenericError', `quit refused: the guest runs here in postcopy (${incomingStatus}) and ${this.incoming!.postcopy?.stats.missingPages ?? 'some'} of its pages are still at the source; quitting would lose it. Let the migration complete (or recover it)`);
          }
          if (POSTCOPY_STATES.has(this.migration.status)) {
            throw new QmpCommandError('GenericError', `quit refused: the migration is in ${this.migration.status} and the destination's guest still needs pages only this process has; let it complete (or recover it, or migrate_cancel to take the guest back here)`);
          }
          // As QEMU: the reply first, then SHUTDOWN, then the monitor closes.
          setImmediate(() => this.server.emitEvent('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' }));
          setTimeout(() => this.emit('quit'), 20);
          return {};
        },
      },
      'x-livemig-check-guest': {
        args: {},
        run: async () => {
          if (!this.options.checkGuest) throw new QmpCommandError('GenericError', 'this guest has no self-checks');
          if (this.machine.running) throw new QmpCommandError('GenericError', 'the guest must be paused (stop) for its self-checks');
          return this.options.checkGuest();
        },
      },
      'query-version': { args: {}, run: () => QMP_VERSION },
      'human-monitor-command': {
        args: { 'command-line': 'string', 'cpu-index': 'int?' },
        run: (a) => {
          // livemig's HMP has no per-CPU commands; QEMU's words for a CPU it does not have.
          if (a['cpu-index'] !== undefined && (a['cpu-index'] !== 0 || this.machine.kind === 'none')) throw new QmpCommandError('GenericError', "Parameter 'cpu-index' expects a CPU number");
          return runHmpCommand(a['command-line'] as string, this.hmpSource());
        },
      },
      ...machineCommands(this.machine, this.options.machineTypes),
      ...dirtyRateCommands(new DirtyRateMeter(this.machine)),
      'query-commands': { args: {}, run: () => this.server.commandNames().map((name) => ({ name })) },
    };
  }
}
