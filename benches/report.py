#!/usr/bin/env python3
"""Turn benches/results/*.jsonl files (from benches/run.sh) into the BENCHMARKS.md tables.

    benches/report.py benches/results/<date>-k1.jsonl [benches/results/<date>-k2.jsonl …]

Each file is one run of run.sh at one `--cores K`; its tables are printed under a heading
that names K.
"""
import json
import sys


def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float) and v != int(v):
        return f"{v:,.2f}{unit}"
    return f"{int(v):,}{unit}"


def report(path):
    runs, cores, cpus = {}, None, None
    for line in open(path):
        d = json.loads(line)
        runs[d["run"]] = d["result"]
        cores, cpus = d.get("cores", cores), d.get("cpus", cpus)
    if cores is None:  # benches/cluster.sh
        return cluster(path, runs)
    def get(name, key, sub=None):
        r = runs.get(name)
        if r is None:
            return None
        v = r.get(key)
        return v.get(sub) if (sub and isinstance(v, dict)) else v

    def growth(name):
        r = runs.get(name)
        if not r or not r.get("server_rss_kib_connected"):
            return None
        return (r["server_rss_kib_end"] - r["server_rss_kib_connected"]) / 1024

    shared = cores == cpus
    print(f"## Server and nchan on {cores} core(s) of {cpus}"
          + (" (generator on the same cores)" if shared else f", generator on the other {cpus - cores}")
          + f"\n\nFrom `{path}`.\n")

    print("### Idle connections\n")
    print("| connections | Herald KiB/conn | nchan KiB/conn | Herald connects/s | nchan connects/s |")
    print("|---|---|---|---|---|")
    for n in (1000, 10000, 19000):
        h, c = f"herald idle {n}", f"nchan idle {n}"
        print(f"| {n:,} | {fmt(get(h, 'kib_per_conn'))} | {fmt(get(c, 'kib_per_conn'))} | "
              f"{fmt(get(h, 'connects_per_s'))} | {fmt(get(c, 'connects_per_s'))} |")

    print("\n### Fan-out and saturation (10,000 users, broadcast for 10 s; Herald's clients ack every frame)\n")
    print("| rate | target | sends accepted/s | refused (503) | deliveries/s | p50 ms | p99 ms | lost | dup | POST p99 ms | server CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rate in (2, 5, 10, 20, 40):
        for t in ("herald", "nchan"):
            name = f"{t} fanout 10000 x {rate}/s"
            if name not in runs:
                continue
            print(f"| {rate}/s | {t} | {fmt(get(name, 'accepted_sends_per_s'))} | {fmt(get(name, 'sends_refused_503'))} | "
                  f"{fmt(get(name, 'deliveries_per_s'))} | "
                  f"{fmt(get(name, 'latency_ms', 'p50'))} | {fmt(get(name, 'latency_ms', 'p99'))} | "
                  f"{fmt(get(name, 'lost'))} | {fmt(get(name, 'duplicates'))} | {fmt(get(name, 'answer_ms', 'p99'))} | "
                  f"{fmt(get(name, 'server_cpu_percent_send'), ' %')} |")
    best = {t: max((r["deliveries_per_s"] for k, r in runs.items() if k.startswith(f"{t} fanout")), default=0)
            for t in ("herald", "nchan")}
    print(f"\nSaturation (best deliveries/s over the rates): Herald {best['herald']:,.0f}, nchan {best['nchan']:,.0f}"
          + (f", ratio {best['herald'] / best['nchan']:.2f}" if best["nchan"] else ""))

    print("\n### Targeted, persisted, acked sends (1,000 users)\n")
    print("| offered | accepted sends/s | p50 ms | p99 ms | lost | dup | server CPU |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("herald targeted 2000/s", "2,000/s"), ("herald targeted max", "max (64 in flight)")):
        print(f"| {label} | {fmt(get(name, 'accepted_sends_per_s'))} | {fmt(get(name, 'latency_ms', 'p50'))} | "
              f"{fmt(get(name, 'latency_ms', 'p99'))} | {fmt(get(name, 'lost'))} | {fmt(get(name, 'duplicates'))} | "
              f"{fmt(get(name, 'server_cpu_percent_send'), ' %')} |")

    print("\n### Overload for 30 s (every client takes its replay afterwards)\n")
    print("| run | accepted | refused (503) | POST answer p50 / p99 / max ms | RSS growth MiB | deliveries/s | frame p99 ms | lost after replay |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("herald overload fanout 10000 x 40/s", "herald overload targeted 512 in flight"):
        if name not in runs:
            continue
        print(f"| {name[len('herald overload '):]} | {fmt(get(name, 'sends_accepted'))} | {fmt(get(name, 'sends_refused_503'))} | "
              f"{fmt(get(name, 'answer_ms', 'p50'))} / {fmt(get(name, 'answer_ms', 'p99'))} / {fmt(get(name, 'answer_ms', 'max'))} | "
              f"{fmt(growth(name))} | {fmt(get(name, 'deliveries_per_s'))} | {fmt(get(name, 'latency_ms', 'p99'))} | "
              f"{fmt(get(name, 'lost_after_replay'))} |")

    outbox = [k for k in runs if k.startswith("herald outbox")]
    if outbox:
        print("\n### Provider outbox: targeted sends through a webhook channel (1,000 users)\n")
        print("| offered | accepted sends/s | delivered/s | p50 ms | p99 ms | lost | dup | server CPU |")
        print("|---|---|---|---|---|---|---|---|")
        for name in outbox:
            print(f"| {name.split()[-1]} | {fmt(get(name, 'accepted_sends_per_s'))} | {fmt(get(name, 'deliveries_per_s'))} | "
                  f"{fmt(get(name, 'latency_ms', 'p50'))} | {fmt(get(name, 'latency_ms', 'p99'))} | "
                  f"{fmt(get(name, 'lost'))} | {fmt(get(name, 'duplicates'))} | {fmt(get(name, 'server_cpu_percent'), ' %')} |")
    print()


def cluster(path, runs):
    print(f"## Cluster mode (benches/cluster.sh)\n\nFrom `{path}`.\n")
    print("| run | sessions | received / expected | lost | dup | lost after replay | p50 ms | p99 ms | max ms | deliveries/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        lat = r.get("latency_ms", {})
        print(f"| {name} | {fmt(r.get('connected'))} | {fmt(r.get('received'))} / {fmt(r.get('expected_deliveries'))} | "
              f"{fmt(r.get('lost'))} | {fmt(r.get('duplicates'))} | {fmt(r.get('lost_after_replay'))} | "
              f"{fmt(lat.get('p50'))} | {fmt(lat.get('p99'))} | {fmt(lat.get('max'))} | {fmt(r.get('deliveries_per_s'))} |")
    print()


for p in sys.argv[1:]:
    report(p)
