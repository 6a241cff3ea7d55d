import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

/** The repository root (tests run from dist/test/...). */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** Streams captured from real QEMU 7.2, kept in the repository (test/fixtures/README.md says how each was made). */
export const fixturePath = (name: string): string => resolve(repoRoot, 'test', 'fixtures', name);
/** The built CLI entry point. */
export const cliPath = resolve(repoRoot, 'dist', 'src', 'cli', 'main.js');
