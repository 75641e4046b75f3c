// Test helpers: command-line flags, and child processes that print
// "listening on HOST:PORT" when ready (moeserve-worker, moeserve-router).
import { spawn } from "node:child_process";

export function parseArgs(argv) {
  return Object.fromEntries(argv.reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []));
}

const children = [];
process.on("exit", () => { for (const c of children) c.kill("SIGKILL"); });

// Starts `bin` and resolves with the address it listens on.
export function start(bin, flags) {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, flags, { stdio: ["ignore", "pipe", "inherit"] });
    children.push(p);
    let out = "";
    p.stdout.on("data", d => {
      out += d;
      const m = out.match(/listening on (\S+)/);
      if (m) resolve(m[1]);
    });
    p.on("exit", code => reject(new Error(`${bin} exited with ${code}`)));
  });
}

export function killAll() {
  for (const c of children) c.kill("SIGKILL");
}
