// Shared by the overload and soak benchmarks: a process's resident memory and
// open descriptors from /proc, the router's gauges from its /metrics, and
// percentiles.
import fs from "node:fs";

export function rssMiB(pid) {
  const m = fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) / 1024 : NaN;
}

// Resident memory split: anonymous (heap, stacks) and file-backed (the mmapped weights, code), MiB.
export function rssParts(pid) {
  const t = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k) => Number(t.match(new RegExp(`${k}:\\s+(\\d+) kB`))?.[1] ?? NaN) / 1024;
  return { anon: kb("RssAnon"), file: kb("RssFile") };
}

export function fds(pid) {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

// Sums of the router's gauges (over dp_rank and cache_group): running, waiting, kv (max of the groups' ratios).
export async function routerGauges(base) {
  const text = await (await fetch(base + "/metrics")).text();
  const sum = (name) => text.split("\n").filter(l => l.startsWith(name + "{") || l.startsWith(name + " "))
    .reduce((a, l) => a + Number(l.split(" ").pop()), 0);
  const kv = Math.max(0, ...text.split("\n").filter(l => l.startsWith("moeserve_kv_cache_usage_ratio"))
    .map(l => Number(l.split(" ").pop())));
  const codes = {};
  for (const l of text.split("\n")) {
    const m = l.match(/^moeserve_http_responses_total\{code="(\d+)"\} (\S+)/);
    if (m) codes[m[1]] = Number(m[2]);
  }
  return { running: sum("moeserve_requests_running"), waiting: sum("moeserve_requests_waiting"), kv, codes };
}

// Waits until the router has nothing running or waiting and its KV cache is empty (or `ms` pass).
export async function waitIdle(base, ms = 30000) {
  const t0 = Date.now();
  for (;;) {
    const g = await routerGauges(base);
    if ((g.running === 0 && g.waiting === 0 && g.kv === 0) || Date.now() - t0 > ms) return g;
    await new Promise(r => setTimeout(r, 200));
  }
}

export function percentile(xs, p) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}
