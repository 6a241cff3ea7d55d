#!/usr/bin/env node
/** The `livemig` command. */
import { Command } from 'commander';
import { analyzeCommand } from './analyze-command.js';
import { reportCommand } from './report-command.js';
import { registerBenchCommand } from './bench-command.js';
import { describeGuestTypes, guestTypes } from '../guests/index.js';
import { demoCommand, type DemoOptions } from './demo-command.js';
import { registerMigrateCommands } from './migrate-command.js';
import { runCommand } from './run-command.js';
import { serveCommand } from './serve-command.js';
import { restoreTerminalOnExit } from './terminal.js';

restoreTerminalOnExit();

// A reader that went away (`livemig run --json | head`) is not a crash: stop quietly, as a shell tool does.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
}

const program = new Command();
program.name('livemig').description('Live migration of virtual machines, wire-compatible with QEMU 7.2').version('0.1.0');

program
  .command('analyze')
  .description("show what a migration stream holds (livemig's or real QEMU's): sections, RAM, device state")
  .argument('<file>', 'a migration stream, e.g. written by QEMU with migrate "exec:cat > FILE"')
  .option('--json', 'print the analysis as JSON')
  .option('--dump-ram <dir>', "write each RAM block's final contents to DIR/<block name>")
  .action(async (file: string, options: { json?: boolean; dumpRam?: string }) => {
    process.exitCode = await analyzeCommand(file, options);
  });

// Help texts from the guest-type registry.
const guestVariants = guestTypes()
  .filter((t) => t.variants && t.variants.length > 0)
  .map((t) => `${t.name}: ${t.variants!.map((v, i) => `${v.name} (${v.description}${i === 0 ? ', the default' : ''})`).join(' or ')}`)
  .join('; ');
const demoRamDefaults = guestTypes()
  .flatMap((t) => (t.variants && t.variants.length > 0 ? t.variants.map((v) => `${t.demo.defaultRam(v.name)} ${t.name} ${v.name}`) : [`${t.demo.defaultRam(undefined)} ${t.name}`]))
  .join(', ');

program
  .command('demo')
  .description('migrate a running guest between two processes over loopback TCP, with live progress')
  .option('--machine <kind>', `guest type: ${describeGuestTypes()}`, 'test')
  .option('--guest <guest>', guestVariants)
  .option('--ram <size>', `guest RAM (default: ${demoRamDefaults})`)
  .option('--dirty-rate <pages>', 'test machine: pages the guest writes per second (0 = as fast as it can)', '50000')
  .option('--postcopy', 'test machine: migrate in postcopy (capability postcopy-ram on both sides, migrate-start-postcopy at once): the guest moves first, its RAM follows')
  .action(async (options: DemoOptions) => {
    process.exitCode = await demoCommand(options);
  });

