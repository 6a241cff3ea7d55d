#!/usr/bin/env node
/** The `livemig` command. */
import { Command } from 'commander';
import { analyzeCommand } from './analyze-command.js';
import { demoCommand } from './demo-command.js';

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

program
  .command('demo')
  .description('migrate a synthetic VM through a stream file and check the destination, then analyze the stream')
  .option('--ram-mib <n>', 'guest RAM in MiB', '64')
  .option('--keep <file>', 'keep the stream in FILE')
  .action(async (options: { ramMib: string; keep?: string }) => {
    process.exitCode = await demoCommand(options);
  });

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`livemig: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 2;
});
