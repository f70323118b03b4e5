#!/usr/bin/env bash
# Check the Helm chart (deploy/helm/herald) without helm, which no registry here offers:
# render it with render/main.go (Go templates + sprig, as Helm does; Debian's golang-go and
# sprig packages) for a single node and a cluster, check every document is valid YAML with
# a kind and a name, check what the chart promises, and that the binary accepts the
# settings the chart sets. CI runs it (installing the Debian packages when missing).
set -euo pipefail
bin=$(realpath "${1:-$(dirname "$0")/../../target/debug/herald}")   # before the cd: may be relative
cd "$(dirname "$0")"
render=$(mktemp -d)/render
GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="${GOCACHE:-/tmp/herald-gocache}" \
  go build -o "$render" render/main.go
r() { "$render" herald "$@"; }
expect() { grep -qF -- "$2" <<<"$1" || { echo "helm check: expected \`$2\` in:" >&2; echo "$1" >&2; exit 1; }; }
refuse() { grep -qF -- "$2" <<<"$1" && { echo "helm check: unexpected \`$2\` in:" >&2; echo "$1" >&2; exit 1; } || true; }

# Single node (defaults): SQLite on a volume, never two pods at once, no PDB.
kinds=$(r --kinds); out=$(r)
expect "$kinds" "Service herald"; expect "$kinds" "PersistentVolumeClaim herald-data"
expect "$kinds" "Deployment herald"; refuse "$kinds" "PodDisruptionBudget"
expect "$out" "type: Recreate"; expect "$out" "path: /healthz"; expect "$out" "path: /readyz"
expect "$out" "terminationGracePeriodSeconds: 15"; expect "$out" "readOnlyRootFilesystem: true"
expect "$out" "runAsNonRoot: true"; expect "$out" "mountPath: /data"

# More than one replica is cluster mode: refused without PostgreSQL and Redis.
if err=$(r --set replicaCount=3 2>&1); then echo "helm check: 3 replicas without URLs rendered" >&2; exit 1; fi
expect "$err" "cluster mode"
if err=$(r --set replicaCount=3 --set database.url=sqlite://x.db --set redis.url=redis://r:6379 2>&1); then
  echo "helm check: 3 replicas on SQLite rendered" >&2; exit 1
fi
expect "$err" "needs PostgreSQL"

# A cluster: secret, PDB, ServiceMonitor, node names, the grace period follows the timeout.
set_cluster=(--set replicaCount=3 --set database.url=postgres://h:pw@pg:5432/herald
  --set redis.url=redis://redis:6379 --set secrets.jwtSecret=j --set secrets.apiKey=k
  --set serviceMonitor.enabled=true --set shutdownTimeoutSeconds=30)
kinds=$(r --kinds "${set_cluster[@]}"); out=$(r "${set_cluster[@]}")
expect "$kinds" "Secret herald"; expect "$kinds" "PodDisruptionBudget herald"
expect "$kinds" "ServiceMonitor herald"; refuse "$kinds" "PersistentVolumeClaim"
expect "$out" "replicas: 3"; expect "$out" "name: HERALD_NODE_NAME"
expect "$out" "terminationGracePeriodSeconds: 35"; expect "$out" 'value: "30s"'
expect "$out" "secretRef:"; refuse "$out" "type: Recreate"

# The settings the chart passes are ones Herald accepts.
data=$(mktemp -d)
HERALD_HTTP__SHUTDOWN_TIMEOUT=30s HERALD_NODE_NAME=herald-0 "$bin" migrate \
  --database-url "sqlite://$data/h.db" >/dev/null
rm -rf "$data" "$(dirname "$render")"
echo "helm check: single node and cluster rendered and checked"
