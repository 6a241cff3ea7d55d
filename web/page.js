// The page `livemig serve` serves: a v86 VM in this tab, moved live to a
// `livemig run` on the server and back. The migration engine is livemig's
// browser core (/livemig-core.js); the server side is src/serve/serve.ts.
// The browser always connects: serve relays its WebSocket to the server's VM.
//
// window.livemigPage is the page's state, for people in the console and for
// test/serve-browser.test.ts.
import * as core from '/livemig-core.js';
// v86 is not in livemig's bundle: the page loads v86's own build, as served by livemig serve.
import { V86 } from '/v86/libv86.mjs';

const MiB = 1024 * 1024;
const params = new URLSearchParams(location.search);
// ?ram=MiB (default 128): the tests and the benchmark may ask for another size.
const ramSizeBytes = (Number(params.get('ram')) || 128) * MiB;
const STATUS_POLL_MS = 500;
/**
 * The tab sends far slower than Node does (one thread for the guest, the dirty-page scan and the
 * socket; about 10-15 MB/s measured in headless Chromium), and our test kernel dirties pages
 * faster than that even when throttled to 1%: a downtime limit of 300 ms is never met. The tab
 * allows 2 s, and its throttle starts higher and climbs faster than QEMU's defaults (20, +10).
 * ?downtime-limit=MS sets another limit.
 */
const MIGRATE_OUT_PARAMETERS = { 'downtime-limit': Number(params.get('downtime-limit')) || 2000, 'cpu-throttle-initial': 50, 'cpu-throttle-increment': 20 };
const SERIAL_KEEP_CHARS = 8000;

const $ = (id) => document.getElementById(id);
const el = {
  where: $('where'), screen: $('screen'), serial: $('serial'), counter: $('counter'),
  toServer: $('to-server'), toTab: $('to-tab'), fill: $('bar-fill'), progress: $('progress-text'),
  moves: $('moves'), server: $('server'), log: $('log'),
};

const state = {
  /** 'booting' | 'tab' | 'to-server' | 'server' | 'to-tab' | 'error' */
  where: 'booting',
  serverPid: undefined,
  serialText: '',
  serialBytes: 0,
  moves: [],
  server: null,
  errors: [],
  /** Set by the migration in progress: its latest query-migrate-shaped info. */
  progress: undefined,
};
window.livemigPage = state;

let machine;

function log(text, isError = false) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
  if (isError) {
    li.className = 'error';
    state.errors.push(text);
  }
  el.log.append(li);
  el.log.scrollTop = el.log.scrollHeight;
}

