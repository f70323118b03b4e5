#!/usr/bin/env bash
# Cluster mode figures for BENCHMARKS.md: `herald serve` nodes (release build) sharing
# PostgreSQL and Redis on this machine.
# * Targeted: the generator's WebSocket clients connect to node B and its sends go to node
#   A, so every frame crosses nodes through Redis pub/sub; the same runs against one node
#   on the same PostgreSQL database give the baseline.
# * Broadcast: three nodes hold 55,000 sessions between them (four generator processes,
#   each under 20,000 sockets), every client acks, and each broadcast (sent to node A)
#   must reach all 55,000; then every client reconnects and takes its replay (--verify).
# One JSON line per run in benches/results/<date>-cluster.jsonl. Loopback only; every run
# is bounded.
#
#   benches/cluster.sh            # needs PostgreSQL on 127.0.0.1:5432 (trust) and Redis on 6379
#   benches/cluster.sh broadcast  # only the runs whose name contains "broadcast"
set -euo pipefail
cd "$(dirname "$0")/.."
only="${1:-}"
out="benches/results/$(date -u +%Y-%m-%dT%H%M)-cluster.jsonl"
mkdir -p benches/results
cargo build --release --bin herald --example herald-bench
BENCH=target/release/examples/herald-bench
HERALD=$PWD/target/release/herald
KEY=bench-key
SECRET=bench-secret
PG=${HERALD_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
REDIS=${HERALD_BENCH_REDIS:-redis://127.0.0.1:6379}
ulimit -n "$(ulimit -Hn)"

pids=()
data=$(mktemp -d)
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$data"
}
trap cleanup EXIT

fresh_db() {
  local name="herald_bench_$(date +%s%N)"
  psql -q "$PG/postgres" -c "CREATE DATABASE $name" >/dev/null
  echo "$PG/$name"
}

node_up() { # name port db [redis]
  local env=(HERALD_API_KEY=$KEY HERALD_JWT_SECRET=$SECRET HERALD_LOG__FILTER=warn
    HERALD_DATABASE_URL="$3" HERALD_NODE_NAME="$1" HERALD_CLUSTER__PREFIX="bench-$$")
  [[ -n "${4:-}" ]] && env+=(HERALD_REDIS_URL="$4")
  (cd "$data" && exec env "${env[@]}" "$HERALD" serve --bind "127.0.0.1:$2" >"$data/$1.log" 2>&1) &
  pids+=($!)
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$2/healthz" >/dev/null && return; sleep 0.1; done
  echo "node $1 did not start; log:" >&2; cat "$data/$1.log" >&2; exit 1
}

nodes_down() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}

run() { # label ws-urls api-port pids bench-args…
  local label=$1 ws=$2 api=$3 pid=$4
  shift 4
  echo "== $label" >&2
  result=$("$BENCH" "$@" --api-key $KEY --jwt-secret $SECRET --ws "$ws" \
    --api "http://127.0.0.1:$api" --server-pid "$pid")
  echo "{\"run\":\"$label\",\"result\":$result}" | tee -a "$out"
}
want() { [[ -z "$only" || "$1" == *"$only"* ]]; }

if want broadcast; then
  db=$(fresh_db)
  node_up a 8081 "$db" "$REDIS"
  node_up b 8082 "$db" "$REDIS"
  node_up c 8083 "$db" "$REDIS"
  run "cluster 3 nodes broadcast 55000 x 1/s" \
    "ws://127.0.0.1:8081,ws://127.0.0.1:8082,ws://127.0.0.1:8083" 8081 "$(IFS=,; echo "${pids[*]}")" \
    fanout --conns 55000 --procs 4 --rate 1 --duration 10s --ack --verify --drain 20s --deadline 900s
  nodes_down
fi

for rate in 500 1000; do
  want targeted || break
  db=$(fresh_db)
  node_up single 8081 "$db"
  run "postgres single node targeted $rate/s" ws://127.0.0.1:8081 8081 "${pids[0]}" \
    targeted --conns 1000 --rate "$rate" --duration 10s
  nodes_down

  db=$(fresh_db)
  node_up a 8081 "$db" "$REDIS"
  node_up b 8082 "$db" "$REDIS"
  run "cluster A→B targeted $rate/s" ws://127.0.0.1:8082 8081 "${pids[1]}" \
    targeted --conns 1000 --rate "$rate" --duration 10s
  nodes_down
done
echo "results: $out" >&2
