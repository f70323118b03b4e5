#!/usr/bin/env bash
# Reproduce BENCHMARKS.md: every scenario against Herald (release build) and the same
# broadcast scenarios against nginx + nchan, in one session, one JSON line per run in
# benches/results/<date>.jsonl. Loopback only; every run is bounded in time.
#
#   benches/run.sh            # all scenarios (~10 minutes)
#   benches/run.sh idle       # only the scenarios whose name matches
set -euo pipefail
cd "$(dirname "$0")/.."
only="${1:-}"
out="benches/results/$(date -u +%Y-%m-%dT%H%M).jsonl"
mkdir -p benches/results
cargo build --release --bin herald --example herald_bench
BENCH=target/release/examples/herald_bench
KEY=bench-key
SECRET=bench-secret
ulimit -n "$(ulimit -Hn)"

want() { [[ -z "$only" || "$1" == *"$only"* ]]; }

herald_up() {
  data=$(mktemp -d)
  (cd "$data" && HERALD_API_KEY=$KEY HERALD_JWT_SECRET=$SECRET HERALD_LOG__FILTER=warn \
     exec "$OLDPWD/target/release/herald" serve --bind 127.0.0.1:8080) &
  HERALD_PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && return; sleep 0.1; done
  echo "herald did not start" >&2; exit 1
}
herald_down() { kill -TERM "$HERALD_PID"; wait "$HERALD_PID" || true; rm -rf "$data"; }

nchan_up() {
  mkdir -p /tmp/nchan-peer
  nginx -c "$PWD/benches/nchan.conf" -p /tmp/nchan-peer/
  for _ in $(seq 50); do [[ -s /tmp/nchan-peer/nginx.pid ]] && break; sleep 0.1; done
  # The worker process holds the connections.
  NCHAN_PID=$(pgrep -P "$(cat /tmp/nchan-peer/nginx.pid)" | head -1)
}
nchan_down() { kill -QUIT "$(cat /tmp/nchan-peer/nginx.pid)"; sleep 1; }

run() { # name, target args…
  local name=$1; shift
  echo "== $name" >&2
  line=$("$BENCH" "$@")
  echo "{\"run\":\"$name\",\"result\":$line}" | tee -a "$out"
}

H="--target herald --api-key $KEY --jwt-secret $SECRET"
for n in 1000 10000 19000; do
  if want "idle-$n"; then
    herald_up
    procs=$(( n > 15000 ? 2 : 1 ))
    run "herald idle $n" idle --conns "$n" --procs "$procs" $H --server-pid "$HERALD_PID"
    herald_down
  fi
done
if want fanout; then
  herald_up; run "herald fanout 10k x 10/s" fanout --conns 10000 --rate 10 --duration 10s $H --server-pid "$HERALD_PID"; herald_down
fi
if want saturate; then
  herald_up; run "herald saturate 10k" saturate --conns 10000 $H --server-pid "$HERALD_PID"; herald_down
fi
if want targeted; then
  herald_up; run "herald targeted 2k/s" targeted --conns 1000 --rate 2000 --duration 10s $H --server-pid "$HERALD_PID"; herald_down
  herald_up; run "herald targeted max" targeted --conns 1000 --rate max --duration 10s $H --server-pid "$HERALD_PID"; herald_down
fi
if command -v nginx >/dev/null && [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]]; then
  N="--target nchan"
  for n in 1000 10000 19000; do
    if want "idle-$n"; then
      nchan_up; procs=$(( n > 15000 ? 2 : 1 ))
      run "nchan idle $n" idle --conns "$n" --procs "$procs" $N --server-pid "$NCHAN_PID"; nchan_down
    fi
  done
  if want fanout; then nchan_up; run "nchan fanout 10k x 10/s" fanout --conns 10000 --rate 10 --duration 10s $N --server-pid "$NCHAN_PID"; nchan_down; fi
  if want saturate; then nchan_up; run "nchan saturate 10k" saturate --conns 10000 $N --server-pid "$NCHAN_PID"; nchan_down; fi
else
  echo "nginx with nchan is not installed: apt-get install -y nginx-light libnginx-mod-nchan" >&2
fi
echo "results: $out" >&2
