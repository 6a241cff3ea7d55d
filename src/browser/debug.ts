/**
 * The browser bundle's stand-in for the `debug` package (scripts/build-browser.ts
 * aliases `debug` to this file; Node keeps the package). The same call shape —
 * createDebug('livemig:migration')(format, ...args) — logged with console.debug
 * when the page enabled the namespace: localStorage.debug = 'livemig:*' (the
 * package's own browser switch), or globalThis.LIVEMIG_DEBUG.
 */
type Log = ((format: string, ...args: unknown[]) => void) & { enabled: boolean; namespace: string };

function enabledPatterns(): string {
  const g = globalThis as { LIVEMIG_DEBUG?: unknown; localStorage?: { getItem(key: string): string | null } };
  if (typeof g.LIVEMIG_DEBUG === 'string') return g.LIVEMIG_DEBUG;
  try {
    return g.localStorage?.getItem('debug') ?? '';
  } catch {
    return ''; // storage refused (a sandboxed frame)
  }
}

function matches(namespace: string, patterns: string): boolean {
  let enabled = false;
  for (const raw of patterns.split(/[\s,]+/)) {
    if (raw === '') continue;
    const negated = raw.startsWith('-');
    const pattern = new RegExp(`^${(negated ? raw.slice(1) : raw).replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
    if (pattern.test(namespace)) enabled = !negated;
  }
  return enabled;
}

export default function createDebug(namespace: string): Log {
  const log = ((format: string, ...args: unknown[]) => {
    if (log.enabled) console.debug(`${namespace} ${format}`, ...args);
  }) as Log;
  log.namespace = namespace;
  log.enabled = matches(namespace, enabledPatterns());
  return log;
}
