#!/usr/bin/env bash
# The verification snippets of docs/webhooks.md §3, run exactly as written there, and the
# official Standard Webhooks Python library, against signed requests from a running Herald
# (a fresh endpoint, then a secret rotation: both signatures must verify).
#
#   bash tests/webhooks/verify.sh [HERALD_BIN]     # default: $HERALD_BIN, target/debug/herald
#
# Builds nothing. Installs the pinned library (requirements.txt) into a cached venv like
# tests/schemathesis/run.sh does; needs python3 and node.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-${HERALD_BIN:-$here/../../target/debug/herald}}
if [[ ! -x $bin ]]; then
  echo "no herald binary at $bin: build it first (cargo build), or pass its path" >&2
  exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
requirements=$here/requirements.txt
cache=${XDG_CACHE_HOME:-$HOME/.cache}/herald
venv=$cache/webhooks-$(sha256sum "$requirements" | cut -c1-16)
if [[ ! -f $venv/.installed ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  touch "$venv/.installed"
fi

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
api_key=webhooks-verify-api-key-0123456789abcdef
while read -r name; do unset "$name"; done < <(compgen -e | grep '^HERALD_' || true)
(cd "$work" && HERALD_API_KEY=$api_key HERALD_JWT_SECRET=webhooks-verify-jwt-secret-0123456789abcdef \
  HERALD_LOG__FILTER=warn exec "$bin" serve --bind "127.0.0.1:$port" >"$work/herald.log" 2>&1) &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/herald.log"; echo "herald exited" >&2; exit 1; }
  sleep 0.1
done
"$venv/bin/python" "$here/verify.py" "http://127.0.0.1:$port" "$api_key" "$here/../../docs/webhooks.md" \
  || { cat "$work/herald.log"; exit 1; }
