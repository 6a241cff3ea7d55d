import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

/** The repository root (tests run from dist/test/...). */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** ../shared beside the checkout: reference facts and QEMU fixtures. */
export const sharedDir = resolve(repoRoot, '..', 'shared');
export const fixturePath = (name: string): string => resolve(sharedDir, 'fixtures', name);
/** The built CLI entry point. */
export const cliPath = resolve(repoRoot, 'dist', 'src', 'cli', 'main.js');
