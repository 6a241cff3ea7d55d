/**
 * The HTML report of one migration: a header (outcome, times, downtime,
 * passes), bytes sent and dirtied per pass, dirty rate and throughput over
 * time, and the downtime's phases against the limit. One self-contained file:
 * inline CSS and SVG, no script, no network, so it opens from file://.
 * Every string from the input goes through escapeXml.
 */
import type { MigrationRecord } from './migration-events.js';
import { formatBytes } from '../migration/size.js';
import { PALETTE, barChart, byteTicks, escapeXml, lineChart, stackedBarChart } from './svg.js';


export const formatRate = (bytesPerSecond: number): string => `${formatBytes(bytesPerSecond)}/s`;

export function formatMs(ms: number): string {
  if (ms >= 10_000) return `${Number((ms / 1000).toFixed(1))} s`;
  if (ms >= 1000) return `${Number((ms / 1000).toFixed(2))} s`;
  return `${Number(ms.toFixed(ms < 10 ? 1 : 0))} ms`;
}

const FAILED = new Set(['failed', 'cancelled', 'cancelling', 'postcopy-paused']);

/** The report's sentences about the outcome (also used by the CLI's one-line summary). */
export function outcomeSentence(m: MigrationRecord): string {
  if (m.outcome === 'completed') return 'Migration completed';
  if (m.outcome === 'cancelled') return `Migration cancelled: ${m.reason ?? 'no reason recorded (cancelled on request)'}`;
  if (FAILED.has(m.outcome)) return `Migration ${m.outcome}: ${m.reason ?? 'no reason recorded'}`;
  return `Migration not finished in this file (last status: ${m.outcome})`;
}

export function renderReport(m: MigrationRecord, options: { source?: string; generatedAt?: string } = {}): string {
  const ok = m.outcome === 'completed';
  const failed = FAILED.has(m.outcome);
  const rows: Array<[string, string]> = [];
  if (m.totalTimeMs !== undefined) rows.push(['total time', formatMs(m.totalTimeMs)]);
  if (m.setupTimeMs !== undefined) rows.push(['setup time', formatMs(m.setupTimeMs)]);
  if (m.downtimeMs !== undefined) rows.push(['downtime', `${formatMs(m.downtimeMs)}${m.downtimeLimitMs !== undefined ? ` (limit ${formatMs(m.downtimeLimitMs)}${m.downtimeMs > m.downtimeLimitMs ? ', over it' : ''})` : ''}`]);
  else if (m.downtimeLimitMs !== undefined) rows.push(['downtime limit', formatMs(m.downtimeLimitMs)]);
  rows.push(['passes', String(m.passCount)]);
  if (m.transferredBytes !== undefined) rows.push(['RAM sent', `${formatBytes(m.transferredBytes)}${m.ramTotalBytes !== undefined ? ` for ${formatBytes(m.ramTotalBytes)} of RAM` : ''}`]);
  if (m.disk) rows.push(['disk', `${formatBytes(m.disk.transferredBytes)} of ${formatBytes(m.disk.totalBytes)} sent, ${formatBytes(m.disk.remainingBytes)} remaining`]);
  if (m.convergenceRatio !== undefined) rows.push(['convergence', `dirty rate / throughput ${m.convergenceRatio.toFixed(2)} in the last pass${m.trend ? `, ${m.trend}` : ''} (below 1 converges)`]);
  if (m.errorCode !== undefined && m.errorCode !== m.outcome) rows.push(['error code', m.errorCode]);
  rows.push(['read from', `${m.format}${options.source ? `: ${options.source}` : ''}, ${m.snapshots} snapshot${m.snapshots === 1 ? '' : 's'}`]);

  const sections: string[] = [];
  const passNote = m.passesFromSource
    ? "Per-pass figures from the source's own model (x-livemig-progress)."
    : 'Per-pass figures derived from successive query-migrate snapshots: a pass shorter than the polling interval is counted in the one before it, and dirtied bytes are the dirty rate at the pass\'s end × its duration.';
  if (m.passes.length > 0) {
    const categories = m.passes.map((p) => String(p.pass));
    sections.push(
      figure(
        barChart({
          id: 'passes',
          title: 'Bytes sent and dirtied per pass',
          categories,
          series: [
            { name: 'sent', color: PALETTE[0], values: m.passes.map((p) => p.sentBytes) },
            { name: 'dirtied', color: PALETTE[1], values: m.passes.map((p) => p.dirtiedBytes) },
          ],
          yLabel: 'bytes',
          xLabel: 'pass (dirty-sync-count)',
          formatValue: formatBytes,
          ticks: byteTicks,
        }),
        `${passNote} Dirtied above sent means the pass left more behind than it carried.`,
      ),
    );
  } else sections.push(`<p class="missing">No per-pass figures: the file holds no RAM figures.</p>`);

  if (m.rates.length > 0) {
    sections.push(
      figure(
        lineChart({
          id: 'rates',
          title: 'Dirty rate and throughput over time',
          series: [
            { name: 'dirty rate', color: PALETTE[3], points: m.rates.map((p) => [p.timeMs, p.dirtyRateBytesPerSecond]) },
            { name: 'throughput', color: PALETTE[0], points: m.rates.map((p) => [p.timeMs, p.throughputBytesPerSecond]) },
          ],
          xLabel: 'time since the migration started',
          yLabel: 'bytes per second',
          formatX: formatMs,
          formatY: formatRate,
          yTicks: byteTicks,
        }),
        'The migration converges while the dirty rate stays below the throughput.',
      ),
    );
  } else sections.push(`<p class="missing">No rate figures: the file holds no snapshot taken while the migration ran.</p>`);

  if (m.downtimePhasesMs) {
    const p = m.downtimePhasesMs;
    const total = p.pause + p.complete + p.flush + p.confirm;
    const over = m.downtimeLimitMs !== undefined && (m.downtimeMs ?? total) > m.downtimeLimitMs;
    const [longestName, longestMs] = (Object.entries(p) as Array<[string, number]>).reduce((a, b) => (b[1] > a[1] ? b : a));
    sections.push(
      figure(
        stackedBarChart({
          id: 'downtime',
          title: `Downtime ${formatMs(m.downtimeMs ?? total)} by phase`,
          segments: [
            { name: 'pause', color: PALETTE[4], value: p.pause },
            { name: 'complete', color: PALETTE[0], value: p.complete },
            { name: 'flush', color: PALETTE[2], value: p.flush },
            { name: 'confirm', color: PALETTE[1], value: p.confirm },
          ],
          ...(m.downtimeLimitMs !== undefined ? { limit: { value: m.downtimeLimitMs, label: `downtime-limit ${formatMs(m.downtimeLimitMs)}` } } : {}),
          formatValue: formatMs,
        }),
        `pause: stopping the guest and the last dirty-log sync; complete: sending what remained and the device state; flush: until the stream was written; confirm: until the destination said it had loaded it.${over ? ` The downtime went over its limit of ${formatMs(m.downtimeLimitMs!)}: most of it (${formatMs(longestMs)}) went to ${longestName}.` : ''}${m.switchoverReason ? ` Why it switched over then: ${escapeXml(m.switchoverReason)}` : ''}`,
      ),
    );
  } else if (ok) sections.push(`<p class="missing">No downtime phases in this file (a source other than livemig's reports only the total).</p>`);

  const title = `livemig migration report: ${m.outcome}`;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>${escapeXml(title)}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; max-width: 820px; }
