#!/usr/bin/env bash
# The README's main job, after the cluster is up:
#   1. `helm install` the chart from this repository into the namespace ocean-c2d-demo: CRDs, the
#      operator's ServiceAccount and least-privilege Role, metrics Service, dashboard ConfigMap.
#      The operator Deployment is scaled to 0: this machine runs no containers (kwok only pretends), so
#      the operator runs as a local process instead, authenticated with the chart's ServiceAccount token,
#      which holds exactly the permissions the chart grants an in-cluster operator.
#   2. apply the sample ComputeEnvironment and three Workflows, watch `kubectl get workflows` until every
#      one is finished, then show a few lines of the operator's /metrics.
# The cluster and the release stay; the operator process stops. Run it again any time.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$("$repo/toolchain/build.sh" --path kubernetes helm)"
export PATH="$tools:$PATH"
export KUBECONFIG="${KUBECONFIG:-$("$repo/e2e/cluster/cluster.sh" kubeconfig)}"
namespace=ocean-c2d-demo
release=ocean-c2d
state="${OCEAN_C2D_CACHE:-$HOME/.cache/ocean-c2d}/demo"
metrics_port="${METRICS_PORT:-18000}"
mkdir -p "$state"

# helm installs crds/ on the first install only; applying them first is also how they are upgraded.
kubectl apply --server-side -f "$repo/helm/ocean-c2d/crds/"
kubectl wait --for=condition=Established crd/workflows.oceanprotocol.com crd/computeenvironments.oceanprotocol.com
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f -
if ! kubectl -n "$namespace" get secret ocean-c2d-credentials >/dev/null 2>&1; then
  # A throwaway operator key for the demo; a real deployment brings its own (see README).
  key="$("$repo/.venv/bin/python" -c 'import secrets; print("0x" + secrets.token_hex(32))')"
  # From stdin, not --from-literal: a key on a command line is visible to every process listing.
  printf '%s' "$key" | kubectl -n "$namespace" create secret generic ocean-c2d-credentials \
    --from-file=operator-private-key=/dev/stdin
fi
helm upgrade --install "$release" "$repo/helm/ocean-c2d" -n "$namespace" --skip-crds --wait \
  --set operator.replicas=0 --set-json 'computeEnvironments=[]'
kubectl -n "$namespace" delete workflows --all --ignore-not-found --wait=true

# The operator's identity: a token of the release's ServiceAccount (as a pod would mount), not the admin.
token="$(kubectl -n "$namespace" create token "$release" --duration=1h)"
server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
ca="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')"
operator_config="$state/operator.kubeconfig"
# Written by the shell itself (a heredoc, mode 0600): the token never appears on a command line.
(
  umask 077
  rm -f "$operator_config"
  cat >"$operator_config" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: local
    cluster: {server: "$server", certificate-authority: "$ca"}
users:
  - name: $release
    user: {token: "$token"}
contexts:
  - name: $release
    context: {cluster: local, user: $release, namespace: $namespace}
current-context: $release
EOF
)

key="$(kubectl -n "$namespace" get secret ocean-c2d-credentials -o jsonpath='{.data.operator-private-key}' | base64 -d)"
KUBECONFIG="$operator_config" OPERATOR_PRIVATE_KEY="$key" WATCH_NAMESPACE="$namespace" LOG_LEVEL=INFO \
  HEALTH_PORT="${HEALTH_PORT:-18080}" METRICS_PORT="$metrics_port" \
  "$repo/.venv/bin/ocean-c2d" run >"$state/operator.log" 2>&1 &
operator=$!
watcher=""
finish() {
  status=$?
  [ -z "$watcher" ] || kill "$watcher" 2>/dev/null || true
  kill "$operator" 2>/dev/null || true
  wait "$operator" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    echo "demo: failed; the operator's last log lines:" >&2
    tail -n 20 "$state/operator.log" >&2
  fi
}
trap finish EXIT
echo "demo: operator started as system:serviceaccount:$namespace:$release (pid $operator, log $state/operator.log)"

kubectl -n "$namespace" apply -f "$repo/samples/computeenvironment.yaml" -f "$repo/samples/workflow.yaml"
kubectl -n "$namespace" get workflows --watch &
watcher=$!
kubectl -n "$namespace" wait --for=condition=Finished workflow --all --timeout=300s >/dev/null
sleep 1  # let the watch print the last line before it is stopped
kill "$watcher" 2>/dev/null || true
echo
kubectl -n "$namespace" get workflows -o wide
kubectl -n "$namespace" get computeenvironments
echo
kubectl -n "$namespace" get events --field-selector involvedObject.kind=Workflow --sort-by=.lastTimestamp | tail -n 8
kubectl -n "$namespace" wait --for=condition=Succeeded workflow --all --timeout=5s >/dev/null
echo
echo "demo: a few lines of http://127.0.0.1:$metrics_port/metrics"
metrics="$("$repo/.venv/bin/python" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
  "http://127.0.0.1:$metrics_port/metrics")"
grep -E '^ocean_c2d_(workflows\{.*stage="Finished"|workflows_finished_total|stage_duration_seconds_count|environment_(allocatable|in_use)\{.*resource="jobs")' \
  <<<"$metrics"
echo "demo: every sample Workflow finished: Job finished (70)"
