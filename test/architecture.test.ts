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
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import ts from 'typescript';
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