h1 { font-size: 22px; margin: 0 0 12px; }
.outcome { padding: 10px 14px; border-radius: 6px; font-weight: 600; margin-bottom: 16px; }
.outcome.completed { background: #e6f4ea; color: #14532d; }
.outcome.failed { background: #fde8e8; color: #7f1d1d; }
.outcome.unfinished, .outcome.cancelled { background: #fff7e0; color: #6b4e00; }
table.summary { border-collapse: collapse; margin-bottom: 20px; }
table.summary th { text-align: left; font-weight: 500; color: #555; padding: 3px 16px 3px 0; white-space: nowrap; vertical-align: top; }
table.summary td { padding: 3px 0; }
figure { margin: 0 0 24px; }
figcaption { font-size: 13px; color: #555; margin-top: 4px; }
.missing { color: #6b4e00; }
.diagnosis { background: #fff7e0; padding: 10px 14px; border-radius: 6px; margin-bottom: 20px; }
.diagnosis ul { margin: 6px 0 0; padding-left: 20px; }
footer { font-size: 12px; color: #777; }
</style>
</head>
<body>
<h1>${escapeXml(title)}</h1>
<div class="outcome ${ok ? 'completed' : m.outcome === 'cancelled' ? 'cancelled' : failed ? 'failed' : 'unfinished'}" data-outcome="${escapeXml(m.outcome)}">${escapeXml(outcomeSentence(m))}</div>
<table class="summary">
${rows.map(([k, v]) => `<tr><th>${escapeXml(k)}</th><td>${escapeXml(v)}</td></tr>`).join('\n')}
</table>
${m.diagnosis ? `<div class="diagnosis"><strong>Diagnosis:</strong> ${escapeXml(m.diagnosis.summary)}${m.diagnosis.levers.length ? `<ul>${m.diagnosis.levers.map((l) => `<li>${escapeXml(l)}</li>`).join('')}</ul>` : ''}</div>` : ''}
${sections.join('\n')}
<footer>Drawn by livemig report${options.generatedAt ? ` on ${escapeXml(options.generatedAt)}` : ''}.</footer>
</body>
</html>
`;
}

/** `caption` is HTML: callers escape what came from the input. */
function figure(svg: string, caption: string): string {
  return `<figure>${svg}<figcaption>${caption}</figcaption></figure>`;
}
