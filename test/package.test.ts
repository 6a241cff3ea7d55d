/**
 * livemig as an installed package: `npm pack` the built tree, install the
 * tarball into an empty project, and use it there the way a user does —
 * run examples/custom-machine.mjs (it imports `livemig` by name) and the
 * installed CLI's v86 demo, type-check a TypeScript file against the
 * published declarations, and find deep imports closed.
 *
 * The tarball is packed from the current dist/ (`--ignore-scripts`: no
 * `prepare` rebuild inside the test; `npm test` builds first).
 *
 * Offline: this machine may have no registry access and an empty npm cache,
 * so `npm install --offline` cannot fetch livemig's dependencies. The test
 * copies them (and theirs, following package.json, optional ones left out)
 * from the repository's node_modules into the project's node_modules first;
 * npm then finds every dependency already installed and satisfied, and only
 * unpacks the tarball. Copies, not symlinks: nothing npm does in the project
 * can reach the repository's node_modules. The optional zstd-napi is not
 * copied; npm skips it when it cannot fetch it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from './helpers/paths.js';

const run = promisify(execFile);

function npmMissing(): string | false {
  try {
    execFileSync('npm', ['--version'], { stdio: 'ignore' });
    return false;
  } catch {
    return 'npm is not on PATH: the package cannot be packed and installed here';
  }
}

interface PackResult {
  filename: string;
  entryCount: number;
  files: Array<{ path: string }>;
}

/** livemig's dependencies and theirs, by name, as installed in the repository (optional ones left out). */
async function dependencyClosure(): Promise<string[]> {
  const seen = new Set<string>();
  const visit = async (packageJsonPath: string): Promise<void> => {
    const pkg = JSON.parse(await readFile(packageJsonPath, 'utf8')) as { dependencies?: Record<string, string> };
    for (const name of Object.keys(pkg.dependencies ?? {})) {
      if (seen.has(name)) continue;
      seen.add(name);
      await visit(join(repoRoot, 'node_modules', name, 'package.json'));
    }
  };
  await visit(join(repoRoot, 'package.json'));
  return [...seen];
}

