/**
 * The layering of src/, checked on the TypeScript sources (static imports,
 * `export ... from`, side-effect imports and dynamic `import('literal')`,
 * type-only imports included: they are dependencies of the source too).
 *
 * - The core (wire, vmstate, savevm, ram, block) imports none of transport,
 *   cli, monitor, machine: machines build on RAM and savevm, transports on
 *   the wire's channel interfaces, never the other way.
 * - migration (the engine) imports neither cli nor monitor.
 * - No cycles among the directories src/<dir>/.
 * - The core runs in a browser: no Node built-in and no bare Node-only global
 *   in it (but for its listed Node-side files), and esbuild's browser bundle
 *   of it (src/browser/) holds only livemig sources; the bundle build refuses
 *   a Node built-in loudly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import ts from 'typescript';
import { bundleForBrowser, nodeGlobalsIn } from '../scripts/build-browser.js';
import { repoRoot } from './helpers/paths.js';

const srcRoot = join(repoRoot, 'src');

interface Edge {
  /** File, relative to the repository root. */
  file: string;
  specifier: string;
  from: string;
  to: string;
}

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...tsFiles(path));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

/** The src/ directory a path is in ('' for files directly in src/, undefined outside src/). */
function topDir(path: string): string | undefined {
  const rel = relative(srcRoot, path);
  if (rel.startsWith('..')) return undefined;
  const parts = rel.split(sep);
  return parts.length > 1 ? parts[0]! : '';
}

/** Every import between two different src/ directories. */
function crossDirectoryImports(): Edge[] {
  const edges: Edge[] = [];
  for (const file of tsFiles(srcRoot)) {
    const from = topDir(file)!;
    const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
    for (const ref of info.importedFiles) {
      const specifier = ref.fileName;
      if (!specifier.startsWith('.')) continue; // packages and node: builtins
      const to = topDir(resolve(dirname(file), specifier));
      if (to === undefined || to === from) continue;
      edges.push({ file: relative(repoRoot, file), specifier, from, to });
    }
  }
  return edges;
}

const edges = crossDirectoryImports();
const show = (bad: Edge[]): string => bad.map((e) => `  ${e.file}: '${e.specifier}' (${e.from} -> ${e.to})`).join('\n');

test('the sources were found and parsed (the checks below would otherwise pass vacuously)', () => {
  const dirs = new Set(edges.flatMap((e) => [e.from, e.to]));
  for (const d of ['wire', 'ram', 'savevm', 'migration', 'transport', 'machine', 'cli']) assert.ok(dirs.has(d), `no import from or to src/${d}/ found`);
});

const rules: Array<{ from: string[]; forbidden: string[]; why: string }> = [
  { from: ['wire', 'vmstate', 'savevm', 'ram', 'block'], forbidden: ['transport', 'cli', 'monitor', 'machine'], why: 'the core does not import transports, the CLI, the monitor or machines' },
  { from: ['migration'], forbidden: ['cli', 'monitor'], why: 'the migration engine does not import the CLI or the monitor' },
];
for (const rule of rules) {
  test(`import rule: ${rule.why}`, () => {
    const bad = edges.filter((e) => rule.from.includes(e.from) && rule.forbidden.includes(e.to));
    assert.deepEqual(bad, [], `${rule.why}; offending imports:\n${show(bad)}`);
  });
}

test('no import cycles among the src/ directories', () => {
  const graph = new Map<string, Map<string, Edge>>();
  for (const e of edges) {
    if (!graph.has(e.from)) graph.set(e.from, new Map());
    if (!graph.get(e.from)!.has(e.to)) graph.get(e.from)!.set(e.to, e);
  }
  // Tarjan's strongly connected components: every component of more than one directory is a cycle.
  let index = 0;
  const indexOf = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  const visit = (v: string): void => {
    indexOf.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v)?.keys() ?? []) {
      if (!indexOf.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, indexOf.get(w)!));
    }
    if (low.get(v) === indexOf.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) cycles.push(component.sort());
    }
  };
  for (const v of graph.keys()) if (!indexOf.has(v)) visit(v);
  const report = cycles
    .map((c) => {
      const inside = edges.filter((e) => c.includes(e.from) && c.includes(e.to));
      return `cycle among src/{${c.join(',')}}:\n${show(inside)}`;
    })
    .join('\n');
  assert.deepEqual(cycles, [], report);
});

// ---- The core in the browser (src/browser/, bundled by scripts/build-browser.ts) ----

/**
 * Core files that may use Node: they are outside the browser bundle, and a
 * browser build gets these capabilities from elsewhere (WebSocket channels,
 * no multifd threads, no files).
 */
const NODE_SIDE_CORE_FILES: Record<string, string> = {
  'src/wire/node-channels.ts': 'channels over Node files and streams',
  'src/block/file-block-device.ts': 'raw images on disk (node:fs)',
  'src/block/incoming-image.ts': 'the destination image file (node:fs)',
  'src/ram/multifd/': 'multifd: worker threads, sockets, zlib and zstd',
  'src/migration/node-channels.ts': "the engine's channels in Node (every transport, multifd), loaded at run time",
};
/** In a Node-side directory, but browser-safe: multifd's packet format and codec table (MigrationConfig's multifd parameters need them). */
const BROWSER_SAFE_IN_NODE_SIDE = new Set(['src/ram/multifd/packet.ts', 'src/ram/multifd/codec.ts']);
const nodeSide = (file: string): boolean =>
  !BROWSER_SAFE_IN_NODE_SIDE.has(file) && Object.keys(NODE_SIDE_CORE_FILES).some((k) => (k.endsWith('/') ? file.startsWith(k) : file === k));

