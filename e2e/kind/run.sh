#!/usr/bin/env bash
# The e2e suite on a kind cluster, with the operator as a real pod: for machines with Docker (and kind,
# kubectl, helm, Go, Python 3.11+ on the PATH), and the GitHub Actions workflow
# .github/workflows/kind-e2e.yaml. It cannot run where there is no container runtime.
#
#   e2e/kind/run.sh [pytest args...]     create the cluster (unless it exists), build and load the image,
#                                         install kwok, run the e2e suite against it
#   KEEP_KIND_CLUSTER=1                   keep the cluster afterwards (default: delete it)
#
# Steps: kind cluster (e2e/kind/cluster.yaml) -> `docker build` -> `kind load docker-image` -> kwok in
# the cluster (its controller and CRDs from the pinned kwok module, our Stages, the fake nodes of
# e2e/cluster/nodes.yaml) -> the real node tainted so only the operator runs there -> the hostPath
# StorageClass of the local cluster replaces kind's default -> pytest e2e with
# OCEAN_C2D_E2E_OPERATOR=in-cluster: each test installs the chart with this image in its namespace.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=toolchain/versions.env
source "$repo/toolchain/versions.env"
cluster=ocean-c2d
image="ocean-c2d:e2e"
taint=ocean-c2d/operator-only  # the same key as e2e/operator_handle.py's OPERATOR_NODE_TAINT
export KUBECONFIG="${KIND_KUBECONFIG:-$HOME/.kube/kind-$cluster}"

for command in docker kind kubectl helm go; do
  command -v "$command" >/dev/null || { echo "kind-e2e: $command is required on the PATH" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --config "$repo/e2e/kind/cluster.yaml" --kubeconfig "$KUBECONFIG" --wait 120s
fi
if [ "${KEEP_KIND_CLUSTER:-}" != 1 ]; then
  trap 'kind delete cluster --name "$cluster"' EXIT
fi

docker build -t "$image" "$repo"
kind load docker-image "$image" --name "$cluster"

# kwok: the controller and its CRDs from the kwok module this repository pins, at the same version.
kwok_dir="$(cd "$repo/toolchain/kwok" && GOFLAGS=-mod=mod go mod download -json sigs.k8s.io/kwok | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
kubectl kustomize "$kwok_dir/kustomize/kwok" | sed -E "s|(image: .*/kwok/kwok)\$|\1:$KWOK_VERSION|" | kubectl apply --server-side -f -
kubectl wait --for=condition=Established crd/stages.kwok.x-k8s.io --timeout=60s
kubectl -n kube-system rollout status deployment/kwok-controller --timeout=180s
"$repo/e2e/cluster/cluster.sh" stages | kubectl apply --server-side -f -

# Only the operator on the real node(s); everything of a Workflow on kwok's fake nodes.
kubectl taint nodes -l 'type!=kwok' "$taint=true:NoSchedule" --overwrite
kubectl apply -f "$repo/e2e/cluster/nodes.yaml"
kubectl wait --for=condition=Ready node -l type=kwok --timeout=120s
kubectl delete storageclass standard --ignore-not-found
kubectl apply -f "$repo/e2e/cluster/storage.yaml"

make -C "$repo" venv
# The `real` tests need the local cluster's own real node (its veth address, node.sh policy-stop); on
# kind the operator pod itself is the real-container check.
OCEAN_C2D_E2E_OPERATOR=in-cluster OCEAN_C2D_E2E_IMAGE="$image" \
  "$repo/.venv/bin/pytest" "$repo/e2e" -m "not local_only and not real" -rfEs "$@"
