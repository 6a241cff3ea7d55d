/** `livemig analyze FILE [--json] [--dump-ram DIR]`: what a migration stream holds. */
import { analyzeFile, dumpRamBlocks, type StreamAnalysis } from '../analyze/analyze-stream.js';
import { formatBytes, hex, jsonText } from './format.js';
import { printable } from '../wire/printable.js';

export interface AnalyzeCommandOptions {
  json?: boolean;
  dumpRam?: string;
}

/** Names in the output come from the stream: printable() keeps them from driving the terminal. */
function render(a: StreamAnalysis, file: string): string {
  const lines: string[] = [];
  const c = a.configuration;
  lines.push(`${file}: ${a.sizeBytes} bytes, machine '${printable(c.machineName)}'` + (c.capabilities ? `, capabilities ${printable(c.capabilities.join(','))}` : '') + (c.uuid ? `, uuid ${printable(c.uuid)}` : ''));
  lines.push('');
  lines.push('offset       type    id  idstr                           inst  ver        size');
  for (const s of a.sections) {
    lines.push(`${hex(s.offset)}   ${s.type.padEnd(5)} ${String(s.sectionId).padStart(4)}  ${printable(s.idstr).padEnd(30)} ${String(s.instanceId).padStart(5)} ${String(s.versionId).padStart(4)} ${String(s.sizeBytes).padStart(11)}`);
  }
  for (const cmd of a.commands) lines.push(`${hex(cmd.offset)}   COMMAND ${printable(cmd.name)} (${cmd.payloadBytes} bytes)`);
  if (a.eofOffset !== null) lines.push(`${hex(a.eofOffset)}   EOF`);
  if (a.vmdesc) lines.push(`${hex(a.vmdesc.offset)}   VMDESC  JSON trailer, ${a.vmdesc.lengthBytes} bytes, ${a.vmdesc.devices} device(s)`);
  if (a.ram) {
    lines.push('');
    const announced = a.ram.announcedTotalBytes === null ? 'no block list' : `${formatBytes(a.ram.announcedTotalBytes)} announced`;
    lines.push(`RAM: ${a.ram.blocks.length} block(s), ${announced}, ${a.ram.sections} section(s), ${formatBytes(a.ram.totals.bytes)} of page records`);
    for (const b of a.ram.blocks) {
      const len = b.lengthBytes === null ? '?' : formatBytes(b.lengthBytes);
      lines.push(`  ${printable(b.idstr)} (${len}): normal ${b.normalPages}, zero ${b.zeroPages}, xbzrle ${b.xbzrlePages} page(s); bytes normal ${b.normalBytes}, zero ${b.zeroBytes}, xbzrle ${b.xbzrleBytes}`);
    }
  }
  if (a.block) {
    lines.push('');
    const progress = a.block.progress.length > 0 ? `, progress ${a.block.progress[0]}..${a.block.progress.at(-1)}% in ${a.block.progress.length} record(s)` : '';
    lines.push(`Disks: ${a.block.devices.length} device(s), ${a.block.sections} block section(s), ${formatBytes(a.block.dataBytes)} of chunk data${progress}`);
    for (const d of a.block.devices) {
      const size = d.sizeBytes === null ? '' : ` (${formatBytes(d.sizeBytes)})`;
      lines.push(`  ${printable(d.name)}${size}: ${d.dataChunks} data chunk(s), ${d.zeroChunks} zero chunk(s), ${d.distinctChunks} distinct, ${d.resentChunks} re-sent`);
    }
  }
  if (a.devices.length > 0) {
    lines.push('');
    lines.push('Devices (decoded through the JSON trailer):');
    for (const d of a.devices) {
      lines.push(`  ${printable(d.name)} instance ${d.instanceId} (vmsd ${printable(d.vmsdName ?? '-')}, version ${d.version}) at ${hex(d.offset)}:`);
      lines.push(`    ${jsonText(d.state)}`);
    }
  }
  if (a.error) {
    lines.push('');
    lines.push(`error: ${a.error.message}`);
  }
  return lines.join('\n');
}

/** Returns the process exit code: 0 when the whole stream was read, 1 otherwise. */
export async function analyzeCommand(file: string, options: AnalyzeCommandOptions): Promise<number> {
  const { analysis, ramBlocks } = await analyzeFile(file, { keepRam: options.dumpRam !== undefined });
  if (options.json) process.stdout.write(jsonText(analysis, 2) + '\n');
  else process.stdout.write(render(analysis, file) + '\n');
  if (options.dumpRam !== undefined) {
    const paths = await dumpRamBlocks(ramBlocks, options.dumpRam);
    if (!options.json) for (const p of paths) process.stdout.write(`wrote ${p}\n`);
  }
  if (analysis.error) {
    if (options.json) process.stderr.write(`error: ${analysis.error.message}\n`);
    return 1;
  }
  return 0;
}
