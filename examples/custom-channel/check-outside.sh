#!/usr/bin/env bash
# Build this example the way a third-party crate builds: a copy outside the workspace, with
# concrete package fields instead of `*.workspace = true`, depending on `herald-channel` (the
# plugin SDK) and `herald` (the server, for the custom binary) by path into this repository
# (a crate of your own would use a git URL or a version instead; see README, "Outside this
# repository"). Then run the custom binary and check that `webhook.json` is linked in.
# CI runs this (.ci/run). Offline: it only uses crates already in Cargo's cache.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$repo/examples/custom-channel" "$work/my-channel"
rm -rf "$work/my-channel/target"
cd "$work/my-channel"
python3 - "$repo" <<'PY'
import re, sys
repo = sys.argv[1]
s = open("Cargo.toml").read()
concrete = {  # rust-version before version: the one contains the other
    "rust-version.workspace = true": 'rust-version = "1.85"',
    "version.workspace = true": 'version = "0.1.0"',
    "edition.workspace = true": 'edition = "2021"',
    "license.workspace = true": 'license = "Apache-2.0"',
    "serde.workspace = true": 'serde = { version = "1", features = ["derive"] }',
    "serde_json.workspace = true": 'serde_json = "1"',
    "[lints]\nworkspace = true": '[lints.rust]\nunsafe_code = "forbid"',
}
for a, b in concrete.items():
    assert a in s, a
    s = s.replace(a, b)
s = s.replace('path = "../../channels/sdk"', f'path = "{repo}/channels/sdk"')
s = s.replace('herald = { path = "../.." }', f'herald = {{ path = "{repo}" }}')
assert "workspace = true" not in s and "../" not in s, s
s += "\n# Its own workspace: not a member of Herald's.\n[workspace]\n"
open("Cargo.toml", "w").write(s)
PY
cp "$repo/Cargo.lock" .   # the same dependency versions as Herald's own build
export CARGO_TARGET_DIR="$repo/target/outside"
cargo build --offline --bin herald-custom
bin="$CARGO_TARGET_DIR/debug/herald-custom"
port=$((20000 + RANDOM % 20000))
cat > herald.toml <<TOML
[channels.hook]
kind = "webhook.json"
url = "http://127.0.0.1:9/hook"
TOML
HERALD_API_KEY=outside-key HERALD_JWT_SECRET=outside-secret HERALD_LOG__FILTER=warn \
  "$bin" serve --bind "127.0.0.1:$port" --database-url "sqlite://$work/h.db" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
channels=$(curl -sf -H "Authorization: Bearer outside-key" "http://127.0.0.1:$port/api/v1/channels") \
  || { cat "$work/log"; echo "the custom binary did not serve" >&2; exit 1; }
grep -q '"webhook.json"' <<<"$channels" || { echo "webhook.json is not linked in: $channels" >&2; exit 1; }
echo "custom-channel outside the workspace: built, served, webhook.json registered"
