/**
 * QMP hardening against a hostile client on the same host, and escaping of
 * strings from outside before they reach a terminal: real sockets, and real
 * `livemig` child processes where memory or printed output is judged.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile as execFileCb, spawnSync } from 'node:child_process';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { LivemigProcess } from './helpers/livemig-process.js';
import { RawQmp, type QmpMessage } from './helpers/raw-qmp.js';
import { cliPath } from './helpers/paths.js';
import { QmpServer } from '../src/monitor/qmp-server.js';
import { qmpJson } from '../src/monitor/qmp-json.js';
import { isJsonObject, parseQmpRequest, QmpFloat } from '../src/monitor/qmp-parse.js';
import { Prng } from './helpers/prng.js';
import { printable } from '../src/wire/index.js';

const execFile = promisify(execFileCb);
const MiB = 1 << 20;

async function machine(dir: string, extra: string[] = []): Promise<{ proc: LivemigProcess; qmp: RawQmp; path: string }> {
  const path = join(dir, 'm.qmp');
  const proc = LivemigProcess.start(['--machine', 'test', '--ram', '16M', '--qmp', `unix:${path}`, ...extra]);
  await proc.waitFor('qmp');
  const qmp = await RawQmp.open(path);
  await qmp.next((m) => 'QMP' in m);
  assert.deepEqual((await qmp.execute('qmp_capabilities')).return, {});
  return { proc, qmp, path };
}

async function withMachine(body: (m: { proc: LivemigProcess; qmp: RawQmp; path: string; dir: string }) => Promise<void>, extra: string[] = []): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-qmph-'));
  const m = await machine(dir, extra);
  try {
    await body({ ...m, dir });
  } finally {
    m.qmp.close();
    await m.proc.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

const errorOf = (reply: QmpMessage): { class: string; desc: string } => {
  assert.ok(reply.error, `expected an error, got ${JSON.stringify(reply)}`);
  return reply.error;
};

/** Everything sent from `from` on, once `count` messages arrived. */
async function messagesAfter(qmp: RawQmp, from: number, count: number): Promise<QmpMessage[]> {
  await qmp.next((_m) => qmp.messages.length >= from + count, from);
  return qmp.messages.slice(from);
}

test('QMP numbers keep the type the client wrote: 1.0, 1e3 and integers beyond int64/uint64 are doubles (QmpFloat), as QEMU reads them', () => {
  assert.deepEqual(parseQmpRequest('{"a": 1, "b": -0, "c": "1.0", "d": "x\\"1.5"}'), { a: 1, b: -0, c: '1.0', d: 'x"1.5' });
  const parsed = parseQmpRequest('{"a": 1.0, "b": [1e3, -0.5, 2], "c": {"d": 2E-1}}') as { a: unknown; b: unknown[]; c: { d: unknown } };
  assert.deepEqual(parsed, { a: new QmpFloat(1), b: [new QmpFloat(1000), new QmpFloat(-0.5), 2], c: { d: new QmpFloat(0.2) } });
  assert.equal(qmpJson(parsed), '{"a":1,"b":[1000,-0.5,2],"c":{"d":0.2}}', 'printed (an echoed id) as numbers');
  // QEMU: int64, else uint64, else a double.
  assert.equal((parseQmpRequest('[18446744073709551615]') as unknown[])[0], 18446744073709551615);
  assert.ok((parseQmpRequest('[18446744073709551616]') as unknown[])[0] instanceof QmpFloat);
  assert.equal((parseQmpRequest('[-9223372036854775808]') as unknown[])[0], -9223372036854775808);
  assert.ok((parseQmpRequest('[-9223372036854775809]') as unknown[])[0] instanceof QmpFloat);
  assert.ok((parseQmpRequest(`[${'9'.repeat(400)}]`) as unknown[])[0] instanceof QmpFloat);
  // Text that is not JSON stays refused, in JSON.parse's words for the client's text.
  for (const text of ['{1.5: 2}', '{"a": 01}', '{"a": 1.}', '{"a": -}', '{"a": 1.5.5}', '[1.0', '"abc']) {
    assert.throws(() => parseQmpRequest(text), (err: Error) => {
      assert.ok(err instanceof SyntaxError, text);
      assert.throws(() => JSON.parse(text), { message: err.message });
      return true;
    });
  }
  // A client's string never passes for a double.
  const forged = parseQmpRequest('{"a": "\\u0000livemig-float-00000000-0000-0000-0000-000000000000:1.5"}') as { a: unknown };
  assert.equal(typeof forged.a, 'string');
  assert.equal(isJsonObject(new QmpFloat(1)), false);
});

