#!/usr/bin/env python3
"""Turn a benches/results/*.jsonl file (from benches/run.sh) into the BENCHMARKS.md tables."""
import json
import sys

runs = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    runs[d["run"]] = d["result"]


def get(name, key, sub=None):
    r = runs.get(name)
    if r is None:
        return None
    v = r.get(key)
    return v.get(sub) if sub else v


def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float) and v != int(v):
        return f"{v:,.2f}{unit}"
    return f"{int(v):,}{unit}"


print("### Idle connections\n")
print("| connections | Herald KiB/conn | nchan KiB/conn | Herald connects/s | nchan connects/s |")
print("|---|---|---|---|---|")
for n in (1000, 10000, 19000):
    h, c = f"herald idle {n}", f"nchan idle {n}"
    print(f"| {n:,} | {fmt(get(h, 'kib_per_conn'))} | {fmt(get(c, 'kib_per_conn'))} | "
          f"{fmt(get(h, 'connects_per_s'))} | {fmt(get(c, 'connects_per_s'))} |")

print("\n### Fan-out and saturation (10,000 users, broadcast for 10 s)\n")
print("| rate | target | sends accepted/s | deliveries/s | p50 ms | p99 ms | lost | dup | server CPU |")
print("|---|---|---|---|---|---|---|---|---|")
for rate in (2, 5, 10, 20, 40):
    for t in ("herald", "nchan"):
        name = f"{t} fanout 10000 x {rate}/s"
        if name not in runs:
            continue
        print(f"| {rate}/s | {t} | {fmt(get(name, 'accepted_sends_per_s'))} | {fmt(get(name, 'deliveries_per_s'))} | "
              f"{fmt(get(name, 'latency_ms', 'p50'))} | {fmt(get(name, 'latency_ms', 'p99'))} | "
              f"{fmt(get(name, 'lost'))} | {fmt(get(name, 'duplicates'))} | {fmt(get(name, 'server_cpu_percent_send'), ' %')} |")
best = {t: max((r["deliveries_per_s"] for k, r in runs.items() if k.startswith(f"{t} fanout")), default=0)
        for t in ("herald", "nchan")}
print(f"\nSaturation (best deliveries/s over the rates): Herald {best['herald']:,.0f}, nchan {best['nchan']:,.0f}"
      + (f", ratio {best['herald'] / best['nchan']:.2f}" if best["nchan"] else ""))

print("\n### Targeted, persisted, acked sends (1,000 users)\n")
print("| offered | accepted sends/s | p50 ms | p99 ms | lost | dup | server CPU |")
print("|---|---|---|---|---|---|---|")
for name, label in (("herald targeted 2000/s", "2,000/s"), ("herald targeted max", "max (64 concurrent)")):
    print(f"| {label} | {fmt(get(name, 'accepted_sends_per_s'))} | {fmt(get(name, 'latency_ms', 'p50'))} | "
          f"{fmt(get(name, 'latency_ms', 'p99'))} | {fmt(get(name, 'lost'))} | {fmt(get(name, 'duplicates'))} | "
          f"{fmt(get(name, 'server_cpu_percent_send'), ' %')} |")