const collect = (value: string, previous: string[]): string[] => [...previous, value];
program
  .command('run')
  .description('run a machine; with --incoming wait for a migration into it, with --migrate-to migrate it away')
  .option('--machine <kind>', `guest type: ${describeGuestTypes()}`, 'test')
  .option('--guest <guest>', guestVariants)
  .option('--kernel <path>', 'v86: a multiboot kernel to boot instead of ours')
  .option('--serial-stdin', 'type standard input into the serial console')
  .option('--serial <target>', "the guest's serial output: stdio (stdout; livemig's own lines then go to stderr), none, or FILE (appended; livemig's lines stay on stdout)", 'stdio')
  .option('--name <name>', "the VM's name (as QEMU -name): the metrics' name label", 'livemig')
  .option('--metrics <address>', 'serve Prometheus metrics (KubeVirt names plus livemig_*) at http://HOST:PORT/metrics: tcp:HOST:PORT (port 0 picks one)')
  .option('--ram <size>', 'guest RAM (e.g. 128M, 1G)', '128M')
  .option('--incoming <uri>', "wait for a migration on URI (tcp:HOST:PORT, unix:PATH, ws://HOST:PORT/PATH, exec:CMD, file:PATH), or 'defer' for QMP migrate-incoming")
  .option('--qmp <uri>', 'serve the QMP monitor on unix:PATH (owner-only) or tcp:HOST:PORT[,tls-creds=ID[,tls-authz=ID]]')
  .option('--migrate-to <uri>', 'migrate the running guest to URI')
  .option('--migrate-after-ms <ms>', 'let the guest run this long before migrating', '1000')
  .option('--postcopy-after-ms <ms>', 'with --migrate-to and --cap postcopy-ram: switch to postcopy this long after the migration started (as QMP migrate-start-postcopy)')
  .option('--dirty-rate <pages>', 'test machine: cap on pages written per second (0 = unlimited)', '0')
  .option('--pattern <pattern>', 'test machine: sequential or random page order; none: RAM content zero, sequential or random[:SEED]', 'sequential')
  .option('--disk <path[,size=SIZE][,id=NAME]>', 'test machine: a raw disk image (created sparse with size=); with --incoming, where the migrated disk goes (written as PATH.livemig-incoming, renamed when complete)')
  .option('--disk-rate <blocks>', 'test machine: 4 KiB disk blocks the guest writes per second (0 = none)', '0')
  .option('--disk-pattern <pattern>', 'test machine: sequential or random disk block order', 'random')
  .option('--hda <path>', 'v86: IDE disk image (raw, used in place, migrated live as device hda with --cap block / blk); with --incoming, where the migrated disk goes (PATH must exist, of the source disk\'s size; written as PATH.livemig-incoming, renamed when complete)')
  .option('--hdb <path>', 'v86: second IDE disk image (as --hda, device hdb)')
  .option('--fda <path>', 'v86: floppy image (1.44 MB etc.; as --hda, device fda)')
  .option('--cdrom <path>', 'v86: CD-ROM image (read-only, never copied; the destination must have one of the same size)')
  .option('--disk-shared', 'v86: both sides open the same disk images (shared storage): nothing is copied, the source flushes them before the switchover')
  .option('--bios <path>', 'v86: BIOS image, e.g. /usr/share/seabios/bios.bin (boots from the media unless a kernel is given)')
  .option('--vga-bios <path>', 'v86: VGA BIOS image, e.g. /usr/share/seabios/vgabios-stdvga.bin')
  .option('--guest-share <percent>', 'v86: the guest\'s share of its thread while a migration shares it, 1 to 95 (default 50): more keeps the guest faster and the migration slower')
  .option('-S, --no-autostart', 'incoming: leave the guest paused after the migration until QMP cont (as QEMU -S)')
  .option('--param <name=value>', 'migration parameter, e.g. downtime-limit=300 (repeatable)', collect, [])
  .option('--cap <name[=on|off]>', 'migration capability, e.g. xbzrle (repeatable)', collect, [])
  .option('--object <type,id=ID,...>', 'create an object as QEMU -object: tls-creds-x509,id=tls0,dir=DIR,endpoint=server|client[,verify-peer=on]; tls-creds-psk,id=tls0,dir=DIR,endpoint=...[,username=NAME]; authz-simple,id=auth0,identity=DN; authz-list (JSON form) (repeatable)', collect, [])
  .option('--verify', 'incoming: report the RAM hash and memory check of the state as loaded (costs a RAM copy in the downtime)')
  .option('--json', 'print JSON events, one per line')
  .option('--exit-after-ms <ms>', 'exit this long after the guest runs (default: run until SIGINT/SIGTERM)')
  .action(async (options) => {
    process.exitCode = await runCommand(options);
    process.exit();
  });

program
  .command('report')
  .description('draw one migration from its JSON lines (livemig run --migrate-to ... --json, or livemig migrate --json) as a self-contained HTML page')
  .argument('<events>', "the JSON lines file ('-' for standard input)")
  .option('-o, --output <file>', 'the HTML file to write', 'report.html')
  .action(async (events: string, options: { output: string }) => {
    process.exitCode = await reportCommand(events, options);
  });

program
  .command('serve')
  .description('serve a page that runs a v86 VM in a browser tab and moves it live into a livemig run on this host and back')
  .option('--port <port>', 'the HTTP port (0 picks a free one)', '8086')
  .option('--host <host>', 'the address to listen on (the page drives VMs on this host: keep it on a trusted network)', '127.0.0.1')
  .option('--json', 'print JSON events, one per line (the first, serving, has the URL and port)')
  .action(async (options: { port: string; host: string; json?: boolean }) => {
    process.exitCode = await serveCommand(options);
    process.exit();
  });

registerMigrateCommands(program);
registerBenchCommand(program);

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`livemig: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 2;
});
