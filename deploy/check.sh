#!/usr/bin/env bash
# Run the binary the way the container image does (Dockerfile): as an unprivileged user,
# with a read-only root file system and only the data directory writable, with the image's
# environment. Checks `herald health`, that the secrets are generated 0600 in the data
# directory, a send, that nothing outside it can be written, and a clean SIGTERM.
# Needs root (to drop to the user and remount) — CI runs it; loopback only.
#
#   deploy/check.sh [path/to/herald]        # default target/debug/herald
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/debug/herald}")
repo=$PWD
uid=65534 # nobody, as the image's `herald` user: no home, no shell, no groups
data=$(mktemp -d /tmp/herald-data.XXXXXX)
chown "$uid:$uid" "$data"
chmod 0700 "$data"
port=$((20000 + RANDOM % 20000))
log=$(mktemp)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data" "$log"' EXIT

as_user() { setpriv --reuid=$uid --regid=$uid --clear-groups --inh-caps=-all "$@"; }
export HERALD_BIND=127.0.0.1:$port HERALD_DATABASE_URL="sqlite://$data/herald.db" \
  HERALD_TEMPLATES__DIR="$repo/templates" HERALD_LOG__FILTER=info
# A private mount namespace: the data directory becomes a mount of its own, then the root
# (and /tmp, if it is a mount of its own) is remounted read-only.
unshare --mount --propagation private bash -c '
  set -e
  mount --bind "$1" "$1"
  mount -o remount,bind,ro /
  if mountpoint -q /tmp; then mount -o remount,bind,ro /tmp; fi
  cd "$1"
  # Even root cannot write outside the data directory now.
  if touch /herald-ro-check 2>/dev/null || touch /tmp/herald-ro-check 2>/dev/null; then
    echo "the root file system is writable" >&2; exit 1
  fi
  exec setpriv --reuid='$uid' --regid='$uid' --clear-groups --inh-caps=-all "$2" serve
' check "$data" "$bin" >"$log" 2>&1 &
pid=$!

ok=""
for _ in $(seq 150); do
  if out=$(as_user "$bin" health --server "http://127.0.0.1:$port" 2>&1); then ok=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
[[ -n "$ok" ]] || { cat "$log"; echo "deploy/check: herald health never passed: $out" >&2; exit 1; }
echo "health: $out"
mode=$(stat -c '%a %u' "$data/herald-secrets.toml")
[[ "$mode" == "600 $uid" ]] || { echo "secrets file mode/owner: $mode" >&2; exit 1; }
key=$(grep '^api_key' "$data/herald-secrets.toml" | cut -d'"' -f2)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" \
  -H 'content-type: application/json' \
  -d '{"title":"t","content":"c","receivers":["42"]}' "http://127.0.0.1:$port/api/v1/messages")
[[ "$code" == 202 ]] || { cat "$log"; echo "send answered $code" >&2; exit 1; }
# Everything it wrote is in the data directory.
ls "$data" | grep -qx herald.db || { echo "no database in $data" >&2; exit 1; }
kill -TERM "$pid"
wait "$pid" || { cat "$log"; echo "herald did not exit 0 on SIGTERM" >&2; exit 1; }
echo "deploy/check: image-like run passed (uid $uid, read-only root, /data writable)"