test('QMP parser against JSON.parse: random JSON values read back the same (doubles boxed), and random mutations of their text are refused exactly when JSON.parse refuses them', () => {
  const seed = 20261204;
  const prng = new Prng(seed);
  const chars = ['"', '\\', '.', 'e', 'E', '-', '+', '0', '1', '9', ':', ',', '{', '}', '[', ']', ' ', 'a', '\u0000', '\u00e9'];
  const value = (depth: number): unknown => {
    switch (prng.int(depth > 3 ? 5 : 7)) {
      case 0: return prng.range(-1e6, 1e6);
      case 1: return (prng.next() - 0.5) * 10 ** prng.range(-5, 30);
      case 2: return Array.from({ length: prng.int(6) }, () => chars[prng.int(chars.length)]).join('');
      case 3: return prng.chance(0.5);
      case 4: return null;
      case 5: return Array.from({ length: prng.int(4) }, () => value(depth + 1));
      default: return Object.fromEntries(Array.from({ length: prng.int(4) }, (_, i) => [`k${i}${chars[prng.int(chars.length)]}`, value(depth + 1)]));
    }
  };
  const unbox = (v: unknown): unknown =>
    v instanceof QmpFloat ? v.value : Array.isArray(v) ? v.map(unbox) : v !== null && typeof v === 'object' ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, unbox(x)])) : v;
  for (let i = 0; i < 2000; i++) {
    const text = JSON.stringify(value(0));
    assert.deepEqual(unbox(parseQmpRequest(text)), JSON.parse(text), `seed ${seed}, value ${i}: ${text}`);
    // One character changed, inserted or removed: valid for one parser exactly when valid for the other.
    const at = prng.int(text.length + 1);
    const mutated = [
      text.slice(0, at) + chars[prng.int(chars.length)] + text.slice(at + 1),
      text.slice(0, at) + chars[prng.int(chars.length)] + text.slice(at),
      text.slice(0, at) + text.slice(at + 1),
    ][prng.int(3)]!;
    let expected: unknown;
    let refused = false;
    try {
      expected = JSON.parse(mutated);
    } catch {
      refused = true;
    }
    if (refused) assert.throws(() => parseQmpRequest(mutated), SyntaxError, `seed ${seed}, mutation ${i}: ${mutated}`);
    else assert.deepEqual(unbox(parseQmpRequest(mutated)), expected, `seed ${seed}, mutation ${i}: ${mutated}`);
  }
});

test('printable escapes controls, DEL, C1, lone surrogates, bidi controls and backslash; keeps the rest', () => {
  assert.equal(printable('plain ram0 ü 😀'), 'plain ram0 ü 😀');
  assert.equal(printable('\x1b]0;owned\x07\x1b[2J'), '\\x1b]0;owned\\x07\\x1b[2J');
  assert.equal(printable('a\\x1b'), 'a\\\\x1b', 'an escape in the input cannot pass for one of ours');
  assert.equal(printable('\x00\x7f\x9b\n'), '\\x00\\x7f\\x9b\\x0a');
  assert.equal(printable('x\u202Ey\u2066'), 'x\\u{202e}y\\u{2066}');
  assert.equal(printable('\ud800z\udc00'), '\\u{d800}z\\u{dc00}');
});

test('QMP dispatch by own names only: constructor, toString, __proto__ are no commands, arguments or capabilities', { timeout: 60_000 }, async () => {
  await withMachine(async ({ qmp }) => {
    for (const name of ['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf']) {
      const reply = await qmp.execute(name, { x: 1 });
      assert.deepEqual(reply.error, { class: 'CommandNotFound', desc: `The command ${name} has not been found` }, name);
    }
    // `__proto__` as a JSON key is an own property of the parsed request, and no argument.
    const from = qmp.messages.length;
    qmp.send('{"execute":"query-status","arguments":{"__proto__":{"x":1}},"id":"p"}\n');
    assert.match(errorOf((await qmp.next((m) => m.id === 'p', from)).message).desc, /^Parameter '__proto__' is unexpected$/);
    assert.match(errorOf(await qmp.execute('query-migrate', { constructor: 1 })).desc, /^Parameter 'constructor' is unexpected$/);
    assert.match(errorOf(await qmp.execute('migrate-set-parameters', { toString: 1 })).desc, /^Parameter 'toString' is unexpected$/);
    const cap = await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'constructor', state: true }] });
    assert.match(errorOf(cap).desc, /does not accept value 'constructor'/);
    assert.equal((await qmp.execute('query-status')).return.running, true);
  });
});

