#!/usr/bin/env bash
# schemathesis against Herald's own /openapi.json: every documented operation gets
# generated input, valid and invalid (examples, coverage, fuzzing and stateful phases), and
# any 5xx — or a crash, or a panic in the server log — fails the run.
#
#   bash tests/schemathesis/run.sh [HERALD_BIN]     # default: $HERALD_BIN, target/debug/herald
#
# Builds nothing. Starts the binary on a free loopback port in a temporary directory with a
# known API key, installs the pinned schemathesis (requirements.txt) into a cached venv
# ($SCHEMATHESIS_CACHE_DIR, else $XDG_CACHE_HOME/herald, else ~/.cache/herald), and runs it twice:
# the management operations with the API key, the user-token operations with a user token.
# SCHEMATHESIS_MAX_EXAMPLES (default 20) bounds the cases per operation.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-${HERALD_BIN:-$here/../../target/debug/herald}}
if [[ ! -x $bin ]]; then
  echo "no herald binary at $bin: build it first (cargo build), or pass its path" >&2
  exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-20}

# The pinned schemathesis, in a venv keyed by the requirements file's hash.
requirements=$here/requirements.txt
cache=${SCHEMATHESIS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}
venv=$cache/schemathesis-$(sha256sum "$requirements" | cut -c1-16)
if [[ ! -f $venv/.installed ]]; then
  echo "== installing schemathesis into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  touch "$venv/.installed"
fi
schemathesis=("$venv/bin/schemathesis")
"${schemathesis[@]}" --version

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
api_key=schemathesis-api-key-0123456789abcdef
jwt_secret=schemathesis-jwt-secret-0123456789abcdef0123456789
# Herald reads every HERALD_* variable as configuration: start it with ours only.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^HERALD_' || true)
export HERALD_API_KEY=$api_key HERALD_JWT_SECRET=$jwt_secret HERALD_LOG__FILTER=warn
# The repository's templates, and one provider instance (its vendor is a closed port), so
# that templates, channel names and the callback route take their real paths.
export HERALD_TEMPLATES__DIR=$here/../../templates
cat >"$work/herald.toml" <<'TOML'
[channels.sms]
kind = "sms.twilio"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "schemathesis-auth-token"
from = "+15005550006"
status_callback_url = "http://127.0.0.1:9/api/v1/callbacks/twilio/sms"
endpoint = "http://127.0.0.1:9"

# Webhook endpoints the generated requests create may only point at loopback.
[dispatch.webhooks]
allow_hosts = ["127.0.0.1", "localhost"]
TOML
(cd "$work" && exec "$bin" serve --bind "127.0.0.1:$port" >"$work/herald.log" 2>&1) &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
base=http://127.0.0.1:$port
for _ in $(seq 100); do
  curl -sf "$base/healthz" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/herald.log"; echo "herald exited" >&2; exit 1; }
  sleep 0.1
done
curl -sf "$base/healthz" >/dev/null || { cat "$work/herald.log"; echo "herald did not start" >&2; exit 1; }
user_token=$(cd "$work" && "$bin" token --user schemathesis --name fuzz --ttl 1h)

# Operations that take a user token; every other one takes the API key (or nothing).
user_ops='^/(api/v1/(inbox|me/)|message/collectMessage|websocket)'
common=(
  "$base/openapi.json"
  --checks not_a_server_error
  --max-examples "$max_examples"
  --workers 2
  --request-timeout 20
  --generation-database none
  # Hypothesis' data-generation health checks (e.g. `filter_too_much` on an operation that
  # accepts few generated values) say nothing about the server; a 5xx still fails the run.
  --suppress-health-check all
  --no-color
)
failed=0
run() {
  local name=$1
  shift
  echo "== schemathesis: $name"
  # From the temporary directory: schemathesis keeps its state (.schemathesis/) there.
  if ! (cd "$work" && "${schemathesis[@]}" run "${common[@]}" "$@"); then
    failed=$((failed + 1))
  fi
}
run api-key -H "Authorization: Bearer $api_key" --exclude-path-regex "$user_ops"
run user-token -H "Authorization: Bearer $user_token" --include-path-regex "$user_ops"

if ! kill -0 "$pid" 2>/dev/null; then
  echo "herald died during the run; log:" >&2
  cat "$work/herald.log" >&2
  failed=$((failed + 1))
fi
if grep -q "panicked" "$work/herald.log"; then
  echo "herald panicked during the run; log:" >&2
  cat "$work/herald.log" >&2
  failed=$((failed + 1))
fi
echo "schemathesis: $((2 - failed < 0 ? 0 : 2 - failed)) passed, $failed failed"
[[ $failed -eq 0 ]]
