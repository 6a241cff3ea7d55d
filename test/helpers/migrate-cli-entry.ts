#!/usr/bin/env node
/**
 * Test-only entry: `livemig migrate / query / cancel` on a fresh commander program, so the
 * tests run them before (and independently of) their wiring in src/cli/main.ts.
 */
import { Command } from 'commander';
import { registerMigrateCommands } from '../../src/cli/migrate-command.js';

// `node --test dist/test/` also runs every file under test/helpers/ as a test file, without
// arguments: then there is nothing to do.
if (process.argv.length > 2) {
  const program = new Command();
  program.name('livemig').exitOverride((err) => {
    process.exit(err.exitCode === 0 ? 0 : 2);
  });
  registerMigrateCommands(program);
  program.parseAsync().catch((err: unknown) => {
    process.stderr.write(`livemig: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 2;
  });
}
