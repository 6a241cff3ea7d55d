/** `livemig report EVENTS.jsonl -o report.html`: one migration's JSON lines drawn as a self-contained HTML page. */
import { readFile, writeFile } from 'node:fs/promises';
import { ReportInputError, parseMigrationEvents } from '../report/migration-events.js';
import { outcomeSentence, renderReport } from '../report/report-html.js';

export interface ReportOptions {
  output?: string;
}

export async function reportCommand(file: string, options: ReportOptions): Promise<number> {
  let text: string;
  try {
    text = file === '-' ? await readStdin() : await readFile(file, 'utf8');
  } catch (err) {
    process.stderr.write(`livemig report: cannot read ${file}: ${(err as Error).message}\n`);
    return 2;
  }
  let html: string;
  let summary: string;
  try {
    const record = parseMigrationEvents(text, file === '-' ? 'standard input' : file);
    html = renderReport(record, { source: file, generatedAt: new Date().toISOString().replace('T', ' ').slice(0, 19) + ' UTC' });
    summary = `${outcomeSentence(record)}; ${record.passes.length} pass${record.passes.length === 1 ? '' : 'es'} drawn`;
  } catch (err) {
    if (!(err instanceof ReportInputError)) throw err;
    process.stderr.write(`livemig report: ${err.message}\n`);
    return 2;
  }
  const output = options.output ?? 'report.html';
  try {
    await writeFile(output, html);
  } catch (err) {
    process.stderr.write(`livemig report: cannot write ${output}: ${(err as Error).message}\n`);
    return 2;
  }
  process.stdout.write(`${summary}: wrote ${output}\n`);
  return 0;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
