#!/usr/bin/env bash
# The README's main job, after the cluster is up: install the CRDs, start the operator (a local process
# watching the namespace ocean-c2d-demo), apply the sample ComputeEnvironment and Workflow, and show
# `kubectl get workflows` until the Workflow has finished. The cluster stays up; the operator stops.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$("$repo/toolchain/build.sh" --path)"
export PATH="$tools:$PATH"
export KUBECONFIG="${KUBECONFIG:-$("$repo/e2e/cluster/cluster.sh" kubeconfig)}"
namespace=ocean-c2d-demo
state="${OCEAN_C2D_CACHE:-$HOME/.cache/ocean-c2d}/demo"
mkdir -p "$state"

kubectl apply -f "$repo/crds/"
kubectl wait --for=condition=Established crd/workflows.oceanprotocol.com crd/computeenvironments.oceanprotocol.com
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f -
if ! kubectl -n "$namespace" get secret ocean-c2d-credentials >/dev/null 2>&1; then
  # A throwaway operator key for the demo; a real deployment brings its own (see README).
  key="$("$repo/.venv/bin/python" -c 'import secrets; print("0x" + secrets.token_hex(32))')"
  kubectl -n "$namespace" create secret generic ocean-c2d-credentials --from-literal=operator-private-key="$key"
fi
kubectl -n "$namespace" delete workflow sample --ignore-not-found --wait=true

key="$(kubectl -n "$namespace" get secret ocean-c2d-credentials -o jsonpath='{.data.operator-private-key}' | base64 -d)"
OPERATOR_PRIVATE_KEY="$key" WATCH_NAMESPACE="$namespace" LOG_LEVEL=INFO \
  HEALTH_PORT="${HEALTH_PORT:-18080}" METRICS_PORT="${METRICS_PORT:-18000}" \
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
echo "demo: operator started (pid $operator, log $state/operator.log)"

kubectl -n "$namespace" apply -f "$repo/samples/computeenvironment.yaml" -f "$repo/samples/workflow.yaml"
kubectl -n "$namespace" get workflows --watch &
watcher=$!
kubectl -n "$namespace" wait --for=condition=Finished workflow/sample --timeout=180s >/dev/null
sleep 1  # let the watch print the last line before it is stopped
kill "$watcher" 2>/dev/null || true
echo
kubectl -n "$namespace" get workflows -o wide
kubectl -n "$namespace" get computeenvironments
echo
kubectl -n "$namespace" get events --field-selector involvedObject.kind=Workflow --sort-by=.lastTimestamp
kubectl -n "$namespace" wait --for=condition=Succeeded workflow/sample --timeout=5s >/dev/null
echo "demo: the sample Workflow finished: Job finished (70)"
