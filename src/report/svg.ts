/**
 * Chart primitives as static SVG strings: axes, grouped bars, lines, a stacked
 * bar, legends and labels. Pure (no Node, no DOM), so the same charts go into
 * the migration report (an HTML file), into docs/ (GitHub renders SVG images
 * but runs no script) and into a browser.
 *
 * Every element a test or a reader may look for carries a class and data-*
 * attributes: `rect.bar[data-series]`, `path.line[data-series]`,
 * `rect.segment[data-segment]`, `line.limit`.
 */

/** Escapes text for SVG/HTML content and attribute values. */
export function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** A palette that stays readable for the common forms of colour blindness (Okabe-Ito). */
export const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#F0E442', '#000000'] as const;

const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';

/** Rounds for coordinates: short output, no visible loss. */
const r = (x: number): string => (Math.round(x * 10) / 10).toString();

/** About `count` round tick values covering [min, max] (1, 2, 5 x 10^n steps). */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [0, 1];
  if (max <= min) max = min + 1;
  const raw = (max - min) / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
  const ticks: number[] = [];
  for (let v = Math.floor(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1]! < max) ticks.push(Number((ticks[ticks.length - 1]! + step).toPrecision(12)));
  return ticks;
}

/**
 * Ticks for a byte axis: round numbers of one binary unit (KiB, MiB, GiB), so
 * labels read "8 MiB", not "8.39 MB" or "9.54 MiB".
 */
export function byteTicks(min: number, max: number, count = 5): number[] {
  let unit = 1;
  while (max / unit >= 1024 * 2 && unit < 2 ** 40) unit *= 1024;
  return niceTicks(min / unit, max / unit, count).map((t) => t * unit);
}

/** Powers of ten covering [min, max] (both > 0), for a log axis. */
export function logTicks(min: number, max: number): number[] {
  const lo = Math.floor(Math.log10(Math.max(min, 1e-9)));
  const hi = Math.ceil(Math.log10(Math.max(max, min * 10, 1e-9)));
  const ticks: number[] = [];
  for (let e = lo; e <= hi; e++) ticks.push(Number((10 ** e).toPrecision(12)));
  return ticks;
}

interface Frame {
  width: number;
  height: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
}