test('QMP refuses unexpected arguments for every command, before running it', { timeout: 60_000 }, async () => {
  await withMachine(async ({ qmp, proc }) => {
    const names = ((await qmp.execute('query-commands')).return as Array<{ name: string }>).map((c) => c.name);
    assert.ok(names.includes('quit') && names.includes('query-status') && names.length >= 15, names.join(' '));
    for (const name of names) {
      if (name === 'qmp_capabilities') continue; // already negotiated: refused as such
      const reply = await qmp.execute(name, { 'x-unexpected': 1 });
      assert.deepEqual(reply.error, { class: 'GenericError', desc: "Parameter 'x-unexpected' is unexpected" }, name);
    }
    // `quit` with a bad argument did not quit; `stop` did not stop.
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(proc.exitCode, null);
    assert.deepEqual((await qmp.execute('query-status')).return, { status: 'running', singlestep: false, running: true });
    // The parameter name a client sent is escaped in the reply.
    assert.equal(errorOf(await qmp.execute('query-status', { '\x1b[2J': 1 })).desc, "Parameter '\\x1b[2J' is unexpected");
  });
});

test('QMP migrate refuses a bad URI at once, naming what is wrong; nothing was started', { timeout: 60_000 }, async () => {
  await withMachine(async ({ qmp }) => {
    const reply = await qmp.execute('migrate', { uri: 'bogus:xyz' });
    assert.equal(reply.error.class, 'GenericError');
    assert.match(reply.error.desc, /Parameter 'uri'.*unknown migration protocol: bogus:xyz/);
    assert.match(errorOf(await qmp.execute('migrate', { uri: 'tcp:127.0.0.1' })).desc, /missing port/);
    assert.ok(errorOf(await qmp.execute('migrate', { uri: 'bogus:\x1b[2J' })).desc.includes('bogus:\\x1b[2J'), 'the URI is escaped');
    const info = (await qmp.execute('query-migrate')).return;
    assert.notEqual(info.status, 'failed', JSON.stringify(info));
    assert.equal((await qmp.execute('query-status')).return.running, true);
  });
});

test('QMP over bytes: invalid UTF-8 is a parse error, the next request works; one error per oversized or too deep request', { timeout: 120_000 }, async () => {
  await withMachine(async ({ qmp, proc }) => {
    // Invalid UTF-8 in the command name: a parse error, not a command named U+FFFD.
    let from = qmp.messages.length;
    qmp.socket.write(Buffer.concat([Buffer.from('{"execute":"query-'), Buffer.from([0xff, 0xfe]), Buffer.from('status","id":1}\n')]));
    qmp.send('{"execute":"query-status","id":2}\n');
    let got = await messagesAfter(qmp, from, 2);
    assert.deepEqual(got[0], { error: { class: 'GenericError', desc: 'JSON parse error, invalid UTF-8 sequence in string' } });
    assert.equal(got[1]!.id, 2);
    assert.equal(got[1]!.return.running, true);
    // A value split across writes in the middle of a multi-byte character still decodes.
    from = qmp.messages.length;
    const request = Buffer.from('{"execute":"query-status","id":"é"}\n');
    qmp.socket.write(request.subarray(0, 33));
    await new Promise((r) => setTimeout(r, 50));
    qmp.socket.write(request.subarray(33));
    assert.equal((await qmp.next((m) => m.id === 'é', from)).message.return.running, true);

    const rssBefore = await rssBytes(proc.child.pid!);
    // A 100 MB request in one line: one error, then the splitter is back in step.
    from = qmp.messages.length;
    const huge = Buffer.alloc(100 * MiB, 'A');
    Buffer.from('{"execute":"query-status","arguments":{"x":"').copy(huge);
    Buffer.from('"}}\n').copy(huge, huge.length - 4);
    qmp.socket.write(huge);
    qmp.send('{"execute":"query-status","id":"after-huge"}\n');
    await qmp.next((m) => m.id === 'after-huge', from, 60_000);
    got = qmp.messages.slice(from);
    assert.equal(got.length, 2, JSON.stringify(got.slice(0, 3)));
    assert.match(got[0]!.error.desc, /request larger than 1048576 bytes/);
    const rssAfter = await rssBytes(proc.child.pid!);
    assert.ok(rssAfter < rssBefore + 64 * MiB, `server RSS grew from ${rssBefore / MiB} MiB to ${rssAfter / MiB} MiB while skipping`);

    // A 16 MB garbage line (not JSON at all): one error.
    from = qmp.messages.length;
    qmp.socket.write(Buffer.alloc(16 * MiB, 'x'));
    qmp.send('\n{"execute":"query-status","id":"after-garbage"}\n');
    await qmp.next((m) => m.id === 'after-garbage', from, 60_000);
    got = qmp.messages.slice(from);
    assert.equal(got.length, 2, JSON.stringify(got.slice(0, 3)));
    assert.match(got[0]!.error.desc, /JSON parse error, invalid token 'x+'/);

    // Nested deeper than QEMU's 1024: one error, the rest of the value skipped.
    from = qmp.messages.length;
    qmp.send('['.repeat(5000) + ']'.repeat(5000) + '{"execute":"query-status","id":"after-deep"}');
    await qmp.next((m) => m.id === 'after-deep', from);
    got = qmp.messages.slice(from);
    assert.deepEqual(got[0], { error: { class: 'GenericError', desc: 'JSON nesting depth limit exceeded' } });
    assert.equal(got.length, 2);
  });
});