test('the core imports no Node built-in and uses no bare Node-only global, except its listed Node-side files', () => {
  const bad: string[] = [];
  let checked = 0;
  // The migration engine too (outgoing.ts, incoming.ts: their channels are injected, migration/channels.ts).
  for (const dir of ['wire', 'vmstate', 'savevm', 'ram', 'block', 'migration', 'browser']) {
    for (const path of tsFiles(join(srcRoot, dir))) {
      const file = relative(repoRoot, path).split(sep).join('/');
      if (nodeSide(file)) continue;
      checked++;
      const text = readFileSync(path, 'utf8');
      for (const ref of ts.preProcessFile(text, true, true).importedFiles) {
        if (ref.fileName.startsWith('node:') || builtinModules.includes(ref.fileName)) bad.push(`${file}: imports '${ref.fileName}'`);
      }
      // Code only (comments dropped): a bare Buffer/process/setImmediate is a ReferenceError in a browser.
      const code = ts.transpileModule(text, { compilerOptions: { removeComments: true, target: ts.ScriptTarget.ES2022 } }).outputText;
      for (const name of nodeGlobalsIn(code)) bad.push(`${file}: uses the global ${name}`);
    }
  }
  assert.ok(checked > 30, `only ${checked} core files found`);
  assert.deepEqual(bad, [], `Node in the core (put it behind an interface, see src/wire/native-bytes.ts, or list the file as Node-side here):\n  ${bad.join('\n  ')}`);
});

test('the browser bundle holds the core and nothing of Node', async () => {
  const { metafile, code } = await bundleForBrowser();
  const inputs = Object.keys(metafile.inputs);
  const outside = inputs.filter((p) => !p.startsWith('src/'));
  assert.deepEqual(outside, [], 'every module of the bundle is a livemig source (no package, no Node built-in, no polyfill)');
  for (const dir of ['wire', 'vmstate', 'savevm', 'ram', 'block', 'migration', 'browser']) assert.ok(inputs.some((p) => p.startsWith(`src/${dir}/`)), `the bundle holds src/${dir}/`);
  const nodeSideIn = inputs.filter(nodeSide);
  assert.deepEqual(nodeSideIn, [], 'no Node-side file in the bundle');
  // The migration loops, with their injected channels.
  for (const file of ['src/migration/outgoing.ts', 'src/migration/incoming.ts', 'src/migration/config.ts', 'src/migration/channels.ts', 'src/browser/channels.ts']) assert.ok(inputs.includes(file), `the bundle holds ${file}`);
  assert.ok(!inputs.includes('src/migration/node-channels.ts'), "Node's channels (loaded by the engine at run time in Node) are not in the bundle");
  // Of the transports only the WebSocket channel (over the browser's own WebSocket), the errors it throws, its wake-up and the URI parser.
  const browserTransports = new Set(['src/transport/websocket-channel.ts', 'src/transport/errors.ts', 'src/transport/waiting.ts', 'src/transport/uri.ts']);
  assert.ok(inputs.includes('src/transport/websocket-channel.ts'), 'the bundle holds the WebSocket channel');
  // The page's v86 machine (v86 itself is loaded by the page) with its guest-share bounds, query-migrate's shape
  // for its progress, and the warm-up's scratch RAM pattern.
  const browserOthers = new Set(['src/machine/v86-machine.ts', 'src/machine/guest-share.ts', 'src/machine/shadow-copy.ts', 'src/machine/memory-consistency.ts', 'src/machine/v86-disk.ts', 'src/monitor/query-migrate.ts', 'src/machine/ram-pattern.ts']);
  for (const file of browserOthers) assert.ok(inputs.includes(file), `the bundle holds ${file}`);
  for (const forbidden of ['transport', 'cli', 'monitor', 'machine']) {
    const found = inputs.filter((p) => p.startsWith(`src/${forbidden}/`) && !browserTransports.has(p) && !browserOthers.has(p));
    assert.deepEqual(found, [], `src/${forbidden}/ is not in the bundle`);
  }
  assert.deepEqual(nodeGlobalsIn(code), []);
});

test('the bundle build fails loudly, naming the importer, on a Node built-in or a bare Node global', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'livemig-bundle-'));
  try {
    const withImport = join(dir, 'imports-fs.ts');
    writeFileSync(withImport, "import { readFileSync } from 'node:fs';\nexport const read = readFileSync;\n");
    await assert.rejects(bundleForBrowser(withImport), (err: { errors?: Array<{ text: string }> }) => {
      assert.match(err.errors?.[0]?.text ?? '', /must not import the Node built-in 'node:fs' \(imported by .*imports-fs\.ts\)/);
      return true;
    });
    const bareImport = join(dir, 'imports-os.ts');
    writeFileSync(bareImport, "import os from 'os';\nexport const cpus = os.cpus;\n");
    await assert.rejects(bundleForBrowser(bareImport), (err: { errors?: Array<{ text: string }> }) => /Node built-in 'os'/.test(err.errors?.[0]?.text ?? ''));
    const withGlobal = join(dir, 'uses-buffer.ts');
    writeFileSync(withGlobal, "export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');\n");
    await assert.rejects(bundleForBrowser(withGlobal), /Node-only global\(s\) Buffer/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
