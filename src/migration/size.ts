/** Sizes on the command line: `134217728`, `128M`, `128MiB`, `1G`, `512k`. */
export function parseSize(text: string, what = 'size'): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new Error(`${what}: '${text}' is not a size (examples: 134217728, 128M, 1G)`);
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const bytes = Number(m[1]) * scale;
  if (!Number.isSafeInteger(bytes)) throw new Error(`${what}: '${text}' is too large`);
  return bytes;
}
