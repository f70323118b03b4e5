#!/usr/bin/env bash
# Browser-side tests: herald.js unit tests (node's test runner, against a real server, and
# with fakes) and headless-Chromium tests of /demo, /admin and <herald-inbox>
# (playwright-core). Builds nothing itself.
#
#   bash tests/browser/run.sh                     # uses target/debug/herald
#   HERALD_BIN=/path/to/herald bash tests/browser/run.sh
#   CHROMIUM=/path/to/chromium bash tests/browser/run.sh   # default /usr/bin/chromium
#
# The tests start their herald servers themselves (free 127.0.0.1 ports, data dirs under a
# temporary directory) and record their pids there; this script kills any that are left on
# exit. Writes docs/screenshots/*.png (demo, admin, admin-phone, admin-webhooks, landing, docs,
# inbox-phone).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

HERALD_BIN=${HERALD_BIN:-target/debug/herald}
case $HERALD_BIN in /*) ;; *) HERALD_BIN="$repo/$HERALD_BIN" ;; esac
export HERALD_BIN
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

if [[ ! -x $HERALD_BIN ]]; then
  echo "run.sh: herald binary not found at $HERALD_BIN (build it first: cargo build), or set HERALD_BIN" >&2
  exit 2
fi
if [[ ! -x $CHROMIUM ]]; then
  echo "run.sh: Chromium not found at $CHROMIUM. Install it with: apt-get install -y chromium" >&2
  exit 2
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "run.sh: node and npm (Node.js >= 20) are required" >&2
  exit 2
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if (( node_major < 20 )); then
  echo "run.sh: Node.js >= 20 is required (found $(node --version))" >&2
  exit 2
fi

if [[ ! -d $here/node_modules/playwright-core ]]; then
  echo "== npm ci (tests/browser)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/herald-browser.XXXXXX")
export TEST_TMP
status=0
cleanup() {
  local pidfile pid
  for pidfile in "$TEST_TMP"/herald-*.pid; do
    [[ -e $pidfile ]] || continue
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
  done
  if (( status == 0 )); then
    rm -rf "$TEST_TMP"
  else
    echo "run.sh: server data dirs and logs kept in $TEST_TMP" >&2
  fi
}
trap cleanup EXIT
trap 'status=130; exit 130' INT TERM

# Node 22+ has a global WebSocket; Node 20 needs the flag.
ws_flag=()
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then
  ws_flag=(--experimental-websocket)
fi

echo "== herald.js unit tests (node --test clients/js/test/)"
node "${ws_flag[@]}" --test --test-timeout=120000 clients/js/test/*.test.mjs || status=1

echo "== @herald/client as a package (npm pack, install the tarball, import by name)"
pkg_dir=$(mktemp -d)
(
  set -e
  tarball=$(cd "$pkg_dir" && npm pack --silent "$OLDPWD/clients/js")
  mkdir "$pkg_dir/app" && cd "$pkg_dir/app"
  echo '{"name":"app","private":true,"type":"module"}' > package.json
  npm install --silent --no-audit --no-fund --offline "../$tarball" >/dev/null
  node --input-type=module -e '
    import { Herald, VERSION } from "@herald/client";
    import { HeraldInbox, DEFAULT_STRINGS } from "@herald/client/inbox";
    import pkg from "@herald/client/package.json" with { type: "json" };
    import { existsSync } from "node:fs";
    if (typeof Herald !== "function") throw new Error("no Herald export");
    if (typeof HeraldInbox !== "function" || DEFAULT_STRINGS.title !== "Notifications") throw new Error("no HeraldInbox export");
    if (VERSION !== pkg.version) throw new Error(`VERSION ${VERSION} != package ${pkg.version}`);
    for (const types of [pkg.types, pkg.exports["./inbox"].types]) {
      if (!existsSync("node_modules/@herald/client/" + types)) throw new Error(`types missing: ${types}`);
    }
    console.log(`@herald/client ${pkg.version}: both entries import by name, types at ${pkg.types} and ${pkg.exports["./inbox"].types}`);
  '
) || status=1
rm -rf "$pkg_dir"

echo "== browser tests (headless Chromium: /demo, /admin, <herald-inbox>)"
node --test --test-timeout=180000 tests/browser/*.test.mjs || status=1

if (( status == 0 )); then
  echo "browser tests: all passed; screenshots in docs/screenshots/"
else
  echo "browser tests: FAILED" >&2
fi
exit $status
