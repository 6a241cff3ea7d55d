/** Sizes as people read and write them: `134217728`, `128M`, `128MiB`, `1G`, `512k` in; `1.50 GiB` out. */

/** Sizes on the command line: `134217728`, `128M`, `128MiB`, `1G`, `512k`. */
export function parseSize(text: string, what = 'size'): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new Error(`${what}: '${text}' is not a size (examples: 134217728, 128M, 1G)`);
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const bytes = Number(m[1]) * scale;
  if (!Number.isSafeInteger(bytes)) throw new Error(`${what}: '${text}' is too large`);
  return bytes;
}

/** A byte count in binary units (`512 B`, `1.50 MiB`, `12.3 GiB`); negative counts keep their sign. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = Math.abs(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const sign = bytes < 0 ? '-' : '';
  return unit === 0 ? `${Math.round(bytes)} B` : `${sign}${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}
