#!/usr/bin/env bash
# Reproduce BENCHMARKS.md: every scenario against Herald (release build) and the same
# broadcast scenarios against nginx + nchan, in one session, one JSON line per run in
# benches/results/<date>-k<K>.jsonl. Loopback only; every run is bounded in time. Each run
# gets a fresh server (and an empty database).
#
#   benches/run.sh                 # everything, server on all cores but one (≥ 2 cores)
#   benches/run.sh --cores 1       # the server (and nchan) pinned to 1 core, the generator
#                                  # to the others
#   benches/run.sh --cores 4 fanout   # only the runs whose name contains "fanout"
#
# The server and the peer get the same K cores (taskset; nchan `worker_processes K`, its
# RSS summed over the workers) and the generator the rest, so the same script gives
# per-core figures on a 2-core VM and on a bigger machine. With K = all cores the
# generator shares them (say so when you report such figures).
set -euo pipefail
cd "$(dirname "$0")/.."
ncpu=$(nproc)
cores=$(( ncpu > 1 ? ncpu - 1 : 1 ))
only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cores) cores="$2"; shift 2 ;;
    *) only="$1"; shift ;;
  esac
done
(( cores >= 1 && cores <= ncpu )) || { echo "--cores must be 1..$ncpu" >&2; exit 1; }
server_cpus="0-$((cores - 1))"
if (( cores < ncpu )); then gen_cpus="$cores-$((ncpu - 1))"; gen_n=$((ncpu - cores)); else gen_cpus="0-$((ncpu - 1))"; gen_n=$ncpu; fi
procs=$(( gen_n > 4 ? 4 : gen_n ))   # receiver processes of the generator (< 20k sockets each)
out="benches/results/$(date -u +%Y-%m-%dT%H%M)-k$cores${BENCH_LABEL:+-$BENCH_LABEL}.jsonl"
mkdir -p benches/results
echo "server and peer on CPUs $server_cpus, generator on $gen_cpus ($procs receiving processes)" >&2
cargo build --release --bin herald --example herald-bench
cargo build --release -p herald-custom-channel --bin herald-custom
BENCH=(taskset -c "$gen_cpus" target/release/examples/herald-bench)
# BENCH_HERALD: another herald binary to measure (e.g. an earlier commit, for a before/after).
HERALD=${BENCH_HERALD:-$PWD/target/release/herald}
HERALD_CUSTOM=$PWD/target/release/herald-custom
KEY=bench-key
SECRET=bench-secret
ulimit -n "$(ulimit -Hn)"

want() { [[ -z "$only" || "$1" == *"$only"* ]]; }

port_free() {
  if curl -s -o /dev/null "http://127.0.0.1:$1/"; then
    echo "something already listens on 127.0.0.1:$1; stop it first" >&2; exit 1
  fi
}

herald_up() { # extra `HERALD_…=…` settings as arguments
  port_free 8080
  data=$(mktemp -d)
  (cd "$data" && env HERALD_API_KEY=$KEY HERALD_JWT_SECRET=$SECRET HERALD_LOG__FILTER=warn "$@" \
     taskset -c "$server_cpus" "$HERALD" serve --bind 127.0.0.1:8080 >"$data/log" 2>&1) &
  for _ in $(seq 100); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.1; done
  SERVER_PIDS=$(pgrep -f "$HERALD serve --bind 127.0.0.1:8080" | head -1)
  [[ -n "$SERVER_PIDS" ]] || { echo "herald did not start" >&2; exit 1; }
}
herald_down() {
  kill -9 $SERVER_PIDS 2>/dev/null || true
  while curl -s -o /dev/null http://127.0.0.1:8080/; do sleep 0.1; done
  rm -rf "$data"
}

