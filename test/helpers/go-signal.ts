/**
 * For child fixtures a parent starts ahead and sets going later (several at one instant, or
 * one started while its root is still being made): announce readiness, then wait for SIGUSR2
 * (`child.kill("SIGUSR2")`). SIGUSR2 because Node keeps SIGUSR1 for its inspector; the
 * listener is in place before the announcement, and a timer keeps the process alive meanwhile
 * (a signal listener alone does not).
 */
export async function readyThenAwaitGo(announce: () => void): Promise<void> {
  const keepAlive = setInterval(() => {}, 1_000);
  const go = new Promise<void>((resolve) => process.once("SIGUSR2", () => resolve()));
  announce();
  await go;
  clearInterval(keepAlive);
}
