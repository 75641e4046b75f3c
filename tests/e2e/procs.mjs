// Test helpers: command-line flags, child processes that print "listening on
// HOST:PORT" when ready (moeserve-worker, moeserve-router), named checks.
import { spawn } from "node:child_process";

export function parseArgs(argv) {
  return Object.fromEntries(argv.reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []));
}

const children = [];
process.on("exit", () => { for (const c of children) c.kill("SIGKILL"); });

// Starts `bin` and resolves with { addr, grpc, proc } once it prints
// "listening on HOST:PORT" (grpc, ollama: its "grpc listening on" / "ollama
// listening on" addresses, if any).
export function startProc(bin, flags) {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, flags, { stdio: ["ignore", "pipe", "inherit"] });
    children.push(p);
    let out = "";
    p.stdout.on("data", d => {
      out += d;
      const m = out.match(/(?:^|\n)listening on (\S+)/);
      if (m) {
        resolve({ addr: m[1], grpc: out.match(/grpc listening on (\S+)/)?.[1],
                  ollama: out.match(/ollama listening on (\S+)/)?.[1], proc: p });
      }
    });
    p.on("exit", code => reject(new Error(`${bin} exited with ${code}`)));
  });
}

// Starts `bin` and resolves with the address it listens on.
export async function start(bin, flags) {
  return (await startProc(bin, flags)).addr;
}

export function killAll() {
  for (const c of children) c.kill("SIGKILL");
}

// Named checks: each runs, failures are printed and counted; finish() prints
// the tally, stops the children and exits non-zero if any check failed.
let passed = 0, failed = 0;
export async function check(name, fn) {
  const t0 = performance.now();
  const took = () => `(${((performance.now() - t0) / 1000).toFixed(1)} s)`;
  try {
    await fn();
    passed++;
    console.log(`ok - ${name} ${took()}`);
  } catch (e) {
    failed++;
    // fetch's "fetch failed" says why only in its cause (refused, reset, closed).
    const cause = e?.cause ? `\n  cause: ${e.cause?.stack ?? e.cause}` : "";
    console.log(`FAIL - ${name} ${took()}: ${e?.stack ?? e}${cause}`);
  }
}
export function finish() {
  console.log(`${passed} passed, ${failed} failed`);
  killAll();
  process.exit(failed ? 1 : 0);
}