function open(id: string, title: string, frame: Frame, description: string): string {
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="${escapeXml(id)}" width="${frame.width}" height="${frame.height}" viewBox="0 0 ${frame.width} ${frame.height}" role="img" aria-label="${escapeXml(title)}">` +
    `<title>${escapeXml(title)}</title><desc>${escapeXml(description)}</desc>` +
    `<rect x="0" y="0" width="${frame.width}" height="${frame.height}" fill="#ffffff"/>` +
    `<text x="${frame.left}" y="20" ${FONT} font-size="15" font-weight="600" fill="#222">${escapeXml(title)}</text>`
  );
}

function legend(items: Array<{ name: string; color: string; dashed?: boolean }>, x: number, y: number): string {
  let out = `<g class="legend">`;
  let at = x;
  for (const item of items) {
    out += item.dashed
      ? `<line x1="${r(at)}" y1="${r(y - 4)}" x2="${r(at + 14)}" y2="${r(y - 4)}" stroke="${item.color}" stroke-width="2" stroke-dasharray="4 3"/>`
      : `<rect x="${r(at)}" y="${r(y - 10)}" width="12" height="12" fill="${item.color}"/>`;
    out += `<text x="${r(at + 18)}" y="${r(y)}" ${FONT} font-size="12" fill="#333">${escapeXml(item.name)}</text>`;
    at += 30 + item.name.length * 7;
  }
  return out + '</g>';
}

/** A value axis on the left with grid lines; returns the SVG and the value -> y mapping. */
function valueAxis(frame: Frame, ticks: number[], scale: 'linear' | 'log', label: string, format: (v: number) => string): { svg: string; y: (v: number) => number } {
  const lo = ticks[0]!;
  const hi = ticks[ticks.length - 1]!;
  const plotHeight = frame.height - frame.top - frame.bottom;
  const t = (v: number): number => (scale === 'log' ? Math.log10(Math.max(v, lo)) : v);
  const y = (v: number): number => frame.top + plotHeight * (1 - (t(v) - t(lo)) / (t(hi) - t(lo) || 1));
  let svg = `<g class="axis y-axis">`;
  for (const tick of ticks) {
    svg += `<line x1="${frame.left}" y1="${r(y(tick))}" x2="${frame.width - frame.right}" y2="${r(y(tick))}" stroke="#e3e3e3"/>`;
    svg += `<text x="${frame.left - 6}" y="${r(y(tick) + 4)}" ${FONT} font-size="11" fill="#555" text-anchor="end">${escapeXml(format(tick))}</text>`;
  }
  svg += `<text transform="translate(14 ${r(frame.top + plotHeight / 2)}) rotate(-90)" ${FONT} font-size="12" fill="#333" text-anchor="middle">${escapeXml(label)}</text>`;
  svg += `<line x1="${frame.left}" y1="${frame.top}" x2="${frame.left}" y2="${frame.height - frame.bottom}" stroke="#888"/></g>`;
  return { svg, y };
}

export interface BarSeries {
  name: string;
  color: string;
  /** One per category; undefined draws no bar (and is said so in the bar's title). */
  values: Array<number | undefined>;
}

export interface BarChartOptions {
  id: string;
  title: string;
  description?: string;
  categories: string[];
  series: BarSeries[];
  yLabel: string;
  formatValue: (value: number) => string;
  /** 'log': bars grow from `baseline` (default 1) up or down, for ratios. */
  scale?: 'linear' | 'log';
  baseline?: number;
  /** Horizontal dashed lines, e.g. a limit or a target. */
  references?: Array<{ value: number; label: string; color?: string }>;
  width?: number;
  height?: number;
  /** Rotate category labels (long names). */
  rotateLabels?: boolean;
  /** A line of small text under the chart (how to read it). */
  footnote?: string;
  /** A label under the category labels (what a category is). */
  xLabel?: string;
  /** Tick values for a linear axis (default niceTicks; byteTicks for bytes). */
  ticks?: (min: number, max: number) => number[];
}

/** Grouped vertical bars: one group per category, one bar per series. */
export function barChart(o: BarChartOptions): string {
  const scale = o.scale ?? 'linear';
  const frame: Frame = { width: o.width ?? 760, height: o.height ?? 340, left: 70, right: 20, top: 50, bottom: o.rotateLabels ? 150 : 50 };
  const values = o.series.flatMap((s) => s.values).filter((v): v is number => v !== undefined && Number.isFinite(v));
  const refs = (o.references ?? []).map((x) => x.value);
  const baseline = scale === 'log' ? (o.baseline ?? 1) : 0;
  const all = [...values, ...refs, baseline].filter((v) => scale === 'linear' || v > 0);
  const ticks = scale === 'log' ? logTicks(Math.min(...all), Math.max(...all)) : (o.ticks ?? niceTicks)(Math.min(0, ...all), Math.max(...all, 1e-9));
  const axis = valueAxis(frame, ticks, scale, o.yLabel, o.formatValue);
  const plotWidth = frame.width - frame.left - frame.right;
  const groupWidth = plotWidth / Math.max(1, o.categories.length);
  const barWidth = Math.max(1, (groupWidth * 0.8) / Math.max(1, o.series.length));
  let svg = open(o.id, o.title, frame, o.description ?? o.title) + legend(o.series, frame.left, 40) + axis.svg;
  const base = axis.y(scale === 'log' ? baseline : Math.max(0, ticks[0]!));
  // Many categories (a migration of 200 passes): label every n-th so labels do not overlap.
  const rawEvery = o.rotateLabels ? 12 / groupWidth : (7 * Math.max(...o.categories.map((c) => c.length), 1) + 6) / groupWidth;
  const labelEvery = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000].find((n) => n >= rawEvery) ?? Math.ceil(rawEvery);
  o.categories.forEach((category, i) => {
    const gx = frame.left + i * groupWidth + groupWidth * 0.1;
    o.series.forEach((s, j) => {
      const v = s.values[i];
      const label = `${category} — ${s.name}: ${v === undefined || !Number.isFinite(v) ? 'no value' : o.formatValue(v)}`;
      if (v === undefined || !Number.isFinite(v) || (scale === 'log' && v <= 0)) return;
      const top = axis.y(v);
      const y = Math.min(top, base);
      svg += `<rect class="bar" data-series="${escapeXml(s.name)}" data-category="${escapeXml(category)}" data-value="${v}" x="${r(gx + j * barWidth)}" y="${r(y)}" width="${r(Math.max(1, barWidth - 1))}" height="${r(Math.max(1, Math.abs(base - top)))}" fill="${s.color}"><title>${escapeXml(label)}</title></rect>`;
    });
    const cx = frame.left + (i + 0.5) * groupWidth;
    const ly = frame.height - frame.bottom + 14;
    if (i !== 0 && (i + 1) % labelEvery !== 0) return;
    svg += o.rotateLabels
      ? `<text transform="translate(${r(cx + 3)} ${r(ly - 6)}) rotate(-40)" ${FONT} font-size="11" fill="#333" text-anchor="end">${escapeXml(category)}</text>`
      : `<text x="${r(cx)}" y="${r(ly)}" ${FONT} font-size="11" fill="#333" text-anchor="middle">${escapeXml(category)}</text>`;
  });
  svg += `<line x1="${frame.left}" y1="${r(base)}" x2="${frame.width - frame.right}" y2="${r(base)}" stroke="#666"/>`;
  for (const ref of o.references ?? []) svg += referenceLine(frame, axis.y(ref.value), ref.label, ref.color ?? '#c00');
  if (o.xLabel) svg += `<text x="${r(frame.left + plotWidth / 2)}" y="${frame.height - frame.bottom + 34}" ${FONT} font-size="12" fill="#333" text-anchor="middle">${escapeXml(o.xLabel)}</text>`;
  if (o.footnote) svg += `<text class="footnote" x="${frame.left}" y="${frame.height - 8}" ${FONT} font-size="11" fill="#555">${escapeXml(o.footnote)}</text>`;
  return svg + '</svg>';
}

function referenceLine(frame: Frame, y: number, label: string, color: string): string {
  return (
    `<g class="reference"><line class="limit" x1="${frame.left}" y1="${r(y)}" x2="${frame.width - frame.right}" y2="${r(y)}" stroke="${color}" stroke-width="1.5" stroke-dasharray="6 4"/>` +
    `<text x="${frame.width - frame.right - 4}" y="${r(y - 4)}" ${FONT} font-size="11" fill="${color}" text-anchor="end">${escapeXml(label)}</text></g>`
  );
}

export interface LineSeries {
  name: string;
  color: string;
  /** [x, y] points, x ascending. */
  points: Array<[number, number]>;
}

export interface LineChartOptions {
  id: string;
  title: string;
  description?: string;
  series: LineSeries[];
  xLabel: string;
  yLabel: string;
  formatX: (x: number) => string;
  formatY: (y: number) => string;
  /** Tick values for the y axis (default niceTicks). */
  yTicks?: (min: number, max: number) => number[];
  width?: number;
  height?: number;
}

/** Lines over a shared x axis (time), each point also drawn as a dot. */
export function lineChart(o: LineChartOptions): string {
  const frame: Frame = { width: o.width ?? 760, height: o.height ?? 320, left: 80, right: 20, top: 50, bottom: 50 };
  const xs = o.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = o.series.flatMap((s) => s.points.map((p) => p[1]));
  const xTicks = niceTicks(Math.min(0, ...xs), Math.max(...xs, 1));
  const yTicks = (o.yTicks ?? niceTicks)(0, Math.max(...ys, 1e-9));
  const axis = valueAxis(frame, yTicks, 'linear', o.yLabel, o.formatY);
  const plotWidth = frame.width - frame.left - frame.right;
  const x0 = xTicks[0]!;
  const x1 = xTicks[xTicks.length - 1]!;
  const x = (v: number): number => frame.left + (plotWidth * (v - x0)) / (x1 - x0 || 1);
  let svg = open(o.id, o.title, frame, o.description ?? o.title) + legend(o.series, frame.left, 40) + axis.svg;
  svg += '<g class="axis x-axis">';
  for (const tick of xTicks) svg += `<text x="${r(x(tick))}" y="${frame.height - frame.bottom + 16}" ${FONT} font-size="11" fill="#555" text-anchor="middle">${escapeXml(o.formatX(tick))}</text>`;
  svg += `<line x1="${frame.left}" y1="${frame.height - frame.bottom}" x2="${frame.width - frame.right}" y2="${frame.height - frame.bottom}" stroke="#888"/>`;
  svg += `<text x="${r(frame.left + plotWidth / 2)}" y="${frame.height - 10}" ${FONT} font-size="12" fill="#333" text-anchor="middle">${escapeXml(o.xLabel)}</text></g>`;
  for (const s of o.series) {
    if (s.points.length === 0) continue;
    const d = s.points.map((p, i) => `${i === 0 ? 'M' : 'L'}${r(x(p[0]))} ${r(axis.y(p[1]))}`).join(' ');
    svg += `<path class="line" data-series="${escapeXml(s.name)}" data-points="${s.points.length}" d="${d}" fill="none" stroke="${s.color}" stroke-width="2"/>`;
    // Dots mark the measurements while they can be told apart.
    if (s.points.length <= 80) for (const p of s.points) svg += `<circle cx="${r(x(p[0]))}" cy="${r(axis.y(p[1]))}" r="2.5" fill="${s.color}"><title>${escapeXml(`${s.name} at ${o.formatX(p[0])}: ${o.formatY(p[1])}`)}</title></circle>`;
  }
  return svg + '</svg>';
}

export interface StackedBarOptions {
  id: string;
  title: string;
  description?: string;
  segments: Array<{ name: string; color: string; value: number }>;
  /** A limit the total is held against (drawn as a vertical dashed line). */
  limit?: { value: number; label: string };
  formatValue: (value: number) => string;
  width?: number;
}

/** One horizontal bar made of segments (e.g. the downtime's phases), against a limit. */
export function stackedBarChart(o: StackedBarOptions): string {
  const frame: Frame = { width: o.width ?? 760, height: 150, left: 20, right: 30, top: 50, bottom: 50 };
  const total = o.segments.reduce((n, s) => n + Math.max(0, s.value), 0);
  const ticks = niceTicks(0, Math.max(total, o.limit?.value ?? 0, 1e-9));
  const plotWidth = frame.width - frame.left - frame.right;
  const x = (v: number): number => frame.left + (plotWidth * v) / ticks[ticks.length - 1]!;
  let svg = open(o.id, o.title, frame, o.description ?? o.title) + legend(o.segments.map((s) => ({ name: `${s.name} ${o.formatValue(s.value)}`, color: s.color })), frame.left, 40);
  let at = 0;
  for (const s of o.segments) {
    const w = Math.max(0, s.value);
    svg += `<rect class="segment" data-segment="${escapeXml(s.name)}" data-value="${s.value}" x="${r(x(at))}" y="${frame.top + 4}" width="${r(Math.max(w > 0 ? 1 : 0, x(at + w) - x(at)))}" height="36" fill="${s.color}"><title>${escapeXml(`${s.name}: ${o.formatValue(s.value)}`)}</title></rect>`;
    at += w;
  }
  const axisY = frame.top + 48;
  svg += '<g class="axis x-axis">';
  for (const tick of ticks) svg += `<text x="${r(x(tick))}" y="${axisY + 14}" ${FONT} font-size="11" fill="#555" text-anchor="middle">${escapeXml(o.formatValue(tick))}</text>`;
  svg += `<line x1="${frame.left}" y1="${axisY}" x2="${frame.width - frame.right}" y2="${axisY}" stroke="#888"/></g>`;
  if (o.limit) {
    const lx = x(o.limit.value);
    const color = total > o.limit.value ? '#c00' : '#090';
    svg += `<g class="reference"><line class="limit" x1="${r(lx)}" y1="${frame.top - 2}" x2="${r(lx)}" y2="${axisY}" stroke="${color}" stroke-width="2" stroke-dasharray="5 3"/>`;
    const anchor = lx > frame.width - frame.right - 60 ? 'end' : lx < frame.left + 60 ? 'start' : 'middle';
    svg += `<text x="${r(lx)}" y="${axisY + 30}" ${FONT} font-size="11" fill="${color}" text-anchor="${anchor}">${escapeXml(o.limit.label)}</text></g>`;
  }
  return svg + '</svg>';
}
