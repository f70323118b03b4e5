#!/usr/bin/env bash
# Reproduce BENCHMARKS.md: every scenario against Herald (release build) and the same
# broadcast scenarios against nginx + nchan, in one session, one JSON line per run in
# benches/results/<date>.jsonl. Loopback only; every run is bounded in time. Each run gets
# a fresh server (and an empty database).
#
#   benches/run.sh              # everything (~10 minutes)
#   benches/run.sh fanout       # only the runs whose name contains "fanout"
set -euo pipefail
cd "$(dirname "$0")/.."
only="${1:-}"
out="benches/results/$(date -u +%Y-%m-%dT%H%M).jsonl"
mkdir -p benches/results
cargo build --release --bin herald --example herald-bench
cargo build --release -p herald-custom-channel --bin herald-custom
BENCH=target/release/examples/herald-bench
HERALD=$PWD/target/release/herald
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

herald_up() {
  port_free 8080
  data=$(mktemp -d)
  (cd "$data" && HERALD_API_KEY=$KEY HERALD_JWT_SECRET=$SECRET HERALD_LOG__FILTER=warn \
     exec "$HERALD" serve --bind 127.0.0.1:8080 >"$data/log" 2>&1) &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && return; sleep 0.1; done
  echo "herald did not start" >&2; exit 1
}
herald_down() {
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
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
     exec "$HERALD_CUSTOM" serve --bind 127.0.0.1:8080 >"$data/log" 2>&1) &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && return; sleep 0.1; done
  echo "herald-custom did not start" >&2; exit 1
}

nchan_up() {
  port_free 8081
  mkdir -p /tmp/nchan-peer
  nginx -c "$PWD/benches/nchan.conf" -p /tmp/nchan-peer/
  for _ in $(seq 50); do [[ -s /tmp/nchan-peer/nginx.pid ]] && break; sleep 0.1; done
  sleep 0.5
  SERVER_PID=$(pgrep -P "$(cat /tmp/nchan-peer/nginx.pid)" | head -1) # the worker holds the sockets
}
nchan_down() { kill -QUIT "$(cat /tmp/nchan-peer/nginx.pid)"; while pgrep -x nginx >/dev/null; do sleep 0.1; done; }

run() { # name, up, down, generator args…
  local name=$1 up=$2 down=$3; shift 3
  want "$name" || return 0
  echo "== $name" >&2
  $up
  line=$("$BENCH" "$@" --server-pid "$SERVER_PID")
  $down
  echo "{\"run\":\"$name\",\"result\":$line}" | tee -a "$out"
}

has_nchan() { command -v nginx >/dev/null && [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]]; }
H=(--target herald --api-key "$KEY" --jwt-secret "$SECRET")
N=(--target nchan)

for t in herald nchan; do
  if [[ $t == nchan ]] && ! has_nchan; then
    echo "nginx with nchan is not installed: apt-get install -y nginx-light libnginx-mod-nchan" >&2
    break
  fi
  if [[ $t == herald ]]; then up=herald_up; down=herald_down; args=("${H[@]}"); else up=nchan_up; down=nchan_down; args=("${N[@]}"); fi
  for n in 1000 10000 19000; do
    run "$t idle $n" $up $down idle --conns "$n" --hold 3s "${args[@]}"
  done
  # Fan-out, then saturation: raise the broadcast rate until deliveries/s stop growing.
  for rate in 10 2 5 20 40; do
    run "$t fanout 10000 x $rate/s" $up $down fanout --conns 10000 --rate "$rate" --duration 10s "${args[@]}"
  done
done
run "herald targeted 2000/s" herald_up herald_down targeted --conns 1000 --rate 2000 --duration 10s "${H[@]}"
run "herald targeted max" herald_up herald_down targeted --conns 1000 --rate max --concurrency 64 --duration 10s "${H[@]}"
for rate in 500 1000 2000; do
  run "herald outbox webhook $rate/s" outbox_up herald_down outbox --channel hook --rate "$rate" --duration 10s --drain 20s "${H[@]}"
done
run "herald outbox webhook max" outbox_up herald_down outbox --channel hook --rate max --concurrency 64 --duration 10s --drain 30s "${H[@]}"
echo "results: $out" >&2