test('the package: packed without tests or benchmarks, installed offline into an empty project, the example runs and the types check', { skip: npmMissing(), timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-package-'));
  // A private cache and no update check: nothing is read from or written to the user's npm setup.
  const env = { ...process.env, npm_config_cache: join(dir, 'npm-cache'), npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' };
  try {
    // ---- pack ----
    const packed = await run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', dir], { cwd: repoRoot, env, timeout: 60_000 });
    const [pack] = JSON.parse(packed.stdout) as PackResult[];
    assert.ok(pack, 'npm pack reported a tarball');
    const files = pack.files.map((f) => f.path);
    assert.deepEqual(files.filter((f) => /^(test|bench|scripts|docs|src)\/|^dist\/(test|bench|scripts)\//.test(f)), [], 'no tests, benchmarks, scripts, docs or TypeScript sources');
    assert.deepEqual(files.filter((f) => f.endsWith('.map')), [], 'no source maps (they would point at sources not shipped)');
    for (const f of ['package.json', 'README.md', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/qmp.js', 'dist/src/qmp.d.ts', 'dist/src/cli/main.js', 'dist/src/machine/test-machine-worker.js', 'guests/multiboot/livemig-test-kernel.bin', 'examples/custom-machine.mjs', 'web/index.html', 'web/page.js']) {
      assert.ok(files.includes(f), `the tarball holds ${f}`);
    }
    assert.ok(pack.entryCount < 400, `a lean tarball: ${pack.entryCount} files`);

    // ---- install into an empty project, offline ----
    const app = join(dir, 'app');
    await mkdir(join(app, 'node_modules'), { recursive: true });
    await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'livemig-consumer', version: '1.0.0', private: true, type: 'module' }, null, 2));
    for (const name of await dependencyClosure()) {
      await cp(join(repoRoot, 'node_modules', name), join(app, 'node_modules', name), { recursive: true });
    }
    const tarball = join(dir, pack.filename);
    await run('npm', ['install', '--no-audit', '--no-fund', '--offline', '--ignore-scripts', tarball], { cwd: app, env, timeout: 60_000 });
    const installed = JSON.parse(await readFile(join(app, 'node_modules', 'livemig', 'package.json'), 'utf8')) as { name: string };
    assert.equal(installed.name, 'livemig');
    assert.ok(!existsSync(join(app, 'node_modules', 'livemig', 'dist', 'test')), 'no tests installed');

    // ---- the example, from the project (it imports `livemig` by name) ----
    await cp(join(app, 'node_modules', 'livemig', 'examples', 'custom-machine.mjs'), join(app, 'custom-machine.mjs'));
    const example = await run(process.execPath, ['custom-machine.mjs'], { cwd: app, timeout: 60_000 });
    assert.match(example.stdout, /source: completed/);
    assert.match(example.stdout, /destination: RAM exact at step \d+/);
    assert.match(example.stdout, /^example OK$/m);

    // ---- the public entries, and nothing deeper ----
    const probe = `
      const lib = await import('livemig');
      const qmp = await import('livemig/qmp');
      let deep;
      try { await import('livemig/dist/src/ram/block.js'); deep = 'open'; } catch (e) { deep = e.code; }
      console.log(JSON.stringify({ lib: Object.keys(lib).sort(), qmp: Object.keys(qmp).sort(), deep, version: (await import('livemig/package.json', { with: { type: 'json' } })).default.version }));
    `;
    const probed = JSON.parse((await run(process.execPath, ['--input-type=module', '-e', probe], { cwd: app, timeout: 30_000 })).stdout) as { lib: string[]; qmp: string[]; deep: string; version: string };
    for (const name of ['OutgoingMigration', 'IncomingMigration', 'MigrationConfig', 'MigrationError', 'DenseRamBlock', 'DirtyBitmap', 'SaveStateRegistry', 'defineVmsd', 'field', 'NoneMachine', 'createTestMachine', 'analyzeFile']) {
      assert.ok(probed.lib.includes(name), `livemig exports ${name}`);
    }
    for (const name of ['QmpClient', 'QmpServer', 'MachineMonitor', 'queryMigrate', 'outgoingInfo']) assert.ok(probed.qmp.includes(name), `livemig/qmp exports ${name}`);
    assert.equal(probed.deep, 'ERR_PACKAGE_PATH_NOT_EXPORTED', 'deep imports are closed');
    assert.equal(probed.version, '0.1.0');

    // ---- the CLI the package installs ----
    const cli = await run(join(app, 'node_modules', '.bin', 'livemig'), ['--help'], { cwd: app, timeout: 30_000 });
    assert.match(cli.stdout, /Usage: livemig/);
    // The v86 machine reads its files at run time (v86's wasm from the v86 package, our multiboot kernel from guests/): found when installed.
    const demo = await run(join(app, 'node_modules', '.bin', 'livemig'), ['demo', '--machine', 'v86'], { cwd: app, timeout: 60_000 });
    assert.match(demo.stdout, /^demo OK$/m);

    // ---- the declarations: a TypeScript user's view ----
    await writeFile(
      join(app, 'check.ts'),
      `import { DenseRamBlock, DirtyBitmap, OutgoingMigration, IncomingMigration, MigrationConfig, defineVmsd, field, TARGET_PAGE_SIZE,
         type Machine, type DirtyLogSink, type SaveStateRegistry, type MigrationStatus, type IncomingResult } from 'livemig';
       import { QmpClient, queryMigrate, type MigrationInfo, type LivemigMigrationInfo } from 'livemig/qmp';
       import { PassThrough } from 'node:stream';

       const vmsd = defineVmsd<{ counter: number }>({ name: 'toy', version: 1, minimumVersion: 1, fields: [field.uint32('counter')] });
       class Toy implements Machine {
         readonly kind = 'toy';
         readonly machineName = 'toy';
         readonly serial = new PassThrough();
         readonly running = false;
         private readonly state = { counter: 0 };
         private readonly block = new DenseRamBlock('toy.ram', new Uint8Array(16 * TARGET_PAGE_SIZE));
         private readonly dirty = new DirtyBitmap(16);
         ramBlocks() { return [this.block]; }
         startDirtyLog(): void {}
         stopDirtyLog(): void {}
         async syncDirtyLog(sink: DirtyLogSink): Promise<void> { sink(this.block.idstr, this.dirty.words); }
         async pause(): Promise<void> {}
         resume(): void {}
         setThrottle(_percent: number): void {}
         registerDevices(registry: SaveStateRegistry): void { registry.register({ idstr: 'toy', vmsd, opaque: this.state }); }
         async destroy(): Promise<void> {}
       }
       const machine: Machine = new Toy();
       const out = new OutgoingMigration(machine, new MigrationConfig());
       const status: Promise<MigrationStatus> = out.finished;
       const info: LivemigMigrationInfo = queryMigrate(out);
       const result: Promise<IncomingResult> = new IncomingMigration(machine).run();
       async function watch(client: QmpClient): Promise<MigrationInfo> { return client.execute<MigrationInfo>('query-migrate'); }
       // @ts-expect-error: a URI is a string
       out.start(42);
       void status; void info; void result; void watch;
      `,
    );
    await writeFile(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          noEmit: true,
          // livemig's declarations use Node's types; a user's project has @types/node (here: the repository's).
          typeRoots: [join(repoRoot, 'node_modules', '@types')],
          types: ['node'],
        },
        files: ['check.ts'],
      }),
    );
    const tsc = join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');
    await run(process.execPath, [tsc, '-p', app], { cwd: app, timeout: 60_000 }).catch((err: { stdout: string; stderr: string }) => {
      assert.fail(`the declarations do not type-check a user's file:\n${err.stdout}${err.stderr}`);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