function formatBytes(n) {
  if (n === undefined || n === null) return '-';
  if (n < 1024) return `${n} B`;
  if (n < MiB) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / MiB).toFixed(1)} MiB`;
}

function setWhere(where, text) {
  state.where = where;
  el.where.textContent = text;
  el.where.className = where === 'to-server' || where === 'to-tab' ? 'moving' : '';
  el.toServer.disabled = where !== 'tab';
  el.toTab.disabled = where !== 'server';
  el.screen.classList.toggle('away', where === 'server');
}

// ---- The guest's output, whatever shape the machine offers it in ----

function onSerialText(text) {
  state.serialBytes += text.length;
  state.serialText = (state.serialText + text).slice(-SERIAL_KEEP_CHARS);
  el.serial.textContent = state.serialText;
  el.serial.scrollTop = el.serial.scrollHeight;
}

function listenSerial(m) {
  // The page's machine emits 'data' with each chunk of COM1 output (Uint8Array).
  m.serial.on('data', (bytes) => onSerialText(String.fromCharCode(...bytes)));
}

/** The guest's instruction counter, where the machine tells it. */
function instructions() {
  if (!machine) return undefined;
  const stats = typeof machine.stats === 'function' ? machine.stats() : undefined;
  return stats?.instructions;
}
state.instructions = instructions;
/** The guest's own memory check of the tab's RAM (its checksummed pages), read while paused for a moment. */
state.checkMemory = async () => {
  if (!machine) return undefined;
  await machine.pause();
  try {
    return machine.checkMemory();
  } finally {
    machine.resume();
  }
};

setInterval(() => {
  const n = instructions();
  el.counter.textContent = machine ? `${state.serialBytes} bytes${n !== undefined ? `, ${n.toLocaleString('en')} instructions` : ''}` : '';
}, 250);

// ---- Progress and results ----

function showProgress(info, direction) {
  state.progress = info;
  const p = info?.['x-livemig-progress'];
  const ram = info?.ram;
  const percent = p?.percent ?? (ram && ram.total ? Math.round((100 * (ram.total - ram.remaining)) / ram.total) : 0);
  el.fill.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  const parts = [`${direction}: ${info?.status ?? 'starting'}`, `${percent}%`];
  if (ram) parts.push(`pass ${ram['dirty-sync-count'] ?? 0}`, `${formatBytes(ram.remaining)} remaining`, `${formatBytes(ram.transferred)} sent`);
  if (p?.['eta-ms'] !== undefined) parts.push(`about ${(p['eta-ms'] / 1000).toFixed(1)} s left`);
  el.progress.textContent = parts.join(' · ');
}

function addMove(direction, result, error) {
  const move = { direction, ...result, ...(error ? { error } : {}) };
  state.moves.push(move);
  const tr = document.createElement('tr');
  const seconds = result?.totalMs ? result.totalMs / 1000 : undefined;
  const throughput = seconds && result.bytes ? `${((result.bytes * 8) / seconds / 1e6).toFixed(0)} Mbit/s` : '-';
  const cells = [direction, error ? `failed: ${error}` : result.status, result?.totalMs !== undefined ? `${Math.round(result.totalMs)} ms` : '-', result?.downtimeMs !== undefined ? `${Math.round(result.downtimeMs)} ms` : '-', formatBytes(result?.bytes), throughput];
  for (const [i, text] of cells.entries()) {
    const td = document.createElement('td');
    td.textContent = text;
    if (i === 1 && error) td.className = 'failed';
    tr.append(td);
  }
  el.moves.append(tr);
  if (!error) {
    el.fill.style.width = '100%';
    el.progress.textContent = `${direction}: completed in ${Math.round(result.totalMs)} ms, downtime ${Math.round(result.downtimeMs)} ms`;
  }
}

function showServer(status) {
  state.server = status;
  const vm = status.vm;
  const rows = [];
  if (!vm) rows.push(['VM', status.lastVmEnd ?? 'none']);
  else {
    rows.push(['VM', `livemig run, pid ${vm.pid} (${vm.phase})`]);
    const check = vm.memoryCheck;
    rows.push(['memory check', check ? (check.ok ? ['passed', 'ok'] : [`FAILED: ${check.reason ?? ''}`, 'bad']) : 'not yet']);
    rows.push(['guest', vm.running ? 'running' : 'paused']);
    if (vm.instructions !== undefined) rows.push(['instructions', vm.instructions.toLocaleString('en')]);
    if (vm.serialBytes !== undefined) rows.push(['serial bytes', String(vm.serialBytes)]);
  }
  if (status.move?.error) rows.push(['last move', [status.move.error, 'bad']]);
  el.server.replaceChildren(
    ...rows.flatMap(([name, value]) => {
      const dt = document.createElement('dt');
      dt.textContent = name;
      const dd = document.createElement('dd');
      const [text, cls] = Array.isArray(value) ? value : [value, ''];
      dd.textContent = text;
      if (cls) dd.className = cls;
      return [dt, dd];
    }),
  );
  // The server's guest writes to its serial console too: show it while the VM is there.
  if (vm && state.where === 'server' && vm.serialTail) {
    el.serial.textContent = state.serialText + vm.serialTail;
    el.serial.scrollTop = el.serial.scrollHeight;
  }
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const value = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(value.error ?? `${path}: HTTP ${response.status}`);
  return value;
}

const wsUrl = (path) => `ws://${location.host}${path}`;

async function pollStatus() {
  try {
    showServer(await api('/api/status'));
  } catch (err) {
    log(`status: ${err.message}`, true);
  }
}

// ---- The VM in this tab ----

function machineOptions(incoming) {
  return {
    V86,
    wasmUrl: '/v86/v86.wasm',
    screenContainer: el.screen,
    ramSizeBytes,
    incoming,
    ...(incoming ? {} : { multiboot: '/guests/livemig-test-kernel.bin' }),
  };
}

async function destroyMachine() {
  const m = machine;
  machine = undefined;
  try {
    await m?.destroy?.();
  } catch (err) {
    log(`stopping the tab's VM: ${err.message}`, true);
  }
}

async function bootHere() {
  setWhere('booting', 'booting in this tab…');
  state.serialText = '';
  state.serialBytes = 0;
  machine = await core.createBrowserV86Machine(machineOptions(false));
  listenSerial(machine);
  setWhere('tab', 'in this tab');
  log(`booted the multiboot test kernel in this tab (${ramSizeBytes / MiB} MiB)`);
}