async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = /^VmRSS:\s+(\d+) kB/m.exec(status);
  assert.ok(kib, 'VmRSS in /proc/PID/status');
  return Number(kib[1]) * 1024;
}

test('QMP bounds a client that pipelines and never reads: server RSS stays bounded, replies arrive in order', { timeout: 240_000, skip: !existsSync('/proc/self/status') && 'needs /proc (Linux)' }, async () => {
  await withMachine(async ({ qmp, proc, path }) => {
    const pid = proc.child.pid!;
    for (let i = 0; i < 20; i++) await qmp.execute('query-commands');
    await new Promise((r) => setTimeout(r, 1000));
    const baseline = await rssBytes(pid);

    const REQUESTS = 200_000;
    const flood: Socket = netConnect(path);
    await once(flood, 'connect');
    flood.pause(); // never read, for now
    flood.on('error', () => {});
    const lines = ['{"execute":"qmp_capabilities","id":-1}'];
    for (let i = 0; i < REQUESTS; i++) lines.push(`{"execute":"query-commands","id":${i}}`);
    flood.write(lines.join('\n') + '\n');

    let peak = baseline;
    for (let s = 0; s < 12; s++) {
      await new Promise((r) => setTimeout(r, 500));
      peak = Math.max(peak, await rssBytes(pid));
    }
    // Other clients are still served while this one is stalled.
    assert.equal((await qmp.execute('query-status')).return.running, true);
    const BOUND = baseline + 64 * MiB;
    console.log(`QMP flood: server RSS baseline ${(baseline / MiB).toFixed(1)} MiB, peak ${(peak / MiB).toFixed(1)} MiB while not reading (bound ${(BOUND / MiB).toFixed(1)} MiB)`);
    assert.ok(peak < BOUND, `server RSS ${(peak / MiB).toFixed(1)} MiB exceeds ${(BOUND / MiB).toFixed(1)} MiB`);

    // Now read everything: the greeting, then every reply in order.
    let pending = '';
    let expected = -1;
    let greeting = false;
    let sawLast = false;
    const done = new Promise<void>((resolve, reject) => {
      flood.on('data', (chunk: Buffer) => {
        pending += chunk.toString('utf8');
        let nl: number;
        while ((nl = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          if (!greeting) {
            greeting = line.includes('"QMP"');
            continue;
          }
          if (line.includes('"id":"last"') && line.includes('"running":true')) {
            sawLast = true;
            continue;
          }
          const id = /"id":\s*(-?\d+)\}\s*$/.exec(line);
          if (!id || Number(id[1]) !== expected || !line.includes('"return"')) {
            reject(new Error(`reply ${expected}: ${line.slice(0, 200)}`));
            return;
          }
          expected++;
          if (expected === REQUESTS) resolve();
        }
      });
      flood.on('close', () => reject(new Error(`closed after ${expected} replies`)));
    });
    flood.resume();
    await done;
    flood.write('{"execute":"query-status","id":"last"}\n');
    await new Promise<void>((resolve) => {
      const check = (): void => {
        if (sawLast) resolve();
        else setTimeout(check, 20);
      };
      check();
    });
    flood.destroy();
    assert.equal((await qmp.execute('query-status')).return.running, true);
  });
});