# The provider outbox: herald-custom with a webhook.json instance "hook" posting to the
# generator's own receiver on 127.0.0.1:18090.
outbox_up() {
  port_free 8080
  data=$(mktemp -d)
  cat >"$data/herald.toml" <<TOML
[channels.hook]
kind = "webhook.json"
url = "http://127.0.0.1:18090/hook"
concurrency = 64
TOML
  (cd "$data" && HERALD_API_KEY=$KEY HERALD_JWT_SECRET=$SECRET HERALD_LOG__FILTER=warn \
     exec taskset -c "$server_cpus" "$HERALD_CUSTOM" serve --bind 127.0.0.1:8080 >"$data/log" 2>&1) &
  for _ in $(seq 100); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.1; done
  SERVER_PIDS=$(pgrep -f "$HERALD_CUSTOM serve --bind 127.0.0.1:8080" | head -1)
  [[ -n "$SERVER_PIDS" ]] || { echo "herald-custom did not start" >&2; exit 1; }
}

nchan_up() {
  port_free 8081
  mkdir -p /tmp/nchan-peer
  sed "s/^worker_processes .*/worker_processes $cores;/" benches/nchan.conf >/tmp/nchan-peer/nginx.conf
  taskset -c "$server_cpus" nginx -c /tmp/nchan-peer/nginx.conf -p /tmp/nchan-peer/
  for _ in $(seq 50); do [[ -s /tmp/nchan-peer/nginx.pid ]] && break; sleep 0.1; done
  sleep 0.5
  # The workers hold the sockets: RSS and CPU are summed over them.
  SERVER_PIDS=$(pgrep -P "$(cat /tmp/nchan-peer/nginx.pid)" | paste -sd, -)
}
nchan_down() { kill -QUIT "$(cat /tmp/nchan-peer/nginx.pid)"; while pgrep -x nginx >/dev/null; do sleep 0.1; done; }

run() { # name, up command, down, -- generator args…
  local name=$1 up=$2 down=$3; shift 3
  want "$name" || return 0
  echo "== $name" >&2
  $up
  line=$("${BENCH[@]}" "$@" --server-pid "$SERVER_PIDS")
  $down
  echo "{\"run\":\"$name\",\"cores\":$cores,\"cpus\":$ncpu,\"result\":$line}" | tee -a "$out"
}

has_nchan() { command -v nginx >/dev/null && [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]]; }
H=(--target herald --api-key "$KEY" --jwt-secret "$SECRET")
N=(--target nchan)

for t in herald nchan; do
  if [[ $t == nchan ]] && ! has_nchan; then
    echo "nginx with nchan is not installed: apt-get install -y nginx-light libnginx-mod-nchan" >&2
    break
  fi
  if [[ $t == herald ]]; then up=herald_up; down=herald_down; args=("${H[@]}" --ack); else up=nchan_up; down=nchan_down; args=("${N[@]}"); fi
  for n in 1000 10000 19000; do
    run "$t idle $n" $up $down idle --conns "$n" --hold 3s --procs "$procs" "${args[@]}"
  done
  # Fan-out, then saturation: raise the broadcast rate until deliveries/s stop growing.
  # Herald's clients ack every frame (durable status pending → sent → delivered).
  for rate in 10 2 5 20 40; do
    run "$t fanout 10000 x $rate/s" $up $down fanout --conns 10000 --rate "$rate" --duration 10s --procs "$procs" "${args[@]}"
  done
done
run "herald targeted 2000/s" herald_up herald_down targeted --conns 1000 --rate 2000 --duration 10s "${H[@]}"
run "herald targeted max" herald_up herald_down targeted --conns 1000 --rate max --concurrency 64 --duration 10s "${H[@]}"
# Overload: far more than the server takes, for 30 s. Every POST must be answered (202 or
# 503) quickly, memory must stay bounded, and every 202 must reach its receivers — live,
# or by the replay each client takes after the run (--verify).
run "herald overload fanout 10000 x 40/s" herald_up herald_down fanout --conns 10000 --rate 40 --duration 30s --procs "$procs" --verify "${H[@]}" --ack
run "herald overload targeted 512 in flight" herald_up herald_down targeted --conns 1000 --rate max --concurrency 512 --duration 30s --verify "${H[@]}"
for rate in 500 1000 2000; do
  run "herald outbox webhook $rate/s" outbox_up herald_down outbox --channel hook --rate "$rate" --duration 10s --drain 20s "${H[@]}"
done
run "herald outbox webhook max" outbox_up herald_down outbox --channel hook --rate max --concurrency 64 --duration 10s --drain 30s "${H[@]}"
echo "results: $out" >&2