async function migrateToServer() {
  setWhere('to-server', 'moving to the server…');
  let grant;
  try {
    grant = await api('/api/to-server', { ramSizeBytes });
  } catch (err) {
    log(`migrate to server: ${err.message}; the VM keeps running in this tab`, true);
    setWhere('tab', 'in this tab');
    return;
  }
  log(`the server started livemig run (pid ${grant.pid}); migrating`);
  let result;
  try {
    // auto-converge, as `livemig demo --machine v86` does: the guest shares the tab's one thread with the
    // migration, and can dirty pages faster than the tab sends them; it is slowed down until the rest fits.
    result = await core.migrateOut(machine, wsUrl(grant.wsPath), { capabilities: { 'auto-converge': true }, parameters: MIGRATE_OUT_PARAMETERS, onProgress: (info) => showProgress(info, 'to the server') });
  } catch (err) {
    result = { status: 'failed', error: err.message };
  }
  if (result.status !== 'completed') {
    const why = result.error ?? result.status;
    addMove('tab → server', result, why);
    log(`migration to the server ${result.status}: ${why}; the VM keeps running in this tab`, true);
    setWhere('tab', 'in this tab');
    return;
  }
  addMove('tab → server', result);
  await destroyMachine();
  state.serverPid = grant.pid;
  setWhere('server', `on the server, pid ${grant.pid}`);
  log(`the VM runs on the server (pid ${grant.pid}): ${Math.round(result.totalMs)} ms in all, downtime ${Math.round(result.downtimeMs)} ms`);
  await pollStatus();
}

async function bringBack() {
  const pid = state.serverPid;
  setWhere('to-tab', 'moving into this tab…');
  try {
    machine = await core.createBrowserV86Machine(machineOptions(true));
  } catch (err) {
    log(`bring back: this tab cannot make a VM: ${err.message}; the VM keeps running on the server`, true);
    setWhere('server', `on the server, pid ${pid}`);
    return;
  }
  state.serialText = '';
  state.serialBytes = 0;
  listenSerial(machine);
  let grant;
  try {
    grant = await api('/api/to-tab', {});
  } catch (err) {
    await destroyMachine();
    log(`bring back: ${err.message}; the VM keeps running on the server`, true);
    setWhere('server', `on the server, pid ${pid}`);
    return;
  }
  let result;
  try {
    result = await core.migrateIn(machine, wsUrl(grant.wsPath), { onProgress: (info) => showProgress(info, 'into this tab') });
  } catch (err) {
    result = { status: 'failed', error: err.message };
  }
  const running = result.status === 'completed';
  // The server keeps its copy paused until told: never two running copies, never none.
  let confirm;
  try {
    confirm = await api('/api/to-tab/confirm', running ? { running: true } : { running: false, error: String(result.error ?? result.status) });
  } catch (err) {
    confirm = { where: running ? 'unknown' : 'server', error: err.message };
  }
  if (running && confirm.where === 'tab') {
    // The downtime is the source's to measure: the server's query-migrate has it.
    const info = (await api('/api/status').catch(() => undefined))?.move?.info;
    if (info?.status === 'completed') result = { ...result, downtimeMs: info.downtime, sourceTotalMs: info['total-time'] };
    addMove('server → tab', result);
    state.serverPid = undefined;
    setWhere('tab', 'in this tab');
    log(`the VM runs in this tab again: ${Math.round(result.totalMs)} ms in all, downtime ${Math.round(result.downtimeMs)} ms`);
  } else if (running) {
    // This tab runs it, but the server did not let its copy go: say so rather than guess.
    addMove('server → tab', result, `the server did not confirm: ${confirm.error}`);
    setWhere('tab', 'in this tab (the server did not confirm the hand-over)');
    log(`the server did not confirm the hand-over: ${confirm.error}`, true);
  } else {
    const why = result.error ?? result.status;
    addMove('server → tab', result, why);
    await destroyMachine();
    setWhere('server', `on the server, pid ${pid}`);
    log(`bringing the VM back failed: ${why}; it keeps running on the server (pid ${pid})`, true);
  }
  await pollStatus();
}

el.toServer.addEventListener('click', () => void migrateToServer().catch((err) => log(`migrate to server: ${err.message}`, true)));
el.toTab.addEventListener('click', () => void bringBack().catch((err) => log(`bring back: ${err.message}`, true)));
setInterval(() => void pollStatus(), STATUS_POLL_MS);

// A fresh page: if the VM is on the server, offer to bring it back; otherwise boot one here.
try {
  const status = await api('/api/status');
  showServer(status);
  if (status.vm?.phase === 'migrated') {
    // Sent to a tab that never confirmed: the server keeps it paused rather than risk two running copies.
    setWhere('error', `paused on the server (pid ${status.vm.pid}): it was sent to a tab that did not confirm it runs`);
    log('the VM was sent to another tab, which did not confirm; the server keeps it paused', true);
  } else if (status.vm) {
    state.serverPid = status.vm.pid;
    setWhere('server', `on the server, pid ${status.vm.pid}`);
    log(`the VM runs on the server (pid ${status.vm.pid}); "Bring it back" moves it into this tab`);
  } else if (typeof core.createBrowserV86Machine !== 'function') {
    setWhere('error', 'nowhere: this build of livemig-core.js has no browser v86 machine yet');
    log('livemig-core.js has no createBrowserV86Machine (run npm run build with the browser engine)', true);
  } else {
    await bootHere();
  }
} catch (err) {
  setWhere('error', `nowhere: ${err.message}`);
  log(err.message, true);
}
