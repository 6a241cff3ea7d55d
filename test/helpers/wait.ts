/** Poll `condition` every 5 ms until it holds; throws naming `what` after `timeoutMs`. */
export async function waitFor(what: string, condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** A test machine's pages written per second while it runs for about `ms` (resumed, then paused again). */
export async function measurePagesPerSecond(m: { stats(): { pagesWritten: number }; resume(): void; pause(): Promise<void> }, ms: number): Promise<number> {
  const before = m.stats().pagesWritten;
  const t0 = performance.now();
  m.resume();
  await new Promise((resolve) => setTimeout(resolve, ms));
  await m.pause();
  return (m.stats().pagesWritten - before) / ((performance.now() - t0) / 1000);
}
