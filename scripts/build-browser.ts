/**
 * Bundles the core for the browser: src/browser/index.ts -> one ESM file,
 * dist/browser/livemig-core.js (with its source map and esbuild's metafile,
 * the list of every module in it). Run by `npm run build` after tsc.
 *
 * The build fails, naming the importer, when a module of the bundle imports a
 * Node built-in (`node:fs`, `fs`, ...) or the bundle uses a Node-only global
 * (Buffer, process, require, setImmediate) other than through globalThis:
 * nothing is stubbed or marked external, so what is in the bundle runs in a
 * browser as it is.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, type Metafile, type Plugin } from 'esbuild';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BROWSER_ENTRY = join(repoRoot, 'src', 'browser', 'index.ts');
export const BROWSER_BUNDLE = join(repoRoot, 'dist', 'browser', 'livemig-core.js');

const NODE_BUILTINS = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

/** Refuses every Node built-in with the module that imports it (esbuild alone says only "could not resolve"). */
const noNodeBuiltins: Plugin = {
  name: 'livemig-no-node-builtins',
  setup(b) {
    b.onResolve({ filter: /^[a-z_:/]+$/ }, (args) => {
      if (!NODE_BUILTINS.has(args.path) && !args.path.startsWith('node:')) return undefined;
      return { errors: [{ text: `the browser core must not import the Node built-in '${args.path}' (imported by ${relative(repoRoot, args.importer)}): put it behind an interface outside the core, or use a web-standard API` }] };
    });
  },
};

/**
 * Bare uses (a call or a member read) of Node-only globals in bundled code:
 * each would be a ReferenceError in a browser. `globalThis.Buffer` (a looked-up optional)
 * is fine and not matched; comments are stripped by esbuild before this runs.
 */
export function nodeGlobalsIn(code: string): string[] {
  const found = new Set<string>();
  for (const m of code.matchAll(/(?<![.\w$])(Buffer|process|require|setImmediate|__dirname|__filename)(?=\s*[.(])/g)) found.add(m[1]!);
  return [...found].sort();
}

export interface BrowserBundle {
  code: string;
  metafile: Metafile;
}

/** Bundles `entry` (default: the browser core); writes the files only when `outfile` is given. Rejects on a Node dependency. */
export async function bundleForBrowser(entry: string = BROWSER_ENTRY, outfile?: string): Promise<BrowserBundle> {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    platform: 'browser',
    // Metafile paths relative to the repository, wherever this runs from.
    absWorkingDir: repoRoot,
    format: 'esm',
    target: 'es2022',
    write: false,
    outfile: outfile ?? join(repoRoot, 'dist', 'browser', 'bundle.js'),
    sourcemap: outfile ? 'linked' : false,
    metafile: true,
    logLevel: 'silent',
    // The engine logs with the `debug` package in Node; the page gets a small livemig stand-in (its browser build reads `process`).
    alias: { debug: './src/browser/debug.ts' },
    plugins: [noNodeBuiltins],
  });
  const output = result.outputFiles.find((f) => f.path.endsWith('.js'))!;
  const globals = nodeGlobalsIn(output.text);
  if (globals.length > 0) throw new Error(`the browser core uses the Node-only global(s) ${globals.join(', ')}: read them through globalThis with a fallback (see src/wire/native-bytes.ts)`);
  if (outfile) {
    mkdirSync(dirname(outfile), { recursive: true });
    for (const file of result.outputFiles) writeFileSync(file.path, file.contents);
    writeFileSync(outfile.replace(/\.js$/, '.meta.json'), JSON.stringify(result.metafile, null, 1));
  }
  return { code: output.text, metafile: result.metafile };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const { code, metafile } = await bundleForBrowser(BROWSER_ENTRY, BROWSER_BUNDLE);
    process.stdout.write(`livemig: browser core ${relative(repoRoot, BROWSER_BUNDLE)}: ${Object.keys(metafile.inputs).length} modules, ${(code.length / 1024).toFixed(0)} KiB\n`);
  } catch (err) {
    // esbuild's BuildFailure carries the plugin's message in .errors.
    const errors = (err as { errors?: Array<{ text: string; location?: { file: string; line: number } | null }> }).errors;
    const text = errors?.length ? errors.map((e) => `  ${e.location ? `${e.location.file}:${e.location.line}: ` : ''}${e.text}`).join('\n') : `  ${(err as Error).message}`;
    process.stderr.write(`livemig: the browser core bundle failed:\n${text}\n`);
    process.exitCode = 1;
  }
}