test('QMP unix socket is owner-only (0600) whatever the umask; plain TCP on a non-loopback address warns', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-qmph-'));
  try {
    const path = join(dir, 'owner.qmp');
    const server = new QmpServer({ version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'test' }, commands: {} });
    const previous = process.umask(0);
    try {
      await server.listen(`unix:${path}`);
    } finally {
      process.umask(previous);
    }
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.deepEqual(await readdir(dir), ['owner.qmp'], 'no temporary directory left behind');
    const qmp = await RawQmp.open(path);
    await qmp.next((m) => 'QMP' in m);
    qmp.close();
    await server.close();

    // The CLI prints the warning for a reachable plain TCP monitor, and not for loopback.
    const open = LivemigProcess.start(['--machine', 'test', '--ram', '16M', '--qmp', 'tcp:0.0.0.0:0']);
    try {
      await open.waitFor('qmp');
      await waitUntil(() => open.stderr.includes('livemig: warning:'));
      assert.match(open.stderr, /livemig: warning: the QMP monitor on tcp:0\.0\.0\.0:\d+ accepts plain TCP from other hosts.*controls the machine.*exec:/);
    } finally {
      await open.stop();
    }
    const local = LivemigProcess.start(['--machine', 'test', '--ram', '16M', '--qmp', 'tcp:127.0.0.1:0']);
    try {
      await local.waitFor('running');
      assert.doesNotMatch(local.stderr, /warning/);
    } finally {
      await local.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

async function waitUntil(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

test('QMP over TLS: a good client certificate is served; plain TCP, no certificate, or a refused one are dropped', {
  timeout: 60_000,
  skip: !hasOpenssl && 'openssl is missing (apt-get install -y openssl)',
}, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-qmptls-'));
  const f = (name: string): string => join(dir, name);
  const ssl = (...args: string[]): Promise<unknown> => execFile('openssl', args, { cwd: dir });
  try {
    await ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=livemig test CA');
    await writeFile(f('server.ext'), 'subjectAltName=IP:127.0.0.1\n');
    for (const name of ['server', 'alice', 'mallory']) {
      await ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${name}`);
      await ssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f(`${name}.pem`), '-days', '2', ...(name === 'server' ? ['-extfile', f('server.ext')] : []));
    }
    const read = (name: string): Promise<Buffer> => readFile(f(name));
    const [ca, serverKey, serverCert] = await Promise.all([read('ca.pem'), read('server.key'), read('server.pem')]);
    const server = new QmpServer({
      version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'test' },
      commands: { 'query-status': { args: {}, run: () => ({ status: 'running', running: true }) } },
    });
    const warnings: string[] = [];
    const address = await server.listen('tcp:127.0.0.1:0', {
      onWarning: (t) => warnings.push(t),
      tls: { key: serverKey, cert: serverCert, ca, requestCert: true, rejectUnauthorized: true },
      authorize: (socket) => (socket.getPeerCertificate().subject?.CN === 'alice' ? undefined : 'only alice may use this monitor'),
    });
    const port = Number(address.split(':').at(-1));
    assert.deepEqual(warnings, []);

    /** Connect, send a request, and return what came back before the server closed (or 3 s passed). */
    const session = async (client: 'plain' | 'alice' | 'mallory' | 'anonymous'): Promise<string> => {
      const socket =
        client === 'plain'
          ? netConnect(port, '127.0.0.1')
          : tlsConnect({
              port,
              host: '127.0.0.1',
              ca,
              ...(client === 'anonymous' ? {} : { key: await read(`${client}.key`), cert: await read(`${client}.pem`) }),
            });
      socket.on('error', () => {});
      let text = '';
      socket.on('data', (c: Buffer) => {
        text += c.toString('latin1');
        if (text.includes('"id":1')) socket.end();
      });
      await once(socket, client === 'plain' ? 'connect' : 'secureConnect').catch(() => {});
      socket.write('{"execute":"qmp_capabilities"}\n{"execute":"query-status","id":1}\n');
      await Promise.race([new Promise((r) => socket.once('close', r)), new Promise((r) => setTimeout(r, 3000))]);
      const closed = socket.destroyed || socket.closed;
      socket.destroy();
      return closed ? text : `${text}(still open)`;
    };
    const good = await session('alice');
    assert.match(good, /"QMP"/);
    assert.match(good, /"return":\{"status":"running","running":true\},"id":1/);
    for (const client of ['plain', 'mallory', 'anonymous'] as const) {
      const text = await session(client);
      assert.doesNotMatch(text, /QMP|return|still open/, `${client}: ${text}`);
    }
    // Those attempts left the server serving others.
    assert.match(await session('alice'), /"id":1/);
    await server.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/** A stream whose one section idstr would retitle and clear the terminal. */
function hostileStream(machineName: string): Buffer {
  const idstr = Buffer.from('\x1b]0;pwned\x07\x1b[2J\u202Edev');
  const name = Buffer.from(machineName);
  const parts = [
    Buffer.from([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]), // QEVM, version 3
    Buffer.from([0x07]), be32(name.length), name, // configuration
    Buffer.from([0x04]), be32(1), Buffer.from([idstr.length]), idstr, be32(0), be32(1), // FULL section
    Buffer.from([0x7e]), be32(1), // footer
    Buffer.from([0x1f]), // EOF
  ];
  return Buffer.concat(parts);
}
function be32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
const RAW_CONTROLS = /[\x00-\x08\x0b-\x1f\x7f\u202e]/;

test('a hostile section idstr reaches neither `livemig analyze` output nor a destination\'s stderr raw', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livemig-esc-'));
  try {
    const file = join(dir, 'hostile.bin');
    await writeFile(file, hostileStream('livemig-test'));
    const analyzed = await execFile(process.execPath, [cliPath, 'analyze', file]).catch((err: { stdout: string; stderr: string }) => err);
    const out = analyzed.stdout + analyzed.stderr;
    assert.doesNotMatch(out, RAW_CONTROLS, JSON.stringify(out));
    assert.ok(out.includes('\\x1b]0;pwned\\x07\\x1b[2J\\u{202e}dev'), out);

    // A destination that receives it fails with an escaped message.
    const sock = join(dir, 'in.sock');
    const dest = LivemigProcess.start(['--machine', 'test', '--ram', '16M', '--incoming', `unix:${sock}`]);
    try {
      await dest.waitFor('listening');
      const source = netConnect(sock);
      source.on('error', () => {});
      await once(source, 'connect');
      source.end(hostileStream('livemig-test'));
      await dest.exited;
      assert.equal(dest.exitCode, 1, dest.stderr);
      assert.doesNotMatch(dest.stderr, RAW_CONTROLS, JSON.stringify(dest.stderr));
      assert.ok(dest.stderr.includes('\\x1b]0;pwned\\x07\\x1b[2J\\u{202e}dev'), dest.stderr);
    } finally {
      await dest.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('QMP echoes a hostile command name escaped', { timeout: 60_000 }, async () => {
  await withMachine(async ({ qmp }) => {
    const reply = await qmp.execute('\x1b[2J\x1b]0;x\x07');
    assert.deepEqual(reply.error, { class: 'CommandNotFound', desc: 'The command \\x1b[2J\\x1b]0;x\\x07 has not been found' });
  });
});

test('QMP JSON: integers beyond 2^53 print in full (uint64 sizes read back as set); the rest as JSON.stringify', () => {
  // libvirt's "unlimited" max-bandwidth, the largest size QAPI keeps, and its negative.
  assert.equal(qmpJson({ 'max-bandwidth': 9223372036853727232 }), '{"max-bandwidth":9223372036853727232}');
  assert.equal(qmpJson([18446744073709549568, -9223372036854775808, 2n ** 64n - 1n]), '[18446744073709549568,-9223372036854775808,18446744073709551615]');
  assert.notEqual(JSON.stringify(9223372036853727232), '9223372036853727232', 'the case this exists for');
  const ordinary = {
    return: { status: 'active', ram: { total: 1073741824, mbps: 1234.5, neg: -3, zero: -0 }, list: [1, 'a', null, undefined, true], none: undefined },
    s: 'quote " backslash \\ control \u0001 line\nend \u2028 é',
    nan: Number.NaN,
    inf: Number.POSITIVE_INFINITY,
    date: new Date(0),
    id: { a: [1, 2] },
  };
  assert.equal(qmpJson(ordinary), JSON.stringify(ordinary));
  assert.equal(qmpJson(undefined), 'null');
  assert.equal(qmpJson(Number.MAX_SAFE_INTEGER), JSON.stringify(Number.MAX_SAFE_INTEGER));
  assert.equal(qmpJson(1e300), BigInt(1e300).toString(), 'a huge integer-valued double prints as an integer');
});
